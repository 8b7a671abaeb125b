"""
Settings validation (tasks/settings/__init__.py) and artifact resolution (tasks/artifacts/catalog.py).

Every rule has a failing case whose message is asserted: it names the key, the bad
value and what would be valid, prefixed by the host it was found on.
"""

from __future__ import annotations

import ast
import ipaddress
import re
from pathlib import Path

import pytest
from pyinfra.api import Inventory

from tasks.artifacts import catalog
from tasks.artifacts.catalog import ArtifactError, mirrored, resolve
from tasks import flannel
from tasks.artifacts.checksums import published_source
from tasks.controller_manager import desired_flags
from tasks.settings import SPECS, SettingsError, parse_inventory
from tests.support.hosts import FakeHost, control_plane, parse, problems, settings, worker

REPO = Path(__file__).resolve().parents[1]
SHA_A = "a" * 64
SHA_B = "b" * 64


# --- what parses ---------------------------------------------------------------


def test_defaults_parse_cleanly():
    parsed = parse(control_plane("cp1"), worker("w1"), worker("w2"))
    assert set(parsed) == {"cp1", "w1", "w2"}
    s = parsed["w1"]
    assert s.cluster_cidr == ipaddress.ip_network("10.244.0.0/16")
    assert s.node_cidr_mask_size == 24
    assert s.service_cluster_ip_range == ipaddress.ip_network("10.96.0.0/12")
    assert s.cluster_cidr_ipv6 is None and not s.dual_stack
    assert (s.flannel_backend, s.flannel_vni, s.effective_flannel_port) == ("vxlan", 1, 8472)
    assert s.flannel_rollout == "daemonset"
    assert (s.containerd_version, s.runc_version, s.cni_plugins_version) == ("2.3.4", "1.4.3", "1.9.1")
    assert (s.cni_bin_dir, s.cni_conf_dir) == ("/opt/cni/bin", "/etc/cni/net.d")
    assert s.download_cache_dir == Path("~/.cache/podnet").expanduser()
    assert s.node_ip is None  # "w1" is not an address
    assert parsed["cp1"].is_control_plane and not s.is_control_plane


def test_inventory_name_that_is_an_address_becomes_node_ip():
    parsed = parse(control_plane("192.168.10.11"), worker("192.168.10.12"))
    assert parsed["192.168.10.12"].node_ip == ipaddress.ip_address("192.168.10.12")


def test_dual_stack_parses():
    s = settings(cluster_cidr_ipv6="fd00:10:244::/56", service_cluster_ip_range_ipv6="fd00:10:96::/112",
                 node_cidr_mask_size_ipv6=64)
    assert s.dual_stack
    assert s.cluster_cidr_ipv6 == ipaddress.ip_network("fd00:10:244::/56")
    assert s.service_cluster_ip_range_ipv6 == ipaddress.ip_network("fd00:10:96::/112")
    assert s.node_cidr_mask_size_ipv6 == 64


def test_real_pyinfra_inventory_group_and_host_data():
    inventory = Inventory(
        ([("cp1", {"node_ip": "192.168.1.1"}), "w1"],
         {"cluster_cidr": "10.42.0.0/16", "service_cluster_ip_range": "10.43.0.0/16"}),
        control_plane=(["cp1"], {}),
        workers=(["w1"], {"flannel_iface": "eth1", "ssh_user": "admin"}),
    )
    parsed = parse_inventory(inventory)
    assert {name: str(s.cluster_cidr) for name, s in parsed.items()} == {"cp1": "10.42.0.0/16", "w1": "10.42.0.0/16"}
    assert parsed["cp1"].is_control_plane and not parsed["w1"].is_control_plane
    assert parsed["cp1"].node_ip == ipaddress.ip_address("192.168.1.1")
    assert (parsed["cp1"].flannel_iface, parsed["w1"].flannel_iface) == (None, "eth1")


def test_real_pyinfra_inventory_with_a_typo_in_group_data():
    inventory = Inventory((["cp1", "w1"], {}), control_plane=(["cp1"], {}),
                          workers=(["w1"], {"node_cidr_mask": 25}))
    with pytest.raises(SettingsError) as raised:
        parse_inventory(inventory)
    assert raised.value.problems == ["w1: node_cidr_mask: unknown setting; did you mean 'node_cidr_mask_size'?"]


def test_pyinfra_connector_keys_are_not_podnet_settings():
    s = settings(ssh_user="admin", _sudo=True, fake_delay=0, docker_image="x")
    assert s.cluster_cidr == ipaddress.ip_network("10.244.0.0/16")


def test_host_scope_settings_may_differ_between_hosts():
    parsed = parse(control_plane("cp1", flannel_iface="eth1", node_ip="192.168.1.1"),
                   worker("w1", flannel_iface="ens4", node_ip="192.168.1.2"))
    assert (parsed["cp1"].flannel_iface, parsed["w1"].flannel_iface) == ("eth1", "ens4")


# --- one rule each: the message names key, bad value and what is valid -----------


def only_problem(**data) -> str:
    found = problems(control_plane("cp1", **data))
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("key, value, expected", [
    ("cluster_cidr", "10.244.0.0",
     ("cp1: cluster_cidr: '10.244.0.0' is not valid; expected an IPv4 CIDR with a prefix length, "
     "such as 10.244.0.0/16")),
    ("cluster_cidr", "10.244.300.0/16",
     "cp1: cluster_cidr: '10.244.300.0/16' is not valid; expected an IPv4 CIDR such as 10.244.0.0/16"),
    ("service_cluster_ip_range", "ten.ninety-six/12",
     ("cp1: service_cluster_ip_range: 'ten.ninety-six/12' is not valid; expected an IPv4 CIDR "
     "such as 10.244.0.0/16")),
    ("cluster_cidr", 10,
     "cp1: cluster_cidr: 10 is not valid; expected an IPv4 CIDR with a prefix length, such as 10.244.0.0/16"),
    ("cluster_cidr_ipv6", "fd00:10:244::",
     ("cp1: cluster_cidr_ipv6: 'fd00:10:244::' is not valid; expected an IPv6 CIDR with a prefix length, "
     "such as fd00:10:244::/56")),
])
def test_malformed_cidr(key, value, expected):
    assert only_problem(**{key: value}) == expected


