"""
A change of the pod network that a live cluster cannot follow by itself, and the stale
``cni0`` bridge it leaves behind.

A node's ``spec.podCIDR`` is given once and never changes: kube-controller-manager's range
allocator only fills it in for nodes without one (pkg/controller/nodeipam/ipam/
range_allocator.go) and the API server refuses any other update (pkg/apis/core/validation,
ValidateNodeUpdate: "node updates may not change podCIDR except from \"\" to valid"). So a
new ``cluster_cidr`` or ``node_cidr_mask_size`` (or their IPv6 twins) that the nodes'
podCIDRs do not fit needs every such node registered again, and the ``cni0`` bridge the
bridge plugin made with the old gateway removed (it refuses to reuse a bridge holding
another address: "cni0 already has an IP address different from ..."), and the pods
recreated.

podnet sees this before any host changes (the first control-plane host lists every node's
podCIDRs in the probe) and refuses, saying what the change needs, unless the operator sets
``allow_pod_network_change``: then podnet, after the new node IPAM flags are live, deletes
the pods with addresses from the old network on those nodes and the Node objects, restarts
their kubelets so they register again and get podCIDRs from the new network, and removes
each node's old ``cni0`` once no pod uses it. On every node,
a ``cni0`` whose address is not the gateway of the node's current subnet (flanneld's
subnet.env) is reported, and removed when the setting allows it and no pod uses it.
"""

from __future__ import annotations

import base64
import ipaddress
import shlex

from pyinfra import logger

from tasks.engine import answers, ops
from tasks.engine.answers import BadField, RemoteAnswerError
from tasks.engine.findings import Finding, error, refuse, say, warning
from tasks.engine.polling import poll
from tasks.engine.context import HostContext, Step
from tasks.errors import PodnetError
from tasks.engine.probe import NodeState, ProbeRequest
from tasks.settings import Settings

SUBNET_ENV = "/run/flannel/subnet.env"
BRIDGE = "cni0"
POLL_SECONDS = 2
# Prints "addr <address/prefix>" per IPv4 address of cni0 and "ports <n>" (veths attached, one per pod).
# ip(8) is the one process it starts: the fourth field of each line is read and the ports are counted by the shell.
CNI0_COMMAND = (f"[ -d /sys/class/net/{BRIDGE} ] && {{ ip -o -4 addr show dev {BRIDGE} | "
                "while read -r _ _ _ a _; do echo \"addr $a\"; done; "
                f"n=0; for p in /sys/class/net/{BRIDGE}/brif/*; do [ -e \"$p\" ] && n=$((n + 1)); done; echo ports $n; }}")


class PodNetworkChangeError(PodnetError, ValueError):
    """Pod network settings that the nodes' podCIDRs do not fit, without allow_pod_network_change."""


def asks_pod_cidrs(s: Settings, first_control_plane: bool) -> bool:
    """The first control-plane host lists every node's podCIDRs for a rollout podnet makes (DaemonSet or
    systemd): this module checks them against the settings, flannel's rollout waits for them."""
    return first_control_plane and s.flannel_rollout in ("daemonset", "systemd")


def node_pod_cidrs_command(s: Settings) -> str:
    """Prints "<node> [<podCIDR> ...]" per node (spec.podCIDRs: one per IP family)."""
    return (f"{s.kubectl} get nodes -o "
            "jsonpath='{range .items[*]}{.metadata.name}{\" \"}{.spec.podCIDRs[*]}{\"\\n\"}{end}'")


def probe_request(s: Settings, first_control_plane: bool = False) -> ProbeRequest:
    """Every node: flanneld's subnet.env and cni0's address and ports; the first control-plane host
    (``asks_pod_cidrs``): every node's podCIDRs."""
    request = ProbeRequest(contents=[SUBNET_ENV], queries={"cni0": CNI0_COMMAND})
    if asks_pod_cidrs(s, first_control_plane):
        request.queries["pod_cidrs"] = node_pod_cidrs_command(s)
    return request


def fits(s: Settings, cidr: str) -> bool:
    """A podCIDR that the pod network settings could have given: inside the cluster CIDR of its
    family, with that family's node mask."""
    try:
        network = ipaddress.ip_network(cidr)
    except ValueError:
        return False
    if network.version == 4:
        cluster, mask = s.cluster_cidr, s.node_cidr_mask_size
    else:
        cluster, mask = s.cluster_cidr_ipv6, s.node_cidr_mask_size_ipv6
    return cluster is not None and network.prefixlen == mask and network.subnet_of(cluster)  # type: ignore[arg-type]


