"""
Plan tests of reset.py: the real pyinfra CLI against two ``@fake`` hosts (a kubeadm control
plane and a worker, as in tests/test_plan.py) whose probe answers describe a node that a
deploy left behind, or a node with nothing of podnet's on it; plus the controller-manager
decisions (backup or flag removal) on real command lines.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess

import pytest
import yaml

from tasks import flannel
from tasks.controller_manager import backup_path, config_path, desired_flags, exec_start_entry, merge_manifest, merge_unit
from tasks.formats.systemd_unit import systemd_words
from tasks.engine.probe import NodeState
from tasks.reset_controller_manager import BACKUPS_QUERY, restored
from tasks.settings import SettingsError, parse_host_settings
from tests.support.hosts import settings
from tests.support.kubeadm import HARD_WAY_UNIT, KUBEADM_COMMAND, KUBEADM_MANIFEST, KUBEADM_MANIFEST_POD_SUBNET
from tests.support.plan import CP, HOSTS, WORKER, Cluster, assert_ok, probes
from tests.support.reset import BACKUP, deployed, inventory, run_reset

MANIFEST = "/etc/kubernetes/manifests/kube-controller-manager.yaml"
PLUGINS = ["bridge", "host-local", "loopback", "portmap", "flannel"]  # the release tarball's, then flannel's


def bare(cluster: Cluster, host: str) -> NodeState:
    """A node after a reset: none of podnet's pod network, the manifest as it was before podnet."""
    node = NodeState(machine="x86_64")
    if host == CP:
        node.contents[MANIFEST] = KUBEADM_MANIFEST.encode()
        node.queries[BACKUPS_QUERY] = (0, [f"{BACKUP} {base64.b64encode(KUBEADM_MANIFEST.encode()).decode()}"])
        node.queries[flannel.OBJECTS_QUERY] = (0, [])
    return node


NODE_OPS = ["reset: 10-flannel.conflist removed", "reset: CNI plugin binaries removed",
            "reset: flannel's interfaces deleted", "reset: flannel's iptables chains deleted",
            "reset: flannel's nftables tables deleted", "reset: /run/flannel and host-local's records removed"]


def test_reset_plan_of_a_deployed_cluster(cluster):
    run = run_reset(inventory(cluster, deployed(cluster, CP), deployed(cluster, WORKER)), "--dry", "--json")
    assert_ok(run)
    plan = run.plan()
    for op in NODE_OPS:
        assert plan[op] == sorted(HOSTS), op
    assert plan["reset: kube-flannel DaemonSet and its objects deleted"] == [CP]
    assert plan["reset: podnet's kube-flannel manifest removed"] == [CP]
    assert plan["reset: kube-controller-manager without podnet's node IPAM flags"] == [CP]
    assert plan["reset: flanneld stopped, disabled and removed"] == []  # the DaemonSet rollout has no unit
    assert not [op for op in plan if "kernel" in op or "containerd" in op]  # they stay unless asked


def test_reset_commands_remove_only_what_podnet_and_flannel_made(cluster):
    run = run_reset(inventory(cluster, deployed(cluster, CP), deployed(cluster, WORKER)), "-y")
    assert_ok(run)
    kubectl = "kubectl --kubeconfig=/etc/kubernetes/admin.conf -n kube-flannel delete"
    for host in HOSTS:
        commands = run.commands(host)
        assert len(probes(run, host)) == 1
        assert "rm -f /etc/cni/net.d/10-flannel.conflist" in commands
        assert "rm -f " + " ".join(f"/opt/cni/bin/{p}" for p in PLUGINS) in commands  # not someone-elses-plugin
        assert "ip link delete cni0 && ip link delete flannel.1" in commands  # not eth0 or the pod's veth
        assert "nft delete table ip flannel-ipv4" in commands
        assert "rm -rf /run/flannel /var/lib/cni/networks/cbr0" in commands
        chains = [c for c in commands if "-restore --noflush" in c]
        assert chains == [" && ".join([
            flannel.chains_removal("ip6tables-legacy", "nat", ["FLANNEL-POSTRTG"]),
            flannel.chains_removal("iptables-nft", "filter", ["FLANNEL-FWD"]),
            flannel.chains_removal("iptables-nft", "nat", ["FLANNEL-POSTRTG"])])]
        assert f"{host.split('/')[1]}: 1 pod(s) attached to cni0 lose their network" in run.stderr
    cp = run.commands(CP)
    daemonset = cp.index(f"{kubectl} daemonset/kube-flannel --cascade=foreground --wait=true --timeout=10s && "
                         f"{kubectl} configmap/kube-flannel-cfg clusterrolebinding/flannel clusterrole/flannel "
                         "serviceaccount/flannel namespace/kube-flannel --ignore-not-found --wait=true --timeout=10s")
    assert daemonset < cp.index("ip link delete cni0 && ip link delete flannel.1")  # flanneld gone first
    assert "rm -f /etc/podnet/kube-flannel.yml" in cp
    assert "/etc/kubernetes/manifests/.kube-controller-manager.yaml.podnet-new" in run.uploads(CP)
    assert not [c for c in run.commands(WORKER) if "kubectl" in c]
    assert run.uploads(WORKER) == []


