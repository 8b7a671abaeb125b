"""
Cluster bootstrap for fresh machines (the `cluster_bootstrap` setting; off by default, on
for the Vagrant inventory): kubelet, kubeadm and kubectl from pinned release files, the
kubelet unit and kubeadm's drop-in as upstream packages them, the node IP for the kubelet,
`kubeadm init` on the first control-plane host and `kubeadm join` everywhere else.

kubeadm's configuration is written in the format the kubeadm of `kubernetes_version` reads
(config_api: kubeadm.k8s.io/v1beta3 for 1.22-1.30, v1beta4 for 1.31-1.36); any other release is
refused as a settings error before any host is touched (tasks/settings/__init__.py, _bootstrap_problems).

In deploy.py the order is: prerequisites (with the kernel ones: swap off, the tools
kubeadm's preflight requires) -> containerd and CNI -> `apply` here -> kube-controller-manager
node IPAM -> flannel rollout and the podCIDR check.

Idempotent from the probe: a host with /etc/kubernetes/admin.conf is an initialised (or
joined) control plane and is not initialised again; a worker with /etc/kubernetes/kubelet.conf
has joined and is not joined again. The join token (and, for further control-plane hosts,
the certificate key) is asked from the first control-plane host at execution time, right
before the join, so it is fresh and never stored.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, replace

from pyinfra.api import HiddenValue, StringCommand

from tasks import containerd, controller_manager, kubeadm_config

from tasks.engine import ops
from tasks.engine.context import HostContext, Step
from tasks.engine.desired import DesiredFile, local_file, render, text_file
from tasks.errors import PodnetError
from tasks.formats import shell
from tasks.formats.systemd_unit import environment_file_assignment
from tasks.engine.probe import NodeState, ProbeRequest
from tasks.engine.pyinfra_compat import connector_arguments_of
from tasks.artifacts.catalog import KUBERNETES_BINARIES, install_entry
from tasks.engine.ownership import Ownership, OwnedFile
from tasks.releases import CONFIG_APIS, SUPPORTED_KUBERNETES, config_api  # noqa: F401
from tasks.settings import Settings, SettingsError

KUBEADM, KUBELET, KUBECTL = (install_entry(name) for name in KUBERNETES_BINARIES)  # files/artifacts.yaml
KUBELET_UNIT = "kubelet.service"
KUBELET_UNIT_PATH = "/etc/systemd/system/kubelet.service"
DROPIN_PATH = "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf"
KUBELET_DEFAULTS_PATH = "/etc/default/kubelet"
INIT_CONFIG_PATH = "/etc/podnet/kubeadm-init.yaml"
ADMIN_CONF = "/etc/kubernetes/admin.conf"
KUBELET_CONF = "/etc/kubernetes/kubelet.conf"
CRI_SOCKET = f"unix://{containerd.SOCKET}"
API_SERVER_PORT = 6443
TOKEN_TTL = "30m"

# Executables kubeadm's preflight requires (ip, iptables, mount, nsenter) or warns about
# (conntrack, ethtool, socat), and the Debian/Ubuntu package that provides each.
PREFLIGHT_TOOLS = {"ip": "iproute2", "iptables": "iptables", "mount": "mount", "nsenter": "util-linux",
                   "conntrack": "conntrack", "ethtool": "ethtool", "socat": "socat"}
APT_INSTALL = ("apt-get -o DPkg::Lock::Timeout=600 update -q && DEBIAN_FRONTEND=noninteractive "
               "apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends")

# Probe features (name -> shell test that succeeds when true).
INITIALISED = "kubeadm:admin.conf"
JOINED = "kubeadm:kubelet.conf"
SWAP_ACTIVE = "swap:active"
SWAP_IN_FSTAB = "swap:fstab"
HAS_APT = "tool:apt-get"
FSTAB_SWAP = "$1 !~ /^#/ && $3 == \"swap\""
FEATURES = {
    INITIALISED: f"[ -f {ADMIN_CONF} ]",
    JOINED: f"[ -f {KUBELET_CONF} ]",
    SWAP_ACTIVE: '[ "$(wc -l < /proc/swaps)" -gt 1 ]',
    SWAP_IN_FSTAB: f"awk '{FSTAB_SWAP} {{f=1}} END {{exit !f}}' /etc/fstab",
    HAS_APT: "command -v apt-get >/dev/null",
    **{f"tool:{tool}": f"command -v {tool} >/dev/null" for tool in PREFLIGHT_TOOLS},
}

JOIN_RE = re.compile(r"^kubeadm join (?P<endpoint>\S+) --token (?P<token>[a-z0-9]{6}\.[a-z0-9]{16}) "
                     r"--discovery-token-ca-cert-hash (?P<ca_hash>sha256:[0-9a-f]{64})\s*$")
CERTIFICATE_KEY_RE = re.compile(r"^[0-9a-f]{64}$")


class KubeadmError(PodnetError, RuntimeError):
    """Creating or joining the cluster failed; the message says where and what kubeadm said."""


@dataclass(frozen=True)
class Bootstrap:
    """What kubeadm does on this host in this run."""

    creates_cluster: bool = False  # kubeadm init (first control-plane host)
    creates_control_plane: bool = False  # kubeadm writes this host's static pod manifests


# --- what the node should hold ------------------------------------------------------


def binaries(kubeadm, kubelet, kubectl) -> list[DesiredFile]:
    """The three verified downloads, into /usr/local/bin."""
    return [local_file(KUBEADM, kubeadm), local_file(KUBELET, kubelet), local_file(KUBECTL, kubectl)]


def kubelet_args(s: Settings) -> list[str]:
    """Flags the kubelet gets through KUBELET_EXTRA_ARGS: its node IP on the nodes' own network."""
    return [f"--node-ip={s.node_ip}"] if s.node_ip is not None else []


