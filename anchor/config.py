"""Settings: one frozen value built from defaults, an optional TOML file, ``CITYANCHOR_*``
environment variables and command-line flags, in that order of precedence (last wins).

Nothing else in cityanchor reads ``os.environ``; components take the values they need as
keyword arguments.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from anchor.errors import UsageError

__all__ = ["ENV_PREFIX", "SECRET_FIELDS", "Settings", "load_settings"]

ENV_PREFIX = "CITYANCHOR_"
SECRET_FIELDS = frozenset({"mqtt_password", "database_url"})


@dataclass(frozen=True, slots=True)
class Settings:
    """The effective configuration. Durations are in milliseconds unless named otherwise."""

    database_url: str = "postgresql://postgres@127.0.0.1:5432/cityanchor"
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    mqtt_username: str = ""
    mqtt_password: str = ""
    # One shared subscription for every ingestor process, so N of them split the stream.
    mqtt_topic: str = "$share/cityanchor/city/+/+/readings"
    mqtt_session_expiry_s: int = 86_400
    operator_key_file: str = "operator.skey"
    log_origin: str = "cityanchor.example/log"
    hash_scheme: str = "rfc9162-sha256"
    batch_size: int = 1000
    batch_age_ms: int = 1000
    # Upper bound of unacknowledged messages the broker may send us (MQTT v5 Receive Maximum):
    # the ingestor's back-pressure. Mosquitto's max_inflight_messages must be at least this.
    inflight_window: int = 4000
    max_envelope_bytes: int = 16 * 1024
    clock_skew_future_ms: int = 5 * 60_000
    # Devices resend from an on-disk outbox after an outage, so old readings are normal; 0 = off.
    clock_skew_past_ms: int = 7 * 24 * 3_600_000
    verify_processes: int = 0  # 0: one per core
    ingestor_name: str = "ingest"
    registry_refresh_ms: int = 5_000

    def masked(self) -> dict[str, Any]:
        """The settings as a dict with secrets replaced, for ``config show`` and logs."""
        out = dataclasses.asdict(self)
        for name in SECRET_FIELDS:
            if out.get(name):
                out[name] = _mask(name, out[name])
        return out


def _mask(name: str, value: str) -> str:
    if name != "database_url":
        return "***"
    # Keep the DSN readable (host, port, database); hide only its password.
    url = urlsplit(value)
    if url.password is None:
        return value
    netloc = f"{url.username or ''}:***@{url.hostname or ''}" + (f":{url.port}" if url.port else "")
    return urlunsplit(url._replace(netloc=netloc))


def _coerce(name: str, kind: type, raw: Any, source: str) -> Any:
    if kind is int:
        if isinstance(raw, bool):
            raise UsageError(f"{source}: {name} must be an integer, got {raw!r}")
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise UsageError(f"{source}: {name} must be an integer, got {raw!r}") from None
    if not isinstance(raw, str):
        raise UsageError(f"{source}: {name} must be a string, got {raw!r}")
    return raw


def load_settings(
    *,
    toml_path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build Settings: defaults < TOML file < environment < ``overrides`` (CLI flags; None skipped).

    Raises UsageError naming the source of any unknown key or badly typed value.
    """
    env = os.environ if env is None else env
    types = {f.name: (int if f.type in ("int", int) else str) for f in fields(Settings)}
    values: dict[str, Any] = {}
    if toml_path is not None:
        try:
            doc = tomllib.loads(toml_path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise UsageError(f"cannot read config {toml_path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"config {toml_path} is not valid TOML: {exc}") from exc
        for key, raw in doc.items():
            if key not in types:
                raise UsageError(f"{toml_path}: unknown setting {key!r}")
            values[key] = _coerce(key, types[key], raw, str(toml_path))
    for name, kind in types.items():
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = _coerce(name, kind, raw, ENV_PREFIX + name.upper())
    for name, raw in (overrides or {}).items():
        if raw is None:
            continue
        if name not in types:
            raise UsageError(f"unknown setting {name!r}")
        values[name] = _coerce(name, types[name], raw, f"--{name.replace('_', '-')}")
    return Settings(**values)
