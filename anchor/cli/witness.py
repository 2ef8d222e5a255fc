"""The witness commands: ``keygen --witness`` (its key pair) and ``witness serve``.

``cityanchor witness serve --key SKEY --log-key VKEY... --state PATH --listen HOST:PORT`` runs
:mod:`anchor.witness` (c2sp.org/tlog-witness): it prints one ``listening on http://HOST:PORT``
line once the port is bound, stops cleanly on SIGTERM or SIGINT (exit 0), and exits 2 with a
message on a usage error (a key file missing or not a key, a bad ``--listen``, a port in use, a
state file it cannot open).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import signal
from pathlib import Path
from typing import Any

from anchor.cli.inputs import EXIT_OK, read_input
from anchor.errors import AnchorError, UsageError
from anchor.host.files import KEY_FILE_LIMIT

__all__ = ["add_witness_commands", "keygen_witness", "parse_listen", "parse_log_keys"]

log = logging.getLogger("anchor")


def keygen_witness(out: Path, name: str | None, *, force: bool) -> int:
    """``keygen --witness``: ``witness.skey`` (0600, never replaced without ``force``) and
    ``witness.vkey`` (type 0x04) in ``out``."""
    from anchor.cosignature import generate_cosigner_key
    from anchor.host.files import write_private_file, write_public_file

    if not name:
        raise UsageError("keygen --witness needs --name NAME (the witness's name, e.g. a URL)")
    skey_file = out / "witness.skey"
    refusal = (
        f"{skey_file} already exists; refusing to replace the witness key (logs and verifiers "
        "trust its witness.vkey, and its cosignatures are already in receipts). Pass --force "
        "to replace it deliberately."
    )
    if skey_file.exists() and not force:
        raise UsageError(refusal)
    try:
        signer = generate_cosigner_key(name)
    except AnchorError as exc:
        raise UsageError(f"--name {name!r}: {exc.detail}") from None
    try:
        skey_path = write_private_file(skey_file, (signer.skey() + "\n").encode(), replace=force)
    except FileExistsError:
        raise UsageError(refusal) from None
    vkey = signer.verifier.vkey()
    vkey_path = write_public_file(out / "witness.vkey", (vkey + "\n").encode())
    print(f"witness key {name!r} (c2sp.org/tlog-cosignature v1, Ed25519)")
    print(f"  private: {skey_path} (mode 0600; keep it secret)")
    print(f"  public:  {vkey_path}  {vkey}")
    return EXIT_OK


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) -> (host, port); UsageError otherwise."""
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise UsageError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:7380")
    return host, int(port_text)


def parse_log_keys(specs: list[str]) -> dict[str, list[Any]]:
    """``--log-key`` values -> {origin: [NoteVerifier, ...]}.

    Each value is a vkey file (the origin is the key's name) or ``ORIGIN=VKEY_FILE`` for a log
    whose key name is not its origin. A value naming an existing file is always a file.
    """
    from anchor.checkpoint import NoteVerifier

    keys: dict[str, list[NoteVerifier]] = {}
    for spec in specs:
        origin: str | None = None
        path = spec
        if "=" in spec and not Path(spec).exists():
            origin, path = spec.split("=", 1)
            if not origin:
                raise UsageError(f"--log-key {spec!r}: empty origin before '='")
        text = read_input(path, "log key", KEY_FILE_LIMIT).decode("utf-8", "replace").strip()
        try:
            verifier = NoteVerifier.from_vkey(text)
        except AnchorError as exc:
            raise UsageError(f"log key {path}: {exc.detail}") from None
        bucket = keys.setdefault(origin or verifier.name, [])
        for other in bucket:
            same_id = (other.name, other.key_hash) == (verifier.name, verifier.key_hash)
            if same_id and other.public_key != verifier.public_key:
                raise UsageError(f"log key {path}: two keys share the name and key ID")
        if verifier not in bucket:
            bucket.append(verifier)
    return keys


def _load_signer(path: str) -> Any:
    from anchor.cosignature import CosignerSigner

    if not Path(path).exists():
        raise UsageError(
            f"cannot read the witness key {path}: no such file "
            "(create one with `cityanchor keygen --witness --name NAME --out DIR`)"
        )
    raw = read_input(path, "the witness key", KEY_FILE_LIMIT)
    try:
        return CosignerSigner.from_skey(raw.decode("utf-8", "replace").strip())
    except AnchorError as exc:
        raise UsageError(f"witness key {path}: {exc.detail}") from None


def _cmd_witness_serve(args: argparse.Namespace) -> int:
    from anchor.witness import WitnessConfig, WitnessState, serve_witness

    logging.getLogger("anchor").setLevel(min(log.level or logging.INFO, logging.INFO))
    signer = _load_signer(args.key)
    if not args.log_key:
        raise UsageError("witness serve needs at least one --log-key")
    log_keys = parse_log_keys(args.log_key)
    host, port = parse_listen(args.listen)
    try:
        state = WitnessState(args.state)
    except AnchorError as exc:
        raise UsageError(exc.detail) from None
    config = WitnessConfig(signer=signer, log_keys=log_keys)

    def listening(url: str) -> None:
        print(f"listening on {url}", flush=True)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await serve_witness(
                config, state, host=host, port=port, stop=stop, on_listening=listening
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(f"--listen {args.listen}: the port is in use") from None
            raise UsageError(f"--listen {args.listen}: {exc.strerror or exc}") from None

    log.info(
        "witness %s for %s, state %s", signer.verifier.vkey(), ", ".join(sorted(log_keys)),
        args.state,
    )  # fmt: skip
    try:
        asyncio.run(main())
    finally:
        state.close()
    return EXIT_OK


def add_witness_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``witness serve``."""
    p = sub.add_parser("witness", help="run a C2SP tlog-witness (cosign checkpoints of logs)")
    wsub = p.add_subparsers(dest="witness_command", required=True, metavar="ACTION")
    s = wsub.add_parser(
        "serve", help="serve POST /add-checkpoint (c2sp.org/tlog-witness) and the monitoring GET"
    )
    s.add_argument("--key", required=True, metavar="SKEY", help="witness.skey (keygen --witness)")
    s.add_argument(
        "--log-key",
        action="extend",
        nargs="+",
        default=[],
        metavar="VKEY",
        help="a log's note vkey file (its origin is the key name), or ORIGIN=VKEY_FILE; repeatable",
    )
    s.add_argument(
        "--state",
        required=True,
        metavar="PATH",
        help="SQLite file of what the witness cosigned (created if missing; back it up)",
    )
    s.add_argument(
        "--listen", default="127.0.0.1:7380", metavar="HOST:PORT", help="(default %(default)s)"
    )
    s.set_defaults(func=_cmd_witness_serve)
