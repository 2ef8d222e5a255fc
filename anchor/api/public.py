"""Public HTTP endpoints: receipts, verification, completeness proofs, the batch log, anchors.

No authentication; every answer is cacheable or says why not. Each handler is declared on
:data:`ROUTES` with the OpenAPI operation that describes it (assembled by :mod:`anchor.api.openapi`,
served at ``/openapi.json`` and rendered at ``/docs``): the schemathesis test checks every
response against that document.

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

import asyncio
import copy
import hashlib
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from aiohttp import web

from anchor import merkle
from anchor.anchoring.backend import rpc_anchor_checker
from anchor.api.context import CONTEXT, MAX_BODY_BYTES, ApiContext
from anchor.api.spec import (
    CACHE_HEADER,
    DEVICE_ID,
    DOCS_PAGE,
    ETAG_HEADER,
    EXAMPLE_ANCHOR,
    EXAMPLE_HASH,
    EXAMPLE_NOTE,
    OPENAPI_DOCUMENT,
    REF,
    RouteTable,
    errors,
    hashes,
    int_schema,
    json_ok,
    obj,
    param,
    ref,
)
from anchor.checkpoint import parse_checkpoint_unverified
from anchor.completeness import completeness_to_dict
from anchor.device_id import DEVICE_ID_PATTERN, DEVICE_ID_RE
from anchor.envelope import parse_envelope
from anchor.errors import AnchorError, Reason
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
    "ROUTES",
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

    reason = Reason.INVALID_PARAMETER


# ------------------------------------------------------------------------------- helpers


def _context(request: web.Request) -> ApiContext:
    return request.app[CONTEXT]


def _hasher(ctx: ApiContext) -> merkle.Hasher:
    return merkle.get_hasher(ctx.settings.hash_scheme)


def _device_id(text: str) -> str:
    if _DEVICE_ID.fullmatch(text) is None:
        raise ApiInputError(
            f"device id {ascii(text)[:80]} does not match {DEVICE_ID_PATTERN}",
            reason=Reason.DEVICE_ID_INVALID,
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


# ------------------------------------------------------------------------ the description


def _receipt_schema() -> tuple[dict[str, Any], dict[str, Any]]:
    """The receipt JSON Schema and its ``$defs``, references rewritten to components."""
    text = resources.files("anchor").joinpath("schemas/receipt-v2.schema.json").read_text("utf-8")
    schema = json.loads(text)
    defs = schema.pop("$defs", {})
    for key in ("$schema", "$id"):
        schema.pop(key, None)
    names = {k: "Receipt" + k[:1].upper() + k[1:] for k in defs}

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: rewrite(v) for k, v in node.items()}
            ref = out.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                out["$ref"] = REF + names[ref.removeprefix("#/$defs/")]
            return out
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        return node

    return rewrite(schema), {names[k]: rewrite(v) for k, v in defs.items()}


_RECEIPT, _RECEIPT_DEFS = _receipt_schema()

ROUTES = RouteTable(
    components={
        "schemas": {
            **_RECEIPT_DEFS,
            "Receipt": _RECEIPT,
            "Check": obj(
                ["name", "status", "reason", "detail"],
                {
                    "name": {
                        "type": "string",
                        "description": "receipt, envelope, signature, leaf_hash, batch_path, "
                        "log_path, checkpoint, checkpoint_signature, anchors",
                    },
                    "status": {"enum": ["pass", "fail", "skip"]},
                    "reason": {"type": ["string", "null"], "description": "code when it failed"},
                    "detail": {"type": "string"},
                },
            ),
            "VerifyRequest": obj(
                ["receipt"],
                {
                    "receipt": {
                        "type": "object",
                        "description": "a `cityanchor/receipt/v2` document (schema `Receipt`); an "
                        "object that is not one (a retired `cityanchor/receipt/v1` receipt "
                        "included: reason `receipt_version_retired`) is answered with one failed "
                        "check named `receipt`",
                    },
                    "device_key": {
                        "anyOf": [ref("Jwk"), {"type": "null"}],
                        "description": "the device key to trust; default: the registry's key for "
                        "the receipt's device_id and the envelope's kid",
                    },
                },
            ),
            "VerifyResult": obj(
                ["device_id", "seq", "valid", "fully_verified", "device_key_source", "checks"],
                {
                    "device_id": {"type": ["string", "null"]},
                    "seq": {"type": ["integer", "null"]},
                    "valid": {"type": "boolean", "description": "no check failed"},
                    "fully_verified": {"type": "boolean", "description": "every check passed"},
                    "device_key_source": {"enum": ["request", "registry", "none"]},
                    "checks": {"type": "array", "items": ref("Check")},
                },
            ),
            "CompletenessProof": obj(
                [
                    "version",
                    "device_id",
                    "from_seq",
                    "to_seq",
                    "latest_seq",
                    "hash_scheme",
                    "readings",
                    "batches",
                    "gaps",
                    "log",
                    "checkpoint",
                    "anchors",
                    "status",
                ],
                {
                    "version": {"const": "cityanchor/completeness/v2"},
                    "device_id": {"type": "string"},
                    "from_seq": int_schema(1),
                    "to_seq": int_schema(0, description="from_seq - 1 when the range is empty"),
                    "latest_seq": int_schema(
                        0, description="the device's newest stored seq (a claim)"
                    ),
                    "hash_scheme": {"type": "string", "examples": ["rfc9162-sha256"]},
                    "readings": {
                        "type": "array",
                        "maxItems": MAX_COMPLETENESS_RANGE,
                        "items": obj(
                            [
                                "seq",
                                "format",
                                "envelope",
                                "leaf_hash",
                                "prev",
                                "batch_id",
                                "batch_index",
                                "batch_path",
                            ],
                            {
                                "seq": int_schema(1),
                                "format": {"enum": ["cose-sign1", "jws"]},
                                "envelope": {
                                    "type": ["string", "null"],
                                    "description": "base64url (no padding) of the exact signed "
                                    "envelope; null once erased",
                                },
                                "leaf_hash": ref("Hash"),
                                "prev": {
                                    "anyOf": [ref("Hash"), {"type": "null"}],
                                    "description": "the envelope's prev (leaf hash of seq - 1)",
                                },
                                "batch_id": int_schema(0),
                                "batch_index": int_schema(0),
                                "batch_path": hashes("RFC 9162 inclusion proof in the batch"),
                            },
                        ),
                    },
                    "batches": {
                        "type": "array",
                        "items": obj(
                            ["id", "size", "root", "log_index", "log_path"],
                            {
                                "id": int_schema(0),
                                "size": int_schema(1),
                                "root": ref("Hash"),
                                "log_index": int_schema(0),
                                "log_path": hashes(
                                    "inclusion of H(0x00 || uint64_be(size) || root) in the log"
                                ),
                            },
                        ),
                    },
                    "gaps": {
                        "type": "array",
                        "items": obj(["from", "to"], {"from": int_schema(1), "to": int_schema(1)}),
                        "description": "missing seqs of [from_seq, to_seq], closed ranges",
                    },
                    "log": obj(["size", "root"], {"size": int_schema(1), "root": ref("Hash")}),
                    "checkpoint": {"type": "string"},
                    "anchors": {"type": "array", "items": ref("AnchorRecord")},
                    "status": {"enum": ["sealed", "anchored"]},
                },
            ),
            "Batch": obj(
                ["id", "size", "root", "log_index", "sealed_at", "leaf_hashes"],
                {
                    "id": int_schema(0),
                    "size": int_schema(1),
                    "root": ref("Hash"),
                    "log_index": int_schema(0),
                    "sealed_at": {"type": "string", "format": "date-time"},
                    "leaf_hashes": hashes("every leaf hash, in batch order (not paginated)"),
                },
            ),
            "StoredAnchor": obj(
                [
                    "backend",
                    "chain_id",
                    "contract",
                    "log_size",
                    "root",
                    "tx_hash",
                    "block_number",
                    "block_time",
                ],
                {
                    "backend": {"type": "string"},
                    "chain_id": int_schema(1, (1 << 64) - 1),
                    "contract": {"type": "string", "pattern": "^0x[0-9a-fA-F]{40}$"},
                    "log_size": int_schema(1),
                    "root": ref("Hash"),
                    "tx_hash": {"type": "string", "pattern": "^0x[0-9a-fA-F]{64}$"},
                    "block_number": int_schema(1),
                    "block_time": {"type": "string", "format": "date-time"},
                },
            ),
            "AnchorPage": obj(
                ["anchors", "next_since"],
                {
                    "anchors": {"type": "array", "items": ref("StoredAnchor")},
                    "next_since": {
                        "type": ["integer", "null"],
                        "description": "pass as since= for the next page; null on the last page",
                    },
                },
            ),
            "CheckpointJson": obj(
                ["origin", "size", "root", "note", "anchors"],
                {
                    "origin": {"type": "string"},
                    "size": int_schema(1),
                    "root": ref("Hash"),
                    "note": {"type": "string", "description": "the C2SP signed note"},
                    "anchors": {"type": "array", "items": ref("StoredAnchor")},
                },
            ),
            "Consistency": obj(
                ["old_size", "new_size", "old_root", "new_root", "proof"],
                {
                    "old_size": int_schema(1),
                    "new_size": int_schema(1),
                    "old_root": ref("Hash"),
                    "new_root": ref("Hash"),
                    "proof": hashes("RFC 9162 consistency proof"),
                },
            ),
            "OperatorKey": obj(
                ["origin", "name", "vkey", "vkeys"],
                {
                    "origin": {"type": "string", "description": "the checkpoints' origin line"},
                    "name": {"type": "string"},
                    "vkey": {"type": "string", "description": "C2SP note verifier key"},
                    "vkeys": {"type": "array", "items": {"type": "string"}},
                },
            ),
            "AnchorRecord": copy.deepcopy(_RECEIPT["properties"]["anchors"]["items"]),
        }
    }
)
"""The public routes, each with its OpenAPI operation."""

_RECEIPT_EXAMPLE = {
    "version": "cityanchor/receipt/v2",
    "reading": {"device_id": "aq-0042", "seq": 7, "format": "jws", "envelope": "ZXlK..."},
    "leaf_hash": EXAMPLE_HASH,
    "batch": {"size": 50, "index": 12, "root": EXAMPLE_HASH, "path": [EXAMPLE_HASH]},
    "log": {"index": 2, "size": 42, "root": EXAMPLE_HASH, "path": [EXAMPLE_HASH]},
    "checkpoint": EXAMPLE_NOTE,
    "anchors": [EXAMPLE_ANCHOR],
    "status": "anchored",
}

# ------------------------------------------------------------------------------ receipts


@ROUTES.get(
    "/v1/receipts/{device_id}/{seq}",
    {
        "tags": ["proofs"],
        "operationId": "getReceipt",
        "summary": "The receipt of one reading",
        "description": 'The `cityanchor/receipt/v2` document (DESIGN.md "Receipt"), '
        "verifiable offline with `cityanchor verify`. It ends at the newest anchored "
        "checkpoint covering the reading (`status` anchored), else the newest "
        "checkpoint (`status` sealed). Anchored receipts are cached a minute and "
        "revalidated (`Cache-Control: public, max-age=60, must-revalidate`): an anchor "
        "that vanishes in a chain reorg is no longer cited (the receipt is `sealed` "
        "until the checkpoint is anchored again); sealed ones are cached "
        "5 s (`public, max-age=5`). A strong `ETag` (hash of the body) answers "
        "`If-None-Match` with 304. An erased reading's receipt has status `erased`, no "
        "envelope, and the tombstone as `erasure` (cached 5 s).",
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
                _RECEIPT_EXAMPLE,
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
        "leaf_hash, batch_path, log_path, checkpoint, checkpoint_signature, anchors. "
        "The checkpoint signature is checked with this operator's key; the device "
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
                    "example": {"receipt": _RECEIPT_EXAMPLE},
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
                },
            ),
            **errors(400, 413),
        },
    },
)
async def _post_verify(request: web.Request) -> web.Response:
    ctx = _context(request)
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
        "from_seq = previous to_seq + 1.",
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
            **errors(400, 404),
        },
    },
)
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
            reason=Reason.RANGE_TOO_LARGE,
        )
    proof = await ctx.store.completeness_proof(device_id, from_seq, to_seq, hasher=_hasher(ctx))
    return _json(completeness_to_dict(proof), cache=SHORT)


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
    ctx = _context(request)
    batch_id = _integer(request.match_info["batch_id"], "batch id", low=0)
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
        "`text/plain`. `size` picks the checkpoint of that log size (immutable); the "
        "latest one is `no-cache`.",
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
    ctx = _context(request)
    size = _query_int(request, "size", low=1)
    wants_json = _wants_json(request)
    if size is None:
        note = await ctx.store.latest_checkpoint()
        if note is None:
            raise ApiInputError(
                "the batch log is empty: no checkpoint yet", reason=Reason.NOT_FOUND
            )
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
    ctx = _context(request)
    since = _query_int(request, "since", low=0) or 0
    limit = _query_int(request, "limit", low=1, high=MAX_LIST_LIMIT) or DEFAULT_LIST_LIMIT
    anchors, next_since = await ctx.store.anchors_page(since_log_size=since, limit=limit)
    return _json(
        {"anchors": [_anchor_dict(a) for a in anchors], "next_since": next_since}, cache=SHORT
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
    ctx = _context(request)
    if not ctx.log_verifiers:
        raise ApiInputError("this API has no operator key configured", reason=Reason.NOT_FOUND)
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
    return _json(request.app[OPENAPI_DOCUMENT], cache="public, max-age=300")


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
    response = web.Response(text=request.app[DOCS_PAGE], content_type="text/html", charset="utf-8")
    response.headers["Cache-Control"] = "public, max-age=300"
    # Self-contained page: no script, styles inline only.
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
    )
    return response


def add_routes(app: web.Application) -> None:
    """Register the public endpoints on ``app``. The request body limit is the app's
    (``anchor.api.app.MAX_BODY_BYTES``, 1 MiB), which ``POST /v1/verify`` documents."""
    ROUTES.add_to(app)
