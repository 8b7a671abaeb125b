"""
flanneld: net-conf.json from the settings (its Network is the same value that feeds
kube-controller-manager's --cluster-cidr), rolled out as the kube-flannel DaemonSet
(default), as a systemd service on every node, or left to something else (external).
After a rollout or a node IPAM change, every node must have a podCIDR inside the cluster CIDR.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import shlex
import time

from tasks import ops
from tasks.desired import DesiredFile, local_file, render, text_file
from tasks.errors import PodnetError
from tasks.probe import NodeState, ProbeRequest
from tasks.settings import Settings

NAMESPACE = "kube-flannel"
DAEMONSET = "kube-flannel"
MANIFEST_PATH = "/etc/podnet/kube-flannel.yml"
NET_CONF_PATH = "/etc/kube-flannel/net-conf.json"
FLANNELD_PATH = "/usr/local/bin/flanneld"
UNIT = "flanneld.service"
UNIT_PATH = "/etc/systemd/system/flanneld.service"
MANIFEST_HASH_ANNOTATION = "podnet.io/manifest-sha256"
POD_IP_ENV = "POD_IP"
POLL_SECONDS = 5


class PodCidrError(PodnetError, RuntimeError):
    """A node without a podCIDR inside the cluster CIDR."""


def net_conf(s: Settings) -> dict:
    backend: dict = {"Type": s.flannel_backend}
    if s.flannel_backend == "vxlan":
        backend.update(VNI=s.flannel_vni, Port=s.effective_flannel_port)
    elif s.flannel_backend == "wireguard":
        backend["ListenPort"] = s.effective_flannel_port
    conf: dict = {"Network": str(s.cluster_cidr), "EnableIPv4": True}
    if s.cluster_cidr_ipv6 is not None:
        conf.update(EnableIPv6=True, IPv6Network=str(s.cluster_cidr_ipv6))
    conf["Backend"] = backend
    return conf


def net_conf_json(s: Settings) -> str:
    return json.dumps(net_conf(s), indent=2) + "\n"


def flanneld_args(s: Settings, kubeconfig: str | None = None, net_config_path: str | None = None,
                  iface: str | None = None) -> list[str]:
    args = ["--ip-masq", "--kube-subnet-mgr"]
    if kubeconfig:
        args.append(f"--kubeconfig-file={kubeconfig}")
    if net_config_path:
        args.append(f"--net-config-path={net_config_path}")
    iface = iface or s.flannel_iface
    if iface:
        args.append(f"--iface={iface}")
    return args


def daemonset_iface(s: Settings) -> tuple[str | None, list[tuple[str, str]]]:
    """
    The DaemonSet's --iface (one value for every node) and the downward-API env it needs.
    A flannel_iface that is the node's own node_ip becomes each node's own address: the
    pod's status.podIP, which for a host-network pod is the kubelet's node IP (--node-ip).
    """
    if s.flannel_iface_is_node_ip:
        return f"$({POD_IP_ENV})", [(POD_IP_ENV, "status.podIP")]
    return s.flannel_iface, []


def render_manifest(s: Settings) -> str:
    """The DaemonSet manifest; a net-conf change changes the pod template, so the pods roll."""
    conf = net_conf_json(s)
    iface, field_env = daemonset_iface(s)
    context = dict(namespace=NAMESPACE, daemonset=DAEMONSET, image=s.flannel_image,
                   args=flanneld_args(s, iface=iface), field_env=field_env,
                   net_conf_json=conf.rstrip("\n"), net_conf_sha256=hashlib.sha256(conf.encode()).hexdigest())
    unsigned = render("flannel/kube-flannel.yml.j2", manifest_sha256="", **context)
    return render("flannel/kube-flannel.yml.j2", manifest_sha256=hashlib.sha256(unsigned.encode()).hexdigest(),
                  **context)


def manifest_sha256(manifest: str) -> str:
    for line in manifest.splitlines():
        if MANIFEST_HASH_ANNOTATION in line:
            return line.split(":", 1)[1].strip().strip('"')
    raise AssertionError("manifest without its hash annotation")


def kubectl(s: Settings) -> str:
    return f"kubectl --kubeconfig={shlex.quote(s.kubeconfig)}"


def checks_pod_cidrs(s: Settings, first_control_plane: bool) -> bool:
    """The first control-plane host checks every node's podCIDR for a rollout podnet makes
    (DaemonSet or systemd): flanneld's kube subnet manager needs one on each node."""
    return first_control_plane and s.flannel_rollout in ("daemonset", "systemd")


def probe_request(s: Settings, first_control_plane: bool) -> ProbeRequest:
    request = ProbeRequest()
    if s.flannel_rollout == "daemonset" and first_control_plane:
        request.queries["flannel_manifest"] = (
            f"{kubectl(s)} -n {NAMESPACE} get ds {DAEMONSET} --ignore-not-found "
            f"-o jsonpath='{{.metadata.annotations.podnet\\.io/manifest-sha256}}'")
        request.hashes.append(MANIFEST_PATH)
    elif s.flannel_rollout == "systemd":
        request.hashes += [FLANNELD_PATH, UNIT_PATH, NET_CONF_PATH]
        request.units.append(UNIT)
    if checks_pod_cidrs(s, first_control_plane):
        request.queries["pod_cidrs"] = node_pod_cidrs_command(s)
    return request


def node_pod_cidrs_command(s: Settings) -> str:
    return (f"{kubectl(s)} get nodes -o "
            "jsonpath='{range .items[*]}{.metadata.name}{\" \"}{.spec.podCIDR}{\"\\n\"}{end}'")


