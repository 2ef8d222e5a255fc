"""``cityanchor audit``: recompute everything the receipts rely on from what is stored.

1. every batch: each reading's leaf hash from its stored envelope bytes (its batch's packed row,
   sql/009), and the batch root from the leaves, in batch order (an erased reading, zeros with
   a tombstone, contributes its kept leaf hash); the readings whose places reading_seqs holds
   must be exactly the batch's;
2. the whole batch log from the batches' sizes and roots (each log leaf is
   ``H(0x00 || uint64_be(size) || root)``, :func:`anchor.merkle.log_leaf_hash`), where the size
   is the count of readings stored for the batch, and each checkpoint: its root must be the root of
   that prefix of the log (so every checkpoint is consistent with every earlier one: the log only
   grew), its note must carry that size and root, and its signature must verify with the
   operator key;
3. each anchor on its chain (when the chain is configured), with the anchoring job's own test
   (:func:`anchor.anchoring.chains.base.check_recorded_anchor`): ``anchoredAt(root)`` equals the
   recorded
   block and, where the block hash was recorded, that block is still the canonical one. One that
   is not is reported as ``[anchor_vanished]``; with ``mark_vanished`` the audit also moves it to
   ``vanished_anchors``, as the job does for the anchors of its reorg window, so that nothing
   cites it any more (the job then anchors the newest checkpoint again if that one was lost).
   Anchors marked vanished earlier are counted (``anchors_vanished``), not reported again.

Every divergence is reported with the batch, reading, checkpoint or anchor concerned; the exit
status is 1 when there is any.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from anchor import merkle
from anchor.checkpoint import NoteVerifier, open_checkpoint, parse_checkpoint_unverified
from anchor.errors import AnchorError, Reason

if TYPE_CHECKING:
    from anchor.store.archive_file import Manifest

__all__ = ["AuditReport", "Divergence", "run_audit"]


@dataclass(frozen=True, slots=True)
class Divergence:
    """One thing that does not recompute: ``what`` names it, ``detail`` says how."""

    kind: str  # reading, batch, checkpoint, anchor
    what: str
    detail: str


@dataclass(slots=True)
class AuditReport:
    batches: int = 0
    readings: int = 0
    erased: int = 0
    checkpoints: int = 0
    anchors_checked: int = 0
    anchors_skipped: int = 0
    anchors_vanished: int = 0  # marked vanished before this audit (vanished_anchors)
    anchors_marked: int = 0  # marked vanished by this audit (mark_vanished)
    archives: int = 0  # archived months (anchor.store.archives)
    archives_unchecked: int = 0  # archived months not checked: no archive directory given
    divergences: list[Divergence] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.divergences


class _Progress:
    def __init__(self, total: int, stream: TextIO | None) -> None:
        self.total, self.stream, self.done, self.last = total, stream, 0, 0.0

    def step(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.stream is not None and (now - self.last > 0.5 or self.done == self.total):
            self.last = now
            pct = 100 * self.done / max(1, self.total)
            self.stream.write(f"\raudit: {self.done}/{self.total} batches ({pct:.0f}%)")
            if self.done == self.total:
                self.stream.write("\n")
            self.stream.flush()


async def _name_readings(conn: Any, damaged: Sequence[tuple[int, int, str]]) -> list[Divergence]:
    """A divergence per damaged envelope, named by its reading (one pass over reading_seqs,
    which has no index by batch place: sql/009)."""
    if not damaged:
        return []
    names = {
        (r["batch_id"], r["batch_index"]): f"{r['device_id']} seq {r['seq']}"
        for r in await conn.fetch(
            "SELECT s.batch_id, s.batch_index, d.device_id, s.seq FROM reading_seqs s "
            "JOIN devices d ON d.num = s.device_num "
            "JOIN unnest($1::bigint[], $2::int[]) AS k(batch_id, batch_index) "
            "ON s.batch_id = k.batch_id AND s.batch_index = k.batch_index",
            [d[0] for d in damaged],
            [d[1] for d in damaged],
        )
    }
    return [
        Divergence(
            "reading",
            f"{names.get((batch_id, i), 'no stored reading')} (batch {batch_id} index {i})",
            detail,
        )
        for batch_id, i, detail in damaged
    ]


async def run_audit(
    dsn: str,
    *,
    log_verifiers: Sequence[NoteVerifier] = (),
    backends: Sequence[Any] = (),
    hasher: merkle.Hasher = merkle.SHA256,
    progress: TextIO | None = sys.stderr,
    mark_vanished: bool = False,
    archive_dir: Path | None = None,
) -> AuditReport:
    """Audit the store at ``dsn``; ``backends`` (by name) check anchors on their chains;
    ``mark_vanished`` moves the anchors found gone from their chain to ``vanished_anchors``;
    ``archive_dir`` holds the archived months' files (without it they are counted in
    ``archives_unchecked`` and their batches' readings are not recomputed)."""
    import asyncpg

    from anchor.store.packed import split_envelopes, split_leaves

    report = AuditReport()
    gone: list[tuple[Any, str]] = []
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            batches = await conn.fetch(
                "SELECT id, size, root, log_index, sealed_at FROM batches ORDER BY log_index"
            )
            # One pass over reading_seqs: how many readings each batch's places hold.
            places = {
                r["batch_id"]: (r["n"], r["distinct_n"], r["lo"], r["hi"])
                for r in await conn.fetch(
                    "SELECT batch_id, count(*) AS n, count(DISTINCT batch_index) AS distinct_n, "
                    "min(batch_index) AS lo, max(batch_index) AS hi FROM reading_seqs "
                    "GROUP BY batch_id"
                )
            }
            erased_leaves = {
                bytes(r["leaf_hash"])
                for r in await conn.fetch("SELECT leaf_hash FROM reading_erasures")
            }
            archived = await _audit_archives(conn, batches, archive_dir, report)
            bar = _Progress(len(batches), progress if len(batches) > 1 else None)
            log_leaves: list[bytes] = []
            damaged: list[tuple[int, int, str]] = []
            for expected_index, b in enumerate(batches):
                if b["log_index"] != expected_index:
                    report.divergences.append(
                        Divergence(
                            "batch",
                            f"batch {b['id']}",
                            f"log index {b['log_index']}, expected {expected_index} (a gap)",
                        )
                    )
                month = _month_of(b["sealed_at"])
                if month in archived and archived[month] is None:
                    # An archived month without its files: the log leaf from the batch row.
                    log_leaves.append(
                        merkle.log_leaf_hash(b["size"], bytes(b["root"]), hasher=hasher)
                    )
                    report.batches += 1
                    bar.step()
                    continue
                if month in archived:
                    row = _archived_row(archived[month], b["id"])
                else:
                    row = await conn.fetchrow(
                        "SELECT leaves, ends, envelopes FROM reading_batches "
                        "WHERE batch_id = $1 AND sealed_at = $2",
                        b["id"],
                        b["sealed_at"],
                    )
                stored_leaves = [] if row is None else split_leaves(bytes(row["leaves"]))
                slots = (
                    []
                    if row is None
                    else split_envelopes(bytes(row["ends"]), bytes(row["envelopes"]))
                )
                leaves = []
                for i, (env, kept) in enumerate(zip(slots, stored_leaves, strict=False)):
                    computed = merkle.leaf_hash(env, hasher=hasher)
                    stored = kept
                    if computed != stored and not any(env) and stored in erased_leaves:
                        report.erased += 1  # zeros where an erased envelope was: keep its leaf
                    elif computed != stored:
                        damaged.append(
                            (
                                b["id"],
                                i,
                                f"stored envelope hashes to {computed.hex()}, leaf hash is "
                                f"{stored.hex()}",
                            )
                        )
                        stored = computed  # the envelope is what the receipt proves
                    leaves.append(stored)
                n = len(leaves)
                report.readings += n
                if (
                    n != b["size"]
                    or len(slots) != len(stored_leaves)
                    or places.get(b["id"]) != (n, n, 0, n - 1)
                ):
                    report.divergences.append(
                        Divergence(
                            "batch",
                            f"batch {b['id']}",
                            f"{n} readings stored, size {b['size']}, or bad indexes",
                        )
                    )
                root = merkle.root(leaves, hasher=hasher)
                if root != bytes(b["root"]):
                    report.divergences.append(
                        Divergence(
                            "batch",
                            f"batch {b['id']}",
                            f"readings recompute to root {root.hex()}, "
                            f"stored root {bytes(b['root']).hex()}",
                        )
                    )
                # The size that goes into the leaf is the count of readings actually stored,
                # not the batches.size column: a changed size column is then a divergence
                # (above), and the log must still recompute from what the receipts prove.
                log_leaves.append(merkle.log_leaf_hash(max(1, n), bytes(b["root"]), hasher=hasher))
                report.batches += 1
                bar.step()
            report.divergences.extend(await _name_readings(conn, damaged))
            await _audit_checkpoints(conn, log_leaves, log_verifiers, hasher, report)
            gone = await _audit_anchors(conn, backends, report)
            report.anchors_vanished = await conn.fetchval("SELECT count(*) FROM vanished_anchors")
    finally:
        await conn.close()
    if mark_vanished and gone:
        await _mark(dsn, gone, report)
    return report


