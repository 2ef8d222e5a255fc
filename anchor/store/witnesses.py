"""Witness cosignatures of the batch log's checkpoints (``sql/008_witness_cosignatures.sql``).

Stored lines were verified with the witness's key by the caller (the cosigning job) before they
reach :meth:`WitnessesMixin.record_cosignature`; here they are kept per (log size, witness key)
and appended to the operator-signed note of their size when a note is handed out
(:meth:`WitnessesMixin.cosigned_note`, receipts). A witness is named by its verifier key string
(``name+keyid+base64(0x04||key)``), never by its URL.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from anchor.store.connection import StoreBase
from anchor.store.errors import not_found
from anchor.store.records import CheckpointRecord

__all__ = ["StoredCosignature", "WitnessFigures", "WitnessesMixin"]


@dataclass(frozen=True, slots=True)
class StoredCosignature:
    log_size: int
    witness: str  # the witness's verifier key
    line: str  # the signature line, with its newline
    timestamp: int  # the cosignature's own POSIX timestamp


@dataclass(frozen=True, slots=True)
class WitnessFigures:
    witness: str
    url: str
    cosigned_size: int
    outcomes: dict[str, int]


# Count one outcome of a witness; $5 (when not NULL) is the witness's size from now on.
_OUTCOME_SQL = """
INSERT INTO witness_state (witness, url, cosigned_size, outcomes, last_outcome, last_reason)
VALUES ($1, $2, coalesce($5::bigint, 0), jsonb_build_object($3::text, 1), $3, $4)
ON CONFLICT (witness) DO UPDATE SET
    url = EXCLUDED.url,
    cosigned_size = coalesce($5::bigint, witness_state.cosigned_size),
    outcomes = witness_state.outcomes || jsonb_build_object(
        $3::text, coalesce((witness_state.outcomes ->> $3::text)::bigint, 0) + 1),
    last_outcome = $3, last_reason = $4, updated_at = now()
