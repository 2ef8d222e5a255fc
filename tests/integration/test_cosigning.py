"""Witnessing against real HTTP witnesses (the tlog-witness rules of anchor.witness_protocol served
by aiohttp, tests/witness_toy.py), a real PostgreSQL and a real anvil: the client's requests and
409 retry over the wire, the stored cosignatures in receipts and GET-able notes, the quorum gate
of the anchoring job and the witness metrics. ``cityanchor witness serve`` itself is driven under
``up`` in test_up_witnesses.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web
from witness_toy import ToyWitness

from anchor.anchoring.job import AnchorJob
from anchor.api.metrics import MetricsState, collect, render
from anchor.cosignature import generate_cosigner_key, verified_cosignatures
from anchor.cosigning.client import Witness, WitnessClient, aiohttp_post
from anchor.cosigning.job import CosigningJob
from anchor.local import AnvilNode
from anchor.store import Store, StoreError
from anchor.verify import verify_receipt
from integration.test_anchoring import World, _backend, run, world  # noqa: F401


@asynccontextmanager
async def _served(toy: ToyWitness) -> AsyncIterator[tuple[str, web.AppRunner]]:
    runner = web.AppRunner(toy.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", runner
    finally:
        await runner.cleanup()


def _job(
    store: Store, session: aiohttp.ClientSession, witnesses: list[Witness], **kw: object
) -> CosigningJob:
    client = WitnessClient(store=store, post=aiohttp_post(session, timeout_s=2.0))
    return CosigningJob(store=store, client=client, witnesses=witnesses, **kw)  # type: ignore[arg-type]


def test_witnesses_cosign_over_http_and_receipts_carry_the_lines(
    world: World,  # noqa: F811 (the fixture of test_anchoring)
    anvil: AnvilNode,
    anchor_registry: str,
) -> None:
    toys = [ToyWitness(f"w{i}.witness.example", [world.operator.verifier]) for i in (1, 2)]
    keys = [t.signer.verifier for t in toys]

    async def body() -> None:
        await world.seal(batches=2)
        store = await world.store()
        try:
            async with (
                aiohttp.ClientSession() as session,
                _served(toys[0]) as (url1, _),
                _served(toys[1]) as (url2, runner2),
            ):
                witnesses = [Witness(url1, keys[0]), Witness(url2, keys[1])]
                job = _job(store, session, witnesses, quorum=2)
                newest = await store.latest_checkpoint_record()
                assert newest is not None and newest.log_size == 2
                assert [r.outcome for r in await job.cosign(newest)] == ["cosigned"] * 2
                note = await store.cosigned_note()
                assert note is not None
                assert {c.witness.name for c in verified_cosignatures(note, keys)} == {
                    "w1.witness.example",
                    "w2.witness.example",
                }
                # Our record of witness 1 is lost: its 409 names size 2, the retry succeeds.
                await store.note_witness_outcome(
                    witness=witnesses[0].key, url=url1, outcome="conflict", size=0
                )
                await world.seal(batches=2)
                newest = await store.latest_checkpoint_record()
                assert newest is not None
                fresh = _job(store, session, witnesses, quorum=2)
                assert [r.outcome for r in await fresh.cosign(newest)] == ["cosigned"] * 2
                assert toys[0].requests[-2:] == [(0, 409), (2, 200)]
                assert toys[1].requests[-1] == (2, 200)  # old 2 with the consistency proof

                # A sealed receipt ends on the newest cosigned checkpoint, lines appended.
                receipt = await store.receipt(world.signers[0].device_id, 1)
                assert receipt.log.size == 4 and receipt.status == "sealed"
                report = verify_receipt(
                    receipt,
                    log_verifiers=[world.operator.verifier],
                    witness_verifiers=keys,
                    witness_quorum=2,
                )
                checks = {c.name: c.status for c in report.checks}
                assert checks["witnesses"] == checks["checkpoint_signature"] == "pass"

                # Witness 2 goes away; with the quorum option the job anchors the newest
                # checkpoint both cosigned (4), not the newer one (6).
                await runner2.cleanup()
                await world.seal(batches=2)
                gated = AnchorJob(
                    store=store,
                    backends=[_backend(anvil, anchor_registry)],
                    cosigning=_job(store, session, witnesses, quorum=2, anchor_quorum=True),
                )
                results = await gated.run_once(timeout_s=30, poll_s=0.1)
                assert [(r.outcome, r.log_size) for r in results] == [("up_to_date", 4)]
                assert (await store.last_anchor("local")).log_size == 4  # type: ignore[union-attr]
                receipt = await store.receipt(world.signers[0].device_id, 1)
                assert receipt.status == "anchored" and receipt.log.size == 4
                assert len(verified_cosignatures(receipt.checkpoint, keys)) == 2

                # Without the option anchoring goes on with witness 2 down.
                free = AnchorJob(
                    store=store,
                    backends=[_backend(anvil, anchor_registry)],
                    cosigning=_job(store, session, witnesses, quorum=2),
                )
                results = await free.run_once(timeout_s=30, poll_s=0.1)
                assert [(r.outcome, r.log_size) for r in results] == [("up_to_date", 6)]
                receipt = await store.receipt(world.signers[0].device_id, 1)
                assert receipt.log.size == 6
                assert [
                    c.witness.name for c in verified_cosignatures(receipt.checkpoint, keys)
                ] == ["w1.witness.example"]

                text = render(await collect(store, MetricsState()))
                label = keys[1].key_label
                assert (
                    f'cityanchor_witness_requests_total{{outcome="unavailable",witness="{label}"}}'
                    in text
                )
                assert (
                    f'cityanchor_witness_cosigned_log_size{{witness="{keys[0].key_label}"}} 6.0'
                    in text
                )
        finally:
            await store.close()

    run(body())


def test_quorum_option_waits_while_no_checkpoint_has_the_quorum(
    world: World,  # noqa: F811 (the fixture of test_anchoring)
    anvil: AnvilNode,
    anchor_registry: str,
) -> None:
    toy = ToyWitness("w1.witness.example", [world.operator.verifier])
    down = ToyWitness("w2.witness.example", [world.operator.verifier])

    async def body() -> None:
        await world.seal(batches=1)
        store = await world.store()
        try:
            async with aiohttp.ClientSession() as session, _served(toy) as (url, _):
                witnesses = [
                    Witness(url, toy.signer.verifier),
                    Witness("http://127.0.0.1:9", down.signer.verifier),  # discard port: refused
                ]
                job = AnchorJob(
                    store=store,
                    backends=[_backend(anvil, anchor_registry)],
                    cosigning=_job(store, session, witnesses, quorum=2, anchor_quorum=True),
                )
                results = await job.run_once(timeout_s=30, poll_s=0.1)
                assert [r.outcome for r in results] == ["waiting"]
                assert "witness_quorum_not_met" in results[0].detail
                assert await store.last_anchor("local") is None
                text = render(await collect(store, MetricsState()))
                assert "cityanchor_witness_quorum_waiting 1.0" in text
                assert "cityanchor_witness_quorum_not_met_total 1.0" in text
        finally:
            await store.close()

    run(body())


def test_store_keeps_one_line_per_size_and_witness(world: World) -> None:  # noqa: F811
    signer = generate_cosigner_key("w1.witness.example")
    key = signer.verifier.vkey()

    async def body() -> None:
        await world.seal(batches=2)
        store = await world.store()
        try:
            note = await store.checkpoint_at(2)
            text = note.split("\n\n", 1)[0] + "\n"
            first, later = signer.cosign(text, 1_764_000_000), signer.cosign(text, 1_764_000_009)
            for line, ts in ((first, 1_764_000_000), (later, 1_764_000_009)):
                await store.record_cosignature(
                    witness=key, url="http://w1", log_size=2, line=line, timestamp=ts
                )
            # The first line stays (receipts already cite it); the witness's size moved.
            assert [c.line for c in await store.cosignatures_at(2)] == [first]
            assert await store.witness_size(key) == 2
            assert await store.cosigned_note(2) == note + first
            assert await store.cosigned_note() == note + first
            assert await store.cosigned_note(1) == await store.checkpoint_at(1)
            with pytest.raises(StoreError) as exc:
                await store.cosigned_note(9)
            assert exc.value.reason == "not_found"
            with pytest.raises(StoreError) as exc:
                await store.record_cosignature(
                    witness=key, url="http://w1", log_size=9, line=first, timestamp=1
                )
            assert exc.value.reason == "not_found"
            # The table refuses what is not a signature line (the client verifies before).
            with pytest.raises(StoreError):
                await store.record_cosignature(
                    witness="other", url="http://w2", log_size=1, line="junk\n", timestamp=1
                )
            found = await store.newest_witnessed_checkpoint([key], 1)
            assert found is not None and found.log_size == 2 and found.note == note
            assert await store.newest_witnessed_checkpoint([key, "other"], 2) is None
            figures, quorum = await store.witness_figures()
            assert [(f.witness, f.cosigned_size, f.outcomes) for f in figures] == [
                (key, 2, {"cosigned": 2})
            ] and quorum == (False, 0)
        finally:
            await store.close()

    run(body())


def test_seal_mode_follows_new_checkpoints(world: World) -> None:  # noqa: F811
    toy = ToyWitness("w1.witness.example", [world.operator.verifier])
    big = ToyWitness("w2.witness.example", [world.operator.verifier])
    big.answer = (200, b"x" * 70_000)  # over the client's answer bound

    async def body() -> None:
        store = await world.store()
        stop = asyncio.Event()
        try:
            async with (
                aiohttp.ClientSession() as session,
                _served(toy) as (url, _),
                _served(big) as (url2, _),
            ):
                witnesses = [Witness(url, toy.signer.verifier), Witness(url2, big.signer.verifier)]
                job = _job(store, session, witnesses, poll_s=0.05)
                follower = asyncio.create_task(job.run(stop))
                for size in (1, 2, 3):
                    await world.seal(batches=1)
                    deadline = time.monotonic() + 10
                    while await store.witness_size(witnesses[0].key) < size:
                        assert time.monotonic() < deadline
                        await asyncio.sleep(0.05)
                stop.set()
                await follower
                assert [old for old, _ in toy.requests] == [0, 1, 2]
                figures, _ = await store.witness_figures()
                outcomes = {f.url: f.outcomes for f in figures}
                # Refused for its size, then backing off (1 s, 2 s, ...): a few requests only.
                assert set(outcomes[url2]) == {"unavailable"} and outcomes[url2]["unavailable"] <= 3
        finally:
            await store.close()

    run(body())
