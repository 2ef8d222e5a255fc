"""anchor.store against a real PostgreSQL: schema, registry, the seal transaction, receipts."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
import reference_merkle as ref  # tests/ is not a package

from anchor import merkle
from anchor.checkpoint import generate_note_key, open_checkpoint
from anchor.envelope import Reading, parse_envelope, sign_reading
from anchor.keys import PrivateKey
from anchor.local import PostgresServer
from anchor.sealing import DUPLICATE_DETAIL, Candidate, Rejection, classify_candidates
from anchor.store import SEAL_LOCK, SQL_DIR, RegistryError, Store, StoreError
from anchor.verify import verify_receipt
from devices.signer import DeviceSigner

T = TypeVar("T")
ORIGIN = "cityanchor.test/log"
SIGNER = generate_note_key(ORIGIN)

# Every numbered migration file, in order: what a fresh database gets.
ALL_MIGRATIONS = sorted(int(p.name.split("_", 1)[0]) for p in SQL_DIR.glob("[0-9]*_*.sql"))


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _dsn(postgres: PostgresServer, database: str) -> str:
    return postgres.dsn_for(database)


async def _store(dsn: str, *, migrate: bool = True, **kw: Any) -> Store:
    store = await Store.connect(dsn, **kw)
    if migrate:
        await store.migrate()
    return store


def with_store(dsn: str, body: Callable[[Store], Awaitable[T]], **kw: Any) -> T:
    async def main() -> T:
        store = await _store(dsn, **kw)
        try:
            return await body(store)
        finally:
            await store.close()

    return run(main())


class Fleet:
    """Devices with keys and chain state, to make candidates."""

    def __init__(self, n: int, *, prefix: str = "dev") -> None:
        self.keys = {f"{prefix}-{i:03d}": PrivateKey.generate() for i in range(n)}
        self.signers = {d: DeviceSigner(d, k) for d, k in self.keys.items()}
        self.now = datetime.now(UTC)

    async def register(self, store: Store) -> None:
        for device_id, key in self.keys.items():
            await store.register_device(
                device_id, key.public_key, district="nanshan", kind="iot.air_quality"
            )

    def candidate(self, device_id: str, *, received_at: datetime | None = None) -> Candidate:
        raw = self.signers[device_id].sign("iot.air_quality", {"pm2_5": 12.5})
        return candidate(raw, received_at or self.now)

    def batch(self, per_device: int) -> list[Candidate]:
        return [self.candidate(d) for _ in range(per_device) for d in self.keys]


def candidate(raw: bytes, received_at: datetime | None = None) -> Candidate:
    env = parse_envelope(raw)
    topic = f"city/nanshan/{env.reading.device_id}/readings"
    return Candidate(env, received_at or datetime.now(UTC), topic)


def forged(key: PrivateKey, device_id: str, seq: int, prev: bytes, ts: int = 1) -> bytes:
    reading = Reading(device_id, seq, ts, "iot.noise", {"db": 40}, prev)
    return sign_reading(reading, key)


async def _seal(store: Store, cands: list[Candidate], rejs: Sequence[Rejection] = ()) -> Any:
    return await store.seal(cands, rejs, signer=SIGNER, origin=ORIGIN, ingestor="it")


_TABLES = ("batches", "checkpoints", "log_nodes", "reading_batches", "reading_seqs", "quarantine")


async def _table_counts(dsn: str, tables: Sequence[str] = _TABLES) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        out = {}
        for t in tables:
            out[t] = await conn.fetchval(f"SELECT count(*) FROM {t}")
        return out
    finally:
        await conn.close()


# ------------------------------------------------------------------------------------ schema


def test_migrate_is_idempotent_and_creates_partitions(db_dsn: str) -> None:
    async def body() -> None:
        store = await _store(db_dsn, migrate=False)
        try:
            assert await store.migrate() == ALL_MIGRATIONS
            assert await store.migrate() == []
            conn = await asyncpg.connect(db_dsn)
            try:
                rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
                assert [r["version"] for r in rows] == ALL_MIGRATIONS
                parts = {
                    r["name"]
                    for r in await conn.fetch(
                        "SELECT c.relname AS name FROM pg_inherits i "
                        "JOIN pg_class c ON c.oid = i.inhrelid "
                        "WHERE i.inhparent = 'reading_batches'::regclass"
                    )
                }
                now = await conn.fetchval("SELECT now()")
            finally:
                await conn.close()
            month = now.astimezone(UTC).replace(day=1)
            expected = {"reading_batches_default"}
            for _ in range(3):
                expected.add(f"reading_batches_y{month.year:04d}m{month.month:02d}")
                month = (month + timedelta(days=32)).replace(day=1)
            assert parts == expected
            assert await store.ensure_partitions() == []
        finally:
            await store.close()

    run(body())


def test_concurrent_migrations_are_safe(db_dsn: str) -> None:
    async def body() -> None:
        a, b = await _store(db_dsn, migrate=False), await _store(db_dsn, migrate=False)
        try:
            results = await asyncio.gather(a.migrate(), b.migrate())
            assert sorted(results) == [[], ALL_MIGRATIONS]
            assert await a.log_size() == 0
        finally:
            await a.close()
            await b.close()

    run(body())


def test_changed_migration_is_refused(db_dsn: str, tmp_path: Path) -> None:
    sql = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql)

    async def body() -> None:
        store = await _store(db_dsn, migrate=False)
        try:
            assert await store.migrate(directory=sql) == ALL_MIGRATIONS
            path = next(sql.glob("001_*.sql"))
            path.write_text(path.read_text() + "\n-- edited\n")
            with pytest.raises(StoreError) as exc:
                await store.migrate(directory=sql)
            assert exc.value.reason == "migration_checksum_mismatch"
            # A new numbered file alongside an unchanged history applies normally.
            path.write_text(path.read_text().removesuffix("\n-- edited\n"))
            extra = ALL_MIGRATIONS[-1] + 1
            (sql / f"{extra:03d}_extra.sql").write_text("CREATE TABLE extra (x int);")
            assert await store.migrate(directory=sql) == [extra]
        finally:
            await store.close()

    run(body())


def test_migration_006_refuses_a_log_built_with_v1_leaves(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    # A data dir of the previous release: migrations up to 005 and a sealed batch (its log leaf
    # was H(0x00 || root) then). 006 must refuse it, loudly and with a stable reason, and change
    # nothing; a pre-v2 database with an empty log just moves on to v2 leaves.
    old_sql = tmp_path / "sql-005"
    old_sql.mkdir()
    for path in SQL_DIR.glob("[0-9]*_*.sql"):
        if int(path.name.split("_", 1)[0]) <= 5:
            shutil.copy(path, old_sql / path.name)
    names = [f"t_{uuid.uuid4().hex[:16]}" for _ in range(2)]
    used, empty = (postgres.create_database(n) for n in names)

    async def body() -> None:
        store = await _store(used, migrate=False)
        try:
            assert await store.migrate(directory=old_sql) == [1, 2, 3, 4, 5]
            # A batch as that release sealed it (the refusal only counts batches; this
            # release's seal writes the 009 layout, so the row is written by hand).
            conn = await asyncpg.connect(used)
            try:
                await conn.execute(
                    "INSERT INTO batches (id, size, root, log_index) VALUES (1, 4, $1, 0)",
                    b"\x01" * 32,
                )
            finally:
                await conn.close()
            before = await _table_counts(used, ("batches", "checkpoints", "readings"))
            for _ in range(2):  # every attempt refuses, and leaves the database as it was
                with pytest.raises(StoreError) as exc:
                    await store.migrate()
                assert exc.value.reason == "migration_refused"
                assert "006_log_leaf_v2.sql refused" in exc.value.detail
                assert "1 batch(es) sealed with v1 log leaves" in exc.value.detail
                assert "Upgrading to receipt v2" in exc.value.detail
                assert await _table_counts(used, tuple(before)) == before
            conn = await asyncpg.connect(used)
            try:
                applied = await conn.fetchval("SELECT max(version) FROM schema_migrations")
            finally:
                await conn.close()
            assert applied == 5
        finally:
            await store.close()
        store = await _store(empty, migrate=False)
        try:
            assert await store.migrate(directory=old_sql) == [1, 2, 3, 4, 5]
            assert await store.migrate() == [v for v in ALL_MIGRATIONS if v > 5]
        finally:
            await store.close()

    try:
        run(body())
    finally:
        for name in names:
            postgres.psql(f"DROP DATABASE {name} WITH (FORCE)", database="postgres")


def test_connect_to_nothing_is_db_unavailable() -> None:
    from anchor.local import free_port

    with pytest.raises(StoreError) as exc:
        run(Store.connect(f"postgresql://cityanchor:pw@127.0.0.1:{free_port()}/x", timeout=2))
    assert exc.value.reason == "db_unavailable"
    assert exc.value.retryable


# ---------------------------------------------------------------------------------- registry


def test_registry_register_rotate_revoke_list(db_dsn: str) -> None:
    async def body(store: Store) -> None:
        keys = {f"aq-{i:02d}": PrivateKey.generate() for i in range(7)}
        for i, (d, k) in enumerate(keys.items()):
            rec = await store.register_device(
                d, k.public_key, district="north" if i % 2 else "south", kind="iot.noise"
            )
            assert rec.status == "active" and len(rec.keys) == 1
            assert rec.current_key is not None and rec.current_key.kid == k.public_key.kid

        with pytest.raises(StoreError) as exc:
            await store.register_device(
                "aq-00", PrivateKey.generate().public_key, district="", kind=""
            )
        assert exc.value.reason == "conflict"
        with pytest.raises(StoreError) as exc:  # one key, two devices
            await store.register_device("aq-99", keys["aq-01"].public_key, district="", kind="")
        assert exc.value.reason == "conflict"
        with pytest.raises(StoreError) as exc:
            await store.register_device(
                "bad id!", PrivateKey.generate().public_key, district="", kind=""
            )
        assert exc.value.reason == "device_id_invalid"
        with pytest.raises(StoreError) as exc:
            await store.get_device("nope")
        assert exc.value.reason == "not_found"

        # Rotation keeps the old key, closed; the key-validity rule follows valid_until.
        new = PrivateKey.generate()
        rotated = await store.rotate_device_key("aq-00", new.public_key)
        old_kid, new_kid = keys["aq-00"].public_key.kid, new.public_key.kid
        assert [k.kid for k in rotated.keys] == [old_kid, new_kid]
        old_rec = rotated.key(old_kid)
        assert old_rec is not None and old_rec.valid_until is not None
        assert rotated.current_key is not None and rotated.current_key.kid == new_kid
        cutoff_ms = int(old_rec.valid_until.timestamp() * 1000)
        now = datetime.now(UTC)
        assert rotated.check_reading(old_kid, cutoff_ms - 1, now).kid == old_kid
        with pytest.raises(RegistryError) as rexc:
            rotated.check_reading(old_kid, cutoff_ms + 1, now)
        assert rexc.value.reason == "key_rotated"
        assert rotated.check_reading(new_kid, cutoff_ms + 10**9, now).kid == new_kid
        with pytest.raises(RegistryError) as rexc:
            rotated.check_reading(b"\x01" * 32, 0, now)
        assert rexc.value.reason == "unknown_kid"
        with pytest.raises(StoreError) as exc:  # back to an old key: refused
            await store.rotate_device_key("aq-00", keys["aq-00"].public_key)
        assert exc.value.reason == "conflict"

        revoked = await store.revoke_device("aq-01", reason="stolen")
        assert revoked.status == "revoked" and revoked.revoke_reason == "stolen"
        assert revoked.revoked_at is not None
        before = revoked.revoked_at - timedelta(seconds=1)
        assert revoked.check_reading(keys["aq-01"].public_key.kid, 0, before)
        with pytest.raises(RegistryError) as rexc:
            revoked.check_reading(keys["aq-01"].public_key.kid, 0, revoked.revoked_at)
        assert rexc.value.reason == "device_revoked"
        with pytest.raises(StoreError) as exc:
            await store.revoke_device("aq-01")
        assert exc.value.reason == "conflict"
        with pytest.raises(StoreError) as exc:
            await store.rotate_device_key("aq-01", PrivateKey.generate().public_key)
        assert exc.value.reason == "conflict"

        # Keyset pagination.
        pages, after = [], None
        while True:
            page = await store.list_devices(after=after, limit=3)
            if not page:
                break
            pages.append([d.device_id for d in page])
            after = page[-1].device_id
        assert pages == [["aq-00", "aq-01", "aq-02"], ["aq-03", "aq-04", "aq-05"], ["aq-06"]]
        north = await store.list_devices(district="north")
        assert [d.device_id for d in north] == ["aq-01", "aq-03", "aq-05"]
        assert [d.device_id for d in await store.list_devices(status="revoked")] == ["aq-01"]
        snap = await store.device_keys_snapshot()
        assert set(snap) == set(keys) and len(snap["aq-00"].keys) == 2

    with_store(db_dsn, body)


def test_import_is_all_or_nothing(db_dsn: str) -> None:
    from anchor.store import DeviceSpec

    async def body(store: Store) -> None:
        await store.register_device("x-1", PrivateKey.generate().public_key, district="", kind="")
        specs = [
            DeviceSpec("x-2", PrivateKey.generate().public_key, line=2),
            DeviceSpec("x-1", PrivateKey.generate().public_key, line=3),
        ]
        with pytest.raises(StoreError) as exc:
            await store.register_devices(specs)
        assert exc.value.reason == "conflict" and "line 3" in exc.value.detail
        assert [d.device_id for d in await store.list_devices()] == ["x-1"]

    with_store(db_dsn, body)


# ----------------------------------------------------------------------------------- sealing


def test_seal_stores_batch_log_and_checkpoint(db_dsn: str) -> None:
    fleet = Fleet(5)

    async def body(store: Store) -> None:
        await fleet.register(store)
        cands = fleet.batch(10)
        result = await _seal(store, cands)
        assert (result.batch_id, result.log_index, result.size) == (1, 0, 50)
        assert result.accepted == 50 and result.duplicates == 0 and result.quarantined == {}
        leaves = await store.batch_leaf_hashes(result.batch_id)
        assert leaves == [merkle.leaf_hash(c.envelope.raw) for c in cands]
        assert merkle.root(leaves) == result.root
        second = await _seal(store, fleet.batch(3))
        assert (second.log_index, second.size) == (1, 15)
        note = await store.latest_checkpoint()
        assert note is not None and note == second.checkpoint
        cp = open_checkpoint(note, SIGNER.verifier, origin=ORIGIN)
        entries = await store.log_entries(cp.size)
        assert cp.size == 2 == await store.log_size()
        assert entries == [(50, result.root), (15, second.root)]
        # The v2 log leaf (uint64_be(size) || root), from the reference code, not anchor.merkle.
        assert cp.root == ref.mth([ref.log_leaf_input(n, r) for n, r in entries])
        counts = await store.counts()
        assert counts["readings"] == 65 and counts["batches"] == 2 and counts["quarantine"] == 0
        conn = await asyncpg.connect(db_dsn)
        try:
            where = await conn.fetch(
                "SELECT DISTINCT tableoid::regclass::text AS p FROM reading_batches"
            )
            assert [r["p"] for r in where] == [
                f"reading_batches_y{fleet.now.year:04d}m{fleet.now.month:02d}"
            ]
            heads = await conn.fetch("SELECT * FROM device_heads ORDER BY device_id")
            assert [(r["max_seq"], r["readings"]) for r in heads] == [(13, 13)] * 5
            assert await conn.fetchval("SELECT count(*) FROM device_seq_gaps") == 0
        finally:
            await conn.close()

    with_store(db_dsn, body)


def test_classification_of_duplicates_conflicts_and_chain_breaks(db_dsn: str) -> None:
    fleet = Fleet(2)
    a, b = "dev-000", "dev-001"

    async def body(store: Store) -> None:
        await fleet.register(store)
        first = [fleet.candidate(a) for _ in range(3)]  # a: seq 1..3
        assert (await _seal(store, first)).accepted == 3
        key = fleet.keys[a]
        leaf2 = merkle.leaf_hash(first[1].envelope.raw)
        leaf3 = merkle.leaf_hash(first[2].envelope.raw)
        seq4 = fleet.candidate(a)  # the device's real seq 4
        seq5 = fleet.candidate(a)
        gap = candidate(forged(key, a, 9, b"\x07" * 32))  # seq 6..8 never arrive: a gap
        batch = [
            first[1],  # redelivery of a stored reading -> replayed_seq
            candidate(forged(key, a, 3, leaf2, ts=99)),  # seq 3, other bytes -> seq_conflict
            seq5,  # arrives before its predecessor; judged after it
            candidate(forged(key, a, 4, b"\x01" * 32)),  # seq 4, wrong prev -> prev_mismatch
            seq4,
            seq4,  # in-batch duplicate -> replayed_seq
            gap,
            candidate(forged(key, a, 2**63, leaf3)),  # beyond bigint -> out_of_range
            fleet.candidate(b),  # b: seq 1
        ]
        rejection = Rejection(
            datetime.now(UTC), "city/x/\x00evil\ud800/readings", "bad_signature",
            "detail with NUL \x00 and a lone surrogate \udc80", b"\xff" * 20000, "evil\x00", 2**64,
        )  # fmt: skip
        result = await _seal(store, batch, [rejection])
        assert result.accepted == 4  # seq5, seq4 (first copy), gap (seq 9), b's seq 1
        assert result.duplicates == 2
        assert dict(result.quarantined) == {
            "replayed_seq": 2,
            "seq_conflict": 1,
            "prev_mismatch": 1,
            "out_of_range": 1,
            "bad_signature": 1,
        }
        # Leaves are in arrival order of the accepted ones.
        leaves = await store.batch_leaf_hashes(result.batch_id)
        assert leaves == [merkle.leaf_hash(c.envelope.raw) for c in (seq5, seq4, gap, batch[-1])]

        conn = await asyncpg.connect(db_dsn)
        try:
            rows = await conn.fetch(
                "SELECT reason, detail, raw, raw_size, raw_sha256, device_id, seq, topic "
                "FROM quarantine ORDER BY id"
            )
            gaps = await conn.fetch("SELECT * FROM device_seq_gaps ORDER BY device_id, gap_from")
        finally:
            await conn.close()
        # Passed-in rejections first, then the classification's in arrival order.
        assert [r["reason"] for r in rows] == [
            "bad_signature", "replayed_seq", "seq_conflict", "prev_mismatch", "replayed_seq",
            "out_of_range",
        ]  # fmt: skip
        by_reason = {r["reason"]: r for r in reversed(rows)}  # the first of each reason
        dup = by_reason["replayed_seq"]
        assert dup["raw"] is None and dup["raw_size"] == len(first[1].envelope.raw)
        assert dup["detail"] == DUPLICATE_DETAIL and (dup["device_id"], dup["seq"]) == (a, 2)
        assert [(r["device_id"], r["seq"]) for r in rows][4:] == [(a, 4), (a, None)]
        assert by_reason["seq_conflict"]["raw"] == batch[1].envelope.raw
        bad = by_reason["bad_signature"]
        assert len(bad["raw"]) == 16 * 1024 and bad["raw_size"] == 20000
        assert "\x00" not in bad["topic"] and bad["seq"] is None
        assert [(g["device_id"], g["gap_from"], g["gap_to"]) for g in gaps] == [(a, 6, 8)]

        # Nothing accepted: quarantine rows only, the log does not move.
        size = await store.log_size()
        again = await _seal(store, [seq4, seq5])
        assert again.batch_id is None and again.checkpoint is None and again.duplicates == 2
        assert await store.log_size() == size

    with_store(db_dsn, body)


def test_classify_candidates_checks_seq_1_prev() -> None:
    key = PrivateKey.generate()
    ok = candidate(forged(key, "d", 1, bytes(32)))
    two = candidate(forged(key, "d", 2, merkle.leaf_hash(ok.envelope.raw)))
    accepted, rejected = classify_candidates([two, ok], {})
    assert accepted == [two, ok] and rejected == []
    accepted, rejected = classify_candidates([two], {("d", 1): b"\x05" * 32})
    assert accepted == [] and [r.reason for r in rejected] == ["prev_mismatch"]


def test_concurrent_seals_share_one_consistent_log(db_dsn: str) -> None:
    fleets = [Fleet(3, prefix="p"), Fleet(3, prefix="q")]

    async def worker(dsn: str, fleet: Fleet, n: int) -> list[int]:
        store = await _store(dsn, migrate=False)
        try:
            out = []
            for _ in range(n):
                r = await _seal(store, fleet.batch(2))
                assert r.log_index is not None
                out.append(r.log_index)
            return out
        finally:
            await store.close()

    async def body(store: Store) -> None:
        for f in fleets:
            await f.register(store)
        results = await asyncio.gather(*(worker(db_dsn, f, 6) for f in fleets))
        indexes = sorted(i for r in results for i in r)
        assert indexes == list(range(12))
        for r in results:
            assert r == sorted(r)
        entries = await store.log_entries(12)
        leaves = [ref.leaf(ref.log_leaf_input(n, r)) for n, r in entries]
        conn = await asyncpg.connect(db_dsn)
        try:
            notes = [
                r["note"]
                for r in await conn.fetch("SELECT note FROM checkpoints ORDER BY log_size")
            ]
        finally:
            await conn.close()
        cps = [open_checkpoint(n, SIGNER.verifier, origin=ORIGIN) for n in notes]
        assert [c.size for c in cps] == list(range(1, 13))
        for old, new in itertools.pairwise(cps):
            proof = merkle.consistency_proof(leaves[: new.size], old.size)
            merkle.verify_consistency(old.size, new.size, proof, old.root, new.root)
        assert cps[-1].root == merkle.root(leaves)

    with_store(db_dsn, body)


def test_failed_seal_leaves_nothing_behind(db_dsn: str) -> None:
    fleet = Fleet(2)

    async def body(store: Store) -> None:
        await fleet.register(store)
        conn = await asyncpg.connect(db_dsn)
        try:
            # Fault injection: the LAST write of the seal (reading_seqs, after batch,
            # checkpoint, log nodes and readings) fails for one device.
            await conn.execute(
                """CREATE FUNCTION fail_poison() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                  IF NEW.device_num = (SELECT num FROM devices WHERE device_id = 'dev-001')
                  THEN RAISE EXCEPTION 'injected'; END IF;
                  RETURN NEW;
                END $$;
                CREATE TRIGGER poison BEFORE INSERT ON reading_seqs
                  FOR EACH ROW EXECUTE FUNCTION fail_poison();"""
            )
            rej = Rejection(datetime.now(UTC), "t", "malformed", "x", b"junk")
            with pytest.raises(StoreError) as exc:
                await _seal(store, fleet.batch(3), [rej])
            assert exc.value.reason == "db_error" and not exc.value.retryable
            assert set((await _table_counts(db_dsn)).values()) == {0}
            await conn.execute("DROP TRIGGER poison ON reading_seqs")
        finally:
            await conn.close()
        ok = await _seal(store, [fleet.candidate("dev-000")])
        assert ok.log_index == 0  # the failed seal consumed no log index

    with_store(db_dsn, body)


def test_seal_whose_connection_dies_is_retryable(db_dsn: str) -> None:
    fleet = Fleet(1)

    async def body(store: Store) -> None:
        await fleet.register(store)
        cands = fleet.batch(4)
        holder = await asyncpg.connect(db_dsn)
        try:
            await holder.execute("SELECT pg_advisory_lock($1)", SEAL_LOCK)
            task = asyncio.create_task(_seal(store, cands))
            pid = None
            for _ in range(200):  # wait until the seal blocks on the lock
                pid = await holder.fetchval(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                )
                if pid:
                    break
                await asyncio.sleep(0.02)
            assert pid
            await holder.execute("SELECT pg_terminate_backend($1)", pid)
            with pytest.raises(StoreError) as exc:
                await task
            assert exc.value.reason == "db_unavailable" and exc.value.retryable
            await holder.execute("SELECT pg_advisory_unlock($1)", SEAL_LOCK)
        finally:
            await holder.close()
        assert set((await _table_counts(db_dsn)).values()) == {0}
        retry = await _seal(store, cands)  # the pool replaces the dead connection
        assert retry.accepted == 4 and retry.log_index == 0

    with_store(db_dsn, body)


def test_seal_survives_a_postgres_restart(service_dir: Path) -> None:
    fleet = Fleet(1)
    server = PostgresServer(service_dir / "pg", fsync=False).start()
    try:

        async def body() -> None:
            store = await _store(server.dsn, timeout=3)
            try:
                await fleet.register(store)
                assert (await _seal(store, fleet.batch(2))).log_index == 0
                pending = fleet.batch(2)
                server.stop()
                with pytest.raises(StoreError) as exc:
                    await _seal(store, pending)
                assert exc.value.retryable
                server.start()
                result = await _seal(store, pending)
                assert (result.log_index, result.accepted) == (1, 2)
                await store.ping()
            finally:
                await store.close()

        run(body())
    finally:
        server.stop()


# ---------------------------------------------------------------------------------- receipts


def test_every_receipt_verifies(db_dsn: str) -> None:
    fleet = Fleet(4)

    async def body(store: Store) -> None:
        await fleet.register(store)
        sealed = []
        for n in (1, 5, 2, 3, 1):
            r = await _seal(store, fleet.batch(n))
            sealed.append(r)
        # Rotate a key afterwards: old readings still verify with the old key.
        new = PrivateKey.generate()
        await store.rotate_device_key("dev-000", new.public_key)
        fleet.signers["dev-000"] = DeviceSigner(
            "dev-000", new, state=fleet.signers["dev-000"].state
        )
        sealed.append(await _seal(store, fleet.batch(2)))
        device_keys = [k.public_key for k in fleet.keys.values()] + [new.public_key]
        total = 0
        for res in sealed:
            batch_receipts = await store.receipts_for_batch(res.batch_id)
            assert len(batch_receipts) == res.size
            for rec in batch_receipts:
                single = await store.receipt(rec.device_id, rec.seq)
                assert single == rec
                report = verify_receipt(
                    rec, device_keys=device_keys, log_verifiers=[SIGNER.verifier]
                )
                assert report.valid, report.failures
                assert rec.status == "sealed" and rec.log.size == len(sealed)
                total += 1
        assert total == (await store.counts())["readings"] == 4 * 12 + 4 * 2
        with pytest.raises(StoreError) as exc:
            await store.receipt("dev-000", 999)
        assert exc.value.reason == "not_found"

    with_store(db_dsn, body)


def test_rows_in_the_default_partition_move_to_a_new_month(db_dsn: str) -> None:
    # A batch lives in the month it was sealed in (sql/009): with this month's partition
    # missing its packed row lands in the default partition, and moves when the month is made.
    fleet = Fleet(1)

    async def body(store: Store) -> None:
        await fleet.register(store)
        conn = await asyncpg.connect(db_dsn)
        try:
            now = (await conn.fetchval("SELECT now()")).astimezone(UTC)
            month = f"reading_batches_y{now.year:04d}m{now.month:02d}"
            await conn.execute(f"DROP TABLE {month}")
            res = await _seal(store, [fleet.candidate("dev-000")])
            where = "SELECT tableoid::regclass::text FROM reading_batches"
            assert await conn.fetchval(where) == "reading_batches_default"
            assert await store.ensure_partitions(0) == [month]
            assert await conn.fetchval(where) == month
            storage = await conn.fetch(
                "SELECT attname, attstorage::text FROM pg_attribute WHERE attrelid = $1::regclass "
                "AND attname IN ('leaves', 'ends', 'envelopes')",
                month,
            )
            assert {r["attstorage"] for r in storage} == {"e"}  # out of line, uncompressed
        finally:
            await conn.close()
        (rec,) = await store.receipts_for_batch(res.batch_id)
        assert verify_receipt(rec, log_verifiers=[SIGNER.verifier]).valid

    with_store(db_dsn, body)
