"""PostgreSQL storage: the device registry, sealed batches, the batch log and quarantine.

An adapter around asyncpg (the pure decisions live in :mod:`anchor.sealing`). Every asyncpg or
socket failure is translated here, at the edge, into :class:`StoreError` with a stable reason:

``db_unavailable``  the server cannot be reached or went away (refused, reset, shut down,
                    timed out, too many connections, out of disk); retryable.
``db_busy``         a serialization failure, deadlock or lock timeout; retryable.
``db_error``        any other database error (a bug or a schema mismatch); not retryable.
``not_found``       the device, reading or batch does not exist.
``conflict``        the device or key is already registered, the device already revoked, ...
``device_id_invalid``  a device id outside ``[A-Za-z0-9._-]{1,64}``.
``device_id_reserved``  registering a well-formed but reserved id (``.``, ``..``, ``-...``,
                    ``cityanchor...``; see :mod:`anchor.device_id`).
``migration_checksum_mismatch``  an applied ``sql/NNN_*.sql`` file was edited afterwards.
``migrations_missing``  the ``sql/`` directory cannot be read.
``log_inconsistent``   the batch log and its checkpoints disagree (never expected; the seal
                    refuses to extend a log it cannot account for).
``erased``          the reading's envelope is gone without a tombstone (an erasure with a
                    tombstone gives a receipt with status ``erased`` instead).

:attr:`StoreError.retryable` tells a caller whether trying again later can help. In particular
:meth:`Store.seal` is all-or-nothing: when it raises, nothing of the seal was committed, and the
ingestor must not acknowledge the MQTT messages (the broker redelivers them, and the dedupe check
makes the retry idempotent).

Key validity (rotation). A device keeps every key it ever had in ``device_keys``; rotation sets
the current key's ``valid_until`` to the rotation time and adds the new key with ``valid_until``
NULL. A reading signed with key K is acceptable when K is a key of that device and either K is
current (``valid_until`` NULL) or the reading's device time ``ts`` (ms) is before
``K.valid_until``. So a reading signed just before a rotation but delivered after it still
verifies, and a reading signed with the old key after the rotation does not. A backdated
``ts`` is bounded by the ingestor's clock-skew check (``ts`` must be close to the time it is
received), so an old key is in effect honoured only until ``valid_until`` plus that bound.
Revocation is by *received* time: a revoked device's readings received at or after
``revoked_at`` are refused whatever their ``ts``. :meth:`DeviceRecord.check_reading` applies
both rules.

Which clock decides. ``received_at`` is the ingestor's wall clock when it took the message off
MQTT; ``revoked_at`` and ``valid_until`` are PostgreSQL's ``clock_timestamp()`` read *after*
the revoke or rotate transaction holds the device row ``FOR UPDATE``. The ingestor's registry
cache only pre-screens: :meth:`Store.seal` re-checks every candidate against the registry rows
it reads ``FOR SHARE`` (see :func:`recheck_key_validity`), so a revoke or rotate either commits
before the seal reads the device (and the seal sees it) or waits for the seal to commit (and
then stamps a time later than every reading that seal holds). Both clocks are wall clocks: on
one host (``cityanchor up``, the demo) they are the same clock; across hosts they must be
NTP-synchronised, and the rule is exact up to their offset (the ingestor measures it against
the database at every registry refresh and warns above ``anchor.ingest.CLOCK_OFFSET_WARN_S``).

Concurrency. Every seal takes the transaction-level advisory lock :data:`SEAL_LOCK`, so seals
of any number of ingestors are serialised: the dedupe check, the batch's log index and the
checkpoint are decided under it and committed with the readings. ``migrate()`` holds
:data:`MIGRATE_LOCK` (a session lock) for its whole run; ``ensure_partitions()`` takes the seal
lock so that moving rows out of the default partition never races a seal.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import json
import re
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import asyncpg

from anchor import admission, merkle
from anchor.chains.base import AnchorConfirmation, AnchorTx
from anchor.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from anchor.completeness import (
    CompletenessProof,
    StoredBatch,
    StoredReading,
    build_completeness,
)
from anchor.device_id import DeviceIdError, check_device_id, check_new_device_id
from anchor.errors import AnchorError
from anchor.keys import PublicKey
from anchor.receipt import AnchorRecord, BatchProof, LogProof, Receipt
from anchor.sealing import (
    MAX_STORED_INT,
    Candidate,
    Rejection,
    classify_candidates,
    log_append,
    log_consistency_nodes,
    log_inclusion_nodes,
    log_root_from_nodes,
)

__all__ = [
    "ADVISORY_LOCKS",
    "ANCHOR_LOCK",
    "MIGRATE_LOCK",
    "QUARANTINE_RAW_LIMIT",
    "SEAL_LOCK",
    "Candidate",
    "CheckpointRecord",
    "DeviceKeyRecord",
    "DeviceRecord",
    "DeviceSpec",
    "OpenAnchorTx",
    "RegistryError",
    "Rejection",
    "SealResult",
    "Store",
    "StoreError",
    "StoredAnchor",
    "VanishedAnchor",
    "recheck_key_validity",
]

# Advisory lock keys (pg_advisory_lock's bigint space is shared by everything in the database:
# other components must pick other numbers). "CA" + a small number.
# Sealed batches whose verified Merkle trees a Store keeps (about 64 KiB each at 1000 readings).
BATCH_TREE_CACHE = 256
SEAL_LOCK = 0x4341_0001
MIGRATE_LOCK = 0x4341_0002
MIGRATION_REFUSED_STATE = "CA001"
"""SQLSTATE a migration raises to refuse a database (reported as ``migration_refused``)."""
ANCHOR_LOCK = 0x4341_0003
ADVISORY_LOCKS: Mapping[str, int] = {
    "seal": SEAL_LOCK,
    "migrate": MIGRATE_LOCK,
    "anchor": ANCHOR_LOCK,
}

QUARANTINE_RAW_LIMIT = 16 * 1024
"""Bytes of a quarantined message kept in ``quarantine.raw`` (its size and SHA-256 are of all)."""

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
"""Where the numbered migrations live (``sql/NNN_name.sql`` at the repository root)."""

_MIGRATION_FILE = re.compile(r"(\d{3,})_([A-Za-z0-9_]+)\.sql")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RETRYABLE_UNAVAILABLE = ("08", "53", "57", "58")  # connection, resources, shutdown, system I/O
_RETRYABLE_BUSY = ("40", "55")  # serialization/deadlock, lock not available
_MAX_LIST = 1000
_TEXT_LIMITS = {"topic": 1024, "detail": 4096, "device_id": 128}


# --------------------------------------------------------------------------------------------
# Errors


class StoreError(AnchorError):
    """A storage operation failed; ``reason`` says how (see the module docstring)."""

    reason = "db_error"

    @property
    def retryable(self) -> bool:
        """True when the same call may succeed later (the database was down or busy)."""
        return self.reason in ("db_unavailable", "db_busy")


class RegistryError(AnchorError):
    """A reading cannot be checked with a registered key.

    Reasons: ``device_revoked`` (received at or after the revocation), ``unknown_kid`` (the
    device has no key with this kid), ``key_rotated`` (the kid is a rotated-out key of the
    device and the reading's ``ts`` is not before its ``valid_until``).
    """

    reason = "unknown_kid"


_CLIENT_DATA_ERRORS = (
    asyncpg.exceptions.ClientConfigurationError,
    asyncpg.exceptions._base.DataError,
)


def _translate(exc: BaseException, what: str) -> StoreError | None:
    """The StoreError for an asyncpg/socket failure, or None for anything else (a bug)."""
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        message = f"{what}: {type(exc).__name__} ({state}): {exc}"
        if isinstance(exc, asyncpg.UniqueViolationError):
            return StoreError(message, reason="conflict")
        if state[:2] in _RETRYABLE_UNAVAILABLE:
            return StoreError(message, reason="db_unavailable")
        if state[:2] in _RETRYABLE_BUSY:
            return StoreError(message, reason="db_busy")
        return StoreError(message, reason="db_error")
    # Client-side refusals of a value or a setting: retrying the same call cannot help.
    if isinstance(exc, _CLIENT_DATA_ERRORS):
        return StoreError(f"{what}: {exc}", reason="db_error")
    if isinstance(exc, asyncpg.InterfaceError):
        # "connection is closed", "pool is closing", ...: the connection is gone.
        return StoreError(f"{what}: {exc}", reason="db_unavailable")
    if isinstance(exc, OSError | TimeoutError):
        return StoreError(f"{what}: database unreachable: {exc!r}", reason="db_unavailable")
    if isinstance(exc, asyncpg.InternalClientError):
        return StoreError(f"{what}: {exc}", reason="db_error")
    return None


def _not_found(what: str) -> StoreError:
    return StoreError(what, reason="not_found")


def _conflict(what: str) -> StoreError:
    return StoreError(what, reason="conflict")


def _check_device_id(device_id: object, *, new: bool = False) -> str:
    """The id, or ``StoreError`` ``device_id_invalid`` (or, with ``new``, for a registration,
    ``device_id_reserved``): the rule is :mod:`anchor.device_id`'s, in one place."""
    try:
        return check_new_device_id(device_id) if new else check_device_id(device_id)
    except DeviceIdError as exc:
        raise StoreError(exc.detail, reason=exc.reason) from None


def _clean_text(value: str | None, limit: int) -> str | None:
    # Device-supplied text must never make a write fail (a failed seal is retried forever):
    # PostgreSQL text cannot hold NUL, and lone surrogates cannot be encoded as UTF-8.
    if value is None:
        return None
    text = value.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")
    return text[:limit]


def _micros(when: datetime) -> int:
    return (when - _EPOCH) // timedelta(microseconds=1)


# --------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True, slots=True)
class DeviceKeyRecord:
    """One registered key of a device; ``valid_until`` is None for the current key."""

    device_id: str
    kid: bytes
    public_key: PublicKey
    valid_from: datetime
    valid_until: datetime | None

    @property
    def current(self) -> bool:
        return admission.key_is_current(self.valid_until)

    def accepts_ts(self, ts_ms: int) -> bool:
        """The key-validity rule: current, or the reading's device time precedes the rotation."""
        return admission.key_accepts_ts(self.valid_until, ts_ms)


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """A registered device and all its keys, oldest first."""

    device_id: str
    district: str
    kind: str
    status: str
    registered_at: datetime
    revoked_at: datetime | None
    revoke_reason: str | None
    keys: tuple[DeviceKeyRecord, ...]

    @property
    def current_key(self) -> DeviceKeyRecord | None:
        """The key new readings are signed with (None only for a hand-built record)."""
        return next((k for k in self.keys if k.valid_until is None), None)

    def key(self, kid: bytes) -> DeviceKeyRecord | None:
        """The device's key with this kid, current or rotated out, or None."""
        return next((k for k in self.keys if k.kid == kid), None)

    def check_reading(self, kid: bytes, ts_ms: int, received_at: datetime) -> DeviceKeyRecord:
        """The key that may verify a reading of this device signed with ``kid`` at device time
        ``ts_ms`` and received at ``received_at`` (see "Key validity" in the module docstring).

        Raises ``RegistryError``: ``device_revoked``, ``unknown_kid`` or ``key_rotated``.
        Does not check the signature, nor the clock skew of ``ts_ms``.
        """
        # The rule is anchor.admission's (pure), shared with the ingestor's precheck.
        outcome = admission.check_key(self, kid, ts_ms, received_at)
        if isinstance(outcome, admission.Refusal):
            raise RegistryError(outcome.detail, reason=outcome.reason)
        return outcome


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """A device to register; ``line`` locates it in an import file, for error messages."""

    device_id: str
    key: PublicKey
    district: str = ""
    kind: str = ""
    line: int | None = None

    def where(self) -> str:
        return f"line {self.line}: " if self.line is not None else ""


@dataclass(frozen=True, slots=True)
class SealResult:
    """What one :meth:`Store.seal` committed.

    ``batch_id``, ``log_index``, ``root`` (the batch root) and ``checkpoint`` (the signed note
    of the log including this batch) are None when nothing was accepted. ``quarantined`` counts
    rows written to quarantine per reason, the passed-in rejections included; ``duplicates``
    equals ``quarantined.get("replayed_seq", 0)``.
    """

    batch_id: int | None
    log_index: int | None
    size: int
    root: bytes | None
    checkpoint: str | None
    accepted: int
    duplicates: int
    quarantined: Mapping[str, int]
    key_rejections: tuple[Rejection, ...] = ()
    """Readings the seal itself refused on key status (revoked or rotated since the ingestor's
    registry cache was loaded), for the ingestor's ``quarantined`` log lines."""
    sealed: tuple[Candidate, ...] = ()
    """The candidates this seal stored, in batch order (for the devices' acknowledgements)."""
    rejected: tuple[Rejection, ...] = ()
    """Every quarantine row this seal wrote, the passed-in rejections first."""


@dataclass(frozen=True, slots=True)
class _Migration:
    version: int
    name: str
    sql: str
    checksum: str


def _migrations(directory: Path) -> list[_Migration]:
    try:
        paths = sorted(directory.iterdir())
    except OSError as exc:
        raise StoreError(
            f"cannot read migrations in {directory}: {exc}", reason="migrations_missing"
        ) from exc
    found: dict[int, _Migration] = {}
    for path in paths:
        m = _MIGRATION_FILE.fullmatch(path.name)
        if m is None:
            continue
        version = int(m.group(1))
        if version in found:
            raise StoreError(
                f"two migrations with version {version} in {directory}", reason="db_error"
            )
        data = path.read_bytes()
        found[version] = _Migration(
            version, m.group(2), data.decode("utf-8"), hashlib.sha256(data).hexdigest()
        )
    if not found:
        raise StoreError(f"no NNN_name.sql migrations in {directory}", reason="migrations_missing")
    return [found[v] for v in sorted(found)]


_INSERT_KEY = (
    "INSERT INTO device_keys (device_id, kid, key_type, public_key, public_jwk, valid_from) "
    "VALUES ($1, $2, $3, $4, $5::jsonb, coalesce($6::timestamptz, now()))"
)


def _key_row(
    device_id: str, key: PublicKey, valid_from: datetime | None = None
) -> tuple[str, bytes, str, bytes, str, datetime | None]:
    return device_id, key.kid, key.key_type, key.raw, json.dumps(key.to_jwk()), valid_from


async def _lock_active_device(conn: Any, device_id: str, if_revoked: str) -> datetime:
    """Lock the device's row for this transaction; ``not_found`` / ``conflict`` (revoked).

    Returns ``clock_timestamp()`` read once the lock is held: the time a revocation or
    rotation takes effect. Not ``now()``, the transaction's start: a seal holding the row
    ``FOR SHARE`` may commit readings received after that start while we wait for the lock.
    """
    row = await conn.fetchrow(
        "SELECT status FROM devices WHERE device_id = $1 FOR UPDATE", device_id
    )
    if row is None:
        raise _not_found(f"device {device_id} is not registered")
    if row["status"] == "revoked":
        raise _conflict(if_revoked)
    stamp: datetime = await conn.fetchval("SELECT clock_timestamp()")
    return stamp


def recheck_key_validity(
    candidates: Sequence[Candidate], devices: Mapping[str, DeviceRecord]
) -> tuple[list[Candidate], list[Rejection]]:
    """The seal's authoritative key-status check (stage 6 of the ingest rules): each candidate
    against the registry as the seal transaction reads it, by the candidate's ``received_at``.

    The ingestor checked the same rule against its cache, which may be seconds old; here a
    reading of a device revoked before it was received becomes ``device_revoked``, one signed
    with a key rotated out before its ``ts`` ``key_rotated`` (``unknown_kid`` / ``unknown_device``
    cannot normally happen: keys and devices are never deleted). Returns (kept, rejections),
    both in input order.
    """
    kept: list[Candidate] = []
    rejected: list[Rejection] = []
    for c in candidates:
        env, r = c.envelope, c.envelope.reading
        record = devices.get(r.device_id)
        try:
            if record is None:
                raise RegistryError(
                    f"device {r.device_id} is not registered", reason="unknown_device"
                )
            record.check_reading(env.kid, r.ts, c.received_at)
        except RegistryError as exc:
            seq = r.seq if r.seq <= MAX_STORED_INT else None
            rejected.append(
                Rejection(
                    c.received_at,
                    c.topic,
                    exc.reason,
                    f"at seal: {exc.detail}",
                    env.raw,
                    r.device_id,
                    seq,
                )
            )
            continue
        kept.append(c)
    return kept, rejected


def _key_record(row: Mapping[str, Any]) -> DeviceKeyRecord:
    return DeviceKeyRecord(
        device_id=row["device_id"],
        kid=bytes(row["kid"]),
        public_key=PublicKey(row["key_type"], bytes(row["public_key"])),
        valid_from=row["valid_from"],
        valid_until=row["valid_until"],
    )


def _device_record(row: Mapping[str, Any], keys: Iterable[DeviceKeyRecord]) -> DeviceRecord:
    return DeviceRecord(
        device_id=row["device_id"],
        district=row["district"],
        kind=row["kind"],
        status=row["status"],
        registered_at=row["registered_at"],
        revoked_at=row["revoked_at"],
        revoke_reason=row["revoke_reason"],
        keys=tuple(keys),
    )


_DEVICE_COLUMNS = "device_id, district, kind, status, registered_at, revoked_at, revoke_reason"
_KEY_COLUMNS = "device_id, kid, key_type, public_key, valid_from, valid_until"
_READING_COLUMNS = (
    "device_id", "seq", "ts", "received_at", "format", "kind", "kid", "envelope", "leaf_hash",
    "batch_id", "batch_index",
)  # fmt: skip
_SEQ_COLUMNS = (
    "device_id", "seq", "leaf_hash", "batch_id", "batch_index", "received_at", "batch_path",
)  # fmt: skip
_QUARANTINE_COLUMNS = (
    "received_at", "topic", "device_id", "seq", "reason", "detail", "raw", "raw_size",
    "raw_sha256", "ingestor",
)  # fmt: skip


def _quarantine_record(r: Rejection, ingestor: str) -> tuple[Any, ...]:
    raw = bytes(r.raw)
    # A replay's bytes are already stored with the original reading: keep only size and hash.
    kept = None if r.reason == "replayed_seq" else raw[:QUARANTINE_RAW_LIMIT]
    seq = r.seq if r.seq is not None and 0 <= r.seq <= MAX_STORED_INT else None
    return (
        r.received_at,
        _clean_text(r.topic, _TEXT_LIMITS["topic"]) or "",
        _clean_text(r.device_id, _TEXT_LIMITS["device_id"]),
        seq,
        _clean_text(r.reason, 64) or "unknown",
        _clean_text(r.detail, _TEXT_LIMITS["detail"]) or "",
        kept,
        len(raw),
        hashlib.sha256(raw).digest(),
        _clean_text(ingestor, 256) or "",
    )


# --------------------------------------------------------------------------------------------
# The store


class Store:
    """A pool of connections to the cityanchor database. Build it with :meth:`connect`."""

    def __init__(self, pool: Any, *, timeout: float, dsn: str = "") -> None:
        self._pool = pool
        self._timeout = timeout
        self._dsn = dsn
        # A sealed batch never changes (erasure keeps every leaf hash): its verified tree is
        # cached, so a receipt costs a path lookup, not a fetch and rehash of the whole batch.
        self._batch_trees: collections.OrderedDict[tuple[int, str], list[Sequence[bytes]]] = (
            collections.OrderedDict()
        )

    @classmethod
    async def connect(
        cls,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 4,
        timeout: float = 10.0,
        command_timeout: float | None = 60.0,
    ) -> Store:
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
            err = _translate(exc, "connect")
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
            err = _translate(exc, what)
            if err is None:
                raise
            raise err from exc

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

    # ---------------------------------------------------------------------------- schema

    async def migrate(self, *, directory: Path | None = None) -> list[int]:
        """Apply the migrations not applied yet, each in its own transaction; return their
        versions. Then :meth:`ensure_partitions`.

        Safe to run from several processes at once (a session advisory lock serialises them)
        and idempotent. Raises ``StoreError`` (``migration_checksum_mismatch``) before applying
        anything when an applied file's SHA-256 changed, and (``migration_refused``) when a
        migration refuses the database's contents (SQLSTATE :data:`MIGRATION_REFUSED_STATE`;
        006 refuses a batch log built with v1 leaves); the migrations before it stay applied.
        """
        files = _migrations(directory or SQL_DIR)
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
                            reason="migration_checksum_mismatch",
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
                            reason="migration_refused",
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
        """Create the monthly ``readings`` partitions (UTC months) from the current month (or
        the month of ``start``) to ``months_ahead`` months later, moving any rows for them out
        of the default partition; return the names of the partitions created now.
        """
        created: list[str] = []
        async with self._connection("ensure_partitions") as conn:
            if start is None:
                start = await conn.fetchval("SELECT now()")
                assert start is not None
            year, month = start.astimezone(UTC).year, start.astimezone(UTC).month
            for _ in range(months_ahead + 1):
                nyear, nmonth = (year + 1, 1) if month == 12 else (year, month + 1)
                name = f"readings_y{year:04d}m{month:02d}"
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
        exists = (
            "SELECT EXISTS (SELECT 1 FROM pg_class WHERE relname = $1 "
            "AND relnamespace = current_schema()::regnamespace)"
        )
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
                f"CREATE TABLE {name} (LIKE readings INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
            )
            # The bound as a constraint lets ATTACH skip scanning the new table.
            await conn.execute(
                f"ALTER TABLE {name} ADD CONSTRAINT {name}_bound CHECK "
                f"(received_at >= '{lo.isoformat()}' AND received_at < '{hi.isoformat()}')"
            )
            await conn.execute(
                f"WITH moved AS (DELETE FROM readings_default WHERE received_at >= $1 "
                f"AND received_at < $2 RETURNING *) INSERT INTO {name} SELECT * FROM moved",
                lo,
                hi,
            )
            await conn.execute(f"ALTER TABLE readings ATTACH PARTITION {name} FOR VALUES {bounds}")
        return True

    # -------------------------------------------------------------------------- registry

    async def register_device(
        self, device_id: str, key: PublicKey, *, district: str, kind: str
    ) -> DeviceRecord:
        """Register a new device with its first key. Raises ``StoreError``: ``conflict`` (the
        device exists, or the key is another device's), ``device_id_invalid``."""
        (record,) = await self.register_devices([DeviceSpec(device_id, key, district, kind)])
        return record

    async def register_devices(self, specs: Sequence[DeviceSpec]) -> list[DeviceRecord]:
        """Register many devices in one transaction: all of them or, on any problem, none.

        Raises ``StoreError`` (``conflict`` or ``device_id_invalid``) whose detail lists every
        problem found, one per line, prefixed by the spec's line number when it has one.
        """
        problems: list[str] = []
        id_reasons: set[str] = set()
        invalid = 0
        seen_ids: dict[str, DeviceSpec] = {}
        seen_kids: dict[bytes, DeviceSpec] = {}
        for spec in specs:
            try:
                _check_device_id(spec.device_id, new=True)
            except StoreError as exc:
                problems.append(spec.where() + exc.detail)
                id_reasons.add(exc.reason)
                invalid += 1
                continue
            if spec.device_id in seen_ids:
                problems.append(f"{spec.where()}device {spec.device_id} appears twice")
            if spec.key.kid in seen_kids:
                problems.append(
                    f"{spec.where()}device {spec.device_id} has the same key as "
                    f"{seen_kids[spec.key.kid].device_id}"
                )
            seen_ids[spec.device_id] = spec
            seen_kids.setdefault(spec.key.kid, spec)
        if problems:
            # Only id problems: their code (device_id_reserved only if every one is reserved).
            reason = (
                (id_reasons.pop() if len(id_reasons) == 1 else "device_id_invalid")
                if invalid == len(problems)
                else "conflict"
            )
            raise StoreError("\n".join(problems), reason=reason)
        if not specs:
            return []
        async with self._connection("register") as conn, conn.transaction():
            ids = [s.device_id for s in specs]
            kids = [s.key.kid for s in specs]
            for row in await conn.fetch(
                "SELECT device_id FROM devices WHERE device_id = ANY($1::text[])", ids
            ):
                spec = seen_ids[row["device_id"]]
                problems.append(f"{spec.where()}device {spec.device_id} is already registered")
            for row in await conn.fetch(
                "SELECT device_id, kid FROM device_keys WHERE kid = ANY($1::bytea[])", kids
            ):
                spec = seen_kids[bytes(row["kid"])]
                problems.append(
                    f"{spec.where()}the key of {spec.device_id} is already registered to "
                    f"device {row['device_id']}"
                )
            if problems:
                raise _conflict("\n".join(problems))
            await conn.executemany(
                "INSERT INTO devices (device_id, district, kind) VALUES ($1, $2, $3)",
                [(s.device_id, s.district, s.kind) for s in specs],
            )
            await conn.executemany(
                _INSERT_KEY,
                [_key_row(s.device_id, s.key) for s in specs],
            )
            return await self._fetch_devices(conn, "WHERE device_id = ANY($1::text[])", ids)

    async def rotate_device_key(self, device_id: str, key: PublicKey) -> DeviceRecord:
        """Close the device's current key and make ``key`` current, both at the instant the
        device row is locked (see "Which clock decides" in the module docstring).

        Raises ``StoreError``: ``not_found``, ``conflict`` (the device is revoked, or the key
        is already registered, to this device or another).
        """
        _check_device_id(device_id)
        async with self._connection("rotate") as conn, conn.transaction():
            stamp = await _lock_active_device(
                conn, device_id, f"device {device_id} is revoked; its keys cannot be rotated"
            )
            owner = await conn.fetchval("SELECT device_id FROM device_keys WHERE kid = $1", key.kid)
            if owner is not None:
                which = "this device" if owner == device_id else f"device {owner}"
                raise _conflict(f"the new key is already registered to {which}")
            await conn.execute(
                "UPDATE device_keys SET valid_until = $2 "
                "WHERE device_id = $1 AND valid_until IS NULL",
                device_id,
                stamp,
            )
            # The new key starts where the old one ends: one instant, read under the lock.
            await conn.execute(_INSERT_KEY, *_key_row(device_id, key, stamp))
            (record,) = await self._fetch_devices(conn, "WHERE device_id = $1", device_id)
            return record

    async def revoke_device(self, device_id: str, *, reason: str = "") -> DeviceRecord:
        """Revoke the device now: its readings received from now on are refused, also those
        already in an ingestor's batch (the seal re-checks them under the device row lock).

        Raises ``StoreError``: ``not_found``, ``conflict`` (already revoked).
        """
        _check_device_id(device_id)
        async with self._connection("revoke") as conn, conn.transaction():
            stamp = await _lock_active_device(
                conn, device_id, f"device {device_id} is already revoked"
            )
            await conn.execute(
                "UPDATE devices SET status = 'revoked', revoked_at = $3, revoke_reason = $2 "
                "WHERE device_id = $1",
                device_id,
                _clean_text(reason, 1024),
                stamp,
            )
            (record,) = await self._fetch_devices(conn, "WHERE device_id = $1", device_id)
            return record

    async def get_device(self, device_id: str) -> DeviceRecord:
        """The device and all its keys; raises ``StoreError`` (``not_found``)."""
        _check_device_id(device_id)
        async with self._connection("get_device") as conn:
            found = await self._fetch_devices(conn, "WHERE device_id = $1", device_id)
        if not found:
            raise _not_found(f"device {device_id} is not registered")
        return found[0]

    async def reading_received_at(
        self, device_id: str, seq: int, leaf_hash: bytes
    ) -> datetime | None:
        """When the stored reading (device_id, seq) with this leaf hash was received, or None
        when no such reading is stored (the time the key-validity rule is judged at)."""
        _check_device_id(device_id)
        if not 1 <= seq <= MAX_STORED_INT:
            return None
        async with self._connection("reading_received_at") as conn:
            when: datetime | None = await conn.fetchval(
                "SELECT received_at FROM reading_seqs "
                "WHERE device_id = $1 AND seq = $2 AND leaf_hash = $3",
                device_id,
                seq,
                leaf_hash,
            )
        return when

    async def list_devices(
        self,
        *,
        district: str | None = None,
        status: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[DeviceRecord]:
        """Devices ordered by id, after the cursor ``after`` (the last id of the previous page),
        at most ``limit`` (capped at 1000), optionally of one district and/or status."""
        where: list[str] = []
        args: list[Any] = []
        for column, value in (("district", district), ("status", status)):
            if value is not None:
                args.append(value)
                where.append(f"{column} = ${len(args)}")
        if after is not None:
            args.append(after)
            where.append(f"device_id > ${len(args)}")
        args.append(max(1, min(limit, _MAX_LIST)))
        clause = ("WHERE " + " AND ".join(where) if where else "") + (
            f" ORDER BY device_id LIMIT ${len(args)}"
        )
        async with self._connection("list_devices") as conn:
            return await self._fetch_devices(conn, clause, *args)

    async def device_keys_snapshot(self) -> dict[str, DeviceRecord]:
        """Every device with all its keys, by id: the ingestor's registry cache."""
        async with self._connection("device_keys_snapshot") as conn:
            records = await self._fetch_devices(conn, "")
        return {r.device_id: r for r in records}

    @staticmethod
    async def _fetch_devices(conn: Any, clause: str, *args: Any) -> list[DeviceRecord]:
        rows = await conn.fetch(f"SELECT {_DEVICE_COLUMNS} FROM devices {clause}", *args)
        if not rows:
            return []
        ids = [r["device_id"] for r in rows]
        keys: dict[str, list[DeviceKeyRecord]] = {i: [] for i in ids}
        for k in await conn.fetch(
            f"SELECT {_KEY_COLUMNS} FROM device_keys WHERE device_id = ANY($1::text[]) "
            "ORDER BY device_id, valid_from, valid_until NULLS LAST, kid",
            ids,
        ):
            keys[k["device_id"]].append(_key_record(k))
        records = [_device_record(r, keys[r["device_id"]]) for r in rows]
        return sorted(records, key=lambda d: d.device_id)

    # --------------------------------------------------------------------------- sealing

    async def seal(
        self,
        candidates: Sequence[Candidate],
        rejections: Sequence[Rejection],
        *,
        signer: NoteSigner,
        origin: str,
        ingestor: str,
        hasher: merkle.Hasher = merkle.SHA256,
    ) -> SealResult:
        """Store one batch and everything rejected with it, in ONE transaction.

        Under :data:`SEAL_LOCK`: re-check every candidate's key status against the registry
        rows, locked ``FOR SHARE`` (:func:`recheck_key_validity`: ``device_revoked``,
        ``key_rotated``, by each reading's ``received_at``, whatever the ingestor's cache said),
        look up the candidates' (device_id, seq) and seq - 1, classify
        them (:func:`anchor.sealing.classify_candidates`), and if any is accepted: number the
        batch, compute its root, append its log leaf (``merkle.log_leaf_hash(size, root)``,
        which binds the batch size) to the batch log, sign the new
        checkpoint, and COPY batch, checkpoint, log nodes, readings and reading_seqs; finally
        COPY the quarantine rows (passed-in rejections first). When nothing is accepted only
        quarantine rows are written.

        All-or-nothing: on ``StoreError`` nothing was committed (unless the failure hit the
        COMMIT itself, where the server may have committed; a retry is then classified as
        duplicates, which is why duplicates are acknowledged like accepted readings).
        """
        lookup: set[tuple[str, int]] = set()
        for c in candidates:
            r = c.envelope.reading
            if r.seq <= MAX_STORED_INT:
                lookup.add((r.device_id, r.seq))
                if r.seq > 1:
                    lookup.add((r.device_id, r.seq - 1))
        async with self._connection("seal") as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SEAL_LOCK)
            candidates, key_rejected = await self._recheck_keys(conn, candidates)
            stored: dict[tuple[str, int], bytes] = {}
            if lookup:
                ids, seqs = zip(*lookup, strict=True)
                for row in await conn.fetch(
                    "SELECT s.device_id, s.seq, s.leaf_hash FROM reading_seqs s "
                    "JOIN unnest($1::text[], $2::bigint[]) AS k(device_id, seq) "
                    "ON s.device_id = k.device_id AND s.seq = k.seq",
                    list(ids),
                    list(seqs),
                ):
                    stored[(row["device_id"], row["seq"])] = bytes(row["leaf_hash"])
            accepted, rejected = classify_candidates(candidates, stored, hasher=hasher)
            quarantine = [*rejections, *key_rejected, *rejected]
            batch_id = log_index = None
            batch_root = note = None
            if accepted:
                batch_id, log_index, batch_root, note = await self._append_batch(
                    conn, accepted, signer=signer, origin=origin, ingestor=ingestor, hasher=hasher
                )
            if quarantine:
                await conn.copy_records_to_table(
                    "quarantine",
                    records=[_quarantine_record(r, ingestor) for r in quarantine],
                    columns=_QUARANTINE_COLUMNS,
                )
        counts: dict[str, int] = {}
        for q in quarantine:
            counts[q.reason] = counts.get(q.reason, 0) + 1
        return SealResult(
            batch_id=batch_id,
            log_index=log_index,
            size=len(accepted),
            root=batch_root,
            checkpoint=note,
            accepted=len(accepted),
            duplicates=counts.get("replayed_seq", 0),
            quarantined=counts,
            key_rejections=tuple(key_rejected),
            sealed=tuple(accepted),
            rejected=tuple(quarantine),
        )

    @staticmethod
    async def _recheck_keys(
        conn: Any, candidates: Sequence[Candidate]
    ) -> tuple[list[Candidate], list[Rejection]]:
        # FOR SHARE on the candidates' device rows (in id order) conflicts with the FOR UPDATE
        # of revoke and rotate: whichever commits first, the other sees it (module docstring,
        # "Which clock decides"). Keys are read after the lock, so a rotation is seen whole.
        ids = sorted({c.envelope.reading.device_id for c in candidates})
        if not ids:
            return list(candidates), []
        records = await Store._fetch_devices(
            conn, "WHERE device_id = ANY($1::text[]) ORDER BY device_id FOR SHARE", ids
        )
        return recheck_key_validity(candidates, {d.device_id: d for d in records})

    @staticmethod
    async def _append_batch(
        conn: Any,
        accepted: Sequence[Candidate],
        *,
        signer: NoteSigner,
        origin: str,
        ingestor: str,
        hasher: merkle.Hasher,
    ) -> tuple[int, int, bytes, str]:
        leaves = [merkle.leaf_hash(c.envelope.raw, hasher=hasher) for c in accepted]
        levels = merkle.tree_levels(leaves, hasher=hasher)
        batch_root = levels[-1][0]
        batch_id: int = await conn.fetchval("SELECT nextval('batch_ids')")
        head = await conn.fetchrow(
            "SELECT log_size, frontier FROM checkpoints ORDER BY log_size DESC LIMIT 1"
        )
        size: int = head["log_size"] if head else 0
        frontier = [bytes(h) for h in head["frontier"]] if head else []
        next_index: int = await conn.fetchval("SELECT coalesce(max(log_index) + 1, 0) FROM batches")
        if next_index != size:
            raise StoreError(
                f"the log has {next_index} batches but its latest checkpoint says {size}",
                reason="log_inconsistent",
            )
        new_frontier, nodes = log_append(
            frontier,
            size,
            merkle.log_leaf_hash(len(accepted), batch_root, hasher=hasher),
            hasher=hasher,
        )
        log_root = merkle.compact_root(new_frontier, hasher=hasher)
        note = sign_checkpoint(Checkpoint(origin, size + 1, log_root), signer)
        await conn.execute(
            "INSERT INTO batches (id, size, root, log_index, ingestor) VALUES ($1, $2, $3, $4, $5)",
            batch_id,
            len(accepted),
            batch_root,
            size,
            _clean_text(ingestor, 256) or "",
        )
        await conn.execute(
            "INSERT INTO checkpoints (log_size, root, note, frontier) VALUES ($1, $2, $3, $4)",
            size + 1,
            log_root,
            note,
            new_frontier,
        )
        await conn.copy_records_to_table(
            "log_nodes", records=nodes, columns=("level", "idx", "hash")
        )
        readings = []
        seqs = []
        for i, (c, leaf) in enumerate(zip(accepted, leaves, strict=True)):
            env, r = c.envelope, c.envelope.reading
            readings.append(
                (
                    r.device_id, r.seq, r.ts, c.received_at, env.format,
                    _clean_text(r.kind, 1 << 16), env.kid, env.raw, leaf, batch_id, i,
                )
            )  # fmt: skip
            path = b"".join(merkle.path_from_levels(levels, i))
            seqs.append((r.device_id, r.seq, leaf, batch_id, i, c.received_at, path))
        await conn.copy_records_to_table("readings", records=readings, columns=_READING_COLUMNS)
        await conn.copy_records_to_table("reading_seqs", records=seqs, columns=_SEQ_COLUMNS)
        return batch_id, size, batch_root, note

    async def quarantine(self, rejections: Sequence[Rejection], *, ingestor: str) -> None:
        """Write quarantine rows only (one transaction), for rejections with no seal to join."""
        if not rejections:
            return
        async with self._connection("quarantine") as conn, conn.transaction():
            await conn.copy_records_to_table(
                "quarantine",
                records=[_quarantine_record(r, ingestor) for r in rejections],
                columns=_QUARANTINE_COLUMNS,
            )

    # ----------------------------------------------------------------------------- reads

    async def log_size(self) -> int:
        """The size of the batch log at its latest checkpoint (0 when empty)."""
        async with self._connection("log_size") as conn:
            size: int = await conn.fetchval("SELECT coalesce(max(log_size), 0) FROM checkpoints")
        return size

    async def latest_checkpoint(self) -> str | None:
        """The latest signed checkpoint note, or None before the first seal."""
        async with self._connection("latest_checkpoint") as conn:
            note: str | None = await conn.fetchval(
                "SELECT note FROM checkpoints ORDER BY log_size DESC LIMIT 1"
            )
        return note

    async def checkpoint_at(self, log_size: int) -> str:
        """The signed checkpoint note at ``log_size``; raises ``StoreError`` (``not_found``)."""
        async with self._connection("checkpoint_at") as conn:
            note: str | None = await conn.fetchval(
                "SELECT note FROM checkpoints WHERE log_size = $1", log_size
            )
        if note is None:
            raise _not_found(f"no checkpoint at log size {log_size}")
        return note

    async def receipt(
        self, device_id: str, seq: int, *, hasher: merkle.Hasher = merkle.SHA256
    ) -> Receipt:
        """The receipt of one stored reading (see :meth:`_receipt_full`).

        The common case takes two statements: one for the reading, its batch, the checkpoint to
        prove against and that checkpoint's anchors, one for the log nodes. Both stored paths
        are checked against the stored roots before anything is handed out; an erased reading,
        a reading sealed before paths were stored, or any path that does not check out takes
        the full path, which rebuilds the proofs.
        """
        _check_device_id(device_id)
        if not 1 <= seq <= MAX_STORED_INT:
            raise _not_found(f"no reading {device_id} seq {seq}")
        async with self._connection("receipt") as conn:
            # One statement is one snapshot; the log nodes read next are append-only.
            row = await conn.fetchrow(_RECEIPT_SQL, device_id, seq)
            if row is None:
                raise _not_found(f"no reading {device_id} seq {seq}")
            fast = await self._receipt_fast(conn, row, hasher)
        return fast if fast is not None else await self._receipt_full(device_id, seq, hasher=hasher)

    async def _receipt_fast(
        self, conn: Any, row: Mapping[str, Any], hasher: merkle.Hasher
    ) -> Receipt | None:
        if row["envelope"] is None or row["batch_path"] is None or row["log_size"] is None:
            return None
        raw_path = bytes(row["batch_path"])
        batch_path = [raw_path[i : i + 32] for i in range(0, len(raw_path), 32)]
        leaf, batch_root = bytes(row["leaf_hash"]), bytes(row["batch_root"])
        log_index, log_size, log_root = row["log_index"], row["log_size"], bytes(row["log_root"])
        try:
            merkle.verify_inclusion(
                leaf, row["batch_index"], row["size"], batch_path, batch_root, hasher=hasher
            )
            log_path = await self._log_path(conn, log_index, log_size, hasher=hasher)
            merkle.verify_inclusion(
                merkle.log_leaf_hash(row["size"], batch_root, hasher=hasher),
                log_index,
                log_size,
                log_path,
                log_root,
                hasher=hasher,
            )
        except (merkle.ProofError, StoreError):
            return None
        anchors = tuple(
            AnchorRecord(
                chain_id=a["chain_id"],
                contract=a["contract"],
                tx_hash=a["tx_hash"],
                block_number=a["block_number"],
                block_time=_rfc3339(datetime.fromisoformat(a["block_time"])),
            )
            for a in json.loads(row["anchors"])
        )
        extra = {} if hasher.name == merkle.SHA256.name else {"hash_scheme": hasher.name}
        return Receipt(
            device_id=row["device_id"],
            seq=row["seq"],
            format=row["format"],
            envelope=bytes(row["envelope"]),
            leaf_hash=leaf,
            batch=BatchProof(
                size=row["size"],
                index=row["batch_index"],
                root=batch_root,
                path=tuple(batch_path),
            ),
            log=LogProof(index=log_index, size=log_size, root=log_root, path=tuple(log_path)),
            checkpoint=row["note"],
            anchors=anchors,
            status="anchored" if anchors else "sealed",
            extra=extra,
        )

    async def _receipt_full(
        self, device_id: str, seq: int, *, hasher: merkle.Hasher = merkle.SHA256
    ) -> Receipt:
        """The receipt (status ``sealed``) of one stored reading, against the latest checkpoint.

        Raises ``StoreError``: ``not_found``, ``erased``, ``log_inconsistent`` (the stored
        proofs do not lead to the stored roots: never handed out).
        """
        _check_device_id(device_id)
        if not 1 <= seq <= MAX_STORED_INT:
            raise _not_found(f"no reading {device_id} seq {seq}")
        async with (
            self._connection("receipt") as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            row = await conn.fetchrow(
                "SELECT batch_id, batch_index, received_at, leaf_hash, batch_path "
                "FROM reading_seqs WHERE device_id = $1 AND seq = $2",
                device_id,
                seq,
            )
            if row is None:
                raise _not_found(f"no reading {device_id} seq {seq}")
            envelopes = await conn.fetch(
                "SELECT device_id, seq, format, envelope, batch_index FROM readings "
                "WHERE device_id = $1 AND seq = $2 AND received_at = $3",
                device_id,
                seq,
                row["received_at"],
            )
            stored = None
            if row["batch_path"] is not None:
                raw_path = bytes(row["batch_path"])
                stored = {
                    row["batch_index"]: (
                        bytes(row["leaf_hash"]),
                        [raw_path[i : i + 32] for i in range(0, len(raw_path), 32)],
                    )
                }
            (receipt,) = await self._receipts(
                conn, row["batch_id"], envelopes, hasher=hasher, stored_paths=stored
            )
        return receipt

    async def receipts_for_batch(
        self, batch_id: int, *, hasher: merkle.Hasher = merkle.SHA256
    ) -> list[Receipt]:
        """The receipts of every reading of a batch, in batch order, against the latest
        checkpoint; raises ``StoreError`` (``not_found``, ``erased``, ``log_inconsistent``)."""
        async with (
            self._connection("receipts_for_batch") as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            span = await conn.fetchrow(
                "SELECT min(received_at) AS lo, max(received_at) AS hi FROM reading_seqs "
                "WHERE batch_id = $1",
                batch_id,
            )
            if span is None or span["lo"] is None:
                raise _not_found(f"no batch {batch_id}")
            # The received_at range lets PostgreSQL look only at the batch's partitions.
            envelopes = await conn.fetch(
                "SELECT device_id, seq, format, envelope, batch_index FROM readings "
                "WHERE batch_id = $1 AND received_at BETWEEN $2 AND $3 ORDER BY batch_index",
                batch_id,
                span["lo"],
                span["hi"],
            )
            return await self._receipts(conn, batch_id, envelopes, hasher=hasher)

    async def _receipts(
        self,
        conn: Any,
        batch_id: int,
        envelopes: Sequence[Mapping[str, Any]],
        *,
        hasher: merkle.Hasher,
        stored_paths: Mapping[int, tuple[bytes, list[bytes]]] | None = None,
    ) -> list[Receipt]:
        batch = await conn.fetchrow(
            "SELECT size, root, log_index FROM batches WHERE id = $1", batch_id
        )
        if batch is None or not envelopes:
            raise _not_found(f"no batch {batch_id}")
        batch_root = bytes(batch["root"])
        batch_size: int = batch["size"]
        leaves_and_paths = self._checked_paths(stored_paths, batch_size, batch_root, hasher)
        if leaves_and_paths is None:
            levels = await self._batch_tree(conn, batch_id, batch_size, batch_root, hasher)
            leaves_and_paths = {
                r["batch_index"]: (
                    levels[0][r["batch_index"]],
                    merkle.path_from_levels(levels, r["batch_index"]),
                )
                for r in envelopes
            }
        log_index: int = batch["log_index"]
        # The newest anchored checkpoint that covers this batch, so the receipt ends on chain;
        # until one exists, the newest checkpoint (status "sealed"). One round trip.
        head = await conn.fetchrow(
            "SELECT log_size, root, note FROM checkpoints WHERE log_size = coalesce("
            "(SELECT max(log_size) FROM anchors WHERE log_size > $1), "
            "(SELECT max(log_size) FROM checkpoints))",
            log_index,
        )
        anchors = tuple(
            AnchorRecord(
                chain_id=a["chain_id"],
                contract=a["contract"],
                tx_hash=a["tx_hash"],
                block_number=a["block_number"],
                block_time=_rfc3339(a["block_time"]),
            )
            for a in await conn.fetch(
                "SELECT chain_id, contract, tx_hash, block_number, block_time FROM anchors "
                "WHERE log_size = $1 ORDER BY backend",
                head["log_size"],
            )
        )
        log_size: int = head["log_size"]
        log_root = bytes(head["root"])
        log_path = await self._log_path(conn, log_index, log_size, hasher=hasher)
        try:
            merkle.verify_inclusion(
                merkle.log_leaf_hash(batch_size, batch_root, hasher=hasher),
                log_index,
                log_size,
                log_path,
                log_root,
                hasher=hasher,
            )
        except merkle.ProofError as exc:
            raise StoreError(
                f"batch {batch_id} at log index {log_index}: stored log nodes do not lead to "
                f"the checkpoint root at size {log_size}: {exc.detail}",
                reason="log_inconsistent",
            ) from exc
        log = LogProof(index=log_index, size=log_size, root=log_root, path=tuple(log_path))
        extra = {} if hasher.name == merkle.SHA256.name else {"hash_scheme": hasher.name}
        receipts = []
        for r in envelopes:
            # An erased reading (sql/003_operator.sql) keeps its leaf and proofs; its receipt
            # has no envelope, status "erased" and the tombstone as the extra field "erasure".
            erasure = None
            if r["envelope"] is None:
                stone = await conn.fetchrow(
                    "SELECT erased_at, actor, legal_reason FROM reading_erasures "
                    "WHERE device_id = $1 AND seq = $2",
                    r["device_id"],
                    r["seq"],
                )
                if stone is None:
                    raise StoreError(
                        f"reading {r['device_id']} seq {r['seq']} was erased", reason="erased"
                    )
                erasure = {
                    "erased_at": _rfc3339(stone["erased_at"]),
                    "erased_by": stone["actor"],
                    "legal_reason": stone["legal_reason"],
                }
            index = r["batch_index"]
            receipts.append(
                Receipt(
                    device_id=r["device_id"],
                    seq=r["seq"],
                    format=r["format"],
                    envelope=b"" if erasure else bytes(r["envelope"]),
                    leaf_hash=leaves_and_paths[index][0],
                    batch=BatchProof(
                        size=batch_size,
                        index=index,
                        root=batch_root,
                        path=tuple(leaves_and_paths[index][1]),
                    ),
                    log=log,
                    checkpoint=head["note"],
                    anchors=anchors,
                    status="erased" if erasure else "anchored" if anchors else "sealed",
                    extra={**extra, "erasure": erasure} if erasure else extra,
                )
            )
        return receipts

    @staticmethod
    def _checked_paths(
        stored: Mapping[int, tuple[bytes, list[bytes]]] | None,
        size: int,
        root: bytes,
        hasher: merkle.Hasher,
    ) -> dict[int, tuple[bytes, list[bytes]]] | None:
        """The stored (leaf, path) pairs if every one leads to the stored root, else None (the
        caller then rebuilds the tree): a stored path is never handed out unchecked."""
        if not stored:
            return None
        for index, (leaf, path) in stored.items():
            try:
                merkle.verify_inclusion(leaf, index, size, path, root, hasher=hasher)
            except merkle.ProofError:
                return None
        return dict(stored)

    async def _batch_tree(
        self, conn: Any, batch_id: int, size: int, root: bytes, hasher: merkle.Hasher
    ) -> list[Sequence[bytes]]:
        """The batch's tree levels, checked against its stored root once, then cached."""
        key = (batch_id, hasher.name)
        levels = self._batch_trees.get(key)
        if levels is not None:
            self._batch_trees.move_to_end(key)
            return levels
        leaves = [
            bytes(r["leaf_hash"])
            for r in await conn.fetch(
                "SELECT leaf_hash FROM reading_seqs WHERE batch_id = $1 ORDER BY batch_index",
                batch_id,
            )
        ]
        levels = merkle.tree_levels(leaves, hasher=hasher)
        if len(leaves) != size or levels[-1][0] != root:
            raise StoreError(
                f"batch {batch_id}: its {len(leaves)} stored leaves do not recompute to its root",
                reason="log_inconsistent",
            )
        self._batch_trees[key] = levels
        if len(self._batch_trees) > BATCH_TREE_CACHE:
            self._batch_trees.popitem(last=False)
        return levels

    @staticmethod
    async def _log_path(conn: Any, index: int, size: int, *, hasher: merkle.Hasher) -> list[bytes]:
        return await Store._resolve_nodes(
            conn, log_inclusion_nodes(index, size), f"index {index} at size {size}", hasher=hasher
        )

    async def consistency_proof(
        self, old_size: int, new_size: int, *, hasher: merkle.Hasher = merkle.SHA256
    ) -> list[bytes]:
        """The RFC 9162 consistency proof between two log sizes, from stored log nodes.

        Raises ``StoreError`` (``not_found`` when ``new_size`` is beyond the log).
        """
        async with self._connection("consistency_proof") as conn:
            size = await conn.fetchval("SELECT coalesce(max(log_size), 0) FROM checkpoints")
            if not 0 <= old_size <= new_size <= size:
                raise _not_found(
                    f"no consistency proof from {old_size} to {new_size} (log size {size})"
                )
            return await self._resolve_nodes(
                conn,
                log_consistency_nodes(old_size, new_size),
                f"{old_size} -> {new_size}",
                hasher=hasher,
            )

    @staticmethod
    async def _resolve_nodes(
        conn: Any,
        elements: Sequence[Sequence[tuple[int, int]]],
        what: str,
        *,
        hasher: merkle.Hasher,
    ) -> list[bytes]:
        wanted = sorted({node for element in elements for node in element})
        found: dict[tuple[int, int], bytes] = {}
        if wanted:
            levels, idxs = zip(*wanted, strict=True)
            for row in await conn.fetch(
                "SELECT n.level, n.idx, n.hash FROM log_nodes n "
                "JOIN unnest($1::smallint[], $2::bigint[]) AS k(level, idx) "
                "ON n.level = k.level AND n.idx = k.idx",
                list(levels),
                list(idxs),
            ):
                found[(row["level"], row["idx"])] = bytes(row["hash"])
        missing = [n for n in wanted if n not in found]
        if missing:
            raise StoreError(
                f"log nodes {missing[:4]} missing for {what}", reason="log_inconsistent"
            )
        return [
            log_root_from_nodes([found[n] for n in element], hasher=hasher) for element in elements
        ]

    async def batch_leaf_hashes(self, batch_id: int) -> list[bytes]:
        """The batch's leaf hashes in batch order; raises ``StoreError`` (``not_found``)."""
        async with self._connection("batch_leaf_hashes") as conn:
            rows = await conn.fetch(
                "SELECT leaf_hash FROM reading_seqs WHERE batch_id = $1 ORDER BY batch_index",
                batch_id,
            )
        if not rows:
            raise _not_found(f"no batch {batch_id}")
        return [bytes(r["leaf_hash"]) for r in rows]

    async def log_entries(self, size: int) -> list[tuple[int, bytes]]:
        """The first ``size`` batches in log order as ``(batch size, batch root)``: what the
        log's leaves encode (:func:`anchor.merkle.log_leaf_data`). O(size)."""
        async with self._connection("log_entries") as conn:
            rows = await conn.fetch(
                "SELECT size, root FROM batches WHERE log_index < $1 ORDER BY log_index", size
            )
        return [(r["size"], bytes(r["root"])) for r in rows]

    async def counts(self) -> dict[str, int]:
        """Row counts for tests and metrics: ``readings``, ``batches``, ``log_size``,
        ``devices``, ``quarantine`` and ``quarantine.<reason>`` for each reason present."""
        async with self._connection("counts") as conn:
            row = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM reading_seqs) AS readings, "
                "(SELECT count(*) FROM batches) AS batches, "
                "(SELECT coalesce(max(log_size), 0) FROM checkpoints) AS log_size, "
                "(SELECT count(*) FROM devices) AS devices, "
                "(SELECT count(*) FROM quarantine) AS quarantine"
            )
            reasons = await conn.fetch(
                "SELECT reason, count(*) AS n FROM quarantine GROUP BY reason"
            )
        out = {k: int(v) for k, v in row.items()}
        out.update({f"quarantine.{r['reason']}": int(r["n"]) for r in reasons})
        return out

    # ---------------------------------------------------------------------------- anchoring
    async def latest_checkpoint_record(self) -> CheckpointRecord | None:
        """The newest checkpoint (size, root, signed note), or None for an empty log."""
        async with self._connection("latest_checkpoint_record") as conn:
            row = await conn.fetchrow(
                "SELECT log_size, root, note FROM checkpoints ORDER BY log_size DESC LIMIT 1"
            )
        return (
            None
            if row is None
            else CheckpointRecord(row["log_size"], bytes(row["root"]), row["note"])
        )

    async def last_anchor(self, backend: str) -> StoredAnchor | None:
        """The newest confirmed anchor of ``backend``, or None."""
        async with self._connection("last_anchor") as conn:
            row = await conn.fetchrow(
                f"SELECT {_ANCHOR_COLUMNS} FROM anchors WHERE backend = $1 "
                "ORDER BY log_size DESC LIMIT 1",
                backend,
            )
        return None if row is None else _stored_anchor(row)

    async def list_anchors(
        self, *, since_log_size: int = 0, limit: int = 100
    ) -> list[StoredAnchor]:
        """Confirmed anchors with ``log_size > since_log_size``, oldest first (a cursor)."""
        async with self._connection("list_anchors") as conn:
            rows = await conn.fetch(
                f"SELECT {_ANCHOR_COLUMNS} FROM anchors WHERE log_size > $1 "
                "ORDER BY log_size, backend LIMIT $2",
                since_log_size,
                max(1, min(limit, 1000)),
            )
        return [_stored_anchor(r) for r in rows]

    async def open_anchor_tx(self, backend: str) -> OpenAnchorTx | None:
        """The backend's newest transaction that is prepared or sent and not yet settled."""
        async with self._connection("open_anchor_tx") as conn:
            row = await conn.fetchrow(
                "SELECT id, backend, log_size, state, tx FROM anchor_txs "
                "WHERE backend = $1 AND state IN ('prepared', 'sent') ORDER BY id DESC LIMIT 1",
                backend,
            )
        if row is None:
            return None
        return OpenAnchorTx(
            row["id"],
            row["backend"],
            row["log_size"],
            row["state"],
            AnchorTx.from_json(json.loads(row["tx"])),
        )

    async def save_anchor_tx(
        self, tx: AnchorTx, log_size: int, *, replaces: int | None = None
    ) -> int:
        """Persist a signed transaction (state ``prepared``) BEFORE it is broadcast; when it
        ``replaces`` an earlier one (same slot, higher fee), mark that one ``replaced`` in the
        same transaction. Returns the new row id."""
        async with self._connection("save_anchor_tx") as conn, conn.transaction():
            if replaces is not None:
                await conn.execute(
                    "UPDATE anchor_txs SET state = 'replaced', updated_at = now() WHERE id = $1",
                    replaces,
                )
            # The same bytes again (a zero-fee chain signs a replacement, or a re-anchor after
            # a reorg, byte-identically: same nonce, same fields, RFC 6979): reopen that row.
            tx_id: int = await conn.fetchval(
                "INSERT INTO anchor_txs (backend, chain_id, contract, log_size, root, tx_hash, tx, "
                "state) VALUES ($1, $2, $3, $4, $5, $6, $7, 'prepared') "
                "ON CONFLICT (tx_hash) DO UPDATE SET state = 'prepared', detail = '', "
                "updated_at = now() RETURNING id",
                tx.backend,
                tx.chain_id,
                tx.contract,
                log_size,
                tx.root,
                tx.tx_hash,
                json.dumps(tx.to_json()),
            )
        return tx_id

    async def set_anchor_tx_state(self, tx_id: int, state: str, detail: str = "") -> None:
        async with self._connection("set_anchor_tx_state") as conn:
            await conn.execute(
                "UPDATE anchor_txs SET state = $2, detail = $3, updated_at = now() WHERE id = $1",
                tx_id,
                state,
                detail[:500],
            )

    async def record_anchor(
        self,
        backend: str,
        log_size: int,
        root: bytes,
        confirmation: AnchorConfirmation,
        *,
        tx_id: int | None = None,
    ) -> None:
        """Record a confirmed anchor (idempotent) and settle its transaction row."""
        async with self._connection("record_anchor") as conn, conn.transaction():
            stored_root = await conn.fetchval(
                "SELECT root FROM checkpoints WHERE log_size = $1", log_size
            )
            if stored_root is None or bytes(stored_root) != root:
                raise StoreError(
                    f"anchor of {root.hex()} names log size {log_size}, whose checkpoint root "
                    "differs",
                    reason="log_inconsistent",
                )
            await conn.execute(
                "INSERT INTO anchors (backend, chain_id, contract, log_size, root, tx_hash, "
                "block_number, block_time, block_hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
                "ON CONFLICT (backend, log_size) DO NOTHING",
                backend,
                confirmation.chain_id,
                confirmation.contract,
                log_size,
                root,
                confirmation.tx_hash,
                confirmation.block_number,
                confirmation.block_time,
                confirmation.block_hash,
            )
            if tx_id is not None:
                await conn.execute(
                    "UPDATE anchor_txs SET state = 'confirmed', updated_at = now() WHERE id = $1",
                    tx_id,
                )

    async def anchors_to_recheck(
        self, backend: str, *, min_block: int, limit: int = 1000
    ) -> list[StoredAnchor]:
        """``backend``'s anchors a reorg could still remove: those recorded at ``min_block`` or
        later, and always its newest one (receipts cite it), newest first, at most ``limit``."""
        async with self._connection("anchors_to_recheck") as conn:
            rows = await conn.fetch(
                f"SELECT {_ANCHOR_COLUMNS} FROM anchors WHERE backend = $1 AND (block_number >= $2 "
                "OR log_size = (SELECT max(log_size) FROM anchors WHERE backend = $1)) "
                "ORDER BY block_number DESC, log_size DESC LIMIT $3",
                backend,
                min_block,
                max(1, limit),
            )
        return [_stored_anchor(r) for r in rows]

    async def mark_anchor_vanished(self, anchor: StoredAnchor, *, reason: str, detail: str) -> bool:
        """Move ``anchor`` from ``anchors`` to ``vanished_anchors`` with ``reason`` (one
        transaction), so nothing cites it any more; False when it was no longer recorded (another
        job moved it, or it was recorded again meanwhile with another transaction)."""
        async with self._connection("mark_anchor_vanished") as conn, conn.transaction():
            row = await conn.fetchrow(
                "DELETE FROM anchors WHERE backend = $1 AND log_size = $2 AND tx_hash = $3 "
                "AND block_number = $4 RETURNING *",
                anchor.backend,
                anchor.log_size,
                anchor.tx_hash,
                anchor.block_number,
            )
            if row is None:
                return False
            await conn.execute(
                "INSERT INTO vanished_anchors (backend, chain_id, contract, log_size, root, "
                "tx_hash, block_number, block_time, block_hash, confirmed_at, reason, detail) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                row["backend"],
                row["chain_id"],
                row["contract"],
                row["log_size"],
                row["root"],
                row["tx_hash"],
                row["block_number"],
                row["block_time"],
                row["block_hash"],
                row["confirmed_at"],
                reason,
                detail[:500],
            )
            await conn.execute(
                "UPDATE anchor_txs SET detail = $2, updated_at = now() WHERE tx_hash = $1",
                anchor.tx_hash,
                f"[{reason}] {detail}"[:500],
            )
        return True

    async def vanished_anchors(self, *, limit: int = 100) -> list[VanishedAnchor]:
        """The anchors marked vanished, newest first."""
        async with self._connection("vanished_anchors") as conn:
            rows = await conn.fetch(
                f"SELECT {_ANCHOR_COLUMNS}, reason, detail, vanished_at FROM vanished_anchors "
                "ORDER BY id DESC LIMIT $1",
                max(1, min(limit, _MAX_LIST)),
            )
        return [
            VanishedAnchor(_stored_anchor(r), r["reason"], r["detail"], r["vanished_at"])
            for r in rows
        ]

    async def vanished_anchor_counts(self) -> dict[tuple[str, str], int]:
        """How many anchors vanished, per ``(backend, reason)`` (a metrics counter)."""
        async with self._connection("vanished_anchor_counts") as conn:
            rows = await conn.fetch(
                "SELECT backend, reason, count(*) AS n FROM vanished_anchors "
                "GROUP BY backend, reason"
            )
        return {(r["backend"], r["reason"]): int(r["n"]) for r in rows}

    async def checkpoint_for_root(self, root: bytes) -> CheckpointRecord | None:
        async with self._connection("checkpoint_for_root") as conn:
            row = await conn.fetchrow(
                "SELECT log_size, root, note FROM checkpoints WHERE root = $1 "
                "ORDER BY log_size LIMIT 1",
                root,
            )
        return (
            None
            if row is None
            else CheckpointRecord(row["log_size"], bytes(row["root"]), row["note"])
        )

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
            err = _translate(exc, "leadership")
            if err is None:
                raise
            raise err from exc
        try:
            await conn.execute("SELECT pg_advisory_lock($1)", lock)
            yield conn
        finally:
            with contextlib.suppress(Exception):
                await conn.close()

    # ---------------------------------------------------------------- public API reads
    async def batch_record(self, batch_id: int) -> BatchRecord:
        """A sealed batch with every leaf hash in batch order; raises ``StoreError``
        (``not_found``)."""
        return await self._batch_record("id", batch_id)

    async def batch_record_at(self, log_index: int) -> BatchRecord:
        """The batch at ``log_index`` in the batch log (how a receipt names its batch), as
        :meth:`batch_record`; raises ``StoreError`` (``not_found``)."""
        return await self._batch_record("log_index", log_index)

    async def _batch_record(self, column: str, value: int) -> BatchRecord:
        assert column in ("id", "log_index")
        what = "batch" if column == "id" else "batch at log index"
        if not 0 <= value <= MAX_STORED_INT:
            raise _not_found(f"no {what} {value}")
        async with (
            self._connection("batch_record") as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            row = await conn.fetchrow(
                f"SELECT id, size, root, log_index, sealed_at FROM batches WHERE {column} = $1",
                value,
            )
            if row is None:
                raise _not_found(f"no {what} {value}")
            leaves = await conn.fetch(
                "SELECT leaf_hash FROM reading_seqs WHERE batch_id = $1 ORDER BY batch_index",
                row["id"],
            )
        return BatchRecord(
            row["id"],
            row["size"],
            bytes(row["root"]),
            row["log_index"],
            row["sealed_at"],
            tuple(bytes(r["leaf_hash"]) for r in leaves),
        )

    async def anchors_page(
        self, *, since_log_size: int = 0, limit: int = 100
    ) -> tuple[list[StoredAnchor], int | None]:
        """Confirmed anchors of the first ``limit`` anchored log sizes above ``since_log_size``
        (every backend's anchor of a size on the same page), oldest first, and the cursor of
        the next page (None on the last page)."""
        limit = max(1, min(limit, _MAX_LIST))
        async with self._connection("anchors_page") as conn:
            sizes = [
                r["log_size"]
                for r in await conn.fetch(
                    "SELECT DISTINCT log_size FROM anchors WHERE log_size > $1 "
                    "ORDER BY log_size LIMIT $2",
                    since_log_size,
                    limit + 1,
                )
            ]
            page = sizes[:limit]
            rows = await conn.fetch(
                f"SELECT {_ANCHOR_COLUMNS} FROM anchors WHERE log_size = ANY($1::bigint[]) "
                "ORDER BY log_size, backend",
                page,
            )
        return [_stored_anchor(r) for r in rows], (page[-1] if len(sizes) > limit else None)

    async def completeness_proof(
        self, device_id: str, from_seq: int, to_seq: int, *, hasher: merkle.Hasher = merkle.SHA256
    ) -> CompletenessProof:
        """The completeness proof of the device's readings in ``[from_seq, to_seq]`` (clipped to
        its newest stored seq) against one checkpoint: the newest anchored one covering every
        batch involved, else the newest (see :mod:`anchor.completeness`).

        Raises ``StoreError``: ``device_id_invalid``, ``not_found`` (unregistered device, empty
        log), ``log_inconsistent`` (stored leaves or log nodes disagree with stored roots).
        """
        _check_device_id(device_id)
        async with (
            self._connection("completeness_proof") as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            if not await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM devices WHERE device_id = $1)", device_id
            ):
                raise _not_found(f"device {device_id} is not registered")
            latest: int = await conn.fetchval(
                "SELECT coalesce(max(seq), 0) FROM reading_seqs WHERE device_id = $1", device_id
            )
            hi = min(to_seq, latest)
            rows = await conn.fetch(
                "SELECT s.seq, s.leaf_hash, s.batch_id, s.batch_index, r.format, r.envelope "
                "FROM reading_seqs s JOIN readings r ON r.device_id = s.device_id "
                "AND r.seq = s.seq AND r.received_at = s.received_at "
                "WHERE s.device_id = $1 AND s.seq BETWEEN $2 AND $3 ORDER BY s.seq",
                device_id,
                from_seq,
                hi,
            )
            batch_ids = sorted({r["batch_id"] for r in rows})
            batch_rows = await conn.fetch(
                "SELECT id, root, log_index FROM batches WHERE id = ANY($1::bigint[])", batch_ids
            )
            leaves: dict[int, list[bytes]] = {b: [] for b in batch_ids}
            for r in await conn.fetch(
                "SELECT batch_id, leaf_hash FROM reading_seqs WHERE batch_id = ANY($1::bigint[]) "
                "ORDER BY batch_id, batch_index",
                batch_ids,
            ):
                leaves[r["batch_id"]].append(bytes(r["leaf_hash"]))
            top = max((b["log_index"] for b in batch_rows), default=-1)
            head = await conn.fetchrow(
                "SELECT c.log_size, c.root, c.note FROM checkpoints c WHERE c.log_size > $1 "
                "AND EXISTS (SELECT 1 FROM anchors a WHERE a.log_size = c.log_size) "
                "ORDER BY c.log_size DESC LIMIT 1",
                top,
            ) or await conn.fetchrow(
                "SELECT log_size, root, note FROM checkpoints ORDER BY log_size DESC LIMIT 1"
            )
            if head is None:
                raise _not_found("the batch log is empty")
            log_size: int = head["log_size"]
            anchors = [
                AnchorRecord(a["chain_id"], a["contract"], a["tx_hash"], a["block_number"],
                             _rfc3339(a["block_time"]))
                for a in await conn.fetch(
                    "SELECT chain_id, contract, tx_hash, block_number, block_time FROM anchors "
                    "WHERE log_size = $1 ORDER BY backend",
                    log_size,
                )
            ]  # fmt: skip
            elements: list[Sequence[tuple[int, int]]] = []
            spans: dict[int, tuple[int, int]] = {}
            for b in batch_rows:
                nodes = log_inclusion_nodes(b["log_index"], log_size)
                spans[b["id"]] = (len(elements), len(elements) + len(nodes))
                elements.extend(nodes)
            resolved = await self._resolve_nodes(
                conn, elements, f"completeness of {device_id}", hasher=hasher
            )
        batches: dict[int, StoredBatch] = {}
        for b in batch_rows:
            root = bytes(b["root"])
            if merkle.root(leaves[b["id"]], hasher=hasher) != root:
                raise StoreError(
                    f"batch {b['id']}: its stored leaves do not recompute to its root",
                    reason="log_inconsistent",
                )
            lo, end = spans[b["id"]]
            batches[b["id"]] = StoredBatch(
                b["id"], root, b["log_index"], tuple(leaves[b["id"]]), tuple(resolved[lo:end])
            )
        readings = [
            StoredReading(
                r["seq"],
                r["format"],
                None if r["envelope"] is None else bytes(r["envelope"]),
                bytes(r["leaf_hash"]),
                r["batch_id"],
                r["batch_index"],
            )
            for r in rows
        ]
        try:
            # Hashing every involved batch's tree is CPU work: keep it off the event loop.
            return await asyncio.to_thread(
                functools.partial(
                    build_completeness,
                    device_id=device_id,
                    from_seq=from_seq,
                    to_seq=max(hi, from_seq - 1),
                    latest_seq=latest,
                    readings=readings,
                    batches=batches,
                    log_size=log_size,
                    log_root=bytes(head["root"]),
                    checkpoint=head["note"],
                    anchors=anchors,
                    hasher=hasher,
                )
            )
        except AnchorError as exc:
            raise StoreError(exc.detail, reason="log_inconsistent") from exc


