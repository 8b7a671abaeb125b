"""
Remote answers are data with a schema.

Everything podnet reads from a node (the probe's lines, a kubectl query's stdout, what an
execution-time step reads back) is parsed from stdout only (stderr is shown, never parsed)
and every field is checked against the grammar of the component that produced it before any
decision is made from it. A field that does not fit raises ``BadField``; ``records`` turns
that into ``RemoteAnswerError`` naming the host, the query and the offending line, so a step
that needs the answer refuses with that reason instead of acting on it (or, where the
answer is only advisory, reports it as a warning and leaves the line out).

The validators return the typed value (an ``ipaddress`` network, an int, the text itself).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from typing import Callable, Iterable, TypeVar

from pyinfra import logger

from tasks.errors import PodnetError

T = TypeVar("T")


class BadField(ValueError):
    """One field of a remote answer that does not fit its schema; the message says why."""


class RemoteAnswerError(PodnetError, ValueError):
    """A node's answer that does not fit its schema: refused, nothing is done with it."""


def shown(text: str, limit: int = 200) -> str:
    """A field or line as a Python literal (control characters visible), cut to ``limit`` characters."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[:limit] + "..."


CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _grammar(pattern: str, what: str, doc: str) -> Callable[[str], str]:
    """A validator of text that must match ``pattern`` whole (BadField: "<text> is not <what>")."""
    compiled = re.compile(pattern)

    def check(text: str) -> str:
        if not compiled.fullmatch(text):
            raise BadField(f"{shown(text)} is not {what}")
        return text

    check.__doc__ = doc
    return check


def _one_of(values: frozenset[str], what: str, doc: str) -> Callable[[str], str]:
    """A validator of text that must be one of ``values``."""
    return _grammar("|".join(re.escape(v) for v in sorted(values)), what, doc)


def no_control(text: str, what: str = "value") -> str:
    """Text without control characters (newline, tab, CR, NUL, ESC...)."""
    if CONTROL.search(text):
        raise BadField(f"{what} holds a control character")
    return text


# RFC 1123 subdomain as Kubernetes validates object names (apimachinery's
# pkg/util/validation IsDNS1123Subdomain): at most 253 characters, lowercase alphanumerics,
# '-' and '.', starting and ending with an alphanumeric; Node and Pod names are such names.
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# RFC 1123 label (IsDNS1123Label): at most 63 characters; Namespace names are labels.
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def object_name(text: str) -> str:
    """A Kubernetes object name (Node, Pod, DaemonSet...): an RFC 1123 subdomain (IsDNS1123Subdomain)."""
    if len(text) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(text):
        raise BadField(f"{shown(text)} is not a Kubernetes object name (RFC 1123 subdomain)")
    return text


def namespace(text: str) -> str:
    """A Kubernetes Namespace name: an RFC 1123 label (IsDNS1123Label)."""
    if len(text) > 63 or not _DNS1123_LABEL.fullmatch(text):
        raise BadField(f"{shown(text)} is not a namespace name (RFC 1123 label)")
    return text


def network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A CIDR without host bits (ipaddress strict parsing, as the API server validates spec.podCIDRs)."""
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        raise BadField(f"{shown(text)} is not a network in CIDR notation") from None


