"""
doctor.py's checks, from the answers of real nodes (tests/fixtures/doctor/: the doctor's probe output
captured on a healthy 2-node test cluster, containerd 2.3.4, the kube-flannel DaemonSet), each link broken
the way it breaks on a node; the datapath's blame; the verdict's table, paragraphs and JSON.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from tasks import pod_network
from tasks.doctor import asking, datapath, links, verdict
from tasks.doctor.expected import ExpectedNetwork, from_settings
from tasks.doctor.links import LINKS, Broken, Cluster, Node
from tasks.doctor.run import read_cluster, rows_for
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




def healthy(edit=None, **data) -> tuple[ExpectedNetwork, Cluster, dict[str, Node]]:
    """The captured cluster, each node's probe lines passed through ``edit(name, lines)`` first."""
    nodes, cluster = {}, None
    for name in (CP, WORKER):
        lines = lines_of(name)
        if edit is not None:
            lines = edit(name, lines)
        nodes[name], state = node_from(name, lines, **data)
        if name == CP:
            cluster = read_cluster(state, CP, nodes[name].settings.flannel_rollout)
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


# --- editing captured answers -------------------------------------------------------------------------


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def query(name: str, change):
    """An edit of query ``name``'s stdout lines (``change(lines) -> lines``) in the probe's answer."""
    def edit(node: str, lines: list[str]) -> list[str]:
        out = []
        for line in lines:
            parts = line.split("\t")
            if parts[:2] == ["query", name]:
                said = base64.b64decode(parts[3]).decode().splitlines()
                parts[3] = _b64("\n".join(change(node, said)))
                line = "\t".join(parts)
            out.append(line)
        return out
    return edit


def on(node_name: str, change):
    """``change`` applied to ``node_name``'s lines only."""
    return lambda node, lines: change(lines) if node == node_name else lines


def content(path: str, change):
    """An edit of file ``path``'s content (``change(text) -> text``, None: the file is gone)."""
    def edit(lines: list[str]) -> list[str]:
        out = []
        for line in lines:
            parts = line.split("\t")
            if parts[:2] == ["content", path]:
                text = change(base64.b64decode(parts[2]).decode())
                if text is None:
                    continue
                line = "\t".join([*parts[:2], _b64(text)])
            out.append(line)
        return out
    return edit


def lines_edit(change):
    return lambda node, lines: change(lines)


# --- a healthy cluster, and each link broken ------------------------------------------------------------


def test_every_link_holds_on_the_captured_healthy_cluster():
    exp, cluster, nodes = healthy()
    assert cluster.pod_cidrs == {CP: ["10.244.0.0/24"], WORKER: ["10.244.1.0/24"]}
    assert broken_links(exp, cluster, nodes) == {}
    rows = rows_for(exp, nodes, cluster)
    assert rows[WORKER]["node IPAM"] == verdict.NOT_APPLICABLE and rows[CP]["node IPAM"] is None
    assert all(node.view.tools == {"ping": True, "ip": True, "ctr": True} for node in nodes.values())
    assert nodes[CP].cri.first[0] == "10-flannel.conflist" and links.effective_bin_dirs(nodes[CP].cri) == ["/opt/cni/bin"]


def broken_on(edit, **data) -> dict[str, tuple[str, str]]:
    """Node -> (link, its paragraph) for every node with a broken link after ``edit``."""
    exp, cluster, nodes = healthy(edit, **data)
    return {name: (link, found.finding.message) for name, (link, found) in broken_links(exp, cluster, nodes).items()}


def test_node_ipam_switched_off_is_named_on_the_control_plane():
    found = broken_on(on(CP, content("/etc/kubernetes/manifests/kube-controller-manager.yaml",
                                     lambda t: t.replace("--allocate-node-cidrs=true", "--allocate-node-cidrs=false"))))
    assert list(found) == [CP] and found[CP][0] == "node IPAM"
    assert "runs with --allocate-node-cidrs=false" in found[CP][1]
    assert "rerun podnet: pyinfra inventory/<cluster>.py deploy.py" in found[CP][1]


