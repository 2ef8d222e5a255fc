"""The byte-level examples of docs/device-guide.md are what the code produces, byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from anchor import merkle
from anchor.envelope import (
    FORMAT_COSE,
    FORMAT_JWS,
    NonCanonicalEnvelope,
    Reading,
    parse_envelope,
    sign_reading,
    verify_envelope,
)
from anchor.keys import P256, P256_ORDER, PrivateKey

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "device-guide.md"
RFC8037_KEY = {
    "kty": "OKP",
    "crv": "Ed25519",
    "d": "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A",
    "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
}


def test_device_guide_examples_are_current() -> None:
    text = GUIDE.read_text()
    key = PrivateKey.from_jwk(RFC8037_KEY)
    reading = Reading(
        "aq-0001", 1, 1764000000000, "iot.air_quality", {"pm2_5": 12.5, "no2": 31.0}, bytes(32)
    )
    cose = sign_reading(reading, key, format=FORMAT_COSE)
    jws = sign_reading(reading, key, format=FORMAT_JWS)
    assert cose.hex() in text
    assert f"COSE_Sign1 ({len(cose)} bytes)" in text
    assert jws.decode() in text
    assert key.public_key.kid.hex() in text
    assert merkle.leaf_hash(cose).hex() in text
    assert parse_envelope(cose).reading == reading == parse_envelope(jws).reading


# RFC 6979 appendix A.2.5: the P-256 test key.
RFC6979_D = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721


def _deterministic_es256(key: ec.EllipticCurvePrivateKey, message: bytes) -> tuple[int, int]:
    der = key.sign(message, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
    r, s = decode_dss_signature(der)
    return r, s


def test_device_guide_low_s_rule_and_rfc6979_example() -> None:
    text = " ".join(GUIDE.read_text().split())  # line breaks and list indentation as spaces
    n = P256_ORDER
    assert f"n = {n:064X}" in text and f"n/2 = {n // 2:064X}" in text
    key = ec.derive_private_key(RFC6979_D, ec.SECP256R1())
    r, s = _deterministic_es256(key, b"sample")
    assert f"`r` = `{r:064X}`" in text and f"`s` = `{s:064X}` is above `n/2`" in text
    assert s > n // 2 and f"`n - s` = `{n - s:064X}`" in text
    public = PrivateKey(P256, key).public_key
    public.verify(r.to_bytes(32, "big") + (n - s).to_bytes(32, "big"), b"sample")


def test_device_guide_es256_example_is_current() -> None:
    text = GUIDE.read_text()
    key = PrivateKey(P256, ec.derive_private_key(RFC6979_D, ec.SECP256R1()))
    reading = Reading(
        "aq-0001", 1, 1764000000000, "iot.air_quality", {"pm2_5": 12.5, "no2": 31.0}, bytes(32)
    )
    # Our signer uses a random nonce; the guide's bytes use RFC 6979 so they can be checked.
    # Everything but the signature is deterministic, so take it from sign_reading.
    ours = parse_envelope(sign_reading(reading, key, format=FORMAT_COSE))
    r, s = _deterministic_es256(key._key, ours.signed_bytes)  # type: ignore[arg-type]
    n = P256_ORDER
    assert s > n // 2  # this example shows the normalisation at work
    low = ours.raw[:-64] + r.to_bytes(32, "big") + (n - s).to_bytes(32, "big")
    high = ours.raw[:-64] + r.to_bytes(32, "big") + s.to_bytes(32, "big")
    assert low.hex() in text and f"COSE_Sign1 with ES256, low-S ({len(low)} bytes)" in text
    assert f"{r:064x}" in text and f"{s:064x}" in text and f"{n - s:064x}" in text
    assert key.public_key.kid.hex() in text
    assert verify_envelope(low, key.public_key).reading == reading
    key.public_key.verify(high[-64:], ours.signed_bytes)  # a valid signature, ...
    with pytest.raises(NonCanonicalEnvelope):  # ... in a form that is refused
        parse_envelope(high)


def test_device_guide_acknowledgement_example_is_current() -> None:
    """The guide's acknowledgement bytes are what the ingestor encodes and the SDK decodes, and
    its list of final reasons is the code's (issue 11)."""
    from anchor.device_ack import (
        DURABLE,
        FINAL_REASONS,
        MAX_ENTRIES,
        REFUSED,
        TRANSIENT_REASONS,
        AckEntry,
        decode_ack,
        encode_ack,
    )

    text = GUIDE.read_text()
    key = PrivateKey.from_jwk(RFC8037_KEY)
    reading = Reading(
        "aq-0001", 1, 1764000000000, "iot.air_quality", {"pm2_5": 12.5, "no2": 31.0}, bytes(32)
    )
    cose = sign_reading(reading, key, format=FORMAT_COSE)
    jws = sign_reading(reading, key, format=FORMAT_JWS)
    entries = [
        AckEntry(1, merkle.leaf_hash(cose), DURABLE, ""),
        AckEntry(1, merkle.leaf_hash(jws), REFUSED, "seq_conflict"),
    ]
    message = encode_ack(entries)
    assert f"\n{message.hex()}\n" in text
    assert decode_ack(message) == entries
    # The byte table walks the same message.
    table = [
        "| `01` | version 1 |",
        "| `0002` | 2 entries |",
        f"| `{merkle.leaf_hash(cose).hex()[:8]}…{merkle.leaf_hash(cose).hex()[-6:]}` |",
        f"| `{merkle.leaf_hash(jws).hex()[:8]}…{merkle.leaf_hash(jws).hex()[-6:]}` |",
        f"| `01` `0c` `{b'seq_conflict'.hex()}` |",
    ]
    for row in table:
        assert row in text, row
    assert f"1 to {MAX_ENTRIES}" in text and "city/{district}/{device_id}/ack" in text
    # Rule 2 names exactly the final reasons, rule 3 the transient ones.
    flat = " ".join(text.split())
    rule2 = flat[flat.index("2. Status `01`") : flat.index("3. Nothing for a reading")]
    named = set(rule2.split("`")[1::2]) - {"01"}
    assert named == FINAL_REASONS
    rule3 = flat[flat.index("3. Nothing for a reading") : flat.index("4. Resend")]
    assert set(rule3.split("`")[1::2]) == TRANSIENT_REASONS
