"""Operator commands for the device registry and the database schema.

Async functions (:func:`register`, :func:`import_devices`, :func:`rotate`, :func:`revoke`,
:func:`list_devices`, :func:`show`) do the work against a :class:`~anchor.store.Store`;
:func:`add_device_commands` and :func:`add_db_commands` put them on an argparse parser as

    cityanchor device register DEVICE_ID --jwk FILE [--district D] [--kind K]
    cityanchor device import FILE [--format csv|json]
    cityanchor device rotate DEVICE_ID --jwk FILE
    cityanchor device revoke DEVICE_ID [--reason TEXT]
    cityanchor device list [--district D] [--status active|revoked] [--after ID] [--limit N]
    cityanchor device show DEVICE_ID
    cityanchor db migrate

each with ``--config TOML`` and ``--database-url`` (settings read as every command reads them:
flag over ``$CITYANCHOR_DATABASE_URL`` over the file) and, except ``db migrate``, ``--json``.
``register`` is ``POST /v1/devices``'s own code path (:mod:`anchor.broker.enrol`): when the
broker requires device logins it issues the login, has the broker confirm it and prints it once;
``import`` does so for every device it registers; ``revoke`` deletes the login from the broker
as the API does. ``list`` prints a header row and, when the page is full, the ``--after`` of the
next page. Handlers are sync ``(args) -> int`` functions that run ``asyncio.run``; failures are
raised as :class:`~anchor.errors.AnchorError` for ``cityanchor.main`` to report.

Import files (all-or-nothing, in one transaction; every bad row is reported with its line):

* CSV, UTF-8, ``#`` comment lines and blank lines ignored. Either a header naming the columns
  ``device_id`` (required), ``district``, ``kind`` and ``public_key_jwk`` (inline JWK JSON) or
  ``public_key_jwk_path`` (a JWK file, relative to the CSV's directory), or no header and the
  columns ``device_id,district,kind,KEY`` where KEY is inline JWK JSON when it starts with
  ``{`` and a file path otherwise.
* JSON: a list of objects ``{"device_id", "public_key_jwk", "district", "kind"}``
  (``public_key_jwk_path`` instead of ``public_key_jwk`` is accepted too).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from anchor.broker.enrol import broker_admin, register_device, register_devices
from anchor.broker.logins import revoke_device_login
from anchor.cli.inputs import settings_from_args
from anchor.errors import AnchorError, Reason, UsageError
from anchor.host.files import read_user_file
from anchor.keys import PublicKey
from anchor.store import DeviceRecord, DeviceSpec, Store
from anchor.store.device_json import device_json
from anchor.wire import JsonRejected, nesting_depth, strict_decoder, strict_loads

__all__ = [
    "ImportFileError",
    "add_db_commands",
    "add_device_commands",
    "device_to_dict",
    "import_devices",
    "list_devices",
    "load_jwk",
    "migrate",
    "parse_import",
    "register",
    "revoke",
    "rotate",
    "show",
]

DATABASE_URL_ENV = "CITYANCHOR_DATABASE_URL"
_MAX_IMPORT_BYTES = 64 * 1024 * 1024
_MAX_JWK_BYTES = 64 * 1024
_MAX_JWK_DEPTH = 8
_MAX_IMPORT_DEPTH = 8  # a list of device objects holding JWK objects: 3 deep
_COLUMNS = ("device_id", "district", "kind", "public_key_jwk", "public_key_jwk_path")

T = TypeVar("T")
# What ArgumentParser.add_subparsers() returns (generic only to the type checker).
if TYPE_CHECKING:
    from anchor.host.config import Settings

    _Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    _Subparsers = argparse._SubParsersAction


class ImportFileError(AnchorError):
    """An import file has bad rows (reason ``import_invalid``); nothing was registered.

    ``errors`` holds ``(line, message)`` for every bad row, in file order.
    """

    reason = Reason.IMPORT_INVALID

    def __init__(self, path: Path, errors: Sequence[tuple[int, str]]) -> None:
        lines = "\n".join(f"  {path}:{line}: {message}" for line, message in errors)
        super().__init__(f"{len(errors)} bad row(s) in {path}, nothing imported:\n{lines}")
        self.errors = list(errors)


# --------------------------------------------------------------------------------------------
# Keys and import files


def _jwk_from_text(text: str, what: str) -> PublicKey:
    # A JWK nests 1 deep: anchor.wire refuses deep input before json.loads recurses into it.
    try:
        jwk = strict_loads(text, max_depth=_MAX_JWK_DEPTH)
    except JsonRejected as exc:
        raise UsageError(f"{what} is not a JWK: {exc}") from None
    return _jwk_from_object(jwk, what)


def _jwk_from_object(jwk: object, what: str) -> PublicKey:
    if not isinstance(jwk, dict):
        raise UsageError(f"{what} is a JSON {type(jwk).__name__}, not a JWK object")
    try:
        return PublicKey.from_jwk(jwk)
    except AnchorError as exc:
        raise UsageError(f"{what}: {exc.detail}") from exc


def load_jwk(path: Path | str) -> PublicKey:
    """A device's public key from a JWK file; raises ``UsageError`` naming the file."""
    p = Path(path)
    data = read_user_file(p, what="JWK file", limit=_MAX_JWK_BYTES)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{p} is not UTF-8") from exc
    return _jwk_from_text(text, str(p))


