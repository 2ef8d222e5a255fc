"""Hide secrets in anything cityanchor prints or logs: the one masking function.

Every URL's userinfo password (``mqtt://dev:***@host``, ``postgresql://cityanchor:***@db``),
query parameters named like a credential (``?apikey=***``, ``&password=***``), path segments that
look like an API key (``https://rpc.example/v3/***``), ``key=value`` credentials in free text
(libpq keyword DSNs: ``password=***``), bearer tokens and cityanchor API tokens
(``ca_12_***``). Host, port, user name, database and the rest stay readable, so a masked line
still says *where* something connects.

Used by ``Settings.masked()`` (``config show``, the services' start-up lines), by the log
formatter every ``cityanchor`` command installs (:class:`RedactingFormatter`: start-up lines,
connection failures, tracebacks), by the CLI's error messages and by ``cityanchor up``'s and the
demo's console lines. Pure: no I/O.

Example::

    >>> redact_text("connecting to postgresql://cityanchor:s3cret@127.0.0.1:5432/ca")
    'connecting to postgresql://cityanchor:***@127.0.0.1:5432/ca'
"""

from __future__ import annotations

import logging
import re

__all__ = ["MASK", "RedactingFormatter", "redact_text", "redact_url"]

MASK = "***"

# A URL inside free text: scheme://, then anything up to white space or a quote/bracket that
# would end it in a log line or a repr().
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")
# Query parameter / keyword names that carry credentials.
_SECRET_NAME = re.compile(
    r"(?i)^(?:.*(?:pass(?:word|wd|phrase)?|pwd|secret|token|api[-_]?key|apikey|access[-_]?key"
    r"|private[-_]?key|credential|signature|auth)s?.*|key|sig|code)$"
)
# ``password=...`` / ``token: ...`` in free text (libpq keyword DSNs, error messages, JSON).
_KEYWORD = re.compile(
    r"(?i)((?<![A-Za-z])(?:password|passwd|pwd|secret|token|api[-_]?key|apikey|access[-_]?key)"
    r"[\"']?\s*[=:]\s*[\"']?)([^\s&\"',;}]+)"
)
# A URL's path quoted without its scheme and host, as urllib3/requests errors do
# ("Max retries exceeded with url: /v3/KEY?apikey=..."), so web3 failures to reach an RPC
# endpoint quote its API key.
_URL_PATH = re.compile(r"(?i)(\burl:\s*)(/[^\s'\"<>`]*)")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+")
# cityanchor API tokens: ca_<id>_<base64url secret> (anchor.api.tokens.format_token).
_API_TOKEN = re.compile(r"\b(ca_\d+_)[A-Za-z0-9_-]{8,}")
# An API key in a URL path or a user name (Infura /v3/<32 hex>, Alchemy /v2/<key>): long, one
# "word" of letters and digits, and both kinds present (a plain name or number never matches).
_KEYLIKE = re.compile(r"(?=[A-Za-z0-9_-]*[0-9])(?=[A-Za-z0-9_-]*[A-Za-z])[A-Za-z0-9_-]{24,}")


def _redact_query(query: str) -> str:
    parts = []
    for item in query.split("&"):
        name, sep, value = item.partition("=")
        secret = sep and value and (_SECRET_NAME.match(name) or _KEYLIKE.fullmatch(value))
        parts.append(f"{name}={MASK}" if secret else item)
    return "&".join(parts)


def redact_url(url: str) -> str:
    """``url`` with its password, credential-like query values and key-like path segments
    replaced by ``***``; anything that is not a ``scheme://`` URL is returned unchanged.

    Works on the raw text (no parsing into a structure and back), so whatever the URL held
    that is not secret, percent-encoding and odd ports included, comes out byte for byte.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    # The userinfo ends at the last @ before any ? or #. Looking past a / too means that a
    # password with an unencoded / (which a URL parser would misread) is still hidden.
    end = min((i for i in (rest.find(c) for c in "?#") if i >= 0), default=len(rest))
    at = rest.rfind("@", 0, end)
    userinfo = ""
    if at >= 0 and (":" in rest[:at] or "/" not in rest[:at]):
        user, colon, _password = rest[:at].partition(":")
        if _KEYLIKE.fullmatch(user):
            user = MASK  # an API key given as the user name (https://KEY@host)
        userinfo = (f"{user}:{MASK}" if colon else user) + "@"
        rest = rest[at + 1 :]
    # The host (and port) end at the first / ? or #.
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = userinfo + rest[:cut], rest[cut:]
    path, qmark, query = tail.partition("?")
    fragment = ""
    if "#" in query:
        query, hashmark, frag = query.partition("#")
        fragment = hashmark + (MASK if frag else "")
    elif "#" in path:
        path, hashmark, frag = path.partition("#")
        fragment = hashmark + (MASK if frag else "")
    path = "/".join(MASK if _KEYLIKE.fullmatch(seg) else seg for seg in path.split("/"))
    if qmark:
        query = _redact_query(query)
    return f"{scheme}://{authority}{path}{qmark}{query}{fragment}"


def redact_text(text: str) -> str:
    """``text`` with every URL passed through :func:`redact_url` and every ``password=...``,
    ``Bearer ...`` and cityanchor API token masked. Idempotent."""
    text = _URL.sub(lambda m: redact_url(m.group(0)), text)
    text = _URL_PATH.sub(lambda m: m.group(1) + redact_url("x://h" + m.group(2))[5:], text)
    text = _KEYWORD.sub(lambda m: m.group(1) + MASK, text)
    text = _BEARER.sub(lambda m: m.group(1) + MASK, text)
    return _API_TOKEN.sub(lambda m: m.group(1) + MASK, text)


class RedactingFormatter(logging.Formatter):
    """A log formatter whose output (message, arguments, traceback) went through
    :func:`redact_text`: no log line of a cityanchor command carries a secret."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))
