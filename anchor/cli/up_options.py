"""What ``cityanchor up`` is asked to run: :class:`UpOptions`, built from its flags.

Every option is checked when the value is built, before ``up`` creates a directory or starts
a server (issue 14: ``--http-port 99999`` used to start everything and fail a minute later).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from anchor.errors import UsageError
from anchor.host.logs import LOG_BACKUPS, LOG_MAX_BYTES

__all__ = ["UpOptions"]


@dataclass(frozen=True, slots=True)
class UpOptions:
    data_dir: Path
    mqtt_port: int | None = None
    http_port: int | None = None
    chain_port: int | None = None
    rpc_url: str | None = None  # an external chain instead of the local anvil
    chain_id: int | None = None
    chain_key_file: str | None = None
    anchor_period_s: float = 60.0
    operator_token_file: Path | None = None
    workers: int = 1
    anchor_recheck_s: float = 30.0  # re-check of recent anchors against the chain (reorgs)
    # Mosquitto saves its database every this many seconds (see broker_settings) ...
    broker_autosave_interval_s: int = 1
    # ... or, when set, after this many changes instead (each queued message is one): an opt-in
    # whose every save rewrites the whole backlog (docs/operator-guide.md).
    broker_autosave_changes: int | None = None
    # Messages Mosquitto queues for the ingestors' session; beyond it it DROPS what it PUBACKed.
    broker_max_queued_messages: int = 1_000_000
    # Witnesses (C2SP tlog-witness) as (base URL, cosignature verifier key); see Settings.
    witnesses: tuple[tuple[str, str], ...] = ()
    witness_quorum: int = 1
    witness_anchor_quorum: bool = False
    witness_mode: str = "seal"
    # The services' log files (DATA_DIR/logs/NAME.log) are rotated at this size, keeping this
    # many old ones (anchor.host.logs.rotate_copytruncate).
    log_max_bytes: int = LOG_MAX_BYTES
    log_backups: int = LOG_BACKUPS

    def __post_init__(self) -> None:
        for flag, port in (
            ("--mqtt-port", self.mqtt_port),
            ("--http-port", self.http_port),
            ("--chain-port", self.chain_port),
        ):
            if port is not None and not 1 <= port <= 65535:
                raise UsageError(f"{flag} {port} is not a port (1..65535)")
        given = [p for p in (self.mqtt_port, self.http_port, self.chain_port) if p is not None]
        if len(set(given)) != len(given):
            raise UsageError("--mqtt-port, --http-port and --chain-port must differ")
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise UsageError(f"--data-dir {self.data_dir} exists and is not a directory")
        if self.workers < 1:
            raise UsageError("--workers must be at least 1")
        if not self.anchor_period_s > 0 or not self.anchor_recheck_s > 0:
            raise UsageError("--anchor-period and --anchor-recheck must be positive")
        if self.log_max_bytes < 1 or self.log_backups < 0:
            raise UsageError("--log-max-bytes must be at least 1 and --log-backups at least 0")
        if self.rpc_url is not None:
            self._check_external_chain()
        elif self.chain_id is not None or self.chain_key_file:
            raise UsageError("--chain-id and --chain-key-file are for an external chain (--rpc)")
        if self.operator_token_file is not None:
            parent = self.operator_token_file.absolute().parent
            if not parent.is_dir():
                raise UsageError(f"--operator-token-file: no directory {parent}")
        if self.witness_quorum < 1:
            raise UsageError("--witness-quorum must be at least 1")
        if self.witnesses and self.witness_quorum > len(self.witnesses):
            raise UsageError(
                f"--witness-quorum {self.witness_quorum} is more than the "
                f"{len(self.witnesses)} --witness given: it could never be met"
            )
        if self.witness_anchor_quorum and not self.witnesses:
            raise UsageError("--witness-anchor-quorum needs at least one --witness")
        if self.broker_autosave_interval_s < 1:
            raise UsageError("--broker-autosave-interval must be at least 1 second")
        if self.broker_autosave_changes is not None and self.broker_autosave_changes < 1:
            raise UsageError("--broker-autosave-changes must be at least 1")
        if self.broker_max_queued_messages < 1:
            raise UsageError("--broker-max-queued must be at least 1")

    def _check_external_chain(self) -> None:
        try:
            parts = urlsplit(self.rpc_url or "")
            parts.port  # noqa: B018 (raises ValueError on a bad port)
        except ValueError as exc:
            raise UsageError(f"--rpc {self.rpc_url!r} is not a URL: {exc}") from None
        if parts.scheme not in ("http", "https", "ws", "wss") or not parts.hostname:
            raise UsageError("--rpc must be an http(s):// or ws(s):// URL with a host")
        if self.chain_id is None or not self.chain_key_file:
            raise UsageError("--rpc needs --chain-id and --chain-key-file")
        if self.chain_id < 1:
            raise UsageError("--chain-id must be positive")
        if not os.access(self.chain_key_file, os.R_OK) or not Path(self.chain_key_file).is_file():
            raise UsageError(f"--chain-key-file {self.chain_key_file}: not a readable file")
