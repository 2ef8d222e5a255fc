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
* ``GET /metrics`` (``metrics:read``): Prometheus text format 0.0.4 (see :mod:`anchor.api.metrics`).

Public (no token; a device's public key is public information, and a city app needs it to
verify signatures): ``GET /v1/devices?district=&status=&after=&limit=`` (cursor: the last
device id of the previous page, ``next`` in the answer) and ``GET /v1/devices/{id}``.

A device record is :func:`anchor.store.device_json.device_json`, the shape the CLI prints too:
``device_id``, ``district``, ``kind``, ``status``, ``registered_at``, ``revoked_at``,
``revoke_reason``, ``kid`` (hex of the 32-byte RFC 7638 thumbprint of the current key),
``kid_b64url`` (the same bytes as in envelope headers), ``public_key_jwk`` (the current key)
and ``keys`` (the whole key history).
``mqtt_username`` (= device_id) and ``mqtt_password`` are in the registration answer, and only
there, when the broker requires device logins (setting ``mqtt_device_logins``, on under
``cityanchor up``); otherwise they are absent.

Errors are problem documents (RFC 9457) with a ``reason``: ``unauthorized`` (401: no token, a
malformed, unknown, wrong or revoked token; with ``WWW-Authenticate: Bearer``), ``forbidden``
(403: the token lacks the scope), ``body_malformed`` (400: body not a UTF-8 JSON object,
duplicate keys, fields missing, unknown or of the wrong type), ``invalid_parameter`` (400: a
query or path parameter out of range), ``key_invalid`` (400: the JWK), ``device_id_invalid``
(400), ``device_id_reserved`` (400: registering ``.``, ``..``, ``-...`` or ``cityanchor...``,
see :mod:`anchor.device_id`), ``conflict`` (409: device or key already registered, device
already revoked, anchoring job busy), ``not_found`` (404), ``anchoring_unconfigured`` (503: no
chain configured).

Erasure (PIPL / GDPR): ``DELETE /v1/readings/{device_id}/{seq}`` sets the stored envelope to
NULL (its bytes and so its values are gone) and records a tombstone (who, when, legal reason);
the leaf hash, the batch and every proof stay, so every other receipt still verifies, and the
erased reading's receipt says ``"status": "erased"`` with an ``erasure`` object. Idempotent:
the answer is 200 ``{"status": "erased", "erased_now": bool, "tombstone": {...}}``, with the
first tombstone again (``erased_now`` false) on a repeat.

Audit log: every request to a changing endpoint (POST/DELETE above) is recorded, whatever its
outcome (including 401 and 403), with the actor (token name, or ``anonymous``), token id,
action, target, outcome (``ok`` or the reason code), HTTP status, remote address and details.
Reading it needs ``audit:read``, not ``metrics:read``: it names people and legal reasons.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from anchor.anchoring.backend import build_backend
from anchor.anchoring.job import AnchorJob
from anchor.api import tokens
from anchor.api.context import CONTEXT, MAX_BODY_DEPTH, Handler, problem, status_for
from anchor.api.metrics import CONTENT_TYPE, MetricsState, collect, render
from anchor.api.spec import RouteTable
from anchor.api.tokens import TokenError
from anchor.broker.logins import ADMIN_USER, BrokerAdmin, issue_device_login, revoke_device_login
from anchor.device_id import DEVICE_ID_RE
from anchor.errors import AnchorError, Reason
from anchor.keys import PublicKey
from anchor.store import StoreError
from anchor.store import operator as ops
from anchor.store.device_json import device_json
from anchor.store.operator import TokenRow
from anchor.wire import JsonRejected, strict_loads

if TYPE_CHECKING:
    from anchor.broker.logins import BrokerAdmin
    from anchor.host.config import Settings

__all__ = ["METRICS", "ROUTES", "add_routes", "device_json"]

log = logging.getLogger("anchor.api.app")

