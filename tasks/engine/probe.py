"""
Ask each host once.

Every concern (kernel, containerd, CNI, control plane, flannel) says what it needs to
know about a node in a ``ProbeRequest``; the requests are merged and sent as ONE shell
command per host, whose answer (``NodeState``) every decision reads. The answer is kept
for the rest of the run, so planning and execution never ask the host the same thing again.

A kind of question is declared once, in ``KINDS``: the ``ProbeRequest`` field that asks it, the
shell fragment that answers it, and how each answer line is read into its ``NodeState`` field
(which is held to what was asked). A new kind is those two fields and its ``Kind``.
"""

from __future__ import annotations

import base64
import fnmatch
import posixpath
import shlex
from dataclasses import dataclass, field, fields
from typing import Callable

from pyinfra.api import FactBase

from tasks.engine import run_lock
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

    def __init__(self, kind: str, asked: Callable[[str], bool], answers: dict):
        super().__init__(answers)
        self.kind = kind
        self._asked = asked

    def _check(self, key) -> None:
        if not self._asked(key):
            raise ProbeContractError(f"the probe was not asked for {self.kind} {key!r}: add it to the probe of the "
                                     "step that reads it")

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
    queries: dict[str, tuple[int, list[str]]] = field(default_factory=dict)  # name -> (exit code, lines)
    # Every sysctl configuration file (*.conf in SYSCTL_DIRS, then SYSCTL_CONF): path -> the path it resolves to
    # (itself, a link's target, /dev/null for a masked name).
    sysctl_files: dict[str, str] = field(default_factory=dict)
    # path -> its lines that may set a requested parameter, as written (files without one absent).
    sysctl_lines: dict[str, list[str]] = field(default_factory=dict)
    run_lock: run_lock.LockAnswer | None = None  # the run lock step's answer (tasks/engine/run_lock.py)

    def answering(self, request: ProbeRequest) -> "NodeState":
        """This answer held to ``request``: reading anything it did not ask for raises ProbeContractError."""
        held = {}
        for kind in KINDS:
            asked = getattr(request, kind.asked)
            check = _matches_any(asked) if kind.globs else set(asked).__contains__
            for reader in kind.readers.values():
                if reader.key:
                    held[reader.field] = Answers(reader.key, check, dict(getattr(self, reader.field)))
        return NodeState(**{**self.__dict__, **held})

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
stat -L -c '%i:%s:%.9Y:%.9Z %a %f %n' -- FILES 2>/dev/null > "$t/stat"
awk -v cache=CACHE -v hash="$t/hash" -v keep="$t/keep" '
BEGIN { while ((getline line < cache) > 0) { split(line, f, " "); known[f[1] " " substr(line, length(f[1]) + length(f[2]) + 3)] = f[2] } }
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
    return (f"for f in {files}; do {{ [ -e \"$f\" ] || [ -L \"$f\" ]; }} || continue; "
            "printf 'sysctlfile\\t%s\\t%s\\n' \"$f\" \"$(readlink -f \"$f\")\"; "
            f"grep -E {q(_sysctl_lines_pattern(keys))} \"$f\" 2>/dev/null | "
            "while IFS= read -r line; do printf 'sysctlline\\t%s\\t%s\\n' \"$f\" \"$line\"; done; done")


# --- the kinds of question, each declared once: what it asks, the script that answers, how the answer is read --


@dataclass(frozen=True)
class Reader:
    """How one kind of answer line ("<tag>\\t<part>\\t...") is read into a NodeState field."""

    field: str  # the NodeState field it fills
    key: str  # what one of its keys is, in ProbeContractError's message ("" : reads are not held to the request)
    parts: int | None  # tab-separated parts after the tag (None: any number)
    read: Callable[[NodeState, list[str], str], None]  # (state, parts, the line after its tag)


@dataclass(frozen=True)
class Kind:
    """One kind of question: the ProbeRequest field that asks it, the shell fragment that answers what is asked
    (empty: nothing asked), and a Reader per line tag of the answer."""

    asked: str
    script: Callable[[list | dict], str]
    readers: dict[str, Reader]
    globs: bool = False  # asked paths may end in '*' (expanded by the node's shell)


def _each(fragment: Callable[..., str]) -> Callable[[list | dict], str]:
    """A script with ``fragment`` once per asked item (a (name, command) pair for named questions)."""
    def script(asked):
        items = asked.items() if isinstance(asked, dict) else ((item,) for item in asked)
        return "\n".join(fragment(*item) for item in items)
    return script


def _put(name: str, value: Callable[[list[str]], tuple]) -> Callable[[NodeState, list[str], str], None]:
    """A reader that sets one key of the field ``name``: value(parts) -> (key, value)."""
    def read(state: NodeState, parts: list[str], rest: str) -> None:
        key, answer = value(parts)
        getattr(state, name)[key] = answer
    return read


def _sysctl_line(state: NodeState, parts: list[str], rest: str) -> None:
    path, _, text = rest.partition("\t")
    state.sysctl_lines.setdefault(path, []).append(text)


def _query_answer(parts: list[str]) -> tuple:
    output = base64.b64decode(parts[2]).decode(errors="replace")
    return parts[0], (int(parts[1]), output.splitlines())


