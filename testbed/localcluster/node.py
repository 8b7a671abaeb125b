"""One node: its overlay root, its identity files, booting it, and the host-side fix-ups.

Layout of a node under the state dir:  nodes/<name>/{upper,work,root,nspawn.log}
`root` is an overlayfs mount (lower = shared base rootfs, upper/work = this node's).
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from dataclasses import asdict, dataclass
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

from .mounts import read_mounts
from .net import ifname_by_index
from .util import ClusterError, log, run, wait_for

NSPAWN_ENV = {
    # Test-bed quirks of this host (see package docstring): no seccomp filter and
    # writable /proc/sys,/sys so that containerd/runc can work inside the node.
    "SYSTEMD_SECCOMP": "0",
    "SYSTEMD_NSPAWN_API_VFS_WRITABLE": "1",
}


@dataclass
class Node:
    name: str
    ip: str
    pid: int | None = None  # the systemd-nspawn process (host PID)
    leader_pid: int | None = None  # the node's PID 1, systemd (host PID)
    rootfs: str = ""  # the node's root directory on the host (overlay mount point)
    veth: str | None = None  # host side of the node's host0 interface
    ip6: str = ""  # its IPv6 address on the bridge (a dual-stack bed), else ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Node:
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in fields})


# --- paths ---------------------------------------------------------------------------


def node_dir(state_dir: str | Path, name: str) -> Path:
    return Path(state_dir) / "nodes" / name


def upper_dir(state_dir: str | Path, name: str) -> Path:
    return node_dir(state_dir, name) / "upper"


def root_dir(state_dir: str | Path, name: str) -> Path:
    return node_dir(state_dir, name) / "root"


def log_path(state_dir: str | Path, name: str) -> Path:
    return node_dir(state_dir, name) / "nspawn.log"


# Node directories that must NOT live on the overlay root.  Test-bed quirk: overlayfs
# cannot use an overlayfs as upper dir, so containerd's overlayfs snapshotter fails on
# the node's root; its state dir is bind-mounted from a plain host directory instead.
BIND_DIRS = {"containerd": "/var/lib/containerd"}


def bind_mounts(state_dir: str | Path, name: str) -> dict[Path, str]:
    """{host dir: path in the node} for the node's bind-mounted state directories."""
    return {node_dir(state_dir, name) / "binds" / key: path for key, path in BIND_DIRS.items()}


# --- root filesystem -----------------------------------------------------------------


def mount_overlay(base: Path, state_dir: str | Path, name: str) -> Path:
    """Mount a copy-on-write root for the node (source name = node name, for `mount`)."""
    ndir = node_dir(state_dir, name)
    upper, work, root = ndir / "upper", ndir / "work", ndir / "root"
    for path in (upper, work, root):
        path.mkdir(parents=True, exist_ok=True)
    for path in (base, upper, work):
        if set(str(path)) & set(",:"):
            raise ClusterError(f"overlay paths must not contain ',' or ':': {path}")
    options = f"lowerdir={base},upperdir={upper},workdir={work}"
    run(["mount", "-t", "overlay", name, "-o", options, str(root)])
    for host_dir in bind_mounts(state_dir, name):
        host_dir.mkdir(parents=True, exist_ok=True)
    return root


