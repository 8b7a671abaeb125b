"""
Reset: take podnet's pod network off nodes (``pyinfra inventory/<cluster>.py reset.py``).

Each host is asked once (one probe, ``probe_request``); then only what exists is removed, so a
second reset changes nothing:

- the flannel DaemonSet and the objects podnet's manifest creates with it (read from the
  same rendered manifest, tasks.flannel.render_manifest), deleted with kubectl from the first
  control-plane host, the DaemonSet first and in the foreground (its pods gone before anything
  else goes); podnet's copy of the manifest; or the flanneld systemd unit stopped and
  disabled, with its unit file, binary and net-conf.json;
- 10-flannel.conflist and the CNI plugin binaries podnet installs (the names come from the
  same release files and code as the deploy's, tasks.cni.plugin_binaries);
- flannel's interfaces (cni0, flannel.<VNI>, flannel-v6.<VNI>, flannel-wg, flannel-wg-v6),
  its iptables chains (FLANNEL-POSTRTG, FLANNEL-FWD and the rules jumping to them, in the
  nft and legacy iptables and ip6tables), its nftables tables (flannel-ipv4, flannel-ipv6),
  /run/flannel and host-local's records /var/lib/cni/networks/cbr0;
- on control-plane hosts, kube-controller-manager's manifest or unit put back from podnet's
  backup, or without podnet's node IPAM flags (tasks.reset_controller_manager);
- with ``reset_kernel``, podnet's modules-load.d and sysctl.d files; with ``reset_containerd``,
  containerd stopped and disabled, its binaries, runc, unit and config.toml removed.

Pods keep running but lose their network on the node (their veths are detached from the
deleted cni0); podnet never deletes them. With the DaemonSet, flanneld runs on every node,
so a reset covers every host of the inventory or none (ResetError before any host is touched).
"""

from __future__ import annotations

import posixpath
import shlex

import yaml
from pyinfra import logger

from tasks import cni, containerd, flannel, kernel, pod_network

from tasks.engine import ops
from tasks.engine.context import HostContext, Step
from tasks.controller_manager import config_path
from tasks.engine.desired import DesiredFile, text_file
from tasks.errors import PodnetError
from tasks.engine.probe import NodeState, ProbeRequest
from tasks.reset_controller_manager import BACKUPS_QUERY, backups_command, restored
from tasks.settings import Settings

CHAINS = ("FLANNEL-POSTRTG", "FLANNEL-FWD")  # flannel's pkg/trafficmngr/iptables
IPTABLES = ("iptables-nft", "iptables-legacy", "ip6tables-nft", "ip6tables-legacy")
NFT_TABLES = ("flannel-ipv4", "flannel-ipv6")  # flannel's pkg/trafficmngr/nftables (EnableNFTables)
WIREGUARD_INTERFACES = ("flannel-wg", "flannel-wg-v6")  # flannel's pkg/backend/wireguard
SYS_NET = "/sys/class/net"
RUN_DIRS = ("/run/flannel", f"/var/lib/cni/networks/{cni.NETWORK_NAME}")
CHAINS_QUERY, NFT_QUERY, OBJECTS_QUERY = "flannel_chains", "flannel_nft", "flannel_objects"


class ResetError(PodnetError, ValueError):
    """A reset that cannot take the pod network off the hosts asked for."""


def interfaces(s: Settings) -> list[str]:
    """The interfaces flannel and the bridge plugin make: cni0, the vxlan devices of the
    configured VNI (flanneld names them flannel.<VNI> and flannel-v6.<VNI>) and of VNI 1
    (flannel's default), the wireguard devices."""
    vnis = dict.fromkeys([s.flannel_vni, 1])
    return [pod_network.BRIDGE, *(f"flannel.{v}" for v in vnis), *(f"flannel-v6.{v}" for v in vnis),
            *WIREGUARD_INTERFACES]


