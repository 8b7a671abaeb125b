"""
Node IPAM flags merged into real kube-controller-manager command lines (kubeadm's static
pod, kubespray's, a Kubernetes-The-Hard-Way systemd unit): podnet sets its own flags,
merges --controllers without switching anything else on or off, keeps every other
token and field, and reports "no change" when there is nothing to write. Command lines are
read as kube-controller-manager's flag parser reads them, and a unit's ExecStart as systemd
reads it; every form is tried on both runtimes.
"""

from __future__ import annotations

import re

import pytest
import yaml

from tasks.controller_manager import (
    ControllerManagerError,
    desired_flags,
    merge_command,
    merge_controllers,
    merge_manifest,
    merge_unit,
    planned_file,
)
from tasks.engine.probe import NodeState
from tests.support.hosts import settings
from tests.support.kubeadm import (
    HARD_WAY_UNIT,
    KUBEADM_COMMAND,
    KUBEADM_COMMAND_POD_SUBNET,
    KUBEADM_MANIFEST,
    KUBEADM_MANIFEST_POD_SUBNET,
    KUBESPRAY_COMMAND,
    kubeadm_manifest,
)

DEFAULT_FLAGS = ["--allocate-node-cidrs=true", "--cluster-cidr=10.244.0.0/16", "--node-cidr-mask-size=24",
                 "--service-cluster-ip-range=10.96.0.0/12"]
DUAL_STACK = {"cluster_cidr_ipv6": "fd00:10:244::/56", "service_cluster_ip_range_ipv6": "fd00:10:96::/112"}


def flags(**data):
    return desired_flags(settings(**data))


def flag_values(command: list[str]) -> dict[str, str]:
    out = {}
    for token in command:
        if token.startswith("--"):
            name, _, value = token[2:].partition("=")
            assert name not in out, f"{name} given twice in {command}"
            out[name] = value
    return out


# --- --controllers ---------------------------------------------------------------


@pytest.mark.parametrize("value, merged", [
    ("*", "*"),
    ("*,bootstrapsigner,tokencleaner", "*,bootstrapsigner,tokencleaner"),  # kubeadm's
    ("bootstrapsigner,tokencleaner,ttl", "bootstrapsigner,tokencleaner,ttl,nodeipam"),
    ("*,-nodeipam,bootstrapsigner", "*,bootstrapsigner"),
    ("*,-nodeipam", "*"),
    ("*,-node-ipam-controller,tokencleaner", "*,tokencleaner"),
    ("node-ipam-controller,ttl", "node-ipam-controller,ttl"),  # the alias already enables it
    ("nodeipam,ttl", "nodeipam,ttl"),
    ("-nodeipam,ttl", "ttl,nodeipam"),
    ("*,-ttl", "*,-ttl"),  # other disabled controllers stay disabled
    (" *, bootstrapsigner ", "*,bootstrapsigner"),
])
def test_merge_controllers(value, merged):
    assert merge_controllers(value) == merged


@pytest.mark.parametrize("value", ["-nodeipam", "", "-node-ipam-controller", " , "])
def test_controllers_that_would_become_nodeipam_alone_are_refused(value):
    with pytest.raises(ControllerManagerError) as raised:
        merge_controllers(value)
    message = str(raised.value)
    assert f"--controllers={value} enables no controller" in message
    assert "--controllers=nodeipam, which runs node IPAM alone" in message
    assert "'*,bootstrapsigner,tokencleaner'" in message


def test_refusal_surfaces_from_a_manifest():
    command = [t if not t.startswith("--controllers=") else "--controllers=-nodeipam" for t in KUBEADM_COMMAND]
    with pytest.raises(ControllerManagerError, match="enables no controller"):
        merge_manifest(kubeadm_manifest(command), flags())


# --- command lines ------------------------------------------------------------------


def test_kubeadm_without_pod_subnet_gains_the_flags():
    merged = merge_command(KUBEADM_COMMAND, flags())
    assert merged == KUBEADM_COMMAND + DEFAULT_FLAGS  # everything kept in order, ours appended


