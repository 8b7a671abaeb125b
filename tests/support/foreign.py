"""What the doctor reads from a cluster set up the usual way (kubeadm's node IPAM flags for networking.podSubnet,
flannel's own kube-flannel.yml v0.28.9 unchanged but for its images), and says it read from where: the unit tests
on captured answers (tests/test_doctor_foreign.py) and the end-to-end test on such a cluster
(tests/test_reset_e2e.py) hold the doctor to the same sentences."""

from __future__ import annotations

CONFIGMAP = "ConfigMap kube-flannel/kube-flannel-cfg"


def kube_flannel_sources(control_plane: str) -> dict[str, str]:
    """ExpectedNetwork.sources for such a cluster whose first control-plane host is ``control_plane``."""
    return {
        "cluster_cidrs": f"kube-controller-manager --cluster-cidr in {control_plane}'s running command line",
        "node_masks": f"kube-controller-manager's default for IPv4: no --node-cidr-mask-size* in {control_plane}'s "
                      "running command line",
        "backend": f"{CONFIGMAP} net-conf.json Backend Type",
        "vni": f"flannel's default: no Backend VNI in {CONFIGMAP} net-conf.json",
        "port": f"flannel's default: no Backend Port in {CONFIGMAP} net-conf.json",
        "mtu": f"flanneld's FLANNEL_MTU: no mtu in the flannel delegate of {CONFIGMAP} cni-conf.json",
        "rollout": "DaemonSet kube-flannel/kube-flannel-ds runs flanneld",
        "flannel_version": "image docker.io/flannel/flannel:v0.28.9 of DaemonSet kube-flannel/kube-flannel-ds",
    }