def chains_command() -> str:
    """Prints "<iptables variant> <table> <chain>" for every flannel chain, in each variant present."""
    names = "|".join(CHAINS)
    return (f"for t in {' '.join(IPTABLES)}; do command -v $t-save >/dev/null 2>&1 || continue; "
            f"$t-save 2>/dev/null | awk -v t=$t '/^\\*/ {{table = substr($1, 2)}} "
            f"/^:({names}) / {{print t, table, substr($1, 2)}}'; done; true")


def parse_chains(lines: list[str]) -> dict[tuple[str, str], list[str]]:
    """(variant, table) -> flannel chains there, from chains_command's output."""
    found: dict[tuple[str, str], list[str]] = {}
    for line in lines:
        parts = line.split()
        if len(parts) == 3 and parts[0] in IPTABLES and parts[2] in CHAINS:
            found.setdefault((parts[0], parts[1]), []).append(parts[2])
    return found


def chains_removal(variant: str, table: str, chains: list[str]) -> str:
    """One atomic iptables-restore --noflush per table: delete the rules that jump to the chains
    (as iptables-save prints them, comments quoted), then flush and delete the chains."""
    names = "|".join(chains)
    lines = [f"echo '*{table}'",
             f"{variant}-save -t {table} | grep -E -- ' -j ({names})( |$)' | grep -vE -- '^-A ({names}) ' "
             "| sed 's/^-A /-D /'",
             *(f"echo '-F {c}'" for c in chains), *(f"echo '-X {c}'" for c in chains), "echo COMMIT"]
    return "{ " + "; ".join(lines) + "; } | " + f"{variant}-restore --noflush"


_NFT_MATCH = " || ".join(f'$3 == "{t}"' for t in NFT_TABLES)
NFT_COMMAND = ("command -v nft >/dev/null 2>&1 || exit 0; nft list tables 2>/dev/null | "
               f"awk '$1 == \"table\" && ({_NFT_MATCH}) {{print $2, $3}}'")


def flannel_objects(s: Settings) -> list[str]:
    """The objects podnet's kube-flannel manifest creates, as kubectl's type/name, in its order."""
    return [f"{doc['kind'].lower()}/{doc['metadata']['name']}"
            for doc in yaml.safe_load_all(flannel.render_manifest(s)) if doc]


def objects_command(s: Settings) -> str:
    return (f"{s.kubectl} -n {flannel.NAMESPACE} get {' '.join(flannel_objects(s))} --ignore-not-found -o name")


def objects_present(s: Settings, node: NodeState) -> list[str]:
    """podnet's flannel objects that exist, in the manifest's order (kubectl prints type.group/name)."""
    rc, lines = node.queries.get(OBJECTS_QUERY, (0, []))
    if rc != 0 and s.flannel_rollout != "daemonset":  # only a leftover from an earlier rollout could be there
        logger.warning(f"podnet: kubectl on the first control-plane host failed ({' '.join(lines)[:300]}): a "
                       "kube-flannel DaemonSet left from an earlier rollout, if any, is not deleted")
        return []
    if rc != 0:
        raise ResetError(f"kubectl on the first control-plane host failed: {' '.join(lines)[:300]}; check that "
                         f"kubectl is installed and kubeconfig {s.kubeconfig} works")
    found = {kind.split(".")[0] + "/" + name for kind, _, name in (line.strip().partition("/") for line in lines)}
    return [o for o in flannel_objects(s) if o in found]


def removes_flannel(s: Settings) -> bool:
    """flanneld is podnet's (DaemonSet or systemd unit), not deployed by something else."""
    return s.flannel_rollout != "external"


def resets_controller_manager(s: Settings) -> bool:
    return s.is_control_plane and s.kube_controller_manager_runtime != "external"


