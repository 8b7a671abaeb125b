"""
Settings of the Vagrant test cluster only (hosts of inventory/vagrant.py are in the
`vagrant` group); inventory/group_data/all.py lists every setting with its default.

inventory/vagrant.py already sets, per machine, node_ip and flannel_iface (its address on
the private network) and, for the cluster, cluster_bootstrap = True and _sudo = True.

The flannel CNI plugin's sha256 is read from upstream's published `.sha256` file on the
first run and kept in inventory/artifacts.lock.yaml (commit it); nothing to pin here.
"""
