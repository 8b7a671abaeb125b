"""
The pod test bed: real Debian nodes (tests.localcluster), the offline release mirror
(tests.mirror), the real pyinfra CLI running the real deploy.py, and a CRI client to
create pod sandboxes on the nodes. Used by the end-to-end tests and by `make demo`.

STAND-INS, for what cannot be had on this machine (no Kubernetes or flannel binaries):
- kubeadm's kube-controller-manager static pod manifest is written onto the control-plane
  node from tests/support/kubeadm.py (as `kubeadm init` writes it; no kubelet runs it);
- flanneld's /run/flannel/subnet.env is written on every node with a distinct /24 of the
  cluster CIDR, as flanneld would after leasing the node's podCIDR (the inventory sets
  flannel_rollout = "external");
- the flannel CNI plugin in the mirror is tests/mirror/flannel_standin.py.
Everything else is real: containerd and its CRI plugin, runc, the CNI plugins, pods.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.cri import CriClient, build_pause_image, forward_unix_socket
from tests.localcluster import Cluster, Node
from tests.support.kubeadm import KUBEADM_MANIFEST

REPO = Path(__file__).resolve().parent.parent
MANIFEST_PATH = "/etc/kubernetes/manifests/kube-controller-manager.yaml"
FLANNELD_MTU = 1450  # what the stand-in flanneld writes as FLANNEL_MTU
DEPLOY_TIMEOUT = 600


@dataclass
class DeployRun:
    returncode: int
    output: str
    # operation name -> {"success": n, "error": n, "no_change": n}
    results: dict[str, dict[str, int]]
    # with --dry: operation name -> number of hosts it would change
    detected: dict[str, int] | None = None

    def changed_operations(self) -> dict[str, int]:
        return {name: r["success"] for name, r in self.results.items() if r["success"]}

    @property
    def errors(self) -> int:
        return sum(r["error"] for r in self.results.values())


@dataclass
class Pod:
    node: Node
    sandbox_id: str
    ip: str


def parse_results(output: str) -> dict[str, dict[str, int]]:
    """pyinfra's closing "Results" table, as numbers ('-' is 0)."""
    results: dict[str, dict[str, int]] = {}
    lines = output.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "--> Results:")
    except StopIteration:
        return results
    for line in lines[start + 2:]:
        if not line.strip() or line.startswith("-->"):
            break
        parts = line.split()
        if len(parts) < 5 or parts[0] == "Grand":
            continue
        counts = [0 if p == "-" else int(p) for p in parts[-3:]]
        name = re.split(r"\s{2,}", line.strip())[0]
        results[name] = {"success": counts[0], "error": counts[1], "no_change": counts[2]}
    return results


def parse_detected_changes(output: str) -> dict[str, int] | None:
    """pyinfra's "Detected changes" table (printed without -y): operation -> hosts it would change."""
    lines = output.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "--> Detected changes:")
    except StopIteration:
        return None
    detected: dict[str, int] = {}
    for line in lines[start + 2:]:
        columns = re.split(r"\s{2,}", line.strip())
        if len(columns) < 3:
            break
        detected[columns[0]] = 0 if columns[1] == "-" else int(columns[1].split()[0])
    return detected


