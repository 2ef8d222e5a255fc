"""Generate the envelope vectors in this folder: ``valid.json`` and ``invalid.json``.

Run ``.venv/bin/python tests/vectors/envelope/generate.py`` after changing a case here; the
output is deterministic (Ed25519 signatures are, and cbor2 ``canonical`` encoding is), and
``tests/unit/test_envelope.py`` fails when the files and this script disagree.

Every envelope is signed with the RFC 8037 appendix A.1 Ed25519 key (a published test key),
except the ``unknown_kid`` case, which uses a second key derived from a fixed seed, and the ES256
cases, signed with a P-256 key derived from a fixed seed (RFC 6979 deterministic ECDSA, so the
output is still deterministic); a case that is not checked with the file's ``key`` names its own
``key``. Invalid cases are *correctly signed* wherever their structure allows, so that each is
rejected for the one rule it breaks and not for a bad signature. The structural builders below
write CBOR by hand where cbor2 cannot be made to (duplicate keys, indefinite lengths, trailing
bytes, non-shortest heads, unsorted keys).

The ``canonical`` section holds the variants of a genuine signed reading that a third party can
make without the key (issue 10, item 5): each must be refused with ``non_canonical``, in
``anchor/envelope.py`` and in the explorer's ``verify.js`` alike.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

HERE = Path(__file__).resolve().parent

# RFC 8037 appendix A.1.
RFC8037_D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
RFC8037_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
TEST_JWK = {"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X}


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def thumbprint(x: str) -> bytes:
    # RFC 7638, written out independently of anchor.keys.
    canonical = '{"crv":"Ed25519","kty":"OKP","x":"' + x + '"}'
    return hashlib.sha256(canonical.encode()).digest()


SK = Ed25519PrivateKey.from_private_bytes(unb64u(RFC8037_D))
KID = thumbprint(RFC8037_X)
OTHER_SK = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"cityanchor other key").digest())
OTHER_KID = thumbprint(b64u(OTHER_SK.public_key().public_bytes_raw()))

PREV = hashlib.sha256(b"previous envelope").digest()

# A P-256 key from a fixed seed (test-only, like the RFC 8037 key), and the group order n.
EC_SK = ec.derive_private_key(
    int.from_bytes(hashlib.sha256(b"cityanchor P-256 vector key").digest(), "big"), ec.SECP256R1()
)
_EC_PUB = EC_SK.public_key().public_numbers()
EC_JWK = {"kty": "EC", "crv": "P-256", "x": b64u(_EC_PUB.x.to_bytes(32, "big")),
          "y": b64u(_EC_PUB.y.to_bytes(32, "big"))}  # fmt: skip
EC_KID = hashlib.sha256(
    f'{{"crv":"P-256","kty":"EC","x":"{EC_JWK["x"]}","y":"{EC_JWK["y"]}"}}'.encode()
).digest()
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
# Ed25519's group order L (RFC 8032 section 5.1).
ED25519_L = 2**252 + 27742317777372353535851937790883648493


def es256(message: bytes, *, high_s: bool = False) -> bytes:
    """A deterministic (RFC 6979) ES256 signature ``r || s``, low-S unless ``high_s``."""
    der = EC_SK.sign(message, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
    r, s = decode_dss_signature(der)
    s = min(s, P256_N - s)
    if high_s:
        s = P256_N - s
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def ed25519_plus_l(signature: bytes) -> bytes:
    """The same Ed25519 signature with S + L (S little-endian, RFC 8032 section 5.1.6)."""
    s = int.from_bytes(signature[32:], "little") + ED25519_L
    return signature[:32] + s.to_bytes(32, "little")


def base_payload() -> dict[str, Any]:
    return {
        "device_id": "aq-0001",
        "seq": 7,
        "ts": 1_700_000_000_123,
        "kind": "iot.air_quality",
        "values": {"pm25": 12.5, "no2": 31, "status": "ok", "heated": False},
        "prev": PREV,
    }


# -- hand-rolled CBOR ------------------------------------------------------------------------


def head(major: int, n: int) -> bytes:
    """The RFC 8949 section 3 initial byte(s) for ``major`` with argument ``n`` (minimal)."""
    if n < 24:
        return bytes([major << 5 | n])
    for info, fmt in ((24, ">B"), (25, ">H"), (26, ">I"), (27, ">Q")):
        if n < 1 << (8 * struct.calcsize(fmt)):
            return bytes([major << 5 | info]) + struct.pack(fmt, n)
    raise ValueError(n)


def enc(obj: Any) -> bytes:
    return bytes(cbor2.dumps(obj, canonical=True))


def cmap(pairs: list[tuple[bytes, bytes]]) -> bytes:
    """A definite-length map from already-encoded keys and values, in the order given."""
    return head(5, len(pairs)) + b"".join(k + v for k, v in pairs)


def payload_map(payload: dict[str, Any]) -> bytes:
    """The payload map, keys in RFC 8949 section 4.2.1 order (bytewise, by encoding), so that
    a case breaks only the rule it names."""
    return cmap(sorted((enc(k), enc(v)) for k, v in payload.items()))


def protected(alg: Any = -19, kid: Any = KID, **more: Any) -> bytes:
    items: dict[Any, Any] = {}
    if alg is not None:
        items[1] = alg
    if kid is not None:
        items[4] = kid
    for label, value in more.items():
        items[int(label[1:]) if label.startswith("l") else label] = value
    return enc(items)


def sig_structure(
    protected_bytes: bytes, payload_bytes: bytes, aad: bytes = b"", context: str = "Signature1"
) -> bytes:
    # RFC 9052 section 4.4, written out: [context, body_protected, external_aad, payload].
    return head(4, 4) + enc(context) + enc(protected_bytes) + enc(aad) + enc(payload_bytes)


def cose(
    protected_bytes: bytes | None = None,
    payload_bytes: bytes | None = None,
    *,
    unprotected: bytes = b"\xa0",
    signature: bytes | None = None,
    tag: bool = True,
    sk: Ed25519PrivateKey = SK,
    sign: Callable[[bytes], bytes] | None = None,
    trailer: bytes = b"",
    heads: dict[str, bytes] | None = None,
) -> bytes:
    """A COSE_Sign1 message assembled byte by byte and signed over its own Sig_structure.

    ``heads`` replaces the head of an outer element (``array``, ``protected``, ``payload``,
    ``signature``) by the bytes given, e.g. a longer spelling of the same argument."""
    p = protected() if protected_bytes is None else protected_bytes
    body = payload_map(base_payload()) if payload_bytes is None else payload_bytes
    if signature is None:
        signature = (sign or sk.sign)(sig_structure(p, body))
    h = {"array": head(4, 4), "protected": head(2, len(p)), "payload": head(2, len(body)),
         "signature": head(2, len(signature)), **(heads or {})}  # fmt: skip
    return (
        (b"\xd2" if tag else b"")
        + h["array"]
        + h["protected"]
        + p
        + unprotected
        + h["payload"]
        + body
        + h["signature"]
        + signature
        + trailer
    )


def cose_payload(**changes: Any) -> bytes:
    """A signed COSE message whose payload is ``base_payload()`` with ``changes`` applied
    (a value of ``...`` deletes the key)."""
    payload = base_payload()
    for key, value in changes.items():
        if value is ...:
            del payload[key]
        else:
            payload[key] = value
    return cose(payload_bytes=payload_map(payload))


# -- JWS ---------------------------------------------------------------------------------------


def jws_payload_obj(**changes: Any) -> dict[str, Any]:
    payload = {**base_payload(), "prev": PREV.hex()}
    for key, value in changes.items():
        if value is ...:
            del payload[key]
        else:
            payload[key] = value
    return payload


def compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def jws(
    header: bytes | dict[str, Any] | None = None,
    payload: bytes | dict[str, Any] | None = None,
    *,
    signature: bytes | None = None,
    sk: Ed25519PrivateKey = SK,
    sign: Callable[[bytes], bytes] | None = None,
) -> str:
    """A JWS compact string from raw (or JSON-encoded) header and payload, correctly signed."""
    if header is None:
        header = {"alg": "Ed25519", "kid": b64u(KID)}
    if payload is None:
        payload = jws_payload_obj()
    h = header if isinstance(header, bytes) else compact(header)
    p = payload if isinstance(payload, bytes) else compact(payload)
    signing_input = f"{b64u(h)}.{b64u(p)}"
    if signature is None:
        signature = (sign or sk.sign)(signing_input.encode())
    return f"{signing_input}.{b64u(signature)}"


def retail(segment: str) -> str:
    """The same base64url segment with its last character's unused trailing bits set: a lenient
    decoder reads the same bytes (the segment must leave unused bits, i.e. len % 4 != 0)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    assert len(segment) % 4
    return segment[:-1] + alphabet[alphabet.index(segment[-1]) | 1]


