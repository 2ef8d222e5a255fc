"""Public HTTP endpoints: receipts, verification, completeness proofs, the batch log, anchors.

No authentication; every answer is cacheable or says why not. Everything here is described in
:mod:`anchor.openapi` (served at ``/openapi.json`` and rendered at ``/docs``), and the two must
change together: the schemathesis test checks every response against that document.

Errors are RFC 9457 problem documents (``anchor.api.problem``) with these ``reason`` codes:

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
``too_large`` (413)          a request body over 1 MiB (``anchor.api.MAX_BODY_BYTES``);
plus the server-side ``db_unavailable``/``db_busy`` (503) and ``internal``,
``log_inconsistent``, ``db_error`` (500) of the middleware.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from anchor import merkle
from anchor.api import CONTEXT, ApiContext
from anchor.checkpoint import parse_checkpoint_unverified
from anchor.completeness import completeness_to_dict
from anchor.device_id import DEVICE_ID_PATTERN, DEVICE_ID_RE
from anchor.envelope import parse_envelope
from anchor.errors import AnchorError
from anchor.keys import PublicKey
from anchor.receipt import dumps_receipt, receipt_from_dict
from anchor.sealing import MAX_STORED_INT
from anchor.store import BatchRecord, DeviceRecord, RegistryError, StoredAnchor, StoreError
from anchor.verify import Check, ReceiptReport, verify_receipt
from anchor.wire import JsonRejected, strict_loads

__all__ = [
    "DEFAULT_COMPLETENESS_RANGE",
    "DEFAULT_LIST_LIMIT",
    "MAX_COMPLETENESS_RANGE",
    "MAX_LIST_LIMIT",
    "add_routes",
]

MAX_COMPLETENESS_RANGE = 1000
"""Most seqs one completeness proof covers (``to_seq - from_seq + 1``)."""
DEFAULT_COMPLETENESS_RANGE = 100
"""Seqs covered when ``to_seq`` is not given."""
MAX_LIST_LIMIT = 1000
DEFAULT_LIST_LIMIT = 100
MAX_BODY_DEPTH = 48
"""Deepest JSON nesting accepted in a request body (a receipt needs 4; extensions more)."""

IMMUTABLE = "public, max-age=31536000, immutable"
SHORT = "public, max-age=5"
# A minute, then revalidation by ETag (cheap: 304): an anchored receipt can still change, when
# its anchor vanishes in a reorg (the anchoring job re-checks every anchor_recheck_ms, 30 s) or
# its envelope is erased; a shared cache must not keep citing a vanished anchor for an hour.
ANCHORED_RECEIPT = "public, max-age=60, must-revalidate"
NO_CACHE = "no-cache"

_DEVICE_ID = DEVICE_ID_RE  # the one rule: anchor.device_id
_DECIMAL = re.compile(r"[0-9]{1,19}")


class ApiInputError(AnchorError):
    """A request the API cannot act on (400 unless the reason maps elsewhere)."""

    reason = "invalid_parameter"


# ------------------------------------------------------------------------------- helpers


def _context(request: web.Request) -> ApiContext:
    return request.app[CONTEXT]


def _hasher(ctx: ApiContext) -> merkle.Hasher:
    return merkle.get_hasher(ctx.settings.hash_scheme)


def _device_id(text: str) -> str:
    if _DEVICE_ID.fullmatch(text) is None:
        raise ApiInputError(
            f"device id {ascii(text)[:80]} does not match {DEVICE_ID_PATTERN}",
            reason="device_id_invalid",
        )
    return text


def _integer(text: str, name: str, *, low: int, high: int = MAX_STORED_INT) -> int:
    # Decimal digits only: int() would also take "+5", " 5" and "1_000".
    if _DECIMAL.fullmatch(text) is None or not low <= int(text) <= high:
        raise ApiInputError(
            f"{name} must be a decimal integer from {low} to {high}, got {ascii(text)[:40]}"
        )
    return int(text)


def _query_int(
    request: web.Request, name: str, *, low: int, high: int = MAX_STORED_INT
) -> int | None:
    text = request.query.get(name)
    return None if text is None else _integer(text, name, low=low, high=high)


def _json(data: Any, *, cache: str, status: int = 200) -> web.Response:
    response = web.json_response(data, status=status, dumps=_compact)
    response.headers["Cache-Control"] = cache
    return response


def _compact(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _etag_matches(header: str | None, etag: str) -> bool:
    # RFC 9110 section 13.1.2: If-None-Match uses the weak comparison.
    if header is None:
        return False
    for candidate in header.split(","):
        tag = candidate.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False


def _with_etag(request: web.Request, body: bytes, *, content_type: str, cache: str) -> web.Response:
    etag = '"' + hashlib.sha256(body).hexdigest()[:40] + '"'
    headers = {"ETag": etag, "Cache-Control": cache}
    if _etag_matches(request.headers.get("If-None-Match"), etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, content_type=content_type, charset="utf-8", headers=headers)


def _anchor_dict(a: StoredAnchor) -> dict[str, Any]:
    return {
        "backend": a.backend,
        "chain_id": a.chain_id,
        "contract": a.contract,
        "log_size": a.log_size,
        "root": a.root.hex(),
        "tx_hash": a.tx_hash,
        "block_number": a.block_number,
        "block_time": a.block_time.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


# ------------------------------------------------------------------------------ receipts


async def _get_receipt(request: web.Request) -> web.Response:
    ctx = _context(request)
    device_id = _device_id(request.match_info["device_id"])
    seq = _integer(request.match_info["seq"], "seq", low=1)
    receipt = await ctx.store.receipt(device_id, seq, hasher=_hasher(ctx))
    # A sealed one becomes anchored within a period. Not "immutable": an anchored receipt's
    # envelope can be erased under privacy law, and its anchor can vanish in a reorg (it then
    # goes back to "sealed" until the checkpoint is anchored again): see ANCHORED_RECEIPT.
    cache = ANCHORED_RECEIPT if receipt.status == "anchored" else SHORT
    body = dumps_receipt(receipt).encode("utf-8")
    return _with_etag(request, body, content_type="application/json", cache=cache)


# -------------------------------------------------------------------------------- verify


def _parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = strict_loads(raw, max_depth=MAX_BODY_DEPTH)
    except JsonRejected as exc:
        raise ApiInputError(f"body is not strict JSON: {exc}", reason="body_malformed") from None
    if not isinstance(body, dict):
        raise ApiInputError("body must be a JSON object", reason="body_malformed")
    if not isinstance(body.get("receipt"), dict):
        raise ApiInputError('body must hold "receipt": a receipt object', reason="body_malformed")
    return body


async def _registry_device(ctx: ApiContext, device_id: str) -> DeviceRecord | None:
    """The registry's record of the device (every key, current and rotated), None if unknown."""
    try:
        return await ctx.store.get_device(device_id)
    except StoreError as exc:
        if exc.reason == "not_found":
            return None
        raise


