"""
Plan tests: ``deploy.py`` through the real pyinfra CLI against two ``@fake`` hosts (a
kubeadm control plane and a worker). Each host's probe answer is scripted with the fake
connector's ``fake_responses``; release files are tiny real tarballs served from a mirror
on 127.0.0.1 (``mirror_url`` + ``artifact_checksums``), downloaded into a temporary cache.

What the runs show:
- ``pyinfra --debug``: the fake connector logs every command and upload it is given, so
  the tests see exactly what would run on each host (``-y`` without ``--dry`` executes
  the plan against the fake hosts, which run nothing).
- ``pyinfra --dry --json`` (without ``-y``, which would skip change detection): which
  operation would change which host.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tasks import containerd, flannel, interrupted
from tasks.engine import ops
from tasks.engine.probe import DIGEST_CACHE, ProbeRequest, parse_probe, probe_script
from tests.support.http import Reply
from tests.support.kubeadm import KUBEADM_MANIFEST
from tests.support.plan import (
    CP,
    FLANNEL_TOKEN,
    HOSTS,
    PROBE_MARK,
    REPO,
    WORKER,
    Cluster,
    FakeNode,
    assert_ok,
    installed_binaries,
    probe_answer,
    probes,
    run_pyinfra,
    service_account_token,
    write_inventory,
)

EVERY_NODE_OPS = [
    "kernel: modules-load.d and sysctl.d files",
    "kernel: overlay and br_netfilter loaded",
    "kernel: bridge-nf-call and ip_forward applied",
    "containerd: runc binary",
    "containerd: containerd binaries",
    "containerd: systemd unit",
    "containerd: config.toml (checked by containerd first)",
    "containerd: enabled and running",
    "cni: plugin binaries",
    "cni: 10-flannel.conflist",
]
CONTROL_PLANE_OPS = [
    "kube-controller-manager: keep a backup before changing flags",
    "kube-controller-manager: node IPAM flags",
    "flannel: kube-flannel manifest",
    "flannel: DaemonSet applied",
    "flannel: DaemonSet rolled out, every flannel pod Ready",
    "flannel: every node has a podCIDR in the cluster CIDR",
]


# --- (a) one round trip per host ------------------------------------------------------


def test_the_probe_is_the_only_command_per_host(cluster):
    run = run_pyinfra(cluster.inventory(cluster.fresh(CP), cluster.fresh(WORKER)), "-y", "--dry")
    assert_ok(run)
    for host in HOSTS:
        commands = run.commands(host)
        assert len(commands) == 1, commands
        assert commands[0].startswith(PROBE_MARK)
        assert run.uploads(host) == []


def test_executing_the_plan_asks_each_host_once(cluster):
    run = run_pyinfra(cluster.inventory(cluster.fresh(CP), cluster.fresh(WORKER)), "-y")
    assert_ok(run)
    for host in HOSTS:
        assert len(probes(run, host)) == 1
        assert len(run.commands(host)) > 1  # the changes ran after it, without asking again


# --- (b) a fresh host -------------------------------------------------------------------


def test_fresh_hosts_plan(cluster):
    run = run_pyinfra(cluster.inventory(cluster.fresh(CP), cluster.fresh(WORKER)), "--dry", "--json")
    assert_ok(run)
    plan = run.plan()
    for op in EVERY_NODE_OPS:
        assert plan[op] == sorted(HOSTS), op
    for op in CONTROL_PLANE_OPS:
        assert plan[op] == [CP], op
    assert plan["cni: no other config sorts ahead of ours"] == []


def test_fresh_hosts_get_binaries_configs_modules_sysctls_and_containerd(cluster):
    run = run_pyinfra(cluster.inventory(cluster.fresh(CP), cluster.fresh(WORKER)), "-y")
    assert_ok(run)
    for host in HOSTS:
        uploads = set(run.uploads(host))
        commands = run.commands(host)
        # every file goes to a hidden staged name in its own directory, then is renamed; an archive's members
        # are unpacked there on the node from the archive, which is what is sent (once)
        members = ["/usr/local/bin/containerd", "/usr/local/bin/containerd-shim-runc-v2", "/usr/local/bin/ctr",
                   "/opt/cni/bin/bridge", "/opt/cni/bin/host-local", "/opt/cni/bin/portmap", "/opt/cni/bin/loopback",
                   "/opt/cni/bin/flannel"]
        for path in ["/usr/local/sbin/runc", "/etc/systemd/system/containerd.service", "/etc/containerd/config.toml",
                     "/etc/cni/net.d/10-flannel.conflist", "/etc/modules-load.d/podnet.conf",
                     "/etc/sysctl.d/zz-podnet.conf", *members]:
            directory, name = path.rsplit("/", 1)
            staged = f"{directory}/.{name}.podnet-new"
            assert (staged in uploads) == (path not in members), (host, path)
            assert any(f"mv -f {staged} {path}" in c for c in commands), (host, path)
        assert not [u for u in uploads if not u.endswith(".podnet-new")]
        archives = sorted(u.split("-", 1)[1] for u in uploads if u.startswith("/var/lib/podnet/releases/."))
        assert archives == sorted(f"{Path(cluster.releases.upstream_path(name)).name}.podnet-new"
                                  for name in ("containerd", "cni_plugins", "flannel_cni_plugin")), archives
        # on a fresh node the releases directory is made (root-only) before the first archive is sent into it
        lines = run.stderr.splitlines()
        made = next(i for i, line in enumerate(lines) if f"simulating command on {host}: " in line
                    and "mkdir -p -m 0700 /var/lib/podnet/releases" in line)
        sent = next(i for i, line in enumerate(lines) if f"simulating put_file on {host}: /var/lib/podnet/releases/" in line)
        assert made < sent
        assert "modprobe -a overlay br_netfilter" in commands
        assert ("sysctl -q -w net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1 "
                "net.ipv4.ip_forward=1") in commands
        assert ("systemctl daemon-reload && systemctl enable containerd.service && "
                "systemctl start containerd.service && rm -f /var/lib/podnet/restart-pending/containerd.service") \
            in commands
        config_step = [c for c in commands if 'config dump >"$t"' in c and ".config.toml.podnet-new" in c]
        assert len(config_step) == 1
        # containerd checks the staged config before it replaces the live one
        assert config_step[0].index("config dump") < config_step[0].index("mv -f")
        # order: kernel, then containerd installed before it is started, CNI config after containerd
        position = {c: i for i, c in enumerate(commands)}
        assert position["modprobe -a overlay br_netfilter"] < position[
            "systemctl daemon-reload && systemctl enable containerd.service && systemctl start containerd.service"
            " && rm -f /var/lib/podnet/restart-pending/containerd.service"]
    cp_commands = run.commands(CP)
    assert any(c.startswith("mkdir -p /var/lib/podnet/backup && cp -p /etc/kubernetes/manifests/"
                            "kube-controller-manager.yaml /var/lib/podnet/backup/kube-controller-manager.yaml.")
               for c in cp_commands)
    assert "/etc/kubernetes/manifests/.kube-controller-manager.yaml.podnet-new" in run.uploads(CP)
    assert "kubectl --kubeconfig=/etc/kubernetes/admin.conf apply -f /etc/podnet/kube-flannel.yml" in cp_commands
    assert not [c for c in run.commands(WORKER) if "kubectl" in c or "kube-controller-manager" in c]


def test_each_artifact_is_downloaded_once_and_then_cached(cluster):
    before = dict(cluster.server.requests)
    inventory = cluster.inventory(cluster.fresh(CP), cluster.fresh(WORKER))
    assert_ok(run_pyinfra(inventory, "-y", "--dry"))
    fetched = {path: n - before.get(path, 0) for path, n in cluster.server.requests.items()}
    expected = {"/" + cluster.releases.upstream_path(name) for name in
                ("containerd", "runc", "cni_plugins", "flannel_cni_plugin")}
    assert {path for path, n in fetched.items() if n} == expected
    assert all(fetched[path] == 1 for path in expected)  # two hosts, one download each
    again = dict(cluster.server.requests)
    assert_ok(run_pyinfra(inventory, "-y", "--dry"))
    assert dict(cluster.server.requests) == again  # the second run is served by the cache


def unpinned_flannel(cluster: Cluster) -> dict:
    """The release pins without the flannel CNI plugin's: podnet must resolve that one."""
    return {name: versions for name, versions in cluster.releases.checksums().items() if name != "flannel_cni_plugin"}


