"""Prometheus metrics of the API process, in the text exposition format 0.0.4.

Written by hand (no client library): a few counters, gauges and histograms, with ``# HELP`` and
``# TYPE`` lines, label values escaped (backslash, double quote, line feed) and histogram
buckets cumulative with a final ``le="+Inf"``.

Two kinds of figures:

* **From the database** (the same in every API replica; aggregate them with ``max``, not
  ``sum``): readings stored, quarantined messages by reason, batches, log size, erasures, the
  seal latency histogram (per batch: ``sealed_at`` minus its earliest ``received_at``), and
  per anchoring backend the anchor lag and the anchors that vanished from the chain after they
  were recorded (``cityanchor_anchors_vanished_total``, reason ``anchor_vanished``).
* **Of this process** (sum them across replicas): API request latency per route and token
  authentication failures by reason.

The seal histogram is kept cumulative in memory and extended with the batches sealed since the
previous scrape (batch ids are allocated under the seal lock, so a batch below the newest one
seen never appears later). API latency is observed by this module's own middleware rather than
read from ``ApiContext.latency``, which is a bounded sliding window: a histogram built from it
would go down when old samples are dropped, and Prometheus counters must never decrease.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from anchor import operator_store as ops
from anchor.errors import Reason
from anchor.store import Store

__all__ = [
    "API_LATENCY_BUCKETS",
    "CONTENT_TYPE",
    "SEAL_LATENCY_BUCKETS",
    "Histogram",
    "MetricsState",
    "collect",
    "escape_label_value",
    "render",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SEAL_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
API_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
AUTH_FAILURE_REASONS = ("missing", "invalid", "revoked", "forbidden")

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


# --------------------------------------------------------------------------------------------
# Values


@dataclass(slots=True)
class Histogram:
    """A cumulative histogram: per-bucket counts (non-cumulative inside), sum and count."""

    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    sum: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if list(self.buckets) != sorted(set(self.buckets)) or not self.buckets:
            raise ValueError("histogram buckets must be increasing and distinct")
        if not self.counts:
            self.counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf

    def observe(self, value: float) -> None:
        # le is "less than or equal": a value equal to a bound falls in that bucket.
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, cumulative count)`` pairs, ending with ``+Inf`` (equal to :attr:`count`)."""
        out = []
        running = 0
        for bound, n in zip((*self.buckets, math.inf), self.counts, strict=True):
            running += n
            out.append((_format_value(bound), running))
        return out


@dataclass(slots=True)
class MetricsState:
    """What an API process accumulates between scrapes."""

    api_latency: dict[str, Histogram] = field(default_factory=dict)
    auth_failures: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(AUTH_FAILURE_REASONS, 0)
    )
    seal_latency: Histogram = field(default_factory=lambda: Histogram(SEAL_LATENCY_BUCKETS))
    seal_last_batch: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def observe_request(self, route: str, seconds: float) -> None:
        hist = self.api_latency.get(route)
        if hist is None:
            hist = self.api_latency[route] = Histogram(API_LATENCY_BUCKETS)
        hist.observe(seconds)

    def auth_failed(self, reason: str) -> None:
        self.auth_failures[reason] = self.auth_failures.get(reason, 0) + 1


# --------------------------------------------------------------------------------------------
# Text format


