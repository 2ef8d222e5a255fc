"""The byte-level examples of docs/device-guide.md are what the code produces, byte for byte."""

from __future__ import annotations

from pathlib import Path

from anchor import merkle
from anchor.envelope import FORMAT_COSE, FORMAT_JWS, Reading, parse_envelope, sign_reading
from anchor.keys import PrivateKey

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
