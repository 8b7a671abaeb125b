"""
podnet doctor: walk a live cluster's pod-IP path, node by node, and name the first broken link.

    pyinfra inventory/<cluster>.py doctor.py [-y]
    PODNET_DOCTOR_JSON=verdict.json pyinfra inventory/<cluster>.py doctor.py -y   # also as JSON ("-": stdout)

Read-only: it changes nothing on any node and takes no run lock. Each host is asked once (one probe: the
links kube-controller-manager's node IPAM -> podCIDR -> flanneld -> subnet.env -> backend device ->
containerd's CNI settings -> conflist -> plugins -> kernel -> cni0 -> host-local), then every node pings the
others' pod subnets at once (the datapath, bounded in time). The verdict: a row per node, a column per link,
and for each broken link what was seen, why it breaks pods and the fix (tasks/doctor/). Exit status 0 when
every link holds on every node.
"""

from pyinfra import host, inventory

from tasks.doctor.run import examine
from tasks.engine import pyinfra_compat

pyinfra_compat.enable_tcp_nodelay([host])
examine(host, inventory)
