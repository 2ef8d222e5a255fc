"""Mosquitto's database saves while the ingestors' backlog builds up and drains (issue 11).

With ``autosave_on_changes`` (``up``'s default before) Mosquitto rewrites its whole database for
every message it queues: with the ingestor behind, each reading received costs a rewrite of the
whole backlog, the broker crawls, its queue reaches ``max_queued_messages`` and it drops readings
it has already PUBACKed. ``up``'s broker now saves once a second whatever the backlog. The
settings come from :func:`anchor.cli.up.broker_settings`, the code ``up`` starts its broker with.
Costs and rates: bench/broker_persistence.py.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from anchor.cli.up import UpOptions, broker_settings
from anchor.host.config import Settings
from anchor.local import MosquittoServer

SHARED_FILTER = "$share/cityanchor/city/+/+/readings"
TOPIC = "city/d1/persist-0001/readings"
BACKLOG = 5_000
LIVE = 500  # published while the backlog drains, as devices go on publishing
SAVE_LINE = "Saving in-memory database"
DROP_LINE = "Outgoing messages are being dropped"


class _Ingestor:
    """The ingestor's session shape: shared subscription, clean start off, session expiry,
    Receive Maximum = ``inflight_window``; records every payload it is given."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.payloads: list[bytes] = []
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._disconnected = threading.Event()
        self._props = Properties(PacketTypes.CONNECT)
        self._props.SessionExpiryInterval = 3600
        self._props.ReceiveMaximum = Settings().inflight_window
        self.client: mqtt.Client | None = None

    def connect(self, *, subscribe: bool) -> None:
        # A fresh client each time, as a restarted ingestor (same client id, same session):
        # paho's loop_start() on a client used before leaks its previous wake-up socket pair.
        self._connected.clear()
        self._disconnected.clear()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id="cityanchor-ingest-0",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.on_connect = lambda *a: self._connected.set()
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_disconnect = lambda *a: self._disconnected.set()
        self.client.on_message = lambda c, u, msg: self.payloads.append(msg.payload)
        self.client.connect("127.0.0.1", self.port, clean_start=False, properties=self._props)
        self.client.loop_start()
        assert self._connected.wait(10), "no CONNACK"
        if subscribe:
            self.client.subscribe(SHARED_FILTER, qos=1)
            assert self._subscribed.wait(10), "no SUBACK"

    def disconnect(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self._disconnected.wait(10)
            self.client.loop_stop()
            self.client = None


def _publisher(port: int) -> tuple[mqtt.Client, list[int]]:
    acked: list[int] = []
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="persist-device", protocol=MQTTProtocolVersion.MQTTv5
    )
    c.max_inflight_messages_set(100)
    c.max_queued_messages_set(0)
    c.on_publish = lambda client, userdata, mid, rc, props: acked.append(mid)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c, acked


def _publish(c: mqtt.Client, first: int, count: int) -> None:
    for i in range(first, first + count):
        # 300 bytes, as bench/broker_persistence.py; the index makes every one distinct.
        c.publish(TOPIC, i.to_bytes(4, "big") + bytes(296), qos=1)


def _wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def _count(log: Path, needle: str) -> int:
    return sum(1 for line in log.read_text(errors="replace").splitlines() if needle in line)


def test_up_broker_saves_a_bounded_number_of_times_while_a_backlog_builds_and_drains(
    service_dir: Path,
) -> None:
    settings = broker_settings(UpOptions(data_dir=service_dir / "up"))
    mq = MosquittoServer(service_dir / "mq", allow_anonymous=True, **settings).start()
    ingestor = _Ingestor(mq.port)
    device, acked = _publisher(mq.port)
    try:
        ingestor.connect(subscribe=True)
        ingestor.disconnect()
        saves_before = _count(mq.log_path, SAVE_LINE)

        # The ingestor is away (e.g. starved of CPU): a backlog builds up in its session.
        _publish(device, 0, BACKLOG)
        _wait(lambda: len(acked) == BACKLOG, 300, f"{len(acked)} of {BACKLOG} PUBACKed")
        saves_fill = _count(mq.log_path, SAVE_LINE) - saves_before

        # It comes back and drains while the devices go on publishing.
        ingestor.connect(subscribe=False)
        _publish(device, BACKLOG, LIVE)
        total = BACKLOG + LIVE
        _wait(lambda: len(acked) == total, 300, f"{len(acked)} of {total} PUBACKed")
        _wait(lambda: len(ingestor.payloads) >= total, 300, "backlog not drained")
        saves = _count(mq.log_path, SAVE_LINE) - saves_before
        print(
            f"\nbroker settings {dict(settings)}: {total} messages queued and drained, "
            f"{saves} database saves ({saves_fill} while the backlog built up)"
        )
        # Every PUBACKed message reached the ingestor, none dropped by the broker.
        assert sorted(int.from_bytes(p[:4], "big") for p in ingestor.payloads) == list(range(total))
        assert _count(mq.log_path, DROP_LINE) == 0
        # The spiral's cause is gone: saving on every change gives about one save per message
        # queued (each rewriting the whole backlog); a periodic save gives one a second at most.
        assert saves < 50, f"{saves} database saves for {total} messages"
    finally:
        ingestor.disconnect()
        device.disconnect()
        device.loop_stop()
        mq.stop()
