"""Anchor benchmark: time from a reading's publication to an anchored receipt, and gas per anchor.

    python bench/anchoring.py [--quick]

Everything runs privately on this machine, in a temporary directory: PostgreSQL, Mosquitto, an
anvil EVM node (automine, chain id 31337) with a freshly deployed AnchorRegistry (dev account 0),
the real ``cityanchor ingest`` (default batching: 1000 readings or 1 s) and the real
``cityanchor anchor loop --period P`` (dev account 1, one confirmation) as child processes.

For each period P (quick: 10 s only; full: 10 s and 60 s, the loop restarted in between, the
database kept), another process publishes signed readings of 50 devices at 200/s for 2 P + 2 s,
noting each one's publication wall time right before ``publish``. Once the last reading's batch
is covered by a confirmed anchor:

* a reading is *anchored* at the earliest ``anchors.confirmed_at`` of an anchor whose log size
  exceeds its batch's log index (from then on its receipt has status "anchored"); its latency is
  that minus its publication time: ``p50_s_P``, ``p99_s_P``, ``max_s_P``;
* aim: period + confirmations + < 5 s. The baseline, measured in this run on the same anvil, is
  one raw anchor transaction with :class:`anchor.anchoring.chains.evm.EvmBackend` (prepare,
  broadcast,
  wait for its confirmation; best of ``--repeat``): ``baseline_tx_s``, and
  ``ratio_P = p99_s_P / (P + baseline_tx_s + 5)`` (<= 1 meets the aim). ``p99_s`` and ``ratio``
  repeat the 10 s figures;
* gas: ``gasUsed`` of every anchor transaction of the job, and the readings each one covered
  (the batches between the previous anchored log size and its own). ``gas_constant`` holds when
  max - min stays within calldata noise (300 gas: a zero byte of root or size costs 12 gas less
  than a non-zero one), whatever the number of readings.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from _common import BenchConfig, best_of, run_sections

from anchor.anchoring.backend import deploy
from anchor.checkpoint import generate_note_key
from anchor.host.config import ChainSettings
from anchor.host.files import write_private_file
from anchor.host.supervisor import ChildProcess
from anchor.keys import PrivateKey
from anchor.local import AnvilNode, MosquittoServer, PostgresServer
from anchor.store import DeviceSpec, Store
from devices.signer import DeviceSigner

CHAIN_ID = 31337
DEVICES = 50
RATE_PER_S = 200
ORIGIN = "bench.cityanchor.example/log"
PERIODS = {True: (10,), False: (10, 60)}
AIM_SLACK_S = 5.0
GAS_NOISE = 300


def _publish_timed(url: str, messages: list[tuple[str, bytes]], rate: float) -> list[float]:
    """Child process: publish ``messages`` at ``rate``/s (QoS 1); each one's wall time
    (``time.time()`` right before ``publish``), in order."""
    from anchor.broker.client import create_client, parse_mqtt_url

    c = create_client(
        parse_mqtt_url(url), client_id=f"bench-anchor-pub-{os.getpid()}", max_inflight=2000
    )
    c.reconnect()  # connect now, so a broker that is not there fails the run at once
    c.loop_start()
    times: list[float] = []
    infos = []
    start = time.perf_counter()
    for n, (topic, payload) in enumerate(messages):
        delay = start + n / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        times.append(time.time())
        infos.append(c.publish(topic, payload, qos=1))
    for info in infos:
        info.wait_for_publish(120)
    c.disconnect()
    c.loop_stop()
    return times


def _child(args: list[str], env: dict[str, str], log_path: Path, ready: bytes) -> ChildProcess:
    """Start ``cityanchor ARGS`` and wait until its log shows ``ready``."""
    return ChildProcess(args, env, log_path).start(ready=ready, timeout_s=30)


async def _setup_db(dsn: str, signers: list[DeviceSigner]) -> None:
    store = await Store.connect(dsn)
    try:
        await store.migrate()
        await store.register_devices(
            [
                DeviceSpec(s.device_id, s.key.public_key, district="bench", kind="iot.noise")
                for s in signers
            ]
        )
    finally:
        await store.close()


def _rows(pg: PostgresServer, sql: str) -> list[list[str]]:
    out = pg.psql(sql)
    return [line.split("|") for line in out.splitlines() if line]


def _wait_count(pg: PostgresServer, sql: str, at_least: int, timeout: float) -> None:
    """Poll the count query ``sql`` until it reaches ``at_least``."""
    deadline = time.monotonic() + timeout
    while int(pg.psql(sql) or 0) < at_least:
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {sql} >= {at_least}")
        time.sleep(0.1)


def _quantile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank quantile of an ascending list."""
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def _baseline_tx(chain: AnvilNode, contract: str, repeat: int) -> tuple[float, int]:
    """Best round trip of one raw anchor transaction (prepare, broadcast, confirmation) with
    EvmBackend on ``chain``, from dev account 2 (the job uses 1); and its gasUsed."""
    from anchor.anchoring.chains.evm import EvmBackend, EvmConfig

    backend = EvmBackend(
        EvmConfig(
            name="baseline",
            rpc_url=chain.rpc_url,
            chain_id=CHAIN_ID,
            contract=contract,
            signer_key=chain.accounts[2].private_key,
        )
    )
    hashes: list[str] = []

    def round_trip() -> None:
        tx = backend.prepare(os.urandom(32), 1000)
        backend.broadcast(tx)
        while backend.confirmation(tx) is None:
            time.sleep(0.002)
        hashes.append(tx.tx_hash)

    best = best_of(round_trip, repeat)
    gas = int(chain.rpc("eth_getTransactionReceipt", [hashes[-1]])["gasUsed"], 16)
    return best, gas


