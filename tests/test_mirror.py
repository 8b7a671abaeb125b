"""Tests for the offline release mirror (testbed/mirror).

Fast tests (no mark): the flannel CNI plugin stand-in, driven with a fake
delegate plugin (never touches host networking); the deterministic tarball
writer; version and apt-sources parsing; the loopback HTTP server.

e2e tests: build the real mirror from Debian packages (apt; slow the first
time, cached under $PODNET_TEST_CACHE/mirror afterwards) and check it.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest
import requests

from testbed.kubebed import binaries
from testbed.mirror import Mirror, build_mirror, serve_mirror, upstream_path, upstream_version
from testbed.mirror import build as mbuild

# ==================================================== fast build helpers

def test_upstream_version():
    assert upstream_version("1.6.20~ds1-1+b1") == "1.6.20"
    assert upstream_version("1.6.20~ds1-1+deb12u3") == "1.6.20"
    assert upstream_version("2.1.9+ds1-5") == "2.1.9"
    assert upstream_version("1.1.5+ds1-1+deb12u1") == "1.1.5"
    assert upstream_version("1:1.9.1+ds1-1") == "1.9.1"
    assert upstream_version("1.1.1") == "1.1.1"


def test_upstream_paths():
    assert upstream_path("containerd", "2.1.9") == \
        "containerd/containerd/releases/download/v2.1.9/containerd-2.1.9-linux-amd64.tar.gz"
    assert upstream_path("runc", "1.1.5") == "opencontainers/runc/releases/download/v1.1.5/runc.amd64"
    assert upstream_path("cni_plugins", "1.9.1") == \
        "containernetworking/plugins/releases/download/v1.9.1/cni-plugins-linux-amd64-v1.9.1.tgz"
    # upstream's two naming schemes of flannel-io/cni-plugin assets (files/artifacts.yaml)
    assert upstream_path("flannel_cni_plugin", "1.7.1-flannel1") == (
        "flannel-io/cni-plugin/releases/download/v1.7.1-flannel1/"
        "cni-plugin-flannel-linux-amd64-v1.7.1-flannel1.tgz")
    assert upstream_path("flannel_cni_plugin", "1.9.1-flannel1") == (
        "flannel-io/cni-plugin/releases/download/v1.9.1-flannel1/cni-plugin-flannel-linux-amd64-v1.9.1.tgz")
    assert upstream_path("flanneld", "0.28.9") == "flannel-io/flannel/releases/download/v0.28.9/flanneld-amd64"


def test_deterministic_tarball(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d, mtime in ((a, 1_000_000), (b, 2_000_000)):
        d.mkdir()
        (d / "tool").write_bytes(b"\x7fELF fake")
        os.utime(d / "tool", (mtime, mtime))
    sha_a = mbuild.write_deterministic_tgz(tmp_path / "a.tgz", [
        ("./tool", a / "tool", 0o755), ("./", None, 0o755), ("./README.md", b"hi\n", 0o644)])
    sha_b = mbuild.write_deterministic_tgz(tmp_path / "b.tgz", [
        ("./README.md", b"hi\n", 0o644), ("./tool", b / "tool", 0o755), ("./", None, 0o755)])
    assert sha_a == sha_b == hashlib.sha256((tmp_path / "a.tgz").read_bytes()).hexdigest()
    raw = (tmp_path / "a.tgz").read_bytes()
    assert raw[:4] == b"\x1f\x8b\x08\x00"          # gzip, no FNAME flag
    assert raw[4:8] == b"\0\0\0\0"                 # gzip mtime 0
    with tarfile.open(tmp_path / "a.tgz") as tar:
        members = tar.getmembers()
    listing = subprocess.run(["tar", "-tzf", str(tmp_path / "a.tgz")], capture_output=True, text=True,
                             check=True).stdout.splitlines()
    assert listing == ["./", "./README.md", "./tool"]
    assert members[0].isdir() and members[1].mode == 0o644 and members[2].mode == 0o755
    for m in members:
        assert (m.mtime, m.uid, m.gid) == (0, 0, 0)
    assert not list(tmp_path.glob(".*.tmp"))        # atomic writes leave no temp files


SAMPLE_SOURCES = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.example.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.example.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://src.example.org/debian
Suites: bookworm
Components: main
"""


