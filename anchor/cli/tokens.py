"""``cityanchor token create|revoke|list``: the operator's API tokens from the command line
(the tokens themselves are :mod:`anchor.api.tokens`)."""

from __future__ import annotations

import argparse
import getpass
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from anchor.api.tokens import (
    SCOPES,
    NewToken,
    create_token,
    parse_token,
    revoke_token,
)
from anchor.cli.devices import database_flags, run_with_store
from anchor.host.files import write_private_file
from anchor.store import Store
from anchor.store import operator as ops
from anchor.store.operator import TokenRow

__all__ = ["add_token_commands"]

if TYPE_CHECKING:
    _Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    _Subparsers = argparse._SubParsersAction

T = TypeVar("T")


def _run(args: argparse.Namespace, work: Callable[[Store], Awaitable[T]]) -> T:
    # The same store plumbing as the device commands: one helper for every DB subcommand.
    return run_with_store(args, work)


def _cli_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _cmd_create(args: argparse.Namespace) -> int:
    async def work(store: Store) -> NewToken:
        new = await create_token(store, name=args.name, scopes=args.scope)
        await ops.record_audit(
            store,
            actor=_cli_actor(),
            action="token.create",
            target=f"token:{new.record.id}",
            detail={"name": new.record.name, "scopes": list(new.record.scopes)},
        )
        return new

    new = _run(args, work)
    if args.out:
        write_private_file(Path(args.out), (new.token + "\n").encode("ascii"))
    if args.json:
        print(json.dumps({**new.record.to_dict(), "token": new.token}, indent=2))
    else:
        print(f"token {new.record.id} {new.record.name!r}: {' '.join(new.record.scopes)}")
        print(f"  {new.token}")
        where = f"; also in {args.out}" if args.out else ""
        print(f"  (shown once: only its SHA-256 is stored{where})")
    return 0


def _cmd_revoke(args: argparse.Namespace) -> int:
    async def work(store: Store) -> TokenRow:
        record = await revoke_token(store, args.token_id)
        await ops.record_audit(
            store, actor=_cli_actor(), action="token.revoke", target=f"token:{record.id}"
        )
        return record

    record = _run(args, work)
    if args.json:
        print(json.dumps(record.to_dict(), indent=2))
    else:
        assert record.revoked_at is not None
        print(f"token {record.id} {record.name!r} revoked at {record.revoked_at.isoformat()}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    records = _run(args, lambda s: ops.list_tokens(s, after=args.after, limit=args.limit))
    if args.json:
        print(json.dumps([r.to_dict() for r in records], indent=2))
        return 0
    print("ID\tNAME\tSCOPES\tSTATE\tLAST_USED")
    for r in records:
        state = f"revoked {r.revoked_at.isoformat()}" if r.revoked_at else "active"
        used = r.last_used_at.isoformat() if r.last_used_at else "never used"
        print(f"{r.id}\t{r.name}\t{','.join(r.scopes)}\t{state}\t{used}")
    if records and len(records) == args.limit:
        print(f"# more: --after {records[-1].id}")
    return 0


def _limit(text: str) -> int:
    if text.isdecimal() and 1 <= int(text) <= 1000:
        return int(text)
    raise argparse.ArgumentTypeError("expected 1..1000")


def _token_id(text: str) -> int:
    # Accept the bare id or a whole token (its id part), never echoing a secret back.
    parsed = parse_token(text)
    if parsed is not None:
        return parsed[0]
    if text.isdecimal() and 1 <= int(text) < 1 << 63:
        return int(text)
    raise argparse.ArgumentTypeError("expected a token id (a positive integer)")


def add_token_commands(subparsers: _Subparsers) -> argparse.ArgumentParser:
    """Add ``token create|revoke|list`` to an argparse subparsers object; each sets ``func``."""
    token = subparsers.add_parser("token", help="API bearer tokens for the operator endpoints")
    sub = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")

    def common(p: argparse.ArgumentParser) -> None:
        # --config and --database-url, read as every command reads its settings.
        database_flags(p)
        p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("create", help="create a token (its secret is printed once)")
    p.add_argument("--name", required=True, help="who or what holds it, e.g. ops-alice")
    p.add_argument(
        "--scope",
        action="extend",
        nargs="+",
        required=True,
        choices=SCOPES,
        metavar="SCOPE",
        help=f"repeatable: {', '.join(SCOPES)}",
    )
    p.add_argument("--out", metavar="FILE", help="also write the token to FILE (mode 0600)")
    common(p)
    p.set_defaults(func=_cmd_create)

    p = sub.add_parser("revoke", help="revoke a token (it stops working at once)")
    p.add_argument("token_id", type=_token_id, metavar="ID")
    common(p)
    p.set_defaults(func=_cmd_revoke)

    p = sub.add_parser("list", help="list tokens (never their secrets), oldest first")
    p.add_argument("--after", type=_token_id, metavar="ID", help="start after this id (cursor)")
    p.add_argument("--limit", type=_limit, default=100, help="at most this many (max 1000)")
    common(p)
    p.set_defaults(func=_cmd_list)
    return token