def anchor_section(cfg: BenchConfig) -> dict[str, Any]:
    periods = PERIODS[cfg.quick]
    base = Path(tempfile.mkdtemp(prefix="cityanchor-bench-anchor-"))
    # The servers drop to their own users (postgres, mosquitto) and must reach their folders.
    os.chmod(base, 0o711)
    pg = PostgresServer(base / "pg")
    mq = MosquittoServer(base / "mq")
    chain = AnvilNode(base / "anvil", chain_id=CHAIN_ID)
    children: list[ChildProcess] = []
    figures: dict[str, Any] = {"periods_s": list(periods)}
    try:
        pg.start()
        mq.start()
        chain.start()
        operator = generate_note_key(ORIGIN)
        skey = write_private_file(base / "operator.skey", (operator.skey() + "\n").encode())
        deployer = write_private_file(base / "deployer.key", chain.accounts[0].private_key.encode())
        job_key = write_private_file(base / "anchor.key", chain.accounts[1].private_key.encode())
        contract = deploy(
            ChainSettings(
                name="bench", rpc_url=chain.rpc_url, chain_id=CHAIN_ID, key_file=str(deployer)
            )
        )
        signers = [DeviceSigner(f"bench-{i:04d}", PrivateKey.generate()) for i in range(DEVICES)]
        asyncio.run(_setup_db(pg.dsn, signers))
        print(f"  anvil {chain.rpc_url}, AnchorRegistry {contract}, {DEVICES} devices", flush=True)

        baseline_tx_s, baseline_gas = _baseline_tx(chain, contract, cfg.repeat)
        print(f"  baseline anchor tx round trip {baseline_tx_s * 1000:.1f} ms", flush=True)

        env = dict(
            os.environ,
            CITYANCHOR_DATABASE_URL=pg.dsn,
            CITYANCHOR_MQTT_URL=mq.url,
            CITYANCHOR_OPERATOR_KEY_FILE=str(skey),
            CITYANCHOR_LOG_ORIGIN=ORIGIN,
            CITYANCHOR_CHAIN_NAME="bench",
            CITYANCHOR_CHAIN_RPC_URL=chain.rpc_url,
            CITYANCHOR_CHAIN_ID=str(CHAIN_ID),
            CITYANCHOR_CHAIN_CONTRACT=contract,
            CITYANCHOR_CHAIN_KEY_FILE=str(job_key),
        )
        children.append(_child(["ingest"], env, base / "ingest.log", b"subscription active"))

        stored_total = 0
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pub:
            pub.submit(time.time).result()  # the publisher process is up before any timing
            for period in periods:
                job = _child(
                    ["anchor", "loop", "--period", f"{period}s"],
                    env,
                    base / f"anchor-{period}.log",
                    b"is the leader",
                )
                children.append(job)
                n = RATE_PER_S * (2 * period + 2)
                keys: list[tuple[str, int]] = []
                messages: list[tuple[str, bytes]] = []
                for i in range(n):
                    s = signers[i % DEVICES]
                    raw = s.sign("iot.noise", {"laeq_db": 40.0 + i % 50, "n": i})
                    keys.append((s.device_id, s.seq))
                    messages.append((f"city/bench/{s.device_id}/readings", raw))
                print(f"  period {period} s: publishing {n} readings at {RATE_PER_S}/s", flush=True)
                times = pub.submit(_publish_timed, mq.url, messages, RATE_PER_S).result()
                published = dict(zip(keys, times, strict=True))

                stored_total += n
                _wait_count(pg, "SELECT count(*) FROM reading_seqs", stored_total, 60)
                last_index = int(pg.psql("SELECT max(log_index) FROM batches"))
                _wait_count(
                    pg,
                    f"SELECT count(*) FROM anchors WHERE log_size > {last_index}",
                    1,
                    period + 60,
                )
                job.stop()
                children.remove(job)

                anchored_at = {
                    int(bid): float(at)
                    for bid, at in _rows(
                        pg,
                        "SELECT b.id, extract(epoch FROM (SELECT min(a.confirmed_at) FROM anchors a"
                        " WHERE a.log_size > b.log_index)) FROM batches b",
                    )
                    if at
                }
                latencies = sorted(
                    anchored_at[int(bid)] - published[(dev, int(seq))]
                    for dev, seq, bid in _rows(
                        pg,
                        "SELECT d.device_id, s.seq, s.batch_id FROM reading_seqs s "
                        "JOIN devices d ON d.num = s.device_num",
                    )
                    if (dev, int(seq)) in published
                )
                if len(latencies) != n:
                    raise RuntimeError(f"{len(latencies)} of {n} readings found anchored")
                p99 = _quantile(latencies, 0.99)
                figures |= {
                    f"readings_{period}": n,
                    f"p50_s_{period}": _quantile(latencies, 0.50),
                    f"p99_s_{period}": p99,
                    f"max_s_{period}": latencies[-1],
                    f"ratio_{period}": p99 / (period + baseline_tx_s + AIM_SLACK_S),
                }
                print(
                    f"  period {period} s: p50 {figures[f'p50_s_{period}']:.2f} s, "
                    f"p99 {p99:.2f} s, max {latencies[-1]:.2f} s",
                    flush=True,
                )

        # Gas of every anchor the job sent, and the readings each one covered.
        batch_sizes = {
            int(idx): int(size) for idx, size in _rows(pg, "SELECT log_index, size FROM batches")
        }
        gas: list[int] = []
        covered: list[int] = []
        prev = 0
        for log_size, tx_hash in _rows(
            pg, "SELECT log_size, tx_hash FROM anchors ORDER BY log_size"
        ):
            size = int(log_size)
            receipt = chain.rpc("eth_getTransactionReceipt", [tx_hash])
            gas.append(int(receipt["gasUsed"], 16))
            covered.append(sum(batch_sizes[i] for i in range(prev, size)))
            prev = size
        if not gas:
            raise RuntimeError("the job anchored nothing")
    finally:
        for child in reversed(children):
            child.stop()
        for stop in (chain.stop, mq.stop, pg.stop):
            try:
                stop()
            except Exception as exc:  # keep stopping the others
                print(f"  warning: {exc}", file=sys.stderr)
        shutil.rmtree(base, ignore_errors=True)

    return {
        **figures,
        "rate_per_s": RATE_PER_S,
        "devices": DEVICES,
        "confirmations": 1,
        "p99_s": figures["p99_s_10"],
        "baseline_tx_s": baseline_tx_s,
        "ratio": figures["ratio_10"],
        "anchors": len(gas),
        "gas_per_anchor_min": min(gas),
        "gas_per_anchor_max": max(gas),
        "readings_per_anchor_min": min(covered),
        "readings_per_anchor_max": max(covered),
        "gas_constant": max(gas) - min(gas) <= GAS_NOISE,
        "baseline_gas": baseline_gas,
    }


def main(argv: list[str] | None = None) -> int:
    run_sections("anchor", [anchor_section], argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
