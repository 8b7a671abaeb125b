"""
Findings apart from refusals (tasks/engine/findings.py): every step lists what is wrong on a
host from the settings and the probe's answer without changing anything and without stopping
at the first problem; its check refuses on the error-level ones with the message podnet has
always given.
"""

from __future__ import annotations

import logging

import pytest

from tasks import deploys, flannel, interrupted, pod_network
from tasks.engine import findings
from tasks.engine.context import HostContext
from tasks.engine.findings import Finding
from tasks.engine.probe import NodeState
from tasks.engine.runner import applicable, probe_request
from tasks.settings import parse_host_settings


def test_a_finding_says_where_what_why_and_the_fix():
    found = Finding("error", "1500 is too large", where="cp1: flannel_mtu", why="packets are dropped",
                    fix="set at most 1450", refusal=flannel.PodMtuError)
    assert found.message == "cp1: flannel_mtu: 1500 is too large: packets are dropped; set at most 1450"
    assert Finding("warning", "it", text="as said").message == "as said"
    with pytest.raises(ValueError, match="severity 'fatal'"):
        Finding("fatal", "x")


def test_refuse_raises_the_first_error_as_its_refusal_and_say_logs_the_warnings(caplog):
    listed = [findings.warning("w", where="h"), findings.error("e1", flannel.PodMtuError),
              findings.error("e2", pod_network.PodNetworkChangeError)]
    with pytest.raises(flannel.PodMtuError, match="^e1$"):
        findings.refuse(listed)
    findings.refuse(findings.warnings(listed))  # warnings alone never refuse
    with caplog.at_level(logging.WARNING):
        findings.say(listed)
    assert [r.getMessage() for r in caplog.records] == ["podnet: h: w"]


def first_control_plane(**data) -> HostContext:
    s = parse_host_settings(data, "cp1", ["control_plane"])
    return HostContext(host_name="cp1", settings=s, first_control_plane="cp1")


def troubled_node(ctx: HostContext) -> NodeState:
    """A node with three problems at once: a pod MTU too large for its interface, nodes whose podCIDRs the
    settings do not fit, and a cni0 left with another subnet's gateway."""
    node = NodeState(machine="x86_64")
    node.queries["flannel_iface_mtu"] = (0, ["eth1 1500"])
    node.queries["pod_cidrs"] = (0, ["cp1 10.244.0.0/24", "w1 10.244.1.0/24"])
    node.queries["flannel_manifest"] = (0, [])
    node.queries["cni0"] = (0, ["addr 10.244.7.1/24", "ports 2"])
    node.contents[pod_network.SUBNET_ENV] = b"FLANNEL_SUBNET=10.244.0.1/24\n"
    return node.answering(probe_request(applicable(deploys.POD_NETWORK, ctx), ctx))


def every_finding(ctx: HostContext) -> list[Finding]:
    return [f for step in (flannel.POD_MTU, pod_network.REGISTRATION, flannel.ROLLOUT) for f in step.findings(ctx)]


def test_every_problem_of_a_node_is_listed_without_changing_anything():
    ctx = first_control_plane(flannel_mtu=1500, cluster_cidr="10.245.0.0/16")
    ctx.node = troubled_node(ctx)
    found = every_finding(ctx)
    assert [(f.severity, f.refusal) for f in findings.errors(found)] == [
        ("error", flannel.PodMtuError), ("error", pod_network.PodNetworkChangeError), ("error", flannel.PodCidrError)]
    assert findings.errors(found)[0].message.startswith("cp1: flannel_mtu: 1500 is too large: flanneld's interface "
                                                         "eth1 has MTU 1500")
    assert findings.errors(found)[1].message.startswith("cp1: cluster_cidr: nodes hold podCIDRs that cluster_cidr "
                                                         "'10.245.0.0/16' with node_cidr_mask_size 24 does not fit")
    assert findings.errors(found)[2].message.startswith("node cp1 has spec.podCIDR 10.244.0.0/24, outside "
                                                         "cluster_cidr 10.245.0.0/16")
    assert [f.message.split(";")[0] for f in findings.warnings(found)] == [
        "cp1: cni0 has 10.244.7.1/24, but this node's subnet is 10.244.0.1/24 (/run/flannel/subnet.env)"]
    assert ctx.nodes_to_register_again == {}  # findings decide nothing for the run


