"""Settings: one frozen value built from defaults, an optional TOML file, ``CITYANCHOR_*``
environment variables and command-line flags, in that order of precedence (last wins).

The TOML file is the one a command's ``--config`` names, else the one ``CITYANCHOR_CONFIG``
names (``export CITYANCHOR_CONFIG=DATA_DIR/config.toml`` points every command at an ``up``'s
settings; ``up.json`` names that file), else none: every command reads its settings this way.

Nothing else in cityanchor reads ``os.environ``; components take the values they need as
keyword arguments.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from anchor.cosignature import CosignerVerifier
from anchor.errors import KeyMaterialError, UsageError
from anchor.host.files import read_user_file
from anchor.host.redact import MASK, redact_text

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "SECRET_FIELDS",
    "ChainSettings",
    "Settings",
    "WitnessSettings",
    "check_public_url",
    "check_witness_url",
    "load_settings",
    "settings_to_toml",
]

CONFIG_FILE_LIMIT = 1 << 20
"""Largest settings file read (a TOML file of a few lines; anything bigger is not one)."""

ENV_PREFIX = "CITYANCHOR_"
CONFIG_ENV = "CITYANCHOR_CONFIG"
"""The settings file used when a command is given no ``--config``."""
# Settings whose whole value is secret; every other string (database_url, mqtt_url, a chain's
# rpc_url, ...) is shown through anchor.host.redact.redact_text, which hides the secrets inside it.
SECRET_FIELDS = frozenset({"mqtt_password", "mqtt_admin_password"})


FEE_MODES = ("eip1559", "legacy", "zero")
WITNESS_MODES = ("seal", "anchor")


@dataclass(frozen=True, slots=True)
class ChainSettings:
    """One anchoring backend (an EVM chain reached over JSON-RPC).

    The signing key is never part of the settings: only where to read it (``key_file``, or the
    environment variable named by ``key_env``).

    ``rpc_url`` is private: a gateway URL may embed a project key. ``public_rpc_url`` is the
    endpoint the proof explorer gives to browsers (``/explorer/config.json``); empty publishes
    none, and the explorer's users give their own.
    """

    name: str = "evm"
    rpc_url: str = "http://127.0.0.1:8545"
    chain_id: int = 31337
    contract: str = ""
    key_file: str = ""
    key_env: str = ""
    confirmations: int = 1
    fee_mode: str = "eip1559"
    gas_limit: int = 100_000
    rpc_timeout_s: int = 10
    public_rpc_url: str = ""

    def __post_init__(self) -> None:
        if self.public_rpc_url:
            check_public_url(self.public_rpc_url, f"chain {self.name}: public_rpc_url")
        if self.fee_mode not in FEE_MODES:
            raise UsageError(f"chain {self.name}: fee_mode must be one of {', '.join(FEE_MODES)}")
        if self.confirmations < 1:
            raise UsageError(f"chain {self.name}: confirmations must be at least 1")


@dataclass(frozen=True, slots=True)
class WitnessSettings:
    """One C2SP tlog-witness the anchoring process asks for cosignatures.

    ``url`` is the witness's base URL (``POST {url}/add-checkpoint``); ``vkey`` its cosignature
    verifier key (``name+keyid+base64(0x04||key)``, public), which identifies it.
    """

    url: str = ""
    vkey: str = ""

    def __post_init__(self) -> None:
        check_witness_url(self.url)
        try:
            CosignerVerifier.from_vkey(self.vkey)
        except KeyMaterialError as exc:
            raise UsageError(f"witness {self.url}: bad witness key: {exc.detail}") from None

    @property
    def verifier(self) -> CosignerVerifier:
        return CosignerVerifier.from_vkey(self.vkey)


def check_public_url(url: str, what: str) -> None:
    """Raise UsageError unless ``url`` is an http(s) URL without user info (``user:pass@``): a
    URL handed to every browser must carry no credentials in that place."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a bad port
    except ValueError:
        raise UsageError(f"{what} is not a URL: {redact_text(url)}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{what} must be an http(s) URL, got {redact_text(url)}")
    if any(c in url for c in " ;,'\"\\"):
        raise UsageError(f"{what} must not contain spaces, quotes, ';' or ','")
    if parts.username is not None or parts.password is not None:
        raise UsageError(f"{what} must not carry user info (it is published to browsers)")


