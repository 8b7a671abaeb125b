"""
Shell words, for the commands podnet runs on nodes through pyinfra (POSIX sh, as the probe and
every operation's command are run).

A command is built from a list of words, each quoted here, so a value is always one word and never
shell syntax: an argument such as ``Port-6443;touch${IFS}/tmp/pwned`` reaches the program as that
one argument. Upstream: POSIX.1-2017 Shell Command Language, 2.2.2 Single-Quotes (every character
inside single quotes is literal); Python's shlex.quote writes exactly that.
"""

from __future__ import annotations

import shlex


def word(value: str) -> str:
    """One shell word that sh reads back as exactly ``value`` (plain when it needs no quoting)."""
    if not isinstance(value, str):
        raise TypeError(f"a shell word needs a str, not {type(value).__name__}")
    return shlex.quote(value)


def command(*words: str) -> str:
    """A command line of these words, each one quoted: ``command("rm", "-f", path)``."""
    return " ".join(word(w) for w in words)
