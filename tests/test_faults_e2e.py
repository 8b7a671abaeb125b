"""
End to end: the faults operators fear, on a real 2-node cluster (testbed/podbed.py) with the
real deploy.py through the real pyinfra CLI over SSH, and how the next run recovers.

1. A deploy SIGKILLed (by PID) at several points of a first run and of a change run, each
   point found by watching the nodes from the host (bounded polling of their files, no hook
   in podnet): while an archive is uploaded or unpacked, between upload and activation, after activation
   and before the restart. After each kill no node has a half-written file active (every
   managed file is the old or the new complete version), the next run removes every staged
   leftover and finishes the interrupted restart, and a run after that changes nothing.
2. A node lost mid-run (its sshd stopped and its connection cut after the probe): the run
   names the node and what was left undone, the other node completes, the exit status is
   non-zero; once the node is back a rerun converges it and changes nothing on the other.
3. Two runs at once: the second refuses, naming the first, and never runs an operation; a
   killed run's lock does not stop the next run.
4. A node's container rebooted: kernel settings, containerd, the CNI files and flanneld come
   back by themselves, a new pod gets an IP and pings, and a rerun changes nothing.
5. A release archive corrupted on a node between its upload and its unpacking (1b): the node's
   own check stops the run naming host, URL and both sums, every live file stays as it was,
   and the next run converges.

To make the points between two commands observable, pyinfra reaches the nodes through a
user-space forwarder that delays every byte (testbed/delay_proxy.py) while a run is
being killed.

Run alone with: python3 -m pytest -q tests/test_faults_e2e.py
"""

from __future__ import annotations

import getpass
import hashlib
import ipaddress
import os
import signal
import socket
import subprocess
import tarfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from bench import run as node_costs
from tasks import containerd as containerd_tasks
from tasks import interrupted
from tasks.engine import node_releases, ops
from tasks.engine.run_lock import LOCK_PATH
from tasks.settings import parse_host_settings
from testbed.delay_proxy import DelayProxy
from testbed.localcluster import Node
from testbed.podbed import DEPLOY_TIMEOUT, MANIFEST_PATH, PodBed

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="booting nodes needs root"),
]

LINK_DELAY = 0.15  # seconds each way between pyinfra and a node while a run is being killed
POLL = 0.002  # seconds between two looks at the nodes while waiting for a kill point
CONFLIST = "/etc/cni/net.d/10-flannel.conflist"
PLUGIN_DIR = "/opt/cni/bin"
MANAGED = ["opt/cni/bin/*", "etc/cni/net.d/10-flannel.conflist", "etc/containerd/config.toml",
           "etc/systemd/system/containerd.service", "usr/local/bin/containerd*", "usr/local/bin/ctr",
           "usr/local/sbin/runc", "etc/modules-load.d/podnet.conf", "etc/sysctl.d/zz-podnet.conf",
           MANIFEST_PATH.lstrip("/"), "etc/podnet/kube-flannel.yml"]
STAGED_OP = "podnet: staged files of an interrupted run removed"


@pytest.fixture(scope="module")
def bed(served_cluster):
    with served_cluster("pn-fault", nodes=2) as (base_url, mirror, workdir, cluster):
        bed = PodBed(cluster, base_url, mirror, "2.x", workdir)
        bed.install_cluster()
        bed.write_inventory()
        yield bed


# --- looking at the nodes from the host ---------------------------------------------------------


def node_file(bed: PodBed, node: Node, path: str) -> Path:
    return bed.cluster.node_path(node, path)


