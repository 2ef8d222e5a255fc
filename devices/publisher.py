"""Publish a device's signed readings over MQTT v5 at QoS 1, losing none of them.

Two parts:

* :class:`Outbox` -- an on-disk queue (SQLite, WAL, ``synchronous=FULL``) of envelopes that were
  signed but that the service has not yet acknowledged as durable. :meth:`Outbox.put` commits
  before it returns, so an envelope that was signed survives a crash or power cut that happens
  before it is published.
* :class:`Publisher` -- a paho-mqtt v2 client (MQTT v5, QoS 1, persistent session) that sends
  what is in the outbox, in outbox order, at most ``max_inflight`` at a time, subscribes (QoS 1)
  to the device's acknowledgement topic ``city/{district}/{device_id}/ack``, and deletes a row
  only when the **service's acknowledgement** (:mod:`anchor.device_ack`, sent by the ingestor
  after the seal transaction committed) names its leaf hash as durable. A PUBACK is not enough
  (issue 11): 0x10 *No matching subscribers* is a success code after which the broker has
  dropped the message, and a broker that crashes after its PUBACK may lose it too. A row
  without an acknowledgement after ``ack_timeout_s`` is sent again (the wait doubles per
  resend, with jitter); a resend of a stored reading is ``replayed_seq`` at the ingestor and
  acknowledged again. Everything still in the outbox after a restart is sent again.
  (A row :meth:`Publisher.put` queued on a topic that is not ``city/+/+/readings`` has no
  acknowledgement topic; a success PUBACK other than 0x10 settles it, as before issue 11.)

The service's verdicts: durable (sealed, or ``replayed_seq``: already stored) deletes the row;
refused for good (``bad_signature``, ``seq_conflict``, ... :data:`anchor.device_ack.FINAL_REASONS`)
moves it to the ``rejected`` table with ``reason_code`` :data:`SERVICE_REFUSED` and the reason.

PUBACK error codes (MQTT v5 section 3.4.2.1):

* **permanent** -- 0x87 *Not authorized*, 0x90 *Topic Name invalid*, 0x99 *Payload format
  invalid*: resending the same bytes to the same topic cannot succeed. The row moves from
  ``outbox`` to the ``rejected`` table with the code and its name, is logged as an error, and
  the rest of the queue keeps flowing. Nothing is deleted: an operator who fixes the ACL calls
  :meth:`Outbox.requeue_rejected` (or inspects :meth:`Outbox.rejected`).
* **not delivered** -- 0x10 *No matching subscribers* and every other code >= 0x80 (0x80
  unspecified, 0x83 implementation specific, 0x91 packet identifier in use, 0x97 quota
  exceeded, ...): the row stays and is resent after an exponential back-off (``retry_min_s``
  doubling up to ``retry_max_s``, jittered).

Threads. paho's network thread (``loop_start``) runs the callbacks, which only turn a packet
into an event on an internal queue. One worker thread owned by the publisher consumes those
events: it alone calls ``client.publish`` and ``client.subscribe``, keeps the mid -> row map, and
deletes acknowledged rows (one transaction per acknowledgement message, which settles a whole
seal's worth of readings). Because the same
thread records a publish's mid and later handles its PUBACK, the PUBACK can never be seen
before its mid is known. :meth:`Publisher.put`, :meth:`Publisher.publish_reading` and
:meth:`Publisher.flush` may be called from any thread; :class:`Outbox` serialises its own
methods with a lock.

One outbox file belongs to one process at a time: :class:`Outbox` holds an exclusive
``flock`` on ``<path>.lock`` while open (reason ``outbox_locked`` otherwise); the kernel drops
it when the process dies, so a restart after a crash simply reopens.

Example::

    with Outbox("aq.outbox.sqlite") as outbox, Publisher(
        outbox, mqtt_url="mqtt://broker:1883", client_id="aq-nanshan-0001"
    ) as pub:
        pub.publish_reading(signer, "nanshan", "iot.air_quality", {"pm2_5": 12.5})
        pub.flush(timeout=10)  # returns when the service says every reading is durable
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import logging
import os
import random
import sqlite3
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from anchor.backoff import Backoff
from anchor.broker.client import MqttTarget, connect_async, create_client, parse_mqtt_url
from anchor.device_ack import AckEntry, ack_topic, ack_topic_for, decode_ack
from anchor.device_id import DEVICE_ID_PATTERN, DEVICE_ID_RE
from anchor.errors import AnchorError, Reason
from anchor.merkle import get_hasher
from devices.signer import DeviceSigner

__all__ = [
    "PERMANENT_PUBACK_CODES",
    "SERVICE_REFUSED",
    "MqttTarget",
    "Outbox",
    "OutboxEntry",
    "OutboxError",
    "PublishError",
    "Publisher",
    "QueuedReading",
    "RejectedEntry",
    "Settled",
    "ack_topic",
    "parse_mqtt_url",
    "reading_topic",
]

log = logging.getLogger("devices.publisher")

PERMANENT_PUBACK_CODES: Mapping[int, str] = {
    0x87: "not_authorized",
    0x90: "topic_name_invalid",
    0x99: "payload_format_invalid",
}
"""PUBACK reason codes after which the same message can never succeed (MQTT v5 3.4.2.1)."""

SERVICE_REFUSED = 0
"""``reason_code`` of a rejected row the service refused (its acknowledgement, status 0x01),
as opposed to a broker's PUBACK code; ``reason`` is then the quarantine reason code."""

