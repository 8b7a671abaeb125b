"""A tiny pause image for nodes that cannot reach a registry.

The binary is built from the C source below with ``gcc -static`` (cached under
``<cache>/pause/<hash>/pause``) and packed as a docker-archive tar (the
``docker save`` layout: ``manifest.json`` + image config JSON + one layer tar)
that ``ctr -n k8s.io images import`` loads under the caller's image name, i.e.
the toolkit's ``sandbox_image`` setting. The archive is byte-for-byte
deterministic for a given binary and name.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import tarfile
from pathlib import Path

from .cache import cache_root, digest, make_tmp_dir, publish_dir

PAUSE_C = r"""
/* pause: PID 1 of a pod sandbox. Written for podnet's tests. */
#include <signal.h>
#include <stddef.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_term(int sig) { (void)sig; _exit(0); }
static void on_chld(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }

int main(void) {
    struct sigaction sa = {0};
    sa.sa_handler = on_term;
    if (sigaction(SIGINT, &sa, NULL) < 0 || sigaction(SIGTERM, &sa, NULL) < 0) return 1;
    sa.sa_handler = on_chld;
    sa.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    if (sigaction(SIGCHLD, &sa, NULL) < 0) return 2;
    for (;;) pause();
}
"""

_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}
COMPILE_TIMEOUT = 120


def _gcc_identity(cc: str) -> str:
    out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.splitlines()[0] if out.stdout else cc


def build_static_binary(name: str, source: str, cc: str = "gcc") -> Path:
    """Compile the C ``source`` with ``gcc -static`` (once, cached under <cache>/<name>/<hash>/<name>) and return
    the path of the static binary."""
    if shutil.which(cc) is None:
        raise RuntimeError(f"{cc} not found: it is needed to build {name}")
    key = digest(source, _gcc_identity(cc), platform.machine())
    base = cache_root() / name
    final = base / key
    if (final / name).is_file():
        return final / name
    tmp = make_tmp_dir(base, key)
    try:
        out = tmp / "out"
        out.mkdir()
        (tmp / f"{name}.c").write_text(source)
        cmd = [cc, "-static", "-Os", "-s", "-Wall", "-o", str(out / name), str(tmp / f"{name}.c")]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT)
        if result.returncode != 0:
            raise RuntimeError(
                f"building {name} failed ({result.returncode}); a static libc (libc6-dev) is needed:\n"
                f"{result.stdout}{result.stderr}"
            )
        os.chmod(out / name, 0o755)
        publish_dir(out, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final / name


def build_pause_binary(cc: str = "gcc") -> Path:
    """Compile (once, cached) and return the path of the static pause binary."""
    return build_static_binary("pause", PAUSE_C, cc)


def _tar_bytes(members: list[tuple[str, bytes, int]]) -> bytes:
    """A deterministic tar: fixed mtime/owner, members in the given order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data, mode in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _check_image_name(image_name: str) -> None:
    if not image_name or "@" in image_name or any(c.isspace() for c in image_name):
        raise ValueError(f"need a tagged image name like 'registry.k8s.io/pause:3.10', got {image_name!r}")


def normalized_image_name(image_name: str) -> str:
    """The name containerd lists after import (docker's normalization).

    ``pause:3.10`` -> ``docker.io/library/pause:3.10``; a name with a registry
    host (``registry.k8s.io/pause:3.10``) is kept; a missing tag becomes ``latest``.
    """
    _check_image_name(image_name)
    name, tag = image_name, "latest"
    last = image_name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = image_name.rsplit(":", 1)
    first, _, rest = name.partition("/")
    if not rest or not ("." in first or ":" in first or first == "localhost"):
        first, rest = "docker.io", name
    if first in ("docker.io", "index.docker.io"):
        first = "docker.io"
        if "/" not in rest:
            rest = f"library/{rest}"
    name = f"{first}/{rest}"
    return f"{name}:{tag}"


def image_archive_bytes(image_name: str, pause_binary: bytes, architecture: str | None = None) -> bytes:
    """The docker-archive tar for ``pause_binary`` tagged ``image_name``."""
    return layered_image_bytes(image_name, [("pause", pause_binary, 0o755)], entrypoint=["/pause"],
                               created_by="podnet tests: static pause", architecture=architecture)


def layered_image_bytes(image_name: str, members: list[tuple[str, bytes, int]], entrypoint: list[str] | None = None,
                        env: list[str] | None = None, created_by: str = "podnet tests",
                        architecture: str | None = None) -> bytes:
    """A one-layer docker-archive tar (``docker save`` layout) holding ``members`` (path, data, mode),
    tagged ``image_name``; byte-for-byte deterministic."""
    _check_image_name(image_name)
    arch = architecture or _GOARCH.get(platform.machine(), "amd64")

    layer = _tar_bytes(members)
    layer_hex = hashlib.sha256(layer).hexdigest()

    image_config: dict = {"WorkingDir": "/"}
    if entrypoint:
        image_config["Entrypoint"] = entrypoint
    if env:
        image_config["Env"] = env
    config = {
        "architecture": arch,
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": image_config,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_hex}"]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": created_by}],
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_name = f"{hashlib.sha256(config_bytes).hexdigest()}.json"
    layer_name = f"{layer_hex}/layer.tar"

    manifest = [{"Config": config_name, "RepoTags": [image_name], "Layers": [layer_name]}]
    manifest_bytes = json.dumps(manifest, separators=(",", ":")).encode()

    return _tar_bytes([
        (config_name, config_bytes, 0o644),
        (layer_name, layer, 0o644),
        ("manifest.json", manifest_bytes, 0o644),
    ])


def build_pause_image(image_name: str, out_path: str | os.PathLike) -> Path:
    """Write the pause image archive tagged ``image_name`` to ``out_path``; return the path.

    Load it with ``ctr -n k8s.io images import <out_path>``; containerd lists
    it as :func:`normalized_image_name` of ``image_name``.
    """
    data = image_archive_bytes(image_name, build_pause_binary().read_bytes())
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