def kubelet_files(s: Settings) -> list[DesiredFile]:
    return [
        text_file(KUBELET_UNIT_PATH, render("kubeadm/kubelet.service.j2", kubelet_path=KUBELET)),
        text_file(DROPIN_PATH, render("kubeadm/10-kubeadm.conf.j2", kubelet_path=KUBELET,
                                      defaults_path=KUBELET_DEFAULTS_PATH)),
        text_file(KUBELET_DEFAULTS_PATH, render("kubeadm/kubelet.default.j2", extra_args_line=environment_file_assignment(
            "KUBELET_EXTRA_ARGS", kubelet_args(s)))),
    ]


def host_port(address, port: int) -> str:
    return f"[{address}]:{port}" if ":" in str(address) else f"{address}:{port}"


def init_config(s: Settings) -> str:
    """
    kubeadm's configuration for `kubeadm init` on the first control-plane host: the API
    server on the node IP, the pod and service networks from the settings, the node IPAM
    flags podnet keeps on kube-controller-manager (so kubeadm writes them itself, and keeps them
    in the kubeadm-config ConfigMap that `kubeadm upgrade` reads), and the kubelet's cgroup driver
    matching containerd's (systemd_cgroup). In the format the kubeadm of kubernetes_version reads
    (config_api): v1beta3 with extraArgs as a map, v1beta4 with extraArgs as a list of name/value.
    The operator's kubeadm settings go where kubeadm reads them (same field names in v1beta3 and
    v1beta4): nodeRegistration.ignorePreflightErrors, etcd.external.endpoints, the fields of
    kubelet_configuration in the KubeletConfiguration document, and a KubeProxyConfiguration
    document (kubeproxy.config.k8s.io/v1alpha1) when kube_proxy_configuration has fields.
    """
    pods = [str(s.cluster_cidr)] + ([str(s.cluster_cidr_ipv6)] if s.cluster_cidr_ipv6 else [])
    services = [str(s.service_cluster_ip_range)] + (
        [str(s.service_cluster_ip_range_ipv6)] if s.service_cluster_ip_range_ipv6 else [])
    flags = [(name, value) for name, value in controller_manager.desired_flags(s).items() if value is not None]
    api_version = config_api(s.kubernetes_version)
    return render("kubeadm/kubeadm-init.yaml.j2", api_version=api_version,
                  extra_args_style=kubeadm_config.EXTRA_ARGS_STYLE[api_version],
                  advertise_address=str(s.node_ip), api_server_port=API_SERVER_PORT, cri_socket=CRI_SOCKET,
                  kubernetes_version=f"v{s.kubernetes_version}",
                  control_plane_endpoint=host_port(s.node_ip, API_SERVER_PORT),
                  pod_subnet=",".join(pods), service_subnet=",".join(services),
                  controller_manager_args=flags, cgroup_driver="systemd" if s.systemd_cgroup else "cgroupfs",
                  ignore_preflight_errors=list(s.kubeadm_ignore_preflight_errors),
                  etcd_endpoints=list(s.etcd_external_endpoints), kubelet_configuration=s.kubelet_configuration,
                  kube_proxy_configuration=s.kube_proxy_configuration)


