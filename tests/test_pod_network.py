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
    # dual stack turned on: spec.podCIDRs cannot gain the IPv6 one, the node registers again
    ({"cluster_cidr_ipv6": "fd00:10:244::/56"}, CIDRS_244,
     {"cp1": ["(no IPv6 podCIDR)"], "w1": ["(no IPv6 podCIDR)"]}),
    ({"cluster_cidr_ipv6": "fd00:10:244::/56", "node_cidr_mask_size_ipv6": 72},  # the IPv6 mask changed
     ["cp1 10.244.0.0/24 fd00:10:244::/64"], {"cp1": ["fd00:10:244::/64"]}),
    ({"cluster_cidr_ipv6": "fd00:10:244::/56", "node_cidr_mask_size": 25},  # the IPv4 mask on dual stack
     ["cp1 10.244.0.0/24 fd00:10:244::/64"], {"cp1": ["10.244.0.0/24"]}),
    ({"cluster_cidr_ipv6": "fd00:10:244::/56"}, ["cp1"], {}),  # no podCIDR yet: it gets both
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


def dual_node(subnet: str | None, subnet6: str | None, cni0: list[str] | None, ports: int = 0) -> NodeState:
    node = NodeState()
    env = ("FLANNEL_NETWORK=10.244.0.0/16\n" + (f"FLANNEL_SUBNET={subnet}\n" if subnet else "")
           + ("FLANNEL_IPV6_NETWORK=fd00:10:244::/56\n" + f"FLANNEL_IPV6_SUBNET={subnet6}\n" if subnet6 else "")
           + "FLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n")
    node.contents[pod_network.SUBNET_ENV] = env.encode()
    if cni0 is not None:
        node.queries["cni0"] = (0, [f"addr {a}" for a in cni0] + [f"ports {ports}"])
    return node


@pytest.mark.parametrize("node, problem", [
    (dual_node("10.244.1.1/24", "fd00:10:244:1::1/64", ["10.244.1.1/24", "fd00:10:244:1::1/64"], 2), None),
    # the bridge plugin adds the IPv6 gateway with the next pod: nothing of another network yet
    (dual_node("10.244.1.1/24", "fd00:10:244:1::1/64", ["10.244.1.1/24"], 2), None),
    # an IPv6 gateway of another subnet of the same node mask overlapping it: new pods fail (ensureAddr)
    (dual_node("10.244.1.1/24", "fd00:10:244:1::1/64", ["10.244.1.1/24", "fd00:10:244:1::1/56"], 0),
     "cni0 has fd00:10:244:1::1/56, but this node's subnets are 10.244.1.1/24, fd00:10:244:1::1/64 "
     "(/run/flannel/subnet.env); new pods fail with 'cni0 already has an IP address different from "
     "fd00:10:244:1::1/64' until it is removed (no pod uses it)"),
    # a non-overlapping IPv6 address of the old network: pods still start, its route misleads this node
    (dual_node("10.244.1.1/24", "fd00:10:244:1::1/64", ["10.244.1.1/24", "fd00:10:245:3::1/64"], 1),
     "cni0 has fd00:10:245:3::1/64, but this node's subnets are 10.244.1.1/24, fd00:10:244:1::1/64 "
     "(/run/flannel/subnet.env); its route to fd00:10:245:3::/64 on cni0 takes this node's traffic to that old "
     "network until it is removed (1 pod(s) still use it)"),
    # dual stack turned off: an IPv6 address of a family the node's pod network no longer has
    (dual_node("10.244.1.1/24", None, ["10.244.1.1/24", "fd00:10:244:1::1/64"], 0),
     "cni0 has fd00:10:244:1::1/64, but this node's subnet is 10.244.1.1/24 (/run/flannel/subnet.env); its "
     "route to fd00:10:244:1::/64 on cni0 takes this node's traffic to that old network until it is removed "
     "(no pod uses it)"),
    # both families of another network
    (dual_node("10.245.1.1/24", "fd00:10:245:1::1/64", ["10.244.1.1/24", "fd00:10:244:1::1/64"], 0),
     "cni0 has 10.244.1.1/24, fd00:10:244:1::1/64, but this node's subnets are 10.245.1.1/24, fd00:10:245:1::1/64 "
     "(/run/flannel/subnet.env); new pods fail with 'cni0 already has an IP address different from 10.245.1.1/24' "
     "and its route to fd00:10:244:1::/64 on cni0 takes this node's traffic to that old network until it is "
     "removed (no pod uses it)"),
])
def test_a_stale_cni0_is_recognised_in_both_families(node, problem):
    assert pod_network.stale_cni0(node) == problem


