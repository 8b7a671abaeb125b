"""
kube-controller-manager after a reset: its manifest or unit as it was before podnet, or
without podnet's node IPAM flags.

podnet copies the file to ``BACKUP_DIR/<name>.<sha256[:12] of the copy>`` each time before it
changes the flags (tasks.controller_manager). A reset puts a backup back only when that
undoes exactly podnet's change: the file on the node is what podnet's merge makes of the backup
with the current settings or with the node IPAM flags the file holds (byte for byte, or for a
manifest value for value as the kubelet reads it; nothing else edited it since), followed back
through podnet's earlier rewrites to the pre-podnet original (the backup that is not itself
podnet's rewrite of another backup; when no single one is, a file that equals a backup stays).
Without any
backup podnet never changed the file, and it stays as it is (unless kubeadm wrote it from
podnet's configuration, cluster_bootstrap). Otherwise only podnet's flags are taken out of
the command line, read as kube-controller-manager reads it (tasks.controller_manager.read_flags):
``--allocate-node-cidrs``, ``--cluster-cidr``, ``--node-cidr-mask-size`` (and ``-ipv4``/``-ipv6``),
and a ``nodeipam`` that ends a ``--controllers`` list without ``*`` (where podnet's
merge_controllers appends it). ``--service-cluster-ip-range`` stays: kube-apiserver and
kubeadm set it too.
"""

from __future__ import annotations

import posixpath
import shlex

import yaml
from pyinfra import logger

from tasks.engine import ops
from tasks.engine.context import Step
from tasks.controller_manager import (BACKUP_DIR, NODE_IPAM_NAMES, SLICE_FLAGS, ControllerManagerError,
                                      _slice_items, config_mode, config_path, desired_flags, effective_values, merge_manifest,
                                      merge_unit, read_flags, unit_name)
from tasks.engine import answers
from tasks.engine.answers import BadField
from tasks.engine.desired import DesiredFile, text_file
from tasks.engine.probe import NodeState, ProbeRequest
from tasks.formats import kube_yaml
from tasks.settings import Settings

REMOVED_FLAGS = ("allocate-node-cidrs", "cluster-cidr", "node-cidr-mask-size", "node-cidr-mask-size-ipv4",
                 "node-cidr-mask-size-ipv6")
BACKUPS_QUERY = "kcm_backups"


def backups_command(s: Settings) -> str:
    """Prints "<path> <base64 content>" per podnet backup of the manifest or unit."""
    pattern = f"{BACKUP_DIR}/{shlex.quote(posixpath.basename(config_path(s)))}.*"
    return f"for f in {pattern}; do [ -f \"$f\" ] && printf '%s %s\\n' \"$f\" \"$(base64 -w0 < \"$f\")\"; done; true"


def _backup_line(prefix: str):
    def check(line: str) -> tuple[str, bytes]:
        """``<path> <base64 content>`` of one of podnet's backups (BACKUP_DIR/<name>.<digest prefix>)."""
        path, data = answers.fields(line, 2, " ")
        if not answers.absolute_path(path).startswith(prefix) or "/" in path[len(prefix):]:
            raise BadField(f"not a backup of podnet's ({prefix}*)")
        return path, answers.base64_bytes(data)
    return check


def backups(node: NodeState, s: Settings, host_name: str = "") -> dict[str, bytes]:
    """Backup path -> content, from the probe's answer to backups_command; RemoteAnswerError when a line
    does not fit (what to put back is not decided from an answer podnet cannot read)."""
    rc, lines = node.queries.get(BACKUPS_QUERY, (1, []))
    prefix = f"{BACKUP_DIR}/{posixpath.basename(config_path(s))}."
    return dict(answers.records(host_name, f"podnet's backups of {config_path(s)} ({BACKUPS_QUERY})",
                                lines if rc == 0 else [], _backup_line(prefix)))


