"""
Cluster bootstrap (``cluster_bootstrap``) planned and executed by the real pyinfra CLI
against ``@fake`` hosts shaped like the Vagrant cluster: a control plane and two workers
with their node IP on a private network, ``_sudo`` as the vagrant user has it.

Each host's probe answer is scripted (fresh machines, a converged cluster, a cluster with
a new worker, ...); kubeadm, kubelet and kubectl are tiny real files served from a loopback
mirror under their upstream path (dl.k8s.io/release/v<version>/bin/linux/<arch>/<name>) and
pinned with ``artifact_checksums``. The control plane's answers to `kubeadm token create`,
`kubeadm init phase upload-certs`, `cat <manifest>` and `kubectl get nodes` are scripted the
way kubeadm and kubectl print them.
"""

from __future__ import annotations

import base64
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tasks import controller_manager, flannel, kubeadm, kubeadm_config
from tasks.engine.ops import HostCommand
from tasks.engine.probe import NodeState
from tasks.settings import SPEC_BY_NAME, Settings, SettingsError, parse_host_settings, parse_inventory
from tests.support.hosts import FakeHost
from tests.support.http import ScriptedServer
from tests.support.kubeadm import (
    KUBEADM_COMMAND_POD_SUBNET,
    KUBEADM_MANIFEST_POD_SUBNET,
    V1BETA3_KUBEADM_1_30,
    V1BETA4_KUBEADM_1_35,
    V1BETA4_PODNET,
    kubeadm_manifest,
)
from tests.support.plan import (
    PROBE_MARK,
    FakeNode,
    Run,
    converged_state,
    fresh_state,
    kubeadm_config_answer,
    probe_answer,
    run_pyinfra,
    write_inventory,
)
from tests.support.releases import ARCH, Releases, script, sha256

VERSION = SPEC_BY_NAME["kubernetes_version"].default  # podnet's default release
V1BETA3_VERSION = "1.30.14"  # the newest Kubernetes release whose kubeadm reads v1beta3 and not v1beta4
CP, CP2, W1, W2 = "@fake/cp1", "@fake/cp2", "@fake/w1", "@fake/w2"
ADDRESSES = {CP: "192.168.56.11", CP2: "192.168.56.12", W1: "192.168.56.21", W2: "192.168.56.22"}
TOKEN = "abcdef.0123456789abcdef"
CA_HASH = "sha256:" + "7" * 64
CERTIFICATE_KEY = "c" * 64
JOIN_OUTPUT = [f"kubeadm join 192.168.56.11:6443 --token {TOKEN} --discovery-token-ca-cert-hash {CA_HASH} "]
UPLOAD_CERTS_OUTPUT = ['[upload-certs] Storing the certificates in Secret "kubeadm-certs" in the "kube-system" '
                       'Namespace',
                       "[upload-certs] Using certificate key:", CERTIFICATE_KEY]
# put_secret_file through sudo: the SSH user's 0600 temporary file that is copied into the root-only file
SECRET_FILE = {"umask 077 && mktemp": ["/tmp/tmp.podnet1"]}
KCM_MANIFEST = "/etc/kubernetes/manifests/kube-controller-manager.yaml"
READ_MANIFEST = f"base64 -w0 {KCM_MANIFEST}"

INIT = "kubeadm: control plane initialised (kubeadm init)"
WORKER_JOIN = "kubeadm: worker joined (kubeadm join)"
CP_JOIN = "kubeadm: control-plane host joined (kubeadm join --control-plane)"
MERGE_AFTER_INIT = "kube-controller-manager: node IPAM flags in the manifest kubeadm wrote"
KUBEADM_CONFIG = "kubeadm-config: node IPAM flags in the ClusterConfiguration kubeadm upgrade reads"
PATCH_KUBEADM_CONFIG = ("kubectl --kubeconfig=/etc/kubernetes/admin.conf -n kube-system patch configmap kubeadm-config "
                        "--type=merge -p ")


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    tree = tmp_path_factory.mktemp("mirror")
    releases = Releases(tree)
    kube = {name: script(name, VERSION) for name in ("kubeadm", "kubelet", "kubectl")}
    checksums = releases.checksums()
    for version in (VERSION, V1BETA3_VERSION):
        for name in kube:
            data = script(name, version)
            path = tree / f"release/v{version}/bin/linux/{ARCH}/{name}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            checksums.setdefault(name, {})[version] = {ARCH: sha256(data)}
    with ScriptedServer(tree) as server:
        yield releases, kube, checksums, server