_SUCCESS_LIMIT = 0x80  # reason codes below this are successes (MQTT v5 section 2.4)
_NO_MATCHING_SUBSCRIBERS = 0x10  # a "success" after which the broker has dropped the message
_SEGMENT = DEVICE_ID_RE  # the one rule: anchor.device_id
_SCHEMA_VERSION = 2  # 2: outbox.leaf_hash, to match the service's acknowledgements


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _readings_topic_for(ack: str) -> str | None:
    """``city/{d}/{id}/ack`` -> ``city/{d}/{id}/readings``, else None."""
    parts = ack.split("/")
    if len(parts) != 4 or parts[0] != "city" or parts[3] != "ack":
        return None
    readings = f"city/{parts[1]}/{parts[2]}/readings"
    return readings if ack_topic_for(readings) == ack else None


def reading_topic(district: str, device_id: str) -> str:
    """``city/{district}/{device_id}/readings``; raises ``PublishError`` (``topic_invalid``)
    when either part is outside ``[A-Za-z0-9._-]{1,64}`` (the ingestor's topic syntax)."""
    for what, value in (("district", district), ("device id", device_id)):
        if not isinstance(value, str) or not _SEGMENT.fullmatch(value):
            raise PublishError(
                f"{what} {value!r} is not {DEVICE_ID_PATTERN}", reason=Reason.TOPIC_INVALID
            )
    return f"city/{district}/{device_id}/readings"


# ---------------------------------------------------------------------------------------------
# Outbox


class OutboxError(AnchorError):
    """The outbox cannot take or give an envelope.

    Reasons: ``outbox_full`` (``max_entries`` or ``max_bytes`` reached: publish or free space
    first), ``outbox_locked`` (another process or object has this file open),
    ``outbox_unavailable`` (SQLite or the filesystem failed), ``usage`` (closed outbox).
    """

    reason = Reason.OUTBOX_UNAVAILABLE


class PublishError(AnchorError):
    """A publisher could not be set up or did not finish in time.

    Reasons: ``usage`` (bad URL or option), ``topic_invalid``, ``flush_timeout``,
    ``connect_failed``.
    """

    reason = Reason.PUBLISH_FAILED


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One queued envelope: ``id`` grows with every put and is never reused."""

    id: int
    topic: str
    payload: bytes
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class RejectedEntry:
    """An envelope the broker refused for good, with the PUBACK reason code and its name."""

    id: int
    topic: str
    payload: bytes
    created_at_ms: int
    rejected_at_ms: int
    reason_code: int
    reason: str


@dataclass(frozen=True, slots=True)
class QueuedReading:
    """What :meth:`Publisher.publish_reading` queued: its outbox row, topic and envelope."""

    outbox_id: int
    topic: str
    envelope: bytes
    seq: int
    leaf_hash: bytes = b""
    """``H(0x00 || envelope)``: the receipt's ``leaf_hash`` and the key of its acknowledgement."""


@dataclass(frozen=True, slots=True)
class Settled:
    """An outbox row that left the outbox for good, and why.

    ``durable``: the service's acknowledgement says sealed (``reason`` ""), or already stored
    (``reason`` ``replayed_seq``). Otherwise refused for good, and the row moved to the
    ``rejected`` table: by the service (``reason`` the quarantine code, ``puback_code``
    :data:`SERVICE_REFUSED`) or by the broker (``reason`` from
    :data:`PERMANENT_PUBACK_CODES`, ``puback_code`` 0x87, 0x90 or 0x99). ``seq`` is the one the
    service read (0 if none or unknown). Rows on a topic without an acknowledgement topic,
    which a success PUBACK settles, are not reported.
    """

    outbox_id: int
    topic: str
    seq: int
    leaf_hash: bytes
    durable: bool
    reason: str
    puback_code: int = SERVICE_REFUSED