METRICS: web.AppKey[MetricsState] = web.AppKey("metrics", MetricsState)
# Per-request notes for the audit entry (what the handler learnt, how it refused).
AUDIT_DETAIL: web.RequestKey[dict[str, Any]] = web.RequestKey("audit_detail", dict)
AUDIT_OUTCOME: web.RequestKey[str] = web.RequestKey("audit_outcome", str)
# The request's JSON body, parsed once (bounded) for the handler and the audit target alike.
_BODY: web.RequestKey[dict[str, Any]] = web.RequestKey("json_body", dict)
ANCHOR_STEP_TIMEOUT_S = 90.0
_DEVICE_FIELDS = ("device_id", "public_key_jwk", "district", "kind")
_MAX_TEXT = 256
_STATUS = re.compile(r"active|revoked")
_DEVICE_ID = DEVICE_ID_RE  # the one rule: anchor.device_id
# Any text a district can hold, without control characters (PostgreSQL text has no NUL).
_DISTRICT = re.compile(r"[^\x00-\x1f\x7f]{0,256}")
_MAX_LEGAL_REASON = 1000
OperatorHandler = Callable[[web.Request, TokenRow], Awaitable[web.StreamResponse]]


class BadRequest(AnchorError):
    """A request body the endpoint cannot act on (``body_malformed``, 400), or a query or path
    parameter out of its range (``invalid_parameter``, 400): the codes ``anchor.api.public``
    uses too."""

    reason = Reason.BODY_MALFORMED


# --------------------------------------------------------------------------------------------
# Representations


# The one device shape, shared with the CLI: anchor.store.device_json.


# --------------------------------------------------------------------------------------------
# The description (OpenAPI) of these routes


def _problems(*statuses: int) -> dict[str, Any]:
    return {
        str(s): {
            "description": "Problem Details (RFC 9457) with a reason code",
            "content": {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
            },
        }
        for s in (*statuses, 500, 503)
    }


def _ok(status: int, schema: str, description: str) -> dict[str, Any]:
    return {
        str(status): {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
        }
    }


def _scoped(scope: str) -> list[dict[str, list[str]]]:
    return [{"bearerToken": [scope]}]


_DEVICE_ID_PARAM = {
    "name": "device_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
}
_TIME = {"type": ["string", "null"], "format": "date-time"}
_JWK = {"$ref": "#/components/schemas/Jwk"}

ROUTES = RouteTable(
    components={
        "securitySchemes": {
            "bearerToken": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "ca_<id>_<base64url secret>",
                "description": "Created with `cityanchor token create --name N --scope S`. Scopes: "
                "devices:write, readings:erase, anchors:run, metrics:read, audit:read. Missing, "
                "wrong or revoked: 401 `unauthorized`; without the scope: 403 `forbidden`.",
            }
        },
        "schemas": {
            "Device": {
                "type": "object",
                "required": [
                    "device_id",
                    "district",
                    "kind",
                    "status",
                    "kid",
                    "kid_b64url",
                    "keys",
                ],
                "properties": {
                    "device_id": {"type": "string"},
                    "district": {"type": "string"},
                    "kind": {"type": "string"},
                    "status": {"enum": ["active", "revoked"]},
                    "registered_at": _TIME,
                    "revoked_at": _TIME,
                    "revoke_reason": {"type": ["string", "null"]},
                    "kid": {
                        "type": ["string", "null"],
                        "pattern": "^[0-9a-f]{64}$",
                        "description": "hex of the RFC 7638 SHA-256 thumbprint of the current key",
                    },
                    "kid_b64url": {"type": ["string", "null"]},
                    "public_key_jwk": {"oneOf": [_JWK, {"type": "null"}]},
                    "keys": {"type": "array", "items": {"type": "object"}},
                    "mqtt_username": {
                        "type": "string",
                        "description": "in the registration answer only, when the broker requires "
                        "device logins: the device id",
                    },
                    "mqtt_password": {
                        "type": "string",
                        "description": "in the registration answer only, when the broker requires "
                        "device logins; shown once",
                    },
                },
            },
            "DevicePage": {
                "type": "object",
                "required": ["devices", "next"],
                "properties": {
                    "devices": {"type": "array", "items": {"$ref": "#/components/schemas/Device"}},
                    "next": {
                        "type": ["string", "null"],
                        "description": "the `after` of the next page",
                    },
                },
            },
            "Erasure": {
                "type": "object",
                "required": ["status", "erased_now", "tombstone"],
                "properties": {
                    "status": {"const": "erased"},
                    "erased_now": {"type": "boolean", "description": "false on a repeated DELETE"},
                    "tombstone": {
                        "type": "object",
                        "required": ["device_id", "seq", "leaf_hash", "erased_at", "actor"],
                        "properties": {
                            "device_id": {"type": "string"},
                            "seq": {"type": "integer"},
                            "leaf_hash": {"type": "string"},
                            "erased_at": {"type": "string", "format": "date-time"},
                            "actor": {"type": "string"},
                            "legal_reason": {"type": "string"},
                        },
                    },
                },
            },
            "AnchorRun": {
                "type": "object",
                "required": ["results"],
                "properties": {"results": {"type": "array", "items": {"type": "object"}}},
            },
            "AuditPage": {
                "type": "object",
                "required": ["entries", "next"],
                "properties": {
                    "entries": {"type": "array", "items": {"type": "object"}},
                    "next": {"type": ["integer", "null"]},
                },
            },
        },
    }
)
"""The operator routes and the public device reads, each with its OpenAPI operation."""

