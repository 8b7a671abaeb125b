"""
flanneld: net-conf.json from the settings (its Network is the same value that feeds
kube-controller-manager's --cluster-cidr), rolled out as the kube-flannel DaemonSet
(default), as a systemd service on every node, or left to something else (external).
After a rollout or a node IPAM change, every node must have a podCIDR inside the cluster CIDR.

flanneld's credentials are the least that works, for both rollouts: the ServiceAccount
kube-flannel/flannel bound to flannel's ClusterRole (upstream's kube-flannel.yml). The systemd
unit reads a kubeconfig of its own (KUBECONFIG_PATH, mode 0600) whose user is a token of that
ServiceAccount from the TokenRequest API (`kubectl create token`, TOKEN_DURATION), in
TOKEN_PATH (mode 0600, re-read by client-go without a restart); a rerun renews it when less
than TOKEN_RENEWAL is left. No admin credentials go to the nodes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import json
import posixpath
import re
import shlex
import threading
import time
from dataclasses import dataclass, replace

import yaml

from pyinfra import logger

from tasks import cni, controller_manager, pod_network, releases

from tasks.engine import answers, kubectl, ops, secret_files
from tasks.engine.findings import Finding, error, refuse, say, warning
from tasks.engine.polling import poll
from tasks.engine.context import HostContext, Step
from tasks.artifacts.catalog import install_entry
from tasks.engine.desired import DesiredFile, local_file, render, text_file
from tasks.engine import ownership as owned
from tasks.engine.ownership import Ownership, OwnedFile, declared_digests, unit_removal_commands
from tasks.errors import ResetError
from tasks.errors import PodnetError
from tasks.formats import kube_yaml, shell
from tasks.formats.systemd_unit import exec_command
from tasks.pod_network import node_pod_cidrs_command
from tasks.engine.probe import NodeState, ProbeRequest
from tasks.releases import FLANNEL_HEALTHZ_PORT, flannel_serves_health, release
from tasks.settings import Settings

NAMESPACE = "kube-flannel"
DAEMONSET = "kube-flannel"
CONTAINER = "kube-flannel"  # the DaemonSet's flanneld container (upstream kube-flannel.yml's name)
MANIFEST_PATH = "/etc/podnet/kube-flannel.yml"
NET_CONF_PATH = "/etc/kube-flannel/net-conf.json"
FLANNELD_PATH = install_entry("flanneld")  # files/artifacts.yaml
UNIT = "flanneld.service"
UNIT_PATH = "/etc/systemd/system/flanneld.service"
WIREGUARD_INTERFACES = ("flannel-wg", "flannel-wg-v6")  # flannel's pkg/backend/wireguard
RUN_DIR = "/run/flannel"  # flanneld's subnet.env
MANIFEST_HASH_ANNOTATION = "podnet.io/manifest-sha256"
POD_IP_ENV = "POD_IP"
POLL_SECONDS = 5
SERVICE_ACCOUNT = "flannel"  # upstream's kube-flannel.yml: ServiceAccount, ClusterRole and ClusterRoleBinding
RBAC_PATH = "/etc/podnet/flannel-rbac.yml"
RBAC_QUERY = "flannel_rbac"
RBAC_OBJECTS = (f"serviceaccount/{SERVICE_ACCOUNT}", f"clusterrole.rbac.authorization.k8s.io/{SERVICE_ACCOUNT}",
                f"clusterrolebinding.rbac.authorization.k8s.io/{SERVICE_ACCOUNT}")
KUBECONFIG_PATH = "/etc/kube-flannel/kubeconfig"  # flanneld's own (systemd rollout), mode 0600
TOKEN_PATH = "/etc/kube-flannel/token"  # the ServiceAccount token it names (tokenFile), mode 0600
TOKEN_EXPIRY_PATH = "/etc/kube-flannel/token.expires"  # when that token expires (seconds since the epoch)
CREDENTIAL_FILES = (KUBECONFIG_PATH, TOKEN_PATH, TOKEN_EXPIRY_PATH)  # what reset removes with the unit
TOKEN_DURATION = 365 * 24 * 3600  # seconds a token is requested for (TokenRequest expirationSeconds)
TOKEN_RENEWAL = 90 * 24 * 3600  # a rerun renews a token with less than this left
STALE_KUBECONFIG = "flannel:kubeconfig-setting-on-worker"
JWT_RE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
POD_SELECTOR = "app=flannel"
LOG_LINES = 20  # a not-Ready flannel pod's last log lines, in the rollout's error


class PodCidrError(PodnetError, RuntimeError):
    """A node without a podCIDR inside the cluster CIDR."""


class FlannelTokenError(PodnetError, RuntimeError):
    """flanneld's ServiceAccount token could not be made or installed; the message says where."""


class RolloutError(PodnetError, RuntimeError):
    """The DaemonSet did not roll out: a flannel pod that is not Ready, named with its node and last log lines."""


class PodMtuError(PodnetError, ValueError):
    """A pod MTU (flannel_mtu) larger than the backend can carry over the node's interface."""


# Bytes a backend adds to every pod packet on the wire, by the pod packet's IP family, which is
# also the family of its outer header: flanneld v0.28.9 sends IPv4 pod traffic through
# flannel.<VNI> from the interface's IPv4 address and IPv6 pod traffic through flannel-v6.<VNI>
# from its IPv6 address (createVXLANDevice, pkg/backend/vxlan/vxlan.go; the wireguard backend's
# flannel-wg and flannel-wg-v6 likewise).
# - vxlan: IPv4 50 = outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14; IPv6 70 (outer IPv6 40).
#   flanneld itself subtracts 50 for both families: it makes both devices with the interface MTU
#   - 50 (newVXLANDevice, pkg/backend/vxlan/device.go) and writes FLANNEL_MTU = that - 50
#   (encapOverhead, vxlan_network.go), one value for both families (WriteSubnetFile,
#   pkg/subnet/subnet.go). Linux clamps an IPv6 vxlan device to the interface MTU - 70
#   (VXLAN6_HEADROOM, vxlan_config_apply in drivers/net/vxlan/vxlan_core.c; measured: asked
#   for 1450 over a 1500 link, it makes 1430), so flannel-v6.<VNI> carries 20 bytes less than
#   the FLANNEL_MTU pods get (FLANNELD_OVERHEAD).
# - wireguard: 80 for both (overhead, pkg/backend/wireguard/wireguard_network.go, sized for an IPv6
#   outer header; its devices get the interface MTU - 80, device.go).
# - host-gw: nothing (pkg/backend/hostgw: plain routing).
ENCAP_OVERHEAD = {"vxlan": {4: 50, 6: 70}, "wireguard": {4: 80, 6: 80}, "host-gw": {4: 0, 6: 0}}
FLANNELD_OVERHEAD = {"vxlan": 50, "wireguard": 80, "host-gw": 0}  # what flanneld subtracts for FLANNEL_MTU


def net_conf(s: Settings) -> dict:
    backend: dict = {"Type": s.flannel_backend}
    if s.flannel_backend == "vxlan":
        backend.update(VNI=s.flannel_vni, Port=s.effective_flannel_port)
    elif s.flannel_backend == "wireguard":
        backend["ListenPort"] = s.effective_flannel_port
    conf: dict = {"Network": str(s.cluster_cidr), "EnableIPv4": True}
    if s.cluster_cidr_ipv6 is not None:
        conf.update(EnableIPv6=True, IPv6Network=str(s.cluster_cidr_ipv6))
    conf["Backend"] = backend
    return conf


def net_conf_json(s: Settings) -> str:
    return json.dumps(net_conf(s), indent=2) + "\n"


# --- net-conf.json as flanneld reads it (a cluster podnet did not deploy: tasks/doctor/foreign.py) ---------

# flanneld v0.28.9's values for what net-conf.json leaves out: EnableIPv4 true (ParseConfig, pkg/subnet/config.go),
# no Backend at all the "udp" backend (parseBackendType, same file); vxlan's VNI 1 (defaultVNI) and Port 0,
# and wireguard's ListenPort: releases.FLANNEL_BACKEND_DEFAULT_PORTS; the backend's MTU defaults to the external
# interface's (per node, so left None here).
NET_CONF_DEFAULTS = {"EnableIPv4": True, "EnableIPv6": False, "Backend.Type": "udp"}
DEFAULT_VNI = 1


class NetConfError(PodnetError, ValueError):
    """A net-conf.json flanneld refuses to start with; the message is flanneld's reason."""


@dataclass(frozen=True)
class NetConf:
    """
    flanneld's network configuration as v0.28.9 reads net-conf.json (``parse_net_conf``): IP families,
    networks, the backend type (lower case, as the backend manager looks it up) with its VNI (vxlan), UDP port
    (vxlan Port, wireguard ListenPort) and MTU (the external interface MTU the backend subtracts its
    encapsulation from; None: the interface's own), flannel's defaults filled in. ``given``: the keys the file
    sets ("Network", "Backend.VNI"...); every other value is flannel's default.
    """

    enable_ipv4: bool
    enable_ipv6: bool
    network: ipaddress.IPv4Network | None
    ipv6_network: ipaddress.IPv6Network | None
    backend: str
    vni: int | None
    port: int | None
    mtu: int | None
    given: frozenset[str]


class _JsonObject(list):
    """A JSON object's members in order, (key, value) pairs, repeats kept (json.loads' object_pairs_hook)."""


