"""The seal transaction: one batch, its log leaf and checkpoint, and its quarantine rows.

The decisions are pure and live in :mod:`anchor.sealing` (classification, log arithmetic);
this module reads what they need and writes what they decided, all in one transaction under
:data:`~anchor.store.connection.SEAL_LOCK` ("Concurrency" in :mod:`anchor.store`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from anchor import merkle
from anchor.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from anchor.errors import Reason
from anchor.sealing import (
    MAX_STORED_INT,
    Candidate,
    Rejection,
    candidate_leaf,
    classify_candidates,
)
from anchor.store.archives import PACKED_IF_STORED
from anchor.store.connection import SEAL_LOCK, StoreBase, clean_text
from anchor.store.devices import fetch_devices
from anchor.store.errors import RegistryError, StoreError
from anchor.store.packed import LEAF_SQL, pack
from anchor.store.records import DeviceRecord, SealResult

__all__ = ["QUARANTINE_RAW_LIMIT", "SealMixin", "recheck_key_validity"]

QUARANTINE_RAW_LIMIT = 16 * 1024
"""Bytes of a quarantined message kept in ``quarantine.raw`` (its size and SHA-256 are of all)."""

_TEXT_LIMITS = {"topic": 1024, "detail": 4096, "device_id": 128}
_SEQ_COLUMNS = ("device_num", "seq", "batch_id", "batch_index", "received_at")
_QUARANTINE_COLUMNS = (
    "received_at", "topic", "device_id", "seq", "reason", "detail", "raw", "raw_size",
    "raw_sha256", "ingestor",
)  # fmt: skip


def recheck_key_validity(
    candidates: Sequence[Candidate], devices: Mapping[str, DeviceRecord]
) -> tuple[list[Candidate], list[Rejection]]:
    """The seal's authoritative key-status check (stage 6 of the ingest rules): each candidate
    against the registry as the seal transaction reads it, by the candidate's ``received_at``.

    The ingestor checked the same rule against its cache, which may be seconds old; here a
    reading of a device revoked before it was received becomes ``device_revoked``, one signed
    with a key rotated out before its ``ts`` ``key_rotated`` (``unknown_kid`` / ``unknown_device``
    cannot normally happen: keys and devices are never deleted). Returns (kept, rejections),
    both in input order.
    """
    kept: list[Candidate] = []
    rejected: list[Rejection] = []
    for c in candidates:
        env, r = c.envelope, c.envelope.reading
        record = devices.get(r.device_id)
        try:
            if record is None:
                raise RegistryError(
                    f"device {r.device_id} is not registered", reason=Reason.UNKNOWN_DEVICE
                )
            record.check_reading(env.kid, r.ts, c.received_at)
        except RegistryError as exc:
            seq = r.seq if r.seq <= MAX_STORED_INT else None
            rejected.append(
                Rejection(
                    c.received_at,
                    c.topic,
                    exc.reason,
                    f"at seal: {exc.detail}",
                    env.raw,
                    r.device_id,
                    seq,
                )
            )
            continue
        kept.append(c)
    return kept, rejected


def _quarantine_record(r: Rejection, ingestor: str) -> tuple[Any, ...]:
    raw = bytes(r.raw)
    # A replay's bytes are already stored with the original reading: keep only size and hash.
    kept = None if r.reason == Reason.REPLAYED_SEQ else raw[:QUARANTINE_RAW_LIMIT]
    seq = r.seq if r.seq is not None and 0 <= r.seq <= MAX_STORED_INT else None
    return (
        r.received_at,
        clean_text(r.topic, _TEXT_LIMITS["topic"]) or "",
        clean_text(r.device_id, _TEXT_LIMITS["device_id"]),
        seq,
        clean_text(r.reason, 64) or "unknown",
        clean_text(r.detail, _TEXT_LIMITS["detail"]) or "",
        kept,
        len(raw),
        hashlib.sha256(raw).digest(),
        clean_text(ingestor, 256) or "",
    )


def _archived_leaves(
    candidates: Sequence[Candidate], archived: set[tuple[str, int]], hasher: merkle.Hasher
) -> dict[tuple[str, int], bytes]:
    """Leaves to classify the candidates by for the looked-up readings of archived months
    (their leaves are in the archive files, which the seal does not read): a candidate whose
    (device, seq) is archived is refused as ``replayed_seq`` (its own leaf stands for the
    stored one; that it is refused is what matters, and 13-month-old redeliveries are the
    expected case); an archived seq - 1 is not chain-checked."""
    return {
        key: merkle.leaf_hash(c.envelope.raw, hasher=hasher)
        for c in candidates
        if (key := (c.envelope.reading.device_id, c.envelope.reading.seq)) in archived
    }


class SealMixin(StoreBase):
    """``seal`` and ``quarantine`` of :class:`anchor.store.Store`."""

    async def seal(
        self,
        candidates: Sequence[Candidate],
        rejections: Sequence[Rejection],
        *,
        signer: NoteSigner,
        origin: str,
        ingestor: str,
        hasher: merkle.Hasher = merkle.SHA256,
    ) -> SealResult:
        """Store one batch and everything rejected with it, in ONE transaction.

        Under :data:`SEAL_LOCK`: re-check every candidate's key status against the registry
        rows, locked ``FOR SHARE`` (:func:`recheck_key_validity`: ``device_revoked``,
        ``key_rotated``, by each reading's ``received_at``, whatever the ingestor's cache said),
        look up the candidates' (device_id, seq) and seq - 1, classify
        them (:func:`anchor.sealing.classify_candidates`), and if any is accepted: number the
        batch, compute its root, append its log leaf (``merkle.log_leaf_hash(size, root)``,
        which binds the batch size) to the batch log, sign the new
        checkpoint, and write batch, checkpoint, log nodes, the batch's packed row
        (``reading_batches``) and reading_seqs; finally
        COPY the quarantine rows (passed-in rejections first). When nothing is accepted only
        quarantine rows are written.

        All-or-nothing: on ``StoreError`` nothing was committed (unless the failure hit the
        COMMIT itself, where the server may have committed; a retry is then classified as
        duplicates, which is why duplicates are acknowledged like accepted readings).
        """
        lookup: set[tuple[str, int]] = set()
        for c in candidates:
            r = c.envelope.reading
            if r.seq <= MAX_STORED_INT:
                lookup.add((r.device_id, r.seq))
                if r.seq > 1:
                    lookup.add((r.device_id, r.seq - 1))
        async with self._connection("seal") as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SEAL_LOCK)
            candidates, key_rejected = await self._recheck_keys(conn, candidates)
            stored: dict[tuple[str, int], bytes] = {}
            if lookup:
                ids, seqs = zip(*lookup, strict=True)
                archived: set[tuple[str, int]] = set()
                for row in await conn.fetch(
                    f"SELECT d.device_id, s.seq, {LEAF_SQL} AS leaf_hash "
                    "FROM unnest($1::text[], $2::bigint[]) AS k(device_id, seq) "
                    "JOIN devices d ON d.device_id = k.device_id "
                    "JOIN reading_seqs s ON s.device_num = d.num AND s.seq = k.seq "
                    f"{PACKED_IF_STORED}",
                    list(ids),
                    list(seqs),
                ):
                    if row["leaf_hash"] is None:
                        archived.add((row["device_id"], row["seq"]))
                    else:
                        stored[(row["device_id"], row["seq"])] = bytes(row["leaf_hash"])
                stored.update(_archived_leaves(candidates, archived, hasher))
            accepted, rejected = classify_candidates(candidates, stored, hasher=hasher)
            quarantine = [*rejections, *key_rejected, *rejected]
            batch_id = log_index = None
            batch_root = note = None
            if accepted:
                batch_id, log_index, batch_root, note = await self._append_batch(
                    conn, accepted, signer=signer, origin=origin, ingestor=ingestor, hasher=hasher
                )
            if quarantine:
                await conn.copy_records_to_table(
                    "quarantine",
                    records=[_quarantine_record(r, ingestor) for r in quarantine],
                    columns=_QUARANTINE_COLUMNS,
                )
        counts: dict[str, int] = {}
        for q in quarantine:
            counts[q.reason] = counts.get(q.reason, 0) + 1
        return SealResult(
            batch_id=batch_id,
            log_index=log_index,
            size=len(accepted),
            root=batch_root,
            checkpoint=note,
            accepted=len(accepted),
            duplicates=counts.get("replayed_seq", 0),
            quarantined=counts,
            key_rejections=tuple(key_rejected),
            sealed=tuple(accepted),
            rejected=tuple(quarantine),
        )

    @staticmethod
    async def _recheck_keys(
        conn: Any, candidates: Sequence[Candidate]
    ) -> tuple[list[Candidate], list[Rejection]]:
        # FOR SHARE on the candidates' device rows (in id order) conflicts with the FOR UPDATE
        # of revoke and rotate: whichever commits first, the other sees it (anchor.store,
        # "Which clock decides"). Keys are read after the lock, so a rotation is seen whole.
        ids = sorted({c.envelope.reading.device_id for c in candidates})
        if not ids:
            return list(candidates), []
        records = await fetch_devices(
            conn, "WHERE device_id = ANY($1::text[]) ORDER BY device_id FOR SHARE", ids
        )
        return recheck_key_validity(candidates, {d.device_id: d for d in records})

    @staticmethod
    async def _append_batch(
        conn: Any,
        accepted: Sequence[Candidate],
        *,
        signer: NoteSigner,
        origin: str,
        ingestor: str,
        hasher: merkle.Hasher,
    ) -> tuple[int, int, bytes, str]:
        leaves = [candidate_leaf(c, hasher) for c in accepted]
        batch_root = merkle.root(leaves, hasher=hasher)
        batch_id: int = await conn.fetchval("SELECT nextval('batch_ids')")
        head = await conn.fetchrow(
            "SELECT log_size, frontier FROM checkpoints ORDER BY log_size DESC LIMIT 1"
        )
        size: int = head["log_size"] if head else 0
        frontier = [bytes(h) for h in head["frontier"]] if head else []
        next_index: int = await conn.fetchval("SELECT coalesce(max(log_index) + 1, 0) FROM batches")
        if next_index != size:
            raise StoreError(
                f"the log has {next_index} batches but its latest checkpoint says {size}",
                reason=Reason.LOG_INCONSISTENT,
            )
        new_frontier, nodes = merkle.compact_append_nodes(
            frontier,
            size,
            merkle.log_leaf_hash(len(accepted), batch_root, hasher=hasher),
            hasher=hasher,
        )
        log_root = merkle.compact_root(new_frontier, hasher=hasher)
        note = sign_checkpoint(Checkpoint(origin, size + 1, log_root), signer)
        sealed_at = await conn.fetchval(
            "INSERT INTO batches (id, size, root, log_index, ingestor) VALUES ($1, $2, $3, $4, $5) "
            "RETURNING sealed_at",
            batch_id,
            len(accepted),
            batch_root,
            size,
            clean_text(ingestor, 256) or "",
        )
        await conn.execute(
            "INSERT INTO checkpoints (log_size, root, note, frontier) VALUES ($1, $2, $3, $4)",
            size + 1,
            log_root,
            note,
            new_frontier,
        )
        await conn.copy_records_to_table(
            "log_nodes", records=nodes, columns=("level", "idx", "hash")
        )
        # The batch's envelopes and leaves in one packed row (sql/009), and a slim reading_seqs
        # row per reading: paths are built from the leaves when a receipt asks.
        packed_leaves, ends, envelopes = pack([c.envelope.raw for c in accepted], leaves)
        await conn.execute(
            "INSERT INTO reading_batches (batch_id, sealed_at, received_min, leaves, ends, "
            "envelopes) VALUES ($1, $2, $3, $4, $5, $6)",
            batch_id,
            sealed_at,
            min(c.received_at for c in accepted),
            packed_leaves,
            ends,
            envelopes,
        )
        nums = {
            r["device_id"]: r["num"]
            for r in await conn.fetch(
                "SELECT device_id, num FROM devices WHERE device_id = ANY($1::text[])",
                list({c.envelope.reading.device_id for c in accepted}),
            )
        }
        seqs = [
            (nums[c.envelope.reading.device_id], c.envelope.reading.seq, batch_id, i,
             c.received_at)
            for i, c in enumerate(accepted)
        ]  # fmt: skip
        await conn.copy_records_to_table("reading_seqs", records=seqs, columns=_SEQ_COLUMNS)
        return batch_id, size, batch_root, note

    async def quarantine(self, rejections: Sequence[Rejection], *, ingestor: str) -> None:
        """Write quarantine rows only (one transaction), for rejections with no seal to join."""
        if not rejections:
            return
        async with self._connection("quarantine") as conn, conn.transaction():
            await conn.copy_records_to_table(
                "quarantine",
                records=[_quarantine_record(r, ingestor) for r in rejections],
                columns=_QUARANTINE_COLUMNS,
            )
