"""
podnet reset: take the pod network podnet set up off some or all nodes.

    pyinfra inventory/<cluster>.py reset.py [--limit HOST] [--dry]

Removes what podnet installed for the pod network and what flannel left on the nodes (see
tasks/reset.py and the README section "Taking the pod network off (reset)"): the conflist
and CNI plugin binaries, the kube-flannel DaemonSet and its objects or the flanneld unit,
flannel's interfaces, iptables chains and nftables tables, /run/flannel and host-local's
records; puts kube-controller-manager's manifest or unit back as it was before podnet (or
takes out podnet's node IPAM flags). containerd and the kernel settings stay unless
`reset_containerd` / `reset_kernel` ask for them (e.g. `--data reset_kernel=true`).
Settings are validated for the whole inventory before any host is touched; each host is
asked once, and only what exists is removed, so a second reset changes nothing.
"""

from pyinfra import host, inventory, state

from tasks import cni, kernel, pyinfra_tuning, reset
from tasks.cluster import fetch_artifacts, first_control_plane, settings_for
from tasks.probe import node_state

pyinfra_tuning.enable_tcp_nodelay([host])
pyinfra_tuning.fast_operation_order()
settings = settings_for(host, inventory)
first_control_plane_name = first_control_plane(inventory)
reset.whole_cluster_covered(settings, inventory, state.is_host_in_limit, first_control_plane_name)
is_first_control_plane = first_control_plane_name == host.name
node = node_state(host, reset.probe_request(settings, is_first_control_plane))
binaries = fetch_artifacts(settings, node, host.name)
reset.pods_losing_network(node, host.name)

reset.remove_files("reset: 10-flannel.conflist removed", node, [cni.conflist_file(settings).path],
                   "the CNI config (no new pod gets podnet's network)")
if reset.removes_flannel(settings):
    if is_first_control_plane:
        reset.flannel_daemonset_deleted(settings, node)
    reset.flanneld_unit_removed(node)
reset.remove_files("reset: CNI plugin binaries removed", node, [f.path for f in binaries.cni_plugins],
                   "the CNI plugins podnet installs")
reset.network_state_removed(settings, node)
if reset.resets_controller_manager(settings):
    reset.controller_manager_restored(settings, node, host.name)
if settings.reset_kernel:
    reset.remove_files("reset: podnet's kernel settings files removed (reset_kernel)", node,
                       [kernel.MODULES_LOAD_PATH, kernel.SYSCTL_PATH, *kernel.OLD_SYSCTL_PATHS],
                       "podnet's modules-load.d and sysctl.d files")
if settings.reset_containerd:
    reset.containerd_removed(node, binaries.containerd, binaries.runc)