@pytest.mark.parametrize("key, value, network", [
    ("cluster_cidr", "10.244.1.0/16", "10.244.0.0/16"),
    ("service_cluster_ip_range", "10.96.0.1/12", "10.96.0.0/12"),
    ("cluster_cidr_ipv6", "fd00:10:244::1/56", "fd00:10:244::/56"),
])
def test_host_bits_set(key, value, network):
    assert only_problem(**{key: value}) == (
        f"cp1: {key}: {value!r} is not valid; expected a network address without host bits set, "
        f"such as {network}")


@pytest.mark.parametrize("key, value", [("cluster_cidr", "fd00:10:244::/56"),
                                        ("service_cluster_ip_range", "fd00:10:96::/112")])
def test_a_single_stack_ipv6_network_is_refused_before_any_host_with_the_reason(key, value):
    assert only_problem(**{key: value}) == (
        f"cp1: {key}: {value!r} is not valid; expected an IPv4 CIDR such as 10.244.0.0/16, not an IPv6 one: podnet runs "
        "IPv6 only beside IPv4 (dual stack: keep the IPv4 value here and set the _ipv6 setting too), with IPv4 first; "
        "a single-stack IPv6 (or IPv6-first) network is not supported: flanneld v0.28.9 (net-conf EnableIPv4: false) "
        "and kube-controller-manager (one IPv6 --cluster-cidr) both run one, but podnet always renders an IPv4 pod "
        "network (flannel's Network with EnableIPv4, the first --cluster-cidr, kubeadm's podSubnet, the IPv4 service "
        "range) and checks nothing without it")


def test_ipv6_where_ipv4_wanted():
    assert only_problem(cluster_cidr_ipv6="10.245.0.0/16") == (
        "cp1: cluster_cidr_ipv6: '10.245.0.0/16' is not valid; expected an IPv6 CIDR such as "
        "fd00:10:244::/56, not an IPv4 one")


# Node masks: kube-controller-manager refuses a node mask shorter than the cluster prefix
# (NewNodeIpamController) and, for IPv6 only, one more than 16 bits longer (cidrset); the
# host-local IPAM plugin cannot allocate from a /31, /32, /127 or /128.

OTHER_SERVICES = "192.168.0.0/16"  # a service range outside 10.0.0.0/8 and 172.16.0.0/12


@pytest.mark.parametrize("cluster_cidr, mask", [
    ("10.0.0.0/8", 25),  # issue 10, case 3: 17 bits more; kube-controller-manager limits that only for IPv6
    ("10.0.0.0/8", 30),  # 22 bits more
    ("172.16.0.0/12", 29),
    ("10.244.0.0/16", 16),  # one podCIDR, the whole network (a one-node inventory)
    ("10.244.0.0/16", 30),  # the smallest podCIDR host-local allocates from
])
def test_ipv4_node_masks_kube_controller_manager_runs_with(cluster_cidr, mask):
    s = settings(cluster_cidr=cluster_cidr, node_cidr_mask_size=mask, service_cluster_ip_range=OTHER_SERVICES)
    assert (str(s.cluster_cidr), s.node_cidr_mask_size) == (cluster_cidr, mask)
    assert desired_flags(s)["cluster-cidr"] == cluster_cidr
    assert desired_flags(s)["node-cidr-mask-size"] == str(mask)


@pytest.mark.parametrize("cluster_cidr, mask, valid", [
    ("10.244.0.0/16", 15, "from /16 (cluster_cidr '10.244.0.0/16' as one podCIDR) to /30"),
    ("10.244.0.0/16", 8, "from /16 (cluster_cidr '10.244.0.0/16' as one podCIDR) to /30"),
    ("10.244.0.0/16", 31, "from /16 (cluster_cidr '10.244.0.0/16' as one podCIDR) to /30"),
    ("10.244.0.0/16", 32, "from /16 (cluster_cidr '10.244.0.0/16' as one podCIDR) to /30"),
    ("10.0.0.0/8", 7, "from /8 (cluster_cidr '10.0.0.0/8' as one podCIDR) to /30"),
])
def test_ipv4_node_mask_outside_what_runs(cluster_cidr, mask, valid):
    assert only_problem(cluster_cidr=cluster_cidr, node_cidr_mask_size=mask,
                        service_cluster_ip_range=OTHER_SERVICES) == (
        f"cp1: node_cidr_mask_size: {mask} is not valid; expected a prefix length {valid} "
        "(the smallest podCIDR host-local allocates from)")


@pytest.mark.parametrize("cluster_cidr", ["10.244.0.0/31", "10.244.0.1/32"])
def test_cluster_cidr_no_node_mask_fits(cluster_cidr):
    assert only_problem(cluster_cidr=cluster_cidr, node_cidr_mask_size=32) == (
        f"cp1: cluster_cidr: '{cluster_cidr}' is too small; expected a prefix length of at most /30, the "
        "smallest node podCIDR the host-local IPAM plugin can allocate pod addresses from")


@pytest.mark.parametrize("cluster_cidr_ipv6, mask", [
    ("fd00:10:244::/56", 72),  # exactly 16 bits more: cidrset's limit
    ("fd00:10:244::/56", 56),  # one podCIDR
    ("fd00:10:244::/64", 64),  # one /64 for a one-node inventory
    ("fd00:10:244::/112", 126),  # the smallest IPv6 podCIDR host-local allocates from
])
def test_ipv6_node_masks_kube_controller_manager_runs_with(cluster_cidr_ipv6, mask):
    s = settings(cluster_cidr_ipv6=cluster_cidr_ipv6, node_cidr_mask_size_ipv6=mask)
    assert desired_flags(s)["node-cidr-mask-size-ipv6"] == str(mask)


