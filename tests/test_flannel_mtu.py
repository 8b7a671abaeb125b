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


DUAL = {"cluster_cidr_ipv6": "fd00:10:244::/56"}


@pytest.mark.parametrize("backend, data, iface_mtu, largest", [
    ("vxlan", {}, 1500, 1450),
    ("vxlan", {}, 9000, 8950),
    # the underlay's family is the pod packet's (flannel.<VNI> over IPv4), whatever node_ip is
    ("vxlan", {"node_ip": "fd00::10"}, 1500, 1450),
    ("wireguard", {}, 1500, 1420),
    ("host-gw", {}, 1500, 1500),
    ("host-gw", {}, 1400, 1400),
    ("wireguard", DUAL, 1500, 1420),  # 80 in both families
    ("host-gw", DUAL, 1500, 1500),
])
def test_the_largest_pod_mtu_is_the_interface_mtu_minus_the_backends_overhead(backend, data, iface_mtu, largest):
    extra = {"flannel_vni": 1} if backend == "vxlan" else {}
    fits = settings(flannel_backend=backend, flannel_mtu=largest, **data, **extra)
    flannel.pod_mtu_fits(fits, node_with("eth1", iface_mtu), "cp1")  # no error
    too_large = settings(flannel_backend=backend, flannel_mtu=largest + 1, **data, **extra)
    with pytest.raises(flannel.PodMtuError) as raised:
        flannel.pod_mtu_fits(too_large, node_with("eth1", iface_mtu), "cp1")
    adds = f"adds {iface_mtu - largest} bytes" if iface_mtu != largest else "adds nothing"
    assert str(raised.value) == (
        f"cp1: flannel_mtu: {largest + 1} is too large: flanneld's interface eth1 has MTU {iface_mtu} and the "
        f"{backend} backend {adds}, so pod packets of more than {largest} bytes would be dropped between nodes; "
        f"set flannel_mtu to at most {largest}, or leave it unset (flanneld then derives it)")


@pytest.mark.parametrize("iface_mtu, largest", [(1500, 1430), (9000, 8930)])
def test_on_dual_stack_vxlan_carries_20_bytes_less_in_ipv6(iface_mtu, largest):
    assert flannel.largest_pod_mtu(settings(**DUAL), iface_mtu) == largest
    assert flannel.largest_pod_mtu(settings(), iface_mtu) == largest + 20
    flannel.pod_mtu_fits(settings(flannel_mtu=largest, **DUAL), node_with("eth1", iface_mtu), "cp1")
    with pytest.raises(flannel.PodMtuError) as raised:
        flannel.pod_mtu_fits(settings(flannel_mtu=largest + 1, **DUAL), node_with("eth1", iface_mtu), "cp1")
    assert str(raised.value) == (
        f"cp1: flannel_mtu: {largest + 1} is too large: flanneld's interface eth1 has MTU {iface_mtu} and the vxlan "
        "backend adds 50 bytes to IPv4 and 70 bytes to IPv6 pod packets, so pod packets of more than "
        f"{largest} bytes would be dropped between nodes; set flannel_mtu to at most {largest}")


def test_flanneld_own_mtu_on_dual_stack_vxlan_is_named_as_too_large_for_ipv6(caplog):
    s = settings(**DUAL)
    assert "flannel_iface_mtu" in flannel.mtu_probe_request(s).queries  # asked although flannel_mtu is unset
    found = flannel.pod_mtu_findings(s, node_with("eth1", 1500), "w1")
    assert [f.message for f in found] == [
        "w1: flannel_mtu unset: flanneld's own pod MTU 1450 is too large for IPv6: flanneld subtracts 50 bytes from "
        "eth1's MTU 1500 for both families, but the vxlan backend adds 50 bytes to IPv4 and 70 bytes to IPv6 pod "
        "packets: its IPv6 device carries at most 1430, so IPv6 pod packets of more than 1430 bytes between nodes "
        "get ICMPv6 Packet Too Big; set flannel_mtu = 1430 to carry every pod packet of both families"]
    assert not any(f.is_error for f in found)
    # single stack, or a backend whose overhead is the same in both families: nothing to say, nothing asked
    for quiet in (settings(), settings(flannel_backend="wireguard", **DUAL), settings(flannel_backend="host-gw", **DUAL)):
        assert flannel.mtu_probe_request(quiet).queries == {}
        assert flannel.pod_mtu_findings(quiet, node_with("eth1", 1500), "w1") == []


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
