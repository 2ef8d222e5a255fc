"""The public proof routes: a reading's receipt, verifying a receipt on the server, and a
device's completeness proof (the ``proofs`` tag of the description).

Declared on :data:`ROUTES`, which :mod:`anchor.api.public` takes into the public route table.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from json.encoder import encode_basestring
from typing import Any

from aiohttp import web

from anchor.anchoring.backend import rpc_anchor_checker
from anchor.api import tokens
from anchor.api.context import MAX_BODY_BYTES, MAX_BODY_DEPTH, ApiContext
from anchor.api.operator_quarantine import QUARANTINE_SCOPE
from anchor.api.public_http import (
    ANCHORED_RECEIPT,
    DEFAULT_COMPLETENESS_RANGE,
    MAX_COMPLETENESS_RANGE,
    SHORT,
    ApiInputError,
    cached_json,
    hasher_for,
    parse_device_id,
    parse_integer,
    query_int,
    request_context,
    with_etag,
)
from anchor.api.public_schemas import RECEIPT_EXAMPLE
from anchor.api.spec import (
    CACHE_HEADER,
    DEVICE_ID,
    ETAG_HEADER,
    RouteTable,
    errors,
    int_schema,
    json_ok,
    param,
    ref,
)
from anchor.api.tokens import TokenError
from anchor.completeness import completeness_to_dict
from anchor.envelope import parse_envelope
from anchor.errors import AnchorError, Reason
from anchor.keys import PublicKey
from anchor.receipt import (
    MAX_RECEIPT_SIZE,
    Receipt,
    dumps_receipt,
    receipt_from_dict,
    receipt_to_dict,
)
from anchor.sealing import MAX_STORED_INT
from anchor.store import DeviceRecord, RegistryError, StoreError
from anchor.store.quarantine import quarantine_reason
from anchor.verify import Check, ReceiptReport, check_witnesses, verify_receipt
from anchor.wire import JsonRejected, strict_loads

__all__ = ["ROUTES"]

ROUTES = RouteTable()
"""The receipt, verify and completeness routes, each with its OpenAPI operation."""

# ------------------------------------------------------------------------------ receipts


@ROUTES.get(
    "/v1/receipts/{device_id}/{seq}",
    {
        "tags": ["proofs"],
        "operationId": "getReceipt",
        "summary": "The receipt of one reading",
        "description": "The `cityanchor/receipt/v2` document (schema `Receipt`), "
        "verifiable offline with `cityanchor verify`. It ends at the newest anchored "
        "checkpoint covering the reading (`status` anchored), else the newest "
        "checkpoint (`status` sealed). Anchored receipts are cached a minute and "
        "revalidated (`Cache-Control: public, max-age=60, must-revalidate`): an anchor "
        "that vanishes in a chain reorg is no longer cited (the receipt is `sealed` "
        "until the checkpoint is anchored again); sealed ones are cached "
        "5 s (`public, max-age=5`). A strong `ETag` (hash of the body) answers "
        "`If-None-Match` with 304. An erased reading's receipt has status `erased`, no "
        "envelope, and the tombstone as `erasure` (cached 5 s). A reading of an archived "
        "month (`cityanchor archive`) is served from its archive file, the same bytes, when "
        "the API has `archive_dir`; without it the answer is 410 `reading_archived` naming "
        "the month and file. A reading that is not stored is a 404; with a bearer token of "
        "scope `audit:read`, one the ingestors "
        "quarantined says `quarantined: <reason>` in its `detail`.",
        "parameters": [
            DEVICE_ID,
            param("seq", "path", int_schema(1), "the reading's seq (else 400)"),
            param(
                "If-None-Match",
                "header",
                {"type": "string"},
                "ETag(s) of a cached copy; 304 when one matches",
            ),
        ],
        "responses": {
            "200": json_ok(
                "Receipt",
                "The receipt.",
                RECEIPT_EXAMPLE,
                ETag=ETAG_HEADER,
                **{"Cache-Control": CACHE_HEADER},
            ),
            "304": {
                "description": "Not modified: the cached copy is current.",
                "headers": {"ETag": ETAG_HEADER, "Cache-Control": CACHE_HEADER},
            },
            **errors(400, 404, 410),
        },
    },
)
async def _get_receipt(request: web.Request) -> web.Response:
    ctx = request_context(request)
    device_id = parse_device_id(request.match_info["device_id"])
    seq = parse_integer(request.match_info["seq"], "seq", low=1)
    try:
        receipt = await ctx.store.receipt(device_id, seq, hasher=hasher_for(ctx))
    except StoreError as exc:
        if exc.reason == Reason.NOT_FOUND:
            await _explain_quarantine(request, ctx, device_id, seq)
        raise
    # A sealed one becomes anchored within a period. Not "immutable": an anchored receipt's
    # envelope can be erased under privacy law, and its anchor can vanish in a reorg (it then
    # goes back to "sealed" until the checkpoint is anchored again): see ANCHORED_RECEIPT.
    cache = ANCHORED_RECEIPT if receipt.status == "anchored" else SHORT
    return with_etag(request, receipt_body(receipt), content_type="application/json", cache=cache)


def receipt_body(receipt: Receipt) -> bytes:
    """``dumps_receipt(receipt)`` as UTF-8, byte for byte, built without the json module's
    pure-Python indenting encoder (a fifth of a receipt's cost): the same two-space layout,
    the same (C) string escaping. Anything it does not expect (a non-string key, a value of
    another type, NaN, the size limit) is left to ``dumps_receipt`` itself, which answers it.
    """
    out: list[str] = []
    try:
        _indented(receipt_to_dict(receipt), out, "\n")
    except (TypeError, ValueError):
        return dumps_receipt(receipt).encode("utf-8")
    out.append("\n")
    body = "".join(out).encode("utf-8")
    if len(body) > MAX_RECEIPT_SIZE:
        return dumps_receipt(receipt).encode("utf-8")  # raises receipt_too_large
    return body


def _indented(value: Any, out: list[str], newline: str) -> None:
    """Append ``json.dumps(value, indent=2, ensure_ascii=False, allow_nan=False)`` to
    ``out`` (``newline`` is the line break plus the current indent)."""
    if isinstance(value, str):
        out.append(encode_basestring(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(int.__repr__(value))
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("not a finite number")
        out.append(float.__repr__(value))
    elif isinstance(value, dict):
        if not value:
            out.append("{}")
            return
        inner = newline + "  "
        sep = "{" + inner
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError("a non-string key")
            if isinstance(item, str):  # the common case, without a call
                out.append(sep + encode_basestring(key) + ": " + encode_basestring(item))
            else:
                out.append(sep + encode_basestring(key) + ": ")
                _indented(item, out, inner)
            sep = "," + inner
        out.append(newline + "}")
    elif isinstance(value, list | tuple):
        if not value:
            out.append("[]")
            return
        inner = newline + "  "
        if all(isinstance(item, str) for item in value):  # a path: hex strings
            items = ("," + inner).join(map(encode_basestring, value))
            out.append("[" + inner + items + newline + "]")
            return
        sep = "[" + inner
        for item in value:
            out.append(sep)
            _indented(item, out, inner)
            sep = "," + inner
        out.append(newline + "]")
    else:
        raise TypeError(f"{type(value).__name__} is not JSON")


async def _explain_quarantine(
    request: web.Request, ctx: ApiContext, device_id: str, seq: int
) -> None:
    """To an operator (a bearer token with ``audit:read``), a missing reading that was
    quarantined is a 404 saying "quarantined: <reason>"; to anyone else, a bare 404."""
    header = request.headers.get("Authorization")
    if not header:
        return
    try:
        token = await tokens.authenticate(ctx.store, tokens.bearer(header))
        tokens.require_scope(token, QUARANTINE_SCOPE)
    except TokenError:
        return  # a public route: a bad token gets what the public gets
    reason = await quarantine_reason(ctx.store, device_id, seq)
    if reason is not None:
        raise StoreError(
            f"no reading {device_id} seq {seq}: quarantined: {reason} "
            f"(GET /v1/quarantine?device_id={device_id} lists the rows)",
            reason=Reason.NOT_FOUND,
        )


# -------------------------------------------------------------------------------- verify


def _parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = strict_loads(raw, max_depth=MAX_BODY_DEPTH)
    except JsonRejected as exc:
        raise ApiInputError(
            f"body is not strict JSON: {exc}", reason=Reason.BODY_MALFORMED
        ) from None
    if not isinstance(body, dict):
        raise ApiInputError("body must be a JSON object", reason=Reason.BODY_MALFORMED)
    if not isinstance(body.get("receipt"), dict):
        raise ApiInputError(
            'body must hold "receipt": a receipt object', reason=Reason.BODY_MALFORMED
        )
    return body


async def _registry_device(ctx: ApiContext, device_id: str) -> DeviceRecord | None:
    """The registry's record of the device (every key, current and rotated), None if unknown."""
    try:
        return await ctx.store.get_device(device_id)
    except StoreError as exc:
        if exc.reason == Reason.NOT_FOUND:
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
        if received_at is None and exc.reason == Reason.DEVICE_REVOKED:
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
        checker = rpc_anchor_checker(rpcs, timeout_s=5.0)
    report = verify_receipt(
        receipt,
        device_keys=keys,
        log_verifiers=ctx.log_verifiers,
        anchor_checker=checker,
        witness_verifiers=[w.verifier for w in ctx.settings.witnesses],
        witness_quorum=ctx.settings.witness_quorum,
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
            Reason.UNKNOWN_DEVICE,
        )
        if c.name == "signature"
        else c
        for c in report.checks
    )
    return ReceiptReport(report.device_id, report.seq, checks)


