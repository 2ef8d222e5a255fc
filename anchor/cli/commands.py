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
import os
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
from anchor.cli.parsing import ERROR_PREFIX, finish_parser
from anchor.cli.service_commands import add_service_commands
from anchor.errors import AnchorError, UsageError
from anchor.host.logs import LOG_BACKUPS, LOG_MAX_BYTES, configure_logging
from anchor.host.redact import redact_text

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
        epilog="Errors start with 'cityanchor: error:'; exit status 2 is a usage error (bad "
        "flags, unusable input files), 1 a failure (verify: a receipt is invalid).",
    )
    parser.add_argument("--version", action="version", version=f"cityanchor {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)"
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="json: one JSON object per line (time, level, logger, message, fields)",
    )
    parser.add_argument(
        "--log-file",
        metavar="PATH",
        help="log to PATH, rotated by size, instead of stderr (under systemd or docker leave "
        "it out: the supervisor keeps stderr)",
    )
    parser.add_argument(
        "--log-max-bytes",
        type=int,
        default=LOG_MAX_BYTES,
        metavar="N",
        help="--log-file: rotate when the file reaches N bytes",
    )
    parser.add_argument(
        "--log-backups",
        type=int,
        default=LOG_BACKUPS,
        metavar="N",
        help="--log-file: rotated files kept (PATH.1 .. PATH.N)",
    )
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
    from anchor.cli.archive import add_archive_commands

    add_archive_commands(sub)
    from anchor.cli.monitor import add_monitor_command

    add_monitor_command(sub)

    p = sub.add_parser("demo", help="run the end-to-end demo (private services, simulated fleet)")
    p.add_argument("--out", default="demo-output", metavar="DIR", help="output directory")
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
    finish_parser(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (argparse itself exits 2 on bad flags)."""
    parser = _build_parser()
    args, extras = parser.parse_known_args(argv)
    # A command whose positional list may continue after its flags (`verify R1 --log-key K R2`)
    # names it with set_defaults(more_positionals=...); anything else left over is an error.
    more: str | None = getattr(args, "more_positionals", None)
    if extras:
        if more is None or any(e.startswith("-") for e in extras):
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        setattr(args, more, [*getattr(args, more), *extras])
    if args.log_max_bytes < 1 or args.log_backups < 0:
        parser.error("--log-max-bytes must be at least 1 and --log-backups at least 0")
    configure_logging(
        fmt=args.log_format,
        file=Path(args.log_file) if args.log_file else None,
        max_bytes=args.log_max_bytes,
        backups=args.log_backups,
    )
    verbose = args.verbose + getattr(args, "verbose_after", 0)
    log.setLevel(logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    try:
        code: int = args.func(args)
    except UsageError as exc:
        print(f"{ERROR_PREFIX}{redact_text(exc.detail)}", file=sys.stderr)
        return EXIT_USAGE
    except AnchorError as exc:
        # Connection failures may quote a DSN or an RPC URL: never with its password.
        print(f"{ERROR_PREFIX}{redact_text(str(exc))}", file=sys.stderr)
        return EXIT_INVALID
    except BrokenPipeError:
        # The reader went away (`verify --json | head -1`): what it wanted it has. Point stdout
        # at /dev/null so that the interpreter's final flush does not fail again, and exit
        # quietly, as the Python documentation recommends (signal module, "Note on SIGPIPE").
        _silence_stdout()
        return EXIT_INVALID
    return code


def _silence_stdout() -> None:
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a real file (a test's capture): nothing will be flushed to a pipe
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
