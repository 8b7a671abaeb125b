"""Tests for the CRI helpers in testbed/cri.

Unit tests: the generated bindings' field numbers and RPC paths against
upstream runtime.v1, the pause binary and image archive, the ssh forward's
lifecycle (with a stand-in ssh).

e2e (``-m e2e``): a private containerd (Debian's, installed with apt if
missing) started on this host with its own root/state/socket in a temp dir
and an empty CNI conf dir, so it never configures any network. It checks
Version, Status (NetworkReady must be false there) and that the pause image
imports under the sandbox image name. It never calls RunPodSandbox.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from testbed.cri import build_pause_binary, build_pause_image, forward_unix_socket
from testbed.cri.client import CriClient, CriError
from testbed.cri.forward import ForwardError, _forward_command
from testbed.cri.gen import load
from testbed.cri.pause import image_archive_bytes, normalized_image_name

SANDBOX_IMAGE = "registry.k8s.io/pause:3.10"

# Field numbers from upstream k8s.io/cri-api pkg/apis/runtime/v1/api.proto.
UPSTREAM_FIELDS = {
    "VersionRequest": {"version": 1},
    "VersionResponse": {"version": 1, "runtime_name": 2, "runtime_version": 3, "runtime_api_version": 4},
    "PodSandboxMetadata": {"name": 1, "uid": 2, "namespace": 3, "attempt": 4},
    "LinuxPodSandboxConfig": {"cgroup_parent": 1},
    "PodSandboxConfig": {
        "metadata": 1, "hostname": 2, "log_directory": 3, "labels": 6, "annotations": 7, "linux": 8,
    },
    "RunPodSandboxRequest": {"config": 1, "runtime_handler": 2},
    "RunPodSandboxResponse": {"pod_sandbox_id": 1},
    "StopPodSandboxRequest": {"pod_sandbox_id": 1},
    "RemovePodSandboxRequest": {"pod_sandbox_id": 1},
    "PodSandboxStatusRequest": {"pod_sandbox_id": 1, "verbose": 2},
    "PodIP": {"ip": 1},
    "PodSandboxNetworkStatus": {"ip": 1, "additional_ips": 2},
    "PodSandboxStatus": {
        "id": 1, "metadata": 2, "state": 3, "created_at": 4, "network": 5,
        "labels": 7, "annotations": 8, "runtime_handler": 9,
    },
    "PodSandboxStatusResponse": {"status": 1, "info": 2},
    "PodSandboxStateValue": {"state": 1},
    "PodSandboxFilter": {"id": 1, "state": 2, "label_selector": 3},
    "ListPodSandboxRequest": {"filter": 1},
    "PodSandbox": {
        "id": 1, "metadata": 2, "state": 3, "created_at": 4, "labels": 5, "annotations": 6, "runtime_handler": 7,
    },
    "ListPodSandboxResponse": {"items": 1},
    "StatusRequest": {"verbose": 1},
    "StatusResponse": {"status": 1, "info": 2},
    "RuntimeStatus": {"conditions": 1},
    "RuntimeCondition": {"type": 1, "status": 2, "reason": 3, "message": 4},
}

UPSTREAM_RPCS = {
    "Version": ("VersionRequest", "VersionResponse"),
    "RunPodSandbox": ("RunPodSandboxRequest", "RunPodSandboxResponse"),
    "StopPodSandbox": ("StopPodSandboxRequest", "StopPodSandboxResponse"),
    "RemovePodSandbox": ("RemovePodSandboxRequest", "RemovePodSandboxResponse"),
    "PodSandboxStatus": ("PodSandboxStatusRequest", "PodSandboxStatusResponse"),
    "ListPodSandbox": ("ListPodSandboxRequest", "ListPodSandboxResponse"),
    "Status": ("StatusRequest", "StatusResponse"),
}


# --------------------------------------------------------------------------
# Generated bindings
# --------------------------------------------------------------------------


def test_proto_field_numbers_match_upstream():
    pb2, _ = load()
    assert pb2.DESCRIPTOR.package == "runtime.v1"
    mismatches = []
    for message, fields in UPSTREAM_FIELDS.items():
        descriptor = pb2.DESCRIPTOR.message_types_by_name[message]
        for field, number in fields.items():
            got = descriptor.fields_by_name[field].number
            if got != number:
                mismatches.append(f"{message}.{field} = {got}, upstream {number}")
    assert not mismatches


def test_proto_field_types():
    pb2, _ = load()
    F = pb2.RuntimeCondition.DESCRIPTOR.fields_by_name["status"]
    assert F.type == F.TYPE_BOOL
    assert pb2.PodSandboxStatus.DESCRIPTOR.fields_by_name["network"].message_type.name == "PodSandboxNetworkStatus"
    assert pb2.PodSandboxStatus.DESCRIPTOR.fields_by_name["state"].enum_type.name == "PodSandboxState"
    assert pb2.PodSandboxConfig.DESCRIPTOR.fields_by_name["labels"].message_type.GetOptions().map_entry
    assert pb2.PodSandboxState.Value("SANDBOX_READY") == 0
    assert pb2.PodSandboxState.Value("SANDBOX_NOTREADY") == 1


def test_rpc_paths_match_upstream():
    pb2, _ = load()
    service = pb2.DESCRIPTOR.services_by_name["RuntimeService"]
    assert service.full_name == "runtime.v1.RuntimeService"
    methods = {m.name: (m.input_type.name, m.output_type.name) for m in service.methods}
    assert methods == UPSTREAM_RPCS


def test_wire_format_roundtrip():
    pb2, _ = load()
    config = pb2.PodSandboxConfig(
        metadata=pb2.PodSandboxMetadata(name="p", uid="u", namespace="default"),
        hostname="p",
        labels={"a": "b"},
    )
    data = pb2.RunPodSandboxRequest(config=config, runtime_handler="runc").SerializeToString()
    # field 1 (config), wire type 2 = 0x0a; runtime_handler (2, LEN) = 0x12
    assert data[0] == 0x0A
    assert b"\x12\x04runc" in data
    assert pb2.RunPodSandboxRequest.FromString(data).config.metadata.uid == "u"


# --------------------------------------------------------------------------
# Pause binary and image
# --------------------------------------------------------------------------


def _is_static_elf(path: Path) -> bool:
    """True if the ELF64 has no PT_INTERP program header (no dynamic loader)."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2  # ELF64
    e_phoff = int.from_bytes(data[0x20:0x28], "little")
    e_phentsize = int.from_bytes(data[0x36:0x38], "little")
    e_phnum = int.from_bytes(data[0x38:0x3A], "little")
    for i in range(e_phnum):
        off = e_phoff + i * e_phentsize
        if int.from_bytes(data[off:off + 4], "little") == 3:  # PT_INTERP
            return False
    return True