def ownership(s: Settings) -> Ownership:
    """What cluster_bootstrap owns on a node: kubeadm, kubelet and kubectl, the kubelet's unit,
    kubeadm's drop-in and the kubelet's defaults, kubeadm init's configuration; kubelet.service."""
    return Ownership(
        "kubeadm",
        files=(*(OwnedFile(install_entry(name), f"release {name}") for name in KUBERNETES_BINARIES),
               OwnedFile(KUBELET_UNIT_PATH, "template kubeadm/kubelet.service.j2"),
               OwnedFile(DROPIN_PATH, "template kubeadm/10-kubeadm.conf.j2"),
               OwnedFile(KUBELET_DEFAULTS_PATH, "template kubeadm/kubelet.default.j2"),
               OwnedFile(INIT_CONFIG_PATH, "template kubeadm/kubeadm-init.yaml.j2")),
        units=(KUBELET_UNIT,))


def probe_request(s: Settings, is_first_control_plane: bool) -> ProbeRequest:
    """The declared files (kubeadm init's configuration on the first control-plane host only), the kubelet's
    unit, kubeadm's preflight features."""
    declared = ownership(s)
    here = replace(declared, files=tuple(f for f in declared.files
                                         if is_first_control_plane or f.path != INIT_CONFIG_PATH))
    return here.probe_request().merge(ProbeRequest(features=dict(FEATURES)))


# --- prerequisites ---------------------------------------------------------------------


def missing_tools(node: NodeState) -> list[str]:
    return [tool for tool in PREFLIGHT_TOOLS if not node.features.get(f"tool:{tool}")]


def prerequisites(s: Settings, node: NodeState, host_name: str) -> None:
    """Swap off for good (the kubelet refuses to start with swap) and kubeadm's preflight tools."""
    swap_commands = ["swapoff -a"]
    if node.features.get(SWAP_IN_FSTAB):
        swap_commands = ["cp -p /etc/fstab /etc/fstab.podnet-bak",
                         f"awk '{FSTAB_SWAP} {{print \"# disabled by podnet, the kubelet needs swap off: \" $0; next}} "
                         "{print}' /etc/fstab > /etc/fstab.podnet-new",
                         "mv -f /etc/fstab.podnet-new /etc/fstab", "swapoff -a"]
    swap_on = [what for what, on in (("active", node.features.get(SWAP_ACTIVE)),
                                     ("in /etc/fstab", node.features.get(SWAP_IN_FSTAB))) if on]
    ops.shell_when(name="kubeadm: swap off (the kubelet does not run with swap)", commands=swap_commands,
                   reason=f"swap is {' and '.join(swap_on)}" if swap_on else None)
    missing = missing_tools(node)
    packages = sorted({PREFLIGHT_TOOLS[tool] for tool in missing})
    if missing and not node.features.get(HAS_APT):
        raise KubeadmError(f"{host_name}: {', '.join(missing)} not found; kubeadm's preflight checks need them. "
                           f"podnet installs them with apt-get on Debian and Ubuntu and this host has none: "
                           f"install {', '.join(packages)} and rerun")
    ops.shell_when(name="kubeadm: tools kubeadm's preflight checks need",
                   commands=[f"{APT_INSTALL} {' '.join(packages)}"],
                   reason=f"installing {', '.join(packages)} (missing: {', '.join(missing)})" if missing else None)


