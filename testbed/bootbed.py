"""
The cluster_bootstrap test bed: fresh Debian nodes (testbed.localcluster) with no kubelet,
kubeadm, kubectl or control plane, on which podnet's deploy creates the cluster with the
real kubeadm (`kubeadm init` on the first node, `kubeadm join` on the others), then node
IPAM and flannel. Pods are then run and pinged with PodBed's checks.

Before podnet runs, each node gets only what THIS MACHINE needs and what no registry can
give (see docs/testbed.md, "cluster_bootstrap on the test nodes"):

- read-only files bound over the kernel sysctls the kubelet would otherwise write (nspawn's
  /proc/sys is the shared host's), and a route for the service network on the node's link
  (test nodes have no default route; testbed.kubebed does the same);
- containerd of the release podnet installs, only so that the images kubeadm's static pods
  and DaemonSets name can be loaded beforehand (podnet then writes its own config and
  restarts it; the images stay): kube-apiserver, kube-controller-manager and kube-scheduler
  on the first node, kube-proxy (with iptables), flannel and the pause image on every node,
  all built locally from the binaries in shared/bin;
- ethtool and socat, the tools podnet would otherwise install with apt-get for kubeadm's
  preflight checks (the nodes have no internet): bookworm's .debs, downloaded on the host
  through the test mirror's private apt configuration and installed with dpkg;
- on the first node, Debian's etcd-server running (kubeadm's etcd image cannot be built
  here), listening on the node's address: the external etcd the inventory names in
  `etcd_external_endpoints`, which the API server of every control-plane host uses.

``deploy_watching_secrets`` runs the deploy while watching every process of the machine (the
nodes' and the laptop's: the host's /proc sees them all) and each node's kubeadm
JoinConfiguration file, to prove that a join's secrets are never on a command line.
"""

from __future__ import annotations

import json
import os
import re
import stat
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tasks import kubeadm as kubeadm_tasks
from tasks.engine.polling import poll
from testbed.kubebed import binaries
from testbed.kubebed.cluster import SERVICE_CIDR, KubeBed, control_plane_images, flannel_image, kube_proxy_image, pause_image
from testbed.localcluster import Node
from testbed.mirror import build as mirror_build
from testbed.podbed import DEPLOY_TIMEOUT, REPO, DeployRun, PodBed

# kubeadm 1.36's pause image (`kubeadm config images list`), and the one PodBed's pods run.
PAUSE_IMAGES = ("registry.k8s.io/pause:3.10.2", "registry.k8s.io/pause:3.10")
# What podnet would install with apt-get for kubeadm's preflight and the base rootfs lacks.
NODE_TOOLS = ("ethtool", "socat")
ETCD_PORT = 2379  # Debian's etcd-server, on the first node
WATCH_INTERVAL = 0.05  # seconds between two looks at the processes and join files (a join lasts 1.4-16 s)
# pyinfra's run log: an operation starts, a host reports a change
START_RE = re.compile(r"^--> Starting operation: (?P<name>.*?)\s*$")
HOST_SUCCESS_RE = re.compile(r"^\s+\[(?P<host>[^\]]+)\] Success\s*$")

# The switches this machine needs (each a podnet setting an operator would use the same way).
MACHINE_SETTINGS = {
    # SystemVerification: cgroup v1 here (kubeadm's check fails with it from 1.35 on); ExternalEtcdVersion:
    # Debian's etcd 3.4 is older than kubeadm's minimum (3.5.24); ImagePull: no registry, and no CoreDNS
    # image can be built here (its pods stay without image)
    "kubeadm_ignore_preflight_errors": ["SystemVerification", "ExternalEtcdVersion", "ImagePull"],
    # cgroup v1 on this machine; locally built images must never be garbage-collected (no registry)
    "kubelet_configuration": {"failCgroupV1": False, "imageGCHighThresholdPercent": 100,
                              "imageGCLowThresholdPercent": 99,
                              "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%",
                                               "imagefs.available": "1%"}},
    # leave the conntrack sysctls alone (some are the shared host's)
    "kube_proxy_configuration": {"conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                                               "tcpCloseWaitTimeout": "0s"}},
}


