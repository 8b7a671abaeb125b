"""The cluster's private bridge: choosing a free subnet, creating and deleting host links.

Safety rules this module implements:
- the bridge subnet is a private /24 that overlaps NO address or route on the host;
- the only host change is the bridge itself with its .1 address (hence one connected
  route); no forwarding, NAT or other routes are touched, and nodes get no default route;
- with IPv6 (a dual-stack bed), the nodes also get addresses from a unique local /64
  (fd70:6e62:0:N::/64, RFC 4193) that overlaps no IPv6 address or route on the host; the
  host itself gets none (IPv6 stays off on the bridge: no address, no route, nothing to
  forward), so IPv6 only flows between the nodes, over the bridge;
- only links the harness created (its bridge, veths attached to it) are ever deleted.
"""

from __future__ import annotations

import ipaddress
import json
import zlib
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

from .util import ClusterError, run

# Candidate subnets: 172.30.N.0/24 for N in 0..255, starting at a per-name offset so a
# given cluster name gets the same subnet run after run (when that subnet is free).
CANDIDATE_PREFIX = "172.30"
# IPv6 candidates: fd70:6e62:0:N::/64 (unique local addresses, fd00::/8; "pnb" in hex-ish), N in 0..255,
# from the same per-name offset: the nodes' IPv6 addresses are ::11, ::12, ... like their IPv4 ones.
CANDIDATE_PREFIX6 = "fd70:6e62:0"
BRIDGE_ADDR_HOST = 1  # bridge gets .1
FIRST_NODE_HOST = 11  # nodes get .11, .12, ...
FIRST_NODE_HOST6 = 0x11  # and ::11, ::12, ... (hexadecimal, so that they read alike)
MAX_NODES = 200
IFNAME_MAX = 15  # Linux IFNAMSIZ - 1


# --- pure functions ------------------------------------------------------------------


def candidate_subnets(name: str) -> list[IPv4Network]:
    """All candidate /24s, in a stable order that depends only on the cluster name."""
    start = zlib.crc32(name.encode()) % 256
    return [
        IPv4Network(f"{CANDIDATE_PREFIX}.{(start + i) % 256}.0/24") for i in range(256)
    ]


def candidate_subnets6(name: str) -> list[IPv6Network]:
    """All candidate unique local /64s, in a stable order that depends only on the cluster name."""
    start = zlib.crc32(name.encode()) % 256
    return [IPv6Network(f"{CANDIDATE_PREFIX6}:{(start + i) % 256:x}::/64") for i in range(256)]


def networks_in_use(addrs: list[dict], routes: list[dict], version: int = 4) -> list[IPv4Network | IPv6Network]:
    """Networks of one IP version the host already uses, from `ip -j addr` and `ip -j route` output.

    Interface addresses count with their prefix (and peer addresses of point-to-point
    links); route destinations count as given.  Default routes (0.0.0.0/0, ::/0) are ignored:
    they do not make a subnet "in use", they only say where unknown traffic goes.
    """
    family = "inet" if version == 4 else "inet6"
    used: list[IPv4Network | IPv6Network] = []
    for link in addrs:
        for info in link.get("addr_info", []):
            if info.get("family") != family:
                continue
            for key in ("local", "address"):
                if key in info:
                    used.append(ipaddress.ip_network(f"{info[key]}/{info.get('prefixlen', 32 if version == 4 else 128)}",
                                                     strict=False))
    for route in routes:
        dst = route.get("dst")
        if not dst or dst == "default":
            continue
        try:
            net = ipaddress.ip_network(dst, strict=False)
        except ValueError:
            continue
        if net.version == version and net.prefixlen > 0:
            used.append(net)
    return used


def choose_subnet(
    name: str,
    addrs: list[dict],
    routes: list[dict],
    candidates: list[IPv4Network] | list[IPv6Network] | None = None,
    version: int = 4,
) -> IPv4Network | IPv6Network:
    """First candidate (of ``version``) overlapping nothing the host uses; ClusterError if none is free."""
    used = networks_in_use(addrs, routes, version)
    if candidates is None:
        candidates = candidate_subnets(name) if version == 4 else candidate_subnets6(name)
    for subnet in candidates:
        if not any(subnet.overlaps(net) for net in used):
            return subnet
    size = "private /24" if version == 4 else "unique local /64"
    raise ClusterError(
        f"no free {size} for cluster {name!r}: every candidate overlaps a host "
        f"address or route ({', '.join(str(n) for n in used)})"
    )


def bridge_address(subnet: IPv4Network) -> IPv4Address:
    return subnet.network_address + BRIDGE_ADDR_HOST