def test_a_node_without_a_pod_cidr_is_named_with_what_flanneld_says():
    found = broken_on(query("pod_cidrs", lambda node, lines: [l.split()[0] if l.startswith(WORKER) else l
                                                              for l in lines]))
    assert list(found) == [WORKER] and found[WORKER][0] == "podCIDR"
    assert f"Node {WORKER} has no spec.podCIDR" in found[WORKER][1] and "pod cidr not assigned" in found[WORKER][1]


def test_pod_cidrs_outside_the_cluster_cidr_or_overlapping_are_named():
    outside = broken_on(query("pod_cidrs", lambda node, lines: [f"{WORKER} 10.99.1.0/24" if l.startswith(WORKER)
                                                                else l for l in lines]))
    assert outside[WORKER][0] == "podCIDR" and "not a /24 of 10.244.0.0/16" in outside[WORKER][1]
    overlap = broken_on(query("pod_cidrs", lambda node, lines: [f"{WORKER} 10.244.0.0/24" if l.startswith(WORKER)
                                                                else l for l in lines]))
    assert overlap[CP][0] == "podCIDR" and f"overlaps {WORKER}'s 10.244.0.0/24" in overlap[CP][1]


def test_a_flannel_pod_that_is_not_ready_or_missing_is_named_on_its_node():
    def crashing(node, lines):
        return [l.replace("|true|0||", "|false|3|CrashLoopBackOff|") if f"|{WORKER}|" in l else l for l in lines]
    found = broken_on(query("flannel_pods", crashing))
    assert list(found) == [WORKER] and found[WORKER][0] == "flanneld"
    assert "is not Ready (its /readyz): CrashLoopBackOff" in found[WORKER][1]
    gone = broken_on(query("flannel_pods", lambda node, lines: [l for l in lines if f"|{WORKER}|" not in l]))
    assert f"no pod of DaemonSet kube-flannel/kube-flannel runs on {WORKER}" in gone[WORKER][1]


def test_a_systemd_flanneld_that_is_stopped_is_named():
    def stopped(node, lines):
        return [l for l in lines if not l.startswith("unit\tflanneld.service")] + \
            (["unit\tflanneld.service\tinactive\tenabled"] if node == WORKER else
             ["unit\tflanneld.service\tactive\tenabled"])
    found = broken_on(stopped, flannel_rollout="systemd")
    assert list(found) == [WORKER] and "flanneld.service is inactive" in found[WORKER][1]


def test_a_missing_subnet_env_is_named_with_the_error_pods_get():
    found = broken_on(on(WORKER, content("/run/flannel/subnet.env", lambda t: None)))
    assert list(found) == [WORKER] and found[WORKER][0] == "subnet.env"
    assert "open /run/flannel/subnet.env: no such file or directory" in found[WORKER][1]


def test_a_subnet_env_of_another_subnet_is_named():
    found = broken_on(on(WORKER, content("/run/flannel/subnet.env",
                                         lambda t: t.replace("10.244.1.1/24", "10.244.7.1/24"))))
    assert found[WORKER][0] == "subnet.env" and "but the node's podCIDR is 10.244.1.0/24" in found[WORKER][1]


def test_a_flannel_device_with_another_vni_or_no_route_is_named():
    def vni(node, lines):
        return [l.replace("link flannel.1 ", "link flannel.1 ") if not l.startswith("link flannel.1") else
                "link flannel.1 " + _b64(base64.b64decode(l.split()[2]).decode().replace("vxlan id 1 ", "vxlan id 7 "))
                for l in lines]
    found = broken_on(query("doctor_node", lambda node, lines: vni(node, lines) if node == WORKER else lines))
    assert found[WORKER][0] == "backend" and "flannel.1 has VNI 7, port 8472" in found[WORKER][1]

    def unrouted(node, lines):
        return [l for l in lines if not (node == CP and l.startswith("route ")
                                         and base64.b64decode(l.split()[1]).decode().startswith("10.244.1.0/24"))]
    found = broken_on(query("doctor_node", unrouted))
    assert found == {CP: ("backend", found[CP][1])} and f"no route to {WORKER}'s podCIDR 10.244.1.0/24" in found[CP][1]