_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    topic      TEXT    NOT NULL,
    payload    BLOB    NOT NULL,
    created_at INTEGER NOT NULL,
    leaf_hash  BLOB
);
CREATE TABLE IF NOT EXISTS rejected (
    id          INTEGER PRIMARY KEY,
    topic       TEXT    NOT NULL,
    payload     BLOB    NOT NULL,
    created_at  INTEGER NOT NULL,
    rejected_at INTEGER NOT NULL,
    reason_code INTEGER NOT NULL,
    reason      TEXT    NOT NULL
);
"""


class Outbox:
    """An on-disk FIFO of signed, not yet acknowledged envelopes (one SQLite file).

    ``max_entries`` and ``max_bytes`` (sum of payload sizes) bound it; :meth:`put` beyond
    either raises ``OutboxError`` (``outbox_full``). The file is created if missing (mode
    0600: envelopes are public data, but the queue is the device's business). Thread-safe.
    Raises ``OutboxError`` (``outbox_locked``, ``outbox_unavailable``) when it cannot open.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        max_entries: int = 100_000,
        max_bytes: int = 256 * 1024 * 1024,
        hash_scheme: str = "rfc9162-sha256",
    ) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise OutboxError("max_entries and max_bytes must be positive", reason=Reason.USAGE)
        try:
            self.hasher = get_hasher(hash_scheme)
        except AnchorError as exc:
            raise OutboxError(str(exc), reason=Reason.USAGE) from exc
        self.path = Path(path)
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._lock_fd = self._acquire_file_lock()
        try:
            self._db = self._open()
            row = self._db.execute("SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox")
            self._count, self._bytes = (int(v) for v in row.fetchone())
        except sqlite3.Error as exc:
            os.close(self._lock_fd)
            raise OutboxError(f"cannot open outbox {self.path}: {exc}") from exc
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._closed = False

    def _acquire_file_lock(self) -> int:
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise OutboxError(f"cannot create {lock_path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise OutboxError(
                f"outbox {self.path} is in use by another publisher (lock {lock_path})",
                reason=Reason.OUTBOX_LOCKED,
            ) from None
        return fd

    def _open(self) -> sqlite3.Connection:
        if not self.path.exists():
            # Create it 0600 before SQLite does (SQLite would use the umask).
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        # isolation_level=None: we issue BEGIN/COMMIT ourselves. check_same_thread=False: the
        # connection is shared by the caller's thread and the publisher's worker, under _lock.
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            db.close()
            raise OutboxError(f"{self.path}: SQLite refused WAL mode (got {mode!r})")
        # FULL: each commit fsyncs the WAL, so a put that returned survives a power cut.
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(outbox)")}
        if "leaf_hash" not in columns:  # a version 1 file: add and fill the column
            db.execute("ALTER TABLE outbox ADD COLUMN leaf_hash BLOB")
        rows = db.execute("SELECT id, payload FROM outbox WHERE leaf_hash IS NULL").fetchall()
        if rows:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "UPDATE outbox SET leaf_hash = ? WHERE id = ?",
                [(self.hasher.hash_leaf(bytes(r[1])), r[0]) for r in rows],
            )
            db.execute("COMMIT")
        db.execute("CREATE INDEX IF NOT EXISTS outbox_leaf_hash ON outbox (leaf_hash)")
        db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        return db

    # -- writes -----------------------------------------------------------------------------

    def put(self, topic: str, payload: bytes) -> int:
        """Append an envelope; returns its id once the row is durably committed.

        Raises ``OutboxError``: ``outbox_full`` when it would exceed ``max_entries`` or
        ``max_bytes``; ``outbox_unavailable`` when the write fails.
        """
        payload = bytes(payload)
        with self._lock:
            self._check_open()
            if self._count >= self.max_entries or self._bytes + len(payload) > self.max_bytes:
                raise OutboxError(
                    f"outbox {self.path} is full ({self._count} envelopes, {self._bytes} bytes; "
                    f"limits {self.max_entries} / {self.max_bytes})",
                    reason=Reason.OUTBOX_FULL,
                )
            try:
                cur = self._db.execute(
                    "INSERT INTO outbox (topic, payload, created_at, leaf_hash) "
                    "VALUES (?, ?, ?, ?)",
                    (topic, payload, _now_ms(), self.hasher.hash_leaf(payload)),
                )
            except sqlite3.Error as exc:
                raise OutboxError(f"cannot write to outbox {self.path}: {exc}") from exc
            self._count += 1
            self._bytes += len(payload)
            row_id = cur.lastrowid
            assert row_id is not None
            return row_id

    def has_room(self, payload_size: int = 0) -> bool:
        """Whether a put of ``payload_size`` bytes would fit now."""
        with self._lock:
            return self._count < self.max_entries and self._bytes + payload_size <= self.max_bytes

    def ack(self, entry_id: int) -> bool:
        """Delete one acknowledged envelope; False if it was not there (already acked)."""
        return self.ack_many((entry_id,)) == 1

    def ack_many(self, entry_ids: Iterable[int]) -> int:
        """Delete acknowledged envelopes in one transaction; returns how many were deleted."""
        ids = list(entry_ids)
        if not ids:
            return 0
        with self._lock:
            self._check_open()
            try:
                self._db.execute("BEGIN IMMEDIATE")
                deleted = size = 0
                for entry_id in ids:
                    row = self._db.execute(
                        "DELETE FROM outbox WHERE id = ? RETURNING length(payload)", (entry_id,)
                    ).fetchone()
                    if row is not None:
                        deleted += 1
                        size += int(row[0])
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise OutboxError(f"cannot delete from outbox {self.path}: {exc}") from exc
            self._count -= deleted
            self._bytes -= size
            return deleted

    def reject(self, entry_id: int, reason_code: int, reason: str) -> bool:
        """Move an envelope to the ``rejected`` table (the broker refused it for good)."""
        with self._lock:
            self._check_open()
            try:
                self._db.execute("BEGIN IMMEDIATE")
                row = self._db.execute(
                    "DELETE FROM outbox WHERE id = ? RETURNING topic, payload, created_at",
                    (entry_id,),
                ).fetchone()
                if row is not None:
                    self._db.execute(
                        "INSERT OR REPLACE INTO rejected (id, topic, payload, created_at, "
                        "rejected_at, reason_code, reason) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (entry_id, row[0], row[1], row[2], _now_ms(), reason_code, reason),
                    )
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise OutboxError(f"cannot update outbox {self.path}: {exc}") from exc
            if row is None:
                return False
            self._count -= 1
            self._bytes -= len(row[1])
            return True

    def settle(self, topic: str, entries: Iterable[AckEntry]) -> list[Settled]:
        """Apply one service acknowledgement received on ``topic`` (its ack topic), in one
        transaction: a durable entry deletes the rows holding exactly those bytes (matched by
        leaf hash, and by the readings topic the ack answers); a refused one moves them to the
        ``rejected`` table (``reason_code`` :data:`SERVICE_REFUSED`, ``reason`` the quarantine
        code). Entries matching no row (already settled, or another outbox's) are ignored.
        """
        readings = _readings_topic_for(topic)
        if readings is None:
            return []
        settled: list[Settled] = []
        with self._lock:
            self._check_open()
            try:
                self._db.execute("BEGIN IMMEDIATE")
                size = 0
                for e in entries:
                    rows = self._db.execute(
                        "DELETE FROM outbox WHERE leaf_hash = ? AND topic = ? "
                        "RETURNING id, payload, created_at",
                        (e.leaf_hash, readings),
                    ).fetchall()
                    for row_id, payload, created_at in rows:
                        size += len(payload)
                        if not e.durable:
                            self._db.execute(
                                "INSERT OR REPLACE INTO rejected (id, topic, payload, created_at,"
                                " rejected_at, reason_code, reason) VALUES (?, ?, ?, ?, ?, ?, ?)",
                                (row_id, readings, payload, created_at, _now_ms(),
                                 SERVICE_REFUSED, e.reason),
                            )  # fmt: skip
                        settled.append(
                            Settled(int(row_id), readings, e.seq, e.leaf_hash, e.durable, e.reason)
                        )
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise OutboxError(f"cannot update outbox {self.path}: {exc}") from exc
            self._count -= len(settled)
            self._bytes -= size
        return settled

    def leaf_hash_of(self, entry_id: int) -> bytes | None:
        """The leaf hash of a queued envelope, None if it is not (or no longer) queued."""
        with self._lock:
            self._check_open()
            try:
                row = self._db.execute(
                    "SELECT leaf_hash FROM outbox WHERE id = ?", (entry_id,)
                ).fetchone()
            except sqlite3.Error as exc:
                raise OutboxError(f"cannot read outbox {self.path}: {exc}") from exc
        return None if row is None or row[0] is None else bytes(row[0])

    def requeue_rejected(self) -> int:
        """Move every rejected envelope back into the outbox (new ids, at the end of the
        queue), e.g. after an ACL was fixed; returns how many. Ignores the size bounds."""
        with self._lock:
            self._check_open()
            try:
                self._db.execute("BEGIN IMMEDIATE")
                rows = self._db.execute(
                    "DELETE FROM rejected RETURNING id, topic, payload, created_at"
                ).fetchall()
                rows.sort()
                self._db.executemany(
                    "INSERT INTO outbox (topic, payload, created_at, leaf_hash) "
                    "VALUES (?, ?, ?, ?)",
                    [(r[1], r[2], r[3], self.hasher.hash_leaf(bytes(r[2]))) for r in rows],
                )
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise OutboxError(f"cannot update outbox {self.path}: {exc}") from exc
            self._count += len(rows)
            self._bytes += sum(len(r[2]) for r in rows)
            return len(rows)

    # -- reads ------------------------------------------------------------------------------

    def pending(self, limit: int = 100, *, after_id: int = 0) -> list[OutboxEntry]:
        """Up to ``limit`` queued envelopes with ``id > after_id``, oldest first."""
        with self._lock:
            self._check_open()
            try:
                rows = self._db.execute(
                    "SELECT id, topic, payload, created_at FROM outbox WHERE id > ? "
                    "ORDER BY id LIMIT ?",
                    (after_id, limit),
                ).fetchall()
            except sqlite3.Error as exc:
                raise OutboxError(f"cannot read outbox {self.path}: {exc}") from exc
        return [OutboxEntry(int(r[0]), str(r[1]), bytes(r[2]), int(r[3])) for r in rows]

    def rejected(self, limit: int = 100) -> list[RejectedEntry]:
        """Up to ``limit`` envelopes the broker refused for good, oldest first."""
        with self._lock:
            self._check_open()
            try:
                rows = self._db.execute(
                    "SELECT id, topic, payload, created_at, rejected_at, reason_code, reason "
                    "FROM rejected ORDER BY id LIMIT ?",
                    (limit,),
                ).fetchall()
            except sqlite3.Error as exc:
                raise OutboxError(f"cannot read outbox {self.path}: {exc}") from exc
        return [
            RejectedEntry(
                int(r[0]), str(r[1]), bytes(r[2]), int(r[3]), int(r[4]), int(r[5]), str(r[6])
            )
            for r in rows
        ]

    def count(self) -> int:
        """Envelopes not yet acknowledged (rejected ones not included)."""
        with self._lock:
            return self._count

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Close the database and release the file lock. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            os.close(self._lock_fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Outbox({str(self.path)!r}, count={self._count})"

    def _check_open(self) -> None:
        if self._closed:
            raise OutboxError(f"outbox {self.path} is closed", reason=Reason.USAGE)

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("ROLLBACK")


# ---------------------------------------------------------------------------------------------
# Publisher


@dataclass(frozen=True, slots=True)
class _Connected:
    receive_maximum: int
    session_present: bool


@dataclass(frozen=True, slots=True)
class _Disconnected:
    reason: str


@dataclass(frozen=True, slots=True)
class _Puback:
    mid: int
    code: int
    name: str


@dataclass(frozen=True, slots=True)
class _AckMessage:
    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class _Suback:
    codes: tuple[int, ...]


_Event = _Connected | _Disconnected | _Puback | _AckMessage | _Suback


class Publisher:
    """Sends an :class:`Outbox` to an MQTT v5 broker at QoS 1; see the module docstring.

    Keyword arguments: ``mqtt_url`` (``mqtt://host:port``; credentials in the URL are used
    when ``username`` is not given), ``client_id`` (the device id for a real device: the
    broker's persistent session and, with per-device logins, its ACL are keyed by it),
    ``max_inflight`` (unacknowledged publishes at once; also capped by the broker's Receive
    Maximum), ``session_expiry_s`` (MQTT v5 Session Expiry Interval; the session is resumed
    with ``clean_start=False``), reconnect back-off bounds (paho reconnects by itself, doubling
    the delay from ``reconnect_min_s`` to ``reconnect_max_s``), the back-off for PUBACKs that
    did not deliver (``retry_min_s`` .. ``retry_max_s``), and the wait for the service's
    acknowledgement after a successful PUBACK (``ack_timeout_s``, doubling per resend up to
    ``ack_timeout_max_s``). Every wait is jittered (between half and all of it), so a fleet
    that lost the broker together does not resend together. ``on_settled`` is called for every
    row the service settled, before :meth:`flush` can see it gone (on the publisher's thread,
    holding its lock: keep it short and do not call the publisher from it). ``tls_context``
    overrides the default context for ``mqtts://``.

    :meth:`start` returns at once, whether or not the broker is reachable: the outbox keeps
    filling and is sent when a connection comes up. The publisher does not own the outbox;
    :meth:`close` leaves it open.
    """

    def __init__(
        self,
        outbox: Outbox,
        *,
        client_id: str,
        mqtt_url: str = "mqtt://127.0.0.1:1883",
        username: str | None = None,
        password: str | None = None,
        max_inflight: int = 20,
        session_expiry_s: int = 7 * 86_400,
        keepalive_s: int = 30,
        reconnect_min_s: int = 1,
        reconnect_max_s: int = 30,
        retry_min_s: float = 1.0,
        retry_max_s: float = 60.0,
        ack_timeout_s: float = 30.0,
        ack_timeout_max_s: float = 600.0,
        on_settled: Callable[[Settled], None] | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        if max_inflight < 1:
            raise PublishError("max_inflight must be at least 1", reason=Reason.USAGE)
        if not client_id or len(client_id.encode()) > 65535:
            raise PublishError("client_id must be a non-empty string", reason=Reason.USAGE)
        if not 0 < retry_min_s <= retry_max_s or not 0 < ack_timeout_s <= ack_timeout_max_s:
            raise PublishError("back-off bounds must be positive and ordered", reason=Reason.USAGE)
        self.outbox = outbox
        self.client_id = client_id
        self.max_inflight = max_inflight
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.ack_timeout_s = ack_timeout_s
        self.ack_timeout_max_s = ack_timeout_max_s
        self.on_settled = on_settled
        try:
            target = parse_mqtt_url(mqtt_url)
            # We never hand paho more than the window, so its own queue stays empty.
            client = create_client(
                target,
                client_id=client_id,
                username=username,
                password=password,
                keepalive_s=keepalive_s,
                clean_start=False,
                session_expiry_s=session_expiry_s,
                reconnect_min_s=reconnect_min_s,
                reconnect_max_s=reconnect_max_s,
                max_inflight=max_inflight,
                tls_context=tls_context,
            )
        except AnchorError as exc:
            raise PublishError(exc.detail, reason=Reason.USAGE) from exc
        self._target = target
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self._client = client
        self._session_expiry_s = session_expiry_s
        self._keepalive_s = keepalive_s
        self._random = random.Random()

        # Shared between threads, under _cond.
        self._cond = threading.Condition()
        self._events: collections.deque[_Event] = collections.deque()
        self._wake = False
        self._stopping = False
        # Worker-thread state (no lock: only the worker touches it).
        self._connected = False
        self._window = max_inflight
        self._inflight: dict[int, int] = {}  # mid -> outbox id
        self._in_paho: set[int] = set()  # outbox ids handed to paho, PUBACK not yet seen
        self._cursor = 0  # highest outbox id handed over (or skipped) since the last rewind
        # outbox id -> monotonic time of its next send: after a PUBACK that did not deliver,
        # or after a good PUBACK while the service's acknowledgement is awaited.
        self._retry_at: dict[int, float] = {}
        self._retry_delay: dict[int, Backoff] = {}  # back-off after failed PUBACKs
        self._ack_wait: dict[int, Backoff] = {}  # the acknowledgement timeouts
        self._subscribed: set[str] = set()  # ack topics subscribed on this connection
        self._awaiting: set[int] = set()  # outbox ids whose _retry_at is an ack timeout
        self._topic_of: dict[int, str] = {}  # outbox id -> topic, while it is being sent
        # Counters, read by callers through stats().
        self._stats: collections.Counter[str] = collections.Counter()
        self._worker: threading.Thread | None = None
        self._worker_error: BaseException | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> Self:
        """Connect in the background and start sending the outbox. Idempotent."""
        if self._worker is not None:
            return self
        with self._cond:
            self._stopping = False
        try:
            # Again: a publisher closed and started again records its connection anew.
            connect_async(
                self._client,
                self._target,
                keepalive_s=self._keepalive_s,
                clean_start=False,
                session_expiry_s=self._session_expiry_s,
            )
        except (OSError, AnchorError) as exc:
            raise PublishError(
                f"cannot connect to {self._target.host}: {exc}", reason=Reason.CONNECT_FAILED
            ) from exc
        self._worker = threading.Thread(
            target=self._run, name=f"publisher-{self.client_id}", daemon=True
        )
        self._worker.start()
        self._client.loop_start()
        return self

    def close(self, *, timeout: float = 5.0) -> None:
        """Stop sending and disconnect (the session is kept for ``session_expiry_s``).

        Envelopes still unacknowledged stay in the outbox and are sent by the next publisher
        that opens it; acknowledgements published meanwhile wait in the broker's session.
        Does not close the outbox. Idempotent.
        """
        worker = self._worker
        if worker is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        worker.join(timeout)
        with contextlib.suppress(Exception):
            self._client.disconnect()
        self._client.loop_stop()
        self._worker = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- API for callers --------------------------------------------------------------------

    def put(self, topic: str, payload: bytes) -> int:
        """Queue one envelope durably (see :meth:`Outbox.put`) and wake the sender."""
        entry_id = self.outbox.put(topic, payload)
        self._notify()
        return entry_id

    def publish_reading(
        self,
        signer: DeviceSigner,
        district: str,
        kind: str,
        values: Mapping[str, int | float | str | bool],
        ts_ms: int | None = None,
    ) -> QueuedReading:
        """Sign the device's next reading, queue it durably, and let the sender publish it.

        Order: topic check, outbox room check (so a full outbox does not burn a seq), sign
        (the signer persists its seq state), :meth:`Outbox.put` (committed), wake the sender.
        Returns once the envelope is in the outbox, not when it is durable (see
        :meth:`flush`). Raises ``PublishError`` (``topic_invalid``), ``OutboxError``
        (``outbox_full``, ...) or the signer's ``EnvelopeError`` / ``DeviceStateError``.
        """
        topic = reading_topic(district, signer.device_id)
        if not self.outbox.has_room():
            raise OutboxError(f"outbox {self.outbox.path} is full", reason=Reason.OUTBOX_FULL)
        envelope = signer.sign(kind, values, ts_ms)
        entry_id = self.put(topic, envelope)
        leaf = self.outbox.hasher.hash_leaf(envelope)
        return QueuedReading(entry_id, topic, envelope, signer.seq, leaf)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until the outbox is empty: every envelope acknowledged by the service as
        durable, or refused for good (see :meth:`Outbox.rejected`).

        Raises ``PublishError`` (``flush_timeout``) naming how many are left.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.outbox.count() > 0:
                if self._worker_error is not None:
                    raise PublishError(
                        f"the publisher's sender failed: {self._worker_error}",
                        reason=Reason.PUBLISH_FAILED,
                    ) from self._worker_error
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PublishError(
                        f"{self.outbox.count()} envelopes still unacknowledged after {timeout} s",
                        reason=Reason.FLUSH_TIMEOUT,
                    )
                self._cond.wait(min(left, 0.2))

    @property
    def connected(self) -> bool:
        return self._connected

    def stats(self) -> dict[str, int]:
        """Counters: ``published`` (PUBLISH packets, resends included), ``pubacked`` (PUBACK
        0x00), ``no_subscribers`` (PUBACK 0x10), ``acked`` (rows settled as durable),
        ``refused`` (rows the service refused for good), ``rejected`` (the broker did),
        ``retried`` (PUBACKs that did not deliver), ``ack_timeouts`` (resends for want of an
        acknowledgement), ``ack_messages``, ``ack_malformed``, ``ack_subscribe_refused``,
        ``connects``."""
        with self._cond:
            return dict(self._stats)

    # -- paho callbacks (network thread): turn packets into events, nothing else --------------

    def _push(self, event: _Event) -> None:
        with self._cond:
            self._events.append(event)
            self._cond.notify_all()

    def _notify(self) -> None:
        with self._cond:
            self._wake = True
            self._cond.notify_all()

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.error("%s: broker refused the connection: %s", self.client_id, reason_code)
            return
        receive_max = 65535
        if properties is not None and hasattr(properties, "ReceiveMaximum"):
            receive_max = int(properties.ReceiveMaximum)
        self._push(_Connected(receive_max, bool(flags.session_present)))

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        log.warning(
            "%s: cannot reach %s:%d; retrying", self.client_id, self._target.host, self._target.port
        )

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._push(_Disconnected(str(reason_code)))

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        self._push(_Puback(mid, int(reason_code.value), reason_code.getName()))

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._push(_AckMessage(msg.topic, bytes(msg.payload)))

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._push(_Suback(tuple(int(rc.value) for rc in reason_codes)))

    # -- the worker ---------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    if not self._events and not self._wake and not self._stopping:
                        self._cond.wait(self._next_timeout())
                    if self._stopping:
                        return
                    events = list(self._events)
                    self._events.clear()
                    self._wake = False
                self._handle(events)
                self._pump()
                with self._cond:
                    # flush() waiters re-check the outbox count.
                    self._cond.notify_all()
        except BaseException as exc:  # pragma: no cover - reported through flush()
            log.exception("%s: publisher worker failed", self.client_id)
            with self._cond:
                self._worker_error = exc
                self._cond.notify_all()

    def _next_timeout(self) -> float | None:
        if not self._retry_at:
            return None
        return max(0.0, min(self._retry_at.values()) - time.monotonic())

    def _count(self, name: str, n: int = 1) -> None:
        with self._cond:
            self._stats[name] += n

    def _backoff(self, initial_s: float, cap_s: float) -> Backoff:
        # "Equal jitter": between half and all of the delay, so resends spread out but the
        # back-off still grows.
        return Backoff(initial_s=initial_s, cap_s=cap_s, jitter=0.5, rand=self._random.random)

    def _forget(self, entry_id: int) -> None:
        self._retry_at.pop(entry_id, None)
        self._retry_delay.pop(entry_id, None)
        self._ack_wait.pop(entry_id, None)
        self._awaiting.discard(entry_id)
        self._topic_of.pop(entry_id, None)

    def _handle(self, events: list[_Event]) -> None:
        acked: list[int] = []
        for event in events:
            if isinstance(event, _Connected):
                self._connected = True
                self._subscribed.clear()  # subscribe again: the session may have been lost
                self._window = max(1, min(self.max_inflight, event.receive_maximum))
                self._count("connects")
                log.info(
                    "%s: connected (session present: %s, window %d)",
                    self.client_id,
                    event.session_present,
                    self._window,
                )
            elif isinstance(event, _Disconnected):
                self._connected = False
                # paho keeps its unacknowledged messages and resends them (same mids) after
                # reconnecting, so _inflight stays as it is.
                log.warning(
                    "%s: disconnected (%s); %d publishes in flight will be resent",
                    self.client_id,
                    event.reason,
                    len(self._inflight),
                )
            elif isinstance(event, _AckMessage):
                self._settle(event)
            elif isinstance(event, _Suback):
                if any(code >= _SUCCESS_LIMIT for code in event.codes):
                    self._count("ack_subscribe_refused")
                    log.error(
                        "%s: the broker refused the acknowledgement subscription (SUBACK %s): "
                        "readings will be resent until it is allowed (broker ACL)",
                        self.client_id,
                        ", ".join(f"0x{c:02x}" for c in event.codes),
                    )
            else:
                entry_id = self._inflight.pop(event.mid, None)
                if entry_id is None:
                    log.debug("%s: PUBACK for unknown mid %d", self.client_id, event.mid)
                    continue
                self._in_paho.discard(entry_id)
                self._on_puback(entry_id, event, acked)
        if acked:
            # Under _cond, so that whoever sees the outbox empty also sees the counter.
            with self._cond:
                self._count("acked", self.outbox.ack_many(acked))

    def _on_puback(self, entry_id: int, event: _Puback, acked: list[int]) -> None:
        topic = self._topic_of.get(entry_id)
        if topic is None:
            # Settled meanwhile: its acknowledgement overtook this PUBACK (a resend's, say).
            return
        if event.code < _SUCCESS_LIMIT and event.code != _NO_MATCHING_SUBSCRIBERS:
            self._count("pubacked")
            self._retry_delay.pop(entry_id, None)
            if ack_topic_for(topic) is None:
                acked.append(entry_id)  # no acknowledgement topic: the PUBACK settles it
                self._forget(entry_id)
                return
            # The broker has it; the service has not said it is durable yet. Resend if the
            # acknowledgement does not come in time (a resend is harmless: replayed_seq), and
            # wait twice as long after each resend.
            waits = self._ack_wait.get(entry_id)
            if waits is None:
                waits = self._ack_wait[entry_id] = self._backoff(
                    self.ack_timeout_s, self.ack_timeout_max_s
                )
            self._awaiting.add(entry_id)
            self._retry_at[entry_id] = time.monotonic() + waits.next_delay()
        elif event.code in PERMANENT_PUBACK_CODES:
            reason = PERMANENT_PUBACK_CODES[event.code]
            log.error(
                "%s: broker refused outbox entry %d for good: PUBACK 0x%02x %s; "
                "moved to the rejected table",
                self.client_id,
                entry_id,
                event.code,
                event.name,
            )
            with self._cond:  # as in _settle: on_settled runs before flush() sees the row gone
                leaf = self.outbox.leaf_hash_of(entry_id)
                self._count("rejected")
                self.outbox.reject(entry_id, event.code, reason)
                self._forget(entry_id)
                if self.on_settled is not None and leaf is not None:
                    self.on_settled(Settled(entry_id, topic, 0, leaf, False, reason, event.code))
        else:
            self._awaiting.discard(entry_id)
            # 0x10: the broker had nobody to give it to and dropped it (a success code to
            # MQTT, a loss to us); >= 0x80: it did not take it. Either way: not delivered.
            if event.code == _NO_MATCHING_SUBSCRIBERS:
                self._count("no_subscribers")
            delays = self._retry_delay.get(entry_id)
            if delays is None:
                delays = self._retry_delay[entry_id] = self._backoff(
                    self.retry_min_s, self.retry_max_s
                )
            delay = delays.next_delay()
            self._retry_at[entry_id] = time.monotonic() + delay
            log.log(
                logging.INFO if event.code == _NO_MATCHING_SUBSCRIBERS else logging.WARNING,
                "%s: PUBACK 0x%02x %s for outbox entry %d: not delivered; resending in %.1f s",
                self.client_id,
                event.code,
                event.name,
                entry_id,
                delay,
            )
            self._count("retried")

    def _settle(self, message: _AckMessage) -> None:
        self._count("ack_messages")
        try:
            entries = decode_ack(message.payload)
        except AnchorError as exc:
            self._count("ack_malformed")
            log.warning("%s: ignored a malformed acknowledgement: %s", self.client_id, exc)
            return
        # Under _cond (flush() reads the outbox count under it too), so that whoever sees
        # the rows gone also sees them counted and reported to on_settled.
        with self._cond:
            settled = self.outbox.settle(message.topic, entries)
            durable = sum(1 for s in settled if s.durable)
            self._count("acked", durable)
            self._count("refused", len(settled) - durable)
            for s in settled:
                self._forget(s.outbox_id)
                if not s.durable:
                    log.error(
                        "%s: the service refused outbox entry %d (seq %d) for good: %s; "
                        "moved to the rejected table",
                        self.client_id,
                        s.outbox_id,
                        s.seq,
                        s.reason,
                    )
                if self.on_settled is not None:
                    self.on_settled(s)

    def _pump(self) -> None:
        if not self._connected:
            return
        now = time.monotonic()
        due = [eid for eid, at in self._retry_at.items() if at <= now]
        for eid in due:
            del self._retry_at[eid]
            if eid in self._awaiting:
                self._awaiting.discard(eid)
                self._count("ack_timeouts")
        if due:
            # Rewind so the scan below picks the due entries up again, in id order.
            self._cursor = min(self._cursor, min(due) - 1)
        room = self._window - len(self._inflight)
        while room > 0:
            rows = self.outbox.pending(max(room, 64), after_id=self._cursor)
            if not rows:
                return
            for row in rows:
                if row.id in self._in_paho or row.id in self._retry_at:
                    self._cursor = row.id
                    continue
                ack = ack_topic_for(row.topic)
                if ack is not None and ack not in self._subscribed:
                    # Before the reading: the broker handles our packets in order, so the
                    # subscription exists before the reading can be sealed and answered.
                    self._client.subscribe(ack, qos=1)
                    self._subscribed.add(ack)
                info = self._client.publish(row.topic, row.payload, qos=1)
                if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                    return  # paho refused to queue it; try again on the next wake-up
                # MQTT_ERR_NO_CONN (the connection dropped meanwhile) still leaves the message
                # in paho's session state, which sends it after reconnecting.
                self._cursor = row.id
                self._inflight[info.mid] = row.id
                self._in_paho.add(row.id)
                self._topic_of[row.id] = row.topic
                self._count("published")
                room -= 1
                if room == 0:
                    return
