"""The OpenAPI 3.1 description of the HTTP API, and the ``/docs`` page rendered from it.

Written by hand, next to the handlers it describes (:mod:`anchor.api` for ``/healthz`` and
``/readyz``, :mod:`anchor.api_public` for the rest): it must say what the server does, and
``tests/integration/test_api_schemathesis.py`` holds the server to it (every status code,
content type and body). The receipt schema is ``anchor/schemas/receipt-v2.schema.json`` itself
(the packaged copy of ``docs/receipt-v2.schema.json``), its ``$defs`` moved under
``components/schemas`` so that its references resolve inside this document.

Other route groups add their own operations: a module named in :data:`EXTENSION_MODULES` may
define ``OPENAPI_PATHS`` (a ``paths`` mapping) and ``OPENAPI_COMPONENTS`` (a ``components``
mapping, e.g. ``{"schemas": {...}, "securitySchemes": {...}}``), merged in when it is importable.

``/docs`` is generated server-side from the document: one self-contained HTML page (inline
styles, no script, no CDN), every string escaped.
"""

from __future__ import annotations

import copy
import functools
import html
import json
import re
from collections.abc import Mapping
from importlib import resources
from typing import Any

from anchor import __version__
from anchor.api import MAX_BODY_BYTES
from anchor.errors import Reason

__all__ = ["EXTENSION_MODULES", "openapi_document", "own_paths", "render_docs"]

EXTENSION_MODULES = ("anchor.api_operator", "anchor.explorer")

UINT63 = (1 << 63) - 1
_REF = "#/components/schemas/"

# Kept in step with anchor.api_public (imported there would be circular at import time).
_MAX_RANGE = 1000
_DEFAULT_RANGE = 100
_MAX_LIMIT = 1000
_DEFAULT_LIMIT = 100

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