def test_an_unpinned_sum_is_resolved_once_locked_and_then_read_from_the_lock(cluster):
    flannel = "/" + cluster.releases.upstream_path("flannel_cni_plugin")
    sha = hashlib.sha256(cluster.releases.files["flannel_cni_plugin"]).hexdigest()
    cluster.server.script(flannel + ".sha256", Reply(body=f"{sha}  {Path(flannel).name}\n".encode()))
    inventory = cluster.inventory(cluster.fresh(CP), cluster.fresh(WORKER), artifact_checksums=unpinned_flannel(cluster))
    before = cluster.server.requests[flannel + ".sha256"]
    run = run_pyinfra(inventory, "-y")
    assert_ok(run)
    lock = cluster.tmp / "artifacts.lock.yaml"
    source = cluster.server.url + flannel + ".sha256"
    assert cluster.server.requests[flannel + ".sha256"] - before == 1  # two hosts, one question
    assert run.stderr.count("podnet: resolved 1 sha256") == 1
    assert (f"podnet: resolved 1 sha256 from upstream's published checksums and recorded them in {lock}:\n"
            f"  flannel_cni_plugin 1.9.1-flannel3 amd64  sha256 {sha}  from {source}\n"
            f"podnet: commit {lock}: later runs read these sums from it and ask upstream nothing.") in run.stderr
    assert f"sha256: {sha}" in lock.read_text()
    # upstream's checksum file is gone: the lock answers, nothing is printed about resolving
    cluster.server.script(flannel + ".sha256", Reply(status=404))
    again = run_pyinfra(inventory, "-y", "--dry")
    assert_ok(again)
    assert cluster.server.requests[flannel + ".sha256"] - before == 1
    assert "podnet: resolved" not in again.stderr


def test_no_published_sum_stops_the_run_before_any_change(cluster):
    flannel = "/" + cluster.releases.upstream_path("flannel_cni_plugin")
    cluster.server.script(flannel + ".sha256", Reply(status=404))
    run = run_pyinfra(cluster.inventory(cluster.fresh(CP), cluster.fresh(WORKER),
                                        artifact_checksums=unpinned_flannel(cluster)), "-y")
    assert run.returncode != 0
    assert (f"flannel_cni_plugin 1.9.1-flannel3 amd64: no sha256 is pinned or locked, and upstream's published sum "
            f"cannot be used: could not download {cluster.server.url}{flannel}.sha256: HTTP 404; ") in run.stderr
    assert not (cluster.tmp / "artifacts.lock.yaml").exists()
    for host in HOSTS:
        assert run.commands(host) == probes(run, host)
        assert run.uploads(host) == []


def test_mirror_credentials_are_in_no_output_and_not_in_the_lock(cluster):
    flannel = "/" + cluster.releases.upstream_path("flannel_cni_plugin")
    sha = hashlib.sha256(cluster.releases.files["flannel_cni_plugin"]).hexdigest()
    cluster.server.script(flannel + ".sha256", Reply(body=f"{sha}  {Path(flannel).name}\n".encode()))
    mirror = cluster.server.url.replace("http://", "http://deploy:S3cr3t@")
    checksums = unpinned_flannel(cluster)
    checksums["runc"] = {"1.4.3": {"amd64": "f" * 64}}  # and a mismatch, so that an error names the mirror too
    run = run_pyinfra(cluster.inventory(cluster.fresh(CP), cluster.fresh(WORKER), mirror_url=mirror,
                                        artifact_checksums=checksums), "-y", "-vvv")
    assert run.returncode != 0
    shown = cluster.server.url.replace("http://", "http://***@")
    assert f"  flannel_cni_plugin 1.9.1-flannel3 amd64  sha256 {sha}  from {shown}{flannel}.sha256" in run.stderr
    assert f"checksum mismatch for runc 1.4.3 amd64 ({shown}/" in run.stderr
    assert f"source: {shown}{flannel}.sha256" in (cluster.tmp / "artifacts.lock.yaml").read_text()
    assert "S3cr3t" not in run.output + (cluster.tmp / "artifacts.lock.yaml").read_text()


