"""The ingestor's own MQTT client (anchor.ingest.mqtt_native) on the wire.

Against the real Mosquitto: QoS 1 delivery, nothing acknowledged until the ingestor asks (a
session resumed after a close, and `cityanchor ingest` killed with SIGKILL between receiving and
committing, both get everything again), reconnection after a broker restart, an oversized
envelope quarantined with its reason. Against a scripted peer (Mosquitto never sends them):
malformed and QoS 2 packets answered with DISCONNECT and their reason code, then a reconnect.
"""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from anchor.broker.client import MqttTarget, parse_mqtt_url
from anchor.ingest.link import Incoming
from anchor.ingest.mqtt_native import NativeMqtt
from anchor.local import MosquittoServer, PostgresServer, free_port
from integration.test_ingest import (
    Env,
    Ingestors,
    Publisher,
    _counts,
    _env,
    _fleet,
    _sign,
    _wait_counts,
    _wait_for,
)


@pytest.fixture
def env(postgres: PostgresServer, mosquitto: MosquittoServer, tmp_path: Path) -> Env:
    return _env(postgres, mosquitto, tmp_path)


@pytest.fixture
def ingestors() -> Iterator[Ingestors]:
    ing = Ingestors()
    yield ing
    ing.stop_all()


async def _until(predicate: object, timeout: float, what: str) -> None:
    assert callable(predicate)
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _client(target: MqttTarget, client_id: str, topic: str, got: list[Incoming]) -> NativeMqtt:
    return NativeMqtt(
        target,
        client_id=client_id,
        topic=topic,
        deliver=got.extend,
        session_expiry_s=300,
        receive_maximum=100,
        reconnect_min_s=0.2,
        reconnect_max_s=1.0,
    )


def test_qos1_delivery_and_nothing_acknowledged_until_asked(mosquitto: MosquittoServer) -> None:
    topic = f"native/{free_port()}/readings"
    target = parse_mqtt_url(mosquitto.url)

    async def session(expect: int, ack: bool) -> list[Incoming]:
        got: list[Incoming] = []
        c = _client(target, "native-it-1", topic, got)
        c.start()
        await _until(lambda: len(got) >= expect, 20, f"{expect} deliveries")
        await asyncio.sleep(0.3)  # nothing more than expected arrives
        # The queued messages follow the CONNACK in the same read: they are this connection's
        # (the ingestor acknowledges only those of the current generation).
        assert all(d.generation == c.generation == 1 for d in got)
        if ack:
            c.ack([d.mid for d in got])
            await asyncio.sleep(0.2)
        await c.close()
        return got

    async def first_connect() -> None:
        c = _client(target, "native-it-1", topic, [])
        c.start()
        await _until(lambda: c.connected, 20, "the connection")
        await asyncio.sleep(0.3)  # the SUBACK
        await c.close()

    asyncio.run(first_connect())  # the persistent session and its subscription now exist
    pub = Publisher(mosquitto.url, "native-it-pub")
    try:
        for n in range(20):
            pub.publish(topic, b"reading %d" % n)
        pub.flush()
    finally:
        pub.close()
    first = asyncio.run(session(20, ack=False))
    assert [d.payload for d in first] == [b"reading %d" % n for n in range(20)]
    assert all(d.mid > 0 and d.topic == topic for d in first)
    # Not acknowledged: the resumed session gets all of them again, then acknowledges them.
    again = asyncio.run(session(20, ack=True))
    assert sorted(d.payload for d in again) == sorted(d.payload for d in first)
    # Acknowledged: nothing comes back.
    assert asyncio.run(session(0, ack=False)) == []