def test_ipv6_node_mask_more_than_16_bits_longer():
    assert only_problem(cluster_cidr_ipv6="fd00:10:244::/56", node_cidr_mask_size_ipv6=73) == (
        "cp1: node_cidr_mask_size_ipv6: 73 is not valid; kube-controller-manager allows an IPv6 node mask at "
        "most 16 bits longer than cluster_cidr_ipv6 /56 (so at most /72)")
    assert only_problem(cluster_cidr_ipv6="fd00:10:244::/48", node_cidr_mask_size_ipv6=80) == (
        "cp1: node_cidr_mask_size_ipv6: 80 is not valid; kube-controller-manager allows an IPv6 node mask at "
        "most 16 bits longer than cluster_cidr_ipv6 /48 (so at most /64)")


@pytest.mark.parametrize("mask", [55, 127, 128])
def test_ipv6_node_mask_outside_what_runs(mask):
    assert only_problem(cluster_cidr_ipv6="fd00:10:244::/56", node_cidr_mask_size_ipv6=mask) == (
        f"cp1: node_cidr_mask_size_ipv6: {mask} is not valid; expected a prefix length from /56 "
        "(cluster_cidr_ipv6 'fd00:10:244::/56' as one podCIDR) to /126 (the smallest podCIDR host-local "
        "allocates from)")


def test_whole_network_as_one_podcidr_fits_one_node_only():
    data = {"cluster_cidr": "10.244.0.0/16", "node_cidr_mask_size": 16}
    assert problems(control_plane("cp1", **data), worker("w1", **data)) == [
        ("cluster_cidr: '10.244.0.0/16' with node mask /16 has room for 1 node podCIDRs, but the inventory "
         "has 2 nodes; use a larger network or a longer mask")]


def test_cluster_cidr_too_small_for_the_inventory():
    data = {"cluster_cidr": "10.244.0.0/23", "node_cidr_mask_size": 24}
    # two /24s fit in a /23: two nodes are fine, a third is not
    assert len(parse(control_plane("cp1", **data), worker("w1", **data))) == 2
    assert problems(control_plane("cp1", **data), worker("w1", **data), worker("w2", **data)) == [
        ("cluster_cidr: '10.244.0.0/23' with node mask /24 has room for 2 node podCIDRs, but the inventory "
        "has 3 nodes; use a larger network or a longer mask")]


def test_ipv6_cluster_cidr_too_small_for_the_inventory():
    data = {"cluster_cidr_ipv6": "fd00:10:244::/63", "node_cidr_mask_size_ipv6": 64}
    assert problems(control_plane("cp1", **data), worker("w1", **data), worker("w2", **data)) == [
        ("cluster_cidr_ipv6: 'fd00:10:244::/63' with node mask /64 has room for 2 node podCIDRs, but the "
        "inventory has 3 nodes; use a larger network or a longer mask")]


def test_pod_cidr_overlapping_service_cidr_v4():
    assert only_problem(cluster_cidr="10.96.0.0/16") == (
        "cp1: cluster_cidr: '10.96.0.0/16' overlaps service_cluster_ip_range '10.96.0.0/12'; "
        "pod and service networks must be disjoint: choose ranges that share no address")


def test_pod_cidr_overlapping_service_cidr_v6():
    assert only_problem(cluster_cidr_ipv6="fd00:10::/56", service_cluster_ip_range_ipv6="fd00:10::/112") == (
        "cp1: cluster_cidr_ipv6: 'fd00:10::/56' overlaps service_cluster_ip_range_ipv6 'fd00:10::/112'; "
        "pod and service networks must be disjoint: choose ranges that share no address")


def test_ipv6_service_range_without_ipv6_pod_network():
    assert only_problem(service_cluster_ip_range_ipv6="fd00:10:96::/112") == (
        "cp1: service_cluster_ip_range_ipv6: set without cluster_cidr_ipv6; dual stack needs an IPv6 pod "
        "network too")


def test_node_ip_inside_pod_range():
    assert only_problem(node_ip="10.244.3.7") == (
        "cp1: cluster_cidr: '10.244.0.0/16' contains this node's own address 10.244.3.7; "
        "choose a range that no node address is in")


def test_inventory_name_inside_service_range():
    assert problems(control_plane("10.96.0.10")) == [
        ("10.96.0.10: service_cluster_ip_range: '10.96.0.0/12' contains this node's own address 10.96.0.10; "
        "choose a range that no node address is in")]


def test_ipv6_node_ip_inside_ipv6_pod_range():
    assert only_problem(cluster_cidr_ipv6="fd00:10:244::/56", node_ip="fd00:10:244::5") == (
        "cp1: cluster_cidr_ipv6: 'fd00:10:244::/56' contains this node's own address fd00:10:244::5; "
        "choose a range that no node address is in")


def test_node_ip_not_an_address():
    assert only_problem(node_ip="node-1.example") == (
        "cp1: node_ip: 'node-1.example' is not valid; expected an IPv4 or IPv6 address")


# The pod MTU goes on the veth pair and cni0: Linux's ETH_MIN_MTU to ETH_MAX_MTU.

@pytest.mark.parametrize("mtu", [67, 65_536, 0, "1450", True])
def test_mtu_out_of_range(mtu):
    assert only_problem(flannel_mtu=mtu) == (
        f"cp1: flannel_mtu: {mtu!r} is not valid; expected a whole number from 68 to 65535")


@pytest.mark.parametrize("mtu", [68, 576, 1450, 9000, 9001, 65_535])  # 9001: AWS instances' MTU, host-gw
def test_mtu_in_range(mtu):
    assert settings(flannel_mtu=mtu).flannel_mtu == mtu


def test_mtu_below_ipv6_minimum_on_dual_stack():
    assert only_problem(flannel_mtu=1200, cluster_cidr_ipv6="fd00:10:244::/56") == (
        "cp1: flannel_mtu: 1200 is below 1280, the IPv6 minimum, on a dual-stack network")


def test_unknown_backend():
    assert only_problem(flannel_backend="udp") == (
        "cp1: flannel_backend: 'udp' is not valid; expected one of vxlan, host-gw, wireguard")


