"""
Every value is written by its format's own rules (issue 18, cases 4 and 5): every template and
every command podnet builds is rendered with hostile values for every string setting that reaches
it (bypassing the settings' validation, which refuses most of them), then read back with that
format's own reader (tomllib for containerd's TOML, go-yaml's rules for YAML, json, systemd's
ExecStart and EnvironmentFile rules, sh), and each value must come back exactly, as one value.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from tasks import cni, containerd, flannel, kernel, kubeadm
from tasks.controller_manager import exec_start_entry
from tasks.engine.desired import render
from tasks.formats import kube_yaml, shell, systemd_unit, toml
from tasks.formats.systemd_unit import systemd_words
from testbed.kubebed import binaries
from tests.support.hosts import settings

HOSTILE = [
    "/opt/cni/bin', '/tmp/evil",  # case 5: closed the TOML string and added a bin_dirs entry
    '/opt/cni/bin", "/tmp/evil',
    "Port-6443;touch${IFS}/tmp/pwned",  # case 4: ran as shell on the joining node
    "$(touch /tmp/pwned)`id`$HOME${X}$$",
    "a\"b\\c\nd\te\rf\x01g\x7fh",
    "%H %% %n $(POD_IP) $$(x)",
    "yes", "10:30", "0755", "~", "null", "- x", "#x", "key: value", "{a: b}", "[x]", "*x", "&a", "!t", "<<", "=",
    " lead", "trail ", "é ☃ 𝄞", "a\x85b\u2028c\u2029d\ufeffe\x9bf", "\\", "'", '"', "",
]


def _bootstrap_settings():
    return settings(cluster_bootstrap=True, node_ip="192.0.2.10")


# --- TOML: containerd's config.toml --------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.7.28", "2.0.6", "2.3.4"])
@pytest.mark.parametrize("value", HOSTILE)
def test_containerd_config_holds_each_path_and_image_as_one_toml_string(version, value):
    s = dataclasses.replace(settings(containerd_version=version), sandbox_image=value, cni_bin_dir=value,
                            cni_conf_dir=value)
    config = tomllib.loads(containerd.render_config(s))
    if config["version"] == 2:
        cri = config["plugins"]["io.containerd.grpc.v1.cri"]
        assert cri["sandbox_image"] == value
        assert cri["cni"] == {"bin_dir": value, "conf_dir": value}
    else:
        assert config["plugins"]["io.containerd.cri.v1.images"]["pinned_images"] == {"sandbox": value}
        cni_section = config["plugins"]["io.containerd.cri.v1.runtime"]["cni"]
        assert cni_section.get("bin_dirs", [value]) == [value]  # one directory, never a second one
        assert cni_section.get("bin_dir", value) == value
        assert cni_section["conf_dir"] == value


def test_the_reported_toml_case_is_refused_before_any_host_and_would_be_one_directory():
    from tasks.settings import SettingsError
    with pytest.raises(SettingsError, match=r"cni_bin_dir: .* is not valid; expected an absolute path such as "
                                            r"/opt/cni/bin, without quotes"):
        settings(cni_bin_dir="/opt/cni/bin', '/tmp/evil")


@pytest.mark.parametrize("value", ["/opt/cni/bin', '/tmp/evil", 'reg/x:1"\n[plugins.evil]\nk = 1'])
def test_containerd_itself_reads_one_value(value, tmp_path):
    """The real containerd (shared/bin, podnet's default release) reads the rendered config.toml: one CNI
    bin dir, one sandbox image, exactly the values given (case 5: a second bin_dirs entry before)."""
    try:
        binary = binaries.binary("containerd")
    except binaries.Unavailable as error:
        pytest.skip(f"containerd from shared/bin: {error}")
    s = dataclasses.replace(settings(), cni_bin_dir=value, sandbox_image=value)
    (tmp_path / "config.toml").write_text(containerd.render_config(s))
    dump = subprocess.run([str(binary), "--config", str(tmp_path / "config.toml"), "config", "dump"],
                          capture_output=True, text=True, timeout=60, check=True).stdout
    plugins = tomllib.loads(dump)["plugins"]
    assert plugins["io.containerd.cri.v1.runtime"]["cni"]["bin_dirs"] == [value]
    assert plugins["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"] == value
    assert "evil" not in plugins


@pytest.mark.parametrize("value", HOSTILE)
def test_toml_strings_round_trip(value):
    assert tomllib.loads(f"k = {toml.basic_string(value)}\n") == {"k": value}
    assert tomllib.loads(f"k = {toml.literal_string(value)}\n") == {"k": value}


@pytest.mark.parametrize("value", ["2.3.4\n[plugins.evil]", "1.7.0\r"])
def test_a_toml_comment_takes_no_line_break(value):
    with pytest.raises(ValueError, match="cannot be written in a TOML comment"):
        containerd.render_config(dataclasses.replace(settings(), containerd_version=value))


@pytest.mark.parametrize("version, lines", [
    ("2.3.4", ["# containerd 2.3.4: configuration version 4.", "  sandbox = 'registry.k8s.io/pause:3.10'",
               "    bin_dirs = ['/opt/cni/bin']", "    conf_dir = '/etc/cni/net.d'"]),
    ("1.7.28", ["# containerd 1.7.28: configuration version 2.", '  sandbox_image = "registry.k8s.io/pause:3.10"',
                '    bin_dir = "/opt/cni/bin"', '    conf_dir = "/etc/cni/net.d"']),
])
def test_ordinary_values_render_as_before(version, lines):
    """The same bytes as before the TOML writer for every valid setting, so upgrading podnet does not restart
    containerd on every node (for the values themselves: containerd 2.3's config version 4 and the pause image
    that follows kubernetes_version are issue 19's deliberate changes, see tests/test_compat.py)."""
    config = containerd.render_config(settings(containerd_version=version,
                                               sandbox_image="registry.k8s.io/pause:3.10")).splitlines()
    assert all(line in config for line in lines)


# --- YAML: the kube-flannel manifest and kubeadm's configuration -----------------------------------


def _kubelet_expands(word: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion of a container command/args item (third_party/forked/golang/
    expansion/expand.go): "$$" is "$", "$(NAME)" of a defined variable its value, anything else kept."""
    out, i = [], 0
    while i < len(word):
        if word.startswith("$$", i):
            out.append("$")
            i += 2
        elif word.startswith("$(", i) and ")" in word[i:]:
            name = word[i + 2:word.index(")", i)]
            out.append(env.get(name, f"$({name})"))
            i = word.index(")", i) + 1
        else:
            out.append(word[i])
            i += 1
    return "".join(out)


@pytest.mark.parametrize("value", HOSTILE)
def test_kube_flannel_manifest_holds_image_and_iface_as_written(value):
    s = dataclasses.replace(settings(), flannel_image=value, flannel_iface=value or None)
    documents = kube_yaml.load_all(flannel.render_manifest(s))
    daemonset = next(d for d in documents if d and d["kind"] == "DaemonSet")
    container = daemonset["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == value
    args = [_kubelet_expands(arg, {"POD_IP": "192.0.2.10"}) for arg in container["args"]]
    assert args == ["--ip-masq", "--kube-subnet-mgr", *([f"--iface={value}"] if value else [])]
    assert json.loads(next(d for d in documents if d and d["kind"] == "ConfigMap")["data"]["net-conf.json"])


@pytest.mark.parametrize("value", HOSTILE)
def test_kubeadm_init_configuration_holds_each_value_as_written(value):
    s = dataclasses.replace(_bootstrap_settings(), kubeadm_ignore_preflight_errors=(value,),
                            etcd_external_endpoints=(value,), kubelet_configuration={value or "k": value, "n": {value: [value]}},
                            kube_proxy_configuration={value or "k": value})
    documents = {d["kind"]: d for d in kube_yaml.load_all(kubeadm.init_config(s))}
    assert documents["InitConfiguration"]["nodeRegistration"]["ignorePreflightErrors"] == [value]
    assert documents["ClusterConfiguration"]["etcd"]["external"]["endpoints"] == [value]
    assert documents["KubeletConfiguration"][value or "k"] == value
    assert documents["KubeletConfiguration"]["n"] == {value: [value]}
    assert documents["KubeProxyConfiguration"][value or "k"] == value


def test_kubeadm_configuration_keys_that_yaml_reads_as_other_types_stay_strings():
    s = dataclasses.replace(_bootstrap_settings(), kubelet_configuration={"yes": 1, "null": 2, "on": 3})
    kubelet = {d["kind"]: d for d in kube_yaml.load_all(kubeadm.init_config(s))}["KubeletConfiguration"]
    assert {k: kubelet[k] for k in ("yes", "null", "on")} == {"yes": 1, "null": 2, "on": 3}


def test_json_and_yaml_templates_parse():
    s = settings(flannel_mtu=1400)
    assert json.loads(cni.render_conflist(s))["plugins"][0]["delegate"]["mtu"] == 1400
    kube_yaml.load_all(flannel.render_manifest(s))


# --- systemd: ExecStart= words and EnvironmentFile= values -------------------------------------------


def _exec_words(unit: str) -> list[str]:
    """ExecStart= as systemd runs it: its words (systemd's quoting, escapes and %%), then "$$" as "$"."""
    return [word.replace("$$", "$") for _, word in systemd_words(exec_start_entry(unit).value)]


@pytest.mark.parametrize("value", [v for v in HOSTILE if v and "\0" not in v])
def test_flanneld_unit_runs_flanneld_with_each_value_as_one_word(value):
    s = dataclasses.replace(settings(flannel_rollout="systemd"), kubeconfig=value, flannel_iface=value)
    # the kubeconfig setting is flanneld's only without a control-plane host (else: its own, KUBECONFIG_PATH)
    _, unit = flannel.systemd_files(s, Path(__file__), has_control_plane=False)
    assert _exec_words(unit.content.decode()) == [
        flannel.FLANNELD_PATH, "--ip-masq", "--kube-subnet-mgr", f"--kubeconfig-file={value}",
        f"--net-config-path={flannel.NET_CONF_PATH}", f"--iface={value}"]


def _env_file_value(line: str) -> tuple[str, str]:
    """One NAME="value" line as systemd's parse_env_file reads it (src/basic/env-file.c): inside double
    quotes a backslash escapes ", \\, ` and $ and is kept before any other character."""
    name, _, quoted = line.partition("=")
    if systemd_unit.SYSTEMD_PLAIN_WORD.fullmatch(quoted) or not quoted:
        return name, quoted
    assert quoted[0] == '"' and quoted[-1] == '"'
    out, i, body = [], 0, quoted[1:-1]
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body) and body[i + 1] in '"\\`$':
            out.append(body[i + 1])
            i += 2
        else:
            assert body[i] != '"', "an unescaped quote would end the value"
            out.append(body[i])
            i += 1
    return name, "".join(out)


@pytest.mark.parametrize("words", [["--node-ip=192.0.2.10"], ["a\"b", "c\\d", "$X", "`id`", "%H"], []])
def test_kubelet_extra_args_are_read_back_word_for_word(words):
    line = systemd_unit.environment_file_assignment("KUBELET_EXTRA_ARGS", words)
    assert _env_file_value(line) == ("KUBELET_EXTRA_ARGS", " ".join(words))
    assert " ".join(words).split() == words  # $KUBELET_EXTRA_ARGS is split at white space


@pytest.mark.parametrize("word", ["a b", "a\nb", "", "a\tb"])
def test_a_kubelet_extra_arg_that_white_space_would_split_is_refused(word):
    with pytest.raises(ValueError, match="white space"):
        systemd_unit.environment_file_assignment("KUBELET_EXTRA_ARGS", ["--x", word])


def test_kubelet_files_read_back():
    s = _bootstrap_settings()
    files = {f.path: f.content.decode() for f in kubeadm.kubelet_files(s)}
    defaults = files[kubeadm.KUBELET_DEFAULTS_PATH].splitlines()[-1]
    assert _env_file_value(defaults) == ("KUBELET_EXTRA_ARGS", "--node-ip=192.0.2.10")
    assert _exec_words(files[kubeadm.KUBELET_UNIT_PATH]) == [kubeadm.KUBELET]
    assert _exec_words(containerd.unit_file().content.decode()) == [
        "/usr/local/bin/containerd", "--config", containerd.CONFIG_PATH]


@pytest.mark.parametrize("value", [v for v in HOSTILE if "\0" not in v])
def test_systemd_word_round_trips(value):
    assert _exec_words(f"[Service]\nExecStart=/bin/x {systemd_unit.systemd_word(value)}\n") == ["/bin/x", value]


# --- kernel files: sysctl.d and modules-load.d hold podnet's own constants only -------------------


def test_kernel_files_hold_one_key_value_per_line():
    for s in (settings(), settings(cluster_cidr_ipv6="fd00:10:244::/56")):
        files = {f.path: f.content.decode() for f in kernel.desired_files(s)} if hasattr(kernel, "desired_files") \
            else {kernel.SYSCTL_PATH: render("kernel/sysctl.conf.j2", sysctls=kernel.parameters(s))}
        lines = [line for line in files[kernel.SYSCTL_PATH].splitlines() if line and not line.startswith("#")]
        assert {line.split(" = ")[0]: line.split(" = ")[1] for line in lines} == kernel.parameters(s)


# --- kubeadm join: a fixed command line, every value in its YAML configuration file ------------------------


@pytest.mark.parametrize("value", HOSTILE)
def test_kubeadm_join_reads_each_value_from_its_configuration_and_its_command_line_is_fixed(value):
    s = dataclasses.replace(_bootstrap_settings(), kubeadm_ignore_preflight_errors=(value,))
    config = kube_yaml.load(kubeadm.join_config("192.0.2.1:6443", "abcdef.0123456789abcdef", "sha256:" + "0" * 64, s,
                                                certificate_key="1" * 64))
    assert config["nodeRegistration"]["ignorePreflightErrors"] == [value]
    assert config["discovery"]["bootstrapToken"]["apiServerEndpoint"] == "192.0.2.1:6443"
    # the command line names the file only (tasks/kubeadm.join): no inventory value and no secret is on it
    assert kubeadm.JOIN_COMMAND == f"{kubeadm.KUBEADM} join --config {kubeadm.JOIN_CONFIG_PATH}"


@pytest.mark.parametrize("value", HOSTILE)
def test_shell_command_round_trips(value):
    result = subprocess.run(["sh", "-c", shell.command("printf", "%s\\0", value, "end")], capture_output=True,
                            check=True)
    assert result.stdout.decode().split("\0")[:-1] == [value, "end"]


# --- podnet's own YAML data files ---------------------------------------------------------------


def test_podnets_data_files_read_the_same_values_as_pyyamls_safe_loader():
    # every run reads files/artifacts.yaml: libyaml's parser where PyYAML has it, never other values
    from tasks.artifacts.catalog import ARTIFACTS_FILE
    from tasks.formats import data_yaml
    text = ARTIFACTS_FILE.read_text()
    assert data_yaml.load(text) == yaml.safe_load(text)
    assert data_yaml.load("a: 0o17\nb: 1_000\nc: yes\nd: 2026-12-07\n") == yaml.safe_load(
        "a: 0o17\nb: 1_000\nc: yes\nd: 2026-12-07\n")
    with pytest.raises(yaml.YAMLError):
        data_yaml.load("a: [1")
