"""Prometheus metrics of the API process, exposed with ``prometheus_client``.

Each app has its own :class:`MetricsState` with a private ``CollectorRegistry`` (a process may
run several apps, as the tests do; the library's global registry would mix them). The registry
holds, besides the figures below, the library's ``process_*`` and ``python_*`` collectors and
``cityanchor_build_info`` (label ``version``).

Two kinds of figures:

* **From the database** (the same in every API replica; aggregate them with ``max``, not
  ``sum``): readings stored, quarantined messages by reason, batches, log size, erasures, the
  seal latency histogram (per batch: ``sealed_at`` minus its earliest ``received_at``), and
  per anchoring backend the anchor lag and the anchors that vanished from the chain after they
  were recorded (``cityanchor_anchors_vanished_total``, reason ``anchor_vanished``). They are
  read by :func:`collect` before each scrape and handed to a custom collector, because a
  collector's ``collect()`` is synchronous and the database is not.
* **Of this process** (sum them across replicas): API request latency per route, method and
  response status (``cityanchor_api_request_duration_seconds{route,method,status}``; a
  request whose client went away before the answer is counted with status ``499``) and token
  authentication failures by reason.

The seal histogram is kept cumulative in memory and extended with the batches sealed since the
previous scrape (batch ids are allocated under the seal lock, so a batch below the newest one
seen never appears later). API latency is observed by the API's own middleware rather than
read from ``ApiContext.latency``, which is a bounded sliding window: a histogram built from it
would go down when old samples are dropped, and Prometheus counters must never decrease.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from anchor import __version__
from anchor.cosignature import CosignerVerifier
from anchor.cosigning.client import OUTCOMES
from anchor.errors import AnchorError, Reason
from anchor.store import Store, WitnessFigures
from anchor.store import operator as ops

__all__ = [
    "API_LATENCY_BUCKETS",
    "AUTH_FAILURE_REASONS",
    "CLIENT_CLOSED",
    "CONTENT_TYPE",
    "HTTP_METHODS",
    "SEAL_LATENCY_BUCKETS",
    "DatabaseFigures",
    "MetricsState",
    "collect",
    "render",
]

# Text format 0.0.4: what every Prometheus version scrapes (the library's newest default,
# 1.0.0, is refused by Prometheus 2 and needs nothing our metric names use).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
SEAL_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
API_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
AUTH_FAILURE_REASONS = ("missing", "invalid", "revoked", "forbidden")
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: The status label of a request whose client disconnected before it was answered (nginx's).
CLIENT_CLOSED = 499

# In text format 0.0.4 a counter's or histogram's creation time is a separate gauge family
# (``..._created``) per series: names no dashboard uses, doubling the series count. The switch
# is the library's own and process-wide; nothing else in cityanchor uses prometheus_client.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in the library


# --------------------------------------------------------------------------------------------
# Figures read from the database


@dataclass(frozen=True, slots=True)
class DatabaseFigures:
    """What one scrape read from the database (see :func:`collect`)."""

    counts: Mapping[str, int] = field(default_factory=dict)
    erased: int = 0
    newest: tuple[int, datetime] | None = None
    anchored: Mapping[str, tuple[int, datetime]] = field(default_factory=dict)
    vanished: Mapping[tuple[str, str], int] = field(default_factory=dict)
    backends: Sequence[str] = ()
    witnesses: Sequence[WitnessFigures] = ()
    quorum: tuple[bool, int] = (False, 0)  # (anchoring waits for the quorum, times not met)


def _vanished_by_reason(
    vanished: Mapping[tuple[str, str], int], backend: str
) -> list[tuple[Reason, int]]:
    """One backend's vanished anchors per reason label (table codes only, see Reason.label),
    ``anchor_vanished`` always present."""
    out = {Reason.ANCHOR_VANISHED: 0}
    for (b, r), n in vanished.items():
        if b == backend:
            out[Reason.label(r)] = out.get(Reason.label(r), 0) + n
    return sorted(out.items())


def _database_families(f: DatabaseFigures) -> list[Metric]:
    stored = CounterMetricFamily(
        "cityanchor_readings_stored",
        "Readings accepted and sealed into a batch (from the database).",
        value=f.counts.get("readings", 0),
    )
    quarantined = CounterMetricFamily(
        "cityanchor_readings_quarantined",
        "Messages refused by the ingestors, by reason code (from the database).",
        labels=["reason"],
    )
    by_reason: dict[Reason, int] = {}
    for key, n in f.counts.items():
        if key.startswith("quarantine."):
            # Only table codes become label values (a stray string is counted as `error`).
            code = Reason.label(key.removeprefix("quarantine."))
            by_reason[code] = by_reason.get(code, 0) + n
    for code, n in sorted(by_reason.items()):
        quarantined.add_metric([code.value], n)
    vanished = CounterMetricFamily(
        "cityanchor_anchors_vanished",
        "Anchors recorded as confirmed and later not found on their chain as recorded (a "
        "reorg, a chain node restored from an older state), by backend and reason code; "
        "each is anchored again.",
        labels=["backend", "reason"],
    )
    for name in sorted({*f.backends, *(b for b, _ in f.vanished)}):
        for code, n in _vanished_by_reason(f.vanished, name):
            vanished.add_metric([name, code.value], n)
    return [
        stored,
        quarantined,
        CounterMetricFamily(
            "cityanchor_readings_erased",
            "Readings whose envelope was erased by an operator (tombstones).",
            value=f.erased,
        ),
        CounterMetricFamily(
            "cityanchor_batches_sealed",
            "Batches sealed into the batch log.",
            value=f.counts.get("batches", 0),
        ),
        GaugeMetricFamily(
            "cityanchor_log_size",
            "Size of the batch log at its newest checkpoint.",
            value=f.counts.get("log_size", 0),
        ),
        GaugeMetricFamily(
            "cityanchor_devices_registered",
            "Devices in the registry, revoked ones included.",
            value=f.counts.get("devices", 0),
        ),
        *_anchor_families(f.newest, f.anchored, f.backends),
        vanished,
        *_witness_families(f.witnesses, f.quorum),
    ]


def _witness_label(key: str) -> str:
    try:
        return CosignerVerifier.from_vkey(key).key_label
    except AnchorError:
        return "invalid"


def _witness_families(
    witnesses: Sequence[WitnessFigures], quorum: tuple[bool, int]
) -> list[Metric]:
    """Per witness (``name+keyid``): add-checkpoint requests by outcome and the size it last
    cosigned; anchoring's wait for the witness quorum (issue 13)."""
    requests = CounterMetricFamily(
        "cityanchor_witness_requests",
        "add-checkpoint requests of the anchoring process to each witness, by outcome "
        f"({', '.join(OUTCOMES)}; from the database).",
        labels=["witness", "outcome"],
    )
    size = GaugeMetricFamily(
        "cityanchor_witness_cosigned_log_size",
        "Log size of the newest checkpoint the witness cosigned for us.",
        labels=["witness"],
    )
    for w in witnesses:
        label = _witness_label(w.witness)
        for outcome in OUTCOMES:  # only known outcomes become label values
            requests.add_metric([label, outcome], w.outcomes.get(outcome, 0))
        size.add_metric([label], w.cosigned_size)
    waiting, not_met = quorum
    return [
        requests,
        size,
        GaugeMetricFamily(
            "cityanchor_witness_quorum_waiting",
            "1 while anchoring waits because no new checkpoint has the witness quorum "
            "(witness_quorum_not_met, --witness-anchor-quorum).",
            value=int(waiting),
        ),
        CounterMetricFamily(
            "cityanchor_witness_quorum_not_met",
            "Anchoring periods in which the newest checkpoint lacked the witness quorum "
            "(witness_quorum_not_met).",
            value=not_met,
        ),
    ]