def test_the_lock_command_writes_the_lock_without_touching_a_host(cluster):
    flannel = "/" + cluster.releases.upstream_path("flannel_cni_plugin")
    sha = hashlib.sha256(cluster.releases.files["flannel_cni_plugin"]).hexdigest()
    cluster.server.script(flannel + ".sha256", Reply(body=f"{sha}  {Path(flannel).name}\n".encode()))
    inventory = cluster.inventory(cluster.fresh(CP), cluster.fresh(WORKER), artifact_checksums=unpinned_flannel(cluster))
    before = dict(cluster.server.requests)

    def lock_command(*options: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tasks.lock_checksums", str(inventory), *options], cwd=REPO,
                              capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, NO_PROXY="127.0.0.1", no_proxy="127.0.0.1"))

    done = lock_command()
    assert done.returncode == 0, done.stderr
    assert f"  flannel_cni_plugin 1.9.1-flannel3 amd64  sha256 {sha}  from {cluster.server.url}{flannel}.sha256" \
        in done.stdout
    assert {p: n - before.get(p, 0) for p, n in cluster.server.requests.items() if n != before.get(p, 0)} == {
        flannel + ".sha256": 1}  # only the checksum file: no release file, and no host (nothing connects)
    # a second time: already locked; with --verify, upstream is asked again and still agrees
    done = lock_command("--verify")
    assert done.returncode == 0, done.stderr
    assert "already holds every sum this inventory needs that is not pinned (and upstream still publishes them)" \
        in done.stdout
    # a path that is no inventory: an error, not an empty success
    missing = subprocess.run([sys.executable, "-m", "tasks.lock_checksums", str(cluster.tmp / "no-such-inventory.py")], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "no-such-inventory.py: no such inventory file" in missing.stderr
    empty = cluster.tmp / "empty.py"
    empty.write_text("# nothing here\n")
    done_empty = subprocess.run([sys.executable, "-m", "tasks.lock_checksums", str(empty)], cwd=REPO, capture_output=True,
                                text=True, timeout=120)
    assert done_empty.returncode == 1 and "empty.py: no hosts (is it an inventory file?)" in done_empty.stderr
    # upstream now publishes another sum: --verify fails naming both
    cluster.server.script(flannel + ".sha256", Reply(body=f"{'e' * 64}  {Path(flannel).name}\n".encode()))
    done = lock_command("--verify")
    assert done.returncode == 1
    assert f"upstream now publishes sha256 {'e' * 64}" in done.stderr and f"holds {sha}" in done.stderr


# --- (c) a converged host ----------------------------------------------------------------


def test_converged_hosts_plan_no_change(cluster):
    run = run_pyinfra(cluster.inventory(cluster.converged(CP), cluster.converged(WORKER)), "--dry", "--json")
    assert_ok(run)
    plan = run.plan()
    assert set(EVERY_NODE_OPS + CONTROL_PLANE_OPS) <= set(plan)
    assert {op: hosts for op, hosts in plan.items() if hosts} == {}


def test_converged_hosts_run_nothing_but_the_probe(cluster):
    run = run_pyinfra(cluster.inventory(cluster.converged(CP), cluster.converged(WORKER)), "-y")
    assert_ok(run)
    for host in HOSTS:
        assert run.commands(host) == probes(run, host) and len(probes(run, host)) == 1
        assert run.uploads(host) == []


def test_one_changed_setting_changes_only_what_depends_on_it(cluster):
    # Nodes converged for the defaults; the inventory now asks for an MTU on the pod interfaces.
    run = run_pyinfra(cluster.inventory(cluster.converged(CP), cluster.converged(WORKER), flannel_mtu=1400), "-y")
    assert_ok(run)
    for host in HOSTS:
        assert run.uploads(host) == ["/etc/cni/net.d/.10-flannel.conflist.podnet-new"]
        assert not [c for c in run.commands(host) if "systemctl" in c]  # containerd is not restarted


def test_a_plugin_that_lost_its_exec_bit_is_repaired(cluster):
    worker = cluster.converged(WORKER)
    worker.modes["/opt/cni/bin/portmap"] = "644"  # same content, not executable: pods would fail
    run = run_pyinfra(cluster.inventory(cluster.converged(CP), worker), "-y")
    assert_ok(run)
    assert run.uploads(WORKER) == []  # its bytes are live: copied on the node, nothing sent
    install = [c for c in run.commands(WORKER) if c.startswith("set -e; cp")]
    assert len(install) == 1
    assert install[0].startswith("set -e; cp /opt/cni/bin/portmap /opt/cni/bin/.portmap.podnet-new; podnet_sum() {")
    portmap = hashlib.sha256(installed_binaries(cluster.settings(WORKER), cluster.releases)["/opt/cni/bin/portmap"])
    check = (f"; chmod 0755 /opt/cni/bin/.portmap.podnet-new; d0=$(podnet_sum /opt/cni/bin/.portmap.podnet-new "
             f"{portmap.hexdigest()} /opt/cni/bin/portmap) || exit 1; ")
    assert install[0].index(check) < install[0].index("; mv -f /opt/cni/bin/.portmap.podnet-new ")  # checked first
    assert "; mv -f /opt/cni/bin/.portmap.podnet-new /opt/cni/bin/portmap; " in install[0]
    assert install[0].endswith(' "$d0" /opt/cni/bin/portmap; } >> /var/lib/podnet/digests')  # the node's own sum
    assert run.commands(CP) == probes(run, CP)


def test_containerd_restarts_only_when_its_config_changes(cluster):
    cp = cluster.converged(CP)
    worker = cluster.converged(WORKER)
    worker.hashes[containerd.CONFIG_PATH] = "0" * 64  # edited by hand on the node
    run = run_pyinfra(cluster.inventory(cp, worker), "-y")
    assert_ok(run)
    assert run.uploads(WORKER) == ["/etc/containerd/.config.toml.podnet-new"]
    assert ("systemctl restart containerd.service && rm -f /var/lib/podnet/restart-pending/containerd.service"
            in run.commands(WORKER))
    assert run.commands(CP) == probes(run, CP)


@pytest.mark.parametrize("reported, problem", [
    # a podCIDR the settings could not have given: the pod network changed under the node (tasks/pod_network.py)
    (["cp1 10.244.0.0/24", "w1 10.99.0.0/24"],
     ("@fake/cp1: cluster_cidr: nodes hold podCIDRs that cluster_cidr '10.244.0.0/16' with node_cidr_mask_size 24 "
      "does not fit (w1 10.99.0.0/24); a node's podCIDR never changes by itself")),
    (["cp1 10.244.0.0/24", "w1"],
     ("node w1 has no spec.podCIDR (pod cidr not assigned): check that kube-controller-manager runs with "
     "--allocate-node-cidrs=true --cluster-cidr=10.244.0.0/16 --node-cidr-mask-size=24")),
])
@pytest.mark.parametrize("rollout", ["daemonset", "systemd"])
def test_converged_cluster_with_a_bad_pod_cidr_is_reported(cluster, reported, problem, rollout):
    data = {"flannel_rollout": rollout}
    cp = cluster.converged(CP, **data)
    cp.queries["pod_cidrs"] = (0, reported)
    run = run_pyinfra(cluster.inventory(cp, cluster.converged(WORKER, **data), **data), "-y")
    assert run.returncode != 0
    assert problem in run.stderr
    assert run.commands(CP) == probes(run, CP)


# --- (d) bad settings ------------------------------------------------------------------------


def test_bad_settings_fail_before_any_operation(cluster):
    inventory = cluster.inventory(cluster.fresh(CP), cluster.fresh(WORKER), cluster_cidr="10.244.0.1/16")
    run = run_pyinfra(inventory, "-y", "--dry")
    assert run.returncode != 0
    assert ("@fake/cp1: cluster_cidr: '10.244.0.1/16' is not valid; expected a network address without host "
            "bits set, such as 10.244.0.0/16") in run.stderr
    assert "@fake/w1: cluster_cidr: '10.244.0.1/16' is not valid" in run.stderr
    assert "Traceback" not in run.stderr
    for host in HOSTS:
        assert run.commands(host) == []  # not even the probe


def test_inventory_wide_rule_fails_before_any_operation(cluster):
    cp = FakeNode("cp1", "control_plane", cluster.data(), probe_answer(cluster.fresh(CP)))
    worker = FakeNode("w1", "workers", cluster.data(cluster_cidr="10.245.0.0/16"),
                      probe_answer(cluster.fresh(WORKER)))
    run = run_pyinfra(write_inventory(cluster.tmp / "inventory.py", [cp, worker]), "-y")
    assert run.returncode != 0
    assert ("cluster_cidr: must be the same on every host, but @fake/cp1 has '10.244.0.0/16' and @fake/w1 "
            "'10.245.0.0/16'; set it in group data for all") in run.stderr
    for host in HOSTS:
        assert run.commands(host) == []


def test_checksum_mismatch_stops_the_run_before_any_change(cluster):
    checksums = cluster.releases.checksums()
    checksums["runc"]["1.4.3"]["amd64"] = "f" * 64
    inventory = cluster.inventory(cluster.fresh(CP), cluster.fresh(WORKER), artifact_checksums=checksums)
    run = run_pyinfra(inventory, "-y")
    assert run.returncode != 0
    url = cluster.server.url + "/" + cluster.releases.upstream_path("runc")
    actual = hashlib.sha256(cluster.releases.runc).hexdigest()
    assert (f"checksum mismatch for runc 1.4.3 amd64 ({url}): expected sha256 {'f' * 64} from the "
            f"artifact_checksums setting, got {actual}; nothing was changed on any node") in run.stderr
    for host in HOSTS:
        assert run.commands(host) == probes(run, host)
        assert run.uploads(host) == []


def test_a_plain_http_mirror_without_the_opt_in_fails_before_any_host_is_touched(cluster):
    run = run_pyinfra(cluster.inventory(cluster.fresh(CP), cluster.fresh(WORKER), allow_insecure_http=False), "-y")
    assert run.returncode != 0
    assert (f"@fake/cp1: mirror_url: '{cluster.server.url}' is plain http; expected an https:// URL: over http "
            "anyone on the way can change the release files and the checksums podnet reads beside them. To accept "
            "that (a mirror on a network you trust), also set allow_insecure_http = True") in run.stderr
    for host in HOSTS:
        assert run.commands(host) == []  # not even the probe


def test_a_download_cache_others_can_write_stops_the_run_before_any_host_is_touched(cluster):
    cache = cluster.tmp / "cache"
    cache.mkdir(mode=0o700)
    cache.chmod(0o777)  # e.g. a shared path: anyone could plant a plugin that becomes root code on every node
    run = run_pyinfra(cluster.inventory(cluster.fresh(CP), cluster.fresh(WORKER)), "-y")
    assert run.returncode != 0
    assert f"download_cache_dir: {cache} is writable by its group and others (mode 0777); " in run.stderr
    assert "Traceback" not in run.stderr
    for host in HOSTS:
        assert run.commands(host) == []


def test_a_plugin_edited_in_the_laptop_cache_is_unpacked_again_and_the_right_bytes_uploaded(cluster):
    cp, worker = cluster.converged(CP), cluster.converged(WORKER)
    assert_ok(run_pyinfra(cluster.inventory(cp, worker), "-y"))  # fills the cache; nothing to upload
    [bridge] = (cluster.tmp / "cache").glob("*/unpacked/bridge")
    original, before = bridge.read_bytes(), bridge.stat()
    bridge.write_bytes(b"X" * len(original))  # other bytes of the same size, the mtime set back
    os.utime(bridge, ns=(before.st_atime_ns, before.st_mtime_ns))
    worker.hashes["/opt/cni/bin/bridge"] = "0" * 64  # edited on the node: the next run uploads it
    run = run_pyinfra(cluster.inventory(cp, worker), "-y")
    assert_ok(run)
    assert (f"podnet: {bridge.parent} is unpacked again from its verified archive: bridge was changed since it was "
            "unpacked") in run.stderr
    assert bridge.read_bytes() == original  # what the node is checked against is the release's bridge again
    [archive] = run.uploads(WORKER)  # the archive bridge is in; the node checks its bridge against the laptop's sum
    assert archive.endswith(f"{Path(cluster.releases.upstream_path('cni_plugins')).name}.podnet-new")
    install = [c for c in run.commands(WORKER) if c.startswith("set -e;")]
    assert f"d0=$(podnet_sum /opt/cni/bin/.bridge.podnet-new {hashlib.sha256(original).hexdigest()} " in install[0]


# --- (e) control plane without its manifest ----------------------------------------------------


def test_control_plane_without_manifest_fails_naming_the_setting(cluster):
    cp = cluster.fresh(CP, kcm_manifest=None)
    run = run_pyinfra(cluster.inventory(cp, cluster.fresh(WORKER)), "-y")
    assert run.returncode != 0
    assert ("@fake/cp1: kube_controller_manager_manifest: /etc/kubernetes/manifests/kube-controller-manager.yaml "
            "does not exist on this control-plane host; is the control plane installed (kubeadm init)?") in run.stderr
    for host in HOSTS:
        assert run.commands(host) == probes(run, host)  # nothing ran, on any host
        assert run.uploads(host) == []


# --- (f) another CNI config ahead of ours -----------------------------------------------------------


def test_stray_conflist_sorting_first_is_moved_aside_with_a_report(cluster):
    worker = cluster.converged(WORKER)
    worker.listings["/etc/cni/net.d"] = ["05-cilium.conflist", "10-flannel.conflist", "87-podman-bridge.conflist",
                                         "00-old.conf.podnet-disabled"]
    run = run_pyinfra(cluster.inventory(cluster.converged(CP), worker), "-y")
    assert_ok(run)
    assert run.commands(WORKER)[1:] == [
        "mv -f /etc/cni/net.d/05-cilium.conflist /etc/cni/net.d/05-cilium.conflist.podnet-disabled"]
    assert ("@fake/w1: moving aside 05-cilium.conflist (renamed to *.podnet-disabled): containerd loads only the "
            "first config in /etc/cni/net.d") in run.output
    assert run.commands(CP) == probes(run, CP)


def test_stray_conflist_shows_in_the_plan(cluster):
    worker = cluster.fresh(WORKER, conf_dir_entries=("05-cilium.conflist", "10-flannel.conflist"))
    run = run_pyinfra(cluster.inventory(cluster.fresh(CP), worker), "--dry", "--json")
    assert_ok(run)
    assert run.plan()["cni: no other config sorts ahead of ours"] == [WORKER]


# --- flanneld as a systemd service ----------------------------------------------------------------


def test_systemd_rollout_installs_flanneld_on_every_node(cluster):
    data = {"flannel_rollout": "systemd"}
    run = run_pyinfra(cluster.inventory(cluster.fresh(CP, data=data), cluster.fresh(WORKER, data=data), **data),
                      "-y")
    assert_ok(run)
    for host in HOSTS:
        uploads = run.uploads(host)
        assert "/usr/local/bin/.flanneld.podnet-new" in uploads
        assert "/etc/kube-flannel/.net-conf.json.podnet-new" in uploads
        assert "/etc/systemd/system/.flanneld.service.podnet-new" in uploads
        assert ("systemctl daemon-reload && systemctl enable flanneld.service && systemctl start flanneld.service"
                " && rm -f /var/lib/podnet/restart-pending/flanneld.service" in run.commands(host))
        assert not [c for c in run.commands(host) if "kube-flannel.yml" in c]
    # the node IPAM flags changed in this run: the first control-plane host then waits for every podCIDR
    assert [c for c in run.commands(CP) if "get nodes" in c and "podCIDR" in c]


def test_systemd_rollout_gives_flanneld_a_service_account_token_and_no_admin_credentials(cluster):
    data = {"flannel_rollout": "systemd"}
    # -vvv prints every operation's commands and output, --diff every file change: the token shows in neither
    run = run_pyinfra(cluster.inventory(cluster.fresh(CP, data=data), cluster.fresh(WORKER, data=data), **data),
                      "-y", "-vvv", "--diff")
    assert_ok(run)
    cp = run.commands(CP)
    apply = cp.index("kubectl --kubeconfig=/etc/kubernetes/admin.conf apply -f /etc/podnet/flannel-rbac.yml")
    assert "/etc/podnet/.flannel-rbac.yml.podnet-new" in run.uploads(CP)
    tokens = [i for i, c in enumerate(cp) if c == ("kubectl --kubeconfig=/etc/kubernetes/admin.conf -n kube-flannel "
                                                    "create token flannel --duration=31536000s")]
    assert len(tokens) == 2 and apply < tokens[0]  # one per node, after the ServiceAccount exists
    for host in HOSTS:
        commands = run.commands(host)
        for path in (flannel.TOKEN_PATH, flannel.KUBECONFIG_PATH, flannel.TOKEN_EXPIRY_PATH):
            assert f"umask 077 && mkdir -p /etc/kube-flannel && rm -f {path} && : > {path}" in commands
            assert path in run.uploads(host)
        start = commands.index("systemctl daemon-reload && systemctl enable flanneld.service && systemctl start "
                               "flanneld.service && rm -f /var/lib/podnet/restart-pending/flanneld.service")
        assert commands.index(f"umask 077 && mkdir -p /etc/kube-flannel && rm -f {flannel.TOKEN_PATH} && : > "
                              f"{flannel.TOKEN_PATH}") < start
    worker = run.commands(WORKER)
    assert not [c for c in worker if "admin.conf" in c]
    unit = flannel.systemd_files(cluster.settings(WORKER, **data), cluster.releases.tree /
                                 cluster.releases.upstream_path("flanneld"))[1].content.decode()
    assert "--kubeconfig-file=/etc/kube-flannel/kubeconfig" in unit and "admin.conf" not in unit
    assert FLANNEL_TOKEN not in run.output and FLANNEL_TOKEN.split(".")[1] not in run.output


def test_flanneld_kubeconfig_names_the_cluster_and_its_token_file():
    assert yaml.safe_load(flannel.kubeconfig_for("https://192.0.2.1:6443", "Q0EgY2VydA==")) == {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "kubernetes", "cluster": {"server": "https://192.0.2.1:6443",
                                                        "certificate-authority-data": "Q0EgY2VydA=="}}],
        "users": [{"name": "flannel", "user": {"tokenFile": "/etc/kube-flannel/token"}}],
        "contexts": [{"name": "flannel", "context": {"cluster": "kubernetes", "user": "flannel"}}],
        "current-context": "flannel"}
    assert flannel.token_expiry(service_account_token(1828149081)) == 1828149081


