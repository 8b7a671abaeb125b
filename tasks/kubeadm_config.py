"""
kube-controller-manager's node IPAM flags in kubeadm's own record of the cluster.

`kubeadm upgrade` (apply and node) regenerates /etc/kubernetes/manifests/kube-controller-manager.yaml
from the ClusterConfiguration stored in ConfigMap kube-system/kubeadm-config, so flags that exist
only in the manifest are lost on the next upgrade. On a kubeadm-managed control plane (that
ConfigMap exists) podnet therefore also records the node IPAM flags there, in
`controllerManager.extraArgs`, in the schema of the ClusterConfiguration's own apiVersion:

- kubeadm.k8s.io/v1beta3 (kubeadm 1.22-1.30): a map of flag name -> string value;
- kubeadm.k8s.io/v1beta4 (kubeadm 1.31 on): a list of {name, value}; a name may repeat.

Every other field and every other extra argument is kept. The extra arguments are merged as the
command line kubeadm makes of them (`--name=value`, repeats in kubeadm's order), by the same merge
as the manifest's command line (tasks/controller_manager.py: merge_command), so `--controllers` is
merged, never replaced, and a flag is rewritten only when kube-controller-manager would not get
podnet's value.

The ConfigMap is cluster-wide: the first control-plane host reads it in its probe (one kubectl
query) and, when a flag differs, patches it with kubectl at execution time. The patch carries the
resourceVersion the probe saw, so a ConfigMap changed in between is refused (409 Conflict)
rather than overwritten.

Upstream: kubernetes/kubernetes cmd/kubeadm/app/apis/kubeadm/v1beta3/types.go and
v1beta4/types.go (ControlPlaneComponent.ExtraArgs: "Extra arguments will override existing default
arguments. Duplicate extra arguments are allowed"), cmd/kubeadm/app/util/arguments.go
(ArgumentsToCommand), cmd/kubeadm/app/constants/constants.go (KubeadmConfigConfigMap
"kubeadm-config", ClusterConfigurationConfigMapKey "ClusterConfiguration"), and the release note of
kubernetes/kubernetes#125029 ("The storage configuration in the kube-system/kubeadm-config ConfigMap
is now a v1beta4 ClusterConfiguration").
"""

from __future__ import annotations

import difflib
import json
import shlex
from dataclasses import dataclass

import yaml
from pyinfra import logger
from yaml.nodes import MappingNode, SequenceNode

from tasks import controller_manager

from tasks.engine import answers, ops
from tasks.engine.answers import BadField
from tasks.engine.context import HostContext, Step
from tasks.errors import PodnetError
from tasks.formats import kube_yaml
from tasks.engine.probe import NodeState, ProbeRequest
from tasks.settings import Settings

NAMESPACE = "kube-system"
CONFIGMAP = "kubeadm-config"
KEY = "ClusterConfiguration"
WHERE = f"ConfigMap {NAMESPACE}/{CONFIGMAP}"
QUERY = "kubeadm_config"  # the probe's query name
MARK = "podnet-kubeadm-config"  # first line of the query's answer: MARK <resourceVersion>

# kubeadm configuration API -> how ControlPlaneComponent.extraArgs is written.
EXTRA_ARGS_STYLE = {
    "kubeadm.k8s.io/v1beta3": "map",  # map[string]string
    "kubeadm.k8s.io/v1beta4": "list",  # []Arg{Name, Value}
}
OPERATION = "kubeadm-config: node IPAM flags in the ClusterConfiguration kubeadm upgrade reads"


class KubeadmConfigError(PodnetError, ValueError):
    """The kubeadm-config ConfigMap cannot be read or merged safely."""


# --- the merge --------------------------------------------------------------------------------


def desired_args(s: Settings) -> dict[str, str | None]:
    """Extra argument -> value podnet records; None means the argument must not be there."""
    return controller_manager.desired_flags(s)