def padded(segment: str) -> str:
    return segment + "=" * (-len(segment) % 4)


def jws_hdr(**changes: Any) -> str:
    header: dict[str, Any] = {"alg": "Ed25519", "kid": b64u(KID)}
    for key, value in changes.items():
        if value is ...:
            header.pop(key, None)
        else:
            header[key] = value
    return jws(header)


def deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def half(bits: int) -> bytes:
    return b"\xf9" + struct.pack(">H", bits)


# -- the cases ---------------------------------------------------------------------------------


def valid_cases() -> list[dict[str, Any]]:
    p = base_payload()
    fiveg = {**p, "kind": "5g.cell_kpi", "cell_id": "460-00-1234-5", "slice": {"sst": 1},
             "values": {"rsrp_dbm": -95, "sinr_db": 12.25, "latency_ms": 8}}  # fmt: skip
    # Untagged, non-canonical CBOR and unprotected-header variants were valid here before
    # issue 10 (item 5); they are in invalid.json now, reason non_canonical.
    floats = {**p, "values": FLOAT_EDGES}
    ec_cose = cose(protected(alg=-7, kid=EC_KID), enc(p), sign=es256)
    ec_jws = jws({"alg": "ES256", "kid": b64u(EC_KID)}, sign=es256)
    cases: list[tuple[str, str, str, bytes | str, dict[str, Any], bool]] = [
        ("COSE, alg -19 (Ed25519), tagged", "cose-sign1", "Ed25519", cose(payload_bytes=enc(p)),
         p, True),
        ("COSE, alg -8 (EdDSA), tagged", "cose-sign1", "EdDSA",
         cose(protected(alg=-8), enc(p)), p, True),
        ("COSE, 5G extra keys", "cose-sign1", "Ed25519", cose(payload_bytes=enc(fiveg)), fiveg,
         True),
        ("COSE, alg -7 (ES256), low-S", "cose-sign1", "ES256", ec_cose, p, False),
        ("COSE, floats in their shortest forms", "cose-sign1", "Ed25519",
         cose(payload_bytes=enc(floats)), floats, True),
        ("JWS, alg ES256, low-S", "jws", "ES256", ec_jws, p, False),
        ("JWS, alg Ed25519", "jws", "Ed25519", jws(), p, True),
        ("JWS, alg EdDSA", "jws", "EdDSA", jws({"alg": "EdDSA", "kid": b64u(KID)}), p, True),
        ("JWS, 5G extra keys", "jws", "Ed25519", jws(payload=jws_payload_obj(
            **{k: v for k, v in fiveg.items() if k != "prev"})), fiveg, True),
        ("JWS, whitespace and unsorted members", "jws", "Ed25519", jws(
            json.dumps({"kid": b64u(KID), "alg": "Ed25519", "typ": "cityanchor+jws"},
                       indent=2).encode(),
            json.dumps(jws_payload_obj(), indent=1).encode()), p, False),
    ]  # fmt: skip
    out = []
    for desc, fmt, alg, raw, reading, ours in cases:
        data = raw.encode() if isinstance(raw, str) else raw
        out.append(
            {
                "desc": desc,
                "format": fmt,
                "alg": alg,
                # Checked with the file's key, unless the case names its own.
                **({"key": EC_JWK} if alg == "ES256" else {}),
                **({"text": raw} if isinstance(raw, str) else {"hex": raw.hex()}),
                "reading": {**reading, "prev": reading["prev"].hex()},
                "leaf_hash": hashlib.sha256(b"\x00" + data).hexdigest(),
                # Whether anchor.envelope.sign_reading must produce exactly these bytes.
                "ours": ours,
            }
        )
    return out


