"""
Example inventory for a real cluster: `pyinfra inventory/example.py deploy.py`.

Hosts are in two groups; `control_plane` (the `control_plane_group` setting) marks the
hosts that run kube-controller-manager, and the first of them applies the flannel
DaemonSet. Per-host data such as the interface flanneld uses between nodes goes with
the host; settings for the whole cluster go in group data (inventory/group_data/all.py
documents every one).
"""

control_plane = (
    [
        ("cp1.example.net", {"node_ip": "192.168.50.10", "flannel_iface": "eth1"}),
    ],
    {},
)

workers = (
    [
        ("node1.example.net", {"node_ip": "192.168.50.21", "flannel_iface": "eth1"}),
        ("node2.example.net", {"node_ip": "192.168.50.22", "flannel_iface": "eth1"}),
    ],
    {},
)

# Cluster-wide settings for this cluster only (they apply to every host above).
all = (
    ["cp1.example.net", "node1.example.net", "node2.example.net"],
    {
        "ssh_user": "root",
        "cluster_cidr": "10.244.0.0/16",
        "node_cidr_mask_size": 24,
        "service_cluster_ip_range": "10.96.0.0/12",
        "flannel_backend": "vxlan",
        # Release files without a sha256 in files/artifacts.yaml (the flannel CNI plugin) are
        # checked against upstream's published sum, locked in inventory/artifacts.lock.yaml on
        # the first run: commit that file. Strict sites: "resolve_checksums": False.
    },
)
