"""JWS compact envelopes (RFC 7515 sections 3.1, 5.2, 7.1): strict parsing and signing.

CONSENSUS-CRITICAL (see :mod:`anchor.envelope`, which dispatches here and whose module docstring
states the parse order and the canonical form). Segments are base64url, canonical when unpadded
with zero trailing bits; header and payload are strict JSON objects (UTF-8, no duplicate members,
depth at most :data:`~anchor.envelope_model.MAX_JSON_DEPTH`). The signing input is a slice of the
received bytes, never a re-encoding.

Pure: bytes in, bytes out, no I/O, no logging.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any

from anchor.keys import SIGNATURE_SIZE, PrivateKey, b64url_decode, b64url_encode
from envelope_oracle.model import (
    _KID_SIZE,
    ALLOWED_ALGS,
    FORMAT_JWS,
    MAX_JSON_DEPTH,
    AlgorithmNotAllowed,
    Envelope,
    MalformedEnvelope,
    Reading,
    UnsupportedHeader,
    _check_low_s,
    _excerpt,
    _malformed,
    _non_canonical,
    _reject_bytes,
)
from envelope_oracle.wire import JsonRejected, strict_loads

__all__ = ["parse_jws", "sign_jws"]


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    # anchor.wire's strict loader: UTF-8 only, nesting bounded before json.loads recurses, and
    # duplicate member names refused (RFC 7515 section 5.2 step 4 asks it of header names; we
    # apply it to payloads too, so that one signed payload cannot be read two ways).
    try:
        obj = strict_loads(data, max_depth=MAX_JSON_DEPTH)
    except JsonRejected as exc:
        raise MalformedEnvelope(f"{what} is not valid JSON: {_excerpt(str(exc), 100)}") from exc
    if not isinstance(obj, dict):
        _malformed(f"{what} must be a JSON object")
    return obj


def _json_bytes(obj: Mapping[str, Any]) -> bytes:
    # Compact, sorted, UTF-8: one deterministic spelling for what we sign (receivers keep the
    # bytes they get either way).
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)  # fmt: skip
    return text.encode("utf-8")


def _segment(text: str, what: str) -> bytes:
    try:
        return b64url_decode(text)
    except ValueError as exc:
        raise MalformedEnvelope(f"JWS {what}: {exc}") from exc


_B64URL_TEXT = re.compile(r"([A-Za-z0-9_-]*)(={0,2})")


def _segment_spelling(text: str, what: str) -> tuple[bytes, bool]:
    """Decode one of the three JWS segments: ``(bytes, canonical)``.

    Other spellings of the same bytes that a lenient base64url decoder takes, padding ``=`` and
    non-zero unused trailing bits, decode here with ``canonical`` False, so that they are
    ``non_canonical`` (after every structural check); anything else is ``malformed``.
    """
    match = _B64URL_TEXT.fullmatch(text)
    if match is None:
        _malformed(f"JWS {what}: not base64url (character outside the alphabet)")
    body, padding = match.groups()
    if len(body) % 4 == 1 or (padding and len(padding) != -len(body) % 4):
        _malformed(f"JWS {what}: not base64url (impossible length or padding)")
    try:
        data = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - excluded by the checks above
        raise MalformedEnvelope(f"JWS {what}: not base64url") from exc
    return data, not padding and b64url_encode(data) == body


def parse_jws(raw: bytes) -> Envelope:
    """Parse a JWS compact envelope (size already bounded by the caller, ASCII with two dots);
    raises the parse errors of :func:`anchor.envelope.parse_envelope`."""
    # RFC 7515 section 7.1: BASE64URL(header) "." BASE64URL(payload) "." BASE64URL(signature).
    header_b64, payload_b64, signature_b64 = raw.decode("ascii").split(".")
    segments = [
        (_segment_spelling(text, what), what)
        for text, what in ((header_b64, "protected header"), (payload_b64, "payload"),
                           (signature_b64, "signature"))
    ]  # fmt: skip
    (header_bytes, _), (payload_bytes, _), (signature, _) = (seg for seg, _ in segments)
    header = _json_object(header_bytes, "JWS protected header")

    # Section 5.2 steps: validate the header before anything depends on it.
    if "crit" in header:
        # Section 4.1.11: a non-empty array of extension names, each one understood. We
        # implement no extensions, so any listed name is unsupported.
        crit = header["crit"]
        if not isinstance(crit, list) or not crit or not all(isinstance(c, str) for c in crit):
            _malformed("JWS crit must be a non-empty array of names")
        raise UnsupportedHeader(f"JWS critical header {_excerpt(crit[0])} not supported")
    if "b64" in header and header["b64"] is not True:
        # RFC 7797 unencoded payloads change the signing input; not part of the wire format.
        raise UnsupportedHeader("JWS b64 header (RFC 7797 unencoded payload) not supported")
    if "alg" not in header:
        _malformed("JWS protected header lacks alg")
    alg = header["alg"]
    if not isinstance(alg, str) or alg not in ALLOWED_ALGS:
        # "none" (RFC 7518 section 3.6) lands here as well.
        raise AlgorithmNotAllowed(f"JWS alg {_excerpt(alg)} is not one of {sorted(ALLOWED_ALGS)}")
    kid_text = header.get("kid")
    if not isinstance(kid_text, str):
        _malformed("JWS protected header needs kid, a base64url thumbprint")
    kid = _segment(kid_text, "kid")
    if len(kid) != _KID_SIZE:
        _malformed(f"JWS kid must be a 32-byte thumbprint, got {len(kid)} bytes")
    if not payload_bytes:
        _malformed("detached JWS payloads are not supported")
    if len(signature) != SIGNATURE_SIZE:
        _malformed(f"signature must be {SIGNATURE_SIZE} bytes, got {len(signature)}")

    reading = Reading.from_payload(_json_object(payload_bytes, "JWS payload"), FORMAT_JWS)

    # The canonical form, last (module docstring), in this order (verify.js follows it).
    for (_, canonical), what in segments:
        if not canonical:
            _non_canonical(f"JWS {what} is not canonical base64url (padding or trailing bits)")
    _check_low_s(alg, signature)
    return Envelope(
        format=FORMAT_JWS,
        alg=alg,
        kid=kid,
        reading=reading,
        raw=raw,
        # Section 5.2 step 8: the signing input is the received ASCII, up to the second dot.
        signed_bytes=raw[: len(header_b64) + 1 + len(payload_b64)],
        signature=signature,
    )


def sign_jws(reading: Reading, key: PrivateKey, alg: str) -> bytes:
    """The JWS compact envelope of ``reading`` signed by ``key`` with the allow-listed ``alg``
    (which the caller has matched to the key type): compact JSON with sorted keys, unpadded
    base64url segments. Raises ``MalformedEnvelope`` for a reading JSON cannot carry."""
    _reject_bytes(dict(reading.extra))
    header = _json_bytes({"alg": alg, "kid": b64url_encode(key.public_key.kid)})
    body = _json_bytes(reading.to_payload(FORMAT_JWS))
    signing_input = f"{b64url_encode(header)}.{b64url_encode(body)}".encode("ascii")
    return signing_input + b"." + b64url_encode(key.sign(signing_input)).encode("ascii")
