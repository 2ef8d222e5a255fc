"""The envelope parser against its oracle: the parser as it was before the canonical-layout
shortcuts (tests/envelope_oracle, commit 77305c6 verbatim).

``parse_envelope`` now takes a shortcut for envelopes laid out exactly as the signer lays
them out (``_parse_canonical`` in anchor.envelope_cose / anchor.envelope_jws), steps over the
common CBOR items inline in the deterministic-form walk, skips the JSON nesting scan when a
document has fewer brackets than the bound, and takes cheaper type checks in ``Reading``. None
of it may change what is accepted, what is rejected, or the reason and message of a rejection.
Each test draws envelopes, valid and not, and demands the same outcome from both parsers:
the accepted envelope field by field (values compared by ``repr``, so ``1``, ``1.0`` and
``True`` differ), or the rejection's reason code and message.

The envelopes that matter most are the ones the shortcut looks at: the signer's outer layout
(tag, array, protected header) around a payload that is anything but the signer's, in every
spelling (head widths, key orders, float widths, duplicate keys, tags, bytes flipped), and
signed envelopes re-spelt by the fuzz mutators.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from typing import Any

import cbor2
import envelope_oracle
import pytest
from envelope_oracle import cose as oracle_cose
from envelope_oracle import wire as oracle_wire
from fuzz.corpus import corpus
from fuzz.targets import _head, mutate_bytes, mutate_cose, mutate_jws
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anchor import envelope_cose, envelope_jws, wire
from anchor.envelope import parse_envelope
from anchor.errors import EnvelopeError
from anchor.keys import b64url_encode

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def outcome(parse: Any, raw: bytes) -> tuple[Any, ...]:
    """What a parser made of ``raw``: the envelope's fields, or the rejection."""
    try:
        e = parse(raw)
    except EnvelopeError as exc:
        return ("rejected", exc.reason, str(exc))
    except Exception as exc:  # a crash must be the same crash in both
        return ("crashed", type(exc).__name__, str(exc))
    r = e.reading
    reading = (r.device_id, r.seq, r.ts, r.kind, dict(r.values), r.prev, dict(r.extra))
    return ("accepted", e.format, e.alg, e.kid, e.raw, e.signed_bytes, e.signature, repr(reading))


def assert_same(raw: bytes) -> tuple[Any, ...]:
    new = outcome(parse_envelope, raw)
    assert new == outcome(envelope_oracle.parse_envelope, raw), raw
    return new


# --------------------------------------------------------------------------------------------
# Payload values and their CBOR / JSON spellings

_FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [0.0, -0.0, 1.5, 65504.0, 65505.0, 5.960464477539063e-08, 1e-7, 3.4028234663852886e38,
     1.401298464324817e-45, 0.1, 12.5, float("nan"), float("inf")]
)  # fmt: skip
_TEXT = st.text(max_size=6) | st.sampled_from(["aq-1", "iot.air_quality", "pm2_5", "\ud800", ""])
_SCALARS = (
    st.booleans()
    | st.none()
    | st.integers(-(2**64) - 2, 2**64 + 2)
    | st.integers(-30, 30)
    | _FLOATS
    | _TEXT
    | st.binary(max_size=4)
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(_TEXT | st.integers(-3, 3), inner, max_size=3)
    ),
    max_leaves=8,
)


