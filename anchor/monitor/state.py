"""The monitor's state file: its verified view of the log, where it stopped reading each chain,
the operator's anchoring accounts it learnt, and the alarm it raised, if any.

One JSON document (``"format": "cityanchor/monitor-state/v1"``), replaced atomically and durably
(:func:`anchor.host.files.write_file_atomic`) after every round, so a restart keeps the view. A
file that cannot be read, is of another format, names another log key or holds a note that does
not verify is refused (:class:`~anchor.log_view.MonitorStateError`, exit 2): resetting it
silently would forget the very checkpoints a fork must be compared with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anchor.checkpoint import NoteVerifier
from anchor.host.files import write_file_atomic
from anchor.log_view import LogView, MonitorStateError
from anchor.wire import JsonRejected, strict_loads

__all__ = ["FORMAT", "MonitorState"]

FORMAT = "cityanchor/monitor-state/v1"
_MAX_STATE = 64 << 20


@dataclass
class MonitorState:
    """Everything a monitor remembers between rounds and restarts (mutable; saved whole)."""

    log_key: str
    view: LogView = field(default_factory=LogView)
    # "chain_id:contract" (contract lower-case) -> the next block to read.
    next_block: dict[str, int] = field(default_factory=dict)
    submitters: set[str] = field(default_factory=set)
    # chain id -> the AnchorRegistry address the API's anchors name on it.
    contracts: dict[str, str] = field(default_factory=dict)
    anchors_since: int = 0
    receipt_seq: dict[str, int] = field(default_factory=dict)
    alarm: dict[str, Any] | None = None
    rounds: int = 0

    def to_json(self) -> bytes:
        doc = {
            "format": FORMAT,
            "log_key": self.log_key,
            "view": self.view.to_dict(),
            "next_block": dict(sorted(self.next_block.items())),
            "submitters": sorted(self.submitters),
            "contracts": dict(sorted(self.contracts.items())),
            "anchors_since": self.anchors_since,
            "receipt_seq": dict(sorted(self.receipt_seq.items())),
            "alarm": self.alarm,
            "rounds": self.rounds,
        }
        return (json.dumps(doc, indent=1) + "\n").encode("utf-8")

    def save(self, path: Path) -> None:
        write_file_atomic(path, self.to_json(), mode=0o600)

    @classmethod
    def load(cls, path: Path, verifier: NoteVerifier) -> MonitorState:
        """The state in ``path``, or a fresh one when the file does not exist.

        Raises ``MonitorStateError`` for anything else that is not a valid state of this log.
        """
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls(verifier.vkey())
        except OSError as exc:
            raise MonitorStateError(f"state file {path} cannot be read: {exc}") from exc
        where = f"state file {path}"
        if len(raw) > _MAX_STATE:
            raise MonitorStateError(f"{where} is larger than {_MAX_STATE} bytes")
        try:
            doc = strict_loads(raw, max_depth=16)
        except JsonRejected as exc:
            raise MonitorStateError(
                f"{where} is not JSON ({exc}); it is never reset "
                "silently: move it away to start a new view"
            ) from exc
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            got = doc.get("format") if isinstance(doc, dict) else None
            raise MonitorStateError(f"{where} has format {got!r}, expected {FORMAT!r}")
        if doc.get("log_key") != verifier.vkey():
            raise MonitorStateError(
                f"{where} belongs to log key {doc.get('log_key')!r}, not {verifier.vkey()!r}"
            )
        try:
            view = LogView.from_dict(doc.get("view"), verifier)
        except MonitorStateError as exc:
            raise MonitorStateError(f"{where}: {exc.detail}") from exc
        try:
            state = cls(
                verifier.vkey(),
                view,
                next_block={str(k): _uint(v) for k, v in doc["next_block"].items()},
                submitters={str(s) for s in doc["submitters"]},
                contracts={str(k): str(v) for k, v in doc["contracts"].items()},
                anchors_since=_uint(doc["anchors_since"]),
                receipt_seq={str(k): _uint(v) for k, v in doc["receipt_seq"].items()},
                alarm=doc["alarm"],
                rounds=_uint(doc["rounds"]),
            )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise MonitorStateError(f"{where} is missing or mistypes a member: {exc}") from exc
        if state.alarm is not None and not isinstance(state.alarm, dict):
            raise MonitorStateError(f"{where}: alarm must be an object or null")
        return state


def _uint(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{value!r} is not a non-negative integer")
    return value