def _key_validity(
    report: ReceiptReport, receipt: Any, device: DeviceRecord, received_at: datetime | None
) -> ReceiptReport:
    """Apply the ingest rule for key status to a signature that verified with a registry key.

    A signature by a key rotated out before the reading's ``ts``, or by a device revoked
    before the reading was received (by this operator's stored ``received_at``), proves
    nothing the operator vouches for: the check fails with ``key_rotated`` /
    ``device_revoked``, as the ingestor would have quarantined it. A reading this operator
    did not store has no received time: for a revoked device it fails too.
    """
    signature = next((c for c in report.checks if c.name == "signature"), None)
    if signature is None or signature.status != "pass":
        return report
    envelope = parse_envelope(receipt.envelope)  # it parsed for the signature check to pass
    judged_at = received_at if received_at is not None else datetime.max.replace(tzinfo=UTC)
    try:
        device.check_reading(envelope.kid, envelope.reading.ts, judged_at)
    except RegistryError as exc:
        detail = exc.detail
        if received_at is None and exc.reason == "device_revoked":
            detail += "; this operator holds no record of when the reading was received"
        failed = Check("signature", "fail", detail, exc.reason)
        return ReceiptReport(
            report.device_id,
            report.seq,
            tuple(failed if c.name == "signature" else c for c in report.checks),
        )
    return report