_JSON_BODY = {"content": {"application/json": {"schema": {"type": "object"}}}}

# --------------------------------------------------------------------------------------------
# Request helpers


async def _json_object(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    """The body as a JSON object, parsed once per request; ``body_malformed`` otherwise.

    Parsed by :func:`anchor.wire.strict_loads`: nesting bounded before ``json.loads`` sees the
    bytes (in a process that imported web3 deep input would overflow the C stack, not raise),
    no duplicate keys, no NaN.
    """
    cached: dict[str, Any] | None = request.get(_BODY)
    if cached is not None:
        return cached
    raw = await request.read()
    if not raw.strip():
        if optional:
            request[_BODY] = {}
            return {}
        raise BadRequest("the request needs a JSON object body")
    try:
        body = strict_loads(raw, max_depth=MAX_BODY_DEPTH)
    except JsonRejected as exc:
        raise BadRequest(f"the body is not strict JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"the body must be a JSON object, not {type(body).__name__}")
    request[_BODY] = body
    return body


def _exact_fields(
    body: Mapping[str, Any], required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> None:
    missing = [k for k in required if k not in body]
    extra = [k for k in body if k not in required and k not in optional]
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(missing))
        if extra:
            parts.append("unknown " + ", ".join(repr(k)[:40] for k in extra[:5]))
        raise BadRequest(f"{'; '.join(parts)} (expected exactly {', '.join(required + optional)})")


def _text_field(body: Mapping[str, Any], name: str, limit: int = _MAX_TEXT) -> str:
    value = body.get(name, "")
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string")
    if len(value) > limit or "\x00" in value:
        raise BadRequest(f"{name} must be at most {limit} characters, without NUL")
    return value


def _jwk(value: object) -> PublicKey:
    if not isinstance(value, dict):
        raise AnchorError("public_key_jwk must be a JWK object", reason=Reason.KEY_INVALID)
    return PublicKey.from_jwk(value)  # KeyMaterialError: key_invalid


def _int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    if not text.isdecimal() or len(text) > 19 or not low <= int(text) <= high:
        raise BadRequest(
            f"{name} must be a decimal integer in [{low}, {high}]", reason=Reason.INVALID_PARAMETER
        )
    return int(text)


def _seq(text: str) -> int:
    if not text.isdecimal() or len(text) > 19 or not 1 <= int(text) < 1 << 63:
        raise BadRequest(
            f"seq {text[:24]!r} is not a decimal integer in [1, 2^63-1]",
            reason=Reason.INVALID_PARAMETER,
        )
    return int(text)


# --------------------------------------------------------------------------------------------
# Authentication, authorisation and the audit log


def _target(request: web.Request) -> str:
    info = request.match_info
    if "seq" in info:
        return f"reading:{info.get('device_id', '')}/{info['seq']}"
    if "device_id" in info:
        return f"device:{info['device_id']}"
    if request.path == "/v1/devices" and request.method == "POST":
        # A refused registration is audited under the device it named, when it named one. The
        # body was parsed (bounded) before authentication; it is never parsed again here.
        device_id = request.get(_BODY, {}).get("device_id")
        if isinstance(device_id, str):
            return f"device:{device_id[:64]}"
    return ""


def _refusal(exc: AnchorError, scope: str) -> web.Response:
    status = status_for(exc.reason)
    resp = problem(status, exc.reason, exc.detail)
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="cityanchor", error="invalid_token"'
    elif status == 403:
        resp.headers["WWW-Authenticate"] = (
            f'Bearer realm="cityanchor", error="insufficient_scope", scope="{scope}"'
        )
    return resp


def operator(
    scope: str, action: str | None = None, *, body: str | None = None
) -> Callable[[OperatorHandler], Handler]:
    """Wrap a handler: authenticate the bearer token, require ``scope``, and when ``action``
    is given (a changing endpoint) record the request in the audit log, whatever its outcome.

    ``body`` (``"json"``, or ``"optional"`` when an empty body is allowed) makes the wrapper
    parse the JSON object body *before* the token is looked at: a malformed body (not UTF-8
    JSON, too deep, duplicate keys) is ``body_malformed`` (400) whoever sends it, and is
    audited like any other refusal; the handler and the audit target reuse the parsed object.
    """

    def wrap(handler: OperatorHandler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            ctx = request.app[CONTEXT]
            metrics = request.app[METRICS]
            token: TokenRow | None = None
            status, outcome = 500, str(Reason.INTERNAL)  # outcome: "ok", a code or "http_error"
            try:
                # The body is judged first, whoever sends it; the token is still looked at, so
                # that the audit entry names the sender when it can.
                malformed: AnchorError | web.HTTPException | None = None
                if body is not None:
                    try:
                        await _json_object(request, optional=body == "optional")
                    except (AnchorError, web.HTTPException) as exc:  # 413: over the size limit
                        malformed = exc
                try:
                    text = tokens.bearer(request.headers.get("Authorization"))
                    token = await tokens.authenticate(ctx.store, text)
                    tokens.require_scope(token, scope)
                except TokenError as exc:
                    metrics.auth_failed(exc.failure)
                    if malformed is None:
                        status, outcome = status_for(exc.reason), exc.reason
                        return _refusal(exc, scope)
                if isinstance(malformed, AnchorError):
                    status, outcome = status_for(malformed.reason), malformed.reason
                    raise malformed
                if malformed is not None:
                    status = malformed.status
                    outcome = Reason.TOO_LARGE if status == 413 else "http_error"
                    raise malformed
                assert token is not None  # a token refusal without a body fault returned above
                try:
                    response = await handler(request, token)
                except AnchorError as exc:
                    status, outcome = status_for(exc.reason), exc.reason
                    raise
                except web.HTTPException as exc:
                    status, outcome = exc.status, "http_error"
                    raise
                status = response.status
                outcome = "ok" if status < 400 else request.get(AUDIT_OUTCOME, "error")
                return response
            finally:
                if action is not None:
                    await _audit(request, token, action, status, outcome)

        guarded.__name__ = handler.__name__
        return guarded

    return wrap


async def _audit(
    request: web.Request, token: TokenRow | None, action: str, status: int, outcome: str
) -> None:
    ctx = request.app[CONTEXT]
    target = _target(request)
    try:
        await ops.record_audit(
            ctx.store,
            actor=token.name if token is not None else "anonymous",
            token_id=token.id if token is not None else None,
            action=action,
            target=target,
            outcome=outcome,
            status=status,
            detail=request.get(AUDIT_DETAIL) or {},
            remote_addr=request.remote,
        )
    except AnchorError as exc:
        # The action itself is done (or refused); losing its audit entry is logged loudly.
        log.error("audit entry for %s %s lost: %s", action, target, exc)


# --------------------------------------------------------------------------------------------
# Devices


@ROUTES.post(
    "/v1/devices",
    {
        "tags": ["operator"],
        "operationId": "registerDevice",
        "summary": "Register a device (scope devices:write)",
        "description": "A reserved device id (`.`, `..`, starting with `-` or with "
        "`cityanchor`) is refused with 400 `device_id_reserved`. With broker logins on, the "
        "answer carries `mqtt_username` (= device_id, also the only client id the broker "
        "accepts for it) and `mqtt_password`, already accepted by the broker.",
        "security": _scoped("devices:write"),
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": list(_DEVICE_FIELDS),
                        "additionalProperties": False,
                        "properties": {
                            "device_id": {"type": "string"},
                            "public_key_jwk": _JWK,
                            "district": {"type": "string"},
                            "kind": {"type": "string"},
                        },
                    }
                }
            },
        },
        "responses": {
            **_ok(201, "Device", "Registered."),
            **_problems(400, 401, 403, 409, 413),
        },
    },
)
@operator("devices:write", "device.register", body="json")
async def _register(request: web.Request, token: TokenRow) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    body = await _json_object(request)
    _exact_fields(body, _DEVICE_FIELDS)
    device_id = body["device_id"]
    if not isinstance(device_id, str):
        raise StoreError("device_id must be a string", reason=Reason.DEVICE_ID_INVALID)
    district, kind = _text_field(body, "district"), _text_field(body, "kind")
    key = _jwk(body["public_key_jwk"])
    request[AUDIT_DETAIL] = {"district": district, "kind": kind, "kid": key.kid.hex()}
    record = await ctx.store.register_device(device_id, key, district=district, kind=kind)
    answer = device_json(record)
    if ctx.settings.mqtt_device_logins:
        # The only time the password exists in clear: the registry stores its hash, and with
        # an admin login the broker has the login before this answer leaves.
        answer.update(
            await issue_device_login(
                ctx.store, device_id, district=district, admin=_broker_admin(ctx.settings)
            )
        )
    return web.json_response(answer, status=201, headers={"Location": f"/v1/devices/{device_id}"})


