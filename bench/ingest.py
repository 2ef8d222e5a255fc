"""Ingest benchmark: what the ingestor costs per verified reading, and what it sustains, end to
end through a private Mosquitto and a private PostgreSQL, against raw ``cryptography`` Ed25519
verification of the same signatures measured in the same run.

    python bench/ingest.py [--quick]

Measurements, all in this run on this machine:

* ``baseline_per_s``: raw Ed25519 verification of the same signatures, one process per core,
  nothing else (no parsing, no MQTT, no database): the ceiling of a verifying ingestor.
  ``verify_cpu_us``: the CPU time of one raw verification (one process, best of the repeats).
* the drain: N pre-signed readings wait in the broker (the ingestor's persistent session) while
  the warmed-up ``cityanchor ingest`` (default settings: batches of 1000 or 1 s, one verify
  process per core) is stopped (SIGSTOP); it is resumed and timed until the last one is
  committed in PostgreSQL. ``per_s`` is that rate, ``ratio = per_s / baseline_per_s``.
  ``ingest_cpu_us``: the CPU time (utime + stime from ``/proc/<pid>/stat``) the ingestor's
  processes (main process and verify workers) spent per stored reading over the drain;
  ``cpu_ratio = verify_cpu_us / ingest_cpu_us`` (1.0: the ingestor costs exactly its signature
  checks; it excludes the broker's and PostgreSQL's CPU, which ``ratio`` includes).
  With one ingestor process, ``main_thread_us`` / ``other_threads_us`` / ``workers_us`` split
  ``ingest_cpu_us`` into the event loop's thread, the main process's other threads (paho's
  network thread with ``CITYANCHOR_INGEST_MQTT_CLIENT=paho``) and the verify workers.
* ``live_per_s``: readings published flat out while the ingestor runs (publisher, broker,
  database and ingestor share the cores).
* ``sustained_per_s``: the highest offered rate (a short search, each step a few seconds of
  paced publishing) at which the publisher achieves the rate and the backlog (published minus
  stored) does not grow; ``p50_s``/``p99_s``: seal latency (arrival at the ingestor to the
  commit of its batch, as the ingestor measures it) of a fresh ingestor offered 80% of that
  rate (``latency_offered_per_s``; 0 sustained: 80% of the lowest rate tried); ``rss_mb``: its
  peak RSS (every process of the ingestor).

The publisher, the broker, PostgreSQL and the ingestor share the same cores: the rates are for
the whole system on one machine, as a small deployment would run it; ``cpu_ratio`` isolates the
ingestor's own cost from theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
from _common import BenchConfig, best_of, run_sections

from anchor.checkpoint import generate_note_key
from anchor.envelope import parse_envelope
from anchor.keys import PrivateKey
from anchor.local import MosquittoServer, PostgresServer
from anchor.store import DeviceSpec, Store
from devices.signer import DeviceSigner

SIZES = {True: 20_000, False: 100_000}
# Sustained-rate search: steps, and seconds of paced publishing per step; then the latency run.
SEARCH_STEPS = {True: 3, False: 6}
STEP_SECONDS = {True: 3.0, False: 8.0}
LATENCY_SECONDS = {True: 4, False: 20}
LATENCY_SHARE = 0.8  # the latency run offers this share of the sustained rate
DEVICES = 200
# Ingestor processes on the shared subscription (`cityanchor ingest --workers N`).
WORKERS = int(os.environ.get("BENCH_INGEST_WORKERS", "1"))
_TICK_S = 1 / os.sysconf("SC_CLK_TCK")

# In a publisher child: "progress", a shared count of the messages handed to paho so far.
_shared: dict[str, Any] = {}


def _verify_chunk(items: list[tuple[bytes, bytes, bytes]]) -> int:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    keys: dict[bytes, Ed25519PublicKey] = {}
    for raw_key, sig, msg in items:
        key = keys.get(raw_key)
        if key is None:
            key = keys[raw_key] = Ed25519PublicKey.from_public_bytes(raw_key)
        key.verify(sig, msg)
    return len(items)


def _set_progress(value: Any) -> None:
    _shared["progress"] = value


def _publish(url: str, messages: list[tuple[str, bytes]], rate: float, clients: int) -> float:
    """Child process: publish ``messages`` at ``rate``/s (0: flat out); return seconds taken."""
    from anchor.broker.client import create_client, parse_mqtt_url

    target = parse_mqtt_url(url)
    conns = []
    for i in range(clients):
        c = create_client(target, client_id=f"bench-pub-{os.getpid()}-{i}", max_inflight=2000)
        c.reconnect()  # connect now, so a broker that is not there fails the run at once
        c.loop_start()
        conns.append(c)
    infos = []
    progress = _shared.get("progress")
    start = time.perf_counter()
    for n, (topic, payload) in enumerate(messages):
        if rate:
            due = start + n / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        infos.append(conns[n % clients].publish(topic, payload, qos=1))
        if progress is not None and n % 100 == 99:
            progress.value = n + 1
    if progress is not None:
        progress.value = len(messages)
    for info in infos:
        info.wait_for_publish(120)
    elapsed = time.perf_counter() - start
    for c in conns:
        c.disconnect()
        c.loop_stop()
    return elapsed


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    return out


def _thread_cpu_s(main: int, pids: list[int]) -> dict[str, float]:
    """CPU seconds of the ingestor's threads in three parts: the main process's main thread
    (the event loop), its other threads (paho's network thread, the pool's feeder and manager),
    and every other process (the verify workers)."""
    out = {"main_thread": 0.0, "other_threads": 0.0, "workers": 0.0}
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                stat = (task / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            secs = (int(fields[11]) + int(fields[12])) * _TICK_S
            part = (
                "workers"
                if pid != main
                else "main_thread"
                if int(task.name) == pid
                else "other_threads"
            )
            out[part] += secs
    return out


def _cpu_s(pids: list[int]) -> dict[int, float]:
    """utime + stime of each live process in ``pids``, in seconds (/proc/<pid>/stat)."""
    out = {}
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
        out[pid] = (int(fields[11]) + int(fields[12])) * _TICK_S  # fields 14 and 15 of stat
    return out


class System:
    """Private PostgreSQL + Mosquitto + a registered fleet + an ingestor process."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.pg = PostgresServer(base / "pg").start()
        self.mq = MosquittoServer(base / "mq", max_queued_messages=1_000_000).start()
        self.operator = generate_note_key("bench.cityanchor.example/log")
        (base / "operator.skey").write_text(self.operator.skey() + "\n")
        self.signers = [
            DeviceSigner(f"bench-{i:04d}", PrivateKey.generate()) for i in range(DEVICES)
        ]
        self._loop = asyncio.new_event_loop()
        self._db: Any = None
        self._loop.run_until_complete(self._setup())
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = base / "ingest.log"

    async def _setup(self) -> None:
        store = await Store.connect(self.pg.dsn)
        try:
            await store.migrate()
            await store.register_devices(
                [
                    DeviceSpec(s.device_id, s.key.public_key, district="bench", kind="iot.noise")
                    for s in self.signers
                ]
            )
        finally:
            await store.close()
        # One connection kept open for polling: a psql per poll costs the shared cores more.
        self._db = await asyncpg.connect(self.pg.dsn)

    def messages(self, n: int) -> list[tuple[str, bytes]]:
        out = []
        for i in range(n):
            s = self.signers[i % DEVICES]
            raw = s.sign("iot.noise", {"laeq_db": 40.0 + i % 50, "n": i})
            out.append((f"city/bench/{s.device_id}/readings", raw))
        return out

    def start_ingestor(self) -> None:
        env = dict(
            os.environ,
            CITYANCHOR_DATABASE_URL=self.pg.dsn,
            CITYANCHOR_MQTT_URL=self.mq.url,
            CITYANCHOR_OPERATOR_KEY_FILE=str(self.base / "operator.skey"),
            CITYANCHOR_LOG_ORIGIN="bench.cityanchor.example/log",
        )
        self.log_path.write_bytes(b"")
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "anchor", "-v", "ingest", "--workers", str(WORKERS)],
                env=env,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + 30
        while self.log_path.read_bytes().count(b"subscription active") < WORKERS:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("ingestor did not start:\n" + self.log_path.read_text()[-2000:])
            time.sleep(0.1)

    def stop_ingestor(self) -> dict[str, Any]:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        stats: dict[str, Any] = {}
        for line in self.log_path.read_text().splitlines():
            m = re.search(r"ingestor stopped: (\{.*\})", line)
            if m:
                stats = json.loads(m.group(1))
        return stats

    def signal_ingestor(self, sig: int) -> None:
        """Send ``sig`` to the ingestor and every process under it (SIGSTOP / SIGCONT)."""
        assert self.proc is not None
        for pid in _tree(self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def ingestor_cpu_s(self) -> dict[int, float]:
        assert self.proc is not None
        return _cpu_s(_tree(self.proc.pid))

    def ingestor_threads_cpu_s(self) -> dict[str, float]:
        """Per part (:func:`_thread_cpu_s`); with ``--workers`` 1 only (one main process)."""
        assert self.proc is not None
        return _thread_cpu_s(self.proc.pid, _tree(self.proc.pid))

    def peak_rss_mb(self) -> float:
        """Peak RSS of the ingestor and its verify workers (VmHWM of each)."""
        assert self.proc is not None
        total_kb = 0
        for pid in _tree(self.proc.pid):
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        total_kb += int(line.split()[1])
            except OSError:
                continue
        return total_kb / 1024

    def stored(self) -> int:
        """Readings sealed so far (the bench's readings are all valid: every one is sealed)."""
        q = "SELECT coalesce(sum(size), 0) FROM batches"
        return int(self._loop.run_until_complete(self._db.fetchval(q)))

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal_ingestor(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()
        if self._db is not None:
            self._loop.run_until_complete(self._db.close())
        self._loop.close()
        self.mq.stop()
        self.pg.stop()


def _wait_stored(system: System, target: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while True:
        n = system.stored()
        if n >= target:
            return time.perf_counter()
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {n} of {target} readings stored after {timeout}s")
        time.sleep(0.02)


def _growth_per_s(samples: list[tuple[float, float]], seconds: float) -> float:
    """How fast the backlog grows: its peak in the last third of the step minus its peak in the
    middle third, per second. Batches make the backlog a sawtooth (it builds up to a batch and
    drops at its commit); its peaks are steady when the ingestor keeps up."""
    middle = [y for t, y in samples if seconds / 3 <= t < 2 * seconds / 3]
    last = [y for t, y in samples if t >= 2 * seconds / 3]
    if not middle or not last:
        return 0.0
    return (max(last) - max(middle)) / (seconds / 3)


class Bench:
    """The measurements of one run, in order, over one System."""

    def __init__(self, cfg: BenchConfig, system: System) -> None:
        self.cfg = cfg
        self.system = system
        self.ctx = multiprocessing.get_context("spawn")
        self.stored = 0  # readings the store holds so far
        self.progress = self.ctx.Value("q", 0, lock=False)
        self.lowest_tried = 1 << 30  # the lowest rate the sustained search offered

    def publish(self, msgs: list[tuple[str, bytes]], rate: float = 0) -> float:
        with ProcessPoolExecutor(1, mp_context=self.ctx) as pub:
            return pub.submit(_publish, self.system.mq.url, msgs, rate, 4).result()

    def baseline(self, msgs: list[tuple[str, bytes]]) -> dict[str, float]:
        """Raw verification of these messages' signatures: rate on all cores, CPU per verify."""
        jobs = []
        for _, raw in msgs:
            e = parse_envelope(raw)
            key = next(s for s in self.system.signers if s.device_id == e.reading.device_id)
            jobs.append((key.key.public_key.raw, e.signature, e.signed_bytes))
        cores = os.cpu_count() or 1
        chunks = [jobs[i : i + 2000] for i in range(0, len(jobs), 2000)]
        with ProcessPoolExecutor(cores, mp_context=self.ctx) as pool:
            list(pool.map(_verify_chunk, chunks[:cores]))  # warm the workers up
            base_s = best_of(lambda: sum(pool.map(_verify_chunk, chunks)), self.cfg.repeat)
        sample = jobs[:5000]
        _verify_chunk(sample)
        cpu = float("inf")
        for _ in range(max(1, self.cfg.repeat)):
            t = time.process_time()
            _verify_chunk(sample)
            cpu = min(cpu, time.process_time() - t)
        return {"baseline_per_s": len(jobs) / base_s, "verify_cpu_us": cpu / len(sample) * 1e6}

    def drain(self, msgs: list[tuple[str, bytes]]) -> dict[str, float]:
        """A warm ingestor, stopped while the backlog is published, then timed draining it."""
        s = self.system
        s.start_ingestor()
        warm = s.messages(2000)  # spawn the verify workers, fill the caches
        self.publish(warm)
        _wait_stored(s, self.stored + len(warm), 120)
        self.stored += len(warm)
        before = s.ingestor_cpu_s()
        threads_before = s.ingestor_threads_cpu_s()
        s.signal_ingestor(signal.SIGSTOP)
        try:
            self.publish(msgs)
        finally:
            s.signal_ingestor(signal.SIGCONT)
        t0 = time.perf_counter()
        t_end = _wait_stored(s, self.stored + len(msgs), 300)
        after = s.ingestor_cpu_s()
        threads_after = s.ingestor_threads_cpu_s()
        self.stored += len(msgs)
        cpu = sum(v - before.get(pid, 0.0) for pid, v in after.items())
        out: dict[str, float] = {
            "per_s": len(msgs) / (t_end - t0),
            "ingest_cpu_us": cpu / len(msgs) * 1e6,
            "ingest_processes": len(after),
        }
        if WORKERS == 1:  # where the ingestor's CPU goes, per stored reading
            for part, secs in threads_after.items():
                out[f"{part}_us"] = (secs - threads_before[part]) / len(msgs) * 1e6
        return out

    def live(self, msgs: list[tuple[str, bytes]]) -> float:
        with ProcessPoolExecutor(1, mp_context=self.ctx) as pub:
            t0 = time.perf_counter()
            fut = pub.submit(_publish, self.system.mq.url, msgs, 0, 4)
            t_end = _wait_stored(self.system, self.stored + len(msgs), 300)
            fut.result()
        self.stored += len(msgs)
        return len(msgs) / (t_end - t0)

    def holds(self, rate: int) -> bool:
        """Offer ``rate``/s for a step: does the publisher reach it, and the backlog not grow?"""
        seconds = STEP_SECONDS[self.cfg.quick]
        self.lowest_tried = min(self.lowest_tried, rate)
        msgs = self.system.messages(int(rate * seconds))
        self.progress.value = 0
        base = self.stored
        samples: list[tuple[float, float]] = []
        with ProcessPoolExecutor(
            1, mp_context=self.ctx, initializer=_set_progress, initargs=(self.progress,)
        ) as pub:
            fut = pub.submit(_publish, self.system.mq.url, msgs, rate, 4)
            while self.progress.value == 0 and not fut.done():
                time.sleep(0.005)
            t0 = time.perf_counter()
            while not fut.done():
                time.sleep(0.1)
                t = time.perf_counter() - t0
                backlog = self.progress.value - (self.system.stored() - base)
                if self.progress.value < len(msgs):
                    samples.append((t, backlog))
            elapsed = fut.result()
        _wait_stored(self.system, base + len(msgs), 300)
        self.stored += len(msgs)
        achieved = len(msgs) / elapsed
        growth = _growth_per_s(samples, seconds)
        ok = achieved >= 0.95 * rate and growth <= 0.1 * rate
        print(
            f"  offered {rate}/s: achieved {achieved:,.0f}/s, backlog growth {growth:,.0f}/s"
            f" -> {'holds' if ok else 'falls behind'}",
            flush=True,
        )
        return ok

    def sustained(self, guess: float) -> int:
        """A short search for the highest offered rate that holds, starting at ``guess``."""
        lo, hi = 0, None
        rate = max(500, int(guess // 100 * 100))
        for _ in range(SEARCH_STEPS[self.cfg.quick]):
            if self.holds(rate):
                lo = rate
            else:
                hi = rate
            nxt = int(rate * 1.3) if hi is None else (lo + hi) // 2 if lo else int(rate * 0.6)
            rate = max(100, nxt // 100 * 100)
        return lo  # 0: no rate tried held (then the latency run offers 80% of the lowest tried)

    def latency_at(self, rate: int) -> tuple[dict[str, Any], float]:
        """Offer ``rate``/s to a fresh ingestor: its seal latency stats and peak RSS."""
        s = self.system
        s.stop_ingestor()
        s.start_ingestor()
        msgs = s.messages(rate * LATENCY_SECONDS[self.cfg.quick])
        self.publish(msgs, rate)
        _wait_stored(s, self.stored + len(msgs), 300)
        self.stored += len(msgs)
        rss = s.peak_rss_mb()  # read while the ingestor still runs
        return s.stop_ingestor(), rss


def ingest_section(cfg: BenchConfig) -> dict[str, Any]:
    n = SIZES[cfg.quick]
    base = Path(tempfile.mkdtemp(prefix="cityanchor-bench-"))
    os.chmod(base, 0o711)
    system = System(base)
    bench = Bench(cfg, system)
    try:
        msgs = system.messages(n)
        figures: dict[str, Any] = {"readings": n, **bench.baseline(msgs)}
        figures.update(bench.drain(msgs))
        figures["live_per_s"] = bench.live(system.messages(n // 2))
        sustained = bench.sustained(figures["live_per_s"])
        rate = max(100, int((sustained or bench.lowest_tried) * LATENCY_SHARE))
        stats, rss = bench.latency_at(rate)
    finally:
        system.close()
    figures["ratio"] = figures["per_s"] / figures["baseline_per_s"]
    figures["cpu_ratio"] = figures["verify_cpu_us"] / figures["ingest_cpu_us"]
    figures.update(
        {
            "sustained_per_s": sustained,
            "latency_offered_per_s": rate,
            "p50_s": stats.get("seal_latency_p50_s"),
            "p99_s": stats.get("seal_latency_p99_s"),
            "rss_mb": rss,
            "workers": WORKERS,
            "mqtt_client": os.environ.get("CITYANCHOR_INGEST_MQTT_CLIENT", "native"),
            "cores": os.cpu_count() or 1,
        }
    )
    return figures


def main(argv: list[str] | None = None) -> int:
    run_sections("ingest", [ingest_section], argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
