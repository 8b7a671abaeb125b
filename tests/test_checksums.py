"""
Checksums nobody pinned: resolved from upstream's published sums and locked
(tasks/artifacts/checksums.py), against a real HTTP server on 127.0.0.1 serving release files,
their checksum files and a GitHub release-API document (tests/support/http.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from tasks.artifacts import catalog
from tasks.artifacts.catalog import ArtifactError, resolve
from tasks.artifacts.checksums import (ChecksumError, ChecksumLockFile, Checksums, LockEntry, published_source,
                             sha256_from_checksum_file, sha256_from_release)
from tasks.artifacts.download import ChecksumMismatch, Document, Downloader
from tests.support.hosts import settings
from tests.support.http import Reply, ScriptedServer, loopback_certificate
from tests.support.releases import tarball

FLANNEL = tarball({"flannel-amd64": b"#!/bin/sh\necho flannel 1.9.1\n"})
FLANNEL_SHA = hashlib.sha256(FLANNEL).hexdigest()
FLANNEL_ASSET = "cni-plugin-flannel-linux-amd64-v1.9.1.tgz"
FLANNEL_PATH = f"/flannel-io/cni-plugin/releases/download/v1.9.1-flannel1/{FLANNEL_ASSET}"
FLANNELD = b"#!/bin/sh\necho flanneld 0.28.4\n"
FLANNELD_SHA = hashlib.sha256(FLANNELD).hexdigest()
FLANNELD_PATH = "/flannel-io/flannel/releases/download/v0.28.4/flanneld-amd64"
RELEASE_API_PATH = "/repos/flannel-io/flannel/releases/tags/v0.28.4"
OTHER_SHA = "0" * 63 + "1"


def checksum_line(sha: str, name: str) -> bytes:
    return f"{sha}  {name}\n".encode()


def release_document(**digests: str | None) -> bytes:
    return json.dumps({"tag_name": "v0.28.4", "assets": [
        {"name": name.replace("_", "-"), "digest": digest, "browser_download_url": f"https://example/{name}"}
        for name, digest in digests.items()]}).encode()


@pytest.fixture
def server():
    with ScriptedServer() as s:
        yield s


@pytest.fixture
def lock_path(tmp_path: Path) -> Path:
    return tmp_path / "inventory" / "artifacts.lock.yaml"


def run_for(lock_path: Path, tmp_path: Path) -> Checksums:
    """A new run's checksums (nothing memoized but the lock file on disk)."""
    return Checksums(ChecksumLockFile(lock_path), Downloader(tmp_path / "cache", attempts=2, timeout=5, backoff=0,
                                                             progress=False, allow_insecure_http=True))


def flannel_settings(server: ScriptedServer, lock_path: Path, **extra):
    """The releases this module's server publishes (the resolution does not depend on which)."""
    return settings(mirror_url=server.url, allow_insecure_http=True, artifact_lock_file=str(lock_path), flannel_cni_plugin_version="1.9.1-flannel1",
                    flanneld_version="0.28.4", **{"flannel_image": "docker.io/flannel/flannel:v0.28.4", **extra})


def resolve_flannel(run: Checksums, s) -> catalog.Artifact:
    return resolve(s, "flannel_cni_plugin", "amd64", run.lookup(s))


# --- resolution ---------------------------------------------------------------------------


def test_a_sum_from_the_checksum_file_beside_the_asset_is_used_and_locked(server, lock_path, tmp_path):
    server.script(FLANNEL_PATH + ".sha256", Reply(body=checksum_line(FLANNEL_SHA, FLANNEL_ASSET)))
    run = run_for(lock_path, tmp_path)
    artifact = resolve_flannel(run, flannel_settings(server, lock_path))
    assert (artifact.url, artifact.sha256) == (server.url + FLANNEL_PATH, FLANNEL_SHA)
    source = server.url + FLANNEL_PATH + ".sha256"
    assert yaml.safe_load(lock_path.read_text()) == {
        "flannel_cni_plugin": {"1.9.1-flannel1": {"amd64": {"sha256": FLANNEL_SHA, "source": source}}}}
    assert lock_path.read_text().startswith("# podnet checksum lock:")
    assert run.summary() == (
        f"podnet: resolved 1 sha256 from upstream's published checksums and recorded them in {lock_path}:\n"
        f"  flannel_cni_plugin 1.9.1-flannel1 amd64  sha256 {FLANNEL_SHA}  from {source}\n"
        f"podnet: commit {lock_path}: later runs read these sums from it and ask upstream nothing.")
    # the same run asks once, whatever the number of hosts
    resolve_flannel(run, flannel_settings(server, lock_path))
    assert server.requests[FLANNEL_PATH + ".sha256"] == 1


