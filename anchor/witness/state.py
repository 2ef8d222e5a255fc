"""The witness's memory: per log, the latest checkpoint it cosigned, in one SQLite file.

A witness is only as good as this file. c2sp.org/tlog-witness: "The witness MUST persist the new
checkpoint before responding", and "checking the old size against the latest checkpoint and
persisting the new checkpoint must be performed atomically", or two concurrent requests can roll
the stored size back (request A checked at N, request B checked and stored at N+K, A stored at
N: K leaves forgotten, and the witness later cosigns a fork of them). Here:

* :meth:`WitnessState.apply` opens ``BEGIN IMMEDIATE`` (SQLite's write lock, taken *before* the
  read, so no other connection, thread or process can write between our read and our write),
  reads the row, runs the caller's pure decision on it, writes the new row when the decision
  accepts, and commits; only the caller, after :meth:`apply` returns, signs the cosignature.
  ``synchronous=FULL`` in WAL mode fsyncs the log at every commit, so a committed state survives
  a power cut, and a cosignature is never released for a state that could be lost.
* The cosigned note (for the monitoring endpoint) is written afterwards by
  :meth:`WitnessState.record_cosigned`, only if the row still holds the same checkpoint: a crash
  between the two leaves the new state with the previous cosigned note, which the spec allows
  ("The witness MAY delay updating the checkpoint").
* Validly signed checkpoints refused as inconsistent (HTTP 422) are kept in ``refused`` as
  possible evidence that the log forked (the spec: the witness "MAY log the request"), with the
  witness's own checkpoint of that moment beside them.

Sizes are stored as decimal text: a tree size is a uint64 and SQLite integers are signed 64-bit.

Errors: :class:`WitnessStateError` (``witness_state_failed``) for anything SQLite refuses.
Losing this file lets the witness be tricked into cosigning a fork: back it up (docs/
verifier-guide.md, "Running a witness").
"""

from __future__ import annotations

import base64
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anchor.errors import AnchorError, Reason
from anchor.witness_protocol import (
    Accepted,
    AddCheckpointRequest,
    Refused,
    WitnessedCheckpoint,
    origin_hash,
)

__all__ = [
    "MAX_EVIDENCE_ROWS",
    "SCHEMA_VERSION",
    "Decide",
    "Lookup",
    "RefusedCheckpoint",
    "StoredCheckpoint",
    "WitnessState",
    "WitnessStateError",
]

SCHEMA_VERSION = 1
MAX_EVIDENCE_ROWS = 10_000
"""Refused checkpoints kept at most (only the log's key can make them; a bound all the same)."""

Lookup = Callable[[str], WitnessedCheckpoint | None]
"""The latest cosigned checkpoint of an origin, read inside the write transaction."""

