"""The pure parts of the ingestor's MQTT client: framing and PUBLISH decoding, checked against
mqtt5's encoder and packets written out from the specification."""

from __future__ import annotations

import mqtt5
import pytest
from hypothesis import given
from hypothesis import strategies as st

from anchor.ingest.mqtt_native import ProtocolViolation, frame_length, parse_publish


def _decode(packet: bytes) -> tuple[int, str, bytes]:
    header = frame_length(packet, 0)
    assert header is not None
    start, length = header
    assert start + length == len(packet)
    return parse_publish(packet[0], packet, start, len(packet))


@given(
    topic=st.text(min_size=1, max_size=300).filter(lambda t: not set(t) & set("\x00+#")),
    payload=st.binary(max_size=70_000),
    pid=st.integers(1, 65535),
    qos=st.sampled_from([0, 1]),
    expiry=st.none() | st.integers(0, 2**32 - 1),
)
def test_publish_decodes_as_mqtt5_encodes_it(
    topic: str, payload: bytes, pid: int, qos: int, expiry: int | None
) -> None:
    packet = mqtt5.PublishPacket(
        topic,
        payload,
        qos=mqtt5.QoS(qos),
        packet_id=pid if qos else None,
        message_expiry_interval=expiry,
        user_properties=[("k", "v")],
    ).write()
    assert _decode(packet) == (pid if qos else 0, topic, payload)
    # Any shorter prefix is an incomplete frame, never a wrong packet.
    for cut in (1, 2, len(packet) // 2, len(packet) - 1):
        header = frame_length(packet[:cut], 0)
        assert header is None or header[0] + header[1] > cut


def test_a_publish_from_the_specification_decodes() -> None:
    # MQTT 5.0 section 3.3: QoS 1, topic "a/b", packet id 0x1234, no properties, "xyz".
    packet = b"\x32\x0b\x00\x03a/b\x12\x34\x00xyz"
    assert _decode(packet) == (0x1234, "a/b", b"xyz")
    # The same as QoS 0: no packet id.
    assert _decode(b"\x30\x09\x00\x03a/b\x00xyz") == (0, "a/b", b"xyz")


@pytest.mark.parametrize(
    ("packet", "code"),
    [
        (b"\x32\x08\x00\x01t\x00\x07\x05ab", 0x81),  # properties past the end
        (b"\x32\x03\x00\x09t", 0x81),  # topic past the end
        (b"\x32\x07\x00\x01\xff\x00\x07\x00x", 0x81),  # topic not UTF-8
        (b"\x32\x05\x00\x01t\x00\x07", 0x81),  # no property length
        (b"\x34\x07\x00\x01t\x00\x07\x00x", 0x82),  # QoS 2
        (b"\x32\x06\x00\x00\x00\x07\x00x", 0x82),  # empty topic (we allow no aliases)
        (b"\x32\x07\x00\x01t\x00\x00\x00x", 0x82),  # QoS 1 with packet id 0
    ],
)
def test_bad_publish_raises_its_reason(packet: bytes, code: int) -> None:
    with pytest.raises(ProtocolViolation) as caught:
        _decode(packet)
    assert caught.value.code == code


def test_frame_length() -> None:
    assert frame_length(b"\x30", 0) is None
    assert frame_length(b"\x30\x80", 0) is None
    assert frame_length(b"\x30\x00", 0) == (2, 0)
    assert frame_length(b"\x30\xff\x7f", 0) == (3, 16383)
    assert frame_length(b"\x30\xff\xff\xff\x7f", 0) == (5, 268_435_455)
    with pytest.raises(ProtocolViolation):
        frame_length(b"\x30\xff\xff\xff\xff\x01", 0)