@dataclass
class Bed:
    releases: Releases
    kube: dict[str, bytes]
    checksums: dict
    server: ScriptedServer
    tmp: Path
    hosts: tuple[str, ...] = (CP, W1, W2)
    extra: dict = field(default_factory=dict)

    def group(self, host: str) -> str:
        return "control_plane" if host in (CP, CP2) else "workers"

    def data(self, host: str) -> dict:
        address = ADDRESSES[host]
        return {"cluster_bootstrap": True, "node_ip": address, "flannel_iface": address, "_sudo": True,
                "mirror_url": self.server.url, "allow_insecure_http": True, "artifact_checksums": self.checksums,
                "download_cache_dir": str(self.tmp / "cache"), "flannel_rollout_timeout": 10,
                "artifact_lock_file": str(self.tmp / "artifacts.lock.yaml"), **self.extra}

    def settings(self, host: str) -> Settings:
        return parse_host_settings(self.data(host), host, [self.group(host)])

    def fresh(self, host: str) -> NodeState:
        """A machine as `vagrant up` leaves it: swap on, some preflight tools missing, nothing of Kubernetes."""
        state = fresh_state(self.settings(host))
        state.units[kubeadm.KUBELET_UNIT] = ("inactive", "not-found")
        state.features.update({name: False for name in kubeadm.FEATURES})
        state.features.update({kubeadm.SWAP_ACTIVE: True, kubeadm.SWAP_IN_FSTAB: True, kubeadm.HAS_APT: True, kubeadm.CGROUP_V2: True,
                               "tool:ip": True, "tool:mount": True, "tool:nsenter": True})
        if host == CP:  # no kubectl and no admin.conf yet
            for query in ("flannel_manifest", "pod_cidrs", kubeadm_config.QUERY):
                state.queries[query] = (127, [])
                state.query_stderr[query] = "sh: 1: kubectl: not found"
        return state

    def converged(self, host: str) -> NodeState:
        """A node of a cluster that an earlier run created: what podnet installs, kubeadm's files present."""
        s = self.settings(host)
        names = [h.split("/")[1] for h in self.hosts]
        manifest = kubeadm_manifest(KUBEADM_COMMAND_POD_SUBNET) if s.is_control_plane else None
        state = converged_state(s, self.releases, host_names=names, kcm_manifest=manifest,
                                first_control_plane=host == CP)
        for f in [*kubeadm.kubelet_files(s)]:
            state.hashes[f.path], state.modes[f.path] = f.sha256, f.mode.lstrip("0")
        for path, name in ((kubeadm.KUBEADM, "kubeadm"), (kubeadm.KUBELET, "kubelet"), (kubeadm.KUBECTL, "kubectl")):
            state.hashes[path], state.modes[path] = sha256(self.kube[name]), "755"
        state.units[kubeadm.KUBELET_UNIT] = ("active", "enabled")
        state.features.update({name: True for name in kubeadm.FEATURES})
        state.features.update({kubeadm.SWAP_ACTIVE: False, kubeadm.SWAP_IN_FSTAB: False,
                               kubeadm.INITIALISED: s.is_control_plane})
        if host == CP:  # what kubeadm init stored from podnet's init configuration
            state.queries[kubeadm_config.QUERY] = kubeadm_config_answer(V1BETA4_PODNET)
        return state

    def inventory(self, states: dict[str, NodeState], cp_responses: dict | None = None,
                  worker_responses: dict | None = None) -> Path:
        responses = {"token create": JOIN_OUTPUT, "upload-certs": UPLOAD_CERTS_OUTPUT, **SECRET_FILE,
                     READ_MANIFEST: [base64.b64encode(KUBEADM_MANIFEST_POD_SUBNET.encode()).decode()],
                     "get nodes": [f"{h.split('/')[1]} 10.244.{i}.0/24" for i, h in enumerate(self.hosts)],
                     **(cp_responses or {})}
        nodes = [FakeNode(h.split("/")[1], self.group(h), self.data(h), probe_answer(states[h]),
                          responses if h in (CP, CP2) else {**SECRET_FILE, **(worker_responses or {})})
                 for h in self.hosts]
        return write_inventory(self.tmp / "inventory.py", nodes)


@pytest.fixture
def bed(mirror, tmp_path) -> Bed:
    releases, kube, checksums, server = mirror
    return Bed(releases, kube, checksums, server, tmp_path)


def ok(run: Run) -> Run:
    assert run.returncode == 0, run.stderr[-4000:]
    return run


def plan_order(run: Run) -> list[str]:
    return [op["name"] for op in json.loads(run.stdout)["plan"]]


# --- the bootstrap order ------------------------------------------------------------------


def test_fresh_machines_plan_in_the_bootstrap_order(bed):
    run = ok(run_pyinfra(bed.inventory({h: bed.fresh(h) for h in bed.hosts}), "--dry", "--json"))
    plan, order = run.plan(), plan_order(run)
    steps = ["kernel: modules-load.d and sysctl.d files", "kubeadm: swap off (the kubelet does not run with swap)",
             "kubeadm: tools kubeadm's preflight checks need", "containerd: enabled and running",
             "cni: 10-flannel.conflist", "kubeadm: kubeadm, kubelet and kubectl binaries",
             "kubeadm: kubelet enabled and running", INIT, WORKER_JOIN, MERGE_AFTER_INIT,
             "flannel: DaemonSet applied", "flannel: DaemonSet rolled out, every flannel pod Ready",
             "flannel: every node has a podCIDR in the cluster CIDR"]
    assert [order.index(step) for step in steps] == sorted(order.index(step) for step in steps)
    everyone = sorted(bed.hosts)
    for step in steps[:7]:
        assert plan[step] == everyone, step
    assert plan[INIT] == [CP]
    assert plan[WORKER_JOIN] == [W1, W2]
    assert plan[MERGE_AFTER_INIT] == [CP]
    assert plan["flannel: DaemonSet applied"] == plan["flannel: DaemonSet rolled out, every flannel pod Ready"] == [CP]


def test_fresh_machines_execute_init_then_join_with_a_token_from_the_control_plane(bed):
    # -vvv prints every operation's commands and output, --diff every file change: the secrets show in neither
    run = ok(run_pyinfra(bed.inventory({h: bed.fresh(h) for h in bed.hosts}), "-y", "-vvv", "--diff"))
    cp = run.commands(CP)
    init = cp.index("/usr/local/bin/kubeadm init --config /etc/podnet/kubeadm-init.yaml --skip-token-print")
    assert "/etc/podnet/.kubeadm-init.yaml.podnet-new" in run.uploads(CP)
    # the manifest kubeadm wrote is read after init, and the flags merged into it
    read = cp.index(READ_MANIFEST)
    apply = next(i for i, c in enumerate(cp) if "apply -f /etc/podnet/kube-flannel.yml" in c)
    assert init < read < apply
    assert "/etc/kubernetes/manifests/.kube-controller-manager.yaml.podnet-new" in run.uploads(CP)
    # a token of its own for each join, created after init with a short TTL, deleted after the join
    for worker in (W1, W2):
        create = cp.index("/usr/local/bin/kubeadm token create --print-join-command --ttl 15m "
                          f"--description 'podnet: kubeadm join of {worker}'")
        assert init < create < cp.index("/usr/local/bin/kubeadm token delete abcdef", create)
    assert len([c for c in cp if "token delete" in c]) == 2
    for worker in (W1, W2):
        commands = run.commands(worker)
        # the JoinConfiguration: created empty as root-only, written over SFTP, read by kubeadm, removed
        create = commands.index("umask 077 && mkdir -p /run/podnet && rm -f /run/podnet/kubeadm-join.yaml && "
                                ": > /run/podnet/kubeadm-join.yaml")
        assert run.uploads(worker)[-1] == kubeadm.JOIN_CONFIG_PATH
        join = commands.index("/usr/local/bin/kubeadm join --config /run/podnet/kubeadm-join.yaml")
        assert create < join < commands.index("rm -f /run/podnet/kubeadm-join.yaml")
        kubelet = commands.index("systemctl daemon-reload && systemctl enable kubelet.service && "
                                 "systemctl start kubelet.service && rm -f /var/lib/podnet/restart-pending/kubelet.service")
        assert kubelet < join
        assert not [c for c in commands if "kubeadm init" in c or "kubectl --kubeconfig" in c]
    # the token is on no command line and in no output (-vvv, --diff, --debug)
    assert TOKEN not in run.output and TOKEN.split(".")[1] not in run.output


