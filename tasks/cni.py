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
from tasks.artifacts.catalog import ArtifactError
from tasks.errors import PodnetError
from tasks.engine.probe import NodeState, ProbeRequest
from tasks.settings import Settings

CONFLIST_NAME = "10-flannel.conflist"
NETWORK_NAME = "cbr0"  # host-local records pod IPs under /var/lib/cni/networks/<name>
CNI_VERSION = "1.0.0"
CONFIG_EXTENSIONS = (".conf", ".conflist", ".json")  # what libcni loads from the conf dir
MOVED_ASIDE_SUFFIX = ".podnet-disabled"
NOT_PLUGINS = {"LICENSE", "README.md"}


class CniError(PodnetError, ValueError):
    """A CNI configuration that would not work on the node."""


def delegate(settings: Settings) -> dict:
    """What flannel's plugin hands to `bridge`; it fills in the subnet from subnet.env."""
    fields: dict = {"hairpinMode": True, "isDefaultGateway": True}
    if settings.flannel_mtu is not None:
        fields["mtu"] = settings.flannel_mtu
    return fields


def render_conflist(settings: Settings) -> str:
    return render("cni/10-flannel.conflist.j2", network_name=NETWORK_NAME, cni_version=CNI_VERSION,
                  delegate=delegate(settings))


def plugin_types(conflist: str) -> list[str]:
    return [plugin["type"] for plugin in json.loads(conflist)["plugins"]]


def plugin_binaries(settings: Settings, plugins_unpacked: Path, flannel_binary: Path) -> list[DesiredFile]:
    """Every plugin of the release tarball, plus flannel's as `flannel`, into the CNI bin dir."""
    files = [local_file(f"{settings.cni_bin_dir}/{path.name}", path)
             for path in sorted(plugins_unpacked.iterdir()) if path.is_file() and path.name not in NOT_PLUGINS]
    files.append(local_file(f"{settings.cni_bin_dir}/flannel", flannel_binary))
    return files


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
    return ProbeRequest(hashes=[f"{settings.cni_bin_dir}/*"], texts=[f"{settings.cni_conf_dir}/{CONFLIST_NAME}"],
                        listings=[settings.cni_conf_dir])


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


def flannel_binary(ctx: HostContext) -> Path:
    """flannel's CNI plugin from its release archive (``flannel-<arch>``); ArtifactError naming the archive
    when it has no such member."""
    binary = ctx.unpacked("flannel_cni_plugin") / f"flannel-{ctx.arch}"
    if not binary.is_file():
        raise ArtifactError(f"{ctx.settings.mirror_url or 'the'} flannel_cni_plugin "
                            f"{ctx.settings.flannel_cni_plugin_version} archive has no member flannel-{ctx.arch}")
    return binary


def _apply(ctx: HostContext) -> None:
    apply(ctx.settings, ctx.node, plugin_binaries(ctx.settings, ctx.unpacked("cni_plugins"), flannel_binary(ctx)))


STEP = Step(
    "cni: plugins and 10-flannel.conflist",
    probe=lambda ctx: probe_request(ctx.settings),
    artifacts=lambda ctx: ("cni_plugins", "flannel_cni_plugin"),
    check=flannel_binary,
    apply=_apply,
)
