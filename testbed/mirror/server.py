"""Serve the mirror tree over HTTP on loopback (for tests).

    with serve_mirror(mirror.root) as base_url:      # "http://127.0.0.1:<port>"
        requests.get(f"{base_url}/<upstream path>")

A ThreadingHTTPServer bound to 127.0.0.1 on an ephemeral port runs in a
background thread; leaving the block shuts it down, closes the socket and
joins the serving thread and every request thread.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator, List, Optional, Tuple, Union


class _Handler(SimpleHTTPRequestHandler):
    request_log: Optional[List[Tuple[str, str, int]]] = None

    def log_request(self, code="-", size="-"):
        if self.request_log is not None:
            try:
                status = int(code)
            except (TypeError, ValueError):
                status = 0
            self.request_log.append((self.command, self.path, status))

    def log_message(self, format, *args):  # keep test output quiet
        pass


class _Server(ThreadingHTTPServer):
    # Track request threads so server_close() joins them: nothing is left running.
    daemon_threads = False
    block_on_close = True


@contextlib.contextmanager
def serve_mirror(root: Union[str, Path], host: str = "127.0.0.1",
                 request_log: Optional[List[Tuple[str, str, int]]] = None) -> Iterator[str]:
    """Serve `root` on http://<host>:<ephemeral port>; yield that base URL.

    host must be a loopback address.  If request_log is a list, each request
    is appended to it as (method, path, status).
    """
    addr = ipaddress.ip_address(host)
    if not addr.is_loopback:
        raise ValueError(f"the test mirror only listens on loopback, not {host}")
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"mirror root {root} is not a directory")
    handler = type("MirrorHandler", (_Handler,), {"request_log": request_log})
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