def test_flanneld_subnets_of_both_families_are_read_from_subnet_env():
    node = dual_node("10.244.1.1/24", "fd00:10:244:1::1/64", None)
    assert {v: str(g) for v, g in pod_network.subnets_of_node(node).items()} == {
        4: "10.244.1.1/24", 6: "fd00:10:244:1::1/64"}
    # a value of the wrong family is no subnet of that family
    wrong = pod_network.parse_subnet_env(b"FLANNEL_SUBNET=fd00::1/64\nFLANNEL_IPV6_SUBNET=10.0.0.1/24\n")
    assert wrong == {}


@pytest.mark.parametrize("data, node, leaving", [
    ({"cluster_cidr_ipv6": "fd00:10:244::/56"}, dual_node("10.244.1.1/24", "fd00:10:244:1::1/64", None), False),
    ({"cluster_cidr_ipv6": "fd00:10:244::/56"}, dual_node("10.244.1.1/24", None, None), True),  # dual stack on
    ({}, dual_node("10.244.1.1/24", "fd00:10:244:1::1/64", None), True),  # dual stack off
    ({"cluster_cidr_ipv6": "fd00:10:245::/56"}, dual_node("10.244.1.1/24", "fd00:10:244:1::1/64", None), True),
    ({"cluster_cidr_ipv6": "fd00:10:244::/56", "node_cidr_mask_size_ipv6": 72},
     dual_node("10.244.1.1/24", "fd00:10:244:1::1/64", None), True),  # the IPv6 mask changed
    ({"cluster_cidr_ipv6": "fd00:10:244::/56"}, NodeState(), False),  # flanneld never ran here
])
def test_a_node_leaves_its_subnet_when_either_family_does_not_fit(data, node, leaving):
    assert pod_network.this_node_is_leaving_its_subnet(settings(**data), node) is leaving


def test_turning_dual_stack_on_is_a_pod_network_change_refused_without_the_opt_in():
    node = NodeState(queries={"pod_cidrs": (0, CIDRS_244)})
    dual = {"cluster_cidr_ipv6": "fd00:10:244::/56"}
    with pytest.raises(pod_network.PodNetworkChangeError) as raised:
        pod_network.checked(settings(**dual), node, "cp1", first_control_plane=True)
    assert str(raised.value).startswith(
        "cp1: cluster_cidr: nodes hold podCIDRs that cluster_cidr '10.244.0.0/16' with node_cidr_mask_size 24, "
        "cluster_cidr_ipv6 'fd00:10:244::/56' with node_cidr_mask_size_ipv6 64 does not fit (cp1 (no IPv6 podCIDR), "
        "w1 (no IPv6 podCIDR)); a node's podCIDR never changes by itself")
    assert pod_network.checked(settings(allow_pod_network_change=True, **dual), node, "cp1", True) == {
        "cp1": ["(no IPv6 podCIDR)"], "w1": ["(no IPv6 podCIDR)"]}


class ScriptedHost:
    """A stand-in for a pyinfra host: answers run_shell_command by the first matching command prefix."""

    name = "cp1"

    def __init__(self, answers: dict[str, list[str]]):
        self.answers, self.asked = answers, []

    def run_shell_command(self, command, **_):
        self.asked.append(command)
        out = next((lines for prefix, lines in self.answers.items() if prefix in command), [])
        return True, type("Output", (), {"stdout_lines": out, "stderr_lines": []})()


def test_nodes_are_deleted_once_kube_controller_manager_runs_with_both_families_cluster_cidr(monkeypatch):
    monkeypatch.setattr(pod_network, "poll", lambda check, *_: check())  # one look, no waiting
    s = settings(cluster_cidr_ipv6="fd00:10:244::/56", allow_pod_network_change=True)
    host = ScriptedHost({"/proc/": ["kube-controller-manager --allocate-node-cidrs=true "
                                    "--cluster-cidr=10.244.0.0/16,fd00:10:244::/56 "],
                         "get pods": ["w1 default web false"]})
    assert pod_network.delete_nodes_after_new_ipam(None, host, {}, s, ["w1"])
    assert any("delete pod web" in c for c in host.asked) and any("delete node w1" in c for c in host.asked)
    # the IPv4 CIDR alone is the old, single-stack flag: nothing is deleted
    host = ScriptedHost({"/proc/": ["kube-controller-manager --cluster-cidr=10.244.0.0/16 "]})
    with pytest.raises(pod_network.PodNetworkChangeError, match="--cluster-cidr=10.244.0.0/16,fd00:10:244::/56"):
        pod_network.delete_nodes_after_new_ipam(None, host, {}, s, ["w1"])
    assert not any("delete" in c for c in host.asked)


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


