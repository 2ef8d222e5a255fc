"""Broker persistence benchmark: what Mosquitto's database saves cost while a backlog drains.

    python bench/broker_persistence.py [--quick]

The failure it reproduces (issue 11): with ``autosave_on_changes true`` and ``autosave_interval
1`` Mosquitto rewrites its WHOLE in-memory database whenever a change is pending at the end of a
loop turn, and every message it queues is a change (mosquitto.conf(5): "subscription changes,
retained messages received and queued messages"). With an empty queue a save is cheap; once the
ingestor falls behind, every incoming reading rewrites a file that holds the whole backlog, so
the broker's one thread spends its time saving exactly when it is behind.

For each setting, on a private Mosquitto of its own (as the tests start it, anonymous, our
configuration otherwise: log type information on, ``max_queued_messages`` 1,000,000):

1. a persistent-session shared subscriber, as the ingestor (``$share/cityanchor/city/+/+/readings``,
   clean start off, session expiry 1 h, Receive Maximum = the ingestor's ``inflight_window``),
   subscribes and disconnects;
2. ``fill``: one QoS 1 publisher (100 in flight) queues N messages of 300 bytes for it, flat out;
3. ``drain``: the subscriber reconnects and takes the backlog (acknowledging each message) while
   a second publisher goes on at 200 messages/s (the soak's rate), until it has caught up.

Figures per setting ``S``: ``S_queued`` (backlog reached), ``S_fill_per_s`` and
``S_fill_last_s_per_s`` (intake over the whole fill and over its last second),
``S_saves_fill``/``S_saves_drain`` (Mosquitto's "Saving in-memory database" log lines in each
phase), ``S_backlog_rss_mb`` (the broker's RSS growth for the backlog), ``S_drain_per_s``
(backlog + live messages received / seconds until caught up), ``S_broker_cpu_s`` (the broker's
user + system CPU over both phases, /proc), ``S_undelivered`` (PUBACKed but never received) and
``S_dropped_lines`` ("Outgoing messages are being dropped" log lines). Ratios against the
baseline of the same run: ``S_fill_ratio``, ``S_drain_ratio``, ``S_saves_ratio`` (drain saves,
the baseline's counted as at least 1).

Settings: ``periodic_60s`` (Mosquitto's periodic save every 60 s: the baseline),
``every_change`` (``autosave_on_changes``, every change: ``up``'s old default),
``every_100_changes``, ``periodic_1s`` (``autosave_interval 1``: ``up``'s default now; at most
one save every 1-2 s, Mosquitto saves once ``now > last save + interval``, in whole seconds).

A phase that outlasts its budget (quick: 12 s; full: 120 s) is cut there: ``S_queued`` < N then
(the point, for ``every_change``).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import BenchConfig, run_sections

from anchor.host.config import Settings
from anchor.local import MosquittoServer

SIZES = {True: 20_000, False: 100_000}
PHASE_BUDGET_S = {True: 12.0, False: 120.0}
PAYLOAD_BYTES = 300
PUBLISH_INFLIGHT = 100
SHARED_FILTER = "$share/cityanchor/city/+/+/readings"
TOPIC = "city/d1/bench-0001/readings"
LIVE_PER_S = 200  # the soak's offered rate (issue 11)
SAVE_LINE = "Saving in-memory database"
DROP_LINE = "Outgoing messages are being dropped"

SETTINGS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("periodic_60s", {"autosave_interval": 60}),
    ("every_change", {"autosave_changes": 1}),
    ("every_100_changes", {"autosave_changes": 100}),
    ("periodic_1s", {"autosave_interval": 1}),
)
BASELINE = SETTINGS[0][0]


def log_count(server: MosquittoServer, needle: str) -> int:
    """How many lines of the broker's log contain ``needle`` so far."""
    try:
        text = server.log_path.read_text(errors="replace")
    except FileNotFoundError:
        return 0
    return sum(1 for line in text.splitlines() if needle in line)


