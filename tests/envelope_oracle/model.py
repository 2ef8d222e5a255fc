"""The envelope data model: limits, the algorithm allow-list, the parse errors, Reading, Envelope.

CONSENSUS-CRITICAL, like :mod:`anchor.envelope`, whose lower half this is: what a
:class:`Reading` accepts is part of the wire format (DESIGN.md, "Envelope wire format"), and a
change here can invalidate every receipt already issued. The codecs
(:mod:`anchor.envelope_cose`, :mod:`anchor.envelope_jws`) and :mod:`anchor.envelope` build on
this module; it imports none of them. The public names are re-exported by
:mod:`anchor.envelope`, which is where callers import them from.

Pure: bytes in, bytes out, no I/O, no logging.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NoReturn

from anchor.device_id import DEVICE_ID_PATTERN, DEVICE_ID_RE
from anchor.errors import EnvelopeError, Reason
from anchor.keys import ED25519, P256, P256_ORDER
from anchor.merkle import leaf_hash

__all__ = [
    "ALG_KEY_TYPES",
    "ALLOWED_ALGS",
    "COSE_ALG_IDS",
    "COSE_ALG_NAMES",
    "FORMATS",
    "FORMAT_COSE",
    "FORMAT_JWS",
    "MAX_CBOR_DEPTH",
    "MAX_JSON_DEPTH",
    "AlgorithmKeyMismatch",
    "AlgorithmNotAllowed",
    "Envelope",
    "MalformedEnvelope",
    "NonCanonicalEnvelope",
    "OversizedEnvelope",
    "Reading",
    "UnknownKid",
    "UnsupportedHeader",
]

MAX_CBOR_DEPTH = 8
"""Deepest container nesting accepted in any CBOR item (a flat map has depth 1)."""

MAX_JSON_DEPTH = MAX_CBOR_DEPTH
"""The same bound for JSON, so a payload acceptable in one format is acceptable in the other."""

FORMAT_COSE = "cose-sign1"
FORMAT_JWS = "jws"
FORMATS = (FORMAT_COSE, FORMAT_JWS)

ALG_KEY_TYPES: Mapping[str, str] = MappingProxyType(
    {
        # RFC 9864: the fully-specified name, which devices should send.
        "Ed25519": ED25519,
        # RFC 8037 / RFC 9053 polymorphic EdDSA, accepted with an Ed25519 key only (older devices).
        "EdDSA": ED25519,
        # ECDSA P-256 with SHA-256 (RFC 7518 section 3.4, RFC 9053 section 2.1).
        "ES256": P256,
    }
)
"""The algorithm allow-list (the same names in both formats) and the key type each requires."""

ALLOWED_ALGS = frozenset(ALG_KEY_TYPES)

COSE_ALG_IDS: Mapping[str, int] = MappingProxyType({"Ed25519": -19, "EdDSA": -8, "ES256": -7})
"""COSE algorithm identifiers (IANA "COSE Algorithms" registry)."""

COSE_ALG_NAMES: Mapping[int, str] = MappingProxyType({v: k for k, v in COSE_ALG_IDS.items()})

_KID_SIZE = 32
_PREV_SIZE = 32
_ZERO_PREV = bytes(_PREV_SIZE)
_MAX_SEQ = 2**64 - 1
# CBOR's integer range (major types 0 and 1); JSON integers must fit it too, so that a reading
# means the same thing in both formats.
_MIN_INT, _MAX_INT = -(2**64), 2**64 - 1
_DEVICE_ID = DEVICE_ID_RE  # the one rule: anchor.device_id
_PREV_HEX = re.compile(r"[0-9a-f]{64}")
_CORE_KEYS = ("device_id", "seq", "ts", "kind", "values", "prev")


class MalformedEnvelope(EnvelopeError):
    """The envelope is not well-formed under the wire format (reason ``malformed``)."""

    reason = Reason.MALFORMED


class NonCanonicalEnvelope(EnvelopeError):
    """A well-formed envelope that is not in the one canonical spelling of DESIGN.md (reason
    ``non_canonical``): untagged or non-deterministic CBOR, a non-empty COSE unprotected header,
    padded or non-zero-trailing-bit base64url in a JWS segment, or a high-S ES256 signature."""

    reason = Reason.NON_CANONICAL


class OversizedEnvelope(EnvelopeError):
    """The envelope is larger than :data:`anchor.envelope.MAX_ENVELOPE_BYTES` (reason
    ``oversized``)."""

    reason = Reason.OVERSIZED


class AlgorithmNotAllowed(EnvelopeError):
    """The envelope's ``alg`` is not on the allow-list, ``none`` included (``alg_not_allowed``)."""

    reason = Reason.ALG_NOT_ALLOWED


class AlgorithmKeyMismatch(EnvelopeError):
    """The ``alg`` does not fit the key's type, e.g. ES256 with an Ed25519 key
    (``alg_key_mismatch``)."""

    reason = Reason.ALG_KEY_MISMATCH


