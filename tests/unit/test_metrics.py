"""Prometheus text format 0.0.4 of anchor.api.metrics (prometheus_client)."""

from __future__ import annotations

import itertools
import math
import re
import sys
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

import anchor
from anchor.api.metrics import CONTENT_TYPE, DatabaseFigures, MetricsState, render
from anchor.cosignature import generate_cosigner_key
from anchor.store import WitnessFigures

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\\\|\\"|\\n)*"'
_VALUE = r"(?:[+-]?(?:[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+)|[+-]Inf|NaN)"
_SAMPLE = re.compile(rf"({_NAME})(?:\{{((?:{_LABEL})(?:,{_LABEL})*)?\}})? ({_VALUE})")
_HELP = re.compile(rf"# HELP ({_NAME}) ((?:[^\\\n]|\\\\|\\n)*)")
_TYPE = re.compile(rf"# TYPE ({_NAME}) (counter|gauge|histogram|summary|untyped)")
_LABEL_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\\\|\\"|\\n)*)"')

Parsed = dict[str, tuple[str, list[tuple[str, dict[str, str], float]]]]


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), value)


def parse_exposition(text: str) -> Parsed:
    """A strict reader of the text format: HELP then TYPE then the family's samples, every
    sample of a declared family, histogram buckets cumulative and ending at +Inf."""
    assert text.endswith("\n") and "\r" not in text
    families: Parsed = {}
    current: str | None = None
    lines = text[:-1].split("\n")
    i = 0
    while i < len(lines):
        help_m = _HELP.fullmatch(lines[i])
        assert help_m, f"line {i + 1}: expected # HELP, got {lines[i]!r}"
        type_m = _TYPE.fullmatch(lines[i + 1])
        assert type_m and type_m.group(1) == help_m.group(1), f"line {i + 2}: {lines[i + 1]!r}"
        current = help_m.group(1)
        assert current not in families, f"{current} declared twice"
        kind = type_m.group(2)
        samples: list[tuple[str, dict[str, str], float]] = []
        families[current] = (kind, samples)
        i += 2
        while i < len(lines) and not lines[i].startswith("#"):
            m = _SAMPLE.fullmatch(lines[i])
            assert m, f"line {i + 1}: not a sample: {lines[i]!r}"
            name, labels_text, value = m.groups()
            allowed = (
                {current + s for s in ("_bucket", "_sum", "_count")}
                if kind == "histogram"
                else {current}
            )
            assert name in allowed, f"line {i + 1}: {name} outside family {current}"
            labels = {k: _unescape(v) for k, v in _LABEL_PAIR.findall(labels_text or "")}
            samples.append((name, labels, float(value)))
            i += 1
        if kind == "histogram":
            _check_histogram(current, samples)
        if kind == "counter":
            assert current.endswith("_total")
            assert all(v >= 0 for _, _, v in samples)
    return families


def _check_histogram(name: str, samples: list[tuple[str, dict[str, str], float]]) -> None:
    series: dict[tuple[tuple[str, str], ...], list[tuple[str, dict[str, str], float]]] = {}
    for s in samples:
        key = tuple(sorted((k, v) for k, v in s[1].items() if k != "le"))
        series.setdefault(key, []).append(s)
    for group in series.values():
        buckets = [(float(lab["le"]), v) for n, lab, v in group if n.endswith("_bucket")]
        assert buckets and math.isinf(buckets[-1][0]), f"{name}: no +Inf bucket"
        assert [b for b, _ in buckets] == sorted(b for b, _ in buckets)
        assert all(a[1] <= b[1] for a, b in itertools.pairwise(buckets))
        count = [v for n, _, v in group if n.endswith("_count")]
        assert count == [buckets[-1][1]], f"{name}: _count differs from the +Inf bucket"
        assert len([n for n, _, _ in group if n.endswith("_sum")]) == 1


# ---------------------------------------------------------------------------------------------


