"""Host mount-table helpers: find and remove the mounts the harness made under a directory."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .util import ClusterError, log, run


@dataclass(frozen=True)
class Mount:
    mountpoint: str
    options: str  # per-mount options, e.g. "ro,nosuid,nodev"
    fstype: str
    source: str
    super_options: str


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo octal."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """Parse /proc/<pid>/mountinfo text (pure)."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        left_fields = left.split()
        right_fields = right.split()
        if len(left_fields) < 5 or len(right_fields) < 2:
            continue
        mounts.append(
            Mount(
                mountpoint=_unescape(left_fields[4]),
                options=left_fields[5] if len(left_fields) > 5 else "",
                fstype=right_fields[0],
                source=_unescape(right_fields[1]),
                super_options=right_fields[2] if len(right_fields) > 2 else "",
            )
        )
    return mounts


def read_mounts(pid: int | str = "self") -> list[Mount]:
    return parse_mountinfo(Path(f"/proc/{pid}/mountinfo").read_text())


def _is_under(path: str, top: str) -> bool:
    top = top.rstrip("/") or "/"
    return path == top or path.startswith(top + "/")


def mounts_under(top: str | Path) -> list[Mount]:
    """Host mounts at or below `top`, deepest first (the order they must be unmounted in)."""
    top = os.path.realpath(top)
    found = [m for m in read_mounts() if _is_under(m.mountpoint, top)]
    return sorted(found, key=lambda m: m.mountpoint.count("/"), reverse=True)


def overlays_using_lower(lower: str | Path) -> list[Mount]:
    """Overlay mounts on the host whose lowerdir is `lower` (to avoid deleting a base in use)."""
    needle = f"lowerdir={os.path.realpath(lower)}"
    return [m for m in read_mounts() if m.fstype == "overlay" and needle in m.super_options]


def unmount_tree(top: str | Path) -> None:
    """Unmount everything at/below `top`: plain umount first, lazy umount as the last resort.

    Raises ClusterError if something is still mounted afterwards (callers must not then
    delete the directory tree, which could reach into a still-mounted filesystem).
    """
    for mount in mounts_under(top):
        if run(["umount", mount.mountpoint], check=False, timeout=30).returncode != 0:
            log.warning("umount %s failed; using lazy umount", mount.mountpoint)
            run(["umount", "-l", mount.mountpoint], check=False, timeout=30)
    left = mounts_under(top)
    if left:
        raise ClusterError(f"still mounted under {top}: {[m.mountpoint for m in left]}")
