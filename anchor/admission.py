"""Admission: the rules an ingested MQTT message must pass before its signature is checked.

CONSENSUS-CRITICAL in the sense that matters for a transparency log: these rules decide which
readings may enter a batch and which are quarantined with which reason code. Pure: values in,
a verdict out, no I/O, no logging. The ingestor (:mod:`anchor.ingest.ingestor`) is a thin caller
that
only adds the one I/O step, the registry lookup; the store (:meth:`anchor.store.DeviceRecord.
check_reading`) applies :func:`check_key` again under the device row locks at seal time.

The checks, in order (each failure is a :class:`Refusal` with its reason code,
docs/reason-codes.md):

1. ``oversized``: the payload is larger than ``max_envelope_bytes``;
2. ``bad_topic``: the topic is not ``city/{district}/{device_id}/readings`` with both parts
   device ids (:data:`anchor.device_id.DEVICE_ID_PATTERN`, the one rule);
3. the envelope parse (:func:`anchor.envelope.parse_envelope`: ``malformed``,
   ``non_canonical``, ``unsupported_alg``, ...), canonical form included;
4. ``topic_mismatch``: the envelope's device_id is not the topic's;
5. ``unknown_device``: the registry has no such device;
6. ``district_mismatch``: the topic's district is not the registered one;
7. key status (:func:`check_key`): ``device_revoked`` (received at or after the revocation),
   ``unknown_kid`` (no key of the device has this kid), ``key_rotated`` (a rotated-out key and
   the reading's ``ts`` is not before the rotation);
8. ``clock_skew``: the device time is too far ahead of (or, when bounded, behind) the time the
   message was received.

Steps 1-4 are :func:`parse_message`, steps 5-8 :func:`admit`; :func:`precheck` chains them
over an in-memory registry.

Key validity (rotation): a key is acceptable for a reading when it is current
(``valid_until`` None) or the reading's device time ``ts`` (ms) is before its ``valid_until``;
revocation is by *received* time (see the "Key validity" notes in :mod:`anchor.store`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Generic, Protocol, TypeVar

from anchor.device_id import DEVICE_ID_PATTERN
from anchor.envelope import Envelope, parse_envelope
from anchor.errors import AnchorError, Reason

__all__ = [
    "TOPIC_RE",
    "Admitted",
    "DeviceView",
    "KeyView",
    "Limits",
    "ParsedMessage",
    "Refusal",
    "admit",
    "check_key",
    "key_accepts_ts",
    "key_is_current",
    "parse_message",
    "parse_topic",
    "precheck",
]

TOPIC_RE = re.compile(rf"^city/({DEVICE_ID_PATTERN})/({DEVICE_ID_PATTERN})/readings$")
"""The readings topic, ``city/{district}/{device_id}/readings``."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_topic(topic: str) -> tuple[str, str] | None:
    """``city/{district}/{device_id}/readings`` -> (district, device_id), else None."""
    m = TOPIC_RE.fullmatch(topic)
    return (m.group(1), m.group(2)) if m else None


# --------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds admission applies (from :class:`anchor.host.config.Settings`).

    ``clock_skew_past_ms`` 0 means readings may be arbitrarily old (a device that was offline
    delivers its outbox late); ``clock_skew_future_ms`` always bounds a device clock ahead.
    """

    max_envelope_bytes: int
    clock_skew_future_ms: int
    clock_skew_past_ms: int = 0


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a message is not admitted: a stable reason code, a human detail, and what is known
    of the reading (for the quarantine row)."""

    reason: Reason
    detail: str
    device_id: str | None = None
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    """A message that passed the checks needing no registry: its topic's district and envelope."""

    district: str
    envelope: Envelope


class KeyView(Protocol):
    """What admission reads of a registered key (:class:`anchor.store.DeviceKeyRecord`)."""

    @property
    def kid(self) -> bytes: ...

    @property
    def valid_until(self) -> datetime | None: ...


K_co = TypeVar("K_co", bound=KeyView, covariant=True)
K = TypeVar("K", bound=KeyView)


class DeviceView(Protocol[K_co]):
    """What admission reads of a registered device (:class:`anchor.store.DeviceRecord`)."""

    @property
    def device_id(self) -> str: ...

    @property
    def district(self) -> str: ...

    @property
    def revoked_at(self) -> datetime | None: ...

    @property
    def keys(self) -> Sequence[K_co]: ...


@dataclass(frozen=True, slots=True)
class Admitted(Generic[K]):
    """A message admitted for signature verification: its envelope and the key to verify with."""

    envelope: Envelope
    key: K


# --------------------------------------------------------------------------------------------
# Key validity


def _micros(when: datetime) -> int:
    return (when - _EPOCH) // timedelta(microseconds=1)