def _spec(fields: Mapping[str, Any], line: int, base: Path) -> DeviceSpec:
    device_id = fields.get("device_id")
    if not isinstance(device_id, str) or not device_id.strip():
        raise UsageError("device_id is missing")
    for name in ("district", "kind"):
        if not isinstance(fields.get(name) or "", str):
            raise UsageError(f"{name} must be text")
    inline, path = fields.get("public_key_jwk"), fields.get("public_key_jwk_path")
    if inline and path:
        raise UsageError("give public_key_jwk or public_key_jwk_path, not both")
    if inline:
        key = (
            _jwk_from_text(inline, "public_key_jwk")
            if isinstance(inline, str)
            else _jwk_from_object(inline, "public_key_jwk")
        )
    elif path:
        if not isinstance(path, str):
            raise UsageError("public_key_jwk_path must be text")
        key = load_jwk(base / path)
    else:
        raise UsageError("no public_key_jwk or public_key_jwk_path")
    return DeviceSpec(
        device_id=device_id.strip(),
        key=key,
        district=(fields.get("district") or "").strip(),
        kind=(fields.get("kind") or "").strip(),
        line=line,
    )


def _parse_csv(text: str, base: Path) -> tuple[list[DeviceSpec], list[tuple[int, str]]]:
    specs: list[DeviceSpec] = []
    errors: list[tuple[int, str]] = []
    reader = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    first = True
    start = 1
    for row in reader:
        line, start = start, reader.line_num + 1
        if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
            continue
        if first:
            first = False
            if row[0].strip() == "device_id":
                header = [c.strip() for c in row]
                unknown = [c for c in header if c not in _COLUMNS]
                if unknown:
                    errors.append((line, f"unknown column(s) {', '.join(unknown)}"))
                    return specs, errors
                continue
        try:
            if header is not None:
                if len(row) != len(header):
                    raise UsageError(f"{len(row)} fields, the header has {len(header)}")
                fields: dict[str, Any] = dict(zip(header, row, strict=True))
            else:
                if len(row) != 4:
                    raise UsageError(f"{len(row)} fields, expected device_id,district,kind,KEY")
                device_id, district, kind, key = row
                key_column = (
                    "public_key_jwk" if key.lstrip().startswith("{") else "public_key_jwk_path"
                )
                fields = {
                    "device_id": device_id,
                    "district": district,
                    "kind": kind,
                    key_column: key.strip(),
                }
            specs.append(_spec(fields, line, base))
        except AnchorError as exc:
            errors.append((line, exc.detail))
    return specs, errors


