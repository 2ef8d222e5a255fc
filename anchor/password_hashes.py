"""The password hash formats our servers store: Mosquitto's ``$7$`` and PostgreSQL's SCRAM.

Pure (hashlib, hmac, base64; ``secrets`` for a salt when none is given), so production code
(:mod:`anchor.broker.logins`, ``up``) and the private test servers (:mod:`anchor.local`) share one
implementation without production code importing the launchers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

__all__ = ["mosquitto_password_hash", "scram_sha256_verifier"]


def mosquitto_password_hash(
    password: str, *, salt: bytes | None = None, iterations: int = 101
) -> str:
    """Hash ``password`` as mosquitto_passwd does by default: ``$7$`` = PBKDF2-HMAC-SHA512.

    The format is ``$7$ITERATIONS$base64(salt)$base64(64-byte key)`` (mosquitto 2.0
    ``mosquitto_passwd``, 12-byte salt, 101 iterations). The broker-login code stores it in the
    registry and the dynamic-security plugin's file; the private broker of
    :mod:`anchor.local.mosquitto` uses it when ``mosquitto_passwd`` is not installed.
    """
    salt = secrets.token_bytes(12) if salt is None else salt
    key = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"


def scram_sha256_verifier(
    password: str, *, salt: bytes | None = None, iterations: int = 4096
) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802/7677).

    ``ALTER ROLE ... PASSWORD 'SCRAM-SHA-256$...'`` stores it as given, so the clear password
    never reaches the server (nor its log, should the statement be logged).
    """
    salt = secrets.token_bytes(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    b64 = base64.b64encode
    return (
        f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}"
        f"${b64(stored_key).decode()}:{b64(server_key).decode()}"
    )
