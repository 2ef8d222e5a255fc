"""The ``rfc9162-sm3`` scheme: SM3 (GB/T 32905-2016) itself, then RFC 9162 trees built with it.

The hash is checked against the standard's Appendix A examples (``tests/vectors/sm3.json``)
and, when the pure-Python ``gmssl`` package is installed, against that second, independent
implementation. Trees are checked against ``tests/reference_merkle.py`` run with SM3.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from hypothesis import given, settings
from hypothesis import strategies as st

from anchor import merkle
from anchor.merkle import SHA256, SM3, ProofError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import reference_merkle as ref  # tests/ is not a package

VECTORS = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "sm3.json").read_text(encoding="utf-8")
)["vectors"]

INPUTS = [f"5g.cell_kpi {i}".encode() for i in range(300)]


def _sm3(data: bytes) -> bytes:
    # Straight from cryptography, not through anchor.merkle, for the reference trees.
    h = hashes.Hash(hashes.SM3())
    h.update(data)
    return h.finalize()


def _gmssl_sm3() -> Any:
    # Imported lazily so that the rest of this file runs without the test-only dependency.
    sm3 = pytest.importorskip("gmssl.sm3")
    func = pytest.importorskip("gmssl.func")
    return lambda data: bytes.fromhex(sm3.sm3_hash(func.bytes_to_list(data)))


# -- the hash function --------------------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["desc"].split(":")[0])
def test_gbt_32905_appendix_a(vector: dict[str, Any]) -> None:
    message = vector["message_ascii"].encode("ascii") * vector["repeat"]
    assert SM3.digest(message).hex() == vector["digest"]
    assert _sm3(message).hex() == vector["digest"]


def test_scheme_shape() -> None:
    assert SM3.name == "rfc9162-sm3"
    assert SM3.digest_size == 32
    assert merkle.get_hasher("rfc9162-sm3") is SM3
    assert SM3.empty_root() == _sm3(b"")
    assert SM3.hash_leaf(b"abc") == _sm3(b"\x00abc")
    a, b = b"\x11" * 32, b"\x22" * 32
    assert SM3.hash_children(a, b) == _sm3(b"\x01" + a + b)
    assert merkle.leaf_hash(b"abc", hasher=SM3) == SM3.hash_leaf(b"abc")
    assert merkle.node_hash(a, b, hasher=SM3) == SM3.hash_children(a, b)


def test_gmssl_agrees_on_appendix_a() -> None:
    gm = _gmssl_sm3()
    for vector in VECTORS:
        message = vector["message_ascii"].encode("ascii") * vector["repeat"]
        assert gm(message).hex() == vector["digest"]


def test_gmssl_agrees_across_padding_boundaries() -> None:
    # Every length up to three blocks, so every padding case (length field in the same block
    # or the next one, at 55/56/63/64 bytes mod 64) is covered.
    gm = _gmssl_sm3()
    data = bytes(range(256))
    for length in range(0, 193):
        assert SM3.digest(data[:length]) == gm(data[:length]), length


@settings(max_examples=50, deadline=None, derandomize=True)
@given(data=st.binary(max_size=2000))
def test_gmssl_agrees_on_arbitrary_input(data: bytes) -> None:
    assert SM3.digest(data) == _gmssl_sm3()(data)


# -- trees --------------------------------------------------------------------------------------

HASHES = [
    pytest.param(SHA256, ref.sha256, id="sha256"),
    pytest.param(SM3, _sm3, id="sm3"),
]


@pytest.mark.parametrize(("hasher", "digest"), HASHES)
def test_trees_equal_reference(hasher: merkle.Hasher, digest: ref.Digest) -> None:
    for n in range(0, 65):
        data = INPUTS[:n]
        leaves = [merkle.leaf_hash(d, hasher=hasher) for d in data]
        assert leaves == [ref.leaf(d, digest) for d in data]
        assert merkle.root(leaves, hasher=hasher) == ref.mth(data, digest)
        proofs = merkle.inclusion_proofs(leaves, hasher=hasher)
        for i in range(n):
            assert proofs[i] == ref.path(i, data, digest)
            assert merkle.inclusion_proof(leaves, i, hasher=hasher) == proofs[i]
        for m in range(1, n + 1):
            assert merkle.consistency_proof(leaves, m, hasher=hasher) == ref.proof(m, data, digest)


def test_sm3_proofs_verify() -> None:
    leaves = [merkle.leaf_hash(d, hasher=SM3) for d in INPUTS]
    roots = [merkle.root(leaves[:n], hasher=SM3) for n in range(len(leaves) + 1)]
    for n in range(1, 101):
        for i, p in enumerate(merkle.inclusion_proofs(leaves[:n], hasher=SM3)):
            assert merkle.verify_inclusion(leaves[i], i, n, p, roots[n], hasher=SM3) is None
    for n in range(0, 33):
        for m in range(0, n + 1):
            p = merkle.consistency_proof(leaves[:n], m, hasher=SM3)
            assert merkle.verify_consistency(m, n, p, roots[m], roots[n], hasher=SM3) is None


def test_sm3_roots_differ_from_sha256() -> None:
    assert SM3.empty_root() != hashlib.sha256(b"").digest()
    for n in (1, 2, 3, 8, 300):
        sha = [merkle.leaf_hash(d) for d in INPUTS[:n]]
        sm3 = [merkle.leaf_hash(d, hasher=SM3) for d in INPUTS[:n]]
        assert set(sha).isdisjoint(sm3)
        assert merkle.root(sha) != merkle.root(sm3, hasher=SM3)


def test_proofs_do_not_cross_schemes() -> None:
    # A SHA-256 proof checked as SM3 (or the reverse) leads elsewhere: the scheme name must
    # travel with every root.
    n, i = 11, 6
    for build, check in ((SHA256, SM3), (SM3, SHA256)):
        leaves = [merkle.leaf_hash(d, hasher=build) for d in INPUTS[:n]]
        r = merkle.root(leaves, hasher=build)
        p = merkle.inclusion_proof(leaves, i, hasher=build)
        with pytest.raises(ProofError) as exc:
            merkle.verify_inclusion(leaves[i], i, n, p, r, hasher=check)
        assert exc.value.reason == "root_mismatch"
        c = merkle.consistency_proof(leaves, 5, hasher=build)
        old = merkle.root(leaves[:5], hasher=build)
        with pytest.raises(ProofError) as exc:
            merkle.verify_consistency(5, n, c, old, r, hasher=check)
        assert exc.value.reason == "root_mismatch"


def test_sm3_flipped_bit_fails() -> None:
    n, i = 13, 12
    leaves = [merkle.leaf_hash(d, hasher=SM3) for d in INPUTS[:n]]
    r = merkle.root(leaves, hasher=SM3)
    p = merkle.inclusion_proof(leaves, i, hasher=SM3)
    for bit in range(0, 256, 7):
        flipped = bytearray(leaves[i])
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(ProofError) as exc:
            merkle.verify_inclusion(bytes(flipped), i, n, p, r, hasher=SM3)
        assert exc.value.reason == "root_mismatch"
