"""
kube-controller-manager node IPAM: `--allocate-node-cidrs=true`, `--cluster-cidr`,
`--node-cidr-mask-size` (`-ipv4`/`-ipv6` for dual stack), `--service-cluster-ip-range`,
and node IPAM enabled in `--controllers` by merging, never replacing, the list.

Works on kubeadm's static pod manifest (read and rewritten as the kubelet reads it, with go-yaml's
scalar rules (tasks.formats.kube_yaml); only `command`/`args` are replaced, every other node is
written back as it was; the kubelet runs `command` followed by `args`, read as one command line) and on
a systemd unit whose ExecStart runs kube-controller-manager (read with systemd's own line
continuation, comment and quoting rules). A command line is read as kube-controller-manager's
flag parser reads it (read_flags, effective_values). The rewrite happens only when an effective
value is not the wanted one; it then writes each flag podnet owns exactly once, so the command
line has one value per flag.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import ipaddress
import posixpath
import shlex
from dataclasses import dataclass

import yaml
from yaml.nodes import SequenceNode

from tasks.engine import ops
from tasks.formats.systemd_unit import UnitEntry, UnitSyntaxError, systemd_word, systemd_words, unit_entries
from tasks.engine.context import HostContext, Step
from tasks.engine.desired import DesiredFile, text_file
from tasks.engine.findings import Finding, error, refuse, warning
from tasks.engine.ownership import Ownership
from tasks.errors import PodnetError
from tasks.formats import kube_yaml
from tasks.engine.probe import NodeState, ProbeRequest
from tasks.settings import KUBEADM_DEFAULT_NODE_MASK, Settings

CONTAINER_NAME = "kube-controller-manager"
NODE_IPAM_NAMES = ("nodeipam", "node-ipam-controller")  # the controller's alias and its name
BACKUP_DIR = "/var/lib/podnet/backup"
# The flags podnet owns, by how kube-controller-manager registers them with spf13/pflag:
# a boolean (BoolVar: NoOptDefVal "true", so "--flag" alone means true and never takes the next
# item), a string slice (StringSliceVar: each repeat appends to the list), the rest plain values
# (a repeat replaces the value; "--flag value" takes the next item, whatever it starts with).
BOOLEAN_FLAGS = ("allocate-node-cidrs",)
SLICE_FLAGS = ("controllers",)
OWNED_FLAGS = ("allocate-node-cidrs", "cluster-cidr", "node-cidr-mask-size", "node-cidr-mask-size-ipv4",
               "node-cidr-mask-size-ipv6", "service-cluster-ip-range", "controllers")


class ControllerManagerError(PodnetError, ValueError):
    """The control plane's configuration cannot be merged safely."""


def desired_flags(s: Settings) -> dict[str, str | None]:
    """
    Flag -> value to set; None means the flag must not be present.

    Dual stack as kube-controller-manager's node IPAM takes it (cmd/kube-controller-manager/app,
    the node IPAM controller's start: processCIDRs and setNodeCIDRMaskSizes): --cluster-cidr holds at
    most two CIDRs, and two only of different families ("at least one from each IPFamily");
    --node-cidr-mask-size is refused with two ("not allowed with dual-stack clusters"), each family
    takes --node-cidr-mask-size-ipv4 / -ipv6 instead (defaults 24 / 64); --service-cluster-ip-range
    likewise one range per family. podnet's settings hold one CIDR per family (cluster_cidr IPv4,
    cluster_cidr_ipv6), so the IPv4 one comes first, as flannel's Network does.
    """
    if s.dual_stack:
        services = [str(s.service_cluster_ip_range)]
        if s.service_cluster_ip_range_ipv6 is not None:
            services.append(str(s.service_cluster_ip_range_ipv6))
        return {
            "allocate-node-cidrs": "true",
            "cluster-cidr": f"{s.cluster_cidr},{s.cluster_cidr_ipv6}",
            "node-cidr-mask-size": None,  # not allowed together with dual-stack CIDRs
            "node-cidr-mask-size-ipv4": str(s.node_cidr_mask_size),
            "node-cidr-mask-size-ipv6": str(s.node_cidr_mask_size_ipv6),
            "service-cluster-ip-range": ",".join(services),
        }
    return {
        "allocate-node-cidrs": "true",
        "cluster-cidr": str(s.cluster_cidr),
        "node-cidr-mask-size": str(s.node_cidr_mask_size),
        "node-cidr-mask-size-ipv4": None,
        "node-cidr-mask-size-ipv6": None,
        "service-cluster-ip-range": str(s.service_cluster_ip_range),
    }


