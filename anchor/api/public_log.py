"""The public log routes: sealed batches, the signed checkpoint, consistency proofs between
log sizes, the confirmed anchors and the operator's checkpoint key (the ``log`` tag of the
description).

Declared on :data:`ROUTES`, which :mod:`anchor.api.public` takes into the public route table.
"""

from __future__ import annotations

from aiohttp import web

from anchor.api.public_http import (
    ANCHORED_RECEIPT,
    DEFAULT_LIST_LIMIT,
    IMMUTABLE,
    MAX_LIST_LIMIT,
    NO_CACHE,
    SHORT,
    ApiInputError,
    anchor_json,
    cached_json,
    hasher_for,
    parse_integer,
    query_int,
    request_context,
)
from anchor.api.spec import (
    EXAMPLE_ANCHOR,
    EXAMPLE_HASH,
    EXAMPLE_NOTE,
    RouteTable,
    errors,
    int_schema,
    json_ok,
    param,
    ref,
)
from anchor.checkpoint import parse_checkpoint_unverified
from anchor.errors import Reason
from anchor.store import BatchRecord

__all__ = ["ROUTES"]

ROUTES = RouteTable()
"""The batch, checkpoint, consistency, anchor and operator-key routes, with their operations."""

# ------------------------------------------------------------------------- batches, log


@ROUTES.get(
    "/v1/batches/{batch_id}",
    {
        "tags": ["log"],
        "operationId": "getBatch",
        "summary": "A sealed batch and all its leaf hashes",
        "description": "Batches hold at most the configured batch size (a few "
        "thousand), so every leaf hash is returned in batch order, not paginated. "
        "Immutable.",
        "parameters": [param("batch_id", "path", int_schema(0), "the batch id")],
        "responses": {
            "200": json_ok(
                "Batch",
                "The batch.",
                {
                    "id": 3,
                    "size": 2,
                    "root": EXAMPLE_HASH,
                    "log_index": 2,
                    "sealed_at": "2026-01-31T12:00:00.000000Z",
                    "leaf_hashes": [EXAMPLE_HASH, EXAMPLE_HASH],
                },
            ),
            **errors(400, 404),
        },
    },
)
async def _get_batch(request: web.Request) -> web.Response:
    ctx = request_context(request)
    batch_id = parse_integer(request.match_info["batch_id"], "batch id", low=0)
    return _batch_json(await ctx.store.batch_record(batch_id))


@ROUTES.get(
    "/v1/log/batches/{log_index}",
    {
        "tags": ["log"],
        "operationId": "getBatchAtLogIndex",
        "summary": "The batch at a log index (a receipt's `log.index`)",
        "description": "The same document as `/v1/batches/{batch_id}`, looked up by "
        "the batch's index in the batch log: receipts (`cityanchor/receipt/v2`) name "
        "their batch by `log.index`, which `log.path` proves, not by id. Immutable.",
        "parameters": [
            param("log_index", "path", int_schema(0), "the batch's index in the batch log")
        ],
        "responses": {
            "200": json_ok("Batch", "The batch."),
            **errors(400, 404),
        },
    },
)
async def _get_batch_at(request: web.Request) -> web.Response:
    # Receipts v2 name their batch by log.index (which log.path proves), not by id.
    ctx = request_context(request)
    log_index = parse_integer(request.match_info["log_index"], "log index", low=0)
    return _batch_json(await ctx.store.batch_record_at(log_index))


def _batch_json(batch: BatchRecord) -> web.Response:
    return cached_json(
        {
            "id": batch.id,
            "size": batch.size,
            "root": batch.root.hex(),
            "log_index": batch.log_index,
            "sealed_at": batch.sealed_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "leaf_hashes": [h.hex() for h in batch.leaf_hashes],
        },
        cache=IMMUTABLE,
    )