POD_CIDRS_QUERY = "pod_cidrs"


def _pod_cidrs_line(line: str) -> tuple[str, list[str]]:
    """One line of node_pod_cidrs_command: a Node name (RFC 1123 subdomain), then at most one
    podCIDR per IP family, each a network in CIDR notation (the API server's rules for spec.podCIDRs)."""
    name, _, rest = line.partition(" ")
    cidrs = rest.split(" ") if rest else []
    answers.object_name(name)
    networks = [answers.network(cidr) for cidr in cidrs]
    if len(networks) > 2 or len({n.version for n in networks}) != len(networks):
        raise BadField("more than one podCIDR per IP family")
    return name, [str(n) for n in networks]


def pod_cidrs(host_name: str, lines: list[str]) -> dict[str, list[str]]:
    """Node name -> its podCIDRs, from node_pod_cidrs_command's stdout; RemoteAnswerError naming the
    host and the line when a line does not fit (a Node name, then podCIDRs) or a Node is listed twice."""
    found: dict[str, list[str]] = {}
    for name, cidrs in answers.records(host_name, f"kubectl get nodes ({POD_CIDRS_QUERY})", lines, _pod_cidrs_line):
        if name in found:
            raise RemoteAnswerError(answers.problem(host_name, f"kubectl get nodes ({POD_CIDRS_QUERY})", name,
                                                    "Node listed twice"))
        found[name] = cidrs
    return found


def nodes_not_fitting(s: Settings, lines: list[str], host_name: str = "") -> dict[str, list[str]]:
    """Node name -> its podCIDRs that the settings do not fit (from ``name cidr [cidr]`` lines, each
    checked by ``pod_cidrs``: nothing is decided from a line that does not fit)."""
    stale: dict[str, list[str]] = {}
    for name, cidrs in pod_cidrs(host_name, lines).items():
        wrong = [c for c in cidrs if not fits(s, c)]
        if wrong:
            stale[name] = wrong
    return stale


def parse_subnet_env(content: bytes) -> ipaddress.IPv4Interface | None:
    """The subnet with its gateway that flanneld wrote to subnet.env (FLANNEL_SUBNET), if any."""
    for line in content.decode(errors="replace").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "FLANNEL_SUBNET":
            try:
                return ipaddress.IPv4Interface(value.strip())
            except ValueError:
                return None
    return None


def subnet_of_node(node: NodeState) -> ipaddress.IPv4Interface | None:
    """The node's current subnet with its gateway, as flanneld wrote it (FLANNEL_SUBNET), if any."""
    return parse_subnet_env(node.contents.get(SUBNET_ENV, b""))


def _cni0_line(line: str) -> tuple[str, str | int]:
    what, value = answers.fields(line, 2, " ")
    if what == "addr":
        address = answers.interface_address(value)
        if address.version != 4:
            raise BadField("not an IPv4 address")
        return what, str(address)
    if what == "ports":
        return what, answers.decimal(value, 0, None, "count of attached ports")
    raise BadField("neither 'addr <address/prefix>' nor 'ports <count>'")


def parse_cni0(lines: list[str], host_name: str = "") -> tuple[list[str], int]:
    """(IPv4 addresses, pods attached) from CNI0_COMMAND's output; RemoteAnswerError naming the host
    and the line when a line does not fit (``addr <address/prefix>``, one ``ports <count>``)."""
    records = answers.records(host_name, f"{BRIDGE}'s addresses and ports", lines, _cni0_line)
    addresses = [str(value) for what, value in records if what == "addr"]
    ports = [int(value) for what, value in records if what == "ports"]
    if len(ports) > 1:
        raise RemoteAnswerError(answers.problem(host_name, f"{BRIDGE}'s addresses and ports", "\n".join(lines),
                                                "more than one 'ports' line"))
    return addresses, (ports or [0])[0]


def cni0_state(node: NodeState, host_name: str = "") -> tuple[list[str], int] | None:
    """(cni0's IPv4 addresses, pods attached), or None without a cni0."""
    rc, lines = node.queries.get("cni0", (1, []))
    if rc != 0 or not lines:
        return None
    return parse_cni0(lines, host_name)


def stale_cni0(node: NodeState, host_name: str = "") -> str | None:
    """Why cni0 is stale (an address other than the current subnet's gateway), or None."""
    subnet, bridge = subnet_of_node(node), cni0_state(node, host_name)
    if subnet is None or bridge is None:
        return None
    addresses, ports = bridge
    wrong = [a for a in addresses if a != str(subnet)]
    if not wrong:
        return None
    used = f"{ports} pod(s) still use it" if ports else "no pod uses it"
    return (f"{BRIDGE} has {', '.join(wrong)}, but this node's subnet is {subnet} ({SUBNET_ENV}); new pods fail with "
            f"'{BRIDGE} already has an IP address different from {subnet}' until it is removed ({used})")


