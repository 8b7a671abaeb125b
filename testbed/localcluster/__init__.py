"""Local test bed: a cluster of real Debian nodes booted with systemd-nspawn.

    from testbed.localcluster import Cluster
    with Cluster(name="podnet", nodes=3, state_dir="/tmp/podnet-cluster") as c:
        c.ssh(c.nodes[0], "hostname")
        c.write_inventory("/tmp/podnet-cluster.inventory.py", {"some": "data"})

or from a shell (tear-down can run in another process; it reads state_dir/state.json):

    python3 -m testbed.localcluster up --name podnet --nodes 3 --state-dir /tmp/podnet-cluster
    python3 -m testbed.localcluster down --state-dir /tmp/podnet-cluster

Each node is a `bookworm` systemd system with sshd, on its own copy-on-write overlay of
a cached base rootfs, attached to a bridge the harness creates on a free private /24
(bridge .1, nodes .11, .12, ...).  Nodes have no default route and the host does no
forwarding or NAT: nodes reach each other and the host's bridge address, nothing else.
With ``ipv6=True`` (``up --ipv6``) the nodes also get IPv6 addresses ::11, ::12, ... from a
unique local /64 that overlaps nothing on the host (fd70:6e62:0:N::/64); the host gets no
IPv6 address, route or forwarding on the bridge, so IPv6 flows between the nodes only.

TEST-BED QUIRKS OF THIS HOST -- NOT TOOLKIT BEHAVIOUR
The toolkit under test must not copy any of these; they exist only because the nodes are
containers on this particular host (see /work/shared/reference/local-nodes.md):
- nspawn runs with SYSTEMD_SECCOMP=0, SYSTEMD_NSPAWN_API_VFS_WRITABLE=1 and
  --capability=all so containerd/runc can work inside a node.
- With a writable API VFS, systemd-networkd in the node leaves host0 down, so the harness
  sets the node address from the host (`nsenter -t <node PID 1> -n ip addr add ...`).
- nspawn mounts the cgroup v1 controllers read-only; after boot the harness remounts
  each controller read-write and remounts the /sys/fs/cgroup tmpfs read-write (from the
  host, in the node's mount namespace) so runc can create pod cgroups.
- Nodes cannot load kernel modules: the host provides overlay and br_netfilter.
- Every node's inotify instances count against the host root's one limit: the harness
  raises fs.inotify.max_user_instances (never lowers it) to what the nodes need (limits.py).
- This host's root lacks CAP_SYS_RESOURCE, so containerd in a node needs
  `restrict_oom_score_adj = true` (a toolkit *setting* the test inventory turns on).
"""

from .cluster import Cluster
from .net import choose_subnet, networks_in_use
from .node import Node
from .teardown import teardown
from .util import ClusterError

__all__ = ["Cluster", "ClusterError", "Node", "choose_subnet", "networks_in_use", "teardown"]
