"""Credentials in URIs (`http://user:password@host`): found, taken out, and redacted in text.

Everything the tool writes or prints that may hold a URI a user gave (study.json, the recorded
command, reports, messages) goes through `redact`, so a password never lands in a file meant
to be shared; `split_credentials` takes them out of a URI before it is handed on.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "***"
# scheme://user:password@ -- the password is whatever runs to the last `@` before the host
# (RFC 3986 userinfo holds no `/`, `?`, `#`; an unescaped `@` in a password is taken too).
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/?#:@'\"`]*):"
                       r"(?P<password>[^\s/?#'\"`]*)@")


def redact(text: str) -> str:
    """`text` with the password of every URI in it replaced by *** (`user:***@host`)."""
    return _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", text) if "@" in text else text


def redacted(value: Any) -> Any:
    """A JSON-like value (dicts, lists, strings) with every string in it `redact`ed."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redacted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redacted(v) for v in value]
    return value


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """(the URI without its user and password, the user, the password), both unquoted; the
    URI as it is with (None, None) when it names no password."""
    try:
        parts = urlsplit(uri)
        password = parts.password
    except ValueError:  # a port that is not a number: not a URI with credentials
        return uri, None, None
    if password is None or not parts.scheme:
        return uri, None, None
    host = parts.netloc.rpartition("@")[2]
    bare = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return bare, unquote(parts.username or ""), unquote(password)


def has_password(uri: str | None) -> bool:
    """Whether `uri` carries a password (a masked one counts: its owner must give it again)."""
    return uri is not None and split_credentials(uri)[2] is not None
