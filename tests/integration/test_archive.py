"""``cityanchor archive`` against a real PostgreSQL (issue 16, "Retention without losing proofs"):
readings sealed into three months, the oldest archived; its partition is gone, its receipts come
from the file byte for byte and verify, without the directory the answer is reading_archived;
the audit checks the file (and fails on a tampered one); erasure rewrites the file; restore
brings the month back; a replayed seq of an archived reading is still refused; a crash between
any two steps leaves the month whole in the database or archived, and a re-run finishes it."""

from __future__ import annotations

import asyncio
import gzip
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from anchor import merkle
from anchor.anchoring.chains.base import AnchorConfirmation
from anchor.checkpoint import generate_note_key
from anchor.cli.audit import run_audit
from anchor.cli.commands import main
from anchor.envelope import parse_envelope
from anchor.errors import Reason
from anchor.keys import PrivateKey
from anchor.receipt import Receipt, dumps_receipt
from anchor.sealing import Candidate
from anchor.store import Store, StoreError
from anchor.store import archive_file as af
from anchor.store.operator import erase_reading
from anchor.verify import verify_receipt
from devices.signer import DeviceSigner

ORIGIN = "cityanchor.test/log"
SIGNER = generate_note_key(ORIGIN)
DEVICES = ("arch-000", "arch-001")


def _month(now: datetime, delta: int) -> datetime:
    """The start of the month ``delta`` months from ``now``'s (UTC)."""
    index = now.year * 12 + now.month - 1 + delta
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def _name(when: datetime) -> str:
    return f"{when.year:04d}-{when.month:02d}"


NOW = datetime.now(UTC)
OLD, MID, CUR = _month(NOW, -3), _month(NOW, -2), _month(NOW, 0)


