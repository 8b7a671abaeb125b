"""
podnet's own YAML data files (files/artifacts.yaml, the artifact lock file), read as PyYAML's safe
loader reads them: with libyaml's parser where PyYAML was built with it (``CSafeLoader``: the same
resolver and constructors, so the same values; about seven times faster on files/artifacts.yaml,
which every run reads), else the pure-Python ``SafeLoader``. Kubernetes documents are not read here
but by tasks.formats.kube_yaml, which follows the Go YAML library's rules.
"""

from __future__ import annotations

from typing import IO, Any

import yaml

SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load(document: str | IO) -> Any:
    """The one YAML document in ``document`` (text or a stream); raises yaml.YAMLError as yaml.safe_load does."""
    return yaml.load(document, Loader=SAFE_LOADER)  # noqa: S506 (a safe loader: no Python objects)
