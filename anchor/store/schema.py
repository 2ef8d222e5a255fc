"""The schema: numbered migrations, applied once each, and the monthly partitions of
``reading_batches``.

Where the migrations are. The repository keeps them in the top-level ``sql/`` (``NNN_name.sql``,
as the project's layout says); a built distribution carries them as the package resource
``anchor/store/migrations/`` (setup.py's ``build_py`` copies ``sql/*.sql`` there, so a wheel
and the Docker image built from it have them). :func:`migrations_dir` reads the packaged copy
with :mod:`importlib.resources` when it exists, else the checkout's ``sql/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import asyncpg

from anchor.errors import Reason
from anchor.store.connection import MIGRATE_LOCK, MIGRATION_REFUSED_STATE, SEAL_LOCK, StoreBase
from anchor.store.errors import StoreError

__all__ = ["SQL_DIR", "SchemaMixin", "migration_files", "migrations_dir"]

# The monthly partitioned table (sql/009: one packed row per batch, by month of its seal) and
# its partition key.
_PARTITIONED = "reading_batches"
_KEY = "sealed_at"

# pg_class read with a fresh snapshot, not to_regclass(): that uses the catalog cache, which
# taking an advisory lock does not refresh, so it can miss a table that a concurrent migrate()
# just committed.
_EXISTS = (
    "SELECT EXISTS (SELECT 1 FROM pg_class WHERE relname = $1 "
    "AND relnamespace = current_schema()::regnamespace)"
)

_MIGRATION_FILE = re.compile(r"(\d{3,})_([A-Za-z0-9_]+)\.sql")


def migrations_dir() -> Traversable:
    """The migrations of this installation: the package resource ``anchor/store/migrations/``
    in an installed distribution, else (a source checkout) the repository's ``sql/``."""
    packaged = resources.files(__package__ or "anchor.store").joinpath("migrations")
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "sql"


