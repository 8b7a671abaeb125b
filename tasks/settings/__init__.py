"""
The one settings object.

Every podnet setting is read from pyinfra inventory data exactly once per host,
checked, and turned into a frozen ``Settings``. Tasks and templates read only from
that object, never from ``host.data``. Rules that need the whole inventory (node
count, values that must agree across hosts) run over every host before the first
operation is planned, so bad input stops the run before any host is touched.

Each error names the key, the bad value and what would be valid.

A rule that mirrors a component (kube-controller-manager, kubeadm, flanneld, the CNI plugins,
the Linux kernel, containerd) is exactly that component's rule, and says where upstream
enforces it; podnet never refuses what the component would run with, unless a rule says it is
podnet's own and why an operator wants it.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import shlex
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable

from tasks.settings import kubeadm_parsers as kubeadm_options
from tasks.redact import redact_url
from tasks.errors import PodnetError
from tasks import releases
from tasks.releases import ARCHITECTURES, ARTIFACT_NAMES, config_api, config_generation

# Keys in inventory data that belong to pyinfra (connectors, global arguments),
# not to podnet. Anything else that is not a podnet setting is reported as unknown.
PYINFRA_KEY_PREFIXES = (
    "_", "ssh_", "winrm_", "docker_", "dockerssh_", "chroot_", "local_", "vagrant_",
    "terraform_", "fake_", "podman_",
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

FLANNEL_BACKENDS = ("vxlan", "host-gw", "wireguard")
FLANNEL_ROLLOUTS = ("daemonset", "systemd", "external")
CONTROLLER_MANAGER_RUNTIMES = ("static-pod", "systemd", "external")
# flannel_mtu is the CNI delegate's "mtu", which the bridge plugin sets on each pod's veth pair and on
# cni0. Linux accepts ETH_MIN_MTU (68) to ETH_MAX_MTU (65535) there (include/uapi/linux/if_ether.h;
# veth_setup in drivers/net/veth.c and br_dev_setup in net/bridge/br_device.c set min_mtu/max_mtu, and
# dev_validate_mtu in net/core/dev.c refuses anything outside them).
MTU_RANGE = (68, 65_535)
# Linux switches IPv6 off on an interface with a smaller MTU (IPV6_MIN_MTU, net/ipv6/addrconf.c).
IPV6_MIN_MTU = 1280
# flanneld's vxlan VNI: the kernel takes 0 to 2**24 - 1 (vxlan_validate in drivers/net/vxlan/vxlan_core.c,
# "VXLAN ID must be lower than 16777216"), but flanneld names its device "flannel.<VNI>", on dual stack also
# "flannel-v6.<VNI>" (RegisterNetwork, pkg/backend/vxlan/vxlan.go), and a Linux interface name has at most
# IFNAMSIZ - 1 = 15 characters (dev_valid_name, net/core/dev.c): 7 digits, or 4 on dual stack.
VNI_RANGE = (0, 9_999_999)
DUAL_STACK_MAX_VNI = 9_999
PORT_RANGE = (1, 65_535)
# kube-controller-manager's cidrset keeps one bit per node podCIDR and refuses, for an IPv6 cluster CIDR
# only, a node mask more than 16 bits longer than the cluster prefix (NewCIDRSet and clusterSubnetMaxDiff in
# pkg/controller/nodeipam/ipam/cidrset/cidr_set.go). An IPv4 cluster CIDR has no such limit.
MAX_IPV6_NODE_MASK_DIFF = 16
# kubeadm init's checks of podSubnet and serviceSubnet (cmd/kubeadm/app/constants/constants.go, used by
# ValidateNetworking in cmd/kubeadm/app/apis/kubeadm/validation/validation.go); they apply with cluster_bootstrap.
KUBEADM_POD_SUBNET_NODE_MASK_MAX_DIFF = 16  # PodSubnetNodeMaskMaxDiff, both IP families
KUBEADM_MIN_POD_SUBNET_ADDRESSES = 14  # MinimumAddressesInPodSubnet
KUBEADM_MIN_SERVICE_SUBNET_ADDRESSES = 10  # MinimumAddressesInServiceSubnet
KUBEADM_MAX_SERVICE_SUBNET_HOST_BITS = 20  # MaximumBitsForServiceSubnet
# The node masks kubeadm assumes when --node-cidr-mask-size-ipv4 / -ipv6 are not among kube-controller-manager's
# extra args: kube-controller-manager's defaults (getClusterNodeMask in the same validation.go).
KUBEADM_DEFAULT_NODE_MASK = {4: 24, 6: 64}
# Settings only kubeadm reads (cluster_bootstrap); podnet's own rule: set without it, they would be ignored.
KUBEADM_ONLY = ("etcd_external_endpoints", "kubeadm_ignore_preflight_errors", "kubelet_configuration",
                "kube_proxy_configuration")


class SettingsError(PodnetError, ValueError):
    """Inventory data that podnet cannot use. ``problems`` lists one line per error."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid podnet settings:\n" + "\n".join(f"  - {p}" for p in problems))


# --- value parsers: each returns the parsed value or raises ValueError(what would be valid) ---


def _network(value: Any, version: int) -> Network:
    """
    A CIDR of one IP family. Host bits set (10.244.1.0/16) are podnet's own refusal:
    kube-controller-manager, kubeadm and flanneld all drop them (net.ParseCIDR), so the value
    would silently mean another network than the one written; the message names that network.
    """
    example = "10.244.0.0/16" if version == 4 else "fd00:10:244::/56"
    if not isinstance(value, str) or "/" not in value:
        raise ValueError(f"an IPv{version} CIDR with a prefix length, such as {example}")
    try:
        net = ipaddress.ip_network(value.strip(), strict=True)
    except ValueError:
        try:
            loose = ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            raise ValueError(f"an IPv{version} CIDR such as {example}") from None
        raise ValueError(f"a network address without host bits set, such as {loose}") from None
    if net.version != version:
        raise ValueError(f"an IPv{version} CIDR such as {example}, not an IPv{net.version} one")
    return net


def _ipv4_network(value: Any) -> ipaddress.IPv4Network:
    return _network(value, 4)  # type: ignore[return-value]


