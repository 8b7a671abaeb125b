"""Tearing a cluster down: idempotent, and safe after a crash at any point of up().

Everything is found from two sources, so nothing is missed when the state file is partial:
- the state file (bridge, subnet, node records with PIDs and veth names), and
- the host itself: systemd-nspawn processes whose root lies under the state dir, mounts
  under the state dir, veths still attached to the bridge.
Every step runs even if an earlier one failed; errors are reported together at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from ipaddress import IPv4Network
from pathlib import Path

from . import net
from .mounts import read_mounts, unmount_tree
from .node import Node, child_pids, is_namespace_init, pid_alive
from .state import STATE_FILE, load_state
from .util import ClusterError, log

TERM_TIMEOUT = 5.0  # graceful poweroff of all nodes (in parallel); one running a kubelet and containerd takes
# longer than 20 s to stop its units, and is a throwaway node: then it is killed (SIGKILL ends its PID namespace)
KILL_TIMEOUT = 10.0
POLL = 0.2

# What the harness creates in a state dir; nothing else there is ever deleted.
STATE_DIR_ENTRIES = ["nodes", "id_ed25519", "id_ed25519.pub", STATE_FILE]


# --- finding our processes -----------------------------------------------------------


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def nspawn_root(pid: int) -> str | None:
    """The -D directory of a systemd-nspawn process, or None if `pid` is not one."""
    argv = _cmdline(pid)
    if not argv or os.path.basename(argv[0]) != "systemd-nspawn" or "-D" not in argv:
        return None
    index = argv.index("-D") + 1
    return argv[index] if index < len(argv) else None


def our_nspawn_pids(state_dir: str | Path) -> set[int]:
    """Running systemd-nspawn processes booting a root under state_dir/nodes."""
    nodes = os.path.realpath(Path(state_dir) / "nodes") + "/"
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            root = nspawn_root(int(entry.name))
            if root and os.path.realpath(root).startswith(nodes):
                found.add(int(entry.name))
    return found


def is_our_leader(pid: int, state_dir: str | Path) -> bool:
    """True if `pid` is a node PID 1 whose root is an overlay with its upper dir in state_dir.

    Guards against PID reuse: a recorded PID is only signalled if it is still our node.
    """
    if not is_namespace_init(pid):
        return False
    nodes = os.path.realpath(Path(state_dir) / "nodes") + "/"
    try:
        mounts = read_mounts(pid)
    except OSError:
        return False
    return any(
        m.mountpoint == "/" and m.fstype == "overlay" and f"upperdir={nodes}" in m.super_options
        for m in mounts
    )


# --- stopping processes --------------------------------------------------------------


def _wait_gone(pids: set[int], procs: dict[int, subprocess.Popen], timeout: float) -> set[int]:
    """Wait (bounded) until `pids` exit; reaps our own children. Returns the survivors."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / POLL) + 1):
        for pid in pids:
            if pid in procs:
                procs[pid].poll()  # reap our child so it does not linger as a zombie
        alive = {pid for pid in pids if pid_alive(pid)}
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(POLL)
    return {pid for pid in pids if pid_alive(pid)}


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def stop_processes(
    nodes: list[Node], state_dir: str | Path, procs: dict[int, subprocess.Popen]
) -> None:
    """SIGTERM every nspawn (graceful poweroff), then SIGKILL node PID 1s and nspawns."""
    # Recorded PIDs are not trusted (PID reuse): nspawns are whatever boots a root under
    # our state dir now, leaders are verified by their root mount.
    nspawns = our_nspawn_pids(state_dir)
    leaders = {n.leader_pid for n in nodes if n.leader_pid} | {
        child for pid in nspawns for child in child_pids(pid)
    }
    leaders = {pid for pid in leaders if is_our_leader(pid, state_dir)}
    if not nspawns and not leaders:
        return
    log.info("stopping nodes (nspawn PIDs %s)", sorted(nspawns))
    for pid in nspawns:
        _signal(pid, signal.SIGTERM)
    if nspawns:
        survivors = _wait_gone(nspawns, procs, TERM_TIMEOUT)
    else:
        survivors = set()
    # Killing a PID namespace's init kills the whole node; do it for orphans too.
    for pid in {p for p in leaders if pid_alive(p)} | survivors:
        log.warning("SIGKILL %d", pid)
        _signal(pid, signal.SIGKILL)
    left = _wait_gone(nspawns | leaders, procs, KILL_TIMEOUT)
    if left:
        raise ClusterError(f"processes still alive after SIGKILL: {sorted(left)}")


# --- the whole tear-down -------------------------------------------------------------


def _remove_state_files(state_dir: Path) -> None:
    """Delete only what the harness created; never follow into anything still mounted."""
    if any(m.mountpoint.startswith(str(state_dir.resolve()) + "/") for m in read_mounts()):
        raise ClusterError(f"not deleting {state_dir}: something is still mounted under it")
    for entry in STATE_DIR_ENTRIES:
        path = state_dir / entry
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    for tmp in state_dir.glob(f"{STATE_FILE.rsplit('.', 1)[0]}.tmp-*"):
        tmp.unlink()
    try:
        state_dir.rmdir()  # only if nothing else is in it
    except OSError:
        pass


def teardown(state_dir: str | Path, procs: dict[int, subprocess.Popen] | None = None) -> None:
    """Remove every trace of the cluster recorded in / found under `state_dir`. Idempotent."""
    state_dir = Path(state_dir).absolute()
    state = load_state(state_dir) or {}
    nodes = [Node.from_dict(n) for n in state.get("nodes", []) if isinstance(n, dict)]
    bridge = state.get("bridge")
    subnet = IPv4Network(state["subnet"]) if state.get("subnet") else None
    errors: list[str] = []

    def step(what: str, func, *args) -> bool:
        try:
            func(*args)
            return True
        except Exception as exc:  # noqa: BLE001 -- keep going: later steps may still succeed
            errors.append(f"{what}: {exc}")
            return False

    step("stop nodes", stop_processes, nodes, state_dir, procs or {})
    unmounted = step("unmount", unmount_tree, state_dir) if state_dir.exists() else True
    if bridge:
        veths = {n.veth for n in nodes if n.veth} | set(net.links_on_bridge(bridge))
        for veth in sorted(veths):
            step(f"delete veth {veth}", net.delete_veth, veth, bridge)
        step(f"delete bridge {bridge}", net.delete_bridge, bridge, subnet)
    if unmounted and not errors and state_dir.exists():  # keep the state for a retry
        step("remove state files", _remove_state_files, state_dir)
    if errors:
        raise ClusterError("tear-down incomplete:\n  " + "\n  ".join(errors))