def _anchor_families(
    newest: tuple[int, datetime] | None,
    anchored: Mapping[str, tuple[int, datetime]],
    backends: Sequence[str],
) -> list[Metric]:
    lag = GaugeMetricFamily(
        "cityanchor_anchor_lag_seconds",
        "Newest checkpoint's time minus the time of the newest checkpoint anchored on the "
        "backend (0: up to date; never anchored: seconds since the newest checkpoint).",
        labels=["backend"],
    )
    behind = GaugeMetricFamily(
        "cityanchor_anchor_unanchored_batches",
        "Batches in the log beyond the backend's newest anchored checkpoint.",
        labels=["backend"],
    )
    size = GaugeMetricFamily(
        "cityanchor_anchored_log_size",
        "Log size of the backend's newest anchored checkpoint.",
        labels=["backend"],
    )
    if newest is not None:
        head_size, head_at = newest
        for name in sorted({*backends, *anchored}):
            at = anchored.get(name)
            if at is None:
                # Never anchored: everything since the first checkpoint is waiting; the lag
                # counts from now, so it grows until the first anchor lands.
                seconds = max(0.0, _now() - head_at.timestamp())
                behind.add_metric([name], head_size)
                size.add_metric([name], 0)
            else:
                seconds = max(0.0, (head_at - at[1]).total_seconds())
                behind.add_metric([name], head_size - at[0])
                size.add_metric([name], at[0])
            lag.add_metric([name], seconds)
    return [lag, behind, size]


