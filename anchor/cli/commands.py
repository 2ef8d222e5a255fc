"""The ``cityanchor`` command.

One entry point with subcommands; ``main(argv)`` is callable from tests and returns the exit
code. AnchorError is turned into a message and an exit code in one place, :func:`main`.

Exit codes: 0 success (``verify``: every receipt valid), 1 failure (``verify``: any receipt
invalid), 2 usage error (bad flags, unreadable input files).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anchor import __version__
from anchor.device_id import DEVICE_ID_PATTERN
from anchor.errors import AnchorError, UsageError
from anchor.host.files import KEY_FILE_LIMIT, read_user_file
from anchor.host.redact import RedactingFormatter, redact_text
from anchor.wire import JsonRejected, strict_loads

__all__ = ["main"]

log = logging.getLogger("anchor")

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2


# Caps on the files commands read (each at least its format's own limit): a file larger than
# this is refused after reading at most cap + 1 bytes, and so is anything not a regular file
# (/dev/zero, a FIFO, a directory): exit status 2.
RECEIPT_FILE_LIMIT = 1 << 20  # anchor.receipt.MAX_RECEIPT_SIZE
NOTE_FILE_LIMIT = 1 << 20  # anchor.checkpoint.MAX_NOTE_SIZE
PROOF_FILE_LIMIT = 1 << 20  # a consistency proof: at most 64 hex hashes
BATCH_FILE_LIMIT = 64 << 20
COMPLETENESS_FILE_LIMIT = 256 << 20  # 1000 readings per API proof are about 25 MiB
MAX_FILE_JSON_DEPTH = 64  # json.loads recurses per level: bound it first (anchor.wire)
_UNREADABLE_INPUT = ("key_file_unreadable", "key_invalid", "state_unreadable", "state_invalid")


def _read_bytes(path: str, what: str, limit: int) -> bytes:
    return read_user_file(path, what=what, limit=limit)


def _json_file(path: str, what: str, limit: int) -> Any:
    """A JSON file, read by :func:`anchor.wire.strict_loads` (UsageError if refused)."""
    raw = _read_bytes(path, what, limit)
    try:
        return strict_loads(raw, max_depth=MAX_FILE_JSON_DEPTH)
    except JsonRejected as exc:
        raise UsageError(f"{what} {path} is not JSON we accept: {exc}") from None


# ---------------------------------------------------------------------------------------- keygen
def _cmd_keygen(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.operator:
        from anchor.checkpoint import generate_note_key
        from anchor.host.files import write_private_file, write_public_file

        skey_file = out / "operator.skey"
        refusal = (
            f"{skey_file} already exists; refusing to replace the operator's checkpoint key "
            "(every checkpoint is signed with it, and verifiers trust its operator.vkey). "
            "Pass --force to replace it deliberately, and keep the old operator.vkey: "
            "receipts issued so far verify only with it."
        )
        if skey_file.exists() and not args.force:
            raise UsageError(refusal)
        signer = generate_note_key(args.name)
        try:
            skey_path = write_private_file(
                skey_file, (signer.skey() + "\n").encode(), replace=args.force
            )
        except FileExistsError:
            raise UsageError(refusal) from None
        vkey_path = write_public_file(
            out / "operator.vkey", (signer.verifier.vkey() + "\n").encode()
        )
        print(f"operator note key {args.name!r}")
        print(f"  private: {skey_path} (mode 0600; keep it secret)")
        print(f"  public:  {vkey_path}  {signer.verifier.vkey()}")
        return EXIT_OK
    if not args.device_id:
        raise UsageError("keygen needs --device-id (or --operator)")
    from devices.keystore import generate_device_key

    files = generate_device_key(out, args.device_id, key_type=args.type)
    print(f"device key for {args.device_id} ({args.type})")
    print(f"  private: {files.private_pem} (mode 0600)")
    print(f"  public:  {files.public_jwk}")
    return EXIT_OK


# ------------------------------------------------------------------------------------------ sign
def _cmd_sign(args: argparse.Namespace) -> int:
    from devices.keystore import load_private_key
    from devices.signer import DeviceSigner

    try:
        values = strict_loads(args.values, max_depth=2)
    except JsonRejected as exc:
        raise UsageError(f"--values must be a flat JSON object of measurements: {exc}") from None
    if not isinstance(values, dict):
        raise UsageError("--values must be a JSON object")
    state = (
        Path(args.state) if args.state else Path(str(args.key) + f".{args.device_id}.state.json")
    )
    try:
        key = load_private_key(Path(args.key))
        signer = DeviceSigner.open(args.device_id, key, state_path=state, format=args.format)
    except AnchorError as exc:
        # An input file that cannot be read (missing, a FIFO, a device, too large, not a key
        # or a state file) is a usage error, exit status 2, like every command's input files.
        if exc.reason in _UNREADABLE_INPUT:
            raise UsageError(exc.detail) from exc
        raise
    envelope = signer.sign(args.kind, values, ts_ms=args.ts)
    if args.out == "-":
        if args.format != "jws":
            raise UsageError("a COSE envelope is binary: give --out FILE")
        sys.stdout.write(envelope.decode("ascii") + "\n")
    else:
        Path(args.out).write_bytes(envelope)
        print(
            f"signed {args.device_id} seq {signer.seq} ({args.format}, {len(envelope)} bytes)"
            f" -> {args.out}"
        )
    return EXIT_OK


# ---------------------------------------------------------------------------------------- verify
def _load_device_keys(paths: Sequence[str]) -> list[Any]:
    from anchor.keys import PublicKey

    keys = []
    for path in paths:
        jwk = _json_file(path, "device key", KEY_FILE_LIMIT)
        if isinstance(jwk, dict) and "version" in jwk and "reading" in jwk:
            raise UsageError(f"{path} is a receipt, not a key: put receipts before --device-key")
        try:
            keys.append(PublicKey.from_jwk(jwk))
        except AnchorError as exc:
            raise UsageError(f"device key {path}: {exc.detail}") from exc
    return keys


def _load_log_keys(paths: Sequence[str]) -> list[Any]:
    from anchor.checkpoint import NoteVerifier

    verifiers = []
    for path in paths:
        text = _read_bytes(path, "log key", KEY_FILE_LIMIT).decode("utf-8", "replace").strip()
        try:
            verifiers.append(NoteVerifier.from_vkey(text))
        except AnchorError as exc:
            raise UsageError(f"log key {path}: {exc.detail}") from exc
    return verifiers


def _cmd_verify(args: argparse.Namespace) -> int:
    from anchor.receipt import loads_receipt
    from anchor.verify import Check, ReceiptReport, verify_receipt

    device_keys = _load_device_keys(args.device_key)
    log_keys = _load_log_keys(args.log_key)
    checker = None
    if args.rpc:
        from anchor.anchoring.backend import rpc_anchor_checker

        checker = rpc_anchor_checker(args.rpc)
    results: list[tuple[str, ReceiptReport]] = []
    for path in args.receipts:
        raw = _read_bytes(path, "receipt", RECEIPT_FILE_LIMIT)
        try:
            receipt = loads_receipt(raw)
        except AnchorError as exc:
            bad = Check("receipt", "fail", exc.detail, exc.reason)
            results.append((path, ReceiptReport("?", 0, (bad,))))
            continue
        report = verify_receipt(
            receipt, device_keys=device_keys, log_verifiers=log_keys, anchor_checker=checker
        )
        results.append((path, report))
    if args.json:
        doc = [{"file": path, **report.to_dict()} for path, report in results]
        print(json.dumps(doc, indent=2))
    else:
        for path, report in results:
            verdict = "VALID" if report.valid else "INVALID"
            if report.valid and not report.fully_verified:
                verdict += " (some checks skipped)"
            print(f"{path}: {verdict}")
            for c in report.checks:
                tag = {"pass": "PASS", "fail": "FAIL", "skip": "SKIP"}[c.status]
                reason = f" [{c.reason}]" if c.reason else ""
                if args.quiet and c.status == "pass":
                    continue
                print(f"  {tag} {c.name:<21}{reason} {c.detail}")
        invalid = sum(1 for _, r in results if not r.valid)
        print(f"{len(results) - invalid} of {len(results)} receipts valid")
    return EXIT_OK if all(r.valid for _, r in results) else EXIT_INVALID


# ---------------------------------------------------------------------------------------- export
def _cmd_export(args: argparse.Namespace) -> int:
    from anchor.chainpoint import chainpoint_proofs

    if not args.chainpoint:
        raise UsageError("choose an export format: --chainpoint")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    for path in args.batches:
        try:
            batch = _json_file(path, "batch file", BATCH_FILE_LIMIT)
            leaves = [bytes.fromhex(h) for h in batch["leaf_hashes"]]
            batch_id, rfc_root = int(batch["id"]), bytes.fromhex(batch["root"])
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"{path} is not a batch file (id, root, leaf_hashes): {exc}") from exc
        docs = chainpoint_proofs(leaves, batch_id=batch_id, rfc9162_root=rfc_root)
        target = out / f"batch-{batch_id}.chainpoint.json"
        target.write_text(json.dumps(docs, indent=2) + "\n")
        count += len(docs)
        print(f"batch {batch_id}: {len(docs)} Chainpoint v2 proofs -> {target}")
    print(f"{count} proofs exported")
    return EXIT_OK


# ---------------------------------------------------------------------------------------- config
def _settings(args: argparse.Namespace, **extra: Any) -> Any:
    from anchor.host.config import load_settings

    overrides = {
        "database_url": getattr(args, "database_url", None),
        "mqtt_url": getattr(args, "mqtt", None),
        "operator_key_file": getattr(args, "operator_key", None),
        "log_origin": getattr(args, "origin", None),
        "batch_size": getattr(args, "batch_size", None),
        "batch_age_ms": getattr(args, "batch_age_ms", None),
        "verify_processes": getattr(args, "verify_processes", None),
        **extra,
    }
    config = Path(args.config) if getattr(args, "config", None) else None
    return load_settings(toml_path=config, overrides=overrides)


def _cmd_config_show(args: argparse.Namespace) -> int:
    print(json.dumps(_settings(args).masked(), indent=2))
    return EXIT_OK


def _add_service_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", metavar="TOML", help="settings file (CITYANCHOR_* variables override)"
    )
    p.add_argument("--database-url", help="PostgreSQL DSN (CITYANCHOR_DATABASE_URL)")
    p.add_argument("--mqtt", metavar="URL", help="broker, mqtt://host:port (CITYANCHOR_MQTT_URL)")
    p.add_argument("--operator-key", metavar="SKEY_FILE", help="checkpoint signing key")
    p.add_argument("--origin", help="log origin line of checkpoints")


def _add_reorg_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--reorg-window",
        type=int,
        metavar="BLOCKS",
        help="re-check anchors recorded in the last BLOCKS blocks (and each chain's newest); one "
        "a reorg removed is marked anchor_vanished and anchored again (default: "
        "anchor_reorg_window_blocks, 128)",
    )


# ---------------------------------------------------------------------------------------- ingest
def _cmd_ingest(args: argparse.Namespace) -> int:
    from anchor.ingest.main import run_ingest

    settings = _settings(args)
    return run_ingest(settings, workers=args.workers, worker_index=args.worker_index)


# ------------------------------------------------------------------------------------------ audit
def _cmd_audit(args: argparse.Namespace) -> int:
    import asyncio

    from anchor.cli.audit import run_audit
    from anchor.host.files import load_operator_signer

    settings = _settings(args)
    keys = _load_log_keys(args.log_key)
    if not keys:
        try:
            keys = [load_operator_signer(settings.operator_key_file).verifier]
        except AnchorError:
            print("audit: no --log-key and no operator key: checkpoint signatures not checked")
    backends = []
    if not args.no_chain:
        from anchor.anchoring.backend import build_backend

        backends = [build_backend(c, with_key=False) for c in settings.chains if c.contract]
    report = asyncio.run(
        run_audit(
            settings.database_url,
            log_verifiers=keys,
            backends=backends,
            mark_vanished=args.mark_vanished,
        )
    )
    for d in report.divergences:
        print(f"DIVERGENCE {d.kind}: {d.what}: {d.detail}")
    if report.anchors_marked:
        print(
            f"audit: marked {report.anchors_marked} anchor(s) anchor_vanished: receipts no longer "
            "cite them; the anchoring job anchors the newest checkpoint again if it was one"
        )
    if report.anchors_vanished:
        print(
            f"audit: {report.anchors_vanished} anchor(s) marked vanished earlier "
            "(vanished_anchors; anchored again since or covered by a newer anchor)"
        )
    print(
        f"audit: {report.batches} batches, {report.readings} readings ({report.erased} erased), "
        f"{report.checkpoints} checkpoints, {report.anchors_checked} anchors checked on chain"
        + (
            f" ({report.anchors_skipped} on unconfigured chains skipped)"
            if report.anchors_skipped
            else ""
        )
        + (" -> OK" if report.ok else f" -> {len(report.divergences)} DIVERGENCE(S)")
    )
    return EXIT_OK if report.ok else EXIT_INVALID


# -------------------------------------------------------------------------------------------- up
def _cmd_up(args: argparse.Namespace) -> int:
    from anchor.cli.up import UpOptions, run_up

    if (args.rpc_url is None) != (args.chain_id is None):
        raise UsageError("--rpc-url and --chain-id go together (with --chain-key-file)")
    return run_up(
        UpOptions(
            data_dir=Path(args.data_dir),
            mqtt_port=args.mqtt_port,
            http_port=args.http_port,
            chain_port=args.chain_port,
            rpc_url=args.rpc_url,
            chain_id=args.chain_id,
            chain_key_file=args.chain_key_file,
            anchor_period_s=_seconds(args.anchor_period),
            anchor_recheck_s=_seconds(args.anchor_recheck),
            operator_token_file=Path(args.operator_token_file)
            if args.operator_token_file
            else None,
            workers=args.workers,
            broker_autosave_interval_s=args.broker_autosave_interval,
            broker_autosave_changes=args.broker_autosave_changes,
            broker_max_queued_messages=args.broker_max_queued,
        )
    )


# ------------------------------------------------------------------------------------------- api
def _cmd_api(args: argparse.Namespace) -> int:
    from anchor.api.app import run_api

    logging.getLogger("anchor").setLevel(min(log.level or logging.INFO, logging.INFO))
    if args.workers > 1 and args.port == 0:
        raise UsageError("--workers needs a fixed --port (the processes share it)")
    return run_api(
        _settings(args),
        host=args.host,
        port=args.port,
        workers=args.workers,
        reuse_port=args.reuse_port,
    )


# ------------------------------------------------------------------------------------- anchoring
def _cmd_anchor(args: argparse.Namespace) -> int:
    from anchor.anchoring.main import run_anchor_loop, run_anchor_once

    recheck = getattr(args, "recheck_interval", None)
    settings = _settings(
        args,
        anchor_reorg_window_blocks=args.reorg_window,
        anchor_recheck_ms=None if recheck is None else max(1, round(_seconds(recheck) * 1000)),
    )
    if args.anchor_command == "run":
        return run_anchor_once(settings, timeout_s=args.timeout)
    return run_anchor_loop(
        settings, period_s=_seconds(args.period or f"{settings.anchor_period_s}s")
    )


def _seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            number = text[: -len(unit)]
            break
    else:
        unit, number = "s", text
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise UsageError(f"not a duration: {text!r} (e.g. 60s, 2m, 500ms)") from None
    if value <= 0:
        raise UsageError(f"duration must be positive: {text!r}")
    return value


def _cmd_chain_deploy(args: argparse.Namespace) -> int:
    import dataclasses

    from anchor.anchoring.backend import deploy
    from anchor.host.config import ChainSettings, settings_to_toml

    settings = _settings(args)
    existing = next((c for c in settings.chains if c.name == args.name), None)
    chain = existing or ChainSettings(name=args.name)
    updates = {
        k: v
        for k, v in {
            "rpc_url": args.rpc_url,
            "chain_id": args.chain_id,
            "key_file": args.key_file,
            "fee_mode": args.fee_mode,
        }.items()
        if v is not None
    }
    chain = dataclasses.replace(chain, **updates)
    address = deploy(chain, submitters=args.submitter)
    chain = dataclasses.replace(chain, contract=address)
    print(f"AnchorRegistry deployed on chain {chain.chain_id} at {address}")
    if args.config:
        others = [c for c in settings.chains if c.name != chain.name]
        updated = dataclasses.replace(settings, chains=(*others, chain))
        Path(args.config).write_text(settings_to_toml(updated), encoding="utf-8")
        print(f"wrote the address to {args.config} (chain {chain.name!r})")
    return EXIT_OK


def _cmd_verify_consistency(args: argparse.Namespace) -> int:
    import asyncio

    from anchor import merkle
    from anchor.checkpoint import open_checkpoint, parse_checkpoint_unverified
    from anchor.store import Store

    notes = [
        _read_bytes(p, "checkpoint", NOTE_FILE_LIMIT).decode("utf-8", "replace")
        for p in (args.old, args.new)
    ]
    keys = _load_log_keys(args.log_key)
    checkpoints = []
    for path, note in zip((args.old, args.new), notes, strict=True):
        if keys:
            errors = []
            for key in keys:
                try:
                    checkpoints.append(open_checkpoint(note, key))
                    break
                except AnchorError as exc:
                    errors.append(exc)
            else:
                print(f"FAIL checkpoint_signature {path}: {errors[-1]}")
                return EXIT_INVALID
        else:
            checkpoints.append(parse_checkpoint_unverified(note))
    old, new = checkpoints
    if args.proof:
        hexes = _json_file(args.proof, "proof", PROOF_FILE_LIMIT)
        try:
            proof = [bytes.fromhex(h) for h in hexes]
        except (TypeError, ValueError) as exc:
            raise UsageError(f"proof {args.proof} is not a JSON list of hex hashes") from exc
    else:
        settings = _settings(args)

        async def fetch() -> list[bytes]:
            store = await Store.connect(settings.database_url, max_size=1)
            try:
                return await store.consistency_proof(old.size, new.size)
            finally:
                await store.close()

        proof = asyncio.run(fetch())
    try:
        merkle.verify_consistency(old.size, new.size, proof, old.root, new.root)
    except AnchorError as exc:
        print(f"FAIL consistency [{exc.reason}] {exc.detail}")
        return EXIT_INVALID
    signed = "signed checkpoints" if keys else "checkpoints (signatures not checked: no --log-key)"
    print(
        f"PASS consistency: the log at size {new.size} extends the log at size {old.size} "
        f"({signed}, {len(proof)}-hash proof)"
    )
    return EXIT_OK


def _cmd_verify_completeness(args: argparse.Namespace) -> int:
    from anchor.completeness import loads_completeness, verify_completeness

    device_keys = _load_device_keys(args.device_key)
    log_keys = _load_log_keys(args.log_key)
    raw = _read_bytes(args.proof, "completeness proof", COMPLETENESS_FILE_LIMIT)
    try:
        report = verify_completeness(
            loads_completeness(raw), device_key=device_keys, log_verifiers=log_keys
        )
    except AnchorError as exc:
        if args.json:
            print(json.dumps({"valid": False, "reason": exc.reason, "detail": exc.detail}))
        else:
            print(f"FAIL completeness [{exc.reason}] {exc.detail}")
        return EXIT_INVALID
    if args.json:
        print(json.dumps({"valid": True, **report.to_dict()}, indent=2))
        return EXIT_OK
    gaps = ", ".join(f"{a}..{b}" if a != b else str(a) for a, b in report.gaps) or "none"
    print(
        f"PASS completeness: {report.device_id} seqs {report.from_seq}..{report.to_seq}: "
        f"{report.readings} readings chained and in the log at size {report.log_size} "
        f"({report.status}); missing: {gaps}"
    )
    if report.erased or report.unlinked:
        print(f"  {report.erased} erased; links not checkable at seqs {list(report.unlinked)}")
    if not report.signatures_checked:
        print("  SKIP device signatures (no --device-key)")
    if not report.checkpoint_signed:
        print("  SKIP checkpoint signature (no --log-key)")
    return EXIT_OK


# ------------------------------------------------------------------------------------------ demo
def _cmd_demo(args: argparse.Namespace) -> int:
    if args.offline:
        from anchor.cli.demo import run_offline_demo

        return run_offline_demo(
            Path(args.out), cli_main=main, readings=args.readings, batch_size=args.batch_size
        )
    from anchor.cli.demo_live import LiveDemoConfig, run_live_demo

    config = LiveDemoConfig(
        devices=args.devices,
        rate=args.rate,
        duration_s=args.duration,
        keep_running=args.keep_running,
    )
    return run_live_demo(Path(args.out), config, cli_main=main)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cityanchor",
        description="Tamper-evident smart-city sensor data: signed readings, receipts, anchors.",
    )
    parser.add_argument("--version", action="version", version=f"cityanchor {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("keygen", help="generate a device key or the operator's checkpoint key")
    p.add_argument("--device-id", help=f"device id ({DEVICE_ID_PATTERN})")
    p.add_argument(
        "--type", choices=("Ed25519", "P-256"), default="Ed25519", help="device key type"
    )
    p.add_argument("--operator", action="store_true", help="generate the operator's note key")
    p.add_argument("--name", default="cityanchor.example/log", help="operator key/log name")
    p.add_argument("--out", default=".", help="directory for the key files")
    p.add_argument(
        "--force", action="store_true", help="--operator: replace an existing operator key"
    )
    p.set_defaults(func=_cmd_keygen)

    p = sub.add_parser("sign", help="sign one reading as a device")
    p.add_argument("--key", required=True, help="device private key (PEM)")
    p.add_argument("--device-id", required=True)
    p.add_argument("--kind", required=True, help="e.g. iot.air_quality, 5g.cell_kpi")
    p.add_argument("--values", required=True, help="JSON object, e.g. '{\"pm2_5\": 12.5}'")
    p.add_argument("--ts", type=int, default=None, help="device time in ms (default: now)")
    p.add_argument("--format", choices=("cose-sign1", "jws"), default="cose-sign1")
    p.add_argument("--state", help="seq/prev state file (default: next to the key)")
    p.add_argument("--out", default="-", help="envelope output file ('-': stdout, JWS only)")
    p.set_defaults(func=_cmd_sign)

    p = sub.add_parser("verify", help="verify receipts offline (and on chain with --rpc)")
    p.add_argument("receipts", nargs="+", metavar="RECEIPT", help="receipt JSON files")
    # nargs="+" with extend lets a shell glob (--device-key devices/*.jwk) work as well as
    # repeated flags; receipts therefore go before the key flags.
    p.add_argument(
        "--device-key",
        action="extend",
        nargs="+",
        default=[],
        metavar="JWK_FILE",
        help="trusted device public keys (JWK files); repeatable, globs welcome",
    )
    p.add_argument(
        "--log-key",
        action="extend",
        nargs="+",
        default=[],
        metavar="VKEY_FILE",
        help="the operator's checkpoint verifier key (C2SP note vkey); repeatable",
    )
    p.add_argument(
        "--rpc",
        metavar="URL",
        action="append",
        default=[],
        help="JSON-RPC endpoint of an anchoring chain (repeatable, one per chain)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("-q", "--quiet", action="store_true", help="print only failed or skipped checks")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("export", help="export proofs in other formats")
    p.add_argument("batches", nargs="+", metavar="BATCH_FILE", help="batch JSON files")
    p.add_argument("--chainpoint", action="store_true", help="Chainpoint v2 proofs (merkletools)")
    p.add_argument("--out", default="chainpoint", help="output directory")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("config", help="configuration")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    c = csub.add_parser("show", help="print the effective settings, secrets masked")
    _add_service_flags(c)
    c.set_defaults(func=_cmd_config_show)

    p = sub.add_parser("ingest", help="run the MQTT ingestor")
    _add_service_flags(p)
    p.add_argument("--batch-size", type=int, help="readings per batch (default 1000)")
    p.add_argument("--batch-age-ms", type=int, help="seal a batch this old (default 1000)")
    p.add_argument("--verify-processes", type=int, help="signature workers (default: one per core)")
    p.add_argument(
        "--workers", type=int, default=1, help="ingestor processes on the shared subscription"
    )
    p.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_ingest)

    p = sub.add_parser(
        "up", help="run everything on this machine (database, broker, chain, services)"
    )
    p.add_argument("--data-dir", required=True, help="all state lives here; reuse it to resume")
    p.add_argument("--mqtt-port", type=int, help="broker port (default: last time's, else free)")
    p.add_argument("--http-port", type=int, help="API port (default: last time's, else free)")
    p.add_argument(
        "--chain-port", type=int, help="local chain port (default: last time's, else free)"
    )
    p.add_argument("--rpc-url", help="an external EVM chain instead of the local one")
    p.add_argument("--chain-id", type=int, help="the external chain's id")
    p.add_argument("--chain-key-file", help="the external chain account's hex private key")
    p.add_argument("--anchor-period", default="60s", help="anchoring period, e.g. 60s")
    p.add_argument(
        "--anchor-recheck",
        default="30s",
        metavar="DURATION",
        help="how often recent anchors are re-checked against the chain (reorgs), e.g. 30s",
    )
    p.add_argument("--operator-token-file", help="where to keep the operator's API token")
    p.add_argument("--workers", type=int, default=1, help="ingestor processes")
    p.add_argument(
        "--broker-autosave-interval",
        type=int,
        default=1,
        metavar="SECONDS",
        help="Mosquitto saves its database every SECONDS: a crash loses at most that much of what "
        "it PUBACKed and had not delivered (default: %(default)s)",
    )
    p.add_argument(
        "--broker-autosave-changes",
        type=int,
        default=None,
        metavar="N",
        help="save after every N changes instead (each queued reading is one; every save "
        "rewrites the whole backlog, see docs/operator-guide.md) (default: off)",
    )
    p.add_argument(
        "--broker-max-queued",
        type=int,
        default=1_000_000,
        metavar="N",
        help="readings the broker queues for the ingestors before it drops them "
        "(~0.63 KB of memory each) (default: %(default)s)",
    )
    p.set_defaults(func=_cmd_up)

    p = sub.add_parser("audit", help="recompute every batch, the log, checkpoints and anchors")
    _add_service_flags(p)
    p.add_argument(
        "--log-key",
        action="extend",
        nargs="+",
        default=[],
        metavar="VKEY_FILE",
        help="operator key to check checkpoint signatures (default: the configured one)",
    )
    p.add_argument("--no-chain", action="store_true", help="do not check anchors on chain")
    p.add_argument(
        "--mark-vanished",
        action="store_true",
        help="mark anchors found gone from their chain anchor_vanished (as the anchoring job "
        "does within its reorg window), so receipts stop citing them",
    )
    p.set_defaults(func=_cmd_audit)

    p = sub.add_parser("api", help="serve the HTTP API (receipts, verification, operator)")
    _add_service_flags(p)
    p.add_argument("--host", default="127.0.0.1", help="listen address (default loopback)")
    p.add_argument("--port", type=int, default=8080, help="listen port")
    p.add_argument("--workers", type=int, default=1, help="API processes sharing the port")
    p.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_api)

    p = sub.add_parser("anchor", help="anchor the batch log's checkpoints on chain")
    asub = p.add_subparsers(dest="anchor_command", required=True, metavar="ACTION")
    a = asub.add_parser(
        "run",
        help="re-check recent anchors, anchor the newest checkpoint once and wait for it",
    )
    _add_service_flags(a)
    a.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for confirmation")
    _add_reorg_flags(a)
    a.set_defaults(func=_cmd_anchor)
    a = asub.add_parser("loop", help="the anchoring job: one transaction per period")
    _add_service_flags(a)
    a.add_argument("--period", help="e.g. 60s (default: anchor_period_s)")
    _add_reorg_flags(a)
    a.add_argument(
        "--recheck-interval",
        metavar="DURATION",
        help="how often recent anchors are re-checked against the chain, e.g. 30s (default: "
        "anchor_recheck_ms, 30s; also at start)",
    )
    a.set_defaults(func=_cmd_anchor)

    p = sub.add_parser("chain", help="chain operations")
    chsub = p.add_subparsers(dest="chain_command", required=True, metavar="ACTION")
    c = chsub.add_parser("deploy", help="deploy the AnchorRegistry contract")
    _add_service_flags(c)
    c.add_argument("--name", default="evm", help="backend name (a [[chains]] entry)")
    c.add_argument("--rpc-url", help="JSON-RPC endpoint")
    c.add_argument("--chain-id", type=int, help="the chain id the endpoint must report")
    c.add_argument("--key-file", help="file holding the deploying account's hex private key")
    c.add_argument("--fee-mode", choices=("eip1559", "legacy", "zero"))
    c.add_argument(
        "--submitter",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="restrict anchoring to these accounts, forever (repeatable)",
    )
    c.set_defaults(func=_cmd_chain_deploy)

    p = sub.add_parser(
        "verify-consistency", help="check that a newer checkpoint extends an older one"
    )
    _add_service_flags(p)
    p.add_argument("old", metavar="OLD", help="older checkpoint (signed note file)")
    p.add_argument("new", metavar="NEW", help="newer checkpoint (signed note file)")
    p.add_argument("--log-key", action="extend", nargs="+", default=[], metavar="VKEY_FILE")
    p.add_argument("--proof", help="JSON list of hex hashes (default: ask the database)")
    p.set_defaults(func=_cmd_verify_consistency)

    p = sub.add_parser(
        "verify-completeness",
        help="check a device's completeness proof (GET /v1/devices/{id}/completeness) offline",
    )
    p.add_argument("proof", metavar="FILE", help="completeness proof JSON")
    p.add_argument("--log-key", action="extend", nargs="+", default=[], metavar="VKEY_FILE")
    p.add_argument(
        "--device-key",
        action="extend",
        nargs="+",
        default=[],
        metavar="JWK_FILE",
        help="the device's public keys (JWK files); without one, signatures are not checked",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_verify_completeness)

    from anchor.cli.devices import add_db_commands, add_device_commands
    from devices.simulator import add_simulate_command

    add_db_commands(sub)
    add_device_commands(sub)
    add_simulate_command(sub)
    from anchor.cli.tokens import add_token_commands

    add_token_commands(sub)
    from anchor.cli.broker import add_broker_commands

    add_broker_commands(sub)

    p = sub.add_parser("demo", help="run the end-to-end demo (private services, simulated fleet)")
    p.add_argument("--out", default="demo-output", help="output directory")
    p.add_argument("--offline", action="store_true", help="the core only: no services needed")
    p.add_argument(
        "--keep-running",
        action="store_true",
        help="live: keep the services and the explorer up until Ctrl-C",
    )
    p.add_argument("--devices", type=int, default=120, help="live: simulated devices")
    p.add_argument("--rate", type=float, default=400.0, help="live: readings per second")
    p.add_argument("--duration", type=float, default=45.0, help="live: seconds of simulation")
    p.add_argument("--readings", type=int, default=300, help="offline: readings to sign")
    p.add_argument("--batch-size", type=int, default=64, help="offline: readings per batch")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (argparse itself exits 2 on bad flags)."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    root = logging.getLogger()
    if not root.handlers:  # what logging.basicConfig would do, with secrets masked
        handler = logging.StreamHandler()
        handler.setFormatter(RedactingFormatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    log.setLevel(
        logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING
    )
    try:
        code: int = args.func(args)
    except UsageError as exc:
        print(f"cityanchor: error: {redact_text(exc.detail)}", file=sys.stderr)
        return EXIT_USAGE
    except AnchorError as exc:
        # Connection failures may quote a DSN or an RPC URL: never with its password.
        print(f"cityanchor: {redact_text(str(exc))}", file=sys.stderr)
        return EXIT_INVALID
    return code


if __name__ == "__main__":
    sys.exit(main())