ROUTES = ["4 10.244.1.0/24 192.168.50.11 eth0", "6 fd00:10:244:1::/64 fd00:50::11 eth0",
          "4 10.244.2.0/24 10.244.2.0 flannel.1",  # on flanneld's own device: goes with it
          "4 10.96.0.0/12 192.168.50.1 eth0",  # not the pod network
          "6 fd00:10:244:2::/80 fd00:50::12 eth0",  # not a podCIDR (another mask)
          "6 fd00:99::/64 fd00:50::1 eth0"]


@pytest.mark.parametrize("data, expected", [
    ({"cluster_cidr_ipv6": "fd00:10:244::/56"},
     [(4, "10.244.1.0/24", "192.168.50.11", "eth0"), (6, "fd00:10:244:1::/64", "fd00:50::11", "eth0")]),
    ({}, [(4, "10.244.1.0/24", "192.168.50.11", "eth0")]),  # single stack: IPv6 routes are not flannel's
    ({"flannel_rollout": "external"}, []),  # flanneld is not podnet's
])
def test_flanneld_routes_through_the_nodes_interface_are_found_in_both_families(data, expected):
    node = NodeState(queries={flannel.ROUTES_QUERY: (0, ROUTES)})
    assert flannel.flannel_routes(settings(**data), node, "w1") == expected