def test_containerd_reading_another_conf_dir_is_named():
    found = broken_on(query("doctor_cri", lambda node, lines: [
        l.replace("conf_dir = /etc/cni/net.d", "conf_dir = /etc/cni/other") if node == WORKER else l for l in lines]))
    assert found[WORKER][0] == "containerd CNI" and "conf dir /etc/cni/other is not /etc/cni/net.d" in found[WORKER][1]


def test_a_config_sorting_ahead_of_flannels_or_an_unsupported_cni_version_is_named():
    def ahead(node, lines):
        if node != WORKER:
            return lines
        return [l if not l.startswith("first ") else
                "first 00-other.conflist " + _b64('{"cniVersion": "1.0.0", "plugins": [{"type": "bridge"}]}')
                for l in lines] + ["conf 00-other.conflist"]
    found = broken_on(query("doctor_cri", ahead))
    assert found[WORKER][0] == "conflist" and "00-other.conflist sorts ahead of 10-flannel.conflist" in found[WORKER][1]

    def newer(node, lines):
        return [l if not (l.startswith("first ") and node == WORKER) else "first 10-flannel.conflist " + _b64(
            base64.b64decode(l.split()[2]).decode().replace('"1.0.0"', '"9.9.9"')) for l in lines]
    found = broken_on(query("doctor_cri", newer))
    assert "incompatible CNI versions" in found[WORKER][1]


def test_a_missing_plugin_is_named_with_the_error_pods_get():
    found = broken_on(query("doctor_cri", lambda node, lines: [
        l for l in lines if not (node == WORKER and l == "bin /opt/cni/bin flannel")]))
    assert list(found) == [WORKER] and found[WORKER][0] == "plugins"
    assert 'failed to find plugin "flannel" in path [/opt/cni/bin]' in found[WORKER][1]


def test_forwarding_off_is_named():
    found = broken_on(on(WORKER, lambda lines: [l.replace("net.ipv4.ip_forward\t1", "net.ipv4.ip_forward\t0")
                                                for l in lines]))
    assert found[WORKER][0] == "kernel" and "net.ipv4.ip_forward=0" in found[WORKER][1]


def test_cni0_with_an_address_of_another_network_is_named_with_the_bridge_plugins_error():
    found = broken_on(query("cni0", lambda node, lines: lines + ["addr 10.99.0.1/24"] if node == WORKER else lines))
    assert list(found) == [WORKER] and found[WORKER][0] == "cni0"
    assert 'failed to set bridge addr: "cni0" already has an IP address different from 10.244.1.1/24' in found[WORKER][1]


def test_leaked_host_local_addresses_are_counted_with_the_pool_use():
    found = broken_on(query("doctor_node", lambda node, lines: lines + ["lease 10.244.1.200 deadbeef",
                                                                        "lease 10.244.1.201 deadbeef"]
                            if node == WORKER else lines))
    assert list(found) == [WORKER] and found[WORKER][0] == "host-local"
    assert "2 address(es) held by no sandbox: 10.244.1.200, 10.244.1.201" in found[WORKER][1]
    assert "% used" in found[WORKER][1] and "rm -f 10.244.1.200 10.244.1.201" in found[WORKER][1]


def test_a_dual_stack_pod_network_needs_an_ipv6_pod_cidr_on_every_node():
    found = broken_on(None, cluster_cidr_ipv6="fd00:10:244::/56", service_cluster_ip_range_ipv6="fd00:10:96::/108")
    assert found[CP][0] == "node IPAM"
    assert ("--cluster-cidr=10.244.0.0/16; --node-cidr-mask-size-ipv4=(not given: 24); "
            "--node-cidr-mask-size-ipv6=(not given: 64)") not in found[CP][1]  # only what differs is named
    assert "--cluster-cidr=10.244.0.0/16" in found[CP][1]
    assert found[WORKER][0] == "podCIDR" and f"Node {WORKER} has podCIDRs 10.244.1.0/24, none of IPv6" in found[WORKER][1]


