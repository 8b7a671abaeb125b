"""
What podnet owns on a node, declared once per concern, and what follows from it.

Each concern declares an ``Ownership``: the files it installs (each with its source: a
rendered template, a release file, an archive's members), the files it edits but does not
own, the systemd units, network interfaces and runtime directories it makes. From the
declarations come: the probe's ownership questions (``probe_request``), the directories an
interrupted run may have left staged files in (``Ownership.directories``), what a reset
removes (``removal``), and the tests' expected files.

Ownership on the node is recorded, not guessed from a name:

- ``LEDGER``: every file podnet activates is recorded there with the sha256 the node computed
  after the rename (``ops.install_script``); the last line of a path is what podnet installed.
- ``ORIGINALS_DIR``: before podnet replaces a file it did not install (the ledger does not hold
  its current digest), the original is kept there under its own path, root-only
  (``keep_original_script``), once: the first original is the one a reset restores.

A reset removes a file only when its digest is what podnet installed (the ledger's; on a node
without a ledger, deployed by a podnet that kept none, the digest this release would install),
restores the kept original in its place, and leaves every other file byte for byte.
"""

from __future__ import annotations

import fnmatch
import posixpath
import shlex
from dataclasses import dataclass, field

from tasks.engine.probe import NodeState, ProbeRequest

LEDGER = "/var/lib/podnet/installed"
ORIGINALS_DIR = "/var/lib/podnet/backup/replaced"
ORIGINALS_QUERY = "podnet_originals"
PARTIAL_SUFFIX = ".podnet-partial"  # an original being copied (complete once renamed without it)


@dataclass(frozen=True)
class OwnedFile:
    """A file podnet installs. ``path`` is the node path; one ending in ``/*`` stands for every member
    of an archive installed into that directory (their names come from the archive, or the ledger).
    ``source`` says where its bytes come from: ``template <file>``, ``rendered <function>`` (text
    podnet serializes itself), ``release <artifact>`` (the downloaded file itself) or ``archive
    <artifact>`` (members, mapped to node paths by the ``install`` entry of files/artifacts.yaml)."""

    path: str
    source: str
    # Node names to ask the probe for, where ``path`` is an archive's directory: shell globs below it.
    probe_globs: tuple[str, ...] = ()

    @property
    def is_members(self) -> bool:
        return self.path.endswith("/*")

    @property
    def directory(self) -> str:
        return posixpath.dirname(self.path)

    def covers(self, path: str) -> bool:
        """``path`` is this file, or (archive members) one of the names the probe asks for in its directory."""
        if not self.is_members:
            return path == self.path
        return posixpath.dirname(path) == self.directory and any(
            fnmatch.fnmatchcase(posixpath.basename(path), g) for g in self.probe_globs or ("*",))

    @property
    def is_text(self) -> bool:
        """Rendered by podnet (read for --diff), not a release's bytes."""
        return self.source.split()[0] in ("template", "rendered")

    def probe_paths(self) -> list[str]:
        if not self.is_members:
            return [self.path]
        return [f"{self.directory}/{g}" for g in self.probe_globs] if self.probe_globs else [self.path]


@dataclass(frozen=True)
class Ownership:
    """Everything one concern puts on a node (see the module docstring)."""

    concern: str
    files: tuple[OwnedFile, ...] = ()
    # Files podnet changes but does not own (their own backup and restore are the concern's).
    edits: tuple[str, ...] = ()
    # Paths an earlier podnet release installed and this one removes.
    retired: tuple[str, ...] = ()
    units: tuple[str, ...] = ()
    interfaces: tuple[str, ...] = ()
    # Directories the concern's components create at runtime, removed whole by a reset.
    runtime_dirs: tuple[str, ...] = ()

    def paths(self) -> list[str]:
        return [f.path for f in self.files]

    def directories(self) -> list[str]:
        """Every directory the concern writes files into (staged files of a killed run are looked for there)."""
        return sorted({posixpath.dirname(p) for p in [*self.paths(), *self.edits]})

    def probe_request(self) -> ProbeRequest:
        """The deploy's ownership questions: the digest (and mode) of every file it installs, a
        rendered one read as well under --diff, the state of its units. A file below an archive
        directory the probe asks for by glob is not asked again."""
        members = [f for f in self.files if f.is_members]
        covered = [f for f in self.files if not f.is_members and any(m.covers(f.path) for m in members)]
        binaries = [p for f in self.files if not f.is_text and f not in covered for p in f.probe_paths()]
        return ProbeRequest(hashes=list(dict.fromkeys(binaries)), texts=[f.path for f in self.files if f.is_text],
                            units=list(self.units))