def strip_plan(segments: list[list[str]], flags: dict) -> list[tuple[int, int | str]] | None:
    """A plan in ``_merge_plan``'s form (segment, kept item index or new text) that drops podnet's
    node IPAM flags (REMOVED_FLAGS, with their values) and a trailing ``nodeipam`` podnet appended
    to a ``--controllers`` list; None when there is none of them."""
    items = [item for segment in segments for item in segment]
    owner = [k for k, segment in enumerate(segments) for _ in segment]
    uses, _ = read_flags(items)
    changes: dict[int, tuple[int, str | None]] = {}  # first item -> (end, replacement or None)
    for use in uses:
        if use.name in REMOVED_FLAGS:
            changes[use.start] = (use.end, None)
        elif use.name in SLICE_FLAGS and use.value:
            names = _slice_items(use.value)
            if len(names) > 1 and names[-1] in NODE_IPAM_NAMES and "*" not in names:
                changes[use.start] = (use.end, f"--{use.name}={','.join(names[:-1])}")
    if not changes:
        return None
    plan: list[tuple[int, int | str]] = []
    i = 0
    while i < len(items):
        if i not in changes:
            plan.append((owner[i], i))
            i += 1
            continue
        end, replacement = changes[i]
        if replacement is not None:
            plan.append((owner[i], replacement))
        i = end
    return plan


def _merge(s: Settings):
    return merge_manifest if s.kube_controller_manager_runtime == "static-pod" else merge_unit


def _podnet_flags_in(s: Settings, text: str) -> dict[str, str | None]:
    """The node IPAM flags as ``text`` has them, in desired_flags' form (None: not given)."""
    items = _command_line(s, text)
    values = effective_values(read_flags(items)[0])
    return {name: values.get(name) for name in desired_flags(s)}  # type: ignore[misc]


def _command_line(s: Settings, text: str) -> list[str]:
    """The kube-controller-manager command line in a manifest or unit, as one item list."""
    words: list[str] = []

    def keep(segments, flags):
        words.extend(item for segment in segments for item in segment)
        return None

    _merge(s)(text, {}, planner=keep)
    return words


def _same_file(s: Settings, merged: str, current: bytes) -> bool:
    """Whether ``current`` is ``merged``: byte for byte, or for a manifest, the same values as the kubelet
    reads them (tasks.formats.kube_yaml), so a manifest an earlier podnet release wrote in another layout
    (PyYAML's) is still recognised as podnet's rewrite."""
    if merged.encode() == current:
        return True
    if s.kube_controller_manager_runtime != "static-pod":
        return False
    try:
        return kube_yaml.load(merged) == kube_yaml.load(current.decode())
    except (yaml.YAMLError, UnicodeDecodeError):
        return False


def _rewrite_of(s: Settings, text: bytes, source: bytes) -> bool:
    """Whether ``text`` is podnet's merge of ``source`` with the flags ``text`` holds (podnet's
    merge always leaves --allocate-node-cidrs=true)."""
    try:
        flags = _podnet_flags_in(s, text.decode())
        if flags["allocate-node-cidrs"] != "true":
            return False
        merged = _merge(s)(source.decode(), flags)
    except (ControllerManagerError, yaml.YAMLError, UnicodeDecodeError):
        return False
    return merged is not None and _same_file(s, merged, text)


def _sources(s: Settings, text: bytes, found: dict[str, bytes], merged_from_settings: bool) -> list[str]:
    """The backups ``text`` is podnet's merge of: with the node IPAM flags ``text`` holds (_rewrite_of),
    or, for the file on the node, with the current settings' flags (``merged_from_settings``)."""
    sources = []
    for path, content in found.items():
        if content == text:
            continue
        if _rewrite_of(s, text, content):
            sources.append(path)
            continue
        if not merged_from_settings:
            continue
        try:
            merged = _merge(s)(content.decode(), desired_flags(s))
        except (ControllerManagerError, yaml.YAMLError, UnicodeDecodeError):
            continue
        if merged is not None and _same_file(s, merged, text):
            sources.append(path)
    return sources


