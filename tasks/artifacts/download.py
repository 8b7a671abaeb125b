"""
Downloads on the operator's machine: each artifact once into a local cache, verified.

- The cache is keyed by sha256, so a checksum override never reuses a stale file.
- A cached file is re-hashed before use; a wrong sum means it is fetched again.
- Files are written to a temporary name and renamed, so an interrupted transfer
  never leaves a file that looks complete.
- Transient failures (connection errors, timeouts, 5xx, short reads) are retried a
  bounded number of times; a checksum mismatch stops the run, naming URL, expected
  and actual sum.
- Archives are unpacked once next to the download, also atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from tasks.artifacts.catalog import Artifact, ArtifactError, safe_members
from tasks.errors import PodnetError

CHUNK = 1 << 20
PROGRESS_MIN_BYTES = 4 << 20
DEFAULT_ATTEMPTS = 4
DEFAULT_TIMEOUT = 30  # seconds without progress (connect and per read)
MAX_DOCUMENT = 1 << 20  # a checksum file or a release API answer is far smaller

class DownloadError(PodnetError, RuntimeError):
    """The artifact could not be fetched after the allowed attempts."""

class ChecksumMismatch(DownloadError):
    """The downloaded file's sha256 is not the expected one (pinned, locked or published)."""

    def __init__(self, artifact: Artifact, actual: str):
        self.url, self.expected, self.actual = artifact.url, artifact.sha256, actual
        super().__init__(f"checksum mismatch for {artifact.name} {artifact.version} {artifact.arch} "
                         f"({artifact.url}): expected sha256 {artifact.sha256} from {artifact.sha256_source}, "
                         f"got {actual}; nothing was changed on any node")

class _Transient(Exception):
    """A failure worth another attempt."""

def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()