@pytest.mark.parametrize("left, mode, renewed", [(flannel.TOKEN_RENEWAL + 3600, "600", False),
                                                 (flannel.TOKEN_RENEWAL - 3600, "600", True),
                                                 (flannel.TOKEN_DURATION, "644", True)],
                         ids=["fresh", "expiring", "readable-by-all"])
def test_a_rerun_renews_flanneld_token_only_when_it_expires_soon_or_is_not_root_only(cluster, left, mode, renewed):
    data = {"flannel_rollout": "systemd"}
    worker = cluster.converged(WORKER, **data)
    worker.contents[flannel.TOKEN_EXPIRY_PATH] = f"{int(time.time()) + left}\n".encode()
    worker.modes[flannel.TOKEN_PATH] = mode
    run = run_pyinfra(cluster.inventory(cluster.converged(CP, **data), worker, **data), "-y")
    assert_ok(run)
    assert (flannel.TOKEN_PATH in run.uploads(WORKER)) is renewed
    assert len([c for c in run.commands(CP) if "create token flannel" in c]) == int(renewed)
    # client-go re-reads the token file: flanneld is not restarted
    assert not [c for c in run.commands(WORKER) if "systemctl" in c]


def test_admin_credentials_an_earlier_release_pointed_flanneld_at_are_named_on_a_worker(cluster):
    data = {"flannel_rollout": "systemd"}
    worker = cluster.converged(WORKER, **data)
    worker.features[flannel.STALE_KUBECONFIG] = True
    run = run_pyinfra(cluster.inventory(cluster.converged(CP, **data), worker, **data), "-y")
    assert_ok(run)
    assert ("podnet: @fake/w1: /etc/kubernetes/admin.conf (the kubeconfig setting) is on this worker; flanneld no "
            "longer uses it (it has /etc/kube-flannel/kubeconfig, flannel's ServiceAccount): if it holds admin "
            "credentials, remove it, podnet does not delete what it did not install") in run.stderr
    assert run.commands(WORKER) == probes(run, WORKER)


