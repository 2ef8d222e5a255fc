"""Reading the quarantine: why the ingestors refused what they refused (issue 14 item 14).

The rows are written by the seal transaction (:mod:`anchor.store.seal`); here they are read, for
``GET /v1/quarantine`` (scope ``audit:read``), ``cityanchor quarantine list`` and the receipt
404 an operator sees ("quarantined: <reason>"). The raw bytes kept in a row are never handed
out by these reads: only their size and SHA-256.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from anchor.store.connection import MAX_LIST, StoreBase
from anchor.store.errors import checked_device_id

__all__ = ["QuarantineRow", "list_quarantine", "quarantine_reason"]


@dataclass(frozen=True, slots=True)
class QuarantineRow:
    """One refused message: when, on which topic, what it claimed to be and why it was refused."""

    id: int
    received_at: datetime
    topic: str
    device_id: str | None
    seq: int | None
    reason: str
    detail: str
    raw_size: int
    raw_sha256: bytes
    ingestor: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "received_at": self.received_at.isoformat(),
            "topic": self.topic,
            "device_id": self.device_id,
            "seq": self.seq,
            "reason": self.reason,
            "detail": self.detail,
            "raw_size": self.raw_size,
            "raw_sha256": self.raw_sha256.hex(),
            "ingestor": self.ingestor,
        }


_COLUMNS = "id, received_at, topic, device_id, seq, reason, detail, raw_size, raw_sha256, ingestor"


async def list_quarantine(
    store: StoreBase,
    *,
    device_id: str | None = None,
    reason: str | None = None,
    after: int = 0,
    limit: int = 100,
) -> list[QuarantineRow]:
    """Quarantine rows with ``id > after`` (the last id of the previous page), oldest first, at
    most ``limit`` (capped at 1000), optionally of one device and/or one reason code."""
    where: list[str] = ["id > $1"]
    args: list[object] = [after]
    if device_id is not None:
        args.append(device_id)
        where.append(f"device_id = ${len(args)}")
    if reason is not None:
        args.append(reason)
        where.append(f"reason = ${len(args)}")
    args.append(max(1, min(limit, MAX_LIST)))
    sql = (
        f"SELECT {_COLUMNS} FROM quarantine WHERE {' AND '.join(where)} "
        f"ORDER BY id LIMIT ${len(args)}"
    )
    async with store._connection("list_quarantine") as conn:
        rows = await conn.fetch(sql, *args)
    return [
        QuarantineRow(
            id=r["id"],
            received_at=r["received_at"],
            topic=r["topic"],
            device_id=r["device_id"],
            seq=r["seq"],
            reason=r["reason"],
            detail=r["detail"],
            raw_size=r["raw_size"],
            raw_sha256=bytes(r["raw_sha256"]),
            ingestor=r["ingestor"],
        )
        for r in rows
    ]


async def quarantine_reason(store: StoreBase, device_id: str, seq: int) -> str | None:
    """The reason code of the newest quarantine row of ``device_id`` ``seq``, or None."""
    checked_device_id(device_id)
    async with store._connection("quarantine_reason") as conn:
        reason: str | None = await conn.fetchval(
            "SELECT reason FROM quarantine WHERE device_id = $1 AND seq = $2 "
            "ORDER BY id DESC LIMIT 1",
            device_id,
            seq,
        )
    return reason
