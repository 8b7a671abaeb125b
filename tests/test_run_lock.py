"""
The run lock's shell (tasks/engine/run_lock.py), run for real in sh on a temporary lock file.

The process that stands for a run's SSH connection is ``Connection``: a Python process
started under the name ``sshd`` (its comm, as OpenSSH's per-connection process has it), that
runs each probe in a shell of its own (through a privilege wrapper, if given) and stays
alive, as pyinfra's connection does for the whole run. Other runs are other connections; the
last test runs the real pyinfra CLI against @local (where pyinfra's own process owns the lock).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from tasks.engine.probe import parse_probe
from tasks.engine.run_lock import (LockAnswer, NodeLocked, RunLockUnavailable, acquire_script, parse,
                                   refuse_if_held)

REPO = Path(__file__).resolve().parent.parent
AFTER = "echo probe-continues"  # what the probe reads after the lock step
SERVE = textwrap.dedent("""
    import json, subprocess, sys
    wrapper = json.loads(sys.argv[1])
    for line in sys.stdin:
        done = subprocess.run([*wrapper, "sh", "-c", json.loads(line)], capture_output=True, text=True)
        print(json.dumps([done.returncode, done.stdout]), flush=True)
""")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory) -> Path:
    """This Python, started under the name sshd: /proc/PID/comm is the name of the file executed."""
    link = tmp_path_factory.mktemp("bin") / "sshd"
    link.symlink_to(sys.executable)
    return link


class Connection:
    """One run's connection to the node: lives until ended; runs each script in a fresh shell, through
    ``wrapper`` (e.g. ["sudo", "-u", "root"]) when given."""

    def __init__(self, sshd: Path, wrapper: tuple[str, ...] = ()):
        self.proc = subprocess.Popen([str(sshd), "-c", SERVE, json.dumps(list(wrapper))], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid

    def run(self, script: str) -> list[str]:
        self.proc.stdin.write(json.dumps(script) + "\n")
        self.proc.stdin.flush()
        rc, out = json.loads(self.proc.stdout.readline())
        assert rc == 0, out
        return out.splitlines()

    def probe(self, lock: Path, who: str = "alice@laptop (pyinfra PID 1)", wait: int = 0) -> list[str]:
        return self.run(acquire_script(wait, who, path=str(lock)) + "\n" + AFTER)

    def end(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc.stdin.close()
        self.proc.stdout.close()


@pytest.fixture
def connect(sshd):
    started: list[Connection] = []

    def connect(wrapper: tuple[str, ...] = ()) -> Connection:
        started.append(Connection(sshd, wrapper))
        return started[-1]

    yield connect
    for connection in started:
        connection.end()


def answer(lines: list[str]) -> LockAnswer:
    return parse(next(line for line in lines if line.startswith("runlock\t")).split("\t")[1:])


def test_a_free_node_is_locked_for_the_connection_process(tmp_path, connect):
    lock = tmp_path / "run.lock"
    conn = connect()
    lines = conn.probe(lock, who="alice@laptop (pyinfra PID 42)")
    assert lines == [f"runlock\ttaken\t{conn.pid}", "probe-continues"]
    pid, start, since, who = lock.read_text().rstrip("\n").split("\t")
    assert pid == str(conn.pid)
    assert start == Path(f"/proc/{conn.pid}/stat").read_text().rpartition(") ")[2].split()[19]
    assert since.endswith("Z") and who == "alice@laptop (pyinfra PID 42)"


def test_the_same_run_probing_again_keeps_its_lock(tmp_path, connect):
    lock = tmp_path / "run.lock"
    conn = connect()
    assert answer(conn.probe(lock)).taken
    assert conn.probe(lock)[-1] == "probe-continues"


def test_a_live_holder_stops_the_probe_and_is_named(tmp_path, connect):
    lock = tmp_path / "run.lock"
    bob = connect()
    assert bob.probe(lock, "bob@desk (pyinfra PID 7, started 2026-11-30T10:00:00+0000)")[0] == \
        f"runlock\ttaken\t{bob.pid}"
    lines = connect().probe(lock)
    assert "probe-continues" not in lines  # nothing else is read from a node another run deploys
    held = answer(lines)
    assert (held.taken, held.holder, held.pid) == (False, "bob@desk (pyinfra PID 7, started "
                                                         "2026-11-30T10:00:00+0000)", str(bob.pid))
    with pytest.raises(NodeLocked) as refused:
        refuse_if_held("node-2", held, 0)
    message = str(refused.value)
    assert message.startswith(f"node-2: node node-2 is being deployed by bob@desk (pyinfra PID 7, started "
                              f"2026-11-30T10:00:00+0000) since {held.since}; stopped before any change")
    assert f"kill {bob.pid}" in message


def test_a_killed_holder_leaves_a_stale_lock_that_the_next_run_takes_over(tmp_path, connect):
    lock = tmp_path / "run.lock"
    bob = connect()
    assert answer(bob.probe(lock, "bob@desk")).taken
    bob.end()  # SIGKILL: no release step ran
    assert lock.read_text().split("\t")[0] == str(bob.pid)
    lines = connect().probe(lock, who="carol@laptop")
    assert lines[-1] == "probe-continues" and answer(lines).taken
    assert lock.read_text().rstrip("\n").split("\t")[3] == "carol@laptop"


def test_a_recorded_pid_now_used_by_another_process_is_stale(tmp_path, connect):
    lock = tmp_path / "run.lock"
    lock.write_text("1\t999\t2026-11-30T10:00:00Z\tbob@desk\n")  # PID 1 is alive, but started at another time
    assert answer(connect().probe(lock)).taken


def test_a_bounded_wait_takes_the_lock_once_the_holder_ends(tmp_path, connect):
    lock = tmp_path / "run.lock"
    bob = connect()
    assert answer(bob.probe(lock, "bob@desk")).taken
    threading.Timer(2, bob.end).start()
    lines = connect().probe(lock, wait=30)
    assert answer(lines).taken and lines[-1] == "probe-continues"


RACE = textwrap.dedent("""
    import json, subprocess, sys
    sys.stdin.readline()  # the start signal: every racer is up before any probes
    print(subprocess.run(["sh", "-c", sys.argv[1]], capture_output=True, text=True).stdout.strip(), flush=True)
    sys.stdin.readline()  # keep the connection until told