def _verify_sync(
    ctx: ApiContext,
    receipt: Any,
    keys: Sequence[PublicKey],
    unknown_device: bool,
    *,
    device: DeviceRecord | None = None,
    received_at: datetime | None = None,
) -> ReceiptReport:
    checker = None
    rpcs = [c.rpc_url for c in ctx.settings.chains if c.rpc_url]
    if rpcs and receipt.anchors:
        from anchor.anchor_main import rpc_anchor_checker

        checker = rpc_anchor_checker(rpcs, timeout_s=5.0)
    report = verify_receipt(
        receipt,
        device_keys=keys,
        log_verifiers=ctx.log_verifiers,
        anchor_checker=checker,
    )
    if device is not None:
        return _key_validity(report, receipt, device, received_at)
    if not unknown_device:
        return report
    try:
        parse_envelope(receipt.envelope)
    except AnchorError:
        return report  # the signature check is already skipped: nothing to sign-check
    # The API vouches with its registry: a device it does not know cannot have signed this.
    checks = tuple(
        Check(
            "signature",
            "fail",
            f"device {receipt.device_id} is not in this operator's registry",
            "unknown_device",
        )
        if c.name == "signature"
        else c
        for c in report.checks
    )
    return ReceiptReport(report.device_id, report.seq, checks)


async def _post_verify(request: web.Request) -> web.Response:
    ctx = _context(request)
    body = _parse_body(await request.read())
    jwk = body.get("device_key")
    device_key: PublicKey | None = None
    if jwk is not None:
        if not isinstance(jwk, dict):
            raise ApiInputError("device_key must be a JWK object", reason="key_invalid")
        device_key = PublicKey.from_jwk(jwk)  # KeyMaterialError: key_invalid, 400
    try:
        receipt = receipt_from_dict(body["receipt"])
    except AnchorError as exc:
        # Same as `cityanchor verify`: an unreadable receipt is one failed check, not an error.
        bad = Check("receipt", "fail", exc.detail, exc.reason)
        return _json(
            {
                "device_id": None,
                "seq": None,
                "valid": False,
                "fully_verified": False,
                "device_key_source": "none",
                "checks": [bad.to_dict()],
            },
            cache="no-store",
        )
    keys: list[PublicKey]
    unknown_device = False
    device: DeviceRecord | None = None
    received_at: datetime | None = None
    if device_key is not None:
        keys = [device_key]
        source = "request"
    else:
        device = await _registry_device(ctx, receipt.device_id)
        unknown_device = device is None
        keys = [k.public_key for k in device.keys] if device is not None else []
        source = "none" if device is None else "registry"
        if device is not None:
            received_at = await ctx.store.reading_received_at(
                receipt.device_id, receipt.seq, receipt.leaf_hash
            )
    report = await asyncio.to_thread(
        _verify_sync, ctx, receipt, keys, unknown_device, device=device, received_at=received_at
    )
    return _json({**report.to_dict(), "device_key_source": source}, cache="no-store")


# -------------------------------------------------------------------------- completeness


async def _get_completeness(request: web.Request) -> web.Response:
    ctx = _context(request)
    device_id = _device_id(request.match_info["device_id"])
    from_seq = _query_int(request, "from_seq", low=1) or 1
    to_seq = _query_int(request, "to_seq", low=1)
    if to_seq is None:
        to_seq = min(from_seq + DEFAULT_COMPLETENESS_RANGE - 1, MAX_STORED_INT)
    if to_seq < from_seq:
        raise ApiInputError(f"to_seq {to_seq} is below from_seq {from_seq}")
    if to_seq - from_seq + 1 > MAX_COMPLETENESS_RANGE:
        raise ApiInputError(
            f"{to_seq - from_seq + 1} seqs asked for; at most {MAX_COMPLETENESS_RANGE} per proof",
            reason="range_too_large",
        )
    proof = await ctx.store.completeness_proof(device_id, from_seq, to_seq, hasher=_hasher(ctx))
    return _json(completeness_to_dict(proof), cache=SHORT)


# ------------------------------------------------------------------------- batches, log


async def _get_batch(request: web.Request) -> web.Response:
    ctx = _context(request)
    batch_id = _integer(request.match_info["batch_id"], "batch id", low=0)
    return _batch_json(await ctx.store.batch_record(batch_id))


async def _get_batch_at(request: web.Request) -> web.Response:
    # Receipts v2 name their batch by log.index (which log.path proves), not by id.
    ctx = _context(request)
    log_index = _integer(request.match_info["log_index"], "log index", low=0)
    return _batch_json(await ctx.store.batch_record_at(log_index))


