"""
The links of the pod IP's path, per node, in the order a pod's IP takes them (issue 20's item 1): each a
pure check from the expected network (tasks/doctor/expected.py), the cluster's answers (the first
control-plane host's) and this node's answers, to None (the link holds) or a ``Broken`` naming what was
seen, why it breaks pods (what ``kubectl describe pod`` shows) and the fix. The datapath, the last link,
is tasks/doctor/datapath.py.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Callable

from tasks import cni, controller_manager, flannel, kernel, pod_network
from tasks.doctor.asking import CriView, NodeView
from tasks.doctor.expected import ExpectedNetwork
from tasks.engine.answers import RemoteAnswerError
from tasks.engine.findings import Finding, error
from tasks.engine.probe import NodeState
from tasks.errors import PodnetError
from tasks.releases import cni_spec_versions
from tasks.settings import Settings

RERUN = "rerun podnet: pyinfra inventory/<cluster>.py deploy.py"


class BrokenLink(PodnetError, RuntimeError):
    """A link of the pod IP's path that does not hold on a node (the doctor's verdict)."""


@dataclass(frozen=True)
class Broken:
    """A link that does not hold: ``short`` for the verdict's table, ``finding`` for its paragraph
    (where: node and link; what: seen; why: what pods then see; fix)."""

    short: str
    finding: Finding


def broken(short: str, node: str, link: str, seen: str, why: str, fix: str) -> Broken:
    return Broken(short, error(seen, BrokenLink, where=f"{node}: {link}", why=why, fix=fix))


@dataclass
class Cluster:
    """What the first control-plane host said about the cluster: node -> podCIDRs (None: not asked or kubectl
    failed, with ``kubectl_said``), node -> flannel pods (name, Ready, waiting reason)."""

    pod_cidrs: dict[str, list[str]] | None = None
    flannel_pods: dict[str, list[tuple[str, bool, str]]] | None = None
    kubectl_said: str = ""


@dataclass
class Node:
    """One node's answers, read: its probe, the doctor's node and CRI queries."""

    name: str
    settings: Settings
    state: NodeState
    view: NodeView
    cri: CriView
    subnet_env: dict[str, str] | None = None  # None: no /run/flannel/subnet.env
    notes: list[str] = field(default_factory=list)  # what a check could not cover (an IP family, a tool)


def read_subnet_env(content: bytes | None) -> dict[str, str] | None:
    """subnet.env's KEY=value lines (as flanneld writes them: pkg/subnet WriteSubnetFile); None without the file."""
    if content is None:
        return None
    env = {}
    for line in content.decode(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            env[key.strip()] = value.strip()
    return env


# --- the links --------------------------------------------------------------------------------


def node_ipam(exp: ExpectedNetwork, cluster: Cluster, node: Node) -> Broken | None:
    """kube-controller-manager runs node IPAM with the cluster CIDR(s) and node mask(s) (control-plane hosts
    whose kube-controller-manager podnet manages; elsewhere the link does not apply: None)."""
    s = node.settings
    if not s.is_control_plane or s.kube_controller_manager_runtime == "external":
        return None
    path = controller_manager.config_path(s)
    if path not in node.state.contents:
        return broken("no kube-controller-manager", node.name, "node IPAM", f"{path} does not exist",
                      "no node gets a podCIDR, so flanneld cannot start (\"pod cidr not assigned\") and pods stay in "
                      "ContainerCreating with `open /run/flannel/subnet.env: no such file or directory`",
                      f"set kube_controller_manager_manifest/_unit to where it runs, then {RERUN}")
    values = kcm_values(s, node.state.contents[path].decode(errors="replace"))
    wrong = []
    if values is None:
        wrong.append("its command line cannot be read")
    else:
        if controller_manager._go_bool(str(values.get("allocate-node-cidrs", "false"))) is not True:
            wrong.append(f"--allocate-node-cidrs={values.get('allocate-node-cidrs', 'false (not given)')}")
        if not controller_manager.node_ipam_enabled(values.get("controllers")):
            wrong.append(f"--controllers={','.join(values['controllers'])} (node IPAM off)")
        cidrs = controller_manager._cidrs(str(values.get("cluster-cidr", "")))
        if cidrs != list(exp.cluster_cidrs):
            wrong.append(f"--cluster-cidr={values.get('cluster-cidr', '(not given)')}")
        for flag, mask in mask_flags(exp).items():
            given = values.get(flag)
            if controller_manager._go_int(str(given)) != mask if given is not None else mask != KCM_MASKS[flag]:
                wrong.append(f"--{flag}={given if given is not None else '(not given: ' + str(KCM_MASKS[flag]) + ')'}")
    if not wrong:
        return None
    want = ", ".join(str(c) for c in exp.cluster_cidrs)
    return broken("node IPAM off" if any("allocate" in w or "controllers" in w for w in wrong) else "wrong flags",
                  node.name, "node IPAM", f"kube-controller-manager ({path}) runs with " + "; ".join(wrong),
                  "kube-controller-manager gives new nodes no podCIDR (or one outside flannel's Network "
                  f"{want}); flanneld there fails with \"pod cidr not assigned\" and their pods stay in "
                  "ContainerCreating: `open /run/flannel/subnet.env: no such file or directory`",
                  f"{RERUN} (it merges --allocate-node-cidrs=true --cluster-cidr={','.join(str(c) for c in exp.cluster_cidrs)} "
                  "and the node mask flags into it)")


# kube-controller-manager's node mask defaults (pkg/controller/nodeipam/config/v1alpha1/defaults.go: 24 for
# IPv4, 64 for IPv6; --node-cidr-mask-size is the single-stack one).
KCM_MASKS = {"node-cidr-mask-size": 24, "node-cidr-mask-size-ipv4": 24, "node-cidr-mask-size-ipv6": 64}


def mask_flags(exp: ExpectedNetwork) -> dict[str, int]:
    """The node mask flags kube-controller-manager reads for the pod network: --node-cidr-mask-size on a
    single stack, the per-family ones on dual stack (as tasks/controller_manager.py desired_flags writes them)."""
    if not exp.dual_stack:
        return {"node-cidr-mask-size": exp.node_masks[0]}
    return {f"node-cidr-mask-size-ipv{net.version}": mask for net, mask in zip(exp.cluster_cidrs, exp.node_masks)}


def kcm_values(s: Settings, text: str) -> dict | None:
    """kube-controller-manager's effective flag values as it reads its manifest or unit (read_flags,
    effective_values of tasks/controller_manager.py); None when its command line cannot be read."""
    seen: dict = {}

    def capture(segments, flags):
        items = [item for segment in segments for item in segment]
        seen.update(controller_manager.effective_values(controller_manager.read_flags(items)[0]))
        return None

    merge = controller_manager.merge_manifest if s.kube_controller_manager_runtime == "static-pod" \
        else controller_manager.merge_unit
    try:
        merge(text, {}, planner=capture)
    except Exception:  # a manifest or unit the merge cannot read: said as such
        return None
    return seen


def pod_cidrs(exp: ExpectedNetwork, cluster: Cluster, node: Node) -> Broken | None:
    """The node's spec.podCIDRs: one per family of the pod network, each inside its cluster CIDR with the node
    mask, disjoint from every other node's."""
    if cluster.pod_cidrs is None:
        return broken("cannot ask", node.name, "podCIDR", f"kubectl on the first control-plane host failed "
                      f"({cluster.kubectl_said})", "the doctor cannot tell which podCIDR this node has",
                      "check that kubectl works there with the kubeconfig setting")
    if node.name not in cluster.pod_cidrs:
        return broken("no Node", node.name, "podCIDR", f"there is no Node named {node.name}",
                      "the kubelet on this host has not registered it, so no pod runs here",
                      "check the kubelet on this host (journalctl -u kubelet); the doctor takes the inventory "
                      "host name for the Node name")
    cidrs = [ipaddress.ip_network(c) for c in cluster.pod_cidrs[node.name]]
    fix_ipam = (f"switch node IPAM on ({RERUN}); kube-controller-manager then gives the node its podCIDR")
    if not cidrs:
        return broken("no podCIDR", node.name, "podCIDR", f"Node {node.name} has no spec.podCIDR",
                      "flanneld on it fails with \"failed to acquire lease: node \\\"" + node.name
                      + "\\\" pod cidr not assigned\" and its pods stay in ContainerCreating with "
                      "`open /run/flannel/subnet.env: no such file or directory`", fix_ipam)
    for version in exp.families:
        ours = [c for c in cidrs if c.version == version]
        cluster_cidr, mask = exp.cluster_cidr(version), exp.node_mask(version)
        if not ours:
            return broken(f"no IPv{version} podCIDR", node.name, "podCIDR",
                          f"Node {node.name} has podCIDRs {', '.join(map(str, cidrs))}, none of IPv{version}",
                          f"pods on it get no IPv{version} address (flanneld's dual stack needs both)",
                          "register the node again after node IPAM runs dual-stack: kubectl delete node "
                          f"{node.name} && systemctl restart kubelet (on {node.name}), or set "
                          "allow_pod_network_change and " + RERUN)
        cidr = ours[0]
        if not cidr.subnet_of(cluster_cidr) or cidr.prefixlen != mask:  # type: ignore[arg-type]
            return broken(f"{cidr} outside", node.name, "podCIDR",
                          f"Node {node.name} has spec.podCIDR {cidr}, not a /{mask} of {cluster_cidr} "
                          f"({exp.source('cluster_cidrs')})",
                          "flanneld gives the node a subnet outside its Network and exits, so pods there stay in "
                          "ContainerCreating", "set allow_pod_network_change and " + RERUN
                          + " (it registers the node again in the pod network)")
        for other, theirs in sorted(cluster.pod_cidrs.items()):
            for their in theirs:
                if other != node.name and ipaddress.ip_network(their).version == version \
                        and cidr.overlaps(ipaddress.ip_network(their)):
                    return broken(f"overlaps {other}", node.name, "podCIDR",
                                  f"spec.podCIDR {cidr} overlaps {other}'s {their}",
                                  "two nodes hand out the same pod IPs: pods are reached on the wrong node",
                                  f"register one again: kubectl delete node {node.name} && systemctl restart kubelet")
    return None


def flanneld(exp: ExpectedNetwork, cluster: Cluster, node: Node) -> Broken | None:
    """flanneld runs and is ready on the node: its DaemonSet pod Ready (its readiness probe is /readyz where the
    release serves it, tasks/releases.py FLANNEL_HEALTH), or its systemd unit active."""
    why = ("without flanneld the node has no /run/flannel/subnet.env (or an old one) and no route to the other "
           "nodes' pods: new pods stay in ContainerCreating with `failed to load flannel 'subnet.env' file: open "
           "/run/flannel/subnet.env: no such file or directory`")
    if exp.rollout == "systemd":
        if node.state.unit_active(flannel.UNIT):
            return None
        state = node.state.units.get(flannel.UNIT, ("unknown", ""))[0]
        return broken(f"unit {state}", node.name, "flanneld", f"{flannel.UNIT} is {state}", why,
                      f"systemctl start {flannel.UNIT} on {node.name} (journalctl -u {flannel.UNIT} says why it "
                      f"stopped), or {RERUN}")
    if cluster.flannel_pods is None:
        return broken("cannot ask", node.name, "flanneld", "kubectl on the first control-plane host failed "
                      f"({cluster.kubectl_said})", "the doctor cannot tell whether flanneld runs here",
                      "check that kubectl works there with the kubeconfig setting")
    pods = cluster.flannel_pods.get(node.name, [])
    ready = exp.serves_readyz and " (its /readyz)" or ""
    if any(ok for _, ok, _ in pods):
        return None
    if not pods:
        if exp.rollout == "external":
            node.notes.append("flanneld: no kube-flannel pod here; flannel_rollout is external, so not checked")
            return None
        return broken("no flannel pod", node.name, "flanneld",
                      f"no pod of DaemonSet {flannel.NAMESPACE}/{flannel.DAEMONSET} runs on {node.name}", why,
                      f"kubectl -n {flannel.NAMESPACE} describe ds {flannel.DAEMONSET} says why (a taint the pod "
                      f"does not tolerate, a node selector); {RERUN} applies the DaemonSet")
    name, _, waiting = pods[0]
    return broken("not Ready" + (f" ({waiting})" if waiting else ""), node.name, "flanneld",
                  f"flannel pod {name} is not Ready{ready}" + (f": {waiting}" if waiting else ""), why,
                  f"kubectl -n {flannel.NAMESPACE} logs {name} says why")


def subnet_env(exp: ExpectedNetwork, cluster: Cluster, node: Node) -> Broken | None:
    """/run/flannel/subnet.env exists and matches the node's podCIDR(s) and the net-conf Network(s)."""
    env = node.subnet_env
    if env is None:
        return broken("missing", node.name, "subnet.env", f"{pod_network.SUBNET_ENV} does not exist",
                      "the flannel CNI plugin reads it for every pod: new pods stay in ContainerCreating with "
                      f"`failed to load flannel 'subnet.env' file: open {pod_network.SUBNET_ENV}: no such file or "
                      "directory`", "flanneld writes it once it runs (see the flanneld link); or restart its pod: "
                      f"kubectl -n {flannel.NAMESPACE} delete pod -l {flannel.POD_SELECTOR} --field-selector "
                      f"spec.nodeName={node.name}")
    keys = {4: ("FLANNEL_NETWORK", "FLANNEL_SUBNET"), 6: ("FLANNEL_IPV6_NETWORK", "FLANNEL_IPV6_SUBNET")}
    theirs = [ipaddress.ip_network(c) for c in (cluster.pod_cidrs or {}).get(node.name, [])]
    for version in exp.families:
        network_key, subnet_key = keys[version]
        try:
            network = ipaddress.ip_network(env.get(network_key, ""))
            subnet = ipaddress.ip_interface(env.get(subnet_key, ""))
        except ValueError:
            return broken(f"no {subnet_key}", node.name, "subnet.env",
                          f"{pod_network.SUBNET_ENV} has no valid {network_key} and {subnet_key}",
                          f"pods get no IPv{version} address: the flannel plugin fails reading subnet.env",
                          "restart flanneld on the node (its pod, or the unit)")
        if network != exp.cluster_cidr(version):
            return broken(f"Network {network}", node.name, "subnet.env",
                          f"{network_key}={network}, expected {exp.cluster_cidr(version)} ({exp.source('cluster_cidrs')})",
                          "flanneld runs with another net-conf than the pod network: routes and pod IPs disagree",
                          f"{RERUN} (it renders net-conf from cluster_cidr) and restart flanneld")
        pod_cidr = next((c for c in theirs if c.version == version), None)
        if pod_cidr is not None and subnet.network != pod_cidr:
            return broken(f"{subnet.network} ≠ podCIDR", node.name, "subnet.env",
                          f"{subnet_key}={subnet} but the node's podCIDR is {pod_cidr}",
                          "pods get addresses of another node's subnet: replies go to the wrong node",
                          "restart flanneld on the node: it writes subnet.env from the podCIDR")
    if "FLANNEL_MTU" not in env:
        return broken("no FLANNEL_MTU", node.name, "subnet.env", "FLANNEL_MTU is missing",
                      "the flannel plugin cannot set the pod MTU", "restart flanneld on the node")
    return None


def backend(exp: ExpectedNetwork, cluster: Cluster, node: Node) -> Broken | None:
    """The backend device: flannel.1 (and flannel-v6.1 on dual stack) with the expected VNI, port and MTU for
    vxlan, and a route to every other node's podCIDR (through the device for vxlan, via the node for host-gw)."""
    if not node.view.tools.get("ip"):
        node.notes.append("backend: the ip command is missing, so devices and routes are not checked "
                          "(apt-get install iproute2)")
        return None
    if exp.backend == "vxlan":
        devices = {4: "flannel.1", 6: "flannel-v6.1"}
        mtu = int((node.subnet_env or {}).get("FLANNEL_MTU", "0") or 0)
        for version in exp.families:
            device = devices[version]
            line = node.view.links.get(device)
            if line is None:
                return broken(f"no {device}", node.name, "backend", f"{device} does not exist",
                              "pods reach only pods of their own node: packets to other nodes' pods have no way out",
                              "restart flanneld on the node (it creates the device)")
            vni = re.search(r"\bvxlan id (\d+)", line)
            port = re.search(r"\bdstport (\d+)", line)
            link_mtu = re.search(r"\bmtu (\d+)", line)
            seen = (int(vni.group(1)) if vni else None, int(port.group(1)) if port else None,
                    int(link_mtu.group(1)) if link_mtu else None)
            # flanneld gives the device its FLANNEL_MTU (the interface's MTU less the encapsulation)
            want = (exp.vni, exp.port, mtu or seen[2])
            if seen != want:
                return broken(f"{device} VNI/port/MTU", node.name, "backend",
                              f"{device} has VNI {seen[0]}, port {seen[1]}, MTU {seen[2]}; expected VNI {want[0]}, "
                              f"port {want[1]} ({exp.source('vni')}, {exp.source('port')}), MTU {want[2]} "
                              "(FLANNEL_MTU)",
                              "the other nodes' flanneld encapsulates with other values: packets between nodes "
                              "are dropped", f"delete the device (ip link delete {device}) and restart flanneld")
            if exp.mtu is not None and seen[2] is not None and exp.mtu > seen[2]:
                return broken(f"pod MTU > {seen[2]}", node.name, "backend",
                              f"the pod MTU {exp.mtu} ({exp.source('mtu')}) is above {device}'s MTU {seen[2]}",
                              "pods send packets the device cannot carry: large packets between nodes are dropped",
                              f"set flannel_mtu to at most {seen[2]} and {RERUN}")
    elif exp.backend != "host-gw":
        node.notes.append(f"backend: the {exp.backend} backend's device is not checked, only its routes")
    for other, cidrs in sorted((cluster.pod_cidrs or {}).items()):
        if other == node.name:
            continue
        for cidr in cidrs:
            if not _routed(node.view.routes, ipaddress.ip_network(cidr), exp.backend):
                return broken(f"no route to {other}", node.name, "backend",
                              f"no route to {other}'s podCIDR {cidr}"
                              + (" through flannel.1" if exp.backend == "vxlan" else ""),
                              f"pods here cannot reach pods on {other}", "restart flanneld on the node (it adds "
                              "the routes from the other nodes' leases)")
    return None


def _routed(routes: list[str], cidr, backend: str) -> bool:
    for route in routes:
        words = route.split()
        if words and words[0] == str(cidr):
            return backend != "vxlan" or "flannel" in route
    return False


def cri(exp: ExpectedNetwork, cluster: Cluster, node: Node) -> Broken | None:
    """containerd's effective CRI CNI settings, from its own view (``containerd config dump``): the bin dir(s)
    and conf dir where podnet installs the plugins and the conflist."""
    s, view = node.settings, node.cri
    if not view.dumped:
        return broken("no config dump", node.name, "containerd CNI",
                      "`containerd config dump` failed (containerd missing, or its config unreadable)",
                      "the kubelet cannot start pods through containerd's CRI", RERUN)
    bins = effective_bin_dirs(view)
    conf = next((v for (table, key), v in view.cni.items() if key == "conf_dir"), None)
    wrong = []
    if s.cni_bin_dir not in bins:
        wrong.append(f"bin dirs {bins or '(none)'} leave out {s.cni_bin_dir} (cni_bin_dir)")
    if conf != s.cni_conf_dir:
        wrong.append(f"conf dir {conf} is not {s.cni_conf_dir} (cni_conf_dir)")
    if not wrong:
        return None
    return broken("other dirs", node.name, "containerd CNI", "containerd (config dump) reads " + "; ".join(wrong),
                  "containerd looks for the plugins and conflist where podnet did not put them: "
                  f"`failed to find plugin \"flannel\" in path [{', '.join(bins)}]` or `no network config found in "
                  f"{conf}: cni plugin not initialized`", RERUN + " (it writes containerd's config.toml)")


def effective_bin_dirs(view: CriView) -> list[str]:
    """The bin dirs containerd's CRI plugin looks in: ``bin_dir`` when set (containerd 1.x, 2.0; from 2.1 a
    deprecated key that still wins over ``bin_dirs``: containerd/containerd#11311), else ``bin_dirs``."""
    values = {key: value for (table, key), value in view.cni.items()}
    if values.get("bin_dir"):
        return [values["bin_dir"]]
    return [d.strip() for d in values.get("bin_dirs", "").strip("[]").split(",") if d.strip()]


def conflist(exp: ExpectedNetwork, cluster: Cluster, node: Node) -> Broken | None:
    """The first config of the conf dir (libcni's order) is flannel's, valid JSON, with a cniVersion the
    installed plugins support (tasks/releases.py CNI_SPECS)."""
    s, view = node.settings, node.cri
    if view.first is None:
        return broken("no config", node.name, "conflist", f"no CNI config in {s.cni_conf_dir}",
                      f"pods stay in ContainerCreating: `no network config found in {s.cni_conf_dir}: cni plugin not "
                      "initialized`", RERUN)
    name, content = view.first
    if name != cni.CONFLIST_NAME:
        return broken(f"{name} first", node.name, "conflist",
                      f"{name} sorts ahead of {cni.CONFLIST_NAME} in {s.cni_conf_dir}",
                      "containerd loads only the first config: new pods get that network, not flannel's",
                      f"{RERUN} (it renames it to {name}{cni.MOVED_ASIDE_SUFFIX}), or move it out of {s.cni_conf_dir}")
    try:
        conf = json.loads(content)
        version = conf["cniVersion"]
    except (ValueError, KeyError, TypeError):
        return broken("not JSON", node.name, "conflist", f"{name} is not a valid conflist",
                      "containerd cannot load it: `cni plugin not initialized`", RERUN)
    supported = set(cni_spec_versions("cni_plugins", s.cni_plugins_version) or ()) \
        & set(cni_spec_versions("flannel_cni_plugin", s.flannel_cni_plugin_version) or ())
    if version not in supported:
        return broken(f"cniVersion {version}", node.name, "conflist",
                      f"{name} has cniVersion {version}; the installed plugins read {', '.join(sorted(supported))}",
                      f"pods fail with `incompatible CNI versions; config is \"{version}\"`", RERUN)
    return None


def plugins(exp: ExpectedNetwork, cluster: Cluster, node: Node) -> Broken | None:
    """Every plugin ``type`` the first config names (and flannel's delegate: bridge with host-local) exists and
    is executable in one of containerd's effective bin dirs."""
    if node.cri.first is None:
        return None
    try:
        named = [p["type"] for p in json.loads(node.cri.first[1])["plugins"]]
    except (ValueError, KeyError, TypeError):
        return None  # said by the conflist link
    if "flannel" in named:
        named += ["bridge", "host-local"]
    bins = effective_bin_dirs(node.cri)
    present = set().union(*(node.cri.bins.get(d, set()) for d in bins)) if bins else set()
    missing = [t for t in dict.fromkeys(named) if t not in present]
    if not missing:
        return None
    return broken(f"no {missing[0]}", node.name, "plugins",
                  f"no executable {', '.join(missing)} in {', '.join(bins) or '(no bin dir)'}",
                  f"new pods stay in ContainerCreating: `failed to find plugin \"{missing[0]}\" in path [{', '.join(bins)}]`",
                  RERUN + " (it installs the plugins)")


def kernel_prereqs(exp: ExpectedNetwork, cluster: Cluster, node: Node) -> Broken | None:
    """br_netfilter loaded, bridge-nf-call and ip_forward (and IPv6 forwarding on dual stack) on."""
    wrong = [f"{name} not loaded" for name in ("br_netfilter",) if not node.state.features.get(name)]
    wrong += [f"{key}={node.state.sysctls.get(key)}" for key, want in kernel.parameters(node.settings).items()
              if node.state.sysctls.get(key) != want]
    if not wrong:
        return None
    return broken(wrong[0], node.name, "kernel", "; ".join(wrong),
                  "without forwarding, pods cannot reach other nodes; without bridge-nf-call, Service traffic "
                  "between pods of one node bypasses kube-proxy's rules", RERUN + " (it loads and persists them)")


def bridge(exp: ExpectedNetwork, cluster: Cluster, node: Node) -> Broken | None:
    """cni0's address (each family) is the gateway of the node's subnet (subnet.env); no cni0 yet is fine (the
    bridge plugin makes it with the first pod)."""
    try:
        addresses = pod_network.cni0_addresses(node.state, node.name)
    except RemoteAnswerError as refused:
        return broken("unreadable", node.name, "cni0", str(refused), "", "")
    if addresses is None or node.subnet_env is None:
        return None
    for version, key in ((4, "FLANNEL_SUBNET"), (6, "FLANNEL_IPV6_SUBNET")):
        if version not in exp.families or key not in node.subnet_env:
            continue
        gateway = ipaddress.ip_interface(node.subnet_env[key])
        gateway = ipaddress.ip_interface(f"{next(gateway.network.hosts())}/{gateway.network.prefixlen}")
        ours = [a for a in addresses if a.version == version and not a.ip.is_link_local]
        wrong = [a for a in ours if a != gateway]
        if wrong:
            return broken(f"has {wrong[0]}", node.name, "cni0",
                          f"cni0 has {', '.join(map(str, wrong))}, but the node's subnet gateway is {gateway}",
                          f"new pods stay in ContainerCreating: `failed to set bridge addr: \"cni0\" already has an "
                          f"IP address different from {gateway}`",
                          f"on {node.name}, once no pod uses it: ip link delete cni0 (the bridge plugin makes it "
                          "again with the right address); or set allow_pod_network_change and " + RERUN)
    return None


def host_local(exp: ExpectedNetwork, cluster: Cluster, node: Node) -> Broken | None:
    """host-local's allocations (files in /var/lib/cni/networks/cbr0) match the running pod sandboxes: leaked
    ones counted; the pool's use in percent."""
    if not node.view.tools.get("ctr") or not node.view.sandboxes_known:
        node.notes.append("host-local: " + ("ctr is missing" if not node.view.tools.get("ctr") else
                                            "containerd did not answer ctr") + ", so leases are not matched to sandboxes")
        return None
    leaked = sorted(ip for ip, owner in node.view.leases.items() if owner not in node.view.sandboxes)
    if not leaked:
        return None
    use = pool_use(exp, node)
    if exp.dual_stack:
        node.notes.append("host-local: the pool's use is counted for IPv4 only (an IPv6 pool does not run out)")
    return broken(f"{len(leaked)} leaked", node.name, "host-local",
                  f"{len(leaked)} address(es) held by no sandbox: {', '.join(leaked[:8])}"
                  + ("..." if len(leaked) > 8 else "") + (f"; the pool is {use}% used" if use is not None else ""),
                  "once the pool is used up, new pods stay in ContainerCreating: `failed to allocate for range 0: "
                  "no IP addresses available in range set`",
                  f"on {node.name}: cd {cni.HOST_LOCAL_RECORDS} && rm -f {' '.join(leaked)}")


def pool_use(exp: ExpectedNetwork, node: Node) -> int | None:
    """Percent of the node's IPv4 host-local pool in use (network, gateway and broadcast not allocatable)."""
    subnet = (node.subnet_env or {}).get("FLANNEL_SUBNET")
    if subnet is None:
        return None
    size = ipaddress.ip_interface(subnet).network.num_addresses - 3
    used = sum(1 for ip in node.view.leases if ipaddress.ip_address(ip).version == 4)
    return round(100 * used / size) if size > 0 else None


Check = Callable[[ExpectedNetwork, Cluster, Node], "Broken | None"]
# (column, check), in the order a pod's IP takes them; the datapath (tasks/doctor/datapath.py) comes last.
LINKS: tuple[tuple[str, Check], ...] = (
    ("node IPAM", node_ipam),
    ("podCIDR", pod_cidrs),
    ("flanneld", flanneld),
    ("subnet.env", subnet_env),
    ("backend", backend),
    ("containerd CNI", cri),
    ("conflist", conflist),
    ("plugins", plugins),
    ("kernel", kernel_prereqs),
    ("cni0", bridge),
    ("host-local", host_local),
)
