"""
Facts about upstream releases, on the ground floor so that the settings (which validate versions
against them) and the concerns (which render for them) read them from one place. Every
version-dependent choice podnet makes is a lookup in the compatibility table below; no other
module compares versions.

- ``ARCHITECTURES``: ``uname -m`` -> the architecture name in release file names;
- ``ARTIFACT_NAMES``: every release file podnet knows how to fetch (files/artifacts.yaml);
- the compatibility table, one tuple of ``Row``s per fact, each row naming its upstream source:
  ``CONTAINERD_CONFIGS`` (config.toml version and CNI keys per containerd release),
  ``KUBEADM_CONFIG_APIS`` (kubeadm configuration API per Kubernetes release),
  ``KUBEADM_CONFIG_VALIDATE`` (kubeadm releases with `kubeadm config validate`),
  ``PAUSE_IMAGES`` (kubeadm's pause image per Kubernetes release),
  ``CNI_SPECS`` (CNI spec versions the plugin releases read, for the conflist's cniVersion),
  ``FLANNEL_CNI_PLUGINS`` (the cni-plugin release each flannel release ships),
  ``FLANNEL_HEALTH`` (flanneld releases serving /healthz and /readyz),
  ``CONTAINERD_KUBERNETES`` (the newest Kubernetes release containerd supports, per containerd minor),
  ``KUBELET_CGROUP_V1`` (kubelet releases that refuse a cgroup v1 node by default);
- the lookups over them (``config_generation``, ``config_api``, ``kubeadm_validates_config``, ``pause_image``, ``conflist_cni_version``,
  ``flannel_cni_plugin_for``, ``flannel_serves_health``, ``containerd_supports_kubernetes``,
  ``kubelet_refuses_cgroup_v1``) and ``supported_versions_rows`` (the README's "Supported versions").

No podnet module is imported here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# uname -m -> release architecture name used by every artifact we download.
ARCHITECTURES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}

ARTIFACT_NAMES = ("containerd", "runc", "cni_plugins", "flannel_cni_plugin", "flanneld", "kubeadm", "kubelet",
                  "kubectl")


def release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string: "1.9.1-flannel3" -> (1, 9, 1), "v0.28.9" -> (0, 28, 9).
    ValueError when it does not start with a number."""
    match = re.match(r"^v?(\d+(?:\.\d+)*)", version)
    if match is None:
        raise ValueError(f"{version!r} is not a release version")
    return tuple(int(part) for part in match.group(1).split("."))


@dataclass(frozen=True)
class Row:
    """
    One row of the compatibility table: releases ``first`` to ``last`` (inclusive, each compared
    on as many parts as it has: "2.1" holds every 2.1.x; ``last`` None: no upper bound) of
    ``component`` have ``value``; ``source`` says where upstream states it.
    """

    component: str
    first: str
    last: str | None
    value: Any
    source: str

    def holds(self, version: str) -> bool:
        v = release(version)
        low = release(self.first)
        if v[:len(low)] < low:
            return False
        return self.last is None or v[:len(release(self.last))] <= release(self.last)

    @property
    def releases(self) -> str:
        """The range as people write it: "2.1-2.2", "2.3", "1.9.1-flannel3", "1.0 and later"."""
        if self.last is None:
            return f"{self.first} and later"
        if len(release(self.last)) < len(release(self.first)):
            return f"{self.first} to {self.last}.x"
        return self.first if self.first == self.last else f"{self.first}-{self.last}"


def _lookup(rows: tuple[Row, ...], version: str) -> Row | None:
    try:
        return next((row for row in rows if row.holds(version)), None)
    except ValueError:
        return None


# --- containerd: the config.toml it reads -----------------------------------------------


@dataclass(frozen=True)
class ConfigGeneration:
    """Which config.toml layout a containerd version reads."""

    template: str  # template under templates/containerd/
    version: int  # the `version = N` line
    cni_bin_dirs_key: str  # "bin_dir" (one path) or "bin_dirs" (a list, containerd >= 2.1)