def original_backup(s: Settings, current: bytes, found: dict[str, bytes]) -> str | None:
    """The backup to put back (its path), or None: the one pre-podnet original that ``current`` came
    from by podnet's merges alone.

    Each deploy that changes the flags backs up the file it rewrites, so after settings changes the
    backups hold the original and podnet's own earlier rewrites of it (a change of cluster_cidr, dual
    stack turned on, or changed back: the current file can be one of the backups itself). The chain is
    followed back from ``current`` through every backup it is a merge of; of the backups reached, the
    originals are those that are not podnet's merge of any other backup. Exactly one must be reached."""
    sources = {path: _sources(s, content, found, merged_from_settings=False) for path, content in found.items()}
    reached: set[str] = set()
    todo = _sources(s, current, found, merged_from_settings=True)
    while todo:
        path = todo.pop()
        if path not in reached:
            reached.add(path)
            todo.extend(sources[path])
    originals = [path for path in sorted(reached) if not sources[path]]
    return originals[0] if len(originals) == 1 else None


def restored(s: Settings, node: NodeState, host_name: str) -> tuple[bytes | None, str]:
    """What the manifest or unit must hold after the reset (None: it stays as it is) and why:

    - the pre-podnet original backup undoes exactly podnet's changes (original_backup): that backup;
    - it is one of podnet's backups already and no original is found (a reset put it back; an original that
      holds podnet's flags already, as kubeadm's with a podSubnet, is podnet's merge of its own rewrite as well,
      so the content alone does not tell which came first): it stays;
    - there is no backup: podnet never rewrote the file (it backs up before every change), so it
      stays, unless kubeadm wrote it from podnet's configuration (cluster_bootstrap);
    - otherwise: the file without podnet's node IPAM flags (strip_plan).
    """
    path = config_path(s)
    current = node.contents.get(path)
    if current is None:
        return None, f"{path} does not exist"
    found = backups(node, s, host_name)
    backup = original_backup(s, current, found)
    if backup is not None:
        return found[backup], f"restoring {path} from podnet's backup {backup}"
    if current in found.values():  # a reset put it back, or no chain of podnet's merges leads to one original
        return None, f"{path} is as in podnet's backup"
    if not found and not s.cluster_bootstrap:
        return None, f"{path} was never changed by podnet (no backup in {BACKUP_DIR})"
    try:
        stripped = _merge(s)(current.decode(), {}, planner=strip_plan)
    except (ControllerManagerError, yaml.YAMLError) as error:
        raise ControllerManagerError(f"{host_name}: {path}: {error}") from None
    if stripped is None:
        return None, f"{path} has none of podnet's node IPAM flags"
    return stripped.encode(), f"removing podnet's node IPAM flags from {path} (no backup is the original of it)"


# --- the reset step ------------------------------------------------------------------------


def resets_controller_manager(s: Settings) -> bool:
    return s.is_control_plane and s.kube_controller_manager_runtime != "external"


def probe_request(s: Settings) -> ProbeRequest:
    """The manifest or unit (its content, and its digest, which installing the restored file compares),
    podnet's backups of it, and a systemd kube-controller-manager's unit state."""
    return ProbeRequest(contents=[config_path(s)], hashes=[config_path(s)], queries={BACKUPS_QUERY: backups_command(s)},
                        units=[unit_name(s)]
                        if s.kube_controller_manager_runtime == "systemd" else [])


def controller_manager_restored(s: Settings, node: NodeState, host_name: str) -> None:
    """The manifest or unit from podnet's backup, or without podnet's flags; a systemd
    kube-controller-manager restarted with it (the kubelet restarts a static pod by itself)."""
    content, how = restored(s, node, host_name)
    desired: DesiredFile | None = text_file(config_path(s), content.decode(), mode=config_mode(s)) if content else None
    if desired is not None:
        logger.info(f"    {host_name}: {how}")
    ops.files_installed(name="reset: kube-controller-manager without podnet's node IPAM flags",
                        files=[desired] if desired else [], current=node, owned=False)
    if s.kube_controller_manager_runtime == "systemd":
        unit = unit_name(s)
        ops.shell_when(name="reset: kube-controller-manager restarted",
                       commands=["systemctl daemon-reload", f"systemctl restart {shlex.quote(unit)}"],
                       reason="its unit changed" if desired else None)


RESET = Step(
    "reset: kube-controller-manager",
    applies=lambda ctx: resets_controller_manager(ctx.settings),
    probe=lambda ctx: probe_request(ctx.settings),
    apply=lambda ctx: controller_manager_restored(ctx.settings, ctx.node, ctx.host_name),
)