def _ipv6_network(value: Any) -> ipaddress.IPv6Network | None:
    return None if value is None else _network(value, 6)  # type: ignore[return-value]


def _integer(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"a whole number from {low} to {high}")
        return value
    return parse


def _optional(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else parse(value)


def _choice(options: Iterable[str]) -> Callable[[Any], str]:
    options = tuple(options)

    def parse(value: Any) -> str:
        if value not in options:
            raise ValueError("one of " + ", ".join(options))
        return value
    return parse


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


VERSION_RE = re.compile(r"^\d+\.\d+\.\d+([-+][0-9A-Za-z.-]+)?$")


def _version(value: Any) -> str:
    if not isinstance(value, str) or not VERSION_RE.match(value):
        raise ValueError("a release version such as 1.7.34 (no leading 'v')")
    return value


# Linux's limits on a path (include/uapi/linux/limits.h): PATH_MAX bytes with the terminating NUL, each
# component at most NAME_MAX bytes (getname and the filesystems' lookups refuse longer: ENAMETOOLONG).
PATH_MAX = 4096
NAME_MAX = 255
# Characters podnet refuses in a path of its own: C0 controls (newline included), DEL, and the quote
# characters and backslash (see _absolute_path).
PATH_REFUSED = re.compile(r"[\x00-\x1f\x7f'\"`\\]")


def _absolute_path(value: Any) -> str:
    """
    A path on a node, as Linux takes it: absolute (the setting names one place whatever the working
    directory), at most PATH_MAX - 1 bytes, each component at most NAME_MAX bytes, no NUL
    (include/uapi/linux/limits.h; fs/namei.c). podnet's own rules on top, each against a silent
    failure: no control characters (a newline or tab would cut the probe's line- and tab-separated
    answer and a unit or config line), no quote characters or backslash (every file format podnet
    writes escapes them, but in a path they are almost always a paste error, as in
    "/opt/cni/bin', '/tmp/evil"), no white space at either end. A trailing "/" is dropped.
    """
    what = "an absolute path such as /opt/cni/bin, without quotes, backslashes or control characters"
    if not isinstance(value, str) or not value.startswith("/") or value != value.strip():
        raise ValueError(what)
    bad = PATH_REFUSED.search(value)
    if bad:
        raise ValueError(f"{what} ({bad.group()!r} at position {bad.start()})")
    if len(value.encode()) >= PATH_MAX or any(len(part.encode()) > NAME_MAX for part in value.split("/")):
        raise ValueError(f"{what}, of at most {PATH_MAX - 1} bytes and {NAME_MAX} bytes per component (Linux's "
                         "PATH_MAX and NAME_MAX)")
    return value.rstrip("/") or "/"


# A unit name as systemd accepts it (unit_name_is_valid in src/basic/unit-name.c: letters, digits and
# ":-_.\\", "@" for a template instance, at most UNIT_NAME_MAX = 255 characters, with its type suffix).
UNIT_NAME_RE = re.compile(r"^[A-Za-z0-9:_.\-]+(@[A-Za-z0-9:_.\-]*)?\.service$")


def _unit_path(value: Any) -> str:
    """A service unit file: an absolute path (_absolute_path) whose file name is a valid systemd service
    name (unit_name_is_valid, src/basic/unit-name.c), which podnet restarts with systemctl."""
    path = _absolute_path(value)
    name = path.rsplit("/", 1)[1]
    if len(name) > 255 or not UNIT_NAME_RE.match(name):
        raise ValueError("the absolute path of a service unit, such as "
                         "/etc/systemd/system/kube-controller-manager.service, whose name systemd accepts (letters, "
                         "digits, ':-_.\\', one '@', ending in .service)")
    return path


def _text(value: Any) -> str:
    """podnet's own: a non-empty name without white space or control characters (an inventory group)."""
    if not isinstance(value, str) or not value.strip() or any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError("a non-empty string without spaces or control characters")
    return value


def _local_path(value: Any) -> str:
    """A path on the operator's machine (read and written by Python only, never by a shell): any
    non-empty path without control characters or white space at either end; ~ is the home directory."""
    if not isinstance(value, str) or not value.strip() or value != value.strip() \
            or any(not c.isprintable() for c in value):
        raise ValueError("a path on this machine, such as ~/.cache/podnet, without control characters")
    return value


# An image reference as containerd's CRI plugin parses it: the grammar of distribution/reference
# (regexp.go: name [":" tag] ["@" digest]; Parse in reference.go: a name of at most 255 characters, and a
# digest that opencontainers/go-digest accepts: sha256, sha384 or sha512 in lower-case hex, algorithm.go).
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_REGISTRY = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[A-Fa-f0-9:]+\])(?::[0-9]+)?"
IMAGE_RE = re.compile(rf"^(?P<name>(?:{_REGISTRY}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
                      r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
                      r"(?:@(?:sha256:[a-f0-9]{64}|sha384:[a-f0-9]{96}|sha512:[a-f0-9]{128}))?$")
IMAGE_NAME_MAX = 255


def _image(value: Any) -> str:
    """An image reference by distribution/reference's grammar (IMAGE_RE), as containerd and the kubelet parse it."""
    match = IMAGE_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None or len(match.group("name")) > IMAGE_NAME_MAX:
        raise ValueError("an image reference such as registry.k8s.io/pause:3.10")
    return value


# A Linux interface name (dev_valid_name, net/core/dev.c): 1 to IFNAMSIZ - 1 = 15 bytes, not "." or "..",
# no "/", ":" or white space (isspace: space, \t \n \v \f \r).
IFNAMSIZ = 16
IFACE_REFUSED = re.compile(r"[/:\s\x00]")