class World:
    """Two devices; batches sealed into OLD (two), MID (one) and the current month (one)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.keys = {d: PrivateKey.generate() for d in DEVICES}
        self.signers = {d: DeviceSigner(d, k) for d, k in self.keys.items()}
        self.raw: dict[tuple[str, int], bytes] = {}

    async def setup(self, *, partitions: bool = True) -> None:
        await self.store.migrate()
        if partitions:
            await self.store.ensure_partitions(4, start=OLD)
        for device_id, key in self.keys.items():
            await self.store.register_device(
                device_id, key.public_key, district="nanshan", kind="iot.air_quality"
            )
        for when in (OLD + timedelta(days=2), OLD + timedelta(days=9), MID + timedelta(days=3)):
            await self.seal(3, sealed_at=when)
        await self.seal(2, sealed_at=None)
        # Everything anchored (the newest checkpoint), as the anchoring job would.
        cp = await self.store.latest_checkpoint_record()
        assert cp is not None
        await self.store.record_anchor(
            "evm",
            cp.log_size,
            bytes(cp.root),
            AnchorConfirmation(
                chain_id=31337,
                contract="0x" + "11" * 20,
                tx_hash="0x" + "ab" * 32,
                block_number=100,
                block_time=datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC),
                confirmations=3,
                block_hash=b"\x01" * 32,
            ),
        )

    async def seal(self, n: int, *, sealed_at: datetime | None) -> int:
        received = sealed_at or datetime.now(UTC)
        cands = []
        for _ in range(n):
            for d in DEVICES:
                env = parse_envelope(self.signers[d].sign("iot.air_quality", {"pm2_5": 12.5}))
                self.raw[(d, env.reading.seq)] = env.raw
                cands.append(Candidate(env, received, f"city/nanshan/{d}/readings"))
        result = await self.store.seal(cands, [], signer=SIGNER, origin=ORIGIN, ingestor="it")
        assert result.batch_id is not None
        if sealed_at is not None:
            # The batch sealed in an earlier month (the partition key moves its packed row).
            async with self.store.connection() as conn:
                await conn.execute(
                    "UPDATE batches SET sealed_at = $2 WHERE id = $1", result.batch_id, sealed_at
                )
                await conn.execute(
                    "UPDATE reading_batches SET sealed_at = $2 WHERE batch_id = $1",
                    result.batch_id,
                    sealed_at,
                )
        return result.batch_id

    def valid(self, receipt: Receipt) -> None:
        report = verify_receipt(
            receipt,
            device_keys=[k.public_key for k in self.keys.values()],
            log_verifiers=[SIGNER.verifier],
        )
        assert report.valid, report.failures

    async def receipts(self, store: Store, batch_ids: tuple[int, ...]) -> dict[Any, bytes]:
        out = {}
        for batch_id in batch_ids:
            for rec in await store.receipts_for_batch(batch_id):
                served = await store.receipt(rec.device_id, rec.seq)
                out[(rec.device_id, rec.seq)] = dumps_receipt(served).encode()
        return out


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _world(dsn: str, *, partitions: bool = True) -> World:
    store = await Store.connect(dsn)
    world = World(store)
    await world.setup(partitions=partitions)
    return world


async def _partitions(store: Store) -> set[str]:
    async with store.connection() as conn:
        rows = await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'reading_batches'::regclass"
        )
    return {r["relname"] for r in rows}


def _partition(when: datetime) -> str:
    return f"reading_batches_y{when.year:04d}m{when.month:02d}"


def test_archive_serve_audit_erase_restore(
    db_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def prepare() -> tuple[World, dict[Any, bytes]]:
        world = await _world(db_dsn)
        try:
            return world, await world.receipts(world.store, (1, 2))
        finally:
            await world.store.close()

    world, before = _run(prepare())
    assert len(before) == 12

    # A directory it cannot write to: the operator's error (exit 2), the month stays.
    blocker = tmp_path / f"{_name(OLD)}.jsonl.gz.tmp"
    blocker.mkdir()
    code = main(["archive", "--before", _name(MID), "--dir", str(tmp_path), "--database-url",
                 db_dsn])  # fmt: skip
    assert code == 2 and f"archive directory {tmp_path}: Is a directory" in capsys.readouterr().err
    blocker.rmdir()
    # Unanchored newer batches do not stop the older month; the current month is never taken.
    code = main(["archive", "--before", _name(MID), "--dir", str(tmp_path), "--database-url",
                 db_dsn])  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    assert f"archived {_name(OLD)}: {_name(OLD)}.jsonl.gz, 2 batches, 12 readings" in out.out
    assert "re-read and checked" in out.err
    manifest = json.loads((tmp_path / f"{_name(OLD)}.manifest.json").read_text())
    assert manifest["batches"] == 2 and manifest["readings"] == 12
    assert [b["batch_id"] for b in manifest["batch_roots"]] == [1, 2]
    assert (manifest["log_from"], manifest["log_to"]) == (0, 1)
    # One JSON line per batch, readable as one gzip file.
    lines = gzip.decompress((tmp_path / f"{_name(OLD)}.jsonl.gz").read_bytes()).splitlines()
    assert [json.loads(x)["batch_id"] for x in lines] == [1, 2]
    # Again: idempotent.
    assert main(["archive", "--before", _name(MID), "--dir", str(tmp_path), "--database-url",
                 db_dsn]) == 0  # fmt: skip
    assert "nothing to archive before" in capsys.readouterr().out
    assert main(["archive", "list", "--database-url", db_dsn]) == 0
    assert f"{_name(OLD)}  archived" in capsys.readouterr().out

    async def served() -> None:
        plain = await Store.connect(db_dsn)
        try:
            assert _partition(OLD) not in await _partitions(plain)
            assert _partition(MID) in await _partitions(plain)
            async with plain.connection() as conn:
                # reading_seqs, batches, checkpoints stay.
                assert await conn.fetchval("SELECT count(*) FROM reading_seqs") == 22
                assert await conn.fetchval("SELECT count(*) FROM batches") == 4
            # Without the directory: the operator's answer names month and file.
            with pytest.raises(StoreError) as err:
                await plain.receipt(DEVICES[0], 1)
            assert err.value.reason == Reason.READING_ARCHIVED
            assert _name(OLD) in err.value.detail and f"{_name(OLD)}.jsonl.gz" in err.value.detail
            with pytest.raises(StoreError) as err:
                await plain.batch_record(1)
            assert err.value.reason == Reason.READING_ARCHIVED
            # A completeness proof never shows an archived month as gaps: refused.
            with pytest.raises(StoreError) as err:
                await plain.completeness_proof(DEVICES[0], 1, 100)
            assert err.value.reason == Reason.READING_ARCHIVED and _name(OLD) in err.value.detail
            proof = await plain.completeness_proof(DEVICES[0], 7, 100)
            assert [r.seq for r in proof.readings] == [7, 8, 9, 10, 11] and proof.gaps == ()
            # Unknown readings are still not_found.
            with pytest.raises(StoreError) as err:
                await plain.receipt(DEVICES[0], 999)
            assert err.value.reason == Reason.NOT_FOUND
            leaf = merkle.leaf_hash(world.raw[(DEVICES[0], 1)])
            assert await plain.reading_received_at(DEVICES[0], 1, leaf) is None
            plain.use_archive_dir(tmp_path)
            # The time the key-validity rule is judged at (POST /v1/verify): from the file's leaf.
            assert await plain.reading_received_at(DEVICES[0], 1, leaf) == OLD + timedelta(days=2)
            assert await plain.reading_received_at(DEVICES[0], 1, bytes(32)) is None
            record = await plain.batch_record(1)
            assert len(record.leaf_hashes) == 6 and record.leaf_hashes == tuple(
                await plain.batch_leaf_hashes(1)
            )
            after = await world.receipts(plain, (1, 2))
            assert after == before  # byte for byte
            for key in before:
                world.valid(await plain.receipt(*key))
            # The replayed seq of an archived reading is still refused at seal.
            env = parse_envelope(world.raw[(DEVICES[0], 1)])
            result = await plain.seal(
                [Candidate(env, datetime.now(UTC), f"city/nanshan/{DEVICES[0]}/readings")],
                [],
                signer=SIGNER,
                origin=ORIGIN,
                ingestor="it",
            )
            assert result.accepted == 0 and result.duplicates == 1
        finally:
            await plain.close()

    _run(served())
    report = _run(run_audit(db_dsn, log_verifiers=[SIGNER.verifier], archive_dir=tmp_path,
                            progress=None))  # fmt: skip
    assert report.ok, report.divergences
    assert report.readings == 22 and report.archives == 1
    unchecked = _run(run_audit(db_dsn, log_verifiers=[SIGNER.verifier], progress=None))
    assert unchecked.ok and unchecked.archives_unchecked == 1

    # Erasure on the archived month rewrites the file; the receipt shows it erased.
    async def erase() -> None:
        st = await Store.connect(db_dsn)
        try:
            with pytest.raises(StoreError) as err:
                await erase_reading(st, DEVICES[1], 2, actor="dpo", legal_reason="GDPR art. 17")
            assert err.value.reason == Reason.READING_ARCHIVED
            st.use_archive_dir(tmp_path)
            stone, now = await erase_reading(
                st, DEVICES[1], 2, actor="dpo", legal_reason="GDPR art. 17"
            )
            assert now
            again, now = await erase_reading(
                st, DEVICES[1], 2, actor="dpo", legal_reason="GDPR art. 17"
            )
            assert not now and again == stone
            erased = await st.receipt(DEVICES[1], 2)
            assert erased.status == "erased" and erased.envelope == b""
            assert erased.extra["erasure"]["legal_reason"] == "GDPR art. 17"
            world.valid(erased)
            world.valid(await st.receipt(DEVICES[0], 2))
        finally:
            await st.close()

    _run(erase())
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [f"{_name(OLD)}.g1.jsonl.gz", f"{_name(OLD)}.manifest.json"]
    manifest = json.loads((tmp_path / f"{_name(OLD)}.manifest.json").read_text())
    assert manifest["file"] == f"{_name(OLD)}.g1.jsonl.gz"
    assert world.raw[(DEVICES[1], 2)] not in (tmp_path / manifest["file"]).read_bytes()
    report = _run(run_audit(db_dsn, log_verifiers=[SIGNER.verifier], archive_dir=tmp_path,
                            progress=None))  # fmt: skip
    assert report.ok and report.erased == 1, report.divergences

    # A tampered file fails the audit with the reason code (and restore refuses it).
    path = tmp_path / manifest["file"]
    good = path.read_bytes()
    entry = manifest["batch_roots"][0]
    line = af.read_member(path, entry["offset"], entry["length"])
    env = bytearray(line.envelopes)
    env[5] ^= 1
    member = af.encode_line(af.BatchLine(**{**_fields(line), "envelopes": bytes(env)}))
    path.write_bytes(member + good[entry["length"] :])
    report = _run(run_audit(db_dsn, log_verifiers=[SIGNER.verifier], archive_dir=tmp_path,
                            progress=None))  # fmt: skip
    assert not report.ok
    assert any(f"[{Reason.ARCHIVE_INVALID}]" in d.detail for d in report.divergences)
    code = main(["archive", "restore", "--month", _name(OLD), "--dir", str(tmp_path),
                 "--database-url", db_dsn])  # fmt: skip
    assert code == 1 and "not restored" in capsys.readouterr().err
    path.write_bytes(good)

    # Restore: the partition is back and receipts come from the database, the same bytes.
    code = main(["archive", "restore", "--month", _name(OLD), "--dir", str(tmp_path),
                 "--database-url", db_dsn])  # fmt: skip
    assert code == 0 and "restored" in capsys.readouterr().out

    async def restored() -> None:
        plain = await Store.connect(db_dsn)
        try:
            assert _partition(OLD) in await _partitions(plain)
            back = await world.receipts(plain, (1, 2))
            assert {k: v for k, v in back.items() if k != (DEVICES[1], 2)} == {
                k: v for k, v in before.items() if k != (DEVICES[1], 2)
            }
            erased = await plain.receipt(DEVICES[1], 2)
            assert erased.status == "erased"
            records = await plain.archives()
            assert records[0].state == "restored"
        finally:
            await plain.close()

    _run(restored())
    report = _run(run_audit(db_dsn, log_verifiers=[SIGNER.verifier], progress=None))
    assert report.ok and report.archives == 0 and report.erased == 1, report.divergences


def _fields(line: af.BatchLine) -> dict[str, Any]:
    return {f: getattr(line, f) for f in af.BatchLine.__slots__}  # type: ignore[attr-defined]


class Crash(Exception):
    pass


@pytest.mark.parametrize("step", ["partition", "file", "verified", "detached"])
def test_a_crash_between_steps_leaves_the_month_whole_and_a_rerun_finishes(
    db_dsn: str, tmp_path: Path, step: str
) -> None:
    async def body() -> None:
        world = await _world(db_dsn)
        store = world.store
        try:
            before = await world.receipts(store, (3,))

            def crash(name: str) -> None:
                if name == step:
                    raise Crash(name)

            with pytest.raises(Crash):
                await store.archive_month(_name(MID), tmp_path, after_step=crash)
            # Still in the database, served from it, and no record.
            assert _partition(MID) in await _partitions(store)
            assert await store.archives() == []
            assert await world.receipts(store, (3,)) == before
            record, now = await store.archive_month(_name(MID), tmp_path)
            assert now and record.batches == 1 and record.readings == 6
            assert _partition(MID) not in await _partitions(store)
            store.use_archive_dir(tmp_path)
            assert await world.receipts(store, (3,)) == before
            # Refused: the current month, and (until anchored) the unanchored batch's month.
            with pytest.raises(StoreError) as err:
                await store.archive_month(_name(CUR), tmp_path)
            assert err.value.reason == Reason.CONFLICT
        finally:
            await store.close()
        report = await run_audit(
            db_dsn, log_verifiers=[SIGNER.verifier], archive_dir=tmp_path, progress=None
        )
        assert report.ok, report.divergences

    _run(body())


def test_unanchored_month_is_refused_unless_allowed(db_dsn: str, tmp_path: Path) -> None:
    async def body() -> None:
        # No partitions made for the old months: their batches are in the default partition.
        world = await _world(db_dsn, partitions=False)
        store = world.store
        try:
            assert _partition(OLD) not in await _partitions(store)
            async with store.connection() as conn:
                await conn.execute("DELETE FROM anchors")
            before = await world.receipts(store, (1, 2))
            with pytest.raises(StoreError) as err:
                await store.archive_month(_name(OLD), tmp_path)
            assert err.value.reason == Reason.ARCHIVE_UNANCHORED
            assert await store.archives() == []
            assert await world.receipts(store, (1, 2)) == before
            record, now = await store.archive_month(_name(OLD), tmp_path, allow_unanchored=True)
            assert now and record.readings == 12
            assert _partition(OLD) not in await _partitions(store)
            async with store.connection() as conn:
                assert (
                    await conn.fetchval(
                        "SELECT count(*) FROM reading_batches WHERE batch_id IN (1, 2)"
                    )
                    == 0
                )
            store.use_archive_dir(tmp_path)
            assert await world.receipts(store, (1, 2)) == before
            # Restored into a partition of its own (not the default one).
            _, now = await store.restore_month(_name(OLD), tmp_path)
            assert now and _partition(OLD) in await _partitions(store)
            reader = store.archive_reader
            store.use_archive_dir(None)
            assert await world.receipts(store, (1, 2)) == before
            # Erased in the database, archived again under the same file name: a reader that
            # cached the first file's lines serves the new file (cached by name AND SHA-256).
            await erase_reading(store, DEVICES[0], 1, actor="dpo", legal_reason="GDPR")
            record, now = await store.archive_month(_name(OLD), tmp_path, allow_unanchored=True)
            assert now and record.file == f"{_name(OLD)}.jsonl.gz"
            store.archive_reader = reader
            erased = await store.receipt(DEVICES[0], 1)
            assert erased.status == "erased" and erased.envelope == b""
        finally:
            await store.close()

    _run(body())


def test_the_api_serves_archived_receipts_from_the_file_or_answers_reading_archived(
    db_dsn: str, tmp_path: Path
) -> None:
    from aiohttp import ClientSession, web

    from anchor.api.app import ApiContext, create_app
    from anchor.host.config import Settings
    from anchor.local import free_port

    async def body() -> list[tuple[int, bytes]]:
        world = await _world(db_dsn)
        store = world.store
        out: list[tuple[int, bytes]] = []
        try:
            before = await world.receipts(store, (1,))
            _, now = await store.archive_month(_name(OLD), tmp_path)
            assert now
            for directory in (None, tmp_path):
                served = await Store.connect(db_dsn)
                served.use_archive_dir(directory)
                app = create_app(ApiContext(store=served, settings=Settings(database_url=db_dsn)))
                runner = web.AppRunner(app)
                await runner.setup()
                port = free_port()
                await web.TCPSite(runner, "127.0.0.1", port).start()
                try:
                    async with (
                        ClientSession() as http,
                        http.get(f"http://127.0.0.1:{port}/v1/receipts/{DEVICES[0]}/1") as resp,
                    ):
                        out.append((resp.status, await resp.read()))
                finally:
                    await runner.cleanup()
                    await served.close()
            out.append((0, before[(DEVICES[0], 1)]))
        finally:
            await store.close()
        return out

    (gone, body_gone), (ok, body_ok), (_, before) = _run(body())
    problem = json.loads(body_gone)
    assert gone == 410 and problem["reason"] == "reading_archived"
    assert problem["type"] == "/problems/reading_archived"
    assert _name(OLD) in problem["detail"] and f"{_name(OLD)}.jsonl.gz" in problem["detail"]
    assert ok == 200 and body_ok == before


def test_an_erasure_while_the_month_is_being_archived_makes_it_run_again(
    db_dsn: str, tmp_path: Path
) -> None:
    import threading

    def erase_elsewhere() -> None:
        async def erase() -> None:
            other = await Store.connect(db_dsn)
            try:
                await erase_reading(other, DEVICES[0], 7, actor="dpo", legal_reason="GDPR")
            finally:
                await other.close()

        thread = threading.Thread(target=lambda: asyncio.run(erase()))
        thread.start()
        thread.join()

    async def body() -> None:
        world = await _world(db_dsn)
        store = world.store
        try:
            # Erased after the file was written and checked, before the partition is dropped.
            with pytest.raises(StoreError) as err:
                await store.archive_month(
                    _name(MID),
                    tmp_path,
                    after_step=lambda step: erase_elsewhere() if step == "verified" else None,
                )
            assert err.value.reason == Reason.DB_BUSY and err.value.retryable
            assert await store.archives() == []
            record, now = await store.archive_month(_name(MID), tmp_path)
            assert now
            manifest = af.parse_manifest((tmp_path / f"{_name(MID)}.manifest.json").read_bytes())
            (line,) = [x for _, x in af.iter_members(tmp_path / record.file, manifest)]
            assert line.erased == (0,) and not any(line.envelope(0))
            store.use_archive_dir(tmp_path)
            erased = await store.receipt(DEVICES[0], 7)
            assert erased.status == "erased"
            world.valid(erased)
        finally:
            await store.close()

    _run(body())
