"""
The downloader against a real HTTP server on 127.0.0.1 whose answers each test scripts
(tests/support/http.py); requests are counted on the server side.
"""

from __future__ import annotations

import hashlib
import io
import socket
import tarfile
from pathlib import Path

import pytest

from tasks.artifacts.catalog import Artifact, ArtifactError
from tasks.artifacts.download import ChecksumMismatch, Downloader, DownloadError
from tests.support.http import Reply, ScriptedServer
from tests.support.releases import tarball

PAYLOAD = b"#!/bin/sh\necho runc 1.4.3\n" * 200
PATH = "/opencontainers/runc/releases/download/v1.4.3/runc.amd64"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def server():
    with ScriptedServer() as s:
        yield s


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def downloader(cache: Path, attempts: int = 4) -> Downloader:
    return Downloader(cache, attempts=attempts, timeout=10, backoff=0, progress=False)


def artifact(url: str, data: bytes = PAYLOAD, name: str = "runc") -> Artifact:
    return Artifact(name=name, version="1.4.3", arch="amd64", url=url, sha256=sha(data))


def files_in(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if not p.is_dir()) if directory.exists() else []


def test_fetch_stores_the_verified_file_under_its_sha256(server, cache):
    url = server.script(PATH, Reply(body=PAYLOAD))
    path = downloader(cache).fetch(artifact(url))
    assert path == cache / sha(PAYLOAD) / "runc.amd64"
    assert path.read_bytes() == PAYLOAD
    assert server.requests[PATH] == 1
    # no temporary file left behind; the stamp records that this size+mtime was verified
    assert files_in(cache) == [path, path.with_name("runc.amd64.verified")]


def test_cache_hit_makes_no_request(server, cache):
    url = server.script(PATH, Reply(body=PAYLOAD))
    downloader(cache).fetch(artifact(url))
    assert server.requests[PATH] == 1
    second = downloader(cache)  # a new run: nothing memoized, only the cache on disk
    path = second.fetch(artifact(url))
    assert path.read_bytes() == PAYLOAD
    assert server.requests[PATH] == 1
    assert second.fetches == 0


def test_same_artifact_is_fetched_once_per_run(server, cache):
    url = server.script(PATH, Reply(body=PAYLOAD))
    d = downloader(cache)
    assert d.fetch(artifact(url)) == d.fetch(artifact(url))
    assert server.requests[PATH] == 1


def test_cached_file_with_a_wrong_sum_is_fetched_again(server, cache):
    url = server.script(PATH, Reply(body=PAYLOAD))
    d = downloader(cache)
    stale = d.path_for(artifact(url))
    stale.parent.mkdir(parents=True)
    stale.write_bytes(PAYLOAD[:-5] + b"XXXXX")  # corrupted (e.g. disk error, manual edit)
    path = d.fetch(artifact(url))
    assert path == stale and path.read_bytes() == PAYLOAD
    assert server.requests[PATH] == 1


def test_checksum_mismatch_names_url_expected_actual_and_caches_nothing(server, cache):
    tampered = PAYLOAD + b"# tampered\n"
    url = server.script(PATH, Reply(body=tampered))
    with pytest.raises(ChecksumMismatch) as raised:
        downloader(cache).fetch(artifact(url))
    assert str(raised.value) == (f"checksum mismatch for runc 1.4.3 amd64 ({url}): expected sha256 {sha(PAYLOAD)} "
                                 f"from files/artifacts.yaml, got {sha(tampered)}; nothing was changed on any node")
    assert (raised.value.url, raised.value.expected, raised.value.actual) == (url, sha(PAYLOAD), sha(tampered))
    assert files_in(cache) == []
    assert server.requests[PATH] == 1  # a mismatch is not retried


def test_interrupted_transfer_is_retried_and_succeeds(server, cache):
    url = server.script(PATH, Reply(body=PAYLOAD, truncate_at=100), Reply(body=PAYLOAD))
    path = downloader(cache).fetch(artifact(url))
    assert path.read_bytes() == PAYLOAD
    assert server.requests[PATH] == 2
    assert files_in(cache) == [path, path.with_name("runc.amd64.verified")]


def test_server_error_then_success_is_retried(server, cache):
    url = server.script(PATH, Reply(status=500, body=b"oops"), Reply(status=503), Reply(body=PAYLOAD))
    path = downloader(cache).fetch(artifact(url))
    assert path.read_bytes() == PAYLOAD
    assert server.requests[PATH] == 3


def test_not_found_fails_at_once_with_a_clear_error(server, cache):
    url = server.script(PATH, Reply(status=404, body=b"Not Found"))
    with pytest.raises(DownloadError) as raised:
        downloader(cache).fetch(artifact(url))
    assert not isinstance(raised.value, ChecksumMismatch)
    assert str(raised.value) == f"could not download {url}: HTTP 404"
    assert server.requests[PATH] == 1
    assert files_in(cache) == []