def test_a_failed_join_removes_its_configuration_and_token_and_masks_them_in_the_error(bed):
    failing = {"kubeadm join": {"success": False, "stderr": [f"error: token {TOKEN} rejected"]}}
    states = {h: bed.fresh(h) for h in bed.hosts}
    run = run_pyinfra(bed.inventory(states, worker_responses=failing), "-y", "-vvv")
    assert run.returncode != 0
    for worker in (W1, W2):
        commands = run.commands(worker)
        assert commands.index("/usr/local/bin/kubeadm join --config /run/podnet/kubeadm-join.yaml") < commands.index(
            "rm -f /run/podnet/kubeadm-join.yaml")
        assert (f"{worker}: kubeadm join 192.168.56.11:6443 failed: error: token *MASKED* rejected; run `kubeadm "
                "reset -f` on it before the next run") in run.output
    assert len([c for c in run.commands(CP) if c == "/usr/local/bin/kubeadm token delete abcdef"]) == 2
    assert TOKEN.split(".")[1] not in run.output


def failed_on_fresh_machines(bed, command: str, stderr: str) -> Run:
    """A run on fresh machines in which ``command`` fails on the first control-plane host."""
    failing = {command: {"success": False, "stderr": [stderr]}}
    run = run_pyinfra(bed.inventory({h: bed.fresh(h) for h in bed.hosts}, cp_responses=failing), "-y")
    assert run.returncode != 0
    return run


def test_a_token_that_cannot_be_deleted_is_named_with_its_id_only(bed):
    run = failed_on_fresh_machines(bed, "token delete", "error: the server could not find the token")
    assert ("bootstrap token abcdef could not be deleted on @fake/cp1 (error: the server could not find the token); "
            "it expires after 15m, or delete it now: kubeadm token delete abcdef") in run.output
    assert TOKEN.split(".")[1] not in run.output


def test_prerequisites_turn_swap_off_for_good_and_install_the_preflight_tools(bed):
    run = ok(run_pyinfra(bed.inventory({h: bed.fresh(h) for h in bed.hosts}), "-y"))
    for host in bed.hosts:
        commands = run.commands(host)
        swap = next(c for c in commands if c.startswith("cp -p /etc/fstab /etc/fstab.podnet-bak"))
        assert swap.endswith("mv -f /etc/fstab.podnet-new /etc/fstab && swapoff -a")
        install = next(c for c in commands if "apt-get" in c)
        assert install.endswith("install -y -q --no-install-recommends conntrack ethtool iptables socat")
        assert commands.index(install) < next(i for i, c in enumerate(commands) if "containerd.service" in c)


def test_a_host_without_apt_and_without_the_tools_fails_before_any_change(bed):
    states = {h: bed.fresh(h) for h in bed.hosts}
    states[W2].features[kubeadm.HAS_APT] = False
    run = run_pyinfra(bed.inventory(states), "-y")
    assert run.returncode != 0
    assert ("@fake/w2: iptables, conntrack, ethtool, socat not found; kubeadm's preflight checks need them. podnet "
            "installs them with apt-get on Debian and Ubuntu and this host has none: install conntrack, ethtool, "
            "iptables, socat and rerun") in run.output
    for host in bed.hosts:
        assert run.uploads(host) == []


# --- idempotency guards --------------------------------------------------------------------


def test_a_converged_bootstrap_cluster_plans_no_change(bed):
    run = ok(run_pyinfra(bed.inventory({h: bed.converged(h) for h in bed.hosts}), "--dry", "--json"))
    plan = run.plan()
    assert {INIT, WORKER_JOIN, "kubeadm: kubelet enabled and running"} <= set(plan)
    assert {op: hosts for op, hosts in plan.items() if hosts} == {}


def test_a_converged_bootstrap_cluster_runs_only_the_probe(bed):
    run = ok(run_pyinfra(bed.inventory({h: bed.converged(h) for h in bed.hosts}), "-y"))
    for host in bed.hosts:
        assert len(run.commands(host)) == 1 and run.commands(host)[0].startswith('printf "machine %s')
        assert run.uploads(host) == []


def test_an_initialised_control_plane_is_not_initialised_again_and_only_the_new_worker_joins(bed):
    states = {h: bed.converged(h) for h in bed.hosts}
    states[W2] = bed.fresh(W2)  # a worker added to the Vagrantfile since the last run
    run = ok(run_pyinfra(bed.inventory(states), "-y"))
    assert not [c for c in run.commands(CP) if "kubeadm init" in c]
    assert not [c for c in run.commands(W1) if "kubeadm" in c]
    assert [c for c in run.commands(W2) if c.startswith("/usr/local/bin/kubeadm join")]
    assert len([c for c in run.commands(CP) if "token create" in c]) == 1
    # the running cluster's manifest was read by the probe: nothing to merge at execution time
    assert READ_MANIFEST not in run.commands(CP)


