"""The guard of the operator routes: bearer-token authentication, the scope check, and the
audit log entry of every request to a changing endpoint, whatever its outcome
(:func:`operator`, the decorator each operator handler is declared with).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from anchor.api import tokens
from anchor.api.context import CONTEXT, Handler, problem, status_for
from anchor.api.metrics import MetricsState
from anchor.api.operator_requests import PARSED_BODY, json_body
from anchor.api.tokens import TokenError
from anchor.errors import AnchorError, Reason
from anchor.store import operator as ops
from anchor.store.operator import TokenRow

__all__ = ["AUDIT_DETAIL", "AUDIT_OUTCOME", "METRICS", "OperatorHandler", "operator"]

log = logging.getLogger("anchor.api.app")

METRICS: web.AppKey[MetricsState] = web.AppKey("metrics", MetricsState)
# Per-request notes for the audit entry (what the handler learnt, how it refused).
AUDIT_DETAIL: web.RequestKey[dict[str, Any]] = web.RequestKey("audit_detail", dict)
AUDIT_OUTCOME: web.RequestKey[str] = web.RequestKey("audit_outcome", str)
OperatorHandler = Callable[[web.Request, TokenRow], Awaitable[web.StreamResponse]]


def _target(request: web.Request) -> str:
    info = request.match_info
    if "seq" in info:
        return f"reading:{info.get('device_id', '')}/{info['seq']}"
    if "device_id" in info:
        return f"device:{info['device_id']}"
    if request.path == "/v1/devices" and request.method == "POST":
        # A refused registration is audited under the device it named, when it named one. The
        # body was parsed (bounded) before authentication; it is never parsed again here.
        device_id = request.get(PARSED_BODY, {}).get("device_id")
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
                        await json_body(request, optional=body == "optional")
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