def _iface(value: Any) -> str:
    """
    flanneld's --iface: an address of the node, or an interface name (flanneld tries the value as an
    IP address first, then as a name: LookupExtIface, pkg/ip/iface.go via main.go). A Linux interface
    name is 1 to 15 bytes, not "." or "..", and has no "/", ":" or white space (dev_valid_name,
    net/core/dev.c): an alias label such as eth0:1 is not an interface. podnet's own rule on top: no
    control characters, which no tool shows and the probe's line-based answer would cut. The name is
    written into the flanneld unit as one systemd word and into the DaemonSet's args escaped for
    Kubernetes' $(VAR) expansion, so any other character is kept. An address is written in its
    canonical form, as the node_ip it may equal.
    """
    if isinstance(value, str):
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            if 0 < len(value.encode()) < IFNAMSIZ and value not in (".", "..") and not IFACE_REFUSED.search(value) \
                    and value.isprintable():
                return value
    raise ValueError("an interface name of 1-15 bytes without '/', ':', white space or control characters (e.g. "
                     "eth1; Linux allows no ':' or '/' in one), or an IP address of the node")


DATA_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\*?$")


def _data_keys(value: Any) -> tuple[str, ...]:
    """Inventory data key names, or prefixes ending in '*' (podnet's own setting: no component reads it)."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(k, str) and DATA_KEY_RE.match(k) for k in value):
        raise ValueError("a list of inventory data key names, or prefixes ending in '*', such as ['my_app_*']")
    return tuple(value)


def _url(value: Any) -> str:
    """An http(s) base URL read by requests on the operator's machine (no white space or control characters:
    urllib3's parse_url refuses them)."""
    if not isinstance(value, str) or not re.match(r"^https?://[^/\s]+(/\S*)?$", value) or not value.isprintable():
        raise ValueError("an http:// or https:// base URL")
    return value.rstrip("/")


CHECKOUT = Path(__file__).resolve().parents[2]