_B64URL_32 = {"type": "string", "pattern": "^[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _int(low: int, high: int = UINT63, **extra: Any) -> dict[str, Any]:
    return {"type": "integer", "minimum": low, "maximum": high, **extra}


def _obj(required: list[str], props: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props, **extra}


def _hashes(description: str) -> dict[str, Any]:
    return {"type": "array", "items": _ref("Hash"), "description": description}


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
                out["$ref"] = _REF + names[ref.removeprefix("#/$defs/")]
            return out
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        return node

    return rewrite(schema), {names[k]: rewrite(v) for k, v in defs.items()}


def _schemas() -> dict[str, Any]:
    receipt, receipt_defs = _receipt_schema()
    anchor_record = copy.deepcopy(receipt["properties"]["anchors"]["items"])
    return {
        **receipt_defs,
        "Receipt": receipt,
        "Hash": {
            "type": "string",
            "pattern": "^[0-9a-f]{64}$",
            "description": "32 bytes as 64 lowercase hex digits",
            "examples": [EXAMPLE_HASH],
        },
        "Problem": _obj(
            ["type", "title", "status", "detail", "reason"],
            {
                "type": {"type": "string", "description": "URI naming the problem type"},
                "title": {"type": "string"},
                "status": {"type": "integer", "minimum": 400, "maximum": 599},
                "detail": {"type": "string", "description": "human-readable; may change"},
                "reason": {
                    "type": "string",
                    "pattern": "^[a-z0-9_]+$",
                    "description": "stable machine-readable code (docs/reason-codes.md); "
                    "branch on this, never on detail",
                },
            },
            description="RFC 9457 Problem Details, with the cityanchor reason code.",
        ),
        "Check": _obj(
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
        "Jwk": {
            "description": "A device public key (RFC 7517 / RFC 8037): members are base64url "
            "without padding of 32 bytes; a P-256 point must be on the curve; a private member "
            "`d` is refused. Anything else is 400 `key_invalid`.",
            "oneOf": [
                _obj(
                    ["kty", "crv", "x"],
                    {"kty": {"const": "OKP"}, "crv": {"const": "Ed25519"}, "x": _B64URL_32},
                    **{"not": {"required": ["d"]}},
                ),
                _obj(
                    ["kty", "crv", "x", "y"],
                    {
                        "kty": {"const": "EC"},
                        "crv": {"const": "P-256"},
                        "x": _B64URL_32,
                        "y": _B64URL_32,
                    },
                    **{"not": {"required": ["d"]}},
                ),
            ],
        },
        "VerifyRequest": _obj(
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
                    "anyOf": [_ref("Jwk"), {"type": "null"}],
                    "description": "the device key to trust; default: the registry's key for "
                    "the receipt's device_id and the envelope's kid",
                },
            },
        ),
        "VerifyResult": _obj(
            ["device_id", "seq", "valid", "fully_verified", "device_key_source", "checks"],
            {
                "device_id": {"type": ["string", "null"]},
                "seq": {"type": ["integer", "null"]},
                "valid": {"type": "boolean", "description": "no check failed"},
                "fully_verified": {"type": "boolean", "description": "every check passed"},
                "device_key_source": {"enum": ["request", "registry", "none"]},
                "checks": {"type": "array", "items": _ref("Check")},
            },
        ),
        "CompletenessProof": _obj(
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
                "from_seq": _int(1),
                "to_seq": _int(0, description="from_seq - 1 when the range is empty"),
                "latest_seq": _int(0, description="the device's newest stored seq (a claim)"),
                "hash_scheme": {"type": "string", "examples": ["rfc9162-sha256"]},
                "readings": {
                    "type": "array",
                    "maxItems": _MAX_RANGE,
                    "items": _obj(
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
                            "seq": _int(1),
                            "format": {"enum": ["cose-sign1", "jws"]},
                            "envelope": {
                                "type": ["string", "null"],
                                "description": "base64url (no padding) of the exact signed "
                                "envelope; null once erased",
                            },
                            "leaf_hash": _ref("Hash"),
                            "prev": {
                                "anyOf": [_ref("Hash"), {"type": "null"}],
                                "description": "the envelope's prev (leaf hash of seq - 1)",
                            },
                            "batch_id": _int(0),
                            "batch_index": _int(0),
                            "batch_path": _hashes("RFC 9162 inclusion proof in the batch"),
                        },
                    ),
                },
                "batches": {
                    "type": "array",
                    "items": _obj(
                        ["id", "size", "root", "log_index", "log_path"],
                        {
                            "id": _int(0),
                            "size": _int(1),
                            "root": _ref("Hash"),
                            "log_index": _int(0),
                            "log_path": _hashes(
                                "inclusion of H(0x00 || uint64_be(size) || root) in the log"
                            ),
                        },
                    ),
                },
                "gaps": {
                    "type": "array",
                    "items": _obj(["from", "to"], {"from": _int(1), "to": _int(1)}),
                    "description": "missing seqs of [from_seq, to_seq], closed ranges",
                },
                "log": _obj(["size", "root"], {"size": _int(1), "root": _ref("Hash")}),
                "checkpoint": {"type": "string"},
                "anchors": {"type": "array", "items": _ref("AnchorRecord")},
                "status": {"enum": ["sealed", "anchored"]},
            },
        ),
        "AnchorRecord": anchor_record,
        "Batch": _obj(
            ["id", "size", "root", "log_index", "sealed_at", "leaf_hashes"],
            {
                "id": _int(0),
                "size": _int(1),
                "root": _ref("Hash"),
                "log_index": _int(0),
                "sealed_at": {"type": "string", "format": "date-time"},
                "leaf_hashes": _hashes("every leaf hash, in batch order (not paginated)"),
            },
        ),
        "StoredAnchor": _obj(
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
                "chain_id": _int(1, (1 << 64) - 1),
                "contract": {"type": "string", "pattern": "^0x[0-9a-fA-F]{40}$"},
                "log_size": _int(1),
                "root": _ref("Hash"),
                "tx_hash": {"type": "string", "pattern": "^0x[0-9a-fA-F]{64}$"},
                "block_number": _int(1),
                "block_time": {"type": "string", "format": "date-time"},
            },
        ),
        "AnchorPage": _obj(
            ["anchors", "next_since"],
            {
                "anchors": {"type": "array", "items": _ref("StoredAnchor")},
                "next_since": {
                    "type": ["integer", "null"],
                    "description": "pass as since= for the next page; null on the last page",
                },
            },
        ),
        "CheckpointJson": _obj(
            ["origin", "size", "root", "note", "anchors"],
            {
                "origin": {"type": "string"},
                "size": _int(1),
                "root": _ref("Hash"),
                "note": {"type": "string", "description": "the C2SP signed note"},
                "anchors": {"type": "array", "items": _ref("StoredAnchor")},
            },
        ),
        "Consistency": _obj(
            ["old_size", "new_size", "old_root", "new_root", "proof"],
            {
                "old_size": _int(1),
                "new_size": _int(1),
                "old_root": _ref("Hash"),
                "new_root": _ref("Hash"),
                "proof": _hashes("RFC 9162 consistency proof"),
            },
        ),
        "OperatorKey": _obj(
            ["origin", "name", "vkey", "vkeys"],
            {
                "origin": {"type": "string", "description": "the checkpoints' origin line"},
                "name": {"type": "string"},
                "vkey": {"type": "string", "description": "C2SP note verifier key"},
                "vkeys": {"type": "array", "items": {"type": "string"}},
            },
        ),
        "Health": _obj(["status"], {"status": {"const": "ok"}}),
        "Readiness": _obj(
            ["status", "checks"],
            {
                "status": {"enum": ["ready", "not_ready"]},
                "checks": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        ),
    }