def _go_fields(pairs, names: tuple[str, ...], where: str) -> dict:
    """A JSON object's members as encoding/json stores them into a Go struct with fields ``names``: a key
    matches a field case-insensitively, a repeated one's last value wins, keys of no field are ignored."""
    if not isinstance(pairs, _JsonObject):
        raise NetConfError(f"{where}: json: cannot unmarshal {_json_kind(pairs)} into a Go struct")
    by_fold = {name.lower(): name for name in names}
    found = {}
    for key, value in pairs:
        name = by_fold.get(key.lower())
        if name is not None:
            found[name] = value
    return found


def _json_kind(value) -> str:
    return {bool: "bool", str: "string", int: "number", float: "number", type(None): "null", list: "array",
            _JsonObject: "object"}.get(type(value), "value")


def _go_bool_field(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise NetConfError(f"json: cannot unmarshal {_json_kind(value)} into Go struct field Config.{name} of type bool")
    return value


def _go_int_field(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise NetConfError(f"json: cannot unmarshal {_json_kind(value)} into Go struct field {name} of type int")
    return value


def _flannel_network(value, name: str, version: int):
    """ip.IP4Net / ip.IP6Net UnmarshalJSON (pkg/ip/ipnet.go, ipnet6.go): net.ParseCIDR of the text, host bits
    dropped, of that IP family."""
    if not isinstance(value, str) or "/" not in value:
        raise NetConfError(f"{name}: invalid CIDR address: {value if isinstance(value, str) else json.dumps(value)}")
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise NetConfError(f"{name}: invalid CIDR address: {value}") from None
    if network.version != version:
        raise NetConfError(f"{name}: invalid IPv{version} CIDR format: {value}")
    return network


def parse_net_conf(text: str) -> NetConf:
    """
    net-conf.json as flanneld v0.28.9 reads it (subnet.ParseConfig, pkg/subnet/config.go; the backend's own
    section by its RegisterNetwork: pkg/backend/vxlan/vxlan.go parseVXLANConfig, pkg/backend/wireguard), with
    Go's encoding/json rules (member names matched case-insensitively, a repeated member's last value, unknown
    members ignored, a value of the wrong type refused). NetConfError with flanneld's reason for a file it
    refuses. Absent values are flannel's defaults (NET_CONF_DEFAULTS, releases.FLANNEL_BACKEND_DEFAULT_PORTS,
    DEFAULT_VNI).
    """
    try:
        document = json.loads(text, object_pairs_hook=_JsonObject)
    except ValueError as problem:
        raise NetConfError(f"net-conf.json is not JSON: {problem}") from None
    top = _go_fields(document, ("EnableIPv4", "EnableIPv6", "Network", "IPv6Network", "Backend"), "net-conf.json")
    given = set(top)
    enable_ipv4 = _go_bool_field(top.get("EnableIPv4", NET_CONF_DEFAULTS["EnableIPv4"]), "EnableIPv4")
    enable_ipv6 = _go_bool_field(top.get("EnableIPv6", NET_CONF_DEFAULTS["EnableIPv6"]), "EnableIPv6")
    network = _flannel_network(top["Network"], "Network", 4) if "Network" in top else None
    ipv6_network = _flannel_network(top["IPv6Network"], "IPv6Network", 6) if "IPv6Network" in top else None
    # the kube subnet manager then refuses every node's podCIDR (AcquireLease, pkg/subnet/kube/kube.go)
    if enable_ipv4 and network is None:
        raise NetConfError("EnableIPv4 is on but Network is not set: flanneld finds no node's podCIDR in it")
    if enable_ipv6 and ipv6_network is None:
        raise NetConfError("EnableIPv6 is on but IPv6Network is not set: flanneld finds no node's IPv6 podCIDR in it")
    backend_type, section = NET_CONF_DEFAULTS["Backend.Type"], {}
    if "Backend" in top:
        if top["Backend"] is not None and not isinstance(top["Backend"], _JsonObject):
            raise NetConfError(f"error decoding Backend property of config: json: cannot unmarshal "
                               f"{_json_kind(top['Backend'])} into Go value")
        section = _go_fields(top["Backend"] or _JsonObject(), ("Type", "VNI", "Port", "ListenPort", "MTU"), "Backend")
        backend_type = section.get("Type", "")
        if not isinstance(backend_type, str):
            raise NetConfError(f"error decoding Backend property of config: json: cannot unmarshal "
                               f"{_json_kind(backend_type)} into Go struct field .Type of type string")
        given.update(f"Backend.{key}" for key in section)
    backend = backend_type.lower()
    vni = port = mtu = None
    if backend == "vxlan":
        vni = _go_int_field(section.get("VNI", DEFAULT_VNI), "VXLANConfig.vni")
        port = (_go_int_field(section.get("Port", 0), "VXLANConfig.port")
                or releases.FLANNEL_BACKEND_DEFAULT_PORTS["vxlan"])
    elif backend == "wireguard":
        port = _go_int_field(section.get("ListenPort", releases.FLANNEL_BACKEND_DEFAULT_PORTS["wireguard"]),
                             ".ListenPort")
    if backend in ("vxlan", "wireguard") and "MTU" in section:
        mtu = _go_int_field(section["MTU"], "MTU") or None
    return NetConf(enable_ipv4, enable_ipv6, network if enable_ipv4 else None,
                   ipv6_network if enable_ipv6 else None, backend, vni, port, mtu, frozenset(given))


def image_flannel_version(image: str) -> str | None:
    """The flannel release an image's tag names ("docker.io/flannel/flannel:v0.28.9" -> "0.28.9"); None for an
    image without a release tag (a digest only, "latest", a tag of your own)."""
    name = image.split("@", 1)[0]
    tail = name.rsplit("/", 1)[-1]
    if ":" not in tail:
        return None
    tag = tail.split(":", 1)[1]
    try:
        release(tag)
    except ValueError:
        return None
    return tag.lstrip("v")


def daemonset_health(s: Settings) -> bool:
    """The DaemonSet's flanneld serves /healthz and /readyz (FLANNEL_HEALTH, by flannel_image's release)."""
    return flannel_serves_health(image_flannel_version(s.flannel_image))


def flanneld_args(s: Settings, kubeconfig: str | None = None, net_config_path: str | None = None,
                  iface: str | None = None, healthz: bool = False) -> list[str]:
    """flanneld's flags; ``healthz``: its health server on FLANNEL_HEALTHZ_PORT (kube-flannel.yml's)."""
    args = ["--ip-masq", "--kube-subnet-mgr"]
    if healthz:
        args.append(f"--healthz-port={FLANNEL_HEALTHZ_PORT}")
    if kubeconfig:
        args.append(f"--kubeconfig-file={kubeconfig}")
    if net_config_path:
        args.append(f"--net-config-path={net_config_path}")
    iface = iface or s.flannel_iface
    if iface:
        args.append(f"--iface={iface}")
    return args


def daemonset_iface(s: Settings) -> tuple[str | None, list[tuple[str, str]]]:
    """
    The DaemonSet's --iface (one value for every node) and the downward-API env it needs.
    A flannel_iface that is the node's own node_ip becomes each node's own address: the
    pod's status.podIP, which for a host-network pod is the kubelet's node IP (--node-ip).
    """
    if s.flannel_iface_is_node_ip:
        return f"$({POD_IP_ENV})", [(POD_IP_ENV, "status.podIP")]
    return (kube_yaml.container_arg(s.flannel_iface) if s.flannel_iface else None), []


def render_manifest(s: Settings) -> str:
    """The DaemonSet manifest; a net-conf change changes the pod template, so the pods roll."""
    conf = net_conf_json(s)
    iface, field_env = daemonset_iface(s)
    health = daemonset_health(s)
    context = dict(namespace=NAMESPACE, daemonset=DAEMONSET, container=CONTAINER, image=s.flannel_image,
                   args=flanneld_args(s, iface=iface, healthz=health), field_env=field_env,
                   healthz_port=FLANNEL_HEALTHZ_PORT if health else None,
                   net_conf_json=conf.rstrip("\n"), net_conf_sha256=hashlib.sha256(conf.encode()).hexdigest())
    unsigned = render("flannel/kube-flannel.yml.j2", manifest_sha256="", **context)
    return render("flannel/kube-flannel.yml.j2", manifest_sha256=hashlib.sha256(unsigned.encode()).hexdigest(),
                  **context)


def render_rbac(s: Settings) -> str:
    """flanneld's ServiceAccount, ClusterRole and ClusterRoleBinding (the same objects as the DaemonSet's)."""
    return "# Managed by podnet: flanneld's credentials for its systemd unit.\n" + render(
        "flannel/flannel-rbac.yml.j2", namespace=NAMESPACE) + "\n"


def manifest_sha256(manifest: str) -> str:
    for line in manifest.splitlines():
        if MANIFEST_HASH_ANNOTATION in line:
            return line.split(":", 1)[1].strip().strip('"')
    raise AssertionError("manifest without its hash annotation")


def checks_pod_cidrs(s: Settings, first_control_plane: bool) -> bool:
    """The first control-plane host checks every node's podCIDR for a rollout podnet makes
    (DaemonSet or systemd): flanneld's kube subnet manager needs one on each node."""
    return pod_network.asks_pod_cidrs(s, first_control_plane)


_said: set[str] = set()


def pod_cidrs_unchecked(s: Settings, first_control_plane: str | None) -> list[Finding]:
    """Without a control-plane host the podCIDR check of a systemd rollout cannot run (no kubectl)."""
    if s.flannel_rollout != "systemd" or first_control_plane is not None:
        return []
    return [warning(f"no host is in group {s.control_plane_group!r}",
                    why="nothing checks that every node has a podCIDR for flanneld (flanneld waits for one and logs "
                        "'pod cidr not assigned')",
                    fix="add a host with kubectl and the kubeconfig setting to that group to have it checked")]


def say_pod_cidrs_unchecked(s: Settings) -> None:
    """Without a control-plane host the podCIDR check cannot run (no kubectl): said once per run."""
    if "pod_cidrs" not in _said and pod_cidrs_unchecked(s, None):
        _said.add("pod_cidrs")
        say(pod_cidrs_unchecked(s, None))


def probe_request(s: Settings, first_control_plane: bool) -> ProbeRequest:
    """What the rollout (``rollout_probe_request``) and the MTU check (``mtu_probe_request``) ask."""
    return rollout_probe_request(s, first_control_plane).merge(mtu_probe_request(s))


def flanneld_mtu_short(s: Settings) -> bool:
    """flanneld's own pod MTU (flannel_mtu unset) is more than some family the pod network has carries
    (vxlan on dual stack: ENCAP_OVERHEAD)."""
    return s.flannel_mtu is None and any(ENCAP_OVERHEAD[s.flannel_backend][v] > FLANNELD_OVERHEAD[s.flannel_backend]
                                         for v in s.pod_networks)


def mtu_probe_request(s: Settings) -> ProbeRequest:
    """Every node, when flannel_mtu is set (or flanneld's own MTU is short for a family,
    ``flanneld_mtu_short``): the MTU of the interface flanneld will use."""
    asks = s.flannel_mtu is not None or flanneld_mtu_short(s)
    return ProbeRequest(queries={"flannel_iface_mtu": iface_mtu_command(s)} if asks else {})


def rollout_probe_request(s: Settings, first_control_plane: bool) -> ProbeRequest:
    """The DaemonSet's manifest hash (first control-plane host) or flanneld's files and unit (systemd
    rollout), and every node's podCIDRs where the rollout checks them."""
    declared = ownership(s)
    request = ProbeRequest()
    if s.flannel_rollout == "daemonset" and first_control_plane:
        request.queries["flannel_manifest"] = (
            f"{s.kubectl} -n {NAMESPACE} get ds {DAEMONSET} --ignore-not-found "
            f"-o jsonpath='{{.metadata.annotations.podnet\\.io/manifest-sha256}}'")
        request = request.merge(replace(declared, files=tuple(f for f in declared.files if f.path == MANIFEST_PATH),
                                        units=()).probe_request())
    elif s.flannel_rollout == "systemd":
        here = (MANIFEST_PATH,) if first_control_plane else (MANIFEST_PATH, RBAC_PATH)  # RBAC: applied from there
        request = request.merge(replace(declared, files=tuple(f for f in declared.files if f.path not in here))
                                .probe_request())
        request.contents.append(TOKEN_EXPIRY_PATH)  # no secret: when the token expires
        if not s.is_control_plane:  # what earlier releases pointed flanneld at: admin credentials on a worker
            request.features[STALE_KUBECONFIG] = f"[ -e {shlex.quote(s.kubeconfig)} ]"
        if first_control_plane:
            request.queries[RBAC_QUERY] = (f"{s.kubectl} -n {NAMESPACE} get {' '.join(RBAC_OBJECTS)} "
                                           "--ignore-not-found -o name")
    if checks_pod_cidrs(s, first_control_plane):
        request.queries["pod_cidrs"] = node_pod_cidrs_command(s)
    return request


def iface_mtu_command(s: Settings) -> str:
    """Prints "<interface> <mtu>" of the interface flanneld uses: flannel_iface (a name, or an
    address on it, as flanneld's --iface accepts), else the interface of the default route
    (flanneld's own choice without --iface)."""
    if s.flannel_iface is None:
        find = "ip -o route show default | awk '{for (i = 1; i < NF; i++) if ($i == \"dev\") {print $(i + 1); exit}}'"
    else:
        try:
            address = ipaddress.ip_address(s.flannel_iface)
        except ValueError:
            find = f"echo {shlex.quote(s.flannel_iface)}"
        else:
            find = f"ip -o addr show to {address} | awk '{{print $2; exit}}'"
    return (f"dev=$({find}); [ -n \"$dev\" ] && [ -r \"/sys/class/net/$dev/mtu\" ] && "
            "printf '%s %s\\n' \"$dev\" \"$(cat \"/sys/class/net/$dev/mtu\")\"")


def _iface_mtu_line(line: str) -> tuple[str, int]:
    """iface_mtu_command's line: an interface name and its MTU (68, IPv4's minimum, to 65536)."""
    iface, mtu = answers.fields(line, 2, " ")
    return answers.interface_name(iface), answers.decimal(mtu, 68, 65536, "MTU")


def largest_pod_mtu(s: Settings, iface_mtu: int) -> int:
    """The largest pod MTU the backend carries over an interface of ``iface_mtu`` in every IP family the
    pod network has: the interface MTU minus the largest of those families' overheads (ENCAP_OVERHEAD)."""
    return iface_mtu - max(ENCAP_OVERHEAD[s.flannel_backend][v] for v in s.pod_networks)


def _overhead_said(s: Settings) -> str:
    overheads = {v: ENCAP_OVERHEAD[s.flannel_backend][v] for v in s.pod_networks}
    if len(set(overheads.values())) > 1:
        return f"the {s.flannel_backend} backend adds " + " and ".join(
            f"{n} bytes to {pod_network.FAMILY[v]}" for v, n in overheads.items()) + " pod packets"
    overhead = next(iter(overheads.values()))
    return f"the {s.flannel_backend} backend adds {overhead} bytes" if overhead else \
        f"the {s.flannel_backend} backend adds nothing"


def pod_mtu_findings(s: Settings, node: NodeState, host_name: str) -> list[Finding]:
    """
    A flannel_mtu the backend cannot carry over this node's interface in every IP family of the pod
    network (an error): at most ``largest_pod_mtu`` (the interface MTU minus the backend's overhead
    for each family, ENCAP_OVERHEAD), else large packets between nodes are dropped. Without
    flannel_mtu, where flanneld's own FLANNEL_MTU is more than a family carries (vxlan on dual
    stack: 20 bytes more than flannel-v6.<VNI>), a warning naming the MTU that carries both. When
    the probe could not tell the interface, flanneld itself reports it; nothing is found. An answer
    that does not fit (``<interface> <mtu>``, one line) is an error too (RemoteAnswerError).
    """
    if s.flannel_mtu is None and not flanneld_mtu_short(s):
        return []
    rc, lines = node.queries.get("flannel_iface_mtu", (1, []))
    if rc != 0 or not lines:
        return []
    try:
        found = answers.records(host_name, "the MTU of flanneld's interface (flannel_iface_mtu)", lines,
                                _iface_mtu_line)
    except answers.RemoteAnswerError as refused:
        return [error(str(refused), answers.RemoteAnswerError, text=str(refused))]
    if len(found) != 1:
        said = answers.problem(host_name, "the MTU of flanneld's interface", "\n".join(lines), "one line expected")
        return [error(said, answers.RemoteAnswerError, text=said)]
    iface, iface_mtu = found[0]
    largest = largest_pod_mtu(s, iface_mtu)
    if s.flannel_mtu is None:
        own = iface_mtu - FLANNELD_OVERHEAD[s.flannel_backend]
        return [warning(f"flanneld's own pod MTU {own} is too large for IPv6", where=f"{host_name}: flannel_mtu unset",
                        why=f"flanneld subtracts {FLANNELD_OVERHEAD[s.flannel_backend]} bytes from {iface}'s MTU "
                            f"{iface_mtu} for both families, but {_overhead_said(s)}: its IPv6 device carries at "
                            f"most {largest}, so IPv6 pod packets of more than {largest} bytes between nodes get "
                            "ICMPv6 Packet Too Big",
                        fix=f"set flannel_mtu = {largest} to carry every pod packet of both families")]
    if s.flannel_mtu <= largest:
        return []
    fix = f"set flannel_mtu to at most {largest}, or leave it unset (flanneld then derives it)"
    if flanneld_mtu_short(replace(s, flannel_mtu=None)):
        fix = f"set flannel_mtu to at most {largest}"
    return [error(f"{s.flannel_mtu} is too large", PodMtuError, where=f"{host_name}: flannel_mtu",
                  why=f"flanneld's interface {iface} has MTU {iface_mtu} and {_overhead_said(s)}, so pod packets of "
                      f"more than {largest} bytes would be dropped between nodes",
                  fix=fix)]


def pod_mtu_fits(s: Settings, node: NodeState, host_name: str) -> None:
    """Refuse (PodMtuError, while planning, before any change) a flannel_mtu the backend cannot carry
    over this node's interface (``pod_mtu_findings``); say where flanneld's own MTU is short for IPv6."""
    found = pod_mtu_findings(s, node, host_name)
    refuse(found)
    say(found)


def node_ipam_flags(s: Settings) -> str:
    """kube-controller-manager's node IPAM flags as podnet gives them (both families' on dual stack)."""
    return " ".join(f"--{flag}={value}" for flag, value in controller_manager.desired_flags(s).items()
                    if value is not None and flag != "service-cluster-ip-range")


def pod_cidr_problems(s: Settings, lines: list[str], host_name: str = "") -> list[str]:
    """
    Every node's spec.podCIDRs as kube-controller-manager's node IPAM gives them for these settings,
    for each IP family the pod network has (``Settings.pod_networks``): one podCIDR per family
    (the range allocator fills spec.podCIDRs from one CIDRSet per --cluster-cidr entry,
    pkg/controller/nodeipam/ipam/range_allocator.go), inside that family's cluster CIDR (flannel's
    Network / IPv6Network), with that family's node mask (--node-cidr-mask-size, or -ipv4 / -ipv6 on
    dual stack), and no two nodes' podCIDRs overlapping (the CIDRSet hands each range out once,
    pkg/controller/nodeipam/ipam/cidrset). The lines are checked by pod_network.pod_cidrs
    (RemoteAnswerError for one that does not fit).
    """
    problems = []
    flags = node_ipam_flags(s)
    held = pod_network.pod_cidrs(host_name, lines)
    for name, cidrs in held.items():
        if not cidrs:
            problems.append(f"node {name} has no spec.podCIDR (pod cidr not assigned): check that "
                            f"kube-controller-manager runs with {flags}")
            continue
        for version in pod_network.missing_families(s, cidrs):
            cluster_key = pod_network.POD_NETWORK_KEYS[version][0]
            problems.append(f"node {name} has no {pod_network.FAMILY[version]} podCIDR (spec.podCIDRs "
                            f"{' '.join(cidrs)}) although {cluster_key} is set: kube-controller-manager gives a node "
                            f"its podCIDRs once, when it registers, one per family of {flags}; a node registered "
                            "before dual stack was turned on keeps its single podCIDR until it registers again "
                            "(allow_pod_network_change)")
        for cidr in cidrs:
            if pod_network.fits(s, cidr):
                continue
            network = ipaddress.ip_network(cidr)  # checked by pod_cidrs
            family = pod_network.FAMILY[network.version]
            if network.version not in s.pod_networks:
                problems.append(f"node {name} has the {family} spec.podCIDR {cidr}, but the pod network has no "
                                f"{family} family (cluster_cidr_ipv6 is unset): check {flags}")
                continue
            cluster, mask = s.pod_networks[network.version]
            cluster_key, mask_key = pod_network.POD_NETWORK_KEYS[network.version]
            if network.subnet_of(cluster):  # type: ignore[arg-type]
                flag = "node-cidr-mask-size" + (f"-ipv{network.version}" if s.dual_stack else "")
                problems.append(f"node {name} has spec.podCIDR {cidr}, not a /{mask} ({mask_key}): "
                                f"kube-controller-manager's --{flag} must be {mask}; check {flags}")
            else:
                problems.append(f"node {name} has spec.podCIDR {cidr}, outside {cluster_key} {cluster}: "
                                f"kube-controller-manager's --cluster-cidr must equal flannel's "
                                f"{'Network' if network.version == 4 else 'IPv6Network'}; check {flags}")
    for name, cidr, other, other_cidr in pod_network.overlapping(held):
        problems.append(f"nodes {name} and {other} hold overlapping podCIDRs {cidr} and {other_cidr}: "
                        "kube-controller-manager never gives a range twice, so one was set by hand or by another "
                        "cluster's allocator; delete that Node so it registers again")
    return problems


def wait_for_pod_cidrs(state, host, connector_arguments, s: Settings) -> bool:
    """Poll (bounded by flannel_rollout_timeout) until every node has a podCIDR in the cluster CIDR."""
    def problems() -> list[str]:
        ok, output = host.run_shell_command(node_pod_cidrs_command(s), **connector_arguments)
        lines = output.stdout_lines if ok else []  # stdout only: a kubectl warning on stderr is no node
        return pod_cidr_problems(s, lines, host.name) if lines else ["kubectl get nodes returned no nodes"]

    left = poll(problems, s.flannel_rollout_timeout, POLL_SECONDS)
    if left:
        raise PodCidrError("; ".join(left))
    return True


def interfaces(s: Settings) -> list[str]:
    """The interfaces flanneld makes: the vxlan devices of the configured VNI (flanneld names them
    flannel.<VNI> and flannel-v6.<VNI>) and of VNI 1 (flannel's default), the wireguard devices."""
    vnis = dict.fromkeys([s.flannel_vni, 1])
    return [*(pod_network.vxlan_device(version, v) for version in (4, 6) for v in vnis), *WIREGUARD_INTERFACES]


def ownership(s: Settings) -> Ownership:
    """What the flannel concern owns on a node, whichever rollout put it there: podnet's copy of the
    kube-flannel manifest (first control-plane host), or flanneld's binary, net-conf.json and unit;
    the interfaces and the runtime directory flanneld makes."""
    return Ownership(
        "flannel",
        files=(OwnedFile(MANIFEST_PATH, "template flannel/kube-flannel.yml.j2"),
               OwnedFile(UNIT_PATH, "template flannel/flanneld.service.j2"),
               OwnedFile(FLANNELD_PATH, "release flanneld"),
               OwnedFile(NET_CONF_PATH, "rendered flannel.net_conf_json"),
               OwnedFile(RBAC_PATH, "template flannel/flannel-rbac.yml.j2"),
               *(OwnedFile(path, "secret flannel's ServiceAccount credentials") for path in CREDENTIAL_FILES)),
        units=(UNIT,), interfaces=tuple(interfaces(s)), runtime_dirs=(RUN_DIR,))


def systemd_kubeconfig(s: Settings, has_control_plane: bool) -> str:
    """The kubeconfig flanneld's unit reads: its own (a ServiceAccount token that podnet asks the first
    control-plane host for), or, without any host in the control-plane group, the kubeconfig setting."""
    return KUBECONFIG_PATH if has_control_plane else s.kubeconfig


def systemd_files(s: Settings, flanneld_binary,
                  has_control_plane: bool = True) -> tuple[list[DesiredFile], DesiredFile]:
    exec_start = exec_command([FLANNELD_PATH, *flanneld_args(s, systemd_kubeconfig(s, has_control_plane),
                                                             NET_CONF_PATH)])
    unit = text_file(UNIT_PATH, render("flannel/flanneld.service.j2", exec_start=exec_start))
    return [local_file(FLANNELD_PATH, flanneld_binary), text_file(NET_CONF_PATH, net_conf_json(s))], unit


def _manifest_hash_line(line: str) -> str:
    return answers.sha256_hex(line.strip())


def apply_daemonset(s: Settings, node: NodeState, ipam_changed: bool, cluster_created: bool = False,
                    host_name: str = "", deleted: bool = False) -> None:
    """
    Apply kube-flannel from the first control-plane host and check every node's podCIDR.
    ``cluster_created``: kubeadm init creates the cluster in this run (cluster_bootstrap), so
    kubectl could not be asked while planning and nothing is deployed yet. ``deleted``: this run
    deleted the DaemonSet (``direct_routes_removed``), so it is applied again.
    """
    manifest = render_manifest(s)
    refuse(daemonset_findings(s, node, cluster_created))
    applied = (0, []) if cluster_created else node.queries.get("flannel_manifest", (1, []))
    # the annotation is a sha256 podnet wrote, or nothing (not deployed, or not by podnet)
    hashes = answers.records(host_name, "the kube-flannel DaemonSet's manifest hash (flannel_manifest)",
                             [line for line in applied[1] if line.strip()], _manifest_hash_line)
    if len(hashes) > 1:
        raise answers.RemoteAnswerError(answers.problem(host_name, "the kube-flannel DaemonSet's manifest hash",
                                                        "\n".join(applied[1]), "one line expected"))
    current_hash = hashes[0] if hashes else ""
    needs_apply = current_hash != manifest_sha256(manifest) or deleted
    ops.files_installed(name="flannel: kube-flannel manifest", files=[text_file(MANIFEST_PATH, manifest)],
                        current=node)
    ops.shell_when(
        name="flannel: DaemonSet applied",
        commands=[f"{s.kubectl} apply -f {MANIFEST_PATH}"],
        reason=("applying kube-flannel: " + ("not deployed yet" if not current_hash else
                                             "deleted to clear host-gw's IPv6 routes" if deleted else "manifest changed"))
        if needs_apply else None,
    )
    ops.python_step(name="flannel: DaemonSet rolled out, every flannel pod Ready", function=wait_for_rollout,
                    args=(s,), reason="waiting for the new kube-flannel pods" if needs_apply else None)
    pod_cidrs_checked(s, node, changed=needs_apply or ipam_changed, host_name=host_name)


def daemonset_findings(s: Settings, node: NodeState, cluster_created: bool = False) -> list[Finding]:
    """The first control-plane host could not ask kubectl for the DaemonSet (an error)."""
    rc, lines = (0, []) if cluster_created else node.queries.get("flannel_manifest", (1, []))
    return [kubectl.failed(node, "flannel_manifest", s.kubeconfig, PodCidrError)] if rc != 0 else []


def pod_cidr_findings(s: Settings, node: NodeState, host_name: str = "") -> list[Finding]:
    """From the probe's list of every node's podCIDRs: kubectl failed, or the nodes without a podCIDR
    in the cluster CIDR (``pod_cidr_problems``, one error naming them all); an answer that does not fit
    is a RemoteAnswerError."""
    rc, lines = node.queries.get("pod_cidrs", (1, []))
    if rc != 0:
        return [kubectl.failed(node, "pod_cidrs", s.kubeconfig, PodCidrError)]
    try:
        problems = pod_cidr_problems(s, lines, host_name)
    except answers.RemoteAnswerError as refused:
        return [error(str(refused), answers.RemoteAnswerError, text=str(refused))]
    return [error("", PodCidrError, text="; ".join(problems))] if problems else []


def not_ready_pods_command(s: Settings) -> str:
    """Prints "<pod>|<node>|<ready>|<restarts>|<waiting>|<deleting>" for every flannel pod (ready: the
    kube-flannel container's; waiting: its state.waiting.reason, e.g. ContainerCreating or CrashLoopBackOff;
    deleting: the pod's metadata.deletionTimestamp; a field kubectl has no value for is empty)."""
    return (f"{s.kubectl} -n {NAMESPACE} get pods -l {POD_SELECTOR} -o jsonpath='{{range .items[*]}}"
            "{.metadata.name}{\"|\"}{.spec.nodeName}{\"|\"}{.status.containerStatuses[0].ready}{\"|\"}"
            "{.status.containerStatuses[0].restartCount}{\"|\"}{.status.containerStatuses[0].state.waiting.reason}"
            "{\"|\"}{.metadata.deletionTimestamp}{\"\\n\"}{end}'")


@dataclass(frozen=True)
class NotReadyPod:
    """A flannel pod that is not Ready, from ``not_ready_pods_command``'s answer."""
    name: str
    node: str  # "(not scheduled)" when the pod has no node yet
    restarted: bool  # its kube-flannel container restarted: a crashed container's logs are there (--previous)
    waiting: str  # the container's state.waiting.reason, "" when it is not waiting
    deleting: bool  # the pod is being deleted (an old pod the rollout replaces)


def not_ready_pods(lines: list[str]) -> list[NotReadyPod]:
    """Every pod in ``not_ready_pods_command``'s answer that is not Ready."""
    found = []
    for line in lines:
        pod, node_name, ready, restarts, waiting, deleting = (line.strip().split("|") + [""] * 5)[:6]
        if pod and ready != "true":
            found.append(NotReadyPod(pod, node_name or "(not scheduled)", restarts not in ("", "0"), waiting,
                                     bool(deleting)))
    return found


def pod_logs_commands(s: Settings, pod: NotReadyPod) -> list[tuple[str, str]]:
    """
    (what, command) for the kube-flannel container logs worth showing of a pod that is not Ready, each its last
    LOG_LINES lines: the crashed container's (``--previous``) when the container restarted, and always the
    current one's -- kubelet serves a container that exited and waits to restart (CrashLoopBackOff) as the
    current one, so before the first restart that is where flanneld's last words are (upstream:
    kubelet's GetContainerLogs, ``kubectl logs --previous``).
    """
    base = f"{s.kubectl} -n {NAMESPACE} logs {shell.word(pod.name)} -c {CONTAINER} --tail={LOG_LINES}"
    return ([("crashed container's", f"{base} --previous")] if pod.restarted else []) + [("container's", base)]


def not_ready_pod_report(pod: NotReadyPod, logs: list[tuple[str, list[str]]]) -> str:
    """What RolloutError says of one pod that is not Ready: its node, its container's state, and the log lines
    (``logs``: (what, stdout lines) per ``pod_logs_commands``; each bounded to LOG_LINES; the current container's
    lines are left out when they repeat the crashed one's)."""
    state = ", ".join(filter(None, ["being deleted" if pod.deleting else "",
                                    "it restarted" if pod.restarted else "",
                                    f"waiting: {pod.waiting}" if pod.waiting else ""]))
    parts, shown = [], []
    for what, lines in logs:
        lines = [line for line in lines if line.strip()][-LOG_LINES:]
        if lines and lines != shown:
            parts.append(f"its {what} last log lines: {' | '.join(lines)}")
            shown = lines
    return (f"flannel pod {pod.name} on node {pod.node} is not Ready ("
            + (f"{state}; " if state else "") + ("; ".join(parts) or "no log lines") + ")")


def wait_for_rollout(state, host, connector_arguments, s: Settings) -> bool:
    """
    `kubectl rollout status` of the DaemonSet, bounded by flannel_rollout_timeout: it ends when every
    node runs the new pod template and every pod is available, which with the readiness probe
    (daemonset_health) means flanneld answers /readyz. On failure RolloutError names each flannel pod
    that is not Ready, its node, its container's state, and its last LOG_LINES log lines (those of the
    crashed container when it restarted, and the current container's; see ``pod_logs_commands``).
    """
    ok, output = host.run_shell_command(
        f"{s.kubectl} -n {NAMESPACE} rollout status ds/{DAEMONSET} --timeout={s.flannel_rollout_timeout}s",
        **connector_arguments)
    if ok:
        return True
    said = " ".join(output.stderr_lines or output.stdout_lines)[-300:]
    _, pods = host.run_shell_command(not_ready_pods_command(s), **connector_arguments)
    problems = []
    for pod in not_ready_pods(pods.stdout_lines):
        logs = []
        for what, command in pod_logs_commands(s, pod):
            fetched, answer = host.run_shell_command(command, **connector_arguments)
            logs.append((what, answer.stdout_lines if fetched else []))
        problems.append(not_ready_pod_report(pod, logs))
    raise RolloutError(f"kube-flannel did not roll out within {s.flannel_rollout_timeout}s (flannel_rollout_timeout)"
                       f": {said}; " + ("; ".join(problems) or "no flannel pod is reported not Ready"))


def pod_cidrs_checked(s: Settings, node: NodeState, changed: bool, host_name: str = "") -> None:
    """
    Every node has a podCIDR inside the cluster CIDR. Without a change in this run the
    probe's answer decides at once (``pod_cidr_findings``: a problem stops the run while planning); after a
    change (node IPAM flags, a rollout) the check waits, bounded by flannel_rollout_timeout.
    """
    if not changed:
        refuse(pod_cidr_findings(s, node, host_name))
    ops.python_step(name="flannel: every node has a podCIDR in the cluster CIDR", function=wait_for_pod_cidrs,
                    args=(s,), reason="waiting for every node's podCIDR after this run's changes" if changed else None)


def token_renewal_reason(node: NodeState, now: float | None = None) -> str | None:
    """Why this node's flanneld token must be (re)written now, or None while it is in place, root-only
    and has more than TOKEN_RENEWAL left."""
    missing = [path for path in (KUBECONFIG_PATH, TOKEN_PATH) if path not in node.hashes]
    if missing:
        return f"{' and '.join(missing)} missing"
    loose = [path for path in (KUBECONFIG_PATH, TOKEN_PATH) if node.modes.get(path) != "600"]
    if loose:
        return f"{', '.join(loose)} not mode 0600"
    try:
        expires = int(node.contents.get(TOKEN_EXPIRY_PATH, b"").decode().strip())
    except ValueError:
        return f"{TOKEN_EXPIRY_PATH} missing or unreadable"
    left = expires - (time.time() if now is None else now)
    if left < TOKEN_RENEWAL:
        return (f"the token expires {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(expires))}: renewing "
                f"(less than {TOKEN_RENEWAL // 86400} days left)")
    return None


def rbac_findings(s: Settings, node: NodeState) -> list[Finding]:
    """The first control-plane host could not ask kubectl for flanneld's ServiceAccount, ClusterRole and
    binding (an error)."""
    rc, _ = node.queries.get(RBAC_QUERY, (1, []))
    return [kubectl.failed(node, RBAC_QUERY, s.kubeconfig, PodCidrError)] if rc != 0 else []


def rbac_applied(s: Settings, node: NodeState) -> None:
    """On the first control-plane host: flanneld's ServiceAccount, ClusterRole and binding, applied
    when podnet's copy changed or any of them is missing from the cluster."""
    rbac = text_file(RBAC_PATH, render_rbac(s))
    refuse(rbac_findings(s, node))
    _, lines = node.queries.get(RBAC_QUERY, (1, []))
    missing = [name for name in RBAC_OBJECTS if name not in {line.strip() for line in lines}]
    ops.files_installed(name="flannel: flanneld's ServiceAccount and ClusterRole manifest", files=[rbac],
                        current=node)
    changed = rbac.differs(node.hashes.get(RBAC_PATH))
    ops.shell_when(name="flannel: flanneld's ServiceAccount and ClusterRole applied",
                   commands=[f"{s.kubectl} apply -f {RBAC_PATH}"],
                   reason=(f"missing: {', '.join(missing)}" if missing else "manifest changed")
                   if missing or changed else None)


_cluster_access: dict[str, tuple[str, str]] = {}
_cluster_access_lock = threading.Lock()


def _api_server_of(state, s: Settings, control_plane_name: str) -> tuple[str, str]:
    """(API server URL, its CA bundle as base64) from the first control-plane host's kubeconfig, once per run."""
    with _cluster_access_lock:
        if control_plane_name not in _cluster_access:
            ok, stdout, stderr = secret_files.run_quietly(
                state, control_plane_name,
                f"{s.kubectl} config view --minify --raw -o jsonpath='{{.clusters[0].cluster.server}}{{\"\\n\"}}"
                "{.clusters[0].cluster.certificate-authority-data}'")
            lines = [line.strip() for line in stdout if line.strip()]
            if not ok or len(lines) != 2 or not lines[0].startswith("https://"):
                raise FlannelTokenError(f"{control_plane_name}: the API server and CA of kubeconfig {s.kubeconfig} "
                                        f"could not be read ({ops.said(stderr) or 'an unexpected answer'}); "
                                        "flanneld's kubeconfig needs both (certificate-authority-data)")
            _cluster_access[control_plane_name] = (lines[0], lines[1])
        return _cluster_access[control_plane_name]


def token_expiry(token: str) -> int:
    """The exp claim of a ServiceAccount token (a JWT); FlannelTokenError if it has none."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return int(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError, binascii.Error):
        raise FlannelTokenError("the token kubectl created carries no expiry (exp)") from None


def kubeconfig_for(server: str, ca_data: str) -> str:
    """flanneld's kubeconfig: the cluster's API server and CA, the user's token read from TOKEN_PATH."""
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "kubernetes", "cluster": {"server": server, "certificate-authority-data": ca_data}}],
        "users": [{"name": SERVICE_ACCOUNT, "user": {"tokenFile": TOKEN_PATH}}],
        "contexts": [{"name": SERVICE_ACCOUNT, "context": {"cluster": "kubernetes", "user": SERVICE_ACCOUNT}}],
        "current-context": SERVICE_ACCOUNT}, sort_keys=False)