def test_kubeadm_with_pod_subnet_keeps_its_values_in_place():
    merged = merge_command(KUBEADM_COMMAND_POD_SUBNET, flags())
    # kubeadm already set allocate/cluster-cidr/service range to the same values; only the
    # mask kube-controller-manager would otherwise default is added
    assert merged == KUBEADM_COMMAND_POD_SUBNET + ["--node-cidr-mask-size=24"]


def test_existing_cluster_cidr_with_another_value_is_replaced_in_place():
    merged = merge_command(KUBEADM_COMMAND_POD_SUBNET, flags(cluster_cidr="10.42.0.0/16",
                                                             service_cluster_ip_range="10.43.0.0/16"))
    position = KUBEADM_COMMAND_POD_SUBNET.index("--cluster-cidr=10.244.0.0/16")
    assert merged[position] == "--cluster-cidr=10.42.0.0/16"
    values = flag_values(merged)
    assert values["cluster-cidr"] == "10.42.0.0/16"
    assert values["service-cluster-ip-range"] == "10.43.0.0/16"
    assert "--cluster-cidr=10.244.0.0/16" not in merged


def test_kubespray_command_already_right_is_unchanged():
    s = {"cluster_cidr": "10.233.64.0/18", "service_cluster_ip_range": "10.233.0.0/18", "node_cidr_mask_size": 24}
    assert merge_command(KUBESPRAY_COMMAND, flags(**s)) == KUBESPRAY_COMMAND
    assert merge_manifest(kubeadm_manifest(KUBESPRAY_COMMAND), flags(**s)) is None


def test_kubespray_command_with_another_mask():
    s = {"cluster_cidr": "10.233.64.0/18", "service_cluster_ip_range": "10.233.0.0/18", "node_cidr_mask_size": 26}
    merged = merge_command(KUBESPRAY_COMMAND, flags(**s))
    assert [t for t in merged if t not in KUBESPRAY_COMMAND] == ["--node-cidr-mask-size=26"]
    assert len(merged) == len(KUBESPRAY_COMMAND)


def test_allocate_node_cidrs_false_is_turned_on():
    command = ["kube-controller-manager", "--allocate-node-cidrs=false", "--cluster-cidr=10.244.0.0/16",
               "--kubeconfig=/etc/kubernetes/controller-manager.conf"]
    merged = merge_command(command, flags())
    assert flag_values(merged)["allocate-node-cidrs"] == "true"
    assert merged[:4] == ["kube-controller-manager", "--allocate-node-cidrs=true", "--cluster-cidr=10.244.0.0/16",
                          "--kubeconfig=/etc/kubernetes/controller-manager.conf"]


def test_dual_stack_uses_per_family_masks_and_drops_the_single_mask():
    merged = merge_command(KUBESPRAY_COMMAND, flags(**DUAL_STACK, node_cidr_mask_size_ipv6=64))
    values = flag_values(merged)
    assert "node-cidr-mask-size" not in values
    assert values["node-cidr-mask-size-ipv4"] == "24"
    assert values["node-cidr-mask-size-ipv6"] == "64"
    assert values["cluster-cidr"] == "10.244.0.0/16,fd00:10:244::/56"
    assert values["service-cluster-ip-range"] == "10.96.0.0/12,fd00:10:96::/112"
    assert values["controllers"] == "*,bootstrapsigner,tokencleaner"


def test_dual_stack_without_ipv6_service_range():
    values = flag_values(merge_command(KUBEADM_COMMAND, flags(cluster_cidr_ipv6="fd00:10:244::/56")))
    assert values["service-cluster-ip-range"] == "10.96.0.0/12"
    assert values["cluster-cidr"] == "10.244.0.0/16,fd00:10:244::/56"


def test_back_to_single_stack_drops_the_per_family_masks():
    dual = merge_command(KUBEADM_COMMAND, flags(**DUAL_STACK))
    single = merge_command(dual, flags())
    values = flag_values(single)
    assert "node-cidr-mask-size-ipv4" not in values and "node-cidr-mask-size-ipv6" not in values
    assert values["node-cidr-mask-size"] == "24"
    assert values["cluster-cidr"] == "10.244.0.0/16"


