"""
Remote answers are data with a schema (tasks/engine/answers.py): only stdout is parsed,
every field is checked, and a line that does not fit is reported and never acted on.

Each kind of answer podnet reads from a node gets hostile lines here: injected tabs and
newlines, a file name holding a newline, a node name with spaces, a digest of the wrong
length, a kubectl warning on stderr. The probe is run for real in sh where the shell side
matters (file names, stderr).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import posixpath
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tasks import flannel, interrupted, kubeadm, pod_network
from tasks.engine import answers
from tasks.engine.answers import RemoteAnswerError
from tasks.controller_manager import BACKUP_DIR, config_path
from tasks.engine.probe import ANSWER_KINDS, NodeState, ProbeRequest, parse_probe, probe_script, report
from tasks.reset_controller_manager import BACKUPS_QUERY, backups
from tests.support.hosts import settings
from tests.support.plan import (
    CP,
    HOSTS,
    POD_CIDRS,
    WORKER,
    FakeNode,
    assert_ok,
    probe_answer,
    probes,
    run_pyinfra,
    write_inventory,
)

REPO = Path(__file__).resolve().parent.parent
# What kubectl prints on stderr when its discovery cache misses (klog's header: severity, MMDD, time, PID, file:line),
# while its answer on stdout is right and it exits 0.
KUBECTL_WARNING = ("E1207 10:15:02.123456   41235 memcache.go:265] \"Unhandled Error\" err=\"couldn't get current "
                   "server API group list: the server is currently unable to handle the request\"")


def run_probe(request: ProbeRequest, path: str | None = None) -> NodeState:
    env = dict(os.environ, PATH=f"{path}:{os.environ['PATH']}") if path else None
    out = subprocess.run(["sh", "-c", probe_script(request)], capture_output=True, text=True, check=True, env=env,
                         timeout=60).stdout
    return parse_probe(out.splitlines())


# --- the reported case: a kubectl warning on stderr ---------------------------------------------------


def test_a_kubectl_warning_on_stderr_is_no_node_and_no_pod_network_change(tmp_path, caplog):
    kubectl = tmp_path / "kubectl"
    kubectl.write_text(f"#!/bin/sh\necho {shlex.quote(KUBECTL_WARNING)} >&2\nprintf 'cp1 10.244.0.0/24\\nw1 10.244.1.0/24\\n'\n")
    kubectl.chmod(0o755)
    s = settings()
    request = pod_network.probe_request(s, first_control_plane=True)
    request.queries["pod_cidrs"] = f"{kubectl} get nodes"  # the stub stands for s.kubectl's kubectl
    state = run_probe(request)
    assert state.queries["pod_cidrs"] == (0, ["cp1 10.244.0.0/24", "w1 10.244.1.0/24"])
    assert state.query_stderr["pod_cidrs"] == KUBECTL_WARNING  # kept apart, shown, never parsed
    node = state.answering(request, "cp1")
    for allow in (False, True):  # nothing to refuse, and nothing for allow_pod_network_change to act on
        assert pod_network.checked(settings(allow_pod_network_change=allow), node, "cp1", True) == {}
    assert flannel.pod_cidr_problems(s, node.queries["pod_cidrs"][1], "cp1") == []
    with caplog.at_level(logging.WARNING):
        report("cp1", state)
    assert ("podnet: cp1: query pod_cidrs wrote to stderr (shown, not read as data): E1207 10:15:02.123456   41235 "
            "memcache.go:265]") in caplog.text


def test_what_the_old_merged_answer_held_is_refused_not_taken_for_a_node():
    # had stderr been read with stdout, the warning would be a node E1207 with podCIDR 10:15:02.123456
    lines = [KUBECTL_WARNING, "cp1 10.244.0.0/24"]
    for allow in (False, True):
        node = NodeState(queries={"pod_cidrs": (0, lines)})
        with pytest.raises(RemoteAnswerError) as refused:
            pod_network.checked(settings(allow_pod_network_change=allow, cluster_cidr="10.245.0.0/16"), node, "cp1",
                                True)
        assert str(refused.value).startswith("cp1: the answer to kubectl get nodes (pod_cidrs) does not fit its "
                                             "schema: line 'E1207 10:15:02.123456")
        assert "nothing is done with it" in str(refused.value)


# --- node names and podCIDRs -----------------------------------------------------------------------


@pytest.mark.parametrize("line, why", [
    ("my node 10.244.1.0/24", "'node' is not a network"),  # a node name with a space
    ("w1\t10.244.1.0/24", "is not a Kubernetes object name"),  # an injected tab
    ("W1 10.244.1.0/24", "is not a Kubernetes object name"),  # upper case: not an RFC 1123 name
    ("w1 10.244.1.1/24", "'10.244.1.1/24' is not a network"),  # host bits set: not a podCIDR
    ("w1 10.244.1.0/24 10.244.2.0/24", "more than one podCIDR per IP family"),
    ("w1 10:15:02.123456", "is not a network"),
    ("-w1 10.244.1.0/24", "is not a Kubernetes object name"),
])
def test_a_pod_cidr_line_that_does_not_fit_is_refused_naming_host_query_and_line(line, why):
    with pytest.raises(RemoteAnswerError) as refused:
        pod_network.nodes_not_fitting(settings(), ["cp1 10.244.0.0/24", line], "cp1")
    assert f"line {line!r}" in str(refused.value) and why in str(refused.value)
    with pytest.raises(RemoteAnswerError):  # flannel's podCIDR check refuses the same way
        flannel.pod_cidr_problems(settings(), [line], "cp1")


def test_a_node_listed_twice_is_refused():
    with pytest.raises(RemoteAnswerError, match="Node listed twice"):
        pod_network.pod_cidrs("cp1", ["w1 10.244.1.0/24", "w1 10.244.9.0/24"])


def test_the_pod_listing_of_a_re_registration_is_checked_field_by_field():
    pod_line = pod_network._pod_line
    assert pod_line("w1 default web-0 ") == ("w1", "default", "web-0", False)
    assert pod_line("w1 kube-flannel kube-flannel-ds-x true") == ("w1", "kube-flannel", "kube-flannel-ds-x", True)
    for bad in ("w1 default web 0 ", "w1 default web-0 yes", "w1 Default web-0 ", "w1\tdefault web-0 "):
        with pytest.raises(answers.BadField):
            pod_line(bad)


# --- digests, modes, units, sysctls, listings from the probe ---------------------------------------


@pytest.mark.parametrize("line, kind, key", [
    ("sha\t" + "a" * 63 + "\t/opt/cni/bin/bridge", "digest", "/opt/cni/bin/bridge"),  # a digest of wrong length
    ("sha\t" + "A" * 64 + "\t/opt/cni/bin/bridge", "digest", "/opt/cni/bin/bridge"),
    ("mode\t75x\t/opt/cni/bin/bridge", "mode", "/opt/cni/bin/bridge"),
    ("unit\tcontainerd.service\tactive\tenabled; reboot", "unit", "containerd.service"),
    ("unit\tcontainerd.service\trunning\tenabled", "unit", "containerd.service"),
    ("sysctl\tnet.ipv4.ip_forward\t1\x1b[2J", "sysctl", "net.ipv4.ip_forward"),
    ("content\t/etc/containerd/config.toml\tnot base64!", "content", "/etc/containerd/config.toml"),
    ("feature\tkubeadm:admin.conf\tyes", "feature", "kubeadm:admin.conf"),
])
def test_a_probe_line_that_does_not_fit_is_reported_and_its_key_refused(line, kind, key):
    state = parse_probe(["machine x86_64", line])
    assert len(state.problems) == 1 and repr(line)[:60] in state.problems[0], state.problems
    field = {v: k for k, v in ANSWER_KINDS.items()}[kind]
    request = ProbeRequest(hashes=["/opt/cni/bin/bridge"], contents=["/etc/containerd/config.toml"],
                           sysctls=["net.ipv4.ip_forward"], units=["containerd.service"],
                           features={"kubeadm:admin.conf": "true"})
    node = state.answering(request, "w1")
    with pytest.raises(RemoteAnswerError) as refused:  # a step reading it refuses; never "absent"
        getattr(node, field).get(key)
    assert str(refused.value).startswith(f"w1: the probe's {kind} answer for {key!r} was refused: ")


def test_unknown_lines_and_broken_field_counts_are_reported_never_used():
    state = parse_probe(["machine x86_64", "E1207 10:15:02.123456 warning", "sha\tonly-one-field",
                         "query\tpod_cidrs\t0\tnot-base64\t", "machine x86 64; rm"])
    assert len(state.problems) == 4 and state.hashes == {} and state.queries == {}
    assert state.machine == "x86_64"


def test_multi_valued_sysctls_keep_their_tab_separated_fields():
    state = parse_probe(["sysctl\tnet.ipv4.ip_local_port_range\t32768\t60999"])
    assert state.sysctls == {"net.ipv4.ip_local_port_range": "32768\t60999"} and state.problems == []


# A name whose second line reads as a record of the stat output the digest script parses (no '/' can be in a name).
FORGED = "x\n1:2:3:4 755 81a4 bridge"


def test_a_file_name_with_a_newline_cannot_forge_a_digest_or_a_listing_entry(tmp_path, caplog):
    bin_dir, conf_dir = tmp_path / "bin", tmp_path / "net.d"
    bin_dir.mkdir()
    conf_dir.mkdir()
    (bin_dir / "bridge").write_bytes(b"the real bridge")
    (bin_dir / FORGED).write_bytes(b"planted")
    (bin_dir / "tab\tname").write_bytes(b"planted")
    (conf_dir / "10-flannel.conflist").write_text("{}")
    (conf_dir / "zz\n00-other.conf").write_text("{}")
    request = ProbeRequest(hashes=[f"{bin_dir}/*"], listings=[str(conf_dir)])
    state = run_probe(request)
    assert state.hashes == {f"{bin_dir}/bridge": hashlib.sha256(b"the real bridge").hexdigest()}
    assert len(state.problems) == 3 and all("with a newline, tab or carriage return" in p for p in state.problems)
    node = state.answering(request, "w1")
    with pytest.raises(RemoteAnswerError, match="holds a file name with a newline"):  # an incomplete listing
        node.listings.get(str(conf_dir))
    with caplog.at_level(logging.WARNING):
        report("w1", state)
    assert caplog.text.count("podnet: w1: the answer to the probe does not fit its schema") == 3


def test_a_staged_leftover_line_outside_podnets_directories_is_never_removed(tmp_path, caplog):
    s = settings()
    conf = s.cni_conf_dir
    node = NodeState(queries={interrupted.QUERY: (0, [f"{conf}/.10-flannel.conflist.podnet-new",
                                                      "/etc/passwd.podnet-new", f"{conf}/x\tpodnet-new",
                                                      f"{conf}/.x.podnet-new\x1b"])})
    with caplog.at_level(logging.WARNING):
        assert interrupted.leftovers(node, s, "w1") == [f"{conf}/.10-flannel.conflist.podnet-new"]
    assert caplog.text.count("w1: the answer to the staged files left (staged_leftovers) does not fit") == 3


def test_the_staged_file_query_does_not_list_a_name_with_a_newline(tmp_path):
    (tmp_path / ".a.podnet-new").write_text("x")
    (tmp_path / ".b\n.c.podnet-new").write_text("x")
    out = subprocess.run(["sh", "-c", interrupted.find_command([str(tmp_path)])], capture_output=True, text=True,
                         check=True).stdout
    assert out.splitlines() == [f"{tmp_path}/.a.podnet-new"]


# --- cni0, the interface MTU, the manifest hash -----------------------------------------------------


@pytest.mark.parametrize("lines", [
    ["addr 10.244.1.1/24\tports 3"], ["addr 10.244.1.1/24", "ports -1"], ["addr not-an-address", "ports 0"],
    ["addr 10.244.1.1/24 extra", "ports 0"], ["addr 10.244.1.1/24", "ports 1", "ports 2"], ["link cni0", "ports 0"],
])
def test_a_cni0_answer_that_does_not_fit_is_refused(lines):
    node = NodeState(queries={"cni0": (0, lines)})
    with pytest.raises(RemoteAnswerError, match="w1: the answer to cni0's addresses and ports does not fit"):
        pod_network.cni0_state(node, "w1")


@pytest.mark.parametrize("line", ["eth0 9000 extra", "eth 0 1500", "eth0 99999999", "eth0\t1500", "eth/0 1500"])
def test_an_interface_mtu_answer_that_does_not_fit_is_refused(line):
    node = NodeState(queries={"flannel_iface_mtu": (0, [line])})
    with pytest.raises(RemoteAnswerError, match="w1: the answer to the MTU of flanneld's interface"):
        flannel.pod_mtu_fits(settings(flannel_mtu=1400), node, "w1")


@pytest.mark.parametrize("line", ["abc", "a" * 63, "a" * 64 + " extra", KUBECTL_WARNING])
def test_a_manifest_hash_that_is_not_a_digest_is_refused(line):
    node = NodeState(queries={"flannel_manifest": (0, [line]), "pod_cidrs": (0, ["cp1 10.244.0.0/24"])})
    with pytest.raises(RemoteAnswerError, match="cp1: the answer to the kube-flannel DaemonSet's manifest hash"):
        flannel.apply_daemonset(settings(), node, ipam_changed=False, host_name="cp1")


# --- reset's answers ---------------------------------------------------------------------------------


def test_reset_deletes_only_chains_tables_and_objects_whose_lines_fit(caplog):
    with caplog.at_level(logging.WARNING):
        chains = flannel.parse_chains(["iptables-nft nat FLANNEL-POSTRTG", "iptables-nft nat;reboot FLANNEL-FWD",
                                     "iptables-nft\tfilter FLANNEL-FWD"], "w1")
        tables = answers.records("w1", "nft", ["ip flannel-ipv4", "ip flannel-ipv4; reboot", "inet other"],
                                 flannel._nft_line, strict=False)
        objects = answers.records("cp1", "objects", ["daemonset.apps/kube-flannel", "configmap/kube flannel",
                                                     "Warning: x"], flannel._object_line, strict=False)
    assert chains == {("iptables-nft", "nat"): ["FLANNEL-POSTRTG"]}
    assert tables == [("ip", "flannel-ipv4")]
    assert objects == ["daemonset/kube-flannel"]
    assert caplog.text.count("does not fit its schema") == 6


def test_a_backup_answer_that_does_not_fit_is_refused():
    s = settings()
    prefix = f"{BACKUP_DIR}/{posixpath.basename(config_path(s))}."
    good = f"{prefix}0123456789ab {base64.b64encode(b'kind: Pod').decode()}"
    node = NodeState(queries={BACKUPS_QUERY: (0, [good])})
    assert backups(node, s, "cp1") == {f"{prefix}0123456789ab": b"kind: Pod"}
    for bad in (f"{prefix}0123456789ab not-base64!", f"/etc/shadow {base64.b64encode(b'x').decode()}",
                f"{prefix}x/../../etc/shadow eA=="):
        with pytest.raises(RemoteAnswerError, match="cp1: the answer to podnet's backups"):
            backups(NodeState(queries={BACKUPS_QUERY: (0, [bad])}), s, "cp1")


# --- execution-time answers --------------------------------------------------------------------------


def test_a_join_command_with_an_endpoint_that_is_not_host_port_is_not_used():
    tail = " --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash sha256:" + "a" * 64
    assert kubeadm.parse_join_command(["kubeadm join 192.0.2.10:6443" + tail]) is not None
    assert kubeadm.parse_join_command(["kubeadm join [fd00::1]:6443" + tail]) is not None
    for endpoint in ("evil$(touch${IFS}x):6443", "host:99999", "[zz::1]:6443", "host"):
        assert kubeadm.parse_join_command([f"kubeadm join {endpoint}" + tail]) is None


def test_no_task_reads_stderr_as_data():
    # the kind, not the case: stderr is only ever discarded with stdout (>/dev/null 2>&1), never merged into
    # what is parsed; the probe keeps each query's stderr apart
    merged = [f"{path.name}: {line.strip()}" for path in sorted((REPO / "tasks").rglob("*.py"))
              for line in path.read_text().splitlines()
              if re.search(r"2>&1", line) and not re.search(r">\s*/dev/null 2>&1", line)]
    assert merged == []


# --- through the real pyinfra CLI (@fake connector, tests/support/plan.py) ------------------------------


def test_a_converged_cluster_whose_kubectl_warns_on_stderr_is_left_alone(cluster):
    cp = cluster.converged(CP)
    for query in ("pod_cidrs", "flannel_manifest"):
        cp.query_stderr[query] = KUBECTL_WARNING
    run = run_pyinfra(cluster.inventory(cp, cluster.converged(WORKER)), "-y")
    assert_ok(run)
    for host in HOSTS:  # the no-op rerun: still one command per host
        assert run.commands(host) == probes(run, host) and len(probes(run, host)) == 1
    assert "@fake/cp1: query pod_cidrs wrote to stderr (shown, not read as data): E1207 10:15:02.123456" in run.output


def test_an_unwritable_run_lock_stops_that_host_before_any_change(cluster):
    data = cluster.data()
    failed = "runlock\tfailed\tcannot create /run/podnet (read-only or full file system, or no permission)"
    nodes = [FakeNode("cp1", "control_plane", data, probe_answer(cluster.fresh(CP)), {"get nodes": POD_CIDRS}),
             FakeNode("w1", "workers", data, [*probe_answer(cluster.fresh(WORKER)), failed])]
    run = run_pyinfra(write_inventory(cluster.tmp / "inventory.py", nodes), "-y")
    assert run.returncode != 0
    assert ("@fake/w1: podnet's run lock /run/podnet/run.lock could not be taken: cannot create /run/podnet "
            "(read-only or full file system, or no permission); stopped before any change") in run.output
    assert run.commands(WORKER) == probes(run, WORKER) and run.uploads(WORKER) == []
