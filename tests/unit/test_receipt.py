"""Tests for anchor.receipt: the cityanchor/receipt/v2 JSON document (DESIGN.md "Receipt").

Every negative case asserts the stable ``reason`` and the JSON path in the message; the JSON
Schema in docs/ is checked against the same documents.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anchor.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from anchor.errors import ReceiptError
from anchor.receipt import (
    MAX_RECEIPT_SIZE,
    RECEIPT_VERSION,
    AnchorRecord,
    BatchProof,
    LogProof,
    Receipt,
    dumps_receipt,
    loads_receipt,
    receipt_from_dict,
    receipt_to_dict,
)

REPO = Path(__file__).resolve().parents[2]
SCHEMA_DOC = REPO / "docs" / "receipt-v2.schema.json"
SCHEMA_PKG = REPO / "anchor" / "schemas" / "receipt-v2.schema.json"
SCHEMA = json.loads(SCHEMA_DOC.read_text(encoding="utf-8"))
VALIDATOR = jsonschema.Draft202012Validator(
    SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
)

# The formats "Log" test key (tests/vectors/note/formats-sumdb-checkpoint.json).
SIGNER = NoteSigner.from_skey(
    "PRIVATE+KEY+Log+2271c621+AdEIq9FLRQni54Wg68T96VJO+iayOaulswav2DUMKgvQ"
)


def _h(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


LOG_ROOT = _h("log root")
CHECKPOINT = sign_checkpoint(Checkpoint("cityanchor.example/log", 9, LOG_ROOT), SIGNER)


def make_receipt(**changes: Any) -> Receipt:
    base = Receipt(
        device_id="aq-0042.district_7",
        seq=17,
        format="cose-sign1",
        envelope=b"\xd2\x84C\xa1\x01'\xa0X\x10not really cbor\xff",
        leaf_hash=_h("leaf"),
        batch=BatchProof(size=5, index=4, root=_h("batch"), path=(_h("b0"),)),
        log=LogProof(index=2, size=9, root=LOG_ROOT, path=(_h("l0"), _h("l1"), _h("l2"))),
        checkpoint=CHECKPOINT,
        anchors=(
            AnchorRecord(
                chain_id=31337,
                contract="0x5FbDB2315678afecb367f032d93F642f64180aa3",
                tx_hash="0x" + _h("tx").hex(),
                block_number=12,
                block_time="2026-11-25T15:00:00Z",
            ),
        ),
        status="anchored",
    )
    return dataclasses.replace(base, **changes)


def doc(**changes: Any) -> dict[str, Any]:
    return receipt_to_dict(make_receipt(**changes))


# --- round trips and layout ---------------------------------------------------------------------


def test_dict_round_trip() -> None:
    r = make_receipt()
    assert receipt_from_dict(receipt_to_dict(r)) == r


def test_json_round_trip_is_identity_both_ways() -> None:
    r = make_receipt()
    text = dumps_receipt(r)
    assert loads_receipt(text) == r
    assert loads_receipt(text.encode("utf-8")) == r
    assert dumps_receipt(loads_receipt(text)) == text


def test_key_order_and_encodings_follow_design() -> None:
    r = make_receipt(extra={"zz_later": 1, "aa_note": "x"})
    d = json.loads(dumps_receipt(r))
    assert list(d) == [
        "version", "reading", "leaf_hash", "batch", "log", "checkpoint", "anchors", "status",
        "zz_later", "aa_note",
    ]  # fmt: skip
    assert list(d["reading"]) == ["device_id", "seq", "format", "envelope"]
    assert list(d["batch"]) == ["size", "index", "root", "path"]
    assert list(d["log"]) == ["index", "size", "root", "path"]
    assert list(d["anchors"][0]) == [
        "chain_id", "contract", "tx_hash", "block_number", "block_time",
    ]  # fmt: skip
    assert d["version"] == RECEIPT_VERSION
    assert d["reading"]["envelope"] == "0oRDoQEnoFgQbm90IHJlYWxseSBjYm9y_w"  # no padding, url
    assert d["leaf_hash"] == _h("leaf").hex()


def test_dumps_format() -> None:
    text = dumps_receipt(make_receipt())
    assert text.endswith("}\n") and not text.endswith("\n\n")
    assert text.startswith(
        '{\n  "version": "cityanchor/receipt/v2",\n  "reading": {\n    "device_id"'
    )
    assert "\u2014" in text  # the checkpoint's em dash is written as UTF-8, not \\u2014
    assert text == json.dumps(json.loads(text), indent=2, ensure_ascii=False) + "\n"


def test_sealed_receipt_without_anchors() -> None:
    r = make_receipt(anchors=(), status="sealed")
    d = receipt_to_dict(r)
    assert d["anchors"] == [] and d["status"] == "sealed"
    assert loads_receipt(dumps_receipt(r)) == r
    VALIDATOR.validate(d)


def test_erased_status_accepted() -> None:
    r = make_receipt(status="erased")
    assert loads_receipt(dumps_receipt(r)).status == "erased"


def test_extra_top_level_fields_kept_nested_ones_ignored() -> None:
    d = doc()
    d["hash_scheme"] = "rfc9162-sm3"
    d["future"] = {"nested": [1, 2.5, None, True, "x"]}
    d["reading"]["unknown"] = 1
    d["batch"]["unknown"] = 1
    d["log"]["unknown"] = 1
    d["anchors"][0]["unknown"] = 1
    r = receipt_from_dict(d)
    assert dict(r.extra) == {
        "hash_scheme": "rfc9162-sm3",
        "future": {"nested": [1, 2.5, None, True, "x"]},
    }
    again = receipt_to_dict(r)
    assert again["future"] == d["future"] and "unknown" not in again["reading"]
    VALIDATOR.validate(d)


def test_extra_is_read_only_and_copied() -> None:
    source = {"k": [1]}
    r = make_receipt(extra=source)
    source["other"] = [2]
    assert dict(r.extra) == {"k": [1]}
    with pytest.raises(TypeError):
        r.extra["x"] = 1  # type: ignore[index]
    receipt_to_dict(r)["k"].append(99)
    assert r.extra["k"] == [1]


def test_receipt_is_hashable_and_frozen() -> None:
    r = make_receipt(extra={"k": 1})
    assert hash(r) == hash(make_receipt(extra={"k": 1}))
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.seq = 2  # type: ignore[misc]


def test_lists_are_stored_as_tuples() -> None:
    r = make_receipt(
        batch=BatchProof(5, 4, _h("b"), [_h("x")]),  # type: ignore[arg-type]
        anchors=list(make_receipt().anchors),
    )
    assert isinstance(r.batch.path, tuple) and isinstance(r.anchors, tuple)


# --- schema -------------------------------------------------------------------------------------


def test_packaged_schema_is_the_docs_schema() -> None:
    assert SCHEMA_PKG.read_bytes() == SCHEMA_DOC.read_bytes()


def test_schema_is_valid_draft_2020_12() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_output_validates_against_schema() -> None:
    VALIDATOR.validate(json.loads(dumps_receipt(make_receipt())))


# --- malformed documents ------------------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    def mutate(d: dict[str, Any]) -> None:
        *parents, last = _split(path)
        target: Any = d
        for p in parents:
            target = target[p]
        target[last] = value

    return mutate


def _delete(path: str) -> Mutation:
    def mutate(d: dict[str, Any]) -> None:
        *parents, last = _split(path)
        target: Any = d
        for p in parents:
            target = target[p]
        del target[last]

    return mutate


def _split(path: str) -> list[str | int]:
    out: list[str | int] = []
    for part in path.replace("[", ".").replace("]", "").split("."):
        out.append(int(part) if part.isdigit() else part)
    return out


HEX = _h("x").hex()
ENV = receipt_to_dict(make_receipt())["reading"]["envelope"]

# (mutation, JSON path expected at the start of the message, reason, schema_rejects_it_too)
MALFORMED: list[tuple[str, Mutation, str, str, bool]] = [
    ("missing version", _delete("version"), "version", "receipt_malformed", True),
    (
        "wrong version",
        _set("version", "cityanchor/receipt/v3"),
        "version",
        "receipt_version_unsupported",
        True,
    ),
    (
        "retired version v1",
        _set("version", "cityanchor/receipt/v1"),
        "version",
        "receipt_version_retired",
        True,
    ),
    ("version not a string", _set("version", 1), "version", "receipt_malformed", True),
    ("missing reading", _delete("reading"), "reading", "receipt_malformed", True),
    ("reading not object", _set("reading", []), "reading", "receipt_malformed", True),
    (
        "missing device_id",
        _delete("reading.device_id"),
        "reading.device_id",
        "receipt_malformed",
        True,
    ),
    (
        "device_id too long",
        _set("reading.device_id", "a" * 65),
        "reading.device_id",
        "receipt_malformed",
        True,
    ),
    (
        "device_id with slash",
        _set("reading.device_id", "a/b"),
        "reading.device_id",
        "receipt_malformed",
        True,
    ),
    (
        "device_id not string",
        _set("reading.device_id", 7),
        "reading.device_id",
        "receipt_malformed",
        True,
    ),
    ("seq zero", _set("reading.seq", 0), "reading.seq", "receipt_malformed", True),
    ("seq negative", _set("reading.seq", -1), "reading.seq", "receipt_malformed", True),
    ("seq bool", _set("reading.seq", True), "reading.seq", "receipt_malformed", True),
    ("seq string", _set("reading.seq", "17"), "reading.seq", "receipt_malformed", True),
    ("seq float", _set("reading.seq", 17.5), "reading.seq", "receipt_malformed", True),
    (
        "seq float with zero fraction",
        _set("reading.seq", 17.0),
        "reading.seq",
        "receipt_malformed",
        False,
    ),
    ("seq too large", _set("reading.seq", 2**64), "reading.seq", "receipt_malformed", True),
    ("bad format", _set("reading.format", "cbor"), "reading.format", "receipt_malformed", True),
    (
        "format not string",
        _set("reading.format", None),
        "reading.format",
        "receipt_malformed",
        True,
    ),
    (
        "envelope padded",
        _set("reading.envelope", "AAA="),
        "reading.envelope",
        "receipt_malformed",
        True,
    ),
    (
        "envelope std alphabet",
        _set("reading.envelope", ENV.replace("_", "/")),
        "reading.envelope",
        "receipt_malformed",
        True,
    ),
    (
        "envelope plus",
        _set("reading.envelope", "ab+c"),
        "reading.envelope",
        "receipt_malformed",
        True,
    ),
    ("envelope empty", _set("reading.envelope", ""), "reading.envelope", "receipt_malformed", True),
    (
        "envelope impossible length",
        _set("reading.envelope", "AAAAA"),
        "reading.envelope",
        "receipt_malformed",
        True,
    ),
    (
        "envelope stray bits",
        _set("reading.envelope", "AB"),
        "reading.envelope",
        "receipt_malformed",
        True,
    ),
    (
        "envelope whitespace",
        _set("reading.envelope", "AAAA AAAA"),
        "reading.envelope",
        "receipt_malformed",
        True,
    ),
    (
        "envelope not string",
        _set("reading.envelope", [1]),
        "reading.envelope",
        "receipt_malformed",
        True,
    ),
    ("leaf_hash short", _set("leaf_hash", HEX[:62]), "leaf_hash", "receipt_malformed", True),
    ("leaf_hash long", _set("leaf_hash", HEX + "00"), "leaf_hash", "receipt_malformed", True),
    ("leaf_hash uppercase", _set("leaf_hash", HEX.upper()), "leaf_hash", "receipt_malformed", True),
    ("leaf_hash 0x", _set("leaf_hash", "0x" + HEX[2:]), "leaf_hash", "receipt_malformed", True),
    ("leaf_hash missing", _delete("leaf_hash"), "leaf_hash", "receipt_malformed", True),
    ("batch missing", _delete("batch"), "batch", "receipt_malformed", True),
    # v1 carried batch.id; nothing bound it (a receipt with batch.id 999999 verified), so v2
    # refuses it in any form rather than ignore it like other unknown nested fields.
    ("batch.id", _set("batch.id", 3), "batch.id", "receipt_malformed", True),
    ("batch.id negative", _set("batch.id", -1), "batch.id", "receipt_malformed", True),
    ("batch.size zero", _set("batch.size", 0), "batch.size", "receipt_malformed", True),
    ("batch.index negative", _set("batch.index", -1), "batch.index", "receipt_malformed", True),
    ("batch.index == size", _set("batch.index", 5), "batch.index", "receipt_malformed", False),
    ("batch.index > size", _set("batch.index", 6), "batch.index", "receipt_malformed", False),
    ("batch.index missing", _delete("batch.index"), "batch.index", "receipt_malformed", True),
    (
        "batch.root uppercase",
        _set("batch.root", HEX.upper()),
        "batch.root",
        "receipt_malformed",
        True,
    ),
    ("batch.path not list", _set("batch.path", HEX), "batch.path", "receipt_malformed", True),
    (
        "batch.path bad item",
        _set("batch.path", [HEX, HEX, HEX[:10]]),
        "batch.path[2]",
        "receipt_malformed",
        True,
    ),
    (
        "batch.path item not string",
        _set("batch.path", [None]),
        "batch.path[0]",
        "receipt_malformed",
        True,
    ),
    (
        "batch.path too long",
        _set("batch.path", [HEX] * 65),
        "batch.path",
        "receipt_malformed",
        True,
    ),
    ("log.index == size", _set("log.index", 9), "log.index", "receipt_malformed", False),
    ("log.size zero", _set("log.size", 0), "log.size", "receipt_malformed", True),
    ("log.size string", _set("log.size", "9"), "log.size", "receipt_malformed", True),
    ("log.root missing", _delete("log.root"), "log.root", "receipt_malformed", True),
    (
        "log.path bad item",
        _set("log.path", [HEX, "zz" * 32]),
        "log.path[1]",
        "receipt_malformed",
        True,
    ),
    ("checkpoint missing", _delete("checkpoint"), "checkpoint", "receipt_malformed", True),
    ("checkpoint empty", _set("checkpoint", ""), "checkpoint", "receipt_malformed", True),
    (
        "checkpoint not string",
        _set("checkpoint", {"size": 1}),
        "checkpoint",
        "receipt_malformed",
        True,
    ),
    ("anchors missing", _delete("anchors"), "anchors", "receipt_malformed", True),
    ("anchors not list", _set("anchors", {}), "anchors", "receipt_malformed", True),
    ("anchor not object", _set("anchors", [1]), "anchors[0]", "receipt_malformed", True),
    (
        "anchor chain_id zero",
        _set("anchors[0].chain_id", 0),
        "anchors[0].chain_id",
        "receipt_malformed",
        True,
    ),
    (
        "anchor chain_id bool",
        _set("anchors[0].chain_id", True),
        "anchors[0].chain_id",
        "receipt_malformed",
        True,
    ),
    (
        "anchor contract short",
        _set("anchors[0].contract", "0x" + "ab" * 19),
        "anchors[0].contract",
        "receipt_malformed",
        True,
    ),
    (
        "anchor contract no 0x",
        _set("anchors[0].contract", "ab" * 20),
        "anchors[0].contract",
        "receipt_malformed",
        True,
    ),
    (
        "anchor tx_hash uppercase",
        _set("anchors[0].tx_hash", "0x" + HEX.upper()),
        "anchors[0].tx_hash",
        "receipt_malformed",
        True,
    ),
    (
        "anchor tx_hash short",
        _set("anchors[0].tx_hash", "0x" + HEX[:60]),
        "anchors[0].tx_hash",
        "receipt_malformed",
        True,
    ),
    (
        "anchor block_number negative",
        _set("anchors[0].block_number", -5),
        "anchors[0].block_number",
        "receipt_malformed",
        True,
    ),
    (
        "anchor block_time no zone",
        _set("anchors[0].block_time", "2026-11-25T15:00:00"),
        "anchors[0].block_time",
        "receipt_malformed",
        True,
    ),
    (
        "anchor block_time date only",
        _set("anchors[0].block_time", "2026-11-25"),
        "anchors[0].block_time",
        "receipt_malformed",
        True,
    ),
    (
        "anchor block_time epoch",
        _set("anchors[0].block_time", 1764082800),
        "anchors[0].block_time",
        "receipt_malformed",
        True,
    ),
    (
        "anchor block_time month 13",
        _set("anchors[0].block_time", "2026-13-25T15:00:00Z"),
        "anchors[0].block_time",
        "receipt_malformed",
        False,
    ),
    (
        "anchor block_time Feb 30",
        _set("anchors[0].block_time", "2026-02-30T15:00:00Z"),
        "anchors[0].block_time",
        "receipt_malformed",
        False,
    ),
    (
        "anchor block_time offset 24h",
        _set("anchors[0].block_time", "2026-11-25T15:00:00+24:00"),
        "anchors[0].block_time",
        "receipt_malformed",
        False,
    ),
    (
        "anchor field missing",
        _delete("anchors[0].tx_hash"),
        "anchors[0].tx_hash",
        "receipt_malformed",
        True,
    ),
    ("status unknown", _set("status", "pending"), "status", "receipt_malformed", True),
    ("status missing", _delete("status"), "status", "receipt_malformed", True),
    ("anchored without anchors", _set("anchors", []), "status", "receipt_malformed", True),
]


@pytest.mark.parametrize(
    ("mutate", "path", "reason", "schema_too"),
    [pytest.param(m, p, r, s, id=desc) for desc, m, p, r, s in MALFORMED],
)
def test_malformed_field(mutate: Mutation, path: str, reason: str, schema_too: bool) -> None:
    d = doc()
    mutate(d)
    with pytest.raises(ReceiptError) as exc:
        receipt_from_dict(d)
    assert exc.value.reason == reason
    assert exc.value.detail.startswith(path + ":"), exc.value.detail
    # The same document through JSON text gives the same verdict.
    with pytest.raises(ReceiptError) as exc2:
        loads_receipt(json.dumps(d))
    assert exc2.value.detail == exc.value.detail
    # The schema agrees, except where DESIGN's rule is beyond JSON Schema (documented in it).
    assert VALIDATOR.is_valid(d) is not schema_too


def test_valid_variants_accepted_by_both() -> None:
    variants: list[dict[str, Any]] = [
        {"anchors[0].block_time": "2026-11-25T15:00:00.123456789+08:00"},
        {"anchors[0].contract": "0x" + "ab" * 20},
        {"reading.envelope": "AA"},
        {"reading.envelope": "AAA"},
        {"reading.format": "jws"},
        {"batch.path": []},
        {"reading.seq": 2**64 - 1},
        {"reading.device_id": "a" * 64},
    ]
    for changes in variants:
        d = doc()
        for path, value in changes.items():
            _set(path, value)(d)
        receipt_from_dict(d)
        VALIDATOR.validate(d)


def test_not_an_object() -> None:
    values: list[Any] = [[], "x", 1, None]
    for value in values:
        with pytest.raises(ReceiptError) as exc:
            receipt_from_dict(value)
        assert exc.value.detail.startswith("$:")


# --- JSON text ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('{"version": "a", "version": "b"}', "duplicate key"),
        ('{"reading": {"seq": 1, "seq": 2}}', "duplicate key"),
        ('{"x": NaN}', "NaN"),
        ('{"x": Infinity}', "Infinity"),
        ('{"x": -Infinity}', "-Infinity"),
        ("", "not JSON"),
        ("{", "not JSON"),
        ("{} {}", "not JSON"),
        ("{'a': 1}", "not JSON"),
        ("[" * 100_000 + "]" * 100_000, "nests deeper"),
        ('{"x": ' + "9" * 5000 + "}", "not acceptable JSON"),
    ],
)
def test_bad_json(text: str, fragment: str) -> None:
    with pytest.raises(ReceiptError) as exc:
        loads_receipt(text)
    assert exc.value.reason == "receipt_malformed"
    assert exc.value.detail.startswith("$:")
    assert fragment in exc.value.detail


def test_extra_field_with_nan_rejected() -> None:
    text = dumps_receipt(make_receipt()).replace('"status"', '"x": NaN,\n  "status"')
    with pytest.raises(ReceiptError) as exc:
        loads_receipt(text)
    assert "NaN" in exc.value.detail


def test_not_utf8() -> None:
    with pytest.raises(ReceiptError) as exc:
        loads_receipt(b'{"version": "\xff"}')
    assert exc.value.reason == "receipt_malformed"


def test_bom_rejected() -> None:
    with pytest.raises(ReceiptError):
        loads_receipt("\ufeff" + dumps_receipt(make_receipt()))


def test_size_cap() -> None:
    big = dumps_receipt(make_receipt()).replace(
        '"status"', f'"pad": "{"x" * MAX_RECEIPT_SIZE}", "status"'
    )
    for text in (big, big.encode()):
        with pytest.raises(ReceiptError) as exc:
            loads_receipt(text)
        assert exc.value.reason == "receipt_too_large"
    # Multi-byte characters count as bytes, not characters.
    wide = '{"pad": "' + "\u00e9" * (MAX_RECEIPT_SIZE // 2 + 1) + '"}'
    assert len(wide) < MAX_RECEIPT_SIZE
    with pytest.raises(ReceiptError) as exc:
        loads_receipt(wide)
    assert exc.value.reason == "receipt_too_large"


def test_dumps_refuses_what_loads_would_refuse() -> None:
    with pytest.raises(ReceiptError) as exc:
        dumps_receipt(make_receipt(extra={"pad": "x" * MAX_RECEIPT_SIZE}))
    assert exc.value.reason == "receipt_too_large"


# --- constructors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "path"),
    [
        (lambda: make_receipt(device_id=""), "reading.device_id"),
        (lambda: make_receipt(seq=True), "reading.seq"),
        (lambda: make_receipt(format="JWS"), "reading.format"),
        (lambda: make_receipt(envelope=b""), "reading.envelope"),
        (lambda: make_receipt(envelope="text"), "reading.envelope"),
        (lambda: make_receipt(leaf_hash=_h("x").hex()), "leaf_hash"),
        (lambda: make_receipt(leaf_hash=_h("x")[:31]), "leaf_hash"),
        (lambda: make_receipt(batch=None), "batch"),
        (lambda: make_receipt(log=make_receipt().batch), "log"),
        (lambda: make_receipt(checkpoint=b"x"), "checkpoint"),
        (lambda: make_receipt(anchors=("x",)), "anchors[0]"),
        (lambda: make_receipt(status="anchored", anchors=()), "status"),
        (lambda: make_receipt(extra={"status": "x"}), "status"),
        (lambda: make_receipt(extra={"version": "x"}), "version"),
        (lambda: make_receipt(extra={"x": float("nan")}), "x"),
        (lambda: make_receipt(extra={"x": (1, 2)}), "x"),
        (lambda: make_receipt(extra={"x": {"y": b"raw"}}), "x.y"),
        (lambda: make_receipt(extra={"x": "\ud800"}), "x"),
        (lambda: BatchProof(2, 2, _h("r"), ()), "batch.index"),
        (lambda: BatchProof(2, 0, _h("r"), (b"short",)), "batch.path[0]"),
        (lambda: LogProof(0, 0, _h("r"), ()), "log.size"),
        (lambda: LogProof(0, 1, _h("r"), "ab"), "log.path"),  # type: ignore[arg-type]
        (
            lambda: AnchorRecord(1, "0x" + "00" * 20, "0x" + "00" * 32, 1, "yesterday"),
            "anchor.block_time",
        ),
        (
            lambda: AnchorRecord(1, "0x" + "00" * 20, "0X" + "00" * 32, 1, "2026-01-01T00:00:00Z"),
            "anchor.tx_hash",
        ),
    ],
)
def test_constructors_validate(build: Callable[[], object], path: str) -> None:
    with pytest.raises(ReceiptError) as exc:
        build()
    assert exc.value.reason == "receipt_malformed"
    assert exc.value.detail.startswith(path + ":"), exc.value.detail


# --- property: random valid receipts round trip -------------------------------------------------

_hash = st.binary(min_size=32, max_size=32)
_uint64 = st.integers(0, 2**64 - 1)
_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)


@st.composite
def _proof(draw: st.DrawFn, cls: type[Any]) -> Any:
    size = draw(st.integers(1, 2**64 - 1))
    index = draw(st.integers(0, size - 1))
    path = tuple(draw(st.lists(_hash, max_size=8)))
    if cls is BatchProof:
        return BatchProof(size, index, draw(_hash), path)
    return LogProof(index, size, draw(_hash), path)


_anchor = st.builds(
    AnchorRecord,
    chain_id=st.integers(1, 2**64 - 1),
    contract=st.from_regex(r"\A0x[0-9a-fA-F]{40}\Z"),
    tx_hash=st.from_regex(r"\A0x[0-9a-f]{64}\Z"),
    block_number=_uint64,
    block_time=st.datetimes().map(lambda t: t.isoformat() + "Z"),
)


@st.composite
def receipts(draw: st.DrawFn) -> Receipt:
    anchors = tuple(draw(st.lists(_anchor, max_size=3)))
    status = draw(st.sampled_from(["sealed", "erased", *(["anchored"] if anchors else [])]))
    log = draw(_proof(LogProof))
    checkpoint = sign_checkpoint(Checkpoint("cityanchor.example/log", log.size, log.root), SIGNER)
    extra = draw(
        st.dictionaries(
            st.text(max_size=12).filter(lambda k: k not in receipt_to_dict(make_receipt())),
            _json_values,
            max_size=4,
        )
    )
    return Receipt(
        device_id=draw(st.from_regex(r"\A[A-Za-z0-9._-]{1,64}\Z")),
        seq=draw(st.integers(1, 2**64 - 1)),
        format=draw(st.sampled_from(["cose-sign1", "jws"])),
        envelope=draw(st.binary(min_size=1, max_size=300)),
        leaf_hash=draw(_hash),
        batch=draw(_proof(BatchProof)),
        log=log,
        checkpoint=checkpoint,
        anchors=anchors,
        status=status,
        extra=extra,
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(receipts())
def test_random_receipts_round_trip(r: Receipt) -> None:
    d = receipt_to_dict(r)
    assert receipt_from_dict(copy.deepcopy(d)) == r
    text = dumps_receipt(r)
    assert loads_receipt(text) == r
    assert dumps_receipt(loads_receipt(text)) == text
    VALIDATOR.validate(json.loads(text))
