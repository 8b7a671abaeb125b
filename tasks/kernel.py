"""
Kernel prerequisites: overlay and br_netfilter loaded, bridged traffic through iptables,
IP forwarding on; applied now and persisted across reboots.

Persisted so that podnet's values are the ones a node has after it boots. systemd-sysctl
(at boot) and procps' ``sysctl --system`` read every ``*.conf`` of the sysctl.d directories
(``tasks.engine.probe.SYSCTL_DIRS``; a name in an earlier directory hides the same name in later
ones) sorted by file name, whatever the directory, and the file read last sets a key. So
podnet's file is named to sort after the others, Debian's ``99-sysctl.conf`` (its link to
/etc/sysctl.conf) included. procps also reads /etc/sysctl.conf after every sysctl.d file,
and a file named to sort after podnet's still wins: the probe reads every sysctl file on
the node, and each one that sets a podnet parameter to another value is reported, naming
the file, the key and both values.

Both IP families: IPv4 forwarding always, IPv6 forwarding (net.ipv6.conf.all.forwarding) on
dual stack, bridged traffic of both through iptables and ip6tables. A parameter that must change
but cannot is refused while planning, before any host changes, with the reason: one that does not
exist (IPv6 switched off in the kernel, ipv6.disable=1), or one the node cannot write (/proc/sys
read-only, as in a container whose network namespace its host configures).
"""

from __future__ import annotations

import posixpath
import shlex
from dataclasses import dataclass

from pyinfra import host

from tasks.engine import ops
from tasks.engine.context import HostContext, Step
from tasks.engine.findings import Finding, error, refuse, say, warning
from tasks.errors import PodnetError
from tasks.engine.desired import DesiredFile, render, text_file
from tasks.engine import ownership as owned
from tasks.engine.ownership import Ownership, OwnedFile, declared_digests
from tasks.engine.probe import SYSCTL_CONF, SYSCTL_DIRS, NodeState, ProbeRequest, sysctl_path
from tasks.settings import Settings

MODULES_LOAD_PATH = "/etc/modules-load.d/podnet.conf"
# "zz-" sorts after digits, upper-case letters and the usual lower-case names in byte order
# (strcmp, as both systemd-sysctl and procps sort), so after 99-sysctl.conf.
SYSCTL_PATH = "/etc/sysctl.d/zz-podnet.conf"
# Where earlier podnet releases persisted the same values (it sorts before 99-sysctl.conf):
# removed once SYSCTL_PATH is in place.
OLD_SYSCTL_PATHS = ("/etc/sysctl.d/99-podnet.conf",)
# Names of one kernel switch: writing either sets both (net.ipv4.ip_forward is conf/all/forwarding).
KEY_ALIASES = {"net.ipv4.conf.all.forwarding": "net.ipv4.ip_forward"}
# Where packages install sysctl files (a file of the same name in /etc/sysctl.d overrides them).
VENDOR_SYSCTL_DIRS = ("/usr/lib/sysctl.d/", "/lib/sysctl.d/")

# Module -> shell test that succeeds when its feature is present. A module can be built
# into the kernel (no /sys/module entry), so we test for what it provides.
MODULE_FEATURES = {
    "overlay": "grep -qw overlay /proc/filesystems",
    "br_netfilter": "[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]",
}


class KernelParameterError(PodnetError, RuntimeError):
    """A kernel parameter pod networking needs that this node cannot be given (absent, or read-only)."""


def writable_feature(key: str) -> str:
    """The probe's feature telling whether the node can write this parameter."""
    return f"sysctl-writable:{key}"


def parameters(settings: Settings) -> dict[str, str]:
    """The sysctls pod networking needs: for IPv4 always, for IPv6 on dual stack (pod traffic of each
    family is routed between cni0 and flanneld's device of that family)."""
    values = {
        "net.bridge.bridge-nf-call-iptables": "1",
        "net.bridge.bridge-nf-call-ip6tables": "1",
        "net.ipv4.ip_forward": "1",
    }
    if settings.dual_stack:
        values["net.ipv6.conf.all.forwarding"] = "1"
    return values