def _bucket_counts(parsed: Parsed, family: str, **labels: str) -> list[tuple[float, float]]:
    return [
        (float(lab["le"]), v)
        for n, lab, v in parsed[family][1]
        if n == family + "_bucket" and {k: x for k, x in lab.items() if k != "le"} == labels
    ]


def test_histogram_buckets_are_cumulative_and_le_inclusive() -> None:
    state = MetricsState()
    for v in (0.05, 0.1, 0.5, 1.0, 7.0):
        state.seal_latency.observe(v)
    parsed = parse_exposition(render(state.registry))
    buckets = dict(_bucket_counts(parsed, "cityanchor_seal_latency_seconds"))
    # le is "less than or equal": a value equal to a bound falls in that bucket.
    assert (buckets[0.05], buckets[0.1], buckets[1.0], buckets[math.inf]) == (1, 2, 4, 5)
    samples = {n: v for n, _, v in parsed["cityanchor_seal_latency_seconds"][1]}
    assert samples["cityanchor_seal_latency_seconds_count"] == 5
    assert samples["cityanchor_seal_latency_seconds_sum"] == pytest.approx(8.65)


class _Weird(Collector):
    def collect(self) -> list[Metric]:
        family = CounterMetricFamily("x", "help with \\ and\nnewline", labels=["reason"])
        family.add_metric(['we"ird\\re\nason'], 3)
        return [family]


def test_label_values_and_help_are_escaped() -> None:
    state = MetricsState()
    state.auth_failed('we"ird\\re\nason')
    parsed = parse_exposition(render(state.registry))
    failures = {lab["reason"]: v for _, lab, v in parsed["cityanchor_api_auth_failures_total"][1]}
    assert failures['we"ird\\re\nason'] == 1
    registry = CollectorRegistry()
    registry.register(_Weird())
    text = render(registry)
    assert parse_exposition(text)["x_total"][1] == [
        ("x_total", {"reason": 'we"ird\\re\nason'}, 3.0)
    ]
    assert "# HELP x_total help with \\\\ and\\nnewline\n" in text


def test_rendered_state_parses() -> None:
    state = MetricsState()
    state.observe_request("/v1/devices", 0.003, method="POST", status=201)
    state.observe_request("/v1/devices", 0.2, method="POST", status=201)
    state.observe_request("/v1/receipts/{device_id}/{seq}", 0.0004, method="GET", status=404)
    state.auth_failed("forbidden")
    for v in (0.2, 0.7, 3.0):
        state.seal_latency.observe(v)
    now = datetime.now(UTC)
    state.database.figures = DatabaseFigures(
        counts={"readings": 5, "batches": 2, "quarantine.bad_signature": 1},
        newest=(12, now),
        anchored={"local": (10, now - timedelta(seconds=30))},
        backends=["local", "second"],
    )
    parsed = parse_exposition(render(state.registry))
    assert parsed["cityanchor_seal_latency_seconds"][0] == "histogram"
    api = parsed["cityanchor_api_request_duration_seconds"][1]
    routes = {(lab["route"], lab["method"], lab["status"]) for _, lab, _ in api}
    assert routes == {
        ("/v1/devices", "POST", "201"),
        ("/v1/receipts/{device_id}/{seq}", "GET", "404"),
    }
    counts = {
        lab["route"]: v for n, lab, v in api if n == "cityanchor_api_request_duration_seconds_count"
    }
    assert counts == {"/v1/devices": 2, "/v1/receipts/{device_id}/{seq}": 1}
    failures = {lab["reason"]: v for _, lab, v in parsed["cityanchor_api_auth_failures_total"][1]}
    assert failures == {"missing": 0, "invalid": 0, "revoked": 0, "forbidden": 1}
    lag = {lab["backend"]: v for _, lab, v in parsed["cityanchor_anchor_lag_seconds"][1]}
    assert lag["local"] == 30.0 and lag["second"] >= 0
    behind = {lab["backend"]: v for _, lab, v in parsed["cityanchor_anchor_unanchored_batches"][1]}
    assert behind == {"local": 2, "second": 12}
    assert parsed["cityanchor_readings_stored_total"] == (
        "counter",
        [("cityanchor_readings_stored_total", {}, 5.0)],
    )
    quarantined = parsed["cityanchor_readings_quarantined_total"][1]
    assert quarantined == [
        ("cityanchor_readings_quarantined_total", {"reason": "bad_signature"}, 1)
    ]
    vanished = parsed["cityanchor_anchors_vanished_total"][1]
    assert {(lab["backend"], lab["reason"], v) for _, lab, v in vanished} == {
        ("local", "anchor_vanished", 0),
        ("second", "anchor_vanished", 0),
    }