def change_problem(s: Settings, stale: dict[str, list[str]]) -> str:
    held = ", ".join(f"{name} {' '.join(cidrs)}" for name, cidrs in sorted(stale.items()))
    v6 = (f", cluster_cidr_ipv6 '{s.cluster_cidr_ipv6}' with node_cidr_mask_size_ipv6 {s.node_cidr_mask_size_ipv6}"
          if s.cluster_cidr_ipv6 is not None else "")
    return (f"cluster_cidr: nodes hold podCIDRs that cluster_cidr '{s.cluster_cidr}' with node_cidr_mask_size "
            f"{s.node_cidr_mask_size}{v6} does not fit ({held}); a node's podCIDR never changes by itself, so this "
            "pod network change needs each of these nodes registered again (its Node object deleted and its kubelet "
            f"restarted), the old {BRIDGE} bridge on each node removed and every pod recreated. Keep the settings the "
            "nodes were given, or set allow_pod_network_change = True to let podnet re-register the nodes and remove "
            f"the old {BRIDGE} bridges (README: Changing the pod network)")


def stale_nodes(s: Settings, node: NodeState, host_name: str, first_control_plane: bool) -> dict[str, list[str]]:
    """On the first control-plane host (``asks_pod_cidrs``), the nodes whose podCIDRs the settings do not fit
    (RemoteAnswerError for an answer that does not fit)."""
    if not asks_pod_cidrs(s, first_control_plane):
        return {}
    rc, lines = node.queries.get(POD_CIDRS_QUERY, (1, []))
    return nodes_not_fitting(s, lines, host_name) if rc == 0 else {}


def findings(s: Settings, node: NodeState, host_name: str, first_control_plane: bool) -> list[Finding]:
    """
    On the first control-plane host, nodes whose podCIDRs the settings do not fit: an error
    (PodNetworkChangeError) unless allow_pod_network_change, then a warning that they are registered
    again. On every node, a stale cni0 (``stale_cni0``): a warning.
    """
    found = []
    try:
        stale = stale_nodes(s, node, host_name, first_control_plane)
    except RemoteAnswerError as refused:
        return [error(str(refused), RemoteAnswerError, text=str(refused))]
    if stale and not s.allow_pod_network_change:
        found.append(error("", PodNetworkChangeError, text=f"{host_name}: {change_problem(s, stale)}"))
    elif stale:
        found.append(warning(f"nodes hold podCIDRs outside the new pod network ({', '.join(sorted(stale))})",
                             where=host_name, why="allow_pod_network_change is set",
                             fix="podnet registers them again after the new node IPAM flags"))
    problem = stale_cni0(node, host_name)
    if problem:
        fix = ("podnet removes it once no pod uses it (allow_pod_network_change)" if s.allow_pod_network_change else
               f"remove it (`ip link delete {BRIDGE}`) once no pod uses it, or set allow_pod_network_change = True to "
               "let podnet do it")
        found.append(warning(problem, where=host_name, text=f"{host_name}: {problem}; {fix}"))
    return found


def checked(s: Settings, node: NodeState, host_name: str, first_control_plane: bool) -> dict[str, list[str]]:
    """
    While planning (``findings``): on the first control-plane host, the nodes whose podCIDRs the settings do
    not fit (PodNetworkChangeError unless allow_pod_network_change); on every node, a stale
    cni0 reported (without the setting; with it, podnet removes it). Returns the nodes to register again
    (empty when nothing is to change).
    """
    found = findings(s, node, host_name, first_control_plane)
    refuse(found)
    if not s.allow_pod_network_change:
        say(found)
    return stale_nodes(s, node, host_name, first_control_plane)


def this_node_is_leaving_its_subnet(s: Settings, node: NodeState) -> bool:
    """The node's current subnet (flanneld's subnet.env) does not fit the settings: it registers again."""
    subnet = subnet_of_node(node)
    return subnet is not None and not fits(s, str(subnet.network))


