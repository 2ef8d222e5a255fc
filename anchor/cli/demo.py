"""The offline demo behind ``make demo``: the verifiable core end to end, no services needed.

Three devices (an Ed25519 air-quality sensor signing COSE, a P-256 5G gNB signing COSE ES256, an
Ed25519 traffic counter signing JWS) sign a few hundred readings; the readings are sealed into
batches, the batch roots appended to a batch log, the log checkpoint signed by the operator; a
receipt is cut for every reading and verified with ``cityanchor verify``. Then one byte of one
envelope is flipped and the verifier must name the failing checks.

Output layout (DESIGN.md "Interfaces"): ``receipts/*.json``, ``devices/{device_id}.jwk``,
``operator.vkey``; plus ``batches/``, ``chainpoint/``, ``tampered/`` and ``report.json``.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from anchor.checkpoint import generate_note_key
from anchor.envelope import FORMAT_COSE, FORMAT_JWS, Envelope, parse_envelope
from anchor.host.files import write_private_file, write_public_file
from anchor.receipt import Receipt, dumps_receipt
from anchor.sealing import BatchLog, SealedBatch, seal_batch
from devices.keystore import generate_device_key, load_private_key
from devices.readings import generate_values
from devices.signer import DeviceSigner

__all__ = ["DemoDevice", "run_offline_demo"]

LOG_ORIGIN = "demo.cityanchor.example/log"


@dataclass(frozen=True, slots=True)
class DemoDevice:
    device_id: str
    key_type: str
    format: str
    kind: str


DEMO_DEVICES = (
    DemoDevice("aq-nanshan-0001", "Ed25519", FORMAT_COSE, "iot.air_quality"),
    DemoDevice("gnb-futian-0042", "P-256", FORMAT_COSE, "5g.cell_kpi"),
    DemoDevice("traffic-luohu-0007", "Ed25519", FORMAT_JWS, "iot.traffic_count"),
)


def _say(text: str = "") -> None:
    print(text, flush=True)


# The demo runs the real `cityanchor` commands; their entry point is handed in by the command
# that starts the demo (anchor.cli.commands), so the demo does not import it back (no cycle).
CliMain = Callable[[Sequence[str]], int]


def _run_cli(cli_main: CliMain, argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli_main(argv)
    return code, out.getvalue()


def _tamper(receipt_path: Path, target: Path) -> tuple[int, int]:
    """Flip one byte of the envelope's signature in a copy of the receipt; return (offset, len)."""
    doc = json.loads(receipt_path.read_text())
    b64 = doc["reading"]["envelope"]
    raw = bytearray(base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)))
    # The last byte of a COSE_Sign1 message is the last byte of its signature: the envelope still
    # parses, so the verifier gets as far as the signature and leaf-hash checks.
    offset = len(raw) - 1
    raw[offset] ^= 0x01
    doc["reading"]["envelope"] = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(doc, indent=2) + "\n")
    return offset, len(raw)


