"""Sign a device's readings in order, keeping the per-device chain the ingestor checks.

Every envelope a device emits carries ``seq`` (strictly increasing from 1) and ``prev`` (the
RFC 9162 leaf hash of the device's previous envelope, 32 zero bytes for seq 1); see the DESIGN
"Envelope wire format". :class:`DeviceSigner` owns that state.

The one rule that matters: **a seq is never signed twice**. Two different envelopes with the
same (device_id, seq) look like equivocation to an auditor, and the store's unique key would
drop one of them. So when the signer has a state file, the new (seq, prev) is written to it
atomically (temporary file, fsync, rename, fsync of the directory) *before* the envelope is
handed to the caller. A crash after that write only burns a seq: the next reading gets seq+1
and a ``prev`` naming an envelope that was never published, which a verifier sees as a gap,
never as a conflict.

The state is the device's, not its key's: :func:`device_state_path` names it after the device id
(``{key_dir}/{device_id}.state.json``, as ``cityanchor sign`` and the fleet simulator keep it),
so a rotated key continues the chain. :func:`adopt_legacy_state` moves a state file named after
the key path (what ``cityanchor sign`` wrote before) to that name.

In-memory signers (no state file) are for simulators and benchmarks, where a restart starts a
new device history anyway.

Example::

    key = load_private_key("keys/aq-nanshan-0001.key.pem")
    state = device_state_path("keys", "aq-nanshan-0001")  # keys/aq-nanshan-0001.state.json
    signer = DeviceSigner.open("aq-nanshan-0001", key, state_path=state)
    envelope = signer.sign("iot.air_quality", {"pm2_5": 12.5, "pm10": 20.1})
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anchor.device_id import DEVICE_ID_PATTERN, DEVICE_ID_RE
from anchor.envelope import FORMAT_COSE, FORMATS, Reading, sign_reading
from anchor.errors import AnchorError, Reason
from anchor.host.files import open_regular_nonblocking, write_private_file
from anchor.keys import PrivateKey
from anchor.merkle import leaf_hash

__all__ = [
    "FORMATS",
    "ZERO_PREV",
    "DeviceSigner",
    "DeviceState",
    "DeviceStateError",
    "adopt_legacy_state",
    "device_state_path",
    "load_state",
    "save_state",
]

ZERO_PREV = bytes(32)
"""``prev`` of a device's first envelope (seq 1)."""

_DEVICE_ID = DEVICE_ID_RE  # the one rule: anchor.device_id
# A state file is a few hundred bytes; refuse to parse anything much larger.
_MAX_STATE_FILE_SIZE = 4096


class DeviceStateError(AnchorError):
    """A device's chain state file is unreadable, corrupt, or belongs to another device.

    Reasons: ``state_invalid`` (unparseable or inconsistent), ``state_unreadable``,
    ``state_unwritable``, ``state_device_mismatch``, ``state_conflict``, ``device_id_invalid``,
    ``format_invalid``.
    """

    reason = Reason.STATE_INVALID