def install_token(state, host, connector_arguments: dict, s: Settings, control_plane_name: str) -> bool:
    """
    At execution time: a token of kube-flannel/flannel for this node from the first control-plane host
    (`kubectl create token`, TOKEN_DURATION; its stdout is never printed), written with the kubeconfig
    naming it as root-only files (``put_secret_file``), and its expiry for the next probe.
    """
    server, ca_data = _api_server_of(state, s, control_plane_name)
    ok, stdout, stderr = secret_files.run_quietly(
        state, control_plane_name,
        f"{s.kubectl} -n {NAMESPACE} create token {SERVICE_ACCOUNT} --duration={TOKEN_DURATION}s")
    token = stdout[-1].strip() if ok and stdout else ""
    if not JWT_RE.match(token):
        raise FlannelTokenError(f"{control_plane_name}: `kubectl create token {SERVICE_ACCOUNT}` failed: "
                                f"{ops.said(stderr) or 'an unexpected answer'}")
    expires = token_expiry(token)
    try:
        secret_files.put_secret_file(host, connector_arguments, TOKEN_PATH, token + "\n")
        secret_files.put_secret_file(host, connector_arguments, KUBECONFIG_PATH, kubeconfig_for(server, ca_data))
        secret_files.put_secret_file(host, connector_arguments, TOKEN_EXPIRY_PATH, f"{expires}\n")
    except RuntimeError as error:
        raise FlannelTokenError(str(error)) from None
    # the node's record of what podnet wrote, so that a reset removes these files and nothing else
    recorded, _ = host.run_shell_command(owned.record_script(list(CREDENTIAL_FILES)), **connector_arguments)
    if not recorded:
        raise FlannelTokenError(f"{host.name}: cannot record {', '.join(CREDENTIAL_FILES)} in {owned.LEDGER}")
    return True


