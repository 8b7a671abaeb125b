"""
Ask each host once.

Every concern (kernel, containerd, CNI, control plane, flannel) says what it needs to
know about a node in a ``ProbeRequest``; the requests are merged and sent as ONE shell
command per host, whose answer (``NodeState``) every decision reads. The answer is kept
for the rest of the run, so planning and execution never ask the host the same thing again.
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
    queries: dict[str, tuple[int, list[str]]] = field(default_factory=dict)  # name -> (exit code, lines)
    # Every sysctl configuration file (*.conf in SYSCTL_DIRS, then SYSCTL_CONF): path -> the path it resolves to
    # (itself, a link's target, /dev/null for a masked name).
    sysctl_files: dict[str, str] = field(default_factory=dict)
    # path -> its lines that may set a requested parameter, as written (files without one absent).
    sysctl_lines: dict[str, list[str]] = field(default_factory=dict)
    run_lock: run_lock.LockAnswer | None = None  # the run lock step's answer (tasks/engine/run_lock.py)

    def answering(self, request: ProbeRequest) -> "NodeState":
        """This answer held to ``request``: reading anything it did not ask for raises ProbeContractError."""
        def one_of(keys) -> Callable[[str], bool]:
            return set(keys).__contains__

        asked = {
            "hashes": _matches_any(request.hashes), "modes": _matches_any(request.hashes),
            "contents": one_of(request.contents), "sysctls": one_of(request.sysctls),
            "features": one_of(request.features), "units": one_of(request.units),
            "listings": one_of(request.listings), "queries": one_of(request.queries),
        }
        return NodeState(**{**self.__dict__, **{kind: Answers(ANSWER_KINDS[kind], check, dict(getattr(self, kind)))
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


def probe_script(request: ProbeRequest) -> str:
    """The one shell command that answers a ProbeRequest. Always exits 0."""
    q = shlex.quote
    lines = ['printf "machine %s\\n" "$(uname -m)"']
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
        lines.append(f"[ -d {q(directory)} ] && ls -1A {q(directory)} | "
                     f"while IFS= read -r entry; do printf 'entry\\t%s\\t%s\\n' {q(directory)} \"$entry\"; done")
    for name, command in request.queries.items():
        lines.append(f"out=$( ({command}) 2>&1 ); rc=$?; printf 'query\\t%s\\t%s\\t%s\\n' {q(name)} \"$rc\" "
                     "\"$(printf '%s' \"$out\" | base64 -w0)\"")
    if request.sysctl_config:
        lines.append(sysctl_config_script(request.sysctl_config))
    lines.append("true")
    return "\n".join(lines)


def _glob(pattern: str) -> str:
    """Quote a path but leave a trailing '*' to the remote shell."""
    if pattern.endswith("*"):
        return shlex.quote(pattern[:-1]) + "*"
    return shlex.quote(pattern)


def parse_probe(lines: list[str]) -> NodeState:
    state = NodeState()
    for line in lines:
        kind, _, rest = line.partition("\t") if "\t" in line else line.partition(" ")
        parts = rest.split("\t")
        if kind == "machine":
            state.machine = rest.strip()
        elif kind == "sha" and len(parts) == 2:
            state.hashes[parts[1]] = parts[0]
        elif kind == "mode" and len(parts) == 2:
            state.modes[parts[1]] = parts[0]
        elif kind == "content" and len(parts) == 2:
            state.contents[parts[0]] = base64.b64decode(parts[1])
        elif kind == "sysctl" and len(parts) == 2:
            state.sysctls[parts[0]] = None if parts[1] == "-" else parts[1].strip()
        elif kind == "feature" and len(parts) == 2:
            state.features[parts[0]] = parts[1] == "1"
        elif kind == "unit" and len(parts) == 3:
            state.units[parts[0]] = (parts[1] or "unknown", parts[2] or "not-found")
        elif kind == "entry" and len(parts) == 2:
            state.listings.setdefault(parts[0], []).append(parts[1])
        elif kind == "sysctlfile" and len(parts) == 2:
            state.sysctl_files[parts[0]] = parts[1]
        elif kind == "sysctlline" and len(parts) >= 2:
            path, _, text = rest.partition("\t")
            state.sysctl_lines.setdefault(path, []).append(text)
        elif kind == "query" and len(parts) == 3:
            output = base64.b64decode(parts[2]).decode(errors="replace")
            state.queries[parts[0]] = (int(parts[1]), output.splitlines())
        elif kind == "runlock":
            state.run_lock = run_lock.parse(parts)
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
