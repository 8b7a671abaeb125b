"""The host's per-user inotify limit, which every node shares.

The nodes are containers without a user namespace of their own: every inotify instance
their processes create (systemd, logind, dbus, containerd, the kubelet's file watchers,
kube-proxy, the control plane) is charged to the host's root user, against ONE limit,
`fs.inotify.max_user_instances` (Debian's default: 128). Counted on a running test
cluster with Kubernetes: about 17 instances per node (systemd 5-6, the kubelet 6-7,
containerd 1-2, logind 1, dbus 1, kube-proxy 1) and about 15 more for the control plane.
At 128, a 12-node bed runs out while its kubelets start: the first few register, the
kubelet of every later node exits with "inotify_init: too many open files" and the bed
reports "nodes registered: [4 of 12]".

So the bed raises that limit (never lowers it) before booting, to what is in use on the
host plus PER_NODE for each new node. It is a limit, not a kernel behaviour: raising it
changes nothing for a process that stays under the old one, which is why it is left
raised afterwards (lowering it while another bed runs would break that bed).
"""

from __future__ import annotations

import os
from pathlib import Path

from .util import ClusterError, log

MAX_USER_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")
PER_NODE = 32  # inotify instances a node may need: about 17 measured (module docstring), with room


def inotify_instances_in_use(proc: Path = Path("/proc")) -> int:
    """How many inotify instances the host's processes hold now (every user: the nodes are root)."""
    count = 0
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:  # the process ended, or is not ours to read
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == "anon_inode:inotify":
                    count += 1
            except OSError:
                continue
    return count


def inotify_instances_needed(nodes: int, in_use: int) -> int:
    """The limit ``nodes`` more nodes need: what is in use plus PER_NODE each."""
    return in_use + PER_NODE * nodes


def ensure_inotify_instances(nodes: int, limit_file: Path = MAX_USER_INSTANCES) -> int:
    """Raise fs.inotify.max_user_instances to what ``nodes`` more nodes need, if it is lower.
    Returns the limit now in force. Raises ClusterError when it cannot be raised."""
    current = int(limit_file.read_text())
    needed = inotify_instances_needed(nodes, inotify_instances_in_use())
    if current >= needed:
        return current
    try:
        limit_file.write_text(f"{needed}\n")
    except OSError as error:
        raise ClusterError(f"{nodes} nodes need fs.inotify.max_user_instances >= {needed} (every node's "
                           f"systemd, containerd and kubelet count against root's one limit), it is {current} "
                           f"and could not be raised: {error}; run: sysctl -w fs.inotify.max_user_instances="
                           f"{needed}") from error
    log.info("fs.inotify.max_user_instances raised from %d to %d for %d node(s)", current, needed, nodes)
    return needed
