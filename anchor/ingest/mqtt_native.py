"""The ingestor's own MQTT v5 client: an asyncio protocol on the event loop, packets decoded by
``mqtt5`` (a sans-I/O codec in Rust), no network thread.

Why not paho here: paho decodes every packet in pure Python on a thread of its own, which cost
the ingestor about half as much CPU as the signature checks and held the GIL the event loop
needed (docs/benchmarks.md, "Ingest"). Devices and every other client keep paho
(:mod:`anchor.broker.client`).

What the ingestor relies on, kept as with paho (:mod:`anchor.ingest.paho_io`):

* CONNECT with Clean Start 0, a Session Expiry Interval and a Receive Maximum (the ingestor's
  window), the same login and TLS (``mqtts://``) as :func:`anchor.broker.client.create_client`;
  a refused CONNACK is logged with its reason and retried with back-off;
* SUBSCRIBE (QoS 1) after every CONNACK, "mqtt subscription active" logged on the SUBACK;
* received PUBLISH packets are handed over in the order they arrived, one list per socket read
  (one wake-up per read, not per message); nothing is acknowledged here: :meth:`ack` writes the
  PUBACKs the ingestor asks for after its seal committed, and only on the connection that
  delivered them (``generation``);
* outgoing QoS 1 PUBLISH (device acknowledgements) within the broker's Receive Maximum; those
  not acknowledged when the connection drops are sent again (DUP) on the next one;
* PINGREQ when nothing was sent for half the keep-alive, the connection dropped when the broker
  is silent for 1.5 times it; reconnects doubling from 1 s to 10 s (paho's delays here);
* a packet that does not decode is answered with DISCONNECT 0x81 (Malformed Packet), a QoS 2
  PUBLISH (never subscribed for) with 0x82 (Protocol Error), and the connection is dropped and
  made again: its unacknowledged messages are redelivered. PUBLISH, every reading's packet, is
  decoded here (:func:`parse_publish`); ``mqtt5`` encodes, and decodes the other packets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct
import time
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import mqtt5

from anchor.backoff import Backoff
from anchor.broker.client import MqttTarget
from anchor.ingest.link import Deliver, Incoming

__all__ = ["NativeMqtt", "ProtocolViolation", "frame_length", "parse_publish"]

log = logging.getLogger("anchor.ingest.ingestor")

_PUBACK = struct.Struct("!BBH")  # as paho sends it: no reason code byte when it is Success
_PINGREQ = b"\xc0\x00"
_PUBLISH, _PUBACK_T, _SUBACK, _PINGRESP, _DISCONNECT, _CONNACK = 3, 4, 9, 13, 14, 2
MALFORMED_PACKET = 0x81
PROTOCOL_ERROR = 0x82
CONNACK_TIMEOUT_S = 10.0
_SUBSCRIBE_ID = 1


class ProtocolViolation(Exception):
    """The broker sent something this client must not accept; ``code`` is the MQTT reason."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(detail)
        self.code = code


def parse_publish(first: int, buf: bytes, start: int, end: int) -> tuple[int, str, bytes]:
    """A PUBLISH packet's (packet id, topic, payload); its fixed header's first byte is
    ``first`` and its variable header starts at ``buf[start]``, its end at ``buf[end]``.

    Decoded here rather than by ``mqtt5`` because it is every reading's packet (this is a third
    faster) and because ``mqtt5`` 0.8.0 panics on a topic that is not UTF-8 where this raises
    :class:`ProtocolViolation` (0x81 Malformed Packet; 0x82 Protocol Error for QoS 2, never
    subscribed for, or an empty topic, which only a topic alias we never allow could fill).
    Properties are skipped, checked only to fit the packet.
    """
    qos = (first >> 1) & 3
    if qos > 1:
        raise ProtocolViolation(PROTOCOL_ERROR, f"PUBLISH with QoS {qos} (subscribed QoS 1)")
    try:
        p = start + 2 + ((buf[start] << 8) | buf[start + 1])
        if p > end:
            raise ProtocolViolation(MALFORMED_PACKET, "PUBLISH topic runs past the packet")
        topic = buf[start + 2 : p].decode()
        pid = 0
        if qos:
            pid = (buf[p] << 8) | buf[p + 1]
            p += 2
            if not pid:
                raise ProtocolViolation(PROTOCOL_ERROR, "PUBLISH QoS 1 with packet id 0")
        header = frame_length(buf, p - 1)  # the property length is a variable byte integer too
        if header is None:
            raise IndexError
        p, props = header
        p += props
    except (IndexError, UnicodeDecodeError) as exc:
        raise ProtocolViolation(MALFORMED_PACKET, f"PUBLISH does not decode: {exc}") from None
    if p > end:
        raise ProtocolViolation(MALFORMED_PACKET, "PUBLISH properties run past the packet")
    if not topic:
        raise ProtocolViolation(PROTOCOL_ERROR, "PUBLISH without a topic name")
    return pid, topic, buf[p:end]


