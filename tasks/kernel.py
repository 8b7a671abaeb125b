"""
Kernel prerequisites: overlay and br_netfilter loaded, bridged traffic through iptables,
IP forwarding on; applied now and persisted across reboots.
"""

from __future__ import annotations

from tasks import ops
from tasks.desired import DesiredFile, render, text_file
from tasks.probe import NodeState, ProbeRequest
from tasks.settings import Settings

MODULES_LOAD_PATH = "/etc/modules-load.d/podnet.conf"
SYSCTL_PATH = "/etc/sysctl.d/99-podnet.conf"

# Module -> shell test that succeeds when its feature is present. A module can be built
# into the kernel (no /sys/module entry), so we test for what it provides.
MODULE_FEATURES = {
    "overlay": "grep -qw overlay /proc/filesystems",
    "br_netfilter": "[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]",
}


def parameters(settings: Settings) -> dict[str, str]:
    """The sysctls pod networking needs."""
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


def probe_request(settings: Settings) -> ProbeRequest:
    return ProbeRequest(hashes=[MODULES_LOAD_PATH, SYSCTL_PATH], features=dict(MODULE_FEATURES),
                        sysctls=list(parameters(settings)))


def apply(settings: Settings, node: NodeState) -> None:
    """Persist and apply the kernel prerequisites."""
    ops.files_installed(name="kernel: modules-load.d and sysctl.d files",
                        files=desired_files(settings), current=node)
    ops.kernel_modules_loaded(name="kernel: overlay and br_netfilter loaded",
                              missing=[m for m in MODULE_FEATURES if not node.features.get(m)])
    ops.kernel_parameters_applied(name="kernel: bridge-nf-call and ip_forward applied",
                                  values=parameters(settings), current=node)
