"""The API's per-client token bucket: bursts pass, a flood gets 429 problems with Retry-After."""

from __future__ import annotations

from typing import Any

from anchor.api import ApiContext, _take_token


def _ctx(rate: float) -> ApiContext:
    ctx: Any = ApiContext.__new__(ApiContext)
    ctx.rate_per_s = rate
    ctx.buckets = {}
    return ctx  # type: ignore[no-any-return]


def test_burst_of_twice_the_rate_then_limited_then_refilled() -> None:
    ctx = _ctx(10)
    now = 100.0
    assert all(_take_token(ctx, "a", now) == 0.0 for _ in range(20))
    wait = _take_token(ctx, "a", now)
    assert 0 < wait <= 0.1
    assert _take_token(ctx, "b", now) == 0.0  # other clients are not affected
    assert _take_token(ctx, "a", now + 0.11) == 0.0  # a token back after 1/rate seconds
    assert _take_token(ctx, "a", now + 0.11) > 0
