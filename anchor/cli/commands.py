"""The ``cityanchor`` command.

One entry point with subcommands; ``main(argv)`` is callable from tests and returns the exit
code. AnchorError is turned into a message and an exit code in one place, :func:`main`.

Exit codes: 0 success (``verify``: every receipt valid), 1 failure (``verify``: any receipt
invalid), 2 usage error (bad flags, unreadable input files).

The parser is built here; the commands live by concern: keys, signatures and proofs in
:mod:`anchor.cli.crypto_commands`, the services in :mod:`anchor.cli.service_commands`, the
registry, tokens and broker in :mod:`anchor.cli.devices`, :mod:`anchor.cli.tokens` and
:mod:`anchor.cli.broker`, the witness in :mod:`anchor.cli.witness`; what they share (exit
codes, input files) in :mod:`anchor.cli.inputs`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from anchor import __version__
from anchor.cli.crypto_commands import add_key_commands, add_proof_commands
from anchor.cli.inputs import (
    BATCH_FILE_LIMIT,
    COMPLETENESS_FILE_LIMIT,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_USAGE,
    MAX_FILE_JSON_DEPTH,
    NOTE_FILE_LIMIT,
    PROOF_FILE_LIMIT,
    RECEIPT_FILE_LIMIT,
)
from anchor.cli.service_commands import add_service_commands
from anchor.errors import AnchorError, UsageError
from anchor.host.redact import RedactingFormatter, redact_text

__all__ = [
    "BATCH_FILE_LIMIT",
    "COMPLETENESS_FILE_LIMIT",
    "EXIT_INVALID",
    "EXIT_OK",
    "EXIT_USAGE",
    "MAX_FILE_JSON_DEPTH",
    "NOTE_FILE_LIMIT",
    "PROOF_FILE_LIMIT",
    "RECEIPT_FILE_LIMIT",
    "main",
]

log = logging.getLogger("anchor")


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

    # In the order of `cityanchor --help`.
    add_key_commands(sub)
    add_service_commands(sub)
    add_proof_commands(sub)

    from anchor.cli.devices import add_db_commands, add_device_commands
    from devices.simulator import add_simulate_command

    add_db_commands(sub)
    add_device_commands(sub)
    add_simulate_command(sub)
    from anchor.cli.tokens import add_token_commands

    add_token_commands(sub)
    from anchor.cli.quarantine import add_quarantine_commands

    add_quarantine_commands(sub)
    from anchor.cli.broker import add_broker_commands

    add_broker_commands(sub)
    from anchor.cli.witness import add_witness_commands

    add_witness_commands(sub)
    from anchor.cli.monitor import add_monitor_command

    add_monitor_command(sub)

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