# ------------------------------------------------------------------------------- operations

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
    400: Reason.INVALID_PARAMETER,
    404: Reason.NOT_FOUND,
    410: Reason.ERASED,
    413: Reason.TOO_LARGE,
    500: Reason.INTERNAL,
    503: Reason.DB_UNAVAILABLE,
}


def _problem(status: int) -> dict[str, Any]:
    reason = _PROBLEM_EXAMPLES[status]
    return {
        "description": _PROBLEMS[status],
        "content": {
            "application/problem+json": {
                "schema": _ref("Problem"),
                "example": {
                    "type": "https://cityanchor.example/problems/" + reason,
                    "title": reason.replace("_", " "),
                    "status": status,
                    "detail": "what went wrong, for a human",
                    "reason": reason,
                },
            }
        },
    }


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): _problem(s) for s in (*statuses, 500, 503)}


def _json_ok(schema: str, description: str, example: Any = None, **headers: Any) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": _ref(schema)}
    if example is not None:
        media["example"] = example
    out: dict[str, Any] = {"description": description, "content": {"application/json": media}}
    if headers:
        out["headers"] = headers
    return out


_CACHE_HEADER = {"schema": {"type": "string"}, "required": True, "description": "caching policy"}
_ETAG_HEADER = {
    "schema": {"type": "string", "pattern": '^"[0-9a-f]+"$'},
    "required": True,
    "description": "strong validator: a hash of the body",
}


def _param(
    name: str, where: str, schema: dict[str, Any], description: str, *, required: bool = False
) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": required or where == "path",
        "description": description,
        "schema": schema,
    }


