"""anchor.store.receipt_cache: the LRU bounds, versions and counters of the per-batch cache."""

from __future__ import annotations

import pytest

from anchor.receipt import AnchorRecord, LogProof
from anchor.store.receipt_cache import BatchShare, ReceiptCache


def share(version: tuple[object, ...] = (1, "", ""), *, note: int = 0) -> BatchShare:
    return BatchShare(
        version=version,
        size=1000,
        root=b"\x01" * 32,
        log=LogProof(index=0, size=1, root=b"\x02" * 32, path=(b"\x03" * 32,) * 10),
        checkpoint="origin\n1\nroot\n\n— sig\n" + "x" * note,
        anchors=(
            AnchorRecord(
                chain_id=1,
                contract="0x" + "11" * 20,
                tx_hash="0x" + "aa" * 32,
                block_number=5,
                block_time="2026-12-01T12:00:00Z",
            ),
        ),
    )


def test_hit_miss_and_stale_version() -> None:
    cache = ReceiptCache()
    assert cache.get(1, (1, "", "")) is None
    cache.put(1, share())
    assert cache.get(1, (1, "", "")) == share()
    # Another version (a new anchor, cosignature or checkpoint) drops the entry.
    assert cache.get(1, (1, "evm:77", "")) is None
    assert len(cache) == 0
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.stale, stats.entries) == (1, 1, 1, 0)
    assert stats.hit_rate == pytest.approx(1 / 3)


def test_bounded_by_entries_least_recently_used_first() -> None:
    cache = ReceiptCache(max_entries=2)
    cache.put("a", share())
    cache.put("b", share())
    assert cache.get("a", (1, "", "")) is not None  # "b" is now the oldest
    cache.put("c", share())
    assert cache.get("b", (1, "", "")) is None
    assert cache.get("a", (1, "", "")) is not None and cache.get("c", (1, "", "")) is not None


def test_bounded_by_bytes() -> None:
    one = share().nbytes
    cache = ReceiptCache(max_bytes=2 * one + one // 2)
    for key in range(5):
        cache.put(key, share())
    assert len(cache) == 2 and cache.stats().nbytes == 2 * one
    # An entry larger than the whole bound is not kept; replacing an entry keeps the count.
    cache.put("huge", share(note=10 * one))
    assert cache.get("huge", (1, "", "")) is None
    cache.put(4, share((2, "", "")))
    assert len(cache) == 2 and cache.stats().nbytes == 2 * one
    cache.clear()
    assert len(cache) == 0 and cache.stats().nbytes == 0


def test_refuses_empty_bounds() -> None:
    with pytest.raises(ValueError):
        ReceiptCache(max_entries=0)