def test_pause_binary_is_static_and_cached():
    first = build_pause_binary()
    second = build_pause_binary()
    assert first == second
    assert _is_static_elf(first)
    assert stat.S_IMODE(first.stat().st_mode) == 0o755


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_pause_binary_exits_on_signal(sig):
    proc = subprocess.Popen([str(build_pause_binary())])
    try:
        time.sleep(0.3)
        assert proc.poll() is None, "pause must keep running"
        proc.send_signal(sig)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_pause_binary_reaps_children():
    # Run pause as the parent of a short-lived child: exec pause from a
    # process that forked first, so the child is pause's.
    code = textwrap.dedent("""
        import os, sys, time
        pid = os.fork()
        if pid == 0:
            time.sleep(0.3)
            os._exit(0)
        os.execv(sys.argv[1], [sys.argv[1]])
    """)
    proc = subprocess.Popen([sys.executable, "-c", code, str(build_pause_binary())])
    try:
        time.sleep(1.5)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        zombies = [c for c in children if Path(f"/proc/{c}/stat").exists()
                   and Path(f"/proc/{c}/stat").read_text().split(")")[-1].split()[0] == "Z"]
        assert not zombies, f"pause left zombies: {zombies}"
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def test_pause_image_archive_layout(tmp_path):
    a = build_pause_image(SANDBOX_IMAGE, tmp_path / "a.tar")
    b = build_pause_image(SANDBOX_IMAGE, tmp_path / "sub" / "b.tar")
    assert a == tmp_path / "a.tar"
    assert a.read_bytes() == b.read_bytes(), "archive must be deterministic"

    with tarfile.open(a) as outer:
        names = outer.getnames()
        manifest = json.load(outer.extractfile("manifest.json"))
        assert len(manifest) == 1
        entry = manifest[0]
        assert entry["RepoTags"] == [SANDBOX_IMAGE]
        config_bytes = outer.extractfile(entry["Config"]).read()
        (layer_name,) = entry["Layers"]
        layer_bytes = outer.extractfile(layer_name).read()
        assert set(names) == {"manifest.json", entry["Config"], layer_name}
        assert all(m.mtime == 0 and m.uid == 0 for m in outer.getmembers())

    config = json.loads(config_bytes)
    assert entry["Config"] == hashlib.sha256(config_bytes).hexdigest() + ".json"
    assert config["architecture"] == "amd64"
    assert config["os"] == "linux"
    assert config["config"]["Entrypoint"] == ["/pause"]
    assert config["rootfs"] == {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_bytes).hexdigest()]}

    with tarfile.open(fileobj=io.BytesIO(layer_bytes)) as layer:
        (member,) = layer.getmembers()
        assert member.name == "pause" and member.isfile()
        assert member.mode == 0o755
        assert layer.extractfile(member).read() == build_pause_binary().read_bytes()


