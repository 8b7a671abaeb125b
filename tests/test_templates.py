"""
What podnet writes onto nodes: containerd's config.toml per generation, the CNI conflist,
the kube-flannel manifest, the flanneld unit and the kernel files. Each is parsed with a
real parser (tomllib, json, yaml) and checked field by field.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path

import pytest
import yaml

from tasks import cni, containerd, controller_manager, flannel, kernel
from tasks.cni import CniError
from tasks.engine.desired import DesiredFile
from tests.support.hosts import settings


def config(**data) -> dict:
    return tomllib.loads(containerd.render_config(settings(**data)))


# --- containerd config.toml ----------------------------------------------------


@pytest.mark.parametrize("version", ["1.6.20", "1.7.34"])
def test_containerd_1x_config_version_2(version):
    doc = config(containerd_version=version)
    assert doc["version"] == 2
    assert set(doc["plugins"]) == {"io.containerd.grpc.v1.cri"}
    cri = doc["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == "registry.k8s.io/pause:3.10.2"  # kubeadm 1.36's, kubernetes_version's default
    assert cri["restrict_oom_score_adj"] is False
    assert cri["containerd"]["default_runtime_name"] == "runc"
    runc = cri["containerd"]["runtimes"]["runc"]
    assert runc["runtime_type"] == "io.containerd.runc.v2"
    assert runc["options"]["SystemdCgroup"] is True
    assert cri["cni"] == {"bin_dir": "/opt/cni/bin", "conf_dir": "/etc/cni/net.d"}


@pytest.mark.parametrize("version, config_version, cni_section", [
    ("2.0.0", 3, {"bin_dir": "/opt/cni/bin", "conf_dir": "/etc/cni/net.d"}),
    ("2.1.5", 3, {"bin_dirs": ["/opt/cni/bin"], "conf_dir": "/etc/cni/net.d"}),
    ("2.3.4", 4, {"bin_dirs": ["/opt/cni/bin"], "conf_dir": "/etc/cni/net.d"}),
])
def test_containerd_2x_config_version_3_and_4(version, config_version, cni_section):
    doc = config(containerd_version=version)
    assert doc["version"] == config_version
    plugins = doc["plugins"]
    assert "io.containerd.grpc.v1.cri" not in plugins
    assert plugins["io.containerd.cri.v1.images"]["pinned_images"] == {"sandbox": "registry.k8s.io/pause:3.10.2"}
    runtime = plugins["io.containerd.cri.v1.runtime"]
    assert runtime["restrict_oom_score_adj"] is False
    assert runtime["containerd"]["default_runtime_name"] == "runc"
    runc = runtime["containerd"]["runtimes"]["runc"]
    assert runc["runtime_type"] == "io.containerd.runc.v2"
    assert runc["options"]["SystemdCgroup"] is True
    assert runtime["cni"] == cni_section


@pytest.mark.parametrize("version", ["1.7.34", "2.0.0", "2.3.4"])
def test_containerd_config_follows_the_settings(version):
    doc = config(containerd_version=version, cni_bin_dir="/usr/libexec/cni/", cni_conf_dir="/etc/cni/podnet.d",
                 sandbox_image="mirror.internal:5000/pause:3.9", systemd_cgroup=False,
                 restrict_oom_score_adj=True)
    if version.startswith("1."):
        cri = doc["plugins"]["io.containerd.grpc.v1.cri"]
        assert cri["sandbox_image"] == "mirror.internal:5000/pause:3.9"
        runtime, cni_section = cri, cri["cni"]
        assert cni_section["bin_dir"] == "/usr/libexec/cni"  # trailing slash dropped
    else:
        runtime = doc["plugins"]["io.containerd.cri.v1.runtime"]
        assert doc["plugins"]["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"] == (
            "mirror.internal:5000/pause:3.9")
        cni_section = runtime["cni"]
        assert cni_section.get("bin_dir", cni_section.get("bin_dirs")) in ("/usr/libexec/cni", ["/usr/libexec/cni"])
    assert cni_section["conf_dir"] == "/etc/cni/podnet.d"
    assert runtime["restrict_oom_score_adj"] is True
    assert runtime["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is False


def test_containerd_unit_reads_the_managed_config():
    unit = containerd.unit_file()
    assert unit.path == "/etc/systemd/system/containerd.service"
    text = unit.content.decode()
    assert "ExecStart=/usr/local/bin/containerd --config /etc/containerd/config.toml\n" in text
    assert "Type=notify\n" in text and "Delegate=yes\n" in text and "KillMode=process\n" in text


def test_containerd_validates_the_staged_config_itself():
    """The check runs the installed containerd on the staged file; what it refuses is proven against the
    real binaries in tests/test_compat.py and tests/test_install_script.py."""
    command = containerd.validate_command(settings()).format(path="/etc/containerd/.config.toml.podnet-new")
    assert command.startswith("sh -c ")
    assert "/usr/local/bin/containerd --config \"$1\" config dump" in command
    assert " /etc/containerd/.config.toml.podnet-new /etc/containerd/.config.toml.podnet-new " in command
    assert command.endswith(" 'plugins.io.containerd.cri.v1.runtime.cni conf_dir = /etc/cni/net.d'")


# --- 10-flannel.conflist ---------------------------------------------------------


def test_conflist_without_mtu():
    doc = json.loads(cni.render_conflist(settings()))
    assert doc["name"] == "cbr0"
    assert doc["cniVersion"] == "1.0.0"
    assert [p["type"] for p in doc["plugins"]] == ["flannel", "portmap"]
    assert doc["plugins"][0] == {"type": "flannel", "delegate": {"hairpinMode": True, "isDefaultGateway": True}}
    assert doc["plugins"][1] == {"type": "portmap", "capabilities": {"portMappings": True}}


def test_conflist_with_mtu():
    doc = json.loads(cni.render_conflist(settings(flannel_mtu=1400)))
    assert doc["plugins"][0]["delegate"] == {"hairpinMode": True, "isDefaultGateway": True, "mtu": 1400}


def test_conflist_lives_in_the_conf_dir():
    f = cni.conflist_file(settings(cni_conf_dir="/etc/cni/podnet.d"))
    assert (f.path, f.mode) == ("/etc/cni/podnet.d/10-flannel.conflist", "0644")
    assert f.sha256 == hashlib.sha256(f.content).hexdigest()


def _binary(name: str) -> DesiredFile:
    return DesiredFile(path=f"/opt/cni/bin/{name}", mode="0755", sha256="0" * 64)


def test_check_plugins_present_raises_for_a_missing_portmap():
    conflist = cni.conflist_file(settings())
    with pytest.raises(CniError) as raised:
        cni.check_plugins_present(conflist, [_binary(n) for n in ("bridge", "host-local", "loopback", "flannel")])
    assert str(raised.value) == (
        "/etc/cni/net.d/10-flannel.conflist names plugin(s) portmap that the CNI plugin releases do not provide "
        "(installed: bridge, flannel, host-local, loopback); check cni_plugins_version and "
        "flannel_cni_plugin_version")
    cni.check_plugins_present(conflist, [_binary(n) for n in ("bridge", "host-local", "portmap", "flannel")])


def test_plugin_binaries_skip_license_and_readme(tmp_path: Path):
    plugins = tmp_path / "cni-plugins"
    plugins.mkdir()
    for name in ("bridge", "portmap", "LICENSE", "README.md"):
        (plugins / name).write_bytes(name.encode())
    flannel_unpacked = tmp_path / "flannel-cni-plugin"
    flannel_unpacked.mkdir()
    (flannel_unpacked / "flannel-amd64").write_bytes(b"flannel")
    files = cni.plugin_binaries(settings(cni_bin_dir="/usr/libexec/cni"), plugins, flannel_unpacked, "amd64")
    assert {f.path: f.sha256 for f in files} == {
        "/usr/libexec/cni/bridge": hashlib.sha256(b"bridge").hexdigest(),
        "/usr/libexec/cni/portmap": hashlib.sha256(b"portmap").hexdigest(),
        "/usr/libexec/cni/flannel": hashlib.sha256(b"flannel").hexdigest(),
    }


def test_configs_ahead_picks_only_cni_configs_sorting_before_ours():
    entries = ["87-podman-bridge.conflist", "10-flannel.conflist", "05-cilium.conflist", "00-loopback.conf",
               "01-weave.json", "10-calico.conflist", "05-old.conflist.podnet-disabled", "02-notes.txt",
               "README", ".10-flannel.conflist.podnet-new", "99-last.conf", "10-flannel.conflist.bak"]
    assert cni.configs_ahead(entries) == ["00-loopback.conf", "01-weave.json", "05-cilium.conflist",
                                          "10-calico.conflist"]
    assert cni.configs_ahead(["10-flannel.conflist", "20-other.conflist"]) == []


# --- kube-flannel manifest -------------------------------------------------------


def manifest_docs(**data) -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all(flannel.render_manifest(settings(**data))) if d]
    return {d["kind"]: d for d in docs}


def net_conf_of(docs: dict) -> dict:
    return json.loads(docs["ConfigMap"]["data"]["net-conf.json"])


def test_manifest_is_the_expected_set_of_objects():
    docs = [d for d in yaml.safe_load_all(flannel.render_manifest(settings())) if d]
    assert [d["kind"] for d in docs] == ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                                         "ConfigMap", "DaemonSet"]
    assert all(d["metadata"].get("namespace", "kube-flannel") == "kube-flannel" for d in docs)


def test_net_conf_network_is_the_controller_manager_cluster_cidr():
    s = settings(cluster_cidr="10.42.0.0/16", service_cluster_ip_range="10.43.0.0/16")
    docs = [d for d in yaml.safe_load_all(flannel.render_manifest(s)) if d]
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    conf = json.loads(config_map["data"]["net-conf.json"])
    assert conf["Network"] == str(s.cluster_cidr) == "10.42.0.0/16"
    assert controller_manager.desired_flags(s)["cluster-cidr"] == conf["Network"]
    assert conf["EnableIPv4"] is True and "IPv6Network" not in conf


def test_net_conf_dual_stack():
    s = settings(cluster_cidr_ipv6="fd00:10:244::/56", service_cluster_ip_range_ipv6="fd00:10:96::/112")
    conf = flannel.net_conf(s)
    assert conf["EnableIPv6"] is True and conf["IPv6Network"] == "fd00:10:244::/56"
    assert conf["EnableIPv4"] is True and conf["Network"] == "10.244.0.0/16"  # both families, IPv4 first
    assert controller_manager.desired_flags(s)["cluster-cidr"] == f"{conf['Network']},{conf['IPv6Network']}"
    assert controller_manager.desired_flags(s)["node-cidr-mask-size-ipv6"] == "64"
    assert controller_manager.desired_flags(s)["service-cluster-ip-range"] == "10.96.0.0/12,fd00:10:96::/112"


@pytest.mark.parametrize("data, backend", [
    ({}, {"Type": "vxlan", "VNI": 1, "Port": 8472}),
    ({"flannel_vni": 4096, "flannel_port": 4789}, {"Type": "vxlan", "VNI": 4096, "Port": 4789}),
    ({"flannel_backend": "host-gw"}, {"Type": "host-gw"}),
    ({"flannel_backend": "wireguard"}, {"Type": "wireguard", "ListenPort": 51820}),
    ({"flannel_backend": "wireguard", "flannel_port": 51821}, {"Type": "wireguard", "ListenPort": 51821}),
])
def test_net_conf_backend(data, backend):
    assert net_conf_of(manifest_docs(**data))["Backend"] == backend


def test_daemonset_installs_nothing_on_the_host():
    ds = manifest_docs()["DaemonSet"]
    pod = ds["spec"]["template"]["spec"]
    assert not pod.get("initContainers")
    host_paths = [v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v]
    assert not [p for p in host_paths if p.startswith(("/etc/cni", "/opt/cni"))]
    for container in pod["containers"]:
        mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
        assert not [m for m in mounts if m.startswith(("/etc/cni", "/opt/cni"))]


def test_daemonset_runs_flanneld_with_the_kube_subnet_manager():
    container = manifest_docs(flannel_image="mirror.internal:5000/flannel:v0.28.4")["DaemonSet"]["spec"][
        "template"]["spec"]["containers"][0]
    assert container["image"] == "mirror.internal:5000/flannel:v0.28.4"
    assert container["command"] == ["/opt/bin/flanneld"]
    assert container["args"] == ["--ip-masq", "--kube-subnet-mgr"]


def test_daemonset_iface():
    container = manifest_docs(flannel_iface="eth1")["DaemonSet"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["--ip-masq", "--kube-subnet-mgr", "--healthz-port=8081", "--iface=eth1"]


def net_conf_hash(**data) -> str:
    return manifest_docs(**data)["DaemonSet"]["spec"]["template"]["metadata"]["annotations"][
        "podnet.io/net-conf-sha256"]


def test_net_conf_hash_annotation_is_the_hash_of_the_config_map():
    docs = manifest_docs()
    conf_text = docs["ConfigMap"]["data"]["net-conf.json"]
    assert net_conf_hash() == hashlib.sha256(conf_text.encode()).hexdigest()


@pytest.mark.parametrize("change", [
    {"flannel_backend": "host-gw"},
    {"flannel_backend": "wireguard"},
    {"flannel_vni": 2},
    {"flannel_port": 4789},
    {"cluster_cidr": "10.42.0.0/16"},
    {"cluster_cidr_ipv6": "fd00:10:244::/56"},
])
def test_net_conf_hash_changes_with_the_network_config(change):
    # The annotation is on the pod template: a change rolls the flanneld pods.
    assert net_conf_hash(**change) != net_conf_hash()


def test_mtu_is_not_part_of_flannel_net_conf():
    # flannel's net-conf has no MTU field (flannel pkg/subnet/config.go); the MTU goes into the
    # CNI delegate, so changing it changes the conflist but does not roll the DaemonSet.
    assert net_conf_hash(flannel_mtu=1400) == net_conf_hash()
    assert cni.render_conflist(settings(flannel_mtu=1400)) != cni.render_conflist(settings())


def test_manifest_sha_annotation_is_stable_and_tracks_content():
    s = settings()
    first, second = flannel.render_manifest(s), flannel.render_manifest(s)
    assert first == second
    sha = flannel.manifest_sha256(first)
    ds = next(d for d in yaml.safe_load_all(first) if d and d["kind"] == "DaemonSet")
    assert ds["metadata"]["annotations"]["podnet.io/manifest-sha256"] == sha
    assert len(sha) == 64
    assert flannel.manifest_sha256(flannel.render_manifest(settings(flannel_image="x/flannel:v1"))) != sha
    assert flannel.manifest_sha256(flannel.render_manifest(settings(flannel_backend="host-gw"))) != sha


# --- kernel files ----------------------------------------------------------------


def non_comment_lines(f: DesiredFile) -> list[str]:
    return [line for line in f.content.decode().splitlines() if line and not line.startswith("#")]


def test_kernel_files():
    modules, sysctl = kernel.desired_files(settings())
    assert modules.path == "/etc/modules-load.d/podnet.conf"
    assert non_comment_lines(modules) == ["overlay", "br_netfilter"]
    assert sysctl.path == "/etc/sysctl.d/zz-podnet.conf"
    assert non_comment_lines(sysctl) == ["net.bridge.bridge-nf-call-iptables = 1",
                                         "net.bridge.bridge-nf-call-ip6tables = 1",
                                         "net.ipv4.ip_forward = 1"]


def test_kernel_files_dual_stack_forward_ipv6():
    _, sysctl = kernel.desired_files(settings(cluster_cidr_ipv6="fd00:10:244::/56"))
    assert "net.ipv6.conf.all.forwarding = 1" in non_comment_lines(sysctl)


# --- flanneld as a systemd service --------------------------------------------------


def test_flanneld_systemd_unit(tmp_path: Path):
    binary = tmp_path / "flanneld-amd64"
    binary.write_bytes(b"#!/bin/sh\n")
    s = settings(flannel_rollout="systemd", flannel_iface="ens4", kubeconfig="/etc/kubernetes/kubelet.conf",
                 cluster_cidr="10.42.0.0/16", service_cluster_ip_range="10.43.0.0/16")
    files, unit = flannel.systemd_files(s, binary)
    assert unit.path == "/etc/systemd/system/flanneld.service"
    lines = unit.content.decode().splitlines()
    assert "Environment=NODE_NAME=%H" in lines
    exec_start = [line for line in lines if line.startswith("ExecStart=")]
    # its own kubeconfig (flannel's ServiceAccount), not the kubeconfig setting
    assert exec_start == [("ExecStart=/usr/local/bin/flanneld --ip-masq --kube-subnet-mgr "
                          "--kubeconfig-file=/etc/kube-flannel/kubeconfig "
                          "--net-config-path=/etc/kube-flannel/net-conf.json --iface=ens4")]
    # without any host in the control-plane group nobody can make it a token: the kubeconfig setting
    alone = flannel.systemd_files(s, binary, has_control_plane=False)[1].content.decode()
    assert "--kubeconfig-file=/etc/kubernetes/kubelet.conf " in alone
    by_path = {f.path: f for f in files}
    assert by_path["/usr/local/bin/flanneld"].sha256 == hashlib.sha256(b"#!/bin/sh\n").hexdigest()
    net_conf = json.loads(by_path["/etc/kube-flannel/net-conf.json"].content)
    assert net_conf["Network"] == "10.42.0.0/16" == controller_manager.desired_flags(s)["cluster-cidr"]


# --- the rollout's error: which flannel pod is not Ready, and what flanneld said -------------------------


class _Kubectl:
    """A first control-plane host whose kubectl answers these commands (stdout and stderr apart, as pyinfra
    reads them); the rollout always times out."""

    def __init__(self, pods: list[str], logs: dict[str, tuple[bool, list[str], list[str]]]):
        self.pods, self.logs, self.ran = pods, logs, []

    def run_shell_command(self, command, **_):
        from pyinfra.connectors.util import CommandOutput, OutputLine
        self.ran.append(command)
        if " rollout status " in command:
            ok, out, err = False, [], ["error: timed out waiting for the condition"]
        elif " get pods " in command:
            ok, out, err = True, self.pods, []
        else:
            ok, out, err = self.logs.get(command.split(" logs ", 1)[1], (False, [], ["error: not found"]))
        return ok, CommandOutput([OutputLine("stdout", line) for line in out]
                                 + [OutputLine("stderr", line) for line in err])


FLANNELD_SAID = ['E1207 04:40:01.1 1 main.go:278] Could not find valid interface matching pn-nonexist0: '
                 'failed to find IPv4 address for interface pn-nonexist0',
                 'E1207 04:40:01.1 1 main.go:301] Failed to find interface to use that matches the interfaces '
                 'and/or regexes provided']
CURRENT = "kube-flannel-ds-x -c kube-flannel --tail=20"


def rollout_error(pods: list[str], logs: dict) -> tuple[str, list[str]]:
    host = _Kubectl(pods, logs)
    with pytest.raises(flannel.RolloutError) as raised:
        flannel.wait_for_rollout(None, host, {}, settings(flannel_rollout_timeout=40))
    return str(raised.value), host.ran


def test_a_crash_before_the_first_restart_shows_the_exited_containers_log_lines_without_previous():
    # kubelet serves the exited container as the current one until it restarts; --previous has none yet
    said, ran = rollout_error(["kube-flannel-ds-x|pn-node-2|false|0|CrashLoopBackOff|",
                               "kube-flannel-ds-y|pn-node-1|true|0||"],
                              {CURRENT: (True, FLANNELD_SAID, []),
                               f"{CURRENT} --previous": (False, [], ['previous terminated container not found'])})
    assert said.startswith("kube-flannel did not roll out within 40s (flannel_rollout_timeout): error: timed out")
    assert ("flannel pod kube-flannel-ds-x on node pn-node-2 is not Ready (waiting: CrashLoopBackOff; its "
            f"container's last log lines: {FLANNELD_SAID[0]} | {FLANNELD_SAID[1]})") in said
    assert "pn-node-1" not in said
    assert not any("--previous" in command for command in ran)


def test_a_restarted_container_shows_the_crashed_ones_log_lines_and_the_current_ones_when_they_differ():
    starting = ["I1207 04:40:12.0 1 main.go:211] CLI flags config: {...}"]
    said, _ = rollout_error(["kube-flannel-ds-x|pn-node-2|false|2||"],
                            {f"{CURRENT} --previous": (True, FLANNELD_SAID, []), CURRENT: (True, starting, [])})
    assert (f"is not Ready (it restarted; its crashed container's last log lines: {FLANNELD_SAID[0]} | "
            f"{FLANNELD_SAID[1]}; its container's last log lines: {starting[0]})") in said
    said, _ = rollout_error(["kube-flannel-ds-x|pn-node-2|false|2|CrashLoopBackOff|"],
                            {f"{CURRENT} --previous": (True, FLANNELD_SAID, []), CURRENT: (True, FLANNELD_SAID, [])})
    assert said.count("pn-nonexist0: failed") == 1  # the same lines once


def test_kubectls_stderr_is_never_taken_for_log_lines_and_a_pod_without_any_says_so():
    said, _ = rollout_error(["kube-flannel-ds-x|pn-node-2||||", "kube-flannel-ds-z|pn-node-1|false|0||2026-12-07T04:40:00Z"],
                            {CURRENT: (False, [], ['container "kube-flannel" in pod is waiting to start'])})
    assert "flannel pod kube-flannel-ds-x on node pn-node-2 is not Ready (no log lines)" in said
    assert "flannel pod kube-flannel-ds-z on node pn-node-1 is not Ready (being deleted; no log lines)" in said
    assert "waiting to start" not in said


def test_the_log_lines_are_bounded():
    said, _ = rollout_error(["kube-flannel-ds-x|pn-node-2|false|0||"],
                            {CURRENT: (True, [f"line {n}" for n in range(100)], [])})
    assert "last log lines: line 80 | " in said and "line 79 " not in said and said.endswith("line 99)")
