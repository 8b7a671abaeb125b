"""
Waiting for a node or the cluster to get somewhere, bounded (every wait podnet makes ends).
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def poll(attempt: Callable[[], T], timeout: float, interval: float) -> T:
    """
    Call ``attempt`` until it answers something false ("nothing left to wait for") or ``timeout``
    seconds have passed, sleeping ``interval`` seconds between calls; it is called at least once.
    Returns its last answer: false when done, else what was still awaited at the deadline (the
    caller says it). ``attempt`` may raise to stop at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        left = attempt()
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(interval)