def test_pause_image_name_handling():
    assert b"\"RepoTags\":[\"example.org/p:1\"]" in image_archive_bytes("example.org/p:1", b"x")
    with pytest.raises(ValueError):
        image_archive_bytes("registry.k8s.io/pause@sha256:" + "0" * 64, b"x")
    assert normalized_image_name("registry.k8s.io/pause:3.10") == "registry.k8s.io/pause:3.10"
    assert normalized_image_name("pause:3.10") == "docker.io/library/pause:3.10"
    assert normalized_image_name("rancher/mirrored-pause") == "docker.io/rancher/mirrored-pause:latest"
    assert normalized_image_name("localhost:5000/pause") == "localhost:5000/pause:latest"


# --------------------------------------------------------------------------
# ssh forward, with a stand-in "ssh" that forwards unix sockets locally
# --------------------------------------------------------------------------

FAKE_SSH = textwrap.dedent("""\
    #!{python}
    # Stand-in for `ssh -N -L LOCAL:REMOTE ... host`: relays LOCAL to REMOTE on this machine.
    import os, socket, sys, threading
    args = sys.argv[1:]
    with open(os.environ["FAKE_SSH_ARGS"], "w") as f:
        f.write("\\0".join(args))
    if os.environ.get("FAKE_SSH_FAIL"):
        sys.stderr.write("connect to host: Connection refused\\n")
        sys.exit(255)
    local, remote = args[args.index("-L") + 1].split(":", 1)
    server = socket.socket(socket.AF_UNIX)
    server.bind(local)
    server.listen()
    def pump(a, b):
        while data := a.recv(65536):
            b.sendall(data)
        b.shutdown(socket.SHUT_WR)
    while True:
        conn, _ = server.accept()
        up = socket.socket(socket.AF_UNIX)
        up.connect(remote)
        threading.Thread(target=pump, args=(conn, up), daemon=True).start()
        threading.Thread(target=pump, args=(up, conn), daemon=True).start()
""")


@pytest.fixture
def fake_ssh(tmp_path, monkeypatch):
    script = tmp_path / "bin" / "ssh"
    script.parent.mkdir()
    script.write_text(FAKE_SSH.format(python=sys.executable))
    script.chmod(0o755)
    args_file = tmp_path / "ssh.args"
    monkeypatch.setenv("FAKE_SSH_ARGS", str(args_file))
    return script, args_file


def test_forward_command_puts_options_first():
    cmd = _forward_command(["ssh", "-i", "key", "-o", "ControlPath=/x", "root@10.0.0.2"], "/tmp/l.sock", "/run/c.sock")
    assert cmd[:2] == ["ssh", "-N"]
    assert cmd.index("ControlPath=none") < cmd.index("ControlPath=/x")
    assert "ExitOnForwardFailure=yes" in cmd and "StreamLocalBindUnlink=yes" in cmd
    assert cmd[cmd.index("-L") + 1] == "/tmp/l.sock:/run/c.sock"
    assert cmd[-1] == "root@10.0.0.2"


