"""`cityanchor monitor` against a real log: PostgreSQL, a `cityanchor api` process, anvil with the
AnchorRegistry. An honest log passes round after round (and across restarts, from the state
file); a log forked by direct database access, signed with the real operator key, stops the
monitor with evidence that the independent `cityanchor verify-consistency` confirms; a root the
operator's account anchors that is not its signed checkpoint's is caught with its transaction;
an `anchor()` call from another account is ignored."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from web3 import Web3
from witness_spec import SpecClient, cosignature_lines, note_text, spec_verify

from anchor import merkle
from anchor.anchoring.chains.evm import EvmBackend, EvmConfig, deploy_registry
from anchor.anchoring.job import AnchorJob
from anchor.checkpoint import NoteSigner, generate_note_key
from anchor.contracts import load_artifact
from anchor.cosignature import generate_cosigner_key, verified_cosignatures
from anchor.cosigning.client import Witness, WitnessClient, aiohttp_post
from anchor.cosigning.job import CosigningJob
from anchor.envelope import parse_envelope
from anchor.keys import PrivateKey
from anchor.local import AnvilNode, PostgresServer, free_port
from anchor.store import Candidate, DeviceSpec, Store
from anchor.witness_protocol import origin_hash
from devices.signer import DeviceSigner
from integration.stored import STORED_SQL, tamper
from integration.test_witness import WitnessProcess

ORIGIN = "monitor-it.cityanchor.example/log"
OPERATOR_ACCOUNT = 7
STRANGER_ACCOUNT = 8


@dataclass
class World:
    dsn: str
    operator: NoteSigner
    device: DeviceSigner
    anvil: AnvilNode
    contract: str
    workdir: Path
    base_url: str = ""
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def vkey_file(self) -> str:
        return str(self.workdir / "operator.vkey")

    def seal(self, batches: int, readings: int = 3) -> None:
        async def go() -> None:
            store = await Store.connect(self.dsn)
            try:
                for _ in range(batches):
                    candidates = [
                        Candidate(
                            parse_envelope(self.device.sign("iot.noise", {"x": float(i)})),
                            datetime.now(UTC),
                            "t",
                        )
                        for i in range(readings)
                    ]
                    await store.seal(
                        candidates, [], signer=self.operator, origin=ORIGIN, ingestor="it"
                    )
            finally:
                await store.close()

        asyncio.run(go())

    def anchor_latest(self) -> None:
        async def go() -> None:
            store = await Store.connect(self.dsn)
            try:
                backend = EvmBackend(
                    EvmConfig(
                        name="local",
                        rpc_url=self.anvil.rpc_url,
                        chain_id=self.anvil.chain_id,
                        contract=self.contract,
                        signer_key=self.anvil.accounts[OPERATOR_ACCOUNT].private_key,
                    )
                )
                await AnchorJob(store=store, backends=[backend]).run_once(timeout_s=60, poll_s=0.1)
            finally:
                await store.close()

        asyncio.run(go())

    def monitor(self, *extra: str, state: str = "state.json") -> tuple[int, str, str]:
        argv = [
            sys.executable, "-m", "anchor", "monitor", "--api", self.base_url,
            "--log-key", self.vkey_file, "--rpc", self.anvil.rpc_url,
            "--state", str(self.workdir / "mon" / state), "--sample-device", self.device.device_id,
            "--sample", "3", *extra,
        ]  # fmt: skip
        out = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=120)
        return out.returncode, out.stdout, out.stderr


def _wait_up(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("the API did not come up")


@pytest.fixture
def world(
    postgres: PostgresServer,
    anvil: AnvilNode,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[World]:
    name = f"mon_{os.getpid()}_{datetime.now(UTC).strftime('%H%M%S%f')}"
    dsn = postgres.create_database(name)
    operator = generate_note_key(ORIGIN)
    (tmp_path / "operator.skey").write_text(operator.skey() + "\n")
    (tmp_path / "operator.vkey").write_text(operator.verifier.vkey() + "\n")
    device = DeviceSigner(f"mon-dev-{request.node.name[-20:].strip('_')}", PrivateKey.generate())
    # A registry of its own: one operator account anchors one log (the session's registry
    # holds other tests' anchors from the same dev account).
    registry = deploy_registry(
        EvmConfig(
            name="deployer",
            rpc_url=anvil.rpc_url,
            chain_id=anvil.chain_id,
            signer_key=anvil.accounts[OPERATOR_ACCOUNT].private_key,
        )
    )
    w = World(dsn, operator, device, anvil, registry, tmp_path)

    async def setup() -> None:
        store = await Store.connect(dsn)
        try:
            await store.migrate()
            await store.register_devices(
                [DeviceSpec(device.device_id, device.key.public_key, district="d", kind="k")]
            )
        finally:
            await store.close()

    asyncio.run(setup())
    w.seal(2)
    w.anchor_latest()
    port = free_port()
    env = dict(
        os.environ,
        CITYANCHOR_DATABASE_URL=dsn,
        CITYANCHOR_OPERATOR_KEY_FILE=str(tmp_path / "operator.skey"),
        CITYANCHOR_LOG_ORIGIN=ORIGIN,
        CITYANCHOR_API_RATE_PER_S="0",
    )
    with (tmp_path / "api.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "anchor", "api", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=log,
        )
    w.procs.append(proc)
    w.base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_up(w.base_url)
        yield w
    finally:
        for p in w.procs:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _state(w: World) -> dict[str, Any]:
    return json.loads((w.workdir / "mon" / "state.json").read_text())


def test_an_honest_log_passes_and_the_state_carries_across_restarts(world: World) -> None:
    code, out, err = world.monitor("--once", "--json")
    assert code == 0, (out, err)
    first = json.loads(out.strip().splitlines()[-1])
    assert first["ok"] and first["size"] == 2 and first["round"] == 1
    assert first["anchors"][str(world.anvil.chain_id)]["checked"] >= 1
    assert first["receipts"]["checked"] + first["receipts"]["not_found"] == 3
    assert first["receipts"]["checked"] >= 1
    code, out, err = world.monitor("--once", "--json")
    assert code == 0, (out, err)
    second = json.loads(out.strip().splitlines()[-1])
    assert second["round"] == 2 and second["size"] == 2
    # The second round started from the persisted view and chain cursor: nothing re-read.
    assert second["anchors"][str(world.anvil.chain_id)]["checked"] == 0
    # A restart between checkpoints: the log grows and is anchored while the monitor is down.
    world.seal(3)
    world.anchor_latest()
    code, out, err = world.monitor("--once", "--json")
    assert code == 0, (out, err)
    third = json.loads(out.strip().splitlines()[-1])
    assert third["round"] == 3 and third["size"] == 5
    assert {2, 5} <= {s["size"] for s in _state(world)["view"]["seen"]}


def test_a_monitor_killed_between_rounds_resumes_from_its_state(world: World) -> None:
    state = world.workdir / "mon" / "state.json"
    metrics_port = free_port()
    argv = [
        sys.executable, "-m", "anchor", "monitor", "--api", world.base_url,
        "--log-key", world.vkey_file, "--state", str(state), "--interval", "0.3s", "--json",
        "--metrics-listen", f"127.0.0.1:{metrics_port}",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (state.exists() and _state(world)["rounds"] >= 1):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
    finally:
        proc.kill()  # no goodbye: the state must already be on disk, whole
        proc.wait()
    assert _state(world)["view"]["seen"][-1]["size"] == 2
    world.seal(2)
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while _state(world)["view"]["seen"][-1]["size"] != 4:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            metrics = resp.read().decode()
        assert "cityanchor_monitor_log_size 4.0" in metrics
        assert 'cityanchor_monitor_rounds_total{outcome="ok"}' in metrics
        assert "cityanchor_monitor_last_check_timestamp_seconds" in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0  # SIGTERM ends a following monitor cleanly
    assert [s["size"] for s in _state(world)["view"]["seen"]] == [2, 4]


class _Hook:
    def __init__(self, url: str) -> None:
        self.url = url
        self.bodies: list[dict[str, Any]] = []


@contextlib.contextmanager
def _webhook() -> Iterator[_Hook]:
    """A webhook receiver on a free loopback port that records the JSON bodies posted."""
    hook: _Hook

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            hook.bodies.append(json.loads(self.rfile.read(length)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hook = _Hook(f"http://127.0.0.1:{server.server_address[1]}/alarm")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def _cut_log_back(dsn: str, keep: int) -> None:
    """Direct database access: drop every batch from log index ``keep`` on, with its
    checkpoints and the log nodes that cover it, so the next seals rewrite history."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            for table in ("anchors", "anchor_txs", "witness_cosignatures"):
                await conn.execute(f"DELETE FROM {table} WHERE log_size > $1", keep)
            await conn.execute("DELETE FROM checkpoints WHERE log_size > $1", keep)
            await conn.execute("DELETE FROM batches WHERE log_index >= $1", keep)
            await conn.execute(
                "DELETE FROM log_nodes WHERE (idx + 1) * (1::bigint << level) > $1", keep
            )
    finally:
        await conn.close()


