"""
Downloads on the operator's machine: each artifact once into a local cache, verified, and
verified again right before it is used.

- The cache is keyed by sha256, so a checksum override never reuses a stale file.
- The cache is private (``check_private``, ``check_parents``): the cache directory and what
  podnet reads from it belong to the user running podnet and no one else can write them, nor
  replace the directory (every directory above it is owned by that user or root and writable
  by no one else unless sticky, as /tmp). Otherwise the run stops with CacheError before any
  host is touched: whoever can write the cache chooses what becomes root code on every node.
- A downloaded file is hashed as it arrives. Its sum is stamped beside it with the file's
  inode, size, mtime, ctime and mode (``stat_key``), like git's index; a later run believes
  the stamp only while all of them are unchanged. A write, chmod or rename always sets a new
  ctime, which cannot be set back, so a file changed since (even with its size and mtime
  restored) is hashed again, and fetched again when its sum is wrong.
- An archive is unpacked from the verified download: each member's sum is computed from the
  archive's bytes as it is written, and recorded with the written file's ``stat_key``. A later
  run stats the tree; a file changed, removed or added since means the tree is unpacked again.
- Right before a file is uploaded to a node it is hashed once more (``verified_upload``); the
  node hashes what it received before activating it (tasks/engine/ops.py).
- The channel (``Downloader._open``): https only; plain http only with ``allow_insecure_http``,
  with a warning; a redirect from https to anything else is refused either way.
- Files are written to a temporary name and renamed, so an interrupted transfer
  never leaves a file that looks complete.
- Transient failures (connection errors, timeouts, 5xx, short reads) are retried a
  bounded number of times; a checksum mismatch stops the run, naming URL, expected
  and actual sum.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import shutil
import stat
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

if TYPE_CHECKING:
    import requests

from tasks.artifacts.catalog import Artifact, ArtifactError, safe_members
from tasks.redact import redact_url, redact_urls
from tasks.errors import PodnetError

CHUNK = 1 << 20
PROGRESS_MIN_BYTES = 4 << 20
DEFAULT_ATTEMPTS = 4
DEFAULT_TIMEOUT = 30  # seconds without progress (connect and per read)
MAX_DOCUMENT = 1 << 20  # a checksum file or a release API answer is far smaller
UNPACKED = "unpacked"
UNPACKED_RECORD = "unpacked.sha256sums.json"

class DownloadError(PodnetError, RuntimeError):
    """The artifact could not be fetched after the allowed attempts."""


class ChecksumMismatch(DownloadError):
    """The downloaded file's sha256 is not the expected one (pinned, locked or published)."""

    def __init__(self, artifact: Artifact, actual: str):
        self.url, self.expected, self.actual = redact_url(artifact.url), artifact.sha256, actual
        super().__init__(f"checksum mismatch for {artifact.name} {artifact.version} {artifact.arch} "
                         f"({self.url}): expected sha256 {artifact.sha256} from {artifact.sha256_source}, "
                         f"got {actual}; nothing was changed on any node")


class InsecureChannel(DownloadError):
    """A URL or a redirect that would read release files or checksums without TLS, not allowed."""


class CacheError(PodnetError, ValueError):
    """The download cache can be written (or replaced) by someone other than the user running podnet."""


