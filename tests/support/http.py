"""
A real HTTP server on 127.0.0.1 (ephemeral port) in a background thread, whose answers
the test scripts per path, and which counts the requests it received.

    with ScriptedServer() as server:
        server.script("/a.tgz", Reply(body=data), Reply(status=500))  # one reply per request,
        ...                                                            # the last one repeats
        server.requests["/a.tgz"]  # how many GETs arrived

``serve_tree(root)`` answers every path with the file below ``root`` (404 otherwise).

``ScriptedServer(tls=loopback_certificate(dir))`` speaks https instead, with a certificate for
127.0.0.1 that requests trusts where ``REQUESTS_CA_BUNDLE`` names its file.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b""
    # Send only this many bytes of the body, then close, while Content-Length announces
    # the whole body (an interrupted transfer).
    truncate_at: int | None = None
    location: str | None = None  # a Location header (with a 3xx status: a redirect)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        reply = self.server.owner._next_reply(self.path)
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(reply.body)))
        if reply.location is not None:
            self.send_header("Location", reply.location)
        if reply.truncate_at is not None:
            self.send_header("Connection", "close")
        self.end_headers()
        if reply.truncate_at is None:
            self.wfile.write(reply.body)
        else:
            self.wfile.write(reply.body[:reply.truncate_at])
            self.wfile.flush()
            self.close_connection = True

    def log_message(self, format, *args):  # keep test output quiet
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: ScriptedServer


@dataclass(frozen=True)
class Certificate:
    cert: Path  # PEM; also what REQUESTS_CA_BUNDLE names for requests to trust it
    key: Path


def loopback_certificate(directory: Path) -> Certificate:
    """A self-signed certificate for 127.0.0.1 (valid for a day), written below ``directory``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "podnet test server")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    paths = Certificate(directory / "server.pem", directory / "server.key")
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return paths


class ScriptedServer:
    def __init__(self, tree: Path | None = None, tls: Certificate | None = None):
        self.tree = tree
        self.requests: Counter[str] = Counter()
        self._scripts: dict[str, list[Reply]] = {}
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self.scheme = "https" if tls else "http"
        if tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(tls.cert, tls.key)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{self.scheme}://{host}:{port}"

    def script(self, path: str, *replies: Reply) -> str:
        """Answer GET ``path`` with these replies in turn (the last repeats); return its URL."""
        with self._lock:
            self._scripts[path] = list(replies)
        return self.url + path

    def _next_reply(self, path: str) -> Reply:
        with self._lock:
            self.requests[path] += 1
            replies = self._scripts.get(path)
            if replies:
                return replies.pop(0) if len(replies) > 1 else replies[0]
        if self.tree is not None:
            file = (self.tree / path.lstrip("/")).resolve()
            if file.is_file() and self.tree.resolve() in file.parents:
                return Reply(body=file.read_bytes())
        return Reply(status=404, body=b"not found\n")

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
