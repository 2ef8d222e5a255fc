"""anchor.witness.state and the witness app in-process: atomic check-and-write, restarts, the
tlog-witness race, fork evidence, the admission hook and the monitoring copy.

The subprocess and raw-HTTP tests are in tests/integration/test_witness.py.
"""

from __future__ import annotations

import asyncio
import io
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from anchor import merkle
from anchor.checkpoint import Checkpoint, NoteSigner, open_checkpoint, sign_checkpoint
from anchor.cosignature import CosignerSigner, verified_cosignatures
from anchor.errors import Reason
from anchor.witness import WitnessConfig, WitnessState, WitnessStateError, build_witness_app
from anchor.witness.state import Lookup
from anchor.witness_protocol import (
    Accepted,
    AddCheckpointRequest,
    Refused,
    decide_add_checkpoint,
    format_add_checkpoint,
    origin_hash,
)

ORIGIN = "example.com/log"
LOG = NoteSigner.from_seed(ORIGIN, bytes(range(32)))
KEYS = {ORIGIN: [LOG.verifier]}
WITNESS = CosignerSigner.from_seed("witness.example/w1", bytes(range(64, 96)))
LEAVES = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(64)]


def note(size: int, root: bytes | None = None) -> str:
    return sign_checkpoint(
        Checkpoint(ORIGIN, size, merkle.root(LEAVES[:size]) if root is None else root), LOG
    )


def request(old: int, size: int, root: bytes | None = None) -> AddCheckpointRequest:
    proof = () if old == 0 or old >= size else tuple(merkle.consistency_proof(LEAVES[:size], old))
    return AddCheckpointRequest(old, proof, note(size, root))


def apply(state: WitnessState, req: AddCheckpointRequest, now: int = 1000):
    return state.apply(req, lambda lookup: decide_add_checkpoint(req, KEYS, lookup), now=now)


