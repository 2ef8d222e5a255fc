"""The anchoring job's tables: transactions before and after broadcast, confirmed anchors, and
anchors a reorg removed (``vanished_anchors``); plus the public anchor listing.

A transaction is saved (``prepared``) before it is broadcast, so a crash between the two never
loses track of a nonce; recording an anchor is idempotent (``sql/002_anchors.sql``,
``sql/007_anchor_reorg.sql``).
"""

from __future__ import annotations

import json

from anchor.anchoring.chains.base import AnchorConfirmation, AnchorTx
from anchor.errors import Reason
from anchor.store.connection import MAX_LIST, StoreBase
from anchor.store.errors import StoreError
from anchor.store.records import (
    CheckpointRecord,
    OpenAnchorTx,
    StoredAnchor,
    VanishedAnchor,
    anchor_record,
)

__all__ = ["AnchorsMixin"]

_ANCHOR_COLUMNS = (
    "backend, chain_id, contract, log_size, root, tx_hash, block_number, block_time, block_hash"
)


class AnchorsMixin(StoreBase):
    """The anchoring methods of :class:`anchor.store.Store`."""

    async def latest_checkpoint_record(self) -> CheckpointRecord | None:
        """The newest checkpoint (size, root, signed note), or None for an empty log."""
        async with self._connection("latest_checkpoint_record") as conn:
            row = await conn.fetchrow(
                "SELECT log_size, root, note FROM checkpoints ORDER BY log_size DESC LIMIT 1"
            )
        return (
            None
            if row is None
            else CheckpointRecord(row["log_size"], bytes(row["root"]), row["note"])
        )

    async def last_anchor(self, backend: str) -> StoredAnchor | None:
        """The newest confirmed anchor of ``backend``, or None."""
        async with self._connection("last_anchor") as conn:
            row = await conn.fetchrow(
                f"SELECT {_ANCHOR_COLUMNS} FROM anchors WHERE backend = $1 "
                "ORDER BY log_size DESC LIMIT 1",
                backend,
            )
        return None if row is None else anchor_record(row)

    async def list_anchors(
        self, *, since_log_size: int = 0, limit: int = 100
    ) -> list[StoredAnchor]:
        """Confirmed anchors with ``log_size > since_log_size``, oldest first (a cursor)."""
        async with self._connection("list_anchors") as conn:
            rows = await conn.fetch(
                f"SELECT {_ANCHOR_COLUMNS} FROM anchors WHERE log_size > $1 "
                "ORDER BY log_size, backend LIMIT $2",
                since_log_size,
                max(1, min(limit, 1000)),
            )
        return [anchor_record(r) for r in rows]

    async def open_anchor_tx(self, backend: str) -> OpenAnchorTx | None:
        """The backend's newest transaction that is prepared or sent and not yet settled."""
        async with self._connection("open_anchor_tx") as conn:
            row = await conn.fetchrow(
                "SELECT id, backend, log_size, state, tx FROM anchor_txs "
                "WHERE backend = $1 AND state IN ('prepared', 'sent') ORDER BY id DESC LIMIT 1",
                backend,
            )
        if row is None:
            return None
        return OpenAnchorTx(
            row["id"],
            row["backend"],
            row["log_size"],
            row["state"],
            AnchorTx.from_json(json.loads(row["tx"])),
        )

    async def save_anchor_tx(
        self, tx: AnchorTx, log_size: int, *, replaces: int | None = None
    ) -> int:
        """Persist a signed transaction (state ``prepared``) BEFORE it is broadcast; when it
        ``replaces`` an earlier one (same slot, higher fee), mark that one ``replaced`` in the
        same transaction. Returns the new row id."""
        async with self._connection("save_anchor_tx") as conn, conn.transaction():
            if replaces is not None:
                await conn.execute(
                    "UPDATE anchor_txs SET state = 'replaced', updated_at = now() WHERE id = $1",
                    replaces,
                )
            # The same bytes again (a zero-fee chain signs a replacement, or a re-anchor after
            # a reorg, byte-identically: same nonce, same fields, RFC 6979): reopen that row.
            tx_id: int = await conn.fetchval(
                "INSERT INTO anchor_txs (backend, chain_id, contract, log_size, root, tx_hash, tx, "
                "state) VALUES ($1, $2, $3, $4, $5, $6, $7, 'prepared') "
                "ON CONFLICT (tx_hash) DO UPDATE SET state = 'prepared', detail = '', "
                "updated_at = now() RETURNING id",
                tx.backend,
                tx.chain_id,
                tx.contract,
                log_size,
                tx.root,
                tx.tx_hash,
                json.dumps(tx.to_json()),
            )
        return tx_id

    async def set_anchor_tx_state(self, tx_id: int, state: str, detail: str = "") -> None:
        async with self._connection("set_anchor_tx_state") as conn:
            await conn.execute(
                "UPDATE anchor_txs SET state = $2, detail = $3, updated_at = now() WHERE id = $1",
                tx_id,
                state,
                detail[:500],
            )

    async def record_anchor(
        self,
        backend: str,
        log_size: int,
        root: bytes,
        confirmation: AnchorConfirmation,
        *,
        tx_id: int | None = None,
    ) -> None:
        """Record a confirmed anchor (idempotent) and settle its transaction row."""
        async with self._connection("record_anchor") as conn, conn.transaction():
            stored_root = await conn.fetchval(
                "SELECT root FROM checkpoints WHERE log_size = $1", log_size
            )
            if stored_root is None or bytes(stored_root) != root:
                raise StoreError(
                    f"anchor of {root.hex()} names log size {log_size}, whose checkpoint root "
                    "differs",
                    reason=Reason.LOG_INCONSISTENT,
                )
            await conn.execute(
                "INSERT INTO anchors (backend, chain_id, contract, log_size, root, tx_hash, "
                "block_number, block_time, block_hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
                "ON CONFLICT (backend, log_size) DO NOTHING",
                backend,
                confirmation.chain_id,
                confirmation.contract,
                log_size,
                root,
                confirmation.tx_hash,
                confirmation.block_number,
                confirmation.block_time,
                confirmation.block_hash,
            )
            if tx_id is not None:
                await conn.execute(
                    "UPDATE anchor_txs SET state = 'confirmed', updated_at = now() WHERE id = $1",
                    tx_id,
                )

    async def anchors_to_recheck(
        self, backend: str, *, min_block: int, limit: int = 1000
    ) -> list[StoredAnchor]:
        """``backend``'s anchors a reorg could still remove: those recorded at ``min_block`` or
        later, and always its newest one (receipts cite it), newest first, at most ``limit``."""
        async with self._connection("anchors_to_recheck") as conn:
            rows = await conn.fetch(
                f"SELECT {_ANCHOR_COLUMNS} FROM anchors WHERE backend = $1 AND (block_number >= $2 "
                "OR log_size = (SELECT max(log_size) FROM anchors WHERE backend = $1)) "
                "ORDER BY block_number DESC, log_size DESC LIMIT $3",
                backend,
                min_block,
                max(1, limit),
            )
        return [anchor_record(r) for r in rows]

    async def mark_anchor_vanished(self, anchor: StoredAnchor, *, reason: str, detail: str) -> bool:
        """Move ``anchor`` from ``anchors`` to ``vanished_anchors`` with ``reason`` (one
        transaction), so nothing cites it any more; False when it was no longer recorded (another
        job moved it, or it was recorded again meanwhile with another transaction)."""
        async with self._connection("mark_anchor_vanished") as conn, conn.transaction():
            row = await conn.fetchrow(
                "DELETE FROM anchors WHERE backend = $1 AND log_size = $2 AND tx_hash = $3 "
                "AND block_number = $4 RETURNING *",
                anchor.backend,
                anchor.log_size,
                anchor.tx_hash,
                anchor.block_number,
            )
            if row is None:
                return False
            await conn.execute(
                "INSERT INTO vanished_anchors (backend, chain_id, contract, log_size, root, "
                "tx_hash, block_number, block_time, block_hash, confirmed_at, reason, detail) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                row["backend"],
                row["chain_id"],
                row["contract"],
                row["log_size"],
                row["root"],
                row["tx_hash"],
                row["block_number"],
                row["block_time"],
                row["block_hash"],
                row["confirmed_at"],
                reason,
                detail[:500],
            )
            await conn.execute(
                "UPDATE anchor_txs SET detail = $2, updated_at = now() WHERE tx_hash = $1",
                anchor.tx_hash,
                f"[{reason}] {detail}"[:500],
            )
        return True

    async def vanished_anchors(self, *, limit: int = 100) -> list[VanishedAnchor]:
        """The anchors marked vanished, newest first."""
        async with self._connection("vanished_anchors") as conn:
            rows = await conn.fetch(
                f"SELECT {_ANCHOR_COLUMNS}, reason, detail, vanished_at FROM vanished_anchors "
                "ORDER BY id DESC LIMIT $1",
                max(1, min(limit, MAX_LIST)),
            )
        return [
            VanishedAnchor(anchor_record(r), r["reason"], r["detail"], r["vanished_at"])
            for r in rows
        ]

    async def vanished_anchor_counts(self) -> dict[tuple[str, str], int]:
        """How many anchors vanished, per ``(backend, reason)`` (a metrics counter)."""
        async with self._connection("vanished_anchor_counts") as conn:
            rows = await conn.fetch(
                "SELECT backend, reason, count(*) AS n FROM vanished_anchors "
                "GROUP BY backend, reason"
            )
        return {(r["backend"], r["reason"]): int(r["n"]) for r in rows}

    async def checkpoint_for_root(self, root: bytes) -> CheckpointRecord | None:
        async with self._connection("checkpoint_for_root") as conn:
            row = await conn.fetchrow(
                "SELECT log_size, root, note FROM checkpoints WHERE root = $1 "
                "ORDER BY log_size LIMIT 1",
                root,
            )
        return (
            None
            if row is None
            else CheckpointRecord(row["log_size"], bytes(row["root"]), row["note"])
        )

    async def anchors_page(
        self, *, since_log_size: int = 0, limit: int = 100
    ) -> tuple[list[StoredAnchor], int | None]:
        """Confirmed anchors of the first ``limit`` anchored log sizes above ``since_log_size``
        (every backend's anchor of a size on the same page), oldest first, and the cursor of
        the next page (None on the last page)."""
        limit = max(1, min(limit, MAX_LIST))
        async with self._connection("anchors_page") as conn:
            sizes = [
                r["log_size"]
                for r in await conn.fetch(
                    "SELECT DISTINCT log_size FROM anchors WHERE log_size > $1 "
                    "ORDER BY log_size LIMIT $2",
                    since_log_size,
                    limit + 1,
                )
            ]
            page = sizes[:limit]
            rows = await conn.fetch(
                f"SELECT {_ANCHOR_COLUMNS} FROM anchors WHERE log_size = ANY($1::bigint[]) "
                "ORDER BY log_size, backend",
                page,
            )
        return [anchor_record(r) for r in rows], (page[-1] if len(sizes) > limit else None)
