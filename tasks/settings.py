"""
The one settings object.

Every podnet setting is read from pyinfra inventory data exactly once per host,
checked, and turned into a frozen ``Settings``. Tasks and templates read only from
that object, never from ``host.data``. Rules that need the whole inventory (node
count, values that must agree across hosts) run over every host before the first
operation is planned, so bad input stops the run before any host is touched.

Each error names the key, the bad value and what would be valid.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable

from tasks.errors import PodnetError

# Keys in inventory data that belong to pyinfra (connectors, global arguments),
# not to podnet. Anything else that is not a podnet setting is reported as unknown.
PYINFRA_KEY_PREFIXES = (
    "_", "ssh_", "winrm_", "docker_", "dockerssh_", "chroot_", "local_", "vagrant_",
    "terraform_", "fake_", "podman_",
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

FLANNEL_BACKENDS = ("vxlan", "host-gw", "wireguard")
FLANNEL_ROLLOUTS = ("daemonset", "systemd", "external")
CONTROLLER_MANAGER_RUNTIMES = ("static-pod", "systemd")
MTU_RANGE = (576, 9000)
VNI_RANGE = (1, 16_777_215)
PORT_RANGE = (1, 65_535)
# kube-controller-manager's cidrset refuses a node mask more than 16 bits longer
# than the cluster prefix.
MAX_NODE_MASK_DIFF = 16
# uname -m -> release architecture name used by every artifact we download.
ARCHITECTURES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


class SettingsError(PodnetError, ValueError):
    """Inventory data that podnet cannot use. ``problems`` lists one line per error."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid podnet settings:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class SettingSpec:
    """One documented setting: its name, default, meaning, and where it may differ."""

    name: str
    default: Any
    meaning: str
    # "cluster": must have the same value on every host; "host": may differ per host.
    scope: str = "cluster"


