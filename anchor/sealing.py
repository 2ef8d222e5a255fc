"""Sealing: turn accepted envelopes into a batch, append batch roots to the batch log, and cut
receipts. Pure (no I/O): the ingestor and the offline demo both use it.

CONSENSUS-CRITICAL. A batch's leaves are ``leaf_hash(envelope_bytes)`` in batch order; the batch
log's leaf data is ``uint64_be(batch size) || batch root`` (40 bytes, built only by
:func:`anchor.merkle.log_leaf_data`), as DESIGN.md "Batch log" fixes it, so a receipt's log
path binds its batch size. Receipts issued from these values must verify forever.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from anchor import merkle
from anchor.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from anchor.envelope import Envelope
from anchor.errors import ProofError, Reason
from anchor.receipt import BatchProof, LogProof, Receipt

__all__ = [
    "DUPLICATE_DETAIL",
    "MAX_STORED_INT",
    "BatchLog",
    "Candidate",
    "Rejection",
    "SealedBatch",
    "candidate_leaf",
    "classify_candidates",
    "seal_batch",
]


@dataclass(frozen=True, slots=True)
class SealedBatch:
    """One sealed batch: its envelopes in leaf order, their leaf hashes and the RFC 9162 root."""

    id: int
    envelopes: tuple[Envelope, ...]
    leaf_hashes: tuple[bytes, ...]
    root: bytes

    @property
    def size(self) -> int:
        return len(self.leaf_hashes)


def seal_batch(
    batch_id: int, envelopes: Sequence[Envelope], *, hasher: merkle.Hasher = merkle.SHA256
) -> SealedBatch:
    """Seal ``envelopes`` (already verified) into batch ``batch_id``; raises on an empty batch."""
    if not envelopes:
        raise ProofError("a batch needs at least one envelope")
    leaves = tuple(merkle.leaf_hash(e.raw, hasher=hasher) for e in envelopes)
    return SealedBatch(batch_id, tuple(envelopes), leaves, merkle.root(leaves, hasher=hasher))


class BatchLog:
    """An in-memory view of the append-only batch log (one leaf per sealed batch).

    The store keeps the durable copy; this class holds the same leaves to compute roots,
    proofs and checkpoints. ``batches`` are the earlier entries as ``(size, root)`` pairs.
    """

    def __init__(
        self,
        origin: str,
        batches: Sequence[tuple[int, bytes]] = (),
        *,
        hasher: merkle.Hasher = merkle.SHA256,
    ) -> None:
        self.origin = origin
        self.hasher = hasher
        self._leaves: list[bytes] = [
            merkle.log_leaf_hash(size, root, hasher=hasher) for size, root in batches
        ]

    @property
    def size(self) -> int:
        return len(self._leaves)

    def append(self, batch_size: int, batch_root: bytes) -> int:
        """Append one batch (its size and root); return its log index. Raises ``ProofError``."""
        if len(batch_root) != self.hasher.digest_size:
            raise ProofError(f"batch root must be {self.hasher.digest_size} bytes")
        self._leaves.append(merkle.log_leaf_hash(batch_size, batch_root, hasher=self.hasher))
        return len(self._leaves) - 1

    def root(self, size: int | None = None) -> bytes:
        return merkle.root(self._leaves[: self._size(size)], hasher=self.hasher)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        return merkle.inclusion_proof(self._leaves[: self._size(size)], index, hasher=self.hasher)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        return merkle.consistency_proof(
            self._leaves[: self._size(new_size)], old_size, hasher=self.hasher
        )

    def checkpoint(self, signer: NoteSigner, size: int | None = None) -> str:
        """The signed C2SP checkpoint note of the log at ``size`` (default: now)."""
        n = self._size(size)
        return sign_checkpoint(Checkpoint(self.origin, n, self.root(n)), signer)

    def _size(self, size: int | None) -> int:
        if size is None:
            return len(self._leaves)
        if not 0 <= size <= len(self._leaves):
            raise ProofError(f"log size {size} is outside [0, {len(self._leaves)}]")
        return size

    def receipts(
        self,
        batch: SealedBatch,
        log_index: int,
        checkpoint_note: str,
        log_size: int,
    ) -> list[Receipt]:
        """Receipts for every reading of ``batch`` (logged at ``log_index``) against the log at
        ``log_size``, whose signed checkpoint is ``checkpoint_note``.
        """
        log_root = self.root(log_size)
        log_path = tuple(self.inclusion_proof(log_index, log_size))
        log_proof = LogProof(index=log_index, size=log_size, root=log_root, path=log_path)
        paths = merkle.inclusion_proofs(batch.leaf_hashes, hasher=self.hasher)
        # SHA-256 receipts carry no scheme field, so they stay exactly as DESIGN.md shows them.
        extra = {} if self.hasher.name == merkle.SHA256.name else {"hash_scheme": self.hasher.name}
        return [
            Receipt(
                device_id=env.reading.device_id,
                seq=env.reading.seq,
                format=env.format,
                envelope=env.raw,
                leaf_hash=leaf,
                batch=BatchProof(size=batch.size, index=i, root=batch.root, path=tuple(path)),
                log=log_proof,
                checkpoint=checkpoint_note,
                extra=extra,
            )
            for i, (env, leaf, path) in enumerate(
                zip(batch.envelopes, batch.leaf_hashes, paths, strict=True)
            )
        ]


# --------------------------------------------------------------------------------------------
# The pure half of the store's seal: which candidates enter the batch.
# --------------------------------------------------------------------------------------------

MAX_STORED_INT = 2**63 - 1
"""Largest ``seq`` or ``ts`` the store can hold (PostgreSQL ``bigint``); the wire allows 2**64-1."""

DUPLICATE_DETAIL = "identical to the stored reading: redelivery or replay"

_ZERO_PREV = bytes(32)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A reading that passed the ingestor's size, parse, registry and signature checks.

    ``received_at`` (timezone-aware) is when the ingestor took it off MQTT (stored per reading;
    the stored batch is partitioned by its seal time, sql/009). ``topic`` is the MQTT topic it
    came on.
    """

    envelope: Envelope
    received_at: datetime
    topic: str
    # The leaf hash computed once where the reading was admitted (the ingestor), with the
    # hasher named by ``leaf_hasher``; classify, the batch tree and the device ack all use it
    # (they hashed the same bytes three times a reading). Optional: a candidate without it, or
    # hashed with another hasher, is hashed when needed, so the leaf is always
    # ``merkle.leaf_hash(envelope.raw, hasher=<the seal's hasher>)``.
    leaf: bytes | None = field(default=None, compare=False)
    leaf_hasher: str | None = field(default=None, compare=False)

    @classmethod
    def hashed(
        cls,
        envelope: Envelope,
        received_at: datetime,
        topic: str,
        *,
        hasher: merkle.Hasher = merkle.SHA256,
    ) -> Candidate:
        """A candidate carrying its leaf hash under ``hasher`` (computed here, once)."""
        return cls(
            envelope, received_at, topic, merkle.leaf_hash(envelope.raw, hasher=hasher), hasher.name
        )


