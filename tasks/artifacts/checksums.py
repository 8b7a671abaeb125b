"""
sha256 of release files that nobody pinned: read from the lock file, else resolved from
the sum upstream publishes and then locked.

Where an artifact's sha256 comes from, for one version and architecture (first wins):

1. the ``artifact_checksums`` setting, 2. ``files/artifacts.yaml`` (both: ``tasks.artifacts.catalog``),
3. the lock file (``artifact_lock_file``), 4. with ``resolve_checksums`` (the default), the
   sum upstream publishes for the release file (``published`` in files/artifacts.yaml): the
   checksum file beside the asset, or GitHub's release API digest where a project publishes
   no checksum files. The mirror replaces upstream's host here too (``mirror_url``).

A sum resolved in 4 is written to the lock file at once, with the URL it came from, and
every later run takes it from there without asking upstream (trust on first use, as a
package manager's lock file): a release file that changes afterwards is a checksum
mismatch that stops the run. ``python3 -m tasks.lock_checksums INVENTORY`` writes the lock for an
inventory without deploying, and with ``--verify`` asks upstream again for every
locked sum and fails where upstream now publishes another.

Every failure here raises ``ChecksumError`` before any host is changed, naming artifact,
version and architecture, what went wrong and what to pin where.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import re
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from tasks.artifacts import catalog
from tasks.artifacts.catalog import ArtifactError
from tasks.artifacts.download import Downloader, DownloadError
from tasks.redact import redact_url
from tasks.settings import ARCHITECTURES, SHA256_RE, Settings
from tasks.formats import data_yaml

GITHUB_API = "https://api.github.com"
CHECKSUM_FORMATS = ("sha256sum", "bare")
LOCK_HEADER = """\
# podnet checksum lock: the sha256 of each release file that files/artifacts.yaml and the
# artifact_checksums setting do not pin, as upstream published it when podnet first needed
# it (source: where it was read). Commit this file beside your inventory: podnet reads it on
# every run and asks upstream nothing for what it holds. Written by podnet (deploy.py, or
# `python3 -m tasks.lock_checksums INVENTORY`); to re-resolve an entry, delete it.
"""


class ChecksumError(ArtifactError):
    """No usable sha256 for a release file, or two sources that disagree."""


@dataclass(frozen=True)
class LockEntry:
    sha256: str
    source: str  # the URL the sum was read from, without credentials (the lock file is committed)

    def __post_init__(self):
        object.__setattr__(self, "source", redact_url(self.source))


def where_to_pin(name: str, version: str, arch: str, lock_path: Path) -> str:
    """The two places a sum can be pinned by hand, spelled out for this artifact."""
    pinned = catalog.pinned_versions(name, arch)
    known = f"files/artifacts.yaml pins {name} for {arch} at {pinned}" if pinned != "none" else \
        f"files/artifacts.yaml pins no {name} release for {arch}"
    return (f"{known}; to use {version}, pin it in your inventory's group data: artifact_checksums = "
            f"{{'{name}': {{'{version}': {{'{arch}': '<sha256>'}}}}}}, or add it to the lock file {lock_path} "
            f"as {name}: {{'{version}': {{{arch}: {{sha256: <sha256>, source: <where you read it>}}}}}}")


# --- the lock file -------------------------------------------------------------------


class ChecksumLockFile:
    """The lock file: ``{artifact: {version: {arch: {sha256: <hex>, source: <url>}}}}`` in YAML.

    Read once when constructed (a missing file is an empty lock); ``record`` adds an entry
    and rewrites the file atomically, merged with what is on disk then (two runs may share
    one lock file). Raises ChecksumError for a file that is not such a mapping.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.entries = self._read()

    def get(self, name: str, version: str, arch: str) -> LockEntry | None:
        return self.entries.get(name, {}).get(version, {}).get(arch)

    def record(self, name: str, version: str, arch: str, entry: LockEntry) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            fcntl.flock(directory, fcntl.LOCK_EX)  # one writer at a time
            current = self._read()
            existing = current.get(name, {}).get(version, {}).get(arch)
            if existing is not None and existing.sha256 != entry.sha256:
                raise ChecksumError(
                    f"{name} {version} {arch}: {entry.source} gives sha256 {entry.sha256}, but the lock file "
                    f"{self.path} (written meanwhile by another run) holds {existing.sha256} from "
                    f"{existing.source}; find out which is right before trusting either")
            current.setdefault(name, {}).setdefault(version, {})[arch] = entry
            self._write(current)
            self.entries = current
        finally:
            os.close(directory)

    def _read(self) -> dict[str, dict[str, dict[str, LockEntry]]]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as error:
            raise ChecksumError(f"artifact_lock_file: cannot read {self.path}: {error}") from None
        try:
            data = data_yaml.load(text) or {}
        except yaml.YAMLError as error:
            raise ChecksumError(f"artifact_lock_file: {self.path} is not valid YAML ({error}); "
                                "fix it or delete it to resolve every sum again") from None
        shape = ("{artifact: {version: {arch: {sha256: <64 hex digits>, source: <url>}}}} with artifact one of "
                 + ", ".join(catalog.ARTIFACT_NAMES) + " and arch one of amd64, arm64")
        entries: dict[str, dict[str, dict[str, LockEntry]]] = {}

        def bad(where: str) -> ChecksumError:
            return ChecksumError(f"artifact_lock_file: {self.path}: {where} is not valid; expected {shape}")

        if not isinstance(data, dict):
            raise bad("the whole file")
        for name, versions in data.items():
            if name not in catalog.ARTIFACT_NAMES or not isinstance(versions, dict):
                raise bad(f"entry {name!r}")
            for version, arches in versions.items():
                if not isinstance(version, str) or not isinstance(arches, dict):
                    raise bad(f"{name} {version!r}")
                for arch, value in arches.items():
                    if (arch not in set(ARCHITECTURES.values()) or not isinstance(value, dict)
                            or not isinstance(value.get("sha256"), str) or not SHA256_RE.match(value["sha256"])
                            or not isinstance(value.get("source"), str)):
                        raise bad(f"{name} {version} {arch!r}")
                    entries.setdefault(name, {}).setdefault(version, {})[arch] = LockEntry(
                        value["sha256"], value["source"])
        return entries

    def _write(self, entries: dict[str, dict[str, dict[str, LockEntry]]]) -> None:
        data = {name: {version: {arch: {"sha256": e.sha256, "source": e.source}
                                 for arch, e in sorted(arches.items())}
                       for version, arches in sorted(versions.items(), key=lambda v: catalog.version_key(v[0]))}
                for name, versions in sorted(entries.items(), key=lambda n: catalog.ARTIFACT_NAMES.index(n[0]))}
        text = LOCK_HEADER + yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=200)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


