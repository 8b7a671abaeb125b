"""
kubectl run on the first control-plane host (in the probe, or at execution time): what podnet
says when it fails.
"""

from __future__ import annotations

from tasks.engine.findings import Finding, error, warning
from tasks.engine.ops import said as output  # what kubectl printed, on one line, cut short

FAILED = "kubectl on the first control-plane host failed"


def fix(kubeconfig: str) -> str:
    return f"check that kubectl is installed and kubeconfig {kubeconfig} works"


def failed(lines: list[str], kubeconfig: str, refusal: type[Exception]) -> Finding:
    """The refusal: "kubectl on the first control-plane host failed: <output>; check that kubectl is installed
    and kubeconfig <path> works"."""
    return error(FAILED, refusal, why=output(lines), fix=fix(kubeconfig))


def failed_so(lines: list[str], consequence: str) -> Finding:
    """The warning where podnet goes on without the answer: "kubectl on the first control-plane host failed
    (<output>): <consequence>"."""
    return warning(f"{FAILED} ({output(lines)})", why=consequence)
