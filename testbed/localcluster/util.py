"""Small shared helpers: running commands, bounded waits, the harness error type."""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

log = logging.getLogger("localcluster")

T = TypeVar("T")

# Default upper bound for any single host command the harness runs.
COMMAND_TIMEOUT = 120.0


class ClusterError(RuntimeError):
    """Raised for every failure the harness detects itself (clear message, no traceback noise)."""


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = COMMAND_TIMEOUT,
    input: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run a command with captured text output and a hard timeout.

    With check=True a non-zero exit raises ClusterError carrying stderr.
    """
    log.debug("run: %s", " ".join(argv))
    try:
        proc = subprocess.run(
            list(argv),
            check=False,  # exit status handled below
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            env=env,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"command timed out after {timeout:.0f}s: {' '.join(argv)}") from exc
    if check and proc.returncode != 0:
        raise ClusterError(
            f"command failed (exit {proc.returncode}): {' '.join(argv)}\n{proc.stderr.strip()}"
        )
    return proc


def wait_for(
    probe: Callable[[], T | None],
    *,
    what: str,
    timeout: float,
    interval: float = 0.5,
    cancelled: Callable[[], bool] = lambda: False,
) -> T:
    """Call `probe` until it returns something truthy; bounded in time AND in attempts.

    Raises ClusterError naming `what` when the bound is hit or `cancelled()` turns true.
    """
    deadline = time.monotonic() + timeout
    max_attempts = int(timeout / interval) + 2
    for _ in range(max_attempts):
        if cancelled():
            raise ClusterError(f"cancelled while waiting for {what}")
        result = probe()
        if result:
            return result
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}")
