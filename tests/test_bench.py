"""The benchmark's reading of sshd's journal (bench/run.py); no nodes needed."""

from bench.run import Entry, count_sshd, spread

IP = "172.30.19.1"


def connection(pid: int, port: int, sessions: list[str], end: str = "closed", start: int = 0) -> list[Entry]:
    """sshd's lines for one connection; each session lasts 0.25 s (journal timestamps in µs)."""
    lines = [
        f'Connection from {IP} port {port} on 172.30.19.11 port 22 rdomain ""',
        f"Accepted publickey for root from {IP} port {port} ssh2: ED25519 SHA256:x",
        "pam_unix(sshd:session): session opened for user root(uid=0) by (uid=0)",
    ]
    for index, kind in enumerate(sessions):
        lines.append(f"Starting session: {kind} for root from {IP} port {port} id {index}")
        lines.append(f"Close session: user root from {IP} port {port} id {index}")
    if end == "closed":
        lines += [f"Connection closed by {IP} port {port}", "pam_unix(sshd:session): session closed for user root",
                  "Transferred: sent 2608, received 1688 bytes", f"Closing connection to {IP} port {port}"]
    elif end == "reset":
        lines += [f"Read error from remote host {IP} port {port}: Connection reset by peer",
                  "pam_unix(sshd:session): session closed for user root"]
    entries, clock = [], start
    for line in lines:
        if line.startswith("Close session"):
            clock += 250_000
        entries.append(Entry(pid, line, clock))
    return entries


def test_counts_sessions_and_bytes_of_a_closed_connection():
    cost, unclosed = count_sshd(connection(67, 40000, ["command", "subsystem 'sftp'", "command", "shell"]))
    assert unclosed == set()
    assert (cost.connections, cost.commands, cost.sftp, cost.other_sessions) == (1, 2, 1, ["shell"])
    assert (cost.ssh_received, cost.ssh_sent, cost.reset) == (1688, 2608, 0)
    assert cost.exec_seconds == 0.5  # the two exec requests, not the sftp or shell sessions


def test_a_connection_still_open_is_reported_unclosed():
    _, unclosed = count_sshd(connection(67, 40000, ["command"], end="open"))
    assert unclosed == {"40000"}


def test_a_reset_connection_has_ended_but_its_bytes_are_unknown():
    entries = connection(67, 40000, ["command"], end="reset") + connection(68, 40002, ["command"])
    cost, unclosed = count_sshd(entries)
    assert unclosed == set()
    assert (cost.connections, cost.commands, cost.reset) == (2, 2, 1)
    assert cost.ssh_received is None and cost.ssh_sent is None


def test_lines_of_an_earlier_connection_are_ignored():
    straggler = connection(60, 39000, ["command"])[3:]  # its accept happened before the cursor
    cost, unclosed = count_sshd(straggler + connection(67, 40000, ["command"]))
    assert unclosed == set()
    assert (cost.connections, cost.commands, cost.ssh_received) == (1, 1, 1688)


def test_spread():
    assert spread([1, 1, 1]) == "1"
    assert spread([17, 20, 17]) == "17–20"


def size(nodes: int, rerun: float = 2.0, mode: str = "upload", first: float = 10.0, laptop: int = 1000,
         mirror: int = 0, mirror_to_laptop: int = 0, bed: str = "kube", rounds: bool = True):
    """A SizeResult as bench_cluster returns it: every node alike."""
    from bench.run import Measurement, NodeCost, SizeResult

    def m(phase: str, seconds: float, commands: int) -> Measurement:
        cost = NodeCost(connections=1, commands=commands, ssh_received=laptop if phase == "first" else 4000,
                        veth_to_node=2000, exec_seconds=0.1, mirror_bytes=mirror if phase == "first" else 0,
                        laptop_frames=laptop + 2000 if phase == "first" else 6000)
        return Measurement(phase, seconds, {"op": nodes} if phase == "first" else {},
                           {f"n{i}": cost for i in range(nodes)},
                           mirror_to_laptop=mirror_to_laptop if phase == "first" else 0, pods_seconds=1.0)
    measurements = [m("first", first, 20)]
    if rounds:
        measurements += [m("floor", 1.0, 1), m("rerun", rerun, 1), m("dry", rerun, 1)]
    return SizeResult(nodes, f"bench{nodes}", measurements, mode, bed)


