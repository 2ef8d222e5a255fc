"""The backup job and the restore drill (issue 14 item 20), run against private servers.

scripts/pg-backup.sh dumps a populated, anchored store of the private PostgreSQL;
scripts/restore-drill.py restores the dump into a fresh private PostgreSQL of its own, runs
``cityanchor audit`` on the restored copy (anchors checked on the private anvil chain) and
compares receipts with the source: they are identical. A dump of a tampered store fails the
drill at the audit, and a file that is no dump fails it at once.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from anchor.anchoring.chains.evm import EvmBackend, EvmConfig
from anchor.anchoring.job import AnchorJob
from anchor.checkpoint import NoteSigner, generate_note_key
from anchor.envelope import parse_envelope
from anchor.keys import PrivateKey
from anchor.local import AnvilNode, PostgresServer
from anchor.store import Candidate, DeviceSpec, Store
from devices.signer import DeviceSigner
from integration.stored import STORED_SQL, flip_middle_byte
from integration.stored import tamper as tamper_envelope

ROOT = Path(__file__).resolve().parents[2]
BACKUP = ROOT / "scripts" / "pg-backup.sh"
DRILL = ROOT / "scripts" / "restore-drill.py"
ORIGIN = "backup-it.cityanchor.example/log"


def _populate(dsn: str, operator: NoteSigner, backend: EvmBackend) -> None:
    signer = DeviceSigner("backup-dev-1", PrivateKey.generate())

    async def run() -> None:
        store = await Store.connect(dsn)
        try:
            await store.migrate()
            await store.register_devices(
                [DeviceSpec(signer.device_id, signer.key.public_key, district="d", kind="k")]
            )
            for batch in range(3):
                candidates = [
                    Candidate(
                        parse_envelope(signer.sign("iot.noise", {"x": float(batch * 10 + i)})),
                        datetime.now(UTC),
                        "t",
                    )
                    for i in range(5)
                ]
                await store.seal(candidates, [], signer=operator, origin=ORIGIN, ingestor="it")
            await AnchorJob(store=store, backends=[backend]).run_once(timeout_s=30, poll_s=0.1)
        finally:
            await store.close()

    asyncio.run(run())


def _backup(postgres: PostgresServer, database: str, out: Path, keep: int) -> str:
    env = {
        "PATH": os.environ["PATH"],
        "PGHOST": "127.0.0.1",
        "PGPORT": str(postgres.port),
        "PGUSER": postgres.role,
        "PGDATABASE": database,
        "PGPASSWORD_FILE": str(postgres.password_path),
        "BACKUP_KEEP": str(keep),
    }
    result = subprocess.run(
        ["sh", str(BACKUP), str(out)], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _drill(dump: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DRILL), str(dump), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture
def world(
    postgres: PostgresServer, anvil: AnvilNode, anchor_registry: str, tmp_path: Path
) -> tuple[str, str, dict[str, str], Path]:
    """A populated, anchored database; the drill's environment (the chain, nothing else)."""
    database = f"backup_{os.getpid()}_{datetime.now(UTC).strftime('%H%M%S%f')}"
    dsn = postgres.create_database(database)
    operator = generate_note_key(ORIGIN)
    backend = EvmBackend(
        EvmConfig(
            name="local",
            rpc_url=anvil.rpc_url,
            chain_id=anvil.chain_id,
            contract=anchor_registry,
            signer_key=anvil.accounts[4].private_key,
        )
    )
    _populate(dsn, operator, backend)
    vkey = tmp_path / "operator.vkey"
    vkey.write_text(operator.verifier.vkey() + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYANCHOR_")}
    env.update(
        CITYANCHOR_CHAIN_NAME="local",
        CITYANCHOR_CHAIN_RPC_URL=anvil.rpc_url,
        CITYANCHOR_CHAIN_ID=str(anvil.chain_id),
        CITYANCHOR_CHAIN_CONTRACT=anchor_registry,
    )
    return database, dsn, env, vkey


def test_backup_then_restore_drill_passes_with_identical_receipts(
    postgres: PostgresServer, world: tuple[str, str, dict[str, str], Path], tmp_path: Path
) -> None:
    database, dsn, env, vkey = world
    out = tmp_path / "backups"
    out.mkdir()
    old = out / "cityanchor-20200101T000000Z.dump"  # an older dump, beyond BACKUP_KEEP=1
    old.write_bytes(b"old")
    printed = _backup(postgres, database, out, keep=1)
    (dump,) = sorted(out.glob("cityanchor-*.dump"))
    assert dump != old and f"wrote {dump}" in printed
    assert not list(out.glob(".*partial")), "a partial dump left behind"
    assert oct(dump.stat().st_mode & 0o777) == "0o600"
    # The compose service's healthcheck: the newest dump is young enough.
    check = subprocess.run(
        ["sh", str(BACKUP), "--check", "3600", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0 and f"newest dump {dump.name}" in check.stdout

    drill = _drill(dump, env, "--source-dsn", dsn, "--", "--log-key", str(vkey))
    assert drill.returncode == 0, drill.stdout + drill.stderr
    lines = drill.stdout.splitlines()
    assert "drill: 3/4 cityanchor audit passes on the restored copy" in lines
    # 3 batches of 5 readings, one receipt per reading, all identical to the source's.
    assert "drill: 4/4 receipts: 15 identical, 0 newer on the source" in drill.stdout
    assert any("1 anchors checked on chain" in ln and ln.endswith("-> OK") for ln in lines)
    assert lines[-1] == "drill: OK"


def test_restore_drill_fails_on_a_dump_of_a_tampered_store(
    postgres: PostgresServer, world: tuple[str, str, dict[str, str], Path], tmp_path: Path
) -> None:
    database, dsn, env, vkey = world

    async def tamper() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            row = await conn.fetchrow(STORED_SQL + "ORDER BY s.batch_id LIMIT 1")
            await tamper_envelope(conn, row["device_id"], row["seq"], flip_middle_byte)
        finally:
            await conn.close()

    asyncio.run(tamper())
    out = tmp_path / "backups"
    _backup(postgres, database, out, keep=14)
    (dump,) = out.glob("cityanchor-*.dump")
    drill = _drill(dump, env, "--", "--log-key", str(vkey), "--no-chain")
    assert drill.returncode == 1, drill.stdout + drill.stderr
    assert "DIVERGENCE reading" in drill.stdout
    assert "drill: FAIL cityanchor audit exited 1 on the restored copy" in drill.stdout


def test_restore_drill_refuses_a_file_that_is_no_dump(tmp_path: Path) -> None:
    bogus = tmp_path / "cityanchor-20200101T000000Z.dump"
    bogus.write_bytes(b"PGDMP but truncated")
    drill = _drill(bogus, dict(os.environ))
    assert drill.returncode == 1
    assert drill.stdout.startswith(f"drill: FAIL {bogus} is not a readable dump")
