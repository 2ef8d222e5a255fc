"""The per-batch receipt cache of an API process (issue 15, "Receipts").

Most of a receipt is shared by the ~1,000 readings of its batch: the batch's size and root, the
checkpoint it ends on (the operator-signed note with the stored witness cosignature lines
appended), the batch's log inclusion path to that checkpoint, and the checkpoint's anchors.
:class:`ReceiptCache` keeps that per batch, so a receipt costs one indexed lookup (the reading,
16 leaves of its batch around it, and the *version* of what its batch shares) plus in-memory
assembly: the levels of the batch's tree above those 16 leaves are cached too (sql/009 stores
leaves per batch, not paths per reading).

**What is cached is checked when it is filled.** An entry is built from the database by
:mod:`anchor.store.receipts` and stored only after the batch's log path, rebuilt from stored log
nodes, has been verified to lead from the batch's log leaf (its stored size and root) to the
checkpoint's stored root; each receipt's own batch path is still verified against the cached
batch root before it is served. A stored node that does not check out never enters the cache
(the receipt takes the full path and is ``log_inconsistent``).

**Invalidation: a version read in the one remaining query**, not LISTEN/NOTIFY. The lookup
computes, in the same statement (one snapshot) as the reading, which checkpoint the batch's
receipts end on (the rule of :mod:`anchor.store.receipts`) and a fingerprint of that checkpoint's
anchors and cosignatures: the ``xmin`` (inserting transaction) of each of their rows. A new
anchor or cosignature, an anchor moved to ``vanished_anchors`` by a reorg (sql/007), a newer
anchored or cosigned checkpoint, or (for a batch no anchor or witness covers yet) a newer
checkpoint changes that version, and an entry whose version differs is refilled before use, so
the next receipt reflects the change: nothing can be served from a state older than the lookup's
snapshot. An erased envelope needs no invalidation: nothing per reading is cached, and the lookup
reads the envelope (an erased one takes the full path, which serves the tombstone). LISTEN/NOTIFY
was not chosen because a notification arrives after the commit, asynchronously: between the two a
request could be served from the old entry, and a listener connection that drops loses
notifications silently (every entry would have to be distrusted until it is back); it would also
need triggers in a new migration. The version costs a few index lookups in a statement the
receipt runs anyway.

Bounded: at most ``max_entries`` batches and about ``max_bytes`` of proof material, least
recently used evicted first. Pure and synchronous (no I/O): one per process, one event loop.
"""

from __future__ import annotations

import collections
from collections.abc import Hashable
from dataclasses import dataclass

from anchor.receipt import AnchorRecord, LogProof

__all__ = ["BatchShare", "CacheStats", "ReceiptCache"]

# Defaults: a 1M-reading log has ~1,000 batches of ~11 KiB each here (upper tree levels
# included); a year of one batch a second would not fit, and need not (receipts of old batches
# are asked rarely).
MAX_ENTRIES = 8192
MAX_BYTES = 32 << 20


@dataclass(frozen=True, slots=True)
class BatchShare:
    """What every receipt of one batch shares, verified when it was filled."""

    version: tuple[object, ...]
    size: int
    root: bytes
    log: LogProof
    checkpoint: str
    anchors: tuple[AnchorRecord, ...]
    # The batch tree's levels from level 4 up (anchor.store.packed.upper_levels): with the 16
    # leaves a lookup reads around its reading they give its batch path (verified per receipt).
    upper: tuple[tuple[bytes, ...], ...] = ()

    @property
    def nbytes(self) -> int:
        """About the memory this entry holds (the cache's byte bound counts this)."""
        return (
            256
            + 48 * len(self.log.path)
            + sum(72 * len(level) for level in self.upper)
            + len(self.checkpoint)
            + sum(160 + len(a.tx_hash) + len(a.contract) for a in self.anchors)
        )


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters since the cache was made: ``hits`` served from an entry, ``misses`` (no entry,
    or one evicted), ``stale`` (an entry whose version no longer matched: refilled)."""

    hits: int
    misses: int
    stale: int
    entries: int
    nbytes: int

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses + self.stale
        return self.hits / total if total else 0.0


class ReceiptCache:
    """A bounded LRU map from a batch key to its :class:`BatchShare`."""

    def __init__(self, *, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("a receipt cache holds at least one entry and one byte")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: collections.OrderedDict[Hashable, BatchShare] = collections.OrderedDict()
        self._nbytes = 0
        self._hits = 0
        self._misses = 0
        self._stale = 0

    def get(self, key: Hashable, version: tuple[object, ...]) -> BatchShare | None:
        """The entry of ``key`` if its version is ``version`` (counted as a hit); else None
        (a miss, or a stale entry, which is dropped)."""
        entry = self._entries.get(key)
        if entry is None:
            self._misses += 1
            return None
        if entry.version != version:
            self._stale += 1
            self._drop(key)
            return None
        self._hits += 1
        self._entries.move_to_end(key)
        return entry

    def put(self, key: Hashable, entry: BatchShare) -> None:
        """Store a verified entry, evicting the least recently used beyond the bounds."""
        if key in self._entries:
            self._drop(key)
        size = entry.nbytes
        if size > self.max_bytes:
            return
        self._entries[key] = entry
        self._nbytes += size
        while len(self._entries) > self.max_entries or self._nbytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)

    def clear(self) -> None:
        """Forget every entry (the counters stay)."""
        self._entries.clear()
        self._nbytes = 0

    def stats(self) -> CacheStats:
        return CacheStats(self._hits, self._misses, self._stale, len(self._entries), self._nbytes)

    def __len__(self) -> int:
        return len(self._entries)

    def _drop(self, key: Hashable) -> None:
        entry = self._entries.pop(key)
        self._nbytes -= entry.nbytes
