"""Archived months (``cityanchor archive``, sql/010_archives.sql): whole monthly partitions of
``reading_batches`` moved to files with every proof intact, served from them, restored, erased.

Crash safety of :meth:`ArchivesMixin.archive_month`. The steps are: write the month's file
(temporary name, fsync, rename, fsync of the directory), re-read it and check every batch against
the database, write the manifest the same way, and then ONE transaction inserts the ``archives``
row and detaches and drops the partition. A crash before that commit leaves the month in the
database (a file may be left over: the next run overwrites it); after it, the month is a complete,
verified file with its record. A second run skips an archived month, so re-running is idempotent.

Erasure on an archived month (:func:`erase_archived`) writes the batch's file anew under the next
generation's name with the envelope's bytes zeroed, fsyncs it, writes the new manifest as
``<month>.manifest.json.next``, then commits the tombstone and the new file's record in one
transaction, and only then puts the manifest in place and removes the old file. A crash between
is repaired by :func:`recover_files` (run first by every archive operation and by the audit):
the database's record decides which file and manifest are the month's.

Erasures and archiving: the archiving transaction locks the partition first and refuses (retryable,
``db_busy``) when the month's tombstones changed since its file was written.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anchor.store.archive_file as af
from anchor.errors import Reason, UsageError
from anchor.store.archive_file import ArchiveReader
from anchor.store.connection import ARCHIVE_LOCK, StoreBase
from anchor.store.errors import StoreError, not_found
from anchor.store.packed import PACKED_ROW
from anchor.store.schema import SchemaMixin

__all__ = [
    "ARCHIVE_COLUMNS",
    "PACKED_IF_STORED",
    "ArchiveReader",
    "ArchiveRecord",
    "ArchivesMixin",
    "archive_invalid",
    "archive_record",
    "archived_batch",
    "archived_error",
    "archived_place",
    "check_archive",
    "check_line_against",
    "directory_errors",
    "month_bounds",
    "parse_month",
    "recover_files",
    "refuse_archived_range",
]

_PARTITIONED = "reading_batches"
# reading_seqs ``s`` -> its batch ``bt`` -> its packed row ``p`` if its month is in the database
# (p's columns NULL for a reading of an archived month): anchor.store.packed.PACKED_JOIN, outer.
PACKED_IF_STORED = (
    "JOIN batches bt ON bt.id = s.batch_id "
    + PACKED_ROW.format(b="bt").replace("CROSS JOIN LATERAL", "LEFT JOIN LATERAL", 1)
    + " ON true"
)
assert "LEFT JOIN LATERAL" in PACKED_IF_STORED
ARCHIVE_COLUMNS = (
    "month, file, sha256, bytes, batches, readings, log_from, log_to, generation, "
    "archived_at, restored_at"
)
# The archived batch of a reading: its place, and its month's archive row (not restored).
_PLACE_SQL = """
SELECT s.batch_id, s.batch_index, a.month, a.file, a.sha256
FROM reading_seqs s JOIN devices d ON d.num = s.device_num
JOIN batches bt ON bt.id = s.batch_id
JOIN archives a ON a.month = to_char(bt.sealed_at AT TIME ZONE 'UTC', 'YYYY-MM')
    AND a.restored_at IS NULL
WHERE d.device_id = $1 AND s.seq = $2
"""
_ERASED_SQL = """
SELECT s.batch_id, s.batch_index FROM reading_erasures e
JOIN devices d ON d.device_id = e.device_id
JOIN reading_seqs s ON s.device_num = d.num AND s.seq = e.seq
WHERE s.batch_id = ANY($1::bigint[])
"""


def parse_month(text: str) -> tuple[int, int]:
    """``YYYY-MM`` as (year, month); ValueError otherwise."""
    if len(text) != 7 or text[4] != "-" or not (text[:4] + text[5:]).isdigit():
        raise ValueError(f"not a month YYYY-MM: {text!r}")
    year, month = int(text[:4]), int(text[5:])
    if not 1 <= month <= 12 or year < 1:
        raise ValueError(f"not a month YYYY-MM: {text!r}")
    return year, month


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """The UTC start of ``month`` and of the month after."""
    year, m = parse_month(month)
    nyear, nm = (year + 1, 1) if m == 12 else (year, m + 1)
    return datetime(year, m, 1, tzinfo=UTC), datetime(nyear, nm, 1, tzinfo=UTC)


def _partition(month: str) -> str:
    year, m = parse_month(month)
    return f"{_PARTITIONED}_y{year:04d}m{m:02d}"


@contextlib.contextmanager
def directory_errors(directory: Path) -> Iterator[None]:
    """A file error in the archive directory as the operator's (``UsageError``: the store's
    connection helper would report an ``OSError`` as the database being unreachable)."""
    try:
        yield
    except OSError as exc:
        raise UsageError(
            f"archive directory {directory}: {exc.strerror or exc}: {exc.filename or ''}"
        ) from exc


def archive_invalid(detail: str) -> StoreError:
    return StoreError(detail, reason=Reason.ARCHIVE_INVALID)


@dataclass(frozen=True, slots=True)
class ArchiveRecord:
    """A month's row in ``archives``; ``restored_at`` set: back in the database."""

    month: str
    file: str
    sha256: bytes
    bytes: int
    batches: int
    readings: int
    log_from: int
    log_to: int
    generation: int
    archived_at: datetime
    restored_at: datetime | None

    @property
    def state(self) -> str:
        return "restored" if self.restored_at is not None else "archived"


