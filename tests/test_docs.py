"""The README's settings table and first-screen commands stay true to the code."""

import re
from pathlib import Path

from tasks.settings import SPECS

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def test_readme_settings_table_lists_every_setting_with_its_default():
    rows = dict(re.findall(r"^\| `(\w+)` \| (.+?) \|", README, re.MULTILINE))
    for spec in SPECS:
        assert spec.name in rows, f"README settings table lacks {spec.name}"
        expected = "unset" if spec.default is None else "`" + repr(spec.default).replace("'", '"') + "`"
        assert rows[spec.name] == expected, spec.name


def test_ci_runs_the_readme_test_command():
    first_screen = README.split("\n## ")[0]
    assert "make test" in first_screen and "make demo" in first_screen
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.MULTILINE)
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^test: deps\n\t\$\(PYTHON\) -m pytest -q -ra$", makefile, re.MULTILINE)


def test_readme_table_and_group_data_example_are_written_from_the_settings_declaration():
    from tasks.settings import docs as settings_docs

    assert settings_docs.readme_with_table(README) == README, "run: python3 -m tasks.settings.docs"
    group_data = (REPO / "inventory" / "group_data" / "all.py").read_text()
    assert group_data == settings_docs.group_data_example(), "run: python3 -m tasks.settings.docs"
    assert settings_docs.main(["--check"]) == 0