def test_flanneld_service_account_missing_from_the_cluster_is_applied_again(cluster):
    data = {"flannel_rollout": "systemd"}
    cp = cluster.converged(CP, **data)
    cp.queries[flannel.RBAC_QUERY] = (0, [flannel.RBAC_OBJECTS[1]])
    run = run_pyinfra(cluster.inventory(cp, cluster.converged(WORKER, **data), **data), "-y")
    assert_ok(run)
    assert run.commands(CP)[1:] == ["kubectl --kubeconfig=/etc/kubernetes/admin.conf apply -f "
                                    "/etc/podnet/flannel-rbac.yml"]
    assert run.commands(WORKER) == probes(run, WORKER)


def test_systemd_rollout_converged(cluster):
    data = {"flannel_rollout": "systemd"}
    run = run_pyinfra(cluster.inventory(cluster.converged(CP, **data), cluster.converged(WORKER, **data), **data),
                      "-y")
    assert_ok(run)
    for host in HOSTS:
        assert run.commands(host) == probes(run, host) and run.uploads(host) == []


# --- the scripted probe answers are what the real probe prints ---------------------------------------


def test_probe_script_on_a_real_shell_reads_what_the_fake_answers_claim(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "containerd").write_bytes(b"one")
    (bin_dir / "containerd-shim-runc-v2").write_bytes(b"two")
    (bin_dir / "containerd-shim-runc-v2").chmod(0o755)
    (bin_dir / "containerd").chmod(0o700)
    conf = tmp_path / "net.d"
    conf.mkdir()
    (conf / "05-cilium.conflist").write_text("{}")
    (conf / "10 spaced name.conf").write_text("{}")
    manifest = tmp_path / "kcm.yaml"
    manifest.write_text(KUBEADM_MANIFEST)
    request = ProbeRequest(
        hashes=[f"{bin_dir}/containerd*", f"{tmp_path}/missing"],
        contents=[str(manifest), f"{tmp_path}/absent.yaml"],
        sysctls=["kernel.ostype", "net.podnet.no_such_key"],
        features={"present": "true", "absent": "false"},
        listings=[str(conf), f"{tmp_path}/no-dir"],
        queries={"ok_empty": "true", "fails": "echo broken >&2; exit 3", "lines": "printf 'a b\\nc d\\n'"},
    )
    out = subprocess.run(["sh", "-c", probe_script(request)], capture_output=True, text=True, check=True).stdout
    state = parse_probe(out.splitlines())
    assert state.machine == subprocess.run(["uname", "-m"], capture_output=True, text=True, check=True).stdout.strip()
    assert state.hashes == {f"{bin_dir}/containerd": hashlib.sha256(b"one").hexdigest(),
                            f"{bin_dir}/containerd-shim-runc-v2": hashlib.sha256(b"two").hexdigest()}
    assert state.modes == {f"{bin_dir}/containerd": "700", f"{bin_dir}/containerd-shim-runc-v2": "755"}
    assert state.contents == {str(manifest): KUBEADM_MANIFEST.encode()}
    assert state.sysctls == {"kernel.ostype": "Linux", "net.podnet.no_such_key": None}
    assert state.features == {"present": True, "absent": False}
    assert sorted(state.listings[str(conf)]) == ["05-cilium.conflist", "10 spaced name.conf"]
    assert f"{tmp_path}/no-dir" not in state.listings
    assert state.queries == {"ok_empty": (0, []), "fails": (3, []), "lines": (0, ["a b", "c d"])}
    assert state.query_stderr == {"fails": "broken"}  # kept apart, never read as data
    assert state.problems == []
    # and the answers the plan tests script are read back the same way
    assert parse_probe(probe_answer(state)) == state