async def _checkpoint_row(dsn: str, size: int) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("SELECT root, note FROM checkpoints WHERE log_size = $1", size)
        return {"size": size, "root": row["root"], "note": row["note"]}
    finally:
        await conn.close()


async def _put_checkpoint_row(dsn: str, row: dict[str, Any]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "UPDATE checkpoints SET root = $2, note = $3 WHERE log_size = $1",
            row["size"],
            row["root"],
            row["note"],
        )
    finally:
        await conn.close()


def _verify_consistency(files: dict[str, str]) -> subprocess.CompletedProcess[str]:
    argv = [
        sys.executable, "-m", "anchor", "verify-consistency", files["old"], files["new"],
        "--log-key", files["log_key"], "--proof", files["proof"],
    ]  # fmt: skip
    return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60)


def test_a_forked_log_stops_the_monitor_with_evidence_verify_consistency_confirms(
    world: World,
) -> None:
    world.seal(2)  # size 4
    code, out, err = world.monitor("--once")
    assert code == 0, (out, err)
    asyncio.run(_cut_log_back(world.dsn, keep=2))
    world.seal(3)  # size 5: leaves 2.. differ, every note signed with the real operator key
    with _webhook() as posted:
        code, out, err = world.monitor("--once", "--json", "--webhook", posted.url)
    assert code == 1, (out, err)
    evidence = json.loads(out)
    assert [d["kind"] for d in posted.bodies] == ["log_fork"]
    assert posted.bodies[0]["old"] == evidence["old"]
    assert evidence["kind"] == "log_fork"
    old, new = evidence["old"], evidence["new"]
    # Two operator-signed checkpoints of size 4 with different roots.
    assert old["size"] == new["size"] == 4 and old["root"] != new["root"]
    check = _verify_consistency(evidence["files"])
    assert check.returncode == 1, (check.stdout, check.stderr)
    assert "FAIL consistency" in check.stdout
    # Each note on its own verifies with the log key (against itself: exit 0).
    for note in ("old", "new"):
        alone = dict(evidence["files"], old=evidence["files"][note], new=evidence["files"][note])
        assert _verify_consistency(alone).returncode == 0
    saved = Path(evidence["file"])
    assert saved.parent == world.workdir / "mon" and json.loads(saved.read_text())["kind"] == (
        "log_fork"
    )
    assert evidence["how_to_check"].startswith("cityanchor verify-consistency ")
    # The alarm stands: a restarted monitor says so again.
    assert world.monitor("--once")[0] == 1


