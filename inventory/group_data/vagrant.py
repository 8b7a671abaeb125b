"""
Settings of the Vagrant test cluster only (hosts of inventory/vagrant.py are in the
`vagrant` group); inventory/group_data/all.py lists every setting with its default.

inventory/vagrant.py already sets, per machine, node_ip and flannel_iface (its address on
the private network) and, for the cluster, cluster_bootstrap = True and _sudo = True.

The flannel CNI plugin has no sha256 pinned in files/artifacts.yaml: pin the release you
use once, from the `.sha256` file published beside the archive on its release page, e.g.
  artifact_checksums = {"flannel_cni_plugin": {"1.7.1-flannel1": {"amd64": "<sha256>"}}}
"""

# artifact_checksums = {"flannel_cni_plugin": {"1.7.1-flannel1": {"amd64": "<sha256>"}}}