def test_the_digest_cache_never_hides_a_rewritten_file(tmp_path):
    """The probe answers a converged node's digests from its cache (inode, size, mtime, ctime); a file
    rewritten with the same size and its old mtime put back (what `touch -r` or a careless copy leaves)
    has a new ctime, which no user can set: its digest is computed again, not taken from the cache."""
    cache = tmp_path / "digests"
    binary = tmp_path / "bridge"
    binary.write_bytes(b"plugin-v1")
    request = ProbeRequest(hashes=[str(binary)])

    def probe() -> dict[str, str]:
        script = probe_script(request).replace(DIGEST_CACHE, str(cache))
        out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True, timeout=60).stdout
        return parse_probe(out.splitlines()).hashes

    assert probe() == {str(binary): hashlib.sha256(b"plugin-v1").hexdigest()}
    assert str(binary) in cache.read_text()  # the cache holds it: the next probe reads no binary
    assert probe() == {str(binary): hashlib.sha256(b"plugin-v1").hexdigest()}
    before = binary.stat()
    time.sleep(0.05)  # a ctime the clock can tell apart
    binary.write_bytes(b"plugin-v2")  # same size
    os.utime(binary, ns=(before.st_atime_ns, before.st_mtime_ns))  # the old mtime put back
    assert (binary.stat().st_size, binary.stat().st_mtime_ns, binary.stat().st_ino) == \
        (before.st_size, before.st_mtime_ns, before.st_ino)
    assert probe() == {str(binary): hashlib.sha256(b"plugin-v2").hexdigest()}
    assert hashlib.sha256(b"plugin-v2").hexdigest() in cache.read_text()


