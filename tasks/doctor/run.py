"""
doctor.py's run on each host: one probe (tasks/doctor/asking.py; no run lock), then two operations that run
on all hosts at once: the datapath check (tasks/doctor/datapath.py, one command per host) and the verdict
(tasks/doctor/verdict.py), said once, after every host's datapath; a host with a broken link fails the
verdict operation, so pyinfra exits non-zero exactly when a link is broken somewhere.

``PODNET_DOCTOR_JSON=<file>`` in the environment also writes the verdict as JSON to that file ("-": to
stdout, after the text).
"""

from __future__ import annotations

import os

from pyinfra import logger


from tasks import pod_network
from tasks.doctor import asking, datapath, foreign, links, verdict
from tasks.doctor.expected import ExpectedNetwork, from_settings
from tasks.doctor.links import LINKS, Cluster, Node
from tasks.engine import answers, kubectl, ops, probe, runner
from tasks.engine.answers import BadField
from tasks.engine.findings import refuse

JSON_ENV = "PODNET_DOCTOR_JSON"
DATAPATH = "datapath"

_nodes: dict[str, Node] = {}
_cluster = Cluster()
_tried: dict[str, list[datapath.Target]] = {}
_answered: dict[str, dict] = {}
_rows: dict[str, dict] = {}
_order: list[str] = []  # the inventory's hosts, in its order (the verdict's rows)
# The expected network of a cluster podnet did not deploy, read on the first control-plane host (empty: podnet's,
# from each host's Settings).
_foreign: list[ExpectedNetwork] = []


def examine(host, inventory) -> None:
    """Ask ``host`` once and plan the datapath check and the verdict on it."""
    s = runner.settings_for(host, inventory)
    _order[:] = [h.name for h in inventory]
    first = runner.first_control_plane(inventory) == host.name
    asked = asking.request(s, first)
    state = probe.node_state(host, asked.merge(foreign.probe_request(s)) if first else asked)
    node = Node(host.name, s, state, asking.parse_node(state.queries[asking.NODE_QUERY][1], host.name),
                asking.parse_cri(state.queries[asking.CRI_QUERY][1], host.name),
                links.read_subnet_env(state.contents.get(pod_network.SUBNET_ENV)))
    if first:
        expect_foreign(node, host.data.dict())
        found = read_cluster(state, host.name, _foreign[0].rollout if _foreign else s.flannel_rollout)
        _cluster.__dict__.update(found.__dict__)
    elif not _cluster.kubectl_said and _cluster.pod_cidrs is None:
        _cluster.kubectl_said = (f"the first control-plane host {runner.first_control_plane(inventory)} is not in this "
                                 "run: run the doctor on it too")
    _nodes[host.name] = node
    ops.python_step(name="doctor: datapath to every other node's pod subnet", function=_datapath, args=(),
                    reason="ping every other node's flannel device and cni0 gateway, and with the pod MTU")
    ops.python_step(name="doctor: verdict", function=_verdict, args=(), reason="the links of every node")


def expect_foreign(node: Node, data: dict) -> None:
    """On the first control-plane host: a cluster whose pod network podnet did not deploy (tasks/doctor/foreign.py)
    is held to what the inventory sets and, for the rest, to what its kube-controller-manager and flannel's
    net-conf say; each value's source is said in the verdict, what could not be read is a note of that host. A
    cluster CIDR that cannot be told stops the doctor (the setting to give is named)."""
    if foreign.podnet_deployed(node.settings, node.state):
        return
    exp, found = foreign.expected_network(data, node.settings, node.state, node.name)
    node.notes.extend(f.message for f in found if not f.is_error)
    refuse(found)
    _foreign.append(exp)  # type: ignore[arg-type]


def expected(name: str) -> ExpectedNetwork:
    """What the doctor holds the cluster to: the foreign cluster's, else what podnet deploys with the settings."""
    return _foreign[0] if _foreign else from_settings(_nodes[name].settings)


def read_cluster(state, host_name: str, rollout: str) -> Cluster:
    """The first control-plane host's answers: every node's podCIDRs, every flannel pod (not asked for the
    systemd rollout)."""
    cluster = Cluster()
    rc, lines = state.queries[pod_network.POD_CIDRS_QUERY]
    if rc != 0:
        cluster.kubectl_said = kubectl.said(state, pod_network.POD_CIDRS_QUERY)
        return cluster
    cluster.pod_cidrs = pod_network.pod_cidrs(host_name, lines)
    if rollout != "systemd":
        rc, lines = state.queries[asking.FLANNEL_PODS_QUERY]
        if rc == 0:
            cluster.flannel_pods = flannel_pods(lines, host_name)
        else:
            cluster.kubectl_said = kubectl.said(state, asking.FLANNEL_PODS_QUERY)
    return cluster