def apply_systemd(s: Settings, node: NodeState, flanneld_binary, check_pod_cidrs: bool = False,
                  ipam_changed: bool = False, first_control_plane: str | None = None,
                  is_first_control_plane: bool = False, host_name: str = "", stopped: bool = False) -> None:
    """flanneld's binary, net-conf.json and unit on this node; its ServiceAccount (from the first
    control-plane host) and a token of it in its own kubeconfig; running (started again when this run
    ``stopped`` it: ``direct_routes_removed``). On the first control-plane host (``check_pod_cidrs``)
    also every node's podCIDR."""
    files, unit = systemd_files(s, flanneld_binary, has_control_plane=first_control_plane is not None)
    changed = ops.files_needing_change([*files, unit], node)
    restarts = UNIT if changed else None
    ops.files_installed(name="flannel: flanneld binary and net-conf.json", files=files, current=node, restarts=restarts)
    ops.files_installed(name="flannel: flanneld unit", files=[unit], current=node, restarts=restarts)
    # pyinfra runs an operation on every host before the next one (the token step comes after the
    # ServiceAccount on the first control-plane host), so the ServiceAccount exists before any token
    if is_first_control_plane:
        rbac_applied(s, node)
    if first_control_plane is not None and not s.is_control_plane and node.features.get(STALE_KUBECONFIG):
        logger.warning(f"podnet: {host_name}: {s.kubeconfig} (the kubeconfig setting) is on this worker; flanneld "
                       f"no longer uses it (it has {KUBECONFIG_PATH}, flannel's ServiceAccount): if it holds admin "
                       "credentials, remove it, podnet does not delete what it did not install")
    reason = token_renewal_reason(node) if first_control_plane is not None else None
    ops.python_step(name="flannel: flanneld's ServiceAccount token and kubeconfig (mode 0600)",
                    function=install_token, args=(s, first_control_plane), reason=reason)
    ops.service_running(name="flannel: flanneld running", unit=UNIT, current=node, restart=bool(changed) or stopped,
                        daemon_reload=unit in changed)
    if check_pod_cidrs:
        pod_cidrs_checked(s, node, changed=ipam_changed, host_name=host_name)


