"""
systemd unit files and environment files, written by systemd's own rules.

Every value a unit podnet writes holds (an ExecStart= word, an EnvironmentFile= assignment) is
written here, so a value is always read back by systemd as exactly that value: one word of the
command line, never a second word, a second command, a specifier or a variable.

Upstream: systemd.service(5) "Command lines" and systemd.syntax(7) (quoting, C escapes, "%%" for
"%", "$$" for "$"); config_parse_exec in src/core/load-fragment.c with extract_first_word
(src/basic/extract-word.c) reads ExecStart=; parse_env_file in src/basic/env-file.c reads an
EnvironmentFile= (inside double quotes a backslash escapes ", \\, ` and $).
"""

from __future__ import annotations

import re

SYSTEMD_PLAIN_WORD = re.compile(r"[A-Za-z0-9_@+=:,./*-]+")
_EXEC_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r", "%": "%%", "$": "$$"}
_ENV_FILE_ESCAPES = {"\\": "\\\\", '"': '\\"', "`": "\\`", "$": "\\$"}
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def systemd_word(word: str) -> str:
    """
    One word of an ExecStart= command line that systemd reads back as exactly ``word``: plain when
    it has only characters systemd gives no meaning, else in double quotes with systemd's C escapes
    (other control characters as \\xHH, other characters no one can see as \\uXXXX), "%%" for "%" and
    "$$" for "$". ValueError for a NUL, which
    no command-line word can hold.
    """
    if not isinstance(word, str):
        raise TypeError(f"a systemd word needs a str, not {type(word).__name__}")
    if "\0" in word:
        raise ValueError(f"{word!r}: a command-line word cannot hold a NUL character")
    if SYSTEMD_PLAIN_WORD.fullmatch(word):
        return word
    out = []
    for c in word:
        if c in _EXEC_ESCAPES:
            out.append(_EXEC_ESCAPES[c])
        elif ord(c) < 0x80 and not c.isprintable():
            out.append(f"\\x{ord(c):02x}")
        elif not c.isprintable():  # C1 controls, U+2028/2029, format characters: as the character, UTF-8
            out.append(f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def exec_command(argv: list[str]) -> str:
    """An ExecStart= value running ``argv``: the absolute path of the executable, then each argument as
    one word. ValueError for a relative executable path (podnet names every binary by its path)."""
    if not argv or not argv[0].startswith("/"):
        raise ValueError(f"{argv!r}: an ExecStart= command starts with the executable's absolute path")
    return " ".join(systemd_word(w) for w in argv)


def environment_file_assignment(name: str, words: list[str]) -> str:
    """
    One line of an EnvironmentFile= setting variable ``name`` to ``words`` joined by spaces, for a
    unit that passes it to its command as $NAME: systemd splits such a variable at white space into
    words (systemd.service(5), "Command lines"), so no word may contain white space (ValueError),
    and the value is written as it is when it has only characters an env file gives no meaning
    (SYSTEMD_PLAIN_WORD), else in double quotes with env-file escapes.
    """
    if not ENV_NAME_RE.match(name):
        raise ValueError(f"{name!r} is not an environment variable name")
    for w in words:
        if not w or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in w):
            raise ValueError(f"{w!r}: systemd splits ${name} at white space, so a word of it cannot be empty or "
                             "hold white space or control characters")
    value = " ".join(words)
    if SYSTEMD_PLAIN_WORD.fullmatch(value):
        return f"{name}={value}"
    return f'{name}="' + "".join(_ENV_FILE_ESCAPES.get(c, c) for c in value) + '"'