def merge_controllers(value: str) -> str:
    """
    Enable node IPAM in a --controllers list without switching anything else on or off.
    `*` already includes it (only a `-nodeipam` has to go); a list without `*` gains it.
    """
    items = [c.strip() for c in value.split(",") if c.strip()]
    kept = [c for c in items if not (c.startswith("-") and c[1:] in NODE_IPAM_NAMES)]
    if "*" not in kept and not any(c in NODE_IPAM_NAMES for c in kept):
        if not kept:
            raise ControllerManagerError(
                f"--controllers={value} enables no controller; adding node IPAM would give "
                "--controllers=nodeipam, which runs node IPAM alone and switches every other controller off. "
                "Fix --controllers (e.g. '*,bootstrapsigner,tokencleaner') and rerun")
        kept.append("nodeipam")
    return ",".join(kept)


def node_ipam_enabled(controllers: list[str] | None) -> bool:
    """
    Whether kube-controller-manager runs node IPAM with this --controllers list (None: the flag is
    not given, so its default `*`). As upstream decides it: aliases become the controller's name
    (GenericControllerManagerConfigurationOptions.ApplyTo, k8s.io/controller-manager/options/
    generic.go), then the first item naming the controller wins, `name` on or `-name` off, and
    without one `*` turns on every controller not disabled by default, node IPAM included
    (IsControllerEnabled, k8s.io/controller-manager/app/helper.go).
    """
    if controllers is None:
        return True
    for item in controllers:
        if item.startswith("-") and item[1:] in NODE_IPAM_NAMES:
            return False
        if item in NODE_IPAM_NAMES:
            return True
    return "*" in controllers


# --- reading a command line as kube-controller-manager does ---------------------------------


@dataclass(frozen=True)
class FlagUse:
    """One long flag on a command line: its name, its value, and the items [start, end) it takes."""

    name: str
    value: str | None  # None: a value flag with no item left after it, or a flag podnet does not own given bare
    start: int
    end: int


def read_flags(items: list[str]) -> tuple[list[FlagUse], int]:
    """
    The long flags of a kube-controller-manager command line in order, and the index where flag
    parsing stops (a "--" item, else the end), as spf13/pflag reads them (FlagSet.parseArgs and
    parseLongArg in flag.go) with the name normalisation kube-controller-manager installs
    (k8s.io/component-base/cli/run.go: cliflag.WordSepNormalizeFunc, "_" read as "-"):

    - "--name=value" gives the value after the first "=" (also an empty one);
    - "--name" alone gives "true" to a boolean flag, and to any other flag the next item, whatever
      it looks like ("--controllers -nodeipam" is one flag);
    - items after "--" are arguments, not flags; items that are not long flags ("-v", "2", the
      binary) are kept where they are.

    podnet knows the type of the flags it owns only: after a flag it does not own given bare, the
    next item stays a separate item (its value, or an argument), unless it starts with "-".
    A bare boolean followed by an argument is refused: kube-controller-manager reads
    "--allocate-node-cidrs false" as true plus the argument "false", and refuses to start because
    it takes no arguments (NewControllerManagerCommand, cmd/kube-controller-manager/app/
    controllermanager.go).
    """
    uses: list[FlagUse] = []
    i = 0
    while i < len(items):
        item = items[i]
        if item == "--":
            return uses, i
        if not item.startswith("--") or item[2:3] in ("", "-", "="):
            i += 1
            continue
        name, sep, value = item[2:].partition("=")
        name = name.replace("_", "-")
        end = i + 1
        if not sep:
            if name in BOOLEAN_FLAGS:
                value = "true"
                if end < len(items) and (not items[end].startswith("-") or items[end] == "-") and items[end]:
                    raise ControllerManagerError(
                        f"{items[end]!r} after --{name} is not its value: kube-controller-manager reads a boolean "
                        f"flag given alone as true and {items[end]!r} as an argument, and refuses to start because "
                        f"it takes no arguments. Write --{name}={items[end]} (or remove {items[end]!r}) and rerun")
            elif name in OWNED_FLAGS and end < len(items):
                value, end = items[end], end + 1
            else:
                value = None
        uses.append(FlagUse(name, value, i, end))
        i = end
    return uses, len(items)


