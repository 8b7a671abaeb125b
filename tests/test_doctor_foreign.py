"""
The doctor on a cluster podnet did not deploy (tasks/doctor/foreign.py): what it expects is read from the live
cluster where the inventory does not set it, and each value says where it came from.

The answers are real: captured from a test-bed cluster made the usual way (kubeadm's manifests, flannel's own
kube-flannel.yml v0.28.9; tests/fixtures/foreign/README.md), with the commands of ``probe_request``. The readers
below them follow the components: kube-controller-manager's flag parse and node IPAM rules
(tasks/controller_manager.py ``node_ipam``) and flanneld v0.28.9's net-conf.json (tasks/flannel.py
``parse_net_conf``).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from pathlib import Path

import pytest

from tasks import cni, controller_manager
from tasks.controller_manager import ControllerManagerError, node_ipam
from tasks.doctor import foreign
from tasks.doctor.foreign import (DAEMONSETS_QUERY, KCM_PROCESS_QUERY, NET_CONF_QUERY, configmap_data,
                                  expected_network, flannel_daemonsets, podnet_deployed, process_command_line)
from tasks.engine import ownership
from tasks.engine.answers import BadField
from tasks.engine.probe import NodeState, ProbeContractError
from tasks.flannel import NetConfError, parse_net_conf
from tests.support.foreign import kube_flannel_sources
from tests.support.hosts import settings
from tests.support.kubeadm import HARD_WAY_UNIT, KUBEADM_COMMAND, KUBESPRAY_COMMAND, kubeadm_manifest

CAPTURED = Path(__file__).parent / "fixtures" / "foreign"
KCM_CMDLINE = (CAPTURED / "kcm-cmdline.b64").read_text().strip()
KCM_MANIFEST = (CAPTURED / "kube-controller-manager.yaml").read_text()
CONFIGMAP = (CAPTURED / "kube-flannel-cfg.json").read_text().splitlines()
DAEMONSETS = (CAPTURED / "daemonsets.json").read_text().splitlines()
CONFLIST = (CAPTURED / "10-flannel.conflist").read_bytes()
MANIFEST_PATH = "/etc/kubernetes/manifests/kube-controller-manager.yaml"
NET = ipaddress.ip_network


def answer(data: dict | None = None, kcm: tuple[int, list[str]] = (0, [KCM_CMDLINE]), manifest: str | None = KCM_MANIFEST,
           configmap: tuple[int, list[str]] = (0, CONFIGMAP), daemonsets: tuple[int, list[str]] = (0, DAEMONSETS),
           **contents: bytes) -> tuple[NodeState, object]:
    """The first control-plane host's probe answer, held to what ``probe_request`` asks."""
    s = settings(**(data or {}))
    files = {MANIFEST_PATH: manifest.encode()} if manifest is not None else {}
    state = NodeState(contents={**files, **contents},
                      queries={KCM_PROCESS_QUERY: kcm, NET_CONF_QUERY: configmap, DAEMONSETS_QUERY: daemonsets})
    return state.answering(foreign.probe_request(s), "cp1"), s


def expect(data: dict | None = None, **parts):
    node, s = answer(data, **parts)
    return expected_network(data or {}, s, node, "cp1")


# --- the cluster as kubeadm and kube-flannel.yml leave it ---------------------------------------


def test_a_kubeadm_and_kube_flannel_cluster_is_read_with_where_each_value_came_from():
    exp, found = expect()
    assert found == []
    assert exp.cluster_cidrs == (NET("10.244.0.0/16"),) and exp.node_masks == (24,)
    assert (exp.backend, exp.vni, exp.port, exp.mtu) == ("vxlan", 1, 8472, None)
    assert (exp.rollout, exp.flannel_version, exp.serves_readyz) == ("daemonset", "0.28.9", True)
    assert dict(exp.sources) == kube_flannel_sources("cp1")
    assert foreign.describe_sources(exp)[:2] == [
        "cluster CIDR 10.244.0.0/16: kube-controller-manager --cluster-cidr in cp1's running command line",
        "node mask 24: kube-controller-manager's default for IPv4: no --node-cidr-mask-size* in cp1's running "
        "command line"]


