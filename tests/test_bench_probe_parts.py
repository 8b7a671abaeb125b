"""bench/probe_parts.py: the probe a rerun sent, found in pyinfra's debug output and cut into its parts."""

import os
import shlex
import subprocess

import pytest

from bench.probe_parts import PARTS, ProbePartsError, captured_probe, parse_marks, queries, timed_script
from tasks.engine.probe import ProbeRequest, locked_probe_script

# a request asking every kind of question, as a converged first control-plane host's probe does
REQUEST = ProbeRequest(
    hashes=["/usr/local/bin/containerd*"], contents=["/run/flannel/subnet.env"], texts=["/etc/cni/net.d/10-flannel.conflist"],
    sysctls=["net.ipv4.ip_forward"], features={"overlay": "grep -qw overlay /proc/filesystems"},
    units=["containerd.service"], listings=["/etc/cni/net.d"],
    queries={"pod_cidrs": "kubectl --kubeconfig=/etc/kubernetes/admin.conf get nodes -o jsonpath='{.items[*].metadata.name}'",
             "cni0": "[ -d /sys/class/net/cni0 ] && echo yes"},
    sysctl_config=["net.ipv4.ip_forward"])


def debug_output(host: str, script: str) -> str:
    return (f"    [pyinfra.connectors.ssh] Running command on {host}: (pty=False) {shlex.join(['sh', '-c', script])}\n"
            "    [pyinfra.api.facts] Loaded fact ...\n")


def test_the_probe_is_taken_byte_for_byte_from_the_hosts_first_command():
    script = locked_probe_script(REQUEST, 10)
    output = debug_output("other", "true") + debug_output("node-1", script)
    assert captured_probe(output, "node-1") == script
    with pytest.raises(ProbePartsError, match="node-2: no command"):
        captured_probe(output, "node-2")


def test_every_part_of_a_probe_asking_every_kind_gets_its_mark_in_order_and_the_script_still_runs(tmp_path):
    script = locked_probe_script(REQUEST, 0, local_owner=os.getpid())  # the lock tied to this process, as with @local
    timed, found = timed_script(script)
    assert found == [name for name, _ in PARTS]
    assert queries(script) == {"pod_cidrs": REQUEST.queries["pod_cidrs"]}
    # the timed script's stdout is the probe's own (the marks go to stderr); kubectl is not here: a failed query
    run = subprocess.run(["sh", "-c", timed.replace("/run/podnet", str(tmp_path))], capture_output=True, text=True,
                         timeout=30)
    assert "query\tcni0\t" in run.stdout and "unit\tcontainerd.service\t" in run.stdout
    parts = parse_marks(run.stderr)
    assert list(parts) == [name for name, _ in PARTS] + ["TOTAL"]
    assert all(ms >= 0 for ms in parts.values()) and parts["TOTAL"] >= sum(parts.values()) - parts["TOTAL"] - 1e-6


def test_a_probe_that_wrote_no_marks_is_an_error_not_zero_time():
    with pytest.raises(ProbePartsError, match="0 timestamps"):
        parse_marks("sh: 1: date: not found\n")