# --- what upstream publishes -----------------------------------------------------------

_LINE_RE = re.compile(r"^([0-9A-Fa-f]{64})[ \t]+\*?(\S.*?)\s*$")


def sha256_from_checksum_file(text: bytes, asset: str, fmt: str, source: str) -> str:
    """The asset's sha256 in a published checksum file.

    ``sha256sum``: lines of ``<hex>  <file name>`` (coreutils' format, ``*`` binary marker
    allowed); the line naming ``asset`` counts, and a file that names only other files is
    refused. ``bare``: the hex alone (dl.k8s.io's ``<binary>.sha256``). Raises ChecksumError.
    """
    try:
        lines = [line.strip() for line in text.decode("ascii").splitlines() if line.strip()]
    except UnicodeDecodeError:
        lines = []
    if fmt == "bare" and len(lines) == 1 and SHA256_RE.match(lines[0].lower()):
        return lines[0].lower()
    named: dict[str, str] = {}
    for line in lines:
        match = _LINE_RE.match(line)
        if not match:
            expected = "the sha256 alone" if fmt == "bare" else "'<sha256>  <file name>' lines"
            raise ChecksumError(f"{source} is not a checksum file: line {line[:80]!r} is not {expected}")
        name = match.group(2)
        named[name[2:] if name.startswith("./") else name] = match.group(1).lower()
    if not named:
        raise ChecksumError(f"{source} is not a checksum file: it holds no sha256")
    if asset not in named:
        raise ChecksumError(f"{source} names {', '.join(sorted(named))}, not the asset {asset}; "
                            "it is not this file's checksum")
    return named[asset]


def sha256_from_release(document: bytes, asset: str, source: str) -> str:
    """The ``digest`` GitHub's release API reports for ``asset`` (``sha256:<hex>``). Raises ChecksumError."""
    try:
        release = json.loads(document)
        assets = {a["name"]: a.get("digest") for a in release["assets"]}
    except (ValueError, KeyError, TypeError):
        raise ChecksumError(f"{source} is not a GitHub release document (no assets list)") from None
    if asset not in assets:
        raise ChecksumError(f"{source} lists no asset {asset} (it has {', '.join(sorted(assets)) or 'none'})")
    digest = assets[asset]
    if not digest:
        raise ChecksumError(f"{source} reports no digest for {asset} (GitHub records one only for assets "
                            "uploaded since mid-2025)")
    algorithm, _, value = str(digest).partition(":")
    if algorithm != "sha256" or not SHA256_RE.match(value.lower()):
        raise ChecksumError(f"{source} reports digest {digest!r} for {asset}, not a sha256")
    return value.lower()


def published_source(name: str, version: str, arch: str, mirror_url: str | None) -> str:
    """The URL where upstream publishes the sum of ``name`` at ``version`` for ``arch`` (through the
    mirror, if set: the same path below ``mirror_url``)."""
    published = catalog.pinned()[name].get("published") or {}
    if "checksum_file" in published:
        url = published["checksum_file"].format(url=catalog.upstream_url(name, version, arch), version=version,
                                                arch=arch)
    elif "github_release" in published:
        tag = published["tag"].format(version=version)
        url = f"{GITHUB_API}/repos/{published['github_release']}/releases/tags/{tag}"
    else:
        raise ChecksumError(f"{name}: upstream publishes no checksum podnet knows how to read")
    return catalog.mirrored(url, mirror_url)