def render(results, nodes="3,12"):
    import datetime

    from bench.run import parse_args, report

    args = parse_args(["--nodes", nodes, "--runs", "1"])
    versions = {"containerd_version": "2.1.9", "runc_version": "1.1.5", "cni_plugins_version": "1.9.1"}
    info = {"nproc": "2", "cpu": "cpu", "kernel": "k", "commit": "abc", "python": "3.11", "pyinfra": "3.10.0",
            "memory": "24 GiB"}
    return report(results, args, info, datetime.datetime.now(), 1.0, versions)


def test_report_has_the_tables_and_ratios():
    text = render([size(3, 2.0), size(12, 6.0)])
    assert "| 12 (upload) | 6.00 s | 6.00 s | 1.00 s | 6.00× | 6.00× | 0.10 s | 3.00× |" in text
    assert "| 3 (upload) | no-op rerun | 1 | 1 | 0.10 s | 0 | 0 | 2.0 kB | 4.0 kB | 0 B | 0 B |" in text
    assert "the laptop's link to the nodes: 100 Mbit/s" in text


def test_first_run_table_separates_laptop_and_mirror_bytes():
    upload = size(3, mode="upload", laptop=52_000_000, mirror_to_laptop=64_000_000)  # the laptop fetches every file
    fetch = size(3, mode="mirror", laptop=60_000, mirror=50_000_000, rounds=False)
    text = render([upload, fetch])
    # per node / total of the mirror's bodies: 3 nodes fetched 50 MB each; the laptop fetched 50 MB once
    assert ("| 3 | Kubernetes, no pod network | mirror | 10.00 s | 11.00 s | 62.0 kB | 60.0 kB | - | 50.0 MB | "
            "150.0 MB |") in text
    assert "| 3 | Kubernetes, no pod network | upload | 10.00 s | 11.00 s | 52.0 MB | 52.0 MB | - | 0 B | 0 B |" in text
    # what a node needs is what each node fetched in the mirror run, not all the laptop downloaded
    assert "| upload | 10.00 s | 11.00 s | 52.0 MB | 52.0 MB | - | 0 B | 0 B | - | 64.0 MB | 50.0 MB |" in text


def test_targets_are_judged_against_the_issue():
    from bench.run import target_rows

    rows = {row[0]: row[2] for row in target_rows([
        size(1, rerun=1.2, mode="upload", laptop=56_000_000, mirror_to_laptop=50_000_000),  # 1.12x: missed
        size(12, rerun=1.3, mode="upload", laptop=54_000_000, mirror_to_laptop=50_000_000),  # 1.08x: met
        size(1, mode="mirror", first=20.0, laptop=97_000, mirror=50_000_000, rounds=False),  # 99 kB on the link
        size(12, mode="mirror", first=31.0, laptop=101_000, mirror=50_000_000, rounds=False),  # 1.55x
    ])}
    assert rows["upload, 1 (upload): laptop bytes per node ≤ 1.1 × archives the node needs"] == "**missed**"
    assert rows["upload, 12 (upload): laptop bytes per node ≤ 1.1 × archives the node needs"] == "met"
    assert rows["mirror, 1 (mirror): laptop bytes per node ≤ 100.0 kB"] == "met"
    assert rows["mirror, 12 (mirror): laptop bytes per node ≤ 100.0 kB"] == "**missed**"
    assert rows["mirror, 12 (mirror): first-run wall time ≤ 1.5 × the 1-node one"] == "**missed**"
    assert rows["no-op rerun, 1 (upload): ≤ 1.3 × floor, one command per host, no transfer"] == "met"
    assert rows["no-op rerun, 12 (upload): ≤ 1.3 × floor, one command per host, no transfer"] == "met"


