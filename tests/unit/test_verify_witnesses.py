"""The ``witnesses`` check of anchor.verify: cosigned checkpoints, quorums, tampering."""

from __future__ import annotations

import base64
import dataclasses

import pytest
from test_verify import World, _world

from anchor.cosignature import add_cosignatures, generate_cosigner_key
from anchor.errors import UsageError
from anchor.receipt import Receipt
from anchor.verify import CHECK_NAMES, check_witnesses, verify_receipt

W1, W2, W3 = (generate_cosigner_key(f"witness-{i}.example") for i in (1, 2, 3))
TS = 1_764_000_000


@pytest.fixture(scope="module")
def world() -> World:
    return _world()


def _cosigned(r: Receipt, *signers: object, ts: int = TS) -> Receipt:
    text = r.checkpoint.split("\n\n", 1)[0] + "\n"
    lines = [s.cosign(text, ts + i) for i, s in enumerate(signers)]  # type: ignore[attr-defined]
    return dataclasses.replace(r, checkpoint=add_cosignatures(r.checkpoint, lines))


def _check(r: Receipt, keys: list[object], quorum: int = 1) -> tuple[str, str | None, str]:
    report = verify_receipt(r, witness_verifiers=keys, witness_quorum=quorum)  # type: ignore[arg-type]
    (c,) = [c for c in report.checks if c.name == "witnesses"]
    return c.status, c.reason, c.detail


def test_the_check_comes_after_the_checkpoint_signature() -> None:
    assert CHECK_NAMES.index("witnesses") == CHECK_NAMES.index("checkpoint_signature") + 1


def test_two_cosignatures_meet_a_quorum_of_two_and_name_the_witnesses(world: World) -> None:
    r = _cosigned(world.receipts[0], W1, W2)
    status, reason, detail = _check(r, [W1.verifier, W2.verifier], 2)
    assert (status, reason) == ("pass", None)
    assert W1.verifier.key_label in detail and W2.verifier.key_label in detail
    assert "2025-11-24T16:00:00Z" in detail  # each cosigner's timestamp, UTC
    # The operator's signature still verifies with the cosignature lines appended.
    full = verify_receipt(r, log_verifiers=[world.operator_vkey])  # type: ignore[list-item]
    assert {c.name: c.status for c in full.checks}["checkpoint_signature"] == "pass"


def test_without_witness_keys_the_check_is_skipped_never_passed(world: World) -> None:
    r = _cosigned(world.receipts[0], W1, W2)
    assert _check(r, [])[0] == "skip"
    # Opting into witnessing is the verifier's: without witness keys the skip alone does not
    # keep a receipt from being fully verified (the other skips here do).
    report = verify_receipt(r)
    assert report.valid and not report.fully_verified
    only = dataclasses.replace(
        report, checks=tuple(c for c in report.checks if c.name in ("witnesses", "leaf_hash"))
    )
    assert only.fully_verified
    # With a key, a missing cosignature is a failure, not a skip.
    failing = verify_receipt(world.receipts[0], witness_verifiers=[W1.verifier])
    assert not failing.valid and not failing.fully_verified


def test_quorum_above_the_cosigners_fails(world: World) -> None:
    r = _cosigned(world.receipts[0], W1, W2)
    status, reason, detail = _check(r, [W1.verifier, W2.verifier], 3)
    assert (status, reason) == ("fail", "witness_quorum_not_met")
    assert "2 of the 2" in detail
    # A trusted witness that did not cosign counts for nothing.
    assert _check(_cosigned(world.receipts[0], W1), [W1.verifier, W3.verifier], 2)[1] == (
        "witness_quorum_not_met"
    )
    assert _check(world.receipts[0], [W1.verifier])[1] == "witness_quorum_not_met"


def test_quorum_counts_distinct_witnesses_not_lines(world: World) -> None:
    # The same witness twice (two timestamps) and an untrusted one: one trusted witness.
    r = _cosigned(_cosigned(world.receipts[0], W1, W3), W1, ts=TS + 100)
    assert _check(r, [W1.verifier, W2.verifier], 2)[1] == "witness_quorum_not_met"
    assert _check(r, [W1.verifier, W1.verifier, W2.verifier], 2)[1] == "witness_quorum_not_met"
    assert _check(r, [W1.verifier], 1)[0] == "pass"


def test_tampered_cosignature_fails_invalid(world: World) -> None:
    r = _cosigned(world.receipts[0], W1, W2)
    head, _, last = r.checkpoint.rstrip("\n").rpartition("\n")
    name, _, b64 = last.rpartition(" ")
    raw = bytearray(base64.b64decode(b64))
    raw[-1] ^= 1  # one bit of W2's signature
    bad = dataclasses.replace(
        r, checkpoint=f"{head}\n{name} {base64.b64encode(bytes(raw)).decode()}\n"
    )
    assert _check(bad, [W1.verifier, W2.verifier], 1)[:2] == (
        "fail",
        "witness_cosignature_invalid",
    )
    # A bad line of a key the verifier does not trust is ignored, like any unknown line.
    assert _check(bad, [W1.verifier], 1)[0] == "pass"
    # A cosignature moved to another checkpoint does not verify there.
    other = world.receipts[-1]
    moved_lines = r.checkpoint.split("\n\n", 1)[1].splitlines(keepends=True)[1:]
    moved = dataclasses.replace(
        other,
        checkpoint=other.checkpoint.replace(
            other.checkpoint.split("\n\n", 1)[0], "x.example/other\n1\n" + "A" * 43 + "=", 1
        )
        + "".join(moved_lines),
    )
    assert _check(moved, [W1.verifier], 1)[1] == "witness_cosignature_invalid"


def test_a_quorum_below_one_is_a_usage_error(world: World) -> None:
    with pytest.raises(UsageError):
        check_witnesses(world.receipts[0].checkpoint, [W1.verifier], 0)
