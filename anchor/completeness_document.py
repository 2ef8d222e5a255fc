"""The ``cityanchor/completeness/v2`` document: its values and its JSON codec.

CONSENSUS-CRITICAL in the same sense as :mod:`anchor.completeness`, whose lower half this is: the
shape and bounds read here are what a completeness proof may say (the JSON shape is in that
module's docstring). :func:`completeness_to_dict` writes a :class:`CompletenessProof`;
:func:`loads_completeness` and :func:`completeness_from_dict` read one strictly and raise
:class:`CompletenessError` (``completeness_malformed``, ``completeness_version_unsupported``)
naming the JSON path of the first bad field. Building and checking a proof are
:mod:`anchor.completeness`'s, which imports this module and re-exports its public names; this
module imports nothing of it.

Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from anchor import merkle
from anchor.device_id import DEVICE_ID_PATTERN, DEVICE_ID_RE
from anchor.envelope import FORMAT_COSE, FORMAT_JWS
from anchor.errors import AnchorError, Reason
from anchor.keys import b64url_encode
from anchor.receipt import MAX_ANCHORS, AnchorRecord
from anchor.wire import FieldReader, JsonRejected, strict_loads

__all__ = [
    "COMPLETENESS_VERSION",
    "MAX_COMPLETENESS_SIZE",
    "MAX_JSON_DEPTH",
    "MAX_READINGS",
    "BatchEntry",
    "CompletenessError",
    "CompletenessProof",
    "ReadingEntry",
    "completeness_from_dict",
    "completeness_to_dict",
    "loads_completeness",
]

COMPLETENESS_VERSION = "cityanchor/completeness/v2"
_RETIRED = {
    "cityanchor/completeness/v1": (
        "cityanchor/completeness/v1 proofs are refused: their batch-log leaf does not bind "
        "the batch size; only cityanchor/completeness/v2 proofs are verified"
    ),
}
MAX_READINGS = 100_000
"""Most readings one proof document may hold (the API hands out at most 1000 per request)."""
MAX_COMPLETENESS_SIZE = 256 << 20
"""Largest proof document :func:`loads_completeness` reads (as the CLI's file limit)."""
MAX_JSON_DEPTH = 8
"""The proof nests 4 deep; anything deeper is refused before ``json.loads`` recurses."""

_DEVICE_ID = DEVICE_ID_RE  # the one rule: anchor.device_id
_FORMATS = (FORMAT_COSE, FORMAT_JWS)


class CompletenessError(AnchorError):
    """A completeness proof is malformed or does not prove what it claims (see the module)."""

    reason = Reason.COMPLETENESS_MALFORMED


# ------------------------------------------------------------------------------------ values


@dataclass(frozen=True, slots=True)
class ReadingEntry:
    """One stored reading of the range. ``envelope`` and ``prev`` are None once erased."""

    seq: int
    format: str
    envelope: bytes | None
    leaf_hash: bytes
    prev: bytes | None
    batch_id: int
    batch_index: int
    batch_path: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class BatchEntry:
    """A batch holding readings of the range: its root and its place in the batch log."""

    id: int
    size: int
    root: bytes
    log_index: int
    log_path: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class CompletenessProof:
    """A ``cityanchor/completeness/v2`` document with raw bytes for hex and base64."""

    device_id: str
    from_seq: int
    to_seq: int
    latest_seq: int
    readings: tuple[ReadingEntry, ...]
    batches: tuple[BatchEntry, ...]
    gaps: tuple[tuple[int, int], ...]
    log_size: int
    log_root: bytes
    checkpoint: str
    anchors: tuple[AnchorRecord, ...] = ()
    status: str = "sealed"
    hash_scheme: str = merkle.SHA256.name


# -------------------------------------------------------------------------------------- JSON


def completeness_to_dict(proof: CompletenessProof) -> dict[str, Any]:
    """The proof as JSON-ready data (the shape in the module docstring)."""
    return {
        "version": COMPLETENESS_VERSION,
        "device_id": proof.device_id,
        "from_seq": proof.from_seq,
        "to_seq": proof.to_seq,
        "latest_seq": proof.latest_seq,
        "hash_scheme": proof.hash_scheme,
        "readings": [
            {
                "seq": r.seq,
                "format": r.format,
                "envelope": None if r.envelope is None else b64url_encode(r.envelope),
                "leaf_hash": r.leaf_hash.hex(),
                "prev": None if r.prev is None else r.prev.hex(),
                "batch_id": r.batch_id,
                "batch_index": r.batch_index,
                "batch_path": [h.hex() for h in r.batch_path],
            }
            for r in proof.readings
        ],
        "batches": [
            {
                "id": b.id,
                "size": b.size,
                "root": b.root.hex(),
                "log_index": b.log_index,
                "log_path": [h.hex() for h in b.log_path],
            }
            for b in proof.batches
        ],
        "gaps": [{"from": a, "to": b} for a, b in proof.gaps],
        "log": {"size": proof.log_size, "root": proof.log_root.hex()},
        "checkpoint": proof.checkpoint,
        "anchors": [
            {
                "chain_id": a.chain_id,
                "contract": a.contract,
                "tx_hash": a.tx_hash,
                "block_number": a.block_number,
                "block_time": a.block_time,
            }
            for a in proof.anchors
        ],
        "status": proof.status,
    }


# The typed field readers are anchor.wire's, shared with receipts (one set of messages);
# "completeness_malformed" unless a caller names another reason.
_READ = FieldReader(CompletenessError)
_fail = _READ.fail
_get = _READ.get
_uint = _READ.uint
_hex32 = _READ.hex32
_path = _READ.hex_path
_list = _READ.array
_b64url = _READ.b64url


def loads_completeness(raw: bytes) -> CompletenessProof:
    """Parse proof JSON (UTF-8 bytes) with bounds, then check it as :func:`completeness_from_dict`.

    Refuses more than :data:`MAX_COMPLETENESS_SIZE` bytes, nesting deeper than
    :data:`MAX_JSON_DEPTH` (counted before ``json.loads`` recurses: a process that imported web3
    runs with a recursion limit high enough to overflow the C stack), duplicate keys and
    ``NaN``/``Infinity``. Raises ``CompletenessError`` (``completeness_malformed``).
    """
    if len(raw) > MAX_COMPLETENESS_SIZE:
        _fail("$", f"document exceeds {MAX_COMPLETENESS_SIZE} bytes")
    try:
        data = strict_loads(raw.decode("utf-8"), max_depth=MAX_JSON_DEPTH)
    except UnicodeDecodeError as exc:
        _fail("$", f"not UTF-8 ({exc.reason} at byte {exc.start})")
    except JsonRejected as exc:
        _fail("$", str(exc))
    return completeness_from_dict(data)


def completeness_from_dict(data: object) -> CompletenessProof:
    """Parse a proof document (parsed JSON), checking its shape and bounds.

    Raises ``CompletenessError`` (``completeness_malformed``, or
    ``completeness_version_unsupported``) naming the JSON path of the first bad field.
    """
    version = _get(data, "version", "")
    if isinstance(version, str) and version in _RETIRED:
        _fail("version", _RETIRED[version], Reason.COMPLETENESS_VERSION_UNSUPPORTED)
    if version != COMPLETENESS_VERSION:
        _fail("version", f"{str(version)[:64]!r} is not {COMPLETENESS_VERSION!r}",
              Reason.COMPLETENESS_VERSION_UNSUPPORTED)  # fmt: skip
    device_id = _get(data, "device_id", "")
    if not isinstance(device_id, str) or _DEVICE_ID.fullmatch(device_id) is None:
        _fail("device_id", f"does not match {DEVICE_ID_PATTERN}")
    from_seq = _uint(_get(data, "from_seq", ""), "from_seq", 1)
    to_seq = _uint(_get(data, "to_seq", ""), "to_seq")
    if to_seq < from_seq - 1:
        _fail("to_seq", f"{to_seq} is below from_seq - 1")
    latest_seq = _uint(_get(data, "latest_seq", ""), "latest_seq")
    scheme = _get(data, "hash_scheme", "")
    if not isinstance(scheme, str):
        _fail("hash_scheme", "expected a string")
    readings = []
    for i, item in enumerate(_list(_get(data, "readings", ""), "readings", MAX_READINGS)):
        p = f"readings[{i}]"
        fmt = _get(item, "format", p)
        if fmt not in _FORMATS:
            _fail(f"{p}.format", f"not one of {', '.join(_FORMATS)}")
        raw_env = _get(item, "envelope", p)
        raw_prev = _get(item, "prev", p)
        readings.append(
            ReadingEntry(
                seq=_uint(_get(item, "seq", p), f"{p}.seq", 1),
                format=fmt,
                envelope=None if raw_env is None else _b64url(raw_env, f"{p}.envelope"),
                leaf_hash=_hex32(_get(item, "leaf_hash", p), f"{p}.leaf_hash"),
                prev=None if raw_prev is None else _hex32(raw_prev, f"{p}.prev"),
                batch_id=_uint(_get(item, "batch_id", p), f"{p}.batch_id"),
                batch_index=_uint(_get(item, "batch_index", p), f"{p}.batch_index"),
                batch_path=_path(_get(item, "batch_path", p), f"{p}.batch_path"),
            )
        )
    batches = []
    for i, item in enumerate(_list(_get(data, "batches", ""), "batches", MAX_READINGS)):
        p = f"batches[{i}]"
        batches.append(
            BatchEntry(
                id=_uint(_get(item, "id", p), f"{p}.id"),
                size=_uint(_get(item, "size", p), f"{p}.size", 1),
                root=_hex32(_get(item, "root", p), f"{p}.root"),
                log_index=_uint(_get(item, "log_index", p), f"{p}.log_index"),
                log_path=_path(_get(item, "log_path", p), f"{p}.log_path"),
            )
        )
    gaps = []
    for i, item in enumerate(_list(_get(data, "gaps", ""), "gaps", MAX_READINGS + 1)):
        p = f"gaps[{i}]"
        gaps.append(
            (_uint(_get(item, "from", p), f"{p}.from", 1), _uint(_get(item, "to", p), f"{p}.to"))
        )
    log = _get(data, "log", "")
    checkpoint = _get(data, "checkpoint", "")
    if not isinstance(checkpoint, str) or not checkpoint:
        _fail("checkpoint", "expected a non-empty string")
    anchors = []
    for i, item in enumerate(_list(_get(data, "anchors", ""), "anchors", MAX_ANCHORS)):
        p = f"anchors[{i}]"
        fields = {
            k: _get(item, k, p)
            for k in ("chain_id", "contract", "tx_hash", "block_number", "block_time")
        }
        try:
            anchors.append(AnchorRecord(**fields))
        except AnchorError as exc:
            _fail(p, exc.detail)
    status = _get(data, "status", "")
    if status not in ("sealed", "anchored"):
        _fail("status", "not 'sealed' or 'anchored'")
    return CompletenessProof(
        device_id=device_id,
        from_seq=from_seq,
        to_seq=to_seq,
        latest_seq=latest_seq,
        readings=tuple(readings),
        batches=tuple(batches),
        gaps=tuple(gaps),
        log_size=_uint(_get(log, "size", "log"), "log.size", 1),
        log_root=_hex32(_get(log, "root", "log"), "log.root"),
        checkpoint=checkpoint,
        anchors=tuple(anchors),
        status=status,
        hash_scheme=scheme,
    )
