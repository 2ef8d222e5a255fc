"""Properties of ``anchor.merkle``: exhaustive for small trees, hypothesis for larger ones.

Every root and proof is compared with ``tests/reference_merkle.py`` (RFC 9162 section 2.1 as
written); every verifier failure is checked by its ``reason``, never by its message.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anchor import merkle
from anchor.merkle import ProofError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import reference_merkle as ref  # tests/ is not a package

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)

MAX_N = 300
# Distinct inputs, so two positions never share a leaf hash; the tree of size n is INPUTS[:n].
INPUTS = [f"reading {i}".encode() for i in range(4096)]
LEAVES = [merkle.leaf_hash(d) for d in INPUTS]
ROOTS = [merkle.root(LEAVES[:n]) for n in range(MAX_N + 1)]


def _flip(value: bytes, bit: int) -> bytes:
    out = bytearray(value)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def _reason(func: Callable[..., object], *args: object) -> str:
    """The ``reason`` of the ``ProofError`` that ``func(*args)`` raises (failing if none)."""
    with pytest.raises(ProofError) as exc:
        func(*args)
    return exc.value.reason


# -- hashing ------------------------------------------------------------------------------------


def test_leaf_and_node_hash_prefixes() -> None:
    a, b = b"\xaa" * 32, b"\xbb" * 32
    assert merkle.leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert merkle.node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest()
    # Domain separation: a 64-byte leaf whose bytes are two child hashes is not that node.
    assert merkle.leaf_hash(a + b) != merkle.node_hash(a, b)


def test_root_of_small_trees() -> None:
    assert merkle.root([]) == hashlib.sha256(b"").digest()
    assert merkle.root(LEAVES[:1]) == LEAVES[0]
    assert merkle.root(LEAVES[:2]) == merkle.node_hash(LEAVES[0], LEAVES[1])
    # Size 3 splits at k = 2: the third leaf is carried up, not paired with itself.
    assert merkle.root(LEAVES[:3]) == merkle.node_hash(
        merkle.node_hash(LEAVES[0], LEAVES[1]), LEAVES[2]
    )


def test_get_hasher() -> None:
    assert merkle.get_hasher("rfc9162-sha256") is merkle.SHA256
    assert merkle.get_hasher("rfc9162-sm3") is merkle.SM3
    assert set(merkle.HASHERS) == {"rfc9162-sha256", "rfc9162-sm3"}
    assert _reason(merkle.get_hasher, "sha1") == "unknown_hash_scheme"


# -- agreement with the reference ---------------------------------------------------------------


def test_roots_equal_reference() -> None:
    for n in range(MAX_N + 1):
        assert ROOTS[n] == ref.mth(INPUTS[:n]), n


def test_inclusion_proofs_equal_reference_exhaustive() -> None:
    for n in range(1, 65):
        proofs = merkle.inclusion_proofs(LEAVES[:n])
        for i in range(n):
            want = ref.path(i, INPUTS[:n])
            assert proofs[i] == want, (n, i)
            assert merkle.inclusion_proof(LEAVES[:n], i) == want, (n, i)


def test_consistency_proofs_equal_reference_exhaustive() -> None:
    for n in range(1, 65):
        for m in range(1, n + 1):
            assert merkle.consistency_proof(LEAVES[:n], m) == ref.proof(m, INPUTS[:n]), (m, n)


@SETTINGS
@given(data=st.lists(st.binary(max_size=40), min_size=1, max_size=300), pick=st.integers(0))
def test_arbitrary_leaves_equal_reference(data: list[bytes], pick: int) -> None:
    # Arbitrary (possibly repeated, possibly empty) leaf inputs, not just our distinct ones.
    leaves = [merkle.leaf_hash(d) for d in data]
    n = len(data)
    i, m = pick % n, pick % n + 1
    assert merkle.root(leaves) == ref.mth(data)
    assert merkle.inclusion_proof(leaves, i) == ref.path(i, data)
    assert merkle.consistency_proof(leaves, m) == ref.proof(m, data)


@SETTINGS
@given(n=st.integers(65, len(INPUTS)), pick=st.integers(0))
def test_large_trees_equal_reference(n: int, pick: int) -> None:
    i, m = pick % n, pick % n + 1
    tree = LEAVES[:n]
    r = merkle.root(tree)
    assert r == ref.mth(INPUTS[:n])
    p = merkle.inclusion_proof(tree, i)
    assert p == ref.path(i, INPUTS[:n])
    merkle.verify_inclusion(tree[i], i, n, p, r)
    c = merkle.consistency_proof(tree, m)
    assert c == ref.proof(m, INPUTS[:n])
    merkle.verify_consistency(m, n, c, merkle.root(tree[:m]), r)


# -- valid proofs verify ------------------------------------------------------------------------


def test_every_inclusion_proof_verifies_up_to_300() -> None:
    for n in range(1, MAX_N + 1):
        tree, r = LEAVES[:n], ROOTS[n]
        proofs = merkle.inclusion_proofs(tree)
        assert len(proofs) == n
        for i, p in enumerate(proofs):
            assert merkle.verify_inclusion(tree[i], i, n, p, r) is None
            assert merkle.root_from_inclusion_proof(tree[i], i, n, p) == r
        # inclusion_proof (one leaf) must agree with inclusion_proofs (all leaves).
        for i in {0, n // 3, n // 2, n - 1}:
            assert merkle.inclusion_proof(tree, i) == proofs[i], (n, i)


def test_every_consistency_proof_verifies_up_to_64() -> None:
    for n in range(0, 65):
        tree = LEAVES[:n]
        for m in range(0, n + 1):
            p = merkle.consistency_proof(tree, m)
            if m in (0, n):
                assert p == []
            assert merkle.verify_consistency(m, n, p, ROOTS[m], ROOTS[n]) is None, (m, n)
            if 0 < m < n:
                assert merkle.root_from_consistency_proof(m, n, p, ROOTS[m]) == ROOTS[n]


def test_proof_lengths_are_logarithmic() -> None:
    for n in (1, 2, 3, 255, 256, 257, 4096):
        depth = (n - 1).bit_length()
        assert max(len(p) for p in merkle.inclusion_proofs(LEAVES[:n])) == depth
    assert len(merkle.consistency_proof(LEAVES[:4096], 1000)) <= 2 * 12


# -- tampering is caught as root_mismatch -------------------------------------------------------

INCLUSION_FLIP_CASES = [(n, i) for n in (1, 2, 3, 7, 8, 9, 300) for i in sorted({0, n // 2, n - 1})]


@pytest.mark.parametrize(("n", "i"), INCLUSION_FLIP_CASES)
def test_inclusion_any_flipped_bit_fails(n: int, i: int) -> None:
    tree, r = LEAVES[:n], ROOTS[n]
    p = merkle.inclusion_proof(tree, i)
    for bit in range(256):
        leaf = _flip(tree[i], bit)
        assert _reason(merkle.verify_inclusion, leaf, i, n, p, r) == "root_mismatch"
        bad_root = _flip(r, bit)
        assert _reason(merkle.verify_inclusion, tree[i], i, n, p, bad_root) == ("root_mismatch")
        for j in range(len(p)):
            bad = [*p[:j], _flip(p[j], bit), *p[j + 1 :]]
            assert _reason(merkle.verify_inclusion, tree[i], i, n, bad, r) == ("root_mismatch")


CONSISTENCY_FLIP_CASES = [
    (1, 1),
    (1, 2),
    (2, 3),
    (3, 7),
    (4, 8),
    (5, 8),
    (6, 7),
    (7, 64),
    (64, 300),
]


@pytest.mark.parametrize(("m", "n"), CONSISTENCY_FLIP_CASES)
def test_consistency_any_flipped_bit_fails(m: int, n: int) -> None:
    p = merkle.consistency_proof(LEAVES[:n], m)
    old, new = ROOTS[m], ROOTS[n]
    for bit in range(256):
        bad_old, bad_new = _flip(old, bit), _flip(new, bit)
        assert _reason(merkle.verify_consistency, m, n, p, bad_old, new) == ("root_mismatch")
        assert _reason(merkle.verify_consistency, m, n, p, old, bad_new) == ("root_mismatch")
        for j in range(len(p)):
            bad = [*p[:j], _flip(p[j], bit), *p[j + 1 :]]
            assert _reason(merkle.verify_consistency, m, n, bad, old, new) == ("root_mismatch")


@SETTINGS
@given(n=st.integers(1, MAX_N), pick=st.integers(0), bit=st.integers(0, 255), where=st.integers(0))
def test_inclusion_random_flipped_bit_fails(n: int, pick: int, bit: int, where: int) -> None:
    i = pick % n
    tree, r = LEAVES[:n], ROOTS[n]
    p = merkle.inclusion_proof(tree, i)
    leaf = tree[i]
    slot = where % (len(p) + 2)
    if slot == len(p):
        leaf = _flip(leaf, bit)
    elif slot == len(p) + 1:
        r = _flip(r, bit)
    else:
        p[slot] = _flip(p[slot], bit)
    assert _reason(merkle.verify_inclusion, leaf, i, n, p, r) == "root_mismatch"


@SETTINGS
@given(n=st.integers(1, MAX_N), pick=st.integers(0), bit=st.integers(0, 255), where=st.integers(0))
def test_consistency_random_flipped_bit_fails(n: int, pick: int, bit: int, where: int) -> None:
    m = pick % n + 1
    p = merkle.consistency_proof(LEAVES[:n], m)
    old, new = ROOTS[m], ROOTS[n]
    slot = where % (len(p) + 2)
    if slot == len(p):
        old = _flip(old, bit)
    elif slot == len(p) + 1:
        new = _flip(new, bit)
    else:
        p[slot] = _flip(p[slot], bit)
    assert _reason(merkle.verify_consistency, m, n, p, old, new) == "root_mismatch"


def test_proof_for_another_index_fails() -> None:
    for n in range(2, 41):
        tree, r = LEAVES[:n], ROOTS[n]
        proofs = merkle.inclusion_proofs(tree)
        for i in range(n):
            for j in range(n):
                if i == j:
                    continue
                # Leaf i with its own proof, claimed at index j: a path of the wrong length is
                # malformed, one of the right length leads to another root.
                want = "root_mismatch" if len(proofs[i]) == len(proofs[j]) else "proof_malformed"
                got = _reason(merkle.verify_inclusion, tree[i], j, n, proofs[i], r)
                assert got == want, (n, i, j)
                # Another leaf at i, with i's proof.
                got = _reason(merkle.verify_inclusion, tree[j], i, n, proofs[i], r)
                assert got == "root_mismatch", (n, i, j)


def test_inclusion_proof_does_not_bind_the_tree_size() -> None:
    # Known and accepted (transparency-dev behaves the same): the proof for leaf 0 of 3 leaves,
    # [h1, h2], also "verifies" at size 4, because H(H(h0, h1), h2) is what a 4-leaf path
    # [h1, h23] computes when h23 := h2. The size a verifier uses must therefore come from a
    # signed source (the checkpoint, the batch row), never from the proof's requester alone.
    p = merkle.inclusion_proof(LEAVES[:3], 0)
    assert merkle.verify_inclusion(LEAVES[0], 0, 4, p, ROOTS[3]) is None
    # ...while a size whose path has another length is malformed, not a mismatch.
    assert _reason(merkle.verify_inclusion, LEAVES[0], 0, 5, p, ROOTS[3]) == ("proof_malformed")


# -- wrong-length proofs are malformed ----------------------------------------------------------

JUNK = hashlib.sha256(b"junk").digest()


def _length_changes(p: Sequence[bytes]) -> list[list[bytes]]:
    changed = [[*p, JUNK], [JUNK, *p], [*p, *p[-1:]] if p else [JUNK, JUNK]]
    for j in range(len(p)):
        changed.append([*p[:j], *p[j + 1 :]])  # one element removed
        changed.append([*p[:j], JUNK, *p[j:]])  # one element inserted
    return changed


def test_inclusion_truncated_or_extended_is_malformed() -> None:
    for n in range(1, 65):
        tree, r = LEAVES[:n], ROOTS[n]
        for i, p in enumerate(merkle.inclusion_proofs(tree)):
            for bad in _length_changes(p):
                got = _reason(merkle.verify_inclusion, tree[i], i, n, bad, r)
                assert got == "proof_malformed", (n, i, len(bad))


def test_consistency_truncated_or_extended_is_malformed() -> None:
    for n in range(0, 41):
        for m in range(0, n + 1):
            p = merkle.consistency_proof(LEAVES[:n], m)
            for bad in _length_changes(p):
                got = _reason(merkle.verify_consistency, m, n, bad, ROOTS[m], ROOTS[n])
                assert got == "proof_malformed", (m, n, len(bad))


def test_overlong_proof_is_malformed_before_hashing() -> None:
    p = [JUNK] * (merkle.MAX_PROOF_LENGTH + 1)
    assert _reason(merkle.verify_inclusion, JUNK, 0, 2**64, p, JUNK) == "proof_malformed"
    assert _reason(merkle.verify_consistency, 1, 2**64, p, JUNK, JUNK) == ("proof_malformed")


def test_deepest_possible_proof() -> None:
    # The last leaf of a 2**64-leaf tree has 64 siblings, all on its left: the longest proof
    # MAX_PROOF_LENGTH allows. Its root, computed by hand, must verify.
    size = 2**64
    p = [hashlib.sha256(bytes([k])).digest() for k in range(64)]
    r = JUNK
    for sibling in p:
        r = hashlib.sha256(b"\x01" + sibling + r).digest()
    assert merkle.verify_inclusion(JUNK, size - 1, size, p, r) is None
    # Leaf size-2 is a left child at the bottom level: same length, another root.
    assert _reason(merkle.verify_inclusion, JUNK, size - 2, size, p, r) == "root_mismatch"


# -- preconditions ------------------------------------------------------------------------------

BAD_HASHES: list[object] = [b"", b"\x00" * 31, b"\x00" * 33, b"\x00" * 64, "00" * 32, None]


@pytest.mark.parametrize("bad", BAD_HASHES, ids=repr)
def test_inclusion_non_32_byte_hash_is_malformed(bad: bytes) -> None:
    n, i = 7, 3
    tree, r = LEAVES[:n], ROOTS[n]
    p = merkle.inclusion_proof(tree, i)
    assert _reason(merkle.verify_inclusion, bad, i, n, p, r) == "proof_malformed"
    assert _reason(merkle.verify_inclusion, tree[i], i, n, p, bad) == "proof_malformed"
    for j in range(len(p)):
        bad_p = [*p[:j], bad, *p[j + 1 :]]
        assert _reason(merkle.verify_inclusion, tree[i], i, n, bad_p, r) == ("proof_malformed")


@pytest.mark.parametrize("bad", BAD_HASHES, ids=repr)
def test_consistency_non_32_byte_hash_is_malformed(bad: bytes) -> None:
    m, n = 3, 7
    p = merkle.consistency_proof(LEAVES[:n], m)
    old, new = ROOTS[m], ROOTS[n]
    assert _reason(merkle.verify_consistency, m, n, p, bad, new) == "proof_malformed"
    assert _reason(merkle.verify_consistency, m, n, p, old, bad) == "proof_malformed"
    for j in range(len(p)):
        bad_p = [*p[:j], bad, *p[j + 1 :]]
        assert _reason(merkle.verify_consistency, m, n, bad_p, old, new) == ("proof_malformed")
    # Equal sizes and an empty old tree check the roots' form too.
    assert _reason(merkle.verify_consistency, n, n, [], bad, bad) == "proof_malformed"
    assert _reason(merkle.verify_consistency, 0, n, [], bad, new) == "proof_malformed"


@pytest.mark.parametrize(
    ("index", "size"), [(0, 0), (1, 1), (5, 5), (6, 5), (-1, 5), (0, -1), (2**64, 2**64)]
)
def test_index_outside_tree_is_malformed(index: int, size: int) -> None:
    assert _reason(merkle.verify_inclusion, JUNK, index, size, [], JUNK) == ("proof_malformed")
    if 0 <= size <= MAX_N:
        tree = LEAVES[:size]
        assert _reason(merkle.inclusion_proof, tree, index) == "proof_malformed"


@pytest.mark.parametrize(("old", "new"), [(2, 1), (1, 0), (8, 7), (-1, 4), (3, -1)])
def test_bad_sizes_are_malformed(old: int, new: int) -> None:
    assert _reason(merkle.verify_consistency, old, new, [], JUNK, JUNK) == ("proof_malformed")
    assert _reason(merkle.verify_consistency, old, new, [JUNK], JUNK, JUNK) == ("proof_malformed")
    if new >= 0:
        tree = LEAVES[:new]
        assert _reason(merkle.consistency_proof, tree, old) == "proof_malformed"


def test_consistency_equal_sizes() -> None:
    for n in (1, 2, 7, 64):
        assert merkle.verify_consistency(n, n, [], ROOTS[n], ROOTS[n]) is None
        assert _reason(merkle.verify_consistency, n, n, [], ROOTS[n], ROOTS[n - 1]) == (
            "root_mismatch"
        )
        assert _reason(merkle.verify_consistency, n, n, [JUNK], ROOTS[n], ROOTS[n]) == (
            "proof_malformed"
        )


def test_consistency_from_empty_tree() -> None:
    # Only an empty proof is accepted from size 0 (RFC 9162 defines proofs for 0 < m only).
    for n in (0, 1, 5, 64):
        assert merkle.verify_consistency(0, n, [], ROOTS[0], ROOTS[n]) is None
        assert _reason(merkle.verify_consistency, 0, n, [JUNK], ROOTS[0], ROOTS[n]) == (
            "proof_malformed"
        )
