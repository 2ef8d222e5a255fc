"""Building blocks of the HTTP API's OpenAPI 3.1 description, and the table that declares each
route together with its operation.

A route module keeps a :class:`RouteTable` and declares every handler on it with the operation
that documents it (path, method, summary, parameters, request and response schemas), so the
router and the description come from one declaration and cannot drift apart.
:mod:`anchor.api.openapi` assembles the document from the tables; this module imports no route
module and no route module needs :mod:`anchor.api.openapi`.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

__all__ = [
    "B64URL_32",
    "CACHE_HEADER",
    "DEVICE_ID",
    "DOCS_PAGE",
    "ETAG_HEADER",
    "EXAMPLE_ANCHOR",
    "EXAMPLE_HASH",
    "EXAMPLE_NOTE",
    "METHODS",
    "OPENAPI_DOCUMENT",
    "REF",
    "SHARED_SCHEMAS",
    "UINT63",
    "Operation",
    "RouteTable",
    "errors",
    "hashes",
    "int_schema",
    "json_ok",
    "obj",
    "param",
    "ref",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Handler)

OPENAPI_DOCUMENT: web.AppKey[dict[str, Any]] = web.AppKey("openapi_document", dict)
"""The app's OpenAPI document, set when the app is assembled (``anchor.api.app.create_app``)."""
DOCS_PAGE: web.AppKey[str] = web.AppKey("docs_page", str)
"""The ``/docs`` page rendered from :data:`OPENAPI_DOCUMENT`."""

METHODS = ("get", "post", "put", "delete", "patch")


@dataclass(frozen=True, slots=True)
class Operation:
    """One route: method (lower case), path, handler and its OpenAPI operation object."""

    method: str
    path: str
    handler: Handler
    spec: Mapping[str, Any]


class RouteTable:
    """The routes of one module, each declared on its handler with its OpenAPI operation.

    ``components`` are the module's own ``components`` entries (e.g. ``{"schemas": {...}}``).
    """

    def __init__(self, components: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.components: Mapping[str, Mapping[str, Any]] = components or {}
        self.operations: list[Operation] = []

    def route(self, method: str, path: str, spec: Mapping[str, Any]) -> Callable[[H], H]:
        """Declare ``method path`` served by the decorated handler and documented by ``spec``."""
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}")

        def declare(handler: H) -> H:
            if any(o.method == method and o.path == path for o in self.operations):
                raise ValueError(f"{method.upper()} {path} declared twice")
            self.operations.append(Operation(method, path, handler, spec))
            return handler

        return declare

    def get(self, path: str, spec: Mapping[str, Any]) -> Callable[[H], H]:
        return self.route("get", path, spec)

    def post(self, path: str, spec: Mapping[str, Any]) -> Callable[[H], H]:
        return self.route("post", path, spec)

    def delete(self, path: str, spec: Mapping[str, Any]) -> Callable[[H], H]:
        return self.route("delete", path, spec)

    def include(self, *tables: RouteTable) -> None:
        """Declare here, in order, the operations of ``tables``: the handlers of one route group
        split into modules by resource, each on its own table without ``components`` (the
        group's table holds those). The same checks as :meth:`route` apply."""
        for table in tables:
            if table.components:
                raise ValueError("an included table declares no components of its own")
            for op in table.operations:
                self.route(op.method, op.path, op.spec)(op.handler)

    def add_to(self, app: web.Application) -> None:
        """Register every declared route on ``app`` (a GET also answers HEAD)."""
        for op in self.operations:
            if op.method == "get":
                app.router.add_get(op.path, op.handler)  # allow_head: HEAD as before
            else:
                app.router.add_route(op.method.upper(), op.path, op.handler)

    def paths(self) -> dict[str, dict[str, Any]]:
        """The OpenAPI ``paths`` entries of this table (fresh copies), in declaration order."""
        out: dict[str, dict[str, Any]] = {}
        for op in self.operations:
            out.setdefault(op.path, {})[op.method] = copy.deepcopy(dict(op.spec))
        return out


# --------------------------------------------------------------------------------------------
# Schema helpers

UINT63 = (1 << 63) - 1
REF = "#/components/schemas/"

EXAMPLE_HASH = "5d0b2bdc7f5e0c8f1e6c2cf7f8c4a3c3a7f1c9c2b1e5d3f6a8b9c0d1e2f3a4b5"
EXAMPLE_NOTE = (
    "cityanchor.example/log\n42\nXQsr3H9eDI8ebCz3+MSjw6fxycKx5dP2qLnA0eLzpLU=\n\n"
    "\u2014 cityanchor.example/log AbCdEf0123456789+exampleSignatureBase64==\n"
)
EXAMPLE_ANCHOR = {
    "chain_id": 31337,
    "contract": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
    "tx_hash": "0x" + "ab" * 32,
    "block_number": 17,
    "block_time": "2026-01-31T12:00:00Z",
}


