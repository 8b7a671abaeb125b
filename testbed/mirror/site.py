"""The mirror "where the nodes are": the test mirror served from a network namespace of its
own, attached to a test cluster's bridge, as a site's file mirror sits on the nodes' network.

    with MirrorSite(mirror.root, bridge="br-bench3", address="172.30.19.254/24") as site:
        site.base_url                       # http://172.30.19.254:8080 (nodes and host reach it)
        before = site.mark()
        ...
        site.since(before)                  # SiteCounts: bytes per client address, veth bytes

The server is a child process started in a new network namespace (`unshare --net`, the
namespace lives exactly as long as that process); the host then gives it one veth, whose
host side is a port of the bridge and whose namespace side carries ``address`` (taken from
the bed's own subnet; no route, no forwarding, IPv6 off). Traffic between the mirror and
the nodes is bridged between ports: it never passes the host's bridge device, so shaping
the host's link to the nodes (testbed.localcluster.shaping) leaves it alone.

What the mirror sends is counted twice: by the server, per request (client address, path,
status, body bytes written), in a JSON-lines log; and by the host side of its veth (rx:
every frame from the mirror, TCP/IP headers included).

Leaving the block ends the server (SIGTERM, then SIGKILL, by PID); its namespace and the
veth pair go with it (the veth is also deleted by name if it outlived it). A cluster
tear-down deletes it too (a veth on the cluster's bridge).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Interface
from pathlib import Path

PORT = 8080
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class MirrorSiteError(RuntimeError):
    pass


@dataclass
class SiteMark:
    log_offset: int
    veth: tuple[int, int]  # (tx: towards the mirror, rx: from the mirror)


@dataclass
class SiteCounts:
    """What the mirror sent between two marks."""

    body_bytes: dict[str, int] = field(default_factory=dict)  # client address -> bytes of file bodies sent
    requests: dict[str, int] = field(default_factory=dict)  # client address -> GET/HEAD requests answered
    failed: list[str] = field(default_factory=list)  # "<client> <status> <path>" of answers other than 200
    veth_from_mirror: int = 0  # host-side veth rx: every frame the mirror sent, headers included
    veth_to_mirror: int = 0


class MirrorSite:
    def __init__(self, root: Path, bridge: str, address: str, log_path: Path, veth: str | None = None):
        self.root = Path(root).resolve()
        self.bridge = bridge
        self.address = IPv4Interface(address)
        self.log_path = Path(log_path)
        self.veth = veth or f"vm-{bridge.removeprefix('br-')}"[:15]
        self.proc: subprocess.Popen | None = None
        self.base_url = f"http://{self.address.ip}:{PORT}"

    # --- lifetime ------------------------------------------------------------------------

    def __enter__(self) -> MirrorSite:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> bool:
        self.stop()
        return False

    def start(self) -> None:
        if Path(f"/sys/class/net/{self.veth}").exists():
            raise MirrorSiteError(f"host link {self.veth} already exists (another mirror site on {self.bridge}?)")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.write_text("")
        ready = self.log_path.with_suffix(".ready")
        ready.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            ["unshare", "--net", "--", sys.executable, "-m", "testbed.mirror.site", "--root", str(self.root),
             "--port", str(PORT), "--log", str(self.log_path), "--ready", str(ready)],
            cwd=Path(__file__).resolve().parent.parent.parent, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=open(self.log_path.with_suffix(".stderr"), "w"))
        pid = str(self.proc.pid)
        # unshare(1) runs as that PID: until it has made its namespace, the PID is still in ours (the
        # peer would land on the host), so wait for the namespace to differ (bounded)
        deadline = time.monotonic() + READY_TIMEOUT
        while not self._in_own_namespace(pid):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise MirrorSiteError(f"the mirror server got no network namespace of its own (exit {self.proc.poll()})")
            time.sleep(0.05)
        _ip("link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", pid)
        Path(f"/proc/sys/net/ipv6/conf/{self.veth}/disable_ipv6").write_text("1\n")
        _ip("link", "set", self.veth, "master", self.bridge, "up")
        inside = ["nsenter", "-t", pid, "-n", "--"]
        _run([*inside, "sh", "-c", "echo 1 > /proc/sys/net/ipv6/conf/eth0/disable_ipv6"])
        _run([*inside, "ip", "addr", "add", str(self.address), "dev", "eth0"])
        _run([*inside, "ip", "link", "set", "eth0", "up"])
        _run([*inside, "ip", "link", "set", "lo", "up"])
        deadline = time.monotonic() + READY_TIMEOUT
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise MirrorSiteError(f"the mirror server did not start (exit {self.proc.poll()}): "
                                      f"{self.log_path.with_suffix('.stderr').read_text()[-1000:]}")
            time.sleep(0.1)

    @staticmethod
    def _in_own_namespace(pid: str) -> bool:
        try:
            return os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
        except OSError:  # it ended
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT)
        self.proc = None
        # The namespace ended with the server, and the veth pair with it; in case not:
        info = subprocess.run(["ip", "-j", "link", "show", "dev", self.veth], capture_output=True, text=True)
        if info.returncode == 0 and json.loads(info.stdout or "[{}]")[0].get("master") in (self.bridge, None):
            subprocess.run(["ip", "link", "delete", self.veth], capture_output=True, check=False)

    # --- counting --------------------------------------------------------------------------

    def veth_counters(self) -> tuple[int, int]:
        stats = Path("/sys/class/net") / self.veth / "statistics"
        return int((stats / "tx_bytes").read_text()), int((stats / "rx_bytes").read_text())

    def mark(self) -> SiteMark:
        return SiteMark(self.log_path.stat().st_size, self.veth_counters())

    def since(self, before: SiteMark) -> SiteCounts:
        """What the mirror answered since ``before`` (requests still being answered are not in the log yet)."""
        counts = SiteCounts()
        with open(self.log_path, "rb") as log:
            log.seek(before.log_offset)
            for line in log.read().decode().splitlines():
                entry = json.loads(line)
                client = entry["client"]
                counts.body_bytes[client] = counts.body_bytes.get(client, 0) + entry["bytes"]
                counts.requests[client] = counts.requests.get(client, 0) + 1
                if entry["status"] != 200:
                    counts.failed.append(f"{client} {entry['status']} {entry['path']}")
        tx, rx = self.veth_counters()
        counts.veth_to_mirror, counts.veth_from_mirror = tx - before.veth[0], rx - before.veth[1]
        return counts


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise MirrorSiteError(f"{' '.join(argv)} failed: {done.stderr.strip()}")


def _ip(*args: str) -> None:
    _run(["ip", *args])


# --- the server, inside the namespace ---------------------------------------------------------


class _LoggingHandler(SimpleHTTPRequestHandler):
    """Serves the tree; appends one JSON line per answered request: client, path, status, body bytes."""

    log_file = None
    lock = threading.Lock()

    def handle_one_request(self):
        self.sent_bytes = 0
        self.status = 0
        super().handle_one_request()

    def send_response(self, code, message=None):
        self.status = code
        super().send_response(code, message)

    def copyfile(self, source, outputfile):
        while chunk := source.read(1 << 20):
            outputfile.write(chunk)
            self.sent_bytes += len(chunk)

    def log_request(self, code="-", size="-"):
        pass

    def log_message(self, format, *args):
        pass

    def finish(self):
        super().finish()
        if getattr(self, "command", None):
            entry = {"client": self.client_address[0], "method": self.command, "path": self.path,
                     "status": self.status, "bytes": self.sent_bytes}
            with self.lock:
                self.log_file.write(json.dumps(entry) + "\n")
                self.log_file.flush()


def make_server(root: Path, host: str, port: int, log_path: Path) -> ThreadingHTTPServer:
    """The logging server of ``root`` on host:port (not started)."""
    handler = type("SiteHandler", (_LoggingHandler,), {"log_file": open(log_path, "a")})
    server = ThreadingHTTPServer((host, port), partial(handler, directory=str(root)))
    server.daemon_threads = True
    return server


def serve(root: Path, port: int, log_path: Path, ready: Path) -> None:
    """Serve in this process's network namespace (MirrorSite's own: only lo and the bed's veth)."""
    import ctypes

    # End with the process that started us, even if it is killed outright (PR_SET_PDEATHSIG).
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    server = make_server(root, "0.0.0.0", port, log_path)

    def stop(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    ready.write_text(str(os.getpid()))
    server.serve_forever(poll_interval=0.1)
    server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m testbed.mirror.site",
                                     description="serve the mirror tree (run by MirrorSite in a namespace of its own)")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--port", type=int, default=PORT)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--ready", type=Path, required=True)
    args = parser.parse_args(argv)
    serve(args.root, args.port, args.log, args.ready)
    return 0


if __name__ == "__main__":
    sys.exit(main())