@dataclass
class Downloader:
    """Fetches artifacts into ``cache_dir``; memoizes within one run."""

    cache_dir: Path
    attempts: int = DEFAULT_ATTEMPTS
    timeout: float = DEFAULT_TIMEOUT
    backoff: float = 1.0
    progress: bool = True

    def __post_init__(self):
        self.cache_dir = Path(self.cache_dir).expanduser()
        self._done: dict[tuple[str, str], Path] = {}
        # pyinfra plans hosts concurrently (gevent patches threading): one download per file.
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self.fetches = 0  # network downloads made by this instance (for tests and the benchmark)

    def path_for(self, artifact: Artifact) -> Path:
        return self.cache_dir / artifact.sha256 / artifact.filename

    def fetch(self, artifact: Artifact) -> Path:
        """Ensure the verified artifact is in the cache; return its path."""
        key = (artifact.url, artifact.sha256)
        with self._locks_guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key in self._done:
                return self._done[key]
            path = self.path_for(artifact)
            if not (path.is_file() and self._verified(path, artifact.sha256)):
                self._download(artifact, path)
                _write_stamp(path, artifact.sha256)
            self._done[key] = path
            register_digest(path, artifact.sha256)
            return path

    @staticmethod
    def _verified(path: Path, sha256: str) -> bool:
        """The cached file has this sum: re-hashed unless its stamp (size, mtime) says it was verified."""
        if _read_stamp(path) == sha256:
            return True
        if sha256_of(path) == sha256:
            _write_stamp(path, sha256)
            return True
        return False

    def _download(self, artifact: Artifact, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        actual = self._retrying(artifact.url, lambda: self._transfer(artifact.url, path))
        if actual != artifact.sha256:
            path.unlink(missing_ok=True)
            raise ChecksumMismatch(artifact, actual)

    def _retrying(self, url: str, attempt_once):
        """``attempt_once()``, again after a transient failure, at most ``attempts`` times."""
        last_error: Exception | None = None
        for attempt in range(1, self.attempts + 1):
            try:
                return attempt_once()
            except _Transient as error:
                last_error = error
                if attempt < self.attempts:
                    time.sleep(self.backoff * attempt)
        raise DownloadError(f"could not download {url} after {self.attempts} attempts: {last_error}")

    def fetch_document(self, url: str, headers: dict[str, str] | None = None) -> bytes:
        """A small document (checksum file, API answer), not cached; at most MAX_DOCUMENT bytes.

        Raises DownloadError (HTTP status other than 200, too large, or transient failures
        after ``attempts`` tries).
        """
        def once() -> bytes:
            try:
                with requests.get(url, headers=headers or {}, stream=True, timeout=self.timeout) as response:
                    if response.status_code >= 500 or response.status_code == 429:
                        raise _Transient(f"HTTP {response.status_code}")
                    if response.status_code != 200:
                        raise DownloadError(f"could not download {url}: HTTP {response.status_code}")
                    total = int(response.headers.get("Content-Length") or 0)
                    body = b""
                    for chunk in response.iter_content(CHUNK):
                        body += chunk
                        if len(body) > MAX_DOCUMENT:
                            raise DownloadError(f"could not use {url}: larger than {MAX_DOCUMENT} bytes")
                    if total and len(body) != total:
                        raise _Transient(f"short read: {len(body)} of {total} bytes")
            except (requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError) as error:
                raise _Transient(str(error)) from error
            return body
        return self._retrying(url, once)

    def _transfer(self, url: str, path: Path) -> str:
        """One attempt: stream to a temporary file, rename on success; return its sha256."""
        self.fetches += 1
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        try:
            digest = hashlib.sha256()
            received = 0
            try:
                with os.fdopen(fd, "wb") as out, requests.get(url, stream=True, timeout=self.timeout) as response:
                    if response.status_code >= 500 or response.status_code == 429:
                        raise _Transient(f"HTTP {response.status_code}")
                    if response.status_code != 200:
                        raise DownloadError(f"could not download {url}: HTTP {response.status_code}")
                    total = int(response.headers.get("Content-Length") or 0)
                    shown = -1
                    for chunk in response.iter_content(CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        shown = self._show_progress(url, received, total, shown)
                    if total and received != total:
                        raise _Transient(f"short read: {received} of {total} bytes")
            except (requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError) as error:
                raise _Transient(str(error)) from error
            os.replace(tmp_name, path)
            return digest.hexdigest()
        finally:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)

    def _show_progress(self, url: str, received: int, total: int, shown: int) -> int:
        if not self.progress or total < PROGRESS_MIN_BYTES:
            return shown
        percent = received * 100 // total
        if percent // 25 > shown // 25 or percent == 100 and shown != 100:
            print(f"podnet: downloading {Path(url).name}: {percent}% of {total >> 20} MiB",
                  file=sys.stderr, flush=True)
            return percent
        return shown

    def unpack(self, artifact: Artifact) -> Path:
        """Unpack a fetched tarball once (atomically) and return the directory."""
        archive = self.fetch(artifact)
        target = archive.parent / "unpacked"
        sums_file = archive.parent / "unpacked.sha256sums.json"
        if target.is_dir() and sums_file.is_file():
            _register_unpacked(target, sums_file)
            return target
        shutil.rmtree(target, ignore_errors=True)  # from an interrupted unpack: no sums recorded yet
        members = safe_members(archive)
        staging = Path(tempfile.mkdtemp(dir=archive.parent, prefix=".unpack-"))
        try:

            with tarfile.open(archive) as tar:
                for member in members:
                    dest = staging / member.name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(member) as src, open(dest, "wb") as out:  # type: ignore[union-attr]
                        shutil.copyfileobj(src, out)
                    dest.chmod(0o755 if member.mode & 0o111 else 0o644)
            sums = {str(p.relative_to(staging)): sha256_of(p) for p in staging.rglob("*") if p.is_file()}
            os.rename(staging, target)
            _atomic_write(sums_file, json.dumps(sums, indent=1, sort_keys=True))
            _register_unpacked(target, sums_file)
        except OSError as error:
            shutil.rmtree(staging, ignore_errors=True)
            if target.is_dir() and sums_file.is_file():  # another process won the race
                _register_unpacked(target, sums_file)
                return target
            raise ArtifactError(f"could not unpack {archive}: {error}") from error
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target


# --- digests known without re-reading the file --------------------------------------
# A no-op rerun must not re-hash a few hundred MB of cached binaries on every run: the
# download's sum is recorded in a stamp beside it (valid while size and mtime are
# unchanged), and every unpacked file's sum is recorded once, at unpack time.

_known_digests: dict[Path, str] = {}


def register_digest(path: Path, sha256: str) -> None:
    _known_digests[Path(path)] = sha256


def known_digest(path: Path) -> str | None:
    """The sha256 of a cached file, if this run already knows it."""
    return _known_digests.get(Path(path))


def _register_unpacked(target: Path, sums_file: Path) -> None:
    for relative, sha256 in json.loads(sums_file.read_text()).items():
        register_digest(target / relative, sha256)


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _stamp_of(path: Path) -> str:
    status = path.stat()
    return f"{status.st_size} {status.st_mtime_ns}"


def _read_stamp(path: Path) -> str | None:
    try:
        stamp, sha256 = _stamp_path(path).read_text().split("\n")[:2]
    except (OSError, ValueError):
        return None
    return sha256 if stamp == _stamp_of(path) else None


def _write_stamp(path: Path, sha256: str) -> None:
    _atomic_write(_stamp_path(path), f"{_stamp_of(path)}\n{sha256}\n")


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp_name, path)
