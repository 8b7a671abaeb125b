"""
End to end, cluster_bootstrap: the real deploy.py, through the real pyinfra CLI over SSH, on
fresh Debian nodes with no Kubernetes on them (testbed/bootbed.py). podnet installs kubeadm,
kubelet and kubectl 1.36.2 from the test mirror (sha256 from the .sha256 files beside them, as
from dl.k8s.io), runs the real `kubeadm init` on the first node and `kubeadm join` on the
other, then node IPAM and the flannel DaemonSet.

One cluster of three nodes, the third left out of the inventory until the last test:
1. the first run is killed (SIGKILL of the pyinfra process) right after `kubeadm init`
   finished and before the join; the next run must converge with no manual step;
2. every node Ready with a podCIDR from kube-controller-manager, flannel rolled out, pods on
   different nodes reach each other;
3. a rerun changes nothing (no new bootstrap token, no init, no join, no restart, one
   command per host);
4. the third node added to the inventory as a second control-plane host is joined with
   `kubeadm join --control-plane` (the bed's etcd is external and reachable from every node),
   and no other node changes.

The worker's join (2.) and the control-plane host's (4.) are watched from the host: no
process's command line on any node (nor the laptop's) ever holds the bootstrap token or
the certificate key, the JoinConfiguration file holding them is mode 0600 and gone after the
join, and no token a join used is left in the cluster.

Run alone with: python3 -m pytest -q tests/test_bootstrap_e2e.py
"""

from __future__ import annotations

import ipaddress
import json
import os

import pytest

from bench import run as node_costs  # counts what a pyinfra run cost each node, from its sshd log
from tasks import flannel as flannel_tasks
from tasks import kubeadm as kubeadm_tasks
from testbed.bootbed import BootBed, changed_hosts
from testbed.kubebed import binaries

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="booting nodes needs root"),
]

INIT = "kubeadm: control plane initialised (kubeadm init)"
WORKER_JOIN = "kubeadm: worker joined (kubeadm join)"
CONTROL_PLANE_JOIN = "kubeadm: control-plane host joined (kubeadm join --control-plane)"
KUBERNETES_FILES = ("/usr/local/bin/kubeadm", "/usr/local/bin/kubelet", "/usr/local/bin/kubectl", "/etc/kubernetes")


@pytest.fixture(scope="module")
def bed(served_cluster):
    downloads: list = []
    with served_cluster("pn-boot", nodes=3, request_log=downloads) as (base_url, mirror, workdir, cluster):
        bed = BootBed(cluster, base_url, mirror, workdir, members=2, control_planes=2)
        bed.prepare_nodes()
        bed.fresh = {node.name: [path for path in KUBERNETES_FILES if bed.has_file(node, path)]
                     for node in cluster.nodes}
        bed.write_inventory()
        bed.killed_status, bed.killed_output = bed.deploy_killed_at(CONTROL_PLANE_JOIN)
        control_plane, worker = cluster.nodes[:2]
        bed.after_kill = {"admin.conf on the control plane": bed.has_file(control_plane, kubeadm_tasks.ADMIN_CONF),
                          "kubelet.conf on the worker": bed.has_file(worker, kubeadm_tasks.KUBELET_CONF)}
        bed.first_run, bed.first_watch = bed.deploy_watching_secrets()
        assert bed.first_run.returncode == 0, bed.first_run.output[-4000:]
        bed.tokens_after_first_run = bed.bootstrap_tokens()
        bed.wait_for_flannel()
        bed.downloads = downloads
        yield bed


# --- the interrupted first run, and the run that converged -----------------------------------


def test_nodes_start_without_any_kubernetes(bed):
    assert bed.fresh == {node.name: [] for node in bed.cluster.nodes}


def test_the_first_run_was_killed_after_kubeadm_init_and_before_the_join(bed):
    assert bed.killed_status == -9
    assert changed_hosts(bed.killed_output).get(INIT) == ["pn-boot-1"]
    assert bed.after_kill == {"admin.conf on the control plane": True, "kubelet.conf on the worker": False}