SPECS: tuple[SettingSpec, ...] = (
    SettingSpec("cluster_cidr", "10.244.0.0/16",
                "IPv4 pod network: kube-controller-manager --cluster-cidr and flannel net-conf Network"),
    SettingSpec("node_cidr_mask_size", 24, "prefix length of each node's podCIDR (IPv4)"),
    SettingSpec("service_cluster_ip_range", "10.96.0.0/12",
                "IPv4 service network (--service-cluster-ip-range); must not overlap the pod network"),
    SettingSpec("cluster_cidr_ipv6", None, "IPv6 pod network for dual stack, e.g. fd00:10:244::/56"),
    SettingSpec("node_cidr_mask_size_ipv6", 64, "prefix length of each node's IPv6 podCIDR"),
    SettingSpec("service_cluster_ip_range_ipv6", None, "IPv6 service network for dual stack"),
    SettingSpec("flannel_backend", "vxlan", "flannel backend: " + ", ".join(FLANNEL_BACKENDS)),
    SettingSpec("flannel_vni", 1, "VXLAN network identifier (vxlan backend)"),
    SettingSpec("flannel_port", None,
                "UDP port of the vxlan (default 8472) or wireguard (default 51820) backend"),
    SettingSpec("flannel_mtu", None,
                "pod interface MTU written into the CNI delegate; unset = flanneld's FLANNEL_MTU"),
    SettingSpec("flannel_iface", None,
                "interface flanneld uses between nodes (--iface): a name such as eth1, or the node's "
                "address on it (the node_ip: the DaemonSet then gives each node its own address)", scope="host"),
    SettingSpec("flannel_rollout", "daemonset",
                "how flanneld runs: daemonset (kube-flannel, applied with kubectl), "
                "systemd (a unit on every node) or external (deployed by something else)"),
    SettingSpec("flannel_image", "docker.io/flannel/flannel:v0.28.4", "flanneld image of the DaemonSet"),
    SettingSpec("flannel_rollout_timeout", 300, "seconds to wait for the flannel rollout and podCIDRs"),
    SettingSpec("containerd_version", "2.3.4", "containerd release (1.6.x-1.7.x: config v2; 2.x: config v3)",
                scope="host"),
    SettingSpec("runc_version", "1.4.3", "runc release", scope="host"),
    SettingSpec("cni_plugins_version", "1.9.1", "containernetworking/plugins release", scope="host"),
    SettingSpec("flannel_cni_plugin_version", "1.9.1-flannel1",
                "flannel-io/cni-plugin release (the default is the one flannel v0.28.4's kube-flannel.yml uses)",
                scope="host"),
    SettingSpec("flanneld_version", "0.28.4", "flanneld release (systemd rollout)", scope="host"),
    SettingSpec("mirror_url", None,
                "base URL that replaces the upstream download hosts (air-gapped sites); "
                "the upstream path is kept below it"),
    SettingSpec("artifact_checksums", {},
                "sha256 overrides/additions: {artifact: {version: {arch: sha256}}}", scope="host"),
    SettingSpec("artifact_lock_file", "inventory/artifacts.lock.yaml",
                "checksum lock: sha256 resolved from upstream's published sums, written once and then read "
                "(commit it); a relative path is below the podnet checkout"),
    SettingSpec("resolve_checksums", True,
                "resolve a sha256 that is neither pinned nor locked from upstream's published sums; "
                "false: every sum must be pinned (artifact_checksums, files/artifacts.yaml) or locked"),
    SettingSpec("download_cache_dir", "~/.cache/podnet", "laptop-side download cache"),
    SettingSpec("cni_bin_dir", "/opt/cni/bin", "where CNI plugin binaries are installed"),
    SettingSpec("cni_conf_dir", "/etc/cni/net.d", "where containerd looks for the CNI config"),
    SettingSpec("sandbox_image", "registry.k8s.io/pause:3.10", "pod sandbox (pause) image"),
    SettingSpec("systemd_cgroup", True, "runc uses the systemd cgroup driver (SystemdCgroup)"),
    SettingSpec("restrict_oom_score_adj", False,
                "containerd CRI restrict_oom_score_adj (for nodes without CAP_SYS_RESOURCE)"),
    SettingSpec("control_plane_group", "control_plane", "inventory group whose hosts are control plane"),
    SettingSpec("kube_controller_manager_runtime", "static-pod",
                "how kube-controller-manager runs: static-pod (kubeadm manifest) or systemd"),
    SettingSpec("kube_controller_manager_manifest", "/etc/kubernetes/manifests/kube-controller-manager.yaml",
                "kubeadm static pod manifest (static-pod runtime)"),
    SettingSpec("kube_controller_manager_unit", "/etc/systemd/system/kube-controller-manager.service",
                "systemd unit whose ExecStart runs kube-controller-manager (systemd runtime)"),
    SettingSpec("kubeconfig", "/etc/kubernetes/admin.conf",
                "kubeconfig on control-plane hosts for kubectl, and for flanneld (systemd rollout)"),
    SettingSpec("node_ip", None,
                "the node's own address (defaults to the inventory name when that is an IP)", scope="host"),
    SettingSpec("cluster_bootstrap", False,
                "create the cluster with kubeadm on fresh machines: install kubelet, kubeadm and kubectl, "
                "kubeadm init on the first control-plane host, kubeadm join on the others (needs node_ip)"),
    SettingSpec("kubernetes_version", "1.35.1",
                "Kubernetes release of kubelet, kubeadm and kubectl and of the control plane kubeadm creates "
                "(cluster_bootstrap)"),
)
SPEC_BY_NAME = {spec.name: spec for spec in SPECS}


@dataclass(frozen=True)
class Settings:
    """Validated settings of one host. Built only by ``parse_host_settings``."""

    cluster_cidr: ipaddress.IPv4Network
    node_cidr_mask_size: int
    service_cluster_ip_range: ipaddress.IPv4Network
    cluster_cidr_ipv6: ipaddress.IPv6Network | None
    node_cidr_mask_size_ipv6: int
    service_cluster_ip_range_ipv6: ipaddress.IPv6Network | None
    flannel_backend: str
    flannel_vni: int
    flannel_port: int | None
    flannel_mtu: int | None
    flannel_iface: str | None
    flannel_rollout: str
    flannel_image: str
    flannel_rollout_timeout: int
    containerd_version: str
    runc_version: str
    cni_plugins_version: str
    flannel_cni_plugin_version: str
    flanneld_version: str
    mirror_url: str | None
    artifact_checksums: dict = field(hash=False)
    artifact_lock_file: Path = Path("inventory/artifacts.lock.yaml")
    resolve_checksums: bool = True
    download_cache_dir: Path = Path("~/.cache/podnet")
    cni_bin_dir: str = "/opt/cni/bin"
    cni_conf_dir: str = "/etc/cni/net.d"
    sandbox_image: str = "registry.k8s.io/pause:3.10"
    systemd_cgroup: bool = True
    restrict_oom_score_adj: bool = False
    control_plane_group: str = "control_plane"
    kube_controller_manager_runtime: str = "static-pod"
    kube_controller_manager_manifest: str = ""
    kube_controller_manager_unit: str = ""
    kubeconfig: str = ""
    node_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    cluster_bootstrap: bool = False
    kubernetes_version: str = "1.35.1"
    # Derived from inventory membership, not from a data key.
    is_control_plane: bool = False

    @property
    def dual_stack(self) -> bool:
        return self.cluster_cidr_ipv6 is not None

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


