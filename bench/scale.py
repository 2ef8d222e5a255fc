"""Scale benchmark (issue 16): a store filled with millions of readings spread over 13 months;
receipt latency at random, seal latency under new load, bytes per reading, archiving a month.

    python bench/scale.py [--quick | --readings N | --sizes N,M | --huge] [--keep DIR | --reuse DIR]

Everything runs privately on this machine (a PostgreSQL of its own, in a temporary directory
unless ``--keep``/``--reuse``), against stable interfaces only: :meth:`anchor.store.Store.seal`,
``migrate`` and ``ensure_partitions``, the ``cityanchor api`` process over HTTP and the CLI.

* **Fill** (bench/_fill.py). ``readings`` readings (default 10,000,000; ``--quick`` 50,000;
  ``--huge`` 100,000,000 after checking free disk) from the simulator's fleet mix
  (devices.simulator.make_fleet: six IoT kinds and 5G, 20% P-256 keys, 30% JWS signers, the
  simulator's value generators; 100 devices, 1 more per 10,000 readings above 1M), every one a
  distinct envelope with a real signature, seq 1..n and the ``prev`` chain of its device, signed
  in a process pool (one process per core) and sealed through ``Store.seal`` in batches of 1000
  (10 devices interleaved). ``received_at`` runs forward over ``MONTHS`` (13) UTC months ending
  now, so the readings fill 13 monthly partitions (created up front with ``ensure_partitions``).
  ``fill_per_s`` is readings stored per second, signing included, with ``fill_load1``; progress
  lines (readings/s, ETA) go to stderr.
* **Storage.** After ``ANALYZE``: ``db_bytes`` is ``pg_total_relation_size`` summed over every
  table of the schema (heap, TOAST and indexes; partitions included), ``bytes_per_reading`` that
  over the readings stored, ``envelope_bytes_avg`` the mean envelope size (counted at the fill),
  ``storage_ratio`` their ratio (issue 16's aim: <= 1.5); ``tables`` the five largest tables
  (partitions summed into their parent), bytes per reading each.
* **Receipts.** ``cityanchor api --workers <cores>`` (rate limit off); one receipt fetched and
  verified offline first (``sample_valid``); then ``wrk -t1 -c16`` asks uniformly random stored
  readings (bench/_receipts.py, as bench/api.py): ``per_s``, ``p50_s``, ``p99_s``; baseline the
  trivial aiohttp endpoint driven the same way in the same run, ``ratio = per_s /
  baseline_per_s``. Rounds alternate (quick 1, full 2), best of each side kept.
* **Seal under load.** With the receipt load off, 10 fresh devices' readings, signed beforehand,
  are sealed through ``Store.seal`` at ``SEAL_RATE`` (1,000) readings/s in batches of
  ``SEAL_BATCH`` (100: ten seals a second, the ingestor's shape under a 100 ms batch age;
  its default is 1000 readings or 1 s) for ``seal_s`` seconds: ``seal_p50_s``, ``seal_p99_s``,
  ``seal_max_s`` and the rate achieved. The MQTT leg and the ingestor's checks are not included.
* **Archive.** If ``cityanchor archive --help`` exits 0 (the command of issue 16), the oldest
  month still in the store is archived with ``cityanchor archive --before <next month>
  --database-url DSN --dir DIR --allow-unanchored`` (the fill moves each batch's ``sealed_at``,
  the partition key, to the month its readings arrived in; no chain runs here, so nothing is
  anchored), in a directory of its own: ``archive.seconds``, ``archive.file_bytes`` (the
  files it wrote), ``archive.readings`` and ``archive.db_bytes_freed``. Otherwise ``archive``
  is null and ``archive_reason`` says why.
  Archiving changes the store, so it runs last; a kept directory records which months went, and
  later runs only ask receipts for readings still stored.

``--keep DIR`` fills into ``DIR`` (or reuses it when it holds a finished fill of that size) and
leaves it there; ``--reuse DIR`` requires such a fill. With ``--sizes`` each size has its own
directory ``DIR/rN`` and its own figures under ``sizes``; the top-level figures are the largest
size's. The last line is one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from _common import emit, parser
from _fill import (
    ZERO_PREV,
    FillDevice,
    FillPlan,
    fill,
    make_devices,
    month_start,
    months_between,
    sign_unit,
    spread_over_months,
)
from _receipts import CONNECTIONS, Load, Server, api_server, baseline_server, sample_valid
from _system import machine

from anchor.checkpoint import NoteSigner, generate_note_key
from anchor.envelope import parse_envelope
from anchor.keys import PrivateKey
from anchor.local import PostgresServer, free_port
from anchor.store import Store

DEFAULT_READINGS = 10_000_000
# 50,000: the fill costs ~0.5 ms of CPU a reading (signing, parsing, sealing), so 200,000 would
# take most of a minute on two idle cores before anything is measured.
QUICK_READINGS = 50_000
HUGE_READINGS = 100_000_000
MONTHS = 13
BATCH = 1000
GROUP = 10
ORIGIN = "bench.cityanchor.example/log"
API_WORKERS = int(os.environ.get("BENCH_API_WORKERS", str(os.cpu_count() or 1)))
DURATION_S = {True: 3, False: 10}
WARMUP_S = {True: 1, False: 2}
ROUNDS = {True: 1, False: 2}
SEAL_RATE = 1000  # readings/s of new load while the receipts are measured off
SEAL_BATCH = 100
SEAL_DEVICES = 10
SEAL_S = {True: 5, False: 30}
# Disk estimate: issue 16 measured 1,270 bytes a reading (tables + indexes) on the layout before
# it; WAL and the checkpoint in flight need room too. Refuse rather than fill the disk.
EST_BYTES_PER_READING = 1_400
EST_MARGIN = 1.3
EST_FIXED = 2 * 2**30
MANIFEST = "manifest.json"


# ------------------------------------------------------------------------------ pure helpers


def plan_for(readings: int, months: int = MONTHS, now: datetime | None = None) -> FillPlan:
    """The fill for about ``readings`` readings: 100 devices, one more per 10,000 readings
    above 1M (so a device holds at most ~10,000), rounded to whole batches."""
    devices = max(100, math.ceil(readings / 10_000 / GROUP) * GROUP)
    per_unit = BATCH // GROUP
    per_device = max(per_unit, readings // devices // per_unit * per_unit)
    return FillPlan(
        devices,
        per_device,
        batch=BATCH,
        group=GROUP,
        span=spread_over_months(months, now),
        values="simulated",
    )


def disk_needed(readings: int, bytes_per_reading: int = EST_BYTES_PER_READING) -> int:
    """Bytes of free disk a fill of ``readings`` needs (conservative)."""
    return int(readings * bytes_per_reading * EST_MARGIN) + EST_FIXED


def disk_refusal(free: int, readings: int) -> str | None:
    """Why a fill of ``readings`` must not start with ``free`` bytes free, or None."""
    need = disk_needed(readings)
    if free >= need:
        return None
    return (
        f"{readings:,} readings need about {need / 2**30:.0f} GiB free "
        f"({EST_BYTES_PER_READING} bytes a reading x {EST_MARGIN} + {EST_FIXED / 2**30:.0f} GiB), "
        f"only {free / 2**30:.0f} GiB are free: not starting"
    )


def quantile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return math.nan
    return sorted_values[max(0, math.ceil(p * len(sorted_values)) - 1)]


def archive_flags(help_text: str, out_dir: Path) -> list[str]:
    """Extra flags for ``cityanchor archive``: where to write, if its help names such a flag."""
    for flag in ("--out", "--dir", "--directory", "--to", "--archive-dir"):
        if re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text):
            return [flag, str(out_dir)]
    return []


# ------------------------------------------------------------------------------- manifest


@dataclass
class Data:
    """A filled data dir: its PostgreSQL, fleet, operator key and running counts."""

    base: Path
    pg: PostgresServer
    plan: FillPlan
    devices: list[FillDevice]
    operator: NoteSigner
    doc: dict[str, Any]

    def save(self) -> None:
        tmp = self.base / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(self.doc, indent=1))
        tmp.replace(self.base / MANIFEST)


def _plan_doc(plan: FillPlan) -> dict[str, Any]:
    assert plan.span is not None
    return {
        "devices": plan.devices,
        "per_device": plan.per_device,
        "batch": plan.batch,
        "group": plan.group,
        "span": [plan.span[0].isoformat(), plan.span[1].isoformat()],
        "values": plan.values,
    }


def _plan_of(doc: dict[str, Any]) -> FillPlan:
    lo, hi = (datetime.fromisoformat(x) for x in doc["span"])
    return FillPlan(
        doc["devices"], doc["per_device"], doc["batch"], doc["group"], (lo, hi), doc["values"]
    )


async def _fill_store(data: Data, cores: int) -> None:
    plan = data.plan
    assert plan.span is not None
    store = await Store.connect(data.pg.dsn)
    try:
        await store.migrate()
        # One partition per month of the span (migrate made this month's and two ahead).
        await store.ensure_partitions(MONTHS + 2, start=plan.span[0])
        result = await fill(
            store,
            plan,
            data.devices,
            data.operator,
            origin=ORIGIN,
            ingestor="bench-scale-fill",
            cores=cores,
            progress_s=10.0,
            label=f"fill {plan.readings:,}",
        )
        # Store.seal stamps sealed_at with now(); the batches were received over the months of
        # the span, and reading_batches is partitioned by sealed_at, so move each batch to the
        # month its readings arrived in (row movement between partitions) to give the archive
        # whole past months, as a store that ran for a year would have.
        moved = time.perf_counter()
        conn = await asyncpg.connect(data.pg.dsn)
        try:
            async with conn.transaction():
                await conn.execute(
                    "UPDATE batches b SET sealed_at = r.received_min FROM reading_batches r "
                    "WHERE r.batch_id = b.id"
                )
                await conn.execute("UPDATE reading_batches SET sealed_at = received_min")
            # FULL: the moved rows' old TOAST chunks would otherwise stay in the files as free
            # space and double bytes_per_reading; a store sealed over the months has none.
            await conn.execute("VACUUM FULL ANALYZE reading_batches")
            await conn.execute("VACUUM FULL ANALYZE batches")
            await conn.execute("ANALYZE")
        finally:
            await conn.close()
        print(
            f"  batches moved to their months in {time.perf_counter() - moved:.1f} s",
            file=sys.stderr,
            flush=True,
        )
    finally:
        await store.close()
    data.doc.update(
        filled=True,
        readings=result.readings,
        batches=result.batches,
        envelope_bytes=result.envelope_bytes,
        readings_live=result.readings,
        envelope_bytes_live=result.envelope_bytes,
        fill_s=result.seconds,
        fill_per_s=result.per_s,
    )


def open_data(base: Path, readings: int, *, must_exist: bool, cores: int) -> Data:
    """Start the PostgreSQL of ``base``; fill it first unless it holds a finished fill."""
    base.mkdir(parents=True, exist_ok=True)
    # PostgreSQL drops to its own user and must reach its folder.
    os.chmod(base, 0o711)
    path = base / MANIFEST
    doc = json.loads(path.read_text()) if path.exists() else None
    if doc is not None and doc.get("filled"):
        plan = _plan_of(doc["plan"])
        if plan.readings != plan_for(readings).readings:
            raise SystemExit(
                f"{base} holds a fill of {plan.readings:,} readings, not {readings:,}: "
                "use another directory"
            )
        pg = PostgresServer(base / "pg")
        pg.start()
        devices = [
            FillDevice(d["device_id"], d["pem"].encode(), d["kind"], d["district"], d["format"])
            for d in doc["fleet"]
        ]
        operator = NoteSigner.from_skey((base / "operator.skey").read_text().strip())
        print(f"  reusing {base}: {plan.readings:,} readings", file=sys.stderr, flush=True)
        return Data(base, pg, plan, devices, operator, doc)
    if must_exist:
        raise SystemExit(f"--reuse {base}: no finished fill there ({MANIFEST} missing)")
    if (base / "pg").exists():
        raise SystemExit(f"{base} holds an unfinished fill: remove it first")
    refusal = disk_refusal(shutil.disk_usage(base).free, readings)
    if refusal:
        raise SystemExit(f"scale: {refusal}")
    plan = plan_for(readings)
    devices = make_devices(plan.devices, simulated=True)
    operator = generate_note_key(ORIGIN)
    skey = base / "operator.skey"
    skey.touch(0o600)
    skey.write_text(operator.skey() + "\n")
    doc: dict[str, Any] = {
        "plan": _plan_doc(plan),
        "fleet": [
            {
                "device_id": d.device_id,
                "pem": d.pem.decode(),
                "kind": d.kind,
                "district": d.district,
                "format": d.format,
            }
            for d in devices
        ],
        "archived": [],
        "fill_load1": os.getloadavg()[0],
    }
    pg = PostgresServer(base / "pg")
    pg.start()
    data = Data(base, pg, plan, devices, operator, doc)
    try:
        asyncio.run(_fill_store(data, cores))
        pg.psql("ANALYZE")
    except BaseException:
        pg.stop()
        raise
    data.save()
    return data


# ------------------------------------------------------------------------------- storage

_SIZES_SQL = """
SELECT coalesce(pg_partition_root(c.oid), c.oid)::regclass::text,
       sum(pg_total_relation_size(c.oid))::bigint
