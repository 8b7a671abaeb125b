"""
The deploy benchmark of issues #5 and #21: `python3 -m bench.run [--nodes 1,3,12] [--runs 5]
[--modes upload,mirror] [--bootstrap 3] [--shape-mbit 100]`.

Each measured cluster is booted fresh (testbed.localcluster, one at a time, torn down before
the next and on any failure or Ctrl-C), with the test mirror on the nodes' network
(testbed.mirror.site: a namespace of its own on the cluster's bridge, not shaped) and the
laptop's link to the nodes shaped and counted per node (testbed.localcluster.shaping: an HTB
tree on the host's side).
For every size and every mode (upload: the laptop sends the release archives; mirror: the
nodes fetch them from mirror_url) a cluster with Kubernetes but no pod network
(testbed.podbed, testbed.kubebed) is measured with the real pyinfra CLI:

- the first run of deploy.py (once), and the time until one pod on every node has an IP;
- in the first mode only, --runs rounds of the floor (`pyinfra -y INV exec -- true` on the same
  nodes), the no-op rerun and `--dry`, interleaved so that drift hits all three alike;

then, for each --bootstrap size and mode, the first run from fresh machines
(`cluster_bootstrap`, testbed.bootbed). Wall time is taken around the pyinfra subprocess.

What each run costs on a node is read on the node's side, without an ssh session of our
own: sshd runs with LogLevel VERBOSE, and its journal is read from the host in the node's
mount namespace (`nsenter -t <node PID 1> -m -- journalctl -t sshd ...`) after a cursor
taken just before the run. Counted per host: authenticated connections ("Accepted
publickey"), exec requests ("Starting session: command"), SFTP sessions ("Starting
session: subsystem 'sftp'"), any other session ("Starting session: shell", ...), the
node-side time of the exec requests (from "Starting session: command ... id N" to
"Close session: ... id N"), and the bytes sshd received from / sent to the client ("Transferred: sent S, received R bytes",
logged when the connection closes; SSH transport bytes, encrypted, without TCP/IP): what the
laptop sent. What the mirror sent each node comes from the mirror's own log; the host side of
each veth (node's and mirror's) and the bridge device's tx count every frame.
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

from bench.probe_parts import probe_time_by_part
from testbed.bootbed import BootBed
from testbed.kubebed.cluster import KubeBedError
from testbed.localcluster import Cluster, ClusterError, Node
from testbed.localcluster.limits import inotify_instances_in_use
from testbed.localcluster.mounts import mounts_under
from testbed.localcluster.net import MAX_NODES
from testbed.localcluster.shaping import ShapedLink, shaped_link
from testbed.mirror import build_mirror
from testbed.mirror.site import MirrorSite, MirrorSiteError
from testbed.podbed import DEPLOY_TIMEOUT, POD_TIMEOUT, REPO, DeployRun, PodBed, parse_results

RESULTS_FILE = REPO / "bench" / "results-latest.md"
PHASES = ("first", "rerun", "dry", "floor")
PHASE_TITLES = {"first": "first run", "rerun": "no-op rerun", "dry": "`--dry`", "floor": "floor (`exec -- true`)"}
REFERENCE_SIZE = 3  # reruns of every size are also compared with the 3-node rerun
JOURNAL_SETTLE_TIMEOUT = 20.0  # how long to wait for sshd's closing lines to reach the journal
# The first run's pods, one per node, get POD_TIMEOUT and this much more per node: at 12 nodes this 2-core
# machine is far past its cores' load (12 kubelets, containerds and flanneld pods starting at once), and a pod
# there was seen still without an IP after 114 s (2 s a node).
POD_SECONDS_PER_NODE = 10

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
    mirror_bytes: int = 0  # file bodies the mirror sent to this node (the mirror's own log)
    laptop_frames: int | None = None  # every frame the host sent this node (its class on the shaped bridge)
    mirror_requests: int = 0  # requests of this node the mirror answered


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
    cost.veth_to_node, cost.veth_from_node = veth_since(node, before)
    return cost


def veth_since(node: Node, before: Mark) -> tuple[int | None, int | None]:
    """Bytes (every frame, TCP/IP headers included) the host side of the node's veth sent towards the node and
    received from it since ``before``: read at once, no waiting for sshd's journal; (None, None) unknown."""
    after = veth_counters(node)
    if not (before.veth and after):
        return None, None
    return after[0] - before.veth[0], after[1] - before.veth[1]


# --- one measured pyinfra run ----------------------------------------------------------


@dataclass
class Measurement:
    phase: str
    seconds: float
    changed: dict[str, int]  # operation -> hosts changed (pyinfra's Results table)
    per_node: dict[str, NodeCost]
    laptop_to_bridge: int | None = None  # host's bridge device tx: every frame the laptop sent to nodes and mirror
    mirror_to_laptop: int = 0  # bytes of file bodies the mirror sent to the laptop
    mirror_veth: int | None = None  # host-side rx of the mirror's veth: every frame the mirror sent
    failed_requests: list[str] = field(default_factory=list)  # mirror answers other than 200
    pods_seconds: float | None = None  # first runs: after the run, until every node's pod had an IP


def run_floor(bed: PodBed, inventory: Path) -> DeployRun:
    """The cheapest pyinfra run on the same nodes: connect, run `true`, disconnect."""
    command = [sys.executable, "-m", "pyinfra", "-y", str(inventory), "exec", "--", "true"]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=DEPLOY_TIMEOUT, check=False)
    output = proc.stdout + proc.stderr
    (bed.workdir / "last-floor.log").write_text(output)
    return DeployRun(proc.returncode, output, parse_results(output))


