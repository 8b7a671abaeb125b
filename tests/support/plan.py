"""
Plan tests through the real pyinfra CLI and its ``@fake`` connector.

- ``probe_answer(NodeState)`` is the stdout the probe script would print on a node in
  that state (the format ``tasks.engine.probe.parse_probe`` reads).
- ``converged_state(...)`` is the NodeState of a node that already holds exactly what
  podnet would install, computed from the same renderers and release files.
- ``write_inventory`` writes a pyinfra inventory of ``@fake`` hosts whose
  ``fake_responses`` answer the probe; ``run_pyinfra`` runs ``pyinfra --debug ...`` on
  ``deploy.py`` and returns what the fake connector was asked to run and upload, and
  (with ``--dry --json``) which operations would change which host.
- ``Cluster``: a kubeadm control plane (``CP``) and a worker (``WORKER``) as ``@fake``
  hosts, their settings, fresh and converged states and inventory, over the release
  files served on loopback (the ``mirror`` and ``cluster`` fixtures of tests/conftest.py).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tasks import cni, containerd, controller_manager, flannel, kernel, kubeadm_config
from tasks.artifacts import catalog as artifacts
from tasks.engine.desired import DesiredFile, text_file
from tasks.engine.probe import NodeState
from tasks.settings import Settings, parse_host_settings
from tests.support.http import ScriptedServer
from tests.support.kubeadm import KUBEADM_MANIFEST
from tests.support.releases import ARCH, MACHINE, Releases

REPO = Path(__file__).resolve().parents[2]
# The first line of tasks.engine.probe.probe_script: only the probe contains it.
PROBE_MARK = 'printf "machine %s'
PROBE_RE = r"printf \"machine %s"
FAKE_CONNECTION_PID = 4242  # the connection process the run lock names on a fake node


def probe_answer(state: NodeState) -> list[str]:
    """What the probe prints on a node in ``state``."""
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    lines = [f"machine {state.machine}"]
    lines += [f"sha\t{digest}\t{path}" for path, digest in state.hashes.items()]
    lines += [f"mode\t{mode}\t{path}" for path, mode in state.modes.items()]
    lines += [f"content\t{path}\t{b64(data)}" for path, data in state.contents.items()]
    lines += [f"sysctl\t{key}\t{'-' if value is None else value}" for key, value in state.sysctls.items()]
    lines += [f"feature\t{name}\t{int(present)}" for name, present in state.features.items()]
    lines += [f"unit\t{unit}\t{active}\t{enabled}" for unit, (active, enabled) in state.units.items()]
    lines += [f"entry\t{directory}\t{entry}" for directory, entries in state.listings.items() for entry in entries]
    lines += [f"query\t{name}\t{rc}\t{b64(chr(10).join(out).encode())}\t{b64(state.query_stderr.get(name, '').encode())}"
              for name, (rc, out) in state.queries.items()]
    for path, target in state.sysctl_files.items():
        lines.append(f"sysctlfile\t{path}\t{target}")
        lines += [f"sysctlline\t{path}\t{line}" for line in state.sysctl_lines.get(path, [])]
    return lines


def fresh_state(settings: Settings, *, kcm_manifest: str | None = None, first_control_plane: bool = False,
                conf_dir_entries: tuple[str, ...] = ()) -> NodeState:
    """A node with nothing of podnet's on it (a control plane installed by kubeadm, if given)."""
    state = NodeState(machine=MACHINE)
    state.sysctls = {key: None if key.startswith("net.bridge.") else "0" for key in kernel.parameters(settings)}
    state.features = {module: False for module in kernel.MODULE_FEATURES}
    state.units = {containerd.UNIT: ("inactive", "not-found")}
    if conf_dir_entries:
        state.listings[settings.cni_conf_dir] = list(conf_dir_entries)
    if kcm_manifest is not None:
        state.contents[settings.kube_controller_manager_manifest] = kcm_manifest.encode()
    if first_control_plane:
        state.queries["flannel_manifest"] = (0, [])
        state.queries["pod_cidrs"] = (0, [])
        state.queries[flannel.RBAC_QUERY] = (0, [])
    return state


def installed_binaries(settings: Settings, releases: Releases) -> dict[str, bytes]:
    """Path on the node -> content, for every file the concerns' declarations (tasks/engine/ownership.py)
    say podnet installs from ``releases``: containerd's, the CNI plugins, flanneld with the systemd rollout;
    archive members mapped to node paths by files/artifacts.yaml."""
    declarations = [containerd.ownership(settings), cni.ownership(settings)]
    if settings.flannel_rollout == "systemd":
        declarations.append(flannel.ownership(settings))
    names = dict.fromkeys(f.source.split()[1] for o in declarations for f in o.files
                          if f.source.split()[0] in ("archive", "release"))
    files = {}
    for name in names:
        local = releases.tree / releases.upstream_path(name)
        if isinstance(artifacts.install_entry(name), dict):  # an archive: its members, unpacked
            unpacked = releases.tree / "unpacked" / name
            if not unpacked.exists():
                with tarfile.open(local) as tar:
                    tar.extractall(unpacked, filter="data")
            local = unpacked
        files.update({path: source.read_bytes()
                      for path, source in artifacts.installed_files(settings, name, local, ARCH)})
    return files


