"""
Desired files: what a managed path on a node should hold, rendered or taken from an artifact.

Templates hold layout only; every value they print is decided in Python and passed in.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import jinja2

from tasks.artifacts.download import known_digest, register_digest, sha256_of
from tasks.formats import kube_yaml, toml

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "templates"

_environment = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,
)
# Every value a template prints goes through its format's own writer: `tojson` for JSON, `yaml_value` for
# YAML (tasks/formats/kube_yaml.py: a flow node go-yaml reads back as that value), `toml_string`,
# `toml_literal` and `toml_comment` for TOML (tasks/formats/toml.py); systemd lines are written in Python
# (tasks/formats/systemd_unit.py).
_environment.filters["toml_string"] = toml.basic_string
_environment.filters["toml_literal"] = toml.literal_string
_environment.filters["toml_comment"] = toml.comment_text
_environment.filters["yaml_value"] = kube_yaml.flow


def render(template: str, **context) -> str:
    """Render templates/<template> with exactly the given values (a missing one is an error)."""
    return _environment.get_template(template).render(**context)


@dataclass(frozen=True)
class Origin:
    """The release file a binary comes from: the artifact's URL (upstream's or the mirror's, which may
    hold the mirror's credentials: never printed as is), its sha256 and where that sum comes from, the
    verified download in the laptop's cache, and for an archive's member its name in the archive."""

    artifact: str
    url: str
    sha256: str
    sha256_source: str
    local: Path
    member: str | None = None

    @property
    def filename(self) -> str:
        return Path(urlsplit(self.url).path).name

    @property
    def is_member(self) -> bool:
        return self.member is not None


@dataclass(frozen=True)
class DesiredFile:
    """A file that must exist at ``path`` with this content and mode."""

    path: str
    mode: str
    sha256: str
    content: bytes | None = None  # rendered text files
    source: Path | None = None  # binaries from the download cache
    origin: Origin | None = None  # the release file ``source`` is (or was unpacked from)

    @property
    def is_text(self) -> bool:
        return self.content is not None

    def differs(self, current_sha256: str | None) -> bool:
        return current_sha256 != self.sha256


def text_file(path: str, content: str, mode: str = "0644") -> DesiredFile:
    data = content.encode()
    return DesiredFile(path=path, mode=mode, sha256=hashlib.sha256(data).hexdigest(), content=data)


def local_file(path: str, source: Path, mode: str = "0755", origin: Origin | None = None) -> DesiredFile:
    """A file from the download cache, whose digest the downloader already knows. Its ``origin`` (the release
    file it is, or the archive it was unpacked from: how it reaches the node, tasks/engine/node_releases.py) is
    the one given, else the one the runner registered for ``source``."""
    sha256 = known_digest(source)
    if sha256 is None:
        sha256 = sha256_of(source)
        register_digest(source, sha256)
    return DesiredFile(path=path, mode=mode, sha256=sha256, source=source, origin=origin or _origins.get(Path(source)))


# The release file each file of this run's download cache is, or was unpacked from (registered by the runner as
# it hands the files to the steps: tasks/engine/runner.RunArtifacts).
_origins: dict[Path, Origin] = {}


def register_origin(local: Path, origin: Origin) -> None:
    _origins[Path(local)] = origin