def published_sha256(downloader: Downloader, name: str, version: str, arch: str, mirror_url: str | None) -> LockEntry:
    """Read upstream's published sum of the release file, with the URL it was read from (after
    redirects: the source the lock records). Raises ChecksumError or DownloadError."""
    published = catalog.pinned()[name].get("published") or {}
    source = published_source(name, version, arch, mirror_url)
    asset = Path(urlsplit(catalog.upstream_url(name, version, arch)).path).name
    if "github_release" in published:
        headers = {"Accept": "application/vnd.github+json"}
        token = os.environ.get("GITHUB_TOKEN")
        if token and source.startswith(GITHUB_API + "/"):  # never hand the token to a mirror
            headers["Authorization"] = f"Bearer {token}"
        document = downloader.fetch_document(source, headers)
        read = redact_url(document.url)  # the URL read (after redirects), in the lock and every message
        return LockEntry(sha256_from_release(document.body, asset, read), read)
    document = downloader.fetch_document(source)
    read = redact_url(document.url)
    fmt = published.get("format", "sha256sum")
    return LockEntry(sha256_from_checksum_file(document.body, asset, fmt, read), read)


# --- one run -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resolved:
    name: str
    version: str
    arch: str
    sha256: str
    source: str


@dataclass
class Checksums:
    """The sums of one run for one lock file: locked ones, and those resolved now (then locked).

    ``lookup(settings)`` is what ``tasks.artifacts.catalog.resolve`` asks for a sum nobody pinned.
    """

    lock: ChecksumLockFile
    downloader: Downloader
    resolved: list[Resolved] = field(default_factory=list)

    def __post_init__(self):
        self._guard = threading.Lock()

    def lookup(self, settings: Settings) -> catalog.Lookup:
        def sha256_for(name: str, version: str, arch: str) -> tuple[str, str]:
            return self.sha256(settings, name, version, arch)
        return sha256_for

    def sha256(self, settings: Settings, name: str, version: str, arch: str) -> tuple[str, str]:
        """(sha256, where it came from) from the lock, else from upstream (recorded in the lock)."""
        with self._guard:
            entry = self.lock.get(name, version, arch)
            if entry is not None:
                return entry.sha256, f"the lock file {self.lock.path} (from {entry.source})"
            if not settings.resolve_checksums:
                raise ChecksumError(f"{name} {version} {arch}: no sha256 is pinned or locked, and resolve_checksums "
                                    f"is false; {where_to_pin(name, version, arch, self.lock.path)}")
            try:
                entry = published_sha256(self.downloader, name, version, arch, settings.mirror_url)
            except (ChecksumError, DownloadError) as error:
                raise ChecksumError(f"{name} {version} {arch}: no sha256 is pinned or locked, and upstream's "
                                    f"published sum cannot be used: {error}; "
                                    f"{where_to_pin(name, version, arch, self.lock.path)}") from None
            self.lock.record(name, version, arch, entry)
            self.resolved.append(Resolved(name, version, arch, entry.sha256, entry.source))
            return entry.sha256, f"{entry.source} (now in the lock file {self.lock.path})"

    def verify(self, settings: Settings, name: str, version: str, arch: str) -> None:
        """Ask upstream again for a locked sum; ChecksumError if it now publishes another."""
        entry = self.lock.get(name, version, arch)
        if entry is None:
            return
        try:
            published = published_sha256(self.downloader, name, version, arch, settings.mirror_url)
        except (ChecksumError, DownloadError) as error:
            raise ChecksumError(f"{name} {version} {arch}: cannot check the locked sha256 against upstream: "
                                f"{error}") from None
        if published.sha256 != entry.sha256:
            raise ChecksumError(
                f"{name} {version} {arch}: upstream now publishes sha256 {published.sha256} ({published.source}), "
                f"but the lock file {self.lock.path} holds {entry.sha256} (from {entry.source}); a release file "
                "changed after it was locked: find out why before trusting it; if the new sum is right, delete "
                "the entry from the lock file and run again")

    def summary(self) -> str | None:
        """What this run resolved, once, with the reminder to commit the lock; None if nothing."""
        if not self.resolved:
            return None
        lines = [f"podnet: resolved {len(self.resolved)} sha256 from upstream's published checksums and recorded "
                 f"them in {self.lock.path}:"]
        lines += [f"  {r.name} {r.version} {r.arch}  sha256 {r.sha256}  from {r.source}" for r in self.resolved]
        lines.append(f"podnet: commit {self.lock.path}: later runs read these sums from it and ask upstream nothing.")
        return "\n".join(lines)


_runs: dict[Path, Checksums] = {}
_runs_guard = threading.Lock()


def for_run(lock_path: Path, downloader: Downloader) -> Checksums:
    """The run's one ``Checksums`` per lock file; its summary is printed once when the run ends."""
    with _runs_guard:
        if lock_path not in _runs:
            if not _runs:
                atexit.register(_print_summaries)
            _runs[lock_path] = Checksums(ChecksumLockFile(lock_path), downloader)
        return _runs[lock_path]


def _print_summaries() -> None:
    for checksums in _runs.values():
        text = checksums.summary()
        if text:
            print(text, file=sys.stderr, flush=True)
