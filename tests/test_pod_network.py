"""
A pod network change the cluster's podCIDRs cannot follow, and the stale cni0 it leaves
(tasks/pod_network.py): the rules over probe answers, and plans through the real pyinfra
CLI with the @fake connector (tests/support/plan.py).
"""

from __future__ import annotations

import base64
import pytest

from tasks import pod_network
from tasks.engine.probe import NodeState
from tasks.settings import parse_host_settings
from tests.support.hosts import settings
from tests.support.kubeadm import KUBEADM_MANIFEST
from tests.support.plan import CP, WORKER, FakeNode, converged_state, probe_answer, run_pyinfra, write_inventory

CIDRS_244 = ["cp1 10.244.0.0/24", "w1 10.244.1.0/24"]


def node_with(subnet: str | None, cni0: list[str] | None, ports: int = 0) -> NodeState:
    node = NodeState()
    if subnet is not None:
        node.contents[pod_network.SUBNET_ENV] = (f"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={subnet}\n"
                                                 "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n").encode()
    if cni0 is not None:
        node.queries["cni0"] = (0, [f"addr {a}" for a in cni0] + [f"ports {ports}"])
    return node


# --- which podCIDRs the settings fit ---------------------------------------------------------------


@pytest.mark.parametrize("data, lines, stale", [
    ({}, CIDRS_244, {}),
    ({"cluster_cidr": "10.245.0.0/16"}, CIDRS_244, {"cp1": ["10.244.0.0/24"], "w1": ["10.244.1.0/24"]}),
    ({"node_cidr_mask_size": 25}, CIDRS_244, {"cp1": ["10.244.0.0/24"], "w1": ["10.244.1.0/24"]}),
    ({"cluster_cidr": "10.244.0.0/15"}, CIDRS_244, {}),  # a larger network still holds them
    ({"cluster_cidr": "10.244.0.0/17"}, ["cp1 10.244.0.0/24", "w1 10.244.200.0/24"], {"w1": ["10.244.200.0/24"]}),
    ({}, ["cp1", "w1 10.244.1.0/24"], {}),  # no podCIDR yet: nothing to follow
    ({"cluster_cidr_ipv6": "fd00:10:244::/56"}, ["cp1 10.244.0.0/24 fd00:10:244::/64"], {}),
    ({"cluster_cidr_ipv6": "fd00:10:245::/56"}, ["cp1 10.244.0.0/24 fd00:10:244::/64"],
     {"cp1": ["fd00:10:244::/64"]}),
    ({}, ["cp1 10.244.0.0/24 fd00:10:244::/64"], {"cp1": ["fd00:10:244::/64"]}),  # dual stack turned off
])
def test_nodes_whose_pod_cidrs_the_settings_do_not_fit(data, lines, stale):
    assert pod_network.nodes_not_fitting(settings(**data), lines) == stale


def test_a_change_the_nodes_cannot_follow_is_refused_saying_what_it_needs():
    node = NodeState(queries={"pod_cidrs": (0, CIDRS_244)})
    with pytest.raises(pod_network.PodNetworkChangeError) as raised:
        pod_network.checked(settings(cluster_cidr="10.245.0.0/16"), node, "cp1", first_control_plane=True)
    assert str(raised.value) == (
        "cp1: cluster_cidr: nodes hold podCIDRs that cluster_cidr '10.245.0.0/16' with node_cidr_mask_size 24 does "
        "not fit (cp1 10.244.0.0/24, w1 10.244.1.0/24); a node's podCIDR never changes by itself, so this pod "
        "network change needs each of these nodes registered again (its Node object deleted and its kubelet "
        "restarted), the old cni0 bridge on each node removed and every pod recreated. Keep the settings the nodes "
        "were given, or set allow_pod_network_change = True to let podnet re-register the nodes and remove the old "
        "cni0 bridges (README: Changing the pod network)")
    allowed = pod_network.checked(settings(cluster_cidr="10.245.0.0/16", allow_pod_network_change=True), node, "cp1",
                                  first_control_plane=True)
    assert allowed == {"cp1": ["10.244.0.0/24"], "w1": ["10.244.1.0/24"]}
    # only the first control-plane host lists the nodes
    assert pod_network.checked(settings(cluster_cidr="10.245.0.0/16"), node, "w1", first_control_plane=False) == {}


@pytest.mark.parametrize("node, problem", [
    (node_with("10.244.1.1/24", ["10.244.1.1/24"], 3), None),
    (node_with("10.244.1.1/24", None), None),  # no pod ran here yet
    (node_with(None, ["10.244.1.1/24"]), None),  # flanneld has not written its subnet: cannot tell
    (node_with("10.245.1.1/24", ["10.244.1.1/24"], 0),
     "cni0 has 10.244.1.1/24, but this node's subnet is 10.245.1.1/24 (/run/flannel/subnet.env); new pods fail with "
     "'cni0 already has an IP address different from 10.245.1.1/24' until it is removed (no pod uses it)"),
    (node_with("10.244.3.1/24", ["10.244.1.1/24"], 2),
     "cni0 has 10.244.1.1/24, but this node's subnet is 10.244.3.1/24 (/run/flannel/subnet.env); new pods fail with "
     "'cni0 already has an IP address different from 10.244.3.1/24' until it is removed (2 pod(s) still use it)"),
])
def test_a_stale_cni0_is_recognised(node, problem):
    assert pod_network.stale_cni0(node) == problem


