"""Prometheus text format 0.0.4 of anchor.metrics, checked by a strict parser."""

from __future__ import annotations

import itertools
import math
import re
from datetime import UTC, datetime, timedelta

import pytest

from anchor.metrics import (
    Family,
    Histogram,
    MetricsState,
    _anchor_families,
    escape_label_value,
    histogram_samples,
    render,
)

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


def test_histogram_buckets_are_cumulative_and_le_inclusive() -> None:
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 1.0, 7.0):
        h.observe(v)
    assert h.cumulative() == [("0.1", 2), ("1", 4), ("+Inf", 5)]
    assert h.count == 5 and h.sum == pytest.approx(8.65)
    with pytest.raises(ValueError):
        Histogram((1.0, 0.5))


def test_label_values_are_escaped() -> None:
    assert escape_label_value('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    text = render(
        [
            Family(
                "x_total",
                "counter",
                "help with \\ and\nnewline",
                [("", {"reason": 'we"ird\\re\nason'}, 3)],
            )
        ]
    )
    parsed = parse_exposition(text)
    assert parsed["x_total"][1] == [("x_total", {"reason": 'we"ird\\re\nason'}, 3.0)]
    assert "# HELP x_total help with \\\\ and\\nnewline\n" in text


def test_rendered_state_parses() -> None:
    state = MetricsState()
    state.observe_request("/v1/devices", 0.003)
    state.observe_request("/v1/devices", 0.2)
    state.observe_request("/v1/receipts/{device_id}/{seq}", 0.0004)
    state.auth_failed("forbidden")
    for v in (0.2, 0.7, 3.0):
        state.seal_latency.observe(v)
    now = datetime.now(UTC)
    families = [
        Family(
            "cityanchor_seal_latency_seconds",
            "histogram",
            "seal",
            histogram_samples(state.seal_latency),
        ),
        Family(
            "cityanchor_api_request_duration_seconds",
            "histogram",
            "api",
            [
                s
                for route, h in sorted(state.api_latency.items())
                for s in histogram_samples(h, {"route": route})
            ],
        ),
        Family(
            "cityanchor_api_auth_failures_total",
            "counter",
            "auth",
            [("", {"reason": r}, n) for r, n in sorted(state.auth_failures.items())],
        ),
        *_anchor_families(
            (12, now), {"local": (10, now - timedelta(seconds=30))}, ["local", "second"]
        ),
    ]
    parsed = parse_exposition(render(families))
    assert parsed["cityanchor_seal_latency_seconds"][0] == "histogram"
    routes = {lab["route"] for _, lab, _ in parsed["cityanchor_api_request_duration_seconds"][1]}
    assert routes == {"/v1/devices", "/v1/receipts/{device_id}/{seq}"}
    failures = {lab["reason"]: v for _, lab, v in parsed["cityanchor_api_auth_failures_total"][1]}
    assert failures == {"missing": 0, "invalid": 0, "revoked": 0, "forbidden": 1}
    lag = {lab["backend"]: v for _, lab, v in parsed["cityanchor_anchor_lag_seconds"][1]}
    assert lag["local"] == 30.0 and lag["second"] >= 0
    behind = {lab["backend"]: v for _, lab, v in parsed["cityanchor_anchor_unanchored_batches"][1]}
    assert behind == {"local": 2, "second": 12}


def test_render_refuses_bad_names() -> None:
    with pytest.raises(ValueError):
        render([Family("bad name", "gauge", "h", [])])
    with pytest.raises(ValueError):
        render([Family("ok", "gauge", "h", [("", {"bad-label": "x"}, 1)])])
