"""
The node IPAM flags recorded in kubeadm's ClusterConfiguration (ConfigMap kube-system/kubeadm-config),
which `kubeadm upgrade` regenerates the kube-controller-manager manifest from.

The documents are the ClusterConfigurations of tests/support/kubeadm.py. Every merged document below
(single and dual stack) was also accepted by `kubeadm config validate` of kubeadm 1.36.2, with
kubernetesVersion set to v1.36.2 (it deploys no older control plane).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess

import pytest
import yaml

from tasks import kubeadm_config
from tasks.kubeadm_config import KubeadmConfigError, Stored, merge_cluster_configuration
from tasks.engine.answers import RemoteAnswerError
from tasks.engine.probe import parse_probe, probe_script
from tasks.settings import parse_host_settings
from tests.support.kubeadm import (V1BETA3_KUBEADM_1_30, V1BETA3_KUBESPRAY, V1BETA4_EDITED, V1BETA4_KUBEADM_1_35,
                                   V1BETA4_PODNET)


def settings(**data):
    return parse_host_settings(data, "cp1", ["control_plane"])


ARGS = kubeadm_config.desired_args(settings())
DUAL_STACK_ARGS = kubeadm_config.desired_args(settings(cluster_cidr_ipv6="fd00:10:244::/56",
                                                       service_cluster_ip_range_ipv6="fd00:10:96::/112"))

def merged(text: str, args=ARGS) -> str | None:
    return merge_cluster_configuration(text, args)[0]


def controller_manager_of(text: str) -> dict:
    return yaml.safe_load(text)["controllerManager"]


def without_controller_manager(text: str) -> dict:
    document = yaml.safe_load(text)
    document.pop("controllerManager")
    return document


# --- v1beta3: extraArgs is a map ----------------------------------------------------------------


def test_v1beta3_gets_the_flags_as_a_map_of_strings_and_keeps_everything_else():
    text, changes, api_version = merge_cluster_configuration(V1BETA3_KUBEADM_1_30, ARGS)
    assert api_version == "kubeadm.k8s.io/v1beta3"
    assert text == V1BETA3_KUBEADM_1_30.replace("controllerManager: {}\n", """\
controllerManager:
  extraArgs:
    allocate-node-cidrs: 'true'
    cluster-cidr: 10.244.0.0/16
    node-cidr-mask-size: '24'
    service-cluster-ip-range: 10.96.0.0/12
