"""The device registry routes: register, rotate a key, revoke (bearer token, scope
``devices:write``, audited), and the public reads of the registry (list, one device).

Declared on :data:`ROUTES`, which :mod:`anchor.api.operator` takes into the operator route table.
"""

from __future__ import annotations

import re

from aiohttp import web

from anchor.api.context import CONTEXT
from anchor.api.operator_guard import AUDIT_DETAIL, operator
from anchor.api.operator_requests import (
    exact_fields,
    int_query,
    json_body,
    parse_jwk,
    text_field,
    text_query,
)
from anchor.api.operator_schemas import (
    DEVICE_ID_PARAM,
    JSON_OBJECT_BODY,
    JWK_REF,
    ok_response,
    problem_responses,
    security,
)
from anchor.api.spec import RouteTable
from anchor.broker.enrol import broker_admin, register_device
from anchor.broker.logins import revoke_device_login
from anchor.device_id import DEVICE_ID_RE
from anchor.errors import Reason
from anchor.keys import b64url_encode
from anchor.store import StoreError
from anchor.store.device_json import device_json
from anchor.store.operator import TokenRow

__all__ = ["ROUTES"]

ROUTES = RouteTable()
"""The device routes, each with its OpenAPI operation."""

_DEVICE_FIELDS = ("device_id", "public_key_jwk", "district", "kind")
_STATUS = re.compile(r"active|revoked")
_DEVICE_ID = DEVICE_ID_RE  # the one rule: anchor.device_id
# Any text a district can hold, without control characters (PostgreSQL text has no NUL).
_DISTRICT = re.compile(r"[^\x00-\x1f\x7f]{0,256}")


@ROUTES.post(
    "/v1/devices",
    {
        "tags": ["operator"],
        "operationId": "registerDevice",
        "summary": "Register a device (scope devices:write)",
        "description": "A reserved device id (`.`, `..`, starting with `-` or with "
        "`cityanchor`) is refused with 400 `device_id_reserved`. With broker logins on, the "
        "answer carries `mqtt_username` (= device_id, also the only client id the broker "
        "accepts for it), `mqtt_password` and `mqtt_login_active`: true when the broker "
        "confirmed the login before this answer, so the device can connect at once.",
        "security": security("devices:write"),
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
                            "public_key_jwk": JWK_REF,
                            "district": {"type": "string"},
                            "kind": {"type": "string"},
                        },
                    }
                }
            },
        },
        "responses": {
            **ok_response(201, "Device", "Registered."),
            **problem_responses(400, 401, 403, 409, 413),
        },
    },
)
@operator("devices:write", "device.register", body="json")
async def _register(request: web.Request, token: TokenRow) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    body = await json_body(request)
    exact_fields(body, _DEVICE_FIELDS)
    device_id = body["device_id"]
    if not isinstance(device_id, str):
        raise StoreError("device_id must be a string", reason=Reason.DEVICE_ID_INVALID)
    district, kind = text_field(body, "district"), text_field(body, "kind")
    key = parse_jwk(body["public_key_jwk"])
    request[AUDIT_DETAIL] = {"district": district, "kind": kind, **_kid(key.kid)}
    # The one registration path, shared with `cityanchor device register` (anchor.broker.enrol).
    _, answer = await register_device(
        ctx.store, ctx.settings, device_id, key, district=district, kind=kind
    )
    return web.json_response(answer, status=201, headers={"Location": f"/v1/devices/{device_id}"})


def _kid(kid: bytes) -> dict[str, str]:
    # One shape for a kid: hex, with base64url (as envelope headers carry it) beside it.
    return {"kid": kid.hex(), "kid_b64url": b64url_encode(kid)}


@ROUTES.post(
    "/v1/devices/{device_id}/rotate",
    {
        "tags": ["operator"],
        "operationId": "rotateDeviceKey",
        "summary": "Replace a device's key (scope devices:write); body {public_key_jwk}",
        "security": security("devices:write"),
        "parameters": [DEVICE_ID_PARAM],
        "requestBody": {"required": True, **JSON_OBJECT_BODY},
        "responses": {
            **ok_response(200, "Device", "Rotated."),
            **problem_responses(400, 401, 403, 404, 409),
        },
    },
)
@operator("devices:write", "device.rotate", body="json")
async def _rotate(request: web.Request, token: TokenRow) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    body = await json_body(request)
    exact_fields(body, ("public_key_jwk",))
    key = parse_jwk(body["public_key_jwk"])
    request[AUDIT_DETAIL] = _kid(key.kid)
    record = await ctx.store.rotate_device_key(request.match_info["device_id"], key)
    return web.json_response(device_json(record))


@ROUTES.post(
    "/v1/devices/{device_id}/revoke",
    {
        "tags": ["operator"],
        "operationId": "revokeDevice",
        "summary": "Revoke a device (scope devices:write); optional body {reason}",
        "security": security("devices:write"),
        "parameters": [DEVICE_ID_PARAM],
        "requestBody": {"required": False, **JSON_OBJECT_BODY},
        "responses": {
            **ok_response(200, "Device", "Revoked."),
            **problem_responses(400, 401, 403, 404, 409),
        },
    },
)
@operator("devices:write", "device.revoke", body="optional")
async def _revoke(request: web.Request, token: TokenRow) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    body = await json_body(request, optional=True)
    exact_fields(body, (), ("reason",))
    reason = text_field(body, "reason", 1024)
    request[AUDIT_DETAIL] = {"reason": reason}
    record = await ctx.store.revoke_device(request.match_info["device_id"], reason=reason)
    admin = broker_admin(ctx.settings)
    if admin is not None:
        # Its login goes at once (and its connection with it), not at the next reconcile.
        await revoke_device_login(admin, record.device_id)
    return web.json_response(device_json(record))


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
        "responses": {**ok_response(200, "DevicePage", "One page."), **problem_responses(400)},
    },
)
async def _list_devices(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    status = text_query(request, "status", _STATUS)
    district = text_query(request, "district", _DISTRICT)
    after = text_query(request, "after", _DEVICE_ID)
    limit = int_query(request, "limit", 100, 1, 1000)
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
        "parameters": [DEVICE_ID_PARAM],
        "responses": {**ok_response(200, "Device", "The device."), **problem_responses(400, 404)},
    },
)
async def _get_device(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    record = await ctx.store.get_device(request.match_info["device_id"])
    return web.json_response(device_json(record))
