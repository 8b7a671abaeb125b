"""
End to end: the real deploy.py, through the real pyinfra CLI over SSH, on real Debian
nodes that run a real Kubernetes cluster without a pod network (testbed/podbed.py,
testbed/kubebed/). podnet must turn node IPAM on in the real kube-controller-manager, roll
out flanneld, and then pods created through the API server must get IPs from their node's
podCIDR and reach each other across nodes.

Two clusters, one after the other (each shared by the tests of its group):
- containerd-2.x: podnet's defaults (containerd 2.3.4, kube-controller-manager as a
  kubeadm static pod, the kube-flannel DaemonSet), 3 nodes, dual-stack;
- flanneld-systemd: Debian's containerd 1.6, kube-controller-manager as a systemd unit,
  flanneld as podnet's systemd unit, 2 nodes, podnet's IPv4 pod network only (single stack
  stays proven) on a cluster that runs dual-stack, until its next-to-last test turns podnet's
  dual stack on (a pod network change: the nodes register again and pods get both families)
  and its last takes it all off on host-gw; the nodes download the release files themselves
  from the mirror, served on the cluster's bridge (release_download = "nodes"; on the other
  the laptop sends the release archives).
The DaemonSet on containerd 1.6 runs on the reset tests' cluster (tests/test_reset_e2e.py).
Dual-stack beds (testbed.podbed's ``dual_stack``): the nodes have IPv6 addresses (unique local),
the API server and kubelets run dual-stack, podnet is deployed with ``cluster_cidr_ipv6`` and
``service_cluster_ip_range_ipv6``; every test there checks both IP families.

Run alone with: python3 -m pytest -m e2e
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import itertools
import os
import shlex
import subprocess
import tomllib
from dataclasses import dataclass

import pytest
import requests
import yaml

from bench import run as node_costs  # counts what a pyinfra run cost each node, from its sshd log
from tasks import containerd as containerd_tasks
from tasks import flannel as flannel_tasks
from tasks.settings import parse_host_settings
from testbed.cri.client import cri_over_ssh
from tasks.doctor.run import JSON_ENV as DOCTOR_JSON
from testbed.podbed import CLUSTER_CIDR_IPV6, KCM_UNIT_PATH, MANIFEST_PATH, PING_HEADERS, VXLAN_MTU, PodBed
from tests.support.leftovers import NOTHING, leftovers, pod_routes
from testbed.kubebed.cluster import SERVICE_CIDR_IPV6

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="booting nodes needs root"),
]


@dataclass(frozen=True)
class BedKind:
    name: str
    generation: str
    runtime: str
    rollout: str
    nodes: int
    dual_stack: bool  # podnet's inventory has both pod networks from the start
    dual_stack_cluster: bool  # the nodes have IPv6 addresses, the API server and kubelets run dual-stack
    release_download: str = "laptop"


KINDS = [BedKind("containerd-2.x", "2.x", "static-pod", "daemonset", 3, True, True),
         BedKind("flanneld-systemd", "1.x", "systemd", "systemd", 2, False, True, release_download="nodes")]


@pytest.fixture(scope="module", params=KINDS, ids=[k.name for k in KINDS])
def bed(request, served_cluster):
    kind: BedKind = request.param
    name = {"containerd-2.x": "e2e2", "flanneld-systemd": "e2es"}[kind.name]
    downloads: list = []
    clients: list = []  # (client address, method, path, status) of every request
    replaced: dict = {}  # (client address, path) -> other bytes the mirror answers with
    nodes_download = kind.release_download == "nodes"
    with served_cluster(name, kind.nodes, request_log=downloads, ipv6=kind.dual_stack_cluster, to_nodes=nodes_download,
                        client_log=clients, replaced=replaced) as (base_url, mirror, workdir, cluster):
        bed = PodBed(cluster, base_url, mirror, kind.generation, workdir, runtime=kind.runtime, rollout=kind.rollout,
                     dual_stack=kind.dual_stack, dual_stack_cluster=kind.dual_stack_cluster,
                     release_download=kind.release_download)
        bed.kind, bed.clients, bed.replaced = kind, clients, replaced
        bed.host_ipv6_forwarding = host_ipv6_forwarding()
        kube = bed.install_cluster()
        if nodes_download:
            bed.give_nodes_wget()
        control_plane = cluster.nodes[0]
        bed.pod_cidrs_before = bed.pod_cidrs()
        bed.kcm_before = kube.get(control_plane, MANIFEST_PATH if kind.runtime == "static-pod" else KCM_UNIT_PATH)
        bed.write_inventory()
        marks = [node_costs.mark(node) for node in cluster.nodes]
        bed.first_run = bed.deploy()
        assert bed.first_run.returncode == 0, bed.first_run.output[-4000:]
        bed.first_run_costs = [node_costs.cost_since(node, m) for node, m in zip(cluster.nodes, marks)]
        bed.wait_for_flannel()
        bed.first_run_downloads = list(downloads)
        bed.first_run_clients = list(clients)
        bed.downloads = downloads  # every request the mirror answered, live
        settings = settings_of(bed)
        bed.flannel_version = settings.flannel_cni_plugin_version
        yield bed


def host_ipv6_forwarding() -> str:
    """This machine's own net.ipv6.conf.all.forwarding (a node's is its network namespace's)."""
    with open("/proc/sys/net/ipv6/conf/all/forwarding") as value:
        return value.read().strip()


def settings_of(bed: PodBed):
    return parse_host_settings(bed.inventory_data(**bed.overrides), "node", [])


def exec_start(unit: str) -> list[str]:
    """The ExecStart= command line of a systemd unit, continuation lines joined, as systemd splits it."""
    line = unit.split("\nExecStart=", 1)[1]
    joined = ""
    for part in line.split("\n"):
        if part.rstrip().endswith("\\"):
            joined += part.rstrip()[:-1] + " "
            continue
        joined += part
        break
    return shlex.split(joined)


def nodes_of(bed: PodBed) -> int:
    return len(bed.cluster.nodes)


def pids(bed: PodBed) -> dict:
    """Every long-running process podnet must not restart without a reason."""
    return {"containerd": [bed.containerd_pid(n) for n in bed.cluster.nodes],
            "kubelet": [bed.main_pid(n, "kubelet") for n in bed.cluster.nodes],
            "flanneld": bed.flanneld_pids()}


# --- before podnet, and what the first run did ------------------------------------------------


def test_before_podnet_nodes_are_registered_without_pod_cidrs(bed):
    assert sorted(bed.pod_cidrs_before) == sorted(n.name for n in bed.cluster.nodes)
    assert set(bed.pod_cidrs_before.values()) == {""}


def test_first_run_sets_up_the_pod_network_without_errors(bed):
    changed = bed.first_run.changed_operations()
    assert bed.first_run.errors == 0
    every_node = ["containerd: config.toml (checked by containerd first)", "cni: plugin binaries",
                  "cni: 10-flannel.conflist", "kernel: modules-load.d and sysctl.d files"]
    if bed.kind.rollout == "systemd":
        every_node += ["flannel: flanneld binary and net-conf.json", "flannel: flanneld unit",
                       "flannel: flanneld's ServiceAccount token and kubeconfig (mode 0600)"]
        assert changed.get("flannel: flanneld's ServiceAccount and ClusterRole applied") == 1
    for operation in every_node:
        assert changed.get(operation) == nodes_of(bed), (operation, changed)
    # the cluster already ran this containerd release: its binaries stay, its config is podnet's now
    assert "containerd: containerd binaries" not in changed
    assert changed.get("kube-controller-manager: node IPAM flags") == 1
    if bed.kind.rollout == "daemonset":
        assert changed.get("flannel: DaemonSet applied") == 1
        assert changed.get("flannel: DaemonSet rolled out, every flannel pod Ready") == 1


