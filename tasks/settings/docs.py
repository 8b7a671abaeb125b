"""
How the settings' one declaration (``Settings`` in tasks/settings/__init__.py) is laid out in the
documents written from it: the rows of the README's settings table and the commented group-data
example ``inventory/group_data/all.py``. tasks/docs.py writes them, with every other generated block
(``python3 -m tasks.docs``, of which ``python3 -m tasks.settings.docs`` is the old name).
"""

from __future__ import annotations

import runpy

from tasks.settings import SPECS, SettingSpec

GROUP_DATA_HEADER = '''"""
Every podnet setting, with its default and meaning. Uncomment and change what your
cluster needs; group data here applies to every inventory in this folder. Settings
marked (per host) may also be set per host in the inventory file; every other one must
have the same value on all hosts (podnet checks this before touching any host).

Checksums: a release that files/artifacts.yaml does not pin gets its sha256 from upstream's
published checksum on the first run and keeps it in the lock file (artifact_lock_file,
commit it); artifact_checksums pins one by hand and wins over both.

Written by `python3 -m tasks.docs` from the settings' declaration in tasks/settings/__init__.py.
"""
'''


def _meaning(spec: SettingSpec) -> str:
    return spec.meaning + (" (per host)" if spec.scope == "host" else "")


def _default(spec: SettingSpec) -> str:
    """The default as written in inventory data ("unset" for None)."""
    return "unset" if spec.default is None else "`" + repr(spec.default).replace("'", '"') + "`"


def table_rows() -> list[tuple[str, str, str]]:
    """The README's settings table: one row per setting (name, default, meaning), in declaration order."""
    return [(f"`{s.name}`", _default(s), _meaning(s)) for s in SPECS]


def group_data_example() -> str:
    """``inventory/group_data/all.py``: every setting commented out at its default, under its meaning."""
    return GROUP_DATA_HEADER + "".join(f"\n# {_meaning(s)}\n# {s.name} = {s.default!r}\n" for s in SPECS)


if __name__ == "__main__":  # the old name of `python3 -m tasks.docs`, which writes every generated document
    runpy.run_module("tasks.docs", run_name="__main__", alter_sys=True)
