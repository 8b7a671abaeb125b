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
has joined and is not joined again.

Join secrets (README, "Secrets"): each join gets a bootstrap token of its own, created on the
first control-plane host at execution time right before the join (TTL TOKEN_TTL) and deleted
right after it; a control-plane join also gets the certificate key of `kubeadm init phase
upload-certs`. Both come back over SSH on stdout (never printed), go to the joining node only
inside its JoinConfiguration file (mode 0600, JOIN_CONFIG_PATH, removed after the join), and
are never on a command line.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, replace

from tasks import containerd, controller_manager, kubeadm_config

from tasks import redact
from tasks.engine import answers, ops, secret_files
from tasks.engine.context import HostContext, Step
from tasks.engine.desired import DesiredFile, local_file, render, text_file
from tasks.engine.findings import Finding, error, refuse, warning
from tasks.errors import PodnetError
from tasks.formats import shell
from tasks.formats.systemd_unit import environment_file_assignment
from tasks.engine.probe import NodeState, ProbeRequest
from tasks.artifacts.catalog import KUBERNETES_BINARIES, install_entry
from tasks.engine.ownership import Ownership, OwnedFile
from tasks.releases import (CONFIG_APIS, SUPPORTED_KUBERNETES, config_api, kubeadm_validates_config,  # noqa: F401
                            kubelet_refuses_cgroup_v1)
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
JOIN_CONFIG_PATH = "/run/podnet/kubeadm-join.yaml"  # only for the time of one join (/run: a tmpfs)
JOIN_COMMAND = f"{KUBEADM} join --config {JOIN_CONFIG_PATH}"  # every value in the file, none on the line
TOKEN_TTL = "15m"
# kubeadm init creates a bootstrap token whatever its configuration says: podnet uses none (each join
# gets its own) and keeps it out of the output (--skip-token-print); it expires at once and
# kube-controller-manager's tokencleaner (on in kubeadm clusters) deletes it
INIT_TOKEN_TTL = "1s"  # the longest a join's token lives, should podnet be stopped before deleting it

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
CGROUP_V2 = "cgroup:v2"  # /sys/fs/cgroup is the unified hierarchy (statfs type cgroup2fs), not cgroup v1's tmpfs
FSTAB_SWAP = "$1 !~ /^#/ && $3 == \"swap\""
FEATURES = {
    INITIALISED: f"[ -f {ADMIN_CONF} ]",
    JOINED: f"[ -f {KUBELET_CONF} ]",
    SWAP_ACTIVE: '[ "$(wc -l < /proc/swaps)" -gt 1 ]',
    SWAP_IN_FSTAB: f"awk '{FSTAB_SWAP} {{f=1}} END {{exit !f}}' /etc/fstab",
    HAS_APT: "command -v apt-get >/dev/null",
    CGROUP_V2: '[ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]',
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
                  kube_proxy_configuration=s.kube_proxy_configuration,
                  init_token_description="podnet: unused (each join gets a token of its own)",
                  init_token_ttl=INIT_TOKEN_TTL)


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


# kubeadm reads the staged init configuration itself before `kubeadm init` may use it: `kubeadm config
# validate` decodes every document strictly (an unknown or misplaced field, such as a KubeletConfiguration
# field kubelet_configuration misspells, fails with "strict decoding error: unknown field ...") and runs
# kubeadm's own validation (cmd/kubeadm/app/cmd/config.go newCmdConfigValidate, kubeadm 1.26 and later).
# `kubeadm join` gets no file from podnet (flags only), so init's is the one file to check. Releases
# without the command (kubeadm_validates_config) are checked by `kubeadm init` itself.
VALIDATE_CONFIG = f"{KUBEADM} config validate --config {{path}} >/dev/null"


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


def swap_on(node: NodeState) -> list[str]:
    return [what for what, on in (("active", node.features.get(SWAP_ACTIVE)),
                                  ("in /etc/fstab", node.features.get(SWAP_IN_FSTAB))) if on]


