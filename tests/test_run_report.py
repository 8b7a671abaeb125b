"""
The end-of-run report of failed hosts (tasks/engine/run_report.py), through the real pyinfra CLI on
@local: a host whose operation fails is named with that operation and with the later
operations that would have changed it (those that would not are not listed).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support.plan import (
    CP,
    FLANNEL_TOKEN_ANSWERS,
    POD_CIDRS,
    WORKER,
    FakeNode,
    probe_answer,
    run_pyinfra,
    write_inventory,
)

REPO = Path(__file__).resolve().parent.parent

DEPLOY = """
from pyinfra import state
from pyinfra.operations import server
from tasks.engine import ops
from tasks.engine import run_report

run_report.register(state)
run_report.register(state)  # once per run, however many hosts call it
server.shell(name="first step", commands=["true"])
server.shell(name="failing step", commands=["exit 3"])
ops.shell_when(name="a later step with nothing to do", commands=["true"], reason=None)
server.shell(name="a later step", commands=["true"])
"""


def test_a_failed_host_is_named_with_the_failed_step_and_what_was_left_undone(tmp_path):
    deploy = tmp_path / "deploy_fails.py"
    deploy.write_text(DEPLOY)
    done = subprocess.run([sys.executable, "-m", "pyinfra", "-y", "@local", str(deploy)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    output = done.stdout + done.stderr
    assert done.returncode != 0
    lines = [line for line in output.splitlines() if "podnet: @local failed at" in line]
    assert len(lines) == 1, output[-3000:]
    assert lines[0].endswith("podnet: @local failed at 'failing step'; left undone there: a later step. Rerun the "
                             "deploy once @local is reachable: it does what is left and changes nothing that is "
                             "already done"), lines


# --- through deploy.py on @fake hosts (tests/support/plan.py) -----------------------------------------


def _plugin_activation_fails_on_the_worker(cluster, *, worker_conflist_differs: bool):
    """deploy.py with -y where the worker's new CNI plugin is uploaded and its activation fails (the node's
    check rejects it); the control plane and, unless ``worker_conflist_differs``, the worker's conflist are
    converged for the inventory's settings."""
    extra = {"flannel_mtu": 1400}
    worker = cluster.converged(WORKER) if worker_conflist_differs else cluster.converged(WORKER, **extra)
    worker.hashes["/opt/cni/bin/portmap"] = "0" * 64  # another portmap: the plugin batch changes
    fail = {re.compile(r"^set -e; .*chmod \S+ /opt/cni/bin/"): {"success": False, "stderr": "rejected"}}
    nodes = [FakeNode("cp1", "control_plane", cluster.data(**extra), probe_answer(cluster.converged(CP, **extra)),
                      {"get nodes": POD_CIDRS, **FLANNEL_TOKEN_ANSWERS}),
             FakeNode("w1", "workers", cluster.data(**extra), probe_answer(worker), fail)]
    run = run_pyinfra(write_inventory(cluster.tmp / "inventory.py", nodes), "-y")
    assert run.returncode != 0
    lines = [line for line in run.output.splitlines() if "podnet: @fake/" in line and " failed at " in line]
    assert len(lines) == 1, run.output[-4000:]  # the control plane did not fail
    return lines[0]


def test_a_host_failed_at_the_plugins_is_told_its_conflist_was_left_undone(cluster):
    line = _plugin_activation_fails_on_the_worker(cluster, worker_conflist_differs=True)
    assert "podnet: @fake/w1 failed at 'cni: plugin binaries'; left undone there: cni: 10-flannel.conflist. " \
           "Rerun the deploy once @fake/w1 is reachable" in line, line


def test_a_host_failed_at_the_plugins_whose_conflist_is_already_right_has_nothing_left_undone(cluster):
    line = _plugin_activation_fails_on_the_worker(cluster, worker_conflist_differs=False)
    assert "podnet: @fake/w1 failed at 'cni: plugin binaries'; nothing after it was left undone there." in line, line