def test_what_the_inventory_sets_wins_and_is_named_as_the_source():
    data = {"cluster_cidr": "10.245.0.0/16", "node_cidr_mask_size": 26, "flannel_port": 4789, "flannel_mtu": 1400}
    exp, found = expect(data)
    assert exp.cluster_cidrs == (NET("10.245.0.0/16"),) and exp.node_masks == (26,)
    assert (exp.port, exp.mtu, exp.vni) == (4789, 1400, 1)
    assert exp.source("cluster_cidrs") == "inventory cluster_cidr"
    assert exp.source("node_masks") == "inventory node_cidr_mask_size"
    assert exp.source("port") == "inventory flannel_port" and exp.source("mtu") == "inventory flannel_mtu"
    assert exp.source("backend") == "ConfigMap kube-flannel/kube-flannel-cfg net-conf.json Backend Type"
    # flannel's net-conf does not hold the inventory's network: said, with flanneld's own refusal
    assert [f.what for f in found] == ["ConfigMap kube-flannel/kube-flannel-cfg net-conf.json Network 10.244.0.0/16 "
                                       "does not hold the cluster CIDR 10.245.0.0/16 (inventory cluster_cidr)"]


def test_without_a_running_process_the_manifest_is_read():
    exp, found = expect(kcm=(1, []))
    assert found == []
    assert exp.cluster_cidrs == (NET("10.244.0.0/16"),)
    assert exp.source("cluster_cidrs") == f"kube-controller-manager --cluster-cidr in {MANIFEST_PATH} on cp1"


def test_the_running_command_line_wins_over_the_manifest():
    manifest = kubeadm_manifest([*KUBESPRAY_COMMAND])  # 10.233.64.0/18, --node-cidr-mask-size=24
    exp, _ = expect(manifest=manifest)
    assert exp.cluster_cidrs == (NET("10.244.0.0/16"),)
    exp, _ = expect(manifest=manifest, kcm=(1, []))
    assert exp.cluster_cidrs == (NET("10.233.64.0/18"),)
    assert exp.source("node_masks") == f"kube-controller-manager --node-cidr-mask-size in {MANIFEST_PATH} on cp1"


def test_a_systemd_unit_is_read_as_systemd_splits_its_exec_start():
    data = {"kube_controller_manager_runtime": "systemd"}
    s = settings(**data)
    node = NodeState(contents={s.kube_controller_manager_unit: HARD_WAY_UNIT.encode()},
                     queries={KCM_PROCESS_QUERY: (1, []), NET_CONF_QUERY: (0, CONFIGMAP),
                              DAEMONSETS_QUERY: (0, DAEMONSETS)}).answering(foreign.probe_request(s), "cp1")
    exp, _ = expected_network(data, s, node, "cp1")
    assert exp.cluster_cidrs == (NET("10.200.0.0/16"),)
    assert exp.source("cluster_cidrs") == f"kube-controller-manager --cluster-cidr in {s.kube_controller_manager_unit} on cp1"


def test_without_node_ipam_flags_the_network_comes_from_flannels_net_conf():
    cmdline = base64.b64encode("\0".join(KUBEADM_COMMAND).encode() + b"\0").decode()
    exp, found = expect(kcm=(0, [cmdline]))
    assert found == []
    assert exp.cluster_cidrs == (NET("10.244.0.0/16"),)
    assert exp.source("cluster_cidrs") == "ConfigMap kube-flannel/kube-flannel-cfg net-conf.json Network"
    assert exp.source("node_masks") == "kube-controller-manager's default for IPv4 (its flags were not read)"


def test_nothing_readable_and_nothing_in_the_inventory_is_an_error_naming_the_setting():
    exp, found = expect(kcm=(1, []), manifest=None, configmap=(0, []), daemonsets=(1, []))
    assert exp is None
    assert [f.message for f in found if f.is_error] == [
        "cp1: the cluster CIDR cannot be told: neither kube-controller-manager's --cluster-cidr nor flannel's "
        "net-conf could be read; set cluster_cidr (and node_cidr_mask_size) in the inventory"]
    exp, found = expect({"cluster_cidr": "10.244.0.0/16"}, kcm=(1, []), manifest=None, configmap=(0, []),
                        daemonsets=(1, []))
    assert exp.cluster_cidrs == (NET("10.244.0.0/16"),) and exp.rollout == "external"
    assert exp.source("rollout") == "no DaemonSet in namespace kube-flannel runs flanneld"


