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


def test_report_has_the_tables_and_ratios():
    import argparse
    import datetime

    from bench.run import Measurement, NodeCost, SizeResult, report

    def size(nodes: int, rerun: float) -> SizeResult:
        def m(phase: str, seconds: float, commands: int) -> Measurement:
            cost = NodeCost(connections=1, commands=commands, ssh_received=1000, veth_to_node=2000, exec_seconds=0.1)
            return Measurement(phase, seconds, {}, {f"n{i}": cost for i in range(nodes)})
        return SizeResult(nodes, f"bench{nodes}", [m("first", 10.0, 20), m("floor", 1.0, 1), m("rerun", rerun, 1),
                                                   m("dry", rerun, 1)])

    args = argparse.Namespace(nodes=[3, 12], runs=1, containerd="2.x")
    versions = {"containerd_version": "2.1.9", "runc_version": "1.1.5", "cni_plugins_version": "1.9.1"}
    info = {"nproc": "2", "cpu": "cpu", "kernel": "k", "commit": "abc", "python": "3.11", "pyinfra": "3.10.0"}
    text = report([size(3, 2.0), size(12, 6.0)], args, info, datetime.datetime.now(), 1.0, versions)
    assert "| 12 | 10.00 s | 6.00 s | 6.00 s | 1.00 s | 6.00× | 6.00× | 3.00× |" in text
    assert "| 3 | no-op rerun | 1 | 1 | 0.10 s | 0 | 0 | 2.0 kB | 1.0 kB | 0 B |" in text
