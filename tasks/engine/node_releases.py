"""
How a release file's bytes reach a node: the release file itself, on the node, checked there.

The release files (``release_download``):

- ``laptop`` (the default): the laptop downloads and verifies each release file. An archive a node
  needs (some member it activates is missing or different there, by the probe) is sent to the node
  once, as the compressed archive, and unpacked there; a file that is not an archive (runc,
  kubelet, ...) is sent as it is, to its staged name, as before.
- ``nodes``: each node downloads the release files it needs itself, from ``mirror_url`` (or upstream
  without one), with curl (else wget), a bounded number of attempts; the laptop sends only commands.
  What that needs (curl or wget; a CA bundle for https) is asked in the probe and named before any
  change (``refuse_missing_tools``). The mirror's credentials reach the node only in a root-only netrc file
  (``NETRC_PATH``, written over SFTP by ``tasks.engine.secret_files``, removed by the command that
  used it), never on a command line.

On the node a release file lives in ``RELEASES_DIR`` under ``<sha256 prefix>-<file name>``: it arrives
(upload or download) under its staged name there (a leftover of a killed run is removed by the next
run like every staged file), is hashed and compared with the sum podnet pins or locked (a difference
stops that node before anything of it is activated, naming the URL and both sums) and renamed. The
members a node activates are unpacked from it into a private directory, moved to their staged names
and each hashed against the sum the laptop computed from the verified archive (``ops.install_script``),
then activated as every file is. The release file is removed once its files are active; one left by
an interrupted run is found by the probe, checked again and used, not sent or downloaded again.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable
from urllib.parse import unquote, urlsplit, urlunsplit

from tasks.artifacts.catalog import safe_members
from tasks.engine.desired import DesiredFile, Origin
from tasks.engine.probe import NodeState, ProbeRequest
from tasks.errors import PodnetError
from tasks.formats import shell
from tasks.redact import redact_urls
from tasks.settings import Settings

RELEASES_DIR = "/var/lib/podnet/releases"
UNPACK_PREFIX = ".unpack."  # a private directory in RELEASES_DIR that an archive's members are unpacked into
NETRC_DIR = "/run/podnet/fetch"  # root-only; wget reads $HOME/.netrc, curl --netrc-file
NETRC_PATH = f"{NETRC_DIR}/.netrc"
ATTEMPTS = 4  # per release file and node: transient failures (connection, timeout, 5xx) are tried again
TIMEOUT = 30  # seconds to connect, and without progress
# Where Debian/Ubuntu, RHEL/Fedora and Alpine/openSUSE keep the CA bundle curl and wget read.
CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/ca-bundle.pem",
              "/etc/ssl/cert.pem")
TOOLS = {"curl": "command -v curl >/dev/null 2>&1", "wget": "command -v wget >/dev/null 2>&1"}
CA_FEATURE = "ca_bundle"


class NodeDownloadError(PodnetError, RuntimeError):
    """A node cannot download its release files (``release_download = "nodes"``): what it lacks."""


def node_path(origin: Origin, releases_dir: str = RELEASES_DIR) -> str:
    """Where the release file lives on the node while its files are activated."""
    return f"{releases_dir}/{origin.sha256[:16]}-{origin.filename}"


def node_url(url: str) -> str:
    """The URL a node downloads from: without the credentials (those are in NETRC_PATH)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def netrc(url: str) -> str | None:
    """The netrc a node needs for ``url`` (its credentials, for its host), or None without credentials."""
    parts = urlsplit(url)
    if parts.username is None:
        return None
    return f"machine {parts.hostname} login {unquote(parts.username)} password {unquote(parts.password or '')}\n"


def _https(settings: Settings) -> bool:
    return not (settings.mirror_url or "").startswith("http://")


def probe_request(settings: Settings) -> ProbeRequest:
    """What deciding about release files asks a node: the release files an interrupted run left (their
    digests), and with ``release_download = "nodes"`` whether it has curl, wget and (https) a CA bundle."""
    request = ProbeRequest(hashes=[f"{RELEASES_DIR}/*"])
    if settings.release_download != "nodes":
        return request
    features = dict(TOOLS)
    if _https(settings):
        features[CA_FEATURE] = " || ".join(f"[ -s {shell.word(path)} ]" for path in CA_BUNDLES)
    return request.merge(ProbeRequest(features=features))


