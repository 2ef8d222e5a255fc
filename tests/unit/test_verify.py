"""Receipt verification: valid receipts pass every check; each tampering fails the right one."""

from __future__ import annotations

import dataclasses
import random

import pytest

from anchor import merkle
from anchor.checkpoint import generate_note_key
from anchor.envelope import FORMAT_COSE, FORMAT_JWS, Reading, parse_envelope, sign_reading
from anchor.keys import PrivateKey
from anchor.receipt import AnchorRecord, Receipt, dumps_receipt, loads_receipt
from anchor.sealing import BatchLog, seal_batch
from anchor.verify import verify_receipt

ORIGIN = "test.cityanchor.example/log"


@dataclasses.dataclass
class World:
    receipts: list[Receipt]
    keys: list[PrivateKey]
    operator_vkey: object


def _world(hasher: merkle.Hasher = merkle.SHA256) -> World:
    rng = random.Random(7)
    keys = [PrivateKey.generate("Ed25519"), PrivateKey.generate("P-256")]
    operator = generate_note_key(ORIGIN)
    envelopes = []
    prev = {0: bytes(32), 1: bytes(32)}
    for i in range(23):
        k = i % 2
        reading = Reading(
            device_id=f"dev-{k}",
            seq=i // 2 + 1,
            ts=1_764_000_000_000 + i,
            kind="iot.noise",
            values={"laeq_db": round(rng.uniform(30, 90), 1)},
            prev=prev[k],
        )
        raw = sign_reading(reading, keys[k], format=FORMAT_COSE if i % 3 else FORMAT_JWS)
        prev[k] = merkle.leaf_hash(raw)
        envelopes.append(parse_envelope(raw))
    log = BatchLog(ORIGIN, [(4, bytes([9]) * 32)], hasher=hasher)  # a batch from before, at 0
    batches = [
        seal_batch(1, envelopes[:10], hasher=hasher),
        seal_batch(2, envelopes[10:], hasher=hasher),
    ]
    indexes = [log.append(b.size, b.root) for b in batches]
    note = log.checkpoint(operator)
    receipts = [
        r for b, i in zip(batches, indexes, strict=True) for r in log.receipts(b, i, note, log.size)
    ]
    return World(receipts, keys, operator.verifier)


@pytest.fixture(scope="module")
def world() -> World:
    return _world()


def _verify(w: World, receipt: Receipt) -> dict[str, tuple[str, str | None]]:
    report = verify_receipt(
        receipt,
        device_keys=[k.public_key for k in w.keys],
        log_verifiers=[w.operator_vkey],  # type: ignore[list-item]
    )
    return {c.name: (c.status, c.reason) for c in report.checks}


def test_every_fresh_receipt_passes_every_offline_check(world: World) -> None:
    assert len(world.receipts) == 23
    for r in world.receipts:
        report = verify_receipt(
            r,
            device_keys=[k.public_key for k in world.keys],
            log_verifiers=[world.operator_vkey],  # type: ignore[list-item]
        )
        assert report.valid
        statuses = {c.name: c.status for c in report.checks}
        assert statuses.pop("anchors") == "skip"  # not anchored yet
        assert (
            statuses.pop("witnesses") == "skip"
        )  # no witness key (tests/unit/test_verify_witnesses.py)
        assert set(statuses.values()) == {"pass"}, report


def test_receipt_survives_json_round_trip(world: World) -> None:
    r = world.receipts[4]
    again = loads_receipt(dumps_receipt(r))
    assert again == r
    assert _verify(world, again)["batch_path"] == ("pass", None)


def test_without_keys_signature_checks_are_skipped_not_passed(world: World) -> None:
    report = verify_receipt(world.receipts[0])
    statuses = {c.name: c.status for c in report.checks}
    assert statuses["signature"] == "skip"
    assert statuses["checkpoint_signature"] == "skip"
    assert statuses["witnesses"] == "skip"
    assert report.valid and not report.fully_verified


def _flip(data: bytes, i: int) -> bytes:
    return data[:i] + bytes([data[i] ^ 1]) + data[i + 1 :]