def probe_request(s: Settings, first_control_plane: bool) -> ProbeRequest:
    """Everything the reset decides from, asked in the host's one probe."""
    request = ProbeRequest(
        hashes=[f"{s.cni_bin_dir}/*", f"{s.cni_conf_dir}/{cni.CONFLIST_NAME}"],
        listings=[SYS_NET],
        features={path: f"[ -d {shlex.quote(path)} ]" for path in RUN_DIRS},
        queries={"cni0": pod_network.CNI0_COMMAND, CHAINS_QUERY: chains_command(), NFT_QUERY: NFT_COMMAND},
    )
    if removes_flannel(s):
        request.hashes += [flannel.FLANNELD_PATH, flannel.UNIT_PATH, flannel.NET_CONF_PATH]
        request.units.append(flannel.UNIT)
        if first_control_plane:
            request.hashes.append(flannel.MANIFEST_PATH)
            request.queries[OBJECTS_QUERY] = objects_command(s)
    if resets_controller_manager(s):
        request.contents.append(config_path(s))
        request.hashes.append(config_path(s))  # installing the restored file compares its digest
        request.queries[BACKUPS_QUERY] = backups_command(s)
        if s.kube_controller_manager_runtime == "systemd":
            request.units.append(posixpath.basename(s.kube_controller_manager_unit))
    if s.reset_kernel:
        request.hashes += [kernel.MODULES_LOAD_PATH, kernel.SYSCTL_PATH, *kernel.OLD_SYSCTL_PATHS]
    if s.reset_containerd:
        request = request.merge(containerd.probe_request(s))
    return request


def whole_cluster_covered(s: Settings, inventory, in_run, first_control_plane: str | None) -> None:
    """With the DaemonSet, refuse (before any host is touched) a reset that leaves hosts out:
    flanneld runs on every node from one DaemonSet, which only a whole reset may delete, with
    kubectl on the first control-plane host."""
    if s.flannel_rollout != "daemonset":
        return
    left_out = [h.name for h in inventory if not in_run(h)]
    if left_out:
        raise ResetError(
            f"flannel_rollout = 'daemonset': flanneld runs on every node from the kube-flannel DaemonSet, so a reset "
            f"covers all hosts of the inventory or none; this run leaves out {', '.join(left_out)} (--limit). "
            "Run the reset without --limit, or use flannel_rollout = 'systemd' to take single nodes off")
    if first_control_plane is None:
        raise ResetError(f"flannel_rollout = 'daemonset': the kube-flannel DaemonSet is deleted with kubectl from a "
                         f"control-plane host, and no host is in group {s.control_plane_group!r}; add one")


def existing(node: NodeState, paths: list[str]) -> list[str]:
    return [p for p in paths if p in node.hashes]


def remove_files(name: str, node: NodeState, paths: list[str], what: str) -> None:
    """One operation removing those of ``paths`` the probe found."""
    present = existing(node, paths)
    ops.shell_when(name=name, commands=["rm -f " + " ".join(shlex.quote(p) for p in present)],
                   reason=f"removing {what}: {', '.join(present)}" if present else None)


def flannel_daemonset_deleted(s: Settings, node: NodeState) -> None:
    """From the first control-plane host: the DaemonSet deleted in the foreground (waits until its
    pods are gone), then the other objects of podnet's manifest, then podnet's copy of it."""
    present = objects_present(s, node)
    daemonset = f"daemonset/{flannel.DAEMONSET}"
    wait = f"--wait=true --timeout={s.flannel_rollout_timeout}s"
    commands = []
    if daemonset in present:
        commands.append(f"{s.kubectl} -n {flannel.NAMESPACE} delete {daemonset} --cascade=foreground {wait}")
    others = [o for o in reversed(present) if o != daemonset]
    if others:
        commands.append(f"{s.kubectl} -n {flannel.NAMESPACE} delete {' '.join(others)} --ignore-not-found {wait}")
    ops.shell_when(name="reset: kube-flannel DaemonSet and its objects deleted", commands=commands,
                   reason=f"deleting {', '.join(present)}" if present else None)
    remove_files("reset: podnet's kube-flannel manifest removed", node, [flannel.MANIFEST_PATH], "the manifest")


