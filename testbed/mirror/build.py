"""Build podnet's OFFLINE release mirror from Debian's real packages.

The toolkit downloads containerd / runc / CNI plugins / flannel CNI plugin
release artifacts from ``<mirror_url>/<upstream path>``.  The test machines
cannot reach the upstream release host, so this module rebuilds artifacts
with upstream's layout from Debian packages:

* bookworm: containerd 1.6.x, runc, containernetworking-plugins 1.1.x
* sid:      containerd 2.x, containernetworking-plugins 1.9.x
  (those binaries need only GLIBC_2.34 and run on bookworm nodes; sid's runc
  needs a newer glibc, so runc always comes from bookworm)
* from shared/bin (testbed/kubebed/binaries.py: real builds from public source,
  Debian packages none of them): the flannel CNI plugin v1.9.1-flannel1
  (cni-plugin-flannel-linux-amd64-v1.9.1.tgz holding flannel-amd64; the same
  file is also served under the tags v1.9.1-flannel2 and v1.9.1-flannel3 as a
  STAND-IN: no build of those tags exists here, and flannel v0.28.9, podnet's
  default, ships -flannel3; see FLANNEL_STAND_INS), flanneld
  v0.28.9 (flanneld-amd64, with the GitHub release-API document that reports
  its digest, since upstream publishes no checksum file for it), containerd
  v2.3.4, podnet's default, and kubeadm, kubelet and kubectl 1.36.2 (single
  binaries at dl.k8s.io's paths, each with the bare ``.sha256`` upstream
  publishes beside it).

The ``.deb`` files are fetched with ``apt-get download`` through PRIVATE apt
configurations (own sources list, lists and cache under the cache dir); the
host's apt sources are only read, to learn the archive URI.

Everything is cached under ``${PODNET_TEST_CACHE:-/var/cache/podnet-test}/mirror``::

    mirror/
      .lock                    flock(2) serialising concurrent builds
      apt/<suite>/...          private apt state (sources.list, lists, cache)
      debs/<suite>/*.deb       the downloaded packages + index.json
      out-v<LAYOUT_VERSION>/   the finished mirror (replaced atomically)
        tree/<upstream path>   served over HTTP, with the checksum file upstream publishes
                               beside each release file (<file>.sha256, .sha256sum, runc.sha256sum)
        manifest.json          {artifact: {version: {"amd64": sha256}}}
        sources.json           provenance (suite, package, Debian version, deb sha256)

Tarballs are deterministic (sorted members, mtime 0, uid/gid 0, gzip header
mtime 0 and no file name), so a rebuild from the same .debs gives the same
sha256.

Run ``python3 -m testbed.mirror [--force] [--refresh]`` from the repo root
to build by hand.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from testbed.debian_sources import (
    DEBIAN_SOURCES,
    parse_deb822_sources,
    parse_one_line_sources,
)

ARCH = "amd64"
# Bump when the layout of the produced tree/tarballs changes: cached outputs
# built with another layout version are rebuilt (from the cached .debs).
LAYOUT_VERSION = 5  # 2: upstream's checksum files beside the release files; 3: shared/bin artifacts;
# 4: kubeadm, kubelet and kubectl from shared/bin; 5: the flannel CNI plugin stand-ins (FLANNEL_STAND_INS)

DEFAULT_CACHE = "/var/cache/podnet-test"
HOST_SOURCES_LIST = Path("/etc/apt/sources.list")
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
HERE = Path(__file__).resolve().parent

ARTIFACTS = ("containerd", "runc", "cni_plugins", "flannel_cni_plugin", "flanneld", "kubeadm", "kubelet", "kubectl")
# Release files served as upstream publishes them, one binary each (dl.k8s.io/release/v<v>/bin/linux/<arch>/<name>).
KUBERNETES_ARTIFACTS = ("kubeadm", "kubelet", "kubectl")

# Which packages come from which suite.  "bookworm" is what the nodes run.
SUITES = {
    "bookworm": ("containerd", "runc", "containernetworking-plugins"),
    "sid": ("containerd", "containernetworking-plugins"),
}
# The suite whose runc is used (sid's runc needs GLIBC_2.38, bookworm has 2.36).
RUNC_SUITE = "bookworm"

# bin/* members of upstream's containerd-<v>-linux-<arch>.tar.gz per release
# line.  Only those Debian's package ships are packed; the first three are
# required.
CONTAINERD_REQUIRED = ("containerd", "containerd-shim-runc-v2", "ctr")
CONTAINERD_UPSTREAM_BINS = {
    "1.6": ("containerd", "containerd-shim", "containerd-shim-runc-v1",
            "containerd-shim-runc-v2", "containerd-stress", "ctr"),
    "1": ("containerd", "containerd-shim-runc-v2", "containerd-stress", "ctr"),
    "2": ("containerd", "containerd-shim-runc-v2", "containerd-stress", "ctr"),
}


# STAND-INS: cni-plugin tags served with the v1.9.1-flannel1 build (shared/bin has no build of them; the
# three tags name their asset alike, cni-plugin-flannel-linux-<arch>-v1.9.1.tgz). sources.json says so.
FLANNEL_STAND_INS = ("1.9.1-flannel2", "1.9.1-flannel3")


class MirrorBuildError(RuntimeError):
    pass


# ---------------------------------------------------------------- helpers

def cache_root(cache_dir: Union[str, Path, None] = None) -> Path:
    """The mirror cache directory: <cache_dir or $PODNET_TEST_CACHE or default>/mirror."""
    base = cache_dir or os.environ.get("PODNET_TEST_CACHE") or DEFAULT_CACHE
    return Path(base) / "mirror"


def upstream_version(debian_version: str) -> str:
    """Debian package version -> upstream release version.

    Drops the epoch, the Debian revision and repack suffixes:
    "1.6.20~ds1-1+b1" -> "1.6.20", "2.1.9+ds1-5" -> "2.1.9", "1:1.2-3" -> "1.2".
    """
    v = debian_version.split(":", 1)[-1]
    if "-" in v:
        v = v.rsplit("-", 1)[0]
    v = re.split(r"[~+]", v, maxsplit=1)[0]
    if not re.match(r"^\d+(\.\d+)*$", v):
        raise MirrorBuildError(f"cannot derive an upstream version from {debian_version!r}")
    return v


def version_key(version: str) -> Tuple:
    return tuple(int(x) for x in re.findall(r"\d+", version))


def upstream_path(artifact: str, version: str, arch: str = ARCH) -> str:
    """The release file's path below the mirror base: upstream's URL path (files/artifacts.yaml)."""
    from urllib.parse import urlsplit

    from tasks.artifacts.catalog import upstream_url

    return urlsplit(upstream_url(artifact, version, arch)).path.lstrip("/")


def sha256_file(path: Union[str, Path]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _atomic_output(dest: Path, mode: int = 0o644):
    """Open a temp file beside dest; rename it over dest on success."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(dest.parent)