class _DatabaseCollector(Collector):
    """Yields the figures of the latest :func:`collect` (none before the first)."""

    def __init__(self) -> None:
        self.figures: DatabaseFigures | None = None

    def describe(self) -> list[Metric]:
        # The names, for the registry's duplicate check, without touching the database.
        return _database_families(DatabaseFigures())

    def collect(self) -> Iterator[Metric]:
        if self.figures is not None:
            yield from _database_families(self.figures)


# --------------------------------------------------------------------------------------------
# The per-app state


class MetricsState:
    """What an API app accumulates between scrapes, and its private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.api_latency = Histogram(
            "cityanchor_api_request_duration_seconds",
            "API request handling time by route, HTTP method and response status (this process).",
            ["route", "method", "status"],
            buckets=API_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "cityanchor_api_auth_failures",
            "Operator requests refused by token authentication, by reason (this process).",
            ["reason"],
            registry=self.registry,
        )
        for reason in AUTH_FAILURE_REASONS:
            self.auth_failures.labels(reason)  # every reason shown, 0 until it happens
        self.seal_latency = Histogram(
            "cityanchor_seal_latency_seconds",
            "Per batch: sealed_at minus the earliest received_at of its readings.",
            buckets=SEAL_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.seal_last_batch = 0
        self.lock = asyncio.Lock()
        self.database = _DatabaseCollector()
        self.registry.register(self.database)
        Info("cityanchor_build", "This cityanchor build.", registry=self.registry).info(
            {"version": __version__}
        )
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def observe_request(self, route: str, seconds: float, *, method: str, status: int) -> None:
        """One API request: ``route`` is the canonical route (``/v1/receipts/{device_id}/{seq}``,
        or ``unmatched``), never the raw path, so the series stay few."""
        if method not in HTTP_METHODS:
            method = "other"  # a client's invented method must not create series
        self.api_latency.labels(route, method, str(status)).observe(seconds)

    def auth_failed(self, reason: str) -> None:
        self.auth_failures.labels(reason).inc()


# --------------------------------------------------------------------------------------------
# Scrape


async def collect(
    store: Store, state: MetricsState, *, backends: Sequence[str] = ()
) -> CollectorRegistry:
    """Read the database figures into ``state`` and return its registry, ready to render.

    ``backends`` are the configured anchoring backends, reported even before their first
    anchor. Raises ``StoreError`` when the database cannot be read.
    """
    counts = await store.counts()
    async with state.lock:
        latencies, last, erased = await ops.seal_latencies(store, after_batch=state.seal_last_batch)
        for seconds in latencies:
            state.seal_latency.observe(seconds)
        state.seal_last_batch = last
    newest, anchored = await ops.anchor_positions(store)
    vanished = await store.vanished_anchor_counts()
    witnesses, quorum = await store.witness_figures()
    state.database.figures = DatabaseFigures(
        counts=dict(counts),
        erased=erased,
        newest=newest,
        anchored=dict(anchored),
        vanished=dict(vanished),
        backends=tuple(backends),
        witnesses=tuple(witnesses),
        quorum=quorum,
    )
    return state.registry


def render(registry: CollectorRegistry) -> str:
    """The text exposition (format 0.0.4, :data:`CONTENT_TYPE`) of ``registry``."""
    return generate_latest(registry).decode("utf-8")


def _now() -> float:
    return time.time()