def check_witness_url(url: str) -> None:
    """Raise UsageError unless ``url`` is an http(s) URL with a host and no query/fragment."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"witness URL {url!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"witness URL {url!r} must be http:// or https:// with a host")
    if parts.query or parts.fragment or (port is not None and not 0 < port < 65536):
        raise UsageError(f"witness URL {url!r} must have no query or fragment")


@dataclass(frozen=True, slots=True)
class Settings:
    """The effective configuration. Durations are in milliseconds unless named otherwise."""

    database_url: str = "postgresql://cityanchor@127.0.0.1:5432/cityanchor"
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    mqtt_username: str = ""
    mqtt_password: str = ""
    # One shared subscription for every ingestor process, so N of them split the stream.
    mqtt_topic: str = "$share/cityanchor/city/+/+/readings"
    mqtt_session_expiry_s: int = 86_400
    # 1: the broker requires device logins; POST /v1/devices then issues each device's password.
    mqtt_device_logins: int = 0
    # The broker's dynamic-security admin login: with it, POST /v1/devices creates the device's
    # login in the running broker (and revoke deletes it) before answering.
    mqtt_admin_username: str = ""
    mqtt_admin_password: str = ""
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
    # 0: one per core; -1: none, signatures checked in the ingestor process between reads (for
    # `ingest --workers N`, one process per core, each its own MQTT connection).
    verify_processes: int = 0
    # The ingestor's MQTT client: "native" (asyncio, anchor.ingest.mqtt_native) or "paho".
    ingest_mqtt_client: str = "native"
    ingestor_name: str = "ingest"
    registry_refresh_ms: int = 5_000
    anchor_period_s: int = 60
    # Anchors recorded in the last this many blocks (and each backend's newest) are re-checked
    # against the chain every anchor_recheck_ms, and anchored again if a reorg removed them.
    anchor_reorg_window_blocks: int = 128
    anchor_recheck_ms: int = 30_000
    # Per client address; bursts of twice this. 0 turns the limit off (e.g. behind a proxy
    # that limits already).
    api_rate_per_s: int = 1000
    # Directory of the archived months' files (`cityanchor archive --dir`): the API serves the
    # receipts of archived readings from it, and erasure rewrites their file there. Empty: such
    # a receipt is answered reading_archived (410) naming the month and file.
    archive_dir: str = ""
    # Witnesses (C2SP tlog-witness) the anchoring process asks to cosign checkpoints: TOML
    # [[witnesses]] tables (url, vkey), or `up --witness URL=VKEY_FILE`.
    # seal: cosign every new checkpoint as it is sealed; anchor: only the one about to be
    # anchored (fewer requests, sealed receipts stay uncosigned). Both ask before anchoring.
    witness_mode: str = "seal"
    # Distinct witnesses that make a checkpoint "witnessed" (for witness_anchor_quorum and the
    # cosigners POST /v1/verify reports). 1: a split view then needs the log and that witness.
    witness_quorum: int = 1
    # 1: anchor only the newest checkpoint that witness_quorum witnesses cosigned, and wait
    # (witness_quorum_not_met) while there is none; 0: anchor whatever the witnesses do.
    witness_anchor_quorum: int = 0
    witness_timeout_ms: int = 10_000
    # Seal mode: how often the anchoring process looks for a new checkpoint to get cosigned.
    witness_poll_ms: int = 1_000
    witnesses: tuple[WitnessSettings, ...] = ()
    # Anchoring backends; from TOML [[chains]] tables, or one from CITYANCHOR_CHAIN_* variables.
    chains: tuple[ChainSettings, ...] = ()

    def __post_init__(self) -> None:
        if self.witness_mode not in WITNESS_MODES:
            raise UsageError(f"witness_mode must be one of {', '.join(WITNESS_MODES)}")
        if self.verify_processes < -1:
            raise UsageError("verify_processes must be -1 (none), 0 (one per core) or more")
        if self.ingest_mqtt_client not in ("native", "paho"):
            raise UsageError("ingest_mqtt_client must be native or paho")
        if self.witness_quorum < 1:
            raise UsageError("witness_quorum must be at least 1")
        if self.witness_anchor_quorum not in (0, 1):
            raise UsageError("witness_anchor_quorum must be 0 or 1")
        if self.witnesses and self.witness_quorum > len(self.witnesses):
            raise UsageError(
                f"witness_quorum {self.witness_quorum} is more than the "
                f"{len(self.witnesses)} configured witness(es): it could never be met"
            )
        if self.witness_anchor_quorum and not self.witnesses:
            raise UsageError("witness_anchor_quorum needs at least one witness")
        keys = [w.vkey for w in self.witnesses]
        if len(set(keys)) != len(keys):
            raise UsageError("each witness key may be configured once")
        if self.witness_timeout_ms < 1 or self.witness_poll_ms < 1:
            raise UsageError("witness_timeout_ms and witness_poll_ms must be positive")

    def masked(self) -> dict[str, Any]:
        """The settings as a dict with secrets replaced, for ``config show`` and logs."""
        masked: dict[str, Any] = _masked(dataclasses.asdict(self))
        return masked


def _masked(value: Any, name: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _masked(v, k) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(v, name) for v in value]
    if isinstance(value, str) and value:
        return MASK if name in SECRET_FIELDS else redact_text(value)
    return value


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

    The TOML file is ``toml_path``, else the file ``env[CITYANCHOR_CONFIG]`` names (if set and
    not empty). Raises UsageError naming the source of any unknown key or badly typed value.
    """
    env = os.environ if env is None else env
    if toml_path is None and env.get(CONFIG_ENV):
        toml_path = Path(env[CONFIG_ENV])
    types = {
        f.name: (int if f.type in ("int", int) else str)
        for f in fields(Settings)
        if f.name not in _TABLES
    }
    values: dict[str, Any] = {}
    chains: list[ChainSettings] = []
    witnesses: list[WitnessSettings] = []
    if toml_path is not None:
        data = read_user_file(toml_path, what="config", limit=CONFIG_FILE_LIMIT)
        try:
            doc = tomllib.loads(data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise UsageError(f"config {toml_path} is not UTF-8: {exc.reason}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"config {toml_path} is not valid TOML: {exc}") from exc
        for key, raw in doc.items():
            if key == "chains":
                chains = [_chain(t, f"{toml_path} [[chains]]") for t in _tables(raw, toml_path)]
                continue
            if key == "witnesses":
                witnesses = [
                    _witness(t, f"{toml_path} [[witnesses]]")
                    for t in _tables(raw, toml_path, "witnesses")
                ]
                continue
            if key not in types:
                raise UsageError(f"{toml_path}: unknown setting {key!r}")
            values[key] = _coerce(key, types[key], raw, str(toml_path))
    for name, kind in types.items():
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = _coerce(name, kind, raw, ENV_PREFIX + name.upper())
    chain_env = {
        f.name: env[var] for f in fields(ChainSettings) if (var := _chain_var(f.name)) in env
    }
    if chain_env:
        # The variables define one backend, or override the TOML one of the same name.
        name = chain_env.get("name", chains[0].name if len(chains) == 1 else "evm")
        base = next((c for c in chains if c.name == name), ChainSettings(name=name))
        merged = _chain({**dataclasses.asdict(base), **chain_env}, f"{ENV_PREFIX}CHAIN_*")
        chains = [c for c in chains if c.name != name] + [merged]
    for name, raw in (overrides or {}).items():
        if raw is None:
            continue
        if name == "witnesses":
            witnesses = list(raw)
            continue
        if name not in types:
            raise UsageError(f"unknown setting {name!r}")
        values[name] = _coerce(name, types[name], raw, f"--{name.replace('_', '-')}")
    names = [c.name for c in chains]
    if len(set(names)) != len(names):
        raise UsageError(f"chain names must be unique, got {names}")
    return Settings(**values, witnesses=tuple(witnesses), chains=tuple(chains))


def _chain_var(field_name: str) -> str:
    # CITYANCHOR_CHAIN_RPC_URL, CITYANCHOR_CHAIN_ID (not ..._CHAIN_CHAIN_ID), ...
    return ENV_PREFIX + ("CHAIN_ID" if field_name == "chain_id" else f"CHAIN_{field_name.upper()}")


_TABLES = ("chains", "witnesses")


def _tables(raw: Any, source: Path, name: str = "chains") -> list[Mapping[str, Any]]:
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise UsageError(f"{source}: {name} must be [[{name}]] tables")
    return raw


def _witness(table: Mapping[str, Any], source: str) -> WitnessSettings:
    values = {}
    for key, raw in table.items():
        if key not in ("url", "vkey"):
            raise UsageError(f"{source}: unknown witness setting {key!r}")
        values[key] = _coerce(key, str, raw, source)
    return WitnessSettings(**values)


def _chain(table: Mapping[str, Any], source: str) -> ChainSettings:
    kinds = {f.name: (int if f.type in ("int", int) else str) for f in fields(ChainSettings)}
    values = {}
    for key, raw in table.items():
        if key not in kinds:
            raise UsageError(f"{source}: unknown chain setting {key!r}")
        values[key] = _coerce(key, kinds[key], raw, source)
    return ChainSettings(**values)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def settings_to_toml(settings: Settings) -> str:
    """The settings as a TOML file that :func:`load_settings` reads back to the same value."""
    lines = ["# cityanchor settings (CITYANCHOR_* variables and flags override these)"]
    for f in fields(Settings):
        if f.name not in _TABLES:
            lines.append(f"{f.name} = {_toml_value(getattr(settings, f.name))}")
    for witness in settings.witnesses:
        lines += ["", "[[witnesses]]", f"url = {_toml_value(witness.url)}"]
        lines += [f"vkey = {_toml_value(witness.vkey)}"]
    for chain in settings.chains:
        lines += ["", "[[chains]]"]
        lines += [
            f"{f.name} = {_toml_value(getattr(chain, f.name))}" for f in fields(ChainSettings)
        ]
    return "\n".join(lines) + "\n"
