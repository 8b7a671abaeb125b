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

Dual stack (``dual_stack=True``): the nodes have IPv6 addresses on the test bridge (unique local,
testbed.localcluster), the API server and kubelets run dual-stack (testbed.kubebed), and the
inventory sets ``cluster_cidr_ipv6`` and ``service_cluster_ip_range_ipv6`` (CLUSTER_CIDR_IPV6, the
kube bed's IPv6 service range), so podnet turns node IPAM on for both families and flanneld runs
with ``EnableIPv6``. Pods then get an address of each family (``Pod.ip``, ``Pod.ip6``).
A dual-stack cluster may run podnet's IPv4 pod network only (``dual_stack_cluster=True``,
``dual_stack=False``) until ``turn_dual_stack_on()``: the inventory then has both, as an
operator enabling dual stack on a running IPv4 cluster writes it.
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
from testbed.kubebed.cluster import SERVICE_CIDR_IPV6, KubeBed, pod_ready
from testbed.localcluster import Cluster, Node
from testbed.localcluster.rootfs import cache_root

REPO = Path(__file__).resolve().parent.parent
MANIFEST_PATH = "/etc/kubernetes/manifests/kube-controller-manager.yaml"
KCM_UNIT_PATH = "/etc/systemd/system/kube-controller-manager.service"
VXLAN_MTU = 1450  # flanneld's FLANNEL_MTU with the vxlan backend on the 1500-byte test link
# The pod MTU of a dual-stack bed: flanneld's FLANNEL_MTU is the same 1450 for both families, but its IPv6
# device (flannel-v6.1, vxlan over the nodes' IPv6 addresses: 70 bytes) carries at most 1430, so podnet
# says to set flannel_mtu = 1430 there, and the bed's inventory does as an operator would.
DUAL_STACK_VXLAN_MTU = 1430
DEPLOY_TIMEOUT = 600
POD_TIMEOUT = 90
# The IPv6 pod network of a dual-stack bed (podnet's cluster_cidr_ipv6): unique local, in no node or host network.
CLUSTER_CIDR_IPV6 = "fd00:10:244::/56"
# What a don't-fragment ping adds to its ICMP data: IPv4 header 20 + ICMP 8; IPv6 header 40 + ICMPv6 8.
PING_HEADERS = {4: 28, 6: 48}


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
    ip6: str = ""  # its IPv6 address (a dual-stack bed), else ""


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
    rollout: podnet's flannel_rollout ("daemonset", the default, or "systemd");
    dual_stack: podnet is deployed with both pod networks;
    dual_stack_cluster: the API server and kubelets run dual-stack (default: ``dual_stack``; the cluster's nodes
    need IPv6 addresses: testbed.localcluster's ``ipv6``).
    """

    def __init__(self, cluster: Cluster, base_url: str, mirror, generation: str, workdir: Path,
                 runtime: str = "static-pod", rollout: str = "daemonset", dual_stack: bool = False,
                 dual_stack_cluster: bool | None = None, release_download: str = "laptop"):
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
        self.dual_stack = dual_stack
        self.dual_stack_cluster = dual_stack if dual_stack_cluster is None else dual_stack_cluster
        if dual_stack and not self.dual_stack_cluster:
            raise ValueError("podnet's IPv6 pod network needs a dual-stack cluster")
        self.cluster_cidr_ipv6 = ipaddress.ip_network(CLUSTER_CIDR_IPV6) if dual_stack else None
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
        if self.dual_stack:
            data.update(cluster_cidr_ipv6=CLUSTER_CIDR_IPV6, node_cidr_mask_size_ipv6=64,
                        service_cluster_ip_range_ipv6=SERVICE_CIDR_IPV6, flannel_mtu=DUAL_STACK_VXLAN_MTU)
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
                            containerd_config_version=2 if version.startswith("1.") else 3,
                            dual_stack=self.dual_stack_cluster)
        self.kube.install()  # admin.conf on the control plane only: podnet gives flanneld a kubeconfig of its own
        return self.kube

    def turn_dual_stack_on(self) -> None:
        """From now on the inventory has podnet's IPv6 pod network too (the cluster already runs dual-stack)."""
        if not self.dual_stack_cluster:
            raise ValueError("podnet's IPv6 pod network needs a dual-stack cluster")
        self.dual_stack = True
        self.cluster_cidr_ipv6 = ipaddress.ip_network(CLUSTER_CIDR_IPV6)

    # --- the deploy ------------------------------------------------------------------

    def deploy_command(self, *extra_args: str, script: str = "deploy.py", inventory: Path | None = None) -> list[str]:
        """The pyinfra command line of deploy.py (or ``script``, such as reset.py): `-y`, or `--dry` to only plan;
        ``inventory``: another inventory file than ``write_inventory``'s."""
        confirm = [] if "--dry" in extra_args else ["-y"]
        return [sys.executable, "-m", "pyinfra", *confirm, *extra_args, str(inventory or self.workdir / "inventory.py"),
                script]

    def deploy(self, *extra_args: str, script: str = "deploy.py", inventory: Path | None = None) -> DeployRun:
        """Run the real deploy.py (or ``script``) with the real pyinfra CLI over SSH (`-y`, or `--dry` to only plan)."""
        proc = subprocess.run(self.deploy_command(*extra_args, script=script, inventory=inventory), cwd=REPO,
                              capture_output=True, text=True, timeout=DEPLOY_TIMEOUT, stdin=subprocess.DEVNULL)
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
        return {pod["spec"]["nodeName"]: pod["metadata"]["uid"] for pod in self.kube.live_pods("kube-flannel")}

    def unready_flannel_pods(self) -> list[str]:
        """The member nodes whose kube-flannel pod (not being deleted) is missing or not Ready, as
        "<node> (<pod> not Ready)"; the doctor's flanneld link reads the same Ready condition."""
        ready = {pod["spec"].get("nodeName"): (pod["metadata"]["name"], pod_ready(pod))
                 for pod in self.kube.live_pods("kube-flannel")}
        return [f"{node.name} ({ready.get(node.name, ('no flannel pod',))[0]} not Ready)" for node in self.members
                if not ready.get(node.name, ("", False))[1]]

    def wait_for_flannel(self, timeout: float = POD_TIMEOUT) -> None:
        """flanneld runs on every node and has written subnet.env there from that node's podCIDR, of each
        family the bed runs, every node routes each other node's podCIDR the way the inventory's backend does
        (vxlan and host-gw), and with the DaemonSet its pod on every node is Ready (bounded wait: a rollout is
        complete when the pods run, flanneld writes the file a moment later, then replaces the routes, and its
        /readyz probe, every 5 s, marks the pod Ready after that; a restarted flanneld that failed its start is
        started again by systemd 5 s later). Without the routes, the old subnet.env of a flanneld that was just
        restarted with another backend passes for the new one's (CI saw vxlan's routes still in place)."""
        deadline = time.monotonic() + timeout
        pending: list[str] = []
        keys = {4: "FLANNEL_SUBNET", 6: "FLANNEL_IPV6_SUBNET"}
        while time.monotonic() < deadline:
            cidrs = self.kube.pod_cidrs_by_family()
            pending = self.unready_flannel_pods() if self.rollout == "daemonset" else []
            for node in self.members:
                text, _, routes = self.sh(node, "pgrep -x flanneld >/dev/null && cat /run/flannel/subnet.env "
                                                "2>/dev/null && echo ROUTES && ip -o -4 route show && ip -o -6 route show",
                                          check=False).partition("ROUTES\n")
                env = dict(line.split("=", 1) for line in text.split() if "=" in line)
                if not env:
                    pending.append(f"{node.name} (no flanneld running, or no subnet.env)")
                    continue
                for version in self.families:
                    subnet = env.get(keys[version], "")
                    network = next((c for c in cidrs.get(node.name, []) if ipaddress.ip_network(c).version == version),
                                   "")
                    if not network or not subnet or str(ipaddress.ip_interface(subnet).network) != network:
                        pending.append(f"{node.name} (IPv{version} podCIDR {network or 'none'}, subnet.env "
                                       f"{subnet or 'none'})")
                pending += [f"{node.name} (no route {route}...)" for route in self.flannel_routes(node, cidrs)
                            if not any(line.startswith(route) for line in routes.splitlines())]
            if not pending:
                return
            time.sleep(1)
        raise AssertionError(f"flanneld is not ready or has not written subnet.env after {timeout:.0f}s on: "
                             f"{', '.join(pending)}")

    def flannel_routes(self, node: Node, cidrs: dict[str, list[str]]) -> list[str]:
        """The start of the route flanneld gives ``node`` to each other member's podCIDR of each family the bed
        runs (``cidrs``: node -> podCIDRs), with the inventory's backend: vxlan's through flannel.<VNI> and
        flannel-v6.<VNI> onto the other node's subnet address, host-gw's onto the other node's address. Other
        backends: none checked."""
        backend = self.overrides.get("flannel_backend", "vxlan")
        vni = self.overrides.get("flannel_vni", 1)
        routes = []
        for other in self.members:
            for cidr in (cidrs.get(other.name, []) if other is not node else []):
                network = ipaddress.ip_network(cidr)
                if network.version not in self.families:
                    continue
                if backend == "vxlan":
                    device = f"flannel.{vni}" if network.version == 4 else f"flannel-v6.{vni}"
                    routes.append(f"{network} via {network.network_address} dev {device} ")
                elif backend == "host-gw":
                    routes.append(f"{network} via {other.ip if network.version == 4 else other.ip6} dev ")
        return routes

    def pod_cidrs(self) -> dict[str, str]:
        assert self.kube is not None
        return self.kube.pod_cidrs()

    @property
    def pod_mtu(self) -> int:
        """The MTU pods get with the vxlan backend and the bed's inventory."""
        return DUAL_STACK_VXLAN_MTU if self.dual_stack else VXLAN_MTU

    @property
    def families(self) -> tuple[int, ...]:
        """The IP versions the pod network has: (4,) or, dual-stack, (4, 6)."""
        return (4, 6) if self.dual_stack else (4,)

    def node_subnet(self, node: Node, version: int = 4) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
        """The node's pod subnet of that IP version with its gateway (.1 / ::1), from the podCIDR the controller
        manager gave it."""
        assert self.kube is not None
        cidrs = [ipaddress.ip_network(c) for c in self.kube.pod_cidrs_by_family()[node.name]]
        network = next(c for c in cidrs if c.version == version)
        return ipaddress.ip_interface(f"{network.network_address + 1}/{network.prefixlen}")

    def subnet_env(self, node: Node) -> dict[str, str]:
        text = self.sh(node, "cat /run/flannel/subnet.env")
        return dict(line.split("=", 1) for line in text.split() if "=" in line)

    # --- pods, through the API server and the kubelet ------------------------------------

    def run_pod(self, node: Node, name: str) -> Pod:
        """A pod bound to ``node`` (the pause image); waits (bounded) until it runs with an IP."""
        return self.run_pods([(node, name)])[0]

    def run_pods(self, placements: list[tuple[Node, str]]) -> list[Pod]:
        """Pods bound to their nodes (the pause image), all created first, then waited for (bounded) until each runs
        with an IP: the kubelets start them at the same time."""
        for node, name in placements:
            manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
                        "spec": {"nodeName": node.name, "terminationGracePeriodSeconds": 0,
                                 "containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10"}]}}
            self.kubectl("apply -f -", input=json.dumps(manifest))
        deadline = time.monotonic() + POD_TIMEOUT
        pods: list[Pod] = []
        for node, name in placements:
            status = {}
            while True:
                status = json.loads(self.kubectl(f"get pod {name} -o json"))["status"]
                ips = [entry["ip"] for entry in status.get("podIPs", [])]
                if status.get("phase") == "Running" and status.get("podIP") and len(ips) >= len(self.families):
                    ip6 = next((ip for ip in ips if ipaddress.ip_address(ip).version == 6), "")
                    pods.append(Pod(node, name, status["podIP"], ip6))
                    break
                if time.monotonic() > deadline:
                    events = self.kubectl(f"get events --field-selector involvedObject.name={name} -o "
                                          "jsonpath='{range .items[*]}{.reason}: {.message}{\"\\n\"}{end}'", check=False)
                    raise AssertionError(f"pod {name} on {node.name} not running with an IP after {POD_TIMEOUT}s: "
                                         f"{status}\n{events[-3000:]}")
                time.sleep(1)
        return pods

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

    def pod_interface(self, pod: Pod, version: int = 4) -> tuple[str, int]:
        """(address/prefix of that IP version (global scope), mtu) of eth0 in the pod's network namespace."""
        ns = self.pod_netns(pod)
        address = self.sh(pod.node, f"ip -n {ns} -o -{version} addr show dev eth0 scope global | "
                                    "awk '{print $4}'").strip()
        mtu = self.sh(pod.node, f"ip -n {ns} -o link show dev eth0 | sed -n 's/.* mtu \\([0-9]*\\).*/\\1/p'")
        return address, int(mtu)

    def ping(self, source: Pod, target_ip: str, payload: int | None = None) -> bool:
        """One ping (IPv4 or IPv6, by the target address) from ``source``'s network namespace; with ``payload``,
        that many ICMP data bytes and don't-fragment set (a packet of payload + PING_HEADERS bytes)."""
        size = f" -M do -s {payload}" if payload is not None else ""
        family = f"-{ipaddress.ip_address(target_ip).version}"
        done = self.cluster.ssh(source.node, f"ip netns exec {self.pod_netns(source)} ping {family} -c 1 -W 2{size} "
                                             f"{target_ip}", check=False, timeout=30)
        return done.returncode == 0