SQL_DIR = migrations_dir()
"""Where :meth:`SchemaMixin.migrate` reads the numbered migrations by default (a ``Path`` both
in a checkout and in an installed wheel, which pip always unpacks)."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str
    checksum: str


def migration_files(directory: Traversable | None = None) -> list[Migration]:
    """The migrations in ``directory`` (default :data:`SQL_DIR`), by version.

    Raises ``StoreError``: ``migrations_missing`` (unreadable or empty), ``db_error`` (two
    files with one version).
    """
    directory = SQL_DIR if directory is None else directory
    try:
        entries = sorted(directory.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise StoreError(
            f"cannot read migrations in {directory}: {exc}", reason=Reason.MIGRATIONS_MISSING
        ) from exc
    found: dict[int, Migration] = {}
    for path in entries:
        m = _MIGRATION_FILE.fullmatch(path.name)
        if m is None:
            continue
        version = int(m.group(1))
        if version in found:
            raise StoreError(
                f"two migrations with version {version} in {directory}", reason=Reason.DB_ERROR
            )
        data = path.read_bytes()
        found[version] = Migration(
            version, m.group(2), data.decode("utf-8"), hashlib.sha256(data).hexdigest()
        )
    if not found:
        raise StoreError(
            f"no NNN_name.sql migrations in {directory}", reason=Reason.MIGRATIONS_MISSING
        )
    return [found[v] for v in sorted(found)]


class SchemaMixin(StoreBase):
    """``migrate`` and ``ensure_partitions``."""

    async def migrate(self, *, directory: Traversable | None = None) -> list[int]:
        """Apply the migrations not applied yet, each in its own transaction; return their
        versions. Then :meth:`ensure_partitions`.

        Safe to run from several processes at once (a session advisory lock serialises them)
        and idempotent. Raises ``StoreError`` (``migration_checksum_mismatch``) before applying
        anything when an applied file's SHA-256 changed, and (``migration_refused``) when a
        migration refuses the database's contents (SQLSTATE :data:`MIGRATION_REFUSED_STATE`;
        006 refuses a batch log built with v1 leaves); the migrations before it stay applied.
        """
        files = migration_files(directory)
        applied_now: list[int] = []
        async with self._connection("migrate") as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", MIGRATE_LOCK)
            try:
                await conn.execute(
                    """CREATE TABLE IF NOT EXISTS schema_migrations (
                        version int PRIMARY KEY,
                        name text NOT NULL,
                        checksum text NOT NULL,
                        applied_at timestamptz NOT NULL DEFAULT now())"""
                )
                rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
                applied = {r["version"]: r for r in rows}
                for m in files:
                    row = applied.get(m.version)
                    if row is not None and row["checksum"] != m.checksum:
                        raise StoreError(
                            f"migration {m.version:03d}_{m.name}.sql changed after it was "
                            f"applied (sha256 {row['checksum']} applied, {m.checksum} now); "
                            "add a new migration instead of editing an applied one",
                            reason=Reason.MIGRATION_CHECKSUM_MISMATCH,
                        )
                for m in files:
                    if m.version in applied:
                        continue
                    try:
                        async with conn.transaction():
                            await conn.execute(m.sql)
                            await conn.execute(
                                "INSERT INTO schema_migrations (version, name, checksum) "
                                "VALUES ($1, $2, $3)",
                                m.version,
                                m.name,
                                m.checksum,
                            )
                    except asyncpg.PostgresError as exc:
                        # A migration refuses a database it must not touch by raising
                        # MIGRATION_REFUSED_STATE (e.g. 006: a log built with v1 leaves).
                        if getattr(exc, "sqlstate", None) != MIGRATION_REFUSED_STATE:
                            raise
                        hint = getattr(exc, "hint", None)
                        raise StoreError(
                            f"migration {m.version:03d}_{m.name}.sql refused this database: "
                            f"{exc}" + (f". {hint}" if hint else ""),
                            reason=Reason.MIGRATION_REFUSED,
                        ) from exc
                    applied_now.append(m.version)
            finally:
                # Also released when the session ends, should this fail with the connection.
                with contextlib.suppress(Exception):
                    await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATE_LOCK)
        await self.ensure_partitions()
        return applied_now

    async def ensure_partitions(
        self, months_ahead: int = 2, *, start: datetime | None = None
    ) -> list[str]:
        """Create the monthly ``reading_batches`` partitions (UTC months of ``sealed_at``,
        sql/009) from the current month (or the month of ``start``) to ``months_ahead`` months
        later, moving any rows for them out of the default partition; return the names of the
        partitions created now.
        """
        created: list[str] = []
        async with self._connection("ensure_partitions") as conn:
            if start is None:
                start = await conn.fetchval("SELECT now()")
                assert start is not None
            if not await conn.fetchval(_EXISTS, _PARTITIONED):
                return created  # a schema before 009 (migrated with an older directory)
            year, month = start.astimezone(UTC).year, start.astimezone(UTC).month
            for _ in range(months_ahead + 1):
                nyear, nmonth = (year + 1, 1) if month == 12 else (year, month + 1)
                name = f"{_PARTITIONED}_y{year:04d}m{month:02d}"
                if await self._ensure_partition(
                    conn,
                    name,
                    datetime(year, month, 1, tzinfo=UTC),
                    datetime(nyear, nmonth, 1, tzinfo=UTC),
                ):
                    created.append(name)
                year, month = nyear, nmonth
        return created

    @staticmethod
    async def _ensure_partition(conn: Any, name: str, lo: datetime, hi: datetime) -> bool:
        # pg_class read with a fresh snapshot, not to_regclass(): that uses the catalog cache,
        # which taking an advisory lock does not refresh, so it can miss a table that a
        # concurrent migrate() just committed.
        exists = _EXISTS
        if await conn.fetchval(exists, name):
            return False
        async with conn.transaction():
            # Under the seal lock no seal can insert into the default partition between the
            # move below and the ATTACH (which would then fail on the row it finds there).
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SEAL_LOCK)
            if await conn.fetchval(exists, name):
                return False
            bounds = f"FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')"
            await conn.execute(
                f"CREATE TABLE {name} (LIKE {_PARTITIONED} INCLUDING DEFAULTS "
                "INCLUDING CONSTRAINTS INCLUDING STORAGE)"
            )
            # The bound as a constraint lets ATTACH skip scanning the new table.
            await conn.execute(
                f"ALTER TABLE {name} ADD CONSTRAINT {name}_bound CHECK "
                f"({_KEY} >= '{lo.isoformat()}' AND {_KEY} < '{hi.isoformat()}')"
            )
            await conn.execute(
                f"WITH moved AS (DELETE FROM {_PARTITIONED}_default WHERE {_KEY} >= $1 "
                f"AND {_KEY} < $2 RETURNING *) INSERT INTO {name} SELECT * FROM moved",
                lo,
                hi,
            )
            await conn.execute(
                f"ALTER TABLE {_PARTITIONED} ATTACH PARTITION {name} FOR VALUES {bounds}"
            )
        return True
