"""
What an interrupted run leaves on a node, found by the probe and cleared by the next run.

podnet uploads each file under a staged name (``.<name>.podnet-new``, tasks/engine/ops.py) in the
directory of the live file and renames it into place, so a run killed mid-way never leaves a
half-written file active: at worst a staged file stays behind, complete or not. Where podnet
writes, the probe lists such leftovers (one ``find`` inside the probe, no extra command) and
the next run removes them before it uploads anything. So does a kubeadm JoinConfiguration
(``kubeadm.JOIN_CONFIG_PATH``, root-only, holding a join's token) that a run killed during a join left
in /run (its token expires by itself, ``kubeadm.TOKEN_TTL``).

A run killed after activating files but before restarting the unit that reads them leaves
that unit marked in ``ops.RESTART_PENDING_DIR``; the probe lists that directory and
``ops.service_running`` restarts the unit on the next run.
"""

from __future__ import annotations

import shlex

from tasks import cni, containerd, controller_manager, flannel, kernel, kubeadm

from tasks.engine import answers, node_releases, ops
from tasks.engine.answers import BadField
from tasks.engine.context import HostContext, Step
from tasks.engine.findings import Finding, warning
from tasks.engine.ownership import Ownership, all_directories
from tasks.engine.probe import NodeState, ProbeRequest
from tasks.settings import Settings

QUERY = "staged_leftovers"


def declarations(s: Settings) -> list[Ownership]:
    """What every concern owns on a node (each concern's ``ownership``), in the deploy's order."""
    return [kernel.ownership(s), containerd.ownership(s), cni.ownership(s), kubeadm.ownership(s),
            controller_manager.ownership(s), flannel.ownership(s)]


def directories(s: Settings) -> list[str]:
    """Every directory podnet installs files into (for the settings' CNI dirs and control-plane runtime), and
    the one release files arrive in on a node (node_releases.RELEASES_DIR: a partial upload or download)."""
    return sorted({*all_directories(declarations(s)), node_releases.RELEASES_DIR})


def find_command(dirs: list[str]) -> str:
    """Lists the staged files (``ops.staged_path``) in ``dirs`` and a join's configuration file, one path a
    line; missing dirs are skipped. A name holding a newline is not listed (it would read as two paths;
    podnet never makes one)."""
    pattern = shlex.quote(f".*{ops.STAGED_SUFFIX}")
    join = shlex.quote(kubeadm.JOIN_CONFIG_PATH)
    return (f"find {' '.join(shlex.quote(d) for d in dirs)} -maxdepth 1 -type f -name {pattern} "
            f"! -name {shlex.quote(chr(10).join('**'))} 2>/dev/null; [ -e {join} ] && echo {join}; true")


def probe_request(s: Settings) -> ProbeRequest:
    return ProbeRequest(queries={QUERY: find_command(directories(s))}, listings=[ops.RESTART_PENDING_DIR])


def _staged_path(dirs: list[str]):
    def check(line: str) -> str:
        """A staged file's path (``ops.staged_path``) in one of the directories asked, or a join's configuration."""
        if line == kubeadm.JOIN_CONFIG_PATH:
            return line
        directory, _, name = answers.absolute_path(line).rpartition("/")
        if directory not in dirs or not (name.startswith(".") and name.endswith(ops.STAGED_SUFFIX)):
            raise BadField(f"not a staged file ({ops.staged_path('<dir>/<name>')}) in {', '.join(dirs)}, "
                           f"nor {kubeadm.JOIN_CONFIG_PATH}")
        return line
    return check


def leftovers(node: NodeState, s: Settings, host_name: str = "") -> list[str]:
    """The staged files (and a join's configuration) an interrupted run left on the node (sorted). A line
    that is not such a file in one of the directories asked is reported as a warning and never removed."""
    _, lines = node.queries.get(QUERY, (0, []))
    return sorted(answers.records(host_name, f"the staged files left ({QUERY})", lines,
                                  _staged_path(directories(s)), strict=False))


def findings(node: NodeState, s: Settings, host_name: str) -> list[Finding]:
    """A warning naming the staged files an interrupted run left (the next run removes them)."""
    stale = leftovers(node, s, host_name)
    if not stale:
        return []
    return [warning(f"{len(stale)} staged file(s) an interrupted run left: {', '.join(stale)}", where=host_name,
                    why="a run was killed while it uploaded files (the live files are whole)",
                    fix="the next run removes them before it uploads anything")]


def leftovers_removed(node: NodeState, s: Settings, host_name: str = "") -> None:
    """Ensure no staged file of an earlier, interrupted run is left (before this run uploads anything)."""
    stale = leftovers(node, s, host_name)
    ops.shell_when(
        name="podnet: staged files of an interrupted run removed",
        commands=["rm -f " + " ".join(shlex.quote(p) for p in stale)],
        reason=f"removing {len(stale)} staged file(s) an interrupted run left: {', '.join(stale)}" if stale else None,
    )


# First in every run (tasks/deploys.steps): an interrupted run's leftovers go before anything is uploaded, and the
# restart-pending listing is asked for every step whose unit may need the restart that run did not make.
STEP = Step(
    "podnet: staged files an interrupted run left removed (first in every run, before anything is uploaded)",
    probe=lambda ctx: probe_request(ctx.settings),
    findings=lambda ctx: findings(ctx.node, ctx.settings, ctx.host_name),
    apply=lambda ctx: leftovers_removed(ctx.node, ctx.settings, ctx.host_name),
)