DEVICE_ID = _param(
    "device_id",
    "path",
    {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$", "examples": ["aq-0042"]},
    "registry id of the device (else 400 `device_id_invalid`)",
)


def _paths() -> dict[str, Any]:
    receipt_example = {
        "version": "cityanchor/receipt/v2",
        "reading": {"device_id": "aq-0042", "seq": 7, "format": "jws", "envelope": "ZXlK..."},
        "leaf_hash": EXAMPLE_HASH,
        "batch": {"size": 50, "index": 12, "root": EXAMPLE_HASH, "path": [EXAMPLE_HASH]},
        "log": {"index": 2, "size": 42, "root": EXAMPLE_HASH, "path": [EXAMPLE_HASH]},
        "checkpoint": EXAMPLE_NOTE,
        "anchors": [EXAMPLE_ANCHOR],
        "status": "anchored",
    }
    return {
        "/v1/receipts/{device_id}/{seq}": {
            "get": {
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
                    _param("seq", "path", _int(1), "the reading's seq (else 400)"),
                    _param(
                        "If-None-Match",
                        "header",
                        {"type": "string"},
                        "ETag(s) of a cached copy; 304 when one matches",
                    ),
                ],
                "responses": {
                    "200": _json_ok(
                        "Receipt",
                        "The receipt.",
                        receipt_example,
                        ETag=_ETAG_HEADER,
                        **{"Cache-Control": _CACHE_HEADER},
                    ),
                    "304": {
                        "description": "Not modified: the cached copy is current.",
                        "headers": {"ETag": _ETAG_HEADER, "Cache-Control": _CACHE_HEADER},
                    },
                    **_errors(400, 404, 410),
                },
            }
        },
        "/v1/verify": {
            "post": {
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
                            "schema": _ref("VerifyRequest"),
                            "example": {"receipt": receipt_example},
                        }
                    },
                },
                "responses": {
                    "200": _json_ok(
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
                    **_errors(400, 413),
                },
            }
        },
        "/v1/devices/{device_id}/completeness": {
            "get": {
                "tags": ["proofs"],
                "operationId": "getCompleteness",
                "summary": "Completeness proof of a device's readings",
                "description": "Every stored reading of the device in [from_seq, to_seq] "
                "(to_seq clipped to the device's newest stored seq) with its envelope, leaf "
                "hash, prev, batch path, and each batch's inclusion in the log under one "
                "checkpoint (the newest anchored one covering them, else the newest), plus the "
                "gaps. Check it offline with `cityanchor verify-completeness`: consecutive "
                "readings must chain (`prev` of k+1 = leaf hash of k), so nothing between two "
                f"present readings can be removed or reordered. At most {_MAX_RANGE} seqs per "
                f"request (400 `range_too_large`); without to_seq, {_DEFAULT_RANGE}. Page with "
                "from_seq = previous to_seq + 1.",
                "parameters": [
                    DEVICE_ID,
                    _param("from_seq", "query", _int(1, default=1), "first seq (default 1)"),
                    _param(
                        "to_seq",
                        "query",
                        _int(1),
                        f"last seq (default from_seq + {_DEFAULT_RANGE - 1})",
                    ),
                ],
                "responses": {
                    "200": _json_ok(
                        "CompletenessProof",
                        "The proof (`cityanchor/completeness/v2`).",
                        **{"Cache-Control": _CACHE_HEADER},
                    ),
                    **_errors(400, 404),
                },
            }
        },
        "/v1/batches/{batch_id}": {
            "get": {
                "tags": ["log"],
                "operationId": "getBatch",
                "summary": "A sealed batch and all its leaf hashes",
                "description": "Batches hold at most the configured batch size (a few "
                "thousand), so every leaf hash is returned in batch order, not paginated. "
                "Immutable.",
                "parameters": [_param("batch_id", "path", _int(0), "the batch id")],
                "responses": {
                    "200": _json_ok(
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
                    **_errors(400, 404),
                },
            }
        },
        "/v1/log/batches/{log_index}": {
            "get": {
                "tags": ["log"],
                "operationId": "getBatchAtLogIndex",
                "summary": "The batch at a log index (a receipt's `log.index`)",
                "description": "The same document as `/v1/batches/{batch_id}`, looked up by "
                "the batch's index in the batch log: receipts (`cityanchor/receipt/v2`) name "
                "their batch by `log.index`, which `log.path` proves, not by id. Immutable.",
                "parameters": [
                    _param("log_index", "path", _int(0), "the batch's index in the batch log")
                ],
                "responses": {
                    "200": _json_ok("Batch", "The batch."),
                    **_errors(400, 404),
                },
            }
        },
        "/v1/log/checkpoint": {
            "get": {
                "tags": ["log"],
                "operationId": "getCheckpoint",
                "summary": "The latest (or a given size's) signed checkpoint",
                "description": "The C2SP tlog-checkpoint signed note as `text/plain` (default); "
                "as JSON with `?format=json`, or when `Accept` prefers `application/json` over "
                "`text/plain`. `size` picks the checkpoint of that log size (immutable); the "
                "latest one is `no-cache`.",
                "parameters": [
                    _param("size", "query", _int(1), "log size (default: the latest)"),
                    _param("format", "query", {"enum": ["text", "json"]}, "representation"),
                ],
                "responses": {
                    "200": {
                        "description": "The checkpoint.",
                        "content": {
                            "text/plain": {"schema": {"type": "string"}, "example": EXAMPLE_NOTE},
                            "application/json": {
                                "schema": _ref("CheckpointJson"),
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
                    **_errors(400, 404),
                },
            }
        },
        "/v1/log/consistency": {
            "get": {
                "tags": ["log"],
                "operationId": "getConsistency",
                "summary": "RFC 9162 consistency proof between two log sizes",
                "description": "Proves that the log at `new` extends the log at `old` "
                "(verify with `anchor.merkle.verify_consistency` or `cityanchor "
                "verify-consistency`). 400 when old > new; 404 when new is beyond the log.",
                "parameters": [
                    _param("old", "query", _int(1), "the older size", required=True),
                    _param("new", "query", _int(1), "the newer size (default: the latest)"),
                ],
                "responses": {
                    "200": _json_ok(
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
                    **_errors(400, 404),
                },
            }
        },
        "/v1/anchors": {
            "get": {
                "tags": ["log"],
                "operationId": "listAnchors",
                "summary": "Confirmed on-chain anchors, oldest first",
                "description": "Cursor pagination by log size: a page holds the anchors (every "
                "backend's) of up to `limit` anchored log sizes above `since`; pass "
                "`next_since` as `since` for the next page (null on the last).",
                "parameters": [
                    _param("since", "query", _int(0, default=0), "cursor: log size (exclusive)"),
                    _param(
                        "limit",
                        "query",
                        _int(1, _MAX_LIMIT, default=_DEFAULT_LIMIT),
                        f"log sizes per page (default {_DEFAULT_LIMIT}, max {_MAX_LIMIT})",
                    ),
                ],
                "responses": {
                    "200": _json_ok(
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
                    **_errors(400),
                },
            }
        },
        "/v1/operator-key": {
            "get": {
                "tags": ["log"],
                "operationId": "getOperatorKey",
                "summary": "The operator's checkpoint verifier key",
                "description": "The C2SP note verifier key that signs checkpoints and the "
                "checkpoints' origin line; give it to `cityanchor verify --log-key`. 404 when "
                "this API has no operator key configured.",
                "responses": {
                    "200": _json_ok(
                        "OperatorKey",
                        "The key.",
                        {
                            "origin": "cityanchor.example/log",
                            "name": "cityanchor.example/log",
                            "vkey": "cityanchor.example/log+0a1b2c3d+AU3s...",
                            "vkeys": ["cityanchor.example/log+0a1b2c3d+AU3s..."],
                        },
                    ),
                    **_errors(404),
                },
            }
        },
        "/healthz": {
            "get": {
                "tags": ["operations"],
                "operationId": "healthz",
                "summary": "Liveness: the process is up",
                "responses": {"200": _json_ok("Health", "Up.", {"status": "ok"})},
            }
        },
        "/readyz": {
            "get": {
                "tags": ["operations"],
                "operationId": "readyz",
                "summary": "Readiness: database, every configured chain and the broker reachable",
                "responses": {
                    "200": _json_ok(
                        "Readiness",
                        "Ready.",
                        {"status": "ready", "checks": {"database": "ok", "chain:local": "ok"}},
                    ),
                    "503": _json_ok(
                        "Readiness",
                        "Not ready; each failing dependency says why.",
                        {"status": "not_ready", "checks": {"database": "db_unavailable: ..."}},
                    ),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "tags": ["operations"],
                "operationId": "openapi",
                "summary": "This OpenAPI 3.1 document",
                "responses": {
                    "200": {
                        "description": "The document.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
        "/docs": {
            "get": {
                "tags": ["operations"],
                "operationId": "docs",
                "summary": "This document as a self-contained HTML page",
                "responses": {
                    "200": {
                        "description": "The page.",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }


def _merge_extensions(doc: dict[str, Any]) -> None:
    for name in EXTENSION_MODULES:
        try:
            module = __import__(name, fromlist=["OPENAPI_PATHS"])
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        doc["paths"].update(copy.deepcopy(getattr(module, "OPENAPI_PATHS", {})))
        for section, entries in getattr(module, "OPENAPI_COMPONENTS", {}).items():
            doc["components"].setdefault(section, {}).update(copy.deepcopy(entries))


@functools.cache
def _document() -> dict[str, Any]:
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "info": {
            "title": "cityanchor API",
            "version": __version__,
            "summary": "Receipts and proofs for tamper-evident smart-city sensor data.",
            "description": "Public endpoints need no authentication. Every error is an RFC 9457 "
            "problem document (`application/problem+json`) whose `reason` is a stable code "
            "(docs/reason-codes.md): `not_found` 404, `erased` 410, `device_id_invalid`, "
            "`invalid_parameter`, `range_too_large`, `body_malformed`, `key_invalid` 400, "
            "`method_not_allowed` 405, `too_large` 413, `rate_limited` 429, `db_unavailable`, "
            "`db_busy` 503, `internal`, `db_error`, `log_inconsistent` 500. Integer "
            "parameters are decimal digits only, at most 2^63-1. Lists are cursor-paginated "
            f"with at most {_MAX_LIMIT} items per page.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": [
            {"name": "proofs", "description": "Receipts, verification, completeness"},
            {"name": "log", "description": "Batches, the batch log, checkpoints and anchors"},
            {"name": "operations", "description": "Health, readiness, this description"},
        ],
        "paths": _paths(),
        "components": {"schemas": _schemas()},
    }
    _merge_extensions(doc)
    return doc


def own_paths() -> tuple[str, ...]:
    """The paths this module describes itself (public and operations), not the extensions'."""
    return tuple(_paths())


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (a fresh copy; built once per process)."""
    return copy.deepcopy(_document())


# ------------------------------------------------------------------------------- /docs page

_CSS = """
body{font:15px/1.5 system-ui,sans-serif;margin:0;color:#1d2430;background:#f7f8fa}
header{background:#1d2430;color:#fff;padding:1.2em 2em}header h1{margin:0;font-size:1.5em}
main{max-width:70em;margin:0 auto;padding:1em 2em}nav ul{columns:2;padding-left:1.2em}
section.op{background:#fff;border:1px solid #d8dde6;border-radius:6px;margin:1.2em 0;padding:1em}
.method{display:inline-block;min-width:4em;text-align:center;border-radius:4px;color:#fff;
font-weight:700;padding:.1em .5em;margin-right:.6em}.get{background:#2b7a4b}
.post{background:#2456a6}.put{background:#9a6a00}.delete{background:#a62424}.patch{background:#6b3fa0}
code,pre{font:13px/1.4 ui-monospace,monospace}pre{background:#f1f3f6;padding:.6em;overflow:auto;
border-radius:4px;max-height:24em}table{border-collapse:collapse;width:100%}
td,th{border-bottom:1px solid #e3e6eb;padding:.3em .5em;text-align:left;vertical-align:top}
.status{font-weight:700}details{margin:.4em 0}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _md(value: object) -> str:
    """Escaped text with Markdown code spans (`x`) as <code> (the only markup used here)."""
    return re.sub(r"`([^`<>]+)`", r"<code>\1</code>", _e(value))


def _schema_summary(schema: Mapping[str, Any]) -> str:
    if "$ref" in schema:
        name = str(schema["$ref"]).removeprefix(_REF)
        return f'<a href="#schema-{_e(name)}">{_e(name)}</a>'
    parts = []
    kind = schema.get("type")
    if kind is not None:
        parts.append(" | ".join(kind) if isinstance(kind, list) else str(kind))
    if "enum" in schema:
        parts.append("one of " + ", ".join(json.dumps(v) for v in schema["enum"]))
    for key in ("minimum", "maximum", "default", "pattern"):
        if key in schema:
            parts.append(f"{key} {schema[key]}")
    return _e(", ".join(parts) or "any")


def _pretty(value: Any) -> str:
    return _e(json.dumps(value, indent=2, ensure_ascii=False))


def _render_operation(path: str, method: str, op: Mapping[str, Any]) -> str:
    anchor = _e(op.get("operationId", f"{method}-{path}"))
    out = [
        f'<section class="op" id="{anchor}"><h3><span class="method {_e(method)}">'
        f"{_e(method.upper())}</span><code>{_e(path)}</code></h3>",
        f"<p><strong>{_e(op.get('summary', ''))}</strong></p>",
    ]
    if op.get("description"):
        out.append(f"<p>{_md(op['description'])}</p>")
    params = op.get("parameters", [])
    if params:
        out.append(
            "<h4>Parameters</h4><table><tr><th>name</th><th>in</th><th>required</th>"
            "<th>schema</th><th>description</th></tr>"
        )
        for p in params:
            out.append(
                f"<tr><td><code>{_e(p['name'])}</code></td><td>{_e(p['in'])}</td>"
                f"<td>{'yes' if p.get('required') else 'no'}</td>"
                f"<td>{_schema_summary(p.get('schema', {}))}</td>"
                f"<td>{_md(p.get('description', ''))}</td></tr>"
            )
        out.append("</table>")
    body = op.get("requestBody")
    if body:
        out.append("<h4>Request body</h4>")
        for media, spec in body.get("content", {}).items():
            summary = _schema_summary(spec.get("schema", {}))
            out.append(f"<p><code>{_e(media)}</code>: {summary}</p>")
            if "example" in spec:
                out.append(
                    f"<details><summary>example</summary><pre>{_pretty(spec['example'])}"
                    "</pre></details>"
                )
    out.append(
        "<h4>Responses</h4><table><tr><th>status</th><th>description</th><th>content</th></tr>"
    )
    for status, resp in op.get("responses", {}).items():
        cells = []
        for media, spec in resp.get("content", {}).items():
            cell = f"<code>{_e(media)}</code>: {_schema_summary(spec.get('schema', {}))}"
            if "example" in spec:
                example = spec["example"]
                shown = _e(example) if isinstance(example, str) else _pretty(example)
                cell += f"<details><summary>example</summary><pre>{shown}</pre></details>"
            cells.append(cell)
        headers = ", ".join(_e(h) for h in resp.get("headers", {}))
        if headers:
            cells.append(f"headers: {headers}")
        out.append(
            f'<tr><td class="status">{_e(status)}</td><td>{_md(resp.get("description", ""))}</td>'
            f"<td>{'<br>'.join(cells)}</td></tr>"
        )
    out.append("</table></section>")
    return "\n".join(out)


@functools.cache
def render_docs() -> str:
    """The ``/docs`` page: every operation of :func:`openapi_document`, then every schema."""
    doc = _document()
    info = doc["info"]
    ops = [
        (path, method, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in ("get", "post", "put", "delete", "patch")
    ]
    toc = "".join(
        f'<li><a href="#{_e(op.get("operationId", ""))}"><span class="method {_e(m)}">'
        f"{_e(m.upper())}</span>{_e(p)}</a></li>"
        for p, m, op in ops
    )
    schemas = "".join(
        f'<details id="schema-{_e(name)}"><summary><code>{_e(name)}</code></summary>'
        f"<pre>{_pretty(schema)}</pre></details>"
        for name, schema in doc["components"]["schemas"].items()
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(info['title'])} {_e(info['version'])}</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{_CSS}</style></head><body><header><h1>{_e(info['title'])} "
        f"<small>{_e(info['version'])}</small></h1><p>{_e(info['summary'])}</p></header><main>"
        f"<p>{_md(info['description'])}</p>"
        '<p>Machine-readable: <a href="/openapi.json">/openapi.json</a> (OpenAPI 3.1).</p>'
        f"<nav><h2>Endpoints</h2><ul>{toc}</ul></nav><h2>Operations</h2>"
        + "\n".join(_render_operation(p, m, op) for p, m, op in ops)
        + f"<h2>Schemas</h2>{schemas}</main></body></html>"
    )