def _month_of(when: datetime) -> str:
    utc = when.astimezone(UTC)
    return f"{utc.year:04d}-{utc.month:02d}"


# An archived month's file and manifest (checked), or None when there is no archive directory.
_Archived = tuple[Path, "Manifest"] | None


async def _audit_archives(
    conn: Any, batches: Sequence[Any], archive_dir: Path | None, report: AuditReport
) -> dict[str, _Archived]:
    """Check each archived month's file (anchor.store.archives.check_archive: its SHA-256
    against the manifest and the ``archives`` row, every batch line against its batch row, its
    leaves against its root, its envelopes against their leaves); the months by name."""
    from anchor.store.archives import archive_record, check_archive

    out: dict[str, _Archived] = {}
    rows = await conn.fetch(
        "SELECT month, file, sha256, bytes, batches, readings, log_from, log_to, generation, "
        "archived_at, restored_at FROM archives WHERE restored_at IS NULL ORDER BY month"
    )
    for r in rows:
        record = archive_record(r)
        report.archives += 1
        if archive_dir is None:
            report.archives_unchecked += 1
            out[record.month] = None
            continue
        month_batches = [b for b in batches if _month_of(b["sealed_at"]) == record.month]
        try:
            manifest, problems = await asyncio.to_thread(
                check_archive, archive_dir, record, month_batches
            )
        except AnchorError as exc:
            report.divergences.append(
                Divergence("archive", f"archive of {record.month}", f"[{exc.reason}] {exc.detail}")
            )
            out[record.month] = None
            continue
        report.divergences.extend(
            Divergence("archive", f"archive of {record.month}", f"[{Reason.ARCHIVE_INVALID}] {p}")
            for p in problems
        )
        out[record.month] = (archive_dir / record.file, manifest)
    return out