CONTAINERD_CONFIGS = (
    Row("containerd", "1.6", "1.7", ConfigGeneration("containerd/config-v2.toml.j2", 2, "bin_dir"),
        "containerd v1.7 docs/cri/config.md (`version = 2`, `[plugins.\"io.containerd.grpc.v1.cri\"]`; "
        "CurrentConfigVersion = 2 in services/server/config/config.go)"),
    Row("containerd", "2.0", "2.0", ConfigGeneration("containerd/config-v3.toml.j2", 3, "bin_dir"),
        "containerd v2.0 docs/cri/config.md (`version = 3`, `io.containerd.cri.v1.runtime` / `.images`; "
        "CurrentConfigVersion = 3 in cmd/containerd/server/config/config.go)"),
    Row("containerd", "2.1", "2.2", ConfigGeneration("containerd/config-v3.toml.j2", 3, "bin_dirs"),
        "containerd v2.1.0 release notes (CNI `bin_dirs`, containerd/containerd#11311) and RELEASES.md "
        "\"Deprecated features\" (`bin_dir` deprecated in 2.1, removed in 2.4)"),
    Row("containerd", "2.3", "2", ConfigGeneration("containerd/config-v3.toml.j2", 4, "bin_dirs"),
        "containerd v2.3 cmd/containerd/server/config/config.go (CurrentConfigVersion = 4); containerd 2.3.4 "
        "`config default` writes `version = 4` and, given version 3, logs \"Configuration migrated from "
        "version 3, use `containerd config migrate` to avoid migration\" at every start; the CRI sections "
        "podnet writes are the same as in version 3"),
)


def _config_versions() -> str:
    """ "2 for 1.6-1.7, 3 for 2.0-2.2, 4 for 2.3 to 2.x": consecutive rows of one version joined."""
    groups: list[list[Row]] = []
    for row in CONTAINERD_CONFIGS:
        if groups and groups[-1][-1].value.version == row.value.version:
            groups[-1].append(row)
        else:
            groups.append([row])
    return ", ".join(f"{rows[0].value.version} for "
                     f"{Row('containerd', rows[0].first, rows[-1].last, None, '').releases}" for rows in groups)


SUPPORTED_CONTAINERD = (f"a containerd release from {CONTAINERD_CONFIGS[0].first}.0 to {CONTAINERD_CONFIGS[-1].last}.x "
                        f"(config version {_config_versions()})")


def config_generation(containerd_version: str) -> ConfigGeneration:
    """The config.toml layout ``containerd_version`` reads (CONTAINERD_CONFIGS); ValueError naming the
    supported releases outside it. Releases before 1.6 are podnet's own refusal: out of upstream support,
    never tested here."""
    row = _lookup(CONTAINERD_CONFIGS, containerd_version)
    if row is None:
        raise ValueError(SUPPORTED_CONTAINERD)
    return row.value


# --- kubeadm: the configuration API it reads ----------------------------------------------

KUBEADM_CONFIG_APIS = (
    Row("kubeadm", "1.22", "1.30", "kubeadm.k8s.io/v1beta3",
        "kubernetes/kubernetes cmd/kubeadm/app/util/config/common.go validateSupportedVersion (\"v1.22: v1beta2 "
        "read-only, writes only v1beta3 config\"; \"v1.27: only v1beta3 config\"); a v1beta4 file is rejected "
        "by kubeadm 1.30"),
    Row("kubeadm", "1.31", "1.36", "kubeadm.k8s.io/v1beta4",
        "kubernetes/kubernetes#125029 (v1beta4 in 1.31, extraArgs a list of name/value, v1beta3 deprecated) and "
        "#136016 (v1beta3 removed after 1.35); kubeadm 1.36.2 `config validate` accepts podnet's v1beta4 file"),
)
# Kept under their former names: the kubeadm concern and its tests read them.
CONFIG_APIS = tuple((release(row.first)[1], release(row.last)[1], row.value) for row in KUBEADM_CONFIG_APIS)
SUPPORTED_KUBERNETES = ("a Kubernetes release from " + KUBEADM_CONFIG_APIS[0].first + ".0 to "
                        + KUBEADM_CONFIG_APIS[-1].last + ".x (podnet writes kubeadm's configuration as "
                        + " and ".join(f"{row.value} for {row.releases}" for row in KUBEADM_CONFIG_APIS) + ")")


