"""PostgreSQL queries of the operator side: API tokens, the audit log, erasures, metrics.

Async functions taking a :class:`~anchor.store.Store` (tables in ``sql/003_operator.sql``).
They use the store's connection helper, so asyncpg and socket failures arrive as
:class:`~anchor.store.StoreError` with the store's reasons (``db_unavailable``, ``not_found``,
``conflict``, ...). Token formats, hashing and scope rules live in :mod:`anchor.api.tokens`.

Functions rather than ``Store`` methods: the operator side (API, tokens, metrics) is the only
user, and its tests replace single queries (``monkeypatch.setattr(ops, "get_token", ...)``)
without a database. They were ``anchor.operator_store`` before the store became a package.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from anchor.errors import Reason
from anchor.store.archive_erase import erase_archived
from anchor.store.connection import ANCHOR_LOCK, MAX_LIST, StoreBase
from anchor.store.errors import StoreError, checked_device_id
from anchor.store.packed import (
    ENVELOPE_SQL,
    LEAF_SQL,
    OFFSETS_SQL,
    PACKED_JOIN,
    SEQS,
    envelope_format,
)
from anchor.store.records import rfc3339

__all__ = [
    "AuditEntry",
    "TokenRow",
    "Tombstone",
    "anchor_lock_nowait",
    "anchor_positions",
    "erase_reading",
    "get_token",
    "insert_token",
    "list_audit",
    "list_tokens",
    "record_audit",
    "revoke_token",
    "seal_latencies",
    "tombstone",
    "touch_token",
]

_TOKEN_COLUMNS = "id, name, scopes, token_hash, created_at, revoked_at, last_used_at"
_AUDIT_COLUMNS = "id, at, actor, token_id, action, target, outcome, status, detail, remote_addr"
_TOMBSTONE_COLUMNS = "device_id, seq, leaf_hash, erased_at, actor, token_id, legal_reason"
# last_used_at is a hint for operators, not a log: written at most once a minute per token.
_TOUCH_INTERVAL = "60 seconds"


@dataclass(frozen=True, slots=True)
class TokenRow:
    """A stored API token; ``token_hash`` is SHA-256 of its secret (never the secret)."""

    id: int
    name: str
    scopes: tuple[str, ...]
    token_hash: bytes
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, without the hash."""
        return {
            "id": self.id,
            "name": self.name,
            "scopes": list(self.scopes),
            "created_at": _when(self.created_at),
            "revoked_at": _when(self.revoked_at),
            "last_used_at": _when(self.last_used_at),
        }


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    token_id: int | None
    action: str
    target: str
    outcome: str
    status: int | None
    detail: Mapping[str, Any]
    remote_addr: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": _when(self.at),
            "actor": self.actor,
            "token_id": self.token_id,
            "action": self.action,
            "target": self.target,
            "outcome": self.outcome,
            "status": self.status,
            "detail": dict(self.detail),
            "remote_addr": self.remote_addr,
        }


@dataclass(frozen=True, slots=True)
class Tombstone:
    """Who erased a reading's envelope, when, and under which legal reason."""

    device_id: str
    seq: int
    leaf_hash: bytes
    erased_at: datetime
    actor: str
    token_id: int | None
    legal_reason: str

    def to_dict(self) -> dict[str, Any]:
        """The tombstone as the DELETE answer gives it: the receipt's ``erasure`` fields
        (:meth:`erasure`) plus ``device_id``, ``seq``, ``leaf_hash`` and ``actor``, the name
        this answer published first for ``erased_by`` (kept as its alias)."""
        return {
            "device_id": self.device_id,
            "seq": self.seq,
            "leaf_hash": self.leaf_hash.hex(),
            **self.erasure(),
            "actor": self.actor,
        }

    def erasure(self) -> dict[str, Any]:
        """``erased_at`` (RFC 3339 UTC to the second, as receipts write times), ``erased_by``
        and ``legal_reason``: the receipt's ``erasure`` object, the one shape of an erasure."""
        return erasure_json(self.erased_at, self.actor, self.legal_reason)


def erasure_json(erased_at: datetime, erased_by: str, legal_reason: str) -> dict[str, Any]:
    """An erasure as receipts and the DELETE answer carry it (see :meth:`Tombstone.erasure`)."""
    return {
        "erased_at": rfc3339(erased_at),
        "erased_by": erased_by,
        "legal_reason": legal_reason,
    }


