"""A small synchronous CRI (runtime.v1 RuntimeService) client over a unix socket.

Every call has a deadline; failures raise :class:`CriError` carrying the gRPC
status code and details. The one part of the test bed that needs grpcio and
grpcio-tools (requirements-test.txt): the end-to-end tests ask a node's containerd
through it; the demo and the benchmark never load it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import grpc

from .forward import forward_unix_socket
from .gen import load

DEFAULT_TIMEOUT = 15.0
# RunPodSandbox unpacks the pause image, starts the shim and runs CNI ADD.
RUN_POD_SANDBOX_TIMEOUT = 90.0
# StopPodSandbox runs CNI DEL and stops the pause container.
STOP_POD_SANDBOX_TIMEOUT = 60.0


class CriError(RuntimeError):
    def __init__(self, method: str, code: grpc.StatusCode | None, details: str):
        self.method = method
        self.code = code
        self.details = details
        name = code.name if code is not None else "UNKNOWN"
        super().__init__(f"CRI {method} failed: {name}: {details}")


@dataclass(frozen=True)
class PodSandboxInfo:
    id: str
    name: str
    uid: str
    namespace: str
    state: str  # "SANDBOX_READY" or "SANDBOX_NOTREADY"
    labels: dict[str, str]


class CriClient:
    """``CriClient("/run/containerd/containerd.sock")``; use as a context manager or call close()."""

    def __init__(self, socket_path: str, timeout: float = DEFAULT_TIMEOUT):
        self.socket_path = str(socket_path)
        self.timeout = timeout
        self.pb2, pb2_grpc = load()
        self._channel = grpc.insecure_channel(f"unix://{self.socket_path}")
        self._stub = pb2_grpc.RuntimeServiceStub(self._channel)

    # -- plumbing ------------------------------------------------------------

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "CriClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: str, request, timeout: float | None = None):
        try:
            return getattr(self._stub, method)(request, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            details = exc.details() if hasattr(exc, "details") else str(exc)
            raise CriError(method, code, details or "") from None

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the channel connects (the socket accepts), at most ``timeout`` s."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise CriError("connect", grpc.StatusCode.UNAVAILABLE,
                           f"no CRI endpoint at {self.socket_path} after {timeout:.0f}s") from None

    # -- RPCs ------------------------------------------------------------------

    def version(self) -> dict[str, str]:
        """``{"version", "runtime_name", "runtime_version", "runtime_api_version"}``."""
        r = self._call("Version", self.pb2.VersionRequest(version="v1"))
        return {
            "version": r.version,
            "runtime_name": r.runtime_name,
            "runtime_version": r.runtime_version,
            "runtime_api_version": r.runtime_api_version,
        }

    def status(self) -> dict[str, tuple[bool, str, str]]:
        """Condition type (``RuntimeReady``, ``NetworkReady``, ...) -> ``(status, reason, message)``."""
        r = self._call("Status", self.pb2.StatusRequest(verbose=False))
        return {c.type: (c.status, c.reason, c.message) for c in r.status.conditions}

    def run_pod_sandbox(
        self,
        name: str,
        uid: str,
        namespace: str = "default",
        hostname: str | None = None,
        log_directory: str | None = None,
        runtime_handler: str = "",
        labels: dict[str, str] | None = None,
        cgroup_parent: str = "",
        attempt: int = 0,
        timeout: float = RUN_POD_SANDBOX_TIMEOUT,
    ) -> str:
        """Create and start a pod sandbox (pod network namespace, CNI ADD); return its id."""
        pb2 = self.pb2
        config = pb2.PodSandboxConfig(
            metadata=pb2.PodSandboxMetadata(name=name, uid=uid, namespace=namespace, attempt=attempt),
            hostname=hostname if hostname is not None else name,
            log_directory=log_directory or "",
            labels=labels or {},
            linux=pb2.LinuxPodSandboxConfig(cgroup_parent=cgroup_parent),
        )
        r = self._call(
            "RunPodSandbox",
            pb2.RunPodSandboxRequest(config=config, runtime_handler=runtime_handler),
            timeout=timeout,
        )
        return r.pod_sandbox_id

    def pod_sandbox_status(self, sandbox_id: str) -> tuple[str, str]:
        """``(state, ip)``: state is ``"SANDBOX_READY"``/``"SANDBOX_NOTREADY"``, ip is "" if none."""
        r = self._call("PodSandboxStatus", self.pb2.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id))
        state = self.pb2.PodSandboxState.Name(r.status.state)
        return state, r.status.network.ip

    def stop_pod_sandbox(self, sandbox_id: str, timeout: float = STOP_POD_SANDBOX_TIMEOUT) -> None:
        self._call("StopPodSandbox", self.pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=timeout)

    def remove_pod_sandbox(self, sandbox_id: str, timeout: float = STOP_POD_SANDBOX_TIMEOUT) -> None:
        self._call("RemovePodSandbox", self.pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=timeout)

    def list_pod_sandboxes(self, labels: dict[str, str] | None = None) -> list[PodSandboxInfo]:
        """All sandboxes, or those whose labels include ``labels``."""
        pb2 = self.pb2
        request = pb2.ListPodSandboxRequest()
        if labels:
            request.filter.label_selector.update(labels)
        r = self._call("ListPodSandbox", request)
        return [
            PodSandboxInfo(
                id=item.id,
                name=item.metadata.name,
                uid=item.metadata.uid,
                namespace=item.metadata.namespace,
                state=pb2.PodSandboxState.Name(item.state),
                labels=dict(item.labels),
            )
            for item in r.items
        ]


@contextmanager
def cri_over_ssh(ssh_argv: Sequence[str]) -> Iterator[CriClient]:
    """A CriClient connected to the containerd socket of the node ``ssh_argv`` reaches
    (``forward_unix_socket``); the client is closed and the forward ended afterwards."""
    with forward_unix_socket(ssh_argv) as local, CriClient(local) as client:
        yield client
