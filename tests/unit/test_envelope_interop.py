"""Interop with independent implementations, both ways: ours signs and theirs verifies, theirs
signs (our payload, our header shape) and ours verifies.

* COSE_Sign1: pycose 1.1 (EdDSA -8 and ES256 -7).
* JWS compact: joserfc 1.8 ("Ed25519", "EdDSA", "ES256") and PyJWT 2.x ("EdDSA", "ES256").

pycose predates RFC 9864 and has no algorithm -19. Its algorithm registry has a public hook,
``CoseAlgorithm.register_attribute()``, which its own algorithms use; the ``pycose_ed25519``
fixture registers a subclass of its ``EdDSA`` under identifier -19 for the duration of a test and
removes it afterwards. Nothing else of pycose's is touched, so pycose still builds the
Sig_structure (RFC 9052 section 4.4) and runs the Ed25519 operation itself; -19 and -8 differ
only in the identifier, which is exactly what RFC 9864 section 2 says. A second test shows the
same without any registration: pycose's -8 Sig_structure, with the protected header swapped for
a -19 one, is byte for byte the ``signed_bytes`` we compute for our -19 envelope.

Canonical form (issue 10 item 5, DESIGN.md "Envelope wire format"). What these libraries sign
is accepted when it is canonical: tagged COSE with an empty unprotected header and deterministic
CBOR, and, for ES256, a low-S signature. They sign ES256 with a random nonce and do not
normalise s, so about half of their ES256 signatures are high-S and refused ``non_canonical``
until the signer replaces s by n - s (the tests sign until they have seen both halves). pycose's
untagged encoding (``encode(tag=False)``) was accepted before and is refused now. The other way
round, these libraries serve as oracles that each variant we refuse is a real one: pycose,
joserfc and PyJWT verify the signature of every COSE variant and of the ES256 high-S twins in
``tests/vectors/envelope/invalid.json``, so only the canonical-form rule stands between them
and a second accepted envelope.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cbor2
import jwt
import pytest
from joserfc import jws as joserfc_jws
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey as JoseECKey
from joserfc.jwk import OKPKey as JoseOKPKey
from pycose.algorithms import CoseAlgorithm, EdDSA, Es256
from pycose.headers import KID, Algorithm
from pycose.keys import CoseKey
from pycose.keys.curves import P256, Ed25519
from pycose.keys.keyparam import (
    EC2KpCurve,
    EC2KpD,
    EC2KpX,
    EC2KpY,
    KpKty,
    OKPKpCurve,
    OKPKpD,
    OKPKpX,
)
from pycose.keys.keytype import KtyEC2, KtyOKP
from pycose.messages import Sign1Message

from anchor.envelope import (
    FORMAT_COSE,
    FORMAT_JWS,
    NonCanonicalEnvelope,
    Reading,
    parse_envelope,
    sign_reading,
    verify_envelope,
)
from anchor.keys import P256_ORDER, PrivateKey, PublicKey, b64url_decode, b64url_encode

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "envelope"
INVALID = json.loads((VECTORS / "invalid.json").read_text(encoding="utf-8"))
NON_CANONICAL = [c for c in INVALID["cases"] if c["reason"] == "non_canonical"]
# The P-256 key of the ES256 vectors (valid.json names it per case).
VECTOR_EC_JWK = next(
    c["key"] for c in json.loads((VECTORS / "valid.json").read_text())["cases"] if "key" in c
)

ED_KEY = PrivateKey.generate("Ed25519")
EC_KEY = PrivateKey.generate("P-256")

READING = Reading(
    device_id="gnb-0042",
    seq=1001,
    ts=1_700_000_123_456,
    kind="5g.cell_kpi",
    values={"rsrp_dbm": -95, "rsrq_db": -10.5, "sinr_db": 12.25, "latency_ms": 8, "ok": True},
    prev=bytes(range(32)),
    extra={"cell_id": "460-00-1234-5", "slice": {"sst": 1, "sd": "0a0b0c"}},
)
COSE_PAYLOAD = cbor2.dumps(READING.to_payload(FORMAT_COSE), canonical=True)
JWS_PAYLOAD = json.dumps(READING.to_payload(FORMAT_JWS), separators=(",", ":")).encode()


# -- pycose ----------------------------------------------------------------------------------


def high_s(signature: bytes) -> bool:
    return int.from_bytes(signature[32:], "big") > P256_ORDER // 2


def s_twin(signature: bytes) -> bytes:
    """(r, s) -> (r, n - s): the other signature of the pair (which one is low depends on s)."""
    return signature[:32] + (P256_ORDER - int.from_bytes(signature[32:], "big")).to_bytes(32)


def es256_halves(
    raw: bytes, signature_of: Callable[[bytes], bytes], twin: Callable[[bytes], bytes]
) -> tuple[bytes, bytes]:
    """``(low, high)``: the library's envelope and its (r, n - s) twin, low-S one first.

    pycose signs deterministically (RFC 6979), joserfc and PyJWT with a random nonce; none of
    them normalises s, so their own envelope is on either side of n/2."""
    other = twin(raw)
    return (other, raw) if high_s(signature_of(raw)) else (raw, other)


def check_third_party_es256(halves: tuple[bytes, bytes], key: PrivateKey) -> None:
    """The low-S form is accepted, the high-S form is non_canonical."""
    low, high = halves
    assert verify_envelope(low, key.public_key).reading == READING
    with pytest.raises(NonCanonicalEnvelope) as exc:
        verify_envelope(high, key.public_key)
    assert exc.value.reason == "non_canonical"


def pycose_key(key: PrivateKey) -> CoseKey:
    jwk = key.to_jwk()
    if key.key_type == "Ed25519":
        return CoseKey.from_dict(
            {
                KpKty: KtyOKP,
                OKPKpCurve: Ed25519,
                OKPKpX: b64url_decode(jwk["x"]),
                OKPKpD: b64url_decode(jwk["d"]),
            }
        )
    return CoseKey.from_dict(
        {
            KpKty: KtyEC2,
            EC2KpCurve: P256,
            EC2KpX: b64url_decode(jwk["x"]),
            EC2KpY: b64url_decode(jwk["y"]),
            EC2KpD: b64url_decode(jwk["d"]),
        }
    )


def pycose_decode(raw: bytes) -> Sign1Message:
    # pycose 1.1's Sign1Message.decode expects cbor2 to give a tag's content as a list of
    # mutable items; cbor2 6 gives a tuple (and a frozendict for the unprotected map), so
    # decode() refuses every tagged message. Hand pycose what it expects through its own
    # from_cose_obj, which is what decode() calls next.
    item = cbor2.loads(raw)
    assert isinstance(item, cbor2.CBORTag) and item.tag == Sign1Message.cbor_tag
    protected, unprotected, payload, signature = item.value
    cose_obj = [protected, dict(unprotected), payload, signature]
    return Sign1Message.from_cose_obj(cose_obj, allow_unknown_attributes=False)


@pytest.fixture
def pycose_ed25519() -> Iterator[type[EdDSA]]:
    registry = CoseAlgorithm.get_registered_classes()
    assert -19 not in registry, "pycose learnt -19: drop this fixture and use its own class"

    class Ed25519Alg(EdDSA):
        """RFC 9864 "Ed25519": EdDSA restricted to Ed25519; same operation as -8."""

        identifier = -19
        fullname = "ED25519_RFC9864"

    CoseAlgorithm.register_attribute()(Ed25519Alg)
    try:
        yield Ed25519Alg
    finally:
        registry.pop(-19, None)
        registry.pop("ED25519_RFC9864", None)


PYCOSE_ALGS = [
    pytest.param(ED_KEY, EdDSA, "EdDSA", id="EdDSA-8"),
    pytest.param(EC_KEY, Es256, "ES256", id="ES256-7"),
]


@pytest.mark.parametrize(("key", "cose_alg", "alg"), PYCOSE_ALGS)
def test_ours_to_pycose(key: PrivateKey, cose_alg: Any, alg: str) -> None:
    raw = sign_reading(READING, key, format=FORMAT_COSE, alg=alg)
    msg = pycose_decode(raw)
    msg.key = pycose_key(key)
    assert msg.verify_signature()
    assert msg.phdr[Algorithm] == cose_alg
    assert msg.phdr[KID] == key.public_key.kid
    assert msg.payload == COSE_PAYLOAD
    # And pycose rejects it once the payload changes.
    msg.payload = COSE_PAYLOAD.replace(b"gnb-0042", b"gnb-0043")
    assert not msg.verify_signature()


def pycose_sign(key: PrivateKey, cose_alg: Any, *, tag: bool = True) -> bytes:
    msg = Sign1Message(
        phdr={Algorithm: cose_alg, KID: key.public_key.kid}, uhdr={}, payload=COSE_PAYLOAD
    )
    msg.key = pycose_key(key)
    raw: bytes = msg.encode(tag=tag)
    return raw


@pytest.mark.parametrize(("key", "cose_alg", "alg"), PYCOSE_ALGS)
def test_pycose_to_ours(key: PrivateKey, cose_alg: Any, alg: str) -> None:
    raw = pycose_sign(key, cose_alg)
    if alg == "ES256":
        halves = es256_halves(raw, lambda r: r[-64:], lambda r: r[:-64] + s_twin(r[-64:]))
        check_third_party_es256(halves, key)
        raw = halves[0]
    env = verify_envelope(raw, key.public_key)
    assert env.raw == raw
    assert env.alg == alg
    assert env.reading == READING


@pytest.mark.parametrize(("key", "cose_alg", "alg"), PYCOSE_ALGS)
def test_pycose_untagged_is_non_canonical(key: PrivateKey, cose_alg: Any, alg: str) -> None:
    # test_pycose_to_ours used to accept pycose's encode(tag=False) too. Since issue 10 item 5
    # tag 18 is required: with it optional, anyone could add or strip it and get a second
    # accepted envelope (another leaf hash) for the same signed reading.
    raw = pycose_sign(key, cose_alg, tag=False)
    assert raw[0] == 0x84
    with pytest.raises(NonCanonicalEnvelope):
        verify_envelope(raw, key.public_key)


def test_pycose_verifies_every_cose_variant_we_refuse(pycose_ed25519: type[EdDSA]) -> None:
    # The oracle direction: each non_canonical COSE vector carries a signature that pycose
    # (an independent COSE implementation) accepts, so each is a real alternative spelling of
    # a signed reading and only the canonical-form rule refuses it.
    cases = [c for c in NON_CANONICAL if "hex" in c]
    assert len(cases) >= 20
    for case in cases:
        raw = bytes.fromhex(case["hex"])
        item = cbor2.loads(raw)
        protected, unprotected, payload, signature = (
            item.value if isinstance(item, cbor2.CBORTag) else item
        )
        msg = Sign1Message.from_cose_obj(
            [protected, dict(unprotected), payload, signature], allow_unknown_attributes=True
        )
        es256 = "ES256" in case["desc"]
        jwk = VECTOR_EC_JWK if es256 else INVALID["key"]
        public = PublicKey.from_jwk(jwk)
        if es256:
            x, y = public.raw[1:33], public.raw[33:]
            msg.key = CoseKey.from_dict({KpKty: KtyEC2, EC2KpCurve: P256, EC2KpX: x, EC2KpY: y})
        else:
            msg.key = CoseKey.from_dict({KpKty: KtyOKP, OKPKpCurve: Ed25519, OKPKpX: public.raw})
        assert msg.verify_signature(), case["desc"]
        with pytest.raises(NonCanonicalEnvelope):
            verify_envelope(raw, public)


def test_ours_to_pycose_ed25519_minus_19(pycose_ed25519: type[EdDSA]) -> None:
    raw = sign_reading(READING, ED_KEY, format=FORMAT_COSE)  # default alg: -19
    msg = pycose_decode(raw)
    assert msg.phdr[Algorithm] == pycose_ed25519
    msg.key = pycose_key(ED_KEY)
    assert msg.verify_signature()


def test_pycose_to_ours_ed25519_minus_19(pycose_ed25519: type[EdDSA]) -> None:
    msg = Sign1Message(
        phdr={Algorithm: pycose_ed25519, KID: ED_KEY.public_key.kid}, uhdr={}, payload=COSE_PAYLOAD
    )
    msg.key = pycose_key(ED_KEY)
    raw = msg.encode()
    assert cbor2.loads(cbor2.loads(raw).value[0])[1] == -19
    env = verify_envelope(raw, ED_KEY.public_key)
    assert env.alg == "Ed25519"
    assert env.reading == READING


def test_minus_19_uses_the_same_sig_structure_rule_as_pycose() -> None:
    # Without touching pycose's registry: build pycose's Sig_structure for alg -8, then swap
    # in the -19 protected header. It must equal what we sign for -19, since the Sig_structure
    # depends on the protected bytes and payload alone, never on the algorithm.
    ours = parse_envelope(sign_reading(READING, ED_KEY, format=FORMAT_COSE, alg="Ed25519"))
    protected_19 = cbor2.loads(ours.raw).value[0]
    msg = Sign1Message(phdr={Algorithm: EdDSA, KID: ED_KEY.public_key.kid}, payload=COSE_PAYLOAD)
    theirs_8 = msg._create_sig_structure()
    sig_8 = cbor2.loads(theirs_8)
    assert sig_8[0] == "Signature1" and sig_8[2] == b"" and sig_8[3] == COSE_PAYLOAD
    assert cbor2.dumps([sig_8[0], protected_19, sig_8[2], sig_8[3]]) == ours.signed_bytes
    # The Ed25519 operation is the same as well: pycose's -8 verifier accepts our -19 signature
    # over those bytes.
    ED_KEY.public_key.verify(ours.signature, ours.signed_bytes)
    assert EdDSA.verify(pycose_key(ED_KEY), ours.signed_bytes, ours.signature)


# -- JWS: joserfc ----------------------------------------------------------------------------


def jose_warnings(alg: str) -> contextlib.AbstractContextManager[Any]:
    # joserfc warns that RFC 9864 deprecates the polymorphic "EdDSA"; we accept it from older
    # devices on purpose, so expect exactly that warning (warnings are errors in this suite).
    if alg == "EdDSA":
        return pytest.warns(SecurityWarning, match="RFC 9864")
    return contextlib.nullcontext()


def jose_key(key: PrivateKey) -> Any:
    cls = JoseOKPKey if key.key_type == "Ed25519" else JoseECKey
    jwk: dict[str, Any] = key.to_jwk()
    return cls.import_key(jwk)


def jose_public(key: PrivateKey) -> Any:
    cls = JoseOKPKey if key.key_type == "Ed25519" else JoseECKey
    jwk: dict[str, Any] = key.public_key.to_jwk()
    return cls.import_key(jwk)


JOSE_ALGS = [
    pytest.param(ED_KEY, "Ed25519", id="Ed25519"),
    pytest.param(ED_KEY, "EdDSA", id="EdDSA"),
    pytest.param(EC_KEY, "ES256", id="ES256"),
]


@pytest.mark.parametrize(("key", "alg"), JOSE_ALGS)
def test_ours_to_joserfc(key: PrivateKey, alg: str) -> None:
    raw = sign_reading(READING, key, format=FORMAT_JWS, alg=alg)
    with jose_warnings(alg):
        obj = joserfc_jws.deserialize_compact(raw, jose_public(key), algorithms=[alg])
    assert obj.protected == {"alg": alg, "kid": b64url_encode(key.public_key.kid)}
    assert Reading.from_payload(json.loads(obj.payload), FORMAT_JWS) == READING
    # joserfc agrees on the thumbprint (RFC 7638) that is our kid.
    assert jose_public(key).thumbprint() == b64url_encode(key.public_key.kid)


def jws_signature(raw: bytes) -> bytes:
    return b64url_decode(raw.rsplit(b".", 1)[1])


def jws_twin(raw: bytes) -> bytes:
    head, sig = raw.rsplit(b".", 1)
    return head + b"." + b64url_encode(s_twin(b64url_decode(sig))).encode()


@pytest.mark.parametrize(("key", "alg"), JOSE_ALGS)
def test_joserfc_to_ours(key: PrivateKey, alg: str) -> None:
    header = {"alg": alg, "kid": b64url_encode(key.public_key.kid)}

    def sign() -> bytes:
        with jose_warnings(alg):
            text = joserfc_jws.serialize_compact(
                header, JWS_PAYLOAD, jose_key(key), algorithms=[alg]
            )
        return text.encode("ascii")

    raw = sign()
    if alg == "ES256":
        halves = es256_halves(raw, jws_signature, jws_twin)
        check_third_party_es256(halves, key)
        raw = halves[0]
    env = verify_envelope(raw, key.public_key)
    assert env.raw == raw
    assert env.alg == alg
    assert env.reading == READING


def test_jose_libraries_verify_the_high_s_twin_we_refuse() -> None:
    # Oracles: joserfc and PyJWT accept an ES256 (r, n - s) twin; only our low-S rule refuses
    # it. They already refuse padded or non-zero-trailing-bit segments, as we do.
    jwk = VECTOR_EC_JWK
    public = PublicKey.from_jwk(jwk)
    by_desc = {c["desc"]: c["text"] for c in NON_CANONICAL if "text" in c}
    twin = by_desc["canonical: JWS ES256 high-S (r, n - s)"]
    joserfc_jws.deserialize_compact(twin, JoseECKey.import_key(dict(jwk)), algorithms=["ES256"])
    jwt.PyJWS().decode_complete(twin, public.to_pem(), algorithms=["ES256"])
    with pytest.raises(NonCanonicalEnvelope):
        verify_envelope(twin.encode(), public)
    ed = JoseOKPKey.import_key(dict(INVALID["key"]))
    for desc, text in by_desc.items():
        if "padded" in desc or "trailing bits" in desc:
            with pytest.raises(Exception):  # noqa: B017 - joserfc's own error classes vary
                joserfc_jws.deserialize_compact(text, ed, algorithms=["Ed25519"])
            with pytest.raises(NonCanonicalEnvelope):
                verify_envelope(text.encode(), PublicKey.from_jwk(INVALID["key"]))


# -- JWS: PyJWT ------------------------------------------------------------------------------

PYJWT_ALGS = [
    pytest.param(ED_KEY, "EdDSA", id="EdDSA"),
    pytest.param(EC_KEY, "ES256", id="ES256"),
]


@pytest.mark.parametrize(("key", "alg"), PYJWT_ALGS)
def test_ours_to_pyjwt(key: PrivateKey, alg: str) -> None:
    raw = sign_reading(READING, key, format=FORMAT_JWS, alg=alg)
    decoded = jwt.PyJWS().decode_complete(raw, key.public_key.to_pem(), algorithms=[alg])
    assert decoded["header"] == {"alg": alg, "kid": b64url_encode(key.public_key.kid)}
    assert Reading.from_payload(json.loads(decoded["payload"]), FORMAT_JWS) == READING


@pytest.mark.parametrize(("key", "alg"), PYJWT_ALGS)
def test_pyjwt_to_ours(key: PrivateKey, alg: str) -> None:
    headers = {"kid": b64url_encode(key.public_key.kid), "typ": None}

    def sign() -> bytes:
        text = jwt.PyJWS().encode(JWS_PAYLOAD, key.to_pem(), algorithm=alg, headers=headers)
        return text.encode("ascii")

    raw = sign()
    if alg == "ES256":
        halves = es256_halves(raw, jws_signature, jws_twin)
        check_third_party_es256(halves, key)
        raw = halves[0]
    text = raw.decode("ascii")
    env = verify_envelope(raw, key.public_key)
    assert env.raw == raw
    assert env.reading == READING
    assert json.loads(b64url_decode(text.split(".")[0])) == {
        "alg": alg,
        "kid": b64url_encode(key.public_key.kid),
    }


def test_pyjwt_typ_header_is_ignored() -> None:
    # PyJWT adds "typ": "JWT" unless told otherwise; unknown non-critical members are ignored.
    headers = {"kid": b64url_encode(ED_KEY.public_key.kid)}
    text = jwt.PyJWS().encode(JWS_PAYLOAD, ED_KEY.to_pem(), algorithm="EdDSA", headers=headers)
    assert verify_envelope(text.encode(), ED_KEY.public_key).reading == READING
