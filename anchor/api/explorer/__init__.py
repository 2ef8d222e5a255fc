"""The proof explorer: a small static page, served by the API, that verifies a receipt in the
browser.

Routes (declared on :data:`ROUTES` with their OpenAPI operations, registered by
:func:`add_routes`, called from :func:`anchor.api.app.create_app`):

* ``GET /explorer`` the page (``static/index.html``); ``?device_id=D&seq=N`` looks a reading up
  on load;
* ``GET /explorer/static/{name}`` its script modules and style sheet (a fixed allow-list);
* ``GET /explorer/config.json`` what the page needs besides the public ``/v1`` endpoints: the
  chains it may ask about anchors (name, chain id, the chain's *public* JSON-RPC URL, setting
  ``public_rpc_url``, never the private ``rpc_url``, which may embed a gateway's project key),
  the operator's C2SP note verifier keys and the witnesses' keys.

Everything the page shows is checked by the page itself (``static/verify.js``: WebCrypto
SHA-256, Ed25519 and ECDSA P-256, the chain's JSON-RPC); this module only serves files. No build
step: the files are plain ES2020 modules, with no third-party code and nothing loaded from
elsewhere. The Content-Security-Policy allows scripts and styles from this origin only, and
network requests to this origin, the published chain endpoints, any https endpoint and a
loopback http one (a user may check anchors through a JSON-RPC endpoint of their own choice).
Keys and endpoints the user gives stay in their browser (``localStorage``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from anchor.api.context import CONTEXT
from anchor.api.spec import RouteTable, errors

__all__ = ["ROUTES", "STATIC_FILES", "add_routes", "explorer_config"]

STATIC_DIR = Path(__file__).resolve().parent / "static"

STATIC_FILES: dict[str, str] = {
    "explorer.js": "text/javascript",
    "verify.js": "text/javascript",
    "explain.js": "text/javascript",
    "explorer.css": "text/css",
}
"""The files under ``/explorer/static/`` and their media types; anything else is 404."""

ROUTES = RouteTable(
    components={
        "schemas": {
            "ExplorerConfig": {
                "type": "object",
                "required": [
                    "chains",
                    "operator_vkey",
                    "operator_vkeys",
                    "witness_vkeys",
                    "witness_quorum",
                ],
                "properties": {
                    "chains": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name", "chain_id", "rpc_url", "contract"],
                            "properties": {
                                "name": {"type": "string"},
                                "chain_id": {"type": "integer"},
                                "rpc_url": {
                                    "type": ["string", "null"],
                                    "description": "the chain's public JSON-RPC endpoint, "
                                    "for browsers (null: none published; the page asks the "
                                    "user for one)",
                                },
                                "contract": {"type": ["string", "null"]},
                            },
                        },
                    },
                    "operator_vkey": {
                        "type": ["string", "null"],
                        "description": "the current C2SP note verifier key",
                    },
                    "operator_vkeys": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "every key that still verifies checkpoints",
                    },
                    "witness_vkeys": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "cosignature verifier keys (C2SP tlog-cosignature, "
                        "type 0x04) of the witnesses this service asks to cosign checkpoints",
                    },
                    "witness_quorum": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "distinct witnesses that make a checkpoint witnessed "
                        "(0: no witness configured)",
                    },
                },
            }
        }
    }
)
"""The explorer's routes, each with its OpenAPI operation."""


def _page_operation(operation_id: str) -> dict[str, Any]:
    return {
        "tags": ["explorer"],
        "operationId": operation_id,
        "summary": "The proof explorer page (verifies a receipt in the browser)",
        "parameters": [
            {"name": "device_id", "in": "query", "schema": {"type": "string"}},
            {"name": "seq", "in": "query", "schema": {"type": "string"}},
        ],
        "responses": {
            "200": {
                "description": "The page.",
                "content": {"text/html": {"schema": {"type": "string"}}},
            }
        },
    }