class UnknownKid(EnvelopeError):
    """The envelope's ``kid`` is not the thumbprint of the key it is checked with
    (``unknown_kid``)."""

    reason = Reason.UNKNOWN_KID


class UnsupportedHeader(EnvelopeError):
    """A critical header parameter (``crit``) or JWS ``b64: false`` that this verifier does not
    implement (``unsupported_header``)."""

    reason = Reason.UNSUPPORTED_HEADER


def _excerpt(value: object, limit: int = 40) -> str:
    # Device-supplied text reaches logs, metrics labels and HTML: quote it escaped and short.
    # ascii() is repr() with every non-ASCII character escaped too (no bidi or homoglyph tricks).
    text = ascii(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _malformed(detail: str) -> NoReturn:
    raise MalformedEnvelope(detail)


def _non_canonical(detail: str) -> NoReturn:
    raise NonCanonicalEnvelope(detail)


# --------------------------------------------------------------------------------------------
# Readings
# --------------------------------------------------------------------------------------------


def _check_text(value: object, what: str) -> str:
    if not isinstance(value, str):
        _malformed(f"{what} must be text, got {type(value).__name__}")
    try:
        # Rejects lone surrogates (JSON "\ud800"), which no store or log can encode as UTF-8.
        value.encode("utf-8")
    except UnicodeEncodeError:
        _malformed(f"{what} is not valid Unicode text")
    return value


def _check_scalar(value: object, what: str) -> None:
    # bool first: in Python it is an int, and it is a valid measurement value in its own right.
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not _MIN_INT <= value <= _MAX_INT:
            _malformed(f"{what} is outside the CBOR integer range")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            _malformed(f"{what} is NaN or infinite")
        return
    if isinstance(value, str):
        _check_text(value, what)
        return
    _malformed(f"{what} must be a number, text or bool, got {type(value).__name__}")


def _check_extra(value: object, what: str, depth: int) -> None:
    # Extra payload keys are kept and signed but not interpreted: any JSON-like value (plus
    # byte strings, which only COSE can carry) within the depth bound.
    # ``depth`` is the nesting level of ``value`` if it is a container (the payload map is 1).
    if value is None or isinstance(value, bytes):
        return
    if isinstance(value, list | dict | MappingProxyType) and depth > MAX_CBOR_DEPTH:
        _malformed(f"{what} nests deeper than {MAX_CBOR_DEPTH}")
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_extra(item, f"{what}[{i}]", depth + 1)
        return
    if isinstance(value, dict | MappingProxyType):
        for key, item in value.items():
            _check_text(key, f"a key in {what}")
            _check_extra(item, f"{what}[{_excerpt(key, 24)}]", depth + 1)
        return
    _check_scalar(value, what)


def _check_uint(value: object, what: str, low: int, high: int) -> int:
    # bool is an int subclass in Python; True must not pass for seq 1.
    if not isinstance(value, int) or isinstance(value, bool):
        _malformed(f"{what} must be an unsigned integer, got {type(value).__name__}")
    if not low <= value <= high:
        _malformed(f"{what} {value} is outside [{low}, {high}]")
    return value


@dataclass(frozen=True, slots=True)
class Reading:
    """One signed reading: the payload map of DESIGN.md "Envelope wire format".

    ``device_id`` matches ``[A-Za-z0-9._-]{1,64}``; ``seq`` is in ``[1, 2**64-1]``; ``ts`` is
    milliseconds since the Unix epoch (``>= 0``); ``kind`` is non-empty text; ``values`` is a
    flat map from text to int, finite float, text or bool; ``prev`` is the 32-byte leaf hash of
    the device's previous envelope, all zero for ``seq`` 1. ``extra`` holds any further payload
    keys, which are signed and kept, never dropped. The constructor validates all of it and
    raises :class:`MalformedEnvelope`; ``values`` and ``extra`` are stored as read-only copies.
    """

    device_id: str
    seq: int
    ts: int
    kind: str
    values: Mapping[str, int | float | str | bool]
    prev: bytes
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_text(self.device_id, "device_id")
        if not _DEVICE_ID.fullmatch(self.device_id):
            _malformed(f"device_id {_excerpt(self.device_id)} does not match {DEVICE_ID_PATTERN}")
        _check_uint(self.seq, "seq", 1, _MAX_SEQ)
        _check_uint(self.ts, "ts", 0, _MAX_INT)
        if not _check_text(self.kind, "kind"):
            _malformed("kind must not be empty")
        if not isinstance(self.values, Mapping):
            _malformed(f"values must be a map, got {type(self.values).__name__}")
        for key, value in self.values.items():
            _check_text(key, "a key in values")
            # Fast path for the common finite float, so the message is only built on failure.
            if type(value) is float and math.isfinite(value):
                continue
            _check_scalar(value, f"values[{_excerpt(key, 24)}]")
        if not isinstance(self.prev, bytes) or len(self.prev) != _PREV_SIZE:
            _malformed("prev must be 32 bytes")
        if self.seq == 1 and self.prev != _ZERO_PREV:
            _malformed("prev must be 32 zero bytes for seq 1")
        if not isinstance(self.extra, Mapping):
            _malformed(f"extra must be a map, got {type(self.extra).__name__}")
        for key, value in self.extra.items():
            _check_text(key, "a payload key")
            if key in _CORE_KEYS:
                _malformed(f"extra must not redefine the payload key {key!r}")
            # The payload map is depth 1, so an extra value starts at depth 2.
            _check_extra(value, f"payload[{_excerpt(key, 24)}]", 2)
        object.__setattr__(self, "values", MappingProxyType(dict(self.values)))
        object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))

    def to_payload(self, format: str = FORMAT_COSE) -> dict[str, Any]:
        """The payload map as it goes on the wire in ``format``: ``prev`` is a byte string for
        COSE and lowercase hex for JWS. Raises ``MalformedEnvelope`` when an extra value cannot
        be carried in JSON (a byte string)."""
        _check_format(format)
        payload: dict[str, Any] = dict(self.extra)
        payload.update(
            device_id=self.device_id,
            seq=self.seq,
            ts=self.ts,
            kind=self.kind,
            values=dict(self.values),
            prev=self.prev if format == FORMAT_COSE else self.prev.hex(),
        )
        return payload

    @classmethod
    def from_payload(cls, payload: object, format: str = FORMAT_COSE) -> Reading:
        """Build a reading from a decoded payload map in ``format`` (inverse of
        :meth:`to_payload`); raises ``MalformedEnvelope``."""
        _check_format(format)
        if not isinstance(payload, dict):
            _malformed(f"payload must be a map, got {type(payload).__name__}")
        for key in payload:
            if not isinstance(key, str):
                _malformed(f"payload key {_excerpt(key)} is not text")
        missing = [k for k in _CORE_KEYS if k not in payload]
        if missing:
            _malformed(f"payload lacks {', '.join(missing)}")
        values = payload["values"]
        if not isinstance(values, dict):
            _malformed(f"values must be a map, got {type(values).__name__}")
        prev = payload["prev"]
        if format == FORMAT_JWS:
            if not isinstance(prev, str) or not _PREV_HEX.fullmatch(prev):
                _malformed("prev must be 64 lowercase hex digits")
            prev = bytes.fromhex(prev)
        elif not isinstance(prev, bytes):
            _malformed(f"prev must be a byte string, got {type(prev).__name__}")
        extra = {k: v for k, v in payload.items() if k not in _CORE_KEYS}
        if format == FORMAT_JWS:
            # JSON has no byte strings; _check_extra accepts them only for COSE's sake.
            _reject_bytes(extra)
        return cls(
            device_id=payload["device_id"],
            seq=payload["seq"],
            ts=payload["ts"],
            kind=payload["kind"],
            values=values,
            prev=prev,
            extra=extra,
        )


