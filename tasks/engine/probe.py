"""
Ask each host once.

Every concern (kernel, containerd, CNI, control plane, flannel) says what it needs to
know about a node in a ``ProbeRequest``; the requests are merged and sent as ONE shell
command per host, whose answer (``NodeState``) every decision reads. The answer is kept
for the rest of the run, so planning and execution never ask the host the same thing again.

A kind of question is declared once, in ``KINDS``: the ``ProbeRequest`` field that asks it, the
shell fragment that answers it, and how each answer line is read, checked against its schema
(tasks/engine/answers.py), into its ``NodeState`` field (which is held to what was asked). A new
kind is those two fields and its ``Kind``.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import shlex
from dataclasses import dataclass, field, fields
from typing import Callable

from pyinfra import logger
from pyinfra.api import FactBase
from pyinfra.connectors.local import LocalConnector

from tasks.engine import answers, run_lock
from tasks.engine.answers import BadField, RemoteAnswerError
from tasks.errors import PodnetError


@dataclass
class ProbeRequest:
    """What a concern wants to know about a node."""

    # Files (shell globs allowed) whose sha256 is wanted.
    hashes: list[str] = field(default_factory=list)
    # Files whose whole content is wanted (small text files).
    contents: list[str] = field(default_factory=list)
    # Text files podnet manages: hashed like ``hashes``, and read like ``contents`` when the run
    # shows diffs (``for_run``), so every managed file gets a real diff against the node's copy.
    texts: list[str] = field(default_factory=list)
    # Kernel parameters by sysctl name, e.g. net.ipv4.ip_forward.
    sysctls: list[str] = field(default_factory=list)
    # Kernel features: name -> shell test that succeeds when present.
    features: dict[str, str] = field(default_factory=dict)
    # systemd units whose active/enabled state is wanted.
    units: list[str] = field(default_factory=list)
    # Directories whose entries are wanted.
    listings: list[str] = field(default_factory=list)
    # Named read-only shell queries whose stdout lines are wanted (e.g. kubectl get).
    queries: dict[str, str] = field(default_factory=dict)
    # Kernel parameters whose persisted settings are wanted: every sysctl configuration file
    # (*.conf in SYSCTL_DIRS, then SYSCTL_CONF) with what it resolves to, and its lines that may set one of them.
    sysctl_config: list[str] = field(default_factory=list)

    def merge(self, other: "ProbeRequest") -> "ProbeRequest":
        """Everything either asks: lists joined (each item once, in order), named commands joined (``other``'s
        command for a name both give)."""
        def joined(a, b):
            return {**a, **b} if isinstance(a, dict) else list(dict.fromkeys([*a, *b]))

        return ProbeRequest(**{f.name: joined(getattr(self, f.name), getattr(other, f.name)) for f in fields(self)})

    def covers(self, other: "ProbeRequest") -> bool:
        """Everything ``other`` asks is asked here too."""
        return all(set(getattr(other, f.name)) <= set(getattr(self, f.name)) for f in fields(self)) and all(
            getattr(self, f.name).get(key) == command for f in fields(self) if isinstance(getattr(other, f.name), dict)
            for key, command in getattr(other, f.name).items())

    def for_run(self, diff: bool) -> "ProbeRequest":
        """What the probe asks: managed text files hashed, and read as well when ``diff``."""
        return ProbeRequest(**{**self.__dict__, "hashes": list(dict.fromkeys([*self.hashes, *self.texts])),
                               "contents": list(dict.fromkeys([*self.contents, *(self.texts if diff else [])])),
                               "texts": []})


class ProbeContractError(PodnetError, RuntimeError):
    """A step read an answer that no probe request asked for: a bug in that step's ``probe``."""


