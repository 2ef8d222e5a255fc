"""Keys, signatures and proofs: ``keygen``, ``sign``, ``verify``, ``export``,
``verify-consistency`` and ``verify-completeness``.

Everything here runs offline on files (``verify --rpc`` asks a chain, ``verify-consistency``
without ``--proof`` the database); the checks themselves are the core's (anchor.verify,
anchor.merkle, anchor.completeness).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import stat
import sys
from pathlib import Path

from anchor.cli.inputs import (
    BATCH_FILE_LIMIT,
    COMPLETENESS_FILE_LIMIT,
    EXIT_INVALID,
    EXIT_OK,
    NOTE_FILE_LIMIT,
    PROOF_FILE_LIMIT,
    RECEIPT_FILE_LIMIT,
    add_service_flags,
    load_device_keys,
    load_log_keys,
    load_witness_keys,
    read_input,
    read_json_file,
    settings_from_args,
)
from anchor.device_id import DEVICE_ID_PATTERN
from anchor.errors import AnchorError, UsageError
from anchor.host.files import KEY_FILE_LIMIT
from anchor.wire import JsonRejected, strict_loads

__all__ = ["add_key_commands", "add_proof_commands"]

_DEFAULT_LOG_NAME = "cityanchor.example/log"
_UNREADABLE_INPUT = ("key_file_unreadable", "key_invalid", "state_unreadable", "state_invalid")


def _cmd_keygen(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.operator and args.witness:
        raise UsageError("keygen: choose one of --operator and --witness")
    if args.witness:
        from anchor.cli.witness import keygen_witness

        return keygen_witness(out, args.name, force=args.force)
    if args.operator:
        name = args.name or _DEFAULT_LOG_NAME
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
        signer = generate_note_key(name)
        try:
            skey_path = write_private_file(
                skey_file, (signer.skey() + "\n").encode(), replace=args.force
            )
        except FileExistsError:
            raise UsageError(refusal) from None
        vkey_path = write_public_file(
            out / "operator.vkey", (signer.verifier.vkey() + "\n").encode()
        )
        print(f"operator note key {name!r}")
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
    # The kid as the API and `device show` print it (hex), and as envelope headers carry it.
    from anchor.keys import b64url_encode

    print(f"  kid:     {files.kid.hex()} (base64url {b64url_encode(files.kid)})")
    return EXIT_OK


def _cmd_sign(args: argparse.Namespace) -> int:
    from devices.keystore import load_private_key
    from devices.signer import DeviceSigner, adopt_legacy_state

    try:
        values = strict_loads(args.values, max_depth=2)
    except JsonRejected as exc:
        raise UsageError(f"--values must be a flat JSON object of measurements: {exc}") from None
    if not isinstance(values, dict):
        raise UsageError("--values must be a JSON object")
    try:
        # Keyed on the device id (a rotated key continues the chain); an older state file
        # named after the key path is moved to that name.
        state = Path(args.state) if args.state else adopt_legacy_state(args.key, args.device_id)
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


def _cmd_verify(args: argparse.Namespace) -> int:
    from anchor.receipt import loads_receipt
    from anchor.verify import Check, ReceiptReport, verify_receipt

    _sort_out_keys(args)
    device_keys = load_device_keys(args.device_key)
    log_keys = load_log_keys(args.log_key)
    witness_keys = load_witness_keys(args.witness_key)
    if args.witness_quorum is not None and args.witness_quorum < 1:
        raise UsageError("--witness-quorum must be at least 1")
    if args.witness_quorum is not None and not witness_keys:
        raise UsageError("--witness-quorum needs --witness-key")
    quorum = 1 if args.witness_quorum is None else args.witness_quorum
    checker = None
    if args.rpc:
        from anchor.anchoring.backend import rpc_anchor_checker

        checker = rpc_anchor_checker(args.rpc)
    results: list[tuple[str, ReceiptReport]] = []
    for path in args.receipts:
        raw = read_input(path, "receipt", RECEIPT_FILE_LIMIT)
        try:
            receipt = loads_receipt(raw)
        except AnchorError as exc:
            bad = Check("receipt", "fail", exc.detail, exc.reason)
            results.append((path, ReceiptReport("?", 0, (bad,))))
            continue
        report = verify_receipt(
            receipt,
            device_keys=device_keys,
            log_verifiers=log_keys,
            anchor_checker=checker,
            witness_verifiers=witness_keys,
            witness_quorum=quorum,
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


def _key_kind(path: str) -> str | None:
    """``device_key``, ``log_key`` or ``witness_key`` when the file at ``path`` is such a key
    (by its content, never its name); None for anything else (a receipt, a missing file)."""
    from anchor.checkpoint import ALG_ED25519
    from anchor.cosignature import ALG_COSIGNATURE_V1

    try:
        # Only a regular file is looked into: opening a FIFO would block, and read_input refuses
        # anything else with its own message when the path is read as a receipt.
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_size > KEY_FILE_LIMIT:
            return None
        with open(path, "rb") as f:
            head = f.read(KEY_FILE_LIMIT + 1)
    except OSError:
        return None
    if len(head) > KEY_FILE_LIMIT:
        return None
    text = head.decode("utf-8", "replace").strip()
    if text.startswith("{"):
        try:
            doc = strict_loads(head, max_depth=3)
        except JsonRejected:
            return None
        return "device_key" if isinstance(doc, dict) and "kty" in doc else None
    # A note vkey, name+keyid+base64(type || key): its type byte says whose key it is.
    parts = text.split("+", 2)
    if len(parts) != 3 or "\n" in text:
        return None
    try:
        raw = base64.b64decode(parts[2], validate=True)
    except ValueError:
        return None
    kinds = {ALG_ED25519: "log_key", ALG_COSIGNATURE_V1: "witness_key"}
    return kinds.get(raw[0]) if raw else None


def _sort_out_keys(args: argparse.Namespace) -> None:
    """Move key files that landed among the receipts to their key flag.

    Key flags take one value each, so ``--device-key a.jwk b.jwk r.json`` (what the shell makes
    of ``--device-key devices/*.jwk r.json``) leaves b.jwk among the receipts. A JWK is a device
    key, a type-0x01 vkey a log key, a type-0x04 vkey a witness key whatever flag it followed,
    so each goes where its content says and shell globs keep working after any key flag.
    """
    receipts = []
    for path in args.receipts:
        kind = _key_kind(path)
        if kind is None:
            receipts.append(path)
        else:
            getattr(args, kind).append(path)
    if not receipts:
        raise UsageError("no receipt to verify: give receipt JSON files (the files given are keys)")
    args.receipts = receipts


def _cmd_export(args: argparse.Namespace) -> int:
    from anchor.chainpoint import chainpoint_proofs

    if not args.chainpoint:
        raise UsageError("choose an export format: --chainpoint")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    for path in args.batches:
        try:
            batch = read_json_file(path, "batch file", BATCH_FILE_LIMIT)
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


def _cmd_verify_consistency(args: argparse.Namespace) -> int:
    import asyncio

    from anchor import merkle
    from anchor.checkpoint import open_checkpoint, parse_checkpoint_unverified
    from anchor.store import Store

    notes = [
        read_input(p, "checkpoint", NOTE_FILE_LIMIT).decode("utf-8", "replace")
        for p in (args.old, args.new)
    ]
    keys = load_log_keys(args.log_key)
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
        hexes = read_json_file(args.proof, "proof", PROOF_FILE_LIMIT)
        try:
            proof = [bytes.fromhex(h) for h in hexes]
        except (TypeError, ValueError) as exc:
            raise UsageError(f"proof {args.proof} is not a JSON list of hex hashes") from exc
    else:
        settings = settings_from_args(args)

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

    device_keys = load_device_keys(args.device_key)
    log_keys = load_log_keys(args.log_key)
    raw = read_input(args.proof, "completeness proof", COMPLETENESS_FILE_LIMIT)
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


def add_key_flag(p: argparse.ArgumentParser, flag: str, metavar: str, help: str) -> None:
    """A repeatable key flag: one file (or quoted glob) per occurrence, never several."""
    p.add_argument(flag, action="append", default=[], metavar=metavar, help=help)


def add_key_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``keygen``, ``sign``, ``verify`` and ``export``."""
    p = sub.add_parser(
        "keygen", help="generate a device key, the operator's checkpoint key or a witness key"
    )
    p.add_argument("--device-id", help=f"device id ({DEVICE_ID_PATTERN})")
    p.add_argument(
        "--type", choices=("Ed25519", "P-256"), default="Ed25519", help="device key type"
    )
    p.add_argument("--operator", action="store_true", help="generate the operator's note key")
    p.add_argument(
        "--witness",
        action="store_true",
        help="generate a witness key (witness.skey, witness.vkey; c2sp.org/tlog-cosignature)",
    )
    p.add_argument(
        "--name",
        default=None,
        help=f"--operator: key/log name (default {_DEFAULT_LOG_NAME}); --witness: its name",
    )
    p.add_argument(
        "--out", default=".", metavar="DIR", help="directory the key files are written to"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="--operator/--witness: replace an existing key",
    )
    p.set_defaults(func=_cmd_keygen)

    p = sub.add_parser("sign", help="sign one reading as a device")
    p.add_argument("--key", required=True, help="device private key (PEM)")
    p.add_argument("--device-id", required=True)
    p.add_argument("--kind", required=True, help="e.g. iot.air_quality, 5g.cell_kpi")
    p.add_argument("--values", required=True, help="JSON object, e.g. '{\"pm2_5\": 12.5}'")
    p.add_argument("--ts", type=int, default=None, help="device time in ms (default: now)")
    p.add_argument("--format", choices=("cose-sign1", "jws"), default="cose-sign1")
    p.add_argument(
        "--state",
        help="seq/prev state file (default: DEVICE_ID.state.json in the key's directory, "
        "so a rotated key kept there continues the seq)",
    )
    p.add_argument(
        "--out",
        default="-",
        metavar="FILE",
        help="file the envelope is written to ('-': stdout, JWS only)",
    )
    p.set_defaults(func=_cmd_sign)

    p = sub.add_parser("verify", help="verify receipts offline (and on chain with --rpc)")
    p.add_argument("receipts", nargs="+", metavar="RECEIPT", help="receipt JSON files")
    # One value per flag, so that a flag never swallows the receipts after it; a quoted glob
    # (--device-key 'devices/*.jwk') is expanded by anchor.cli.inputs.expand_key_paths.
    add_key_flag(
        p,
        "--device-key",
        "JWK_FILE",
        "a trusted device public key (JWK file); repeat the flag for more, or give a quoted "
        "glob ('devices/*.jwk')",
    )
    add_key_flag(
        p,
        "--log-key",
        "VKEY_FILE",
        "the operator's checkpoint verifier key (C2SP note vkey); repeatable",
    )
    add_key_flag(
        p,
        "--witness-key",
        "VKEY_FILE",
        "a witness's cosignature verifier key (C2SP tlog-cosignature, type 0x04); "
        "repeatable. Without one the witnesses check is skipped",
    )
    p.add_argument(
        "--witness-quorum",
        type=int,
        default=None,
        metavar="K",
        help="distinct trusted witnesses that must have cosigned each receipt's checkpoint "
        "(default 1: one honest witness that saw the checkpoint is what makes a split view "
        "detectable; ask more to need more of them to collude)",
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
    p.set_defaults(func=_cmd_verify, more_positionals="receipts")

    p = sub.add_parser("export", help="export proofs in other formats")
    p.add_argument("batches", nargs="+", metavar="BATCH_FILE", help="batch JSON files")
    p.add_argument("--chainpoint", action="store_true", help="Chainpoint v2 proofs (merkletools)")
    p.add_argument(
        "--out",
        default="chainpoint",
        metavar="DIR",
        help="directory the proof files are written to (one per batch)",
    )
    p.set_defaults(func=_cmd_export)


def add_proof_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``verify-consistency`` and ``verify-completeness``."""
    p = sub.add_parser(
        "verify-consistency", help="check that a newer checkpoint extends an older one"
    )
    add_service_flags(p, mqtt=False, operator_key=False, origin=False)
    p.add_argument("old", metavar="OLD", help="older checkpoint (signed note file)")
    p.add_argument("new", metavar="NEW", help="newer checkpoint (signed note file)")
    add_key_flag(p, "--log-key", "VKEY_FILE", "the operator's checkpoint verifier key; repeatable")
    p.add_argument("--proof", help="JSON list of hex hashes (default: ask the database)")
    p.set_defaults(func=_cmd_verify_consistency)

    p = sub.add_parser(
        "verify-completeness",
        help="check a device's completeness proof (GET /v1/devices/{id}/completeness) offline",
    )
    p.add_argument("proof", metavar="FILE", help="completeness proof JSON")
    add_key_flag(p, "--log-key", "VKEY_FILE", "the operator's checkpoint verifier key; repeatable")
    add_key_flag(
        p,
        "--device-key",
        "JWK_FILE",
        "the device's public key (JWK file); repeatable, quoted globs welcome; without one, "
        "signatures are not checked",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_verify_completeness)
