"""`cityanchor audit` recomputes everything from the store and names what was tampered with."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from anchor.anchoring.chains.evm import EvmBackend, EvmConfig
from anchor.anchoring.job import AnchorJob
from anchor.checkpoint import NoteSigner, generate_note_key
from anchor.cli.audit import run_audit
from anchor.envelope import parse_envelope
from anchor.keys import PrivateKey
from anchor.local import AnvilNode, PostgresServer
from anchor.store import Candidate, DeviceSpec, Store
from devices.signer import DeviceSigner
from integration.stored import STORED_SQL, flip_middle_byte, tamper

ORIGIN = "audit-it.cityanchor.example/log"


@dataclass
class Sealed:
    dsn: str
    operator: NoteSigner
    backend: EvmBackend


@pytest.fixture
def sealed(postgres: PostgresServer, anvil: AnvilNode, anchor_registry: str) -> Sealed:
    name = f"audit_{os.getpid()}_{datetime.now(UTC).strftime('%H%M%S%f')}"
    dsn = postgres.create_database(name)
    operator = generate_note_key(ORIGIN)
    signer = DeviceSigner("audit-dev-1", PrivateKey.generate())
    backend = EvmBackend(
        EvmConfig(
            name="local",
            rpc_url=anvil.rpc_url,
            chain_id=anvil.chain_id,
            contract=anchor_registry,
            signer_key=anvil.accounts[3].private_key,
        )
    )

    async def setup() -> None:
        store = await Store.connect(dsn)
        try:
            await store.migrate()
            await store.register_devices(
                [DeviceSpec(signer.device_id, signer.key.public_key, district="d", kind="k")]
            )
            for _ in range(4):
                candidates = [
                    Candidate(
                        parse_envelope(signer.sign("iot.noise", {"x": float(i)})),
                        datetime.now(UTC),
                        "t",
                    )
                    for i in range(6)
                ]
                await store.seal(candidates, [], signer=operator, origin=ORIGIN, ingestor="it")
            await AnchorJob(store=store, backends=[backend]).run_once(timeout_s=30, poll_s=0.1)
        finally:
            await store.close()

    asyncio.run(setup())
    return Sealed(dsn, operator, backend)


def test_audit_passes_then_names_the_corrupted_reading(sealed: Sealed) -> None:
    report = asyncio.run(
        run_audit(
            sealed.dsn,
            log_verifiers=[sealed.operator.verifier],
            backends=[sealed.backend],
            progress=None,
        )
    )
    assert report.ok, report.divergences
    assert (report.batches, report.readings, report.checkpoints, report.anchors_checked) == (
        4,
        24,
        4,
        1,
    )

    async def corrupt() -> tuple[str, int, int]:
        conn = await asyncpg.connect(sealed.dsn)
        try:
            row = await conn.fetchrow(STORED_SQL + "WHERE s.batch_id = 3 AND s.batch_index = 2")
            # One stored byte, in the batch's packed row.
            await tamper(conn, row["device_id"], row["seq"], flip_middle_byte)
            return row["device_id"], row["seq"], row["batch_id"]
        finally:
            await conn.close()

    device_id, seq, batch_id = asyncio.run(corrupt())
    report = asyncio.run(
        run_audit(
            sealed.dsn,
            log_verifiers=[sealed.operator.verifier],
            backends=[sealed.backend],
            progress=None,
        )
    )
    assert not report.ok
    named = {(d.kind, d.what.split(" (")[0]) for d in report.divergences}
    assert ("reading", f"{device_id} seq {seq}") in named
    assert ("batch", f"batch {batch_id}") in named


def test_audit_cli_exit_codes(sealed: Sealed, capsys: pytest.CaptureFixture[str]) -> None:
    from anchor.cli.commands import main

    assert main(["audit", "--database-url", sealed.dsn, "--no-chain"]) == 0
    assert "-> OK" in capsys.readouterr().out

    async def rewrite_root() -> None:
        conn = await asyncpg.connect(sealed.dsn)
        try:
            await conn.execute("UPDATE batches SET root = $1 WHERE log_index = 1", b"\x07" * 32)
        finally:
            await conn.close()

    asyncio.run(rewrite_root())
    assert main(["audit", "--database-url", sealed.dsn, "--no-chain"]) == 1
    out = capsys.readouterr().out
    assert "DIVERGENCE batch: batch 2" in out and "DIVERGENCE checkpoint" in out


def test_audit_reports_and_marks_an_anchor_a_reorg_removed(
    postgres: PostgresServer,
    anvil_factory: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 11 item 4: audit and job judge an anchor alike; --mark-vanished marks it."""
    from anchor.anchoring.chains.evm import deploy_registry
    from anchor.cli.commands import main

    node: AnvilNode = anvil_factory()
    contract = deploy_registry(
        EvmConfig(
            name="d",
            rpc_url=node.rpc_url,
            chain_id=node.chain_id,
            signer_key=node.accounts[0].private_key,
        )
    )
    backend = EvmBackend(
        EvmConfig(
            name="local",
            rpc_url=node.rpc_url,
            chain_id=node.chain_id,
            contract=contract,
            signer_key=node.accounts[1].private_key,
        )
    )
    dsn = postgres.create_database(f"audit_reorg_{os.getpid()}")
    operator = generate_note_key(ORIGIN)
    signer = DeviceSigner("audit-dev-2", PrivateKey.generate())

    async def seal_and_anchor() -> None:
        store = await Store.connect(dsn)
        try:
            await store.migrate()
            await store.register_devices(
                [DeviceSpec(signer.device_id, signer.key.public_key, district="d", kind="k")]
            )
            raw = signer.sign("iot.noise", {"x": 1.0})
            candidates = [Candidate(parse_envelope(raw), datetime.now(UTC), "t")]
            await store.seal(candidates, [], signer=operator, origin=ORIGIN, ingestor="it")
            await AnchorJob(store=store, backends=[backend]).run_once(timeout_s=30, poll_s=0.1)
        finally:
            await store.close()

    async def receipt_status() -> str:
        store = await Store.connect(dsn)
        try:
            return (await store.receipt(signer.device_id, 1)).status
        finally:
            await store.close()

    snapshot = node.snapshot()
    asyncio.run(seal_and_anchor())
    assert asyncio.run(receipt_status()) == "anchored"
    node.revert(snapshot)
    node.mine(3)
    monkeypatch.setenv("CITYANCHOR_CHAIN_NAME", "local")
    monkeypatch.setenv("CITYANCHOR_CHAIN_RPC_URL", node.rpc_url)
    monkeypatch.setenv("CITYANCHOR_CHAIN_ID", str(node.chain_id))
    monkeypatch.setenv("CITYANCHOR_CHAIN_CONTRACT", contract)
    audit = ["audit", "--database-url", dsn, "--operator-key", "/nonexistent"]
    assert main(audit) == 1
    out = capsys.readouterr().out
    assert "DIVERGENCE anchor: anchor of log size 1 on local" in out
    assert "[anchor_vanished] anchoredAt(" in out
    assert asyncio.run(receipt_status()) == "anchored"  # reported only
    assert main([*audit, "--mark-vanished"]) == 1  # what it found is still a divergence
    assert "marked 1 anchor(s) anchor_vanished" in capsys.readouterr().out
    assert asyncio.run(receipt_status()) == "sealed"  # nothing cites it any more
    assert main(audit) == 0
    assert "1 anchor(s) marked vanished earlier" in capsys.readouterr().out
    # The anchoring job anchors the checkpoint again; the audit checks the new anchor.
    asyncio.run(seal_and_anchor_again(dsn, backend))
    assert asyncio.run(receipt_status()) == "anchored"
    assert main(audit) == 0
    assert "1 anchors checked on chain" in capsys.readouterr().out


async def seal_and_anchor_again(dsn: str, backend: EvmBackend) -> None:
    store = await Store.connect(dsn)
    try:
        (result,) = await AnchorJob(store=store, backends=[backend]).run_once(
            timeout_s=30, poll_s=0.1
        )
        assert result.outcome == "up_to_date", result
    finally:
        await store.close()
