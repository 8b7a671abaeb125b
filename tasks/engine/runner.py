"""
Runs a list of steps (tasks/engine/context.py) on one host: the settings validated for the whole
inventory once, one probe with what every applicable step asks, the release files fetched
once, every step's check, then every step's apply, in the list's order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tasks.artifacts import catalog

from tasks.artifacts import checksums
from tasks.artifacts.catalog import Artifact
from tasks.engine import node_releases
from tasks.engine.context import HostContext, Step
from tasks.engine.desired import Origin, register_origin
from tasks.artifacts.download import Downloader
from tasks.engine.probe import NodeState, ProbeRequest, node_state
from tasks.releases import ARCHITECTURES
from tasks.settings import Settings, SettingsError, parse_inventory

_settings: dict[str, Settings] = {}
_downloaders: dict[tuple[Path, bool], Downloader] = {}
_contexts: dict[str, HostContext] = {}


def settings_for(host, inventory) -> Settings:
    """This host's settings. The first call validates every host of the inventory."""
    if not _settings:
        _settings.update(parse_inventory(inventory))
    return _settings[host.name]


def first_control_plane(inventory) -> str | None:
    """The control-plane host that applies cluster-wide objects (kubeadm init, the flannel DaemonSet)."""
    if not _settings:
        _settings.update(parse_inventory(inventory))
    hosts = [h.name for h in inventory if h.name in _settings and _settings[h.name].is_control_plane]
    return hosts[0] if hosts else None


def context_for(host, inventory, diff: bool = False) -> HostContext:
    """This host's context for the run (settings validated first, for the whole inventory). Several
    runs of steps on one host in one pyinfra run (a user's deploy calling podnet's deploys one by one)
    share it, so a later step sees what an earlier call's steps decided (kubeadm init, new IPAM flags)."""
    if host.name not in _contexts:
        _contexts[host.name] = HostContext(host_name=host.name, settings=settings_for(host, inventory),
                                           first_control_plane=first_control_plane(inventory), diff=diff)
    return _contexts[host.name]


def downloader_for(settings: Settings) -> Downloader:
    """One downloader per cache directory for the whole run, so each artifact is fetched once.
    Raises CacheError for a cache directory someone else could write (tasks.artifacts.download)."""
    key = (settings.download_cache_dir, settings.allow_insecure_http)
    if key not in _downloaders:
        _downloaders[key] = Downloader(settings.download_cache_dir, allow_insecure_http=settings.allow_insecure_http)
    return _downloaders[key]


def applicable(steps: tuple[Step, ...], ctx: HostContext) -> list[Step]:
    """The steps that have something to do on this host."""
    return [step for step in steps if step.applies(ctx)]


def probe_request(steps: list[Step], ctx: HostContext) -> ProbeRequest:
    """What these steps ask the node, merged into one request."""
    request = ProbeRequest()
    for step in steps:
        request = request.merge(step.probe(ctx))
    return request.for_run(ctx.diff)


def artifacts_needed(steps: list[Step], ctx: HostContext) -> tuple[str, ...]:
    """The release files these steps install, each once, in step order."""
    return tuple(dict.fromkeys(name for step in steps for name in step.artifacts(ctx)))


def architecture(node: NodeState, host_name: str) -> str:
    arch = ARCHITECTURES.get(node.machine)
    if arch is None:
        raise SettingsError([f"{host_name}: unsupported architecture {node.machine!r} (uname -m); "
                             f"podnet supports {', '.join(sorted(set(ARCHITECTURES.values())))}"])
    return arch


@dataclass
class RunArtifacts:
    """This run's verified release files for one host (tasks.engine.context.ArtifactFiles)."""

    downloader: Downloader
    resolved: dict[str, Artifact]

    def file(self, name: str) -> Path:
        """The verified download (its origin registered: the release file itself)."""
        artifact = self.resolved[name]
        path = self.downloader.fetch(artifact)
        register_origin(path, self._origin(artifact, path))
        return path

    def unpacked(self, name: str) -> Path:
        """The tree the verified archive is unpacked into (each file's origin registered: its member)."""
        artifact = self.resolved[name]
        target = self.downloader.unpack(artifact)
        archive = self.downloader.fetch(artifact)
        for member in target.rglob("*"):
            if member.is_file():
                register_origin(member, self._origin(artifact, archive, member.relative_to(target).as_posix()))
        return target

    @staticmethod
    def _origin(artifact: Artifact, local: Path, member: str | None = None) -> Origin:
        return Origin(artifact.name, artifact.url, artifact.sha256, artifact.sha256_source, local, member)


def fetch_artifacts(ctx: HostContext, names: tuple[str, ...]) -> RunArtifacts:
    """Resolve the sha256 of each release file and download it (once per run and cache), before any
    check or change: a file that cannot be had stops the run while planning."""
    settings = ctx.settings
    downloader = downloader_for(settings)
    lookup = checksums.for_run(settings.artifact_lock_file, downloader).lookup(settings)
    try:
        resolved = {name: catalog.resolve(settings, name, ctx.arch, lookup) for name in names}
    except catalog.ArtifactError as error:
        raise SettingsError([f"{ctx.host_name}: {error}"]) from None
    for artifact in resolved.values():
        downloader.fetch(artifact)
    return RunArtifacts(downloader, resolved)


def run(steps: tuple[Step, ...], host, inventory, diff: bool = False) -> HostContext:
    """
    Plan ``steps`` on ``host``: ask the node once, fetch the release files once, run every
    applicable step's check (a refusal stops the run before any host changes), then each one's
    apply. Returns the context, with what the steps decided.
    """
    ctx = context_for(host, inventory, diff)
    downloader_for(ctx.settings)  # a download cache others could write stops the run before the node is asked
    steps_here = applicable(steps, ctx)
    names = artifacts_needed(steps_here, ctx)
    request = probe_request(steps_here, ctx)
    if names:  # release files on the node (an interrupted run's), and what it needs to download them itself
        request = request.merge(node_releases.probe_request(ctx.settings))
    ctx.node = node_state(host, request, run_lock_wait=ctx.settings.run_lock_wait)
    ctx.arch = architecture(ctx.node, host.name)
    if names:
        node_releases.refuse_missing_tools(ctx.settings, ctx.node, host.name)
    ctx.artifacts = fetch_artifacts(ctx, names)
    for step in steps_here:
        step.check(ctx)
    for step in steps_here:
        step.apply(ctx)
    return ctx
