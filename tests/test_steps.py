"""
The shape of podnet's code: every concern a list of Steps over one context, the probe contract,
settings on the ground floor with no import circle, and a step reused from an operator's own deploy.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tasks import deploys

from tasks.engine import runner
from tasks.engine.context import HostContext
from tasks.engine.probe import NodeState, ProbeContractError, ProbeRequest, node_state, parse_probe, probe_script
from tasks.settings import parse_host_settings
from tests.support.plan import CP, WORKER, assert_ok, probes, run_pyinfra

REPO = Path(__file__).resolve().parent.parent


# --- the probe contract -------------------------------------------------------------------


def answered(request: ProbeRequest, lines: list[str]) -> NodeState:
    return parse_probe(lines).answering(request)


def test_reading_what_was_not_asked_fails_loudly():
    node = answered(ProbeRequest(hashes=["/opt/cni/bin/*"], units=["containerd.service"]),
                    ["sha\t" + "a" * 64 + "\t/opt/cni/bin/bridge", "unit\tcontainerd.service\tactive\tenabled"])
    assert node.hashes.get("/opt/cni/bin/bridge") == "a" * 64
    assert node.hashes.get("/opt/cni/bin/portmap") is None  # asked (by the glob) and absent: absent
    assert node.unit_active("containerd.service")
    with pytest.raises(ProbeContractError, match="not asked for digest '/etc/containerd/config.toml'"):
        node.hashes.get("/etc/containerd/config.toml")
    with pytest.raises(ProbeContractError, match="not asked for unit 'kubelet.service'"):
        node.unit_active("kubelet.service")
    with pytest.raises(ProbeContractError, match="not asked for query 'pod_cidrs'"):
        node.queries.get("pod_cidrs", (1, []))
    with pytest.raises(ProbeContractError):
        assert "/run/flannel/subnet.env" in node.contents


class FakeHost:
    """Counts the probes a host is asked, answering every one like a node holding /a."""

    name = "n1"

    def __init__(self):
        self.scripts: list[str] = []

    def get_fact(self, fact, script):
        self.scripts.append(script)
        return parse_probe(["machine x86_64", "sha\t" + "b" * 64 + "\t/a", "unit\tkubelet.service\tactive\tenabled"])


def test_a_second_request_is_merged_never_dropped(monkeypatch):
    monkeypatch.setattr("tasks.engine.probe._answers", {})
    host = FakeHost()
    first = node_state(host, ProbeRequest(hashes=["/a"]))
    assert first.hashes.get("/a") == "b" * 64
    assert node_state(host, ProbeRequest(hashes=["/a"])).hashes.get("/a") == "b" * 64
    assert len(host.scripts) == 1  # nothing new asked: no second round trip
    more = node_state(host, ProbeRequest(units=["kubelet.service"]))
    assert more.unit_active("kubelet.service")
    assert len(host.scripts) == 2 and host.scripts[1] == probe_script(ProbeRequest(hashes=["/a"],
                                                                                   units=["kubelet.service"]))


# --- every step decides itself whether it applies ----------------------------------------------


def context(host: str, groups: list[str], first_control_plane: str | None = "cp1", **data) -> HostContext:
    return HostContext(host_name=host, settings=parse_host_settings(data, host, groups),
                       first_control_plane=first_control_plane)


@pytest.mark.parametrize("host, groups, data, expected", [
    ("cp1", ["control_plane"], {}, ["kernel", "containerd", "cni", "kube-controller-manager", "kubeadm-config",
                                    "flannel: flannel_mtu", "pod network: a change", "flannel: flanneld",
                                    "pod network: the old"]),
    ("w1", ["workers"], {}, ["kernel", "containerd", "cni", "flannel: flannel_mtu", "pod network: a change",
                             "pod network: the old"]),
    ("w1", ["workers"], {"flannel_rollout": "systemd"},
     ["kernel", "containerd", "cni", "flannel: flannel_mtu", "pod network: a change", "flannel: flanneld",
      "pod network: the old"]),
    ("cp1", ["control_plane"], {"kube_controller_manager_runtime": "external"},
     ["kernel", "containerd", "cni", "flannel: flannel_mtu", "pod network: a change", "flannel: flanneld",
      "pod network: the old"]),
    ("cp1", ["control_plane"], {"cluster_bootstrap": True, "node_ip": "192.168.56.11"},
     ["kernel", "kubeadm: swap", "containerd", "cni", "kubeadm: kubelet", "kube-controller-manager",
      "kubeadm-config", "flannel: flannel_mtu", "pod network: a change", "flannel: flanneld", "pod network: the old"]),
])
def test_which_steps_apply_where(host, groups, data, expected):
    ctx = context(host, groups, **data)
    names = [step.name for step in runner.applicable(deploys.POD_NETWORK, ctx)]
    assert len(names) == len(expected) and all(n.startswith(e) for n, e in zip(names, expected)), names


def test_artifacts_follow_the_steps_that_apply():
    assert runner.artifacts_needed(runner.applicable(deploys.POD_NETWORK, context("w1", ["workers"])),
                                    context("w1", ["workers"])) == (
        "containerd", "runc", "cni_plugins", "flannel_cni_plugin")
    systemd = context("w1", ["workers"], flannel_rollout="systemd")
    assert runner.artifacts_needed(runner.applicable(deploys.POD_NETWORK, systemd), systemd)[-1] == "flanneld"
    bootstrap = context("cp1", ["control_plane"], cluster_bootstrap=True, node_ip="192.168.56.11")
    assert runner.artifacts_needed(runner.applicable(deploys.POD_NETWORK, bootstrap), bootstrap)[-3:] == (
        "kubeadm", "kubelet", "kubectl")


# --- floors: settings on the ground, no circle -------------------------------------------------


def podnet_imports() -> dict[str, set[str]]:
    """tasks module -> the tasks modules it imports (anywhere in it, also inside functions)."""
    modules = {}
    for path in sorted((REPO / "tasks").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tasks"):
                for alias in node.names:  # "from tasks.engine import ops" imports the module tasks.engine.ops
                    submodule = f"{node.module}.{alias.name}"
                    found.add(submodule if submodule in modules else node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names if alias.name.startswith("tasks."))
        graph[module] = found - {module, "tasks"}
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(graph.get(start, ()))
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph.get(module, ()))
    return seen


def test_no_module_imports_one_that_depends_on_it():
    graph = podnet_imports()
    circles = sorted(m for m in graph if m in reachable(graph, m))
    assert circles == [], f"import circles through {circles}"


def test_settings_are_the_ground_floor():
    graph = podnet_imports()
    below = reachable(graph, "tasks.settings")
    assert below, "settings imports its parsers' data from the ground floor"
    for module in below:  # settings stands on modules that import no other podnet module but errors
        assert graph[module] <= {"tasks.errors", "tasks.settings"}, (module, graph[module])
        # tasks.redact: the one redaction of secrets in what is shown (a bad mirror_url's credentials)
        assert module in {"tasks.errors", "tasks.releases", "tasks.redact"} or module.startswith(
            "tasks.settings."), module


def concerns(graph: dict[str, set[str]]) -> set[str]:
    """The concerns: the modules standing directly in tasks/, less the ground floor and the entry points."""
    return {m for m in graph if m.count(".") == 1 and m not in
            {"tasks.errors", "tasks.releases", "tasks.redact", "tasks.deploys", "tasks.docs", "tasks.lock", "tasks.lock_checksums"}
            and not (REPO / m.replace(".", "/")).is_dir()}


def test_the_machinery_imports_no_concern():
    graph = podnet_imports()
    assert {"tasks.kernel", "tasks.flannel", "tasks.reset", "tasks.interrupted"} <= concerns(graph)
    for package in ("tasks.engine", "tasks.artifacts", "tasks.settings", "tasks.formats"):
        members = [m for m in graph if m == package or m.startswith(package + ".")]
        assert members, package
        for module in members:
            wrong = reachable(graph, module) & (concerns(graph) | {"tasks.deploys", "tasks.docs", "tasks.lock_checksums"})
            assert not wrong, f"{module} (machinery) reaches {sorted(wrong)}"


# --- a step reused from an operator's own deploy -----------------------------------------------


def test_a_users_deploy_runs_one_podnet_step(cluster, tmp_path):
    own = tmp_path / "my_deploy.py"
    own.write_text("from pyinfra.operations import server\n\nfrom tasks.deploys import containerd_runtime\n\n"
                   "server.shell(name='my own step', commands=['true'])\ncontainerd_runtime()\n")
    run = run_pyinfra(cluster.inventory(cluster.fresh(CP), cluster.fresh(WORKER)), "--dry", "--json",
                      deploy=str(own))
    assert_ok(run)
    names = list(run.plan())
    assert any("my own step" in n for n in names)
    assert any("containerd: containerd binaries" in n for n in names)
    assert not [n for n in names if "cni:" in n or "kernel:" in n or "flannel:" in n], names
    for host in (CP, WORKER):
        assert len(probes(run, host)) == 1


SPLIT = "from tasks.deploys import flannel_rollout, node_ipam\n\nnode_ipam()\nflannel_rollout()\n"
TOGETHER = ("from tasks import controller_manager, flannel, kubeadm_config, pod_network\n"
            "from tasks.deploys import steps\n\n"
            "steps(controller_manager.STEP, kubeadm_config.STEP, flannel.POD_MTU, pod_network.REGISTRATION,"
            " flannel.ROLLOUT, pod_network.OLD_BRIDGE)\n")


@pytest.mark.parametrize("rollout", ["systemd", "daemonset"])
@pytest.mark.parametrize("own", [SPLIT, TOGETHER], ids=["one deploy after the other", "steps together"])
def test_later_deploys_see_what_earlier_ones_decided(cluster, tmp_path, own, rollout):
    """node_ipam switches node IPAM on in this run, so flannel_rollout waits for podCIDRs instead of
    refusing nodes that have none yet: whether called one after the other or together."""
    data = {"flannel_rollout": rollout}
    cp = cluster.fresh(CP, data=data)
    cp.queries["pod_cidrs"] = (0, ["cp1", "w1"])  # node IPAM not on yet: no node has a podCIDR
    if rollout == "daemonset":
        cp.queries["flannel_manifest"] = (0, [])
    deploy = tmp_path / "my_deploy.py"
    deploy.write_text(own)
    run = run_pyinfra(cluster.inventory(cp, cluster.fresh(WORKER, data=data), **data), "--dry", "--json",
                      deploy=str(deploy))
    assert_ok(run)
    assert any("every node has a podCIDR" in name for name, hosts in run.plan().items() if hosts == [CP])


def test_the_reusable_reset_refuses_a_daemonset_reset_that_leaves_hosts_out(cluster, tmp_path):
    deploy = tmp_path / "my_reset.py"
    deploy.write_text("from tasks.deploys import pod_network_reset\n\npod_network_reset()\n")
    run = run_pyinfra(cluster.inventory(cluster.fresh(CP), cluster.fresh(WORKER)), "--dry",
                      "--limit", "@fake/w1", deploy=str(deploy))
    assert run.returncode == 1
    assert "covers all hosts of the inventory or none" in run.stderr + run.stdout
