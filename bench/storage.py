"""Storage benchmark (issue 16): PostgreSQL bytes per stored reading, against the envelope.

    python bench/storage.py [--quick]

* **Fill.** A private PostgreSQL gets ``readings`` readings (quick: 20,000; full: 200,000) from
  a simulator-like fleet (quick: 200 devices, full: 1,000): the simulator's kinds and values
  (:func:`devices.readings.generate_values`), 20 % P-256 keys, 30 % JWS, the rest Ed25519 COSE,
  each device's seq 1..n ``prev``-chained, signed in a process pool and sealed with
  :meth:`anchor.store.Store.seal` in batches of 1000 (devices interleaved), so readings,
  batches, log nodes and checkpoints are written exactly as the ingestor writes them.
* **Measure.** ``VACUUM ANALYZE``, then the sum of ``pg_total_relation_size`` (heap, TOAST and
  indexes) of every table of the schema, partitions included, divided by the readings stored:
  ``bytes_per_reading``; ``envelope_bytes_avg`` is the mean envelope length and
  ``storage_ratio`` their ratio (issue 16 aims at <= 1.5). ``tables`` breaks the total down
  (bytes per reading per table). ``marginal_bytes_per_reading``: the growth over the second
  half of the fill divided by its readings (measured after a ``VACUUM ANALYZE`` at half).
* **Baseline.** The same envelopes written in the same run into a second database migrated only
  to 008, by 008's seal writes (a ``readings`` row and a ``reading_seqs`` row with its batch
  path per reading; the log rows as today): ``old_bytes_per_reading``, ``old_storage_ratio``.
* **Compression** (why the packed envelopes are stored uncompressed): one batch's concatenated
  envelopes stored compressed with ``pglz`` and ``lz4`` (when the server has it) and
  uncompressed out of line (``EXTERNAL``): the stored size of each against the raw bytes
  (``pglz_ratio``, ``lz4_ratio``), and the time to read all 1000 envelopes one substring() each,
  as receipts do (``slice_1000_external_s``, ``slice_1000_pglz_s``, ``slice_1000_lz4_s``): a
  compressed value is decompressed from its start for every slice.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from _common import BenchConfig, run_sections

from anchor import merkle
from anchor.checkpoint import Checkpoint, NoteSigner, generate_note_key, sign_checkpoint
from anchor.envelope import FORMAT_COSE, FORMAT_JWS, parse_envelope
from anchor.keys import PrivateKey
from anchor.local import PostgresServer
from anchor.sealing import Candidate
from anchor.store import SQL_DIR, DeviceSpec, Store

SIZES = {True: 20_000, False: 200_000}
DEVICES = {True: 200, False: 1000}
BATCH = 1000
ORIGIN = "bench.cityanchor.example/storage"
TS0_MS = 1_760_000_000_000
AIM_RATIO = 1.5


def _device_id(i: int) -> str:
    return f"sim-nanshan-{i:05d}"


def _fleet(n: int) -> list[tuple[str, str, str, str]]:
    """(device_id, kind, key type, format) per device, in the simulator's proportions."""
    from devices.readings import KINDS

    rng = random.Random(16)
    out = []
    for i in range(n):
        key = "P-256" if rng.random() < 0.2 else "Ed25519"
        fmt = FORMAT_JWS if rng.random() < 0.3 else FORMAT_COSE
        out.append((_device_id(i), sorted(KINDS)[i % len(KINDS)], key, fmt))
    return out


def _sign_device(device: tuple[str, str, str, str], pem: bytes, count: int) -> list[bytes]:
    """Worker process: one device's envelopes, seq 1..count, ``prev``-chained."""
    from devices.readings import generate_values
    from devices.signer import DeviceSigner

    device_id, kind, _, fmt = device
    signer = DeviceSigner(device_id, PrivateKey.from_pem(pem), format=fmt)
    rng = random.Random(device_id)
    out = []
    for n in range(1, count + 1):
        ts = TS0_MS + 60_000 * n
        values = generate_values(kind, rng, ts_ms=ts, device_id=device_id)
        out.append(signer.sign(kind, values, ts_ms=ts))
    return out


