"""
TOML as containerd reads its config.toml (github.com/pelletier/go-toml/v2, TOML 1.0).

A value reaches a TOML file only as a basic string written here, so no setting can close the
string and add keys or array items of its own (a cni_bin_dir of ``/opt/cni/bin', '/tmp/evil``
stays one directory). The templates lay the tables out; every string in them goes through the
``toml_string`` filter (tasks/desired.py).

Upstream: the TOML 1.0.0 specification, "String": a basic string is surrounded by quotation
marks; the quotation mark, the backslash and the control characters other than tab (U+0000 to
U+0008, U+000A to U+001F, U+007F) must be escaped, with \\b \\t \\n \\f \\r \\" \\\\ or \\uXXXX.
"""

from __future__ import annotations

_SHORT = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def basic_string(value: str) -> str:
    """``value`` as a TOML basic string (with its quotation marks) that any TOML 1.0 parser reads back
    as exactly ``value``. TypeError for anything but a str: TOML has no implicit conversion here."""
    if not isinstance(value, str):
        raise TypeError(f"a TOML string needs a str, not {type(value).__name__}")
    out = []
    for c in value:
        if c in _SHORT:
            out.append(_SHORT[c])
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04X}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'
