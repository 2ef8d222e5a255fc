"""The ingestor end to end: real Mosquitto, real PostgreSQL, the real `cityanchor ingest` process.

Each test gets its own database, share group and district, so tests never see each other's
messages; the ingestor runs as a subprocess so that it can be killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import paho.mqtt.client as mqtt
import pytest
import reference_merkle as ref  # tests/ is not a package
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from anchor import merkle
from anchor.checkpoint import NoteSigner, generate_note_key, open_checkpoint
from anchor.envelope import FORMAT_COSE, FORMAT_JWS, Reading, sign_reading
from anchor.keys import PrivateKey
from anchor.local import MosquittoServer, PostgresServer
from anchor.store import Store
from anchor.verify import verify_receipt
from devices.signer import DeviceSigner
from integration.stored import STORED_SQL

_counter = itertools.count(1)


@dataclass
class Env:
    dsn: str
    mqtt_url: str
    district: str
    group: str
    operator: NoteSigner
    key_file: Path
    workdir: Path

    def settings_env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            CITYANCHOR_DATABASE_URL=self.dsn,
            CITYANCHOR_MQTT_URL=self.mqtt_url,
            CITYANCHOR_MQTT_TOPIC=f"$share/{self.group}/city/{self.district}/+/readings",
            CITYANCHOR_OPERATOR_KEY_FILE=str(self.key_file),
            CITYANCHOR_LOG_ORIGIN="it.cityanchor.example/log",
            CITYANCHOR_BATCH_SIZE="200",
            CITYANCHOR_BATCH_AGE_MS="300",
            CITYANCHOR_VERIFY_PROCESSES="2",
            CITYANCHOR_INGESTOR_NAME=self.group,
            CITYANCHOR_REGISTRY_REFRESH_MS="500",
        )
        env.update(extra)
        return env


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _with_store(dsn: str, fn: Callable[[Store], Any]) -> Any:
    store = await Store.connect(dsn)
    try:
        return await fn(store)
    finally:
        await store.close()


def _new_database(server: PostgresServer, name: str) -> str:
    dsn = server.create_database(name)
    _run(_with_store(dsn, lambda s: s.migrate()))
    return dsn


def _env(server: PostgresServer, broker: MosquittoServer, tmp: Path) -> Env:
    n = next(_counter)
    operator = generate_note_key("it.cityanchor.example/log")
    key_file = tmp / "operator.skey"
    key_file.write_text(operator.skey() + "\n")
    return Env(
        dsn=_new_database(server, f"ingest_{n}_{os.getpid()}"),
        mqtt_url=broker.url,
        district=f"d{n}",
        group=f"g{n}x{os.getpid()}",
        operator=operator,
        key_file=key_file,
        workdir=tmp,
    )


@pytest.fixture
def env(postgres: PostgresServer, mosquitto: MosquittoServer, tmp_path: Path) -> Env:
    return _env(postgres, mosquitto, tmp_path)


class Ingestors:
    """Start `cityanchor ingest` processes and make sure none outlives the test."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, env: Env, *args: str, index: int = 0, subscriptions: int = 1, **extra: str
    ) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "anchor", "-v", "ingest", *args]
        if index:
            argv += ["--worker-index", str(index)]
        path = env.workdir / f"ingest-{len(self.procs)}.log"
        with path.open("wb") as log:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(argv, env=env.settings_env(**extra), stdout=log, stderr=log)
        self.procs.append(proc)
        # Messages published before the subscription exists would go nowhere: wait for it.
        _wait_for(
            lambda: (
                proc.poll() is not None
                or path.read_bytes().count(b"subscription active") >= subscriptions
            ),
            30,
            "the ingestor's subscription",
        )
        assert proc.poll() is None, path.read_text()
        return proc

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture
def ingestors() -> Iterator[Ingestors]:
    ing = Ingestors()
    yield ing
    ing.stop_all()


