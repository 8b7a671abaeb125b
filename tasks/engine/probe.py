"""
Ask each host once.

Every concern (kernel, containerd, CNI, control plane, flannel) says what it needs to
know about a node in a ``ProbeRequest``; the requests are merged and sent as ONE shell
command per host, whose answer (``NodeState``) every decision reads. The answer is kept
for the rest of the run, so planning and execution never ask the host the same thing again.
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
        def unique(a, b):
            return list(dict.fromkeys([*a, *b]))

        return ProbeRequest(
            hashes=unique(self.hashes, other.hashes),
            contents=unique(self.contents, other.contents),
            texts=unique(self.texts, other.texts),
            sysctls=unique(self.sysctls, other.sysctls),
            features={**self.features, **other.features},
            units=unique(self.units, other.units),
            listings=unique(self.listings, other.listings),
            queries={**self.queries, **other.queries},
            sysctl_config=unique(self.sysctl_config, other.sysctl_config),
        )

    def covers(self, other: "ProbeRequest") -> bool:
        """Everything ``other`` asks is asked here too."""
        return all(set(getattr(other, f.name)) <= set(getattr(self, f.name)) for f in fields(self)) and all(
            getattr(self, name).get(key) == command for name in ("features", "queries")
            for key, command in getattr(other, name).items())

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


# NodeState field -> what one of its keys is, in ProbeContractError's message.
ANSWER_KINDS = {"hashes": "digest", "modes": "mode", "contents": "content", "sysctls": "sysctl",
                "features": "feature", "units": "unit", "listings": "listing", "queries": "query"}


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
        def one_of(keys) -> Callable[[str], bool]:
            return set(keys).__contains__

        asked = {
            "hashes": _matches_any(request.hashes), "modes": _matches_any(request.hashes),
            "contents": one_of(request.contents), "sysctls": one_of(request.sysctls),
            "features": one_of(request.features), "units": one_of(request.units),
            "listings": one_of(request.listings), "queries": one_of(request.queries),
        }
        return NodeState(**{**self.__dict__, **{
            kind: Answers(ANSWER_KINDS[kind], check, dict(getattr(self, kind)), self.refused.get(kind), host_name)
            for kind, check in asked.items()}})

    def unit_active(self, unit: str) -> bool:
        return self.units.get(unit, ("", ""))[0] == "active"

    def unit_enabled(self, unit: str) -> bool:
        return self.units.get(unit, ("", ""))[1] in ("enabled", "enabled-runtime", "static", "alias")


def _sysctl_path(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/")


DIGEST_CACHE = "/var/lib/podnet/digests"

# Digests of managed files without re-reading a few hundred MB of binaries on every run,
# the way git's index does it: a file whose inode, size, mtime and ctime are those
# recorded with its digest keeps that digest; anything else is hashed again. ctime
# changes on every write, chmod or rename and cannot be set back, so a replaced or
# edited file is always re-hashed. The cache is derived data: deleting it only costs time.
# Only regular files (after following links) are reported.
DIGESTS_SCRIPT = r"""t=$(mktemp -d) && {
set --; for f in FILES; do podnet_safe "$f" digest && set -- "$@" "$f"; done
: > "$t/stat"; [ $# -gt 0 ] && stat -L -c '%i:%s:%.9Y:%.9Z %a %f %n' -- "$@" 2>/dev/null > "$t/stat"
awk -v cache=CACHE -v hash="$t/hash" -v keep="$t/keep" '
BEGIN { while ((getline line < cache) > 0) { split(line, f, " "); if (length(f[2]) == 64 && f[2] !~ /[^0-9a-f]/) known[f[1] " " substr(line, length(f[1]) + length(f[2]) + 3)] = f[2] } }
$3 !~ /^8...$/ { next }
{ path = substr($0, length($1) + length($2) + length($3) + 4)
  printf "mode\t%s\t%s\n", $2, path
  if (($1 " " path) in known) { printf "sha\t%s\t%s\n", known[$1 " " path], path; print $1, known[$1 " " path], path > keep }
  else { print $1 " " path > hash } }' "$t/stat"
if [ -s "$t/hash" ]; then
  while read -r key path; do
    sum=$(sha256sum < "$path" | cut -c1-64) && [ -n "$sum" ] && printf 'sha\t%s\t%s\n' "$sum" "$path" && echo "$key $sum $path" >> "$t/keep"
  done < "$t/hash"
fi
if ! cmp -s "$t/keep" CACHE 2>/dev/null; then mkdir -p CACHEDIR && cp "$t/keep" CACHE.new 2>/dev/null && mv -f CACHE.new CACHE; fi
rm -rf "$t"; }""".replace("CACHEDIR", posixpath.dirname(DIGEST_CACHE)).replace("CACHE", DIGEST_CACHE)


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
    its lines that may set one of ``keys`` (``sysctlline``, path, line as written)."""
    q = shlex.quote
    files = " ".join(f"{q(d)}/*.conf" for d in dirs) + " " + q(conf)
    return (f"{SAFE_NAME_FUNCTION}\n"
            f"for f in {files}; do {{ [ -e \"$f\" ] || [ -L \"$f\" ]; }} || continue; "
            "podnet_safe \"$f\" sysctlfile || continue; r=$(readlink -f \"$f\"); podnet_safe \"$r\" sysctlfile || continue; "
            "printf 'sysctlfile\\t%s\\t%s\\n' \"$f\" \"$r\"; "
            f"grep -E {q(_sysctl_lines_pattern(keys))} \"$f\" 2>/dev/null | "
            "while IFS= read -r line; do printf 'sysctlline\\t%s\\t%s\\n' \"$f\" \"$line\"; done; done")


def probe_script(request: ProbeRequest) -> str:
    """
    The one shell command that answers a ProbeRequest. Always exits 0. Only its stdout is read:
    a query's stdout and stderr are reported apart (``query<TAB>name<TAB>rc<TAB>base64 stdout<TAB>
    base64 stderr``), so nothing a command says on stderr is ever taken for data.
    """
    q = shlex.quote
    lines = ['printf "machine %s\\n" "$(uname -m)"', SAFE_NAME_FUNCTION]
    if request.hashes:
        # Globs expand remotely; missing files just don't appear.
        lines.append(DIGESTS_SCRIPT.replace("FILES", " ".join(_glob(h) for h in request.hashes)))
    for path in request.contents:
        lines.append(f"[ -f {q(path)} ] && printf 'content\\t%s\\t%s\\n' {q(path)} \"$(base64 -w0 < {q(path)})\"")
    for key in request.sysctls:
        lines.append(f"printf 'sysctl\\t%s\\t%s\\n' {q(key)} \"$(cat {q(_sysctl_path(key))} 2>/dev/null || echo -)\"")
    for name, test in request.features.items():
        lines.append(f"if {test}; then printf 'feature\\t%s\\t1\\n' {q(name)}; "
                     f"else printf 'feature\\t%s\\t0\\n' {q(name)}; fi")
    for unit in request.units:
        lines.append(f"printf 'unit\\t%s\\t%s\\t%s\\n' {q(unit)} "
                     f"\"$(systemctl is-active {q(unit)} 2>/dev/null)\" "
                     f"\"$(systemctl is-enabled {q(unit)} 2>/dev/null)\"")
    for directory in request.listings:
        d = q(directory.rstrip("/") or "/")
        lines.append(f"[ -d {d} ] && for e in {d}/* {d}/.[!.]* {d}/..?*; do "
                     "{ [ -e \"$e\" ] || [ -L \"$e\" ]; } || continue; podnet_safe \"$e\" entry || continue; "
                     f"printf 'entry\\t%s\\t%s\\n' {q(directory)} \"${{e##*/}}\"; done")
    if request.queries:
        lines.append("podnet_err=$(mktemp 2>/dev/null) || podnet_err=/dev/null")
    for name, command in request.queries.items():
        lines.append(f"out=$( ({command}) 2>\"$podnet_err\" ); rc=$?; printf 'query\\t%s\\t%s\\t%s\\t%s\\n' {q(name)} "
                     "\"$rc\" \"$(printf '%s' \"$out\" | base64 -w0)\" \"$(base64 -w0 < \"$podnet_err\")\"")
    if request.queries:
        lines.append('[ "$podnet_err" = /dev/null ] || rm -f "$podnet_err"')
    if request.sysctl_config:
        lines.append(sysctl_config_script(request.sysctl_config))
    lines.append("true")
    return "\n".join(lines)


def _glob(pattern: str) -> str:
    """Quote a path but leave a trailing '*' to the remote shell."""
    if pattern.endswith("*"):
        return shlex.quote(pattern[:-1]) + "*"
    return shlex.quote(pattern)


def _text(data: bytes) -> str:
    return data.decode(errors="replace")


def _unit_state(active: str, enabled: str) -> tuple[str, str]:
    # systemctl prints nothing for a unit it cannot be asked about: unknown / not-found
    return answers.unit_active_state(active or "unknown"), answers.unit_file_state(enabled or "not-found")


# Probe line kind -> (NodeState field it answers, field count, parser of the fields -> (key, value)).
# Every field is checked against its schema (tasks/engine/answers.py); a line that does not fit is
# reported (NodeState.problems) and its key, when it has a valid one, is refused (NodeState.refused).
_LINES: dict[str, tuple[str, int, Callable[[list[str]], tuple[str, object]]]] = {
    "sha": ("hashes", 2, lambda f: (answers.absolute_path(f[1]), answers.sha256_hex(f[0]))),
    "mode": ("modes", 2, lambda f: (answers.absolute_path(f[1]), answers.file_mode(f[0]))),
    "content": ("contents", 2, lambda f: (answers.absolute_path(f[0]), answers.base64_bytes(f[1]))),
    "sysctl": ("sysctls", 2, lambda f: (answers.sysctl_key(f[0]),
                                        None if f[1] == "-" else answers.sysctl_value(f[1]).strip())),
    "feature": ("features", 2, lambda f: (answers.no_control(f[0], "feature name"),
                                          {"1": True, "0": False}[f[1]] if f[1] in ("0", "1")
                                          else answers.decimal(f[1], 0, 1, "feature answer (0 or 1)"))),
    "unit": ("units", 3, lambda f: (answers.no_control(f[0], "unit name"), _unit_state(f[1], f[2]))),
    "entry": ("listings", 2, lambda f: (answers.absolute_path(f[0]), answers.file_name(f[1]))),
    "sysctlfile": ("sysctl_files", 2, lambda f: (answers.absolute_path(f[0]), answers.absolute_path(f[1]))),
    "query": ("queries", 4, lambda f: (answers.no_control(f[0], "query name"), (
        answers.exit_status(f[1]), _text(answers.base64_bytes(f[2])).splitlines(), _text(answers.base64_bytes(f[3])).rstrip("\n")))),
}


def parse_probe(lines: list[str]) -> NodeState:
    """
    The probe's stdout as a NodeState. Each line's fields are checked against their schema
    (tasks/engine/answers.py): a line that does not fit is never used as data; it is listed in
    ``problems`` (reported as a warning by ``node_state``) and, where its key is readable, the
    key is ``refused`` so that a step reading it refuses instead of taking it for "absent".
    """
    state = NodeState()
    for line in lines:
        kind, _, rest = line.partition("\t") if "\t" in line else line.partition(" ")
        try:
            if kind == "machine":
                machine = rest.strip()  # empty: refused later as an unsupported architecture
                state.machine = answers.machine(machine) if machine else ""
            elif kind == "sysctlline":
                path, _, text = rest.partition("\t")
                state.sysctl_lines.setdefault(answers.absolute_path(path), []).append(text)
            elif kind == "runlock":  # a line that does not fit leaves run_lock None: the run refuses
                state.run_lock = run_lock.parse(rest.split("\t"))
            elif kind == "badname":
                what, _, encoded = rest.partition("\t")
                name = _text(answers.base64_bytes(encoded))
                if what == "entry":  # that directory's listing is incomplete: a step reading it refuses
                    state.refused.setdefault("listings", {})[name.rpartition("/")[0]] = \
                        f"it holds a file name with a newline, tab or carriage return ({name!r})"
                raise BadField(f"a {what} path with a newline, tab or carriage return in a file name "
                               f"({name!r}) was left out")
            elif kind in _LINES:
                _parse_line(state, kind, rest)
            else:
                raise BadField("not a line the probe prints")
        except BadField as error:
            state.problems.append(answers.problem("", "the probe", line, str(error)))
    return state


def _parse_line(state: NodeState, kind: str, rest: str) -> None:
    name, count, parse = _LINES[kind]
    parts = rest.split("\t")
    if kind == "query" and len(parts) == 3:  # without stderr (an answer scripted by tests)
        parts.append("")
    if kind == "sysctl" and len(parts) > 2:  # a multi-valued parameter's fields are tab-separated
        parts = [parts[0], "\t".join(parts[1:])]
    if len(parts) != count:
        raise BadField(f"{len(parts)} field(s) where {count} are expected")
    try:
        key, value = parse(parts)
    except BadField:
        key = parts[0] if kind not in ("sha", "mode") else parts[1]
        if not answers.CONTROL.search(key):
            state.refused.setdefault(name, {})[key] = f"{kind} line {answers.shown(kind + chr(9) + rest)} does not fit"
        raise
    if kind == "entry":
        state.listings.setdefault(key, []).append(value)  # type: ignore[arg-type]
    elif kind == "query":
        rc, stdout, stderr = value  # type: ignore[misc]
        state.queries[key] = (rc, stdout)
        if stderr:
            state.query_stderr[key] = stderr
    else:
        getattr(state, name)[key] = value


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
        script = probe_script(request)
        if run_lock_wait is not None:  # after the first line (uname), before anything podnet decides from
            first, rest = script.split("\n", 1)
            # with @local, the probe runs under this pyinfra process: the lock's owner (tasks/engine/run_lock.py)
            local_owner = os.getpid() if issubclass(host.connector_cls, LocalConnector) else None
            script = "\n".join([first, run_lock.acquire_script(run_lock_wait, run_lock.holder(), local_owner=local_owner),
                                 rest])
        answer = host.get_fact(NodeProbe, script=script)
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
