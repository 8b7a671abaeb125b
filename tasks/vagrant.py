"""
The pyinfra inventory of the Vagrant test cluster (used by inventory/vagrant.py).

Asks Vagrant itself, with no pyinfra connector in between: `vagrant status
--machine-readable` for which machines run (it also makes the Vagrantfile write its layout,
.vagrant/podnet-layout.json: machine, role, private address), then `vagrant ssh-config` for
how to reach the running ones. Each host gets:

- SSH data from ssh-config (address, port, user, key, Vagrant's host-key settings);
- node_ip and flannel_iface set to its address on the private network, so the kubelet,
  the API server and flanneld never use Vagrant's NAT interface (10.0.2.15 on every
  VirtualBox machine, the classic cause of flannel failing on Vagrant).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tasks.errors import PodnetError

LAYOUT = Path(".vagrant") / "podnet-layout.json"
TIMEOUT = 300  # seconds for one vagrant command (it starts slowly)
# Settings of the Vagrant cluster: fresh machines, reached as the vagrant user.
CLUSTER_DATA = {"cluster_bootstrap": True, "_sudo": True}


class VagrantError(PodnetError):
    """The Vagrant cluster cannot be listed; the message says what to do."""


@dataclass
class SshConfig:
    """One `Host` block of `vagrant ssh-config`."""

    name: str
    options: dict[str, str] = field(default_factory=dict)  # lower-cased keyword -> value (the first one)
    identity_files: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Machine:
    name: str
    role: str  # the inventory group: "control_plane" or "workers"
    ip: str


def _unquote(value: str) -> str:
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value


def parse_ssh_config(text: str) -> dict[str, SshConfig]:
    """`vagrant ssh-config` output -> machine name -> its settings."""
    hosts: dict[str, SshConfig] = {}
    current: SshConfig | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, value = line.partition(" ")
        keyword, value = keyword.lower(), _unquote(value.strip())
        if keyword == "host":
            current = hosts.setdefault(value, SshConfig(value))
        elif current is None:
            raise VagrantError(f"unexpected `vagrant ssh-config` output before any Host line: {line!r}")
        elif keyword == "identityfile":
            current.identity_files.append(value)
        else:
            current.options.setdefault(keyword, value)
    return hosts


def _unescape(data: str) -> str:
    return data.replace("%!(VAGRANT_COMMA)", ",").replace("\\n", "\n").replace("\\r", "\r")


def parse_status(text: str) -> dict[str, str]:
    """`vagrant status --machine-readable` -> machine name -> state (running, poweroff, ...)."""
    states: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split(",", 3)
        if len(parts) != 4:
            continue
        _, target, kind, data = parts
        if kind == "error-exit":
            message = _unescape(data.partition(",")[2] or data)
            raise VagrantError(f"`vagrant status` failed: {message}")
        if kind == "state" and target:
            states[target] = data
    return states


def read_layout(path: Path) -> list[Machine]:
    try:
        document = json.loads(path.read_text())
        return [Machine(m["name"], m["role"], m["ip"]) for m in document["machines"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise VagrantError(f"{path}: cannot read the layout the Vagrantfile writes ({error}); "
                           "run `vagrant status` in the repository to see why") from None


def ssh_data(config: SshConfig, exists: Callable[[str], bool] = os.path.exists) -> dict:
    """pyinfra's SSH connector data for one machine, as Vagrant says to reach it."""
    options = config.options
    if "proxycommand" in options:
        raise VagrantError(f"{config.name}: Vagrant reaches it through ProxyCommand {options['proxycommand']!r}, "
                           "which inventory/vagrant.py does not support; run pyinfra where the machines are")
    data: dict = {"ssh_hostname": options["hostname"], "ssh_port": int(options.get("port", "22")),
                  "ssh_user": options.get("user", "vagrant")}
    if config.identity_files:
        # Vagrant lists every key it may use (e.g. its insecure ed25519 and rsa keys): take the
        # first one that exists on this machine.
        data["ssh_key"] = next((key for key in config.identity_files if exists(key)), config.identity_files[0])
    if options.get("identitiesonly") == "yes":
        data.update(ssh_allow_agent=False, ssh_look_for_keys=False)
    if options.get("userknownhostsfile"):
        data["ssh_known_hosts_file"] = options["userknownhostsfile"]
    if options.get("stricthostkeychecking"):
        data["ssh_strict_host_key_checking"] = options["stricthostkeychecking"]
    return data


