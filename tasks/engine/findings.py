"""
What is wrong on a node, apart from what podnet does about it.

Each concern has a pure function from the settings and the probe's answer to a list of
``Finding``s (the ``findings`` verb of its ``Step``s, tasks/engine/context.py): an error-level
finding is a refusal (``refuse`` raises it, with the message podnet has always given), a
warning-level one is said and the run goes on (``say``). Because the functions change nothing,
every problem of a node can be listed without applying anything (all of them, not the first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from pyinfra import logger

from tasks.errors import PodnetError

ERROR = "error"  # podnet refuses: the run stops before any host changes
WARNING = "warning"  # podnet says it and goes on
SEVERITIES = (ERROR, WARNING)


@dataclass(frozen=True)
class Finding:
    """
    One problem: ``severity`` (ERROR or WARNING), ``what`` is wrong, ``where`` (the host, a file,
    a setting: what the message starts with; may be empty), ``why`` it matters, ``fix`` (what to
    do). ``message`` is what podnet says: "<where>: <what>: <why>; <fix>" (empty parts left out),
    or ``text`` where the sentence does not split that way. ``refusal``: the PodnetError raised
    for an error-level finding.
    """

    severity: str
    what: str
    where: str = ""
    why: str = ""
    fix: str = ""
    text: str | None = None
    refusal: type[Exception] = PodnetError

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity {self.severity!r} is not one of {', '.join(SEVERITIES)}")

    @property
    def message(self) -> str:
        if self.text is not None:
            return self.text
        head = ": ".join(part for part in (self.where, self.what, self.why) if part)
        return f"{head}; {self.fix}" if self.fix else head

    @property
    def is_error(self) -> bool:
        return self.severity == ERROR


def error(what: str, refusal: type[Exception], **parts: str) -> Finding:
    return Finding(ERROR, what, refusal=refusal, **parts)


def warning(what: str, **parts: str) -> Finding:
    return Finding(WARNING, what, **parts)


def refuse(findings: Iterable[Finding]) -> None:
    """Raise the first error-level finding as its ``refusal`` (with its ``message``); nothing else."""
    for finding in findings:
        if finding.is_error:
            raise finding.refusal(finding.message)


def say(findings: Iterable[Finding]) -> None:
    """Log every warning-level finding, as podnet has always said them ("podnet: <message>")."""
    for finding in findings:
        if not finding.is_error:
            logger.warning("podnet: %s", finding.message)


def errors(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.is_error]


def warnings(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if not f.is_error]
