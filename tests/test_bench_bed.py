"""The benchmark's pieces of the test bed that need no node: the host's inotify limit
(testbed/localcluster/limits.py), the shaping commands and counters (shaping.py) and the mirror site's
request log (testbed/mirror/site.py, served on loopback here)."""

from __future__ import annotations

import json
import threading
import urllib.request

import pytest

from testbed.localcluster import ClusterError, limits
from testbed.localcluster.shaping import parse_class_bytes, shape_commands, shaped_link
from testbed.mirror.site import MirrorSite, make_server


def test_the_inotify_limit_is_raised_to_what_the_nodes_need(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "inotify_instances_in_use", lambda: 100)
    limit = tmp_path / "max_user_instances"
    limit.write_text("128\n")
    assert limits.ensure_inotify_instances(12, limit) == 100 + 12 * limits.PER_NODE
    assert int(limit.read_text()) == 100 + 12 * limits.PER_NODE


def test_the_inotify_limit_is_never_lowered(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "inotify_instances_in_use", lambda: 100)
    limit = tmp_path / "max_user_instances"
    limit.write_text("8192\n")
    assert limits.ensure_inotify_instances(40, limit) == 8192
    assert limit.read_text() == "8192\n"


def test_a_limit_that_cannot_be_raised_is_named_with_the_command(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "inotify_instances_in_use", lambda: 0)
    limit = tmp_path / "ro" / "max_user_instances"
    limit.parent.mkdir()
    limit.write_text("128\n")

    def refuse(self, text):
        raise PermissionError("read-only")

    monkeypatch.setattr(type(limit), "write_text", refuse)
    with pytest.raises(ClusterError, match=rf"sysctl -w fs.inotify.max_user_instances={12 * limits.PER_NODE}"):
        limits.ensure_inotify_instances(12, limit)


def test_instances_in_use_are_counted_from_each_process_fds(tmp_path):
    for pid, targets in (("12", ["anon_inode:inotify", "/dev/null", "anon_inode:inotify"]),
                         ("345", ["anon_inode:[eventpoll]", "anon_inode:inotify"]), ("self", ["anon_inode:inotify"])):
        (tmp_path / pid / "fd").mkdir(parents=True)
        for fd, target in enumerate(targets):
            (tmp_path / pid / "fd" / str(fd)).symlink_to(target)
    (tmp_path / "999").mkdir()  # a process that ended: no fd directory
    assert limits.inotify_instances_in_use(tmp_path) == 3


def test_the_link_is_shaped_in_total_and_counted_per_node():
    commands = [" ".join(c) for c in shape_commands("br-bench3", 100, ["172.30.9.11", "172.30.9.12"])]
    assert commands[:2] == ["tc qdisc replace dev br-bench3 root handle 1: htb default 2",
                            "tc class add dev br-bench3 parent 1: classid 1:1 htb rate 100mbit ceil 100mbit burst 256k "
                            "cburst 256k"]
    # each node's class may take the whole rate, all of them together no more
    assert ("tc class add dev br-bench3 parent 1:1 classid 1:b htb rate 1mbit ceil 100mbit burst 256k cburst 256k "
            "quantum 60000") in commands
    assert ("tc filter add dev br-bench3 parent 1: protocol ip prio 1 u32 match ip dst 172.30.9.12/32 flowid 1:b"
            in commands)
    assert "rate 40000mbit ceil 40000mbit" in " ".join(shape_commands("br-bench3", 0, [])[1])  # counted, not shaped


def test_class_counters_are_read_per_destination():
    tc_output = """class htb 1:1 root rate 100Mbit ceil 100Mbit burst 262125b cburst 262125b
 Sent 900 bytes 9 pkt (dropped 0, overlimits 0 requeues 0)
 backlog 0b 0p requeues 0

class htb 1:a parent 1:1 prio 0 rate 1Mbit ceil 100Mbit burst 262125b cburst 262125b
 Sent 700 bytes 5 pkt (dropped 0, overlimits 0 requeues 0)
 backlog 0b 0p requeues 0

class htb 1:2 parent 1:1 prio 0 rate 1Mbit ceil 100Mbit burst 262125b cburst 262125b
 Sent 200 bytes 4 pkt (dropped 0, overlimits 0 requeues 0)
"""
    assert parse_class_bytes(tc_output) == {"1:1": 900, "1:a": 700, "1:2": 200}
    assert parse_class_bytes("") == {}


def test_only_a_test_bridge_is_shaped():
    with pytest.raises(ClusterError, match="not a test cluster's bridge"):
        with shaped_link("eth0", 100, []):
            pass


def test_the_site_logs_each_answer_with_client_status_and_body_bytes(tmp_path):
    root = tmp_path / "tree"
    (root / "release").mkdir(parents=True)
    (root / "release" / "a.tgz").write_bytes(b"x" * 300_000)
    log = tmp_path / "site.log"
    log.write_text("")
    server = make_server(root, "127.0.0.1", 0, log)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert len(urllib.request.urlopen(f"{base}/release/a.tgz").read()) == 300_000
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"{base}/release/missing.tgz")
    finally:
        server.shutdown()
        server.server_close()
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["client"], e["path"], e["status"], e["bytes"]) for e in entries] == [
        ("127.0.0.1", "/release/a.tgz", 200, 300_000), ("127.0.0.1", "/release/missing.tgz", 404, 0)]

    site = MirrorSite(root, "br-test", "172.30.9.254/24", log)
    site.veth_counters = lambda: (0, 0)  # no veth here: only the log is read
    from testbed.mirror.site import SiteMark

    counts = site.since(SiteMark(0, (0, 0)))
    assert counts.body_bytes == {"127.0.0.1": 300_000}
    assert counts.requests == {"127.0.0.1": 2}
    assert counts.failed == ["127.0.0.1 404 /release/missing.tgz"]
