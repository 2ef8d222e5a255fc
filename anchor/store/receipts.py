"""Receipts: the proof of one stored reading (or of every reading of a batch), ready to hand out.

A receipt ends on the newest anchored checkpoint that covers its batch, else on the newest
checkpoint covering it that a witness cosigned, else on the newest checkpoint (status
``sealed``); its ``checkpoint`` is the operator-signed note with the stored witness cosignature
lines of that size appended (C2SP tlog-cosignature). Stored paths are checked against the
stored roots before use; anything that does not check out is rebuilt, and what cannot be rebuilt is
``log_inconsistent``, never a receipt.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from anchor import merkle
from anchor.envelope import parse_envelope
from anchor.errors import AnchorError, Reason
from anchor.receipt import AnchorRecord, BatchProof, LogProof, Receipt
from anchor.sealing import MAX_STORED_INT
from anchor.store.archives import archived_batch, archived_place
from anchor.store.connection import StoreBase
from anchor.store.errors import StoreError, checked_device_id, not_found, translate
from anchor.store.operator import erasure_json
from anchor.store.packed import (
    BLOCK_SQL,
    ENVELOPE_SQL,
    OFFSETS_SQL,
    PACKED_JOIN,
    PACKED_ROW,
    SEQS,
    block_path,
    envelope_format,
    split_envelopes,
    split_leaves,
    upper_levels,
)
from anchor.store.proofs import fetch_log_path
from anchor.store.receipt_batcher import LookupBatcher
from anchor.store.receipt_cache import BatchShare, ReceiptCache
from anchor.store.records import rfc3339

__all__ = ["BATCH_TREE_CACHE", "ReceiptsMixin"]

# Sealed batches whose verified Merkle trees a Store keeps (about 64 KiB each at 1000 readings).
BATCH_TREE_CACHE = 256

# Store.receipt's statement: the reading's envelope and the 16 leaves of its batch around it
# (anchor.store.packed; the path is built from them and the batch's cached upper tree levels),
# and the version of what its batch's receipts share (anchor.store.receipt_cache): the checkpoint
# to prove against (the newest anchored one covering the batch, else the newest cosigned one
# covering it, else the newest) and the xmin of each anchor and cosignature row of that
# checkpoint (any insert or delete changes it). {keys} is the lookup: one (device_id, seq), or
# (anchor.store.receipt_batcher) $1 device ids and $2 seqs, ``i`` the 1-based position asked.
_RECEIPT_TEMPLATE = """
SELECT {i}s.batch_id, s.batch_index, d.device_id, s.seq,
       {envelope} AS envelope, {block} AS block, h.log_size,
       av.v AS anchors_version, cv.v AS cosignatures_version
FROM {keys}
JOIN batches b ON b.id = s.batch_id
{packed_row}
{offsets}
CROSS JOIN LATERAL (SELECT coalesce(
        (SELECT max(log_size) FROM anchors WHERE log_size > b.log_index),
        (SELECT max(log_size) FROM witness_cosignatures WHERE log_size > b.log_index),
        (SELECT max(log_size) FROM checkpoints)) AS log_size) h
CROSS JOIN LATERAL (SELECT coalesce(string_agg(a.backend || ':' || a.xmin::text, ','
        ORDER BY a.backend), '') AS v FROM anchors a WHERE a.log_size = h.log_size) av