def read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def managed_files(bed: PodBed) -> dict[str, dict[str, str]]:
    """Node name -> {live managed file -> sha256} (staged dotfiles are not live)."""
    snapshot: dict[str, dict[str, str]] = {}
    for node in bed.cluster.nodes:
        root = node_file(bed, node, "/")
        files = {}
        for pattern in MANAGED:
            for path in root.glob(pattern):
                if path.is_file() and not path.name.startswith("."):
                    files["/" + str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
        snapshot[node.name] = files
    return snapshot


def staged_files(bed: PodBed) -> dict[str, list[str]]:
    """Node name -> the staged (``.<name>.podnet-new``) files in every directory podnet installs into."""
    dirs = interrupted.directories(parse_host_settings(bed.inventory_data(**bed.overrides), "node", []))
    found: dict[str, list[str]] = {}
    for node in bed.cluster.nodes:
        found[node.name] = sorted(str(p)[len(str(node_file(bed, node, "/"))):] for d in dirs
                                  for p in node_file(bed, node, d).glob(f".*{ops.STAGED_SUFFIX}"))
    return found


def assert_old_or_new(bed: PodBed, middle: dict, before: dict, after: dict) -> None:
    """Every managed file seen after a kill is complete: the version before the run or the one after."""
    for node in bed.cluster.nodes:
        name = node.name
        assert set(before[name]) <= set(middle[name]), (name, set(before[name]) - set(middle[name]))
        for path, digest in middle[name].items():
            assert digest in (before[name].get(path), after[name].get(path)), (name, path, "half-written")


def expected_config(bed: PodBed) -> bytes:
    return containerd_tasks.render_config(parse_host_settings(bed.inventory_data(**bed.overrides), "node",
                                                              [])).encode()


def plugin_members(bed: PodBed, version: str) -> dict[str, bytes]:
    """The CNI plugin binaries of a release in the mirror: name -> content."""
    members = {}
    with tarfile.open(bed.mirror.path("cni_plugins", version)) as tar:
        for member in tar.getmembers():
            name = Path(member.name).name
            if member.isfile() and name not in ("LICENSE", "README.md"):
                members[name] = tar.extractfile(member).read()
    return members


@contextmanager
def slow_links(bed: PodBed):
    """pyinfra reaches every node through a DelayProxy (LINK_DELAY each way) while this lasts."""
    proxies = [DelayProxy((node.ip, 22), LINK_DELAY) for node in bed.cluster.nodes]
    try:
        bed.ssh_endpoints = {node.name: ("127.0.0.1", proxy.port) for node, proxy in zip(bed.cluster.nodes, proxies)}
        bed.write_inventory(**bed.overrides)
        yield
    finally:
        bed.ssh_endpoints = {}
        bed.write_inventory(**bed.overrides)
        for proxy in proxies:
            proxy.close()


def deploy_until(bed: PodBed, condition, what: str, log: Path, then=None) -> subprocess.Popen:
    """Start a deploy, look at the nodes every POLL seconds until ``condition()`` holds, then call
    ``then(proc)`` (default: SIGKILL the pyinfra process by its PID and reap it). Bounded."""
    proc = bed.start_deploy(log)
    try:
        deadline = time.monotonic() + DEPLOY_TIMEOUT
        while time.monotonic() < deadline:
            if condition():
                if then is None:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=30)
                else:
                    then(proc)
                return proc
            if proc.poll() is not None:
                raise AssertionError(f"the run ended ({proc.returncode}) before {what}:\n{log.read_text()[-3000:]}")
            time.sleep(POLL)
        raise AssertionError(f"no {what} within {DEPLOY_TIMEOUT}s")
    except BaseException:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        raise


def any_node(bed: PodBed, test) -> bool:
    return any(test(node) for node in bed.cluster.nodes)


def archive_arriving(bed: PodBed, node: Node, version: str) -> list[Path]:
    """The CNI plugins' archive of ``version`` being uploaded to ``node`` (under its staged name; whole or not)."""
    name = bed.mirror.path("cni_plugins", version).name
    try:
        return list(node_file(bed, node, node_releases.RELEASES_DIR).glob(f".*{name}{ops.STAGED_SUFFIX}"))
    except OSError:
        return []


def release_files(bed: PodBed, node: Node) -> list[Path]:
    """What is in the node's release file directory (node_releases.RELEASES_DIR): archives, partial ones, unpacking."""
    try:
        return sorted(node_file(bed, node, node_releases.RELEASES_DIR).iterdir())
    except OSError:
        return []


def unpacking(bed: PodBed, node: Node) -> bool:
    """Members are being unpacked from an archive on ``node`` (its private unpack directory holds a file)."""
    try:
        return any(p.name.startswith(node_releases.UNPACK_PREFIX) and any(p.iterdir())
                   for p in release_files(bed, node) if p.is_dir())
    except OSError:  # gone between two looks
        return False