def prerequisite_findings(node: NodeState, host_name: str) -> list[Finding]:
    """An error: preflight tools missing on a host without apt-get (podnet cannot install them). Warnings
    (a deploy puts them right): swap on; preflight tools missing."""
    missing = missing_tools(node)
    packages = sorted({PREFLIGHT_TOOLS[tool] for tool in missing})
    found = []
    if missing and not node.features.get(HAS_APT):
        found.append(error(f"{', '.join(missing)} not found", KubeadmError, where=host_name,
                           text=f"{host_name}: {', '.join(missing)} not found; kubeadm's preflight checks need them. "
                                f"podnet installs them with apt-get on Debian and Ubuntu and this host has none: "
                                f"install {', '.join(packages)} and rerun"))
    elif missing:
        found.append(warning(f"{', '.join(missing)} not found", where=host_name,
                             why="kubeadm's preflight checks need them", fix=f"a deploy installs {', '.join(packages)}"))
    if swap_on(node):
        found.append(warning(f"swap is {' and '.join(swap_on(node))}", where=host_name,
                             why="the kubelet does not run with swap", fix="a deploy turns it off for good"))
    return found


def prerequisites(s: Settings, node: NodeState, host_name: str) -> None:
    """Swap off for good (the kubelet refuses to start with swap) and kubeadm's preflight tools."""
    swap_commands = ["swapoff -a"]
    if node.features.get(SWAP_IN_FSTAB):
        swap_commands = ["cp -p /etc/fstab /etc/fstab.podnet-bak",
                         f"awk '{FSTAB_SWAP} {{print \"# disabled by podnet, the kubelet needs swap off: \" $0; next}} "
                         "{print}' /etc/fstab > /etc/fstab.podnet-new",
                         "mv -f /etc/fstab.podnet-new /etc/fstab", "swapoff -a"]
    on = swap_on(node)
    ops.shell_when(name="kubeadm: swap off (the kubelet does not run with swap)", commands=swap_commands,
                   reason=f"swap is {' and '.join(on)}" if on else None)
    refuse(prerequisite_findings(node, host_name))
    missing = missing_tools(node)
    packages = sorted({PREFLIGHT_TOOLS[tool] for tool in missing})
    ops.shell_when(name="kubeadm: tools kubeadm's preflight checks need",
                   commands=[f"{APT_INSTALL} {' '.join(packages)}"],
                   reason=f"installing {', '.join(packages)} (missing: {', '.join(missing)})" if missing else None)


def kubelet_findings(s: Settings, node: NodeState, host_name: str) -> list[Finding]:
    """
    The refusal of a node whose kubelet would not start: a cgroup v1 node (the probe's CGROUP_V2 feature is
    false) with a kubelet release that refuses cgroup v1 by default (kubelet_refuses_cgroup_v1,
    KUBELET_CGROUP_V1 in tasks/releases.py) and kubelet_configuration without failCgroupV1: false.
    A KubeadmError naming the node, the release and the source.
    """
    row = kubelet_refuses_cgroup_v1(s.kubernetes_version)
    if row is None or node.features.get(CGROUP_V2, True) or s.kubelet_configuration.get(row.value) is False:
        return []
    said = (f"{host_name}: this node has cgroup v1 (/sys/fs/cgroup is not cgroup2fs) and the kubelet of "
            f"kubernetes_version {s.kubernetes_version} (kubelet {row.releases}) refuses to start on cgroup "
            f"v1 by default ({row.source}); boot the node with cgroup v2 (systemd.unified_cgroup_hierarchy=1), "
            f"or set kubelet_configuration = {{'{row.value}': False}} to keep cgroup v1 (deprecated)")
    return [error("this node has cgroup v1", KubeadmError, where=host_name, text=said)]


def kubelet_runs_here(s: Settings, node: NodeState, host_name: str) -> None:
    """Refuse, before any change, a node whose kubelet would not start (``kubelet_findings``)."""
    refuse(kubelet_findings(s, node, host_name))


# --- kubeadm init and join ---------------------------------------------------------------


