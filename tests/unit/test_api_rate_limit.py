"""The API's per-client token bucket: bursts pass, a flood gets 429 problems with Retry-After."""

from __future__ import annotations

from typing import Any

from anchor.api.app import ApiContext, _take_token


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


def test_the_middleware_answers_429_problems_with_retry_after() -> None:
    import asyncio

    from aiohttp.test_utils import TestClient, TestServer

    from anchor.api.app import create_app
    from anchor.host.config import Settings

    async def body() -> None:
        ctx = ApiContext(store=None, settings=Settings(), rate_per_s=2)  # type: ignore[arg-type]
        async with TestClient(TestServer(create_app(ctx))) as client:
            statuses = [(await client.get("/v1/no-such-route")).status for _ in range(4)]
            assert statuses == [404, 404, 404, 404]  # a burst of twice the rate passes
            limited = await client.get("/v1/no-such-route")
            assert limited.status == 429
            assert limited.headers["Retry-After"] == "1"
            problem = await limited.json(content_type="application/problem+json")
            assert problem["reason"] == "rate_limited" and problem["status"] == 429
            assert (await client.get("/healthz")).status == 200  # never limited

    asyncio.run(body())