def test_answers_that_do_not_fit_their_schema_are_reported_and_not_used():
    exp, found = expect(kcm=(0, ["not base64!"]), configmap=(0, ['{"kind": "Secret"}']))
    assert exp.source("cluster_cidrs") == f"kube-controller-manager --cluster-cidr in {MANIFEST_PATH} on cp1"
    assert exp.source("backend") == "podnet's default flannel_backend (ConfigMap kube-flannel/kube-flannel-cfg not read)"
    messages = [f.message for f in found]
    assert any("kube-controller-manager's command line does not fit its schema" in m and "is not base64" in m
               for m in messages), messages
    assert any("ConfigMap kube-flannel/kube-flannel-cfg does not fit its schema" in m for m in messages), messages


def test_a_net_conf_flanneld_refuses_is_an_error():
    broken = configmap_lines({"net-conf.json": '{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": "4"}}'})
    _, found = expect(configmap=(0, broken))
    assert [f.message for f in found if f.is_error] == [
        "cp1: ConfigMap kube-flannel/kube-flannel-cfg net-conf.json: json: cannot unmarshal string into Go struct "
        "field VXLANConfig.vni of type int: flanneld does not start with it"]


def test_the_pod_mtu_of_the_cni_conf_delegate_and_the_backend_values_of_the_net_conf():
    lines = configmap_lines({
        "net-conf.json": '{"network": "10.42.0.0/16", "backend": {"type": "VXLAN", "vni": 4096, "port": 4789}}',
        "cni-conf.json": '{"plugins": [{"type": "flannel", "delegate": {"mtu": 1400}}]}'})
    exp, _ = expect(configmap=(0, lines))
    assert (exp.backend, exp.vni, exp.port, exp.mtu) == ("vxlan", 4096, 4789, 1400)
    assert exp.source("mtu") == "ConfigMap kube-flannel/kube-flannel-cfg cni-conf.json flannel delegate mtu"
    assert exp.source("vni") == "ConfigMap kube-flannel/kube-flannel-cfg net-conf.json Backend VNI"


def test_the_builder_reads_only_what_its_probe_request_asks():
    s = settings()
    node = NodeState(queries={KCM_PROCESS_QUERY: (0, [KCM_CMDLINE])}).answering(
        foreign.probe_request(settings(kube_controller_manager_runtime="external")), "cp1")
    with pytest.raises(ProbeContractError):
        expected_network({}, s, node, "cp1")


def configmap_lines(data: dict) -> list[str]:
    import json
    return json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "data": data,
                       "metadata": {"name": "kube-flannel-cfg", "namespace": "kube-flannel"}}).splitlines()


# --- podnet's network or another's ---------------------------------------------------------------


def test_a_network_is_podnets_when_its_cni_config_is_the_one_podnet_recorded():
    s = settings()
    path = f"{s.cni_conf_dir}/{cni.CONFLIST_NAME}"
    podnets = cni.render_conflist(s).encode()
    ledger = f"{hashlib.sha256(podnets).hexdigest()} {path}\n".encode()

    def deployed(**contents) -> bool:
        return podnet_deployed(s, NodeState(contents=contents).answering(foreign.probe_request(s), "cp1"))

    assert deployed(**{ownership.LEDGER: ledger, path: podnets})
    # reset, then flannel's own manifest: the ledger still names podnet's old config, the node holds upstream's
    assert not deployed(**{ownership.LEDGER: ledger, path: CONFLIST})
    assert not deployed(**{path: CONFLIST})  # never podnet's
    assert not deployed(**{ownership.LEDGER: ledger})  # no CNI config at all


# --- the captured answers, read against their schema ---------------------------------------------


def test_captured_answers_are_read():
    items = process_command_line([KCM_CMDLINE])
    assert items[0] == "kube-controller-manager" and "--cluster-cidr=10.244.0.0/16" in items
    assert controller_manager.manifest_command_line(KCM_MANIFEST) == items
    data = configmap_data(CONFIGMAP)
    assert set(data) == {"cni-conf.json", "net-conf.json"}
    assert flannel_daemonsets(DAEMONSETS) == [foreign.FlannelDaemonSet("kube-flannel-ds",
                                                                       "docker.io/flannel/flannel:v0.28.9")]
    assert configmap_data([]) is None