def test_reconnects_and_resubscribes_after_a_broker_restart(service_dir: Path) -> None:
    broker = MosquittoServer(service_dir / "mq", allow_anonymous=True).start()
    try:
        target = parse_mqtt_url(broker.url)
        got: list[Incoming] = []

        async def run() -> None:
            c = _client(target, "native-it-2", "restart/+", got)
            c.start()
            await _until(lambda: c.connected, 20, "the connection")
            first = c.generation
            await asyncio.to_thread(broker.stop)
            await _until(lambda: not c.connected, 20, "the disconnect")
            await asyncio.to_thread(broker.start)
            await _until(lambda: c.connected, 30, "the reconnect")
            assert c.generation == first + 1
            await asyncio.sleep(0.3)  # the SUBACK
            pub = Publisher(broker.url, "native-it-pub2")
            try:
                pub.publish("restart/x", b"after")
                pub.flush()
            finally:
                pub.close()
            await _until(lambda: len(got) == 1, 20, "the delivery after the restart")
            assert got[0].payload == b"after" and got[0].generation == c.generation
            c.ack([got[0].mid])
            await c.close()

        asyncio.run(run())
    finally:
        broker.stop()


class _ScriptedBroker:
    """Accepts connections, answers CONNECT and SUBSCRIBE, then sends ``bad`` once per
    connection and records what the client sends back."""

    def __init__(self, bad: bytes) -> None:
        self.bad = bad
        self.connections = 0
        self.received: list[bytes] = []

    @staticmethod
    async def _packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
        first = (await reader.readexactly(1))[0]
        length, shift = 0, 0
        while True:
            b = (await reader.readexactly(1))[0]
            length |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return first, await reader.readexactly(length)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            first, _ = await self._packet(reader)
            assert first == 0x10  # CONNECT
            writer.write(b"\x20\x03\x00\x00\x00")  # CONNACK: Success, no properties
            first, body = await self._packet(reader)
            assert first == 0x82  # SUBSCRIBE
            writer.write(b"\x90\x04" + body[:2] + b"\x00\x01")  # SUBACK: granted QoS 1
            writer.write(self.bad)
            await writer.drain()
            self.received.append(await reader.read(4096))
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        # PUBLISH QoS 1 whose property length (5) runs past the packet's end.
        (b"\x32\x08\x00\x01t\x00\x07\x05ab", 0x81),
        # A remaining length of five bytes.
        (b"\x30\xff\xff\xff\xff\x01", 0x81),
        # PUBLISH QoS 2: never subscribed for.
        (b"\x34\x07\x00\x01t\x00\x07\x00x", 0x82),
        # PUBLISH whose topic is not UTF-8 (mqtt5 0.8.0 itself would panic on it).
        (b"\x32\x07\x00\x01\xff\x00\x07\x00x", 0x81),
        # SUBACK (decoded by mqtt5) whose reason string is not UTF-8: mqtt5 0.8.0 panics, and
        # leaves its UnicodeDecodeError to sys.unraisablehook; the client refuses the packet.
        pytest.param(
            b"\x90\x08\x00\x09\x04\x1f\x00\x01\xff\x01",
            0x81,
            marks=pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
        ),
    ],
    ids=["bad-properties", "length-too-long", "qos2", "topic-not-utf8", "suback-not-utf8"],
)
def test_a_bad_packet_is_refused_with_its_reason_code_then_reconnects(
    bad: bytes, reason: int
) -> None:
    peer = _ScriptedBroker(bad)

    async def run() -> None:
        server = await asyncio.start_server(peer.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        got: list[Incoming] = []
        c = _client(MqttTarget("127.0.0.1", port), "native-it-3", "t", got)
        c.start()
        try:
            await _until(lambda: peer.connections >= 2, 20, "a second connection")
            await _until(lambda: len(peer.received) >= 1, 5, "the client's answer")
        finally:
            await c.close()
            server.close()
        assert got == []  # nothing from a connection that sent garbage was handed over
        assert peer.received[0] == bytes((0xE0, 1, reason))  # DISCONNECT with the reason

    asyncio.run(run())


def test_kill_9_between_receive_and_commit_redelivers(env: Env, ingestors: Ingestors) -> None:
    fleet = _fleet(env, 4)
    port = free_port()
    # Batches close only at 10,000 readings or after 10 minutes: what arrives stays received
    # and uncommitted until the ingestor is killed.
    first = ingestors.start(
        env,
        "--metrics-listen",
        f"127.0.0.1:{port}",
        CITYANCHOR_BATCH_SIZE="10000",
        CITYANCHOR_BATCH_AGE_MS="600000",
    )
    pub = Publisher(env.mqtt_url, f"pub-{env.group}")
    total = 40
    try:
        for n in range(total):
            pub.publish(fleet.topic(env, n % 4), _sign(fleet, n % 4, n))
        pub.flush()
    finally:
        pub.close()

    def received() -> bool:
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        return f"cityanchor_ingest_received_total {total}.0" in text

    _wait_for(received, 30, "every reading received")
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert _counts(env).get("readings", 0) == 0  # received, never committed
    ingestors.start(env)  # default batches: the redelivered readings are sealed
    counts = _wait_counts(env, total, timeout=60)
    assert counts["readings"] == total
    assert counts.get("quarantine", 0) == 0


def test_oversized_envelope_is_quarantined_with_its_reason(env: Env, ingestors: Ingestors) -> None:
    fleet = _fleet(env, 1)
    ingestors.start(env)
    pub = Publisher(env.mqtt_url, f"pub-{env.group}")
    try:
        # 200 KB: several socket reads for one packet, and above max_envelope_bytes (16 KiB).
        pub.publish(fleet.topic(env, 0), b"\xa1" + b"x" * 200_000)
        pub.publish(fleet.topic(env, 0), _sign(fleet, 0, 1))
        pub.flush()
    finally:
        pub.close()
    counts = _wait_counts(env, 1, quarantine=1)
    assert counts["readings"] == 1
    assert counts.get("quarantine.oversized") == 1


def test_verify_in_process_stores_good_and_quarantines_forged(
    env: Env, ingestors: Ingestors
) -> None:
    """``verify_processes -1`` (no pool: the ingestor process checks signatures itself, the
    mode for ``--workers N``): the same outcomes as with the pool."""
    fleet = _fleet(env, 2)  # an Ed25519 (COSE) and a P-256 (JWS) device
    ingestors.start(env, CITYANCHOR_VERIFY_PROCESSES="-1")
    pub = Publisher(env.mqtt_url, f"pub-{env.group}")
    try:
        for n in range(10):
            pub.publish(fleet.topic(env, n % 2), _sign(fleet, n % 2, n))
        for i in range(2):
            bad = bytearray(_sign(fleet, i, 100 + i))
            if bad[:1] == b"e":  # JWS: change a signature character, still base64url
                bad[-2] = ord("A") if bad[-2] != ord("A") else ord("B")
            else:
                bad[-1] ^= 1
            pub.publish(fleet.topic(env, i), bytes(bad))
        pub.flush()
    finally:
        pub.close()
    counts = _wait_counts(env, 10, quarantine=2)
    assert counts["readings"] == 10
    assert counts.get("quarantine.bad_signature") == 2


def test_paho_fallback_stores_and_acknowledges(env: Env, ingestors: Ingestors) -> None:
    """``--mqtt-client paho`` (the previous path, kept as a fallback) still ingests, and its
    PUBACKs go out: a second ingestor on the same session gets nothing again."""
    fleet = _fleet(env, 2)
    first = ingestors.start(env, "--mqtt-client", "paho")
    pub = Publisher(env.mqtt_url, f"pub-{env.group}")
    try:
        for n in range(12):
            pub.publish(fleet.topic(env, n % 2), _sign(fleet, n % 2, n))
        pub.flush()
    finally:
        pub.close()
    assert _wait_counts(env, 12)["readings"] == 12
    time.sleep(1.5)  # the PUBACKs follow the commit
    first.send_signal(signal.SIGTERM)
    first.wait(30)
    ingestors.start(env)  # native, same client id and session
    time.sleep(2.0)
    counts = _counts(env)
    assert counts["readings"] == 12
    assert counts.get("quarantine", 0) == 0  # nothing was redelivered (replayed_seq)
