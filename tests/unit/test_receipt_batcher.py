"""anchor.store.receipt_batcher: concurrent lookups share statements; answers and failures reach
the right callers."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from anchor.store.receipt_batcher import LookupBatcher


class Db:
    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[list[tuple[str, int]]] = []
        self.fail_on = fail_on
        self.gate = asyncio.Event()

    async def run(self, keys: Sequence[tuple[str, int]]) -> list[Any]:
        self.calls.append(list(keys))
        await self.gate.wait()
        if self.fail_on and any(k[0] == self.fail_on for k in keys):
            raise RuntimeError("statement failed")
        return [None if seq == 0 else f"{dev}/{seq}" for dev, seq in keys]


def test_lookups_asked_while_one_is_in_flight_share_the_next_statement() -> None:
    async def main() -> None:
        db = Db()
        batcher = LookupBatcher(db.run, max_flushers=1)
        first = asyncio.ensure_future(batcher.lookup(("a", 1)))
        await asyncio.sleep(0)
        rest = [asyncio.ensure_future(batcher.lookup(("b", n))) for n in (2, 0, 2)]
        await asyncio.sleep(0)
        db.gate.set()
        assert await first == "a/1"
        assert await asyncio.gather(*rest) == ["b/2", None, "b/2"]
        assert db.calls == [[("a", 1)], [("b", 2), ("b", 0), ("b", 2)]]
        assert (batcher.statements, batcher.lookups) == (2, 4)

    asyncio.run(main())


def test_a_failed_statement_fails_its_lookups_only_and_the_batcher_goes_on() -> None:
    async def main() -> None:
        db = Db(fail_on="bad")
        batcher = LookupBatcher(db.run, max_flushers=1, max_batch=2)
        calls = [asyncio.ensure_future(batcher.lookup(k)) for k in (("x", 1), ("bad", 1))]
        later = asyncio.ensure_future(batcher.lookup(("y", 3)))
        await asyncio.sleep(0)
        db.gate.set()
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results)
        assert await later == "y/3"
        assert await batcher.lookup(("z", 4)) == "z/4"

    asyncio.run(main())


def test_a_cancelled_caller_is_skipped() -> None:
    async def main() -> None:
        db = Db()
        batcher = LookupBatcher(db.run, max_flushers=1)
        first = asyncio.ensure_future(batcher.lookup(("a", 1)))
        await asyncio.sleep(0)
        gone = asyncio.ensure_future(batcher.lookup(("gone", 1)))
        kept = asyncio.ensure_future(batcher.lookup(("kept", 1)))
        await asyncio.sleep(0)
        gone.cancel()
        db.gate.set()
        assert await first == "a/1" and await kept == "kept/1"
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert db.calls == [[("a", 1)], [("kept", 1)]]

    asyncio.run(main())