def test_the_lock_records_the_url_the_sum_was_read_from_after_redirects(lock_path, tmp_path, monkeypatch):
    certificate = loopback_certificate(tmp_path / "tls")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificate.cert))
    with ScriptedServer(tls=certificate) as mirror:
        read = mirror.script("/moved" + FLANNEL_PATH + ".sha256", Reply(body=checksum_line(FLANNEL_SHA, FLANNEL_ASSET)))
        mirror.script(FLANNEL_PATH + ".sha256", Reply(status=302, location=read))
        s = settings(mirror_url=mirror.url, artifact_lock_file=str(lock_path), flannel_cni_plugin_version="1.9.1-flannel1")  # https: no opt-in needed
        run = Checksums(ChecksumLockFile(lock_path), Downloader(tmp_path / "cache", attempts=1, progress=False))
        assert resolve_flannel(run, s).sha256 == FLANNEL_SHA
    assert run.lock.get("flannel_cni_plugin", "1.9.1-flannel1", "amd64").source == read
    assert yaml.safe_load(lock_path.read_text())["flannel_cni_plugin"]["1.9.1-flannel1"]["amd64"]["source"] == read


def test_a_sum_is_not_read_through_a_redirect_from_https_to_http(server, lock_path, tmp_path, monkeypatch):
    certificate = loopback_certificate(tmp_path / "tls")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificate.cert))
    plain = server.script(FLANNEL_PATH + ".sha256", Reply(body=checksum_line(FLANNEL_SHA, FLANNEL_ASSET)))
    with ScriptedServer(tls=certificate) as mirror:
        asked = mirror.script(FLANNEL_PATH + ".sha256", Reply(status=301, location=plain))
        s = settings(mirror_url=mirror.url, artifact_lock_file=str(lock_path), flannel_cni_plugin_version="1.9.1-flannel1")
        with pytest.raises(ChecksumError) as raised:
            resolve_flannel(run_for(lock_path, tmp_path), s)
    assert (f"upstream's published sum cannot be used: refusing the redirect from {asked} to {plain}: it leaves "
            "https") in str(raised.value)
    assert server.requests[FLANNEL_PATH + ".sha256"] == 0 and not lock_path.exists()


def test_the_lock_is_reused_with_upstream_gone(lock_path, tmp_path):
    with ScriptedServer() as server:
        server.script(FLANNEL_PATH + ".sha256", Reply(body=checksum_line(FLANNEL_SHA, FLANNEL_ASSET)))
        s = flannel_settings(server, lock_path)
        resolve_flannel(run_for(lock_path, tmp_path), s)
    # the server is stopped: a later run reads the lock and asks nothing
    later = run_for(lock_path, tmp_path)
    artifact = resolve_flannel(later, s)
    assert artifact.sha256 == FLANNEL_SHA
    assert artifact.sha256_source == (f"the lock file {lock_path} (from {server.url}{FLANNEL_PATH}.sha256)")
    assert later.summary() is None


def test_a_sum_from_the_github_release_api_digest(server, lock_path, tmp_path):
    server.script(RELEASE_API_PATH, Reply(body=release_document(flanneld_amd64=f"sha256:{FLANNELD_SHA}",
                                                                flanneld_arm64=f"sha256:{OTHER_SHA}")))
    s = flannel_settings(server, lock_path, flannel_rollout="systemd")
    run = run_for(lock_path, tmp_path)
    artifact = resolve(s, "flanneld", "amd64", run.lookup(s))
    assert (artifact.url, artifact.sha256) == (server.url + FLANNELD_PATH, FLANNELD_SHA)
    assert run.lock.get("flanneld", "0.28.4", "amd64").source == server.url + RELEASE_API_PATH


