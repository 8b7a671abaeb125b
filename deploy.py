"""
podnet: make every pod get its own IP.

    pyinfra inventory/<cluster>.py deploy.py

Steps on every node, in order: kernel prerequisites, containerd (with the CRI `cni`
section), CNI plugins and 10-flannel.conflist; with `cluster_bootstrap` (fresh machines,
such as the Vagrant cluster), kubelet, kubeadm and kubectl, then kubeadm init on the first
control-plane host and kubeadm join on the others; on control-plane hosts, node IPAM flags
for kube-controller-manager (on kubeadm clusters also recorded in the kubeadm-config
ConfigMap, which `kubeadm upgrade` regenerates the manifest from); then flanneld. Settings come from inventory data (see
inventory/group_data/all.py) and are validated for the whole inventory before any host
is touched. Each host is asked once (one probe); a rerun with unchanged settings
changes nothing and restarts nothing.
"""

from pyinfra import host, inventory, state

from tasks import (cni, containerd, controller_manager, flannel, interrupted, kernel, kubeadm, kubeadm_config,
                   pod_network, pyinfra_tuning, run_report)
from tasks.cluster import fetch_artifacts, first_control_plane, probe, settings_for

pyinfra_tuning.enable_tcp_nodelay([host])
pyinfra_tuning.fast_operation_order()
run_report.register(state)  # at the end: what failed hosts were left without
settings = settings_for(host, inventory)
first_control_plane_name = first_control_plane(inventory)
is_first_control_plane = first_control_plane_name == host.name
node = probe(host, settings, is_first_control_plane, diff=bool(state.config.DIFF))
binaries = fetch_artifacts(settings, node, host.name)
flannel.pod_mtu_fits(settings, node, host.name)
nodes_to_register_again = pod_network.checked(settings, node, host.name, is_first_control_plane)

interrupted.leftovers_removed(node)
kernel.apply(settings, node)
if settings.cluster_bootstrap:
    kubeadm.prerequisites(settings, node, host.name)
containerd.apply(settings, node, binaries.containerd, binaries.runc)
cni.apply(settings, node, binaries.cni_plugins)

bootstrap = kubeadm.Bootstrap()
if settings.cluster_bootstrap:
    bootstrap = kubeadm.apply(settings, node, binaries.kubernetes, host.name, first_control_plane_name)

ipam_changed = False
if settings.is_control_plane and settings.kube_controller_manager_runtime != "external":
    ipam_changed = controller_manager.apply(settings, node, host.name,
                                            created_by_kubeadm=bootstrap.creates_control_plane)
    if kubeadm_config.applies(settings, is_first_control_plane):  # what kubeadm upgrade regenerates it from
        kubeadm_config.apply(settings, node, host.name, cluster_created=bootstrap.creates_cluster,
                             diff=bool(state.config.DIFF))

pod_network.registered_again(settings, node, host.name, nodes_to_register_again)

if settings.flannel_rollout == "daemonset" and is_first_control_plane:
    flannel.apply_daemonset(settings, node, ipam_changed, cluster_created=bootstrap.creates_cluster)
elif settings.flannel_rollout == "systemd":
    flannel.apply_systemd(settings, node, binaries.flanneld,
                          check_pod_cidrs=flannel.checks_pod_cidrs(settings, is_first_control_plane),
                          ipam_changed=ipam_changed)
    if first_control_plane_name is None:
        flannel.say_pod_cidrs_unchecked(settings)

pod_network.old_bridge_removed(settings, node)
