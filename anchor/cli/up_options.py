"""What ``cityanchor up`` is asked to run: :class:`UpOptions`, built from its flags."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from anchor.errors import UsageError

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

    def __post_init__(self) -> None:
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