@pytest.mark.parametrize("lines", [[], ["", ""], ["AA==", "AA=="], ["AA\n"]])
def test_a_command_line_answer_that_does_not_fit_is_refused(lines):
    with pytest.raises(BadField):
        process_command_line(lines)


@pytest.mark.parametrize("lines", [["{"], ['{"kind": "ConfigMap", "metadata": {"name": "other"}}'],
                                   ['{"kind": "ConfigMap", "metadata": {"name": "kube-flannel-cfg"}, "data": {"a": 1}}']])
def test_a_configmap_answer_that_does_not_fit_is_refused(lines):
    with pytest.raises(BadField):
        configmap_data(lines)


# --- kube-controller-manager's node IPAM, as it reads its flags ------------------------------------


@pytest.mark.parametrize("flags, cidrs, masks, problem", [
    (["--allocate-node-cidrs=true", "--cluster-cidr=10.244.0.0/16"], ["10.244.0.0/16"], (24,), ""),
    # a repeated flag: its last value
    (["--cluster-cidr=10.1.0.0/16", "--cluster-cidr", "10.2.0.0/16", "--node-cidr-mask-size=25",
      "--node-cidr-mask-size=0x1a"], ["10.2.0.0/16"], (26,), ""),
    # host bits dropped, as net.ParseCIDR does
    (["--cluster-cidr=10.244.1.0/16"], ["10.244.0.0/16"], (24,), ""),
    (["--cluster-cidr=fd00:10:244::/56,10.244.0.0/16", "--node-cidr-mask-size-ipv6=72"],
     ["fd00:10:244::/56", "10.244.0.0/16"], (72, 24), ""),
    (["--cluster-cidr=fd00:10:244::/56"], ["fd00:10:244::/56"], (64,), ""),
    (["--cluster-cidr=fd00:10:244::/56", "--node-cidr-mask-size=80"], ["fd00:10:244::/56"], (80,), ""),
    (["--cluster-cidr=10.244.0.0/16,fd00::/56", "--node-cidr-mask-size=24"], ["10.244.0.0/16", "fd00::/56"], (),
     "usage of --node-cidr-mask-size is not allowed with dual-stack clusters"),
    (["--cluster-cidr=10.244.0.0/16", "--node-cidr-mask-size=24", "--node-cidr-mask-size-ipv4=25"],
     ["10.244.0.0/16"], (), "usage of --node-cidr-mask-size-ipv4 and --node-cidr-mask-size-ipv6 is not allowed if "
                            "--node-cidr-mask-size is set"),
    (["--cluster-cidr=10.244.0.0/16", "--node-cidr-mask-size-ipv6=64"], ["10.244.0.0/16"], (),
     "usage of --node-cidr-mask-size-ipv6 is not allowed for a single-stack IPv4 cluster"),
    (["--cluster-cidr=10.1.0.0/16,10.2.0.0/16"], ["10.1.0.0/16", "10.2.0.0/16"], (),
     "--cluster-cidr=10.1.0.0/16,10.2.0.0/16: at most two networks, one IPv4 and one IPv6"),
    (["--cluster-cidr=10.244.0.0/16", "--node-cidr-mask-size=big"], ["10.244.0.0/16"], (),
     "--node-cidr-mask-size=big is not a number (strconv.ParseInt)"),
])
def test_node_ipam_cidrs_and_masks_as_kube_controller_manager_decides_them(flags, cidrs, masks, problem):
    ipam = node_ipam(["kube-controller-manager", "--allocate-node-cidrs", *flags])
    assert [str(n) for n in ipam.cluster_cidrs] == cidrs
    assert (ipam.node_masks, ipam.problem) == (masks, problem)


@pytest.mark.parametrize("flags, allocates, enabled", [
    ([], False, True),
    (["--allocate-node-cidrs=false"], False, True),
    (["--allocate-node-cidrs=T", "--controllers=*,-nodeipam"], True, False),
    (["--allocate-node-cidrs", "--controllers", "-node-ipam-controller,*"], True, False),
    # repeats append into one list: the first item naming node IPAM decides, "*" names none
    (["--allocate-node-cidrs=1", "--controllers=*,bootstrapsigner", "--controllers=-nodeipam"], True, False),
    (["--allocate-node-cidrs", "--controllers=nodeipam", "--", "--controllers=-nodeipam"], True, True),
])
def test_node_ipam_switches_as_kube_controller_manager_reads_them(flags, allocates, enabled):
    ipam = node_ipam(["kube-controller-manager", "--cluster-cidr=10.244.0.0/16", *flags])
    assert (ipam.allocates, ipam.enabled) == (allocates, enabled)


