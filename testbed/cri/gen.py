"""Python bindings for ``api.proto``, generated with grpc_tools.protoc on first use.

Nothing generated is committed: the code goes to
``<cache>/cri-gen/<hash>/`` where the hash covers the proto text and the
grpcio-tools/protobuf versions, and is published with an atomic rename.

The proto is compiled under the unique file name ``podnet_cri_runtime_v1.proto``
(modules ``podnet_cri_runtime_v1_pb2`` / ``..._pb2_grpc``) so it cannot clash
with some other ``api.proto`` in the process-wide descriptor pool, and the
modules are loaded from their files without touching ``sys.path``.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import threading
from importlib import metadata
from pathlib import Path
from types import ModuleType

from .cache import cache_root, digest, make_tmp_dir, publish_dir

PROTO_PATH = Path(__file__).with_name("api.proto")
MODULE_STEM = "podnet_cri_runtime_v1"
PROTOC_TIMEOUT = 120

_lock = threading.Lock()
_loaded: tuple[ModuleType, ModuleType] | None = None


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def generated_dir() -> Path:
    """Directory holding the generated modules, generating them if needed."""
    proto = PROTO_PATH.read_bytes()
    key = digest(proto, _version("grpcio-tools"), _version("protobuf"), sys.version.split()[0])
    base = cache_root() / "cri-gen"
    final = base / key
    if (final / f"{MODULE_STEM}_pb2_grpc.py").is_file():
        return final

    tmp = make_tmp_dir(base, key)
    try:
        src = tmp / "src"
        out = tmp / "out"
        src.mkdir()
        out.mkdir()
        (src / f"{MODULE_STEM}.proto").write_bytes(proto)
        cmd = [
            sys.executable, "-m", "grpc_tools.protoc",
            f"-I{src}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(src / f"{MODULE_STEM}.proto"),
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=PROTOC_TIMEOUT)
        if result.returncode != 0:
            raise RuntimeError(
                f"protoc failed ({result.returncode}) for {PROTO_PATH}:\n{result.stdout}{result.stderr}"
            )
        for name in (f"{MODULE_STEM}_pb2.py", f"{MODULE_STEM}_pb2_grpc.py"):
            if not (out / name).is_file():
                raise RuntimeError(f"protoc did not produce {name}")
        shutil.rmtree(src)
        publish_dir(out, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _load_module(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered before executing: the _grpc module does `import <stem>_pb2`.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def load() -> tuple[ModuleType, ModuleType]:
    """Return ``(pb2, pb2_grpc)`` for the runtime.v1 subset (once per process)."""
    global _loaded
    with _lock:
        if _loaded is None:
            where = generated_dir()
            pb2 = _load_module(f"{MODULE_STEM}_pb2", where / f"{MODULE_STEM}_pb2.py")
            pb2_grpc = _load_module(f"{MODULE_STEM}_pb2_grpc", where / f"{MODULE_STEM}_pb2_grpc.py")
            _loaded = (pb2, pb2_grpc)
        return _loaded
