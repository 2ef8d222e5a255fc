"""The device acknowledgement codec (anchor.device_ack): strict, bounded, round-trips."""

from __future__ import annotations

import hashlib

import pytest

from anchor.device_ack import (
    DURABLE,
    FINAL_REASONS,
    MAX_ENTRIES,
    REFUSED,
    TRANSIENT_REASONS,
    AckEntry,
    AckError,
    ack_topic,
    ack_topic_for,
    decode_ack,
    encode_ack,
    encode_acks,
)
from anchor.errors import AnchorError

LEAF = hashlib.sha256(b"x").digest()


def test_round_trip_and_layout() -> None:
    entries = [
        AckEntry(1, LEAF, DURABLE),
        AckEntry(2**64 - 1, LEAF, DURABLE, "replayed_seq"),
        AckEntry(0, LEAF, REFUSED, "malformed"),
    ]
    data = encode_ack(entries)
    assert data[:3] == b"\x01\x00\x03"
    assert len(data) == 3 + 3 * 42 + len("replayed_seq") + len("malformed")
    assert data[3:11] == (1).to_bytes(8, "big") and data[11:43] == LEAF
    assert data[43:45] == b"\x00\x00"
    assert decode_ack(data) == entries


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01\x00",
        b"\x02\x00\x01" + bytes(8) + LEAF + b"\x00\x00",  # unknown version
        b"\x01\x00\x00",  # no entries
        b"\x01\x04\x01",  # too many entries
        b"\x01\x00\x01" + bytes(8) + LEAF,  # truncated entry
        b"\x01\x00\x01" + bytes(8) + LEAF + b"\x00\x05abc",  # truncated reason
        b"\x01\x00\x01" + bytes(8) + LEAF + b"\x00\x00\x00",  # trailing byte
        b"\x01\x00\x01" + bytes(8) + LEAF + b"\x02\x00",  # unknown status
        b"\x01\x00\x01" + bytes(8) + LEAF + b"\x01\x00",  # refused without a reason
        b"\x01\x00\x01" + bytes(8) + LEAF + b"\x01\x03A\nB",  # not a reason code
        b"\x01\x00\x01" + bytes(8) + LEAF + b"\x01\x02\xc3\xa9",  # not ASCII
    ],
)
def test_malformed_acks_are_refused(data: bytes) -> None:
    with pytest.raises(AckError) as exc:
        decode_ack(data)
    assert exc.value.reason == "ack_malformed"


def test_bounds() -> None:
    with pytest.raises(AckError):
        encode_ack([])
    with pytest.raises(AckError):
        AckEntry(1, LEAF[:31], DURABLE)
    with pytest.raises(AckError):
        AckEntry(-1, LEAF, DURABLE)
    many = [AckEntry(i + 1, LEAF, DURABLE) for i in range(MAX_ENTRIES * 2 + 1)]
    messages = encode_acks(many)
    assert len(messages) == 3
    assert [e for m in messages for e in decode_ack(m)] == many


def test_topics() -> None:
    assert ack_topic("futian", "aq-0001") == "city/futian/aq-0001/ack"
    assert ack_topic_for("city/futian/aq-0001/readings") == "city/futian/aq-0001/ack"
    for bad in ("city/futian/aq-0001/ack", "city/+/aq/readings", "x/futian/aq/readings", ""):
        assert ack_topic_for(bad) is None
    with pytest.raises(AnchorError) as exc:
        ack_topic("north/+", "aq")
    assert exc.value.reason == "topic_invalid"


def test_final_and_transient_reasons_are_disjoint_ingest_codes() -> None:
    assert not FINAL_REASONS & TRANSIENT_REASONS
    assert "replayed_seq" not in FINAL_REASONS | TRANSIENT_REASONS  # durable, acknowledged
    assert "bad_topic" not in FINAL_REASONS  # names no device: nobody to tell


def test_every_ingest_code_has_a_verdict() -> None:
    """A new quarantine code must be classed final or transient for the acknowledgement."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "reason-codes.md").read_text()
    section = text[text.index("## Ingest codes") : text.index("## Receipt verification")]
    codes: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            codes |= set(line.split("|")[1].split("`")[1::2])
    assert codes == FINAL_REASONS | TRANSIENT_REASONS | {"replayed_seq", "bad_topic"}
