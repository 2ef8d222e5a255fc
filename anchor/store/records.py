"""The store's values: frozen records of what the tables hold, and their row readers.

Plain data (the ``Store`` methods return them; no query here). :meth:`DeviceRecord.check_reading`
is the key-validity rule described under "Key validity" in :mod:`anchor.store`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from anchor import admission
from anchor.anchoring.chains.base import AnchorTx
from anchor.keys import PublicKey
from anchor.sealing import Candidate, Rejection
from anchor.store.errors import RegistryError

__all__ = [
    "BatchRecord",
    "CheckpointRecord",
    "DeviceKeyRecord",
    "DeviceRecord",
    "DeviceSpec",
    "OpenAnchorTx",
    "SealResult",
    "StoredAnchor",
    "VanishedAnchor",
    "anchor_record",
    "device_record",
    "key_record",
    "rfc3339",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(when: datetime) -> int:
    return (when - _EPOCH) // timedelta(microseconds=1)


def rfc3339(when: datetime) -> str:
    """``when`` in UTC, to the second, as receipts write block times (``...Z``)."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class DeviceKeyRecord:
    """One registered key of a device; ``valid_until`` is None for the current key."""

    device_id: str
    kid: bytes
    public_key: PublicKey
    valid_from: datetime
    valid_until: datetime | None

    @property
    def current(self) -> bool:
        return admission.key_is_current(self.valid_until)

    def accepts_ts(self, ts_ms: int) -> bool:
        """The key-validity rule: current, or the reading's device time precedes the rotation."""
        return admission.key_accepts_ts(self.valid_until, ts_ms)


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """A registered device and all its keys, oldest first."""

    device_id: str
    district: str
    kind: str
    status: str
    registered_at: datetime
    revoked_at: datetime | None
    revoke_reason: str | None
    keys: tuple[DeviceKeyRecord, ...]

    @property
    def current_key(self) -> DeviceKeyRecord | None:
        """The key new readings are signed with (None only for a hand-built record)."""
        return next((k for k in self.keys if k.valid_until is None), None)

    def key(self, kid: bytes) -> DeviceKeyRecord | None:
        """The device's key with this kid, current or rotated out, or None."""
        return next((k for k in self.keys if k.kid == kid), None)

    def check_reading(self, kid: bytes, ts_ms: int, received_at: datetime) -> DeviceKeyRecord:
        """The key that may verify a reading of this device signed with ``kid`` at device time
        ``ts_ms`` and received at ``received_at`` (see "Key validity" in :mod:`anchor.store`).

        Raises ``RegistryError``: ``device_revoked``, ``unknown_kid`` or ``key_rotated``.
        Does not check the signature, nor the clock skew of ``ts_ms``.
        """
        # The rule is anchor.admission's (pure), shared with the ingestor's precheck.
        outcome = admission.check_key(self, kid, ts_ms, received_at)
        if isinstance(outcome, admission.Refusal):
            raise RegistryError(outcome.detail, reason=outcome.reason)
        return outcome


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """A device to register; ``line`` locates it in an import file, for error messages."""

    device_id: str
    key: PublicKey
    district: str = ""
    kind: str = ""
    line: int | None = None

    def where(self) -> str:
        return f"line {self.line}: " if self.line is not None else ""


@dataclass(frozen=True, slots=True)
class SealResult:
    """What one :meth:`anchor.store.Store.seal` committed.

    ``batch_id``, ``log_index``, ``root`` (the batch root) and ``checkpoint`` (the signed note
    of the log including this batch) are None when nothing was accepted. ``quarantined`` counts
    rows written to quarantine per reason, the passed-in rejections included; ``duplicates``
    equals ``quarantined.get("replayed_seq", 0)``.
    """

    batch_id: int | None
    log_index: int | None
    size: int
    root: bytes | None
    checkpoint: str | None
    accepted: int
    duplicates: int
    quarantined: Mapping[str, int]
    key_rejections: tuple[Rejection, ...] = ()
    """Readings the seal itself refused on key status (revoked or rotated since the ingestor's
    registry cache was loaded), for the ingestor's ``quarantined`` log lines."""
    sealed: tuple[Candidate, ...] = ()
    """The candidates this seal stored, in batch order (for the devices' acknowledgements)."""
    rejected: tuple[Rejection, ...] = ()
    """Every quarantine row this seal wrote, the passed-in rejections first."""


@dataclass(frozen=True, slots=True)
class BatchRecord:
    id: int
    size: int
    root: bytes
    log_index: int
    sealed_at: datetime
    leaf_hashes: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class CheckpointRecord:
    log_size: int
    root: bytes
    note: str


@dataclass(frozen=True, slots=True)
class StoredAnchor:
    backend: str
    chain_id: int
    contract: str
    log_size: int
    root: bytes
    tx_hash: str
    block_number: int
    block_time: datetime
    block_hash: bytes | None = None


@dataclass(frozen=True, slots=True)
class VanishedAnchor:
    """An anchor that was recorded as confirmed and then not found on chain as recorded."""

    anchor: StoredAnchor
    reason: str  # anchor_vanished
    detail: str
    vanished_at: datetime


@dataclass(frozen=True, slots=True)
class OpenAnchorTx:
    id: int
    backend: str
    log_size: int
    state: str
    tx: AnchorTx


# PublicKey is immutable and its constructor validates the point and computes the RFC 7638
# thumbprint (~40 us): every seal re-reads its batch's devices (the key validity recheck), so
# the same few hundred keys were built again per batch. A key that does not load raises and is
# not cached; the cache is bounded.
_public_key = functools.lru_cache(maxsize=8192)(PublicKey)


def key_record(row: Mapping[str, Any]) -> DeviceKeyRecord:
    return DeviceKeyRecord(
        device_id=row["device_id"],
        kid=bytes(row["kid"]),
        public_key=_public_key(row["key_type"], bytes(row["public_key"])),
        valid_from=row["valid_from"],
        valid_until=row["valid_until"],
    )


def device_record(row: Mapping[str, Any], keys: Iterable[DeviceKeyRecord]) -> DeviceRecord:
    return DeviceRecord(
        device_id=row["device_id"],
        district=row["district"],
        kind=row["kind"],
        status=row["status"],
        registered_at=row["registered_at"],
        revoked_at=row["revoked_at"],
        revoke_reason=row["revoke_reason"],
        keys=tuple(keys),
    )


def anchor_record(row: Mapping[str, Any]) -> StoredAnchor:
    return StoredAnchor(
        row["backend"],
        row["chain_id"],
        row["contract"],
        row["log_size"],
        bytes(row["root"]),
        row["tx_hash"],
        row["block_number"],
        row["block_time"],
        None if row["block_hash"] is None else bytes(row["block_hash"]),
    )