CROSS JOIN LATERAL (SELECT coalesce(string_agg(w.xmin::text, ',' ORDER BY w.witness), '') AS v
        FROM witness_cosignatures w WHERE w.log_size = h.log_size) cv
{where}
"""
_RECEIPT_SQL = _RECEIPT_TEMPLATE.format(
    i="",
    envelope=ENVELOPE_SQL,
    block=BLOCK_SQL,
    offsets=OFFSETS_SQL,
    packed_row=PACKED_ROW.format(b="b"),
    keys=SEQS,
    where="WHERE d.device_id = $1 AND s.seq = $2",
)
_RECEIPTS_SQL = _RECEIPT_TEMPLATE.format(
    i="k.i, ",
    envelope=ENVELOPE_SQL,
    block=BLOCK_SQL,
    offsets=OFFSETS_SQL,
    packed_row=PACKED_ROW.format(b="b"),
    keys="unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS k(device_id, seq, i) "
    "JOIN devices d ON d.device_id = k.device_id "
    "JOIN reading_seqs s ON s.device_num = d.num AND s.seq = k.seq",
    where="",
)

# One reading's envelope and place, for the full path.
_READING_SQL = f"""
SELECT s.batch_id, s.batch_index, d.device_id, s.seq, {ENVELOPE_SQL} AS envelope
FROM {SEQS} {PACKED_JOIN}
{OFFSETS_SQL}
WHERE d.device_id = $1 AND s.seq = $2
"""

# Filling a batch's cache entry: the batch, the checkpoint of size $2 with its cosignature lines,
# its anchors, and their version (as above), in one snapshot; the log path is read next.
_SHARE_SQL = """
SELECT b.size, b.root AS batch_root, b.log_index, c.log_size, c.root AS log_root,
       c.note || coalesce((SELECT string_agg(w.line, '' ORDER BY w.witness)
           FROM witness_cosignatures w WHERE w.log_size = c.log_size), '') AS note,
       (SELECT coalesce(json_agg(json_build_object(
            'chain_id', a.chain_id, 'contract', a.contract, 'tx_hash', a.tx_hash,
            'block_number', a.block_number, 'block_time', a.block_time) ORDER BY a.backend),
            '[]')
        FROM anchors a WHERE a.log_size = c.log_size) AS anchors,
       (SELECT coalesce(string_agg(a.backend || ':' || a.xmin::text, ',' ORDER BY a.backend), '')
        FROM anchors a WHERE a.log_size = c.log_size) AS anchors_version,
       (SELECT coalesce(string_agg(w.xmin::text, ',' ORDER BY w.witness), '')
        FROM witness_cosignatures w WHERE w.log_size = c.log_size) AS cosignatures_version,
       (SELECT p.leaves FROM reading_batches p WHERE p.batch_id = b.id
        AND p.sealed_at = b.sealed_at) AS leaves
FROM batches b, checkpoints c WHERE b.id = $1 AND c.log_size = $2
"""


# The checkpoint a batch's receipts end on (log index $1): the newest anchored one covering the
# batch, else the newest cosigned one covering it (a sealed receipt a witness vouched for), else
# the newest; its note carries the stored cosignature lines of its size (anchor.store.witnesses).
_HEAD_SQL = """
SELECT c.log_size, c.root, c.note || coalesce((SELECT string_agg(w.line, '' ORDER BY w.witness)
    FROM witness_cosignatures w WHERE w.log_size = c.log_size), '') AS note
FROM checkpoints c WHERE c.log_size = coalesce(
    (SELECT max(log_size) FROM anchors WHERE log_size > $1),
    (SELECT max(log_size) FROM witness_cosignatures WHERE log_size > $1),
    (SELECT max(log_size) FROM checkpoints))
