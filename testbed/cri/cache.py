"""Where the CRI helpers keep things they build (generated code, the pause binary).

``$PODNET_TEST_CACHE`` if set, else ``/var/cache/podnet-test``; if that cannot
be created (not root), ``~/.cache/podnet-test``. Entries are keyed by a hash of
their inputs and published atomically, so concurrent test processes and stale
entries are harmless.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

DEFAULT_CACHE = "/var/cache/podnet-test"


def cache_root() -> Path:
    configured = os.environ.get("PODNET_TEST_CACHE")
    candidates = [configured] if configured else [DEFAULT_CACHE, os.path.expanduser("~/.cache/podnet-test")]
    last_error: OSError | None = None
    for candidate in candidates:
        path = Path(candidate)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            last_error = exc
            continue
        if os.access(path, os.W_OK | os.X_OK):
            return path
    raise RuntimeError(f"no writable cache directory among {candidates}: {last_error}")


def digest(*parts: bytes | str) -> str:
    """Short hex key over ``parts`` (length-prefixed, so boundaries matter)."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()[:24]


def publish_dir(tmp_dir: Path, final_dir: Path) -> Path:
    """Rename a fully populated ``tmp_dir`` to ``final_dir``.

    If another process got there first its result is kept and ours dropped.
    """
    try:
        os.rename(tmp_dir, final_dir)
    except OSError:
        if not final_dir.is_dir():
            raise
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return final_dir


def make_tmp_dir(parent: Path, prefix: str) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{prefix}.tmp-", dir=parent))