def test_flag_value_form_is_read_as_one_flag():
    command = ["/usr/local/bin/kube-controller-manager", "--cluster-cidr", "10.200.0.0/16", "--controllers",
               "*,-nodeipam", "--kubeconfig", "/var/lib/kubernetes/kcm.kubeconfig", "--v", "2"]
    merged = merge_command(command, flags(cluster_cidr="10.200.0.0/16", service_cluster_ip_range="10.32.0.0/24"))
    assert merged == ["/usr/local/bin/kube-controller-manager", "--cluster-cidr=10.200.0.0/16", "--controllers=*",
                      "--kubeconfig", "/var/lib/kubernetes/kcm.kubeconfig", "--v", "2",
                      "--allocate-node-cidrs=true", "--node-cidr-mask-size=24",
                      "--service-cluster-ip-range=10.32.0.0/24"]


def test_merge_is_idempotent():
    for command in (KUBEADM_COMMAND, KUBEADM_COMMAND_POD_SUBNET, KUBESPRAY_COMMAND):
        for f in (flags(), flags(**DUAL_STACK)):
            once = merge_command(command, f)
            assert merge_command(once, f) == once


# --- kubeadm static pod manifest ------------------------------------------------------


def container_of(document: dict) -> dict:
    return document["spec"]["containers"][0]


def test_merge_manifest_keeps_every_other_field():
    merged_text = merge_manifest(KUBEADM_MANIFEST, flags())
    assert merged_text is not None
    original, merged = yaml.safe_load(KUBEADM_MANIFEST), yaml.safe_load(merged_text)
    assert container_of(merged)["command"] == KUBEADM_COMMAND + DEFAULT_FLAGS
    container_of(original).pop("command")
    container_of(merged).pop("command")
    assert merged == original


def test_merge_manifest_returns_none_when_nothing_changes():
    merged = merge_manifest(KUBEADM_MANIFEST, flags())
    assert merge_manifest(merged, flags()) is None


def test_merge_manifest_with_kubeadm_pod_subnet():
    merged = yaml.safe_load(merge_manifest(KUBEADM_MANIFEST_POD_SUBNET, flags(cluster_cidr="10.42.0.0/16")))
    values = flag_values(container_of(merged)["command"])
    assert values["cluster-cidr"] == "10.42.0.0/16"
    assert values["allocate-node-cidrs"] == "true"


def test_merge_manifest_with_command_and_args():
    # command: [binary], args: [flags] -- the kubelet runs command + args, and a later flag wins,
    # so the flags must be merged where they are (args), not appended to command.
    manifest = """\
apiVersion: v1
kind: Pod
metadata:
  name: kube-controller-manager
  namespace: kube-system
spec:
  hostNetwork: true
  containers:
  - name: kube-controller-manager
    image: registry.k8s.io/kube-controller-manager:v1.31.4
    command: ["kube-controller-manager"]
    args:
    - --allocate-node-cidrs=false
    - --cluster-cidr=10.244.0.0/16
    - --controllers=*,-nodeipam
    - --kubeconfig=/etc/kubernetes/controller-manager.conf
"""
    merged = container_of(yaml.safe_load(merge_manifest(manifest, flags())))
    effective = flag_values(merged["command"][1:] + merged["args"])
    assert effective["allocate-node-cidrs"] == "true"
    assert effective["controllers"] == "*"
    assert effective["cluster-cidr"] == "10.244.0.0/16"
    assert effective["node-cidr-mask-size"] == "24"
    assert merged["command"] == ["kube-controller-manager"]


def test_manifest_without_the_container_is_refused():
    text = KUBEADM_MANIFEST.replace("name: kube-controller-manager\n  namespace", "name: kcm\n  namespace") \
        .replace("    name: kube-controller-manager\n", "    name: controller\n")
    with pytest.raises(ControllerManagerError, match="no container named 'kube-controller-manager'"):
        merge_manifest(text, flags())


def test_planned_file_for_a_missing_manifest_names_the_setting():
    with pytest.raises(ControllerManagerError) as raised:
        planned_file(settings(), NodeState(), "cp1")
    assert str(raised.value) == (
        "cp1: kube_controller_manager_manifest: /etc/kubernetes/manifests/kube-controller-manager.yaml does not "
        "exist on this control-plane host; is the control plane installed (kubeadm init)? If "
        "kube-controller-manager runs differently, set kube_controller_manager_manifest or "
        "kube_controller_manager_runtime='systemd'")


