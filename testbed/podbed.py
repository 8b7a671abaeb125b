"""
The pod test bed: real Debian nodes (testbed.localcluster) running a real Kubernetes
cluster (testbed.kubebed: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
kubelets, kube-proxy, built from public source), the offline release mirror
(testbed.mirror), and the real pyinfra CLI running the real deploy.py. Pods are created
through the API server and started by the kubelets: kubelet -> containerd's CRI ->
flannel CNI plugin -> bridge -> host-local, with flanneld (podnet's DaemonSet or systemd
unit) writing subnet.env from the podCIDR kube-controller-manager assigned. Used by the
end-to-end tests, `make demo` and the benchmark.

What is not real here, and why (see also testbed/kubebed/cluster.py):
- images come from no registry: the pause image is built from a small C program, the
  control-plane and flannel images from the binaries (flanneld v0.28.9 with Debian's
  iptables; the test inventory names that image in `flannel_image`);
- test nodes have no default route: the inventory sets `flannel_iface` to each node's
  address (as the Vagrant inventory does), and the nodes route the service network on
  their link;
- this machine's root lacks CAP_SYS_RESOURCE: `restrict_oom_score_adj = true`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from testbed.kubebed import binaries
from testbed.kubebed.cluster import KubeBed
from testbed.localcluster import Cluster, Node
from testbed.localcluster.rootfs import cache_root

REPO = Path(__file__).resolve().parent.parent
MANIFEST_PATH = "/etc/kubernetes/manifests/kube-controller-manager.yaml"
KCM_UNIT_PATH = "/etc/systemd/system/kube-controller-manager.service"
VXLAN_MTU = 1450  # flanneld's FLANNEL_MTU with the vxlan backend on the 1500-byte test link
DEPLOY_TIMEOUT = 600
POD_TIMEOUT = 90


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
    name: str
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
    """One test cluster and the podnet deploy against it.

    generation: containerd "1.x" (Debian's 1.6) or "2.x" (2.3.4, podnet's default);
    runtime: how kube-controller-manager runs ("static-pod", podnet's default, or "systemd");
    rollout: podnet's flannel_rollout ("daemonset", the default, or "systemd").
    """

    def __init__(self, cluster: Cluster, base_url: str, mirror, generation: str, workdir: Path,
                 runtime: str = "static-pod", rollout: str = "daemonset", release_download: str = "laptop"):
        self.cluster = cluster
        self.release_download = release_download  # "nodes": they download from base_url (served to them)
        self.base_url = base_url
        self.mirror = mirror
        self.generation = generation
        self.runtime = runtime
        self.rollout = rollout
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cluster_cidr = ipaddress.ip_network("10.244.0.0/16")
        self.overrides: dict = {}
        # node name -> (host, port) pyinfra connects to instead of the node's sshd (e.g. a DelayProxy)
        self.ssh_endpoints: dict[str, tuple[str, int]] = {}
        self.kube: KubeBed | None = None
        self.members: list[Node] = list(cluster.nodes)  # the nodes in the inventory

    # --- inventory -------------------------------------------------------------------

    def inventory_data(self, **overrides) -> dict:
        cni_version = overrides.pop("cni_plugins_version", None)
        data = self.mirror.inventory_data(self.base_url, containerd_generation=self.generation,
                                          cni_plugins_version=cni_version)
        data.update(
            cluster_cidr=str(self.cluster_cidr),
            node_cidr_mask_size=24,
            flannel_rollout=self.rollout,
            release_download=self.release_download,
            flannel_image=f"docker.io/flannel/flannel:v{binaries.FLANNELD_VERSION}",  # built locally (no registry)
            # the existing cluster's sandbox image (built locally), as an operator of such a cluster sets it
            sandbox_image=KubeBed.sandbox_image,
            flannel_rollout_timeout=120,
            kube_controller_manager_runtime=self.runtime,
            restrict_oom_score_adj=True,  # this machine's root lacks CAP_SYS_RESOURCE
            download_cache_dir=str(self.workdir / "downloads"),
            # flannel's sums are resolved from what the mirror publishes and locked here
            artifact_lock_file=str(self.workdir / "artifacts.lock.yaml"),
        )
        data.update(overrides)
        return data

    def write_inventory(self, host_data: dict | None = None, **overrides) -> Path:
        """The inventory with ``overrides`` in group data and ``host_data`` on every host."""
        self.overrides = dict(overrides)
        # No default route on test nodes: flanneld is told each node's own address (as on Vagrant).
        per_host = {n.name: {"flannel_iface": n.ip, **(host_data or {})} for n in self.cluster.nodes}
        for name, (address, port) in self.ssh_endpoints.items():
            per_host[name].update(ssh_hostname=address, ssh_port=port)
        return self.cluster.write_inventory(self.workdir / "inventory.py", self.inventory_data(**overrides),
                                            host_data=per_host)

    # --- the cluster before podnet -----------------------------------------------------

    def install_cluster(self) -> KubeBed:
        """A running Kubernetes cluster without pod network (testbed.kubebed), as podnet finds it."""
        settings = self.inventory_data()
        version = settings["containerd_version"]
        self.kube = KubeBed(self.cluster, self.workdir / "kube", runtime=self.runtime,
                            containerd_tarball=self.mirror.path("containerd", version),
                            runc_binary=self.mirror.path("runc", settings["runc_version"]),
                            containerd_config_version=2 if version.startswith("1.") else 3)
        self.kube.install()  # admin.conf on the control plane only: podnet gives flanneld a kubeconfig of its own
        return self.kube

    # --- the deploy ------------------------------------------------------------------

    def deploy_command(self, *extra_args: str, script: str = "deploy.py") -> list[str]:
        """The pyinfra command line of deploy.py (or ``script``, such as reset.py): `-y`, or `--dry` to only plan."""
        confirm = [] if "--dry" in extra_args else ["-y"]
        return [sys.executable, "-m", "pyinfra", *confirm, *extra_args, str(self.workdir / "inventory.py"), script]

    def deploy(self, *extra_args: str, script: str = "deploy.py") -> DeployRun:
        """Run the real deploy.py (or ``script``) with the real pyinfra CLI over SSH (`-y`, or `--dry` to only plan)."""
        proc = subprocess.run(self.deploy_command(*extra_args, script=script), cwd=REPO, capture_output=True,
                              text=True, timeout=DEPLOY_TIMEOUT, stdin=subprocess.DEVNULL)
        return self.deploy_result(proc.returncode, proc.stdout + proc.stderr, script)

    def deploy_result(self, returncode: int, output: str, script: str = "deploy.py") -> DeployRun:
        (self.workdir / f"last-{Path(script).stem}.log").write_text(output)
        run = DeployRun(returncode, output, parse_results(output), parse_detected_changes(output))
        with open(self.workdir / "deploy-history.log", "a") as history:  # one line a run, to read after a test
            history.write(f"{script}: exit {returncode} changed {run.changed_operations()}\n")
        return run

    def start_deploy(self, log: Path, *extra_args: str) -> subprocess.Popen:
        """A deploy running in the background, its output going to ``log`` (the caller ends it: ``finish_deploy``)."""
        with open(log, "w") as out:
            return subprocess.Popen(self.deploy_command(*extra_args), cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, text=True)

    def finish_deploy(self, proc: subprocess.Popen, log: Path) -> DeployRun:
        """Wait (bounded) for a deploy from ``start_deploy``; its result."""
        try:
            returncode = proc.wait(timeout=DEPLOY_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
            raise
        return self.deploy_result(returncode, log.read_text())

    # --- nodes -----------------------------------------------------------------------

    def give_nodes_wget(self) -> None:
        """wget on every node (Debian's package, and libpsl5, which the nodes' minimal image lacks), as an operator's
        image has it: what a node needs to download release files itself (release_download = "nodes"). The
        packages are fetched once with apt-get download (Debian's archive) and kept in the test cache."""
        debs = cache_root() / "debs-wget"
        if not debs.is_dir():
            building = debs.with_name(f".debs-wget.{os.getpid()}")
            shutil.rmtree(building, ignore_errors=True)
            building.mkdir(parents=True)
            subprocess.run(["apt-get", "download", "wget", "libpsl5"], cwd=building, check=True, timeout=300,
                           capture_output=True)
            os.rename(building, debs)
        for node in self.cluster.nodes:
            target = self.cluster.node_path(node, "/root/debs-wget")
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(debs, target)
            self.sh(node, "dpkg -i /root/debs-wget/*.deb >/dev/null && rm -rf /root/debs-wget")

    def sh(self, node: Node, command: str, check: bool = True) -> str:
        return self.cluster.ssh(node, command, check=check, timeout=120).stdout

    def kubectl(self, args: str, check: bool = True, input: str | None = None) -> str:
        assert self.kube is not None
        return self.kube.kubectl(args, check=check, input=input)

    def main_pid(self, node: Node, unit: str) -> int:
        return int(self.sh(node, f"systemctl show -p MainPID --value {unit}").strip())

    def containerd_pid(self, node: Node) -> int:
        return self.main_pid(node, "containerd")

    def flanneld_pids(self) -> dict[str, int]:
        """Node name -> PID of the flanneld process running there (DaemonSet pod or unit)."""
        return {node.name: int(self.sh(node, "pgrep -x flanneld").split()[0]) for node in self.members}

    def flannel_pods(self) -> dict[str, str]:
        """Node name -> uid of its kube-flannel pod (pods being deleted are left out)."""
        pods = json.loads(self.kubectl("-n kube-flannel get pods -o json"))["items"]
        return {pod["spec"]["nodeName"]: pod["metadata"]["uid"] for pod in pods
                if not pod["metadata"].get("deletionTimestamp")}

    def wait_for_flannel(self, timeout: float = POD_TIMEOUT) -> None:
        """flanneld has written subnet.env on every node from that node's podCIDR (bounded wait:
        a rollout is complete when the pods run, flanneld writes the file a moment later)."""
        deadline = time.monotonic() + timeout
        pending: list[str] = []
        while time.monotonic() < deadline:
            cidrs = self.pod_cidrs()
            pending = []
            for node in self.members:
                env = self.sh(node, "cat /run/flannel/subnet.env 2>/dev/null", check=False)
                subnet = dict(line.split("=", 1) for line in env.split() if "=" in line).get("FLANNEL_SUBNET", "")
                network = cidrs.get(node.name) or ""
                if not network or not subnet or str(ipaddress.ip_interface(subnet).network) != network:
                    pending.append(f"{node.name} (podCIDR {network or 'none'}, subnet.env {subnet or 'none'})")
            if not pending:
                return
            time.sleep(1)
        raise AssertionError(f"flanneld has not written subnet.env after {timeout:.0f}s on: {', '.join(pending)}")

    def pod_cidrs(self) -> dict[str, str]:
        assert self.kube is not None
        return self.kube.pod_cidrs()

    def node_subnet(self, node: Node) -> ipaddress.IPv4Interface:
        """The node's pod subnet with its gateway (.1), from the podCIDR the controller manager gave it."""
        network = ipaddress.ip_network(self.pod_cidrs()[node.name])
        return ipaddress.ip_interface(f"{network.network_address + 1}/{network.prefixlen}")

    def subnet_env(self, node: Node) -> dict[str, str]:
        text = self.sh(node, "cat /run/flannel/subnet.env")
        return dict(line.split("=", 1) for line in text.split() if "=" in line)

    # --- pods, through the API server and the kubelet ------------------------------------

    def run_pod(self, node: Node, name: str) -> Pod:
        """A pod bound to ``node`` (the pause image); waits (bounded) until it runs with an IP."""
        manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
                    "spec": {"nodeName": node.name, "terminationGracePeriodSeconds": 0,
                             "containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10"}]}}
        self.kubectl("apply -f -", input=json.dumps(manifest))
        deadline = time.monotonic() + POD_TIMEOUT
        status = {}
        while time.monotonic() < deadline:
            status = json.loads(self.kubectl(f"get pod {name} -o json"))["status"]
            if status.get("phase") == "Running" and status.get("podIP"):
                return Pod(node, name, status["podIP"])
            time.sleep(1)
        events = self.kubectl(f"get events --field-selector involvedObject.name={name} -o "
                              "jsonpath='{range .items[*]}{.reason}: {.message}{\"\\n\"}{end}'", check=False)
        raise AssertionError(f"pod {name} on {node.name} not running with an IP after {POD_TIMEOUT}s: "
                             f"{status}\n{events[-3000:]}")

    def remove_pod(self, pod: Pod) -> None:
        self.kubectl(f"delete pod {pod.name} --wait=true --timeout=60s")

    def address_released(self, pod: Pod, timeout: float = 60) -> bool:
        """Whether host-local's record of the pod's address is gone within ``timeout`` seconds: the kubelet
        stops the sandbox (CNI DEL) as the pod goes, on a loaded machine a little after the API object."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.sh(pod.node, f"test -e /var/lib/cni/networks/cbr0/{pod.ip} && echo held", check=False).strip():
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(1)

    def pod_netns(self, pod: Pod) -> str:
        """The network namespace (on the pod's node) whose eth0 holds the pod's IP."""
        script = ("for ns in $(ip netns list | awk '{print $1}'); do "
                  f"  ip -n \"$ns\" -o -4 addr show dev eth0 2>/dev/null | grep -q ' {pod.ip}/' && echo \"$ns\"; "
                  "done; true")  # the loop's status is its last namespace's: not an error
        names = self.sh(pod.node, script).split()
        if len(names) != 1:
            raise AssertionError(f"no single netns with {pod.ip} on {pod.node.name}: {names}")
        return names[0]

    def pod_interface(self, pod: Pod) -> tuple[str, int]:
        """(address/prefix, mtu) of eth0 in the pod's network namespace."""
        ns = self.pod_netns(pod)
        address = self.sh(pod.node, f"ip -n {ns} -o -4 addr show dev eth0 | awk '{{print $4}}'").strip()
        mtu = self.sh(pod.node, f"ip -n {ns} -o link show dev eth0 | sed -n 's/.* mtu \\([0-9]*\\).*/\\1/p'")
        return address, int(mtu)

    def ping(self, source: Pod, target_ip: str, payload: int | None = None) -> bool:
        """One ping from ``source``'s network namespace; with ``payload``, that many ICMP data bytes
        and don't-fragment set (an IPv4 packet of payload + 28 bytes)."""
        size = f" -M do -s {payload}" if payload is not None else ""
        done = self.cluster.ssh(source.node, f"ip netns exec {self.pod_netns(source)} ping -c 1 -W 2{size} "
                                             f"{target_ip}", check=False, timeout=30)
        return done.returncode == 0
