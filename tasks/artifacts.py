"""
Release artifacts: which file to fetch, from where, with which sha256, and what is in it.

Pinned versions and checksums live in ``files/artifacts.yaml``; inventory data may add or
override checksums (``artifact_checksums``) and replace the upstream hosts with a mirror
(``mirror_url``). Downloading itself is ``tasks.download``; this module only decides.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from tasks.errors import PodnetError
from tasks.settings import Settings

ARTIFACTS_FILE = Path(__file__).resolve().parent.parent / "files" / "artifacts.yaml"
ARTIFACT_NAMES = ("containerd", "runc", "cni_plugins", "flannel_cni_plugin", "flanneld", "kubeadm", "kubelet",
                  "kubectl")
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

    @property
    def filename(self) -> str:
        return Path(urlsplit(self.url).path).name


@lru_cache(maxsize=None)
def pinned() -> dict:
    """The data file, parsed once."""
    with open(ARTIFACTS_FILE) as f:
        return yaml.safe_load(f)


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


def resolve(settings: Settings, name: str, arch: str) -> Artifact:
    """The artifact ``name`` at the version the settings ask for, for ``arch``."""
    entry = pinned()[name]
    version = version_of(settings, name)
    override = settings.artifact_checksums.get(name, {}).get(version, {}).get(arch)
    sha256 = override or (entry.get("versions") or {}).get(version, {}).get(arch)
    if not sha256:
        known = sorted(v for v, arches in (entry.get("versions") or {}).items() if arch in arches)
        known_text = ", ".join(known) if known else "none"
        setting = version_setting(name)
        of = "" if setting == f"{name}_version" else f" of {name}"
        raise ArtifactError(
            f"{setting}: {version!r} has no pinned sha256{of} for {arch} "
            f"(pinned for {arch}: {known_text}); pick a pinned version or add "
            f"artifact_checksums = {{'{name}': {{'{version}': {{'{arch}': '<sha256>'}}}}}}"
        )
    asset_version = (entry.get("asset_versions") or {}).get(version, version)
    url = entry["url"].format(version=version, arch=arch, asset_version=asset_version)
    return Artifact(name, version, arch, mirrored(url, settings.mirror_url), sha256)


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