def bridge_tx(bridge: str) -> int:
    """Bytes the host sent into the bridge (its own traffic to the nodes and the mirror, not bridged frames)."""
    return int((Path("/sys/class/net") / bridge / "statistics" / "tx_bytes").read_text())


def measure(bed: PodBed, pool: ThreadPoolExecutor, phase: str, inventory: Path,
            site: MirrorSite | None = None, link: ShapedLink | None = None) -> Measurement:
    nodes = bed.members
    before = list(pool.map(mark, nodes))
    site_before = site.mark() if site else None
    link_before = link.counters() if link else None
    bridge_before = bridge_tx(bed.cluster.bridge)
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
    measurement = Measurement(phase, seconds, run.changed_operations(), dict(zip((n.name for n in nodes), costs)),
                              laptop_to_bridge=bridge_tx(bed.cluster.bridge) - bridge_before)
    if link and link_before is not None:
        sent = link.since(link_before)
        for node, cost in zip(nodes, costs):
            cost.laptop_frames = sent.get(node.ip)
    if site and site_before:
        counts = site.since(site_before)
        for node, cost in zip(nodes, costs):
            cost.mirror_bytes = counts.body_bytes.get(node.ip, 0)
            cost.mirror_requests = counts.requests.get(node.ip, 0)
        measurement.mirror_to_laptop = counts.body_bytes.get(str(bed.cluster.subnet.network_address + 1), 0)
        measurement.mirror_veth = counts.veth_from_mirror
        measurement.failed_requests = counts.failed
    log.info("%s %-5s %7.2fs  per host: %s", bed.cluster.name, phase, seconds, per_host_summary(measurement))
    return measurement


def per_host_summary(m: Measurement) -> str:
    costs = list(m.per_node.values())
    return (f"conn {spread([c.connections for c in costs])}, exec {spread([c.commands for c in costs])} "
            f"({statistics.mean(c.exec_seconds for c in costs):.2f}s), "
            f"sftp {spread([c.sftp for c in costs])}, from laptop {human_bytes(mean_known(c.laptop_frames for c in costs))}, "
            f"from mirror {human_bytes(statistics.mean(c.mirror_bytes for c in costs))}")


