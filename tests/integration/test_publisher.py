"""The device publisher against a real private Mosquitto and the real ingestor: nothing signed
is ever lost.

Since issue 11 a reading leaves the outbox only when the ingestor's acknowledgement says it is
durable, so these tests run an ingestor (test_ingest's fixtures) next to the broker; before,
they ran against a bare broker and counted a PUBACK as delivery, which 0x10 "No matching
subscribers" showed to be wrong (tests/integration/test_device_ack.py).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from anchor.envelope import parse_envelope
from anchor.keys import PrivateKey
from anchor.local import MosquittoServer, PostgresServer
from devices import DeviceSigner, generate_values
from devices.publisher import Outbox, Publisher, PublishError, parse_mqtt_url
from integration import test_ingest as ingest_it

DISTRICT = "nanshan"
DEVICE = "aq-nanshan-00001"


class Subscriber:
    """A paho v5 QoS 1 subscriber to ``city/#`` with a persistent session, collecting
    (topic, payload) in arrival order; it re-subscribes after every reconnect."""

    def __init__(self, url: str, client_id: str) -> None:
        target = parse_mqtt_url(url)
        self.messages: list[tuple[str, bytes]] = []
        self.subscribed = 0
        self.cond = threading.Condition()
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
        )
        c.on_connect = self._on_connect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        c.reconnect_delay_set(1, 1)
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 300
        c.connect_async(target.host, target.port, clean_start=False, properties=props)
        c.loop_start()
        self.client = c
        self.wait_for(lambda: self.subscribed >= 1, 10)

    def _on_connect(self, c: mqtt.Client, u: Any, f: Any, rc: ReasonCode, p: Any) -> None:
        c.subscribe("city/#", qos=1)

    def _on_subscribe(self, c: mqtt.Client, u: Any, mid: int, rcs: Any, p: Any) -> None:
        with self.cond:
            self.subscribed += 1
            self.cond.notify_all()

    def _on_message(self, c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self.cond.notify_all()

    def wait_for(self, pred: Callable[[], bool], timeout: float) -> None:
        with self.cond:
            assert self.cond.wait_for(pred, timeout), "timed out waiting for the subscriber"

    def payloads(self) -> list[bytes]:
        with self.cond:
            return [p for _, p in self.messages]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker(service_dir: Path) -> Iterator[MosquittoServer]:
    """A private broker this test may stop, freeze and restart."""
    server = MosquittoServer(service_dir / "mqtt", allow_anonymous=True).start()
    try:
        yield server
    finally:
        if server.pid is not None:
            # Never leave it frozen: SIGTERM does nothing to a stopped process.
            os.kill(server.pid, signal.SIGCONT)
        server.stop()


def _signer(
    tmp_path: Path, device_id: str = DEVICE, env: ingest_it.Env | None = None
) -> DeviceSigner:
    signer = DeviceSigner.open(
        device_id, PrivateKey.generate(), state_path=tmp_path / f"{device_id}.state.json"
    )
    if env is not None:  # registered, so that the ingestor seals (and acknowledges) it

        async def register(store: Any) -> None:
            await store.register_device(
                device_id, signer.key.public_key, district=DISTRICT, kind="iot.air_quality"
            )

        ingest_it._run(ingest_it._with_store(env.dsn, register))
    return signer


def _ingest_env(postgres: PostgresServer, broker: MosquittoServer, tmp_path: Path) -> ingest_it.Env:
    env = ingest_it._env(postgres, broker, tmp_path)
    env.district = DISTRICT  # the ingestor's share group is per test; its topic filter this
    return env


@pytest.fixture
def ingestors() -> Iterator[ingest_it.Ingestors]:
    ing = ingest_it.Ingestors()
    yield ing
    ing.stop_all()


def _publish(pub: Publisher, signer: DeviceSigner, n: int, rng: random.Random) -> list[bytes]:
    out = []
    for _ in range(n):
        ts = time.time_ns() // 1_000_000
        values = generate_values("iot.air_quality", rng, ts_ms=ts, device_id=signer.device_id)
        out.append(pub.publish_reading(signer, DISTRICT, "iot.air_quality", values, ts).envelope)
    return out


def _wait(pred: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_every_reading_arrives_exactly_as_signed(
    postgres: PostgresServer,
    mosquitto: MosquittoServer,
    ingestors: ingest_it.Ingestors,
    tmp_path: Path,
) -> None:
    env = _ingest_env(postgres, mosquitto, tmp_path)
    ingestors.start(env)
    sub = Subscriber(mosquitto.url, "test-sub-exact")
    signer = _signer(tmp_path, env=env)
    try:
        with (
            Outbox(tmp_path / "outbox.sqlite") as box,
            Publisher(box, mqtt_url=mosquitto.url, client_id=DEVICE, max_inflight=8) as pub,
        ):
            sent = _publish(pub, signer, 60, random.Random(1))
            pub.flush(timeout=15)
            assert box.count() == 0
            assert pub.stats()["acked"] == 60
            assert box.rejected() == []
        topic = f"city/{DISTRICT}/{DEVICE}/readings"
        readings = [p for t, p in sub.messages if t == topic]
        # Byte for byte, in order, on the device's topic; the chain is 1..60 (PUBACKed and
        # acknowledged: the outbox sends nothing twice when the service answers in time).
        assert readings == sent
        assert {t for t, _ in sub.messages} == {topic, f"city/{DISTRICT}/{DEVICE}/ack"}
        assert [parse_envelope(p).reading.seq for p in readings] == list(range(1, 61))
    finally:
        sub.close()


def test_outbox_filled_while_broker_down_is_sent_after_restart(
    postgres: PostgresServer,
    broker: MosquittoServer,
    ingestors: ingest_it.Ingestors,
    tmp_path: Path,
) -> None:
    env = _ingest_env(postgres, broker, tmp_path)
    ingestors.start(env)
    sub = Subscriber(broker.url, "test-sub-restart")
    signer = _signer(tmp_path, env=env)
    rng = random.Random(2)
    path = tmp_path / "outbox.sqlite"
    try:
        box = Outbox(path)
        pub = Publisher(box, mqtt_url=broker.url, client_id=DEVICE, reconnect_max_s=1).start()
        before = _publish(pub, signer, 5, rng)
        pub.flush(timeout=10)

        broker.stop()
        _wait(lambda: not pub.connected, 10)
        during = _publish(pub, signer, 7, rng)  # signed and durably queued, never sent
        assert box.count() == 7
        pub.close()
        box.close()  # the "process" is gone; only the file remains

        broker.start()  # same port, persistent sessions restored
        sub.wait_for(lambda: sub.subscribed >= 2, 15)
        with Outbox(path) as box2:
            assert box2.count() == 7
            # The ingestor may reconnect after these are sent, and a broker restart can lose
            # what it PUBACKed (issue 11): without an acknowledgement they are sent again.
            with Publisher(
                box2, mqtt_url=broker.url, client_id=DEVICE, ack_timeout_s=2, ack_timeout_max_s=4
            ) as pub2:
                pub2.flush(timeout=40)
            assert box2.count() == 0
        sub.wait_for(lambda: set(before + during) <= set(sub.payloads()), 10)
        assert sub.payloads()[: len(before)] == before
        assert ingest_it._counts(env)["readings"] == len(before + during)  # each stored once
    finally:
        sub.close()


def test_publisher_killed_before_pubacks_resends_everything(
    postgres: PostgresServer,
    broker: MosquittoServer,
    ingestors: ingest_it.Ingestors,
    tmp_path: Path,
) -> None:
    env = _ingest_env(postgres, broker, tmp_path)
    ingestors.start(env)
    sub = Subscriber(broker.url, "test-sub-kill")
    signer = _signer(tmp_path, env=env)
    path = tmp_path / "outbox.sqlite"
    try:
        box = Outbox(path)
        pub = Publisher(box, mqtt_url=broker.url, client_id=DEVICE).start()
        _wait(lambda: pub.connected, 10)
        assert broker.pid is not None
        os.kill(broker.pid, signal.SIGSTOP)  # the broker hangs: PUBLISHes go out, no PUBACK
        try:
            sent = _publish(pub, signer, 6, random.Random(3))
            _wait(lambda: pub.stats().get("published", 0) == 6, 10)
            assert box.count() == 6 and pub.stats().get("acked", 0) == 0
            pub.close(timeout=2)
            box.close()
        finally:
            os.kill(broker.pid, signal.SIGCONT)
        with Outbox(path) as box2:
            assert box2.count() == 6
            with Publisher(box2, mqtt_url=broker.url, client_id=DEVICE) as pub2:
                pub2.flush(timeout=15)
        # At least once: every reading arrives (the first copies may arrive as well, and the
        # ingestor de-duplicates them by (device_id, seq)).
        sub.wait_for(lambda: set(sent) <= set(sub.payloads()), 10)
        topic = f"city/{DISTRICT}/{DEVICE}/readings"
        assert {p for t, p in sub.messages if t == topic} == set(sent)
        # Stored once each, whatever was sent twice.
        assert ingest_it._counts(env)["readings"] == len(sent)
    finally:
        sub.close()


def test_not_authorized_puback_moves_the_row_to_rejected(service_dir: Path, tmp_path: Path) -> None:
    acl = "user dev\ntopic write city/nanshan/aq-nanshan-00001/readings\n"
    server = MosquittoServer(service_dir / "auth", users={"dev": "s3cret"}, acl=acl).start()
    try:
        signer = _signer(tmp_path)
        stranger = _signer(tmp_path, "aq-nanshan-00002")
        with (
            Outbox(tmp_path / "outbox.sqlite") as box,
            Publisher(
                box, mqtt_url=server.url, client_id=DEVICE, username="dev", password="s3cret"
            ) as pub,
        ):
            rng = random.Random(4)
            ok = _publish(pub, signer, 2, rng)
            denied = _publish(pub, stranger, 1, rng)  # topic outside the ACL
            _wait(lambda: box.rejected() != [], 10)
            [rejected] = box.rejected()
            assert rejected.payload == denied[0] and rejected.reason_code == 0x87
            assert rejected.reason == "not_authorized"
            # Nobody subscribes on this broker: the others are PUBACKed 0x10, so they are kept
            # (and resent), not counted as delivered.
            _wait(lambda: pub.stats().get("no_subscribers", 0) >= len(ok), 10)
            assert box.count() == len(ok) and pub.stats().get("acked", 0) == 0
    finally:
        server.stop()


def test_flush_times_out_when_no_broker(tmp_path: Path) -> None:
    from anchor.local import free_port

    with (
        Outbox(tmp_path / "outbox.sqlite") as box,
        Publisher(box, mqtt_url=f"mqtt://127.0.0.1:{free_port()}", client_id=DEVICE) as pub,
    ):
        _publish(pub, _signer(tmp_path), 1, random.Random(5))
        with pytest.raises(PublishError) as exc:
            pub.flush(timeout=0.5)
        assert exc.value.reason == "flush_timeout"
        assert box.count() == 1
