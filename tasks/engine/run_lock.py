"""
One deploy per node at a time: the node-side run lock, taken by the probe.

The probe (one shell command per host, see tasks/engine/probe.py) first takes ``/run/podnet/run.lock``.
The lock records who holds it (the operator's user@machine and pyinfra's PID, given by the run)
and the process that lives exactly as long as that run's connection to the node: the probe
shell's nearest ancestor that is not a shell or sudo. Over SSH that is sshd's per-connection
process (pyinfra keeps one connection per host for the whole run and runs every command in
it); with pyinfra's ``@local`` connector it is the pyinfra process itself. That process is
recorded by PID and start time (field 22 of /proc/PID/stat, proc(5)), so a lock whose
process is gone (or a zombie), or whose PID now belongs to another process, is stale and taken over: the
lock cannot outlive its run, a killed run included, and no step is needed to release it.

A lock held by a live connection other than ours makes the probe wait, up to
``run_lock_wait`` seconds, and then stop before reading anything else; ``refuse_if_held``
then fails the run with a message naming the holder. The check-and-take is serialised by
flock(1) on a guard file (util-linux), so two probes never both take the lock.
/run is a tmpfs: a reboot clears the lock with the connections it stood for.

No extra remote command: all of this runs inside the probe.
"""

from __future__ import annotations

import functools
import getpass
import os
import shlex
import socket
import time
from dataclasses import dataclass

from tasks.errors import PodnetError

LOCK_DIR = "/run/podnet"
LOCK_PATH = f"{LOCK_DIR}/run.lock"
GUARD_TIMEOUT = 10  # seconds to wait for another probe's check-and-take (it takes milliseconds)
SHELLS = ("sh", "bash", "dash", "ash", "zsh", "ksh", "sudo", "su", "env")

_SCRIPT = r"""podnet_start() { set -- $(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null); [ "$1" != Z ] && echo "${20}"; }
podnet_owner=$$
while [ "$podnet_owner" -gt 1 ]; do
  case "$(cat "/proc/$podnet_owner/comm" 2>/dev/null)" in
    SHELLS) podnet_owner=$(sed 's/^.*) //' "/proc/$podnet_owner/stat" | cut -d' ' -f2) ;;
    *) break ;;
  esac
done
podnet_me="$podnet_owner $(podnet_start "$podnet_owner")"
podnet_deadline=$(( $(date +%s) + WAIT ))
mkdir -p LOCKDIR && exec 9>>GUARD
while :; do
  command -v flock >/dev/null 2>&1 && flock -w GUARD_TIMEOUT 9
  podnet_held=
  if [ -f LOCK ] && IFS=$(printf '\t') read -r podnet_pid podnet_pstart podnet_since podnet_holder < LOCK; then
    if [ "$podnet_pid $podnet_pstart" != "$podnet_me" ] && [ -n "$podnet_pid" ] \
        && [ "$(podnet_start "$podnet_pid")" = "$podnet_pstart" ]; then podnet_held=1; fi
  fi
  if [ -z "$podnet_held" ]; then
    printf '%s\t%s\t%s\t%s\n' $podnet_me "$(date -u +%Y-%m-%dT%H:%M:%SZ)" HOLDER > LOCK.new && mv -f LOCK.new LOCK
    command -v flock >/dev/null 2>&1 && flock -u 9
    printf 'runlock\ttaken\t%s\n' "$podnet_owner"
    break
  fi
  command -v flock >/dev/null 2>&1 && flock -u 9
  if [ "$(date +%s)" -ge "$podnet_deadline" ]; then
    printf 'runlock\theld\t%s\t%s\t%s\n' "$podnet_holder" "$podnet_since" "$podnet_pid"
    exit 0
  fi
  sleep 1
done
exec 9>&-"""


@functools.cache
def holder() -> str:
    """Who this run is, as recorded in the lock: user@machine and pyinfra's PID, started when (once per run)."""
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    text = f"{getpass.getuser()}@{socket.gethostname()} (pyinfra PID {os.getpid()}, started {started})"
    return " ".join(text.split())  # one line, no tabs: the lock is one tab-separated line


def acquire_script(wait: int, who: str, path: str = LOCK_PATH) -> str:
    """
    The shell that takes the run lock at ``path`` for ``who`` (see ``holder``), waiting up to
    ``wait`` seconds (0: not at all) for a live holder. Prints ``runlock<TAB>taken<TAB>PID``
    (the connection process recorded) or ``runlock<TAB>held<TAB>holder<TAB>since<TAB>PID``
    and then ends the whole probe (``exit 0``), so nothing else is read from a node another
    run is deploying.
    """
    if wait < 0:
        raise ValueError("wait must be >= 0 seconds")
    directory = path.rsplit("/", 1)[0] or "/"
    q = shlex.quote
    return (_SCRIPT.replace("SHELLS", "|".join(SHELLS)).replace("LOCKDIR", q(directory))
            .replace("GUARD_TIMEOUT", str(GUARD_TIMEOUT)).replace("GUARD", q(path + ".guard"))
            .replace("LOCK.new", q(path + ".new")).replace("LOCK", q(path)).replace("WAIT", str(int(wait)))
            .replace("HOLDER", q(" ".join(who.split()))))


@dataclass(frozen=True)
class LockAnswer:
    """What the probe's lock step reported."""

    taken: bool
    holder: str = ""
    since: str = ""
    pid: str = ""  # the holder's connection process on the node (sshd's, or pyinfra's with @local)


def parse(fields: list[str]) -> LockAnswer:
    """The fields after ``runlock`` of the probe line (see ``acquire_script``)."""
    if fields[:1] == ["held"]:
        rest = fields[1:] + ["", "", ""]
        return LockAnswer(False, rest[0], rest[1], rest[2])
    return LockAnswer(fields[:1] == ["taken"], pid=(fields[1:2] or [""])[0])


class NodeLocked(PodnetError):
    """Another run holds the node's run lock."""


def refuse_if_held(host_name: str, answer: LockAnswer | None, wait: int) -> None:
    """
    Raise NodeLocked when the probe found the node's lock held by another live run (it then
    read nothing else). ``answer`` None means the probe did not take the lock at all: a probe
    without the lock step, nothing to check.
    """
    if answer is None or answer.taken:
        return
    waited = f"after waiting {wait}s (run_lock_wait)" if wait else "(run_lock_wait is 0: no waiting)"
    raise NodeLocked(
        f"{host_name}: node {host_name} is being deployed by {answer.holder or 'an unknown run'} since "
        f"{answer.since or 'an unknown time'}; stopped before any change {waited}. Wait for that run to end "
        f"and rerun, or set run_lock_wait to wait for it. If that run is gone but its SSH session on the node "
        f"is not (a laptop that lost its network), the lock goes with that session: end it on the node "
        f"(kill {answer.pid or '<its sshd PID>'}, the holder recorded in {LOCK_PATH}) or let sshd time it out, "
        f"then rerun.")