class BootBed(PodBed):
    """A PodBed whose cluster podnet creates; ``members`` are the nodes in the inventory."""

    def __init__(self, cluster, base_url: str, mirror, workdir: Path, members: int, control_planes: int = 1):
        super().__init__(cluster, base_url, mirror, "2.x", workdir)
        settings = self.inventory_data()
        self.kube = KubeBed(cluster, self.workdir / "kube",
                            containerd_tarball=mirror.path("containerd", settings["containerd_version"]),
                            runc_binary=mirror.path("runc", settings["runc_version"]))
        self.members = list(cluster.nodes[:members])  # the others wait to be added to the inventory
        # the first node creates the cluster; the last `control_planes - 1` nodes join as control-plane hosts
        self.control_planes = [cluster.nodes[0], *cluster.nodes[len(cluster.nodes) - control_planes + 1:]]

    @property
    def etcd_endpoint(self) -> str:
        """kubeadm's etcd image cannot be built here: Debian's etcd-server 3.4 on the first node."""
        return f"http://{self.cluster.nodes[0].ip}:{ETCD_PORT}"

    def inventory_data(self, **overrides) -> dict:
        # sandbox_image: podnet's default for kubernetes_version 1.36 (unset), kubeadm 1.36's pause, so
        # containerd's sandbox image and kubeadm's agree (kubeadm warns otherwise)
        # flannel_rollout_timeout: on the fresh cluster a kube-flannel pod was seen restarting (with back-off)
        # while the cluster settles; on this shared 2-core machine that can take longer than PodBed's 120 s
        return super().inventory_data(cluster_bootstrap=True, kubernetes_version=binaries.KUBERNETES_VERSION,
                                      sandbox_image=None, flannel_rollout_timeout=300,
                                      etcd_external_endpoints=[self.etcd_endpoint], **MACHINE_SETTINGS, **overrides)

    def write_inventory(self, **overrides) -> Path:
        self.overrides = dict(overrides)
        per_host = {n.name: {"flannel_iface": n.ip} for n in self.members}
        control_planes = [n for n in self.members if n in self.control_planes]
        nodes = control_planes + [n for n in self.members if n not in control_planes]
        return self.cluster.write_inventory(self.workdir / "inventory.py", self.inventory_data(**overrides),
                                            host_data=per_host, nodes=nodes, control_plane=len(control_planes))

    # --- the machine, before podnet ----------------------------------------------------

    def prepare_nodes(self) -> None:
        """What this machine needs before podnet (module docstring); no Kubernetes binary is installed."""
        assert self.kube is not None
        kube = self.kube
        control_plane = self.cluster.nodes[0]
        common = [pause_image(name) for name in PAUSE_IMAGES]
        common += [flannel_image(Path(control_plane.rootfs)), kube_proxy_image(Path(control_plane.rootfs))]
        tools = node_tool_debs()
        for node in self.cluster.nodes:
            for deb in tools:
                kube.put(node, f"/var/tmp/{deb.name}", deb.read_bytes())
            kube.sh(node, "dpkg -i " + " ".join(f"/var/tmp/{deb.name}" for deb in tools) + " >/dev/null && rm "
                    + " ".join(f"/var/tmp/{deb.name}" for deb in tools))
            kube.protect_kernel_sysctls(node)
            kube.sh(node, f"ip route replace {SERVICE_CIDR} dev host0")
            kube.install_containerd(node)
            kube.import_images(node, common + (control_plane_images() if node in self.control_planes else []))
        etcd = {"ETCD_LISTEN_CLIENT_URLS": f"http://127.0.0.1:{ETCD_PORT},{self.etcd_endpoint}",
                "ETCD_ADVERTISE_CLIENT_URLS": self.etcd_endpoint}
        kube.put(control_plane, "/etc/default/etcd", "".join(f"{k}={v}\n" for k, v in etcd.items()).encode())
        kube.sh(control_plane, "systemctl unmask etcd.service && systemctl enable --now etcd.service")
        kube.wait_for(control_plane, f"python3 -c \"import urllib.request; urllib.request.urlopen('{self.etcd_endpoint}"
                                     "/health', timeout=5)\"", "etcd")

    # --- the deploy, interrupted ---------------------------------------------------------

    def deploy_killed_at(self, operation: str) -> tuple[int, str]:
        """Run the real deploy and SIGKILL the pyinfra process (by its PID) as soon as it starts
        ``operation``, i.e. once every operation before it has finished on every host. Returns
        (exit status, output up to the kill). Fails if the run ends before reaching it (bounded)."""
        command = [sys.executable, "-m", "pyinfra", "-y", str(self.workdir / "inventory.py"), "deploy.py"]
        proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        lines: list[str] = []
        killed = False
        deadline = time.monotonic() + DEPLOY_TIMEOUT
        buffer = b""
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            try:
                while not killed and time.monotonic() < deadline:
                    if not selector.select(timeout=1):
                        continue
                    chunk = os.read(proc.stdout.fileno(), 65536)
                    if not chunk:
                        break
                    buffer += chunk
                    *complete, buffer = buffer.split(b"\n")
                    for raw in complete:
                        line = raw.decode(errors="replace")
                        lines.append(line)
                        match = START_RE.match(line)
                        if match and match.group("name") == operation:
                            os.kill(proc.pid, signal.SIGKILL)
                            killed = True
                            break
            finally:
                if not killed and proc.poll() is None:
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)
                proc.stdout.close()
        output = "\n".join(lines)
        (self.workdir / "killed-deploy.log").write_text(output)
        if not killed:
            raise AssertionError(f"the deploy never started {operation!r}:\n{output[-4000:]}")
        return proc.returncode, output

    # --- the deploy, watched for secrets -------------------------------------------------------

    def deploy_watching_secrets(self) -> tuple[DeployRun, "SecretWatch"]:
        """Run the real deploy while looking, every WATCH_INTERVAL seconds, at the command line of every
        process on this machine and at each node's kubeadm JoinConfiguration file (its mode and the
        token and certificate key it holds). Bounded by DEPLOY_TIMEOUT."""
        watch = SecretWatch()
        log = self.workdir / "watched-deploy.log"
        proc = self.start_deploy(log)
        deadline = time.monotonic() + DEPLOY_TIMEOUT
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                watch.look(self.cluster.node_path(node, kubeadm_tasks.JOIN_CONFIG_PATH) for node in self.members)
                time.sleep(WATCH_INTERVAL)
        finally:
            run = self.finish_deploy(proc, log)
        return run, watch

    # --- what a user sees ----------------------------------------------------------------

    def nodes_ready(self) -> dict[str, tuple[str, str]]:
        """Node name -> (Ready condition status, spec.podCIDR)."""
        items = json.loads(self.kubectl("get nodes -o json"))["items"]
        return {item["metadata"]["name"]: (
            next((c["status"] for c in item["status"].get("conditions", []) if c["type"] == "Ready"), ""),
            item["spec"].get("podCIDR", "")) for item in items}

    def wait_node_ready(self, name: str, timeout: float = 120) -> tuple[str, str]:
        """Node ``name``'s (Ready condition status, spec.podCIDR) once it is Ready, or as it stands after
        ``timeout`` seconds (a kubelet that just joined reports Ready after its first status update)."""
        poll(lambda: self.nodes_ready().get(name, ("", ""))[0] != "True", timeout, 2)
        return self.nodes_ready()[name]

    def bootstrap_tokens(self) -> list[str]:
        """The bootstrap token ids kubeadm has created (Secrets bootstrap-token-<id> in kube-system)."""
        out = self.kubectl("-n kube-system get secrets --field-selector type=bootstrap.kubernetes.io/token "
                           "-o jsonpath='{.items[*].metadata.name}'")
        return sorted(out.split())

    def has_file(self, node: Node, path: str) -> bool:
        return self.cluster.ssh(node, f"test -e {path}", check=False, timeout=30).returncode == 0


