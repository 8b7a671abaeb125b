"""
podnet: make every pod get its own IP.

    pyinfra inventory/<cluster>.py deploy.py

Runs the pod network's steps (tasks/deploys.py, POD_NETWORK) on every host, in order, each
deciding itself whether it applies to the host: what an interrupted run left, cleared; kernel
prerequisites; with `cluster_bootstrap` swap off and kubeadm's preflight tools; containerd
(with the CRI `cni` section); CNI plugins and 10-flannel.conflist; with `cluster_bootstrap`
kubelet, kubeadm and kubectl, then kubeadm init on the first control-plane host and kubeadm
join on the others; on control-plane hosts, node IPAM flags for kube-controller-manager (on
kubeadm clusters also recorded in the kubeadm-config ConfigMap, which `kubeadm upgrade`
regenerates the manifest from); the pod MTU and pod network checks; flanneld (DaemonSet or
unit); with `allow_pod_network_change`, the old network's cni0 removed. Settings come from
inventory data (see inventory/group_data/all.py) and are validated for the whole inventory
before any host is touched. Each host is asked once (one probe, which takes the node's run
lock); a rerun with unchanged settings changes nothing and restarts nothing.
"""

from pyinfra import host

from tasks.engine import pyinfra_compat
from tasks.deploys import POD_NETWORK, steps

pyinfra_compat.enable_tcp_nodelay([host])
pyinfra_compat.fast_operation_order()
steps(*POD_NETWORK)