def test_the_routes_query_reads_ip_routes_of_both_families():
    # in a network namespace of its own (gone with the process): a link, a default route and one
    # gateway route to a podCIDR in each family, as flanneld's host-gw backend adds them
    setup = ("ip link add pa0 type veth peer name pb0 && ip link set pa0 up && ip link set pb0 up && "
             "ip addr add 192.168.77.1/24 dev pa0 && ip -6 addr add fd00:77::1/64 dev pa0 nodad && "
             "ip route add default via 192.168.77.254 && ip route add 10.244.1.0/24 via 192.168.77.11 dev pa0 && "
             "ip -6 route add fd00:10:244:1::/64 via fd00:77::11 dev pa0")
    done = subprocess.run(["unshare", "-n", "sh", "-c", f"{setup} && {flannel.ROUTES_COMMAND}"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    node = NodeState(queries={flannel.ROUTES_QUERY: (0, done.stdout.splitlines())})
    assert flannel.flannel_routes(settings(cluster_cidr_ipv6="fd00:10:244::/56"), node, "w1") == [
        (4, "10.244.1.0/24", "192.168.77.11", "pa0"), (6, "fd00:10:244:1::/64", "fd00:77::11", "pa0")]


def test_a_dual_stack_reset_removes_the_ipv6_half_too(cluster):
    dual = {"cluster_cidr_ipv6": "fd00:10:244::/56"}
    nodes = {}
    for host in HOSTS:
        node = deployed(cluster, host, **dual)
        node.listings[flannel.SYS_NET].append("flannel-v6.1")  # its routes to other nodes' IPv6 podCIDRs go with it
        node.queries["cni0"] = (0, ["addr 10.244.0.1/24", "addr fd00:10:244::1/64", "ports 1"])
        node.queries[flannel.CHAINS_QUERY] = (0, ["iptables-nft nat FLANNEL-POSTRTG", "ip6tables-nft nat FLANNEL-POSTRTG",
                                                  "ip6tables-nft filter FLANNEL-FWD"])
        node.queries[flannel.NFT_QUERY] = (0, ["ip flannel-ipv4", "ip6 flannel-ipv6"])
        node.queries[flannel.ROUTES_QUERY] = (0, ROUTES)
        nodes[host] = node
    run = run_reset(inventory(cluster, nodes[CP], nodes[WORKER], **dual), "-y")
    assert_ok(run)
    for host in HOSTS:
        commands = run.commands(host)
        # cni0 holding an address of each family, each inside its cluster CIDR, is podnet's bridge
        assert "ip link delete cni0 && ip link delete flannel.1 && ip link delete flannel-v6.1" in commands
        assert [c for c in commands if "-restore --noflush" in c] == [" && ".join([
            flannel.chains_removal("ip6tables-nft", "filter", ["FLANNEL-FWD"]),
            flannel.chains_removal("ip6tables-nft", "nat", ["FLANNEL-POSTRTG"]),
            flannel.chains_removal("iptables-nft", "nat", ["FLANNEL-POSTRTG"])])]
        assert "nft delete table ip flannel-ipv4 && nft delete table ip6 flannel-ipv6" in commands
        # flanneld's routes through the node's interface (host-gw, DirectRouting), of both families
        assert ("ip -4 route delete 10.244.1.0/24 via 192.168.50.11 dev eth0 && "
                "ip -6 route delete fd00:10:244:1::/64 via fd00:50::11 dev eth0") in commands
        # host-local keeps both families' records in the one network directory
        assert "rm -rf /run/flannel /var/lib/cni/networks/cbr0" in commands


def test_a_reset_node_costs_one_command_and_changes_nothing(cluster):
    run = run_reset(inventory(cluster, bare(cluster, CP), bare(cluster, WORKER)), "-y")
    assert_ok(run)
    for host in HOSTS:
        assert run.commands(host) == probes(run, host) and len(probes(run, host)) == 1
        assert run.uploads(host) == []


def test_a_limited_reset_with_the_daemonset_is_refused_before_any_host_is_asked(cluster):
    run = run_reset(inventory(cluster, deployed(cluster, CP), deployed(cluster, WORKER)), "-y", "--limit", WORKER)
    assert run.returncode != 0
    assert ("flannel_rollout = 'daemonset': flanneld runs on every node from the kube-flannel DaemonSet, so a reset "
            "covers all hosts of the inventory or none; this run leaves out @fake/cp1 (--limit). Run the reset "
            "without --limit, or use flannel_rollout = 'systemd' to take single nodes off") in run.stderr
    for host in HOSTS:
        assert run.commands(host) == []


def test_a_limited_reset_with_the_systemd_unit_touches_that_node_only(cluster):
    data = {"flannel_rollout": "systemd"}
    run = run_reset(inventory(cluster, deployed(cluster, CP, **data), deployed(cluster, WORKER, **data), **data),
                    "-y", "--limit", WORKER)
    assert_ok(run)
    assert run.commands(CP) == []
    worker = run.commands(WORKER)
    assert ("systemctl disable --now flanneld.service && rm -f /etc/systemd/system/flanneld.service "
            "/usr/local/bin/flanneld /etc/kube-flannel/net-conf.json /etc/kube-flannel/kubeconfig /etc/kube-flannel/token "
            "/etc/kube-flannel/token.expires && rmdir --ignore-fail-on-non-empty "
            "/etc/kube-flannel && systemctl daemon-reload") in worker
    assert "ip link delete cni0 && ip link delete flannel.1" in worker


@pytest.mark.parametrize("option, paths", [
    ("reset_kernel=true", "rm -f /etc/modules-load.d/podnet.conf /etc/sysctl.d/zz-podnet.conf"),
    ("reset_containerd=true", "systemctl disable --now containerd.service && rm -f /usr/local/bin/containerd "
                              "/usr/local/bin/containerd-shim-runc-v2 /usr/local/bin/ctr /usr/local/sbin/runc "
                              "/etc/systemd/system/containerd.service /etc/containerd/config.toml && "
                              "systemctl daemon-reload"),
])
def test_kernel_and_containerd_go_only_when_asked(cluster, option, paths):
    path = inventory(cluster, deployed(cluster, CP), deployed(cluster, WORKER))
    kept = run_reset(path, "-y")
    assert_ok(kept)
    asked = run_reset(path, "-y", "--data", option)
    assert_ok(asked)
    for host in HOSTS:
        assert paths not in kept.commands(host)
        assert paths in asked.commands(host)


def test_a_reset_setting_that_is_not_a_boolean_is_refused():
    with pytest.raises(SettingsError) as error:
        parse_host_settings({"reset_kernel": "yes"}, "n1", [])
    assert "reset_kernel: 'yes' is not valid; expected true or false" in str(error.value)


# --- kube-controller-manager: the backup, or podnet's flags taken out -------------------------


def node_with(s, current: str, backups: dict[str, str]) -> NodeState:
    path = MANIFEST if s.kube_controller_manager_runtime == "static-pod" else s.kube_controller_manager_unit
    lines = [f"{p} {base64.b64encode(c.encode()).decode()}" for p, c in backups.items()]
    return NodeState(contents={path: current.encode()}, queries={BACKUPS_QUERY: (0, lines)})


def test_the_pre_podnet_backup_is_put_back_when_nothing_else_changed_the_manifest():
    s = settings()
    current = merge_manifest(KUBEADM_MANIFEST, desired_flags(s))
    content, how = restored(s, node_with(s, current, {BACKUP: KUBEADM_MANIFEST}), "cp1")
    assert content == KUBEADM_MANIFEST.encode()
    assert how == f"restoring {MANIFEST} from podnet's backup {BACKUP}"


def test_the_backup_is_put_back_after_a_manifest_an_earlier_podnet_wrote_in_pyyamls_layout():
    # podnet before tasks/formats/kube_yaml.py wrote the merged manifest with yaml.safe_dump: other bytes,
    # the same values to the kubelet
    s = settings()
    document = yaml.safe_load(KUBEADM_MANIFEST)
    document["spec"]["containers"][0]["command"] += ["--allocate-node-cidrs=true", "--cluster-cidr=10.244.0.0/16",
                                                     "--node-cidr-mask-size=24",
                                                     "--service-cluster-ip-range=10.96.0.0/12"]
    earlier = yaml.safe_dump(document, sort_keys=False, default_flow_style=False, indent=4)
    assert earlier != merge_manifest(KUBEADM_MANIFEST, desired_flags(s))
    content, how = restored(s, node_with(s, earlier, {BACKUP: KUBEADM_MANIFEST}), "cp1")
    assert content == KUBEADM_MANIFEST.encode()
    assert how == f"restoring {MANIFEST} from podnet's backup {BACKUP}"


def test_of_two_backups_after_a_settings_change_the_original_is_put_back():
    first, second = settings(), settings(cluster_cidr="10.200.0.0/16")
    once = merge_manifest(KUBEADM_MANIFEST, desired_flags(first))
    twice = merge_manifest(once, desired_flags(second))
    later = "/var/lib/podnet/backup/kube-controller-manager.yaml.ba9876543210"
    content, _ = restored(second, node_with(second, twice, {BACKUP: KUBEADM_MANIFEST, later: once}), "cp1")
    assert content == KUBEADM_MANIFEST.encode()


# kubeadm's command line as a systemd unit on one line (as the test bed's control plane runs it)
KUBEADM_UNIT = ("[Unit]\nDescription=kube-controller-manager\n\n[Service]\nExecStart=/usr/local/bin/"
                + " ".join(KUBEADM_COMMAND) + "\nRestart=always\n\n[Install]\nWantedBy=multi-user.target\n")
DUAL = {"cluster_cidr_ipv6": "fd42::/56", "service_cluster_ip_range_ipv6": "fd43::/108"}


def deployed_through(runtime: str, original: str, changes: list[dict]) -> tuple[object, str, dict[str, str]]:
    """The last settings, the file and podnet's backups after one deploy per settings in ``changes``: each
    deploy that changes the flags backs up the file it rewrites first (controller_manager.apply)."""
    merge = merge_manifest if runtime == "static-pod" else merge_unit
    current, backups, s = original, {}, None
    for change in changes:
        s = settings(kube_controller_manager_runtime=runtime, **change)
        merged = merge(current, desired_flags(s))
        if merged is not None:
            path = MANIFEST if runtime == "static-pod" else s.kube_controller_manager_unit
            backups[backup_path(path, current.encode())] = current
            current = merged
    return s, current, backups


@pytest.mark.parametrize("runtime, original", [("static-pod", KUBEADM_MANIFEST), ("systemd", KUBEADM_UNIT),
                                               ("systemd", HARD_WAY_UNIT)], ids=["manifest", "unit", "hard-way-unit"])
@pytest.mark.parametrize("changes", [
    [{}, DUAL],  # dual stack turned on for a running IPv4 cluster
    [{}, {"cluster_cidr": "10.200.0.0/16"}, {}],  # the pod network moved and moved back: the file is a backup too
    [{}, DUAL, {}],  # dual stack on and off again
    [DUAL, {"node_cidr_mask_size_ipv6": 72, **DUAL}, {"cluster_cidr": "10.200.0.0/16", **DUAL}],
], ids=["ipv4-then-dual", "moved-and-back", "dual-on-and-off", "dual-three-changes"])
def test_after_several_flag_changes_the_pre_podnet_original_is_put_back(runtime, original, changes):
    # each change backed up podnet's own previous rewrite: the chain leads back to the one pre-podnet file
    s, current, backups = deployed_through(runtime, original, changes)
    assert len(backups) >= 2
    content, how = restored(s, node_with(s, current, backups), "cp1")
    original_path = next(path for path, text in backups.items() if text == original)
    assert how == f"restoring {config_path(s)} from podnet's backup {original_path}"
    assert content == original.encode()


@pytest.mark.parametrize("changes", [[{}], [{}, DUAL], [{}, {"cluster_cidr": "10.200.0.0/16"}, {}]],
                         ids=["one-change", "ipv4-then-dual", "moved-and-back"])
def test_kubeadms_pod_subnet_manifest_put_back_by_a_reset_stays_with_kubeadms_flags(changes):
    # kubeadm with a podSubnet writes --allocate-node-cidrs and --cluster-cidr itself: that original is podnet's merge
    # of podnet's own rewrite too (the contents do not say which came first); once a reset put it back it stays
    s, _, backups = deployed_through("static-pod", KUBEADM_MANIFEST_POD_SUBNET, changes)
    content, how = restored(s, node_with(s, KUBEADM_MANIFEST_POD_SUBNET, backups), "cp1")
    assert (content, how) == (None, f"{MANIFEST} is as in podnet's backup")


def test_a_manifest_edited_after_podnet_keeps_the_edit_and_loses_only_podnets_flags():
    s = settings()
    edited = merge_manifest(KUBEADM_MANIFEST, desired_flags(s)).replace("--leader-elect=true", "--leader-elect=false")
    content, how = restored(s, node_with(s, edited, {BACKUP: KUBEADM_MANIFEST}), "cp1")
    assert how == f"removing podnet's node IPAM flags from {MANIFEST} (no backup is the original of it)"
    # the edit stays, podnet's node IPAM flags go; --service-cluster-ip-range (kube-apiserver's range too) stays
    expected = yaml.safe_load(KUBEADM_MANIFEST.replace("--leader-elect=true", "--leader-elect=false"))
    expected["spec"]["containers"][0]["command"].append("--service-cluster-ip-range=10.96.0.0/12")
    assert yaml.safe_load(content) == expected


def test_a_unit_loses_podnets_flags_and_the_nodeipam_it_appended():
    s = settings(kube_controller_manager_runtime="systemd")
    unit = HARD_WAY_UNIT.replace("--bind-address=0.0.0.0", "--bind-address=0.0.0.0 \\\n  --controllers=csrsigning")
    merged = merge_unit(unit, desired_flags(s))
    assert "--controllers=csrsigning,nodeipam" in merged
    edited_later = "/var/lib/podnet/backup/kube-controller-manager.service.0123456789ab"  # not what merged came from
    content, how = restored(s, node_with(s, merged, {edited_later: HARD_WAY_UNIT}), "cp1")
    assert how.startswith("removing podnet's node IPAM flags")
    # without a backup, what podnet rewrote (--service-cluster-ip-range's value) stays; the rest of the unit too
    text = content.decode()
    assert [word for _, word in systemd_words(exec_start_entry(text).value)] == [
        word.replace("--service-cluster-ip-range 10.32.0.0/24", "--service-cluster-ip-range=10.96.0.0/12")
        for word in exec_start_words(unit) if not word.startswith("--cluster-cidr")]
    assert text.split("ExecStart=")[0] == unit.split("ExecStart=")[0]
    assert text.split("--v=2")[1] == unit.split("--v=2")[1]


def exec_start_words(unit: str) -> list[str]:
    """The words of a unit's ExecStart with each flag and its separate value as one word."""
    words = [word for _, word in systemd_words(exec_start_entry(unit).value)]
    joined: list[str] = []
    for word in words:
        if joined and joined[-1] in ("--cluster-cidr", "--service-cluster-ip-range"):
            joined[-1] += " " + word
        else:
            joined.append(word)
    return joined


def test_a_manifest_put_back_stays_on_the_next_reset():
    s = settings()
    content, how = restored(s, node_with(s, KUBEADM_MANIFEST_POD_SUBNET, {BACKUP: KUBEADM_MANIFEST_POD_SUBNET}), "cp1")
    assert content is None  # kubeadm's own --allocate-node-cidrs and --cluster-cidr stay
    assert how == f"{MANIFEST} is as in podnet's backup"


def test_a_manifest_podnet_never_changed_keeps_its_node_ipam_flags():
    s = settings()
    content, how = restored(s, node_with(s, KUBEADM_MANIFEST_POD_SUBNET, {}), "cp1")
    assert content is None
    assert how == f"{MANIFEST} was never changed by podnet (no backup in /var/lib/podnet/backup)"


def test_a_manifest_kubeadm_wrote_from_podnets_configuration_loses_the_flags():
    s = settings(cluster_bootstrap=True, node_ip="192.168.56.10")
    content, how = restored(s, node_with(s, KUBEADM_MANIFEST_POD_SUBNET, {}), "cp1")
    assert how.startswith("removing podnet's node IPAM flags")
    command = yaml.safe_load(content)["spec"]["containers"][0]["command"]
    assert command == [c for c in yaml.safe_load(KUBEADM_MANIFEST_POD_SUBNET)["spec"]["containers"][0]["command"]
                       if not c.startswith(("--allocate-node-cidrs", "--cluster-cidr"))]


def test_reset_puts_back_a_systemd_controller_managers_unit_and_restarts_it(cluster):
    # kube-controller-manager as a systemd unit (the hard way): the whole reset.py run, probe included
    data = {"kube_controller_manager_runtime": "systemd"}
    s = cluster.settings(CP, **data)
    path = s.kube_controller_manager_unit
    merged = merge_unit(HARD_WAY_UNIT, desired_flags(s))
    backup = f"/var/lib/podnet/backup/{path.rsplit('/', 1)[1]}.0123456789ab"
    nodes = {host: deployed(cluster, host, **data) for host in HOSTS}
    cp = nodes[CP]
    cp.contents[path] = merged.encode()
    cp.hashes[path], cp.modes[path] = hashlib.sha256(merged.encode()).hexdigest(), "644"
    cp.queries[BACKUPS_QUERY] = (0, [f"{backup} {base64.b64encode(HARD_WAY_UNIT.encode()).decode()}"])
    cp.units["kube-controller-manager.service"] = ("active", "enabled")
    run = run_reset(inventory(cluster, cp, nodes[WORKER], **data), "-y")
    assert run.returncode == 0, run.stderr[-4000:]
    assert f"restoring {path} from podnet's backup {backup}" in run.output
    commands = run.commands(CP)
    restart = "systemctl daemon-reload && systemctl restart kube-controller-manager.service"
    assert restart in commands, commands
    assert not any("kube-controller-manager" in c and "restart" in c for c in run.commands(WORKER))