def test_controller_manager_assigns_each_node_a_distinct_pod_cidr_from_the_cluster_cidr(bed):
    cidrs = bed.kube.pod_cidrs_by_family()
    assert sorted(cidrs) == sorted(n.name for n in bed.cluster.nodes)
    clusters = {4: (bed.cluster_cidr, 24), 6: (bed.cluster_cidr_ipv6, 64)}
    for version in bed.families:  # one podCIDR per family on every node, from that family's cluster CIDR
        cluster, mask = clusters[version]
        networks = [[n for n in map(ipaddress.ip_network, node_cidrs) if n.version == version]
                    for node_cidrs in cidrs.values()]
        assert all(len(family) == 1 for family in networks), cidrs
        networks = [family[0] for family in networks]
        assert all(n.prefixlen == mask and n.subnet_of(cluster) for n in networks), cidrs
        assert len(set(networks)) == len(networks)
    assert all(len(node_cidrs) == len(bed.families) for node_cidrs in cidrs.values()), cidrs


def test_controller_manager_gets_node_ipam_flags_and_keeps_the_rest(bed):
    control_plane = bed.cluster.nodes[0]
    if bed.kind.runtime == "static-pod":
        manifest = yaml.safe_load(bed.sh(control_plane, f"cat {MANIFEST_PATH}"))
        original = yaml.safe_load(bed.kcm_before)
        command = manifest["spec"]["containers"][0].pop("command")
        original_command = original["spec"]["containers"][0].pop("command")
        assert manifest == original
    else:
        command = exec_start(bed.sh(control_plane, f"cat {KCM_UNIT_PATH}"))
        original_command = exec_start(bed.kcm_before.decode())
    if bed.dual_stack:
        flags = ("--allocate-node-cidrs=true", f"--cluster-cidr=10.244.0.0/16,{CLUSTER_CIDR_IPV6}",
                 "--node-cidr-mask-size-ipv4=24", "--node-cidr-mask-size-ipv6=64",
                 f"--service-cluster-ip-range=10.96.0.0/12,{SERVICE_CIDR_IPV6}",
                 "--controllers=*,bootstrapsigner,tokencleaner")
        assert not any(arg.startswith("--node-cidr-mask-size=") for arg in command), command
    else:
        flags = ("--allocate-node-cidrs=true", "--cluster-cidr=10.244.0.0/16", "--node-cidr-mask-size=24",
                 "--controllers=*,bootstrapsigner,tokencleaner")
    for flag in flags:
        assert flag in command
    assert set(original_command) <= set(command)
    # the running process has them: kube-controller-manager restarted with the new command line
    running = bed.sh(control_plane, "tr '\\0' ' ' < /proc/$(pgrep -x kube-controller)/cmdline").split()
    assert flags[0] in running and flags[1] in running


def test_flanneld_writes_subnet_env_from_each_nodes_pod_cidr(bed):
    for node in bed.cluster.nodes:
        env = bed.subnet_env(node)
        expected = {"FLANNEL_NETWORK": "10.244.0.0/16", "FLANNEL_SUBNET": str(bed.node_subnet(node)),
                    "FLANNEL_MTU": str(VXLAN_MTU), "FLANNEL_IPMASQ": "true"}
        if bed.dual_stack:  # flanneld's one FLANNEL_MTU for both families (podnet's flannel_mtu goes to the pods)
            expected.update(FLANNEL_IPV6_NETWORK=CLUSTER_CIDR_IPV6, FLANNEL_IPV6_SUBNET=str(bed.node_subnet(node, 6)))
        assert env == expected, node.name
        assert bed.sh(node, "ip -o link show flannel.1 >/dev/null && echo vxlan").strip() == "vxlan"
        if bed.dual_stack:  # IPv6 pod packets go through their own vxlan device, over the nodes' IPv6 addresses
            link = bed.sh(node, "ip -d -o link show flannel-v6.1")
            assert f" mtu {bed.pod_mtu} " in link and f"local {node.ip6} " in link, link