# The VNI: 24 bits for the kernel, but flanneld's device flannel.<VNI> (flannel-v6.<VNI> on dual
# stack) must be a Linux interface name of at most 15 characters.

@pytest.mark.parametrize("vni", [-1, 10_000_000, 16_777_215, 16_777_216])
def test_vni_out_of_range(vni):
    assert only_problem(flannel_vni=vni) == (
        f"cp1: flannel_vni: {vni} is not valid; expected a whole number from 0 to 9999999")


@pytest.mark.parametrize("vni", [0, 1, 4096, 9_999_999])
def test_vni_in_range(vni):
    s = settings(flannel_vni=vni)
    assert flannel.net_conf(s)["Backend"] == {"Type": "vxlan", "VNI": vni, "Port": 8472}


def test_vni_on_dual_stack_fits_the_ipv6_device_name():
    assert only_problem(flannel_vni=10_000, cluster_cidr_ipv6="fd00:10:244::/56") == (
        "cp1: flannel_vni: 10000 is too large on a dual-stack network; expected at most 9999: flanneld names "
        "its IPv6 device flannel-v6.<VNI>, and a Linux interface name has at most 15 characters")
    assert settings(flannel_vni=9_999, cluster_cidr_ipv6="fd00:10:244::/56").flannel_vni == 9_999


@pytest.mark.parametrize("port", [0, 65_536])
def test_port_out_of_range(port):
    assert only_problem(flannel_port=port) == (
        f"cp1: flannel_port: {port} is not valid; expected a whole number from 1 to 65535")


def test_vni_and_port_only_where_the_backend_uses_them():
    assert only_problem(flannel_backend="host-gw", flannel_vni=7) == (
        "cp1: flannel_vni: 7 is only used by the vxlan backend, not 'host-gw'; remove it or use "
        "flannel_backend 'vxlan'")
    assert only_problem(flannel_backend="host-gw", flannel_port=4789) == (
        "cp1: flannel_port: 4789 is not used by the host-gw backend; remove it")
    assert settings(flannel_backend="wireguard", flannel_port=51821).effective_flannel_port == 51821


@pytest.mark.parametrize("version", ["1.5.9", "3.0.0", "0.9.0"])
def test_unsupported_containerd_version(version):
    assert only_problem(containerd_version=version) == (
        f"cp1: containerd_version: {version!r} is not supported; expected a containerd release from 1.6.0 "
        "to 2.x (config version 2 for 1.6-1.7, 3 for 2.0-2.2, 4 for 2.3 to 2.x)")


def test_containerd_version_with_leading_v():
    assert only_problem(containerd_version="v2.1.5") == (
        "cp1: containerd_version: 'v2.1.5' is not valid; expected a release version such as 1.7.34 "
        "(no leading 'v')")


def test_unknown_setting_with_did_you_mean():
    assert only_problem(cluster_cdir="10.244.0.0/16") == (
        "cp1: cluster_cdir: unknown setting; did you mean 'cluster_cidr'?")
    assert only_problem(flannel_backnd="vxlan") == (
        "cp1: flannel_backnd: unknown setting; did you mean 'flannel_backend'?")


def test_unknown_setting_without_a_close_match():
    assert only_problem(frobnicate=1) == (
        "cp1: frobnicate: unknown setting; see inventory/group_data/all.py for every setting (a key of your own deploy: "
        "name it in other_data_keys)")


def test_cluster_scope_setting_differing_between_hosts():
    found = problems(control_plane("cp1"), worker("w1", cluster_cidr="10.245.0.0/16"),
                     worker("w2", cluster_cidr="10.245.0.0/16"))
    assert found == [
        ("cluster_cidr: must be the same on every host, but cp1 has '10.244.0.0/16' and w1, w2 "
        "'10.245.0.0/16'; set it in group data for all")]


def test_cluster_scope_non_network_setting_differing():
    assert problems(control_plane("cp1"), worker("w1", flannel_backend="host-gw")) == [
        ("flannel_backend: must be the same on every host, but cp1 has 'vxlan' and w1 'host-gw'; "
        "set it in group data for all")]


def test_duplicate_node_ip():
    assert problems(control_plane("cp1", node_ip="192.168.1.10"), worker("w1", node_ip="192.168.1.10")) == [
        "node_ip: 192.168.1.10 is given to both cp1 and w1"]


def test_duplicate_node_ip_from_inventory_name():
    assert problems(control_plane("192.168.1.10"), worker("w1", node_ip="192.168.1.10")) == [
        "node_ip: 192.168.1.10 is given to both 192.168.1.10 and w1"]


@pytest.mark.parametrize("rollout", ["systemd", "external"])
def test_no_control_plane_host_means_no_node_ipam_flags_unless_the_controller_manager_is_managed_elsewhere(rollout):
    # the reported case: exit 0 without ever setting the controller-manager flags, and not a word
    assert problems(worker("w1", flannel_rollout=rollout), worker("w2", flannel_rollout=rollout)) == [
        "control_plane_group: no host is in group 'control_plane'; podnet sets kube-controller-manager's node IPAM "
        "flags (--allocate-node-cidrs, --cluster-cidr, --node-cidr-mask-size) on the hosts of that group: add the "
        "hosts that run it, or set kube_controller_manager_runtime = 'external' if it is managed elsewhere (then "
        "node IPAM must already be on there)"]
    elsewhere = {"flannel_rollout": rollout, "kube_controller_manager_runtime": "external"}
    assert set(parse(worker("w1", **elsewhere), worker("w2", **elsewhere))) == {"w1", "w2"}


def test_an_external_controller_manager_still_needs_a_control_plane_host_for_the_daemonset():
    elsewhere = {"kube_controller_manager_runtime": "external"}
    assert problems(worker("w1", **elsewhere)) == [
        "control_plane_group: no host is in group 'control_plane'; the flannel DaemonSet is applied from the first "
        "control-plane host (with kubectl and the kubeconfig setting): put such a host in that group (or name its "
        "group in control_plane_group), or set flannel_rollout to 'systemd' or 'external'"]