def _checkout_path(value: str) -> Path:
    """A path on the operator's machine; a relative one is below the podnet checkout (not the cwd)."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else CHECKOUT / path


def _address(value: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise ValueError("an IPv4 or IPv6 address") from None


SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def _checksums(value: Any) -> dict:
    shape = "{artifact: {version: {arch: '<64 hex digits>'}}} with artifact one of " + ", ".join(ARTIFACT_NAMES)
    if not isinstance(value, dict):
        raise ValueError(shape)
    out: dict = {}
    for artifact, versions in value.items():
        if artifact not in ARTIFACT_NAMES:
            raise ValueError(f"{shape} (unknown artifact {artifact!r})")
        if not isinstance(versions, dict):
            raise ValueError(shape)
        for version, arches in versions.items():
            _version(version)
            if not isinstance(arches, dict):
                raise ValueError(shape)
            for arch, digest in arches.items():
                if arch not in set(ARCHITECTURES.values()):
                    raise ValueError(f"{shape} (unsupported architecture {arch!r}: amd64 or arm64)")
                if not isinstance(digest, str) or not SHA256_RE.match(digest.lower()):
                    raise ValueError(f"{shape} ({artifact} {version} {arch}: not a sha256)")
                out.setdefault(artifact, {}).setdefault(version, {})[arch] = digest.lower()
    return out


# --- the settings: each declared once -----------------------------------------------------


@dataclass(frozen=True)
class SettingSpec:
    """One setting as declared: its name, default (as written in inventory data), meaning, scope, parser."""

    name: str
    default: Any
    meaning: str
    # "cluster": must have the same value on every host; "host": may differ per host.
    scope: str = "cluster"
    # The raw inventory value -> the value ``Settings`` holds; ValueError(what would be valid) otherwise.
    parse: Callable[[Any], Any] = field(default=lambda value: value, compare=False, repr=False)


def setting(default: Any, parse: Callable[[Any], Any], meaning: str, scope: str = "cluster", hash: bool = True):
    """
    Declare one setting as a field of ``Settings``: the default as an operator would write it in
    inventory data, the parser that checks and converts it, what it means (the README table and the
    group-data example say exactly this), and whether it may differ per host (``scope="host"``).
    """
    return field(hash=None if hash else False,
                 metadata={"setting": {"default": default, "parse": parse, "meaning": meaning, "scope": scope}})


@dataclass(frozen=True)
class Settings:
    """
    Validated settings of one host, built only by ``parse_host_settings``. Each field is one
    inventory key, declared once here with its default, parser, meaning and scope; ``SPECS`` (the
    README table, ``inventory/group_data/all.py``, the unknown-key check) is read from these fields.
    """

    cluster_cidr: ipaddress.IPv4Network = setting(
        "10.244.0.0/16", _ipv4_network,
        "IPv4 pod network: kube-controller-manager --cluster-cidr and flannel net-conf Network")
    node_cidr_mask_size: int = setting(
        24, _integer(1, 32),
        "prefix length of each node's podCIDR (IPv4)")
    service_cluster_ip_range: ipaddress.IPv4Network = setting(
        "10.96.0.0/12", _ipv4_network,
        "IPv4 service network (--service-cluster-ip-range); must not overlap the pod network")
    cluster_cidr_ipv6: ipaddress.IPv6Network | None = setting(
        None, _ipv6_network,
        "IPv6 pod network for dual stack, e.g. fd00:10:244::/56")
    node_cidr_mask_size_ipv6: int = setting(
        64, _integer(1, 128),
        "prefix length of each node's IPv6 podCIDR")
    service_cluster_ip_range_ipv6: ipaddress.IPv6Network | None = setting(
        None, _ipv6_network,
        "IPv6 service network for dual stack")
    flannel_backend: str = setting(
        "vxlan", _choice(FLANNEL_BACKENDS),
        "flannel backend: " + ", ".join(FLANNEL_BACKENDS))
    flannel_vni: int = setting(
        1, _integer(*VNI_RANGE),
        "VXLAN network identifier (vxlan backend)")
    flannel_port: int | None = setting(
        None, _optional(_integer(*PORT_RANGE)),
        "UDP port of the vxlan (default 8472) or wireguard (default 51820) backend")
    flannel_mtu: int | None = setting(
        None, _optional(_integer(*MTU_RANGE)),
        "pod interface MTU written into the CNI delegate; unset = flanneld's FLANNEL_MTU")
    flannel_iface: str | None = setting(
        None, _optional(_iface),
        "interface flanneld uses between nodes (--iface): a name such as eth1, or the node's address on "
        "it (the node_ip: the DaemonSet then gives each node its own address)", scope="host")
    flannel_rollout: str = setting(
        "daemonset", _choice(FLANNEL_ROLLOUTS),
        "how flanneld runs: daemonset (kube-flannel, applied with kubectl), systemd (a unit on every "
        "node) or external (deployed by something else)")
    flannel_image: str = setting(
        f"docker.io/flannel/flannel:v{releases.DEFAULT_FLANNEL}", _image,
        "flanneld image of the DaemonSet; its tag's release decides the DaemonSet's /healthz and /readyz probes "
        "(see Supported versions)")
    flannel_rollout_timeout: int = setting(
        300, _integer(10, 3600),
        "seconds to wait for the flannel rollout and podCIDRs")
    run_lock_wait: int = setting(
        0, _integer(0, 3600),
        "seconds a run waits for another run deploying the same node (its run lock) before it stops; "
        "0: stop at once")
    allow_pod_network_change: bool = setting(
        False, _boolean,
        "let a run change cluster_cidr or node_cidr_mask_size (or the IPv6 ones) that nodes' podCIDRs do "
        "not fit: podnet then registers those nodes again and removes their old cni0 (pods must be "
        "recreated)")
    containerd_version: str = setting(
        "2.3.4", _version,
        "containerd release (config.toml version 2 for 1.6-1.7, 3 for 2.0-2.2, 4 from 2.3: see Supported "
        "versions)", scope="host")
    runc_version: str = setting(
        "1.4.3", _version,
        "runc release", scope="host")
    cni_plugins_version: str = setting(
        "1.9.1", _version,
        "containernetworking/plugins release", scope="host")
    flannel_cni_plugin_version: str = setting(
        releases.flannel_cni_plugin_for(releases.DEFAULT_FLANNEL), _version,
        f"flannel-io/cni-plugin release (the default is the one flannel v{releases.DEFAULT_FLANNEL}'s "
        "kube-flannel.yml ships)", scope="host")
    flanneld_version: str = setting(
        releases.DEFAULT_FLANNEL, _version,
        "flanneld release (systemd rollout)", scope="host")
    mirror_url: str | None = setting(
        None, _optional(_url),
        "base URL that replaces the upstream download hosts (air-gapped sites); the upstream path is kept"
        " below it")
    release_download: str = setting(
        "laptop", _choice(("laptop", "nodes")),
        "who downloads the release files the nodes install: laptop (downloaded and verified on the laptop, each "
        "archive a node needs sent to it over SSH and unpacked there) or nodes (each node downloads what it needs "
        "itself from mirror_url, or upstream without one, with curl or wget; the laptop sends only commands); "
        "either way every file is checked against its sha256 on the node before it is activated")
    allow_insecure_http: bool = setting(
        False, _boolean,
        "let mirror_url be a plain http:// URL: release files and the checksums beside them are then read "
        "without TLS (anyone on the way can change both; podnet warns); a redirect from https to http is "
        "refused either way")
    artifact_checksums: dict = setting(
        {}, _checksums,
        "sha256 overrides/additions: {artifact: {version: {arch: sha256}}}", scope="host", hash=False)
    artifact_lock_file: Path = setting(
        "inventory/artifacts.lock.yaml", lambda v: _checkout_path(_local_path(v)),
        "checksum lock: sha256 resolved from upstream's published sums, written once and then read "
        "(commit it); a relative path is below the podnet checkout")
    resolve_checksums: bool = setting(
        True, _boolean,
        "resolve a sha256 that is neither pinned nor locked from upstream's published sums; false: every "
        "sum must be pinned (artifact_checksums, files/artifacts.yaml) or locked")
    download_cache_dir: Path = setting(
        "~/.cache/podnet", lambda v: Path(_local_path(v)).expanduser(),
        "laptop-side download cache")
    cni_bin_dir: str = setting(
        "/opt/cni/bin", _absolute_path,
        "where CNI plugin binaries are installed")
    cni_conf_dir: str = setting(
        "/etc/cni/net.d", _absolute_path,
        "where containerd looks for the CNI config")
    sandbox_image: str = setting(
        None, _optional(_image),
        "pod sandbox (pause) image of containerd; unset: the one kubeadm of kubernetes_version uses (see "
        "Supported versions), so kubeadm and containerd agree")
    systemd_cgroup: bool = setting(
        True, _boolean,
        "runc uses the systemd cgroup driver (SystemdCgroup)")
    restrict_oom_score_adj: bool = setting(
        False, _boolean,
        "containerd CRI restrict_oom_score_adj (for nodes without CAP_SYS_RESOURCE)")
    control_plane_group: str = setting(
        "control_plane", _text,
        "inventory group whose hosts are control plane")
    kube_controller_manager_runtime: str = setting(
        "static-pod", _choice(CONTROLLER_MANAGER_RUNTIMES),
        "how kube-controller-manager runs: static-pod (kubeadm manifest), systemd, or external (managed "
        "elsewhere, e.g. a hosted control plane: podnet does not set its node IPAM flags; the flannel "
        "DaemonSet still needs a control-plane host with kubectl)")
    kube_controller_manager_manifest: str = setting(
        "/etc/kubernetes/manifests/kube-controller-manager.yaml", _absolute_path,
        "kubeadm static pod manifest (static-pod runtime)")
    kube_controller_manager_unit: str = setting(
        "/etc/systemd/system/kube-controller-manager.service", _unit_path,
        "systemd unit whose ExecStart runs kube-controller-manager (systemd runtime)")
    kubeconfig: str = setting(
        "/etc/kubernetes/admin.conf", _absolute_path,
        "kubeconfig on control-plane hosts for kubectl (flanneld's systemd unit gets a kubeconfig of its own, "
        "with a token of flannel's ServiceAccount; this one only when no host is in the control-plane group)")
    node_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = setting(
        None, _optional(_address),
        "the node's own address (defaults to the inventory name when that is an IP)", scope="host")
    cluster_bootstrap: bool = setting(
        False, _boolean,
        "create the cluster with kubeadm on fresh machines: install kubelet, kubeadm and kubectl, kubeadm"
        " init on the first control-plane host, kubeadm join on the others (needs node_ip)")
    kubernetes_version: str = setting(
        "1.36.2", _version,
        "Kubernetes release of kubelet, kubeadm and kubectl and of the control plane kubeadm creates "
        "(cluster_bootstrap)")
    etcd_external_endpoints: tuple[str, ...] = setting(
        [], kubeadm_options.etcd_endpoints,
        "etcd client URLs of an etcd you run, such as ['http://127.0.0.1:2379']: kubeadm then creates no "
        "etcd (cluster_bootstrap; empty: kubeadm's local etcd)")
    kubeadm_ignore_preflight_errors: tuple[str, ...] = setting(
        [], kubeadm_options.preflight_errors,
        "kubeadm preflight checks to ignore by name, such as ['SystemVerification'], for kubeadm init "
        "and join (cluster_bootstrap)")
    kubelet_configuration: dict = setting(
        {}, kubeadm_options.component_config("KubeletConfiguration", "kubelet.config.k8s.io/v1beta1",
                                             {"cgroupDriver": "systemd_cgroup"}),
        "KubeletConfiguration fields kubeadm gives every kubelet, such as {'failSwapOn': False} "
        "(cluster_bootstrap; cgroupDriver comes from systemd_cgroup)", hash=False)
    kube_proxy_configuration: dict = setting(
        {}, kubeadm_options.component_config("KubeProxyConfiguration", "kubeproxy.config.k8s.io/v1alpha1", {}),
        "KubeProxyConfiguration fields kubeadm gives kube-proxy, such as {'conntrack': {'maxPerCore': 0}} "
        "(cluster_bootstrap)", hash=False)
    other_data_keys: tuple[str, ...] = setting(
        [], _data_keys,
        "inventory data keys of your own deploys (names, or prefixes ending in *, such as ['my_app_*']) that "
        "podnet leaves alone instead of reporting them as unknown settings")
    reset_containerd: bool = setting(
        False, _boolean,
        "reset.py also stops containerd and removes what podnet installed for it (binaries, runc, unit, "
        "config.toml); every container on the node stops", scope="host")
    reset_kernel: bool = setting(
        False, _boolean,
        "reset.py also removes podnet's modules-load.d and sysctl.d files (values stay until a reboot)",
        scope="host")
    # Derived from inventory membership, not from a data key.
    is_control_plane: bool = False

    @property
    def dual_stack(self) -> bool:
        return self.cluster_cidr_ipv6 is not None

    @property
    def effective_sandbox_image(self) -> str:
        """sandbox_image, else kubeadm's pause image for kubernetes_version (validation ensures one exists)."""
        if self.sandbox_image is not None:
            return self.sandbox_image
        return releases.pause_image(self.kubernetes_version) or ""

    @property
    def conflist_cni_version(self) -> str:
        """The conflist's cniVersion: the newest format both plugin releases read (validation ensures one)."""
        return releases.conflist_cni_version(self.cni_plugins_version, self.flannel_cni_plugin_version)

    @property
    def kubectl(self) -> str:
        """The kubectl command line with the kubeconfig setting, for commands run on control-plane hosts."""
        return f"kubectl --kubeconfig={shlex.quote(self.kubeconfig)}"

    @property
    def effective_flannel_port(self) -> int | None:
        """The backend's UDP port, with flannel's own default when not set."""
        if self.flannel_port is not None:
            return self.flannel_port
        return {"vxlan": 8472, "wireguard": 51820}.get(self.flannel_backend)

    @property
    def flannel_iface_is_node_ip(self) -> bool:
        """flanneld is pointed at the node's own address rather than at an interface name."""
        return self.flannel_iface is not None and self.node_ip is not None \
            and self.flannel_iface == str(self.node_ip)