def converged_state(settings: Settings, releases: Releases, *, host_names: list[str],
                    kcm_manifest: str | None = None, first_control_plane: bool = False) -> NodeState:
    """A node that already holds exactly what podnet would install with ``settings``."""
    state = NodeState(machine=MACHINE)
    text_files: list[DesiredFile] = [*kernel.desired_files(settings), containerd.unit_file(),
                                     containerd.config_file(settings), cni.conflist_file(settings)]
    if first_control_plane and settings.flannel_rollout == "daemonset":
        manifest = flannel.render_manifest(settings)
        text_files.append(text_file(flannel.MANIFEST_PATH, manifest))
        state.queries["flannel_manifest"] = (0, [flannel.manifest_sha256(manifest)])
    if flannel.checks_pod_cidrs(settings, first_control_plane):
        network = settings.cluster_cidr
        subnets = network.subnets(new_prefix=settings.node_cidr_mask_size)
        state.queries["pod_cidrs"] = (0, [f"{name} {next(subnets)}" for name in host_names])
    if settings.flannel_rollout == "systemd":
        files, unit = flannel.systemd_files(settings, releases.tree / releases.upstream_path("flanneld"))
        text_files += [f for f in files if f.is_text] + [unit]
        state.units[flannel.UNIT] = ("active", "enabled")
        # flanneld's own kubeconfig and token, root-only, the token good for most of a year
        for path in (flannel.KUBECONFIG_PATH, flannel.TOKEN_PATH):
            state.hashes[path], state.modes[path] = "e" * 64, "600"
        state.contents[flannel.TOKEN_EXPIRY_PATH] = f"{int(time.time()) + flannel.TOKEN_DURATION - 60}\n".encode()
        state.hashes[flannel.TOKEN_EXPIRY_PATH], state.modes[flannel.TOKEN_EXPIRY_PATH] = "d" * 64, "600"
        if first_control_plane:
            rbac = text_file(flannel.RBAC_PATH, flannel.render_rbac(settings))
            text_files.append(rbac)
            state.queries[flannel.RBAC_QUERY] = (0, list(flannel.RBAC_OBJECTS))
    for f in text_files:
        state.hashes[f.path] = f.sha256
        state.modes[f.path] = f.mode.lstrip("0")
        state.contents[f.path] = f.content  # what the probe reads of a managed text file under --diff
    for path, data in installed_binaries(settings, releases).items():
        state.hashes[path] = hashlib.sha256(data).hexdigest()
        state.modes[path] = "755"
    state.sysctls = dict(kernel.parameters(settings))
    state.sysctl_files[kernel.SYSCTL_PATH] = kernel.SYSCTL_PATH
    state.sysctl_lines[kernel.SYSCTL_PATH] = [f"{key} = {value}" for key, value in kernel.parameters(settings).items()]
    state.features = {module: True for module in kernel.MODULE_FEATURES}
    state.units[containerd.UNIT] = ("active", "enabled")
    state.listings[settings.cni_conf_dir] = [cni.CONFLIST_NAME]
    if kcm_manifest is not None:
        merged = controller_manager.merge_manifest(kcm_manifest, controller_manager.desired_flags(settings))
        state.contents[settings.kube_controller_manager_manifest] = (merged or kcm_manifest).encode()
    return state


def kubeadm_config_answer(cluster_configuration: str | None, resource_version: str = "4711") -> tuple[int, list[str]]:
    """What the probe's kubeadm-config query (tasks.kubeadm_config.query_command) reports: nothing when
    ConfigMap kube-system/kubeadm-config does not exist, else kubectl's jsonpath output (marker line with
    the resourceVersion, then the ClusterConfiguration document)."""
    if cluster_configuration is None:
        return 0, []
    return 0, [f"{kubeadm_config.MARK} {resource_version}", *cluster_configuration.splitlines()]


@dataclass
class FakeNode:
    """One @fake host of a generated inventory."""

    name: str  # without the "@fake/" prefix
    group: str  # "control_plane" or "workers"
    data: dict
    probe: list[str]  # the probe's stdout on this node
    # Further scripted answers: command substring -> stdout lines.
    responses: dict[str, list[str]] = field(default_factory=dict)

    @property
    def host(self) -> str:
        return f"@fake/{self.name}"