def test_no_control_plane_host_with_daemonset_rollout():
    assert problems(worker("w1"), worker("w2")) == [
        ("control_plane_group: no host is in group 'control_plane'; the flannel DaemonSet is applied from "
        "the first control-plane host (with kubectl and the kubeconfig setting): put such a host in that group "
        "(or name its group in control_plane_group), or set flannel_rollout to 'systemd' or 'external'")]
    # a renamed group is honoured
    parsed = parse(FakeHost("m1", {"control_plane_group": "masters"}, ["masters"]),
                   FakeHost("w1", {"control_plane_group": "masters"}, ["nodes"]))
    assert parsed["m1"].is_control_plane


@pytest.mark.parametrize("value, detail", [
    (["containerd"], ""),
    ({"containerd2": {"2.3.4": {"amd64": SHA_A}}}, " (unknown artifact 'containerd2')"),
    ({"containerd": ["2.3.4"]}, ""),
    ({"containerd": {"2.3.4": {"x86_64": SHA_A}}}, " (unsupported architecture 'x86_64': amd64 or arm64)"),
    ({"containerd": {"2.3.4": {"amd64": "abc123"}}}, " (containerd 2.3.4 amd64: not a sha256)"),
    ({"runc": {"1.4.3": {"arm64": "sha256:" + SHA_A}}}, " (runc 1.4.3 arm64: not a sha256)"),
])
def test_artifact_checksums_malformed(value, detail):
    shape = ("{artifact: {version: {arch: '<64 hex digits>'}}} with artifact one of containerd, runc, "
             "cni_plugins, flannel_cni_plugin, flanneld, kubeadm, kubelet, kubectl")
    assert only_problem(artifact_checksums=value) == (
        f"cp1: artifact_checksums: {value!r} is not valid; expected {shape}{detail}")


def test_artifact_checksums_with_a_bad_version():
    assert only_problem(artifact_checksums={"runc": {"v1.4.3": {"amd64": SHA_A}}}) == (
        "cp1: artifact_checksums: {'runc': {'v1.4.3': {'amd64': '" + SHA_A + "'}}} is not valid; "
        "expected a release version such as 1.7.34 (no leading 'v')")


def test_artifact_checksums_are_normalised_to_lower_case():
    s = settings(artifact_checksums={"runc": {"1.4.3": {"amd64": SHA_A.upper()}}})
    assert s.artifact_checksums == {"runc": {"1.4.3": {"amd64": SHA_A}}}


def test_every_problem_of_every_host_is_reported_at_once():
    with pytest.raises(SettingsError) as raised:
        parse_inventory([control_plane("cp1", flannel_mtu=1), worker("w1", flannel_backend="udp",
                                                                      cluster_cdir="x")])
    message = str(raised.value)
    assert "cp1: flannel_mtu: 1 is not valid" in message
    assert "w1: flannel_backend: 'udp' is not valid" in message
    assert "w1: cluster_cdir: unknown setting" in message
    assert len(raised.value.problems) == 3


# --- artifacts -----------------------------------------------------------------


CONTAINERD_2_3_4_AMD64 = "9d68969855fbf676cdb8ed758e420fb048d61f984f61de3e53eddfebe484d168"


def test_resolve_uses_the_pinned_sha256():
    artifact = resolve(settings(), "containerd", "amd64")
    assert artifact.sha256 == CONTAINERD_2_3_4_AMD64
    assert artifact.url == ("https://github.com/containerd/containerd/releases/download/v2.3.4/"
                            "containerd-2.3.4-linux-amd64.tar.gz")
    assert artifact.filename == "containerd-2.3.4-linux-amd64.tar.gz"
    runc = resolve(settings(), "runc", "arm64")
    assert runc.url == "https://github.com/opencontainers/runc/releases/download/v1.4.3/runc.arm64"
    assert runc.sha256 == "633301e2e32f8a5ad54031aab4901eb00308bec677dd15faa2751e8f9dab5ca4"


def test_checksum_override_wins_over_the_pinned_one():
    s = settings(artifact_checksums={"containerd": {"2.3.4": {"amd64": SHA_A}}})
    assert resolve(s, "containerd", "amd64").sha256 == SHA_A
    # other architectures keep their pinned sums
    assert resolve(s, "containerd", "arm64").sha256 == (
        "a985fbb7e18fc0362d31a055338f5d7b0e087a3e27f14c70d1c5965399a29f95")


def test_checksum_override_adds_an_unpinned_version():
    s = settings(containerd_version="2.1.5", artifact_checksums={"containerd": {"2.1.5": {"amd64": SHA_B}}})
    artifact = resolve(s, "containerd", "amd64")
    assert artifact.sha256 == SHA_B
    assert artifact.url.endswith("/v2.1.5/containerd-2.1.5-linux-amd64.tar.gz")


def test_version_without_checksum_for_the_arch_names_setting_value_arch_and_fix():
    with pytest.raises(ArtifactError) as raised:
        resolve(settings(containerd_version="2.0.0"), "containerd", "amd64")
    assert str(raised.value) == (
        "containerd_version: '2.0.0' has no pinned sha256 for amd64 (pinned for amd64: 1.7.34, 2.3.3, 2.3.4); "
        "pick a pinned version or add artifact_checksums = {'containerd': {'2.0.0': {'amd64': '<sha256>'}}}")


def test_artifact_with_no_pins_at_all():
    with pytest.raises(ArtifactError) as raised:
        resolve(settings(), "flannel_cni_plugin", "arm64")
    assert str(raised.value) == (
        "flannel_cni_plugin_version: '1.9.1-flannel3' has no pinned sha256 for arm64 (pinned for arm64: none); "
        "pick a pinned version or add artifact_checksums = "
        "{'flannel_cni_plugin': {'1.9.1-flannel3': {'arm64': '<sha256>'}}}")


def test_override_for_another_arch_does_not_count():
    s = settings(containerd_version="2.0.0", artifact_checksums={"containerd": {"2.0.0": {"arm64": SHA_A}}})
    assert resolve(s, "containerd", "arm64").sha256 == SHA_A
    with pytest.raises(ArtifactError, match=r"containerd_version: '2.0.0' has no pinned sha256 for amd64"):
        resolve(s, "containerd", "amd64")


