"""
Kernel parameters persisted so that podnet's values are the ones a node has after it boots
(tasks/kernel.py), and every other sysctl file that sets one of them to another value named
in the run output.

- unit: the boot order of sysctl.d(5) (file names sorted in byte order whatever the
  directory, /etc hiding the same name in /run and /usr/lib), the sysctl line syntax, the
  conflicts and their messages, the probe's sysctl part on a real shell;
- plan: deploy.py through the real pyinfra CLI against @fake hosts (tests/test_plan.py's
  cluster), whose probe answers describe a Debian node's sysctl files.

The same on a real node, with systemd-sysctl applying the files: tests/test_kernel_e2e.py.
"""

from __future__ import annotations

import subprocess

import pytest

from tasks import kernel
from tasks.engine.probe import NodeState, ProbeRequest, parse_probe, probe_script, sysctl_config_script
from tasks.settings import parse_host_settings
from tests.support.plan import CP, WORKER, assert_ok, probe_answer, probes, run_pyinfra

PODNET = "/etc/sysctl.d/zz-podnet.conf"
OLD_PODNET = "/etc/sysctl.d/99-podnet.conf"
WANTED = {"net.bridge.bridge-nf-call-iptables": "1", "net.bridge.bridge-nf-call-ip6tables": "1",
          "net.ipv4.ip_forward": "1"}
CASE_WARNING = ("podnet: @fake/w1: /etc/sysctl.conf sets net.ipv4.ip_forward = 0, podnet needs 1: at boot it is read "
                "as /etc/sysctl.d/99-sysctl.conf, before /etc/sysctl.d/zz-podnet.conf, so podnet's 1 wins; "
                "`sysctl --system` (procps) reads /etc/sysctl.conf after every sysctl.d file and would set 0; "
                "set it to 1 there or remove that line")


def debian_sysctl_files(state: NodeState, sysctl_conf: tuple[str, ...] = (),
                        extra: dict[str, tuple[str, list[str]]] | None = None) -> NodeState:
    """``state`` with a Debian bookworm node's sysctl files added as the probe reports them (merged
    /usr: /lib is a link to /usr/lib), /etc/sysctl.conf holding the relevant ``sysctl_conf`` lines
    (read at boot through Debian's /etc/sysctl.d/99-sysctl.conf link); ``extra``: path -> (target, lines)."""
    files = {path: (target, state.sysctl_lines.get(path, [])) for path, target in state.sysctl_files.items()}
    files.update({
        "/etc/sysctl.d/99-sysctl.conf": ("/etc/sysctl.conf", list(sysctl_conf)),
        "/usr/lib/sysctl.d/50-pid-max.conf": ("/usr/lib/sysctl.d/50-pid-max.conf", []),
        "/usr/lib/sysctl.d/99-protect-links.conf": ("/usr/lib/sysctl.d/99-protect-links.conf", []),
        "/lib/sysctl.d/50-pid-max.conf": ("/usr/lib/sysctl.d/50-pid-max.conf", []),
        "/lib/sysctl.d/99-protect-links.conf": ("/usr/lib/sysctl.d/99-protect-links.conf", []),
    })
    files.update(extra or {})
    files["/etc/sysctl.conf"] = ("/etc/sysctl.conf", list(sysctl_conf))
    state.sysctl_files = {path: target for path, (target, _) in files.items()}
    state.sysctl_lines = {path: lines for path, (_, lines) in files.items() if lines}
    return state


def node_with(files: dict[str, tuple[str, list[str]]]) -> NodeState:
    return NodeState(sysctl_files={path: target for path, (target, _) in files.items()},
                     sysctl_lines={path: lines for path, (_, lines) in files.items() if lines})


# --- the name, and the order systemd-sysctl and `sysctl --system` read files in ----------------------


def test_podnet_sysctl_file_sorts_after_every_usual_sysctl_file():
    usual = ["/usr/lib/sysctl.d/10-network-security.conf", "/usr/lib/sysctl.d/50-default.conf",
             "/usr/lib/sysctl.d/50-pid-max.conf", "/etc/sysctl.d/60-kubernetes.conf", "/etc/sysctl.d/99-sysctl.conf",
             "/usr/lib/sysctl.d/99-protect-links.conf", "/etc/sysctl.d/99-kubernetes-cri.conf",
             "/etc/sysctl.d/99-zzz.conf", "/etc/sysctl.d/999-last.conf", "/etc/sysctl.d/Z-upper.conf",
             "/etc/sysctl.d/k8s.conf", "/etc/sysctl.d/local.conf", "/run/sysctl.d/yy-runtime.conf"]
    assert kernel.SYSCTL_PATH == PODNET
    assert kernel.boot_order([PODNET, *usual])[-1] == PODNET
    # what the bug was: the old name is read before Debian's link to /etc/sysctl.conf
    assert kernel.boot_order(["/etc/sysctl.d/99-sysctl.conf", OLD_PODNET]) == [OLD_PODNET, "/etc/sysctl.d/99-sysctl.conf"]


