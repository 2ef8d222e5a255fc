"""End-to-end acknowledgement (issue 11): a device forgets a reading only when the service says
it is durable, whatever the broker answered.

Real Mosquitto, PostgreSQL and the real `cityanchor ingest` process (the fixtures of
test_ingest). The fault of issue 11 item 1: devices publish while no ingestor is subscribed; the
broker answers PUBACK 0x10 "No matching subscribers" (a success code) and drops the message. A
device that deletes on PUBACK (the SDK before issue 11) loses every such reading; the SDK now
keeps them until the ingestor's acknowledgement, so all end sealed exactly once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from anchor import merkle
from anchor.keys import PrivateKey
from anchor.local import MosquittoServer, PostgresServer
from devices.publisher import SERVICE_REFUSED, Outbox, Publisher, Settled
from devices.signer import DeviceSigner
from integration import test_ingest as ingest_it

N = 40
NO_MATCHING_SUBSCRIBERS = 0x10


@pytest.fixture
def env(postgres: PostgresServer, service_dir: Path, tmp_path: Path) -> Iterator[ingest_it.Env]:
    # A private broker: on the session's shared one, another test's persistent `city/#`
    # session would match these topics and turn the 0x10 of the fault into 0x00.
    broker = MosquittoServer(service_dir / "mqtt", allow_anonymous=True).start()
    try:
        yield ingest_it._env(postgres, broker, tmp_path)
    finally:
        broker.stop()


@pytest.fixture
def ingestors() -> Iterator[ingest_it.Ingestors]:
    ing = ingest_it.Ingestors()
    yield ing
    ing.stop_all()


def _device(env: ingest_it.Env, name: str) -> DeviceSigner:
    signer = DeviceSigner(f"{env.district}-{name}", PrivateKey.generate())

    async def register(store: Any) -> None:
        await store.register_device(
            signer.device_id, signer.key.public_key, district=env.district, kind="iot.noise"
        )

    ingest_it._run(ingest_it._with_store(env.dsn, register))
    return signer


def _stored(env: ingest_it.Env, device_id: str) -> tuple[list[int], dict[str, int]]:
    async def q() -> tuple[list[int], dict[str, int]]:
        conn = await asyncpg.connect(env.dsn)
        try:
            seqs = await conn.fetch(
                "SELECT s.seq FROM reading_seqs s JOIN devices d ON d.num = s.device_num "
                "WHERE d.device_id = $1 ORDER BY s.seq",
                device_id,
            )
            rows = await conn.fetch(
                "SELECT reason, count(*) AS n FROM quarantine WHERE device_id = $1 GROUP BY 1",
                device_id,
            )
        finally:
            await conn.close()
        return [r["seq"] for r in seqs], {r["reason"]: r["n"] for r in rows}

    result: tuple[list[int], dict[str, int]] = ingest_it._run(q())
    return result


class _Recorder:
    def __init__(self) -> None:
        self.settled: list[Settled] = []
        self.lock = threading.Lock()

    def __call__(self, s: Settled) -> None:
        with self.lock:
            self.settled.append(s)


def _publisher(env: ingest_it.Env, box: Outbox, device: DeviceSigner, rec: _Recorder) -> Publisher:
    return Publisher(
        box,
        mqtt_url=env.mqtt_url,
        client_id=device.device_id,
        retry_min_s=0.2,
        retry_max_s=1.0,
        ack_timeout_s=3.0,
        ack_timeout_max_s=6.0,
        on_settled=rec,
    )


def _wait(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_puback_0x10_loses_readings_that_delete_on_puback_and_none_with_the_sdk(
    env: ingest_it.Env, ingestors: ingest_it.Ingestors, tmp_path: Path
) -> None:
    """The fault: no ingestor subscribed, every PUBACK is 0x10. Deleting on PUBACK (the old
    rule, played here by a bare paho client) loses all of them; the SDK keeps each until the
    ingestor's acknowledgement: all N sealed, none lost, none stored twice, all acknowledged."""
    old_device, new_device = _device(env, "old"), _device(env, "new")

    # The old rule: a device that deletes a reading when its PUBACK is a success (< 0x80).
    codes: list[int] = []
    u = urlsplit(env.mqtt_url)
    old = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=old_device.device_id,
        protocol=MQTTProtocolVersion.MQTTv5,
    )  # fmt: skip
    old.on_publish = lambda c, ud, mid, rc, p: codes.append(rc.value)
    old.connect(u.hostname or "127.0.0.1", u.port or 1883)
    old.loop_start()
    old_topic = f"city/{env.district}/{old_device.device_id}/readings"
    try:
        for _ in range(N):
            old.publish(old_topic, old_device.sign("iot.noise", {"laeq_db": 50.0}), qos=1)
        _wait(lambda: len(codes) == N, 20, "the old device's PUBACKs")
    finally:
        old.disconnect()
        old.loop_stop()
    assert set(codes) == {NO_MATCHING_SUBSCRIBERS}  # all "delivered" and deleted

    # The SDK, same fault.
    rec = _Recorder()
    with (
        Outbox(tmp_path / "new.outbox") as box,
        _publisher(env, box, new_device, rec) as pub,
    ):
        queued = [
            pub.publish_reading(new_device, env.district, "iot.noise", {"laeq_db": 40.0 + i})
            for i in range(N)
        ]
        _wait(lambda: pub.stats().get("no_subscribers", 0) >= N, 30, "0x10 PUBACKs")
        assert box.count() == N  # nothing forgotten
        assert pub.stats().get("acked", 0) == 0

        ingestors.start(env)  # the ingestor subscribes only now
        pub.flush(timeout=90)
        assert box.count() == 0 and box.rejected() == []
        stats = pub.stats()

    # Old device: every reading lost. New device: every reading sealed once and acknowledged.
    assert _stored(env, old_device.device_id)[0] == []
    seqs, quarantined = _stored(env, new_device.device_id)
    assert seqs == list(range(1, N + 1))
    assert set(quarantined) <= {"replayed_seq"}  # only resends the ack raced with
    by_leaf = {s.leaf_hash: s for s in rec.settled}
    assert set(by_leaf) == {q.leaf_hash for q in queued}
    assert all(s.durable and s.seq == q.seq for q in queued for s in [by_leaf[q.leaf_hash]])
    assert stats["acked"] == N and stats.get("refused", 0) == 0
    assert stats["ack_messages"] >= 1