# --- kubeadm init and join ---------------------------------------------------------------


_asked: dict[tuple[str, str], str | tuple[str, str, str]] = {}
_asked_lock = threading.Lock()


def _ask_control_plane(state, control_plane_name: str, what: str, command: str, parse):
    """Run ``command`` on the first control-plane host once per run and parse its answer."""
    with _asked_lock:
        key = (control_plane_name, what)
        if key not in _asked:
            control_plane = state.inventory.get_host(control_plane_name)
            ok, output = control_plane.run_shell_command(command, **connector_arguments_of(state, control_plane))
            lines = [line.strip() for line in output.stdout_lines if line.strip()]
            answer = parse(lines) if ok else None
            if answer is None:
                shown = " ".join(output.stderr_lines or ["(nothing)"])[:300] if not ok else "an unexpected answer"
                raise KubeadmError(f"{control_plane_name}: `{command.split(' --')[0]}` for the {what} failed: {shown}")
            _asked[key] = answer
        return _asked[key]


def parse_join_command(lines: list[str]) -> tuple[str, str, str] | None:
    """`kubeadm token create --print-join-command` -> (endpoint, token, CA cert hash)."""
    for line in reversed(lines):
        match = JOIN_RE.match(line)
        if match:
            return match.group("endpoint"), match.group("token"), match.group("ca_hash")
    return None


def parse_certificate_key(lines: list[str]) -> str | None:
    """`kubeadm init phase upload-certs --upload-certs` prints the key on its last line."""
    return lines[-1] if lines and CERTIFICATE_KEY_RE.match(lines[-1]) else None


def join_command(endpoint: str, token: str, ca_hash: str, s: Settings,
                 certificate_key: str | None = None) -> StringCommand:
    """`kubeadm join`, with the secrets masked in pyinfra's logs (and kubeadm_ignore_preflight_errors,
    which join reads from --ignore-preflight-errors since podnet gives it no configuration file)."""
    # Every word is one shell word (tasks/formats/shell.py), the secrets too, so no value is shell syntax.
    bits: list = [KUBEADM, "join", shell.word(endpoint), "--token", HiddenValue(shell.word(token)),
                  "--discovery-token-ca-cert-hash", shell.word(ca_hash), shell.word(f"--cri-socket={CRI_SOCKET}")]
    if s.kubeadm_ignore_preflight_errors:
        bits.append(shell.word(f"--ignore-preflight-errors={','.join(s.kubeadm_ignore_preflight_errors)}"))
    if certificate_key is not None:
        bits += ["--control-plane", "--certificate-key", HiddenValue(shell.word(certificate_key)),
                 shell.word(f"--apiserver-advertise-address={s.node_ip}")]
    return StringCommand(*bits)


def join(state, host, connector_arguments: dict, s: Settings, control_plane_name: str) -> bool:
    """
    At execution time: ask the first control-plane host for a join command (and, to join as a
    control-plane host, for a certificate key), then run `kubeadm join` here. KubeadmError when
    the first control-plane host failed earlier in this run (e.g. its `kubeadm init`): pyinfra
    goes on with the other hosts, and a join could only fail on a cluster that does not exist.
    """
    if state.inventory.get_host(control_plane_name) in state.failed_hosts:
        raise KubeadmError(f"{host.name}: not joining: {control_plane_name}, which creates the cluster, failed earlier "
                           "in this run (its error is above); fix that and rerun")
    endpoint, token, ca_hash = _ask_control_plane(
        state, control_plane_name, "join token",
        f"{KUBEADM} token create --print-join-command --ttl {TOKEN_TTL}", parse_join_command)
    certificate_key = None
    if s.is_control_plane:
        certificate_key = _ask_control_plane(state, control_plane_name, "certificate key",
                                             f"{KUBEADM} init phase upload-certs --upload-certs",
                                             parse_certificate_key)
    ok, output = host.run_shell_command(join_command(endpoint, token, ca_hash, s, certificate_key),
                                        **connector_arguments)
    if not ok:
        raise KubeadmError(f"{host.name}: kubeadm join {endpoint} failed: {' '.join(output.stderr_lines)[-600:]}; "
                           "run `kubeadm reset -f` on it before the next run")
    return True