class _Transient(Exception):
    """A failure worth another attempt."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _answered(url: str, response) -> None:
    """An HTTP answer with the file (200); _Transient for a server error or 429 (tried again), DownloadError
    for any other status."""
    if response.status_code >= 500 or response.status_code == 429:
        raise _Transient(f"HTTP {response.status_code}")
    if response.status_code != 200:
        raise DownloadError(f"could not download {redact_url(url)}: HTTP {response.status_code}")


def stat_key(status: os.stat_result) -> str:
    """What a file's recorded sum stays valid for: inode, size, mtime, ctime (ns) and mode. ctime
    changes on every write, chmod or rename and cannot be set back (git's index relies on the same)."""
    return (f"{status.st_ino}:{status.st_size}:{status.st_mtime_ns}:{status.st_ctime_ns}:"
            f"{stat.S_IMODE(status.st_mode):o}")


# --- a private cache ---------------------------------------------------------------------

_FIX = "set download_cache_dir to a directory of your own that only you can write (the default is ~/.cache/podnet)"


def _who(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _writers(mode: int) -> str:
    return " and ".join(who for who, bit in (("its group", 0o020), ("others", 0o002)) if mode & bit)


def check_private(path: Path, status: os.stat_result | None = None) -> None:
    """
    ``path`` in the download cache belongs to the user running podnet and is writable by no one
    else; raises CacheError naming the path and the fix otherwise. (Whoever can write the cache
    chooses the binaries podnet installs as root on every node.)
    """
    status = status or os.lstat(path)
    me = os.geteuid()
    if status.st_uid != me:
        raise CacheError(f"download_cache_dir: {path} belongs to {_who(status.st_uid)}, not to you ({_who(me)}); "
                         "what is in podnet's download cache is installed as root on every node, so podnet uses "
                         f"only a cache that you alone can write: {_FIX}, or remove {path} if you know where it "
                         "came from")
    mode = stat.S_IMODE(status.st_mode)
    if mode & 0o022:
        raise CacheError(f"download_cache_dir: {path} is writable by {_writers(mode)} (mode {mode:04o}); what is in "
                         "podnet's download cache is installed as root on every node, so podnet uses only a cache "
                         f"that you alone can write: make it private (chmod go-w {path}; podnet creates its cache "
                         f"with mode 0700) or {_FIX}")


def check_parents(cache_dir: Path) -> None:
    """
    No one but the user running podnet (and root) can replace ``cache_dir``: every directory above
    it (as written and after links are resolved) belongs to that user or root and is writable by no
    one else, unless it has the sticky bit (/tmp: others cannot rename or remove what is yours).
    Raises CacheError naming the directory and the fix.
    """
    me = os.geteuid()
    parents = set(Path(os.path.abspath(cache_dir)).parents) | set(cache_dir.resolve().parents)
    for directory in sorted(parents, key=lambda d: len(d.parts)):
        status = directory.stat()
        mode = stat.S_IMODE(status.st_mode)
        if status.st_uid not in (0, me):
            raise CacheError(f"download_cache_dir: {cache_dir} is inside {directory}, which belongs to "
                             f"{_who(status.st_uid)}: they could replace the cache with their own; {_FIX}")
        if mode & 0o022 and not mode & stat.S_ISVTX:
            raise CacheError(f"download_cache_dir: {cache_dir} is inside {directory}, which {_writers(mode)} can "
                             f"write (mode {mode:04o}, no sticky bit): they could move the cache away and put their "
                             f"own in its place; {_FIX}")


def _private_dir(path: Path) -> None:
    """Create ``path`` (mode 0700) if missing; CacheError unless it is a private directory of this user."""
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        status = os.lstat(path)
    except OSError as error:
        raise CacheError(f"download_cache_dir: cannot create {path}: {error}; {_FIX}") from None
    if not stat.S_ISDIR(status.st_mode):
        raise CacheError(f"download_cache_dir: {path} is not a directory; remove it or {_FIX}")
    check_private(path, status)


def _private_subdirs(root: Path, relative: Path) -> None:
    """The directories of ``relative`` below ``root``, created with mode 0755 whatever the umask."""
    current = root
    for part in relative.parts:
        current = current / part
        if not current.is_dir():
            current.mkdir()
            current.chmod(0o755)


@contextlib.contextmanager
def _network_errors_transient():
    """A connection error, a timeout or a body cut short (requests') raised inside as _Transient: worth another
    attempt. requests is imported here and in Downloader._open, not at the top: a run that downloads nothing
    (every rerun) does not pay its import."""
    import requests

    try:
        yield
    except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as error:
        raise _Transient(str(error)) from error


@dataclass
class Downloader:
    """Fetches artifacts into ``cache_dir``; memoizes within one run.

    ``cache_dir`` is created (mode 0700) if missing; CacheError unless it is private (see the
    module docstring). ``allow_insecure_http``: the setting of that name (plain http:// URLs are
    read, with a warning; otherwise refused).
    """

    cache_dir: Path
    attempts: int = DEFAULT_ATTEMPTS
    timeout: float = DEFAULT_TIMEOUT
    backoff: float = 1.0
    progress: bool = True
    allow_insecure_http: bool = False

    def __post_init__(self):
        self.cache_dir = Path(os.path.abspath(Path(self.cache_dir).expanduser()))
        try:
            self.cache_dir.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise CacheError(f"download_cache_dir: cannot create {self.cache_dir.parent}: {error}; {_FIX}") from None
        check_parents(self.cache_dir)
        _private_dir(self.cache_dir)
        self._done: dict[tuple[str, str], Path] = {}
        self._unpacked: dict[Path, Path] = {}
        # pyinfra plans hosts concurrently (gevent patches threading): one download per file.
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._warned: set[str] = set()
        self.fetches = 0  # network downloads made by this instance (for tests and the benchmark)
        self.unpacks = 0  # archives unpacked by this instance (for tests)

    def path_for(self, artifact: Artifact) -> Path:
        return self.cache_dir / artifact.sha256 / artifact.filename

    def _lock_for(self, artifact: Artifact) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault((artifact.url, artifact.sha256), threading.Lock())

    def fetch(self, artifact: Artifact) -> Path:
        """Ensure the verified artifact is in the cache; return its path."""
        key = (artifact.url, artifact.sha256)
        with self._lock_for(artifact):
            if key in self._done:
                return self._done[key]
            path = self.path_for(artifact)
            _private_dir(path.parent)
            if not self._verified(path, artifact.sha256):
                self._download(artifact, path)
            self._done[key] = path
            register_digest(path, artifact.sha256)
            return path

    @staticmethod
    def _verified(path: Path, sha256: str) -> bool:
        """The cached file has this sum: believed from its stamp while the file's ``stat_key`` is the
        stamped one, hashed again otherwise (and stamped when right)."""
        try:
            before = os.lstat(path)
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(before.st_mode):
            return False
        check_private(path, before)
        if _read_stamp(path, before) == sha256:
            return True
        if sha256_of(path) != sha256 or stat_key(os.lstat(path)) != stat_key(before):
            return False  # other bytes, or changed while being read
        _write_stamp(path, before, sha256)
        return True

    def _download(self, artifact: Artifact, path: Path) -> None:
        actual = self._retrying(artifact.url, lambda: self._transfer(artifact.url, path))
        if actual != artifact.sha256:
            path.unlink(missing_ok=True)
            raise ChecksumMismatch(artifact, actual)
        _write_stamp(path, os.lstat(path), actual)

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
        raise DownloadError(f"could not download {redact_url(url)} after {self.attempts} attempts: "
                            f"{redact_urls(str(last_error), url)}")

    # --- the channel -----------------------------------------------------------------------

    def _open(self, url: str, headers: dict[str, str] | None = None) -> requests.Response:
        """
        GET ``url`` (streamed): the one way podnet reads release files and checksums. https only;
        http:// only with ``allow_insecure_http`` (warned once per server); a redirect to a URL
        this would not read itself, and any redirect from https to another scheme, is refused
        (InsecureChannel). The response's ``url`` is the one read, after redirects.
        """
        import requests  # here, not at the top (_network_errors_transient)

        self._check_channel(url)
        return requests.get(url, headers=headers or {}, stream=True, timeout=self.timeout,
                            hooks={"response": self._check_redirect})

    def _check_channel(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme == "https":
            return
        if parts.scheme == "http" and self.allow_insecure_http:
            server = f"http://{parts.hostname}{f':{parts.port}' if parts.port else ''}"
            if server not in self._warned:
                self._warned.add(server)
                print(f"podnet: warning: reading from {server} over plain http (allow_insecure_http = True): anyone "
                      "on the way can change the release files and the checksums read there without podnet noticing; "
                      "pin the sums (artifact_checksums) or use a lock file written over https",
                      file=sys.stderr, flush=True)
            return
        raise InsecureChannel(f"refusing to read {_shown(url)}: podnet reads release "
                              "files and checksums over https only; plain http:// needs allow_insecure_http = True")

    def _check_redirect(self, response: requests.Response, **_) -> requests.Response:
        """requests' response hook, called for every response, redirects included, before it follows one."""
        if response.is_redirect:
            target = urljoin(response.url, response.headers["location"])
            source, to = urlsplit(response.url).scheme, urlsplit(target).scheme
            if source == "https" and to != "https" or to not in ("http", "https"):
                response.close()
                raise InsecureChannel(f"refusing the redirect from {_shown(response.url)} to "
                                      f"{_shown(target)}: it leaves https, so anyone on the way could change "
                                      "the file or its checksum; use a URL that stays on https")
            self._check_channel(target)
        return response

    def fetch_document(self, url: str, headers: dict[str, str] | None = None) -> Document:
        """A small document (checksum file, API answer), not cached; at most MAX_DOCUMENT bytes,
        with the URL it was read from after redirects.

        Raises DownloadError (HTTP status other than 200, too large, an insecure channel, or
        transient failures after ``attempts`` tries).
        """
        def once() -> Document:
            with _network_errors_transient():
                with self._open(url, headers) as response:
                    _answered(url, response)
                    total = int(response.headers.get("Content-Length") or 0)
                    body = b""
                    for chunk in response.iter_content(CHUNK):
                        body += chunk
                        if len(body) > MAX_DOCUMENT:
                            raise DownloadError(f"could not use {redact_url(url)}: larger than {MAX_DOCUMENT} bytes")
                    if total and len(body) != total:
                        raise _Transient(f"short read: {len(body)} of {total} bytes")
                    return Document(body, response.url)
        return self._retrying(url, once)

    def _transfer(self, url: str, path: Path) -> str:
        """One attempt: stream to a temporary file, rename on success; return its sha256."""
        self.fetches += 1
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        try:
            digest = hashlib.sha256()
            received = 0
            with _network_errors_transient():
                with os.fdopen(fd, "wb") as out, self._open(url) as response:
                    _answered(url, response)
                    total = int(response.headers.get("Content-Length") or 0)
                    shown = -1
                    for chunk in response.iter_content(CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        shown = self._show_progress(url, received, total, shown)
                    if total and received != total:
                        raise _Transient(f"short read: {received} of {total} bytes")
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

    # --- unpacked archives -----------------------------------------------------------------

    def unpack(self, artifact: Artifact) -> Path:
        """The directory the verified archive is unpacked into: unpacked once (atomically), and again
        when the tree changed since (a file edited, removed or added)."""
        archive = self.fetch(artifact)
        with self._lock_for(artifact):
            if archive in self._unpacked:
                return self._unpacked[archive]
            target, record = archive.parent / UNPACKED, archive.parent / UNPACKED_RECORD
            sums, changed = _intact_tree(target, record, artifact.sha256)
            if sums is None:
                if changed:
                    print(f"podnet: {target} is unpacked again from its verified archive: {changed}",
                          file=sys.stderr, flush=True)
                sums = self._unpack(archive, artifact.sha256, target, record)
            for relative, sha256 in sums.items():
                register_digest(target / relative, sha256)
            self._unpacked[archive] = target
            return target

    def _unpack(self, archive: Path, archive_sha256: str, target: Path, record: Path) -> dict[str, str]:
        """Unpack into a staging directory, hashing each member's bytes as they are written, rename it
        to ``target`` and record each file's sum and ``stat_key``; return relative path -> sha256."""
        record.unlink(missing_ok=True)  # first: no record describes a tree being replaced
        shutil.rmtree(target, ignore_errors=True)
        members = safe_members(archive)
        staging = Path(tempfile.mkdtemp(dir=archive.parent, prefix=".unpack-"))
        self.unpacks += 1
        try:
            sums: dict[str, str] = {}
            with tarfile.open(archive) as tar:
                for member in members:
                    relative = Path(member.name)
                    _private_subdirs(staging, relative.parent)
                    digest, dest = hashlib.sha256(), staging / relative
                    with tar.extractfile(member) as src, open(dest, "wb") as out:  # type: ignore[union-attr]
                        for chunk in iter(lambda: src.read(CHUNK), b""):
                            digest.update(chunk)
                            out.write(chunk)
                    dest.chmod(0o755 if member.mode & 0o111 else 0o644)
                    sums[relative.as_posix()] = digest.hexdigest()
            os.rename(staging, target)
            files = {relative: {"sha256": sha256, "stat": stat_key(os.lstat(target / relative))}
                     for relative, sha256 in sums.items()}
            _atomic_write(record, json.dumps({"archive_sha256": archive_sha256, "files": files}, indent=1,
                                             sort_keys=True))
            return sums
        except OSError as error:
            shutil.rmtree(staging, ignore_errors=True)
            sums_now, _ = _intact_tree(target, record, archive_sha256)
            if sums_now is not None:  # another process won the race
                return sums_now
            raise ArtifactError(f"could not unpack {archive}: {error}") from error
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def _intact_tree(target: Path, record: Path, archive_sha256: str) -> tuple[dict[str, str] | None, str]:
    """
    (relative path -> sha256, "") when ``target`` is exactly what was unpacked from the archive
    with this sum: the files its record names, each with its recorded ``stat_key``, nothing else
    (directories private). Otherwise (None, what differs), or (None, "") when never unpacked.
    """
    try:
        record_status = os.lstat(record)
    except FileNotFoundError:
        return None, ""  # never unpacked, or an unpack was interrupted (the record is written last)
    check_private(record, record_status)
    try:
        data = json.loads(record.read_text())
        files = {relative: (entry["sha256"], entry["stat"]) for relative, entry in data["files"].items()}
        if data["archive_sha256"] != archive_sha256:
            raise ValueError
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None, f"its record {record.name} is from an earlier podnet release, or damaged"
    try:
        top = os.lstat(target)
    except FileNotFoundError:
        return None, "it was removed"
    if not stat.S_ISDIR(top.st_mode):
        return None, "it is not a directory"
    check_private(target, top)
    seen = set()
    for directory, dirs, names in os.walk(target):
        for name in dirs + names:
            path = Path(directory, name)
            relative = path.relative_to(target).as_posix()
            status = os.lstat(path)
            if stat.S_ISDIR(status.st_mode):
                if status.st_uid != os.geteuid() or status.st_mode & 0o022:
                    return None, f"{relative} was made writable by others since it was unpacked"
                continue
            if relative not in files:
                return None, f"{relative} was added since it was unpacked"
            if stat_key(status) != files[relative][1]:
                return None, f"{relative} was changed since it was unpacked"
            seen.add(relative)
    missing = sorted(set(files) - seen)
    if missing:
        return None, f"{missing[0]} was removed since it was unpacked"
    return {relative: sha256 for relative, (sha256, _) in files.items()}, ""


def _shown(url: str) -> str:
    """The URL as said in messages: scheme, host, port and path (no credentials, no query)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"


@dataclass(frozen=True)
class Document:
    """A small document as read: its bytes, and the URL they came from (after redirects)."""

    body: bytes
    url: str


# --- verified right before use -------------------------------------------------------------
# A no-op rerun must not re-hash a few hundred MB of cached binaries on every run: the
# download's sum is stamped beside it and every unpacked file's sum is recorded at unpack
# time, both believed only while the file's stat_key is unchanged. A file that is about to be
# uploaded is hashed anyway (once per run, ``verified_upload``).

_known_digests: dict[Path, str] = {}
_uploads_checked: dict[tuple[Path, str], str] = {}


def register_digest(path: Path, sha256: str) -> None:
    _known_digests[Path(path)] = sha256


def known_digest(path: Path) -> str | None:
    """The sha256 of a cached file, if this run already knows it."""
    return _known_digests.get(Path(path))


def verified_upload(path: Path, sha256: str) -> str | None:
    """
    Hash ``path`` (a cached release file about to be uploaded) and compare it with ``sha256``: None
    when it matches, else what to say (the path, both sums, what to do). Each file is hashed once
    per run while its ``stat_key`` stays the same (several hosts upload the same file).
    """
    try:
        key = (Path(path), stat_key(os.lstat(path)))
        actual = _uploads_checked.get(key)
        if actual is None:
            actual = sha256_of(path)
            if stat_key(os.lstat(path)) == key[1]:
                _uploads_checked[key] = actual
    except OSError as error:
        return f"podnet: {path}: cannot read the release file to upload ({error}); rerun to fetch it again"
    if actual == sha256:
        return None
    return (f"podnet: {path} has sha256 {actual}, expected {sha256}: the download cache changed after podnet "
            "verified it; nothing of it was uploaded. Rerun: podnet fetches or unpacks it again. Find out what "
            "changed the cache")


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _read_stamp(path: Path, status: os.stat_result) -> str | None:
    """The sum stamped for ``path`` while it has ``status``'s stat_key, or None."""
    stamp = _stamp_path(path)
    try:
        fd = os.open(stamp, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd) as f:
        check_private(stamp, os.fstat(f.fileno()))
        try:
            key, sha256 = f.read().split("\n")[:2]
        except ValueError:
            return None
    return sha256 if key == stat_key(status) else None


def _write_stamp(path: Path, status: os.stat_result, sha256: str) -> None:
    _atomic_write(_stamp_path(path), f"{stat_key(status)}\n{sha256}\n")


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp_name, path)
