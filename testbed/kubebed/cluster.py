"""
A real Kubernetes cluster on the local test nodes, as it looks before podnet runs.

On the first node: etcd (Debian's ``etcd-server``), kube-apiserver, kube-controller-manager
and kube-scheduler, either as kubeadm-style static pods run by the kubelet from
``/etc/kubernetes/manifests`` (``runtime="static-pod"``, podnet's default) or as systemd
units (``runtime="systemd"``). Their certificates, kubeconfigs and manifests are made by
the real kubeadm (``kubeadm init phase certs|kubeconfig|control-plane``) with external
etcd and no pod subnet, so kube-controller-manager runs without node IPAM. The systemd
units run the exact command lines of kubeadm's manifests.

On every node: a route for the service network on the node's link (test nodes have no
default route, and a local client's connection to a ClusterIP needs some route before
kube-proxy's DNAT applies), containerd and runc (the release podnet will install, with a config of its
own that has no ``cni`` section), the kubelet (``--node-ip`` on the test network, pods
through containerd's CRI) and kube-proxy (iptables mode). Nodes register, no node has a
podCIDR, and no pod network exists: that is what podnet's deploy must then provide.

Dual stack (``dual_stack=True``, on nodes booted with IPv6 addresses): the API server serves
both service ranges (``--service-cluster-ip-range=<v4>,<v6>``, through kubeadm's
``serviceSubnet``), each kubelet runs with ``--node-ip=<v4>,<v6>``, both service ranges are
routed on the node link, and kube-proxy (iptables mode) programs both families.
kube-controller-manager still runs without node IPAM: podnet turns it on, for both families.

TEST-MACHINE SETTINGS, not podnet's (see shared/bin/README.md and docs/testbed.md): the
kubelet gets ``failCgroupV1: false`` (cgroup v1 here), ``cgroupsPerQOS: false``,
``enforceNodeAllocatable: []``, ``failSwapOn: false`` and ``protectKernelDefaults:
true`` with read-only files bound over the kernel sysctls it would otherwise write
(nspawn's /proc/sys is the host's: the host kernel must not be changed); kube-proxy is
told not to touch conntrack sysctls; images are built locally from the binaries (no
registry).
"""

from __future__ import annotations

import json
import shlex
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from testbed.cri.pause import build_pause_binary, build_static_binary, layered_image_bytes
from testbed.kubebed import binaries
from testbed.localcluster import Cluster, Node

K8S_DIR = "/etc/kubernetes"
MANIFESTS = f"{K8S_DIR}/manifests"
ADMIN_CONF = f"{K8S_DIR}/admin.conf"
KUBEADM_CONFIG = "/etc/podnet-test/kubeadm.yaml"
SERVICE_CIDR = "10.96.0.0/12"
# The IPv6 service range of a dual-stack bed (kube-apiserver's second --service-cluster-ip-range): unique
# local, inside no node or host network; /112 is within what kubeadm accepts (at most 20 host bits).
SERVICE_CIDR_IPV6 = "fd00:10:96::/112"
CONTROL_PLANE = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
RUNTIMES = ("static-pod", "systemd")
# What the kubelet would write into the (host's) kernel sysctls: bound read-only instead.
KUBELET_SYSCTLS = {"vm/overcommit_memory": "1", "vm/panic_on_oom": "0", "kernel/panic": "10",
                   "kernel/panic_on_oops": "1", "kernel/keys/root_maxkeys": "1000000",
                   "kernel/keys/root_maxbytes": "25000000"}
