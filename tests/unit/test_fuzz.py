"""A fixed-seed share of the fuzz campaign (``make fuzz`` runs 100,000+ cases).

Each target mutates valid envelopes, receipts, completeness proofs and checkpoints and asserts
that no mutated input verifies and that only documented reason codes come out. See
``tests/fuzz/targets.py``.
"""

from __future__ import annotations

import pytest
from fuzz.targets import TARGETS, FuzzFailure, Target, documented_reasons, run_target

# A hang guard, not a speed measurement (make fuzz holds each case to 1 s on an idle machine).
CASE_LIMIT_S = 10.0
CASES_PER_TARGET = 200


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_fuzz_target_fixed_seed(target: Target) -> None:
    stats = run_target(
        target, examples=CASES_PER_TARGET, derandomize=True, case_limit_s=CASE_LIMIT_S
    )
    assert stats.cases >= CASES_PER_TARGET // 2
    # The target reached past the first parse: mutations that parse got a verifier's verdict.
    assert stats.rejected > 0
    assert set(stats.reasons) <= documented_reasons()


def test_reason_code_table_is_read() -> None:
    codes = documented_reasons()
    for code in (
        "malformed",
        "bad_signature",
        "root_mismatch",
        "receipt_malformed",
        "checkpoint_malformed",
        "completeness_malformed",
    ):
        assert code in codes


def test_a_malleable_verifier_would_be_caught() -> None:
    """The harness itself: a check that accepts a changed byte string must fail the target."""
    from fuzz.targets import Outcome, mutate_bytes

    def lax(candidate: bytes, seed: bytes) -> Outcome:
        return "accepted"

    lenient = Target("lax", lambda: (b"seed bytes",), mutate_bytes, _strict_equal(lax))
    with pytest.raises(FuzzFailure):
        run_target(lenient, examples=20, derandomize=True, case_limit_s=CASE_LIMIT_S)


def _strict_equal(check):  # type: ignore[no-untyped-def]
    def wrapped(candidate: bytes, seed: bytes) -> str:
        outcome = check(candidate, seed)
        if outcome == "accepted" and candidate != seed:
            raise FuzzFailure("accepted a changed input")
        return str(outcome)

    return wrapped