def _batch_json(batch: BatchRecord) -> web.Response:
    return _json(
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
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        media = media.strip().lower()
        if media in quality:
            quality[media] = max(quality[media], q)
    return quality["application/json"] > quality["text/plain"]


async def _get_checkpoint(request: web.Request) -> web.Response:
    ctx = _context(request)
    size = _query_int(request, "size", low=1)
    wants_json = _wants_json(request)
    if size is None:
        note = await ctx.store.latest_checkpoint()
        if note is None:
            raise ApiInputError("the batch log is empty: no checkpoint yet", reason="not_found")
        cache = NO_CACHE
    else:
        note = await ctx.store.checkpoint_at(size)
        cache = IMMUTABLE
    if not wants_json:
        response = web.Response(text=note, content_type="text/plain", charset="utf-8")
        response.headers["Cache-Control"] = cache
        response.headers["Vary"] = "Accept"
        return response
    checkpoint = parse_checkpoint_unverified(note)
    anchors, _ = await ctx.store.anchors_page(since_log_size=checkpoint.size - 1, limit=1)
    response = _json(
        {
            "origin": checkpoint.origin,
            "size": checkpoint.size,
            "root": checkpoint.root.hex(),
            "note": note,
            "anchors": [_anchor_dict(a) for a in anchors if a.log_size == checkpoint.size],
        },
        cache=NO_CACHE,  # anchors of this size may still be added
    )
    response.headers["Vary"] = "Accept"
    return response


async def _get_consistency(request: web.Request) -> web.Response:
    ctx = _context(request)
    old = _query_int(request, "old", low=1)
    if old is None:
        raise ApiInputError("old (the older log size) is required")
    new = _query_int(request, "new", low=1)
    cache = IMMUTABLE
    if new is None:
        new = await ctx.store.log_size()
        cache = NO_CACHE
    if old > new:
        raise ApiInputError(f"old size {old} is above new size {new}")
    proof = await ctx.store.consistency_proof(old, new, hasher=_hasher(ctx))
    old_cp = parse_checkpoint_unverified(await ctx.store.checkpoint_at(old))
    new_cp = parse_checkpoint_unverified(await ctx.store.checkpoint_at(new))
    return _json(
        {
            "old_size": old,
            "new_size": new,
            "old_root": old_cp.root.hex(),
            "new_root": new_cp.root.hex(),
            "proof": [h.hex() for h in proof],
        },
        cache=cache,
    )


async def _get_anchors(request: web.Request) -> web.Response:
    ctx = _context(request)
    since = _query_int(request, "since", low=0) or 0
    limit = _query_int(request, "limit", low=1, high=MAX_LIST_LIMIT) or DEFAULT_LIST_LIMIT
    anchors, next_since = await ctx.store.anchors_page(since_log_size=since, limit=limit)
    return _json(
        {"anchors": [_anchor_dict(a) for a in anchors], "next_since": next_since}, cache=SHORT
    )


async def _get_operator_key(request: web.Request) -> web.Response:
    ctx = _context(request)
    if not ctx.log_verifiers:
        raise ApiInputError("this API has no operator key configured", reason="not_found")
    first = ctx.log_verifiers[0]
    return _json(
        {
            "origin": ctx.settings.log_origin,
            "name": first.name,
            "vkey": first.vkey(),
            "vkeys": [v.vkey() for v in ctx.log_verifiers],
        },
        cache="public, max-age=300",
    )


# -------------------------------------------------------------------------- openapi, docs


async def _get_openapi(request: web.Request) -> web.Response:
    from anchor.openapi import openapi_document

    return _json(openapi_document(), cache="public, max-age=300")


async def _get_docs(request: web.Request) -> web.Response:
    from anchor.openapi import render_docs

    response = web.Response(text=render_docs(), content_type="text/html", charset="utf-8")
    response.headers["Cache-Control"] = "public, max-age=300"
    # Self-contained page: no script, styles inline only.
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
    )
    return response


def add_routes(app: web.Application) -> None:
    """Register the public endpoints on ``app``. The request body limit is the app's
    (``anchor.api.MAX_BODY_BYTES``, 1 MiB), which :mod:`anchor.openapi` documents."""
    r = app.router
    r.add_get("/v1/receipts/{device_id}/{seq}", _get_receipt)
    r.add_post("/v1/verify", _post_verify)
    r.add_get("/v1/devices/{device_id}/completeness", _get_completeness)
    r.add_get("/v1/batches/{batch_id}", _get_batch)
    r.add_get("/v1/log/batches/{log_index}", _get_batch_at)
    r.add_get("/v1/log/checkpoint", _get_checkpoint)
    r.add_get("/v1/log/consistency", _get_consistency)
    r.add_get("/v1/anchors", _get_anchors)
    r.add_get("/v1/operator-key", _get_operator_key)
    r.add_get("/openapi.json", _get_openapi)
    r.add_get("/docs", _get_docs)
