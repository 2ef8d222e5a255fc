"""The device outbox: durable, ordered, bounded, one owner at a time (no broker needed)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from anchor.errors import AnchorError
from devices.publisher import Outbox, OutboxError, parse_mqtt_url, reading_topic

TOPIC = "city/nanshan/aq-nanshan-00001/readings"


def test_put_pending_ack_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    with Outbox(path) as box:
        ids = [box.put(TOPIC, f"envelope-{i}".encode()) for i in range(5)]
        assert ids == sorted(ids)
        assert box.ack(ids[1]) is True
        assert box.ack(ids[1]) is False  # already gone
        assert box.count() == 4
    with Outbox(path) as box:
        assert box.count() == 4
        rows = box.pending(10)
        assert [r.id for r in rows] == [ids[0], ids[2], ids[3], ids[4]]
        assert [r.payload for r in rows] == [b"envelope-%d" % i for i in (0, 2, 3, 4)]
        assert all(r.topic == TOPIC and r.created_at_ms > 0 for r in rows)
        assert [r.id for r in box.pending(2, after_id=ids[2])] == [ids[3], ids[4]]
        assert box.ack_many([ids[0], ids[3], 999_999]) == 2
    with Outbox(path) as box:
        assert [r.payload for r in box.pending()] == [b"envelope-2", b"envelope-4"]


def test_ids_are_never_reused(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    with Outbox(path) as box:
        first = box.put(TOPIC, b"a")
        box.ack(first)
    with Outbox(path) as box:
        # AUTOINCREMENT: an id acknowledged once can never name another envelope.
        assert box.put(TOPIC, b"b") > first


def test_full_outbox_raises_outbox_full(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite", max_entries=3) as box:
        for i in range(3):
            box.put(TOPIC, bytes([i]))
        assert not box.has_room()
        with pytest.raises(OutboxError) as exc:
            box.put(TOPIC, b"one too many")
        assert exc.value.reason == "outbox_full"
        assert box.count() == 3
        box.ack(box.pending(1)[0].id)
        box.put(TOPIC, b"fits again")
        assert box.count() == 3


def test_byte_bound(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite", max_bytes=100) as box:
        box.put(TOPIC, b"x" * 60)
        with pytest.raises(OutboxError) as exc:
            box.put(TOPIC, b"y" * 41)
        assert exc.value.reason == "outbox_full"
        box.put(TOPIC, b"y" * 40)


def test_bounds_are_recounted_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    with Outbox(path, max_entries=2) as box:
        box.put(TOPIC, b"1")
        box.put(TOPIC, b"2")
    with Outbox(path, max_entries=2) as box, pytest.raises(OutboxError) as exc:
        box.put(TOPIC, b"3")
    assert exc.value.reason == "outbox_full"


def test_put_is_visible_to_another_connection_at_once(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    with Outbox(path) as box:
        entry_id = box.put(TOPIC, b"signed")
        # A second, independent connection (as after a crash): the row is committed already.
        other = sqlite3.connect(path)
        try:
            rows = other.execute("SELECT id, topic, payload FROM outbox").fetchall()
            mode = other.execute("PRAGMA journal_mode").fetchone()[0]
        finally:
            other.close()
        assert rows == [(entry_id, TOPIC, b"signed")]
        assert mode == "wal"


def test_synchronous_full(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite") as box:
        # 2 == FULL: every commit (every put) is fsynced before it returns.
        assert box._db.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_one_owner_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    with Outbox(path):
        with pytest.raises(OutboxError) as exc:
            Outbox(path)
        assert exc.value.reason == "outbox_locked"
    Outbox(path).close()  # released on close


def test_reject_and_requeue(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite") as box:
        a = box.put(TOPIC, b"a")
        b = box.put(TOPIC, b"b")
        assert box.reject(a, 0x87, "not_authorized") is True
        assert box.count() == 1
        [rejected] = box.rejected()
        assert (rejected.id, rejected.payload, rejected.reason_code, rejected.reason) == (
            a,
            b"a",
            0x87,
            "not_authorized",
        )
        assert box.requeue_rejected() == 1
        assert box.rejected() == []
        assert [r.payload for r in box.pending()] == [b"b", b"a"]
        assert box.pending()[1].id > b


def test_closed_outbox_refuses(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    box.close()
    box.close()
    with pytest.raises(OutboxError) as exc:
        box.put(TOPIC, b"late")
    assert exc.value.reason == "usage"


def test_unopenable_path(tmp_path: Path) -> None:
    (tmp_path / "dir.sqlite").mkdir()
    with pytest.raises(OutboxError) as exc:
        Outbox(tmp_path / "dir.sqlite")
    assert exc.value.reason == "outbox_unavailable"


def test_topic_and_url_helpers() -> None:
    assert reading_topic("nanshan", "aq-1") == "city/nanshan/aq-1/readings"
    for district, device in (("a/b", "x"), ("a", "+"), ("", "x"), ("a", "x" * 65)):
        with pytest.raises(AnchorError) as exc:
            reading_topic(district, device)
        assert exc.value.reason == "topic_invalid"
    t = parse_mqtt_url("mqtt://u%40x:p%3A@127.0.0.1:1884")
    assert (t.host, t.port, t.tls, t.username, t.password) == (
        "127.0.0.1",
        1884,
        False,
        "u@x",
        "p:",
    )
    assert parse_mqtt_url("mqtts://broker").port == 8883
    for bad in ("http://x", "mqtt://", "mqtt://h:99999"):
        with pytest.raises(AnchorError) as exc:
            parse_mqtt_url(bad)
        assert exc.value.reason == "usage"


def test_settle_by_leaf_hash_and_topic(tmp_path: Path) -> None:
    """Issue 11: the service's acknowledgement settles exactly the rows holding those bytes on
    the readings topic it answers; a refusal moves them to `rejected` with its reason."""
    from anchor import merkle
    from anchor.device_ack import DURABLE, REFUSED, AckEntry
    from devices.publisher import SERVICE_REFUSED

    topic, other = "city/d/aq-1/readings", "city/d/aq-2/readings"
    with Outbox(tmp_path / "o.sqlite") as box:
        a, b, c = box.put(topic, b"a"), box.put(topic, b"b"), box.put(other, b"c")
        assert box.leaf_hash_of(a) == merkle.leaf_hash(b"a")
        settled = box.settle(
            "city/d/aq-1/ack",
            [
                AckEntry(1, merkle.leaf_hash(b"a"), DURABLE),
                AckEntry(2, merkle.leaf_hash(b"b"), REFUSED, "bad_signature"),
                AckEntry(3, merkle.leaf_hash(b"c"), DURABLE),  # aq-2's: not on this topic
                AckEntry(4, merkle.leaf_hash(b"zz"), DURABLE),  # nothing queued
            ],
        )
        assert [(s.outbox_id, s.durable, s.reason) for s in settled] == [
            (a, True, ""),
            (b, False, "bad_signature"),
        ]
        assert [e.id for e in box.pending()] == [c] and box.count() == 1
        [rej] = box.rejected()
        assert (rej.id, rej.payload, rej.reason_code, rej.reason) == (
            b, b"b", SERVICE_REFUSED, "bad_signature",
        )  # fmt: skip
        assert box.settle("city/d/aq-1/readings", [AckEntry(1, merkle.leaf_hash(b"c"), 0)]) == []


def test_a_version_1_outbox_is_upgraded_with_leaf_hashes(tmp_path: Path) -> None:
    from anchor import merkle

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, "
        "payload BLOB NOT NULL, created_at INTEGER NOT NULL);"
        "INSERT INTO outbox (topic, payload, created_at) VALUES ('city/d/x/readings', x'01', 1);"
        "PRAGMA user_version=1;"
    )
    db.commit()
    db.close()
    with Outbox(path) as box:
        assert box.count() == 1
        assert box.leaf_hash_of(box.pending()[0].id) == merkle.leaf_hash(b"\x01")
        new = box.put("city/d/x/readings", b"\x02")
        assert box.leaf_hash_of(new) == merkle.leaf_hash(b"\x02")
