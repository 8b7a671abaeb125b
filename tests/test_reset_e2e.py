"""
End to end: reset.py takes podnet's pod network off real nodes, through the real pyinfra
CLI over SSH, on a 2-node test cluster (testbed/podbed.py; cluster name pn-reset) running a
real Kubernetes control plane and kubelets.

The steps share one cluster and run in order:
1. flanneld as podnet's systemd unit: deploy, pods on both nodes reach each other; a reset
   with --limit of the worker takes everything off the worker only (the control-plane node
   keeps its flanneld, files, links and chains, and a new pod there reaches the old one);
   then a reset of both takes the rest, and kube-controller-manager's manifest is
   byte-for-byte the one from before podnet.
2. the kube-flannel DaemonSet: deploy again, pods reach each other; a reset with --limit is
   refused before any host is touched; --dry lists the changes and makes none; the reset
   deletes the DaemonSet and its RBAC, ServiceAccount, ConfigMap and namespace; a second
   reset changes nothing (the deploy after a reset is step 2's first, and step 3's).
3. another CNI's files: with the network reset, foreign plugins (one of a name podnet also
   installs) and a config sorting ahead of podnet's are put on the nodes; a deploy replaces the
   same-named plugin (keeping the original root-only) and moves the config aside; a foreign
   CNI then replaces one of podnet's plugins on the worker; a reset leaves every foreign file
   byte for byte, and puts back what the deploy replaced or moved aside.
4. a flannel cluster podnet did not deploy: with podnet's network reset, the bed sets kube-controller-manager's
   node IPAM flags as kubeadm does and applies flannel's own kube-flannel.yml (testbed/foreignbed.py); pods get
   IPs; doctor.py, with an inventory of hosts only, finds every link holding, says where it read each value, and
   names the flannel plugin removed on the worker as exactly that link on exactly that node; then the bed takes
   it all off again.
After each reset, every listed leftover is looked for on each node: files, links
(`ip link`), chains (`iptables-save`, nft and legacy, IPv4 and IPv6), directories.
The nodes have no `nft` command, so nftables tables of flannel's nftables mode are not
looked at here (the plan tests cover their removal commands).

Run alone with: python3 -m pytest -q tests/test_reset_e2e.py
"""

from __future__ import annotations

import itertools
import json
import os
import shlex

import pytest

from bench import run as node_costs  # counts what a pyinfra run cost each node, from its sshd log
from tasks.doctor.run import JSON_ENV as DOCTOR_JSON
from testbed.foreignbed import ForeignFlannel
from testbed.localcluster import Node
from testbed.podbed import MANIFEST_PATH, DeployRun, PodBed
from tests.support.foreign import kube_flannel_sources
from tests.support.leftovers import NOTHING, leftovers, pod_routes

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="booting nodes needs root"),
]

# kubectl queries for the objects podnet's kube-flannel manifest creates
FLANNEL_NAMESPACED = ("-n kube-flannel get daemonset/kube-flannel configmap/kube-flannel-cfg serviceaccount/flannel "
                      "--ignore-not-found -o name")
FLANNEL_CLUSTER_WIDE = "get namespace/kube-flannel clusterrole/flannel clusterrolebinding/flannel --ignore-not-found -o name"


@pytest.fixture(scope="module")
def bed(served_cluster):
    with served_cluster("pn-reset", nodes=2) as (base_url, mirror, workdir, cluster):
        bed = PodBed(cluster, base_url, mirror, "1.x", workdir, runtime="static-pod", rollout="systemd")
        kube = bed.install_cluster()
        bed.kcm_before = kube.get(cluster.nodes[0], MANIFEST_PATH)
        bed.write_inventory()
        yield bed


def reset(bed: PodBed, *args: str) -> DeployRun:
    run = bed.deploy(*args, script="reset.py")
    with (bed.workdir / "reset-runs.log").open("a") as log:  # every reset's output, for a look afterwards
        log.write(f"=== reset.py {' '.join(args)} (exit {run.returncode})\n{run.output}\n")
    return run


def deployed(bed: PodBed) -> None:
    run = bed.deploy()
    assert run.returncode == 0 and run.errors == 0, run.output[-4000:]
    bed.wait_for_flannel()


def pods_ping_across_nodes(bed: PodBed, prefix: str) -> list:
    pods = bed.run_pods([(node, f"{prefix}-{index}") for index, node in enumerate(bed.cluster.nodes)])
    for source, target in itertools.permutations(pods, 2):
        assert bed.ping(source, target.ip), f"{source.name} cannot reach {target.name} ({target.ip})"
    return pods


