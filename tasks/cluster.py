"""
Per-run, per-host context: the validated settings, the node's probe answer and the
verified artifacts, each computed once and shared by every concern.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tasks import (artifacts, checksums, cni, containerd, controller_manager, flannel, interrupted, kernel, kubeadm,
                   kubeadm_config, pod_network)
from tasks.artifacts import KUBERNETES_BINARIES
from tasks.desired import DesiredFile
from tasks.download import Downloader
from tasks.probe import NodeState, ProbeRequest, node_state
from tasks.settings import ARCHITECTURES, Settings, SettingsError, parse_inventory

_settings: dict[str, Settings] = {}
_downloaders: dict[Path, Downloader] = {}


def settings_for(host, inventory) -> Settings:
    """This host's settings. The first call validates every host of the inventory."""
    if not _settings:
        _settings.update(parse_inventory(inventory))
    return _settings[host.name]


def first_control_plane(inventory) -> str | None:
    """The control-plane host that applies cluster-wide objects (kubeadm init, the flannel DaemonSet)."""
    hosts = [h.name for h in inventory if h.name in _settings and _settings[h.name].is_control_plane]
    return hosts[0] if hosts else None


def downloader_for(cache_dir: Path) -> Downloader:
    """One downloader per cache directory for the whole run, so each artifact is fetched once."""
    if cache_dir not in _downloaders:
        _downloaders[cache_dir] = Downloader(cache_dir)
    return _downloaders[cache_dir]


def probe_request(settings: Settings, is_first_control_plane: bool, diff: bool) -> ProbeRequest:
    request = kernel.probe_request(settings)
    request = request.merge(containerd.probe_request(settings))
    request = request.merge(cni.probe_request(settings))
    if settings.cluster_bootstrap:
        request = request.merge(kubeadm.probe_request(settings, is_first_control_plane))
    if settings.is_control_plane and settings.kube_controller_manager_runtime != "external":
        request = request.merge(controller_manager.probe_request(settings))
        request = request.merge(kubeadm_config.probe_request(settings, is_first_control_plane))
    request = request.merge(pod_network.probe_request(settings))
    request = request.merge(interrupted.probe_request(settings))
    return request.merge(flannel.probe_request(settings, is_first_control_plane)).for_run(diff)


def probe(host, settings: Settings, is_first_control_plane: bool, diff: bool) -> NodeState:
    """Ask the host everything at once, holding the node's run lock (tasks/run_lock.py)."""
    return node_state(host, probe_request(settings, is_first_control_plane, diff), run_lock_wait=settings.run_lock_wait)


def architecture(node: NodeState, host_name: str) -> str:
    arch = ARCHITECTURES.get(node.machine)
    if arch is None:
        raise SettingsError([f"{host_name}: unsupported architecture {node.machine!r} (uname -m); "
                             f"podnet supports {', '.join(sorted(set(ARCHITECTURES.values())))}"])
    return arch


@dataclass
class NodeArtifacts:
    """The node's binaries as desired files, from verified downloads."""

    containerd: list[DesiredFile]
    runc: DesiredFile
    cni_plugins: list[DesiredFile]
    flanneld: Path | None
    kubernetes: list[DesiredFile] = field(default_factory=list)  # kubeadm, kubelet, kubectl (cluster_bootstrap)


def fetch_artifacts(settings: Settings, node: NodeState, host_name: str) -> NodeArtifacts:
    """Resolve, download (once per run and cache) and unpack what this node needs."""
    arch = architecture(node, host_name)
    downloader = downloader_for(settings.download_cache_dir)
    lookup = checksums.for_run(settings.artifact_lock_file, downloader).lookup(settings)
    try:
        resolved = {name: artifacts.resolve(settings, name, arch, lookup) for name in artifacts.needed(settings)}
    except artifacts.ArtifactError as error:
        raise SettingsError([f"{host_name}: {error}"]) from None
    flannel_dir = downloader.unpack(resolved["flannel_cni_plugin"])
    flannel_binary = flannel_dir / f"flannel-{arch}"
    if not flannel_binary.is_file():
        raise artifacts.ArtifactError(f"{resolved['flannel_cni_plugin'].url} has no member flannel-{arch}")
    return NodeArtifacts(
        containerd=containerd.containerd_binaries(downloader.unpack(resolved["containerd"])),
        runc=containerd.runc_binary(downloader.fetch(resolved["runc"])),
        cni_plugins=cni.plugin_binaries(settings, downloader.unpack(resolved["cni_plugins"]), flannel_binary),
        flanneld=downloader.fetch(resolved["flanneld"]) if "flanneld" in resolved else None,
        kubernetes=kubeadm.binaries(*(downloader.fetch(resolved[name]) for name in KUBERNETES_BINARIES))
        if settings.cluster_bootstrap else [],
    )
