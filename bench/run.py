"""
The deploy benchmark of issue #5: `python3 -m bench.run [--nodes 1,3,12] [--runs 5]`.

For each cluster size it boots a fresh local cluster (testbed.localcluster, one cluster at
a time, torn down before the next and on any failure or Ctrl-C), brings up the test bed's
Kubernetes cluster without pod network (testbed.podbed, testbed.kubebed) and times, with the
real pyinfra CLI:

- the first run of deploy.py on the fresh nodes (once per size),
- the no-op rerun on the converged nodes (median of --runs),
- `--dry` on the converged nodes (median of --runs),
- the floor: `pyinfra -y INV exec -- true` on the same nodes (median of --runs),

interleaved round by round (floor, rerun, dry) so that drift hits all three alike. The
wall time is taken around the pyinfra subprocess.

What each run costs on a node is read on the node's side, without an ssh session of our
own: sshd runs with LogLevel VERBOSE, and its journal is read from the host in the node's
mount namespace (`nsenter -t <node PID 1> -m -- journalctl -t sshd ...`) after a cursor
taken just before the run. Counted per host: authenticated connections ("Accepted
publickey"), exec requests ("Starting session: command"), SFTP sessions ("Starting
session: subsystem 'sftp'"), any other session ("Starting session: shell", ...), the
node-side time of the exec requests (from "Starting session: command ... id N" to
"Close session: ... id N"), and the bytes sshd received from / sent to the client ("Transferred: sent S, received R bytes",
logged when the connection closes; SSH transport bytes, encrypted, without TCP/IP). The
byte counts are cross-checked with the host side of the node's veth (tx = towards the
node; every frame, TCP/IP headers included).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from testbed.localcluster import Cluster, ClusterError, Node
from testbed.localcluster.mounts import mounts_under
from testbed.localcluster.net import MAX_NODES
from testbed.mirror import build_mirror, serve_mirror
from testbed.podbed import DEPLOY_TIMEOUT, REPO, DeployRun, PodBed, parse_results

RESULTS_FILE = REPO / "bench" / "results-latest.md"
PHASES = ("first", "rerun", "dry", "floor")
PHASE_TITLES = {"first": "first run", "rerun": "no-op rerun", "dry": "`--dry`", "floor": "floor (`exec -- true`)"}
REFERENCE_SIZE = 3  # reruns of every size are also compared with the 3-node rerun
JOURNAL_SETTLE_TIMEOUT = 20.0  # how long to wait for sshd's closing lines to reach the journal

log = logging.getLogger("bench")


class BenchError(RuntimeError):
    pass


# --- what a run costs on a node: sshd's journal and the veth counters ----------------------


@dataclass
class NodeCost:
    """One pyinfra run as seen by one node."""

    connections: int = 0  # authenticated SSH connections ("Accepted publickey")
    commands: int = 0  # exec requests ("Starting session: command")
    sftp: int = 0  # SFTP sessions ("Starting session: subsystem 'sftp'")
    other_sessions: list[str] = field(default_factory=list)  # shell, other subsystems, ...
    exec_seconds: float = 0.0  # node-side time from start to close of each exec request, summed
    ssh_received: int | None = 0  # bytes sshd received from the client (towards the node)
    ssh_sent: int | None = 0  # bytes sshd sent to the client (None: a connection never logged its close)
    reset: int = 0  # connections the client dropped (TCP reset): sshd logs no byte counts for them
    unclosed: int = 0  # connections whose end never showed up in the journal (within the timeout)
    veth_to_node: int | None = None  # host-side veth tx bytes
    veth_from_node: int | None = None  # host-side veth rx bytes


ACCEPTED_RE = re.compile(r"^Accepted \S+ for \S+ from \S+ port (\d+)")
SESSION_RE = re.compile(r"^Starting session: (.+?) for \S+ from \S+ port (\d+) id (\d+)")
CLOSE_SESSION_RE = re.compile(r"^Close session: user \S+ from \S+ port (\d+) id (\d+)")
TRANSFERRED_RE = re.compile(r"^Transferred: sent (\d+), received (\d+) bytes")
# sshd's serverloop ends a connection this way when the client resets it instead of closing
# it (then it exits without logging "Transferred:").
ABORTED_RE = re.compile(r"^(Read error from remote host|Write failed|Connection reset by) ")
PORT_RE = re.compile(r" port (\d+)\b")  # the first one in a line is the client's


def journalctl(node: Node, *args: str) -> str:
    """journalctl run in the node's mount namespace: the node's own binary and journal files."""
    argv = ["nsenter", "-t", str(node.leader_pid), "-m", "--", "journalctl", "--no-pager", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise BenchError(f"{node.name}: {' '.join(argv)} failed: {proc.stderr.strip()}")
    return proc.stdout


def journal_cursor(node: Node) -> str:
    """The cursor of the node journal's newest entry."""
    match = re.search(r"^-- cursor: (\S+)", journalctl(node, "-n", "0", "--show-cursor"), re.MULTILINE)
    if not match:
        raise BenchError(f"{node.name}: journalctl printed no cursor")
    return match.group(1)