def test_a_query_that_is_not_even_shell_does_not_cut_the_probe_short(tmp_path):
    """Queries run beside each other (started first, collected last), each in a shell of its own: a
    command that does not parse is that query's failure, and every other answer is still there."""
    request = ProbeRequest(queries={"broken": "if then (", "after": "echo fine"}, sysctls=["kernel.ostype"])
    out = subprocess.run(["sh", "-c", probe_script(request)], capture_output=True, text=True, check=True,
                         timeout=60).stdout
    state = parse_probe(out.splitlines())
    assert state.queries["after"] == (0, ["fine"]) and state.queries["broken"][0] != 0
    assert state.sysctls == {"kernel.ostype": "Linux"} and state.problems == []


def test_an_external_controller_manager_is_left_alone(cluster):
    data = {"kube_controller_manager_runtime": "external"}
    cp = cluster.fresh(CP, data=data, kcm_manifest=None)  # no manifest on this host: not needed
    run = run_pyinfra(cluster.inventory(cp, cluster.fresh(WORKER, data=data), **data), "-y")
    assert_ok(run)
    assert not [c for c in run.commands(CP) if "kube-controller-manager" in c]
    assert "kube-controller-manager" not in " ".join(run.uploads(CP))


@pytest.mark.parametrize("change, path, removed, added", [
    ({"flannel_image": "docker.io/flannel/flannel:v0.28.10"}, "/etc/podnet/kube-flannel.yml",
     ['-        image: "docker.io/flannel/flannel:v0.28.9"'], ['+        image: "docker.io/flannel/flannel:v0.28.10"']),
    # dual stack turned on for a live cluster: a pod network change (its nodes hold no IPv6 podCIDR), so with the opt-in
    ({"cluster_cidr_ipv6": "fd00:10:244::/56", "allow_pod_network_change": True}, "/etc/sysctl.d/zz-podnet.conf",
     [], ["+net.ipv6.conf.all.forwarding = 1"]),
    ({"flannel_mtu": 1400}, "/etc/cni/net.d/10-flannel.conflist",
     ['-      "delegate": {"hairpinMode": true, "isDefaultGateway": true}'],
     ['+      "delegate": {"hairpinMode": true, "isDefaultGateway": true, "mtu": 1400}']),
])
def test_dry_diff_shows_a_real_diff_of_every_managed_text_file(cluster, change, path, removed, added):
    cp, worker = cluster.converged(CP), cluster.converged(WORKER)
    run = run_pyinfra(cluster.inventory(cp, worker, **change), "--dry", "--diff")
    assert_ok(run)
    lines = [line.removeprefix("        ") for line in run.stderr.splitlines()]  # pyinfra indents the diff
    start = lines.index(f"--- {path} (node)")
    assert lines[start + 1] == f"+++ {path} (podnet)"
    end = next((i for i in range(start + 2, len(lines)) if not lines[i].startswith(("+", "-", "@", " "))
                or lines[i].startswith(("--- ", "+++ "))), len(lines))
    changed = [line for line in lines[start + 2:end] if line.startswith(("+", "-"))
               and "podnet.io/manifest-sha256" not in line]  # the manifest's own hash changes with it
    assert changed == removed + added, lines[start:end]  # the changed lines, not the whole file as new


def test_without_a_control_plane_host_the_skipped_pod_cidr_check_is_said(cluster):
    data = {"flannel_rollout": "systemd", "kube_controller_manager_runtime": "external",
            "control_plane_group": "nobody"}
    nodes = [FakeNode(name, "workers", cluster.data(**data), probe_answer(cluster.fresh(WORKER, data=data)))
             for name in ("w1", "w2")]
    run = run_pyinfra(write_inventory(cluster.tmp / "inventory.py", nodes), "-y")
    assert_ok(run)
    assert run.stderr.count("podnet: no host is in group 'nobody': nothing checks that every node has a podCIDR "
                            "for flanneld") == 1


