"""CRI helpers of the test bed.

- :func:`build_pause_image`: a static pause image as a docker-archive tar for
  ``ctr -n k8s.io images import`` (the bed's images come from no registry).
- :func:`forward_unix_socket`: reach a node's containerd socket over ssh.
- ``testbed.cri.client``: a small runtime.v1 RuntimeService client (bindings are
  generated from ``api.proto`` on first use into the test cache). Not imported here:
  it needs grpcio and grpcio-tools, which only the tests install.
"""

from .forward import ForwardError, forward_unix_socket
from .pause import build_pause_binary, build_pause_image, normalized_image_name

__all__ = [
    "ForwardError",
    "forward_unix_socket",
    "build_pause_binary",
    "build_pause_image",
    "normalized_image_name",
]
