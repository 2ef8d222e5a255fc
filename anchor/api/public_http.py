"""What the public routes share: their limits and cache policies, the parsing of path and query
parameters, and the JSON and ETag responses (:mod:`anchor.api.public` lists the routes and the
``reason`` codes they answer with).

A leaf of the public route group: it imports none of the route modules
(:mod:`anchor.api.public_proofs`, :mod:`anchor.api.public_log`, :mod:`anchor.api.public`).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from aiohttp import web

from anchor import merkle
from anchor.api.context import CONTEXT, ApiContext
from anchor.device_id import DEVICE_ID_PATTERN, DEVICE_ID_RE
from anchor.errors import AnchorError, Reason
from anchor.sealing import MAX_STORED_INT
from anchor.store import StoredAnchor

__all__ = [
    "ANCHORED_RECEIPT",
    "DEFAULT_COMPLETENESS_RANGE",
    "DEFAULT_LIST_LIMIT",
    "IMMUTABLE",
    "MAX_COMPLETENESS_RANGE",
    "MAX_LIST_LIMIT",
    "NO_CACHE",
    "SHORT",
    "ApiInputError",
    "anchor_json",
    "cached_json",
    "hasher_for",
    "parse_device_id",
    "parse_integer",
    "query_int",
    "request_context",
    "with_etag",
]

MAX_COMPLETENESS_RANGE = 1000
"""Most seqs one completeness proof covers (``to_seq - from_seq + 1``)."""
DEFAULT_COMPLETENESS_RANGE = 100
"""Seqs covered when ``to_seq`` is not given."""
MAX_LIST_LIMIT = 1000
DEFAULT_LIST_LIMIT = 100

IMMUTABLE = "public, max-age=31536000, immutable"
SHORT = "public, max-age=5"
# A minute, then revalidation by ETag (cheap: 304): an anchored receipt can still change, when
# its anchor vanishes in a reorg (the anchoring job re-checks every anchor_recheck_ms, 30 s) or
# its envelope is erased; a shared cache must not keep citing a vanished anchor for an hour.
ANCHORED_RECEIPT = "public, max-age=60, must-revalidate"
NO_CACHE = "no-cache"

_DEVICE_ID = DEVICE_ID_RE  # the one rule: anchor.device_id
_DECIMAL = re.compile(r"[0-9]{1,19}")


class ApiInputError(AnchorError):
    """A request the API cannot act on (400 unless the reason maps elsewhere)."""

    reason = Reason.INVALID_PARAMETER


def request_context(request: web.Request) -> ApiContext:
    """The app's :class:`ApiContext`."""
    return request.app[CONTEXT]


def hasher_for(ctx: ApiContext) -> merkle.Hasher:
    """The log's hasher (setting ``hash_scheme``)."""
    return merkle.get_hasher(ctx.settings.hash_scheme)


def parse_device_id(text: str) -> str:
    """``text`` if it is a device id; raises :class:`ApiInputError` (``device_id_invalid``)."""
    if _DEVICE_ID.fullmatch(text) is None:
        raise ApiInputError(
            f"device id {ascii(text)[:80]} does not match {DEVICE_ID_PATTERN}",
            reason=Reason.DEVICE_ID_INVALID,
        )
    return text


def parse_integer(text: str, name: str, *, low: int, high: int = MAX_STORED_INT) -> int:
    """``text`` as an integer in [low, high]; raises :class:`ApiInputError`
    (``invalid_parameter``) naming ``name`` otherwise."""
    # Decimal digits only: int() would also take "+5", " 5" and "1_000".
    if _DECIMAL.fullmatch(text) is None or not low <= int(text) <= high:
        raise ApiInputError(
            f"{name} must be a decimal integer from {low} to {high}, got {ascii(text)[:40]}"
        )
    return int(text)


def query_int(
    request: web.Request, name: str, *, low: int, high: int = MAX_STORED_INT
) -> int | None:
    """The query parameter ``name`` as by :func:`parse_integer`, None when absent."""
    text = request.query.get(name)
    return None if text is None else parse_integer(text, name, low=low, high=high)


def cached_json(data: Any, *, cache: str, status: int = 200) -> web.Response:
    """Compact JSON (no NaN) with ``Cache-Control: cache``."""
    response = web.json_response(data, status=status, dumps=_compact)
    response.headers["Cache-Control"] = cache
    return response


def _compact(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _etag_matches(header: str | None, etag: str) -> bool:
    # RFC 9110 section 13.1.2: If-None-Match uses the weak comparison.
    if header is None:
        return False
    for candidate in header.split(","):
        tag = candidate.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False


def with_etag(request: web.Request, body: bytes, *, content_type: str, cache: str) -> web.Response:
    """``body`` with a strong ETag (a hash of it), or 304 when ``If-None-Match`` matches."""
    etag = '"' + hashlib.sha256(body).hexdigest()[:40] + '"'
    headers = {"ETag": etag, "Cache-Control": cache}
    if _etag_matches(request.headers.get("If-None-Match"), etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, content_type=content_type, charset="utf-8", headers=headers)


def anchor_json(a: StoredAnchor) -> dict[str, Any]:
    """A stored anchor as the public routes show it (schema ``StoredAnchor``)."""
    return {
        "backend": a.backend,
        "chain_id": a.chain_id,
        "contract": a.contract,
        "log_size": a.log_size,
        "root": a.root.hex(),
        "tx_hash": a.tx_hash,
        "block_number": a.block_number,
        "block_time": a.block_time.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