def desired_files(settings: Settings) -> list[DesiredFile]:
    return [
        text_file(MODULES_LOAD_PATH, render("kernel/modules-load.conf.j2", modules=list(MODULE_FEATURES))),
        text_file(SYSCTL_PATH, render("kernel/sysctl.conf.j2", sysctls=parameters(settings))),
    ]


def ownership(settings: Settings) -> Ownership:
    """What the kernel concern owns on a node: its modules-load.d and sysctl.d files (and the
    sysctl.d file earlier releases wrote). The values it sets at runtime are the kernel's."""
    return Ownership("kernel", files=(OwnedFile(MODULES_LOAD_PATH, "template kernel/modules-load.conf.j2"),
                                      OwnedFile(SYSCTL_PATH, "template kernel/sysctl.conf.j2")),
                     retired=OLD_SYSCTL_PATHS)


def probe_request(settings: Settings) -> ProbeRequest:
    # [ -w ] is access(2): it fails on a read-only /proc/sys even for root (EROFS)
    writable = {writable_feature(key): f"[ -w {shlex.quote(sysctl_path(key))} ]" for key in parameters(settings)}
    return ownership(settings).probe_request().merge(ProbeRequest(
        features={**MODULE_FEATURES, **writable}, sysctls=list(parameters(settings)),
        sysctl_config=list(parameters(settings))))


def unsettable_findings(settings: Settings, node: NodeState, host_name: str) -> list[Finding]:
    """
    Errors (KernelParameterError) for a parameter that has to change and cannot: absent although it
    is no module's to make (net.bridge.* appear when br_netfilter loads: podnet loads it first), which
    for net.ipv6.* means IPv6 is switched off in this node's kernel (ipv6.disable=1); or read-only
    (the probe's ``[ -w ]``: /proc/sys mounted read-only, a container whose sysctls its host sets).
    """
    found = []
    for key, value in parameters(settings).items():
        current = node.sysctls.get(key, "")
        if current == value:
            continue
        if current is None and not key.startswith("net.bridge."):
            why = ("IPv6 is switched off in this node's kernel (booted with ipv6.disable=1), and dual stack "
                   "(cluster_cidr_ipv6) routes IPv6 pod traffic" if key.startswith("net.ipv6.") else
                   "this node's kernel has no such parameter")
            found.append(error(f"{key} does not exist", KernelParameterError, where=host_name, why=why,
                               fix="boot the node with IPv6 on, or unset cluster_cidr_ipv6" if key.startswith(
                                   "net.ipv6.") else "use a kernel with IP forwarding"))
        elif current is not None and node.features.get(writable_feature(key)) is False:
            found.append(error(f"{key} is {current}, podnet needs {value}, and this node cannot change it",
                               KernelParameterError, where=host_name,
                               why=f"{sysctl_path(key)} is read-only here (a container whose network namespace's "
                                   "sysctls the host that runs it sets)",
                               fix=f"set {key} = {value} for this node from the host that runs it, then run again"))
    return found


# --- what the node's sysctl files set ------------------------------------------------------


def normalize_key(key: str) -> str:
    """A sysctl name in dotted form. As sysctl.d(5) reads names: when the first separator is a
    slash, slashes separate and dots are part of a name (net/ipv4/conf/eth0.200/forwarding is
    net.ipv4.conf.eth0/200.forwarding)."""
    slash, dot = key.find("/"), key.find(".")
    if slash != -1 and (dot == -1 or slash < dot):
        return key.translate(str.maketrans("/.", "./"))
    return key


def parse_setting(line: str) -> tuple[str, str] | None:
    """(key, value) of a sysctl file line that sets a key; None for comments, globs and
    exclusions. A glob never overrides a key set explicitly elsewhere (systemd-sysctl and
    procps alike), so it cannot undo podnet's values."""
    text = line.strip()
    if not text or text[0] in "#;" or "=" not in text:
        return None
    key, _, value = text.partition("=")
    key = normalize_key(key.strip().removeprefix("-").strip())
    if not key or any(c in key for c in "*?["):
        return None
    return key, " ".join(value.split())


