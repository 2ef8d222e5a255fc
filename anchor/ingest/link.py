"""What the ingestor needs of an MQTT client, whichever it is (``--mqtt-client``).

Two implementations: :class:`anchor.ingest.mqtt_native.NativeMqtt` (asyncio on the event loop,
the default) and :class:`anchor.ingest.paho_io.PahoLink` (paho's network thread, the fallback).
Both hand deliveries over in arrival order, never acknowledge on their own, and acknowledge a
packet id only on the connection that delivered it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

__all__ = ["MQTT_CLIENTS", "Deliver", "Incoming", "Link"]

MQTT_CLIENTS = ("native", "paho")


@dataclass(frozen=True, slots=True)
class Incoming:
    """One MQTT delivery, as taken off the connection."""

    mid: int  # the PUBLISH packet id (0 for QoS 0, which is never acknowledged)
    topic: str
    payload: bytes
    received_at: datetime
    generation: int  # which MQTT connection delivered it: a mid is only valid on that one


# Called on the event loop with the deliveries of one read (native) or one burst (paho).
Deliver = Callable[[list[Incoming]], None]


class Link(Protocol):
    """An MQTT v5 session of the ingestor: persistent, subscribed QoS 1, manual PUBACKs."""

    generation: int

    @property
    def connected(self) -> bool: ...

    def start(self) -> None:
        """Connect (and reconnect) in the background; deliveries go to the ``Deliver`` given."""

    def ack(self, mids: Sequence[int]) -> None:
        """PUBACK these packet ids of the current connection (after their seal committed)."""

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish QoS 1 (a device acknowledgement)."""

    async def close(self) -> None:
        """Disconnect, keeping the session for its expiry interval."""
