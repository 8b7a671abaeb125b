"""
The end-of-run report of failed hosts (tasks/engine/run_report.py), through the real pyinfra CLI on
@local: a host whose operation fails is named with that operation and with the later
operations that would have changed it (those that would not are not listed).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