def test_accept_then_restart_keeps_the_state(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    state = WitnessState(path)
    assert isinstance(apply(state, request(0, 5)).outcome, Accepted)
    assert isinstance(apply(state, request(5, 9)).outcome, Accepted)
    state.close()
    again = WitnessState(path)
    row = again.latest(ORIGIN)
    assert row is not None and (row.size, row.root) == (9, merkle.root(LEAVES[:9]))
    assert row.note == note(9)
    out = apply(again, request(5, 12)).outcome
    assert isinstance(out, Refused) and (out.status, out.size) == (409, 9)
    out = apply(again, request(9, 5)).outcome  # smaller after larger
    assert isinstance(out, Refused) and out.status == 400
    assert again.by_origin_hash(origin_hash(ORIGIN)) == again.latest(ORIGIN)
    again.close()


def test_cosignature_timestamps_never_go_back_and_are_never_zero(tmp_path: Path) -> None:
    state = WitnessState(tmp_path / "w.db")
    assert apply(state, request(0, 5), now=0).timestamp == 1
    assert apply(state, request(5, 6), now=500).timestamp == 500
    assert apply(state, request(6, 7), now=400).timestamp == 500  # the clock went back
    assert apply(state, request(7, 8), now=600).timestamp == 600


def test_sizes_up_to_2_64_minus_1_are_stored(tmp_path: Path) -> None:
    # SQLite integers are signed 64-bit: sizes are kept as text.
    state = WitnessState(tmp_path / "w.db")
    big = 2**64 - 1
    req = AddCheckpointRequest(0, (), note(big, root=bytes(32)))
    assert isinstance(apply(state, req).outcome, Accepted)
    row = state.latest(ORIGIN)
    assert row is not None and row.size == big
    out = apply(state, AddCheckpointRequest(big, (), note(big, root=bytes(32)))).outcome
    assert isinstance(out, Accepted)


def test_inconsistent_signed_checkpoints_are_kept_as_evidence(tmp_path: Path) -> None:
    state = WitnessState(tmp_path / "w.db")
    apply(state, request(0, 8))
    forked = request(8, 8, root=bytes(32))
    out = apply(state, forked).outcome
    assert isinstance(out, Refused) and out.status == 422
    apply(state, forked)  # the same again: kept once
    kept = state.refused(ORIGIN)
    assert len(kept) == 1
    assert (kept[0].size, kept[0].root, kept[0].note) == (8, bytes(32), forked.note)
    assert kept[0].witnessed is not None and kept[0].witnessed.root == merkle.root(LEAVES[:8])
    # 409s and unsigned junk are not evidence; the state did not move.
    apply(state, request(3, 9))
    assert len(state.refused()) == 1
    row = state.latest(ORIGIN)
    assert row is not None and row.size == 8


def test_a_failing_decision_rolls_back(tmp_path: Path) -> None:
    state = WitnessState(tmp_path / "w.db")

    def boom(lookup: Lookup) -> Accepted | Refused:
        lookup(ORIGIN)
        raise RuntimeError("admission hook failed")

    with pytest.raises(RuntimeError):
        state.apply(request(0, 5), boom, now=1)
    assert state.latest(ORIGIN) is None
    assert isinstance(apply(state, request(0, 5)).outcome, Accepted)


def test_the_race_of_the_spec_cannot_roll_back(tmp_path: Path) -> None:
    """tlog-witness: A checked at N, B checked and stored at N+K, A stored at N. Here B cannot
    even read the state until A has committed, so it sees A's size and gets 409."""
    path = tmp_path / "w.db"
    a_state, b_state = WitnessState(path), WitnessState(path)  # two connections, like 2 processes
    apply(a_state, request(0, 4))
    a_inside, a_may_finish = threading.Event(), threading.Event()
    events: list[str] = []

    def slow_a(lookup: Lookup) -> Accepted | Refused:
        req = request(4, 20)
        out = decide_add_checkpoint(req, KEYS, lookup)
        events.append("A decided")
        a_inside.set()
        a_may_finish.wait(5)
        return out

    def b_decide(lookup: Lookup) -> Accepted | Refused:
        events.append("B reads")
        return decide_add_checkpoint(request(4, 10), KEYS, lookup)

    results: dict[str, object] = {}
    ta = threading.Thread(
        target=lambda: results.update(a=a_state.apply(request(4, 20), slow_a, now=2))
    )
    ta.start()
    assert a_inside.wait(5)
    tb = threading.Thread(
        target=lambda: results.update(b=b_state.apply(request(4, 10), b_decide, now=3))
    )
    tb.start()
    time.sleep(0.3)
    assert "B reads" not in events  # B waits for A's write lock
    a_may_finish.set()
    ta.join(5)
    tb.join(5)
    assert events == ["A decided", "B reads"]
    a_out = results["a"].outcome  # type: ignore[attr-defined]
    b_out = results["b"].outcome  # type: ignore[attr-defined]
    assert isinstance(a_out, Accepted)
    assert isinstance(b_out, Refused) and (b_out.status, b_out.size) == (409, 20)
    row = b_state.latest(ORIGIN)
    assert row is not None and row.size == 20


def test_record_cosigned_only_for_the_checkpoint_still_held(tmp_path: Path) -> None:
    state = WitnessState(tmp_path / "w.db")
    ts = apply(state, request(0, 5), now=10).timestamp
    apply(state, request(5, 9), now=11)
    root5 = merkle.root(LEAVES[:5])
    assert not state.record_cosigned(ORIGIN, size=5, root=root5, timestamp=ts, cosigned_note="x")
    row = state.latest(ORIGIN)
    assert row is not None and row.cosigned_note is None


def test_a_file_that_is_not_a_state_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "junk.db"
    bad.write_bytes(b"not a database at all" * 100)
    with pytest.raises(WitnessStateError) as exc:
        WitnessState(bad)
    assert exc.value.reason == Reason.WITNESS_STATE_FAILED
    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(WitnessStateError, match="newer"):
        WitnessState(newer)


def test_the_state_uses_wal_and_full_sync(tmp_path: Path) -> None:
    state = WitnessState(tmp_path / "w.db")
    conn = state._conn()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


# ------------------------------------------------------------------------------ the app, in-process
def _post(client: TestClient, body: bytes | io.BytesIO):  # type: ignore[no-untyped-def]
    return client.post("/add-checkpoint", data=body)


def test_app_admission_hook_and_monitoring_copy(tmp_path: Path) -> None:
    state = WitnessState(tmp_path / "w.db")
    vetoed: list[int] = []

    def admit(cp: Checkpoint) -> Refused | None:
        if cp.size == 9:
            vetoed.append(cp.size)
            return Refused(422, Reason.WITNESS_INCONSISTENT, "the monitor has not verified it")
        return None

    config = WitnessConfig(signer=WITNESS, log_keys=KEYS, clock=lambda: 1_700_000_000)

    async def body() -> None:
        app = build_witness_app(config, state, admit=admit)
        async with TestClient(TestServer(app)) as client:
            r = await _post(client, format_add_checkpoint(0, [], note(5)))
            assert r.status == 200 and r.headers["Content-Type"] == "text/plain; charset=utf-8"
            line = await r.text()
            r = await _post(
                client, format_add_checkpoint(5, merkle.consistency_proof(LEAVES[:9], 5), note(9))
            )
            assert r.status == 422 and (await r.text()).startswith("witness_inconsistent: ")
            r = await client.get(f"/{origin_hash(ORIGIN)}/checkpoint")
            assert r.status == 200
            served = await r.text()
            assert served == note(5) + line
            assert open_checkpoint(served, LOG.verifier).size == 5
            (cos,) = verified_cosignatures(served, [WITNESS.verifier])
            assert cos.timestamp == 1_700_000_000
            r = await client.get(f"/{origin_hash('other')}/checkpoint")
            assert r.status == 404
            r = await client.get("/NOT-A-HASH/checkpoint")
            assert r.status == 404
            r = await client.get("/metrics")
            text = await r.text()
            assert 'cityanchor_witness_checkpoint_size{origin="example.com/log"} 5.0' in text
            assert 'cityanchor_witness_requests_total{reason="",status="200"} 1.0' in text
            r = await client.get("/healthz")
            assert r.status == 200

    asyncio.run(body())
    assert vetoed == [9]
    row = state.latest(ORIGIN)
    assert row is not None and row.size == 5  # the veto changed nothing


def test_app_body_cap_is_413(tmp_path: Path) -> None:
    state = WitnessState(tmp_path / "w.db")
    config = WitnessConfig(signer=WITNESS, log_keys=KEYS)

    async def body() -> None:
        async with TestClient(TestServer(build_witness_app(config, state))) as client:
            r = await _post(client, io.BytesIO(b"old 0\n\n" + b"x" * (1 << 20)))
            assert r.status == 413

    asyncio.run(body())


def test_app_admission_hook_that_raises_is_500_and_changes_nothing(tmp_path: Path) -> None:
    state = WitnessState(tmp_path / "w.db")

    def admit(cp: Checkpoint) -> Refused | None:
        raise RuntimeError("monitor unavailable")

    config = WitnessConfig(signer=WITNESS, log_keys=KEYS)

    async def body() -> None:
        async with TestClient(TestServer(build_witness_app(config, state, admit=admit))) as client:
            r = await _post(client, format_add_checkpoint(0, [], note(5)))
            assert r.status == 500 and (await r.text()).startswith("internal: ")

    asyncio.run(body())
    assert state.latest(ORIGIN) is None
