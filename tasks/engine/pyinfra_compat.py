"""
Every use of a pyinfra internal, in one place, for the pyinfra minor release podnet is tested with.

podnet pins pyinfra to ``TESTED_MINOR`` (requirements.txt). Besides pyinfra's exported API
(``pyinfra.api``, the ``host``/``state``/``inventory`` context objects), it relies on the names
below, each checked at import (``check``): an upgrade that moves or removes one fails loudly with
``PyinfraCompatError`` naming it, instead of turning a speed-up into a silent no-op
(tests/test_pyinfra_compat.py fails the same day).

1. TCP_NODELAY on pyinfra's SSH connections (``enable_tcp_nodelay``). Neither pyinfra 3.10 nor
   paramiko sets it on the SSH socket, so every command waits on Nagle's algorithm meeting the
   peer's delayed ACK: about 50 ms per command even on a local bridge, against about 5 ms with it.
   Reads the SSH connector's paramiko ``client``.

2. Operation order without reading source files (``fast_operation_order``). In CLI mode pyinfra
   orders operations by the call stack's line numbers, read with ``inspect.stack()`` and
   ``inspect.getframeinfo()`` as imported into ``pyinfra.api.util``; both also load the source
   lines around every frame (about 0.3 s per 35 operation calls here). Only file names and line
   numbers are used, so zero lines of context give the same order and the same operation hashes.

3. A Python step run at execution time with the operation's connector arguments (``HostCommand``,
   overriding ``FunctionCommand.execute``), and the connector arguments another host's commands
   run with (``connector_arguments_of``: ``pop_global_arguments``, ``CONNECTOR_ARGUMENT_KEYS``).

5. What a failed host was left without (tasks/engine/run_report.py): the state's operation data and
   order (``State.get_op_data_for_host``, ``get_op_meta``, ``get_op_order``), a host's own
   operation order (``Host.op_hash_order``), whether pyinfra already knows an operation changes
   something (``OperationMeta._maybe_is_change``), and the host context to evaluate a plan in
   (``ctx_host``): ``known_change``, ``operations_of``, ``planned_in``.

4. An inventory file loaded as the CLI loads it, without connecting (``load_inventory``:
   ``pyinfra_cli.inventory.make_inventory``, checked when used, and ``pyinfra.context.ctx_state``).
"""

from __future__ import annotations

import importlib
import inspect
import os
import socket

import pyinfra

TESTED_MINOR = "3.10"
# (module, attribute path) of every pyinfra internal used here.
INTERNALS = (
    ("pyinfra.api.util", "stack"),
    ("pyinfra.api.util", "getframeinfo"),
    ("pyinfra.api.util", "get_operation_order_from_stack"),
    ("pyinfra.api.command", "FunctionCommand.execute"),
    ("pyinfra.api.arguments", "pop_global_arguments"),
    ("pyinfra.api.arguments", "CONNECTOR_ARGUMENT_KEYS"),
    ("pyinfra.connectors.ssh", "SSHConnector.connect"),
    ("pyinfra.context", "ctx_state"),
    ("pyinfra.api.state", "State.is_host_in_limit"),  # reset.py: which hosts a --limit leaves out
    ("pyinfra.api.state", "State.get_op_data_for_host"),
    ("pyinfra.api.state", "State.get_op_meta"),
    ("pyinfra.api.state", "State.get_op_order"),
    ("pyinfra.api.operation", "OperationMeta._maybe_is_change"),
    ("pyinfra.api.host", "Host.__init__:op_hash_order"),  # an attribute set in __init__
    ("pyinfra.context", "ctx_host"),
)
# Checked when used (load_inventory): importing pyinfra_cli patches the standard library with gevent,
# which only a command-line entry point may do.
CLI_INTERNALS = (("pyinfra_cli.inventory", "make_inventory"),)


class PyinfraCompatError(ImportError):
    """The installed pyinfra lacks an internal podnet relies on; the message names it."""


def missing_internals(internals=INTERNALS) -> list[str]:
    """``module.attribute`` of every internal that cannot be found in the installed pyinfra."""
    missing = []
    for module_name, path in internals:
        path, _, assigned = path.partition(":")
        try:
            value = importlib.import_module(module_name)
            for part in path.split("."):
                # A class's method must be its own, not one inherited from a base class.
                value = vars(value)[part] if isinstance(value, type) else getattr(value, part)
            if assigned and assigned not in value.__code__.co_names:  # an attribute this function sets
                raise AttributeError(assigned)
        except (ImportError, AttributeError, KeyError):
            missing.append(f"{module_name}.{path}" + (f" (setting {assigned})" if assigned else ""))
    return missing