@pytest.mark.parametrize("attempts", [1, 3])
def test_attempts_are_bounded(server, cache, attempts):
    url = server.script(PATH, Reply(status=500))
    with pytest.raises(DownloadError) as raised:
        downloader(cache, attempts=attempts).fetch(artifact(url))
    assert str(raised.value) == f"could not download {url} after {attempts} attempts: HTTP 500"
    assert server.requests[PATH] == attempts
    assert files_in(cache) == []


def test_repeated_short_reads_give_up(server, cache):
    url = server.script(PATH, Reply(body=PAYLOAD, truncate_at=10))
    with pytest.raises(DownloadError, match=rf"could not download {url} after 2 attempts"):
        downloader(cache, attempts=2).fetch(artifact(url))
    assert server.requests[PATH] == 2
    assert files_in(cache) == []


def test_connection_refused_is_retried_then_reported(cache):
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}{PATH}"
    with pytest.raises(DownloadError, match=rf"^could not download {url} after 2 attempts: "):
        downloader(cache, attempts=2).fetch(artifact(url))


# --- unpack ----------------------------------------------------------------------------


def raw_tarball(add) -> bytes:
    """A .tar.gz built by ``add(tar)`` (for members tarball() will not make)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        add(tar)
    return out.getvalue()


def regular(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tar.addfile(info, io.BytesIO(data))


def test_unpack_extracts_members_once(server, cache):
    data = tarball({"bin/containerd": b"containerd", "bin/ctr": b"ctr", "bin/containerd-shim-runc-v2": b"shim"})
    url = server.script("/c.tar.gz", Reply(body=data))
    d = downloader(cache)
    target = d.unpack(artifact(url, data, "containerd"))
    assert target == cache / sha(data) / "unpacked"
    assert {p.relative_to(target).as_posix(): p.read_bytes() for p in files_in(target)} == {
        "bin/containerd": b"containerd", "bin/ctr": b"ctr", "bin/containerd-shim-runc-v2": b"shim"}
    assert all(p.stat().st_mode & 0o777 == 0o755 for p in files_in(target))
    # nothing but the archive and the unpacked tree: no staging directory left
    assert sorted(p.name for p in (cache / sha(data)).iterdir()) == ["c.tar.gz", "c.tar.gz.verified", "unpacked",
                                                                    "unpacked.sha256sums.json"]
    # a second run reuses the tree and the archive: no request
    assert downloader(cache).unpack(artifact(url, data, "containerd")) == target
    assert server.requests["/c.tar.gz"] == 1


def test_unpack_keeps_non_executable_members_non_executable(server, cache):
    data = raw_tarball(lambda tar: (regular(tar, "./bridge", b"b"), regular(tar, "./LICENSE", b"l", 0o644)))
    url = server.script("/p.tgz", Reply(body=data))
    target = downloader(cache).unpack(artifact(url, data, "cni_plugins"))
    assert (target / "bridge").stat().st_mode & 0o777 == 0o755
    assert (target / "LICENSE").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("build, message", [
    (lambda tar: (regular(tar, "bin/ok", b"x"), regular(tar, "../evil", b"x")),
     "refusing unsafe member path '../evil'"),
    (lambda tar: regular(tar, "bin/../../evil", b"x"), "refusing unsafe member path 'bin/../../evil'"),
    (lambda tar: regular(tar, "/etc/cron.d/evil", b"x"), "refusing unsafe member path '/etc/cron.d/evil'"),
])
def test_unpack_refuses_paths_outside_the_target(server, cache, tmp_path, build, message):
    data = raw_tarball(build)
    url = server.script("/bad.tgz", Reply(body=data))
    with pytest.raises(ArtifactError) as raised:
        downloader(cache).unpack(artifact(url, data, "cni_plugins"))
    assert str(raised.value) == f"bad.tgz: {message}"
    assert not (cache / sha(data) / "unpacked").exists()
    assert [p.name for p in (cache / sha(data)).iterdir()] == ["bad.tgz", "bad.tgz.verified"]  # nothing extracted
    assert not (tmp_path / "evil").exists() and not (cache / "evil").exists()


def symlink_member(tar: tarfile.TarFile) -> None:
    regular(tar, "bin/containerd", b"c")
    info = tarfile.TarInfo("bin/ctr")
    info.type, info.linkname = tarfile.SYMTYPE, "/usr/bin/sudo"
    tar.addfile(info)


def hardlink_member(tar: tarfile.TarFile) -> None:
    regular(tar, "bin/containerd", b"c")
    info = tarfile.TarInfo("bin/ctr")
    info.type, info.linkname = tarfile.LNKTYPE, "bin/containerd"
    tar.addfile(info)


@pytest.mark.parametrize("build", [symlink_member, hardlink_member])
def test_unpack_refuses_link_members(server, cache, build):
    data = raw_tarball(build)
    url = server.script("/links.tgz", Reply(body=data))
    with pytest.raises(ArtifactError) as raised:
        downloader(cache).unpack(artifact(url, data, "containerd"))
    assert str(raised.value) == "links.tgz: refusing link member 'bin/ctr'"
    assert [p.name for p in (cache / sha(data)).iterdir()] == ["links.tgz", "links.tgz.verified"]