def test_forward_unix_socket_relays_and_cleans_up(fake_ssh, tmp_path):
    script, args_file = fake_ssh
    remote = tmp_path / "remote.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(remote))
    server.listen()

    def echo_once():
        conn, _ = server.accept()
        with conn:
            conn.sendall(conn.recv(100).upper())

    threading.Thread(target=echo_once, daemon=True).start()
    with forward_unix_socket([str(script), "root@node"], remote_socket=str(remote)) as local:
        assert stat.S_ISSOCK(os.stat(local).st_mode)
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(5)
            client.connect(local)
            client.sendall(b"ping")
            assert client.recv(100) == b"PING"
        args = args_file.read_text().split("\0")
        assert args[-1] == "root@node" and "-N" in args
        ssh_pids = _pids_running(script)
        assert ssh_pids
    assert not os.path.exists(local)
    assert not os.path.exists(os.path.dirname(local))
    _wait_gone(ssh_pids)
    server.close()


def test_forward_unix_socket_kills_ssh_on_exception(fake_ssh, tmp_path):
    script, _ = fake_ssh
    with pytest.raises(KeyError):
        with forward_unix_socket([str(script), "root@node"], remote_socket=str(tmp_path / "r.sock")) as local:
            ssh_pids = _pids_running(script)
            raise KeyError("boom")
    assert not os.path.exists(local)
    _wait_gone(ssh_pids)


def test_forward_unix_socket_reports_ssh_failure(fake_ssh, monkeypatch):
    script, _ = fake_ssh
    monkeypatch.setenv("FAKE_SSH_FAIL", "1")
    with pytest.raises(ForwardError, match="Connection refused"):
        with forward_unix_socket([str(script), "root@node"], timeout=10):
            pass


def _pids_running(script: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if str(script).encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
    return pids


def _wait_gone(pids: list[int], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while any(Path(f"/proc/{p}").exists() and "Z" not in _state(p) for p in pids):
        assert time.monotonic() < deadline, f"processes still running: {pids}"
        time.sleep(0.05)


def _state(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    return "X"


# --------------------------------------------------------------------------
# e2e: a private containerd on this host, no CNI network
# --------------------------------------------------------------------------

APT_TIMEOUT = 900


def _ensure_containerd_installed() -> str | None:
    """Install Debian's containerd if missing. Returns None, or why it is unavailable."""
    if shutil.which("containerd") and shutil.which("ctr"):
        return None
    if os.geteuid() != 0:
        return "containerd is not installed and installing it needs root"
    if not shutil.which("apt-get"):
        return "containerd is not installed and there is no apt-get"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "--no-install-recommends", "containerd"]
    errors = []
    for attempt in range(2):
        if attempt:
            update = subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=600", "update"],
                                    capture_output=True, text=True, timeout=APT_TIMEOUT, env=env)
            errors.append(f"apt-get update: rc={update.returncode} {update.stderr.strip()[-500:]}")
        result = subprocess.run(install, capture_output=True, text=True, timeout=APT_TIMEOUT, env=env)
        if result.returncode == 0 and shutil.which("containerd") and shutil.which("ctr"):
            return None
        errors.append(f"apt-get install containerd: rc={result.returncode} {result.stderr.strip()[-500:]}")
    return "containerd could not be installed: " + " | ".join(errors)


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix):
                found.append(point)
    return sorted(found, key=len, reverse=True)


CONTAINERD_CONFIG = """\
version = 2
root = "{root}/root"
state = "{root}/state"
disabled_plugins = []

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{root}/cni-bin"
  conf_dir = "{root}/cni-conf"
"""


