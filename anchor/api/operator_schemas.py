"""The OpenAPI declarations of the operator routes: their components (the bearer-token security
scheme and the device, erasure, anchoring and audit schemas) and the response, parameter and
security builders their operations share.

The operations themselves are declared next to their handlers (:mod:`anchor.api.operator`,
:mod:`anchor.api.operator_devices`, :mod:`anchor.api.operator_quarantine`).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DEVICE_ID_PARAM",
    "JSON_OBJECT_BODY",
    "JWK_REF",
    "OPERATOR_COMPONENTS",
    "ok_response",
    "problem_responses",
    "security",
]


def problem_responses(*statuses: int) -> dict[str, Any]:
    """Problem-document responses for ``statuses``, 500 and 503."""
    return {
        str(s): {
            "description": "Problem Details (RFC 9457) with a reason code",
            "content": {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
            },
        }
        for s in (*statuses, 500, 503)
    }


def ok_response(status: int, schema: str, description: str) -> dict[str, Any]:
    """A JSON response of component ``schema`` under ``status``."""
    return {
        str(status): {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
        }
    }


def security(scope: str) -> list[dict[str, list[str]]]:
    """The operation's security requirement: a bearer token with ``scope``."""
    return [{"bearerToken": [scope]}]


DEVICE_ID_PARAM = {
    "name": "device_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
}
_TIME = {"type": ["string", "null"], "format": "date-time"}
JWK_REF = {"$ref": "#/components/schemas/Jwk"}

OPERATOR_COMPONENTS: dict[str, dict[str, Any]] = {
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
                "public_key_jwk": {"oneOf": [JWK_REF, {"type": "null"}]},
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
                "mqtt_login_active": {
                    "type": "boolean",
                    "description": "in the registration answer only, with device logins: true "
                    "when the broker confirmed the login before the answer (it works at once)",
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
                    "description": "`erased_at`, `erased_by` and `legal_reason` are named and "
                    "written as in the erased reading's receipt (`erasure`).",
                    "required": [
                        "device_id",
                        "seq",
                        "leaf_hash",
                        "erased_at",
                        "erased_by",
                        "actor",
                    ],
                    "properties": {
                        "device_id": {"type": "string"},
                        "seq": {"type": "integer"},
                        "leaf_hash": {"type": "string"},
                        "erased_at": {
                            "type": "string",
                            "format": "date-time",
                            "description": "RFC 3339 UTC to the second, as in receipts",
                        },
                        "erased_by": {"type": "string", "description": "the token's name"},
                        "actor": {
                            "type": "string",
                            "description": "the same as `erased_by` (its first name, kept)",
                        },
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
        "QuarantineRow": {
            "type": "object",
            "required": ["id", "received_at", "topic", "device_id", "seq", "reason", "detail"],
            "properties": {
                "id": {"type": "integer"},
                "received_at": {"type": "string", "format": "date-time"},
                "topic": {"type": "string"},
                "device_id": {
                    "type": ["string", "null"],
                    "description": "as the message claimed it (unverified)",
                },
                "seq": {"type": ["integer", "null"]},
                "reason": {"type": "string", "description": "a reason code (listed at /problems)"},
                "detail": {"type": "string"},
                "raw_size": {"type": "integer"},
                "raw_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                "ingestor": {"type": "string"},
            },
        },
        "QuarantinePage": {
            "type": "object",
            "required": ["rows", "next"],
            "properties": {
                "rows": {
                    "type": "array",
                    "items": {"$ref": "#/components/schemas/QuarantineRow"},
                },
                "next": {
                    "type": ["integer", "null"],
                    "description": "the `after` of the next page",
                },
            },
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
"""The ``components`` (``securitySchemes`` and ``schemas``) the operator operations refer to."""

JSON_OBJECT_BODY = {"content": {"application/json": {"schema": {"type": "object"}}}}
