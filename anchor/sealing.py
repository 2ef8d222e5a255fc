"""Sealing: turn accepted envelopes into a batch, append batch roots to the batch log, and cut
receipts. Pure (no I/O): the ingestor and the offline demo both use it.

CONSENSUS-CRITICAL. A batch's leaves are ``leaf_hash(envelope_bytes)`` in batch order; the batch
log's leaf data is the 32-byte batch root (so its leaf hash is ``leaf_hash(batch_root)``), as
DESIGN.md "Batch log" fixes it. Receipts issued from these values must verify forever.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from anchor import merkle
from anchor.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from anchor.envelope import Envelope
from anchor.errors import ProofError
from anchor.receipt import BatchProof, LogProof, Receipt

__all__ = ["BatchLog", "SealedBatch", "seal_batch"]


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
    """An in-memory view of the append-only batch log (one leaf per sealed batch root).

    The store keeps the durable copy; this class holds the same leaves to compute roots,
    proofs and checkpoints.
    """

    def __init__(
        self,
        origin: str,
        batch_roots: Sequence[bytes] = (),
        *,
        hasher: merkle.Hasher = merkle.SHA256,
    ) -> None:
        self.origin = origin
        self.hasher = hasher
        self._leaves: list[bytes] = [merkle.leaf_hash(r, hasher=hasher) for r in batch_roots]

    @property
    def size(self) -> int:
        return len(self._leaves)

    def append(self, batch_root: bytes) -> int:
        """Append one batch root; return its log index."""
        if len(batch_root) != self.hasher.digest_size:
            raise ProofError(f"batch root must be {self.hasher.digest_size} bytes")
        self._leaves.append(merkle.leaf_hash(batch_root, hasher=self.hasher))
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
                batch=BatchProof(
                    id=batch.id, size=batch.size, index=i, root=batch.root, path=tuple(path)
                ),
                log=log_proof,
                checkpoint=checkpoint_note,
                extra=extra,
            )
            for i, (env, leaf, path) in enumerate(
                zip(batch.envelopes, batch.leaf_hashes, paths, strict=True)
            )
        ]
