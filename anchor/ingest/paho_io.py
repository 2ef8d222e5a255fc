"""The ingestor through paho (``--mqtt-client paho``, the fallback of
:mod:`anchor.ingest.mqtt_native`): :class:`PahoLink`, and fewer system calls and wake-ups per
delivery than paho's own path.

paho (pure Python) costs the ingestor about as much CPU as the signature checks themselves
(docs/benchmarks.md, "Ingest"). What is here changes how bytes move between paho and the socket,
never which bytes: the MQTT packets on the wire are the ones paho would send, in the same order.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from anchor.broker.client import MqttTarget, create_client
from anchor.ingest.link import Deliver, Incoming

__all__ = ["BufferedSocket", "PahoLink", "buffer_reads", "puback_all"]

log = logging.getLogger("anchor.ingest.ingestor")

# An MQTT v5 PUBACK with reason Success and no properties: type 4, remaining length 2, the mid
# (MQTT 5.0 section 3.4.2.1: the reason code may be omitted when it is 0x00), as paho sends it.
_PUBACK = struct.Struct("!BBH")
_PUBACK_TYPE = 0x40


def puback_all(client: mqtt.Client, mids: Sequence[int]) -> None:
    """Acknowledge the QoS 1 deliveries ``mids`` (``manual_ack``), as ``client.ack`` would.

    ``client.ack`` queues one 4-byte packet per call, and each call wakes paho's network thread
    (a byte down its socket pair) which then writes that packet with a send of its own: two
    system calls and a thread wake-up per reading. The same PUBACK packets, concatenated, go
    out through paho's queue as one write: the bytes on the wire are identical, in the same
    order. A reconnect clears paho's queue, so a PUBACK never reaches a later connection.
    """
    if not mids:
        return
    queue = getattr(client, "_packet_queue", None)
    if queue is None:  # not the paho this was written against: one call per message
        for mid in mids:
            client.ack(mid, 1)
        return
    queue(_PUBACK_TYPE, b"".join([_PUBACK.pack(_PUBACK_TYPE, 2, mid) for mid in mids]), 0, 1)


# What one read from the connection asks of the kernel: many small PUBLISH packets at once.
READ_SIZE = 256 * 1024


class BufferedSocket:
    """The connection's socket, with reads buffered.

    paho reads each packet with three or more ``recv`` calls (its first byte, its length one
    byte at a time, then the rest). Through this wrapper one ``recv`` fetches whatever the
    kernel holds, and paho's small reads are served from that copy. ``pending()`` counts the
    bytes held here, and paho's loop does not wait in ``select`` while there are any (it calls
    ``pending()`` for TLS sockets, which buffer the same way). Everything but ``recv`` and
    ``pending`` is the socket's own; a reconnect replaces the socket, and this buffer with it.
    """

    __slots__ = ("_buf", "_pos", "_sock")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, bufsize: int) -> bytes:
        if self._pos >= len(self._buf):
            # Raises what the socket raises (BlockingIOError, SSLWantReadError, OSError): paho
            # handles those; b"" (the peer closed) is returned as it is.
            data: bytes = self._sock.recv(max(bufsize, READ_SIZE))
            if len(data) <= bufsize:
                return data
            self._buf, self._pos = data, 0
        end = self._pos + bufsize
        out = self._buf[self._pos : end]
        if end >= len(self._buf):
            self._buf, self._pos = b"", 0
        else:
            self._pos = end
        return out

    def pending(self) -> int:
        inner = getattr(self._sock, "pending", None)
        return len(self._buf) - self._pos + (inner() if inner is not None else 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def buffer_reads(client: mqtt.Client) -> None:
    """Wrap ``client``'s current connection in a :class:`BufferedSocket` (call it from
    ``on_connect``, on paho's thread, which is the only one reading the socket)."""
    sock = getattr(client, "_sock", None)
    if sock is not None and not isinstance(sock, BufferedSocket):
        client._sock = BufferedSocket(sock)


class PahoLink:
    """The ingestor's session through paho: its network thread decodes, the event loop gets
    the deliveries in bursts (one cross-thread wake-up while the loop has not yet taken the
    previous ones, not one per message)."""

    def __init__(
        self,
        target: MqttTarget,
        *,
        client_id: str,
        topic: str,
        deliver: Deliver,
        username: str | None = None,
        password: str | None = None,
        session_expiry_s: int = 0,
        receive_maximum: int = 65535,
    ) -> None:
        self.topic = topic
        self._deliver = deliver
        self.generation = 0
        self._loop = asyncio.get_running_loop()
        self._connected = False
        self._inbox: deque[Incoming] = deque()
        self._signalled = False
        # manual_ack: a PUBACK goes out only once the reading is durable (anchor.ingest.ingestor);
        # ReceiveMaximum bounds what the broker sends us unacknowledged to the window.
        self._client = create_client(
            target,
            client_id=client_id,
            username=username,
            password=password,
            clean_start=False,
            session_expiry_s=session_expiry_s,
            receive_maximum=receive_maximum,
            reconnect_max_s=10,
            manual_ack=True,
        )
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe

    @property
    def connected(self) -> bool:
        return self._connected

    def start(self) -> None:
        self._client.loop_start()

    def ack(self, mids: Sequence[int]) -> None:
        puback_all(self._client, [mid for mid in mids if mid])

    def publish(self, topic: str, payload: bytes) -> None:
        self._client.publish(topic, payload, qos=1)

    async def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    # paho's thread from here on.
    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.error("mqtt connect refused: %s", reason_code)
            return
        self.generation += 1
        buffer_reads(client)
        client.subscribe(self.topic, qos=1)
        self._connected = True
        log.info(
            "mqtt connected (session present: %s), subscribed to %s",
            flags.session_present,
            self.topic,
        )

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        if any(rc.is_failure for rc in reason_codes):
            log.error("mqtt subscription to %s refused: %s", self.topic, reason_codes)
        else:
            log.info("mqtt subscription active: %s", self.topic)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connected = False
        log.warning(
            "mqtt disconnected: %s; unacknowledged messages will be redelivered", reason_code
        )

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # Turn the packet into a value and hand it over; nothing else on this thread.
        self._inbox.append(
            Incoming(msg.mid, msg.topic, bytes(msg.payload), datetime.now(UTC), self.generation)
        )
        if not self._signalled:
            self._signalled = True
            self._loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:  # on the event loop
        # Re-arm before draining: whatever paho appends after this line signals again.
        self._signalled = False
        items: list[Incoming] = []
        inbox = self._inbox
        while inbox:
            items.append(inbox.popleft())
        if items:
            self._deliver(items)