def registered_again(s: Settings, node: NodeState, host_name: str, stale_nodes: dict[str, list[str]]) -> None:
    """With allow_pod_network_change, after the new node IPAM flags: the first control-plane host
    deletes the Nodes whose podCIDRs the settings do not fit (``stale_nodes``, from ``checked``),
    and every node whose current subnet does not fit restarts its kubelet to register again."""
    if not s.allow_pod_network_change:
        return
    names = sorted(stale_nodes)
    ops.python_step(name="pod network: nodes registered again in the new pod network",
                    function=delete_nodes_after_new_ipam, args=(s, names),
                    reason=f"deleting Node {', '.join(names)} (podCIDRs outside the new pod network)" if names else None)
    leaving = this_node_is_leaving_its_subnet(s, node)
    ops.shell_when(name="pod network: kubelet restarted to register again",
                   commands=["systemctl restart kubelet"],
                   reason=f"{host_name} holds {subnet_of_node(node)} from the old pod network" if leaving else None)


def old_bridge_removed(s: Settings, node: NodeState, host_name: str = "") -> None:
    """With allow_pod_network_change, after flanneld: cni0 of the old pod network removed once no pod uses it."""
    if not s.allow_pod_network_change:
        return
    stale = stale_cni0(node, host_name)
    leaving = this_node_is_leaving_its_subnet(s, node)
    ops.python_step(name=f"pod network: old {BRIDGE} removed", function=remove_old_bridge, args=(s,),
                    reason=stale or (f"{BRIDGE} belongs to the old pod network" if leaving else None))


def _pod_line(line: str) -> tuple[str, str, str, bool]:
    """One line of the pod listing: spec.nodeName (empty for a pod not scheduled yet), namespace, name,
    spec.hostNetwork (empty when unset)."""
    node, namespace, name, host_network = answers.fields(line, 4, " ")
    if node:
        answers.object_name(node)
    if host_network not in ("", "true", "false"):
        raise BadField(f"{answers.shown(host_network)} is not a spec.hostNetwork value")
    return node, answers.namespace(namespace), answers.object_name(name), host_network == "true"


def delete_nodes_after_new_ipam(state, host, connector_arguments, s: Settings, names: list[str]) -> bool:
    """Wait (bounded) until kube-controller-manager runs with the new --cluster-cidr, then delete the
    pods of the old pod network on these nodes (not host-network ones) and the Nodes."""
    flag = f"--cluster-cidr={s.cluster_cidr}"

    def not_started() -> bool:
        ok, output = host.run_shell_command("tr '\\0' ' ' < /proc/$(pgrep -o -x kube-controller)/cmdline",
                                            **connector_arguments)
        return not (ok and flag in " ".join(output.stdout_lines).split())

    if poll(not_started, s.flannel_rollout_timeout, POLL_SECONDS):
        raise PodNetworkChangeError(f"kube-controller-manager on {host.name} did not start with {flag} within "
                                    f"{s.flannel_rollout_timeout}s; no Node was deleted")
    kubectl = s.kubectl
    # The pods with addresses from the old network go first (a Node that registers again at once
    # keeps its pods otherwise); host-network pods (control plane, kube-proxy, flanneld) stay.
    ok, output = host.run_shell_command(
        f"{kubectl} get pods --all-namespaces -o jsonpath='{{range .items[*]}}{{.spec.nodeName}} "
        "{.metadata.namespace} {.metadata.name} {.spec.hostNetwork}{\"\\n\"}{end}'", **connector_arguments)
    if not ok:
        raise PodNetworkChangeError(f"listing pods failed: {ops.said(output.stderr_lines)}")
    pods = [(node, namespace, name) for node, namespace, name, host_network in
            answers.records(host.name, "kubectl get pods", output.stdout_lines, _pod_line)
            if node in names and not host_network]
    for _, namespace, name in pods:
        ok, output = host.run_shell_command(f"{kubectl} -n {shlex.quote(namespace)} delete pod {shlex.quote(name)} "
                                            "--wait=false", **connector_arguments)
        if not ok:
            raise PodNetworkChangeError(f"deleting pod {namespace}/{name} failed: "
                                        f"{ops.said(output.stderr_lines)}")
    if pods:
        logger.info(f"    {host.name}: deleted {len(pods)} pod(s) of the old pod network: "
                    + ", ".join(f"{ns}/{name}" for _, ns, name in pods))
    ok, output = host.run_shell_command(f"{kubectl} delete node {' '.join(shlex.quote(n) for n in names)} "
                                        "--wait=true --timeout=60s", **connector_arguments)
    if not ok:
        raise PodNetworkChangeError(f"deleting Node {', '.join(names)} failed: {ops.said(output.stderr_lines)}")
    return True


