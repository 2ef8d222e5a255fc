"""The archive file format of ``cityanchor archive`` (anchor.store.archive_file): a batch line
round-trips byte for byte, the file reads whole as one gzip stream and batch by batch by the
manifest's places, and every check catches what it is for."""

from __future__ import annotations

import dataclasses
import gzip
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from anchor import merkle
from anchor.api.context import status_for
from anchor.errors import Reason
from anchor.store import archive_file as af
from anchor.store.archives import month_bounds, parse_month
from anchor.store.packed import pack

WHEN = datetime(2026, 1, 5, 10, 0, 0, 123456, tzinfo=UTC)


def _line(batch_id: int = 7, n: int = 5, log_index: int = 6) -> af.BatchLine:
    envelopes = [f"envelope {batch_id}-{i} ".encode() * (i + 1) for i in range(n)]
    leaves = [merkle.leaf_hash(e) for e in envelopes]
    packed_leaves, ends, joined = pack(envelopes, leaves)
    return af.BatchLine(
        batch_id, WHEN, WHEN.replace(microsecond=5), log_index, n, merkle.root(leaves),
        packed_leaves, ends, joined,
    )  # fmt: skip


def test_a_batch_line_round_trips_and_checks() -> None:
    line = _line()
    member = af.encode_line(line)
    assert af.encode_line(line) == member  # mtime 0: the same batch, the same bytes
    assert af.decode_line(member) == line
    assert af.check_line(line) is None
    doc = json.loads(gzip.decompress(member))
    assert set(doc) == {
        "batch_id", "sealed_at", "received_min", "log_index", "size", "root", "leaves", "ends",
        "envelopes", "erased",
    }  # fmt: skip
    assert line.envelope(2) == b"envelope 7-2 " * 3


def test_checks_catch_a_changed_envelope_root_size_and_false_erasure() -> None:
    line = _line()
    env = bytearray(line.envelopes)
    env[3] ^= 1
    assert "does not hash to its leaf" in (
        af.check_line(dataclasses.replace(line, envelopes=bytes(env))) or ""
    )
    assert "root" in (af.check_line(dataclasses.replace(line, root=b"\0" * 32)) or "")
    assert af.check_line(dataclasses.replace(line, size=4)) is not None
    assert "not zeros" in (af.check_line(dataclasses.replace(line, erased=(1,))) or "")
    assert af.check_line(dataclasses.replace(line, erased=(9,))) is not None


def test_erasure_zeroes_one_envelope_and_keeps_the_rest() -> None:
    line = _line()
    erased = af.erase_in_line(line, 2)
    assert erased.erased == (2,) and len(erased.envelopes) == len(line.envelopes)
    assert erased.envelope(2) == bytes(len(line.envelope(2)))
    assert [erased.envelope(i) for i in (0, 1, 3, 4)] == [line.envelope(i) for i in (0, 1, 3, 4)]
    assert af.check_line(erased) is None
    assert af.decode_line(af.encode_line(erased)) == erased


def test_a_file_reads_whole_and_by_member_and_matches_its_manifest(tmp_path: Path) -> None:
    lines = [_line(1, 3, 0), _line(2, 1, 1), _line(3, 16, 2)]
    members = [af.encode_line(x) for x in lines]
    path = tmp_path / af.data_file_name("2026-01")
    sha, size = af.write_durably(path, members)
    assert (sha, size) == af.file_sha256(path)
    assert not list(tmp_path.glob("*.tmp"))
    whole = gzip.decompress(path.read_bytes()).splitlines()
    assert [json.loads(x)["batch_id"] for x in whole] == [1, 2, 3]
    places, offset = [], 0
    for line, member in zip(lines, members, strict=True):
        places.append(af.place(line, offset, len(member)))
        offset += len(member)
    text = af.build_manifest(
        "2026-01", path.name, entries=places, sha256=sha, size=size, created_at="now"
    )
    manifest = af.parse_manifest(text)
    assert (manifest.batches[2].batch_id, manifest.readings, manifest.log_to) == (3, 20, 2)
    assert (manifest.sha256, manifest.bytes, manifest.file) == (sha, size, "2026-01.jsonl.gz")
    assert [x for _, x in af.iter_members(path, manifest)] == lines
    entry = manifest.batch(2)
    assert entry is not None and af.read_member(path, entry.offset, entry.length) == lines[1]
    # A cut-short or damaged member, a manifest of another format or with wrong counts.
    with pytest.raises(af.ArchiveFormatError):
        af.read_member(path, entry.offset, entry.length + size)
    with pytest.raises(af.ArchiveFormatError):
        af.decode_line(members[0][:-3] + b"xyz")
    doc = json.loads(text)
    with pytest.raises(af.ArchiveFormatError):
        af.parse_manifest(json.dumps({**doc, "format": "other/v9"}).encode())
    with pytest.raises(af.ArchiveFormatError):
        af.parse_manifest(json.dumps({**doc, "readings": 21}).encode())
    with pytest.raises(af.ArchiveFormatError):
        af.parse_manifest(b"{")


