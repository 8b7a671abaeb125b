"""Tests of the local test-bed cluster harness (testbed/localcluster).

Unit tests (pure functions) run anywhere; the e2e ones boot real Debian nodes with
systemd-nspawn and need root, debootstrap and systemd-container.
"""

from __future__ import annotations

import ast
import os
import shutil
import signal
import subprocess
import sys
import time
from ipaddress import IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

import pytest

from testbed.localcluster import Cluster, ClusterError, choose_subnet
from testbed.localcluster.mounts import Mount, mounts_under
from testbed.localcluster.net import bridge_name, candidate_subnets, candidate_subnets6, link_info, node_address
from testbed.localcluster.node import cgroup_fixup_commands
from testbed.localcluster.rootfs import debian_mirror
from testbed.localcluster.state import load_state
from testbed.localcluster.teardown import our_nspawn_pids

REPO = Path(__file__).resolve().parent.parent

can_boot = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("systemd-nspawn") or not shutil.which("debootstrap"),
    reason="booting nodes needs root, systemd-nspawn and debootstrap",
)


# --- unit tests: subnet choice -------------------------------------------------------

HOST_ADDRS = [  # shaped like `ip -j addr`
    {"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}]},
    {
        "ifname": "eth0",
        "addr_info": [
            {"family": "inet", "local": "192.0.2.2", "prefixlen": 24},
            {"family": "inet6", "local": "fd00::2", "prefixlen": 64},
        ],
    },
]
HOST_ROUTES = [  # shaped like `ip -j route`
    {"dst": "default", "gateway": "192.0.2.1", "dev": "eth0"},
    {"dst": "192.0.2.0/24", "dev": "eth0"},
]
A, B = IPv4Network("172.30.5.0/24"), IPv4Network("172.30.6.0/24")


def test_subnet_chooser_rejects_candidate_overlapping_a_route():
    routes = HOST_ROUTES + [{"dst": "172.30.5.0/24", "dev": "docker0"}]
    assert choose_subnet("x", HOST_ADDRS, routes, candidates=[A, B]) == B


def test_subnet_chooser_rejects_candidate_inside_a_wider_route():
    routes = HOST_ROUTES + [{"dst": "172.16.0.0/12", "gateway": "192.0.2.9", "dev": "eth0"}]
    with pytest.raises(ClusterError, match="no free private /24"):
        choose_subnet("x", HOST_ADDRS, routes, candidates=[A, B])


def test_subnet_chooser_rejects_candidate_overlapping_an_address():
    addrs = HOST_ADDRS + [
        {"ifname": "wg0", "addr_info": [{"family": "inet", "local": "172.30.5.77", "prefixlen": 32}]}
    ]
    assert choose_subnet("x", addrs, HOST_ROUTES, candidates=[A, B]) == B


def test_subnet_chooser_ignores_default_route_and_ipv6():
    assert choose_subnet("x", HOST_ADDRS, HOST_ROUTES, candidates=[A, B]) == A


def test_ipv6_subnets_are_unique_local_64s_avoiding_every_host_network():
    ula = IPv6Network("fc00::/7")  # RFC 4193
    candidates = candidate_subnets6("e2e2")
    assert len(set(candidates)) == 256
    assert all(c.prefixlen == 64 and c.subnet_of(ula) for c in candidates)
    assert candidates == candidate_subnets6("e2e2") and candidates[0] != candidate_subnets6("e2e1")[0]
    first, second = candidates[:2]
    # a host address inside the first candidate, or a route over it, moves the choice on; the host's own
    # IPv6 network (fd00::/64 on eth0) and the default route do not overlap any candidate
    taken = HOST_ADDRS + [{"ifname": "wg1", "addr_info": [{"family": "inet6", "local": str(first[5]),
                                                           "prefixlen": 128}]}]
    assert choose_subnet("e2e2", HOST_ADDRS, [{"dst": "default", "gateway": "fd00::1"}], version=6) == first
    assert choose_subnet("e2e2", taken, [], version=6) == second
    assert choose_subnet("e2e2", HOST_ADDRS, [{"dst": "fd70:6e62::/32", "dev": "tun0"}, {"dst": "fd00::/64"}],
                         candidates=[first, IPv6Network("fd71::/64")], version=6) == IPv6Network("fd71::/64")
    with pytest.raises(ClusterError, match="no free unique local /64"):
        choose_subnet("e2e2", HOST_ADDRS, [{"dst": "fd00::/8", "dev": "eth0"}], version=6)
    # the IPv4 choice ignores IPv6 routes and addresses, the IPv6 one IPv4's
    assert choose_subnet("x", HOST_ADDRS, [{"dst": "fd70:6e62::/32"}], candidates=[A]) == A
    assert node_address(first, 0) == first.network_address + 0x11
    assert node_address(first, 1) == IPv6Address(f"{first.network_address}".rstrip(":") + "::12")


def test_subnet_choice_is_stable_per_name():
    assert candidate_subnets("podnet") == candidate_subnets("podnet")
    assert candidate_subnets("podnet")[0] != candidate_subnets("other")[0]
    assert choose_subnet("podnet", HOST_ADDRS, HOST_ROUTES) == candidate_subnets("podnet")[0]


def test_bridge_name_fits_an_interface_name():
    assert bridge_name("podnet") == "br-podnet"
    long = bridge_name("a-very-long-cluster-name")
    assert len(long) <= 15 and long != bridge_name("a-very-long-cluster-nam")


# --- unit tests: other pure helpers --------------------------------------------------


def test_debian_mirror_from_deb822_sources():
    text = """Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.example/debian
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: http://deb.example/debian-security
Suites: bookworm-security
Components: main
"""
    assert debian_mirror("bookworm", text) == "http://deb.example/debian"
    assert debian_mirror("trixie", text) == "http://deb.example/debian"  # plain codename stanza


def test_cgroup_fixup_remounts_only_readonly_v1_controllers():
    mounts = [
        Mount("/sys/fs/cgroup", "ro,nosuid", "tmpfs", "tmpfs", "ro"),
        Mount("/sys/fs/cgroup/systemd", "rw", "cgroup", "cgroup", "rw,name=systemd"),
        Mount("/sys/fs/cgroup/cpu,cpuacct", "ro,nosuid", "cgroup", "cgroup", "rw,cpu,cpuacct"),
        Mount("/sys/fs/cgroup/pids", "rw", "cgroup", "cgroup", "rw,pids"),
        Mount("/sys/fs/cgroup/unified", "rw", "cgroup2", "cgroup", "rw"),
    ]
    assert cgroup_fixup_commands(mounts) == [
        ["mount", "-o", "remount,rw", "/sys/fs/cgroup"],
        ["umount", "/sys/fs/cgroup/cpu,cpuacct"],
        ["mount", "-t", "cgroup", "-o", "cpu,cpuacct", "cgroup", "/sys/fs/cgroup/cpu,cpuacct"],
    ]
    # a rebooted node: its services already hold the read-only mounts, which are made read-write in place
    assert cgroup_fixup_commands(mounts, in_use=True) == [
        ["mount", "-o", "remount,rw", "/sys/fs/cgroup"],
        ["mount", "-o", "remount,bind,rw", "/sys/fs/cgroup/cpu,cpuacct"],
    ]


# --- e2e helpers ---------------------------------------------------------------------


def leftovers(state_dir: Path, bridge: str, node_names: list[str]) -> list[str]:
    """Everything of a cluster still present on the host (empty list = clean)."""
    found = [f"nspawn pid {pid}" for pid in our_nspawn_pids(state_dir)]
    found += [f"mount {m.mountpoint}" for m in mounts_under(state_dir)]
    if link_info(bridge) is not None:
        found.append(f"bridge {bridge}")
    found += [f"veth vb-{n}" for n in node_names if Path(f"/sys/class/net/vb-{n}").exists()]
    mount_table = Path("/proc/self/mounts").read_text().split()
    found += [f"overlay {n}" for n in node_names if n in mount_table]
    return found


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with Cluster(name="lctest", nodes=2, state_dir=tmp_path_factory.mktemp("lctest")) as c:
        yield c


# --- e2e tests -----------------------------------------------------------------------


@pytest.mark.e2e
@can_boot
def test_each_node_has_its_own_hostname_and_address(cluster):
    assert [n.name for n in cluster.nodes] == ["lctest-1", "lctest-2"]
    assert len({n.ip for n in cluster.nodes}) == 2
    for n in cluster.nodes:
        assert n.pid and n.leader_pid and Path(n.rootfs).is_dir()
        assert cluster.ssh(n, "hostname", check=True).stdout.strip() == n.name
        addrs = cluster.ssh(n, "ip -4 -o addr show dev host0", check=True).stdout
        assert f" {n.ip}/24 " in addrs


@pytest.mark.e2e
@can_boot
def test_nodes_have_no_default_route_and_distinct_identities(cluster):
    ids = set()
    for n in cluster.nodes:
        assert cluster.ssh(n, "ip route show default", check=True).stdout.strip() == ""
        ids.add(cluster.ssh(n, "cat /etc/machine-id /etc/ssh/ssh_host_ed25519_key.pub").stdout)
    assert len(ids) == len(cluster.nodes)


@pytest.mark.e2e
@can_boot
def test_nodes_reach_each_other_over_the_bridge(cluster):
    first, second = cluster.nodes
    for src, dst in ((first, second), (second, first)):
        result = cluster.ssh(src, f"ping -c 2 -W 2 {dst.ip}", timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr
    # Names resolve through /etc/hosts.
    assert cluster.ssh(first, f"getent hosts {second.name}").stdout.split()[0] == second.ip


@pytest.mark.e2e
@can_boot
def test_node_is_ready_for_containerd(cluster):
    n = cluster.nodes[0]
    state = cluster.ssh(n, "systemctl is-system-running").stdout.strip()
    assert state in ("running", "degraded")
    # cgroup v1 controllers writable (runc creates pod cgroups there).
    cluster.ssh(n, "mkdir /sys/fs/cgroup/cpuset/lctest && rmdir /sys/fs/cgroup/cpuset/lctest",
                check=True)  # fmt: skip
    # containerd's overlayfs snapshotter works in /var/lib/containerd (not on the overlay root).
    script = (
        "set -e; d=$(mktemp -d /var/lib/containerd/t.XXXX); mkdir $d/l $d/u $d/w $d/m;"
        " echo hi > $d/l/f; mount -t overlay o -o lowerdir=$d/l,upperdir=$d/u,workdir=$d/w $d/m;"
        " cat $d/m/f; umount $d/m; rm -rf $d"
    )
    assert cluster.ssh(n, script, check=True).stdout.strip() == "hi"
    assert "loglevel VERBOSE" in cluster.ssh(n, "sshd -T", check=True).stdout


@pytest.mark.e2e
@can_boot
def test_up_reuses_a_running_cluster_and_refuses_a_different_one(cluster):
    again = Cluster(name="lctest", nodes=2, state_dir=cluster.state_dir).up()
    assert [(n.name, n.ip, n.pid) for n in again.nodes] == [
        (n.name, n.ip, n.pid) for n in cluster.nodes
    ]
    with pytest.raises(ClusterError, match="cannot be reused"):
        Cluster(name="lctest", nodes=3, state_dir=cluster.state_dir).up()


@pytest.mark.e2e
@can_boot
def test_inventory_drives_pyinfra(cluster, tmp_path):
    data = {"pod_cidr": "10.244.0.0/16", "flags": [1, True, None], "nested": {"a": "b"}}
    path = cluster.write_inventory(tmp_path / "inventory.py", data, control_plane=1)
    body = ast.parse(path.read_text()).body
    assigned = {t.id for stmt in body if isinstance(stmt, ast.Assign) for t in stmt.targets}
    assert assigned == {"control_plane", "workers", "all"}
    result = subprocess.run(
        [sys.executable, "-m", "pyinfra", "-y", str(path), "exec", "--", "echo", "$(hostname)"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for n in cluster.nodes:
        assert f"[{n.name}] {n.name}" in result.stdout + result.stderr  # pyinfra logs to stderr


@pytest.mark.e2e
@can_boot
def test_teardown_leaves_nothing_and_is_repeatable(tmp_path):
    c = Cluster(name="lcdown", nodes=2, state_dir=tmp_path / "state")
    with pytest.raises(RuntimeError, match="boom"), c:
        names = [n.name for n in c.nodes]
        assert leftovers(c.state_dir, c.bridge, names)  # sanity: there is something
        raise RuntimeError("boom")  # the context manager must still tear down
    assert leftovers(c.state_dir, c.bridge, names) == []
    c.down()  # a second tear-down is harmless
    assert leftovers(c.state_dir, c.bridge, names) == []


@pytest.mark.e2e
@can_boot
def test_cli_down_after_crash_mid_up(tmp_path):
    """`up` killed -9 while booting leaves a partial state; `down` in another process cleans."""
    state_dir = tmp_path / "state"
    cli = [sys.executable, "-m", "testbed.localcluster"]
    up = subprocess.Popen(
        [*cli, "up", "--name", "lccrash", "--nodes", "2", "--state-dir", str(state_dir)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(300):  # until the first node process is recorded (bounded: 30 s)
            nodes = (load_state(state_dir) or {}).get("nodes", [])
            if any(n.get("pid") for n in nodes) or up.poll() is not None:
                break
            time.sleep(0.1)
    finally:
        up.send_signal(signal.SIGKILL)
        up.wait(timeout=10)
    assert (load_state(state_dir) or {}).get("status") == "starting"
    names = ["lccrash-1", "lccrash-2"]
    down = [*cli, "down", "--state-dir", str(state_dir)]
    for _ in range(2):  # second run: nothing left to do, still succeeds
        result = subprocess.run(
            down, cwd=REPO, capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 0, result.stderr
        assert leftovers(state_dir, "br-lccrash", names) == []


def test_a_veth_that_goes_away_while_it_is_read_counts_as_gone(monkeypatch):
    """nspawn removes a node's veth as it exits, possibly between the check and the read (seen in a teardown)."""
    from testbed.localcluster import net
    from testbed.localcluster.util import ClusterError

    answers = iter([True, False, True, False])  # there when checked, gone when read: twice

    class VanishingLink:
        def __init__(self, path):
            self.path = path

        def exists(self):
            return next(answers)

    monkeypatch.setattr(net, "Path", VanishingLink)

    def vanished(*args):
        raise ClusterError("command failed (exit 1): ip -j -d link show dev vb-x-1\nDevice \"vb-x-1\" does not exist.")

    monkeypatch.setattr(net, "_ip_json", vanished)
    assert net.link_info("vb-x-1") is None
    net.delete_veth("vb-x-1", "br-x")  # nothing to delete, no error