def test_a_node_mask_other_than_the_settings_is_named():
    found = broken_on(None, node_cidr_mask_size=25)
    assert found[CP][0] == "node IPAM" and "--node-cidr-mask-size=24" in found[CP][1]


def test_answers_that_do_not_fit_are_refused():
    with pytest.raises(Exception, match="does not fit its schema"):
        asking.parse_node(["lease 10.244.1.5 $(reboot)"], "w1")
    with pytest.raises(Exception, match="does not fit its schema"):
        asking.parse_cri(["bin relative/dir flannel"], "w1")


# --- the verdict ---------------------------------------------------------------------------------------


def test_the_verdict_has_a_row_per_node_and_a_paragraph_per_broken_link_and_says_it_as_json():
    exp, cluster, nodes = healthy(query("doctor_cri", lambda node, lines: [
        l for l in lines if not (node == WORKER and l == "bin /opt/cni/bin flannel")]))
    rows = rows_for(exp, nodes, cluster)
    for row in rows.values():
        row["datapath"] = None
    columns = [link for link, _ in LINKS] + ["datapath"]
    text = verdict.render(rows, columns, {}, exp)
    table = text.splitlines()
    header = next(l for l in table if l.startswith("node "))
    assert header.split() [:3] == ["node", "node", "IPAM"]
    cp_row = next(l for l in table if l.startswith(CP))
    worker_row = next(l for l in table if l.startswith(WORKER))
    assert cp_row.count("✔") == len(columns)
    assert "·" in worker_row and "no flannel" in worker_row and worker_row.rstrip().endswith("…")
    assert f"{WORKER}: plugins: no executable flannel in /opt/cni/bin" in text
    data = json.loads(verdict.as_json(rows, columns, {}, exp))
    assert data["healthy"] is False and data["links"] == columns
    assert data["nodes"][WORKER]["plugins"]["state"] == "broken"
    assert data["nodes"][WORKER]["datapath"] == {"state": "not reached"}
    assert data["nodes"][CP]["plugins"] == {"state": "holds"}
    assert data["expected"]["sources"]["cluster_cidrs"] == "setting cluster_cidr"


def test_the_doctor_asks_no_digest_and_takes_no_run_lock():
    request = asking.request(settings(CP), True)
    assert request.hashes == [] and request.texts == []
    from tasks.engine.probe import probe_script
    assert "runlock" not in probe_script(request) and "/var/lib/podnet/digests" not in probe_script(request)


def test_a_pod_mtu_above_the_flannel_devices_is_named():
    assert broken_on(None, flannel_mtu=1450) == {}
    found = broken_on(None, flannel_mtu=1460)
    assert found[CP][0] == "backend" and "the pod MTU 1460 (setting flannel_mtu) is above flannel.1's MTU 1450" \
        in found[CP][1]


def test_only_the_first_control_plane_host_asks_the_cluster_and_only_control_planes_read_kube_controller_manager():
    worker = asking.request(settings(WORKER), False)
    assert set(worker.queries) == {"cni0", "doctor_node", "doctor_cri"} and worker.contents == ["/run/flannel/subnet.env"]
    cp = asking.request(settings(CP), True)
    assert set(cp.queries) == {"cni0", "doctor_node", "doctor_cri", "pod_cidrs", "flannel_pods"}
    assert "/etc/kubernetes/manifests/kube-controller-manager.yaml" in cp.contents
    systemd = asking.request(settings(CP, flannel_rollout="systemd"), True)
    assert "flannel_pods" not in systemd.queries and systemd.units == ["flanneld.service"]


def test_pairs_with_a_node_already_named_for_an_earlier_link_are_left_out_of_the_datapath():
    names = ["n1", "n2", "n3"]
    tried, address = _tried(names)
    dead = {("n1", "n3"), ("n3", "n1"), ("n2", "n3"), ("n3", "n2"), ("n1", "n2")}
    found = datapath.verdict(tried, _answers(names, address, dead), {n: 1450 for n in names}, frozenset({"n3"}))
    assert found["n3"] is None and found["n2"] is None and found["n1"].short == "no way to n2"
