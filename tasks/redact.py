"""
Secrets kept out of what podnet prints or stores (README, "Security", "Secrets").

- ``redact_url``: a URL as podnet prints or stores it (run summary, errors, logs, the committed
  ``artifacts.lock.yaml``): any user name and password in it (``https://user:password@host/...``)
  replaced by ``***``. The one place a URL's credentials are taken out; callers never print
  or store a URL that did not pass through it.
- ``masked``: a text (a remote command's stderr, an error) with given secret values replaced by
  ``*MASKED*`` (pyinfra's own mask for ``HiddenValue``), for messages that quote what a remote
  command said.

Imports nothing of podnet's: tasks.settings uses it for the values its problems quote.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

MASK = "*MASKED*"  # what pyinfra prints for a HiddenValue
REDACTED = "***"


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
