"""podnet's offline release mirror for tests.

    from testbed.mirror import build_mirror, serve_mirror

    mirror = build_mirror()                 # cached; slow only the first time
    with mirror.serve() as base_url:        # http://127.0.0.1:<port>, loopback only
        settings = mirror.inventory_data(base_url, containerd_generation="2.x")

The tree keeps upstream's URL paths (files/artifacts.yaml), built by
testbed/mirror/build.py from Debian packages (containerd 1.6/2.1, runc, CNI
plugins) and from shared/bin (the flannel CNI plugin, flanneld, containerd
2.3.4: real builds from public source, see testbed/kubebed/binaries.py).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Union

from . import build as _build
from .build import ARCH, ARTIFACTS, MirrorBuildError, sha256_file, upstream_path, upstream_version, version_key
from .server import serve_mirror

__all__ = [
    "ARCH", "ARTIFACTS", "Mirror", "MirrorBuildError", "build_mirror", "serve_mirror", "upstream_path",
    "upstream_version",
]

Manifest = Dict[str, Dict[str, Dict[str, str]]]
# Artifacts whose sums podnet resolves from what the mirror publishes (never pinned in inventory_data).
PUBLISHED_ONLY = ("flannel_cni_plugin", "flanneld", *_build.KUBERNETES_ARTIFACTS)


@dataclass(frozen=True)
class Mirror:
    """A built mirror.

    root:     directory laid out by upstream path (serve this)
    manifest: {artifact: {version: {"amd64": sha256}}} for artifacts
              containerd, runc, cni_plugins, flannel_cni_plugin, flanneld,
              kubeadm, kubelet, kubectl
    sources:  {artifact: {version: {suite, package, debian_version, deb, deb_sha256, path, sha256}}}
    out_dir:  directory holding tree/, manifest.json, sources.json
    """

    root: Path
    manifest: Manifest
    sources: Dict[str, Dict[str, dict]] = field(repr=False)
    out_dir: Path

    @classmethod
    def load(cls, out_dir: Union[str, Path]) -> "Mirror":
        out_dir = Path(out_dir)
        manifest = json.loads((out_dir / "manifest.json").read_text())
        sources = json.loads((out_dir / "sources.json").read_text())["artifacts"]
        return cls(root=out_dir / "tree", manifest=manifest, sources=sources, out_dir=out_dir)

    # -- lookups
    def versions(self, artifact: str) -> List[str]:
        """Versions of an artifact, oldest first."""
        return sorted(self.manifest[artifact], key=version_key)

    def path(self, artifact: str, version: str, arch: str = ARCH) -> Path:
        """The file in the tree for an artifact version."""
        return self.root / upstream_path(artifact, version, arch)

    def url(self, base_url: str, artifact: str, version: str, arch: str = ARCH) -> str:
        return f"{base_url.rstrip('/')}/{upstream_path(artifact, version, arch)}"

    def sha256(self, artifact: str, version: str, arch: str = ARCH) -> str:
        return self.manifest[artifact][version][arch]

    def suite_of(self, artifact: str, version: str) -> Optional[str]:
        return self.sources.get(artifact, {}).get(version, {}).get("suite")

    def containerd_version(self, generation: str = "1.x") -> str:
        """Newest containerd of a generation ("1.x" or "2.x"; an exact version is accepted too)."""
        if generation in self.manifest["containerd"]:
            return generation
        major = generation[:-2] if generation.endswith(".x") else None
        if not major or not major.isdigit():
            raise ValueError(f"containerd_generation must be '1.x' or '2.x', not {generation!r}")
        matches = [v for v in self.versions("containerd") if v.split(".")[0] == major]
        if not matches:
            raise ValueError(f"the mirror has no containerd {generation} "
                             f"(has {self.versions('containerd')})")
        return matches[-1]

    def verify(self) -> None:
        """Check that every file exists and matches the manifest's sha256."""
        for artifact, versions in self.manifest.items():
            for version, shas in versions.items():
                for arch, sha in shas.items():
                    actual = sha256_file(self.path(artifact, version, arch))
                    if actual != sha:
                        raise MirrorBuildError(f"{artifact} {version} {arch}: sha256 {actual} != {sha}")

    # -- toolkit settings
    def inventory_data(self, base_url: str, containerd_generation: str = "1.x",
                       cni_plugins_version: Optional[str] = None) -> dict:
        """The settings the toolkit reads, pointing at this mirror served at base_url.

        containerd_generation: "1.x" -> bookworm's containerd (1.6.x),
                               "2.x" -> the newest 2.x (2.3.4 from shared/bin,
                               podnet's default), or an exact version.
        cni_plugins_version:   default: the CNI plugins from the same Debian
                               suite as the chosen containerd (1.1.x with 1.x,
                               1.9.x with 2.x).
        runc is bookworm's in both cases.  artifact_checksums pins every
        version in the mirror except the flannel CNI plugin's, flanneld's and
        kubeadm's, kubelet's and kubectl's: podnet reads those from the
        checksum file beside the plugin, the release-API document of flanneld
        and the .sha256 files beside the Kubernetes binaries, and locks them
        (the caller sets artifact_lock_file).
        """
        containerd = self.containerd_version(containerd_generation)
        if cni_plugins_version is None:
            suite = self.suite_of("containerd", containerd)
            same_suite = [v for v in self.versions("cni_plugins") if self.suite_of("cni_plugins", v) == suite]
            cni_plugins_version = (same_suite or self.versions("cni_plugins"))[-1]
        elif cni_plugins_version not in self.manifest["cni_plugins"]:
            raise ValueError(f"the mirror has no cni_plugins {cni_plugins_version} "
                             f"(has {self.versions('cni_plugins')})")
        runc = [v for v in self.versions("runc") if self.suite_of("runc", v) == _build.RUNC_SUITE]
        return {
            "mirror_url": base_url.rstrip("/"),
            "allow_insecure_http": True,  # the test mirror serves plain http on loopback
            "containerd_version": containerd,
            "runc_version": (runc or self.versions("runc"))[-1],
            "cni_plugins_version": cni_plugins_version,
            "flannel_cni_plugin_version": self.versions("flannel_cni_plugin")[-1],
            "flanneld_version": self.versions("flanneld")[-1],
            "artifact_checksums": {name: copy.deepcopy(versions) for name, versions in self.manifest.items()
                                   if name not in PUBLISHED_ONLY},
        }

    def serve(self, request_log=None):
        """Context manager serving this mirror on loopback; yields the base URL."""
        return serve_mirror(self.root, request_log=request_log)


def build_mirror(cache_dir: Union[str, Path, None] = None, out_dir: Union[str, Path, None] = None,
                 force: bool = False, refresh: bool = False) -> Mirror:
    """Build the mirror (or reuse the cached one) and return it.

    cache_dir: default $PODNET_TEST_CACHE or /var/cache/podnet-test (mirror in <cache_dir>/mirror)
    out_dir:   default <cache_dir>/mirror/out-v<layout version>
    force:     rebuild the tree from the cached .debs
    refresh:   apt-get update + download the .debs again, then rebuild
    """
    return Mirror.load(_build.build(cache_dir, out_dir, force=force, refresh=refresh))
