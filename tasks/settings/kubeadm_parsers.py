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

import re
from typing import Any, Callable
from urllib.parse import urlsplit

# kubeadm's preflight check names that carry no argument (the Name() of each check in
# kubernetes/kubernetes cmd/kubeadm/app/preflight/checks.go and of the upgrade checks in
# cmd/kubeadm/app/phases/upgrade/health.go and cmd/kubeadm/app/cmd/upgrade/common.go).
PREFLIGHT_CHECKS = (
    "ContainerRuntimeVersion", "ControlPlaneNodesReady", "CoreDNSMigration", "CoreDNSUnsupportedPlugins",
    "CreateJob", "CRI", "ExternalEtcdVersion", "Firewalld", "Hostname", "ImagePull", "IsPrivilegedUser",
    "KubeletVersion", "KubernetesVersion", "Mem", "NumCPU", "StaticPodManifest", "Swap", "SystemVerification",
)
# Checks named after what they check: "<prefix>-<argument>", e.g. Port-6443,
# FileContent--proc-sys-net-ipv4-ip_forward (a path's slashes become dashes), FileExisting-conntrack.
PREFLIGHT_CHECK_PREFIXES = ("DirAvailable", "FileAvailable", "FileContent", "FileExisting", "HTTPProxy",
                            "HTTPProxyCIDR", "Port", "Service")
PREFLIGHT_ALL = "all"
FIELD_RE = re.compile(r"^[a-z][A-Za-z0-9]*$")


def preflight_errors(value: Any) -> tuple[str, ...]:
    """
    kubeadm's --ignore-preflight-errors / nodeRegistration.ignorePreflightErrors: a list of check
    names, or ["all"] alone. kubeadm's own rule (ValidateIgnorePreflightErrors in
    cmd/kubeadm/app/apis/kubeadm/validation/validation.go): names compare case-insensitively, and
    "all" cannot be combined with single names. podnet's own rule on top: a name must be one of
    kubeadm's checks (PREFLIGHT_CHECKS, or PREFLIGHT_CHECK_PREFIXES followed by '-' and what it
    checks), because kubeadm silently ignores an unknown name and the check meant would still stop
    `kubeadm init` on the first control-plane host.
    """
    shape = ("a list of kubeadm preflight check names, such as ['SystemVerification'] (one of "
             + ", ".join(PREFLIGHT_CHECKS) + ", or " + "/".join(f"{p}-..." for p in PREFLIGHT_CHECK_PREFIXES)
             + "), or ['all'] alone")
    if not isinstance(value, (list, tuple)) or not all(isinstance(name, str) for name in value):
        raise ValueError(shape)
    known = {name.lower(): name for name in PREFLIGHT_CHECKS}
    names: list[str] = []
    for name in value:
        lower = name.strip().lower()
        prefix = lower.partition("-")[0]
        dynamic = "-" in lower and len(lower) > len(prefix) + 1 and prefix in {p.lower() for p in
                                                                               PREFLIGHT_CHECK_PREFIXES}
        if lower != PREFLIGHT_ALL and lower not in known and not (dynamic and " " not in lower and "," not in lower):
            raise ValueError(f"{shape}; {name!r} is not a kubeadm check")
        if lower not in [n.lower() for n in names]:
            names.append(name.strip())
    if PREFLIGHT_ALL in [n.lower() for n in names] and len(names) > 1:
        raise ValueError(f"{shape}; kubeadm refuses 'all' together with single checks")
    return tuple(names)


def etcd_endpoints(value: Any) -> tuple[str, ...]:
    """
    ClusterConfiguration etcd.external.endpoints: URLs of an etcd the operator runs (kubeadm then
    creates no etcd static pod). kubeadm's rule (ValidateEtcd and ValidateURLs in
    cmd/kubeadm/app/apis/kubeadm/validation/validation.go): each endpoint a URL with a scheme, https
    required only when client certificate files are given, which podnet does not set; podnet's own
    rule: http:// or https:// with a host and nothing after host:port (etcd's client URL form), so a
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
        if parts.scheme not in ("http", "https") or not parts.hostname or port == -1 \
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
