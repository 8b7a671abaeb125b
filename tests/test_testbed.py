"""The test bed (testbed/) is a package of its own: `make demo` and the benchmark run with the
toolkit's requirements alone, without pytest or the CRI client's grpcio; no nodes needed."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BED = REPO / "testbed"
# Test-only packages: the bed imports none of them, but for grpc in its CRI client.
TEST_ONLY = ("pytest", "tests", "grpc", "grpc_tools")
CRI_CLIENT = BED / "cri" / "client.py"


def imported_roots(path: Path) -> set[str]:
    """The top-level names a module imports, anywhere in it (also inside functions)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_the_bed_imports_no_test_only_package_but_grpc_in_its_cri_client():
    found = {str(path.relative_to(REPO)): sorted(imported_roots(path) & set(TEST_ONLY))
             for path in sorted(BED.rglob("*.py"))}
    assert found, "no test bed modules found"
    assert found.pop(str(CRI_CLIENT.relative_to(REPO))) == ["grpc"]
    assert {path: names for path, names in found.items() if names} == {}


def test_demo_and_benchmark_start_without_pytest_or_grpc():
    # Each of these packages made unimportable, as on a machine with requirements.txt alone.
    script = f"""
import sys
for name in {TEST_ONLY!r}:
    sys.modules[name] = None
from testbed import demo
import bench.run
for main in (demo.main, bench.run.main):
    try:
        main(["--help"])
    except SystemExit as done:
        assert done.code == 0, done.code
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "python3 -m testbed.demo" in done.stdout
    assert "python3 -m bench.run" in done.stdout


def test_a_dual_stack_kube_bed_runs_the_api_server_and_kubelets_with_both_families(tmp_path):
    """What a dual-stack bed gives kubeadm (the API server's service ranges), the kubelets (--node-ip)
    and the node link (service routes), and that it needs nodes with IPv6 addresses; an IPv4 bed is as before."""
    import pytest
    import yaml

    from testbed.kubebed.cluster import SERVICE_CIDR, SERVICE_CIDR_IPV6, KubeBed, KubeBedError
    from testbed.localcluster import Cluster, Node

    cluster = Cluster("kbx", 2, tmp_path / "state", ipv6=True)
    cluster.nodes = [Node("kbx-1", "172.30.9.11", ip6="fd70:6e62:0:9::11"),
                     Node("kbx-2", "172.30.9.12", ip6="fd70:6e62:0:9::12")]
    dual = KubeBed(cluster, tmp_path / "dual", dual_stack=True)
    config = list(yaml.safe_load_all(dual._kubeadm_config()))
    assert config[1]["networking"] == {"serviceSubnet": f"{SERVICE_CIDR},{SERVICE_CIDR_IPV6}"}
    assert dual.node_ips(cluster.nodes[1]) == ["172.30.9.12", "fd70:6e62:0:9::12"]
    assert dual.service_routes() == (f"ip route replace {SERVICE_CIDR} dev host0 && "
                                     f"ip route replace {SERVICE_CIDR_IPV6} dev host0")
    single = KubeBed(cluster, tmp_path / "single")
    assert list(yaml.safe_load_all(single._kubeadm_config()))[1]["networking"] == {"serviceSubnet": SERVICE_CIDR}
    assert single.node_ips(cluster.nodes[1]) == ["172.30.9.12"]
    cluster.nodes[1].ip6 = ""
    with pytest.raises(KubeBedError, match="needs nodes with IPv6 addresses"):
        KubeBed(cluster, tmp_path / "broken", dual_stack=True)