def test_names_months_and_the_archived_reason() -> None:
    assert af.data_file_name("2026-01", 2) == "2026-01.g2.jsonl.gz"
    assert af.manifest_name("2026-01") == "2026-01.manifest.json"
    assert month_bounds("2026-12") == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    for bad in ("2026-13", "2026-1", "26-01", "2026/01"):
        with pytest.raises(ValueError):
            parse_month(bad)
    assert status_for(Reason.READING_ARCHIVED) == 410
    assert status_for(Reason.ARCHIVE_INVALID) == 500  # the operator's files, not the request


def test_the_command_refuses_months_not_over_and_bad_months_before_connecting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from anchor.cli.commands import main
    from anchor.cli.parsing import ERROR_PREFIX

    dsn = ["--database-url", "postgresql://nobody@127.0.0.1:1/none"]
    assert main(["archive", "--before", "2999-01", "--dir", str(tmp_path), *dsn]) == 2
    assert capsys.readouterr().err.startswith(f"{ERROR_PREFIX}--before 2999-01 is after")
    assert main(["archive", "--before", "2020-01", "--dir", str(tmp_path / "no"), *dsn]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["archive", *dsn]) == 2
    assert "--before YYYY-MM is needed" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["archive", "--before", "2026-13", *dsn])
    assert exc.value.code == 2 and ERROR_PREFIX in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["archive", "restore", "--dir", str(tmp_path), *dsn])  # --month is required


def _record(file: str, generation: int) -> Any:
    from anchor.store.archives import ArchiveRecord

    return ArchiveRecord(
        "2026-01", file, b"\0" * 32, 1, 1, 1, 0, 0, generation, datetime.now(UTC), None
    )


def _pending(tmp_path: Path, file: str) -> None:
    line = _line()
    member = af.encode_line(line)
    text = af.build_manifest(
        "2026-01", file, entries=[af.place(line, 0, len(member))], sha256=b"\0" * 32,
        size=len(member), created_at="now",
    )  # fmt: skip
    (tmp_path / "2026-01.manifest.json.next").write_bytes(text)


def test_recovery_after_a_crash_in_an_erasure_rewrite(tmp_path: Path) -> None:
    from anchor.store.archives import recover_files

    for name in ("2026-01.jsonl.gz", "2026-01.g1.jsonl.gz", "2026-01.manifest.json"):
        (tmp_path / name).write_bytes(b"x")
    # The database committed the new file: its manifest takes its place, the old file goes.
    _pending(tmp_path, "2026-01.g1.jsonl.gz")
    recover_files(tmp_path, _record("2026-01.g1.jsonl.gz", 1))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "2026-01.g1.jsonl.gz",
        "2026-01.manifest.json",
    ]
    assert af.parse_manifest((tmp_path / "2026-01.manifest.json").read_bytes()).file == (
        "2026-01.g1.jsonl.gz"
    )
    # The database did not commit a newer one: the pending manifest and its file go.
    (tmp_path / "2026-01.g2.jsonl.gz").write_bytes(b"y")
    _pending(tmp_path, "2026-01.g2.jsonl.gz")
    recover_files(tmp_path, _record("2026-01.g1.jsonl.gz", 1))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "2026-01.g1.jsonl.gz",
        "2026-01.manifest.json",
    ]