def installed(targets: list[str], source: str, probe_globs: tuple[str, ...] = ()) -> tuple[OwnedFile, ...]:
    """Owned files of a release's ``install`` node paths (files/artifacts.yaml): a directory
    (ending in "/") stands for the archive members installed into it."""
    return tuple(OwnedFile(t + "*" if t.endswith("/") else t, source, probe_globs if t.endswith("/") else ())
                 for t in targets)


def all_directories(declarations: list[Ownership]) -> list[str]:
    return sorted({d for o in declarations for d in o.directories()})


# --- the node's record --------------------------------------------------------------------


def ledger(node: NodeState) -> dict[str, str] | None:
    """Path -> sha256 of what podnet last installed there, from the probe's read of LEDGER; None on a
    node without one (deployed only by a podnet that kept none)."""
    content = node.contents.get(LEDGER)
    if content is None:
        return None
    recorded: dict[str, str] = {}
    for line in content.decode(errors="replace").splitlines():
        digest, _, path = line.partition(" ")
        if len(digest) == 64 and path.startswith("/"):
            recorded[path] = digest
    return recorded


def originals_command() -> str:
    """Lists the kept originals (their paths below ORIGINALS_DIR), one a line."""
    return f"[ -d {ORIGINALS_DIR} ] && find {ORIGINALS_DIR} -type f ! -name '*{PARTIAL_SUFFIX}'; true"


def originals(node: NodeState) -> dict[str, str]:
    """Node path -> where its kept original is, from the probe's answer to originals_command."""
    rc, lines = node.queries.get(ORIGINALS_QUERY, (1, []))
    return {line[len(ORIGINALS_DIR):]: line for line in (lines if rc == 0 else [])
            if line.startswith(ORIGINALS_DIR + "/") and not line.endswith(PARTIAL_SUFFIX)}


def probe_request(declarations: list[Ownership], listings: tuple[str, ...] = ()) -> ProbeRequest:
    """What a reset asks to decide what is podnet's: the digests of the declared files, the ledger,
    the kept originals."""
    return ProbeRequest(hashes=list(dict.fromkeys(p for o in declarations for f in o.files for p in f.probe_paths())),
                        contents=[LEDGER], queries={ORIGINALS_QUERY: originals_command()}, listings=list(listings))


def keep_original_script(path: str, ledger_path: str = LEDGER, originals_dir: str = ORIGINALS_DIR) -> str:
    """Shell that keeps the live ``path`` below ``originals_dir`` (root-only, mode and times kept) when
    podnet did not install it (its digest is not the ledger's last one for it) and no original is
    kept yet. Run right before the staged file is renamed over it."""
    q = shlex.quote
    kept = originals_dir + path
    recorded = f"$(awk -v p={q(path)} 'substr($0, 66) == p {{s = substr($0, 1, 64)}} END {{print s}}' {q(ledger_path)} " \
               "2>/dev/null)"
    return (f"if [ -f {q(path)} ] && [ ! -e {q(kept)} ] && "
            f"[ \"$(sha256sum < {q(path)} | cut -c1-64)\" != \"{recorded}\" ]; then "
            f"mkdir -p -m 0700 {q(originals_dir)} && mkdir -p {q(posixpath.dirname(kept))} && "
            f"cp -p {q(path)} {q(kept + PARTIAL_SUFFIX)} && mv -f {q(kept + PARTIAL_SUFFIX)} {q(kept)}; fi")


