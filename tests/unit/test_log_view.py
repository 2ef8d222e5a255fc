"""The monitor's pure rules (anchor.log_view): each kind of evidence, the state round trip, and
over random logs: an honest append-only log never raises an alarm, a rewritten leaf always does."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anchor import merkle
from anchor.checkpoint import Checkpoint, NoteSigner, generate_note_key, sign_checkpoint
from anchor.errors import ProofError, Reason
from anchor.log_view import (
    STATE_FORMAT,
    AnchoredEvent,
    Evidence,
    EvidenceKind,
    LogView,
    MonitorStateError,
    ProofNeeded,
    SignedHead,
    check_anchor,
    compare,
    rollback,
    same_size,
    settle,
)

ORIGIN = "monitor-unit.cityanchor.example/log"
OPERATOR = generate_note_key(ORIGIN)


def leaves(n: int, salt: bytes = b"") -> list[bytes]:
    return [
        merkle.log_leaf_hash(i + 1, hashlib.sha256(salt + bytes([i % 256])).digest())
        for i in range(n)
    ]


def head(log: list[bytes], size: int, signer: NoteSigner = OPERATOR) -> SignedHead:
    note = sign_checkpoint(Checkpoint(ORIGIN, size, merkle.root(log[:size])), signer)
    return SignedHead.open(note, signer.verifier)


def proof(log: list[bytes], old: int, new: int) -> list[bytes]:
    return merkle.consistency_proof(log[:new], old)


def observe(view: LogView, log: list[bytes], cp: SignedHead) -> tuple[LogView, Evidence | None]:
    """What the monitor does with one checkpoint of ``log`` (the log serves the proofs)."""
    verdict = compare(view, cp)
    if isinstance(verdict, Evidence):
        return view, verdict
    if isinstance(verdict, ProofNeeded):
        evidence = settle(verdict, proof(log, verdict.old.size, verdict.new.size))
        if evidence is not None:
            return view, evidence
    return view.record(cp), None


def test_the_first_checkpoint_starts_the_view() -> None:
    log = leaves(5)
    cp = head(log, 5)
    assert compare(LogView(), cp) is None
    view = LogView().record(cp)
    assert view.head == cp and view.at(5) == cp


def test_same_size_same_root_is_nothing_new() -> None:
    log = leaves(5)
    view = LogView().record(head(log, 5))
    assert compare(view, head(log, 5)) is None


def test_same_size_other_root_is_a_fork_without_proof() -> None:
    honest, forked = leaves(5), leaves(5, b"x")
    view = LogView().record(head(honest, 5))
    evidence = compare(view, head(forked, 5))
    assert isinstance(evidence, Evidence)
    assert evidence.kind is EvidenceKind.LOG_FORK and evidence.proof == ()
    assert evidence.old is not None and evidence.new is not None
    # Both notes verify with the operator key; the same check verify-consistency runs fails.
    for h in (evidence.old, evidence.new):
        assert SignedHead.open(h.note, OPERATOR.verifier) == h
    with pytest.raises(ProofError) as exc:
        merkle.verify_consistency(5, 5, [], evidence.old.root, evidence.new.root)
    assert exc.value.reason == Reason.ROOT_MISMATCH
    doc = evidence.to_dict()
    assert doc["kind"] == "log_fork" and doc["proof"] == []
    assert doc["old"]["note"] == evidence.old.note and doc["new"]["root"] == evidence.new.root.hex()
    assert doc["how_to_check"].startswith("cityanchor verify-consistency old.note new.note")
    assert same_size(evidence.old, evidence.new) == evidence


def test_a_larger_checkpoint_needs_a_proof_and_an_honest_one_passes() -> None:
    log = leaves(9)
    view = LogView().record(head(log, 4))
    need = compare(view, head(log, 9))
    assert need == ProofNeeded(head(log, 4), head(log, 9))
    assert isinstance(need, ProofNeeded)
    assert settle(need, proof(log, 4, 9)) is None


def test_a_larger_checkpoint_that_rewrites_the_past_is_a_fork_with_its_proof() -> None:
    honest = leaves(9)
    forked = honest[:2] + leaves(7, b"fork")
    view = LogView().record(head(honest, 4))
    need = compare(view, head(forked, 9))
    assert isinstance(need, ProofNeeded)
    bad_proof = proof(forked, 4, 9)
    evidence = settle(need, bad_proof)
    assert evidence is not None and evidence.kind is EvidenceKind.LOG_FORK
    assert evidence.proof == tuple(bad_proof)
    assert evidence.old == head(honest, 4) and evidence.new == head(forked, 9)
    assert evidence.to_dict()["proof"] == [h.hex() for h in bad_proof]


def test_a_smaller_latest_checkpoint_is_a_rollback_even_when_consistent() -> None:
    log = leaves(9)
    view = LogView().record(head(log, 9))
    need = compare(view, head(log, 4))
    assert need == ProofNeeded(head(log, 4), head(log, 9))
    assert isinstance(need, ProofNeeded)
    p = proof(log, 4, 9)
    assert settle(need, p) is None  # a smaller *anchored* or receipt checkpoint is fine
    evidence = rollback(view, head(log, 4), p)
    assert evidence is not None and evidence.kind is EvidenceKind.LOG_ROLLBACK
    assert (evidence.old, evidence.new) == (head(log, 4), head(log, 9))
    assert rollback(view, head(log, 9), []) is None


def _event(root: bytes, size: int) -> AnchoredEvent:
    return AnchoredEvent(
        31337, "0x" + "11" * 20, "0x" + "ab" * 32, 7, 0, root, size, "0x" + "22" * 20
    )


def test_an_anchor_must_name_the_signed_root_of_its_size() -> None:
    log = leaves(6)
    signed = head(log, 6)
    assert check_anchor(_event(signed.root, 6), signed) is None
    evidence = check_anchor(_event(b"\x07" * 32, 6), signed)
    assert evidence is not None and evidence.kind is EvidenceKind.ANCHOR_INCONSISTENT
    doc = evidence.to_dict()
    assert doc["anchor"]["tx_hash"] == "0x" + "ab" * 32 and doc["anchor"]["block_number"] == 7
    assert doc["old"]["root"] == signed.root.hex() and "ab" * 32 in doc["how_to_check"]
    missing = check_anchor(_event(signed.root, 6), None)
    assert missing is not None and "no signed checkpoint" in missing.detail


def test_the_view_round_trips_and_every_note_is_reopened() -> None:
    log = leaves(8)
    view = LogView().record(head(log, 3)).record(head(log, 8))
    doc = view.to_dict()
    assert doc["format"] == STATE_FORMAT
    again = LogView.from_dict(doc, OPERATOR.verifier)
    assert again == view and again.head == head(log, 8)
    other = generate_note_key(ORIGIN)
    with pytest.raises(MonitorStateError) as exc:
        LogView.from_dict(doc, other.verifier)
    assert exc.value.reason == Reason.MONITOR_STATE_INVALID
    forged = {
        **doc,
        "seen": [{"size": 3, "note": doc["seen"][0]["note"].replace("\n3\n", "\n4\n")}],
    }
    with pytest.raises(MonitorStateError):
        LogView.from_dict(forged, OPERATOR.verifier)
    with pytest.raises(MonitorStateError):
        LogView.from_dict({**doc, "format": "other"}, OPERATOR.verifier)
    with pytest.raises(MonitorStateError):
        LogView.from_dict({**doc, "seen": [{**doc["seen"][0], "size": 4}]}, OPERATOR.verifier)


def test_a_restarted_view_still_catches_the_fork() -> None:
    honest = leaves(6)
    view = LogView.from_dict(LogView().record(head(honest, 6)).to_dict(), OPERATOR.verifier)
    forked = honest[:3] + leaves(5, b"other")
    _, evidence = observe(view, forked, head(forked, 8))
    assert evidence is not None and evidence.kind is EvidenceKind.LOG_FORK


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=40),
    cuts=st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=8),
)
def test_an_honest_append_only_log_never_raises_an_alarm(n: int, cuts: list[int]) -> None:
    log = leaves(n)
    view = LogView()
    # Sizes seen in any order (latest, anchored, receipts' checkpoints), repeats included.
    for size in [min(c, n) for c in cuts] + [n]:
        view, evidence = observe(view, log, head(log, size))
        assert evidence is None
    assert view.head == head(log, n)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=40),
    data=st.data(),
)
def test_any_rewrite_of_an_earlier_leaf_always_raises_an_alarm(n: int, data: st.DataObject) -> None:
    log = leaves(n)
    seen = data.draw(st.integers(min_value=1, max_value=n), label="size the monitor saw")
    index = data.draw(st.integers(min_value=0, max_value=seen - 1), label="rewritten leaf")
    grow = data.draw(st.integers(min_value=0, max_value=10), label="leaves appended after")
    view, evidence = observe(LogView(), log, head(log, seen))
    assert evidence is None
    rewritten = list(log) + leaves(grow, b"later")
    rewritten[index] = hashlib.sha256(b"rewritten" + rewritten[index]).digest()
    new_size = data.draw(st.integers(min_value=seen, max_value=len(rewritten)), label="new size")
    _, evidence = observe(view, rewritten, head(rewritten, new_size))
    assert evidence is not None and evidence.kind is EvidenceKind.LOG_FORK