assert [f.name for f in fields(Settings)][:-1] == [s.name for s in SPECS], "SPECS and Settings disagree"


# --- value parsers: each returns the parsed value or raises ValueError(what would be valid) ---


def _network(value: Any, version: int) -> Network:
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


def _absolute_path(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or value != value.strip() or "\n" in value:
        raise ValueError("an absolute path such as /opt/cni/bin")
    return value.rstrip("/") or "/"


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value):
        raise ValueError("a non-empty string without spaces")
    return value


# An image reference: [registry[:port]/]path[:tag][@sha256:digest], lower-case path components.
IMAGE_RE = re.compile(r"^(?:[A-Za-z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
                      r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$")


def _image(value: Any) -> str:
    if not isinstance(value, str) or not IMAGE_RE.match(value):
        raise ValueError("an image reference such as registry.k8s.io/pause:3.10")
    return value


IFACE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")


def _iface(value: Any) -> str:
    if not isinstance(value, str) or not IFACE_RE.match(value):
        raise ValueError("an interface name of 1-15 letters, digits or _.:- (e.g. eth1)")
    return value


def _url(value: Any) -> str:
    if not isinstance(value, str) or not re.match(r"^https?://[^/\s]+(/\S*)?$", value):
        raise ValueError("an http:// or https:// base URL")
    return value.rstrip("/")


CHECKOUT = Path(__file__).resolve().parent.parent


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
    # Imported here: artifacts imports this module for SettingsError.
    from tasks.artifacts import ARTIFACT_NAMES

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


PARSERS: dict[str, Callable[[Any], Any]] = {
    "cluster_cidr": _ipv4_network,
    "node_cidr_mask_size": _integer(1, 32),
    "service_cluster_ip_range": _ipv4_network,
    "cluster_cidr_ipv6": _ipv6_network,
    "node_cidr_mask_size_ipv6": _integer(1, 128),
    "service_cluster_ip_range_ipv6": _ipv6_network,
    "flannel_backend": _choice(FLANNEL_BACKENDS),
    "flannel_vni": _integer(*VNI_RANGE),
    "flannel_port": _optional(_integer(*PORT_RANGE)),
    "flannel_mtu": _optional(_integer(*MTU_RANGE)),
    "flannel_iface": _optional(_iface),
    "flannel_rollout": _choice(FLANNEL_ROLLOUTS),
    "flannel_image": _image,
    "flannel_rollout_timeout": _integer(10, 3600),
    "containerd_version": _version,
    "runc_version": _version,
    "cni_plugins_version": _version,
    "flannel_cni_plugin_version": _version,
    "flanneld_version": _version,
    "mirror_url": _optional(_url),
    "artifact_checksums": _checksums,
    "artifact_lock_file": lambda v: _checkout_path(_text(v)),
    "resolve_checksums": _boolean,
    "download_cache_dir": lambda v: Path(_text(v)).expanduser(),
    "cni_bin_dir": _absolute_path,
    "cni_conf_dir": _absolute_path,
    "sandbox_image": _image,
    "systemd_cgroup": _boolean,
    "restrict_oom_score_adj": _boolean,
    "control_plane_group": _text,
    "kube_controller_manager_runtime": _choice(CONTROLLER_MANAGER_RUNTIMES),
    "kube_controller_manager_manifest": _absolute_path,
    "kube_controller_manager_unit": _absolute_path,
    "kubeconfig": _absolute_path,
    "node_ip": _optional(_address),
    "cluster_bootstrap": _boolean,
    "kubernetes_version": _version,
}
assert set(PARSERS) == set(SPEC_BY_NAME), "every setting needs a parser"


def _unknown_keys(data: dict) -> list[str]:
    problems = []
    for key in sorted(data):
        if key in SPEC_BY_NAME or key.startswith(PYINFRA_KEY_PREFIXES):
            continue
        close = difflib.get_close_matches(key, SPEC_BY_NAME, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "; see inventory/group_data/all.py for every setting"
        problems.append(f"{key}: unknown setting{hint}")
    return problems


def _describe(value: Any) -> str:
    return repr(value)


def parse_host_settings(data: dict, host_name: str, groups: Iterable[str]) -> Settings:
    """Parse one host's inventory data into ``Settings``; raise SettingsError listing every problem."""
    problems = _unknown_keys(data)
    values: dict[str, Any] = {}
    for spec in SPECS:
        raw = data.get(spec.name, spec.default)
        try:
            values[spec.name] = PARSERS[spec.name](raw)
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
    if mask <= net.prefixlen or mask > net.max_prefixlen - 2:
        return (f"{key}: {mask} is not valid; expected a prefix length longer than {cluster_key} "
                f"/{net.prefixlen} and at most /{net.max_prefixlen - 2}")
    if mask - net.prefixlen > MAX_NODE_MASK_DIFF:
        return (f"{key}: {mask} is not valid; kube-controller-manager allows at most "
                f"{MAX_NODE_MASK_DIFF} bits more than {cluster_key} /{net.prefixlen} "
                f"(so at most /{net.prefixlen + MAX_NODE_MASK_DIFF})")
    return None


def _relations(s: Settings) -> list[str]:
    """Rules between settings of one host."""
    problems = []
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
                            "pod and service networks must be disjoint")

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

    from tasks.containerd import config_generation  # the generation rule lives with containerd

    try:
        config_generation(s.containerd_version)
    except ValueError as error:
        problems.append(f"containerd_version: {s.containerd_version!r} is not supported; expected {error}")

    if s.flannel_backend != "vxlan" and s.flannel_vni != 1:
        problems.append(f"flannel_vni: {s.flannel_vni} is only used by the vxlan backend, "
                        f"not {s.flannel_backend!r}; remove it or use flannel_backend 'vxlan'")
    if s.flannel_backend == "host-gw" and s.flannel_port is not None:
        problems.append(f"flannel_port: {s.flannel_port} is not used by the host-gw backend; remove it")
    if s.dual_stack and s.flannel_mtu is not None and s.flannel_mtu < 1280:
        problems.append(f"flannel_mtu: {s.flannel_mtu} is below 1280, the IPv6 minimum, on a dual-stack network")
    if s.cluster_bootstrap:
        problems.extend(_bootstrap_problems(s))
    return problems


def _bootstrap_problems(s: Settings) -> list[str]:
    """cluster_bootstrap creates the cluster with kubeadm: what that needs from the other settings."""
    problems = []
    if s.node_ip is None:
        problems.append("node_ip: not set; cluster_bootstrap needs each node's own address (kubelet --node-ip, "
                        "and the API server's advertise address on the first control-plane host): set node_ip, "
                        "or name the host by its address")
    if s.kube_controller_manager_runtime != "static-pod":
        problems.append(f"kube_controller_manager_runtime: {s.kube_controller_manager_runtime!r} cannot be used with "
                        "cluster_bootstrap; kubeadm runs kube-controller-manager as a static pod: use 'static-pod'")
    if s.flannel_rollout == "systemd":
        problems.append("flannel_rollout: 'systemd' cannot be used with cluster_bootstrap; flanneld's kubeconfig "
                        "would be needed on every node and kubeadm writes it only on control-plane hosts: "
                        "use 'daemonset'")
    for key in ("kube_controller_manager_manifest", "kubeconfig"):
        kubeadm_path = SPEC_BY_NAME[key].default
        if getattr(s, key) != kubeadm_path:
            problems.append(f"{key}: {getattr(s, key)!r} cannot be used with cluster_bootstrap; kubeadm writes "
                            f"{kubeadm_path}: remove the setting")
    return problems


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
    if not any(s.is_control_plane for s in parsed.values()) and first.cluster_bootstrap:
        problems.append(f"control_plane_group: no host is in group {first.control_plane_group!r}; "
                        "cluster_bootstrap runs kubeadm init on the first control-plane host")
    elif not any(s.is_control_plane for s in parsed.values()) and first.flannel_rollout == "daemonset":
        problems.append(f"control_plane_group: no host is in group {first.control_plane_group!r}; "
                        "the flannel DaemonSet is applied from the first control-plane host")
    return problems


def _show(value: Any) -> str:
    return f"'{value}'" if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)) else repr(value)