class Answers(dict):
    """
    One kind of probe answer (file digests, contents, units...). Reading a key the probe was not
    asked for raises ProbeContractError instead of looking like "absent" (a file reinstalled, a
    unit enabled on every run). Keys that were asked for and are absent read as absent.
    """

    def __init__(self, kind: str, asked: Callable[[str], bool], answers: dict,
                 refused: dict[str, str] | None = None, host_name: str = ""):
        super().__init__(answers)
        self.kind = kind
        self._asked = asked
        self._refused = refused or {}
        self._host = f"{host_name}: " if host_name else ""

    def _check(self, key) -> None:
        if not self._asked(key):
            raise ProbeContractError(f"the probe was not asked for {self.kind} {key!r}: add it to the probe of the "
                                     "step that reads it")
        if key in self._refused:  # its answer did not fit the schema: a step needing it refuses
            raise RemoteAnswerError(f"{self._host}the probe's {self.kind} answer for {key!r} was refused: "
                                    f"{self._refused[key]}; nothing is decided from it")

    def __getitem__(self, key):
        self._check(key)
        return super().__getitem__(key)

    def __contains__(self, key) -> bool:
        self._check(key)
        return super().__contains__(key)

    def get(self, key, default=None):
        self._check(key)
        return super().get(key, default)


def _matches_any(patterns: list[str]) -> Callable[[str], bool]:
    """A path asked for by name, or by a pattern ending in '*' (expanded by the node's shell)."""
    exact = set(patterns)
    globs = [p for p in patterns if p.endswith("*")]
    return lambda path: path in exact or any(fnmatch.fnmatchcase(path, g) for g in globs)


@dataclass
class NodeState:
    """What one probe learned about a node."""

    machine: str = ""
    hashes: dict[str, str] = field(default_factory=dict)  # path -> sha256 (missing files absent)
    modes: dict[str, str] = field(default_factory=dict)  # path -> octal mode without leading 0
    contents: dict[str, bytes] = field(default_factory=dict)  # path -> content (missing files absent)
    sysctls: dict[str, str | None] = field(default_factory=dict)  # None: key does not exist
    features: dict[str, bool] = field(default_factory=dict)
    units: dict[str, tuple[str, str]] = field(default_factory=dict)  # unit -> (active, enabled)
    listings: dict[str, list[str]] = field(default_factory=dict)
    queries: dict[str, tuple[int, list[str]]] = field(default_factory=dict)  # name -> (exit code, stdout lines)
    query_stderr: dict[str, str] = field(default_factory=dict)  # name -> what it wrote to stderr (never parsed)
    # Every sysctl configuration file (*.conf in SYSCTL_DIRS, then SYSCTL_CONF): path -> the path it resolves to
    # (itself, a link's target, /dev/null for a masked name).
    sysctl_files: dict[str, str] = field(default_factory=dict)
    # path -> its lines that may set a requested parameter, as written (files without one absent).
    sysctl_lines: dict[str, list[str]] = field(default_factory=dict)
    run_lock: run_lock.LockAnswer | None = None  # the run lock step's answer (tasks/engine/run_lock.py)
    # Answers that did not fit their schema (tasks/engine/answers.py), never used as data:
    # kind (an ANSWER_KINDS key) -> key -> why; reading such a key raises RemoteAnswerError.
    refused: dict[str, dict[str, str]] = field(default_factory=dict)
    # Every probe line that did not fit, as reported (a warning naming the host, once per probe).
    problems: list[str] = field(default_factory=list)

    def answering(self, request: ProbeRequest, host_name: str = "") -> "NodeState":
        """This answer held to ``request``: reading anything it did not ask for raises ProbeContractError,
        reading an answer that did not fit its schema raises RemoteAnswerError (naming ``host_name``)."""
        held = {}
        for kind in KINDS:
            asked = getattr(request, kind.asked)
            check = _matches_any(asked) if kind.globs else set(asked).__contains__
            for reader in kind.readers.values():
                if reader.key:
                    held[reader.field] = Answers(reader.key, check, dict(getattr(self, reader.field)),
                                                 self.refused.get(reader.field), host_name)
        return NodeState(**{**self.__dict__, **held})

    def unit_active(self, unit: str) -> bool:
        return self.units.get(unit, ("", ""))[0] == "active"

    def unit_enabled(self, unit: str) -> bool:
        return self.units.get(unit, ("", ""))[1] in ("enabled", "enabled-runtime", "static", "alias")