def pods_with_ips(bed: PodBed, timeout: float) -> float:
    """One pod bound to each node (the pause image), all created at once; seconds until every
    one runs with an IP (bounded by ``timeout``)."""
    start = time.perf_counter()
    items = [{"apiVersion": "v1", "kind": "Pod",
              "metadata": {"name": f"bench-{node.name}", "namespace": "default", "labels": {"app": "bench"}},
              "spec": {"nodeName": node.name, "terminationGracePeriodSeconds": 0,
                       "containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10"}]}}
             for node in bed.members]
    bed.kubectl("apply -f -", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    deadline = start + timeout
    waiting: dict[str, str] = {}
    while time.perf_counter() < deadline:
        pods = {p["spec"]["nodeName"]: p for p in json.loads(bed.kubectl("get pods -l app=bench -o json"))["items"]}
        waiting = {node.name: pod_state(pods.get(node.name)) for node in bed.members
                   if not (node.name in pods and pods[node.name]["status"].get("phase") == "Running"
                           and pods[node.name]["status"].get("podIP"))}
        if not waiting:
            return time.perf_counter() - start
        time.sleep(0.5)
    events = bed.kubectl("get events -n default --field-selector involvedObject.kind=Pod -o jsonpath="
                         "'{range .items[*]}{.involvedObject.name}{\": \"}{.reason}{\": \"}{.message}{\"\\n\"}{end}'",
                         check=False)
    said = [line for line in events.splitlines() if any(f"bench-{name}:" in line for name in waiting)][-5:]
    raise BenchError(f"{bed.cluster.name}: pods without an IP after {timeout:.0f} s on "
                     + ", ".join(f"{name} ({state})" for name, state in waiting.items())
                     + (f"; their last events: {' | '.join(said)}" if said else ""))


def pod_state(pod: dict | None) -> str:
    """A pod's phase and, for a container not running, why (kubectl's STATUS column, in short)."""
    if pod is None:
        return "no pod"
    status = pod.get("status", {})
    reasons = [c["state"]["waiting"].get("reason", "waiting") for c in status.get("containerStatuses", [])
               if "waiting" in c.get("state", {})]
    return "/".join([status.get("phase", "unknown"), *reasons])


# --- one cluster ----------------------------------------------------------------------

# The two ways release files reach the nodes (issue #21): the setting that selects each (upload: the default).
MODES = {"upload": None, "mirror": ("release_download", "nodes")}
BEDS = ("kube", "bootstrap")  # an existing cluster without pod network (testbed.kubebed), or fresh machines


def mode_overrides(mode: str) -> dict:
    """The inventory setting that selects ``mode`` (none for upload, podnet's default); BenchError if this
    checkout has no such setting."""
    from tasks.settings import Settings

    if MODES[mode] is None:
        return {}
    name, value = MODES[mode]
    if name not in Settings.__dataclass_fields__:
        raise BenchError(f"this checkout has no setting {name!r}: the {mode} mode cannot be measured")
    return {name: value}


@dataclass
class HostSample:
    """The host's state at one moment: what a larger cluster would run out of."""

    mem_available: int  # bytes (MemAvailable)
    tasks: int  # threads of every process (each takes a PID; kernel.pid_max bounds them)
    load1: float  # 1-minute load average (2 cores here)
    inotify: int  # inotify instances in use (root's one limit, fs.inotify.max_user_instances)


def host_sample() -> HostSample:
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    tasks = sum(1 for entry in Path("/proc").iterdir() if entry.name.isdigit()
                for _ in _tasks_of(entry))
    return HostSample(int(meminfo["MemAvailable"].split()[0]) * 1024, tasks,
                      float(Path("/proc/loadavg").read_text().split()[0]), inotify_instances_in_use())


def _tasks_of(proc_entry: Path) -> list[str]:
    try:
        return os.listdir(proc_entry / "task")
    except OSError:  # the process ended meanwhile
        return []


@dataclass
class SizeResult:
    nodes: int
    cluster: str
    measurements: list[Measurement]
    mode: str = "upload"
    bed: str = "kube"
    setup_seconds: float | None = None  # boot, mirror site and the cluster's install, before the first run
    samples: dict[str, HostSample] = field(default_factory=dict)  # "before", "installed", "after first run"
    # node -> the probe's node-side time by part (bench/probe_parts.py), on the first two nodes after the rounds
    probe_parts: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    def of(self, phase: str) -> list[Measurement]:
        return [m for m in self.measurements if m.phase == phase]

    def median(self, phase: str) -> float:
        return statistics.median(m.seconds for m in self.of(phase))

    @property
    def label(self) -> str:
        return f"{self.nodes} ({self.mode}{', fresh machines' if self.bed == 'bootstrap' else ''})"


def cluster_name(prefix: str, nodes: int, bed: str, mode: str) -> str:
    """Distinct per size, bed and mode (also the bridge name, br-<name>): bench12, bench12m, benchb3, benchb3m."""
    return f"{prefix}{'b' if bed == 'bootstrap' else ''}{nodes}{'m' if mode == 'mirror' else ''}"


def site_address(cluster: Cluster) -> str:
    """The mirror site's address: the bed's subnet's last host address (nodes count up from .11)."""
    subnet = cluster.subnet
    return f"{subnet.broadcast_address - 1}/{subnet.prefixlen}"


def bench_cluster(nodes: int, runs: int, mode: str, bed_kind: str, mirror, generation: str, workdir: Path,
                  shape_mbit: int, prefix: str) -> SizeResult:
    """Boot a fresh cluster, place the mirror on its network, shape the laptop's link, measure the
    first run (and, with ``runs``, rounds of floor / no-op rerun / --dry); tear everything down."""
    name = cluster_name(prefix, nodes, bed_kind, mode)
    size_dir = workdir / name
    overrides = mode_overrides(mode)
    previous_sigint = signal.getsignal(signal.SIGINT)
    samples = {"before": host_sample()}
    setup_start = time.monotonic()
    with contextlib.ExitStack() as stack:
        stack.callback(signal.signal, signal.SIGINT, previous_sigint)
        log.info("%s: booting %d node(s) (state in %s)", name, nodes, size_dir / "cluster")
        cluster = stack.enter_context(Cluster(name=name, nodes=nodes, state_dir=size_dir / "cluster"))
        # Leaving the block tears the cluster down (on success, error or Ctrl-C); a second
        # Ctrl-C must not cut that tear-down short.
        stack.callback(signal.signal, signal.SIGINT, signal.SIG_IGN)
        site = stack.enter_context(MirrorSite(mirror.root, cluster.bridge, site_address(cluster),
                                              size_dir / "mirror-site.log"))
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=min(nodes, 16), thread_name_prefix="journal"))
        if bed_kind == "bootstrap":
            bed = BootBed(cluster, site.base_url, mirror, size_dir, members=nodes, control_planes=1)
            bed.prepare_nodes()
            inventory = bed.write_inventory(**overrides)
        else:
            bed = PodBed(cluster, site.base_url, mirror, generation, size_dir)
            bed.install_cluster()
            # flannel_rollout_timeout: what the bootstrap bed allows; on this shared 2-core machine a kube-flannel
            # pod was seen taking over 120 s to start under load (the wait ends as soon as the pods are Ready)
            inventory = bed.write_inventory(**overrides, flannel_rollout_timeout=300)
        bed.give_nodes_wget()  # in both modes alike: what a node needs to download (an operator's image has it)
        setup_seconds = time.monotonic() - setup_start
        samples["installed"] = host_sample()
        log.info("%s: ready for the first run after %.0f s: %s", name, setup_seconds, samples["installed"])
        link = stack.enter_context(shaped_link(cluster.bridge, shape_mbit, [n.ip for n in bed.members]))
        first = measure(bed, pool, "first", inventory, site, link)
        first.pods_seconds = pods_with_ips(bed, POD_TIMEOUT + POD_SECONDS_PER_NODE * nodes)
        log.info("%s: every node's pod has an IP %.1f s after the first run", name, first.pods_seconds)
        samples["after first run"] = host_sample()
        measurements = [first]
        for _ in range(runs):
            for phase in ("floor", "rerun", "dry"):
                measurements.append(measure(bed, pool, phase, inventory, site, link))
        probe_parts = time_probe_parts(bed) if runs else {}
    # Torn down cleanly (an error in the tear-down propagates and keeps the directory).
    if not mounts_under(size_dir):
        shutil.rmtree(size_dir, ignore_errors=True)
    return SizeResult(nodes, name, measurements, mode, bed_kind, setup_seconds, samples, probe_parts)