SPECS: tuple[SettingSpec, ...] = tuple(SettingSpec(f.name, **f.metadata["setting"])
                                       for f in fields(Settings) if "setting" in f.metadata)
SPEC_BY_NAME = {spec.name: spec for spec in SPECS}


def _unknown_keys(data: dict, other_keys: tuple[str, ...] = ()) -> list[str]:
    """Keys that are neither podnet's, pyinfra's, nor named in other_data_keys, each with a did-you-mean."""
    others = tuple(k for k in other_keys if not k.endswith("*"))
    prefixes = tuple(k[:-1] for k in other_keys if k.endswith("*"))
    problems = []
    for key in sorted(data):
        if key in SPEC_BY_NAME or key.startswith(PYINFRA_KEY_PREFIXES) or key in others or key.startswith(prefixes):
            continue
        close = difflib.get_close_matches(key, SPEC_BY_NAME, n=1)
        hint = (f"; did you mean {close[0]!r}?" if close else "; see inventory/group_data/all.py for every setting"
                " (a key of your own deploy: name it in other_data_keys)")
        problems.append(f"{key}: unknown setting{hint}")
    return problems


def _describe(value: Any) -> str:
    """A bad value as an error shows it (a URL without its credentials)."""
    return repr(redact_url(value)) if isinstance(value, str) else repr(value)


def parse_host_settings(data: dict, host_name: str, groups: Iterable[str]) -> Settings:
    """Parse one host's inventory data into ``Settings``; raise SettingsError listing every problem."""
    try:
        other_keys = _data_keys(data.get("other_data_keys", []))
    except ValueError:
        other_keys = ()  # reported with the other settings below
    problems = _unknown_keys(data, other_keys)
    values: dict[str, Any] = {}
    for spec in SPECS:
        raw = data.get(spec.name, spec.default)
        try:
            values[spec.name] = spec.parse(raw)
        except ValueError as error:
            problems.append(f"{spec.name}: {_describe(raw)} is not valid; expected {error}")
    if problems:
        raise SettingsError(problems)

    if values["node_ip"] is None:
        try:
            values["node_ip"] = ipaddress.ip_address(host_name)
        except ValueError:
            pass
    values["is_control_plane"] = values["control_plane_group"] in set(groups)
    settings = Settings(**values)
    problems = _relations(settings)
    if problems:
        raise SettingsError(problems)
    return settings