def _broker_admin(settings: Settings) -> BrokerAdmin | None:
    if not settings.mqtt_admin_password:
        return None
    return BrokerAdmin(
        settings.mqtt_url, settings.mqtt_admin_username or ADMIN_USER, settings.mqtt_admin_password
    )


@ROUTES.post(
    "/v1/devices/{device_id}/rotate",
    {
        "tags": ["operator"],
        "operationId": "rotateDeviceKey",
        "summary": "Replace a device's key (scope devices:write); body {public_key_jwk}",
        "security": _scoped("devices:write"),
        "parameters": [_DEVICE_ID_PARAM],
        "requestBody": {"required": True, **_JSON_BODY},
        "responses": {
            **_ok(200, "Device", "Rotated."),
            **_problems(400, 401, 403, 404, 409),
        },
    },
)
@operator("devices:write", "device.rotate", body="json")
async def _rotate(request: web.Request, token: TokenRow) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    body = await _json_object(request)
    _exact_fields(body, ("public_key_jwk",))
    key = _jwk(body["public_key_jwk"])
    request[AUDIT_DETAIL] = {"kid": key.kid.hex()}
    record = await ctx.store.rotate_device_key(request.match_info["device_id"], key)
    return web.json_response(device_json(record))


@ROUTES.post(
    "/v1/devices/{device_id}/revoke",
    {
        "tags": ["operator"],
        "operationId": "revokeDevice",
        "summary": "Revoke a device (scope devices:write); optional body {reason}",
        "security": _scoped("devices:write"),
        "parameters": [_DEVICE_ID_PARAM],
        "requestBody": {"required": False, **_JSON_BODY},
        "responses": {
            **_ok(200, "Device", "Revoked."),
            **_problems(400, 401, 403, 404, 409),
        },
    },
)
@operator("devices:write", "device.revoke", body="optional")
async def _revoke(request: web.Request, token: TokenRow) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    body = await _json_object(request, optional=True)
    _exact_fields(body, (), ("reason",))
    reason = _text_field(body, "reason", 1024)
    request[AUDIT_DETAIL] = {"reason": reason}
    record = await ctx.store.revoke_device(request.match_info["device_id"], reason=reason)
    admin = _broker_admin(ctx.settings) if ctx.settings.mqtt_device_logins else None
    if admin is not None:
        # Its login goes at once (and its connection with it), not at the next reconcile.
        await revoke_device_login(admin, record.device_id)
    return web.json_response(device_json(record))