def broker_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class SharedSubscriber:
    """A paho MQTT v5 client shaped like the ingestor's session: shared subscription, clean
    start off, session expiry > 0, Receive Maximum = ``inflight_window``; acknowledges every
    message as soon as it is handed over (paho's default)."""

    def __init__(self, port: int, client_id: str, *, receive_maximum: int) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.port = port
        self.client_id = client_id
        self.received = 0
        self.last_at = 0.0
        self._subscribed = threading.Event()
        self._connected = threading.Event()
        self._disconnected = threading.Event()
        self._lock = threading.Lock()
        self._props = Properties(PacketTypes.CONNECT)
        self._props.SessionExpiryInterval = 3600
        self._props.ReceiveMaximum = receive_maximum
        self._client: Any = None

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            self.received += 1
            self.last_at = time.perf_counter()

    def connect(self, *, subscribe: bool) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        # A fresh client each time, as a restarted ingestor (same client id, same session):
        # paho's loop_start() on a client used before leaks its previous wake-up socket pair.
        self._connected.clear()
        self._disconnected.clear()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *a: self._subscribed.set()
        self._client.on_connect = lambda *a: self._connected.set()
        self._client.on_disconnect = lambda *a: self._disconnected.set()
        self._client.connect(
            "127.0.0.1", self.port, keepalive=60, clean_start=False, properties=self._props
        )
        self._client.loop_start()
        if not self._connected.wait(10):
            raise RuntimeError("subscriber: no CONNACK within 10 s")
        if subscribe:
            self._client.subscribe(SHARED_FILTER, qos=1)
            if not self._subscribed.wait(10):
                raise RuntimeError("subscriber: no SUBACK within 10 s")

    def disconnect(self) -> None:
        self._client.disconnect()
        self._disconnected.wait(10)
        self._client.loop_stop()


