"""
A node as a deploy left it, for the reset plan tests (tests/test_reset_plan.py, tests/test_ownership.py):
its probe answer, the inventory of the plan tests' two @fake hosts, and reset.py run on them.
"""

from __future__ import annotations

import base64
from pathlib import Path

from tasks import cni, flannel
from tasks.engine import ownership
from tasks.engine.probe import NodeState
from tasks.reset_controller_manager import BACKUPS_QUERY
from tests.support.kubeadm import KUBEADM_MANIFEST
from tests.support.plan import CP, POD_CIDRS, Cluster, FakeNode, Run, probe_answer, run_pyinfra, write_inventory

BACKUP = "/var/lib/podnet/backup/kube-controller-manager.yaml.0123456789ab"
CHAIN_LINES = ["iptables-nft nat FLANNEL-POSTRTG", "iptables-nft filter FLANNEL-FWD",
               "ip6tables-legacy nat FLANNEL-POSTRTG"]
OBJECTS = ["namespace/kube-flannel", "serviceaccount/flannel", "clusterrole.rbac.authorization.k8s.io/flannel",
           "clusterrolebinding.rbac.authorization.k8s.io/flannel", "configmap/kube-flannel-cfg",
           "daemonset.apps/kube-flannel"]


def deployed(cluster: Cluster, host: str, **data) -> NodeState:
    """A node as a deploy left it, with flannel's links, chains, nftables tables and directories,
    one pod on cni0, a plugin of someone else's in the CNI bin dir and (control plane) podnet's
    backup of the manifest and the flannel objects."""
    node = cluster.converged(host, **data)
    # the node's record of what podnet wrote there (the only record of flanneld's credentials)
    node.contents[ownership.LEDGER] = "".join(f"{digest} {path}\n" for path, digest in node.hashes.items()).encode()
    node.hashes["/opt/cni/bin/someone-elses-plugin"] = "0" * 64
    node.listings[flannel.SYS_NET] = ["lo", "eth0", "cni0", "flannel.1", "veth1234"]
    node.queries[flannel.CHAINS_QUERY] = (0, CHAIN_LINES)
    node.queries[flannel.NFT_QUERY] = (0, ["ip flannel-ipv4"])
    node.queries["cni0"] = (0, ["addr 10.244.0.1/24", "ports 1"])
    node.features = {path: True for path in (flannel.RUN_DIR, cni.HOST_LOCAL_RECORDS)}
    if host == CP:
        node.queries[BACKUPS_QUERY] = (0, [f"{BACKUP} {base64.b64encode(KUBEADM_MANIFEST.encode()).decode()}"])
        if cluster.settings(host, **data).flannel_rollout == "daemonset":
            node.queries[flannel.OBJECTS_QUERY] = (0, OBJECTS)
    return node


def inventory(cluster: Cluster, cp: NodeState, worker: NodeState, **data) -> Path:
    nodes = [FakeNode("cp1", "control_plane", cluster.data(**data), probe_answer(cp), {"get nodes": POD_CIDRS}),
             FakeNode("w1", "workers", cluster.data(**data), probe_answer(worker))]
    return write_inventory(cluster.tmp / "inventory.py", nodes)


def run_reset(inventory_path: Path, *options: str) -> Run:
    return run_pyinfra(inventory_path, *options, deploy="reset.py")
