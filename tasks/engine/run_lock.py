"""
One deploy per node at a time: the node-side run lock, taken by the probe, failing closed.

The probe (one shell command per host, see tasks/engine/probe.py) first takes ``/run/podnet/run.lock``.
The lock records who holds it (the operator's user@machine and pyinfra's PID, given by the run)
and the process that lives exactly as long as that run's connection to the node.

Which process that is. pyinfra keeps one SSH connection per host for the whole run and runs
every command in its own channel of it, each in a fresh shell that ends with the command: no
process of the probe's own outlives the probe, so an flock(1) held on a descriptor of the
probe's shell would be released the moment the probe ends. What lives exactly as long as the
connection is OpenSSH's per-connection process (``sshd: user@notty``; ``sshd-session`` from
OpenSSH 9.8, ``dropbear`` for Dropbear): the probe walks up its process tree from its own
shell to the nearest ancestor of that name, whatever sits in between (sh, bash login shells,
sudo, doas, su, runuser, env, setsid, timeout...), so the holder's identity does not depend
on a list of wrappers. (Not the session ID: sshd calls setsid() for every command it runs, so
each command is a session of its own.) With pyinfra's ``@local`` connector there is no sshd:
the runner names the pyinfra process (``local_owner``), which must then be an ancestor. A
probe that finds neither refuses (``failed``): it cannot tell when its run ends.

That process is recorded by PID and start time (field 22 of /proc/PID/stat, proc(5)), so a
lock whose process is gone (or a zombie), or whose PID now belongs to another process, is
stale and taken over: the lock cannot outlive its run, a killed run included, and no step is
needed to release it. The check-and-take is serialised by flock(1) (util-linux) on a guard
file, so two probes never both take the lock; the lock is written to a new file, renamed
over the old one and read back: only a lock read back as ours counts as taken.

Fail closed: when the lock directory, the guard or the lock cannot be written (a read-only or
full /run, no permission), flock(1) is missing, the guard stays busy, or the connection
process cannot be found, the probe prints ``runlock<TAB>failed<TAB>reason`` and ends before
reading anything else; ``refuse_if_held`` then stops the run for that host, before any change.

A lock held by a live connection other than ours makes the probe wait, up to
``run_lock_wait`` seconds, and then stop before reading anything else; ``refuse_if_held``
then fails the run with a message naming the holder.
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

from tasks.engine import answers
from tasks.errors import PodnetError

LOCK_DIR = "/run/podnet"
LOCK_PATH = f"{LOCK_DIR}/run.lock"
GUARD_TIMEOUT = 10  # seconds to wait for another probe's check-and-take (it takes milliseconds)
# The per-connection process of an SSH server, by its comm (the executable's name): OpenSSH's
# sshd (sshd-session from 9.8 on), Dropbear's dropbear.
CONNECTION_PROCESSES = ("sshd", "sshd-session", "dropbear")

_SCRIPT = r"""podnet_stat() { podnet_l=; { read -r podnet_l < "/proc/$1/stat"; } 2>/dev/null; podnet_l=${podnet_l##*) }; }
podnet_start() { podnet_stat "$1"; set -- $podnet_l; [ -n "$1" ] && [ "$1" != Z ] && echo "${20}"; }
podnet_tab=$(printf '\t')
podnet_fail() { printf 'runlock\tfailed\t%s\n' "$1"; exit 0; }
podnet_owner=
podnet_p=$$
while [ -n "$podnet_p" ] && [ "$podnet_p" -gt 1 ]; do
  if [ "$podnet_p" = LOCAL_OWNER ]; then podnet_owner=$podnet_p; break; fi
  podnet_c=; { IFS= read -r podnet_c < "/proc/$podnet_p/comm"; } 2>/dev/null
  case "$podnet_c" in
    CONNECTION_PROCESSES) podnet_owner=$podnet_p; break ;;
  esac
  podnet_stat "$podnet_p"; set -- $podnet_l; podnet_p=$2
done
[ -n "$podnet_owner" ] || podnet_fail "no SSH connection process (CONNECTION_NAMES) among the probe's ancestors: the lock could not be tied to this run's connection"
podnet_me="$podnet_owner $(podnet_start "$podnet_owner")"
[ "$podnet_me" != "$podnet_owner " ] || podnet_fail "the start time of the connection process $podnet_owner cannot be read"
command -v flock >/dev/null 2>&1 || podnet_fail "flock(1) (util-linux) is not installed"
[ -d LOCKDIR ] || mkdir -p LOCKDIR 2>/dev/null || podnet_fail "cannot create LOCKDIR (read-only or full file system, or no permission)"
command exec 9>>GUARD 2>/dev/null || podnet_fail "cannot open GUARD for writing (read-only or full file system, or no permission)"
podnet_deadline=
while :; do
  flock -w GUARD_TIMEOUT 9 || podnet_fail "another probe held GUARD for more than GUARD_TIMEOUT s"
  podnet_held=
  if [ -f LOCK ] && IFS=$podnet_tab read -r podnet_pid podnet_pstart podnet_since podnet_holder < LOCK; then
    if [ "$podnet_pid $podnet_pstart" != "$podnet_me" ] && [ -n "$podnet_pid" ] \
        && [ "$(podnet_start "$podnet_pid")" = "$podnet_pstart" ]; then podnet_held=1; fi
  fi
  if [ -z "$podnet_held" ]; then
    if { printf '%s\t%s\t%s\t%s\n' $podnet_me "$(date -u +%Y-%m-%dT%H:%M:%SZ)" HOLDER > LOCK.new \
         && mv -f LOCK.new LOCK; } 2>/dev/null \
       && IFS=$podnet_tab read -r podnet_pid podnet_pstart podnet_since podnet_holder < LOCK \
       && [ "$podnet_pid $podnet_pstart" = "$podnet_me" ] && [ "$podnet_holder" = HOLDER ]; then
      printf 'runlock\ttaken\t%s\n' "$podnet_owner"
      break
    fi
    rm -f LOCK.new 2>/dev/null
    flock -u 9
    podnet_fail "cannot write LOCK (read-only or full file system, or no permission)"
  fi
  flock -u 9
  [ -n "$podnet_deadline" ] || podnet_deadline=$(( $(date +%s) + WAIT ))
  if [ "$(date +%s)" -ge "$podnet_deadline" ]; then
    printf 'runlock\theld\t%s\t%s\t%s\n' "$podnet_holder" "$podnet_since" "$podnet_pid"
    exit 0
  fi
  sleep 1
done
exec 9>&-"""  # taken: closing the guard's descriptor releases it (no flock -u process)


@functools.cache
def holder() -> str:
    """Who this run is, as recorded in the lock: user@machine and pyinfra's PID, started when (once per run)."""
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    text = f"{getpass.getuser()}@{socket.gethostname()} (pyinfra PID {os.getpid()}, started {started})"
    return " ".join(text.split())  # one line, no tabs: the lock is one tab-separated line


def acquire_script(wait: int, who: str, path: str = LOCK_PATH, local_owner: int | None = None) -> str:
    """
    The shell that takes the run lock at ``path`` for ``who`` (see ``holder``), waiting up to
    ``wait`` seconds (0: not at all) for a live holder. The lock belongs to the nearest ancestor
    of the probe that is an SSH connection process (CONNECTION_PROCESSES) or is ``local_owner``
    (pyinfra's own PID, for the @local connector). Prints ``runlock<TAB>taken<TAB>PID`` (the
    connection process recorded), or ``runlock<TAB>held<TAB>holder<TAB>since<TAB>PID`` or
    ``runlock<TAB>failed<TAB>reason`` and then ends the whole probe (``exit 0``), so nothing
    else is read from a node another run is deploying or whose lock cannot be taken.
    """
    if wait < 0:
        raise ValueError("wait must be >= 0 seconds")
    directory = path.rsplit("/", 1)[0] or "/"
    q = shlex.quote
    names = [q(name) for name in CONNECTION_PROCESSES]
    return (_SCRIPT.replace("CONNECTION_PROCESSES", "|".join(names))
            .replace("CONNECTION_NAMES", " or ".join(CONNECTION_PROCESSES))
            .replace("LOCAL_OWNER", str(int(local_owner)) if local_owner else "none")
            .replace("LOCKDIR", q(directory))
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
    failed: str = ""  # why the lock could not be taken (then ``taken`` is False and nothing else was read)


def parse(fields: list[str]) -> LockAnswer:
    """The fields after ``runlock`` of the probe line (see ``acquire_script``); BadField for anything else
    (the probe then reports no lock answer, and the run refuses)."""
    if fields[:1] == ["taken"] and len(fields) == 2:
        return LockAnswer(True, pid=str(answers.pid(fields[1])))
    if fields[:1] == ["held"] and len(fields) == 4:
        if fields[3]:
            answers.pid(fields[3])
        return LockAnswer(False, answers.no_control(fields[1], "holder"), answers.no_control(fields[2], "time"),
                          fields[3])
    if fields[:1] == ["failed"] and len(fields) == 2:
        return LockAnswer(False, failed=answers.no_control(fields[1], "reason") or "no reason given")
    raise answers.BadField("not 'taken PID', 'held HOLDER SINCE PID' or 'failed REASON'")


class NodeLocked(PodnetError):
    """Another run holds the node's run lock."""


class RunLockUnavailable(PodnetError):
    """The node's run lock could not be taken (nor known to be free): the run stops for that host."""


def refuse_if_held(host_name: str, answer: LockAnswer | None, wait: int) -> None:
    """
    Raise NodeLocked when the probe found the node's lock held by another live run, and
    RunLockUnavailable when the lock could not be taken or the probe's answer holds no lock
    line that fits (``answer`` None): it then read nothing else, and nothing may change.
    """
    if answer is None:
        raise RunLockUnavailable(
            f"{host_name}: the probe did not report podnet's run lock {LOCK_PATH} (its answer holds no lock line "
            "that podnet can read); stopped before any change, since another run may be deploying this node")
    if answer.failed:
        raise RunLockUnavailable(
            f"{host_name}: podnet's run lock {LOCK_PATH} could not be taken: {answer.failed}; stopped before any "
            "change (the lock keeps two runs from changing a node at once): fix that on the node, then rerun")
    if answer.taken:
        return
    waited = f"after waiting {wait}s (run_lock_wait)" if wait else "(run_lock_wait is 0: no waiting)"
    raise NodeLocked(
        f"{host_name}: node {host_name} is being deployed by {answer.holder or 'an unknown run'} since "
        f"{answer.since or 'an unknown time'}; stopped before any change {waited}. Wait for that run to end "
        f"and rerun, or set run_lock_wait to wait for it. If that run is gone but its SSH session on the node "
        f"is not (a laptop that lost its network), the lock goes with that session: end it on the node "
        f"(kill {answer.pid or '<its sshd PID>'}, the holder recorded in {LOCK_PATH}) or let sshd time it out, "
        f"then rerun.")
