"""The connection pool every store query runs on, and the constants the queries share.

:class:`StoreBase` owns the asyncpg pool; each concern of :class:`anchor.store.Store` is a
mixin over it (see :mod:`anchor.store` for why). Its :meth:`StoreBase._connection` is the one
place where a query gets a connection, and so the one place where asyncpg and socket failures
become :class:`~anchor.store.errors.StoreError` (:func:`~anchor.store.errors.translate`).
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import asyncpg

from anchor.errors import AnchorError
from anchor.store.errors import translate

if TYPE_CHECKING:
    from anchor.store.archive_file import ArchiveReader

__all__ = [
    "ADVISORY_LOCKS",
    "ANCHOR_LOCK",
    "ARCHIVE_LOCK",
    "MIGRATE_LOCK",
    "MIGRATION_REFUSED_STATE",
    "SEAL_LOCK",
    "StoreBase",
    "clean_text",
]

# Advisory lock keys (pg_advisory_lock's bigint space is shared by everything in the database:
# other components must pick other numbers). "CA" + a small number.
SEAL_LOCK = 0x4341_0001
MIGRATE_LOCK = 0x4341_0002
MIGRATION_REFUSED_STATE = "CA001"
"""SQLSTATE a migration raises to refuse a database (reported as ``migration_refused``)."""
ANCHOR_LOCK = 0x4341_0003
ARCHIVE_LOCK = 0x4341_0004
"""Held (session) by whoever changes an archived month or its file: archiving, restoring, and
erasing a reading of an archived month (anchor.store.archives)."""
ADVISORY_LOCKS: Mapping[str, int] = {
    "seal": SEAL_LOCK,
    "migrate": MIGRATE_LOCK,
    "anchor": ANCHOR_LOCK,
    "archive": ARCHIVE_LOCK,
}

MAX_LIST = 1000
"""The most rows one listing call returns (larger limits are capped)."""


def clean_text(value: str | None, limit: int) -> str | None:
    # Device-supplied text must never make a write fail (a failed seal is retried forever):
    # PostgreSQL text cannot hold NUL, and lone surrogates cannot be encoded as UTF-8.
    if value is None:
        return None
    text = value.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")
    return text[:limit]


class StoreBase:
    """A pool of connections to the cityanchor database. Build it with :meth:`connect`."""

    def __init__(self, pool: Any, *, timeout: float, dsn: str = "") -> None:
        self._pool = pool
        self._timeout = timeout
        self._dsn = dsn
        # A sealed batch never changes (erasure keeps every leaf hash): its verified tree is
        # cached, so a receipt costs a path lookup, not a fetch and rehash of the whole batch
        # (see anchor.store.receipts).
        self._batch_trees: collections.OrderedDict[tuple[int, str], list[Sequence[bytes]]] = (
            collections.OrderedDict()
        )
        # Where receipts of archived months are read from (Store.use_archive_dir); None: such a
        # receipt is answered reading_archived (anchor.store.archives).
        self.archive_reader: ArchiveReader | None = None

    @classmethod
    async def connect(
        cls,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 4,
        timeout: float = 10.0,
        command_timeout: float | None = 60.0,
    ) -> Self:
        """Open a pool of ``min_size``..``max_size`` connections to ``dsn``.

        ``timeout`` bounds connecting and waiting for a free connection; ``command_timeout``
        each statement. Raises ``StoreError`` (``db_unavailable`` when the server is not there).
        """
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                timeout=timeout,
                command_timeout=command_timeout,
                server_settings={"application_name": "cityanchor", "timezone": "UTC"},
            )
        except Exception as exc:
            err = translate(exc, "connect")
            if err is None:
                raise
            raise err from exc
        return cls(pool, timeout=timeout, dsn=dsn)

    async def close(self) -> None:
        """Close every connection (waits for connections in use to be released)."""
        with contextlib.suppress(Exception):
            await self._pool.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @contextlib.asynccontextmanager
    async def _connection(self, what: str) -> AsyncIterator[Any]:
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn:
                yield conn
        except AnchorError:
            raise
        except Exception as exc:
            err = translate(exc, what)
            if err is None:
                raise
            raise err from exc

    @contextlib.asynccontextmanager
    async def connection(self, what: str = "connection") -> AsyncIterator[Any]:
        """A pooled asyncpg connection for statements no method here covers: tests and one-off
        tools. Failures arrive as ``StoreError`` as for every method. Production code calls the
        named methods instead (a unit test keeps it so), so that every query the service runs
        lives in this package.
        """
        async with self._connection(what) as conn:
            yield conn

    async def ping(self) -> None:
        """Round-trip ``SELECT 1``; raises ``StoreError`` (``db_unavailable``)."""
        async with self._connection("ping") as conn:
            await conn.fetchval("SELECT 1")

    async def clock(self) -> datetime:
        """The database server's ``clock_timestamp()``: the clock that stamps revocations and
        rotations (the ingestor compares it with its own, which stamps ``received_at``)."""
        async with self._connection("clock") as conn:
            when: datetime = await conn.fetchval("SELECT clock_timestamp()")
        return when

    @contextlib.asynccontextmanager
    async def leadership(self, lock: int = ANCHOR_LOCK) -> AsyncIterator[Any]:
        """Hold a session advisory lock on a dedicated connection for the block's duration.

        Yields the connection (whose liveness the holder checks); waits until the lock is free.
        When the holder's process dies its connection closes and PostgreSQL frees the lock, so
        a waiting replica takes over.
        """
        try:
            conn = await asyncpg.connect(self._dsn, timeout=self._timeout)
        except Exception as exc:
            err = translate(exc, "leadership")
            if err is None:
                raise
            raise err from exc
        try:
            await conn.execute("SELECT pg_advisory_lock($1)", lock)
            yield conn
        finally:
            with contextlib.suppress(Exception):
                await conn.close()
