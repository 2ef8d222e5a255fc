"""Ingest benchmark: verified readings stored per second, end to end through a private Mosquitto
and a private PostgreSQL, against the raw ``cryptography`` Ed25519 verify rate of all cores.

    python bench/ingest.py [--quick]

Three measurements, all in this run on this machine:

* ``baseline_per_s``: raw Ed25519 verification of the same signatures, one process per core,
  nothing else (no parsing, no MQTT, no database): the ceiling of a verifying ingestor.
* ``per_s``: N pre-signed readings published as fast as the broker takes them (from another
  process), until the last one is committed in PostgreSQL by ``cityanchor ingest`` (default
  settings: batches of 1000 or 1 s, one verify process per core). ``ratio = per_s / baseline``.
* seal latency at a fixed offered rate (10k readings/s, or the capacity if lower is all the
  machine can do: the figure names the rate offered): from a reading's arrival at the ingestor
  to the commit of its batch, p50 and p99, as the ingestor measures it; and the ingestor's peak
  RSS (its own process plus its verify workers).

The publisher, the broker, PostgreSQL and the ingestor share the same cores: the figures are for
the whole system on one machine, as a small deployment would run it.
"""

from __future__ import annotations

import asyncio
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

from _common import BenchConfig, best_of, run_sections

from anchor.checkpoint import generate_note_key
from anchor.envelope import parse_envelope
from anchor.keys import PrivateKey
from anchor.local import MosquittoServer, PostgresServer
from anchor.store import DeviceSpec, Store
from devices.signer import DeviceSigner

SIZES = {True: 20_000, False: 100_000}
LATENCY_SECONDS = {True: 6, False: 20}
OFFERED_PER_S = 10_000
DEVICES = 200
# Ingestor processes on the shared subscription (`cityanchor ingest --workers N`).
WORKERS = int(os.environ.get("BENCH_INGEST_WORKERS", "1"))


def _verify_chunk(items: list[tuple[bytes, bytes, bytes]]) -> int:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    keys: dict[bytes, Ed25519PublicKey] = {}
    for raw_key, sig, msg in items:
        key = keys.get(raw_key)
        if key is None:
            key = keys[raw_key] = Ed25519PublicKey.from_public_bytes(raw_key)
        key.verify(sig, msg)
    return len(items)


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
    start = time.perf_counter()
    for n, (topic, payload) in enumerate(messages):
        if rate:
            due = start + n / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        infos.append(conns[n % clients].publish(topic, payload, qos=1))
    for info in infos:
        info.wait_for_publish(120)
    elapsed = time.perf_counter() - start
    for c in conns:
        c.disconnect()
        c.loop_stop()
    return elapsed


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
        asyncio.run(self._setup())
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

    def peak_rss_mb(self) -> float:
        """Peak RSS of the ingestor and its verify workers (VmHWM of each)."""
        assert self.proc is not None
        pids = [self.proc.pid]
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
            pids += [int(p) for p in children.split()]
        except OSError:
            pass
        total_kb = 0
        for pid in pids:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        total_kb += int(line.split()[1])
            except OSError:
                continue
        return total_kb / 1024

    def stored(self) -> int:
        out = self.pg.psql("SELECT count(*) FROM reading_seqs")
        return int(out.strip() or 0)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
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
        time.sleep(0.05)


def ingest_section(cfg: BenchConfig) -> dict[str, Any]:
    n = SIZES[cfg.quick]
    cores = os.cpu_count() or 1
    base = Path(tempfile.mkdtemp(prefix="cityanchor-bench-"))
    os.chmod(base, 0o711)
    system = System(base)
    ctx = multiprocessing.get_context("spawn")
    try:
        throughput_msgs = system.messages(n)
        # Baseline: the same signatures, raw cryptography, one process per core.
        jobs = []
        for _, raw in throughput_msgs:
            e = parse_envelope(raw)
            key = next(s for s in system.signers if s.device_id == e.reading.device_id)
            jobs.append((key.key.public_key.raw, e.signature, e.signed_bytes))
        chunks = [jobs[i : i + 2000] for i in range(0, len(jobs), 2000)]
        with ProcessPoolExecutor(cores, mp_context=ctx) as pool:
            list(pool.map(_verify_chunk, chunks[:cores]))  # warm the workers up
            base_s = best_of(lambda: sum(pool.map(_verify_chunk, chunks)), cfg.repeat)
        baseline_per_s = n / base_s

        # Capacity: the ingestor drains a backlog the broker holds in its persistent session, so
        # the publisher does not compete with it for the cores while it is timed.
        system.start_ingestor()
        system.stop_ingestor()
        with ProcessPoolExecutor(1, mp_context=ctx) as pub:
            publish_s = pub.submit(_publish, system.mq.url, throughput_msgs, 0, 4).result()
        t0 = time.perf_counter()
        system.start_ingestor()
        t_end = _wait_stored(system, n, 300)
        per_s = n / (t_end - t0)
        live_msgs = system.messages(n // 2)
        # Live: publisher and ingestor at once, as in production on one small machine.
        with ProcessPoolExecutor(1, mp_context=ctx) as pub:
            t0 = time.perf_counter()
            fut = pub.submit(_publish, system.mq.url, live_msgs, 0, 4)
            t_end = _wait_stored(system, n + len(live_msgs), 300)
            fut.result()
        live_per_s = len(live_msgs) / (t_end - t0)
        n += len(live_msgs)

        def latency_at(rate: int) -> tuple[dict[str, Any], float, float]:
            """Offer ``rate``/s to a fresh ingestor: its seal latency, achieved rate and RSS."""
            nonlocal n
            system.stop_ingestor()
            system.log_path.write_bytes(b"")
            system.start_ingestor()
            m = rate * LATENCY_SECONDS[cfg.quick]
            msgs = system.messages(m)
            with ProcessPoolExecutor(1, mp_context=ctx) as pub:
                offered_s = pub.submit(_publish, system.mq.url, msgs, rate, 4).result()
                _wait_stored(system, n + m, 300)
            n += m
            rss = system.peak_rss_mb()  # read while the ingestor still runs
            return system.stop_ingestor(), m / offered_s, rss

        half_stats, _, _ = latency_at(OFFERED_PER_S // 2)
        stats, achieved_offer, rss = latency_at(OFFERED_PER_S)
    finally:
        system.close()
    return {
        "readings": SIZES[cfg.quick],
        "per_s": per_s,
        "live_per_s": live_per_s,
        "baseline_per_s": baseline_per_s,
        "ratio": per_s / baseline_per_s,
        "publish_per_s": n / publish_s,
        "offered_per_s": OFFERED_PER_S,
        "achieved_offer_per_s": achieved_offer,
        "p50_s": stats.get("seal_latency_p50_s"),
        "p99_s": stats.get("seal_latency_p99_s"),
        "half_offered_per_s": OFFERED_PER_S // 2,
        "half_p50_s": half_stats.get("seal_latency_p50_s"),
        "half_p99_s": half_stats.get("seal_latency_p99_s"),
        "rss_mb": rss,
        "cores": cores,
    }


def main(argv: list[str] | None = None) -> int:
    run_sections("ingest", [ingest_section], argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
