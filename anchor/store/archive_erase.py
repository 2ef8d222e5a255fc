"""Erasure of a reading of an archived month (anchor.store.archives, "Erasure on an archived
month"): the month's file is written anew under the next generation's name with the envelope's
bytes zeroed; only the reading's batch line is decoded and re-encoded (each line is its own gzip
member), every other member is copied as it is. The tombstone and the new file's record commit
in one transaction; the manifest takes its place after that (:func:`recover_files` finishes it
after a crash).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anchor.store.archive_file as af
from anchor.store.archives import (
    ARCHIVE_COLUMNS,
    ArchiveRecord,
    archive_invalid,
    archive_record,
    archived_error,
    archived_place,
    check_line_against,
    directory_errors,
    month_bounds,
    recover_files,
)
from anchor.store.connection import ARCHIVE_LOCK, StoreBase
from anchor.store.packed import envelope_format

__all__ = ["erase_archived"]


def _recorded_manifest(directory: Path, record: ArchiveRecord) -> af.Manifest:
    """The month's manifest, once its file is shown to be the recorded one (SHA-256, size)."""
    try:
        manifest = af.parse_manifest((directory / af.manifest_name(record.month)).read_bytes())
        sha, size = af.file_sha256(directory / record.file)
    except (OSError, af.ArchiveFormatError) as exc:
        raise archive_invalid(f"archive of {record.month}: {exc}") from exc
    if manifest.file != record.file or (sha, size) != (record.sha256, record.bytes) or (
        manifest.sha256, manifest.bytes) != (sha, size):  # fmt: skip
        raise archive_invalid(f"archive of {record.month}: {record.file} is not the recorded file")
    return manifest


def _members(
    path: Path, manifest: af.Manifest, entry: af.ManifestBatch, changed: bytes
) -> Iterator[bytes]:
    """The file's members in order, ``changed`` in place of ``entry``'s."""
    with open(path, "rb") as f:
        for e in manifest.batches:
            if e.batch_id == entry.batch_id:
                yield changed
                continue
            f.seek(e.offset)
            data = f.read(e.length)
            if len(data) != e.length:
                raise archive_invalid(f"{path.name}: batch member at {e.offset} is cut short")
            yield data


async def erase_archived(
    store: StoreBase,
    device_id: str,
    seq: int,
    *,
    insert_tombstone: Callable[[Any, bytes, str], Any],
) -> Any | None:
    """Erase a reading of an archived month (see the module docstring). Returns what
    ``insert_tombstone(conn, leaf_hash, format)`` returned (it runs in the transaction that
    records the rewritten file), or None when the reading's month is not archived."""
    async with store._connection("erase_archived") as conn:
        place = await archived_place(conn, device_id, seq)
        if place is None:
            return None
        if store.archive_reader is None:
            raise archived_error(f"reading {device_id} seq {seq}", place["month"], place["file"])
        directory = store.archive_reader.directory
        await conn.execute("SELECT pg_advisory_lock($1)", ARCHIVE_LOCK)
        try:
            place = await archived_place(conn, device_id, seq)  # under the lock
            if place is None:
                return None  # restored meanwhile: the caller erases it in the database
            month = place["month"]
            record = archive_record(
                await conn.fetchrow(
                    f"SELECT {ARCHIVE_COLUMNS} FROM archives WHERE month = $1", month
                )
            )
            recover_files(directory, record)
            batches = await conn.fetch(
                "SELECT id, size, root, log_index FROM batches WHERE sealed_at >= $1 "
                "AND sealed_at < $2 ORDER BY log_index",
                *month_bounds(month),
            )
            # The file is the one archived and checked (its SHA-256 is the record's); only the
            # reading's batch line is decoded and re-encoded, every other member is copied.
            manifest = await asyncio.to_thread(_recorded_manifest, directory, record)
            entry = manifest.batch(place["batch_id"])
            batch = next((b for b in batches if b["id"] == place["batch_id"]), None)
            if entry is None or batch is None:
                raise archive_invalid(f"not erased: {record.file} has no batch {place['batch_id']}")
            old = directory / record.file
            line = af.read_member(old, entry.offset, entry.length)
            problem = check_line_against(line, batch)
            if problem is not None:
                raise archive_invalid(f"not erased: {record.file}: {problem}")
            index = place["batch_index"]
            envelope = line.envelope(index)
            leaf = line.leaves[32 * index : 32 * index + 32]
            changed = af.encode_line(af.erase_in_line(line, index))
            generation = record.generation + 1
            new_file = af.data_file_name(month, generation)
            entries: list[af.ManifestBatch] = []
            offset = 0
            for e in manifest.batches:
                length = len(changed) if e.batch_id == entry.batch_id else e.length
                entries.append(replace(e, offset=offset, length=length))
                offset += length
            with directory_errors(directory):
                sha, size = await asyncio.to_thread(
                    af.write_durably, directory / new_file, _members(old, manifest, entry, changed)
                )
                pending = directory / (af.manifest_name(month) + ".next")
                text = af.build_manifest(
                    month, new_file, entries=entries, sha256=sha, size=size,
                    created_at=manifest.created_at,
                )  # fmt: skip
                af.write_durably(pending, [text])
            async with conn.transaction():
                result = await insert_tombstone(conn, leaf, envelope_format(envelope))
                await conn.execute(
                    "UPDATE archives SET file = $2, sha256 = $3, bytes = $4, generation = $5 "
                    "WHERE month = $1",
                    month,
                    new_file,
                    sha,
                    size,
                    generation,
                )
            recover_files(
                directory,
                replace(record, file=new_file, sha256=sha, bytes=size, generation=generation),
            )
            return result
        finally:
            with contextlib.suppress(Exception):
                await conn.execute("SELECT pg_advisory_unlock($1)", ARCHIVE_LOCK)