def pod_names(bed: PodBed) -> list[str]:
    return sorted(bed.kubectl("get pods -o name").split())


# --- 1. flanneld as a systemd unit: one node, then all -------------------------------------------


def test_systemd_rollout_deploy_gives_pods_that_reach_each_other(bed):
    deployed(bed)
    bed.pods = pods_ping_across_nodes(bed, "before")
    for node in bed.cluster.nodes:
        found = leftovers(bed, node)
        # every check below can fail: each kind of leftover is there after a deploy
        assert all(found[kind] for kind in ("files", "links", "chains", "dirs", "flanneld")), (node.name, found)
        assert {"cni0", "flannel.1"} <= set(found["links"])
        assert "/opt/cni/bin/flannel" in found["files"] and "/opt/cni/bin/bridge" in found["files"]


def test_reset_limited_to_one_node_takes_the_network_off_that_node_only(bed):
    control_plane, worker = bed.cluster.nodes
    kept = leftovers(bed, control_plane)
    flanneld_pid = bed.main_pid(control_plane, "flanneld")
    run = reset(bed, "--limit", worker.name)
    assert run.returncode == 0 and run.errors == 0, run.output[-4000:]
    changed = run.changed_operations()
    assert changed == {
        "reset: 10-flannel.conflist removed": 1,
        "reset: flanneld stopped, disabled and removed": 1,
        "reset: CNI plugin binaries removed": 1,
        "reset: flannel's interfaces deleted": 1,
        "reset: flannel's iptables chains deleted": 1,
        "reset: /run/flannel and host-local's records removed": 1,
    }, run.output[-4000:]
    assert f"{worker.name}: 1 pod(s) attached to cni0 lose their network" in run.output
    assert leftovers(bed, worker) == NOTHING
    # the other node keeps working: same state, same flanneld, a new pod there reaches the old one
    assert leftovers(bed, control_plane) == kept
    assert bed.main_pid(control_plane, "flanneld") == flanneld_pid
    assert bed.kube.get(control_plane, MANIFEST_PATH) != bed.kcm_before  # node IPAM flags still on
    fresh = bed.run_pod(control_plane, "after-limited-reset")
    assert bed.ping(fresh, bed.pods[0].ip)
    bed.remove_pod(fresh)
    # podnet deletes no workload: the worker's pod is still there (without network)
    assert pod_names(bed) == ["pod/before-0", "pod/before-1"]


def test_reset_of_all_nodes_leaves_nothing_and_restores_the_controller_manager(bed):
    run = reset(bed)
    assert run.returncode == 0 and run.errors == 0, run.output[-4000:]
    changed = run.changed_operations()
    assert changed.pop("reset: kube-controller-manager without podnet's node IPAM flags") == 1
    assert set(changed.values()) == {1}, changed  # the worker had nothing left
    for node in bed.cluster.nodes:
        assert leftovers(bed, node) == NOTHING, node.name
        assert pod_routes(bed, node) == [], node.name
    assert bed.kube.get(bed.cluster.nodes[0], MANIFEST_PATH) == bed.kcm_before
    assert "restoring /etc/kubernetes/manifests/kube-controller-manager.yaml from podnet's backup" in run.output
    assert pod_names(bed) == ["pod/before-0", "pod/before-1"]


# --- 2. the kube-flannel DaemonSet -----------------------------------------------------------


def test_daemonset_rollout_deploy_after_a_reset_gives_pods_that_reach_each_other(bed):
    bed.write_inventory(flannel_rollout="daemonset")
    deployed(bed)
    assert len(bed.kubectl(FLANNEL_NAMESPACED).split()) == 3
    assert len(bed.kubectl(FLANNEL_CLUSTER_WIDE).split()) == 3
    for pod in bed.pods:  # the pods from before the reset go once a CNI config is back (their network with them)
        bed.remove_pod(pod)
    pods = pods_ping_across_nodes(bed, "daemonset")
    for pod in pods:
        bed.remove_pod(pod)


def test_a_limited_reset_with_the_daemonset_is_refused_before_any_change(bed):
    worker = bed.cluster.nodes[1]
    before = leftovers(bed, worker)
    run = reset(bed, "--limit", worker.name)
    assert run.returncode != 0
    assert (f"this run leaves out {bed.cluster.nodes[0].name} (--limit). Run the reset without --limit, or use "
            "flannel_rollout = 'systemd' to take single nodes off") in run.output
    assert run.results == {}
    assert leftovers(bed, worker) == before


