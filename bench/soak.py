"""Soak: ``cityanchor up`` under steady load for a long time; is memory flat after warm-up?

    python bench/soak.py [--quick | --minutes N] [--rate 1000] [--plot PATH]

Starts ``cityanchor up --anchor-period 5s`` on a temporary data dir, registers devices through
``POST /v1/devices`` (each on its own MQTT login) and publishes signed readings at a steady rate
(QoS 1, plain paho v5 clients in this process, loopback only) for ``--minutes`` (default 60;
``--quick``: 5). Every ``--interval`` seconds (default 60; 30 with ``--quick``) it samples:

* the RSS and open file descriptors of every process of the system, grouped by role: ``up``
  itself, PostgreSQL (all its processes), Mosquitto, anvil, the ingestor, the ingestor's pool
  workers, the anchoring job and the API;
* PostgreSQL's database size (``pg_database_size``);
* seal latency (from a reading's arrival at the ingestor, ``received_at``, to the commit of its
  batch) p50 / p99 over the readings sealed since the previous sample, and the rate stored.

It writes a PNG plot (matplotlib) and the samples as JSON next to it, prints a table, and as its
last line one JSON object (DESIGN.md "Interfaces"; ``--quick`` takes 5 minutes, not 60 s, as
issue 11 asks of the soak). The baseline is the first sample after warm-up (a fifth of the run,
at least one interval): ``rss_ratio`` = total RSS at the end / at that baseline, and
``rss_growth_mb_per_h`` is the least-squares slope of total RSS after warm-up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import print_table
from _system import (
    Db,
    Fleet,
    Up,
    fd_count,
    machine,
    proc_table,
    pss_kb,
    register_devices,
    rss_kb,
    subcommand_of,
)

ROLES = ("up", "postgres", "mosquitto", "anvil", "ingest", "ingest-workers", "anchor", "api")


def _log(text: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {text}", flush=True)


def roles(up: Up) -> dict[str, list[int]]:
    """Every process of the system, by role."""
    table = proc_table()
    pids = up.processes()
    out: dict[str, list[int]] = {r: [] for r in ROLES}
    by_pid = {pid: table[pid] for pid in pids if pid in table}
    sub = {}
    for pid, (_, cmd) in by_pid.items():
        name = subcommand_of(cmd)
        if name in ("ingest", "anchor", "api"):
            sub[pid] = name
    for pid, (ppid, cmd) in by_pid.items():
        if pid == up.pid:
            out["up"].append(pid)
        elif pid in sub:
            out[sub[pid]].append(pid)
        elif sub.get(ppid) == "ingest":
            out["ingest-workers"].append(pid)
        elif "mosquitto" in cmd.split(" ", 1)[0]:
            out["mosquitto"].append(pid)
        elif "anvil" in cmd.split(" ", 1)[0]:
            out["anvil"].append(pid)
        elif cmd.startswith("postgres") or "/postgres " in cmd + " " or "postgres:" in cmd:
            out["postgres"].append(pid)
        elif sub.get(ppid):
            out[sub[ppid]].append(pid)  # helpers of the api / anchor processes
        else:
            out["up"].append(pid)
    return out


def sample(up: Up, db: Db, since: float, t0: float, fleet: Fleet) -> dict[str, Any]:
    now = time.time()
    by_role = roles(up)
    rss = {r: round(sum(rss_kb(p) for p in pids) / 1024, 1) for r, pids in by_role.items()}
    pss = {r: round(sum(pss_kb(p) for p in pids) / 1024, 1) for r, pids in by_role.items()}
    fds = {r: sum(fd_count(p) for p in pids) for r, pids in by_role.items()}
    lat = db.fetch(
        "SELECT count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY d), "
        "percentile_cont(0.99) WITHIN GROUP (ORDER BY d) FROM ("
        # Arrival at the ingestor to the commit (since 009 a reading's signed ts is only inside
        # its envelope; the device-to-ingestor leg is in bench/ingest.py's latency instead).
        "SELECT extract(epoch FROM b.sealed_at - s.received_at) AS d FROM reading_seqs s "
        "JOIN batches b ON b.id = s.batch_id WHERE b.sealed_at > to_timestamp($1)) x",
        since,
    )
    size = db.fetch("SELECT pg_database_size(current_database())")
    n, p50, p99 = (lat[0][0], lat[0][1], lat[0][2]) if lat else (0, None, None)
    return {
        "t_min": round((now - t0) / 60, 2),
        "rss_mb": rss,
        "rss_total_mb": round(sum(rss.values()), 1),
        "pss_mb": pss,
        "pss_total_mb": round(sum(pss.values()), 1),
        "fds": fds,
        "fds_total": sum(fds.values()),
        "processes": sum(len(p) for p in by_role.values()),
        "pg_mb": round(size[0][0] / 1024 / 1024, 1) if size else None,
        "stored_per_s": round(int(n) / max(1e-9, now - since), 1),
        "published": fleet.published,
        "seal_p50_s": None if p50 is None else round(float(p50), 3),
        "seal_p99_s": None if p99 is None else round(float(p99), 3),
    }


def plot(samples: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t_min"] for s in samples]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    ax = axes[0][0]
    for role in ROLES:
        ax.plot(t, [s["pss_mb"].get(role, 0) for s in samples], marker=".", label=role)
    ax.plot(t, [s["pss_total_mb"] for s in samples], "k-", label="total PSS")
    ax.plot(t, [s["rss_total_mb"] for s in samples], "k:", label="total RSS")
    ax.set_ylabel("MiB")
    ax.set_title("memory by process role (PSS: shared pages counted once)")
    ax.legend(fontsize=7, ncol=3)
    ax = axes[0][1]
    ax.plot(t, [s["fds_total"] for s in samples], marker=".", label="open fds (all)")
    ax.plot(t, [s["processes"] for s in samples], marker=".", label="processes")
    ax.set_title("open file descriptors, processes")
    ax.legend(fontsize=7)
    ax = axes[1][0]
    ax.plot(t, [s["pg_mb"] or 0 for s in samples], marker=".", color="tab:purple")
    ax.set_ylabel("MiB")
    ax.set_title("PostgreSQL database size")
    ax.set_xlabel("minutes")
    ax = axes[1][1]
    ax.plot(t, [s["seal_p50_s"] or 0 for s in samples], marker=".", label="seal p50")
    ax.plot(t, [s["seal_p99_s"] or 0 for s in samples], marker=".", label="seal p99")
    ax.set_ylabel("seconds")
    ax.set_xlabel("minutes")
    ax.set_title("seal latency (arrival -> batch commit)")
    ax2 = ax.twinx()
    ax2.plot(t, [s["stored_per_s"] for s in samples], color="gray", alpha=0.5, label="stored/s")
    ax2.set_ylabel("readings stored / s")
    ax.legend(fontsize=7, loc="upper left")
    ax2.legend(fontsize=7, loc="upper right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def slope_per_h(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (minutes, MiB) points, in MiB per hour."""
    if len(points) < 2:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 0.0 if den == 0 else 60 * sum((x - mx) * (y - my) for x, y in points) / den


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="cityanchor soak: memory, fds, size, latency")
    p.add_argument("--quick", action="store_true", help="5 minutes, a sample every 30 s")
    p.add_argument("--minutes", type=float, default=None, help="how long (default 60)")
    p.add_argument("--interval", type=float, default=None, help="seconds between samples")
    p.add_argument("--rate", type=float, default=1000.0, help="readings/s offered (default 1000)")
    p.add_argument("--devices", type=int, default=50)
    p.add_argument("--device", choices=("paho", "sdk"), default="paho")
    p.add_argument("--plot", type=Path, default=Path("bench-output/soak.png"))
    args = p.parse_args(argv)
    minutes = args.minutes or (5.0 if args.quick else 60.0)
    interval = args.interval or (30.0 if args.quick else 60.0)
    up = Up.fresh("soak-", anchor_period="5s")
    db = Db(lambda: up.dsn)
    samples: list[dict[str, Any]] = []
    fleet: Fleet | None = None
    try:
        _log(f"starting up in {up.data_dir}")
        up.start()
        devices = register_devices(up, args.devices, prefix="soak")
        workdir = Path(tempfile.mkdtemp(prefix="soak-dev-"))
        fleet = Fleet(up.doc["mqtt"], devices, mode=args.device, rate=args.rate,
                      workdir=workdir, record=False)  # fmt: skip
        fleet.connect()
        t0 = time.time()
        samples.append(sample(up, db, t0, t0, fleet))
        fleet.start()
        _log(f"{args.rate:g} readings/s from {args.devices} devices for {minutes:g} min")
        end = t0 + minutes * 60
        last = t0
        while time.time() < end:
            time.sleep(max(0.0, min(interval - (time.time() - last), end - time.time())))
            s = sample(up, db, last, t0, fleet)
            last = time.time()
            samples.append(s)
            _log(
                f"t={s['t_min']:.1f} min rss {s['rss_total_mb']} pss {s['pss_total_mb']} MiB "
                f"fds {s['fds_total']} "
                f"pg {s['pg_mb']} MiB stored {s['stored_per_s']}/s "
                f"seal p50 {s['seal_p50_s']} p99 {s['seal_p99_s']} s"
            )
        fleet.stop_load()
        codes = dict(fleet.codes.get(fleet.row, {}))
    finally:
        if fleet is not None:
            fleet.close()
        up.cleanup(remove=True)
    warm = max(1, len(samples) // 5)
    after = samples[warm:] or samples[-1:]
    base = after[0]
    elapsed_s = (samples[-1]["t_min"] - samples[0]["t_min"]) * 60
    loaded = samples[1:] or samples
    sustained = statistics.fmean(s["stored_per_s"] for s in loaded)
    title = (
        f"cityanchor soak: {args.rate:g}/s offered, {sustained:.0f}/s stored, "
        f"{minutes:g} min; {machine()}"
    )
    plot(samples, args.plot, title)
    args.plot.with_suffix(".json").write_text(json.dumps(samples, indent=1) + "\n")
    p99s = [s["seal_p99_s"] for s in after if s["seal_p99_s"] is not None]
    figures: dict[str, Any] = {
        "bench": "soak",
        "quick": args.quick,
        "minutes": minutes,
        "offered_per_s": args.rate,
        "published_per_s": round(samples[-1]["published"] / max(1e-9, elapsed_s), 1),
        "sustained_per_s": round(sustained, 1),
        "sustained_ratio": round(sustained / args.rate, 3),
        "puback_codes": {f"0x{c:02x}": n for c, n in sorted(codes.items())},
        "baseline_rss_mb": base["rss_total_mb"],
        "rss_end_mb": samples[-1]["rss_total_mb"],
        "rss_ratio": round(samples[-1]["rss_total_mb"] / max(1e-9, base["rss_total_mb"]), 3),
        "rss_growth_mb_per_h": round(
            slope_per_h([(s["t_min"], s["rss_total_mb"]) for s in after]), 1
        ),
        "rss_end_by_role_mb": samples[-1]["rss_mb"],
        "baseline_pss_mb": base["pss_total_mb"],
        "pss_end_mb": samples[-1]["pss_total_mb"],
        "pss_ratio": round(samples[-1]["pss_total_mb"] / max(1e-9, base["pss_total_mb"]), 3),
        "pss_growth_mb_per_h": round(
            slope_per_h([(s["t_min"], s["pss_total_mb"]) for s in after]), 1
        ),
        "pss_end_by_role_mb": samples[-1]["pss_mb"],
        "baseline_fds": base["fds_total"],
        "fds_end": samples[-1]["fds_total"],
        "pg_mb_end": samples[-1]["pg_mb"],
        "seal_p99_s_max": max(p99s) if p99s else None,
        "seal_p50_s_end": samples[-1]["seal_p50_s"],
        "plot": str(args.plot),
        "machine": machine(),
    }
    print_table({k: v for k, v in figures.items() if not isinstance(v, dict)})
    sys.stdout.flush()
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