class Entry(NamedTuple):
    pid: int
    message: str
    usec: int  # the node's wall clock when journald received it (__REALTIME_TIMESTAMP)


def sshd_entries_since(node: Node, cursor: str) -> list[Entry]:
    """Every sshd journal entry after the cursor."""
    out = journalctl(node, "-t", "sshd", "--after-cursor", cursor, "-o", "json", "--output-fields=_PID,MESSAGE")
    entries = []
    for line in out.splitlines():
        entry = json.loads(line)
        message = entry.get("MESSAGE", "")
        if isinstance(message, list):  # journald's encoding of non-UTF-8 messages
            message = bytes(message).decode(errors="replace")
        entries.append(Entry(int(entry.get("_PID", 0)), message, int(entry.get("__REALTIME_TIMESTAMP", 0))))
    return entries


def count_sshd(entries: list[Entry]) -> tuple[NodeCost, set[str]]:
    """What the connections opened after the cursor did; also the ones not ended yet.

    Only connections authenticated after the cursor count (sshd lines of an earlier,
    straggling connection are ignored). A line is tied to its connection by the client
    port; "Transferred:" carries no port and is tied through the PID that logs it. A
    connection has ended when sshd logged its byte counts, or that the client reset it.
    An exec request lasts from its "Starting session: command ... id N" to the next
    "Close session: ... id N" of the same connection.
    """
    pid_port: dict[int, str] = {}
    for pid, message, _ in entries:
        match = PORT_RE.search(message)
        if match:
            pid_port.setdefault(pid, match.group(1))
    ours = {m.group(1) for _, message, _ in entries if (m := ACCEPTED_RE.match(message))}
    cost = NodeCost(connections=len(ours))
    closed: set[str] = set()
    reset: set[str] = set()
    running: dict[tuple[str, str], int] = {}  # (port, session id) -> start of an exec request
    for pid, message, usec in entries:
        if match := SESSION_RE.match(message):
            kind, port, session = match.groups()
            if port not in ours:
                continue
            if kind == "command":
                cost.commands += 1
                running[(port, session)] = usec
            elif kind == "subsystem 'sftp'":
                cost.sftp += 1
            else:
                cost.other_sessions.append(kind)
        elif (match := CLOSE_SESSION_RE.match(message)) and tuple(match.groups()) in running:
            cost.exec_seconds += (usec - running.pop(tuple(match.groups()))) / 1e6
        elif match := TRANSFERRED_RE.match(message):
            port = pid_port.get(pid)
            if port in ours:
                cost.ssh_sent += int(match.group(1))
                cost.ssh_received += int(match.group(2))
                closed.add(port)
        elif ABORTED_RE.match(message):
            match = PORT_RE.search(message)
            if match and match.group(1) in ours:
                reset.add(match.group(1))
    cost.reset = len(reset - closed)
    if cost.reset:  # their byte counts are unknown, not 0
        cost.ssh_received = cost.ssh_sent = None
    return cost, ours - closed - reset


def veth_counters(node: Node) -> tuple[int, int] | None:
    """(tx, rx) bytes of the host side of the node's veth (tx: towards the node)."""
    if not node.veth:
        return None
    stats = Path("/sys/class/net") / node.veth / "statistics"
    return int((stats / "tx_bytes").read_text()), int((stats / "rx_bytes").read_text())


@dataclass
class Mark:
    cursor: str
    veth: tuple[int, int] | None


def mark(node: Node) -> Mark:
    return Mark(journal_cursor(node), veth_counters(node))


