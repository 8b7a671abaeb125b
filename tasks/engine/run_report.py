"""
What a run left undone on the hosts that failed during it, said once at the end of the run.

pyinfra drops a host from the rest of the run when one of its operations fails (a command
fails, or the connection to the node is lost) and carries on with the other hosts; its
closing table counts errors per operation but does not say which host stopped where, nor
what it then did not do there. This module listens to pyinfra's state callbacks and, after
the last operation, prints for every host that failed: the operation it failed at, and the
later operations that would have changed something there (decided from the plan, as the
operations do: no remote command). Rerunning the deploy does exactly those once the host is
reachable again.
"""

from __future__ import annotations

import logging

from pyinfra import logger
from pyinfra.api import BaseStateCallback

from tasks.engine.pyinfra_compat import known_change, operations_of, planned_in


def _op_name(state, op_hash: str) -> str:
    return ", ".join(sorted(state.get_op_meta(op_hash).names)) or op_hash


def _would_change(state, host, op_hash: str) -> bool:
    """Whether the operation's plan for ``host`` has any command (its generator yields one)."""
    known = known_change(state, host, op_hash)  # set when pyinfra checked for changes (without -y)
    if known is not None:
        return known
    quiet = logger.level
    logger.setLevel(logging.WARNING)  # the operations' planning notes were printed when they were planned
    try:
        return planned_in(state, host, op_hash)
    except Exception:  # a plan that cannot be evaluated now: say it was not done rather than hide it
        return True
    finally:
        logger.setLevel(quiet)


def undone(state, host, failed_op: str) -> list[str]:
    """The names of the operations after ``failed_op`` that would have changed ``host``."""
    order = operations_of(host)  # this host's operations, in the order they run
    later = order[order.index(failed_op) + 1:] if failed_op in order else []
    return [_op_name(state, op) for op in later if _would_change(state, host, op)]


def summary(state, failures: dict) -> list[str]:
    """One line per failed host: where it stopped and what was left undone there."""
    lines = []
    for host, op_hash in failures.items():
        left = undone(state, host, op_hash)
        rest = f"left undone there: {'; '.join(left)}" if left else "nothing after it was left undone there"
        lines.append(f"podnet: {host.name} failed at '{_op_name(state, op_hash)}'; {rest}. "
                     f"Rerun the deploy once {host.name} is reachable: it does what is left and changes nothing "
                     f"that is already done")
    return lines


class RunReport(BaseStateCallback):
    """Collects the first failed operation of each host; prints ``summary`` after the last operation,
    or as soon as every host has failed (pyinfra then ends the run at once)."""

    def __init__(self):
        self.failures: dict = {}
        self.last_op: str | None = None
        self.said = False

    def operation_host_error(self, state, host, op_hash, retry_count: int = 0, max_retries: int = 0):
        self.failures.setdefault(host, op_hash)
        if set(self.failures) >= set(state.activated_hosts):  # pyinfra stops now: "No hosts remaining!"
            self.say(state)

    def operation_end(self, state, op_hash):
        if self.last_op is None:
            order = state.get_op_order()
            self.last_op = order[-1] if order else ""
        if op_hash == self.last_op:
            self.say(state)

    def say(self, state) -> None:
        if self.failures and not self.said:
            self.said = True
            for line in summary(state, self.failures):
                logger.error(line)


def register(state) -> RunReport:
    """Listen to ``state`` (once per run, whichever host's deploy code calls it first)."""
    for handler in state.callback_handlers:
        if isinstance(handler, RunReport):
            return handler
    handler = RunReport()
    state.add_callback_handler(handler)
    return handler
