"""
A flannel cluster podnet did not deploy, made the usual way on a test cluster (testbed.kubebed: kubeadm's
certificates, kubeconfigs and static pod manifests; kube-controller-manager as a static pod): the doctor's
"foreign cluster" (tasks/doctor/foreign.py) is tested on it.

What the BED does here, in place of podnet, as an operator following kubeadm's and flannel's install guides
would:
- kube-controller-manager's node IPAM flags in its static pod manifest, as kubeadm writes them for a
  ClusterConfiguration with ``networking.podSubnet`` (``--allocate-node-cidrs=true``, ``--cluster-cidr``; no
  ``--node-cidr-mask-size``, so kube-controller-manager's default /24 applies);
- the containernetworking plugins flannel's cni-conf.json uses (PLUGINS: bridge and host-local for its delegate,
  portmap) and loopback (containerd's CRI brings up each pod's lo with it) in /opt/cni/bin, where kubeadm's
  install guide has the kubernetes-cni package put them (from the test mirror's release file; the package
  brings the others too, which nothing here runs);
- flannel's own Documentation/kube-flannel.yml of v0.28.9, applied with kubectl. It is kept byte for byte
  beside this module (``kube-flannel-v0.28.9.yml``, ``git show v0.28.9:Documentation/kube-flannel.yml`` of
  flannel-io/flannel, commit 5cd0d526; KUBE_FLANNEL_SHA256). ONLY its image references are changed, because
  this machine reaches no registry (IMAGES): they name the images the bed builds and loads into every node's
  containerd instead:
  - ``ghcr.io/flannel-io/flannel:v0.28.9`` -> ``docker.io/flannel/flannel:v0.28.9``: flanneld v0.28.9 from
    shared/bin with Debian's iptables (testbed.kubebed.cluster.flannel_image), the same image podnet's own
    DaemonSet uses in the tests; STAND-IN: its ``/opt/bin/install-conf`` (upstream's Go cmd/install_conf, not
    built here) is a C program doing the same (testbed.kubebed.cluster.INSTALL_CONF_C);
  - ``ghcr.io/flannel-io/flannel-cni-plugin:v1.9.1-flannel3`` ->
    ``docker.io/flannel/flannel-cni-plugin:v1.9.1-flannel1``: the flannel CNI plugin build of shared/bin
    (v1.9.1-flannel1; no build of -flannel3 exists here) at ``/flannel`` with Debian's ``cp``, which the
    manifest's init container runs (upstream's image is Alpine's).
THIS MACHINE'S QUIRK: test nodes have no default route, and flanneld without --iface (the manifest gives none)
uses the default route's interface (GetDefaultGatewayInterface, pkg/ip/iface.go). The bed gives each node a
default route on its test link via an address nobody holds (NOWHERE, the subnet's last host address): flanneld
finds the node's link and address, and a packet sent that way is dropped for want of an ARP answer, so nothing
leaves the test network. (podnet's beds set flannel_iface instead.)

Everything else of the manifest (namespace, RBAC, ConfigMap with net-conf.json and cni-conf.json, the
DaemonSet's init containers, flags, probes, volumes) is upstream's.

``remove()`` takes it all off again (the manifest's objects, the files its init containers and the bed wrote,
flannel's links and iptables chains, the manifest kube-controller-manager ran with before), so the cluster is
as ``install()`` found it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import tarfile
from pathlib import Path

from testbed.kubebed import binaries
from testbed.kubebed.cluster import FLANNEL_IMAGE, MANIFESTS, KubeBed, pod_ready, rootfs_image
from testbed.localcluster import Node

KUBE_FLANNEL_YML = Path(__file__).resolve().parent / "kubebed" / "kube-flannel-v0.28.9.yml"
KUBE_FLANNEL_SHA256 = "e875824be2f552b45711dbda91af81b17eb961d00025d914d9fef18fad8f09c0"
CNI_PLUGIN_IMAGE = f"docker.io/flannel/flannel-cni-plugin:v{binaries.FLANNEL_CNI_PLUGIN_VERSION}"
# upstream's image reference -> the image the bed serves under it (see the module docstring)
IMAGES = {
    "ghcr.io/flannel-io/flannel:v0.28.9": FLANNEL_IMAGE,
    "ghcr.io/flannel-io/flannel-cni-plugin:v1.9.1-flannel3": CNI_PLUGIN_IMAGE,
}
KCM_MANIFEST = f"{MANIFESTS}/kube-controller-manager.yaml"
NAMESPACE = "kube-flannel"
DAEMONSET = "kube-flannel-ds"
CNI_BIN_DIR = "/opt/cni/bin"
CONFLIST = "/etc/cni/net.d/10-flannel.conflist"
ROLLOUT_TIMEOUT = 120
PLUGINS = ("bridge", "host-local", "portmap", "loopback")
IPTABLES = ("iptables-nft", "iptables-legacy", "ip6tables-nft", "ip6tables-legacy")

def upstream_manifest() -> str:
    """flannel's kube-flannel.yml of v0.28.9 as upstream ships it (checked against KUBE_FLANNEL_SHA256)."""
    data = KUBE_FLANNEL_YML.read_bytes()
    if hashlib.sha256(data).hexdigest() != KUBE_FLANNEL_SHA256:
        raise RuntimeError(f"{KUBE_FLANNEL_YML} is not upstream's kube-flannel.yml of v0.28.9")
    return data.decode()