def flanneld_unit_removed(node: NodeState) -> None:
    """flanneld's systemd unit stopped and disabled; its unit file, binary and net-conf.json removed."""
    files = existing(node, [flannel.UNIT_PATH, flannel.FLANNELD_PATH, flannel.NET_CONF_PATH])
    running = node.unit_active(flannel.UNIT) or node.unit_enabled(flannel.UNIT)
    commands = []
    if running:
        commands.append(f"systemctl disable --now {flannel.UNIT}")
    if files:
        commands.append("rm -f " + " ".join(files))
        commands.append(f"rmdir --ignore-fail-on-non-empty {posixpath.dirname(flannel.NET_CONF_PATH)}")
    if flannel.UNIT_PATH in files:
        commands.append("systemctl daemon-reload")
    reason = ", ".join([*([f"stopping {flannel.UNIT}"] if running else []), *(f"removing {f}" for f in files)])
    ops.shell_when(name="reset: flanneld stopped, disabled and removed", commands=commands, reason=reason or None)


def pods_losing_network(node: NodeState, host_name: str) -> None:
    bridge = pod_network.cni0_state(node)
    if bridge and bridge[1]:
        logger.warning(f"podnet: {host_name}: {bridge[1]} pod(s) attached to {pod_network.BRIDGE} lose their network "
                       "with this reset; podnet does not delete them: recreate them once a deploy has brought the "
                       "pod network back (or drain the node before the reset)")


def network_state_removed(s: Settings, node: NodeState) -> None:
    """flannel's interfaces, iptables chains, nftables tables and runtime directories."""
    links = [name for name in interfaces(s) if name in node.listings.get(SYS_NET, [])]
    ops.shell_when(name="reset: flannel's interfaces deleted", commands=[f"ip link delete {n}" for n in links],
                   reason=f"deleting {', '.join(links)}" if links else None)
    rc, lines = node.queries.get(CHAINS_QUERY, (1, []))
    chains = parse_chains(lines) if rc == 0 else {}
    ops.shell_when(name="reset: flannel's iptables chains deleted",
                   commands=[chains_removal(v, t, c) for (v, t), c in sorted(chains.items())],
                   reason="deleting " + ", ".join(f"{v} {t} {' '.join(c)}" for (v, t), c in sorted(chains.items()))
                   if chains else None)
    rc, lines = node.queries.get(NFT_QUERY, (1, []))
    tables = [line.split() for line in lines if len(line.split()) == 2] if rc == 0 else []
    ops.shell_when(name="reset: flannel's nftables tables deleted",
                   commands=[f"nft delete table {family} {name}" for family, name in tables],
                   reason=f"deleting {', '.join(f'{f} {n}' for f, n in tables)}" if tables else None)
    dirs = [path for path in RUN_DIRS if node.features.get(path)]
    ops.shell_when(name="reset: /run/flannel and host-local's records removed",
                   commands=["rm -rf " + " ".join(dirs)], reason=f"removing {', '.join(dirs)}" if dirs else None)


def controller_manager_restored(s: Settings, node: NodeState, host_name: str) -> None:
    """The manifest or unit from podnet's backup, or without podnet's flags; a systemd
    kube-controller-manager restarted with it (the kubelet restarts a static pod by itself)."""
    content, how = restored(s, node, host_name)
    mode = "0600" if s.kube_controller_manager_runtime == "static-pod" else "0644"
    desired: DesiredFile | None = text_file(config_path(s), content.decode(), mode=mode) if content else None
    if desired is not None:
        logger.info(f"    {host_name}: {how}")
    ops.files_installed(name="reset: kube-controller-manager without podnet's node IPAM flags",
                        files=[desired] if desired else [], current=node)
    if s.kube_controller_manager_runtime == "systemd":
        unit = posixpath.basename(s.kube_controller_manager_unit)
        ops.shell_when(name="reset: kube-controller-manager restarted",
                       commands=["systemctl daemon-reload", f"systemctl restart {shlex.quote(unit)}"],
                       reason="its unit changed" if desired else None)


