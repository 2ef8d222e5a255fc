"""What the ``cityanchor`` commands share: exit codes, capped input files, trusted keys, settings.

Every command reads its input files through :func:`read_input` (a cap, regular files only) and
turns what it cannot use into a :class:`anchor.errors.UsageError`, exit status 2.
"""

from __future__ import annotations

import argparse
import glob
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from anchor.errors import AnchorError, UsageError
from anchor.host.files import KEY_FILE_LIMIT, read_user_file
from anchor.wire import JsonRejected, strict_loads

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
    "add_service_flags",
    "expand_key_paths",
    "load_device_keys",
    "load_log_keys",
    "load_witness_keys",
    "parse_duration",
    "port_number",
    "read_input",
    "read_json_file",
    "settings_from_args",
]

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


def read_input(path: str, what: str, limit: int) -> bytes:
    """A command's input file, at most ``limit`` bytes (UsageError otherwise)."""
    return read_user_file(path, what=what, limit=limit)


def read_json_file(path: str, what: str, limit: int) -> Any:
    """A JSON file, read by :func:`anchor.wire.strict_loads` (UsageError if refused)."""
    raw = read_input(path, what, limit)
    try:
        return strict_loads(raw, max_depth=MAX_FILE_JSON_DEPTH)
    except JsonRejected as exc:
        raise UsageError(f"{what} {path} is not JSON we accept: {exc}") from None


def expand_key_paths(paths: Sequence[str], flag: str) -> list[str]:
    """The files a repeatable key flag names: each value is a path or a glob pattern.

    Key flags take one value each (``--device-key A --device-key B``) so that they never
    swallow the positional arguments after them; a quoted pattern (``--device-key
    'devices/*.jwk'``) is expanded here, in sorted order. A pattern that matches nothing is a
    usage error (a mistyped directory must not silently check nothing).
    """
    out: list[str] = []
    for path in paths:
        if glob.has_magic(path):
            matches = sorted(glob.glob(path))
            if not matches:
                raise UsageError(f"{flag} {path!r} matches no file")
            out.extend(matches)
        else:
            out.append(path)
    return out


def load_device_keys(paths: Sequence[str]) -> list[Any]:
    """The trusted device public keys in JWK files or glob patterns (UsageError for one we
    cannot use)."""
    from anchor.keys import PublicKey

    keys = []
    for path in expand_key_paths(paths, "--device-key"):
        jwk = read_json_file(path, "device key", KEY_FILE_LIMIT)
        if isinstance(jwk, dict) and "version" in jwk and "reading" in jwk:
            raise UsageError(f"{path} is a receipt, not a key: give it without --device-key")
        try:
            keys.append(PublicKey.from_jwk(jwk))
        except AnchorError as exc:
            raise UsageError(f"device key {path}: {exc.detail}") from exc
    return keys


def _load_vkeys(
    paths: Sequence[str], flag: str, what: str, parse: Callable[[str], Any]
) -> list[Any]:
    """Note verifier keys, one per file (or quoted glob), read by ``parse`` (UsageError for a
    file that cannot be read or is not such a key)."""
    verifiers = []
    for path in expand_key_paths(paths, flag):
        text = read_input(path, what, KEY_FILE_LIMIT).decode("utf-8", "replace").strip()
        try:
            verifiers.append(parse(text))
        except AnchorError as exc:
            raise UsageError(f"{what} {path}: {exc.detail}") from exc
    return verifiers


def load_log_keys(paths: Sequence[str]) -> list[Any]:
    """The operator's checkpoint verifier keys in note vkey files (UsageError otherwise)."""
    from anchor.checkpoint import NoteVerifier

    return _load_vkeys(paths, "--log-key", "log key", NoteVerifier.from_vkey)


def load_witness_keys(paths: Sequence[str]) -> list[Any]:
    """Witness cosignature verifier keys (type 0x04 note vkeys) in files (UsageError otherwise)."""
    from anchor.cosignature import CosignerVerifier

    return _load_vkeys(paths, "--witness-key", "witness key", CosignerVerifier.from_vkey)


def settings_from_args(args: argparse.Namespace, **extra: Any) -> Any:
    """The Settings of a service command: its flags over CITYANCHOR_* over the TOML file."""
    from anchor.host.config import load_settings

    overrides = {
        "database_url": getattr(args, "database_url", None),
        "mqtt_url": getattr(args, "mqtt", None),
        "operator_key_file": getattr(args, "operator_key", None),
        "log_origin": getattr(args, "origin", None),
        "batch_size": getattr(args, "batch_size", None),
        "batch_age_ms": getattr(args, "batch_age_ms", None),
        "verify_processes": getattr(args, "verify_processes", None),
        "ingest_mqtt_client": getattr(args, "mqtt_client", None),
        "archive_dir": getattr(args, "archive_dir", None),
        **extra,
    }
    config = Path(args.config) if getattr(args, "config", None) else None
    return load_settings(toml_path=config, overrides=overrides)


def add_service_flags(
    p: argparse.ArgumentParser,
    *,
    mqtt: bool = True,
    operator_key: bool = True,
    origin: bool = True,
) -> None:
    """The flags of a command that reaches the services (read by settings_from_args).

    ``--config`` and ``--database-url`` always; the broker, the operator key and the log origin
    only where the command uses them, so that ``--help`` lists what applies.
    """
    p.add_argument(
        "--config",
        metavar="TOML",
        help="settings file (default: $CITYANCHOR_CONFIG if set; CITYANCHOR_* variables and "
        "flags override it). Under `up` it is DATA_DIR/config.toml, named in up.json",
    )
    p.add_argument("--database-url", help="PostgreSQL DSN (CITYANCHOR_DATABASE_URL)")
    if mqtt:
        p.add_argument(
            "--mqtt", metavar="URL", help="broker, mqtt://host:port (CITYANCHOR_MQTT_URL)"
        )
    if operator_key:
        p.add_argument("--operator-key", metavar="SKEY_FILE", help="checkpoint signing key")
    if origin:
        p.add_argument("--origin", help="log origin line of checkpoints")


def port_number(text: str) -> int:
    """An argparse ``type``: a TCP port, 1..65535 (argparse turns the ValueError into exit 2)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is not in 1..65535")
    return port


def parse_duration(text: str) -> float:
    """A positive duration such as 60s, 2m or 500ms, in seconds (UsageError otherwise)."""
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
