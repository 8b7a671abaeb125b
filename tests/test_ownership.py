"""
What podnet owns on a node (tasks/engine/ownership.py): the deploy keeps the original of a file it
replaces that it did not install, records what it installed; a reset removes only files whose digest
is what podnet installed, puts back what it replaced and the configs it moved aside, and leaves every
other file, unit, interface and directory as it is.

The shell parts run for real in sh on temporary files; the plans run the real pyinfra CLI against
``@fake`` hosts (tests/support/plan.py).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from tasks import cni, containerd, flannel, interrupted
from tasks.engine.desired import text_file
from tasks.engine import node_releases, ownership
from tasks.engine.ownership import LEDGER, ORIGINALS_DIR, ORIGINALS_QUERY, OwnedFile, Removal, removal
from tasks.engine.ops import install_script, ledger_path, staged_path
from tasks.engine.probe import NodeState, ProbeRequest
from tests.support.plan import CP, HOSTS, WORKER, assert_ok, run_pyinfra
from tests.support.reset import deployed, inventory, run_reset

BIN = "/opt/cni/bin"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sh(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)


# --- the deploy's side, in sh --------------------------------------------------------------


def activate(tmp_path: Path, live: Path, new: bytes) -> subprocess.CompletedProcess:
    """What files_installed runs for one changed file that exists on the node: keep the original
    (if not podnet's), then activate the staged file and record it (ledger and originals below tmp_path)."""
    desired = text_file(str(live), new.decode())
    Path(staged_path(str(live))).write_bytes(new)
    cache = str(tmp_path / "state" / "digests")
    keep = ownership.keep_original_script(str(live), ledger_path(cache), str(tmp_path / "originals"))
    return sh(f"{keep}\n{install_script([desired], digest_cache=cache)}")


def test_a_file_podnet_did_not_install_is_kept_root_only_before_it_is_replaced(tmp_path):
    live = tmp_path / "bin" / "bridge"
    live.parent.mkdir()
    live.write_bytes(b"another CNI's bridge\n")
    os.chmod(live, 0o750)
    assert activate(tmp_path, live, b"podnet's bridge\n").returncode == 0
    kept = Path(str(tmp_path / "originals") + str(live))
    assert kept.read_bytes() == b"another CNI's bridge\n"
    assert oct(kept.stat().st_mode & 0o777) == "0o750"  # as it was
    assert oct((tmp_path / "originals").stat().st_mode & 0o777) == "0o700"  # root-only
    assert live.read_bytes() == b"podnet's bridge\n"
    ledger = (tmp_path / "state" / "installed").read_text()
    assert ledger == f"{sha(live.read_bytes())} {live}\n"


def test_a_file_podnet_installed_is_replaced_without_a_copy_and_the_first_original_stays(tmp_path):
    live = tmp_path / "bridge"
    live.write_bytes(b"original\n")
    assert activate(tmp_path, live, b"podnet v1\n").returncode == 0
    assert activate(tmp_path, live, b"podnet v2\n").returncode == 0  # podnet's own v1: nothing kept
    kept = Path(str(tmp_path / "originals") + str(live))
    assert kept.read_bytes() == b"original\n"
    live.write_bytes(b"someone else's, after podnet\n")
    assert activate(tmp_path, live, b"podnet v3\n").returncode == 0
    assert kept.read_bytes() == b"original\n"  # the first original is the one a reset puts back
    lines = (tmp_path / "state" / "installed").read_text().splitlines()
    assert lines[-1] == f"{sha(live.read_bytes())} {live}"


# --- the reset's decision --------------------------------------------------------------------


def node(hashes: dict[str, str], ledger: dict[str, str] | None = None, kept: tuple[str, ...] = ()) -> NodeState:
    state = NodeState(hashes=dict(hashes))
    if ledger is not None:
        state.contents[LEDGER] = "".join(f"{d} {p}\n" for p, d in ledger.items()).encode()
    state.queries[ORIGINALS_QUERY] = (0, [ORIGINALS_DIR + p for p in kept])
    return state


PLUGINS = OwnedFile(f"{BIN}/*", "archive cni_plugins")


def test_a_reset_removes_only_what_the_ledger_says_podnet_installed():
    state = node({f"{BIN}/bridge": "f" * 64, f"{BIN}/loopback": "a" * 64, f"{BIN}/portmap": "b" * 64,
                  f"{BIN}/flannel": "c" * 64},
                 ledger={f"{BIN}/bridge": "1" * 64, f"{BIN}/loopback": "a" * 64, f"{BIN}/flannel": "c" * 64})
    result = removal(state, {f"{BIN}/flannel": "c" * 64}, members=(PLUGINS,))
    # bridge: replaced by another CNI after podnet; portmap: never podnet's (no record, no declared digest)
    assert result == Removal(removed=[f"{BIN}/flannel", f"{BIN}/loopback"], foreign=[f"{BIN}/bridge"])


def test_a_kept_original_goes_back_in_place_of_podnets_file():
    state = node({f"{BIN}/loopback": "a" * 64}, ledger={f"{BIN}/loopback": "a" * 64}, kept=(f"{BIN}/loopback",))
    result = removal(state, {}, members=(PLUGINS,))
    assert result == Removal(restored=[(ORIGINALS_DIR + f"{BIN}/loopback", f"{BIN}/loopback")])
    assert result.commands() == [f"mv -f {ORIGINALS_DIR}{BIN}/loopback {BIN}/loopback"]


def test_without_a_record_a_file_is_podnets_only_when_it_holds_what_this_release_installs():
    state = node({f"{BIN}/bridge": "d" * 64, f"{BIN}/loopback": "e" * 64})  # a node of a podnet without ledger
    result = removal(state, {f"{BIN}/bridge": "d" * 64, f"{BIN}/loopback": "0" * 64})
    assert result == Removal(removed=[f"{BIN}/bridge"], foreign=[f"{BIN}/loopback"])


def test_the_ledger_outranks_the_declared_digest():
    state = node({f"{BIN}/bridge": "d" * 64, f"{BIN}/loopback": "e" * 64}, ledger={f"{BIN}/bridge": "1" * 64})
    # bridge: replaced since podnet installed it; loopback: the same bytes as podnet's, but podnet never put it there
    result = removal(state, {f"{BIN}/bridge": "d" * 64, f"{BIN}/loopback": "e" * 64})
    assert result == Removal(foreign=[f"{BIN}/bridge", f"{BIN}/loopback"])


# --- one declaration, derived everywhere ----------------------------------------------------


def test_the_probe_questions_and_the_leftover_directories_come_from_the_declarations(cluster):
    s = cluster.settings(CP)
    assert containerd.probe_request(s).hashes == ["/usr/local/bin/containerd*", "/usr/local/bin/ctr",
                                                  "/usr/local/sbin/runc"]
    assert cni.probe_request(s).covers(ProbeRequest(hashes=[f"{BIN}/*"], texts=["/etc/cni/net.d/10-flannel.conflist"]))
    declared = {f.path for o in interrupted.declarations(s) for f in o.files}
    assert {"/usr/local/bin/flanneld", f"{BIN}/flannel", "/usr/local/sbin/runc"} <= declared
    assert set(interrupted.directories(s)) == {os.path.dirname(p) for o in interrupted.declarations(s)
                                               for p in [*o.paths(), *o.edits]} | {node_releases.RELEASES_DIR}


# --- plans --------------------------------------------------------------------------------


def with_record(state: NodeState, ledger: dict[str, str], kept: tuple[str, ...] = ()) -> NodeState:
    state.contents[LEDGER] = "".join(f"{d} {p}\n" for p, d in ledger.items()).encode()
    state.queries[ORIGINALS_QUERY] = (0, [ORIGINALS_DIR + p for p in kept])
    return state


def test_a_deploy_keeps_the_original_of_a_foreign_plugin_it_replaces(cluster):
    worker = cluster.converged(WORKER)
    worker.hashes[f"{BIN}/bridge"] = "0" * 64  # another CNI's bridge
    run = run_pyinfra(cluster.inventory(cluster.converged(CP), worker), "-y")
    assert_ok(run)
    [archive] = run.uploads(WORKER)  # the plugins' archive: the new bridge is unpacked from it on the node
    assert archive.startswith(f"{node_releases.RELEASES_DIR}/.") and archive.endswith(".tgz.podnet-new")
    prepare = next(c for c in run.commands(WORKER) if c.startswith(f"mkdir -p {BIN}"))
    assert ownership.keep_original_script(f"{BIN}/bridge") in prepare
    install = next(c for c in run.commands(WORKER) if c.startswith("set -e;"))
    assert f"mv -f \"$u\"/bridge {BIN}/.bridge.podnet-new" in install
    assert f"{BIN}/bridge; }} >> {LEDGER}" in install  # recorded as podnet's, as the node hashes it


def test_a_reset_leaves_foreign_plugins_and_puts_back_what_the_deploy_replaced(cluster):
    nodes = {}
    for host in HOSTS:
        state = deployed(cluster, host)
        podnets = {p: d for p, d in state.hashes.items() if p.startswith(BIN + "/") and "someone" not in p}
        ledger = {**podnets, f"{BIN}/loopback": "1" * 64}  # loopback: replaced by another CNI since
        nodes[host] = with_record(state, ledger, kept=(f"{BIN}/portmap",))
    run = run_reset(inventory(cluster, nodes[CP], nodes[WORKER]), "-y")
    assert_ok(run)
    for host in HOSTS:
        commands = run.commands(host)
        assert (f"rm -f {BIN}/bridge {BIN}/host-local {BIN}/flannel && "
                f"mv -f {ORIGINALS_DIR}{BIN}/portmap {BIN}/portmap") in commands
        assert not [c for c in commands if "loopback" in c or "someone-elses-plugin" in c]
        assert f"{BIN}/loopback stays: it is not what podnet installed there" in run.output


def test_a_reset_puts_back_the_configs_the_deploy_moved_aside(cluster):
    nodes = {host: deployed(cluster, host) for host in HOSTS}
    nodes[WORKER].listings["/etc/cni/net.d"] = ["05-cilium.conflist.podnet-disabled", "10-flannel.conflist",
                                                "01-a.conf.podnet-disabled", "01-a.conf"]  # 01-a.conf came back
    run = run_reset(inventory(cluster, nodes[CP], nodes[WORKER]), "-y")
    assert_ok(run)
    assert ("mv /etc/cni/net.d/05-cilium.conflist.podnet-disabled /etc/cni/net.d/05-cilium.conflist"
            in run.commands(WORKER))
    assert not [c for c in run.commands(WORKER) if "01-a.conf" in c]


def test_a_bridge_outside_the_cluster_cidr_and_an_external_flannel_stay(cluster):
    data = {"flannel_rollout": "external"}
    nodes = {host: deployed(cluster, host, **data) for host in HOSTS}
    nodes[WORKER].queries["cni0"] = (0, ["addr 172.17.0.1/16", "ports 0"])  # another CNI's bridge of that name
    run = run_reset(inventory(cluster, nodes[CP], nodes[WORKER], **data), "-y")
    assert_ok(run)
    for host in HOSTS:
        commands = run.commands(host)
        assert not [c for c in commands if "flannel.1" in c or "-restore" in c or "nft delete" in c
                    or "/run/flannel" in c or "flanneld" in c]
        assert "rm -rf /var/lib/cni/networks/cbr0" in commands  # podnet's conflist's network
    assert "ip link delete cni0" in run.commands(CP)  # 10.244.0.1/24: podnet's network
    assert not [c for c in run.commands(WORKER) if "cni0" in c]


def test_containerd_is_not_stopped_when_its_unit_is_not_podnets(cluster):
    nodes = {}
    for host in HOSTS:
        state = deployed(cluster, host)
        state.hashes[containerd.UNIT_PATH] = "0" * 64  # the operator's own unit
        nodes[host] = state
    run = run_reset(inventory(cluster, nodes[CP], nodes[WORKER]), "-y", "--data", "reset_containerd=true")
    assert_ok(run)
    command = next(c for c in run.commands(WORKER) if "/usr/local/sbin/runc" in c)
    assert "systemctl disable" not in command and containerd.UNIT_PATH not in command
    assert command.startswith("rm -f /usr/local/bin/containerd ")


def test_flanneld_unit_of_someone_else_is_not_stopped(cluster):
    data = {"flannel_rollout": "systemd"}
    nodes = {host: deployed(cluster, host, **data) for host in HOSTS}
    nodes[WORKER].hashes[flannel.UNIT_PATH] = "0" * 64
    run = run_reset(inventory(cluster, nodes[CP], nodes[WORKER], **data), "-y")
    assert_ok(run)
    worker = next(c for c in run.commands(WORKER) if "/usr/local/bin/flanneld" in c)
    assert worker == ("rm -f /usr/local/bin/flanneld /etc/kube-flannel/net-conf.json /etc/kube-flannel/kubeconfig "
                      "/etc/kube-flannel/token /etc/kube-flannel/token.expires && "
                      "rmdir --ignore-fail-on-non-empty /etc/kube-flannel")


def test_an_original_half_copied_by_a_killed_run_is_never_put_back():
    state = node({f"{BIN}/bridge": "a" * 64}, ledger={f"{BIN}/bridge": "a" * 64})
    state.queries[ORIGINALS_QUERY] = (0, [f"{ORIGINALS_DIR}{BIN}/bridge{ownership.PARTIAL_SUFFIX}"])
    assert removal(state, {}, members=(PLUGINS,)) == Removal(removed=[f"{BIN}/bridge"])
    assert f"! -name '*{ownership.PARTIAL_SUFFIX}'" in ownership.originals_command()