B64URL_32 = {"type": "string", "pattern": "^[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$"}


def ref(name: str) -> dict[str, str]:
    return {"$ref": REF + name}


def int_schema(low: int, high: int = UINT63, **extra: Any) -> dict[str, Any]:
    return {"type": "integer", "minimum": low, "maximum": high, **extra}


def obj(required: list[str], props: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props, **extra}


def hashes(description: str) -> dict[str, Any]:
    return {"type": "array", "items": ref("Hash"), "description": description}


_PROBLEMS = {
    400: "Bad request: `device_id_invalid`, `device_id_reserved`, `invalid_parameter`, "
    "`range_too_large`, `body_malformed`, `key_invalid`.",
    404: "`not_found`: no such device, reading, batch or log size (or an empty log).",
    410: "`erased`: the reading's envelope is gone without an erasure tombstone (an erasure "
    "with a tombstone gives a 200 receipt with status `erased`).",
    413: "`too_large`: the request body is over 1 MiB.",
    500: "`internal`, `db_error`, `log_inconsistent`: a server fault (no stack trace).",
    503: "`db_unavailable`, `db_busy`: retry later.",
}
_PROBLEM_EXAMPLES = {
    400: "invalid_parameter",
    404: "not_found",
    410: "erased",
    413: "too_large",
    500: "internal",
    503: "db_unavailable",
}


def _problem(status: int) -> dict[str, Any]:
    reason = _PROBLEM_EXAMPLES[status]
    return {
        "description": _PROBLEMS[status],
        "content": {
            "application/problem+json": {
                "schema": ref("Problem"),
                "example": {
                    "type": "/problems/" + reason,
                    "title": reason.replace("_", " "),
                    "status": status,
                    "detail": "what went wrong, for a human",
                    "reason": reason,
                },
            }
        },
    }


def errors(*statuses: int) -> dict[str, Any]:
    return {str(s): _problem(s) for s in (*statuses, 500, 503)}


def json_ok(schema: str, description: str, example: Any = None, **headers: Any) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": ref(schema)}
    if example is not None:
        media["example"] = example
    out: dict[str, Any] = {"description": description, "content": {"application/json": media}}
    if headers:
        out["headers"] = headers
    return out


CACHE_HEADER = {"schema": {"type": "string"}, "required": True, "description": "caching policy"}
ETAG_HEADER = {
    "schema": {"type": "string", "pattern": '^"[0-9a-f]+"$'},
    "required": True,
    "description": "strong validator: a hash of the body",
}


def param(
    name: str, where: str, schema: dict[str, Any], description: str, *, required: bool = False
) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": required or where == "path",
        "description": description,
        "schema": schema,
    }


DEVICE_ID = param(
    "device_id",
    "path",
    {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$", "examples": ["aq-0042"]},
    "registry id of the device (else 400 `device_id_invalid`)",
)


SHARED_SCHEMAS: dict[str, Any] = {
    "Hash": {
        "type": "string",
        "pattern": "^[0-9a-f]{64}$",
        "description": "32 bytes as 64 lowercase hex digits",
        "examples": [EXAMPLE_HASH],
    },
    "Problem": obj(
        ["type", "title", "status", "detail", "reason"],
        {
            "type": {
                "type": "string",
                "format": "uri-reference",
                "description": "the problem type, `/problems/{reason}`: a URI reference relative "
                "to this API, which serves the page documenting the type there",
            },
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {"type": "string", "description": "human-readable; may change"},
            "reason": {
                "type": "string",
                "pattern": "^[a-z0-9_]+$",
                "description": "stable machine-readable code (each listed at `/problems`); "
                "branch on this, never on detail",
            },
        },
        description="RFC 9457 Problem Details, with the cityanchor reason code.",
    ),
    "Jwk": {
        "description": "A device public key (RFC 7517 / RFC 8037): members are base64url "
        "without padding of 32 bytes; a P-256 point must be on the curve; a private member "
        "`d` is refused. Anything else is 400 `key_invalid`.",
        "oneOf": [
            obj(
                ["kty", "crv", "x"],
                {"kty": {"const": "OKP"}, "crv": {"const": "Ed25519"}, "x": B64URL_32},
                **{"not": {"required": ["d"]}},
            ),
            obj(
                ["kty", "crv", "x", "y"],
                {
                    "kty": {"const": "EC"},
                    "crv": {"const": "P-256"},
                    "x": B64URL_32,
                    "y": B64URL_32,
                },
                **{"not": {"required": ["d"]}},
            ),
        ],
    },
}