class Publisher:
    """One QoS 1 publisher (``PUBLISH_INFLIGHT`` in flight, 300-byte payloads) on a thread:
    flat out up to ``count`` messages, or ``rate`` a second until :meth:`stop`."""

    def __init__(self, port: int, client_id: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        self.acked = 0
        self.sent = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
        )
        self._client.max_inflight_messages_set(PUBLISH_INFLIGHT)
        self._client.max_queued_messages_set(0)
        self._client.on_publish = self._on_publish
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()

    def _on_publish(self, *_args: Any) -> None:
        with self._lock:
            self.acked += 1

    def _run(self, count: int | None, rate: float | None) -> None:
        payload = os.urandom(PAYLOAD_BYTES)
        start = time.perf_counter()
        while not self._stop.is_set() and (count is None or self.sent < count):
            if rate is not None:
                delay = start + self.sent / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(min(delay, 0.05))
                    continue
            elif self.sent - self.acked >= 4 * PUBLISH_INFLIGHT:
                # Keep paho's own queue short, so a cut phase leaves little unsent in it.
                time.sleep(0.001)
                continue
            self._client.publish(TOPIC, payload, qos=1)
            self.sent += 1

    def start(self, *, count: int | None = None, rate: float | None = None) -> Publisher:
        self._thread = threading.Thread(target=self._run, args=(count, rate), daemon=True)
        self._thread.start()
        return self

    def done(self) -> bool:
        return self._thread is not None and not self._thread.is_alive() and self.acked >= self.sent

    def stop(self, *, settle_s: float) -> int:
        """Stop publishing, wait up to ``settle_s`` for the PUBACKs; return how many came."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        deadline = time.perf_counter() + settle_s
        while self.acked < self.sent and time.perf_counter() < deadline:
            time.sleep(0.005)
        self._client.disconnect()
        self._client.loop_stop()
        return self.acked


def broker_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_setting(base: Path, name: str, kwargs: dict[str, Any], cfg: BenchConfig) -> dict[str, Any]:
    n = SIZES[cfg.quick]
    budget = PHASE_BUDGET_S[cfg.quick]
    mq = MosquittoServer(
        base / name, allow_anonymous=True, max_queued_messages=1_000_000, **kwargs
    ).start()
    try:
        pid = mq.pid
        assert pid is not None
        rss0 = broker_rss_mb(pid)
        sub = SharedSubscriber(
            mq.port, "bench-ingest-0", receive_maximum=Settings().inflight_window
        )
        sub.connect(subscribe=True)
        sub.disconnect()
        time.sleep(0.2)

        # 1. The ingestor is away: the backlog builds up as fast as the broker takes it.
        cpu0 = broker_cpu_s(pid)
        saves0 = log_count(mq, SAVE_LINE)
        t0 = time.perf_counter()
        fill = Publisher(mq.port, "bench-pub-fill").start(count=n)
        samples = [(t0, 0)]
        while not fill.done() and time.perf_counter() < t0 + budget:
            time.sleep(0.01)
            samples.append((time.perf_counter(), fill.acked))
        queued = fill.stop(settle_s=5)
        fill_s = time.perf_counter() - t0
        # The intake rate over the fill's last second: how fast the broker still takes
        # readings once the backlog is there (the spiral: ever slower as it grows).
        t_end, n_end = samples[-1]
        t_tail, n_tail = next(x for x in samples if x[0] >= t_end - 1.0)
        tail_per_s = (n_end - n_tail) / (t_end - t_tail) if t_end > t_tail else 0.0
        saves1 = log_count(mq, SAVE_LINE)
        rss1 = broker_rss_mb(pid)

        # 2. It is back and drains while the devices go on publishing at LIVE_PER_S.
        t1 = time.perf_counter()
        live = Publisher(mq.port, "bench-pub-live").start(rate=LIVE_PER_S)
        sub.connect(subscribe=False)
        while sub.received < queued + live.acked and time.perf_counter() < t1 + budget:
            time.sleep(0.005)
        cleared = sub.received
        drain_s = time.perf_counter() - t1
        saves2 = log_count(mq, SAVE_LINE)
        live_acked = live.stop(settle_s=5)
        deadline = time.perf_counter() + 5
        while sub.received < queued + live_acked and time.perf_counter() < deadline:
            time.sleep(0.01)
        cpu_s = broker_cpu_s(pid) - cpu0
        received = sub.received
        sub.disconnect()
        dropped = log_count(mq, DROP_LINE)
    finally:
        mq.stop(timeout=30)
    return {
        f"{name}_queued": queued,
        f"{name}_fill_per_s": queued / fill_s,
        f"{name}_fill_last_s_per_s": tail_per_s,
        f"{name}_saves_fill": saves1 - saves0,
        f"{name}_backlog_rss_mb": rss1 - rss0,
        f"{name}_drain_s": drain_s,
        f"{name}_drain_per_s": cleared / drain_s,
        f"{name}_saves_drain": saves2 - saves1,
        f"{name}_live_published": live_acked,
        f"{name}_broker_cpu_s": cpu_s,
        # A message the fill stopped waiting for may arrive without its PUBACK counted: only
        # a shortfall is a loss.
        f"{name}_undelivered": max(0, queued + live_acked - received),
        f"{name}_dropped_lines": dropped,
    }


def autosave_settings(cfg: BenchConfig) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="bench-persist-"))
    # The broker drops to the mosquitto user when run as root: it must traverse this dir.
    os.chmod(base, 0o711)
    figures: dict[str, Any] = {
        "messages": SIZES[cfg.quick],
        "payload_bytes": PAYLOAD_BYTES,
        "phase_budget_s": PHASE_BUDGET_S[cfg.quick],
    }
    try:
        for name, kwargs in SETTINGS:
            print(f"  {name} ...", flush=True)
            figures.update(run_setting(base, name, kwargs, cfg))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    base_rate = figures[f"{BASELINE}_drain_per_s"]
    base_saves = max(1, figures[f"{BASELINE}_saves_drain"])
    base_fill = figures[f"{BASELINE}_fill_per_s"]
    for name, _ in SETTINGS:
        figures[f"{name}_fill_ratio"] = figures[f"{name}_fill_per_s"] / base_fill
        figures[f"{name}_drain_ratio"] = figures[f"{name}_drain_per_s"] / base_rate
        figures[f"{name}_saves_ratio"] = figures[f"{name}_saves_drain"] / base_saves
    return figures


if __name__ == "__main__":
    run_sections("broker_persistence", [autosave_settings], sys.argv[1:])