def test_a_resent_sealed_reading_is_acknowledged_again_and_a_forgery_is_refused(
    env: ingest_it.Env, ingestors: ingest_it.Ingestors, tmp_path: Path
) -> None:
    """A resend of a stored reading is `replayed_seq`: acknowledged as durable again, stored
    once. A reading with a broken signature is refused for good (`bad_signature`): the device
    learns the reason and moves it to its rejected table instead of resending forever."""
    device = _device(env, "resend")
    ingestors.start(env)
    rec = _Recorder()
    topic = f"city/{env.district}/{device.device_id}/readings"
    with (
        Outbox(tmp_path / "resend.outbox") as box,
        _publisher(env, box, device, rec) as pub,
    ):
        first = pub.publish_reading(device, env.district, "iot.noise", {"laeq_db": 41.0})
        pub.flush(timeout=60)
        assert [(s.leaf_hash, s.reason) for s in rec.settled] == [(first.leaf_hash, "")]

        pub.put(topic, first.envelope)  # the same bytes again, as after a lost acknowledgement
        forged = bytearray(device.sign("iot.noise", {"laeq_db": 42.0}))
        forged[-1] ^= 0x01  # last byte of the signature
        pub.put(topic, bytes(forged))
        pub.flush(timeout=60)

        later = {s.leaf_hash: s for s in rec.settled[1:]}
        assert len(later) == 2
        again, refused = later[first.leaf_hash], later[merkle.leaf_hash(bytes(forged))]
        assert (again.leaf_hash, again.durable, again.reason) == (
            first.leaf_hash, True, "replayed_seq",
        )  # fmt: skip
        assert refused.leaf_hash == merkle.leaf_hash(bytes(forged))
        assert (refused.durable, refused.reason, refused.seq) == (False, "bad_signature", 2)
        [row] = box.rejected()
        assert row.payload == bytes(forged)
        assert (row.reason_code, row.reason) == (SERVICE_REFUSED, "bad_signature")
        assert box.count() == 0
    seqs, quarantined = _stored(env, device.device_id)
    assert seqs == [1]
    assert quarantined == {"replayed_seq": 1, "bad_signature": 1}