def escape_label_value(value: str) -> str:
    """Escape a label value for the text format: ``\\`` ``"`` and line feed."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1 << 53:
        return str(int(value))
    return repr(float(value))


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    for name in labels:
        if _LABEL_NAME.fullmatch(name) is None or name.startswith("__"):
            raise ValueError(f"bad label name {name!r}")
    inner = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels.items())
    return "{" + inner + "}"


Sample = tuple[str, Mapping[str, str], float]
"""(name suffix, labels, value): a suffix such as ``_bucket``, or ``""``."""


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    type: str  # counter, gauge, histogram
    help: str
    samples: Sequence[Sample]


def histogram_samples(hist: Histogram, labels: Mapping[str, str] | None = None) -> list[Sample]:
    base = dict(labels or {})
    out: list[Sample] = [("_bucket", {**base, "le": le}, n) for le, n in hist.cumulative()]
    out.append(("_sum", base, hist.sum))
    out.append(("_count", base, hist.count))
    return out


def render(families: Iterable[Family]) -> str:
    """The text exposition (format 0.0.4) of these metric families, ending with a newline."""
    lines: list[str] = []
    seen: set[str] = set()
    for f in families:
        if _METRIC_NAME.fullmatch(f.name) is None or f.name in seen:
            raise ValueError(f"bad or repeated metric name {f.name!r}")
        seen.add(f.name)
        lines.append(f"# HELP {f.name} {_escape_help(f.help)}")
        lines.append(f"# TYPE {f.name} {f.type}")
        for suffix, labels, value in f.samples:
            lines.append(f"{f.name}{suffix}{_labels(labels)} {_format_value(value)}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Collection


async def collect(
    store: Store, state: MetricsState, *, backends: Sequence[str] = ()
) -> list[Family]:
    """Every metric family, reading the database for the ingest and anchoring figures.

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

    # The reason label takes table codes only (anchor.errors.Reason); see Reason.label.
    by_reason: dict[Reason, int] = {}
    for k, v in counts.items():
        if k.startswith("quarantine."):
            reason = Reason.label(k.removeprefix("quarantine."))
            by_reason[reason] = by_reason.get(reason, 0) + v
    quarantined = sorted(by_reason.items())
    families = [
        Family(
            "cityanchor_readings_stored_total",
            "counter",
            "Readings accepted and sealed into a batch (from the database).",
            [("", {}, counts.get("readings", 0))],
        ),
        Family(
            "cityanchor_readings_quarantined_total",
            "counter",
            "Messages refused by the ingestors, by reason code (from the database).",
            [("", {"reason": r}, n) for r, n in quarantined],
        ),
        Family(
            "cityanchor_readings_erased_total",
            "counter",
            "Readings whose envelope was erased by an operator (tombstones).",
            [("", {}, erased)],
        ),
        Family(
            "cityanchor_batches_sealed_total",
            "counter",
            "Batches sealed into the batch log.",
            [("", {}, counts.get("batches", 0))],
        ),
        Family(
            "cityanchor_log_size",
            "gauge",
            "Size of the batch log at its newest checkpoint.",
            [("", {}, counts.get("log_size", 0))],
        ),
        Family(
            "cityanchor_devices_registered",
            "gauge",
            "Devices in the registry, revoked ones included.",
            [("", {}, counts.get("devices", 0))],
        ),
        Family(
            "cityanchor_seal_latency_seconds",
            "histogram",
            "Per batch: sealed_at minus the earliest received_at of its readings.",
            histogram_samples(state.seal_latency),
        ),
        *_anchor_families(newest, anchored, backends),
        Family(
            "cityanchor_anchors_vanished_total",
            "counter",
            "Anchors recorded as confirmed and later not found on their chain as recorded (a "
            "reorg, a chain node restored from an older state), by backend and reason code; "
            "each is anchored again.",
            [
                ("", {"backend": name, "reason": reason}, n)
                for name in sorted({*backends, *(b for b, _ in vanished)})
                for reason, n in _vanished_by_reason(vanished, name)
            ],
        ),
        Family(
            "cityanchor_api_request_duration_seconds",
            "histogram",
            "API request handling time by route (this process).",
            [
                sample
                for route in sorted(state.api_latency)
                for sample in histogram_samples(state.api_latency[route], {"route": route})
            ],
        ),
        Family(
            "cityanchor_api_auth_failures_total",
            "counter",
            "Operator requests refused by token authentication, by reason (this process).",
            [("", {"reason": r}, n) for r, n in sorted(state.auth_failures.items())],
        ),
    ]
    return families


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


def _anchor_families(
    newest: tuple[int, datetime] | None,
    anchored: Mapping[str, tuple[int, datetime]],
    backends: Sequence[str],
) -> list[Family]:
    names = sorted({*backends, *anchored})
    lag: list[Sample] = []
    behind: list[Sample] = []
    size: list[Sample] = []
    if newest is not None:
        head_size, head_at = newest
        for name in names:
            at = anchored.get(name)
            if at is None:
                # Never anchored: everything since the first checkpoint is waiting; the lag
                # counts from now, so it grows until the first anchor lands.
                seconds = max(0.0, _now() - head_at.timestamp())
                behind.append(("", {"backend": name}, head_size))
                size.append(("", {"backend": name}, 0))
            else:
                seconds = max(0.0, (head_at - at[1]).total_seconds())
                behind.append(("", {"backend": name}, head_size - at[0]))
                size.append(("", {"backend": name}, at[0]))
            lag.append(("", {"backend": name}, seconds))
    return [
        Family(
            "cityanchor_anchor_lag_seconds",
            "gauge",
            "Newest checkpoint's time minus the time of the newest checkpoint anchored on the "
            "backend (0: up to date; never anchored: seconds since the newest checkpoint).",
            lag,
        ),
        Family(
            "cityanchor_anchor_unanchored_batches",
            "gauge",
            "Batches in the log beyond the backend's newest anchored checkpoint.",
            behind,
        ),
        Family(
            "cityanchor_anchored_log_size",
            "gauge",
            "Log size of the backend's newest anchored checkpoint.",
            size,
        ),
    ]


def _now() -> float:
    return time.time()
