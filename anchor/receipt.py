"""The ``cityanchor/receipt/v2`` document: everything needed to verify one reading offline.

CONSENSUS-CRITICAL. Receipts are handed to city applications and auditors and kept by them for
years; DESIGN.md "Receipt" is a byte-exact contract. A change to a field's name, encoding or
meaning here breaks receipts already issued, so anything new goes in as an extra field or under
a new version string.

The JSON shape (DESIGN.md "Receipt"; JSON Schema in ``docs/receipt-v2.schema.json``, packaged as
``anchor/schemas/receipt-v2.schema.json``)::

    {
      "version": "cityanchor/receipt/v2",
      "reading": {"device_id", "seq", "format": "cose-sign1" | "jws",
                  "envelope": base64url without padding (RFC 4648 section 5)},
      "leaf_hash": hex,
      "batch": {"size", "index", "root": hex, "path": [hex, ...]},
      "log": {"index", "size", "root": hex, "path": [hex, ...]},
      "checkpoint": the C2SP signed checkpoint note,
      "anchors": [{"chain_id", "contract": "0x"+40 hex, "tx_hash": "0x"+64 hex,
                   "block_number", "block_time": RFC 3339}],
      "status": "sealed" | "anchored" | "erased"
    }

Every hash is 64 lowercase hex digits (32 bytes); every integer is a JSON integer in
``[0, 2**64)`` (``seq`` and sizes from 1); the envelope is base64url without padding, in its
canonical spelling, and empty only when ``status`` is "erased" (the operator erased the
reading's bytes under privacy law; ``leaf_hash`` and both paths still prove its place).
``contract`` may be EIP-55 mixed case (kept verbatim; its checksum needs Keccak-256, which
this module does not carry). ``status`` "anchored" needs at least one anchor.

Forward compatibility ("Extra fields may be added; these keep their meaning"): unknown top-level
fields are kept in :attr:`Receipt.extra` and written back after the known ones; unknown fields
inside ``reading``, ``batch``, ``log`` and anchors are ignored, with one exception:
``batch.id`` is refused. v1 carried it, nothing ever bound it to the proofs, and a v2 verifier
must not show a number an attacker can change at will (the batch is identified by
``log.index``, which ``log.path`` proves).

Versions. v2 differs from v1 only in the batch-log leaf, which binds the batch size
(``SHA-256(0x00 || uint64_be(batch.size) || batch.root)``, see
:func:`anchor.merkle.log_leaf_data`), and in dropping ``batch.id``. A v1 receipt's log path
proves only ``batch.root``, so its ``batch.size`` could be lowered without any check failing;
v1 receipts are therefore refused, with the reason ``receipt_version_retired``.

This module checks structure only. Whether the paths lead to the roots, the checkpoint is
signed and the chain holds the root is :mod:`anchor.verify`'s job; in particular ``checkpoint``
is only required to be a non-empty string here, so that a verifier can report a bad checkpoint
as its own failed check.

Errors are :class:`~anchor.errors.ReceiptError` whose message starts with the JSON path of the
offending field (``batch.path[2]: not 64 lowercase hex chars``) and whose ``reason`` is one of:

``receipt_malformed``
    Not JSON, duplicate keys, NaN, a missing or ill-typed field, a bad encoding or range.
``receipt_version_retired``
    ``version`` is ``cityanchor/receipt/v1``: a retired format that this verifier refuses.
``receipt_version_unsupported``
    ``version`` is any other string than ``cityanchor/receipt/v2`` (a newer receipt, say).
``receipt_too_large``
    The JSON text is over :data:`MAX_RECEIPT_SIZE` bytes.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from anchor import wire
from anchor.device_id import DEVICE_ID_PATTERN, DEVICE_ID_RE
from anchor.errors import Reason, ReceiptError
from anchor.merkle import MAX_PROOF_LENGTH
from anchor.wire import FieldReader, JsonRejected, b64url_encode, strict_loads, type_name

__all__ = [
    "FORMATS",
    "MAX_ANCHORS",
    "MAX_RECEIPT_SIZE",
    "RECEIPT_VERSION",
    "RETIRED_VERSIONS",
    "STATUSES",
    "AnchorRecord",
    "BatchProof",
    "LogProof",
    "Receipt",
    "ReceiptError",
    "dumps_receipt",
    "loads_receipt",
    "receipt_from_dict",
    "receipt_to_dict",
]

RECEIPT_VERSION = "cityanchor/receipt/v2"
RETIRED_VERSIONS: Mapping[str, str] = MappingProxyType(
    {
        "cityanchor/receipt/v1": (
            "cityanchor/receipt/v1 receipts are refused: their batch-log leaf does not bind "
            "batch.size (and batch.id is bound by nothing), so a v1 receipt can be altered "
            "without any check failing; only cityanchor/receipt/v2 receipts are verified "
            '(docs/verifier-guide.md, "Receipt versions")'
        ),
    }
)
"""Receipt versions that were issued once and are refused now, with the reason why."""
STATUSES = ("sealed", "anchored", "erased")
"""Receipt states: in a sealed batch and the log; anchored on a chain; reading erased."""
FORMATS = ("cose-sign1", "jws")
"""Envelope formats (DESIGN.md "Envelope wire format"), as ``anchor.envelope`` names them."""

MAX_RECEIPT_SIZE = 1 << 20
# Deep enough for any extension field; json.loads must never recurse further (see anchor.wire).
MAX_JSON_DEPTH = 32
"""Largest receipt JSON accepted, in UTF-8 bytes."""
MAX_ANCHORS = 16
"""Most anchor records in one receipt (dual anchoring needs two)."""
MAX_UINT64 = wire.MAX_UINT64
# Bounds a hostile extra field; far deeper than any honest one.
MAX_EXTRA_DEPTH = 32

HASH_SIZE = 32
_TOP_KEYS = (
    "version",
    "reading",
    "leaf_hash",
    "batch",
    "log",
    "checkpoint",
    "anchors",
    "status",
)
_ANCHOR_KEYS = ("chain_id", "contract", "tx_hash", "block_number", "block_time")
_DEVICE_ID = DEVICE_ID_RE  # the one rule: anchor.device_id
_CONTRACT = re.compile(r"0x[0-9a-fA-F]{40}")
_TX_HASH = re.compile(r"0x[0-9a-f]{64}")
# RFC 3339 section 5.6 date-time, with the upper-case "T" and "Z" that every producer writes.
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]{1,9})?"
    r"(Z|[+-]([0-9]{2}):([0-9]{2}))"
)


# The typed field readers are anchor.wire's, shared with completeness proofs (one set of
# messages); "receipt_malformed" unless a caller names another reason.
_READ = FieldReader(ReceiptError)
_fail = _READ.fail
_type_name = type_name
_uint = _READ.uint
_text = _READ.text
_object = _READ.obj
_member = _READ.member
_hex32 = _READ.hex32
_hex_path = _READ.hex_path
_b64url = _READ.b64url
_b64url_encode = b64url_encode


def _hash(value: object, path: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        _fail(path, f"expected {HASH_SIZE} bytes")
    return value


def _hashes(value: object, path: str) -> tuple[bytes, ...]:
    if isinstance(value, bytes | str) or not isinstance(value, Sequence):
        _fail(path, "expected a sequence of hashes")
    if len(value) > MAX_PROOF_LENGTH:
        _fail(path, f"{len(value)} hashes, more than any tree of 2**64 leaves needs")
    return tuple(_hash(h, f"{path}[{i}]") for i, h in enumerate(value))


def _check_anchor(fields: Mapping[str, object], path: str) -> None:
    """Check the five anchor fields, named by JSON key, reporting under ``path``."""
    _uint(fields["chain_id"], f"{path}.chain_id", 1)
    if _CONTRACT.fullmatch(_text(fields["contract"], f"{path}.contract")) is None:
        _fail(f"{path}.contract", "not '0x' followed by 40 hex digits")
    if _TX_HASH.fullmatch(_text(fields["tx_hash"], f"{path}.tx_hash")) is None:
        _fail(f"{path}.tx_hash", "not '0x' followed by 64 lowercase hex digits")
    _uint(fields["block_number"], f"{path}.block_number")
    block_time = _text(fields["block_time"], f"{path}.block_time")
    _rfc3339(block_time, f"{path}.block_time")


def _rfc3339(value: str, path: str) -> None:
    m = _RFC3339.fullmatch(value)
    if m is None:
        _fail(path, f"{value!r} is not an RFC 3339 date-time like 2026-01-31T12:00:00Z")
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    try:
        dt.datetime(year, month, day, hour, minute, second)
    except ValueError as exc:
        _fail(path, f"{value!r} is not a real date and time ({exc})")
    if m.group(9) is not None and (int(m.group(9)) > 23 or int(m.group(10)) > 59):
        _fail(path, f"{value!r} has an impossible UTC offset")


def _check_extra_value(value: object, path: str, depth: int) -> None:
    # Extra fields must survive a JSON round trip unchanged, so only JSON's own types pass.
    if depth > MAX_EXTRA_DEPTH:
        _fail(path, f"nests deeper than {MAX_EXTRA_DEPTH}")
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            _fail(path, "NaN and infinities are not JSON")
        return
    if isinstance(value, str):
        _text(value, path)
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_extra_value(item, f"{path}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            _text(key, f"{path} (a key)")
            _check_extra_value(item, f"{path}.{key}", depth + 1)
        return
    _fail(path, f"{type(value).__name__} is not a JSON value")


@dataclass(frozen=True, slots=True)
class AnchorRecord:
    """One on-chain anchor of ``log.root``: chain, AnchorRegistry address, transaction, block.

    ``contract`` is ``"0x"`` + 40 hex digits (any case), ``tx_hash`` ``"0x"`` + 64 lowercase hex
    digits, ``block_time`` an RFC 3339 date-time string kept verbatim. Raises ``ReceiptError``.
    """

    chain_id: int
    contract: str
    tx_hash: str
    block_number: int
    block_time: str

    def __post_init__(self) -> None:
        _check_anchor(
            {
                "chain_id": self.chain_id,
                "contract": self.contract,
                "tx_hash": self.tx_hash,
                "block_number": self.block_number,
                "block_time": self.block_time,
            },
            "anchor",
        )


@dataclass(frozen=True, slots=True)
class BatchProof:
    """The reading's place in its batch: RFC 9162 inclusion of ``leaf_hash`` under ``root``.

    Requires ``0 <= index < size`` and 32-byte hashes; ``path`` is kept as a tuple. Whether the
    path is right is for the verifier (``size`` is bound by the log path: it is in the log
    leaf). The batch has no id here: ``log.index`` identifies it. Raises ``ReceiptError``.
    """

    size: int
    index: int
    root: bytes
    path: tuple[bytes, ...]

    def __post_init__(self) -> None:
        _uint(self.size, "batch.size", 1)
        _uint(self.index, "batch.index")
        if self.index >= self.size:
            _fail("batch.index", f"{self.index} is not below batch.size {self.size}")
        _hash(self.root, "batch.root")
        object.__setattr__(self, "path", _hashes(self.path, "batch.path"))


@dataclass(frozen=True, slots=True)
class LogProof:
    """The batch's place in the batch log: inclusion of the log leaf
    ``SHA-256(0x00 || uint64_be(batch.size) || batch.root)``.

    ``root`` is the log root at ``size``, the one the checkpoint signs and the chain anchors.
    Requires ``0 <= index < size`` and 32-byte hashes. Raises ``ReceiptError``.
    """

    index: int
    size: int
    root: bytes
    path: tuple[bytes, ...]

    def __post_init__(self) -> None:
        _uint(self.index, "log.index")
        _uint(self.size, "log.size", 1)
        if self.index >= self.size:
            _fail("log.index", f"{self.index} is not below log.size {self.size}")
        _hash(self.root, "log.root")
        object.__setattr__(self, "path", _hashes(self.path, "log.path"))


@dataclass(frozen=True, slots=True)
class Receipt:
    """A ``cityanchor/receipt/v2`` receipt, with raw bytes where the JSON has hex or base64.

    ``device_id``, ``seq``, ``format`` and ``envelope`` make up the JSON ``reading``. ``extra``
    holds unknown top-level fields (read-only; never one of the known names). Construction
    validates every field, naming it by its JSON path, and raises ``ReceiptError``.
    """

    device_id: str
    seq: int
    format: str
    envelope: bytes
    leaf_hash: bytes
    batch: BatchProof
    log: LogProof
    checkpoint: str
    anchors: tuple[AnchorRecord, ...] = ()
    status: str = "sealed"
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if _DEVICE_ID.fullmatch(_text(self.device_id, "reading.device_id")) is None:
            _fail("reading.device_id", f"does not match {DEVICE_ID_PATTERN}")
        _uint(self.seq, "reading.seq", 1)
        if self.format not in FORMATS:
            _fail("reading.format", f"{self.format!r} is not one of {', '.join(FORMATS)}")
        # Only an erased reading's receipt may lack its envelope (its leaf hash still proves
        # its place in the batch).
        if not isinstance(self.envelope, bytes) or (not self.envelope and self.status != "erased"):
            _fail("reading.envelope", "expected non-empty bytes")
        _hash(self.leaf_hash, "leaf_hash")
        if not isinstance(self.batch, BatchProof):
            _fail("batch", f"expected a BatchProof, got {type(self.batch).__name__}")
        if not isinstance(self.log, LogProof):
            _fail("log", f"expected a LogProof, got {type(self.log).__name__}")
        if not _text(self.checkpoint, "checkpoint"):
            _fail("checkpoint", "is empty")
        anchors: object = self.anchors  # callers may pass a list; typed as a tuple
        if isinstance(anchors, str) or not isinstance(anchors, Sequence):
            _fail("anchors", "expected a sequence of AnchorRecord")
        if len(anchors) > MAX_ANCHORS:
            _fail("anchors", f"{len(anchors)} anchors, more than {MAX_ANCHORS}")
        for i, a in enumerate(anchors):
            if not isinstance(a, AnchorRecord):
                _fail(f"anchors[{i}]", f"expected an AnchorRecord, got {type(a).__name__}")
        object.__setattr__(self, "anchors", tuple(anchors))
        if self.status not in STATUSES:
            _fail("status", f"{self.status!r} is not one of {', '.join(STATUSES)}")
        if self.status == "anchored" and not self.anchors:
            _fail("status", "'anchored' but anchors is empty")
        if not isinstance(self.extra, Mapping):
            _fail("extra", f"expected a mapping, got {type(self.extra).__name__}")
        for key, value in self.extra.items():
            _text(key, "(extra key)")
            if key in _TOP_KEYS:
                _fail(key, "is a receipt field, it cannot be an extra field too")
            _check_extra_value(value, key, 1)
        object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))


def receipt_to_dict(receipt: Receipt) -> dict[str, Any]:
    """The receipt as JSON-ready data, keys in DESIGN.md order, then the extra fields."""
    out: dict[str, Any] = {
        "version": RECEIPT_VERSION,
        "reading": {
            "device_id": receipt.device_id,
            "seq": receipt.seq,
            "format": receipt.format,
            "envelope": _b64url_encode(receipt.envelope),
        },
        "leaf_hash": receipt.leaf_hash.hex(),
        "batch": {
            "size": receipt.batch.size,
            "index": receipt.batch.index,
            "root": receipt.batch.root.hex(),
            "path": [h.hex() for h in receipt.batch.path],
        },
        "log": {
            "index": receipt.log.index,
            "size": receipt.log.size,
            "root": receipt.log.root.hex(),
            "path": [h.hex() for h in receipt.log.path],
        },
        "checkpoint": receipt.checkpoint,
        "anchors": [
            {
                "chain_id": a.chain_id,
                "contract": a.contract,
                "tx_hash": a.tx_hash,
                "block_number": a.block_number,
                "block_time": a.block_time,
            }
            for a in receipt.anchors
        ],
        "status": receipt.status,
    }
    for key, value in receipt.extra.items():
        out[key] = copy.deepcopy(value)
    return out


def receipt_from_dict(data: Mapping[str, Any]) -> Receipt:
    """Build a :class:`Receipt` from parsed JSON, checking every field.

    Raises ``ReceiptError``; the message starts with the JSON path of the first bad field.
    """
    doc = _object(data, "$")
    version = _member(doc, "version", "")
    if not isinstance(version, str):
        _fail("version", f"expected a string, got {_type_name(version)}")
    if version in RETIRED_VERSIONS:
        _fail("version", RETIRED_VERSIONS[version], reason=Reason.RECEIPT_VERSION_RETIRED)
    if version != RECEIPT_VERSION:
        _fail(
            "version",
            f"{version[:64]!r} is not {RECEIPT_VERSION!r}",
            reason=Reason.RECEIPT_VERSION_UNSUPPORTED,
        )
    reading = _object(_member(doc, "reading", ""), "reading")
    device_id = _member(reading, "device_id", "reading")
    seq = _member(reading, "seq", "reading")
    fmt = _member(reading, "format", "reading")
    if not isinstance(fmt, str):
        _fail("reading.format", f"expected a string, got {_type_name(fmt)}")
    raw_envelope = _member(reading, "envelope", "reading")
    # "" is the envelope of an erased reading; Receipt refuses it with any other status.
    erased = raw_envelope == "" and doc.get("status") == "erased"
    envelope = b"" if erased else _b64url(raw_envelope, "reading.envelope")
    leaf = _hex32(_member(doc, "leaf_hash", ""), "leaf_hash")

    b = _object(_member(doc, "batch", ""), "batch")
    if "id" in b:
        _fail(
            "batch.id",
            "is not part of cityanchor/receipt/v2 (nothing binds it; the batch is identified "
            "by log.index)",
        )
    batch = BatchProof(
        size=_member(b, "size", "batch"),
        index=_member(b, "index", "batch"),
        root=_hex32(_member(b, "root", "batch"), "batch.root"),
        path=_hex_path(_member(b, "path", "batch"), "batch.path"),
    )
    lg = _object(_member(doc, "log", ""), "log")
    log = LogProof(
        index=_member(lg, "index", "log"),
        size=_member(lg, "size", "log"),
        root=_hex32(_member(lg, "root", "log"), "log.root"),
        path=_hex_path(_member(lg, "path", "log"), "log.path"),
    )
    checkpoint = _member(doc, "checkpoint", "")

    raw_anchors = _READ.array(_member(doc, "anchors", ""), "anchors", MAX_ANCHORS, "anchors")
    anchors = []
    for i, item in enumerate(raw_anchors):
        path = f"anchors[{i}]"
        a = _object(item, path)
        fields = {k: _member(a, k, path) for k in _ANCHOR_KEYS}
        # Checked here with the index in the path; AnchorRecord re-checks without it.
        _check_anchor(fields, path)
        anchors.append(AnchorRecord(**fields))
    status = _member(doc, "status", "")
    if not isinstance(status, str):
        _fail("status", f"expected a string, got {_type_name(status)}")

    extra = {k: v for k, v in doc.items() if k not in _TOP_KEYS}
    return Receipt(
        device_id=device_id,
        seq=seq,
        format=fmt,
        envelope=envelope,
        leaf_hash=leaf,
        batch=batch,
        log=log,
        checkpoint=checkpoint,
        anchors=tuple(anchors),
        status=status,
        extra=extra,
    )


def dumps_receipt(receipt: Receipt) -> str:
    """The receipt as JSON text: two-space indent, DESIGN.md key order, UTF-8, final newline.

    Raises ``ReceiptError`` (``receipt_too_large``) when the text would exceed
    :data:`MAX_RECEIPT_SIZE`, so that whatever this writes :func:`loads_receipt` reads back.
    """
    try:
        text = json.dumps(receipt_to_dict(receipt), indent=2, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        # Only an extra value built around __post_init__ can get here.
        raise ReceiptError(f"$: cannot be written as JSON ({exc})") from exc
    text += "\n"
    if len(text.encode("utf-8")) > MAX_RECEIPT_SIZE:
        _fail(
            "$", f"receipt JSON exceeds {MAX_RECEIPT_SIZE} bytes", reason=Reason.RECEIPT_TOO_LARGE
        )
    return text


def loads_receipt(text: str | bytes) -> Receipt:
    """Parse receipt JSON (``str``, or ``bytes`` in UTF-8) and check it as
    :func:`receipt_from_dict` does.

    Rejects more than :data:`MAX_RECEIPT_SIZE` bytes (``receipt_too_large``), duplicate object
    keys, ``NaN``/``Infinity`` and anything that is not RFC 8259 JSON (``receipt_malformed``).
    """
    if isinstance(text, bytes | bytearray | memoryview):
        raw = bytes(text)
        if len(raw) > MAX_RECEIPT_SIZE:
            _fail("$", f"receipt exceeds {MAX_RECEIPT_SIZE} bytes", reason=Reason.RECEIPT_TOO_LARGE)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            _fail("$", f"not UTF-8 ({exc.reason} at byte {exc.start})")
    elif not isinstance(text, str):
        _fail("$", f"expected JSON text, got {type(text).__name__}")
    # Characters never outnumber bytes, so the cheap test goes first.
    if (
        len(text) > MAX_RECEIPT_SIZE
        or len(text.encode("utf-8", "surrogatepass")) > MAX_RECEIPT_SIZE
    ):
        _fail("$", f"receipt exceeds {MAX_RECEIPT_SIZE} bytes", reason=Reason.RECEIPT_TOO_LARGE)
    try:
        data = strict_loads(text, max_depth=MAX_JSON_DEPTH)
    except JsonRejected as exc:
        _fail("$", str(exc))
    return receipt_from_dict(data)
