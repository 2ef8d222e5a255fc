"""Unit tests for anchor.admission: every refusal of the ingest precheck, without a broker."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anchor import admission
from anchor.admission import Admitted, Limits, ParsedMessage, Refusal, parse_topic, precheck
from anchor.envelope import FORMAT_JWS, Reading, sign_reading
from anchor.keys import PrivateKey, PublicKey
from anchor.store import DeviceKeyRecord, DeviceRecord, RegistryError

KEY = PrivateKey.generate("Ed25519")
OLD_KEY = PrivateKey.generate("Ed25519")
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
LIMITS = Limits(max_envelope_bytes=16 * 1024, clock_skew_future_ms=60_000, clock_skew_past_ms=0)
TOPIC = "city/north/aq-0001/readings"


@dataclass(frozen=True, slots=True)
class Key:
    kid: bytes
    valid_until: datetime | None
    public_key: PublicKey


@dataclass(frozen=True, slots=True)
class Device:
    device_id: str
    district: str
    revoked_at: datetime | None
    keys: tuple[Key, ...]


DEVICE = Device("aq-0001", "north", None, (Key(KEY.public_key.kid, None, KEY.public_key),))


def envelope(
    *, key: PrivateKey = KEY, ts: int = NOW_MS, device_id: str = "aq-0001", fmt: str = "cose-sign1"
) -> bytes:
    reading = Reading(
        device_id=device_id, seq=7, ts=ts, kind="iot.air_quality", values={"pm25": 3},
        prev=bytes(32),
    )  # fmt: skip
    return sign_reading(reading, key, format=fmt)


def refused(outcome: object) -> Refusal:
    assert isinstance(outcome, Refusal), outcome
    return outcome


def run(
    payload: bytes,
    topic: str = TOPIC,
    *,
    device: Device | None = DEVICE,
    received_at: datetime = NOW,
    limits: Limits = LIMITS,
) -> Admitted[Key] | Refusal:
    registry = {} if device is None else {device.device_id: device}
    return precheck(payload, topic, received_at, registry, limits=limits)


# ------------------------------------------------------------------------------ accepted


@pytest.mark.parametrize("fmt", ["cose-sign1", FORMAT_JWS])
def test_a_good_reading_is_admitted_with_its_key(fmt: str) -> None:
    raw = envelope(fmt=fmt)
    outcome = run(raw)
    assert isinstance(outcome, Admitted)
    assert outcome.envelope.raw == raw
    assert outcome.key is DEVICE.keys[0]


# ------------------------------------------------------------------------- steps 1-4


def test_oversized_is_refused_before_anything_is_parsed() -> None:
    raw = envelope()
    r = refused(run(raw, "not/a/topic", limits=replace(LIMITS, max_envelope_bytes=len(raw) - 1)))
    assert r.reason == "oversized"
    assert r.detail == f"{len(raw)} bytes > {len(raw) - 1}"
    assert (r.device_id, r.seq) == (None, None)
    assert isinstance(run(raw, limits=replace(LIMITS, max_envelope_bytes=len(raw))), Admitted)


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "city/north/aq-0001/ack",
        "city/north/aq-0001/readings/x",
        "town/north/aq-0001/readings",
        "city//aq-0001/readings",
        "city/north//readings",
        "city/no rth/aq-0001/readings",
        "city/north/" + "a" * 65 + "/readings",
        "city/+/aq-0001/readings",
    ],
)
def test_bad_topic(topic: str) -> None:
    r = refused(run(envelope(), topic))
    assert r.reason == "bad_topic"
    assert r.device_id is None


def test_a_trailing_newline_is_not_our_topic() -> None:
    # `$` matches before a final newline: the topic is matched whole (fullmatch).
    assert parse_topic(TOPIC + "\n") is None


def test_bad_topic_detail_is_bounded() -> None:
    r = refused(run(envelope(), "x" * 10_000))
    assert r.detail == f"topic {'x' * 120!r} is not ours"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [(b"", "malformed"), (b"\xd2\x84", "malformed"), (b"not an envelope", "malformed")],
)
def test_envelope_parse_failures_keep_the_parsers_reason(payload: bytes, reason: str) -> None:
    r = refused(run(payload))
    assert r.reason == reason
    assert r.device_id == "aq-0001"  # from the topic: the envelope could not say
    assert r.seq is None


def test_non_canonical_envelope_is_refused() -> None:
    token = envelope(fmt=FORMAT_JWS).decode()
    r = refused(run((token + "=").encode()))  # a padded signature segment
    assert r.reason in ("non_canonical", "malformed")


def test_topic_mismatch() -> None:
    r = refused(run(envelope(device_id="aq-0002")))
    assert r.reason == "topic_mismatch"
    assert r.detail == "envelope of 'aq-0002' published under 'aq-0001'"
    assert (r.device_id, r.seq) == ("aq-0001", 7)


def test_parse_message_alone_needs_no_registry() -> None:
    parsed = admission.parse_message(envelope(), TOPIC, limits=LIMITS)
    assert isinstance(parsed, ParsedMessage)
    assert parsed.district == "north"
    assert parsed.envelope.reading.device_id == "aq-0001"


# ------------------------------------------------------------------------- steps 5-8


def test_unknown_device() -> None:
    r = refused(run(envelope(), device=None))
    assert (r.reason, r.detail, r.device_id, r.seq) == (
        "unknown_device",
        "not in the registry",
        "aq-0001",
        7,
    )


def test_district_mismatch() -> None:
    r = refused(run(envelope(), "city/south/aq-0001/readings"))
    assert r.reason == "district_mismatch"
    assert r.detail == "published under district 'south', registered in 'north'"
    assert (r.device_id, r.seq) == ("aq-0001", 7)


def test_revoked_by_received_time() -> None:
    revoked = replace(DEVICE, revoked_at=NOW)
    assert isinstance(
        run(envelope(), device=revoked, received_at=NOW - timedelta(microseconds=1)), Admitted
    )
    r = refused(run(envelope(), device=revoked, received_at=NOW))
    assert r.reason == "device_revoked"
    assert r.detail == f"device aq-0001 was revoked at {NOW.isoformat()}"
    assert (r.device_id, r.seq) == ("aq-0001", 7)


def test_unknown_kid() -> None:
    r = refused(run(envelope(key=OLD_KEY)))
    assert r.reason == "unknown_kid"
    assert r.detail == f"device aq-0001 has no key with kid {OLD_KEY.public_key.kid.hex()}"


def test_rotated_key_accepts_only_readings_signed_before_the_rotation() -> None:
    rotated_at = NOW - timedelta(seconds=10)
    rotated_ms = NOW_MS - 10_000
    device = replace(
        DEVICE,
        keys=(Key(OLD_KEY.public_key.kid, rotated_at, OLD_KEY.public_key), DEVICE.keys[0]),
    )
    ok = run(envelope(key=OLD_KEY, ts=rotated_ms - 1), device=device)
    assert isinstance(ok, Admitted) and ok.key is device.keys[0]
    r = refused(run(envelope(key=OLD_KEY, ts=rotated_ms), device=device))
    assert r.reason == "key_rotated"
    assert r.detail == (
        f"key {OLD_KEY.public_key.kid.hex()} of device aq-0001 was rotated out at "
        f"{rotated_at.isoformat()}; the reading's ts {rotated_ms} is not before that"
    )


def test_clock_skew_future() -> None:
    assert isinstance(run(envelope(ts=NOW_MS + 60_000)), Admitted)
    r = refused(run(envelope(ts=NOW_MS + 60_001)))
    assert r.reason == "clock_skew"
    assert r.detail == f"device time {NOW_MS + 60_001} vs received {NOW_MS}"
    assert (r.device_id, r.seq) == ("aq-0001", 7)


def test_clock_skew_past_is_unbounded_at_zero_and_bounded_otherwise() -> None:
    old = envelope(ts=NOW_MS - 10**9)
    assert isinstance(run(old), Admitted)
    bounded = replace(LIMITS, clock_skew_past_ms=10**9)
    assert isinstance(run(old, limits=bounded), Admitted)
    r = refused(run(envelope(ts=NOW_MS - 10**9 - 1), limits=bounded))
    assert r.reason == "clock_skew"


def test_key_status_is_checked_before_the_clock() -> None:
    # A revoked device's far-future reading is device_revoked, not clock_skew: the order of
    # the checks decides the reason code, and the quarantine reports it.
    revoked = replace(DEVICE, revoked_at=NOW)
    assert refused(run(envelope(ts=NOW_MS + 10**9), device=revoked)).reason == "device_revoked"


# --------------------------------------------------------------------- the store delegates


def test_device_record_check_reading_raises_the_same_verdicts() -> None:
    key = DeviceKeyRecord("aq-0001", KEY.public_key.kid, KEY.public_key, NOW, None)
    record = DeviceRecord("aq-0001", "north", "", "active", NOW, NOW, None, (key,))
    assert record.check_reading(KEY.public_key.kid, NOW_MS, NOW - timedelta(seconds=1)) is key
    with pytest.raises(RegistryError) as exc:
        record.check_reading(KEY.public_key.kid, NOW_MS, NOW)
    assert exc.value.reason == "device_revoked"
    with pytest.raises(RegistryError) as exc:
        record.check_reading(b"\x01" * 32, NOW_MS, NOW - timedelta(seconds=1))
    assert exc.value.reason == "unknown_kid"
    assert key.current and key.accepts_ts(2**63)


# ------------------------------------------------------------------------------ properties

_SEGMENT = st.text(alphabet="abcXYZ019._-/+# ", min_size=0, max_size=70)


@given(district=_SEGMENT, device=_SEGMENT, tail=st.sampled_from(["readings", "ack", "reading"]))
def test_parse_topic_matches_the_obvious_rule(district: str, device: str, tail: str) -> None:
    topic = f"city/{district}/{device}/{tail}"
    ok = re.compile(r"[A-Za-z0-9._-]{1,64}")
    expected = (
        (district, device)
        if tail == "readings" and ok.fullmatch(district) and ok.fullmatch(device)
        else None
    )
    assert parse_topic(topic) == expected


@given(
    ts_ms=st.integers(min_value=0, max_value=2**64 - 1),
    micros=st.integers(min_value=0, max_value=2**53),
)
def test_key_accepts_ts_is_exact_integer_arithmetic(ts_ms: int, micros: int) -> None:
    valid_until = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)
    assert admission.key_accepts_ts(valid_until, ts_ms) == (ts_ms * 1000 < micros)
    assert admission.key_accepts_ts(None, ts_ms)


@given(payload=st.binary(max_size=256), topic=st.text(max_size=80))
def test_arbitrary_input_is_refused_never_raised(payload: bytes, topic: str) -> None:
    outcome = run(payload, topic)
    assert isinstance(outcome, Refusal)
    assert outcome.reason