def _json_items(text: str) -> list[tuple[int, Any]]:
    """The items of a top-level JSON array, each with the line it starts on."""
    decoder = strict_decoder()  # no duplicate keys, no NaN (nesting was bounded by the caller)
    pos = _skip_ws(text, 0)
    if not text.startswith("[", pos):
        raise UsageError("a JSON import file holds a list of device objects")
    pos = _skip_ws(text, pos + 1)
    items: list[tuple[int, Any]] = []
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            line = text.count("\n", 0, pos) + 1
            try:
                value, pos = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as exc:
                raise UsageError(f"line {exc.lineno}: not JSON: {exc.msg}") from exc
            except ValueError as exc:  # JsonRejected, or an integer too long to convert
                raise UsageError(f"line {line}: not acceptable JSON: {exc}") from None
            items.append((line, value))
            pos = _skip_ws(text, pos)
            if text.startswith(",", pos):
                pos = _skip_ws(text, pos + 1)
                continue
            if text.startswith("]", pos):
                pos += 1
                break
            raise UsageError(f"line {text.count(chr(10), 0, pos) + 1}: expected ',' or ']'")
    if _skip_ws(text, pos) != len(text):
        raise UsageError("trailing data after the JSON list")
    return items


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _parse_json(text: str, base: Path) -> tuple[list[DeviceSpec], list[tuple[int, str]]]:
    specs: list[DeviceSpec] = []
    errors: list[tuple[int, str]] = []
    for line, item in _json_items(text):
        try:
            if not isinstance(item, dict):
                raise UsageError(f"expected an object, got {type(item).__name__}")
            unknown = [k for k in item if k not in _COLUMNS]
            if unknown:
                raise UsageError(f"unknown member(s) {', '.join(map(repr, unknown))}")
            specs.append(_spec(item, line, base))
        except AnchorError as exc:
            errors.append((line, exc.detail))
    return specs, errors


def parse_import(path: Path | str, *, format: str | None = None) -> list[DeviceSpec]:
    """Read a CSV or JSON import file (format from ``format`` or the file's suffix).

    Raises ``ImportFileError`` listing every bad row, or ``UsageError`` for an unreadable file.
    """
    p = Path(path)
    fmt = format or ("json" if p.suffix.lower() == ".json" else "csv")
    if fmt not in ("csv", "json"):
        raise UsageError(f"import format {fmt!r} is not csv or json")
    data = read_user_file(p, what="import file", limit=_MAX_IMPORT_BYTES)
    if fmt == "json" and nesting_depth(data, _MAX_IMPORT_DEPTH) > _MAX_IMPORT_DEPTH:
        raise UsageError(f"{p} nests deeper than {_MAX_IMPORT_DEPTH}: not a device list")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{p} is not UTF-8 (byte {exc.start})") from exc
    parse = _parse_json if fmt == "json" else _parse_csv
    specs, errors = parse(text, p.parent)
    if errors:
        raise ImportFileError(p, errors)
    if not specs:
        raise UsageError(f"{p} lists no devices")
    return specs


# --------------------------------------------------------------------------------------------
# Operations


async def migrate(store: Store) -> list[int]:
    """Apply pending migrations (see :meth:`Store.migrate`)."""
    return await store.migrate()


async def register(
    store: Store, device_id: str, jwk_path: Path | str, *, district: str = "", kind: str = ""
) -> DeviceRecord:
    """Register a device with the public key in ``jwk_path``."""
    return await store.register_device(device_id, load_jwk(jwk_path), district=district, kind=kind)


async def import_devices(
    store: Store, path: Path | str, *, format: str | None = None
) -> list[DeviceRecord]:
    """Register every device of an import file, all in one transaction, or none.

    Raises ``ImportFileError`` (bad rows), ``UsageError`` (unreadable file) or ``StoreError``
    (``conflict``: already registered devices or keys, each with its line).
    """
    return await store.register_devices(parse_import(path, format=format))


async def rotate(store: Store, device_id: str, jwk_path: Path | str) -> DeviceRecord:
    """Make the key in ``jwk_path`` the device's current key; the old one stays, closed."""
    return await store.rotate_device_key(device_id, load_jwk(jwk_path))


async def revoke(store: Store, device_id: str, *, reason: str = "") -> DeviceRecord:
    """Revoke a device: readings received from now on are refused."""
    return await store.revoke_device(device_id, reason=reason)


async def list_devices(
    store: Store,
    *,
    district: str | None = None,
    status: str | None = None,
    after: str | None = None,
    limit: int = 100,
) -> list[DeviceRecord]:
    """One page of devices ordered by id (see :meth:`Store.list_devices`)."""
    return await store.list_devices(district=district, status=status, after=after, limit=limit)


async def show(store: Store, device_id: str) -> DeviceRecord:
    """One device with its key history."""
    return await store.get_device(device_id)


device_to_dict = device_json
"""The device as JSON: the API's shape (:mod:`anchor.store.device_json`), ``kid`` in hex."""


# --------------------------------------------------------------------------------------------
# Command line