def cost_since(node: Node, before: Mark) -> NodeCost:
    """The node's cost since `before`, once sshd has logged the close of every connection."""
    deadline = time.monotonic() + JOURNAL_SETTLE_TIMEOUT
    while True:
        cost, unclosed = count_sshd(sshd_entries_since(node, before.cursor))
        if not unclosed or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    cost.unclosed = len(unclosed)
    if unclosed:  # their byte counts are unknown, not 0
        cost.ssh_received = cost.ssh_sent = None
        log.warning("%s: no close logged for connection(s) from port %s; sshd's last lines: %s",
                    node.name, sorted(unclosed), [e.message for e in sshd_entries_since(node, before.cursor)[-6:]])
    after = veth_counters(node)
    if before.veth and after:
        cost.veth_to_node = after[0] - before.veth[0]
        cost.veth_from_node = after[1] - before.veth[1]
    return cost


# --- one measured pyinfra run ----------------------------------------------------------


@dataclass
class Measurement:
    phase: str
    seconds: float
    changed: dict[str, int]  # operation -> hosts changed (pyinfra's Results table)
    per_node: dict[str, NodeCost]


def run_floor(bed: PodBed, inventory: Path) -> DeployRun:
    """The cheapest pyinfra run on the same nodes: connect, run `true`, disconnect."""
    command = [sys.executable, "-m", "pyinfra", "-y", str(inventory), "exec", "--", "true"]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=DEPLOY_TIMEOUT, check=False)
    output = proc.stdout + proc.stderr
    (bed.workdir / "last-floor.log").write_text(output)
    return DeployRun(proc.returncode, output, parse_results(output))


def measure(bed: PodBed, pool: ThreadPoolExecutor, phase: str, inventory: Path) -> Measurement:
    nodes = bed.cluster.nodes
    before = list(pool.map(mark, nodes))
    if phase == "floor":
        start = time.perf_counter()
        run = run_floor(bed, inventory)
        seconds = time.perf_counter() - start
    else:
        args = ("--dry",) if phase == "dry" else ()
        start = time.perf_counter()
        run = bed.deploy(*args)
        seconds = time.perf_counter() - start
    if run.returncode != 0 or run.errors:
        raise BenchError(f"{bed.cluster.name}: the {phase} run failed (exit {run.returncode}, "
                         f"{run.errors} errors); its output ends with:\n{run.output[-3000:]}")
    costs = list(pool.map(cost_since, nodes, before))
    measurement = Measurement(phase, seconds, run.changed_operations(), dict(zip((n.name for n in nodes), costs)))
    log.info("%s %-5s %7.2fs  per host: %s", bed.cluster.name, phase, seconds, per_host_summary(measurement))
    return measurement


def per_host_summary(m: Measurement) -> str:
    costs = list(m.per_node.values())
    return (f"conn {spread([c.connections for c in costs])}, exec {spread([c.commands for c in costs])} "
            f"({statistics.mean(c.exec_seconds for c in costs):.2f}s), "
            f"sftp {spread([c.sftp for c in costs])}, to node {human_bytes(sum(c.ssh_received or 0 for c in costs) / len(costs))}")


# --- one cluster size ------------------------------------------------------------------


@dataclass
class SizeResult:
    nodes: int
    cluster: str
    measurements: list[Measurement]

    def of(self, phase: str) -> list[Measurement]:
        return [m for m in self.measurements if m.phase == phase]

    def median(self, phase: str) -> float:
        return statistics.median(m.seconds for m in self.of(phase))


def cluster_name(nodes: int) -> str:
    return f"bench{nodes}"  # also the bridge name (br-bench12): distinct per size, <= 8 chars


def bench_size(nodes: int, runs: int, mirror, base_url: str, generation: str, workdir: Path) -> SizeResult:
    name = cluster_name(nodes)
    size_dir = workdir / name
    previous_sigint = signal.getsignal(signal.SIGINT)
    with contextlib.ExitStack() as stack:
        stack.callback(signal.signal, signal.SIGINT, previous_sigint)
        log.info("%s: booting %d node(s) (state in %s)", name, nodes, size_dir / "cluster")
        cluster = stack.enter_context(Cluster(name=name, nodes=nodes, state_dir=size_dir / "cluster"))
        # Leaving the block tears the cluster down (on success, error or Ctrl-C); a second
        # Ctrl-C must not cut that tear-down short.
        stack.callback(signal.signal, signal.SIGINT, signal.SIG_IGN)
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=min(nodes, 16), thread_name_prefix="journal"))
        bed = PodBed(cluster, base_url, mirror, generation, size_dir)
        bed.install_cluster()
        inventory = bed.write_inventory()
        measurements = [measure(bed, pool, "first", inventory)]
        for _ in range(runs):
            for phase in ("floor", "rerun", "dry"):
                measurements.append(measure(bed, pool, phase, inventory))
    # Torn down cleanly (an error in the tear-down propagates and keeps the directory).
    if not mounts_under(size_dir):
        shutil.rmtree(size_dir, ignore_errors=True)
    return SizeResult(nodes, name, measurements)