def apply(s: Settings, node: NodeState, files: list[DesiredFile], host_name: str,
          first_control_plane: str | None) -> Bootstrap:
    """Binaries, kubelet, then kubeadm init (first control-plane host) or join (every other host)."""
    unit_files = kubelet_files(s)
    changed = ops.files_needing_change([*files, *unit_files], node)
    ops.files_installed(name="kubeadm: kubeadm, kubelet and kubectl binaries", files=files, current=node)
    ops.files_installed(name="kubeadm: kubelet unit, kubeadm drop-in and node IP", files=unit_files, current=node)
    restart = [f for f in changed if f.path != KUBEADM and f.path != KUBECTL and f.differs(node.hashes.get(f.path))]
    ops.service_running(name="kubeadm: kubelet enabled and running", unit=KUBELET_UNIT, current=node,
                        restart=bool(restart),
                        daemon_reload=any(f.path in (KUBELET_UNIT_PATH, DROPIN_PATH) for f in changed))

    # Every host gets the same four steps, in the same order, each doing nothing where it does
    # not apply: pyinfra orders operations by each host's sequence, and this is what makes
    # every join wait for kubeadm init.
    initialised = bool(node.features.get(INITIALISED))
    joined = bool(node.features.get(JOINED))
    first = host_name == first_control_plane
    init_needed = first and not initialised
    control_plane_join = s.is_control_plane and not first and not initialised
    worker_join = not s.is_control_plane and not joined
    ops.files_installed(name="kubeadm: init configuration", current=node,
                        files=[text_file(INIT_CONFIG_PATH, init_config(s), mode="0600")] if init_needed else [])
    ops.shell_when(name="kubeadm: control plane initialised (kubeadm init)",
                   commands=[f"{KUBEADM} init --config {INIT_CONFIG_PATH}"],
                   reason=f"{ADMIN_CONF} is missing: creating the cluster" if init_needed else None)
    ops.python_step(name="kubeadm: control-plane host joined (kubeadm join --control-plane)", function=join,
                    args=(s, first_control_plane),
                    reason=f"{ADMIN_CONF} is missing: joining the control plane" if control_plane_join else None)
    ops.python_step(name="kubeadm: worker joined (kubeadm join)", function=join, args=(s, first_control_plane),
                    reason=f"{KUBELET_CONF} is missing: joining the cluster" if worker_join else None)
    return Bootstrap(creates_cluster=init_needed, creates_control_plane=init_needed or control_plane_join)


# --- the steps ----------------------------------------------------------------------------


def _bootstraps(ctx: HostContext) -> bool:
    return ctx.settings.cluster_bootstrap


def _probe(ctx: HostContext) -> ProbeRequest:
    return probe_request(ctx.settings, ctx.is_first_control_plane)


def _apply(ctx: HostContext) -> None:
    bootstrap = apply(ctx.settings, ctx.node, binaries(*(ctx.file(name) for name in KUBERNETES_BINARIES)),
                      ctx.host_name, ctx.first_control_plane)
    ctx.cluster_created = bootstrap.creates_cluster
    ctx.control_plane_created = bootstrap.creates_control_plane


PREREQUISITES = Step(
    "kubeadm: swap off and preflight tools",
    applies=_bootstraps,
    probe=_probe,
    apply=lambda ctx: prerequisites(ctx.settings, ctx.node, ctx.host_name),
)
BOOTSTRAP = Step(
    "kubeadm: kubelet, kubeadm and kubectl; kubeadm init or join",
    applies=_bootstraps,
    probe=_probe,
    artifacts=lambda ctx: KUBERNETES_BINARIES,
    apply=_apply,
)