def test_private_apt_sources_from_host_sources():
    stanzas = [s for s in mbuild.parse_deb822_sources(SAMPLE_SOURCES) if "deb" in s["types"].split()]
    assert len(stanzas) == 2
    assert mbuild.main_archive_uri(stanzas, "bookworm") == "http://deb.example.org/debian"
    kr = "/usr/share/keyrings/debian-archive-keyring.gpg"
    assert mbuild.private_source_lines("sid", stanzas, "bookworm") == [
        f"deb [arch=amd64 signed-by={kr}] http://deb.example.org/debian sid main"]
    assert mbuild.private_source_lines("bookworm", stanzas, "bookworm") == [
        f"deb [arch=amd64 signed-by={kr}] http://deb.example.org/debian bookworm main",
        f"deb [arch=amd64 signed-by={kr}] http://deb.example.org/debian bookworm-updates main",
        f"deb [arch=amd64 signed-by={kr}] http://deb.example.org/debian-security bookworm-security main",
    ]
    one_line = mbuild.parse_one_line_sources(
        "deb [signed-by=/k.gpg] http://deb.example.org/debian bookworm main contrib\n# x\n")
    assert one_line == [{"types": "deb", "uris": "http://deb.example.org/debian", "suites": "bookworm",
                         "components": "main contrib", "signed-by": "/k.gpg"}]


def test_host_sources_are_parsed_not_hardcoded():
    if not mbuild.DEBIAN_SOURCES.exists():
        pytest.skip("host has no debian.sources")
    stanzas = mbuild.host_apt_stanzas()
    uri = mbuild.main_archive_uri(stanzas, mbuild.host_codename())
    assert uri in mbuild.DEBIAN_SOURCES.read_text()


# ======================================================= loopback server

def _thread_names():
    return {t.name for t in threading.enumerate()}


def test_server_serves_tree_on_loopback_and_shuts_down(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "file.tgz").write_bytes(b"payload" * 1000)
    before = _thread_names()
    log = []
    with serve_mirror(tmp_path, request_log=log) as base:
        assert base.startswith("http://127.0.0.1:")
        port = int(base.rsplit(":", 1)[1])
        r = requests.get(f"{base}/a/b/file.tgz", timeout=10)
        assert r.status_code == 200 and r.content == b"payload" * 1000
        assert requests.get(f"{base}/a/b/missing.tgz", timeout=10).status_code == 404
        assert requests.get(f"{base}/../../etc/passwd", timeout=10).status_code == 404
        with requests.Session() as s:      # concurrent requests
            rs = [s.get(f"{base}/a/b/file.tgz", timeout=10) for _ in range(5)]
        assert all(r.status_code == 200 for r in rs)
    assert ("GET", "/a/b/file.tgz", 200) in log and ("GET", "/a/b/missing.tgz", 404) in log
    # stopped: port closed, no serving thread left
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert not [n for n in _thread_names() - before if n.startswith("podnet-mirror-http")]


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "172.31.0.1"])
def test_server_refuses_anything_but_loopback_or_a_test_bridge(tmp_path, host):
    with pytest.raises(ValueError):
        with serve_mirror(tmp_path, host=host):
            pass


def test_server_answers_one_client_with_replaced_bytes_and_logs_who_asked(tmp_path):
    (tmp_path / "a.tgz").write_bytes(b"good")
    clients, replaced = [], {}
    with serve_mirror(tmp_path, client_log=clients, replaced=replaced) as base_url:
        replaced[("127.0.0.2", "/a.tgz")] = b"evil"  # another client than the one asking
        assert requests.get(f"{base_url}/a.tgz", timeout=10).content == b"good"
        replaced[("127.0.0.1", "/a.tgz")] = b"bad!"
        assert requests.get(f"{base_url}/a.tgz", timeout=10).content == b"bad!"
    assert clients == [("127.0.0.1", "GET", "/a.tgz", 200)] * 2
    assert (tmp_path / "a.tgz").read_bytes() == b"good"  # the tree as it was


# ============================================================ e2e: build

CONTAINERD_MEMBERS = {
    "1": ["bin/", "bin/containerd", "bin/containerd-shim", "bin/containerd-shim-runc-v1",
          "bin/containerd-shim-runc-v2", "bin/ctr"],
    "2": ["bin/", "bin/containerd", "bin/containerd-shim-runc-v2", "bin/ctr"],
}


