"""sql/009_packed_readings.sql converts a database filled under 008 (a ``readings`` row and a
``reading_seqs`` row with its batch path per reading) to the packed layout, and the converted
database serves byte-identical receipts, batch receipts and completeness proofs to a database
that was filled with the same readings by this release's seal, and passes ``cityanchor audit``.

The 008 database is filled by :func:`legacy_seal`, the seal transaction of 008 as it wrote its
rows (batch, checkpoint, log nodes, readings, reading_seqs with batch_path), since this release's
seal writes only the new layout. Receipts are deterministic in what is stored (Ed25519 note
signatures included), so both databases must serve the same bytes.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from anchor import merkle
from anchor.checkpoint import Checkpoint, generate_note_key, sign_checkpoint
from anchor.cli.audit import run_audit
from anchor.completeness_document import completeness_to_dict
from anchor.envelope import FORMAT_COSE, FORMAT_JWS, parse_envelope
from anchor.keys import PrivateKey
from anchor.local import PostgresServer
from anchor.receipt import dumps_receipt
from anchor.store import SQL_DIR, Candidate, Store
from anchor.store import operator as operator_store
from anchor.verify import verify_receipt
from devices.signer import DeviceSigner

ORIGIN = "cityanchor.test/migration-009"
SIGNER = generate_note_key(ORIGIN)
ERASED = ("mig-001", 2)


def _candidates() -> tuple[list[list[Candidate]], dict[str, PrivateKey]]:
    """Three batches (sizes 7, 12, 1) from 4 devices, COSE and JWS mixed, some received in the
    previous month (so the 008 data spans two readings partitions)."""
    keys = {f"mig-{i:03d}": PrivateKey.generate() for i in range(4)}
    signers = {
        d: DeviceSigner(d, k, format=FORMAT_JWS if i % 2 else FORMAT_COSE)
        for i, (d, k) in enumerate(keys.items())
    }
    now = datetime.now(UTC)
    last_month = now.replace(day=1) - timedelta(days=3)
    order = [d for _ in range(6) for d in keys][:20]
    cands = []
    for n, d in enumerate(order):
        raw = signers[d].sign("iot.noise", {"db": 40 + n, "note": "x" * (n % 5)})
        env = parse_envelope(raw)
        when = last_month if n < 5 else now
        cands.append(Candidate(env, when, f"city/nanshan/{d}/readings"))
    return [cands[:7], cands[7:19], cands[19:]], keys


async def legacy_seal(conn: Any, accepted: Sequence[Candidate]) -> None:
    """The 008 seal's writes for one batch of fresh readings (anchor/store/seal.py of 008)."""
    leaves = [merkle.leaf_hash(c.envelope.raw) for c in accepted]
    levels = merkle.tree_levels(leaves)
    root = levels[-1][0]
    async with conn.transaction():
        batch_id = await conn.fetchval("SELECT nextval('batch_ids')")
        head = await conn.fetchrow(
            "SELECT log_size, frontier FROM checkpoints ORDER BY log_size DESC LIMIT 1"
        )
        size = head["log_size"] if head else 0
        frontier = [bytes(h) for h in head["frontier"]] if head else []
        new_frontier, nodes = merkle.compact_append_nodes(
            frontier, size, merkle.log_leaf_hash(len(accepted), root)
        )
        note = sign_checkpoint(
            Checkpoint(ORIGIN, size + 1, merkle.compact_root(new_frontier)), SIGNER
        )
        await conn.execute(
            "INSERT INTO batches (id, size, root, log_index, ingestor) "
            "VALUES ($1, $2, $3, $4, 'it')",
            batch_id,
            len(accepted),
            root,
            size,
        )
        await conn.execute(
            "INSERT INTO checkpoints (log_size, root, note, frontier) VALUES ($1, $2, $3, $4)",
            size + 1,
            merkle.compact_root(new_frontier),
            note,
            new_frontier,
        )
        await conn.copy_records_to_table(
            "log_nodes", records=nodes, columns=("level", "idx", "hash")
        )
        readings, seqs = [], []
        for i, (c, leaf) in enumerate(zip(accepted, leaves, strict=True)):
            env, r = c.envelope, c.envelope.reading
            readings.append(
                (r.device_id, r.seq, r.ts, c.received_at, env.format, r.kind, env.kid, env.raw,
                 leaf, batch_id, i)
            )  # fmt: skip
            path = b"".join(merkle.path_from_levels(levels, i))
            seqs.append((r.device_id, r.seq, leaf, batch_id, i, c.received_at, path))
        await conn.copy_records_to_table(
            "readings",
            records=readings,
            columns=(
                "device_id", "seq", "ts", "received_at", "format", "kind", "kid", "envelope",
                "leaf_hash", "batch_id", "batch_index",
            ),
        )  # fmt: skip
        await conn.copy_records_to_table(
            "reading_seqs",
            records=seqs,
            columns=(
                "device_id", "seq", "leaf_hash", "batch_id", "batch_index", "received_at",
                "batch_path",
            ),
        )  # fmt: skip