def interface_address(text: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """An address with its prefix length, as `ip -o addr` prints it (e.g. 10.244.1.1/24)."""
    if "/" not in text:
        raise BadField(f"{shown(text)} is not an address/prefix")
    try:
        return ipaddress.ip_interface(text)
    except ValueError:
        raise BadField(f"{shown(text)} is not an address/prefix") from None


def interface_name(text: str) -> str:
    """A Linux network interface name (net/core/dev.c dev_valid_name: 1-15 bytes, no '/', ':' or
    whitespace, not '.' or '..')."""
    if not 0 < len(text.encode()) < 16 or text in (".", "..") or re.search(r"[/:\s]", text) or CONTROL.search(text):
        raise BadField(f"{shown(text)} is not a network interface name")
    return text


def decimal(text: str, low: int = 0, high: int | None = None, what: str = "number") -> int:
    """A decimal integer in [low, high], digits only (no sign, no spaces)."""
    if not text.isascii() or not text.isdigit() or len(text) > 20:
        raise BadField(f"{shown(text)} is not a {what}")
    value = int(text)
    if value < low or (high is not None and value > high):
        raise BadField(f"{shown(text)} is not a {what} (expected {low}..{high if high is not None else ''})")
    return value


def pid(text: str) -> int:
    """A process ID (1..4194304, the kernel's PID_MAX_LIMIT)."""
    return decimal(text, 1, 4194304, "process ID")


def exit_status(text: str) -> int:
    """A shell exit status (0..255)."""
    return decimal(text, 0, 255, "exit status")


sha256_hex = _grammar(r"[0-9a-f]{64}", "a sha256 digest (64 lowercase hex digits)",
                      "A sha256 digest as sha256sum prints it: 64 lowercase hex digits.")
file_mode = _grammar(r"[0-7]{1,4}", "a file mode (octal digits)",
                     "A file's permission bits as stat's %a prints them (octal, up to 4 digits).")
sysctl_key = _grammar(r"[A-Za-z0-9_.*/-]+", "a kernel parameter name",
                      "A kernel parameter name (dots or slashes between components).")
machine = _grammar(r"[A-Za-z0-9_.-]{1,64}", "a machine name (uname -m)",
                   "`uname -m`: the machine hardware name (x86_64, aarch64, armv7l...).")


def absolute_path(text: str) -> str:
    """An absolute path without control characters (a name holding a newline or tab is refused)."""
    if not text.startswith("/") or CONTROL.search(text):
        raise BadField(f"{shown(text)} is not an absolute path without control characters")
    return text


def file_name(text: str) -> str:
    """One directory entry's name: no '/', no control characters, not '.' or '..'."""
    if not text or "/" in text or text in (".", "..") or CONTROL.search(text):
        raise BadField(f"{shown(text)} is not a file name without control characters")
    return text


# systemd's unit active states (src/basic/unit-def.c unit_active_state_table) and what
# `systemctl is-active` prints for a unit it does not know ("unknown").
UNIT_ACTIVE_STATES = frozenset({"active", "reloading", "inactive", "failed", "activating", "deactivating",
                                "maintenance", "refreshing", "unknown"})
# systemd's unit file states (src/shared/install.c unit_file_state_table) and `systemctl is-enabled`'s
# "not-found" for a unit without a file.
UNIT_FILE_STATES = frozenset({"enabled", "enabled-runtime", "linked", "linked-runtime", "alias", "masked",
                              "masked-runtime", "static", "disabled", "indirect", "generated", "transient", "bad",
                              "not-found"})


unit_active_state = _one_of(UNIT_ACTIVE_STATES, "a systemd unit active state",
                            "What `systemctl is-active` prints: one of UNIT_ACTIVE_STATES.")
unit_file_state = _one_of(UNIT_FILE_STATES, "a systemd unit file state",
                          "What `systemctl is-enabled` prints: one of UNIT_FILE_STATES.")


def sysctl_value(text: str) -> str:
    """A kernel parameter's value as /proc/sys prints it: printable text, its fields separated by tabs
    (e.g. net.ipv4.ip_local_port_range), no other control character."""
    if CONTROL.search(text.replace("\t", " ")):
        raise BadField(f"{shown(text)} is not a kernel parameter value")
    return text


def base64_bytes(text: str) -> bytes:
    """Strict base64 (what `base64 -w0` prints)."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadField(f"{shown(text, 60)} is not base64") from None


def host_port(text: str) -> str:
    """An API server endpoint as kubeadm prints it: host (DNS name or IP, IPv6 in brackets) and port."""
    match = re.fullmatch(r"(\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[A-Za-z0-9.-]+)):(?P<port>[0-9]{1,5})", text)
    if match is None or not 0 < int(match.group("port")) < 65536:
        raise BadField(f"{shown(text)} is not a host:port endpoint")
    if match.group("v6"):
        try:
            ipaddress.IPv6Address(match.group("v6"))
        except ValueError:
            raise BadField(f"{shown(text)} is not a host:port endpoint") from None
    return text


def fields(line: str, count: int, separator: str | None = None) -> list[str]:
    """``line`` split into exactly ``count`` fields (by whitespace, or by ``separator``)."""
    parts = line.split(separator)
    if len(parts) != count:
        raise BadField(f"{len(parts)} field(s) where {count} are expected")
    return parts


def problem(host_name: str, query: str, line: str, why: str) -> str:
    """The report of one refused line."""
    where = f"{host_name}: " if host_name else ""
    return f"{where}the answer to {query} does not fit its schema: line {shown(line)}: {why}; nothing is done with it"


def records(host_name: str, query: str, lines: Iterable[str], parse_line: Callable[[str], T],
            strict: bool = True) -> list[T]:
    """
    Every line of a query's stdout through ``parse_line`` (which raises BadField). With
    ``strict`` the first line that does not fit raises RemoteAnswerError (host, query, line,
    why); without, such a line is reported as a warning and left out.
    """
    parsed = []
    for line in lines:
        try:
            parsed.append(parse_line(line))
        except BadField as error:
            message = problem(host_name, query, line, str(error))
            if strict:
                raise RemoteAnswerError(message) from None
            logger.warning(f"podnet: {message}")
    return parsed


def warn_stderr(host_name: str, query: str, stderr: str) -> None:
    """What a query printed on stderr while succeeding: shown as a diagnostic, never parsed."""
    text = stderr.strip()
    if text:
        logger.warning(f"podnet: {host_name}: {query} wrote to stderr (shown, not read as data): "
                       + " | ".join(shown(line, 300)[1:-1] for line in text.splitlines()[:5]))
