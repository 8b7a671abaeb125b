"""
The compatibility table (tasks/releases.py), row by row: what podnet renders for a release of each
row has the format the row says, and the support windows are said before the run. Then the same
files against the real binaries of ../shared/bin (tests/kubebed/binaries.py): containerd 2.3.4 reads
podnet's config with no migration warning and its dump holds podnet's values (a misspelt key or a
lost value refuses the swap naming it); kubeadm 1.36.2 validates the rendered init configuration;
the flannel CNI plugin v1.9.1 and Debian's CNI plugins read the rendered conflist, down to a real
ADD in network namespaces this test creates and deletes.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tomllib
import uuid
from pathlib import Path

import pytest
import yaml

from tasks import cni, containerd, flannel, kubeadm, releases
from tasks.artifacts.catalog import pinned
from tasks.engine.probe import NodeState
from tasks.settings import SPEC_BY_NAME, SettingsError, parse_host_settings
from testbed.kubebed import binaries
from tests.support.hosts import settings


def inside(row: releases.Row) -> list[str]:
    """Releases the row holds: its first, and its last where it has one (padded to x.y.z)."""
    def full(version: str) -> str:
        parts = version.split(".")
        return ".".join(parts + ["0"] * (3 - len(parts)))
    return sorted({full(row.first), *([full(row.last)] if row.last and len(row.last.split(".")) > 1 else [])})


def rows(table) -> list:
    return [pytest.param(row, version, id=f"{row.component}-{version}") for row in table for version in inside(row)]


def bootstrap(**data):
    return parse_host_settings({"cluster_bootstrap": True, "node_ip": "192.168.56.11", **data}, "cp1",
                               ["control_plane"])


# --- every row of the table ----------------------------------------------------------------


@pytest.mark.parametrize("row, version", rows(releases.CONTAINERD_CONFIGS))
def test_containerd_config_has_the_rows_format(row, version):
    text = containerd.render_config(settings(containerd_version=version))
    doc = tomllib.loads(text)
    assert doc["version"] == row.value.version
    cri = doc["plugins"]["io.containerd.grpc.v1.cri" if row.value.version == 2 else "io.containerd.cri.v1.runtime"]
    assert set(cri["cni"]) == {row.value.cni_bin_dirs_key, "conf_dir"}
    dumped = {(table, key) for table, key, _ in containerd.dump_values(settings(containerd_version=version))}
    assert (f"plugins.{'io.containerd.grpc.v1.cri' if row.value.version == 2 else 'io.containerd.cri.v1.runtime'}.cni",
            row.value.cni_bin_dirs_key) in dumped


@pytest.mark.parametrize("row, version", rows(releases.KUBEADM_CONFIG_APIS))
def test_kubeadm_configuration_has_the_rows_api(row, version):
    documents = list(yaml.safe_load_all(kubeadm.init_config(bootstrap(kubernetes_version=version))))
    assert [d["apiVersion"] for d in documents[:2]] == [row.value, row.value]


@pytest.mark.parametrize("version, validated", [("1.25.16", False), ("1.26.0", True), ("1.36.2", True)])
def test_kubeadm_config_validate_where_kubeadm_has_it(version, validated):
    assert releases.kubeadm_validates_config(version) is validated


@pytest.mark.parametrize("row, version", rows(releases.PAUSE_IMAGES))
def test_containerd_sandbox_image_is_kubeadms_pause_for_the_release(row, version):
    for containerd_version in ("1.7.34", "2.3.4"):
        s = settings(kubernetes_version=version, containerd_version=containerd_version)
        assert (s.effective_sandbox_image, row.value) == (row.value, row.value)
        assert f"'{row.value}'" in containerd.render_config(s) or f'"{row.value}"' in containerd.render_config(s)


def test_kubernetes_1_35_and_1_36_get_their_kubeadms_pause_image():
    """The reported case: 1.35 got pause:3.10 while kubeadm 1.35 uses 3.10.1 (1.36: 3.10.2)."""
    assert settings(kubernetes_version="1.35.1").effective_sandbox_image == "registry.k8s.io/pause:3.10.1"
    assert settings().effective_sandbox_image == "registry.k8s.io/pause:3.10.2"
    assert settings(sandbox_image="mirror.internal/pause:3.9").effective_sandbox_image == "mirror.internal/pause:3.9"


@pytest.mark.parametrize("row, version", rows([r for r in releases.CNI_SPECS if r.component == "cni_plugins"]))
def test_conflist_cni_version_is_one_the_plugins_read(row, version):
    doc = json.loads(cni.render_conflist(settings(cni_plugins_version=version)))
    newest = next(v for v in releases.CONFLIST_CNI_VERSIONS if v in row.value)
    assert doc["cniVersion"] == newest


def test_cni_plugins_0_9_1_get_a_0_4_0_conflist_and_older_ones_are_refused():
    """The reported case: 0.9.1 (before CNI spec 1.0.0) was given cniVersion 1.0.0."""
    assert json.loads(cni.render_conflist(settings(cni_plugins_version="0.9.1")))["cniVersion"] == "0.4.0"
    with pytest.raises(SettingsError) as error:
        settings(cni_plugins_version="0.7.5")
    assert error.value.problems[0].startswith(
        "cp1: cni_plugins_version: '0.7.5' with flannel_cni_plugin_version '1.9.1-flannel3' cannot read the conflist "
        "podnet writes; expected CNI plugin releases that read a conflist podnet writes (cniVersion 1.0.0 or 0.4.0)")


def test_every_flannel_cni_plugin_release_podnet_installs_is_in_a_row():
    flannel_rows = [r for r in releases.CNI_SPECS if r.component == "flannel_cni_plugin"]
    for version in pinned()["flannel_cni_plugin"]["asset_versions"]:
        assert any(row.holds(version) for row in flannel_rows), version


@pytest.mark.parametrize("row, version", rows(releases.FLANNEL_CNI_PLUGINS))
def test_flannel_ships_the_rows_cni_plugin(row, version):
    assert releases.flannel_cni_plugin_for(version) == row.value
    assert row.value in pinned()["flannel_cni_plugin"]["asset_versions"]


def test_defaults_are_upstreams_pairing():
    """The reported case: flanneld 0.28.4 (flannel-io/flannel#2433) by default; now 0.28.9 with what it ships."""
    s = settings()
    assert (s.flanneld_version, s.flannel_image, s.flannel_cni_plugin_version) == (
        "0.28.9", "docker.io/flannel/flannel:v0.28.9", "1.9.1-flannel3")
    assert releases.flannel_cni_plugin_for(s.flanneld_version) == s.flannel_cni_plugin_version
    assert (s.kubernetes_version, s.containerd_version) == ("1.36.2", "2.3.4")
    assert containerd.config_generation(s.containerd_version).version == 4
    assert SPEC_BY_NAME["sandbox_image"].default is None


def daemonset_container(**data) -> dict:
    docs = {d["kind"]: d for d in yaml.safe_load_all(flannel.render_manifest(settings(**data))) if d}
    return docs["DaemonSet"]["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("row, version", rows(releases.FLANNEL_HEALTH))
def test_daemonset_probes_where_flanneld_serves_them(row, version):
    container = daemonset_container(flannel_image=f"docker.io/flannel/flannel:v{version}")
    port = releases.FLANNEL_HEALTHZ_PORT
    assert f"--healthz-port={port}" in container["args"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}


@pytest.mark.parametrize("image", ["docker.io/flannel/flannel:v0.28.8", "mirror.internal/flannel:latest",
                                   "mirror.internal/flannel@sha256:" + "a" * 64])
def test_no_probes_where_the_release_is_not_known_to_serve_them(image):
    container = daemonset_container(flannel_image=image)
    assert "readinessProbe" not in container and "livenessProbe" not in container
    assert not [a for a in container["args"] if a.startswith("--healthz-port")]


@pytest.mark.parametrize("row", releases.CONTAINERD_KUBERNETES, ids=lambda r: r.first)
def test_containerd_beyond_its_kubernetes_window(row, caplog):
    newer = f"1.{int(row.value.split('.')[1]) + 1}.0"
    version = f"{row.first}.0"
    with pytest.raises(SettingsError) as error:
        bootstrap(containerd_version=version, kubernetes_version=newer)
    assert error.value.problems == [
        f"containerd_version: '{version}' does not support kubernetes_version '{newer}': containerd {row.first} "
        f"supports Kubernetes up to {row.value} ({row.source}); choose a containerd release listed there for "
        f"Kubernetes {newer.rsplit('.', 1)[0]}, or an older Kubernetes"]
    bootstrap(containerd_version=version, kubernetes_version=f"{row.value}.0")  # inside the window: accepted
    s = settings(containerd_version=version, kubernetes_version=newer)  # podnet installs no kubelet: a warning
    with caplog.at_level(logging.WARNING):
        containerd.say_support_window(s)
        containerd.say_support_window(s)
    said = [r.getMessage() for r in caplog.records if "support window" in r.getMessage()]
    assert said == [containerd.support_window(s)]
    assert f"containerd_version {version} is outside the support window of kubernetes_version {newer}" in said[0]
    assert containerd.support_window(settings(containerd_version="2.3.4", kubernetes_version=newer)) is None


@pytest.mark.parametrize("row", releases.KUBELET_CGROUP_V1, ids=lambda r: r.first)
def test_cgroup_v1_node_with_a_kubelet_that_refuses_it(row):
    v1 = NodeState(features={kubeadm.CGROUP_V2: False})
    version = f"{row.first}.0"
    with pytest.raises(kubeadm.KubeadmError) as error:
        kubeadm.kubelet_runs_here(bootstrap(kubernetes_version=version), v1, "w1")
    assert str(error.value).startswith(
        f"w1: this node has cgroup v1 (/sys/fs/cgroup is not cgroup2fs) and the kubelet of kubernetes_version {version} "
        f"(kubelet {row.releases}) refuses to start on cgroup v1 by default ({row.source})")
    kubeadm.kubelet_runs_here(bootstrap(kubernetes_version=version, kubelet_configuration={"failCgroupV1": False}),
                              v1, "w1")
    kubeadm.kubelet_runs_here(bootstrap(kubernetes_version="1.34.4"), v1, "w1")  # before the row: accepted
    kubeadm.kubelet_runs_here(bootstrap(kubernetes_version=version), NodeState(features={kubeadm.CGROUP_V2: True}),
                              "w1")


def test_every_table_is_tested_here_and_in_the_readme():
    tested = {releases.CONTAINERD_CONFIGS, releases.KUBEADM_CONFIG_APIS, releases.KUBEADM_CONFIG_VALIDATE,
              releases.PAUSE_IMAGES, releases.CNI_SPECS, releases.FLANNEL_CNI_PLUGINS, releases.FLANNEL_HEALTH,
              releases.CONTAINERD_KUBERNETES, releases.KUBELET_CGROUP_V1}
    assert {table for table, _ in releases.TABLE} == tested
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for table, _ in releases.TABLE:
        for row in table:
            assert f"| {row.component} | {row.releases} |" in readme and row.source.replace("|", "\\|") in readme


# --- against the real binaries ----------------------------------------------------------------


def real(name: str) -> Path:
    reason = binaries.missing(name)
    if reason:
        pytest.skip(reason)
    return binaries.binary(name)


def containerd_check(s, text: str, tmp_path: Path) -> subprocess.CompletedProcess:
    staged = tmp_path / ".config.toml.podnet-new"
    staged.write_text(text)
    command = containerd.validate_command(s, str(real("containerd"))).format(path=str(staged))
    return subprocess.run(command, shell=True, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("data", [{}, {"systemd_cgroup": False, "restrict_oom_score_adj": True,
                                       "cni_bin_dir": "/usr/libexec/cni", "cni_conf_dir": "/etc/cni/podnet.d",
                                       "sandbox_image": "mirror.internal:5000/pause:3.10.2"}])
def test_containerd_2_3_4_reads_podnets_config_without_migration_and_holds_its_values(tmp_path, data):
    s = settings(containerd_version=binaries.CONTAINERD_VERSION, **data)
    text = containerd.render_config(s)
    staged = tmp_path / "config.toml"
    staged.write_text(text)
    dump = subprocess.run([real("containerd"), "--config", staged, "config", "dump"], capture_output=True, text=True,
                          timeout=60)
    assert dump.returncode == 0 and dump.stderr == ""  # no migration warning, no unknown key
    assert dump.stdout.startswith("version = 4\n")
    check = containerd_check(s, text, tmp_path)
    assert (check.returncode, check.stderr) == (0, "")


def test_containerd_refuses_a_misspelt_key_naming_it(tmp_path):
    s = settings()
    check = containerd_check(s, containerd.render_config(s).replace("bin_dirs", "bin_dirz"), tmp_path)
    assert check.returncode == 1
    assert 'msg="Ignoring unknown key in TOML for plugin"' in check.stderr and 'key="cni bin_dirz"' in check.stderr


def test_containerd_refuses_a_value_its_dump_does_not_hold_naming_it(tmp_path):
    """SystemdCgroup misspelt is no unknown key to containerd (runc's options are a map): the dump tells."""
    s = settings()
    check = containerd_check(s, containerd.render_config(s).replace("SystemdCgroup", "SystemdCgroupX"), tmp_path)
    assert check.returncode == 1
    assert check.stderr.endswith("containerd (config dump) does not hold: plugins.io.containerd.cri.v1.runtime."
                                 "containerd.runtimes.runc.options SystemdCgroup = true\n")


def test_containerd_2_3_refuses_the_version_3_config_podnet_wrote_before(tmp_path):
    """The reported case: version 3 on containerd 2.3 is migrated at every start, with a warning."""
    s = settings()
    check = containerd_check(s, containerd.render_config(s).replace("version = 4", "version = 3"), tmp_path)
    assert check.returncode == 1
    assert "Configuration migrated from version 3" in check.stderr


def kubeadm_validate(text: str, tmp_path: Path) -> subprocess.CompletedProcess:
    staged = tmp_path / ".kubeadm-init.yaml.podnet-new"
    staged.write_text(text)
    command = kubeadm.VALIDATE_CONFIG.replace(kubeadm.KUBEADM, str(real("kubeadm"))).format(path=str(staged))
    return subprocess.run(command, shell=True, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("data", [{}, {"kubelet_configuration": {"failCgroupV1": False, "failSwapOn": False},
                                       "kube_proxy_configuration": {"conntrack": {"maxPerCore": 0}},
                                       "etcd_external_endpoints": ["http://127.0.0.1:2379"],
                                       "kubeadm_ignore_preflight_errors": ["SystemVerification"],
                                       "cluster_cidr_ipv6": "fd00:10:244::/56",
                                       "service_cluster_ip_range_ipv6": "fd00:10:96::/112"}])
def test_kubeadm_1_36_2_validates_the_rendered_init_configuration(tmp_path, data):
    s = bootstrap(kubernetes_version=binaries.KUBERNETES_VERSION, **data)
    result = kubeadm_validate(kubeadm.init_config(s), tmp_path)
    assert (result.returncode, result.stderr) == (0, "")


def test_kubeadm_refuses_a_misspelt_kubelet_field_naming_it(tmp_path):
    s = bootstrap(kubernetes_version=binaries.KUBERNETES_VERSION, kubelet_configuration={"failCgroupV1x": False})
    result = kubeadm_validate(kubeadm.init_config(s), tmp_path)
    assert result.returncode == 1
    assert 'strict decoding error: unknown field "failCgroupV1x"' in result.stderr


def test_the_flannel_plugin_reads_the_rendered_conflists_cni_version():
    answer = subprocess.run([real("flannel")], env={"CNI_COMMAND": "VERSION"}, input="", capture_output=True,
                            text=True, timeout=30)
    supported = json.loads(answer.stdout)["supportedVersions"]
    for version in ("1.9.1", "0.9.1"):
        assert json.loads(cni.render_conflist(settings(cni_plugins_version=version)))["cniVersion"] in supported


@pytest.fixture(scope="module")
def debian_cni_plugins(tmp_path_factory) -> Path:
    """bookworm's containernetworking-plugins (1.1.1), as `apt-get download` gives it, unpacked."""
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        pytest.skip("apt-get and dpkg-deb are needed for Debian's CNI plugins")
    work = tmp_path_factory.mktemp("cni-deb")
    fetched = subprocess.run(["apt-get", "download", "-q", "containernetworking-plugins"], cwd=work,
                             capture_output=True, text=True, timeout=300)
    debs = list(work.glob("containernetworking-plugins_*.deb"))
    if not debs:
        pytest.skip(f"apt-get download containernetworking-plugins failed: {fetched.stderr[-300:]}")
    subprocess.run(["dpkg-deb", "-x", debs[0], work / "x"], check=True, timeout=120)
    return work / "x" / "usr" / "lib" / "cni"


@pytest.mark.skipif(shutil.which("ip") is None or shutil.which("unshare") is None, reason="needs ip and unshare")
def test_the_plugins_add_a_pod_from_the_rendered_conflist_in_namespaces_of_their_own(tmp_path, debian_cni_plugins):
    """
    flannel (v1.9.1) -> bridge + host-local (Debian's), as containerd runs them from podnet's conflist:
    in a network namespace of the test's own ("outer", where cni0 is made) for a pod namespace, with
    /var/lib private to the plugins (host-local's store), both namespaces deleted afterwards.
    """
    conflist = json.loads(cni.render_conflist(settings(flannel_mtu=1400)))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("bridge", "host-local", "portmap", "loopback"):
        shutil.copy2(debian_cni_plugins / name, bindir / name)
        answer = subprocess.run([bindir / name], env={"CNI_COMMAND": "VERSION"}, input="", capture_output=True,
                                text=True, timeout=30)
        assert conflist["cniVersion"] in json.loads(answer.stdout)["supportedVersions"], name
    shutil.copy2(real("flannel"), bindir / "flannel")
    (tmp_path / "subnet.env").write_text("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.5.1/24\n"
                                         "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
    plugin = dict(conflist["plugins"][0], subnetFile=str(tmp_path / "subnet.env"), dataDir=str(tmp_path / "flannel"))
    network = json.dumps({"cniVersion": conflist["cniVersion"], "name": conflist["name"], **plugin})
    tag = uuid.uuid4().hex[:8]
    outer, pod = f"pn-compat-o-{tag}", f"pn-compat-p-{tag}"

    def plugin_run(command: str) -> subprocess.CompletedProcess:
        script = (f"mount -t tmpfs podnet-test /var/lib && exec ip netns exec {outer} env CNI_COMMAND={command} "
                  f"CNI_CONTAINERID=c-{tag} CNI_NETNS=/var/run/netns/{pod} CNI_IFNAME=eth0 CNI_PATH={bindir} "
                  f"{bindir}/flannel")
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], input=network,
                              capture_output=True, text=True, timeout=60)

    subprocess.run(["ip", "netns", "add", outer], check=True, timeout=30)
    try:
        subprocess.run(["ip", "netns", "add", pod], check=True, timeout=30)
        added = plugin_run("ADD")
        assert added.returncode == 0, added.stderr
        result = json.loads(added.stdout)
        assert result["cniVersion"] == conflist["cniVersion"]
        assert [ip["address"] for ip in result["ips"]] == ["10.244.5.2/24"]
        link = subprocess.run(["ip", "netns", "exec", pod, "ip", "-o", "link", "show", "eth0"], capture_output=True,
                              text=True, timeout=30)
        assert " mtu 1400 " in link.stdout  # the conflist's delegate mtu reached the pod's interface
        deleted = plugin_run("DEL")
        assert deleted.returncode == 0, deleted.stderr
    finally:
        for name in (pod, outer):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
    assert outer not in listed and pod not in listed
