"""
Release files on the node (tasks/engine/node_releases.py), the activation shell run for real in sh on
temporary directories: an archive sent by the laptop or downloaded by the node (from a loopback server,
with the real curl) is checked against its pinned sum, only the members that change are unpacked and
each is checked again before activation; a corrupted download stops before any live file changes, naming
the URL and both sums; a release file an interrupted run left is used again; credentials never reach a
command line.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tasks.engine import node_releases
from tasks.engine.desired import Origin, local_file
from tasks.engine.ops import install_script, staged_path
from tasks.engine.probe import NodeState
from tasks.settings import parse_host_settings
from tests.support.http import Reply, ScriptedServer

MEMBERS = {"./bridge": b"bridge v2\n" * 100, "./portmap": b"portmap v2\n" * 100, "./LICENSE": b"license\n"}


def settings(**data):
    return parse_host_settings({"allow_insecure_http": True, **data}, "node", [])


def archive(tmp_path: Path, members: dict[str, bytes] = MEMBERS) -> Path:
    path = tmp_path / "laptop" / "cni-plugins-linux-amd64-v9.9.9.tgz"
    path.parent.mkdir(exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return path


def desired(tmp_path: Path, tgz: Path, url: str, names=("bridge", "portmap")):
    """The node's plugin dir and the desired files of ``names``, each an archive member of ``tgz``."""
    unpacked = tmp_path / "laptop" / "unpacked"
    unpacked.mkdir(exist_ok=True)
    origin_sha = hashlib.sha256(tgz.read_bytes()).hexdigest()
    files = []
    for name in names:
        (unpacked / name).write_bytes(MEMBERS[f"./{name}"])
        origin = Origin("cni_plugins", url, origin_sha, "files/artifacts.yaml", tgz, member=name)
        files.append(local_file(str(tmp_path / "node" / "bin" / name), unpacked / name, origin=origin))
    (tmp_path / "node" / "bin").mkdir(parents=True, exist_ok=True)
    return files


def script_for(tmp_path: Path, files, s, node: NodeState | None = None) -> tuple[node_releases.Delivery, str]:
    delivery = node_releases.plan(files, node or NodeState(), s, "node-1", staged_path,
                                  releases_dir=str(tmp_path / "node" / "releases"))
    return delivery, install_script(files, digest_cache=str(tmp_path / "node" / "state" / "digests"),
                                    host_name="node-1", staging=delivery.script, cleanup=delivery.cleanup)


def sh(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)


def live(tmp_path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((tmp_path / "node" / "bin").iterdir())}


def test_the_laptop_sends_the_archive_once_and_only_the_changing_members_are_unpacked_checked_and_activated(tmp_path):
    tgz = archive(tmp_path)
    files = desired(tmp_path, tgz, "https://github.com/x/cni-plugins-linux-amd64-v9.9.9.tgz")
    (tmp_path / "node" / "bin" / "LICENSE").write_bytes(b"not ours\n")
    delivery, script = script_for(tmp_path, files, settings())
    assert delivery.uploads == [files[0].origin]  # the archive, once, for both members
    assert delivery.staged == files
    partial = staged_path(node_releases.node_path(files[0].origin, str(tmp_path / "node" / "releases")))
    Path(partial).parent.mkdir(parents=True)
    shutil.copy(tgz, partial)  # what the upload leaves
    result = sh(script)
    assert result.returncode == 0, result.stderr
    assert live(tmp_path) == {"LICENSE": b"not ours\n", "bridge": MEMBERS["./bridge"], "portmap": MEMBERS["./portmap"]}
    assert list((tmp_path / "node" / "releases").iterdir()) == []  # the archive is removed once its files are active


def test_a_release_file_an_interrupted_run_left_is_checked_and_used_again_not_sent(tmp_path):
    tgz = archive(tmp_path)
    files = desired(tmp_path, tgz, "https://github.com/x/cni-plugins-linux-amd64-v9.9.9.tgz")
    left = node_releases.node_path(files[0].origin, str(tmp_path / "node" / "releases"))
    Path(left).parent.mkdir(parents=True)
    shutil.copy(tgz, left)
    node = NodeState(hashes={left: files[0].origin.sha256})
    delivery, script = script_for(tmp_path, files, settings(), node)
    assert delivery.uploads == []
    result = sh(script)
    assert result.returncode == 0, result.stderr
    assert live(tmp_path)["bridge"] == MEMBERS["./bridge"]


