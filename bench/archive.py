"""Archive benchmark (issue 16, "Retention without losing proofs"): archiving a month, receipts
from its file against receipts from the database, erasure in an archived month, restore.

    python bench/archive.py [--quick]

* **Fill.** A private PostgreSQL gets ``readings`` readings (quick: 10,000; full: 200,000) from
  ``bench/storage.py``'s simulator-like fleet, sealed with :meth:`anchor.store.Store.seal` in
  batches of 1000; the batches are then moved to a month two months back (``sealed_at``, the
  partition key) and the newest checkpoint is recorded as anchored.
* **Baseline.** Receipts of ``RECEIPTS`` random readings from the database (a fresh Store, so
  the per-batch caches start empty, as after a restart): ``db_receipt_p50_ms`` / ``p99``.
* **Measure.** :meth:`Store.archive_month` of that month: ``archive_s`` (write, fsync, re-read
  and check, manifest, detach and drop), ``file_bytes`` and ``file_bytes_per_reading`` against
  ``envelope_bytes_avg``, ``db_bytes_freed``; the same random receipts from the file
  (``archive_receipt_p50_ms`` / ``p99`` and their ratio to the database's); one erasure in the
  archived month (``erase_s``: the file rewritten); ``restore_s``.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from _common import BenchConfig, run_sections
from storage import BATCH, _fill_new, _fleet, _sign_all, _sizes

from anchor.anchoring.chains.base import AnchorConfirmation
from anchor.checkpoint import generate_note_key
from anchor.envelope import parse_envelope
from anchor.keys import PrivateKey
from anchor.local import PostgresServer
from anchor.store import DeviceSpec, Store
from anchor.store.operator import erase_reading

ORIGIN = "bench.cityanchor.example/archive"
SIZES = {True: 10_000, False: 200_000}
DEVICES = {True: 100, False: 1000}
RECEIPTS = 300


def _month_back(now: datetime, months: int) -> datetime:
    index = now.year * 12 + now.month - 1 - months
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def _receipts(dsn: str, keys: list[tuple[str, int]], archive: Path | None) -> list[float]:
    store = await Store.connect(dsn)
    store.use_archive_dir(archive)
    out = []
    try:
        for device_id, seq in keys:
            t = time.perf_counter()
            await store.receipt(device_id, seq)
            out.append(time.perf_counter() - t)
    finally:
        await store.close()
    return out


def archive_section(cfg: BenchConfig) -> dict[str, Any]:
    n, devices = SIZES[cfg.quick], DEVICES[cfg.quick]
    per = n // devices
    base = Path(tempfile.mkdtemp(prefix="cityanchor-bench-archive-"))
    os.chmod(base, 0o711)  # PostgreSQL drops to its own user and must reach its folder
    pg = PostgresServer(base / "pg")
    out_dir = base / "archive"
    out_dir.mkdir()
    figures: dict[str, Any] = {"devices": devices}
    try:
        pg.start()
        fleet = _fleet(devices)
        keys = [
            PrivateKey.generate("P-256" if key == "P-256" else "Ed25519") for _, _, key, _ in fleet
        ]
        envelopes = _sign_all(fleet, keys, per)
        operator = generate_note_key(ORIGIN)
        month = _month_back(datetime.now(UTC), 2)
        name = f"{month.year:04d}-{month.month:02d}"
        pg.create_database("bench")
        dsn = pg.dsn_for("bench")
        rng = random.Random(16)
        sample = [
            (r.device_id, r.seq)
            for r in (parse_envelope(e).reading for e in rng.sample(envelopes, RECEIPTS))
        ]

        async def fill() -> int:
            store = await Store.connect(dsn)
            try:
                await store.migrate()
                await store.ensure_partitions(3, start=month)
                await store.register_devices(
                    [
                        DeviceSpec(d, k.public_key, district="nanshan", kind=kind)
                        for (d, kind, _, _), k in zip(fleet, keys, strict=True)
                    ]
                )
            finally:
                await store.close()
            stored = await _fill_new(dsn, envelopes, operator)
            store = await Store.connect(dsn)
            try:
                conn = await asyncpg.connect(dsn)
                try:
                    # Sealed two months back: the partition key moves each packed row.
                    for table, column in (("batches", "id"), ("reading_batches", "batch_id")):
                        await conn.execute(
                            f"UPDATE {table} SET sealed_at = "
                            f"$1::timestamptz + {column} * interval '1 minute'",
                            month,
                        )
                finally:
                    await conn.close()
                cp = await store.latest_checkpoint_record()
                assert cp is not None
                await store.record_anchor(
                    "evm", cp.log_size, bytes(cp.root),
                    AnchorConfirmation(31337, "0x" + "11" * 20, "0x" + "ab" * 32, 1,
                                       datetime.now(UTC), 1, b"\x01" * 32),
                )  # fmt: skip
            finally:
                await store.close()
            return stored

        stored = asyncio.run(fill())
        pg.psql("VACUUM ANALYZE", database="bench")
        db_before, _ = asyncio.run(_sizes(dsn))
        db_times = asyncio.run(_receipts(dsn, sample, None))

        async def archive() -> tuple[float, Any]:
            store = await Store.connect(dsn, command_timeout=None)
            try:
                t = time.perf_counter()
                record, _ = await store.archive_month(name, out_dir)
                return time.perf_counter() - t, record
            finally:
                await store.close()

        archive_s, record = asyncio.run(archive())
        db_after, _ = asyncio.run(_sizes(dsn))
        file_times = asyncio.run(_receipts(dsn, sample, out_dir))

        async def erase_then_restore() -> tuple[float, float]:
            store = await Store.connect(dsn, command_timeout=None)
            store.use_archive_dir(out_dir)
            try:
                t = time.perf_counter()
                await erase_reading(store, *sample[0], actor="bench", legal_reason="bench")
                erase_s = time.perf_counter() - t
                t = time.perf_counter()
                await store.restore_month(name, out_dir)
                return erase_s, time.perf_counter() - t
            finally:
                await store.close()

        erase_s, restore_s = asyncio.run(erase_then_restore())
        env_avg = sum(len(e) for e in envelopes) / len(envelopes)
        db_p50, file_p50 = _pct(db_times, 0.5), _pct(file_times, 0.5)
        figures.update(
            readings=stored,
            batch=BATCH,
            envelope_bytes_avg=round(env_avg, 1),
            archive_s=round(archive_s, 3),
            archive_readings_per_s=round(stored / archive_s),
            file_bytes=record.bytes,
            file_bytes_per_reading=round(record.bytes / stored, 1),
            file_ratio=round(record.bytes / stored / env_avg, 3),
            db_bytes_freed=db_before - db_after,
            db_bytes_freed_per_reading=round((db_before - db_after) / stored, 1),
            db_receipt_p50_ms=round(db_p50 * 1000, 3),
            db_receipt_p99_ms=round(_pct(db_times, 0.99) * 1000, 3),
            archive_receipt_p50_ms=round(file_p50 * 1000, 3),
            archive_receipt_p99_ms=round(_pct(file_times, 0.99) * 1000, 3),
            archive_receipt_ratio=round(file_p50 / db_p50, 2),
            erase_s=round(erase_s, 3),
            restore_s=round(restore_s, 3),
            load1=os.getloadavg()[0],
        )
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)
    return figures


def main(argv: list[str] | None = None) -> int:
    run_sections("archive", [archive_section], argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
