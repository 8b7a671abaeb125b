"""
CNI: the containernetworking plugins and flannel's plugin in the CNI bin dir, and
10-flannel.conflist in the conf dir, first in sort order (containerd loads only the first).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from tasks.engine import ops
from tasks.engine.context import HostContext, Step
from tasks.engine.desired import DesiredFile, local_file, render, text_file
from tasks.artifacts.catalog import installed_files, node_directories
from tasks.engine import ownership as owned
from tasks.engine.ownership import Ownership, OwnedFile, declared_digests, installed
from tasks.errors import PodnetError
from tasks.pod_network import BRIDGE
from tasks.engine.probe import NodeState, ProbeRequest
from tasks.settings import Settings

CONFLIST_NAME = "10-flannel.conflist"
NETWORK_NAME = "cbr0"  # host-local records pod IPs under /var/lib/cni/networks/<name>
CONFIG_EXTENSIONS = (".conf", ".conflist", ".json")  # what libcni loads from the conf dir
MOVED_ASIDE_SUFFIX = ".podnet-disabled"
HOST_LOCAL_RECORDS = f"/var/lib/cni/networks/{NETWORK_NAME}"


class CniError(PodnetError, ValueError):
    """A CNI configuration that would not work on the node."""


def delegate(settings: Settings) -> dict:
    """What flannel's plugin hands to `bridge`; it fills in the subnet from subnet.env."""
    fields: dict = {"hairpinMode": True, "isDefaultGateway": True}
    if settings.flannel_mtu is not None:
        fields["mtu"] = settings.flannel_mtu
    return fields


def render_conflist(settings: Settings) -> str:
    return render("cni/10-flannel.conflist.j2", network_name=NETWORK_NAME, cni_version=settings.conflist_cni_version,
                  delegate=delegate(settings))


def plugin_types(conflist: str) -> list[str]:
    return [plugin["type"] for plugin in json.loads(conflist)["plugins"]]


def ownership(settings: Settings) -> Ownership:
    """What the CNI concern owns on a node: the plugins of both releases (members mapped by
    files/artifacts.yaml; the release's names, or the node's ledger, say which), 10-flannel.conflist,
    the bridge its delegate makes and host-local's records of its network. Configs it moved aside
    (*.podnet-disabled) are the operator's and go back on a reset."""
    return Ownership(
        "cni",
        files=(*installed(node_directories(settings, "cni_plugins"), "archive cni_plugins"),
               *installed(node_directories(settings, "flannel_cni_plugin"), "archive flannel_cni_plugin"),
               OwnedFile(f"{settings.cni_conf_dir}/{CONFLIST_NAME}", "template cni/10-flannel.conflist.j2")),
        interfaces=(BRIDGE,), runtime_dirs=(HOST_LOCAL_RECORDS,))


def plugin_binaries(settings: Settings, plugins_unpacked: Path, flannel_unpacked: Path,
                    arch: str) -> list[DesiredFile]:
    """Every plugin of the release tarball, plus flannel's as `flannel`, into the CNI bin dir
    (files/artifacts.yaml's install of cni_plugins and flannel_cni_plugin)."""
    return [local_file(path, local) for name, unpacked in (("cni_plugins", plugins_unpacked),
                                                           ("flannel_cni_plugin", flannel_unpacked))
            for path, local in installed_files(settings, name, unpacked, arch)]


def conflist_file(settings: Settings) -> DesiredFile:
    return text_file(f"{settings.cni_conf_dir}/{CONFLIST_NAME}", render_conflist(settings))


def check_plugins_present(conflist: DesiredFile, binaries: list[DesiredFile]) -> None:
    """Every plugin `type` the conflist names must be a binary we install."""
    installed = {Path(f.path).name for f in binaries}
    missing = [t for t in plugin_types(conflist.content.decode()) if t not in installed]  # type: ignore[union-attr]
    if missing:
        raise CniError(f"{conflist.path} names plugin(s) {', '.join(missing)} that the CNI plugin releases "
                       f"do not provide (installed: {', '.join(sorted(installed))}); "
                       "check cni_plugins_version and flannel_cni_plugin_version")


def configs_ahead(entries: list[str]) -> list[str]:
    """Config files that libcni would load before ours."""
    return sorted(e for e in entries if e.endswith(CONFIG_EXTENSIONS) and e < CONFLIST_NAME)


def probe_request(settings: Settings) -> ProbeRequest:
    return ownership(settings).probe_request().merge(ProbeRequest(listings=[settings.cni_conf_dir]))


