"""
The datapath, the last link: from every node, every other node's pod subnet is reachable over the backend,
including a don't-fragment packet of exactly the pod MTU.

One command per node, run on all nodes at once (a pyinfra operation): it pings every other node's flannel
device address (flannel.1, flannel-v6.1) and cni0 gateway, all targets concurrently, each with a short
timeout (``TIMEOUT`` seconds, the whole command bounded by ``BOUND``), so a dead link costs its timeout once,
not once per pair. Each target is asked twice: a plain ping, and one with the don't-fragment bit whose IP
packet is exactly the pod MTU (ICMP payload MTU-28 for IPv4, MTU-48 for IPv6).

Who is to blame: a node that no other node reaches and that reaches none, while the others reach each
other, is the broken one (a firewall on it, its link's MTU); a failure between two nodes that is not
explained so is said by the node it was seen from.
"""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass

from tasks.doctor.links import Broken, Cluster, Node, broken
from tasks.engine import answers
from tasks.engine.answers import BadField

TIMEOUT = 1  # seconds a target gets (ping -W)
BOUND = 10  # seconds the whole command may take
KINDS = ("reach", "mtu")
HEADERS = {4: 28, 6: 48}  # IPv4 + ICMP, IPv6 + ICMPv6 header bytes


@dataclass(frozen=True)
class Target:
    node: str  # the node it belongs to
    address: str
    what: str  # "flannel.1", "cni0"...


def pod_mtu(node: Node, mtu: int | None) -> int | None:
    """The pod MTU on ``node``: the expected one, else flanneld's FLANNEL_MTU."""
    if mtu is not None:
        return mtu
    value = (node.subnet_env or {}).get("FLANNEL_MTU")
    return int(value) if value and value.isdigit() else None


def targets(nodes: dict[str, Node], cluster: Cluster) -> dict[str, list[Target]]:
    """Node -> what each node pings of it: its flannel devices' addresses and its cni0 gateways."""
    found: dict[str, list[Target]] = {}
    for name, node in nodes.items():
        mine = [Target(name, str(a.ip), device) for device, addresses in sorted(node.view.addresses.items())
                for a in addresses if not a.ip.is_link_local]
        for cidr in (cluster.pod_cidrs or {}).get(name, []):
            gateway = next(ipaddress.ip_network(cidr).hosts())
            if node.state.queries.get("cni0", (1, []))[0] == 0:
                mine.append(Target(name, str(gateway), "cni0"))
        found[name] = mine
    return found


def command(to: list[Target], mtu: int | None) -> str:
    """The one command a node runs: every target pinged concurrently; prints "<kind> <address> <exit status>"."""
    parts = []
    for target in to:
        version = ipaddress.ip_address(target.address).version
        address = shlex.quote(target.address)
        parts.append(f"( ping -{version} -n -q -c 2 -i 0.2 -W {TIMEOUT} {address} >/dev/null 2>&1; "
                     f"echo reach {address} $? ) &")
        if mtu is not None:
            parts.append(f"( ping -{version} -n -q -c 2 -i 0.2 -W {TIMEOUT} -M do -s {mtu - HEADERS[version]} "
                         f"{address} >/dev/null 2>&1; echo mtu {address} $? ) &")
    return f"timeout {BOUND} sh -c {shlex.quote(' '.join(parts) + ' wait')}; true"


def parse(lines: list[str], host_name: str = "") -> dict[tuple[str, str], bool]:
    """(kind, address) -> answered, from ``command``'s stdout."""
    def line(text: str) -> tuple[tuple[str, str], bool]:
        kind, address, status = answers.fields(text, 3, " ")
        if kind not in KINDS:
            raise BadField("neither reach nor mtu")
        ipaddress.ip_address(address)
        return (kind, address), answers.exit_status(status) == 0
    return dict(answers.records(host_name, "the datapath check", lines, line))


def verdict(tried: dict[str, list[Target]], answered: dict[str, dict[tuple[str, str], bool]],
            mtus: dict[str, int | None], named: frozenset[str] = frozenset()) -> dict[str, Broken | None]:
    """Node -> the datapath link's verdict, from what each node tried (``tried``) and what answered (a target
    without an answer, e.g. the command cut at BOUND, counts as not answered). Pairs with a node in ``named``
    (an earlier link of it is broken, and named as such) are left out: that node is why they fail."""
    pairs: dict[tuple[str, str, str], bool] = {}  # (kind, source, destination) -> all its targets answered
    for source, to in tried.items():
        if source in named:
            continue
        for target in to:
            if target.node in named:
                continue
            for kind in KINDS if mtus.get(source) is not None else ("reach",):
                key = (kind, source, target.node)
                ok = answered.get(source, {}).get((kind, target.address), False)
                pairs[key] = pairs.get(key, True) and ok
    result: dict[str, Broken | None] = {name: None for name in tried}
    for kind in KINDS:
        failed = {(s, d) for (k, s, d), ok in pairs.items() if k == kind and not ok}
        if not failed:
            continue
        cut = [n for n in tried if _cut_off(n, kind, pairs)]
        for name in cut:
            others = sorted({d for s, d in failed if s == name} | {s for s, d in failed if d == name})
            result[name] = result[name] or _broken(name, kind, others, mtus.get(name), cut_off=True)
        for source, destination in sorted(failed):
            if source in cut or destination in cut:
                continue
            result[source] = result[source] or _broken(source, kind, [destination], mtus.get(source), cut_off=False)
    return result


def _cut_off(name: str, kind: str, pairs: dict) -> bool:
    """Every pair with ``name`` fails both ways, and some pair without it answers."""
    mine = [ok for (k, s, d), ok in pairs.items() if k == kind and name in (s, d)]
    rest = [ok for (k, s, d), ok in pairs.items() if k == kind and name not in (s, d)]
    return bool(mine) and not any(mine) and any(rest)


def _broken(name: str, kind: str, others: list[str], mtu: int | None, cut_off: bool) -> Broken:
    who = ", ".join(others)
    where = name if cut_off else f"{name} or {who}"
    if kind == "reach":
        seen = (f"{name} reaches no other node's pod subnet and none reaches it ({who})" if cut_off
                else f"{name} cannot reach the pod subnet of {who}")
        return broken("unreachable" if cut_off else f"no way to {who}", name, "datapath", seen,
                      "pods on it cannot reach pods on other nodes (and DNS, Services behind them time out); pods "
                      "still get IPs", "check what drops the backend's packets between the nodes: a firewall rule "
                      f"for the backend's UDP port (vxlan: 8472) on {where}, e.g. `iptables -S | grep 8472`, or the "
                      "NIC's VXLAN checksum offload (`ethtool -K flannel.1 tx-checksum-ip-generic off`)")
    seen = (f"a don't-fragment packet of the pod MTU ({mtu} bytes) from {name} reaches no other node and none "
            f"reaches it ({who}), smaller ones do" if cut_off
            else f"a don't-fragment packet of the pod MTU ({mtu} bytes) from {name} does not reach {who}, smaller ones do")
    return broken(f"MTU {mtu} dropped", name, "datapath", seen,
                  "small packets pass but large ones vanish: pings work, TLS handshakes, image pulls from pods "
                  "and large replies hang", f"set flannel_mtu lower (the path carries less than the pod MTU on "
                  f"{where}'s link: check its interface MTU, `ip link`) and rerun podnet, or fix that link's MTU")
