"""The test bed (testbed/) is a package of its own: `make demo` and the benchmark run with the
toolkit's requirements alone, without pytest or the CRI client's grpcio; no nodes needed."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BED = REPO / "testbed"
# Test-only packages: the bed imports none of them, but for grpc in its CRI client.
TEST_ONLY = ("pytest", "tests", "grpc", "grpc_tools")
CRI_CLIENT = BED / "cri" / "client.py"


def imported_roots(path: Path) -> set[str]:
    """The top-level names a module imports, anywhere in it (also inside functions)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_the_bed_imports_no_test_only_package_but_grpc_in_its_cri_client():
    found = {str(path.relative_to(REPO)): sorted(imported_roots(path) & set(TEST_ONLY))
             for path in sorted(BED.rglob("*.py"))}
    assert found, "no test bed modules found"
    assert found.pop(str(CRI_CLIENT.relative_to(REPO))) == ["grpc"]
    assert {path: names for path, names in found.items() if names} == {}


def test_demo_and_benchmark_start_without_pytest_or_grpc():
    # Each of these packages made unimportable, as on a machine with requirements.txt alone.
    script = f"""
import sys
for name in {TEST_ONLY!r}:
    sys.modules[name] = None
from testbed import demo
import bench.run
for main in (demo.main, bench.run.main):
    try:
        main(["--help"])
    except SystemExit as done:
        assert done.code == 0, done.code
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "python3 -m testbed.demo" in done.stdout
    assert "python3 -m bench.run" in done.stdout
