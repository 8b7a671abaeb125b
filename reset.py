"""
podnet reset: take the pod network podnet set up off some or all nodes.

    pyinfra inventory/<cluster>.py reset.py [--limit HOST] [--dry]

Removes what podnet installed for the pod network and what flannel left on the nodes (see
tasks/reset.py and the README section "Taking the pod network off (reset)"): the conflist
and CNI plugin binaries, the kube-flannel DaemonSet and its objects or the flanneld unit,
flannel's interfaces, iptables chains and nftables tables, /run/flannel and host-local's
records; puts kube-controller-manager's manifest or unit back as it was before podnet (or
takes out podnet's node IPAM flags). containerd and the kernel settings stay unless
`reset_containerd` / `reset_kernel` ask for them (e.g. `--data reset_kernel=true`).
Settings are validated for the whole inventory before any host is touched; each host is
asked once, and only what exists is removed, so a second reset changes nothing.
"""

from pyinfra import host

from tasks.engine import pyinfra_compat
from tasks.deploys import reset_steps

pyinfra_compat.enable_tcp_nodelay([host])
pyinfra_compat.fast_operation_order()
reset_steps()