def sysctl_path(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/")


DIGEST_CACHE = "/var/lib/podnet/digests"

# Digests of managed files without re-reading a few hundred MB of binaries on every run,
# the way git's index does it: a file whose inode, size, mtime and ctime are those
# recorded with its digest keeps that digest; anything else is hashed again. ctime
# changes on every write, chmod or rename and cannot be set back from userspace (utimensat
# sets atime and mtime only; the kernel stamps ctime), so a replaced or edited file is always
# re-hashed, whatever its new mtime and size. The cache is derived data: deleting it only costs time.
# Only regular files (after following links) are reported.
# A converged node costs two processes here (stat, awk): awk reads the cache, answers, hashes
# only what missed (sha256sum through its shell, the path single-quoted) and rewrites the cache
# only when it changed.
DIGESTS_SCRIPT = r"""set --; for f in FILES; do podnet_safe "$f" digest && set -- "$@" "$f"; done
[ $# -gt 0 ] && stat -L -c '%i:%s:%.9Y:%.9Z %a %f %n' -- "$@" 2>/dev/null | awk -v cache=CACHE -v dir=CACHEDIR '
function quoted(s,   n, i, parts, r) { n = split(s, parts, "\047"); r = parts[1]; for (i = 2; i <= n; i++) r = r "\047\\\047\047" parts[i]; return "\047" r "\047" }
function hex64(s) { return length(s) == 64 && s !~ /[^0-9a-f]/ }
BEGIN { while ((getline line < cache) > 0) { old = old line "\n"; split(line, f, " "); if (hex64(f[2])) known[f[1] " " substr(line, length(f[1]) + length(f[2]) + 3)] = f[2] } close(cache) }
$3 !~ /^8...$/ { next }
{ path = substr($0, length($1) + length($2) + length($3) + 4)
  printf "mode\t%s\t%s\n", $2, path
  key = $1 " " path
  if (key in known) sum = known[key]
  else { sum = ""; cmd = "sha256sum < " quoted(path) " 2>/dev/null"; if ((cmd | getline out) > 0) sum = substr(out, 1, 64); close(cmd); if (!hex64(sum)) next }
  printf "sha\t%s\t%s\n", sum, path; new = new $1 " " sum " " path "\n" }
END { if (new != old) { fflush(); if (system("mkdir -p " dir " 2>/dev/null") == 0) { printf "%s", new > (cache ".new"); close(cache ".new"); system("mv -f " cache ".new " cache " 2>/dev/null") } } }'""".replace("CACHEDIR", posixpath.dirname(DIGEST_CACHE)).replace("CACHE", DIGEST_CACHE)


# What systemd-sysctl reads at boot (sysctl.d(5)) and procps' `sysctl --system` reads, in their
# directory precedence: a file name in an earlier directory hides the same name in later ones.
# /etc/sysctl.conf is read by procps after every sysctl.d file; systemd-sysctl reads it only
# through a link such as Debian's /etc/sysctl.d/99-sysctl.conf.
SYSCTL_DIRS = ("/etc/sysctl.d", "/run/sysctl.d", "/usr/local/lib/sysctl.d", "/usr/lib/sysctl.d", "/lib/sysctl.d")
SYSCTL_CONF = "/etc/sysctl.conf"


# A file name holding a newline, tab or carriage return would break the probe's line protocol
# (one record per line, fields split by tabs) and could forge a record: such a path is never
# printed as is; it is reported as ``badname<TAB>kind<TAB>base64 of the path`` and left out.
SAFE_NAME_FUNCTION = r"""podnet_tab=$(printf '\t'); podnet_cr=$(printf '\r')
podnet_safe() { case "$1" in *'
'*|*"$podnet_tab"*|*"$podnet_cr"*) printf 'badname\t%s\t%s\n' "$2" "$(printf '%s' "$1" | base64 -w0)"; return 1;; esac; }"""


def _sysctl_lines_pattern(keys: list[str]) -> str:
    """An extended regular expression for the lines that may set one of ``keys``: the first
    component of a key, after an optional '-', then either separator ('.' or '/')."""
    firsts = sorted({key.replace("/", ".").split(".", 1)[0] for key in keys})
    literal = ["".join(c if c.isalnum() or c in "_-" else f"[{c}]" for c in first) for first in firsts]
    return f"^[[:space:]]*-?[[:space:]]*({'|'.join(literal)})[./]"


def sysctl_config_script(keys: list[str], dirs: tuple[str, ...] = SYSCTL_DIRS, conf: str = SYSCTL_CONF) -> str:
    """Print every sysctl configuration file (``sysctlfile``, path, what it resolves to) and
    its lines that may set one of ``keys`` (``sysctlline``, path, line as written).

    Without a process per file: a file that is not a link resolves to its directory's physical
    path (``cd -P``, once per directory) and its name, as ``readlink -f`` would give; only links
    are resolved by readlink(1). One awk reads the lines of every regular file (a masked name,
    a link to /dev/null, has none; a FIFO is never opened)."""
    q = shlex.quote
    files = " ".join(f"{q(d)}/*.conf" for d in dirs) + " " + q(conf)
    return (f"{SAFE_NAME_FUNCTION}\n"
            "( set --; podnet_d=; podnet_rd=\n"
            f"for f in {files}; do {{ [ -e \"$f\" ] || [ -L \"$f\" ]; }} || continue; "
            "podnet_safe \"$f\" sysctlfile || continue; "
            "if [ -L \"$f\" ]; then r=$(readlink -f \"$f\"); else "
            "[ \"${f%/*}\" = \"$podnet_d\" ] || { podnet_d=${f%/*}; podnet_rd=$(cd -P -- \"$podnet_d\" 2>/dev/null && pwd -P); }; "
            "r=$podnet_rd/${f##*/}; fi; "
            "podnet_safe \"$r\" sysctlfile || continue; printf 'sysctlfile\\t%s\\t%s\\n' \"$f\" \"$r\"; "
            "[ -f \"$f\" ] && set -- \"$@\" \"$f\"; done\n"
            f"[ $# -gt 0 ] && awk -v re={q(_sysctl_lines_pattern(keys))} "
            "'$0 ~ re { printf \"sysctlline\\t%s\\t%s\\n\", FILENAME, $0 }' \"$@\" 2>/dev/null; true )")


# --- the kinds of question, each declared once: what it asks, the script that answers, how the answer is read --


@dataclass(frozen=True)
class Reader:
    """
    How one kind of answer line ("<tag>\t<part>\t...") is read into a NodeState field: ``parse`` checks the
    parts against their schema (tasks/engine/answers.py; raises BadField) and gives (key, value); ``store``
    puts them into the state (default: the field's key set to the value).
    """

    field: str  # the NodeState field it fills
    key: str  # what one of its keys is, in ProbeContractError's message ("": reads are not held to the request)
    parts: int | None  # tab-separated parts after the tag (None: ``parse`` checks them)
    parse: Callable[[list[str]], tuple]  # parts -> (key, value)
    key_part: int = 0  # the part holding the key, refused when the line does not fit
    store: Callable[[NodeState, object, object], None] | None = None


@dataclass(frozen=True)
class Kind:
    """One kind of question: the ProbeRequest field that asks it, the shell fragment that answers what is asked
    (empty: nothing asked), and a Reader per line tag of the answer. ``finish`` is a fragment placed at the end of
    the probe, after every kind's ``script`` (for a kind that starts work in the background)."""

    asked: str
    script: Callable[[list | dict], str]
    readers: dict[str, Reader]
    globs: bool = False  # asked paths may end in '*' (expanded by the node's shell)
    finish: Callable[[list | dict], str] = lambda asked: ""


def _each(fragment: Callable[..., str]) -> Callable[[list | dict], str]:
    """A script with ``fragment`` once per asked item (a (name, command) pair for named questions)."""
    def script(asked):
        items = asked.items() if isinstance(asked, dict) else ((item,) for item in asked)
        return "\n".join(fragment(*item) for item in items)
    return script


# podnet_query NAME COMMAND ERRFILE prints the query line of COMMAND (run in a subshell of its own, its stderr
# to ERRFILE), base64 run only on what is not empty.
QUERY_FUNCTION = r"""podnet_query() { podnet_o=$( (eval "$2") 2>"$3" ); podnet_rc=$?
printf 'query\t%s\t%s\t%s\t%s\n' "$1" "$podnet_rc" "$([ -z "$podnet_o" ] || printf '%s' "$podnet_o" | base64 -w0)" \
  "$([ ! -s "$3" ] || base64 -w0 < "$3")"; }"""
# Where the answers wait: a directory of the probe's own (mktemp), one file per query in the asked order.
# Without one (a full or read-only /tmp), the queries run one after the other, their stderr lost.
QUERIES_COLLECTED = """if [ -n "$podnet_qd" ]; then wait; cat "$podnet_qd"/q* 2>/dev/null; rm -rf "$podnet_qd"; fi"""


def _queries_started(asked: dict[str, str]) -> str:
    background, foreground = [], []
    for index, (name, command) in enumerate(asked.items()):
        background.append(f"podnet_query {q(name)} {q(command)} \"$podnet_qd/e{index:03d}\" > \"$podnet_qd/q{index:03d}\" &")
        foreground.append(f"podnet_query {q(name)} {q(command)} /dev/null")
    return "\n".join([QUERY_FUNCTION, "podnet_qd=$(mktemp -d 2>/dev/null) || podnet_qd=",
                      'if [ -n "$podnet_qd" ]; then', *background, "else", *foreground, "fi"])


def _text(data: bytes) -> str:
    return data.decode(errors="replace")


def _unit_state(active: str, enabled: str) -> tuple[str, str]:
    # systemctl prints nothing for a unit it cannot be asked about: unknown / not-found
    return answers.unit_active_state(active or "unknown"), answers.unit_file_state(enabled or "not-found")


def _sysctl_answer(parts: list[str]) -> tuple:
    if len(parts) < 2:
        raise BadField(f"{len(parts)} field(s) where 2 are expected")
    value = "\t".join(parts[1:])  # a multi-valued parameter's fields are tab-separated
    return answers.sysctl_key(parts[0]), None if value == "-" else answers.sysctl_value(value).strip()


def _query_answer(parts: list[str]) -> tuple:
    if len(parts) == 3:  # without stderr (an answer scripted by tests)
        parts = [*parts, ""]
    if len(parts) != 4:
        raise BadField(f"{len(parts)} field(s) where 4 are expected")
    return answers.no_control(parts[0], "query name"), (
        answers.exit_status(parts[1]), _text(answers.base64_bytes(parts[2])).splitlines(),
        _text(answers.base64_bytes(parts[3])).rstrip("\n"))


def _store_query(state: NodeState, key, value) -> None:
    rc, stdout, stderr = value
    state.queries[key] = (rc, stdout)
    if stderr:
        state.query_stderr[key] = stderr


def _store_entry(state: NodeState, key, value) -> None:
    state.listings.setdefault(key, []).append(value)


def _store_sysctl_line(state: NodeState, key, value) -> None:
    state.sysctl_lines.setdefault(key, []).append(value)


def _listing(directory: str) -> str:
    d = q(directory.rstrip("/") or "/")
    return (f"[ -d {d} ] && for e in {d}/* {d}/.[!.]* {d}/..?*; do "
            "{ [ -e \"$e\" ] || [ -L \"$e\" ]; } || continue; podnet_safe \"$e\" entry || continue; "
            f"printf 'entry\\t%s\\t%s\\n' {q(directory)} \"${{e##*/}}\"; done")


q = shlex.quote  # in the fragments below
KINDS: tuple[Kind, ...] = (
    # A query's stdout and stderr are reported apart (query<TAB>name<TAB>rc<TAB>base64 stdout<TAB>base64 stderr):
    # nothing a command says on stderr is ever taken for data. Queries are read-only commands of their own
    # (kubectl on the first control-plane host, find...): they are started first, each in the background,
    # and collected at the end of the probe, so the slow ones (kubectl, a Go binary talking to the API
    # server) run beside each other and beside the rest of the probe instead of one after the other.
    Kind("queries", lambda asked: _queries_started(asked) if asked else "",
         {"query": Reader("queries", "query", None, _query_answer, store=_store_query)},
         finish=lambda asked: QUERIES_COLLECTED if asked else ""),
    # Files (shell globs allowed; missing files just don't appear): sha256 and mode of each regular one.
    Kind("hashes", lambda paths: DIGESTS_SCRIPT.replace("FILES", " ".join(_glob(h) for h in paths)) if paths else "",
         {"sha": Reader("hashes", "digest", 2, lambda p: (answers.absolute_path(p[1]), answers.sha256_hex(p[0])),
                        key_part=1),
          "mode": Reader("modes", "mode", 2, lambda p: (answers.absolute_path(p[1]), answers.file_mode(p[0])),
                         key_part=1)}, globs=True),
    Kind("contents", _each(lambda path: f"[ -f {q(path)} ] && printf 'content\\t%s\\t%s\\n' {q(path)} "
                                        f"\"$(base64 -w0 < {q(path)})\""),
         {"content": Reader("contents", "content", 2,
                            lambda p: (answers.absolute_path(p[0]), answers.base64_bytes(p[1])))}),
    # read(1), a shell builtin: no process per parameter. A file that cannot be opened or read gives "-".
    Kind("sysctls", _each(lambda key: f"podnet_v=; {{ IFS= read -r podnet_v < {q(sysctl_path(key))}; }} 2>/dev/null "
                                      "|| [ -n \"$podnet_v\" ] || podnet_v=-; "
                                      f"printf 'sysctl\\t%s\\t%s\\n' {q(key)} \"$podnet_v\""),
         {"sysctl": Reader("sysctls", "sysctl", None, _sysctl_answer)}),
    Kind("features", _each(lambda name, test: f"if {test}; then printf 'feature\\t%s\\t1\\n' {q(name)}; "
                                              f"else printf 'feature\\t%s\\t0\\n' {q(name)}; fi"),
         {"feature": Reader("features", "feature", 2, lambda p: (
             answers.no_control(p[0], "feature name"),
             {"1": True, "0": False}[p[1]] if p[1] in ("0", "1")
             else answers.decimal(p[1], 0, 1, "feature answer (0 or 1)")))}),
    Kind("units", _each(lambda unit: f"printf 'unit\\t%s\\t%s\\t%s\\n' {q(unit)} "
                                     f"\"$(systemctl is-active {q(unit)} 2>/dev/null)\" "
                                     f"\"$(systemctl is-enabled {q(unit)} 2>/dev/null)\""),
         {"unit": Reader("units", "unit", 3, lambda p: (answers.no_control(p[0], "unit name"), _unit_state(p[1], p[2])))}),
    # Entries podnet_safe refuses (a newline, tab or carriage return in the name) are reported as badname lines.
    Kind("listings", _each(_listing),
         {"entry": Reader("listings", "listing", 2, lambda p: (answers.absolute_path(p[0]), answers.file_name(p[1])),
                          store=_store_entry)}),
    Kind("sysctl_config", lambda keys: sysctl_config_script(keys) if keys else "",
         {"sysctlfile": Reader("sysctl_files", "", 2,
                               lambda p: (answers.absolute_path(p[0]), answers.absolute_path(p[1]))),
          "sysctlline": Reader("sysctl_lines", "", None,
                               lambda p: (answers.absolute_path(p[0]), "\t".join(p[1:])), store=_store_sysctl_line)}),
)

# NodeState field -> what one of its keys is, in ProbeContractError's message.
ANSWER_KINDS = {r.field: r.key for kind in KINDS for r in kind.readers.values() if r.key}
READERS: dict[str, Reader] = {tag: r for kind in KINDS for tag, r in kind.readers.items()}


def probe_script(request: ProbeRequest) -> str:
    """
    The one shell command that answers a ProbeRequest (each kind's fragment, in KINDS' order). Always
    exits 0. Only its stdout is read (see ``parse_probe``).
    """
    lines = ['printf "machine %s\\n" "$(uname -m)"', SAFE_NAME_FUNCTION]
    lines += [fragment for kind in KINDS if (fragment := kind.script(getattr(request, kind.asked)))]
    lines += [fragment for kind in KINDS if (fragment := kind.finish(getattr(request, kind.asked)))]
    lines.append("true")
    return "\n".join(lines)


def locked_probe_script(request: ProbeRequest, run_lock_wait: int | None, local_owner: int | None = None) -> str:
    """``probe_script(request)``, which with ``run_lock_wait`` (seconds) first takes the node's run lock
    (tasks/engine/run_lock.py): after its first line (uname), before anything podnet decides from."""
    script = probe_script(request)
    if run_lock_wait is None:
        return script
    first, rest = script.split("\n", 1)
    return "\n".join([first, run_lock.acquire_script(run_lock_wait, run_lock.holder(), local_owner=local_owner), rest])


def _glob(pattern: str) -> str:
    """Quote a path but leave a trailing '*' to the remote shell."""
    if pattern.endswith("*"):
        return shlex.quote(pattern[:-1]) + "*"
    return shlex.quote(pattern)


def _always(state: NodeState, tag: str, rest: str) -> bool:
    """Read a line every probe may print whatever it asks (the machine, the run lock's answer, a name left
    out); False for any other tag."""
    if tag == "machine":
        machine = rest.strip()  # empty: refused later as an unsupported architecture
        state.machine = answers.machine(machine) if machine else ""
    elif tag == "runlock":  # a line that does not fit leaves run_lock None: the run refuses
        state.run_lock = run_lock.parse(rest.split("\t"))
    elif tag == "badname":
        what, _, encoded = rest.partition("\t")
        name = _text(answers.base64_bytes(encoded))
        if what == "entry":  # that directory's listing is incomplete: a step reading it refuses
            state.refused.setdefault("listings", {})[name.rpartition("/")[0]] = \
                f"it holds a file name with a newline, tab or carriage return ({name!r})"
        raise BadField(f"a {what} path with a newline, tab or carriage return in a file name "
                       f"({name!r}) was left out")
    else:
        return False
    return True


def parse_probe(lines: list[str]) -> NodeState:
    """
    The probe's stdout as a NodeState, each line read by the Reader of its tag. Each line's fields are
    checked against their schema (tasks/engine/answers.py): a line that does not fit is never used as
    data; it is listed in ``problems`` (reported as a warning by ``node_state``) and, where its key is
    readable, the key is ``refused`` so that a step reading it refuses instead of taking it for "absent".
    """
    state = NodeState()
    for line in lines:
        tag, _, rest = line.partition("\t") if "\t" in line else line.partition(" ")
        try:
            if _always(state, tag, rest):
                continue
            reader = READERS.get(tag)
            if reader is None:
                raise BadField("not a line the probe prints")
            _read(state, tag, reader, rest)
        except BadField as error:
            state.problems.append(answers.problem("", "the probe", line, str(error)))
    return state


def _read(state: NodeState, tag: str, reader: Reader, rest: str) -> None:
    parts = rest.split("\t")
    if reader.parts is not None and len(parts) != reader.parts:
        raise BadField(f"{len(parts)} field(s) where {reader.parts} are expected")
    try:
        key, value = reader.parse(parts)
    except BadField:
        key = parts[reader.key_part] if len(parts) > reader.key_part else ""
        if reader.key and key and not answers.CONTROL.search(key):
            state.refused.setdefault(reader.field, {})[key] = \
                f"{tag} line {answers.shown(tag + chr(9) + rest)} does not fit"
        raise
    if reader.store is not None:
        reader.store(state, key, value)
    else:
        getattr(state, reader.field)[key] = value


class NodeProbe(FactBase):
    """One round trip that reports everything the deploy needs to decide (see ProbeRequest)."""

    def command(self, script: str) -> str:
        return script

    def process(self, output) -> NodeState:
        return parse_probe(list(output))


_answers: dict[str, tuple[ProbeRequest, NodeState]] = {}


def node_state(host, request: ProbeRequest, run_lock_wait: int | None = None) -> NodeState:
    """
    The host's answer to ``request``, held to it (``NodeState.answering``). A host is asked once per
    run; a later request that asks nothing new gets the same answer, one that asks more is merged
    with the first and the host is asked again, once, for the union (a podnet deploy reused step
    by step from another deploy; podnet's own deploy asks once).

    With ``run_lock_wait`` (seconds), the probe first takes the node's run lock (tasks/engine/run_lock.py);
    raises run_lock.NodeLocked naming the holder when another run holds it, and
    run_lock.RunLockUnavailable when it could not be taken (fail closed, before any change).
    """
    known = _answers.get(host.name)
    if known is not None and known[0].covers(request):
        answer = known[1]
    else:
        if known is not None:
            request = known[0].merge(request)
        # with @local, the probe runs under this pyinfra process: the lock's owner (tasks/engine/run_lock.py)
        local_owner = os.getpid() if run_lock_wait is not None and issubclass(host.connector_cls, LocalConnector) \
            else None
        answer = host.get_fact(NodeProbe, script=locked_probe_script(request, run_lock_wait, local_owner))
        _answers[host.name] = (request, answer)
        report(host.name, answer)
    if run_lock_wait is not None:
        run_lock.refuse_if_held(host.name, answer.run_lock, run_lock_wait)
    return answer.answering(request, host.name)


def report(host_name: str, answer: NodeState) -> None:
    """Warn (once per probe) about every probe line that did not fit its schema, and show what a
    query that succeeded wrote to stderr: a diagnostic, never data."""
    for problem in answer.problems:
        logger.warning(f"podnet: {host_name}: {problem}")
    for name, stderr in answer.query_stderr.items():
        if answer.queries.get(name, (1, []))[0] == 0:
            answers.warn_stderr(host_name, f"query {name}", stderr)
