"""
Release artifacts: which file to fetch, from where, with which sha256, and what is in it.

Pinned versions and checksums live in ``files/artifacts.yaml``; inventory data may add or
override checksums (``artifact_checksums``) and replace the upstream hosts with a mirror
(``mirror_url``). A sha256 pinned in neither place comes from a ``lookup`` the caller
passes (``tasks.artifacts.checksums``: the lock file, else upstream's published sum). Downloading
itself is ``tasks.artifacts.download``; this module only decides.
"""

from __future__ import annotations

import fnmatch
import tarfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from tasks.redact import redact_url
from tasks.errors import PodnetError
from tasks.releases import ARTIFACT_NAMES
from tasks.settings import Settings
from tasks.formats import data_yaml

ARTIFACTS_FILE = Path(__file__).resolve().parents[2] / "files" / "artifacts.yaml"
# The setting that holds an artifact's version, where it is not `<artifact>_version`.
VERSION_SETTINGS = {"kubeadm": "kubernetes_version", "kubelet": "kubernetes_version",
                    "kubectl": "kubernetes_version"}


class ArtifactError(PodnetError, ValueError):
    """An artifact that cannot be resolved or used; the message says what to set."""


@dataclass(frozen=True)
class Artifact:
    name: str
    version: str
    arch: str
    url: str
    sha256: str
    # Where the sha256 came from, for error messages: a setting, a file, a lock entry, a URL.
    sha256_source: str = "files/artifacts.yaml"

    @property
    def filename(self) -> str:
        return Path(urlsplit(self.url).path).name


@lru_cache(maxsize=None)
def pinned() -> dict:
    """The data file, parsed once."""
    with open(ARTIFACTS_FILE) as f:
        return data_yaml.load(f)


KUBERNETES_BINARIES = ("kubeadm", "kubelet", "kubectl")


def version_setting(name: str) -> str:
    """The setting that chooses this artifact's version."""
    return VERSION_SETTINGS.get(name, f"{name}_version")


def version_of(settings: Settings, name: str) -> str:
    return getattr(settings, version_setting(name))


def mirrored(url: str, mirror_url: str | None) -> str:
    """Replace scheme and host of an upstream URL by the mirror, keeping the path."""
    if not mirror_url:
        return url
    return mirror_url.rstrip("/") + urlsplit(url).path


def upstream_url(name: str, version: str, arch: str) -> str:
    """Upstream's URL of ``name`` at ``version`` for ``arch``.

    Raises ArtifactError for a version missing from an artifact's ``asset_versions`` map:
    where upstream's asset names do not follow the tag, the map is the list of known releases.
    """
    entry = pinned()[name]
    asset_versions = entry.get("asset_versions")
    if asset_versions is not None and version not in asset_versions:
        known = ", ".join(sorted(asset_versions, key=version_key))
        raise ArtifactError(
            f"{version_setting(name)}: {version!r} is not a release podnet knows the asset name of "
            f"(known: {known}); pick one of these, or add it with its asset name to asset_versions "
            f"of {name} in files/artifacts.yaml")
    asset_version = (asset_versions or {}).get(version, version)
    return entry["url"].format(version=version, arch=arch, asset_version=asset_version)


def asset_url(settings: Settings, name: str, version: str, arch: str) -> str:
    """The download URL of ``name`` at ``version`` for ``arch``: upstream's, or the mirror's."""
    return mirrored(upstream_url(name, version, arch), settings.mirror_url)


def pinned_sha256(settings: Settings, name: str, version: str, arch: str) -> tuple[str, str] | None:
    """(sha256, where it is pinned) from ``artifact_checksums`` or files/artifacts.yaml, or None."""
    override = settings.artifact_checksums.get(name, {}).get(version, {}).get(arch)
    if override:
        return override, "the artifact_checksums setting"
    sha256 = (pinned()[name].get("versions") or {}).get(version, {}).get(arch)
    return (sha256, "files/artifacts.yaml") if sha256 else None


def pinned_versions(name: str, arch: str) -> str:
    """The versions files/artifacts.yaml pins for ``arch``, as text ("none" if none)."""
    known = sorted((v for v, arches in (pinned()[name].get("versions") or {}).items() if arch in arches),
                   key=version_key)
    return ", ".join(known) if known else "none"