def test_dry_reset_lists_the_changes_and_makes_none(bed):
    before = {node.name: leftovers(bed, node) for node in bed.cluster.nodes}
    dry = reset(bed, "--dry")
    assert dry.returncode == 0, dry.output[-4000:]
    assert dry.detected is not None
    assert dry.detected["reset: kube-flannel DaemonSet and its objects deleted"] == 1
    assert dry.detected["reset: flannel's interfaces deleted"] == 2
    assert dry.detected["reset: kube-controller-manager without podnet's node IPAM flags"] == 1
    assert {node.name: leftovers(bed, node) for node in bed.cluster.nodes} == before
    assert len(bed.kubectl(FLANNEL_NAMESPACED).split()) == 3


def test_reset_deletes_the_daemonset_and_its_objects_and_leaves_nothing(bed):
    run = reset(bed)
    assert run.returncode == 0 and run.errors == 0, run.output[-4000:]
    changed = run.changed_operations()
    assert changed["reset: kube-flannel DaemonSet and its objects deleted"] == 1
    assert changed["reset: podnet's kube-flannel manifest removed"] == 1
    assert changed["reset: flannel's interfaces deleted"] == 2
    assert changed["reset: flannel's iptables chains deleted"] == 2
    for query in (FLANNEL_NAMESPACED, FLANNEL_CLUSTER_WIDE):
        assert bed.kubectl(query).split() == [], query
    for node in bed.cluster.nodes:
        assert leftovers(bed, node) == NOTHING, node.name
        assert pod_routes(bed, node) == [], node.name
    assert bed.kube.get(bed.cluster.nodes[0], MANIFEST_PATH) == bed.kcm_before


def test_a_second_reset_changes_nothing_and_costs_one_command_per_node(bed):
    marks = [node_costs.mark(node) for node in bed.cluster.nodes]
    again = reset(bed)
    assert again.returncode == 0, again.output[-4000:]
    assert again.changed_operations() == {}
    assert again.errors == 0
    assert sum(r["no_change"] for r in again.results.values()) > 0
    for node, before in zip(bed.cluster.nodes, marks):  # the probe, nothing else
        cost = node_costs.cost_since(node, before)
        assert (cost.connections, cost.commands, cost.sftp, cost.other_sessions) == (1, 1, 0, []), (node.name, cost)


# --- 3. another CNI's files --------------------------------------------------------------------

FOREIGN = {"/opt/cni/bin/bridge": "#!/bin/sh\n# another CNI's bridge\n", "/opt/cni/bin/other-cni": "#!/bin/sh\n# other\n",
           "/etc/cni/net.d/05-other.conflist": '{"cniVersion": "1.0.0", "name": "other", "plugins": []}\n'}
ORIGINALS = "/var/lib/podnet/backup/replaced"


def files_with_modes(bed: PodBed, node: Node, paths: list[str]) -> dict[str, str]:
    """path -> "<mode> <sha256>" of each that exists."""
    out = bed.sh(node, " ".join(["for f in", *paths, "; do [ -f $f ] && echo $f $(stat -c %a $f) "
                                 "$(sha256sum < $f | cut -c1-64); done; true"]))
    return {line.split()[0]: " ".join(line.split()[1:]) for line in out.splitlines()}


def test_a_reset_leaves_another_cnis_files_byte_for_byte_and_puts_back_what_the_deploy_replaced(bed):
    run = reset(bed)
    assert run.returncode == 0 and run.errors == 0, run.output[-4000:]
    for node in bed.cluster.nodes:
        for path, content in FOREIGN.items():
            bed.sh(node, f"printf '%s' {shlex.quote(content)} > {path} && chmod 0750 {path}")
    before = {node.name: files_with_modes(bed, node, list(FOREIGN)) for node in bed.cluster.nodes}
    deployed(bed)
    bed.kubectl("delete pods --all --wait=true --timeout=120s")  # the previous step's, once a CNI config is back
    worker = bed.cluster.nodes[1]
    for node in bed.cluster.nodes:
        # podnet's bridge is active; the other CNI's is kept, root-only; its config is moved aside
        assert files_with_modes(bed, node, ["/opt/cni/bin/bridge"]) != {
            "/opt/cni/bin/bridge": before[node.name]["/opt/cni/bin/bridge"]}
        kept = files_with_modes(bed, node, [f"{ORIGINALS}/opt/cni/bin/bridge"])
        assert list(kept.values()) == [before[node.name]["/opt/cni/bin/bridge"]]
        assert bed.sh(node, f"stat -c %a {ORIGINALS}").strip() == "700"
        assert bed.sh(node, "ls /etc/cni/net.d").split() == ["05-other.conflist.podnet-disabled",
                                                            "10-flannel.conflist"]
    # another CNI replaces one of podnet's plugins on the worker after the deploy
    bed.sh(worker, "printf '#!/bin/sh\\n# another loopback\\n' > /opt/cni/bin/loopback")
    foreign_loopback = files_with_modes(bed, worker, ["/opt/cni/bin/loopback"])
    run = reset(bed)
    assert run.returncode == 0 and run.errors == 0, run.output[-4000:]
    assert "/opt/cni/bin/loopback stays: it is not what podnet installed there" in run.output
    for node in bed.cluster.nodes:
        assert files_with_modes(bed, node, list(FOREIGN)) == before[node.name], node.name
        left = sorted(bed.sh(node, "ls -1A /opt/cni/bin").split())
        assert left == (["bridge", "loopback", "other-cni"] if node is worker else ["bridge", "other-cni"]), node.name
        assert bed.sh(node, "ls /etc/cni/net.d").split() == ["05-other.conflist"]
    assert files_with_modes(bed, worker, ["/opt/cni/bin/loopback"]) == foreign_loopback
    for node in bed.cluster.nodes:  # the bed as the other steps left it
        bed.sh(node, "rm -f /opt/cni/bin/bridge /opt/cni/bin/other-cni /opt/cni/bin/loopback "
                     "/etc/cni/net.d/05-other.conflist")


