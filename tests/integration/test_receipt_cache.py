"""The per-batch receipt cache (anchor.store.receipt_cache) against a real PostgreSQL: every
change that alters what a receipt proves or cites (an erasure, a new anchor, an anchor that
vanished in a reorg, a new cosignature, a newer cosigned checkpoint) shows in the very next
receipt served from a filled cache, and a stored log node that does not check out never enters
the cache (issue 15, "Receipts")."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from anchor.anchoring.chains.base import AnchorConfirmation
from anchor.checkpoint import generate_note_key
from anchor.cosignature import generate_cosigner_key
from anchor.envelope import parse_envelope
from anchor.keys import PrivateKey
from anchor.receipt import Receipt
from anchor.sealing import Candidate
from anchor.store import Store, StoreError
from anchor.store.operator import erase_reading
from anchor.verify import verify_receipt
from devices.signer import DeviceSigner

ORIGIN = "cityanchor.test/log"
SIGNER = generate_note_key(ORIGIN)
WITNESS = generate_cosigner_key("w1.witness.example")
DEVICES = ("cache-000", "cache-001")


class World:
    """A store with two registered devices; ``seal`` stores one batch of ``n`` readings each."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.keys = {d: PrivateKey.generate() for d in DEVICES}
        self.signers = {d: DeviceSigner(d, k) for d, k in self.keys.items()}

    async def register(self) -> None:
        for device_id, key in self.keys.items():
            await self.store.register_device(
                device_id, key.public_key, district="nanshan", kind="iot.air_quality"
            )

    async def seal(self, n: int = 2) -> int:
        now = datetime.now(UTC)
        cands = []
        for _ in range(n):
            for d in DEVICES:
                env = parse_envelope(self.signers[d].sign("iot.air_quality", {"pm2_5": 12.5}))
                cands.append(Candidate(env, now, f"city/nanshan/{d}/readings"))
        result = await self.store.seal(cands, [], signer=SIGNER, origin=ORIGIN, ingestor="it")
        assert result.log_index is not None
        return result.log_index + 1

    def valid(self, receipt: Receipt, **kw: Any) -> None:
        report = verify_receipt(
            receipt,
            device_keys=[k.public_key for k in self.keys.values()],
            log_verifiers=[SIGNER.verifier],
            **kw,
        )
        assert report.valid, report.failures

    async def root_at(self, log_size: int) -> bytes:
        rec = await self.store.latest_checkpoint_record()
        assert rec is not None and rec.log_size == log_size
        return bytes(rec.root)


def with_world(dsn: str, body: Callable[[World], Awaitable[None]]) -> None:
    async def main() -> None:
        store = await Store.connect(dsn)
        try:
            await store.migrate()
            world = World(store)
            await world.register()
            await body(world)
        finally:
            await store.close()

    asyncio.run(main())


def _confirmation(tx: str, block: int) -> AnchorConfirmation:
    return AnchorConfirmation(
        chain_id=31337,
        contract="0x" + "11" * 20,
        tx_hash="0x" + tx * 32,
        block_number=block,
        block_time=datetime(2026, 12, 1, 12, 0, block % 60, tzinfo=UTC),
        confirmations=3,
        block_hash=bytes([block % 256]) * 32,
    )


async def _warm(world: World, seq: int = 1) -> Receipt:
    """A receipt served twice: the second comes from the filled cache (counted as a hit)."""
    first = await world.store.receipt(DEVICES[0], seq)
    hits = world.store.receipt_cache.stats().hits
    again = await world.store.receipt(DEVICES[0], seq)
    assert again == first and world.store.receipt_cache.stats().hits == hits + 1
    return first


def test_cached_receipts_equal_rebuilt_ones_and_verify(db_dsn: str) -> None:
    async def body(world: World) -> None:
        await world.seal(3)
        await world.seal(2)
        store = world.store
        for batch_id in (1, 2):
            for rec in await store.receipts_for_batch(batch_id):
                served = await store.receipt(rec.device_id, rec.seq)
                assert served == rec
                world.valid(served)
        stats = store.receipt_cache.stats()
        # One fill per batch, then hits: 10 receipts, 2 batches.
        assert (stats.entries, stats.hits + stats.misses + stats.stale) == (2, 10)
        assert stats.hits == 8 and stats.hit_rate == 0.8

    with_world(db_dsn, body)


def test_erasure_shows_in_the_next_receipt(db_dsn: str) -> None:
    async def body(world: World) -> None:
        await world.seal(2)
        store = world.store
        await _warm(world, 1)
        await _warm(world, 2)
        await erase_reading(store, DEVICES[0], 2, actor="dpo", legal_reason="GDPR art. 17")
        erased = await store.receipt(DEVICES[0], 2)
        assert erased.status == "erased" and erased.envelope == b""
        assert erased.extra["erasure"]["legal_reason"] == "GDPR art. 17"
        # Its neighbour in the batch is still served whole, from the cache.
        world.valid(await _warm(world, 1))

    with_world(db_dsn, body)