@dataclass(frozen=True, slots=True)
class BatchRecord:
    id: int
    size: int
    root: bytes
    log_index: int
    sealed_at: datetime
    leaf_hashes: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class CheckpointRecord:
    log_size: int
    root: bytes
    note: str


@dataclass(frozen=True, slots=True)
class StoredAnchor:
    backend: str
    chain_id: int
    contract: str
    log_size: int
    root: bytes
    tx_hash: str
    block_number: int
    block_time: datetime
    block_hash: bytes | None = None


@dataclass(frozen=True, slots=True)
class VanishedAnchor:
    """An anchor that was recorded as confirmed and then not found on chain as recorded."""

    anchor: StoredAnchor
    reason: str  # anchor_vanished
    detail: str
    vanished_at: datetime


@dataclass(frozen=True, slots=True)
class OpenAnchorTx:
    id: int
    backend: str
    log_size: int
    state: str
    tx: AnchorTx


_ANCHOR_COLUMNS = (
    "backend, chain_id, contract, log_size, root, tx_hash, block_number, block_time, block_hash"
)

# Store.receipt's one statement: the reading, its batch, the checkpoint to prove against (the
# newest anchored one covering the batch, else the newest) and that checkpoint's anchors.
_RECEIPT_SQL = """
WITH s AS (
    SELECT batch_id, batch_index, received_at, leaf_hash, batch_path
    FROM reading_seqs WHERE device_id = $1 AND seq = $2
), b AS (
    SELECT id, size, root, log_index FROM batches WHERE id = (SELECT batch_id FROM s)
), h AS (
    SELECT log_size, root, note FROM checkpoints WHERE log_size = coalesce(
        (SELECT max(log_size) FROM anchors WHERE log_size > (SELECT log_index FROM b)),
        (SELECT max(log_size) FROM checkpoints))
)
SELECT s.batch_id, s.batch_index, s.leaf_hash, s.batch_path,
       r.device_id, r.seq, r.format, r.envelope,
       b.size, b.root AS batch_root, b.log_index,
       h.log_size, h.root AS log_root, h.note,
       (SELECT coalesce(json_agg(json_build_object(
            'chain_id', a.chain_id, 'contract', a.contract, 'tx_hash', a.tx_hash,
            'block_number', a.block_number, 'block_time', a.block_time) ORDER BY a.backend),
            '[]')
        FROM anchors a WHERE a.log_size = h.log_size) AS anchors
FROM s
JOIN readings r ON r.device_id = $1 AND r.seq = $2 AND r.received_at = s.received_at
CROSS JOIN b
LEFT JOIN h ON true
"""


def _stored_anchor(row: Mapping[str, Any]) -> StoredAnchor:
    return StoredAnchor(
        row["backend"],
        row["chain_id"],
        row["contract"],
        row["log_size"],
        bytes(row["root"]),
        row["tx_hash"],
        row["block_number"],
        row["block_time"],
        None if row["block_hash"] is None else bytes(row["block_hash"]),
    )


def _rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
