"""
Secrets on nodes, never on a command line (README, "Security", "Secrets").

- ``put_secret_file``: a file only root can read (mode 0600 from its creation on) with content
  that never appears on a command line: created empty under ``umask 077`` first, then written
  over SFTP (pyinfra's ``put_file`` of an in-memory file; through sudo, via a 0600 temporary file
  of the SSH user that is copied into it and removed).
- ``run_quietly``: a command on another inventory host whose stdout may hold a secret (never printed).
- ``remove_file``: such a file removed.
"""

from __future__ import annotations

import io
import posixpath
import shlex

from tasks.engine.pyinfra_compat import connector_arguments_of

ELEVATING = ("_sudo", "_doas", "_dzdo", "_su_user")


def put_secret_file(host, connector_arguments: dict, path: str, content: str) -> None:
    """
    Ensure ``path`` on ``host`` holds ``content``, owned by root with mode 0600 from the moment it
    exists, without ``content`` on any command line. RuntimeError naming the host and path when
    the file cannot be created or written (the message holds no content).
    """
    # pyinfra's put_file uploads through a temporary file exactly when one of these is set
    elevated = any(connector_arguments.get(key) for key in ELEVATING)
    plain = {key: value for key, value in connector_arguments.items()
             if not key.startswith(("_sudo", "_use_sudo", "_preserve_sudo", "_su_", "_use_su", "_preserve_su",
                                    "_doas", "_dzdo"))}
    quoted = shlex.quote(path)
    ok, output = host.run_shell_command(
        f"umask 077 && mkdir -p {shlex.quote(posixpath.dirname(path))} && rm -f {quoted} && : > {quoted}",
        **connector_arguments)
    if not ok:
        raise RuntimeError(f"{host.name}: cannot create {path}: {' '.join(output.stderr_lines)[-300:]}")
    temp = None
    if elevated:  # SFTP runs as the SSH user: hand the content over in a 0600 file of its own
        ok, output = host.run_shell_command("umask 077 && mktemp", **plain)
        temp = output.stdout_lines[-1].strip() if ok and output.stdout_lines else None
        if not temp:
            raise RuntimeError(f"{host.name}: cannot create a temporary file for {path}: "
                               f"{' '.join(output.stderr_lines)[-300:]}")
    if not host.put_file(io.BytesIO(content.encode()), path, remote_temp_filename=temp, **connector_arguments):
        if temp:
            host.run_shell_command(f"rm -f {shlex.quote(temp)}", **plain)
        raise RuntimeError(f"{host.name}: cannot write {path}")


def run_quietly(state, host_name: str, command: str) -> tuple[bool, list[str], list[str]]:
    """Run ``command`` on the inventory host ``host_name`` (with its own connector arguments) when
    its stdout may hold a secret: never printed, whatever the verbosity (pyinfra prints a command's
    output only for operations). Returns (succeeded, stdout lines, stderr lines)."""
    host = state.inventory.get_host(host_name)
    ok, output = host.run_shell_command(command, **connector_arguments_of(state, host))
    return ok, list(output.stdout_lines), list(output.stderr_lines)


def remove_file(host, connector_arguments: dict, path: str) -> bool:
    """Remove ``path`` on ``host``; whether that worked."""
    ok, _ = host.run_shell_command(f"rm -f {shlex.quote(path)}", **connector_arguments)
    return ok
