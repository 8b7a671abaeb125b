"""
End to end: the real deploy.py, through the real pyinfra CLI over SSH, on 3 real Debian
nodes per containerd generation; then real pod sandboxes through containerd's CRI.
See tests/podbed.py for the stand-ins (kubeadm's manifest, flanneld's subnet.env, the
flannel CNI plugin) and why they are needed.

Run alone with: python3 -m pytest -m e2e
"""

from __future__ import annotations

import ipaddress
import os
import tomllib

import pytest
import yaml

from bench import run as node_costs  # counts what a pyinfra run cost each node, from its sshd log
from tasks import containerd as containerd_tasks
from tasks.settings import parse_host_settings
from tests.localcluster import Cluster
from tests.mirror import build_mirror, serve_mirror
from tests.podbed import FLANNELD_MTU, MANIFEST_PATH, PodBed
from tests.support.kubeadm import KUBEADM_MANIFEST

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="booting nodes needs root"),
]

NODES = 3


@pytest.fixture(scope="module")
def mirror():
    return build_mirror()


@pytest.fixture(scope="module", params=["1.x", "2.x"], ids=["containerd-1.x", "containerd-2.x"])
def bed(request, mirror, tmp_path_factory):
    generation = request.param
    name = "e2e1" if generation == "1.x" else "e2e2"
    workdir = tmp_path_factory.mktemp(f"bed-{name}")
    downloads: list = []
    with serve_mirror(mirror.root, request_log=downloads) as base_url, \
            Cluster(name=name, nodes=NODES, state_dir=workdir / "cluster") as cluster:
        bed = PodBed(cluster, base_url, mirror, generation, workdir)
        bed.install_standins()
        bed.write_inventory()
        marks = [node_costs.mark(node) for node in cluster.nodes]
        bed.first_run = bed.deploy()
        assert bed.first_run.returncode == 0, bed.first_run.output[-4000:]
        bed.first_run_costs = [node_costs.cost_since(node, m) for node, m in zip(cluster.nodes, marks)]
        bed.first_run_downloads = list(downloads)
        bed.downloads = downloads  # every request the mirror answered, live
        settings = parse_host_settings(bed.inventory_data(), "node", [])
        bed.flannel_version = settings.flannel_cni_plugin_version
        bed.sandbox_image = settings.sandbox_image
        bed.import_pause_image(settings.sandbox_image)
        yield bed


def settings_of(bed: PodBed):
    return parse_host_settings(bed.inventory_data(**bed.overrides), "node", [])


def test_first_run_installs_everything_without_errors(bed):
    changed = bed.first_run.changed_operations()
    assert bed.first_run.errors == 0
    for operation in ("containerd: containerd binaries", "containerd: config.toml (checked by containerd first)",
                      "cni: plugin binaries", "cni: 10-flannel.conflist", "kernel: modules-load.d and sysctl.d files"):
        assert changed.get(operation) == NODES, (operation, changed)
    assert changed.get("kube-controller-manager: node IPAM flags") == 1


def test_containerd_runs_the_rendered_config(bed):
    settings = settings_of(bed)
    expected = containerd_tasks.render_config(settings)
    for node in bed.cluster.nodes:
        assert bed.sh(node, "systemctl is-active containerd").strip() == "active"
        assert bed.sh(node, f"cat {containerd_tasks.CONFIG_PATH}") == expected
        dump = tomllib.loads(bed.sh(node, "/usr/local/bin/containerd config dump"))
        if bed.generation == "1.x":
            cni = dump["plugins"]["io.containerd.grpc.v1.cri"]["cni"]
            assert cni["bin_dir"] == "/opt/cni/bin"
        else:
            cni = dump["plugins"]["io.containerd.cri.v1.runtime"]["cni"]
            assert cni["bin_dirs"] == ["/opt/cni/bin"]
        assert cni["conf_dir"] == "/etc/cni/net.d"


def test_kernel_prerequisites_are_applied_and_persisted(bed):
    for node in bed.cluster.nodes:
        values = bed.sh(node, "cat /proc/sys/net/ipv4/ip_forward /proc/sys/net/bridge/bridge-nf-call-iptables "
                              "/proc/sys/net/bridge/bridge-nf-call-ip6tables").split()
        assert values == ["1", "1", "1"]
        assert "net.ipv4.ip_forward = 1" in bed.sh(node, "cat /etc/sysctl.d/99-podnet.conf")
        assert bed.sh(node, "grep -v '^#' /etc/modules-load.d/podnet.conf").split() == ["overlay", "br_netfilter"]


def test_cri_reports_network_ready(bed):
    for node in bed.cluster.nodes:
        with bed.cri(node) as cri:
            conditions = cri.status()
        assert conditions["RuntimeReady"][0] is True
        assert conditions["NetworkReady"][0] is True, conditions["NetworkReady"]