_asked: dict[tuple[str, str], str] = {}
_asked_lock = threading.Lock()


def _on_control_plane(state, control_plane_name: str, what: str, command: str, parse):
    """Run ``command`` on the first control-plane host and parse its stdout (never printed: it may
    hold a secret); KubeadmError with kubeadm's stderr when it fails or answers something else."""
    ok, stdout, stderr = secret_files.run_quietly(state, control_plane_name, command)
    lines = [line.strip() for line in stdout if line.strip()]
    answer = parse(lines) if ok else None
    if answer is None:
        shown = ops.said(stderr or ["(nothing)"]) if not ok else "an unexpected answer"
        raise KubeadmError(f"{control_plane_name}: `{command.split(' --')[0]}` for the {what} failed: {shown}")
    return answer


def _ask_control_plane_once(state, control_plane_name: str, what: str, command: str, parse):
    """``_on_control_plane`` once per run (the hosts that need the answer share it)."""
    with _asked_lock:
        key = (control_plane_name, what)
        if key not in _asked:
            _asked[key] = _on_control_plane(state, control_plane_name, what, command, parse)
        return _asked[key]


def parse_join_command(lines: list[str]) -> tuple[str, str, str] | None:
    """`kubeadm token create --print-join-command` (its stdout) -> (endpoint, token, CA cert hash); the
    endpoint must be host:port (tasks/engine/answers.host_port), the token and hash fit JOIN_RE."""
    for line in reversed(lines):
        match = JOIN_RE.match(line)
        if match:
            try:
                answers.host_port(match.group("endpoint"))
            except answers.BadField:
                return None
            return match.group("endpoint"), match.group("token"), match.group("ca_hash")
    return None


def parse_certificate_key(lines: list[str]) -> str | None:
    """`kubeadm init phase upload-certs --upload-certs` prints the key on its last line."""
    return lines[-1] if lines and CERTIFICATE_KEY_RE.match(lines[-1]) else None


def token_create_command(host_name: str) -> str:
    """A bootstrap token for one join, living TOKEN_TTL at most (podnet deletes it right after the join)."""
    return (f"{KUBEADM} token create --print-join-command --ttl {TOKEN_TTL} "
            f"--description {shell.word(f'podnet: kubeadm join of {host_name}')}")


def upload_certs_command() -> str:
    """The control-plane certificates into the kubeadm-certs Secret, encrypted with a fresh key that
    kubeadm prints. With podnet's init configuration: without one, kubeadm looks for an address to
    advertise on the host's default route and fails on a node that has none."""
    return f"{KUBEADM} init phase upload-certs --upload-certs --config {INIT_CONFIG_PATH}"


def join_config(endpoint: str, token: str, ca_hash: str, s: Settings, certificate_key: str | None = None) -> str:
    """
    kubeadm's JoinConfiguration for `kubeadm join --config` (the config_api of kubernetes_version;
    the fields are the same in v1beta3 and v1beta4): discovery.bootstrapToken (apiServerEndpoint,
    token, caCertHashes), nodeRegistration (criSocket, ignorePreflightErrors) and, to join as a
    control-plane host, controlPlane (localAPIEndpoint on the node IP, certificateKey). It holds
    the join's secrets: written only by ``put_secret_file`` (mode 0600), removed after the join.
    """
    api_version = config_api(s.kubernetes_version)
    return render("kubeadm/kubeadm-join.yaml.j2", api_version=api_version, api_server_endpoint=endpoint,
                  token=token, ca_cert_hash=ca_hash, cri_socket=CRI_SOCKET,
                  ignore_preflight_errors=list(s.kubeadm_ignore_preflight_errors),
                  certificate_key=certificate_key, advertise_address=str(s.node_ip),
                  api_server_port=API_SERVER_PORT)