@pytest.mark.parametrize("document, detail", [
    (release_document(flanneld_arm64=f"sha256:{OTHER_SHA}"), "lists no asset flanneld-amd64 (it has flanneld-arm64)"),
    (release_document(flanneld_amd64=None), "reports no digest for flanneld-amd64 (GitHub records one only for "
                                            "assets uploaded since mid-2025)"),
    (release_document(flanneld_amd64="sha512:abc"), "reports digest 'sha512:abc' for flanneld-amd64, not a sha256"),
    (b"<html>rate limited</html>", "is not a GitHub release document (no assets list)"),
])
def test_release_api_answers_that_give_no_sum(server, lock_path, tmp_path, document, detail):
    server.script(RELEASE_API_PATH, Reply(body=document))
    s = flannel_settings(server, lock_path, flannel_rollout="systemd")
    with pytest.raises(ChecksumError) as raised:
        resolve(s, "flanneld", "amd64", run_for(lock_path, tmp_path).lookup(s))
    assert str(raised.value).startswith(
        "flanneld 0.28.4 amd64: no sha256 is pinned or locked, and upstream's published sum cannot be used: "
        f"{server.url}{RELEASE_API_PATH} {detail}; files/artifacts.yaml pins no flanneld release for amd64; to use "
        "0.28.4, pin it in your inventory's group data: artifact_checksums = {'flanneld': {'0.28.4': {'amd64': "
        "'<sha256>'}}}, or add it to the lock file")
    assert not lock_path.exists()


def test_a_checksum_file_naming_another_file_is_refused(server, lock_path, tmp_path):
    server.script(FLANNEL_PATH + ".sha256", Reply(body=checksum_line(FLANNEL_SHA, "cni-plugin-flannel-linux-arm64"
                                                                                   "-v1.9.1.tgz")))
    with pytest.raises(ChecksumError) as raised:
        resolve_flannel(run_for(lock_path, tmp_path), flannel_settings(server, lock_path))
    assert (f"{server.url}{FLANNEL_PATH}.sha256 names cni-plugin-flannel-linux-arm64-v1.9.1.tgz, not the asset "
            f"{FLANNEL_ASSET}; it is not this file's checksum") in str(raised.value)
    assert not lock_path.exists()


@pytest.mark.parametrize("body", [b"<html>Not here</html>\n", FLANNEL_SHA[:40].encode() + b"  " +
                                  FLANNEL_ASSET.encode(), b"\n\n", b"\xff\xfe"])
def test_a_malformed_checksum_file_is_refused(server, lock_path, tmp_path, body):
    server.script(FLANNEL_PATH + ".sha256", Reply(body=body))
    with pytest.raises(ChecksumError, match=r"\.sha256 is not a checksum file: "):
        resolve_flannel(run_for(lock_path, tmp_path), flannel_settings(server, lock_path))
    assert not lock_path.exists()


def test_a_missing_checksum_file_says_what_to_pin_and_where(server, lock_path, tmp_path):
    with pytest.raises(ChecksumError) as raised:
        resolve_flannel(run_for(lock_path, tmp_path), flannel_settings(server, lock_path))
    assert str(raised.value) == (
        "flannel_cni_plugin 1.9.1-flannel1 amd64: no sha256 is pinned or locked, and upstream's published sum "
        f"cannot be used: could not download {server.url}{FLANNEL_PATH}.sha256: HTTP 404; files/artifacts.yaml "
        "pins no flannel_cni_plugin release for amd64; to use 1.9.1-flannel1, pin it in your inventory's group data: "
        "artifact_checksums = {'flannel_cni_plugin': {'1.9.1-flannel1': {'amd64': '<sha256>'}}}, or add it to the "
        f"lock file {lock_path} as flannel_cni_plugin: {{'1.9.1-flannel1': {{amd64: {{sha256: <sha256>, "
        "source: <where you read it>}}}")
    assert server.requests[FLANNEL_PATH + ".sha256"] == 1
    assert not lock_path.exists()