def test_mirror_url_keeps_the_upstream_path():
    s = settings(mirror_url="https://mirror.internal:8443/podnet/")
    assert resolve(s, "containerd", "amd64").url == (
        "https://mirror.internal:8443/podnet/containerd/containerd/releases/download/v2.3.4/"
        "containerd-2.3.4-linux-amd64.tar.gz")
    assert resolve(s, "cni_plugins", "arm64").url == (
        "https://mirror.internal:8443/podnet/containernetworking/plugins/releases/download/v1.9.1/"
        "cni-plugins-linux-arm64-v1.9.1.tgz")
    assert mirrored("https://github.com/a/b/c.tgz", None) == "https://github.com/a/b/c.tgz"


def test_flannel_cni_plugin_asset_name_spells_its_version():
    s = settings(flannel_cni_plugin_version="1.9.1-flannel1",
                 artifact_checksums={"flannel_cni_plugin": {"1.9.1-flannel1": {"amd64": SHA_A}}})
    assert resolve(s, "flannel_cni_plugin", "amd64").url == (
        "https://github.com/flannel-io/cni-plugin/releases/download/v1.9.1-flannel1/"
        "cni-plugin-flannel-linux-amd64-v1.9.1.tgz")


def test_mirror_url_must_be_http():
    assert only_problem(mirror_url="ftp://mirror/") == (
        "cp1: mirror_url: 'ftp://mirror/' is not valid; expected an http:// or https:// base URL")


def test_a_plain_http_mirror_is_refused_without_the_opt_in():
    assert only_problem(mirror_url="http://mirror.internal:8080/podnet") == (
        "cp1: mirror_url: 'http://mirror.internal:8080/podnet' is plain http; expected an https:// URL: over http "
        "anyone on the way can change the release files and the checksums podnet reads beside them. To accept that "
        "(a mirror on a network you trust), also set allow_insecure_http = True")
    s = settings(mirror_url="http://mirror.internal:8080/podnet", allow_insecure_http=True)
    assert resolve(s, "runc", "amd64").url.startswith("http://mirror.internal:8080/podnet/opencontainers/")
    assert settings(mirror_url="https://mirror.internal/podnet").allow_insecure_http is False


def test_every_upstream_url_podnet_reads_is_https():
    """Without a mirror, release files and their published sums are read over https only."""
    for name in catalog.ARTIFACT_NAMES:
        for arch in ("amd64", "arm64"):
            versions = list(catalog.pinned()[name].get("asset_versions") or {}) or ["1.0.0"]
            for version in versions:
                assert catalog.upstream_url(name, version, arch).startswith("https://"), name
                assert published_source(name, version, arch, None).startswith("https://"), name


def test_every_pinned_checksum_is_a_sha256():
    for name in catalog.ARTIFACT_NAMES:
        for version, arches in (catalog.pinned()[name].get("versions") or {}).items():
            for arch, digest in arches.items():
                assert re.fullmatch(r"[0-9a-f]{64}", digest), (name, version, arch)


# --- the documented settings file ------------------------------------------------


GROUP_DATA = REPO / "inventory" / "group_data" / "all.py"


def _commented_settings(text: str) -> dict[str, object]:
    """`# name = value` lines -> {name: value} (value read as a Python literal)."""
    found: dict[str, object] = {}
    for line in text.splitlines():
        match = re.match(r"^\s*#\s*([a-z][a-z0-9_]*)\s*=\s*(.+?)\s*$", line)
        if not match:
            continue
        name, value = match.groups()
        for candidate in (value, value.split("  #")[0], value.split(" #")[0]):
            try:
                found[name] = ast.literal_eval(candidate.strip())
                break
            except (ValueError, SyntaxError):
                continue
    return found


@pytest.mark.skipif(not GROUP_DATA.exists(), reason="inventory/group_data/all.py is not written yet")
def test_group_data_documents_every_setting_with_its_default():
    documented = _commented_settings(GROUP_DATA.read_text())
    missing = [spec.name for spec in SPECS if spec.name not in documented]
    assert not missing, f"inventory/group_data/all.py does not list {missing}"
    wrong = {spec.name: (documented[spec.name], spec.default) for spec in SPECS
             if documented[spec.name] != spec.default}
    assert not wrong, f"documented value differs from the default (documented, default): {wrong}"


@pytest.mark.parametrize("key, value", [
    ("sandbox_image", 'registry.k8s.io/pause:3.10"'),  # would break containerd's config.toml
    ("sandbox_image", "Registry.k8s.io/Pause"),
    ("flannel_image", "docker.io/flannel/flannel:v0.28.4 --privileged"),
    ("sandbox_image", "registry.k8s.io/pause:3.10\n"),
    ("sandbox_image", "-registry.k8s.io/pause:3.10"),
    ("sandbox_image", "registry.k8s.io/pause@sha256:" + "A" * 64),  # go-digest wants lower-case hex
    ("sandbox_image", "registry.k8s.io/pause@md5:" + "a" * 32),  # not an algorithm go-digest knows
    ("flannel_image", "example.com/" + "a" * 244 + ":1"),  # a name of 256 characters
])
def test_image_references_are_checked(key, value):
    assert only_problem(**{key: value}) == (
        f"cp1: {key}: {value!r} is not valid; expected an image reference such as registry.k8s.io/pause:3.10")


@pytest.mark.parametrize("image", ["registry.k8s.io/pause:3.10", "pause:3.10", "localhost:5000/team/pause:3.10",
                                   "docker.io/flannel/flannel:v0.28.4", "registry.k8s.io/pause@sha256:" + "a" * 64,
                                   # the separators distribution/reference allows: __ and runs of -
                                   "registry.example:5000/team__a/pause--x:3.10",
                                   "[fd00::1]:5000/pause:3.10",
                                   "registry.k8s.io/pause:3.10@sha512:" + "b" * 128,
                                   "example.com/" + "a" * 243 + ":1"])  # a name of 255 characters
