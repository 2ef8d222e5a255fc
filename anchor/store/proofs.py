"""Reads of the batch log: checkpoints, log nodes, consistency and completeness proofs, batch
records, counts.

Every proof is rebuilt from stored log nodes and checked against the stored roots before it is
handed out; a disagreement is ``log_inconsistent``, never a wrong proof.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from typing import Any

from anchor import merkle
from anchor.completeness import (
    CompletenessProof,
    StoredBatch,
    StoredReading,
    build_completeness,
)
from anchor.errors import AnchorError, Reason
from anchor.receipt import AnchorRecord
from anchor.sealing import MAX_STORED_INT
from anchor.store.archives import archived_batch, refuse_archived_range
from anchor.store.connection import StoreBase
from anchor.store.errors import StoreError, checked_device_id, not_found
from anchor.store.packed import (
    ENVELOPE_SQL,
    LEAF_SQL,
    OFFSETS_SQL,
    PACKED_JOIN,
    SEQS,
    envelope_format,
    split_leaves,
)
from anchor.store.records import BatchRecord, rfc3339

__all__ = ["ProofsMixin", "fetch_log_path", "resolve_nodes"]

# A batch's leaf hashes, packed (sql/009).
_LEAVES_SQL = (
    "SELECT p.leaves FROM batches b JOIN reading_batches p "
    "ON p.batch_id = b.id AND p.sealed_at = b.sealed_at WHERE b.id = $1"
)


async def resolve_nodes(
    conn: Any,
    elements: Sequence[Sequence[tuple[int, int]]],
    what: str,
    *,
    hasher: merkle.Hasher,
) -> list[bytes]:
    wanted = sorted({node for element in elements for node in element})
    found: dict[tuple[int, int], bytes] = {}
    if wanted:
        levels, idxs = zip(*wanted, strict=True)
        for row in await conn.fetch(
            "SELECT n.level, n.idx, n.hash FROM log_nodes n "
            "JOIN unnest($1::smallint[], $2::bigint[]) AS k(level, idx) "
            "ON n.level = k.level AND n.idx = k.idx",
            list(levels),
            list(idxs),
        ):
            found[(row["level"], row["idx"])] = bytes(row["hash"])
    missing = [n for n in wanted if n not in found]
    if missing:
        raise StoreError(
            f"log nodes {missing[:4]} missing for {what}", reason=Reason.LOG_INCONSISTENT
        )
    return [merkle.compact_root([found[n] for n in element], hasher=hasher) for element in elements]


async def fetch_log_path(conn: Any, index: int, size: int, *, hasher: merkle.Hasher) -> list[bytes]:
    """The inclusion path of log leaf ``index`` in the log of ``size``, from stored nodes."""
    return await resolve_nodes(
        conn, merkle.inclusion_nodes(index, size), f"index {index} at size {size}", hasher=hasher
    )


class ProofsMixin(StoreBase):
    """The batch log's reads of :class:`anchor.store.Store`."""

    async def log_size(self) -> int:
        """The size of the batch log at its latest checkpoint (0 when empty)."""
        async with self._connection("log_size") as conn:
            size: int = await conn.fetchval("SELECT coalesce(max(log_size), 0) FROM checkpoints")
        return size

    async def latest_checkpoint(self) -> str | None:
        """The latest signed checkpoint note, or None before the first seal."""
        async with self._connection("latest_checkpoint") as conn:
            note: str | None = await conn.fetchval(
                "SELECT note FROM checkpoints ORDER BY log_size DESC LIMIT 1"
            )
        return note

    async def checkpoint_at(self, log_size: int) -> str:
        """The signed checkpoint note at ``log_size``; raises ``StoreError`` (``not_found``)."""
        async with self._connection("checkpoint_at") as conn:
            note: str | None = await conn.fetchval(
                "SELECT note FROM checkpoints WHERE log_size = $1", log_size
            )
        if note is None:
            raise not_found(f"no checkpoint at log size {log_size}")
        return note

    async def consistency_proof(
        self, old_size: int, new_size: int, *, hasher: merkle.Hasher = merkle.SHA256
    ) -> list[bytes]:
        """The RFC 9162 consistency proof between two log sizes, from stored log nodes.

        Raises ``StoreError`` (``not_found`` when ``new_size`` is beyond the log).
        """
        async with self._connection("consistency_proof") as conn:
            size = await conn.fetchval("SELECT coalesce(max(log_size), 0) FROM checkpoints")
            if not 0 <= old_size <= new_size <= size:
                raise not_found(
                    f"no consistency proof from {old_size} to {new_size} (log size {size})"
                )
            return await resolve_nodes(
                conn,
                merkle.consistency_nodes(old_size, new_size),
                f"{old_size} -> {new_size}",
                hasher=hasher,
            )

    async def batch_leaf_hashes(self, batch_id: int) -> list[bytes]:
        """The batch's leaf hashes in batch order; raises ``StoreError`` (``not_found``)."""
        async with self._connection("batch_leaf_hashes") as conn:
            leaves = await self._leaves(conn, batch_id)
        if leaves is None:
            raise not_found(f"no batch {batch_id}")
        return split_leaves(leaves)

    async def _leaves(self, conn: Any, batch_id: int) -> bytes | None:
        """The batch's packed leaves: from the database, or from its archive file when its
        month is archived (``reading_archived`` without the archive directory)."""
        leaves = await conn.fetchval(_LEAVES_SQL, batch_id)
        if leaves is not None:
            return bytes(leaves)
        line = await archived_batch(self.archive_reader, conn, batch_id)
        return None if line is None else line.leaves

    async def log_entries(self, size: int) -> list[tuple[int, bytes]]:
        """The first ``size`` batches in log order as ``(batch size, batch root)``: what the
        log's leaves encode (:func:`anchor.merkle.log_leaf_data`). O(size)."""
        async with self._connection("log_entries") as conn:
            rows = await conn.fetch(
                "SELECT size, root FROM batches WHERE log_index < $1 ORDER BY log_index", size
            )
        return [(r["size"], bytes(r["root"])) for r in rows]

    async def counts(self) -> dict[str, int]:
        """Row counts for tests and metrics: ``readings``, ``batches``, ``log_size``,
        ``devices``, ``quarantine`` and ``quarantine.<reason>`` for each reason present."""
        async with self._connection("counts") as conn:
            row = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM reading_seqs) AS readings, "
                "(SELECT count(*) FROM batches) AS batches, "
                "(SELECT coalesce(max(log_size), 0) FROM checkpoints) AS log_size, "
                "(SELECT count(*) FROM devices) AS devices, "
                "(SELECT count(*) FROM quarantine) AS quarantine"
            )
            reasons = await conn.fetch(
                "SELECT reason, count(*) AS n FROM quarantine GROUP BY reason"
            )
        out = {k: int(v) for k, v in row.items()}
        out.update({f"quarantine.{r['reason']}": int(r["n"]) for r in reasons})
        return out

    async def batch_record(self, batch_id: int) -> BatchRecord:
        """A sealed batch with every leaf hash in batch order; raises ``StoreError``
        (``not_found``)."""
        return await self._batch_record("id", batch_id)

    async def batch_record_at(self, log_index: int) -> BatchRecord:
        """The batch at ``log_index`` in the batch log (how a receipt names its batch), as
        :meth:`batch_record`; raises ``StoreError`` (``not_found``)."""
        return await self._batch_record("log_index", log_index)

    async def _batch_record(self, column: str, value: int) -> BatchRecord:
        assert column in ("id", "log_index")
        what = "batch" if column == "id" else "batch at log index"
        if not 0 <= value <= MAX_STORED_INT:
            raise not_found(f"no {what} {value}")
        async with (
            self._connection("batch_record") as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            row = await conn.fetchrow(
                f"SELECT id, size, root, log_index, sealed_at FROM batches WHERE {column} = $1",
                value,
            )
            if row is None:
                raise not_found(f"no {what} {value}")
            leaves = await self._leaves(conn, row["id"])
        return BatchRecord(
            row["id"],
            row["size"],
            bytes(row["root"]),
            row["log_index"],
            row["sealed_at"],
            tuple(split_leaves(leaves or b"")),
        )

    async def completeness_proof(
        self, device_id: str, from_seq: int, to_seq: int, *, hasher: merkle.Hasher = merkle.SHA256
    ) -> CompletenessProof:
        """The completeness proof of the device's readings in ``[from_seq, to_seq]`` (clipped to
        its newest stored seq) against one checkpoint: the newest anchored one covering every
        batch involved, else the newest (see :mod:`anchor.completeness`).

        Raises ``StoreError``: ``device_id_invalid``, ``not_found`` (unregistered device, empty
        log), ``log_inconsistent`` (stored leaves or log nodes disagree with stored roots).
        """
        checked_device_id(device_id)
        async with (
            self._connection("completeness_proof") as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            if not await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM devices WHERE device_id = $1)", device_id
            ):
                raise not_found(f"device {device_id} is not registered")
            latest: int = await conn.fetchval(
                f"SELECT coalesce(max(s.seq), 0) FROM {SEQS} WHERE d.device_id = $1",
                device_id,
            )
            hi = min(to_seq, latest)
            await refuse_archived_range(conn, device_id, from_seq, hi)
            rows = await conn.fetch(
                f"SELECT s.seq, {LEAF_SQL} AS leaf_hash, s.batch_id, s.batch_index, "
                f"{ENVELOPE_SQL} AS envelope, e.format AS erased_format "
                f"FROM {SEQS} {PACKED_JOIN} {OFFSETS_SQL} "
                "LEFT JOIN reading_erasures e ON e.device_id = d.device_id AND e.seq = s.seq "
                "WHERE d.device_id = $1 AND s.seq BETWEEN $2 AND $3 ORDER BY s.seq",
                device_id,
                from_seq,
                hi,
            )
            batch_ids = sorted({r["batch_id"] for r in rows})
            batch_rows = await conn.fetch(
                "SELECT id, root, log_index FROM batches WHERE id = ANY($1::bigint[])", batch_ids
            )
            leaves: dict[int, list[bytes]] = {b: [] for b in batch_ids}
            for r in await conn.fetch(
                "SELECT p.batch_id, p.leaves FROM batches b JOIN reading_batches p "
                "ON p.batch_id = b.id AND p.sealed_at = b.sealed_at "
                "WHERE b.id = ANY($1::bigint[])",
                batch_ids,
            ):
                leaves[r["batch_id"]] = split_leaves(bytes(r["leaves"]))
            top = max((b["log_index"] for b in batch_rows), default=-1)
            head = await conn.fetchrow(
                "SELECT c.log_size, c.root, c.note FROM checkpoints c WHERE c.log_size > $1 "
                "AND EXISTS (SELECT 1 FROM anchors a WHERE a.log_size = c.log_size) "
                "ORDER BY c.log_size DESC LIMIT 1",
                top,
            ) or await conn.fetchrow(
                "SELECT log_size, root, note FROM checkpoints ORDER BY log_size DESC LIMIT 1"
            )
            if head is None:
                raise not_found("the batch log is empty")
            log_size: int = head["log_size"]
            anchors = [
                AnchorRecord(a["chain_id"], a["contract"], a["tx_hash"], a["block_number"],
                             rfc3339(a["block_time"]))
                for a in await conn.fetch(
                    "SELECT chain_id, contract, tx_hash, block_number, block_time FROM anchors "
                    "WHERE log_size = $1 ORDER BY backend",
                    log_size,
                )
            ]  # fmt: skip
            elements: list[Sequence[tuple[int, int]]] = []
            spans: dict[int, tuple[int, int]] = {}
            for b in batch_rows:
                nodes = merkle.inclusion_nodes(b["log_index"], log_size)
                spans[b["id"]] = (len(elements), len(elements) + len(nodes))
                elements.extend(nodes)
            resolved = await resolve_nodes(
                conn, elements, f"completeness of {device_id}", hasher=hasher
            )
        batches: dict[int, StoredBatch] = {}
        for b in batch_rows:
            root = bytes(b["root"])
            if merkle.root(leaves[b["id"]], hasher=hasher) != root:
                raise StoreError(
                    f"batch {b['id']}: its stored leaves do not recompute to its root",
                    reason=Reason.LOG_INCONSISTENT,
                )
            lo, end = spans[b["id"]]
            batches[b["id"]] = StoredBatch(
                b["id"], root, b["log_index"], tuple(leaves[b["id"]]), tuple(resolved[lo:end])
            )
        readings = [
            StoredReading(
                r["seq"],
                r["erased_format"] or envelope_format(bytes(r["envelope"])),
                None if r["erased_format"] else bytes(r["envelope"]),
                bytes(r["leaf_hash"]),
                r["batch_id"],
                r["batch_index"],
            )
            for r in rows
        ]
        try:
            # Hashing every involved batch's tree is CPU work: keep it off the event loop.
            return await asyncio.to_thread(
                functools.partial(
                    build_completeness,
                    device_id=device_id,
                    from_seq=from_seq,
                    to_seq=max(hi, from_seq - 1),
                    latest_seq=latest,
                    readings=readings,
                    batches=batches,
                    log_size=log_size,
                    log_root=bytes(head["root"]),
                    checkpoint=head["note"],
                    anchors=anchors,
                    hasher=hasher,
                )
            )
        except AnchorError as exc:
            raise StoreError(exc.detail, reason=Reason.LOG_INCONSISTENT) from exc
