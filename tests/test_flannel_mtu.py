"""
A pod MTU the backend cannot carry is refused before any change (tasks/flannel.py
``pod_mtu_fits``), from the MTU of the interface flanneld uses, as the probe reads it.
The probe's shell for that interface runs for real here against this machine's links.
"""

from __future__ import annotations

import subprocess

import pytest

from tasks import flannel
from tasks.engine.probe import NodeState
from tests.support.hosts import settings


def node_with(iface: str, mtu: int) -> NodeState:
    return NodeState(queries={"flannel_iface_mtu": (0, [f"{iface} {mtu}"])})


@pytest.mark.parametrize("backend, node_ip, iface_mtu, largest", [
    ("vxlan", "192.168.50.10", 1500, 1450),
    ("vxlan", "192.168.50.10", 9000, 8950),
    ("vxlan", "fd00::10", 1500, 1430),  # an IPv6 underlay: 20 bytes more than flanneld's constant
    ("wireguard", "192.168.50.10", 1500, 1420),
    ("host-gw", "192.168.50.10", 1500, 1500),
    ("host-gw", "192.168.50.10", 1400, 1400),
])
def test_the_largest_pod_mtu_is_the_interface_mtu_minus_the_backends_overhead(backend, node_ip, iface_mtu, largest):
    extra = {"flannel_vni": 1} if backend == "vxlan" else {}
    fits = settings(flannel_backend=backend, node_ip=node_ip, flannel_mtu=largest, **extra)
    flannel.pod_mtu_fits(fits, node_with("eth1", iface_mtu), "cp1")  # no error
    too_large = settings(flannel_backend=backend, node_ip=node_ip, flannel_mtu=largest + 1, **extra)
    with pytest.raises(flannel.PodMtuError) as raised:
        flannel.pod_mtu_fits(too_large, node_with("eth1", iface_mtu), "cp1")
    adds = f"adds {iface_mtu - largest} bytes" if iface_mtu != largest else "adds nothing"
    assert str(raised.value) == (
        f"cp1: flannel_mtu: {largest + 1} is too large: flanneld's interface eth1 has MTU {iface_mtu} and the "
        f"{backend} backend {adds}, so pod packets of more than {largest} bytes would be dropped between nodes; "
        f"set flannel_mtu to at most {largest}, or leave it unset (flanneld then derives it)")


def test_the_reported_case_vxlan_with_1500():
    with pytest.raises(flannel.PodMtuError, match=r"set flannel_mtu to at most 1450"):
        flannel.pod_mtu_fits(settings(flannel_mtu=1500), node_with("ens3", 1500), "node1")


def test_nothing_is_asked_or_checked_without_a_pod_mtu():
    s = settings()
    assert "flannel_iface_mtu" not in flannel.probe_request(s, first_control_plane=False).queries
    flannel.pod_mtu_fits(s, node_with("eth0", 576), "w1")


def test_an_interface_the_probe_could_not_find_is_left_to_flanneld():
    flannel.pod_mtu_fits(settings(flannel_mtu=9000), NodeState(queries={"flannel_iface_mtu": (1, [])}), "w1")


def run_probe_shell(**data) -> tuple[int, str]:
    done = subprocess.run(["sh", "-c", flannel.iface_mtu_command(settings(flannel_mtu=1400, **data))],
                          capture_output=True, text=True, timeout=30)
    return done.returncode, done.stdout


def sysfs_mtu(iface: str) -> int:
    with open(f"/sys/class/net/{iface}/mtu") as f:
        return int(f.read())


def test_the_probe_reads_the_named_interface():
    assert run_probe_shell(flannel_iface="lo") == (0, f"lo {sysfs_mtu('lo')}\n")
    assert run_probe_shell(flannel_iface="podnet-none0")[0] != 0


def test_the_probe_finds_the_interface_holding_an_address():
    assert run_probe_shell(flannel_iface="127.0.0.1", node_ip="127.0.0.1") == (0, f"lo {sysfs_mtu('lo')}\n")


def test_the_probe_uses_the_default_routes_interface_without_flannel_iface():
    route = subprocess.run(["ip", "-o", "route", "show", "default"], capture_output=True, text=True).stdout.split()
    if "dev" not in route:
        pytest.skip("this machine has no default route")
    iface = route[route.index("dev") + 1]
    assert run_probe_shell() == (0, f"{iface} {sysfs_mtu(iface)}\n")
