"""
The real Kubernetes and flannel binaries the test cluster runs.

They come from ``shared/bin`` beside the checkout (``$PODNET_SHARED_BIN`` overrides the
place; SHARED_BIN_PLACES lists where else they are looked for): xz-compressed static linux/amd64 builds of Kubernetes 1.36.2, flanneld v0.28.9,
the flannel CNI plugin v1.9.1-flannel1 and containerd v2.3.4, with their sums in
``SHA256SUMS`` (see its README for provenance). Each is decompressed once into the test
cache, checked against that sum, and reused.

Where that folder is missing (a contributor's own machine), the same releases are
fetched from upstream's download hosts if they can be reached; otherwise ``missing()``
says why, and the tests that need them are skipped with that reason (never passed).
"""

from __future__ import annotations

import hashlib
import lzma
import os
import shutil
from pathlib import Path

import requests

from testbed.cri.cache import cache_root, make_tmp_dir, publish_dir

REPO = Path(__file__).resolve().parents[2]
KUBERNETES_VERSION = "1.36.2"
FLANNELD_VERSION = "0.28.9"
FLANNEL_CNI_PLUGIN_VERSION = "1.9.1-flannel1"  # the mirror also serves it as -flannel2/-flannel3 (stand-ins)
CONTAINERD_VERSION = "2.3.4"
KUBERNETES_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "kubelet",
                       "kubectl", "kubeadm")
FLANNEL_BINARIES = ("flanneld", "flannel")
CONTAINERD_BINARIES = ("containerd", "containerd-shim-runc-v2", "ctr")
# Upstream's release files for the same versions, for a machine without shared/bin.
UPSTREAM = {
    **{name: f"https://dl.k8s.io/release/v{KUBERNETES_VERSION}/bin/linux/amd64/{name}" for name in KUBERNETES_BINARIES},
    "flanneld": f"https://github.com/flannel-io/flannel/releases/download/v{FLANNELD_VERSION}/flanneld-amd64",
}
DOWNLOAD_TIMEOUT = 20


# Where the project's machines keep them: beside the checkout, or (a clone elsewhere) /work/shared/bin.
SHARED_BIN_PLACES = (REPO.parent / "shared" / "bin", Path("/work/shared/bin"))


def shared_dir() -> Path:
    """``$PODNET_SHARED_BIN``, else the first of SHARED_BIN_PLACES that holds SHA256SUMS."""
    if os.environ.get("PODNET_SHARED_BIN"):
        return Path(os.environ["PODNET_SHARED_BIN"])
    return next((p for p in SHARED_BIN_PLACES if (p / "SHA256SUMS").is_file()), SHARED_BIN_PLACES[0])


def _sums(directory: Path) -> dict[str, str]:
    sums = {}
    for line in (directory / "SHA256SUMS").read_text().splitlines():
        if line.strip():
            digest, name = line.split()
            sums[name.lstrip("*")] = digest
    return sums


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Unavailable(RuntimeError):
    """The binaries can be had neither from shared/bin nor from upstream."""


def binary(name: str) -> Path:
    """The verified binary ``name`` (decompressed once into the test cache). Raises Unavailable."""
    directory = shared_dir()
    if (directory / f"{name}.xz").is_file() and (directory / "SHA256SUMS").is_file():
        expected = _sums(directory).get(name)
        if expected is None:
            raise Unavailable(f"{directory}/SHA256SUMS has no sum for {name}")
        final = cache_root() / "shared-bin" / expected
        if not (final / name).is_file():
            tmp = make_tmp_dir(final.parent, name)
            with lzma.open(directory / f"{name}.xz") as src, open(tmp / name, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            (tmp / name).chmod(0o755)
            actual = _sha256(tmp / name)
            if actual != expected:
                shutil.rmtree(tmp, ignore_errors=True)
                raise Unavailable(f"{directory}/{name}.xz decompresses to sha256 {actual}, not {expected}")
            publish_dir(tmp, final)
        return final / name
    return _from_upstream(name)


def _from_upstream(name: str) -> Path:
    url = UPSTREAM.get(name)
    if url is None:
        raise Unavailable(f"{shared_dir()} is missing and {name} has no single-file upstream release to fetch")
    final = cache_root() / "upstream-bin" / hashlib.sha256(url.encode()).hexdigest()[:24]
    if (final / name).is_file():
        return final / name
    try:
        sums = requests.get(url + ".sha256", timeout=DOWNLOAD_TIMEOUT)
        sums.raise_for_status()
        expected = sums.text.split()[0]
        tmp = make_tmp_dir(final.parent, name)
        with requests.get(url, stream=True, timeout=DOWNLOAD_TIMEOUT) as response, open(tmp / name, "wb") as out:
            response.raise_for_status()
            shutil.copyfileobj(response.raw, out, 1 << 20)
    except (requests.RequestException, IndexError) as error:
        raise Unavailable(f"{shared_dir()} is missing and {url} could not be fetched: {error}") from None
    if _sha256(tmp / name) != expected:
        shutil.rmtree(tmp, ignore_errors=True)
        raise Unavailable(f"{url} does not match its published sha256")
    (tmp / name).chmod(0o755)
    return publish_dir(tmp, final) / name


def missing(*names: str) -> str | None:
    """Why the binaries ``names`` (default: all the test cluster needs) cannot be had, or None."""
    try:
        for name in names or (*KUBERNETES_BINARIES, *FLANNEL_BINARIES):
            binary(name)
    except Unavailable as error:
        return str(error)
    return None
