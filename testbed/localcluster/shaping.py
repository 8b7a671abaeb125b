"""The host's link to the nodes, shaped to a rate (an operator's laptop behind a slow uplink),
and what the host sends each node, counted.

    with shaped_link("br-bench3", mbit=100, destinations=["172.30.19.11", ...]) as link:
        before = link.counters()
        ...   # everything the host sends into the test network goes at most 100 Mbit/s
        sent = link.since(before)     # destination address -> bytes the host sent it (frames)

An HTB tree as the root qdisc of the cluster's bridge device: one parent class at the rate,
and under it one class per destination (a u32 filter on the destination address) plus a
default class for anything else (the mirror site of testbed.mirror.site, other addresses).
The classes borrow from the parent up to the full rate, so the total is shaped, not each
destination. Only packets the host itself sends into the bridge pass that device's egress
queue: frames bridged between two ports (a node and the mirror site, two nodes) go from
port to port, and are neither shaped nor counted; what the nodes send the host is not
either (ingress). Each class's byte counter counts every frame the host sent that
destination, TCP/IP headers included, whether or not an SSH connection ended cleanly.

``mbit=0`` leaves the link at a rate far above what the veths reach here (not shaped) and
still counts. Leaving the block removes the qdisc; deleting the bridge (the cluster's
tear-down) removes it as well.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from .util import ClusterError, log, run

UNSHAPED_MBIT = 40_000  # "not shaped": far above what a veth moves on this machine
BURST = "256k"  # at 100 Mbit/s, 20 ms of data: several 64 kB GSO packets
QUANTUM = "60000"  # bytes a class may send per round (above a GSO packet; quiets HTB's quantum warning)
PARENT = "1:1"
DEFAULT = "1:2"


def class_id(index: int) -> str:
    return f"1:{index + 10:x}"


def shape_commands(bridge: str, mbit: int, destinations: list[str]) -> list[list[str]]:
    """The tc commands that shape ``bridge``'s egress to ``mbit`` (0: not shaped), one counted class per destination."""
    rate = f"{mbit or UNSHAPED_MBIT}mbit"
    dev = ["dev", bridge]
    commands = [["tc", "qdisc", "replace", *dev, "root", "handle", "1:", "htb", "default", DEFAULT.split(":")[1]],
                ["tc", "class", "add", *dev, "parent", "1:", "classid", PARENT, "htb", "rate", rate, "ceil", rate,
                 "burst", BURST, "cburst", BURST],
                ["tc", "class", "add", *dev, "parent", PARENT, "classid", DEFAULT, "htb", "rate", "1mbit", "ceil", rate,
                 "burst", BURST, "cburst", BURST, "quantum", QUANTUM]]
    for index, address in enumerate(destinations):
        commands += [["tc", "class", "add", *dev, "parent", PARENT, "classid", class_id(index), "htb", "rate", "1mbit",
                      "ceil", rate, "burst", BURST, "cburst", BURST, "quantum", QUANTUM],
                     ["tc", "filter", "add", *dev, "parent", "1:", "protocol", "ip", "prio", "1", "u32", "match", "ip",
                      "dst", f"{address}/32", "flowid", class_id(index)]]
    return commands


CLASS_RE = re.compile(r"^class \S+ (\S+) .*\n\s+Sent (\d+) bytes", re.MULTILINE)


def parse_class_bytes(tc_output: str) -> dict[str, int]:
    """`tc -s class show` -> class id -> bytes sent (iproute2 6.1 prints no JSON for htb classes)."""
    return {handle: int(sent) for handle, sent in CLASS_RE.findall(tc_output)}


class ShapedLink:
    def __init__(self, bridge: str, destinations: list[str]):
        self.bridge = bridge
        self.destinations = list(destinations)

    def counters(self) -> dict[str, int]:
        """Destination address -> bytes the host has sent it since the link was shaped."""
        classes = parse_class_bytes(run(["tc", "-s", "class", "show", "dev", self.bridge]).stdout)
        return {address: classes.get(class_id(index), 0) for index, address in enumerate(self.destinations)}

    def since(self, before: dict[str, int]) -> dict[str, int]:
        now = self.counters()
        return {address: now[address] - before.get(address, 0) for address in now}


@contextlib.contextmanager
def shaped_link(bridge: str, mbit: int, destinations: list[str]) -> Iterator[ShapedLink]:
    """Shape what the host sends into ``bridge`` to ``mbit`` Mbit/s while the block runs (0: not shaped),
    counting per destination address."""
    if not bridge.startswith("br-"):
        raise ClusterError(f"refusing to shape {bridge!r}: not a test cluster's bridge")
    try:
        for command in shape_commands(bridge, mbit, destinations):
            run(command)
        log.info("%s: host's egress %s", bridge, f"shaped to {mbit} Mbit/s" if mbit else "counted, not shaped")
        yield ShapedLink(bridge, destinations)
    finally:
        run(["tc", "qdisc", "del", "dev", bridge, "root"], check=False)