""")
    assert changes == ["allocate-node-cidrs=true", "cluster-cidr=10.244.0.0/16", "node-cidr-mask-size=24",
                       "service-cluster-ip-range=10.96.0.0/12"]


def test_v1beta3_keeps_other_extra_args_and_merges_controllers_like_the_manifest():
    text, changes, _ = merge_cluster_configuration(V1BETA3_KUBESPRAY, ARGS)
    assert controller_manager_of(text) == {
        "extraArgs": {"bind-address": "0.0.0.0", "cluster-cidr": "10.244.0.0/16", "configure-cloud-routes": "false",
                      "controllers": "*,bootstrapsigner,tokencleaner", "node-cidr-mask-size": "24",
                      "node-monitor-grace-period": "40s", "node-monitor-period": "5s", "profiling": "False",
                      "terminated-pod-gc-threshold": "12500", "allocate-node-cidrs": "true",
                      "service-cluster-ip-range": "10.96.0.0/12"},
        "extraVolumes": [{"hostPath": "/etc/kubernetes/cloud", "mountPath": "/etc/kubernetes/cloud",
                          "name": "cloud-config", "readOnly": True}]}
    assert list(controller_manager_of(text)["extraArgs"])[:9] == list(
        controller_manager_of(V1BETA3_KUBESPRAY)["extraArgs"])  # existing args stay where they were
    assert without_controller_manager(text) == without_controller_manager(V1BETA3_KUBESPRAY)
    assert changes == ["controllers=*,bootstrapsigner,tokencleaner (was *,bootstrapsigner,tokencleaner,-nodeipam)",
                       "allocate-node-cidrs=true", "cluster-cidr=10.244.0.0/16 (was 10.233.64.0/18)",
                       "service-cluster-ip-range=10.96.0.0/12"]


@pytest.mark.parametrize("controllers, expected", [
    ("*", "*"),
    ("*,-nodeipam", "*"),
    ("*,-node-ipam-controller,-ttl", "*,-ttl"),
    ("csrapproving,serviceaccount", "csrapproving,serviceaccount,nodeipam"),
    ("node-ipam-controller,serviceaccount", "node-ipam-controller,serviceaccount"),
])
def test_controllers_in_extra_args_gain_node_ipam_without_switching_others(controllers, expected):
    document = V1BETA3_KUBEADM_1_30.replace("controllerManager: {}\n",
                                            f"controllerManager:\n  extraArgs:\n    controllers: '{controllers}'\n")
    assert controller_manager_of(merged(document))["extraArgs"]["controllers"] == expected


def test_dual_stack_replaces_the_single_mask_in_v1beta3():
    document = V1BETA3_KUBEADM_1_30.replace("controllerManager: {}\n", "controllerManager:\n  extraArgs:\n"
                                            "    node-cidr-mask-size: '24'\n    v: '2'\n")
    assert controller_manager_of(merged(document, DUAL_STACK_ARGS))["extraArgs"] == {
        "v": "2", "allocate-node-cidrs": "true", "cluster-cidr": "10.244.0.0/16,fd00:10:244::/56",
        "node-cidr-mask-size-ipv4": "24", "node-cidr-mask-size-ipv6": "64",
        "service-cluster-ip-range": "10.96.0.0/12,fd00:10:96::/112"}


def test_a_value_kubeadm_reads_as_a_string_stays_a_string():
    # `10:30` is a string to kubeadm (Go YAML); PyYAML's default resolver would make it 630.
    document = V1BETA3_KUBEADM_1_30.replace("controllerManager: {}\n", "controllerManager:\n  extraArgs:\n"
                                            "    node-monitor-period: 10:30\n    profiling: \"false\"\n")
    text = merged(document)
    # kept as written where that reads back the same; 10:30 quoted, as a YAML 1.1 reader would misread it
    assert "    node-monitor-period: '10:30'\n    profiling: \"false\"\n" in text
    assert controller_manager_of(text)["extraArgs"]["node-monitor-period"] == "10:30"


# --- v1beta4: extraArgs is a list of {name, value} ------------------------------------------------


def test_v1beta4_gets_the_flags_as_a_list_of_name_and_value_and_keeps_everything_else():
    text, changes, api_version = merge_cluster_configuration(V1BETA4_KUBEADM_1_35, ARGS)
    assert api_version == "kubeadm.k8s.io/v1beta4"
    assert text == V1BETA4_KUBEADM_1_35.replace("controllerManager: {}\n", """\
controllerManager:
  extraArgs:
  - name: allocate-node-cidrs
    value: 'true'
  - name: cluster-cidr
    value: 10.244.0.0/16
  - name: node-cidr-mask-size
    value: '24'
  - name: service-cluster-ip-range
    value: 10.96.0.0/12