def _archived_row(archived: _Archived, batch_id: int) -> dict[str, bytes] | None:
    """An archived batch's stored values from its file, or None (reported by the batch checks
    as a batch without readings) when the file does not hold it."""
    from anchor.store.archive_file import ArchiveFormatError, read_member

    assert archived is not None
    path, manifest = archived
    entry = manifest.batch(batch_id)
    if entry is None:
        return None
    try:
        line = read_member(path, entry.offset, entry.length)
    except (OSError, ArchiveFormatError):
        return None
    return {"leaves": line.leaves, "ends": line.ends, "envelopes": line.envelopes}


async def _mark(dsn: str, gone: Sequence[tuple[Any, str]], report: AuditReport) -> None:
    from anchor.store import Store, StoredAnchor

    store = await Store.connect(dsn, max_size=1)
    try:
        for row, detail in gone:
            anchor = StoredAnchor(
                row["backend"],
                row["chain_id"],
                row["contract"],
                row["log_size"],
                bytes(row["root"]),
                row["tx_hash"],
                row["block_number"],
                row["block_time"],
            )
            if await store.mark_anchor_vanished(
                anchor, reason=Reason.ANCHOR_VANISHED, detail=f"audit: {detail}"
            ):
                report.anchors_marked += 1
    finally:
        await store.close()