def test_build_info_and_process_metrics_come_with_the_library() -> None:
    parsed = parse_exposition(render(MetricsState().registry))
    (info,) = parsed["cityanchor_build_info"][1]
    assert info[1] == {"version": anchor.__version__} and info[2] == 1
    assert "python_info" in parsed
    if sys.platform == "linux":  # the library reads /proc
        assert parsed["process_cpu_seconds_total"][0] == "counter"
        assert "process_resident_memory_bytes" in parsed
    # No ``_created`` families: they would add a series per counter that nothing reads.
    assert not [name for name in parsed if name.endswith("_created")]
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def test_each_state_has_its_own_registry() -> None:
    a, b = MetricsState(), MetricsState()
    a.auth_failed("missing")
    failures = parse_exposition(render(b.registry))["cityanchor_api_auth_failures_total"][1]
    assert {lab["reason"]: v for _, lab, v in failures}["missing"] == 0


def test_database_families_only_after_a_collect() -> None:
    parsed = parse_exposition(render(MetricsState().registry))
    assert "cityanchor_readings_stored_total" not in parsed


def test_witness_families_take_known_outcomes_only() -> None:
    w = generate_cosigner_key("w1.witness.example").verifier
    state = MetricsState()
    state.database.figures = DatabaseFigures(
        witnesses=[
            WitnessFigures(w.vkey(), "http://w1", 7, {"cosigned": 3, "unavailable": 2, "odd": 9}),
            WitnessFigures("not a key", "http://w2", 0, {}),
        ],
        quorum=(True, 4),
    )
    parsed = parse_exposition(render(state.registry))
    requests = {
        (lab["witness"], lab["outcome"]): v
        for _, lab, v in parsed["cityanchor_witness_requests_total"][1]
    }
    assert requests[(w.key_label, "cosigned")] == 3 and requests[(w.key_label, "unavailable")] == 2
    assert requests[(w.key_label, "inconsistent")] == 0  # every outcome present, from zero
    assert not [o for _, o in requests if o == "odd"]
    assert ("invalid", "cosigned") in requests  # a stored key that does not parse
    sizes = {lab["witness"]: v for _, lab, v in parsed["cityanchor_witness_cosigned_log_size"][1]}
    assert sizes[w.key_label] == 7
    assert parsed["cityanchor_witness_quorum_waiting"][1][0][2] == 1
    assert parsed["cityanchor_witness_quorum_not_met_total"][1][0][2] == 4


def test_request_histogram_labels_method_and_status_and_bounds_the_methods() -> None:
    # Issue 14 item 21: route (as before), method and status; an invented method is "other",
    # so a client cannot create series at will.
    state = MetricsState()
    state.observe_request("/v1/verify", 0.01, method="POST", status=200)
    state.observe_request("/v1/verify", 0.01, method="POST", status=422)
    state.observe_request("unmatched", 0.001, method="BREW", status=405)
    api = parse_exposition(render(state.registry))["cityanchor_api_request_duration_seconds"][1]
    series = {
        (lab["route"], lab["method"], lab["status"])
        for n, lab, _ in api
        if n == "cityanchor_api_request_duration_seconds_count"
    }
    assert series == {
        ("/v1/verify", "POST", "200"),
        ("/v1/verify", "POST", "422"),
        ("unmatched", "other", "405"),
    }
