"""The pure helpers of bench/scale.py and bench/_fill.py: how a fill is laid out over months,
which readings remain once a month is archived, and the disk check of ``--huge``."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from _fill import FillPlan, month_start, months_between, spread_over_months
from scale import (
    EST_FIXED,
    HUGE_READINGS,
    archive_flags,
    disk_needed,
    disk_refusal,
    plan_for,
    quantile,
)

NOW = datetime(2026, 12, 3, 18, 0, tzinfo=UTC)


def test_month_start_moves_across_years() -> None:
    assert month_start(NOW) == datetime(2026, 12, 1, tzinfo=UTC)
    assert month_start(NOW, 1) == datetime(2027, 1, 1, tzinfo=UTC)
    assert month_start(NOW, -12) == datetime(2025, 12, 1, tzinfo=UTC)
    assert month_start(datetime(2026, 1, 31, 23, 59, tzinfo=UTC), -1) == datetime(
        2025, 12, 1, tzinfo=UTC
    )


def test_spread_covers_thirteen_months_ending_now() -> None:
    lo, hi = spread_over_months(13, NOW)
    assert lo == datetime(2025, 12, 1, tzinfo=UTC)
    assert hi < NOW
    months = months_between(lo, hi)
    assert months[0] == "2025-12" and months[-1] == "2026-12" and len(months) == 13


def test_plan_sizes_round_to_whole_batches() -> None:
    for readings, devices in ((200_000, 100), (1_000_000, 100), (10_000_000, 1000)):
        plan = plan_for(readings, now=NOW)
        assert plan.devices == devices
        assert plan.readings == readings
        assert plan.units * plan.batch == plan.readings
    odd = plan_for(123_456, now=NOW)
    assert odd.readings <= 123_456 and odd.readings % odd.batch == 0


def test_received_at_runs_forward_and_fills_every_month() -> None:
    plan = plan_for(200_000, now=NOW)
    times = [plan.received_at(*plan.unit(u)) for u in range(plan.units)]
    assert all(t is not None for t in times)
    stamps = [t for t in times if t is not None]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert plan.span is not None and stamps[-1] == plan.span[1]
    per_month: dict[str, int] = {}
    for t in stamps:
        per_month[f"{t.year:04d}-{t.month:02d}"] = (
            per_month.get(f"{t.year:04d}-{t.month:02d}", 0) + 1
        )
    assert sorted(per_month) == months_between(*plan.span)
    # Roughly even: no month holds twice another full month's batches (the last is partial).
    full = [per_month[m] for m in sorted(per_month)[:-1]]
    assert max(full) <= 2 * min(full)


def test_device_timestamps_increase_and_precede_receipt() -> None:
    plan = plan_for(200_000, now=NOW)
    for g in (0, plan.groups - 1):
        previous = -1
        for slot in range(plan.slots):
            ts = plan.ts_ms(slot, g)
            at = plan.received_at(slot, g)
            assert at is not None and len(ts) == plan.per_unit
            assert ts == sorted(ts) and ts[0] > previous
            assert ts[-1] < at.timestamp() * 1000
            previous = ts[-1]


def test_without_span_the_timestamps_are_the_api_bench_ones() -> None:
    plan = FillPlan(20, 200)
    assert plan.received_at(0, 0) is None
    assert plan.ts_ms(1, 0)[:2] == [1_760_000_000_000 + 1000 * 101, 1_760_000_000_000 + 1000 * 102]


def test_first_seq_from_matches_the_received_at_of_each_unit() -> None:
    plan = plan_for(200_000, now=NOW)
    cut = datetime(2026, 1, 1, tzinfo=UTC)
    firsts = plan.first_seq_from(cut)
    assert len(firsts) == plan.groups
    for g, first in enumerate(firsts):
        slot = (first - 1) // plan.per_unit
        at = plan.received_at(slot, g)
        assert at is not None and at >= cut
        if slot:
            before = plan.received_at(slot - 1, g)
            assert before is not None and before < cut
    assert plan.first_seq_from(datetime(2020, 1, 1, tzinfo=UTC)) == [1] * plan.groups
    assert (
        plan.first_seq_from(datetime(2030, 1, 1, tzinfo=UTC)) == [plan.per_device + 1] * plan.groups
    )


def test_plan_refuses_partial_units() -> None:
    with pytest.raises(ValueError, match="multiple"):
        FillPlan(15, 100)
    with pytest.raises(ValueError, match="multiple"):
        FillPlan(10, 150)


def test_disk_refusal_names_need_and_free_space() -> None:
    need = disk_needed(HUGE_READINGS)
    assert need > HUGE_READINGS * 1000 + EST_FIXED
    assert disk_refusal(need, HUGE_READINGS) is None
    message = disk_refusal(80 * 2**30, HUGE_READINGS)
    assert message is not None and "100,000,000 readings" in message and "80 GiB" in message
    assert disk_refusal(80 * 2**30, 10_000_000) is None


def test_archive_flags_follow_the_command_help() -> None:
    out = Path("/tmp/a")
    assert archive_flags("  --before YYYY-MM\n  --out DIR  where files go", out) == [
        "--out",
        "/tmp/a",
    ]
    assert archive_flags("  --before YYYY-MM\n  --directory D", out) == ["--directory", "/tmp/a"]
    assert archive_flags("  --before YYYY-MM\n  --output-format json", out) == []


def test_quantile_is_nearest_rank() -> None:
    values = [float(i) for i in range(1, 101)]
    assert quantile(values, 0.5) == 50.0
    assert quantile(values, 0.99) == 99.0
    assert quantile([], 0.5) != quantile([], 0.5)  # nan