def test_readings_wait_in_the_outbox_while_the_ingestor_is_down_and_are_resent(
    env: ingest_it.Env, ingestors: ingest_it.Ingestors, tmp_path: Path
) -> None:
    """PUBACK 0x00 is not durability either: the ingestor's persistent session takes the
    messages while it is stopped, and the device keeps them until the acknowledgement that
    follows the seal (possibly after resends: harmless)."""
    device = _device(env, "outage")
    proc = ingestors.start(env)
    proc.terminate()  # clean stop: its persistent session (and subscription) stays
    proc.wait(30)
    rec = _Recorder()
    with (
        Outbox(tmp_path / "outage.outbox") as box,
        _publisher(env, box, device, rec) as pub,
    ):
        for i in range(N):
            pub.publish_reading(device, env.district, "iot.noise", {"laeq_db": 30.0 + i})
        _wait(lambda: pub.stats().get("pubacked", 0) >= N, 30, "PUBACKs")
        time.sleep(1.0)  # nothing can be acknowledged: nothing was sealed
        assert box.count() == N and pub.stats().get("acked", 0) == 0
        ingestors.start(env)
        pub.flush(timeout=90)
        assert pub.stats()["acked"] == N
    seqs, quarantined = _stored(env, device.device_id)
    assert seqs == list(range(1, N + 1))
    assert set(quarantined) <= {"replayed_seq"}


def test_nothing_is_acknowledged_while_the_database_is_down(
    service_dir: Path, tmp_path: Path, ingestors: ingest_it.Ingestors
) -> None:
    """A transient failure is never acknowledged: with PostgreSQL down the broker PUBACKs
    (0x00, the ingestor's session takes them) but the device hears nothing and keeps every
    reading; the ingestor is then killed -9 while holding them. When the database and an
    ingestor are back, all are sealed once and acknowledged."""
    pg = PostgresServer(service_dir / "pg").start()
    broker = MosquittoServer(service_dir / "mqtt", allow_anonymous=True).start()
    try:
        env = ingest_it._env(pg, broker, tmp_path)
        device = _device(env, "dbdown")
        proc = ingestors.start(env)
        rec = _Recorder()
        with (
            Outbox(tmp_path / "dbdown.outbox") as box,
            _publisher(env, box, device, rec) as pub,
        ):
            for i in range(10):
                pub.publish_reading(device, env.district, "iot.noise", {"laeq_db": 20.0 + i})
            pub.flush(timeout=60)
            assert pub.stats()["acked"] == 10
            pg.stop(mode="immediate")
            for i in range(N):
                pub.publish_reading(device, env.district, "iot.noise", {"laeq_db": 60.0 + i})
            _wait(lambda: pub.stats().get("pubacked", 0) >= 10 + N, 30, "PUBACKs")
            time.sleep(2.0)  # seals fail and are retried: nothing may be acknowledged
            assert box.count() == N and pub.stats()["acked"] == 10
            proc.kill()
            proc.wait()
            pg.start()
            ingestors.start(env)
            pub.flush(timeout=120)
            assert pub.stats()["acked"] == 10 + N
        seqs, quarantined = _stored(env, device.device_id)
        assert seqs == list(range(1, N + 11))
        assert set(quarantined) <= {"replayed_seq"}
    finally:
        ingestors.stop_all()
        broker.stop()
        pg.stop()