def run_with_settings(
    args: argparse.Namespace, work: Callable[[Store, Settings], Awaitable[T]]
) -> T:
    """Run ``work(store, settings)`` for a CLI subcommand, then close the store.

    Settings are read as every command reads them (:func:`anchor.cli.inputs.settings_from_args`):
    ``--database-url`` over ``CITYANCHOR_*`` over ``--config`` (``cityanchor up`` keeps its
    database URL and broker admin login in ``DATA_DIR/config.toml``).
    """
    if not (args.database_url or args.config or os.environ.get(DATABASE_URL_ENV)):
        # The built-in default (a local PostgreSQL) is rarely the registry meant here.
        raise UsageError(
            f"no database: give --config (e.g. DATA_DIR/config.toml of `cityanchor up`), "
            f"--database-url or set {DATABASE_URL_ENV}"
        )
    settings = settings_from_args(args)

    async def main() -> T:
        store = await Store.connect(settings.database_url, min_size=1, max_size=2)
        try:
            return await work(store, settings)
        finally:
            await store.close()

    return asyncio.run(main())


def run_with_store(args: argparse.Namespace, work: Callable[[Store], Awaitable[T]]) -> T:
    """Run ``work(store)`` on the command's database (see :func:`run_with_settings`)."""
    return run_with_settings(args, lambda store, settings: work(store))


def _print_devices(records: Sequence[DeviceRecord], as_json: bool, limit: int) -> None:
    more = records[-1].device_id if records and len(records) == limit else None
    if as_json:
        # A list, as published (the cursor of the next page is the last device_id).
        print(json.dumps([device_to_dict(r) for r in records], indent=2))
        return
    print("DEVICE_ID\tSTATUS\tDISTRICT\tKIND\tKID\tKEYS")
    for r in records:
        current = r.current_key
        kid = current.kid.hex() if current else "-"
        print(f"{r.device_id}\t{r.status}\t{r.district}\t{r.kind}\t{kid}\t{len(r.keys)}")
    if more is not None:
        print(f"# more: --after {more}")


def _print_device(record: DeviceRecord, as_json: bool) -> None:
    if as_json:
        print(json.dumps(device_to_dict(record), indent=2))
        return
    d = device_to_dict(record)
    print(f"device {d['device_id']} ({d['status']})")
    print(f"  district: {d['district']}  kind: {d['kind']}  registered: {d['registered_at']}")
    if record.revoked_at is not None:
        print(f"  revoked: {d['revoked_at']}  reason: {d['revoke_reason']}")
    for k in d["keys"]:
        state = "current" if k["current"] else f"until {k['valid_until']}"
        print(f"  key {k['kid']} {k['key_type']} from {k['valid_from']} ({state})")


def _cmd_register(args: argparse.Namespace) -> int:
    key = load_jwk(args.jwk)  # an unreadable key file fails before connecting
    # The one registration path of POST /v1/devices: the same answer, broker login included.
    record, answer = run_with_settings(
        args,
        lambda s, settings: register_device(
            s, settings, args.device_id, key, district=args.district, kind=args.kind
        ),
    )
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    _print_device(record, False)
    if "mqtt_password" in answer:
        state = (
            "accepted by the broker now"
            if answer["mqtt_login_active"]
            else "not confirmed by the broker yet (see the operator guide)"
        )
        print(f"  mqtt login: {answer['mqtt_username']} / {answer['mqtt_password']}")
        print(f"  (shown once: only its hash is stored; {state})")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    specs = parse_import(args.file, format=args.format)  # bad rows fail before connecting
    # As `device register`: with broker logins on, each device gets its login (shown once).
    done = run_with_settings(args, lambda s, settings: register_devices(s, settings, specs))
    if args.json:
        print(json.dumps([answer for _, answer in done], indent=2))
        return 0
    print(f"imported {len(done)} device(s) from {args.file}")
    logins = [a for _, a in done if "mqtt_password" in a]
    if logins:
        print("MQTT_USERNAME\tMQTT_PASSWORD\tACTIVE  (shown once: only their hashes are stored)")
        for a in logins:
            active = "yes" if a["mqtt_login_active"] else "not yet"
            print(f"{a['mqtt_username']}\t{a['mqtt_password']}\t{active}")
    return 0


def _cmd_rotate(args: argparse.Namespace) -> int:
    key = load_jwk(args.jwk)
    _print_device(
        run_with_store(args, lambda s: s.rotate_device_key(args.device_id, key)), args.json
    )
    return 0


