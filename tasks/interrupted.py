"""
What an interrupted run leaves on a node, found by the probe and cleared by the next run.

podnet uploads each file under a staged name (``.<name>.podnet-new``, tasks/engine/ops.py) in the
directory of the live file and renames it into place, so a run killed mid-way never leaves a
half-written file active: at worst a staged file stays behind, complete or not. Where podnet
writes, the probe lists such leftovers (one ``find`` inside the probe, no extra command) and
the next run removes them before it uploads anything.

A run killed after activating files but before restarting the unit that reads them leaves
that unit marked in ``ops.RESTART_PENDING_DIR``; the probe lists that directory and
``ops.service_running`` restarts the unit on the next run.
"""

from __future__ import annotations

import shlex

from tasks import cni, containerd, controller_manager, flannel, kernel, kubeadm

from tasks.engine import ops
from tasks.engine.context import HostContext, Step
from tasks.engine.ownership import Ownership, all_directories
from tasks.engine.probe import NodeState, ProbeRequest
from tasks.settings import Settings

QUERY = "staged_leftovers"


def declarations(s: Settings) -> list[Ownership]:
    """What every concern owns on a node (each concern's ``ownership``), in the deploy's order."""
    return [kernel.ownership(s), containerd.ownership(s), cni.ownership(s), kubeadm.ownership(s),
            controller_manager.ownership(s), flannel.ownership(s)]


def directories(s: Settings) -> list[str]:
    """Every directory podnet installs files into (for the settings' CNI dirs and control-plane runtime)."""
    return all_directories(declarations(s))


def find_command(dirs: list[str]) -> str:
    """Lists the staged files (``ops.staged_path``) in ``dirs``, one path a line; missing dirs are skipped."""
    pattern = shlex.quote(f".*{ops.STAGED_SUFFIX}")
    return f"find {' '.join(shlex.quote(d) for d in dirs)} -maxdepth 1 -type f -name {pattern} 2>/dev/null; true"


def probe_request(s: Settings) -> ProbeRequest:
    return ProbeRequest(queries={QUERY: find_command(directories(s))}, listings=[ops.RESTART_PENDING_DIR])


def leftovers(node: NodeState) -> list[str]:
    """The staged files an interrupted run left on the node (sorted)."""
    _, lines = node.queries.get(QUERY, (0, []))
    return sorted(line for line in lines if line.endswith(ops.STAGED_SUFFIX))


def leftovers_removed(node: NodeState) -> None:
    """Ensure no staged file of an earlier, interrupted run is left (before this run uploads anything)."""
    stale = leftovers(node)
    ops.shell_when(
        name="podnet: staged files of an interrupted run removed",
        commands=["rm -f " + " ".join(shlex.quote(p) for p in stale)],
        reason=f"removing {len(stale)} staged file(s) an interrupted run left: {', '.join(stale)}" if stale else None,
    )


# First in every run (tasks/deploys.steps): an interrupted run's leftovers go before anything is uploaded, and the
# restart-pending listing is asked for every step whose unit may need the restart that run did not make.
STEP = Step(
    "podnet: what an interrupted run left",
    probe=lambda ctx: probe_request(ctx.settings),
    apply=lambda ctx: leftovers_removed(ctx.node),
)
