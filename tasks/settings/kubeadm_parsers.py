"""
Parsers of the settings that pass an operator's choices on to kubeadm (cluster_bootstrap):
external etcd endpoints, preflight checks to ignore by name, and fields of the
KubeletConfiguration and KubeProxyConfiguration documents kubeadm hands to every kubelet and
to kube-proxy. Each returns the parsed value or raises ValueError saying what would be valid
(tasks.settings turns that into a SettingsError naming the key and the value). This module
imports nothing of podnet's, so tasks.settings can use it.

Upstream sources are named at each parser.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable
from urllib.parse import urlsplit

# The names of kubeadm's preflight checks (Checker.Name() in kubernetes/kubernetes
# cmd/kubeadm/app/preflight/checks.go and checks_linux.go, and the upgrade checks of
# cmd/kubeadm/app/phases/upgrade/health.go and cmd/kubeadm/app/cmd/upgrade/common.go), as kubeadm
# 1.36 builds them for `kubeadm init` with podnet's configuration and for `kubeadm join`.
PREFLIGHT_CHECKS = (
    "ContainerRuntimeVersion", "ControlPlaneNodesReady", "CoreDNSMigration", "CoreDNSUnsupportedPlugins",
    "CreateJob", "CRI", "ExternalEtcdClientCertificates", "ExternalEtcdVersion", "Firewalld", "Hostname",
    "HTTPProxy", "HTTPProxyCIDR", "ImagePull", "IsPrivilegedUser", "KubeletVersion", "KubernetesVersion", "Mem",
    "NumCPU", "Service-Kubelet", "StaticPodManifest", "Swap", "SystemVerification",
)
# Checks named after what they check (PortOpenCheck "Port-%d"; FileAvailableCheck, DirAvailableCheck,
# FileContentCheck: the prefix, "-", the path with "/" as "-"; InPathCheck "FileExisting-<executable>"),
# for the ports, paths and executables kubeadm checks: the API server's bind port (podnet's 6443),
# kube-scheduler, kube-controller-manager, the kubelet and etcd (cmd/kubeadm/app/constants); the static
# pod manifests, the kubelet's kubeconfigs, the CA kubeadm join writes, etcd's data dir; the forwarding
# sysctls; the executables of addExecChecks (conntrack up to 1.31). The bridge-nf-call sysctls and crictl
# are checked by the older kubeadm releases podnet also installs (1.22 on).
PREFLIGHT_NAMED_CHECKS = (
    *(f"Port-{port}" for port in (6443, 10259, 10257, 10250, 2379, 2380)),
    *(f"FileAvailable--etc-kubernetes-manifests-{name}.yaml"
      for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd")),
    "FileAvailable--etc-kubernetes-kubelet.conf", "FileAvailable--etc-kubernetes-bootstrap-kubelet.conf",
    "FileAvailable--etc-kubernetes-pki-ca.crt", "DirAvailable--var-lib-etcd", "DirAvailable--etc-kubernetes-manifests",
    "FileContent--proc-sys-net-ipv4-ip_forward", "FileContent--proc-sys-net-ipv6-conf-default-forwarding",
    "FileContent--proc-sys-net-bridge-bridge-nf-call-iptables",
    "FileContent--proc-sys-net-bridge-bridge-nf-call-ip6tables",
    *(f"FileExisting-{tool}" for tool in ("conntrack", "crictl", "ebtables", "ethtool", "ip", "iptables", "mount",
                                          "nsenter", "socat", "tc", "touch")),
)
PREFLIGHT_ALL = "all"
# host[:port] of a URL as Go's url.Parse takes it for an etcd endpoint: a DNS name or IPv4 address, or an
# IPv6 address in brackets (no white space, quotes or control characters: parseHost, net/url/url.go).
HOST_RE = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?$")
FIELD_RE = re.compile(r"^[a-z][A-Za-z0-9]*$")


def preflight_errors(value: Any) -> tuple[str, ...]:
    """
    kubeadm's --ignore-preflight-errors / nodeRegistration.ignorePreflightErrors: a list of check
    names, or ["all"] alone, written as kubeadm names them. kubeadm's own rules: names compare
    case-insensitively (RunChecks and setHasItemOrAll in cmd/kubeadm/app/preflight/checks.go lower-case
    both sides), and "all" cannot be combined with single names (ValidateIgnorePreflightErrors in
    cmd/kubeadm/app/apis/kubeadm/validation/validation.go). podnet's own rule on top: a name must be
    one of the checks kubeadm runs for podnet's init and join (PREFLIGHT_CHECKS,
    PREFLIGHT_NAMED_CHECKS), because kubeadm silently ignores any other string, so the check meant
    would still stop `kubeadm init` on the first control-plane host; and so no other text (a
    shell word, a comma that would split the list) reaches kubeadm.
    """
    known = {name.lower(): name for name in (*PREFLIGHT_CHECKS, *PREFLIGHT_NAMED_CHECKS, PREFLIGHT_ALL)}
    shape = ("a list of kubeadm preflight check names, such as ['SystemVerification'] (one of "
             + ", ".join(PREFLIGHT_CHECKS) + ", Port-6443 or another of " + ", ".join(PREFLIGHT_NAMED_CHECKS[1:4])
             + ", ...), or ['all'] alone")
    if not isinstance(value, (list, tuple)) or not all(isinstance(name, str) for name in value):
        raise ValueError(shape)
    names: list[str] = []
    for name in value:
        canonical = known.get(name.lower())
        if canonical is None:
            raise ValueError(f"{shape}; {name!r} is not a check kubeadm runs (kubeadm would ignore it silently)")
        if canonical not in names:
            names.append(canonical)
    if PREFLIGHT_ALL in names and len(names) > 1:
        raise ValueError(f"{shape}; kubeadm refuses 'all' together with single checks")
    return tuple(names)


def etcd_endpoints(value: Any) -> tuple[str, ...]:
    """
    ClusterConfiguration etcd.external.endpoints: URLs of an etcd the operator runs (kubeadm then
    creates no etcd static pod). kubeadm's rule (ValidateEtcd and ValidateURLs in
    cmd/kubeadm/app/apis/kubeadm/validation/validation.go): each endpoint a URL with a scheme, https
    required only when client certificate files are given, which podnet does not set; podnet's own
    rule: http:// or https:// with a host name or address and nothing after host:port (etcd's client URL
    form; HOST_RE), so a
    typo is refused here rather than by kubeadm on the first control-plane host. An empty list
    means kubeadm's local etcd.
    """
    shape = "a list of etcd client URLs such as ['http://127.0.0.1:2379'] (empty: kubeadm's local etcd)"
    if not isinstance(value, (list, tuple)) or not all(isinstance(url, str) for url in value):
        raise ValueError(shape)
    for url in value:
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in ("http", "https") or not parts.hostname or port == -1 or not HOST_RE.match(parts.netloc) \
                or parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            raise ValueError(f"{shape}; {url!r} is not http(s)://host:port")
    return tuple(url.rstrip("/") for url in value)


def _plain(value: Any, where: str) -> None:
    """YAML-plain data (what inventory data and a kubeadm configuration file can both hold)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: key {key!r} is not a string")
            _plain(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _plain(item, f"{where}[{index}]")
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        raise ValueError(f"{where}: {type(value).__name__} is not a YAML value")
    elif isinstance(value, float) and not math.isfinite(value):
        # kubeadm turns the document into JSON (sigs.k8s.io/yaml YAMLToJSON), which has no such number
        raise ValueError(f"{where}: {value} is not a number JSON can hold")


def component_config(kind: str, api_version: str, owned: dict[str, str]) -> Callable[[Any], dict]:
    """
    Fields of one of the component configuration documents kubeadm reads beside its own
    (KubeletConfiguration kubelet.config.k8s.io/v1beta1, KubeProxyConfiguration
    kubeproxy.config.k8s.io/v1alpha1; kubeadm stores them in the kubelet-config and kube-proxy
    ConfigMaps for every node: cmd/kubeadm/app/componentconfigs). A mapping of the document's
    top-level fields (lowerCamelCase, as in the upstream API reference) to YAML values. ``owned``:
    field -> the setting podnet writes it from, refused here (apiVersion and kind are the
    document's own). Field names are not checked against the API: kubeadm decodes the document
    strictly and names an unknown field itself.
    """
    owned = {"apiVersion": f"{api_version} (written by podnet)", "kind": f"{kind} (written by podnet)", **owned}

    def parse(value: Any) -> dict:
        shape = (f"a mapping of {kind} ({api_version}) fields to values, such as "
                 + ("{'failSwapOn': False}" if kind == "KubeletConfiguration" else "{'conntrack': {'maxPerCore': 0}}"))
        if not isinstance(value, dict):
            raise ValueError(shape)
        for key in value:
            if not isinstance(key, str) or not FIELD_RE.match(key):
                raise ValueError(f"{shape}; {key!r} is not a field name (lowerCamelCase)")
            if key in owned:
                raise ValueError(f"{shape}; {key} is set from {owned[key]}")
        try:
            _plain(value, kind)
        except ValueError as error:
            raise ValueError(f"{shape}; {error}") from None
        return dict(value)
    return parse
