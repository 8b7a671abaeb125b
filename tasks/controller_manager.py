"""
kube-controller-manager node IPAM: `--allocate-node-cidrs=true`, `--cluster-cidr`,
`--node-cidr-mask-size` (`-ipv4`/`-ipv6` for dual stack), `--service-cluster-ip-range`,
and node IPAM enabled in `--controllers` by merging, never replacing, the list.

Works on kubeadm's static pod manifest (parsed and rewritten with pyyaml, every other
field kept) and on a systemd unit whose ExecStart runs kube-controller-manager. The
rewrite happens only when a flag actually changes.
"""

from __future__ import annotations

import base64
import hashlib
import io
import posixpath
import re
import shlex

import yaml

from tasks import ops
from tasks.desired import DesiredFile, text_file
from tasks.errors import PodnetError
from tasks.probe import NodeState, ProbeRequest
from tasks.settings import Settings

CONTAINER_NAME = "kube-controller-manager"
NODE_IPAM_NAMES = ("nodeipam", "node-ipam-controller")  # the controller's name and its alias
BACKUP_DIR = "/var/lib/podnet/backup"
# Flags whose value we own and which take a value (so "--flag value" is read as one flag).
OWNED_FLAGS = ("allocate-node-cidrs", "cluster-cidr", "node-cidr-mask-size", "node-cidr-mask-size-ipv4",
               "node-cidr-mask-size-ipv6", "service-cluster-ip-range", "controllers")


class ControllerManagerError(PodnetError, ValueError):
    """The control plane's configuration cannot be merged safely."""


def desired_flags(s: Settings) -> dict[str, str | None]:
    """Flag -> value to set; None means the flag must not be present."""
    if s.dual_stack:
        services = [str(s.service_cluster_ip_range)]
        if s.service_cluster_ip_range_ipv6 is not None:
            services.append(str(s.service_cluster_ip_range_ipv6))
        return {
            "allocate-node-cidrs": "true",
            "cluster-cidr": f"{s.cluster_cidr},{s.cluster_cidr_ipv6}",
            "node-cidr-mask-size": None,  # not allowed together with dual-stack CIDRs
            "node-cidr-mask-size-ipv4": str(s.node_cidr_mask_size),
            "node-cidr-mask-size-ipv6": str(s.node_cidr_mask_size_ipv6),
            "service-cluster-ip-range": ",".join(services),
        }
    return {
        "allocate-node-cidrs": "true",
        "cluster-cidr": str(s.cluster_cidr),
        "node-cidr-mask-size": str(s.node_cidr_mask_size),
        "node-cidr-mask-size-ipv4": None,
        "node-cidr-mask-size-ipv6": None,
        "service-cluster-ip-range": str(s.service_cluster_ip_range),
    }


def merge_controllers(value: str) -> str:
    """
    Enable node IPAM in a --controllers list without switching anything else on or off.
    `*` already includes it (only a `-nodeipam` has to go); a list without `*` gains it.
    """
    items = [c.strip() for c in value.split(",") if c.strip()]
    kept = [c for c in items if not (c.startswith("-") and c[1:] in NODE_IPAM_NAMES)]
    if "*" not in kept and not any(c in NODE_IPAM_NAMES for c in kept):
        if not kept:
            raise ControllerManagerError(
                f"--controllers={value} enables no controller; adding node IPAM would give "
                "--controllers=nodeipam, which runs node IPAM alone and switches every other controller off. "
                "Fix --controllers (e.g. '*,bootstrapsigner,tokencleaner') and rerun")
        kept.append("nodeipam")
    return ",".join(kept)


def _split_flag(token: str) -> tuple[str, str | None]:
    name, sep, value = token[2:].partition("=")
    return name, (value if sep else None)


def merge_command(command: list[str], flags: dict[str, str | None]) -> list[str]:
    """The kube-controller-manager command line with our flags set and other tokens kept in order."""
    out: list[str] = []
    written: set[str] = set()
    i = 0
    while i < len(command):
        token = command[i]
        i += 1
        if not token.startswith("--"):
            out.append(token)
            continue
        name, value = _split_flag(token)
        if name in OWNED_FLAGS and value is None and i < len(command) and not command[i].startswith("-"):
            value = command[i]  # "--flag value" form
            i += 1
        if name == "controllers":
            out.append(f"--controllers={merge_controllers(value or '')}")
        elif name in flags:
            if flags[name] is not None and name not in written:
                out.append(f"--{name}={flags[name]}")
                written.add(name)
        else:
            out.append(token if value is None or "=" in token else f"--{name}={value}")
    out.extend(f"--{name}={value}" for name, value in flags.items() if value is not None and name not in written)
    return out


def merge_manifest(text: str, flags: dict[str, str | None]) -> str | None:
    """The static pod manifest with merged flags, or None when nothing changes."""
    document = yaml.safe_load(text)
    containers = ((document or {}).get("spec") or {}).get("containers") or []
    container = next((c for c in containers if c.get("name") == CONTAINER_NAME), None)
    if container is None:
        raise ControllerManagerError(f"no container named {CONTAINER_NAME!r} in the manifest")
    # The kubelet runs command + args and a later flag wins: merge where the flags are.
    key = "args" if container.get("args") else "command"
    current = list(container.get(key) or [])
    merged = merge_command(current, flags)
    if merged == current:
        return None
    container[key] = merged
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False)


EXEC_START_RE = re.compile(r"^ExecStart=(?P<value>(?:.*\\\n)*.*)$", re.MULTILINE)