def _mask_problem(key: str, mask: int, net: Network, cluster_key: str) -> str | None:
    """
    A node mask that kube-controller-manager and the CNI plugins accept for this cluster CIDR:

    - not shorter than the cluster prefix: NewNodeIpamController (pkg/controller/nodeipam/
      node_ipam_controller.go) refuses a cluster CIDR "mask size ... must be less than or equal to
      --node-cidr-mask-size configured for CIDR family"; equal is allowed (one podCIDR, one node);
    - for an IPv6 cluster CIDR only, at most 16 bits longer (MAX_IPV6_NODE_MASK_DIFF, cidrset);
    - at most /30 (IPv4) or /126 (IPv6): a node's podCIDR is the range the host-local IPAM plugin
      allocates pod addresses from, and it refuses a /31, /32, /127 or /128 ("Network ... too small to
      allocate from", Range.Canonicalize in containernetworking/plugins
      plugins/ipam/host-local/backend/allocator/range.go). A cluster CIDR longer than that fits no
      node mask at all, which is reported against the cluster CIDR.
    """
    longest = net.max_prefixlen - 2
    if net.prefixlen > longest:
        return (f"{cluster_key}: '{net}' is too small; expected a prefix length of at most /{longest}, the "
                "smallest node podCIDR the host-local IPAM plugin can allocate pod addresses from")
    if not net.prefixlen <= mask <= longest:
        return (f"{key}: {mask} is not valid; expected a prefix length from /{net.prefixlen} ({cluster_key} "
                f"'{net}' as one podCIDR) to /{longest} (the smallest podCIDR host-local allocates from)")
    if net.version == 6 and mask - net.prefixlen > MAX_IPV6_NODE_MASK_DIFF:
        return (f"{key}: {mask} is not valid; kube-controller-manager allows an IPv6 node mask at most "
                f"{MAX_IPV6_NODE_MASK_DIFF} bits longer than {cluster_key} /{net.prefixlen} "
                f"(so at most /{net.prefixlen + MAX_IPV6_NODE_MASK_DIFF})")
    return None


def _relations(s: Settings) -> list[str]:
    """
    Rules between settings of one host. Besides the component rules documented where they are
    checked, these are podnet's own, each against a silent failure no component reports:

    - pod and service networks disjoint: kube-apiserver's --service-cluster-ip-range help says the
      range "must not overlap with any IP ranges assigned to nodes or pods", but nothing enforces it;
      kube-controller-manager only marks the overlap as used (the range allocator's
      occupyServiceCIDR, pkg/controller/nodeipam/ipam/range_allocator.go), so an overlap is almost
      always a typo that silently takes addresses from the pods;
    - an IPv6 service range only with an IPv6 pod network: podnet gives kube-controller-manager the
      IPv6 service range only on dual stack, so it would otherwise be ignored without a word;
    - no node address inside a pod or service range: a podCIDR or a Service ClusterIP could then
      hold a node's own address;
    - flannel_vni / flannel_port only for a backend that reads them: flanneld ignores them otherwise;
    - the kubeadm-only settings (KUBEADM_ONLY) only with cluster_bootstrap: nothing reads them otherwise;
    - a plain http:// mirror_url only with allow_insecure_http: release files and their checksums
      would otherwise be read without TLS, silently (the downloader refuses such a URL as well).
    """
    problems = []
    if s.mirror_url is not None and s.mirror_url.startswith("http://") and not s.allow_insecure_http:
        problems.append(f"mirror_url: {s.mirror_url!r} is plain http; expected an https:// URL: over http anyone on "
                        "the way can change the release files and the checksums podnet reads beside them. To accept "
                        "that (a mirror on a network you trust), also set allow_insecure_http = True")
    for key, mask, net, cluster_key in (
        ("node_cidr_mask_size", s.node_cidr_mask_size, s.cluster_cidr, "cluster_cidr"),
        ("node_cidr_mask_size_ipv6", s.node_cidr_mask_size_ipv6, s.cluster_cidr_ipv6, "cluster_cidr_ipv6"),
    ):
        if net is not None:
            problem = _mask_problem(key, mask, net, cluster_key)
            if problem:
                problems.append(problem)

    for pods_key, pods, services_key, services in (
        ("cluster_cidr", s.cluster_cidr, "service_cluster_ip_range", s.service_cluster_ip_range),
        ("cluster_cidr_ipv6", s.cluster_cidr_ipv6, "service_cluster_ip_range_ipv6",
         s.service_cluster_ip_range_ipv6),
    ):
        if pods is not None and services is not None and pods.overlaps(services):
            problems.append(f"{pods_key}: '{pods}' overlaps {services_key} '{services}'; "
                            "pod and service networks must be disjoint: choose ranges that share no address")

    if s.service_cluster_ip_range_ipv6 is not None and s.cluster_cidr_ipv6 is None:
        problems.append("service_cluster_ip_range_ipv6: set without cluster_cidr_ipv6; "
                        "dual stack needs an IPv6 pod network too")

    if s.node_ip is not None:
        for key, net in (("cluster_cidr", s.cluster_cidr), ("cluster_cidr_ipv6", s.cluster_cidr_ipv6),
                         ("service_cluster_ip_range", s.service_cluster_ip_range),
                         ("service_cluster_ip_range_ipv6", s.service_cluster_ip_range_ipv6)):
            if net is not None and s.node_ip.version == net.version and s.node_ip in net:
                problems.append(f"{key}: '{net}' contains this node's own address {s.node_ip}; "
                                "choose a range that no node address is in")

    # Every version-dependent choice is a row of the compatibility table (tasks/releases.py, which
    # names each row's upstream source): a release it has no row for is refused here.
    try:
        config_generation(s.containerd_version)
    except ValueError as error:
        problems.append(f"containerd_version: {s.containerd_version!r} is not supported; expected {error}")
    try:
        releases.conflist_cni_version(s.cni_plugins_version, s.flannel_cni_plugin_version)
    except ValueError as error:
        problems.append(f"cni_plugins_version: {s.cni_plugins_version!r} with flannel_cni_plugin_version "
                        f"{s.flannel_cni_plugin_version!r} cannot read the conflist podnet writes; expected {error}")
    # (with cluster_bootstrap a kubernetes_version outside the table is refused as such, below)
    if s.sandbox_image is None and releases.pause_image(s.kubernetes_version) is None and not s.cluster_bootstrap:
        problems.append(f"sandbox_image: unset, and kubernetes_version {s.kubernetes_version!r} has no pause image "
                        "in podnet's table (" + ", ".join(r.releases for r in releases.PAUSE_IMAGES) + "); set "
                        "sandbox_image to the pause image your kubelet's release uses")

    if s.flannel_backend != "vxlan" and s.flannel_vni != 1:
        problems.append(f"flannel_vni: {s.flannel_vni} is only used by the vxlan backend, "
                        f"not {s.flannel_backend!r}; remove it or use flannel_backend 'vxlan'")
    if s.flannel_backend == "host-gw" and s.flannel_port is not None:
        problems.append(f"flannel_port: {s.flannel_port} is not used by the host-gw backend; remove it")
    if s.dual_stack and s.flannel_mtu is not None and s.flannel_mtu < IPV6_MIN_MTU:
        problems.append(f"flannel_mtu: {s.flannel_mtu} is below {IPV6_MIN_MTU}, the IPv6 minimum, "
                        "on a dual-stack network")
    if s.dual_stack and s.flannel_backend == "vxlan" and s.flannel_vni > DUAL_STACK_MAX_VNI:
        problems.append(f"flannel_vni: {s.flannel_vni} is too large on a dual-stack network; expected at most "
                        f"{DUAL_STACK_MAX_VNI}: flanneld names its IPv6 device flannel-v6.<VNI>, and a Linux "
                        "interface name has at most 15 characters")
    if s.cluster_bootstrap:
        problems.extend(_bootstrap_problems(s))
    else:
        problems.extend(f"{key}: set without cluster_bootstrap; only kubeadm init and join read it: remove it, or "
                        "set cluster_bootstrap = True" for key in KUBEADM_ONLY if getattr(s, key))
    return problems


