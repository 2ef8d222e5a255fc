"""The device acknowledgement: which of a device's published readings are durable (pure).

Consensus-adjacent wire format: devices in the field parse these bytes, so the layout below is
frozen (a new layout gets a new version byte). No I/O here; the ingestor encodes, the device SDK
(:mod:`devices.publisher`) parses, and docs/device-guide.md ("Acknowledgements") documents the
same bytes, checked by tests/unit/test_docs_examples.py.

Why the service acknowledges and not the broker: an MQTT v5 PUBACK says only that the broker
took the message. Reason code 0x10 *No matching subscribers* is a success code, yet the broker
has dropped the message; a broker that crashes between PUBACK and delivery loses it too. Only
the seal transaction makes a reading durable, so only the ingestor, after that commit, may tell
a device to forget one.

Topic: ``city/{district}/{device_id}/ack`` (the reading's topic with ``readings`` replaced by
``ack``), published at QoS 1 by the ingestor; the broker lets only that device subscribe to it
and only the ingestors publish to it.

Payload (all integers big-endian)::

    offset  size  field
    0       1     version, 0x01
    1       2     n, the number of entries, 1..MAX_ENTRIES
    3       ...   n entries, each:
                    8   seq (uint64; 0 when the service could not read one from the payload)
                    32  leaf hash: H(0x00 || the payload bytes exactly as published), H being
                        the log's hash (SHA-256 unless the operator chose rfc9162-sm3); the
                        receipt's ``leaf_hash`` and the next envelope's ``prev``
                    1   status: 0x00 durable, 0x01 refused for good
                    1   m, the length of the reason
                    m   reason, ASCII: "" (sealed now), "replayed_seq" (already stored: durable)
                        or, with status 0x01, the quarantine reason code
    nothing follows the last entry.

A device matches entries by leaf hash, never by seq alone: a payload that only claims the
device's seq (a forgery, a corrupted copy) has another leaf hash, so its refusal cannot make the
device drop the reading it really signed.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from anchor.device_id import DEVICE_ID_PATTERN, DEVICE_ID_RE
from anchor.errors import AnchorError, Reason

__all__ = [
    "ACK_VERSION",
    "DURABLE",
    "FINAL_REASONS",
    "MAX_ENTRIES",
    "REFUSED",
    "TRANSIENT_REASONS",
    "AckEntry",
    "AckError",
    "ack_topic",
    "ack_topic_for",
    "decode_ack",
    "encode_ack",
    "encode_acks",
]

ACK_VERSION = 0x01
DURABLE = 0x00
REFUSED = 0x01
MAX_ENTRIES = 1024
"""Entries per message: at most about 1024 * (42 + 24) bytes, well under any broker's limit.
A seal that settles more for one device sends several messages."""

FINAL_REASONS = frozenset(
    {
        Reason.OVERSIZED,
        Reason.MALFORMED,
        Reason.NON_CANONICAL,
        Reason.ALG_NOT_ALLOWED,
        Reason.UNSUPPORTED_HEADER,
        Reason.TOPIC_MISMATCH,
        Reason.DISTRICT_MISMATCH,
        Reason.DEVICE_REVOKED,
        Reason.KEY_ROTATED,
        Reason.CLOCK_SKEW,
        Reason.BAD_SIGNATURE,
        Reason.SEQ_CONFLICT,
        Reason.PREV_MISMATCH,
        Reason.OUT_OF_RANGE,
    }
)
"""Quarantine reasons after which resending the same bytes can never be accepted: the device
is told (status 0x01) and stops resending. ``replayed_seq`` is not among them: it means the
exact envelope is already stored, so it is acknowledged as durable."""

TRANSIENT_REASONS = frozenset({Reason.UNKNOWN_DEVICE, Reason.UNKNOWN_KID})
"""Quarantine reasons decided by the ingestor's registry cache, which can lag a registration or
a key rotation by ``registry_refresh_ms``: never acknowledged, so the device resends. A failed
seal (database down) is not acknowledged either: nothing was committed."""

_HEAD = struct.Struct(">BH")
_ENTRY = struct.Struct(">Q32sBB")
_REASON = re.compile(r"[a-z0-9_]{0,64}")
_SEGMENT = DEVICE_ID_RE  # the one rule: anchor.device_id
_READINGS_TOPIC = re.compile(rf"city/({DEVICE_ID_PATTERN})/({DEVICE_ID_PATTERN})/readings")


class AckError(AnchorError):
    """An acknowledgement that breaks the layout above (``ack_malformed``)."""

    reason = Reason.ACK_MALFORMED


@dataclass(frozen=True, slots=True)
class AckEntry:
    """One settled reading: its seq, the leaf hash of its exact bytes, and the verdict."""

    seq: int
    leaf_hash: bytes
    status: int
    reason: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.seq < 1 << 64:
            raise AckError(f"seq {self.seq} is not a uint64")
        if len(self.leaf_hash) != 32:
            raise AckError(f"leaf hash of {len(self.leaf_hash)} bytes, expected 32")
        if self.status not in (DURABLE, REFUSED):
            raise AckError(f"unknown status 0x{self.status:02x}")
        if not _REASON.fullmatch(self.reason) or (self.status == REFUSED and not self.reason):
            raise AckError(f"reason {self.reason[:80]!r} is not a reason code")

    @property
    def durable(self) -> bool:
        return self.status == DURABLE


def ack_topic(district: str, device_id: str) -> str:
    """``city/{district}/{device_id}/ack``; ``AckError`` (``topic_invalid``) for ids outside
    ``[A-Za-z0-9._-]{1,64}``."""
    for value in (district, device_id):
        if not isinstance(value, str) or not _SEGMENT.fullmatch(value):
            raise AckError(f"{value!r} is not {DEVICE_ID_PATTERN}", reason=Reason.TOPIC_INVALID)
    return f"city/{district}/{device_id}/ack"


def ack_topic_for(readings_topic: str) -> str | None:
    """The ack topic answering ``city/{district}/{device_id}/readings``, else None."""
    m = _READINGS_TOPIC.fullmatch(readings_topic)
    return f"city/{m.group(1)}/{m.group(2)}/ack" if m else None


def encode_ack(entries: Sequence[AckEntry]) -> bytes:
    """One acknowledgement message (1..MAX_ENTRIES entries)."""
    if not 1 <= len(entries) <= MAX_ENTRIES:
        raise AckError(f"{len(entries)} entries; 1..{MAX_ENTRIES} per message")
    out = [_HEAD.pack(ACK_VERSION, len(entries))]
    for e in entries:
        reason = e.reason.encode("ascii")
        out.append(_ENTRY.pack(e.seq, e.leaf_hash, e.status, len(reason)))
        out.append(reason)
    return b"".join(out)


def encode_acks(entries: Iterable[AckEntry]) -> list[bytes]:
    """As many messages as ``entries`` need, in order, MAX_ENTRIES each."""
    items = list(entries)
    return [encode_ack(items[i : i + MAX_ENTRIES]) for i in range(0, len(items), MAX_ENTRIES)]


def decode_ack(data: bytes) -> list[AckEntry]:
    """Parse one acknowledgement strictly: version 0x01, 1..MAX_ENTRIES entries, known status,
    a reason of ``[a-z0-9_]`` only, no trailing bytes. Raises ``AckError`` (``ack_malformed``)."""
    if len(data) < _HEAD.size:
        raise AckError(f"{len(data)} bytes: shorter than the 3-byte header")
    version, n = _HEAD.unpack_from(data, 0)
    if version != ACK_VERSION:
        raise AckError(f"version 0x{version:02x}; only 0x{ACK_VERSION:02x} is known")
    if not 1 <= n <= MAX_ENTRIES:
        raise AckError(f"{n} entries; 1..{MAX_ENTRIES} per message")
    pos = _HEAD.size
    entries = []
    for _ in range(n):
        if pos + _ENTRY.size > len(data):
            raise AckError("truncated entry")
        seq, leaf, status, m = _ENTRY.unpack_from(data, pos)
        pos += _ENTRY.size
        if pos + m > len(data):
            raise AckError("truncated reason")
        try:
            reason = data[pos : pos + m].decode("ascii")
        except UnicodeDecodeError:
            raise AckError("reason is not ASCII") from None
        pos += m
        entries.append(AckEntry(seq, leaf, status, reason))
    if pos != len(data):
        raise AckError(f"{len(data) - pos} trailing bytes")
    return entries
