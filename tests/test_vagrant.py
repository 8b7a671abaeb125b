"""
The Vagrant test cluster, as far as it can be checked without a provider:

- inventory/vagrant.py against recorded `vagrant status --machine-readable` and `vagrant
  ssh-config` output (tests/fixtures/vagrant/: VirtualBox and libvirt, several machines,
  non-default ports and keys, machines not running, no provider at all), both through the
  functions in tasks/vagrant.py and through the real pyinfra CLI with a `vagrant` on PATH
  that plays the recording;
- the Vagrantfile with Debian's ruby (`ruby -c`, and loaded with a recording stand-in for
  Vagrant's configuration object, provider blocks included) and Debian's vagrant
  (`vagrant validate --ignore-provider`, which also writes the layout the inventory reads).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.settings import parse_inventory
from tasks.vagrant import (
    CLUSTER_DATA,
    Machine,
    SshConfig,
    VagrantError,
    groups,
    inventory,
    parse_ssh_config,
    parse_status,
    ssh_data,
)
from tests.support.hosts import FakeHost

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "vagrant"
LAYOUT = [Machine("cp1", "control_plane", "192.168.56.11"), Machine("worker1", "workers", "192.168.56.21"),
          Machine("worker2", "workers", "192.168.56.22")]
LIBVIRT_LAYOUT = [Machine("cp1", "control_plane", "192.168.56.11"), Machine("cp2", "control_plane", "192.168.56.12"),
                  Machine("worker1", "workers", "192.168.56.21"), Machine("worker2", "workers", "192.168.56.22")]


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def needs(tool: str):
    """Skip where the tool is missing, except in CI, where `make deps` installs it."""
    if shutil.which(tool) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is not installed; `make deps` installs it")
        pytest.skip(f"{tool} is not installed (`make deps` installs it)")


# --- recorded output, parsed ------------------------------------------------------------


def test_ssh_config_of_virtualbox_machines():
    configs = parse_ssh_config(fixture("virtualbox-ssh-config.txt"))
    assert list(configs) == ["cp1", "worker1"]
    assert ssh_data(configs["cp1"], exists=lambda path: True) == {
        "ssh_hostname": "127.0.0.1", "ssh_port": 2222, "ssh_user": "vagrant",
        "ssh_key": "/home/alice/src/podnet/.vagrant/machines/cp1/virtualbox/private_key",
        "ssh_allow_agent": False, "ssh_look_for_keys": False,
        "ssh_known_hosts_file": "/dev/null", "ssh_strict_host_key_checking": "no"}
    worker = ssh_data(configs["worker1"], exists=lambda path: True)
    assert worker["ssh_port"] == 2200
    # Vagrant quotes a key path with a space; the quotes are not part of the path
    assert worker["ssh_key"] == "/home/alice/my projects/podnet/.vagrant/machines/worker1/virtualbox/private_key"


def test_ssh_config_of_libvirt_machines_picks_the_first_key_that_exists():
    configs = parse_ssh_config(fixture("libvirt-ssh-config.txt"))
    assert list(configs) == ["cp1", "cp2", "worker1"]
    assert ssh_data(configs["cp1"])["ssh_hostname"] == "192.168.121.37"
    assert ssh_data(configs["cp1"])["ssh_port"] == 22
    keys = configs["cp2"].identity_files
    assert keys == ["/home/bob/.vagrant.d/insecure_private_keys/vagrant.key.ed25519",
                    "/home/bob/.vagrant.d/insecure_private_keys/vagrant.key.rsa"]
    assert ssh_data(configs["cp2"], exists=lambda path: path.endswith(".rsa"))["ssh_key"] == keys[1]
    assert ssh_data(configs["cp2"], exists=lambda path: False)["ssh_key"] == keys[0]


def test_ssh_config_with_a_proxy_command_is_refused_by_name():
    config = SshConfig("cp1", {"hostname": "192.168.121.5", "proxycommand": "ssh -W %h:%p kvmhost"})
    with pytest.raises(VagrantError, match="cp1: Vagrant reaches it through ProxyCommand 'ssh -W %h:%p kvmhost'"):
        ssh_data(config)


def test_status_gives_each_machines_state():
    assert parse_status(fixture("virtualbox-status.txt")) == {
        "cp1": "running", "worker1": "running", "worker2": "poweroff"}
    assert parse_status(fixture("libvirt-status.txt")) == {
        "cp1": "running", "cp2": "running", "worker1": "running", "worker2": "shutoff"}


def test_status_without_a_provider_reports_vagrants_own_message():
    with pytest.raises(VagrantError) as error:
        parse_status(fixture("no-provider-status.txt"))
    message = str(error.value)
    assert message.startswith("`vagrant status` failed: No usable default provider could be found for your system.")
    assert "known as\n\"providers\", to provide Vagrant" in message  # Vagrant's escapes are undone


# --- the inventory ----------------------------------------------------------------------


def build(status: str, ssh_config: str, layout=LAYOUT) -> tuple[dict, list[str]]:
    warnings: list[str] = []
    result = groups(layout, parse_status(fixture(status)), parse_ssh_config(fixture(ssh_config)),
                    warnings.append, exists=lambda path: True)
    return result, warnings


def test_running_machines_get_their_private_address_as_node_ip_and_flannel_iface():
    result, warnings = build("libvirt-status.txt", "libvirt-ssh-config.txt", LIBVIRT_LAYOUT)
    assert [name for name, _ in result["control_plane"]] == ["cp1", "cp2"]
    assert [name for name, _ in result["workers"]] == ["worker1"]
    for name, data in result["control_plane"] + result["workers"]:
        address = next(m.ip for m in LIBVIRT_LAYOUT if m.name == name)
        assert data["node_ip"] == data["flannel_iface"] == address
        assert not data["node_ip"].startswith(("10.0.2.", "192.168.121."))  # never a NAT / management address
    assert warnings == ["inventory/vagrant.py: leaving out worker2 (shutoff): not running; `vagrant up worker2` "
                        "adds them on the next run"]


def test_a_stopped_worker_is_left_out_with_a_warning():
    result, warnings = build("virtualbox-status.txt", "virtualbox-ssh-config.txt")
    assert [name for name, _ in result["workers"]] == ["worker1"]
    assert "worker2 (poweroff)" in warnings[0]


def test_nothing_running_is_a_clear_error():
    with pytest.raises(VagrantError) as error:
        build("not-created-status.txt", "virtualbox-ssh-config.txt")
    assert str(error.value) == ("no Vagrant machine of this cluster is running (cp1: not_created, worker1: "
                                "not_created, worker2: not_created); run `vagrant up` first")


def test_a_stopped_control_plane_is_a_clear_error():
    with pytest.raises(VagrantError) as error:
        build("control-plane-off-status.txt", "virtualbox-ssh-config.txt")
    assert str(error.value) == ("control-plane machine cp1 is not running (cp1: poweroff, worker1: running, "
                                "worker2: running); run `vagrant up cp1`")


def test_the_vagrant_inventory_passes_podnets_settings_validation():
    result, _ = build("libvirt-status.txt", "libvirt-ssh-config.txt", LIBVIRT_LAYOUT)
    hosts = [FakeHost(name, {**CLUSTER_DATA, **data}, [group, "vagrant"])
             for group, members in result.items() for name, data in members]
    parsed = parse_inventory(hosts)
    assert all(s.cluster_bootstrap and s.flannel_iface_is_node_ip for s in parsed.values())
    assert [name for name, s in parsed.items() if s.is_control_plane] == ["cp1", "cp2"]


def test_missing_vagrant_is_a_clear_error(tmp_path):
    with pytest.raises(VagrantError, match=r"the `vagrant` command was not found on PATH; install Vagrant with the "
                                           r"libvirt \(vagrant-libvirt\) or VirtualBox provider, then run "):
        inventory(tmp_path, warn=print, which=lambda name: None)


def play(status: str, ssh_config: str, status_exit: int = 0):
    """Vagrant at the process boundary: the recorded answer of each command."""
    def run(arguments, root):
        answers = {"status": (status, status_exit), "ssh-config": (ssh_config, 0)}
        text, code = answers[arguments[1]]
        return subprocess.CompletedProcess(arguments, code, fixture(text) if text else "", "")
    return run


def test_inventory_asks_vagrant_for_the_running_machines_only(tmp_path):
    (tmp_path / ".vagrant").mkdir()
    (tmp_path / ".vagrant" / "podnet-layout.json").write_text(json.dumps(
        {"machines": [m.__dict__ for m in LAYOUT]}))
    asked = []
    player = play("virtualbox-status.txt", "virtualbox-ssh-config.txt")
    result = inventory(tmp_path, warn=lambda message: None, which=lambda name: "/usr/bin/vagrant",
                       run=lambda arguments, root: asked.append(arguments) or player(arguments, root))
    assert asked == [["vagrant", "status", "--machine-readable"], ["vagrant", "ssh-config", "cp1", "worker1"]]
    assert [name for name, _ in result["control_plane"] + result["workers"]] == ["cp1", "worker1"]


def test_inventory_reports_vagrants_failure(tmp_path):
    with pytest.raises(VagrantError, match="No usable default provider could be found"):
        inventory(tmp_path, warn=print, which=lambda name: "/usr/bin/vagrant",
                  run=play("no-provider-status.txt", "", status_exit=1))


# --- through the real pyinfra CLI -------------------------------------------------------------


def vagrant_player(bin_dir: Path, status: str, ssh_config: str) -> None:
    """A `vagrant` executable that answers with the recording."""
    bin_dir.mkdir()
    script = bin_dir / "vagrant"
    script.write_text(f"""#!/bin/sh