def test_controller_manager_gets_node_ipam_flags_and_keeps_the_rest(bed):
    control_plane = bed.cluster.nodes[0]
    manifest = yaml.safe_load(bed.sh(control_plane, f"cat {MANIFEST_PATH}"))
    original = yaml.safe_load(KUBEADM_MANIFEST)
    command = manifest["spec"]["containers"][0]["command"]
    assert "--allocate-node-cidrs=true" in command
    assert "--cluster-cidr=10.244.0.0/16" in command
    assert "--node-cidr-mask-size=24" in command
    assert "--controllers=*,bootstrapsigner,tokencleaner" in command
    original_command = original["spec"]["containers"][0].pop("command")
    manifest["spec"]["containers"][0].pop("command")
    assert manifest == original
    assert set(original_command) <= set(command)


def test_every_node_gives_a_pod_an_ip_from_its_subnet(bed):
    for index, node in enumerate(bed.cluster.nodes):
        subnet = bed.node_subnet(index)
        pod = bed.run_pod(node, f"pod-{index}")
        try:
            assert ipaddress.ip_address(pod.ip) in subnet.network, (node.name, pod.ip, subnet)
            address, mtu = bed.pod_interface(pod)
            assert address == f"{pod.ip}/{subnet.network.prefixlen}"
            assert mtu == FLANNELD_MTU
            bridge = bed.sh(node, "ip -o -4 addr show dev cni0 | awk '{print $4}'").split()
            assert bridge == [str(subnet)]
            record = bed.sh(node, f"cat /var/lib/cni/networks/cbr0/{pod.ip}").split()
            assert record[0] == pod.sandbox_id
        finally:
            bed.remove_pod(pod)
        assert bed.sh(node, f"test -e /var/lib/cni/networks/cbr0/{pod.ip} && echo held || echo released",
                      check=False).strip() == "released"


def test_rerun_changes_nothing_and_restarts_nothing(bed):
    pids = [bed.containerd_pid(node) for node in bed.cluster.nodes]
    rerun = bed.deploy()
    assert rerun.returncode == 0, rerun.output[-4000:]
    assert rerun.changed_operations() == {}
    assert rerun.errors == 0
    assert sum(r["no_change"] for r in rerun.results.values()) > 0
    assert [bed.containerd_pid(node) for node in bed.cluster.nodes] == pids


def test_first_run_downloads_each_artifact_once_and_uses_one_transfer_session_per_host(bed):
    paths = [path for method, path, status in bed.first_run_downloads if method == "GET"]
    # containerd, runc, CNI plugins, flannel plugin, and once the flannel plugin's published .sha256
    assert len(paths) == len(set(paths)) == 5, paths
    assert [p for p in paths if p.endswith(".sha256")] == [
        "/" + str(bed.mirror.path("flannel_cni_plugin", bed.flannel_version).relative_to(bed.mirror.root)) + ".sha256"]
    for node, cost in zip(bed.cluster.nodes, bed.first_run_costs):
        assert (cost.connections, cost.sftp) == (1, 1), (node.name, cost)


def test_the_flannel_plugins_sum_is_resolved_from_the_published_checksum_and_locked(bed):
    lock = yaml.safe_load((bed.workdir / "artifacts.lock.yaml").read_text())
    published = bed.mirror.url(bed.base_url, "flannel_cni_plugin", bed.flannel_version) + ".sha256"
    assert lock == {"flannel_cni_plugin": {bed.flannel_version: {"amd64": {
        "sha256": bed.mirror.sha256("flannel_cni_plugin", bed.flannel_version), "source": published}}}}
    assert bed.first_run.output.count("podnet: resolved 1 sha256 from upstream's published checksums") == 1
    assert f"flannel_cni_plugin {bed.flannel_version} amd64  sha256 " in bed.first_run.output
    assert "podnet: commit " in bed.first_run.output


@pytest.mark.parametrize("extra", [(), ("--dry",)], ids=["rerun", "dry"])
def test_a_converged_cluster_costs_one_command_per_host_and_no_transfer(bed, extra):
    marks = [node_costs.mark(node) for node in bed.cluster.nodes]
    requests_before = len(bed.downloads)
    run = bed.deploy(*extra)
    assert run.returncode == 0, run.output[-4000:]
    assert bed.downloads[requests_before:] == []  # the lock and the cache answer: upstream is not asked
    assert "podnet: resolved" not in run.output
    for node, before in zip(bed.cluster.nodes, marks):
        cost = node_costs.cost_since(node, before)
        assert (cost.connections, cost.commands, cost.sftp, cost.other_sessions) == (1, 1, 0, []), (node.name, cost)


def test_dry_run_on_a_converged_cluster_lists_no_change(bed):
    dry = bed.deploy("--dry")
    assert dry.returncode == 0, dry.output[-4000:]
    assert dry.detected is not None and len(dry.detected) >= 10, dry.output[-4000:]
    assert {name: n for name, n in dry.detected.items() if n} == {}


