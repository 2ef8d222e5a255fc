"""anchor.store.packed: the packed row of a batch (sql/009) and batch paths built from 16 stored
leaves plus the cached upper levels of the batch's tree."""

from __future__ import annotations

import hashlib
import struct

import pytest

from anchor import merkle
from anchor.envelope import FORMAT_COSE, FORMAT_JWS
from anchor.store import packed


def _leaves(n: int) -> list[bytes]:
    return [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(n)]


def test_pack_and_split_round_trip() -> None:
    envelopes = [b"\xd2abc", b"", b"x" * 300, b"eyJ.a.b"]
    leaves = _leaves(4)
    packed_leaves, ends, blob = packed.pack(envelopes, leaves)
    assert packed_leaves == b"".join(leaves) and blob == b"".join(envelopes)
    assert struct.unpack(">4I", ends) == (4, 4, 304, 311)
    assert packed.split_envelopes(ends, blob) == envelopes
    assert packed.split_leaves(packed_leaves) == leaves
    with pytest.raises(ValueError):
        packed.pack(envelopes, leaves[:3])


@pytest.mark.parametrize("size", [1, 2, 3, 7, 8, 15, 16, 17, 31, 33, 100, 257, 1000])
def test_block_path_is_the_rfc9162_path_for_every_leaf(size: int) -> None:
    leaves = _leaves(size)
    root, upper = packed.upper_levels(leaves)
    assert root == merkle.root(leaves)
    blob = b"".join(leaves)
    for index in range(size):
        base = index & ~(packed.BLOCK - 1)
        block = blob[32 * base : 32 * (base + packed.BLOCK)]  # as BLOCK_SQL reads it
        leaf, path = packed.block_path(block, index, upper)
        assert leaf == leaves[index]
        assert path == merkle.inclusion_proof(leaves, index)
        merkle.verify_inclusion(leaf, index, size, path, root)


def test_block_path_refuses_an_index_outside_its_block() -> None:
    leaves = _leaves(20)
    _, upper = packed.upper_levels(leaves)
    with pytest.raises(merkle.ProofError):
        packed.block_path(b"".join(leaves[16:]), 16 + 4, upper)


def test_a_wrong_upper_level_gives_a_path_that_fails_the_root() -> None:
    leaves = _leaves(100)
    root, _ = packed.upper_levels(leaves)
    _, other = packed.upper_levels(_leaves(101)[1:])
    blob = b"".join(leaves)
    leaf, path = packed.block_path(blob[32 * 32 : 32 * 48], 40, other)
    with pytest.raises(merkle.ProofError):
        merkle.verify_inclusion(leaf, 40, 100, path, root)


def test_envelope_format_is_read_from_the_bytes() -> None:
    assert packed.envelope_format(b"\xd2\x84rest") == FORMAT_COSE
    assert packed.envelope_format(b"eyJhbGciOiJFZERTQSJ9.e30.c2ln") == FORMAT_JWS
    # Zeros (an erased envelope) or damaged bytes: no format of their own.
    assert packed.envelope_format(bytes(40)) == FORMAT_COSE