def candidate_leaf(c: Candidate, hasher: merkle.Hasher = merkle.SHA256) -> bytes:
    """``c``'s leaf hash under ``hasher``: the one it carries when computed with ``hasher``."""
    if c.leaf is not None and c.leaf_hasher == hasher.name:
        return c.leaf
    return merkle.leaf_hash(c.envelope.raw, hasher=hasher)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A message rejected before sealing, or by :func:`classify_candidates` during it.

    ``reason`` is a stable reason code (docs/reason-codes.md); ``raw`` the bytes received (the
    store keeps the first 16 KiB and the SHA-256 of all of them). A plain string is turned into
    its :class:`~anchor.errors.Reason` (``ValueError`` when the table has no such code), so a
    quarantine row, its log line and the quarantine counters only ever carry table codes.
    """

    received_at: datetime
    topic: str
    reason: Reason
    detail: str
    raw: bytes
    device_id: str | None = None
    seq: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", Reason(self.reason))


def _reject(c: Candidate, reason: Reason, detail: str) -> Rejection:
    r = c.envelope.reading
    seq = r.seq if r.seq <= MAX_STORED_INT else None
    return Rejection(c.received_at, c.topic, reason, detail, c.envelope.raw, r.device_id, seq)


def classify_candidates(
    candidates: Sequence[Candidate],
    stored_leaf: Mapping[tuple[str, int], bytes],
    *,
    hasher: merkle.Hasher = merkle.SHA256,
) -> tuple[list[Candidate], list[Rejection]]:
    """Decide which candidates enter the batch; return (accepted in input order, rejections).

    ``stored_leaf`` maps (device_id, seq) to the leaf hash already stored, for at least every
    candidate's seq and seq - 1. Candidates are judged in (device_id, seq, arrival) order, so
    the result does not depend on how one device's readings were interleaved in the batch; the
    first arrival of a seq wins. In order, a candidate is:

    1. ``out_of_range`` when ``seq`` or ``ts`` exceeds :data:`MAX_STORED_INT` (the wire allows
       uint64, the store holds int64; refusing here keeps one such reading from failing every
       retry of the whole seal);
    2. ``replayed_seq`` (a duplicate) when the same (device_id, seq) is stored or accepted
       earlier in this batch with the same leaf hash: a redelivery or a replay;
    3. ``seq_conflict`` when that seq holds a different leaf hash (equivocation or forgery);
    4. ``prev_mismatch`` when seq is 1 and ``prev`` is not 32 zero bytes, or when seq - 1 is
       known (stored or accepted in this batch) and ``prev`` is not its leaf hash;
    5. accepted otherwise. An unknown seq - 1 is a gap, recorded by the ``device_seq_gaps``
       view, not a fault.

    Only links backwards are checked: a stored seq + 1 is not re-read.
    """
    leaves = [candidate_leaf(c, hasher) for c in candidates]
    order = sorted(
        range(len(candidates)),
        key=lambda i: (
            candidates[i].envelope.reading.device_id,
            candidates[i].envelope.reading.seq,
            i,
        ),
    )
    in_batch: dict[tuple[str, int], bytes] = {}
    verdict: dict[int, Rejection] = {}
    for i in order:
        c, leaf = candidates[i], leaves[i]
        r = c.envelope.reading
        if r.seq > MAX_STORED_INT or r.ts > MAX_STORED_INT:
            verdict[i] = _reject(
                c, Reason.OUT_OF_RANGE, f"seq {r.seq} or ts {r.ts} exceeds {MAX_STORED_INT}"
            )
            continue
        key = (r.device_id, r.seq)
        known = in_batch.get(key, stored_leaf.get(key))
        if known is not None:
            if known == leaf:
                verdict[i] = _reject(c, Reason.REPLAYED_SEQ, DUPLICATE_DETAIL)
            else:
                verdict[i] = _reject(
                    c,
                    Reason.SEQ_CONFLICT,
                    f"seq {r.seq} already holds another reading (leaf {known.hex()}, "
                    f"this one {leaf.hex()})",
                )
            continue
        if r.seq == 1:
            expected: bytes | None = _ZERO_PREV
        else:
            before = (r.device_id, r.seq - 1)
            expected = in_batch.get(before, stored_leaf.get(before))
        if expected is not None and r.prev != expected:
            verdict[i] = _reject(
                c,
                Reason.PREV_MISMATCH,
                f"prev {r.prev.hex()} is not the leaf hash {expected.hex()} of seq {r.seq - 1}",
            )
            continue
        in_batch[key] = leaf
    accepted = [c for i, c in enumerate(candidates) if i not in verdict]
    rejected = [verdict[i] for i in range(len(candidates)) if i in verdict]
    return accepted, rejected
