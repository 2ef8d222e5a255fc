"""The archive file of one month (``cityanchor archive``, sql/010_archives.sql): the format, its
checks, and the durable writes and reads of its files.

A month's file (``<month>.jsonl.gz``; ``<month>.g<N>.jsonl.gz`` after the N-th erasure rewrote
it) is gzip-compressed JSON lines, one line per batch in log order, each line its own gzip
member: a gzip reader reads the file whole (multi-member gzip, RFC 1952), and a receipt reads
one batch by seeking to its member (offset and length are in the manifest), not the month.
A line is the batch's ``reading_batches`` row (sql/009) as it was, byte for byte, and its
``batches`` row::

    {"batch_id": 7, "sealed_at": "2026-01-05T10:00:00.123456+00:00", "received_min": ...,
     "log_index": 6, "size": 1000, "root": "<hex>", "leaves": "<base64>", "ends": "<base64>",
     "envelopes": "<base64>", "erased": [3, 17]}

``erased`` lists the batch indexes whose envelope bytes are zeros because the reading was
erased (the tombstone in ``reading_erasures`` is what says so; the list lets the file be
checked on its own). The manifest ``<month>.manifest.json`` names the file, its SHA-256 and
size, the counts, the log range and each batch's (batch_id, log_index, size, root) with its
member's place.

The pure part (encode, decode, check, manifest) has no I/O; :func:`write_durably`,
:func:`read_member` and :func:`file_sha256` are the only file operations.
"""

from __future__ import annotations

import base64
import binascii
import collections
import gzip
import hashlib
import json
import os
import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from anchor import merkle
from anchor.errors import Reason
from anchor.store.errors import StoreError
from anchor.store.packed import split_envelopes, split_leaves

__all__ = [
    "MANIFEST_FORMAT",
    "ArchiveFormatError",
    "ArchiveReader",
    "BatchLine",
    "Manifest",
    "ManifestBatch",
    "build_manifest",
    "check_line",
    "data_file_name",
    "decode_line",
    "encode_line",
    "erase_in_line",
    "file_sha256",
    "iter_members",
    "manifest_name",
    "parse_manifest",
    "place",
    "read_member",
    "write_durably",
]

MANIFEST_FORMAT = "cityanchor/archive-manifest/v1"


class ArchiveFormatError(ValueError):
    """An archive file or manifest that does not parse or does not check out."""


@dataclass(frozen=True, slots=True)
class BatchLine:
    """One batch of an archived month: its packed row and its ``batches`` row."""

    batch_id: int
    sealed_at: datetime
    received_min: datetime
    log_index: int
    size: int
    root: bytes
    leaves: bytes
    ends: bytes
    envelopes: bytes
    erased: tuple[int, ...] = ()

    @property
    def readings(self) -> int:
        return len(self.ends) // 4

    def envelope(self, index: int) -> bytes:
        """The stored bytes of the reading at ``index`` (zeros once erased)."""
        return split_envelopes(self.ends, self.envelopes)[index]


@dataclass(frozen=True, slots=True)
class ManifestBatch:
    batch_id: int
    log_index: int
    size: int
    root: bytes
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class Manifest:
    month: str
    file: str
    sha256: bytes
    bytes: int
    batches: tuple[ManifestBatch, ...]
    readings: int
    log_from: int
    log_to: int
    created_at: str

    def batch(self, batch_id: int) -> ManifestBatch | None:
        return next((b for b in self.batches if b.batch_id == batch_id), None)


def data_file_name(month: str, generation: int = 0) -> str:
    """``2026-01.jsonl.gz``; after the N-th rewrite (erasure) ``2026-01.gN.jsonl.gz``: a new
    name, so the old file stays whole until the database points at the new one."""
    return f"{month}.jsonl.gz" if generation == 0 else f"{month}.g{generation}.jsonl.gz"


