"""
podnet's operations, in the style of pyinfra's own: one function per idea, each ensuring
a state and yielding commands only for what differs.

They decide from the host's ``NodeState`` (one probe per host) rather than from pyinfra's
per-operation facts, so a converged host costs no further round trips.
"""

from __future__ import annotations

import difflib
import io
import posixpath
import shlex

from pyinfra import host, inventory, logger, state
from pyinfra.api import FileUploadCommand, operation

from tasks.artifacts.download import verified_upload
from tasks.engine import node_releases, runner
from tasks.engine.desired import DesiredFile
from tasks.engine.secret_files import put_secret_file
from tasks.engine.ownership import LEDGER, Removal, keep_original_script, record_script
from tasks.engine.pyinfra_compat import HostCommand
from tasks.engine.probe import DIGEST_CACHE, NodeState
from tasks.formats import shell

STAGED_SUFFIX = ".podnet-new"
# A unit named here had files activated that it must be restarted for; written before the files are
# renamed into place, removed by the restart: a run killed in between leaves it for the next run.
RESTART_PENDING_DIR = "/var/lib/podnet/restart-pending"


def restart_pending(current: NodeState, unit: str) -> bool:
    """An earlier run activated files for ``unit`` and ended before restarting it (see RESTART_PENDING_DIR)."""
    return unit in current.listings.get(RESTART_PENDING_DIR, [])


def staged_path(path: str) -> str:
    """
    Where a file is uploaded before it atomically replaces ``path``: the same directory
    (so the rename is atomic), as a hidden file (kubelet's static pod source, libcni and
    our own probe globs skip dotfiles).
    """
    directory, name = posixpath.split(path)
    return posixpath.join(directory, f".{name}{STAGED_SUFFIX}")


def _show_diff(f: DesiredFile, current: NodeState) -> None:
    if not state.config.DIFF:
        return
    if not f.is_text:
        logger.info("    %s: binary differs (sha256 %s -> %s)", f.path,
                    current.hashes.get(f.path, "missing")[:12], f.sha256[:12])
        return
    if f.path not in current.contents and f.path in current.hashes:  # on the node, but its content was not read
        logger.info("    %s: differs (sha256 %s -> %s; the probe did not read its content)", f.path,
                    current.hashes[f.path][:12], f.sha256[:12])
        return
    old = current.contents.get(f.path, b"").decode(errors="replace").splitlines()
    new = f.content.decode().splitlines()  # type: ignore[union-attr]
    for line in difflib.unified_diff(old, new, f.path + " (node)", f.path + " (podnet)", lineterm=""):
        logger.info("    %s", line)


def files_needing_change(files: list[DesiredFile], current: NodeState) -> list[DesiredFile]:
    """The files whose content or mode on the node is not the desired one."""
    return [f for f in files
            if f.differs(current.hashes.get(f.path)) or current.modes.get(f.path) != f.mode.lstrip("0")]


@operation()
def files_installed(files: list[DesiredFile], current: NodeState, validate: str | None = None,
                    restarts: str | None = None, owned: bool = True):
    """
    Ensure every file holds its desired content and mode.

    + files: the desired files
    + current: the node's probe answer
    + validate: a command checking the staged file (``{path}`` is replaced by it); when it
      fails, the staged file is removed and the live file stays as it was
    + restarts: the unit that must be restarted for these files: marked restart-pending
      (RESTART_PENDING_DIR) before they are activated, until ``service_running`` restarts it
    + owned: podnet owns these files (tasks/engine/ownership.py): a live file podnet did not install
      is kept as the original before it is replaced, and what is activated is recorded in the
      ledger; False for a file podnet only edits (kube-controller-manager's, backed up by its concern)

    Each changed file is put under a temporary name in its own directory and renamed over the
    live one, so no reader ever sees a half-written file. A rendered file is uploaded there; a
    release's file comes from its release file on the node (an archive's members unpacked there),
    sent by the laptop or downloaded by the node (``release_download``; tasks/engine/node_releases.py),
    or, for a file that is no archive with the laptop sending, is uploaded there itself. What the
    laptop sends is hashed right before its upload (``tasks.artifacts.download.verified_upload``); a
    release file on the node is hashed against its pinned sum before anything is taken from it, and
    every staged file right before it is activated (``install_script``).
    """
    changed = files_needing_change(files, current)
    if not changed:
        host.noop("files are up to date")
        return
    delivery = node_releases.Delivery()
    if any(f.origin is not None for f in changed):
        delivery = node_releases.plan(changed, current, runner.settings_for(host, inventory), host.name,
                                      staged_path)
    for f in changed:  # before the first yield: pyinfra stops at it when only detecting changes
        _show_diff(f, current)
    parents = sorted({posixpath.dirname(f.path) for f in changed})
    present = [f.path for f in changed if current.hashes.get(f.path) is not None] if owned else []
    # the release files the laptop sends go to their staged names in the (root-only) releases directory
    releases = sorted({posixpath.dirname(node_releases.node_path(o)) for o in delivery.uploads})
    yield " && ".join(["mkdir -p " + " ".join(shlex.quote(p) for p in parents),
                       *(["mkdir -p -m 0700 " + " ".join(shlex.quote(p) for p in releases)] if releases else []),
                       *(keep_original_script(p, ledger_path(DIGEST_CACHE)) for p in present)])
    if delivery.netrc is not None:
        yield HostCommand(_netrc_written, (delivery.netrc,), {})
    for origin in delivery.uploads:
        yield HostCommand(_release_file_intact, (origin.local, origin.sha256, origin.filename), {})
        yield FileUploadCommand(str(origin.local), staged_path(node_releases.node_path(origin)))
    for f in changed:
        if f in delivery.staged:
            continue
        if f.is_text:
            yield FileUploadCommand(io.BytesIO(f.content), staged_path(f.path))
        else:
            yield HostCommand(_release_file_intact, (f.source, f.sha256, f.path), {})
            yield FileUploadCommand(str(f.source), staged_path(f.path))
    yield install_script(changed, validate, restarts=restarts, owned=owned, host_name=host.name,
                         staging=delivery.script, cleanup=delivery.cleanup)


