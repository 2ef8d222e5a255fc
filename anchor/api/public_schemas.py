"""The component schemas of the public routes' OpenAPI description, and the receipt example
that two operations share.

The receipt schema is ``anchor/schemas/receipt-v2.schema.json`` itself, its ``$defs`` turned
into components (``ReceiptBatch``, ...), so the document cannot drift from the schema the
receipts are checked against. The operations that use these schemas are declared next to their
handlers (:mod:`anchor.api.public_proofs`, :mod:`anchor.api.public_log`).
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from typing import Any

from anchor.api.public_http import MAX_COMPLETENESS_RANGE
from anchor.api.spec import (
    EXAMPLE_ANCHOR,
    EXAMPLE_HASH,
    EXAMPLE_NOTE,
    REF,
    hashes,
    int_schema,
    obj,
    ref,
)

__all__ = ["PUBLIC_SCHEMAS", "RECEIPT_EXAMPLE"]


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
# The schema file's description speaks to its maintainers; the API's readers get this one.
_RECEIPT["description"] = (
    "Everything needed to verify one signed sensor reading offline. The batch-log leaf is "
    "SHA-256(0x00 || uint64_be(batch.size) || batch.root), so `log.path` binds `batch.size`; the "
    "batch is identified by `log.index`. Version `cityanchor/receipt/v1` is retired and refused "
    "(reason `receipt_version_retired`). Verifiers are stricter than this schema in three ways: "
    "integers are written without a fraction or exponent; `batch.index` < `batch.size` and "
    "`log.index` < `log.size`; `block_time` is a real calendar date and time with an offset of "
    "at most 23:59. Unknown fields are allowed everywhere (top-level ones are kept, nested ones "
    "ignored) except `batch.id`, which v2 refuses: nothing binds it to the proofs."
)

PUBLIC_SCHEMAS: dict[str, Any] = {
    **_RECEIPT_DEFS,
    "Receipt": _RECEIPT,
    "Check": obj(
        ["name", "status", "reason", "detail"],
        {
            "name": {
                "type": "string",
                "description": "receipt, envelope, signature, leaf_hash, batch_path, "
                "log_path, checkpoint, checkpoint_signature, witnesses, anchors",
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
        [
            "device_id",
            "seq",
            "valid",
            "fully_verified",
            "device_key_source",
            "checks",
            "witness_quorum",
            "cosigners",
        ],
        {
            "device_id": {"type": ["string", "null"]},
            "seq": {"type": ["integer", "null"]},
            "valid": {"type": "boolean", "description": "no check failed"},
            "fully_verified": {"type": "boolean", "description": "every check passed"},
            "device_key_source": {"enum": ["request", "registry", "none"]},
            "checks": {"type": "array", "items": ref("Check")},
            "witness_quorum": {
                "type": "integer",
                "minimum": 0,
                "description": "the service's witness quorum (0: no witness configured)",
            },
            "cosigners": {
                "type": "array",
                "description": "the configured witnesses that validly cosigned the "
                "receipt's checkpoint",
                "items": obj(
                    ["witness", "key_id", "timestamp"],
                    {
                        "witness": {"type": "string", "description": "the witness key's name"},
                        "key_id": {"type": "string", "pattern": "^[0-9a-f]{8}$"},
                        "timestamp": {
                            "type": "integer",
                            "minimum": 1,
                            "description": "the cosignature's time, POSIX seconds",
                        },
                    },
                ),
            },
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
            "latest_seq": int_schema(0, description="the device's newest stored seq (a claim)"),
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
"""The ``components/schemas`` the public operations refer to (besides the shared ones of
:data:`anchor.api.spec.SHARED_SCHEMAS`)."""

RECEIPT_EXAMPLE = {
    "version": "cityanchor/receipt/v2",
    "reading": {"device_id": "aq-0042", "seq": 7, "format": "jws", "envelope": "ZXlK..."},
    "leaf_hash": EXAMPLE_HASH,
    "batch": {"size": 50, "index": 12, "root": EXAMPLE_HASH, "path": [EXAMPLE_HASH]},
    "log": {"index": 2, "size": 42, "root": EXAMPLE_HASH, "path": [EXAMPLE_HASH]},
    "checkpoint": EXAMPLE_NOTE,
    "anchors": [EXAMPLE_ANCHOR],
    "status": "anchored",
}
"""A receipt as `GET /v1/receipts/...` serves it and `POST /v1/verify` takes it."""
