"""podnet's uses of pyinfra internals are all present in the installed pyinfra, and a missing one fails loudly."""

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