def pod_cidr_problems(s: Settings, lines: list[str]) -> list[str]:
    """Nodes whose spec.podCIDR is missing or outside the cluster CIDR."""
    problems = []
    flags = (f"--allocate-node-cidrs=true --cluster-cidr={s.cluster_cidr} "
             f"--node-cidr-mask-size={s.node_cidr_mask_size}")
    for line in lines:
        name, _, cidr = line.strip().partition(" ")
        if not name:
            continue
        cidr = cidr.strip()
        if not cidr:
            problems.append(f"node {name} has no spec.podCIDR (pod cidr not assigned): check that "
                            f"kube-controller-manager runs with {flags}")
            continue
        try:
            inside = ipaddress.ip_network(cidr).subnet_of(s.cluster_cidr)
        except (ValueError, TypeError):
            inside = False
        if not inside:
            problems.append(f"node {name} has spec.podCIDR {cidr}, outside cluster_cidr {s.cluster_cidr}: "
                            f"kube-controller-manager's --cluster-cidr must equal flannel's Network; check {flags}")
    return problems


def wait_for_pod_cidrs(state, host, connector_arguments, s: Settings) -> bool:
    """Poll (bounded by flannel_rollout_timeout) until every node has a podCIDR in the cluster CIDR."""
    deadline = time.monotonic() + s.flannel_rollout_timeout
    problems = ["no answer from kubectl"]
    while time.monotonic() < deadline:
        ok, output = host.run_shell_command(node_pod_cidrs_command(s), **connector_arguments)
        lines = output.stdout_lines if ok else []
        problems = pod_cidr_problems(s, lines) if lines else ["kubectl get nodes returned no nodes"]
        if not problems:
            return True
        time.sleep(POLL_SECONDS)
    raise PodCidrError("; ".join(problems))


def systemd_files(s: Settings, flanneld_binary) -> tuple[list[DesiredFile], DesiredFile]:
    exec_start = " ".join([FLANNELD_PATH, *flanneld_args(s, s.kubeconfig, NET_CONF_PATH)])
    unit = text_file(UNIT_PATH, render("flannel/flanneld.service.j2", node_name="%H", exec_start=exec_start))
    return [local_file(FLANNELD_PATH, flanneld_binary), text_file(NET_CONF_PATH, net_conf_json(s))], unit


def apply_daemonset(s: Settings, node: NodeState, ipam_changed: bool, cluster_created: bool = False) -> None:
    """
    Apply kube-flannel from the first control-plane host and check every node's podCIDR.
    ``cluster_created``: kubeadm init creates the cluster in this run (cluster_bootstrap), so
    kubectl could not be asked while planning and nothing is deployed yet.
    """
    manifest = render_manifest(s)
    applied = (0, []) if cluster_created else node.queries.get("flannel_manifest", (1, []))
    if applied[0] != 0:
        raise PodCidrError(f"kubectl on the first control-plane host failed: {' '.join(applied[1])[:300]}; "
                           f"check that kubectl is installed and kubeconfig {s.kubeconfig} works")
    current_hash = applied[1][0].strip() if applied[1] else ""
    needs_apply = current_hash != manifest_sha256(manifest)
    ops.files_installed(name="flannel: kube-flannel manifest", files=[text_file(MANIFEST_PATH, manifest)],
                        current=node)
    ops.shell_when(
        name="flannel: DaemonSet applied and rolled out",
        commands=[f"{kubectl(s)} apply -f {MANIFEST_PATH}",
                  f"{kubectl(s)} -n {NAMESPACE} rollout status ds/{DAEMONSET} --timeout={s.flannel_rollout_timeout}s"],
        reason=("applying kube-flannel: " + ("not deployed yet" if not current_hash else "manifest changed"))
        if needs_apply else None,
    )
    pod_cidrs_checked(s, node, changed=needs_apply or ipam_changed)


def pod_cidrs_checked(s: Settings, node: NodeState, changed: bool) -> None:
    """
    Every node has a podCIDR inside the cluster CIDR. Without a change in this run the
    probe's answer decides at once (a problem stops the run while planning); after a
    change (node IPAM flags, a rollout) the check waits, bounded by flannel_rollout_timeout.
    """
    if not changed:
        answer = node.queries.get("pod_cidrs", (1, []))
        if answer[0] != 0:
            raise PodCidrError(f"kubectl on the first control-plane host failed: {' '.join(answer[1])[:300]}; "
                               f"check that kubectl is installed and kubeconfig {s.kubeconfig} works")
        problems = pod_cidr_problems(s, answer[1])
        if problems:
            raise PodCidrError("; ".join(problems))
    ops.python_step(name="flannel: every node has a podCIDR in the cluster CIDR", function=wait_for_pod_cidrs,
                    args=(s,), reason="waiting for every node's podCIDR after this run's changes" if changed else None)


def apply_systemd(s: Settings, node: NodeState, flanneld_binary, check_pod_cidrs: bool = False,
                  ipam_changed: bool = False) -> None:
    """flanneld's binary, net-conf.json and unit on this node, running; on the first
    control-plane host (``check_pod_cidrs``) also every node's podCIDR."""
    files, unit = systemd_files(s, flanneld_binary)
    changed = ops.files_needing_change([*files, unit], node)
    ops.files_installed(name="flannel: flanneld binary and net-conf.json", files=files, current=node)
    ops.files_installed(name="flannel: flanneld unit", files=[unit], current=node)
    ops.service_running(name="flannel: flanneld running", unit=UNIT, current=node, restart=bool(changed),
                        daemon_reload=unit in changed)
    if check_pod_cidrs:
        pod_cidrs_checked(s, node, changed=ipam_changed)