def write_identity(root: Path, name: str, hosts: dict[str, str], pubkey: str) -> None:
    """Per-node files, written through the overlay into the node's upper dir."""
    (root / "etc/hostname").write_text(name + "\n")
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += [f"{addr}\t{host}" for host, addr in hosts.items()]
    (root / "etc/hosts").write_text("\n".join(lines) + "\n")
    (root / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
    # No DNS: nodes have no route off the bridge (glibc falls back to 127.0.0.1).
    resolv = root / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.write_text("# localcluster test node: no DNS\n")
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    keys = ssh_dir / "authorized_keys"
    keys.write_text(pubkey.strip() + "\n")
    keys.chmod(0o600)
    # Fresh host keys for this node (the base has none): writes root/etc/ssh/ssh_host_*.
    run(["ssh-keygen", "-A", "-f", str(root)])


# --- booting -------------------------------------------------------------------------


def nspawn_argv(root: Path, name: str, bridge: str, binds: dict[Path, str]) -> list[str]:
    return [
        "systemd-nspawn",
        "-D", str(root),
        "-b",
        "--register=no",  # no systemd-machined on this host
        "--keep-unit",
        "--capability=all",
        f"--network-bridge={bridge}",
        "-M", name,
        "--link-journal=no",  # keep the node's journal inside the node
        "--console=read-only",  # boot messages go to the log file
        "--resolv-conf=off",  # keep the node's own (DNS-less) resolv.conf
        "--setenv=SYSTEMD_COLORS=0",  # plain-text boot log
        "--bind=/dev/kmsg",  # the kubelet's OOM watcher opens it (test clusters run a real kubelet)
        *(f"--bind={host}:{inside}" for host, inside in binds.items()),
    ]  # fmt: skip


def start_nspawn(state_dir: str | Path, name: str, bridge: str) -> subprocess.Popen:
    """Start the node detached (own session), output to its log file. Returns at once."""
    argv = nspawn_argv(root_dir(state_dir, name), name, bridge, bind_mounts(state_dir, name))
    with open(log_path(state_dir, name), "ab") as out:
        return subprocess.Popen(
            argv,
            env={**os.environ, **NSPAWN_ENV},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )


def pid_alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def child_pids(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return children


def is_namespace_init(pid: int) -> bool:
    """True if `pid` is PID 1 of a nested PID namespace (NSpid: <host pid> ... 1)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            ids = line.split()[1:]
            return len(ids) >= 2 and ids[-1] == "1"
    return False


def find_leader(nspawn_pid: int) -> int | None:
    """The node's PID 1: the child of systemd-nspawn that is init of its own PID namespace."""
    for child in child_pids(nspawn_pid):
        if is_namespace_init(child):
            return child
    return None


def wait_leader(nspawn_pid: int, name: str, timeout: float, cancelled) -> int:
    def probe() -> int | None:
        if not pid_alive(nspawn_pid):
            raise ClusterError(f"systemd-nspawn for {name} exited during start")
        return find_leader(nspawn_pid)

    return wait_for(probe, what=f"PID 1 of {name}", timeout=timeout, cancelled=cancelled)


# --- host-side fix-ups inside the node's namespaces ----------------------------------


def nsenter(leader: int, ns_flags: str, *argv: str, check: bool = True, timeout: float = 30):
    return run(["nsenter", "-t", str(leader), ns_flags, "--", *argv], check=check, timeout=timeout)


def configure_network(leader: int, ip: str, subnet: IPv4Network, timeout: float, cancelled, ip6: str = "",
                      subnet6: IPv6Network | None = None):
    """Give host0 its address (no routes besides the connected /24; with ``ip6``, also that IPv6
    address and its connected /64, without duplicate address detection: the harness chose it unique,
    and the node can use it at once) and bring links up."""
    wait_for(
        lambda: nsenter(leader, "-n", "ip", "link", "show", "host0", check=False).returncode == 0,
        what=f"host0 in PID {leader}",
        timeout=timeout,
        cancelled=cancelled,
    )
    nsenter(leader, "-n", "ip", "addr", "replace", f"{ip}/{subnet.prefixlen}", "dev", "host0")
    if ip6 and subnet6 is not None:
        nsenter(leader, "-n", "ip", "-6", "addr", "replace", f"{ip6}/{subnet6.prefixlen}", "dev", "host0", "nodad")
    nsenter(leader, "-n", "ip", "link", "set", "host0", "up")
    nsenter(leader, "-n", "ip", "link", "set", "lo", "up")


def host_veth(leader: int) -> str | None:
    """Host-side name of the node's host0 veth (its peer ifindex, looked up on the host)."""
    out = nsenter(leader, "-n", "ip", "-j", "link", "show", "host0").stdout
    peer = json.loads(out)[0].get("link_index")
    return ifname_by_index(peer) if peer else None


def cgroup_fixup_commands(mounts, in_use: bool = False) -> list[list[str]]:
    """Commands (to run in the node's mount namespace) that make cgroup v1 writable (pure).

    nspawn mounts the v1 controller hierarchies read-only; runc must create cgroups in
    them.  Each read-only controller mount is replaced by a fresh rw mount of the same
    controller(s); the /sys/fs/cgroup tmpfs itself is remounted rw.  systemd's own
    named hierarchy and the cgroup2 mount are left alone.
    """
    commands = [["mount", "-o", "remount,rw", "/sys/fs/cgroup"]]
    for m in mounts:
        controllers = os.path.basename(m.mountpoint)
        if (
            m.fstype == "cgroup"
            and os.path.dirname(m.mountpoint) == "/sys/fs/cgroup"
            and "ro" in m.options.split(",")
            and not controllers.startswith("name=")
            and controllers != "systemd"
        ):
            if in_use:  # only this mount's read-only flag: the hierarchy itself is the host's, read-write
                commands.append(["mount", "-o", "remount,bind,rw", m.mountpoint])
                continue
            commands.append(["umount", m.mountpoint])
            commands.append(["mount", "-t", "cgroup", "-o", controllers, "cgroup", m.mountpoint])
    return commands


def fix_cgroups(leader: int, in_use: bool = False) -> None:
    """``in_use``: the read-only mounts are in use (a rebooted node's services already run): they are
    made read-write where they are instead of being replaced."""
    for argv in cgroup_fixup_commands(read_mounts(leader), in_use):
        nsenter(leader, "-m", *argv)


# --- waiting for the node to be usable -----------------------------------------------


def wait_system_running(ssh, name: str, timeout: float, cancelled) -> str:
    """Wait until `systemctl is-system-running` says running or degraded; returns it."""

    def probe() -> str | None:
        state = ssh("systemctl is-system-running").stdout.strip()
        return state if state in ("running", "degraded") else None

    state = wait_for(probe, what=f"boot of {name}", timeout=timeout, cancelled=cancelled)
    if state == "degraded":
        failed = ssh("systemctl --failed --no-legend --plain").stdout.strip()
        log.warning("%s booted degraded; failed units:\n%s", name, failed)
    return state