def _slice_items(value: str) -> list[str]:
    """A string-slice flag's value as pflag splits it: one CSV record (readAsCSV, string_slice.go)."""
    return next(csv.reader([value])) if value else []


def effective_values(uses: list[FlagUse]) -> dict[str, str | list[str] | None]:
    """What kube-controller-manager ends up with for each flag given: a repeated plain flag keeps its
    last value; a repeated string slice is one list, each repeat appended to the first
    (stringSliceValue.Set, string_slice.go)."""
    values: dict[str, str | list[str] | None] = {}
    for use in uses:
        if use.name in SLICE_FLAGS:
            values[use.name] = [*values.get(use.name, []), *_slice_items(use.value or "")]  # type: ignore[misc]
        else:
            values[use.name] = use.value
    return values


def _go_bool(value: str) -> bool | None:
    """strconv.ParseBool, which pflag's boolean flags use."""
    return {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
            "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}.get(value)


def _go_int(value: str) -> int | None:
    """strconv.ParseInt(value, 0, 32), which pflag's int32 flags use: 0x/0o/0b prefixes, a leading 0 for octal,
    no white space."""
    if not value.isascii() or value != value.strip():
        return None
    sign, digits = (-1, value[1:]) if value[:1] == "-" else (1, value[1:] if value[:1] == "+" else value)
    if len(digits) > 1 and digits[0] == "0" and digits[1] not in "xXoObB":
        digits = "0o" + digits[1:]
    try:
        number = sign * int(digits, 0)
    except ValueError:
        return None
    return number if -2**31 <= number < 2**31 else None


def _cidrs(value: str) -> list | None:
    """A comma-separated CIDR list as kube-controller-manager parses it (networks, host bits dropped)."""
    try:
        return [ipaddress.ip_network(part, strict=False) for part in value.strip().split(",")]
    except ValueError:
        return None


def _same_value(name: str, current: str | None, wanted: str) -> bool:
    """Whether kube-controller-manager reads the current value of a flag podnet owns as the wanted one."""
    if current is None:
        return False
    if name in BOOLEAN_FLAGS:
        return _go_bool(current) is _go_bool(wanted)
    if name.startswith("node-cidr-mask-size"):
        return _go_int(current) == int(wanted)
    wanted_cidrs = _cidrs(wanted)
    return _cidrs(current) == wanted_cidrs and wanted_cidrs is not None


def _stale_flags(values: dict, flags: dict[str, str | None]) -> list[str]:
    """The flags whose effective value is not the wanted one (given at all, for one that must go)."""
    return [name for name, wanted in flags.items()
            if (name in values if wanted is None else not _same_value(name, values.get(name), wanted))]


def _controllers_value(values: dict, uses: list[FlagUse]) -> str | None:
    """The --controllers value podnet writes (None: leave the flag as it is), from the merged list."""
    controllers = values.get("controllers")
    if node_ipam_enabled(controllers):  # type: ignore[arg-type]
        return None
    given = ",".join(controllers)  # type: ignore[arg-type]
    try:
        return merge_controllers(given)
    except ControllerManagerError as error:
        repeats = sum(1 for use in uses if use.name == "controllers")
        if repeats > 1:
            raise ControllerManagerError(f"{error} (--controllers is given {repeats} times; kube-controller-manager "
                                         "appends the repeats into this one list)") from None
        raise


def _merge_plan(segments: list[list[str]], flags: dict[str, str | None]) -> list[tuple[int, int | str]] | None:
    """
    The merged command line as (segment, item) pairs, where item is the index of a kept item of the
    segments joined together, or the text of a new one; None when kube-controller-manager already
    reads every wanted value and runs node IPAM. Each flag podnet owns is then written once, as
    --name=value, where it first appeared (inside the segment it was in), or before "--" (else at the
    end of the last segment) when it was not given; every other item is kept in order.
    """
    items = [item for segment in segments for item in segment]
    owner = [k for k, segment in enumerate(segments) for _ in segment]
    uses, end = read_flags(items)
    values = effective_values(uses)
    wanted = {name: value for name, value in flags.items() if value is not None}
    controllers = _controllers_value(values, uses)
    if not _stale_flags(values, flags) and controllers is None:
        return None
    if controllers is not None:
        wanted["controllers"] = controllers
    elif "controllers" in values:
        wanted["controllers"] = ",".join(values["controllers"])  # type: ignore[arg-type]
    starts = {use.start: use for use in uses if use.name in OWNED_FLAGS}
    plan: list[tuple[int, int | str]] = []
    i = 0
    while i < len(items):
        if i == end:
            plan.extend((owner[i], f"--{name}={value}") for name, value in wanted.items())
            wanted.clear()
        use = starts.get(i)
        if use is None:
            plan.append((owner[i], i))
            i += 1
            continue
        if use.name in wanted:
            plan.append((owner[i], f"--{use.name}={wanted.pop(use.name)}"))
        i = use.end
    plan.extend((len(segments) - 1, f"--{name}={value}") for name, value in wanted.items())
    return plan


def merge_command(command: list[str], flags: dict[str, str | None]) -> list[str]:
    """The kube-controller-manager command line with our flags set and other items kept in order."""
    plan = _merge_plan([command], flags)
    if plan is None:
        return list(command)
    return [command[item] if isinstance(item, int) else item for _, item in plan]


def _manifest_command_nodes(document) -> tuple:
    """The kube-controller-manager container of a composed static pod manifest, its ``command``/``args`` nodes,
    and the keys of those that hold items, in the order the kubelet runs them (command, then args: one command
    line, whose flags may be in either); ControllerManagerError where the kubelet would not run it."""
    containers = kube_yaml.get(kube_yaml.get(document, "spec"), "containers")
    container = next((c for c in (containers.value if isinstance(containers, SequenceNode) else [])
                      if kube_yaml.scalar_value(kube_yaml.get(c, "name")) == CONTAINER_NAME), None)
    if container is None:
        raise ControllerManagerError(f"no container named {CONTAINER_NAME!r} in the manifest")
    # new flags go to the end of args when there are args, else to the end of command
    nodes = {key: kube_yaml.get(container, key) for key in ("command", "args")}
    for key, node in nodes.items():
        if node is not None and not isinstance(node, SequenceNode) and kube_yaml.scalar_value(node) is not None:
            raise ControllerManagerError(f"{key}: is not a list, so the kubelet does not run this manifest")
    keys = [key for key, node in nodes.items() if isinstance(node, SequenceNode) and node.value]
    if not keys:
        raise ControllerManagerError("the container has no command or args: kube-controller-manager's command line "
                                     "is not in the manifest")
    for key in keys:
        for item in nodes[key].value:  # type: ignore[union-attr]
            value = kube_yaml.scalar_value(item)
            if not isinstance(value, str):
                raise ControllerManagerError(f"{key}: {value!r} is not a string, so the kubelet does not run this "
                                             f"manifest (YAML reads it as a {type(value).__name__}); quote it")
    return container, nodes, keys


def manifest_command_line(text: str) -> list[str]:
    """kube-controller-manager's command line in a static pod manifest, as the kubelet runs it (``command`` then
    ``args``, read with go-yaml's scalars); ControllerManagerError (or a YAML error) where the kubelet would not
    run it."""
    _, nodes, keys = _manifest_command_nodes(kube_yaml.compose(text))
    return [kube_yaml.scalar_value(item) for key in keys for item in nodes[key].value]  # type: ignore[union-attr]


def merge_manifest(text: str, flags: dict[str, str | None], planner=None) -> str | None:
    """
    The static pod manifest with merged flags, or None when nothing changes. ``planner``: another
    function of (segments, flags) that returns a plan as ``_merge_plan`` does (tasks.reset_controller_manager).

    Read and written as the kubelet reads it (tasks.formats.kube_yaml: go-yaml's scalars, not
    PyYAML's YAML 1.1), and only the container's ``command``/``args`` nodes are replaced: every other
    node is written back with its own value and style, so an env value such as 10:30 or "yes" means
    to the kubelet what it meant before.
    """
    document = kube_yaml.compose(text)
    container, nodes, keys = _manifest_command_nodes(document)
    items = [item for key in keys for item in nodes[key].value]  # type: ignore[union-attr]
    segments = [[kube_yaml.scalar_value(item) for item in nodes[key].value] for key in keys]  # type: ignore[union-attr]
    plan = (planner or _merge_plan)(segments, flags)
    if plan is None:
        return None
    merged: list[list] = [[] for _ in keys]
    for segment, item in plan:
        merged[segment].append(items[item] if isinstance(item, int) else kube_yaml.string(item))
    for key, value in zip(keys, merged):
        kube_yaml.set_value(container, key, kube_yaml.sequence(value, like=nodes[key]))
    return kube_yaml.serialize(document)


# --- what a command line configures: node IPAM as kube-controller-manager runs it ------------------

# kube-controller-manager's node masks when no --node-cidr-mask-size* flag is given: defaultNodeMaskCIDRIPv4 and
# defaultNodeMaskCIDRIPv6 (cmd/kube-controller-manager/app/core.go); kubeadm assumes the same (tasks/settings).
DEFAULT_NODE_MASK = KUBEADM_DEFAULT_NODE_MASK


@dataclass(frozen=True)
class NodeIpam:
    """
    kube-controller-manager's node IPAM as one command line configures it (``node_ipam``):

    - ``allocates``: --allocate-node-cidrs (default false: no node gets a podCIDR);
    - ``enabled``: node IPAM runs by --controllers (default ``*``: it does);
    - ``cluster_cidrs``: --cluster-cidr, one network per IP family (empty when not given);
    - ``node_masks``: the podCIDR prefix length per cluster CIDR, kube-controller-manager's defaults filled in;
    - ``given``: the flags given on the command line (the others hold their defaults);
    - ``problem``: why kube-controller-manager would not run node IPAM with these values ("" when it would).
    """

    allocates: bool
    enabled: bool
    cluster_cidrs: tuple = ()
    node_masks: tuple[int, ...] = ()
    given: frozenset[str] = frozenset()
    problem: str = ""


def _node_masks(values: dict, cidrs: list) -> tuple[tuple[int, ...], str]:
    """
    The node mask of each cluster CIDR, or the refusal, as kube-controller-manager decides them
    (setNodeCIDRMaskSizes, cmd/kube-controller-manager/app/core.go): with two cluster CIDRs (dual stack)
    --node-cidr-mask-size is refused and -ipv4/-ipv6 apply per family; with one, --node-cidr-mask-size applies
    to it and excludes the per-family flags, and a per-family flag of the other family is refused. A flag
    given as 0 counts as not given (its zero value).
    """
    masks = {}
    for name in ("node-cidr-mask-size", "node-cidr-mask-size-ipv4", "node-cidr-mask-size-ipv6"):
        value = values.get(name)
        if value is not None:
            number = _go_int(value)  # type: ignore[arg-type]
            if number is None:
                return (), f"--{name}={value} is not a number (strconv.ParseInt)"
            masks[name] = number
    common, v4, v6 = (masks.get(name, 0) for name in ("node-cidr-mask-size", "node-cidr-mask-size-ipv4",
                                                       "node-cidr-mask-size-ipv6"))
    sizes = {4: v4 or DEFAULT_NODE_MASK[4], 6: v6 or DEFAULT_NODE_MASK[6]}
    if len(cidrs) > 1:
        if common:
            return (), "usage of --node-cidr-mask-size is not allowed with dual-stack clusters"
    elif common:
        if v4 or v6:
            return (), ("usage of --node-cidr-mask-size-ipv4 and --node-cidr-mask-size-ipv6 is not allowed if "
                        "--node-cidr-mask-size is set")
        sizes = {4: common, 6: common}
    elif cidrs and v4 and cidrs[0].version == 6:
        return (), "usage of --node-cidr-mask-size-ipv4 is not allowed for a single-stack IPv6 cluster"
    elif cidrs and v6 and cidrs[0].version == 4:
        return (), "usage of --node-cidr-mask-size-ipv6 is not allowed for a single-stack IPv4 cluster"
    return tuple(sizes[net.version] for net in cidrs), ""


def node_ipam(items: list[str]) -> NodeIpam:
    """
    Node IPAM as kube-controller-manager runs it with the command line ``items`` (the flags read by
    ``read_flags``/``effective_values``: a repeated flag's last value, repeated --controllers as one list).
    --cluster-cidr is a comma-separated list of at most two networks, one per IP family, host bits dropped
    (processCIDRs and netutils.ParseCIDRs, cmd/kube-controller-manager/app/core.go); the node masks follow
    ``_node_masks``. ControllerManagerError for a command line kube-controller-manager refuses to start with
    (``read_flags``).
    """
    uses, _ = read_flags(items)
    values = effective_values(uses)
    allocates = _go_bool(values["allocate-node-cidrs"]) if "allocate-node-cidrs" in values else False  # type: ignore[arg-type]
    enabled = node_ipam_enabled(values.get("controllers"))  # type: ignore[arg-type]
    given = frozenset(values)
    if allocates is None:
        return NodeIpam(False, enabled, given=given,
                        problem=f"--allocate-node-cidrs={values['allocate-node-cidrs']} is not a boolean (strconv.ParseBool)")
    text = values.get("cluster-cidr") or ""
    if not text.strip():  # type: ignore[union-attr]
        return NodeIpam(allocates, enabled, given=given,
                        problem="--cluster-cidr is not given" if allocates else "")
    cidrs = _cidrs(text)  # type: ignore[arg-type]
    if cidrs is None:
        return NodeIpam(allocates, enabled, given=given, problem=f"--cluster-cidr={text} is not a list of CIDRs")
    if len(cidrs) > 2 or (len(cidrs) == 2 and cidrs[0].version == cidrs[1].version):
        return NodeIpam(allocates, enabled, tuple(cidrs), given=given,
                        problem=f"--cluster-cidr={text}: at most two networks, one IPv4 and one IPv6")
    masks, problem = _node_masks(values, cidrs)
    return NodeIpam(allocates, enabled, tuple(cidrs), masks, given, problem)


# --- systemd units (the syntax itself: tasks/formats/systemd_unit.py) --------------------------


def exec_start_entry(text: str) -> UnitEntry:
    """
    The ExecStart= that starts the service: an empty ExecStart= resets the list and a service that
    is not Type=oneshot must be left with exactly one command (systemd.service(5)), in [Service].
    """
    entries = [e for e in unit_entries(text) if e.section == "Service" and e.key == "ExecStart"]
    resets = [k for k, e in enumerate(entries) if not e.value]
    commands = entries[resets[-1] + 1:] if resets else entries
    if not commands:
        raise ControllerManagerError("no ExecStart= line running kube-controller-manager")
    if len(commands) > 1:
        raise ControllerManagerError(f"{len(commands)} ExecStart= commands in [Service]; systemd runs a service "
                                     "that is not Type=oneshot only with exactly one: keep one and rerun")
    return commands[0]


def _exec_start_words(text: str) -> tuple[UnitEntry, list[tuple[str, str]]]:
    """The unit's ExecStart= (``exec_start_entry``) and its words as systemd splits them (raw, value)."""
    entry = exec_start_entry(text)
    try:
        words = systemd_words(entry.value)
    except UnitSyntaxError as error:
        raise ControllerManagerError(str(error)) from None
    if any(raw == ";" for raw, _ in words):
        raise ControllerManagerError("ExecStart= holds more than one command (';'); kube-controller-manager's "
                                     "unit must run it alone")
    return entry, words


def unit_command_line(text: str) -> list[str]:
    """kube-controller-manager's command line in a systemd unit, its ExecStart= as systemd splits it
    (``exec_start_entry``, ``systemd_words``); ControllerManagerError where systemd would not run it."""
    return [word for _, word in _exec_start_words(text)[1]]


def merge_unit(text: str, flags: dict[str, str | None], planner=None) -> str | None:
    """The systemd unit with merged flags in its ExecStart, or None when unchanged. Kept words are
    written as they were (quoting, $VARIABLES and %specifiers intact), one per continuation line.
    ``planner``: as for merge_manifest."""
    entry, words = _exec_start_words(text)
    plan = (planner or _merge_plan)([[word for _, word in words]], flags)
    if plan is None:
        return None
    exec_start = "ExecStart="
    for n, (_, item) in enumerate(plan):
        raw = words[item][0] if isinstance(item, int) else systemd_word(item)
        # a continuation line starting with "#" or ";" would be read as a comment
        exec_start += raw if n == 0 else (" " + raw if raw[0] in "#;" else " \\\n  " + raw)
    newline = "\n" if text[:entry.end].endswith("\n") else ""
    return text[:entry.start] + exec_start + newline + text[entry.end:]


def config_path(s: Settings) -> str:
    return s.kube_controller_manager_manifest if s.kube_controller_manager_runtime == "static-pod" \
        else s.kube_controller_manager_unit


def unit_name(s: Settings) -> str:
    """The systemd unit of kube-controller-manager (systemd runtime): the name of kube_controller_manager_unit."""
    return posixpath.basename(s.kube_controller_manager_unit)


def config_mode(s: Settings) -> str:
    """The mode of the manifest (0600, as kubeadm writes static pod manifests) or the unit (0644)."""
    return "0600" if s.kube_controller_manager_runtime == "static-pod" else "0644"


def backup_path(path: str, content: bytes) -> str:
    """Where podnet keeps the copy of ``path`` holding ``content`` before changing it:
    BACKUP_DIR/<name>.<sha256[:12] of the content> (tasks/reset_controller_manager.py restores from there)."""
    return f"{BACKUP_DIR}/{posixpath.basename(path)}.{hashlib.sha256(content).hexdigest()[:12]}"


def backup_commands(path: str, backup: str) -> list[str]:
    return [f"mkdir -p {BACKUP_DIR}", f"cp -p {shlex.quote(path)} {shlex.quote(backup)}"]


def ownership(s: Settings) -> Ownership:
    """kube-controller-manager's manifest or unit is not podnet's: podnet only edits its node IPAM
    flags, keeping the file as it was in BACKUP_DIR first (tasks/reset_controller_manager puts it back)."""
    return Ownership("controller_manager", edits=(config_path(s),))


def probe_request(s: Settings) -> ProbeRequest:
    # The content to merge the flags into; its digest, which installing a rewritten one compares.
    return ProbeRequest(contents=[config_path(s)], hashes=[config_path(s)], units=[unit_name(s)]
                        if s.kube_controller_manager_runtime == "systemd" else [])


def merged_config(s: Settings, node: NodeState, host_name: str) -> tuple[str | None, list[Finding]]:
    """The config with the node IPAM flags merged (None when already right), or the errors that stop it:
    the file missing, or a file the merge cannot read safely."""
    path = config_path(s)
    if path not in node.contents:
        other = "systemd" if s.kube_controller_manager_runtime == "static-pod" else "static-pod"
        setting = ("kube_controller_manager_manifest" if s.kube_controller_manager_runtime == "static-pod"
                   else "kube_controller_manager_unit")
        return None, [error(f"{path} does not exist on this control-plane host", ControllerManagerError,
                            where=f"{host_name}: {setting}",
                            text=f"{host_name}: {setting}: {path} does not exist on this control-plane host; is the "
                                 f"control plane installed (kubeadm init)? If kube-controller-manager runs "
                                 f"differently, set {setting} or kube_controller_manager_runtime={other!r}")]
    merge = merge_manifest if s.kube_controller_manager_runtime == "static-pod" else merge_unit
    try:
        return merge(node.contents[path].decode(), desired_flags(s)), []
    except (ControllerManagerError, yaml.YAMLError) as problem:
        return None, [error(str(problem), ControllerManagerError, where=f"{host_name}: {path}")]


def findings(s: Settings, node: NodeState, host_name: str, created_by_kubeadm: bool = False) -> list[Finding]:
    """Errors: the config missing or not mergeable (``merged_config``); a warning: kube-controller-manager
    runs without podnet's node IPAM flags (a deploy merges them). Nothing while kubeadm writes the manifest
    in this run."""
    if created_by_kubeadm and config_path(s) not in node.contents:
        return []
    merged, found = merged_config(s, node, host_name)
    if merged is not None:
        found.append(warning("kube-controller-manager's node IPAM flags are not the settings'",
                             where=f"{host_name}: {config_path(s)}",
                             why="nodes get no podCIDR, or one outside flannel's Network",
                             fix="a deploy merges them (after a backup)"))
    return found


def planned_file(s: Settings, node: NodeState, host_name: str) -> tuple[DesiredFile | None, bytes]:
    """The rewritten config (None when already right) and its current content; ControllerManagerError
    for the errors of ``merged_config``."""
    merged, found = merged_config(s, node, host_name)
    refuse(found)
    current = node.contents[config_path(s)]
    if merged is None:
        return None, current
    return text_file(config_path(s), merged, mode=config_mode(s)), current


def merge_after_kubeadm(state, host, connector_arguments: dict, s: Settings, host_name: str) -> bool:
    """
    At execution time, right after kubeadm wrote the static pod manifest in this run
    (cluster_bootstrap): read it, merge the node IPAM flags, and replace it (after a backup)
    only when a flag differs. kubeadm was given the same flags, so usually nothing changes.
    """
    path = config_path(s)
    ok, output = host.run_shell_command(f"base64 -w0 {shlex.quote(path)}", **connector_arguments)
    try:
        current = base64.b64decode("".join(output.stdout_lines), validate=True).decode() if ok else None
    except ValueError:
        current = None
    if current is None:
        raise ControllerManagerError(f"{host_name}: {path}: not readable after kubeadm ran: "
                                     f"{ops.said(output.stderr_lines)}")
    try:
        merged = merge_manifest(current, desired_flags(s))
    except (ControllerManagerError, yaml.YAMLError) as error:
        raise ControllerManagerError(f"{host_name}: {path}: {error}") from None
    if merged is None:
        return True
    staged = ops.staged_path(path)
    steps = backup_commands(path, backup_path(path, current.encode()))
    ok, output = host.run_shell_command(" && ".join(steps), **connector_arguments)
    if ok:
        ok = host.put_file(io.BytesIO(merged.encode()), staged, **connector_arguments)
    if ok:  # activated as every staged file is: checked against its sha256 on the node first
        ok, output = host.run_shell_command(
            ops.install_script([text_file(path, merged, mode=config_mode(s))], owned=False, host_name=host_name),
            **connector_arguments)
    if not ok:
        raise ControllerManagerError(f"{host_name}: {path}: could not write the node IPAM flags: "
                                     f"{ops.said(output.stderr_lines)}")
    return True


def apply(s: Settings, node: NodeState, host_name: str, created_by_kubeadm: bool = False) -> bool:
    """
    Set the node IPAM flags; returns whether they changed in this run.
    ``created_by_kubeadm``: kubeadm writes this host's manifest in this run (cluster_bootstrap),
    so it cannot be read while planning; the merge then runs right after kubeadm, at execution time.
    """
    if created_by_kubeadm and config_path(s) not in node.contents:
        ops.python_step(name="kube-controller-manager: node IPAM flags in the manifest kubeadm wrote",
                        function=merge_after_kubeadm, args=(s, host_name),
                        reason=f"kubeadm writes {config_path(s)} in this run: merging the node IPAM flags after it")
        return True
    desired, current = planned_file(s, node, host_name)
    path = config_path(s)
    backup = backup_path(path, current)
    ops.shell_when(name="kube-controller-manager: keep a backup before changing flags",
                   commands=backup_commands(path, backup),
                   reason=f"backing up {path} to {backup}" if desired else None)
    unit = unit_name(s)
    ops.files_installed(name="kube-controller-manager: node IPAM flags", files=[desired] if desired else [],
                        current=node, restarts=unit if s.kube_controller_manager_runtime == "systemd" else None,
                        owned=False)  # podnet edits this file; its backup is BACKUP_DIR's
    if s.kube_controller_manager_runtime == "systemd":
        ops.service_running(name="kube-controller-manager: running with the new flags", unit=unit, current=node,
                            restart=desired is not None, daemon_reload=desired is not None)
    return desired is not None


def _runs_here(ctx: HostContext) -> bool:
    """Control-plane hosts, unless kube-controller-manager is managed elsewhere."""
    return ctx.settings.is_control_plane and ctx.settings.kube_controller_manager_runtime != "external"


def _apply(ctx: HostContext) -> None:
    ctx.ipam_changed = apply(ctx.settings, ctx.node, ctx.host_name, created_by_kubeadm=ctx.control_plane_created)


STEP = Step(
    "kube-controller-manager: node IPAM flags merged into its static pod manifest or systemd unit (control-plane "
    "hosts, after a backup)",
    applies=_runs_here,
    probe=lambda ctx: probe_request(ctx.settings),
    findings=lambda ctx: findings(ctx.settings, ctx.node, ctx.host_name, ctx.control_plane_created),
    apply=_apply,
)
