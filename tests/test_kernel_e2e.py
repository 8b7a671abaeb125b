"""
End to end, issue 10 case 2: on a real Debian node whose /etc/sysctl.conf turns IP
forwarding off, podnet's persisted kernel parameters must be the ones the node has after a
boot, and the run must name /etc/sysctl.conf.

One node (testbed/localcluster), upgraded from a podnet release that persisted its values in
/etc/sysctl.d/99-podnet.conf; the real deploy.py through the real pyinfra CLI over SSH
(testbed/podbed.py) with release files from the test mirror; then `systemctl restart
systemd-sysctl`, which applies the sysctl files as the boot does. No Kubernetes: the node is
no control-plane host and flanneld is `external`, so only the node steps run.

TEST-BED QUIRK, NOT PODNET BEHAVIOUR: the node is a systemd-nspawn container on its own
network namespace, but its /proc/sys is the host's for every key that is not per network
namespace. Before systemd-sysctl is restarted, the vendor files that set such keys
(Debian's 50-pid-max.conf and 99-protect-links.conf: kernel.*, fs.*) are masked in the node
the way sysctl.d(5) documents (a link to /dev/null in /etc/sysctl.d), and the test checks
with `systemd-sysctl --cat-config` that nothing but net.* keys is left to apply.

Run alone with: python3 -m pytest -q -p no:cacheprovider tests/test_kernel_e2e.py
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

from bench import run as node_costs  # counts what a pyinfra run cost a node, from its sshd log
from tasks import kernel
from testbed.kubebed import binaries
from testbed.localcluster import Cluster, Node
from testbed.mirror import build_mirror, serve_mirror
from testbed.podbed import PodBed

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="booting a node needs root"),
]

OLD_PODNET = "/etc/sysctl.d/99-podnet.conf"
PODNET = "/etc/sysctl.d/zz-podnet.conf"
# What podnet releases before this one left on a node: the same values, under the old name.
OLD_PODNET_CONTENT = ("# Managed by podnet: bridged pod traffic passes iptables, and nodes forward pod traffic.\n"
                      "net.bridge.bridge-nf-call-iptables = 1\nnet.bridge.bridge-nf-call-ip6tables = 1\n"
                      "net.ipv4.ip_forward = 1\n")
# No host is in this group: no control-plane step (kube-controller-manager) runs on the node.
NO_CONTROL_PLANE_GROUP = "podnet_test_no_control_plane"


@pytest.fixture(scope="module")
def mirror():
    missing = binaries.missing("flannel", "flanneld", *binaries.CONTAINERD_BINARIES)
    if missing:
        pytest.skip(f"no flannel/containerd binaries for the release mirror: {missing}")
    return build_mirror()


def sh(cluster: Cluster, node: Node, command: str) -> str:
    return cluster.ssh(node, command, check=True, timeout=120).stdout


def cat_config_keys(cluster: Cluster, node: Node) -> dict[str, list[str]]:
    """File -> the keys it sets, as systemd-sysctl itself lists what it would apply."""
    keys: dict[str, list[str]] = {}
    current = None
    for line in sh(cluster, node, "/lib/systemd/systemd-sysctl --cat-config --no-pager").splitlines():
        header = re.match(r"^# (/\S+)$", line)
        if header:
            current = header.group(1)
            keys.setdefault(current, [])
            continue
        parsed = kernel.parse_setting(line)
        if parsed and current:
            keys[current].append(parsed[0])
    return keys


def keep_host_settings_out(cluster: Cluster, node: Node) -> None:
    """Mask (sysctl.d(5): a link to /dev/null in /etc/sysctl.d) every sysctl file that would write
    a key the node shares with the host, then check that only network-namespace keys are left."""
    for path, keys in cat_config_keys(cluster, node).items():
        if any(not key.startswith("net.") for key in keys):
            assert not path.startswith("/etc/"), f"{path} sets {keys}: not a vendor file, refusing to mask it"
            sh(cluster, node, f"ln -sfn /dev/null /etc/sysctl.d/{shlex.quote(Path(path).name)}")
    left = {path: keys for path, keys in cat_config_keys(cluster, node).items()
            if any(not key.startswith("net.") for key in keys)}
    assert left == {}, f"systemd-sysctl would still write keys shared with the host: {left}"


def boot_time_sysctl(cluster: Cluster, node: Node) -> None:
    """What the boot does with the sysctl files: systemd-sysctl.service. It must really have run
    (its condition met, exit 0), or an unchanged value would prove nothing."""
    keep_host_settings_out(cluster, node)
    sh(cluster, node, "systemctl restart systemd-sysctl.service")
    state = sh(cluster, node, "systemctl show -p ActiveState -p Result -p ConditionResult -p ExecMainStatus "
                              "systemd-sysctl.service")
    assert sorted(state.split()) == ["ActiveState=active", "ConditionResult=yes", "ExecMainStatus=0",
                                     "Result=success"], state


def forwarding(cluster: Cluster, node: Node) -> str:
    return sh(cluster, node, "cat /proc/sys/net/ipv4/ip_forward").strip()


def test_podnets_values_win_at_boot_over_sysctl_conf_and_the_run_names_it(mirror, tmp_path):
    with serve_mirror(mirror.root) as base_url, \
            Cluster(name="sysctl", nodes=1, state_dir=tmp_path / "cluster") as cluster:
        node = cluster.nodes[0]
        # The node of the issue: /etc/sysctl.conf (Debian's, read at boot through
        # /etc/sysctl.d/99-sysctl.conf) turns forwarding off; an earlier podnet wrote 99-podnet.conf.
        assert sh(cluster, node, "readlink /etc/sysctl.d/99-sysctl.conf").strip() == "../sysctl.conf"
        sh(cluster, node, "printf 'net.ipv4.ip_forward = 0\\n' >> /etc/sysctl.conf && "
                          f"printf %s {shlex.quote(OLD_PODNET_CONTENT)} > {OLD_PODNET}")

        # The bug, reproduced on this node: after a boot, forwarding is off despite 99-podnet.conf.
        sh(cluster, node, "sysctl -q -w net.ipv4.ip_forward=1")
        boot_time_sysctl(cluster, node)
        assert forwarding(cluster, node) == "0"

        bed = PodBed(cluster, base_url, mirror, "2.x", tmp_path, runtime="external", rollout="external")
        cluster.write_inventory(tmp_path / "inventory.py",
                                bed.inventory_data(control_plane_group=NO_CONTROL_PLANE_GROUP))
        run = bed.deploy()
        assert run.returncode == 0, run.output[-4000:]
        warning = (f"podnet: {node.name}: /etc/sysctl.conf sets net.ipv4.ip_forward = 0, podnet needs 1: at boot it "
                   "is read as /etc/sysctl.d/99-sysctl.conf, before /etc/sysctl.d/zz-podnet.conf, so podnet's 1 wins; "
                   "`sysctl --system` (procps) reads /etc/sysctl.conf after every sysctl.d file and would set 0; "
                   "set it to 1 there or remove that line")
        assert run.output.count(warning) == 1, run.output[-4000:]
        assert (f"{node.name}: removing /etc/sysctl.d/99-podnet.conf: podnet's kernel parameters are persisted in "
                "/etc/sysctl.d/zz-podnet.conf now") in run.output
        changed = run.changed_operations()
        assert changed["kernel: modules-load.d and sysctl.d files"] == 1
        assert changed["kernel: sysctl.d file of earlier podnet releases removed"] == 1
        assert changed["kernel: bridge-nf-call and ip_forward applied"] == 1  # the boot above turned it off
        assert sh(cluster, node, f"for f in {OLD_PODNET} {PODNET}; do [ -e $f ] && echo present $f || echo gone $f; "
                                 "done").splitlines() == [f"gone {OLD_PODNET}", f"present {PODNET}"]
        assert sh(cluster, node, f"grep -v '^#' {PODNET}").splitlines() == [
            "net.bridge.bridge-nf-call-iptables = 1", "net.bridge.bridge-nf-call-ip6tables = 1",
            "net.ipv4.ip_forward = 1"]
        assert forwarding(cluster, node) == "1"

        # What the boot does, with forwarding off before it: podnet's value wins.
        sh(cluster, node, "sysctl -q -w net.ipv4.ip_forward=0 net.bridge.bridge-nf-call-iptables=0")
        boot_time_sysctl(cluster, node)
        assert forwarding(cluster, node) == "1"
        assert sh(cluster, node, "cat /proc/sys/net/bridge/bridge-nf-call-iptables").strip() == "1"

        # A rerun on the converged node: the probe and nothing else, and the warning again.
        before = node_costs.mark(node)
        rerun = bed.deploy()
        assert rerun.returncode == 0, rerun.output[-4000:]
        assert rerun.changed_operations() == {}
        assert rerun.output.count(warning) == 1
        cost = node_costs.cost_since(node, before)
        assert (cost.connections, cost.commands, cost.sftp, cost.other_sessions) == (1, 1, 0, []), cost

        # What the warning says about procps: `sysctl --system` reads the sysctl.d files in the same
        # order, then /etc/sysctl.conf after all of them, and forwarding ends off. (It writes what it
        # reads, --dry-run included on this procps: only net.* keys are left to write, see above.)
        keep_host_settings_out(cluster, node)
        procps = sh(cluster, node, "sysctl --system")
        applying = re.findall(r"^\* Applying (\S+) \.\.\.$", procps, re.M)
        assert applying.index("/etc/sysctl.d/99-sysctl.conf") < applying.index(PODNET) < applying.index(
            "/etc/sysctl.conf") == len(applying) - 1, procps
        assert forwarding(cluster, node) == "0"
