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

Layout: the document itself (its values, bounds and JSON codec) is
:mod:`anchor.completeness_document`; this module builds and checks proofs and re-exports the
document's public names, so callers import from here.

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
from anchor.completeness_document import (
    COMPLETENESS_VERSION,
    MAX_COMPLETENESS_SIZE,
    MAX_JSON_DEPTH,
    MAX_READINGS,
    BatchEntry,
    CompletenessError,
    CompletenessProof,
    ReadingEntry,
    _fail,
    completeness_from_dict,
    completeness_to_dict,
    loads_completeness,
)
from anchor.envelope import parse_envelope, verify_envelope
from anchor.errors import AnchorError, Reason
from anchor.keys import PublicKey
from anchor.receipt import AnchorRecord

__all__ = [
    "COMPLETENESS_VERSION",
    "MAX_COMPLETENESS_SIZE",
    "MAX_JSON_DEPTH",
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

MAX_SEQ = (1 << 64) - 1
ZERO_PREV = bytes(32)


# ------------------------------------------------------------------------------------ values


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
