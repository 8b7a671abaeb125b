"""
kubectl run on the first control-plane host (in the probe, or at execution time): what podnet
says when it fails. What kubectl said is its stderr, kept apart from its answer by the probe
(``NodeState.query_stderr``): shown, never parsed.
"""

from __future__ import annotations

from tasks.engine.findings import Finding, error, warning
from tasks.engine.ops import said as output  # what kubectl printed, on one line, cut short
from tasks.engine.probe import NodeState

FAILED = "kubectl on the first control-plane host failed"


def fix(kubeconfig: str) -> str:
    return f"check that kubectl is installed and kubeconfig {kubeconfig} works"


def said(node: NodeState, query: str, nothing: str = "(nothing on stderr)") -> str:
    """What the probe's ``query`` wrote to stderr, on one line, cut short (``nothing`` when it wrote nothing)."""
    return output(node.query_stderr.get(query, "").split()) or nothing


def failed(node: NodeState, query: str, kubeconfig: str, refusal: type[Exception]) -> Finding:
    """The refusal: "kubectl on the first control-plane host failed: <its stderr>; check that kubectl is
    installed and kubeconfig <path> works"."""
    return failed_saying(said(node, query), kubeconfig, refusal)


def failed_saying(stderr: str, kubeconfig: str, refusal: type[Exception]) -> Finding:
    """``failed`` for a kubectl run at execution time (``stderr``: what it said, on one line)."""
    return error(FAILED, refusal, why=stderr, fix=fix(kubeconfig))


def failed_so(node: NodeState, query: str, consequence: str) -> Finding:
    """The warning where podnet goes on without the answer: "kubectl on the first control-plane host failed
    (<its stderr>): <consequence>"."""
    return warning(f"{FAILED} ({said(node, query, 'nothing on stderr')})", why=consequence)
