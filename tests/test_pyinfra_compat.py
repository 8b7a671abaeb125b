"""podnet's uses of pyinfra internals are all present in the installed pyinfra, and a missing one fails loudly."""

import os
import subprocess
import sys
from pathlib import Path

import pyinfra
import pytest

from tasks.engine import pyinfra_compat

REPO = Path(__file__).resolve().parent.parent


def test_installed_pyinfra_is_the_tested_minor_release():
    assert pyinfra.__version__.startswith(pyinfra_compat.TESTED_MINOR + ".")
    requirement = next(line for line in (REPO / "requirements.txt").read_text().splitlines()
                       if line.startswith("pyinfra"))
    assert requirement.split()[0] == f"pyinfra>={pyinfra_compat.TESTED_MINOR},<3.11"


def test_every_internal_is_where_podnet_expects_it():
    # In a fresh interpreter: the command-line internals need pyinfra_cli, which patches the standard library.
    code = ("import pyinfra_cli; from tasks.engine import pyinfra_compat as c; "
            "print(c.missing_internals(c.INTERNALS + c.CLI_INTERNALS))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_patched_names_are_the_ones_pyinfra_reads():
    """fast_operation_order rebinds the names pyinfra's ordering code looks up at call time."""
    import pyinfra.api.util as util

    saved = util.stack, util.getframeinfo
    try:
        pyinfra_compat.fast_operation_order()
        assert util.stack is pyinfra_compat._stack_without_source
        assert util.getframeinfo is pyinfra_compat._frameinfo_without_source
        names = util.get_operation_order_from_stack.__code__.co_names
        assert "stack" in names and "getframeinfo" in names
    finally:
        util.stack, util.getframeinfo = saved


@pytest.mark.parametrize("module, path", [("pyinfra.api.util", "stack"), ("pyinfra.api.command", "FunctionCommand.execute")])
def test_a_moved_internal_stops_podnet_with_its_name(monkeypatch, module, path):
    import importlib

    owner = importlib.import_module(module)
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    monkeypatch.delattr(owner, name)
    with pytest.raises(pyinfra_compat.PyinfraCompatError) as error:
        pyinfra_compat.check()
    message = str(error.value)
    assert f"{module}.{path}" in message
    assert "pip install 'pyinfra>=3.10,<3.11'" in message


@pytest.mark.parametrize("python_setting, cached", [({}, True), ({"PYTHONDONTWRITEBYTECODE": "1"}, False)])
def test_podnets_modules_are_compiled_once_under_pyinfras_cli_unless_python_is_told_not_to(tmp_path, python_setting,
                                                                                           cached):
    """pyinfra's CLI turns bytecode caching off for its process (pyinfra_cli/main.py); podnet's modules are cached
    all the same (each run would compile them again otherwise), unless -B or PYTHONDONTWRITEBYTECODE says no."""
    prefix = tmp_path / "pycache"
    code = ("import sys; from pyinfra_cli import main; sys.dont_write_bytecode = True; "  # as main.main() leaves it
            "import tasks.deploys")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-X", f"pycache_prefix={prefix}", "-c", code], cwd=REPO, check=True,
                   env={**env, **python_setting})
    written = {p.name.split(".")[0] for p in prefix.rglob("*.pyc") if "tasks" in p.parts}
    assert ({"deploys", "runner", "probe", "kernel"} <= written) if cached else not written, sorted(written)