async def legacy_erase(conn: Any, device_id: str, seq: int) -> None:
    """008's erasure: the envelope NULL, and the tombstone."""
    async with conn.transaction():
        leaf = await conn.fetchval(
            "SELECT leaf_hash FROM reading_seqs WHERE device_id = $1 AND seq = $2", device_id, seq
        )
        await conn.execute(
            "UPDATE readings SET envelope = NULL WHERE device_id = $1 AND seq = $2", device_id, seq
        )
        await conn.execute(
            "INSERT INTO reading_erasures (device_id, seq, leaf_hash, actor, legal_reason, "
            "erased_at) VALUES ($1, $2, $3, 'eraser', 'GDPR art. 17', '2026-01-02T03:04:05Z')",
            device_id,
            seq,
            leaf,
        )


@pytest.fixture
def two_databases(postgres: PostgresServer) -> Iterator[tuple[str, str]]:
    names = [f"t_{uuid.uuid4().hex[:16]}" for _ in range(2)]
    dsns = tuple(postgres.create_database(n) for n in names)
    yield dsns[0], dsns[1]
    for name in names:
        postgres.psql(f"DROP DATABASE {name} WITH (FORCE)", database="postgres")


async def _everything(store: Store, devices: Sequence[str]) -> dict[str, Any]:
    """Every receipt, batch receipt list and completeness proof the store serves, as bytes."""
    out: dict[str, Any] = {}
    for d in devices:
        for seq in range(1, 7):
            try:
                out[f"{d}/{seq}"] = dumps_receipt(await store.receipt(d, seq))
            except Exception as exc:
                out[f"{d}/{seq}"] = repr(exc)
        proof = await store.completeness_proof(d, 1, 10)
        out[f"{d}/completeness"] = json.dumps(completeness_to_dict(proof), sort_keys=True)
    for batch_id in (1, 2, 3):
        out[f"batch/{batch_id}"] = [
            dumps_receipt(r) for r in await store.receipts_for_batch(batch_id)
        ]
        out[f"leaves/{batch_id}"] = [h.hex() for h in await store.batch_leaf_hashes(batch_id)]
    return out


def test_a_database_filled_under_008_serves_the_same_receipts_after_009(
    two_databases: tuple[str, str], tmp_path: Path
) -> None:
    old_dsn, new_dsn = two_databases
    old_sql = tmp_path / "sql-008"
    old_sql.mkdir()
    for path in SQL_DIR.glob("[0-9]*_*.sql"):
        if int(path.name.split("_", 1)[0]) <= 8:
            shutil.copy(path, old_sql / path.name)
    batches, keys = _candidates()

    async def body() -> None:
        old = await Store.connect(old_dsn)
        new = await Store.connect(new_dsn)
        try:
            assert await old.migrate(directory=old_sql) == list(range(1, 9))
            assert await new.migrate() and await new.migrate() == []
            for store in (old, new):
                for d, k in keys.items():
                    await store.register_device(
                        d, k.public_key, district="nanshan", kind="iot.noise"
                    )
            conn = await asyncpg.connect(old_dsn)
            try:
                # A monthly readings partition as 008 made them, beside the default one.
                now = datetime.now(UTC)
                lo = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
                hi = (lo + timedelta(days=32)).replace(day=1)
                await conn.execute(
                    f"CREATE TABLE readings_y{lo.year:04d}m{lo.month:02d} PARTITION OF "
                    f"readings FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')"
                )
                for batch in batches:
                    await legacy_seal(conn, batch)
                await legacy_erase(conn, *ERASED)
            finally:
                await conn.close()
            for batch in batches:
                res = await new.seal(batch, [], signer=SIGNER, origin=ORIGIN, ingestor="it")
                assert res.accepted == len(batch)
            _, created = await operator_store.erase_reading(
                new, *ERASED, actor="eraser", legal_reason="GDPR art. 17"
            )
            assert created
            async with new.connection("test") as c:
                await c.execute("UPDATE reading_erasures SET erased_at = '2026-01-02T03:04:05Z'")

            assert await old.migrate() == [9, 10]  # 010: the archives table (issue 16)
            devices = sorted(keys)
            got, want = await _everything(old, devices), await _everything(new, devices)
            assert got == want
            erased = await old.receipt(*ERASED)
            assert erased.status == "erased" and erased.envelope == b""
            assert erased.format == FORMAT_JWS  # mig-001 signs JWS: kept by the tombstone
            for d in devices:
                receipt = await old.receipt(d, 1)
                key = keys[d].public_key
                report = verify_receipt(receipt, device_keys=[key], log_verifiers=[SIGNER.verifier])
                assert report.valid, report
            report = await run_audit(old_dsn, log_verifiers=[SIGNER.verifier], progress=None)
            assert report.ok, report.divergences
            assert (report.batches, report.readings, report.erased) == (3, 20, 1)
            # The converted database's storage: one packed row per batch, no readings table.
            conn = await asyncpg.connect(old_dsn)
            try:
                assert await conn.fetchval("SELECT count(*) FROM reading_batches") == 3
                assert await conn.fetchval("SELECT to_regclass('readings')") is None
                assert await conn.fetchval("SELECT count(*) FROM reading_seqs") == 20
            finally:
                await conn.close()
        finally:
            await old.close()
            await new.close()

    asyncio.run(body())
