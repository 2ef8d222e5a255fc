"""The proof explorer: a small static page, served by the API, that verifies a receipt in the
browser.

Routes (registered by :func:`add_routes`, called from :func:`anchor.api.create_app`):

* ``GET /explorer`` the page (``static/index.html``); ``?device_id=D&seq=N`` looks a reading up
  on load;
* ``GET /explorer/static/{name}`` its script modules and style sheet (a fixed allow-list);
* ``GET /explorer/config.json`` what the page needs besides the public ``/v1`` endpoints: the
  chains it may ask about anchors (name, chain id, JSON-RPC URL, contract) and the operator's
  C2SP note verifier keys.

Everything the page shows is checked by the page itself (``static/verify.js``: WebCrypto
SHA-256, Ed25519 and ECDSA P-256, the chain's JSON-RPC); this module only serves files. No build
step: the files are plain ES2020 modules, with no third-party code and nothing loaded from
elsewhere. The Content-Security-Policy allows scripts and styles from this origin only and
network requests to this origin and the configured chain endpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from anchor.api import CONTEXT

__all__ = ["STATIC_FILES", "add_routes", "explorer_config"]

STATIC_DIR = Path(__file__).resolve().parent / "static"

STATIC_FILES: dict[str, str] = {
    "explorer.js": "text/javascript",
    "verify.js": "text/javascript",
    "explorer.css": "text/css",
}
"""The files under ``/explorer/static/`` and their media types; anything else is 404."""

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


def _csp(request: web.Request) -> str:
    chains = request.app[CONTEXT].settings.chains
    rpc = sorted({o for c in chains if (o := _origin(c.rpc_url)) is not None})
    return "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "connect-src " + " ".join(["'self'", *rpc]),
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
                "rpc_url": c.rpc_url,
                "contract": c.contract,
            }
            for c in ctx.settings.chains
        ],
        # The first is the current key; the rest (rotated keys) still verify older notes.
        "operator_vkey": vkeys[0] if vkeys else None,
        "operator_vkeys": vkeys,
    }


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


async def _config(request: web.Request) -> web.StreamResponse:
    return web.json_response(
        explorer_config(request), headers={**_SECURITY_HEADERS, "Cache-Control": "no-cache"}
    )


def add_routes(app: web.Application) -> None:
    """Register ``/explorer``, ``/explorer/static/{name}`` and ``/explorer/config.json``."""
    app.router.add_get("/explorer", _page)
    app.router.add_get("/explorer/", _page)
    app.router.add_get("/explorer/config.json", _config)
    app.router.add_get("/explorer/static/{name}", _static)