def time_probe_parts(bed: PodBed) -> dict[str, dict[str, dict[str, float]]]:
    """One more no-op rerun with pyinfra's --debug (which shows each host's probe), then each part of that probe
    timed on the first control-plane host and on one worker (bench/probe_parts.py)."""
    run = bed.deploy("--debug")
    if run.returncode != 0 or run.changed_operations():
        raise BenchError(f"{bed.cluster.name}: the --debug rerun failed or changed something (exit "
                         f"{run.returncode}, changed {run.changed_operations()})")
    return {node.name: probe_time_by_part(bed, run.output, node) for node in bed.members[:2]}


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


def mean_known(values) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.mean(known) if known else None


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a is not None and b else "-"


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
        "memory": f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
        "commit": commit,
        "python": platform.python_version(),
        "pyinfra": _pyinfra_version(),
    }


def bytecode_as_on_a_laptop() -> str:
    """The measured runs cache podnet's bytecode as they do on an operator's laptop: podnet puts Python's own
    setting back under pyinfra's CLI (tasks/__init__.py), so the first run compiles its modules into __pycache__
    and later runs read them. PYTHONDONTWRITEBYTECODE (set on some machines, this one's test environment among
    them, and rare on a laptop) is taken out of this process's environment, which every measured pyinfra run
    inherits; without that every run would compile them again (about 70 ms here). `exec -- true` (the floor)
    runs pyinfra's own modules, which pip compiled. Returns the line the results show."""
    was = os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    return ("podnet's modules compiled by the first run into __pycache__ and read from there by the later ones"
            + (f"; PYTHONDONTWRITEBYTECODE={was!r} taken out of the runs' environment" if was is not None else ""))


def git(*args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
    return proc.stdout.rstrip() if proc.returncode == 0 else ""


def _pyinfra_version() -> str:
    from importlib.metadata import version

    return version("pyinfra")


def probe_parts_section(results: list[SizeResult]) -> list[str]:
    """Where the probe's node-side time goes, per part, on the nodes bench/probe_parts.py timed."""
    timed = [(r, node, parts) for r in results for node, parts in r.probe_parts.items()]
    if not timed:
        return []
    lines = ["", "### Where the probe's node-side time goes", "",
             ("The probe of one more no-op rerun (taken from `pyinfra --debug`), run again on the node with a "
              "timestamp between its parts (bench/probe_parts.py); medians of 9, in ms. *without kubectl*: the same "
              "with every `kubectl` replaced by `true`. The queries run in the background from the second part on, "
              "so their cost shows up in the parts beside them (competing for the node's cores) and in the wait "
              "for them. *alone*: each kubectl query run by itself."), ""]
    names = list(dict.fromkeys(name for _, _, parts in timed for name in parts["probe"]))
    header = ["part", *(f"{r.label} {node}" for r, node, _ in timed),
              *(f"{node} without kubectl" for _, node, _ in timed)]
    rows = [[name, *(f"{parts['probe'].get(name, 0):.1f}" for _, _, parts in timed),
             *(f"{parts['probe, kubectl replaced by true'].get(name, 0):.1f}" for _, _, parts in timed)]
            for name in names]
    queries = list(dict.fromkeys(q for _, _, parts in timed for q in parts["kubectl alone"]))
    rows += [[f"kubectl query {q}, alone", *(f"{parts['kubectl alone'][q]:.1f}" if q in parts["kubectl alone"]
                                             else "-" for _, _, parts in timed), *("" for _ in timed)]
             for q in queries]
    return lines + table(header, "l" + "r" * (len(header) - 1), rows)


def table(header: list[str], align: str, rows: list[list[str]]) -> list[str]:
    """A markdown table; `align` has one letter per column: r (right) or l (left)."""
    rule = ["---:" if a == "r" else "---" for a in align]
    return ["| " + " | ".join(row) + " |" for row in (header, rule, *rows)]


# --- what the first run cost, and the targets of issue #21 ---------------------------------

UPLOAD_FACTOR = 1.1  # upload mode: laptop bytes per node <= 1.1 x the compressed archives the node needs
MIRROR_LAPTOP_BYTES = 100e3  # mirror mode: laptop bytes per node <= 100 kB
MIRROR_SCALING = 1.5  # mirror mode: 12-node first run wall time <= 1.5 x the 1-node one
NOOP_FACTOR = 1.3  # no-op rerun <= 1.3 x the floor


def laptop_per_node(m: Measurement) -> float | None:
    """Mean over the nodes of the bytes the laptop sent each: every frame, counted on the shaped link
    (sshd's count of SSH bytes where the link was not counted)."""
    costs = m.per_node.values()
    if all(c.laptop_frames is not None for c in costs):
        return statistics.mean(c.laptop_frames for c in costs)
    return mean_known(c.ssh_received for c in costs)


def archives_needed(r: SizeResult, results: list[SizeResult]) -> float | None:
    """The compressed release files a node needs, as fetched from the mirror in a first run: what each
    node fetched itself in mirror mode (mean per node), for an upload run the same from the mirror run
    on the same kind of cluster (every node of these beds needs the same set, whatever the size); None
    without one (the laptop's own download is no measure: it fetches every release file, also those
    the nodes already have)."""
    def fetched(m: SizeResult) -> float:
        return statistics.mean(c.mirror_bytes for c in m.of("first")[0].per_node.values())

    if r.mode == "mirror":
        return fetched(r)
    same = sorted((m for m in results if m.mode == "mirror" and m.bed == r.bed), key=lambda m: m.nodes != r.nodes)
    return fetched(same[0]) if same else None


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "**missed**")