def archive_record(r: Mapping[str, Any]) -> ArchiveRecord:
    """An ``archives`` row as its record."""
    fields: dict[str, Any] = dict(r)
    fields["sha256"] = bytes(fields["sha256"])
    return ArchiveRecord(**fields)


def archived_error(what: str, month: str, file: str) -> StoreError:
    return StoreError(
        f"{what} is in the archived month {month}, file {file}: this process has no archive "
        "directory (--archive-dir / archive_dir); give it one, or restore the month with "
        f"`cityanchor archive restore --month {month} --dir DIR`",
        reason=Reason.READING_ARCHIVED,
    )


async def archived_place(conn: Any, device_id: str, seq: int) -> Mapping[str, Any] | None:
    """The reading's batch place and archive (batch_id, batch_index, month, file), or None when
    the reading does not exist or its month is in the database."""
    row: Mapping[str, Any] | None = await conn.fetchrow(_PLACE_SQL, device_id, seq)
    return row


async def refuse_archived_range(conn: Any, device_id: str, lo: int, hi: int) -> None:
    """Raise ``reading_archived`` when a reading of ``device_id`` with seq in ``lo..hi`` is in
    an archived month: a completeness proof must not present it as a gap."""
    row = await conn.fetchrow(
        "SELECT a.month, a.file FROM reading_seqs s JOIN devices d ON d.num = s.device_num "
        "JOIN batches bt ON bt.id = s.batch_id JOIN archives a ON a.month = "
        "to_char(bt.sealed_at AT TIME ZONE 'UTC', 'YYYY-MM') AND a.restored_at IS NULL "
        "WHERE d.device_id = $1 AND s.seq BETWEEN $2 AND $3 LIMIT 1",
        device_id,
        lo,
        hi,
    )
    if row is not None:
        raise StoreError(
            f"readings {device_id} seq {lo}..{hi} include the archived month {row['month']} "
            f"(file {row['file']}): a completeness proof over it needs the month restored "
            f"(`cityanchor archive restore --month {row['month']} --dir DIR`)",
            reason=Reason.READING_ARCHIVED,
        )


async def archived_batch(
    reader: ArchiveReader | None, conn: Any, batch_id: int, *, what: str | None = None
) -> af.BatchLine | None:
    """The archived batch's line from its file, or None when the batch is not archived; raises
    ``reading_archived`` when it is but ``reader`` is None, ``archive_invalid`` when the file
    does not hold it."""
    row = await conn.fetchrow(
        "SELECT a.month, a.file, a.sha256 FROM batches bt JOIN archives a ON a.month = "
        "to_char(bt.sealed_at AT TIME ZONE 'UTC', 'YYYY-MM') AND a.restored_at IS NULL "
        "WHERE bt.id = $1",
        batch_id,
    )
    if row is None:
        return None
    if reader is None:
        raise archived_error(what or f"batch {batch_id}", row["month"], row["file"])
    return await asyncio.to_thread(
        reader.batch, row["month"], row["file"], bytes(row["sha256"]), batch_id
    )


def recover_files(directory: Path, record: ArchiveRecord) -> None:
    """Finish or undo a file rewrite a crash interrupted (see the module docstring): the
    record's file is the month's; a pending manifest for it is put in place, one for another
    file is dropped with that file; older generations' files are removed."""
    with directory_errors(directory):
        _recover_files(directory, record)