# Floats at the edges of the half/single/double forms; cbor2 canonical=True writes each in the
# shortest form that keeps its value (RFC 8949 section 4.2.1 preferred serialization).
FLOAT_EDGES = {
    "a_tenth": 0.1,  # double only
    "half_max": 65504.0,  # f9 7bff
    "half_subnormal": 5.960464477539063e-08,  # f9 0001
    "neg_zero": -0.0,  # f9 8000
    "single_max": 3.4028234663852886e38,  # fa 7f7fffff
    "single_only": 1.100000023841858,  # fa 3f8ccccd
}
assert enc(65504.0) == b"\xf9\x7b\xff" and enc(-0.0) == b"\xf9\x80\x00"


def sig_of_cose() -> bytes:
    return SK.sign(sig_structure(protected(), payload_map(base_payload())))


def canonical_cases(add: Callable[[str, bytes | str, str], None], section: list[str]) -> None:
    """Other spellings of genuine signed readings, as a third party can make them: each one
    is ``non_canonical`` (DESIGN.md "Envelope wire format", canonical form only)."""
    section[0] = "canonical"
    p = base_payload()
    prot, body = protected(), payload_map(p)
    sig = SK.sign(sig_structure(prot, body))
    nc = "non_canonical"

    # Outer structure: the tag, the unsigned unprotected header, the heads of the array.
    add("COSE without tag 18", cose(tag=False), nc)
    add("COSE unprotected header {99: 'attacker text'}",
        cose(signature=sig, unprotected=enc({99: "attacker text"})), nc)  # fmt: skip
    add("COSE unprotected header with a 1 KiB text label",
        cose(signature=sig, unprotected=enc({"note": "x" * 1024})), nc)  # fmt: skip
    add("COSE unprotected header as an empty map spelt b8 00", cose(unprotected=b"\xb8\x00"), nc)
    add("COSE array of 4 spelt 98 04", cose(heads={"array": b"\x98\x04"}), nc)
    add("COSE protected bstr length as 4 bytes (5a)",
        cose(heads={"protected": b"\x5a" + struct.pack(">I", len(prot))}), nc)  # fmt: skip
    add("COSE payload bstr length as 4 bytes (5a)",
        cose(heads={"payload": b"\x5a" + struct.pack(">I", len(body))}), nc)  # fmt: skip
    add("COSE payload bstr length as 2 bytes (59)",
        cose(heads={"payload": b"\x59" + struct.pack(">H", len(body))}), nc)  # fmt: skip
    add("COSE signature bstr length as 8 bytes (5b)",
        cose(heads={"signature": b"\x5b" + struct.pack(">Q", 64)}), nc)  # fmt: skip
    add("COSE untagged with the array spelt 98 04",
        cose(tag=False, heads={"array": b"\x98\x04"}), "malformed")  # fmt: skip

    # Protected header contents (signed: only the device could make these, but they are still
    # not the canonical form, and two spellings of one header must not both be accepted).
    add("COSE protected header keys unsorted {4: kid, 1: alg}",
        cose(cmap([(enc(4), enc(KID)), (enc(1), enc(-19))])), nc)  # fmt: skip
    add("COSE protected alg -19 spelt 38 12",
        cose(cmap([(enc(1), b"\x38\x12"), (enc(4), enc(KID))])), nc)  # fmt: skip
    # RFC 7049's "canonical" order (shorter keys first, which cbor2 canonical=True uses) is not
    # RFC 8949's bytewise order once keys of different types mix: 1000 (19 03e8) sorts before
    # "x" (61 78) bytewise, after it by length. Unknown protected labels are otherwise ignored.
    length_first = enc({1: -19, 4: KID, "x": 1, 1000: 1})
    assert length_first.index(b"\x61x") < length_first.index(b"\x19\x03\xe8")
    add("COSE protected header in length-first (RFC 7049) order", cose(length_first), nc)
    add("COSE protected kid length spelt 59 00 20",
        cose(cmap([(enc(1), enc(-19)), (enc(4), b"\x59\x00\x20" + KID)])), nc)  # fmt: skip

    # Payload contents.
    def spelt(**raw_values: bytes) -> bytes:
        return cose(payload_bytes=cmap(
            [(enc(k), raw_values.get(k, enc(v))) for k, v in sorted(
                p.items(), key=lambda kv: enc(kv[0]))]))  # fmt: skip

    assert spelt() == cose(payload_bytes=enc(p))  # the helper is canonical when nothing changes
    add("payload keys in insertion order",
        cose(payload_bytes=cmap([(enc(k), enc(v)) for k, v in p.items()])), nc)  # fmt: skip
    add("payload seq 7 spelt 18 07", spelt(seq=b"\x18\x07"), nc)
    add("payload seq 7 spelt 1b 00..07", spelt(seq=b"\x1b" + struct.pack(">Q", 7)), nc)
    add("payload kind length spelt 78 0f", spelt(kind=b"\x78\x0f" + p["kind"].encode()), nc)
    add("payload prev length spelt 59 00 20", spelt(prev=b"\x59\x00\x20" + PREV), nc)
    vals = sorted(p["values"].items(), key=lambda kv: enc(kv[0]))
    add("payload values keys unsorted",
        spelt(values=cmap([(enc(k), enc(v)) for k, v in reversed(vals)])), nc)  # fmt: skip
    for desc, spelling in (("single", b"\xfa" + struct.pack(">f", 12.5)),
                           ("double", b"\xfb" + struct.pack(">d", 12.5))):  # fmt: skip
        add(f"payload 12.5 as a {desc}-precision float",
            spelt(values=cmap([(enc(k), spelling if k == "pm25" else enc(v))
                               for k, v in vals])), nc)  # fmt: skip
    edges = sorted(FLOAT_EDGES.items(), key=lambda kv: enc(kv[0]))
    for name, fmt in (("half_max", ">f"), ("half_subnormal", ">f"), ("neg_zero", ">d"),
                      ("single_max", ">d"), ("single_only", ">d")):  # fmt: skip
        wide = (b"\xfa" if fmt == ">f" else b"\xfb") + struct.pack(fmt, FLOAT_EDGES[name])
        add(f"payload {name} {FLOAT_EDGES[name]!r} as {'single' if fmt == '>f' else 'double'}",
            spelt(values=cmap([(enc(k), wide if k == name else enc(v)) for k, v in edges])),
            nc)  # fmt: skip
    add("payload values map length spelt b9 00 04",
        spelt(values=b"\xb9\x00\x04" + b"".join(enc(k) + enc(v) for k, v in vals)),
        nc)  # fmt: skip

    # ES256: (r, s) -> (r, n - s) verifies with any ECDSA verifier.
    ec_prot = protected(alg=-7, kid=EC_KID)
    add("COSE ES256 high-S (r, n - s)",
        cose(ec_prot, body, sign=lambda m: es256(m, high_s=True)), nc)  # fmt: skip
    ec_header = {"alg": "ES256", "kid": b64u(EC_KID)}
    add("JWS ES256 high-S (r, n - s)", jws(ec_header, sign=lambda m: es256(m, high_s=True)), nc)

    # JWS: other spellings of the same three segments.
    good = jws()
    h, b, sg = good.split(".")
    add("JWS signature padded with ==", f"{h}.{b}.{padded(sg)}", nc)
    add("JWS signature with non-zero trailing bits", f"{h}.{b}.{retail(sg)}", nc)
    assert len(sg) % 4, "the signature must leave unused bits"
    # The usual header is a multiple of 3 bytes (no spare bits): add a "typ" that leaves some.
    typed = next(t for t in ("JOSE", "JOSE+JSON", "x") if len(b64u(compact(
        {"alg": "Ed25519", "kid": b64u(KID), "typ": t}))) % 4)  # fmt: skip
    th, tb, ts = jws({"alg": "Ed25519", "kid": b64u(KID), "typ": typed}).split(".")
    add("JWS header padded", f"{padded(th)}.{tb}.{ts}", nc)
    add("JWS header with non-zero trailing bits", f"{retail(th)}.{tb}.{ts}", nc)
    # Likewise an extra payload member, so that the payload segment leaves unused bits.
    note = next(t for t in ("x", "xx", "xxx") if len(b64u(compact(jws_payload_obj(note=t)))) % 4)
    ph, pb, ps = jws(payload=jws_payload_obj(note=note)).split(".")
    add("JWS payload padded", f"{ph}.{padded(pb)}.{ps}", nc)
    add("JWS payload with non-zero trailing bits", f"{ph}.{retail(pb)}.{ps}", nc)


