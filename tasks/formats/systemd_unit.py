"""
systemd unit files as systemd reads and writes them: entries (sections, comments, line
continuations), ExecStart= words (quoting, C escapes, specifiers), and the writers: a word written
back so that systemd reads exactly that word, an ExecStart= command from argv, an EnvironmentFile=
assignment. Every value a unit podnet writes goes through a writer here, so systemd reads it back
as exactly that value: one word, never a second word, a second command, a specifier or a variable.
Pure text functions; the rules are systemd's own, named per function (systemd.syntax(7),
systemd.service(5) "Command lines", src/shared/conf-parser.c, src/basic/extract-word.c,
src/basic/escape.c, src/basic/env-file.c).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from tasks.errors import PodnetError


class UnitSyntaxError(PodnetError, ValueError):
    """A unit file systemd would not read as intended (e.g. unbalanced quoting: the line is ignored)."""


@dataclass(frozen=True)
class UnitEntry:
    """One key=value entry of a unit file: its section, key and value, and the text span it occupies."""

    section: str | None
    key: str
    value: str
    start: int
    end: int


def _continues(line: str) -> bool:
    """A line that ends in a backslash which is not itself escaped continues on the next line."""
    return (len(line) - len(line.rstrip("\\"))) % 2 == 1


def unit_entries(text: str) -> list[UnitEntry]:
    """
    The entries of a unit file as systemd reads them (systemd.syntax(7); config_parse in
    src/shared/conf-parser.c): lines starting with "#" or ";" are comments; a line ending in a
    backslash continues on the next line, the backslash read as a space, and comment lines inside
    such a continuation are skipped; white space around "=" and around the value is dropped.
    """
    # systemd ends a line at a newline only (read_line, src/basic/fileio.c), not at every character
    # Python's splitlines() takes for one (U+0085, U+2028, ...)
    lines = [line for line in re.split(r"(?<=\n)", text) if line]
    entries: list[UnitEntry] = []
    section = None
    pos = i = 0
    while i < len(lines):
        start = pos
        logical = lines[i].rstrip("\r\n")
        pos += len(lines[i])
        i += 1
        if not logical.strip() or logical.strip()[0] in "#;":
            continue
        while _continues(logical):
            logical = logical[:-1] + " "
            while i < len(lines) and lines[i].strip()[:1] in ("#", ";"):
                pos += len(lines[i])
                i += 1
            if i == len(lines):
                break
            logical += lines[i].rstrip("\r\n")
            pos += len(lines[i])
            i += 1
        stripped = logical.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped[1:-1]
            continue
        key, sep, value = stripped.partition("=")
        if sep:
            entries.append(UnitEntry(section, key.strip(), value.strip(), start, pos))
    return entries


C_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
             "\\": "\\", '"': '"', "'": "'", "s": " "}
HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}
WHITESPACE = " \t\n\r"


def _unescape(value: str, i: int, in_quote: bool) -> tuple[str, int]:
    """
    The text of the escape whose backslash is value[i], and where reading goes on: systemd's C
    escapes (cunescape_one, src/basic/escape.c: \\a \\b \\f \\n \\r \\t \\v \\\\ \\" \\' \\s, \\xHH,
    \\uHHHH, \\UHHHHHHHH, \\ooo; no NUL). An unknown or broken one keeps its backslash, as
    extract_first_word_and_warn's retry with EXTRACT_CUNESCAPE_RELAX does; so does a backslash
    ending the line outside quotes.
    """
    if i + 1 == len(value):
        if in_quote:
            raise UnitSyntaxError("ExecStart= has unbalanced quoting, so systemd ignores the line")
        return "\\", i + 1
    c = value[i + 1]
    if c in C_ESCAPES:
        return C_ESCAPES[c], i + 2
    if c in HEX_ESCAPES:
        first, width, base, limit, allowed = i + 2, HEX_ESCAPES[c], 16, 0x10FFFF, string.hexdigits
    else:
        first, width, base, limit, allowed = i + 1, 3, 8, 0xFF, string.octdigits
    digits = value[first:first + width]
    if len(digits) == width and all(d in allowed for d in digits) and 0 < int(digits, base) <= limit:
        return chr(int(digits, base)), first + width
    return "\\" + c, i + 2


def systemd_words(value: str) -> list[tuple[str, str]]:
    """
    An ExecStart= value split into (raw text, word) as systemd splits a command line
    (config_parse_exec in src/core/load-fragment.c: extract_first_word with EXTRACT_UNQUOTE and
    EXTRACT_CUNESCAPE, src/basic/extract-word.c; then unit specifiers, where "%%" is "%"): words
    are separated by unquoted white space; '...' and "..." quote, also in the middle of a word, and
    are removed; backslash escapes are C escapes inside and outside quotes, and a word \\; is ";"
    (a lone ; separates commands, which merge_unit refuses). Unbalanced quoting
    makes systemd ignore the whole line, and is refused. Environment variables ($NAME, ${NAME})
    are expanded by systemd only when the command runs: such words are read as written.
    """
    words: list[tuple[str, str]] = []
    i = 0
    while True:
        while i < len(value) and value[i] in WHITESPACE:
            i += 1
        if i == len(value):
            return words
        start, out, quote = i, [], ""
        while i < len(value) and (quote or value[i] not in WHITESPACE):
            c = value[i]
            if c == "\\":
                text, i = _unescape(value, i, bool(quote))
                out.append(text)
            elif quote and c == quote:
                quote, i = "", i + 1
            elif not quote and c in "'\"":
                quote, i = c, i + 1
            else:
                out.append(c)
                i += 1
        if quote:
            raise UnitSyntaxError("ExecStart= has unbalanced quoting, so systemd ignores the line")
        raw = value[start:i]
        words.append((raw, ";" if raw == "\\;" else "".join(out).replace("%%", "%")))


SYSTEMD_PLAIN_WORD = re.compile(r"[A-Za-z0-9_@+=:,./*-]+")
_EXEC_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r", "%": "%%", "$": "$$"}
_ENV_FILE_ESCAPES = {"\\": "\\\\", '"': '\\"', "`": "\\`", "$": "\\$"}
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def systemd_word(word: str) -> str:
    """
    One word of an ExecStart= command line that systemd reads back as exactly ``word``: plain when
    it has only characters systemd gives no meaning, else in double quotes with systemd's C escapes
    (other control characters as \\xHH, other characters no one can see as \\uXXXX), "%%" for "%" and
    "$$" for "$". ValueError for a NUL, which no command-line word can hold.
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