"""


class WitnessesMixin(StoreBase):
    """The witness methods of :class:`anchor.store.Store`."""

    async def witness_size(self, witness: str) -> int:
        """The size the witness last cosigned for this log, as far as we know (0: never)."""
        async with self._connection("witness_size") as conn:
            size: int | None = await conn.fetchval(
                "SELECT cosigned_size FROM witness_state WHERE witness = $1", witness
            )
        return size or 0

    async def note_witness_outcome(
        self, *, witness: str, url: str, outcome: str, reason: str = "", size: int | None = None
    ) -> None:
        """Count one request's ``outcome`` for the witness; with ``size``, also record the size
        the witness reported (a 409 answer: the witness's own state wins)."""
        async with self._connection("note_witness_outcome") as conn:
            await conn.execute(_OUTCOME_SQL, witness, url, outcome, reason, size)

    async def record_cosignature(
        self, *, witness: str, url: str, log_size: int, line: str, timestamp: int
    ) -> None:
        """Store one verified cosignature line, move the witness's size to ``log_size`` and
        count the outcome ``cosigned``.

        Idempotent: a second cosignature of the same size by the same witness keeps the first
        line (receipts already handed out cite it). Raises ``StoreError`` (``not_found`` when
        there is no checkpoint of that size).
        """
        async with self._connection("record_cosignature") as conn, conn.transaction():
            exists = await conn.fetchval(
                "SELECT true FROM checkpoints WHERE log_size = $1", log_size
            )
            if not exists:
                raise not_found(f"no checkpoint at log size {log_size}")
            await conn.execute(
                "INSERT INTO witness_cosignatures (log_size, witness, line, cosigned_at) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT (log_size, witness) DO NOTHING",
                log_size,
                witness,
                line,
                timestamp,
            )
            await conn.execute(_OUTCOME_SQL, witness, url, "cosigned", "", log_size)

    async def set_quorum_status(self, *, waiting: bool, log_size: int) -> None:
        """Whether anchoring waits for a witness quorum (``log_size``: the newest checkpoint it
        could not anchor); each ``waiting=True`` counts one ``witness_quorum_not_met``."""
        async with self._connection("set_quorum_status") as conn:
            await conn.execute(
                "INSERT INTO witness_quorum_status (id, waiting, log_size, not_met_total) "
                "VALUES (1, $1::boolean, $2, CASE WHEN $1::boolean THEN 1 ELSE 0 END) "
                "ON CONFLICT (id) DO UPDATE SET "
                "waiting = EXCLUDED.waiting, log_size = EXCLUDED.log_size, "
                "not_met_total = witness_quorum_status.not_met_total + EXCLUDED.not_met_total, "
                "updated_at = now()",
                waiting,
                log_size,
            )

    async def witness_figures(self) -> tuple[list[WitnessFigures], tuple[bool, int]]:
        """Per known witness its size and request counts by outcome; and the quorum status
        ``(waiting, not_met_total)``: what /metrics shows."""
        async with self._connection("witness_figures") as conn:
            rows = await conn.fetch(
                "SELECT witness, url, cosigned_size, outcomes::text AS outcomes FROM "
                "witness_state ORDER BY witness"
            )
            quorum = await conn.fetchrow(
                "SELECT waiting, not_met_total FROM witness_quorum_status WHERE id = 1"
            )
        figures = [
            WitnessFigures(
                r["witness"],
                r["url"],
                r["cosigned_size"],
                {str(k): int(v) for k, v in json.loads(r["outcomes"]).items()},
            )
            for r in rows
        ]
        status = (False, 0) if quorum is None else (quorum["waiting"], quorum["not_met_total"])
        return figures, status

    async def cosignatures_at(self, log_size: int) -> list[StoredCosignature]:
        """The stored cosignatures of one log size, ordered by witness key."""
        async with self._connection("cosignatures_at") as conn:
            rows = await conn.fetch(
                "SELECT log_size, witness, line, cosigned_at FROM witness_cosignatures "
                "WHERE log_size = $1 ORDER BY witness",
                log_size,
            )
        return [
            StoredCosignature(r["log_size"], r["witness"], r["line"], r["cosigned_at"])
            for r in rows
        ]

    async def cosigned_note(self, log_size: int | None = None) -> str | None:
        """The operator-signed note at ``log_size`` (default: the newest) with the stored
        cosignature lines of that size appended, in witness-key order; None for an empty log.

        Raises ``StoreError`` (``not_found``) for a size that has no checkpoint.
        """
        async with self._connection("cosigned_note") as conn:
            row = await conn.fetchrow(
                "SELECT c.note || coalesce((SELECT string_agg(w.line, '' ORDER BY w.witness) "
                "FROM witness_cosignatures w WHERE w.log_size = c.log_size), '') AS note "
                "FROM checkpoints c WHERE c.log_size = coalesce($1, "
                "(SELECT max(log_size) FROM checkpoints))",
                log_size,
            )
        if row is None:
            if log_size is None:
                return None
            raise not_found(f"no checkpoint at log size {log_size}")
        note: str = row["note"]
        return note

    async def newest_witnessed_checkpoint(
        self, witnesses: Sequence[str], quorum: int
    ) -> CheckpointRecord | None:
        """The newest checkpoint cosigned by at least ``quorum`` of ``witnesses`` (their keys),
        as the operator signed it (without cosignatures); None when there is none."""
        async with self._connection("newest_witnessed_checkpoint") as conn:
            row = await conn.fetchrow(
                "SELECT c.log_size, c.root, c.note FROM checkpoints c WHERE c.log_size = ("
                "SELECT log_size FROM witness_cosignatures WHERE witness = ANY($1::text[]) "
                "GROUP BY log_size HAVING count(DISTINCT witness) >= $2 "
                "ORDER BY log_size DESC LIMIT 1)",
                list(witnesses),
                quorum,
            )
        return (
            None
            if row is None
            else CheckpointRecord(row["log_size"], bytes(row["root"]), row["note"])
        )
