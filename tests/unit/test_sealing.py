"""Unit tests for anchor.sealing and the node arithmetic in anchor.merkle the store's seal uses.

Until now these were reached only through PostgreSQL (tests/integration/test_store.py): here the
node arithmetic is cross-checked against the slow reference tree, and every rule of
``classify_candidates`` is exercised with plain values.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import reference_merkle as ref
from hypothesis import given
from hypothesis import strategies as st

from anchor import merkle
from anchor.checkpoint import generate_note_key
from anchor.envelope import Reading, parse_envelope, sign_reading
from anchor.errors import ProofError
from anchor.keys import PrivateKey
from anchor.sealing import (
    DUPLICATE_DETAIL,
    MAX_STORED_INT,
    BatchLog,
    Candidate,
    candidate_leaf,
    classify_candidates,
    seal_batch,
)

KEY = PrivateKey.generate("Ed25519")
NOW = datetime(2026, 3, 1, tzinfo=UTC)
ZERO = bytes(32)


def inputs(n: int) -> list[bytes]:
    return [i.to_bytes(4, "big") for i in range(n)]


class Nodes:
    """Every perfect subtree of a tree, built by appending its leaves one by one."""

    def __init__(self, leaves: list[bytes]) -> None:
        self.found: dict[merkle.NodeId, bytes] = {}
        self.frontier: list[bytes] = []
        for size, leaf in enumerate(leaves):
            self.frontier, nodes = merkle.compact_append_nodes(self.frontier, size, leaf)
            for level, idx, h in nodes:
                assert (level, idx) not in self.found
                self.found[(level, idx)] = h

    def resolve(self, elements: list[list[merkle.NodeId]]) -> list[bytes]:
        return [merkle.compact_root([self.found[n] for n in e]) for e in elements]


# ------------------------------------------------------------------------------ node arithmetic


def test_append_nodes_hold_every_perfect_subtree_and_the_frontier() -> None:
    data = inputs(37)
    leaves = [merkle.leaf_hash(d) for d in data]
    nodes = Nodes(leaves)
    for (level, idx), h in nodes.found.items():
        assert h == ref.mth(data[idx << level : (idx + 1) << level])
    assert merkle.compact_root(nodes.frontier) == ref.mth(data)


@pytest.mark.parametrize("size", range(1, 34))
def test_inclusion_nodes_resolve_to_the_reference_path(size: int) -> None:
    data = inputs(size)
    nodes = Nodes([merkle.leaf_hash(d) for d in data])
    for index in range(size):
        assert nodes.resolve(merkle.inclusion_nodes(index, size)) == ref.path(index, data)


@pytest.mark.parametrize("new_size", range(1, 34))
def test_consistency_nodes_resolve_to_the_reference_proof(new_size: int) -> None:
    data = inputs(new_size)
    nodes = Nodes([merkle.leaf_hash(d) for d in data])
    for old_size in range(0, new_size + 1):
        got = nodes.resolve(merkle.consistency_nodes(old_size, new_size))
        assert got == (ref.proof(old_size, data) if 0 < old_size < new_size else [])


@given(lo=st.integers(0, 1 << 20), span=st.integers(0, 1 << 20))
def test_range_nodes_tile_the_range_with_aligned_subtrees(lo: int, span: int) -> None:
    hi = lo + span
    at = lo
    for level, idx in merkle.range_nodes(lo, hi):
        assert idx << level == at  # contiguous and aligned
        at += 1 << level
    assert at == hi
    assert len(merkle.range_nodes(lo, hi)) <= 2 * 21


def test_node_preconditions() -> None:
    with pytest.raises(ProofError):
        merkle.inclusion_nodes(3, 3)
    with pytest.raises(ProofError):
        merkle.inclusion_nodes(-1, 3)
    with pytest.raises(ProofError):
        merkle.consistency_nodes(4, 3)


# ------------------------------------------------------------------------- classify_candidates


def candidate(
    seq: int, *, device_id: str = "aq-1", prev: bytes = ZERO, ts: int = 1_700_000_000_000,
    pm: int = 1,
) -> Candidate:  # fmt: skip
    reading = Reading(
        device_id=device_id, seq=seq, ts=ts, kind="iot.air_quality", values={"pm25": pm},
        prev=prev,
    )  # fmt: skip
    return Candidate(
        parse_envelope(sign_reading(reading, KEY)), NOW, f"city/n/{device_id}/readings"
    )


def leaf(c: Candidate) -> bytes:
    return merkle.leaf_hash(c.envelope.raw)


def test_a_chain_in_any_order_is_accepted_in_input_order() -> None:
    first = candidate(1)
    second = candidate(2, prev=leaf(first))
    third = candidate(3, prev=leaf(second))
    accepted, rejected = classify_candidates([third, first, second], {})
    assert accepted == [third, first, second] and rejected == []


def test_out_of_range() -> None:
    big = candidate(MAX_STORED_INT + 1, prev=b"\x01" * 32)
    accepted, rejected = classify_candidates([big], {})
    assert accepted == []
    (r,) = rejected
    assert r.reason == "out_of_range" and r.seq is None  # the seq does not fit the column
    _, rejected = classify_candidates([candidate(1, ts=MAX_STORED_INT + 1)], {})
    assert rejected[0].reason == "out_of_range" and rejected[0].seq == 1


def test_replayed_seq_stored_and_in_batch() -> None:
    c = candidate(1)
    accepted, rejected = classify_candidates([c], {("aq-1", 1): leaf(c)})
    assert accepted == [] and rejected[0].reason == "replayed_seq"
    assert rejected[0].detail == DUPLICATE_DETAIL
    accepted, rejected = classify_candidates([c, c], {})
    assert accepted == [c] and [r.reason for r in rejected] == ["replayed_seq"]


def test_seq_conflict_first_arrival_wins() -> None:
    a, b = candidate(1, pm=1), candidate(1, pm=2)
    accepted, rejected = classify_candidates([a, b], {})
    assert accepted == [a] and rejected[0].reason == "seq_conflict"
    accepted, rejected = classify_candidates([b], {("aq-1", 1): leaf(a)})
    assert accepted == [] and rejected[0].reason == "seq_conflict"


def test_prev_mismatch() -> None:
    # (seq 1 with a non-zero prev is refused earlier, by the envelope parser: malformed.)
    first = candidate(1)
    wrong = candidate(2, prev=b"\x02" * 32)
    _, rejected = classify_candidates([wrong], {("aq-1", 1): leaf(first)})
    assert rejected[0].reason == "prev_mismatch"
    # An unknown seq - 1 is a gap, not a fault.
    accepted, _ = classify_candidates([candidate(5, prev=b"\x03" * 32)], {})
    assert len(accepted) == 1


def test_devices_are_judged_apart() -> None:
    a, b = candidate(1, device_id="aq-1"), candidate(1, device_id="aq-2")
    accepted, rejected = classify_candidates([a, b], {})
    assert accepted == [a, b] and rejected == []


# ------------------------------------------------------------------------------ batches, receipts


def test_seal_batch_and_receipts_verify() -> None:
    envelopes = [candidate(1, device_id=f"aq-{i}").envelope for i in range(5)]
    batch = seal_batch(7, envelopes)
    assert batch.size == 5 and batch.root == merkle.root(batch.leaf_hashes)
    log = BatchLog("example.org/log", [(3, b"\x09" * 32)])
    index = log.append(batch.size, batch.root)
    assert index == 1 and log.size == 2
    note = log.checkpoint(generate_note_key("example.org/log"))
    for i, r in enumerate(log.receipts(batch, index, note, log.size)):
        merkle.verify_inclusion(r.leaf_hash, i, batch.size, list(r.batch.path), batch.root)
        log_leaf = merkle.log_leaf_hash(batch.size, batch.root)
        merkle.verify_inclusion(log_leaf, index, log.size, list(r.log.path), log.root())
    merkle.verify_consistency(1, 2, log.consistency_proof(1), log.root(1), log.root())


def test_seal_batch_and_log_preconditions() -> None:
    with pytest.raises(ProofError):
        seal_batch(1, [])
    log = BatchLog("o")
    with pytest.raises(ProofError):
        log.append(1, b"short")
    with pytest.raises(ProofError):
        log.root(1)


# ------------------------------------------------------------------- the leaf hash, computed once


def test_a_hashed_candidate_carries_its_leaf_for_its_hasher_only() -> None:
    plain = candidate(1)
    raw = plain.envelope.raw
    hashed = Candidate.hashed(plain.envelope, plain.received_at, plain.topic)
    assert hashed.leaf == merkle.leaf_hash(raw) and hashed.leaf_hasher == merkle.SHA256.name
    assert candidate_leaf(hashed) is hashed.leaf
    assert candidate_leaf(plain) == merkle.leaf_hash(raw)
    # Another hasher never gets the carried SHA-256 leaf: it is computed with that hasher.
    assert candidate_leaf(hashed, merkle.SM3) == merkle.leaf_hash(raw, hasher=merkle.SM3)
    assert candidate_leaf(hashed, merkle.SM3) != hashed.leaf
    sm3 = Candidate.hashed(plain.envelope, NOW, plain.topic, hasher=merkle.SM3)
    assert candidate_leaf(sm3, merkle.SM3) == merkle.leaf_hash(raw, hasher=merkle.SM3)
    assert candidate_leaf(sm3) == merkle.leaf_hash(raw)
    assert hashed == plain  # the carried leaf is a cache, not part of the candidate's identity


def test_classify_uses_the_carried_leaf_and_agrees_with_plain_candidates() -> None:
    first = candidate(1)
    second = candidate(2, prev=leaf(first))
    third = candidate(3, prev=b"\x05" * 32)
    stored = {("aq-1", 1): leaf(first)}
    plain = classify_candidates([second, first, third], stored)
    hashed = [Candidate.hashed(c.envelope, c.received_at, c.topic) for c in (second, first, third)]
    assert classify_candidates(hashed, stored) == plain
    assert [r.reason for r in plain[1]] == ["replayed_seq", "prev_mismatch"]
    # The carried leaf is what classify compares (it is not hashed again): a carried leaf that
    # is not the stored one is a conflict, and under another hasher it is not used at all.
    forged = Candidate(first.envelope, NOW, first.topic, b"\x07" * 32, merkle.SHA256.name)
    _, rejected = classify_candidates([forged], stored)
    assert [r.reason for r in rejected] == ["seq_conflict"]
    stored_sm3 = {("aq-1", 1): merkle.leaf_hash(first.envelope.raw, hasher=merkle.SM3)}
    _, rejected = classify_candidates([forged], stored_sm3, hasher=merkle.SM3)
    assert [r.reason for r in rejected] == ["replayed_seq"]
