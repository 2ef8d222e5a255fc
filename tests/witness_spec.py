"""A tlog-witness client and a tlog-cosignature v1 verifier written from the specifications only.

Test-only and deliberately independent of ``anchor``: it uses the standard library
(``http.client`` for HTTP, raw bytes for bodies) and ``cryptography`` for Ed25519, so what the
witness says is checked against our own reading of c2sp.org/tlog-witness and
c2sp.org/tlog-cosignature, not against the code that produced it.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

EM_DASH = "\u2014"


# ------------------------------------------------------------------------- tlog-cosignature v1
def spec_key_id(name: str, public_key: bytes) -> bytes:
    # "SHA-256(<name> || "\n" || 0x04 || 32-byte Ed25519 cosigner public key)[:4]"
    return hashlib.sha256(name.encode() + b"\n" + b"\x04" + public_key).digest()[:4]


def spec_message(note_text: str, timestamp: int) -> bytes:
    # Header line, timestamp line (decimal, no leading zeroes), then the whole note body.
    return b"cosignature/v1\n" + b"time " + str(timestamp).encode() + b"\n" + note_text.encode()


def spec_verify(line: str, note_text: str, name: str, public_key: bytes) -> int:
    """Check one cosignature line; return its timestamp. Raises AssertionError/InvalidSignature."""
    assert line.endswith("\n")
    prefix = EM_DASH + " " + name + " "
    assert line.startswith(prefix), line
    raw = base64.b64decode(line[len(prefix) : -1], validate=True)
    # 32-bit key ID || timestamped_signature { u64 timestamp; opaque ed25519_signature[64] }
    assert len(raw) == 4 + 8 + 64
    key_id, (timestamp,), signature = raw[:4], struct.unpack(">Q", raw[4:12]), raw[12:]
    assert key_id == spec_key_id(name, public_key)
    assert 0 < timestamp <= 2**63 - 1
    Ed25519PublicKey.from_public_bytes(public_key).verify(
        signature, spec_message(note_text, timestamp)
    )
    return timestamp


def spec_sign(note_text: str, name: str, private: Ed25519PrivateKey, timestamp: int) -> str:
    public = private.public_key().public_bytes_raw()
    signature = private.sign(spec_message(note_text, timestamp))
    payload = spec_key_id(name, public) + struct.pack(">Q", timestamp) + signature
    return f"{EM_DASH} {name} {base64.b64encode(payload).decode()}\n"


def vkey_public_key(vkey: str, type_byte: int) -> tuple[str, bytes]:
    """signed-note vkey ``name+hex(id)+base64(type || key)`` -> (name, key)."""
    name, _, b64 = vkey.strip().split("+", 2)
    raw = base64.b64decode(b64, validate=True)
    assert raw[0] == type_byte and len(raw) == 33
    return name, raw[1:]


def note_text(note: str) -> str:
    """The text of a signed note (up to the last blank line, with its final newline)."""
    return note[: note.rindex("\n\n") + 1]


# ---------------------------------------------------------------------------------- tlog-witness
def add_checkpoint_body(old: int, proof: Sequence[bytes], note: str) -> bytes:
    # "an old size line, zero or more consistency proof lines, an empty line, a checkpoint";
    # "Each line MUST terminate in a newline character".
    lines = [b"old " + str(old).encode()] + [base64.b64encode(h) for h in proof]
    return b"".join(line + b"\n" for line in lines) + b"\n" + note.encode()


@dataclass
class Answer:
    version: int
    status: int
    reason: str
    content_type: str | None
    body: bytes


class SpecClient:
    """One keep-alive HTTP/1.1 connection to a witness (the spec: clients SHOULD keep alive)."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=timeout)

    def close(self) -> None:
        self.conn.close()

    def _do(self, method: str, path: str, body: bytes | None = None) -> Answer:
        self.conn.request(method, path, body=body)
        resp = self.conn.getresponse()
        data = resp.read()
        return Answer(resp.version, resp.status, resp.reason, resp.getheader("Content-Type"), data)

    def add_checkpoint(self, old: int, proof: Sequence[bytes], note: str) -> Answer:
        return self._do("POST", "/add-checkpoint", add_checkpoint_body(old, proof, note))

    def post_raw(self, body: bytes) -> Answer:
        return self._do("POST", "/add-checkpoint", body)

    def get(self, path: str) -> Answer:
        return self._do("GET", path)

    def checkpoint(self, origin: str) -> Answer:
        # "The origin hash is the SHA-256 hash of the log's origin, hex encoded, in lowercase."
        return self.get("/" + hashlib.sha256(origin.encode()).hexdigest() + "/checkpoint")


_SIZE_BODY = re.compile(rb"(0|[1-9][0-9]*)\n")


def conflict_size(answer: Answer) -> int:
    """The witness's size from a 409, checked to the letter of the spec."""
    assert answer.status == 409, answer
    assert answer.content_type == "text/x.tlog.size", answer.content_type
    match = _SIZE_BODY.fullmatch(answer.body)
    assert match is not None, answer.body
    return int(match.group(1))


def cosignature_lines(answer: Answer) -> list[str]:
    """The signature lines of a 200: one or more, each "—" ... "\\n"."""
    assert answer.status == 200, answer
    text = answer.body.decode("utf-8")
    assert text and text.endswith("\n")
    lines = [line + "\n" for line in text[:-1].split("\n")]
    for line in lines:
        assert line.startswith(EM_DASH + " "), line
    return lines
