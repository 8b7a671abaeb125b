"""
The Vagrant test cluster (the Vagrantfile at the repository root):

    vagrant up
    pyinfra -y inventory/vagrant.py deploy.py

Vagrant is asked which machines run and how to reach them (`vagrant status`, `vagrant
ssh-config`; no pyinfra connector involved). Hosts are the running machines, in the
`control_plane` and `workers` groups; each one's node_ip and flannel_iface are its address
on the private network, never Vagrant's NAT interface. The cluster is created on the first
run (cluster_bootstrap) and reached as the vagrant user with sudo. Settings for this cluster
only go in inventory/group_data/vagrant.py (group data of the `vagrant` group), settings for
every cluster in inventory/group_data/all.py.
"""

import sys
from pathlib import Path

from pyinfra import logger

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from tasks.vagrant import CLUSTER_DATA, inventory as _vagrant_inventory  # noqa: E402

_groups = _vagrant_inventory(_ROOT, warn=logger.warning)

control_plane = _groups["control_plane"]
workers = _groups["workers"]
vagrant = ([name for hosts in _groups.values() for name, _ in hosts], dict(CLUSTER_DATA))
