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
        leaf, path = packed.block_path(block, index, upper, root)
        assert leaf == leaves[index]
        assert path == merkle.inclusion_proof(leaves, index)
        merkle.verify_inclusion(leaf, index, size, path, root)


def test_block_path_refuses_an_index_outside_its_block() -> None:
    leaves = _leaves(20)
    root, upper = packed.upper_levels(leaves)
    with pytest.raises(merkle.ProofError):
        packed.block_path(b"".join(leaves[16:]), 16 + 4, upper, root)


@pytest.mark.parametrize("size", [5, 16, 40, 100])
def test_a_changed_stored_leaf_is_refused(size: int) -> None:
    leaves = _leaves(size)
    root, upper = packed.upper_levels(leaves)
    for index in (0, size - 1):
        base = index & ~(packed.BLOCK - 1)
        block = bytearray(b"".join(leaves[base : base + packed.BLOCK]))
        block[-1] ^= 1  # the block's last leaf, whichever the asked one is
        with pytest.raises(merkle.ProofError):
            packed.block_path(bytes(block), index, upper, root)


def test_envelope_format_is_read_from_the_bytes() -> None:
    assert packed.envelope_format(b"\xd2\x84rest") == FORMAT_COSE
    assert packed.envelope_format(b"eyJhbGciOiJFZERTQSJ9.e30.c2ln") == FORMAT_JWS
    # Zeros (an erased envelope) or damaged bytes: no format of their own.
    assert packed.envelope_format(bytes(40)) == FORMAT_COSE
