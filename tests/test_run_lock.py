"""
The run lock's shell (tasks/engine/run_lock.py), run for real in sh on a temporary lock file.

Run from a Python process with ``sh -c``, the lock's owner is that Python process: exactly
the situation of pyinfra's @local connector (pyinfra runs each command in a shell of its
own). Other runs are other Python processes holding the lock the same way; the last test
runs the real pyinfra CLI against @local.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tasks.engine.run_lock import LockAnswer, NodeLocked, acquire_script, parse, refuse_if_held

REPO = Path(__file__).resolve().parent.parent
AFTER = "echo probe-continues"  # what the probe reads after the lock step


def probe(lock: Path, who: str = "alice@laptop (pyinfra PID 1)", wait: int = 0) -> list[str]:
    script = acquire_script(wait, who, path=str(lock)) + "\n" + AFTER
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def answer(lines: list[str]) -> LockAnswer:
    return parse(next(line for line in lines if line.startswith("runlock\t")).split("\t")[1:])


class Holder:
    """Another run: a process that took the lock through its own shell and stays alive."""

    def __init__(self, lock: Path, who: str, wait: int = 0, linger: float = 600):
        script = acquire_script(wait, who, path=str(lock))
        code = textwrap.dedent("""
            import subprocess, sys, time
            out = subprocess.run(["sh", "-c", sys.argv[1]], capture_output=True, text=True).stdout
            print(out.strip(), flush=True)
            time.sleep(float(sys.argv[2]))
        """)
        self.proc = subprocess.Popen([sys.executable, "-c", code, script, str(linger)], stdout=subprocess.PIPE,
                                     text=True)
        self._line: str | None = None

    @property
    def line(self) -> str:
        """What its lock step printed (read once it has run)."""
        if self._line is None:
            self._line = self.proc.stdout.readline().strip()
        return self._line

    def end(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc.stdout.close()


@pytest.fixture
def holders():
    started: list[Holder] = []
    yield started
    for holder in started:
        holder.end()


def test_a_free_node_is_locked_for_the_process_that_runs_the_probe(tmp_path):
    lock = tmp_path / "run.lock"
    lines = probe(lock, who="alice@laptop (pyinfra PID 42)")
    assert lines == [f"runlock\ttaken\t{os.getpid()}", "probe-continues"]
    pid, start, since, who = lock.read_text().rstrip("\n").split("\t")
    assert pid == str(os.getpid())
    assert start == Path(f"/proc/{os.getpid()}/stat").read_text().rpartition(") ")[2].split()[19]
    assert since.endswith("Z") and who == "alice@laptop (pyinfra PID 42)"


def test_the_same_run_probing_again_keeps_its_lock(tmp_path):
    lock = tmp_path / "run.lock"
    assert answer(probe(lock)).taken
    assert probe(lock)[-1] == "probe-continues"


def test_a_live_holder_stops_the_probe_and_is_named(tmp_path, holders):
    lock = tmp_path / "run.lock"
    holders.append(Holder(lock, "bob@desk (pyinfra PID 7, started 2026-11-30T10:00:00+0000)"))
    assert holders[0].line == f"runlock\ttaken\t{holders[0].proc.pid}"
    lines = probe(lock)
    assert "probe-continues" not in lines  # nothing else is read from a node another run deploys
    held = answer(lines)
    assert (held.taken, held.holder, held.pid) == (False, "bob@desk (pyinfra PID 7, started "
                                                         "2026-11-30T10:00:00+0000)", str(holders[0].proc.pid))
    with pytest.raises(NodeLocked) as refused:
        refuse_if_held("node-2", held, 0)
    message = str(refused.value)
    assert message.startswith(f"node-2: node node-2 is being deployed by bob@desk (pyinfra PID 7, started "
                              f"2026-11-30T10:00:00+0000) since {held.since}; stopped before any change")
    assert f"kill {holders[0].proc.pid}" in message


def test_a_killed_holder_leaves_a_stale_lock_that_the_next_run_takes_over(tmp_path, holders):
    lock = tmp_path / "run.lock"
    holders.append(Holder(lock, "bob@desk"))
    assert holders[0].line.startswith("runlock\ttaken")
    holders[0].end()  # SIGKILL: no release step ran
    assert lock.read_text().split("\t")[0] == str(holders[0].proc.pid)
    lines = probe(lock, who="carol@laptop")
    assert lines[-1] == "probe-continues" and answer(lines).taken
    assert lock.read_text().rstrip("\n").split("\t")[3] == "carol@laptop"


def test_a_recorded_pid_now_used_by_another_process_is_stale(tmp_path):
    lock = tmp_path / "run.lock"
    lock.write_text(f"1\t999\t2026-11-30T10:00:00Z\tbob@desk\n")  # PID 1 is alive, but started at another time
    assert answer(probe(lock)).taken


def test_a_bounded_wait_takes_the_lock_once_the_holder_ends(tmp_path, holders):
    lock = tmp_path / "run.lock"
    holders.append(Holder(lock, "bob@desk", linger=2))
    assert holders[0].line.startswith("runlock\ttaken")
    lines = probe(lock, wait=30)
    assert answer(lines).taken and lines[-1] == "probe-continues"


def test_two_runs_starting_together_never_both_hold_the_lock(tmp_path, holders):
    lock = tmp_path / "run.lock"
    script = acquire_script(0, "racer", path=str(lock))
    racers = [subprocess.Popen(["sh", "-c", f"for i in 1 2 3 4 5 6; do ( {script} ) & done; wait"],
                               stdout=subprocess.PIPE, text=True)]
    out = racers[0].communicate(timeout=60)[0].splitlines()
    # six shells of ONE process: all the same owner, so all may hold it (re-entrant) ...
    assert [line.split("\t")[1] for line in out] == ["taken"] * 6
    # ... while separate processes racing (all started before any is read) get exactly one holder
    for _ in range(4):
        holders.append(Holder(lock.with_name("race.lock"), "racer"))
    states = sorted(h.line.split("\t")[1] for h in holders)
    assert states == ["held", "held", "held", "taken"], [h.line for h in holders]


def test_a_wait_setting_below_zero_is_refused():
    with pytest.raises(ValueError):
        acquire_script(-1, "x")


LOCAL_DEPLOY = """
import os
from pyinfra import host
from tasks.engine.probe import NodeProbe, ProbeRequest, parse_probe, probe_script
from tasks.engine.run_lock import acquire_script, holder, refuse_if_held

lock = os.environ["LOCK"]
script = acquire_script(0, holder(), path=lock) + "\\n" + probe_script(ProbeRequest())
state = host.get_fact(NodeProbe, script=script)
refuse_if_held(host.name, state.run_lock, 0)
print("machine", state.machine)
"""


def test_with_pyinfras_local_connector_the_lock_lives_as_long_as_the_pyinfra_process(tmp_path, holders):
    lock = tmp_path / "run.lock"
    deploy = tmp_path / "lock_deploy.py"
    deploy.write_text(LOCAL_DEPLOY)

    def pyinfra() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pyinfra", "-y", "@local", str(deploy)], cwd=REPO,
                              capture_output=True, text=True, timeout=120, env={**os.environ, "LOCK": str(lock),
                                                                                 "PYTHONPATH": str(REPO)})

    first = pyinfra()
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    # the run is over: its process is gone, so its lock is stale and a second run proceeds
    assert "machine " in pyinfra().stdout
    holders.append(Holder(lock, "bob@desk (pyinfra PID 7)"))
    refused = pyinfra()
    assert refused.returncode != 0
    assert "node @local is being deployed by bob@desk (pyinfra PID 7) since" in refused.stdout + refused.stderr