def test_a_forged_larger_checkpoint_is_caught_by_its_failing_proof(world: World) -> None:
    code, out, err = world.monitor("--once")
    assert code == 0, (out, err)
    # Rewrite history under the monitor's size 2 and grow to 3, then put the old size-2 row
    # back: the log hides the rewrite, but the proof 2 -> 3 it serves (from the rewritten log
    # nodes) cannot join the old root to the new one.
    old_row = asyncio.run(_checkpoint_row(world.dsn, 2))
    asyncio.run(_cut_log_back(world.dsn, keep=1))
    world.seal(2)
    asyncio.run(_put_checkpoint_row(world.dsn, old_row))
    code, out, err = world.monitor("--once")
    assert code == 1, (out, err)
    evidence = json.loads(out)
    assert evidence["kind"] == "log_fork"
    assert (evidence["old"]["size"], evidence["new"]["size"]) == (2, 3)
    assert evidence["old"]["note"] == old_row["note"] and evidence["proof"]
    check = _verify_consistency(evidence["files"])
    assert check.returncode == 1 and "FAIL consistency" in check.stdout


def _anchor_from(w: World, account: int, root: bytes, size: int) -> str:
    w3 = Web3(Web3.HTTPProvider(w.anvil.rpc_url))
    registry = w3.eth.contract(
        address=Web3.to_checksum_address(w.contract), abi=load_artifact()["abi"]
    )
    sender = w.anvil.accounts[account].address
    tx = registry.functions.anchor(root, size).transact({"from": sender})
    receipt = w3.eth.wait_for_transaction_receipt(tx, timeout=30)
    assert receipt["status"] == 1
    return "0x" + bytes(tx).hex()