def write_inventory(path: Path, nodes: list[FakeNode]) -> Path:
    groups: dict[str, list[str]] = {}
    for node in nodes:
        data = dict(node.data, fake_delay=0, fake_delay_jitter=0)
        # the run lock (tasks/engine/run_lock.py) taken for the fake connection, unless the test scripts its answer
        probe = node.probe if any(line.startswith("runlock\t") for line in node.probe) else \
            [*node.probe, f"runlock\ttaken\t{FAKE_CONNECTION_PID}"]
        responses = ", ".join([f"re.compile({PROBE_RE!r}): {probe!r}",
                               *(f"{k!r}: {v!r}" for k, v in node.responses.items())])
        entry = f"({node.host!r}, dict({data!r}, fake_responses={{{responses}}}))"
        groups.setdefault(node.group, []).append(entry)
    body = "".join(f"{group} = [\n" + "".join(f"    {e},\n" for e in entries) + "]\n"
                   for group, entries in groups.items())
    path.write_text("import re\n\n" + body)
    return path


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    def commands(self, host: str) -> list[str]:
        """The first line of every shell command the fake connector was asked to run on ``host``."""
        marker = f"[fake] simulating command on {host}: "
        return [line.split(marker, 1)[1] for line in self.stderr.splitlines() if marker in line]

    def uploads(self, host: str) -> list[str]:
        marker = f"[fake] simulating put_file on {host}: "
        return [line.split(marker, 1)[1].strip() for line in self.stderr.splitlines() if marker in line]

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def plan(self) -> dict[str, list[str]]:
        """From ``--dry --json`` (without -y): operation name -> hosts it would change."""
        return {op["name"]: sorted(op["hosts_with_change"]) for op in json.loads(self.stdout)["plan"]}


def run_pyinfra(inventory: Path, *options: str, timeout: float = 180, deploy: str = "deploy.py") -> Run:
    """``pyinfra --debug OPTIONS INVENTORY deploy.py`` (or another ``deploy`` file) from the repo root
    (the fake connector logs every command and upload it is given at debug level)."""
    args = [sys.executable, "-m", "pyinfra", "--debug", *options, str(inventory), deploy]
    env = dict(os.environ, PYINFRA_FAKE_DELAY="0", PYINFRA_FAKE_DELAY_JITTER="0", PYINFRA_PROGRESS="off",
               PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYINFRA_YES", None)
    # The release mirror runs on loopback in the test process: never through a proxy.
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    return Run(done.returncode, done.stdout, done.stderr)


# The two @fake hosts of ``Cluster``.
CP, WORKER = "@fake/cp1", "@fake/w1"
HOSTS = (CP, WORKER)
POD_CIDRS = ["cp1 10.244.0.0/24", "w1 10.244.1.0/24"]  # what `kubectl get nodes` reports after the rollout


def service_account_token(expires: int) -> str:
    """A JWT shaped like the TokenRequest API's (the signature is not checked by podnet)."""
    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")
    claims = {"exp": expires, "sub": "system:serviceaccount:kube-flannel:flannel"}
    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2ln"


FLANNEL_TOKEN = service_account_token(int(time.time()) + flannel.TOKEN_DURATION)
# The first control-plane host's answers for flanneld's token (systemd rollout)
FLANNEL_TOKEN_ANSWERS = {"create token flannel": [FLANNEL_TOKEN],
                         "config view --minify --raw": ["https://192.0.2.1:6443", "Q0EgY2VydA=="]}


@dataclass
class Cluster:
    """The plan tests' two hosts over the release files of ``releases``, served by ``server``; ``tmp`` holds
    the inventory, the download cache and the checksum lock."""

    releases: Releases
    server: ScriptedServer
    tmp: Path

    def data(self, **extra) -> dict:
        return {"mirror_url": self.server.url, "allow_insecure_http": True,  # the scripted server speaks http
                "artifact_checksums": self.releases.checksums(),
                "download_cache_dir": str(self.tmp / "cache"), "flannel_rollout_timeout": 10,
                "artifact_lock_file": str(self.tmp / "artifacts.lock.yaml"), **extra}

    def settings(self, host: str, **extra) -> Settings:
        group = "control_plane" if host == CP else "workers"
        return parse_host_settings(self.data(**extra), host, [group])

    def fresh(self, host: str, **kwargs) -> NodeState:
        s = self.settings(host, **kwargs.pop("data", {}))
        if host == CP:
            kwargs.setdefault("kcm_manifest", KUBEADM_MANIFEST)
            kwargs.setdefault("first_control_plane", s.flannel_rollout in ("daemonset", "systemd"))
        return fresh_state(s, **kwargs)

    def converged(self, host: str, **extra) -> NodeState:
        s = self.settings(host, **extra)
        if host == CP:
            return converged_state(s, self.releases, host_names=["cp1", "w1"], kcm_manifest=KUBEADM_MANIFEST,
                                   first_control_plane=s.flannel_rollout in ("daemonset", "systemd"))
        return converged_state(s, self.releases, host_names=["cp1", "w1"])

    def inventory(self, cp: NodeState, worker: NodeState, **extra) -> Path:
        nodes = [FakeNode("cp1", "control_plane", self.data(**extra), probe_answer(cp),
                          {"get nodes": POD_CIDRS, **FLANNEL_TOKEN_ANSWERS}),
                 FakeNode("w1", "workers", self.data(**extra), probe_answer(worker))]
        return write_inventory(self.tmp / "inventory.py", nodes)


def probes(run: Run, host: str) -> list[str]:
    return [c for c in run.commands(host) if c.startswith(PROBE_MARK)]


def assert_ok(run: Run) -> None:
    assert run.returncode == 0, run.stderr[-4000:]