def join(state, host, connector_arguments: dict, s: Settings, control_plane_name: str) -> bool:
    """
    At execution time: ask the first control-plane host for a bootstrap token of this join's own
    (and, to join as a control-plane host, for a certificate key, once per run), write them into
    JOIN_CONFIG_PATH (mode 0600, never on a command line), run `kubeadm join --config` here, then,
    whatever its outcome, remove the file and delete the token from the cluster. KubeadmError when
    the first control-plane host failed earlier in this run (e.g. its `kubeadm init`): pyinfra
    goes on with the other hosts, and a join could only fail on a cluster that does not exist.
    """
    if state.inventory.get_host(control_plane_name) in state.failed_hosts:
        raise KubeadmError(f"{host.name}: not joining: {control_plane_name}, which creates the cluster, failed earlier "
                           "in this run (its error is above); fix that and rerun")
    certificate_key = None
    if s.is_control_plane:
        certificate_key = _ask_control_plane_once(state, control_plane_name, "certificate key",
                                                  upload_certs_command(), parse_certificate_key)
    endpoint, token, ca_hash = _on_control_plane(state, control_plane_name, "join token",
                                                 token_create_command(host.name), parse_join_command)
    failure = None
    try:
        secret_files.put_secret_file(host, connector_arguments, JOIN_CONFIG_PATH,
                                join_config(endpoint, token, ca_hash, s, certificate_key))
        ok, output = host.run_shell_command(JOIN_COMMAND, **connector_arguments)
        if not ok:
            said = redact.masked(" ".join(output.stderr_lines)[-600:], token, certificate_key)
            failure = f"kubeadm join {endpoint} failed: {said}; run `kubeadm reset -f` on it before the next run"
    except RuntimeError as error:
        failure = str(error)
    finally:
        left = _clean_up_join(state, host, connector_arguments, control_plane_name, token)
    if failure or left:
        raise KubeadmError(f"{host.name}: " + "; ".join(filter(None, [failure, left])))
    return True


def _clean_up_join(state, host, connector_arguments: dict, control_plane_name: str, token: str) -> str | None:
    """Remove the join's configuration file here and its token from the cluster; what could not be."""
    left = []
    if not secret_files.remove_file(host, connector_arguments, JOIN_CONFIG_PATH):
        left.append(f"{JOIN_CONFIG_PATH} could not be removed (it holds the join's secrets): remove it")
    token_id = token.split(".")[0]  # the public half names the token; the secret half stays off the command line
    ok, _, stderr = secret_files.run_quietly(state, control_plane_name, f"{KUBEADM} token delete {token_id}")
    if not ok:
        left.append(f"bootstrap token {token_id} could not be deleted on {control_plane_name} "
                    f"({redact.masked(' '.join(stderr)[-200:], token)}); it expires after {TOKEN_TTL}, "
                    f"or delete it now: kubeadm token delete {token_id}")
    return "; ".join(left) or None


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
    ops.files_installed(name="kubeadm: init configuration (checked by kubeadm config validate first)", current=node,
                        files=[text_file(INIT_CONFIG_PATH, init_config(s), mode="0600")] if init_needed else [],
                        validate=VALIDATE_CONFIG if kubeadm_validates_config(s.kubernetes_version) else None)
    ops.shell_when(name="kubeadm: control plane initialised (kubeadm init)",
                   commands=[f"{KUBEADM} init --config {INIT_CONFIG_PATH} --skip-token-print"],
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
    "kubeadm: swap off and preflight tools (cluster_bootstrap)",
    applies=_bootstraps,
    probe=_probe,
    findings=lambda ctx: [*kubelet_findings(ctx.settings, ctx.node, ctx.host_name),
                          *prerequisite_findings(ctx.node, ctx.host_name)],
    check=lambda ctx: kubelet_runs_here(ctx.settings, ctx.node, ctx.host_name),
    apply=lambda ctx: prerequisites(ctx.settings, ctx.node, ctx.host_name),
)
BOOTSTRAP = Step(
    "kubeadm: kubelet, kubeadm and kubectl; kubeadm init on the first control-plane host, join on the others "
    "(cluster_bootstrap)",
    applies=_bootstraps,
    probe=_probe,
    artifacts=lambda ctx: KUBERNETES_BINARIES,
    apply=_apply,
)
