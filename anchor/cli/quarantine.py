"""``cityanchor quarantine list``: why the ingestors refused what they refused, without psql.

    cityanchor quarantine list [--device DEVICE_ID] [--reason CODE] [--after ID] [--limit N]
                               [--config TOML | --database-url DSN] [--json]

The rows of ``GET /v1/quarantine`` (:mod:`anchor.store.quarantine`), oldest first: a header row,
one row per refused message, and, when the page is full, the ``--after`` of the next page.
``--json`` prints the API's page, ``{"rows": [...], "next": ID | null}``.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from anchor.cli.devices import database_flags, run_with_store
from anchor.device_id import DEVICE_ID_RE
from anchor.store.quarantine import list_quarantine

__all__ = ["add_quarantine_commands"]

if TYPE_CHECKING:
    _Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    _Subparsers = argparse._SubParsersAction

_REASON = re.compile(r"[a-z0-9_]{1,64}")


def _cmd_list(args: argparse.Namespace) -> int:
    rows = run_with_store(
        args,
        lambda s: list_quarantine(
            s, device_id=args.device, reason=args.reason, after=args.after, limit=args.limit
        ),
    )
    more = rows[-1].id if rows and len(rows) == args.limit else None
    if args.json:
        print(json.dumps({"rows": [r.to_dict() for r in rows], "next": more}, indent=2))
        return 0
    print("ID\tRECEIVED_AT\tDEVICE_ID\tSEQ\tREASON\tDETAIL")
    for r in rows:
        seq = "-" if r.seq is None else str(r.seq)
        print(
            f"{r.id}\t{r.received_at.isoformat()}\t{r.device_id or '-'}\t{seq}\t{r.reason}"
            f"\t{r.detail}"
        )
    if more is not None:
        print(f"# more: --after {more}")
    return 0


def _matching(pattern: re.Pattern[str], what: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if pattern.fullmatch(text) is None:
            raise argparse.ArgumentTypeError(f"not a {what}: {text[:80]!r}")
        return text

    return parse


def _count(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.isdecimal() or len(text) > 19 or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(f"expected an integer in {low}..{high}")
        return int(text)

    return parse


def add_quarantine_commands(subparsers: _Subparsers) -> argparse.ArgumentParser:
    """Add ``quarantine list`` to an argparse subparsers object; sets ``func``."""
    quarantine = subparsers.add_parser(
        "quarantine", help="refused readings and why (what the ingestors quarantined)"
    )
    sub = quarantine.add_subparsers(dest="quarantine_command", required=True, metavar="ACTION")
    p = sub.add_parser("list", help="list quarantine rows, oldest first")
    p.add_argument(
        "--device", type=_matching(DEVICE_ID_RE, "device id"), help="only this device's rows"
    )
    p.add_argument(
        "--reason",
        type=_matching(_REASON, "reason code"),
        help="only this reason code (docs/reason-codes.md), e.g. bad_signature",
    )
    p.add_argument(
        "--after",
        type=_count(0, (1 << 63) - 1),
        default=0,
        metavar="ID",
        help="start after this row id (the cursor the previous page printed)",
    )
    p.add_argument(
        "--limit", type=_count(1, 1000), default=100, help="at most this many (default: 100)"
    )
    database_flags(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_list)
    return quarantine