def apply(settings: Settings, node: NodeState, binaries: list[DesiredFile]) -> None:
    conflist = conflist_file(settings)
    check_plugins_present(conflist, binaries)
    ops.files_installed(name="cni: plugin binaries", files=binaries, current=node)
    ops.files_installed(name=f"cni: {CONFLIST_NAME}", files=[conflist], current=node)
    ahead = configs_ahead(node.listings.get(settings.cni_conf_dir, []))
    conf_dir = settings.cni_conf_dir
    ops.shell_when(
        name="cni: no other config sorts ahead of ours",
        commands=[f"mv -f {shlex.quote(f'{conf_dir}/{name}')} {shlex.quote(f'{conf_dir}/{name}{MOVED_ASIDE_SUFFIX}')}"
                  for name in ahead],
        reason=(f"moving aside {', '.join(ahead)} (renamed to *{MOVED_ASIDE_SUFFIX}): containerd loads only "
                f"the first config in {conf_dir}") if ahead else None,
    )


def binaries(ctx: HostContext) -> list[DesiredFile]:
    """The plugins this run installs; ArtifactError naming the archive when flannel's has no ``flannel-<arch>``."""
    return plugin_binaries(ctx.settings, ctx.unpacked("cni_plugins"), ctx.unpacked("flannel_cni_plugin"), ctx.arch)


def _apply(ctx: HostContext) -> None:
    apply(ctx.settings, ctx.node, binaries(ctx))


STEP = Step(
    "cni: plugins and 10-flannel.conflist",
    probe=lambda ctx: probe_request(ctx.settings),
    artifacts=lambda ctx: ("cni_plugins", "flannel_cni_plugin"),
    check=binaries,
    apply=_apply,
)


# --- reset -------------------------------------------------------------------------------


def reset_probe_request(settings: Settings) -> ProbeRequest:
    """What a reset of this concern decides from: the declared files, the node's record of what podnet
    installed and kept, the conf dir's entries (configs moved aside)."""
    return owned.probe_request([ownership(settings)], listings=(settings.cni_conf_dir,))


def moved_aside_restored(settings: Settings, node: NodeState) -> None:
    """Ensure the configs podnet moved aside (``*.podnet-disabled``) are back under their names, where
    no file of that name has appeared since."""
    entries = node.listings.get(settings.cni_conf_dir, [])
    back = [name[:-len(MOVED_ASIDE_SUFFIX)] for name in entries
            if name.endswith(MOVED_ASIDE_SUFFIX) and name[:-len(MOVED_ASIDE_SUFFIX)] not in entries]
    conf_dir = settings.cni_conf_dir
    ops.shell_when(
        name="reset: CNI configs podnet moved aside put back",
        commands=[f"mv {shlex.quote(f'{conf_dir}/{name}{MOVED_ASIDE_SUFFIX}')} {shlex.quote(f'{conf_dir}/{name}')}"
                  for name in back],
        reason=f"putting back {', '.join(back)} (podnet had renamed them to *{MOVED_ASIDE_SUFFIX})" if back else None)


def conflist_removed(settings: Settings, node: NodeState) -> None:
    """10-flannel.conflist off the node when it is podnet's; the configs podnet moved aside back."""
    conflist = conflist_file(settings)
    ops.owned_files_removed("reset: 10-flannel.conflist removed", owned.removal(node, declared_digests([conflist])),
                            "the CNI config (no new pod gets podnet's network)")
    moved_aside_restored(settings, node)


def plugins_removed(settings: Settings, node: NodeState, plugins: list[DesiredFile]) -> None:
    """The plugins podnet installed off the node (named by the node's ledger, or this release's
    archives), the originals it replaced put back; every other plugin stays byte for byte."""
    members = tuple(f for f in ownership(settings).files if f.source.startswith("archive "))
    ops.owned_files_removed("reset: CNI plugin binaries removed",
                            owned.removal(node, declared_digests(plugins), members=members),
                            "the CNI plugins podnet installed")


RESET_CONFLIST = Step(
    "reset: 10-flannel.conflist",
    probe=lambda ctx: reset_probe_request(ctx.settings),
    apply=lambda ctx: conflist_removed(ctx.settings, ctx.node),
)

RESET_PLUGINS = Step(
    "reset: CNI plugins",
    probe=lambda ctx: reset_probe_request(ctx.settings),
    artifacts=lambda ctx: ("cni_plugins", "flannel_cni_plugin"),
    apply=lambda ctx: plugins_removed(ctx.settings, ctx.node, binaries(ctx)),
)