def manifest_name(month: str) -> str:
    return f"{month}.manifest.json"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise ArchiveFormatError(f"{what} is not a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ArchiveFormatError(f"{what} is not base64: {exc}") from exc


def encode_line(line: BatchLine) -> bytes:
    """The batch as its own gzip member (mtime 0: the same batch always gives the same bytes)."""
    doc = {
        "batch_id": line.batch_id,
        "sealed_at": line.sealed_at.isoformat(),
        "received_min": line.received_min.isoformat(),
        "log_index": line.log_index,
        "size": line.size,
        "root": line.root.hex(),
        "leaves": _b64(line.leaves),
        "ends": _b64(line.ends),
        "envelopes": _b64(line.envelopes),
        "erased": sorted(line.erased),
    }
    text = json.dumps(doc, separators=(",", ":")) + "\n"
    return gzip.compress(text.encode("ascii"), compresslevel=6, mtime=0)


def decode_line(member: bytes) -> BatchLine:
    """A batch from its gzip member (raises :class:`ArchiveFormatError`)."""
    try:
        doc = json.loads(gzip.decompress(member))
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise ArchiveFormatError(f"batch line does not decompress and parse: {exc}") from exc
    if not isinstance(doc, dict):
        raise ArchiveFormatError("batch line is not a JSON object")
    try:
        ints = {k: doc[k] for k in ("batch_id", "log_index", "size")}
        if not all(type(v) is int for v in ints.values()):
            raise ArchiveFormatError("batch_id, log_index and size must be integers")
        erased = doc["erased"]
        if not isinstance(erased, list) or not all(type(i) is int for i in erased):
            raise ArchiveFormatError("erased must be a list of integers")
        return BatchLine(
            batch_id=ints["batch_id"],
            sealed_at=datetime.fromisoformat(doc["sealed_at"]),
            received_min=datetime.fromisoformat(doc["received_min"]),
            log_index=ints["log_index"],
            size=ints["size"],
            root=bytes.fromhex(doc["root"]),
            leaves=_unb64(doc["leaves"], "leaves"),
            ends=_unb64(doc["ends"], "ends"),
            envelopes=_unb64(doc["envelopes"], "envelopes"),
            erased=tuple(erased),
        )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ArchiveFormatError):
            raise
        raise ArchiveFormatError(f"batch line is missing or has a bad member: {exc}") from exc


def check_line(line: BatchLine, hasher: merkle.Hasher = merkle.SHA256) -> str | None:
    """What is wrong with a batch line on its own, or None: its leaves must recompute to its
    root, every envelope not listed erased must hash to its leaf, every erased one be zeros."""
    leaves = split_leaves(line.leaves)
    if len(line.leaves) % 32 or len(leaves) != line.size or line.readings != line.size:
        n = line.readings
        return f"batch {line.batch_id}: {len(leaves)} leaves, {n} ends, size {line.size}"
    if merkle.root(leaves, hasher=hasher) != line.root:
        return f"batch {line.batch_id}: its leaves do not recompute to its root"
    try:
        slots = split_envelopes(line.ends, line.envelopes)
    except struct.error:  # a malformed ends value, reported as such
        return f"batch {line.batch_id}: bad envelope offsets"
    if slots and len(line.envelopes) != int.from_bytes(line.ends[-4:], "big"):
        return f"batch {line.batch_id}: envelope bytes do not end where the offsets say"
    erased = set(line.erased)
    if not erased <= set(range(line.size)):
        return f"batch {line.batch_id}: erased index out of range"
    for i, (env, leaf) in enumerate(zip(slots, leaves, strict=True)):
        if i in erased:
            if any(env):
                return f"batch {line.batch_id} index {i}: listed erased but not zeros"
        elif merkle.leaf_hash(env, hasher=hasher) != leaf:
            return f"batch {line.batch_id} index {i}: envelope does not hash to its leaf"
    return None


def erase_in_line(line: BatchLine, index: int) -> BatchLine:
    """The batch with reading ``index``'s envelope bytes zeroed (same length: no offset moves)
    and ``index`` listed erased."""
    ends = split_envelopes(line.ends, line.envelopes)
    lo = sum(len(e) for e in ends[:index])
    hi = lo + len(ends[index])
    envelopes = line.envelopes[:lo] + bytes(hi - lo) + line.envelopes[hi:]
    return replace(line, envelopes=envelopes, erased=tuple(sorted({*line.erased, index})))


def place(line: BatchLine, offset: int, length: int) -> ManifestBatch:
    """The manifest's entry of a batch whose member is at ``offset`` (``length`` bytes)."""
    return ManifestBatch(line.batch_id, line.log_index, line.size, line.root, offset, length)


def build_manifest(
    month: str,
    file: str,
    *,
    entries: Sequence[ManifestBatch],
    sha256: bytes,
    size: int,
    created_at: str,
) -> bytes:
    """The manifest of a file whose batches are ``entries``, in file order."""
    if not entries:
        raise ArchiveFormatError("an archive holds at least one batch")
    doc = {
        "format": MANIFEST_FORMAT,
        "month": month,
        "file": file,
        "sha256": sha256.hex(),
        "bytes": size,
        "batches": len(entries),
        "readings": sum(e.size for e in entries),
        "log_from": min(e.log_index for e in entries),
        "log_to": max(e.log_index for e in entries),
        "batch_roots": [
            {
                "batch_id": e.batch_id,
                "log_index": e.log_index,
                "size": e.size,
                "root": e.root.hex(),
                "offset": e.offset,
                "length": e.length,
            }
            for e in entries
        ],
        "created_at": created_at,
    }
    return (json.dumps(doc, indent=1) + "\n").encode("utf-8")