FROM pg_class c
WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'm')
GROUP BY 1 ORDER BY 2 DESC
"""


def table_bytes(pg: PostgresServer) -> dict[str, int]:
    """Bytes of every table of the schema (heap, TOAST, indexes), partitions summed into their
    parent, largest first."""
    out: dict[str, int] = {}
    for line in pg.psql(_SIZES_SQL).strip().splitlines():
        name, size = line.rsplit("|", 1)
        out[name] = int(size)
    return out


def storage_figures(data: Data) -> dict[str, Any]:
    tables = table_bytes(data.pg)
    total = sum(tables.values())
    live = data.doc["readings_live"]
    env_avg = data.doc["envelope_bytes_live"] / live
    per_reading = total / live
    return {
        "db_bytes": total,
        "bytes_per_reading": per_reading,
        "envelope_bytes_avg": env_avg,
        "storage_ratio": per_reading / env_avg,
        "tables": {k: round(v / live, 1) for k, v in list(tables.items())[:5]},
    }


# ------------------------------------------------------------------------------- receipts


def live_seqs(data: Data) -> list[int]:
    """Per device, its lowest seq still stored (months archived by earlier runs are gone)."""
    archived = data.doc["archived"]
    if not archived:
        return [1] * data.plan.devices
    last = max(archived)
    cut = month_start(datetime.fromisoformat(f"{last}-01T00:00:00+00:00"), 1)
    per_group = data.plan.first_seq_from(cut)
    return [per_group[i // data.plan.group] for i in range(data.plan.devices)]


def receipt_figures(data: Data, quick: bool, repeat: int, work: Path) -> dict[str, Any]:
    lo = live_seqs(data)
    load = Load(work, [d.device_id for d in data.devices], data.plan.per_device, lo)
    skey = work / "operator.skey"
    skey.write_text(data.operator.skey() + "\n")
    servers: list[Server] = []
    try:
        baseline = baseline_server(free_port(), work / "baseline.log")
        servers.append(baseline)
        api = api_server(
            free_port(),
            work / "api.log",
            dsn=data.pg.dsn,
            operator_key_file=skey,
            origin=ORIGIN,
            workers=API_WORKERS,
        )
        servers.append(api)
        d0 = data.devices[0]
        seq = (lo[0] + data.plan.per_device) // 2
        valid = sample_valid(
            api, d0.device_id, seq, PrivateKey.from_pem(d0.pem).public_key, data.operator
        )
        best_b: tuple[dict[str, Any], float] | None = None
        best_a: tuple[dict[str, Any], float, float, float] | None = None
        for i in range(max(1, min(repeat, ROUNDS[quick]))):
            warm = WARMUP_S[quick] if i == 0 else 0
            load1 = os.getloadavg()[0]
            b, _, _ = load.measure(baseline, warm, DURATION_S[quick])
            if best_b is None or b["per_s"] > best_b[0]["per_s"]:
                best_b = (b, load1)
            load1 = os.getloadavg()[0]
            a, a_cores, pg_cores = load.measure(api, warm, DURATION_S[quick], data.pg)
            if best_a is None or a["per_s"] > best_a[0]["per_s"]:
                best_a = (a, a_cores, pg_cores, load1)
            print(
                f"  receipts round {i + 1}: {a['per_s']:,.0f}/s p99 {a['p99_s'] * 1000:.1f} ms, "
                f"baseline {b['per_s']:,.0f}/s, load1 {load1:.2f}",
                file=sys.stderr,
                flush=True,
            )
    finally:
        for s in servers:
            s.stop()
    assert best_a is not None and best_b is not None
    a, a_cores, pg_cores, load1 = best_a
    b, b_load1 = best_b
    return {
        "sample_valid": valid,
        "load_generator": load.name,
        "connections": CONNECTIONS,
        "per_s": a["per_s"],
        "p50_s": a["p50_s"],
        "p99_s": a["p99_s"],
        "errors": a["errors"],
        "api_cpu_cores": a_cores,
        "pg_cpu_cores": pg_cores,
        "load1": load1,
        "baseline_per_s": b["per_s"],
        "baseline_p50_s": b["p50_s"],
        "baseline_p99_s": b["p99_s"],
        "baseline_load1": b_load1,
        "ratio": a["per_s"] / b["per_s"],
    }


# ---------------------------------------------------------------------------- seal load


async def _seal_load(data: Data, seconds: float) -> dict[str, Any]:
    """Fresh devices' readings, signed first, sealed at SEAL_RATE in batches of SEAL_BATCH."""
    from anchor.sealing import Candidate

    nonce = secrets.token_hex(4)
    devices = [
        FillDevice(f"load-{nonce}-{i:02d}", PrivateKey.generate().to_pem(), "iot.noise", "load")
        for i in range(SEAL_DEVICES)
    ]
    batches = max(1, round(seconds * SEAL_RATE / SEAL_BATCH))
    per_unit = SEAL_BATCH // SEAL_DEVICES
    prevs = [ZERO_PREV] * SEAL_DEVICES
    raw_batches = []
    now_ms = int(time.time() * 1000)
    for b in range(batches):
        ts = [now_ms - 1000 * (per_unit - k) for k in range(per_unit)]
        envelopes, prevs = sign_unit(devices, b * per_unit + 1, prevs, ts, "counter")
        raw_batches.append(envelopes)
    store = await Store.connect(data.pg.dsn)
    latencies: list[float] = []
    stored = envelope_bytes = 0
    try:
        await store.register_devices([d.spec() for d in devices])
        topics = [f"city/load/{d.device_id}/readings" for d in devices]
        load1 = os.getloadavg()[0]
        t0 = time.perf_counter()
        for b, envelopes in enumerate(raw_batches):
            delay = t0 + b * SEAL_BATCH / SEAL_RATE - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            at = datetime.now(UTC)
            candidates = [
                Candidate(parse_envelope(raw), at, topics[i % SEAL_DEVICES])
                for i, raw in enumerate(envelopes)
            ]
            started = time.perf_counter()
            result = await store.seal(
                candidates, [], signer=data.operator, origin=ORIGIN, ingestor="bench-scale-load"
            )
            latencies.append(time.perf_counter() - started)
            stored += result.accepted
            envelope_bytes += sum(len(r) for r in envelopes)
        elapsed = time.perf_counter() - t0
    finally:
        await store.close()
    data.doc["readings_live"] += stored
    data.doc["envelope_bytes_live"] += envelope_bytes
    latencies.sort()
    return {
        "seal_batch": SEAL_BATCH,
        "seal_rate_target": SEAL_RATE,
        "seal_rate": stored / elapsed,
        "seal_count": len(latencies),
        "seal_p50_s": quantile(latencies, 0.50),
        "seal_p99_s": quantile(latencies, 0.99),
        "seal_max_s": latencies[-1],
        "seal_load1": load1,
    }