class Publisher:
    """A paho MQTT v5 QoS 1 publisher that waits for every PUBACK."""

    def __init__(self, url: str, client_id: str) -> None:
        u = urlsplit(url)
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
        )
        self.client.max_inflight_messages_set(1000)
        self.client.connect(u.hostname or "127.0.0.1", u.port or 1883)
        self.client.loop_start()
        self.infos: list[mqtt.MQTTMessageInfo] = []

    def publish(self, topic: str, payload: bytes) -> None:
        self.infos.append(self.client.publish(topic, payload, qos=1))

    def flush(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        for info in self.infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            assert info.is_published()
        self.infos.clear()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Fleet:
    signers: list[DeviceSigner]
    kinds: list[str]

    def topic(self, env: Env, i: int) -> str:
        return f"city/{env.district}/{self.signers[i].device_id}/readings"


def _fleet(env: Env, n: int) -> Fleet:
    signers = []
    for i in range(n):
        key = PrivateKey.generate("P-256" if i % 3 == 1 else "Ed25519")
        fmt = FORMAT_JWS if i % 2 else FORMAT_COSE
        signers.append(DeviceSigner(f"{env.district}-dev-{i:03d}", key, format=fmt))

    async def register(store: Store) -> None:
        for s in signers:
            await store.register_device(
                s.device_id, s.key.public_key, district=env.district, kind="iot.noise"
            )

    _run(_with_store(env.dsn, register))
    return Fleet(signers, ["iot.noise"] * n)


def _sign(fleet: Fleet, i: int, n: int) -> bytes:
    return fleet.signers[i].sign("iot.noise", {"laeq_db": 40.0 + n % 30, "n": n})


def _counts(env: Env) -> dict[str, int]:
    result: dict[str, int] = _run(_with_store(env.dsn, lambda s: s.counts()))
    return result


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _wait_counts(
    env: Env, readings: int, quarantine: int | None = None, timeout: float = 60
) -> dict[str, int]:
    last: dict[str, int] = {}

    def done() -> bool:
        nonlocal last
        last = _counts(env)
        return last.get("readings", 0) >= readings and (
            quarantine is None or last.get("quarantine", 0) >= quarantine
        )

    try:
        _wait_for(done, timeout, f"{readings} readings")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; counts now {last}") from None
    return last


async def _audit(env: Env) -> None:
    """Recompute every batch root from the stored envelopes and every checkpoint from the log."""
    conn = await asyncpg.connect(env.dsn)
    try:
        batches = await conn.fetch(
            "SELECT id, size, root, log_index FROM batches ORDER BY log_index"
        )
        assert [b["log_index"] for b in batches] == list(range(len(batches)))
        for b in batches:
            rows = await conn.fetch(
                STORED_SQL + "WHERE s.batch_id = $1 ORDER BY s.batch_index", b["id"]
            )
            leaves = [merkle.leaf_hash(r["envelope"]) for r in rows]
            assert leaves == [r["leaf_hash"] for r in rows]
            assert len(leaves) == b["size"]
            assert merkle.root(leaves) == b["root"]
        # The v2 log leaf, size || root, spelt out independently of anchor.merkle.
        log_leaves = [ref.leaf(ref.log_leaf_input(b["size"], b["root"])) for b in batches]
        checkpoints = await conn.fetch(
            "SELECT log_size, root, note FROM checkpoints ORDER BY log_size"
        )
        # One checkpoint per seal, each the root of a prefix of today's log: the log only grew.
        assert [c["log_size"] for c in checkpoints] == list(range(1, len(batches) + 1))
        for c in checkpoints:
            cp = open_checkpoint(c["note"], env.operator.verifier)
            assert cp.size == c["log_size"]
            assert cp.root == c["root"] == merkle.root(log_leaves[: cp.size])
    finally:
        await conn.close()


def _check_log_and_receipts(env: Env, fleet: Fleet, sample: Sequence[tuple[str, int]]) -> None:
    _run(_audit(env))

    async def check(store: Store) -> None:
        size = await store.log_size()
        note = await store.latest_checkpoint()
        assert note is not None
        cp = open_checkpoint(note, env.operator.verifier)
        entries = await store.log_entries(size)
        assert cp.size == size
        assert cp.root == ref.mth([ref.log_leaf_input(n, r) for n, r in entries])
        keys = [s.key.public_key for s in fleet.signers]
        for device_id, seq in sample:
            receipt = await store.receipt(device_id, seq)
            report = verify_receipt(
                receipt, device_keys=keys, log_verifiers=[env.operator.verifier]
            )
            assert report.fully_verified or [
                c.name for c in report.checks if c.status != "pass"
            ] == ["witnesses", "anchors"], report  # no witness key; not anchored yet

    _run(_with_store(env.dsn, check))


def test_mixed_faults_are_stored_once_or_quarantined_with_their_reason(
    env: Env, ingestors: Ingestors
) -> None:
    fleet = _fleet(env, 8)
    ingestors.start(env)
    pub = Publisher(env.mqtt_url, f"pub-{env.group}")
    expected: Counter[str] = Counter()
    good: list[tuple[str, int]] = []
    sent: list[tuple[int, bytes]] = []
    try:
        for n in range(400):
            i = n % 8
            raw = _sign(fleet, i, n)
            pub.publish(fleet.topic(env, i), raw)
            good.append((fleet.signers[i].device_id, fleet.signers[i].seq))
            sent.append((i, raw))
        # Faults, each with a known reason.
        i0, raw0 = sent[5]
        pub.publish(fleet.topic(env, i0), raw0)  # the same envelope again
        expected["replayed_seq"] += 1
        bad = bytearray(sent[9][1])
        if bad[:1] == b"e":  # JWS: flip a signature character in a way that stays base64url
            bad[-2] = ord("A") if bad[-2] != ord("A") else ord("B")
        else:
            bad[-1] ^= 1
        # A different envelope for an already stored seq is a conflict, not a bad signature:
        # verification passes or fails first; flipping the signature makes it bad_signature.
        pub.publish(fleet.topic(env, sent[9][0]), bytes(bad))
        expected["bad_signature"] += 1
        stranger = DeviceSigner(f"{env.district}-stranger", PrivateKey.generate())
        pub.publish(
            f"city/{env.district}/{stranger.device_id}/readings",
            stranger.sign("iot.noise", {"x": 1.0}),
        )
        expected["unknown_device"] += 1
        pub.publish(fleet.topic(env, 0), b"\x00garbage")
        expected["malformed"] += 1
        pub.publish(fleet.topic(env, 0), b"x" * (16 * 1024 + 1))
        expected["oversized"] += 1
        pub.publish(
            fleet.topic(env, 1), _sign(fleet, 0, 999)
        )  # device 0's reading on device 1's topic
        expected["topic_mismatch"] += 1
        good_seq_skipped = fleet.signers[0].seq  # that reading consumed a seq: a gap, not a loss
        # Same seq as a stored reading, different content, validly signed.
        d2 = fleet.signers[2]
        conflict = sign_reading(
            Reading(
                d2.device_id, 1, int(time.time() * 1000), "iot.noise", {"laeq_db": 99.0}, bytes(32)
            ),
            d2.key,
            format=d2.format,
        )
        pub.publish(fleet.topic(env, 2), conflict)
        expected["seq_conflict"] += 1
        future = sign_reading(
            Reading(
                d2.device_id,
                10_000,
                int(time.time() * 1000) + 3_600_000,
                "iot.noise",
                {"x": 1.0},
                bytes.fromhex("11" * 32),
            ),
            d2.key,
            format=d2.format,
        )
        pub.publish(fleet.topic(env, 2), future)
        expected["clock_skew"] += 1
        # '+' matches any level, so the ingestor sees this topic and must refuse it itself.
        pub.publish(f"city/{env.district}/bad topic/readings", b"x")
        expected["bad_topic"] += 1
        pub.flush()
    finally:
        pub.close()
    expected_quarantine = sum(expected.values())
    counts = _wait_counts(env, len(good), expected_quarantine)
    time.sleep(1.0)  # nothing more may arrive
    counts = _counts(env)
    assert counts["readings"] == len(good)
    reasons = {k.split(".", 1)[1]: v for k, v in counts.items() if k.startswith("quarantine.")}
    assert reasons == dict(expected)
    assert counts["quarantine"] == expected_quarantine, reasons
    assert good_seq_skipped  # documented above
    _check_log_and_receipts(env, fleet, good[::37])


def test_kill_9_mid_stream_loses_and_duplicates_nothing(env: Env, ingestors: Ingestors) -> None:
    fleet = _fleet(env, 10)
    first = ingestors.start(env)
    pub = Publisher(env.mqtt_url, f"pub-{env.group}")
    total = 3000
    try:
        for n in range(total):
            pub.publish(fleet.topic(env, n % 10), _sign(fleet, n % 10, n))
            if n == total // 3:
                _wait_for(lambda: _counts(env).get("readings", 0) > 0, 30, "first seal")
                first.send_signal(signal.SIGKILL)
                first.wait()
        pub.flush()
    finally:
        pub.close()
    before = _counts(env).get("readings", 0)
    assert before < total
    ingestors.start(env)
    counts = _wait_counts(env, total, timeout=90)
    time.sleep(1.0)
    counts = _counts(env)
    assert counts["readings"] == total
    # Redeliveries of sealed-but-unacknowledged messages are recognised, not stored again.
    assert counts.get("quarantine", 0) == counts.get("quarantine.replayed_seq", 0)
    _check_log_and_receipts(env, fleet, [(s.device_id, s.seq) for s in fleet.signers])


def test_postgres_outage_acknowledges_nothing_until_it_is_back(
    postgres: PostgresServer,
    mosquitto: MosquittoServer,
    service_dir: Path,
    tmp_path: Path,
    ingestors: Ingestors,
) -> None:
    own = PostgresServer(service_dir / "pg").start()
    try:
        env = _env(own, mosquitto, tmp_path)
        fleet = _fleet(env, 5)
        ingestor = ingestors.start(env)
        pub = Publisher(env.mqtt_url, f"pub-{env.group}")
        try:
            for n in range(200):
                pub.publish(fleet.topic(env, n % 5), _sign(fleet, n % 5, n))
            pub.flush()
            _wait_counts(env, 200)
            own.stop(mode="immediate")
            for n in range(200, 600):
                pub.publish(fleet.topic(env, n % 5), _sign(fleet, n % 5, n))
            pub.flush()
            time.sleep(2.0)  # the ingestor holds these, unacknowledged: the database is down
            # Kill it now: had it acknowledged anything before it was durable, that would be lost.
            ingestor.send_signal(signal.SIGKILL)
            ingestor.wait()
            own.start()
            ingestors.start(env)
            counts = _wait_counts(env, 600, timeout=90)
            time.sleep(1.0)
            assert _counts(env)["readings"] == 600, counts
        finally:
            pub.close()
    finally:
        ingestors.stop_all()
        own.stop()


def test_outage_without_crash_catches_up(
    mosquitto: MosquittoServer, service_dir: Path, tmp_path: Path, ingestors: Ingestors
) -> None:
    own = PostgresServer(service_dir / "pg").start()
    try:
        env = _env(own, mosquitto, tmp_path)
        fleet = _fleet(env, 4)
        ingestors.start(env)
        pub = Publisher(env.mqtt_url, f"pub-{env.group}")
        try:
            for n in range(100):
                pub.publish(fleet.topic(env, n % 4), _sign(fleet, n % 4, n))
            pub.flush()
            _wait_counts(env, 100)
            own.stop(mode="fast")
            for n in range(100, 400):
                pub.publish(fleet.topic(env, n % 4), _sign(fleet, n % 4, n))
            pub.flush()
            time.sleep(3.0)
            own.start()
            _wait_counts(env, 400, timeout=60)
            time.sleep(1.0)
            assert _counts(env)["readings"] == 400
        finally:
            pub.close()
    finally:
        ingestors.stop_all()
        own.stop()


def test_two_ingestors_share_one_stream_exactly_once(env: Env, ingestors: Ingestors) -> None:
    fleet = _fleet(env, 12)
    # `--workers 2`: a supervisor with two ingestor processes on the shared subscription.
    ingestors.start(env, "--workers", "2", subscriptions=2, CITYANCHOR_VERIFY_PROCESSES="1")
    pub = Publisher(env.mqtt_url, f"pub-{env.group}")
    total = 2400
    try:
        for n in range(total):
            pub.publish(fleet.topic(env, n % 12), _sign(fleet, n % 12, n))
        pub.flush()
    finally:
        pub.close()
    _wait_counts(env, total, timeout=90)
    time.sleep(1.0)
    counts = _counts(env)
    assert counts["readings"] == total
    assert counts.get("quarantine", 0) == 0

    async def ingestor_names() -> set[str]:
        conn = await asyncpg.connect(env.dsn)
        try:
            return {
                r["ingestor"] for r in await conn.fetch("SELECT DISTINCT ingestor FROM batches")
            }
        finally:
            await conn.close()

    names = _run(ingestor_names())
    assert len(names) == 2, names  # both processes sealed batches into the one log
    _check_log_and_receipts(env, fleet, [(s.device_id, s.seq) for s in fleet.signers])
