"""
A TCP forwarder that delivers every byte a fixed time after it was received, both ways: a
slow link to a test node, in user space (this host's kernel has no netem), touching no
network configuration. pyinfra is pointed at it (``ssh_hostname``/``ssh_port``) so that the
moments between two commands of a run last long enough to be seen from the host.

When either side closes or fails, the other is reset at once (SO_LINGER 0), dropping what is
still delayed: as the kernel of a killed process resets its connections. (A graceful half-close
would leave sshd waiting for a client that is gone.)
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections import deque

CHUNK = 65536


def _reset(sock: socket.socket) -> None:
    """End the connection now: shut it down (which also wakes the other direction's thread blocked
    in recv on it: a plain close would wait for that call) and close it with a reset (SO_LINGER 0)."""
    for step in (lambda: sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)),
                 lambda: sock.shutdown(socket.SHUT_RDWR), sock.close):
        try:
            step()
        except OSError:
            pass


class DelayProxy:
    """Listens on 127.0.0.1 (``port``) and forwards each connection to ``target`` with ``delay`` seconds each way."""

    def __init__(self, target: tuple[str, int], delay: float):
        self.target = target
        self.delay = delay
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                self._pipe(source, sink)

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        queue: deque = deque()
        ready = threading.Condition()

        def reader() -> None:
            while True:
                try:
                    data = source.recv(CHUNK)
                except OSError:
                    data = b""
                if not data:
                    _reset(sink)
                    _reset(source)
                    with ready:
                        queue.append((0.0, b""))
                        ready.notify()
                    return
                with ready:
                    queue.append((time.monotonic() + self.delay, data))
                    ready.notify()

        def writer() -> None:
            while True:
                with ready:
                    while not queue:
                        ready.wait()
                    due, data = queue.popleft()
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                if not data:
                    return
                try:
                    sink.sendall(data)
                except OSError:
                    _reset(source)
                    return

        for function in (reader, writer):
            thread = threading.Thread(target=function, daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        for sock in self._sockets:
            try:
                sock.close()
            except OSError:
                pass

    def __enter__(self) -> "DelayProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
