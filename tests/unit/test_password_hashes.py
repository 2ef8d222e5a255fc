"""The password hash formats of anchor.password_hashes, checked without a server."""

from __future__ import annotations

import base64
import hashlib
import hmac

from anchor.password_hashes import mosquitto_password_hash, scram_sha256_verifier


def test_mosquitto_hash_is_pbkdf2_sha512_in_the_7_format() -> None:
    salt = bytes(range(12))
    hashed = mosquitto_password_hash("pencil", salt=salt)
    tag, iterations, b64_salt, b64_key = hashed.split("$")[1:]
    assert (tag, iterations) == ("7", "101")
    assert base64.b64decode(b64_salt) == salt
    key = hashlib.pbkdf2_hmac("sha512", b"pencil", salt, 101)
    assert base64.b64decode(b64_key) == key and len(key) == 64
    # A fresh 12-byte salt each time (the dynamic-security plugin skips other lengths).
    first, second = mosquitto_password_hash("pw"), mosquitto_password_hash("pw")
    assert first != second
    assert len(base64.b64decode(first.split("$")[3])) == 12


def test_scram_verifier_answers_the_rfc_7677_exchange() -> None:
    # RFC 7677 section 3: user "user", password "pencil". A server holding our verifier must
    # accept the client's proof and send the same server signature as the RFC.
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    verifier = scram_sha256_verifier("pencil", salt=salt)
    head, keys = verifier.split("$", 1)[1].split("$")
    assert head == "4096:W22ZaJ0SNY7soEsUEjb6gQ=="
    stored_key, server_key = (base64.b64decode(k) for k in keys.split(":"))
    nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    auth_message = (
        f"n=user,r=rOprNGfwEbeRWgbNEkqO,r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,"
        f"c=biws,r={nonce}"
    ).encode()
    proof = base64.b64decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    client_signature = hmac.digest(stored_key, auth_message, "sha256")
    client_key = bytes(a ^ b for a, b in zip(proof, client_signature, strict=True))
    assert hashlib.sha256(client_key).digest() == stored_key
    server_signature = hmac.digest(server_key, auth_message, "sha256")
    assert base64.b64encode(server_signature) == b"6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
