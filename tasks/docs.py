"""
The documents written from the code's own declarations, so that they cannot drift from it:

- the README's settings table and the commented group-data example ``inventory/group_data/all.py``,
  from the settings' declaration (``Settings`` in tasks/settings/__init__.py; tasks/settings/docs.py
  lays them out);
- the README's "Supported versions" table, from the compatibility table (tasks/releases.py,
  ``supported_versions_rows``);
- the README's step table, from the step list (``POD_NETWORK`` in tasks/deploys.py, after the step that
  clears what an interrupted run left) and each ``Step``'s own one-line ``name``.

    python3 -m tasks.docs          # rewrite every generated block from the declarations
    python3 -m tasks.docs --check  # exit 1 and name the file that differs

(``python3 -m tasks.settings.docs`` is the command's old name.) tests/test_docs.py fails when a file
differs from what this module writes.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tasks import deploys, interrupted, releases
from tasks.engine.context import Step
from tasks.settings import docs as settings_docs

CHECKOUT = Path(__file__).resolve().parents[1]
README = CHECKOUT / "README.md"
GROUP_DATA = CHECKOUT / "inventory" / "group_data" / "all.py"


@dataclass(frozen=True)
class Table:
    """A generated Markdown table inside a hand-written document: its header line, and its rows."""

    header: tuple[str, ...]
    rows: Callable[[], list[tuple[str, ...]]]

    def render(self) -> str:
        """The header as declared, the rule, every row with its cells escaped."""
        rule = "|" + "|".join(["---"] * len(self.header)) + "|\n"
        rows = "".join("| " + " | ".join(_cell(c) for c in row) + " |\n" for row in self.rows())
        return "| " + " | ".join(self.header) + " |\n" + rule + rows

    def pattern(self) -> re.Pattern:
        head = r"\| " + r" \| ".join(re.escape(h) for h in self.header) + r" \|\n"
        rule = r"\|" + r"\|".join(["---"] * len(self.header)) + r"\|\n"
        return re.compile("^" + head + rule + r"(?:\|.*\|\n)*", re.MULTILINE)

    def replace_in(self, text: str, where: str) -> str:
        """``text`` with this table written anew; ValueError when it has none."""
        if not self.pattern().search(text):
            raise ValueError(f"{where} has no table | {' | '.join(self.header)} |")
        return self.pattern().sub(lambda _: self.render(), text, count=1)


def _cell(text: str) -> str:
    """Text in a Markdown table cell: a '|' would end the cell."""
    return text.replace("|", "\\|")


SETTINGS_TABLE = Table(("setting", "default", "meaning"), settings_docs.table_rows)
VERSIONS_TABLE = Table(("component", "releases", "what podnet uses", "upstream source"), releases.supported_versions_rows)


def run_steps() -> tuple[Step, ...]:
    """Every step of a deploy.py run, in order: what an interrupted run left, then POD_NETWORK."""
    return (interrupted.STEP, *deploys.POD_NETWORK)


def step_rows() -> list[tuple[str, ...]]:
    """One row per step: its number, the concern, its module, what it ensures (the Step's name after the concern)."""
    rows = []
    for number, step in enumerate(run_steps(), 1):
        concern, _, ensured = step.name.partition(": ")
        module = inspect.getmodule(step.apply)
        path = Path(module.__file__).resolve().relative_to(CHECKOUT).as_posix() if module and module.__file__ else "?"
        rows.append((str(number), concern, f"`{path}`", ensured))
    return rows


STEPS_TABLE = Table(("#", "step", "module", "what is ensured"), step_rows)


def readme(text: str) -> str:
    """The README with its settings table, supported-versions table and step table written anew."""
    for table in (SETTINGS_TABLE, VERSIONS_TABLE, STEPS_TABLE):
        text = table.replace_in(text, "README.md")
    return text


def documents() -> dict[Path, str]:
    """Every generated document: path -> its text as it should be."""
    return {README: readme(README.read_text()), GROUP_DATA: settings_docs.group_data_example()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tasks.docs", description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file is out of date")
    args = parser.parse_args(argv)
    wanted = documents()
    stale = [path for path, text in wanted.items() if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(CHECKOUT)} differs from the code's declarations; run: python3 -m tasks.docs",
                  file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(wanted[path])
        print(f"wrote {path.relative_to(CHECKOUT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
