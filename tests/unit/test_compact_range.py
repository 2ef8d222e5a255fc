"""Compact ranges: appending leaf by leaf gives the same roots as building the tree."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anchor import merkle


def test_compact_range_matches_root_for_every_size_up_to_300() -> None:
    leaves: list[bytes] = []
    frontier: list[bytes] = []
    for n in range(300):
        assert merkle.compact_root(frontier) == merkle.root(leaves)
        assert len(frontier) == n.bit_count()
        leaf = merkle.leaf_hash(n.to_bytes(4, "big"))
        frontier = merkle.compact_append(frontier, n, leaf)
        leaves.append(leaf)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=200))
def test_compact_range_sm3(leaves: list[bytes]) -> None:
    frontier: list[bytes] = []
    for n, leaf in enumerate(leaves):
        frontier = merkle.compact_append(frontier, n, leaf, hasher=merkle.SM3)
    assert merkle.compact_root(frontier, hasher=merkle.SM3) == merkle.root(
        leaves, hasher=merkle.SM3
    )


def test_compact_append_rejects_a_range_of_the_wrong_size() -> None:
    with pytest.raises(merkle.ProofError) as exc:
        merkle.compact_append([bytes(32)], 3, bytes(32))
    assert exc.value.reason == "proof_malformed"
