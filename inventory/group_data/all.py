"""
Every podnet setting, with its default and meaning. Uncomment and change what your
cluster needs; group data here applies to every inventory in this folder. Settings
marked (per host) may also be set per host in the inventory file; every other one must
have the same value on all hosts (podnet checks this before touching any host).

Checksums: a release that files/artifacts.yaml does not pin gets its sha256 from upstream's
published checksum on the first run and keeps it in the lock file (artifact_lock_file,
commit it); artifact_checksums pins one by hand and wins over both.

Written by `python3 -m tasks.docs` from the settings' declaration in tasks/settings/__init__.py.
"""

# IPv4 pod network: kube-controller-manager --cluster-cidr and flannel net-conf Network
# cluster_cidr = '10.244.0.0/16'

# prefix length of each node's podCIDR (IPv4)
# node_cidr_mask_size = 24

# IPv4 service network (--service-cluster-ip-range); must not overlap the pod network
# service_cluster_ip_range = '10.96.0.0/12'

# IPv6 pod network for dual stack, e.g. fd00:10:244::/56
# cluster_cidr_ipv6 = None

# prefix length of each node's IPv6 podCIDR
# node_cidr_mask_size_ipv6 = 64

# IPv6 service network for dual stack
# service_cluster_ip_range_ipv6 = None

# flannel backend: vxlan, host-gw, wireguard
# flannel_backend = 'vxlan'

# VXLAN network identifier (vxlan backend)
# flannel_vni = 1

# UDP port of the vxlan (default 8472) or wireguard (default 51820) backend
# flannel_port = None

# pod interface MTU written into the CNI delegate; unset = flanneld's FLANNEL_MTU
# flannel_mtu = None

# interface flanneld uses between nodes (--iface): a name such as eth1, or the node's address on it (the node_ip: the DaemonSet then gives each node its own address) (per host)
# flannel_iface = None

# how flanneld runs: daemonset (kube-flannel, applied with kubectl), systemd (a unit on every node) or external (deployed by something else)
# flannel_rollout = 'daemonset'

# flanneld image of the DaemonSet; its tag's release decides the DaemonSet's /healthz and /readyz probes (see Supported versions)
# flannel_image = 'docker.io/flannel/flannel:v0.28.9'

# seconds to wait for the flannel rollout and podCIDRs
# flannel_rollout_timeout = 300

# seconds a run waits for another run deploying the same node (its run lock) before it stops; 0: stop at once
# run_lock_wait = 0

# let a run change cluster_cidr or node_cidr_mask_size (or the IPv6 ones) that nodes' podCIDRs do not fit: podnet then registers those nodes again and removes their old cni0 (pods must be recreated)
# allow_pod_network_change = False

# containerd release (config.toml version 2 for 1.6-1.7, 3 for 2.0-2.2, 4 from 2.3: see Supported versions) (per host)
# containerd_version = '2.3.4'

# runc release (per host)
# runc_version = '1.4.3'

# containernetworking/plugins release (per host)
# cni_plugins_version = '1.9.1'

# flannel-io/cni-plugin release (the default is the one flannel v0.28.9's kube-flannel.yml ships) (per host)
# flannel_cni_plugin_version = '1.9.1-flannel3'

# flanneld release (systemd rollout) (per host)
# flanneld_version = '0.28.9'

# base URL that replaces the upstream download hosts (air-gapped sites); the upstream path is kept below it
# mirror_url = None

# who downloads the release files the nodes install: laptop (downloaded and verified on the laptop, each archive a node needs sent to it over SSH and unpacked there) or nodes (each node downloads what it needs itself from mirror_url, or upstream without one, with curl or wget; the laptop sends only commands); either way every file is checked against its sha256 on the node before it is activated
# release_download = 'laptop'

# let mirror_url be a plain http:// URL: release files and the checksums beside them are then read without TLS (anyone on the way can change both; podnet warns); a redirect from https to http is refused either way
# allow_insecure_http = False

