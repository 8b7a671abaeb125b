"""
Tiny but real release files in upstream's layout, for the downloader and plan tests.

Each artifact is a deterministic tarball (or raw file for runc) whose members are small
shell scripts; ``Releases.checksums()`` gives the ``artifact_checksums`` setting that pins
them and ``Releases.tree`` is laid out like ``<mirror_url>/<upstream path>`` so the files
can be served over loopback with the ``mirror_url`` setting.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from tasks.artifacts import catalog
from tasks.settings import SPEC_BY_NAME

ARCH = "amd64"
MACHINE = "x86_64"

CONTAINERD_BINARIES = ("containerd", "containerd-shim-runc-v2", "ctr")
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")


def script(name: str, version: str) -> bytes:
    return f"#!/bin/sh\n# podnet test stand-in for {name} {version}\necho {name} {version}\n".encode()


def tarball(members: dict[str, bytes], mode: int = 0o755) -> bytes:
    """A deterministic .tar.gz holding regular files (mtime 0, root-owned, sorted)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in sorted(members):
            data = members[name]
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Releases:
    """The release files for one set of versions, written below ``tree``."""

    tree: Path
    # podnet's default releases (the settings' declaration)
    versions: dict[str, str] = field(default_factory=lambda: {
        name: SPEC_BY_NAME[f"{name}_version"].default
        for name in ("containerd", "runc", "cni_plugins", "flannel_cni_plugin", "flanneld")})
    # name -> bytes of each installed binary, as the node should end up holding it
    containerd_bins: dict[str, bytes] = field(default_factory=dict)
    runc: bytes = b""
    cni_bins: dict[str, bytes] = field(default_factory=dict)
    flannel_cni: bytes = b""
    flanneld: bytes = b""
    files: dict[str, bytes] = field(default_factory=dict)  # artifact -> file bytes

    def __post_init__(self):
        v = self.versions
        self.containerd_bins = {name: script(name, v["containerd"]) for name in CONTAINERD_BINARIES}
        self.runc = script("runc", v["runc"])
        self.cni_bins = {name: script(name, v["cni_plugins"]) for name in CNI_PLUGINS}
        self.flannel_cni = script("flannel", v["flannel_cni_plugin"])
        self.flanneld = script("flanneld", v["flanneld"])
        self.files = {
            "containerd": tarball({f"bin/{n}": d for n, d in self.containerd_bins.items()}),
            "runc": self.runc,
            # The real cni-plugins tarball is flat (./bridge, ./LICENSE, ...).
            "cni_plugins": tarball({**{f"./{n}": d for n, d in self.cni_bins.items()},
                                    "./LICENSE": b"Apache-2.0\n", "./README.md": b"plugins\n"}),
            "flannel_cni_plugin": tarball({f"flannel-{ARCH}": self.flannel_cni}),
            "flanneld": self.flanneld,
        }
        for name, data in self.files.items():
            path = self.tree / self.upstream_path(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def upstream_path(self, name: str) -> str:
        entry = catalog.pinned()[name]
        version = self.versions[name]
        asset_version = (entry.get("asset_versions") or {}).get(version, version)
        url = entry["url"].format(version=version, arch=ARCH, asset_version=asset_version)
        return urlsplit(url).path.lstrip("/")

    def checksums(self) -> dict:
        """The ``artifact_checksums`` setting pinning these files."""
        return {name: {self.versions[name]: {ARCH: sha256(data)}} for name, data in self.files.items()}