def converge(bed: PodBed):
    """The next run finishes what is left; the run after it changes nothing, at one command (the probe) per node."""
    run = bed.deploy()
    assert run.returncode == 0, run.output[-4000:]
    marks = [node_costs.mark(node) for node in bed.cluster.nodes]
    again = bed.deploy()
    assert again.returncode == 0 and again.changed_operations() == {}, again.output[-4000:]
    for node, mark in zip(bed.cluster.nodes, marks):
        assert node_costs.cost_since(node, mark).commands == 1, node.name
    return run


# --- 1. a deploy killed mid-run ----------------------------------------------------------------------


def test_a_first_run_killed_at_each_point_leaves_no_half_written_file_and_the_next_run_finishes_it(bed):
    before = managed_files(bed)
    config = expected_config(bed)
    pids = {node.name: bed.containerd_pid(node) for node in bed.cluster.nodes}
    middles = []
    with slow_links(bed):
        # (b) uploaded, not activated: containerd's config is staged complete, and being checked by containerd
        deploy_until(bed, lambda: any_node(bed, lambda n: read(node_file(
            bed, n, "/etc/containerd/.config.toml.podnet-new")) == config), "a staged complete config.toml",
            bed.workdir / "kill-b.log")
        middles.append(managed_files(bed))
        assert any(read(node_file(bed, n, containerd_tasks.CONFIG_PATH)) != config for n in bed.cluster.nodes)
        assert any("/etc/containerd/.config.toml.podnet-new" in files for files in staged_files(bed).values())

        # (c) activated, not restarted: config.toml is the new one, containerd still runs the old
        deploy_until(bed, lambda: any_node(bed, lambda n: read(node_file(bed, n, containerd_tasks.CONFIG_PATH))
                                           == config), "an activated config.toml", bed.workdir / "kill-c.log")
        middles.append(managed_files(bed))
        activated = [n for n in bed.cluster.nodes if read(node_file(bed, n, containerd_tasks.CONFIG_PATH)) == config]
        assert activated
        for node in activated:
            assert bed.containerd_pid(node) == pids[node.name], node.name  # not restarted yet ...
            assert node_file(bed, node, f"{ops.RESTART_PENDING_DIR}/containerd.service").exists()  # ... but marked

        # (a) while the CNI plugins' archive is unpacked on a node (after the containerd steps)
        deploy_until(bed, lambda: any_node(bed, lambda n: unpacking(bed, n)), "a CNI plugins archive being unpacked",
                     bed.workdir / "kill-a.log")
        middles.append(managed_files(bed))
    left = staged_files(bed)
    # the archive, whole and checked, stays for the next run (unless the node's command finished without pyinfra)
    kept = {node.name: [p.stat().st_size for p in release_files(bed, node) if not p.name.startswith(".")]
            for node in bed.cluster.nodes}
    for node in bed.cluster.nodes:  # the restart left pending by (c) was done by the run killed at (a)
        assert bed.containerd_pid(node) != pids[node.name], node.name
        assert not node_file(bed, node, f"{ops.RESTART_PENDING_DIR}/containerd.service").exists()

    marks = [node_costs.mark(node) for node in bed.cluster.nodes]
    run = converge(bed)
    for node, mark in zip(bed.cluster.nodes, marks):  # the archive the killed run left is used, not sent again
        # every frame towards the node (its veth: sshd logs no byte count when pyinfra resets the connection)
        received = node_costs.veth_since(node, mark)[0]
        for size in kept[node.name]:
            assert received is not None and received < size, (node.name, received)
    changed = run.changed_operations()
    # the killed run's command may still finish on a node after pyinfra is gone (its staged files activated then)
    assert changed.get(STAGED_OP, 0) <= sum(1 for files in left.values() if files), changed
    assert all(release_files(bed, node) == [] for node in bed.cluster.nodes)  # used, then removed
    assert staged_files(bed) == {node.name: [] for node in bed.cluster.nodes}
    after = managed_files(bed)
    for middle in middles:
        assert_old_or_new(bed, middle, before, after)
    bed.wait_for_flannel()
    running = bed.sh(bed.cluster.nodes[-1], "/usr/local/bin/containerd config dump")
    assert "/opt/cni/bin" in running  # containerd runs podnet's config (with the CNI section)