_GOOD_SCALARS = (
    st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.integers(-30, 30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _FLOATS.filter(math.isfinite)
    | st.text(max_size=6)
)


@st.composite
def payloads(draw: st.DrawFn, jws: bool) -> dict[Any, Any]:
    """Reading payloads, valid ones (three in four) and ones with a field missing or wrong."""
    seq = draw(st.sampled_from([1, 2, 2**64 - 1]) | st.integers(1, 2**64 - 1))
    prev = bytes(32) if seq == 1 else draw(st.binary(min_size=32, max_size=32))
    payload: dict[Any, Any] = {
        "device_id": draw(st.sampled_from(["aq-1", "dev.0_x-Y", "A" * 64])),
        "seq": seq if not _chance(draw, 5) else draw(st.sampled_from([0, True, 2**64, 1.0])),
        "ts": draw(st.integers(0, 2**64 - 1) | st.sampled_from([1_764_000_000_000, -1, 2**64])),
        "kind": draw(st.sampled_from(["iot.air_quality", "k"]) | st.text(min_size=1, max_size=5)),
        "values": draw(
            st.dictionaries(st.text(max_size=6), _GOOD_SCALARS, max_size=5)
            | st.just({"pm2_5": 12.5, "t": 21.37, "n": 3, "ok": True, "s": "x"})
        ),
        "prev": prev.hex() if jws else prev,
    }
    if _chance(draw, 20):
        # A value at the edge of what values may hold (the Reading checks take shortcuts).
        edge = ["\ud800", "\u00e9", 2**64 - 1, 2**64, -(2**64), -(2**64) - 1, True, None]
        edge += [float("nan"), float("-inf"), b"x", [1], 0.5]
        key = draw(st.sampled_from(["\u00e9", "\ud800", "k"]) | st.text(max_size=3))
        payload["values"] = {**payload["values"], key: draw(st.sampled_from(edge))}
    if draw(st.booleans()):
        extra = draw(st.dictionaries(st.text(max_size=6), _VALUES, max_size=2))
        payload.update({k: v for k, v in extra.items() if k not in payload})
    if _chance(draw, 25):
        key = draw(st.sampled_from(sorted(payload, key=str)))
        if draw(st.booleans()):
            del payload[key]
        else:
            payload[key] = draw(_VALUES)
        if _chance(draw, 25):
            payload[draw(st.integers(-3, 3) | _TEXT)] = draw(_VALUES)
    return payload


def _float_spellings(value: float) -> list[bytes]:
    out = [b"\xfb" + struct.pack(">d", value)]
    for info, fmt in ((0xFA, ">f"), (0xF9, ">e")):
        try:
            narrow = struct.pack(fmt, value)
        except (OverflowError, struct.error):
            continue
        back = struct.unpack(fmt, narrow)[0]
        if struct.pack(">d", back) == struct.pack(">d", value) or math.isnan(value):
            out.append(bytes([info]) + narrow)
    return out


def cbor_spelling(draw: st.DrawFn, value: Any) -> bytes:
    """One of many CBOR spellings of ``value``: heads of any width that fits, floats in any
    width that keeps them, map keys in any order, now and then a tag or an indefinite length."""

    # Half the values get the odd spellings (each item now and then), half none at all.
    odd = _chance(draw, 50)

    def head(major: int, arg: int) -> bytes:
        widths = [w for w in (1, 2, 4, 8) if arg < 1 << (8 * w)]
        if odd and arg >= 24 and _chance(draw, 5):
            return _head(major, arg, draw(st.sampled_from(widths)))
        return _shortest_head(major, arg)

    def enc(v: Any) -> bytes:
        if odd and _chance(draw, 1):
            return bytes([0xC0 | draw(st.sampled_from([1, 2, 18, 24]))]) + enc_untagged(v)
        return enc_untagged(v)

    def enc_untagged(v: Any) -> bytes:
        if v is None or isinstance(v, bool):
            return {None: b"\xf6", False: b"\xf4", True: b"\xf5"}[v]
        if isinstance(v, int):
            if not -(2**64) <= v < 2**64:
                return cbor2.dumps(v)
            return head(0, v) if v >= 0 else head(1, -1 - v)
        if isinstance(v, float):
            spellings = _float_spellings(v)
            return (
                draw(st.sampled_from(spellings))
                if odd and _chance(draw, 5)
                else min(spellings, key=len)
            )
        if isinstance(v, bytes | str):
            data = v if isinstance(v, bytes) else v.encode("utf-8", "surrogatepass")
            major = 2 if isinstance(v, bytes) else 3
            if odd and data and _chance(draw, 2):
                return bytes([major << 5 | 31]) + head(major, len(data)) + data + b"\xff"
            return head(major, len(data)) + data
        if isinstance(v, list):
            return head(4, len(v)) + b"".join(enc(x) for x in v)
        items = [(enc(k), enc(x)) for k, x in v.items()]
        items.sort(key=lambda kv: kv[0])
        if odd and len(items) > 1 and _chance(draw, 10):
            items = draw(st.permutations(items))
        if odd and items and _chance(draw, 3):
            items.append(items[0])  # a duplicate key
        return head(5, len(items)) + b"".join(k + x for k, x in items)

    return enc(value)


def _shortest_head(major: int, arg: int) -> bytes:
    if arg < 24:
        return bytes([major << 5 | arg])
    width = next(w for w in (1, 2, 4, 8) if arg < 1 << (8 * w))
    return _head(major, arg, width)


def _bstr(data: bytes) -> bytes:
    return _shortest_head(2, len(data)) + data


def _chance(draw: st.DrawFn, percent: int) -> bool:
    """True about ``percent`` times in a hundred. Not ``integers(0, n) == 0``: Hypothesis
    favours the ends of a range, which would make the rare case a common one."""
    return 40 <= draw(st.integers(0, 99)) < 40 + percent


class _Drawer:
    """What the fuzz mutators want (an object with ``draw``), from a composite's ``draw``."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw


def _signature(draw: st.DrawFn) -> bytes:
    sig = draw(st.binary(min_size=64, max_size=64))
    if _chance(draw, 10):
        sig = draw(st.binary(max_size=70))
    if len(sig) == 64 and draw(st.booleans()):
        # Low or high S for ES256, around n/2.
        s = draw(st.sampled_from([1, P256_N // 2, P256_N // 2 + 1, P256_N - 1]))
        sig = sig[:32] + s.to_bytes(32, "big")
    return sig


@st.composite
def cose_in_signer_layout(draw: st.DrawFn) -> bytes:
    """The signer's outer layout (what the shortcut checks byte by byte) around any payload."""
    alg = draw(st.sampled_from([-35, -1, 0] if _chance(draw, 10) else [-19, -8, -7]))
    kid = draw(st.binary(min_size=32, max_size=32))
    protected = b"\xa2\x01" + cbor2.dumps(alg) + b"\x04" + _bstr(kid)
    payload = draw(payloads(jws=False))
    if not _chance(draw, 20):
        payload_bytes = cbor_spelling(draw, payload)
    else:
        try:
            payload_bytes = cbor2.dumps(payload, canonical=draw(st.booleans()))
        except (TypeError, ValueError):
            payload_bytes = b"\xa0"
    if _chance(draw, 10):
        payload_bytes = mutate_bytes(_Drawer(draw), payload_bytes, ())  # type: ignore[arg-type]
    head = _bstr(payload_bytes)
    if _chance(draw, 10):
        wide = [w for w in (1, 2, 4) if len(payload_bytes) < 1 << (8 * w)]
        head = _head(2, len(payload_bytes), draw(st.sampled_from(wide))) + payload_bytes
    sig = _signature(draw)
    return b"\xd2\x84" + _bstr(protected) + b"\xa0" + head + _bstr(sig)


def _json_spelling(draw: st.DrawFn, payload: dict[Any, Any]) -> bytes:
    obj = {str(k) if not isinstance(k, str) else k: v for k, v in payload.items()}

    def jsonable(v: Any) -> Any:
        if isinstance(v, bytes):
            return v.hex() if draw(st.booleans()) else list(v)
        if isinstance(v, list):
            return [jsonable(x) for x in v]
        if isinstance(v, dict):
            return {str(k): jsonable(x) for k, x in v.items()}
        return v

    text = json.dumps(
        jsonable(obj),
        sort_keys=draw(st.booleans()),
        separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])),
        ensure_ascii=draw(st.booleans()),
        allow_nan=True,
    )
    if _chance(draw, 10):
        text = text[:-1] + ',"seq":1}'  # a duplicate member, or a second one
    data = text.encode("utf-8", "surrogatepass")
    if _chance(draw, 10):
        data = mutate_bytes(_Drawer(draw), data, ())  # type: ignore[arg-type]
    return data