def test_a_kubelet_change_restarts_the_kubelet_but_does_not_rejoin(bed):
    states = {h: bed.converged(h) for h in bed.hosts}
    states[W1].hashes[kubeadm.KUBELET_DEFAULTS_PATH] = "0" * 64  # edited by hand: another node IP
    run = ok(run_pyinfra(bed.inventory(states), "-y"))
    assert run.uploads(W1) == ["/etc/default/.kubelet.podnet-new"]
    assert ("systemctl restart kubelet.service && rm -f /var/lib/podnet/restart-pending/kubelet.service"
            in run.commands(W1))
    assert not [c for c in run.commands(W1) if "kubeadm join" in c]


def test_a_second_control_plane_host_joins_with_a_certificate_key(bed):
    bed.hosts = (CP, CP2, W1)
    states = {h: bed.fresh(h) for h in bed.hosts}
    run = ok(run_pyinfra(bed.inventory(states), "-y"))
    cp2 = run.commands(CP2)
    join = "/usr/local/bin/kubeadm join --config /run/podnet/kubeadm-join.yaml"
    assert cp2.index(join) < cp2.index("rm -f /run/podnet/kubeadm-join.yaml")
    assert kubeadm.JOIN_CONFIG_PATH in run.uploads(CP2)
    assert CERTIFICATE_KEY not in run.output and TOKEN not in run.output
    assert not [c for c in cp2 if "kubeadm init" in c]
    # with podnet's init configuration: kubeadm needs it to pick the address to advertise
    assert ("/usr/local/bin/kubeadm init phase upload-certs --upload-certs --config /etc/podnet/kubeadm-init.yaml"
            in run.commands(CP))
    assert not [c for c in run.commands(W1) if "--control-plane" in c]
    # the joined control plane's kube-controller-manager manifest is merged after the join too
    assert cp2.index(join) < cp2.index(READ_MANIFEST)
    order = plan_order(ok(run_pyinfra(bed.inventory(states), "--dry", "--json")))
    assert order.index(INIT) < order.index(CP_JOIN) < order.index(WORKER_JOIN)


def test_a_failing_token_request_stops_the_join_with_kubeadms_message(bed):
    run = failed_on_fresh_machines(bed, "token create", "error: unable to create token: connection refused")
    assert ("@fake/cp1: `/usr/local/bin/kubeadm token create` for the join token failed: error: unable to create "
            "token: connection refused") in run.output


def test_a_failed_kubeadm_init_stops_the_joins_naming_the_control_plane(bed):
    # seen with the real kubeadm (tests/test_bootstrap_e2e.py's machine without its preflight switches): the
    # workers went on and asked a control plane without admin.conf for a token
    failing = {"kubeadm init": {"success": False, "stderr": ["[ERROR SystemVerification]: cgroups v1 support is "
                                                             "deprecated"]}}
    run = run_pyinfra(bed.inventory({h: bed.fresh(h) for h in bed.hosts}, cp_responses=failing), "-y")
    assert run.returncode != 0
    for worker in (W1, W2):
        assert (f"{worker}: not joining: {CP}, which creates the cluster, failed earlier in this run (its error is "
                "above); fix that and rerun") in run.output
    assert not [c for c in run.commands(CP) if "token create" in c]


def test_bootstrap_is_off_by_default(bed):
    bed.extra = {"cluster_bootstrap": False}
    states = {h: bed.fresh(h) for h in bed.hosts}
    states[CP].contents[KCM_MANIFEST] = KUBEADM_MANIFEST_POD_SUBNET.encode()
    states[CP].queries = {"flannel_manifest": (0, []), "pod_cidrs": (0, [])}
    before = dict(bed.server.requests)
    run = ok(run_pyinfra(bed.inventory(states), "--dry", "--json"))
    assert not [op for op in run.plan() if op.startswith("kubeadm:")]
    fetched = [path for path, n in bed.server.requests.items() if n > before.get(path, 0)]
    assert fetched and not [path for path in fetched if path.endswith(("/kubeadm", "/kubelet", "/kubectl"))]
    assert not [c for h in bed.hosts for c in run.commands(h) if "kubeadm" in c or "swap" in c]


def test_a_kubernetes_version_without_checksum_fails_naming_the_setting(bed):
    bed.extra = {"kubernetes_version": "1.36.0", "resolve_checksums": False}
    run = run_pyinfra(bed.inventory({h: bed.fresh(h) for h in bed.hosts}), "-y")
    assert run.returncode != 0
    assert ("kubeadm 1.36.0 amd64: no sha256 is pinned or locked, and resolve_checksums is false; files/artifacts.yaml "
            "pins kubeadm for amd64 at 1.34.4, 1.35.1; to use 1.36.0, pin it in your inventory's group data: artifact_checksums = {'kubeadm': {'1.36.0': {'amd64': '<sha256>'}}}") in run.output
    for host in bed.hosts:
        assert run.uploads(host) == []


# --- kubeadm upgrade keeps podnet's flags: the kubeadm-config ConfigMap ---------------------------