def _bootstrap_problems(s: Settings) -> list[str]:
    """cluster_bootstrap creates the cluster with kubeadm: what that needs from the other settings."""
    problems = []
    # The configuration format per kubeadm release is config_api (tasks/releases.py, after kubeadm's
    # validateSupportedVersion): a release outside the range podnet renders is refused.
    try:
        config_api(s.kubernetes_version)
    except ValueError as error:
        problems.append(f"kubernetes_version: {s.kubernetes_version!r} is not supported with cluster_bootstrap; "
                        f"expected {error}")
    window = releases.containerd_supports_kubernetes(s.containerd_version, s.kubernetes_version)
    if window is not None:
        problems.append(f"containerd_version: {s.containerd_version!r} does not support kubernetes_version "
                        f"{s.kubernetes_version!r}: containerd {window.releases} supports Kubernetes up to "
                        f"{window.value} ({window.source}); choose a containerd release listed there for Kubernetes "
                        f"{'.'.join(map(str, releases.release(s.kubernetes_version)[:2]))}, or an older Kubernetes")
    if s.node_ip is None:
        problems.append("node_ip: not set; cluster_bootstrap needs each node's own address (kubelet --node-ip, "
                        "and the API server's advertise address on the first control-plane host): set node_ip, "
                        "or name the host by its address")
    if s.kube_controller_manager_runtime != "static-pod":
        problems.append(f"kube_controller_manager_runtime: {s.kube_controller_manager_runtime!r} cannot be used with "
                        "cluster_bootstrap; kubeadm runs kube-controller-manager as a static pod: use 'static-pod'")
    if s.flannel_rollout == "systemd":
        problems.append("flannel_rollout: 'systemd' cannot be used with cluster_bootstrap; flanneld's "
                        "ServiceAccount and token are made with kubectl on the first control-plane host, before "
                        "kubeadm has created the cluster there: use 'daemonset'")
    for key in ("kube_controller_manager_manifest", "kubeconfig"):
        kubeadm_path = SPEC_BY_NAME[key].default
        if getattr(s, key) != kubeadm_path:
            problems.append(f"{key}: {getattr(s, key)!r} cannot be used with cluster_bootstrap; kubeadm writes "
                            f"{kubeadm_path}: remove the setting")
    problems.extend(_kubeadm_network_problems(s))
    return problems


def _kubeadm_network_problems(s: Settings) -> list[str]:
    """
    kubeadm init's own checks of the podSubnet and serviceSubnet podnet gives it, which would stop
    kubeadm on the first control-plane host (ValidateNetworking in cmd/kubeadm/app/apis/kubeadm/
    validation/validation.go):

    - a pod subnet holds at least 14 addresses and is neither longer than, nor more than 16 bits
      shorter than, the node mask kubeadm assumes for its family (ValidatePodSubnetNodeMask). kubeadm
      reads that mask only from --node-cidr-mask-size-ipv4 / -ipv6 (getClusterNodeMask), else takes
      24 / 64: podnet passes those flags on dual stack, while a single-stack cluster gets
      --node-cidr-mask-size, so there kubeadm checks cluster_cidr against /24 whatever the node mask;
    - a service subnet holds at least 10 addresses and has at most 20 host bits
      (ValidateServiceSubnetSize).
    """
    flags = _family_mask_flags(s)
    problems = []
    for key, net, mask_key in (("cluster_cidr", s.cluster_cidr, "node-cidr-mask-size-ipv4"),
                               ("cluster_cidr_ipv6", s.cluster_cidr_ipv6, "node-cidr-mask-size-ipv6")):
        if net is None:
            continue
        mask = int(flags.get(mask_key) or KUBEADM_DEFAULT_NODE_MASK[net.version])
        shortest = mask - KUBEADM_POD_SUBNET_NODE_MASK_MAX_DIFF
        longest = min(mask, _longest_prefix(net.version, KUBEADM_MIN_POD_SUBNET_ADDRESSES))
        if not shortest <= net.prefixlen <= longest:
            why = (f"node mask /{mask}" if flags.get(mask_key) else
                   f"/{mask}, kube-controller-manager's default it assumes because it reads only "
                   f"--{mask_key}, which a single-stack cluster does not get")
            problems.append(f"{key}: '{net}' cannot be used with cluster_bootstrap; kubeadm init checks its "
                            f"podSubnet against the {why}, and needs a prefix length from /{shortest} to /{longest}")
    for key, net in (("service_cluster_ip_range", s.service_cluster_ip_range),
                     ("service_cluster_ip_range_ipv6", s.service_cluster_ip_range_ipv6)):
        if net is None:
            continue
        shortest = net.max_prefixlen - KUBEADM_MAX_SERVICE_SUBNET_HOST_BITS
        longest = _longest_prefix(net.version, KUBEADM_MIN_SERVICE_SUBNET_ADDRESSES)
        if not shortest <= net.prefixlen <= longest:
            problems.append(f"{key}: '{net}' cannot be used with cluster_bootstrap; kubeadm init needs a service "
                            f"subnet from /{shortest} to /{longest} (at most {KUBEADM_MAX_SERVICE_SUBNET_HOST_BITS} "
                            f"host bits, at least {KUBEADM_MIN_SERVICE_SUBNET_ADDRESSES} addresses)")
    return problems


