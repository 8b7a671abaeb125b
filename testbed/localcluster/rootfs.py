"""The shared, read-only base root filesystem of the test nodes (built once per suite).

The base is a debootstrap `minbase` tree plus the packages a Kubernetes node needs to run
containerd/runc/CNI plugins *once the toolkit under test has installed them*; containerd,
runc and CNI plugins themselves are deliberately NOT in it.  Nodes mount it as the lower
layer of an overlayfs, so it is never written after the build.

It is cached at ${PODNET_TEST_CACHE:-/var/cache/podnet-test}/rootfs-<suite>, built in a
temporary directory next to it and renamed into place only when complete, so an
interrupted build is never reused.  A stamp file records the build recipe; a cache built
from a different recipe is rebuilt (unless clusters still use it).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import time
from pathlib import Path

from testbed.debian_sources import DEBIAN_SOURCES, parse_deb822_sources

from .mounts import overlays_using_lower, unmount_tree
from .util import ClusterError, log, run

# What a node needs besides minbase.  libseccomp2: runc links it.  iptables: CNI
# bridge/portmap/flannel ipmasq call it.  kmod/procps: modprobe/sysctl used by the toolkit.
# iputils-ping: node-to-node reachability checks in tests.  etcd-server: the test control
# plane's etcd (masked below; started only on the control-plane node).  conntrack:
# kube-proxy cleans up stale UDP entries with it.
BASE_PACKAGES = [
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "iproute2",
    "python3",
    "ca-certificates",
    "iptables",
    "kmod",
    "procps",
    "libseccomp2",
    "iputils-ping",
    "etcd-server",
    "conntrack",
]

# Units that fail or slow the boot inside a container (no consoles, no network-online,
# no internet for apt timers, no block devices to scrub/trim).
MASKED_UNITS = [
    "systemd-networkd-wait-online.service",
    "console-getty.service",
    "getty@.service",
    "serial-getty@.service",
    "getty-static.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "etcd.service",  # Debian's package enables it; the test control plane starts its own etcd
]

SSHD_DROPIN = """\
# localcluster test bed: key-only root login; VERBOSE so 'Starting session:' lines are logged.
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
LogLevel VERBOSE
UseDNS no
"""

STAMP = "etc/localcluster-base.stamp"
# Bump when the configuration steps below change in a way the package list does not show.
RECIPE_VERSION = "1"


def cache_root() -> Path:
    return Path(os.environ.get("PODNET_TEST_CACHE", "/var/cache/podnet-test"))


def recipe_stamp(suite: str, mirror: str) -> str:
    """A fingerprint of everything that defines the base; stored inside it."""
    recipe = "\n".join([RECIPE_VERSION, suite, mirror, *BASE_PACKAGES, *MASKED_UNITS, SSHD_DROPIN])
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


# --- finding the Debian mirror -------------------------------------------------------


def debian_mirror(suite: str, sources_text: str) -> str:
    """The first `deb` URI serving `suite`; else the first serving any plain codename (pure)."""
    debs = [s for s in parse_deb822_sources(sources_text) if "deb" in s.get("types", "").split()]
    exact = [s for s in debs if suite in s.get("suites", "").split()]
    plain = [s for s in debs if any("-" not in x for x in s.get("suites", "").split())]
    for stanza in exact + plain:
        uris = stanza.get("uris", "").split()
        if uris:
            return uris[0]
    raise ClusterError(f"no Debian mirror for {suite!r} found in {DEBIAN_SOURCES}")


# --- building ------------------------------------------------------------------------


def ensure_base_rootfs(suite: str) -> Path:
    """Return the cached base rootfs for `suite`, building it first if needed."""
    mirror = debian_mirror(suite, DEBIAN_SOURCES.read_text())
    stamp = recipe_stamp(suite, mirror)
    cache = cache_root()
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / f"rootfs-{suite}"

    # One builder at a time per suite (parallel test runs / benchmark processes).
    with open(cache / f"rootfs-{suite}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _remove_stale_builds(cache, suite)
        if _stamp_of(final) == stamp:
            return final
        if final.exists():
            _discard_outdated(final)
        tmp = cache / f".rootfs-{suite}.tmp-{os.getpid()}"
        try:
            started = time.monotonic()
            _debootstrap(suite, mirror, tmp)
            _configure_base(tmp)
            (tmp / STAMP).write_text(stamp + "\n")
            os.rename(tmp, final)  # atomic: the cache is either complete or absent
            log.info("built base rootfs %s in %.0fs", final, time.monotonic() - started)
        finally:
            _remove_build_dir(tmp)
    return final


def _stamp_of(root: Path) -> str | None:
    try:
        return (root / STAMP).read_text().strip()
    except OSError:
        return None


def _remove_build_dir(path: Path) -> None:
    """Delete a (possibly interrupted) build dir; debootstrap may have left /proc etc. mounted."""
    if path.exists():
        unmount_tree(path)
        shutil.rmtree(path)


def _remove_stale_builds(cache: Path, suite: str) -> None:
    for leftover in cache.glob(f".rootfs-{suite}.tmp-*"):
        log.info("removing interrupted build %s", leftover)
        _remove_build_dir(leftover)


def _discard_outdated(final: Path) -> None:
    if overlays_using_lower(final):
        raise ClusterError(
            f"{final} was built from a different recipe but running nodes still use it; "
            "tear those clusters down first"
        )
    log.info("base rootfs %s is outdated; rebuilding", final)
    _remove_build_dir(final)


def _debootstrap(suite: str, mirror: str, target: Path) -> None:
    log.info("debootstrap %s from %s (takes a minute or two)", suite, mirror)
    run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(BASE_PACKAGES)}",
            suite,
            str(target),
            mirror,
        ],
        timeout=1800,
    )


def _configure_base(root: Path) -> None:
    """Node-independent configuration; per-node identity is written into each overlay."""
    chroot = ["chroot", str(root)]
    run([*chroot, "systemctl", "enable", "ssh.service"])
    run([*chroot, "systemctl", "mask", *MASKED_UNITS])
    dropin = root / "etc/ssh/sshd_config.d/localcluster.conf"
    dropin.parent.mkdir(parents=True, exist_ok=True)
    dropin.write_text(SSHD_DROPIN)
    # Host keys and machine-id are per node: none in the base.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    # No password for root (key login only).
    run([*chroot, "usermod", "-p", "*", "root"])
    run([*chroot, "apt-get", "clean"])
