"""Packed reading storage (sql/009_packed_readings.sql): one ``reading_batches`` row per batch.

A batch's row holds its leaf hashes (32 bytes each, batch order), its envelopes concatenated,
and the end offset of each envelope (uint32 big-endian), all stored out of line uncompressed,
so a statement reads one reading's envelope and a few of its batch's leaves with substring()
and PostgreSQL fetches only those TOAST chunks. This module is the pure part: packing and
unpacking, the SQL fragments the store's statements share, and building a batch path from the
16 leaves around a reading (:data:`BLOCK`) plus the batch tree's levels above them, which the
receipt cache keeps per batch (126 hashes for a 1,000-reading batch; the whole tree has 2,000).

An erased envelope's bytes are zeros (or, erased before 009, empty); whether a reading is erased
is decided by its tombstone in ``reading_erasures``, never by the bytes alone.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from anchor import merkle
from anchor.envelope import FORMAT_COSE, MalformedEnvelope, detect_format

__all__ = [
    "BLOCK",
    "BLOCK_SQL",
    "ENVELOPE_SQL",
    "LEAF_SQL",
    "OFFSETS_SQL",
    "PACKED_JOIN",
    "PACKED_ROW",
    "SEQS",
    "block_path",
    "envelope_format",
    "pack",
    "split_envelopes",
    "split_leaves",
    "upper_levels",
]

BLOCK_LEVELS = 4
BLOCK = 1 << BLOCK_LEVELS
"""Leaves a receipt lookup reads around its reading: levels 0-3 of its path are built from them,
the levels above come from the batch's cached :func:`upper_levels`."""

_HASH = 32

# With ``s`` a reading_seqs row and ``p`` its batch's reading_batches row: ``o.lo`` and ``o.hi``,
# the envelope's offsets in p.envelopes, from ONE 8-byte slice of p.ends (OFFSET 0 keeps the
# planner from copying the slice into each use, which would read the TOAST chunk three times).
OFFSETS_SQL = """CROSS JOIN LATERAL (
    SELECT CASE WHEN s.batch_index = 0 THEN 0
                ELSE ('x' || encode(substring(x.e FROM 1 FOR 4), 'hex'))::bit(32)::int END AS lo,
           ('x' || encode(substring(x.e FROM CASE WHEN s.batch_index = 0 THEN 1 ELSE 5 END
               FOR 4), 'hex'))::bit(32)::int AS hi
    FROM (SELECT substring(p.ends FROM greatest(4 * s.batch_index - 3, 1) FOR 8) AS e
          OFFSET 0) AS x) AS o"""
ENVELOPE_SQL = "substring(p.envelopes FROM o.lo + 1 FOR o.hi - o.lo)"
LEAF_SQL = "substring(p.leaves FROM 32 * s.batch_index + 1 FOR 32)"
BLOCK_SQL = f"substring(p.leaves FROM 32 * (s.batch_index & ~{BLOCK - 1}) + 1 FOR {_HASH * BLOCK})"
# A reading_seqs row ``s`` with its device ``d`` (reading_seqs keys a device by its number).
SEQS = "reading_seqs s JOIN devices d ON d.num = s.device_num"
# The packed row ``p`` of batch ``{b}`` (a ``batches`` row joined before it): a LATERAL probe
# (OFFSET 0 keeps the planner from flattening it) so that b.sealed_at, p's partition key, is a
# parameter and PostgreSQL prunes to one partition at run time instead of probing every month.
PACKED_ROW = (
    "CROSS JOIN LATERAL (SELECT p.batch_id, p.sealed_at, p.leaves, p.ends, p.envelopes "
    "FROM reading_batches p WHERE p.batch_id = {b}.id AND p.sealed_at = {b}.sealed_at "
    "OFFSET 0) AS p"
)
# reading_seqs ``s`` -> its batch ``bt`` -> its packed row ``p``.
PACKED_JOIN = "JOIN batches bt ON bt.id = s.batch_id " + PACKED_ROW.format(b="bt")