def test_a_check_refuses_on_the_error_level_findings_with_the_same_message():
    ctx = first_control_plane(flannel_mtu=1500, cluster_cidr="10.245.0.0/16")
    ctx.node = troubled_node(ctx)
    expected = {f.refusal: f.message for f in findings.errors(every_finding(ctx))}
    with pytest.raises(flannel.PodMtuError) as mtu:
        flannel.POD_MTU.check(ctx)
    with pytest.raises(pod_network.PodNetworkChangeError) as change:
        pod_network.REGISTRATION.check(ctx)
    assert str(mtu.value) == expected[flannel.PodMtuError]
    assert str(change.value) == expected[pod_network.PodNetworkChangeError]


def test_a_healthy_node_has_no_findings_and_every_step_has_the_verb():
    ctx = first_control_plane()
    node = NodeState(machine="x86_64")
    node.queries.update({"pod_cidrs": (0, ["cp1 10.244.0.0/24"]), "flannel_manifest": (0, []), "cni0": (1, [])})
    ctx.node = node.answering(probe_request(applicable(deploys.POD_NETWORK, ctx), ctx))
    assert every_finding(ctx) == []
    for step in (interrupted.STEP, *deploys.POD_NETWORK):
        assert callable(step.findings), step.name


def test_kubectl_failing_on_the_first_control_plane_host_says_its_stderr_not_its_stdout():
    ctx = first_control_plane(flannel_rollout="systemd")
    node = NodeState(machine="x86_64")
    node.queries.update({"pod_cidrs": (0, ["cp1 10.244.0.0/24"]), flannel.RBAC_QUERY: (1, ["not data"]),
                         "cni0": (1, [])})
    node.query_stderr[flannel.RBAC_QUERY] = "error: You must be logged in to the server (Unauthorized)"
    ctx.node = node.answering(probe_request(applicable(deploys.POD_NETWORK, ctx), ctx))
    found = findings.errors(flannel.ROLLOUT.findings(ctx))
    assert [f.message for f in found] == [
        "kubectl on the first control-plane host failed: error: You must be logged in to the server (Unauthorized); "
        f"check that kubectl is installed and kubeconfig {ctx.settings.kubeconfig} works"]
    with pytest.raises(flannel.PodCidrError, match="Unauthorized"):
        flannel.rbac_applied(ctx.settings, ctx.node)


def test_a_cgroup_v1_node_and_a_containerd_outside_its_support_window_are_findings():
    from tasks import containerd, kubeadm
    from tasks.releases import KUBELET_CGROUP_V1

    row = KUBELET_CGROUP_V1[0]
    s = parse_host_settings({"cluster_bootstrap": True, "kubernetes_version": f"{row.first}.0"}, "10.0.0.10",
                            ["control_plane"])
    node = NodeState(machine="x86_64", features={kubeadm.CGROUP_V2: False})
    [found] = kubeadm.kubelet_findings(s, node, "cp1")
    assert found.is_error and found.refusal is kubeadm.KubeadmError
    assert found.message.startswith("cp1: this node has cgroup v1 (/sys/fs/cgroup is not cgroup2fs)")
    with pytest.raises(kubeadm.KubeadmError, match="^cp1: this node has cgroup v1"):
        kubeadm.kubelet_runs_here(s, node, "cp1")
    assert kubeadm.kubelet_findings(s, NodeState(features={kubeadm.CGROUP_V2: True}), "cp1") == []

    from tasks.releases import CONTAINERD_KUBERNETES
    row = CONTAINERD_KUBERNETES[0]
    newer = f"1.{int(row.value.split('.')[1]) + 1}.0"
    old = parse_host_settings({"containerd_version": f"{row.first}.0", "kubernetes_version": newer}, "w1", ["worker"])
    [warned] = containerd.support_window_findings(old)
    assert not warned.is_error and warned.message == containerd.support_window(old)
