"""
containerd and runc from upstream release files, a systemd unit, and a config.toml
rendered for the installed generation, with the CRI plugin's `cni` section pointing at
the CNI bin and conf dirs.

The generation decision lives here, in Python, where it is unit-tested; the templates
only lay the chosen values out.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tasks.engine import ops
from tasks.artifacts.catalog import install_entry, installed_files
from tasks.engine.context import HostContext, Step
from tasks.engine.desired import DesiredFile, local_file, render, text_file
from tasks.engine import ownership as owned
from tasks.engine.ownership import Ownership, OwnedFile, declared_digests, installed, unit_removal_commands
from tasks.engine.probe import NodeState, ProbeRequest
from tasks.releases import ConfigGeneration, config_generation  # noqa: F401 (part of this concern's face)

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
        sandbox_image=settings.sandbox_image,
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


def validate_command(containerd_binary: str = f"{BIN_DIR}/containerd") -> str:
    """containerd parses a staged config itself before it may replace the live one."""
    return f"{containerd_binary} --config {{path}} config dump >/dev/null"


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
                        current=node, validate=validate_command(), restarts=restarts)
    ops.service_running(name="containerd: enabled and running", unit=UNIT, current=node,
                        restart=bool(content_changed), daemon_reload=unit in ops.files_needing_change([unit], node))


def _apply(ctx: HostContext) -> None:
    apply(ctx.settings, ctx.node, containerd_binaries(ctx.settings, ctx.unpacked("containerd"), ctx.arch),
          runc_binary(ctx.file("runc")))


STEP = Step(
    "containerd: runtime with the CRI plugin's cni section",
    probe=lambda ctx: probe_request(ctx.settings),
    artifacts=lambda ctx: ("containerd", "runc"),
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