# --- what an interrupted run left (tasks/interrupted.py) ---------------------------------------------


def test_staged_files_an_interrupted_run_left_are_removed_and_nothing_else_changes(cluster):
    worker = cluster.converged(WORKER)
    worker.queries[interrupted.QUERY] = (0, ["/opt/cni/bin/.bridge.podnet-new",
                                             "/etc/containerd/.config.toml.podnet-new"])
    run = run_pyinfra(cluster.inventory(cluster.converged(CP), worker), "-y")
    assert_ok(run)
    assert run.commands(WORKER) == [*probes(run, WORKER),
                                    "rm -f /etc/containerd/.config.toml.podnet-new /opt/cni/bin/.bridge.podnet-new"]
    assert run.uploads(WORKER) == []
    assert run.commands(CP) == probes(run, CP)


def test_a_join_configuration_an_interrupted_run_left_is_removed(cluster, tmp_path):
    worker = cluster.converged(WORKER)
    worker.queries[interrupted.QUERY] = (0, ["/run/podnet/kubeadm-join.yaml"])
    run = run_pyinfra(cluster.inventory(cluster.converged(CP), worker), "-y")
    assert_ok(run)
    assert run.commands(WORKER) == [*probes(run, WORKER), "rm -f /run/podnet/kubeadm-join.yaml"]
    # what the probe's query finds on a real shell, the join configuration included
    def found() -> list[str]:
        command = interrupted.find_command([str(tmp_path)]).replace("/run/podnet/kubeadm-join.yaml",
                                                                    str(tmp_path / "kubeadm-join.yaml"))
        return subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout.split()

    (tmp_path / ".a.podnet-new").write_text("")
    assert found() == [str(tmp_path / ".a.podnet-new")]
    (tmp_path / "kubeadm-join.yaml").write_text("")
    assert found() == [str(tmp_path / ".a.podnet-new"), str(tmp_path / "kubeadm-join.yaml")]


def test_the_probe_looks_for_staged_files_where_podnet_installs_files(cluster):
    dirs = interrupted.directories(cluster.settings(CP))
    assert dirs == ["/etc/cni/net.d", "/etc/containerd", "/etc/default", "/etc/kube-flannel",
                    "/etc/kubernetes/manifests", "/etc/modules-load.d", "/etc/podnet", "/etc/sysctl.d", "/etc/systemd/system",
                    "/etc/systemd/system/kubelet.service.d", "/opt/cni/bin", "/usr/local/bin", "/usr/local/sbin",
                    "/var/lib/podnet/releases"]  # and where release archives arrive on a node


def test_a_restart_an_interrupted_run_left_pending_is_done_though_the_files_match(cluster):
    worker = cluster.converged(WORKER)
    worker.listings[ops.RESTART_PENDING_DIR] = ["containerd.service"]
    run = run_pyinfra(cluster.inventory(cluster.converged(CP), worker), "-y")
    assert_ok(run)
    assert run.commands(WORKER) == [*probes(run, WORKER), "systemctl daemon-reload && systemctl restart "
                                    "containerd.service && rm -f /var/lib/podnet/restart-pending/containerd.service"]
    assert run.uploads(WORKER) == []


def test_a_config_change_marks_containerd_restart_pending_before_activating_it(cluster):
    worker = cluster.converged(WORKER)
    worker.hashes[containerd.CONFIG_PATH] = "0" * 64
    run = run_pyinfra(cluster.inventory(cluster.converged(CP), worker), "-y")
    assert_ok(run)
    install = next(c for c in run.commands(WORKER) if c.startswith("set -e; podnet_sum()"))
    assert install.index(": > /var/lib/podnet/restart-pending/containerd.service") < install.index("mv -f")


# --- release files downloaded by the nodes (release_download = "nodes") ----------------------------------


def test_nodes_download_the_release_files_themselves_with_no_credential_on_a_command_line(cluster):
    mirror = cluster.server.url.replace("http://", "http://deploy:S3cr3t@")
    data = {"release_download": "nodes", "mirror_url": mirror}
    tools = {"curl": True, "wget": False}
    cp, worker = cluster.fresh(CP, data=data), cluster.fresh(WORKER, data=data)
    cp.features.update(tools)
    worker.features.update(tools)
    run = run_pyinfra(cluster.inventory(cp, worker, **data), "-y", "-vvv")
    assert_ok(run)
    for host in HOSTS:
        uploads = run.uploads(host)
        # what the laptop sends: podnet's rendered files and the credentials' netrc, no release file
        assert "/run/podnet/fetch/.netrc" in uploads
        assert not [u for u in uploads if u.startswith("/var/lib/podnet/releases/") or "/bin/" in u], uploads
        commands = " ".join(run.commands(host))
        for name in ("containerd", "runc", "cni_plugins", "flannel_cni_plugin"):
            url = f"{cluster.server.url}/{cluster.releases.upstream_path(name)}"
            assert "podnet_release /var/lib/podnet/releases/" in commands and f" {url} " in commands, (host, name)
        assert 'podnet_fetch "$4" "$3"' in commands  # each URL without its credentials, given to curl or wget
        assert "--netrc-file /run/podnet/fetch/.netrc" in commands
        assert "S3cr3t" not in commands and "deploy:" not in commands
    assert "S3cr3t" not in run.output


def test_a_node_without_curl_or_wget_is_refused_naming_it_before_any_change(cluster):
    data = {"release_download": "nodes"}
    cp, worker = cluster.fresh(CP, data=data), cluster.fresh(WORKER, data=data)
    cp.features.update({"curl": True, "wget": False})
    worker.features.update({"curl": False, "wget": False})
    run = run_pyinfra(cluster.inventory(cp, worker, **data), "-y")
    assert run.returncode != 0
    assert "w1: release_download = 'nodes': this node lacks curl or wget to download the release files" in run.stderr
    for host in HOSTS:
        assert run.commands(host) == probes(run, host)  # nothing changed anywhere
        assert run.uploads(host) == []