def test_strict_policy_refuses_resolution_and_asks_nobody(server, lock_path, tmp_path):
    server.script(FLANNEL_PATH + ".sha256", Reply(body=checksum_line(FLANNEL_SHA, FLANNEL_ASSET)))
    s = flannel_settings(server, lock_path, resolve_checksums=False)
    with pytest.raises(ChecksumError) as raised:
        resolve_flannel(run_for(lock_path, tmp_path), s)
    assert str(raised.value).startswith("flannel_cni_plugin 1.9.1-flannel1 amd64: no sha256 is pinned or locked, "
                                        "and resolve_checksums is false; files/artifacts.yaml pins")
    assert server.requests == {}
    # a pinned or locked sum is still fine under the strict policy
    pinned = flannel_settings(server, lock_path, resolve_checksums=False,
                              artifact_checksums={"flannel_cni_plugin": {"1.9.1-flannel1": {"amd64": FLANNEL_SHA}}})
    assert resolve_flannel(run_for(lock_path, tmp_path), pinned).sha256_source == "the artifact_checksums setting"
    ChecksumLockFile(lock_path).record("flannel_cni_plugin", "1.9.1-flannel1", "amd64",
                                   LockEntry(FLANNEL_SHA, "by hand"))
    assert resolve_flannel(run_for(lock_path, tmp_path), s).sha256 == FLANNEL_SHA
    assert server.requests == {}


def test_a_pin_wins_and_nothing_is_asked(server, lock_path, tmp_path):
    s = flannel_settings(server, lock_path,
                         artifact_checksums={"flannel_cni_plugin": {"1.9.1-flannel1": {"amd64": OTHER_SHA}}})
    assert resolve_flannel(run_for(lock_path, tmp_path), s).sha256 == OTHER_SHA
    assert server.requests == {} and not lock_path.exists()


# --- disagreements ----------------------------------------------------------------------------


def test_a_lock_entry_that_disagrees_with_the_downloaded_file_stops_naming_both_sums(server, lock_path, tmp_path):
    server.script(FLANNEL_PATH + ".sha256", Reply(body=checksum_line(FLANNEL_SHA, FLANNEL_ASSET)))
    s = flannel_settings(server, lock_path)
    resolve_flannel(run_for(lock_path, tmp_path), s)
    tampered = tarball({"flannel-amd64": b"#!/bin/sh\necho something else\n"})
    server.script(FLANNEL_PATH, Reply(body=tampered))
    run = run_for(lock_path, tmp_path)
    with pytest.raises(ChecksumMismatch) as raised:
        run.downloader.fetch(resolve_flannel(run, s))
    assert str(raised.value) == (
        f"checksum mismatch for flannel_cni_plugin 1.9.1-flannel1 amd64 ({server.url}{FLANNEL_PATH}): expected "
        f"sha256 {FLANNEL_SHA} from the lock file {lock_path} (from {server.url}{FLANNEL_PATH}.sha256), got "
        f"{hashlib.sha256(tampered).hexdigest()}; nothing was changed on any node")
    assert server.requests[FLANNEL_PATH + ".sha256"] == 1  # the second run asked only for the file


def test_a_newly_published_sum_that_disagrees_with_the_lock_stops(server, lock_path, tmp_path):
    server.script(FLANNEL_PATH + ".sha256", Reply(body=checksum_line(FLANNEL_SHA, FLANNEL_ASSET)),
                  Reply(body=checksum_line(OTHER_SHA, FLANNEL_ASSET)))
    s = flannel_settings(server, lock_path)
    resolve_flannel(run_for(lock_path, tmp_path), s)
    with pytest.raises(ChecksumError) as raised:
        run_for(lock_path, tmp_path).verify(s, "flannel_cni_plugin", "1.9.1-flannel1", "amd64")
    source = f"{server.url}{FLANNEL_PATH}.sha256"
    assert str(raised.value) == (
        f"flannel_cni_plugin 1.9.1-flannel1 amd64: upstream now publishes sha256 {OTHER_SHA} ({source}), but the "
        f"lock file {lock_path} holds {FLANNEL_SHA} (from {source}); a release file changed after it was locked: "
        "find out why before trusting it; if the new sum is right, delete the entry from the lock file and run "
        "again")
    assert ChecksumLockFile(lock_path).get("flannel_cni_plugin", "1.9.1-flannel1", "amd64").sha256 == FLANNEL_SHA


