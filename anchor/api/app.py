"""The HTTP API (aiohttp): proofs for city apps, operator endpoints, operations.

Any number of replicas can run against the same PostgreSQL. Every error is an RFC 9457 Problem
Details document whose ``reason`` is the same stable code the core uses (see
``docs/reason-codes.md``); no stack trace ever reaches a client.

Layout: :func:`create_app` builds the application from an :class:`ApiContext`; route groups live
in their own modules, each declaring its handlers on a ``ROUTES`` table
(:class:`anchor.api.spec.RouteTable`) together with the OpenAPI operations that describe them,
and registering them with ``add_routes(app)``:

* this module: the app, the error middleware, ``/healthz``, ``/readyz``;
* ``anchor.api.public``: receipts, verify, completeness, batches, log, anchors, operator key,
  ``/openapi.json`` and ``/docs`` (handlers by resource in ``public_proofs`` and ``public_log``,
  schemas in ``public_schemas``, shared parsing in ``public_http``);
* ``anchor.api.operator``: tokens, device registry, erasure, audit log, ``/metrics`` (devices in
  ``operator_devices``, token guard and audit in ``operator_guard``, body and parameter parsing
  in ``operator_requests``, schemas in ``operator_schemas``);
* ``anchor.api.explorer``: the proof explorer page under ``/explorer``.

:func:`create_app` assembles the OpenAPI document from those same tables
(:func:`anchor.api.openapi.build_document`) and hands it to the app, so the routes served and the
routes described are one list.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import signal
import subprocess
import sys
import time
from typing import Any

from aiohttp import web

from anchor.anchoring.backend import build_backend
from anchor.api import explorer, openapi
from anchor.api import operator as api_operator
from anchor.api import public as api_public
from anchor.api.context import (
    CONTEXT,
    MAX_BODY_BYTES,
    ApiContext,
    Handler,
    problem,
    status_for,
)
from anchor.api.spec import DOCS_PAGE, OPENAPI_DOCUMENT, RouteTable, json_ok
from anchor.broker.client import parse_mqtt_url
from anchor.checkpoint import NoteVerifier
from anchor.errors import AnchorError, Reason
from anchor.host.config import Settings
from anchor.host.files import load_operator_verifier
from anchor.store import Store

__all__ = [
    "CONTEXT",
    "ROUTES",
    "ApiContext",
    "create_app",
    "openapi_document",
    "problem",
    "route_tables",
    "status_for",
]

log = logging.getLogger("anchor.api.app")


def _take_token(ctx: ApiContext, client: str, now: float) -> float:
    """Token bucket per client: 0.0 when the request may proceed, else seconds to wait."""
    capacity = 2 * ctx.rate_per_s
    tokens, last = ctx.buckets.get(client, (capacity, now))
    tokens = min(capacity, tokens + (now - last) * ctx.rate_per_s)
    if tokens < 1.0:
        ctx.buckets[client] = (tokens, now)
        return (1.0 - tokens) / ctx.rate_per_s
    ctx.buckets[client] = (tokens - 1.0, now)
    if len(ctx.buckets) > 100_000:  # forget idle clients rather than grow without bound
        ctx.buckets.clear()
    return 0.0


@web.middleware
async def _rate_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    if ctx.rate_per_s > 0 and request.path not in ("/healthz", "/readyz"):
        wait = _take_token(ctx, request.remote or "?", time.monotonic())
        if wait > 0:
            response = problem(429, Reason.RATE_LIMITED, f"too many requests; retry in {wait:.2f}s")
            response.headers["Retry-After"] = str(max(1, round(wait)))
            return response
    return await handler(request)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    try:
        return await handler(request)
    except AnchorError as exc:
        return problem(status_for(exc.reason), exc.reason, exc.detail)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reason = {
            404: Reason.NOT_FOUND,
            405: Reason.METHOD_NOT_ALLOWED,
            413: Reason.TOO_LARGE,
        }.get(exc.status, Reason.BAD_REQUEST)
        return problem(exc.status, reason, exc.reason or reason)
    except (asyncio.CancelledError, KeyboardInterrupt):
        raise
    except Exception:
        # The trace goes to our log, never to the client.
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem(500, Reason.INTERNAL, "internal error; the operator's log has the details")
    finally:
        ctx = request.app.get(CONTEXT)
        if ctx is not None:
            route = request.match_info.route.resource
            name = route.canonical if route is not None else "unmatched"
            ctx.latency.setdefault(name, []).append(time.perf_counter() - started)
            if len(ctx.latency[name]) > 10_000:
                del ctx.latency[name][:5_000]


ROUTES = RouteTable(
    components={
        "schemas": {
            "Health": {
                "type": "object",
                "required": ["status"],
                "properties": {"status": {"const": "ok"}},
            },
            "Readiness": {
                "type": "object",
                "required": ["status", "checks"],
                "properties": {
                    "status": {"enum": ["ready", "not_ready"]},
                    "checks": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            },
        }
    }
)
"""This module's routes (operations), each with its OpenAPI operation."""


@ROUTES.get(
    "/healthz",
    {
        "tags": ["operations"],
        "operationId": "healthz",
        "summary": "Liveness: the process is up",
        "responses": {"200": json_ok("Health", "Up.", {"status": "ok"})},
    },
)
async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _broker_check(mqtt_url: str) -> str:
    """ "ok" when the broker accepts a TCP connection within 2 s."""
    try:
        target = parse_mqtt_url(mqtt_url)
    except AnchorError as exc:
        return f"{exc.reason}: {exc.detail}"
    host, port = target.host, target.port
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2.0)
    except (OSError, TimeoutError) as exc:
        return f"broker_unavailable: cannot connect to {host}:{port} ({type(exc).__name__})"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return "ok"