# --- a backend change away from host-gw: the IPv6 routes it left --------------------------------

DIRECT_ROUTES_QUERY = "flannel_direct_routes_v6"
DIRECT_ROUTING_BACKENDS = ("host-gw",)  # the backends of podnet's settings that route through the node's interface


def clears_direct_routes(s: Settings) -> bool:
    """The configured backend routes other nodes' IPv6 podCIDRs through a device of its own, so a gateway route
    host-gw left through the node's interface is in its way (flanneld is podnet's, IPv6 pods).

    flanneld v0.28.9's host-gw adds `<podCIDR> via <node address> dev <interface>` for every other node
    (pkg/backend/route_network.go) and nothing removes it when the backend changes; vxlan then asks the kernel to
    replace it with an onlink route through flannel-v6.<VNI> (pkg/backend/vxlan/vxlan_network.go), which IPv6
    refuses while the old route is there (net/ipv6/route.c ip6_validate_gw: "Nexthop has invalid gateway or device
    mismatch"): flanneld logs `invalid argument`, retries about 40 s per node and gives that node up. IPv4's
    replace succeeds (net/ipv4/fib_trie.c), so IPv4 needs nothing."""
    return removes_flannel(s) and 6 in s.pod_networks and s.flannel_backend not in DIRECT_ROUTING_BACKENDS


