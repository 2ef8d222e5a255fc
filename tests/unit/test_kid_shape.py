"""One shape for a kid (issue 14 item 13): lowercase hex wherever a person or a script reads
one (API, `device show`, `keygen`, error messages), with base64url beside it, as envelope
headers carry it."""

from __future__ import annotations

from pathlib import Path

import pytest

from anchor.cli.commands import main as cli_main
from anchor.envelope import FORMAT_JWS, Reading, UnknownKid, sign_reading, verify_envelope
from anchor.keys import PrivateKey, b64url_encode
from devices.keystore import load_public_jwk


def test_keygen_prints_the_kid_in_hex_and_base64url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["keygen", "--device-id", "aq-7", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    kid = load_public_jwk(tmp_path / "aq-7.jwk").kid
    assert f"kid:     {kid.hex()} (base64url {b64url_encode(kid)})" in out


def test_a_kid_mismatch_names_both_kids_in_hex() -> None:
    signer, other = PrivateKey.generate(), PrivateKey.generate()
    envelope = sign_reading(
        Reading("aq-7", 1, 1764000000000, "iot.noise", {"db": 40.0}, bytes(32)),
        signer,
        format=FORMAT_JWS,
    )
    with pytest.raises(UnknownKid) as exc:
        verify_envelope(envelope, other.public_key)
    detail = exc.value.detail
    assert signer.public_key.kid.hex() in detail and other.public_key.kid.hex() in detail
    assert b64url_encode(signer.public_key.kid) in detail