async def _audit_checkpoints(
    conn: Any,
    log_leaves: list[bytes],
    log_verifiers: Sequence[NoteVerifier],
    hasher: merkle.Hasher,
    report: AuditReport,
) -> None:
    frontier: list[bytes] = []
    size = 0
    for cp in await conn.fetch("SELECT log_size, root, note FROM checkpoints ORDER BY log_size"):
        what = f"checkpoint at size {cp['log_size']}"
        report.checkpoints += 1
        if cp["log_size"] > len(log_leaves):
            report.divergences.append(
                Divergence("checkpoint", what, f"the log has only {len(log_leaves)} batches")
            )
            continue
        while size < cp["log_size"]:
            frontier = merkle.compact_append(frontier, size, log_leaves[size], hasher=hasher)
            size += 1
        expected = merkle.compact_root(frontier, hasher=hasher)
        if bytes(cp["root"]) != expected:
            report.divergences.append(
                Divergence(
                    "checkpoint",
                    what,
                    f"stored root {bytes(cp['root']).hex()}, the log's prefix has "
                    f"{expected.hex()}: the log was rewritten",
                )
            )
        try:
            note = (
                open_checkpoint(cp["note"], log_verifiers[0])
                if log_verifiers
                else parse_checkpoint_unverified(cp["note"])
            )
        except AnchorError as exc:
            report.divergences.append(
                Divergence("checkpoint", what, f"[{exc.reason}] {exc.detail}")
            )
            continue
        if (note.size, note.root) != (cp["log_size"], expected):
            report.divergences.append(
                Divergence(
                    "checkpoint",
                    what,
                    f"the signed note says size {note.size} root {note.root.hex()}",
                )
            )


async def _audit_anchors(
    conn: Any, backends: Sequence[Any], report: AuditReport
) -> list[tuple[Any, str]]:
    """Check every recorded anchor; return the rows (and why) of those gone from the chain."""
    from anchor.anchoring.chains.base import check_recorded_anchor

    by_name = {b.name: b for b in backends}
    gone: list[tuple[Any, str]] = []
    for a in await conn.fetch(
        "SELECT a.*, c.root AS cp_root "
        "FROM anchors a JOIN checkpoints c USING (log_size) ORDER BY a.log_size, a.backend"
    ):
        what = f"anchor of log size {a['log_size']} on {a['backend']} (tx {a['tx_hash']})"
        if bytes(a["root"]) != bytes(a["cp_root"]):
            report.divergences.append(
                Divergence("anchor", what, "anchored root is not the checkpoint's")
            )
        backend = by_name.get(a["backend"])
        if backend is None:
            report.anchors_skipped += 1
            continue
        block_hash = None if a["block_hash"] is None else bytes(a["block_hash"])
        try:
            problem = await asyncio.to_thread(
                functools.partial(
                    check_recorded_anchor,
                    backend,
                    root=bytes(a["root"]),
                    block_number=a["block_number"],
                    block_hash=block_hash,
                )
            )
        except AnchorError as exc:
            report.divergences.append(Divergence("anchor", what, f"[{exc.reason}] {exc.detail}"))
            continue
        report.anchors_checked += 1
        if problem is not None:
            report.divergences.append(Divergence("anchor", what, str(problem)))
            gone.append((a, problem.detail))
    return gone