def merge_unit(text: str, flags: dict[str, str | None]) -> str | None:
    """The systemd unit with merged flags in its (last non-empty) ExecStart, or None when unchanged."""
    matches = [m for m in EXEC_START_RE.finditer(text) if m.group("value").strip()]
    if not matches:
        raise ControllerManagerError("no ExecStart= line running kube-controller-manager")
    match = matches[-1]
    current = shlex.split(match.group("value").replace("\\\n", " "))
    merged = merge_command(current, flags)
    if merged == current:
        return None
    exec_start = "ExecStart=" + " \\\n  ".join(shlex.quote(t) for t in merged)
    return text[:match.start()] + exec_start + text[match.end():]


def config_path(s: Settings) -> str:
    return s.kube_controller_manager_manifest if s.kube_controller_manager_runtime == "static-pod" \
        else s.kube_controller_manager_unit


def probe_request(s: Settings) -> ProbeRequest:
    return ProbeRequest(contents=[config_path(s)], units=[posixpath.basename(s.kube_controller_manager_unit)]
                        if s.kube_controller_manager_runtime == "systemd" else [])


def planned_file(s: Settings, node: NodeState, host_name: str) -> tuple[DesiredFile | None, bytes]:
    """The rewritten config (None when already right) and its current content."""
    path = config_path(s)
    if path not in node.contents:
        other = "systemd" if s.kube_controller_manager_runtime == "static-pod" else "static-pod"
        setting = ("kube_controller_manager_manifest" if s.kube_controller_manager_runtime == "static-pod"
                   else "kube_controller_manager_unit")
        raise ControllerManagerError(
            f"{host_name}: {setting}: {path} does not exist on this control-plane host; is the control plane "
            f"installed (kubeadm init)? If kube-controller-manager runs differently, set {setting} or "
            f"kube_controller_manager_runtime={other!r}")
    current = node.contents[path]
    merge = merge_manifest if s.kube_controller_manager_runtime == "static-pod" else merge_unit
    try:
        merged = merge(current.decode(), desired_flags(s))
    except (ControllerManagerError, yaml.YAMLError) as error:
        raise ControllerManagerError(f"{host_name}: {path}: {error}") from None
    if merged is None:
        return None, current
    mode = "0600" if s.kube_controller_manager_runtime == "static-pod" else "0644"
    return text_file(path, merged, mode=mode), current


def merge_after_kubeadm(state, host, connector_arguments: dict, s: Settings, host_name: str) -> bool:
    """
    At execution time, right after kubeadm wrote the static pod manifest in this run
    (cluster_bootstrap): read it, merge the node IPAM flags, and replace it (after a backup)
    only when a flag differs. kubeadm was given the same flags, so usually nothing changes.
    """
    path = config_path(s)
    ok, output = host.run_shell_command(f"base64 -w0 {shlex.quote(path)}", **connector_arguments)
    try:
        current = base64.b64decode("".join(output.stdout_lines), validate=True).decode() if ok else None
    except ValueError:
        current = None
    if current is None:
        raise ControllerManagerError(f"{host_name}: {path}: not readable after kubeadm ran: "
                                     f"{' '.join(output.stderr_lines)[:300]}")
    try:
        merged = merge_manifest(current, desired_flags(s))
    except (ControllerManagerError, yaml.YAMLError) as error:
        raise ControllerManagerError(f"{host_name}: {path}: {error}") from None
    if merged is None:
        return True
    backup = f"{BACKUP_DIR}/{posixpath.basename(path)}.{hashlib.sha256(current.encode()).hexdigest()[:12]}"
    staged = ops.staged_path(path)
    steps = [f"mkdir -p {BACKUP_DIR}", f"cp -p {shlex.quote(path)} {shlex.quote(backup)}"]
    ok, output = host.run_shell_command(" && ".join(steps), **connector_arguments)
    if ok:
        ok = host.put_file(io.BytesIO(merged.encode()), staged, **connector_arguments)
    if ok:
        ok, output = host.run_shell_command(
            f"chmod 0600 {shlex.quote(staged)} && mv -f {shlex.quote(staged)} {shlex.quote(path)}",
            **connector_arguments)
    if not ok:
        raise ControllerManagerError(f"{host_name}: {path}: could not write the node IPAM flags")
    return True


def apply(s: Settings, node: NodeState, host_name: str, created_by_kubeadm: bool = False) -> bool:
    """
    Set the node IPAM flags; returns whether they changed in this run.
    ``created_by_kubeadm``: kubeadm writes this host's manifest in this run (cluster_bootstrap),
    so it cannot be read while planning; the merge then runs right after kubeadm, at execution time.
    """
    if created_by_kubeadm and config_path(s) not in node.contents:
        ops.python_step(name="kube-controller-manager: node IPAM flags in the manifest kubeadm wrote",
                        function=merge_after_kubeadm, args=(s, host_name),
                        reason=f"kubeadm writes {config_path(s)} in this run: merging the node IPAM flags after it")
        return True
    desired, current = planned_file(s, node, host_name)
    path = config_path(s)
    backup = f"{BACKUP_DIR}/{posixpath.basename(path)}.{hashlib.sha256(current).hexdigest()[:12]}"
    ops.shell_when(name="kube-controller-manager: keep a backup before changing flags",
                   commands=[f"mkdir -p {BACKUP_DIR}", f"cp -p {shlex.quote(path)} {shlex.quote(backup)}"],
                   reason=f"backing up {path} to {backup}" if desired else None)
    ops.files_installed(name="kube-controller-manager: node IPAM flags", files=[desired] if desired else [],
                        current=node)
    if s.kube_controller_manager_runtime == "systemd":
        unit = posixpath.basename(s.kube_controller_manager_unit)
        ops.service_running(name="kube-controller-manager: running with the new flags", unit=unit, current=node,
                            restart=desired is not None, daemon_reload=desired is not None)
    return desired is not None
