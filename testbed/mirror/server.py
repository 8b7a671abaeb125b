"""Serve the mirror tree over HTTP on loopback, or to a test cluster's nodes (for tests).

    with serve_mirror(mirror.root) as base_url:      # "http://127.0.0.1:<port>"
        requests.get(f"{base_url}/<upstream path>")

A ThreadingHTTPServer bound to 127.0.0.1 (or the host's address on a test cluster's own
bridge, ``TEST_BRIDGES``, so that its nodes download from it) on an ephemeral port runs in a
background thread; leaving the block shuts it down, closes the socket and joins the serving
thread and every request thread. ``replaced`` ({(client address, path): bytes}, read at each
request) answers a path with other bytes for one client: a mirror that serves one node a
corrupted file, while the tree itself (shared, cached) stays as it is.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple, Union


# The private /24s test clusters' bridges are made in (testbed/localcluster/net.py): the host's .1 there.
TEST_BRIDGES = ipaddress.ip_network("172.30.0.0/16")


class _Handler(SimpleHTTPRequestHandler):
    request_log: Optional[List[Tuple[str, str, int]]] = None
    replaced: Optional[Dict[Tuple[str, str], bytes]] = None
    client_log: Optional[List[Tuple[str, str, str, int]]] = None

    def do_GET(self):
        body = (self.replaced or {}).get((self.client_address[0], self.path))
        if body is None:
            return super().do_GET()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_request(self, code="-", size="-"):
        try:
            status = int(code)
        except (TypeError, ValueError):
            status = 0
        if self.request_log is not None:
            self.request_log.append((self.command, self.path, status))
        if self.client_log is not None:
            self.client_log.append((self.client_address[0], self.command, self.path, status))

    def log_message(self, format, *args):  # keep test output quiet
        pass


class _Server(ThreadingHTTPServer):
    # Track request threads so server_close() joins them: nothing is left running.
    daemon_threads = False
    block_on_close = True


@contextlib.contextmanager
def serve_mirror(root: Union[str, Path], host: str = "127.0.0.1",
                 request_log: Optional[List[Tuple[str, str, int]]] = None,
                 replaced: Optional[Dict[Tuple[str, str], bytes]] = None,
                 client_log: Optional[List[Tuple[str, str, str, int]]] = None) -> Iterator[str]:
    """Serve `root` on http://<host>:<ephemeral port>; yield that base URL.

    host must be a loopback address, or the host's address on a test cluster's bridge
    (TEST_BRIDGES).  If request_log is a list, each request is appended to it as (method,
    path, status), and to client_log as (client address, method, path, status).  replaced: see
    the module docstring.
    """
    addr = ipaddress.ip_address(host)
    if not (addr.is_loopback or addr in TEST_BRIDGES):
        raise ValueError(f"the test mirror only listens on loopback or a test bridge ({TEST_BRIDGES}), not {host}")
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"mirror root {root} is not a directory")
    handler = type("MirrorHandler", (_Handler,), {"request_log": request_log, "replaced": replaced,
                                                       "client_log": client_log})
    server_cls = _Server if addr.version == 4 else type(
        "_Server6", (_Server,), {"address_family": socket.AF_INET6})
    httpd = server_cls((host, 0), partial(handler, directory=str(root)))
    port = httpd.server_address[1]
    netloc = f"{host}:{port}" if addr.version == 4 else f"[{host}]:{port}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              name=f"podnet-mirror-http-{port}", daemon=True)
    thread.start()
    try:
        yield f"http://{netloc}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)
