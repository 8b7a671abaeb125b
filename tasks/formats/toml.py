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


def literal_string(value: str) -> str:
    """``value`` as a TOML literal string ('...', no escapes) when TOML allows it there (no "'", no control
    character other than tab), else as a basic string: read back as exactly ``value`` either way."""
    if isinstance(value, str) and "'" not in value and not any(
            (ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in value):
        return f"'{value}'"
    return basic_string(value)


def comment_text(value: str) -> str:
    """``value`` for the text of a TOML comment, which ends at a newline and may hold no other control
    character than tab (TOML 1.0, "Comment"); ValueError for any other text (podnet writes only release
    versions there)."""
    if not isinstance(value, str) or any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in value):
        raise ValueError(f"{value!r} cannot be written in a TOML comment")
    return value