def _recover_files(directory: Path, record: ArchiveRecord) -> None:
    pending = directory / (af.manifest_name(record.month) + ".next")
    if pending.exists():
        try:
            manifest = af.parse_manifest(pending.read_bytes())
        except af.ArchiveFormatError:
            manifest = None
        if manifest is not None and manifest.file == record.file:
            os.replace(pending, directory / af.manifest_name(record.month))
        else:
            if manifest is not None and manifest.file != record.file:
                with contextlib.suppress(FileNotFoundError):
                    (directory / manifest.file).unlink()
            pending.unlink()
        af.fsync_dir(directory)
    for generation in range(record.generation):
        old = directory / af.data_file_name(record.month, generation)
        if old.name != record.file and old.exists():
            old.unlink()


def check_line_against(line: af.BatchLine, batch: Mapping[str, Any]) -> str | None:
    if (line.batch_id, line.log_index, line.size, line.root) != (
        batch["id"],
        batch["log_index"],
        batch["size"],
        bytes(batch["root"]),
    ):
        return f"batch {line.batch_id}: id, log index, size or root differ from the database's"
    return af.check_line(line)


def check_archive(
    directory: Path, record: ArchiveRecord, batches: Sequence[Mapping[str, Any]]
) -> tuple[af.Manifest, list[str]]:
    """Check a month's file against its manifest, its record and the database's ``batches``
    rows of the month (in log order); returns the manifest and what does not check out."""
    path = directory / record.file
    try:
        manifest = af.parse_manifest((directory / af.manifest_name(record.month)).read_bytes())
    except (OSError, af.ArchiveFormatError) as exc:
        raise archive_invalid(f"archive of {record.month}: manifest: {exc}") from exc
    problems = []
    try:
        sha, size = af.file_sha256(path)
    except OSError as exc:
        raise archive_invalid(f"archive of {record.month}: {path}: {exc}") from exc
    if manifest.file != record.file or (manifest.sha256, manifest.bytes) != (sha, size):
        problems.append(f"{record.file}: SHA-256 {sha.hex()} ({size} bytes) is not the manifest's")
    if (record.sha256, record.bytes) != (sha, size):
        problems.append(f"{record.file}: SHA-256 {sha.hex()} is not the database record's")
    if [b.batch_id for b in manifest.batches] != [b["id"] for b in batches]:
        problems.append(f"{record.file}: the manifest's batches are not the month's batches")
        return manifest, problems
    for entry, batch in zip(manifest.batches, batches, strict=True):
        try:
            line = af.read_member(path, entry.offset, entry.length)
        except (OSError, af.ArchiveFormatError) as exc:
            problems.append(f"{record.file}: batch {entry.batch_id}: {exc}")
            continue
        problem = check_line_against(line, batch)
        if problem is None and (entry.log_index, entry.size, entry.root) != (
            line.log_index,
            line.size,
            line.root,
        ):
            problem = f"batch {line.batch_id}: the manifest's root differs"
        if problem is not None:
            problems.append(f"{record.file}: {problem}")
    return manifest, problems


Step = Callable[[str], None]


def _no_step(name: str) -> None:
    """Called after each step of archive_month (tests raise from it to simulate a crash)."""


