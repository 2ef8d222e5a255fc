"""The live demo behind ``make demo``: a simulated city fleet through a private Mosquitto and the
real ingestor into a private PostgreSQL, then receipts checked with ``cityanchor verify``.

Everything it starts (PostgreSQL, Mosquitto, the ingestor) runs on free loopback ports in a
temporary directory and is stopped at the end, also on Ctrl-C or an error. Output layout
(DESIGN.md "Interfaces"): ``receipts/*.json``, ``devices/{device_id}.jwk``, ``operator.vkey``;
plus ``report.json``, ``tampered/`` and ``logs/``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anchor.anchoring.backend import deploy
from anchor.checkpoint import NoteSigner, generate_note_key
from anchor.cli.demo import CliMain
from anchor.cosignature import generate_cosigner_key
from anchor.host.config import ChainSettings
from anchor.host.files import write_private_file, write_public_file
from anchor.host.redact import redact_url
from anchor.host.supervisor import ChildProcess
from anchor.local import AnvilNode, MosquittoServer, PostgresServer, free_port
from anchor.receipt import dumps_receipt
from anchor.store import DeviceSpec, Store, StoredAnchor
from devices.simulator import SimulationConfig, SimulationReport, make_fleet, run_simulation

__all__ = ["LiveDemoConfig", "run_live_demo"]

ORIGIN = "demo.cityanchor.example/log"
WITNESS_NAME = "audit-office.demo.cityanchor.example/witness"
CHAIN_ID = 31337
DISTRICTS = ("futian", "nanshan", "luohu")
FAULTS = {
    "bad_signature": 0.004,
    "replayed_seq": 0.004,
    "unknown_device": 0.003,
    "oversized": 0.002,
    "malformed": 0.002,
    "seq_conflict": 0.002,
    "topic_mismatch": 0.002,
    "non_canonical": 0.002,
}


@dataclass(frozen=True, slots=True)
class LiveDemoConfig:
    devices: int = 120
    rate: float = 400.0
    duration_s: float = 45.0
    receipts_batches: int = 3  # write every receipt of this many batches (first, middle, last)
    anchor_period_s: int = 5
    keep_running: bool = False  # leave the services (and the explorer) up until Ctrl-C
    seed: int = 20261125


def _say(text: str = "") -> None:
    print(text, flush=True)


@contextlib.contextmanager
def _private_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="cityanchor-demo-"))
    # The servers drop to their own users (postgres, mosquitto) and must reach their folders.
    os.chmod(base, 0o711)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _child(args: list[str], env: dict[str, str], log_path: Path, ready: bytes) -> ChildProcess:
    """Start ``cityanchor ARGS`` and wait until its log shows ``ready``."""
    return ChildProcess(args, env, log_path).start(ready=ready)


async def _register(dsn: str, fleet: list[Any]) -> None:
    store = await Store.connect(dsn)
    try:
        await store.migrate()
        await store.register_devices(
            [
                DeviceSpec(d.device_id, d.key.public_key, district=d.district, kind=d.kind)
                for d in fleet
            ]
        )
    finally:
        await store.close()


async def _anchors(dsn: str) -> list[StoredAnchor]:
    store = await Store.connect(dsn)
    try:
        return await store.list_anchors(limit=1000)
    finally:
        await store.close()


def _run_cli_env(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run a ``cityanchor`` command in a child process with ``env`` (its own settings)."""
    out = subprocess.run(
        [sys.executable, "-m", "anchor", *argv],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    return out.returncode, out.stdout + out.stderr


async def _counts(dsn: str) -> dict[str, int]:
    store = await Store.connect(dsn)
    try:
        return await store.counts()
    finally:
        await store.close()


async def _write_receipts(dsn: str, out: Path, batches_wanted: int) -> tuple[int, list[int]]:
    store = await Store.connect(dsn)
    try:
        counts = await store.counts()
        n_batches = counts.get("batches", 0)
        picks = sorted({1, max(1, (n_batches + 1) // 2), n_batches} - {0})[:batches_wanted]
        written = 0
        for batch_id in picks:
            for r in await store.receipts_for_batch(batch_id):
                (out / f"{r.device_id}-{r.seq:06d}.json").write_text(dumps_receipt(r))
                written += 1
        return written, picks
    finally:
        await store.close()


def _run_cli(cli_main: CliMain, argv: list[str]) -> tuple[int, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = cli_main(argv)
    return code, buf.getvalue()


def _wait_for_store(dsn: str, report: SimulationReport, timeout: float) -> dict[str, int]:
    want_quarantine = sum(report.by_fault.values())
    deadline = time.monotonic() + timeout
    while True:
        counts = asyncio.run(_counts(dsn))
        if (
            counts.get("readings", 0) >= report.expected_good
            and counts.get("quarantine", 0) >= want_quarantine
        ):
            return counts
        if time.monotonic() > deadline:
            return counts
        time.sleep(0.5)


def _tamper(receipt: Path, target: Path) -> None:
    doc = json.loads(receipt.read_text())
    b64 = doc["reading"]["envelope"]
    raw = bytearray(base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)))
    # The last byte of a COSE_Sign1 envelope is the last byte of its signature: the envelope
    # still parses, so the verifier reaches (and fails) the signature and hash checks.
    raw[-1] ^= 0x01
    doc["reading"]["envelope"] = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(doc, indent=2) + "\n")


def run_live_demo(
    out: Path, config: LiveDemoConfig = LiveDemoConfig(), *, cli_main: CliMain
) -> int:
    """Run the live demo into ``out``; returns 0 when every check of the demo held."""
    started = time.perf_counter()
    for sub in ("receipts", "devices", "tampered", "logs"):
        shutil.rmtree(out / sub, ignore_errors=True)
    for sub in ("receipts", "devices", "logs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    _say("== cityanchor live demo: a city fleet -> MQTT -> ingestor -> PostgreSQL -> receipts ==")
    with _private_dir() as base:
        pg = PostgresServer(base / "postgres")
        mq = MosquittoServer(base / "mosquitto")
        chain = AnvilNode(base / "anvil", chain_id=CHAIN_ID)
        children: list[ChildProcess] = []
        try:
            pg.start()
            mq.start()
            chain.start()
            _say(f"private PostgreSQL {redact_url(pg.dsn)}")
            _say(f"private Mosquitto  {mq.url}")
            _say(f"private EVM chain  {chain.rpc_url} (anvil, chain id {chain.chain_id})")
            operator: NoteSigner = generate_note_key(ORIGIN)
            skey = write_private_file(out / "operator.skey", (operator.skey() + "\n").encode())
            write_public_file(out / "operator.vkey", (operator.verifier.vkey() + "\n").encode())
            # Anvil's dev accounts: #0 deploys the registry, #1 is the anchoring job's account.
            deployer = write_private_file(
                base / "deployer.key", chain.accounts[0].private_key.encode()
            )
            job_key = write_private_file(
                base / "anchor.key", chain.accounts[1].private_key.encode()
            )
            contract = deploy(
                ChainSettings(
                    name="local", rpc_url=chain.rpc_url, chain_id=CHAIN_ID, key_file=str(deployer)
                )
            )
            _say(f"AnchorRegistry deployed at {contract}")

            # An independent witness (in a city: its audit office) cosigns the log's checkpoints
            # (C2SP tlog-witness), so a receipt shows the log was not forked for its holder.
            witness = generate_cosigner_key(WITNESS_NAME)
            witness_skey = write_private_file(
                base / "witness.skey", (witness.skey() + "\n").encode()
            )
            witness_vkey = write_public_file(
                out / "witness.vkey", (witness.verifier.vkey() + "\n").encode()
            )
            witness_url = f"http://127.0.0.1:{free_port()}"
            children.append(
                _child(
                    [
                        "witness", "serve", "--key", str(witness_skey),
                        "--log-key", str(out / "operator.vkey"),
                        "--state", str(base / "witness.sqlite"),
                        "--listen", witness_url.removeprefix("http://"),
                    ],
                    dict(os.environ),
                    out / "logs" / "witness.log",
                    b"listening on",
                )
            )  # fmt: skip
            # Witnesses are configured in the settings file (TOML [[witnesses]]).
            settings_file = write_private_file(
                base / "cityanchor.toml",
                (
                    f'[[witnesses]]\nurl = "{witness_url}"\nvkey = "{witness.verifier.vkey()}"\n'
                ).encode(),
            )
            _say(f"witness {WITNESS_NAME} at {witness_url} (its key: {witness_vkey})")

            fleet = make_fleet(config.devices, seed=config.seed, districts=DISTRICTS)
            asyncio.run(_register(pg.dsn, fleet))
            for d in fleet:
                write_public_file(
                    out / "devices" / f"{d.device_id}.jwk",
                    (json.dumps(d.key.public_key.to_jwk(), indent=2) + "\n").encode(),
                )
            kinds: dict[str, int] = {}
            for d in fleet:
                kinds[d.kind] = kinds.get(d.kind, 0) + 1
            _say(
                f"registered {len(fleet)} devices: "
                + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
            )

            env = dict(
                os.environ,
                CITYANCHOR_CONFIG=str(settings_file),
                CITYANCHOR_DATABASE_URL=pg.dsn,
                CITYANCHOR_MQTT_URL=mq.url,
                CITYANCHOR_OPERATOR_KEY_FILE=str(skey),
                CITYANCHOR_LOG_ORIGIN=ORIGIN,
                CITYANCHOR_BATCH_SIZE="500",
                CITYANCHOR_BATCH_AGE_MS="1000",
                CITYANCHOR_CHAIN_NAME="local",
                CITYANCHOR_CHAIN_RPC_URL=chain.rpc_url,
                CITYANCHOR_CHAIN_PUBLIC_RPC_URL=chain.rpc_url,
                CITYANCHOR_CHAIN_ID=str(CHAIN_ID),
                CITYANCHOR_CHAIN_CONTRACT=contract,
                CITYANCHOR_CHAIN_KEY_FILE=str(job_key),
            )
            ingestor = _child(["ingest"], env, out / "logs" / "ingest.log", b"subscription active")
            children.append(ingestor)
            anchorer = _child(
                ["anchor", "loop", "--period", f"{config.anchor_period_s}s"],
                env,
                out / "logs" / "anchor.log",
                b"is the leader",
            )
            children.append(anchorer)
            _say(
                f"ingestor and anchoring job (period {config.anchor_period_s} s) running; "
                f"logs in {out}/logs/"
            )

            sim = SimulationConfig(
                mqtt_url=mq.url,
                devices=config.devices,
                rate=config.rate,
                duration_s=config.duration_s,
                districts=DISTRICTS,
                faults=FAULTS,
                seed=config.seed,
            )
            _say(
                f"simulating {config.devices} devices at {config.rate:.0f} readings/s for "
                f"{config.duration_s:.0f} s, with a few malicious or broken ones:"
            )
            report = run_simulation(sim, fleet, progress=True, stream=sys.stdout)
            _say(f"published {report.sent} messages, {report.acked} acknowledged by the broker")

            counts = _wait_for_store(pg.dsn, report, timeout=60)
            ingestor.stop()
            anchorer.stop()
            # One last anchor so that every receipt below ends on chain.
            code_a, text_a = _run_cli_env(["anchor", "run", "--timeout", "60"], env)
            (out / "logs" / "anchor-run.log").write_text(text_a)
            counts = asyncio.run(_counts(pg.dsn))
            stored = counts.get("readings", 0)
            quarantined = {
                k.split(".", 1)[1]: v for k, v in counts.items() if k.startswith("quarantine.")
            }
            _say(
                f"stored {stored} readings (expected {report.expected_good}) in "
                f"{counts.get('batches', 0)} batches; batch log size {counts.get('log_size', 0)}"
            )
            _say("quarantined by reason (injected -> found):")
            ok = stored == report.expected_good
            for reason in sorted(set(report.by_fault) | set(quarantined)):
                injected, found = report.by_fault.get(reason, 0), quarantined.get(reason, 0)
                mark = "ok" if injected == found else "MISMATCH"
                ok &= injected == found
                _say(f"  {reason:<16} {injected:>4} -> {found:<4} {mark}")
            anchors = asyncio.run(_anchors(pg.dsn))
            _say(f"anchored {len(anchors)} checkpoints on chain {CHAIN_ID}, one transaction each:")
            for a in anchors[-4:]:
                _say(f"  log size {a.log_size:>3}  block {a.block_number:>3}  tx {a.tx_hash}")
            ok &= code_a == 0 and bool(anchors)

            written, picks = asyncio.run(
                _write_receipts(pg.dsn, out / "receipts", config.receipts_batches)
            )
            _say(f"wrote {written} receipts (every reading of batches {picks}) to {out}/receipts/")

            # The HTTP API and the proof explorer, on the same data.
            port = free_port()
            api = _child(
                ["api", "--port", str(port)], env, out / "logs" / "api.log", b"api listening"
            )
            children.append(api)
            sample = sorted((out / "receipts").glob("*.json"))[0]
            sample_doc = json.loads(sample.read_text())
            device_id, seq = sample_doc["reading"]["device_id"], sample_doc["reading"]["seq"]
            http = f"http://127.0.0.1:{port}"
            with urllib.request.urlopen(
                f"{http}/v1/receipts/{device_id}/{seq}", timeout=10
            ) as resp:
                served = json.loads(resp.read())
            ok &= served["leaf_hash"] == sample_doc["leaf_hash"] and served["status"] == "anchored"
            explorer = f"{http}/explorer?device_id={device_id}&seq={seq}"
            _say(f"API {http}: GET /v1/receipts/{device_id}/{seq} -> {served['status']}")
            _say(f"proof explorer (verifies in your browser): {explorer}")
            if not config.keep_running:
                _say("  (live while the demo runs; `cityanchor demo --keep-running` keeps it up)")
            if config.keep_running:
                _say("--keep-running: the services stay up; press Ctrl-C to stop the demo")
                with contextlib.suppress(KeyboardInterrupt):
                    while True:
                        time.sleep(1)
            for child in children:
                child.stop()
            mq.stop()
            pg.stop()
            _say("stopped the ingestor, the anchoring job, Mosquitto and PostgreSQL")

            receipts = sorted(str(p) for p in (out / "receipts").glob("*.json"))
            keys = str(out / "devices" / "*.jwk")  # a glob, expanded by verify itself
            vkey = str(out / "operator.vkey")
            code, text = _run_cli(
                cli_main,
                [
                    "verify",
                    *receipts,
                    "--device-key",
                    keys,
                    "--log-key",
                    vkey,
                    "--rpc",
                    chain.rpc_url,
                    "--witness-key",
                    str(witness_vkey),
                    "--json",
                ],
            )
            results = json.loads(text)
            valid = sum(1 for r in results if r["valid"])
            full = sum(1 for r in results if r["fully_verified"])
            cosigned = sum(
                1
                for r in results
                if any(c["name"] == "witnesses" and c["status"] == "pass" for c in r["checks"])
            )
            _say(
                f"cityanchor verify --rpc {chain.rpc_url}: {valid}/{len(results)} receipts valid "
                f"(exit {code}); every check, the on-chain anchor included, passes on {full}; "
                f"cosigned by the witness: {cosigned}"
            )
            ok &= code == 0 and valid == full == cosigned == len(results) > 0

            cose = [
                p
                for p in receipts
                if json.loads(Path(p).read_text())["reading"]["format"] == "cose-sign1"
            ]
            victim = Path(cose[len(cose) // 2])
            tampered = out / "tampered" / victim.name
            _tamper(victim, tampered)
            code_t, text_t = _run_cli(
                cli_main,
                ["verify", str(tampered), "--device-key", keys, "--rpc", chain.rpc_url, "--json"],
            )
            failed = [
                f"{c['name']} [{c['reason']}]"
                for r in json.loads(text_t)
                for c in r["checks"]
                if c["status"] == "fail"
            ]
            _say(
                f"tampered copy of {victim.name}: exit {code_t}, "
                f"failing checks: {', '.join(failed)}"
            )
            ok &= code_t == 1
        finally:
            for child in children:
                child.stop()
            mq.stop()
            pg.stop()
            chain.stop()
        _say("stopped the chain; removed the private services' directory")

    summary = {
        "devices": config.devices,
        "sent": report.sent,
        "expected_good": report.expected_good,
        "stored": stored,
        "quarantined": quarantined,
        "injected_faults": dict(report.by_fault),
        "batches": counts.get("batches", 0),
        "log_size": counts.get("log_size", 0),
        "anchors": [
            {"log_size": a.log_size, "block_number": a.block_number, "tx_hash": a.tx_hash}
            for a in anchors
        ],
        "explorer_url": explorer,
        "receipts_written": written,
        "receipts_valid": valid,
        "receipts_cosigned": cosigned,
        "tampered_rejected": code_t == 1,
        "seconds": round(time.perf_counter() - started, 1),
        "ok": bool(ok),
    }
    (out / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    _say(f"report: {out / 'report.json'}  ({summary['seconds']} s) -> {'OK' if ok else 'FAILED'}")
    _say(
        f"try:  .venv/bin/cityanchor verify {out}/receipts/*.json "
        f"--device-key '{out}/devices/*.jwk' --log-key {out}/operator.vkey "
        f"--witness-key {out}/witness.vkey"
    )
    return 0 if ok else 1