"""


# The receipt lookups' own pool (per Store, opened at the first receipt): at most this many
# connections besides the Store's pool.
RECEIPT_POOL_SIZE = 4


async def _keep_session(conn: Any) -> None:
    """The receipt pool's reset on release: nothing to undo. Its connections only run single
    read-only statements outside any transaction (no SET, LISTEN, cursor or advisory lock), so
    the default reset (``RESET ALL``, ``UNLISTEN *``, ... : a round trip per receipt) has no
    session state to clear; asyncpg still rolls back an open transaction and drops listeners."""


class ReceiptsMixin(StoreBase):
    """``receipt`` and ``receipts_for_batch`` of :class:`anchor.store.Store`."""

    async def close(self) -> None:
        """Close the receipt pool, then every other connection."""
        pool = self.__dict__.pop("_receipt_pool", None)
        if pool is not None:
            with contextlib.suppress(Exception):
                await pool.close()
        await super().close()

    @contextlib.asynccontextmanager
    async def _receipt_connection(self) -> AsyncIterator[Any]:
        """A connection for :meth:`receipt`'s read-only statements, from a pool of its own that
        skips the per-release session reset (see :func:`_keep_session`); the Store's pool when
        the Store was not built from a DSN."""
        if not self._dsn:
            async with self._connection("receipt") as conn:
                yield conn
            return
        try:
            pool = self.__dict__.get("_receipt_pool")
            if pool is None:
                lock = self.__dict__.setdefault("_receipt_pool_lock", asyncio.Lock())
                async with lock:
                    pool = self.__dict__.get("_receipt_pool")
                    if pool is None:
                        pool = self.__dict__["_receipt_pool"] = await asyncpg.create_pool(
                            self._dsn,
                            min_size=1,
                            max_size=RECEIPT_POOL_SIZE,
                            timeout=self._timeout,
                            command_timeout=60.0,
                            reset=_keep_session,
                            server_settings={"application_name": "cityanchor", "timezone": "UTC"},
                        )
            async with pool.acquire(timeout=self._timeout) as conn:
                yield conn
        except AnchorError:
            raise
        except Exception as exc:
            err = translate(exc, "receipt")
            if err is None:
                raise
            raise err from exc

    @property
    def receipt_cache(self) -> ReceiptCache:
        """This store's per-batch receipt cache (:mod:`anchor.store.receipt_cache`)."""
        cache: ReceiptCache | None = self.__dict__.get("_receipt_cache")
        if cache is None:
            cache = self.__dict__["_receipt_cache"] = ReceiptCache()
        return cache

    def receipt_lookups(self) -> tuple[int, int]:
        """Receipt lookups so far and the statements that carried them (several concurrent
        lookups share one: :mod:`anchor.store.receipt_batcher`)."""
        batcher: LookupBatcher | None = self.__dict__.get("_receipt_batcher")
        return (0, 0) if batcher is None else (batcher.lookups, batcher.statements)

    async def receipt(
        self, device_id: str, seq: int, *, hasher: merkle.Hasher = merkle.SHA256
    ) -> Receipt:
        """The receipt of one stored reading (see :meth:`_receipt_full`).

        The common case takes one statement (shared with the lookups other requests make at the
        same time): the reading, its stored batch path and the version
        of what its batch's receipts share (the checkpoint they end on, its anchors and
        cosignatures), which :attr:`receipt_cache` holds, verified, per batch; a missing or
        outdated entry is filled (one more statement and the log nodes) and its log path checked
        against the stored checkpoint root first. The reading's batch path is checked against
        the batch root before anything is handed out; an erased reading, a reading sealed
        before paths were stored, or any path that does not check out takes the full path,
        which rebuilds the proofs.
        """
        checked_device_id(device_id)
        if not 1 <= seq <= MAX_STORED_INT:
            raise not_found(f"no reading {device_id} seq {seq}")
        batcher: LookupBatcher | None = self.__dict__.get("_receipt_batcher")
        if batcher is None:
            batcher = self.__dict__["_receipt_batcher"] = LookupBatcher(self._lookup_rows)
        row = await batcher.lookup((device_id, seq))
        if row is None:
            # Not in the database's packed rows: perhaps in an archived month (one more
            # statement, for unknown readings and archived ones only).
            return await self._archived_receipt(device_id, seq, hasher)
        fast = await self._receipt_fast(row, hasher)
        return fast if fast is not None else await self._receipt_full(device_id, seq, hasher=hasher)

    async def _lookup_rows(self, keys: Sequence[tuple[str, int]]) -> list[Any]:
        """:data:`_RECEIPTS_SQL` for ``keys``: one row or None per key, in order (one
        statement, so one snapshot for all of them)."""
        async with self._receipt_connection() as conn:
            if len(keys) == 1:
                return [await conn.fetchrow(_RECEIPT_SQL, *keys[0])]
            rows = await conn.fetch(_RECEIPTS_SQL, [k[0] for k in keys], [k[1] for k in keys])
        found = {r["i"]: r for r in rows}
        return [found.get(i) for i in range(1, len(keys) + 1)]

    async def _receipt_fast(self, row: Mapping[str, Any], hasher: merkle.Hasher) -> Receipt | None:
        if row["envelope"] is None or row["block"] is None or row["log_size"] is None:
            return None
        key = (row["batch_id"], hasher.name)
        version = (row["log_size"], row["anchors_version"], row["cosignatures_version"])
        cache = self.receipt_cache
        share = cache.get(key, version)
        if share is None:
            async with self._receipt_connection() as conn:
                share = await self._batch_share(conn, row["batch_id"], row["log_size"], hasher)
            if share is None:
                return None
            cache.put(key, share)
        index: int = row["batch_index"]
        envelope = bytes(row["envelope"])
        try:
            # Checked against the batch root on the way (anchor.store.packed.block_path).
            leaf, path = block_path(bytes(row["block"]), index, share.upper, share.root, hasher)
        except merkle.ProofError:
            return None
        # Envelope bytes that are not the leaf's (an erased reading's zeros, or damage) take
        # the full path: it serves the tombstone, or the stored bytes as they are.
        if merkle.leaf_hash(envelope, hasher=hasher) != leaf:
            return None
        extra = {} if hasher.name == merkle.SHA256.name else {"hash_scheme": hasher.name}
        return Receipt(
            device_id=row["device_id"],
            seq=row["seq"],
            format=envelope_format(envelope),
            envelope=envelope,
            leaf_hash=leaf,
            batch=BatchProof(size=share.size, index=index, root=share.root, path=tuple(path)),
            log=share.log,
            checkpoint=share.checkpoint,
            anchors=share.anchors,
            status="anchored" if share.anchors else "sealed",
            extra=extra,
        )

    async def _batch_share(
        self, conn: Any, batch_id: int, log_size: int, hasher: merkle.Hasher
    ) -> BatchShare | None:
        """A batch's cache entry ending on the checkpoint of ``log_size``, its log path checked
        against the stored checkpoint root; None when anything does not check out (the caller
        takes the full path, which reports it)."""
        share = await conn.fetchrow(_SHARE_SQL, batch_id, log_size)
        if share is None:
            return None
        size, batch_root, log_index = share["size"], bytes(share["batch_root"]), share["log_index"]
        log_root = bytes(share["log_root"])
        if share["leaves"] is None:
            return None
        leaves = split_leaves(bytes(share["leaves"]))
        # Hashing the batch's tree is CPU work (~1 ms at 1,000 leaves), once per batch.
        root, upper = await asyncio.to_thread(upper_levels, leaves, hasher)
        if len(leaves) != size or root != batch_root:
            return None
        try:
            log_path = await fetch_log_path(conn, log_index, log_size, hasher=hasher)
            merkle.verify_inclusion(
                merkle.log_leaf_hash(size, batch_root, hasher=hasher),
                log_index,
                log_size,
                log_path,
                log_root,
                hasher=hasher,
            )
        except (merkle.ProofError, StoreError):
            return None
        anchors = tuple(
            AnchorRecord(
                chain_id=a["chain_id"],
                contract=a["contract"],
                tx_hash=a["tx_hash"],
                block_number=a["block_number"],
                block_time=rfc3339(datetime.fromisoformat(a["block_time"])),
            )
            for a in json.loads(share["anchors"])
        )
        return BatchShare(
            version=(log_size, share["anchors_version"], share["cosignatures_version"]),
            size=size,
            root=batch_root,
            log=LogProof(index=log_index, size=log_size, root=log_root, path=tuple(log_path)),
            checkpoint=share["note"],
            anchors=anchors,
            upper=upper,
        )

    async def _receipt_full(
        self, device_id: str, seq: int, *, hasher: merkle.Hasher = merkle.SHA256
    ) -> Receipt:
        """The receipt (status ``sealed``) of one stored reading, against the latest checkpoint.

        Raises ``StoreError``: ``not_found``, ``erased``, ``log_inconsistent`` (the stored
        proofs do not lead to the stored roots: never handed out).
        """
        checked_device_id(device_id)
        if not 1 <= seq <= MAX_STORED_INT:
            raise not_found(f"no reading {device_id} seq {seq}")
        async with (
            self._connection("receipt") as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            row = await conn.fetchrow(_READING_SQL, device_id, seq)
            if row is None:
                raise not_found(f"no reading {device_id} seq {seq}")
            (receipt,) = await self._receipts(conn, row["batch_id"], [row], hasher=hasher)
        return receipt

    async def _archived_receipt(self, device_id: str, seq: int, hasher: merkle.Hasher) -> Receipt:
        """The receipt of a reading of an archived month, from its archive file
        (anchor.store.archives): built as :meth:`_receipt_full` builds it from the database, so
        byte for byte the receipt served before the month was archived. Raises ``StoreError``:
        ``not_found``, ``reading_archived`` (no archive directory), ``archive_invalid``."""
        async with (
            self._connection("receipt") as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            place = await archived_place(conn, device_id, seq)
            if place is None:
                raise not_found(f"no reading {device_id} seq {seq}")
            what = f"reading {device_id} seq {seq}"
            line = await archived_batch(self.archive_reader, conn, place["batch_id"], what=what)
            if line is None:  # restored between the two statements
                raise not_found(f"no reading {device_id} seq {seq}")
            index = place["batch_index"]
            row = {
                "batch_index": index,
                "device_id": device_id,
                "seq": seq,
                "envelope": line.envelope(index),
            }
            (receipt,) = await self._receipts(
                conn, place["batch_id"], [row], hasher=hasher, leaves=line.leaves
            )
        return receipt

    async def receipts_for_batch(
        self, batch_id: int, *, hasher: merkle.Hasher = merkle.SHA256
    ) -> list[Receipt]:
        """The receipts of every reading of a batch, in batch order, against the latest
        checkpoint; raises ``StoreError`` (``not_found``, ``erased``, ``log_inconsistent``)."""
        async with (
            self._connection("receipts_for_batch") as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            stored = await conn.fetchrow(
                "SELECT p.leaves, p.ends, p.envelopes FROM batches b JOIN reading_batches p "
                "ON p.batch_id = b.id AND p.sealed_at = b.sealed_at WHERE b.id = $1",
                batch_id,
            )
            leaves = None
            if stored is None:
                line = await archived_batch(self.archive_reader, conn, batch_id)
                if line is None:
                    raise not_found(f"no batch {batch_id}")
                leaves = line.leaves
                stored = {"leaves": line.leaves, "ends": line.ends, "envelopes": line.envelopes}
            envelopes = await self._batch_readings(conn, batch_id, stored, hasher)
            return await self._receipts(conn, batch_id, envelopes, hasher=hasher, leaves=leaves)

    async def _receipts(
        self,
        conn: Any,
        batch_id: int,
        envelopes: Sequence[Mapping[str, Any]],
        *,
        hasher: merkle.Hasher,
        leaves: bytes | None = None,
    ) -> list[Receipt]:
        batch = await conn.fetchrow(
            "SELECT size, root, log_index FROM batches WHERE id = $1", batch_id
        )
        if batch is None or not envelopes:
            raise not_found(f"no batch {batch_id}")
        batch_root = bytes(batch["root"])
        batch_size: int = batch["size"]
        levels = await self._batch_tree(
            conn, batch_id, batch_size, batch_root, hasher, archived=leaves
        )
        leaves_and_paths = {
            r["batch_index"]: (
                levels[0][r["batch_index"]],
                merkle.path_from_levels(levels, r["batch_index"]),
            )
            for r in envelopes
        }
        log_index: int = batch["log_index"]
        # The newest anchored checkpoint that covers this batch, so the receipt ends on chain;
        # until one exists, the newest checkpoint (status "sealed"). One round trip.
        head = await conn.fetchrow(_HEAD_SQL, log_index)
        anchors = tuple(
            AnchorRecord(
                chain_id=a["chain_id"],
                contract=a["contract"],
                tx_hash=a["tx_hash"],
                block_number=a["block_number"],
                block_time=rfc3339(a["block_time"]),
            )
            for a in await conn.fetch(
                "SELECT chain_id, contract, tx_hash, block_number, block_time FROM anchors "
                "WHERE log_size = $1 ORDER BY backend",
                head["log_size"],
            )
        )
        log_size: int = head["log_size"]
        log_root = bytes(head["root"])
        log_path = await fetch_log_path(conn, log_index, log_size, hasher=hasher)
        try:
            merkle.verify_inclusion(
                merkle.log_leaf_hash(batch_size, batch_root, hasher=hasher),
                log_index,
                log_size,
                log_path,
                log_root,
                hasher=hasher,
            )
        except merkle.ProofError as exc:
            raise StoreError(
                f"batch {batch_id} at log index {log_index}: stored log nodes do not lead to "
                f"the checkpoint root at size {log_size}: {exc.detail}",
                reason=Reason.LOG_INCONSISTENT,
            ) from exc
        log = LogProof(index=log_index, size=log_size, root=log_root, path=tuple(log_path))
        extra = {} if hasher.name == merkle.SHA256.name else {"hash_scheme": hasher.name}
        receipts = []
        for r in envelopes:
            # An erased reading (sql/003_operator.sql) keeps its leaf and proofs; its receipt
            # has no envelope, status "erased" and the tombstone as the extra field "erasure".
            # Its stored bytes are zeros (sql/009), so they do not hash to its leaf; bytes that
            # do not and have no tombstone are served as stored (the receipt then fails its
            # leaf check, which shows the damage).
            erasure = None
            index = r["batch_index"]
            envelope = b"" if r["envelope"] is None else bytes(r["envelope"])
            fmt = envelope_format(envelope)
            if merkle.leaf_hash(envelope, hasher=hasher) != leaves_and_paths[index][0]:
                stone = await conn.fetchrow(
                    "SELECT erased_at, actor, legal_reason, format FROM reading_erasures "
                    "WHERE device_id = $1 AND seq = $2",
                    r["device_id"],
                    r["seq"],
                )
                if stone is not None:
                    if stone["format"] is None:
                        raise StoreError(
                            f"reading {r['device_id']} seq {r['seq']} was erased",
                            reason=Reason.ERASED,
                        )
                    # The same shape as the DELETE answer's tombstone (anchor.store.operator).
                    erasure = erasure_json(
                        stone["erased_at"], stone["actor"], stone["legal_reason"]
                    )
                    fmt = stone["format"]
            receipts.append(
                Receipt(
                    device_id=r["device_id"],
                    seq=r["seq"],
                    format=fmt,
                    envelope=b"" if erasure else envelope,
                    leaf_hash=leaves_and_paths[index][0],
                    batch=BatchProof(
                        size=batch_size,
                        index=index,
                        root=batch_root,
                        path=tuple(leaves_and_paths[index][1]),
                    ),
                    log=log,
                    checkpoint=head["note"],
                    anchors=anchors,
                    status="erased" if erasure else "anchored" if anchors else "sealed",
                    extra={**extra, "erasure": erasure} if erasure else extra,
                )
            )
        return receipts

    @staticmethod
    async def _batch_readings(
        conn: Any, batch_id: int, stored: Mapping[str, Any], hasher: merkle.Hasher
    ) -> list[dict[str, Any]]:
        """Each reading of a batch (device_id, seq, batch_index, stored envelope) from its
        packed row: the ids from the envelope itself (reading_seqs has no index by batch), or,
        for bytes that are not the leaf's (erased), from the tombstone of that leaf."""
        leaves = split_leaves(bytes(stored["leaves"]))
        slots = split_envelopes(bytes(stored["ends"]), bytes(stored["envelopes"]))
        out: list[dict[str, Any]] = []
        missing: dict[bytes, int] = {}
        for i, (env, leaf) in enumerate(zip(slots, leaves, strict=True)):
            row: dict[str, Any] = {"batch_index": i, "envelope": env}
            if merkle.leaf_hash(env, hasher=hasher) == leaf:
                reading = parse_envelope(env).reading
                row.update(device_id=reading.device_id, seq=reading.seq)
            else:
                missing[leaf] = i
            out.append(row)
        if missing:
            for t in await conn.fetch(
                "SELECT device_id, seq, leaf_hash FROM reading_erasures "
                "WHERE leaf_hash = ANY($1::bytea[])",
                list(missing),
            ):
                i = missing.pop(bytes(t["leaf_hash"]), -1)
                if i >= 0:
                    out[i].update(device_id=t["device_id"], seq=t["seq"])
        if missing:
            raise StoreError(
                f"batch {batch_id}: stored envelope {sorted(missing.values())[0]} does not "
                "hash to its leaf and has no tombstone",
                reason=Reason.LOG_INCONSISTENT,
            )
        return out

    async def _batch_tree(
        self,
        conn: Any,
        batch_id: int,
        size: int,
        root: bytes,
        hasher: merkle.Hasher,
        *,
        archived: bytes | None = None,
    ) -> list[Sequence[bytes]]:
        """The batch's tree levels, checked against its stored root once, then cached;
        ``archived``: its leaves from its archive file instead of the database."""
        key = (batch_id, hasher.name)
        levels = self._batch_trees.get(key)
        if levels is not None:
            self._batch_trees.move_to_end(key)
            return levels
        stored = archived
        if stored is None:
            stored = await conn.fetchval(
                "SELECT p.leaves FROM batches b JOIN reading_batches p "
                "ON p.batch_id = b.id AND p.sealed_at = b.sealed_at WHERE b.id = $1",
                batch_id,
            )
        leaves = split_leaves(b"" if stored is None else bytes(stored))
        levels = merkle.tree_levels(leaves, hasher=hasher)
        if len(leaves) != size or levels[-1][0] != root:
            raise StoreError(
                f"batch {batch_id}: its {len(leaves)} stored leaves do not recompute to its root",
                reason=Reason.LOG_INCONSISTENT,
            )
        self._batch_trees[key] = levels
        if len(self._batch_trees) > BATCH_TREE_CACHE:
            self._batch_trees.popitem(last=False)
        return levels
