"""Request parsing for the operator routes: the JSON object body (parsed once, bounded, for the
handler and the audit entry alike), exact field sets, bounded text, JWKs, and query and path
parameters. Every refusal is a :class:`BadRequest` (400) or ``key_invalid``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from anchor.api.context import MAX_BODY_DEPTH
from anchor.errors import AnchorError, Reason
from anchor.keys import PublicKey
from anchor.wire import JsonRejected, strict_loads

__all__ = [
    "MAX_TEXT",
    "PARSED_BODY",
    "BadRequest",
    "exact_fields",
    "int_query",
    "json_body",
    "parse_jwk",
    "parse_seq",
    "text_field",
    "text_query",
]

# The request's JSON body, parsed once (bounded) for the handler and the audit target alike.
PARSED_BODY: web.RequestKey[dict[str, Any]] = web.RequestKey("json_body", dict)
MAX_TEXT = 256
"""Longest text field (district, kind) unless the field says otherwise."""


class BadRequest(AnchorError):
    """A request body the endpoint cannot act on (``body_malformed``, 400), or a query or path
    parameter out of its range (``invalid_parameter``, 400): the codes ``anchor.api.public``
    uses too."""

    reason = Reason.BODY_MALFORMED


async def json_body(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    """The body as a JSON object, parsed once per request; ``body_malformed`` otherwise.

    Parsed by :func:`anchor.wire.strict_loads`: nesting bounded before ``json.loads`` sees the
    bytes (in a process that imported web3 deep input would overflow the C stack, not raise),
    no duplicate keys, no NaN.
    """
    cached: dict[str, Any] | None = request.get(PARSED_BODY)
    if cached is not None:
        return cached
    raw = await request.read()
    if not raw.strip():
        if optional:
            request[PARSED_BODY] = {}
            return {}
        raise BadRequest("the request needs a JSON object body")
    try:
        body = strict_loads(raw, max_depth=MAX_BODY_DEPTH)
    except JsonRejected as exc:
        raise BadRequest(f"the body is not strict JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"the body must be a JSON object, not {type(body).__name__}")
    request[PARSED_BODY] = body
    return body


def exact_fields(
    body: Mapping[str, Any], required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> None:
    """Raise :class:`BadRequest` unless ``body`` has every ``required`` key and no key outside
    ``required`` and ``optional``."""
    missing = [k for k in required if k not in body]
    extra = [k for k in body if k not in required and k not in optional]
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(missing))
        if extra:
            parts.append("unknown " + ", ".join(repr(k)[:40] for k in extra[:5]))
        raise BadRequest(f"{'; '.join(parts)} (expected exactly {', '.join(required + optional)})")


def text_field(body: Mapping[str, Any], name: str, limit: int = MAX_TEXT) -> str:
    """``body[name]`` (default empty): a string of at most ``limit`` characters, without NUL."""
    value = body.get(name, "")
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string")
    if len(value) > limit or "\x00" in value:
        raise BadRequest(f"{name} must be at most {limit} characters, without NUL")
    return value


def parse_jwk(value: object) -> PublicKey:
    """A public JWK object as a key; ``key_invalid`` otherwise."""
    if not isinstance(value, dict):
        raise AnchorError("public_key_jwk must be a JWK object", reason=Reason.KEY_INVALID)
    return PublicKey.from_jwk(value)  # KeyMaterialError: key_invalid


def int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """The query parameter ``name``, decimal digits in [low, high]; ``default`` when absent."""
    text = request.query.get(name)
    if text is None:
        return default
    if not text.isdecimal() or len(text) > 19 or not low <= int(text) <= high:
        raise BadRequest(
            f"{name} must be a decimal integer in [{low}, {high}]", reason=Reason.INVALID_PARAMETER
        )
    return int(text)


def parse_seq(text: str) -> int:
    """A path seq: decimal digits in [1, 2^63-1] (``invalid_parameter`` otherwise)."""
    if not text.isdecimal() or len(text) > 19 or not 1 <= int(text) < 1 << 63:
        raise BadRequest(
            f"seq {text[:24]!r} is not a decimal integer in [1, 2^63-1]",
            reason=Reason.INVALID_PARAMETER,
        )
    return int(text)


def text_query(request: web.Request, name: str, pattern: re.Pattern[str]) -> str | None:
    """The query parameter ``name`` if it matches ``pattern`` whole, None when absent."""
    value = request.query.get(name)
    if value is not None and pattern.fullmatch(value) is None:
        raise BadRequest(f"{name} must match {pattern.pattern}", reason=Reason.INVALID_PARAMETER)
    return value