def target_rows(results: list[SizeResult]) -> list[list[str]]:
    rows = []
    for r in results:
        first = r.of("first")[0]
        laptop, needed = laptop_per_node(first), archives_needed(r, results)
        if r.mode == "upload":
            ok = None if laptop is None or needed is None else laptop <= UPLOAD_FACTOR * needed
            rows.append([f"upload, {r.label}: laptop bytes per node ≤ {UPLOAD_FACTOR} × archives the node needs",
                         f"{human_bytes(laptop)} vs {human_bytes(needed)} ({ratio(laptop, needed)})", verdict(ok)])
        else:
            ok = None if laptop is None else laptop <= MIRROR_LAPTOP_BYTES
            rows.append([f"mirror, {r.label}: laptop bytes per node ≤ {human_bytes(MIRROR_LAPTOP_BYTES)}",
                         human_bytes(laptop), verdict(ok)])
    for bed in BEDS:
        mirror_runs = {r.nodes: r for r in results if r.mode == "mirror" and r.bed == bed}
        if 1 in mirror_runs and len(mirror_runs) > 1:
            base = mirror_runs[1].of("first")[0].seconds
            for nodes, r in sorted(mirror_runs.items()):
                if nodes > 1:
                    wall = r.of("first")[0].seconds
                    rows.append([f"mirror, {r.label}: first-run wall time ≤ {MIRROR_SCALING} × the 1-node one",
                                 f"{wall:.1f} s vs {base:.1f} s ({ratio(wall, base)})",
                                 verdict(wall <= MIRROR_SCALING * base)])
    for r in results:
        if r.of("rerun"):
            rerun, floor = r.median("rerun"), r.median("floor")
            rows.append([f"no-op rerun, {r.label}: ≤ {NOOP_FACTOR} × floor, one command per host, no transfer",
                         f"{rerun:.2f} s vs {floor:.2f} s ({ratio(rerun, floor)}); "
                         f"commands per host {spread([c.commands for m in r.of('rerun') for c in m.per_node.values()])}, "
                         f"SFTP {spread([c.sftp for m in r.of('rerun') for c in m.per_node.values()])}",
                         verdict(rerun <= NOOP_FACTOR * floor and noop_is_one_command(r))])
    return rows


def noop_is_one_command(r: SizeResult) -> bool:
    costs = [c for m in r.of("rerun") for c in m.per_node.values()]
    return all(c.commands == 1 and c.sftp == 0 and c.mirror_requests == 0 for c in costs)


def first_run_rows(results: list[SizeResult]) -> list[list[str]]:
    rows = []
    for r in results:
        m = r.of("first")[0]
        costs = m.per_node.values()
        partial = any(c.ssh_received is None for c in costs)
        rows.append([str(r.nodes), "fresh machines (`cluster_bootstrap`)" if r.bed == "bootstrap" else "Kubernetes, no pod network",
                     r.mode, seconds(m.seconds), seconds(m.seconds + m.pods_seconds if m.pods_seconds is not None else None),
                     human_bytes(mean_known(c.laptop_frames for c in costs)),
                     human_bytes(mean_known(c.ssh_received for c in costs)) + (" ‡" if partial else ""),
                     human_bytes(m.laptop_to_bridge), human_bytes(statistics.mean(c.mirror_bytes for c in costs)),
                     human_bytes(sum(c.mirror_bytes for c in costs)), human_bytes(m.mirror_veth),
                     human_bytes(m.mirror_to_laptop), human_bytes(archives_needed(r, results))])
    return rows