def containerd_removed(node: NodeState, binaries: list[DesiredFile], runc: DesiredFile) -> None:
    """containerd stopped and disabled; what podnet installed for it removed."""
    files = existing(node, [*(f.path for f in binaries), runc.path, containerd.UNIT_PATH, containerd.CONFIG_PATH])
    running = node.unit_active(containerd.UNIT) or node.unit_enabled(containerd.UNIT)
    commands = [*([f"systemctl disable --now {containerd.UNIT}"] if running else []),
                *(["rm -f " + " ".join(files)] if files else []),
                *(["systemctl daemon-reload"] if containerd.UNIT_PATH in files else [])]
    ops.shell_when(name="reset: containerd stopped and removed (reset_containerd)", commands=commands,
                   reason=f"stopping {containerd.UNIT} and removing {len(files)} file(s)" if commands else None)


# --- the steps ----------------------------------------------------------------------------


def _probe(ctx: HostContext) -> ProbeRequest:
    return probe_request(ctx.settings, ctx.is_first_control_plane)


def _flannel_removed(ctx: HostContext) -> None:
    if ctx.is_first_control_plane:
        flannel_daemonset_deleted(ctx.settings, ctx.node)
    flanneld_unit_removed(ctx.node)


def _plugins_removed(ctx: HostContext) -> None:
    plugins = cni.plugin_binaries(ctx.settings, ctx.unpacked("cni_plugins"), cni.flannel_binary(ctx))
    remove_files("reset: CNI plugin binaries removed", ctx.node, [f.path for f in plugins],
                 "the CNI plugins podnet installs")


def _kernel_files_removed(ctx: HostContext) -> None:
    remove_files("reset: podnet's kernel settings files removed (reset_kernel)", ctx.node,
                 [kernel.MODULES_LOAD_PATH, kernel.SYSCTL_PATH, *kernel.OLD_SYSCTL_PATHS],
                 "podnet's modules-load.d and sysctl.d files")


def _containerd_removed(ctx: HostContext) -> None:
    containerd_removed(ctx.node, containerd.containerd_binaries(ctx.unpacked("containerd")),
                       containerd.runc_binary(ctx.file("runc")))


# The reset, in the order its steps run on every host (reset.py).
RESET: tuple[Step, ...] = (
    Step("reset: pods attached to cni0 named", probe=_probe,
         check=lambda ctx: pods_losing_network(ctx.node, ctx.host_name), apply=lambda ctx: None),
    Step("reset: 10-flannel.conflist", probe=_probe,
         apply=lambda ctx: remove_files("reset: 10-flannel.conflist removed", ctx.node,
                                        [cni.conflist_file(ctx.settings).path],
                                        "the CNI config (no new pod gets podnet's network)")),
    Step("reset: flanneld", applies=lambda ctx: removes_flannel(ctx.settings), probe=_probe, apply=_flannel_removed),
    Step("reset: CNI plugins", probe=_probe, artifacts=lambda ctx: ("cni_plugins", "flannel_cni_plugin"),
         apply=_plugins_removed),
    Step("reset: flannel's interfaces, chains and directories", probe=_probe,
         apply=lambda ctx: network_state_removed(ctx.settings, ctx.node)),
    Step("reset: kube-controller-manager", applies=lambda ctx: resets_controller_manager(ctx.settings), probe=_probe,
         apply=lambda ctx: controller_manager_restored(ctx.settings, ctx.node, ctx.host_name)),
    Step("reset: kernel settings files", applies=lambda ctx: ctx.settings.reset_kernel, probe=_probe,
         apply=_kernel_files_removed),
    Step("reset: containerd", applies=lambda ctx: ctx.settings.reset_containerd, probe=_probe,
         artifacts=lambda ctx: ("containerd", "runc"), apply=_containerd_removed),
)
