"""
`make demo`: boot a 3-node local cluster running a real Kubernetes control plane and
kubelets (no pod network yet), deploy podnet on it with the real pyinfra CLI, create a
pod on every node through the API server and print node -> podCIDR (assigned by
kube-controller-manager) -> pod IP (started by the kubelet) -> interface MTU -> whether it
reaches the next node's pod. `make demo-down` tears it all down. See testbed/podbed.py for
what is real and what is not.

    python3 -m testbed.demo up --state-dir .demo [--nodes 3] [--containerd 1.x|2.x]
    python3 -m testbed.demo down --state-dir .demo
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from testbed.kubebed import binaries
from testbed.localcluster import Cluster, teardown
from testbed.mirror import build_mirror, serve_mirror
from testbed.podbed import PodBed

CLUSTER_NAME = "demo"


def up(state_dir: Path, nodes: int, generation: str) -> int:
    state_dir = state_dir.absolute()
    missing = binaries.missing()
    if missing:
        print(f"podnet demo: cannot run without the Kubernetes and flannel binaries: {missing}", file=sys.stderr)
        return 1
    print(f"podnet demo: building the offline mirror and booting {nodes} Debian nodes ...", flush=True)
    mirror = build_mirror()
    cluster = Cluster(name=CLUSTER_NAME, nodes=nodes, state_dir=state_dir / "cluster")
    try:
        cluster.up()
        with serve_mirror(mirror.root) as base_url:
            bed = PodBed(cluster, base_url, mirror, generation, state_dir)
            print("podnet demo: starting etcd, kube-apiserver, kube-controller-manager (node IPAM off), "
                  "kube-scheduler, kubelets and kube-proxy ...", flush=True)
            bed.install_cluster()
            before = bed.pod_cidrs()
            print("podnet demo: podCIDRs before podnet: "
                  + ", ".join(f"{name}: {cidr or 'none'}" for name, cidr in sorted(before.items())), flush=True)
            inventory = bed.write_inventory()
            print(f"podnet demo: pyinfra {inventory} deploy.py", flush=True)
            run = bed.deploy()
            print(run.output)
            if run.returncode != 0:
                print("podnet demo: the deploy failed (output above); `make demo-down` tears down", file=sys.stderr)
                return 1
        pods = [bed.run_pod(node, f"demo-{index}") for index, node in enumerate(cluster.nodes)]
        rows = []
        for index, pod in enumerate(pods):
            _, mtu = bed.pod_interface(pod)
            peer = pods[(index + 1) % len(pods)]
            reached = "ok" if bed.ping(pod, peer.ip) else "FAILED"
            rows.append((pod.node.name, str(bed.node_subnet(pod.node).network), pod.ip, mtu,
                         f"{peer.ip} ({peer.node.name}): {reached}"))
        (state_dir / "pods.json").write_text(json.dumps(rows))
    except BaseException:
        print("podnet demo: failed; tearing the cluster down", file=sys.stderr)
        cluster.down()
        raise
    print_table(rows)
    print(f"\nThe cluster stays up (inventory: {state_dir / 'inventory.py'}; kubectl on {cluster.nodes[0].name} "
          f"with /etc/kubernetes/admin.conf). Tear down: make demo-down")
    return 0 if all(row[-1].endswith(": ok") for row in rows) else 1


def print_table(rows: list[tuple]) -> None:
    header = ("node", "podCIDR", "pod IP", "MTU", "ping to the next node's pod")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(value).ljust(width) for value, width in zip(row, widths)))


def down(state_dir: Path) -> int:
    cluster_dir = state_dir.absolute() / "cluster"
    if cluster_dir.exists():
        teardown(cluster_dir)
    print("podnet demo: torn down")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m testbed.demo", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up")
    p_up.add_argument("--state-dir", type=Path, default=Path(".demo"))
    p_up.add_argument("--nodes", type=int, default=3)
    p_up.add_argument("--containerd", choices=["1.x", "2.x"], default="2.x")
    p_down = sub.add_parser("down")
    p_down.add_argument("--state-dir", type=Path, default=Path(".demo"))
    args = parser.parse_args(argv)
    if args.command == "up":
        return up(args.state_dir, args.nodes, args.containerd)
    return down(args.state_dir)


if __name__ == "__main__":
    sys.exit(main())