def config_api(kubernetes_version: str) -> str:
    """
    The kubeadm configuration apiVersion podnet renders for ``kubernetes_version`` (the release of
    kubeadm, kubelet and the control plane); ValueError naming the supported range outside it.

    Below 1.22 kubeadm does not know v1beta3, the oldest format podnet writes; 1.22-1.30 read v1beta3
    and not v1beta4; 1.31-1.36 read v1beta4, their own format; after 1.36 no kubeadm has been
    checked, and v1 is on its way to become the format: those releases are refused until this table
    says which format they read (KUBEADM_CONFIG_APIS names the sources).

    Every other file podnet writes for the kubelet is the same across this range: the
    KubeletConfiguration fields (kubelet.config.k8s.io/v1beta1, cgroupDriver), --node-ip through
    KUBELET_EXTRA_ARGS, and the kubelet unit and kubeadm drop-in as upstream packages them.
    """
    row = _lookup(KUBEADM_CONFIG_APIS, kubernetes_version)
    if row is None:
        raise ValueError(SUPPORTED_KUBERNETES)
    return row.value


KUBEADM_CONFIG_VALIDATE = (
    Row("kubeadm", "1.26", None, True,
        "Kubernetes v1.26 CHANGELOG: kubeadm adds `kubeadm config validate` (kubernetes/kubernetes#114175; "
        "cmd/kubeadm/app/cmd/config.go newCmdConfigValidate), strict decoding of every document"),
)


def kubeadm_validates_config(kubernetes_version: str) -> bool:
    """kubeadm ``kubernetes_version`` has `kubeadm config validate` (KUBEADM_CONFIG_VALIDATE)."""
    return _lookup(KUBEADM_CONFIG_VALIDATE, kubernetes_version) is not None


# --- kubeadm: the pause image it pairs with -----------------------------------------------

_PAUSE_SOURCE = "kubernetes/kubernetes cmd/kubeadm/app/constants/constants.go PauseVersion on release-{}"
PAUSE_IMAGES = (
    Row("kubeadm", "1.22", "1.22", "registry.k8s.io/pause:3.5", _PAUSE_SOURCE.format("1.22")),
    Row("kubeadm", "1.23", "1.23", "registry.k8s.io/pause:3.6", _PAUSE_SOURCE.format("1.23")),
    Row("kubeadm", "1.24", "1.24", "registry.k8s.io/pause:3.7", _PAUSE_SOURCE.format("1.24")),
    Row("kubeadm", "1.25", "1.25", "registry.k8s.io/pause:3.8", _PAUSE_SOURCE.format("1.25")),
    Row("kubeadm", "1.26", "1.30", "registry.k8s.io/pause:3.9", _PAUSE_SOURCE.format("1.26 to 1.30")),
    Row("kubeadm", "1.31", "1.33", "registry.k8s.io/pause:3.10", _PAUSE_SOURCE.format("1.31 to 1.33")),
    Row("kubeadm", "1.34", "1.35", "registry.k8s.io/pause:3.10.1", _PAUSE_SOURCE.format("1.34 and 1.35")),
    Row("kubeadm", "1.36", "1.36", "registry.k8s.io/pause:3.10.2",
        _PAUSE_SOURCE.format("1.36") + "; kubeadm 1.36.2 `config images list` names registry.k8s.io/pause:3.10.2"),
)


def pause_image(kubernetes_version: str) -> str | None:
    """The pause image kubeadm of ``kubernetes_version`` uses (and warns about when containerd's
    sandbox image differs); None for a release outside PAUSE_IMAGES."""
    row = _lookup(PAUSE_IMAGES, kubernetes_version)
    return None if row is None else row.value


# --- CNI: the spec versions the plugins read ----------------------------------------------

# The conflist formats podnet writes (the same fields in each), newest first.
CONFLIST_CNI_VERSIONS = ("1.0.0", "0.4.0")
CNI_SPECS = (
    Row("cni_plugins", "0.8", "0.9", ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0"),
        "containernetworking/plugins v0.8.0 release notes (CNI spec 0.4.0, libcni v0.7); v0.9.1 "
        "pkg/version supports up to 0.4.0: a 1.0.0 conflist fails with \"incompatible CNI versions\""),
    Row("cni_plugins", "1.0", None, ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"),
        "containernetworking/plugins v1.0.0 release notes (CNI spec 1.0.0, containernetworking/cni v1.0.0)"),
    Row("flannel_cni_plugin", "1.5.1", None, ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"),
        "flannel-io/cni-plugin (containernetworking/cni v1.x): v1.9.1-flannel1 answers CNI_COMMAND=VERSION with "
        "supportedVersions 0.1.0-1.1.0; asset_versions in files/artifacts.yaml lists every release podnet installs"),
)