@ROUTES.get(
    "/readyz",
    {
        "tags": ["operations"],
        "operationId": "readyz",
        "summary": "Readiness: database, every configured chain and the broker reachable",
        "responses": {
            "200": json_ok(
                "Readiness",
                "Ready.",
                {"status": "ready", "checks": {"database": "ok", "chain:local": "ok"}},
            ),
            "503": json_ok(
                "Readiness",
                "Not ready; each failing dependency says why.",
                {"status": "not_ready", "checks": {"database": "db_unavailable: ..."}},
            ),
        },
    },
)
async def _readyz(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    checks: dict[str, str] = {}
    try:
        await ctx.store.ping()
        checks["database"] = "ok"
    except AnchorError as exc:
        checks["database"] = f"{exc.reason}: {exc.detail}"
    for chain in ctx.settings.chains:
        try:
            backend = build_backend(chain, with_key=False)
            await asyncio.to_thread(backend.ping)
            checks[f"chain:{chain.name}"] = "ok"
        except AnchorError as exc:
            checks[f"chain:{chain.name}"] = f"{exc.reason}: {exc.detail}"
    if ctx.settings.mqtt_admin_username:
        # The API manages device logins in this broker, so it is the deployment's broker: a
        # dead one means readings are not being accepted (issue 11: /healthz said 200 then).
        checks["broker"] = await _broker_check(ctx.settings.mqtt_url)
    ready = all(v == "ok" for v in checks.values())
    return web.json_response(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        status=200 if ready else 503,
    )


def create_app(ctx: ApiContext) -> web.Application:
    """The aiohttp application with every route group registered."""
    app = web.Application(middlewares=[_errors, _rate_limit], client_max_size=MAX_BODY_BYTES)
    app[CONTEXT] = ctx
    ROUTES.add_to(app)
    # Imported here: each route group imports this module's CONTEXT and problem().

    for group in (api_public, api_operator, explorer):
        group.add_routes(app)
    tables = route_tables()
    app[OPENAPI_DOCUMENT] = openapi.build_document(tables)
    app[DOCS_PAGE] = openapi.render_docs(tables)
    return app


def route_tables() -> tuple[RouteTable, ...]:
    """The route tables of the app, in the order :func:`create_app` registers them."""

    return (ROUTES, api_public.ROUTES, api_operator.ROUTES, explorer.ROUTES)


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document the app serves at ``/openapi.json`` (a fresh copy)."""
    return copy.deepcopy(openapi.build_document(route_tables()))


async def serve(
    settings: Settings, *, host: str, port: int, stop: asyncio.Event, reuse_port: bool = False
) -> None:
    """Serve the API until ``stop`` is set."""
    log.info("api starting: %s", json.dumps(settings.masked()))
    store = await Store.connect(settings.database_url, max_size=8)
    store.use_archive_dir(settings.archive_dir or None)
    try:
        verifiers: list[NoteVerifier] = []
        try:
            # The vkey file (public half) is enough and is what docker/compose.yaml mounts.
            verifiers.append(load_operator_verifier(settings.operator_key_file))
        except AnchorError as exc:
            log.warning("no operator key (%s): checkpoints are served but not vouched for", exc)
        app = create_app(
            ApiContext(
                store=store,
                settings=settings,
                log_verifiers=verifiers,
                rate_per_s=float(settings.api_rate_per_s),
            )
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        # reuse_port: with `--workers N`, N processes accept on one port and the kernel spreads
        # the connections between them (the event loop is single-core).
        site = web.TCPSite(runner, host, port, reuse_port=reuse_port)
        try:
            await site.start()
        except OSError as exc:
            raise AnchorError(
                f"cannot listen on {host}:{port}: {exc.strerror}", reason=Reason.PORT_IN_USE
            ) from exc
        log.info("api listening on http://%s:%d", host, port)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()
            # The per-batch receipt cache's figures (anchor.store.receipt_cache), for operators
            # and bench/api.py: one line per process.
            stats = store.receipt_cache.stats()
            lookups, statements = store.receipt_lookups()
            log.info(
                "receipt cache: %s",
                json.dumps(
                    {
                        "hits": stats.hits,
                        "misses": stats.misses,
                        "stale": stats.stale,
                        "entries": stats.entries,
                        "bytes": stats.nbytes,
                        "hit_rate": round(stats.hit_rate, 4),
                        "lookups": lookups,
                        "lookup_statements": statements,
                    }
                ),
            )
    finally:
        await store.close()


def run_api(
    settings: Settings, *, host: str, port: int, workers: int = 1, reuse_port: bool = False
) -> int:
    """``cityanchor api``: serve until SIGINT/SIGTERM, in ``workers`` processes on one port."""
    if workers > 1:
        # The children serve; this process only forwards the stop signal and waits.
        argv = [
            sys.executable, "-m", "anchor", *_drop_flag_value(sys.argv[1:], "--workers"),
            "--reuse-port",
        ]  # fmt: skip
        children = [subprocess.Popen(argv) for _ in range(workers)]

        def forward(signum: int, frame: object) -> None:
            for child in children:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        return max(child.wait() for child in children)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, host=host, port=port, stop=stop, reuse_port=reuse_port)

    asyncio.run(main())
    return 0


def _drop_flag_value(argv: list[str], flag: str) -> list[str]:
    """``argv`` without ``flag VALUE`` / ``flag=VALUE``."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == flag:
            skip = True
            continue
        if arg.startswith(flag + "="):
            continue
        out.append(arg)
    return out
