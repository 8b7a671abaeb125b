"""Where a converged node's probe spends its time, part by part (issue #21, item 5).

    parts = probe_time_by_part(bed, inventory, node, rounds=9)   # part -> median ms on the node

The probe a no-op rerun sends is taken from a real rerun (``pyinfra --debug``: the command the SSH
connector ran on ``node``, byte for byte), then run on that node over the bed's own SSH with a
timestamp (``date +%s%N``) written between its parts to the stderr it started with: the run lock, starting the
read-only queries in the background, the digests of the files, the file contents, sysctls, kernel
features, systemd units, directory listings, the sysctl configuration files, and waiting for the
queries. The same script with every ``kubectl`` replaced by ``true`` shows what the rest costs
while kubectl does not compete for the node's cores, and each kubectl query run alone shows what
one costs (a Go binary's start, reading the kubeconfig, one request to the API server). The
markers cost one ``date`` process each (about 1 ms), so the parts add up to a little more than
the probe alone; TOTAL is the probe from its first line to its last, markers included.
"""

from __future__ import annotations

import re
import shlex
import statistics

from testbed.podbed import PodBed

# (part name, test on a probe line: the part ends after the last line of a run of lines passing it)
PARTS = (
    ("run lock", lambda line: line.startswith("exec 9>&-")),
    ("queries started (background)", lambda line: line == "fi"),
    ("digests of files (stat, cached sums)", lambda line: line.startswith("END {") and "cache" in line),
    ("file contents", lambda line: line.startswith("[ -f ") and "'content\\t" in line),
    ("sysctls", lambda line: line.startswith("podnet_v=;")),
    ("kernel features", lambda line: line.startswith("if ") and "'feature\\t" in line),
    ("systemd units (systemctl)", lambda line: line.startswith("printf 'unit\\t")),
    ("directory listings", lambda line: line.startswith("[ -d ") and "'entry\\t" in line),
    ("sysctl configuration files", lambda line: line.endswith("2>/dev/null; true )")),
    ("waiting for the queries", lambda line: line.startswith('if [ -n "$podnet_qd" ]; then wait')),
)
# Marks go to the script's stderr as it started, kept on fd 7: the run lock's `command exec 9>>... 2>/dev/null`
# sends the probe's own stderr to /dev/null from there on.
MARK = 'exec 7>&2; podnet_bench_t() { printf "T\\t%s\\t%s\\n" "$1" "$(date +%s%N)" >&7; }'
# the command runs up to pyinfra's next log line ("    [pyinfra.<module>] ...")
COMMAND_RE = re.compile(r"Running command on (\S+): \(pty=False\) (sh -c '.*?')\n\s*\[pyinfra[.\]]", re.S)
QUERY_RE = re.compile(r"^podnet_query (\S+) ('(?:[^']|'\"'\"')*') \"\$podnet_qd/", re.M)


class ProbePartsError(RuntimeError):
    pass


def captured_probe(debug_output: str, host: str) -> str:
    """The shell script of the first command pyinfra ran on ``host`` (its probe), from ``pyinfra --debug``'s output."""
    for found_host, command in COMMAND_RE.findall(debug_output):
        if found_host == host:
            words = shlex.split(command)
            if words[:2] != ["sh", "-c"] or len(words) != 3:
                raise ProbePartsError(f"{host}: the first command is not `sh -c SCRIPT`: {command[:200]}")
            return words[2]
    raise ProbePartsError(f"{host}: no command in pyinfra's debug output")


def timed_script(script: str) -> tuple[str, list[str]]:
    """``script`` with a timestamp on stderr after each part (PARTS) it has; (the script, the parts found in order)."""
    lines = script.split("\n")
    out, found = [MARK, "podnet_bench_t begin"], []
    for index, line in enumerate(lines):
        out.append(line)
        following = lines[index + 1] if index + 1 < len(lines) else ""
        for name, ends in PARTS:
            if name not in found and ends(line) and not ends(following):
                out.append(f"podnet_bench_t {shlex.quote(name)}")
                found.append(name)
                break
    return "\n".join(out), found


def queries(script: str) -> dict[str, str]:
    """The probe's kubectl queries: name -> the shell command (each once)."""
    return {name: shlex.split(quoted)[0] for name, quoted in QUERY_RE.findall(script) if "kubectl" in quoted}


def parse_marks(stderr: str) -> dict[str, float]:
    """The timestamps a timed script wrote -> part -> milliseconds since the mark before it, and TOTAL."""
    marks = [(name, int(ns)) for tag, name, ns in (line.split("\t") for line in stderr.splitlines()
                                                    if line.startswith("T\t") and line.count("\t") == 2)]
    if len(marks) < 2:
        raise ProbePartsError(f"the timed probe wrote {len(marks)} timestamps: {stderr[-300:]}")
    parts = {name: (ns - previous) / 1e6 for (_, previous), (name, ns) in zip(marks, marks[1:])}
    parts["TOTAL"] = (marks[-1][1] - marks[0][1]) / 1e6
    return parts


def _run_timed(bed: PodBed, node, path: str, rounds: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {}
    for _ in range(rounds):
        done = bed.cluster.ssh(node, f"sh {path} >/dev/null", check=False, timeout=60)
        for name, ms in parse_marks(done.stderr).items():
            samples.setdefault(name, []).append(ms)
    return {name: statistics.median(values) for name, values in samples.items()}


def probe_time_by_part(bed: PodBed, debug_output: str, node, rounds: int = 9) -> dict[str, dict[str, float]]:
    """On ``node``, the medians over ``rounds`` of each part of the probe a rerun sent it (``debug_output``:
    that rerun's ``pyinfra --debug`` output): {"probe": part -> ms, "probe, kubectl replaced by true": part ->
    ms, "kubectl alone": query name -> ms}. Leaves no file on the node."""
    script = captured_probe(debug_output, node.name)
    timed, _ = timed_script(script)
    path = "/run/podnet-bench-probe.sh"
    bed.cluster.ssh(node, f"cat > {path}", input=timed, timeout=30, check=True)
    try:
        result = {"probe": _run_timed(bed, node, path, rounds)}
        bed.cluster.ssh(node, f"sed -i 's/kubectl --kubeconfig/true --kubeconfig/g' {path}", timeout=30)
        result["probe, kubectl replaced by true"] = _run_timed(bed, node, path, rounds)
    finally:
        bed.cluster.ssh(node, f"rm -f {path}", check=False, timeout=30)
    alone = {}
    for name, command in queries(script).items():
        times = []
        for _ in range(rounds):
            done = bed.cluster.ssh(node, f"s=$(date +%s%N); ({command}) >/dev/null 2>&1; e=$(date +%s%N); "
                                         "echo $(( (e - s) / 1000 ))", check=False, timeout=60)
            if done.stdout.strip().isdigit():
                times.append(int(done.stdout.strip()) / 1000)
        if times:
            alone[name] = statistics.median(times)
    result["kubectl alone"] = alone
    return result