def test_a_command_line_kube_controller_manager_refuses_is_refused():
    with pytest.raises(ControllerManagerError):
        node_ipam(["kube-controller-manager", "--allocate-node-cidrs", "false"])
    assert node_ipam(["kcm", "--allocate-node-cidrs=maybe"]).problem == \
        "--allocate-node-cidrs=maybe is not a boolean (strconv.ParseBool)"
    assert node_ipam(["kcm", "--allocate-node-cidrs=true"]).problem == "--cluster-cidr is not given"


# --- flanneld's net-conf.json, as v0.28.9 reads it -------------------------------------------------


def test_upstream_kube_flannel_net_conf_with_flannels_defaults():
    conf = parse_net_conf(configmap_data(CONFIGMAP)["net-conf.json"])
    assert (conf.enable_ipv4, conf.enable_ipv6, conf.network, conf.ipv6_network) == \
        (True, False, NET("10.244.0.0/16"), None)
    assert (conf.backend, conf.vni, conf.port, conf.mtu) == ("vxlan", 1, 8472, None)
    assert conf.given == {"Network", "Backend", "Backend.Type"}


@pytest.mark.parametrize("text, values", [
    # member names match case-insensitively; a repeated member's last value wins (encoding/json)
    ('{"network": "10.1.0.0/16", "NETWORK": "10.2.0.0/16", "Backend": {"type": "VXLAN", "Vni": 7, "PORT": 0}}',
     ("10.2.0.0/16", None, "vxlan", 7, 8472, None)),
    # no Backend: flannel's "udp" backend
    ('{"Network": "10.1.0.0/16"}', ("10.1.0.0/16", None, "udp", None, None, None)),
    ('{"Network": "10.1.0.0/16", "Backend": {"Type": "wireguard", "MTU": 1420}}',
     ("10.1.0.0/16", None, "wireguard", None, 51820, 1420)),
    ('{"Network": "10.1.0.0/16", "Backend": {"Type": "host-gw", "VNI": 9}}',
     ("10.1.0.0/16", None, "host-gw", None, None, None)),
    ('{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00:10:244::/56", "Network": "10.1.0.0/16"}',
     (None, "fd00:10:244::/56", "udp", None, None, None)),
    ('{"EnableIPv6": true, "IPv6Network": "fd00:10:244::1/56", "Network": "10.1.2.3/16", "Unknown": [1]}',
     ("10.1.0.0/16", "fd00:10:244::/56", "udp", None, None, None)),
])
def test_net_conf_read_with_gos_json_rules_and_flannels_defaults(text, values):
    conf = parse_net_conf(text)
    shown = (str(conf.network) if conf.network else None, str(conf.ipv6_network) if conf.ipv6_network else None,
             conf.backend, conf.vni, conf.port, conf.mtu)
    assert shown == values


@pytest.mark.parametrize("text, message", [
    ("{", "net-conf.json is not JSON"),
    ("[]", "net-conf.json: json: cannot unmarshal array into a Go struct"),
    ("{}", "EnableIPv4 is on but Network is not set"),
    ('{"Network": "10.1.0.0/16", "EnableIPv6": true}', "EnableIPv6 is on but IPv6Network is not set"),
    ('{"Network": "fd00::/56"}', "Network: invalid IPv4 CIDR format: fd00::/56"),
    ('{"Network": "10.1.0.0"}', "Network: invalid CIDR address: 10.1.0.0"),
    ('{"Network": "10.1.0.0/16", "EnableIPv4": "yes"}', "cannot unmarshal string into Go struct field Config.EnableIPv4"),
    ('{"Network": "10.1.0.0/16", "Backend": "vxlan"}', "error decoding Backend property of config"),
    ('{"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan", "Port": 1.5}}', "cannot unmarshal number"),
])
def test_a_net_conf_flanneld_refuses(text, message):
    with pytest.raises(NetConfError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_net_conf(text)
