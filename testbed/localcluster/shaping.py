"""The host's link to the nodes, shaped to a rate: an operator's laptop behind a slow uplink.

    with shaped_link("br-bench3", mbit=100):
        ...   # everything the host sends to the nodes goes at most 100 Mbit/s

A token bucket (tc's tbf) as the root qdisc of the cluster's bridge device. Only packets
the host itself sends into the bridge pass that device's egress queue; frames bridged
between two ports (a node and the mirror site of testbed.mirror.site, two nodes) go from
port to port and are not shaped. What the nodes send to the host is not shaped either
(ingress). Leaving the block removes the qdisc; deleting the bridge (the cluster's
tear-down) removes it as well.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from .util import ClusterError, log, run

# burst: at 100 Mbit/s, 4 ms of data (several 64 kB GSO packets); latency: the most a packet may wait.
BURST = "256kb"
LATENCY = "100ms"


def shape_command(bridge: str, mbit: int) -> list[str]:
    return ["tc", "qdisc", "replace", "dev", bridge, "root", "tbf", "rate", f"{mbit}mbit", "burst", BURST,
            "latency", LATENCY]


@contextlib.contextmanager
def shaped_link(bridge: str, mbit: int) -> Iterator[None]:
    """Shape what the host sends into ``bridge`` to ``mbit`` Mbit/s while the block runs (0: not shaped)."""
    if mbit <= 0:
        yield
        return
    if not bridge.startswith("br-"):
        raise ClusterError(f"refusing to shape {bridge!r}: not a test cluster's bridge")
    run(shape_command(bridge, mbit))
    log.info("%s: host's egress shaped to %d Mbit/s", bridge, mbit)
    try:
        yield
    finally:
        run(["tc", "qdisc", "del", "dev", bridge, "root"], check=False)