class ArchivesMixin(StoreBase):
    """``archive_month``, ``restore_month``, ``archives`` and ``use_archive_dir``."""

    def use_archive_dir(self, directory: Path | str | None) -> None:
        """Serve receipts of archived months from ``directory`` (None: answer them
        ``reading_archived``)."""
        self.archive_reader = None if not directory else ArchiveReader(Path(directory))

    async def archives(self) -> list[ArchiveRecord]:
        """Every month ever archived, by month."""
        async with self._connection("archives") as conn:
            rows = await conn.fetch(f"SELECT {ARCHIVE_COLUMNS} FROM archives ORDER BY month")
        return [archive_record(r) for r in rows]

    async def months_to_archive(self, before: str) -> list[str]:
        """The months before ``before`` that hold batches in the database, oldest first."""
        lo, _ = month_bounds(before)
        async with self._connection("months_to_archive") as conn:
            rows = await conn.fetch(
                "SELECT DISTINCT to_char(sealed_at AT TIME ZONE 'UTC', 'YYYY-MM') AS month "
                "FROM batches WHERE sealed_at < $1 ORDER BY 1",
                lo,
            )
            done = {
                r["month"]
                for r in await conn.fetch("SELECT month FROM archives WHERE restored_at IS NULL")
            }
        return [r["month"] for r in rows if r["month"] not in done]

    async def archive_month(
        self,
        month: str,
        directory: Path,
        *,
        allow_unanchored: bool = False,
        after_step: Step = _no_step,
    ) -> tuple[ArchiveRecord, bool]:
        """Archive ``month`` into ``directory``; returns its record and whether it was archived
        now (False: it already was). Raises ``StoreError``: ``archive_unanchored``,
        ``archive_invalid`` (the file written does not read back), ``db_busy`` (an erasure
        in the month meanwhile: run again), ``conflict`` (the current month or later)."""
        lo, hi = month_bounds(month)
        name = _partition(month)
        async with self._connection("archive_month") as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", ARCHIVE_LOCK)
            try:
                existing = await conn.fetchrow(
                    f"SELECT {ARCHIVE_COLUMNS} FROM archives WHERE month = $1", month
                )
                if existing is not None and existing["restored_at"] is None:
                    recover_files(directory, archive_record(existing))
                    return archive_record(existing), False
                if hi > await conn.fetchval("SELECT date_trunc('month', now())"):
                    raise StoreError(
                        f"month {month} is not over: only months before the current one are "
                        "archived",
                        reason=Reason.CONFLICT,
                    )
                batches = await conn.fetch(
                    "SELECT id, size, root, log_index, sealed_at FROM batches "
                    "WHERE sealed_at >= $1 AND sealed_at < $2 ORDER BY log_index",
                    lo,
                    hi,
                )
                if not batches:
                    raise not_found(f"no batches sealed in {month}")
                anchored = await conn.fetchval("SELECT coalesce(max(log_size), 0) FROM anchors")
                last = batches[-1]["log_index"]
                if last >= anchored and not allow_unanchored:
                    raise StoreError(
                        f"month {month}: batch {batches[-1]['id']} (log index {last}) is not "
                        f"covered by an anchored checkpoint (anchored log size {anchored}); "
                        "wait for the anchoring job or pass --allow-unanchored",
                        reason=Reason.ARCHIVE_UNANCHORED,
                    )
                # The month's own partition (its rows moved out of the default partition).
                await SchemaMixin._ensure_partition(conn, name, lo, hi)
                after_step("partition")
                file = af.data_file_name(month)
                with directory_errors(directory):
                    members, erased = await self._write_month(
                        conn, name, batches, directory / file, after_step
                    )
                    after_step("file")
                    sha, size = af.file_sha256(directory / file)
                    manifest = af.build_manifest(
                        month, file, entries=members, sha256=sha, size=size,
                        created_at=datetime.now(UTC).isoformat(),
                    )  # fmt: skip
                    record = ArchiveRecord(
                        month, file, sha, size, len(members), sum(m.size for m in members),
                        batches[0]["log_index"], last, 0, datetime.now(UTC), None,
                    )  # fmt: skip
                    af.write_durably(directory / af.manifest_name(month), [manifest])
                _, problems = await asyncio.to_thread(check_archive, directory, record, batches)
                if problems:
                    raise archive_invalid(f"archive of {month} does not read back: {problems[0]}")
                after_step("verified")
                async with conn.transaction():
                    await conn.execute(f"LOCK TABLE {name} IN ACCESS EXCLUSIVE MODE")
                    now_erased = {
                        (r["batch_id"], r["batch_index"])
                        for r in await conn.fetch(_ERASED_SQL, [b["id"] for b in batches])
                    }
                    if now_erased != erased:
                        raise StoreError(
                            f"a reading of {month} was erased while it was archived: run again",
                            reason=Reason.DB_BUSY,
                        )
                    row = await conn.fetchrow(
                        "INSERT INTO archives (month, file, sha256, bytes, batches, readings, "
                        "log_from, log_to) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
                        "ON CONFLICT (month) DO UPDATE SET file = $2, sha256 = $3, bytes = $4, "
                        "batches = $5, readings = $6, log_from = $7, log_to = $8, "
                        "generation = 0, archived_at = now(), restored_at = NULL "
                        f"RETURNING {ARCHIVE_COLUMNS}",
                        month, file, sha, size, record.batches, record.readings,
                        record.log_from, record.log_to,
                    )  # fmt: skip
                    await conn.execute(f"ALTER TABLE {_PARTITIONED} DETACH PARTITION {name}")
                    after_step("detached")
                    await conn.execute(f"DROP TABLE {name}")
                after_step("dropped")
                return archive_record(row), True
            finally:
                with contextlib.suppress(Exception):
                    await conn.execute("SELECT pg_advisory_unlock($1)", ARCHIVE_LOCK)

    async def _write_month(
        self,
        conn: Any,
        partition: str,
        batches: Sequence[Mapping[str, Any]],
        path: Path,
        progress: Step,
    ) -> tuple[list[af.ManifestBatch], set[tuple[int, int]]]:
        """Write the partition's rows to ``path`` durably, in log order, from one snapshot;
        returns each line's manifest entry and the erased places."""
        by_id = {b["id"]: b for b in batches}
        members: list[af.ManifestBatch] = []
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            erased: set[tuple[int, int]] = {
                (r["batch_id"], r["batch_index"])
                for r in await conn.fetch(_ERASED_SQL, list(by_id))
            }
            stored = await conn.fetchval(f"SELECT count(*) FROM {partition}")
            if stored != len(batches):
                raise StoreError(
                    f"{partition} holds {stored} batches, the batch table {len(batches)}",
                    reason=Reason.LOG_INCONSISTENT,
                )
            offset = 0
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "wb") as f:
                for b in batches:
                    r = await conn.fetchrow(
                        "SELECT sealed_at, received_min, leaves, ends, envelopes "
                        f"FROM {partition} WHERE batch_id = $1",
                        b["id"],
                    )
                    if r is None:
                        raise StoreError(
                            f"batch {b['id']} has no row in {partition}",
                            reason=Reason.LOG_INCONSISTENT,
                        )
                    line = af.BatchLine(
                        b["id"], r["sealed_at"], r["received_min"], b["log_index"], b["size"],
                        bytes(b["root"]), bytes(r["leaves"]), bytes(r["ends"]),
                        bytes(r["envelopes"]),
                        tuple(sorted(i for (bid, i) in erased if bid == b["id"])),
                    )  # fmt: skip
                    problem = af.check_line(line)
                    if problem is not None:
                        raise archive_invalid(f"not archived: the database's {problem}")
                    member = await asyncio.to_thread(af.encode_line, line)
                    f.write(member)
                    members.append(af.place(line, offset, len(member)))
                    offset += len(member)
                    if len(members) % 200 == 0:
                        progress(f"writing: {len(members)}/{len(batches)} batches")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            af.fsync_dir(path.parent)
        return members, erased

    async def restore_month(self, month: str, directory: Path) -> tuple[ArchiveRecord, bool]:
        """Bring an archived month back into the database from its file, after checking the
        file against its manifest, its record and the batch roots; returns the record and
        whether it was restored now (False: it was not archived). Raises ``StoreError``
        (``archive_invalid``: nothing changed; ``not_found``: never archived)."""
        lo, hi = month_bounds(month)
        name = _partition(month)
        async with self._connection("restore_month") as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", ARCHIVE_LOCK)
            try:
                row = await conn.fetchrow(
                    f"SELECT {ARCHIVE_COLUMNS} FROM archives WHERE month = $1", month
                )
                if row is None:
                    raise not_found(f"month {month} was never archived")
                record = archive_record(row)
                if record.restored_at is not None:
                    return record, False
                recover_files(directory, record)
                batches = await conn.fetch(
                    "SELECT id, size, root, log_index FROM batches "
                    "WHERE sealed_at >= $1 AND sealed_at < $2 ORDER BY log_index",
                    lo,
                    hi,
                )
                manifest, problems = await asyncio.to_thread(
                    check_archive, directory, record, batches
                )
                if problems:
                    raise archive_invalid(f"not restored: {problems[0]}")
                path = directory / record.file
                async with conn.transaction():
                    await SchemaMixin._ensure_partition(conn, name, lo, hi)
                    await conn.copy_records_to_table(
                        name,
                        records=(
                            (b.batch_id, b.sealed_at, b.received_min, b.leaves, b.ends,
                             b.envelopes)
                            for _, b in af.iter_members(path, manifest)
                        ),
                        columns=("batch_id", "sealed_at", "received_min", "leaves", "ends",
                                 "envelopes"),
                    )  # fmt: skip
                    row = await conn.fetchrow(
                        f"UPDATE archives SET restored_at = now() WHERE month = $1 "
                        f"RETURNING {ARCHIVE_COLUMNS}",
                        month,
                    )
                return archive_record(row), True
            finally:
                with contextlib.suppress(Exception):
                    await conn.execute("SELECT pg_advisory_unlock($1)", ARCHIVE_LOCK)
