"""
What doctor.py asks each node: ONE probe (tasks/engine/probe.py), read-only.

Where a concern already asks the same question its own request is reused (subnet.env, cni0, every node's
podCIDRs: tasks/pod_network.py; the kernel's modules and sysctls: tasks/kernel.py; kube-controller-manager's
manifest or unit: tasks/controller_manager.py; the flannel pods: tasks/flannel.py), with file digests left
out: the probe's digest script keeps a cache on the node, and the doctor writes nothing there. What only
the doctor asks is two named queries, each answered on stdout as tagged lines checked here against their
schema (tasks/engine/answers.py):

- ``doctor_node``: the tools the checks need (ping, ip, ctr), flannel's devices (``ip -d -o link``) and their
  addresses (both families), the routes, host-local's leases (IP -> container ID) and the
  running containers (sandbox IDs);
- ``doctor_cri``: containerd's own view of its CRI CNI settings (``containerd config dump``), the
  executables in each bin dir it names, the config files of its conf dir in libcni's order and the first
  one's content.

No run lock is taken: nothing changes, so a deploy is never kept waiting.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace

from tasks import cni, containerd, controller_manager, flannel, kernel, pod_network
from tasks.engine import answers
from tasks.engine.answers import BadField
from tasks.engine.probe import ProbeRequest
from tasks.formats import shell
from tasks.settings import Settings

NODE_QUERY = "doctor_node"
CRI_QUERY = "doctor_cri"
FLANNEL_PODS_QUERY = "flannel_pods"
TOOLS = ("ping", "ip", "ctr")
DEVICES = ("flannel.1", "flannel-v6.1")  # cni0's addresses: tasks/pod_network.py's cni0 query
LEASES = cni.HOST_LOCAL_RECORDS

_DEVICE_WORDS = " ".join(DEVICES)
NODE_COMMAND = (
    f"for t in {' '.join(TOOLS)}; do if command -v $t >/dev/null 2>&1; then echo tool $t 1; else echo tool $t 0; fi; done; "
    f"for d in {_DEVICE_WORDS}; do [ -d /sys/class/net/$d ] || continue; "
    "echo \"link $d $(ip -d -o link show dev $d | base64 -w0)\"; "
    "ip -o addr show dev $d | awk -v d=$d '$3 == \"inet\" || $3 == \"inet6\" {print \"addr \" d \" \" $4}'; done; "
    "ip -o -4 route show | while IFS= read -r r; do echo \"route $(printf '%s' \"$r\" | base64 -w0)\"; done; "
    "ip -o -6 route show | while IFS= read -r r; do echo \"route $(printf '%s' \"$r\" | base64 -w0)\"; done; "
    f"for f in {LEASES}/*; do [ -f \"$f\" ] || continue; case ${{f##*/}} in lock|last_reserved_ip*) continue;; esac; "
    "echo \"lease ${f##*/} $(head -n1 \"$f\" | tr -cd '0-9a-zA-Z_.-')\"; done; "
    "if command -v ctr >/dev/null 2>&1; then if s=$(ctr --connect-timeout 3s -n k8s.io containers ls -q 2>/dev/null); then "
    "printf '%s\\n' \"$s\" | sed -n 's/^\\(..*\\)$/sandbox \\1/p'; else echo sandboxes unknown; fi; fi; true")

_CNI_LINE = r"\.cni (bin_dirs?|conf_dir|max_conf_num) = "
CRI_COMMAND = (
    f"dump=$({containerd.BIN_DIR}/containerd config dump 2>/dev/null) || {{ echo dump fail; exit 0; }}; "
    f"flat=$(printf '%s\\n' \"$dump\" | awk {shell.word(containerd.FLATTEN_AWK)}); "
    "printf '%s\\n' \"$flat\" | grep -E '^ version = ' | sed 's/^ /cfg /'; "
    f"printf '%s\\n' \"$flat\" | grep -E {shell.word(_CNI_LINE)} | sed 's/^/cfg /'; "
    f"bins=$(printf '%s\\n' \"$flat\" | grep -E '\\.cni bin_dirs? = ' | sed 's/^.* = //; s/[][,]/ /g'); "
    f"conf=$(printf '%s\\n' \"$flat\" | grep -E '\\.cni conf_dir = ' | sed 's/^.* = //'); "
    "for d in $bins; do for f in \"$d\"/*; do [ -f \"$f\" ] && [ -x \"$f\" ] && echo \"bin $d ${f##*/}\"; done; done; "
    "first=; for f in $(cd \"$conf\" 2>/dev/null && LC_ALL=C ls); do case $f in *.conf|*.conflist|*.json) "
    "echo \"conf $f\"; [ -n \"$first\" ] || first=$f;; esac; done; "
    "[ -n \"$first\" ] && echo \"first $first $(base64 -w0 < \"$conf/$first\")\"; true")


def request(s: Settings, first_control_plane: bool) -> ProbeRequest:
    """What the doctor asks this node (the first control-plane host also asks about the cluster)."""
    asked = [pod_network.probe_request(s, first_control_plane), kernel.probe_request(s),
             ProbeRequest(queries={NODE_QUERY: NODE_COMMAND, CRI_QUERY: CRI_COMMAND})]
    if first_control_plane:
        asked.append(ProbeRequest(queries={pod_network.POD_CIDRS_QUERY: pod_network.node_pod_cidrs_command(s)}))
        if s.flannel_rollout != "systemd":  # the DaemonSet's pods (podnet's, or upstream's for an external rollout)
            asked.append(ProbeRequest(queries={FLANNEL_PODS_QUERY: flannel.not_ready_pods_command(s)}))
    if s.is_control_plane and s.kube_controller_manager_runtime != "external":
        asked.append(controller_manager.probe_request(s))
    if s.flannel_rollout == "systemd":
        asked.append(ProbeRequest(units=[flannel.UNIT]))
    merged = ProbeRequest()
    for one in asked:
        merged = merged.merge(one)
    return without_digests(merged)


def without_digests(asked: ProbeRequest) -> ProbeRequest:
    """``asked`` without file digests or persisted sysctl settings: the digest script writes its cache on the
    node, and the doctor needs neither."""
    return replace(asked, hashes=[], texts=[], sysctl_config=[])


# --- the answers ------------------------------------------------------------------------------


@dataclass
class NodeView:
    """What ``doctor_node`` said: tools present, devices (name -> ``ip -d -o link`` line), addresses (device ->
    interface addresses), routes (``ip -o route`` lines), leases (IP -> container ID), sandboxes (the IDs of containerd's containers in
    its k8s.io namespace: every pod sandbox is one)."""

    tools: dict[str, bool] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    addresses: dict[str, list] = field(default_factory=dict)
    routes: list[str] = field(default_factory=list)
    leases: dict[str, str] = field(default_factory=dict)
    sandboxes: set[str] = field(default_factory=set)
    sandboxes_known: bool = True  # False: ctr is there but containerd did not answer it


_CONTAINER_ID = re.compile(r"[0-9A-Za-z_.-]{1,128}")


def _text(encoded: str) -> str:
    return answers.no_control(answers.base64_bytes(encoded).decode(errors="replace").strip(), "ip output")


def parse_node(lines: list[str], host_name: str = "") -> NodeView:
    """``doctor_node``'s stdout as a NodeView; RemoteAnswerError naming the host and line for one that does
    not fit."""
    view = NodeView()

    def line(text: str) -> None:
        tag, _, rest = text.partition(" ")
        parts = rest.split(" ")
        if tag == "tool" and len(parts) == 2 and parts[0] in TOOLS and parts[1] in ("0", "1"):
            view.tools[parts[0]] = parts[1] == "1"
        elif tag == "link" and len(parts) == 2 and parts[0] in DEVICES:
            view.links[parts[0]] = _text(parts[1])
        elif tag == "addr" and len(parts) == 2 and parts[0] in DEVICES:
            view.addresses.setdefault(parts[0], []).append(answers.interface_address(parts[1]))
        elif tag == "route" and len(parts) == 1:
            view.routes.append(_text(parts[0]))
        elif tag == "lease" and len(parts) == 2:
            address = ipaddress.ip_address(parts[0]) if _is_address(parts[0]) else None
            if address is None or not _CONTAINER_ID.fullmatch(parts[1]):
                raise BadField("not 'lease <IP> <container ID>'")
            view.leases[str(address)] = parts[1]
        elif tag == "sandbox" and len(parts) == 1 and _CONTAINER_ID.fullmatch(parts[0]):
            view.sandboxes.add(parts[0])
        elif tag == "sandboxes" and rest == "unknown":  # ctr could not ask containerd
            view.sandboxes_known = False
        else:
            raise BadField("not a line of the doctor's node query")

    answers.records(host_name, f"the doctor's node query ({NODE_QUERY})", lines, line)
    return view


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@dataclass
class CriView:
    """What ``doctor_cri`` said: whether ``containerd config dump`` ran, its config version and CRI CNI
    settings ((table, key) -> value, quotes removed), the executables per bin dir, the config files of the
    conf dir in libcni's order, and the first one's name and content."""

    dumped: bool = True
    version: int | None = None
    cni: dict[tuple[str, str], str] = field(default_factory=dict)
    bins: dict[str, set[str]] = field(default_factory=dict)
    configs: list[str] = field(default_factory=list)
    first: tuple[str, bytes] | None = None


def parse_cri(lines: list[str], host_name: str = "") -> CriView:
    """``doctor_cri``'s stdout as a CriView; RemoteAnswerError naming the host and line for one that does not
    fit."""
    view = CriView()

    def line(text: str) -> None:
        tag, _, rest = text.partition(" ")
        if tag == "dump" and rest == "fail":
            view.dumped = False
        elif tag == "cfg" and rest.startswith("version = "):
            view.version = answers.decimal(rest.split(" = ", 1)[1], 1, 99, "config version")
        elif tag == "cfg":
            table, _, assignment = rest.partition(" ")
            key, _, value = assignment.partition(" = ")
            answers.no_control(rest, "config line")
            if not table.endswith(".cni") or not key:
                raise BadField("not a CRI cni setting")
            view.cni[(table, key)] = value
        elif tag == "bin":
            directory, _, name = rest.partition(" ")
            view.bins.setdefault(answers.absolute_path(directory), set()).add(answers.file_name(name))
        elif tag == "conf":
            view.configs.append(answers.file_name(rest))
        elif tag == "first":
            name, _, encoded = rest.partition(" ")
            view.first = (answers.file_name(name), answers.base64_bytes(encoded))
        else:
            raise BadField("not a line of the doctor's CRI query")

    answers.records(host_name, f"the doctor's CRI query ({CRI_QUERY})", lines, line)
    return view