""")
    assert len(changes) == 4


def test_v1beta4_owned_args_end_up_once_in_place_others_and_duplicates_of_others_kept():
    text, changes, _ = merge_cluster_configuration(V1BETA4_EDITED, ARGS)
    assert controller_manager_of(text) == {
        "extraArgs": [{"name": "bind-address", "value": "0.0.0.0"},
                      {"name": "controllers", "value": "*,bootstrapsigner,tokencleaner"},
                      {"name": "cluster-cidr", "value": "10.244.0.0/16"},
                      {"name": "feature-gates", "value": "A=true"},
                      {"name": "feature-gates", "value": "B=false"},
                      {"name": "allocate-node-cidrs", "value": "true"},
                      {"name": "node-cidr-mask-size", "value": "24"},
                      {"name": "service-cluster-ip-range", "value": "10.96.0.0/12"}],
        "extraEnvs": [{"name": "GOMAXPROCS", "value": "2"}]}
    assert without_controller_manager(text) == without_controller_manager(V1BETA4_EDITED)
    assert changes == ["controllers=*,bootstrapsigner,tokencleaner (was *,bootstrapsigner,tokencleaner,-nodeipam)",
                       "allocate-node-cidrs=true", "cluster-cidr=10.244.0.0/16 (was 10.98.0.0/16, 10.99.0.0/16)",
                       "node-cidr-mask-size=24", "service-cluster-ip-range=10.96.0.0/12"]


def test_repeated_controllers_in_v1beta4_are_one_list_as_kube_controller_manager_reads_them():
    # kubeadm passes each entry as a --controllers flag; pflag appends the repeats into one list,
    # "*,-nodeipam" here, which switches node IPAM off: merged into one entry that keeps it on.
    document = V1BETA4_KUBEADM_1_35.replace("controllerManager: {}\n", """\
controllerManager:
  extraArgs:
  - name: controllers
    value: '*'
  - name: v
    value: "2"
  - name: controllers
    value: -nodeipam
""")
    text, changes, _ = merge_cluster_configuration(document, ARGS)
    assert controller_manager_of(text)["extraArgs"] == [
        {"name": "controllers", "value": "*"}, {"name": "v", "value": "2"},
        {"name": "allocate-node-cidrs", "value": "true"}, {"name": "cluster-cidr", "value": "10.244.0.0/16"},
        {"name": "node-cidr-mask-size", "value": "24"}, {"name": "service-cluster-ip-range", "value": "10.96.0.0/12"}]
    assert changes[0] == "controllers=* (was *, -nodeipam)"


def test_repeated_args_are_judged_in_the_order_kubeadm_passes_them():
    # kubeadm sorts repeats by value: --cluster-cidr=10.244.0.0/16 then --cluster-cidr=10.99.0.0/16,
    # so kube-controller-manager runs with 10.99.0.0/16 although podnet's value is listed last.
    document = V1BETA4_KUBEADM_1_35.replace("controllerManager: {}\n", """\
controllerManager:
  extraArgs:
  - name: allocate-node-cidrs
    value: "true"
  - name: cluster-cidr
    value: 10.99.0.0/16
  - name: node-cidr-mask-size
    value: "24"
  - name: service-cluster-ip-range
    value: 10.96.0.0/12
  - name: cluster-cidr
    value: 10.244.0.0/16