def test_a_change_run_killed_at_each_point_leaves_no_half_written_file_and_the_next_run_finishes_it(bed):
    versions = sorted(bed.mirror.manifest["cni_plugins"])
    current = bed.inventory_data()["cni_plugins_version"]
    other = next(v for v in versions if v != current)
    new_plugins = plugin_members(bed, other)
    before = managed_files(bed)
    changing = {name for name, data in new_plugins.items()
                if before[bed.cluster.nodes[0].name].get(f"{PLUGIN_DIR}/{name}") != hashlib.sha256(data).hexdigest()}
    assert changing
    bed.write_inventory(cni_plugins_version=other, flannel_mtu=1400)

    archive = bed.mirror.path("cni_plugins", other)
    size = archive.stat().st_size

    def arriving(node: Node) -> list[Path]:
        return archive_arriving(bed, node, other)

    def sizes(node: Node) -> list[int]:
        found = []
        for path in arriving(node):
            try:
                found.append(path.stat().st_size)
            except OSError:
                pass
        return found

    def archive_uploaded_whole(node: Node) -> bool:
        return size in sizes(node) and any(read(path) == archive.read_bytes() for path in arriving(node))

    def all_active(node: Node) -> bool:
        return all(read(node_file(bed, node, f"{PLUGIN_DIR}/{name}")) == new_plugins[name] for name in changing)

    middles = []
    with slow_links(bed):
        # (a) while the archive is uploaded
        deploy_until(bed, lambda: any_node(bed, lambda n: any(0 < found < size for found in sizes(n))),
                     "the plugins' archive arriving", bed.workdir / "change-a.log")
        middles.append(managed_files(bed))
        # (b) the archive uploaded whole, not yet checked and unpacked (the partial one of (a) removed first)
        deploy_until(bed, lambda: any_node(bed, archive_uploaded_whole), "the plugins' archive uploaded whole",
                     bed.workdir / "change-b.log")
        middles.append(managed_files(bed))
        assert not any_node(bed, all_active)  # uploaded, none activated
        deploy_until(bed, lambda: any_node(bed, all_active), "the new plugins activated",
                     bed.workdir / "change-c.log")
        middles.append(managed_files(bed))
    run = converge(bed)
    assert run.changed_operations().get("cni: 10-flannel.conflist") == 2, run.changed_operations()
    assert staged_files(bed) == {node.name: [] for node in bed.cluster.nodes}
    after = managed_files(bed)
    for middle in middles:
        assert_old_or_new(bed, middle, before, after)
    for node in bed.cluster.nodes:
        assert all(after[node.name][f"{PLUGIN_DIR}/{name}"] == hashlib.sha256(new_plugins[name]).hexdigest()
                   for name in changing)
        assert '"mtu": 1400' in bed.sh(node, f"cat {CONFLIST}")


# --- 1b. an archive corrupted on a node before it is unpacked ------------------------------------


