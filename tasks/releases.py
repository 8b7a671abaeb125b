"""
Facts about upstream releases that several parts of podnet need, on the ground floor so that
the settings (which validate versions against them) and the concerns (which render for them)
both read them from one place:

- ``ARCHITECTURES``: ``uname -m`` -> the architecture name in release file names;
- ``ARTIFACT_NAMES``: every release file podnet knows how to fetch (files/artifacts.yaml);
- ``config_generation``: which config.toml layout a containerd release reads;
- ``config_api``: which kubeadm configuration API a Kubernetes release reads.

No podnet module is imported here.
"""

from __future__ import annotations

from dataclasses import dataclass

# uname -m -> release architecture name used by every artifact we download.
ARCHITECTURES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}

ARTIFACT_NAMES = ("containerd", "runc", "cni_plugins", "flannel_cni_plugin", "flanneld", "kubeadm", "kubelet",
                  "kubectl")


@dataclass(frozen=True)
class ConfigGeneration:
    """Which config.toml layout a containerd version reads."""

    template: str  # template under templates/containerd/
    version: int  # the `version = N` line
    cni_bin_dirs_key: str  # "bin_dir" (one path) or "bin_dirs" (a list, containerd >= 2.1)


def config_generation(containerd_version: str) -> ConfigGeneration:
    """
    containerd 1.6/1.7 read config version 2 (`io.containerd.grpc.v1.cri`); 2.x reads
    version 3 (`io.containerd.cri.v1.runtime` / `.images`), where 2.1 replaced the CNI
    `bin_dir` by `bin_dirs`.
    """
    major, minor = (int(part) for part in containerd_version.split(".")[:2])
    if major == 1 and minor in (6, 7):
        return ConfigGeneration("containerd/config-v2.toml.j2", 2, "bin_dir")
    if major == 2:
        return ConfigGeneration("containerd/config-v3.toml.j2", 3, "bin_dirs" if minor >= 1 else "bin_dir")
    raise ValueError("a containerd release from 1.6.0 to 2.x (1.6/1.7 use config version 2, 2.x version 3)")


# Kubernetes minor releases (1.x) whose kubeadm reads each configuration API podnet renders.
CONFIG_APIS = (
    (22, 30, "kubeadm.k8s.io/v1beta3"),
    (31, 36, "kubeadm.k8s.io/v1beta4"),
)
SUPPORTED_KUBERNETES = (f"a Kubernetes release from 1.{CONFIG_APIS[0][0]}.0 to 1.{CONFIG_APIS[-1][1]}.x "
                        "(podnet writes kubeadm's configuration as "
                        + " and ".join(f"{api} for 1.{first}-1.{last}" for first, last, api in CONFIG_APIS) + ")")


def config_api(kubernetes_version: str) -> str:
    """
    The kubeadm configuration apiVersion podnet renders for ``kubernetes_version`` (the release of
    kubeadm, kubelet and the control plane); ValueError naming the supported range outside it.

    From kubernetes/kubernetes cmd/kubeadm/app/util/config/common.go (validateSupportedVersion:
    "v1.22: v1beta2 read-only, writes only v1beta3 config"; "v1.27: only v1beta3 config";
    "v1.31: v1beta3 read-only, writes only v1beta4 config"), kubernetes/kubernetes#125029 (v1beta4
    enabled in 1.31, extraArgs became a list of name/value, v1beta3 deprecated) and #136016 (v1beta3
    removed after 1.35; kubeadm.k8s.io/v1 added as an experimental placeholder that cannot be used
    yet), and the API references cmd/kubeadm/app/apis/kubeadm/v1beta3 and v1beta4
    (kubernetes.io/docs/reference/config-api/kubeadm-config.v1beta3/, .v1beta4/):

    - below 1.22 kubeadm does not know v1beta3, the oldest format podnet writes;
    - 1.22-1.30 read v1beta3 and not v1beta4 (a v1beta4 file is rejected by kubeadm 1.30);
    - 1.31-1.36 read v1beta4, their own format (v1beta3 only deprecated, then removed);
    - after 1.36 no kubeadm has been checked, and v1 is on its way to become the format: those
      releases are refused until this table says which format they read.

    Every other file podnet writes for the kubelet is the same across this range: the
    KubeletConfiguration fields (kubelet.config.k8s.io/v1beta1, cgroupDriver), --node-ip through
    KUBELET_EXTRA_ARGS, and the kubelet unit and kubeadm drop-in as upstream packages them.
    """
    try:
        major, minor = (int(part) for part in kubernetes_version.split(".")[:2])
    except ValueError:
        raise ValueError(SUPPORTED_KUBERNETES) from None
    for first, last, api in CONFIG_APIS:
        if major == 1 and first <= minor <= last:
            return api
    raise ValueError(SUPPORTED_KUBERNETES)


