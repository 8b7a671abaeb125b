"""
containerd and runc from upstream release files, a systemd unit, and a config.toml
rendered for the installed generation, with the CRI plugin's `cni` section pointing at
the CNI bin and conf dirs.

The generation (config version, CNI keys) is a row of the compatibility table
(``config_generation`` in tasks/releases.py); the templates only lay the chosen values out.
Version 3 (containerd 2.0-2.2) and 4 (2.3) differ in nothing podnet writes, so one template
renders both with the row's version line.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pyinfra import logger

from tasks.engine import ops
from tasks.artifacts.catalog import install_entry, installed_files
from tasks.engine.context import HostContext, Step
from tasks.engine.desired import DesiredFile, local_file, render, text_file
from tasks.engine import ownership as owned
from tasks.engine.ownership import Ownership, OwnedFile, declared_digests, installed, unit_removal_commands
from tasks.engine.findings import WARNING, Finding, warning
from tasks.engine.probe import NodeState, ProbeRequest
from tasks.formats import shell
from tasks.releases import ConfigGeneration, config_generation, containerd_supports_kubernetes  # noqa: F401

if TYPE_CHECKING:
    from tasks.settings import Settings

BIN_DIR = install_entry("containerd")["bin/*"].rstrip("/")  # files/artifacts.yaml
RUNC_PATH = install_entry("runc")
UNIT = "containerd.service"
UNIT_PATH = "/etc/systemd/system/containerd.service"
CONFIG_PATH = "/etc/containerd/config.toml"
SOCKET = "/run/containerd/containerd.sock"


def render_config(settings: "Settings") -> str:
    generation = config_generation(settings.containerd_version)
    return render(
        generation.template,
        containerd_version=settings.containerd_version,
        config_version=generation.version,
        sandbox_image=settings.effective_sandbox_image,
        restrict_oom_score_adj=settings.restrict_oom_score_adj,
        systemd_cgroup=settings.systemd_cgroup,
        cni_bin_dir=settings.cni_bin_dir,
        cni_conf_dir=settings.cni_conf_dir,
        cni_bin_dirs_key=generation.cni_bin_dirs_key,
    )


def ownership(settings: "Settings") -> Ownership:
    """What containerd's concern owns on a node: the release's binaries (the members files/artifacts.yaml
    maps; the probe asks for containerd* and ctr), runc, the unit and config.toml; containerd.service."""
    return Ownership(
        "containerd",
        files=(*installed([install_entry("containerd")["bin/*"]], "archive containerd", ("containerd*", "ctr")),
               OwnedFile(RUNC_PATH, "release runc"),
               OwnedFile(UNIT_PATH, "template containerd/containerd.service.j2"),
               OwnedFile(CONFIG_PATH, f"template {config_generation(settings.containerd_version).template}")),
        units=(UNIT,))


def containerd_binaries(settings: "Settings", containerd_unpacked: Path, arch: str) -> list[DesiredFile]:
    """Every bin/* of the containerd release, into /usr/local/bin (files/artifacts.yaml's install)."""
    return [local_file(path, local) for path, local in installed_files(settings, "containerd", containerd_unpacked, arch)]


def runc_binary(runc_download: Path) -> DesiredFile:
    return local_file(RUNC_PATH, runc_download)


def unit_file() -> DesiredFile:
    return text_file(UNIT_PATH, render("containerd/containerd.service.j2", containerd_config_path=CONFIG_PATH))


def config_file(settings: "Settings") -> DesiredFile:
    return text_file(CONFIG_PATH, render_config(settings))


def probe_request(settings: "Settings") -> ProbeRequest:
    return ownership(settings).probe_request()


def findings(settings: "Settings", node: NodeState, host_name: str) -> list[Finding]:
    """Warnings: containerd_version outside the support window of kubernetes_version (``support_window``);
    containerd not running; its config.toml not the one podnet renders (so the CRI plugin may look for CNI
    plugins and configs elsewhere). The deploy puts the last two right."""
    found = support_window_findings(settings)
    if not node.unit_active(UNIT):
        found.append(warning(f"{UNIT} is not running", where=host_name,
                             why="the kubelet cannot start any pod on this host", fix="a deploy starts it"))
    if config_file(settings).differs(node.hashes.get(CONFIG_PATH)):
        found.append(warning(f"{CONFIG_PATH} is not the config podnet renders", where=host_name,
                             why=f"the CRI plugin's cni section may not point at {settings.cni_bin_dir} and "
                                 f"{settings.cni_conf_dir}", fix="a deploy writes it (checked by containerd first)"))
    return found


# What containerd logs (to stderr, exit status 0) for a key of the file it does not read, or for a config
# version it migrates: containerd 2.3.4 `config dump` logs level=warning msg="Ignoring unknown key in TOML"
# (key=... file=... row=...) for a top-level key, "Ignoring unknown key in TOML for plugin" (key="cni bin_dirz"
# plugin=...) for one inside a plugin's section, and "Configuration migrated from version 3, use `containerd
# config migrate` to avoid migration" (cmd/containerd/server/config/config.go).
REJECTED_LOG_RE = "unknown key|Configuration migrated"


def dump_values(settings: "Settings") -> list[tuple[str, str, str]]:
    """
    (table, key, value) that containerd's own view of podnet's config (`containerd config dump`) must
    hold, in the dump's terms with every quote removed: the sandbox image, the runc runtime with its
    SystemdCgroup, restrict_oom_score_adj and the CNI bin and conf dirs, at the places the generation
    of ``containerd_version`` reads them (config_generation).
    """
    generation = config_generation(settings.containerd_version)
    bin_dirs = f"[{settings.cni_bin_dir}]" if generation.cni_bin_dirs_key == "bin_dirs" else settings.cni_bin_dir
    if generation.version == 2:
        cri = "plugins.io.containerd.grpc.v1.cri"
        images, sandbox_key = cri, "sandbox_image"
    else:
        cri = "plugins.io.containerd.cri.v1.runtime"
        images, sandbox_key = "plugins.io.containerd.cri.v1.images.pinned_images", "sandbox"
    toml_bool = {True: "true", False: "false"}
    return [
        (images, sandbox_key, settings.effective_sandbox_image),
        (cri, "restrict_oom_score_adj", toml_bool[settings.restrict_oom_score_adj]),
        (f"{cri}.containerd", "default_runtime_name", "runc"),
        (f"{cri}.containerd.runtimes.runc", "runtime_type", "io.containerd.runc.v2"),
        (f"{cri}.containerd.runtimes.runc.options", "SystemdCgroup", toml_bool[settings.systemd_cgroup]),
        (f"{cri}.cni", generation.cni_bin_dirs_key, bin_dirs),
        (f"{cri}.cni", "conf_dir", settings.cni_conf_dir),
    ]


# `config dump` as "<table> <key> = <value>" lines, every quote removed: containerd 1.x writes
# [plugins."a.b".c] and "v", 2.x [plugins.'a.b'.c] and 'v'.
FLATTEN_AWK = ("/^[ \t]*\\[/ { t = $0; gsub(/[][ \t\"']/, \"\", t); next } "
                "/=/ { l = $0; sub(/^[ \t]+/, \"\", l); gsub(/[\"']/, \"\", l); print t \" \" l }")


def validate_command(settings: "Settings", containerd_binary: str = f"{BIN_DIR}/containerd") -> str:
    """
    The check a staged config.toml passes before it may replace the live one (``{path}`` is the staged
    file): containerd parses it itself (`containerd --config {path} config dump`), logs no unknown key
    and no version migration (REJECTED_LOG_RE), and its dump holds every value podnet set
    (``dump_values``). On failure it prints containerd's own lines, or the value missing from the dump,
    to stderr and exits non-zero. One command, run only when the config changes.
    """
    wanted = " ".join(shell.word(f"{table} {key} = {value}") for table, key, value in dump_values(settings))
    script = (
        't=$(mktemp) && '
        f'if ! {containerd_binary} --config "$1" config dump >"$t" 2>"$t.log"; then cat "$t.log" >&2; '
        'echo "podnet: containerd cannot read $1 (above)" >&2; rm -f "$t" "$t.log"; exit 1; fi; '
        f'if grep -E {shell.word(REJECTED_LOG_RE)} "$t.log" >&2; then '
        'echo "podnet: containerd does not read every key podnet wrote in $1 as written (its log above)" >&2; '
        'rm -f "$t" "$t.log"; exit 1; fi; '
        f'awk {shell.word(FLATTEN_AWK)} "$t" >"$t.flat"; m=0; shift; '
        'for want in "$@"; do grep -Fxq -- "$want" "$t.flat" || '
        '{ echo "podnet: $0: containerd (config dump) does not hold: $want" >&2; m=1; }; done; '
        'rm -f "$t" "$t.log" "$t.flat"; exit $m'
    )
    # $0 is the staged file for the messages; "$1" again (shifted away) for containerd.
    command = f"sh -c {shell.word(script)} {{path}} {{path}} {wanted}"
    return command.replace("{", "{{").replace("}", "}}").replace("{{path}}", "{path}")


def apply(settings: "Settings", node: NodeState, binaries: list[DesiredFile], runc: DesiredFile) -> None:
    """
    Install runc and containerd; restart containerd only when what the daemon runs
    changed: the content of its own binary, its unit or its config. A new runc, ctr or
    shim is picked up by the next container or command without a restart, and a mode
    repair changes nothing the running daemon uses.
    """
    unit = unit_file()
    config = config_file(settings)
    daemon = [f for f in binaries if f.path == f"{BIN_DIR}/containerd"]
    content_changed = [f for f in [*daemon, unit, config] if f.differs(node.hashes.get(f.path))]
    ops.files_installed(name="containerd: runc binary", files=[runc], current=node)
    restarts = UNIT if content_changed else None
    ops.files_installed(name="containerd: containerd binaries", files=binaries, current=node, restarts=restarts)
    ops.files_installed(name="containerd: systemd unit", files=[unit], current=node, restarts=restarts)
    ops.files_installed(name="containerd: config.toml (checked by containerd first)", files=[config],
                        current=node, validate=validate_command(settings), restarts=restarts)
    ops.service_running(name="containerd: enabled and running", unit=UNIT, current=node,
                        restart=bool(content_changed), daemon_reload=unit in ops.files_needing_change([unit], node))


_said: set[tuple[str, str]] = set()


def support_window(settings: "Settings") -> str | None:
    """
    The warning for a containerd release that does not support ``kubernetes_version`` (the cluster's
    release: CONTAINERD_KUBERNETES in tasks/releases.py), else None. With cluster_bootstrap the settings
    refuse the combination instead (podnet would install that kubelet); without it podnet installs
    only containerd and warns, once per run and combination, before anything changes.
    """
    row = containerd_supports_kubernetes(settings.containerd_version, settings.kubernetes_version)
    if row is None:
        return None
    return (f"podnet: containerd_version {settings.containerd_version} is outside the support window of "
            f"kubernetes_version {settings.kubernetes_version}: containerd {row.releases} supports Kubernetes up to "
            f"{row.value} ({row.source}); move to a containerd release listed there for your Kubernetes release, "
            "or set kubernetes_version to your cluster's release if it is older")


def support_window_findings(settings: "Settings") -> list[Finding]:
    """``support_window`` as a warning-level finding (none inside the window)."""
    said = support_window(settings)
    return [] if said is None else [Finding(WARNING, "outside the support window", text=said)]


def say_support_window(settings: "Settings") -> None:
    """Say ``support_window``'s warning once per run and combination of releases."""
    key = (settings.containerd_version, settings.kubernetes_version)
    if key not in _said:
        _said.add(key)
        for finding in support_window_findings(settings):
            logger.warning(finding.message)


def _apply(ctx: HostContext) -> None:
    apply(ctx.settings, ctx.node, containerd_binaries(ctx.settings, ctx.unpacked("containerd"), ctx.arch),
          runc_binary(ctx.file("runc")))


STEP = Step(
    "containerd: runc and containerd, its unit, and config.toml with the CRI plugin's cni section; restarted only "
    "when what the daemon runs changed",
    probe=lambda ctx: probe_request(ctx.settings),
    findings=lambda ctx: findings(ctx.settings, ctx.node, ctx.host_name),
    artifacts=lambda ctx: ("containerd", "runc"),
    check=lambda ctx: say_support_window(ctx.settings),
    apply=_apply,
)


# --- reset (with reset_containerd) ---------------------------------------------------------


def removed(settings: "Settings", node: NodeState, binaries: list[DesiredFile], runc: DesiredFile) -> None:
    """containerd stopped and disabled when its unit is podnet's; what podnet installed for it removed,
    the originals it replaced put back (and restarted with, if it runs)."""
    declaration = ownership(settings)
    files = owned.removal(node, declared_digests([*binaries, runc, unit_file(), config_file(settings)]),
                          members=tuple(f for f in declaration.files if f.is_members))
    ops.foreign_left(files)
    running = node.unit_active(UNIT) or node.unit_enabled(UNIT)
    commands = unit_removal_commands(UNIT, UNIT_PATH, files, running)
    ops.shell_when(name="reset: containerd stopped and removed (reset_containerd)", commands=commands,
                   reason=(f"stopping {UNIT} and removing {len(files.removed)} file(s)"
                           + (f", putting back {len(files.restored)} original(s)" if files.restored else ""))
                   if commands else None)


RESET = Step(
    "reset: containerd",
    applies=lambda ctx: ctx.settings.reset_containerd,
    probe=lambda ctx: owned.probe_request([ownership(ctx.settings)]).merge(ProbeRequest(units=[UNIT])),
    artifacts=lambda ctx: ("containerd", "runc"),
    apply=lambda ctx: removed(ctx.settings, ctx.node,
                              containerd_binaries(ctx.settings, ctx.unpacked("containerd"), ctx.arch),
                              runc_binary(ctx.file("runc"))),
)