def test_real_image_references_are_accepted(image):
    parsed = parse(control_plane("cp1", sandbox_image=image, flannel_image=image))
    assert (parsed["cp1"].sandbox_image, parsed["cp1"].flannel_image) == (image, image)


# --- flannel_iface: an address of the node, or a Linux interface name ------------------------


@pytest.mark.parametrize("iface, parsed", [
    ("eth1", "eth1"),
    ("eth0.100", "eth0.100"),  # a VLAN
    ("br-1a2b3c4d5e6f", "br-1a2b3c4d5e6f"),  # 15 characters, Linux's longest
    ("192.168.56.11", "192.168.56.11"),
    ("fd00:10:244::1234:5678", "fd00:10:244::1234:5678"),  # an IPv6 address is longer than 15 characters
    ("FD00:0:0::1", "fd00::1"),  # written as flanneld and node_ip print it
])
def test_flannel_iface_flanneld_accepts(iface, parsed):
    assert settings(flannel_iface=iface).flannel_iface == parsed


def test_flannel_iface_address_written_otherwise_is_still_the_node_ip():
    s = settings(node_ip="fd00::11", flannel_iface="FD00:0::11")
    assert s.flannel_iface_is_node_ip


@pytest.mark.parametrize("iface", ["eth0:1", "a/b", ".", "..", "sixteen-chars-xx", "", "eth 1", "eth1\n", "eth\t1",
                                   "ethé-twelve-bbb", "eth\x01"])  # é: 2 bytes, so 16 in all
def test_flannel_iface_that_is_no_linux_interface_name(iface):
    assert only_problem(flannel_iface=iface) == (
        f"cp1: flannel_iface: {iface!r} is not valid; expected an interface name of 1-15 bytes without '/', ':', "
        "white space or control characters (e.g. eth1; Linux allows no ':' or '/' in one), or an IP address of the "
        "node")


@pytest.mark.parametrize("iface", ["eth$(X)", "vlan@1", "wg'0", "en;rm"])
def test_flannel_iface_takes_what_linux_takes(iface):
    """Linux allows these names (dev_valid_name); the unit and the DaemonSet write them escaped."""
    assert settings(flannel_iface=iface).flannel_iface == iface


# --- cluster_bootstrap: what kubeadm init checks before it changes anything ------------------


def bootstrap(**data) -> dict:
    return {"cluster_bootstrap": True, "node_ip": "192.168.56.11", **data}


def test_kubeadm_accepts_the_node_masks_kube_controller_manager_runs_with():
    # single stack: kubeadm checks the pod subnet against /24 (it reads only --node-cidr-mask-size-ipv4)
    s = settings(**bootstrap(cluster_cidr="10.0.0.0/8", node_cidr_mask_size=25,
                             service_cluster_ip_range="172.20.0.0/16"))
    assert s.node_cidr_mask_size == 25
    assert settings(**bootstrap(cluster_cidr="10.244.0.0/24", node_cidr_mask_size=26)).node_cidr_mask_size == 26


@pytest.mark.parametrize("cluster_cidr, mask", [("10.244.0.0/25", 26), ("10.0.0.0/7", 25)])
def test_kubeadm_pod_subnet_check_on_single_stack(cluster_cidr, mask):
    data = dict(cluster_cidr=cluster_cidr, node_cidr_mask_size=mask, service_cluster_ip_range="172.20.0.0/16")
    assert settings(**data).node_cidr_mask_size == mask  # kube-controller-manager runs with it
    assert only_problem(**bootstrap(**data)) == (
        f"cp1: cluster_cidr: '{cluster_cidr}' cannot be used with cluster_bootstrap; kubeadm init checks its "
        "podSubnet against the /24, kube-controller-manager's default it assumes because it reads only "
        "--node-cidr-mask-size-ipv4, which a single-stack cluster does not get, and needs a prefix length "
        "from /8 to /24")


def test_kubeadm_pod_subnet_check_on_dual_stack():
    dual = dict(cluster_cidr_ipv6="fd00:10:244::/56", service_cluster_ip_range="172.20.0.0/16")
    assert only_problem(**bootstrap(cluster_cidr="10.0.0.0/8", node_cidr_mask_size=25, **dual)) == (
        "cp1: cluster_cidr: '10.0.0.0/8' cannot be used with cluster_bootstrap; kubeadm init checks its podSubnet "
        "against the node mask /25, and needs a prefix length from /9 to /25")
    assert only_problem(**bootstrap(cluster_cidr="10.244.0.0/29", node_cidr_mask_size=30, **dual)) == (
        "cp1: cluster_cidr: '10.244.0.0/29' cannot be used with cluster_bootstrap; kubeadm init checks its "
        "podSubnet against the node mask /30, and needs a prefix length from /14 to /28")
    assert settings(**bootstrap(cluster_cidr="10.0.0.0/9", node_cidr_mask_size=25, **dual)).dual_stack


@pytest.mark.parametrize("key, value, valid", [
    ("service_cluster_ip_range", "10.96.0.0/11", "/12 to /28"),
    ("service_cluster_ip_range", "10.96.0.0/29", "/12 to /28"),
    ("service_cluster_ip_range_ipv6", "fd00:10:96::/107", "/108 to /124"),
    ("service_cluster_ip_range_ipv6", "fd00:10:96::/125", "/108 to /124"),
])
def test_kubeadm_service_subnet_size(key, value, valid):
    data = {key: value, "cluster_cidr_ipv6": "fd00:10:244::/56"}
    assert settings(**data).dual_stack  # nothing else refuses it
    assert only_problem(**bootstrap(**data)) == (
        f"cp1: {key}: '{value}' cannot be used with cluster_bootstrap; kubeadm init needs a service subnet from "
        f"{valid} (at most 20 host bits, at least 10 addresses)")