def report(results: list[SizeResult], args, info: dict[str, str], started: datetime.datetime,
           elapsed: float, versions: dict[str, str], failures: list[str] | None = None) -> str:
    shape = f"{args.shape_mbit} Mbit/s" if args.shape_mbit else "not shaped"
    lines = [
        "# podnet deploy benchmark (issues #5, #21)",
        "",
        f"- date: {started.strftime('%Y-%m-%d %H:%M %Z').strip()} (whole benchmark: {elapsed:.0f} s)",
        f"- machine: nproc {info['nproc']}, {info['cpu']}, {info['memory']}, kernel {info['kernel']}",
        f"- commit: {info['commit']}",
        (f"- python {info['python']}, pyinfra {info['pyinfra']}; containerd {args.containerd} "
         f"(containerd {versions['containerd_version']}, runc {versions['runc_version']}, "
         f"CNI plugins {versions['cni_plugins_version']})"),
        f"- command: `python3 -m bench.run {args.command_line}`",
        *([f"- bytecode: {info['bytecode']}"] if info.get("bytecode") else []),
        (f"- the laptop's link to the nodes: {shape} (tc htb on the host's side of the test network); the "
         "mirror: on the nodes' network (a namespace of its own on the test bridge), not shaped"),
        "",
        "## Targets (issue #21)",
        "",
    ]
    lines += table(["target", "measured", ""], "lll", target_rows(results))
    lines += ["", "## First run", "",
              ("Once per cluster, on fresh nodes; the laptop's download cache empty too. *Kubernetes, no pod network*: "
               "a running cluster whose nodes already have containerd (testbed.kubebed); *fresh machines*: no "
               "Kubernetes at all, podnet creates the cluster with kubeadm (`cluster_bootstrap`, testbed.bootbed). "
               "*until pods have IPs*: from the start of the run until one pod on every node runs with an IP. "
               "Laptop bytes: per node, every frame the laptop sent the node (its class on the shaped link, TCP/IP "
               "headers included; what the targets are judged on), and sshd's count of the SSH bytes it received; "
               "in total, the host's bridge device tx (every frame the laptop sent to the nodes and the mirror). "
               "Mirror bytes: the bodies the mirror sent, from its own log per client; and its "
               "veth's count of every frame it sent (to nodes and laptop). *archives needed*: the compressed "
               "release files one node needs, as each node fetched them in the mirror-mode run on the same kind of "
               "cluster (mean per node; in mirror mode, this run)."),
              ""]
    lines += table(["nodes", "cluster before the run", "mode", "first run", "until pods have IPs",
                    "laptop → node, per node", "(sshd)", "laptop → all, total", "mirror → node, per node",
                    "mirror → nodes, total", "mirror veth, total", "mirror → laptop", "archives needed"],
                   "rllrrrrrrrrrr", first_run_rows(results))
    noop = [r for r in results if r.of("rerun")]
    reference = next((r for r in noop if r.nodes == REFERENCE_SIZE), None)
    if noop:
        lines += ["", "## No-op rerun and `--dry` against the floor", "",
                  (f"Medians of {'/'.join(str(n) for n in sorted({len(r.of('rerun')) for r in noop}))} rounds, interleaved (floor, rerun, `--dry`) on the same converged nodes; "
                   "wall time of the pyinfra CLI process, start to exit. *time in exec requests*: node-side time of "
                   "the run's remote commands (the probe), mean per host, median over the rounds."),
                  ""]
        rows = []
        for r in noop:
            rerun, dry, floor = r.median("rerun"), r.median("dry"), r.median("floor")
            versus = ratio(rerun, reference.median("rerun")) if reference and r is not reference else "-"
            exec_seconds, _ = per_host(r.of("rerun"), "exec_seconds")
            rows.append([r.label, seconds(rerun), seconds(dry), seconds(floor), ratio(rerun, floor), ratio(dry, floor),
                         seconds(exec_seconds), versus])
        lines += table(["nodes", "no-op rerun", "`--dry`", "floor (`exec -- true`)", "rerun ÷ floor", "dry ÷ floor",
                        "time in exec requests", f"rerun ÷ {REFERENCE_SIZE}-node rerun"], "lrrrrrrr", rows)
        lines += ["", "Spread (min–max over the rounds), and the first no-op rerun after the first run on its own:", ""]
        rows = [[r.label, *(f"{min(m.seconds for m in r.of(p)):.2f}–{max(m.seconds for m in r.of(p)):.2f} s"
                            for p in ("rerun", "dry", "floor")), seconds(r.of("rerun")[0].seconds)] for r in noop]
        lines += table(["nodes", "no-op rerun", "`--dry`", "floor", "first no-op rerun"], "lrrrr", rows)
        lines += probe_parts_section(noop)
    lines += ["", "## The machine while measuring", "",
              ("What a larger cluster would run out of: the host's available memory, its threads (each takes a PID), "
               "the 1-minute load average and root's inotify instances, before the cluster was booted, once it "
               "was installed, and after its first run (other users of this shared machine count too). *setup*: "
               "booting the nodes and installing the cluster before podnet runs."),
              ""]
    rows = []
    for r in results:
        before = r.samples.get("before")
        cells = [r.label, seconds(r.setup_seconds)]
        for key in ("installed", "after first run"):
            sample = r.samples.get(key)
            if sample is None or before is None:
                cells += ["-"] * 4
                continue
            cells += [f"{human_bytes(sample.mem_available)} ({human_bytes(before.mem_available - sample.mem_available)} "
                      "used)", f"{sample.tasks} (+{sample.tasks - before.tasks})", f"{sample.load1:.1f}",
                      str(sample.inotify)]
        rows.append(cells)
    lines += table(["nodes", "setup", "installed: memory available", "threads", "load", "inotify",
                    "after first run: memory available", "threads", "load", "inotify"], "lrrrrrrrrr", rows)
    lines += ["", "## Per host, counted on the node", "", PER_HOST_TEXT, ""]
    rows = []
    for r in results:
        for phase in PHASES:
            ms = r.of(phase)
            if not ms:
                continue
            costs = [c for m in ms for c in m.per_node.values()]
            others = sorted({kind for c in costs for kind in c.other_sessions})
            other_cell = spread([len(c.other_sessions) for c in costs]) + (f" ({', '.join(others)})" if others else "")
            exec_seconds, _ = per_host(ms, "exec_seconds")
            rows.append([r.label, PHASE_TITLES[phase], spread([c.connections for c in costs]),
                         spread([c.commands for c in costs]), f"{exec_seconds:.2f} s",
                         spread([c.sftp for c in costs]), other_cell,
                         per_host_bytes(ms, "veth_to_node"), per_host_bytes(ms, "ssh_received"),
                         per_host_bytes(ms, "ssh_sent"), per_host_bytes(ms, "mirror_bytes")])
    lines += table(["nodes", "phase", "SSH connections", "exec requests", "time in exec requests", "SFTP sessions",
                    "other sessions", "to node (veth)", "to node (sshd)", "from node (sshd)", "mirror → node"],
                   "llrrrrrrrrr", rows)
    if failures:
        lines += ["", "## Clusters that failed", "", *(f"- {failure}" for failure in failures)]
    notes = run_notes(results)
    if notes:
        lines += ["", "## Notes", "", *notes]
    return "\n".join(lines) + "\n"


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
    "host side of the node's veth (every frame towards the node from the laptop AND the mirror, TCP/IP headers "
    "included); \"to node (sshd)\" / \"from node (sshd)\" are sshd's own SSH transport byte counts "
    "(\"Transferred: sent S, received R bytes\", encrypted, with SSH/SFTP framing): what the laptop sent; "
    "\"mirror → node\" is the bodies the mirror sent to that node (its own log)."
)


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
                notes.append(f"- {r.label}: a {m.phase} was NOT a no-op: {m.changed}")
            if m.failed_requests:
                notes.append(f"- {r.label}, {m.phase}: the mirror answered {len(m.failed_requests)} request(s) with "
                             f"another status than 200: {', '.join(m.failed_requests[:5])}")
            reset = sum(c.reset for c in m.per_node.values())
            if reset:
                notes.append(f"- ‡ {r.label}, {m.phase}: pyinfra ended {reset} connection(s) with a TCP reset "
                             "instead of closing it; sshd then logs no byte counts (\"Read error from remote host … "
                             "Connection reset by peer\"), so the sshd columns average over the other hosts; the veth "
                             "and bridge columns count every host")
            unclosed = sum(c.unclosed for c in m.per_node.values())
            if unclosed:
                notes.append(f"- {r.label}, {m.phase}: {unclosed} connection(s) had not logged their close "
                             f"within {JOURNAL_SETTLE_TIMEOUT:.0f} s; their bytes are missing")
        reruns = r.of("rerun")
        if len(reruns) > 1 and reruns[0].seconds > 1.5 * statistics.median(m.seconds for m in reruns[1:]):
            exec_first = statistics.mean(c.exec_seconds for c in reruns[0].per_node.values())
            exec_rest = statistics.median(statistics.mean(c.exec_seconds for c in m.per_node.values())
                                          for m in reruns[1:])
            notes.append(f"- {r.label}: the first no-op rerun took {reruns[0].seconds:.2f} s "
                         f"({exec_first:.2f} s in exec requests per host), the later ones "
                         f"{statistics.median(m.seconds for m in reruns[1:]):.2f} s ({exec_rest:.2f} s): "
                         "the first rerun pays for something the later ones reuse")
        first = r.of("first")[0]
        if not first.changed:
            notes.append(f"- {r.label}: the first run changed nothing (were the nodes fresh?)")
        commands = {name: c.commands for name, c in first.per_node.items()}
        if len(set(commands.values())) > 1:
            shown = ", ".join(f"{n} {c}" for n, c in list(commands.items())[:4])
            notes.append(f"- {r.label}, first run: exec requests per host differ (the first host is the "
                         f"control plane): {shown}{', …' if len(commands) > 4 else ''}")
    return notes