def missing_tools(settings: Settings, node: NodeState) -> list[str]:
    """What a node lacks to download release files itself (empty: nothing, or the laptop sends them)."""
    if settings.release_download != "nodes":
        return []
    missing = [] if node.features.get("curl") or node.features.get("wget") else ["curl or wget"]
    if _https(settings) and not node.features.get(CA_FEATURE):
        missing.append(f"a CA bundle for https (one of {', '.join(CA_BUNDLES)})")
    return missing


def refuse_missing_tools(settings: Settings, node: NodeState, host_name: str) -> None:
    """NodeDownloadError naming what the node lacks to download release files itself (``missing_tools``);
    the runner calls it right after the probe, before any step of any host changes anything."""
    missing = missing_tools(settings, node)
    if missing:
        raise NodeDownloadError(
            f"{host_name}: release_download = 'nodes': this node lacks {' and '.join(missing)} to download the "
            "release files it installs; install it there, or set release_download = 'laptop' (the laptop sends "
            "them)")


@lru_cache(maxsize=None)
def _member_names(archive: Path) -> dict[str, str]:
    """Member name as unpacked (``a/b``) -> as written in the archive (``./a/b``)."""
    return {Path(member.name).as_posix(): member.name for member in safe_members(archive)}


@dataclass
class Delivery:
    """How the changed release files of one operation reach a node."""

    staged: list[DesiredFile] = field(default_factory=list)  # staged on the node by ``script``, not uploaded
    uploads: list[Origin] = field(default_factory=list)  # release files the laptop sends (to their staged names)
    netrc: str | None = None  # the mirror's credentials for NETRC_PATH, before ``script`` runs
    script: list[str] = field(default_factory=list)  # shell steps that put each of ``staged`` at its staged name
    cleanup: list[str] = field(default_factory=list)  # release files to remove once the files are active


def plan(changed: list[DesiredFile], node: NodeState, settings: Settings, host_name: str,
         staged_path: Callable[[str], str], releases_dir: str = RELEASES_DIR) -> Delivery:
    """
    How each changed file that is a release's reaches its staged name (``staged_path``) on the node:
    a file whose bytes are already live there (only its mode differs) is copied from the live one;
    with ``release_download = "nodes"`` every other one comes from its release file downloaded by the
    node, with ``laptop`` an archive's member comes from the archive the laptop sends (a file that
    is no archive is uploaded to its staged name as before: not in the result). A release file the
    probe found intact on the node (an interrupted run's) is used again.
    """
    delivery = Delivery()
    q = shell.word
    by_release: dict[str, list[DesiredFile]] = {}
    origins: dict[str, Origin] = {}
    for f in changed:
        if f.is_text or f.origin is None:
            continue
        if node.hashes.get(f.path) == f.sha256:  # only the mode differs: the live bytes are the release's
            delivery.staged.append(f)
            delivery.script.append(f"cp {q(f.path)} {q(staged_path(f.path))}")
            continue
        if settings.release_download != "nodes" and not f.origin.is_member:
            continue
        delivery.staged.append(f)
        path = node_path(f.origin, releases_dir)
        by_release.setdefault(path, []).append(f)
        origins.setdefault(path, f.origin)
    if not by_release:
        return delivery
    fetching = settings.release_download == "nodes"
    if fetching:
        credentials = {netrc(o.url) for o in origins.values()} - {None}
        delivery.netrc = "".join(sorted(credentials)) or None  # type: ignore[arg-type]
        delivery.script.append(fetch_function(settings, delivery.netrc is not None))
    delivery.script.append(f"mkdir -p -m 0700 {q(releases_dir)}; rm -rf {q(releases_dir)}/{UNPACK_PREFIX}*")
    delivery.script.append(release_function(host_name, fetching))
    for path, files in by_release.items():
        origin = origins[path]
        if node.hashes.get(path) != origin.sha256 and not fetching:
            delivery.uploads.append(origin)
        delivery.script.append(release_call(origin, path, staged_path(path), staged_path(f"{path}.log")))
        delivery.script += staging_script(origin, files, staged_path, path)
        delivery.cleanup.append(path)
    return delivery