# Bounds the waits for the API server and the nodes: on the shared 2-core test machine under load (seen: load
# average 100) kube-apiserver was seen needing more than 180 s to answer /readyz after etcd started.
READY_TIMEOUT = 300
FLANNEL_IMAGE = f"docker.io/flannel/flannel:v{binaries.FLANNELD_VERSION}"
# What flanneld needs in its image besides itself: iptables (nft and legacy), from the node's Debian.
IPTABLES_COMMANDS = ("iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save",
                     "ip6tables-restore", "iptables-nft", "iptables-nft-save", "iptables-nft-restore",
                     "ip6tables-nft", "ip6tables-nft-save", "ip6tables-nft-restore", "iptables-legacy",
                     "iptables-legacy-save", "iptables-legacy-restore", "ip6tables-legacy",
                     "ip6tables-legacy-save", "ip6tables-legacy-restore")


class KubeBedError(RuntimeError):
    pass


@dataclass
class KubeBed:
    """The Kubernetes side of a test cluster; ``install()`` brings it up on booted nodes."""

    cluster: Cluster
    workdir: Path
    runtime: str = "static-pod"
    containerd_tarball: Path | None = None  # the release podnet will install (pre-installed here)
    runc_binary: Path | None = None
    containerd_config_version: int = 3
    sandbox_image: str = "registry.k8s.io/pause:3.10"
    systemd_cgroup: bool = True
    dual_stack: bool = False  # the API server and kubelets dual-stack (the nodes need IPv6 addresses)

    def __post_init__(self):
        if self.runtime not in RUNTIMES:
            raise KubeBedError(f"runtime must be one of {RUNTIMES}")
        if self.dual_stack and not all(n.ip6 for n in self.cluster.nodes):
            raise KubeBedError("a dual-stack cluster needs nodes with IPv6 addresses (Cluster(ipv6=True))")
        self.workdir = Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)

    # --- shortcuts ---------------------------------------------------------------------

    @property
    def control_plane(self) -> Node:
        return self.cluster.nodes[0]

    def sh(self, node: Node, command: str, check: bool = True, timeout: float = 120, input: str | None = None) -> str:
        done = self.cluster.ssh(node, command, check=False, timeout=timeout, input=input)
        if check and done.returncode != 0:
            raise KubeBedError(f"{node.name}: `{command[:200]}` failed ({done.returncode}): "
                               f"{(done.stderr or done.stdout)[-2000:]}")
        return done.stdout

    def kubectl(self, args: str, check: bool = True, input: str | None = None, timeout: float = 120) -> str:
        return self.sh(self.control_plane, f"kubectl --kubeconfig={ADMIN_CONF} {args}", check=check, input=input,
                       timeout=timeout)

    def put(self, node: Node, path: str, data: bytes | str, mode: int = 0o644) -> None:
        """Write a file into the node's root from the host (through its overlay mount)."""
        target = Path(node.rootfs) / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.podnet-test")
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        tmp.chmod(mode)
        tmp.replace(target)

    def get(self, node: Node, path: str) -> bytes:
        return (Path(node.rootfs) / path.lstrip("/")).read_bytes()

    # --- bring-up ------------------------------------------------------------------------

    @property
    def service_cidrs(self) -> list[str]:
        """The service ranges, IPv4 first (kube-apiserver's --service-cluster-ip-range)."""
        return [SERVICE_CIDR, SERVICE_CIDR_IPV6] if self.dual_stack else [SERVICE_CIDR]

    def node_ips(self, node: Node) -> list[str]:
        """The node's addresses as its kubelet's --node-ip gives them, IPv4 first."""
        return [node.ip, node.ip6] if self.dual_stack else [node.ip]

    def service_routes(self) -> str:
        """The shell command routing the service ranges on the node link."""
        return " && ".join(f"ip route replace {cidr} dev host0" for cidr in self.service_cidrs)

    def install(self) -> None:
        """Everything a cluster has before podnet: see the module docstring. Idempotent per node set."""
        for node in self.cluster.nodes:
            self.put(node, SHUTDOWN_DROPIN, SHUTDOWN_CONF)
            self.sh(node, "systemctl daemon-reexec")
            self.protect_kernel_sysctls(node)
            self.sh(node, self.service_routes())
            self._install_binaries(node)
            self.install_containerd(node)
        self._import_images()
        self._control_plane_files()
        for node in self.cluster.nodes:
            self._kubelet(node)
            self._kube_proxy(node)
        self._start_control_plane()
        self.wait_ready()

    def after_reboot(self, node: Node) -> None:
        """The test-bed settings a node loses when its container reboots (they live in /run and in its
        network namespace): the read-only kernel sysctls for the kubelet and the service route; then the
        kubelet, which exited while they were missing, is started again. Nothing of podnet's."""
        self.protect_kernel_sysctls(node)
        self.sh(node, f"{self.service_routes()} && systemctl restart kubelet.service")

    def protect_kernel_sysctls(self, node: Node) -> None:
        """Read-only files with the values the kubelet wants, bound over KUBELET_SYSCTLS in the node
        (nspawn's /proc/sys is the shared host's kernel, which must not change)."""
        script = ["mkdir -p /run/podnet-test/sysctl"]
        for key, value in KUBELET_SYSCTLS.items():
            file = f"/run/podnet-test/sysctl/{key.replace('/', '.')}"
            script.append(f"grep -qs ' /proc/sys/{key} ' /proc/self/mounts || {{ echo {value} > {file} && "
                          f"mount --bind {file} /proc/sys/{key} && mount -o remount,bind,ro /proc/sys/{key}; }}")
        self.sh(node, " && ".join(script))

    def _install_binaries(self, node: Node) -> None:
        names = ["kubelet", "kube-proxy"]
        if node is self.control_plane:
            names += ["kubectl", "kubeadm", *CONTROL_PLANE]
        for name in names:
            self.put(node, f"/usr/local/bin/{name}", binaries.binary(name).read_bytes(), 0o755)

    def install_containerd(self, node: Node) -> None:
        """The runtime the kubelet already uses before podnet: same release, a config of its own."""
        if self.containerd_tarball is None or self.runc_binary is None:
            raise KubeBedError("containerd_tarball and runc_binary are needed")
        with tarfile.open(self.containerd_tarball) as tar:
            for member in tar.getmembers():
                if member.isfile() and member.name.startswith("bin/"):
                    self.put(node, f"/usr/local/bin/{Path(member.name).name}", tar.extractfile(member).read(), 0o755)
        self.put(node, "/usr/local/sbin/runc", self.runc_binary.read_bytes(), 0o755)
        self.put(node, "/etc/containerd/config.toml", self._containerd_config())
        self.put(node, "/etc/systemd/system/containerd.service", CONTAINERD_UNIT)
        self.sh(node, "systemctl daemon-reload && systemctl enable --now containerd")

    def _containerd_config(self) -> str:
        cgroup = "true" if self.systemd_cgroup else "false"
        if self.containerd_config_version == 2:
            return (f"version = 2\n[plugins.'io.containerd.grpc.v1.cri']\n  sandbox_image = '{self.sandbox_image}'\n"
                    "  restrict_oom_score_adj = true\n"
                    "[plugins.'io.containerd.grpc.v1.cri'.containerd.runtimes.runc]\n"
                    "  runtime_type = 'io.containerd.runc.v2'\n"
                    f"[plugins.'io.containerd.grpc.v1.cri'.containerd.runtimes.runc.options]\n  SystemdCgroup = {cgroup}\n")
        return (f"version = 3\n[plugins.'io.containerd.cri.v1.images'.pinned_images]\n  sandbox = '{self.sandbox_image}'\n"
                "[plugins.'io.containerd.cri.v1.runtime']\n  restrict_oom_score_adj = true\n"
                "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]\n"
                "  runtime_type = 'io.containerd.runc.v2'\n"
                f"[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]\n  SystemdCgroup = {cgroup}\n")

    # --- images --------------------------------------------------------------------------

    def _import_images(self) -> None:
        pause = pause_image(self.sandbox_image)
        flannel = flannel_image(Path(self.control_plane.rootfs))
        for node in self.cluster.nodes:
            images = [pause, flannel]
            if node is self.control_plane and self.runtime == "static-pod":
                images += control_plane_images()
            self.import_images(node, images)

    def import_images(self, node: Node, images: list[bytes]) -> None:
        """Load image archives (docker-archive tars) into the node's containerd, namespace k8s.io."""
        for index, archive in enumerate(images):
            self.put(node, f"/var/tmp/podnet-test-image-{index}.tar", archive)
        self.sh(node, " && ".join(f"ctr -n k8s.io images import /var/tmp/podnet-test-image-{i}.tar >/dev/null && "
                                  f"rm /var/tmp/podnet-test-image-{i}.tar" for i in range(len(images))), timeout=300)

    # --- control plane -------------------------------------------------------------------

    def _kubeadm_config(self) -> str:
        node = self.control_plane
        return f"""\
apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint:
  advertiseAddress: {node.ip}
  bindPort: 6443
nodeRegistration:
  name: {node.name}
  criSocket: unix:///run/containerd/containerd.sock
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: v{binaries.KUBERNETES_VERSION}
clusterName: podnet-test
controlPlaneEndpoint: {node.ip}:6443
networking:
  serviceSubnet: {",".join(self.service_cidrs)}
etcd:
  external:
    endpoints: [http://127.0.0.1:2379]
"""

    def _control_plane_files(self) -> None:
        cp = self.control_plane
        self.put(cp, KUBEADM_CONFIG, self._kubeadm_config())
        phases = ["certs all", "kubeconfig admin", "kubeconfig super-admin", "kubeconfig controller-manager",
                  "kubeconfig scheduler", "kubeconfig kubelet", "control-plane all"]
        self.sh(cp, " && ".join(f"kubeadm init phase {p} --config {KUBEADM_CONFIG} >/dev/null" for p in phases))
        if self.runtime == "systemd":
            for name in CONTROL_PLANE:
                manifest = f"{MANIFESTS}/{name}.yaml"
                pod = yaml.safe_load(self.get(cp, manifest))
                command = pod["spec"]["containers"][0]["command"]
                command[0] = f"/usr/local/bin/{command[0]}"
                self.put(cp, f"/etc/systemd/system/{name}.service", control_plane_unit(name, command))
                self.sh(cp, f"rm {manifest}")
        for node in self.cluster.nodes:
            if node is not cp:
                kubeconfig = self.sh(cp, f"kubeadm kubeconfig user --config {KUBEADM_CONFIG} "
                                         f"--client-name system:node:{node.name} --org system:nodes")
                self.put(node, f"{K8S_DIR}/kubelet.conf", kubeconfig, 0o600)
                self.put(node, f"{K8S_DIR}/pki/ca.crt", self.get(cp, f"{K8S_DIR}/pki/ca.crt"))
        proxy = self.sh(cp, f"kubeadm kubeconfig user --config {KUBEADM_CONFIG} --client-name system:kube-proxy")
        for node in self.cluster.nodes:
            self.put(node, f"{K8S_DIR}/kube-proxy.conf", proxy, 0o600)

    def _start_control_plane(self) -> None:
        cp = self.control_plane
        self.sh(cp, "systemctl unmask etcd.service && systemctl enable --now etcd.service")
        if self.runtime == "systemd":
            units = " ".join(f"{name}.service" for name in CONTROL_PLANE)
            self.sh(cp, f"systemctl daemon-reload && systemctl enable --now {units}")
        self.wait_for(cp, f"kubectl --kubeconfig={K8S_DIR}/super-admin.conf get --raw /readyz", "the API server")
        # What `kubeadm init` binds: admin.conf's group (kubeadm >= 1.29), and the API server's
        # client to the kubelets (logs, exec).
        for name, role, subject in (("kubeadm:cluster-admins", "cluster-admin", "--group=kubeadm:cluster-admins"),
                                    ("kubeadm:kube-apiserver-kubelet-client", "system:kubelet-api-admin",
                                     "--user=kube-apiserver-kubelet-client")):
            self.sh(cp, f"kubectl --kubeconfig={K8S_DIR}/super-admin.conf get clusterrolebinding {name} >/dev/null "
                        f"2>&1 || kubectl --kubeconfig={K8S_DIR}/super-admin.conf create clusterrolebinding {name} "
                        f"--clusterrole={role} {subject} >/dev/null")

    # --- node agents -----------------------------------------------------------------------

    def _kubelet(self, node: Node) -> None:
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "authentication": {"x509": {"clientCAFile": f"{K8S_DIR}/pki/ca.crt"}, "webhook": {"enabled": True},
                               "anonymous": {"enabled": False}},
            "authorization": {"mode": "Webhook"},
            "cgroupDriver": "systemd" if self.systemd_cgroup else "cgroupfs",
            "containerRuntimeEndpoint": "unix:///run/containerd/containerd.sock",
            "clusterDNS": ["10.96.0.10"], "clusterDomain": "cluster.local",
            "staticPodPath": MANIFESTS,
            "rotateCertificates": False,
            # test machine: cgroup v1, no QoS cgroups, no allocatable enforcement, swap allowed
            "failCgroupV1": False, "cgroupsPerQOS": True, "failSwapOn": False,
            # the kernel sysctls are bound read-only with the values the kubelet wants
            "protectKernelDefaults": True,
            # locally built images must never be garbage-collected (there is no registry to pull them from)
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        }
        self.put(node, "/var/lib/kubelet/config.yaml", yaml.safe_dump(config))
        if node is self.control_plane:
            self.sh(node, f"mkdir -p {MANIFESTS}")
        self.put(node, "/etc/systemd/system/kubelet.service", KUBELET_UNIT.format(node_ip=",".join(self.node_ips(node))))
        self.sh(node, "systemctl daemon-reload && systemctl enable --now kubelet.service")

    def _kube_proxy(self, node: Node) -> None:
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": f"{K8S_DIR}/kube-proxy.conf"},
            "mode": "iptables", "hostnameOverride": node.name, "bindAddress": node.ip,
            # test machine: leave the conntrack sysctls (some are the host's) alone
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        }
        self.put(node, "/var/lib/kube-proxy/config.yaml", yaml.safe_dump(config))
        self.put(node, "/etc/systemd/system/kube-proxy.service", KUBE_PROXY_UNIT)
        self.sh(node, "systemctl daemon-reload && systemctl enable --now kube-proxy.service")

    # --- waiting -------------------------------------------------------------------------

    def wait_for(self, node: Node, command: str, what: str, timeout: float = READY_TIMEOUT) -> str:
        """Run ``command`` on ``node`` every second until it succeeds (bounded); its output."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            done = self.cluster.ssh(node, command, check=False, timeout=30)
            if done.returncode == 0:
                return done.stdout
            last = (done.stderr or done.stdout)[-500:]
            time.sleep(1)
        raise KubeBedError(f"{node.name}: {what} not ready after {timeout:.0f}s: {last}")

    def wait_ready(self) -> None:
        """Every node registered; kube-controller-manager and kube-scheduler running."""
        names = sorted(n.name for n in self.cluster.nodes)
        deadline = time.monotonic() + READY_TIMEOUT + 5 * len(names)  # kubelets register one by one
        seen: list[str] = []
        while time.monotonic() < deadline:
            seen = sorted(self.kubectl("get nodes -o jsonpath='{.items[*].metadata.name}'", check=False).split())
            if seen == names:
                break
            time.sleep(1)
        else:
            missing = [n for n in self.cluster.nodes if n.name not in seen]
            raise KubeBedError(f"nodes registered: {seen}, expected {names}; the kubelet of each missing node:\n"
                               + "\n".join(f"{n.name}: {self.kubelet_state(n)}" for n in missing[:5]))
        for name in ("kube-controller-manager", "kube-scheduler"):
            self.wait_for(self.control_plane, f"kubectl --kubeconfig={ADMIN_CONF} -n kube-system get lease {name} "
                                           "-o jsonpath='{.spec.holderIdentity}' | grep -q .", f"{name}'s leader lease")
        # pods need their namespace's default service account, made by the controller manager
        self.wait_for(self.control_plane, f"kubectl --kubeconfig={ADMIN_CONF} get serviceaccount default",
                   "the default service account")

    def pod_cidrs_by_family(self) -> dict[str, list[str]]:
        """Node name -> spec.podCIDRs (one per IP family, as kube-controller-manager gave them; [] where none)."""
        out = self.kubectl("get nodes -o jsonpath='{range .items[*]}{.metadata.name}{\" \"}{.spec.podCIDRs[*]}"
                           "{\"\\n\"}{end}'")
        return {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}

    def kubelet_state(self, node: Node) -> str:
        """Whether the node's kubelet runs, and its last log lines (why a node did not register)."""
        return self.sh(node, "systemctl is-active kubelet.service; journalctl -u kubelet.service -n 3 --no-pager -o cat",
                       check=False, timeout=30).strip().replace("\n", " | ")[-600:]

    def live_pods(self, namespace: str) -> list[dict]:
        """The pods of ``namespace`` (kubectl's JSON), those being deleted left out."""
        pods = json.loads(self.kubectl(f"-n {namespace} get pods -o json"))["items"]
        return [pod for pod in pods if not pod["metadata"].get("deletionTimestamp")]

    def pod_cidrs(self) -> dict[str, str]:
        """Node name -> spec.podCIDR ('' where none)."""
        out = self.kubectl("get nodes -o jsonpath='{range .items[*]}{.metadata.name}{\" \"}{.spec.podCIDR}{\"\\n\"}"
                           "{end}'")
        return {line.split(" ", 1)[0]: line.partition(" ")[2].strip() for line in out.splitlines() if line.strip()}