def test_flipped_signature_byte_fails_signature_and_leaf(world: World) -> None:
    r = world.receipts[1]  # COSE: its last byte is inside the signature
    bad = dataclasses.replace(r, envelope=_flip(r.envelope, len(r.envelope) - 1))
    checks = _verify(world, bad)
    assert checks["signature"] == ("fail", "bad_signature")
    assert checks["leaf_hash"] == ("fail", "leaf_mismatch")
    assert checks["batch_path"] == ("fail", "root_mismatch")


def test_receipt_for_other_device_or_seq_fails_envelope_check(world: World) -> None:
    r = world.receipts[2]
    assert _verify(world, dataclasses.replace(r, seq=r.seq + 1))["envelope"] == (
        "fail",
        "receipt_mismatch",
    )
    assert _verify(world, dataclasses.replace(r, device_id="dev-9"))["envelope"] == (
        "fail",
        "receipt_mismatch",
    )


def test_untrusted_device_key_is_unknown_kid(world: World) -> None:
    report = verify_receipt(world.receipts[0], device_keys=[PrivateKey.generate().public_key])
    checks = {c.name: (c.status, c.reason) for c in report.checks}
    assert checks["signature"] == ("fail", "unknown_kid")


def test_altered_batch_path_fails_batch_path(world: World) -> None:
    r = world.receipts[3]
    path = list(r.batch.path)
    path[0] = _flip(path[0], 0)
    bad = dataclasses.replace(r, batch=dataclasses.replace(r.batch, path=tuple(path)))
    assert _verify(world, bad)["batch_path"] == ("fail", "root_mismatch")


def test_wrong_batch_index_fails_batch_path(world: World) -> None:
    r = world.receipts[3]
    bad = dataclasses.replace(r, batch=dataclasses.replace(r.batch, index=r.batch.index + 1))
    assert _verify(world, bad)["batch_path"][0] == "fail"


def test_swapped_log_root_fails_log_path_and_checkpoint(world: World) -> None:
    r = world.receipts[5]
    bad = dataclasses.replace(r, log=dataclasses.replace(r.log, root=bytes(32)))
    checks = _verify(world, bad)
    assert checks["log_path"] == ("fail", "root_mismatch")
    assert checks["checkpoint"] == ("fail", "checkpoint_mismatch")


def test_checkpoint_from_another_operator_fails_signature(world: World) -> None:
    r = world.receipts[6]
    other = generate_note_key(ORIGIN)
    report = verify_receipt(r, log_verifiers=[other.verifier])
    checks = {c.name: c.status for c in report.checks}
    assert checks["checkpoint"] == "pass"
    assert checks["checkpoint_signature"] == "fail"


def test_anchors_are_handed_to_the_checker(world: World) -> None:
    from anchor.verify import Check

    anchor = AnchorRecord(31337, "0x" + "11" * 20, "0x" + "22" * 32, 12, "2026-11-25T15:00:00Z")
    r = dataclasses.replace(world.receipts[0], anchors=(anchor,), status="anchored")
    seen = []

    def checker(receipt: Receipt) -> list[Check]:
        seen.append(receipt)
        return [Check("anchors", "fail", "not on chain", "anchor_missing")]

    report = verify_receipt(r, anchor_checker=checker)
    assert seen == [r]
    assert not report.valid
    offline = verify_receipt(r)
    assert {c.name: c.status for c in offline.checks}["anchors"] == "skip"


def test_sm3_receipts_verify_and_name_their_scheme() -> None:
    w = _world(merkle.SM3)
    r = w.receipts[0]
    assert r.extra == {"hash_scheme": "rfc9162-sm3"}
    assert loads_receipt(dumps_receipt(r)) == r
    checks = _verify(w, r)
    assert checks["batch_path"] == ("pass", None)
    assert checks["log_path"] == ("pass", None)
    # The same receipt read as SHA-256 must not verify.
    sha = dataclasses.replace(r, extra={})
    assert _verify(w, sha)["leaf_hash"] == ("fail", "leaf_mismatch")