Decide = Callable[[Lookup], Accepted | Refused]
"""A pure decision on one request given the state (``decide_add_checkpoint`` and an admission)."""

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS logs (
        origin        TEXT PRIMARY KEY,
        origin_hash   TEXT NOT NULL UNIQUE,
        size          TEXT NOT NULL,
        root          BLOB NOT NULL,
        note          TEXT NOT NULL,
        cosigned_note TEXT,
        cosigned_at   INTEGER NOT NULL,
        updated_at    INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS refused (
        id             INTEGER PRIMARY KEY,
        origin         TEXT NOT NULL,
        size           TEXT NOT NULL,
        root           BLOB NOT NULL,
        old_size       TEXT NOT NULL,
        proof          TEXT NOT NULL,
        note           TEXT NOT NULL,
        detail         TEXT NOT NULL,
        witnessed_size TEXT,
        witnessed_root BLOB,
        witnessed_note TEXT,
        received_at    INTEGER NOT NULL,
        UNIQUE (origin, size, root, old_size)
    )""",
)
_COLUMNS = "origin, size, root, note, cosigned_note, cosigned_at, updated_at"


class WitnessStateError(AnchorError):
    """The state file cannot be opened, read or written; nothing was cosigned."""

    reason = Reason.WITNESS_STATE_FAILED


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """One log's row: the latest checkpoint cosigned, as the log signed it, and as cosigned.

    ``cosigned_note`` is ``note``'s text with the verified log signature(s) and the witness's
    cosignature, or None until written; it may trail ``size`` briefly (see the module doc).
    ``cosigned_at`` is the timestamp of the latest cosignature reserved for this log.
    """

    origin: str
    size: int
    root: bytes
    note: str
    cosigned_note: str | None
    cosigned_at: int
    updated_at: int

    def witnessed(self) -> WitnessedCheckpoint:
        return WitnessedCheckpoint(self.origin, self.size, self.root, self.note)


@dataclass(frozen=True, slots=True)
class RefusedCheckpoint:
    """A validly signed checkpoint refused with 422, and what the witness held at that moment."""

    origin: str
    size: int
    root: bytes
    old_size: int
    proof: tuple[bytes, ...]
    note: str
    detail: str
    witnessed: WitnessedCheckpoint | None
    received_at: int


@dataclass(frozen=True, slots=True)
class Applied:
    """What :meth:`WitnessState.apply` did: the decision, and for an acceptance the timestamp
    reserved for its cosignature (never below an earlier one of the same log, never 0)."""

    outcome: Accepted | Refused
    timestamp: int = 0


def _row(row: Any) -> StoredCheckpoint:
    origin, size, root, note, cosigned_note, cosigned_at, updated_at = row
    return StoredCheckpoint(
        str(origin),
        int(size),
        bytes(root),
        str(note),
        None if cosigned_note is None else str(cosigned_note),
        int(cosigned_at),
        int(updated_at),
    )


class WitnessState:
    """The SQLite state file at ``path`` (created when missing). Thread-safe: each thread uses
    its own connection, and SQLite's write lock orders the writers of every process.

    Raises :class:`WitnessStateError` when the file cannot be opened or holds another schema.
    """

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self._timeout = busy_timeout_s
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._closed = False
        with self._errors("open"), self._transaction() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise WitnessStateError(
                    f"witness state {self.path} has schema {version}, newer than this "
                    f"cityanchor's {SCHEMA_VERSION}"
                )
            for ddl in _SCHEMA:
                conn.execute(ddl)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- connections ---------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if self._closed:
            raise WitnessStateError(f"witness state {self.path} is closed")
        # isolation_level=None: no implicit transactions, we say BEGIN IMMEDIATE ourselves.
        conn = sqlite3.connect(
            self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False
        )
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise WitnessStateError(f"witness state {self.path}: cannot use WAL ({mode})")
            # FULL: in WAL mode, fsync the log at every commit (NORMAL would not).
            conn.execute("PRAGMA synchronous=FULL")
        except BaseException:
            conn.close()
            raise
        with self._lock:
            self._connections.append(conn)
        self._local.conn = conn
        return conn

    def close(self) -> None:
        """Close every connection (call when no request is running any more)."""
        with self._lock:
            self._closed = True
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise WitnessStateError(f"witness state {self.path}: cannot {what}: {exc}") from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # -- reads ---------------------------------------------------------------------------------
    def latest(self, origin: str) -> StoredCheckpoint | None:
        """The row of ``origin``, or None if the witness never cosigned for it."""
        with self._errors("read"):
            row = (
                self._conn()
                .execute(f"SELECT {_COLUMNS} FROM logs WHERE origin = ?", (origin,))
                .fetchone()
            )
        return None if row is None else _row(row)

    def by_origin_hash(self, hex_hash: str) -> StoredCheckpoint | None:
        """The row whose origin hashes to ``hex_hash`` (lowercase hex SHA-256), or None."""
        with self._errors("read"):
            row = (
                self._conn()
                .execute(f"SELECT {_COLUMNS} FROM logs WHERE origin_hash = ?", (hex_hash,))
                .fetchone()
            )
        return None if row is None else _row(row)

    def logs(self) -> list[StoredCheckpoint]:
        """Every row, by origin."""
        with self._errors("read"):
            rows = self._conn().execute(f"SELECT {_COLUMNS} FROM logs ORDER BY origin").fetchall()
        return [_row(r) for r in rows]

    def refused(self, origin: str | None = None) -> list[RefusedCheckpoint]:
        """The refused-but-validly-signed checkpoints kept, oldest first."""
        query = (
            "SELECT origin, size, root, old_size, proof, note, detail, witnessed_size, "
            "witnessed_root, witnessed_note, received_at FROM refused"
        )
        params: tuple[str, ...] = ()
        if origin is not None:
            query += " WHERE origin = ?"
            params = (origin,)
        with self._errors("read"):
            rows = self._conn().execute(query + " ORDER BY id", params).fetchall()
        out = []
        for o, size, root, old, proof, note, detail, w_size, w_root, w_note, at in rows:
            witnessed = (
                None
                if w_size is None
                else WitnessedCheckpoint(o, int(w_size), bytes(w_root), str(w_note))
            )
            hashes = tuple(base64.b64decode(line) for line in str(proof).split())
            out.append(
                RefusedCheckpoint(
                    o, int(size), bytes(root), int(old), hashes, note, detail, witnessed, int(at)
                )
            )
        return out

    def ping(self) -> None:
        """Raise :class:`WitnessStateError` unless the file can be read now."""
        with self._errors("read"):
            self._conn().execute("SELECT count(*) FROM logs").fetchone()

    # -- the one write that matters ------------------------------------------------------------
    def apply(self, request: AddCheckpointRequest, decide: Decide, *, now: int) -> Applied:
        """Decide on ``request`` against the stored state and store an acceptance, atomically.

        ``decide`` gets a lookup reading the state inside the transaction (under SQLite's write
        lock) and returns the decision; an :class:`Accepted` is written (the new size, root and
        note) and committed before this returns, a ``Refused`` with evidence is kept in
        ``refused``. ``now`` (POSIX seconds) is the cosignature time wanted; the one reserved is
        ``max(now, the log's previous one, 1)``. An exception from ``decide`` rolls back and
        propagates. Raises :class:`WitnessStateError` when SQLite fails (nothing committed).
        """
        seen: dict[str, StoredCheckpoint | None] = {}
        with self._errors("update"), self._transaction() as conn:

            def lookup(origin: str) -> WitnessedCheckpoint | None:
                row = conn.execute(
                    f"SELECT {_COLUMNS} FROM logs WHERE origin = ?", (origin,)
                ).fetchone()
                seen[origin] = stored = None if row is None else _row(row)
                return None if stored is None else stored.witnessed()

            outcome = decide(lookup)
            if isinstance(outcome, Refused):
                if outcome.evidence and outcome.checkpoint is not None:
                    origin = outcome.checkpoint.origin
                    self._keep_evidence(conn, request, outcome, seen.get(origin), now)
                return Applied(outcome)
            cp = outcome.checkpoint
            if cp.origin not in seen:
                raise WitnessStateError("the decision accepted without reading the state")
            before = seen[cp.origin]
            timestamp = max(now, before.cosigned_at if before else 0, 1)
            conn.execute(
                """INSERT INTO logs (origin, origin_hash, size, root, note, cosigned_note,
                       cosigned_at, updated_at)
                   VALUES (?, ?, ?, ?, ?, NULL, ?, ?)
                   ON CONFLICT (origin) DO UPDATE SET size = excluded.size,
                       root = excluded.root, note = excluded.note,
                       cosigned_at = excluded.cosigned_at, updated_at = excluded.updated_at""",
                (cp.origin, origin_hash(cp.origin), str(cp.size), cp.root, request.note,
                 timestamp, now),
            )  # fmt: skip
        return Applied(outcome, timestamp)

    def _keep_evidence(
        self,
        conn: sqlite3.Connection,
        request: AddCheckpointRequest,
        refused: Refused,
        before: StoredCheckpoint | None,
        now: int,
    ) -> None:
        cp = refused.checkpoint
        assert cp is not None
        if conn.execute("SELECT count(*) FROM refused").fetchone()[0] >= MAX_EVIDENCE_ROWS:
            return
        conn.execute(
            """INSERT OR IGNORE INTO refused (origin, size, root, old_size, proof, note, detail,
                   witnessed_size, witnessed_root, witnessed_note, received_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                cp.origin,
                str(cp.size),
                cp.root,
                str(request.old_size),
                "\n".join(base64.b64encode(h).decode("ascii") for h in request.proof),
                request.note,
                refused.detail,
                None if before is None else str(before.size),
                None if before is None else before.root,
                None if before is None else before.note,
                now,
            ),
        )

    def record_cosigned(
        self, origin: str, *, size: int, root: bytes, timestamp: int, cosigned_note: str
    ) -> bool:
        """Store the cosigned note of the checkpoint :meth:`apply` accepted, if the row still
        holds it (same size, root and reserved timestamp); False when a newer one took over."""
        with self._errors("update"), self._transaction() as conn:
            cursor = conn.execute(
                """UPDATE logs SET cosigned_note = ? WHERE origin = ? AND size = ? AND root = ?
                   AND cosigned_at = ?""",
                (cosigned_note, origin, str(size), root, timestamp),
            )
            return cursor.rowcount == 1