# --- the report ------------------------------------------------------------------------


def spread(values) -> str:
    values = list(values)
    if not values:
        return "-"
    low, high = min(values), max(values)
    return fmt_number(low) if low == high else f"{fmt_number(low)}–{fmt_number(high)}"


def fmt_number(value) -> str:
    return str(value) if isinstance(value, int) else f"{value:.1f}"


def human_bytes(value: float | None) -> str:
    if value is None:
        return "-"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} B"


def seconds(value: float) -> str:
    return f"{value:.2f} s"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if b else "-"


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines() if line]
    if dirty:
        commit += f" + uncommitted changes to {', '.join(dirty)}"
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": cpu,
        "kernel": platform.release(),
        "commit": commit,
        "python": platform.python_version(),
        "pyinfra": _pyinfra_version(),
    }


def git(*args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
    return proc.stdout.rstrip() if proc.returncode == 0 else ""


def _pyinfra_version() -> str:
    from importlib.metadata import version

    return version("pyinfra")


def table(header: list[str], align: str, rows: list[list[str]]) -> list[str]:
    """A markdown table; `align` has one letter per column: r (right) or l (left)."""
    rule = ["---:" if a == "r" else "---" for a in align]
    return ["| " + " | ".join(row) + " |" for row in (header, rule, *rows)]


PER_HOST_TEXT = (
    "Counted on each node from its sshd journal (sshd runs with LogLevel VERBOSE), read from the host in "
    "the node's mount namespace (no ssh session of our own), for the connections authenticated during "
    "the measured run: SSH connections = \"Accepted publickey\" lines (pyinfra's connect; it opens no "
    "shell or subsystem session for it), exec requests = \"Starting session: command\", SFTP sessions = "
    "\"Starting session: subsystem 'sftp'\", other sessions = any other \"Starting session:\"; time in exec "
    "requests = node-side time from each \"Starting session: command … id N\" to its \"Close session: … id N\", "
    "summed per host (the median over the runs of the mean per host). Counts are "
    "per host over every run of the phase: one number when all hosts and runs agree, else min–max. "
    "Bytes are the median over the runs of the mean per host: \"to node (veth)\" is the tx counter of the "
    "host side of the node's veth (every frame towards the node, TCP/IP headers included); \"to node "
    "(sshd)\" / \"from node (sshd)\" are sshd's own SSH transport byte counts (\"Transferred: sent S, "
    "received R bytes\", encrypted, with SSH/SFTP framing). sftp-server logs no byte counts at its "
    "default log level."
)


def report(results: list[SizeResult], args, info: dict[str, str], started: datetime.datetime,
           elapsed: float, versions: dict[str, str]) -> str:
    reference = next((r for r in results if r.nodes == REFERENCE_SIZE), None)
    lines = [
        "# podnet deploy benchmark (issue #5)",
        "",
        f"- date: {started.strftime('%Y-%m-%d %H:%M %Z').strip()} (whole benchmark: {elapsed:.0f} s)",
        f"- machine: nproc {info['nproc']}, {info['cpu']}, kernel {info['kernel']}",
        f"- commit: {info['commit']}",
        (f"- python {info['python']}, pyinfra {info['pyinfra']}; containerd {args.containerd} "
         f"(containerd {versions['containerd_version']}, runc {versions['runc_version']}, "
         f"CNI plugins {versions['cni_plugins_version']})"),
        (f"- command: `python3 -m bench.run --nodes {','.join(map(str, args.nodes))} --runs {args.runs} "
         f"--containerd {args.containerd}`"),
        "",
        "## Wall time",
        "",
        (f"Medians of {args.runs} runs (the first run: once, on a fresh cluster). Wall time of the pyinfra "
         "CLI process, start to exit."),
        "",
    ]
    rows = []
    for r in results:
        rerun, dry, floor = r.median("rerun"), r.median("dry"), r.median("floor")
        versus = ratio(rerun, reference.median("rerun")) if reference and r is not reference else "-"
        rows.append([str(r.nodes), seconds(r.of("first")[0].seconds), seconds(rerun), seconds(dry), seconds(floor),
                     ratio(rerun, floor), ratio(dry, floor), versus])
    lines += table(["nodes", "first run", "no-op rerun", "`--dry`", "floor (`exec -- true`)", "rerun ÷ floor",
                    "dry ÷ floor", f"rerun ÷ {REFERENCE_SIZE}-node rerun"], "rrrrrrrr", rows)
    lines += ["", "Spread (min–max over the runs), and the first no-op rerun after the first run on its own:", ""]
    rows = [[str(r.nodes), *(f"{min(m.seconds for m in r.of(p)):.2f}–{max(m.seconds for m in r.of(p)):.2f} s"
                             for p in ("rerun", "dry", "floor")), seconds(r.of("rerun")[0].seconds)] for r in results]
    lines += table(["nodes", "no-op rerun", "`--dry`", "floor", "first no-op rerun"], "rrrrr", rows)
    if reference and len(results) > 1:
        lines.append("")
        for r in results:
            if r is not reference:
                lines.append(f"- {r.nodes} vs {REFERENCE_SIZE} nodes: "
                             f"rerun {ratio(r.median('rerun'), reference.median('rerun'))}, "
                             f"dry {ratio(r.median('dry'), reference.median('dry'))}, "
                             f"floor {ratio(r.median('floor'), reference.median('floor'))}")
    lines += ["", "## Per host, counted on the node", "", PER_HOST_TEXT, ""]
    rows = []
    for r in results:
        for phase in PHASES:
            ms = r.of(phase)
            costs = [c for m in ms for c in m.per_node.values()]
            others = sorted({kind for c in costs for kind in c.other_sessions})
            other_cell = spread([len(c.other_sessions) for c in costs]) + (f" ({', '.join(others)})" if others else "")
            exec_seconds, _ = per_host(ms, "exec_seconds")
            rows.append([str(r.nodes), PHASE_TITLES[phase], spread([c.connections for c in costs]),
                         spread([c.commands for c in costs]), f"{exec_seconds:.2f} s",
                         spread([c.sftp for c in costs]), other_cell,
                         per_host_bytes(ms, "veth_to_node"), per_host_bytes(ms, "ssh_received"),
                         per_host_bytes(ms, "ssh_sent")])
    lines += table(["nodes", "phase", "SSH connections", "exec requests", "time in exec requests", "SFTP sessions",
                    "other sessions", "to node (veth)", "to node (sshd)", "from node (sshd)"], "rlrrrrrrrr", rows)
    notes = run_notes(results)
    if notes:
        lines += ["", "## Notes", "", *notes]
    return "\n".join(lines) + "\n"


def per_host(measurements: list[Measurement], attr: str) -> tuple[float | None, bool]:
    """Median over the runs of the mean per host (over the hosts where it is known); and
    whether some host's value was unknown."""
    values, partial = [], False
    for m in measurements:
        known = [getattr(c, attr) for c in m.per_node.values() if getattr(c, attr) is not None]
        partial |= len(known) < len(m.per_node)
        if known:
            values.append(statistics.mean(known))
    return (statistics.median(values) if values else None), partial


def per_host_bytes(measurements: list[Measurement], attr: str) -> str:
    value, partial = per_host(measurements, attr)
    return human_bytes(value) + (" ‡" if partial else "")


def run_notes(results: list[SizeResult]) -> list[str]:
    """Anything that makes a number suspect: a rerun that changed something, unclosed connections."""
    notes = []
    for r in results:
        for m in r.measurements:
            if m.phase in ("rerun", "dry") and m.changed:
                notes.append(f"- {r.nodes} nodes: a {m.phase} was NOT a no-op: {m.changed}")
            reset = sum(c.reset for c in m.per_node.values())
            if reset:
                notes.append(f"- ‡ {r.nodes} nodes, {m.phase}: pyinfra ended {reset} connection(s) with a TCP reset "
                             "instead of closing it; sshd then logs no byte counts (\"Read error from remote host … "
                             "Connection reset by peer\"), so the sshd columns average over the other hosts; the veth "
                             "column counts every host")
            unclosed = sum(c.unclosed for c in m.per_node.values())
            if unclosed:
                notes.append(f"- {r.nodes} nodes, {m.phase}: {unclosed} connection(s) had not logged their close "
                             f"within {JOURNAL_SETTLE_TIMEOUT:.0f} s; their bytes are missing")
        reruns = r.of("rerun")
        if len(reruns) > 1 and reruns[0].seconds > 1.5 * statistics.median(m.seconds for m in reruns[1:]):
            exec_first = statistics.mean(c.exec_seconds for c in reruns[0].per_node.values())
            exec_rest = statistics.median(statistics.mean(c.exec_seconds for c in m.per_node.values())
                                          for m in reruns[1:])
            notes.append(f"- {r.nodes} nodes: the first no-op rerun took {reruns[0].seconds:.2f} s "
                         f"({exec_first:.2f} s in exec requests per host), the later ones "
                         f"{statistics.median(m.seconds for m in reruns[1:]):.2f} s ({exec_rest:.2f} s): "
                         "the first rerun pays for something the later ones reuse")
        first = r.of("first")[0]
        if not first.changed:
            notes.append(f"- {r.nodes} nodes: the first run changed nothing (were the nodes fresh?)")
        for m in r.of("first"):
            commands = {name: c.commands for name, c in m.per_node.items()}
            if len(set(commands.values())) > 1:
                notes.append(f"- {r.nodes} nodes, first run: exec requests per host differ (the first host is the "
                             f"control plane): {', '.join(f'{n} {c}' for n, c in commands.items())}")
    return notes


# --- main ------------------------------------------------------------------------------


def drop_downloads(workdir: Path) -> None:
    """After a failure: keep the logs and inventories, not the artifact caches (hundreds of MB)."""
    if not mounts_under(workdir):
        for downloads in workdir.glob("*/downloads"):
            shutil.rmtree(downloads, ignore_errors=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python3 -m bench.run", description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("--nodes", default="1,3,12",
                        help="comma-separated cluster sizes, each benchmarked on its own fresh cluster "
                             "(default 1,3,12; e.g. 1,3 for a quick run)")
    parser.add_argument("--runs", type=int, default=5, help="runs per measured phase; medians are reported (default 5)")
    parser.add_argument("--containerd", choices=["1.x", "2.x"], default="2.x", help="containerd generation (default 2.x)")
    parser.add_argument("--output", type=Path, default=RESULTS_FILE, help=f"markdown report (default {RESULTS_FILE})")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where cluster state, inventories and pyinfra logs go (default: a new /tmp/podnet-bench-*)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    try:
        args.nodes = [int(n) for n in args.nodes.split(",") if n.strip()]
    except ValueError:
        parser.error(f"--nodes must be comma-separated integers, not {args.nodes!r}")
    if not args.nodes or any(not 1 <= n <= MAX_NODES for n in args.nodes) or len(set(args.nodes)) != len(args.nodes):
        parser.error(f"--nodes must be distinct sizes in 1..{MAX_NODES}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    if os.geteuid() != 0:
        print("bench: booting local nodes needs root", file=sys.stderr)
        return 2

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt  # unwinds like Ctrl-C: every cluster is torn down

    signal.signal(signal.SIGTERM, on_sigterm)
    started = datetime.datetime.now().astimezone()
    clock = time.monotonic()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="podnet-bench-"))
    workdir = workdir.absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    log.info("work directory %s", workdir)
    info = machine()
    mirror = build_mirror()
    results: list[SizeResult] = []
    try:
        with serve_mirror(mirror.root) as base_url:
            versions = mirror.inventory_data(base_url, containerd_generation=args.containerd)
            for nodes in args.nodes:
                results.append(bench_size(nodes, args.runs, mirror, base_url, args.containerd, workdir))
    except KeyboardInterrupt:
        drop_downloads(workdir)
        print(f"bench: interrupted; clusters torn down; pyinfra logs kept in {workdir}", file=sys.stderr)
        return 130
    except ClusterError as error:  # booting or tearing down a cluster failed
        left = sorted(str(d) for d in workdir.glob("*/cluster"))
        print(f"bench: {error}\nbench: state kept in {workdir}" + "".join(
            f"\nbench: tear down with: python3 -m testbed.localcluster down --state-dir {d}" for d in left),
            file=sys.stderr)
        return 1
    except BenchError as error:
        drop_downloads(workdir)
        print(f"bench: {error}\nbench: clusters torn down; pyinfra logs kept in {workdir}", file=sys.stderr)
        return 1
    text = report(results, args, info, started, time.monotonic() - clock, versions)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)
    log.info("report written to %s", args.output)
    if args.workdir is None and not mounts_under(workdir):
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