def node_tool_debs() -> list[Path]:
    """bookworm's .debs of NODE_TOOLS, downloaded once into the test cache (the mirror's private apt)."""
    root = mirror_build.cache_root()
    debdir = root / "debs" / "node-tools"
    debs = {mirror_build.deb_field(deb, "Package"): deb for deb in sorted(debdir.glob("*.deb"))}
    if set(NODE_TOOLS) - set(debs):
        stanzas = mirror_build.host_apt_stanzas()
        apt = mirror_build.PrivateApt(root / "apt" / "bookworm", mirror_build.private_source_lines(
            "bookworm", stanzas, mirror_build.host_codename()))
        apt.update()
        with tempfile.TemporaryDirectory(prefix=".dl-", dir=root) as tmp:
            for package, deb in apt.download(NODE_TOOLS, Path(tmp)).items():
                mirror_build.copy_atomic(deb, debdir / deb.name)
                debs[package] = debdir / deb.name
    return [debs[name] for name in NODE_TOOLS]


def changed_hosts(output: str) -> dict[str, list[str]]:
    """pyinfra's run log -> operation name -> the hosts it changed ("[host] Success"), in order."""
    changed: dict[str, list[str]] = {}
    operation = None
    for line in output.splitlines():
        start = START_RE.match(line)
        if start:
            operation = start.group("name")
            continue
        success = HOST_SUCCESS_RE.match(line)
        if success and operation is not None:
            changed.setdefault(operation, []).append(success.group("host"))
    return changed


class SecretWatch:
    """What ``BootBed.deploy_watching_secrets`` saw: every distinct process command line, and the
    join secrets (token, certificate key) and modes of the JoinConfiguration files."""

    def __init__(self):
        self.command_lines: set[str] = set()
        self.tokens: set[str] = set()
        self.certificate_keys: set[str] = set()
        self.modes: set[str] = set()

    def look(self, join_files) -> None:
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    with open(f"/proc/{entry.name}/cmdline", "rb") as cmdline:
                        self.command_lines.add(cmdline.read().replace(b"\0", b" ").decode(errors="replace"))
                except OSError:  # the process ended meanwhile
                    pass
        for path in join_files:
            try:
                mode = stat.S_IMODE(os.stat(path).st_mode)
                text = Path(path).read_text()
            except OSError:
                continue
            self.modes.add(f"{mode:o}")
            for key, found in (("token", self.tokens), ("certificateKey", self.certificate_keys)):
                match = re.search(rf"^\s*{key}: \"?([^\"\s]+)", text, re.MULTILINE)
                if match:
                    found.add(match.group(1))

    def secrets(self) -> set[str]:
        return self.tokens | self.certificate_keys

    def command_lines_holding_a_secret(self) -> list[str]:
        """Every command line seen that holds a token, a token's secret half, or a certificate key."""
        needles = self.certificate_keys | self.tokens | {token.split(".")[1] for token in self.tokens}
        return sorted(line for line in self.command_lines if any(needle in line for needle in needles))