def test_an_anchor_the_operator_did_not_sign_is_caught_and_strangers_are_ignored(
    world: World,
) -> None:
    assert world.monitor("--once")[0] == 0
    _anchor_from(world, STRANGER_ACCOUNT, os.urandom(32), 2)  # anyone may call anchor()
    code, out, err = world.monitor("--once", "--json")
    assert code == 0, (out, err)
    assert json.loads(out)["anchors"][str(world.anvil.chain_id)]["ignored"] >= 1
    # The root of another history of size 2, as a forked operator would anchor it.
    bad_root = merkle.root([merkle.log_leaf_hash(3, os.urandom(32)) for _ in range(2)])
    tx_hash = _anchor_from(world, OPERATOR_ACCOUNT, bad_root, 2)
    code, out, err = world.monitor("--once", "--json")
    assert code == 1, (out, err)
    evidence = json.loads(out)
    assert evidence["kind"] == "anchor_inconsistent"
    assert evidence["anchor"]["tx_hash"] == tx_hash and evidence["anchor"]["root"] == bad_root.hex()
    assert evidence["anchor"]["tree_size"] == 2 and evidence["anchor"]["block_number"] > 0
    assert evidence["old"]["size"] == 2 and evidence["old"]["root"] != bad_root.hex()
    assert tx_hash in evidence["how_to_check"]


def test_the_monitor_as_a_witness_cosigns_only_what_it_verified(world: World) -> None:
    witness = generate_cosigner_key("monitor-witness.example/w")
    skey = world.workdir / "witness.skey"
    skey.write_text(witness.skey() + "\n")
    state = world.workdir / "mon" / "state.json"
    port = free_port()
    argv = [
        sys.executable, "-m", "anchor", "monitor", "--api", world.base_url,
        "--log-key", world.vkey_file, "--state", str(state), "--interval", "0.3s",
        "--cosign-key", str(skey), "--listen", f"127.0.0.1:{port}",
    ]  # fmt: skip
    with (world.workdir / "monitor.log").open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=out)
    client = None
    try:
        deadline = time.monotonic() + 30
        while not (state.exists() and _state(world)["rounds"] >= 1):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)

        def note_at(size: int) -> str:
            with urllib.request.urlopen(f"{world.base_url}/v1/log/checkpoint?size={size}") as r:
                return str(r.read().decode())

        client = SpecClient("127.0.0.1", port)
        note2 = note_at(2)
        answer = client.add_checkpoint(0, [], note2)
        (line,) = cosignature_lines(answer)
        assert spec_verify(line, note_text(note2), witness.name, witness.public_key) > 0
        # The log grows; the monitor cosigns the new size only once its round verified it.
        world.seal(2)
        note4 = note_at(4)
        with urllib.request.urlopen(f"{world.base_url}/v1/log/consistency?old=2&new=4") as r:
            proof = [bytes.fromhex(h) for h in json.loads(r.read())["proof"]]
        statuses = []
        while True:
            answer = client.add_checkpoint(2, proof, note4)
            statuses.append(answer.status)
            if answer.status == 200:
                break
            assert answer.status == 503 and b"witness_not_verified" in answer.body, answer
            assert time.monotonic() < deadline + 30
            time.sleep(0.2)
        assert 4 in {s["size"] for s in _state(world)["view"]["seen"]}
        (line,) = cosignature_lines(answer)
        spec_verify(line, note_text(note4), witness.name, witness.public_key)
    finally:
        if client is not None:
            client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, (world.workdir / "monitor.log").read_text()


