"""The ingestor's hot path through paho: fewer system calls and wake-ups per delivery.

paho (pure Python) costs the ingestor about as much CPU as the signature checks themselves
(docs/benchmarks.md, "Ingest"). What is here changes how bytes move between paho and the socket,
never which bytes: the MQTT packets on the wire are the ones paho would send, in the same order.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt

__all__ = ["BufferedSocket", "buffer_reads", "puback_all"]

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