_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def _origin(url: str) -> str | None:
    # A CSP source for the chain endpoint: scheme://host[:port] of an http(s) URL, else None.
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or "@" in parts.netloc:
        return None
    if any(c in parts.netloc for c in " ;,'\""):
        return None
    return f"{parts.scheme}://{parts.netloc}"


# A user's own JSON-RPC endpoint: any https one, or a node on their own machine.
_USER_RPC = ("https:", "http://127.0.0.1:*", "http://localhost:*")


def _csp(request: web.Request) -> str:
    chains = request.app[CONTEXT].settings.chains
    rpc = sorted({o for c in chains if (o := _origin(c.public_rpc_url)) is not None})
    return "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "connect-src " + " ".join(["'self'", *rpc, *_USER_RPC]),
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        )
    )


def explorer_config(request: web.Request) -> dict[str, Any]:
    """The body of ``/explorer/config.json``."""
    ctx = request.app[CONTEXT]
    vkeys = [v.vkey() for v in ctx.log_verifiers]
    return {
        "chains": [
            {
                "name": c.name,
                "chain_id": c.chain_id,
                # Never c.rpc_url: a gateway URL may embed a project key (issue 14 item 17).
                "rpc_url": c.public_rpc_url or None,
                "contract": c.contract,
            }
            for c in ctx.settings.chains
        ],
        # The first is the current key; the rest (rotated keys) still verify older notes.
        "operator_vkey": vkeys[0] if vkeys else None,
        "operator_vkeys": vkeys,
        # The witnesses this service asks for cosignatures, and its quorum (issue 13).
        "witness_vkeys": [w.vkey for w in ctx.settings.witnesses],
        "witness_quorum": ctx.settings.witness_quorum if ctx.settings.witnesses else 0,
    }


@ROUTES.get("/explorer/", _page_operation("explorerSlash"))
@ROUTES.get("/explorer", _page_operation("explorer"))
async def _page(request: web.Request) -> web.StreamResponse:
    body = (STATIC_DIR / "index.html").read_bytes()
    return web.Response(
        body=body,
        content_type="text/html",
        charset="utf-8",
        headers={
            **_SECURITY_HEADERS,
            "Content-Security-Policy": _csp(request),
            "Cache-Control": "no-cache",
        },
    )


@ROUTES.get(
    "/explorer/static/{name}",
    {
        "tags": ["explorer"],
        "operationId": "explorerStatic",
        "summary": "A script module or style sheet of the explorer",
        "parameters": [
            {
                "name": "name",
                "in": "path",
                "required": True,
                "schema": {"enum": sorted(STATIC_FILES)},
            }
        ],
        "responses": {
            "200": {
                "description": "The file.",
                "content": {
                    "text/javascript": {"schema": {"type": "string"}},
                    "text/css": {"schema": {"type": "string"}},
                },
            },
            **errors(404),
        },
    },
)
async def _static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    media_type = STATIC_FILES.get(name)
    if media_type is None:
        raise web.HTTPNotFound(reason=f"no explorer file {name[:40]!r}")
    return web.Response(
        body=(STATIC_DIR / name).read_bytes(),
        content_type=media_type,
        charset="utf-8",
        headers={**_SECURITY_HEADERS, "Cache-Control": "no-cache"},
    )


@ROUTES.get(
    "/explorer/config.json",
    {
        "tags": ["explorer"],
        "operationId": "explorerConfig",
        "summary": "Chains and operator keys the explorer page checks against",
        "responses": {
            "200": {
                "description": "The configuration.",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ExplorerConfig"}}
                },
            }
        },
    },
)
async def _config(request: web.Request) -> web.StreamResponse:
    return web.json_response(
        explorer_config(request), headers={**_SECURITY_HEADERS, "Cache-Control": "no-cache"}
    )


def add_routes(app: web.Application) -> None:
    """Register ``/explorer``, ``/explorer/static/{name}`` and ``/explorer/config.json``."""
    ROUTES.add_to(app)
