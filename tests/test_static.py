"""
Every name the code uses is defined: pyflakes (PyCQA) reads the source without running it, so a path no other test
reaches (reset.py with kube-controller-manager as a systemd unit once called a function it never imported) is
checked too.
"""

from __future__ import annotations

from pathlib import Path

from pyflakes import api, messages, reporter

REPO = Path(__file__).resolve().parent.parent
CHECKED = ("tasks", "testbed", "bench", "tests", "deploy.py", "reset.py", "doctor.py")
# what makes code fail where it runs; unused imports and the like do not
FATAL = (messages.UndefinedName, messages.UndefinedLocal, messages.UndefinedExport, messages.DuplicateArgument,
         messages.ReturnOutsideFunction, messages.YieldOutsideFunction)


class _Collect(reporter.Reporter):
    def __init__(self) -> None:
        super().__init__(None, None)
        self.found: list[str] = []

    def flake(self, message) -> None:
        if isinstance(message, FATAL):
            self.found.append(str(message))

    def syntaxError(self, filename, msg, lineno, offset, text) -> None:
        self.found.append(f"{filename}:{lineno}: {msg}")

    def unexpectedError(self, filename, msg) -> None:
        self.found.append(f"{filename}: {msg}")


def test_no_module_uses_a_name_it_does_not_define():
    collected = _Collect()
    for entry in CHECKED:
        path = REPO / entry
        for source in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            api.checkPath(str(source), collected)
    assert collected.found == []
