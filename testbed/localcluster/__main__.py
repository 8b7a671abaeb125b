"""CLI: python3 -m testbed.localcluster {up,down} ...  (see the package docstring)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .cluster import Cluster
from .teardown import teardown
from .util import ClusterError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python3 -m testbed.localcluster")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="boot a cluster (or reuse the one in --state-dir)")
    up.add_argument("--name", default="podnet", help="prefix of node and bridge names")
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--state-dir", required=True)
    up.add_argument("--suite", default="bookworm")
    up.add_argument("--inventory", help="also write a pyinfra inventory file here")
    up.add_argument("--control-plane", type=int, default=1, help="nodes in control_plane")
    up.add_argument("--ipv6", action="store_true",
                    help="nodes also get IPv6 addresses (unique local /64) for dual-stack clusters")

    down = sub.add_parser("down", help="tear down the cluster recorded in --state-dir")
    down.add_argument("--state-dir", required=True)
    return parser.parse_args(argv)


def cmd_up(args: argparse.Namespace) -> None:
    cluster = Cluster(args.name, args.nodes, args.state_dir, args.suite, ipv6=args.ipv6)
    cluster.up()
    if args.inventory:
        cluster.write_inventory(args.inventory, control_plane=args.control_plane)
    summary = {
        "bridge": cluster.bridge,
        "subnet": str(cluster.subnet),
        "subnet6": str(cluster.subnet6) if cluster.subnet6 else None,
        "ssh_key": str(cluster.key_path),
        "nodes": [n.to_dict() for n in cluster.nodes],
    }
    print(json.dumps(summary, indent=2))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    try:
        if args.command == "up":
            cmd_up(args)
        else:
            teardown(args.state_dir)
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