def test_the_persisted_file_holds_podnets_values_under_the_new_name():
    _, sysctl = kernel.desired_files(parse_host_settings({}, "w1", []))
    assert (sysctl.path, sysctl.mode) == (PODNET, "0644")
    assert [line for line in sysctl.content.decode().splitlines() if not line.startswith("#")] == [
        "net.bridge.bridge-nf-call-iptables = 1", "net.bridge.bridge-nf-call-ip6tables = 1", "net.ipv4.ip_forward = 1"]


def test_boot_order_is_by_file_name_whatever_the_directory_and_etc_hides_the_same_name():
    files = ["/usr/lib/sysctl.d/50-default.conf", "/etc/sysctl.d/50-default.conf",  # /etc wins the name
             "/usr/lib/sysctl.d/40-vendor.conf", "/run/sysctl.d/40-vendor.conf",  # /run wins over /usr/lib
             "/lib/sysctl.d/60-lib.conf", "/usr/lib/sysctl.d/60-lib.conf",  # /usr/lib comes before /lib
             "/usr/local/lib/sysctl.d/30-local.conf", "/usr/lib/sysctl.d/30-local.conf",
             "/etc/sysctl.d/README.sysctl", "/etc/sysctl.conf",  # not a sysctl.d/*.conf file
             "/etc/sysctl.d/70-admin.conf", "/usr/lib/sysctl.d/10-first.conf"]
    assert kernel.boot_order(files) == ["/usr/lib/sysctl.d/10-first.conf", "/usr/local/lib/sysctl.d/30-local.conf",
                                        "/run/sysctl.d/40-vendor.conf", "/etc/sysctl.d/50-default.conf",
                                        "/usr/lib/sysctl.d/60-lib.conf", "/etc/sysctl.d/70-admin.conf"]


@pytest.mark.parametrize("line, expected", [
    ("net.ipv4.ip_forward = 0", ("net.ipv4.ip_forward", "0")),
    ("  net.ipv4.ip_forward=0  ", ("net.ipv4.ip_forward", "0")),
    ("net/ipv4/ip_forward = 0", ("net.ipv4.ip_forward", "0")),
    ("-net.ipv4.ip_forward = 0", ("net.ipv4.ip_forward", "0")),
    ("net/ipv4/conf/eth0.200/forwarding = 0", ("net.ipv4.conf.eth0/200.forwarding", "0")),
    ("net.ipv4.ip_local_port_range = 32768\t60999", ("net.ipv4.ip_local_port_range", "32768 60999")),
    ("# net.ipv4.ip_forward = 0", None),
    ("; net.ipv4.ip_forward = 0", None),
    ("-net.ipv4.conf.all.forwarding", None),  # excludes a key from globs, sets nothing
    ("net.ipv6.conf.*.forwarding = 0", None),  # a glob: an explicit setting elsewhere wins over it
])
def test_sysctl_lines_are_read_as_sysctl_d_reads_them(line, expected):
    assert kernel.parse_setting(line) == expected


# --- conflicts --------------------------------------------------------------------------------------


def test_the_case_sysctl_conf_turning_forwarding_off():
    node = debian_sysctl_files(NodeState(), ("net.ipv4.ip_forward = 0",))
    conflicts = kernel.sysctl_conflicts(WANTED, node)
    assert conflicts == [kernel.Conflict(file="/etc/sysctl.conf", key="net.ipv4.ip_forward", value="0",
                                         param="net.ipv4.ip_forward", wanted="1",
                                         read_at_boot_as="/etc/sysctl.d/99-sysctl.conf", wins_at_boot=False,
                                         read_last_by_procps=True)]
    assert "podnet: @fake/w1: " + conflicts[0].message() == CASE_WARNING