# sha256 overrides/additions: {artifact: {version: {arch: sha256}}} (per host)
# artifact_checksums = {}

# checksum lock: sha256 resolved from upstream's published sums, written once and then read (commit it); a relative path is below the podnet checkout
# artifact_lock_file = 'inventory/artifacts.lock.yaml'

# resolve a sha256 that is neither pinned nor locked from upstream's published sums; false: every sum must be pinned (artifact_checksums, files/artifacts.yaml) or locked
# resolve_checksums = True

# laptop-side download cache
# download_cache_dir = '~/.cache/podnet'

# where CNI plugin binaries are installed
# cni_bin_dir = '/opt/cni/bin'

# where containerd looks for the CNI config
# cni_conf_dir = '/etc/cni/net.d'

# pod sandbox (pause) image of containerd; unset: the one kubeadm of kubernetes_version uses (see Supported versions), so kubeadm and containerd agree
# sandbox_image = None

# runc uses the systemd cgroup driver (SystemdCgroup)
# systemd_cgroup = True

# containerd CRI restrict_oom_score_adj (for nodes without CAP_SYS_RESOURCE)
# restrict_oom_score_adj = False

# inventory group whose hosts are control plane
# control_plane_group = 'control_plane'

# how kube-controller-manager runs: static-pod (kubeadm manifest), systemd, or external (managed elsewhere, e.g. a hosted control plane: podnet does not set its node IPAM flags; the flannel DaemonSet still needs a control-plane host with kubectl)
# kube_controller_manager_runtime = 'static-pod'

# kubeadm static pod manifest (static-pod runtime)
# kube_controller_manager_manifest = '/etc/kubernetes/manifests/kube-controller-manager.yaml'

# systemd unit whose ExecStart runs kube-controller-manager (systemd runtime)
# kube_controller_manager_unit = '/etc/systemd/system/kube-controller-manager.service'

# kubeconfig on control-plane hosts for kubectl (flanneld's systemd unit gets a kubeconfig of its own, with a token of flannel's ServiceAccount; this one only when no host is in the control-plane group)
# kubeconfig = '/etc/kubernetes/admin.conf'

# the node's own address (defaults to the inventory name when that is an IP) (per host)
# node_ip = None

# create the cluster with kubeadm on fresh machines: install kubelet, kubeadm and kubectl, kubeadm init on the first control-plane host, kubeadm join on the others (needs node_ip)
# cluster_bootstrap = False

# Kubernetes release of kubelet, kubeadm and kubectl and of the control plane kubeadm creates (cluster_bootstrap)
# kubernetes_version = '1.36.2'

# etcd client URLs of an etcd you run, such as ['http://127.0.0.1:2379']: kubeadm then creates no etcd (cluster_bootstrap; empty: kubeadm's local etcd)
# etcd_external_endpoints = []

# kubeadm preflight checks to ignore by name, such as ['SystemVerification'], for kubeadm init and join (cluster_bootstrap)
# kubeadm_ignore_preflight_errors = []

# KubeletConfiguration fields kubeadm gives every kubelet, such as {'failSwapOn': False} (cluster_bootstrap; cgroupDriver comes from systemd_cgroup)
# kubelet_configuration = {}

# KubeProxyConfiguration fields kubeadm gives kube-proxy, such as {'conntrack': {'maxPerCore': 0}} (cluster_bootstrap)
# kube_proxy_configuration = {}

# inventory data keys of your own deploys (names, or prefixes ending in *, such as ['my_app_*']) that podnet leaves alone instead of reporting them as unknown settings
# other_data_keys = []

# reset.py also stops containerd and removes what podnet installed for it (binaries, runc, unit, config.toml); every container on the node stops (per host)
# reset_containerd = False

# reset.py also removes podnet's modules-load.d and sysctl.d files (values stay until a reboot) (per host)
# reset_kernel = False