def parse_manifest(data: bytes) -> Manifest:
    """A manifest's contents (raises :class:`ArchiveFormatError`)."""
    try:
        doc = json.loads(data)
        if doc["format"] != MANIFEST_FORMAT:
            raise ArchiveFormatError(f"manifest format {doc['format']!r} is not {MANIFEST_FORMAT}")
        batches = tuple(
            ManifestBatch(
                int(b["batch_id"]),
                int(b["log_index"]),
                int(b["size"]),
                bytes.fromhex(b["root"]),
                int(b["offset"]),
                int(b["length"]),
            )
            for b in doc["batch_roots"]
        )
        manifest = Manifest(
            month=str(doc["month"]),
            file=str(doc["file"]),
            sha256=bytes.fromhex(doc["sha256"]),
            bytes=int(doc["bytes"]),
            batches=batches,
            readings=int(doc["readings"]),
            log_from=int(doc["log_from"]),
            log_to=int(doc["log_to"]),
            created_at=str(doc["created_at"]),
        )
    except ArchiveFormatError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise ArchiveFormatError(f"manifest does not parse: {exc!r}") from exc
    if len(batches) != int(doc["batches"]) or sum(b.size for b in batches) != manifest.readings:
        raise ArchiveFormatError("manifest counts disagree with its batch list")
    return manifest


# ------------------------------------------------------------------------------------- files


_BATCH_CACHE = 64


def _invalid(detail: str) -> StoreError:
    return StoreError(detail, reason=Reason.ARCHIVE_INVALID)


class ArchiveReader:
    """Reads archived batches from one directory for receipts: each month's manifest once per
    file (name and SHA-256, as the database records them: a file archived again after a restore
    keeps its name, not its contents), and the last :data:`_BATCH_CACHE` batch lines."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._manifests: dict[tuple[str, bytes], Manifest] = {}
        self._lines: collections.OrderedDict[tuple[str, bytes, int], BatchLine] = (
            collections.OrderedDict()
        )

    def manifest(self, month: str, file: str, sha256: bytes) -> Manifest:
        cached = self._manifests.get((file, sha256))
        if cached is not None:
            return cached
        path = self.directory / manifest_name(month)
        try:
            manifest = parse_manifest(path.read_bytes())
        except (OSError, ArchiveFormatError) as exc:
            raise _invalid(f"archive manifest {path}: {exc}") from exc
        if (manifest.file, manifest.sha256) != (file, sha256):
            raise _invalid(f"archive manifest {path} names {manifest.file}, not the database's")
        self._manifests[(file, sha256)] = manifest
        return manifest

    def batch(self, month: str, file: str, sha256: bytes, batch_id: int) -> BatchLine:
        key = (file, sha256, batch_id)
        line = self._lines.get(key)
        if line is not None:
            self._lines.move_to_end(key)
            return line
        entry = self.manifest(month, file, sha256).batch(batch_id)
        if entry is None:
            raise _invalid(f"archive {file}: its manifest has no batch {batch_id}")
        try:
            line = read_member(self.directory / file, entry.offset, entry.length)
        except (OSError, ArchiveFormatError) as exc:
            raise _invalid(f"archive {self.directory / file}: batch {batch_id}: {exc}") from exc
        if line.batch_id != batch_id:
            raise _invalid(f"archive {file}: batch {batch_id}'s place holds {line.batch_id}")
        self._lines[key] = line
        if len(self._lines) > _BATCH_CACHE:
            self._lines.popitem(last=False)
        return line


def write_durably(path: Path, chunks: Iterable[bytes]) -> tuple[bytes, int]:
    """Write ``chunks`` to ``path`` so that it exists whole or not at all: a temporary file in
    the same directory, fsync, rename, fsync of the directory. Returns its SHA-256 and size."""
    tmp = path.with_name(path.name + ".tmp")
    digest = hashlib.sha256()
    size = 0
    with open(tmp, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
            digest.update(chunk)
            size += len(chunk)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return digest.digest(), size


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: Path) -> tuple[bytes, int]:
    """The SHA-256 and size of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.digest(), size


def read_member(path: Path, offset: int, length: int) -> BatchLine:
    """The batch whose gzip member is at ``offset`` (``length`` bytes) of ``path``."""
    with open(path, "rb") as f:
        f.seek(offset)
        member = f.read(length)
    if len(member) != length:
        raise ArchiveFormatError(f"{path.name}: batch member at {offset} is cut short")
    return decode_line(member)


def iter_members(path: Path, manifest: Manifest) -> Iterator[tuple[ManifestBatch, BatchLine]]:
    """Each batch of the file, by the manifest's places, in order."""
    for entry in manifest.batches:
        yield entry, read_member(path, entry.offset, entry.length)
