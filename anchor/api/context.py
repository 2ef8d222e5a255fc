"""What every route module shares: the request context, the problem documents (RFC 9457) and
the reason-to-status map. A leaf: it imports no route module, so the app (:mod:`anchor.api.app`)
can import the route modules and they can import this without a cycle.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from anchor.checkpoint import NoteVerifier
from anchor.errors import Reason
from anchor.host.config import Settings
from anchor.store import Store

__all__ = [
    "CONTEXT",
    "MAX_BODY_BYTES",
    "MAX_BODY_DEPTH",
    "PROBLEM_TYPE",
    "ApiContext",
    "Handler",
    "problem",
    "status_for",
]

MAX_BODY_BYTES = 1 << 20
MAX_BODY_DEPTH = 48
"""Deepest JSON nesting accepted in a request body (a receipt needs 4; extensions more)."""
PROBLEM_TYPE = "/problems/"
"""Prefix of a problem document's ``type``: a URI reference relative to the API, which serves
the page documenting each type there (:mod:`anchor.api.problems`)."""

# HTTP status for each reason code; anything not listed is 400 (the client's input) unless it
# is a server-side failure, which is 503 (retryable) or 500.
_STATUS: dict[Reason, int] = {
    Reason.NOT_FOUND: 404,
    Reason.ERASED: 410,
    Reason.READING_ARCHIVED: 410,
    Reason.UNAUTHORIZED: 401,
    Reason.FORBIDDEN: 403,
    Reason.CONFLICT: 409,
    Reason.TOO_LARGE: 413,
    Reason.OVERSIZED: 413,
    Reason.RECEIPT_TOO_LARGE: 413,
    Reason.RATE_LIMITED: 429,
    Reason.DB_UNAVAILABLE: 503,
    Reason.DB_BUSY: 503,
    Reason.CHAIN_UNAVAILABLE: 503,
    Reason.DB_ERROR: 500,
    Reason.LOG_INCONSISTENT: 500,
    Reason.ARCHIVE_INVALID: 500,
    Reason.INTERNAL: 500,
}


def status_for(reason: Reason) -> int:
    """The HTTP status that carries ``reason``."""
    return _STATUS.get(reason, 400)


def problem(
    status: int, reason: Reason, detail: str, *, title: str | None = None, **extra: Any
) -> web.Response:
    """An RFC 9457 Problem Details response (``application/problem+json``)."""
    body = {
        "type": PROBLEM_TYPE + reason,
        "title": title or reason.replace("_", " "),
        "status": status,
        "detail": detail,
        "reason": reason,
        **extra,
    }
    return web.Response(
        status=status,
        text=json.dumps(body),
        content_type="application/problem+json",
    )


@dataclass(slots=True)
class ApiContext:
    """What the handlers need: the store, the settings, and the keys the API vouches with."""

    store: Store
    settings: Settings
    log_verifiers: Sequence[NoteVerifier] = ()
    # Rate limiting: requests per second per client address (0 = off), bursts of twice that.
    rate_per_s: float = 0.0
    buckets: dict[str, tuple[float, float]] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    latency: dict[str, list[float]] = field(default_factory=dict)


CONTEXT: web.AppKey[ApiContext] = web.AppKey("context", ApiContext)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
