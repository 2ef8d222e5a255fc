"""Per-device completeness proofs: nothing in a range of a device's readings was removed or
reordered.

CONSENSUS-CRITICAL in the same sense as :mod:`anchor.verify`: this is what "complete" means for a
``cityanchor/completeness/v2`` document. Pure (no I/O); the store gathers the rows and
:func:`build_completeness` assembles the proof, which anyone can check offline with
:func:`verify_completeness` (``cityanchor verify-completeness``).

Why it works. Every envelope carries ``prev``, the leaf hash of the device's previous envelope
(DESIGN.md "Envelope wire format"), inside the signed payload. So for two stored readings with
consecutive seqs ``k`` and ``k+1``, ``prev(k+1) == leaf_hash(k)`` proves that no other reading
``k`` was signed between them (the device would have chained to it instead) and that their order
is the device's own. Each leaf hash is proven to be in its batch, and each batch root in the
batch log (whose leaf, ``H(0x00 || uint64_be(size) || root)``, binds each batch's size) under
one signed (and, when anchored, on-chain) checkpoint, so the operator cannot
make up or silently drop a reading that is in the log. A missing seq cannot be hidden: it is a
*gap*, which the verifier recomputes and reports.

What it cannot show: readings after the newest one stored (``latest_seq`` is the operator's
claim), nor whether a gap is a reading the device never sent or one the operator never stored.

The JSON shape (``version`` ``cityanchor/completeness/v2``)::

    {
      "version": "cityanchor/completeness/v2",
      "device_id": str, "from_seq": int, "to_seq": int, "latest_seq": int,
      "hash_scheme": "rfc9162-sha256",
      "readings": [{"seq", "format", "envelope": base64url | null (erased), "leaf_hash": hex,
                    "prev": hex | null, "batch_id", "batch_index", "batch_path": [hex, ...]}],
      "batches":  [{"id", "size", "root": hex, "log_index", "log_path": [hex, ...]}],
      "gaps":     [{"from": int, "to": int}],          # missing seqs, closed ranges
      "log":      {"size": int, "root": hex},
      "checkpoint": the C2SP signed note of log.size / log.root,
      "anchors":  [{"chain_id", "contract", "tx_hash", "block_number", "block_time"}],
      "status":   "sealed" | "anchored"
    }

``to_seq`` is ``from_seq - 1`` when the range holds no stored reading at or above ``from_seq``
(an empty range). Errors are :class:`CompletenessError` with one of these reasons:

``completeness_malformed``  the document breaks the shape above or its bounds;
``completeness_version_unsupported``  another ``version``; ``cityanchor/completeness/v1``
                     (whose batch-log leaf did not bind the batch size) is refused with a
                     message that says so;
``seq_order``        readings are not in strictly increasing seq order inside the range;
``reading_mismatch`` an envelope names another device, seq or format, or another ``prev``
                     than the document states;
``leaf_mismatch``    ``H(0x00 || envelope)`` is not the stated leaf hash;
``chain_broken``     reading ``k+1``'s ``prev`` is not the leaf hash of reading ``k``;
``gap_mismatch``     the stated gaps are not exactly the missing seqs of the range;
``checkpoint_mismatch``  the signed note names another log size or root;
plus the Merkle codes (``root_mismatch``, ``proof_malformed``) for the batch and log paths, the
checkpoint codes (``checkpoint_*``) for the note, and the envelope codes (``unknown_kid``,
``bad_signature``, ``malformed``, ...) for envelopes and their signatures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from anchor import merkle
from anchor.checkpoint import NoteVerifier, open_checkpoint, parse_checkpoint_unverified
from anchor.device_id import DEVICE_ID_PATTERN, DEVICE_ID_RE
from anchor.envelope import FORMAT_COSE, FORMAT_JWS, parse_envelope, verify_envelope
from anchor.errors import AnchorError, Reason
from anchor.keys import PublicKey, b64url_encode
from anchor.receipt import MAX_ANCHORS, AnchorRecord
from anchor.wire import FieldReader, JsonRejected, strict_loads

__all__ = [
    "COMPLETENESS_VERSION",
    "MAX_READINGS",
    "BatchEntry",
    "CompletenessError",
    "CompletenessProof",
    "CompletenessReport",
    "ReadingEntry",
    "StoredBatch",
    "StoredReading",
    "build_completeness",
    "completeness_from_dict",
    "completeness_to_dict",
    "find_gaps",
    "loads_completeness",
    "verify_completeness",
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
MAX_SEQ = (1 << 64) - 1
MAX_COMPLETENESS_SIZE = 256 << 20
"""Largest proof document :func:`loads_completeness` reads (as the CLI's file limit)."""
MAX_JSON_DEPTH = 8
"""The proof nests 4 deep; anything deeper is refused before ``json.loads`` recurses."""
ZERO_PREV = bytes(32)

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


@dataclass(frozen=True, slots=True)
class StoredReading:
    """What the store holds for one reading: input to :func:`build_completeness`."""

    seq: int
    format: str
    envelope: bytes | None
    leaf_hash: bytes
    batch_id: int
    batch_index: int


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """A batch as stored: every leaf hash in batch order, and its log position and path."""

    id: int
    root: bytes
    log_index: int
    leaves: tuple[bytes, ...]
    log_path: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class CompletenessReport:
    """What :func:`verify_completeness` established.

    ``signatures_checked`` is False when no device key was given (the ``prev`` chain is still
    checked, from the envelope bytes the log commits to); ``checkpoint_signed`` is False when no
    log key was given. ``unlinked`` lists seqs ``k+1`` whose link to ``k`` could not be checked
    because one of the two was erased.
    """

    device_id: str
    from_seq: int
    to_seq: int
    latest_seq: int
    readings: int
    erased: int
    gaps: tuple[tuple[int, int], ...]
    unlinked: tuple[int, ...]
    log_size: int
    status: str
    anchors: int
    signatures_checked: bool
    checkpoint_signed: bool

    @property
    def missing(self) -> int:
        """How many seqs of the range are missing."""
        return sum(b - a + 1 for a, b in self.gaps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "from_seq": self.from_seq,
            "to_seq": self.to_seq,
            "latest_seq": self.latest_seq,
            "readings": self.readings,
            "erased": self.erased,
            "missing": self.missing,
            "gaps": [{"from": a, "to": b} for a, b in self.gaps],
            "unlinked": list(self.unlinked),
            "log_size": self.log_size,
            "status": self.status,
            "anchors": self.anchors,
            "signatures_checked": self.signatures_checked,
            "checkpoint_signed": self.checkpoint_signed,
        }


# ------------------------------------------------------------------------------------- build


def find_gaps(seqs: Sequence[int], from_seq: int, to_seq: int) -> list[tuple[int, int]]:
    """The missing seqs of ``[from_seq, to_seq]`` as closed ranges, given the present ``seqs``
    in strictly increasing order inside that range."""
    gaps: list[tuple[int, int]] = []
    expected = from_seq
    for seq in seqs:
        if seq > expected:
            gaps.append((expected, seq - 1))
        expected = seq + 1
    if expected <= to_seq:
        gaps.append((expected, to_seq))
    return gaps


def build_completeness(
    *,
    device_id: str,
    from_seq: int,
    to_seq: int,
    latest_seq: int,
    readings: Sequence[StoredReading],
    batches: Mapping[int, StoredBatch],
    log_size: int,
    log_root: bytes,
    checkpoint: str,
    anchors: Sequence[AnchorRecord] = (),
    hasher: merkle.Hasher = merkle.SHA256,
) -> CompletenessProof:
    """Assemble the proof for ``readings`` (seq order) of ``[from_seq, to_seq]``.

    Computes each reading's batch path from its batch's leaves and reads ``prev`` from each
    envelope. Raises ``CompletenessError`` when the inputs disagree with each other (a leaf
    that is not the batch's, an envelope that does not parse): a proof that cannot verify is
    never handed out.
    """
    paths: dict[int, list[list[bytes]]] = {}
    entries = []
    for r in readings:
        batch = batches.get(r.batch_id)
        if batch is None or not 0 <= r.batch_index < len(batch.leaves):
            raise CompletenessError(f"seq {r.seq}: batch {r.batch_id} is not among the batches")
        if batch.leaves[r.batch_index] != r.leaf_hash:
            raise CompletenessError(f"seq {r.seq}: leaf {r.batch_index} of batch {r.batch_id}")
        if r.batch_id not in paths:
            paths[r.batch_id] = merkle.inclusion_proofs(list(batch.leaves), hasher=hasher)
        prev = None
        if r.envelope is not None:
            try:
                prev = parse_envelope(r.envelope).reading.prev
            except AnchorError as exc:
                raise CompletenessError(
                    f"seq {r.seq}: stored envelope does not parse: {exc.detail}"
                ) from exc
        entries.append(
            ReadingEntry(
                seq=r.seq,
                format=r.format,
                envelope=r.envelope,
                leaf_hash=r.leaf_hash,
                prev=prev,
                batch_id=r.batch_id,
                batch_index=r.batch_index,
                batch_path=tuple(paths[r.batch_id][r.batch_index]),
            )
        )
    used = sorted({r.batch_id for r in readings})
    batch_entries = tuple(
        BatchEntry(
            id=b,
            size=len(batches[b].leaves),
            root=batches[b].root,
            log_index=batches[b].log_index,
            log_path=batches[b].log_path,
        )
        for b in used
    )
    return CompletenessProof(
        device_id=device_id,
        from_seq=from_seq,
        to_seq=to_seq,
        latest_seq=latest_seq,
        readings=tuple(entries),
        batches=batch_entries,
        gaps=tuple(find_gaps([r.seq for r in readings], from_seq, to_seq)),
        log_size=log_size,
        log_root=log_root,
        checkpoint=checkpoint,
        anchors=tuple(anchors),
        status="anchored" if anchors else "sealed",
        hash_scheme=hasher.name,
    )


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


# ------------------------------------------------------------------------------------ verify


def _check_checkpoint(proof: CompletenessProof, log_verifiers: Sequence[NoteVerifier]) -> bool:
    checkpoint = parse_checkpoint_unverified(proof.checkpoint)
    if (checkpoint.size, checkpoint.root) != (proof.log_size, proof.log_root):
        raise CompletenessError(
            f"checkpoint names size {checkpoint.size} root {checkpoint.root.hex()}, the proof's "
            f"log has size {proof.log_size} root {proof.log_root.hex()}",
            reason=Reason.CHECKPOINT_MISMATCH,
        )
    if not log_verifiers:
        return False
    error: AnchorError | None = None
    for verifier in log_verifiers:
        try:
            open_checkpoint(proof.checkpoint, verifier)
        except AnchorError as exc:
            error = exc
            continue
        return True
    assert error is not None
    raise error


def _device_keys(device_key: PublicKey | Sequence[PublicKey] | None) -> dict[bytes, PublicKey]:
    if device_key is None:
        return {}
    keys = [device_key] if isinstance(device_key, PublicKey) else list(device_key)
    return {k.kid: k for k in keys}


def _check_reading(
    proof: CompletenessProof,
    r: ReadingEntry,
    batch: BatchEntry,
    keys: Mapping[bytes, PublicKey],
    hasher: merkle.Hasher,
) -> None:
    where = f"seq {r.seq}"
    if r.envelope is not None:
        envelope = parse_envelope(r.envelope)
        reading = envelope.reading
        mismatches = [
            f"{name}: proof says {claimed!r}, envelope says {actual!r}"
            for name, claimed, actual in (
                ("device_id", proof.device_id, reading.device_id),
                ("seq", r.seq, reading.seq),
                ("format", r.format, envelope.format),
                ("prev", r.prev.hex() if r.prev else None, reading.prev.hex()),
            )
            if claimed != actual
        ]
        if mismatches:
            raise CompletenessError(
                f"{where}: " + "; ".join(mismatches), reason=Reason.READING_MISMATCH
            )
        computed = merkle.leaf_hash(r.envelope, hasher=hasher)
        if computed != r.leaf_hash:
            raise CompletenessError(
                f"{where}: expected leaf {r.leaf_hash.hex()}, calculated {computed.hex()}",
                reason=Reason.LEAF_MISMATCH,
            )
        if keys:
            key = keys.get(envelope.kid)
            if key is None:
                raise CompletenessError(
                    f"{where}: no trusted device key has kid {envelope.kid.hex()}",
                    reason=Reason.UNKNOWN_KID,
                )
            verify_envelope(envelope, key)
    elif r.prev is not None:
        _fail(f"{where}.prev", "an erased reading has no envelope to take prev from")
    if r.batch_index >= batch.size:
        _fail(f"{where}.batch_index", f"{r.batch_index} is not below batch size {batch.size}")
    merkle.verify_inclusion(
        r.leaf_hash, r.batch_index, batch.size, r.batch_path, batch.root, hasher=hasher
    )


def verify_completeness(
    proof: CompletenessProof | Mapping[str, Any],
    *,
    device_key: PublicKey | Sequence[PublicKey] | None = None,
    log_verifiers: Sequence[NoteVerifier] = (),
) -> CompletenessReport:
    """Check a completeness proof; return what it established, or raise on the first failure.

    Steps: (1) the shape (a mapping is parsed with :func:`completeness_from_dict`); (2) the
    checkpoint names ``log.size``/``log.root`` and, with ``log_verifiers``, is signed by one of
    them; (3) each batch's log leaf (its size and root) is leaf ``log_index`` of the log;
    (4) each reading's envelope names the device, its seq, format and the stated ``prev``,
    hashes to its leaf hash, is
    signed by a ``device_key`` when given, and its leaf is in its batch; (5) seqs strictly
    increase inside ``[from_seq, to_seq]`` and, for consecutive seqs ``k``, ``k+1``,
    ``prev(k+1) == leaf_hash(k)``; (6) the stated gaps are exactly the missing seqs.

    Raises ``CompletenessError`` whose ``reason`` is the failing step's code (including the
    Merkle, checkpoint and envelope codes) and whose message names the seq or batch.
    """
    if not isinstance(proof, CompletenessProof):
        proof = completeness_from_dict(proof)
    keys = _device_keys(device_key)
    try:
        hasher = merkle.get_hasher(proof.hash_scheme)
        # (2) The checkpoint: every path below ends at the root it signs.
        signed = _check_checkpoint(proof, log_verifiers)
    except CompletenessError:
        raise
    except AnchorError as exc:
        raise CompletenessError(exc.detail, reason=exc.reason) from exc
    if proof.status == "anchored" and not proof.anchors:
        _fail("status", "'anchored' but anchors is empty")

    # (3) Batches in the log.
    batches: dict[int, BatchEntry] = {}
    for b in proof.batches:
        if b.id in batches:
            _fail(f"batch {b.id}", "listed twice")
        batches[b.id] = b
        try:
            merkle.verify_inclusion(
                merkle.log_leaf_hash(b.size, b.root, hasher=hasher),
                b.log_index,
                proof.log_size,
                b.log_path,
                proof.log_root,
                hasher=hasher,
            )
        except AnchorError as exc:
            raise CompletenessError(
                f"batch {b.id} in the log: {exc.detail}", reason=exc.reason
            ) from exc

    # (4) and (5) Readings, their batches and the prev chain.
    previous: ReadingEntry | None = None
    unlinked: list[int] = []
    places: set[tuple[int, int]] = set()
    for r in proof.readings:
        if not proof.from_seq <= r.seq <= proof.to_seq:
            raise CompletenessError(
                f"seq {r.seq} is outside [{proof.from_seq}, {proof.to_seq}]",
                reason=Reason.SEQ_ORDER,
            )
        if previous is not None and r.seq <= previous.seq:
            raise CompletenessError(
                f"seq {r.seq} follows seq {previous.seq}: readings must be in increasing order",
                reason=Reason.SEQ_ORDER,
            )
        batch = batches.get(r.batch_id)
        if batch is None:
            _fail(f"seq {r.seq}.batch_id", f"batch {r.batch_id} is not among the batches")
        if (r.batch_id, r.batch_index) in places:
            _fail(f"seq {r.seq}", f"leaf {r.batch_index} of batch {r.batch_id} claimed twice")
        places.add((r.batch_id, r.batch_index))
        try:
            _check_reading(proof, r, batch, keys, hasher)
        except CompletenessError:
            raise
        except AnchorError as exc:
            raise CompletenessError(f"seq {r.seq}: {exc.detail}", reason=exc.reason) from exc
        if previous is not None and r.seq == previous.seq + 1:
            if r.prev is None or previous.envelope is None:
                unlinked.append(r.seq)
            elif r.prev != previous.leaf_hash:
                raise CompletenessError(
                    f"seq {r.seq}: prev {r.prev.hex()} is not the leaf hash "
                    f"{previous.leaf_hash.hex()} of seq {previous.seq}: a reading between them "
                    "was removed, replaced or reordered",
                    reason=Reason.CHAIN_BROKEN,
                )
        previous = r

    # (6) Gaps: recomputed, never taken on trust.
    computed = find_gaps([r.seq for r in proof.readings], proof.from_seq, proof.to_seq)
    if list(proof.gaps) != computed:
        raise CompletenessError(
            f"the proof states gaps {_ranges(proof.gaps)}, the readings leave {_ranges(computed)}",
            reason=Reason.GAP_MISMATCH,
        )
    unused = set(batches) - {r.batch_id for r in proof.readings}
    if unused:
        _fail("batches", f"batches {sorted(unused)[:8]} hold no reading of the proof")
    return CompletenessReport(
        device_id=proof.device_id,
        from_seq=proof.from_seq,
        to_seq=proof.to_seq,
        latest_seq=proof.latest_seq,
        readings=len(proof.readings),
        erased=sum(1 for r in proof.readings if r.envelope is None),
        gaps=tuple(computed),
        unlinked=tuple(unlinked),
        log_size=proof.log_size,
        status=proof.status,
        anchors=len(proof.anchors),
        signatures_checked=bool(keys),
        checkpoint_signed=signed,
    )


def _ranges(gaps: Sequence[tuple[int, int]]) -> str:
    if not gaps:
        return "none"
    shown = ", ".join(f"{a}..{b}" if a != b else str(a) for a, b in gaps[:8])
    return shown + (f" (+{len(gaps) - 8} more)" if len(gaps) > 8 else "")