def unpinned_message(name: str, version: str, arch: str) -> str:
    """What to set when ``name`` at ``version`` has no sha256 for ``arch``."""
    known_text = pinned_versions(name, arch)
    setting = version_setting(name)
    of = "" if setting == f"{name}_version" else f" of {name}"
    return (f"{setting}: {version!r} has no pinned sha256{of} for {arch} "
            f"(pinned for {arch}: {known_text}); pick a pinned version or add "
            f"artifact_checksums = {{'{name}': {{'{version}': {{'{arch}': '<sha256>'}}}}}}")


# (name, version, arch) -> (sha256, where it came from); raises ArtifactError.
Lookup = Callable[[str, str, str], "tuple[str, str]"]


def resolve(settings: Settings, name: str, arch: str, lookup: Lookup | None = None) -> Artifact:
    """The artifact ``name`` at the version the settings ask for, for ``arch``.

    The sha256 is the pinned one (``artifact_checksums`` first, then files/artifacts.yaml);
    without a pin, ``lookup`` gives it, and without ``lookup`` ArtifactError says what to pin.
    """
    version = version_of(settings, name)
    url = asset_url(settings, name, version, arch)
    found = pinned_sha256(settings, name, version, arch)
    if found is None:
        if lookup is None:
            raise ArtifactError(unpinned_message(name, version, arch))
        found = lookup(name, version, arch)
    sha256, source = found
    return Artifact(name, version, arch, url, sha256, source)


def version_key(version: str) -> tuple:
    """Sort key for release versions: numbers numerically, suffixes such as flannel1 after them."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in version.replace("-", ".").split("."))


def safe_members(archive: Path) -> list[tarfile.TarInfo]:
    """Regular files of a release tarball; refuse absolute paths, '..' and links."""
    with tarfile.open(archive) as tar:
        members = []
        for member in tar.getmembers():
            name = member.name
            if name.startswith("/") or ".." in Path(name).parts:
                raise ArtifactError(f"{archive.name}: refusing unsafe member path {name!r}")
            if member.issym() or member.islnk():
                raise ArtifactError(f"{archive.name}: refusing link member {name!r}")
            if member.isfile():
                members.append(member)
        return members


class _SettingValues(dict):
    """Settings fields by name, for the {setting} fields of an ``install`` node path."""

    def __init__(self, settings: Settings):
        super().__init__()
        self.settings = settings

    def __missing__(self, key: str) -> str:
        return str(getattr(self.settings, key))


def install_entry(name: str) -> str | dict:
    """files/artifacts.yaml's ``install`` of ``name``: a node path, or member pattern -> node path."""
    return pinned()[name]["install"]


def node_path(settings: Settings, name: str) -> str:
    """Where a release file that is not an archive goes on the node."""
    target = install_entry(name)
    assert isinstance(target, str), f"{name} is an archive: installed_files maps its members"
    return target.format_map(_SettingValues(settings))


def node_directories(settings: Settings, name: str) -> list[str]:
    """The node paths of an archive's ``install`` entry: a directory (ending in "/") or one file each."""
    entry = install_entry(name)
    assert isinstance(entry, dict), f"{name} is not an archive"
    return [target.format_map(_SettingValues(settings)) for target in entry.values()]


def installed_files(settings: Settings, name: str, local: Path, arch: str) -> list[tuple[str, Path]]:
    """(node path, local file) of each file ``name`` puts on the node, by its ``install`` entry:
    the downloaded file itself, or the members of the archive unpacked at ``local``. ArtifactError
    naming the archive when a pattern without wildcards matches no member."""
    entry = install_entry(name)
    if isinstance(entry, str):
        return [(node_path(settings, name), local)]
    skipped = set(pinned()[name].get("not_installed") or ())
    members = sorted(p for p in local.rglob("*") if p.is_file())
    files = []
    for pattern, target in entry.items():
        parts = pattern.format(arch=arch).split("/")
        target = target.format_map(_SettingValues(settings))
        found = [m for m in members if len(m.relative_to(local).parts) == len(parts)
                 and all(fnmatch.fnmatchcase(a, b) for a, b in zip(m.relative_to(local).parts, parts))]
        if not found and not any(c in "".join(parts) for c in "*?["):
            raise ArtifactError(f"{redact_url(settings.mirror_url or 'the')} {name} {version_of(settings, name)} archive has no "
                                f"member {'/'.join(parts)}")
        files += [(target + m.name if target.endswith("/") else target, m) for m in found if m.name not in skipped]
    return files