def _cmd_revoke(args: argparse.Namespace) -> int:
    async def work(store: Store, settings: Settings) -> DeviceRecord:
        record = await revoke(store, args.device_id, reason=args.reason)
        admin = broker_admin(settings)
        if admin is not None:  # its login goes at once, as with POST /v1/devices/{id}/revoke
            await revoke_device_login(admin, record.device_id)
        return record

    _print_device(run_with_settings(args, work), args.json)
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    records = run_with_store(
        args,
        lambda s: list_devices(
            s, district=args.district, status=args.status, after=args.after, limit=args.limit
        ),
    )
    _print_devices(records, args.json, args.limit)
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    _print_device(run_with_store(args, lambda s: show(s, args.device_id)), args.json)
    return 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    applied = run_with_store(args, migrate)
    if applied:
        print("applied migration(s) " + ", ".join(f"{v:03d}" for v in applied))
    else:
        print("schema is up to date")
    return 0


def database_flags(p: argparse.ArgumentParser) -> None:
    """``--config`` and ``--database-url``, read by :func:`run_with_settings`."""
    p.add_argument(
        "--config",
        metavar="TOML",
        help="settings file, e.g. DATA_DIR/config.toml of `cityanchor up` (CITYANCHOR_* "
        "variables and --database-url override it)",
    )
    p.add_argument(
        "--database-url",
        metavar="DSN",
        help=f"PostgreSQL DSN (default: ${DATABASE_URL_ENV}, else the config file's)",
    )


def _common(p: argparse.ArgumentParser) -> None:
    database_flags(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")


def add_device_commands(subparsers: _Subparsers) -> argparse.ArgumentParser:
    """Add ``device register|import|rotate|revoke|list|show`` to an argparse subparsers object
    (what ``parser.add_subparsers()`` returns); each sets ``func`` to its handler."""
    device = subparsers.add_parser("device", help="manage the device registry")
    sub = device.add_subparsers(dest="device_command", required=True, metavar="ACTION")

    p = sub.add_parser("register", help="register a device with its public JWK")
    p.add_argument("device_id", metavar="DEVICE_ID")
    p.add_argument("--jwk", required=True, metavar="JWK_FILE", help="the device's public JWK")
    p.add_argument(
        "--district",
        default="",
        help="e.g. nanshan: the device's readings are accepted only under city/{district}/...",
    )
    p.add_argument("--kind", default="", help="e.g. iot.air_quality")
    _common(p)
    p.set_defaults(func=_cmd_register)

    p = sub.add_parser("import", help="register many devices from CSV or JSON (all or none)")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--format", choices=("csv", "json"), help="default: from the file suffix")
    _common(p)
    p.set_defaults(func=_cmd_import)

    p = sub.add_parser("rotate", help="replace a device's key (the old key stays, closed)")
    p.add_argument("device_id", metavar="DEVICE_ID")
    p.add_argument("--jwk", required=True, metavar="JWK_FILE", help="the new public JWK")
    _common(p)
    p.set_defaults(func=_cmd_rotate)

    p = sub.add_parser("revoke", help="revoke a device")
    p.add_argument("device_id", metavar="DEVICE_ID")
    p.add_argument("--reason", default="", help="why (kept with the device)")
    _common(p)
    p.set_defaults(func=_cmd_revoke)

    p = sub.add_parser("list", help="list devices, ordered by id")
    p.add_argument("--district")
    p.add_argument("--status", choices=("active", "revoked"))
    p.add_argument("--after", metavar="DEVICE_ID", help="start after this id (paging cursor)")
    p.add_argument("--limit", type=int, default=100, help="at most this many (max 1000)")
    _common(p)
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("show", help="show a device and its key history")
    p.add_argument("device_id", metavar="DEVICE_ID")
    _common(p)
    p.set_defaults(func=_cmd_show)
    return device


def add_db_commands(subparsers: _Subparsers) -> argparse.ArgumentParser:
    """Add ``db migrate`` to an argparse subparsers object; sets ``func`` to its handler."""
    db = subparsers.add_parser("db", help="database schema")
    sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    p = sub.add_parser("migrate", help="apply pending sql/NNN_*.sql migrations")
    database_flags(p)
    p.set_defaults(func=_cmd_migrate)
    return db
