"""pytest glue shared by the test modules: markers, and the fixtures more than one module uses.

- ``mirror`` and ``cluster``: the plan tests' tiny release files served on loopback and their
  two ``@fake`` hosts (tests/support/plan.py).
- ``bed_mirror`` and ``served_cluster``: the end-to-end tests' release mirror and real nodes
  (the test bed, testbed/), skipped with the reason when this machine lacks what they need.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest

from testbed.kubebed import binaries
from testbed.localcluster import Cluster as NodeCluster
from testbed.localcluster.net import bridge_address
from testbed.mirror import build_mirror, serve_mirror
from tests.support.http import ScriptedServer
from tests.support.plan import Cluster
from tests.support.releases import Releases


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "e2e: needs real external inputs (Debian packages via apt, built artifacts); slow the first time",
    )
    config.addinivalue_line(
        "markers",
        "only_bed(name): run this end-to-end test on that test cluster only (tests/test_e2e.py); "
        "its other clusters deselect it",
    )


def pytest_collection_modifyitems(config, items):
    """Deselect (not skip) tests marked only_bed(name) for the clusters they do not concern."""
    keep, drop = [], []
    for item in items:
        marker = item.get_closest_marker("only_bed")
        callspec = getattr(item, "callspec", None)
        bed = callspec.params.get("bed") if callspec is not None else None
        if marker is not None and bed is not None and getattr(bed, "name", None) != marker.args[0]:
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


# --- plan tests ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """The release files, served over loopback for the whole module: (Releases, ScriptedServer)."""
    tree = tmp_path_factory.mktemp("mirror")
    releases = Releases(tree)
    with ScriptedServer(tree) as server:
        yield releases, server


@pytest.fixture
def cluster(mirror, tmp_path) -> Cluster:
    """A kubeadm control plane and a worker as @fake hosts over ``mirror``'s release files."""
    releases, server = mirror
    return Cluster(releases, server, tmp_path)


# --- end-to-end tests on the test bed ------------------------------------------------------------


@pytest.fixture(scope="session")
def bed_mirror():
    """The test mirror built from the shared binaries; the tests that need it are skipped, saying why, without them."""
    missing = binaries.missing()
    if missing:
        pytest.skip(f"no Kubernetes/flannel binaries: {missing}")
    return build_mirror()


@pytest.fixture(scope="session")
def served_cluster(tmp_path_factory, bed_mirror):
    """``served_cluster(name, nodes, request_log=None, to_nodes=False, **serving)``: a context manager for real
    nodes on a bridge of their own with ``bed_mirror`` served to them, all torn down afterwards; yields (base_url,
    mirror, workdir, cluster). ``request_log`` receives every request the mirror answers. ``to_nodes``: the
    mirror listens on the host's address on the cluster's bridge, so that the nodes download from it too
    (``release_download = "nodes"``); ``serving``: serve_mirror's ``client_log`` and ``replaced``."""

    @contextmanager
    def served(name: str, nodes: int, request_log: list | None = None, to_nodes: bool = False, **serving):
        workdir = tmp_path_factory.mktemp(f"bed-{name}")
        with NodeCluster(name=name, nodes=nodes, state_dir=workdir / "cluster") as cluster:
            host = str(bridge_address(cluster.subnet)) if to_nodes else "127.0.0.1"
            with serve_mirror(bed_mirror.root, host=host, request_log=request_log, **serving) as base_url:
                yield base_url, bed_mirror, workdir, cluster

    return served
