"""
The host's apt sources, parsed: shared by the node harness (which debootstraps from the
machine's Debian archive) and the test mirror (which downloads Debian's packages).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List

DEBIAN_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")


def parse_deb822_sources(text: str) -> List[Dict[str, str]]:
    """Parse a deb822 .sources file into a list of {lower-case field: value}."""
    stanzas: List[Dict[str, str]] = []
    cur: Dict[str, str] = {}
    last = None
    for line in text.splitlines() + [""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if cur:
                stanzas.append(cur)
            cur, last = {}, None
            continue
        if line[0] in " \t":
            if last is not None:
                cur[last] += "\n" + line.strip()
            continue
        key, sep, value = line.partition(":")
        if not sep:
            continue
        last = key.strip().lower()
        cur[last] = value.strip()
    return stanzas


def parse_one_line_sources(text: str) -> List[Dict[str, str]]:
    """Parse one-line-style sources.list entries into deb822-like dicts."""
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        opts = ""
        m = re.match(r"^(\S+)\s+\[([^\]]*)\]\s+(.*)$", line)
        if m:
            typ, opts, rest = m.groups()
        else:
            typ, _, rest = line.partition(" ")
        parts = rest.split()
        if len(parts) < 2:
            continue
        entry = {"types": typ, "uris": parts[0], "suites": parts[1],
                 "components": " ".join(parts[2:])}
        for opt in opts.split():
            k, _, v = opt.partition("=")
            if k == "signed-by":
                entry["signed-by"] = v
        out.append(entry)
    return out