def _reject_bytes(value: object) -> None:
    if isinstance(value, bytes):
        _malformed("a JWS payload cannot hold a byte string")
    if isinstance(value, list):
        for item in value:
            _reject_bytes(item)
    elif isinstance(value, dict):
        for item in value.values():
            _reject_bytes(item)


def _check_format(format: str) -> None:
    if format not in FORMATS:
        raise MalformedEnvelope(f"unknown envelope format {_excerpt(format)}; known: {FORMATS}")


# --------------------------------------------------------------------------------------------
# Envelopes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Envelope:
    """A parsed envelope: what :func:`parse_envelope` read, before or after verification.

    ``raw`` is exactly the bytes received; ``signed_bytes`` is what the signature covers (the
    COSE ``Sig_structure`` of RFC 9052 section 4.4, or the JWS signing input of RFC 7515
    section 5.2); ``alg`` is the allow-listed name (``"Ed25519"``, ``"EdDSA"``, ``"ES256"``) in
    either format; ``kid`` the 32 raw thumbprint bytes. Build one with :func:`parse_envelope`:
    :func:`verify_envelope` trusts that ``signed_bytes`` came from ``raw``.
    """

    format: str
    alg: str
    kid: bytes
    reading: Reading
    raw: bytes = field(repr=False)
    signed_bytes: bytes = field(repr=False)
    signature: bytes = field(repr=False)

    @property
    def leaf_hash(self) -> bytes:
        """``SHA-256(0x00 || raw)``: this envelope's RFC 9162 Merkle leaf."""
        return leaf_hash(self.raw)


def _check_low_s(alg: str, signature: bytes) -> None:
    # An ECDSA signature (r, s) has a twin (r, n - s) that verifies too; only s <= n/2 counts.
    if alg == "ES256" and int.from_bytes(signature[32:], "big") > P256_ORDER // 2:
        _non_canonical("ES256 signature is not low-S (s > n/2); the signer must use n - s")
