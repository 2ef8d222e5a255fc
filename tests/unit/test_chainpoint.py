"""``anchor.chainpoint`` checked by merkletools, the reference Python Chainpoint v2 tool.

merkletools builds its own tree from the same leaves; its root and proofs must equal ours,
and its ``validate_proof`` must accept every proof we emit and reject tampered ones.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import merkletools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anchor import chainpoint, merkle
from anchor.errors import ProofError, UsageError

LEAVES = [merkle.leaf_hash(f"iot.air_quality reading {i}".encode()) for i in range(1500)]
ANCHORS = [{"type": "ETHData", "sourceId": "ab" * 32}]


def _export(leaves: list[bytes], **kw: Any) -> list[dict[str, Any]]:
    return chainpoint.chainpoint_proofs(
        leaves, batch_id=kw.pop("batch_id", 7), rfc9162_root=merkle.root(leaves), **kw
    )


def _merkletools(leaves: list[bytes]) -> Any:
    mt = merkletools.MerkleTools(hash_type="sha256")
    mt.add_leaf([h.hex() for h in leaves])
    mt.make_tree()
    return mt


def _check_against_merkletools(leaves: list[bytes]) -> None:
    docs = _export(leaves, anchors=ANCHORS)
    mt = _merkletools(leaves)
    root_hex = chainpoint.chainpoint_tree_root(leaves).hex()
    assert mt.get_merkle_root() == root_hex
    assert len(docs) == len(leaves)
    for i, doc in enumerate(docs):
        assert doc["targetHash"] == leaves[i].hex()
        assert doc["merkleRoot"] == root_hex
        assert doc["proof"] == mt.get_proof(i)
        assert mt.validate_proof(doc["proof"], doc["targetHash"], doc["merkleRoot"]) is True


@pytest.mark.parametrize("size", range(1, 101))
def test_proofs_validate_with_merkletools(size: int) -> None:
    _check_against_merkletools(LEAVES[:size])


@settings(max_examples=15, deadline=None, derandomize=True)
@given(size=st.integers(101, len(LEAVES)))
def test_larger_batches_validate_with_merkletools(size: int) -> None:
    _check_against_merkletools(LEAVES[:size])


def test_document_shape() -> None:
    leaves = LEAVES[:6]
    docs = _export(leaves, batch_id=42, anchors=ANCHORS)
    doc = docs[4]
    assert doc["@context"] == "https://w3id.org/chainpoint/v2"
    assert doc["type"] == "ChainpointSHA256v2"
    assert doc["anchors"] == ANCHORS
    assert doc["anchors"][0] is not ANCHORS[0]  # copied, not shared
    assert docs[3]["anchors"][0] is not doc["anchors"][0]
    for step in doc["proof"]:
        ((side, value),) = step.items()
        assert side in {"left", "right"}
        assert len(bytes.fromhex(value)) == 32
    ext = doc["cityanchor"]
    assert ext == {
        "hash_scheme": "rfc9162-sha256",
        "batch_id": 42,
        "batch_size": 6,
        "leaf_index": 4,
        "rfc9162_root": merkle.root(leaves).hex(),
        "rfc9162_path": [p.hex() for p in merkle.inclusion_proof(leaves, 4)],
        "merkle_root_is_anchored": False,
    }
    assert json.loads(json.dumps(docs)) == docs
    assert _export(leaves)[0]["anchors"] == []


def test_extension_ties_target_to_the_rfc9162_root() -> None:
    for size in (1, 2, 5, 64, 100):
        for doc in _export(LEAVES[:size]):
            ext = doc["cityanchor"]
            merkle.verify_inclusion(
                bytes.fromhex(doc["targetHash"]),
                ext["leaf_index"],
                ext["batch_size"],
                [bytes.fromhex(p) for p in ext["rfc9162_path"]],
                bytes.fromhex(ext["rfc9162_root"]),
            )


def test_chainpoint_root_is_not_the_rfc9162_root() -> None:
    # One leaf: both roots are the leaf hash itself. From two leaves on the interior hashing
    # differs (no 0x01 prefix), so the roots always differ.
    assert chainpoint.chainpoint_tree_root(LEAVES[:1]) == merkle.root(LEAVES[:1])
    for size in range(2, 101):
        leaves = LEAVES[:size]
        assert chainpoint.chainpoint_tree_root(leaves) != merkle.root(leaves)
    a, b = LEAVES[0], LEAVES[1]
    assert chainpoint.chainpoint_tree_root([a, b]) == hashlib.sha256(a + b).digest()


def _tamperings(doc: dict[str, Any]) -> list[tuple[list[dict[str, str]], str, str]]:
    proof, target, root = doc["proof"], doc["targetHash"], doc["merkleRoot"]

    def flip(hex_value: str) -> str:
        return ("1" if hex_value[0] != "1" else "2") + hex_value[1:]

    out = [(proof, flip(target), root), (proof, target, flip(root))]
    for j, step in enumerate(proof):
        ((side, value),) = step.items()
        other = "left" if side == "right" else "right"
        for bad_step in ({side: flip(value)}, {other: value}):
            bad = copy.deepcopy(proof)
            bad[j] = bad_step
            out.append((bad, target, root))
        out.append(([*proof[:j], *proof[j + 1 :]], target, root))
    if proof:
        out.append(([*proof, proof[-1]], target, root))
    return out


@pytest.mark.parametrize("size", [1, 2, 3, 7, 8, 9, 33, 100])
def test_tampered_proof_does_not_validate(size: int) -> None:
    mt = merkletools.MerkleTools()
    docs = _export(LEAVES[:size])
    for doc in docs:
        cases = _tamperings(doc)
        assert cases
        for proof, target, root in cases:
            assert mt.validate_proof(proof, target, root) is False


def test_other_leaf_does_not_validate() -> None:
    mt = merkletools.MerkleTools()
    docs = _export(LEAVES[:9])
    for i, doc in enumerate(docs):
        for j in range(9):
            if j != i:
                assert mt.validate_proof(doc["proof"], LEAVES[j].hex(), doc["merkleRoot"]) is False


# -- rejected inputs ----------------------------------------------------------------------------


def test_empty_batch_is_rejected() -> None:
    with pytest.raises(ProofError) as exc:
        chainpoint.chainpoint_tree_root([])
    assert exc.value.reason == "proof_malformed"
    with pytest.raises(ProofError) as exc:
        chainpoint.chainpoint_proofs([], batch_id=1, rfc9162_root=merkle.root([]))
    assert exc.value.reason == "proof_malformed"


@pytest.mark.parametrize("bad", [b"", b"\x00" * 31, b"\x00" * 33, "00" * 32], ids=repr)
def test_bad_hashes_are_rejected(bad: Any) -> None:
    leaves = [*LEAVES[:3], bad]
    with pytest.raises(ProofError) as exc:
        chainpoint.chainpoint_tree_root(leaves)
    assert exc.value.reason == "proof_malformed"
    with pytest.raises(ProofError) as exc:
        chainpoint.chainpoint_proofs(leaves, batch_id=1, rfc9162_root=LEAVES[0])
    assert exc.value.reason == "proof_malformed"
    with pytest.raises(ProofError) as exc:
        chainpoint.chainpoint_proofs(LEAVES[:3], batch_id=1, rfc9162_root=bad)
    assert exc.value.reason == "proof_malformed"


def test_wrong_rfc9162_root_is_rejected() -> None:
    leaves = LEAVES[:5]
    for wrong in (merkle.root(LEAVES[:4]), chainpoint.chainpoint_tree_root(leaves)):
        with pytest.raises(ProofError) as exc:
            chainpoint.chainpoint_proofs(leaves, batch_id=1, rfc9162_root=wrong)
        assert exc.value.reason == "root_mismatch"


@pytest.mark.parametrize(
    "anchors",
    [[{"type": "ETHData"}], [{"sourceId": "00"}], [{"type": 1, "sourceId": "00"}]],
)
def test_bad_anchor_is_rejected(anchors: list[dict[str, Any]]) -> None:
    with pytest.raises(UsageError):
        _export(LEAVES[:2], anchors=anchors)


@pytest.mark.parametrize("batch_id", [-1, True, "7", 1.0])
def test_bad_batch_id_is_rejected(batch_id: Any) -> None:
    with pytest.raises(UsageError):
        _export(LEAVES[:2], batch_id=batch_id)