def _sign_all(
    fleet: list[tuple[str, str, str, str]], keys: list[PrivateKey], per: int
) -> list[bytes]:
    """Every envelope, interleaved across devices (batch k holds seq k.. of many devices)."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(os.cpu_count() or 1, mp_context=ctx) as pool:
        columns = list(
            pool.map(_sign_device, fleet, [k.to_pem() for k in keys], [per] * len(fleet))
        )
    return [env for row in zip(*columns, strict=True) for env in row]


async def _fill_new(dsn: str, envelopes: list[bytes], operator: NoteSigner) -> int:
    store = await Store.connect(dsn)
    stored = 0
    try:
        for b in range(0, len(envelopes), BATCH):
            now = datetime.now(UTC)
            cands = []
            for raw in envelopes[b : b + BATCH]:
                env = parse_envelope(raw)
                cands.append(Candidate(env, now, f"city/nanshan/{env.reading.device_id}/readings"))
            res = await store.seal(cands, [], signer=operator, origin=ORIGIN, ingestor="bench")
            if res.accepted != len(cands):
                raise RuntimeError(f"seal accepted {res.accepted} of {len(cands)}")
            stored += res.accepted
    finally:
        await store.close()
    return stored


async def _fill_old(dsn: str, envelopes: list[bytes], operator: NoteSigner) -> None:
    """008's seal writes (anchor/store/seal.py before 009) for fresh readings, batch by batch."""
    conn = await asyncpg.connect(dsn)
    try:
        for b in range(0, len(envelopes), BATCH):
            now = datetime.now(UTC)
            envs = [parse_envelope(raw) for raw in envelopes[b : b + BATCH]]
            leaves = [merkle.leaf_hash(e.raw) for e in envs]
            levels = merkle.tree_levels(leaves)
            async with conn.transaction():
                batch_id = await conn.fetchval("SELECT nextval('batch_ids')")
                head = await conn.fetchrow(
                    "SELECT log_size, frontier FROM checkpoints ORDER BY log_size DESC LIMIT 1"
                )
                size = head["log_size"] if head else 0
                frontier = [bytes(h) for h in head["frontier"]] if head else []
                new_frontier, nodes = merkle.compact_append_nodes(
                    frontier, size, merkle.log_leaf_hash(len(envs), levels[-1][0])
                )
                log_root = merkle.compact_root(new_frontier)
                note = sign_checkpoint(Checkpoint(ORIGIN, size + 1, log_root), operator)
                await conn.execute(
                    "INSERT INTO batches (id, size, root, log_index, ingestor) "
                    "VALUES ($1, $2, $3, $4, 'bench')",
                    batch_id, len(envs), levels[-1][0], size,
                )  # fmt: skip
                await conn.execute(
                    "INSERT INTO checkpoints (log_size, root, note, frontier) "
                    "VALUES ($1, $2, $3, $4)",
                    size + 1, log_root, note, new_frontier,
                )  # fmt: skip
                await conn.copy_records_to_table(
                    "log_nodes", records=nodes, columns=("level", "idx", "hash")
                )
                readings, seqs = [], []
                for i, (e, leaf) in enumerate(zip(envs, leaves, strict=True)):
                    r = e.reading
                    readings.append(
                        (r.device_id, r.seq, r.ts, now, e.format, r.kind, e.kid, e.raw, leaf,
                         batch_id, i)
                    )  # fmt: skip
                    path = b"".join(merkle.path_from_levels(levels, i))
                    seqs.append((r.device_id, r.seq, leaf, batch_id, i, now, path))
                await conn.copy_records_to_table(
                    "readings",
                    records=readings,
                    columns=(
                        "device_id", "seq", "ts", "received_at", "format", "kind", "kid",
                        "envelope", "leaf_hash", "batch_id", "batch_index",
                    ),
                )  # fmt: skip
                await conn.copy_records_to_table(
                    "reading_seqs",
                    records=seqs,
                    columns=(
                        "device_id", "seq", "leaf_hash", "batch_id", "batch_index",
                        "received_at", "batch_path",
                    ),
                )  # fmt: skip
    finally:
        await conn.close()


async def _sizes(dsn: str) -> tuple[int, dict[str, int]]:
    """Total bytes of every table (heap + TOAST + indexes, partitions included), and the
    biggest ones by name (partitions summed into their parent)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT coalesce(p.relname, c.relname) AS name, "
            "sum(pg_total_relation_size(c.oid))::bigint AS bytes FROM pg_class c "
            "LEFT JOIN pg_inherits i ON i.inhrelid = c.oid "
            "LEFT JOIN pg_class p ON p.oid = i.inhparent "
            "WHERE c.relkind = 'r' AND c.relnamespace = current_schema()::regnamespace "
            "GROUP BY 1 ORDER BY 2 DESC"
        )
    finally:
        await conn.close()
    return sum(r["bytes"] for r in rows), {r["name"]: r["bytes"] for r in rows if r["bytes"]}


async def _compression(dsn: str, envelopes: list[bytes]) -> dict[str, Any]:
    """One batch's envelopes stored three ways: size and the time of 1000 slices each."""
    batch = envelopes[:BATCH]
    blob = b"".join(batch)
    ends = []
    end = 0
    for e in batch:
        ends.append((end, len(e)))
        end += len(e)
    out: dict[str, Any] = {"compression_sample_bytes": len(blob)}
    conn = await asyncpg.connect(dsn)
    try:
        for name, storage, method in (
            ("external", "EXTERNAL", "pglz"),
            ("pglz", "EXTENDED", "pglz"),
            ("lz4", "EXTENDED", "lz4"),
        ):
            table = f"bench_compress_{name}"
            try:
                await conn.execute(
                    f"CREATE TABLE {table} (id int PRIMARY KEY, v bytea COMPRESSION {method}); "
                    f"ALTER TABLE {table} ALTER COLUMN v SET STORAGE {storage}"
                )
            except asyncpg.PostgresError as exc:  # lz4 not built into this server
                out[f"{name}_ratio"] = f"unavailable: {exc}"
                continue
            await conn.execute(f"INSERT INTO {table} VALUES (1, $1)", blob)
            stored = await conn.fetchval(f"SELECT pg_column_size(v) FROM {table}")
            offs, lens = [o for o, _ in ends], [n for _, n in ends]
            sql = (
                f"SELECT sum(length(substring(t.v FROM k.o + 1 FOR k.n))) FROM {table} t, "
                "unnest($1::int[], $2::int[]) AS k(o, n) WHERE t.id = 1"
            )
            await conn.fetchval(sql, offs, lens)  # warm
            t0 = time.perf_counter()
            await conn.fetchval(sql, offs, lens)
            out[f"{name}_ratio"] = round(stored / len(blob), 3)
            out[f"slice_1000_{name}_s"] = time.perf_counter() - t0
            await conn.execute(f"DROP TABLE {table}")
    finally:
        await conn.close()
    return out