@st.composite
def jws_in_signer_layout(draw: st.DrawFn) -> bytes:
    bad = _chance(draw, 10)
    alg = draw(st.sampled_from(["none", "RS256"] if bad else ["Ed25519", "EdDSA", "ES256"]))
    kid_text = b64url_encode(draw(st.binary(min_size=32, max_size=32)))
    if _chance(draw, 10):
        kid_text = kid_text[:-1] + draw(st.sampled_from(list("AB-_gh")))  # trailing bits
    header = f'{{"alg":"{alg}","kid":"{kid_text}"}}'.encode()
    if _chance(draw, 10):
        header = mutate_bytes(_Drawer(draw), header, ())  # type: ignore[arg-type]
    segments = [header, _json_spelling(draw, draw(payloads(jws=True))), _signature(draw)]
    texts = [b64url_encode(s) for s in segments]
    if _chance(draw, 10):
        i = draw(st.integers(0, 2))
        texts[i] = base64.urlsafe_b64encode(segments[i]).decode()  # padded
    return ".".join(texts).encode("ascii")


# --------------------------------------------------------------------------------------------
# The tests


def test_the_shortcut_takes_every_signer_envelope() -> None:
    """Otherwise the tests below would compare the general parse with itself."""
    c = corpus()
    for raw in c.cose:
        assert envelope_cose._parse_canonical(raw) is not None
        assert assert_same(raw)[0] == "accepted"
    for raw in c.jws:
        assert envelope_jws._parse_canonical(raw) is not None
        assert assert_same(raw)[0] == "accepted"


