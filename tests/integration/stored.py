"""The stored readings, read and altered directly by tests (the layout of sql/009: a packed
``reading_batches`` row per batch and a ``reading_seqs`` row per reading)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from anchor.store import packed

# One row per stored reading: device_id, seq, batch_id, batch_index, received_at, envelope (the
# stored bytes: zeros once erased), leaf_hash, and where the envelope lies (sealed_at, lo, hi).
# Append a WHERE / ORDER BY on ``s`` (reading_seqs) and ``d`` (its device: d.device_id).
STORED_SQL = (
    f"SELECT d.device_id, s.seq, s.batch_id, s.batch_index, s.received_at, "
    f"{packed.ENVELOPE_SQL} AS envelope, {packed.LEAF_SQL} AS leaf_hash, "
    f"bt.sealed_at, o.lo, o.hi FROM {packed.SEQS} {packed.PACKED_JOIN} {packed.OFFSETS_SQL} "
)


async def tamper(conn: Any, device_id: str, seq: int, change: Callable[[bytes], bytes]) -> bytes:
    """Replace the stored envelope of (device_id, seq) by ``change(envelope)`` (same length:
    the offsets of the batch's other envelopes stay), as an intruder with SQL access would;
    returns the new bytes."""
    row = await conn.fetchrow(STORED_SQL + "WHERE d.device_id = $1 AND s.seq = $2", device_id, seq)
    new = change(bytes(row["envelope"]))
    assert len(new) == row["hi"] - row["lo"]
    await conn.execute(
        "UPDATE reading_batches SET envelopes = overlay(envelopes PLACING $3 FROM $4 + 1) "
        "WHERE batch_id = $1 AND sealed_at = $2",
        row["batch_id"],
        row["sealed_at"],
        new,
        row["lo"],
    )
    return new


def flip_middle_byte(envelope: bytes) -> bytes:
    """The envelope with one bit of its middle byte flipped."""
    b = bytearray(envelope)
    b[len(b) // 2] ^= 0x01
    return bytes(b)