def remove_old_bridge(state, host, connector_arguments, s: Settings) -> bool:
    """
    Once flanneld wrote this node's new subnet and no pod is attached to cni0 any more (the
    pods of a re-registered node are removed by its kubelet), delete cni0 if its address is
    not the new gateway; the bridge plugin makes it again with the right one for the next pod.
    Bounded by flannel_rollout_timeout; a bridge still in use then is reported, not removed.
    """
    def not_yet() -> str | None:
        """None once cni0 is gone or right; what is still awaited otherwise."""
        ok, output = host.run_shell_command(
            f"echo subnetenv $(base64 -w0 {SUBNET_ENV} 2>/dev/null); {CNI0_COMMAND} || echo absent",
            **connector_arguments)
        lines = output.stdout_lines if ok else []
        if lines[-1:] == ["absent"]:
            return None
        encoded = next((line.split()[1] for line in lines[:1]
                        if line.startswith("subnetenv ") and len(line.split()) == 2), "")
        try:
            subnet = parse_subnet_env(base64.b64decode(encoded, validate=True))
        except ValueError:
            subnet = None
        addresses, ports = parse_cni0(lines[1:], host.name)
        fresh = subnet is not None and fits(s, str(subnet.network))
        if fresh and addresses == [str(subnet)]:
            return None  # already the right bridge
        if fresh and ports == 0:
            ok, output = host.run_shell_command(f"ip link delete {BRIDGE}", **connector_arguments)
            if not ok:
                raise PodNetworkChangeError(f"{host.name}: ip link delete {BRIDGE} failed: "
                                            f"{ops.said(output.stderr_lines)}")
            logger.info(f"    {host.name}: removed {BRIDGE} ({', '.join(addresses)}); new pods get {subnet}")
            return None
        return (f"subnet.env {subnet or 'missing'}, {BRIDGE} {', '.join(addresses) or 'without address'}, "
                f"{ports} pod(s)")

    last = poll(not_yet, s.flannel_rollout_timeout, POLL_SECONDS)
    if last:
        raise PodNetworkChangeError(f"{host.name}: {BRIDGE} of the old pod network still in use after "
                                    f"{s.flannel_rollout_timeout}s ({last}); delete its pods, then run again")
    return True


# --- the steps ----------------------------------------------------------------------------


def _probe(ctx: HostContext) -> ProbeRequest:
    return probe_request(ctx.settings, ctx.is_first_control_plane)


def _check(ctx: HostContext) -> None:
    ctx.nodes_to_register_again = checked(ctx.settings, ctx.node, ctx.host_name, ctx.is_first_control_plane)


def _findings(ctx: HostContext) -> list[Finding]:
    return findings(ctx.settings, ctx.node, ctx.host_name, ctx.is_first_control_plane)


REGISTRATION = Step(
    "pod network: a change the nodes' podCIDRs do not fit refused (or, with allow_pod_network_change, those nodes "
    "registered again); a stale cni0 reported",
    probe=_probe,
    findings=_findings,
    check=_check,
    apply=lambda ctx: registered_again(ctx.settings, ctx.node, ctx.host_name, ctx.nodes_to_register_again),
)
OLD_BRIDGE = Step(
    "pod network: the old pod network's cni0 removed once no pod uses it (allow_pod_network_change)",
    probe=_probe,
    apply=lambda ctx: old_bridge_removed(ctx.settings, ctx.node, ctx.host_name),
)


# --- reset ------------------------------------------------------------------------------------


def pods_losing_network_findings(node: NodeState, host_name: str) -> list[Finding]:
    """A warning naming how many pods attached to cni0 lose their network with a reset."""
    bridge = cni0_state(node, host_name)
    if not (bridge and bridge[1]):
        return []
    what = f"{bridge[1]} pod(s) attached to {BRIDGE} lose their network with this reset"
    fix = "recreate them once a deploy has brought the pod network back (or drain the node before the reset)"
    return [warning(what, where=host_name, why="podnet does not delete them", fix=fix,
                    text=f"{host_name}: {what}; podnet does not delete them: {fix}")]


def pods_losing_network(node: NodeState, host_name: str) -> None:
    """Name the pods a reset takes the network from (podnet never deletes pods)."""
    say(pods_losing_network_findings(node, host_name))


RESET_WARNING = Step(
    "reset: pods attached to cni0 named",
    probe=lambda ctx: ProbeRequest(queries={"cni0": CNI0_COMMAND}),
    findings=lambda ctx: pods_losing_network_findings(ctx.node, ctx.host_name),
    check=lambda ctx: pods_losing_network(ctx.node, ctx.host_name),
    apply=lambda ctx: None,
)
