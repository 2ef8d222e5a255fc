"""``cityanchor broker ...``: the broker's device logins from the command line (the logins
themselves are :mod:`anchor.broker.logins`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from anchor.broker.logins import INGEST_USER, DeviceLogin, broker_logins, dynsec_config
from anchor.errors import UsageError
from anchor.host.config import load_settings
from anchor.host.files import write_private_file
from anchor.password_hashes import mosquitto_password_hash
from anchor.store import Store

__all__ = ["add_broker_commands"]


def add_broker_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``broker dynsec-config`` to an argparse subparsers object."""
    broker: argparse.ArgumentParser = subparsers.add_parser(
        "broker", help="the MQTT broker's logins (dynamic security)"
    )
    sub = broker.add_subparsers(dest="broker_command", required=True, metavar="ACTION")
    p = sub.add_parser(
        "dynsec-config",
        help="write Mosquitto's dynamic-security configuration from the registry",
        description="Writes the plugin's JSON: the ingestors' login (CITYANCHOR_MQTT_USERNAME "
        "must be cityanchor-ingest; password CITYANCHOR_MQTT_PASSWORD), the admin login "
        "(CITYANCHOR_MQTT_ADMIN_PASSWORD) and every active device's login from the registry "
        "(hashes only). Seed the broker with it before its first start.",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="file to write (0600), - = stdout")
    p.add_argument("--config", metavar="TOML", help="settings file (CITYANCHOR_* override)")
    p.add_argument("--database-url", metavar="DSN", help="PostgreSQL DSN")
    p.set_defaults(func=_cmd_dynsec_config)
    return broker


def _cmd_dynsec_config(args: argparse.Namespace) -> int:

    settings = load_settings(
        toml_path=Path(args.config) if args.config else None,
        overrides={"database_url": args.database_url},
    )
    if settings.mqtt_username not in ("", INGEST_USER):
        raise UsageError(f"the ingestors' broker login must be {INGEST_USER}")
    if not settings.mqtt_password or not settings.mqtt_admin_password:
        raise UsageError("set CITYANCHOR_MQTT_PASSWORD and CITYANCHOR_MQTT_ADMIN_PASSWORD")

    async def read() -> list[DeviceLogin]:
        store = await Store.connect(settings.database_url, max_size=1)
        try:
            return await broker_logins(store)
        finally:
            await store.close()

    config = dynsec_config(
        asyncio.run(read()),
        ingest_hash=mosquitto_password_hash(settings.mqtt_password),
        admin_hash=mosquitto_password_hash(settings.mqtt_admin_password),
    )
    text = json.dumps(config, indent=1) + "\n"
    if args.out == "-":
        sys.stdout.write(text)
    else:
        write_private_file(Path(args.out), text.encode())
    return 0