def file_settings(node: NodeState, path: str) -> dict[str, str]:
    """What one file sets (the last assignment of a key in it counts)."""
    values: dict[str, str] = {}
    for line in node.sysctl_lines.get(path, []):
        parsed = parse_setting(line)
        if parsed:
            values[parsed[0]] = parsed[1]
    return values


def boot_order(files: list[str]) -> list[str]:
    """The sysctl.d files applied at boot (and by `sysctl --system` before /etc/sysctl.conf),
    first to last: for each file name the one in the first of SYSCTL_DIRS that has it, sorted
    by file name whatever its directory. For a key, the last file setting it wins."""
    chosen: dict[str, str] = {}
    for directory in SYSCTL_DIRS:
        for path in files:
            parent, name = posixpath.split(path)
            if parent == directory and name.endswith(".conf"):
                chosen.setdefault(name, path)
    return [chosen[name] for name in sorted(chosen)]


@dataclass(frozen=True)
class Conflict:
    """A sysctl file on the node that sets a podnet parameter to another value."""

    file: str  # the file to edit (a link's target)
    key: str  # as the file names it
    value: str
    param: str  # podnet's parameter it sets (key, or the name podnet uses for the same switch)
    wanted: str
    read_at_boot_as: str | None  # the sysctl.d name systemd-sysctl reads it by; None: not read at boot
    wins_at_boot: bool  # read after podnet's file at boot: its value is the one after a reboot
    read_last_by_procps: bool  # /etc/sysctl.conf: `sysctl --system` reads it after every sysctl.d file

    def parts(self) -> tuple[str, str, str]:
        """(what, why it matters, the fix)."""
        read = "it is read" if self.read_at_boot_as in (None, self.file) else f"it is read as {self.read_at_boot_as},"
        parts = []
        if self.wins_at_boot:
            parts.append(f"at boot {read} after {SYSCTL_PATH}, so {self.param} is {self.value} after every reboot "
                         "until podnet runs again")
        elif self.read_at_boot_as is not None:
            parts.append(f"at boot {read} before {SYSCTL_PATH}, so podnet's {self.wanted} wins")
        if self.read_last_by_procps:
            parts.append(f"`sysctl --system` (procps) reads {SYSCTL_CONF} after every sysctl.d file "
                         f"and would set {self.value}")
        if self.read_at_boot_as and self.read_at_boot_as.startswith(VENDOR_SYSCTL_DIRS):
            fix = ("it belongs to a package: override it with a file of the same name in /etc/sysctl.d "
                   "(a copy without that line)")
        else:
            fix = f"set it to {self.wanted} there or remove that line"
        same = "" if self.key == self.param else f" (the same switch as {self.param})"
        return f"{self.file} sets {self.key} = {self.value}{same}, podnet needs {self.wanted}", "; ".join(parts), fix

    def message(self) -> str:
        what, why, fix = self.parts()
        return f"{what}: {why}; {fix}"

    def finding(self, host_name: str) -> Finding:
        what, why, fix = self.parts()
        return warning(what, where=host_name, why=why, fix=fix)


def sysctl_conflicts(wanted: dict[str, str], node: NodeState) -> list[Conflict]:
    """Every sysctl file the node reads that sets a key of ``wanted`` (or another name of it,
    KEY_ALIASES) to another value, as the files will be after this run (podnet's in place, the
    old one gone)."""
    targets = {path: target or path for path, target in node.sysctl_files.items() if path not in OLD_SYSCTL_PATHS}
    targets[SYSCTL_PATH] = SYSCTL_PATH
    order = boot_order(list(targets))
    ours = order.index(SYSCTL_PATH)
    found: dict[tuple[str, str], dict] = {}  # (file, key) -> Conflict fields

    def note(path: str, **how: str | bool) -> None:
        for key, value in file_settings(node, path).items():
            param = KEY_ALIASES.get(key, key)
            if param in wanted and value != wanted[param]:
                entry = found.setdefault((targets[path], key), {
                    "file": targets[path], "key": key, "value": value, "param": param, "wanted": wanted[param],
                    "read_at_boot_as": None, "wins_at_boot": False, "read_last_by_procps": False})
                entry.update({field: given for field, given in how.items() if given})

    for position, path in enumerate(order):
        if path != SYSCTL_PATH:
            note(path, read_at_boot_as=path, wins_at_boot=position > ours)
    if SYSCTL_CONF in targets and targets[SYSCTL_CONF] != "/dev/null":
        note(SYSCTL_CONF, read_last_by_procps=True)
    return [Conflict(**found[k]) for k in sorted(found)]


