"""The receipt route's serializer (anchor.api.public_proofs.receipt_body) writes exactly the
bytes of anchor.receipt.dumps_receipt: the API's bodies (and their ETags) are unchanged."""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Any

import pytest

from anchor.api.public_proofs import _indented, receipt_body
from anchor.api.public_schemas import RECEIPT_EXAMPLE
from anchor.receipt import dumps_receipt, receipt_from_dict


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return rng.choice(
            ["", "plain", 'quote " and \\ back', "tab\t nl\n", "ünï 😀 \u2028", "\x00\x1f"]
        )
    if kind == 1:
        return rng.randint(-(1 << 70), 1 << 70)
    if kind == 2:
        return rng.choice([0.0, -0.0, 1.5, 1e300, -2.5e-308, 0.1])
    if kind == 3:
        return rng.choice([True, False, None])
    if kind in (4, 5):
        return rng.randrange(100)
    if kind == 6:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 7:
        return tuple(_value(rng, depth + 1) for _ in range(rng.randrange(3)))
    return {f'k{i} é"': _value(rng, depth + 1) for i in range(rng.randrange(4))}


def test_indented_equals_json_dumps_on_random_values() -> None:
    rng = random.Random(15)
    for _ in range(2000):
        value = _value(rng)
        out: list[str] = []
        _indented(value, out, "\n")
        assert "".join(out) == json.dumps(value, indent=2, ensure_ascii=False, allow_nan=False)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), {1: "int key"}, {"k": {1, 2}}])
def test_indented_refuses_what_json_refuses(bad: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        _indented(bad, [], "\n")


def test_receipt_body_is_dumps_receipt() -> None:
    receipt = receipt_from_dict(
        dict(RECEIPT_EXAMPLE, reading=dict(RECEIPT_EXAMPLE["reading"], envelope="ZXlK"))
    )
    assert receipt_body(receipt) == dumps_receipt(receipt).encode("utf-8")
    erased = dataclasses.replace(
        receipt,
        envelope=b"",
        status="erased",
        extra={"erasure": {"erased_at": "2026-01-01T00:00:00Z", "erased_by": "dpo é", "n": [1.5]}},
    )
    assert receipt_body(erased) == dumps_receipt(erased).encode("utf-8")