@pytest.fixture(scope="module")
def host_containerd():
    """A containerd of our own, on this host, with no CNI configuration.

    Yields ``(socket_path, workdir)``; the process is stopped and its dirs
    removed afterwards whatever happens.
    """
    reason = _ensure_containerd_installed()
    if reason:
        pytest.skip(reason)
    workdir = Path(tempfile.mkdtemp(prefix="podnet-ctrd-"))
    sock = workdir / "containerd.sock"
    for sub in ("root", "state", "opt", "cni-bin", "cni-conf"):
        (workdir / sub).mkdir()
    config = workdir / "config.toml"
    config.write_text(CONTAINERD_CONFIG.format(root=workdir, sock=sock, sandbox_image=SANDBOX_IMAGE))
    log_path = workdir / "containerd.log"
    proc = None
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                ["containerd", "--config", str(config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while not sock.exists():
            if proc.poll() is not None:
                pytest.fail(f"containerd exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"containerd socket did not appear in 60s:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.1)
        yield sock, workdir
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for point in _mounts_under(workdir):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)


def _ctr(sock: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ctr", "--address", str(sock), "--namespace", "k8s.io", *args],
        capture_output=True, text=True, timeout=timeout,
    )


@pytest.mark.e2e
def test_host_containerd_cri_and_pause_import(host_containerd):
    sock, workdir = host_containerd
    with CriClient(str(sock)) as cri:
        cri.wait_ready(timeout=30)

        version = cri.version()
        assert version["runtime_name"] == "containerd"
        assert version["runtime_api_version"].startswith("v1"), version
        assert version["runtime_version"], version

        # The CRI plugin reports NetworkReady only once it has loaded a CNI
        # conflist; our conf dir is empty, so it must say not ready.
        conditions = cri.status()
        assert conditions["RuntimeReady"][0] is True, conditions
        ready, reason, message = conditions["NetworkReady"]
        assert ready is False, conditions
        assert reason == "NetworkPluginNotReady", conditions
        assert "cni" in message.lower(), conditions

        # Read-only sandbox RPCs (nothing is ever created here).
        assert cri.list_pod_sandboxes() == []
        assert cri.list_pod_sandboxes(labels={"podnet-test": "1"}) == []
        with pytest.raises(CriError) as err:
            cri.pod_sandbox_status("0" * 64)
        assert err.value.code.name == "NOT_FOUND", err.value
        # containerd 1.6: Remove of an unknown id succeeds, Stop says NOT_FOUND.
        cri.remove_pod_sandbox("0" * 64)
        with contextlib.suppress(CriError):
            cri.stop_pod_sandbox("0" * 64)

    archive = build_pause_image(SANDBOX_IMAGE, workdir / "pause.tar")
    result = _ctr(sock, "images", "import", str(archive))
    assert result.returncode == 0, result.stdout + result.stderr

    listed = _ctr(sock, "images", "ls", "-q")
    assert listed.returncode == 0, listed.stderr
    assert normalized_image_name(SANDBOX_IMAGE) in listed.stdout.split(), listed.stdout

    checked = _ctr(sock, "images", "check")
    assert checked.returncode == 0, checked.stderr
    line = next(l for l in checked.stdout.splitlines() if l.startswith(SANDBOX_IMAGE + " "))
    assert "complete" in line, checked.stdout

    # The CRI plugin picked it up: it labels the image as managed and adds
    # a ref by config digest (what RunPodSandbox resolves the sandbox image to).
    with tarfile.open(archive) as outer:
        config_ref = "sha256:" + json.load(outer.extractfile("manifest.json"))[0]["Config"].removesuffix(".json")
    deadline = time.monotonic() + 15
    while True:
        refs = {l.split()[0]: l for l in _ctr(sock, "images", "ls").stdout.splitlines()[1:] if l.strip()}
        if config_ref in refs and "io.cri-containerd.image=managed" in refs.get(SANDBOX_IMAGE, ""):
            break
        assert time.monotonic() < deadline, f"CRI plugin did not register the image: {refs}"
        time.sleep(0.2)

    # Re-importing the same archive is fine (the e2e harness may do it per run).
    again = _ctr(sock, "images", "import", str(archive))
    assert again.returncode == 0, again.stdout + again.stderr

    # The CRI plugin should see nothing of networking: no netns, no CNI state.
    assert not any((workdir / "cni-conf").iterdir())
