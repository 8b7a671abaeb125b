"""Forward a node's unix socket (containerd's) to a local unix socket over ssh."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator, Sequence

DEFAULT_REMOTE_SOCKET = "/run/containerd/containerd.sock"


class ForwardError(RuntimeError):
    pass


def _forward_command(ssh_base_cmd: Sequence[str], local: str, remote: str) -> list[str]:
    """Insert the forwarding options right after the ssh executable.

    ssh keeps the first value it sees for each -o option, so ours (placed
    first) win over any the caller passes. ControlPath=none makes this ssh own
    its connection, so killing it really ends the forward.
    """
    base = list(ssh_base_cmd)
    if not base:
        raise ValueError("ssh_base_cmd is empty")
    at = next((i for i, arg in enumerate(base) if os.path.basename(arg) == "ssh"), 0)
    options = [
        "-N",
        "-o", "ExitOnForwardFailure=yes",
        "-o", "StreamLocalBindUnlink=yes",
        "-o", "ControlMaster=no",
        "-o", "ControlPath=none",
        "-L", f"{local}:{remote}",
    ]
    return base[: at + 1] + options + base[at + 1 :]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=5)


@contextlib.contextmanager
def forward_unix_socket(
    ssh_base_cmd: Sequence[str],
    remote_socket: str = DEFAULT_REMOTE_SOCKET,
    timeout: float = 30.0,
) -> Iterator[str]:
    """Yield a local socket path forwarded to ``remote_socket`` on the node.

    ``ssh_base_cmd`` is the whole ssh invocation minus any remote command,
    e.g. ``["ssh", "-i", key, "-o", "StrictHostKeyChecking=no", "root@10.0.0.2"]``.
    The ssh process runs in the background until the block exits (normally or
    by an exception), and is then terminated and its temp dir removed.
    """
    workdir = Path(tempfile.mkdtemp(prefix="podnet-cri-fwd-"))
    local = str(workdir / "cri.sock")
    log_path = workdir / "ssh.log"
    cmd = _forward_command(ssh_base_cmd, local, remote_socket)
    proc: subprocess.Popen | None = None
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.stat(local).st_mode):
                    break
            if proc.poll() is not None:
                raise ForwardError(
                    f"ssh exited with {proc.returncode} before forwarding {remote_socket}: "
                    f"{log_path.read_text(errors='replace').strip()} (command: {cmd})"
                )
            if time.monotonic() > deadline:
                raise ForwardError(
                    f"no local socket from ssh after {timeout:.0f}s: "
                    f"{log_path.read_text(errors='replace').strip()} (command: {cmd})"
                )
            time.sleep(0.1)
        yield local
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)
