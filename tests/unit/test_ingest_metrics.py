"""The ingestor's /metrics (anchor.ingest.metrics): its counters as Prometheus families."""

from __future__ import annotations

import sys

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import anchor
from anchor.errors import UsageError
from anchor.ingest.ingestor import SEAL_BUCKETS, IngestStats
from anchor.ingest.metrics import ingest_registry, parse_listen
from anchor.store import SealResult


def _samples(stats: IngestStats, connected: bool) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = generate_latest(ingest_registry(stats, lambda: connected)).decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def _seal(accepted: int, quarantined: dict[str, int], batch_id: int | None) -> SealResult:
    return SealResult(
        batch_id=batch_id,
        log_index=batch_id,
        size=accepted,
        root=None,
        checkpoint=None,
        accepted=accepted,
        duplicates=quarantined.get("replayed_seq", 0),
        quarantined=quarantined,
    )


def test_counters_quarantine_reasons_and_a_cumulative_seal_histogram() -> None:
    stats = IngestStats()
    stats.received = 13
    stats.record_seal(_seal(8, {"bad_signature": 1, "replayed_seq": 1}, 1), 0.3)
    stats.record_seal(_seal(2, {"no such code": 1}, 2), 7.0)
    stats.record_seal(_seal(0, {}, None), 400.0)  # nothing accepted: no batch
    s = _samples(stats, connected=True)
    assert s["cityanchor_ingest_received_total"] == [({}, 13.0)]
    readings = {lab["outcome"]: v for lab, v in s["cityanchor_ingest_readings_total"]}
    assert readings == {"accepted": 10.0, "duplicate": 1.0}
    quarantined = {lab["reason"]: v for lab, v in s["cityanchor_ingest_quarantined_total"]}
    # A string that is no reason code never becomes a label value.
    assert quarantined == {"bad_signature": 1.0, "replayed_seq": 1.0, "error": 1.0}
    assert s["cityanchor_ingest_batches_sealed_total"] == [({}, 2.0)]
    buckets = {lab["le"]: v for lab, v in s["cityanchor_ingest_seal_latency_seconds_bucket"]}
    assert len(buckets) == len(SEAL_BUCKETS) + 1
    assert (buckets["0.25"], buckets["0.5"], buckets["10.0"], buckets["300.0"]) == (0, 1, 2, 2)
    assert buckets["+Inf"] == 3.0
    assert s["cityanchor_ingest_seal_latency_seconds_count"] == [({}, 3.0)]
    assert s["cityanchor_ingest_seal_latency_seconds_sum"] == [({}, 407.3)]
    assert s["cityanchor_ingest_mqtt_connected"] == [({}, 1.0)]
    assert s["cityanchor_build_info"] == [({"version": anchor.__version__}, 1.0)]
    if sys.platform == "linux":
        assert "process_cpu_seconds_total" in s
    assert _samples(stats, connected=False)["cityanchor_ingest_mqtt_connected"] == [({}, 0.0)]


@pytest.mark.parametrize(
    ("text", "offset", "expected"),
    [
        ("127.0.0.1:9464", 0, ("127.0.0.1", 9464)),
        ("0.0.0.0:9464", 2, ("0.0.0.0", 9466)),
        ("[::1]:9464", 0, ("::1", 9464)),
    ],
)
def test_parse_listen(text: str, offset: int, expected: tuple[str, int]) -> None:
    assert parse_listen(text, offset=offset) == expected


@pytest.mark.parametrize("text", ["9464", ":9464", "host:", "host:http", "host:70000", "h:0"])
def test_parse_listen_refuses(text: str) -> None:
    with pytest.raises(UsageError, match="--metrics-listen"):
        parse_listen(text)


def test_every_worker_port_is_checked_before_anything_starts() -> None:
    from anchor.host.config import Settings
    from anchor.ingest.main import run_ingest

    with pytest.raises(UsageError, match="65536"):
        run_ingest(Settings(), workers=2, metrics_listen="127.0.0.1:65535")
