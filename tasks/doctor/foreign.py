"""
The network a cluster podnet did not deploy should have: a flannel cluster set up the usual way (kubeadm,
then flannel's own Documentation/kube-flannel.yml), diagnosed from the inventory alone.

Where the inventory sets a value (``cluster_cidr``, ``node_cidr_mask_size``, ``flannel_backend``...), the
doctor holds the cluster to it. Where it does not, the value is read from the live cluster, in the first
control-plane host's probe (the doctor's one command per host; stdout only, every answer held to its schema):

- kube-controller-manager's node IPAM flags (--allocate-node-cidrs, --cluster-cidr, --node-cidr-mask-size*,
  --controllers), from the command line of the running process (/proc/<pid>/cmdline), else from its static
  pod manifest or systemd unit (``kube_controller_manager_manifest`` / ``_unit``); read as
  kube-controller-manager reads them (tasks/controller_manager.py: ``node_ipam``), its defaults where a flag is
  not given;
- flannel's net-conf (ConfigMap kube-flannel/kube-flannel-cfg, key net-conf.json: Network, IPv6Network,
  EnableIPv4/EnableIPv6, Backend Type/VNI/Port/MTU), read as flanneld v0.28.9 reads it (tasks/flannel.py:
  ``parse_net_conf``), flannel's defaults where a key is absent; the pod MTU from its cni-conf.json's
  flannel delegate (none there: flanneld's FLANNEL_MTU);
- how flanneld runs and its release: the DaemonSet in namespace kube-flannel whose container runs flanneld,
  and its image's tag.

Every value says where it came from (``ExpectedNetwork.sources``): "inventory <key>", "kube-controller-manager
<flag> on <host> (its running command line)", "ConfigMap kube-flannel/kube-flannel-cfg net-conf.json
<key>", or the component's default.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Mapping

from tasks import cni, controller_manager, flannel
from tasks.doctor.expected import ExpectedNetwork
from tasks.engine import answers, ownership
from tasks.engine.answers import BadField
from tasks.engine.findings import Finding, error, warning
from tasks.engine.probe import NodeState, ProbeRequest
from tasks.errors import PodnetError
from tasks.settings import Settings

NET_CONF_NAMESPACE = "kube-flannel"  # upstream kube-flannel.yml's Namespace and ConfigMap
NET_CONF_CONFIGMAP = "kube-flannel-cfg"
NET_CONF_KEY = "net-conf.json"
CNI_CONF_KEY = "cni-conf.json"
KCM_PROCESS_QUERY = "doctor_kcm_cmdline"
NET_CONF_QUERY = "doctor_net_conf"
DAEMONSETS_QUERY = "doctor_flannel_daemonsets"
CONFIGMAP = f"ConfigMap {NET_CONF_NAMESPACE}/{NET_CONF_CONFIGMAP}"
# The oldest kube-controller-manager process: its command line, NUL-separated as the kernel keeps it. pgrep -f
# matches the whole command line (the process name is cut to 15 characters), anchored so the probe's own shell,
# which holds this pattern, does not match.
KCM_PROCESS_COMMAND = ("pid=$(pgrep -o -f '^([^ ]*/)?kube-controller-manager( |$)') && "
                       "base64 -w0 \"/proc/$pid/cmdline\"")
# Inventory keys, per value of ExpectedNetwork they set.
KEYS = {"backend": "flannel_backend", "vni": "flannel_vni", "port": "flannel_port", "mtu": "flannel_mtu",
        "rollout": "flannel_rollout"}


class ForeignClusterError(PodnetError, RuntimeError):
    """What the doctor expects of a cluster podnet did not deploy cannot be told."""


def conflist_path(s: Settings) -> str:
    return f"{s.cni_conf_dir}/{cni.CONFLIST_NAME}"


def probe_request(s: Settings) -> ProbeRequest:
    """What the first control-plane host is asked (with the doctor's other questions, in its one probe):
    podnet's ledger and the CNI config podnet would have written (``podnet_deployed``), kube-controller-manager's
    running command line and its manifest or unit, the ConfigMap kube-flannel-cfg and the DaemonSets of
    namespace kube-flannel (kubectl with the ``kubeconfig`` setting)."""
    files = [ownership.LEDGER, conflist_path(s)]
    if s.kube_controller_manager_runtime != "external":
        files.append(controller_manager.config_path(s))
    return ProbeRequest(contents=files, queries={
        KCM_PROCESS_QUERY: KCM_PROCESS_COMMAND,
        NET_CONF_QUERY: f"{s.kubectl} -n {NET_CONF_NAMESPACE} get configmap {NET_CONF_CONFIGMAP} -o json "
                        "--ignore-not-found",
        DAEMONSETS_QUERY: f"{s.kubectl} -n {NET_CONF_NAMESPACE} get daemonsets -o json",
    })


def podnet_deployed(s: Settings, node: NodeState) -> bool:
    """Whether podnet deployed the pod network this host runs: the CNI config in its conf dir is the one podnet
    installed there (podnet's ledger, tasks/engine/ownership.py, records it with this content's sha256). A
    cluster that never saw podnet has no ledger; one whose network was reset and then deployed another way
    (flannel's own kube-flannel.yml) has a config podnet did not write."""
    recorded = ownership.ledger(node) or {}
    path = conflist_path(s)
    content = node.contents.get(path)
    return content is not None and recorded.get(path) == hashlib.sha256(content).hexdigest()


# --- the answers, each read against its schema ---------------------------------------------------


def process_command_line(lines: list[str]) -> list[str]:
    """A process's command line from the base64 of /proc/<pid>/cmdline (one line): its NUL-separated
    arguments. BadField for anything else."""
    if len(lines) != 1:
        raise BadField(f"{len(lines)} line(s) where one base64 line is expected")
    raw = answers.base64_bytes(lines[0].strip())
    if not raw:
        raise BadField("an empty command line")
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise BadField("a command line that is not UTF-8") from None
    return text[:-1].split("\0") if text.endswith("\0") else text.split("\0")


def configmap_data(lines: list[str], name: str = NET_CONF_CONFIGMAP) -> dict[str, str] | None:
    """A ConfigMap's ``data`` from ``kubectl get configmap -o json --ignore-not-found`` (no output: None).
    BadField unless it is that ConfigMap with string values."""
    text = "\n".join(lines).strip()
    if not text:
        return None
    try:
        document = json.loads(text)
    except ValueError:
        raise BadField("not JSON") from None
    if not isinstance(document, dict) or document.get("kind") != "ConfigMap" \
            or not isinstance(document.get("metadata"), dict) or document["metadata"].get("name") != name:
        raise BadField(f"not ConfigMap {name}")
    data = document.get("data") or {}
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise BadField("its data is not a map of strings")
    return data


@dataclass(frozen=True)
class FlannelDaemonSet:
    """A DaemonSet whose pods run flanneld: its name and the image of that container."""

    name: str
    image: str


def flannel_daemonsets(lines: list[str]) -> list[FlannelDaemonSet]:
    """The DaemonSets (``kubectl get daemonsets -o json``) with a container that runs flanneld (its command's
    or, without one, its image's entrypoint is not known: then its name holding "flannel"). BadField unless it is
    a List of DaemonSets."""
    try:
        document = json.loads("\n".join(lines))
    except ValueError:
        raise BadField("not JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("items"), list):
        raise BadField("not a list of DaemonSets")
    found = []
    for item in document["items"]:
        try:
            name = answers.object_name(item["metadata"]["name"])
            containers = item["spec"]["template"]["spec"]["containers"]
        except (KeyError, TypeError):
            raise BadField("a DaemonSet without metadata.name or containers") from None
        for container in containers if isinstance(containers, list) else []:
            command = container.get("command") if isinstance(container, dict) else None
            image = container.get("image") if isinstance(container, dict) else None
            runs = (isinstance(command, list) and command and isinstance(command[0], str)
                    and command[0].rsplit("/", 1)[-1] == "flanneld")
            if runs and isinstance(image, str):
                found.append(FlannelDaemonSet(name, answers.no_control(image, "image")))
    return found


# --- the builder ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Read:
    """What the live cluster says (None: not read), with where each part came from."""

    ipam: controller_manager.NodeIpam | None
    ipam_where: str
    net_conf: flannel.NetConf | None
    pod_mtu: int | None
    daemonsets: list[FlannelDaemonSet] | None


def _read_node_ipam(s: Settings, node: NodeState, host: str, found: list[Finding]):
    """kube-controller-manager's node IPAM: the running process's command line, else its manifest or unit."""
    rc, lines = node.queries.get(KCM_PROCESS_QUERY, (1, []))
    path = controller_manager.config_path(s)
    candidates = []
    if rc == 0:
        try:
            candidates.append((process_command_line(lines), f"in {host}'s running command line"))
        except BadField as problem:
            found.append(warning(answers.problem(host, "kube-controller-manager's command line", lines[0] if lines
                                                 else "", str(problem))))
    if s.kube_controller_manager_runtime != "external" and path in node.contents:
        reader = (controller_manager.manifest_command_line if s.kube_controller_manager_runtime == "static-pod"
                  else controller_manager.unit_command_line)
        try:
            candidates.append((reader(node.contents[path].decode()), f"in {path} on {host}"))
        except (controller_manager.ControllerManagerError, ValueError) as problem:
            found.append(warning(f"{path}: kube-controller-manager's command line cannot be read: {problem}",
                                 where=host))
    for items, where in candidates:
        try:
            return controller_manager.node_ipam(items), where
        except controller_manager.ControllerManagerError as problem:
            found.append(warning(f"kube-controller-manager's command line {where}: {problem}", where=host))
    return None, ""


def _read_flannel(s: Settings, node: NodeState, host: str, found: list[Finding]):
    """flannel's net-conf and the pod MTU of its cni-conf.json (ConfigMap kube-flannel-cfg), its DaemonSets."""
    net_conf = pod_mtu = daemonsets = None
    rc, lines = node.queries.get(NET_CONF_QUERY, (1, []))
    if rc != 0:
        found.append(warning(f"reading {CONFIGMAP} with kubectl failed ({node.query_stderr.get(NET_CONF_QUERY, '')})",
                             where=host, why="flannel's net-conf is not known"))
    else:
        try:
            data = configmap_data(lines)
        except BadField as problem:
            found.append(warning(answers.problem(host, CONFIGMAP, (lines or [""])[0], str(problem))))
            data = None
        if data is not None and NET_CONF_KEY in data:
            try:
                net_conf = flannel.parse_net_conf(data[NET_CONF_KEY])
            except flannel.NetConfError as problem:
                found.append(error(f"{CONFIGMAP} {NET_CONF_KEY}: {problem}", ForeignClusterError, where=host,
                                   why="flanneld does not start with it"))
        pod_mtu = _delegate_mtu(data.get(CNI_CONF_KEY, "")) if data else None
    rc, lines = node.queries.get(DAEMONSETS_QUERY, (1, []))
    if rc == 0:
        try:
            daemonsets = flannel_daemonsets(lines)
        except BadField as problem:
            found.append(warning(answers.problem(host, f"the DaemonSets of {NET_CONF_NAMESPACE}", (lines or [""])[0],
                                                 str(problem))))
    return net_conf, pod_mtu, daemonsets


def _delegate_mtu(text: str) -> int | None:
    """The ``mtu`` of the flannel plugin's delegate in a cni-conf.json (the pod MTU the bridge plugin sets);
    None when it sets none (flanneld's FLANNEL_MTU then) or the file does not read."""
    try:
        conf = json.loads(text)
    except ValueError:
        return None
    plugins = conf.get("plugins", [conf]) if isinstance(conf, dict) else []
    for plugin in plugins if isinstance(plugins, list) else []:
        if isinstance(plugin, dict) and plugin.get("type") == "flannel" and isinstance(plugin.get("delegate"), dict):
            mtu = plugin["delegate"].get("mtu")
            return mtu if isinstance(mtu, int) and not isinstance(mtu, bool) and mtu > 0 else None
    return None


def read_cluster(s: Settings, node: NodeState, host: str) -> tuple[_Read, list[Finding]]:
    """What the first control-plane host's probe answer says of the live cluster, and what could not be read."""
    found: list[Finding] = []
    ipam, where = _read_node_ipam(s, node, host, found)
    net_conf, pod_mtu, daemonsets = _read_flannel(s, node, host, found)
    return _Read(ipam, where, net_conf, pod_mtu, daemonsets), found


def _family_values(data: Mapping[str, Any], s: Settings, live: _Read, found: list[Finding], host: str):
    """Per IP family: (cluster CIDR, its source, node mask, its source), from the inventory where it sets the
    value, else kube-controller-manager, else flannel's net-conf (for the network; the mask is then
    kube-controller-manager's default)."""
    ipam, conf = live.ipam, live.net_conf
    kcm = {net.version: (net, mask) for net, mask in zip(ipam.cluster_cidrs, ipam.node_masks)} \
        if ipam is not None and not ipam.problem else {}
    flannel_nets = {} if conf is None else {n.version: n for n in (conf.network, conf.ipv6_network) if n is not None}
    if ipam is not None and ipam.problem:
        found.append(warning(f"kube-controller-manager {live.ipam_where}: {ipam.problem}", where=host,
                             why="it gives nodes no podCIDR"))
    families = []
    for version, cidr_key, mask_key in ((4, "cluster_cidr", "node_cidr_mask_size"),
                                        (6, "cluster_cidr_ipv6", "node_cidr_mask_size_ipv6")):
        if cidr_key in data:
            net = s.cluster_cidr if version == 4 else s.cluster_cidr_ipv6
            cidr_source = f"inventory {cidr_key}"
        elif version in kcm:
            net, cidr_source = kcm[version][0], f"kube-controller-manager --cluster-cidr {live.ipam_where}"
        elif version in flannel_nets:
            net = flannel_nets[version]
            cidr_source = f"{CONFIGMAP} {NET_CONF_KEY} {'Network' if version == 4 else 'IPv6Network'}"
        else:
            continue
        if net is None:
            continue
        if mask_key in data:
            mask, mask_source = (s.node_cidr_mask_size if version == 4 else s.node_cidr_mask_size_ipv6), \
                f"inventory {mask_key}"
        elif version in kcm:
            flag = _mask_flag(ipam, version)  # type: ignore[arg-type]
            mask = kcm[version][1]
            mask_source = (f"kube-controller-manager {flag} {live.ipam_where}" if flag else
                           f"kube-controller-manager's default for IPv{version}: no --node-cidr-mask-size* "
                           f"{live.ipam_where}")
        else:
            mask = controller_manager.DEFAULT_NODE_MASK[version]
            mask_source = f"kube-controller-manager's default for IPv{version} (its flags were not read)"
        families.append((net, cidr_source, mask, mask_source))
    return families


def _mask_flag(ipam: controller_manager.NodeIpam, version: int) -> str:
    """The flag the node mask of IP ``version`` came from ("" for kube-controller-manager's default)."""
    for name in ("node-cidr-mask-size", f"node-cidr-mask-size-ipv{version}"):
        if name in ipam.given:
            return f"--{name}"
    return ""


def _flannel_values(data: Mapping[str, Any], s: Settings, live: _Read) -> tuple[dict, dict]:
    """backend, vni, port, mtu, rollout and flannel_version with their sources."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    conf = live.net_conf
    for name in ("backend", "vni", "port", "mtu"):
        if KEYS[name] in data:
            values[name] = {"backend": s.flannel_backend, "vni": s.flannel_vni, "port": s.effective_flannel_port,
                            "mtu": s.flannel_mtu}[name]
            sources[name] = f"inventory {KEYS[name]}"
    if conf is not None:
        values.setdefault("backend", conf.backend)
        sources.setdefault("backend", _net_conf_source(conf, "Backend.Type", "Backend Type"))
        if values["backend"] == conf.backend:
            values.setdefault("vni", conf.vni)
            sources.setdefault("vni", _net_conf_source(conf, "Backend.VNI", "Backend VNI"))
            values.setdefault("port", conf.port)
            key = "Backend.Port" if conf.backend == "vxlan" else "Backend.ListenPort"
            sources.setdefault("port", _net_conf_source(conf, key, key.replace(".", " ")))
    values.setdefault("backend", s.flannel_backend)
    sources.setdefault("backend", f"podnet's default flannel_backend ({CONFIGMAP} not read)")
    if "vni" not in values:
        values["vni"] = s.flannel_vni if values["backend"] == "vxlan" else None
        sources["vni"] = "flannel's default"
    if "port" not in values:
        values["port"] = flannel.BACKEND_DEFAULT_PORTS.get(values["backend"])
        sources["port"] = "flannel's default"
    if values["backend"] != "vxlan":
        values["vni"] = None
    if "mtu" not in values:
        values["mtu"] = live.pod_mtu
        sources["mtu"] = (f"{CONFIGMAP} {CNI_CONF_KEY} flannel delegate mtu" if live.pod_mtu is not None else
                          f"flanneld's FLANNEL_MTU: no mtu in the flannel delegate of {CONFIGMAP} {CNI_CONF_KEY}")
    daemonset = live.daemonsets[0] if live.daemonsets else None
    if KEYS["rollout"] in data:
        values["rollout"], sources["rollout"] = s.flannel_rollout, "inventory flannel_rollout"
    elif daemonset is not None:
        values["rollout"] = "daemonset"
        sources["rollout"] = f"DaemonSet {NET_CONF_NAMESPACE}/{daemonset.name} runs flanneld"
    else:
        values["rollout"] = "external"
        sources["rollout"] = f"no DaemonSet in namespace {NET_CONF_NAMESPACE} runs flanneld"
    if values["rollout"] == "systemd":
        values["flannel_version"], sources["flannel_version"] = s.flanneld_version, "inventory flanneld_version" \
            if "flanneld_version" in data else "podnet's default flanneld_version"
    elif "flannel_image" in data:
        values["flannel_version"] = flannel.image_flannel_version(s.flannel_image)
        sources["flannel_version"] = "inventory flannel_image"
    elif daemonset is not None:
        values["flannel_version"] = flannel.image_flannel_version(daemonset.image)
        sources["flannel_version"] = f"image {daemonset.image} of DaemonSet {NET_CONF_NAMESPACE}/{daemonset.name}"
    else:
        values["flannel_version"], sources["flannel_version"] = None, "not known"
    return values, sources


def _net_conf_source(conf: flannel.NetConf, key: str, shown: str) -> str:
    return f"{CONFIGMAP} {NET_CONF_KEY} {shown}" if key in conf.given else \
        f"flannel's default: no {shown} in {CONFIGMAP} {NET_CONF_KEY}"


def expected_network(data: Mapping[str, Any], s: Settings, node: NodeState, host: str
                     ) -> tuple[ExpectedNetwork | None, list[Finding]]:
    """
    What the doctor holds a cluster podnet did not deploy to: every value the inventory (``data``: the first
    control-plane host's inventory data, ``s`` its Settings) sets, the others read from the live cluster in that
    host's probe answer (``node``, asked with ``probe_request``), each with its source. None, with an error
    finding, when no cluster CIDR can be told; warnings for what could not be read, and where
    kube-controller-manager and flannel's net-conf disagree.
    """
    live, found = read_cluster(s, node, host)
    families = _family_values(data, s, live, found, host)
    if not families:
        found.append(error("the cluster CIDR cannot be told", ForeignClusterError, where=host,
                           why="neither kube-controller-manager's --cluster-cidr nor flannel's net-conf could be read",
                           fix="set cluster_cidr (and node_cidr_mask_size) in the inventory"))
        return None, found
    families.sort(key=lambda family: family[0].version)
    values, sources = _flannel_values(data, s, live)
    sources["cluster_cidrs"] = "; ".join(f"IPv{f[0].version}: {f[1]}" for f in families) if len(families) > 1 \
        else families[0][1]
    sources["node_masks"] = "; ".join(f"IPv{f[0].version}: {f[3]}" for f in families) if len(families) > 1 \
        else families[0][3]
    expected = ExpectedNetwork(cluster_cidrs=tuple(f[0] for f in families), node_masks=tuple(f[2] for f in families),
                               sources=sources, **values)
    found.extend(_disagreements(expected, live, host))
    return expected, found


def _disagreements(expected: ExpectedNetwork, live: _Read, host: str) -> list[Finding]:
    """Where flannel's net-conf does not hold the cluster CIDR pods get their podCIDRs from."""
    found = []
    conf = live.net_conf
    if conf is None:
        return found
    for net in expected.cluster_cidrs:
        flannel_net = conf.network if net.version == 4 else conf.ipv6_network
        key = "Network" if net.version == 4 else "IPv6Network"
        if flannel_net is None:
            found.append(warning(f"{CONFIGMAP} {NET_CONF_KEY} has no {key} (IPv{net.version} is not enabled)",
                                 where=host, why=f"flanneld gives pods no IPv{net.version} address from {net}"))
        elif not (isinstance(flannel_net, type(net)) and net.subnet_of(flannel_net)):  # type: ignore[arg-type]
            found.append(warning(f"{CONFIGMAP} {NET_CONF_KEY} {key} {flannel_net} does not hold the cluster CIDR {net} "
                                 f"({expected.source('cluster_cidrs')})", where=host,
                                 why="flanneld refuses a node whose podCIDR is outside it: \"subnet ... specified in "
                                     "the flannel net config doesn't contain ... PodCIDR\"",
                                 fix=f"set {key} to {net} in {CONFIGMAP} and restart the flannel pods"))
    return found


def describe_sources(expected: ExpectedNetwork) -> list[str]:
    """One line per value: what the doctor expects and where that was read ("<value>: <what> (<source>)"), in
    the names the verdict's "expected:" line uses."""
    shown = {
        "cluster_cidrs": ("cluster CIDR", ", ".join(str(n) for n in expected.cluster_cidrs)),
        "node_masks": ("node mask", ", ".join(str(m) for m in expected.node_masks)),
        "backend": ("backend", expected.backend), "vni": ("VNI", expected.vni), "port": ("port", expected.port),
        "mtu": ("pod MTU", expected.mtu if expected.mtu is not None else "FLANNEL_MTU"),
        "rollout": ("flanneld", expected.rollout),
        "flannel_version": ("flannel release", expected.flannel_version or "unknown"),
    }
    return [f"{label} {value}: {expected.source(name)}" for name, (label, value) in shown.items()
            if not (name == "vni" and value is None)]