def check(internals=INTERNALS) -> None:
    """Raise PyinfraCompatError unless every internal podnet uses is where podnet expects it."""
    missing = missing_internals(internals)
    if missing:
        raise PyinfraCompatError(
            f"pyinfra {getattr(pyinfra, '__version__', '?')} lacks {', '.join(missing)}, which podnet uses "
            f"(tasks/engine/pyinfra_compat.py); podnet is tested with pyinfra {TESTED_MINOR}.x: "
            f"pip install 'pyinfra>={TESTED_MINOR},<{_next_minor(TESTED_MINOR)}'")


def _next_minor(minor: str) -> str:
    major, number = minor.split(".")
    return f"{major}.{int(number) + 1}"


check()

import pyinfra.api.util  # noqa: E402  (after the check, which names what is missing)
from pyinfra.api import Config, FunctionCommand, State  # noqa: E402
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS, pop_global_arguments  # noqa: E402
from pyinfra.context import ctx_host, ctx_state  # noqa: E402


# --- 1. TCP_NODELAY -----------------------------------------------------------------------


def ssh_socket(host) -> socket.socket | None:
    """The TCP socket under a host's paramiko transport, if it has one (not a ProxyCommand)."""
    client = getattr(getattr(host, "connector", None), "client", None)
    transport = client.get_transport() if client is not None else None
    sock = getattr(transport, "sock", None)
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        return sock
    return None


def enable_tcp_nodelay(hosts) -> int:
    """Set TCP_NODELAY on every connected host's SSH socket; returns how many were set."""
    count = 0
    for host in hosts:
        sock = ssh_socket(host)
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            count += 1
    return count


# --- 2. operation order -------------------------------------------------------------------


def _stack_without_source(context: int = 0):
    return inspect.stack(context)


def _frameinfo_without_source(frame, context: int = 0):
    return inspect.getframeinfo(frame, context)


def fast_operation_order() -> None:
    """Make pyinfra's stack-based operation ordering skip reading source lines (idempotent)."""
    pyinfra.api.util.stack = _stack_without_source
    pyinfra.api.util.getframeinfo = _frameinfo_without_source


# --- 3. execution-time Python steps -------------------------------------------------------


class HostCommand(FunctionCommand):
    """
    A Python step run at execution time, called as ``function(state, host, connector_arguments,
    *args)``: it gets the operation's connector arguments (``_sudo`` and the like) so that the
    commands it runs itself have the same privileges as the operation's shell commands.
    """

    def execute(self, state, host, connector_arguments):
        return self.function(state, host, dict(connector_arguments), *self.args, **self.kwargs)


def connector_arguments_of(state, other_host) -> dict:
    """The connector arguments (_sudo and the like) a command on ``other_host`` runs with."""
    arguments, _ = pop_global_arguments(state, other_host, {})
    return {key: arguments[key] for key in CONNECTOR_ARGUMENT_KEYS if key in arguments}


# --- 4. inventory without connecting ------------------------------------------------------


def load_inventory(path: str):
    """A pyinfra inventory file (with its group_data) loaded as ``pyinfra inventory.py ...``
    loads it, without connecting to any host: for podnet commands that only read settings.
    Needs ``pyinfra_cli`` imported first by the caller's entry point (it patches the standard
    library with gevent)."""
    check(CLI_INTERNALS)
    from pyinfra_cli.inventory import make_inventory

    with ctx_state.use(State(config=Config())):
        inventory = make_inventory(path, cwd=os.getcwd())
        State(inventory=inventory, config=Config())  # attaches the hosts' state, so host.data resolves
    return inventory


# --- 5. what a failed host was left without -------------------------------------------------


def known_change(state, host, op_hash: str) -> bool | None:
    """Whether pyinfra already decided the operation changes ``host`` (it checks without -y); None: not yet."""
    return state.get_op_data_for_host(host, op_hash).operation_meta._maybe_is_change


def operations_of(host) -> list[str]:
    """The host's operations (hashes) in the order they run."""
    return list(host.op_hash_order)


def planned_in(state, host, op_hash: str) -> bool:
    """Whether the operation's plan for ``host`` has any command (its generator yields one)."""
    data = state.get_op_data_for_host(host, op_hash)
    with ctx_state.use(state), ctx_host.use(host):
        return next(iter(data.command_generator()), None) is not None
