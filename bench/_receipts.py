"""Serving and loading receipts, shared by ``bench/api.py`` and ``bench/scale.py``: a child
HTTP server (``cityanchor api`` or the trivial baseline app), CPU accounting through ``/proc``,
and the load generator asking ``GET /v1/receipts/{device_id}/{seq}`` for uniformly random
stored readings: ``wrk`` (one thread, a Lua script) when it is on the PATH, else an aiohttp
client in a separate process.
"""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from anchor.checkpoint import NoteSigner
from anchor.keys import PublicKey
from anchor.local import PostgresServer

CONNECTIONS = 16

BASELINE_APP = """
import sys
from aiohttp import web

BODY = {"status": "ok", "bench": "baseline"}


async def receipt(request):
    return web.json_response(BODY)


app = web.Application()
app.router.add_get("/v1/receipts/{device_id}/{seq}", receipt)
app.router.add_get("/healthz", receipt)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""

_WRK_SCRIPT = """
math.randomseed(%(seed)d)
local ids = {%(ids)s}
local lo = {%(lo)s}
request = function()
  local i = math.random(1, #ids)
  local path = string.format("/v1/receipts/%%s/%%d", ids[i], math.random(lo[i], %(hi)d))
  return wrk.format("GET", path)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%%d,"duration_us":%%d,"errors":%%d,"p50_us":%%d,"p99_us":%%d,' ..
    '"max_us":%%d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def cpu_s(pid: int) -> float:
    """User + system CPU seconds ``pid`` used so far (``/proc/PID/stat``); 0 once gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pg_cpu(pg: PostgresServer) -> dict[int, float]:
    """CPU seconds of the postmaster and each of its children (the backends), by pid."""
    root = pg.pid
    if root is None:
        return {}
    try:
        children = Path(f"/proc/{root}/task/{root}/children").read_text().split()
    except OSError:
        children = []
    return {pid: cpu_s(pid) for pid in [root, *map(int, children)]}


class Server:
    """A child process serving HTTP on ``port``, up once ``/healthz`` answers 200."""

    def __init__(self, args: list[str], env: dict[str, str], port: int, log_path: Path) -> None:
        self.port = port
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(args, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(self.url("/healthz"), timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{' '.join(args[:4])} did not start:\n{tail}")
            time.sleep(0.05)

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def cpu_s(self) -> float:
        """CPU seconds of the process and its children (``--workers N`` serves in children)."""
        pid = self.proc.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            children = []
        return cpu_s(pid) + sum(cpu_s(int(c)) for c in children)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def baseline_server(port: int, log_path: Path) -> Server:
    """The trivial aiohttp app (same route shape, a constant small JSON), in its own process."""
    return Server([sys.executable, "-c", BASELINE_APP, str(port)], dict(os.environ), port, log_path)


def api_server(
    port: int, log_path: Path, *, dsn: str, operator_key_file: Path, origin: str, workers: int
) -> Server:
    """``cityanchor api`` with the per-client rate limit off (it would otherwise be the figure)."""
    env = dict(
        os.environ,
        CITYANCHOR_DATABASE_URL=dsn,
        CITYANCHOR_OPERATOR_KEY_FILE=str(operator_key_file),
        CITYANCHOR_LOG_ORIGIN=origin,
        CITYANCHOR_API_RATE_PER_S="0",
    )
    return Server(
        [sys.executable, "-m", "anchor", "-v", "api", "--host", "127.0.0.1",
         "--port", str(port), "--workers", str(workers)],
        env,
        port,
        log_path,
    )  # fmt: skip


# -------------------------------------------------------------------------- load generators


def _wrk(url: str, script: Path, seconds: float) -> dict[str, Any]:
    out = subprocess.run(
        [
            "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "5s",
            "-s", str(script), url,
        ],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    )  # fmt: skip
    line = next(x for x in out.stdout.splitlines() if x.startswith("WRKJSON "))
    raw = json.loads(line.removeprefix("WRKJSON "))
    ok = raw["requests"] - raw["errors"]
    return {
        "per_s": ok / (raw["duration_us"] / 1e6),
        "p50_s": raw["p50_us"] / 1e6,
        "p99_s": raw["p99_us"] / 1e6,
        "max_s": raw["max_us"] / 1e6,
        "requests": raw["requests"],
        "errors": raw["errors"],
    }


def _client_load(
    url: str, ids: Sequence[str], lo: Sequence[int], hi: int, seconds: float
) -> dict[str, Any]:
    """Child process: ``connections`` aiohttp keep-alive clients asking random receipts."""
    import aiohttp

    async def run() -> tuple[list[float], int, float]:
        latencies: list[float] = []
        errors = 0
        connector = aiohttp.TCPConnector(limit=CONNECTIONS, force_close=False)
        async with aiohttp.ClientSession(connector=connector) as session:
            start = time.perf_counter()
            stop_at = start + seconds

            async def one() -> None:
                nonlocal errors
                rng = random.Random()
                while time.perf_counter() < stop_at:
                    i = rng.randrange(len(ids))
                    path = f"/v1/receipts/{ids[i]}/{rng.randint(lo[i], hi)}"
                    t0 = time.perf_counter()
                    async with session.get(url + path) as r:
                        await r.read()
                        if r.status >= 400:
                            errors += 1
                            continue
                    latencies.append(time.perf_counter() - t0)

            await asyncio.gather(*(one() for _ in range(CONNECTIONS)))
            return latencies, errors, time.perf_counter() - start

    latencies, errors, elapsed = asyncio.run(run())
    latencies.sort()

    def q(p: float) -> float:
        return latencies[max(0, math.ceil(p * len(latencies)) - 1)] if latencies else math.nan

    return {
        "per_s": len(latencies) / elapsed,
        "p50_s": q(0.50),
        "p99_s": q(0.99),
        "max_s": latencies[-1] if latencies else math.nan,
        "requests": len(latencies) + errors,
        "errors": errors,
    }


class Load:
    """Drives one server with wrk (if on the PATH) or the aiohttp client; warm-up then timed.

    Each request names a uniformly random device of ``ids`` and a uniformly random seq from
    ``lo[i]`` (default 1) to ``hi``.
    """

    def __init__(
        self, base: Path, ids: Sequence[str], hi: int, lo: Sequence[int] | None = None
    ) -> None:
        self.ids = list(ids)
        self.lo = list(lo) if lo is not None else [1] * len(self.ids)
        self.hi = hi
        self.wrk = shutil.which("wrk")
        self.name = "wrk" if self.wrk else "aiohttp-client"
        self.script = base / "receipts.lua"
        self.script.write_text(
            _WRK_SCRIPT
            % {
                "seed": os.getpid(),
                "ids": ",".join(json.dumps(i) for i in self.ids),
                "lo": ",".join(map(str, self.lo)),
                "hi": hi,
            }
        )

    def run(self, url: str, seconds: float) -> dict[str, Any]:
        if self.wrk:
            return _wrk(url, self.script, seconds)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(1, mp_context=ctx) as pool:
            return pool.submit(_client_load, url, self.ids, self.lo, self.hi, seconds).result()

    def measure(
        self,
        server: Server,
        warmup_s: float,
        duration_s: float,
        pg: PostgresServer | None = None,
    ) -> tuple[dict[str, Any], float, float]:
        """Warm-up (unless ``warmup_s`` is 0), then the timed run; also the CPU use (cores)
        during it of the server and of PostgreSQL (0.0 without ``pg``)."""
        if warmup_s:
            self.run(server.url(), warmup_s)
        pg0 = pg_cpu(pg) if pg else {}
        cpu0, t0 = server.cpu_s(), time.perf_counter()
        figures = self.run(server.url(), duration_s)
        elapsed = time.perf_counter() - t0
        cores = (server.cpu_s() - cpu0) / elapsed
        pg1 = pg_cpu(pg) if pg else {}
        pg_cores = sum(cpu - pg0.get(pid, 0.0) for pid, cpu in pg1.items()) / elapsed
        return figures, cores, pg_cores


def cache_figures(log_path: Path) -> dict[str, Any]:
    """The receipt cache's counters, summed over the API's worker processes: each logs one
    ``receipt cache: {...}`` line when it stops (anchor.api.app.serve)."""
    hits = misses = stale = lookups = statements = 0
    for line in log_path.read_text(errors="replace").splitlines():
        _, sep, tail = line.partition("receipt cache: ")
        if sep:
            doc = json.loads(tail)
            hits, misses, stale = hits + doc["hits"], misses + doc["misses"], stale + doc["stale"]
            lookups += doc.get("lookups", 0)
            statements += doc.get("lookup_statements", 0)
    total = hits + misses + stale
    return {
        "cache_hits": hits,
        "cache_misses": misses,
        "cache_stale": stale,
        "cache_hit_rate": hits / total if total else math.nan,
        # Concurrent receipt lookups share statements (anchor.store.receipt_batcher).
        "lookups_per_statement": lookups / statements if statements else math.nan,
    }


def sample_valid(
    server: Server, device_id: str, seq: int, key: PublicKey, operator: NoteSigner
) -> bool:
    """Fetch one receipt and verify it offline (everything but the chain)."""
    from anchor.receipt import receipt_from_dict
    from anchor.verify import verify_receipt

    with urllib.request.urlopen(server.url(f"/v1/receipts/{device_id}/{seq}")) as r:
        doc = json.loads(r.read())
    report = verify_receipt(
        receipt_from_dict(doc), device_keys=[key], log_verifiers=[operator.verifier]
    )
    passed = sum(c.status == "pass" for c in report.checks)
    return report.valid and passed >= 5