def test_an_archive_corrupted_on_a_node_before_activation_stops_the_run_and_the_live_files_stay(bed):
    bed.write_inventory()
    assert bed.deploy().returncode == 0  # converged on the release's plugins (this test also runs alone)
    node = bed.cluster.nodes[-1]
    current = bed.inventory_data()["cni_plugins_version"]
    other = next(v for v in sorted(bed.mirror.manifest["cni_plugins"]) if v != current)
    good = bed.mirror.path("cni_plugins", other).read_bytes()
    corrupted = bytearray(good)
    corrupted[len(corrupted) // 2] ^= 0xFF  # one byte flipped: same size
    before = managed_files(bed)
    releases = node_file(bed, node, node_releases.RELEASES_DIR)
    bed.write_inventory(cni_plugins_version=other)

    def uploaded() -> Path | None:
        """The archive, arrived whole under its staged name on the node (not yet checked there)."""
        for path in releases.glob(f".*{bed.mirror.path('cni_plugins', other).name}{ops.STAGED_SUFFIX}"):
            try:
                if path.stat().st_size == len(good) and path.read_bytes() == good:
                    return path
            except OSError:
                pass
        return None

    def corrupt(proc) -> None:
        uploaded().write_bytes(corrupted)  # on the node, between its upload and the command that unpacks it

    log = bed.workdir / "corrupted.log"
    with slow_links(bed):
        run = bed.finish_deploy(deploy_until(bed, lambda: uploaded() is not None,
                                             f"the plugins' archive uploaded to {node.name}", log, then=corrupt), log)
    assert run.returncode != 0
    url = bed.mirror.url(bed.base_url, "cni_plugins", other)
    assert (f"podnet: {node.name}: {url} has sha256 {hashlib.sha256(corrupted).hexdigest()} on the node, expected "
            f"{hashlib.sha256(good).hexdigest()} (") in run.output, run.output[-4000:]
    assert f"podnet: {node.name} failed at 'cni: plugin binaries'" in run.output
    after = managed_files(bed)
    assert after[node.name] == before[node.name]  # every live file as it was: nothing of the archive activated
    assert staged_files(bed)[node.name] == [] and release_files(bed, node) == []  # the bad archive removed
    other_node = bed.cluster.nodes[0]
    assert after[other_node.name] != before[other_node.name]  # the other node completed

    rerun = converge(bed)  # sent again: converges, and the run after it changes nothing
    assert rerun.changed_operations().get("cni: plugin binaries") == 1, rerun.changed_operations()
    converged = managed_files(bed)
    assert [{path: digest for path, digest in converged[n.name].items() if path.startswith("/opt/cni/bin/")}
            for n in (node, other_node)] == [{path: digest for path, digest in after[other_node.name].items()
                                              if path.startswith("/opt/cni/bin/")}] * 2  # the same new plugins


# --- 2. a node lost mid-run -----------------------------------------------------------------------------


def in_node(node: Node, command: str) -> subprocess.CompletedProcess:
    """A command inside the node's mount and PID namespaces, from the host (works without its sshd)."""
    return subprocess.run(["nsenter", "-t", str(node.leader_pid), "-m", "-p", "-u", "-i", "--", "sh", "-c", command],
                          capture_output=True, text=True, timeout=60)


def test_a_node_lost_mid_run_is_named_with_what_was_left_undone_and_a_rerun_converges_it(bed):
    first, lost = bed.cluster.nodes
    current = bed.inventory_data()["cni_plugins_version"]
    other = next(v for v in sorted(bed.mirror.manifest["cni_plugins"]) if v != current)
    bed.write_inventory(cni_plugins_version=other, flannel_mtu=1400)
    assert bed.deploy().returncode == 0  # converged on other plugins and an MTU (this test also runs alone)
    bed.write_inventory()  # back to the release's plugins and no flannel_mtu: both nodes change
    dropped = []

    def lose_node(proc) -> None:
        # the run holds the node's lock: its connection's sshd process on the node is recorded there
        connection = read(node_file(bed, lost, LOCK_PATH)).decode().split("\t")[0]
        stopped = in_node(lost, f"systemctl stop ssh.service && kill -KILL {int(connection)}")
        assert stopped.returncode == 0, stopped.stderr
        dropped.append(connection)

    log = bed.workdir / "lost.log"
    with slow_links(bed):
        proc = deploy_until(bed, lambda: bool(archive_arriving(bed, lost, current)), f"uploads to {lost.name}", log,
                            then=lose_node)
        run = bed.finish_deploy(proc, log)
    try:
        assert run.returncode != 0
        assert (f"podnet: {lost.name} failed at 'cni: plugin binaries'; left undone there: "
                "cni: 10-flannel.conflist.") in run.output, run.output[-4000:]
        assert f"podnet: {first.name} failed at" not in run.output
        assert '"mtu"' not in bed.sh(first, f"cat {CONFLIST}")  # the other node completed
        assert '"mtu": 1400' in read(node_file(bed, lost, CONFLIST)).decode()  # not done on the lost one
    finally:
        back = in_node(lost, "systemctl start ssh.service")
        assert back.returncode == 0, back.stderr
    marks = [node_costs.mark(node) for node in bed.cluster.nodes]
    rerun = bed.deploy()
    assert rerun.returncode == 0, rerun.output[-4000:]
    assert rerun.changed_operations() == {STAGED_OP: 1, "cni: plugin binaries": 1, "cni: 10-flannel.conflist": 1}
    assert node_costs.cost_since(first, marks[0]).commands == 1  # the other node: the probe, nothing else
    assert bed.deploy().changed_operations() == {}


# --- 3. two runs at once ------------------------------------------------------------------------------------


def test_a_second_run_refuses_naming_the_first_and_a_killed_runs_lock_does_not_stop_the_next(bed):
    versions = sorted(bed.mirror.manifest["cni_plugins"])
    other = next(v for v in versions if v != bed.inventory_data()["cni_plugins_version"])
    bed.write_inventory(cni_plugins_version=other, flannel_mtu=1300)
    log = bed.workdir / "first-of-two.log"
    second = []

    def start_second(proc) -> None:
        second.append((proc, bed.deploy()))

    with slow_links(bed):
        me = f"{getpass.getuser()}@{socket.gethostname()}"
        deploy_until(bed, lambda: bool(archive_arriving(bed, bed.cluster.nodes[0], other)), "the first run's uploads",
                     log, then=start_second)
        proc, refused = second[0]
        first = bed.finish_deploy(proc, log)
    assert refused.returncode != 0
    assert f"is being deployed by {me} (pyinfra PID {proc.pid}, started " in refused.output, refused.output[-3000:]
    assert refused.results == {}  # it ran no operation: nothing interleaved
    assert first.returncode == 0, first.output[-4000:]
    assert first.changed_operations() == {"cni: plugin binaries": 2, "cni: 10-flannel.conflist": 2}

    bed.write_inventory()
    with slow_links(bed):
        deploy_until(bed, lambda: bool(archive_arriving(bed, bed.cluster.nodes[0],
                                                        bed.inventory_data()["cni_plugins_version"])),
                     "a run's uploads", bed.workdir / "killed-holder.log")
    assert all(read(node_file(bed, n, LOCK_PATH)) for n in bed.cluster.nodes)  # the killed run's lock is left
    after_kill = bed.deploy()  # at once: the killed run's lock is stale
    assert after_kill.returncode == 0, after_kill.output[-4000:]
    assert "is being deployed by" not in after_kill.output
    assert bed.deploy().changed_operations() == {}


# --- 4. a node's container rebooted --------------------------------------------------------------------------


def test_after_a_reboot_everything_comes_back_by_itself_and_a_rerun_changes_nothing(bed):
    first, rebooted = bed.cluster.nodes
    assert bed.deploy().returncode == 0  # converged (this test also runs alone)
    bed.wait_for_flannel()
    files = managed_files(bed)[rebooted.name]
    old_leader = rebooted.leader_pid
    bed.cluster.restart_node(rebooted)
    assert rebooted.leader_pid != old_leader
    bed.kube.after_reboot(rebooted)  # the test bed's own /run and route, not podnet's
    assert bed.sh(rebooted, "cat /proc/sys/net/ipv4/ip_forward /proc/sys/net/bridge/bridge-nf-call-iptables "
                            "/proc/sys/net/bridge/bridge-nf-call-ip6tables").split() == ["1", "1", "1"]
    assert bed.sh(rebooted, "systemctl is-active containerd").strip() == "active"
    assert managed_files(bed)[rebooted.name] == files
    bed.wait_for_flannel()  # flanneld (the DaemonSet pod) is back and wrote /run/flannel/subnet.env again
    pods = [bed.run_pod(rebooted, "pod-after-reboot"), bed.run_pod(first, "pod-beside-reboot")]
    try:
        assert ipaddress.ip_address(pods[0].ip) in bed.node_subnet(rebooted).network
        assert bed.ping(pods[0], pods[1].ip) and bed.ping(pods[1], pods[0].ip)
    finally:
        for pod in pods:
            bed.remove_pod(pod)
    rerun = bed.deploy()
    assert rerun.returncode == 0, rerun.output[-4000:]
    assert rerun.changed_operations() == {}
