"""
`make demo`: boot a 3-node local cluster running a real Kubernetes control plane and
kubelets (no pod network yet), deploy podnet on it with the real pyinfra CLI, create a
pod on every node through the API server and print node -> podCIDR (assigned by
kube-controller-manager) -> pod IP (started by the kubelet) -> interface MTU -> whether it
reaches the next node's pod. `make demo-down` tears it all down. See testbed/podbed.py for
what is real and what is not. With --dual-stack the cluster runs IPv4 and IPv6: every pod gets an
address of each family, and the reach and the MTU (a don't-fragment ping of exactly the pod MTU,
then one byte more) are shown for both.

    python3 -m testbed.demo up --state-dir .demo [--nodes 3] [--containerd 1.x|2.x] [--dual-stack] [--name demo]
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
from testbed.podbed import PING_HEADERS, PodBed

CLUSTER_NAME = "demo"


def up(state_dir: Path, nodes: int, generation: str, dual_stack: bool = False, name: str = CLUSTER_NAME) -> int:
    state_dir = state_dir.absolute()
    missing = binaries.missing()
    if missing:
        print(f"podnet demo: cannot run without the Kubernetes and flannel binaries: {missing}", file=sys.stderr)
        return 1
    print(f"podnet demo: building the offline mirror and booting {nodes} Debian nodes ...", flush=True)
    mirror = build_mirror()
    cluster = Cluster(name=name, nodes=nodes, state_dir=state_dir / "cluster", ipv6=dual_stack)
    try:
        cluster.up()
        with serve_mirror(mirror.root) as base_url:
            bed = PodBed(cluster, base_url, mirror, generation, state_dir, dual_stack=dual_stack)
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
        rows, mtus = [], []
        for index, pod in enumerate(pods):
            _, mtu = bed.pod_interface(pod)
            peer = pods[(index + 1) % len(pods)]
            for version in bed.families:
                address, peer_address = (pod.ip, peer.ip) if version == 4 else (pod.ip6, peer.ip6)
                reached = "ok" if bed.ping(pod, peer_address) else "FAILED"
                rows.append((pod.node.name, str(bed.node_subnet(pod.node, version).network), address, mtu,
                             f"{peer_address} ({peer.node.name}): {reached}"))
        if len(pods) > 1:  # the pod MTU end to end: exactly it passes with don't-fragment, one byte more does not
            mtu = bed.pod_interface(pods[0])[1]
            for version in bed.families:
                target = pods[1].ip if version == 4 else pods[1].ip6
                payload = mtu - PING_HEADERS[version]
                exact, over = bed.ping(pods[0], target, payload), bed.ping(pods[0], target, payload + 1)
                mtus.append(f"IPv{version} {pods[0].node.name} -> {pods[1].node.name}: don't-fragment packet of {mtu} "
                            f"bytes (ping -s {payload}) {'passes' if exact else 'FAILED'}, of {mtu + 1} bytes "
                            f"{'is refused' if not over else 'PASSED'}")
        (state_dir / "pods.json").write_text(json.dumps({"pods": rows, "mtu": mtus}))
    except BaseException:
        print("podnet demo: failed; tearing the cluster down", file=sys.stderr)
        cluster.down()
        raise
    print_table(rows)
    for line in mtus:
        print(line)
    print(f"\nThe cluster stays up (inventory: {state_dir / 'inventory.py'}; kubectl on {cluster.nodes[0].name} "
          f"with /etc/kubernetes/admin.conf). Tear down: make demo-down")
    ok = all(row[-1].endswith(": ok") for row in rows) and not any("FAILED" in line or "PASSED" in line
                                                                      for line in mtus)
    return 0 if ok else 1


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
    p_up.add_argument("--dual-stack", action="store_true", help="IPv4 and IPv6: pods get an address of each family")
    p_up.add_argument("--name", default=CLUSTER_NAME, help="prefix of the node and bridge names")
    p_down = sub.add_parser("down")
    p_down.add_argument("--state-dir", type=Path, default=Path(".demo"))
    args = parser.parse_args(argv)
    if args.command == "up":
        return up(args.state_dir, args.nodes, args.containerd, args.dual_stack, args.name)
    return down(args.state_dir)


if __name__ == "__main__":
    sys.exit(main())
