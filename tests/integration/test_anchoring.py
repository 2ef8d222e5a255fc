"""The anchoring job against real anvil nodes and a real PostgreSQL.

Batches are sealed with ``Store.seal`` directly (the ingestor has its own tests); the job, the
EVM backend, the contract and the verifier are the real ones.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from anchor.anchoring.chains.evm import EvmBackend, EvmConfig, deploy_registry
from anchor.anchoring.job import AnchorJob, StepResult
from anchor.api.metrics import MetricsState, collect, render
from anchor.checkpoint import NoteSigner, generate_note_key
from anchor.cli.commands import main as cli_main
from anchor.envelope import parse_envelope
from anchor.keys import PrivateKey
from anchor.local import AnvilNode, PostgresServer
from anchor.receipt import dumps_receipt
from anchor.store import Candidate, DeviceSpec, Store
from devices.signer import DeviceSigner

T = TypeVar("T")
ORIGIN = "anchor-it.cityanchor.example/log"
_counter = itertools.count(1)


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


@dataclasses.dataclass
class World:
    dsn: str
    operator: NoteSigner
    signers: list[DeviceSigner]
    tmp: Path

    async def store(self) -> Store:
        return await Store.connect(self.dsn)

    async def seal(self, batches: int = 1, per_batch: int = 5) -> None:
        store = await self.store()
        try:
            for _ in range(batches):
                candidates = []
                for i in range(per_batch):
                    s = self.signers[i % len(self.signers)]
                    raw = s.sign("iot.noise", {"laeq_db": 50.0 + i})
                    candidates.append(Candidate(parse_envelope(raw), datetime.now(UTC), "t"))
                await store.seal(candidates, [], signer=self.operator, origin=ORIGIN, ingestor="it")
        finally:
            await store.close()


@pytest.fixture
def world(postgres: PostgresServer, tmp_path: Path) -> World:
    name = f"anchoring_{next(_counter)}_{os.getpid()}"
    dsn = postgres.create_database(name)
    signers = [DeviceSigner(f"dev-{i}", PrivateKey.generate()) for i in range(3)]

    async def setup() -> None:
        store = await Store.connect(dsn)
        try:
            await store.migrate()
            await store.register_devices(
                [
                    DeviceSpec(s.device_id, s.key.public_key, district="d", kind="iot.noise")
                    for s in signers
                ]
            )
        finally:
            await store.close()

    run(setup())
    return World(dsn, generate_note_key(ORIGIN), signers, tmp_path)


def _backend(
    node: AnvilNode,
    contract: str,
    *,
    name: str = "local",
    account: int = 1,
    confirmations: int = 1,
    **extra: Any,
) -> EvmBackend:
    return EvmBackend(
        EvmConfig(
            name=name,
            rpc_url=node.rpc_url,
            chain_id=node.chain_id,
            contract=contract,
            signer_key=node.accounts[account].private_key,
            confirmations=confirmations,
            **extra,
        )
    )


def _deploy(node: AnvilNode) -> str:
    return deploy_registry(
        EvmConfig(
            name="deployer",
            rpc_url=node.rpc_url,
            chain_id=node.chain_id,
            signer_key=node.accounts[0].private_key,
        )
    )


async def _job_step(world: World, backends: list[EvmBackend], **kw: Any) -> list[StepResult]:
    store = await world.store()
    try:
        return await AnchorJob(store=store, backends=backends).step(**kw)
    finally:
        await store.close()


async def _job_run_once(
    world: World, backends: list[EvmBackend], timeout_s: float = 30
) -> list[StepResult]:
    store = await world.store()
    try:
        return await AnchorJob(store=store, backends=backends).run_once(
            timeout_s=timeout_s, poll_s=0.1
        )
    finally:
        await store.close()


async def _query(world: World, fn: Callable[[Store], Awaitable[T]]) -> T:
    store = await world.store()
    try:
        return await fn(store)
    finally:
        await store.close()


def _anchored_events(node: AnvilNode, contract: str) -> list[dict[str, Any]]:
    logs = node.rpc("eth_getLogs", [{"address": contract, "fromBlock": "0x0", "toBlock": "latest"}])
    return list(logs)


def _write_receipts(world: World, out: Path) -> list[str]:
    async def body(store: Store) -> list[str]:
        paths = []
        for batch_id in range(1, (await store.counts())["batches"] + 1):
            for r in await store.receipts_for_batch(batch_id):
                p = out / f"{r.device_id}-{r.seq}.json"
                p.write_text(dumps_receipt(r))
                paths.append(str(p))
        return paths

    out.mkdir(parents=True, exist_ok=True)
    return run(_query(world, body))


def _key_flags(keys: list[str]) -> list[str]:
    """One --device-key per file: a key flag takes one value (issue 14)."""
    return [x for k in keys for x in ("--device-key", k)]


def _device_keys(world: World) -> list[str]:
    paths = []
    for s in world.signers:
        p = world.tmp / f"{s.device_id}.jwk"
        p.write_text(json.dumps(s.key.public_key.to_jwk()))
        paths.append(str(p))
    vkey = world.tmp / "operator.vkey"
    vkey.write_text(world.operator.verifier.vkey() + "\n")
    return paths


def test_anchor_then_verify_receipts_on_chain(
    world: World, anvil: AnvilNode, anchor_registry: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run(world.seal(batches=3))
    results = run(_job_run_once(world, [_backend(anvil, anchor_registry)]))
    assert [r.outcome for r in results] == ["up_to_date"]
    receipts = _write_receipts(world, world.tmp / "receipts")
    assert len(receipts) == 15
    doc = json.loads(Path(receipts[0]).read_text())
    assert doc["status"] == "anchored"
    (anchor,) = doc["anchors"]
    assert (
        anchor["chain_id"] == anvil.chain_id
        and anchor["contract"].lower() == anchor_registry.lower()
    )
    assert doc["log"]["size"] == 3
    keys = _device_keys(world)
    vkey = str(world.tmp / "operator.vkey")
    assert (
        cli_main(
            [
                "verify",
                *receipts,
                *_key_flags(keys),
                "--log-key",
                vkey,
                "--rpc",
                anvil.rpc_url,
                "--json",
            ]
        )
        == 0
    )
    reports = json.loads(capsys.readouterr().out)
    assert all(r["fully_verified"] for r in reports), reports[0]
    # A receipt claiming another block fails the on-chain check, naming it.
    doc["anchors"][0]["block_number"] += 1
    bad = world.tmp / "bad.json"
    bad.write_text(json.dumps(doc))
    assert cli_main(["verify", str(bad), "--rpc", anvil.rpc_url, "--json"]) == 1
    (report,) = json.loads(capsys.readouterr().out)
    assert {c["name"]: c["reason"] for c in report["checks"] if c["status"] == "fail"} == {
        "anchors": "anchor_block_mismatch"
    }
    # ...and an RPC of another chain cannot vouch for it.
    doc["anchors"][0]["block_number"] -= 1
    doc["anchors"][0]["chain_id"] = 999
    bad.write_text(json.dumps(doc))
    assert cli_main(["verify", str(bad), "--rpc", anvil.rpc_url, "--json"]) == 1
    (report,) = json.loads(capsys.readouterr().out)
    assert "chain_mismatch" in {c["reason"] for c in report["checks"]}


def test_one_transaction_per_period_whatever_the_volume(
    world: World, anvil_factory: Callable[..., AnvilNode]
) -> None:
    node = anvil_factory()
    contract = _deploy(node)
    backend = _backend(node, contract)
    run(world.seal(batches=5, per_batch=40))
    run(_job_run_once(world, [backend]))
    run(world.seal(batches=7, per_batch=3))
    run(_job_run_once(world, [backend]))
    events = _anchored_events(node, contract)
    assert len(events) == 2  # two periods, 12 batches, 221 readings

    def gas_beyond_calldata(tx_hash: str) -> int:
        # The calldata price depends on the root's zero bytes (4 gas each, 16 otherwise: EIP-2028),
        # which are random: compare what the anchor costs beyond its calldata.
        data = bytes.fromhex(node.rpc("eth_getTransactionByHash", [tx_hash])["input"][2:])
        used = int(node.rpc("eth_getTransactionReceipt", [tx_hash])["gasUsed"], 16)
        return used - sum(4 if b == 0 else 16 for b in data)

    gas = [gas_beyond_calldata(e["transactionHash"]) for e in events]
    assert gas[0] == gas[1]  # constant in the number of readings


def test_crash_after_broadcast_before_recording_anchors_nothing_twice(
    world: World, anvil_factory: Callable[..., AnvilNode], tmp_path: Path
) -> None:
    node = anvil_factory()
    contract = _deploy(node)
    node.set_automine(False)
    run(world.seal(batches=2))
    key_file = tmp_path / "chain.key"
    key_file.write_text(node.accounts[1].private_key)
    env = dict(
        os.environ,
        CITYANCHOR_DATABASE_URL=world.dsn,
        CITYANCHOR_CHAIN_RPC_URL=node.rpc_url,
        CITYANCHOR_CHAIN_ID=str(node.chain_id),
        CITYANCHOR_CHAIN_CONTRACT=contract,
        CITYANCHOR_CHAIN_KEY_FILE=str(key_file),
        CITYANCHOR_CHAIN_NAME="local",
    )
    with (tmp_path / "first-run.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "anchor", "anchor", "run", "--timeout", "60"],
            env=env,
            stdout=log,
            stderr=log,
        )
    try:
        # Wait until the transaction is persisted and broadcast (it sits in the mempool: no
        # automine), then kill -9: the job never learns the outcome.
        deadline = time.monotonic() + 30
        while not node.rpc("txpool_content")["pending"]:
            assert time.monotonic() < deadline, "no transaction was broadcast"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rows = run(_query(world, lambda s: s.open_anchor_tx("local")))
    # The signed transaction is persisted before it is broadcast ("prepared"), marked "sent"
    # after: a kill between the two leaves "prepared" (seen under load). Either way the next run
    # must find the same transaction on chain and not anchor twice, which is what is checked.
    assert rows is not None and rows.state in ("prepared", "sent")
    node.mine(1)
    node.set_automine(True)
    out = subprocess.run(
        [sys.executable, "-m", "anchor", "anchor", "run", "--timeout", "60"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(_anchored_events(node, contract)) == 1
    anchors = run(_query(world, lambda s: s.list_anchors()))
    assert [(a.backend, a.log_size) for a in anchors] == [("local", 2)]


def test_prepared_but_never_broadcast_is_sent_not_rebuilt(
    world: World, anvil_factory: Callable[..., AnvilNode]
) -> None:
    node = anvil_factory()
    backend = _backend(node, _deploy(node))
    run(world.seal())

    async def persist_only(store: Store) -> str:
        cp = await store.latest_checkpoint_record()
        assert cp is not None
        tx = backend.prepare(cp.root, cp.log_size)
        await store.save_anchor_tx(tx, cp.log_size)  # ...and the process died here
        return tx.tx_hash

    tx_hash = run(_query(world, persist_only))
    run(_job_run_once(world, [backend]))
    (anchor,) = run(_query(world, lambda s: s.list_anchors()))
    assert anchor.tx_hash == tx_hash


def test_anchor_found_on_chain_is_recovered_without_sending(
    world: World, anvil_factory: Callable[..., AnvilNode]
) -> None:
    node = anvil_factory()
    contract = _deploy(node)
    backend = _backend(node, contract)
    run(world.seal())
    cp = run(_query(world, lambda s: s.latest_checkpoint_record()))
    assert cp is not None
    tx = backend.prepare(cp.root, cp.log_size)  # sent, but the record of it was lost
    backend.broadcast(tx)
    results = run(_job_step(world, [backend]))
    assert [r.outcome for r in results] == ["recovered"]
    assert len(_anchored_events(node, contract)) == 1


def test_dropped_transaction_is_replaced(
    world: World, anvil_factory: Callable[..., AnvilNode]
) -> None:
    node = anvil_factory()
    contract = _deploy(node)
    backend = _backend(node, contract)
    run(world.seal())
    node.set_automine(False)
    (first,) = run(_job_step(world, [backend]))
    assert first.outcome == "sent"
    node.drop_transaction(first.tx_hash or "")
    (second,) = run(_job_step(world, [backend]))
    assert second.outcome == "replaced" and second.tx_hash != first.tx_hash
    node.mine(1)
    (third,) = run(_job_step(world, [backend]))
    assert third.outcome == "confirmed"
    (anchor,) = run(_query(world, lambda s: s.list_anchors()))
    assert anchor.tx_hash == second.tx_hash
    assert len(_anchored_events(node, contract)) == 1


def test_rpc_down_backs_off_and_catches_up(
    world: World, anvil_factory: Callable[..., AnvilNode], tmp_path: Path
) -> None:
    node = anvil_factory(state_path=tmp_path / "chain-state.json")
    contract = _deploy(node)
    backend = _backend(node, contract)
    run(world.seal())
    run(_job_run_once(world, [backend]))
    node.stop()
    run(world.seal(batches=2))  # sealing does not depend on the chain
    (down,) = run(_job_step(world, [backend]))
    assert down.outcome == "error" and "chain_unavailable" in down.detail
    node.start()  # same port, same state
    results = run(_job_run_once(world, [backend], timeout_s=60))
    assert [r.outcome for r in results] == ["up_to_date"]
    anchors = run(_query(world, lambda s: s.list_anchors()))
    assert [a.log_size for a in anchors] == [1, 3]


def test_dual_anchoring_survives_one_backend_down(
    world: World, anvil_factory: Callable[..., AnvilNode], tmp_path: Path
) -> None:
    a = anvil_factory(chain_id=7001)
    b = anvil_factory(chain_id=7002, state_path=tmp_path / "b-state.json")
    ba, bb = _backend(a, _deploy(a), name="bsn-a"), _backend(b, _deploy(b), name="bsn-b")
    run(world.seal())
    run(_job_run_once(world, [ba, bb]))
    b.stop()
    run(world.seal())
    results = {r.backend: r for r in run(_job_run_once(world, [ba, bb], timeout_s=5))}
    assert results["bsn-a"].outcome == "up_to_date"
    assert results["bsn-b"].outcome == "error"
    b.start()
    results = {r.backend: r for r in run(_job_run_once(world, [ba, bb], timeout_s=60))}
    assert {k: r.outcome for k, r in results.items()} == {
        "bsn-a": "up_to_date",
        "bsn-b": "up_to_date",
    }
    receipts = _write_receipts(world, world.tmp / "dual")
    doc = json.loads(Path(receipts[-1]).read_text())
    assert sorted(x["chain_id"] for x in doc["anchors"]) == [7001, 7002]
    keys = _device_keys(world)
    assert (
        cli_main(
            [
                "verify",
                *receipts,
                *_key_flags(keys),
                "--rpc",
                a.rpc_url,
                "--rpc",
                b.rpc_url,
                "-q",
            ]
        )
        == 0
    )


def test_two_jobs_only_one_sends(world: World, anvil_factory: Callable[..., AnvilNode]) -> None:
    node = anvil_factory()
    contract = _deploy(node)

    async def body() -> None:
        stores = [await world.store(), await world.store()]
        jobs = [
            AnchorJob(store=s, backends=[_backend(node, contract, account=1 + i)])
            for i, s in enumerate(stores)
        ]
        stop = asyncio.Event()
        tasks = [asyncio.create_task(j.loop(period_s=0.3, stop=stop, poll_s=0.1)) for j in jobs]
        try:
            for _ in range(4):
                await world.seal()
                await asyncio.sleep(0.8)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            for s in stores:
                await s.close()

    run(body())
    senders = {
        node.rpc("eth_getTransactionByHash", [e["transactionHash"]])["from"].lower()
        for e in _anchored_events(node, contract)
    }
    assert len(senders) == 1  # one leader; the other waited
    assert len(_anchored_events(node, contract)) >= 2


# ------------------------------------------------------------------------- reorgs (issue 11 #4)
# A confirmed anchor can vanish: a reorg deeper than the confirmations, or a node restarted from
# an older state. anvil's evm_snapshot / evm_revert is that reorg as a client sees it: the
# anchoring block and its transaction are gone (anvil does not put it back in the mempool).


async def _vanished(world: World) -> list[Any]:
    return await _query(world, lambda s: s.vanished_anchors())


async def _receipts_json(store: Store) -> list[dict[str, Any]]:
    docs = []
    for batch_id in range(1, (await store.counts())["batches"] + 1):
        docs += [json.loads(dumps_receipt(r)) for r in await store.receipts_for_batch(batch_id)]
    return docs


def _receipt_docs(world: World) -> list[dict[str, Any]]:
    return run(_query(world, _receipts_json))


def _verify_on_chain(world: World, rpc_urls: list[str], out: str) -> int:
    receipts = _write_receipts(world, world.tmp / out)
    keys = _device_keys(world)
    rpc = [x for url in rpc_urls for x in ("--rpc", url)]
    return cli_main(["verify", *receipts, *_key_flags(keys), *rpc, "-q"])


def test_reorg_removes_anchor_job_marks_it_and_anchors_again(
    world: World, anvil_factory: Callable[..., AnvilNode]
) -> None:
    node = anvil_factory()
    contract = _deploy(node)
    backend = _backend(node, contract)
    run(world.seal(batches=2))
    snapshot = node.snapshot()  # the chain before the anchor
    interval = 1.0
    seen: dict[str, Any] = {}

    async def wait_for(what: str, probe: Callable[[], Awaitable[Any]], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while not (value := await probe()):
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)
        return value

    async def body() -> None:
        store = await world.store()
        job = AnchorJob(store=store, backends=[backend], recheck_interval_s=interval)
        stop = asyncio.Event()
        # A period far longer than the test: re-anchoring must not wait for it.
        task = asyncio.create_task(job.loop(period_s=3600, stop=stop, poll_s=0.1))
        try:
            (first,) = await wait_for("the first anchor", store.list_anchors, 30)
            assert first.block_hash is not None and len(first.block_hash) == 32
            seen["first"] = first
            seen["before"] = await _receipts_json(store)
            # The reorg: the anchoring block is gone; the new fork grows past its height. Hold
            # the re-anchor in the mempool, so the gap before it is confirmed can be looked at.
            node.revert(snapshot)
            node.set_automine(False)
            node.mine(3)
            assert node.block_number() >= first.block_number
            t0 = time.monotonic()
            (gone,) = await wait_for("the vanished mark", store.vanished_anchors, 30)
            seen["detected_s"] = time.monotonic() - t0
            seen["gone"] = gone
            await wait_for("the new transaction", _mempool_has_tx(node), 30)
            seen["gap"] = await _receipts_json(store)
            seen["gap_listed"] = await store.anchors_page()
            node.mine(1)
            (again,) = await wait_for("the new anchor", store.list_anchors, 30)
            seen["again"] = again
            seen["vanished_total"] = dict(job.vanished_total)
            seen["metrics"] = render(await collect(store, MetricsState(), backends=["local"]))
        finally:
            stop.set()
            await task
            await store.close()

    run(body())
    first, gone, again = seen["first"], seen["gone"], seen["again"]
    assert all(d["status"] == "anchored" for d in seen["before"])
    # Detected within the re-check interval (plus one poll and the chain calls).
    assert seen["detected_s"] < interval + 3.0, seen["detected_s"]
    assert (gone.reason, gone.anchor.tx_hash, gone.anchor.log_size) == (
        "anchor_vanished",
        first.tx_hash,
        2,
    )
    assert "anchoredAt" in gone.detail and "is 0" in gone.detail
    # During the gap nothing cites the vanished anchor: receipts are "sealed", the list is empty.
    assert {(d["status"], len(d["anchors"])) for d in seen["gap"]} == {("sealed", 0)}
    assert seen["gap_listed"] == ([], None)
    # Then a new transaction anchors the same checkpoint, and receipts cite it.
    assert again.log_size == 2 and again.root == first.root and again.tx_hash != first.tx_hash
    assert seen["vanished_total"] == {"local": 1}
    assert (
        'cityanchor_anchors_vanished_total{backend="local",reason="anchor_vanished"} 1.0\n'
        in seen["metrics"]
    )
    (event,) = _anchored_events(node, contract)
    assert event["transactionHash"] == again.tx_hash
    docs = _receipt_docs(world)
    assert {d["status"] for d in docs} == {"anchored"}
    assert {d["anchors"][0]["tx_hash"] for d in docs} == {again.tx_hash}
    assert _verify_on_chain(world, [node.rpc_url], "after-reorg") == 0


def _mempool_has_tx(node: AnvilNode) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return bool(node.rpc("txpool_content")["pending"])

    return probe


def test_restarted_job_finds_vanished_anchor_at_start(
    world: World, anvil_factory: Callable[..., AnvilNode], tmp_path: Path
) -> None:
    node = anvil_factory()
    contract = _deploy(node)
    run(world.seal())
    snapshot = node.snapshot()
    key_file = tmp_path / "chain.key"
    key_file.write_text(node.accounts[1].private_key)
    env = dict(
        os.environ,
        CITYANCHOR_DATABASE_URL=world.dsn,
        CITYANCHOR_CHAIN_RPC_URL=node.rpc_url,
        CITYANCHOR_CHAIN_ID=str(node.chain_id),
        CITYANCHOR_CHAIN_CONTRACT=contract,
        CITYANCHOR_CHAIN_KEY_FILE=str(key_file),
        CITYANCHOR_CHAIN_NAME="local",
    )
    command = [sys.executable, "-m", "anchor", "anchor", "run", "--timeout", "60"]

    def anchor_run(*flags: str) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            [*command, *flags], env=env, capture_output=True, text=True, check=False
        )
        assert out.returncode == 0, out.stdout + out.stderr
        return out

    anchor_run()
    (first,) = run(_query(world, lambda s: s.list_anchors()))
    node.revert(snapshot)  # while no job runs
    node.mine(2)
    # A new process (a restart) re-checks at start, with no period to wait for.
    out = anchor_run("--reorg-window", "16")
    assert '"event": "anchor_vanished"' in out.stderr
    (printed,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert (printed["outcome"], printed["vanished"]) == ("up_to_date", [first.log_size])
    assert '"reason": "anchor_vanished"' in out.stderr
    (gone,) = run(_vanished(world))
    assert gone.anchor.tx_hash == first.tx_hash
    (again,) = run(_query(world, lambda s: s.list_anchors()))
    assert again.log_size == first.log_size and again.tx_hash != first.tx_hash
    assert len(_anchored_events(node, contract)) == 1
    assert _verify_on_chain(world, [node.rpc_url], "restart") == 0
    # And a further restart finds everything in order: nothing marked, nothing sent.
    anchor_run()
    assert len(run(_vanished(world))) == 1
    assert len(_anchored_events(node, contract)) == 1


@pytest.mark.parametrize("where", ["another_block", "same_height_new_block"])
def test_anchor_mined_again_elsewhere_is_recorded_again_without_a_new_transaction(
    world: World, anvil_factory: Callable[..., AnvilNode], where: str
) -> None:
    node = anvil_factory()
    contract = _deploy(node)
    backend = _backend(node, contract)
    run(world.seal())
    snapshot = node.snapshot()
    run(_job_run_once(world, [backend]))
    (first,) = run(_query(world, lambda s: s.list_anchors()))
    tx = run(_query(world, lambda s: s.open_anchor_tx("local")))
    assert tx is None
    raw = node.rpc("eth_getRawTransactionByHash", [first.tx_hash])
    node.revert(snapshot)
    if where == "another_block":
        node.mine(2)
    else:
        # Same height, but another block (a later timestamp): the receipt's block_time is wrong.
        node.rpc("evm_setNextBlockTimestamp", [int(first.block_time.timestamp()) + 100])
    # The same signed transaction comes back (as after a real reorg, from the mempool).
    node.rpc("eth_sendRawTransaction", [raw])
    (result,) = run(_job_step(world, [backend], allow_new=False))
    assert result.vanished == (1,) and result.outcome == "up_to_date", result
    (gone,) = run(_vanished(world))
    assert gone.reason == "anchor_vanished"
    (again,) = run(_query(world, lambda s: s.list_anchors()))
    assert again.tx_hash == first.tx_hash and again.block_hash != first.block_hash
    if where == "another_block":
        assert again.block_number == first.block_number + 2
        assert "recorded in block" in gone.detail
    else:
        assert again.block_number == first.block_number
        assert again.block_time != first.block_time
        assert "reorganised" in gone.detail
    assert len(_anchored_events(node, contract)) == 1  # no second transaction
    assert _verify_on_chain(world, [node.rpc_url], f"again-{where}") == 0


def test_dual_anchoring_only_the_reorganised_chain_anchors_again(
    world: World, anvil_factory: Callable[..., AnvilNode]
) -> None:
    a, b = anvil_factory(chain_id=7101), anvil_factory(chain_id=7102)
    ca, cb = _deploy(a), _deploy(b)
    ba, bb = _backend(a, ca, name="bsn-a"), _backend(b, cb, name="bsn-b")
    run(world.seal())
    snapshot = a.snapshot()
    run(_job_run_once(world, [ba, bb]))
    before = {x.backend: x for x in run(_query(world, lambda s: s.list_anchors()))}
    a.revert(snapshot)
    a.mine(2)
    results = {r.backend: r for r in run(_job_step(world, [ba, bb], allow_new=False))}
    assert (results["bsn-a"].vanished, results["bsn-a"].outcome) == ((1,), "sent")
    assert (results["bsn-b"].vanished, results["bsn-b"].outcome) == ((), "up_to_date")
    # Until chain A's new anchor is recorded, receipts cite chain B's only.
    docs = _receipt_docs(world)
    assert {tuple(x["chain_id"] for x in d["anchors"]) for d in docs} == {(7102,)}
    run(_job_run_once(world, [ba, bb]))
    after = {x.backend: x for x in run(_query(world, lambda s: s.list_anchors()))}
    assert after["bsn-b"] == before["bsn-b"]  # untouched: one transaction on chain B
    assert after["bsn-a"].tx_hash != before["bsn-a"].tx_hash
    assert len(_anchored_events(b, cb)) == 1 and len(_anchored_events(a, ca)) == 1
    assert [g.anchor.backend for g in run(_vanished(world))] == ["bsn-a"]
    assert _verify_on_chain(world, [a.rpc_url, b.rpc_url], "dual-reorg") == 0


def test_unreachable_chain_is_not_a_vanished_anchor(
    world: World, anvil_factory: Callable[..., AnvilNode], tmp_path: Path
) -> None:
    node = anvil_factory(state_path=tmp_path / "chain-state.json")
    backend = _backend(node, _deploy(node))
    run(world.seal())
    run(_job_run_once(world, [backend]))
    node.stop()
    (down,) = run(_job_step(world, [backend]))  # a fresh job: its re-check is due at once
    assert down.outcome == "error" and "chain_unavailable" in down.detail
    assert run(_vanished(world)) == []
    assert len(run(_query(world, lambda s: s.list_anchors()))) == 1
    node.start()  # same state: the anchor is there
    (up,) = run(_job_step(world, [backend]))
    assert (up.outcome, up.vanished) == ("up_to_date", ())
    assert run(_vanished(world)) == []


def test_reorg_that_also_drops_an_open_transaction_resends_it_in_the_freed_slot(
    world: World, anvil_factory: Callable[..., AnvilNode]
) -> None:
    node = anvil_factory()
    contract = _deploy(node)
    backend = _backend(node, contract)
    run(world.seal())
    snapshot = node.snapshot()
    run(_job_run_once(world, [backend]))  # log size 1, nonce 0, confirmed
    run(world.seal())
    node.set_automine(False)
    (sent,) = run(_job_step(world, [backend]))  # log size 2, nonce 1, in the mempool
    assert sent.outcome == "sent"
    node.revert(snapshot)  # takes both: the mined anchor and the pending transaction
    node.set_automine(False)
    node.mine(2)
    (step,) = run(_job_step(world, [backend]))
    # Nonce 1 can never be mined with nonce 0 free again: the replacement takes slot 0.
    assert (step.vanished, step.outcome) == ((1,), "replaced"), step
    replacement = node.rpc("eth_getTransactionByHash", [step.tx_hash])
    assert int(replacement["nonce"], 16) == 0
    node.mine(1)
    (done,) = run(_job_step(world, [backend]))
    assert done.outcome == "confirmed"
    (anchor,) = run(_query(world, lambda s: s.list_anchors()))
    assert (anchor.log_size, anchor.tx_hash) == (2, step.tx_hash)
    assert {d["status"] for d in _receipt_docs(world)} == {"anchored"}
    assert _verify_on_chain(world, [node.rpc_url], "dropped-too") == 0