def groups(layout: list[Machine], states: dict[str, str], configs: dict[str, SshConfig],
           warn: Callable[[str], None], exists: Callable[[str], bool] = os.path.exists) -> dict[str, list]:
    """The inventory groups (control_plane, workers) of the running machines, with their data."""
    unknown = sorted(set(states) - {m.name for m in layout})
    if unknown:
        raise VagrantError(f"Vagrant reports machines that the Vagrantfile's layout does not list: "
                           f"{', '.join(unknown)}")
    known = [m for m in layout if m.name in states]
    running = [m for m in known if states[m.name] == "running"]
    stopped = [m for m in known if states[m.name] != "running"]
    described = ", ".join(f"{m.name}: {states[m.name]}" for m in known)
    if not running:
        raise VagrantError(f"no Vagrant machine of this cluster is running ({described}); run `vagrant up` first")
    stopped_control_planes = [m for m in stopped if m.role == "control_plane"]
    if stopped_control_planes:
        names = " ".join(m.name for m in stopped_control_planes)
        raise VagrantError(f"control-plane machine {names} is not running ({described}); run `vagrant up {names}`")
    if stopped:
        warn(f"inventory/vagrant.py: leaving out {', '.join(f'{m.name} ({states[m.name]})' for m in stopped)}: "
             f"not running; `vagrant up {' '.join(m.name for m in stopped)}` adds them on the next run")
    result: dict[str, list] = {"control_plane": [], "workers": []}
    for machine in running:
        if machine.name not in configs:
            raise VagrantError(f"{machine.name}: `vagrant ssh-config` gave nothing for this running machine")
        data = ssh_data(configs[machine.name], exists)
        data.update(node_ip=machine.ip, flannel_iface=machine.ip)
        result.setdefault(machine.role, []).append((machine.name, data))
    return result


def _run(arguments: list[str], root: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, VAGRANT_CWD=str(root), VAGRANT_NO_COLOR="1")
    try:
        return subprocess.run(arguments, cwd=root, env=env, capture_output=True, text=True, timeout=TIMEOUT,
                              check=False)
    except subprocess.TimeoutExpired:
        raise VagrantError(f"`{' '.join(arguments)}` gave no answer in {TIMEOUT} seconds") from None


def inventory(root: Path, warn: Callable[[str], None], run: Callable = _run,
              which: Callable[[str], str | None] = shutil.which) -> dict[str, list]:
    """Ask Vagrant in ``root`` (the directory of the Vagrantfile) for the cluster's groups."""
    if which("vagrant") is None:
        raise VagrantError("inventory/vagrant.py: the `vagrant` command was not found on PATH; install Vagrant "
                           "with the libvirt (vagrant-libvirt) or VirtualBox provider, then run `vagrant up` "
                           f"in {root}")
    status = run(["vagrant", "status", "--machine-readable"], root)
    states = parse_status(status.stdout)
    if status.returncode != 0 or not states:
        detail = (status.stderr or status.stdout).strip()[-800:] or "no output"
        raise VagrantError(f"`vagrant status` in {root} failed (exit {status.returncode}): {detail}")
    layout = read_layout(root / LAYOUT)
    running = [m.name for m in layout if states.get(m.name) == "running"]
    configs: dict[str, SshConfig] = {}
    if running:
        answer = run(["vagrant", "ssh-config", *running], root)
        if answer.returncode != 0:
            raise VagrantError(f"`vagrant ssh-config {' '.join(running)}` failed (exit {answer.returncode}): "
                               f"{answer.stderr.strip()[-800:] or answer.stdout.strip()[-800:]}")
        configs = parse_ssh_config(answer.stdout)
    return groups(layout, states, configs, warn)
