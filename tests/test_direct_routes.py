"""
A backend change away from host-gw on dual stack: host-gw's IPv6 routes (`<podCIDR> via <node> dev
<interface>`) are in the way of the new backend's routes (the kernel refuses to replace them), so podnet
deletes them with flanneld stopped (tasks/flannel.py, ``DIRECT_ROUTES``): the real routes query in a network
namespace of its own, the real guard against a running flanneld, and the plans of both rollouts through the
real pyinfra CLI on ``@fake`` hosts. The end-to-end test (tests/test_e2e.py, the backend change on the
dual-stack DaemonSet cluster) shows IPv6 pods reaching each other again afterwards.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tasks import flannel
from tests.support.hosts import settings
from tests.support.plan import (CP, FLANNEL_TOKEN_ANSWERS, HOSTS, WORKER, FakeNode, assert_ok, probe_answer, probes,
                                run_pyinfra, write_inventory)

DUAL = {"cluster_cidr_ipv6": "fd00:10:244::/56"}
# host-gw's routes as each node holds them after flanneld v0.28.9 ran it: one per other node, per family
# every node's podCIDRs, one per family, as kube-controller-manager gave them
POD_CIDRS = ["cp1 10.244.0.0/24 fd00:10:244::/64", "w1 10.244.1.0/24 fd00:10:244:1::/64"]
LEFT = {CP: ["6 fd00:10:244:1::/64 fd00:50::11 eth0"], WORKER: ["6 fd00:10:244::/64 fd00:50::10 eth0"]}


@pytest.mark.parametrize("data, clears", [
    (DUAL, True),  # vxlan, the default
    ({**DUAL, "flannel_backend": "wireguard"}, True),
    ({**DUAL, "flannel_backend": "host-gw"}, False),  # its own routes
    ({}, False),  # IPv4 only: the kernel replaces an IPv4 route through another device
    ({**DUAL, "flannel_rollout": "external"}, False),  # flanneld is not podnet's
])
def test_only_a_dual_stack_backend_of_its_own_devices_clears_host_gws_routes(data, clears):
    s = settings(**data)
    assert flannel.clears_direct_routes(s) is clears
    assert (flannel.DIRECT_ROUTES_QUERY in flannel.direct_routes_probe_request(s).queries) is clears


def test_the_query_finds_host_gws_ipv6_routes_and_not_the_new_backends():
    # in a network namespace of its own (gone with the process): the node's interface, host-gw's route to another
    # node's IPv6 podCIDR through it, and vxlan's own onlink route through flannel-v6.1, as flanneld adds them
    setup = ("ip link add pa0 type veth peer name pb0 && ip link set pa0 up && ip link set pb0 up && "
             "ip -6 addr add fd00:77::1/64 dev pa0 nodad && "
             "ip link add flannel-v6.1 type vxlan id 1 local fd00:77::1 dev pa0 dstport 8472 nolearning && "
             "ip link set flannel-v6.1 up && "
             "ip -6 route add fd00:10:244:1::/64 via fd00:77::11 dev pa0 && "
             "ip -6 route add fd00:10:244:2::/64 via fd00:10:244:2:: dev flannel-v6.1 onlink && "
             "ip -6 route add fd00:99::/64 via fd00:77::254 dev pa0")  # not the pod network
    done = subprocess.run(["unshare", "-n", "sh", "-c", f"{setup} && {flannel.routes_command((6,))}"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    node = flannel.NodeState(queries={flannel.DIRECT_ROUTES_QUERY: (0, done.stdout.splitlines())})
    assert flannel.direct_routes_left(settings(**DUAL), node, "w1") == [(6, "fd00:10:244:1::/64", "fd00:77::11",
                                                                         "pa0")]
    assert flannel.direct_routes_left(settings(**DUAL, flannel_backend="host-gw"), node, "w1") == []


@pytest.mark.parametrize("running", [True, False])
def test_the_guard_fails_naming_the_node_while_a_flanneld_process_runs(tmp_path, running):
    fake = tmp_path / "flanneld"  # a process whose name is flanneld, as the DaemonSet's container runs it
    shutil.copy("/bin/sleep", fake)
    start = f"{fake} 30 & sleep 0.2; " if running else ""
    # in a PID namespace of its own: only its own processes in /proc (not the test nodes' flanneld)
    done = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c",
                           f"{start}{flannel.flanneld_stopped_command('w1')}; status=$?; kill %1 2>/dev/null; "
                           "exit $status"], capture_output=True, text=True, timeout=30)
    if running:
        assert done.returncode == 1
        assert done.stderr.startswith("podnet: w1: flanneld still runs here, so host-gw's IPv6 routes cannot go"), \
            done.stderr
        assert "kubectl -n kube-flannel delete ds kube-flannel" in done.stderr
    else:
        assert (done.returncode, done.stderr) == (0, "")


def _deploy(cluster, left: dict[str, list[str]], **data):
    """deploy.py -y on the converged dual-stack cluster whose nodes hold the routes ``left`` (host -> query lines)."""
    nodes = []
    for host, group in ((CP, "control_plane"), (WORKER, "workers")):
        node = cluster.converged(host, **DUAL, **data)
        node.queries[flannel.DIRECT_ROUTES_QUERY] = (0, left[host])
        responses = {"get nodes": POD_CIDRS, **FLANNEL_TOKEN_ANSWERS} if host == CP else {}
        if host == CP:
            node.queries["pod_cidrs"] = (0, POD_CIDRS)
        nodes.append(FakeNode(host.removeprefix("@fake/"), group, cluster.data(**DUAL, **data), probe_answer(node),
                              responses))
    return run_pyinfra(write_inventory(cluster.tmp / "inventory.py", nodes), "-y")


def test_daemonset_deleted_then_every_nodes_routes_deleted_then_the_daemonset_applied_again(cluster):
    run = _deploy(cluster, LEFT)
    assert run.returncode == 0, run.stderr[-4000:]
    cp = [c for c in run.commands(CP) if c not in probes(run, CP)]
    delete = next(i for i, c in enumerate(cp) if "delete ds kube-flannel" in c)
    routes = next(i for i, c in enumerate(cp) if "ip -6 route delete" in c)
    apply = next(i for i, c in enumerate(cp) if "apply -f /etc/podnet/kube-flannel.yml" in c)
    assert delete < routes < apply, cp
    assert "--cascade=foreground --wait=true --timeout=10s" in cp[delete]
    assert cp[routes].endswith("; done && ip -6 route delete fd00:10:244:1::/64 via fd00:50::11 dev eth0"), cp[routes]
    worker = [c for c in run.commands(WORKER) if c not in probes(run, WORKER)]
    assert worker == [flannel.flanneld_stopped_command("@fake/w1") + " && ip -6 route delete fd00:10:244::/64 via "
                      "fd00:50::10 dev eth0"], worker
    # the manifest did not change: applied again because it was deleted, and waited for
    assert "applying kube-flannel: deleted to clear host-gw's IPv6 routes" in run.output


def test_systemd_unit_stopped_routes_deleted_and_started_again(cluster):
    run = _deploy(cluster, LEFT, flannel_rollout="systemd")
    assert run.returncode == 0, run.stderr[-4000:]
    for host in HOSTS:
        commands = [c for c in run.commands(host) if c not in probes(run, host)]
        stop = commands.index(f"systemctl stop flanneld.service && ip -6 route delete {LEFT[host][0].split()[1]} via "
                              f"{LEFT[host][0].split()[2]} dev eth0")
        restart = next(i for i, c in enumerate(commands) if c.startswith("systemctl restart flanneld.service"))
        assert stop < restart, commands
        assert not any("kube-flannel" in c for c in commands), commands


@pytest.mark.parametrize("rollout", ["daemonset", "systemd"])
def test_without_such_routes_nothing_is_stopped_or_deleted(cluster, rollout):
    run = _deploy(cluster, {CP: [], WORKER: []}, flannel_rollout=rollout)
    assert_ok(run)
    assert run.commands(WORKER) == probes(run, WORKER)


def test_the_kernel_refuses_the_new_backends_ipv6_route_until_podnet_deleted_host_gws():
    # the premise, on this machine's kernel: vxlan's onlink route to another node's IPv6 podCIDR replaces host-gw's
    # route in IPv4 but not in IPv6; after podnet's deletion it is taken
    setup = ("ip link add pa0 type veth peer name pb0 && ip link set pa0 up && ip link set pb0 up && "
             "ip addr add 192.168.77.1/24 dev pa0 && ip -6 addr add fd00:77::1/64 dev pa0 nodad && "
             "ip link add flannel-v6.1 type vxlan id 1 local fd00:77::1 dev pa0 dstport 8472 nolearning && "
             "ip link set flannel-v6.1 up && "
             "ip route add 10.244.1.0/24 via 192.168.77.11 dev pa0 && "
             "ip -6 route add fd00:10:244:1::/64 via fd00:77::11 dev pa0")
    vxlan = {4: "ip -4 route replace 10.244.1.0/24 via 10.244.1.0 dev flannel-v6.1 onlink",
             6: "ip -6 route replace fd00:10:244:1::/64 via fd00:10:244:1:: dev flannel-v6.1 onlink"}
    deletion = flannel.route_deletion((6, "fd00:10:244:1::/64", "fd00:77::11", "pa0"))
    script = (f"{setup} && {vxlan[4]} && echo v4 taken; {vxlan[6]} || echo v6 refused; "
              f"{deletion} && {vxlan[6]} && echo v6 taken")
    done = subprocess.run(["unshare", "-n", "sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert done.stdout.split("\n") == ["v4 taken", "v6 refused", "v6 taken", ""], (done.stdout, done.stderr)
    assert "Nexthop has invalid gateway or device mismatch" in done.stderr