class PodBed:
    def __init__(self, cluster: Cluster, base_url: str, mirror, generation: str, workdir: Path):
        self.cluster = cluster
        self.base_url = base_url
        self.mirror = mirror
        self.generation = generation
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cluster_cidr = ipaddress.ip_network("10.244.0.0/16")
        self.overrides: dict = {}

    # --- inventory -------------------------------------------------------------------

    def inventory_data(self, **overrides) -> dict:
        cni_version = overrides.pop("cni_plugins_version", None)
        data = self.mirror.inventory_data(self.base_url, containerd_generation=self.generation,
                                          cni_plugins_version=cni_version)
        data.update(
            cluster_cidr=str(self.cluster_cidr),
            node_cidr_mask_size=24,
            flannel_rollout="external",  # the stand-in flanneld is the harness (see module docstring)
            restrict_oom_score_adj=True,  # this machine's root lacks CAP_SYS_RESOURCE
            download_cache_dir=str(self.workdir / "downloads"),
            # The flannel CNI plugin's sum is resolved from the mirror's .sha256 file and locked here.
            artifact_lock_file=str(self.workdir / "artifacts.lock.yaml"),
            flannel_mtu=FLANNELD_MTU,
        )
        data.update(overrides)
        return data

    def write_inventory(self, **overrides) -> Path:
        self.overrides = dict(overrides)
        return self.cluster.write_inventory(self.workdir / "inventory.py", self.inventory_data(**overrides))

    # --- stand-ins -------------------------------------------------------------------

    def node_subnet(self, index: int) -> ipaddress.IPv4Interface:
        subnet = list(self.cluster_cidr.subnets(new_prefix=24))[index]
        return ipaddress.ip_interface(f"{subnet.network_address + 1}/{subnet.prefixlen}")

    def install_standins(self) -> None:
        """kubeadm's manifest on the control-plane node, flanneld's subnet.env on every node."""
        self.cluster.ssh(self.cluster.nodes[0], f"mkdir -p {Path(MANIFEST_PATH).parent} && cat > {MANIFEST_PATH}",
                         input=KUBEADM_MANIFEST, check=True)
        for index, node in enumerate(self.cluster.nodes):
            env = (f"FLANNEL_NETWORK={self.cluster_cidr}\nFLANNEL_SUBNET={self.node_subnet(index)}\n"
                   f"FLANNEL_MTU={FLANNELD_MTU}\nFLANNEL_IPMASQ=true\n")
            self.cluster.ssh(node, "mkdir -p /run/flannel && cat > /run/flannel/subnet.env", input=env, check=True)

    # --- the deploy ------------------------------------------------------------------

    def deploy(self, *extra_args: str) -> DeployRun:
        """Run the real deploy.py with the real pyinfra CLI over SSH (`-y`, or `--dry` to only plan)."""
        confirm = [] if "--dry" in extra_args else ["-y"]
        command = [sys.executable, "-m", "pyinfra", *confirm, *extra_args, str(self.workdir / "inventory.py"),
                   "deploy.py"]
        proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=DEPLOY_TIMEOUT,
                              stdin=subprocess.DEVNULL)
        output = proc.stdout + proc.stderr
        (self.workdir / "last-deploy.log").write_text(output)
        return DeployRun(proc.returncode, output, parse_results(output), parse_detected_changes(output))

    # --- nodes -----------------------------------------------------------------------

    def sh(self, node: Node, command: str, check: bool = True) -> str:
        return self.cluster.ssh(node, command, check=check, timeout=120).stdout

    def containerd_pid(self, node: Node) -> int:
        return int(self.sh(node, "systemctl show -p MainPID --value containerd").strip())

    def import_pause_image(self, image: str) -> None:
        archive = build_pause_image(image, self.workdir / "pause.tar")
        for node in self.cluster.nodes:
            with open(archive, "rb") as f:
                subprocess.run(self.cluster.ssh_argv(node, "cat > /tmp/pause.tar"), stdin=f, check=True, timeout=60)
            self.sh(node, "/usr/local/bin/ctr -n k8s.io images import /tmp/pause.tar >/dev/null")

    def cri(self, node: Node):
        """A context manager yielding a CriClient connected to the node's containerd over ssh."""
        bed = self

        class _Cri:
            def __enter__(self):
                self._forward = forward_unix_socket(bed.cluster.ssh_argv(node))
                self._client = CriClient(self._forward.__enter__())
                return self._client

            def __exit__(self, *exc):
                self._client.close()
                return self._forward.__exit__(*exc)

        return _Cri()

    def run_pod(self, node: Node, name: str) -> Pod:
        uid = str(uuid.uuid4())
        # As kubelet does with the systemd cgroup driver (SystemdCgroup = true): a slice per pod.
        cgroup_parent = f"kubepods-besteffort-pod{uid.replace('-', '_')}.slice"
        with self.cri(node) as cri:
            sandbox_id = cri.run_pod_sandbox(name=name, uid=uid, namespace="podnet-e2e", cgroup_parent=cgroup_parent)
            _, ip = cri.pod_sandbox_status(sandbox_id)
        return Pod(node, sandbox_id, ip)

    def remove_pod(self, pod: Pod) -> None:
        with self.cri(pod.node) as cri:
            cri.stop_pod_sandbox(pod.sandbox_id)
            cri.remove_pod_sandbox(pod.sandbox_id)

    def pod_interface(self, pod: Pod) -> tuple[str, int]:
        """(address/prefix, mtu) of eth0 in the network namespace that holds the pod's IP."""
        script = (
            "for ns in $(ip netns list | awk '{print $1}'); do "
            f"  if ip -n \"$ns\" -o -4 addr show dev eth0 2>/dev/null | grep -q ' {pod.ip}/'; then "
            "    ip -n \"$ns\" -o -4 addr show dev eth0 | awk '{print $4}'; "
            "    ip -n \"$ns\" -o link show dev eth0 | sed -n 's/.* mtu \\([0-9]*\\).*/\\1/p'; "
            "  fi; "
            "done"
        )
        lines = self.sh(pod.node, script).split()
        if len(lines) != 2:
            raise AssertionError(f"no network namespace on {pod.node.name} holds {pod.ip}: {lines}")
        return lines[0], int(lines[1])