V1BETA3_RECORDED = V1BETA3_KUBEADM_1_30.replace("controllerManager: {}\n", """\
controllerManager:
  extraArgs:
    allocate-node-cidrs: 'true'
    cluster-cidr: 10.244.0.0/16
    node-cidr-mask-size: '24'
    service-cluster-ip-range: 10.96.0.0/12
""")
V1BETA4_RECORDED = V1BETA4_KUBEADM_1_35.replace("controllerManager: {}\n", """\
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


def existing_kubeadm_cluster(bed, cluster_configuration: str | None) -> dict[str, NodeState]:
    """A cluster made with kubeadm before podnet (cluster_bootstrap off); podnet already merged the
    manifest, and the kubeadm-config ConfigMap holds ``cluster_configuration`` (None: no ConfigMap)."""
    bed.extra = {"cluster_bootstrap": False}
    states = {h: bed.converged(h) for h in bed.hosts}
    states[CP].queries[kubeadm_config.QUERY] = kubeadm_config_answer(cluster_configuration, "4711")
    return states


def patches(run: Run, host: str) -> list[dict]:
    """The JSON merge patches kubectl was asked to apply to kubeadm-config on ``host``."""
    return [json.loads(shlex.split(c)[-1]) for c in run.commands(host) if c.startswith(PATCH_KUBEADM_CONFIG)]


@pytest.mark.parametrize("stored, recorded", [(V1BETA3_KUBEADM_1_30, V1BETA3_RECORDED),
                                              (V1BETA4_KUBEADM_1_35, V1BETA4_RECORDED)],
                         ids=["v1beta3", "v1beta4"])
def test_an_existing_kubeadm_cluster_gets_the_flags_recorded_in_kubeadm_config(bed, stored, recorded):
    run = ok(run_pyinfra(bed.inventory(existing_kubeadm_cluster(bed, stored)), "-y"))
    assert patches(run, CP) == [{"metadata": {"resourceVersion": "4711"}, "data": {"ClusterConfiguration": recorded}}]
    cp = run.commands(CP)
    assert len(cp) == 2 and cp[0].startswith(PROBE_MARK)  # the probe, then the one kubectl patch
    for worker in (W1, W2):
        assert run.commands(worker) == [run.commands(worker)[0]] and run.commands(worker)[0].startswith(PROBE_MARK)
    assert run.uploads(CP) == []  # the manifest was already right: nothing else changed


def test_dry_run_shows_the_kubeadm_config_change_and_does_not_make_it(bed):
    run = ok(run_pyinfra(bed.inventory(existing_kubeadm_cluster(bed, V1BETA4_KUBEADM_1_35)), "--dry", "--json"))
    assert {op: hosts for op, hosts in run.plan().items() if hosts} == {KUBEADM_CONFIG: [CP]}
    assert ("@fake/cp1: recording allocate-node-cidrs=true, cluster-cidr=10.244.0.0/16, node-cidr-mask-size=24, "
            "service-cluster-ip-range=10.96.0.0/12 in ConfigMap kube-system/kubeadm-config (kubeadm.k8s.io/v1beta4 "
            "controllerManager.extraArgs), from which kubeadm upgrade regenerates the kube-controller-manager "
            "manifest") in run.output
    assert patches(run, CP) == [] and len(run.commands(CP)) == 1


def test_dry_run_with_diff_shows_the_cluster_configuration_lines_that_change(bed):
    run = ok(run_pyinfra(bed.inventory(existing_kubeadm_cluster(bed, V1BETA3_KUBEADM_1_30)), "--dry", "--diff"))
    shown = [line.strip() for line in run.output.splitlines()]
    start = shown.index("+++ ConfigMap kube-system/kubeadm-config ClusterConfiguration (podnet)")
    assert shown[start + 1:start + 12] == [
        "@@ -5,7 +5,12 @@", "apiVersion: kubeadm.k8s.io/v1beta3", "certificatesDir: /etc/kubernetes/pki",
        "clusterName: kubernetes", "-controllerManager: {}", "+controllerManager:", "+  extraArgs:",
        "+    allocate-node-cidrs: 'true'", "+    cluster-cidr: 10.244.0.0/16", "+    node-cidr-mask-size: '24'",
        "+    service-cluster-ip-range: 10.96.0.0/12"]
    assert patches(run, CP) == []


def test_kubeadm_config_with_the_flags_is_left_alone(bed):
    states = existing_kubeadm_cluster(bed, V1BETA4_RECORDED)
    plan = ok(run_pyinfra(bed.inventory(states), "--dry", "--json")).plan()
    assert plan[KUBEADM_CONFIG] == []
    assert {op: hosts for op, hosts in plan.items() if hosts} == {}
    run = ok(run_pyinfra(bed.inventory(states), "-y"))
    for host in bed.hosts:
        assert len(run.commands(host)) == 1 and run.uploads(host) == []


def test_a_cluster_without_kubeadm_config_is_not_kubeadm_managed(bed):
    run = ok(run_pyinfra(bed.inventory(existing_kubeadm_cluster(bed, None)), "-y"))
    assert patches(run, CP) == [] and len(run.commands(CP)) == 1


def test_a_changed_flag_reaches_the_manifest_and_kubeadm_config(bed):
    states = existing_kubeadm_cluster(bed, V1BETA4_RECORDED)
    bed.extra["service_cluster_ip_range"] = "10.32.0.0/16"
    run = ok(run_pyinfra(bed.inventory(states), "-y"))
    assert "/etc/kubernetes/manifests/.kube-controller-manager.yaml.podnet-new" in run.uploads(CP)
    recorded = V1BETA4_RECORDED.replace("value: 10.96.0.0/12", "value: 10.32.0.0/16")
    assert patches(run, CP) == [{"metadata": {"resourceVersion": "4711"}, "data": {"ClusterConfiguration": recorded}}]


def test_kubectl_failing_on_the_control_plane_stops_the_run_naming_the_kubeconfig(bed):
    states = existing_kubeadm_cluster(bed, None)
    states[CP].queries[kubeadm_config.QUERY] = (1, [])
    states[CP].query_stderr[kubeadm_config.QUERY] = "The connection to the server 192.168.56.11:6443 was refused"
    run = run_pyinfra(bed.inventory(states), "-y")
    assert run.returncode != 0
    assert ("@fake/cp1: reading ConfigMap kube-system/kubeadm-config with kubectl failed: The connection to the server "
            "192.168.56.11:6443 was refused; podnet records the node IPAM flags there on kubeadm clusters: check that "
            "kubectl is installed and kubeconfig /etc/kubernetes/admin.conf works") in run.output
    for host in bed.hosts:
        assert len(run.commands(host)) <= 1 and run.uploads(host) == []


def test_a_cluster_configuration_podnet_cannot_read_stops_the_run_before_any_change(bed):
    states = existing_kubeadm_cluster(bed, V1BETA3_KUBEADM_1_30.replace("v1beta3", "v1beta2"))
    states[W1].hashes[kubeadm.KUBELET_DEFAULTS_PATH] = "0" * 64  # something that would change elsewhere
    run = run_pyinfra(bed.inventory(states), "-y")
    assert run.returncode != 0
    assert ("@fake/cp1: ConfigMap kube-system/kubeadm-config: ClusterConfiguration has apiVersion "
            "'kubeadm.k8s.io/v1beta2'; podnet records the node IPAM flags in kubeadm.k8s.io/v1beta3") in run.output
    for host in bed.hosts:
        assert run.uploads(host) == []


def test_a_cluster_created_in_this_run_gets_the_flags_from_the_init_configuration(bed):
    # kubeadm init stores podnet's ClusterConfiguration in kubeadm-config itself: no patch.
    run = ok(run_pyinfra(bed.inventory({h: bed.fresh(h) for h in bed.hosts}), "-y"))
    assert "/usr/local/bin/kubeadm init --config /etc/podnet/kubeadm-init.yaml --skip-token-print" in run.commands(CP)
    assert patches(run, CP) == []


# --- the kubeadm release podnet can configure ---------------------------------------------------------


@pytest.mark.parametrize("version", ["1.21.14", "1.37.0", "2.0.0"])
def test_a_kubernetes_version_podnet_cannot_configure_fails_before_any_host_is_touched(bed, version):
    states = {h: bed.fresh(h) for h in bed.hosts}  # the nodes as they are; only the inventory asks for it
    bed.extra = {"kubernetes_version": version}
    run = run_pyinfra(bed.inventory(states), "-y")
    assert run.returncode != 0
    assert (f"kubernetes_version: '{version}' is not supported with cluster_bootstrap; expected a Kubernetes release "
            "from 1.22.0 to 1.36.x (podnet writes kubeadm's configuration as kubeadm.k8s.io/v1beta3 for 1.22-1.30 and "
            "kubeadm.k8s.io/v1beta4 for 1.31-1.36)") in run.output
    for host in bed.hosts:
        assert run.commands(host) == []  # not even the probe


def test_kubernetes_1_30_gets_a_v1beta3_init_configuration(bed):
    bed.extra = {"kubernetes_version": V1BETA3_VERSION}
    run = ok(run_pyinfra(bed.inventory({h: bed.fresh(h) for h in bed.hosts}), "--dry", "--diff"))
    shown = [line.strip() for line in run.output.splitlines()]
    start = shown.index("+++ /etc/podnet/kubeadm-init.yaml (podnet)")
    init = [line[1:] for line in shown[start + 2:start + 36]]
    assert init[:3] == ["# Managed by podnet: what `kubeadm init` ran with on this host (cluster_bootstrap).",
                        "apiVersion: kubeadm.k8s.io/v1beta3", "kind: InitConfiguration"]
    assert init[init.index("kind: ClusterConfiguration") - 1] == "apiVersion: kubeadm.k8s.io/v1beta3"
    assert init[init.index("  extraArgs:") + 1:init.index("  extraArgs:") + 5] == [
        '    "allocate-node-cidrs": "true"', '    "cluster-cidr": "10.244.0.0/16"', '    "node-cidr-mask-size": "24"',
        '    "service-cluster-ip-range": "10.96.0.0/12"']


def test_kubernetes_version_is_not_checked_without_cluster_bootstrap():
    """Only the pause image depends on it then: an unknown release needs sandbox_image set."""
    assert parse_inventory([FakeHost("cp1", {"kubernetes_version": "1.19.0", "sandbox_image": "registry.k8s.io/pause:3.2"},
                                     ["control_plane"])])
    with pytest.raises(SettingsError) as error:
        parse_inventory([FakeHost("cp1", {"kubernetes_version": "1.19.0"}, ["control_plane"])])
    assert error.value.problems == [
        "cp1: sandbox_image: unset, and kubernetes_version '1.19.0' has no pause image in podnet's table (1.22, 1.23, "
        "1.24, 1.25, 1.26-1.30, 1.31-1.33, 1.34-1.35, 1.36); set sandbox_image to the pause image your kubelet's "
        "release uses"]
    with pytest.raises(SettingsError) as error:
        parse_inventory([FakeHost("cp1", {"kubernetes_version": "1.19.0", "cluster_bootstrap": True,
                                          "node_ip": "192.168.56.11"}, ["control_plane"])])
    assert error.value.problems == [
        "cp1: kubernetes_version: '1.19.0' is not supported with cluster_bootstrap; expected a Kubernetes release from "
        "1.22.0 to 1.36.x (podnet writes kubeadm's configuration as kubeadm.k8s.io/v1beta3 for 1.22-1.30 and "
        "kubeadm.k8s.io/v1beta4 for 1.31-1.36)"]


@pytest.mark.parametrize("version, api_version", [
    ("1.22.0", "kubeadm.k8s.io/v1beta3"), ("1.30.14", "kubeadm.k8s.io/v1beta3"), ("1.31.0", "kubeadm.k8s.io/v1beta4"),
    ("1.31.0-rc.1", "kubeadm.k8s.io/v1beta4"), ("1.35.1", "kubeadm.k8s.io/v1beta4"), ("1.36.2", "kubeadm.k8s.io/v1beta4"),
])
def test_the_configuration_format_follows_the_kubeadm_release(version, api_version):
    assert kubeadm.config_api(version) == api_version
    init, cluster, kubelet = yaml.safe_load_all(kubeadm.init_config(s_for(kubernetes_version=version)))
    assert (init["apiVersion"], cluster["apiVersion"], cluster["kubernetesVersion"]) == (
        api_version, api_version, f"v{version}")
    flags = {"allocate-node-cidrs": "true", "cluster-cidr": "10.244.0.0/16", "node-cidr-mask-size": "24",
             "service-cluster-ip-range": "10.96.0.0/12"}
    if api_version == "kubeadm.k8s.io/v1beta3":
        assert cluster["controllerManager"] == {"extraArgs": flags}
    else:
        assert cluster["controllerManager"] == {"extraArgs": [{"name": k, "value": v} for k, v in flags.items()]}
    assert kubelet == {"apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
                       "cgroupDriver": "systemd"}


@pytest.mark.parametrize("version", ["1.21.14", "1.37.0", "0.36.0"])
def test_no_configuration_is_rendered_for_a_release_outside_the_range(version):
    with pytest.raises(ValueError, match=r"^a Kubernetes release from 1.22.0 to 1.36.x"):
        kubeadm.config_api(version)
    with pytest.raises(SettingsError) as error:  # the settings refuse it before anything renders
        s_for(kubernetes_version=version)
    assert error.value.problems[0].startswith(f"kubernetes_version: '{version}' is not supported with "
                                              "cluster_bootstrap; expected a Kubernetes release from 1.22.0")


# --- what kubeadm and the kubelet are given --------------------------------------------------


def s_for(**data) -> Settings:
    return parse_host_settings({"cluster_bootstrap": True, "node_ip": "192.168.56.11", **data}, "cp1",
                               ["control_plane"])


def test_init_configuration_carries_the_settings():
    s = s_for(cluster_cidr="10.200.0.0/16", node_cidr_mask_size=25, service_cluster_ip_range="10.32.0.0/16")
    init, cluster, kubelet = yaml.safe_load_all(kubeadm.init_config(s))
    assert init["kind"] == "InitConfiguration"
    assert init["localAPIEndpoint"] == {"advertiseAddress": "192.168.56.11", "bindPort": 6443}
    # the token kubeadm init makes anyway: no value of podnet's (kubeadm generates it), expiring at once
    assert init["bootstrapTokens"] == [{"description": "podnet: unused (each join gets a token of its own)",
                                        "ttl": "1s"}]
    assert init["nodeRegistration"]["criSocket"] == "unix:///run/containerd/containerd.sock"
    assert cluster["kubernetesVersion"] == f"v{VERSION}"
    assert cluster["controlPlaneEndpoint"] == "192.168.56.11:6443"
    assert cluster["networking"] == {"podSubnet": "10.200.0.0/16", "serviceSubnet": "10.32.0.0/16"}
    args = {a["name"]: a["value"] for a in cluster["controllerManager"]["extraArgs"]}
    assert args == {"allocate-node-cidrs": "true", "cluster-cidr": "10.200.0.0/16", "node-cidr-mask-size": "25",
                    "service-cluster-ip-range": "10.32.0.0/16"}
    assert kubelet == {"apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
                       "cgroupDriver": "systemd"}


@pytest.mark.parametrize("version", ["1.30.14", "1.36.2"])
def test_init_configuration_carries_the_operators_kubeadm_switches(version):
    # the switches the test machine needs (testbed/bootbed.py), where kubeadm 1.36.2 read them for real
    s = s_for(kubernetes_version=version, etcd_external_endpoints=["http://127.0.0.1:2379"],
              kubeadm_ignore_preflight_errors=["SystemVerification", "ImagePull"],
              kubelet_configuration={"failCgroupV1": False, "evictionHard": {"nodefs.available": "1%"}},
              kube_proxy_configuration={"conntrack": {"maxPerCore": 0, "tcpEstablishedTimeout": "0s"}})
    init, cluster, kubelet, proxy = yaml.safe_load_all(kubeadm.init_config(s))
    assert init["nodeRegistration"]["ignorePreflightErrors"] == ["SystemVerification", "ImagePull"]
    assert cluster["etcd"] == {"external": {"endpoints": ["http://127.0.0.1:2379"]}}
    assert kubelet == {"apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
                       "cgroupDriver": "systemd", "failCgroupV1": False, "evictionHard": {"nodefs.available": "1%"}}
    assert proxy == {"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
                     "conntrack": {"maxPerCore": 0, "tcpEstablishedTimeout": "0s"}}
    join = yaml.safe_load(kubeadm.join_config("192.168.56.11:6443", TOKEN, CA_HASH, s))
    assert join["nodeRegistration"]["ignorePreflightErrors"] == ["SystemVerification", "ImagePull"]


@pytest.mark.parametrize("version, api_version", [("1.30.14", "kubeadm.k8s.io/v1beta3"),
                                                  ("1.36.2", "kubeadm.k8s.io/v1beta4")])
def test_the_join_configuration_carries_the_join_secrets_for_kubeadm_join_config(version, api_version):
    worker = s_for(kubernetes_version=version)
    assert yaml.safe_load(kubeadm.join_config("192.168.56.11:6443", TOKEN, CA_HASH, worker)) == {
        "apiVersion": api_version, "kind": "JoinConfiguration",
        "discovery": {"bootstrapToken": {"apiServerEndpoint": "192.168.56.11:6443", "token": TOKEN,
                                         "caCertHashes": [CA_HASH]}},
        "nodeRegistration": {"criSocket": "unix:///run/containerd/containerd.sock"}}
    control_plane = yaml.safe_load(kubeadm.join_config("192.168.56.11:6443", TOKEN, CA_HASH, worker, CERTIFICATE_KEY))
    assert control_plane["controlPlane"] == {"localAPIEndpoint": {"advertiseAddress": str(worker.node_ip),
                                                                  "bindPort": 6443},
                                             "certificateKey": CERTIFICATE_KEY}


def test_init_configuration_follows_containerds_cgroup_driver_and_dual_stack():
    s = s_for(systemd_cgroup=False, cluster_cidr_ipv6="fd00:10:244::/56",
              service_cluster_ip_range_ipv6="fd00:10:96::/112")
    _, cluster, kubelet = yaml.safe_load_all(kubeadm.init_config(s))
    assert kubelet["cgroupDriver"] == "cgroupfs"
    assert cluster["networking"] == {"podSubnet": "10.244.0.0/16,fd00:10:244::/56",
                                     "serviceSubnet": "10.96.0.0/12,fd00:10:96::/112"}
    args = {a["name"]: a["value"] for a in cluster["controllerManager"]["extraArgs"]}
    assert args["node-cidr-mask-size-ipv4"] == "24" and args["node-cidr-mask-size-ipv6"] == "64"
    assert "node-cidr-mask-size" not in args


def test_kubeadm_writes_what_the_controller_manager_step_would_merge():
    # The manifest kubeadm writes from this configuration already holds the node IPAM flags
    # (kubeadm's own flags, the extraArgs winning, sorted by name), so the merge after init
    # finds nothing to change and kube-controller-manager is not restarted.
    s = s_for(cluster_cidr="10.200.0.0/16", node_cidr_mask_size=25)
    _, cluster, _ = yaml.safe_load_all(kubeadm.init_config(s))
    flags = {f.split("=")[0]: f for f in KUBEADM_COMMAND_POD_SUBNET[1:]}
    flags.update({f"--{a['name']}": f"--{a['name']}={a['value']}" for a in cluster["controllerManager"]["extraArgs"]})
    manifest = kubeadm_manifest(["kube-controller-manager", *sorted(flags.values())])
    assert controller_manager.merge_manifest(manifest, controller_manager.desired_flags(s)) is None
    # ... while kubeadm's manifest without them would be changed
    assert controller_manager.merge_manifest(KUBEADM_MANIFEST_POD_SUBNET, controller_manager.desired_flags(s))


def test_kubelet_gets_the_node_ip_through_kubeadms_drop_in():
    unit, dropin, defaults = kubeadm.kubelet_files(s_for())
    assert (unit.path, dropin.path, defaults.path) == (
        "/etc/systemd/system/kubelet.service", "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf",
        "/etc/default/kubelet")
    assert "ExecStart=/usr/local/bin/kubelet\n" in unit.content.decode()
    text = dropin.content.decode()
    assert "EnvironmentFile=-/etc/default/kubelet\n" in text
    assert text.rstrip().endswith("ExecStart=/usr/local/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS "
                                  "$KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS")
    assert defaults.content.decode().splitlines()[-1] == "KUBELET_EXTRA_ARGS=--node-ip=192.168.56.11"


def test_join_answers_are_parsed_strictly():
    assert kubeadm.parse_join_command(["W0101 some warning", JOIN_OUTPUT[0]]) == (
        "192.168.56.11:6443", TOKEN, CA_HASH)
    assert kubeadm.parse_join_command(["kubeadm join 1.2.3.4:6443 --token x; rm -rf / --discovery-token-ca-cert-hash "
                                       f"{CA_HASH}"]) is None
    assert kubeadm.parse_certificate_key(UPLOAD_CERTS_OUTPUT) == CERTIFICATE_KEY
    assert kubeadm.parse_certificate_key(UPLOAD_CERTS_OUTPUT[:2]) is None


def test_host_commands_get_the_operations_connector_arguments():
    seen = []
    HostCommand(lambda state, host, arguments, x: seen.append((arguments, x)) or True, (7,), {}).execute(
        None, "host", {"_sudo": True, "_sudo_user": None})
    assert seen == [({"_sudo": True, "_sudo_user": None}, 7)]


# --- settings that bootstrap needs -----------------------------------------------------------


def problems(*hosts: FakeHost) -> list[str]:
    with pytest.raises(SettingsError) as error:
        parse_inventory(hosts)
    return error.value.problems


def test_bootstrap_needs_a_node_ip():
    assert problems(FakeHost("cp1", {"cluster_bootstrap": True}, ["control_plane"])) == [
        "cp1: node_ip: not set; cluster_bootstrap needs each node's own address (kubelet --node-ip, and the API "
        "server's advertise address on the first control-plane host): set node_ip, or name the host by its address"]


def test_bootstrap_refuses_settings_kubeadm_does_not_follow():
    found = problems(FakeHost("cp1", {"cluster_bootstrap": True, "node_ip": "192.168.56.11",
                                      "kubeconfig": "/root/.kube/config", "flannel_rollout": "systemd"},
                              ["control_plane"]))
    assert found == [
        "cp1: flannel_rollout: 'systemd' cannot be used with cluster_bootstrap; flanneld's ServiceAccount and "
        "token are made with kubectl on the first control-plane host, before kubeadm has created the cluster there: "
        "use 'daemonset'",
        "cp1: kubeconfig: '/root/.kube/config' cannot be used with cluster_bootstrap; kubeadm writes "
        "/etc/kubernetes/admin.conf: remove the setting"]


def test_bootstrap_needs_a_control_plane_host():
    assert problems(FakeHost("w1", {"cluster_bootstrap": True, "node_ip": "192.168.56.21",
                                    "flannel_rollout": "external"}, ["workers"])) == [
        "control_plane_group: no host is in group 'control_plane'; cluster_bootstrap runs kubeadm init on the "
        "first control-plane host"]


def test_daemonset_iface_is_each_nodes_own_address_or_one_name_for_all():
    mixed = problems(FakeHost("cp1", {"node_ip": "192.168.56.11", "flannel_iface": "192.168.56.11"},
                              ["control_plane"]),
                     FakeHost("w1", {"node_ip": "192.168.56.21", "flannel_iface": "eth1"}, ["workers"]))
    assert mixed == [
        "flannel_iface: the kube-flannel DaemonSet gives every node the same --iface, but only some hosts set it to "
        "their node_ip (w1 do not: 'eth1'); set flannel_iface to its own node_ip on every host, or one interface "
        "name on every host"]
    parsed = parse_inventory([FakeHost("cp1", {"node_ip": "192.168.56.11", "flannel_iface": "192.168.56.11"},
                                       ["control_plane"]),
                              FakeHost("w1", {"node_ip": "192.168.56.21", "flannel_iface": "192.168.56.21"},
                                       ["workers"])])
    docs = [d for d in yaml.safe_load_all(flannel.render_manifest(parsed["cp1"])) if d]
    container = next(d for d in docs if d["kind"] == "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["--ip-masq", "--kube-subnet-mgr", "--healthz-port=8081", "--iface=$(POD_IP)"]
    assert {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}} in container["env"]
