"""
The documents written from the settings' one declaration (``Settings`` in tasks/settings/__init__.py)
and from the compatibility table (tasks/releases.py): the README's settings table, its "Supported
versions" table, and the commented group-data example ``inventory/group_data/all.py``.

    python3 -m tasks.settings.docs          # rewrite both from the declaration
    python3 -m tasks.settings.docs --check  # exit 1 and name the file that differs

tests/test_docs.py fails when either file differs from what this module writes.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from tasks import releases
from tasks.settings import SPECS, SettingSpec

CHECKOUT = Path(__file__).resolve().parents[2]
README = CHECKOUT / "README.md"
GROUP_DATA = CHECKOUT / "inventory" / "group_data" / "all.py"
TABLE_HEADER = "| setting | default | meaning |\n|---|---|---|\n"
TABLE_RE = re.compile(r"^\| setting \| default \| meaning \|\n\|---\|---\|---\|\n(?:\|.*\|\n)*", re.MULTILINE)
VERSIONS_RE = re.compile("^" + re.escape(releases.TABLE_HEADER) + r"(?:\|.*\|\n)*", re.MULTILINE)
GROUP_DATA_HEADER = '''"""
Every podnet setting, with its default and meaning. Uncomment and change what your
cluster needs; group data here applies to every inventory in this folder. Settings
marked (per host) may also be set per host in the inventory file; every other one must
have the same value on all hosts (podnet checks this before touching any host).

Checksums: a release that files/artifacts.yaml does not pin gets its sha256 from upstream's
published checksum on the first run and keeps it in the lock file (artifact_lock_file,
commit it); artifact_checksums pins one by hand and wins over both.

Written by `python3 -m tasks.settings.docs` from the settings' declaration in tasks/settings/__init__.py.
"""
'''


def _meaning(spec: SettingSpec) -> str:
    return spec.meaning + (" (per host)" if spec.scope == "host" else "")


def _cell(text: str) -> str:
    """Text in a Markdown table cell: a '|' would end the cell."""
    return text.replace("|", "\\|")


def readme_table() -> str:
    """The README's settings table: one row per setting, default as written in inventory data."""
    def default(spec: SettingSpec) -> str:
        return "unset" if spec.default is None else "`" + repr(spec.default).replace("'", '"') + "`"

    return TABLE_HEADER + "".join(f"| `{s.name}` | {_cell(default(s))} | {_cell(_meaning(s))} |\n" for s in SPECS)


def group_data_example() -> str:
    """``inventory/group_data/all.py``: every setting commented out at its default, under its meaning."""
    return GROUP_DATA_HEADER + "".join(f"\n# {_meaning(s)}\n# {s.name} = {s.default!r}\n" for s in SPECS)


def readme_with_table(readme: str) -> str:
    """The README text with its settings table replaced by ``readme_table()`` and its supported-versions
    table by ``releases.supported_versions_table()``; ValueError when either is missing."""
    if not TABLE_RE.search(readme):
        raise ValueError("README.md has no settings table (| setting | default | meaning |)")
    if not VERSIONS_RE.search(readme):
        raise ValueError("README.md has no supported-versions table (" + releases.TABLE_HEADER.split("\n")[0] + ")")
    readme = TABLE_RE.sub(lambda _: readme_table(), readme, count=1)
    return VERSIONS_RE.sub(lambda _: releases.supported_versions_table(), readme, count=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tasks.settings.docs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file is out of date")
    args = parser.parse_args(argv)
    wanted = {README: readme_with_table(README.read_text()), GROUP_DATA: group_data_example()}
    stale = [path for path, text in wanted.items() if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(CHECKOUT)} differs from the settings' declaration; "
                  "run: python3 -m tasks.settings.docs", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(wanted[path])
        print(f"wrote {path.relative_to(CHECKOUT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