def test_a_file_read_after_podnets_wins_at_boot_and_is_reported_so():
    node = node_with({"/etc/sysctl.d/zzz-local.conf": ("/etc/sysctl.d/zzz-local.conf",
                                                       ["net/bridge/bridge-nf-call-iptables=0"]),
                      "/usr/lib/sysctl.d/zzz-vendor.conf": ("/usr/lib/sysctl.d/zzz-vendor.conf",
                                                            ("net.ipv4.ip_forward = 0",))})
    assert [c.message() for c in kernel.sysctl_conflicts(WANTED, node)] == [
        "/etc/sysctl.d/zzz-local.conf sets net.bridge.bridge-nf-call-iptables = 0, podnet needs 1: at boot it is "
        "read after /etc/sysctl.d/zz-podnet.conf, so net.bridge.bridge-nf-call-iptables is 0 after every reboot "
        "until podnet runs again; set it to 1 there or remove that line",
        "/usr/lib/sysctl.d/zzz-vendor.conf sets net.ipv4.ip_forward = 0, podnet needs 1: at boot it is read after "
        "/etc/sysctl.d/zz-podnet.conf, so net.ipv4.ip_forward is 0 after every reboot until podnet runs again; "
        "it belongs to a package: override it with a file of the same name in /etc/sysctl.d (a copy without "
        "that line)",
    ]


def test_the_other_name_of_the_forwarding_switch_is_a_conflict_too():
    # the kernel keeps one switch for both names: a later conf/all/forwarding = 0 turns ip_forward off
    node = node_with({"/etc/sysctl.d/zzz-hardening.conf": ("/etc/sysctl.d/zzz-hardening.conf",
                                                           ["net/ipv4/conf/all/forwarding = 0"])})
    assert [c.message() for c in kernel.sysctl_conflicts(WANTED, node)] == [
        "/etc/sysctl.d/zzz-hardening.conf sets net.ipv4.conf.all.forwarding = 0 (the same switch as "
        "net.ipv4.ip_forward), podnet needs 1: at boot it is read after /etc/sysctl.d/zz-podnet.conf, so "
        "net.ipv4.ip_forward is 0 after every reboot until podnet runs again; set it to 1 there or remove that line"]


def test_sysctl_conf_without_a_link_in_sysctl_d_is_read_only_by_procps():
    node = node_with({"/etc/sysctl.conf": ("/etc/sysctl.conf", ["net.ipv4.ip_forward=0"])})
    assert [c.message() for c in kernel.sysctl_conflicts(WANTED, node)] == [
        "/etc/sysctl.conf sets net.ipv4.ip_forward = 0, podnet needs 1: `sysctl --system` (procps) reads "
        "/etc/sysctl.conf after every sysctl.d file and would set 0; set it to 1 there or remove that line"]


def test_files_that_are_not_read_or_agree_with_podnet_are_not_reported():
    node = node_with({
        # hidden by /etc/sysctl.d/50-vendor.conf, which agrees
        "/etc/sysctl.d/50-vendor.conf": ("/etc/sysctl.d/50-vendor.conf", ["net.ipv4.ip_forward = 1"]),
        "/usr/lib/sysctl.d/50-vendor.conf": ("/usr/lib/sysctl.d/50-vendor.conf", ("net.ipv4.ip_forward = 0",)),
        # masked: a link to /dev/null hides the package's file
        "/etc/sysctl.d/60-masked.conf": ("/dev/null", []),
        "/usr/lib/sysctl.d/60-masked.conf": ("/usr/lib/sysctl.d/60-masked.conf", ("net.ipv4.ip_forward = 0",)),
        # the last assignment in a file counts; a glob or another key is no conflict
        "/etc/sysctl.d/70-admin.conf": ("/etc/sysctl.d/70-admin.conf",
                                        ["net.ipv4.ip_forward = 0", "net.ipv4.ip_forward = 1",
                                         "net.ipv4.conf.*.forwarding = 0", "net.ipv4.conf.all.rp_filter = 0"]),
        # podnet's own file, and the one earlier releases wrote (removed in this run)
        PODNET: (PODNET, ["net.ipv4.ip_forward = 1"]),
        OLD_PODNET: (OLD_PODNET, ("net.ipv4.ip_forward = 0",)),
        "/etc/sysctl.conf": ("/dev/null", []),
    })
    assert kernel.sysctl_conflicts(WANTED, node) == []


