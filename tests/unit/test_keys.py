"""Unit tests for anchor.keys: JWK/PEM round trips, RFC 7638 thumbprints, RFC known answers."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa

from anchor.errors import KeyMaterialError
from anchor.keys import (
    KEY_TYPES,
    BadSignature,
    PrivateKey,
    PublicKey,
    b64url_decode,
    b64url_encode,
    jwk_thumbprint,
)

# RFC 7638 section 3.1: the RSA key whose thumbprint the RFC works out.
RFC7638_RSA = {
    "kty": "RSA",
    "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_B"
    "JECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FD"
    "W2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQ"
    "Fh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"

# RFC 8037 appendix A.1 (key), A.3 (thumbprint), A.4 (JWS).
RFC8037_D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
RFC8037_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
RFC8037_THUMBPRINT = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
RFC8037_SIGNING_INPUT = b"eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc"
RFC8037_SIGNATURE = (
    "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
)

# RFC 7515 appendix A.3: ES256 with a signature already in the r || s form.
RFC7515_EC = {
    "kty": "EC",
    "crv": "P-256",
    "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
    "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
}
RFC7515_ES256_INPUT = (
    b"eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxl"
    b"LmNvbS9pc19yb290Ijp0cnVlfQ"
)
RFC7515_ES256_SIGNATURE = (
    "DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q"
)


@pytest.fixture(scope="module", params=KEY_TYPES)
def private_key(request: pytest.FixtureRequest) -> PrivateKey:
    return PrivateKey.generate(request.param)


# -- base64url -------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"A", b"AB", b"ABC", bytes(range(256))])
def test_b64url_round_trip(data: bytes) -> None:
    text = b64url_encode(data)
    assert "=" not in text
    assert b64url_decode(text) == data


@pytest.mark.parametrize(
    "text",
    [
        "QQ==",  # padding
        "QR",  # non-zero unused bits: a second spelling of b"A"
        "Q",  # impossible length
        "ab+/",  # standard, not url-safe, alphabet
        "ab c",
        "é",
    ],
)
def test_b64url_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        b64url_decode(text)


# -- thumbprints -----------------------------------------------------------------------------


def test_rfc7638_rsa_example() -> None:
    assert b64url_encode(jwk_thumbprint(RFC7638_RSA)) == RFC7638_THUMBPRINT


def test_rfc8037_thumbprint_example() -> None:
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X}
    assert b64url_encode(jwk_thumbprint(jwk)) == RFC8037_THUMBPRINT
    assert b64url_encode(PublicKey.from_jwk(jwk).kid) == RFC8037_THUMBPRINT


def test_thumbprint_ignores_optional_members(private_key: PrivateKey) -> None:
    jwk: dict[str, Any] = private_key.public_key.to_jwk()
    decorated = {**jwk, "kid": "x", "alg": "ES256", "use": "sig"}
    assert jwk_thumbprint(decorated) == jwk_thumbprint(jwk) == private_key.public_key.kid


def test_thumbprint_is_sha256_of_canonical_json() -> None:
    # A slow, obvious restatement of RFC 7638 section 3 to cross-check the implementation.
    import hashlib

    jwk = dict(RFC7515_EC)
    canonical = '{"crv":"P-256","kty":"EC","x":"' + jwk["x"] + '","y":"' + jwk["y"] + '"}'
    assert jwk_thumbprint(jwk) == hashlib.sha256(canonical.encode()).digest()


@pytest.mark.parametrize(
    "jwk",
    [{}, {"kty": "oct", "k": "AA"}, {"kty": "OKP", "crv": "Ed25519"}, {"kty": "EC", "x": 1}],
)
def test_thumbprint_rejects(jwk: dict[str, Any]) -> None:
    with pytest.raises(KeyMaterialError) as exc:
        jwk_thumbprint(jwk)
    assert exc.value.reason == "key_invalid"


# -- RFC known answers -----------------------------------------------------------------------


def test_rfc8037_signature_example() -> None:
    private = PrivateKey.from_jwk({"kty": "OKP", "crv": "Ed25519", "d": RFC8037_D, "x": RFC8037_X})
    # Ed25519 is deterministic: our signer reproduces the RFC's signature byte for byte.
    assert b64url_encode(private.sign(RFC8037_SIGNING_INPUT)) == RFC8037_SIGNATURE
    public = PublicKey.from_jwk({"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X})
    assert public == private.public_key
    public.verify(b64url_decode(RFC8037_SIGNATURE), RFC8037_SIGNING_INPUT)
    with pytest.raises(BadSignature) as exc:
        public.verify(b64url_decode(RFC8037_SIGNATURE), RFC8037_SIGNING_INPUT + b"x")
    assert exc.value.reason == "bad_signature"


def test_rfc7515_es256_example() -> None:
    public = PublicKey.from_jwk(RFC7515_EC)
    signature = b64url_decode(RFC7515_ES256_SIGNATURE)
    public.verify(signature, RFC7515_ES256_INPUT)
    tampered = signature[:-1] + bytes([signature[-1] ^ 1])
    with pytest.raises(BadSignature):
        public.verify(tampered, RFC7515_ES256_INPUT)


# -- keys ------------------------------------------------------------------------------------


def test_sign_verify(private_key: PrivateKey) -> None:
    signature = private_key.sign(b"reading")
    assert len(signature) == 64
    private_key.public_key.verify(signature, b"reading")
    with pytest.raises(BadSignature) as exc:
        private_key.public_key.verify(signature, b"readinG")
    assert exc.value.reason == "bad_signature"


@pytest.mark.parametrize("size", [0, 63, 65, 72])
def test_verify_rejects_wrong_signature_length(private_key: PrivateKey, size: int) -> None:
    with pytest.raises(BadSignature) as exc:
        private_key.public_key.verify(bytes(size), b"m")
    assert exc.value.reason == "bad_signature"


def test_es256_signature_is_raw_r_s() -> None:
    key = PrivateKey.generate("P-256")
    signature = key.sign(b"m")
    # A DER signature (what cryptography produces natively) must not verify as-is.
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    der = encode_dss_signature(int.from_bytes(signature[:32]), int.from_bytes(signature[32:]))
    with pytest.raises(BadSignature):
        key.public_key.verify(der, b"m")


def test_public_jwk_round_trip(private_key: PrivateKey) -> None:
    public = private_key.public_key
    jwk = public.to_jwk()
    assert PublicKey.from_jwk(jwk) == public
    assert PublicKey.from_jwk(json.loads(json.dumps(jwk))) == public
    # Extra members that publishers add are ignored.
    assert PublicKey.from_jwk({**jwk, "kid": "k", "alg": "EdDSA", "use": "sig"}) == public
    expected = {"Ed25519": {"kty", "crv", "x"}, "P-256": {"kty", "crv", "x", "y"}}
    assert set(jwk) == expected[public.key_type]
    assert len(public.kid) == 32


def test_private_jwk_round_trip(private_key: PrivateKey) -> None:
    jwk = private_key.to_jwk()
    assert "d" in jwk
    again = PrivateKey.from_jwk(jwk)
    assert again == private_key
    assert again.public_key == private_key.public_key
    assert hash(again) == hash(private_key)


def test_pem_round_trip(private_key: PrivateKey) -> None:
    pem = private_key.to_pem()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert PrivateKey.from_pem(pem) == private_key
    public_pem = private_key.public_key.to_pem()
    assert public_pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    assert PublicKey.from_pem(public_pem) == private_key.public_key


def test_sec1_private_pem_accepted() -> None:
    obj = ec.generate_private_key(ec.SECP256R1())
    pem = obj.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    assert PrivateKey.from_pem(pem).key_type == "P-256"


def test_private_key_repr_hides_secret(private_key: PrivateKey) -> None:
    text = repr(private_key)
    assert private_key.to_jwk()["d"] not in text
    assert "_key" not in text


def test_distinct_private_keys_differ() -> None:
    assert PrivateKey.generate() != PrivateKey.generate()
    assert PrivateKey.generate() != "key"


def test_compressed_point_pem_becomes_uncompressed() -> None:
    obj = ec.generate_private_key(ec.SECP256R1()).public_key()
    compressed = obj.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    pem = obj.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public = PublicKey.from_pem(pem)
    assert len(compressed) == 33
    assert len(public.raw) == 65 and public.raw[0] == 4


# -- rejections ------------------------------------------------------------------------------

_ED = {"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X}


def _with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = {**base, **changes}
    return {k: v for k, v in out.items() if v is not None}


def _off_curve_y() -> str:
    y = bytearray(b64url_decode(RFC7515_EC["y"]))
    y[-1] ^= 1
    return b64url_encode(bytes(y))


# 32 bytes in the standard base64 alphabet ("+" and "/"), which JWKs must not use.
STD_ALPHABET_X = base64.b64encode(bytes(range(250, 256)) * 6)[:43].decode()
assert "+" in STD_ALPHABET_X or "/" in STD_ALPHABET_X

BAD_PUBLIC_JWKS = [
    pytest.param(_with(_ED, kty="EC"), id="okp-crv-with-ec-kty"),
    pytest.param(_with(_ED, crv="Ed448"), id="ed448"),
    pytest.param(_with(_ED, crv="X25519"), id="x25519"),
    pytest.param(_with(_ED, x=None), id="missing-x"),
    pytest.param(_with(_ED, x=RFC8037_X + "="), id="padded-x"),
    pytest.param(_with(_ED, x=RFC8037_X[:-1]), id="short-x"),
    pytest.param(_with(_ED, x=RFC8037_X + "AA"), id="long-x"),
    pytest.param(_with(_ED, x=STD_ALPHABET_X), id="std-alphabet-x"),
    pytest.param(_with(_ED, x=12), id="x-not-string"),
    pytest.param(_with(_ED, d=RFC8037_D), id="public-jwk-with-private-d"),
    pytest.param(_with(RFC7515_EC, y=None), id="ec-missing-y"),
    pytest.param(_with(RFC7515_EC, y=_off_curve_y()), id="ec-point-off-curve"),
    pytest.param(_with(RFC7515_EC, crv="P-384"), id="p384"),
    pytest.param(RFC7638_RSA, id="rsa"),
    pytest.param({"kty": "oct", "k": "AAAA"}, id="oct"),
    pytest.param({}, id="empty"),
]


@pytest.mark.parametrize("jwk", BAD_PUBLIC_JWKS)
def test_public_from_jwk_rejects(jwk: dict[str, Any]) -> None:
    with pytest.raises(KeyMaterialError) as exc:
        PublicKey.from_jwk(jwk)
    assert exc.value.reason == "key_invalid"


def test_public_from_jwk_rejects_non_mapping() -> None:
    with pytest.raises(KeyMaterialError) as exc:
        PublicKey.from_jwk(["kty", "OKP"])  # type: ignore[arg-type]
    assert exc.value.reason == "key_invalid"


def test_public_jwk_with_d_names_the_problem() -> None:
    with pytest.raises(KeyMaterialError, match="private key"):
        PublicKey.from_jwk({**_ED, "d": RFC8037_D})


def test_private_from_jwk_rejects_mismatched_public_half() -> None:
    other = PrivateKey.generate().public_key.to_jwk()["x"]
    with pytest.raises(KeyMaterialError) as exc:
        PrivateKey.from_jwk({**_ED, "d": RFC8037_D, "x": other})
    assert exc.value.reason == "key_invalid"


@pytest.mark.parametrize(
    "jwk",
    [
        _ED,  # no d
        {**_ED, "d": RFC8037_D[:-2]},
        {**RFC7515_EC, "d": b64url_encode(bytes(32))},  # zero scalar
        {**RFC7515_EC, "d": b64url_encode(b"\xff" * 32)},  # scalar >= n
    ],
)
def test_private_from_jwk_rejects(jwk: dict[str, Any]) -> None:
    with pytest.raises(KeyMaterialError) as exc:
        PrivateKey.from_jwk(jwk)
    assert exc.value.reason == "key_invalid"


@pytest.mark.parametrize(
    ("key_type", "raw"),
    [
        ("Ed25519", bytes(31)),
        ("P-256", bytes(65)),
        ("P-256", b"\x02" + bytes(32)),
        ("RSA", bytes(32)),
        ("Ed25519", "not bytes"),
    ],
)
def test_public_key_constructor_rejects(key_type: str, raw: Any) -> None:
    with pytest.raises(KeyMaterialError) as exc:
        PublicKey(key_type, raw)
    assert exc.value.reason == "key_invalid"


def test_generate_rejects_unknown_type() -> None:
    with pytest.raises(KeyMaterialError):
        PrivateKey.generate("secp256k1")


def _pem_of(obj: Any, private: bool) -> bytes:
    if private:
        return bytes(
            obj.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return bytes(
        obj.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def test_pem_rejections() -> None:
    ed448_key = ed448.Ed448PrivateKey.generate()
    p384_key = ec.generate_private_key(ec.SECP384R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    encrypted = PrivateKey.generate().to_pem()
    encrypted = serialization.load_pem_private_key(encrypted, None).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    for bad in (
        b"",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        _pem_of(ed448_key, True),
        _pem_of(p384_key, True),
        _pem_of(rsa_key, True),
        encrypted,
        _pem_of(ed448_key.public_key(), False),  # a public PEM where a private one is due
    ):
        with pytest.raises(KeyMaterialError) as exc:
            PrivateKey.from_pem(bad)
        assert exc.value.reason == "key_invalid"
    for bad in (
        b"junk",
        _pem_of(ed448_key.public_key(), False),
        _pem_of(p384_key.public_key(), False),
        _pem_of(rsa_key.public_key(), False),
        PrivateKey.generate().to_pem(),  # a private PEM where a public one is due
    ):
        with pytest.raises(KeyMaterialError) as exc:
            PublicKey.from_pem(bad)
        assert exc.value.reason == "key_invalid"


def test_the_store_builds_each_registered_key_once_and_still_refuses_bad_ones() -> None:
    from datetime import UTC, datetime

    from anchor.store.records import key_record

    key = PrivateKey.generate().public_key
    row = {
        "device_id": "aq-1", "kid": key.kid, "key_type": key.key_type,
        "public_key": bytearray(key.raw), "valid_from": datetime.now(UTC), "valid_until": None,
    }  # fmt: skip
    first, again = key_record(row), key_record(dict(row))
    assert first.public_key == key and first.public_key.kid == key.kid
    assert again.public_key is first.public_key  # cached: not validated and thumbprinted again
    bad = dict(row, public_key=b"\x00" * 31)
    for _ in range(2):  # a key that does not load is refused every time, never cached
        with pytest.raises(KeyMaterialError):
            key_record(bad)
