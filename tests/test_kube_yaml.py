"""
Rewrites keep meaning (issue 18, case 8): the YAML podnet reads and rewrites (kube-controller-
manager's static pod manifest, the kubeadm-config ClusterConfiguration, the manifest reset.py
restores) is read before and after with the rules of the component that reads it (go-yaml v2
through sigs.k8s.io/yaml: tasks.formats.kube_yaml), and every value other than podnet's flags must
be unchanged. The corpus holds the scalars where YAML 1.1 (PyYAML), YAML 1.2 and go-yaml disagree.
"""

from __future__ import annotations

import copy
import math

import pytest
import yaml

from tasks import kubeadm_config
from tasks.controller_manager import desired_flags, merge_manifest
from tasks.formats import kube_yaml
from tasks.reset_controller_manager import strip_plan
from tests.support.hosts import settings
from tests.support.kubeadm import kubeadm_manifest

# Plain scalars -> what go-yaml v2's resolve (resolve.go) makes of them, decoded without a Go type.
GO_YAML = [
    ("10:30", "10:30"),  # no base 60 (PyYAML: 630)
    ("yes", True), ("no", False), ("on", True), ("Off", False), ("y", True), ("N", False),
    ("0755", 493),  # a leading 0 is octal (strconv.ParseInt base 0)
    ("0o17", 15), ("0x1F", 31), ("0b101", 5), ("-0b101", -5), ("1_000", 1000), ("+12", 12),
    ("1e3", 1000.0), (".5", 0.5), ("08", 8.0),  # not octal, not an int: the float form
    ("1e400", "1e400"),  # out of float64's range: ParseFloat fails, a string
    ("18446744073709551615", 2**64 - 1),  # ParseUint
    ("~", None), ("null", None), ("NULL", None), ("", None),
    (".inf", math.inf), ("-.Inf", -math.inf), ("+.INF", math.inf),
    ("2001-01-01", "2001-01-01"),  # a timestamp decoded into interface{} stays the string
    ("=", "="),  # YAML 1.1's value type: PyYAML's safe_load cannot even construct it
    ("-", "-"), ("1.2.3", "1.2.3"), ("0x", "0x"), ("True", True), ("tRUE", "tRUE"),
]

TRICKY = ["10:30", "yes", "no", "on", "off", "0755", "1e3", "~", "null", ".inf", "0x1F", "2001-01-01", "=",
          "0o17", "1_000", "08", "y", "n", "1e400"]


@pytest.mark.parametrize("plain, value", GO_YAML)
def test_plain_scalars_resolve_as_go_yaml_resolves_them(plain, value):
    assert kube_yaml.go_resolve(plain) == value
    assert type(kube_yaml.go_resolve(plain)) is type(value)


def _env(prefix: str) -> str:
    """Env entries holding every tricky scalar plain, single- and double-quoted."""
    lines = []
    for n, text in enumerate(TRICKY):
        lines += [f"    - name: {prefix}PLAIN_{n}\n      value: {text}\n",
                  f"    - name: {prefix}SINGLE_{n}\n      value: '{text}'\n",
                  f"    - name: {prefix}DOUBLE_{n}\n      value: \"{text}\"\n"]
    return "".join(lines)


def manifest(command: list[str]) -> str:
    """kubeadm's manifest (tests/support/kubeadm.py) with the tricky scalars in annotations, env, another
    container's args and an anchored mapping merged into another."""
    tricky_map = "".join(f"    k{n}: {text}\n" for n, text in enumerate(TRICKY))
    return kubeadm_manifest(command).replace("metadata:\n", """\
metadata:
  annotations:
    a/plain: 10:30
    a/octal: 0755
    a/date: 2001-01-01
""", 1).replace("    imagePullPolicy: IfNotPresent\n", "    env:\n" + _env("") + "    imagePullPolicy: IfNotPresent\n",
                1).replace("  hostNetwork: true\n", f"""\
  - name: sidecar
    image: example/sidecar:1.0
    args: [10:30, yes, "0755", =]
  hostNetwork: true
  x-defaults: &defaults
{tricky_map}  x-merged:
    <<: *defaults
    k0: overridden
""", 1)


COMMAND = ["kube-controller-manager", "--bind-address=127.0.0.1", "--controllers=*,bootstrapsigner,tokencleaner",
           "--leader-elect=true", "--use-service-account-credentials=true"]


def _other_than_command_line(document: dict) -> dict:
    document = copy.deepcopy(document)
    for container in document["spec"]["containers"]:
        if container["name"] == "kube-controller-manager":
            container.pop("command", None)
            container.pop("args", None)
    return document