def _release_file_intact(state, host, connector_arguments: dict, source, sha256: str, what: str) -> bool:
    """At execution time, right before ``source`` is uploaded: it still has its sha256 (else the
    host stops here, before anything of it reaches the node)."""
    problem = verified_upload(source, sha256)
    if problem:
        logger.error("%s (for %s on %s)", problem, what, host.name)
        return False
    return True


def _netrc_written(state, host, connector_arguments: dict, content: str) -> bool:
    """The mirror's credentials in node_releases.NETRC_PATH (root-only from its creation, never on a command line)."""
    put_secret_file(host, connector_arguments, node_releases.NETRC_PATH, content)
    return True


def ledger_path(digest_cache: str) -> str:
    """The ledger of what podnet installed (tasks/engine/ownership.LEDGER) lives beside the digest cache."""
    return posixpath.join(posixpath.dirname(digest_cache), posixpath.basename(LEDGER))


def install_script(changed: list[DesiredFile], validate: str | None = None, digest_cache: str = DIGEST_CACHE,
                   restarts: str | None = None, pending_dir: str = RESTART_PENDING_DIR, owned: bool = True,
                   host_name: str = "this node", staging: list[str] = (), cleanup: list[str] = ()) -> str:
    """
    The shell that activates staged files: first ``staging`` (the shell steps that stage files from
    release files on the node, ``node_releases.plan``); then set each staged file's mode; hash it and compare
    with its desired sha256 (a staged file with another sum stops the run naming ``host_name``,
    path and both sums; every staged file of this batch is removed and the live ones are left as
    they were); check it with ``validate`` (a rejected file likewise); mark ``restarts``
    restart-pending; rename every staged file over its live one; record (``owned``) the digest
    each has on the node in the ledger; record in the probe's digest cache the sums the node
    computed; remove the release files in ``cleanup`` (their files are active).
    """
    q = shell.word
    every_staged = " ".join(q(staged_path(f.path)) for f in changed)
    # podnet_sum STAGED SUM PATH prints the staged file's sha256 when it is SUM; else it removes every staged file of
    # the batch, names the host, PATH and both sums, and fails (as does a staged file that cannot be read). Defined
    # once: each file is one call, not the whole text again.
    steps = ["set -e", *staging,
             "podnet_sum() { s=$(sha256sum < \"$1\") || exit 1; s=${s%% *}; [ \"$s\" = \"$2\" ] && { echo \"$s\"; "
             f"return 0; }}; rm -f {every_staged}; printf 'podnet: %s: %s: the uploaded file has sha256 %s on the node, "
             f"expected %s; removed it, the live file is unchanged\\n' {q(host_name)} \"$3\" \"$s\" \"$2\" >&2; exit 1; }}"]
    for index, f in enumerate(changed):
        staged, digest = q(staged_path(f.path)), f"d{index}"
        steps.append(f"chmod {f.mode} {staged}")
        steps.append(f"{digest}=$(podnet_sum {staged} {q(f.sha256)} {q(f.path)}) || exit 1")
        if validate:
            message = q(f"podnet: {f.path}: rejected by validation, live file left unchanged")
            steps.append(f"if ! {validate.format(path=staged)}; then rm -f {every_staged}; echo {message} >&2; "
                         "exit 1; fi")
    if restarts:
        steps.append(f"mkdir -p {q(pending_dir)} && : > {q(posixpath.join(pending_dir, restarts))}")
    steps.extend(f"mv -f {q(staged_path(f.path))} {q(f.path)}" for f in changed)
    if owned:
        # the sums checked before the rename: the same bytes, not hashed again
        steps.append(record_script([f.path for f in changed], ledger_path(digest_cache),
                                   [f"\"$d{index}\"" for index in range(len(changed))]))
    steps.append(record_digests([(f.path, f"\"$d{index}\"") for index, f in enumerate(changed)], digest_cache))
    if cleanup:
        steps.append("rm -f " + " ".join(q(path) for path in cleanup))
    return "; ".join(steps)