def findings(settings: Settings, node: NodeState, host_name: str) -> list[Finding]:
    """
    Warnings: every sysctl file that sets a podnet parameter to another value (``sysctl_conflicts``);
    with podnet's sysctl file as it should be, every parameter whose live value differs although no
    file explains it (something set it after boot).
    """
    values = parameters(settings)
    conflicts = sysctl_conflicts(values, node)
    found = unsettable_findings(settings, node, host_name) + [conflict.finding(host_name) for conflict in conflicts]
    explained = {c.param for c in conflicts if c.wins_at_boot}
    if not ops.files_needing_change([f for f in desired_files(settings) if f.path == SYSCTL_PATH], node):
        for key, value in values.items():
            current = node.sysctls.get(key)
            if current is not None and current != value and key not in explained:
                found.append(warning(f"{key} is {current} although {SYSCTL_PATH} persists {value}", where=host_name,
                                     why="something set it after boot (a script, a network manager, sysctl -w)",
                                     fix=f"setting {value} again"))
    return found


# --- the step ----------------------------------------------------------------------------


def apply(settings: Settings, node: NodeState) -> None:
    """Persist and apply the kernel prerequisites."""
    files = desired_files(settings)
    values = parameters(settings)
    found = findings(settings, node, host.name)
    ops.files_installed(name="kernel: modules-load.d and sysctl.d files", files=files, current=node)
    old = [path for path in OLD_SYSCTL_PATHS if path in node.sysctl_files]
    ops.shell_when(
        name="kernel: sysctl.d file of earlier podnet releases removed",
        commands=["rm -f " + " ".join(shlex.quote(path) for path in old)],
        reason=(f"removing {', '.join(old)}: podnet's kernel parameters are persisted in {SYSCTL_PATH} now, "
                "which is read after /etc/sysctl.d/99-sysctl.conf at boot") if old else None,
    )
    say(found)
    ops.kernel_modules_loaded(name="kernel: overlay and br_netfilter loaded",
                              missing=[m for m in MODULE_FEATURES if not node.features.get(m)])
    ops.kernel_parameters_applied(name="kernel: bridge-nf-call and ip_forward applied",
                                  values=values, current=node)


STEP = Step(
    "kernel: overlay and br_netfilter loaded, bridge-nf-call and ip_forward on, now and persisted in a sysctl.d file "
    "read last; other sysctl files setting them otherwise reported",
    probe=lambda ctx: probe_request(ctx.settings),
    findings=lambda ctx: findings(ctx.settings, ctx.node, ctx.host_name),
    check=lambda ctx: refuse(unsettable_findings(ctx.settings, ctx.node, ctx.host_name)),
    apply=lambda ctx: apply(ctx.settings, ctx.node),
)


# --- reset (with reset_kernel) -------------------------------------------------------------


def reset_probe_request(settings: Settings) -> ProbeRequest:
    declaration = ownership(settings)
    return owned.probe_request([declaration]).merge(ProbeRequest(hashes=list(declaration.retired)))


def files_removed(settings: Settings, node: NodeState) -> None:
    """podnet's modules-load.d and sysctl.d files off the node when they hold what podnet wrote (and the
    file an earlier release wrote under podnet's name); values already set stay until the next boot."""
    ops.owned_files_removed("reset: podnet's kernel settings files removed (reset_kernel)",
                            owned.removal(node, declared_digests(desired_files(settings)),
                                          retired=ownership(settings).retired),
                            "podnet's modules-load.d and sysctl.d files")


RESET = Step(
    "reset: kernel settings files",
    applies=lambda ctx: ctx.settings.reset_kernel,
    probe=lambda ctx: reset_probe_request(ctx.settings),
    apply=lambda ctx: files_removed(ctx.settings, ctx.node),
)
