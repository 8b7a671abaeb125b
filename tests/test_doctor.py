"""
doctor.py's checks, from the answers of real nodes (tests/fixtures/doctor/: the doctor's probe output
captured on a healthy 2-node test cluster, containerd 2.3.4, the kube-flannel DaemonSet), each link broken
the way it breaks on a node; the datapath's blame; the verdict's table, paragraphs and JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks import pod_network
from tasks.doctor import asking, datapath, links, verdict
from tasks.doctor.expected import ExpectedNetwork, from_settings
from tasks.doctor.links import LINKS, Broken, Cluster, Node
from tasks.doctor.run import flannel_pods, rows_for
from tasks.engine.probe import parse_probe
from tasks.settings import parse_host_settings

FIXTURES = Path(__file__).parent / "fixtures" / "doctor"
CP, WORKER = "i20d-1", "i20d-2"
DATA = {"sandbox_image": "registry.k8s.io/pause:3.10.2", "restrict_oom_score_adj": True}


def settings(name: str, **data):
    return parse_host_settings({**DATA, **data}, name, ["control_plane"] if name == CP else ["workers"])


def lines_of(name: str) -> list[str]:
    return (FIXTURES / f"healthy-{name}.txt").read_text().splitlines()


def node_from(name: str, lines: list[str], **data) -> tuple[Node, object]:
    s = settings(name, **data)
    state = parse_probe(lines).answering(asking.request(s, name == CP), name)
    node = Node(name, s, state, asking.parse_node(state.queries[asking.NODE_QUERY][1], name),
                asking.parse_cri(state.queries[asking.CRI_QUERY][1], name),
                links.read_subnet_env(state.contents.get(pod_network.SUBNET_ENV)))
    return node, state


def cluster_of(state) -> Cluster:
    return Cluster(pod_network.pod_cidrs(CP, state.queries[pod_network.POD_CIDRS_QUERY][1]),
                   flannel_pods(state.queries[asking.FLANNEL_PODS_QUERY][1], CP))


def healthy(edit=None, **data) -> tuple[ExpectedNetwork, Cluster, dict[str, Node]]:
    """The captured cluster, each node's probe lines passed through ``edit(name, lines)`` first."""
    nodes, cluster = {}, None
    for name in (CP, WORKER):
        lines = lines_of(name)
        if edit is not None:
            lines = edit(name, lines)
        nodes[name], state = node_from(name, lines, **data)
        if name == CP:
            cluster = cluster_of(state)
    return from_settings(settings(CP, **data)), cluster, nodes


def broken_links(exp, cluster, nodes) -> dict[str, tuple[str, Broken]]:
    rows = rows_for(exp, nodes, cluster)
    found = {}
    for name, row in rows.items():
        first = verdict.first_broken(row)
        if first is not None:
            found[name] = (first, row[first])
    return found


def replaced(name: str, tag: str, new: list[str] | None):
    """An edit that replaces the probe lines of ``name`` starting with ``tag`` by ``new`` (None: drops them)."""
    def edit(node: str, lines: list[str]) -> list[str]:
        if node != name:
            return lines
        return [line for line in lines if not line.startswith(tag)] + (new or [])
    return edit


# --- the datapath: who is to blame -------------------------------------------------------------------


def _tried(names: list[str]) -> dict[str, list[datapath.Target]]:
    address = {name: f"10.244.{index}.0" for index, name in enumerate(names)}
    return {name: [datapath.Target(other, address[other], "flannel.1") for other in names if other != name]
            for name in names}, address


def _answers(names, address, dead: set[tuple[str, str]], kind_dead: str = "reach"):
    answered = {}
    for source in names:
        answered[source] = {}
        for other in names:
            if other != source:
                for kind in datapath.KINDS:
                    broken_pair = (source, other) in dead and (kind == kind_dead or kind_dead == "reach")
                    answered[source][(kind, address[other])] = not broken_pair
    return answered


def test_a_node_cut_off_both_ways_is_the_one_blamed_and_no_other():
    names = ["n1", "n2", "n3"]
    tried, address = _tried(names)
    dead = {("n2", "n1"), ("n1", "n2"), ("n2", "n3"), ("n3", "n2")}
    found = datapath.verdict(tried, _answers(names, address, dead), {n: 1450 for n in names})
    assert found["n1"] is None and found["n3"] is None
    assert found["n2"].short == "unreachable"
    assert "n2 reaches no other node's pod subnet and none reaches it (n1, n3)" in found["n2"].finding.message
    assert "8472" in found["n2"].finding.fix


def test_large_packets_dropped_on_one_nodes_link_are_blamed_on_that_node():
    names = ["n1", "n2", "n3"]
    tried, address = _tried(names)
    dead = {("n3", "n1"), ("n1", "n3"), ("n3", "n2"), ("n2", "n3")}
    found = datapath.verdict(tried, _answers(names, address, dead, kind_dead="mtu"), {n: 1450 for n in names})
    assert found["n1"] is None and found["n2"] is None
    assert found["n3"].short == "MTU 1450 dropped"
    assert "don't-fragment packet of the pod MTU (1450 bytes)" in found["n3"].finding.what


def test_a_failure_between_two_nodes_only_is_said_by_the_node_it_was_seen_from():
    names = ["n1", "n2", "n3"]
    tried, address = _tried(names)
    found = datapath.verdict(tried, _answers(names, address, {("n1", "n3")}), {n: 1450 for n in names})
    assert found["n2"] is None and found["n3"] is None
    assert found["n1"].short == "no way to n3"


def test_the_datapath_command_pings_every_target_at_once_bounded_in_time():
    command = datapath.command([datapath.Target("n2", "10.244.1.0", "flannel.1"),
                                datapath.Target("n2", "fd00:10:244:1::1", "cni0")], 1450)
    assert command.startswith(f"timeout {datapath.BOUND} sh -c ")
    assert "ping -4 -n -q -c 2 -i 0.2 -W 1 -M do -s 1422 10.244.1.0" in command  # 1450 - 20 (IPv4) - 8 (ICMP)
    assert "ping -6 -n -q -c 2 -i 0.2 -W 1 -M do -s 1402 fd00:10:244:1::1" in command  # 1450 - 40 - 8
    assert command.count(") &") == 4 and "wait" in command


def test_the_datapath_answer_is_held_to_its_schema():
    assert datapath.parse(["reach 10.244.1.0 0", "mtu 10.244.1.0 1"]) == {
        ("reach", "10.244.1.0"): True, ("mtu", "10.244.1.0"): False}
    with pytest.raises(Exception, match="does not fit its schema"):
        datapath.parse(["reach 10.244.1.0; rm -rf / 0"])