def cni_spec_versions(component: str, version: str) -> tuple[str, ...] | None:
    """The CNI spec versions ``component`` (cni_plugins or flannel_cni_plugin) ``version`` reads; None
    for a release outside CNI_SPECS."""
    row = _lookup(tuple(r for r in CNI_SPECS if r.component == component), version)
    return None if row is None else row.value


def conflist_cni_version(cni_plugins_version: str, flannel_cni_plugin_version: str) -> str:
    """The newest conflist format (CONFLIST_CNI_VERSIONS) both plugin releases read: its ``cniVersion``.
    ValueError naming the supported releases when there is none."""
    plugins = cni_spec_versions("cni_plugins", cni_plugins_version) or ()
    flannel = cni_spec_versions("flannel_cni_plugin", flannel_cni_plugin_version) or ()
    for version in CONFLIST_CNI_VERSIONS:
        if version in plugins and version in flannel:
            return version
    ranges = "; ".join(f"{row.component} {row.releases} read CNI spec up to {row.value[-1]}" for row in CNI_SPECS)
    raise ValueError(f"CNI plugin releases that read a conflist podnet writes (cniVersion "
                     f"{' or '.join(CONFLIST_CNI_VERSIONS)}): {ranges}")


# --- flannel: the cni-plugin it ships, the health endpoints it serves ----------------------

_FLANNEL_YML = "flannel-io/flannel Documentation/kube-flannel.yml at tag v{} (image flannel/flannel-cni-plugin:{})"
FLANNEL_CNI_PLUGINS = (
    Row("flannel", "0.28.3", "0.28.5", "1.9.1-flannel1", _FLANNEL_YML.format("0.28.3 to v0.28.5", "v1.9.1-flannel1")),
    Row("flannel", "0.28.6", "0.28.8", "1.9.1-flannel2", _FLANNEL_YML.format("0.28.6 to v0.28.8", "v1.9.1-flannel2")),
    Row("flannel", "0.28.9", "0.28.9", "1.9.1-flannel3", _FLANNEL_YML.format("0.28.9", "v1.9.1-flannel3")),
)
FLANNEL_HEALTH = (
    Row("flannel", "0.28.9", "0", True,
        "flannel-io/flannel v0.28.9 Documentation/kube-flannel.yml (livenessProbe /healthz, readinessProbe /readyz "
        "on --healthz-port 8081); flanneld v0.28.9 serves both (its healthz server, off unless --healthz-port is "
        "set, logs \"Handling /readyz error\" until its subnet lease is ready)"),
)
FLANNEL_HEALTHZ_PORT = 8081
# flanneld v0.28.9's backend UDP ports when net-conf.json gives none: vxlan's Port 0, with which the kernel's vxlan
# driver uses its udp_port default, 8472 (pkg/backend/vxlan/vxlan.go, drivers/net/vxlan/vxlan_core.c); wireguard's
# ListenPort 51820 (pkg/backend/wireguard/wireguard.go).
FLANNEL_BACKEND_DEFAULT_PORTS = {"vxlan": 8472, "wireguard": 51820}
# podnet's default flannel release (flanneld_version, flannel_image); flannel_cni_plugin_version's
# default is the one it ships (FLANNEL_CNI_PLUGINS).
DEFAULT_FLANNEL = "0.28.9"  # kube-flannel.yml's --healthz-port


def flannel_cni_plugin_for(flannel_version: str) -> str | None:
    """The flannel-io/cni-plugin release ``flannel_version``'s kube-flannel.yml ships; None outside the table."""
    row = _lookup(FLANNEL_CNI_PLUGINS, flannel_version)
    return None if row is None else row.value


def flannel_serves_health(flannel_version: str | None) -> bool:
    """flanneld ``flannel_version`` serves /healthz and /readyz on --healthz-port (FLANNEL_HEALTH)."""
    return flannel_version is not None and _lookup(FLANNEL_HEALTH, flannel_version) is not None


