"""Unit tests for anchor.wire: the strict JSON loader and the shared typed field readers."""

from __future__ import annotations

import json

import pytest

from anchor.completeness import CompletenessError, completeness_from_dict
from anchor.errors import ReceiptError
from anchor.receipt import receipt_from_dict
from anchor.wire import FieldReader, JsonRejected, nesting_depth, strict_decoder, strict_loads

R = FieldReader(ReceiptError)


@pytest.mark.parametrize("form", [str, lambda t: t.encode("utf-8")])
@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('{"a": 1, "a": 2}', "duplicate key 'a'"),
        ('{"a": NaN}', "NaN is not JSON"),
        ("[-Infinity]", "-Infinity is not JSON"),
        ("[[[1]]]", "JSON nests deeper than 2"),
        ("{", "not JSON: "),
        ("9" * 5000, "not acceptable JSON"),
    ],
)
def test_strict_loads_refusals(form: object, text: str, fragment: str) -> None:
    with pytest.raises(JsonRejected) as exc:
        strict_loads(form(text), max_depth=2)  # type: ignore[operator]
    assert fragment in str(exc.value)


def test_strict_loads_accepts_json_and_takes_bytes_as_utf8_only() -> None:
    assert strict_loads(b'{"a": [1, "\xc3\xa9"]}', max_depth=2) == {"a": [1, "é"]}
    assert strict_loads('"\\"[[["', max_depth=0) == '"[[['  # brackets in strings do not count
    with pytest.raises(JsonRejected, match=r"not UTF-8 \(invalid start byte at byte 1\)"):
        strict_loads(b'"\xff"', max_depth=1)
    with pytest.raises(JsonRejected):
        strict_loads('{"a": 1}'.encode("utf-16"), max_depth=1)  # never guessed


def test_nesting_depth_stops_past_the_limit() -> None:
    assert nesting_depth(b"[" * 10_000, 3) == 4
    assert nesting_depth(b'[{"[": []}]', 9) == 3


def test_strict_decoder_has_the_same_refusals() -> None:
    with pytest.raises(JsonRejected, match="duplicate key"):
        strict_decoder().raw_decode('{"k": 1, "k": 1}')
    assert strict_decoder().raw_decode('{"k": 1} tail') == ({"k": 1}, 8)


def test_field_reader_messages_and_reasons() -> None:
    cases = [
        (lambda: R.uint(True, "a.b"), "a.b: expected an integer, got boolean"),
        (lambda: R.uint(-1, "n", 0), "n: -1 is outside [0, 2**64-1]"),
        (lambda: R.uint(5, "n", 0, 4), "n: 5 is outside [0, 4]"),
        (lambda: R.text(None, "t"), "t: expected a string, got null"),
        (lambda: R.text("\ud800", "t"), "t: contains a lone surrogate (not UTF-8)"),
        (lambda: R.obj([], ""), "$: expected an object, got array"),
        (lambda: R.get({}, "k", "x"), "x.k: missing"),
        (lambda: R.get({}, "k", ""), "k: missing"),
        (lambda: R.array({}, "l", 1), "l: expected an array, got object"),
        (lambda: R.array([1, 2], "l", 1, "anchors"), "l: 2 anchors, more than 1"),
        (lambda: R.hex32("AB" * 32, "h"), "h: not 64 lowercase hex chars"),
        (lambda: R.hex_path(["00" * 32] * 65, "p"), "p: 65 hashes, more than any tree"),
        (lambda: R.b64url("a=", "e"), "e: not base64url without padding (alphabet"),
        (lambda: R.b64url("a", "e"), "e: base64url length is impossible"),
        (lambda: R.b64url("AB", "e"), "e: base64url has non-zero trailing bits (not canonical)"),
    ]
    for call, message in cases:
        with pytest.raises(ReceiptError) as exc:
            call()
        assert exc.value.detail.startswith(message), exc.value.detail
        assert exc.value.reason == "receipt_malformed"
    with pytest.raises(ReceiptError) as exc:
        R.fail("v", "no", "receipt_version_unsupported")
    assert exc.value.reason == "receipt_version_unsupported"
    assert R.b64url("AA", "e") == b"\x00" and R.hex_path([], "p") == ()


def test_receipts_and_completeness_proofs_word_one_fault_alike() -> None:
    # The two documents used to word these differently ("expected an integer" vs "expected an
    # integer, got string", "base64url is not canonical" vs "... trailing bits ...").
    with pytest.raises(ReceiptError) as receipt:
        receipt_from_dict(json.loads('{"version": "cityanchor/receipt/v2", "reading": 1}'))
    with pytest.raises(CompletenessError) as proof:
        completeness_from_dict({"version": "cityanchor/completeness/v2", "device_id": "d"} | {
            "from_seq": "1"
        })  # fmt: skip
    assert receipt.value.detail == "reading: expected an object, got integer"
    assert proof.value.detail == "from_seq: expected an integer, got string"
    assert proof.value.reason == "completeness_malformed"