@pytest.mark.parametrize("text, where", [
    ("- a list\n", "the whole file"),
    ("flannel: {}\n", "entry 'flannel'"),
    ("flanneld: {'0.28.4': {amd64: {sha256: nothex, source: x}}}\n", "flanneld 0.28.4 'amd64'"),
    ("flanneld: {'0.28.4': {s390x: {sha256: '" + OTHER_SHA + "', source: x}}}\n", "flanneld 0.28.4 's390x'"),
])
def test_a_malformed_lock_file_is_named(lock_path, text, where):
    lock_path.parent.mkdir(parents=True)
    lock_path.write_text(text)
    with pytest.raises(ChecksumError) as raised:
        ChecksumLockFile(lock_path)
    assert str(raised.value).startswith(f"artifact_lock_file: {lock_path}: {where} is not valid; expected "
                                        "{artifact: {version: {arch: {sha256: <64 hex digits>, source: <url>}}}}")


def test_the_lock_keeps_what_another_run_wrote(lock_path, tmp_path):
    first, second = ChecksumLockFile(lock_path), ChecksumLockFile(lock_path)
    first.record("flanneld", "0.28.4", "amd64", LockEntry(FLANNELD_SHA, "a"))
    second.record("flannel_cni_plugin", "1.9.1-flannel1", "arm64", LockEntry(FLANNEL_SHA, "b"))
    both = ChecksumLockFile(lock_path)
    assert both.get("flanneld", "0.28.4", "amd64") == LockEntry(FLANNELD_SHA, "a")
    assert both.get("flannel_cni_plugin", "1.9.1-flannel1", "arm64") == LockEntry(FLANNEL_SHA, "b")
    with pytest.raises(ChecksumError, match="written meanwhile by another run"):
        second.record("flanneld", "0.28.4", "amd64", LockEntry(OTHER_SHA, "c"))
    assert [p.name for p in lock_path.parent.iterdir()] == ["artifacts.lock.yaml"]  # no temporary file left


# --- formats and names, as upstream publishes them ----------------------------------------------


def test_checksum_file_formats():
    runc_sums = "".join(f"{c * 64}  runc.{arch}\n" for c, arch in (("1", "amd64"), ("2", "arm64"), ("3", "ppc64le")))
    assert sha256_from_checksum_file(runc_sums.encode(), "runc.arm64", "sha256sum", "u") == "2" * 64
    assert sha256_from_checksum_file(f"{'A' * 64} *x.tgz\n".encode(), "x.tgz", "sha256sum", "u") == "a" * 64
    assert sha256_from_checksum_file(f"{'b' * 64}  ./x.tgz".encode(), "x.tgz", "sha256sum", "u") == "b" * 64
    assert sha256_from_checksum_file(f"{'c' * 64}\n".encode(), "kubeadm", "bare", "u") == "c" * 64
    with pytest.raises(ChecksumError, match="line 'cccc' is not '<sha256>  <file name>' lines"):
        sha256_from_checksum_file(b"cccc\n", "x", "sha256sum", "u")
    with pytest.raises(ChecksumError, match="is not the sha256 alone"):
        sha256_from_checksum_file(b"c" * 63, "kubeadm", "bare", "u")


def test_release_digest_is_lower_cased():
    assert sha256_from_release(release_document(x=f"sha256:{'AB' * 32}"), "x", "u") == "ab" * 32