def test_a_noop_that_fetches_from_the_mirror_misses_its_target():
    from bench.run import target_rows

    result = size(3, rerun=1.0)
    result.of("rerun")[0].per_node["n0"].mirror_requests = 1
    assert [row[2] for row in target_rows([result]) if row[0].startswith("no-op")] == ["**missed**"]


def test_plan_measures_every_mode_on_a_fresh_cluster_and_the_rounds_once():
    from bench.run import cluster_name, parse_args, plan

    args = parse_args(["--nodes", "1,12", "--runs", "5", "--modes", "upload,mirror", "--bootstrap", "3"])
    assert plan(args) == [(1, "upload", "kube", 5), (1, "mirror", "kube", 0), (12, "upload", "kube", 5),
                          (12, "mirror", "kube", 0), (3, "upload", "bootstrap", 0), (3, "mirror", "bootstrap", 0)]
    names = [cluster_name("bench", n, bed, mode) for n, mode, bed, _ in plan(args)]
    assert names == ["bench1", "bench1m", "bench12", "bench12m", "benchb3", "benchb3m"]
    assert len(set(names)) == len(names) and max(map(len, names)) <= 8  # bridge br-<name>, node veths vb-<name>-N


def test_a_plan_names_the_clusters_in_order():
    from bench.run import parse_args, plan

    args = parse_args(["--plan", "kube:1:mirror:5, kube:12:upload:0,bootstrap:3:mirror:0"])
    assert plan(args) == [(1, "mirror", "kube", 5), (12, "upload", "kube", 0), (3, "mirror", "bootstrap", 0)]


def test_bad_arguments_are_refused(capsys):
    import pytest

    from bench.run import parse_args

    for argv in (["--modes", "upload,ftp"], ["--nodes", "3,3"], ["--nodes", "", "--bootstrap", ""],
                 ["--prefix", "Bench"], ["--shape-mbit", "-1"], ["--plan", "kube:1:ftp:5"],
                 ["--plan", "kube:1:mirror:5,kube:1:mirror:0"], ["--plan", "vm:1:mirror:5"]):
        with pytest.raises(SystemExit):
            parse_args(argv)


def test_each_mode_is_the_setting_an_operator_would_use():
    from bench.run import mode_overrides
    from tasks.settings import Settings

    assert mode_overrides("upload") == {}  # podnet's default: the laptop sends the archives
    assert Settings.__dataclass_fields__["release_download"].metadata["setting"]["default"] == "laptop"
    assert mode_overrides("mirror") == {"release_download": "nodes"}


def test_a_pod_without_an_ip_is_reported_with_its_phase_and_why_its_container_waits():
    from bench.run import pod_state

    waiting = {"status": {"phase": "Pending", "containerStatuses": [
        {"state": {"waiting": {"reason": "ContainerCreating"}}}]}}
    assert pod_state(waiting) == "Pending/ContainerCreating"
    assert pod_state({"status": {"phase": "Pending"}}) == "Pending"  # not yet scheduled: no container status
    assert pod_state(None) == "no pod"


def test_report_shows_the_probes_time_by_part_on_each_timed_node():
    result = size(3, 2.0)
    result.probe_parts = {
        "bench3-1": {"probe": {"run lock": 6.0, "waiting for the queries": 40.5, "TOTAL": 80.0},
                     "probe, kubectl replaced by true": {"run lock": 5.5, "waiting for the queries": 1.0, "TOTAL": 30.0},
                     "kubectl alone": {"pod_cidrs": 45.0}},
        "bench3-2": {"probe": {"run lock": 5.0, "TOTAL": 25.0},
                     "probe, kubectl replaced by true": {"run lock": 5.0, "TOTAL": 24.0}, "kubectl alone": {}}}
    text = render([result], nodes="3")
    assert "### Where the probe's node-side time goes" in text
    assert "| run lock | 6.0 | 5.0 | 5.5 | 5.0 |" in text
    assert "| TOTAL | 80.0 | 25.0 | 30.0 | 24.0 |" in text
    assert "| kubectl query pod_cidrs, alone | 45.0 | - |  |  |" in text