def run_offline_demo(
    out: Path, *, cli_main: CliMain, readings: int = 300, batch_size: int = 64
) -> int:
    """Run the demo into ``out`` (its generated subfolders are replaced); return an exit code."""
    started = time.perf_counter()
    for sub in ("receipts", "devices", "device-keys", "batches", "chainpoint", "tampered"):
        shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)

    _say("== cityanchor offline demo: the verifiable core, end to end ==")
    operator = generate_note_key(LOG_ORIGIN)
    write_private_file(out / "operator.skey", (operator.skey() + "\n").encode())
    write_public_file(out / "operator.vkey", (operator.verifier.vkey() + "\n").encode())
    _say(f"operator checkpoint key: {operator.verifier.vkey()}")

    signers = []
    for dev in DEMO_DEVICES:
        files = generate_device_key(out / "device-keys", dev.device_id, key_type=dev.key_type)
        (out / "devices").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(files.public_jwk, out / "devices" / f"{dev.device_id}.jwk")
        key = load_private_key(files.private_pem)
        signers.append((dev, DeviceSigner(dev.device_id, key, format=dev.format)))
        _say(f"device {dev.device_id:<20} {dev.key_type:<8} {dev.format:<10} {dev.kind}")

    # 1. Devices sign readings, interleaved as they would arrive at the ingestor.
    rng = random.Random(20261125)
    t0 = int(time.time() * 1000) - readings * 10_000
    envelopes: list[Envelope] = []
    for i in range(readings):
        dev, signer = signers[i % len(signers)]
        ts = t0 + i * 10_000
        raw = signer.sign(dev.kind, generate_values(dev.kind, rng, ts_ms=ts), ts_ms=ts)
        envelopes.append(parse_envelope(raw))
    _say(f"signed {len(envelopes)} readings")

    # 2. Seal batches and append their roots to the batch log.
    log = BatchLog(LOG_ORIGIN)
    batches: list[tuple[SealedBatch, int]] = []
    for start in range(0, len(envelopes), batch_size):
        batch = seal_batch(len(batches) + 1, envelopes[start : start + batch_size])
        log_index = log.append(batch.size, batch.root)
        batches.append((batch, log_index))
        (out / "batches").mkdir(parents=True, exist_ok=True)
        (out / "batches" / f"{batch.id}.json").write_text(
            json.dumps(
                {
                    "id": batch.id,
                    "size": batch.size,
                    "root": batch.root.hex(),
                    "log_index": log_index,
                    "leaf_hashes": [h.hex() for h in batch.leaf_hashes],
                },
                indent=2,
            )
            + "\n"
        )
        _say(
            f"batch {batch.id}: {batch.size:>3} readings, root {batch.root.hex()[:16]}…,"
            f" log index {log_index}"
        )

    # 3. One signed checkpoint of the whole log; every receipt proves inclusion under it.
    note = log.checkpoint(operator)
    (out / "checkpoint.txt").write_text(note)
    _say(f"checkpoint: log size {log.size}, root {log.root().hex()[:16]}…, signed by the operator")
    receipts: list[Receipt] = []
    for batch, log_index in batches:
        receipts.extend(log.receipts(batch, log_index, note, log.size))
    receipt_dir = out / "receipts"
    receipt_dir.mkdir(parents=True, exist_ok=True)
    for r in receipts:
        (receipt_dir / f"{r.device_id}-{r.seq:06d}.json").write_text(dumps_receipt(r))
    _say(f"wrote {len(receipts)} receipts to {receipt_dir}/")

    # 4. Chainpoint v2 export of every batch (checked by merkletools in the test suite).
    code, text = _run_cli(
        cli_main,
        ["export", "--chainpoint", "--out", str(out / "chainpoint")]
        + [str(out / "batches" / f"{b.id}.json") for b, _ in batches],
    )
    _say(text.strip().splitlines()[-1] if text.strip() else "chainpoint export: no output")

    # 5. Verify every receipt with the stable CLI, trusting only the published public keys.
    key_args = [
        a
        for d in DEMO_DEVICES
        for a in ("--device-key", str(out / "devices" / f"{d.device_id}.jwk"))
    ]
    receipt_files = sorted(str(p) for p in receipt_dir.glob("*.json"))
    verify_argv = [
        "verify",
        *receipt_files,
        *key_args,
        "--log-key",
        str(out / "operator.vkey"),
        "--json",
    ]
    code, text = _run_cli(cli_main, verify_argv)
    reports = json.loads(text)
    valid = sum(1 for r in reports if r["valid"])
    offline_ok = sum(
        1
        for r in reports
        if all(c["status"] == "pass" for c in r["checks"] if c["name"] != "anchors")
    )
    _say(
        f"cityanchor verify: {valid}/{len(reports)} valid (exit {code}); every offline check "
        f"passed on {offline_ok}; anchors skipped until the anchoring job runs"
    )
    if code != 0:
        _say("demo FAILED: a freshly issued receipt did not verify")
        return 1

    # 6. Tamper with one envelope: the verifier must reject it and say why.
    victim = Path(receipt_files[len(receipt_files) // 2])
    tampered = out / "tampered" / victim.name
    offset, length = _tamper(victim, tampered)
    _say(f"tampering: flipped one bit of byte {offset}/{length} of the envelope in {victim.name}")
    code_t, text_t = _run_cli(
        cli_main, ["verify", str(tampered), *key_args, "--log-key", str(out / "operator.vkey")]
    )
    for line in text_t.splitlines():
        if "FAIL" in line or "INVALID" in line:
            _say("  " + line.strip())
    _say(f"cityanchor verify on the tampered receipt: exit {code_t}")
    if code_t != 1:
        _say("demo FAILED: the tampered receipt was not rejected")
        return 1

    report = {
        "readings": len(envelopes),
        "batches": len(batches),
        "log_size": log.size,
        "log_root": log.root().hex(),
        "receipts_valid": valid,
        "tampered_rejected": code_t == 1,
        "tampered_failed_checks": [
            c["name"] + ":" + str(c["reason"])
            for r in json.loads(
                _run_cli(cli_main, ["verify", str(tampered), *key_args, "--json"])[1]
            )
            for c in r["checks"]
            if c["status"] == "fail"
        ],
        "seconds": round(time.perf_counter() - started, 2),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    _say(f"report: {out / 'report.json'}  ({report['seconds']} s)")
    _say(
        "try:  .venv/bin/cityanchor verify demo-output/receipts/*.json "
        "--device-key demo-output/devices/*.jwk --log-key demo-output/operator.vkey"
    )
    return 0