def direct_routes_probe_request(s: Settings) -> ProbeRequest:
    """Every node, where ``clears_direct_routes``: its IPv6 routes with a gateway."""
    return ProbeRequest(queries={DIRECT_ROUTES_QUERY: routes_command((6,))} if clears_direct_routes(s) else {})


def direct_routes_left(s: Settings, node: NodeState, host_name: str = "") -> list[tuple[int, str, str, str]]:
    """host-gw's IPv6 routes on this node that the configured backend needs gone (``clears_direct_routes``):
    (6, podCIDR, gateway, device) each; a line that does not fit is a warning and left alone."""
    return _gateway_routes(s, node, DIRECT_ROUTES_QUERY, host_name) if clears_direct_routes(s) else []


def route_deletion(route: tuple[int, str, str, str]) -> str:
    """The command deleting one (family, destination, gateway, device) route."""
    family, destination, gateway, device = route
    return f"ip -{family} route delete {destination} via {gateway} dev {shell.word(device)}"


def flanneld_stopped_command(host_name: str) -> str:
    """Fails naming the node while a flanneld process runs on it (read from /proc by the shell alone)."""
    message = shell.word(f"podnet: {host_name}: flanneld still runs here, so host-gw's IPv6 routes cannot go (it "
                         f"would add them back, or be left without its own): delete the DaemonSet (kubectl -n "
                         f"{NAMESPACE} delete ds {DAEMONSET}) and run the deploy again")
    return (f"for c in /proc/[0-9]*/comm; do read -r n < \"$c\" 2>/dev/null || continue; "
            f"if [ \"$n\" = flanneld ]; then echo {message} >&2; exit 1; fi; done")


def direct_routes_removed(ctx: HostContext) -> None:
    """host-gw's IPv6 routes (``direct_routes_left``) deleted on every node, with no flanneld running there: the
    DaemonSet deleted first (from the first control-plane host, in the foreground, when that host has such routes;
    ``apply_daemonset`` then applies it again), or the node's flanneld unit stopped (started again by the rollout).
    pyinfra runs an operation on every host before the next, so the DaemonSet is gone before any node deletes.
    Sets ``ctx.flanneld_stopped`` for the rollout that follows."""
    s, node = ctx.settings, ctx.node
    routes = direct_routes_left(s, node, ctx.host_name)
    ctx.flanneld_stopped = bool(routes)
    if s.flannel_rollout == "daemonset" and ctx.is_first_control_plane:
        ops.shell_when(name="flannel: DaemonSet deleted before host-gw's IPv6 routes go (its flanneld adds them back)",
                       commands=[f"{s.kubectl} -n {NAMESPACE} delete ds {DAEMONSET} --ignore-not-found "
                                 f"--cascade=foreground --wait=true --timeout={s.flannel_rollout_timeout}s"],
                       reason="host-gw's IPv6 routes are in the way of the new backend" if routes else None)
    stop = (flanneld_stopped_command(ctx.host_name) if s.flannel_rollout == "daemonset"
            else f"systemctl stop {UNIT}")
    ops.shell_when(name="flannel: host-gw's IPv6 routes to other nodes' podCIDRs deleted, flanneld stopped",
                   commands=[stop, *(route_deletion(route) for route in routes)],
                   reason=("deleting " + ", ".join(f"{dst} via {gw} dev {dev}" for _, dst, gw, dev in routes)
                           + f" (left by host-gw; in the way of {s.flannel_backend})") if routes else None)


# --- the steps ----------------------------------------------------------------------------


def _rolls_out_here(ctx: HostContext) -> bool:
    """The DaemonSet from the first control-plane host; the systemd unit on every node."""
    return ((ctx.settings.flannel_rollout == "daemonset" and ctx.is_first_control_plane)
            or ctx.settings.flannel_rollout == "systemd")