def write_atomic(dest: Union[str, Path], data: bytes, mode: int = 0o644) -> None:
    with _atomic_output(Path(dest), mode) as f:
        f.write(data)


def write_json_atomic(dest: Union[str, Path], obj) -> None:
    write_atomic(dest, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def copy_atomic(src: Union[str, Path], dest: Union[str, Path], mode: int = 0o644) -> None:
    with open(src, "rb") as s, _atomic_output(Path(dest), mode) as d:
        shutil.copyfileobj(s, d, 1 << 20)


# A tarball member: (name, content, mode).  content is None for a directory,
# bytes, or a Path to read.
Member = Tuple[str, Union[None, bytes, Path], int]


def write_deterministic_tgz(dest: Union[str, Path], members: Iterable[Member]) -> str:
    """Write a reproducible .tar.gz atomically; return its sha256.

    Members are sorted by name; every member has mtime 0, uid/gid 0 (root),
    the given mode; GNU tar format; the gzip header has mtime 0 and no name.
    """
    members = sorted(members, key=lambda m: m[0])
    names = [m[0] for m in members]
    if len(set(names)) != len(names):
        raise MirrorBuildError(f"duplicate tar members in {dest}: {names}")
    with _atomic_output(Path(dest)) as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
                for name, content, mode in members:
                    ti = tarfile.TarInfo(name)
                    ti.mtime = 0
                    ti.uid = ti.gid = 0
                    ti.uname = ti.gname = "root"
                    ti.mode = mode
                    if content is None:
                        ti.type = tarfile.DIRTYPE
                        tar.addfile(ti)
                    elif isinstance(content, bytes):
                        ti.size = len(content)
                        tar.addfile(ti, io.BytesIO(content))
                    else:
                        ti.size = Path(content).stat().st_size
                        with open(content, "rb") as f:
                            tar.addfile(ti, f)
    return sha256_file(dest)


def _run(cmd: Sequence[str], cwd: Optional[Path] = None) -> str:
    proc = subprocess.run(list(cmd), cwd=cwd, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise MirrorBuildError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}")
    return proc.stdout


# ------------------------------------------------------- host apt sources
# (parsing: testbed/debian_sources.py, shared with the node harness)

def host_codename() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"')
    return ""


def host_apt_stanzas() -> List[Dict[str, str]]:
    """The host's enabled 'deb' entries (debian.sources, else sources.list)."""
    if DEBIAN_SOURCES.exists():
        stanzas = parse_deb822_sources(DEBIAN_SOURCES.read_text())
    elif HOST_SOURCES_LIST.exists():
        stanzas = parse_one_line_sources(HOST_SOURCES_LIST.read_text())
    else:
        raise MirrorBuildError(f"no apt sources found ({DEBIAN_SOURCES}, {HOST_SOURCES_LIST})")
    out = []
    for s in stanzas:
        if s.get("enabled", "yes").lower() == "no":
            continue
        if "deb" not in s.get("types", "").split():
            continue
        if not s.get("uris") or not s.get("suites"):
            continue
        out.append(s)
    if not out:
        raise MirrorBuildError("the host's apt sources have no enabled 'deb' entry")
    return out


def _keyring_for(stanza: Dict[str, str]) -> str:
    sb = stanza.get("signed-by", "").strip()
    # Signed-By may hold an inline key block; then fall back to the archive keyring.
    if sb and "\n" not in sb and sb.startswith("/") and Path(sb).exists():
        return sb
    return str(DEBIAN_KEYRING)


def main_archive_uri(stanzas: List[Dict[str, str]], codename: str) -> str:
    """The URI of Debian's main archive (the stanza carrying the bare codename)."""
    for s in stanzas:
        if codename and codename in s["suites"].split():
            return s["uris"].split()[0]
    for s in stanzas:
        if "security" not in s["uris"]:
            return s["uris"].split()[0]
    raise MirrorBuildError("cannot find Debian's main archive URI in the host's apt sources")


def private_source_lines(suite: str, stanzas: List[Dict[str, str]], codename: str,
                         arch: str = ARCH) -> List[str]:
    """One-line sources.list entries for a private apt config of `suite`.

    sid: the main archive only.  Another suite (bookworm): every host entry
    with the host codename replaced by the suite name (so bookworm,
    bookworm-updates and bookworm-security on a bookworm host).
    """
    if suite == "sid":
        uri = main_archive_uri(stanzas, codename)
        return [f"deb [arch={arch} signed-by={DEBIAN_KEYRING}] {uri} sid main"]
    lines = []
    for s in stanzas:
        comps = s.get("components", "main").split() or ["main"]
        for uri in s["uris"].split():
            for host_suite in s["suites"].split():
                if codename and host_suite.startswith(codename):
                    new_suite = suite + host_suite[len(codename):]
                elif host_suite.startswith(suite):
                    new_suite = host_suite
                else:
                    continue
                line = f"deb [arch={arch} signed-by={_keyring_for(s)}] {uri} {new_suite} {' '.join(comps)}"
                if line not in lines:
                    lines.append(line)
    if not lines:
        uri = main_archive_uri(stanzas, codename)
        lines.append(f"deb [arch={arch} signed-by={DEBIAN_KEYRING}] {uri} {suite} main")
    return lines


class PrivateApt:
    """apt-get with its own sources list, lists and cache (host apt untouched)."""

    def __init__(self, root: Path, source_lines: List[str]):
        self.root = root
        self.sources = root / "sources.list"
        self.lists = root / "lists"
        self.cache = root / "cache"
        for d in (self.lists / "partial", self.cache / "archives" / "partial"):
            d.mkdir(parents=True, exist_ok=True)
        text = "".join(line + "\n" for line in source_lines)
        if not self.sources.exists() or self.sources.read_text() != text:
            write_atomic(self.sources, text.encode())

    def options(self) -> List[str]:
        opts = {
            "Dir::Etc::SourceList": str(self.sources),
            "Dir::Etc::SourceParts": "/dev/null",
            "Dir::State::Lists": str(self.lists),
            "Dir::Cache": str(self.cache),
            "Dir::Etc::Preferences": "/dev/null",
            "Dir::Etc::PreferencesParts": "/dev/null",
            "APT::Sandbox::User": "root",
        }
        out = ["-q"]
        for k, v in opts.items():
            out += ["-o", f"{k}={v}"]
        return out

    def update(self) -> None:
        _run(["apt-get", *self.options(), "--error-on=any", "update"])

    def download(self, packages: Sequence[str], dest: Path) -> Dict[str, Path]:
        """apt-get download into dest; return {package: deb path}."""
        dest.mkdir(parents=True, exist_ok=True)
        _run(["apt-get", *self.options(), "download", *packages], cwd=dest)
        found: Dict[str, Path] = {}
        for deb in sorted(dest.glob("*.deb")):
            found[deb_field(deb, "Package")] = deb
        missing = set(packages) - set(found)
        if missing:
            raise MirrorBuildError(f"apt-get download did not produce {sorted(missing)} in {dest}")
        return found


def deb_field(deb: Path, field: str) -> str:
    return _run(["dpkg-deb", "-f", str(deb), field]).strip()


# ------------------------------------------------------------- the debs

def fetch_debs(root: Path, refresh: bool = False) -> Dict[str, Dict[str, Path]]:
    """Ensure the .debs are cached; return {suite: {package: path}}."""
    stanzas = None
    codename = None
    result: Dict[str, Dict[str, Path]] = {}
    for suite, packages in SUITES.items():
        debdir = root / "debs" / suite
        index_path = debdir / "index.json"
        index: Dict[str, str] = {}
        if index_path.exists() and not refresh:
            index = json.loads(index_path.read_text())
        have = {p: debdir / f for p, f in index.items() if (debdir / f).is_file()}
        missing = [p for p in packages if p not in have]
        if missing:
            if stanzas is None:
                stanzas = host_apt_stanzas()
                codename = host_codename()
            apt = PrivateApt(root / "apt" / suite, private_source_lines(suite, stanzas, codename))
            apt.update()
            with tempfile.TemporaryDirectory(prefix=".dl-", dir=root) as tmp:
                got = apt.download(missing, Path(tmp))
                for pkg, deb in got.items():
                    if deb_field(deb, "Architecture") not in (ARCH, "all"):
                        raise MirrorBuildError(f"{deb.name}: not {ARCH}")
                    copy_atomic(deb, debdir / deb.name)
                    have[pkg] = debdir / deb.name
            write_json_atomic(index_path, {p: d.name for p, d in sorted(have.items())})
        result[suite] = {p: have[p] for p in packages}
    return result


# ------------------------------------------------------------ packing

def _extract(deb: Path, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    _run(["dpkg-deb", "-x", str(deb), str(into)])
    return into


def _find_binary(tree: Path, name: str, dirs: Sequence[str]) -> Optional[Path]:
    for d in dirs:
        p = tree / d.lstrip("/") / name
        if p.is_file() and not p.is_symlink():
            return p
    return None


def _is_elf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def containerd_members(tree: Path, version: str) -> List[Member]:
    major_minor = ".".join(version.split(".")[:2])
    wanted = CONTAINERD_UPSTREAM_BINS.get(major_minor) or CONTAINERD_UPSTREAM_BINS[version.split(".")[0]]
    members: List[Member] = [("bin/", None, 0o755)]
    for name in wanted:
        p = _find_binary(tree, name, ("/usr/bin", "/usr/sbin", "/bin", "/sbin"))
        if p is None:
            if name in CONTAINERD_REQUIRED:
                raise MirrorBuildError(f"containerd {version}: package lacks {name}")
            continue
        if not _is_elf(p):
            raise MirrorBuildError(f"containerd {version}: {p} is not an ELF file")
        members.append((f"bin/{name}", p, 0o755))
    return members


CNI_README = """# CNI plugins {version} (podnet test mirror)

Rebuilt for podnet's offline tests from Debian's package
containernetworking-plugins {debian_version} ({suite}): the plugins under
/usr/lib/cni, laid out like upstream's cni-plugins-linux-{arch}-v{version}.tgz.
LICENSE is the package's copyright file.
"""


def cni_members(tree: Path, version: str, debian_version: str, suite: str) -> List[Member]:
    cni_dir = tree / "usr" / "lib" / "cni"
    plugins = sorted(p for p in cni_dir.iterdir() if p.is_file() and not p.is_symlink()) if cni_dir.is_dir() else []
    if not plugins:
        raise MirrorBuildError(f"cni plugins {version}: no plugins in /usr/lib/cni")
    names = {p.name for p in plugins}
    for required in ("bridge", "host-local", "loopback", "portmap"):
        if required not in names:
            raise MirrorBuildError(f"cni plugins {version}: package lacks {required}")
    members: List[Member] = [("./", None, 0o755)]
    for p in plugins:
        if not _is_elf(p):
            raise MirrorBuildError(f"cni plugins {version}: {p} is not an ELF file")
        members.append((f"./{p.name}", p, 0o755))
    copyright_file = tree / "usr" / "share" / "doc" / "containernetworking-plugins" / "copyright"
    license_text = copyright_file.read_bytes() if copyright_file.is_file() else b"Apache-2.0\n"
    members.append(("./LICENSE", license_text, 0o644))
    readme = CNI_README.format(version=version, debian_version=debian_version, suite=suite, arch=ARCH)
    members.append(("./README.md", readme.encode(), 0o644))
    return members


def shared_artifacts() -> Dict[str, Tuple[str, Path]]:
    """artifact -> (version, binary) for what comes from shared/bin (testbed.kubebed.binaries)."""
    from testbed.kubebed import binaries

    return {
        "flannel_cni_plugin": (binaries.FLANNEL_CNI_PLUGIN_VERSION, binaries.binary("flannel")),
        "flanneld": (binaries.FLANNELD_VERSION, binaries.binary("flanneld")),
        "containerd": (binaries.CONTAINERD_VERSION, binaries.binary("containerd")),
    }


def inputs_fingerprint() -> Dict[str, object]:
    """What, besides the .debs, determines the output (cache invalidation key)."""
    from testbed.kubebed import binaries

    return {
        "layout_version": LAYOUT_VERSION,
        "shared_bin": {name: sha256_file(binaries.binary(name))
                       for name in ("flannel", "flanneld", *binaries.CONTAINERD_BINARIES, *KUBERNETES_ARTIFACTS)},
        "arch": ARCH,
    }


def write_shared_artifacts(tree: Path, manifest, sources) -> None:
    """The release files built from shared/bin, as upstream names and packs them."""
    from testbed.kubebed import binaries

    shared = shared_artifacts()
    version, flannel = shared["flannel_cni_plugin"]
    sha = write_deterministic_tgz(tree / upstream_path("flannel_cni_plugin", version),
                                  [(f"flannel-{ARCH}", flannel, 0o755)])
    _add(manifest, sources, "flannel_cni_plugin", version, sha, {"suite": None, "shared_bin": "flannel"})
    for tag in FLANNEL_STAND_INS:
        stand_in = write_deterministic_tgz(tree / upstream_path("flannel_cni_plugin", tag),
                                           [(f"flannel-{ARCH}", flannel, 0o755)])
        _add(manifest, sources, "flannel_cni_plugin", tag, stand_in,
             {"suite": None, "shared_bin": "flannel", "stand_in": f"the v{version} build, served as v{tag}"})
    single = [("flanneld", *shared["flanneld"], "flanneld")]
    single += [(name, binaries.KUBERNETES_VERSION, binaries.binary(name), name) for name in KUBERNETES_ARTIFACTS]
    for artifact, version, binary, shared_name in single:
        dest = tree / upstream_path(artifact, version)
        copy_atomic(binary, dest, 0o755)
        _add(manifest, sources, artifact, version, sha256_file(dest), {"suite": None, "shared_bin": shared_name})
    version, _ = shared["containerd"]
    members: List[Member] = [("bin/", None, 0o755)]
    members += [(f"bin/{name}", binaries.binary(name), 0o755) for name in binaries.CONTAINERD_BINARIES]
    sha = write_deterministic_tgz(tree / upstream_path("containerd", version), members)
    _add(manifest, sources, "containerd", version, sha, {"suite": None, "shared_bin": "containerd"})


def write_release_documents(tree: Path, manifest) -> None:
    """GitHub's release-API answer for each flanneld release in the mirror (assets and their
    sha256 digests), at the API path below the mirror base, as podnet reads it."""
    from urllib.parse import urlsplit

    from tasks.artifacts.checksums import published_source

    for version, shas in manifest.get("flanneld", {}).items():
        path = urlsplit(published_source("flanneld", version, ARCH, None)).path.lstrip("/")
        assets = [{"name": Path(upstream_path("flanneld", version, arch)).name, "digest": f"sha256:{sha}",
                   "browser_download_url": f"https://github.com/{upstream_path('flanneld', version, arch)}"}
                  for arch, sha in sorted(shas.items())]
        write_atomic(tree / path, json.dumps({"tag_name": f"v{version}", "assets": assets}, indent=1).encode())


def _add(manifest, sources, artifact, version, sha, info):
    prev = manifest.setdefault(artifact, {}).get(version)
    if prev is not None:
        # Two suites produced the same upstream version: keep the first.
        return
    manifest[artifact][version] = {ARCH: sha}
    sources.setdefault(artifact, {})[version] = {
        **info, "path": upstream_path(artifact, version), "sha256": sha}


def _build_package(tree: Path, suite: str, pkg: str, deb: Path, work: Path) -> Tuple[str, str, str, dict]:
    """Extract one .deb and write its artifact; return (artifact, version, sha256, info)."""
    debver = deb_field(deb, "Version")
    version = upstream_version(debver)
    info = {"suite": suite, "package": pkg, "debian_version": debver,
            "deb": deb.name, "deb_sha256": sha256_file(deb)}
    x = _extract(deb, work / f"{suite}-{pkg}")
    try:
        if pkg == "containerd":
            artifact = "containerd"
            sha = write_deterministic_tgz(tree / upstream_path(artifact, version),
                                          containerd_members(x, version))
        elif pkg == "containernetworking-plugins":
            artifact = "cni_plugins"
            sha = write_deterministic_tgz(tree / upstream_path(artifact, version),
                                          cni_members(x, version, debver, suite))
        elif pkg == "runc":
            artifact = "runc"
            src = _find_binary(x, "runc", ("/usr/sbin", "/usr/bin", "/sbin", "/bin"))
            if src is None or not _is_elf(src):
                raise MirrorBuildError(f"runc {debver}: no ELF runc binary in the package")
            dest = tree / upstream_path(artifact, version)
            copy_atomic(src, dest, 0o755)
            sha = sha256_file(dest)
        else:
            raise MirrorBuildError(f"unexpected package {pkg}")
    finally:
        shutil.rmtree(x, ignore_errors=True)
    return artifact, version, sha, info


def build_into(out: Path, debs: Dict[str, Dict[str, Path]], work: Path) -> None:
    """Build tree/, manifest.json and sources.json into `out` (a fresh directory)."""
    tree = out / "tree"
    manifest: Dict[str, Dict[str, Dict[str, str]]] = {a: {} for a in ARTIFACTS}
    sources: Dict[str, Dict[str, Dict[str, str]]] = {a: {} for a in ARTIFACTS}

    jobs = [(suite, pkg, deb) for suite, pkgs in debs.items() for pkg, deb in pkgs.items()
            if not (pkg == "runc" and suite != RUNC_SUITE)]
    # gzip (zlib) releases the GIL: pack the tarballs in parallel.
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
        futures = [pool.submit(_build_package, tree, suite, pkg, deb, work) for suite, pkg, deb in jobs]
        results = [f.result() for f in futures]  # in job order: deterministic manifest
    for artifact, version, sha, info in results:
        _add(manifest, sources, artifact, version, sha, info)

    write_shared_artifacts(tree, manifest, sources)
    write_published_checksums(tree, manifest)
    write_release_documents(tree, manifest)
    write_json_atomic(out / "sources.json", {"inputs": inputs_fingerprint(), "artifacts": sources})
    # manifest.json last: its presence marks a complete build.
    write_json_atomic(out / "manifest.json", manifest)


def write_published_checksums(tree: Path, manifest: Dict[str, Dict[str, Dict[str, str]]]) -> None:
    """The checksum files upstream publishes beside its release files, at the paths and in the
    format podnet reads them from (tasks.artifacts.checksums.published_source): "<sha256>  <file name>"
    lines, one file per release file, or one for several (runc.sha256sum); the sha256 alone where
    upstream publishes it so (format ``bare``: dl.k8s.io's ``<binary>.sha256``)."""
    from urllib.parse import urlsplit

    from tasks.artifacts.catalog import pinned
    from tasks.artifacts.checksums import published_source

    files: Dict[str, List[str]] = {}
    for artifact, versions in sorted(manifest.items()):
        bare = pinned()[artifact].get("published", {}).get("format") == "bare"  # dl.k8s.io: the hex alone
        for version, shas in sorted(versions.items()):
            for arch, sha in sorted(shas.items()):
                if artifact == "flanneld":  # no checksum files upstream: the release API (below)
                    continue
                path = urlsplit(published_source(artifact, version, arch, None)).path.lstrip("/")
                line = f"{sha}\n" if bare else f"{sha}  {Path(upstream_path(artifact, version, arch)).name}\n"
                files.setdefault(path, []).append(line)
    for path, lines in files.items():
        write_atomic(tree / path, "".join(lines).encode())


def output_is_current(out: Path) -> bool:
    """True if `out` holds a complete build matching the current inputs."""
    try:
        manifest = json.loads((out / "manifest.json").read_text())
        sources = json.loads((out / "sources.json").read_text())
    except (OSError, ValueError):
        return False
    if sources.get("inputs") != inputs_fingerprint():
        return False
    for artifact, versions in manifest.items():
        for version, shas in versions.items():
            for arch in shas:
                if not (out / "tree" / upstream_path(artifact, version, arch)).is_file():
                    return False
    return True


@contextlib.contextmanager
def _locked(root: Path):
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build(cache_dir: Union[str, Path, None] = None, out_dir: Union[str, Path, None] = None,
          force: bool = False, refresh: bool = False) -> Path:
    """Build (or reuse) the mirror; return the output directory.

    cache_dir: base cache dir (default $PODNET_TEST_CACHE or /var/cache/podnet-test);
               the mirror lives in <cache_dir>/mirror.
    out_dir:   where to put tree/ + manifest.json + sources.json
               (default <cache>/mirror/out-v<LAYOUT_VERSION>).  Replaced atomically.
    force:     rebuild the output even if a current one exists (reuses the .debs).
    refresh:   re-run apt-get update and download the .debs again.
    """
    root = cache_root(cache_dir)
    # One output per layout: checkouts of different layouts on one machine never replace (and
    # delete under a running test) each other's tree.
    out = Path(out_dir) if out_dir is not None else root / f"out-v{LAYOUT_VERSION}"
    with _locked(root):
        if not force and not refresh and output_is_current(out):
            return out
        debs = fetch_debs(root, refresh=refresh)
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-staging-", dir=out.parent))
        work = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
        old = None
        try:
            build_into(staging, debs, work)
            os.chmod(staging, 0o755)
            if out.exists():
                old = out.parent / f".{out.name}-old-{os.getpid()}"
                os.replace(out, old)
            os.replace(staging, out)
            _fsync_dir(out.parent)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(staging, ignore_errors=True)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse
    import time
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache-dir")
    ap.add_argument("--out-dir")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--refresh", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    out = build(args.cache_dir, args.out_dir, force=args.force, refresh=args.refresh)
    print(f"mirror: {out} ({time.monotonic() - t0:.1f}s)")
    print((out / "manifest.json").read_text(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