def _decode_control(packet: memoryview) -> object:
    """A packet other than PUBLISH, decoded by ``mqtt5``. Any failure is a malformed packet:
    ``mqtt5`` 0.8.0 raises ``ValueError`` or ``IndexError``, or a ``PanicException`` (a
    ``BaseException``) for a string that is not UTF-8."""
    try:
        decoded, _ = mqtt5.read(packet)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # pyo3 panics are BaseExceptions (see the docstring)
        raise ProtocolViolation(
            MALFORMED_PACKET, f"packet type {packet[0] >> 4}: {type(exc).__name__} {exc}"
        ) from None
    return decoded


def frame_length(buf: bytes | bytearray, pos: int) -> tuple[int, int] | None:
    """The fixed header at ``buf[pos:]``: (offset of the variable header, remaining length),
    or None while the header is incomplete. Raises :class:`ProtocolViolation` (0x81) for a
    length of more than four bytes (MQTT 5.0 section 1.5.5)."""
    mult, length, i, n = 1, 0, pos + 1, len(buf)
    while True:
        if i >= n:
            return None
        b = buf[i]
        length += (b & 0x7F) * mult
        i += 1
        if not b & 0x80:
            return i, length
        mult <<= 7
        if mult > 1 << 21:
            raise ProtocolViolation(MALFORMED_PACKET, "remaining length longer than 4 bytes")


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection: frames packets and hands them to its :class:`NativeMqtt`."""

    def __init__(self, owner: NativeMqtt) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.closed: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.connack: asyncio.Future[mqtt5.ConnAckPacket] = (
            asyncio.get_running_loop().create_future()
        )
        self.last_in = time.monotonic()
        self.last_out = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self.last_out = time.monotonic()

    def abort(self, code: int | None, detail: str) -> None:
        """Drop the connection, telling the broker why first when ``code`` is given."""
        if code is not None:
            # DISCONNECT with a reason code and no properties (MQTT 5.0 section 3.14.2.2).
            self.write(bytes((0xE0, 1, code)))
        if not self.closed.done():
            self.closed.set_result(ProtocolViolation(code or 0, detail))
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.last_in = time.monotonic()
        buf = self.buf + data if self.buf else data
        pos, n = 0, len(buf)
        deliveries: list[Incoming] = []
        # One clock reading per read: every packet in it arrived together.
        now = datetime.now(UTC)
        generation = self.owner.generation
        add = deliveries.append
        view = memoryview(buf)
        try:
            while n - pos >= 2:
                header = frame_length(buf, pos)
                if header is None:
                    break
                start, length = header
                end = start + length
                if end > n:
                    break
                first = buf[pos]
                if first >> 4 == _PUBLISH:
                    pid, topic, payload = parse_publish(first, buf, start, end)
                    add(Incoming(pid, topic, payload, now, generation))
                else:
                    self.owner._control(self, _decode_control(view[pos:end]))
                    # A CONNACK opens a new generation, and a resumed session's queued PUBLISH
                    # packets follow it in the same read: they belong to the new one.
                    generation = self.owner.generation
                pos = end
        except ProtocolViolation as exc:
            log.error("mqtt: %s (reason 0x%02X); dropping the connection", exc, exc.code)
            self.abort(exc.code, str(exc))
            deliveries.clear()  # the broker redelivers them on the next connection
            return
        finally:
            view.release()
        self.buf = buf[pos:] if pos < n else b""
        if deliveries:
            self.owner.deliver(deliveries)


class NativeMqtt:
    """The ingestor's MQTT session; :meth:`start` connects and reconnects in the background.

    ``deliver`` is called on the event loop with each read's deliveries. ``connected`` is read
    by the metrics thread (a bool).
    """

    def __init__(
        self,
        target: MqttTarget,
        *,
        client_id: str,
        topic: str,
        deliver: Deliver,
        username: str | None = None,
        password: str | None = None,
        keepalive_s: int = 30,
        session_expiry_s: int = 0,
        receive_maximum: int = 65535,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 10.0,
    ) -> None:
        self.target = target
        self.client_id = client_id
        self.topic = topic
        self.deliver = deliver
        user, secret = (
            (username, password) if username is not None else (target.username, target.password)
        )
        self._connect = mqtt5.ConnectPacket(
            client_id,
            username=user,
            password=secret.encode() if secret is not None and user is not None else None,
            clean_start=False,
            keep_alive=keepalive_s,
            session_expiry_interval=session_expiry_s,
            receive_max=receive_maximum,
        ).write()
        self._subscribe = mqtt5.SubscribePacket(
            _SUBSCRIBE_ID,
            [mqtt5.TopicFilter(topic, max_qos=mqtt5.QoS.AT_LEAST_ONCE, retain_as_published=False)],
        ).write()
        self.keepalive_s = keepalive_s
        self._backoff = Backoff(initial_s=reconnect_min_s, cap_s=reconnect_max_s, jitter=0.0)
        self.generation = 0
        self.connected = False
        self._conn: _Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # Outgoing QoS 1: packets awaiting the broker's PUBACK, and those waiting for room.
        self._out_inflight: dict[int, bytes] = {}
        self._out_queue: deque[tuple[str, bytes]] = deque()
        self._out_max = 65535
        self._next_id = 1

    # ------------------------------------------------------------------ the ingestor's side
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="mqtt")

    def ack(self, mids: Sequence[int]) -> None:
        """PUBACK ``mids`` (packet ids of the current connection), in one write."""
        conn = self._conn
        if conn is None or not self.connected or not mids:
            return
        pack = _PUBACK.pack
        conn.write(b"".join([pack(0x40, 2, mid) for mid in mids if mid]))

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish QoS 1 (a device acknowledgement); sent when there is room, resent after a
        reconnect until the broker acknowledges it."""
        self._out_queue.append((topic, payload))
        self._send_queued()

    async def close(self) -> None:
        """DISCONNECT (Normal: the session is kept for its expiry interval) and stop."""
        self._closing = True
        conn = self._conn
        if conn is not None and self.connected:
            conn.write(mqtt5.DisconnectPacket().write())
        if conn is not None and conn.transport is not None:
            conn.transport.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.connected = False

    # ------------------------------------------------------------------ connection life
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        t = self.target
        context = ssl.create_default_context() if t.tls else None
        while not self._closing:
            try:
                _, conn = await loop.create_connection(
                    lambda: _Connection(self),
                    t.host,
                    t.port,
                    ssl=context,
                    server_hostname=t.host if context is not None else None,
                )
            except OSError as exc:
                log.warning("mqtt connection to %s failed: %s", t, exc)
                await asyncio.sleep(self._backoff.next_delay())
                continue
            await self._session(conn)
            if not self._closing:
                await asyncio.sleep(self._backoff.next_delay())

    async def _session(self, conn: _Connection) -> None:
        conn.write(self._connect)
        try:
            connack = await asyncio.wait_for(self._first(conn), CONNACK_TIMEOUT_S)
        except TimeoutError:
            log.warning("mqtt: no CONNACK within %.0fs; reconnecting", CONNACK_TIMEOUT_S)
            conn.abort(None, "no CONNACK")
            return
        if connack is None:
            log.warning("mqtt disconnected before CONNACK: %s", conn.closed.result())
            return
        if connack.reason_code != mqtt5.ConnAckReasonCode.SUCCESS:
            log.error("mqtt connect refused: %s", connack.reason_code.name)
            conn.abort(None, "refused")
            return
        self._backoff.reset()
        self._out_max = max(1, connack.receive_max)
        keepalive = connack.server_keep_alive or self.keepalive_s
        conn.write(self._subscribe)
        log.info(
            "mqtt connected (session present: %s), subscribed to %s",
            connack.session_present,
            self.topic,
        )
        self._resend(dup=connack.session_present)
        pinger = asyncio.create_task(self._keepalive(conn, keepalive), name="mqtt-keepalive")
        try:
            exc = await conn.closed
        finally:
            pinger.cancel()
            self.connected = False
            self._conn = None
        if not self._closing:
            log.warning(
                "mqtt disconnected: %s; unacknowledged messages will be redelivered",
                exc or "closed by the broker",
            )

    async def _first(self, conn: _Connection) -> mqtt5.ConnAckPacket | None:
        futures: list[asyncio.Future[Any]] = [conn.connack, conn.closed]
        await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
        return conn.connack.result() if conn.connack.done() else None

    async def _keepalive(self, conn: _Connection, keepalive_s: int) -> None:
        if keepalive_s <= 0:
            return
        while True:
            await asyncio.sleep(keepalive_s / 4)
            now = time.monotonic()
            if now - conn.last_in > 1.5 * keepalive_s:
                log.warning("mqtt: nothing from the broker for %.0fs", now - conn.last_in)
                conn.abort(None, "keep-alive timeout")
                return
            if now - conn.last_out >= keepalive_s / 2:
                conn.write(_PINGREQ)

    def _control(self, conn: _Connection, packet: object) -> None:
        """Every packet but PUBLISH, as it arrives."""
        if isinstance(packet, mqtt5.ConnAckPacket):
            if conn.connack.done():
                raise ProtocolViolation(PROTOCOL_ERROR, "a second CONNACK")
            if packet.reason_code == mqtt5.ConnAckReasonCode.SUCCESS:
                # Now, not when _session wakes up: the PUBLISH packets after the CONNACK in
                # this same read are this connection's, and their packet ids valid on it only.
                self.generation += 1
                self._conn = conn
                self.connected = True
            conn.connack.set_result(packet)
        elif isinstance(packet, mqtt5.PubAckPacket):
            if self._out_inflight.pop(packet.packet_id, None) is not None:
                if packet.reason_code.value >= 0x80:
                    log.warning("mqtt: the broker refused a device ack: %s", packet.reason_code)
                self._send_queued()
        elif isinstance(packet, mqtt5.SubAckPacket):
            if any(rc.value >= 0x80 for rc in packet.reason_codes):
                names = [rc.name for rc in packet.reason_codes]
                log.error("mqtt subscription to %s refused: %s", self.topic, names)
            else:
                log.info("mqtt subscription active: %s", self.topic)
        elif isinstance(packet, mqtt5.DisconnectPacket):
            log.warning(
                "mqtt: the broker disconnects: %s %s",
                packet.reason_code.name,
                packet.reason_str or "",
            )
            conn.abort(None, f"DISCONNECT {packet.reason_code.name}")
        elif isinstance(packet, mqtt5.PingRespPacket):
            pass
        else:
            raise ProtocolViolation(PROTOCOL_ERROR, f"unexpected {type(packet).__name__}")

    # ------------------------------------------------------------------ outgoing QoS 1
    def _send_queued(self) -> None:
        conn = self._conn
        if conn is None or not self.connected:
            return
        while self._out_queue and len(self._out_inflight) < self._out_max:
            topic, payload = self._out_queue.popleft()
            pid = self._packet_id()
            data = mqtt5.PublishPacket(
                topic, payload, qos=mqtt5.QoS.AT_LEAST_ONCE, packet_id=pid
            ).write()
            self._out_inflight[pid] = data
            conn.write(data)

    def _resend(self, *, dup: bool) -> None:
        # MQTT 5.0 section 4.4: on a resumed session, unacknowledged PUBLISH packets are sent
        # again with DUP set; on a new session they are sent afresh.
        conn = self._conn
        assert conn is not None
        for data in self._out_inflight.values():
            conn.write(bytes([data[0] | 0x08]) + data[1:] if dup else data)
        self._send_queued()

    def _packet_id(self) -> int:
        while True:
            pid = self._next_id
            self._next_id = pid % 65535 + 1
            if pid not in self._out_inflight:
                return pid