def test_dry_diff_shows_a_coming_change_without_making_it(bed):
    bed.write_inventory(flannel_mtu=1300)
    try:
        dry = bed.deploy("--dry", "--diff")
        assert dry.returncode == 0, dry.output[-4000:]
        assert {name: n for name, n in dry.detected.items() if n} == {"cni: 10-flannel.conflist": NODES}
        assert '-      "delegate": {"hairpinMode": true, "isDefaultGateway": true, "mtu": 1450}' in dry.output
        assert '+      "delegate": {"hairpinMode": true, "isDefaultGateway": true, "mtu": 1300}' in dry.output
        conflist = bed.sh(bed.cluster.nodes[0], "cat /etc/cni/net.d/10-flannel.conflist")
        assert '"mtu": 1450' in conflist
    finally:
        bed.write_inventory()


def test_mtu_change_rewrites_only_the_conflist_and_new_pods_get_it(bed):
    pids = [bed.containerd_pid(node) for node in bed.cluster.nodes]
    bed.write_inventory(flannel_mtu=1400)
    run = bed.deploy()
    assert run.returncode == 0, run.output[-4000:]
    assert run.changed_operations() == {"cni: 10-flannel.conflist": NODES}
    assert [bed.containerd_pid(node) for node in bed.cluster.nodes] == pids
    pod = bed.run_pod(bed.cluster.nodes[1], "pod-mtu")
    try:
        assert bed.pod_interface(pod)[1] == 1400
    finally:
        bed.remove_pod(pod)


def test_plugin_version_bump_replaces_only_plugin_binaries(bed, mirror):
    versions = sorted(mirror.manifest["cni_plugins"])
    current = bed.inventory_data(**bed.overrides)["cni_plugins_version"]
    other = next(v for v in versions if v != current)
    pids = [bed.containerd_pid(node) for node in bed.cluster.nodes]
    bed.write_inventory(**bed.overrides, cni_plugins_version=other)
    run = bed.deploy()
    assert run.returncode == 0, run.output[-4000:]
    assert run.changed_operations() == {"cni: plugin binaries": NODES}
    assert [bed.containerd_pid(node) for node in bed.cluster.nodes] == pids
    pod = bed.run_pod(bed.cluster.nodes[2], "pod-bump")
    try:
        assert ipaddress.ip_address(pod.ip) in bed.node_subnet(2).network
    finally:
        bed.remove_pod(pod)
    again = bed.deploy()
    assert again.changed_operations() == {}


DRIFTS = [
    # (what an operator or a stray tool did, node index, shell command, expected changed operations)
    ("config.toml edited by hand", 0, "echo '# local edit' >> /etc/containerd/config.toml",
     {"containerd: config.toml (checked by containerd first)": 1, "containerd: enabled and running": 1}),
    ("CNI plugin binary replaced", 1, "cp /opt/cni/bin/loopback /opt/cni/bin/bridge",
     {"cni: plugin binaries": 1}),
    ("binary lost its exec bit", 2, "chmod 0644 /usr/local/bin/ctr",
     {"containerd: containerd binaries": 1}),
    ("sysctl reset", 2, "sysctl -q -w net.ipv4.ip_forward=0",
     {"kernel: bridge-nf-call and ip_forward applied": 1}),
    ("containerd stopped", 1, "systemctl stop containerd",
     {"containerd: enabled and running": 1}),
    ("stray conflist sorting ahead of ours", 0, "echo '{}' > /etc/cni/net.d/05-stray.conflist",
     {"cni: no other config sorts ahead of ours": 1}),
]


@pytest.mark.parametrize("drift", DRIFTS, ids=[d[0] for d in DRIFTS])
def test_rerun_repairs_drift_with_the_minimal_change(bed, drift):
    _, index, command, expected = drift
    node = bed.cluster.nodes[index]
    settings = settings_of(bed)
    pids = [bed.containerd_pid(n) for n in bed.cluster.nodes]
    bed.sh(node, command)
    run = bed.deploy()
    assert run.returncode == 0, run.output[-4000:]
    assert run.changed_operations() == expected
    restarted = "containerd: enabled and running" in expected
    for other, pid in zip(bed.cluster.nodes, pids):
        if other is not node or not restarted:
            assert bed.containerd_pid(other) == pid, other.name
        assert bed.sh(other, "systemctl is-active containerd").strip() == "active"
    assert bed.sh(node, f"cat {containerd_tasks.CONFIG_PATH}") == containerd_tasks.render_config(settings)
    assert bed.sh(node, "cmp -s /opt/cni/bin/bridge /opt/cni/bin/loopback && echo same || echo differ").strip() \
        == "differ"
    assert bed.sh(node, "stat -c %a /usr/local/bin/ctr").strip() == "755"
    assert bed.sh(node, "cat /proc/sys/net/ipv4/ip_forward").strip() == "1"
    assert bed.sh(node, "ls /etc/cni/net.d").split() in (
        ["10-flannel.conflist"], ["05-stray.conflist.podnet-disabled", "10-flannel.conflist"])
    assert bed.deploy().changed_operations() == {}
