"""
Secrets kept out of output and committed files (tasks/redact.py): a mirror_url with
credentials (``https://user:password@host/...``) is fetched with them, but its credentials
are in no lock file entry, run summary, error or settings problem; against a real HTTP server
on 127.0.0.1 (tests/support/http.py) and the real pyinfra CLI (tests/support/plan.py).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tasks.artifacts.catalog import resolve
from tasks.artifacts.checksums import ChecksumError, ChecksumLockFile, Checksums, LockEntry
from tasks.artifacts.download import ChecksumMismatch, DownloadError, Downloader
from tasks.redact import masked, redact_url, redact_urls
from tests.support.hosts import problems, settings, control_plane
from tests.support.http import Reply, ScriptedServer
from tests.support.releases import tarball

PASSWORD = "S3cr3t"
FLANNEL = tarball({"flannel-amd64": b"#!/bin/sh\necho flannel 1.9.1\n"})
FLANNEL_SHA = hashlib.sha256(FLANNEL).hexdigest()
FLANNEL_ASSET = "cni-plugin-flannel-linux-amd64-v1.9.1.tgz"
FLANNEL_PATH = f"/flannel-io/cni-plugin/releases/download/v1.9.1-flannel1/{FLANNEL_ASSET}"


@pytest.mark.parametrize("url, shown", [
    ("https://deploy:S3cr3t@mirror.example/releases", "https://***@mirror.example/releases"),
    ("https://deploy@mirror.example:8443/x?y=1", "https://***@mirror.example:8443/x?y=1"),
    ("http://a:b@[fd00::1]:80/", "http://***@[fd00::1]:80/"),
    ("https://mirror.example/a@b", "https://mirror.example/a@b"),  # an @ in the path is no credential
    ("https://mirror.example/releases", "https://mirror.example/releases"),
    ("not a url", "not a url"),
])
def test_a_url_is_shown_without_its_credentials(url, shown):
    assert redact_url(url) == shown


def test_credentials_are_taken_out_of_a_text_quoting_the_url_or_its_parts():
    url = "https://deploy:S3cr3t@mirror.example/x"
    text = f"GET {url} failed; retried with deploy:S3cr3t"
    assert redact_urls(text, url, None) == "GET https://***@mirror.example/x failed; retried with ***"


def test_secret_values_are_masked_in_a_message():
    assert masked("token abcdef.0123456789abcdef rejected", "abcdef.0123456789abcdef", None) == (
        "token *MASKED* rejected")


# --- mirror_url with credentials ----------------------------------------------------------------


@pytest.fixture
def server():
    with ScriptedServer() as s:
        yield s


def credentialed(server: ScriptedServer) -> str:
    return server.url.replace("http://", f"http://deploy:{PASSWORD}@")


def run_for(lock_path: Path, tmp_path: Path) -> Checksums:
    return Checksums(ChecksumLockFile(lock_path), Downloader(tmp_path / "cache", attempts=2, timeout=5, backoff=0,
                                                         progress=False, allow_insecure_http=True))


def test_the_lock_file_and_the_run_summary_record_the_mirror_without_its_credentials(server, tmp_path):
    server.script(FLANNEL_PATH + ".sha256", Reply(body=f"{FLANNEL_SHA}  {FLANNEL_ASSET}\n".encode()))
    server.script(FLANNEL_PATH, Reply(body=FLANNEL))
    lock_path = tmp_path / "artifacts.lock.yaml"
    run = run_for(lock_path, tmp_path)
    s = settings(mirror_url=credentialed(server), allow_insecure_http=True, flannel_cni_plugin_version="1.9.1-flannel1", artifact_lock_file=str(lock_path))
    artifact = resolve(s, "flannel_cni_plugin", "amd64", run.lookup(s))
    assert artifact.url == credentialed(server) + FLANNEL_PATH  # the download itself uses them
    run.downloader.fetch(artifact)
    shown = server.url.replace("http://", "http://***@") + FLANNEL_PATH + ".sha256"
    assert f"source: {shown}" in lock_path.read_text()
    assert PASSWORD not in lock_path.read_text()
    assert shown in run.summary() and PASSWORD not in run.summary()
    assert PASSWORD not in artifact.sha256_source


def test_a_lock_entry_written_with_credentials_by_hand_is_read_and_rewritten_without_them(tmp_path):
    lock = ChecksumLockFile(tmp_path / "artifacts.lock.yaml")
    lock.record("flanneld", "0.28.4", "amd64", LockEntry("a" * 64, f"https://deploy:{PASSWORD}@m.example/x"))
    assert PASSWORD not in (tmp_path / "artifacts.lock.yaml").read_text()
    assert ChecksumLockFile(tmp_path / "artifacts.lock.yaml").get("flanneld", "0.28.4", "amd64").source == (
        "https://***@m.example/x")


def test_errors_about_the_mirror_never_show_its_credentials(server, tmp_path):
    lock_path = tmp_path / "artifacts.lock.yaml"
    s = settings(mirror_url=credentialed(server), allow_insecure_http=True, flannel_cni_plugin_version="1.9.1-flannel1", artifact_lock_file=str(lock_path))
    # no checksum file on the mirror (404)
    with pytest.raises(ChecksumError) as missing:
        resolve(s, "flannel_cni_plugin", "amd64", run_for(lock_path, tmp_path).lookup(s))
    assert "http://***@127.0.0.1" in str(missing.value) and PASSWORD not in str(missing.value)
    # a file whose bytes are not the published ones
    server.script(FLANNEL_PATH + ".sha256", Reply(body=f"{'0' * 64}  {FLANNEL_ASSET}\n".encode()))
    server.script(FLANNEL_PATH, Reply(body=FLANNEL))
    run = run_for(lock_path, tmp_path)
    artifact = resolve(s, "flannel_cni_plugin", "amd64", run.lookup(s))
    with pytest.raises(ChecksumMismatch) as mismatch:
        run.downloader.fetch(artifact)
    assert "http://***@127.0.0.1" in str(mismatch.value) and PASSWORD not in str(mismatch.value)
    # a mirror that cannot be reached at all
    gone = Downloader(tmp_path / "cache2", attempts=1, timeout=2, backoff=0, progress=False, allow_insecure_http=True)
    with pytest.raises(DownloadError) as unreachable:
        gone.fetch_document(f"http://deploy:{PASSWORD}@127.0.0.1:9/x.sha256")
    assert PASSWORD not in str(unreachable.value)


def test_a_bad_mirror_url_is_named_without_its_credentials():
    said = problems(control_plane("cp1", mirror_url=f"ftp://deploy:{PASSWORD}@mirror.example/x"))
    assert said == ["cp1: mirror_url: 'ftp://***@mirror.example/x' is not valid; expected an http:// or https:// "
                    "base URL"]
