"""
The shape every concern has: ``Step``s over one per-host ``HostContext``.

A concern (kernel, containerd, CNI, kube-controller-manager, kubeadm, flannel, the pod
network's lifecycle) exposes one or more ``Step``s, each the same six verbs:

- ``applies(ctx)``: whether it has anything to do on this host (decided here, nowhere else);
- ``probe(ctx)``: what it needs to know from the node (a ``ProbeRequest``; read nothing else);
- ``artifacts(ctx)``: which release files it installs (names of files/artifacts.yaml);
- ``findings(ctx)``: what is wrong on this host, from the settings and the probe's answer alone
  (``tasks.engine.findings.Finding``s; changes nothing, so a read-only diagnosis can run every step's);
- ``check(ctx)``: refusals that must stop the run before any step of any host changes anything
  (the error-level findings, raised by ``findings.refuse``);
- ``apply(ctx)``: the operations that ensure its state on the node.

The runner (tasks/engine/runner.py) asks every step that applies for its probe and artifacts, probes
the host once, fetches the artifacts once, runs every check, then every apply, in the order
of the step list (tasks/deploys.py). What a step decides that a later step needs (kubeadm
creates the cluster in this run; node IPAM flags changed) is recorded on the context.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from tasks.engine.findings import Finding
from tasks.engine.probe import NodeState, ProbeRequest
from tasks.settings import Settings


class ArtifactFiles(Protocol):
    """The verified local copies of this run's release files."""

    def file(self, name: str) -> Path: ...  # the downloaded file

    def unpacked(self, name: str) -> Path: ...  # the directory an archive was unpacked into


@dataclass
class HostContext:
    """Everything a step of one host reads: the settings, the probe's answer, the artifacts, and
    what earlier steps of this run decided."""

    host_name: str
    settings: Settings
    # The control-plane host that applies cluster-wide objects (kubeadm init, the flannel DaemonSet);
    # None when the inventory has none.
    first_control_plane: str | None
    diff: bool = False  # the run shows diffs (--diff): managed text files are read as well
    node: NodeState = field(default_factory=NodeState)  # the probe's answer (set by the runner)
    arch: str = ""  # the release architecture (amd64, arm64; set by the runner)
    artifacts: ArtifactFiles | None = None  # set by the runner
    # Decided by earlier steps, read by later ones:
    cluster_created: bool = False  # kubeadm init runs on this host in this run
    control_plane_created: bool = False  # kubeadm writes this host's static pod manifests in this run
    ipam_changed: bool = False  # kube-controller-manager's node IPAM flags change in this run
    nodes_to_register_again: dict[str, list[str]] = field(default_factory=dict)  # node -> old podCIDRs
    flanneld_stopped: bool = False  # flanneld (this host's unit, or the DaemonSet from here) stopped in this run

    @property
    def is_first_control_plane(self) -> bool:
        return self.first_control_plane == self.host_name

    def file(self, name: str) -> Path:
        assert self.artifacts is not None, "artifacts are fetched before any step applies"
        return self.artifacts.file(name)

    def unpacked(self, name: str) -> Path:
        assert self.artifacts is not None, "artifacts are fetched before any step applies"
        return self.artifacts.unpacked(name)


def _always(ctx: HostContext) -> bool:
    return True


def _nothing_to_ask(ctx: HostContext) -> ProbeRequest:
    return ProbeRequest()


def _no_artifacts(ctx: HostContext) -> tuple[str, ...]:
    return ()


def _no_check(ctx: HostContext) -> None:
    return None


def _nothing_found(ctx: HostContext) -> list[Finding]:
    return []


@dataclass(frozen=True)
class Step:
    """One concern's part of the deploy (see the module docstring for the verbs)."""

    name: str  # what it ensures, one line (the README's step table lists it)
    apply: Callable[[HostContext], None]
    applies: Callable[[HostContext], bool] = _always
    probe: Callable[[HostContext], ProbeRequest] = _nothing_to_ask
    artifacts: Callable[[HostContext], tuple[str, ...]] = _no_artifacts
    check: Callable[[HostContext], None] = _no_check
    findings: Callable[[HostContext], list[Finding]] = _nothing_found
