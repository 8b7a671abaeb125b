"""Tests for the offline release mirror (tests/mirror).

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

from tests.mirror import (FLANNEL_STANDIN, FLANNEL_STANDIN_VERSION, UPSTREAM_PATHS, Mirror,
                          build_mirror, serve_mirror, upstream_path, upstream_version)
from tests.mirror import build as mbuild

STANDIN = Path(FLANNEL_STANDIN)

SUBNET_ENV = ("FLANNEL_NETWORK=10.244.0.0/16\n"
              "FLANNEL_SUBNET=10.244.5.1/24\n"
              "FLANNEL_MTU=1450\n"
              "FLANNEL_IPMASQ=true\n")

FAKE_PLUGIN = r'''#!{python}
# Test-only fake CNI delegate: records what it was given, prints a result. No networking.
import json, os, sys
data = sys.stdin.read()
entry = {{"plugin": os.path.basename(sys.argv[0]), "stdin": data,
          "env": {{k: v for k, v in os.environ.items() if k.startswith(("CNI_", "FAKE_"))}}}}
with open(os.environ["FAKE_PLUGIN_LOG"], "a") as f:
    f.write(json.dumps(entry) + "\n")
fail = os.environ.get("FAKE_PLUGIN_FAIL")
if fail:
    print(json.dumps({{"cniVersion": "1.0.0", "code": 11, "msg": "fake delegate failure"}}))
    sys.exit(int(fail))
if os.environ["CNI_COMMAND"] == "ADD":
    conf = json.loads(data)
    print(json.dumps({{"cniVersion": conf.get("cniVersion", "1.0.0"),
                      "interfaces": [{{"name": "cni0"}}],
                      "ips": [{{"address": "10.244.5.2/24", "gateway": "10.244.5.1"}}]}}))
'''


# ===================================================== flannel stand-in

class Standin:
    """Runs the stand-in with a temp CNI_PATH holding fake delegates."""

    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        for name in ("bridge", "ipvlan"):
            p = self.bin / name
            p.write_text(FAKE_PLUGIN.format(python=sys.executable))
            p.chmod(0o755)
        self.log = tmp_path / "delegate.log"
        self.data_dir = tmp_path / "data"
        self.subnet_file = tmp_path / "subnet.env"
        self.subnet_file.write_text(SUBNET_ENV)

    def conf(self, **extra) -> dict:
        conf = {"cniVersion": "1.0.0", "name": "cbr0", "type": "flannel",
                "subnetFile": str(self.subnet_file), "dataDir": str(self.data_dir),
                "delegate": {"hairpinMode": True, "isDefaultGateway": True}}
        conf.update(extra)
        return conf

    def run(self, command, conf=None, stdin=None, cni_path=None, **env_over):
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        env.update({"CNI_COMMAND": command, "CNI_CONTAINERID": "abc123", "CNI_NETNS": "/var/run/netns/test",
                    "CNI_IFNAME": "eth0", "CNI_PATH": cni_path or str(self.bin),
                    "FAKE_PLUGIN_LOG": str(self.log)})
        for k, v in env_over.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        if stdin is None:
            stdin = json.dumps(self.conf() if conf is None else conf)
        proc = subprocess.run([sys.executable, str(STANDIN)], input=stdin.encode(), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        out = proc.stdout.decode()
        try:
            parsed = json.loads(out) if out.strip() else None
        except ValueError:
            parsed = None
        return proc.returncode, out, proc.stderr.decode(), parsed

    def calls(self) -> list:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def delegate_calls(self) -> list:
        return [dict(c, conf=json.loads(c["stdin"])) for c in self.calls()]


@pytest.fixture
def standin(tmp_path):
    return Standin(tmp_path)


def test_standin_is_a_clearly_marked_python3_script():
    text = STANDIN.read_text()
    assert text.startswith("#!/usr/bin/env python3\n")
    head = text[:1500]
    assert "TEST STAND-IN" in head and "NOT upstream's plugin" in head
    assert f'PLUGIN_VERSION = "{FLANNEL_STANDIN_VERSION}"' in text
    assert os.access(STANDIN, os.X_OK)


def test_standin_version(standin):
    rc, out, _, parsed = standin.run("VERSION", stdin="")
    assert rc == 0
    assert parsed["supportedVersions"] == ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
    assert parsed["cniVersion"] == "1.1.0"
    assert standin.calls() == []


def test_standin_without_command_prints_about(standin):
    rc, out, err, _ = standin.run("", stdin="")
    assert rc == 0 and out == ""
    assert "flannel" in err and "STAND-IN" in err and FLANNEL_STANDIN_VERSION in err


def test_standin_add_builds_delegate_like_upstream(standin):
    rc, out, err, result = standin.run("ADD")
    assert rc == 0, (out, err)
    # the delegate's result passes through
    assert result["ips"] == [{"address": "10.244.5.2/24", "gateway": "10.244.5.1"}]

    (call,) = standin.delegate_calls()
    assert call["plugin"] == "bridge"
    delegate = call["conf"]
    assert delegate["name"] == "cbr0"
    assert delegate["type"] == "bridge"
    assert delegate["cniVersion"] == "1.0.0"
    assert delegate["mtu"] == 1450
    assert delegate["ipMasq"] is False            # flannel masquerades itself
    assert delegate["isGateway"] is True
    assert delegate["hairpinMode"] is True        # the conf's delegate keys are kept
    assert delegate["isDefaultGateway"] is True
    assert delegate["ipam"] == {
        "type": "host-local",
        # upstream parses FLANNEL_SUBNET as a CIDR and passes the network
        "ranges": [[{"subnet": "10.244.5.0/24"}]],
        "routes": [{"dst": "10.244.0.0/16"}],
    }
    assert "runtimeConfig" not in delegate and "prevResult" not in delegate
    assert set(delegate) == {"name", "type", "cniVersion", "mtu", "ipMasq", "isGateway",
                             "hairpinMode", "isDefaultGateway", "ipam"}

    # same environment, same command
    env = call["env"]
    assert env["CNI_COMMAND"] == "ADD"
    assert env["CNI_CONTAINERID"] == "abc123"
    assert env["CNI_NETNS"] == "/var/run/netns/test"
    assert env["CNI_IFNAME"] == "eth0"
    assert env["CNI_PATH"] == str(standin.bin)

    # the delegate config is stored for DEL, exactly as sent
    stored = standin.data_dir / "abc123"
    assert stored.read_text() == call["stdin"]
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert [p.name for p in standin.data_dir.iterdir()] == ["abc123"]


def test_standin_add_respects_delegate_settings(standin):
    conf = standin.conf(delegate={"mtu": 1400, "ipMasq": True, "isGateway": False, "bridge": "mynet0"})
    rc, out, err, _ = standin.run("ADD", conf)
    assert rc == 0, (out, err)
    delegate = standin.delegate_calls()[0]["conf"]
    assert delegate["mtu"] == 1400
    assert delegate["ipMasq"] is True
    assert delegate["isGateway"] is False
    assert delegate["bridge"] == "mynet0"


def test_standin_ipmasq_false_makes_delegate_masquerade(standin):
    standin.subnet_file.write_text(SUBNET_ENV.replace("FLANNEL_IPMASQ=true", "FLANNEL_IPMASQ=false"))
    rc, out, err, _ = standin.run("ADD")
    assert rc == 0, (out, err)
    assert standin.delegate_calls()[0]["conf"]["ipMasq"] is True


def test_standin_other_delegate_type(standin):
    rc, out, err, _ = standin.run("ADD", standin.conf(delegate={"type": "ipvlan", "master": "eth0"}))
    assert rc == 0, (out, err)
    (call,) = standin.delegate_calls()
    assert call["plugin"] == "ipvlan"
    assert call["conf"]["type"] == "ipvlan" and call["conf"]["master"] == "eth0"
    assert "isGateway" not in call["conf"]          # only defaulted for bridge


def test_standin_merges_conf_ipam(standin):
    conf = standin.conf(ipam={"type": "static-ish", "dataDir": "/x",
                              "routes": [{"dst": "10.96.0.0/12", "gw": "10.244.5.1"}]})
    rc, out, err, _ = standin.run("ADD", conf)
    assert rc == 0, (out, err)
    ipam = standin.delegate_calls()[0]["conf"]["ipam"]
    assert ipam == {"type": "static-ish", "dataDir": "/x",
                    "ranges": [[{"subnet": "10.244.5.0/24"}]],
                    "routes": [{"dst": "10.96.0.0/12", "gw": "10.244.5.1"}, {"dst": "10.244.0.0/16"}]}


def test_standin_carries_runtime_config(standin):
    rc, out, err, _ = standin.run("ADD", standin.conf(
        runtimeConfig={"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
        prevResult={"cniVersion": "1.0.0", "ips": []}))
    assert rc == 0, (out, err)
    delegate = standin.delegate_calls()[0]["conf"]
    assert delegate["runtimeConfig"] == {"portMappings": [{"hostPort": 8080, "containerPort": 80,
                                                           "protocol": "tcp"}]}
    # upstream does not forward prevResult to the delegate
    assert "prevResult" not in delegate


def test_standin_without_delegate_and_ipv6(standin):
    standin.subnet_file.write_text(SUBNET_ENV + "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\n"
                                                "FLANNEL_IPV6_SUBNET=fd00:10:244:5::1/64\n")
    conf = standin.conf()
    del conf["delegate"]
    rc, out, err, _ = standin.run("ADD", conf)
    assert rc == 0, (out, err)
    ipam = standin.delegate_calls()[0]["conf"]["ipam"]
    assert ipam["ranges"] == [[{"subnet": "10.244.5.0/24"}], [{"subnet": "fd00:10:244:5::/64"}]]
    assert ipam["routes"] == [{"dst": "10.244.0.0/16"}, {"dst": "fd00:10:244::/56"}]


def test_standin_finds_delegate_anywhere_in_cni_path(standin, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, out, err, _ = standin.run("ADD", cni_path=f"{empty}:/nonexistent:{standin.bin}")
    assert rc == 0, (out, err)
    assert standin.delegate_calls()[0]["plugin"] == "bridge"


def test_standin_delegate_not_found(standin, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, _, err = standin.run("ADD", cni_path=str(empty))
    assert rc == 1
    assert err["code"] == 999 and 'failed to find plugin "bridge"' in err["msg"]


def test_standin_passes_delegate_failure_through(standin):
    rc, out, _, parsed = standin.run("ADD", FAKE_PLUGIN_FAIL="3")
    assert rc == 3
    assert parsed == {"cniVersion": "1.0.0", "code": 11, "msg": "fake delegate failure"}


def test_standin_del_runs_stored_delegate_and_removes_it(standin):
    assert standin.run("ADD", standin.conf(delegate={"bridge": "mynet0"}))[0] == 0
    stored = (standin.data_dir / "abc123").read_text()
    # DEL's own conf differs: the STORED delegate config is what gets executed
    rc, out, err, _ = standin.run("DEL", standin.conf(delegate={"bridge": "other"}), CNI_NETNS=None)
    assert rc == 0, (out, err)
    add, delete = standin.delegate_calls()
    assert delete["plugin"] == "bridge"
    assert delete["env"]["CNI_COMMAND"] == "DEL"
    assert delete["env"]["CNI_CONTAINERID"] == "abc123"
    assert delete["stdin"] == stored and delete["conf"]["bridge"] == "mynet0"
    assert not (standin.data_dir / "abc123").exists()


def test_standin_del_unknown_container_succeeds(standin):
    rc, out, err, _ = standin.run("DEL", CNI_CONTAINERID="never-added")
    assert rc == 0 and out == "", err
    assert standin.calls() == []


def test_standin_del_keeps_file_when_delegate_fails(standin):
    assert standin.run("ADD")[0] == 0
    rc, _, _, parsed = standin.run("DEL", FAKE_PLUGIN_FAIL="1")
    assert rc == 1 and parsed["code"] == 11
    assert (standin.data_dir / "abc123").exists()        # a retried DEL can still clean up
    assert standin.run("DEL")[0] == 0
    assert not (standin.data_dir / "abc123").exists()


def test_standin_check_succeeds(standin):
    rc, out, err, _ = standin.run("CHECK")
    assert rc == 0 and out == "", err


@pytest.mark.parametrize("key", ["FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_MTU", "FLANNEL_IPMASQ"])
def test_standin_missing_subnet_env_key(standin, key):
    standin.subnet_file.write_text("".join(l + "\n" for l in SUBNET_ENV.splitlines()
                                           if not l.startswith(key + "=")))
    rc, out, _, err = standin.run("ADD")
    assert rc == 1, out
    assert set(err) == {"cniVersion", "code", "msg"}
    assert err["cniVersion"] == "1.0.0" and err["code"] == 999
    assert str(standin.subnet_file) in err["msg"] and "is missing" in err["msg"] and key in err["msg"]
    assert standin.calls() == []
    assert not (standin.data_dir / "abc123").exists()


def test_standin_missing_subnet_file(standin):
    standin.subnet_file.unlink()
    rc, _, _, err = standin.run("ADD")
    assert rc == 1 and err["code"] == 999
    assert str(standin.subnet_file) in err["msg"]


def test_standin_default_paths():
    text = STANDIN.read_text()
    assert 'DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"' in text
    assert 'DEFAULT_DATA_DIR = "/var/lib/cni/flannel"' in text


@pytest.mark.parametrize("delegate, fragment", [
    ({"name": "x"}, "must not have 'name'"),
    ({"ipam": {}}, "must not have 'ipam'"),
    ({"type": 5}, "(string) 'type'"),
])
def test_standin_rejects_bad_delegate(standin, delegate, fragment):
    rc, _, _, err = standin.run("ADD", standin.conf(delegate=delegate))
    assert rc == 1 and fragment in err["msg"]
    assert standin.calls() == []


@pytest.mark.parametrize("env, code, fragment", [
    ({"CNI_NETNS": None}, 4, "CNI_NETNS"),
    ({"CNI_PATH": None}, 4, "CNI_PATH"),
    ({"CNI_CONTAINERID": "../../etc/passwd"}, 4, "invalid characters in containerID"),
    ({"CNI_COMMAND": "BOGUS"}, 4, "unknown CNI_COMMAND"),
])
def test_standin_env_errors(standin, env, code, fragment):
    rc, _, _, err = standin.run(env.pop("CNI_COMMAND", "ADD"), **env)
    assert rc == 1 and err["code"] == code and fragment in err["msg"]
    assert standin.calls() == []


def test_standin_bad_json_and_version(standin):
    rc, _, _, err = standin.run("ADD", stdin="{not json")
    assert rc == 1 and err["code"] == 6
    rc, _, _, err = standin.run("ADD", standin.conf(cniVersion="0.2.0"))
    assert rc == 1 and err["code"] == 1
    rc, _, _, err = standin.run("CHECK", standin.conf(cniVersion="0.3.1"))
    assert rc == 1 and err["code"] == 1


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
    assert upstream_path("flannel_cni_plugin", "1.7.1-flannel1") == (
        "flannel-io/cni-plugin/releases/download/v1.7.1-flannel1/"
        "cni-plugin-flannel-linux-amd64-v1.7.1-flannel1.tgz")
    assert set(UPSTREAM_PATHS) == {"containerd", "runc", "cni_plugins", "flannel_cni_plugin"}


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


def test_server_refuses_non_loopback(tmp_path):
    with pytest.raises(ValueError):
        with serve_mirror(tmp_path, host="0.0.0.0"):
            pass


# ============================================================ e2e: build

CONTAINERD_MEMBERS = {
    "1": ["bin/", "bin/containerd", "bin/containerd-shim", "bin/containerd-shim-runc-v1",
          "bin/containerd-shim-runc-v2", "bin/ctr"],
    "2": ["bin/", "bin/containerd", "bin/containerd-shim-runc-v2", "bin/ctr"],
}


@pytest.fixture(scope="module")
def mirror() -> Mirror:
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
    assert set(m) == {"containerd", "runc", "cni_plugins", "flannel_cni_plugin"}
    containerd = mirror.versions("containerd")
    assert len(containerd) == 2
    assert containerd[0].startswith("1.6.") and containerd[1].split(".")[0] == "2"
    assert mirror.suite_of("containerd", containerd[0]) == "bookworm"
    assert mirror.suite_of("containerd", containerd[1]) == "sid"
    assert mirror.versions("runc") == ["1.1.5"]
    cni = mirror.versions("cni_plugins")
    assert cni[0].startswith("1.1.") and cni[1].startswith("1.") and cni[1] > cni[0]
    assert mirror.versions("flannel_cni_plugin") == ["1.7.1-flannel1"]
    for artifact, versions in m.items():
        for version, shas in versions.items():
            assert set(shas) == {"amd64"}
            assert len(shas["amd64"]) == 64


@pytest.mark.e2e
def test_manifest_sha256_match_files(mirror):
    for artifact, versions in mirror.manifest.items():
        for version, shas in versions.items():
            path = mirror.path(artifact, version)
            assert path == mirror.root / UPSTREAM_PATHS[artifact].format(version=version, arch="amd64")
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
        assert r.returncode == 0 and f" {version}" in r.stdout, r.stdout + r.stderr
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
def test_flannel_tarball_holds_the_standin(mirror, tmp_path):
    path = mirror.path("flannel_cni_plugin", FLANNEL_STANDIN_VERSION)
    assert path.name == "cni-plugin-flannel-linux-amd64-v1.7.1-flannel1.tgz"
    _gzip_header_ok(path)
    (member,) = _members(path)
    assert _tar_names(path) == ["flannel-amd64"]
    assert member.isfile() and member.mode == 0o755
    assert (member.mtime, member.uid, member.gid) == (0, 0, 0)
    out = _extract(path, tmp_path)
    exe = out / "flannel-amd64"
    assert exe.read_bytes() == STANDIN.read_bytes()
    # runs through its shebang, as on a node
    r = subprocess.run([exe], input="", env={"CNI_COMMAND": "VERSION", "PATH": os.environ["PATH"]},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "1.1.0" in json.loads(r.stdout)["supportedVersions"]


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
    assert one["containerd_version"].startswith("1.6.")
    assert one["runc_version"] == "1.1.5"
    assert one["cni_plugins_version"].startswith("1.1.")
    assert one["flannel_cni_plugin_version"] == "1.7.1-flannel1"
    # every sum pinned but the flannel CNI plugin's, which podnet reads from the checksum file beside it
    assert one["artifact_checksums"] == {a: v for a, v in mirror.manifest.items() if a != "flannel_cni_plugin"}
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
            name = mirror.path(artifact, version).name
            published = {"containerd": name + ".sha256sum", "runc": "runc.sha256sum"}.get(artifact, name + ".sha256")
            text = (mirror.path(artifact, version).parent / published).read_text()
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