def test_the_node_downloads_the_archive_itself_and_the_laptop_sends_nothing(tmp_path):
    tgz = archive(tmp_path)
    with ScriptedServer() as server:
        server.script("/x/cni.tgz", Reply(status=503), Reply(body=tgz.read_bytes()))  # a transient failure first
        url = f"{server.url}/x/cni.tgz"
        files = desired(tmp_path, tgz, url)
        node = NodeState(features={"curl": True, "wget": False})
        delivery, script = script_for(tmp_path, files, settings(release_download="nodes", mirror_url=server.url),
                                      node)
        assert delivery.uploads == [] and delivery.netrc is None
        result = sh(script)
        assert result.returncode == 0, result.stderr
        assert server.requests["/x/cni.tgz"] == 2
    assert live(tmp_path) == {"bridge": MEMBERS["./bridge"], "portmap": MEMBERS["./portmap"]}


def test_a_corrupted_download_stops_the_node_naming_the_url_and_both_sums_and_no_live_file_changes(tmp_path):
    tgz = archive(tmp_path)
    corrupted = bytearray(tgz.read_bytes())
    corrupted[len(corrupted) // 2] ^= 0xFF  # the right size, wrong bytes
    with ScriptedServer() as server:
        server.script("/x/cni.tgz", Reply(body=bytes(corrupted)))
        url = f"{server.url}/x/cni.tgz"
        files = desired(tmp_path, tgz, url)
        (tmp_path / "node" / "bin" / "bridge").write_bytes(b"old bridge\n")
        _, script = script_for(tmp_path, files, settings(release_download="nodes", mirror_url=server.url),
                               NodeState(features={"curl": True}))
        result = sh(script)
    assert result.returncode == 1
    assert (f"podnet: node-1: {url} has sha256 {hashlib.sha256(corrupted).hexdigest()} on the node, expected "
            f"{files[0].origin.sha256} (files/artifacts.yaml); removed it, no file of it was activated") in result.stderr
    assert live(tmp_path) == {"bridge": b"old bridge\n"}
    assert [p.name for p in (tmp_path / "node" / "releases").iterdir()] == []


def test_a_download_that_keeps_failing_names_the_url_and_why(tmp_path):
    tgz = archive(tmp_path)
    with ScriptedServer() as server:
        server.script("/x/cni.tgz", Reply(status=404))
        url = f"{server.url}/x/cni.tgz"
        files = desired(tmp_path, tgz, url)
        _, script = script_for(tmp_path, files, settings(release_download="nodes", mirror_url=server.url),
                               NodeState(features={"curl": True}))
        result = sh(script)
    assert result.returncode == 1
    assert f"podnet: node-1: could not download {url} ({node_releases.ATTEMPTS} attempts): " in result.stderr
    assert "404" in result.stderr


def test_mirror_credentials_go_to_a_netrc_and_are_on_no_command_line(tmp_path):
    tgz = archive(tmp_path)
    url = "https://deploy:S3cr%40t@mirror.example:8443/x/cni.tgz"
    files = desired(tmp_path, tgz, url)
    delivery, script = script_for(tmp_path, files, settings(release_download="nodes",
                                                           mirror_url="https://deploy:S3cr%40t@mirror.example:8443"),
                                  NodeState(features={"curl": True, "ca_bundle": True}))
    assert delivery.netrc == "machine mirror.example login deploy password S3cr@t\n"
    assert "S3cr" not in script and "deploy" not in script
    assert "--netrc-file /run/podnet/fetch/.netrc" in script and "HOME=/run/podnet/fetch wget" in script
    assert "https://mirror.example:8443/x/cni.tgz" in script


@pytest.mark.parametrize("features, missing", [
    ({"curl": False, "wget": False, "ca_bundle": True}, "curl or wget"),
    ({"curl": True, "wget": False, "ca_bundle": False}, "a CA bundle for https"),
    ({"curl": False, "wget": True, "ca_bundle": False}, "a CA bundle for https"),
])
def test_a_node_without_what_downloading_needs_is_refused_naming_it(features, missing):
    with pytest.raises(node_releases.NodeDownloadError) as raised:
        node_releases.refuse_missing_tools(settings(release_download="nodes", mirror_url="https://mirror.example"),
                                           NodeState(features=features), "node-1")
    assert f"node-1: release_download = 'nodes': this node lacks {missing}" in str(raised.value)
    assert "release_download = 'laptop'" in str(raised.value)


def test_a_file_whose_bytes_are_live_and_only_the_mode_differs_is_copied_on_the_node(tmp_path):
    tgz = archive(tmp_path)
    files = desired(tmp_path, tgz, "https://github.com/x/cni.tgz", names=("bridge",))
    live_bridge = tmp_path / "node" / "bin" / "bridge"
    live_bridge.write_bytes(MEMBERS["./bridge"])
    live_bridge.chmod(0o644)
    delivery, script = script_for(tmp_path, files, settings(), NodeState(hashes={str(live_bridge): files[0].sha256}))
    assert delivery.uploads == [] and delivery.cleanup == []
    result = sh(script)
    assert result.returncode == 0, result.stderr
    assert live_bridge.stat().st_mode & 0o777 == 0o755