@SETTINGS
@given(st.data())
def test_cose_in_signer_layout_any_payload(data: st.DataObject) -> None:
    raw = data.draw(cose_in_signer_layout())
    result = assert_same(raw)
    if envelope_cose._parse_canonical(raw) is not None:
        assert result[0] == "accepted"


@SETTINGS
@given(st.data())
def test_jws_in_signer_layout_any_payload(data: st.DataObject) -> None:
    raw = data.draw(jws_in_signer_layout())
    result = assert_same(raw)
    if envelope_jws._parse_canonical(raw) is not None:
        assert result[0] == "accepted"


@SETTINGS
@given(st.data())
def test_mutated_signed_envelopes(data: st.DataObject) -> None:
    c = corpus()
    seed = data.draw(st.sampled_from(c.cose + c.jws))
    others = c.cose + c.jws
    how = data.draw(st.sampled_from(["bytes", "structure", "both"]))
    raw = seed
    if how in ("structure", "both"):
        raw = mutate_cose(data, raw) if raw[0] == 0xD2 else mutate_jws(data, raw)
    if how in ("bytes", "both"):
        raw = mutate_bytes(data, raw, others)
    assert_same(raw)


@SETTINGS
@given(st.data())
def test_deterministic_walk_matches_the_plain_walk(data: st.DataObject) -> None:
    """The walk with inline steps against the old recursive one, on strictly decodable CBOR
    (its precondition) in many spellings: the same end, or the same complaint."""
    value = data.draw(_VALUES | payloads(jws=False))
    encoded = cbor_spelling(data.draw, value)
    try:
        envelope_cose._cbor_decode(encoded, "x")
    except EnvelopeError:
        return

    def walk(module: Any) -> tuple[Any, ...]:
        try:
            return ("end", module._deterministic_item(encoded, 0))
        except module._NotDeterministic as exc:
            return ("not deterministic", str(exc))

    assert walk(envelope_cose) == walk(oracle_cose)


_JSON_TEXT = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=12,
).map(lambda v: json.dumps(v, allow_nan=True))


@SETTINGS
@given(
    st.one_of(
        _JSON_TEXT,
        _JSON_TEXT.map(lambda t: "\ufeff" + t),
        st.text(alphabet='[]{}"\\,:1a \ufeff', max_size=30),
        st.integers(0, 12).map(lambda n: "[" * n + "]" * n),
        st.integers(0, 12).map(lambda n: '{"a":' * n + "1" + "}" * n),
        st.integers(0, 12).map(lambda n: '["' + "[" * n + '"]'),
    ),
    st.booleans(),
    st.integers(1, 9),
)
def test_strict_loads_matches_the_old_loader(text: str, as_bytes: bool, depth: int) -> None:
    def load(module: Any) -> tuple[Any, ...]:
        arg: str | bytes = text.encode("utf-8", "surrogatepass") if as_bytes else text
        try:
            return ("ok", repr(module.strict_loads(arg, max_depth=depth)))
        except wire.JsonRejected as exc:
            return ("rejected", str(exc))

    assert load(wire) == load(oracle_wire)


@pytest.mark.parametrize(
    "raw",
    [
        # Found while writing the shortcut: each is the signer's layout but for one thing.
        b"\xd2\x84\x58\x26",
        b"\xd2\x84\x58\x26" + bytes(120),
        b"a.b.c",
        b"e30.e30.e30",
    ],
)
def test_edge_inputs(raw: bytes) -> None:
    assert assert_same(raw)[0] == "rejected"


@SETTINGS
@given(
    st.text(
        alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", max_size=12
    )
    | st.text(alphabet="AQgw-_=+/ .\u00e9", max_size=12)
    | st.binary(max_size=20).map(b64url_encode)
)
def test_canonical_segment_is_segment_spelling_when_canonical(text: str) -> None:
    """The shortcut's base64url decoder returns bytes exactly when the general one calls the
    spelling canonical, and the same bytes."""
    try:
        data, canonical = envelope_jws._segment_spelling(text, "x")
        expected = data if canonical else None
    except EnvelopeError:
        expected = None
    assert envelope_jws._canonical_segment(text.encode("utf-8")) == expected