def pod_ready(pod: dict) -> bool:
    """The pod's Ready condition is True (kubectl's JSON): what kubectl's READY column and podnet's doctor read."""
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


# --- images ----------------------------------------------------------------------------------


def binary_image(image_name: str, binary_name: str) -> bytes:
    """An image holding one static binary at /usr/local/bin/<name>, as kubeadm's manifests run it."""
    return layered_image_bytes(image_name, [(f"usr/local/bin/{binary_name}", binaries.binary(binary_name).read_bytes(),
                                             0o755)],
                               env=["PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                               created_by=f"podnet tests: {binary_name} v{binaries.KUBERNETES_VERSION} (shared/bin)")


def pause_image(name: str) -> bytes:
    """The sandbox image under ``name``: a static pause binary (no registry to pull it from)."""
    return layered_image_bytes(name, [("pause", build_pause_binary().read_bytes(), 0o755)],
                               entrypoint=["/pause"], created_by="podnet tests: static pause")


def control_plane_images() -> list[bytes]:
    """kube-apiserver, kube-controller-manager and kube-scheduler under the names kubeadm's manifests use."""
    return [binary_image(f"registry.k8s.io/{name}:v{binaries.KUBERNETES_VERSION}", name) for name in CONTROL_PLANE]


# STAND-IN for flannel's cmd/install_conf (v0.28.9), which the manifest's install-cni init container runs:
# copies <src> to <dest> atomically as utils.CopyFileAtomic does (a temporary file beside <dest>, synced, given
# <src>'s mode, renamed over <dest>).
INSTALL_CONF_C = r"""
/* install-conf: flannel's cmd/install_conf for podnet's test bed (no Go toolchain here). */
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: %s <src> <dest>\n", argv[0]); return 1; }
    char dir[4096], base[4096], tmp[8300];
    snprintf(dir, sizeof dir, "%s", argv[2]);
    snprintf(base, sizeof base, "%s", argv[2]);
    snprintf(tmp, sizeof tmp, "%s/.%s.tmpXXXXXX", dirname(dir), basename(base));
    struct stat st;
    int in = open(argv[1], O_RDONLY);
    if (in < 0 || fstat(in, &st) < 0) { perror(argv[1]); return 1; }
    int out = mkstemp(tmp);
    if (out < 0) { perror(tmp); return 1; }
    char buf[65536];
    ssize_t n;
    while ((n = read(in, buf, sizeof buf)) > 0)
        if (write(out, buf, (size_t)n) != n) { perror(tmp); unlink(tmp); return 1; }
    if (n < 0 || fsync(out) < 0 || fchmod(out, st.st_mode & 07777) < 0 || close(out) < 0) {
        perror(tmp); unlink(tmp); return 1;
    }
    if (rename(tmp, argv[2]) < 0) { perror(argv[2]); unlink(tmp); return 1; }
    return 0;
}
"""


def install_conf_binary() -> Path:
    """The static install-conf stand-in (built once, cached)."""
    return build_static_binary("install-conf", INSTALL_CONF_C)


def flannel_image(rootfs: Path) -> bytes:
    """flanneld at /opt/bin/flanneld (as upstream's image) plus the iptables it runs, taken with
    its libraries from a Debian node root (upstream's image is Alpine with iptables), and the install-conf
    stand-in at /opt/bin/install-conf, which flannel's own kube-flannel.yml runs (testbed/foreignbed.py)."""
    return iptables_image(FLANNEL_IMAGE, rootfs, {"opt/bin/flanneld": binaries.binary("flanneld"),
                                                  "opt/bin/install-conf": install_conf_binary()},
                          env=["PATH=/opt/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                          created_by=f"podnet tests: flanneld v{binaries.FLANNELD_VERSION} (shared/bin) + "
                                     "Debian's iptables")


def kube_proxy_image(rootfs: Path) -> bytes:
    """kube-proxy at /usr/local/bin/kube-proxy plus iptables, under the name kubeadm's kube-proxy
    DaemonSet uses (upstream's image is distroless with iptables)."""
    return iptables_image(f"registry.k8s.io/kube-proxy:v{binaries.KUBERNETES_VERSION}", rootfs,
                          {"usr/local/bin/kube-proxy": binaries.binary("kube-proxy")},
                          env=["PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                          created_by=f"podnet tests: kube-proxy v{binaries.KUBERNETES_VERSION} (shared/bin) + "
                                     "Debian's iptables")


def iptables_image(image_name: str, rootfs: Path, binaries_in_image: dict[str, Path], env: list[str],
                   created_by: str) -> bytes:
    """An image of the given binaries (path in image -> file) plus iptables with its libraries
    and extensions, taken from a Debian node root."""
    commands = [f"/usr/sbin/{command}" for command in IPTABLES_COMMANDS]
    # iptables' nft backend and xtables extensions are loaded at run time
    commands += [f"/{extension_dir}/{file.name}" for extension_dir in ("usr/lib/x86_64-linux-gnu/xtables",)
                 for file in sorted((rootfs / extension_dir).glob("*.so"))]
    return rootfs_image(image_name, rootfs, binaries_in_image, commands, env, created_by,
                        extra={"etc/protocols": ((rootfs / "etc/protocols").read_bytes(), 0o644)})


def rootfs_image(image_name: str, rootfs: Path, binaries_in_image: dict[str, Path], commands: list[str],
                 env: list[str], created_by: str, extra: dict[str, tuple[bytes, int]] | None = None) -> bytes:
    """An image of the given binaries (path in image -> file) plus ``commands`` (absolute paths, links followed;
    those missing left out) with the shared libraries they load, taken from a Debian node root."""
    members: dict[str, tuple[bytes, int]] = {path: (file.read_bytes(), 0o755)
                                             for path, file in binaries_in_image.items()}
    for command in commands:
        path = _resolve_in(rootfs, command)
        if path is not None:
            members.setdefault(command.lstrip("/"), ((rootfs / path.lstrip("/")).read_bytes(), 0o755))
            for library in _libraries(rootfs, path):
                members.setdefault(library.lstrip("/"), ((rootfs / library.lstrip("/")).read_bytes(), 0o755))
    members.update(extra or {})
    members["run/.keep"] = (b"", 0o644)
    return layered_image_bytes(image_name, [(name, data, mode) for name, (data, mode) in sorted(members.items())],
                               env=env, created_by=created_by)


def _resolve_in(rootfs: Path, path: str, depth: int = 0) -> str | None:
    """``path`` inside ``rootfs`` with symlinks followed inside it (alternatives), or None."""
    full = rootfs / path.lstrip("/")
    if depth > 10 or not (full.exists() or full.is_symlink()):
        return None
    if full.is_symlink():
        target = Path(full.readlink().as_posix())
        target = target if target.is_absolute() else Path(path).parent / target
        return _resolve_in(rootfs, str(target), depth + 1)
    return path


def _libraries(rootfs: Path, path: str) -> list[str]:
    """The shared libraries an ELF file in ``rootfs`` loads (ldd run in a chroot), symlinks resolved."""
    import subprocess

    done = subprocess.run(["chroot", str(rootfs), "ldd", path], capture_output=True, text=True, timeout=60)
    libraries = []
    for line in done.stdout.splitlines():
        parts = line.split()
        candidate = parts[2] if "=>" in parts and len(parts) > 2 else parts[0] if parts and parts[0].startswith("/") \
            else None
        if candidate and candidate.startswith("/"):
            resolved = _resolve_in(rootfs, candidate)
            if resolved:
                libraries.append(candidate)
                if resolved != candidate:
                    libraries.append(resolved)
    return libraries


def control_plane_unit(name: str, command: list[str]) -> str:
    return (f"# podnet test bed: {name} as kubeadm's manifest runs it, as a systemd unit\n"
            f"[Unit]\nDescription={name}\nAfter=network.target etcd.service\n\n"
            f"[Service]\nExecStart={' '.join(shlex.quote(part) for part in command)}\n"
            "Restart=always\nRestartSec=2\n\n[Install]\nWantedBy=multi-user.target\n")


# The test bed's nodes wait at most 10 s for a unit to stop, not systemd's 90 s: at a node's reboot
# (tests/test_faults_e2e.py) a pod's containerd-shim-runc-v2 was seen to outlive every other process for the
# whole 90 s before systemd killed it. What the test asserts is what comes back after the reboot.
SHUTDOWN_DROPIN = "/etc/systemd/system.conf.d/podnet-test-bed.conf"
SHUTDOWN_CONF = "# podnet test bed: a throwaway node's units get 10 s to stop\n[Manager]\nDefaultTimeoutStopSec=10s\n"


CONTAINERD_UNIT = """\
# podnet test bed: containerd as the cluster ran it before podnet
[Unit]
Description=containerd container runtime
After=network.target local-fs.target

[Service]
ExecStart=/usr/local/bin/containerd
Type=notify
Delegate=yes
KillMode=process
Restart=always
RestartSec=5
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity

[Install]
WantedBy=multi-user.target
"""

KUBELET_UNIT = """\
# podnet test bed: the kubelet
[Unit]
Description=kubelet
After=containerd.service

[Service]
ExecStart=/usr/local/bin/kubelet --config=/var/lib/kubelet/config.yaml --kubeconfig=/etc/kubernetes/kubelet.conf --node-ip={node_ip}
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
"""

KUBE_PROXY_UNIT = """\
# podnet test bed: kube-proxy
[Unit]
Description=kube-proxy
After=network.target

[Service]
ExecStart=/usr/local/bin/kube-proxy --config=/var/lib/kube-proxy/config.yaml
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
"""