@dataclass(frozen=True, slots=True)
class DeviceState:
    """Where a device's chain stands: the last seq it signed and that envelope's leaf hash.

    ``seq == 0`` means nothing signed yet; then ``prev`` is 32 zero bytes.
    """

    device_id: str
    seq: int = 0
    prev: bytes = ZERO_PREV

    def __post_init__(self) -> None:
        if not isinstance(self.device_id, str) or not _DEVICE_ID.fullmatch(self.device_id):
            raise DeviceStateError(
                f"device id {self.device_id!r} is not {DEVICE_ID_PATTERN}",
                reason=Reason.DEVICE_ID_INVALID,
            )
        # bool is an int subclass; a JSON true must not pass as seq 1.
        if not isinstance(self.seq, int) or isinstance(self.seq, bool) or self.seq < 0:
            raise DeviceStateError(f"seq must be an integer >= 0, got {self.seq!r}")
        if not isinstance(self.prev, bytes) or len(self.prev) != 32:
            raise DeviceStateError("prev must be 32 bytes")
        if self.seq == 0 and self.prev != ZERO_PREV:
            raise DeviceStateError("a device that signed nothing must have an all-zero prev")

    def to_json(self) -> bytes:
        """``{"device_id": .., "seq": .., "prev": lowercase hex}`` as UTF-8, newline-terminated."""
        doc = {"device_id": self.device_id, "seq": self.seq, "prev": self.prev.hex()}
        return (json.dumps(doc, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> DeviceState:
        """Parse :meth:`to_json` output; raises ``DeviceStateError`` (``state_invalid``)."""
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DeviceStateError(f"state is not JSON: {exc}") from exc
        if not isinstance(doc, dict) or not {"device_id", "seq", "prev"} <= doc.keys():
            raise DeviceStateError("state must be an object with device_id, seq and prev")
        prev_hex = doc["prev"]
        if not isinstance(prev_hex, str) or not re.fullmatch(r"[0-9a-f]{64}", prev_hex):
            raise DeviceStateError("state prev must be 64 lowercase hex digits")
        return cls(device_id=doc["device_id"], seq=doc["seq"], prev=bytes.fromhex(prev_hex))


def load_state(path: Path | str) -> DeviceState | None:
    """Read a state file; ``None`` when it does not exist (a device that never signed).

    Raises ``DeviceStateError`` when the file exists but cannot be read or parsed: a device
    must not silently restart at seq 1 because its state got damaged.
    """
    p = Path(path)
    try:
        # Never blocks on a FIFO, never reads a device: only a regular file is opened for good.
        fd, _ = open_regular_nonblocking(p)
        with os.fdopen(fd, "rb") as f:
            data = f.read(_MAX_STATE_FILE_SIZE + 1)
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise DeviceStateError(
            f"cannot read state file {p}: it is {exc}, not a regular file",
            reason=Reason.STATE_UNREADABLE,
        ) from None
    except OSError as exc:
        raise DeviceStateError(
            f"cannot read state file {p}: {exc.strerror or exc}", reason=Reason.STATE_UNREADABLE
        ) from exc
    if len(data) > _MAX_STATE_FILE_SIZE:
        raise DeviceStateError(f"state file {p} is larger than {_MAX_STATE_FILE_SIZE} bytes")
    try:
        return DeviceState.from_json(data)
    except DeviceStateError as exc:
        raise DeviceStateError(f"state file {p}: {exc.detail}", reason=exc.reason) from exc


def save_state(path: Path | str, state: DeviceState) -> None:
    """Replace the state file with ``state`` atomically and durably.

    After this returns, a crash or power cut leaves either the whole new state or (had it
    failed) the whole old one, never a mix. Raises ``DeviceStateError`` (``state_unwritable``).
    """
    p = Path(path)
    try:
        write_private_file(p, state.to_json())
    except OSError as exc:
        raise DeviceStateError(
            f"cannot write state file {p}: {exc.strerror or exc}", reason=Reason.STATE_UNWRITABLE
        ) from exc


def device_state_path(key_dir: Path | str, device_id: str) -> Path:
    """Where a device's chain state lives by default: ``{key_dir}/{device_id}.state.json``.

    Keyed on the device id, never on the key file: a device's seq and prev belong to the
    device, so after a key rotation (the new key in the same directory) the chain continues
    where it stopped instead of restarting at seq 1, which the ingestor would refuse as a
    replay. The fleet simulator keeps its state under the same name.
    """
    if not _DEVICE_ID.fullmatch(device_id):
        raise DeviceStateError(
            f"device id {device_id!r} is not {DEVICE_ID_PATTERN}", reason=Reason.DEVICE_ID_INVALID
        )
    return Path(key_dir) / f"{device_id}.state.json"


def adopt_legacy_state(key_path: Path | str, device_id: str) -> Path:
    """The default state file of ``device_id`` whose key is ``key_path``, moving an older
    key-path state file (``{key_path}.{device_id}.state.json``, what ``cityanchor sign`` wrote
    before) to it when only the old one exists. Returns :func:`device_state_path`.

    Raises ``DeviceStateError`` (``state_conflict``) when both exist and disagree: which
    one is the truth cannot be guessed, and guessing wrong would sign a used seq again.
    """
    key = Path(key_path)
    new = device_state_path(key.parent, device_id)
    old = Path(f"{key}.{device_id}.state.json")
    old_state = load_state(old)
    if old_state is None:
        return new
    new_state = load_state(new)
    if new_state is None:
        if old_state.device_id != device_id:
            raise DeviceStateError(
                f"state file {old} belongs to device {old_state.device_id!r}",
                reason=Reason.STATE_DEVICE_MISMATCH,
            )
        save_state(new, old_state)  # durable first, then the old name goes
        old.unlink()
        return new
    if new_state == old_state:
        old.unlink()
        return new
    raise DeviceStateError(
        f"two state files for {device_id}: {old} (seq {old_state.seq}) and {new} (seq "
        f"{new_state.seq}); keep the one with the higher seq, delete the other",
        reason=Reason.STATE_CONFLICT,
    )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class DeviceSigner:
    """Signs one device's readings as a chain: seq 1, 2, 3, ... each naming its predecessor.

    ``DeviceSigner(device_id, key)`` keeps the chain in memory only; with ``state_path`` (or
    through :meth:`open`) it resumes from and persists to that file. ``state`` starts the chain
    elsewhere than seq 1 (a migrated device); a state file that exists always wins, and one that
    disagrees with ``state`` is refused (``state_conflict``). ``format`` is ``"cose-sign1"``
    (default) or ``"jws"``; ``alg`` is passed to :func:`anchor.envelope.sign_reading` (``None``
    picks the default for the key type).
    ``clock`` returns milliseconds since the Unix epoch and stamps readings signed without
    ``ts_ms``. A signer is safe to share between threads; one state file must be used by one
    signer (one process) at a time.
    """

    __slots__ = ("_alg", "_clock", "_format", "_key", "_lock", "_state", "_state_path")

    def __init__(
        self,
        device_id: str,
        key: PrivateKey,
        *,
        format: str = FORMAT_COSE,
        alg: str | None = None,
        state: DeviceState | None = None,
        state_path: Path | str | None = None,
        clock: Callable[[], int] = _now_ms,
    ) -> None:
        if format not in FORMATS:
            raise DeviceStateError(
                f"envelope format {format!r} is not one of {', '.join(FORMATS)}",
                reason=Reason.FORMAT_INVALID,
            )
        if state_path is not None:
            # The file, when present, is the truth: starting from anything else could sign a
            # seq the device already used before its last restart.
            on_disk = load_state(state_path)
            if on_disk is not None:
                if state is not None and state != on_disk:
                    raise DeviceStateError(
                        f"state file {state_path} (seq {on_disk.seq}) disagrees with the state "
                        f"given (seq {state.seq})",
                        reason=Reason.STATE_CONFLICT,
                    )
                state = on_disk
        if state is None:
            state = DeviceState(device_id)
        elif state.device_id != device_id:
            raise DeviceStateError(
                f"state belongs to device {state.device_id!r}, not {device_id!r}",
                reason=Reason.STATE_DEVICE_MISMATCH,
            )
        self._key = key
        self._format = format
        self._alg = alg
        self._state = state
        self._state_path = Path(state_path) if state_path is not None else None
        self._clock = clock
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls,
        device_id: str,
        key: PrivateKey,
        *,
        state_path: Path | str,
        format: str = FORMAT_COSE,
        alg: str | None = None,
        clock: Callable[[], int] = _now_ms,
    ) -> DeviceSigner:
        """A persistent signer: resumes from ``state_path`` or, if it is absent, starts at seq 1.

        The same as ``DeviceSigner(device_id, key, state_path=state_path, ...)``. Raises
        ``DeviceStateError`` when the file is damaged or names another device.
        """
        return cls(device_id, key, format=format, alg=alg, state_path=state_path, clock=clock)

    @property
    def device_id(self) -> str:
        return self._state.device_id

    @property
    def key(self) -> PrivateKey:
        return self._key

    @property
    def format(self) -> str:
        return self._format

    @property
    def state(self) -> DeviceState:
        """The chain state after the last signed reading."""
        return self._state

    @property
    def seq(self) -> int:
        """The seq of the last signed reading; 0 before the first."""
        return self._state.seq

    @property
    def prev(self) -> bytes:
        """The ``prev`` the next reading will carry."""
        return self._state.prev

    @property
    def state_path(self) -> Path | None:
        return self._state_path

    def sign(
        self,
        kind: str,
        values: Mapping[str, int | float | str | bool],
        ts_ms: int | None = None,
        *,
        extra: Mapping[str, Any] | None = None,
    ) -> bytes:
        """Sign the next reading and return its envelope bytes (CBOR or JWS compact ASCII).

        The reading gets ``seq = self.seq + 1`` and ``prev = self.prev``; ``ts_ms`` defaults to
        the clock. The state is persisted before this returns (see the module docstring).
        Raises ``EnvelopeError`` if :func:`anchor.envelope.sign_reading` rejects the reading
        (the state is then unchanged), and ``DeviceStateError`` (``state_unwritable``) if the
        state cannot be saved (the seq is then consumed, and no envelope is returned).
        """
        with self._lock:
            current = self._state
            reading = Reading(
                device_id=current.device_id,
                seq=current.seq + 1,
                ts=self._clock() if ts_ms is None else ts_ms,
                kind=kind,
                values=values,
                prev=current.prev,
                extra=dict(extra) if extra else {},
            )
            envelope = sign_reading(reading, self._key, format=self._format, alg=self._alg)
            new_state = DeviceState(current.device_id, reading.seq, leaf_hash(envelope))
            # Advance in memory before saving: if the save fails after the rename reached the
            # disk, the next call must not reuse this seq. A failed save burns the seq; the
            # unreturned envelope can never be published, so skipping it is harmless.
            self._state = new_state
            if self._state_path is not None:
                save_state(self._state_path, new_state)
            return envelope