def kubeadm_order(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """
    Repeated arguments in the order kubeadm passes them: ArgumentsToCommand (cmd/kubeadm/app/util/
    arguments.go) sorts the arguments by name, then by value, so of two `cluster-cidr` entries the
    larger value comes last and wins. Only same-name entries trade places (by value, within the
    places they hold); every other entry stays where it is, as the order of different names does not
    change what kube-controller-manager reads.
    """
    values: dict[str, list[str]] = {}
    for name, value in pairs:
        values.setdefault(name, []).append(value)
    for name in values:
        values[name].sort(key=lambda value: "" if value is None else str(value))
    return [(name, values[name].pop(0)) for name, _ in pairs]


def merge_args(pairs: list[tuple[str, str]], args: dict[str, str | None]) -> tuple[list[tuple[str, str]], list[str]]:
    """
    Extra arguments (name, value) in order, merged exactly as podnet merges the manifest's command
    line: kubeadm turns each into `--name=value` (ControlPlaneComponent.ExtraArgs, appended after
    its own flags of other names), so they are merged as that command line by
    controller_manager.merge_command (each flag podnet owns once, where it first was, else at the
    end; --controllers merged, never replaced) and read back. Returns the merged pairs and what
    changed (empty: kube-controller-manager would already run with podnet's values).
    """
    pairs = kubeadm_order(pairs)
    items = [f"--{name}={'' if value is None else value}" for name, value in pairs]
    merged_items = controller_manager.merge_command(items, args)
    if merged_items == items:
        return list(pairs), []
    merged = [(item[2:].partition("=")[0], item[2:].partition("=")[2]) for item in merged_items]
    changes = []
    for name in ["controllers", *args]:
        old = [str(value) for n, value in pairs if n == name]
        new = [value for n, value in merged if n == name]
        if old != new:
            was = f" (was {', '.join(old)})" if old else ""
            changes.append(f"{name} removed{was}" if not new else f"{name}={', '.join(new)}{was}")
    return merged, changes


def _entry_value(node) -> str | None:
    """An extra argument's value as kubeadm reads it (a string; None for a missing one)."""
    value = kube_yaml.scalar_value(node) if node is not None else None
    return None if value is None else str(value)


def merge_cluster_configuration(text: str, args: dict[str, str | None]) -> tuple[str | None, list[str], str]:
    """
    The ClusterConfiguration with ``args`` recorded in controllerManager.extraArgs.
    Returns (new text or None when nothing changes, what changed, its apiVersion).

    Read as kubeadm reads it (tasks.formats.kube_yaml: go-yaml's scalars), and only the extraArgs
    node is replaced, keeping each extra argument podnet does not change as it was: every other
    field is written back with its own value and style, so it means to kubeadm what it meant before.
    """
    try:
        root = kube_yaml.compose(text)
        document = kube_yaml.load(text)
    except yaml.YAMLError as error:
        raise KubeadmConfigError(f"{WHERE}: {KEY} is not YAML: {error}") from None
    if not isinstance(document, dict) or document.get("kind") != KEY:
        raise KubeadmConfigError(f"{WHERE}: {KEY} is not a kubeadm ClusterConfiguration document")
    api_version = document.get("apiVersion")
    style = EXTRA_ARGS_STYLE.get(api_version)
    if style is None:
        known = " and ".join(f"{v} (extraArgs as a {s})" for v, s in EXTRA_ARGS_STYLE.items())
        raise KubeadmConfigError(
            f"{WHERE}: {KEY} has apiVersion {api_version!r}; podnet records the node IPAM flags in {known} "
            "only. Upgrade the cluster with a kubeadm that stores one of them, then rerun")
    component = kube_yaml.get(root, "controllerManager")
    if component is not None and kube_yaml.scalar_value(component) is None and not isinstance(component, MappingNode):
        raise KubeadmConfigError(f"{WHERE}: {KEY} controllerManager is not a mapping")
    if not isinstance(component, MappingNode):
        component = kube_yaml.mapping([])
    extra = kube_yaml.get(component, "extraArgs")
    if extra is not None and not isinstance(extra, (MappingNode, SequenceNode)) \
            and kube_yaml.scalar_value(extra) is not None:
        extra = False  # refused below
    entries: list[tuple[str, str | None, object]] = []  # name, value, the node(s) it came from
    if style == "map":
        if extra is False or isinstance(extra, SequenceNode):
            raise KubeadmConfigError(f"{WHERE}: {KEY} ({api_version}) controllerManager.extraArgs is not a map "
                                     "of flag name to value")
        for key_node, value_node in extra.value if isinstance(extra, MappingNode) else []:
            entries.append((str(kube_yaml.scalar_value(key_node)), _entry_value(value_node), (key_node, value_node)))
    else:
        items = extra.value if isinstance(extra, SequenceNode) else []
        if extra is False or isinstance(extra, MappingNode) or not all(
                kube_yaml.get(item, "name") is not None for item in items):
            raise KubeadmConfigError(f"{WHERE}: {KEY} ({api_version}) controllerManager.extraArgs is not a list "
                                     "of {name, value}")
        for item in items:
            entries.append((str(kube_yaml.scalar_value(kube_yaml.get(item, "name"))),
                            _entry_value(kube_yaml.get(item, "value")), item))
    try:
        merged, changes = merge_args([(name, value) for name, value, _ in entries], args)
    except controller_manager.ControllerManagerError as error:
        raise KubeadmConfigError(f"{WHERE}: {KEY} controllerManager.extraArgs: {error}") from None
    if not changes:
        return None, [], api_version
    unused = list(entries)

    def kept(name: str, value: str):
        """The node(s) of an unchanged extra argument, each used once."""
        for entry in unused:
            if entry[0] == name and entry[1] == value:
                unused.remove(entry)
                return entry[2]
        return None

    if style == "map":
        pairs = [kept(name, value) or (kube_yaml.string(name), kube_yaml.string(value)) for name, value in merged]
        node = kube_yaml.mapping(pairs, like=extra if isinstance(extra, MappingNode) else None)
    else:
        node = kube_yaml.sequence(
            [kept(name, value) or kube_yaml.mapping([(kube_yaml.string("name"), kube_yaml.string(name)),
                                                     (kube_yaml.string("value"), kube_yaml.string(value))])
             for name, value in merged], like=extra if isinstance(extra, SequenceNode) else None)
    kube_yaml.set_value(component, "extraArgs", node)
    if kube_yaml.get(root, "controllerManager") is not component:
        kube_yaml.set_value(root, "controllerManager", component)
    return kube_yaml.serialize(root), changes, api_version


# --- asking the cluster -----------------------------------------------------------------------


def kubectl(s: Settings) -> str:
    return f"{s.kubectl} -n {NAMESPACE}"


def applies(s: Settings, is_first_control_plane: bool) -> bool:
    """Only the first control-plane host of a static pod control plane (the kubeadm layout) asks."""
    return is_first_control_plane and s.is_control_plane and s.kube_controller_manager_runtime == "static-pod"


def query_command(s: Settings) -> str:
    """Prints nothing when the ConfigMap does not exist; else MARK, its resourceVersion, and the document."""
    return (f"{kubectl(s)} get configmap {CONFIGMAP} --ignore-not-found -o "
            f"jsonpath='{{\"{MARK} \"}}{{.metadata.resourceVersion}}{{\"\\n\"}}{{.data.{KEY}}}'")


def probe_request(s: Settings, is_first_control_plane: bool) -> ProbeRequest:
    request = ProbeRequest()
    if applies(s, is_first_control_plane):
        request.queries[QUERY] = query_command(s)
    return request


@dataclass(frozen=True)
class Stored:
    """The ClusterConfiguration as the ConfigMap holds it."""

    resource_version: str
    text: str


def _mark_line(line: str) -> str:
    """query_command's first line: MARK and the ConfigMap's resourceVersion (an opaque string to clients,
    API conventions: non-empty, one word)."""
    mark, version = answers.fields(line, 2, " ")
    if mark != MARK or not version or answers.CONTROL.search(version):
        raise BadField(f"not '{MARK} <resourceVersion>'")
    return version


def parse_answer(rc: int, lines: list[str], s: Settings, host_name: str, stderr: str = "") -> Stored | None:
    """
    The probe's answer (kubectl's stdout; ``stderr`` only shown): None when the ConfigMap does not exist
    (not a kubeadm-managed control plane). RemoteAnswerError when the first line is not the MARK line.
    """
    if rc != 0:
        said = " ".join(stderr.split())[:300] or "(nothing on stderr)"
        raise KubeadmConfigError(
            f"{host_name}: reading {WHERE} with kubectl failed: {said}; podnet records the node "
            f"IPAM flags there on kubeadm clusters: check that kubectl is installed and kubeconfig {s.kubeconfig} "
            "works")
    if not any(line.strip() for line in lines):
        return None
    version = answers.records(host_name, f"kubectl get {WHERE} ({QUERY})", lines[:1], _mark_line)[0]
    text = "\n".join(lines[1:]).strip("\n")
    if not text:
        raise KubeadmConfigError(f"{host_name}: {WHERE} has no {KEY}; kubeadm upgrade needs it: restore it "
                                 "(kubeadm init phase upload-config kubeadm) and rerun")
    return Stored(version, text + "\n")


def patch_command(s: Settings, stored: Stored, text: str) -> str:
    """kubectl patch of the ClusterConfiguration key only, refused if the ConfigMap changed since the probe."""
    patch = {"metadata": {"resourceVersion": stored.resource_version}, "data": {KEY: text}}
    return (f"{kubectl(s)} patch configmap {CONFIGMAP} --type=merge "
            f"-p {shlex.quote(json.dumps(patch, separators=(',', ':')))}")


def apply(s: Settings, node: NodeState, host_name: str, cluster_created: bool = False,
          diff: bool = False) -> bool:
    """
    Record the node IPAM flags in the kubeadm-config ConfigMap when it exists and differs;
    returns whether it is changed in this run. ``cluster_created``: kubeadm init runs in this
    run (cluster_bootstrap) and stores podnet's init configuration, which holds the flags.
    """
    change = None
    answer = node.queries.get(QUERY)
    if answer is not None and not cluster_created:
        stored = parse_answer(answer[0], answer[1], s, host_name, node.query_stderr.get(QUERY, ""))
        if stored is not None:
            try:
                text, changes, api_version = merge_cluster_configuration(stored.text, desired_args(s))
            except KubeadmConfigError as error:
                raise KubeadmConfigError(f"{host_name}: {error}") from None
            if text is not None:
                change = (stored, text, changes, api_version)
    if change is not None and diff:
        stored, text = change[0], change[1]
        for line in difflib.unified_diff(stored.text.splitlines(), text.splitlines(), f"{WHERE} {KEY} (cluster)",
                                         f"{WHERE} {KEY} (podnet)", lineterm=""):
            logger.info("    %s", line)
    ops.shell_when(
        name=OPERATION,
        commands=[patch_command(s, change[0], change[1])] if change else [],
        reason=(f"recording {', '.join(change[2])} in {WHERE} ({change[3]} controllerManager.extraArgs), "
                "from which kubeadm upgrade regenerates the kube-controller-manager manifest") if change else None,
    )
    return change is not None


STEP = Step(
    "kubeadm-config: node IPAM flags recorded for kubeadm upgrade",
    applies=lambda ctx: ctx.settings.kube_controller_manager_runtime != "external"
    and applies(ctx.settings, ctx.is_first_control_plane),
    probe=lambda ctx: probe_request(ctx.settings, ctx.is_first_control_plane),
    apply=lambda ctx: apply(ctx.settings, ctx.node, ctx.host_name, cluster_created=ctx.cluster_created, diff=ctx.diff),
)