def _wants_json(request: web.Request) -> bool:
    fmt = request.query.get("format")
    if fmt is not None:
        if fmt not in ("text", "json"):
            raise ApiInputError(f"format must be text or json, got {ascii(fmt)[:40]}")
        return fmt == "json"
    # Accept negotiation between the two representations; text (the note itself) wins ties.
    quality = {"text/plain": 0.0, "application/json": 0.0}
    for item in request.headers.get("Accept", "").split(","):
        media, _, params = item.strip().partition(";")
        q = 1.0
        for part in params.split(";"):
            name, _, value = part.strip().partition("=")
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        media = media.strip().lower()
        if media in quality:
            quality[media] = max(quality[media], q)
    return quality["application/json"] > quality["text/plain"]


@ROUTES.get(
    "/v1/log/checkpoint",
    {
        "tags": ["log"],
        "operationId": "getCheckpoint",
        "summary": "The latest (or a given size's) signed checkpoint",
        "description": "The C2SP tlog-checkpoint signed note as `text/plain` (default); "
        "as JSON with `?format=json`, or when `Accept` prefers `application/json` over "
        "`text/plain`. `size` picks the checkpoint of that log size. The note carries the "
        "operator's signature line followed by the C2SP tlog-cosignature lines of the "
        "witnesses that cosigned that size so far. The latest is `no-cache`; a given size is "
        "cached for a minute, then revalidated (cosignatures may still be appended).",
        "parameters": [
            param("size", "query", int_schema(1), "log size (default: the latest)"),
            param("format", "query", {"enum": ["text", "json"]}, "representation"),
        ],
        "responses": {
            "200": {
                "description": "The checkpoint.",
                "content": {
                    "text/plain": {"schema": {"type": "string"}, "example": EXAMPLE_NOTE},
                    "application/json": {
                        "schema": ref("CheckpointJson"),
                        "example": {
                            "origin": "cityanchor.example/log",
                            "size": 42,
                            "root": EXAMPLE_HASH,
                            "note": EXAMPLE_NOTE,
                            "anchors": [],
                        },
                    },
                },
            },
            **errors(400, 404),
        },
    },
)
async def _get_checkpoint(request: web.Request) -> web.Response:
    ctx = request_context(request)
    size = query_int(request, "size", low=1)
    wants_json = _wants_json(request)
    # The operator-signed note with the witness cosignatures stored for its size appended
    # (C2SP tlog-cosignature). More may arrive later, so a given size is no longer immutable:
    # a minute, then revalidation (as an anchored receipt's).
    note = await ctx.store.cosigned_note(size)
    if note is None:
        raise ApiInputError("the batch log is empty: no checkpoint yet", reason=Reason.NOT_FOUND)
    cache = NO_CACHE if size is None else ANCHORED_RECEIPT
    if not wants_json:
        response = web.Response(text=note, content_type="text/plain", charset="utf-8")
        response.headers["Cache-Control"] = cache
        response.headers["Vary"] = "Accept"
        return response
    checkpoint = parse_checkpoint_unverified(note)
    anchors, _ = await ctx.store.anchors_page(since_log_size=checkpoint.size - 1, limit=1)
    response = cached_json(
        {
            "origin": checkpoint.origin,
            "size": checkpoint.size,
            "root": checkpoint.root.hex(),
            "note": note,
            "anchors": [anchor_json(a) for a in anchors if a.log_size == checkpoint.size],
        },
        cache=NO_CACHE,  # anchors of this size may still be added
    )
    response.headers["Vary"] = "Accept"
    return response