@pytest.mark.parametrize("name, version, published", [
    ("flannel_cni_plugin", "1.7.1-flannel1", "https://github.com/flannel-io/cni-plugin/releases/download/"
     "v1.7.1-flannel1/cni-plugin-flannel-linux-arm64-v1.7.1-flannel1.tgz.sha256"),
    ("flannel_cni_plugin", "1.8.0-flannel1", "https://github.com/flannel-io/cni-plugin/releases/download/"
     "v1.8.0-flannel1/cni-plugin-flannel-linux-arm64-v1.8.0-flannel1.tgz.sha256"),
    ("flannel_cni_plugin", "1.8.0-flannel2", "https://github.com/flannel-io/cni-plugin/releases/download/"
     "v1.8.0-flannel2/cni-plugin-flannel-linux-arm64-v1.8.0.tgz.sha256"),
    ("flannel_cni_plugin", "1.9.1-flannel3", "https://github.com/flannel-io/cni-plugin/releases/download/"
     "v1.9.1-flannel3/cni-plugin-flannel-linux-arm64-v1.9.1.tgz.sha256"),
    ("flanneld", "0.28.9", "https://api.github.com/repos/flannel-io/flannel/releases/tags/v0.28.9"),
    ("containerd", "2.3.5", "https://github.com/containerd/containerd/releases/download/v2.3.5/"
     "containerd-2.3.5-linux-arm64.tar.gz.sha256sum"),
    ("runc", "1.4.4", "https://github.com/opencontainers/runc/releases/download/v1.4.4/runc.sha256sum"),
    ("cni_plugins", "1.9.2", "https://github.com/containernetworking/plugins/releases/download/v1.9.2/"
     "cni-plugins-linux-arm64-v1.9.2.tgz.sha256"),
    ("kubeadm", "1.36.2", "https://dl.k8s.io/release/v1.36.2/bin/linux/arm64/kubeadm.sha256"),
])
def test_where_upstream_publishes_each_sum(name, version, published):
    assert published_source(name, version, "arm64", None) == published
    mirror = "http://mirror.internal:8080/podnet"
    assert published_source(name, version, "arm64", mirror) == mirror + "/" + published.split("/", 3)[3]


def test_a_flannel_cni_plugin_release_without_a_known_asset_name_is_refused():
    with pytest.raises(ArtifactError) as raised:
        resolve(settings(flannel_cni_plugin_version="1.10.0-flannel1"), "flannel_cni_plugin", "amd64")
    assert str(raised.value) == (
        "flannel_cni_plugin_version: '1.10.0-flannel1' is not a release podnet knows the asset name of (known: "
        "1.5.1-flannel1, 1.5.1-flannel2, 1.5.1-flannel3, 1.6.0-flannel1, 1.6.2-flannel1, 1.7.1-flannel1, "
        "1.8.0-flannel1, 1.8.0-flannel2, 1.9.0-flannel1, 1.9.1-flannel1, 1.9.1-flannel2, 1.9.1-flannel3); pick one "
        "of these, or add it with its asset name to asset_versions of flannel_cni_plugin in files/artifacts.yaml")


def test_default_flannel_versions_are_the_pair_flannels_own_manifest_uses():
    s = settings()
    # flannel v0.28.9's kube-flannel.yml runs flanneld v0.28.9 with cni-plugin v1.9.1-flannel3
    assert (s.flanneld_version, s.flannel_image, s.flannel_cni_plugin_version) == (
        "0.28.9", "docker.io/flannel/flannel:v0.28.9", "1.9.1-flannel3")
    assert catalog.asset_url(s, "flannel_cni_plugin", s.flannel_cni_plugin_version, "amd64").endswith(
        "/v1.9.1-flannel3/cni-plugin-flannel-linux-amd64-v1.9.1.tgz")


def test_github_token_goes_to_the_api_but_never_to_a_mirror(server, lock_path, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setenv("GITHUB_TOKEN", "secret")
    downloader = Downloader(tmp_path / "cache", attempts=1, timeout=5, backoff=0, progress=False)
    monkeypatch.setattr(downloader, "fetch_document", lambda url, headers=None: seen.append((url, headers)) or
                        Document(release_document(flanneld_amd64=f"sha256:{FLANNELD_SHA}"), url))
    run = Checksums(ChecksumLockFile(lock_path), downloader)
    for mirror in (None, server.url):
        s = settings(flannel_rollout="systemd", artifact_lock_file=str(lock_path), mirror_url=mirror,
                     flanneld_version="0.28.4", allow_insecure_http=True)
        run.sha256(s, "flanneld", "0.28.4", "amd64")
        lock_path.unlink()
        run.lock.entries.clear()
    assert seen == [
        ("https://api.github.com/repos/flannel-io/flannel/releases/tags/v0.28.4",
         {"Accept": "application/vnd.github+json", "Authorization": "Bearer secret"}),
        (server.url + RELEASE_API_PATH, {"Accept": "application/vnd.github+json"})]