def _family_mask_flags(s: Settings) -> dict[str, str]:
    """The per-family node mask flags podnet gives kube-controller-manager: exactly on dual stack
    (desired_flags in tasks/controller_manager.py; tests/test_settings.py holds the two together)."""
    if not s.dual_stack:
        return {}
    return {"node-cidr-mask-size-ipv4": str(s.node_cidr_mask_size),
            "node-cidr-mask-size-ipv6": str(s.node_cidr_mask_size_ipv6)}


def _longest_prefix(version: int, addresses: int) -> int:
    """The longest prefix length of an IPv4 or IPv6 network that still holds this many addresses."""
    bits = 32 if version == 4 else 128
    return bits - (addresses - 1).bit_length()


# --- whole inventory -----------------------------------------------------------


def _host_data(host) -> dict:
    return host.data.dict()


def parse_inventory(hosts: Iterable) -> dict[str, Settings]:
    """Parse every host's settings and the rules across hosts; raise one SettingsError for all."""
    hosts = list(hosts)
    parsed: dict[str, Settings] = {}
    problems: list[str] = []
    for host in hosts:
        try:
            parsed[host.name] = parse_host_settings(_host_data(host), host.name, host.groups)
        except SettingsError as error:
            problems.extend(f"{host.name}: {p}" for p in error.problems)
    if problems:
        raise SettingsError(problems)
    problems.extend(_cluster_rules(parsed))
    if problems:
        raise SettingsError(problems)
    return parsed


def _cluster_rules(parsed: dict[str, Settings]) -> list[str]:
    problems = []
    if not parsed:
        return problems
    first_name, first = next(iter(parsed.items()))
    for spec in SPECS:
        if spec.scope != "cluster":
            continue
        differing = [n for n, s in parsed.items() if getattr(s, spec.name) != getattr(first, spec.name)]
        if differing:
            problems.append(f"{spec.name}: must be the same on every host, but {first_name} has "
                            f"{_show(getattr(first, spec.name))} and {', '.join(differing)} "
                            f"{_show(getattr(parsed[differing[0]], spec.name))}; set it in group data for all")
    for key, net, mask in (("cluster_cidr", first.cluster_cidr, first.node_cidr_mask_size),
                           ("cluster_cidr_ipv6", first.cluster_cidr_ipv6, first.node_cidr_mask_size_ipv6)):
        if net is None:
            continue
        capacity = 2 ** (mask - net.prefixlen)
        if capacity < len(parsed):
            problems.append(f"{key}: '{net}' with node mask /{mask} has room for {capacity} node podCIDRs, "
                            f"but the inventory has {len(parsed)} nodes; use a larger network or a longer mask")
    addresses: dict[str, str] = {}
    for name, s in parsed.items():
        if s.node_ip is None:
            continue
        if str(s.node_ip) in addresses:
            problems.append(f"node_ip: {s.node_ip} is given to both {addresses[str(s.node_ip)]} and {name}")
        addresses[str(s.node_ip)] = name
    if first.flannel_rollout == "daemonset" and any(s.flannel_iface_is_node_ip for s in parsed.values()):
        others = [n for n, s in parsed.items() if not s.flannel_iface_is_node_ip]
        if others:
            problems.append(
                f"flannel_iface: the kube-flannel DaemonSet gives every node the same --iface, but only some hosts set "
                f"it to their node_ip ({', '.join(others)} do not: "
                f"{', '.join(repr(parsed[n].flannel_iface) for n in others)}); set flannel_iface to its own node_ip "
                "on every host, or one interface name on every host")
    problems.extend(_control_plane_problems(parsed, first))
    return problems


def _control_plane_problems(parsed: dict[str, Settings], first: Settings) -> list[str]:
    """Every step the settings imply has a host to run on, or the settings say it runs elsewhere:
    kubeadm init, the node IPAM flags of kube-controller-manager and the flannel rollout's
    podCIDR check all run on control-plane hosts (podnet's own rule: without one they would be
    skipped without a word)."""
    if any(s.is_control_plane for s in parsed.values()):
        return []
    group = f"control_plane_group: no host is in group {first.control_plane_group!r}"
    if first.cluster_bootstrap:
        return [f"{group}; cluster_bootstrap runs kubeadm init on the first control-plane host"]
    if first.flannel_rollout == "daemonset":
        return [f"{group}; the flannel DaemonSet is applied from the first control-plane host (with kubectl and "
                "the kubeconfig setting): put such a host in that group (or name its group in control_plane_group), "
                "or set flannel_rollout to 'systemd' or 'external'"]
    if first.kube_controller_manager_runtime != "external":
        return [f"{group}; podnet sets kube-controller-manager's node IPAM flags (--allocate-node-cidrs, "
                "--cluster-cidr, --node-cidr-mask-size) on the hosts of that group: add the hosts that run it, or "
                "set kube_controller_manager_runtime = 'external' if it is managed elsewhere (then node IPAM must "
                "already be on there)"]
    return []


def _show(value: Any) -> str:
    return f"'{value}'" if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)) else repr(value)