def test_a_receipt_that_fails_verification_is_evidence(world: World) -> None:
    assert world.monitor("--once")[0] == 0

    async def corrupt() -> None:
        conn = await asyncpg.connect(world.dsn)
        try:  # one stored byte of every envelope of the sampled device
            for r in await conn.fetch(
                STORED_SQL + "WHERE d.device_id = $1", world.device.device_id
            ):
                await tamper(
                    conn,
                    r["device_id"],
                    r["seq"],
                    lambda e: e[:20] + bytes([e[20] ^ 1]) + e[21:],
                )
        finally:
            await conn.close()

    asyncio.run(corrupt())
    code, out, err = world.monitor("--once", "--json")
    assert code == 1, (out, err)
    evidence = json.loads(out)
    assert evidence["kind"] == "receipt_invalid"
    assert evidence["receipt"]["device_id"] == world.device.device_id
    check = subprocess.run(
        [sys.executable, "-m", "anchor", "verify", evidence["files"]["receipt"],
         "--log-key", evidence["files"]["log_key"]],
        check=False, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert check.returncode == 1, (check.stdout, check.stderr)


def test_a_forked_log_is_refused_by_a_real_witness_and_stops_the_monitor(world: World) -> None:
    """Issue 13's fork scenario end to end: the log side asks a real `cityanchor witness serve`
    to cosign, the operator forks the log by direct database access, the witness answers 422,
    keeps its honest view (its monitoring endpoint still serves the cosigned honest checkpoint),
    and the monitor stops with evidence that `verify-consistency` confirms."""

    key = generate_cosigner_key("fork-witness.example/w1")
    (world.workdir / "witness.skey").write_text(key.skey() + "\n")
    argv = [
        "witness", "serve", "--key", str(world.workdir / "witness.skey"),
        "--log-key", world.vkey_file, "--state", str(world.workdir / "witness.db"),
    ]  # fmt: skip
    process = WitnessProcess(argv, free_port(), world.workdir / "witness.log")
    process.start()
    url = f"http://127.0.0.1:{process.port}"

    async def cosign_newest() -> tuple[int, str]:
        store = await Store.connect(world.dsn)
        try:
            async with aiohttp.ClientSession() as session:
                client = WitnessClient(store=store, post=aiohttp_post(session, timeout_s=5.0))
                job = CosigningJob(
                    store=store, client=client, witnesses=[Witness(url, key.verifier)]
                )
                newest = await store.latest_checkpoint_record()
                assert newest is not None
                [result] = await job.cosign(newest)
                return newest.log_size, result.outcome
        finally:
            await store.close()

    def witnessed() -> str:
        with urllib.request.urlopen(f"{url}/{origin_hash(ORIGIN)}/checkpoint", timeout=5) as r:
            return str(r.read().decode())

    try:
        world.seal(2)  # size 4, honest
        assert asyncio.run(cosign_newest()) == (4, "cosigned")
        honest = witnessed()
        assert honest.splitlines()[1] == "4"
        assert world.monitor("--once")[0] == 0

        asyncio.run(_cut_log_back(world.dsn, keep=2))
        world.seal(3)  # size 5 on a rewritten history, signed with the real operator key
        assert asyncio.run(cosign_newest()) == (5, "inconsistent")
        assert "witness_inconsistent" in process.stderr()
        # The witness still vouches for the honest size 4, nothing of the fork.
        assert witnessed() == honest
        assert [c.witness for c in verified_cosignatures(honest, [key.verifier])] == [key.verifier]

        code, out, err = world.monitor("--once", "--json")
        assert code == 1, (out, err)
        evidence = json.loads(out)
        assert evidence["kind"] == "log_fork"
        check = _verify_consistency(evidence["files"])
        assert check.returncode == 1 and "FAIL consistency" in check.stdout
    finally:
        process.stop()
