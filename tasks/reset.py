"""
Reset: take podnet's pod network off nodes (``pyinfra inventory/<cluster>.py reset.py``).

Each host is asked once (one probe, ``probe_request``); then only what exists is removed, so a
second reset changes nothing:

- the flannel DaemonSet and the objects podnet's manifest creates with it (read from the
  same rendered manifest, tasks.flannel.render_manifest), deleted with kubectl from the first
  control-plane host, the DaemonSet first and in the foreground (its pods gone before anything
  else goes); podnet's copy of the manifest; or the flanneld systemd unit stopped and
  disabled, with its unit file, binary and net-conf.json;
- 10-flannel.conflist, and the CNI configs podnet had moved aside (``*.podnet-disabled``) put
  back; the CNI plugin binaries podnet installed;
- flannel's interfaces (cni0 when each of its addresses is in the cluster CIDR of its family,
  flannel.<VNI>, flannel-v6.<VNI>, flannel-wg, flannel-wg-v6), its gateway routes of both
  families to other nodes' podCIDRs through the node's own interface (host-gw, DirectRouting),
  its iptables chains (FLANNEL-POSTRTG, FLANNEL-FWD and the rules jumping to them, in the
  nft and legacy iptables and ip6tables), its nftables tables (flannel-ipv4, flannel-ipv6),
  /run/flannel and host-local's records /var/lib/cni/networks/cbr0;
- on control-plane hosts, kube-controller-manager's manifest or unit put back from podnet's
  backup, or without podnet's node IPAM flags (tasks.reset_controller_manager);
- with ``reset_kernel``, podnet's modules-load.d and sysctl.d files; with ``reset_containerd``,
  containerd stopped and disabled, its binaries, runc, unit and config.toml removed.

Only what podnet installed goes (tasks/engine/ownership.py): a file is removed when its digest
is the one podnet recorded installing there (or, for a file podnet recorded nothing about, the
one this release installs); where the deploy replaced a file it had not installed, the original
it kept is put back; every other file stays byte for byte. With ``flannel_rollout = 'external'``,
flannel's own interfaces, chains and directories stay too. Each step lives with the concern it
undoes (kernel, containerd, cni, flannel, pod_network, reset_controller_manager); this module
holds their order.

Pods keep running but lose their network on the node (their veths are detached from the
deleted cni0); podnet never deletes them. With the DaemonSet, flanneld runs on every node,
so a reset covers every host of the inventory or none (ResetError before any host is touched).
"""

from __future__ import annotations

from tasks import cni, containerd, flannel, kernel, pod_network, reset_controller_manager
from tasks.engine.context import Step
from tasks.errors import ResetError
from tasks.settings import Settings

__all__ = ["RESET", "ResetError", "whole_cluster_covered"]


def whole_cluster_covered(s: Settings, inventory, in_run, first_control_plane: str | None) -> None:
    """With the DaemonSet, refuse (before any host is touched) a reset that leaves hosts out:
    flanneld runs on every node from one DaemonSet, which only a whole reset may delete, with
    kubectl on the first control-plane host."""
    if s.flannel_rollout != "daemonset":
        return
    left_out = [h.name for h in inventory if not in_run(h)]
    if left_out:
        raise ResetError(
            f"flannel_rollout = 'daemonset': flanneld runs on every node from the kube-flannel DaemonSet, so a reset "
            f"covers all hosts of the inventory or none; this run leaves out {', '.join(left_out)} (--limit). "
            "Run the reset without --limit, or use flannel_rollout = 'systemd' to take single nodes off")
    if first_control_plane is None:
        raise ResetError(f"flannel_rollout = 'daemonset': the kube-flannel DaemonSet is deleted with kubectl from a "
                         f"control-plane host, and no host is in group {s.control_plane_group!r}; add one")


# The reset, in the order its steps run on every host (reset.py): no new pod gets podnet's network,
# flanneld goes (its pods gone before anything else), then the plugins, then what flanneld and the
# bridge made, then kube-controller-manager's flags; kernel files and containerd only when asked.
RESET: tuple[Step, ...] = (
    pod_network.RESET_WARNING,
    cni.RESET_CONFLIST,
    flannel.RESET,
    cni.RESET_PLUGINS,
    flannel.RESET_NETWORK,
    reset_controller_manager.RESET,
    kernel.RESET,
    containerd.RESET,
)