def manifest() -> str:
    """Upstream's kube-flannel.yml with only its image references pointed at the bed's images (IMAGES)."""
    text = upstream_manifest()
    for upstream, served in IMAGES.items():
        if f"image: {upstream}\n" not in text:
            raise RuntimeError(f"kube-flannel.yml names no image {upstream}")
        text = text.replace(f"image: {upstream}\n", f"image: {served}\n")
    return text


def cni_plugin_image(rootfs: Path) -> bytes:
    """The flannel CNI plugin at /flannel plus Debian's cp (what the manifest's install-cni-plugin runs)."""
    return rootfs_image(CNI_PLUGIN_IMAGE, rootfs, {"flannel": binaries.binary("flannel")}, ["/usr/bin/cp"],
                        env=["PATH=/usr/bin:/bin"],
                        created_by=f"podnet tests: flannel CNI plugin v{binaries.FLANNEL_CNI_PLUGIN_VERSION} "
                                   "(shared/bin) + Debian's cp")


class ForeignFlannel:
    """flannel as kube-flannel.yml deploys it, on a running KubeBed cluster without pod network."""

    def __init__(self, kube: KubeBed, cni_plugins_tarball: Path, cluster_cidr: str = "10.244.0.0/16"):
        self.kube = kube
        self.cni_plugins_tarball = Path(cni_plugins_tarball)
        self.cluster_cidr = cluster_cidr
        self.kcm_before: bytes | None = None

    @property
    def nowhere(self) -> str:
        """The default route's gateway on the test link: the subnet's last host address, which nobody holds."""
        return str(ipaddress.ip_network(self.kube.cluster.subnet).broadcast_address - 1)

    @property
    def nodes(self) -> list[Node]:
        return list(self.kube.cluster.nodes)

    def install(self) -> None:
        """Node IPAM flags, the CNI plugins and the images on the nodes, kube-flannel.yml applied; returns once
        every flannel pod is Ready (bounded)."""
        self.set_node_ipam()  # the kubelet restarts kube-controller-manager meanwhile
        self.install_plugins()
        image = cni_plugin_image(Path(self.kube.control_plane.rootfs))
        for node in self.nodes:
            self.kube.sh(node, f"ip route replace default via {self.nowhere} dev host0")
            self.kube.import_images(node, [image])
        self.kube.kubectl("apply -f -", input=manifest())
        self.kube.kubectl(f"-n {NAMESPACE} rollout status daemonset/{DAEMONSET} --timeout={ROLLOUT_TIMEOUT}s",
                          timeout=ROLLOUT_TIMEOUT + 30)
        self.wait_for_controller_manager(with_node_ipam=True)

    def set_node_ipam(self) -> None:
        """kube-controller-manager's manifest with the flags kubeadm writes for networking.podSubnet (the kubelet
        then runs it anew: ``wait_for_controller_manager``)."""
        cp = self.kube.control_plane
        self.kcm_before = self.kube.get(cp, KCM_MANIFEST)
        text = self.kcm_before.decode()
        anchor = "    - kube-controller-manager\n"
        if anchor not in text or "--cluster-cidr" in text:
            raise RuntimeError(f"{KCM_MANIFEST} is not kubeadm's manifest without a pod subnet")
        text = text.replace(anchor, anchor + "    - --allocate-node-cidrs=true\n"
                                             f"    - --cluster-cidr={self.cluster_cidr}\n", 1)
        self.kube.put(self.kube.control_plane, KCM_MANIFEST, text, 0o600)

    def wait_for_controller_manager(self, with_node_ipam: bool) -> None:
        """Until (bounded) kube-controller-manager runs with (or without) --cluster-cidr."""
        has = f"tr '\\0' ' ' < /proc/$pid/cmdline | grep -q -- --cluster-cidr="
        self.kube.wait_for(self.kube.control_plane,
                           f"pid=$(pgrep -o -f '^kube-controller-manager ') && {'' if with_node_ipam else '! '}{has}",
                           f"kube-controller-manager {'with' if with_node_ipam else 'without'} node IPAM")

    def install_plugins(self) -> None:
        """The containernetworking PLUGINS in /opt/cni/bin (the kubernetes-cni package's place)."""
        with tarfile.open(self.cni_plugins_tarball) as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            binaries = {name: tar.extractfile(members[name]).read() for name in PLUGINS}
        for node in self.nodes:
            for name, data in binaries.items():
                self.kube.put(node, f"{CNI_BIN_DIR}/{name}", data, 0o755)

    def pods_ready(self) -> dict[str, str]:
        """Node name -> its flannel pod's name, every pod Ready."""
        pods = json.loads(self.kube.kubectl(f"-n {NAMESPACE} get pods -o json"))["items"]
        return {pod["spec"]["nodeName"]: pod["metadata"]["name"] for pod in pods if pod_ready(pod)}

    def remove(self) -> None:
        """Everything ``install`` and the manifest put on the cluster, taken off; kube-controller-manager's manifest
        as it was. Pods still using the network should be deleted first."""
        # kube-controller-manager's garbage collector and namespace controller delete what the manifest made:
        # it is put back as it was only afterwards. The DaemonSet's pods need no grace: the bed takes their links
        # and chains off right after.
        self.kube.kubectl("delete -f - --ignore-not-found --grace-period=1 --wait=true --timeout=120s",
                          input=manifest(), timeout=180)
        if self.kcm_before is not None:
            self.kube.put(self.kube.control_plane, KCM_MANIFEST, self.kcm_before, 0o600)
        for node in self.nodes:
            files = " ".join(f"{CNI_BIN_DIR}/{name}" for name in [*PLUGINS, "flannel"])
            chains = "; ".join(f"command -v {t}-save >/dev/null && {t}-save | grep -q FLANNEL && "
                               f"{t}-save | grep -v FLANNEL | {t}-restore" for t in IPTABLES)
            self.kube.sh(node, f"rm -f {files} {CONFLIST}; rm -rf /run/flannel /var/lib/cni/networks/cbr0; "
                               f"for l in flannel.1 cni0; do ip link del $l 2>/dev/null; done; {chains}; "
                               f"ip route del default via {self.nowhere} dev host0 2>/dev/null; true")
        if self.kcm_before is not None:
            self.wait_for_controller_manager(with_node_ipam=False)
            self.kcm_before = None
