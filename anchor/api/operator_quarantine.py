"""``GET /v1/quarantine`` (scope ``audit:read``): why the ingestors refused what they refused,
by device and reason, oldest first, with an id cursor (issue 14 item 14).

The same rows as ``cityanchor quarantine list``; never the refused bytes, only their size and
SHA-256. ``audit:read`` guards it because the rows name devices and what they sent. Declared on
:data:`ROUTES`, which :mod:`anchor.api.operator` takes into the operator route table.
"""

from __future__ import annotations

import re

from aiohttp import web

from anchor.api.context import CONTEXT
from anchor.api.operator_guard import operator
from anchor.api.operator_requests import int_query, text_query
from anchor.api.operator_schemas import ok_response, problem_responses, security
from anchor.api.spec import RouteTable
from anchor.device_id import DEVICE_ID_RE
from anchor.store.operator import TokenRow
from anchor.store.quarantine import list_quarantine

__all__ = ["QUARANTINE_SCOPE", "ROUTES"]

ROUTES = RouteTable()
"""The quarantine route, with its OpenAPI operation."""

QUARANTINE_SCOPE = "audit:read"
"""The scope that reads the quarantine (and sees "quarantined: <reason>" on a receipt 404)."""

_REASON = re.compile(r"[a-z0-9_]{1,64}")


@ROUTES.get(
    "/v1/quarantine",
    {
        "tags": ["operator"],
        "operationId": "listQuarantine",
        "summary": "Refused messages and why, oldest first (scope audit:read)",
        "description": "Filter by `device_id` (as the message claimed it) and/or `reason` "
        "(a reason code: see /problems); page with `after` = the `next` of the "
        "previous page. The refused bytes are not served: only their size and SHA-256.",
        "security": security(QUARANTINE_SCOPE),
        "parameters": [
            {
                "name": "device_id",
                "in": "query",
                "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
            },
            {
                "name": "reason",
                "in": "query",
                "schema": {"type": "string", "pattern": "^[a-z0-9_]{1,64}$"},
            },
            {
                "name": "after",
                "in": "query",
                "schema": {"type": "integer", "minimum": 0, "maximum": 9223372036854775807},
            },
            {
                "name": "limit",
                "in": "query",
                "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
            },
        ],
        "responses": {
            **ok_response(200, "QuarantinePage", "One page."),
            **problem_responses(400, 401, 403),
        },
    },
)
@operator(QUARANTINE_SCOPE)
async def _quarantine(request: web.Request, token: TokenRow) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    device_id = text_query(request, "device_id", DEVICE_ID_RE)
    reason = text_query(request, "reason", _REASON)
    after = int_query(request, "after", 0, 0, (1 << 63) - 1)
    limit = int_query(request, "limit", 100, 1, 1000)
    rows = await list_quarantine(
        ctx.store, device_id=device_id, reason=reason, after=after, limit=limit
    )
    return web.json_response(
        {"rows": [r.to_dict() for r in rows], "next": rows[-1].id if len(rows) == limit else None}
    )