def key_is_current(valid_until: datetime | None) -> bool:
    """A key is current (new readings are signed with it) until it is rotated out."""
    return valid_until is None


def key_accepts_ts(valid_until: datetime | None, ts_ms: int) -> bool:
    """The key-validity rule: current, or the reading's device time precedes the rotation.

    Compared in integer microseconds: ``ts_ms * 1000 < valid_until``, exactly.
    """
    return valid_until is None or ts_ms * 1000 < _micros(valid_until)


def check_key(record: DeviceView[K], kid: bytes, ts_ms: int, received_at: datetime) -> K | Refusal:
    """The key of ``record`` that may verify a reading signed with ``kid`` at device time
    ``ts_ms`` and received at ``received_at``, or a :class:`Refusal`: ``device_revoked``,
    ``unknown_kid`` or ``key_rotated``. Checks neither the signature nor the clock skew.
    """
    if record.revoked_at is not None and received_at >= record.revoked_at:
        return Refusal(
            Reason.DEVICE_REVOKED,
            f"device {record.device_id} was revoked at {record.revoked_at.isoformat()}",
        )
    key = next((k for k in record.keys if k.kid == kid), None)
    if key is None:
        return Refusal(
            Reason.UNKNOWN_KID, f"device {record.device_id} has no key with kid {kid.hex()}"
        )
    if not key_accepts_ts(key.valid_until, ts_ms):
        assert key.valid_until is not None
        return Refusal(
            Reason.KEY_ROTATED,
            f"key {kid.hex()} of device {record.device_id} was rotated out at "
            f"{key.valid_until.isoformat()}; the reading's ts {ts_ms} is not before that",
        )
    return key


# --------------------------------------------------------------------------------------------
# The precheck


def parse_message(payload: bytes, topic: str, *, limits: Limits) -> ParsedMessage | Refusal:
    """Steps 1-4 of the module docstring: size, topic, envelope parse, topic/device match."""
    if len(payload) > limits.max_envelope_bytes:
        return Refusal(Reason.OVERSIZED, f"{len(payload)} bytes > {limits.max_envelope_bytes}")
    parsed_topic = parse_topic(topic)
    if parsed_topic is None:
        return Refusal(Reason.BAD_TOPIC, f"topic {topic[:120]!r} is not ours")
    district, topic_device = parsed_topic
    try:
        envelope = parse_envelope(payload)
    except AnchorError as exc:
        return Refusal(exc.reason, exc.detail, device_id=topic_device)
    reading = envelope.reading
    if reading.device_id != topic_device:
        return Refusal(
            Reason.TOPIC_MISMATCH,
            f"envelope of {reading.device_id!r} published under {topic_device!r}",
            device_id=topic_device,
            seq=reading.seq,
        )
    return ParsedMessage(district, envelope)


def admit(
    message: ParsedMessage,
    record: DeviceView[K] | None,
    received_at: datetime,
    *,
    limits: Limits,
) -> Admitted[K] | Refusal:
    """Steps 5-8 of the module docstring, given the registry's ``record`` of the envelope's
    device (None when it has none) and the time the message was received."""
    reading = message.envelope.reading
    device_id, seq = reading.device_id, reading.seq
    if record is None:
        return Refusal(Reason.UNKNOWN_DEVICE, "not in the registry", device_id, seq)
    if record.district != message.district:
        # The topic's district is the device's claim of where it is; it must be the one the
        # operator registered, or readings could be filed under another district.
        return Refusal(
            Reason.DISTRICT_MISMATCH,
            f"published under district {message.district!r}, registered in {record.district!r}",
            device_id,
            seq,
        )
    key = check_key(record, message.envelope.kid, reading.ts, received_at)
    if isinstance(key, Refusal):
        return Refusal(key.reason, key.detail, device_id, seq)
    received_ms = received_at.timestamp() * 1000
    if reading.ts - received_ms > limits.clock_skew_future_ms or (
        limits.clock_skew_past_ms and received_ms - reading.ts > limits.clock_skew_past_ms
    ):
        return Refusal(
            Reason.CLOCK_SKEW,
            f"device time {reading.ts} vs received {int(received_ms)}",
            device_id,
            seq,
        )
    return Admitted(message.envelope, key)


def precheck(
    payload: bytes,
    topic: str,
    received_at: datetime,
    registry: Mapping[str, DeviceView[K]],
    *,
    limits: Limits,
) -> Admitted[K] | Refusal:
    """Every admission check over an in-memory registry (device id -> record)."""
    parsed = parse_message(payload, topic, limits=limits)
    if isinstance(parsed, Refusal):
        return parsed
    record = registry.get(parsed.envelope.reading.device_id)
    return admit(parsed, record, received_at, limits=limits)