""")
    text, changes, _ = merge_cluster_configuration(document, ARGS)
    assert controller_manager_of(text)["extraArgs"] == [
        {"name": "allocate-node-cidrs", "value": "true"}, {"name": "cluster-cidr", "value": "10.244.0.0/16"},
        {"name": "node-cidr-mask-size", "value": "24"}, {"name": "service-cluster-ip-range", "value": "10.96.0.0/12"}]
    assert changes == ["cluster-cidr=10.244.0.0/16 (was 10.244.0.0/16, 10.99.0.0/16)"]
    assert merged(text) is None


def test_dual_stack_in_v1beta4():
    assert controller_manager_of(merged(V1BETA4_PODNET, DUAL_STACK_ARGS))["extraArgs"] == [
        {"name": "allocate-node-cidrs", "value": "true"},
        {"name": "cluster-cidr", "value": "10.244.0.0/16,fd00:10:244::/56"},
        {"name": "service-cluster-ip-range", "value": "10.96.0.0/12,fd00:10:96::/112"},
        {"name": "node-cidr-mask-size-ipv4", "value": "24"},
        {"name": "node-cidr-mask-size-ipv6", "value": "64"}]


# --- converged: nothing to change ---------------------------------------------------------------


def test_what_kubeadm_stored_from_podnets_init_configuration_needs_no_change():
    assert merged(V1BETA4_PODNET) is None


@pytest.mark.parametrize("document", [V1BETA3_KUBEADM_1_30, V1BETA3_KUBESPRAY, V1BETA4_KUBEADM_1_35, V1BETA4_EDITED])
def test_a_merged_document_is_converged(document):
    for args in (ARGS, DUAL_STACK_ARGS):
        assert merged(merged(document, args), args) is None


def test_a_cluster_cidr_change_changes_only_that_arg():
    s = settings(cluster_cidr="10.200.0.0/16")
    text, changes, _ = merge_cluster_configuration(V1BETA4_PODNET, kubeadm_config.desired_args(s))
    assert changes == ["cluster-cidr=10.200.0.0/16 (was 10.244.0.0/16)"]
    # only that value changes: every other byte is as kubeadm wrote it
    assert text == V1BETA4_PODNET.replace("    value: 10.244.0.0/16\n", "    value: 10.200.0.0/16\n")


# --- what podnet does not guess at -----------------------------------------------------------------


def test_an_unknown_api_version_is_refused_naming_the_known_ones():
    with pytest.raises(KubeadmConfigError) as error:
        merged(V1BETA3_KUBEADM_1_30.replace("kubeadm.k8s.io/v1beta3", "kubeadm.k8s.io/v1beta2"))
    assert str(error.value) == (
        "ConfigMap kube-system/kubeadm-config: ClusterConfiguration has apiVersion 'kubeadm.k8s.io/v1beta2'; podnet "
        "records the node IPAM flags in kubeadm.k8s.io/v1beta3 (extraArgs as a map) and kubeadm.k8s.io/v1beta4 "
        "(extraArgs as a list) only. Upgrade the cluster with a kubeadm that stores one of them, then rerun")


def test_extra_args_in_the_other_schema_are_refused():
    with pytest.raises(KubeadmConfigError, match=r"\(kubeadm.k8s.io/v1beta4\) controllerManager.extraArgs is not "
                                                  r"a list of \{name, value\}"):
        merged(V1BETA3_KUBESPRAY.replace("kubeadm.k8s.io/v1beta3", "kubeadm.k8s.io/v1beta4"))
    with pytest.raises(KubeadmConfigError, match=r"\(kubeadm.k8s.io/v1beta3\) controllerManager.extraArgs is not "
                                                  "a map"):
        merged(V1BETA4_PODNET.replace("kubeadm.k8s.io/v1beta4", "kubeadm.k8s.io/v1beta3"))


def test_controllers_that_enable_nothing_are_refused_as_in_the_manifest():
    document = V1BETA4_KUBEADM_1_35.replace("controllerManager: {}\n", "controllerManager:\n  extraArgs:\n"
                                            "  - name: controllers\n    value: -nodeipam\n")
    with pytest.raises(KubeadmConfigError) as error:
        merged(document)
    assert str(error.value).startswith("ConfigMap kube-system/kubeadm-config: ClusterConfiguration "
                                       "controllerManager.extraArgs: --controllers=-nodeipam enables no controller")


# --- the kubectl query and patch ---------------------------------------------------------------------


def test_the_probe_asks_kubectl_for_resource_version_and_document():
    s = settings()
    assert kubeadm_config.query_command(s) == (
        "kubectl --kubeconfig=/etc/kubernetes/admin.conf -n kube-system get configmap kubeadm-config "
        "--ignore-not-found -o jsonpath='{\"podnet-kubeadm-config \"}{.metadata.resourceVersion}{\"\\n\"}"
        "{.data.ClusterConfiguration}'")
    assert kubeadm_config.probe_request(s, True).queries == {"kubeadm_config": kubeadm_config.query_command(s)}
    assert kubeadm_config.probe_request(s, False).queries == {}
    systemd = settings(kube_controller_manager_runtime="systemd")
    assert kubeadm_config.probe_request(systemd, True).queries == {}


def test_the_query_reaches_kubectl_intact_through_the_probe_on_a_real_shell(tmp_path):
    # A stand-in kubectl records its arguments and prints what kubectl prints for that jsonpath
    # (checked with kubectl 1.32: the literal, the resourceVersion, a newline, the document).
    stub = tmp_path / "kubectl"
    stub.write_text("#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$(dirname \"$0\")/args\"\n"
                    "echo 'Warning: a deprecation notice' >&2\n"
                    "printf 'podnet-kubeadm-config 4711\\n%s' \"$DOCUMENT\"\n")
    stub.chmod(0o755)
    s = settings()
    script = probe_script(kubeadm_config.probe_request(s, True))
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}", DOCUMENT=V1BETA4_PODNET)
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True, env=env).stdout
    assert (tmp_path / "args").read_text().splitlines() == [
        "--kubeconfig=/etc/kubernetes/admin.conf", "-n", "kube-system", "get", "configmap", "kubeadm-config",
        "--ignore-not-found", "-o",
        'jsonpath={"podnet-kubeadm-config "}{.metadata.resourceVersion}{"\\n"}{.data.ClusterConfiguration}']
    state = parse_probe(out.splitlines())
    rc, lines = state.queries["kubeadm_config"]
    assert state.query_stderr["kubeadm_config"] == "Warning: a deprecation notice"  # apart, not in the document
    assert kubeadm_config.parse_answer(rc, lines, s, "cp1") == Stored("4711", V1BETA4_PODNET)


def test_an_answer_that_does_not_start_with_the_mark_line_is_refused_not_searched():
    # stdout only: a kubectl warning goes to stderr (the probe keeps it apart, test above); a stdout that does
    # not start with the mark line is not kubectl's answer to this query, and nothing is decided from it
    lines = ["Warning: some deprecation", "podnet-kubeadm-config 4711", *V1BETA4_PODNET.splitlines()]
    with pytest.raises(RemoteAnswerError) as refused:
        kubeadm_config.parse_answer(0, lines, settings(), "cp1")
    assert str(refused.value).startswith("cp1: the answer to kubectl get ConfigMap kube-system/kubeadm-config "
                                         "(kubeadm_config) does not fit its schema: line 'Warning: some deprecation'")
    with pytest.raises(RemoteAnswerError, match="podnet-kubeadm-config 47 11"):
        kubeadm_config.parse_answer(0, ["podnet-kubeadm-config 47 11", "a: b"], settings(), "cp1")
    assert kubeadm_config.parse_answer(0, [], settings(), "cp1") is None  # no ConfigMap: not kubeadm's


def test_a_failing_kubectl_names_the_kubeconfig():
    with pytest.raises(KubeadmConfigError) as error:
        kubeadm_config.parse_answer(1, [], settings(), "cp1", stderr="error: the server doesn't have a resource type\n")
    assert str(error.value) == (
        "cp1: reading ConfigMap kube-system/kubeadm-config with kubectl failed: error: the server doesn't have a "
        "resource type; podnet records the node IPAM flags there on kubeadm clusters: check that kubectl is "
        "installed and kubeconfig /etc/kubernetes/admin.conf works")


def test_a_configmap_without_cluster_configuration_is_reported():
    with pytest.raises(KubeadmConfigError, match="cp1: ConfigMap kube-system/kubeadm-config has no "
                                                 "ClusterConfiguration; kubeadm upgrade needs it"):
        kubeadm_config.parse_answer(0, ["podnet-kubeadm-config 12"], settings(), "cp1")


def test_the_patch_changes_only_that_key_and_only_the_version_the_probe_read():
    s = settings()
    text = merged(V1BETA3_KUBESPRAY)
    command = kubeadm_config.patch_command(s, Stored("4711", V1BETA3_KUBESPRAY), text)
    argv = shlex.split(command)
    assert argv[:9] == ["kubectl", "--kubeconfig=/etc/kubernetes/admin.conf", "-n", "kube-system", "patch",
                        "configmap", "kubeadm-config", "--type=merge", "-p"]
    assert json.loads(argv[9]) == {"metadata": {"resourceVersion": "4711"}, "data": {"ClusterConfiguration": text}}
    assert len(argv) == 10