def record_digests(computed: list[tuple[str, str]], digest_cache: str = DIGEST_CACHE) -> str:
    """Add installed files to the probe's digest cache, so the next probe need not hash them:
    (path, a shell word holding the sha256 the node computed for it)."""
    lines = "; ".join(f"printf '%s %s %s\\n' \"$(stat -L -c '%i:%s:%.9Y:%.9Z' {shell.word(path)})\" "
                      f"{digest} {shell.word(path)}" for path, digest in computed)
    directory = shell.word(posixpath.dirname(digest_cache))
    return f"mkdir -p {directory} && {{ {lines}; }} >> {shell.word(digest_cache)}"


@operation()
def kernel_modules_loaded(missing: list[str]):
    """
    Ensure kernel modules are loaded now (persisting them is a modules-load.d file).

    + missing: modules whose feature the probe did not find
    """
    if not missing:
        host.noop("kernel modules are loaded")
        return
    yield "modprobe -a " + " ".join(shlex.quote(m) for m in missing)


@operation()
def kernel_parameters_applied(values: dict[str, str], current: NodeState):
    """
    Ensure kernel parameters have these values now (persisting them is a sysctl.d file).

    + values: sysctl name -> desired value
    + current: the node's probe answer
    """
    differing = {k: v for k, v in values.items() if current.sysctls.get(k) != v}
    if not differing:
        host.noop("kernel parameters are set")
        return
    yield "sysctl -q -w " + " ".join(shlex.quote(f"{k}={v}") for k, v in differing.items())


@operation()
def service_running(unit: str, current: NodeState, restart: bool = False, daemon_reload: bool = False):
    """
    Ensure a systemd unit is enabled and running, restarted when what it reads changed.

    + unit: the unit name
    + current: the node's probe answer
    + restart: its binary, unit or config changed in this run (or an earlier run activated
      them and was interrupted before the restart: ``restart_pending``)
    + daemon_reload: its unit file changed in this run (or may have, in the interrupted run)
    """
    pending = restart_pending(current, unit)
    restart = restart or pending
    daemon_reload = daemon_reload or pending  # its unit file may be among what that run activated
    commands = []
    if daemon_reload:
        commands.append("systemctl daemon-reload")
    if not current.unit_enabled(unit):
        commands.append(f"systemctl enable {shlex.quote(unit)}")
    if restart and current.unit_active(unit):
        commands.append(f"systemctl restart {shlex.quote(unit)}")
    elif not current.unit_active(unit) or restart:
        commands.append(f"systemctl start {shlex.quote(unit)}")
    if not commands:
        host.noop(f"{unit} is running")
        return
    if restart:  # done (or being done) now: no longer pending
        commands.append(f"rm -f {shlex.quote(posixpath.join(RESTART_PENDING_DIR, unit))}")
    yield " && ".join(commands)


SHOWN = 300  # characters of a failed command's output that an error shows


def said(lines: list[str]) -> str:
    """What a command printed, on one line, cut to SHOWN characters (for an error message)."""
    return " ".join(lines)[:SHOWN]


def _runs(reason: str | None) -> bool:
    """Whether an operation run on a reason found while planning runs: it says why, or is a no-op."""
    if not reason:
        host.noop("nothing to do")
        return False
    logger.info("    %s: %s", host.name, reason)
    return True


@operation()
def shell_when(commands: list[str], reason: str | None):
    """
    Run commands when a reason to run them was found while planning.

    + commands: shell commands, run in order, stopping at the first failure
    + reason: why they must run now, or None when nothing needs doing
    """
    if _runs(reason):
        yield " && ".join(commands)


@operation()
def python_step(function, args: tuple, reason: str | None):
    """
    Run a Python step at execution time, when a reason for it was found while planning.
    For what can only be decided once the commands before it have run (a file that a
    command of this run creates, a token the control plane hands out).

    + function: callable(state, host, connector_arguments, *args) that returns True, or
      raises with a clear message on failure
    + args: its arguments
    + reason: why it must run now, or None when nothing needs doing
    """
    if _runs(reason):
        yield HostCommand(function, args, {})


def owned_files_removed(name: str, removal: Removal, what: str) -> None:
    """Ensure a reset took off what podnet installed of a set of files (``ownership.removal``): podnet's
    removed, the originals it replaced put back; a file that is not what podnet installed stays."""
    foreign_left(removal)
    shell_when(name=name, commands=removal.commands(), reason=removal.reason(what))


def foreign_left(removal: Removal) -> None:
    """Say which declared files a reset leaves because they are not what podnet installed."""
    for path in removal.foreign:
        logger.info("    %s: %s stays: it is not what podnet installed there", host.name, path)