@pytest.fixture(scope="module")
def mirror() -> Mirror:
    missing = binaries.missing("flannel", "flanneld", *binaries.CONTAINERD_BINARIES)
    if missing:
        pytest.skip(f"the mirror packs shared/bin's flannel and containerd binaries: {missing}")
    return build_mirror()


def _members(path: Path):
    with tarfile.open(path, "r:gz") as tar:
        return tar.getmembers()


def _tar_names(path: Path):
    """Member names as GNU tar lists them (tarfile drops a directory's trailing '/')."""
    out = subprocess.run(["tar", "-tzf", str(path)], capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def _extract(path: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "r:gz") as tar:
        tar.extractall(dest, filter="data")
    return dest


def _is_elf(path: Path) -> bool:
    return path.read_bytes()[:4] == b"\x7fELF"


def _gzip_header_ok(path: Path):
    raw = path.read_bytes()[:10]
    assert raw[:3] == b"\x1f\x8b\x08" and raw[3] == 0 and raw[4:8] == b"\0\0\0\0"


@pytest.mark.e2e
def test_manifest_versions(mirror):
    m = mirror.manifest
    assert set(m) == {"containerd", "runc", "cni_plugins", "flannel_cni_plugin", "flanneld", "kubeadm", "kubelet",
                      "kubectl"}
    containerd = mirror.versions("containerd")
    assert len(containerd) == 3
    assert containerd[0].startswith("1.6.") and containerd[1].startswith("2.1.") and containerd[2] == "2.3.4"
    assert mirror.suite_of("containerd", containerd[0]) == "bookworm"
    assert mirror.suite_of("containerd", containerd[1]) == "sid"
    assert mirror.sources["containerd"]["2.3.4"]["shared_bin"] == "containerd"
    assert mirror.versions("runc") == ["1.1.5"]
    cni = mirror.versions("cni_plugins")
    assert cni[0].startswith("1.1.") and cni[1].startswith("1.") and cni[1] > cni[0]
    # the -flannel2/-flannel3 tags are stand-ins: the same v1.9.1-flannel1 build (none of theirs exists here)
    assert mirror.versions("flannel_cni_plugin") == ["1.9.1-flannel1", "1.9.1-flannel2", "1.9.1-flannel3"]
    assert len({mirror.sha256("flannel_cni_plugin", v) for v in mirror.versions("flannel_cni_plugin")}) == 1
    assert mirror.versions("flanneld") == ["0.28.9"]
    for artifact, versions in m.items():
        for version, shas in versions.items():
            assert set(shas) == {"amd64"}
            assert len(shas["amd64"]) == 64


@pytest.mark.e2e
def test_manifest_sha256_match_files(mirror):
    for artifact, versions in mirror.manifest.items():
        for version, shas in versions.items():
            path = mirror.path(artifact, version)
            assert path == mirror.root / upstream_path(artifact, version)
            assert hashlib.sha256(path.read_bytes()).hexdigest() == shas["amd64"]
    mirror.verify()


@pytest.mark.e2e
def test_containerd_tarballs(mirror, tmp_path):
    for version in mirror.versions("containerd"):
        path = mirror.path("containerd", version)
        _gzip_header_ok(path)
        members = _members(path)
        assert _tar_names(path) == CONTAINERD_MEMBERS[version.split(".")[0]]
        assert members[0].isdir() and all(m.isfile() for m in members[1:])
        for m in members:
            assert (m.mtime, m.uid, m.gid) == (0, 0, 0)
            assert m.mode == 0o755
        out = _extract(path, tmp_path / version)
        for m in members[1:]:
            assert _is_elf(out / m.name), m.name
        r = subprocess.run([out / "bin" / "containerd", "--version"], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0 and (f" {version}" in r.stdout or f" v{version}" in r.stdout), r.stdout + r.stderr
        r = subprocess.run([out / "bin" / "ctr", "--version"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and version in r.stdout, r.stdout + r.stderr
        r = subprocess.run([out / "bin" / "containerd-shim-runc-v2", "-v"], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0 and "containerd-shim-runc-v2" in r.stdout, r.stdout + r.stderr


@pytest.mark.e2e
def test_runc_binary(mirror, tmp_path):
    path = mirror.path("runc", "1.1.5")
    assert _is_elf(path)
    exe = tmp_path / "runc"
    exe.write_bytes(path.read_bytes())
    exe.chmod(0o755)
    r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "runc version 1.1.5" in r.stdout, r.stdout + r.stderr


@pytest.mark.e2e
def test_cni_plugin_tarballs(mirror, tmp_path):
    for version in mirror.versions("cni_plugins"):
        path = mirror.path("cni_plugins", version)
        _gzip_header_ok(path)
        members = _members(path)
        names = _tar_names(path)
        assert names == sorted(names)
        assert members[0].isdir() and all(m.isfile() for m in members[1:])
        assert names[:3] == ["./", "./LICENSE", "./README.md"]
        plugins = {n[2:] for n in names[3:]}
        assert {"bridge", "host-local", "portmap", "loopback", "bandwidth", "firewall", "tuning",
                "ptp", "macvlan", "ipvlan", "vlan", "host-device", "dhcp", "sbr", "static", "vrf"} <= plugins
        assert "flannel" not in plugins
        for m in members:
            assert (m.mtime, m.uid, m.gid) == (0, 0, 0)
        assert all("/" not in n[2:] for n in names)
        # every plugin Debian ships is there
        src = mirror.sources["cni_plugins"][version]
        assert src["package"] == "containernetworking-plugins"
        out = _extract(path, tmp_path / version)
        for name in plugins:
            exe = out / name
            assert _is_elf(exe) and os.access(exe, os.X_OK), name
        for name in ("bridge", "host-local", "portmap", "loopback"):
            r = subprocess.run([out / name], input="", env={"CNI_COMMAND": "VERSION"},
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stdout + r.stderr
            assert "1.0.0" in json.loads(r.stdout)["supportedVersions"]


@pytest.mark.e2e
def test_cni_plugins_are_every_plugin_of_the_package(mirror, tmp_path):
    root = mbuild.cache_root()
    for version in mirror.versions("cni_plugins"):
        src = mirror.sources["cni_plugins"][version]
        deb = root / "debs" / src["suite"] / src["deb"]
        listing = subprocess.run(["dpkg-deb", "-c", deb], capture_output=True, text=True, check=True).stdout
        shipped = {line.split()[-1].rsplit("/", 1)[1] for line in listing.splitlines()
                   if "./usr/lib/cni/" in line and not line.startswith("d")}
        plugins = {m.name[2:] for m in _members(mirror.path("cni_plugins", version))
                   if m.isfile()} - {"LICENSE", "README.md"}
        assert plugins == shipped


@pytest.mark.e2e
def test_flannel_release_files_are_the_real_binaries_as_upstream_packs_them(mirror, tmp_path):
    path = mirror.path("flannel_cni_plugin", "1.9.1-flannel1")
    assert path.name == "cni-plugin-flannel-linux-amd64-v1.9.1.tgz"
    _gzip_header_ok(path)
    (member,) = _members(path)
    assert _tar_names(path) == ["flannel-amd64"]
    assert member.isfile() and member.mode == 0o755
    assert (member.mtime, member.uid, member.gid) == (0, 0, 0)
    exe = _extract(path, tmp_path) / "flannel-amd64"
    assert exe.read_bytes() == binaries.binary("flannel").read_bytes()
    r = subprocess.run([exe], input="", env={"CNI_COMMAND": "VERSION"}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "1.0.0" in json.loads(r.stdout)["supportedVersions"]
    flanneld = mirror.path("flanneld", "0.28.9")
    assert flanneld.read_bytes() == binaries.binary("flanneld").read_bytes()
    # flannel-io/flannel publishes no checksum file: GitHub's release API reports the digest
    release = json.loads((mirror.root / "repos/flannel-io/flannel/releases/tags/v0.28.9").read_text())
    assert release["assets"] == [{"name": "flanneld-amd64", "digest": "sha256:" + mirror.sha256("flanneld", "0.28.9"),
                                  "browser_download_url": "https://github.com/flannel-io/flannel/releases/download/"
                                                          "v0.28.9/flanneld-amd64"}]


@pytest.mark.e2e
def test_serving_the_mirror_over_loopback(mirror):
    log = []
    with mirror.serve(request_log=log) as base:
        assert base.startswith("http://127.0.0.1:")
        with requests.Session() as s:
            for artifact, versions in mirror.manifest.items():
                for version, shas in versions.items():
                    r = s.get(mirror.url(base, artifact, version), timeout=60)
                    assert r.status_code == 200, (artifact, version)
                    assert hashlib.sha256(r.content).hexdigest() == shas["amd64"]
            assert s.get(f"{base}/containerd/containerd/releases/download/v9.9.9/x.tgz",
                         timeout=10).status_code == 404
    assert len([e for e in log if e[2] == 200]) == sum(len(v) for v in mirror.manifest.values())


@pytest.mark.e2e
def test_inventory_data(mirror):
    base = "http://127.0.0.1:1234/"
    one = mirror.inventory_data(base)
    assert one["mirror_url"] == "http://127.0.0.1:1234"
    assert one["allow_insecure_http"] is True  # the loopback mirror is plain http: opted in, not exempt
    assert one["containerd_version"].startswith("1.6.")
    assert one["runc_version"] == "1.1.5"
    assert one["cni_plugins_version"].startswith("1.1.")
    assert (one["flannel_cni_plugin_version"], one["flanneld_version"]) == ("1.9.1-flannel3", "0.28.9")
    # every sum pinned but flannel's, which podnet reads from what the mirror publishes beside them
    assert one["artifact_checksums"] == {a: v for a, v in mirror.manifest.items()
                                         if a not in ("flannel_cni_plugin", "flanneld", "kubeadm", "kubelet",
                                                      "kubectl")}
    assert one["artifact_checksums"]["runc"] is not mirror.manifest["runc"]  # a copy: callers may edit it

    two = mirror.inventory_data(base, containerd_generation="2.x")
    assert two["containerd_version"].split(".")[0] == "2"
    assert two["cni_plugins_version"] == mirror.versions("cni_plugins")[-1]
    assert two["runc_version"] == "1.1.5"

    mixed = mirror.inventory_data(base, "2.x", cni_plugins_version=one["cni_plugins_version"])
    assert mixed["cni_plugins_version"] == one["cni_plugins_version"]
    with pytest.raises(ValueError):
        mirror.inventory_data(base, "3.x")
    with pytest.raises(ValueError):
        mirror.inventory_data(base, "1.x", cni_plugins_version="0.0.1")

    for data in (one, two):
        for artifact, key in (("containerd", "containerd_version"), ("runc", "runc_version"),
                              ("cni_plugins", "cni_plugins_version")):
            version = data[key]
            assert data["artifact_checksums"][artifact][version]["amd64"]
            assert mirror.path(artifact, version).is_file()
        assert mirror.path("flannel_cni_plugin", data["flannel_cni_plugin_version"]).is_file()


@pytest.mark.e2e
def test_every_release_file_has_upstreams_checksum_file_beside_it(mirror):
    for artifact, versions in mirror.manifest.items():
        for version, shas in versions.items():
            if artifact == "flanneld":
                continue
            name = mirror.path(artifact, version).name
            published = {"containerd": name + ".sha256sum", "runc": "runc.sha256sum"}.get(artifact, name + ".sha256")
            text = (mirror.path(artifact, version).parent / published).read_text()
            if artifact in ("kubeadm", "kubelet", "kubectl"):  # dl.k8s.io publishes the sha256 alone
                assert text == f"{shas['amd64']}\n", (artifact, version, text)
                continue
            assert f"{shas['amd64']}  {name}\n" in text.splitlines(keepends=True), (artifact, version, text)


@pytest.mark.e2e
def test_reuse_does_not_rebuild(mirror):
    manifest_file = mirror.out_dir / "manifest.json"
    before = manifest_file.stat().st_mtime_ns
    again = build_mirror()
    assert again.manifest == mirror.manifest
    assert manifest_file.stat().st_mtime_ns == before


@pytest.mark.e2e
def test_rebuild_gives_identical_sha256(mirror, tmp_path):
    rebuilt = build_mirror(out_dir=tmp_path / "rebuild", force=True)
    assert rebuilt.root != mirror.root
    assert rebuilt.manifest == mirror.manifest
    rebuilt.verify()