def test_kubeadm_kubelet_and_kubectl_came_from_the_mirror_with_their_published_sha256(bed):
    lock = (bed.workdir / "artifacts.lock.yaml").read_text()
    for name in ("kubeadm", "kubelet", "kubectl"):
        path = f"/release/v{binaries.KUBERNETES_VERSION}/bin/linux/amd64/{name}"
        assert ("GET", path, 200) in bed.downloads and ("GET", f"{path}.sha256", 200) in bed.downloads, name
        assert bed.mirror.sha256(name, binaries.KUBERNETES_VERSION) in lock
        installed = bed.sh(bed.cluster.nodes[1], f"sha256sum /usr/local/bin/{name}").split()[0]
        assert installed == bed.mirror.sha256(name, binaries.KUBERNETES_VERSION)


def test_the_next_run_joins_the_worker_without_initialising_again(bed):
    changed = changed_hosts(bed.first_run.output)
    assert bed.first_run.errors == 0
    assert INIT not in changed
    assert changed[WORKER_JOIN] == ["pn-boot-2"]
    assert CONTROL_PLANE_JOIN not in changed
    assert changed["flannel: DaemonSet applied"] == ["pn-boot-1"]
    assert changed["flannel: DaemonSet rolled out, every flannel pod Ready"] == ["pn-boot-1"]


def assert_join_secrets_kept(bed, watch, node, tokens_after: list[str]) -> None:
    """What a watched join must show: its secrets only in the 0600 file, which is gone; its token deleted."""
    assert len(watch.tokens) == 1, watch.tokens  # the watch saw the join file, with the join's own token
    assert watch.modes == {"600"}
    assert f"{kubeadm_tasks.KUBEADM} join --config {kubeadm_tasks.JOIN_CONFIG_PATH} " in watch.command_lines
    assert watch.command_lines_holding_a_secret() == []
    assert not bed.has_file(node, kubeadm_tasks.JOIN_CONFIG_PATH)
    token_ids = {f"bootstrap-token-{token.split('.')[0]}" for token in watch.tokens}
    assert token_ids.isdisjoint(tokens_after), tokens_after


def test_the_workers_join_secrets_were_on_no_command_line_and_its_token_is_deleted(bed):
    assert_join_secrets_kept(bed, bed.first_watch, bed.cluster.nodes[1], bed.tokens_after_first_run)
    assert bed.first_watch.certificate_keys == set()  # a worker gets no certificate key
    assert bed.first_watch.secrets().isdisjoint(bed.first_run.output.split())


# --- the cluster kubeadm made ------------------------------------------------------------------


def test_every_node_is_ready_with_a_pod_cidr_from_the_controller_manager(bed):
    ready = bed.nodes_ready()
    assert sorted(ready) == ["pn-boot-1", "pn-boot-2"]
    cidrs = [ipaddress.ip_network(cidr) for status, cidr in ready.values()]
    assert [status for status, _ in ready.values()] == ["True", "True"]
    assert all(cidr.prefixlen == 24 and cidr.subnet_of(bed.cluster_cidr) for cidr in cidrs)
    assert cidrs[0] != cidrs[1]
    # kubeadm's own manifest, with the node IPAM flags from podnet's init configuration
    manifest = bed.sh(bed.cluster.nodes[0], "cat /etc/kubernetes/manifests/kube-controller-manager.yaml")
    for flag in ("--allocate-node-cidrs=true", "--cluster-cidr=10.244.0.0/16", "--node-cidr-mask-size=24"):
        assert flag in manifest


def test_the_control_plane_is_kubeadms_with_the_external_etcd(bed):
    version = json.loads(bed.kubectl("version -o json"))["serverVersion"]["gitVersion"]
    assert version.startswith(f"v{binaries.KUBERNETES_VERSION}")
    apiserver = bed.sh(bed.cluster.nodes[0], "cat /etc/kubernetes/manifests/kube-apiserver.yaml")
    assert f"--etcd-servers={bed.etcd_endpoint}" in apiserver
    assert not bed.has_file(bed.cluster.nodes[0], "/etc/kubernetes/manifests/etcd.yaml")