# --- main ------------------------------------------------------------------------------


def drop_downloads(workdir: Path) -> None:
    """After a failure: keep the logs and inventories, not the artifact caches (hundreds of MB)."""
    if not mounts_under(workdir):
        for downloads in workdir.glob("*/downloads"):
            shutil.rmtree(downloads, ignore_errors=True)


def sizes(parser: argparse.ArgumentParser, option: str, text: str, allow_empty: bool = False) -> list[int]:
    try:
        values = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        parser.error(f"{option} must be comma-separated integers, not {text!r}")
    if (not values and not allow_empty) or any(not 1 <= n <= MAX_NODES for n in values) \
            or len(set(values)) != len(values):
        parser.error(f"{option} must be distinct sizes in 1..{MAX_NODES}")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python3 -m bench.run", description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("--nodes", default="1,3,12",
                        help="comma-separated cluster sizes, each on fresh clusters of its own (default 1,3,12)")
    parser.add_argument("--runs", type=int, default=5,
                        help="rounds of floor / no-op rerun / --dry per size, in the first mode; medians are "
                             "reported (default 5; 0: first runs only)")
    parser.add_argument("--modes", default="upload,mirror",
                        help="how the release files reach the nodes, each measured on a fresh cluster: upload "
                             "(the laptop sends them) and/or mirror (the nodes fetch them); default upload,mirror")
    parser.add_argument("--bootstrap", default="3",
                        help="sizes of the first run from fresh machines (cluster_bootstrap), in every mode "
                             "(default 3; '' for none)")
    parser.add_argument("--shape-mbit", type=int, default=100,
                        help="the laptop's link to the nodes, in Mbit/s (default 100; 0: not shaped)")
    parser.add_argument("--containerd", choices=["1.x", "2.x"], default="2.x", help="containerd generation (default 2.x)")
    parser.add_argument("--prefix", default="bench",
                        help="cluster name prefix (default bench: bench12, bench12m, benchb3, ...); another one "
                             "gives a personal bed that does not collide with the benchmark's")
    parser.add_argument("--output", type=Path, default=RESULTS_FILE, help=f"markdown report (default {RESULTS_FILE})")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where cluster state, inventories and pyinfra logs go (default: a new /tmp/podnet-bench-*)")
    parser.add_argument("--plan", default=None,
                        help="the clusters to measure, in order, instead of --nodes/--modes/--bootstrap/--runs: "
                             "comma-separated BED:NODES:MODE:ROUNDS with BED kube or bootstrap, e.g. "
                             "kube:1:mirror:5,kube:1:upload:0,bootstrap:3:mirror:0")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    args.command_line = " ".join(argv if argv is not None else sys.argv[1:])
    args.nodes = sizes(parser, "--nodes", args.nodes, allow_empty=True)
    args.bootstrap = sizes(parser, "--bootstrap", args.bootstrap, allow_empty=True)
    if not args.nodes and not args.bootstrap:
        parser.error("nothing to measure: --nodes and --bootstrap are both empty")
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or any(m not in MODES for m in args.modes) or len(set(args.modes)) != len(args.modes):
        parser.error(f"--modes must be distinct names from {', '.join(MODES)}")
    if args.runs < 0:
        parser.error("--runs must be 0 or more")
    if args.shape_mbit < 0:
        parser.error("--shape-mbit must be 0 or more")
    if not re.fullmatch(r"[a-z][a-z0-9]{0,4}", args.prefix):
        parser.error("--prefix must be 1-5 lower-case letters or digits, starting with a letter")
    if args.plan is not None:
        args.plan = parse_plan(parser, args.plan)
    return args