def pack(envelopes: Sequence[bytes], leaves: Sequence[bytes]) -> tuple[bytes, bytes, bytes]:
    """``(leaves, ends, envelopes)`` of a batch's row, both sequences in batch order."""
    if len(envelopes) != len(leaves):
        raise ValueError("one leaf per envelope")
    ends = []
    end = 0
    for e in envelopes:
        end += len(e)
        ends.append(end)
    return b"".join(leaves), struct.pack(f">{len(ends)}I", *ends), b"".join(envelopes)


def split_leaves(leaves: bytes) -> list[bytes]:
    """The 32-byte leaf hashes of a ``leaves`` value (or slice of one), in order."""
    return [leaves[i : i + _HASH] for i in range(0, len(leaves), _HASH)]


def split_envelopes(ends: bytes, envelopes: bytes) -> list[bytes]:
    """The stored envelope of each reading of a batch, in batch order (an erased one: zero
    bytes, or empty)."""
    out = []
    start = 0
    for (end,) in struct.iter_unpack(">I", ends):
        out.append(envelopes[start:end])
        start = end
    return out


def envelope_format(raw: bytes) -> str:
    """The stored envelope's format (``cose-sign1`` / ``jws``), read from its bytes: 008 stored
    it per reading, 009 reads it where it is needed. Bytes of no known format (only a damaged
    or tampered envelope: every sealed one parsed) are reported as COSE; their receipt then
    fails its leaf check, which is what shows the damage."""
    try:
        return detect_format(raw)
    except MalformedEnvelope:
        return FORMAT_COSE


def upper_levels(
    leaves: Sequence[bytes], hasher: merkle.Hasher = merkle.SHA256
) -> tuple[bytes, tuple[tuple[bytes, ...], ...]]:
    """The batch's root and the levels of its tree from level :data:`BLOCK_LEVELS` up (root
    level included): what :func:`block_path` needs besides the reading's 16 leaves."""
    levels = merkle.tree_levels(leaves, hasher=hasher)
    return levels[-1][0], tuple(tuple(level) for level in levels[BLOCK_LEVELS:])


def block_path(
    block: bytes,
    index: int,
    upper: Sequence[Sequence[bytes]],
    root: bytes,
    hasher: merkle.Hasher = merkle.SHA256,
) -> tuple[bytes, list[bytes]]:
    """The leaf and RFC 9162 audit path of leaf ``index`` from the batch's leaves in its block
    (``index & ~15`` on, as :data:`BLOCK_SQL` reads them), :func:`upper_levels` and the batch
    ``root`` they were checked against.

    In the tree the levels are built by pairing (a last odd node is carried up), so below level
    4 a node and its sibling lie in the same aligned block of 16 leaves, and the block's own
    tree has the same nodes there; its root is the tree's node above them (level 4, or the
    batch root in a batch of at most 16). That node is checked: so the path, made of the
    block's nodes and of levels already checked against the root, leads to the root. Raises
    ``ProofError`` when it does not (stored leaves that are not the sealed ones).
    """
    base = index & ~(BLOCK - 1)
    local = index - base
    leaves = split_leaves(block)
    if not 0 <= local < len(leaves):
        raise merkle.ProofError(f"index {index} is outside its stored block")
    levels = merkle.tree_levels(leaves, hasher=hasher)
    expected = upper[0][index >> BLOCK_LEVELS] if upper else root
    if levels[-1][0] != expected:
        raise merkle.ProofError(f"the stored leaves around {index} do not lead to the root")
    path = []
    for k in range(BLOCK_LEVELS):
        sibling = (local >> k) ^ 1
        if k < len(levels) - 1 and sibling < len(levels[k]):
            path.append(levels[k][sibling])
    for k, level in enumerate(upper[:-1], start=BLOCK_LEVELS):
        sibling = (index >> k) ^ 1
        if sibling < len(level):
            path.append(level[sibling])
    return leaves[local], path