q = shlex.quote  # in the fragments below
KINDS: tuple[Kind, ...] = (
    # Files (shell globs allowed): sha256 and mode of each regular one (missing files absent).
    Kind("hashes", lambda paths: DIGESTS_SCRIPT.replace("FILES", " ".join(_glob(h) for h in paths)) if paths else "",
         {"sha": Reader("hashes", "digest", 2, _put("hashes", lambda p: (p[1], p[0]))),
          "mode": Reader("modes", "mode", 2, _put("modes", lambda p: (p[1], p[0])))}, globs=True),
    Kind("contents", _each(lambda path: f"[ -f {q(path)} ] && printf 'content\\t%s\\t%s\\n' {q(path)} "
                                        f"\"$(base64 -w0 < {q(path)})\""),
         {"content": Reader("contents", "content", 2, _put("contents", lambda p: (p[0], base64.b64decode(p[1]))))}),
    Kind("sysctls", _each(lambda key: f"printf 'sysctl\\t%s\\t%s\\n' {q(key)} "
                                      f"\"$(cat {q(_sysctl_path(key))} 2>/dev/null || echo -)\""),
         {"sysctl": Reader("sysctls", "sysctl", 2,
                           _put("sysctls", lambda p: (p[0], None if p[1] == "-" else p[1].strip())))}),
    Kind("features", _each(lambda name, test: f"if {test}; then printf 'feature\\t%s\\t1\\n' {q(name)}; "
                                              f"else printf 'feature\\t%s\\t0\\n' {q(name)}; fi"),
         {"feature": Reader("features", "feature", 2, _put("features", lambda p: (p[0], p[1] == "1")))}),
    Kind("units", _each(lambda unit: f"printf 'unit\\t%s\\t%s\\t%s\\n' {q(unit)} "
                                     f"\"$(systemctl is-active {q(unit)} 2>/dev/null)\" "
                                     f"\"$(systemctl is-enabled {q(unit)} 2>/dev/null)\""),
         {"unit": Reader("units", "unit", 3,
                         _put("units", lambda p: (p[0], (p[1] or "unknown", p[2] or "not-found"))))}),
    Kind("listings", _each(lambda directory: f"[ -d {q(directory)} ] && ls -1A {q(directory)} | while IFS= read -r "
                                             f"entry; do printf 'entry\\t%s\\t%s\\n' {q(directory)} \"$entry\"; done"),
         {"entry": Reader("listings", "listing", 2,
                          lambda state, p, rest: state.listings.setdefault(p[0], []).append(p[1]))}),
    Kind("queries", _each(lambda name, command: f"out=$( ({command}) 2>&1 ); rc=$?; printf 'query\\t%s\\t%s\\t%s\\n' "
                                                f"{q(name)} \"$rc\" \"$(printf '%s' \"$out\" | base64 -w0)\""),
         {"query": Reader("queries", "query", 3, _put("queries", _query_answer))}),
    Kind("sysctl_config", lambda keys: sysctl_config_script(keys) if keys else "",
         {"sysctlfile": Reader("sysctl_files", "", 2, _put("sysctl_files", lambda p: (p[0], p[1]))),
          "sysctlline": Reader("sysctl_lines", "", None, _sysctl_line)}),
)

# Lines every probe prints whatever it asks: the machine (uname -m), and the run lock's answer when the probe takes
# it (tasks/engine/run_lock.py).
ALWAYS: dict[str, Reader] = {
    "machine": Reader("machine", "", None, lambda state, parts, rest: setattr(state, "machine", rest.strip())),
    "runlock": Reader("run_lock", "", None, lambda state, parts, rest: setattr(state, "run_lock", run_lock.parse(parts))),
}
READERS: dict[str, Reader] = {**ALWAYS, **{tag: r for kind in KINDS for tag, r in kind.readers.items()}}


def probe_script(request: ProbeRequest) -> str:
    """The one shell command that answers a ProbeRequest (each kind's fragment, in KINDS' order). Always exits 0."""
    lines = ['printf "machine %s\\n" "$(uname -m)"']
    lines += [fragment for kind in KINDS if (fragment := kind.script(getattr(request, kind.asked)))]
    lines.append("true")
    return "\n".join(lines)


def _glob(pattern: str) -> str:
    """Quote a path but leave a trailing '*' to the remote shell."""
    if pattern.endswith("*"):
        return shlex.quote(pattern[:-1]) + "*"
    return shlex.quote(pattern)


def parse_probe(lines: list[str]) -> NodeState:
    """The NodeState a probe's output lines describe (each line read by the Reader of its tag; others ignored)."""
    state = NodeState()
    for line in lines:
        tag, _, rest = line.partition("\t") if "\t" in line else line.partition(" ")
        parts = rest.split("\t")
        reader = READERS.get(tag)
        if reader is not None and (reader.parts is None or len(parts) == reader.parts):
            reader.read(state, parts, rest)
    return state


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
    raises run_lock.NodeLocked naming the holder when another run holds it.
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
            script = "\n".join([first, run_lock.acquire_script(run_lock_wait, run_lock.holder()), rest])
        answer = host.get_fact(NodeProbe, script=script)
        _answers[host.name] = (request, answer)
    if run_lock_wait is not None:
        run_lock.refuse_if_held(host.name, answer.run_lock, run_lock_wait)
    return answer.answering(request)
