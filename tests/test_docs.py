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
    recipe = re.search(r"^test: deps\n((?:\t.*\n)+)", makefile, re.MULTILINE).group(1)
    assert recipe == ('\t$(PYTHON) -m pytest -q -ra -m "not e2e" -n auto\n'  # every test: the unit ones over the cores,
                      "\t$(PYTHON) -m pytest -q -ra -m e2e\n")  # then the end-to-end ones, sharing booted clusters
    assert 'pytest -q -ra -m "not e2e" -n auto' in first_screen and "pytest -q -ra -m e2e" in first_screen


def test_readme_table_and_group_data_example_are_written_from_the_settings_declaration():
    from tasks import docs

    assert docs.SETTINGS_TABLE.replace_in(README, "README.md") == README, "run: python3 -m tasks.docs"
    group_data = (REPO / "inventory" / "group_data" / "all.py").read_text()
    assert group_data == docs.settings_docs.group_data_example(), "run: python3 -m tasks.docs"
    assert docs.main(["--check"]) == 0


def test_readme_step_table_lists_every_step_of_a_run_in_order():
    from tasks import deploys, docs, interrupted

    assert docs.STEPS_TABLE.replace_in(README, "README.md") == README, "run: python3 -m tasks.docs"
    rows = re.findall(r"^\| (\d+) \| ([^|]+) \| `([^`]+)` \| (.+) \|$", README, re.MULTILINE)
    steps = (interrupted.STEP, *deploys.POD_NETWORK)
    assert [int(n) for n, *_ in rows] == list(range(1, len(steps) + 1))
    assert [f"{concern}: {ensured}" for _, concern, _, ensured in rows] == [step.name for step in steps]
    assert [path for _, _, path, _ in rows][1:3] == ["tasks/kernel.py", "tasks/kubeadm.py"]


def test_the_old_docs_command_still_writes_every_document():
    import subprocess
    import sys

    old = subprocess.run([sys.executable, "-m", "tasks.settings.docs", "--check"], cwd=REPO, capture_output=True,
                         text=True)
    assert old.returncode == 0, old.stderr
