"""
The downloader against a real HTTP server on 127.0.0.1 whose answers each test scripts
(tests/support/http.py); requests are counted on the server side.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import tarfile
from pathlib import Path

import pytest

from tasks.artifacts import download
from tasks.artifacts.catalog import Artifact, ArtifactError
from tasks.artifacts.download import (CacheError, ChecksumMismatch, Downloader, DownloadError, InsecureChannel,
                                      known_digest, verified_upload)
from tests.support.http import Reply, ScriptedServer, loopback_certificate
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
    return Downloader(cache, attempts=attempts, timeout=10, backoff=0, progress=False,
                      allow_insecure_http=True)  # the scripted server speaks http on loopback


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


# --- the laptop cache: believed only while unchanged, private to its user -----------------------


def swap_keeping_size_and_mtime(path: Path, data: bytes) -> None:
    """Other bytes of the same size, the mtime set back: what an attacker or a careless tool leaves."""
    before = path.stat()
    assert len(data) == before.st_size
    path.write_bytes(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def test_a_cached_file_swapped_for_bytes_of_the_same_size_with_its_mtime_restored_is_fetched_again(server, cache):
    url = server.script(PATH, Reply(body=PAYLOAD))
    path = downloader(cache).fetch(artifact(url))
    swap_keeping_size_and_mtime(path, PAYLOAD[:-5] + b"EVIL\n")
    again = downloader(cache)  # the next run: only the cache and its stamp on disk
    assert again.fetch(artifact(url)) == path
    assert path.read_bytes() == PAYLOAD  # the stamp was not believed: hashed, found wrong, fetched again
    assert (again.fetches, server.requests[PATH]) == (1, 2)
    assert known_digest(path) == sha(PAYLOAD)


def test_an_unchanged_cached_file_is_not_hashed_again(server, cache, monkeypatch):
    url = server.script(PATH, Reply(body=PAYLOAD))
    downloader(cache).fetch(artifact(url))
    hashed = []
    monkeypatch.setattr(download, "sha256_of", lambda p: hashed.append(p) or sha(PAYLOAD))
    downloader(cache).fetch(artifact(url))
    assert hashed == []  # the no-op rerun stays fast: the stamp holds while the file's stat is unchanged


CONTAINERD = {"bin/containerd": b"containerd" * 100, "bin/ctr": b"ctr" * 100, "bin/containerd-shim-runc-v2": b"s"}


def test_an_unpacked_file_edited_after_unpacking_is_unpacked_again_from_the_archive(server, cache, capsys):
    data = tarball(CONTAINERD)
    url = server.script("/c.tar.gz", Reply(body=data))
    target = downloader(cache).unpack(artifact(url, data, "containerd"))
    swap_keeping_size_and_mtime(target / "bin/ctr", b"EVIL" * 75)
    capsys.readouterr()
    again = downloader(cache)
    assert again.unpack(artifact(url, data, "containerd")) == target
    assert (target / "bin/ctr").read_bytes() == CONTAINERD["bin/ctr"]
    assert (again.unpacks, again.fetches) == (1, 0)  # the archive itself was intact: unpacked again, not fetched
    assert capsys.readouterr().err == (f"podnet: {target} is unpacked again from its verified archive: bin/ctr was "
                                       "changed since it was unpacked\n")
    assert known_digest(target / "bin/ctr") == sha(CONTAINERD["bin/ctr"])  # the archive's bytes, not the file's


def replace_by_link(target: Path) -> None:
    (target / "bin/ctr").unlink()
    (target / "bin/ctr").symlink_to("/usr/bin/sudo")


@pytest.mark.parametrize("change, said", [
    (lambda t: (t / "bin/runc").write_bytes(b"planted"), "bin/runc was added since it was unpacked"),
    (lambda t: (t / "bin/ctr").unlink(), "bin/ctr was removed since it was unpacked"),
    (lambda t: (t / "bin/ctr").chmod(0o4755), "bin/ctr was changed since it was unpacked"),
    (replace_by_link, "bin/ctr was changed since it was unpacked"),
])
def test_a_file_added_removed_or_replaced_in_an_unpacked_tree_is_undone(server, cache, capsys, change, said):
    data = tarball(CONTAINERD)
    url = server.script("/c.tar.gz", Reply(body=data))
    target = downloader(cache).unpack(artifact(url, data, "containerd"))
    change(target)
    capsys.readouterr()
    downloader(cache).unpack(artifact(url, data, "containerd"))
    assert said in capsys.readouterr().err
    assert {p.relative_to(target).as_posix(): p.read_bytes() for p in files_in(target)} == CONTAINERD
    assert not any(p.is_symlink() for p in target.rglob("*"))


def test_an_unpacked_tree_of_an_earlier_release_is_unpacked_again(server, cache):
    data = tarball(CONTAINERD)
    url = server.script("/c.tar.gz", Reply(body=data))
    target = downloader(cache).unpack(artifact(url, data, "containerd"))
    record = target.parent / "unpacked.sha256sums.json"
    record.write_text('{"bin/ctr": "%s"}' % sha(b"whatever"))  # the bare sums an earlier podnet wrote
    again = downloader(cache)
    again.unpack(artifact(url, data, "containerd"))
    assert again.unpacks == 1
    assert known_digest(target / "bin/ctr") == sha(CONTAINERD["bin/ctr"])


def test_a_release_file_changed_after_it_was_verified_is_not_uploaded(server, cache):
    data = tarball(CONTAINERD)
    url = server.script("/c.tar.gz", Reply(body=data))
    target = downloader(cache).unpack(artifact(url, data, "containerd"))
    ctr, expected = target / "bin/ctr", sha(CONTAINERD["bin/ctr"])
    assert verified_upload(ctr, expected) is None
    ctr.write_bytes(b"EVIL" * 75)  # while the run goes on, after podnet verified the tree
    assert verified_upload(ctr, expected) == (
        f"podnet: {ctr} has sha256 {sha(b'EVIL' * 75)}, expected {expected}: the download cache changed after "
        "podnet verified it; nothing of it was uploaded. Rerun: podnet fetches or unpacks it again. Find out what "
        "changed the cache")


def test_a_new_cache_is_private(tmp_path):
    cache = tmp_path / "deep" / "cache"
    downloader(cache)
    assert cache.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("mode, who", [(0o777, "its group and others"), (0o770, "its group"), (0o757, "others")])
def test_a_cache_others_can_write_is_refused(cache, mode, who):
    cache.mkdir(mode=0o700)
    cache.chmod(mode)
    with pytest.raises(CacheError) as raised:
        downloader(cache)
    assert str(raised.value) == (
        f"download_cache_dir: {cache} is writable by {who} (mode {mode:04o}); what is in podnet's download cache is "
        "installed as root on every node, so podnet uses only a cache that you alone can write: make it private "
        f"(chmod go-w {cache}; podnet creates its cache with mode 0700) or set download_cache_dir to a directory of "
        "your own that only you can write (the default is ~/.cache/podnet)")


def test_a_file_in_the_cache_others_can_write_is_refused(server, cache):
    url = server.script(PATH, Reply(body=PAYLOAD))
    path = downloader(cache).fetch(artifact(url))
    path.chmod(0o666)
    with pytest.raises(CacheError, match=rf"^download_cache_dir: {path} is writable by its group and others "):
        downloader(cache).fetch(artifact(url))


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_a_cache_of_another_user_is_refused(cache):
    cache.mkdir(mode=0o700)
    os.chown(cache, 65534, 65534)  # nobody: e.g. planted in a shared /tmp path before the first run
    with pytest.raises(CacheError) as raised:
        downloader(cache)
    assert str(raised.value).startswith(f"download_cache_dir: {cache} belongs to nobody (uid 65534), not to you "
                                        f"(root (uid 0)); ")
    assert str(raised.value).endswith(f"or remove {cache} if you know where it came from")


def test_a_cache_inside_a_directory_others_can_write_is_refused_unless_sticky(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # anyone could move a cache in here away and put their own in its place
    with pytest.raises(CacheError) as raised:
        downloader(shared / "cache")
    assert str(raised.value) == (
        f"download_cache_dir: {shared / 'cache'} is inside {shared}, which its group and others can write (mode 0777, "
        "no sticky bit): they could move the cache away and put their own in its place; set download_cache_dir to a "
        "directory of your own that only you can write (the default is ~/.cache/podnet)")
    shared.chmod(0o1777)  # as /tmp: others cannot rename or remove what is yours
    downloader(shared / "cache")


# --- the channel ------------------------------------------------------------------------------------


@pytest.fixture
def tls(tmp_path, monkeypatch):
    """A certificate for https servers on 127.0.0.1, trusted by requests for this test."""
    certificate = loopback_certificate(tmp_path / "tls")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificate.cert))
    return certificate


def test_plain_http_is_refused_without_the_opt_in(server, cache):
    url = server.script(PATH, Reply(body=PAYLOAD))
    strict = Downloader(cache, attempts=1, progress=False)
    with pytest.raises(InsecureChannel) as raised:
        strict.fetch(artifact(url))
    assert str(raised.value) == (f"refusing to read {url}: podnet reads release files and checksums over https only; "
                                 "plain http:// needs allow_insecure_http = True")
    with pytest.raises(InsecureChannel):
        strict.fetch_document(url + ".sha256")
    assert sum(server.requests.values()) == 0  # not even asked


def test_plain_http_with_the_opt_in_is_read_with_a_warning_once(server, cache, capsys):
    url = server.script(PATH, Reply(body=PAYLOAD))
    server.script(PATH + ".sha256", Reply(body=b"x"))
    d = downloader(cache)
    d.fetch(artifact(url))
    d.fetch_document(url + ".sha256")
    assert capsys.readouterr().err == (
        f"podnet: warning: reading from {server.url} over plain http (allow_insecure_http = True): anyone on the way "
        "can change the release files and the checksums read there without podnet noticing; pin the sums "
        "(artifact_checksums) or use a lock file written over https\n")


def test_a_redirect_from_https_to_http_is_refused_even_with_the_opt_in(server, cache, tls):
    plain = server.script(PATH, Reply(body=PAYLOAD))
    with ScriptedServer(tls=tls) as secure:
        url = secure.script(PATH, Reply(status=302, location=plain))
        for d in (downloader(cache), Downloader(cache, attempts=1, progress=False)):
            with pytest.raises(InsecureChannel) as raised:
                d.fetch(artifact(url))
            assert str(raised.value) == (f"refusing the redirect from {url} to {plain}: it leaves https, so anyone on "
                                         "the way could change the file or its checksum; use a URL that stays on https")
            with pytest.raises(InsecureChannel):
                d.fetch_document(url)
    assert server.requests[PATH] == 0  # never followed
    assert files_in(cache) == []


def test_a_redirect_that_stays_on_https_is_followed_and_the_url_read_is_reported(cache, tls):
    with ScriptedServer(tls=tls) as secure:
        final = secure.script("/elsewhere/runc.sha256sum", Reply(body=b"sums"))
        url = secure.script("/runc.sha256sum", Reply(status=302, location=final))
        document = Downloader(cache, attempts=1, progress=False).fetch_document(url)
    assert (document.body, document.url) == (b"sums", final)
