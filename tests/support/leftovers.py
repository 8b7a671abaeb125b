"""What of podnet's pod network is left on a test node (the end-to-end reset tests look for each after a reset)."""

from __future__ import annotations

from testbed.localcluster import Node
from testbed.podbed import CLUSTER_CIDR_IPV6, PodBed

PODNET_FILES = ["/etc/cni/net.d/10-flannel.conflist", "/usr/local/bin/flanneld", "/etc/systemd/system/flanneld.service",
                "/etc/kube-flannel/net-conf.json", "/etc/podnet/kube-flannel.yml"]


def leftovers(bed: PodBed, node: Node) -> dict[str, list[str]]:
    """What of podnet's pod network is on the node: files (with every CNI plugin binary), links,
    iptables chains and rules naming flannel's chains, directories, a running flanneld."""
    def lines(command: str) -> list[str]:
        return sorted(bed.sh(node, command + "; true").splitlines())

    return {
        "files": lines(f"for f in {' '.join(PODNET_FILES)}; do [ -e $f ] && echo $f; done; "
                       "ls -1A /opt/cni/bin 2>/dev/null | sed 's|^|/opt/cni/bin/|'"),
        "links": lines("ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E '^(cni0|flannel)'"),
        "chains": lines("for t in iptables-nft iptables-legacy ip6tables-nft ip6tables-legacy; do "
                        "$t-save 2>/dev/null | grep FLANNEL | sed \"s/^/$t: /\"; done"),
        "dirs": lines("for d in /run/flannel /var/lib/cni/networks/cbr0; do [ -e $d ] && echo $d; done"),
        "flanneld": lines("pgrep -x flanneld >/dev/null && echo running"),
    }


NOTHING = {"files": [], "links": [], "chains": [], "dirs": [], "flanneld": []}


def pod_routes(bed: PodBed, node: Node) -> list[str]:
    """The node's routes into the pod networks of both families (the bed's cluster CIDR and CLUSTER_CIDR_IPV6),
    through any device: flanneld's, cni0's or host-gw's through the node's link."""
    return bed.sh(node, f"ip -o -4 route show root {bed.cluster_cidr}; ip -o -6 route show root {CLUSTER_CIDR_IPV6}"
                  ).splitlines()
