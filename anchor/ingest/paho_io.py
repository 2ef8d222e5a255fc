"""The ingestor's hot path through paho: fewer system calls and wake-ups per delivery.

paho (pure Python) costs the ingestor about as much CPU as the signature checks themselves
(docs/benchmarks.md, "Ingest"). What is here changes how bytes move between paho and the socket,
never which bytes: the MQTT packets on the wire are the ones paho would send, in the same order.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import paho.mqtt.client as mqtt

__all__ = ["puback_all"]

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