def flannel_pods(lines: list[str], host_name: str = "") -> dict[str, list[tuple[str, bool, str]]]:
    """Node -> its flannel pods (name, Ready, waiting reason), from tasks/flannel.py's not_ready_pods_command
    answer ("<pod>|<node>|<ready>|<restarts>|<waiting>|<deleting>")."""
    def line(text: str) -> tuple[str, str, bool, str]:
        parts = text.strip().split("|")
        if len(parts) != 6:
            raise BadField(f"{len(parts)} field(s) where 6 are expected")
        pod, node, ready, _, waiting, _ = parts
        return answers.object_name(pod), answers.object_name(node) if node else "", ready == "true", \
            answers.no_control(waiting)
    found: dict[str, list[tuple[str, bool, str]]] = {}
    for pod, node, ready, waiting in answers.records(host_name, "the flannel pods", [x for x in lines if x.strip()],
                                                     line):
        found.setdefault(node, []).append((pod, ready, waiting))
    return found


def rows_for(exp: ExpectedNetwork, nodes: dict[str, Node], cluster: Cluster) -> dict[str, dict]:
    """Node -> link -> Broken, None (holds) or verdict.NOT_APPLICABLE: every link but the datapath."""
    rows = {}
    for name, node in nodes.items():
        row: dict = {}
        for link, check in LINKS:
            applies = link != "node IPAM" or (node.settings.is_control_plane
                                              and node.settings.kube_controller_manager_runtime != "external")
            row[link] = check(exp, cluster, node) if applies else verdict.NOT_APPLICABLE
        rows[name] = row
    return rows


def _datapath(state, host, connector_arguments) -> bool:
    node, exp = _nodes[host.name], expected(host.name)
    everyone = datapath.targets(_nodes, _cluster)
    to = [t for name, found in everyone.items() if name != host.name for t in found]
    _tried[host.name] = to
    if not node.view.tools.get("ping"):
        node.notes.append("datapath: ping is missing, so this node's way to the others is not checked "
                          "(apt-get install iputils-ping)")
        _tried[host.name] = []
        return True
    if not to:
        return True
    ok, output = host.run_shell_command(datapath.command(to, datapath.pod_mtu(node, exp.mtu)), **connector_arguments)
    _answered[host.name] = datapath.parse(output.stdout_lines if ok else [], host.name)
    return True


def _verdict(state, host, connector_arguments) -> bool:
    exp = expected(host.name)
    if not _rows:
        _rows.update(rows_for(exp, {name: _nodes[name] for name in _order if name in _nodes}, _cluster))
        mtus = {name: datapath.pod_mtu(node, exp.mtu) for name, node in _nodes.items()}
        named = frozenset(name for name, row in _rows.items() if verdict.first_broken(row) is not None)
        for name, cell in datapath.verdict(_tried, _answered, mtus, named).items():
            _rows[name][DATAPATH] = cell
        for name in _rows:
            if name not in _tried or not _nodes[name].view.tools.get("ping"):
                _rows[name][DATAPATH] = verdict.NOT_APPLICABLE
        columns = [link for link, _ in LINKS] + [DATAPATH]
        notes = {name: node.notes for name, node in _nodes.items() if node.notes}
        said = verdict.render(_rows, columns, notes, exp)
        if _foreign:
            said += ("\n\nthis cluster's pod network is not podnet's (a fix that reruns podnet's deploy.py makes it "
                     "podnet's); expected values and where they were read:\n"
                     + "\n".join(f"  {line}" for line in foreign.describe_sources(exp)))
        print(said, flush=True)
        target = os.environ.get(JSON_ENV)
        if target:
            text = verdict.as_json(_rows, columns, notes, exp)
            if target == "-":
                print(text, flush=True)
            else:
                with open(target, "w") as out:
                    out.write(text + "\n")
    first = verdict.first_broken(_rows.get(host.name, {}))
    if first is not None:  # the operation fails on this host: pyinfra exits non-zero
        logger.error(f"podnet doctor: {host.name}: the {first} link is broken (see the verdict above)")
        return False
    return True



