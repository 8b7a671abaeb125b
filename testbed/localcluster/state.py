"""The cluster state file (state_dir/state.json).

Written atomically (temp file + rename) *before* each resource is created, so that a
tear-down from another process after a crash mid-up() knows everything that may exist.
Readers must treat every key as optional: a crash can leave any prefix of the records.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

STATE_FILE = "state.json"


def state_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / STATE_FILE


def load_state(state_dir: str | Path) -> dict | None:
    """The saved state, or None if there is none (or it is unreadable)."""
    try:
        data = json.loads(state_path(state_dir).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def save_state(state_dir: str | Path, state: dict) -> None:
    """Atomically replace the state file.  Callers serialize calls (Cluster holds a lock)."""
    path = state_path(state_dir)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
