"""
The pod network doctor.py expects to find: one value that every check reads, never the settings themselves.

``ExpectedNetwork`` holds what the links of the pod IP's path are held to: the cluster CIDR(s) and node
mask(s) (kube-controller-manager's node IPAM, the nodes' podCIDRs, subnet.env), flannel's backend with its
VNI, UDP port and pod MTU (flannel.1, subnet.env's FLANNEL_MTU), how flanneld runs (DaemonSet, systemd unit,
deployed by something else) and the flannel release (whether it serves /readyz). Each value says where it
came from (``sources``: field name -> e.g. "setting cluster_cidr"), so the verdict can say what it held a
node to and why.

``from_settings`` builds it from the validated Settings of a cluster podnet deployed. For a cluster podnet
did not deploy, a builder that reads kube-controller-manager's flags and the kube-flannel-cfg ConfigMap
where the inventory does not set a value fills the same fields, with its own ``sources`` (e.g.
"kube-controller-manager --cluster-cidr on cp1", "ConfigMap kube-flannel/kube-flannel-cfg net-conf.json");
the checks (tasks/doctor/links.py) do not change.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from tasks.flannel import image_flannel_version
from tasks.releases import flannel_serves_health
from tasks.settings import Settings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# flannel's defaults for what net-conf may leave out (pkg/backend/vxlan: VNI 1, port 8472; wireguard 51820).
DEFAULT_PORTS = {"vxlan": 8472, "wireguard": 51820}


@dataclass(frozen=True)
class ExpectedNetwork:
    """
    What the pod network should be, cluster-wide.

    - ``cluster_cidrs``: the pod network, one per IP family, IPv4 first (kube-controller-manager
      --cluster-cidr, flannel net-conf Network / IPv6Network).
    - ``node_masks``: the prefix length of a node's podCIDR, aligned with ``cluster_cidrs``.
    - ``backend``: flannel's backend type (vxlan, host-gw, wireguard); ``vni`` (vxlan only, else None) and
      ``port`` (UDP; None for host-gw) as flanneld uses them, flannel's defaults filled in.
    - ``mtu``: the pod MTU written into the CNI delegate; None when flanneld derives it (FLANNEL_MTU in
      subnet.env is then what pods get).
    - ``rollout``: how flanneld runs: "daemonset", "systemd" or "external".
    - ``flannel_version``: flanneld's release (e.g. "0.28.9"), None when unknown (its image has no release tag).
    - ``sources``: field name -> where its value came from, in words.
    """

    cluster_cidrs: tuple[Network, ...]
    node_masks: tuple[int, ...]
    backend: str
    vni: int | None
    port: int | None
    mtu: int | None
    rollout: str
    flannel_version: str | None
    sources: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.cluster_cidrs or len(self.node_masks) != len(self.cluster_cidrs):
            raise ValueError("one node mask per cluster CIDR, at least one")
        object.__setattr__(self, "sources", MappingProxyType(dict(self.sources)))

    @property
    def dual_stack(self) -> bool:
        return len(self.cluster_cidrs) > 1

    @property
    def families(self) -> tuple[int, ...]:
        """The IP versions of the pod network (4, or 4 and 6)."""
        return tuple(net.version for net in self.cluster_cidrs)

    def cluster_cidr(self, version: int) -> Network | None:
        """The pod network of IP ``version``; None when the cluster has none of that family."""
        return next((net for net in self.cluster_cidrs if net.version == version), None)

    def node_mask(self, version: int) -> int | None:
        """The podCIDR prefix length of IP ``version``; None when the cluster has none of that family."""
        return next((m for net, m in zip(self.cluster_cidrs, self.node_masks) if net.version == version), None)

    @property
    def serves_readyz(self) -> bool:
        """flanneld serves /readyz on --healthz-port (tasks/releases.py FLANNEL_HEALTH) for a DaemonSet podnet
        renders; for the other rollouts nothing is known about its flags."""
        return self.rollout == "daemonset" and flannel_serves_health(self.flannel_version)

    def source(self, name: str) -> str:
        """Where the value of field ``name`` came from ("" when not said)."""
        return self.sources.get(name, "")


def from_settings(s: Settings) -> ExpectedNetwork:
    """The network a podnet deploy with these validated Settings (tasks/settings) makes."""
    cidrs: tuple[Network, ...] = (s.cluster_cidr,) + ((s.cluster_cidr_ipv6,) if s.cluster_cidr_ipv6 else ())
    masks = (s.node_cidr_mask_size,) + ((s.node_cidr_mask_size_ipv6,) if s.cluster_cidr_ipv6 else ())
    version = s.flanneld_version if s.flannel_rollout == "systemd" else image_flannel_version(s.flannel_image)
    sources = {
        "cluster_cidrs": "setting cluster_cidr" + (" and cluster_cidr_ipv6" if s.cluster_cidr_ipv6 else ""),
        "node_masks": "setting node_cidr_mask_size" + (" and node_cidr_mask_size_ipv6" if s.cluster_cidr_ipv6 else ""),
        "backend": "setting flannel_backend",
        "vni": "setting flannel_vni",
        "port": "setting flannel_port" if s.flannel_port is not None else "flannel's default port",
        "mtu": "setting flannel_mtu" if s.flannel_mtu is not None else "flanneld's FLANNEL_MTU (flannel_mtu unset)",
        "rollout": "setting flannel_rollout",
        "flannel_version": "setting flanneld_version" if s.flannel_rollout == "systemd" else "setting flannel_image",
    }
    return ExpectedNetwork(cluster_cidrs=cidrs, node_masks=masks, backend=s.flannel_backend,
                           vni=s.flannel_vni if s.flannel_backend == "vxlan" else None,
                           port=s.effective_flannel_port, mtu=s.flannel_mtu, rollout=s.flannel_rollout,
                           flannel_version=version, sources=sources)
