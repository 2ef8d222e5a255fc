"""Public HTTP endpoints: receipts, verification, completeness proofs, the batch log, anchors.

No authentication; every answer is cacheable or says why not. Each handler is declared with
the OpenAPI operation that describes it (assembled by :mod:`anchor.api.openapi`, served at
``/openapi.json`` and rendered at ``/docs``): the schemathesis test checks every response against
that document. :data:`ROUTES` gathers them, by resource:

* :mod:`anchor.api.public_proofs`: receipts, ``POST /v1/verify``, completeness proofs;
* :mod:`anchor.api.public_log`: batches, checkpoints, consistency proofs, anchors, operator key;
* this module: ``/openapi.json``, ``/docs`` and the problem types, ``/problems`` and
  ``/problems/{reason}`` (each problem document's ``type``; :mod:`anchor.api.problems`);

with the component schemas in :mod:`anchor.api.public_schemas` and the limits, parameter parsing
and cached responses they share in :mod:`anchor.api.public_http`.

Errors are RFC 9457 problem documents (``anchor.api.app.problem``) with these ``reason`` codes:

``not_found`` (404)          unknown device, reading, batch or log size; empty log;
``erased`` (410)             the reading's envelope was erased: no receipt can carry it;
``device_id_invalid`` (400)  a device id outside ``[A-Za-z0-9._-]{1,64}``;
``invalid_parameter`` (400)  a path or query parameter that is not a decimal integer in its
                             range, an unknown ``format``, ``old`` > ``new``, ``to_seq`` <
                             ``from_seq``;
``range_too_large`` (400)    a completeness range of more than :data:`MAX_COMPLETENESS_RANGE`;
``body_malformed`` (400)     ``POST /v1/verify`` body that is not a UTF-8 JSON object with a
                             ``receipt`` object (duplicate keys, NaN and deep nesting refused);
``key_invalid`` (400)        the ``device_key`` given to ``POST /v1/verify`` is not a public JWK;
``too_large`` (413)          a request body over 1 MiB (``anchor.api.app.MAX_BODY_BYTES``);
plus the server-side ``db_unavailable``/``db_busy`` (503) and ``internal``,
``log_inconsistent``, ``db_error`` (500) of the middleware.
"""

from __future__ import annotations

from aiohttp import web

from anchor.api import public_log, public_proofs
from anchor.api.context import MAX_BODY_DEPTH
from anchor.api.problems import PAGE_CSP, problem_index_html, problem_page_html
from anchor.api.public_http import (
    DEFAULT_COMPLETENESS_RANGE,
    DEFAULT_LIST_LIMIT,
    MAX_COMPLETENESS_RANGE,
    MAX_LIST_LIMIT,
    ApiInputError,
    cached_json,
)
from anchor.api.public_schemas import PUBLIC_SCHEMAS
from anchor.api.spec import DOCS_PAGE, OPENAPI_DOCUMENT, RouteTable, errors
from anchor.errors import Reason

__all__ = [
    "DEFAULT_COMPLETENESS_RANGE",
    "DEFAULT_LIST_LIMIT",
    "MAX_BODY_DEPTH",
    "MAX_COMPLETENESS_RANGE",
    "MAX_LIST_LIMIT",
    "ROUTES",
    "ApiInputError",
    "add_routes",
]

ROUTES = RouteTable(components={"schemas": PUBLIC_SCHEMAS})
"""The public routes, each with its OpenAPI operation: the proofs, the log, then this
document and its page (the order of the description)."""
ROUTES.include(public_proofs.ROUTES, public_log.ROUTES)

# -------------------------------------------------------------------------- openapi, docs


@ROUTES.get(
    "/openapi.json",
    {
        "tags": ["operations"],
        "operationId": "openapi",
        "summary": "This OpenAPI 3.1 document",
        "responses": {
            "200": {
                "description": "The document.",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        },
    },
)
async def _get_openapi(request: web.Request) -> web.Response:
    return cached_json(request.app[OPENAPI_DOCUMENT], cache="public, max-age=300")


@ROUTES.get(
    "/docs",
    {
        "tags": ["operations"],
        "operationId": "docs",
        "summary": "This document as a self-contained HTML page",
        "responses": {
            "200": {
                "description": "The page.",
                "content": {"text/html": {"schema": {"type": "string"}}},
            }
        },
    },
)
async def _get_docs(request: web.Request) -> web.Response:
    return _html(request.app[DOCS_PAGE])


def _html(text: str) -> web.Response:
    response = web.Response(text=text, content_type="text/html", charset="utf-8")
    response.headers["Cache-Control"] = "public, max-age=300"
    # Self-contained page: no script, styles inline only.
    response.headers["Content-Security-Policy"] = PAGE_CSP
    return response


_HTML_PAGE = {
    "description": "The page.",
    "content": {"text/html": {"schema": {"type": "string"}}},
}


@ROUTES.get(
    "/problems",
    {
        "tags": ["operations"],
        "operationId": "problemTypes",
        "summary": "Every problem type of this API, as an HTML page",
        "responses": {"200": _HTML_PAGE},
    },
)
async def _get_problems(request: web.Request) -> web.Response:
    return _html(problem_index_html())


@ROUTES.get(
    "/problems/{reason}",
    {
        "tags": ["operations"],
        "operationId": "problemType",
        "summary": "One problem type: the page a problem document's `type` names",
        "description": "What the `reason` code means and which HTTP status carries it.",
        "parameters": [
            {
                "name": "reason",
                "in": "path",
                "required": True,
                "description": "a `reason` code",
                "schema": {"type": "string", "enum": [r.value for r in Reason]},
            }
        ],
        "responses": {"200": _HTML_PAGE, **errors(404)},
    },
)
async def _get_problem(request: web.Request) -> web.Response:
    name = request.match_info["reason"]
    try:
        reason = Reason(name)
    except ValueError:
        raise ApiInputError(
            f"no problem type {ascii(name)[:60]}", reason=Reason.NOT_FOUND
        ) from None
    return _html(problem_page_html(reason))


def add_routes(app: web.Application) -> None:
    """Register the public endpoints on ``app``. The request body limit is the app's
    (``anchor.api.app.MAX_BODY_BYTES``, 1 MiB), which ``POST /v1/verify`` documents."""
    ROUTES.add_to(app)
