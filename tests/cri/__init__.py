"""CRI helpers for podnet's end-to-end tests.

- :class:`CriClient`: a small runtime.v1 RuntimeService client (bindings are
  generated from ``api.proto`` at import time into the test cache).
- :func:`forward_unix_socket`: reach a node's containerd socket over ssh.
- :func:`build_pause_image`: a static pause image as a docker-archive tar for
  ``ctr -n k8s.io images import``.
"""

from .client import CriClient, CriError, PodSandboxInfo
from .forward import ForwardError, forward_unix_socket
from .pause import build_pause_binary, build_pause_image, normalized_image_name

__all__ = [
    "CriClient",
    "CriError",
    "PodSandboxInfo",
    "ForwardError",
    "forward_unix_socket",
    "build_pause_binary",
    "build_pause_image",
    "normalized_image_name",
]