# --- the podCIDR check after a rollout (tasks/flannel.py pod_cidr_problems), both families -------------


DUAL = {"cluster_cidr_ipv6": "fd00:10:244::/56"}
DUAL_FLAGS = ("--allocate-node-cidrs=true --cluster-cidr=10.244.0.0/16,fd00:10:244::/56 "
              "--node-cidr-mask-size-ipv4=24 --node-cidr-mask-size-ipv6=64")


@pytest.mark.parametrize("data, lines, problems", [
    (DUAL, ["cp1 10.244.0.0/24 fd00:10:244::/64", "w1 10.244.1.0/24 fd00:10:244:1::/64"], []),
    (DUAL, ["cp1 10.244.0.0/24 fd00:10:244::/64", "w1 10.244.1.0/24"],
     ["node w1 has no IPv6 podCIDR (spec.podCIDRs 10.244.1.0/24) although cluster_cidr_ipv6 is set: "
      f"kube-controller-manager gives a node its podCIDRs once, when it registers, one per family of {DUAL_FLAGS}; a "
      "node registered before dual stack was turned on keeps its single podCIDR until it registers again "
      "(allow_pod_network_change)"]),
    (DUAL, ["cp1 10.244.0.0/24 fd00:10:244::/64", "w1 10.244.1.0/24 fd00:10:299::/64"],
     ["node w1 has spec.podCIDR fd00:10:299::/64, outside cluster_cidr_ipv6 fd00:10:244::/56: "
      f"kube-controller-manager's --cluster-cidr must equal flannel's IPv6Network; check {DUAL_FLAGS}"]),
    (DUAL, ["cp1 10.244.0.0/24 fd00:10:244::/64", "w1 10.244.1.0/24 fd00:10:244:1::/72"],
     ["node w1 has spec.podCIDR fd00:10:244:1::/72, not a /64 (node_cidr_mask_size_ipv6): "
      f"kube-controller-manager's --node-cidr-mask-size-ipv6 must be 64; check {DUAL_FLAGS}"]),
    (DUAL, ["cp1 10.244.0.0/24 fd00:10:244::/64", "w1 10.244.1.0/25 fd00:10:244:1::/64"],
     ["node w1 has spec.podCIDR 10.244.1.0/25, not a /24 (node_cidr_mask_size): "
      f"kube-controller-manager's --node-cidr-mask-size-ipv4 must be 24; check {DUAL_FLAGS}"]),
    # disjoint across nodes, in each family
    (DUAL, ["cp1 10.244.0.0/24 fd00:10:244::/64", "w1 10.244.1.0/24 fd00:10:244::/64"],
     ["nodes cp1 and w1 hold overlapping podCIDRs fd00:10:244::/64 and fd00:10:244::/64: kube-controller-manager "
      "never gives a range twice, so one was set by hand or by another cluster's allocator; delete that Node so it "
      "registers again"]),
    ({}, ["cp1 10.244.0.0/24", "w1 10.244.0.0/24"],
     ["nodes cp1 and w1 hold overlapping podCIDRs 10.244.0.0/24 and 10.244.0.0/24: kube-controller-manager "
      "never gives a range twice, so one was set by hand or by another cluster's allocator; delete that Node so it "
      "registers again"]),
    # an IPv6 podCIDR on a single-stack network
    ({}, ["cp1 10.244.0.0/24 fd00:10:244::/64"],
     ["node cp1 has the IPv6 spec.podCIDR fd00:10:244::/64, but the pod network has no IPv6 family "
      "(cluster_cidr_ipv6 is unset): check --allocate-node-cidrs=true --cluster-cidr=10.244.0.0/16 "
      "--node-cidr-mask-size=24"]),
])
def test_every_nodes_pod_cidrs_are_checked_in_both_families(data, lines, problems):
    from tasks import flannel

    assert flannel.pod_cidr_problems(settings(**data), lines, "cp1") == problems


@pytest.mark.parametrize("addresses, podnets", [
    (["10.244.1.1/24", "fd00:10:244:1::1/64"], True),
    (["10.244.1.1/24"], True),
    (["10.244.1.1/24", "fd00:99::1/64"], False),  # an IPv6 address of another network: not podnet's bridge
    (["10.88.0.1/16", "fd00:10:244:1::1/64"], False),
])
def test_the_reset_knows_podnets_cni0_by_the_addresses_of_both_families(addresses, podnets):
    from tasks import flannel

    node = NodeState(queries={"cni0": (0, [f"addr {a}" for a in addresses] + ["ports 0"])})
    assert flannel.bridge_is_podnets(settings(**DUAL), node, "w1") is podnets