def test_dual_stack_ipv6_forwarding_is_checked_too():
    settings = parse_host_settings({"cluster_cidr_ipv6": "fd00:10:244::/56"}, "w1", [])
    node = debian_sysctl_files(NodeState(), ("net.ipv6.conf.all.forwarding = 0",))
    assert [(c.file, c.key, c.value, c.wanted) for c in kernel.sysctl_conflicts(kernel.parameters(settings), node)] \
        == [("/etc/sysctl.conf", "net.ipv6.conf.all.forwarding", "0", "1")]
    assert "net.ipv6.conf.all.forwarding" in kernel.probe_request(settings).sysctl_config


# --- the probe's sysctl part on a real shell ----------------------------------------------------------


def test_probe_reports_every_sysctl_file_and_the_lines_that_may_set_a_key(tmp_path):
    etc, run, lib = tmp_path / "etc/sysctl.d", tmp_path / "run/sysctl.d", tmp_path / "usr/lib/sysctl.d"
    for directory in (etc, lib):
        directory.mkdir(parents=True)
    conf = tmp_path / "etc/sysctl.conf"
    conf.write_text("# net.ipv4.ip_forward=1\nkernel.sysrq = 1\n  net.ipv4.ip_forward = 0\n")
    (etc / "99-sysctl.conf").symlink_to("../sysctl.conf")
    (etc / "50-masked.conf").symlink_to("/dev/null")
    (etc / "README.sysctl").write_text("net.ipv4.ip_forward = 0\n")
    (lib / "50-masked.conf").write_text("net.ipv4.ip_forward = 0\n")
    (lib / "60-tabs.conf").write_text("-net/bridge/bridge-nf-call-iptables\t=\t0\nnetwork.x = 1\nvm.swappiness = 1\n")
    script = sysctl_config_script(["net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables"],
                                  dirs=(str(etc), str(run), str(lib)), conf=str(conf))
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout
    state = parse_probe(out.splitlines())
    assert state.sysctl_files == {f"{etc}/50-masked.conf": "/dev/null", f"{etc}/99-sysctl.conf": str(conf),
                                  f"{lib}/50-masked.conf": f"{lib}/50-masked.conf",
                                  f"{lib}/60-tabs.conf": f"{lib}/60-tabs.conf", str(conf): str(conf)}
    assert state.sysctl_lines == {f"{etc}/99-sysctl.conf": ["  net.ipv4.ip_forward = 0"],
                                  f"{lib}/50-masked.conf": ["net.ipv4.ip_forward = 0"],
                                  f"{lib}/60-tabs.conf": ["-net/bridge/bridge-nf-call-iptables\t=\t0"],
                                  str(conf): ["  net.ipv4.ip_forward = 0"]}
    assert parse_probe(probe_answer(state)) == state  # what the plan tests script is read back the same


def test_the_one_probe_asks_for_the_sysctl_files():
    settings = parse_host_settings({}, "w1", [])
    request = kernel.probe_request(settings)
    assert request.sysctl_config == list(WANTED)
    assert PODNET in request.texts and OLD_PODNET not in request.texts + request.hashes
    merged = request.merge(ProbeRequest(sysctls=["net.ipv4.ip_forward"]))
    assert probe_script(merged).count("for f in /etc/sysctl.d/*.conf /run/sysctl.d/*.conf "
                                      "/usr/local/lib/sysctl.d/*.conf /usr/lib/sysctl.d/*.conf "
                                      "/lib/sysctl.d/*.conf /etc/sysctl.conf; do") == 1


# --- plans through the real pyinfra CLI --------------------------------------------------------------


def test_case_a_converged_node_whose_sysctl_conf_turns_forwarding_off(cluster):
    worker = debian_sysctl_files(cluster.converged(WORKER), ("net.ipv4.ip_forward = 0",))
    run = run_pyinfra(cluster.inventory(cluster.converged(CP), worker), "-y")
    assert_ok(run)
    assert run.output.count(CASE_WARNING) == 1
    assert "@fake/cp1: /etc/sysctl.conf" not in run.output
    for host in (CP, WORKER):  # converged: the probe, nothing else
        assert run.commands(host) == probes(run, host) and len(probes(run, host)) == 1
        assert run.uploads(host) == []