@ROUTES.post(
    "/v1/verify",
    {
        "tags": ["proofs"],
        "operationId": "verifyReceipt",
        "summary": "Verify a receipt on the server",
        "description": "Runs the checks of `cityanchor verify`: envelope, signature, "
        "leaf_hash, batch_path, log_path, checkpoint, checkpoint_signature, witnesses, "
        "anchors. The checkpoint signature is checked with this operator's key, the "
        "witness cosignatures (C2SP tlog-cosignature lines of the checkpoint note) with "
        "the witness keys the service is configured with and its witness quorum "
        "(`witnesses` is skipped without any; `cosigners` lists which of them validly "
        "cosigned, with their timestamps); the device "
        "signature with `device_key` when given, else with the registry's keys of the "
        "receipt's device (an unregistered device fails `signature` with "
        "`unknown_device`, and a registry key that was not valid for the reading "
        "fails it with `key_rotated` (rotated out before the reading's `ts`) or "
        "`device_revoked` (revoked before the reading was received)); anchors through "
        "the configured chains' JSON-RPC. A body "
        "whose `receipt` is not a valid `cityanchor/receipt/v2` document is answered "
        "200 with one failed check named `receipt` (a `cityanchor/receipt/v1` receipt: "
        "reason `receipt_version_retired`). The body is limited to "
        f"{MAX_BODY_BYTES} bytes (413 `too_large`); a body that is not a JSON object "
        "with a `receipt` object is 400 `body_malformed`.",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": ref("VerifyRequest"),
                    "example": {"receipt": RECEIPT_EXAMPLE},
                }
            },
        },
        "responses": {
            "200": json_ok(
                "VerifyResult",
                "Each check with pass, fail or skip.",
                {
                    "device_id": "aq-0042",
                    "seq": 7,
                    "valid": False,
                    "fully_verified": False,
                    "device_key_source": "registry",
                    "checks": [
                        {
                            "name": "envelope",
                            "status": "pass",
                            "reason": None,
                            "detail": "jws Ed25519, kind iot.air_quality",
                        },
                        {
                            "name": "leaf_hash",
                            "status": "fail",
                            "reason": Reason.LEAF_MISMATCH,
                            "detail": "expected ..., calculated ...",
                        },
                    ],
                    "witness_quorum": 1,
                    "cosigners": [
                        {
                            "witness": "witness.example/w1",
                            "key_id": "1a2b3c4d",
                            "timestamp": 1764000000,
                        }
                    ],
                },
            ),
            **errors(400, 413),
        },
    },
)
async def _post_verify(request: web.Request) -> web.Response:
    ctx = request_context(request)
    body = _parse_body(await request.read())
    jwk = body.get("device_key")
    device_key: PublicKey | None = None
    if jwk is not None:
        if not isinstance(jwk, dict):
            raise ApiInputError("device_key must be a JWK object", reason=Reason.KEY_INVALID)
        device_key = PublicKey.from_jwk(jwk)  # KeyMaterialError: key_invalid, 400
    try:
        receipt = receipt_from_dict(body["receipt"])
    except AnchorError as exc:
        # Same as `cityanchor verify`: an unreadable receipt is one failed check, not an error.
        bad = Check("receipt", "fail", exc.detail, exc.reason)
        return cached_json(
            {
                "device_id": None,
                "seq": None,
                "valid": False,
                "fully_verified": False,
                "device_key_source": "none",
                "checks": [bad.to_dict()],
                "witness_quorum": ctx.settings.witness_quorum if ctx.settings.witnesses else 0,
                "cosigners": [],
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
    return cached_json(
        {**report.to_dict(), "device_key_source": source, **_cosigners(ctx, receipt)},
        cache="no-store",
    )


def _cosigners(ctx: ApiContext, receipt: Any) -> dict[str, Any]:
    """Which of the witnesses this service is configured with validly cosigned the receipt's
    checkpoint (the ``witnesses`` check says whether they make the quorum)."""
    verifiers = [w.verifier for w in ctx.settings.witnesses]
    try:
        _, found = check_witnesses(receipt.checkpoint, verifiers, ctx.settings.witness_quorum)
    except AnchorError:
        found = ()
    return {
        "witness_quorum": ctx.settings.witness_quorum if verifiers else 0,
        "cosigners": [c.to_dict() for c in found],
    }


# -------------------------------------------------------------------------- completeness


@ROUTES.get(
    "/v1/devices/{device_id}/completeness",
    {
        "tags": ["proofs"],
        "operationId": "getCompleteness",
        "summary": "Completeness proof of a device's readings",
        "description": "Every stored reading of the device in [from_seq, to_seq] "
        "(to_seq clipped to the device's newest stored seq) with its envelope, leaf "
        "hash, prev, batch path, and each batch's inclusion in the log under one "
        "checkpoint (the newest anchored one covering them, else the newest), plus the "
        "gaps. Check it offline with `cityanchor verify-completeness`: consecutive "
        "readings must chain (`prev` of k+1 = leaf hash of k), so nothing between two "
        f"present readings can be removed or reordered. At most {MAX_COMPLETENESS_RANGE} seqs per "
        f"request (400 `range_too_large`); without to_seq, {DEFAULT_COMPLETENESS_RANGE}. Page with "
        "from_seq = previous to_seq + 1. A range that includes readings of an archived "
        "month is refused (410 `reading_archived`, naming the month) rather than shown "
        "with gaps: restore the month first (`cityanchor archive restore`).",
        "parameters": [
            DEVICE_ID,
            param("from_seq", "query", int_schema(1, default=1), "first seq (default 1)"),
            param(
                "to_seq",
                "query",
                int_schema(1),
                f"last seq (default from_seq + {DEFAULT_COMPLETENESS_RANGE - 1})",
            ),
        ],
        "responses": {
            "200": json_ok(
                "CompletenessProof",
                "The proof (`cityanchor/completeness/v2`).",
                **{"Cache-Control": CACHE_HEADER},
            ),
            **errors(400, 404, 410),
        },
    },
)
async def _get_completeness(request: web.Request) -> web.Response:
    ctx = request_context(request)
    device_id = parse_device_id(request.match_info["device_id"])
    from_seq = query_int(request, "from_seq", low=1) or 1
    to_seq = query_int(request, "to_seq", low=1)
    if to_seq is None:
        to_seq = min(from_seq + DEFAULT_COMPLETENESS_RANGE - 1, MAX_STORED_INT)
    if to_seq < from_seq:
        raise ApiInputError(f"to_seq {to_seq} is below from_seq {from_seq}")
    if to_seq - from_seq + 1 > MAX_COMPLETENESS_RANGE:
        raise ApiInputError(
            f"{to_seq - from_seq + 1} seqs asked for; at most {MAX_COMPLETENESS_RANGE} per proof",
            reason=Reason.RANGE_TOO_LARGE,
        )
    proof = await ctx.store.completeness_proof(device_id, from_seq, to_seq, hasher=hasher_for(ctx))
    return cached_json(completeness_to_dict(proof), cache=SHORT)
