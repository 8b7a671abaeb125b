"""
podnet: make every pod get its own IP.

    pyinfra inventory/<cluster>.py deploy.py

Steps on every node, in order: kernel prerequisites, containerd (with the CRI `cni`
section), CNI plugins and 10-flannel.conflist; on control-plane hosts, node IPAM flags
for kube-controller-manager; then flanneld. Settings come from inventory data (see
inventory/group_data/all.py) and are validated for the whole inventory before any host
is touched. Each host is asked once (one probe); a rerun with unchanged settings
changes nothing and restarts nothing.
"""

from pyinfra import host, inventory, state

from tasks import cni, containerd, controller_manager, flannel, kernel, tcp_nodelay
from tasks.cluster import fetch_artifacts, first_control_plane, probe, settings_for

tcp_nodelay.enable([host])
settings = settings_for(host, inventory)
is_first_control_plane = first_control_plane(inventory, settings) == host.name
node = probe(host, settings, is_first_control_plane, diff=bool(state.config.DIFF))
binaries = fetch_artifacts(settings, node, host.name)

kernel.apply(settings, node)
containerd.apply(settings, node, binaries.containerd, binaries.runc)
cni.apply(settings, node, binaries.cni_plugins)

ipam_changed = False
if settings.is_control_plane:
    ipam_changed = controller_manager.apply(settings, node, host.name)

if settings.flannel_rollout == "daemonset" and is_first_control_plane:
    flannel.apply_daemonset(settings, node, ipam_changed)
elif settings.flannel_rollout == "systemd":
    flannel.apply_systemd(settings, node, binaries.flanneld)