def test_upgrade_from_the_old_name_installs_the_new_file_then_removes_the_old_one(cluster):
    worker = cluster.converged(WORKER)  # as an earlier podnet left it: the same values under the old name
    worker.hashes[OLD_PODNET] = worker.hashes.pop(PODNET)
    worker.modes[OLD_PODNET] = worker.modes.pop(PODNET)
    worker.sysctl_files = {OLD_PODNET: OLD_PODNET}
    worker.sysctl_lines = {OLD_PODNET: worker.sysctl_lines.pop(PODNET)}
    worker = debian_sysctl_files(worker, ("net.ipv4.ip_forward = 0",))
    run = run_pyinfra(cluster.inventory(cluster.converged(CP), worker), "-y")
    assert_ok(run)
    assert run.uploads(WORKER) == ["/etc/sysctl.d/.zz-podnet.conf.podnet-new"]
    commands = run.commands(WORKER)[1:]
    assert len(commands) == 3, commands
    assert commands[0] == "mkdir -p /etc/sysctl.d"
    assert commands[1].startswith("set -e; podnet_sum() {")
    check = "; chmod 0644 /etc/sysctl.d/.zz-podnet.conf.podnet-new; d0=$(podnet_sum /etc/sysctl.d/.zz-podnet.conf.podnet-new "
    assert commands[1].index(check) < commands[1].index("; mv -f /etc/sysctl.d/.zz-podnet.conf.podnet-new ")  # checked first
    assert "; mv -f /etc/sysctl.d/.zz-podnet.conf.podnet-new /etc/sysctl.d/zz-podnet.conf; " in commands[1]
    assert commands[2] == "rm -f /etc/sysctl.d/99-podnet.conf"  # only once the new file is in place
    assert ("@fake/w1: removing /etc/sysctl.d/99-podnet.conf: podnet's kernel parameters are persisted in "
            "/etc/sysctl.d/zz-podnet.conf now, which is read after /etc/sysctl.d/99-sysctl.conf at boot") in run.output
    assert run.output.count(CASE_WARNING) == 1
    assert run.commands(CP) == probes(run, CP)


def test_upgrade_shows_in_the_plan(cluster):
    worker = cluster.converged(WORKER)
    worker.sysctl_files[OLD_PODNET] = OLD_PODNET
    run = run_pyinfra(cluster.inventory(cluster.converged(CP), worker), "--dry", "--json")
    assert_ok(run)
    plan = run.plan()
    assert plan["kernel: sysctl.d file of earlier podnet releases removed"] == [WORKER]
    assert {op: hosts for op, hosts in plan.items() if hosts} == {
        "kernel: sysctl.d file of earlier podnet releases removed": [WORKER]}


def test_a_value_reset_behind_podnets_back_is_reported_when_it_is_set_again(cluster):
    worker = cluster.converged(WORKER)
    worker.sysctls["net.ipv4.ip_forward"] = "0"
    run = run_pyinfra(cluster.inventory(cluster.converged(CP), worker), "-y")
    assert_ok(run)
    assert run.commands(WORKER)[1:] == ["sysctl -q -w net.ipv4.ip_forward=1"]
    assert ("podnet: @fake/w1: net.ipv4.ip_forward is 0 although /etc/sysctl.d/zz-podnet.conf persists 1: something "
            "set it after boot (a script, a network manager, sysctl -w); setting 1 again") in run.output


def test_a_value_reset_by_a_file_read_after_podnets_is_reported_as_that_file(cluster):
    worker = debian_sysctl_files(cluster.converged(WORKER), extra={
        "/etc/sysctl.d/zzz-local.conf": ("/etc/sysctl.d/zzz-local.conf", ("net.ipv4.ip_forward = 0",))})
    worker.sysctls["net.ipv4.ip_forward"] = "0"
    run = run_pyinfra(cluster.inventory(cluster.converged(CP), worker), "-y")
    assert_ok(run)
    assert run.commands(WORKER)[1:] == ["sysctl -q -w net.ipv4.ip_forward=1"]
    assert ("podnet: @fake/w1: /etc/sysctl.d/zzz-local.conf sets net.ipv4.ip_forward = 0, podnet needs 1: at boot it "
            "is read after /etc/sysctl.d/zz-podnet.conf, so net.ipv4.ip_forward is 0 after every reboot until podnet "
            "runs again; set it to 1 there or remove that line") in run.output
    assert "net.ipv4.ip_forward is 0 although" not in run.output


def test_a_fresh_node_reports_the_conflict_before_its_first_reboot(cluster):
    worker = debian_sysctl_files(cluster.fresh(WORKER), ("net.ipv4.ip_forward = 0",))
    run = run_pyinfra(cluster.inventory(cluster.fresh(CP), worker), "-y")
    assert_ok(run)
    assert run.output.count(CASE_WARNING) == 1
    assert "/etc/sysctl.d/.zz-podnet.conf.podnet-new" in run.uploads(WORKER)
    assert not [c for c in run.commands(WORKER) if c.startswith("rm -f /etc/sysctl.d/")]