def test_planned_file_keeps_the_manifest_private():
    s = settings()
    node = NodeState(contents={s.kube_controller_manager_manifest: KUBEADM_MANIFEST.encode()})
    desired, current = planned_file(s, node, "cp1")
    assert desired.mode == "0600" and current == KUBEADM_MANIFEST.encode()
    node.contents[s.kube_controller_manager_manifest] = desired.content
    assert planned_file(s, node, "cp1")[0] is None


def test_planned_file_reports_broken_yaml_with_host_and_path():
    s = settings()
    node = NodeState(contents={s.kube_controller_manager_manifest: b"spec: [unclosed\n"})
    with pytest.raises(ControllerManagerError, match=r"^cp1: /etc/kubernetes/manifests/kube-controller-manager.yaml: "):
        planned_file(s, node, "cp1")


# --- systemd unit -----------------------------------------------------------------------


def exec_start_tokens(unit: str) -> list[str]:
    import re
    import shlex
    value = re.search(r"^ExecStart=((?:.*\\\n)*.*)$", unit, re.MULTILINE).group(1)
    return shlex.split(value.replace("\\\n", " "))


def non_exec_lines(unit: str) -> list[str]:
    out, in_exec = [], False
    for line in unit.splitlines():
        if line.startswith("ExecStart="):
            in_exec = line.endswith("\\")
            continue
        if in_exec:
            in_exec = line.endswith("\\")
            continue
        out.append(line)
    return out


HARD_WAY = {"cluster_cidr": "10.200.0.0/16", "service_cluster_ip_range": "10.32.0.0/24"}


def test_merge_unit_hard_way():
    merged = merge_unit(HARD_WAY_UNIT, flags(**HARD_WAY))
    assert merged is not None
    tokens = exec_start_tokens(merged)
    assert tokens[0] == "/usr/local/bin/kube-controller-manager"
    values = flag_values([t for t in tokens if t.startswith("--")])
    assert values["cluster-cidr"] == "10.200.0.0/16"
    assert values["service-cluster-ip-range"] == "10.32.0.0/24"
    assert values["allocate-node-cidrs"] == "true"
    assert values["node-cidr-mask-size"] == "24"
    # "--kubeconfig value" is kept as the two tokens it was
    i = tokens.index("--kubeconfig")
    assert tokens[i + 1] == "/var/lib/kubernetes/kube-controller-manager.kubeconfig"
    assert "--v=2" in tokens and "--cluster-name=kubernetes" in tokens


def test_merge_unit_keeps_other_lines():
    merged = merge_unit(HARD_WAY_UNIT, flags(**HARD_WAY))
    assert non_exec_lines(merged) == non_exec_lines(HARD_WAY_UNIT)
    assert non_exec_lines(merged)[:5] == ["[Unit]", "Description=Kubernetes Controller Manager",
                                          "Documentation=https://github.com/kubernetes/kubernetes", "", "[Service]"]


def test_merge_unit_returns_none_when_nothing_changes():
    f = flags(**HARD_WAY)
    merged = merge_unit(HARD_WAY_UNIT, f)
    assert merge_unit(merged, f) is None


def test_merge_unit_with_a_cluster_cidr_to_replace():
    merged = merge_unit(HARD_WAY_UNIT, flags(cluster_cidr="10.201.0.0/16", service_cluster_ip_range="10.32.0.0/24"))
    tokens = exec_start_tokens(merged)
    assert "10.200.0.0/16" not in " ".join(tokens)
    assert flag_values([t for t in tokens if t.startswith("--")])["cluster-cidr"] == "10.201.0.0/16"


def test_merge_unit_drop_in_resets_exec_start():
    drop_in = ("[Service]\nExecStart=\nExecStart=/usr/bin/kube-controller-manager --controllers=*,-nodeipam "
               "--kubeconfig=/etc/kubernetes/kcm.conf\nEnvironment=FOO=bar\n")
    merged = merge_unit(drop_in, flags())
    lines = merged.splitlines()
    assert lines[:2] == ["[Service]", "ExecStart="]
    assert lines[-1] == "Environment=FOO=bar"
    values = flag_values([t for t in exec_start_tokens(merged.split("ExecStart=\n", 1)[1]) if t.startswith("--")])
    assert values["controllers"] == "*"
    assert values["cluster-cidr"] == "10.244.0.0/16"


