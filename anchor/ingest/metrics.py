"""Prometheus metrics of one ingestor process: ``cityanchor ingest --metrics-listen HOST:PORT``.

The figures are the ingestor's own counters (:class:`anchor.ingest.ingestor.IngestStats`, the
ones its ``ingest stats`` log line shows), exposed by ``prometheus_client``'s HTTP server in a
thread of its own, so a slow scrape never stalls the ingest loop. They are per process: sum
them across ingestors (the API's ``cityanchor_readings_*`` figures, read from the database, are
the fleet's totals). With ``--workers N`` worker ``i`` listens on ``PORT + i``.

No token: the endpoint says how much was ingested and why messages were refused, never a
reading, a key or a device id. Bind it to an address only Prometheus reaches (an internal
network; compose publishes no port for it).

``cityanchor_ingest_mqtt_connected`` is what the compose healthcheck reads: 1 while the
ingestor holds its broker connection.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Info, ProcessCollector, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from anchor import __version__
from anchor.errors import Reason, UsageError
from anchor.ingest.ingestor import SEAL_BUCKETS, IngestStats

__all__ = ["IngestCollector", "MetricsServer", "ingest_registry", "parse_listen"]


class IngestCollector(Collector):
    """The counters of ``stats`` as Prometheus families, read at each scrape.

    The counters are plain ints the ingest loop increments; this runs in the server's thread
    and only reads them (a torn read is impossible for an int in CPython, and a scrape that
    misses the increment of the same instant sees it at the next one).
    """

    def __init__(self, stats: IngestStats, connected: Callable[[], bool]) -> None:
        self._stats = stats
        self._connected = connected

    def describe(self) -> list[Metric]:
        return list(self._families(IngestStats(), connected=False))

    def collect(self) -> Iterator[Metric]:
        yield from self._families(self._stats, connected=self._connected())

    @staticmethod
    def _families(s: IngestStats, *, connected: bool) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "cityanchor_ingest_received",
            "Messages received from the broker (this process).",
            value=s.received,
        )
        readings = CounterMetricFamily(
            "cityanchor_ingest_readings",
            "Readings sealed into a batch (accepted) or found already stored (duplicate), "
            "this process.",
            labels=["outcome"],
        )
        for outcome in ("accepted", "duplicate"):
            readings.add_metric([outcome], s.outcomes.get(outcome, 0))
        yield readings
        quarantined = CounterMetricFamily(
            "cityanchor_ingest_quarantined",
            "Messages refused and quarantined, by reason code (this process).",
            labels=["reason"],
        )
        by_reason: dict[str, int] = {}
        for key, n in s.outcomes.items():
            if key.startswith("quarantined:"):
                # Only table codes become label values (anything else is counted as `error`).
                code = Reason.label(key.removeprefix("quarantined:")).value
                by_reason[code] = by_reason.get(code, 0) + n
        for code, n in sorted(by_reason.items()):
            quarantined.add_metric([code], n)
        yield quarantined
        yield CounterMetricFamily(
            "cityanchor_ingest_batches_sealed",
            "Batches this process sealed into the batch log.",
            value=s.batches,
        )
        yield CounterMetricFamily(
            "cityanchor_ingest_seal_failures",
            "Seal attempts that failed and were retried (database unavailable, ...).",
            value=s.seal_failures,
        )
        yield CounterMetricFamily(
            "cityanchor_ingest_device_acks",
            "Acknowledgements published to devices.",
            value=s.device_acks,
        )
        bounds = (*SEAL_BUCKETS, None)
        buckets = [(_bound(b), n) for b, n in zip(bounds, s.seal_buckets, strict=True)]
        yield HistogramMetricFamily(
            "cityanchor_ingest_seal_latency_seconds",
            "Per seal: commit time minus the arrival of the oldest message it acknowledges.",
            buckets=buckets,
            sum_value=s.seal_sum_s,
        )
        yield GaugeMetricFamily(
            "cityanchor_ingest_mqtt_connected",
            "1 while this ingestor is connected to the broker.",
            value=int(connected),
        )


def _bound(b: float | None) -> str:
    return "+Inf" if b is None else repr(float(b))


def ingest_registry(stats: IngestStats, connected: Callable[[], bool]) -> CollectorRegistry:
    """A registry of its own: the ingest figures, ``cityanchor_build_info`` and ``process_*``."""
    registry = CollectorRegistry()
    registry.register(IngestCollector(stats, connected))
    Info("cityanchor_build", "This cityanchor build.", registry=registry).info(
        {"version": __version__}
    )
    ProcessCollector(registry=registry)
    return registry


def parse_listen(text: str, *, offset: int = 0) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) with ``offset`` added to the port; UsageError if bad."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--metrics-listen {text!r}: expected HOST:PORT, a port 1-65535")
    if int(port) + offset > 65535:
        raise UsageError(
            f"--metrics-listen {text!r}: worker {offset} would listen on {int(port) + offset}, "
            "beyond 65535"
        )
    return host, int(port) + offset


class MetricsServer:
    """The HTTP server of one registry; ``close()`` stops it."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        try:
            server, thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise UsageError(f"--metrics-listen {host}:{port}: {exc}") from exc
        self._server: WSGIServer = server
        self._thread: threading.Thread = thread
        self.port: int = server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