# --- a parameter that must change but cannot: refused before any change, both families ----------------


DUAL = {"cluster_cidr_ipv6": "fd00:10:244::/56"}


def node_with_sysctls(values: dict, read_only: bool = False) -> NodeState:
    return NodeState(sysctls=dict(values),
                     features={kernel.writable_feature(key): not read_only for key in values})


def test_dual_stack_needs_ipv6_forwarding_and_ipv4_forwarding_both():
    assert kernel.parameters(parse_host_settings(DUAL, "w1", ["workers"]))["net.ipv6.conf.all.forwarding"] == "1"
    assert kernel.parameters(parse_host_settings(DUAL, "w1", ["workers"]))["net.ipv4.ip_forward"] == "1"
    assert "net.ipv6.conf.all.forwarding" not in kernel.parameters(parse_host_settings({}, "w1", ["workers"]))


@pytest.mark.parametrize("key", ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"])
def test_a_parameter_the_node_cannot_write_is_refused_naming_it(key):
    s = parse_host_settings(DUAL, "w1", ["workers"])
    values = {**WANTED, "net.ipv6.conf.all.forwarding": "1", key: "0"}
    with pytest.raises(kernel.KernelParameterError) as raised:
        kernel.STEP.check(type("Ctx", (), {"settings": s, "node": node_with_sysctls(values, True),
                                           "host_name": "w1"})())
    assert str(raised.value) == (
        f"w1: {key} is 0, podnet needs 1, and this node cannot change it: /proc/sys/{key.replace('.', '/')} is "
        "read-only here (a container whose network namespace's sysctls the host that runs it sets); "
        f"set {key} = 1 for this node from the host that runs it, then run again")
    # read-only but already right: nothing to change, nothing refused
    assert kernel.unsettable_findings(s, node_with_sysctls({**values, key: "1"}, True), "w1") == []
    # writable: set during the run as usual
    assert kernel.unsettable_findings(s, node_with_sysctls(values), "w1") == []


def test_ipv6_switched_off_in_the_kernel_is_refused_on_dual_stack_only():
    values = {**WANTED, "net.ipv6.conf.all.forwarding": None}
    [found] = kernel.unsettable_findings(parse_host_settings(DUAL, "w1", ["workers"]), node_with_sysctls(values), "w1")
    assert found.message == (
        "w1: net.ipv6.conf.all.forwarding does not exist: IPv6 is switched off in this node's kernel (booted with "
        "ipv6.disable=1), and dual stack (cluster_cidr_ipv6) routes IPv6 pod traffic; boot the node with IPv6 on, or "
        "unset cluster_cidr_ipv6")
    assert found.is_error
    # br_netfilter not loaded yet: its parameters appear when podnet loads it
    fresh = {**WANTED, "net.bridge.bridge-nf-call-iptables": None, "net.bridge.bridge-nf-call-ip6tables": None}
    assert kernel.unsettable_findings(parse_host_settings({}, "w1", ["workers"]), node_with_sysctls(fresh), "w1") == []


def test_the_probes_writable_test_fails_on_a_read_only_proc_sys():
    s = parse_host_settings(DUAL, "w1", ["workers"])
    test = kernel.probe_request(s).features[kernel.writable_feature("net.ipv4.ip_forward")]
    assert subprocess.run(["sh", "-c", test], timeout=30).returncode == 0  # this machine's, as root
    # in a mount namespace of its own, /proc/sys bound read-only (nothing outside it changes)
    done = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -o bind,ro /proc/sys /proc/sys && {test}"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1, done.stderr


def test_a_read_only_node_is_refused_before_any_host_changes(cluster):
    worker = cluster.converged(WORKER)
    worker.sysctls["net.ipv4.ip_forward"] = "0"
    worker.features[kernel.writable_feature("net.ipv4.ip_forward")] = False
    run = run_pyinfra(cluster.inventory(cluster.converged(CP), worker), "-y")
    assert run.returncode != 0
    assert "w1: net.ipv4.ip_forward is 0, podnet needs 1, and this node cannot change it" in run.stderr
    for host in (CP, WORKER):
        assert run.commands(host) == probes(run, host)