def test_new_anchor_then_reorg_then_new_anchor_show_in_the_next_receipt(db_dsn: str) -> None:
    async def body(world: World) -> None:
        size = await world.seal(2)
        store = world.store
        sealed = await _warm(world)
        assert sealed.status == "sealed" and sealed.anchors == ()
        root = await world.root_at(size)

        await store.record_anchor("evm", size, root, _confirmation("aa", 100))
        anchored = await store.receipt(DEVICES[0], 1)
        assert anchored.status == "anchored"
        assert [a.tx_hash for a in anchored.anchors] == ["0x" + "aa" * 32]
        world.valid(anchored)
        assert await _warm(world) == anchored

        # A reorg moves the anchor to vanished_anchors: the next receipt no longer cites it.
        (stored,) = await store.anchors_to_recheck("evm", min_block=0)
        assert await store.mark_anchor_vanished(stored, reason="anchor_vanished", detail="reorg")
        back = await store.receipt(DEVICES[0], 1)
        assert back.status == "sealed" and back.anchors == ()
        assert back == sealed
        await _warm(world)

        # Anchored again in another transaction, under the same (backend, log_size): the same
        # number of anchor rows as before the reorg, but the new one is cited.
        await store.record_anchor("evm", size, root, _confirmation("bb", 105))
        again = await store.receipt(DEVICES[0], 1)
        assert [a.tx_hash for a in again.anchors] == ["0x" + "bb" * 32]
        assert again.anchors[0].block_number == 105
        world.valid(again)

        # A second backend anchoring the same checkpoint is cited too.
        await _warm(world)
        await store.record_anchor("evm2", size, root, _confirmation("cc", 7))
        both = await store.receipt(DEVICES[0], 1)
        assert [a.tx_hash for a in both.anchors] == ["0x" + "bb" * 32, "0x" + "cc" * 32]

    with_world(db_dsn, body)


def test_new_cosignature_and_newer_checkpoints_show_in_the_next_receipt(db_dsn: str) -> None:
    async def body(world: World) -> None:
        store = world.store
        await world.seal(2)
        size = await world.seal(2)
        first = await _warm(world)
        assert first.log.size == size == 2

        # A witness cosigns the newest checkpoint: its line is appended at once.
        note = await store.checkpoint_at(size)
        line = WITNESS.cosign(note.split("\n\n", 1)[0] + "\n", 1_764_000_000)
        key = WITNESS.verifier.vkey()
        await store.record_cosignature(
            witness=key, url="http://w1", log_size=size, line=line, timestamp=1_764_000_000
        )
        cosigned = await store.receipt(DEVICES[0], 1)
        assert cosigned.checkpoint == note + line
        world.valid(cosigned, witness_verifiers=[WITNESS.verifier])
        await _warm(world)

        # A newer checkpoint that no witness cosigned: the receipt stays on the cosigned one.
        newer = await world.seal(1)
        assert (await store.receipt(DEVICES[0], 1)).log.size == size
        # Once the newer one is cosigned, receipts move to it.
        note3 = await store.checkpoint_at(newer)
        line3 = WITNESS.cosign(note3.split("\n\n", 1)[0] + "\n", 1_764_000_100)
        await store.record_cosignature(
            witness=key, url="http://w1", log_size=newer, line=line3, timestamp=1_764_000_100
        )
        moved = await store.receipt(DEVICES[0], 1)
        assert moved.log.size == newer and moved.checkpoint == note3 + line3
        world.valid(moved, witness_verifiers=[WITNESS.verifier])

    with_world(db_dsn, body)


def test_newer_checkpoint_moves_sealed_receipts(db_dsn: str) -> None:
    async def body(world: World) -> None:
        await world.seal(2)
        assert (await _warm(world)).log.size == 1
        await world.seal(1)
        moved = await world.store.receipt(DEVICES[0], 1)
        assert moved.log.size == 2
        world.valid(moved)

    with_world(db_dsn, body)


def test_corrupted_log_node_is_caught_when_the_cache_is_filled(db_dsn: str) -> None:
    async def body(world: World) -> None:
        await world.seal(2)
        await world.seal(2)
        store = world.store
        # The log leaf of batch 2 is on batch 1's log path at size 2; corrupt it.
        conn = await asyncpg.connect(store._dsn)
        try:
            await conn.execute(
                "UPDATE log_nodes SET hash = $1 WHERE level = 0 AND idx = 1", b"\x66" * 32
            )
        finally:
            await conn.close()
        with pytest.raises(StoreError) as exc:
            await store.receipt(DEVICES[0], 1)
        assert exc.value.reason == "log_inconsistent"
        assert len(store.receipt_cache) == 0

    with_world(db_dsn, body)


def test_corruption_after_a_fill_is_caught_by_the_refill(db_dsn: str) -> None:
    async def body(world: World) -> None:
        await world.seal(2)
        store = world.store
        world.valid(await _warm(world))
        await world.seal(2)
        conn = await asyncpg.connect(store._dsn)
        try:
            await conn.execute(
                "UPDATE log_nodes SET hash = $1 WHERE level = 0 AND idx = 1", b"\x66" * 32
            )
        finally:
            await conn.close()
        # The newer checkpoint outdates the entry; the refill reads the corrupted node.
        with pytest.raises(StoreError) as exc:
            await store.receipt(DEVICES[0], 1)
        assert exc.value.reason == "log_inconsistent"

    with_world(db_dsn, body)


def test_concurrent_receipts_share_statements_and_equal_single_ones(db_dsn: str) -> None:
    async def body(world: World) -> None:
        await world.seal(3)
        await world.seal(2)
        store = world.store
        await erase_reading(store, DEVICES[1], 2, actor="dpo", legal_reason="GDPR art. 17")
        expected = [r for b in (1, 2) for r in await store.receipts_for_batch(b)]
        asked = [(r.device_id, r.seq) for r in expected] + [(DEVICES[0], 999)]
        got = await asyncio.gather(*(store.receipt(d, s) for d, s in asked), return_exceptions=True)
        assert got[:-1] == expected
        missing = got[-1]
        assert isinstance(missing, StoreError) and missing.reason == "not_found"
        batcher = store.__dict__["_receipt_batcher"]
        # 11 lookups in fewer statements than lookups (at most 2 in flight at once).
        assert batcher.lookups == 11 and batcher.statements < 11
        for receipt in got[:-1]:
            assert isinstance(receipt, Receipt)
            if receipt.status != "erased":
                world.valid(receipt)

    with_world(db_dsn, body)