""")


def test_two_runs_starting_together_never_both_hold_the_lock(tmp_path, sshd):
    lock = tmp_path / "run.lock"
    script = acquire_script(0, "racer", path=str(lock))
    # six shells of ONE connection: all the same owner, so all may hold it (re-entrant) ...
    one = subprocess.run([str(sshd), "-c", "import subprocess, sys; subprocess.run(['sh', '-c', sys.argv[1]])",
                          f"for i in 1 2 3 4 5 6; do ( {script} ) & done; wait"], capture_output=True, text=True,
                         timeout=60)
    assert [line.split("\t")[1] for line in one.stdout.splitlines()] == ["taken"] * 6, one.stdout
    # ... while separate connections racing (released together) get exactly one holder
    for round_ in range(3):
        race = lock.with_name(f"race{round_}.lock")
        racers = [subprocess.Popen([str(sshd), "-c", RACE, acquire_script(0, f"racer {i}", path=str(race))],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for i in range(4)]
        try:
            for racer in racers:
                racer.stdin.write("go\n")
                racer.stdin.flush()
            lines = [racer.stdout.readline().strip() for racer in racers]
        finally:
            for racer in racers:
                racer.kill()
                racer.wait(timeout=30)
                racer.stdin.close()
                racer.stdout.close()
        assert sorted(line.split("\t")[1] for line in lines) == ["held", "held", "held", "taken"], lines
        taken = next(line for line in lines if "\ttaken\t" in line)
        assert race.read_text().split("\t")[0] == taken.split("\t")[2]  # the lock names the one that got it


# Wrappers that may sit between sshd and the probe: none of them may become the lock's owner (they end
# with the command, which would leave the lock stale for the next run while the first is still connected).
WRAPPERS = {
    "none": (),
    "sudo": ("sudo", "-u", "root"),
    "sudo sh -c": ("sudo", "-u", "root", "sh", "-c", '"$@"; true', "sh"),
    "env": ("env", "PODNET_TEST=1"),
    "runuser": ("runuser", "-u", "root", "--"),
    "setsid": ("setsid",),
    "su": ("su", "root", "-s", "/bin/sh", "-c", '"$0" "$@"; true'),
    "bash login shell": ("bash", "-l", "-c", '"$@"; true', "bash"),
    "timeout": ("timeout", "60"),
    "nested": ("sudo", "-u", "root", "env", "A=1", "setsid", "bash", "-l", "-c", '"$@"; true', "bash"),
}


@pytest.mark.parametrize("wrapper", list(WRAPPERS), ids=list(WRAPPERS))
def test_whatever_wrapper_runs_the_probe_there_is_exactly_one_holder(tmp_path, connect, wrapper):
    lock = tmp_path / "run.lock"
    first, second = connect(WRAPPERS[wrapper]), connect(WRAPPERS[wrapper])
    lines = first.probe(lock, who="alice@laptop")
    assert lines == [f"runlock\ttaken\t{first.pid}", "probe-continues"], lines
    # the first run's probe and its wrapper processes have ended; its connection has not: still its lock
    again = second.probe(lock, who="bob@desk")
    assert answer(again) == LockAnswer(False, "alice@laptop", answer(again).since, str(first.pid)), again
    assert answer(first.probe(lock, who="alice@laptop")).taken  # and the first run keeps it
    first.end()
    assert answer(second.probe(lock, who="bob@desk")).taken


def test_a_probe_without_a_connection_process_among_its_ancestors_refuses(tmp_path):
    # no sshd above this shell (and no @local owner named): nothing would tell when the run ends
    lines = subprocess.run(["sh", "-c", acquire_script(0, "x", path=str(tmp_path / "run.lock")) + "\n" + AFTER],
                           capture_output=True, text=True, timeout=60).stdout.splitlines()
    assert len(lines) == 1 and answer(lines).failed.startswith("no SSH connection process (sshd or sshd-session or "
                                                               "dropbear) among the probe's ancestors")
    assert not (tmp_path / "run.lock").exists()


# A lock directory that cannot be written, made real in a mount namespace of the probe's own
# (unshare -m: nothing changes outside it): a read-only tmpfs, a tmpfs without free inodes, a
# tmpfs without free blocks, and a directory the deploying user may not write.
UNWRITABLE = {
    "read-only": "mount -t tmpfs -o ro,size=1m podnet-test \"$D\"",
    "read-only, an earlier run's lock there": "mount -t tmpfs -o size=1m podnet-test \"$D\" && mkdir \"$D/podnet\" && "
                                              "printf '1\\t999\\tT\\tbob\\n' > \"$D/podnet/run.lock\" && "
                                              ": > \"$D/podnet/run.lock.guard\" && mount -o remount,ro \"$D\"",
    "no free inode": "mount -t tmpfs -o size=1m,nr_inodes=2 podnet-test \"$D\" && mkdir \"$D/x\" 2>/dev/null; "
                     "touch \"$D/a\" \"$D/b\" \"$D/c\" 2>/dev/null; true",
    "no free space": "mount -t tmpfs -o size=4k podnet-test \"$D\" && mkdir -p \"$D/podnet\" && "
                     ": > \"$D/podnet/run.lock.guard\" && { head -c 65536 /dev/zero > \"$D/fill\" 2>/dev/null; true; }",
}


EXPECTED = {"read-only": "cannot create", "read-only, an earlier run's lock there": "cannot open", "no free inode": "cannot create", "no free space": "cannot write"}


@pytest.mark.parametrize("case", list(UNWRITABLE), ids=list(UNWRITABLE))
def test_an_unwritable_lock_fails_closed(tmp_path, connect, case):
    directory = tmp_path / "run"
    directory.mkdir()
    lock = directory / "podnet" / "run.lock"
    script = acquire_script(0, "alice@laptop", path=str(lock)) + "\n" + AFTER
    mount = UNWRITABLE[case].replace("$D", str(directory))
    lines = connect(("unshare", "-m", "sh", "-c", f'{mount} && exec "$@"', "sh")).run(script)
    assert "probe-continues" not in lines  # nothing else read, nothing changed
    failed = answer(lines)
    assert not failed.taken and failed.failed.startswith(EXPECTED[case]), lines
    with pytest.raises(RunLockUnavailable) as refused:
        refuse_if_held("node-1", failed, 0)
    assert str(refused.value).startswith("node-1: podnet's run lock /run/podnet/run.lock could not be taken: cannot ")
    assert "stopped before any change" in str(refused.value)


def test_a_directory_the_deploying_user_may_not_write_fails_closed(tmp_path, connect):
    directory = tmp_path / "podnet"
    directory.mkdir(mode=0o755)  # root's
    tmp_path.chmod(0o755)
    lock = directory / "run.lock"
    lines = connect(("runuser", "-u", "nobody", "--")).probe(lock)
    assert "probe-continues" not in lines
    failed = answer(lines).failed  # nobody may not even reach the directory here (pytest's tmp is root's, 0700)
    assert failed.startswith("cannot ") and "no permission" in failed, lines


def test_a_probe_answer_without_a_lock_line_refuses():
    # the lock step was asked but its line is missing or does not fit: not "no lock", a refusal
    state = parse_probe(["machine x86_64", "runlock\ttaken\tE1207 10:15:02"])
    assert state.run_lock is None and "is not a process ID" in state.problems[0]
    with pytest.raises(RunLockUnavailable, match="node-1: the probe did not report podnet's run lock"):
        refuse_if_held("node-1", state.run_lock, 0)


def test_a_wait_setting_below_zero_is_refused():
    with pytest.raises(ValueError):
        acquire_script(-1, "x")


LOCAL_DEPLOY = """
import os
from pyinfra import host
from tasks.engine.probe import NodeProbe, ProbeRequest, parse_probe, probe_script
from tasks.engine.run_lock import acquire_script, holder, refuse_if_held

lock = os.environ["LOCK"]
script = acquire_script(0, holder(), path=lock, local_owner=os.getpid()) + "\\n" + probe_script(ProbeRequest())
state = host.get_fact(NodeProbe, script=script)
refuse_if_held(host.name, state.run_lock, 0)
print("machine", state.machine)
"""


def test_with_pyinfras_local_connector_the_lock_lives_as_long_as_the_pyinfra_process(tmp_path, connect):
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
    assert answer(connect().probe(lock, "bob@desk (pyinfra PID 7)")).taken
    refused = pyinfra()
    assert refused.returncode != 0
    assert "node @local is being deployed by bob@desk (pyinfra PID 7) since" in refused.stdout + refused.stderr