# --- 4. a flannel cluster podnet did not deploy: the doctor ----------------------------------------


def run_doctor(bed: PodBed, inventory) -> tuple[DeployRun, dict]:
    """doctor.py with the real pyinfra CLI on ``inventory``; (the run, its verdict as JSON)."""
    verdict = bed.workdir / "doctor.json"
    verdict.unlink(missing_ok=True)
    os.environ[DOCTOR_JSON] = str(verdict)
    try:
        run = bed.deploy(script="doctor.py", inventory=inventory)
    finally:
        del os.environ[DOCTOR_JSON]
    assert verdict.exists(), run.output[-4000:]
    return run, json.loads(verdict.read_text())


def test_doctor_diagnoses_a_flannel_cluster_podnet_did_not_deploy(bed):
    control_plane, worker = bed.cluster.nodes
    flannel = ForeignFlannel(bed.kube, bed.mirror.path("cni_plugins", bed.inventory_data()["cni_plugins_version"]))
    # the inventory alone: its hosts and groups, no podnet setting
    inventory = bed.cluster.write_inventory(bed.workdir / "foreign-inventory.py", {})
    pods = []
    try:
        flannel.install()
        bed.wait_for_flannel()
        pods = bed.run_pods([(node, f"foreign-{index}") for index, node in enumerate(bed.cluster.nodes)])
        for pod in pods:
            assert pod.ip in {str(a) for a in bed.node_subnet(pod.node).network.hosts()}, (pod.name, pod.ip)

        run, verdict = run_doctor(bed, inventory)
        assert run.returncode == 0, run.output[-4000:]
        assert verdict["healthy"], verdict
        for node in bed.cluster.nodes:
            cells = verdict["nodes"][node.name]
            assert {cells[link]["state"] for link in verdict["links"]} <= {"holds", "not applicable"}, cells
            assert cells["datapath"]["state"] == "holds", cells
        assert verdict["nodes"][control_plane.name]["node IPAM"]["state"] == "holds"
        # read from the cluster, and said so: the flags kubeadm's way sets, the rest flannel's defaults
        assert verdict["expected"]["cluster CIDR"] == "10.244.0.0/16" and verdict["expected"]["node mask"] == "24"
        assert verdict["expected"]["sources"] == kube_flannel_sources(control_plane.name)
        assert "this cluster's pod network is not podnet's" in run.output

        bed.sh(worker, "mv /opt/cni/bin/flannel /root/flannel.doctor-test")
        try:
            run, verdict = run_doctor(bed, inventory)
        finally:
            bed.sh(worker, "mv /root/flannel.doctor-test /opt/cni/bin/flannel")
        assert run.returncode != 0
        broken = {node: link for node, cells in verdict["nodes"].items() for link, cell in cells.items()
                  if cell["state"] == "broken"}
        assert broken == {worker.name: "plugins"}, verdict
        assert 'failed to find plugin "flannel" in path [/opt/cni/bin]' in run.output
    finally:
        if pods:
            bed.kubectl(f"delete pod {' '.join(pod.name for pod in pods)} --wait=true --timeout=60s", check=False)
        flannel.remove()
    # taken off again: the cluster as the reset left it
    for node in bed.cluster.nodes:
        assert leftovers(bed, node) == NOTHING, node.name
    assert bed.kube.get(control_plane, MANIFEST_PATH) == bed.kcm_before
    assert bed.kubectl("get namespace kube-flannel --ignore-not-found -o name").split() == []