def test_unit_without_exec_start_is_refused():
    with pytest.raises(ControllerManagerError, match="no ExecStart= line running kube-controller-manager"):
        merge_unit("[Service]\nRestart=always\n", flags())


# --- command lines read as kube-controller-manager's flag parser reads them -------------------
# (spf13/pflag through k8s.io/component-base: a repeated plain flag keeps its last value, a repeated
# --controllers is one list, "--flag value" is one flag, a boolean alone is true, "_" is "-"), on
# both runtimes: the kubeadm manifest's command list and a systemd unit's ExecStart.

KCM = ["/usr/local/bin/kube-controller-manager", "--kubeconfig=/etc/kubernetes/controller-manager.conf"]
RIGHT = ["--allocate-node-cidrs=true", "--cluster-cidr=10.244.0.0/16", "--node-cidr-mask-size=24",
         "--service-cluster-ip-range=10.96.0.0/12"]

FLAG_FORMS = [
    pytest.param(  # issue 10, case 4: kubeadm's list, and a duplicated extra arg further down
        KCM + ["--controllers=*,bootstrapsigner,tokencleaner"] + RIGHT + ["--controllers=-nodeipam"],
        KCM + ["--controllers=*,bootstrapsigner,tokencleaner"] + RIGHT,
        id="repeated-controllers-append-a-disable"),
    pytest.param(
        KCM + ["--controllers=bootstrapsigner,tokencleaner", "--controllers=-nodeipam,ttl"],
        KCM + ["--controllers=bootstrapsigner,tokencleaner,ttl,nodeipam"] + RIGHT,
        id="repeated-controllers-without-star"),
    pytest.param(  # the first item naming node IPAM wins: it runs
        KCM + ["--controllers=*,nodeipam"] + RIGHT + ["--controllers=-nodeipam"],
        None, id="repeated-controllers-enabled-first"),
    pytest.param(
        KCM + ["--controllers=-node-ipam-controller,*"] + RIGHT + ["--controllers=nodeipam"],
        KCM + ["--controllers=*,nodeipam"] + RIGHT,
        id="repeated-controllers-disabled-first-by-its-name"),
    pytest.param(
        KCM + ["--cluster-cidr=10.244.0.0/16"] + RIGHT[:1] + RIGHT[2:] + ["--cluster-cidr=10.0.0.0/8"],
        KCM + ["--cluster-cidr=10.244.0.0/16"] + RIGHT[:1] + RIGHT[2:],
        id="repeated-scalar-last-wrong"),
    pytest.param(
        KCM + ["--cluster-cidr=10.0.0.0/8"] + RIGHT, None, id="repeated-scalar-last-right"),
    pytest.param(
        KCM + ["--controllers", "-nodeipam,*", "--cluster-cidr", "10.244.0.0/16", "--node-cidr-mask-size", "24"],
        KCM + ["--controllers=*", "--cluster-cidr=10.244.0.0/16", "--node-cidr-mask-size=24",
               "--allocate-node-cidrs=true", "--service-cluster-ip-range=10.96.0.0/12"],
        id="flag-value-as-two-items-even-with-a-leading-dash"),
    pytest.param(
        KCM + ["--allocate-node-cidrs"] + RIGHT[1:], None, id="bare-boolean-is-true"),
    pytest.param(
        KCM + ["--allocate-node-cidrs=false"] + RIGHT[1:] + ["--allocate-node-cidrs=True"],
        None, id="boolean-repeated-last-True"),
    pytest.param(
        KCM + ["--allocate-node-cidrs=1"] + RIGHT[1:] + ["--allocate-node-cidrs=f"],
        KCM + RIGHT, id="boolean-repeated-last-f"),
    pytest.param(
        KCM + ["--cluster_cidr=10.0.0.0/8"] + RIGHT[:1] + RIGHT[2:],
        KCM + ["--cluster-cidr=10.244.0.0/16"] + RIGHT[:1] + RIGHT[2:],
        id="underscore-is-a-dash"),
    pytest.param(
        KCM + RIGHT[:2] + ["--node-cidr-mask-size=0x18"] + RIGHT[3:], None, id="int-in-hex-is-24"),
    pytest.param(
        KCM + RIGHT[:2] + ["--node-cidr-mask-size=024"] + RIGHT[3:], KCM + RIGHT, id="int-with-leading-0-is-octal-20"),
    pytest.param(
        KCM + ["--cluster-cidr"], KCM + RIGHT[1:2] + RIGHT[:1] + RIGHT[2:], id="value-flag-without-its-value"),
]


