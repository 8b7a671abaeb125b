"""
Secrets podnet handles, kept off command lines and out of output.

- ``redact_url``: a URL as podnet prints or stores it (run summary, errors, logs, the committed
  ``artifacts.lock.yaml``): any user name and password in it (``https://user:password@host/...``)
  replaced by ``***``. The one place a URL's credentials are taken out; callers never print
  or store a URL that did not pass through it.
- ``masked``: a text (a remote command's stderr, an error) with given secret values replaced by
  ``*MASKED*`` (pyinfra's own mask for ``HiddenValue``), for messages that quote what a remote
  command said.
- ``put_secret_file``: a file only root can read (mode 0600 from its creation on) with content
  that never appears on a command line: created empty under ``umask 077`` first, then written
  over SFTP (pyinfra's ``put_file`` of an in-memory file; through sudo, via a 0600 temporary file
  of the SSH user that is copied into it and removed).
"""

from __future__ import annotations

import io
import posixpath
import shlex
from urllib.parse import urlsplit, urlunsplit

from tasks.pyinfra_compat import connector_arguments_of

MASK = "*MASKED*"  # what pyinfra prints for a HiddenValue
REDACTED = "***"
ELEVATING = ("_sudo", "_doas", "_dzdo", "_su_user")


def redact_url(url: str) -> str:
    """``url`` without the credentials of its authority: ``https://deploy:S3cr3t@mirror.example/x``
    -> ``https://***@mirror.example/x``. Anything that is not a URL with credentials is returned as is."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{REDACTED}@{host}"))


def redact_urls(text: str, *urls: str | None) -> str:
    """``text`` with each of ``urls`` (and each one's credentials, wherever they appear) redacted."""
    for url in urls:
        if not url:
            continue
        netloc = urlsplit(url).netloc
        if "@" in netloc:
            credentials = netloc.rpartition("@")[0]
            text = text.replace(url, redact_url(url)).replace(credentials, REDACTED)
    return text


def masked(text: str, *secrets: str | None) -> str:
    """``text`` with every occurrence of each secret replaced by ``*MASKED*``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return text


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
