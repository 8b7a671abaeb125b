"""The Cluster: boots N nodes on a private bridge, gives ssh access and a pyinfra inventory."""

from __future__ import annotations

import ast
import os
import pprint
import re
import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Self

from . import limits, net, node
from .node import Node
from .rootfs import ensure_base_rootfs
from .state import load_state, save_state
from .teardown import STATE_DIR_ENTRIES, is_our_leader, nspawn_root, teardown
from .util import ClusterError, log, run, wait_for

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
HOST_TOOLS = ["systemd-nspawn", "debootstrap", "nsenter", "ip", "mount", "ssh", "ssh-keygen"]
SSH_CONNECT_TIMEOUT = 5
START_TIMEOUT = 30.0  # nspawn -> node PID 1 -> host0 present


class Cluster:
    """A local cluster of real Debian nodes (systemd-nspawn) on a bridge of its own.

    `nodes` (the int) is how many to boot; after up(), `self.nodes` is the list of Node.
    `ipv6`: the nodes also get an IPv6 address each, from a unique local /64 chosen like the
    IPv4 /24 (net.choose_subnet), for dual-stack clusters; the host gets no IPv6 address or route.
    """

    def __init__(
        self,
        name: str = "podnet",
        nodes: int = 3,
        state_dir: str | Path = "/tmp/podnet-cluster",
        suite: str = "bookworm",
        boot_timeout: float | None = None,
        ipv6: bool = False,
    ):
        if not NAME_RE.match(name):
            raise ClusterError(f"cluster name {name!r} must match {NAME_RE.pattern}")
        if not 1 <= nodes <= net.MAX_NODES:
            raise ClusterError(f"nodes must be 1..{net.MAX_NODES}, not {nodes}")
        self.name = name
        self.node_count = nodes
        self.state_dir = Path(state_dir).absolute()
        self.suite = suite
        # Parallel boots share 2 cores here: allow a little more time per node.
        self.boot_timeout = boot_timeout or 60.0 + 5.0 * nodes
        self.nodes: list[Node] = []
        self.bridge = net.bridge_name(name)
        self.subnet: IPv4Network | None = None
        self.ipv6 = ipv6
        self.subnet6: IPv6Network | None = None
        self.key_path = self.state_dir / "id_ed25519"
        self._state: dict = {}
        self._lock = threading.Lock()  # guards self._state and the state file
        self._procs: dict[int, subprocess.Popen] = {}  # our nspawn children, to reap them
        self._cancel = threading.Event()

    # --- context manager -------------------------------------------------------------

    def __enter__(self) -> Self:
        self.up()
        return self

    def __exit__(self, *exc) -> bool:
        self.down()
        return False

    # --- public API ------------------------------------------------------------------

    def up(self) -> Cluster:
        """Boot the cluster, or reuse the one already recorded in state_dir (if healthy)."""
        if self.nodes:
            return self
        existing = load_state(self.state_dir)
        if existing is not None:
            return self._reuse(existing)
        self._refuse_leftovers()
        started = time.monotonic()
        self._cancel.clear()
        try:
            self._check_host()
            base = ensure_base_rootfs(self.suite)
            self._init_state_dir()
            self._create_network()
            self._boot_nodes(base)
            self._update_state(status="up")
        except BaseException:  # includes KeyboardInterrupt: never leave nodes behind
            log.error("up() failed; tearing down what was started")
            self.down()
            raise
        log.info("cluster %s up in %.0fs", self.name, time.monotonic() - started)
        return self

    def down(self) -> None:
        """Tear everything down. Safe to call twice and after a partial up()."""
        self._cancel.set()
        teardown(self.state_dir, self._procs)
        self.nodes = []
        self._state = {}
        self._procs.clear()

    def node(self, name_or_index: str | int) -> Node:
        if isinstance(name_or_index, int):
            return self.nodes[name_or_index]
        for n in self.nodes:
            if name_or_index in (n.name, n.ip):
                return n
        raise ClusterError(f"no node {name_or_index!r} in cluster {self.name}")

    def ssh_argv(self, target: Node | str, command: str | None = None) -> list[str]:
        """The ssh command line for a node (a Node, node name or IP)."""
        ip = target.ip if isinstance(target, Node) else self.node(target).ip
        argv = [
            "ssh", "-F", "/dev/null", "-i", str(self.key_path),
            "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR",
            "-o", f"ConnectTimeout={SSH_CONNECT_TIMEOUT}",
            "-o", "ServerAliveInterval=5",
            "-o", "ServerAliveCountMax=3",
            f"root@{ip}",
        ]  # fmt: skip
        return argv + ([command] if command is not None else [])

    def ssh(
        self,
        target: Node | str,
        command: str,
        *,
        timeout: float = 300,
        check: bool = False,
        input: str | None = None,
    ) -> subprocess.CompletedProcess:
        """Run `command` on a node as root; returns the CompletedProcess (text)."""
        return run(self.ssh_argv(target, command), check=check, timeout=timeout, input=input)

    def write_inventory(self, path: str | Path, data: dict | None = None, control_plane: int = 1,
                        host_data: dict[str, dict] | None = None, nodes: list[Node] | None = None):
        """Write a pyinfra inventory: groups control_plane (first N nodes) and workers.

        `data` becomes the `all` group data, `host_data` (node name -> data) is added to
        single hosts; both must be plain literals (str/int/bool/None, lists and dicts of
        them) so the file is valid Python. `nodes`: only these (default: every node).
        """
        if not self.nodes:
            raise ClusterError("cluster is not up")
        nodes = list(self.nodes if nodes is None else nodes)
        if not 1 <= control_plane <= len(nodes):
            raise ClusterError(f"control_plane must be 1..{len(nodes)}")
        data = dict(data or {})
        _check_literal(data)
        host_data = host_data or {}
        _check_literal(host_data)
        hosts = [(n.name, {**self._host_data(n), **host_data.get(n.name, {})}) for n in nodes]
        text = INVENTORY_TEMPLATE.format(
            name=self.name,
            control_plane=pprint.pformat(hosts[:control_plane], sort_dicts=False),
            workers=pprint.pformat(hosts[control_plane:], sort_dicts=False),
            all=pprint.pformat(([n.name for n in nodes], data), sort_dicts=False),
        )
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def restart_node(self, target: Node | str, timeout: float = 120.0) -> Node:
        """Reboot one node's container (not the host): systemd in the node powers off, nspawn exits,
        and the node boots again on the same root (its disk survives, its /run and network
        namespace do not) with the harness's host-side fix-ups (address, cgroups). Bounded waits."""
        n = target if isinstance(target, Node) else self.node(target)
        if not n.pid or not n.leader_pid:
            raise ClusterError(f"{n.name} is not running")
        os.kill(n.leader_pid, signal.SIGRTMIN + 4)  # systemd(1): power off (what `systemctl poweroff` asks it)
        wait_for(lambda: not node.pid_alive(n.pid), what=f"power-off of {n.name}", timeout=timeout, interval=0.5)
        proc = self._procs.pop(n.pid, None)
        if proc is not None:
            proc.wait(timeout=10)
        self._cancel.clear()
        proc = node.start_nspawn(self.state_dir, n.name, self.bridge)
        self._procs[proc.pid] = proc
        n.pid, n.leader_pid, n.veth = proc.pid, None, None
        self._update_state()
        n.leader_pid = node.wait_leader(n.pid, n.name, START_TIMEOUT, self._cancel.is_set)
        self._update_state()
        node.configure_network(n.leader_pid, n.ip, self.subnet, START_TIMEOUT, self._cancel.is_set, n.ip6,
                               self.subnet6)
        n.veth = node.host_veth(n.leader_pid)
        self._update_state()
        self._wait_ssh(n)
        node.wait_system_running(lambda cmd: self.ssh(n, cmd, timeout=30), n.name, self.boot_timeout,
                                 self._cancel.is_set)
        node.fix_cgroups(n.leader_pid, in_use=True)  # containerd and the kubelet already started at boot
        return n

    def node_path(self, target: Node, path: str) -> Path:
        """A path inside a running node as the host sees it (through its PID 1's root: /run included)."""
        return Path(f"/proc/{target.leader_pid}/root") / path.lstrip("/")

    # --- up(): steps -----------------------------------------------------------------

    def _host_data(self, n: Node) -> dict:
        """pyinfra ssh connector data for one node (key names of pyinfra 3.x)."""
        return {
            "ssh_hostname": n.ip,
            "ssh_user": "root",
            "ssh_key": str(self.key_path),
            "ssh_known_hosts_file": "/dev/null",
            "ssh_strict_host_key_checking": "no",
            "ssh_allow_agent": False,
            "ssh_look_for_keys": False,
            "node_ip": n.ip,
        }

    def _check_host(self) -> None:
        if os.geteuid() != 0:
            raise ClusterError("the local cluster needs root")
        missing = [tool for tool in HOST_TOOLS if not shutil.which(tool)]
        if missing:
            raise ClusterError(f"missing host tools: {missing} (apt-get install "
                               "debootstrap systemd-container openssh-client iproute2)")
        # Nodes cannot load kernel modules; the host must provide these.
        if "overlay" not in Path("/proc/filesystems").read_text():
            run(["modprobe", "overlay"])
        if not Path("/proc/sys/net/bridge").exists():
            run(["modprobe", "br_netfilter"])
        # Every node's inotify instances count against root's one limit (limits.py).
        limits.ensure_inotify_instances(self.node_count)

    def _refuse_leftovers(self) -> None:
        """Without a state file, anything of ours in state_dir is debris of a failed run."""
        stale = [e for e in STATE_DIR_ENTRIES if (self.state_dir / e).exists()]
        if stale:
            raise ClusterError(
                f"{self.state_dir} holds leftovers of an earlier cluster ({stale}); run: "
                f"python3 -m testbed.localcluster down --state-dir {self.state_dir}"
            )

    def _init_state_dir(self) -> None:
        """State dir, the state record (written before anything is created), the ssh key."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o700)
        self._update_state(
            name=self.name,
            suite=self.suite,
            node_count=self.node_count,
            status="starting",
            nodes=[],
        )
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"localcluster-{self.name}",
             "-f", str(self.key_path)])  # fmt: skip

    def _create_network(self) -> None:
        """Pick a free subnet, record bridge+subnet, then create the bridge."""
        # Check before recording: a tear-down must never delete a bridge that is not ours.
        net.ensure_absent(self.bridge)
        addrs = net.host_addrs()
        self.subnet = net.choose_subnet(self.name, addrs, net.host_routes())
        if self.ipv6:  # the nodes' addresses only: nothing of it is configured on the host
            self.subnet6 = net.choose_subnet(self.name, addrs, net.host_routes(6), version=6)
        self._update_state(bridge=self.bridge, subnet=str(self.subnet),
                           subnet6=str(self.subnet6) if self.subnet6 else None)
        net.create_bridge(self.bridge, self.subnet)
        log.info("bridge %s on %s%s", self.bridge, self.subnet, f" (nodes also on {self.subnet6})" if self.ipv6 else "")

    def _boot_nodes(self, base: Path) -> None:
        """Boot all nodes in parallel; the first failure cancels the others."""
        assert self.subnet is not None
        self.nodes = [
            Node(
                name=f"{self.name}-{i + 1}",
                ip=str(net.node_address(self.subnet, i)),
                ip6=str(net.node_address(self.subnet6, i)) if self.subnet6 else "",
                rootfs=str(node.root_dir(self.state_dir, f"{self.name}-{i + 1}")),
            )
            for i in range(self.node_count)
        ]
        self._update_state()
        pool = ThreadPoolExecutor(max_workers=self.node_count, thread_name_prefix="node")
        futures = [pool.submit(self._boot_node, n, base) for n in self.nodes]
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for future in done:
                future.result()  # re-raise the first failure
        finally:
            # On a failure or Ctrl-C, make the other workers give up (their waits check
            # _cancel) and let them finish before the caller tears down, so that no
            # node can be started after the tear-down.
            if not all(f.done() for f in futures):
                self._cancel.set()
            pool.shutdown(wait=True, cancel_futures=True)

    def _boot_node(self, n: Node, base: Path) -> None:
        """Overlay root + identity, boot, address, ssh, systemd up, cgroup fix-ups."""
        cancelled = self._cancel.is_set
        root = node.mount_overlay(base, self.state_dir, n.name)
        hosts = {other.name: other.ip for other in self.nodes}
        node.write_identity(root, n.name, hosts, self._pubkey())
        if cancelled():
            raise ClusterError("cancelled")
        proc = node.start_nspawn(self.state_dir, n.name, self.bridge)
        self._procs[proc.pid] = proc
        n.pid = proc.pid
        self._update_state()
        try:
            n.leader_pid = node.wait_leader(n.pid, n.name, START_TIMEOUT, cancelled)
            self._update_state()
            node.configure_network(n.leader_pid, n.ip, self.subnet, START_TIMEOUT, cancelled, n.ip6, self.subnet6)
            n.veth = node.host_veth(n.leader_pid)
            self._update_state()
            self._wait_ssh(n)
            node.wait_system_running(
                lambda cmd: self.ssh(n, cmd, timeout=30), n.name, self.boot_timeout, cancelled
            )
            node.fix_cgroups(n.leader_pid)
        except ClusterError as exc:
            if cancelled():
                raise
            raise ClusterError(f"{exc}\n--- {n.name} boot log tail ---\n{self._log_tail(n)}")

    def _wait_ssh(self, n: Node) -> None:
        def answers() -> bool:
            try:
                return self.ssh(n, "true", timeout=SSH_CONNECT_TIMEOUT + 5).returncode == 0
            except ClusterError:  # this attempt timed out (a loaded machine): the next one may not
                return False

        wait_for(
            answers,
            what=f"sshd on {n.name} ({n.ip})",
            timeout=self.boot_timeout,
            interval=1.0,
            cancelled=self._cancel.is_set,
        )

    # --- reusing an existing cluster -------------------------------------------------

    def _reuse(self, state: dict) -> Cluster:
        """Adopt the healthy cluster recorded in state_dir, else fail with what to do."""
        problem = self._reuse_problem(state)
        if problem:
            raise ClusterError(
                f"{self.state_dir} already holds a cluster that cannot be reused ({problem}); "
                f"run: python3 -m testbed.localcluster down --state-dir {self.state_dir}"
            )
        self._state = state
        self.subnet = IPv4Network(state["subnet"])
        self.subnet6 = IPv6Network(state["subnet6"]) if state.get("subnet6") else None
        self.nodes = [Node.from_dict(d) for d in state["nodes"]]
        log.info("reusing running cluster %s from %s", self.name, self.state_dir)
        return self

    def _reuse_problem(self, state: dict) -> str | None:
        wanted = {"name": self.name, "suite": self.suite, "node_count": self.node_count}
        for key, value in wanted.items():
            if state.get(key) != value:
                return f"{key} is {state.get(key)!r}, not {value!r}"
        if bool(state.get("subnet6")) != self.ipv6:
            return "it has IPv6 addresses" if state.get("subnet6") else "it has no IPv6 addresses"
        if state.get("status") != "up":
            return f"status is {state.get('status')!r}"
        for d in state.get("nodes", []):
            n = Node.from_dict(d)
            if not (n.pid and nspawn_root(n.pid) == n.rootfs):
                return f"{n.name} is not running"
            if not (n.leader_pid and is_our_leader(n.leader_pid, self.state_dir)):
                return f"{n.name} has no running PID 1"
        return None

    # --- helpers ---------------------------------------------------------------------

    def _update_state(self, **fields) -> None:
        """Merge `fields` and the current node records into the state file (atomically)."""
        with self._lock:
            self._state.update(fields)
            if self.nodes:
                self._state["nodes"] = [n.to_dict() for n in self.nodes]
            save_state(self.state_dir, self._state)

    def _pubkey(self) -> str:
        return Path(f"{self.key_path}.pub").read_text()

    def _log_tail(self, n: Node, lines: int = 30) -> str:
        try:
            text = node.log_path(self.state_dir, n.name).read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _check_literal(data: dict) -> None:
    """`data` must round-trip through repr() as Python literals (so the file is valid)."""
    try:
        ok = ast.literal_eval(repr(data)) == data
    except (ValueError, SyntaxError):
        ok = False
    if not ok:
        raise ClusterError(
            "inventory data must be plain literals (str/int/float/bool/None, lists, dicts)"
        )


INVENTORY_TEMPLATE = '''\
"""pyinfra inventory for the local test cluster {name!r} (generated by testbed.localcluster)."""

control_plane = {control_plane}

workers = {workers}

# (hosts, data): the data is the `all` group data.
all = {all}
'''