def unit_with(words: list[str]) -> str:
    """A Kubernetes-The-Hard-Way style unit whose ExecStart gives kube-controller-manager exactly these words."""
    written = [w if re.fullmatch(r"[A-Za-z0-9_@+=:,./*-]+", w) else "'" + w + "'" for w in words]
    return ("[Unit]\nDescription=Kubernetes Controller Manager\n\n[Service]\nExecStart="
            + " \\\n  ".join(written) + "\nRestart=on-failure\n\n[Install]\nWantedBy=multi-user.target\n")


def manifest_with(command: list[str]) -> str:
    """kubeadm's manifest with this command, every item a YAML string (as the kubelet requires)."""
    document = yaml.safe_load(KUBEADM_MANIFEST)
    container_of(document)["command"] = command
    return yaml.safe_dump(document, sort_keys=False)


@pytest.mark.parametrize("command, merged", FLAG_FORMS)
def test_flag_forms_in_a_static_pod_manifest(command, merged):
    text = merge_manifest(manifest_with(command), flags())
    if merged is None:
        assert text is None
    else:
        assert container_of(yaml.safe_load(text))["command"] == merged


@pytest.mark.parametrize("command, merged", FLAG_FORMS)
def test_flag_forms_in_a_systemd_unit(command, merged):
    assert merge_unit(unit_with(command), flags()) == (None if merged is None else unit_with(merged))


def test_issue_10_case_4_kubeadm_manifest_with_a_duplicated_extra_arg():
    command = KUBEADM_COMMAND_POD_SUBNET + ["--controllers=-nodeipam"]
    merged = yaml.safe_load(merge_manifest(kubeadm_manifest(command), flags()))
    assert container_of(merged)["command"] == KUBEADM_COMMAND_POD_SUBNET + ["--node-cidr-mask-size=24"]
    values = flag_values(container_of(merged)["command"])
    assert values["controllers"] == "*,bootstrapsigner,tokencleaner"


def test_repeated_controllers_that_enable_nothing_name_the_list_kube_controller_manager_reads():
    with pytest.raises(ControllerManagerError) as raised:
        merge_command(KCM + ["--controllers=", "--controllers=-nodeipam"], flags())
    assert str(raised.value) == (
        "--controllers=-nodeipam enables no controller; adding node IPAM would give --controllers=nodeipam, "
        "which runs node IPAM alone and switches every other controller off. Fix --controllers "
        "(e.g. '*,bootstrapsigner,tokencleaner') and rerun (--controllers is given 2 times; "
        "kube-controller-manager appends the repeats into this one list)")


@pytest.mark.parametrize("command", [KCM + ["--allocate-node-cidrs", "false"] + RIGHT[1:],
                                     KCM + RIGHT[1:] + ["--allocate-node-cidrs", "false"]])
def test_bare_boolean_followed_by_an_argument_is_refused(command):
    message = ("'false' after --allocate-node-cidrs is not its value: kube-controller-manager reads a boolean flag "
               "given alone as true and 'false' as an argument, and refuses to start because it takes no arguments. "
               "Write --allocate-node-cidrs=false (or remove 'false') and rerun")
    with pytest.raises(ControllerManagerError) as raised:
        merge_manifest(manifest_with(command), flags())
    assert str(raised.value) == message
    with pytest.raises(ControllerManagerError) as raised:
        merge_unit(unit_with(command), flags())
    assert str(raised.value) == message


def test_flags_split_between_command_and_args_are_one_command_line():
    manifest = kubeadm_manifest(["kube-controller-manager", "--controllers=*,bootstrapsigner"])
    document = yaml.safe_load(manifest)
    container_of(document)["args"] = RIGHT + ["--controllers=-nodeipam"]
    merged = container_of(yaml.safe_load(merge_manifest(yaml.safe_dump(document), flags())))
    assert merged["command"] == ["kube-controller-manager", "--controllers=*,bootstrapsigner"]
    assert merged["args"] == RIGHT