def record_script(paths: list[str], ledger_path: str = LEDGER, digests: list[str] | None = None) -> str:
    """Shell that records in the ledger the digest each of ``paths`` has on the node now (after activation):
    ``digests``, shell words holding the sums the node already computed for them, or else hashed here."""
    q = shlex.quote
    words = digests or [f"\"$(sha256sum < {q(p)} | cut -c1-64)\"" for p in paths]
    lines = "; ".join(f"printf '%s %s\\n' {word} {q(p)}" for p, word in zip(paths, words))
    return f"mkdir -p {q(posixpath.dirname(ledger_path))} && {{ {lines}; }} >> {q(ledger_path)}"


# --- what a reset does with a concern's files ---------------------------------------------


@dataclass
class Removal:
    """What a reset does with a set of declared files on one node."""

    removed: list[str] = field(default_factory=list)  # podnet's, no original kept: deleted
    restored: list[tuple[str, str]] = field(default_factory=list)  # (kept original, path): put back
    foreign: list[str] = field(default_factory=list)  # not what podnet installed: left as they are

    def commands(self) -> list[str]:
        q = shlex.quote
        commands = []
        if self.removed:
            commands.append("rm -f " + " ".join(q(p) for p in self.removed))
        commands += [f"mv -f {q(kept)} {q(path)}" for kept, path in self.restored]
        return commands

    def reason(self, what: str) -> str | None:
        parts = [*([f"removing {what}: {', '.join(self.removed)}"] if self.removed else []),
                 *([f"restoring the original{'s' if len(self.restored) > 1 else ''} podnet replaced: "
                    + ", ".join(p for _, p in self.restored)] if self.restored else [])]
        return "; ".join(parts) or None


def is_podnets(path: str, digest: str | None, installed: dict[str, str] | None, declared: dict[str, str]) -> bool:
    """The file at ``path`` (sha256 ``digest``) is what podnet installed: the ledger's last digest for it;
    on a node without a ledger (deployed by a podnet that kept none), the digest this release declares.
    A path the ledger does not name was never installed by podnet (a file of the same bytes that was
    there already is left alone)."""
    if digest is None:
        return False
    if installed is None:
        return declared.get(path) == digest
    return installed.get(path) == digest


def removal(node: NodeState, declared: dict[str, str | None], members: tuple[OwnedFile, ...] = (),
            retired: tuple[str, ...] = ()) -> Removal:
    """
    What to do with the declared files on ``node``: ``declared`` maps each path to the digest this
    release installs there (None where it cannot say); ``members`` (archive directories) add every
    path of the ledger and of the kept originals that they cover (an archive's members, named by the
    node's record); ``retired`` paths carry podnet's own name and are removed when present. Paths
    are taken in the declaration's order.
    """
    installed, kept = ledger(node), originals(node)
    paths = list(declared)
    for owned in members:
        paths += [p for p in dict.fromkeys([*(installed or {}), *kept]) if owned.covers(p) and p not in paths]
    result = Removal()
    for path in [*paths, *(p for p in retired if p not in paths)]:
        digest = node.hashes.get(path)
        ours = path in retired or is_podnets(path, digest, installed, {p: d for p, d in declared.items() if d})
        if digest is not None and not ours:
            result.foreign.append(path)
        elif path in kept:
            result.restored.append((kept[path], path))
        elif digest is not None:
            result.removed.append(path)
    return result


def declared_digests(files) -> dict[str, str]:
    """Path -> sha256 of the desired files (``tasks.engine.desired.DesiredFile``) this release installs."""
    return {f.path: f.sha256 for f in files}


def unit_removal_commands(unit: str, unit_path: str, files: Removal, running: bool,
                          after_removal: tuple[str, ...] = ()) -> list[str]:
    """A reset of a unit podnet installed: stopped and disabled only when its unit file is podnet's
    (removed), the files taken off (``after_removal`` runs right after them), systemd reloaded when
    the unit file changed; a unit whose original files are put back is restarted with them if it runs."""
    ours = unit_path in files.removed
    touched = ours or any(path == unit_path for _, path in files.restored)
    commands = [*([f"systemctl disable --now {shlex.quote(unit)}"] if ours and running else []),
                *files.commands(), *(after_removal if files.removed or files.restored else ()),
                *(["systemctl daemon-reload"] if touched else [])]
    if files.restored and not ours and running:
        commands.append(f"systemctl try-restart {shlex.quote(unit)}")
    return commands