def parse_plan(parser: argparse.ArgumentParser, text: str) -> list[tuple[int, str, str, int]]:
    clusters = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        fields = item.split(":")
        if len(fields) != 4 or fields[0] not in BEDS or fields[2] not in MODES or not fields[1].isdigit() \
                or not fields[3].isdigit() or not 1 <= int(fields[1]) <= MAX_NODES:
            parser.error(f"--plan: {item!r} is not BED:NODES:MODE:ROUNDS (BED one of {', '.join(BEDS)}, MODE one of "
                         f"{', '.join(MODES)}, NODES 1..{MAX_NODES})")
        clusters.append((int(fields[1]), fields[2], fields[0], int(fields[3])))
    names = [(n, mode, bed) for n, mode, bed, _ in clusters]
    if not clusters or len(set(names)) != len(names):
        parser.error("--plan must name each cluster (bed, size, mode) once")
    return clusters


def plan(args) -> list[tuple[int, str, str, int]]:
    """(nodes, mode, bed, rounds) of each cluster to measure, in order: every size in every mode on
    a cluster with Kubernetes (the rounds of floor/rerun/dry in the first mode only), then the
    first runs from fresh machines. --plan, when given."""
    if args.plan is not None:
        return args.plan
    clusters = [(n, mode, "kube", args.runs if i == 0 else 0) for n in args.nodes for i, mode in enumerate(args.modes)]
    return clusters + [(n, mode, "bootstrap", 0) for n in args.bootstrap for mode in args.modes]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    if os.geteuid() != 0:
        print("bench: booting local nodes needs root", file=sys.stderr)
        return 2
    for mode in {mode for _, mode, _, _ in plan(args)}:
        try:
            mode_overrides(mode)
        except BenchError as error:
            print(f"bench: {error}", file=sys.stderr)
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
    info["bytecode"] = bytecode_as_on_a_laptop()
    mirror = build_mirror()
    versions = mirror.inventory_data("http://mirror.invalid", containerd_generation=args.containerd)
    results: list[SizeResult] = []
    failures: list[str] = []
    try:
        for nodes, mode, bed, rounds in plan(args):
            name = cluster_name(args.prefix, nodes, bed, mode)
            try:
                results.append(bench_cluster(nodes, rounds, mode, bed, mirror, args.containerd, workdir,
                                             args.shape_mbit, args.prefix))
            except (ClusterError, KubeBedError, MirrorSiteError, BenchError, AssertionError) as error:
                # one cluster failing (booting, installing, a run): the others are still measured
                failures.append(f"{name} ({nodes} node(s), {mode}, {bed}): {str(error).strip()[-1500:]}")
                log.error("%s failed: %s", name, error)
                if (workdir / name / "cluster" / "state.json").exists():  # not torn down: stop here
                    raise
            # what is measured so far, so that a later failure or Ctrl-C does not lose it
            partial = workdir / "results-partial.md"
            partial.write_text(report(results, args, info, started, time.monotonic() - clock, versions, failures))
            log.info("results so far: %s", partial)
    except KeyboardInterrupt:
        drop_downloads(workdir)
        print(f"bench: interrupted; clusters torn down; results so far and pyinfra logs kept in {workdir}",
              file=sys.stderr)
        return 130
    except (ClusterError, KubeBedError, MirrorSiteError, BenchError, AssertionError) as error:
        left = sorted(str(d) for d in workdir.glob("*/cluster") if (d / "state.json").exists())
        print(f"bench: {error}\nbench: state kept in {workdir}" + "".join(
            f"\nbench: tear down with: python3 -m testbed.localcluster down --state-dir {d}" for d in left),
            file=sys.stderr)
        return 1
    if not results:
        drop_downloads(workdir)
        print("bench: no cluster was measured:\n" + "\n".join(failures) + f"\nbench: logs kept in {workdir}",
              file=sys.stderr)
        return 1
    text = report(results, args, info, started, time.monotonic() - clock, versions, failures)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)
    log.info("report written to %s", args.output)
    if failures:
        drop_downloads(workdir)
        log.error("%d cluster(s) failed; logs kept in %s", len(failures), workdir)
        return 1
    if args.workdir is None and not mounts_under(workdir):
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