def test_manifest_item_that_is_no_string_is_refused():
    with pytest.raises(ControllerManagerError) as raised:
        merge_manifest(kubeadm_manifest(KCM + ["--node-cidr-mask-size", "24"]), flags())
    assert str(raised.value) == ("command: 24 is not a string, so the kubelet does not run this manifest "
                                 "(YAML reads it as a int); quote it")


def test_flags_after_a_double_dash_are_arguments():
    merged = merge_command(KCM + ["--", "--controllers=-nodeipam"], flags())
    assert merged == KCM + RIGHT + ["--", "--controllers=-nodeipam"]


# --- systemd's own reading of ExecStart= -------------------------------------------------------


UNIT_HEAD = "[Unit]\nDescription=Kubernetes Controller Manager\n\n[Service]\n"


def test_commented_line_inside_a_continuation_is_skipped():
    unit = (UNIT_HEAD + "ExecStart=/usr/local/bin/kube-controller-manager \\\n"
            "  --kubeconfig=/etc/kubernetes/controller-manager.conf \\\n"
            "#  --controllers=*,-nodeipam \\\n"
            "; --cluster-cidr=10.0.0.0/8 \\\n"
            "  --allocate-node-cidrs=true --cluster-cidr=10.244.0.0/16 \\\n"
            "  --node-cidr-mask-size=24 --service-cluster-ip-range=10.96.0.0/12\nRestart=always\n")
    assert merge_unit(unit, flags()) is None


def test_quotes_and_escapes_are_read_as_systemd_reads_them():
    unit = (UNIT_HEAD + "ExecStart = /usr/local/bin/kube-controller-manager "
            "--controllers='*,-nodeipam' \"--cluster-cidr=10.0.0.0/8\" --cluster-name=\"my cluster\" "
            "--node-cidr-mask-size=2\\x34 --service-cluster-ip-range=10.96.0.0\\05716 --allocate-node-cidrs=t\n"
            "Restart=always\n")
    assert merge_unit(unit, flags()) == (
        UNIT_HEAD + "ExecStart=/usr/local/bin/kube-controller-manager \\\n"
        "  --controllers=* \\\n"
        "  --cluster-cidr=10.244.0.0/16 \\\n"
        "  --cluster-name=\"my cluster\" \\\n"
        "  --node-cidr-mask-size=24 \\\n"
        "  --service-cluster-ip-range=10.96.0.0/12 \\\n"
        "  --allocate-node-cidrs=true\n"
        "Restart=always\n")


def test_escaped_backslash_at_the_end_of_a_line_does_not_continue_it():
    unit = (UNIT_HEAD + "ExecStart=/usr/local/bin/kube-controller-manager --log-dir=C:\\\\\n"
            "--controllers=-nodeipam\nRestart=always\n")
    merged = merge_unit(unit, flags())
    assert merged == (UNIT_HEAD + "ExecStart=/usr/local/bin/kube-controller-manager \\\n  --log-dir=C:\\\\ \\\n  "
                      + " \\\n  ".join(RIGHT) + "\n--controllers=-nodeipam\nRestart=always\n")


def test_unbalanced_quoting_is_refused():
    with pytest.raises(ControllerManagerError) as raised:
        merge_unit(UNIT_HEAD + "ExecStart=/usr/bin/kube-controller-manager '--controllers=*\n", flags())
    assert str(raised.value) == "ExecStart= has unbalanced quoting, so systemd ignores the line"


def test_two_exec_start_commands_are_refused():
    unit = UNIT_HEAD + "ExecStart=/usr/bin/kube-controller-manager\nExecStart=/usr/bin/kube-controller-manager --v=2\n"
    with pytest.raises(ControllerManagerError) as raised:
        merge_unit(unit, flags())
    assert str(raised.value) == ("2 ExecStart= commands in [Service]; systemd runs a service that is not "
                                 "Type=oneshot only with exactly one: keep one and rerun")


def test_exec_start_outside_service_section_is_not_the_command():
    unit = "[X-Podnet]\nExecStart=/usr/bin/kube-controller-manager\n"
    with pytest.raises(ControllerManagerError, match="no ExecStart= line running kube-controller-manager"):
        merge_unit(unit, flags())
