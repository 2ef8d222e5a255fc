"""Operator endpoints of the API: device registry, erasure, anchoring, audit log, metrics.

Every operator endpoint takes a bearer token (``Authorization: Bearer ca_<id>_<secret>``, see
:mod:`anchor.api.tokens`) with one scope:

* ``POST /v1/devices`` (``devices:write``): register, exactly as DESIGN.md "Interfaces"
  (body exactly ``{"device_id", "public_key_jwk", "district", "kind"}``): 201, the device;
* ``POST /v1/devices/{id}/rotate`` (``devices:write``): ``{"public_key_jwk"}``: 200, the device;
* ``POST /v1/devices/{id}/revoke`` (``devices:write``): ``{"reason"}`` (optional): 200;
* ``DELETE /v1/readings/{id}/{seq}`` (``readings:erase``): ``legal_reason`` in the JSON body
  or the query: 200 with the tombstone;
* ``POST /v1/anchors/run`` (``anchors:run``): one anchoring step: 202 with its results;
* ``GET /v1/audit?after=&limit=`` (``audit:read``): the audit log, oldest first, id cursor;
* ``GET /v1/quarantine?device_id=&reason=&after=&limit=`` (``audit:read``): refused messages
  and their reasons (:mod:`anchor.api.operator_quarantine`);
* ``GET /metrics`` (``metrics:read``): Prometheus text format 0.0.4 (see :mod:`anchor.api.metrics`).

Public (no token; a device's public key is public information, and a city app needs it to
verify signatures): ``GET /v1/devices?district=&status=&after=&limit=`` (cursor: the last
device id of the previous page, ``next`` in the answer) and ``GET /v1/devices/{id}``.

A device record is :func:`anchor.store.device_json.device_json`, the shape the CLI prints too:
``device_id``, ``district``, ``kind``, ``status``, ``registered_at``, ``revoked_at``,
``revoke_reason``, ``kid`` (hex of the 32-byte RFC 7638 thumbprint of the current key),
``kid_b64url`` (the same bytes as in envelope headers), ``public_key_jwk`` (the current key)
and ``keys`` (the whole key history).
``mqtt_username`` (= device_id), ``mqtt_password`` and ``mqtt_login_active`` are in the
registration answer, and only there, when the broker requires device logins (setting
``mqtt_device_logins``, on under ``cityanchor up``); otherwise they are absent. The answer is
:func:`anchor.broker.enrol.register_device`'s, which ``cityanchor device register`` prints too.

Errors are problem documents (RFC 9457) with a ``reason``: ``unauthorized`` (401: no token, a
malformed, unknown, wrong or revoked token; with ``WWW-Authenticate: Bearer``), ``forbidden``
(403: the token lacks the scope), ``body_malformed`` (400: body not a UTF-8 JSON object,
duplicate keys, fields missing, unknown or of the wrong type), ``invalid_parameter`` (400: a
query or path parameter out of range), ``key_invalid`` (400: the JWK), ``device_id_invalid``
(400), ``device_id_reserved`` (400: registering ``.``, ``..``, ``-...`` or ``cityanchor...``,
see :mod:`anchor.device_id`), ``conflict`` (409: device or key already registered, device
already revoked, anchoring job busy), ``not_found`` (404), ``anchoring_unconfigured`` (503: no
chain configured).

Erasure (PIPL / GDPR): ``DELETE /v1/readings/{device_id}/{seq}`` overwrites the stored envelope
with zeros (its bytes and so its values are gone; sql/009) and records a tombstone (who, when,
legal reason); the leaf hash, the batch and every proof stay, so every other receipt still
verifies, and the erased reading's receipt says ``"status": "erased"`` with an ``erasure``
object. Idempotent: the answer is 200 ``{"status": "erased", "erased_now": bool, "tombstone":
{...}}``, with the first tombstone again (``erased_now`` false) on a repeat. The tombstone's
``erased_at``, ``erased_by`` and ``legal_reason`` are the receipt's ``erasure`` object, named
and written alike (``erased_at`` RFC 3339 UTC to the second); ``actor``, the name first
published for ``erased_by``, stays beside it as an alias.

Audit log: every request to a changing endpoint (POST/DELETE above) is recorded, whatever its
outcome (including 401 and 403), with the actor (token name, or ``anonymous``), token id,
action, target, outcome (``ok`` or the reason code), HTTP status, remote address and details.
Reading it needs ``audit:read``, not ``metrics:read``: it names people and legal reasons.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from anchor.anchoring.backend import build_backend
from anchor.anchoring.job import AnchorJob
from anchor.api import operator_devices, operator_quarantine
from anchor.api.context import CONTEXT, Handler, problem, status_for
from anchor.api.metrics import CLIENT_CLOSED, CONTENT_TYPE, MetricsState, collect, render
from anchor.api.operator_guard import AUDIT_DETAIL, AUDIT_OUTCOME, METRICS, operator
from anchor.api.operator_requests import BadRequest, exact_fields, int_query, json_body, parse_seq
from anchor.api.operator_schemas import (
    DEVICE_ID_PARAM,
    OPERATOR_COMPONENTS,
    ok_response,
    problem_responses,
    security,
)
from anchor.api.spec import RouteTable
from anchor.errors import AnchorError, Reason
from anchor.store import StoreError
from anchor.store import operator as ops
from anchor.store.device_json import device_json
from anchor.store.operator import TokenRow

__all__ = ["METRICS", "ROUTES", "add_routes", "device_json"]

ANCHOR_STEP_TIMEOUT_S = 90.0
_MAX_LEGAL_REASON = 1000

ROUTES = RouteTable(components=OPERATOR_COMPONENTS)
"""The operator routes and the public device reads, each with its OpenAPI operation: the
device registry first (:mod:`anchor.api.operator_devices`), then erasure, anchoring, the audit
log and the metrics."""
ROUTES.include(operator_devices.ROUTES)
ROUTES.include(operator_quarantine.ROUTES)


# --------------------------------------------------------------------------------------------
# Erasure


@ROUTES.delete(
    "/v1/readings/{device_id}/{seq}",
    {
        "tags": ["operator"],
        "operationId": "eraseReading",
        "summary": "Erase a reading's envelope for privacy law (scope readings:erase)",
        "description": "Keeps the leaf hash, batch and proofs; records a tombstone. "
        "legal_reason in the JSON body or the query. Idempotent (200 again, erased_now "
        "false, the first tombstone). A reading of an archived month: its archive file is "
        "rewritten with the envelope's bytes zeroed (the API needs `archive_dir`, else 410 "
        "`reading_archived`).",
        "security": security("readings:erase"),
        "parameters": [
            DEVICE_ID_PARAM,
            {"name": "seq", "in": "path", "required": True, "schema": {"type": "integer"}},
            {"name": "legal_reason", "in": "query", "schema": {"type": "string"}},
        ],
        "responses": {
            **ok_response(200, "Erasure", "Erased (now or before)."),
            **problem_responses(400, 401, 403, 404, 410),
        },
    },
)
@operator("readings:erase", "reading.erase", body="optional")
async def _erase(request: web.Request, token: TokenRow) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    device_id, seq = request.match_info["device_id"], parse_seq(request.match_info["seq"])
    body = await json_body(request, optional=True)
    exact_fields(body, (), ("legal_reason",))
    legal = body.get("legal_reason", request.query.get("legal_reason", ""))
    if not isinstance(legal, str) or not legal.strip():
        raise BadRequest(
            "legal_reason is required (in the JSON body or the query)",
            reason=Reason.INVALID_PARAMETER,
        )
    if len(legal) > _MAX_LEGAL_REASON or "\x00" in legal:
        raise BadRequest(
            f"legal_reason must be at most {_MAX_LEGAL_REASON} characters",
            reason=Reason.INVALID_PARAMETER,
        )
    request[AUDIT_DETAIL] = {"legal_reason": legal}
    stone, now = await ops.erase_reading(
        ctx.store, device_id, seq, actor=token.name, legal_reason=legal, token_id=token.id
    )
    request[AUDIT_DETAIL] = {"legal_reason": legal, "erased_now": now}
    return web.json_response({"status": "erased", "erased_now": now, "tombstone": stone.to_dict()})


# --------------------------------------------------------------------------------------------
# Anchoring


@ROUTES.post(
    "/v1/anchors/run",
    {
        "tags": ["operator"],
        "operationId": "runAnchoring",
        "summary": "Run one anchoring step now (scope anchors:run)",
        "security": security("anchors:run"),
        "responses": {
            **ok_response(202, "AnchorRun", "The step's result per backend."),
            **problem_responses(401, 403, 409),
        },
    },
)
@operator("anchors:run", "anchors.run")
async def _anchor_run(request: web.Request, token: TokenRow) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    chains = [c for c in ctx.settings.chains if c.contract]
    if not chains:
        request[AUDIT_OUTCOME] = Reason.ANCHORING_UNCONFIGURED
        return problem(
            503, Reason.ANCHORING_UNCONFIGURED, "no anchoring chain with a contract is configured"
        )
    backends = [build_backend(c) for c in chains]
    async with ops.anchor_lock_nowait(ctx.store) as held:
        if not held:
            raise StoreError(
                "the anchoring job is running (it holds the anchoring lock); it will anchor "
                "the newest checkpoint itself",
                reason=Reason.CONFLICT,
            )
        results = await asyncio.wait_for(
            AnchorJob(
                store=ctx.store,
                backends=backends,
                reorg_window_blocks=ctx.settings.anchor_reorg_window_blocks,
            ).step(),
            ANCHOR_STEP_TIMEOUT_S,
        )
    doc = [
        {
            "backend": r.backend,
            "outcome": r.outcome,
            "log_size": r.log_size,
            "tx_hash": r.tx_hash,
            "detail": r.detail,
        }
        for r in results
    ]
    request[AUDIT_DETAIL] = {"results": doc}
    return web.json_response({"results": doc}, status=202)


# --------------------------------------------------------------------------------------------
# Audit log and metrics


@ROUTES.get(
    "/v1/audit",
    {
        "tags": ["operator"],
        "operationId": "listAudit",
        "summary": "The audit log, oldest first (scope audit:read)",
        "security": security("audit:read"),
        "parameters": [
            {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0}},
            {
                "name": "limit",
                "in": "query",
                "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
            },
        ],
        "responses": {
            **ok_response(200, "AuditPage", "One page."),
            **problem_responses(400, 401, 403),
        },
    },
)
@operator("audit:read")
async def _audit_log(request: web.Request, token: TokenRow) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    after = int_query(request, "after", 0, 0, (1 << 63) - 1)
    limit = int_query(request, "limit", 100, 1, 1000)
    entries = await ops.list_audit(ctx.store, after=after, limit=limit)
    return web.json_response(
        {
            "entries": [e.to_dict() for e in entries],
            "next": entries[-1].id if len(entries) == limit else None,
        }
    )


@ROUTES.get(
    "/metrics",
    {
        "tags": ["operator"],
        "operationId": "metrics",
        "summary": "Prometheus metrics, text format 0.0.4 (scope metrics:read)",
        "security": security("metrics:read"),
        "responses": {
            "200": {
                "description": "The exposition.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            **problem_responses(401, 403),
        },
    },
)
@operator("metrics:read")
async def _metrics(request: web.Request, token: TokenRow) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    registry = await collect(
        ctx.store,
        request.app[METRICS],
        backends=[c.name for c in ctx.settings.chains],
    )
    return web.Response(
        body=render(registry).encode("utf-8"), headers={"Content-Type": CONTENT_TYPE}
    )


@web.middleware
async def _observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    # The status the client gets: _errors (the outer middleware) turns an AnchorError into a
    # problem with status_for(reason), an HTTPException into its own status, anything else
    # into 500; a cancelled request (the client went away) gets none.
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except AnchorError as exc:
        status = status_for(exc.reason)
        raise
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = CLIENT_CLOSED
        raise
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        request.app[METRICS].observe_request(
            route, time.perf_counter() - started, method=request.method, status=status
        )


def add_routes(app: web.Application) -> None:
    """Register the operator routes, the metrics state and its latency middleware."""
    app[METRICS] = MetricsState()
    app.middlewares.append(_observe)
    ROUTES.add_to(app)
