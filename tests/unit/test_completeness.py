"""The completeness verifier on hand-built proofs: removal, reorder, gaps, forged prev."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import reference_merkle as ref  # tests/ is not a package

from anchor import merkle
from anchor.checkpoint import Checkpoint, generate_note_key, sign_checkpoint
from anchor.cli.commands import main
from anchor.completeness import (
    CompletenessError,
    CompletenessProof,
    StoredBatch,
    StoredReading,
    build_completeness,
    completeness_from_dict,
    completeness_to_dict,
    find_gaps,
    verify_completeness,
)
from anchor.envelope import FORMAT_COSE, FORMAT_JWS, Reading, sign_reading
from anchor.keys import PrivateKey

DEVICE = "aq-0007"
OPERATOR = generate_note_key("unit.cityanchor.example/log")
KEY = PrivateKey.generate("Ed25519")


def _chain(seqs: Sequence[int], key: PrivateKey = KEY) -> dict[int, bytes]:
    """Envelopes for ``seqs``, each chained to the previous seq *signed* (1..max)."""
    envelopes: dict[int, bytes] = {}
    prev = bytes(32)
    for seq in range(1, max(seqs) + 1):
        reading = Reading(DEVICE, seq, 1_700_000_000_000 + seq, "iot.noise", {"db": 40 + seq}, prev)
        raw = sign_reading(reading, key, format=FORMAT_JWS if seq % 2 else FORMAT_COSE)
        envelopes[seq] = raw
        prev = merkle.leaf_hash(raw)
    return {s: envelopes[s] for s in seqs}


def _build(
    envelopes: dict[int, bytes],
    *,
    from_seq: int = 1,
    to_seq: int | None = None,
    batch_size: int = 3,
    others: int = 2,
    after: int = 0,
) -> CompletenessProof:
    """Seal ``envelopes`` (seq order) into batches with ``others`` foreign leaves before them
    and ``after`` after them, log them, sign the checkpoint, and build the proof as the store
    does."""
    seqs = sorted(envelopes)
    stored: list[StoredReading] = []
    batches: dict[int, StoredBatch] = {}
    roots: list[tuple[int, bytes]] = []
    groups = [seqs[i : i + batch_size] for i in range(0, len(seqs), batch_size)]
    for batch_id, group in enumerate(groups, start=1):
        leaves = [merkle.leaf_hash(b"other %d %d" % (batch_id, i)) for i in range(others)]
        for seq in group:
            raw = envelopes[seq]
            fmt = FORMAT_COSE if raw[:1] in (b"\xd2", b"\x84") else FORMAT_JWS
            stored.append(
                StoredReading(seq, fmt, raw, merkle.leaf_hash(raw), batch_id, len(leaves))
            )
            leaves.append(merkle.leaf_hash(raw))
        leaves += [merkle.leaf_hash(b"after %d %d" % (batch_id, i)) for i in range(after)]
        root = merkle.root(leaves)
        roots.append((len(leaves), root))
        batches[batch_id] = StoredBatch(batch_id, root, len(roots) - 1, tuple(leaves), ())
    roots.append((1, merkle.leaf_hash(b"unrelated")))  # the log holds other batches too
    # The log leaf (size || root), written independently of anchor.merkle.log_leaf_data.
    log_leaves = [ref.leaf(ref.log_leaf_input(n, r)) for n, r in roots]
    log_root = merkle.root(log_leaves)
    batches = {
        b.id: dataclasses.replace(
            b, log_path=tuple(merkle.inclusion_proof(log_leaves, b.log_index))
        )
        for b in batches.values()
    }
    note = sign_checkpoint(Checkpoint(OPERATOR.name, len(roots), log_root), OPERATOR)
    last = max(seqs) if seqs else 0
    return build_completeness(
        device_id=DEVICE,
        from_seq=from_seq,
        to_seq=last if to_seq is None else to_seq,
        latest_seq=last,
        readings=stored,
        batches=batches,
        log_size=len(roots),
        log_root=log_root,
        checkpoint=note,
    )


def _verify(proof: CompletenessProof | dict[str, Any]) -> Any:
    return verify_completeness(proof, device_key=KEY.public_key, log_verifiers=[OPERATOR.verifier])


def _reason(proof: CompletenessProof | dict[str, Any]) -> str:
    with pytest.raises(CompletenessError) as exc:
        _verify(proof)
    return exc.value.reason


def test_find_gaps() -> None:
    assert find_gaps([1, 2, 3], 1, 3) == []
    assert find_gaps([2, 5], 1, 7) == [(1, 1), (3, 4), (6, 7)]
    assert find_gaps([], 4, 6) == [(4, 6)]
    assert find_gaps([], 4, 3) == []


def test_complete_proof_verifies_fully() -> None:
    proof = _build(_chain(range(1, 9)))
    report = _verify(proof)
    assert (report.readings, report.gaps, report.missing) == (8, (), 0)
    assert report.signatures_checked and report.checkpoint_signed
    # Through JSON too, and without keys (the prev chain is still checked).
    doc = json.loads(json.dumps(completeness_to_dict(proof)))
    assert completeness_from_dict(doc) == proof
    bare = verify_completeness(doc)
    assert not bare.signatures_checked and not bare.checkpoint_signed


def test_removed_reading_not_reported_as_gap_fails() -> None:
    doc = completeness_to_dict(_build(_chain(range(1, 9))))
    del doc["readings"][4]  # seq 5
    assert _reason(doc) == "gap_mismatch"


def test_removed_reading_reported_as_gap_is_visible() -> None:
    doc = completeness_to_dict(_build(_chain(range(1, 9))))
    del doc["readings"][4]
    doc["gaps"] = [{"from": 5, "to": 5}]
    doc["batches"] = [
        b for b in doc["batches"] if any(r["batch_id"] == b["id"] for r in doc["readings"])
    ]
    report = _verify(doc)
    assert report.gaps == ((5, 5),) and report.missing == 1 and report.readings == 7


def test_real_gaps_are_reported() -> None:
    # Seqs 3-4 and 8 were never stored (a device outage), and the range runs past nothing.
    proof = _build(_chain([1, 2, 5, 6, 7, 9]), to_seq=9)
    assert proof.gaps == ((3, 4), (8, 8))
    report = _verify(proof)
    assert report.gaps == ((3, 4), (8, 8)) and report.readings == 6
    # A range starting inside a gap reports the leading gap.
    sub = _build(_chain([5, 6, 7]), from_seq=3, to_seq=7)
    assert _verify(sub).gaps == ((3, 4),)


def test_hidden_gap_fails() -> None:
    doc = completeness_to_dict(_build(_chain([1, 2, 5, 6]), to_seq=6))
    doc["gaps"] = []
    assert _reason(doc) == "gap_mismatch"


def test_reordered_readings_fail() -> None:
    doc = completeness_to_dict(_build(_chain(range(1, 7))))
    doc["readings"][2], doc["readings"][3] = doc["readings"][3], doc["readings"][2]
    assert _reason(doc) == "seq_order"


def test_swapped_envelopes_fail() -> None:
    # Same seq order in the document, but entries 3 and 4 carry each other's envelopes.
    doc = completeness_to_dict(_build(_chain(range(1, 7))))
    a, b = doc["readings"][2], doc["readings"][3]
    for field in ("envelope", "leaf_hash", "prev", "batch_id", "batch_index", "batch_path"):
        a[field], b[field] = b[field], a[field]
    assert _reason(doc) == "reading_mismatch"


def test_forged_prev_field_fails() -> None:
    doc = completeness_to_dict(_build(_chain(range(1, 5))))
    doc["readings"][2]["prev"] = doc["readings"][0]["leaf_hash"]
    assert _reason(doc) == "reading_mismatch"


def test_substituted_reading_breaks_the_chain() -> None:
    # The operator swaps seq 3 for another seq 3 the device also signed (a fork): everything
    # is signed, hashed and logged, but seq 4 chains to the original seq 3.
    envelopes = _chain(range(1, 6))
    fork = Reading(DEVICE, 3, 1, "iot.noise", {"db": 99}, merkle.leaf_hash(envelopes[2]))
    envelopes[3] = sign_reading(fork, KEY)
    assert _reason(_build(envelopes)) == "chain_broken"


def test_forged_prev_inside_the_envelope_fails() -> None:
    doc = completeness_to_dict(_build(_chain(range(1, 5))))
    # Seq 2 re-signed by someone else with a prev of their choosing.
    mallory = PrivateKey.generate("Ed25519")
    forged = sign_reading(Reading(DEVICE, 2, 5, "iot.noise", {"db": 1}, bytes(range(32))), mallory)
    entry = doc["readings"][1]
    entry["format"] = FORMAT_COSE
    entry["envelope"] = base64.urlsafe_b64encode(forged).rstrip(b"=").decode()
    entry["prev"] = bytes(range(32)).hex()
    assert _reason(doc) == "leaf_mismatch"
    entry["leaf_hash"] = merkle.leaf_hash(forged).hex()
    # The device key rejects the signature; without it, the batch path gives the forgery away.
    assert _reason(doc) == "unknown_kid"
    with pytest.raises(CompletenessError) as exc:
        verify_completeness(doc)
    assert exc.value.reason == "root_mismatch"


def test_tampered_batch_and_log_fail() -> None:
    doc = completeness_to_dict(_build(_chain(range(1, 7))))
    doc["batches"][0]["root"] = "00" * 32
    assert _reason(doc) == "root_mismatch"
    doc = completeness_to_dict(_build(_chain(range(1, 7))))
    doc["log"]["root"] = "11" * 32
    assert _reason(doc) == "checkpoint_mismatch"


def test_changed_batch_size_fails_in_the_log() -> None:
    # A batch of 8 leaves holding the readings at indexes 2..4: their batch paths also lead to
    # the root in a tree of 7 (RFC 9162 does not bind the size for index < 6), so only the log
    # leaf, which carries the size, can catch a lowered size.
    proof = _build(_chain(range(1, 4)), batch_size=3, others=2, after=3)
    assert _verify(proof).readings == 3
    doc = completeness_to_dict(proof)
    assert doc["batches"][0]["size"] == 8
    doc["batches"][0]["size"] = 7
    leaves = [bytes.fromhex(r["leaf_hash"]) for r in doc["readings"]]
    for r, leaf in zip(doc["readings"], leaves, strict=True):
        path = [bytes.fromhex(h) for h in r["batch_path"]]
        root = ref.root_from_path(r["batch_index"], 7, leaf, path)
        assert root is not None and root.hex() == doc["batches"][0]["root"]
    with pytest.raises(CompletenessError) as exc:
        _verify(doc)
    assert exc.value.reason == "root_mismatch"
    assert exc.value.detail.startswith("batch 1 in the log")


def test_keys_are_enforced() -> None:
    proof = _build(_chain(range(1, 4)))
    other = PrivateKey.generate("P-256").public_key
    with pytest.raises(CompletenessError) as exc:
        verify_completeness(proof, device_key=other)
    assert exc.value.reason == "unknown_kid"
    with pytest.raises(CompletenessError) as exc:
        verify_completeness(proof, log_verifiers=[generate_note_key("someone.else").verifier])
    assert exc.value.reason == "checkpoint_unknown_key"


def test_empty_range_and_malformed_documents() -> None:
    envelopes = _chain([1, 2])
    empty = dataclasses.replace(
        _build(envelopes), from_seq=3, to_seq=2, readings=(), batches=(), gaps=()
    )
    assert _verify(empty).readings == 0
    doc = completeness_to_dict(_build(envelopes))
    del doc["log"]
    assert _reason(doc) == "completeness_malformed"
    doc = completeness_to_dict(_build(envelopes))
    doc["version"] = "cityanchor/completeness/v3"
    assert _reason(doc) == "completeness_version_unsupported"
    # v1 (whose log leaf did not bind the batch size) is refused, and the message says why.
    doc["version"] = "cityanchor/completeness/v1"
    with pytest.raises(CompletenessError) as exc:
        _verify(doc)
    assert exc.value.reason == "completeness_version_unsupported"
    assert "v1" in exc.value.detail and "batch size" in exc.value.detail
    doc = completeness_to_dict(_build(envelopes))
    doc["readings"][0]["seq"] = True
    assert _reason(doc) == "completeness_malformed"


def test_cli_verify_completeness(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = completeness_to_dict(_build(_chain([1, 2, 4, 5]), to_seq=5))
    proof = tmp_path / "proof.json"
    proof.write_text(json.dumps(doc))
    vkey = tmp_path / "operator.vkey"
    vkey.write_text(OPERATOR.verifier.vkey() + "\n")
    jwk = tmp_path / "device.jwk"
    jwk.write_text(json.dumps(KEY.public_key.to_jwk()))
    args = [str(proof), "--log-key", str(vkey), "--device-key", str(jwk)]
    assert main(["verify-completeness", *args]) == 0
    out = capsys.readouterr().out
    assert "PASS completeness" in out and "missing: 3" in out and "SKIP" not in out
    del doc["readings"][1]
    proof.write_text(json.dumps(doc))
    assert main(["verify-completeness", *args, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["reason"] == "gap_mismatch"