def test_the_flannel_daemonset_rolls_out_on_every_node(bed):
    status = json.loads(bed.kubectl(f"-n {flannel_tasks.NAMESPACE} get daemonset {flannel_tasks.DAEMONSET} "
                                    "-o json"))["status"]
    assert (status["desiredNumberScheduled"], status["numberReady"], status["updatedNumberScheduled"]) == (2, 2, 2)


def test_pods_on_different_nodes_reach_each_other(bed):
    first, second = (bed.run_pod(node, f"boot-ping-{index}") for index, node in enumerate(bed.members))
    try:
        for pod in (first, second):
            assert ipaddress.ip_address(pod.ip) in ipaddress.ip_network(bed.pod_cidrs()[pod.node.name])
        assert bed.ping(first, second.ip)
        assert bed.ping(second, first.ip)
    finally:
        bed.remove_pod(first)
        bed.remove_pod(second)


# --- reruns --------------------------------------------------------------------------------------


def test_a_rerun_changes_nothing_and_creates_no_token(bed):
    tokens = bed.bootstrap_tokens()
    kubelets = {node.name: bed.main_pid(node, "kubelet") for node in bed.members}
    apiserver = bed.sh(bed.cluster.nodes[0], "pgrep -x kube-apiserver").split()
    marks = [node_costs.mark(node) for node in bed.members]
    run = bed.deploy()
    assert (run.returncode, run.errors, run.changed_operations()) == (0, 0, {}), run.output[-3000:]
    for node, mark in zip(bed.members, marks):
        cost = node_costs.cost_since(node, mark)
        assert (cost.commands, cost.sftp) == (1, 0), (node.name, cost)
    assert bed.bootstrap_tokens() == tokens
    assert {node.name: bed.main_pid(node, "kubelet") for node in bed.members} == kubelets
    assert bed.sh(bed.cluster.nodes[0], "pgrep -x kube-apiserver").split() == apiserver


def test_adding_a_control_plane_host_to_the_inventory_joins_only_that_node_without_exposing_its_secrets(bed):
    old = list(bed.members)
    new_node = bed.cluster.nodes[2]
    kubelets = {node.name: bed.main_pid(node, "kubelet") for node in old}
    bed.members = list(bed.cluster.nodes)
    bed.write_inventory()
    run, watch = bed.deploy_watching_secrets()
    assert (run.returncode, run.errors) == (0, 0), run.output[-3000:]
    changed = changed_hosts(run.output)
    assert changed[CONTROL_PLANE_JOIN] == ["pn-boot-3"]
    assert WORKER_JOIN not in changed
    assert {host for hosts in changed.values() for host in hosts} == {"pn-boot-3"}, changed
    assert {node.name: bed.main_pid(node, "kubelet") for node in old} == kubelets
    # the join's token and certificate key: in the 0600 file only, never on a command line or in the output
    assert_join_secrets_kept(bed, watch, new_node, bed.bootstrap_tokens())
    assert len(watch.certificate_keys) == 1
    assert watch.secrets().isdisjoint(run.output.split())
    # a control-plane host: kubeadm wrote its static pods and admin.conf, its API server serves
    assert bed.has_file(new_node, kubeadm_tasks.ADMIN_CONF)
    assert bed.has_file(new_node, "/etc/kubernetes/manifests/kube-apiserver.yaml")
    bed.sh(new_node, f"kubectl --kubeconfig={kubeadm_tasks.ADMIN_CONF} --server=https://{new_node.ip}:6443 "
                     "get --raw=/readyz")
    bed.wait_for_flannel()
    status, pod_cidr = bed.wait_node_ready("pn-boot-3")
    assert status == "True"
    assert ipaddress.ip_network(pod_cidr).subnet_of(bed.cluster_cidr)
    new, existing = bed.run_pod(new_node, "boot-new-node"), bed.run_pod(old[0], "boot-old-node")
    try:
        assert bed.ping(new, existing.ip)
    finally:
        bed.remove_pod(new)
        bed.remove_pod(existing)