def _roll_out(ctx: HostContext) -> None:
    s = ctx.settings
    if s.flannel_rollout == "daemonset":
        apply_daemonset(s, ctx.node, ctx.ipam_changed, cluster_created=ctx.cluster_created, host_name=ctx.host_name,
                        deleted=ctx.flanneld_stopped)
        return
    apply_systemd(s, ctx.node, ctx.file("flanneld"), check_pod_cidrs=checks_pod_cidrs(s, ctx.is_first_control_plane),
                  ipam_changed=ctx.ipam_changed, first_control_plane=ctx.first_control_plane,
                  is_first_control_plane=ctx.is_first_control_plane, host_name=ctx.host_name,
                  stopped=ctx.flanneld_stopped)
    if ctx.first_control_plane is None:
        say_pod_cidrs_unchecked(s)


def rollout_findings(ctx: HostContext) -> list[Finding]:
    """The rollout's findings on this host, as a run that changes nothing would see them: kubectl failing on the
    first control-plane host, nodes without a podCIDR in the cluster CIDR, a podCIDR check nobody can make,
    flanneld's ServiceAccount unreadable there (systemd rollout)."""
    s = ctx.settings
    found = []
    if s.flannel_rollout == "daemonset" and ctx.is_first_control_plane:
        found += daemonset_findings(s, ctx.node, ctx.cluster_created)
    if checks_pod_cidrs(s, ctx.is_first_control_plane) and not ctx.cluster_created:
        found += pod_cidr_findings(s, ctx.node, ctx.host_name)
    if s.flannel_rollout == "systemd" and ctx.is_first_control_plane and not ctx.cluster_created:
        found += rbac_findings(s, ctx.node)
    return found + pod_cidrs_unchecked(s, ctx.first_control_plane)


POD_MTU = Step(
    "flannel: flannel_mtu (when set) fits the interface flanneld uses, checked on every node",
    probe=lambda ctx: mtu_probe_request(ctx.settings),
    findings=lambda ctx: pod_mtu_findings(ctx.settings, ctx.node, ctx.host_name),
    check=lambda ctx: pod_mtu_fits(ctx.settings, ctx.node, ctx.host_name),
    apply=lambda ctx: None,
)
DIRECT_ROUTES = Step(
    "flannel: host-gw's IPv6 routes gone where another backend is configured (flanneld stopped first: the DaemonSet "
    "deleted, or its unit stopped, to be rolled out again)",
    applies=lambda ctx: clears_direct_routes(ctx.settings),
    probe=lambda ctx: direct_routes_probe_request(ctx.settings),
    apply=direct_routes_removed,
)
ROLLOUT = Step(
    "flannel: flanneld rolled out (the DaemonSet from the first control-plane host, waited for until every flannel "
    "pod is Ready; or its unit on every node, with its own ServiceAccount token), then every node's podCIDR checked",
    applies=_rolls_out_here,
    probe=lambda ctx: rollout_probe_request(ctx.settings, ctx.is_first_control_plane),
    findings=rollout_findings,
    artifacts=lambda ctx: ("flanneld",) if ctx.settings.flannel_rollout == "systemd" else (),
    apply=_roll_out,
)


# --- reset: flanneld, and what it and podnet's conflist made on the node ---------------------

CHAINS = ("FLANNEL-POSTRTG", "FLANNEL-FWD")  # flannel's pkg/trafficmngr/iptables
IPTABLES = ("iptables-nft", "iptables-legacy", "ip6tables-nft", "ip6tables-legacy")
NFT_TABLES = ("flannel-ipv4", "flannel-ipv6")  # flannel's pkg/trafficmngr/nftables (EnableNFTables)
SYS_NET = "/sys/class/net"
CHAINS_QUERY, NFT_QUERY, OBJECTS_QUERY = "flannel_chains", "flannel_nft", "flannel_objects"
ROUTES_QUERY = "flannel_routes"
# Prints "<4|6> <destination> <gateway> <device>" for every route with a gateway, in both families
# (`ip -o route` prints "<dst> via <gw> dev <dev> ..."). flanneld's host-gw backend, and vxlan with
# DirectRouting, route each other node's podCIDR through the node's own interface this way
# (pkg/backend/hostgw, pkg/backend/vxlan/vxlan_network.go directRoute; v6 twins for IPv6): such
# a route outlives flanneld and its devices.


def routes_command(families: tuple[int, ...] = (4, 6)) -> str:
    """Prints "<4|6> <destination> <gateway> <device>" for every route with a gateway of these families."""
    return (f"for f in {' '.join(str(f) for f in families)}; do ip -o -$f route show | awk -v f=$f "
            "'$1 != \"default\" && $2 == \"via\" && $4 == \"dev\" {print f, $1, $3, $5}'; done")


ROUTES_COMMAND = routes_command()


def removes_flannel(s: Settings) -> bool:
    """flanneld is podnet's (DaemonSet or systemd unit), not deployed by something else."""
    return s.flannel_rollout != "external"


def chains_command() -> str:
    """Prints "<iptables variant> <table> <chain>" for every flannel chain, in each variant present."""
    names = "|".join(CHAINS)
    return (f"for t in {' '.join(IPTABLES)}; do command -v $t-save >/dev/null 2>&1 || continue; "
            f"$t-save 2>/dev/null | awk -v t=$t '/^\\*/ {{table = substr($1, 2)}} "
            f"/^:({names}) / {{print t, table, substr($1, 2)}}'; done; true")


IPTABLES_TABLES = ("filter", "nat", "mangle", "raw", "security")  # iptables(8) -t
NFT_FAMILIES = ("ip", "ip6", "inet", "arp", "bridge", "netdev")  # nft(8) ADDRESS FAMILIES


def _chain_line(line: str) -> tuple[str, str, str]:
    variant, table, chain = answers.fields(line, 3, " ")
    if variant not in IPTABLES or table not in IPTABLES_TABLES or chain not in CHAINS:
        raise answers.BadField(f"not '<{'|'.join(IPTABLES)}> <table> <{'|'.join(CHAINS)}>'")
    return variant, table, chain


def parse_chains(lines: list[str], host_name: str = "") -> dict[tuple[str, str], list[str]]:
    """(variant, table) -> flannel chains there, from chains_command's output; a line that does not fit
    is reported as a warning and nothing is deleted for it."""
    found: dict[tuple[str, str], list[str]] = {}
    for variant, table, chain in answers.records(host_name, f"flannel's iptables chains ({CHAINS_QUERY})", lines,
                                                 _chain_line, strict=False):
        found.setdefault((variant, table), []).append(chain)
    return found


def _nft_line(line: str) -> tuple[str, str]:
    family, name = answers.fields(line, 2, " ")
    if family not in NFT_FAMILIES or name not in NFT_TABLES:
        raise answers.BadField(f"not '<family> <{'|'.join(NFT_TABLES)}>'")
    return family, name


def chains_removal(variant: str, table: str, chains: list[str]) -> str:
    """One atomic iptables-restore --noflush per table: delete the rules that jump to the chains
    (as iptables-save prints them, comments quoted), then flush and delete the chains."""
    names = "|".join(chains)
    lines = [f"echo '*{table}'",
             f"{variant}-save -t {table} | grep -E -- ' -j ({names})( |$)' | grep -vE -- '^-A ({names}) ' "
             "| sed 's/^-A /-D /'",
             *(f"echo '-F {c}'" for c in chains), *(f"echo '-X {c}'" for c in chains), "echo COMMIT"]
    return "{ " + "; ".join(lines) + "; } | " + f"{variant}-restore --noflush"


_NFT_MATCH = " || ".join(f'$3 == "{t}"' for t in NFT_TABLES)
NFT_COMMAND = ("command -v nft >/dev/null 2>&1 || exit 0; nft list tables 2>/dev/null | "
               f"awk '$1 == \"table\" && ({_NFT_MATCH}) {{print $2, $3}}'")


def flannel_objects(s: Settings) -> list[str]:
    """The objects podnet's kube-flannel manifest creates, as kubectl's type/name, in its order."""
    return [f"{doc['kind'].lower()}/{doc['metadata']['name']}" for doc in yaml.safe_load_all(render_manifest(s)) if doc]


def objects_command(s: Settings) -> str:
    return f"{s.kubectl} -n {NAMESPACE} get {' '.join(flannel_objects(s))} --ignore-not-found -o name"


def _object_line(line: str) -> str:
    """kubectl's ``-o name``: <resource>[.<group>]/<name>, as type/name without the group."""
    kind, slash, name = line.partition("/")
    resource, _, group = kind.partition(".")
    if not slash or not re.fullmatch(r"[a-z][a-z0-9]*", resource) or (group and not re.fullmatch(r"[a-z0-9.-]+", group)):
        raise answers.BadField("not kubectl's '<resource>[.<group>]/<name>'")
    return f"{resource}/{answers.object_name(name)}"


def objects_present(s: Settings, node: NodeState, host_name: str = "") -> list[str]:
    """podnet's flannel objects that exist, in the manifest's order (kubectl prints type.group/name)."""
    rc, lines = node.queries.get(OBJECTS_QUERY, (0, []))
    if rc != 0 and s.flannel_rollout != "daemonset":  # only a leftover from an earlier rollout could be there
        say([kubectl.failed_so(node, OBJECTS_QUERY,
                               "a kube-flannel DaemonSet left from an earlier rollout, if any, is not deleted")])
        return []
    if rc != 0:
        refuse([kubectl.failed(node, OBJECTS_QUERY, s.kubeconfig, ResetError)])
    found = set(answers.records(host_name, f"kubectl get ({OBJECTS_QUERY})", lines, _object_line, strict=False))
    return [o for o in flannel_objects(s) if o in found]