def invalid_cases() -> list[dict[str, Any]]:
    c: list[tuple[str, bytes | str, str]] = []
    section = ["format"]

    def add(desc: str, raw: bytes | str, reason: str) -> None:
        c.append((f"{section[0]}: {desc}", raw, reason))

    p = base_payload()

    # Format detection.
    add("empty input", b"", "malformed")
    add("neither CBOR nor JWS", b"hello world", "malformed")
    add("self-describe tag 55799 before tag 18", b"\xd9\xd9\xf7" + cose(), "malformed")
    add("COSE_Mac0 tag 17", b"\xd1" + cose()[1:], "malformed")
    add("tag 18 spelt with a 1-byte argument", b"\xd8\x12" + cose()[1:], "malformed")

    # COSE structure.
    section[0] = "COSE"
    add("trailing byte after COSE_Sign1", cose(trailer=b"\x00"), "malformed")
    add("truncated COSE_Sign1", cose()[:-1], "malformed")
    add("tag 18 twice", b"\xd2" + cose(), "malformed")
    add("array of 3", b"\xd2\x83" + cose()[2:-66], "malformed")
    body = payload_map(p)
    add(
        "indefinite-length unprotected map",
        cose(unprotected=b"\xbf\xff"),
        "malformed",
    )
    add("unprotected header is an array", cose(unprotected=b"\x80"), "malformed")
    add("detached payload (nil)", b"\xd2\x84" + head(2, len(protected())) + protected() + b"\xa0"
        + b"\xf6" + enc(SK.sign(sig_structure(protected(), b""))), "malformed")  # fmt: skip
    add(
        "protected header is a map, not a bstr",
        b"\xd2\x84" + enc({1: -19, 4: KID}) + b"\xa0" + enc(body) + enc(bytes(64)),
        "malformed",
    )
    add("signature of 63 bytes", cose(signature=bytes(63)), "malformed")
    add("signature of 65 bytes", cose(signature=bytes(65)), "malformed")

    # COSE headers.
    dup_hdr = cmap([(enc(1), enc(-19)), (enc(4), enc(KID)), (enc(1), enc(-19))])
    add("duplicate label in protected header", cose(dup_hdr), "malformed")
    add("alg only in unprotected header", cose(protected(alg=None), unprotected=enc({1: -19})),
        "malformed")  # fmt: skip
    add("alg in both buckets", cose(protected(), unprotected=enc({1: -19})), "malformed")
    add("kid only in unprotected header", cose(protected(kid=None), unprotected=enc({4: KID})),
        "malformed")  # fmt: skip
    add("crit in unprotected header", cose(unprotected=enc({2: [1]})), "malformed")
    add("protected header lacks alg", cose(protected(alg=None)), "malformed")
    add("protected header lacks kid", cose(protected(kid=None)), "malformed")
    add("empty protected bstr", cose(b""), "malformed")
    add("kid of 31 bytes", cose(protected(kid=KID[:31])), "malformed")
    add("kid as text", cose(protected(kid=b64u(KID))), "malformed")
    add("alg -35 (ES384)", cose(protected(alg=-35)), "alg_not_allowed")
    add("alg -257 (RS256)", cose(protected(alg=-257)), "alg_not_allowed")
    add("alg 0 (reserved)", cose(protected(alg=0)), "alg_not_allowed")
    add("alg as text 'EdDSA'", cose(protected(alg="EdDSA")), "alg_not_allowed")
    add("alg -19.0 as a float", cose(protected(alg=-19.0)), "alg_not_allowed")
    add("crit names an unknown label", cose(protected(l2=[99], l99=1)), "unsupported_header")
    add("crit names a text label", cose(protected(l2=["x"], x=1)), "unsupported_header")
    add("crit is empty", cose(protected(l2=[])), "malformed")

    # CBOR payload rules.
    dup = cmap([(enc(k), enc(v)) for k, v in p.items()] + [(enc("seq"), enc(8))])
    add("duplicate payload key", cose(payload_bytes=dup), "malformed")
    indef = b"\xbf" + b"".join(enc(k) + enc(v) for k, v in p.items()) + b"\xff"
    add("indefinite-length payload map", cose(payload_bytes=indef), "malformed")
    indef_text = cmap([(enc(k), b"\x7f\x61a\xff" if k == "kind" else enc(v)) for k, v in p.items()])
    add("indefinite-length text string", cose(payload_bytes=indef_text), "malformed")
    add("payload with trailing byte", cose(payload_bytes=payload_map(p) + b"\x00"), "malformed")
    add("payload is an array", cose(payload_bytes=enc([1, 2])), "malformed")
    add("payload nests 9 deep", cose_payload(deep=deep(8)), "malformed")
    for desc, bits in (("NaN", 0x7E00), ("+inf", 0x7C00), ("-inf", 0xFC00)):
        vals = cmap([(enc("pm25"), half(bits))])
        raw = cmap([(enc(k), vals if k == "values" else enc(v)) for k, v in p.items()])
        add(f"half-precision {desc} in values", cose(payload_bytes=raw), "malformed")
    add("double NaN in an extra key", cose_payload(x=math.nan), "malformed")
    int_key = cmap([(enc(k), enc(v)) for k, v in p.items()] + [(enc(5), enc(1))])
    add("integer key in payload", cose(payload_bytes=int_key), "malformed")
    add("integer key in values", cose_payload(values={1: 2}), "malformed")
    add("bignum tag 2 for seq", cose(payload_bytes=cmap(
        [(enc(k), b"\xc2\x41\x07" if k == "seq" else enc(v)) for k, v in p.items()])),
        "malformed")  # fmt: skip
    add("datetime tag 1 for ts", cose(payload_bytes=cmap(
        [(enc(k), b"\xc1\x1a\x65\x53\xf1\x00" if k == "ts" else enc(v)) for k, v in p.items()])),
        "malformed")  # fmt: skip
    add("tag 24 in an extra key", cose_payload(x=cbor2.CBORTag(24, b"\x01")), "malformed")
    add("unknown tag 1234 in values", cose(payload_bytes=cmap(
        [(enc(k), cmap([(enc("a"), b"\xd9\x04\xd2\x01")]) if k == "values" else enc(v))
         for k, v in p.items()])), "malformed")  # fmt: skip
    add("undefined in values", cose(payload_bytes=cmap(
        [(enc(k), cmap([(enc("a"), b"\xf7")]) if k == "values" else enc(v))
         for k, v in p.items()])), "malformed")  # fmt: skip
    add("simple value 99 in an extra key", cose(payload_bytes=cmap(
        [(enc(k), enc(v)) for k, v in p.items()] + [(enc("x"), b"\xf8\x63")])),
        "malformed")  # fmt: skip
    add("invalid UTF-8 in kind", cose(payload_bytes=cmap(
        [(enc(k), b"\x62\xc3\x28" if k == "kind" else enc(v)) for k, v in p.items()])),
        "malformed")  # fmt: skip
    add("nested map in values", cose_payload(values={"a": {"b": 1}}), "malformed")
    add("null in values", cose_payload(values={"a": None}), "malformed")
    add("byte string in values", cose_payload(values={"a": b"x"}), "malformed")
    for key in ("device_id", "seq", "ts", "kind", "values", "prev"):
        add(f"payload lacks {key}", cose_payload(**{key: ...}), "malformed")
    add("seq 0", cose_payload(seq=0), "malformed")
    add("seq negative", cose_payload(seq=-1), "malformed")
    add("seq as a float", cose_payload(seq=7.0), "malformed")
    add("seq as true", cose_payload(seq=True), "malformed")
    add("seq as text", cose_payload(seq="7"), "malformed")
    add("ts negative", cose_payload(ts=-1), "malformed")
    add("device_id with a space", cose_payload(device_id="aq 0001"), "malformed")
    add("device_id of 65 characters", cose_payload(device_id="a" * 65), "malformed")
    add("device_id empty", cose_payload(device_id=""), "malformed")
    add("device_id non-ASCII", cose_payload(device_id="aq-\uff10001"), "malformed")
    add("device_id with a trailing newline", cose_payload(device_id="aq-0001\n"), "malformed")
    add("kind empty", cose_payload(kind=""), "malformed")
    add("prev of 31 bytes", cose_payload(prev=PREV[:31]), "malformed")
    add("prev as hex text in COSE", cose_payload(prev=PREV.hex()), "malformed")
    add("seq 1 with a non-zero prev", cose_payload(seq=1), "malformed")

    # JWS structure and base64url.
    section[0] = "JWS"
    good = jws()
    h, b, s = good.split(".")
    add("JWS with one dot", f"{h}.{b}", "malformed")
    add("JWS with three dots", good + ".", "malformed")
    add("JWS JSON serialization", json.dumps({"protected": h, "payload": b, "signature": s}),
        "malformed")  # fmt: skip
    add("padding on the signature (wrong amount)", good + "=", "malformed")
    add("'+' (standard base64) in the payload", f"{h}.{b[:-1]}+.{s}", "malformed")
    add("whitespace in a segment", f"{h}.{b[:10]} {b[10:]}.{s}", "malformed")
    add("trailing newline", good + "\n", "malformed")
    add("padding inside a segment", f"{h}.{b[:-2]}==.{s}", "malformed")
    add("'=' where no padding is needed", f"{h}.{b}.{s}A==", "malformed")
    add("non-ASCII byte", good.encode()[:-1] + b"\xc3\xa9", "malformed")
    add("empty header segment", f".{b}.{s}", "malformed")
    add("empty payload (detached)", jws(payload=b""), "malformed")
    add("signature of 63 bytes", jws(signature=bytes(63)), "malformed")
    add("header is not JSON", jws(b"{alg:Ed25519}"), "malformed")
    add("header is a JSON array", jws(b'["alg"]'), "malformed")
    add("header is not UTF-8", jws(b'{"alg":"\xff"}'), "malformed")

    # JWS header rules.
    add("alg none", jws_hdr(alg="none"), "alg_not_allowed")
    add("alg HS256", jws_hdr(alg="HS256"), "alg_not_allowed")
    add("alg ES384", jws_hdr(alg="ES384"), "alg_not_allowed")
    add("alg lower-case ed25519", jws_hdr(alg="ed25519"), "alg_not_allowed")
    add("alg as a number", jws_hdr(alg=-19), "alg_not_allowed")
    add("alg missing", jws_hdr(alg=...), "malformed")
    add("kid missing", jws_hdr(kid=...), "malformed")
    add("kid of 31 bytes", jws_hdr(kid=b64u(KID[:31])), "malformed")
    add("kid padded", jws_hdr(kid=b64u(KID) + "="), "malformed")
    add("kid as hex", jws_hdr(kid=KID.hex()), "malformed")
    add("kid as a number", jws_hdr(kid=7), "malformed")
    add("b64 false", jws_hdr(b64=False, crit=...), "unsupported_header")
    add("b64 false listed in crit", jws_hdr(b64=False, crit=["b64"]), "unsupported_header")
    add("crit with an unknown name", jws_hdr(crit=["exp"], exp=1), "unsupported_header")
    add("crit empty", jws_hdr(crit=[]), "malformed")
    add("crit not an array", jws_hdr(crit="exp"), "malformed")
    dup_header = b'{"alg":"Ed25519","alg":"Ed25519","kid":"%s"}' % b64u(KID).encode()
    add("duplicate header member", jws(dup_header), "malformed")
    dup_alg = b'{"alg":"Ed25519","kid":"%s","alg":"none"}' % b64u(KID).encode()
    add("alg duplicated, second one none", jws(dup_alg), "malformed")

    # JSON payload rules.
    body_text = compact(jws_payload_obj())
    add("duplicate payload member", jws(payload=body_text[:-1] + b',"seq":8}'), "malformed")
    add("NaN literal", jws(payload=body_text.replace(b'"pm25":12.5', b'"pm25":NaN')), "malformed")
    add("Infinity literal", jws(payload=body_text.replace(b"12.5", b"Infinity")), "malformed")
    add("-Infinity literal", jws(payload=body_text.replace(b"12.5", b"-Infinity")), "malformed")
    add("1e400 overflows to infinity", jws(payload=body_text.replace(b"12.5", b"1e400")),
        "malformed")  # fmt: skip
    add("integer beyond the CBOR range", jws(payload=body_text.replace(b"12.5", b"1" + b"0" * 30)),
        "malformed")  # fmt: skip
    add("seq as 7.0", jws(payload=jws_payload_obj(seq=7.0)), "malformed")
    add("seq as 7e0", jws(payload=body_text.replace(b'"seq":7', b'"seq":7e0')), "malformed")
    add("seq as true", jws(payload=jws_payload_obj(seq=True)), "malformed")
    add("seq as a string", jws(payload=jws_payload_obj(seq="7")), "malformed")
    add("seq 2**64", jws(payload=jws_payload_obj(seq=2**64)), "malformed")
    add("ts as a float", jws(payload=jws_payload_obj(ts=1.5)), "malformed")
    add("prev upper-case hex", jws(payload=jws_payload_obj(prev=PREV.hex().upper())), "malformed")
    add("prev of 31 bytes", jws(payload=jws_payload_obj(prev=PREV.hex()[:62])), "malformed")
    add("prev base64url", jws(payload=jws_payload_obj(prev=b64u(PREV))), "malformed")
    add("payload is a JSON array", jws(payload=b"[1,2]"), "malformed")
    add("payload is not UTF-8", jws(payload=body_text.replace(b"iot.air", b"iot.\xffir")),
        "malformed")  # fmt: skip
    add("payload with a UTF-8 BOM", jws(payload=b"\xef\xbb\xbf" + body_text), "malformed")
    add("lone surrogate escape in kind", jws(payload=body_text.replace(b"iot.air",
        b"iot.\\ud800")), "malformed")  # fmt: skip
    add("payload nests 9 deep", jws(payload=jws_payload_obj(deep=deep(8))), "malformed")
    add("payload of 5000 '['", jws(payload=b"[" * 5000), "malformed")
    add("nested object in values", jws(payload=jws_payload_obj(values={"a": {"b": 1}})),
        "malformed")  # fmt: skip
    add("null in values", jws(payload=jws_payload_obj(values={"a": None})), "malformed")
    add("payload lacks values", jws(payload=jws_payload_obj(values=...)), "malformed")
    add("trailing garbage after the JSON", jws(payload=body_text + b"x"), "malformed")

    canonical_cases(add, section)

    # Verification-stage rejections (checked against the RFC 8037 key).
    section[0] = "verify"
    add("COSE signed by another key", cose(protected(kid=OTHER_KID), sk=OTHER_SK), "unknown_kid")
    add("JWS signed by another key", jws({"alg": "Ed25519", "kid": b64u(OTHER_KID)}, sk=OTHER_SK),
        "unknown_kid")  # fmt: skip
    # A real (low-S) ES256 signature: an Ed25519 one read as r || s is high-S half the time,
    # and non_canonical is a parse-time reason that would come first.
    add("COSE alg -7 (ES256) with an Ed25519 kid", cose(protected(alg=-7), sign=es256),
        "alg_key_mismatch")  # fmt: skip
    add("JWS alg ES256 with an Ed25519 kid", jws({"alg": "ES256", "kid": b64u(KID)}, sign=es256),
        "alg_key_mismatch")  # fmt: skip
    cose_sig_flip = bytearray(cose())
    cose_sig_flip[-1] ^= 0x01
    add("COSE signature bit flipped", bytes(cose_sig_flip), "bad_signature")
    add("COSE payload changed after signing",
        cose(payload_bytes=payload_map({**p, "seq": 8}), signature=SK.sign(sig_structure(
            protected(), payload_map(p)))), "bad_signature")  # fmt: skip
    add(
        "COSE signed with a non-empty external_aad",
        cose(signature=SK.sign(sig_structure(protected(), body, aad=b"x"))),
        "bad_signature",
    )
    add(
        "COSE signed as Signature (not Signature1)",
        cose(signature=SK.sign(sig_structure(protected(), body, context="Signature"))),
        "bad_signature",
    )
    add("JWS signature from another payload", f"{h}.{b64u(compact(jws_payload_obj(seq=8)))}.{s}",
        "bad_signature")  # fmt: skip
    add("JWS signature all zero", jws(signature=bytes(64)), "bad_signature")
    # Ed25519's own malleability, S -> S + L, is refused by the signature check itself
    # (RFC 8032 section 5.1.7 requires S < L; OpenSSL, BoringSSL and so cryptography and
    # WebCrypto do): bad_signature, not non_canonical.
    add("COSE Ed25519 S + L", cose(signature=ed25519_plus_l(sig_of_cose())), "bad_signature")
    add("JWS Ed25519 S + L", f"{h}.{b}.{b64u(ed25519_plus_l(unb64u(s)))}", "bad_signature")

    out = []
    for desc, raw, reason in c:
        case: dict[str, Any] = {"desc": desc, "reason": reason}
        if isinstance(raw, str):
            case["text"] = raw
        else:
            case["hex"] = raw.hex()
        out.append(case)
    descs = [case["desc"] for case in out]
    assert len(set(descs)) == len(descs), "duplicate desc"
    return out


FILES: dict[str, Callable[[], Any]] = {
    "valid.json": lambda: {"key": TEST_JWK, "cases": valid_cases()},
    "invalid.json": lambda: {"key": TEST_JWK, "cases": invalid_cases()},
}


def render(name: str) -> str:
    return json.dumps(FILES[name](), indent=1, ensure_ascii=False) + "\n"


def main() -> None:
    for name in FILES:
        (HERE / name).write_text(render(name), encoding="utf-8")
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
