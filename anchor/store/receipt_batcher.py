"""Coalescing of concurrent receipt lookups into one statement (issue 15, "Receipts").

An API process serves many receipts at once; each needs one indexed lookup. While a lookup
statement is in flight, the lookups asked meanwhile wait in a queue, and the next statement takes
all of them (up to ``max_batch``) at once: one round trip and one statement for several receipts,
no added wait when the process is idle (a lone lookup is sent at once). At most ``max_flushers``
statements are in flight per process. Each lookup's answer is its own row (or None), exactly what
the single lookup would have returned; a failed statement fails every lookup it carried.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

__all__ = ["LookupBatcher"]

Key = tuple[str, int]
Run = Callable[[Sequence[Key]], Awaitable[Sequence[Any]]]


class LookupBatcher:
    """Runs ``run(keys) -> rows`` (one row or None per key, in order) for queued lookups."""

    def __init__(self, run: Run, *, max_batch: int = 64, max_flushers: int = 2) -> None:
        self._run = run
        self.max_batch = max_batch
        self.max_flushers = max_flushers
        self._queue: list[tuple[Key, asyncio.Future[Any]]] = []
        self._flushers = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.statements = 0
        self.lookups = 0

    async def lookup(self, key: Key) -> Any:
        """The row of ``key`` (None when there is none); raises what the statement raised."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((key, future))
        if self._flushers < self.max_flushers:
            self._flushers += 1
            task = asyncio.get_running_loop().create_task(self._flush())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
                batch = [(k, f) for k, f in batch if not f.done()]  # cancelled callers
                if not batch:
                    continue
                self.statements += 1
                self.lookups += len(batch)
                try:
                    rows = await self._run([k for k, _ in batch])
                except asyncio.CancelledError:
                    for _, f in batch:
                        f.cancel()
                    for _, f in self._queue:
                        f.cancel()
                    self._queue.clear()
                    raise
                except Exception as exc:  # every waiter gets the failure, then it goes on
                    for _, f in batch:
                        if not f.done():
                            f.set_exception(exc)
                    continue
                for (_, f), row in zip(batch, rows, strict=True):
                    if not f.done():
                        f.set_result(row)
        finally:
            self._flushers -= 1