@pytest.mark.only_bed("flanneld-systemd")
def test_a_systemd_rollout_node_holds_no_admin_credentials_and_flanneld_runs_as_its_service_account(bed):
    worker = bed.cluster.nodes[1]
    # the kubeconfig the test bed's control plane keeps is on the control plane only
    assert bed.sh(worker, "ls /etc/kubernetes/admin.conf /etc/kubernetes/super-admin.conf 2>/dev/null",
                  check=False).strip() == ""
    for node in bed.cluster.nodes:
        files = bed.sh(node, f"stat -c '%a %U %n' {flannel_tasks.KUBECONFIG_PATH} {flannel_tasks.TOKEN_PATH}")
        assert files.split("\n")[:2] == [f"600 root {flannel_tasks.KUBECONFIG_PATH}",
                                        f"600 root {flannel_tasks.TOKEN_PATH}"], node.name
        pid = bed.main_pid(node, "flanneld")
        assert f"--kubeconfig-file={flannel_tasks.KUBECONFIG_PATH}" in bed.sh(node, f"tr '\\0' ' ' < /proc/{pid}/cmdline")
    # what the API server makes of the worker's token: flannel's ServiceAccount, allowed what flannel's
    # ClusterRole allows and nothing more
    kubeconfig = yaml.safe_load(bed.sh(worker, f"cat {flannel_tasks.KUBECONFIG_PATH}"))
    cluster = kubeconfig["clusters"][0]["cluster"]
    token = bed.sh(worker, f"cat {flannel_tasks.TOKEN_PATH}").strip()
    ca = bed.workdir / "flannel-ca.crt"
    ca.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))

    def review(path: str, spec: dict) -> dict:
        answer = requests.post(cluster["server"] + path, json=spec, verify=str(ca), timeout=30,
                               headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 201, answer.text
        return answer.json()["status"]

    who = review("/apis/authentication.k8s.io/v1/selfsubjectreviews",
                 {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    assert who["userInfo"]["username"] == "system:serviceaccount:kube-flannel:flannel"

    def allowed(verb: str, resource: str, subresource: str = "") -> bool:
        return review("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", {
            "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {"verb": verb, "resource": resource, "subresource": subresource}}})[
            "allowed"]

    assert allowed("patch", "nodes", "status") and allowed("watch", "nodes")
    assert not allowed("list", "secrets") and not allowed("delete", "nodes") and not allowed("create", "pods")


def test_containerd_runs_the_rendered_config(bed):
    settings = settings_of(bed)
    expected = containerd_tasks.render_config(settings)
    for node in bed.cluster.nodes:
        assert bed.sh(node, "systemctl is-active containerd").strip() == "active"
        assert bed.sh(node, f"cat {containerd_tasks.CONFIG_PATH}") == expected
        dump = tomllib.loads(bed.sh(node, "/usr/local/bin/containerd config dump"))
        if bed.generation == "1.x":
            cni = dump["plugins"]["io.containerd.grpc.v1.cri"]["cni"]
            assert cni["bin_dir"] == "/opt/cni/bin"
        else:
            cni = dump["plugins"]["io.containerd.cri.v1.runtime"]["cni"]
            assert cni["bin_dirs"] == ["/opt/cni/bin"]
        assert cni["conf_dir"] == "/etc/cni/net.d"


def test_kernel_prerequisites_are_applied_and_persisted(bed):
    for node in bed.cluster.nodes:
        values = bed.sh(node, "cat /proc/sys/net/ipv4/ip_forward /proc/sys/net/bridge/bridge-nf-call-iptables "
                              "/proc/sys/net/bridge/bridge-nf-call-ip6tables /proc/sys/net/ipv6/conf/all/forwarding"
                        ).split()
        # IPv6 forwarding only on dual stack (a node's /proc/sys/net is its own network namespace's)
        assert values == ["1", "1", "1", "1" if bed.dual_stack else "0"]
        persisted = bed.sh(node, "cat /etc/sysctl.d/zz-podnet.conf")
        assert "net.ipv4.ip_forward = 1" in persisted
        assert ("net.ipv6.conf.all.forwarding = 1" in persisted) == bed.dual_stack
        assert bed.sh(node, "grep -v '^#' /etc/modules-load.d/podnet.conf").split() == ["overlay", "br_netfilter"]
    assert host_ipv6_forwarding() == bed.host_ipv6_forwarding  # this machine's own switch is untouched


def test_cri_reports_network_ready_and_nodes_are_ready(bed):
    for node in bed.cluster.nodes:
        with cri_over_ssh(bed.cluster.ssh_argv(node)) as cri:
            conditions = cri.status()
        assert conditions["RuntimeReady"][0] is True
        assert conditions["NetworkReady"][0] is True, conditions["NetworkReady"]
    ready = bed.kubectl("get nodes -o jsonpath='{range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}"
                        " {end}'").split()
    assert ready == ["True"] * nodes_of(bed)


# --- pods through the API server ---------------------------------------------------------------


def pod_address(pod, version: int) -> str:
    return pod.ip if version == 4 else pod.ip6


def test_pods_get_ips_from_their_nodes_pod_cidr_and_reach_each_other_across_nodes(bed):
    pods = [bed.run_pod(node, f"pod-{index}") for index, node in enumerate(bed.cluster.nodes)]
    try:
        for pod, version in itertools.product(pods, bed.families):  # an address of each family, in that podCIDR
            address, subnet = pod_address(pod, version), bed.node_subnet(pod.node, version)
            assert address and ipaddress.ip_address(address) in subnet.network, (pod.node.name, address, subnet)
            interface = bed.pod_interface(pod, version)
            assert interface == (f"{address}/{subnet.network.prefixlen}", bed.pod_mtu)
            assert bed.sh(pod.node, f"ip -o -{version} addr show dev cni0 scope global | awk '{{print $4}}'"
                          ).split() == [str(subnet)]
            assert bed.sh(pod.node, f"cat /var/lib/cni/networks/cbr0/{address}").split()[1] == "eth0"
        if not bed.dual_stack:
            assert all(pod.ip6 == "" for pod in pods)
        for (source, target), version in itertools.product(itertools.permutations(pods, 2), bed.families):
            assert bed.ping(source, pod_address(target, version)), \
                f"{source.name} cannot reach {target.name} over IPv{version} ({pod_address(target, version)})"
        # over the vxlan backend, a don't-fragment packet of exactly the pod MTU passes, one byte more does not
        source, target = pods[0], pods[1]
        seen = [f"{pod.node.name} {pod.name}: {pod.ip} {pod.ip6} (eth0 MTU {bed.pod_mtu})".replace("  ", " ")
                for pod in pods]  # every eth0's MTU was checked to be bed.pod_mtu above
        for version in bed.families:
            payload = bed.pod_mtu - PING_HEADERS[version]
            assert bed.ping(source, pod_address(target, version), payload=payload), version
            assert not bed.ping(source, pod_address(target, version), payload=payload + 1)
            seen.append(f"IPv{version} {source.name} -> {target.name}: ping -M do -s {payload} passes, "
                        f"-s {payload + 1} does not")
        (bed.workdir / "pods-seen.txt").write_text("\n".join(seen) + "\n")  # what the README's Dual stack shows
    finally:
        for pod in pods:
            bed.remove_pod(pod)
    for pod in pods:  # host-local released the address
        assert bed.address_released(pod), f"{pod.node.name}: /var/lib/cni/networks/cbr0/{pod.ip} still held"


# --- reruns ---------------------------------------------------------------------------------------


def test_rerun_changes_nothing_and_restarts_nothing(bed):
    before = pids(bed)
    flannel_pods = bed.flannel_pods() if bed.kind.rollout == "daemonset" else None
    rerun = bed.deploy()
    assert rerun.returncode == 0, rerun.output[-4000:]
    assert rerun.changed_operations() == {}
    assert rerun.errors == 0
    assert sum(r["no_change"] for r in rerun.results.values()) > 0
    assert pids(bed) == before
    if flannel_pods is not None:
        assert bed.flannel_pods() == flannel_pods


# --- doctor.py: the pod IP's path walked link by link (issue 20) -----------------------------------

# What doctor.py must leave as it is on every node: podnet's files, flannel's and host-local's state, the digest cache.
NODE_FILES = ("find /etc/cni /opt/cni/bin /etc/containerd /var/lib/podnet /run/flannel /var/lib/cni /etc/kube-flannel "
              "/etc/kubernetes/manifests -type f -exec sha256sum {} + 2>/dev/null | sort")


def run_doctor(bed: PodBed) -> tuple:
    """doctor.py with the real pyinfra CLI; (the run, its verdict as JSON)."""
    verdict = bed.workdir / "doctor.json"
    verdict.unlink(missing_ok=True)
    os.environ[DOCTOR_JSON] = str(verdict)
    try:
        run = bed.deploy(script="doctor.py")
    finally:
        del os.environ[DOCTOR_JSON]
    said = run.output.split("\n--> Loading config...", 1)[0]  # the verdict, printed before pyinfra's own lines
    with open(bed.workdir / "doctor-seen.txt", "a") as seen:  # what the README's "When pods get no IP" shows
        seen.write(f"$ pyinfra -y inventory.py doctor.py   # exit status {run.returncode}\n{said}\n\n")
    return run, json.loads(verdict.read_text())


def first_broken(verdict: dict) -> dict[str, str]:
    """Node -> the link the verdict names as broken there (nodes whose links all hold left out)."""
    return {node: link for node, cells in verdict["nodes"].items() for link, cell in cells.items()
            if cell["state"] == "broken"}


def test_doctor_right_after_the_deploy_finds_every_link_holding_and_changes_nothing(bed):
    files = [bed.sh(node, NODE_FILES) for node in bed.cluster.nodes]
    marks = [node_costs.mark(node) for node in bed.cluster.nodes]
    run, verdict = run_doctor(bed)
    assert run.returncode == 0, run.output[-4000:]
    assert "podnet doctor: every link holds on every node" in run.output
    assert verdict["healthy"] and first_broken(verdict) == {}
    for node in bed.cluster.nodes:
        cells = verdict["nodes"][node.name]
        assert {cells[link]["state"] for link in verdict["links"]} <= {"holds", "not applicable"}, cells
        assert cells["datapath"]["state"] == "holds", cells
    assert verdict["nodes"][bed.cluster.nodes[0].name]["node IPAM"]["state"] == "holds"
    for node, mark in zip(bed.cluster.nodes, marks):  # the probe and the datapath check (counted before the test's
        assert node_costs.cost_since(node, mark).commands == 2, node.name  # own ssh below adds one)
    assert [bed.sh(node, NODE_FILES) for node in bed.cluster.nodes] == files


def laptop_gets(bed: PodBed, requests: list) -> list[str]:
    """The paths the laptop (not a node) asked the mirror for."""
    nodes = {node.ip for node in bed.cluster.nodes}
    return [path for client, method, path, status in requests if method == "GET" and client not in nodes]


def node_gets(bed: PodBed, requests: list) -> dict[str, list[str]]:
    """Node name -> the paths it asked the mirror for."""
    return {node.name: [path for client, method, path, status in requests if method == "GET" and client == node.ip]
            for node in bed.cluster.nodes}


def mirror_path(bed: PodBed, name: str, version: str) -> str:
    return "/" + str(bed.mirror.path(name, version).relative_to(bed.mirror.root))


def test_first_run_downloads_each_artifact_once_and_uses_one_transfer_session_per_host(bed):
    paths = laptop_gets(bed, bed.first_run_clients)
    flannel = "/" + str(bed.mirror.path("flannel_cni_plugin", bed.flannel_version).relative_to(bed.mirror.root))
    expected = {"/" + str(bed.mirror.path(name, settings_of(bed).__getattribute__(f"{name}_version"))
                          .relative_to(bed.mirror.root)) for name in ("containerd", "runc", "cni_plugins")}
    expected |= {flannel, flannel + ".sha256"}  # the plugin's sum comes from the file published beside it
    if bed.kind.rollout == "systemd":
        flanneld = settings_of(bed).flanneld_version
        expected |= {"/" + str(bed.mirror.path("flanneld", flanneld).relative_to(bed.mirror.root)),
                     f"/repos/flannel-io/flannel/releases/tags/v{flanneld}"}  # flanneld's: the release API
    assert len(paths) == len(set(paths)) and set(paths) == expected, paths
    for node, cost in zip(bed.cluster.nodes, bed.first_run_costs):
        assert (cost.connections, cost.sftp) == (1, 1), (node.name, cost)
    gets = node_gets(bed, bed.first_run_clients)
    if bed.kind.release_download == "laptop":
        assert gets == {node.name: [] for node in bed.cluster.nodes}
        return
    release_files = expected - {p for p in expected if p.endswith(".sha256") or p.startswith("/repos/")}
    for node in bed.cluster.nodes:
        # each release file the node lacked, downloaded by the node itself, once; the CNI plugins' archives at least
        assert len(gets[node.name]) == len(set(gets[node.name])) and set(gets[node.name]) <= release_files, gets
        assert {mirror_path(bed, "cni_plugins", settings_of(bed).cni_plugins_version), flannel} <= set(gets[node.name])


def test_unpinned_sums_are_resolved_from_what_upstream_publishes_and_locked(bed):
    lock = yaml.safe_load((bed.workdir / "artifacts.lock.yaml").read_text())
    published = bed.mirror.url(bed.base_url, "flannel_cni_plugin", bed.flannel_version) + ".sha256"
    expected = {"flannel_cni_plugin": {bed.flannel_version: {"amd64": {
        "sha256": bed.mirror.sha256("flannel_cni_plugin", bed.flannel_version), "source": published}}}}
    if bed.kind.rollout == "systemd":
        flanneld = settings_of(bed).flanneld_version
        expected["flanneld"] = {flanneld: {"amd64": {
            "sha256": bed.mirror.sha256("flanneld", flanneld),
            "source": f"{bed.base_url}/repos/flannel-io/flannel/releases/tags/v{flanneld}"}}}
    assert lock == expected
    count = len(expected)
    assert bed.first_run.output.count(f"podnet: resolved {count} sha256 from upstream's published checksums") == 1
    assert f"flannel_cni_plugin {bed.flannel_version} amd64  sha256 " in bed.first_run.output
    assert "podnet: commit " in bed.first_run.output


@pytest.mark.parametrize("extra", [(), ("--dry",)], ids=["rerun", "dry"])
def test_a_converged_cluster_costs_one_command_per_host_and_no_transfer(bed, extra):
    marks = [node_costs.mark(node) for node in bed.cluster.nodes]
    requests_before = len(bed.downloads)
    run = bed.deploy(*extra)
    assert run.returncode == 0, run.output[-4000:]
    assert bed.downloads[requests_before:] == []  # the lock and the cache answer: upstream is not asked
    assert "podnet: resolved" not in run.output
    for node, before in zip(bed.cluster.nodes, marks):
        cost = node_costs.cost_since(node, before)
        assert (cost.connections, cost.commands, cost.sftp, cost.other_sessions) == (1, 1, 0, []), (node.name, cost)


def test_dry_run_on_a_converged_cluster_lists_no_change(bed):
    dry = bed.deploy("--dry")
    assert dry.returncode == 0, dry.output[-4000:]
    assert dry.detected is not None and len(dry.detected) >= 10, dry.output[-4000:]
    assert {name: n for name, n in dry.detected.items() if n} == {}


def test_dry_diff_shows_a_coming_change_without_making_it(bed):
    bed.write_inventory(flannel_mtu=1300)
    try:
        dry = bed.deploy("--dry", "--diff")
        assert dry.returncode == 0, dry.output[-4000:]
        assert {name: n for name, n in dry.detected.items() if n} == {"cni: 10-flannel.conflist": nodes_of(bed)}
        # the bed's own flannel_mtu on dual stack, flanneld's (none in the conflist) on single stack
        mtu_now = f', "mtu": {bed.pod_mtu}' if bed.dual_stack else ""
        assert f'-      "delegate": {{"hairpinMode": true, "isDefaultGateway": true{mtu_now}}}' in dry.output
        assert '+      "delegate": {"hairpinMode": true, "isDefaultGateway": true, "mtu": 1300}' in dry.output
        conflist = bed.sh(bed.cluster.nodes[0], "cat /etc/cni/net.d/10-flannel.conflist")
        assert '"mtu": 1300' not in conflist and ('"mtu"' in conflist) == bed.dual_stack
    finally:
        bed.write_inventory()


def test_a_pod_mtu_the_backend_cannot_carry_is_refused_before_any_change(bed):
    bed.write_inventory(flannel_mtu=bed.pod_mtu + 1)
    try:
        marks = [node_costs.mark(node) for node in bed.cluster.nodes]
        run = bed.deploy()
        assert run.returncode != 0
        # on dual stack the IPv6 packets' larger overhead (flannel-v6.1, over IPv6) decides
        adds = "adds 50 bytes to IPv4 and 70 bytes to IPv6 pod packets" if bed.dual_stack else "adds 50 bytes"
        message = (f"flannel_mtu: {bed.pod_mtu + 1} is too large: flanneld's interface host0 has MTU 1500 and the "
                   f"vxlan backend {adds}, so pod packets of more than {bed.pod_mtu} bytes would be dropped between "
                   f"nodes; set flannel_mtu to at most {bed.pod_mtu}")
        assert any(f"{node.name}: {message}" in run.output for node in bed.cluster.nodes), run.output[-3000:]
        for node, before in zip(bed.cluster.nodes, marks):  # the probe, nothing else
            cost = node_costs.cost_since(node, before)
            assert (cost.commands, cost.sftp) == (1, 0), (node.name, cost)
    finally:
        bed.write_inventory()


# --- changes roll exactly what they should ------------------------------------------------------------


@pytest.mark.only_bed("containerd-2.x", "flanneld-systemd")  # the conflist, read by both containerd generations
def test_mtu_change_rewrites_only_the_conflist_and_new_pods_get_it(bed):
    before = pids(bed)
    bed.write_inventory(flannel_mtu=1400)
    try:
        run = bed.deploy()
        assert run.returncode == 0, run.output[-4000:]
        assert run.changed_operations() == {"cni: 10-flannel.conflist": nodes_of(bed)}
        assert pids(bed) == before
        pod = bed.run_pod(bed.cluster.nodes[-1], "pod-mtu")
        try:
            assert bed.pod_interface(pod)[1] == 1400
        finally:
            bed.remove_pod(pod)
    finally:
        bed.write_inventory()
        assert bed.deploy().changed_operations() == {"cni: 10-flannel.conflist": nodes_of(bed)}


@pytest.mark.only_bed("containerd-2.x", "flanneld-systemd")  # the plugins, under both containerd generations
def test_plugin_version_bump_replaces_only_plugin_binaries(bed):
    versions = sorted(bed.mirror.manifest["cni_plugins"])
    current = bed.inventory_data(**bed.overrides)["cni_plugins_version"]
    other = next(v for v in versions if v != current)
    before = pids(bed)
    bed.write_inventory(cni_plugins_version=other)
    try:
        marks, requests_before = [node_costs.mark(node) for node in bed.cluster.nodes], len(bed.clients)
        run = bed.deploy()
        assert run.returncode == 0, run.output[-4000:]
        assert run.changed_operations() == {"cni: plugin binaries": nodes_of(bed)}
        assert pids(bed) == before
        # only the new plugins' archive reaches each node: sent by the laptop, or downloaded by the node itself
        archive = bed.mirror.path("cni_plugins", other)
        gets = node_gets(bed, bed.clients[requests_before:])
        for node, mark in zip(bed.cluster.nodes, marks):
            if bed.kind.release_download == "laptop":
                assert gets[node.name] == []
                # what reached the node (its veth: sshd logs no byte count when pyinfra resets the connection)
                received = node_costs.veth_since(node, mark)[0]
                assert received is not None, node.name
                # the archive, not the unpacked plugins (several times its size); the veth also carries the cluster's
                # own traffic to the node meanwhile
                assert archive.stat().st_size < received < archive.stat().st_size * 1.5, (node.name, received)
            else:
                assert gets[node.name] == [mirror_path(bed, "cni_plugins", other)], gets
        node = bed.cluster.nodes[-1]
        pod = bed.run_pod(node, "pod-bump")
        try:
            assert ipaddress.ip_address(pod.ip) in bed.node_subnet(node).network
        finally:
            bed.remove_pod(pod)
        assert bed.deploy().changed_operations() == {}
    finally:
        bed.write_inventory()
        assert bed.deploy().returncode == 0


@pytest.mark.only_bed("flanneld-systemd")  # the nodes download from the mirror
def test_a_corrupted_archive_on_the_mirror_stops_that_node_before_activation_and_the_other_converges(bed):
    current = bed.inventory_data(**bed.overrides)["cni_plugins_version"]
    other = next(v for v in sorted(bed.mirror.manifest["cni_plugins"]) if v != current)
    victim, healthy = bed.cluster.nodes[-1], bed.cluster.nodes[0]
    path = mirror_path(bed, "cni_plugins", other)
    good = bed.mirror.path("cni_plugins", other).read_bytes()
    corrupted = bytearray(good)
    corrupted[len(corrupted) // 2] ^= 0xFF  # the right size, wrong bytes
    plugins = "sha256sum /opt/cni/bin/* && ls -A /var/lib/podnet/releases"
    before, before_healthy = bed.sh(victim, plugins), bed.sh(healthy, plugins)
    bed.replaced[(victim.ip, path)] = bytes(corrupted)  # what the mirror serves that node (the laptop's copy is good)
    bed.write_inventory(cni_plugins_version=other)
    try:
        run = bed.deploy()
        assert run.returncode != 0
        assert (f"podnet: {victim.name}: {bed.base_url}{path} has sha256 {hashlib.sha256(corrupted).hexdigest()} on "
                f"the node, expected {hashlib.sha256(good).hexdigest()} (") in run.output, run.output[-4000:]
        assert f"podnet: {victim.name} failed at 'cni: plugin binaries'" in run.output
        assert bed.sh(victim, plugins) == before  # its live plugins as they were, the bad download removed
        assert bed.sh(healthy, plugins) != before_healthy  # the other node went on: the new plugins are active
        bed.replaced.clear()
        again = bed.deploy()
        assert again.returncode == 0, again.output[-4000:]
        assert again.changed_operations() == {"cni: plugin binaries": 1}
    finally:
        bed.replaced.clear()
        bed.write_inventory()
        assert bed.deploy().returncode == 0


DRIFTS = [
    # (what an operator or a stray tool did, node index, shell command, expected changed operations)
    ("config.toml edited by hand", 0, "echo '# local edit' >> /etc/containerd/config.toml",
     {"containerd: config.toml (checked by containerd first)": 1, "containerd: enabled and running": 1}),
    ("CNI plugin binary replaced", 1, "cp /opt/cni/bin/loopback /opt/cni/bin/bridge",
     {"cni: plugin binaries": 1}),
    ("binary lost its exec bit", -1, "chmod 0644 /usr/local/bin/ctr",
     {"containerd: containerd binaries": 1}),
    ("sysctl reset", -1, "sysctl -q -w net.ipv4.ip_forward=0",
     {"kernel: bridge-nf-call and ip_forward applied": 1}),
    ("stray conflist sorting ahead of ours", 0, "echo '{}' > /etc/cni/net.d/05-stray.conflist",
     {"cni: no other config sorts ahead of ours": 1}),
]


@pytest.mark.only_bed("containerd-2.x")  # drift repair does not depend on the cluster kind: proven on the default one
@pytest.mark.parametrize("drift", DRIFTS, ids=[d[0] for d in DRIFTS])
def test_rerun_repairs_drift_with_the_minimal_change(bed, drift):
    _, index, command, expected = drift
    node = bed.cluster.nodes[index]
    bed.sh(node, command)
    repair = bed.deploy()
    assert repair.returncode == 0, repair.output[-4000:]
    assert repair.changed_operations() == expected
    assert bed.deploy().changed_operations() == {}


@pytest.mark.only_bed("containerd-2.x", "flanneld-systemd")  # both rollouts, both stacks
def test_a_backend_change_replaces_only_flanneld_and_pods_still_reach_each_other(bed):
    before = pids(bed)
    flannel_pods = bed.flannel_pods() if bed.kind.rollout == "daemonset" else None
    bed.write_inventory(flannel_backend="host-gw")
    run = bed.deploy()
    assert run.returncode == 0, run.output[-4000:]
    bed.wait_for_flannel()
    if flannel_pods is not None:
        assert run.changed_operations() == {"flannel: kube-flannel manifest": 1,
                                            "flannel: DaemonSet applied": 1,
                                            "flannel: DaemonSet rolled out, every flannel pod Ready": 1,
                                            "flannel: every node has a podCIDR in the cluster CIDR": 1}
        replaced = bed.flannel_pods()
        assert sorted(replaced) == sorted(flannel_pods)
        assert not set(replaced.values()) & set(flannel_pods.values())  # every flannel pod is new
    else:
        assert run.changed_operations() == {"flannel: flanneld binary and net-conf.json": nodes_of(bed),
                                            "flannel: flanneld running": nodes_of(bed)}
    after = pids(bed)
    assert (after["containerd"], after["kubelet"]) == (before["containerd"], before["kubelet"])
    for node in bed.cluster.nodes:  # flanneld rewrote subnet.env for host-gw: no encapsulation
        assert bed.subnet_env(node)["FLANNEL_MTU"] == "1500"
    pods = [bed.run_pod(node, f"pod-hostgw-{index}") for index, node in enumerate(bed.cluster.nodes)]
    try:
        for (source, target), version in itertools.product(itertools.permutations(pods, 2), bed.families):
            assert bed.ping(source, pod_address(target, version)), \
                f"{source.name} cannot reach {target.name} over host-gw (IPv{version})"
        other = pods[1].node
        for version, via in ((4, other.ip), (6, other.ip6))[:len(bed.families)]:  # each family routed to its node
            route = bed.sh(pods[0].node, f"ip -{version} route show {bed.node_subnet(other, version).network}").strip()
            assert f"via {via} dev host0" in route, route
    finally:
        for pod in pods:
            bed.remove_pod(pod)
    back_from_host_gw(bed)


def back_from_host_gw(bed: PodBed) -> None:
    """Back to vxlan with one deploy. On dual stack podnet first deletes host-gw's IPv6 routes with flanneld stopped
    (the DaemonSet deleted, then applied again): flanneld v0.28.9 leaves them, and while one is there the kernel
    refuses vxlan's onlink IPv6 route to that node (flanneld would log `invalid argument`, retry for about 40 s per
    node and give the node up)."""
    bed.write_inventory()
    run = bed.deploy()
    assert run.returncode == 0, run.output[-4000:]
    bed.wait_for_flannel()
    changed = run.changed_operations()
    if bed.dual_stack:
        assert changed["flannel: host-gw's IPv6 routes to other nodes' podCIDRs deleted, flanneld stopped"] == \
            nodes_of(bed), changed
        if bed.kind.rollout == "daemonset":
            assert changed["flannel: DaemonSet deleted before host-gw's IPv6 routes go (its flanneld adds them "
                           "back)"] == 1, changed
        for node in bed.cluster.nodes:  # every other node's IPv6 pod subnet through flannel-v6.1 again
            routes = bed.sh(node, f"ip -6 route show root {CLUSTER_CIDR_IPV6}")
            assert " dev host0" not in routes, (node.name, routes)
            for other in bed.cluster.nodes:
                if other is not node:
                    subnet = bed.node_subnet(other, 6).network
                    assert f"{subnet} via {subnet.network_address} dev flannel-v6.1" in routes, (node.name, routes)
    assert bed.deploy().changed_operations() == {}


@pytest.mark.only_bed("containerd-2.x")  # podnet's default DaemonSet (flannel v0.28.9)
def test_flannel_pods_are_ready_because_flanneld_answers_readyz(bed):
    """The default DaemonSet declares flanneld's probes, and every pod is Ready through them: the kubelet
    marks a pod with a readinessProbe Ready only after the probe succeeded, and flanneld answers it."""
    bed.write_inventory()
    assert bed.deploy().returncode == 0
    daemonset = json.loads(bed.kubectl("-n kube-flannel get ds kube-flannel -o json"))
    container = daemonset["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 8081, "scheme": "HTTP"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 8081, "scheme": "HTTP"}
    assert "--healthz-port=8081" in container["args"]
    pods = json.loads(bed.kubectl("-n kube-flannel get pods -o json"))["items"]
    assert sorted(p["spec"]["nodeName"] for p in pods) == sorted(n.name for n in bed.cluster.nodes)
    for pod in pods:
        ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
        assert ready["Ready"] == "True", (pod["spec"]["nodeName"], pod["status"]["conditions"])
    for node in bed.cluster.nodes:  # flanneld's own answer, on the node (hostNetwork)
        answer = bed.sh(node, "exec 3<>/dev/tcp/127.0.0.1/8081 && printf 'GET /readyz HTTP/1.0\\r\\n\\r\\n' >&3 "
                              "&& head -n 1 <&3")
        assert answer.startswith("HTTP/1.0 200") or answer.startswith("HTTP/1.1 200"), (node.name, answer)


@pytest.mark.only_bed("containerd-2.x")
def test_a_crashing_flanneld_fails_the_rollout_naming_the_node_and_its_last_log_lines(bed):
    """flanneld told to use an interface no node has exits at start: the run fails (bounded) naming the node
    whose new pod is not Ready and what flanneld said; the next run with the right settings converges."""
    bed.write_inventory(host_data={"flannel_iface": "pn-nonexist0"}, flannel_rollout_timeout=40)
    try:
        run = bed.deploy()
        assert run.returncode != 0
        assert "kube-flannel did not roll out within 40s (flannel_rollout_timeout)" in run.output
        names = [n.name for n in bed.cluster.nodes]
        named = [name for name in names if f"on node {name} is not Ready" in run.output]
        assert named, run.output[-3000:]
        assert "pn-nonexist0" in run.output  # flanneld's own log line, from the crashed container
    finally:
        bed.write_inventory()
        restored = bed.deploy()
    assert restored.returncode == 0, restored.output[-4000:]
    bed.wait_for_flannel()


@pytest.mark.only_bed("flanneld-systemd")  # switched off behind podnet's back with a drop-in: the systemd-unit cluster
def test_the_pod_cidr_check_fails_clearly_when_node_ipam_is_switched_off(bed):
    control_plane, worker = bed.cluster.nodes[0], bed.cluster.nodes[-1]
    dropin = "/etc/systemd/system/kube-controller-manager.service.d/ipam-off.conf"
    command = [("--allocate-node-cidrs=false" if arg == "--allocate-node-cidrs=true" else arg)
               for arg in exec_start(bed.sh(control_plane, f"cat {KCM_UNIT_PATH}"))]
    bed.kube.put(control_plane, dropin, f"[Service]\nExecStart=\nExecStart={shlex.join(command)}\n")
    bed.sh(control_plane, "systemctl daemon-reload && systemctl restart kube-controller-manager")
    try:
        # the worker registers again: with node IPAM off it gets no podCIDR
        bed.kubectl(f"delete node {worker.name} --wait=true")
        bed.sh(worker, "systemctl restart kubelet")
        bed.kube.wait_for(control_plane, f"kubectl --kubeconfig=/etc/kubernetes/admin.conf get node {worker.name}",
                       "the re-registered node")
        run = bed.deploy()
        assert run.returncode != 0
        flags = (f"--allocate-node-cidrs=true --cluster-cidr=10.244.0.0/16,{CLUSTER_CIDR_IPV6} "
                 "--node-cidr-mask-size-ipv4=24 --node-cidr-mask-size-ipv6=64" if bed.dual_stack else
                 "--allocate-node-cidrs=true --cluster-cidr=10.244.0.0/16 --node-cidr-mask-size=24")
        assert (f"node {worker.name} has no spec.podCIDR (pod cidr not assigned): check that kube-controller-manager "
                f"runs with {flags}") in run.output, run.output[-3000:]
    finally:
        bed.sh(control_plane, f"rm -f {dropin} && systemctl daemon-reload && systemctl restart kube-controller-manager")
    bed.kube.wait_for(control_plane, f"kubectl --kubeconfig=/etc/kubernetes/admin.conf get node {worker.name} "
                                  "-o jsonpath='{.spec.podCIDR}' | grep -q .", "the worker's new podCIDR")
    assert bed.deploy().returncode == 0


# --- doctor.py on a broken cluster: each breakage named as exactly its link on exactly its node (issue 20) ----
# On the containerd-2.x cluster, before the pod network moves: each breakage is made and then repaired (by a podnet
# rerun where that is the fix), and the cluster is left converged.


@pytest.mark.only_bed("containerd-2.x")
def test_doctor_names_host_local_leaks_a_missing_plugin_and_a_config_sorting_ahead(bed):
    cp, second, third = bed.cluster.nodes
    leaked = [str(bed.node_subnet(cp).network[250]), str(bed.node_subnet(cp).network[251])]
    records = "/var/lib/cni/networks/cbr0"
    bed.sh(cp, f"for ip in {' '.join(leaked)}; do printf 'podnetdoctortest\\neth0' > {records}/$ip; done")
    bed.sh(second, "mv /opt/cni/bin/flannel /root/flannel.doctor-test")
    bed.sh(third, "printf '%s' '{\"cniVersion\": \"1.0.0\", \"name\": \"other\", \"plugins\": "
                  "[{\"type\": \"bridge\"}]}' > /etc/cni/net.d/00-other.conflist")
    try:
        run, verdict = run_doctor(bed)
        assert run.returncode != 0
        assert first_broken(verdict) == {cp.name: "host-local", second.name: "plugins", third.name: "conflist"}
        assert f"{cp.name}: host-local: 2 address(es) held by no sandbox: {', '.join(sorted(leaked))}" in run.output
        assert f"rm -f {' '.join(sorted(leaked))}" in verdict["nodes"][cp.name]["host-local"]["fix"]
        assert 'failed to find plugin "flannel" in path [/opt/cni/bin]' in run.output
        assert f"{third.name}: conflist: 00-other.conflist sorts ahead of 10-flannel.conflist" in run.output
    finally:
        bed.sh(cp, f"cd {records} && rm -f {' '.join(leaked)}")  # the doctor's fix
        bed.sh(second, "rm -f /root/flannel.doctor-test")
        assert bed.deploy().returncode == 0  # puts the plugin back, moves the config aside
        bed.sh(third, "rm -f /etc/cni/net.d/00-other.conflist.podnet-disabled")
    run, verdict = run_doctor(bed)
    assert run.returncode == 0 and first_broken(verdict) == {}, run.output[-3000:]


@pytest.mark.only_bed("containerd-2.x")
def test_doctor_names_a_stopped_flanneld_without_subnet_env_and_a_cni0_from_another_network(bed):
    cp, second, third = bed.cluster.nodes
    bed.sh(second, "ip addr add 10.99.0.1/24 dev cni0")
    bed.kubectl(f"taint node {third.name} podnet.io/doctor-test=1:NoExecute")  # evicts its flannel pod
    bed.kube.wait_for(cp, f"! kubectl --kubeconfig=/etc/kubernetes/admin.conf -n kube-flannel get pods -o wide "
                          f"| grep -w {third.name}", "the flannel pod gone from the tainted node")
    bed.sh(third, "rm -f /run/flannel/subnet.env")
    try:
        run, verdict = run_doctor(bed)
        assert run.returncode != 0
        assert first_broken(verdict) == {second.name: "cni0", third.name: "flanneld"}
        assert ('failed to set bridge addr: "cni0" already has an IP address different from '
                f"{bed.node_subnet(second).network[1]}/{bed.node_subnet(second).network.prefixlen}") in run.output
        assert f"{third.name}: flanneld: no pod of DaemonSet kube-flannel/kube-flannel runs on {third.name}" \
            in run.output
    finally:
        bed.sh(second, "ip addr del 10.99.0.1/24 dev cni0")
        bed.kubectl(f"taint node {third.name} podnet.io/doctor-test-")
        bed.wait_for_flannel()
    bed.kube.wait_for(third, "test -s /run/flannel/subnet.env", "flanneld writing subnet.env again")
    run, verdict = run_doctor(bed)
    assert run.returncode == 0 and first_broken(verdict) == {}, run.output[-3000:]


@pytest.mark.only_bed("containerd-2.x")
def test_doctor_names_node_ipam_switched_off_and_a_node_registered_without_a_pod_cidr(bed):
    cp, second, third = bed.cluster.nodes
    bed.sh(cp, f"sed -i 's/--allocate-node-cidrs=true/--allocate-node-cidrs=false/' {MANIFEST_PATH}")
    bed.kube.wait_for(cp, "pgrep -af kube-controller-manager | grep -q -- --allocate-node-cidrs=false",
                      "kube-controller-manager running without node IPAM")
    bed.kubectl(f"delete node {third.name}")
    bed.sh(third, "systemctl restart kubelet")
    bed.kube.wait_for(cp, f"kubectl --kubeconfig=/etc/kubernetes/admin.conf get node {third.name}",
                      "the node registered again")
    overrides = dict(bed.overrides)
    try:
        run, verdict = run_doctor(bed)
        assert run.returncode != 0
        assert first_broken(verdict) == {cp.name: "node IPAM", third.name: "podCIDR"}
        assert f"{cp.name}: node IPAM: kube-controller-manager ({MANIFEST_PATH}) runs with --allocate-node-cidrs=false" \
            in run.output
        assert f"{third.name}: podCIDR: Node {third.name} has no spec.podCIDR" in run.output
    finally:
        # the fix: podnet merges the flags back; the node gets a podCIDR (maybe another one: its old cni0 goes
        # with allow_pod_network_change) and its flannel pod, restarted at once rather than after its back-off
        bed.write_inventory(**{**overrides, "allow_pod_network_change": True})
        bed.deploy()
        bed.kube.wait_for(cp, f"kubectl --kubeconfig=/etc/kubernetes/admin.conf get node {third.name} "
                              "-o jsonpath='{.spec.podCIDR}' | grep -q .", "the node's podCIDR")
        bed.kubectl(f"-n kube-flannel delete pod --field-selector spec.nodeName={third.name}")
        bed.wait_for_flannel()
        assert bed.deploy().returncode == 0
        bed.write_inventory(**overrides)
    run, verdict = run_doctor(bed)
    assert run.returncode == 0 and first_broken(verdict) == {}, run.output[-3000:]


@pytest.mark.only_bed("containerd-2.x")
def test_doctor_names_the_node_whose_vxlan_port_is_dropped_and_the_one_whose_link_drops_large_packets(bed):
    cp, second, third = bed.cluster.nodes
    rule = "INPUT -p udp --dport 8472 -j DROP"
    bed.sh(second, f"iptables -I {rule}")  # inside the test node only
    try:
        run, verdict = run_doctor(bed)
        assert run.returncode != 0
        assert first_broken(verdict) == {second.name: "datapath"}
        assert verdict["nodes"][second.name]["datapath"]["short"] == "unreachable"
        assert f"{second.name} reaches no other node's pod subnet and none reaches it" in run.output
    finally:
        bed.sh(second, f"iptables -D {rule}")
    mtu = int(open(f"/sys/class/net/{third.veth}/mtu").read())
    # the bed's own veth, 30 bytes short of carrying the pod MTU in vxlan over IPv4 (and 50 over IPv6)
    subprocess.run(["ip", "link", "set", third.veth, "mtu", str(bed.pod_mtu + 20)], check=True)
    try:
        run, verdict = run_doctor(bed)
        assert run.returncode != 0
        assert first_broken(verdict) == {third.name: "datapath"}
        assert verdict["nodes"][third.name]["datapath"]["short"] == f"MTU {bed.pod_mtu} dropped"
    finally:
        subprocess.run(["ip", "link", "set", third.veth, "mtu", str(mtu)], check=True)
    run, verdict = run_doctor(bed)
    assert run.returncode == 0 and first_broken(verdict) == {}, run.output[-3000:]


# --- last on the containerd-2.x and flanneld-systemd clusters: the pod network changes -------------------------


@pytest.mark.only_bed("containerd-2.x", "flanneld-systemd")  # last on its cluster: the nodes register again
def test_a_pod_network_change_is_refused_then_carried_out_with_the_opt_in(bed):
    """On the dual-stack DaemonSet cluster the pod network moves (another cluster_cidr); on the IPv4 one (its cluster
    dual-stack, flanneld as a systemd unit) podnet's dual stack is turned on: no node holds an IPv6 podCIDR."""
    control_plane = bed.cluster.nodes[0]
    before = bed.pod_cidrs()
    kcm_path = MANIFEST_PATH if bed.kind.runtime == "static-pod" else KCM_UNIT_PATH
    manifest = bed.sh(control_plane, f"cat {kcm_path}")
    old_pod = bed.run_pod(bed.cluster.nodes[1], "pod-old-network")
    moving = bed.dual_stack
    new_cidr = "10.245.0.0/16" if moving else str(bed.cluster_cidr)
    if not moving:
        bed.turn_dual_stack_on()
    bed.write_inventory(**bed.overrides, cluster_cidr=new_cidr)
    marks = [node_costs.mark(node) for node in bed.cluster.nodes]
    refused = bed.deploy()
    assert refused.returncode != 0
    held = ", ".join(f"{name} {cidr}" if moving else f"{name} (no IPv6 podCIDR)" for name, cidr in sorted(before.items()))
    assert (f"cluster_cidr: nodes hold podCIDRs that cluster_cidr '{new_cidr}' with node_cidr_mask_size 24, "
            f"cluster_cidr_ipv6 '{CLUSTER_CIDR_IPV6}' with node_cidr_mask_size_ipv6 64 does not fit ({held})"
            ) in refused.output, refused.output[-3000:]
    for node, mark in zip(bed.cluster.nodes, marks):  # nothing but the probe
        assert node_costs.cost_since(node, mark).commands == 1, node.name
    assert bed.sh(control_plane, f"cat {kcm_path}") == manifest and bed.pod_cidrs() == before

    # podnet's default rollout timeout, not the bed's shorter one: the move replaces every flannel pod, one after the
    # other, and an old flanneld still retrying its routes to the re-registered nodes takes its 30 s grace period to end
    bed.write_inventory(**bed.overrides, allow_pod_network_change=True, flannel_rollout_timeout=300)
    moved = bed.deploy()
    assert moved.returncode == 0, moved.output[-4000:]
    changed = moved.changed_operations()
    assert changed["pod network: nodes registered again in the new pod network"] == 1
    assert changed["pod network: kubelet restarted to register again"] == nodes_of(bed)
    if moving:  # the bridge with the old gateway; turning dual stack on keeps the IPv4 one if the podCIDR stays
        assert changed["pod network: old cni0 removed"] >= 1
    cidrs = bed.kube.pod_cidrs_by_family()
    assert sorted(cidrs) == sorted(before)
    for name, held in cidrs.items():  # one podCIDR of each family, each in its cluster CIDR
        networks = [ipaddress.ip_network(c) for c in held]
        assert [n.version for n in networks] == [4, 6], (name, held)
        assert networks[0].subnet_of(ipaddress.ip_network(new_cidr)), (name, held)
        assert networks[1].subnet_of(bed.cluster_cidr_ipv6), (name, held)
    bed.wait_for_flannel()
    for node in bed.cluster.nodes:  # flanneld's one address, of the new network (an old one left beside it is removed)
        held = bed.sh(node, "ip -o -4 addr show dev flannel.1 scope global | awk '{print $4}'").split()
        assert held == [f"{bed.node_subnet(node).network.network_address}/32"], (node.name, held)
    assert bed.kubectl(f"get pod {old_pod.name} --ignore-not-found") == ""  # went with its node's registration
    pods = [bed.run_pod(node, f"pod-new-network-{index}") for index, node in enumerate(bed.cluster.nodes)]
    try:
        for pod, version in itertools.product(pods, bed.families):
            assert ipaddress.ip_address(pod_address(pod, version)) in bed.node_subnet(pod.node, version).network
            assert bed.sh(pod.node, f"ip -o -{version} addr show dev cni0 scope global | awk '{{print $4}}'"
                          ).split() == [str(bed.node_subnet(pod.node, version))]
        for (source, target), version in itertools.product(itertools.permutations(pods, 2), bed.families):
            assert bed.ping(source, pod_address(target, version)), \
                f"{source.name} cannot reach {target.name} in the new network (IPv{version})"
    finally:
        for pod in pods:
            bed.remove_pod(pod)
    assert bed.deploy().changed_operations() == {}


# --- last on the flanneld-systemd cluster, after dual stack was turned on: a reset of both families ----------------


@pytest.mark.only_bed("flanneld-systemd")  # last on its cluster: it takes the pod network off
def test_a_dual_stack_reset_after_host_gw_takes_both_families_off_and_leaves_nothing(bed):
    """On host-gw, after vxlan: flanneld's routes to the other nodes' podCIDRs of both families go through the node's
    link (not a device that goes with them), and vxlan's flannel.1 and flannel-v6.1 are still there."""
    bed.write_inventory(flannel_backend="host-gw")
    run = bed.deploy()
    assert run.returncode == 0, run.output[-4000:]
    bed.wait_for_flannel()
    for node in bed.cluster.nodes:
        routes = "\n".join(pod_routes(bed, node))
        for other in bed.cluster.nodes:
            if other is not node:  # each family's route to the other node through the link
                for version, via in ((4, other.ip), (6, other.ip6)):
                    assert f"{bed.node_subnet(other, version).network} via {via} dev host0" in routes, (node.name,
                                                                                                       routes)
    reset = bed.deploy(script="reset.py")
    assert reset.returncode == 0 and reset.errors == 0, reset.output[-4000:]
    changed = reset.changed_operations()
    assert changed["reset: flannel's routes to other nodes' podCIDRs deleted"] == nodes_of(bed), changed
    assert changed["reset: flannel's interfaces deleted"] == nodes_of(bed), changed
    for node in bed.cluster.nodes:
        assert leftovers(bed, node) == NOTHING, node.name
        assert pod_routes(bed, node) == [], node.name
    assert bed.kube.get(bed.cluster.nodes[0], KCM_UNIT_PATH) == bed.kcm_before
    assert bed.deploy(script="reset.py").changed_operations() == {}