# ------------------------------------------------------------------------------- archive


def _cli(
    *args: str, env: dict[str, str], cwd: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "anchor", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def _tree_bytes(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def archive_figures(data: Data, work: Path) -> dict[str, Any]:
    """Archive the oldest month still stored with ``cityanchor archive``, if that exists."""
    env = dict(
        os.environ,
        CITYANCHOR_DATABASE_URL=data.pg.dsn,
        CITYANCHOR_LOG_ORIGIN=ORIGIN,
        CITYANCHOR_OPERATOR_KEY_FILE=str(work / "operator.skey"),
    )
    probe = _cli("archive", "--help", env=env, cwd=work, timeout=60)
    if probe.returncode != 0:
        return {
            "archive": None,
            "archive_reason": "`cityanchor archive --help` exits "
            f"{probe.returncode}: no archive command in this version",
        }
    assert data.plan.span is not None
    months = [m for m in months_between(*data.plan.span) if m not in data.doc["archived"]]
    if len(months) < 2:
        return {"archive": None, "archive_reason": "fewer than two months left in the store"}
    month, before = months[0], months[1]
    out = work / f"archive-{month}"
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o777)  # the command may hand the path to PostgreSQL (COPY TO)
    args = ["archive", "--before", before, "--database-url", data.pg.dsn]
    args += archive_flags(probe.stdout, out)
    if "--allow-unanchored" in probe.stdout:
        args.append("--allow-unanchored")  # no chain in this bench: nothing is anchored
    db_before = sum(table_bytes(data.pg).values())
    cut = datetime.fromisoformat(f"{before}-01T00:00:00+00:00")
    gone = sum((s - 1) * data.plan.group for s in data.plan.first_seq_from(cut))
    gone -= sum(
        (s - 1) * data.plan.group
        for s in data.plan.first_seq_from(datetime.fromisoformat(f"{month}-01T00:00:00+00:00"))
    )
    started = time.perf_counter()
    done = _cli(*args, env=env, cwd=out, timeout=6 * 3600)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        return {
            "archive": None,
            "archive_reason": f"`cityanchor {' '.join(args[:3])}` exited {done.returncode}: "
            + (done.stderr or done.stdout).replace(data.pg.dsn, "DSN")[-400:].strip(),
        }
    files, size = _tree_bytes(out)
    # Only the data dir's copy of the store changed; its manifest says the month is gone.
    avg = data.doc["envelope_bytes_live"] / data.doc["readings_live"]
    data.doc["archived"].append(month)
    data.doc["readings_live"] -= gone
    data.doc["envelope_bytes_live"] -= int(gone * avg)
    db_after = sum(table_bytes(data.pg).values())
    return {
        "archive": {
            "month": month,
            "command": f"cityanchor {' '.join(a if a != data.pg.dsn else 'DSN' for a in args)}",
            "seconds": seconds,
            "readings": gone,
            "files": files,
            "file_bytes": size,
            "file_bytes_per_reading": size / gone if gone else math.nan,
            "db_bytes_freed": db_before - db_after,
            "output_tail": done.stdout.replace(data.pg.dsn, "DSN")[-300:],
        },
        "archive_reason": None,
    }


# ------------------------------------------------------------------------------- one size


def measure(base: Path, readings: int, *, quick: bool, repeat: int, must_exist: bool) -> dict:
    data = open_data(base, readings, must_exist=must_exist, cores=os.cpu_count() or 1)
    work = Path(tempfile.mkdtemp(prefix="cityanchor-bench-scale-run-"))
    os.chmod(work, 0o711)  # an archive command may have PostgreSQL write below it
    try:
        figures: dict[str, Any] = {
            "readings": data.doc["readings_live"],
            "filled": data.doc["readings"],
            "devices": data.plan.devices,
            "months": len(months_between(*data.plan.span)) if data.plan.span else 0,
            "archived_months": list(data.doc["archived"]),
            "fill_s": data.doc["fill_s"],
            "fill_per_s": data.doc["fill_per_s"],
            "fill_load1": data.doc["fill_load1"],
        }
        figures.update(storage_figures(data))
        print(f"  storage: {json.dumps(figures)}", file=sys.stderr, flush=True)
        figures.update(receipt_figures(data, quick, repeat, work))
        figures.update(asyncio.run(_seal_load(data, SEAL_S[quick])))
        data.save()
        figures.update(archive_figures(data, work))
        data.save()
        return figures
    finally:
        data.pg.stop()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = parser("cityanchor benchmark: scale (issue 16)")
    p.add_argument("--readings", type=int, help=f"readings to fill (default {DEFAULT_READINGS:,})")
    p.add_argument("--sizes", help="comma-separated sizes, each measured on its own fill")
    p.add_argument("--huge", action="store_true", help=f"{HUGE_READINGS:,} readings (disk checked)")
    p.add_argument(
        "--keep", type=Path, metavar="DIR", help="fill into DIR (or reuse it) and keep it"
    )
    p.add_argument("--reuse", type=Path, metavar="DIR", help="measure the finished fill in DIR")
    args = p.parse_args(argv)
    if args.sizes:
        sizes = [int(x.replace("_", "")) for x in args.sizes.split(",")]
    elif args.readings:
        sizes = [args.readings]
    else:
        sizes = [QUICK_READINGS if args.quick else HUGE_READINGS if args.huge else DEFAULT_READINGS]
    keep = args.reuse or args.keep
    per_size: dict[str, Any] = {}
    for n in sizes:
        temp = keep is None
        base = (keep / f"r{n}" if len(sizes) > 1 else keep) if keep else None
        base = base or Path(tempfile.mkdtemp(prefix="cityanchor-bench-scale-"))
        print(f"[scale] {n:,} readings in {base}", flush=True)
        try:
            per_size[str(n)] = measure(
                base, n, quick=args.quick, repeat=args.repeat, must_exist=args.reuse is not None
            )
        finally:
            if temp:
                shutil.rmtree(base, ignore_errors=True)
    largest = per_size[str(max(sizes))]
    figures: dict[str, Any] = {
        "bench": "scale",
        "quick": args.quick,
        "machine": machine(),
        **{k: v for k, v in largest.items() if k != "tables"},
        "tables_bytes_per_reading": largest["tables"],
    }
    if len(sizes) > 1:
        small = per_size[str(min(sizes))]
        figures["sizes"] = per_size
        figures["growth"] = {
            k: largest[k] / small[k]
            for k in ("readings", "p50_s", "p99_s", "seal_p50_s", "seal_p99_s", "bytes_per_reading")
            if small.get(k)
        }
    emit(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