def _when(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _token_row(r: Mapping[str, Any]) -> TokenRow:
    return TokenRow(
        id=r["id"],
        name=r["name"],
        scopes=tuple(r["scopes"]),
        token_hash=bytes(r["token_hash"]),
        created_at=r["created_at"],
        revoked_at=r["revoked_at"],
        last_used_at=r["last_used_at"],
    )


def _tombstone(r: Mapping[str, Any]) -> Tombstone:
    return Tombstone(
        device_id=r["device_id"],
        seq=r["seq"],
        leaf_hash=bytes(r["leaf_hash"]),
        erased_at=r["erased_at"],
        actor=r["actor"],
        token_id=r["token_id"],
        legal_reason=r["legal_reason"],
    )


# --------------------------------------------------------------------------------------------
# Tokens


async def insert_token(
    store: StoreBase, *, name: str, scopes: Sequence[str], token_hash: bytes
) -> TokenRow:
    async with store._connection("insert_token") as conn:
        row = await conn.fetchrow(
            f"INSERT INTO api_tokens (name, scopes, token_hash) VALUES ($1, $2, $3) "
            f"RETURNING {_TOKEN_COLUMNS}",
            name,
            list(scopes),
            token_hash,
        )
    return _token_row(row)


async def get_token(store: StoreBase, token_id: int) -> TokenRow | None:
    """The token with this id, revoked or not, or None."""
    if not 1 <= token_id < 1 << 63:
        return None
    async with store._connection("get_token") as conn:
        row = await conn.fetchrow(
            f"SELECT {_TOKEN_COLUMNS} FROM api_tokens WHERE id = $1", token_id
        )
    return None if row is None else _token_row(row)


async def touch_token(store: StoreBase, token_id: int) -> None:
    """Set ``last_used_at`` (at most once a minute per token)."""
    async with store._connection("touch_token") as conn:
        await conn.execute(
            "UPDATE api_tokens SET last_used_at = now() WHERE id = $1 AND "
            f"(last_used_at IS NULL OR last_used_at < now() - interval '{_TOUCH_INTERVAL}')",
            token_id,
        )


async def revoke_token(store: StoreBase, token_id: int) -> TokenRow:
    """Revoke now. Raises ``StoreError``: ``not_found``, ``conflict`` (already revoked)."""
    async with store._connection("revoke_token") as conn, conn.transaction():
        row = await conn.fetchrow(
            f"SELECT {_TOKEN_COLUMNS} FROM api_tokens WHERE id = $1 FOR UPDATE", token_id
        )
        if row is None:
            raise StoreError(f"no token {token_id}", reason=Reason.NOT_FOUND)
        if row["revoked_at"] is not None:
            raise StoreError(
                f"token {token_id} was revoked at {row['revoked_at'].isoformat()}",
                reason=Reason.CONFLICT,
            )
        row = await conn.fetchrow(
            f"UPDATE api_tokens SET revoked_at = now() WHERE id = $1 RETURNING {_TOKEN_COLUMNS}",
            token_id,
        )
    return _token_row(row)


async def list_tokens(
    store: StoreBase, *, after: int | None = None, limit: int | None = None
) -> list[TokenRow]:
    """Tokens oldest first: every one, or the page of at most ``limit`` after the id ``after``
    (the last id of the previous page)."""
    async with store._connection("list_tokens") as conn:
        rows = await conn.fetch(
            f"SELECT {_TOKEN_COLUMNS} FROM api_tokens WHERE id > $1 ORDER BY id LIMIT $2",
            after or 0,
            limit,
        )
    return [_token_row(r) for r in rows]


# --------------------------------------------------------------------------------------------
# Audit log


async def record_audit(
    store: StoreBase,
    *,
    actor: str,
    action: str,
    target: str = "",
    outcome: str = "ok",
    status: int | None = None,
    token_id: int | None = None,
    detail: Mapping[str, Any] | None = None,
    remote_addr: str | None = None,
) -> int:
    """Append one audit entry; returns its id."""
    async with store._connection("record_audit") as conn:
        entry_id: int = await conn.fetchval(
            "INSERT INTO audit_log (actor, token_id, action, target, outcome, status, detail, "
            "remote_addr) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8) RETURNING id",
            actor[:200],
            token_id,
            action[:100],
            target[:300],
            outcome[:100],
            status,
            json.dumps(dict(detail or {}), default=str),
            remote_addr,
        )
    return entry_id


async def list_audit(store: StoreBase, *, after: int = 0, limit: int = 100) -> list[AuditEntry]:
    """Audit entries with ``id > after``, oldest first, at most ``limit`` (capped at 1000)."""
    async with store._connection("list_audit") as conn:
        rows = await conn.fetch(
            f"SELECT {_AUDIT_COLUMNS} FROM audit_log WHERE id > $1 ORDER BY id LIMIT $2",
            after,
            max(1, min(limit, MAX_LIST)),
        )
    return [
        AuditEntry(
            id=r["id"],
            at=r["at"],
            actor=r["actor"],
            token_id=r["token_id"],
            action=r["action"],
            target=r["target"],
            outcome=r["outcome"],
            status=r["status"],
            detail=json.loads(r["detail"]),
            remote_addr=r["remote_addr"],
        )
        for r in rows
    ]


# --------------------------------------------------------------------------------------------
# Erasure


async def erase_reading(
    store: StoreBase,
    device_id: str,
    seq: int,
    *,
    actor: str,
    legal_reason: str,
    token_id: int | None = None,
) -> tuple[Tombstone, bool]:
    """Erase a reading's envelope and record its tombstone, in one transaction.

    Overwrites the envelope's bytes in its batch's packed row (``reading_batches``, sql/009)
    with zeros; the leaf hash, the reading's place and every log node stay, so all proofs stay
    valid. Idempotent: erasing an erased reading changes
    nothing and returns the first tombstone with ``False`` (``True`` when erased now).
    Raises ``StoreError``: ``not_found``, ``device_id_invalid``.
    """
    checked_device_id(device_id)
    if not 1 <= seq < 1 << 63:
        raise StoreError(f"no reading {device_id} seq {seq}", reason=Reason.NOT_FOUND)
    async with store._connection("erase_reading") as conn, conn.transaction():
        row = await conn.fetchrow(
            f"SELECT s.batch_id, bt.sealed_at, o.lo, o.hi, {LEAF_SQL} AS leaf_hash, "
            f"{ENVELOPE_SQL} AS envelope FROM {SEQS} {PACKED_JOIN} "
            f"{OFFSETS_SQL} WHERE d.device_id = $1 AND s.seq = $2 FOR UPDATE OF s",
            device_id,
            seq,
        )
        if row is not None:
            return await _erase_stored(conn, row, device_id, seq, (actor, legal_reason, token_id))
    # Not in the database's packed rows: perhaps in an archived month (its own connection).
    archived = await _erase_archived(
        store, device_id, seq, actor=actor, legal_reason=legal_reason, token_id=token_id
    )
    if archived is None:
        raise StoreError(f"no reading {device_id} seq {seq}", reason=Reason.NOT_FOUND)
    return archived


async def _erase_stored(
    conn: Any, row: Any, device_id: str, seq: int, who: tuple[str, str, int | None]
) -> tuple[Tombstone, bool]:
    actor, legal_reason, token_id = who
    existing = await conn.fetchrow(
        f"SELECT {_TOMBSTONE_COLUMNS} FROM reading_erasures WHERE device_id = $1 AND seq = $2",
        device_id,
        seq,
    )
    if existing is not None:
        return _tombstone(existing), False
    # The envelope's bytes in its batch's packed row become zeros (same length: no other
    # reading's offset moves); the leaf stays, so every proof stays valid. The row's old
    # version, like any updated row's, is gone once VACUUM has run.
    await conn.execute(
        "UPDATE reading_batches SET envelopes = overlay(envelopes PLACING "
        "decode(repeat('00', $4), 'hex') FROM $3 + 1 FOR $4) "
        "WHERE batch_id = $1 AND sealed_at = $2",
        row["batch_id"],
        row["sealed_at"],
        row["lo"],
        row["hi"] - row["lo"],
    )
    created = await _insert_tombstone(
        conn,
        (device_id, seq, row["leaf_hash"], actor[:200], token_id, legal_reason),
        envelope_format(bytes(row["envelope"])),
    )
    return _tombstone(created), True


async def _insert_tombstone(conn: Any, values: tuple[Any, ...], fmt: str) -> Any:
    return await conn.fetchrow(
        "INSERT INTO reading_erasures (device_id, seq, leaf_hash, actor, token_id, "
        f"legal_reason, format) VALUES ($1, $2, $3, $4, $5, $6, $7) "
        f"RETURNING {_TOMBSTONE_COLUMNS}",
        *values,
        fmt,
    )


async def _erase_archived(
    store: StoreBase,
    device_id: str,
    seq: int,
    *,
    actor: str,
    legal_reason: str,
    token_id: int | None,
) -> tuple[Tombstone, bool] | None:
    """Erase a reading of an archived month: the same tombstone, and the month's archive file
    rewritten with the envelope's bytes zeroed (anchor.store.archives.erase_archived); None
    when the reading is not in an archived month either."""

    async def insert(conn: Any, leaf: bytes, fmt: str) -> tuple[Tombstone, bool]:
        existing = await conn.fetchrow(
            f"SELECT {_TOMBSTONE_COLUMNS} FROM reading_erasures WHERE device_id = $1 AND seq = $2",
            device_id,
            seq,
        )
        if existing is not None:
            return _tombstone(existing), False
        values = (device_id, seq, leaf, actor[:200], token_id, legal_reason)
        return _tombstone(await _insert_tombstone(conn, values, fmt)), True

    async with store._connection("erase_reading") as conn:
        existing = await conn.fetchrow(
            f"SELECT {_TOMBSTONE_COLUMNS} FROM reading_erasures WHERE device_id = $1 AND seq = $2",
            device_id,
            seq,
        )
    if existing is not None:
        return _tombstone(existing), False
    result: tuple[Tombstone, bool] | None = await erase_archived(
        store, device_id, seq, insert_tombstone=insert
    )
    return result


async def tombstone(store: StoreBase, device_id: str, seq: int) -> Tombstone | None:
    """The reading's tombstone, or None when it was never erased."""
    async with store._connection("tombstone") as conn:
        row = await conn.fetchrow(
            f"SELECT {_TOMBSTONE_COLUMNS} FROM reading_erasures WHERE device_id = $1 AND seq = $2",
            device_id,
            seq,
        )
    return None if row is None else _tombstone(row)


# --------------------------------------------------------------------------------------------
# Metrics


async def seal_latencies(store: StoreBase, *, after_batch: int) -> tuple[list[float], int, int]:
    """Seal latency of each batch with ``id > after_batch``: ``sealed_at`` minus the earliest
    ``received_at`` of its readings, in seconds (clamped at 0: two clocks are involved).

    Returns ``(latencies, last_batch_id, erased_total)``; batch ids are taken under the seal
    lock, so once batch N is visible no batch below N can appear later, and the caller can
    keep cumulative counts and ask only for newer batches.
    """
    async with store._connection("seal_latencies") as conn:
        rows = await conn.fetch(
            "SELECT b.id, greatest(0, extract(epoch FROM b.sealed_at - p.received_min)) "
            "AS latency FROM batches b JOIN reading_batches p ON p.batch_id = b.id "
            "AND p.sealed_at = b.sealed_at WHERE b.id > $1 ORDER BY b.id",
            after_batch,
        )
        erased: int = await conn.fetchval("SELECT count(*) FROM reading_erasures")
    last = rows[-1]["id"] if rows else after_batch
    return [float(r["latency"]) for r in rows], last, erased


async def anchor_positions(
    store: StoreBase,
) -> tuple[tuple[int, datetime] | None, dict[str, tuple[int, datetime]]]:
    """The newest checkpoint ``(log_size, created_at)`` and, per backend, the newest anchored
    checkpoint ``(log_size, created_at)`` (backends that never anchored are absent)."""
    async with store._connection("anchor_positions") as conn:
        head = await conn.fetchrow(
            "SELECT log_size, created_at FROM checkpoints ORDER BY log_size DESC LIMIT 1"
        )
        rows = await conn.fetch(
            "SELECT DISTINCT ON (a.backend) a.backend, a.log_size, c.created_at "
            "FROM anchors a JOIN checkpoints c ON c.log_size = a.log_size "
            "ORDER BY a.backend, a.log_size DESC"
        )
    newest = None if head is None else (int(head["log_size"]), head["created_at"])
    return newest, {r["backend"]: (int(r["log_size"]), r["created_at"]) for r in rows}


# --------------------------------------------------------------------------------------------
# Anchoring


@contextlib.asynccontextmanager
async def anchor_lock_nowait(store: StoreBase) -> AsyncIterator[bool]:
    """Try to take the anchoring job's advisory lock (:data:`~anchor.store.ANCHOR_LOCK`)
    without waiting; yields whether it is held, and releases it afterwards.

    The lock is a session lock on one pooled connection, released before the connection goes
    back to the pool (and by PostgreSQL if the connection dies).
    """
    async with store._connection("anchor_lock") as conn:
        held = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", ANCHOR_LOCK))
        try:
            yield held
        finally:
            if held:
                await conn.execute("SELECT pg_advisory_unlock($1)", ANCHOR_LOCK)