def test_the_probes_cni0_command_reads_a_real_bridge_answer_format():
    # the shell prints nothing and fails where there is no cni0 (this machine has none)
    import subprocess

    done = subprocess.run(["sh", "-c", pod_network.CNI0_COMMAND], capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout) == (1, "")


# --- plans through the real pyinfra CLI -------------------------------------------------------------


def plan(mirror, tmp_path, cp_state: NodeState, worker_state: NodeState, worker_responses: dict | None = None,
         **extra):
    releases, server = mirror
    data = {"mirror_url": server.url, "allow_insecure_http": True, "artifact_checksums": releases.checksums(),
            "download_cache_dir": str(tmp_path / "cache"), "flannel_rollout_timeout": 10,
            "artifact_lock_file": str(tmp_path / "artifacts.lock.yaml"), **extra}
    nodes = [FakeNode("cp1", "control_plane", data, probe_answer(cp_state), {"get nodes": CIDRS_244}),
             FakeNode("w1", "workers", data, probe_answer(worker_state), worker_responses or {})]
    return run_pyinfra(write_inventory(tmp_path / "inventory.py", nodes), "-y")


def converged(mirror, host: str, subnet: str, cni0: str, ports: int, **extra) -> NodeState:
    releases, server = mirror
    data = {"mirror_url": server.url, "allow_insecure_http": True, "artifact_checksums": releases.checksums(), **extra}
    first = host == "cp1"
    s = parse_host_settings(data, host, ["control_plane" if first else "workers"])
    state = converged_state(s, releases, host_names=["cp1", "w1"], kcm_manifest=KUBEADM_MANIFEST if first else None,
                            first_control_plane=first)
    state.contents[pod_network.SUBNET_ENV] = f"FLANNEL_SUBNET={subnet}\n".encode()
    state.queries["cni0"] = (0, [f"addr {cni0}", f"ports {ports}"])
    return state


def test_a_live_cluster_is_not_moved_to_another_pod_network_without_the_opt_in(mirror, tmp_path):
    cp = converged(mirror, "cp1", "10.244.0.1/24", "10.244.0.1/24", 2)
    worker = converged(mirror, "w1", "10.244.1.1/24", "10.244.1.1/24", 1)
    run = plan(mirror, tmp_path, cp, worker, cluster_cidr="10.245.0.0/16")
    assert run.returncode != 0
    assert ("@fake/cp1: cluster_cidr: nodes hold podCIDRs that cluster_cidr '10.245.0.0/16' with node_cidr_mask_size 24 "
            "does not fit (cp1 10.244.0.0/24, w1 10.244.1.0/24)") in run.stderr
    for host in (CP, WORKER):  # the probe only: the controller-manager flags were not touched
        assert len(run.commands(host)) == 1 and run.uploads(host) == []


def test_a_stale_cni0_is_reported_and_removed_only_with_the_opt_in(mirror, tmp_path):
    cp = converged(mirror, "cp1", "10.244.0.1/24", "10.244.0.1/24", 2)
    worker = converged(mirror, "w1", "10.244.1.1/24", "10.244.7.1/24", 0)
    run = plan(mirror, tmp_path, cp, worker)
    assert run.returncode == 0, run.stderr[-3000:]
    assert ("podnet: @fake/w1: cni0 has 10.244.7.1/24, but this node's subnet is 10.244.1.1/24") in run.stderr
    assert "remove it (`ip link delete cni0`) once no pod uses it, or set allow_pod_network_change = True" in run.stderr
    assert len(run.commands(WORKER)) == 1  # reported, not touched
    # at execution time the step reads the node again: subnet.env (base64), then cni0's address and ports
    subnet_env = base64.b64encode(b"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n").decode()
    again = {pod_network.SUBNET_ENV: [f"subnetenv {subnet_env}", "addr 10.244.7.1/24", "ports 0"]}
    allowed = plan(mirror, tmp_path, cp, worker, again, allow_pod_network_change=True)
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert "ip link delete cni0" in allowed.commands(WORKER)
    assert not [c for c in allowed.commands(CP) if "ip link delete" in c]


def test_with_the_opt_in_the_nodes_are_registered_again(mirror, tmp_path):
    extra = {"cluster_cidr": "10.245.0.0/16", "allow_pod_network_change": True}
    cp = converged(mirror, "cp1", "10.244.0.1/24", "10.244.0.1/24", 2)
    worker = converged(mirror, "w1", "10.244.1.1/24", "10.244.1.1/24", 1)
    releases, server = mirror
    run = plan(mirror, tmp_path, cp, worker, **extra)
    # the fake control plane never runs the new kube-controller-manager: the step waits, bounded, and says so
    assert run.returncode != 0
    assert "kube-controller-manager on @fake/cp1 did not start with --cluster-cidr=10.245.0.0/16 within 10s; " \
           "no Node was deleted" in run.stderr
    assert [c for c in run.commands(CP) if "--cluster-cidr" in c or "kube-controller" in c]
    assert not [c for c in run.commands(CP) if "delete node" in c]