def fetch_function(settings: Settings, with_netrc: bool) -> str:
    """Shell that defines ``podnet_fetch URL FILE``: download URL to FILE with curl (else wget), ATTEMPTS
    attempts for what may pass (no connection, a timeout, a server error), saying why on stderr on failure. https
    only for an https mirror (a redirect may not leave it); the credentials from NETRC_PATH."""
    if _https(settings):
        protocols = ["--proto", "=https", "--proto-redir", "=https"]
    else:  # a plain http mirror_url (allow_insecure_http)
        protocols = ["--proto", "=http,https", "--proto-redir", "=http,https"]
    curl = ["curl", "-fsSL", *protocols, "--retry", str(ATTEMPTS - 1), "--retry-delay", "2", "--retry-connrefused",
            "--connect-timeout", str(TIMEOUT), "--speed-limit", "1", "--speed-time", str(TIMEOUT),
            *(["--netrc-file", NETRC_PATH] if with_netrc else [])]
    wget = ["wget", "-nv", f"--tries={ATTEMPTS}", "--waitretry=2", f"--timeout={TIMEOUT}", "--retry-connrefused"]
    home = f"HOME={shell.word(NETRC_DIR)} " if with_netrc else ""  # wget reads $HOME/.netrc
    return ("podnet_fetch() { if command -v curl >/dev/null 2>&1; then "
            f"{' '.join(shell.word(w) for w in curl)} -o \"$2\" -- \"$1\"; "
            f"else {home}{' '.join(shell.word(w) for w in wget)} -O \"$2\" -- \"$1\"; fi; }}"
            + ("; trap " + shell.word("rm -f " + NETRC_PATH) + " EXIT" if with_netrc else ""))


def release_function(host_name: str, fetching: bool) -> str:
    """
    Shell that defines ``podnet_release PATH SUM PARTIAL URL SOURCE LOG``, which leaves the release file, intact, at
    PATH (``node_path``): used as it is when it already has SUM (an interrupted run's); else taken from PARTIAL
    (where the laptop sent it or, ``fetching``, where the node downloads it to from URL; what the download says on
    stderr goes to LOG, both staged names an interrupted run's cleanup finds), hashed and compared with SUM (pinned
    in SOURCE) before it is renamed. A download that fails (naming the URL and why) or a file with another sum
    (removed; naming the URL and both sums) stops the command. Defined once per command: each release file is one
    call (``release_call``), not the whole text again.
    """
    q = shell.word
    fetch = ""
    if fetching:  # what curl or wget said on stderr is shown when it fails, never read as data
        fetch = ("if ! podnet_fetch \"$4\" \"$3\" 2>\"$6\"; then rm -f \"$3\"; "
                 f"printf 'podnet: %s: could not download %s (%s attempts): %s\\n' {q(host_name)} \"$4\" {ATTEMPTS} "
                 "\"$(tail -n 3 \"$6\" | tr '\\n' ' ')\" >&2; rm -f \"$6\"; exit 1; fi; rm -f \"$6\"; ")
    return ("podnet_release() { s=$(sha256sum 2>/dev/null < \"$1\") || s=; [ \"${s%% *}\" = \"$2\" ] && return 0; "
            f"{fetch}s=$(sha256sum 2>/dev/null < \"$3\") || s='none (missing)'; s=${{s%% *}}; "
            "if [ \"$s\" != \"$2\" ]; then rm -f \"$3\"; "
            "printf 'podnet: %s: %s has sha256 %s on the node, expected %s (%s); removed it, no file of it was "
            f"activated\\n' {q(host_name)} \"$4\" \"$s\" \"$2\" \"$5\" >&2; exit 1; fi; mv -f \"$3\" \"$1\"; }}")


def release_call(origin: Origin, path: str, partial: str, log: str) -> str:
    """The call of ``podnet_release`` (release_function) for one release file."""
    q = shell.word
    return (f"podnet_release {q(path)} {q(origin.sha256)} {q(partial)} {q(node_url(origin.url))} "
            f"{q(redact_urls(origin.sha256_source))} {q(log)}")


def staging_script(origin: Origin, files: list[DesiredFile], staged_path: Callable[[str], str], path: str) -> list[str]:
    """Shell that puts each of ``files`` at its staged name from the intact release file at ``path``: a copy of
    it, or its member unpacked (only the members activated, into a private directory beside it)."""
    q = shell.word
    if not origin.is_member:
        return [f"cp {q(path)} {q(staged_path(f.path))}" for f in files]
    names = _member_names(origin.local)
    members = [names.get(f.origin.member, f.origin.member) for f in files]  # type: ignore[union-attr, arg-type]
    return [f"u=$(mktemp -d {q(posixpath.dirname(path))}/{UNPACK_PREFIX}XXXXXX)",
            f"tar -xf {q(path)} -C \"$u\" --no-same-owner -- {' '.join(q(m) for m in members)}",
            *(f"mv -f \"$u\"/{q(f.origin.member)} {q(staged_path(f.path))}" for f in files),  # type: ignore[union-attr]
            "rm -rf \"$u\""]
