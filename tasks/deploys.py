"""
podnet's steps as pyinfra deploys, for ``deploy.py`` and for anyone's own deploy.

``POD_NETWORK`` is the whole pod network in order; each concern's steps are also a ``@deploy``
of its own. Settings come from the same inventory data as for ``deploy.py`` (validated for the
whole inventory first), and each call probes the host once (a later call that needs more asks
the host again, once, for everything asked so far)::

    from pyinfra.operations import apt
    from tasks.deploys import containerd_runtime

    apt.packages(packages=["jq"])
    containerd_runtime()

A step's checks and applies see what earlier steps of the same run decided on that host (kubeadm
creating the cluster, changed node IPAM flags), also across calls; the deploys depend on each other
in POD_NETWORK's order (kubeadm_cluster needs containerd_runtime before it, flannel_rollout needs
node_ipam). ``steps(...)`` runs several steps together as one.
"""

from __future__ import annotations

from pyinfra import host, inventory, state
from pyinfra.api import deploy

from tasks import (cni, containerd, controller_manager, flannel, interrupted, kernel, kubeadm, kubeadm_config,
                   pod_network, reset)
from tasks.engine import run_report, runner
from tasks.engine.context import HostContext, Step

# The pod network, in the order its steps run on every host: the one list of the steps (each Step's name says
# what it ensures; the README's step table is written from this list by `python3 -m tasks.docs`).
POD_NETWORK: tuple[Step, ...] = (
    kernel.STEP,
    kubeadm.PREREQUISITES,
    containerd.STEP,
    cni.STEP,
    kubeadm.BOOTSTRAP,
    controller_manager.STEP,
    kubeadm_config.STEP,
    flannel.POD_MTU,
    pod_network.REGISTRATION,
    flannel.DIRECT_ROUTES,
    flannel.ROLLOUT,
    pod_network.OLD_BRIDGE,
)


def steps(*chosen: Step) -> HostContext:
    """
    Run ``chosen`` on the current host as one run: one probe (which takes the node's run lock),
    one fetch, checks then applies. What an interrupted run left (tasks/interrupted.py) is always
    cleared first, and a host that fails is named at the end of the run with what was left undone
    there (tasks/engine/run_report.py).
    """
    run_report.register(state)
    return runner.run((interrupted.STEP, *(s for s in chosen if s is not interrupted.STEP)), host, inventory,
                       diff=bool(state.config.DIFF))


@deploy("podnet: pod network")
def pod_network_deploy():
    """Every pod gets its own IP: all of POD_NETWORK."""
    steps(*POD_NETWORK)


@deploy("podnet: kernel prerequisites")
def kernel_prerequisites():
    steps(kernel.STEP)


@deploy("podnet: containerd")
def containerd_runtime():
    steps(containerd.STEP)


@deploy("podnet: CNI plugins and conflist")
def cni_plugins():
    steps(cni.STEP)


@deploy("podnet: kubeadm cluster")
def kubeadm_cluster():
    steps(kubeadm.PREREQUISITES, kubeadm.BOOTSTRAP)


@deploy("podnet: kube-controller-manager node IPAM")
def node_ipam():
    steps(controller_manager.STEP, kubeadm_config.STEP)


@deploy("podnet: flannel")
def flannel_rollout():
    steps(flannel.POD_MTU, pod_network.REGISTRATION, flannel.DIRECT_ROUTES, flannel.ROLLOUT, pod_network.OLD_BRIDGE)


def reset_steps() -> HostContext:
    """The reset on the current host (tasks/reset.RESET), after refusing, before any host is touched, a
    reset of the DaemonSet that leaves hosts out (reset.whole_cluster_covered)."""
    reset.whole_cluster_covered(runner.settings_for(host, inventory), inventory, state.is_host_in_limit,
                                runner.first_control_plane(inventory))
    return steps(*reset.RESET)


@deploy("podnet: reset")
def pod_network_reset():
    """podnet's pod network taken off the host (what reset.py does)."""
    reset_steps()