def _text_query(request: web.Request, name: str, pattern: re.Pattern[str]) -> str | None:
    value = request.query.get(name)
    if value is not None and pattern.fullmatch(value) is None:
        raise BadRequest(f"{name} must match {pattern.pattern}", reason=Reason.INVALID_PARAMETER)
    return value


@ROUTES.get(
    "/v1/devices",
    {
        "tags": ["operator"],
        "operationId": "listDevices",
        "summary": "List devices (public: device keys are public information)",
        "parameters": [
            {
                "name": "district",
                "in": "query",
                "schema": {"type": "string", "pattern": "^[^\\x00-\\x1f\\x7f]{0,256}$"},
            },
            {"name": "status", "in": "query", "schema": {"enum": ["active", "revoked"]}},
            {
                "name": "after",
                "in": "query",
                "description": "the last device id of the previous page (`next`)",
                "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
            },
            {
                "name": "limit",
                "in": "query",
                "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
            },
        ],
        "responses": {**_ok(200, "DevicePage", "One page."), **_problems(400)},
    },
)
async def _list_devices(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    status = _text_query(request, "status", _STATUS)
    district = _text_query(request, "district", _DISTRICT)
    after = _text_query(request, "after", _DEVICE_ID)
    limit = _int_query(request, "limit", 100, 1, 1000)
    records = await ctx.store.list_devices(
        district=district, status=status, after=after, limit=limit
    )
    return web.json_response(
        {
            "devices": [device_json(r) for r in records],
            "next": records[-1].device_id if len(records) == limit else None,
        }
    )


@ROUTES.get(
    "/v1/devices/{device_id}",
    {
        "tags": ["operator"],
        "operationId": "getDevice",
        "summary": "A device and its key history (public)",
        "parameters": [_DEVICE_ID_PARAM],
        "responses": {**_ok(200, "Device", "The device."), **_problems(400, 404)},
    },
)
async def _get_device(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    record = await ctx.store.get_device(request.match_info["device_id"])
    return web.json_response(device_json(record))


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
        "false, the first tombstone).",
        "security": _scoped("readings:erase"),
        "parameters": [
            _DEVICE_ID_PARAM,
            {"name": "seq", "in": "path", "required": True, "schema": {"type": "integer"}},
            {"name": "legal_reason", "in": "query", "schema": {"type": "string"}},
        ],
        "responses": {
            **_ok(200, "Erasure", "Erased (now or before)."),
            **_problems(400, 401, 403, 404),
        },
    },
)
@operator("readings:erase", "reading.erase", body="optional")
async def _erase(request: web.Request, token: TokenRow) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    device_id, seq = request.match_info["device_id"], _seq(request.match_info["seq"])
    body = await _json_object(request, optional=True)
    _exact_fields(body, (), ("legal_reason",))
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
        "security": _scoped("anchors:run"),
        "responses": {
            **_ok(202, "AnchorRun", "The step's result per backend."),
            **_problems(401, 403, 409),
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
        "security": _scoped("audit:read"),
        "parameters": [
            {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0}},
            {
                "name": "limit",
                "in": "query",
                "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
            },
        ],
        "responses": {**_ok(200, "AuditPage", "One page."), **_problems(400, 401, 403)},
    },
)
@operator("audit:read")
async def _audit_log(request: web.Request, token: TokenRow) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    after = _int_query(request, "after", 0, 0, (1 << 63) - 1)
    limit = _int_query(request, "limit", 100, 1, 1000)
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
        "security": _scoped("metrics:read"),
        "responses": {
            "200": {
                "description": "The exposition.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            **_problems(401, 403),
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
    try:
        return await handler(request)
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        request.app[METRICS].observe_request(route, time.perf_counter() - started)


def add_routes(app: web.Application) -> None:
    """Register the operator routes, the metrics state and its latency middleware."""
    app[METRICS] = MetricsState()
    app.middlewares.append(_observe)
    ROUTES.add_to(app)