@ROUTES.get(
    "/v1/log/consistency",
    {
        "tags": ["log"],
        "operationId": "getConsistency",
        "summary": "RFC 9162 consistency proof between two log sizes",
        "description": "Proves that the log at `new` extends the log at `old` "
        "(verify with `anchor.merkle.verify_consistency` or `cityanchor "
        "verify-consistency`). 400 when old > new; 404 when new is beyond the log.",
        "parameters": [
            param("old", "query", int_schema(1), "the older size", required=True),
            param("new", "query", int_schema(1), "the newer size (default: the latest)"),
        ],
        "responses": {
            "200": json_ok(
                "Consistency",
                "The proof and both roots.",
                {
                    "old_size": 7,
                    "new_size": 42,
                    "old_root": EXAMPLE_HASH,
                    "new_root": EXAMPLE_HASH,
                    "proof": [EXAMPLE_HASH],
                },
            ),
            **errors(400, 404),
        },
    },
)
async def _get_consistency(request: web.Request) -> web.Response:
    ctx = request_context(request)
    old = query_int(request, "old", low=1)
    if old is None:
        raise ApiInputError("old (the older log size) is required")
    new = query_int(request, "new", low=1)
    cache = IMMUTABLE
    if new is None:
        new = await ctx.store.log_size()
        cache = NO_CACHE
    if old > new:
        raise ApiInputError(f"old size {old} is above new size {new}")
    proof = await ctx.store.consistency_proof(old, new, hasher=hasher_for(ctx))
    old_cp = parse_checkpoint_unverified(await ctx.store.checkpoint_at(old))
    new_cp = parse_checkpoint_unverified(await ctx.store.checkpoint_at(new))
    return cached_json(
        {
            "old_size": old,
            "new_size": new,
            "old_root": old_cp.root.hex(),
            "new_root": new_cp.root.hex(),
            "proof": [h.hex() for h in proof],
        },
        cache=cache,
    )


@ROUTES.get(
    "/v1/anchors",
    {
        "tags": ["log"],
        "operationId": "listAnchors",
        "summary": "Confirmed on-chain anchors, oldest first",
        "description": "Cursor pagination by log size: a page holds the anchors (every "
        "backend's) of up to `limit` anchored log sizes above `since`; pass "
        "`next_since` as `since` for the next page (null on the last).",
        "parameters": [
            param("since", "query", int_schema(0, default=0), "cursor: log size (exclusive)"),
            param(
                "limit",
                "query",
                int_schema(1, MAX_LIST_LIMIT, default=DEFAULT_LIST_LIMIT),
                f"log sizes per page (default {DEFAULT_LIST_LIMIT}, max {MAX_LIST_LIMIT})",
            ),
        ],
        "responses": {
            "200": json_ok(
                "AnchorPage",
                "One page.",
                {
                    "anchors": [
                        {
                            "backend": "local",
                            "log_size": 42,
                            "root": EXAMPLE_HASH,
                            **EXAMPLE_ANCHOR,
                        }
                    ],
                    "next_since": None,
                },
            ),
            **errors(400),
        },
    },
)
async def _get_anchors(request: web.Request) -> web.Response:
    ctx = request_context(request)
    since = query_int(request, "since", low=0) or 0
    limit = query_int(request, "limit", low=1, high=MAX_LIST_LIMIT) or DEFAULT_LIST_LIMIT
    anchors, next_since = await ctx.store.anchors_page(since_log_size=since, limit=limit)
    return cached_json(
        {"anchors": [anchor_json(a) for a in anchors], "next_since": next_since}, cache=SHORT
    )


@ROUTES.get(
    "/v1/operator-key",
    {
        "tags": ["log"],
        "operationId": "getOperatorKey",
        "summary": "The operator's checkpoint verifier key",
        "description": "The C2SP note verifier key that signs checkpoints and the "
        "checkpoints' origin line; give it to `cityanchor verify --log-key`. 404 when "
        "this API has no operator key configured.",
        "responses": {
            "200": json_ok(
                "OperatorKey",
                "The key.",
                {
                    "origin": "cityanchor.example/log",
                    "name": "cityanchor.example/log",
                    "vkey": "cityanchor.example/log+0a1b2c3d+AU3s...",
                    "vkeys": ["cityanchor.example/log+0a1b2c3d+AU3s..."],
                },
            ),
            **errors(404),
        },
    },
)
async def _get_operator_key(request: web.Request) -> web.Response:
    ctx = request_context(request)
    if not ctx.log_verifiers:
        raise ApiInputError("this API has no operator key configured", reason=Reason.NOT_FOUND)
    first = ctx.log_verifiers[0]
    return cached_json(
        {
            "origin": ctx.settings.log_origin,
            "name": first.name,
            "vkey": first.vkey(),
            "vkeys": [v.vkey() for v in ctx.log_verifiers],
        },
        cache="public, max-age=300",
    )