def node_address(subnet: IPv4Network | IPv6Network, index: int) -> IPv4Address | IPv6Address:
    """Address of node number `index` (0-based): .11, .12, ... (IPv4) or ::11, ::12, ... (IPv6)."""
    if not 0 <= index < MAX_NODES:
        raise ClusterError(f"node index {index} out of range (max {MAX_NODES} nodes)")
    return subnet.network_address + (FIRST_NODE_HOST if subnet.version == 4 else FIRST_NODE_HOST6) + index


def bridge_name(cluster_name: str) -> str:
    """`br-<name>`, shortened with a hash suffix if it would not fit in an interface name."""
    name = f"br-{cluster_name}"
    if len(name) <= IFNAME_MAX:
        return name
    digest = format(zlib.crc32(cluster_name.encode()), "08x")[:5]
    return f"br-{cluster_name[:6]}-{digest}"


# --- reading the host ----------------------------------------------------------------


def _ip_json(*args: str) -> list[dict]:
    out = run(["ip", "-j", *args]).stdout.strip()
    return json.loads(out) if out else []


def host_addrs() -> list[dict]:
    return _ip_json("addr")


def host_routes(version: int = 4) -> list[dict]:
    """Routes of one IP version from every routing table (main, local, and any policy tables)."""
    return _ip_json(f"-{version}", "route", "show", "table", "all")


def link_info(name: str) -> dict | None:
    """`ip -d link show NAME` as a dict, or None when the link does not exist."""
    if not Path(f"/sys/class/net/{name}").exists():
        return None
    try:
        links = _ip_json("-d", "link", "show", "dev", name)
    except ClusterError:
        if not Path(f"/sys/class/net/{name}").exists():  # gone meanwhile: nspawn removes its veth as it exits
            return None
        raise
    return links[0] if links else None


def link_kind(info: dict) -> str | None:
    return info.get("linkinfo", {}).get("info_kind")


def links_on_bridge(bridge: str) -> list[str]:
    if link_info(bridge) is None:
        return []
    return [link["ifname"] for link in _ip_json("link", "show", "master", bridge)]


def ifname_by_index(ifindex: int) -> str | None:
    for path in Path("/sys/class/net").iterdir():
        try:
            if int((path / "ifindex").read_text()) == ifindex:
                return path.name
        except (OSError, ValueError):
            continue
    return None


# --- changing the host ---------------------------------------------------------------


def ensure_absent(bridge: str) -> None:
    if link_info(bridge) is not None:
        raise ClusterError(
            f"host link {bridge!r} already exists; another cluster (or a crashed run with a "
            "different state dir) uses this name. Tear it down or pick another --name."
        )


def create_bridge(bridge: str, subnet: IPv4Network) -> None:
    """Create the bridge with the subnet's .1: the kernel adds only its connected route."""
    ensure_absent(bridge)
    # Without multicast snooping the bridge floods the nodes' IPv6 neighbour solicitations to every
    # port (no querier here would keep its group table current); IPv4 is unaffected.
    run(["ip", "link", "add", bridge, "type", "bridge", "mcast_snooping", "0"])
    # No IPv6 on the test bridge: keeps the host from autoconfiguring/chattering on it. The nodes'
    # IPv6 addresses (a dual-stack bed) are bridged between them; the host has none on this link.
    Path(f"/proc/sys/net/ipv6/conf/{bridge}/disable_ipv6").write_text("1\n")
    run(["ip", "addr", "add", f"{bridge_address(subnet)}/{subnet.prefixlen}", "dev", bridge])
    run(["ip", "link", "set", bridge, "up"])


def delete_bridge(bridge: str, subnet: IPv4Network | None) -> None:
    """Delete `bridge` if it exists, is a bridge, and carries no IPv4 address but ours."""
    info = link_info(bridge)
    if info is None:
        return
    if link_kind(info) != "bridge":
        raise ClusterError(f"refusing to delete {bridge!r}: it is not a bridge")
    ours = {str(bridge_address(subnet))} if subnet else set()
    addrs = {
        a["local"]
        for link in _ip_json("addr", "show", "dev", bridge)
        for a in link.get("addr_info", [])
        if a.get("family") == "inet"
    }
    if addrs - ours:
        raise ClusterError(f"refusing to delete {bridge!r}: it carries foreign addresses {addrs}")
    run(["ip", "link", "delete", bridge])


def delete_veth(name: str, bridge: str) -> None:
    """Delete a leftover node veth: a veth on our bridge, or an unattached vb-* one."""
    info = link_info(name)
    if info is None:
        return
    if link_kind(info) != "veth":
        return
    master = info.get("master")
    if master == bridge or (master is None and name.startswith("vb-")):
        run(["ip", "link", "delete", name], check=False)
