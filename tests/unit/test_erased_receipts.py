"""Receipts of erased readings: no envelope, status "erased", proofs still verify."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jsonschema  # type: ignore[import-untyped]
import pytest

from anchor import merkle
from anchor.checkpoint import NoteVerifier, generate_note_key
from anchor.envelope import FORMAT_COSE, Reading, parse_envelope, sign_reading
from anchor.errors import ReceiptError
from anchor.keys import PrivateKey
from anchor.receipt import Receipt, dumps_receipt, loads_receipt, receipt_to_dict
from anchor.sealing import BatchLog, seal_batch
from anchor.verify import verify_receipt

ORIGIN = "erasure.cityanchor.example/log"
SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "docs" / "receipt-v2.schema.json").read_text()
)
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
ERASURE = {
    "erased_at": "2026-01-31T12:00:00Z",
    "erased_by": "ops-dpo",
    "legal_reason": "GDPR art. 17 request #12",
}


@dataclasses.dataclass
class World:
    receipts: list[Receipt]
    key: PrivateKey
    verifier: NoteVerifier


@pytest.fixture(scope="module")
def world() -> World:
    key = PrivateKey.generate("Ed25519")
    operator = generate_note_key(ORIGIN)
    prev = bytes(32)
    envelopes = []
    for seq in range(1, 8):
        raw = sign_reading(
            Reading("dev-e", seq, 1_764_000_000_000 + seq, "iot.noise", {"v": seq}, prev),
            key,
            format=FORMAT_COSE,
        )
        prev = merkle.leaf_hash(raw)
        envelopes.append(parse_envelope(raw))
    log = BatchLog(ORIGIN, [])
    batch = seal_batch(1, envelopes)
    index = log.append(batch.size, batch.root)
    receipts = list(log.receipts(batch, index, log.checkpoint(operator), log.size))
    return World(receipts, key, operator.verifier)


def _erase(r: Receipt) -> Receipt:
    return dataclasses.replace(r, envelope=b"", status="erased", extra={"erasure": ERASURE})


def test_erased_receipt_round_trips_and_matches_the_schema(world: World) -> None:
    erased = _erase(world.receipts[3])
    doc = receipt_to_dict(erased)
    assert doc["reading"]["envelope"] == "" and doc["status"] == "erased"
    assert doc["erasure"] == ERASURE
    assert VALIDATOR.is_valid(doc)
    assert loads_receipt(dumps_receipt(erased)) == erased


def test_empty_envelope_needs_status_erased(world: World) -> None:
    doc = receipt_to_dict(_erase(world.receipts[3]))
    doc["status"] = "sealed"
    assert not VALIDATOR.is_valid(doc)
    with pytest.raises(ReceiptError) as exc:
        loads_receipt(json.dumps(doc))
    assert exc.value.reason == "receipt_malformed"
    assert str(exc.value.detail).startswith("reading.envelope")
    with pytest.raises(ReceiptError):
        dataclasses.replace(world.receipts[3], envelope=b"")


def test_erased_receipt_skips_envelope_checks_and_proves_its_leaf(world: World) -> None:
    erased = _erase(world.receipts[3])
    report = verify_receipt(
        erased, device_keys=[world.key.public_key], log_verifiers=[world.verifier]
    )
    checks = {c.name: c for c in report.checks}
    for name in ("envelope", "signature", "leaf_hash"):
        assert checks[name].status == "skip"
        assert checks[name].detail.startswith("erased by the operator (tombstone")
        assert "GDPR art. 17" in checks[name].detail
    for name in ("batch_path", "log_path", "checkpoint", "checkpoint_signature"):
        assert checks[name].status == "pass", checks[name]
    assert report.valid and not report.fully_verified


def test_erased_receipt_with_a_forged_leaf_fails_the_batch_path(world: World) -> None:
    forged = dataclasses.replace(_erase(world.receipts[3]), leaf_hash=bytes(32))
    report = verify_receipt(forged, log_verifiers=[world.verifier])
    assert {c.name: c.status for c in report.checks}["batch_path"] == "fail"
    assert not report.valid


def test_other_receipts_of_the_batch_are_untouched(world: World) -> None:
    for r in world.receipts:
        report = verify_receipt(
            r, device_keys=[world.key.public_key], log_verifiers=[world.verifier]
        )
        assert report.valid and report.fully_verified is False  # anchors: not anchored
        skipped = ("anchors", "witnesses")  # not anchored; no witness key
        assert all(c.status == "pass" for c in report.checks if c.name not in skipped)