# --- support windows ------------------------------------------------------------------------

CONTAINERD_KUBERNETES = (
    Row("containerd", "1.6", "1.6", "1.34",
        "containerd RELEASES.md \"Kubernetes Support\": 1.6.36+ is listed up to Kubernetes 1.34, not for 1.35"),
    Row("containerd", "1.7", "1.7", "1.35",
        "containerd RELEASES.md \"Kubernetes Support\" (1.35: 2.2.0+, 2.1.5+, 1.7.28+) and the Kubernetes v1.35 "
        "release blog: the last Kubernetes release that supports containerd 1.x"),
    Row("containerd", "2.0", "2.0", "1.34",
        "containerd RELEASES.md \"Kubernetes Support\": 2.0.6+ is listed up to Kubernetes 1.34, not for 1.35"),
    Row("containerd", "2.1", "2.1", "1.35",
        "containerd RELEASES.md \"Kubernetes Support\": 2.1.5+ is listed up to Kubernetes 1.35, not for 1.36 "
        "(2.3.0+, 2.2.0+)"),
)


def containerd_supports_kubernetes(containerd_version: str, kubernetes_version: str) -> Row | None:
    """The CONTAINERD_KUBERNETES row that ``containerd_version`` breaks with ``kubernetes_version`` (a
    Kubernetes release newer than the last one that containerd release supports), else None."""
    row = _lookup(CONTAINERD_KUBERNETES, containerd_version)
    try:
        too_new = row is not None and release(kubernetes_version)[:2] > release(row.value)
    except ValueError:
        return None
    return row if too_new else None


KUBELET_CGROUP_V1 = (
    Row("kubelet", "1.35", None, "failCgroupV1",
        "Kubernetes v1.35 CHANGELOG (KEP-5573): KubeletConfiguration failCgroupV1 defaults to true, the kubelet "
        "refuses to start on a cgroup v1 node unless failCgroupV1: false "
        "(pkg/kubelet/apis/config/v1beta1/defaults.go)"),
)


def kubelet_refuses_cgroup_v1(kubernetes_version: str) -> Row | None:
    """The KUBELET_CGROUP_V1 row when the kubelet of ``kubernetes_version`` refuses cgroup v1 by default."""
    return _lookup(KUBELET_CGROUP_V1, kubernetes_version)


# --- the README's table ---------------------------------------------------------------------

def _cni_spec(versions: tuple[str, ...]) -> str:
    newest = next(v for v in CONFLIST_CNI_VERSIONS if v in versions)
    return "CNI spec " + ", ".join(versions) + f" (conflist `cniVersion` {newest})"


# Each table with how the README says what podnet uses of a row's value.
TABLE = (
    (CONTAINERD_CONFIGS, lambda v: f"config.toml `version = {v.version}`, CNI `{v.cni_bin_dirs_key}`"),
    (KUBEADM_CONFIG_APIS, lambda v: f"kubeadm configuration `{v}`"),
    (KUBEADM_CONFIG_VALIDATE, lambda v: "`kubeadm config validate` checks the rendered configuration before "
                                        "`kubeadm init`"),
    (PAUSE_IMAGES, lambda v: f"sandbox image `{v}` (the `sandbox_image` default)"),
    (CNI_SPECS, _cni_spec),
    (FLANNEL_CNI_PLUGINS, lambda v: f"ships flannel cni-plugin `{v}`"),
    (FLANNEL_HEALTH, lambda v: f"serves `/healthz` and `/readyz` on `--healthz-port` ({FLANNEL_HEALTHZ_PORT}): "
                               "DaemonSet probes"),
    (CONTAINERD_KUBERNETES, lambda v: f"supports Kubernetes up to {v}; newer: refused with cluster_bootstrap, "
                                      "else warned"),
    (KUBELET_CGROUP_V1, lambda v: "refuses a cgroup v1 node unless `failCgroupV1: false`: refused with "
                                  "cluster_bootstrap"),
)


def supported_versions_rows() -> list[tuple[str, str, str, str]]:
    """The README's "Supported versions" table (written by tasks/docs.py): one row per row of the
    compatibility table (component, releases, what podnet uses, upstream source)."""
    return [(row.component, row.releases, describe(row.value), row.source) for rows, describe in TABLE for row in rows]