def reset_probe_request(s: Settings, first_control_plane: bool) -> ProbeRequest:
    """What the reset of flanneld decides from: its declared files and the node's record of what podnet
    installed and kept, its unit, and (first control-plane host) podnet's objects in the cluster."""
    request = owned.probe_request([ownership(s)]).merge(ProbeRequest(units=[UNIT]))
    if first_control_plane:
        request.queries[OBJECTS_QUERY] = objects_command(s)
    return request


def daemonset_deleted(s: Settings, node: NodeState, host_name: str = "") -> None:
    """From the first control-plane host: the DaemonSet deleted in the foreground (waits until its
    pods are gone), then the other objects of podnet's manifest, then podnet's copy of it."""
    present = objects_present(s, node, host_name)
    daemonset = f"daemonset/{DAEMONSET}"
    wait = f"--wait=true --timeout={s.flannel_rollout_timeout}s"
    commands = []
    if daemonset in present:
        commands.append(f"{s.kubectl} -n {NAMESPACE} delete {daemonset} --cascade=foreground {wait}")
    others = [o for o in reversed(present) if o != daemonset]
    if others:
        commands.append(f"{s.kubectl} -n {NAMESPACE} delete {' '.join(others)} --ignore-not-found {wait}")
    ops.shell_when(name="reset: kube-flannel DaemonSet and its objects deleted", commands=commands,
                   reason=f"deleting {', '.join(present)}" if present else None)
    manifest = text_file(MANIFEST_PATH, render_manifest(s))
    ops.owned_files_removed("reset: podnet's kube-flannel manifest removed",
                            owned.removal(node, declared_digests([manifest])), "the manifest")


def flanneld_unit_removed(s: Settings, node: NodeState, flanneld_binary) -> None:
    """flanneld's systemd unit stopped and disabled when it is podnet's; its unit file, binary and
    net-conf.json removed where they are what podnet installed (``flanneld_binary``: this release's,
    where the systemd rollout fetched it)."""
    files, unit = systemd_files(s, flanneld_binary) if flanneld_binary else ([text_file(NET_CONF_PATH,
                                                                                         net_conf_json(s))], None)
    declared = {UNIT_PATH: unit.sha256 if unit else None, FLANNELD_PATH: None, **declared_digests(files),
                RBAC_PATH: text_file(RBAC_PATH, render_rbac(s)).sha256,
                **dict.fromkeys(CREDENTIAL_FILES)}  # the credentials: what the node's record says podnet wrote
    removal = owned.removal(node, {p: declared[p] for p in (UNIT_PATH, FLANNELD_PATH, NET_CONF_PATH, RBAC_PATH,
                                                            *CREDENTIAL_FILES)})
    ops.foreign_left(removal)
    running = node.unit_active(UNIT) or node.unit_enabled(UNIT)
    rmdir = (f"rmdir --ignore-fail-on-non-empty {posixpath.dirname(NET_CONF_PATH)}",)
    commands = unit_removal_commands(UNIT, UNIT_PATH, removal, running, after_removal=rmdir)
    reason = ", ".join([*([f"stopping {UNIT}"] if running and UNIT_PATH in removal.removed else []),
                        *(f"removing {f}" for f in removal.removed),
                        *(f"putting back the original {p}" for _, p in removal.restored)])
    ops.shell_when(name="reset: flanneld stopped, disabled and removed", commands=commands, reason=reason or None)


def _flannel_removed(ctx: HostContext) -> None:
    if ctx.is_first_control_plane:
        daemonset_deleted(ctx.settings, ctx.node, ctx.host_name)
    flanneld_unit_removed(ctx.settings, ctx.node,
                          ctx.file("flanneld") if ctx.settings.flannel_rollout == "systemd" else None)


RESET = Step(
    "reset: flanneld",
    applies=lambda ctx: removes_flannel(ctx.settings),
    probe=lambda ctx: reset_probe_request(ctx.settings, ctx.is_first_control_plane),
    artifacts=lambda ctx: ("flanneld",) if ctx.settings.flannel_rollout == "systemd" else (),
    apply=_flannel_removed,
)


def network_probe_request(s: Settings) -> ProbeRequest:
    return ProbeRequest(listings=[SYS_NET],
                        features={path: f"[ -d {shlex.quote(path)} ]" for path in network_dirs(s)},
                        queries={"cni0": pod_network.CNI0_COMMAND, CHAINS_QUERY: chains_command(),
                                 NFT_QUERY: NFT_COMMAND, ROUTES_QUERY: ROUTES_COMMAND})


def _route_line(line: str) -> tuple[int, str, str, str]:
    """ROUTES_COMMAND's line: the family, a destination network, a gateway address of that family, a device."""
    family, destination, gateway, device = answers.fields(line, 4, " ")
    if family not in ("4", "6"):
        raise answers.BadField(f"{answers.shown(family)} is not 4 or 6")
    network = answers.network(destination)
    try:
        address = ipaddress.ip_address(gateway)
    except ValueError:
        raise answers.BadField(f"{answers.shown(gateway)} is not an address") from None
    if network.version != int(family) or address.version != int(family):
        raise answers.BadField(f"not an IPv{family} route")
    return int(family), str(network), str(address), answers.interface_name(device)


def flannel_routes(s: Settings, node: NodeState, host_name: str = "") -> list[tuple[int, str, str, str]]:
    """The routes flanneld made through the node's own interface, in both families: a gateway route
    to a podCIDR of the pod network (inside the cluster CIDR of its family, with that family's node
    mask), not through cni0 or flanneld's own devices (those go with the device). A line that does
    not fit is reported as a warning and left alone."""
    return _gateway_routes(s, node, ROUTES_QUERY, host_name)


def _gateway_routes(s: Settings, node: NodeState, query: str, host_name: str) -> list[tuple[int, str, str, str]]:
    """``query``'s answer (``routes_command``): its routes to a podCIDR of the pod network not through cni0
    or flanneld's own devices; [] where flanneld is not podnet's or the query failed."""
    rc, lines = node.queries.get(query, (1, []))
    if rc != 0 or not removes_flannel(s):
        return []
    own = {pod_network.BRIDGE, *interfaces(s)}
    return [route for route in answers.records(host_name, f"routes with a gateway ({query})", lines,
                                               _route_line, strict=False)
            if route[3] not in own and pod_network.fits(s, route[1])]


def network_dirs(s: Settings) -> list[str]:
    """The runtime directories a reset removes: flanneld's (when podnet's) and host-local's records
    of podnet's conflist network."""
    return [*(ownership(s).runtime_dirs if removes_flannel(s) else ()), *cni.ownership(s).runtime_dirs]


def bridge_is_podnets(s: Settings, node: NodeState, host_name: str = "") -> bool:
    """cni0 is the bridge of podnet's conflist: each of its global IPv4 and IPv6 addresses lies in the
    cluster CIDR of its family (another CNI's bridge plugin may use the same default name)."""
    state = pod_network.cni0_state(node, host_name)
    if not state:
        return False
    networks = s.pod_networks
    addresses = [ipaddress.ip_interface(a) for a in state[0]]
    return bool(addresses) and all(a.version in networks and a.ip in networks[a.version][0] for a in addresses)


def network_state_removed(s: Settings, node: NodeState, host_name: str = "") -> None:
    """flannel's interfaces, iptables chains, nftables tables and runtime directories (when flanneld is
    podnet's), cni0 when it is the bridge of podnet's network, host-local's records of that network."""
    candidates = [*(cni.ownership(s).interfaces if bridge_is_podnets(s, node, host_name) else ()),
                  *(ownership(s).interfaces if removes_flannel(s) else ())]
    links = [name for name in candidates if name in node.listings.get(SYS_NET, [])]
    ops.shell_when(name="reset: flannel's interfaces deleted", commands=[f"ip link delete {n}" for n in links],
                   reason=f"deleting {', '.join(links)}" if links else None)
    routes = flannel_routes(s, node, host_name)
    ops.shell_when(name="reset: flannel's routes to other nodes' podCIDRs deleted",
                   commands=[route_deletion(route) for route in routes],
                   reason="deleting the routes to " + ", ".join(f"{dst} via {gw}" for _, dst, gw, _ in routes)
                   if routes else None)
    rc, lines = node.queries.get(CHAINS_QUERY, (1, []))
    chains = parse_chains(lines, host_name) if rc == 0 and removes_flannel(s) else {}
    ops.shell_when(name="reset: flannel's iptables chains deleted",
                   commands=[chains_removal(v, t, c) for (v, t), c in sorted(chains.items())],
                   reason="deleting " + ", ".join(f"{v} {t} {' '.join(c)}" for (v, t), c in sorted(chains.items()))
                   if chains else None)
    rc, lines = node.queries.get(NFT_QUERY, (1, []))
    tables = answers.records(host_name, f"flannel's nftables tables ({NFT_QUERY})", lines, _nft_line,
                             strict=False) if rc == 0 and removes_flannel(s) else []
    ops.shell_when(name="reset: flannel's nftables tables deleted",
                   commands=[f"nft delete table {family} {name}" for family, name in tables],
                   reason=f"deleting {', '.join(f'{f} {n}' for f, n in tables)}" if tables else None)
    dirs = [path for path in network_dirs(s) if node.features.get(path)]
    ops.shell_when(name="reset: /run/flannel and host-local's records removed",
                   commands=["rm -rf " + " ".join(dirs)], reason=f"removing {', '.join(dirs)}" if dirs else None)


RESET_NETWORK = Step(
    "reset: flannel's interfaces, chains and directories",
    probe=lambda ctx: network_probe_request(ctx.settings),
    apply=lambda ctx: network_state_removed(ctx.settings, ctx.node, ctx.host_name),
)