def _same(a, b) -> bool:
    """Equal as values (NaN-free corpus; int 1000 and float 1000.0 differ in type, so compare types too)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("data", [{}, {"cluster_cidr_ipv6": "fd00:10:244::/56"}])
def test_the_manifest_rewrite_changes_podnet_flags_only(data):
    text = manifest(COMMAND)
    merged = merge_manifest(text, desired_flags(settings(**data)))
    assert merged is not None
    before, after = kube_yaml.load(text), kube_yaml.load(merged)
    assert _same(_other_than_command_line(before), _other_than_command_line(after))
    command = after["spec"]["containers"][0]["command"]
    assert [item for item in command if not item.startswith(tuple(f"--{f}" for f in desired_flags(settings())))
            and not item.startswith("--node-cidr-mask-size")] == COMMAND
    assert merge_manifest(merged, desired_flags(settings(**data))) is None  # converged


def test_an_env_value_10_30_stays_the_string_the_kubelet_decodes():
    # The reported case: PyYAML's YAML 1.1 made 10:30 the integer 630, which the kubelet cannot decode
    # into EnvVar.value (a string), so kube-controller-manager stopped.
    merged = merge_manifest(manifest(COMMAND), desired_flags(settings()))
    env = {e["name"]: e["value"] for e in kube_yaml.load(merged)["spec"]["containers"][0]["env"]}
    assert env["PLAIN_0"] == "10:30" and env["DOUBLE_0"] == "10:30"
    assert yaml.safe_load("value: 10:30\n") == {"value": 630}, "PyYAML's reading, which podnet no longer uses"
    # written so that a YAML 1.1 reader agrees too: quoted
    assert "value: '10:30'" in merged or 'value: "10:30"' in merged


def test_reset_strips_podnet_flags_only():
    text = manifest([*COMMAND, "--allocate-node-cidrs=true", "--cluster-cidr=10.244.0.0/16",
                     "--node-cidr-mask-size=24"])
    stripped = merge_manifest(text, {}, planner=strip_plan)
    assert stripped is not None
    before, after = kube_yaml.load(text), kube_yaml.load(stripped)
    assert _same(_other_than_command_line(before), _other_than_command_line(after))
    assert after["spec"]["containers"][0]["command"] == COMMAND


def cluster_configuration(extra_args: str) -> str:
    return f"""\
apiServer:
  extraArgs:
{"".join(f"  - name: a{n}{chr(10)}    value: {text}{chr(10)}" for n, text in enumerate(TRICKY))}apiVersion: kubeadm.k8s.io/v1beta4
certificatesDir: /etc/kubernetes/pki
clusterName: kubernetes
controllerManager:
  extraArgs:
{extra_args}etcd:
  local:
    dataDir: /var/lib/etcd
    extraArgs:
    - name: quota-backend-bytes
      value: 0755
    - name: heartbeat-interval
      value: 1e3
kind: ClusterConfiguration
kubernetesVersion: v1.36.2
networking:
  dnsDomain: cluster.local
  serviceSubnet: 10.96.0.0/12
"""


def test_the_kubeadm_config_rewrite_changes_podnet_args_only():
    others = "".join(f"  - name: c{n}\n    value: '{text}'\n" for n, text in enumerate(TRICKY))
    text = cluster_configuration(others + "  - name: node-monitor-period\n    value: 10:30\n")
    merged, changes, _ = kubeadm_config.merge_cluster_configuration(text, kubeadm_config.desired_args(settings()))
    assert merged is not None and changes
    before, after = kube_yaml.load(text), kube_yaml.load(merged)
    kept_before = [e for e in before["controllerManager"]["extraArgs"]]
    kept_after = [e for e in after["controllerManager"]["extraArgs"]
                  if e["name"] not in desired_flags(settings())]
    assert _same(kept_before, kept_after)
    for document in (before, after):
        document.pop("controllerManager")
    assert _same(before, after)


def test_the_kubeadm_config_map_form_keeps_other_values():
    text = cluster_configuration("").replace("kubeadm.k8s.io/v1beta4", "kubeadm.k8s.io/v1beta3").replace(
        "controllerManager:\n  extraArgs:\n", "controllerManager:\n  extraArgs:\n    node-monitor-period: 10:30\n"
        "    profiling: 'no'\n")
    merged, _, _ = kubeadm_config.merge_cluster_configuration(text, kubeadm_config.desired_args(settings()))
    after = kube_yaml.load(merged)
    assert after["controllerManager"]["extraArgs"]["node-monitor-period"] == "10:30"
    assert after["controllerManager"]["extraArgs"]["profiling"] == "no"
    assert after["controllerManager"]["extraArgs"]["node-cidr-mask-size"] == "24"  # a string, as kubeadm needs
    before = kube_yaml.load(text)
    for document in (before, after):
        document.pop("controllerManager")
    assert _same(before, after)


@pytest.mark.parametrize("text", TRICKY + ["<<", "a: b", "- x", "#c", "*x", "&a", "!t", "'q", '"d', "x #y", " lead",
                                           "trail ", "multi\nline", "tab\there", "é", "a\x85b\u2028c\ufeffd\x9b𝄞", "@at", "%p", "`b", "|", ">"])
def test_a_new_string_reads_back_as_itself(text):
    """A string podnet writes into a node tree is read back by go-yaml (and YAML 1.1) as that string."""
    root = kube_yaml.compose("k: []\n")
    kube_yaml.set_value(root, "k", kube_yaml.sequence([kube_yaml.string(text)]))
    kube_yaml.set_value(root, "m", kube_yaml.mapping([(kube_yaml.string(text), kube_yaml.string(text))]))
    written = kube_yaml.serialize(root)
    assert kube_yaml.load(written) == {"k": [text], "m": {text: text}}
    assert yaml.safe_load(written) == {"k": [text], "m": {text: text}}