case "$1" in
  status) cat {FIXTURES / status} ;;
  ssh-config) cat {FIXTURES / ssh_config} ;;
  *) echo "unexpected: $*" >&2; exit 2 ;;
esac
""")
    script.chmod(0o755)


def debug_inventory(tmp_path: Path, path_dirs: list[Path]) -> subprocess.CompletedProcess:
    # The real inventory file, next to the layout in a copy of the repository root.
    (tmp_path / "inventory").mkdir()
    shutil.copy(REPO / "inventory" / "vagrant.py", tmp_path / "inventory" / "vagrant.py")
    env = dict(os.environ, PATH=os.pathsep.join(str(p) for p in path_dirs))
    return subprocess.run([sys.executable, "-m", "pyinfra", str(tmp_path / "inventory" / "vagrant.py"),
                           "debug-inventory"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_pyinfra_loads_the_vagrant_inventory(tmp_path):
    (tmp_path / ".vagrant").mkdir()
    (tmp_path / ".vagrant" / "podnet-layout.json").write_text(json.dumps(
        {"machines": [m.__dict__ for m in LAYOUT]}))
    vagrant_player(tmp_path / "bin", "virtualbox-status.txt", "virtualbox-ssh-config.txt")
    done = debug_inventory(tmp_path, [tmp_path / "bin", Path(sys.executable).parent, Path("/usr/bin"), Path("/bin")])
    assert done.returncode == 0, done.stderr + done.stdout
    output = done.stdout + done.stderr
    sections = {block.split("]")[0]: block for block in output.split("\n[")[1:]}
    assert set(sections) == {"cp1", "worker1"}
    assert "--> Groups: control_plane, vagrant" in sections["cp1"]
    assert "--> Groups: workers, vagrant" in sections["worker1"]
    for name, address, port in (("cp1", "192.168.56.11", 2222), ("worker1", "192.168.56.21", 2200)):
        data = json.loads(sections[name][sections[name].index("{"):sections[name].rindex("}") + 1])
        assert data["node_ip"] == data["flannel_iface"] == address
        assert (data["ssh_hostname"], data["ssh_port"], data["ssh_user"]) == ("127.0.0.1", port, "vagrant")
        assert data["cluster_bootstrap"] is True and data["_sudo"] is True
    assert "leaving out worker2 (poweroff)" in output


def test_pyinfra_without_vagrant_says_so(tmp_path):
    done = debug_inventory(tmp_path, [Path(sys.executable).parent])
    assert done.returncode != 0
    assert "the `vagrant` command was not found on PATH" in done.stdout + done.stderr


# --- the Vagrantfile ------------------------------------------------------------------------


def test_vagrantfile_is_valid_ruby():
    needs("ruby")
    done = subprocess.run(["ruby", "-c", str(REPO / "Vagrantfile")], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "Syntax OK", done.stderr


def recorded_config(tmp_path: Path, provider: str, **env: str) -> dict:
    needs("ruby")
    shutil.copy(REPO / "Vagrantfile", tmp_path / "Vagrantfile")
    done = subprocess.run(["ruby", str(FIXTURES / "record_config.rb"), str(tmp_path / "Vagrantfile"), provider],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **env}, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("provider, box", [("libvirt", "debian/trixie64"), ("virtualbox", "bento/debian-13")])
def test_vagrantfile_defaults(tmp_path, provider, box):
    config = recorded_config(tmp_path, provider)
    assert config["config.vm.box"] == box
    assert config["config.vm.defines"] == ["cp1", "worker1", "worker2"]
    assert set(config["config.vm.providers"]) == {"libvirt", "virtualbox"}
    for name, address in (("cp1", "192.168.56.11"), ("worker1", "192.168.56.21"), ("worker2", "192.168.56.22")):
        assert config[f"config.vm.define.{name}.vm.hostname"] == name
        assert config[f"config.vm.define.{name}.vm.network"] == [["private_network", {"ip": address}]]
    assert config[f"provider.{provider}.cpus"] == 2  # kubeadm's preflight wants 2 on a control plane
    assert config[f"provider.{provider}.memory"] == 2048  # and 1700 MiB
    assert config["config.vm.synced_folder"] == [[".", "/vagrant", {"disabled": True}]]
    layout = json.loads((tmp_path / ".vagrant" / "podnet-layout.json").read_text())
    assert [Machine(**m) for m in layout["machines"]] == LAYOUT


def test_vagrantfile_settings_from_the_environment(tmp_path):
    config = recorded_config(tmp_path, "virtualbox", PODNET_VAGRANT_CONTROL_PLANES="2", PODNET_VAGRANT_WORKERS="3",
                             PODNET_VAGRANT_BOX="bento/ubuntu-24.04", PODNET_VAGRANT_CPUS="4",
                             PODNET_VAGRANT_MEMORY="4096", PODNET_VAGRANT_NETWORK="192.168.60")
    assert config["config.vm.defines"] == ["cp1", "cp2", "worker1", "worker2", "worker3"]
    assert config["config.vm.box"] == "bento/ubuntu-24.04"
    assert config["config.vm.define.cp2.vm.network"] == [["private_network", {"ip": "192.168.60.12"}]]
    assert config["config.vm.define.worker3.vm.network"] == [["private_network", {"ip": "192.168.60.23"}]]
    assert (config["provider.virtualbox.cpus"], config["provider.virtualbox.memory"]) == (4, 4096)
    layout = json.loads((tmp_path / ".vagrant" / "podnet-layout.json").read_text())
    assert [m["name"] for m in layout["machines"]] == ["cp1", "cp2", "worker1", "worker2", "worker3"]
    assert {m["role"] for m in layout["machines"][:2]} == {"control_plane"}


@pytest.mark.parametrize("variable, value, message", [
    ("PODNET_VAGRANT_WORKERS", "two", 'PODNET_VAGRANT_WORKERS: "two" is not valid; expected a number of worker '
                                      'machines from 0 to 79'),
    ("PODNET_VAGRANT_CONTROL_PLANES", "0", 'PODNET_VAGRANT_CONTROL_PLANES: "0" is not valid; expected a number of '
                                           'control-plane machines from 1 to 9'),
    ("PODNET_VAGRANT_MEMORY", "1024", 'PODNET_VAGRANT_MEMORY: "1024" is not valid; expected a memory size in MiB '
                                      'from 1700 to 262144'),
    ("PODNET_VAGRANT_CPUS", "1", 'PODNET_VAGRANT_CPUS: "1" is not valid; expected a number of CPUs from 2 to 64'),
    ("PODNET_VAGRANT_NETWORK", "192.168.56.0/24", 'PODNET_VAGRANT_NETWORK: "192.168.56.0/24" is not valid; '
                                                  'expected the first three octets of an IPv4 /24 such as 192.168.56'),
])
def test_vagrantfile_rejects_bad_settings_naming_them(tmp_path, variable, value, message):
    needs("ruby")
    shutil.copy(REPO / "Vagrantfile", tmp_path / "Vagrantfile")
    done = subprocess.run(["ruby", str(FIXTURES / "record_config.rb"), str(tmp_path / "Vagrantfile"), "libvirt"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, variable: value}, check=False)
    assert done.returncode != 0
    assert message in done.stderr


def test_vagrant_validates_the_vagrantfile_and_it_writes_the_layout_the_inventory_reads(tmp_path):
    needs("vagrant")
    shutil.copy(REPO / "Vagrantfile", tmp_path / "Vagrantfile")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PODNET_VAGRANT_", "VAGRANT_"))}
    env.update(VAGRANT_HOME=str(tmp_path / "vagrant.d"), VAGRANT_CWD=str(tmp_path))
    done = subprocess.run(["vagrant", "validate", "--ignore-provider"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Vagrantfile validated successfully." in done.stdout
    layout = json.loads((tmp_path / ".vagrant" / "podnet-layout.json").read_text())
    assert [Machine(**m) for m in layout["machines"]] == LAYOUT
    # the recorded output names the same machines as the Vagrantfile
    assert set(parse_status(fixture("virtualbox-status.txt"))) == {m.name for m in LAYOUT}