def storage_section(cfg: BenchConfig) -> dict[str, Any]:
    n, devices = SIZES[cfg.quick], DEVICES[cfg.quick]
    per = n // devices
    base = Path(tempfile.mkdtemp(prefix="cityanchor-bench-storage-"))
    os.chmod(base, 0o711)  # PostgreSQL drops to its own user and must reach its folder
    pg = PostgresServer(base / "pg")
    figures: dict[str, Any] = {"devices": devices}
    try:
        pg.start()
        fleet = _fleet(devices)
        keys = [
            PrivateKey.generate("P-256" if key == "P-256" else "Ed25519") for _, _, key, _ in fleet
        ]
        t0 = time.perf_counter()
        envelopes = _sign_all(fleet, keys, per)
        sign_s = time.perf_counter() - t0
        operator = generate_note_key(ORIGIN)
        old_sql = base / "sql-008"
        old_sql.mkdir()
        for path in SQL_DIR.glob("[0-9]*_*.sql"):
            if int(path.name.split("_", 1)[0]) <= 8:
                shutil.copy(path, old_sql / path.name)

        half = (len(envelopes) // 2 // BATCH) * BATCH

        async def fill() -> tuple[int, float, float, int]:
            specs = [
                DeviceSpec(d, k.public_key, district="nanshan", kind=kind)
                for (d, kind, _, _), k in zip(fleet, keys, strict=True)
            ]
            for name, directory in (("new", None), ("old", old_sql)):
                pg.create_database(f"bench_{name}")
                store = await Store.connect(pg.dsn_for(f"bench_{name}"))
                try:
                    await store.migrate(directory=directory)
                    await store.register_devices(specs)
                finally:
                    await store.close()
            t = time.perf_counter()
            stored = await _fill_new(pg.dsn_for("bench_new"), envelopes[:half], operator)
            new_s = time.perf_counter() - t
            pg.psql("VACUUM ANALYZE", database="bench_new")
            at_half, _ = await _sizes(pg.dsn_for("bench_new"))
            t = time.perf_counter()
            stored += await _fill_new(pg.dsn_for("bench_new"), envelopes[half:], operator)
            new_s += time.perf_counter() - t
            t = time.perf_counter()
            await _fill_old(pg.dsn_for("bench_old"), envelopes, operator)
            return stored, new_s, time.perf_counter() - t, at_half

        stored, new_s, old_s, at_half = asyncio.run(fill())
        for name in ("new", "old"):
            pg.psql("VACUUM ANALYZE", database=f"bench_{name}")
        total, tables = asyncio.run(_sizes(pg.dsn_for("bench_new")))
        old_total, old_tables = asyncio.run(_sizes(pg.dsn_for("bench_old")))
        env_avg = sum(len(e) for e in envelopes) / len(envelopes)
        figures.update(
            readings=stored,
            sign_s=sign_s,
            seal_s=new_s,
            seal_per_s=stored / new_s,
            old_write_s=old_s,
            tables={k: round(v / stored, 1) for k, v in list(tables.items())[:8]},
            old_tables={k: round(v / stored, 1) for k, v in list(old_tables.items())[:8]},
            old_bytes_per_reading=round(old_total / stored, 1),
            old_storage_ratio=round(old_total / stored / env_avg, 3),
        )
        figures.update(asyncio.run(_compression(pg.dsn_for("bench_new"), envelopes)))
        figures.update(
            load1=os.getloadavg()[0],
            # What each further reading adds (the second half of the fill): the fixed costs
            # (empty partitions, per-device rows, catalog-sized tables) left out.
            marginal_bytes_per_reading=round((total - at_half) / (stored - half), 1),
            bytes_per_reading=round(total / stored, 1),
            envelope_bytes_avg=round(env_avg, 1),
            storage_ratio=round(total / stored / env_avg, 3),
        )
        figures["meets_aim"] = figures["storage_ratio"] <= AIM_RATIO
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)
    return figures


def main(argv: list[str] | None = None) -> int:
    run_sections("storage", [storage_section], argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
