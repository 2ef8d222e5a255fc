"""``cityanchor archive``: move whole months of readings out of PostgreSQL into verified files,
list them, restore them (issue 16, "Retention without losing proofs"; anchor.store.archives).

``archive --before YYYY-MM --dir DIR`` archives every month before YYYY-MM that still holds
batches in the database (never the current month; a month with a batch that no anchored
checkpoint covers is refused, ``archive_unanchored``, unless ``--allow-unanchored``);
``archive list`` shows the archived months; ``archive restore --month YYYY-MM --dir DIR`` brings
one back. Progress lines go to stderr, results to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from anchor.cli.inputs import EXIT_OK, add_service_flags, settings_from_args
from anchor.errors import UsageError

if TYPE_CHECKING:
    from anchor.store.archives import ArchiveRecord

__all__ = ["add_archive_commands"]


def _month(text: str) -> str:
    """An argparse ``type``: ``YYYY-MM``."""
    from anchor.store.archives import parse_month

    try:
        parse_month(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _directory(args: argparse.Namespace, settings: object) -> Path:
    raw = args.dir or getattr(settings, "archive_dir", "")
    if not raw:
        raise UsageError("--dir is needed (or archive_dir in the configuration)")
    path = Path(raw)
    if not path.is_dir():
        raise UsageError(f"--dir {path}: not a directory")
    return path


def _progress(text: str) -> None:
    print(f"archive: {text}", file=sys.stderr, flush=True)


def _step(month: str, step: str) -> None:
    _progress(f"{month}: {_STEPS.get(step, step)}")


def _describe(r: ArchiveRecord) -> str:
    return (
        f"{r.month}: {r.file}, {r.batches:,} batches, {r.readings:,} readings, "
        f"{r.bytes:,} bytes, log {r.log_from}..{r.log_to}, sha256 {r.sha256.hex()}"
    )


def _cmd_archive(args: argparse.Namespace) -> int:
    if args.archive_command == "list":
        return _cmd_list(args)
    if args.archive_command == "restore":
        return _cmd_restore(args)
    if args.before is None:
        raise UsageError("--before YYYY-MM is needed (or an action: list, restore)")
    now = datetime.now(UTC)
    if args.before > f"{now.year:04d}-{now.month:02d}":
        raise UsageError(f"--before {args.before} is after the current month: it is never archived")
    settings = settings_from_args(args)
    directory = _directory(args, settings)

    async def run() -> int:
        from anchor.store import Store

        store = await Store.connect(settings.database_url, max_size=1, command_timeout=None)
        try:
            months = await store.months_to_archive(args.before)
            if not months:
                print(f"archive: nothing to archive before {args.before}")
            for month in months:
                _progress(f"{month}: writing {directory}")
                record, now_done = await store.archive_month(
                    month,
                    directory,
                    allow_unanchored=args.allow_unanchored,
                    after_step=functools.partial(_step, month),
                )
                word = "archived" if now_done else "already archived"
                print(f"{word} {_describe(record)}")
        finally:
            await store.close()
        return EXIT_OK

    return asyncio.run(run())


_STEPS = {
    "partition": "its partition is ready",
    "file": "file written and fsynced",
    "verified": "file and manifest re-read and checked against the batch roots",
    "detached": "partition detached",
    "dropped": "partition dropped; the month is in its archive file",
}


def _cmd_list(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)

    async def run() -> int:
        from anchor.store import Store

        store = await Store.connect(settings.database_url, max_size=1)
        try:
            records = await store.archives()
        finally:
            await store.close()
        if not records:
            print("no archived months")
        for r in records:
            when = r.restored_at or r.archived_at
            print(
                f"{r.month}  {r.state:<8}  {r.file}  {r.bytes:,} bytes  {r.batches:,} batches  "
                f"{r.readings:,} readings  log {r.log_from}..{r.log_to}  "
                f"{'restored' if r.restored_at else 'archived'} {when.isoformat()}"
            )
        return EXIT_OK

    return asyncio.run(run())


def _cmd_restore(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    directory = _directory(args, settings)

    async def run() -> int:
        from anchor.store import Store

        store = await Store.connect(settings.database_url, max_size=1, command_timeout=None)
        try:
            _progress(f"{args.month}: checking {directory} against the manifest and batch roots")
            record, now_done = await store.restore_month(args.month, directory)
        finally:
            await store.close()
        word = "restored" if now_done else "already in the database:"
        print(f"{word} {_describe(record)}")
        return EXIT_OK

    return asyncio.run(run())


def _add_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dir",
        metavar="DIR",
        help="the archive directory (default: archive_dir from the configuration)",
    )


def add_archive_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``archive`` (``--before``), ``archive list`` and ``archive restore``."""
    p = sub.add_parser(
        "archive",
        help="move whole months of readings to verified files (list, restore)",
        description="Archive every month before --before that still holds batches in the "
        "database: one gzip JSON-lines file and a manifest per month in --dir, checked, then "
        "the month's partition is dropped. Receipts stay servable from the files (api "
        "--archive-dir). See docs/operator-guide.md, 'Retention and archives'.",
    )
    add_service_flags(p, mqtt=False, operator_key=False, origin=False)
    p.add_argument(
        "--before",
        type=_month,
        metavar="YYYY-MM",
        help="archive the months before this one (never the current month)",
    )
    _add_dir(p)
    p.add_argument(
        "--allow-unanchored",
        action="store_true",
        help="archive a month even if a batch of it is not yet covered by an anchored "
        "checkpoint (default: refused, archive_unanchored)",
    )
    p.add_argument(
        "-v",
        "--verbose",
        dest="verbose_after",
        action="count",
        default=argparse.SUPPRESS,
        help="more log output (also accepted before the subcommand)",
    )
    p.set_defaults(func=_cmd_archive, archive_command=None)
    asub = p.add_subparsers(dest="archive_command", required=False, metavar="ACTION")
    a = asub.add_parser("list", help="the archived months: file, size, state")
    add_service_flags(a, mqtt=False, operator_key=False, origin=False)
    a.set_defaults(func=_cmd_archive)
    a = asub.add_parser("restore", help="bring an archived month back into the database")
    add_service_flags(a, mqtt=False, operator_key=False, origin=False)
    a.add_argument("--month", type=_month, required=True, metavar="YYYY-MM", help="the month")
    _add_dir(a)
    a.set_defaults(func=_cmd_archive)