@pytest.mark.parametrize("data", [{}, {"cluster_cidr_ipv6": "fd00:10:244::/56", "node_cidr_mask_size_ipv6": 72}])
def test_kubeadm_rule_reads_the_mask_flags_kube_controller_manager_gets(data):
    """settings' kubeadm podSubnet rule knows which per-family mask flags podnet passes without importing
    the controller-manager concern; the two must agree."""
    from tasks.settings import _family_mask_flags

    s = parse(control_plane("cp1", **data))["cp1"]
    flags = {k: v for k, v in desired_flags(s).items() if k.startswith("node-cidr-mask-size-") and v is not None}
    assert _family_mask_flags(s) == flags


# --- cluster_bootstrap: what an operator passes on to kubeadm -------------------------------------


def test_kubeadm_switches_parse_into_what_kubeadm_reads():
    s = settings(**bootstrap(etcd_external_endpoints=["http://127.0.0.1:2379/", "https://[fd00::1]:2379"],
                             kubeadm_ignore_preflight_errors=["SystemVerification", "swap", "Port-6443",
                                                              "FileContent--proc-sys-net-ipv4-ip_forward"],
                             kubelet_configuration={"failSwapOn": False, "evictionHard": {"memory.available": "1Mi"}},
                             kube_proxy_configuration={"conntrack": {"maxPerCore": 0}}))
    assert s.etcd_external_endpoints == ("http://127.0.0.1:2379", "https://[fd00::1]:2379")
    # case-insensitive as kubeadm compares them, written as kubeadm names them
    assert s.kubeadm_ignore_preflight_errors == ("SystemVerification", "Swap", "Port-6443",
                                                 "FileContent--proc-sys-net-ipv4-ip_forward")
    assert s.kubelet_configuration == {"failSwapOn": False, "evictionHard": {"memory.available": "1Mi"}}
    assert s.kube_proxy_configuration == {"conntrack": {"maxPerCore": 0}}
    assert settings(**bootstrap(kubeadm_ignore_preflight_errors=["all"])).kubeadm_ignore_preflight_errors == ("all",)


NOT_A_CHECK = "is not a check kubeadm runs (kubeadm would ignore it silently)"


@pytest.mark.parametrize("value, why", [
    (["SystemVerificaton"], f"'SystemVerificaton' {NOT_A_CHECK}"),
    (["Port-"], f"'Port-' {NOT_A_CHECK}"),
    (["Port-1"], f"'Port-1' {NOT_A_CHECK}"),
    # issue 18, case 4: this was run as shell on the joining node
    (["Port-6443;touch${IFS}/tmp/pwned"], f"'Port-6443;touch${{IFS}}/tmp/pwned' {NOT_A_CHECK}"),
    (["Swap,ImagePull"], f"'Swap,ImagePull' {NOT_A_CHECK}"),
    ([" Swap"], f"' Swap' {NOT_A_CHECK}"),
    (["all", "Swap"], "kubeadm refuses 'all' together with single checks"),
    (["ALL", "Swap"], "kubeadm refuses 'all' together with single checks"),
])
def test_preflight_checks_to_ignore_are_kubeadms_names(value, why):
    assert only_problem(**bootstrap(kubeadm_ignore_preflight_errors=value)).endswith(f"or ['all'] alone; {why}")


def test_preflight_checks_to_ignore_are_a_list():
    assert only_problem(**bootstrap(kubeadm_ignore_preflight_errors="Swap")).startswith(
        "cp1: kubeadm_ignore_preflight_errors: 'Swap' is not valid; expected a list of kubeadm preflight check names")


@pytest.mark.parametrize("url", ["127.0.0.1:2379", "etcd://10.0.0.1:2379", "http://10.0.0.1:2379/v3", "http://:2379",
                                 "http://10.0.0.1:99999"])
def test_external_etcd_endpoints_are_client_urls(url):
    assert only_problem(**bootstrap(etcd_external_endpoints=[url])) == (
        f"cp1: etcd_external_endpoints: [{url!r}] is not valid; expected a list of etcd client URLs such as "
        f"['http://127.0.0.1:2379'] (empty: kubeadm's local etcd); {url!r} is not http(s)://host:port")


@pytest.mark.parametrize("key, value, why", [
    ("kubelet_configuration", {"cgroupDriver": "cgroupfs"}, "cgroupDriver is set from systemd_cgroup"),
    ("kubelet_configuration", {"kind": "KubeletConfiguration"},
     "kind is set from KubeletConfiguration (written by podnet)"),
    ("kubelet_configuration", {"fail-swap-on": False}, "'fail-swap-on' is not a field name (lowerCamelCase)"),
    ("kube_proxy_configuration", {"conntrack": {"maxPerCore": {1, 2}}},
     "KubeProxyConfiguration.conntrack.maxPerCore: set is not a YAML value"),
])
def test_component_configuration_fields(key, value, why):
    assert only_problem(**bootstrap(**{key: value})).endswith(f"; {why}")


@pytest.mark.parametrize("key, value", [("etcd_external_endpoints", ["http://127.0.0.1:2379"]),
                                        ("kubeadm_ignore_preflight_errors", ["Swap"]),
                                        ("kubelet_configuration", {"failSwapOn": False}),
                                        ("kube_proxy_configuration", {"conntrack": {"min": 0}})])
def test_kubeadm_switches_only_with_cluster_bootstrap(key, value):
    assert only_problem(**{key: value}) == (f"cp1: {key}: set without cluster_bootstrap; only kubeadm init and join "
                                            "read it: remove it, or set cluster_bootstrap = True")


def test_keys_of_an_operators_own_deploy_are_left_alone_when_named():
    parsed = parse(control_plane("cp1", other_data_keys=["my_app_*", "region"], my_app_port=8080, region="eu"))
    assert parsed["cp1"].other_data_keys == ("my_app_*", "region")
    assert only_problem(my_app_port=8080) == ("cp1: my_app_port: unknown setting; see inventory/group_data/all.py "
                                              "for every setting (a key of your own deploy: name it in other_data_keys)")
    assert only_problem(other_data_keys="my_*") == (
        "cp1: other_data_keys: 'my_*' is not valid; expected a list of inventory data key names, or prefixes ending "
        "in '*', such as ['my_app_*']")
