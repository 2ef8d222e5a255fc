"""Signed device envelopes: COSE_Sign1 (RFC 9052) and JWS compact (RFC 7515), parsed and checked.

CONSENSUS-CRITICAL. The Merkle leaf of a reading is ``leaf_hash(raw)`` over the exact envelope
bytes a device sent, and what this module accepts is what receipts vouch for. Devices in the
field depend on the wire format (DESIGN.md, "Envelope wire format"); change nothing here
without versioning it.

Two steps, kept apart:

1. :func:`parse_envelope` does bounded, strict parsing and **no** cryptography, so an ingestor
   learns the ``kid`` (to look the device up) from hostile bytes at a small, fixed cost. In
   order: size (> :data:`MAX_ENVELOPE_BYTES` is ``oversized``), format, structure (CBOR depth
   > :data:`MAX_CBOR_DEPTH`, indefinite lengths, duplicate map keys, any CBOR tag other than
   the leading COSE_Sign1 tag 18, trailing bytes, NaN/infinity, non-text payload keys, bad
   base64url, duplicate JSON members: all ``malformed``), then the header rules (algorithm
   allow-list, protected ``alg`` and ``kid``, critical headers), and last the canonical form
   (``non_canonical``, see below).
2. :func:`verify_envelope` checks, in order, that the envelope names the given key
   (``unknown_kid``), that its algorithm fits the key type (``alg_key_mismatch``), and the
   signature (``bad_signature``).

Canonical form. For one signed reading exactly one byte string is accepted, so that nobody but
the device can make another (a re-spelt envelope would hash to another leaf, could take the
reading's seq first and get the device's own reading refused). COSE_Sign1 carries tag 18, is
deterministically encoded (RFC 8949 section 4.2.1: shortest heads and floats, definite lengths,
map keys in bytewise order of their encodings) in its outer array, protected header and payload,
and has an empty unprotected header; JWS segments are unpadded base64url with zero trailing bits;
ES256 signatures are low-S (``s <= n/2``). Ed25519 needs no rule here: RFC 8032 section 5.1.7
(and ``cryptography``) refuse ``S >= L``, so ``S + L`` is a ``bad_signature``. The check comes
after every structural rule, so ``non_canonical`` means "valid, but spelt another way than the
device's signer spells it"; a CBOR or base64url spelling that is not even well-formed stays
``malformed``.

The bytes are never re-encoded: ``Envelope.raw`` is the input, and ``Envelope.signed_bytes`` is
built from the received protected-header and payload byte strings (COSE, RFC 9052 section 4.4)
or is a slice of the input (JWS signing input, RFC 7515 section 5.2).

Pure: bytes in, bytes out, no I/O, no logging. Every failure is an
:class:`~anchor.errors.EnvelopeError` with a stable ``reason`` (see ``docs/reason-codes.md``);
messages quote device-supplied text only as a short ``repr()`` excerpt.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NoReturn

import cbor2

from anchor.device_id import DEVICE_ID_PATTERN, DEVICE_ID_RE
from anchor.errors import EnvelopeError, Reason
from anchor.keys import (
    ED25519,
    P256,
    P256_ORDER,
    SIGNATURE_SIZE,
    BadSignature,
    PrivateKey,
    PublicKey,
    b64url_decode,
    b64url_encode,
)
from anchor.merkle import leaf_hash
from anchor.wire import JsonRejected, strict_loads

__all__ = [
    "ALG_KEY_TYPES",
    "ALLOWED_ALGS",
    "COSE_ALG_IDS",
    "COSE_ALG_NAMES",
    "FORMATS",
    "FORMAT_COSE",
    "FORMAT_JWS",
    "MAX_CBOR_DEPTH",
    "MAX_ENVELOPE_BYTES",
    "MAX_JSON_DEPTH",
    "AlgorithmKeyMismatch",
    "AlgorithmNotAllowed",
    "BadSignature",
    "Envelope",
    "EnvelopeError",
    "MalformedEnvelope",
    "NonCanonicalEnvelope",
    "OversizedEnvelope",
    "Reading",
    "UnknownKid",
    "UnsupportedHeader",
    "detect_format",
    "parse_envelope",
    "sign_reading",
    "verify_envelope",
]

MAX_ENVELOPE_BYTES = 16 * 1024
"""Larger envelopes are refused (``oversized``) before any parsing."""

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

# COSE (RFC 9052 section 3.1) header labels.
_H_ALG, _H_CRIT, _H_KID = 1, 2, 4
# Labels a device may list in ``crit``: the ones this module processes.
_COSE_UNDERSTOOD = frozenset({_H_ALG, _H_KID})
_COSE_SIGN1_TAG = 0xD2  # tag 18 in its one-byte form (RFC 9052 section 4.2)
_CBOR_ARRAY_4 = 0x84

# cbor2 turns these tags into Python objects (datetimes, bignums, decimals, sets, ...) without
# consulting ``tag_hook``. Overriding each one rejects them: the wire format has no tags beyond
# the leading 18, and a bignum that decoded to a plain int would let ``seq`` be spelt two ways.
_CBOR2_SEMANTIC_TAGS = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260,
                        261, 1004, 43000, 55799)  # fmt: skip


class MalformedEnvelope(EnvelopeError):
    """The envelope is not well-formed under the wire format (reason ``malformed``)."""

    reason = Reason.MALFORMED


class NonCanonicalEnvelope(EnvelopeError):
    """A well-formed envelope that is not in the one canonical spelling of DESIGN.md (reason
    ``non_canonical``): untagged or non-deterministic CBOR, a non-empty COSE unprotected header,
    padded or non-zero-trailing-bit base64url in a JWS segment, or a high-S ES256 signature."""

    reason = Reason.NON_CANONICAL


class OversizedEnvelope(EnvelopeError):
    """The envelope is larger than :data:`MAX_ENVELOPE_BYTES` (reason ``oversized``)."""

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


def detect_format(raw: bytes) -> str:
    """:data:`FORMAT_COSE` when ``raw`` starts with CBOR tag 18 (``0xd2``) or a 4-element array
    (``0x84``); :data:`FORMAT_JWS` when it is ASCII with exactly two dots; otherwise raises
    ``MalformedEnvelope``. Looks at the bytes only; says nothing about validity."""
    if not raw:
        _malformed("empty envelope")
    if raw[0] in (_COSE_SIGN1_TAG, _CBOR_ARRAY_4):
        return FORMAT_COSE
    if raw.isascii() and raw.count(b".") == 2:
        return FORMAT_JWS
    _malformed("neither a COSE_Sign1 message nor a JWS compact serialization")


def parse_envelope(raw: bytes) -> Envelope:
    """Parse ``raw`` strictly and within fixed bounds, without any cryptography.

    Raises ``OversizedEnvelope``, ``MalformedEnvelope``, ``AlgorithmNotAllowed``,
    ``UnsupportedHeader`` or, for a well-formed envelope in another spelling than the canonical
    one, ``NonCanonicalEnvelope``. The result still needs :func:`verify_envelope`.
    """
    if not isinstance(raw, bytes | bytearray | memoryview):
        _malformed(f"an envelope is bytes, got {type(raw).__name__}")
    raw = bytes(raw)
    # The size bound comes before anything else looks at the bytes.
    if len(raw) > MAX_ENVELOPE_BYTES:
        raise OversizedEnvelope(f"envelope is {len(raw)} bytes, more than {MAX_ENVELOPE_BYTES}")
    if detect_format(raw) == FORMAT_COSE:
        return _parse_cose(raw)
    return _parse_jws(raw)


def verify_envelope(envelope: Envelope | bytes, key: PublicKey) -> Envelope:
    """Check that ``envelope`` (parsed, or raw bytes to parse) was signed by ``key``.

    Steps, in order: (1) ``kid`` equals ``key.kid`` (else ``UnknownKid``); (2) ``alg`` fits
    ``key.key_type`` (else ``AlgorithmKeyMismatch``); (3) the signature over ``signed_bytes``
    verifies (else ``BadSignature``). Returns the envelope; raises the parse errors of
    :func:`parse_envelope` for raw bytes.
    """
    if not isinstance(envelope, Envelope):
        envelope = parse_envelope(envelope)
    expected = key.kid
    if envelope.kid != expected:
        raise UnknownKid(
            f"envelope kid {b64url_encode(envelope.kid)} is not the key's kid "
            f"{b64url_encode(expected)}"
        )
    needed = ALG_KEY_TYPES.get(envelope.alg)
    if needed is None:
        # Only a hand-built Envelope can get here; parse_envelope enforces the allow-list.
        raise AlgorithmNotAllowed(f"alg {_excerpt(envelope.alg)} is not allowed")
    if needed != key.key_type:
        raise AlgorithmKeyMismatch(f"alg {envelope.alg} needs a {needed} key, not {key.key_type}")
    key.verify(envelope.signature, envelope.signed_bytes)
    return envelope


def sign_reading(
    reading: Reading, key: PrivateKey, *, format: str = FORMAT_COSE, alg: str | None = None
) -> bytes:
    """Sign ``reading`` with ``key`` and return the envelope bytes.

    ``alg`` defaults to ``"Ed25519"`` (COSE -19) for an Ed25519 key and ``"ES256"`` for a P-256
    key; ``"EdDSA"`` (COSE -8) is available for receivers that predate RFC 9864. The result is
    in the canonical form (module docstring): COSE messages carry tag 18, an empty unprotected
    header and RFC 8949 deterministic CBOR (cbor2 ``canonical`` sorts map keys length first,
    which is the bytewise order for the text keys a reading has and for ``{1, 4}``); JWS
    payloads are compact JSON with sorted keys; ES256 signatures are low-S
    (:meth:`anchor.keys.PrivateKey.sign`). Raises
    ``AlgorithmNotAllowed``, ``AlgorithmKeyMismatch``, ``MalformedEnvelope`` (a reading JSON
    cannot carry) or ``OversizedEnvelope``.
    """
    _check_format(format)
    if alg is None:
        alg = "Ed25519" if key.key_type == ED25519 else "ES256"
    if alg not in ALG_KEY_TYPES:
        raise AlgorithmNotAllowed(f"alg {_excerpt(alg)} is not one of {sorted(ALLOWED_ALGS)}")
    if ALG_KEY_TYPES[alg] != key.key_type:
        raise AlgorithmKeyMismatch(
            f"alg {alg} needs a {ALG_KEY_TYPES[alg]} key, not {key.key_type}"
        )
    kid = key.public_key.kid
    if format == FORMAT_COSE:
        protected = cbor2.dumps({_H_ALG: COSE_ALG_IDS[alg], _H_KID: kid}, canonical=True)
        payload = cbor2.dumps(reading.to_payload(FORMAT_COSE), canonical=True)
        signature = key.sign(_sig_structure(protected, payload))
        raw = cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, signature]), canonical=True)
    else:
        _reject_bytes(dict(reading.extra))
        header = _json_bytes({"alg": alg, "kid": b64url_encode(kid)})
        body = _json_bytes(reading.to_payload(FORMAT_JWS))
        signing_input = f"{b64url_encode(header)}.{b64url_encode(body)}".encode("ascii")
        raw = signing_input + b"." + b64url_encode(key.sign(signing_input)).encode("ascii")
    # Never hand out an envelope that a receiver would refuse (too large, too deep, ...).
    parse_envelope(raw)
    return raw


# --------------------------------------------------------------------------------------------
# COSE_Sign1 (RFC 9052 sections 3, 4.2, 4.4)
# --------------------------------------------------------------------------------------------


def _reject_tag(*args: object) -> NoReturn:
    raise ValueError("CBOR tags are not allowed here")


_REJECT_SEMANTIC = dict.fromkeys(_CBOR2_SEMANTIC_TAGS, _reject_tag)


def _cbor_decode(data: bytes, what: str) -> Any:
    """Decode exactly one CBOR item from ``data``, strictly; raises ``MalformedEnvelope``."""
    fp = io.BytesIO(data)
    try:
        decoder = cbor2.CBORDecoder(
            fp,
            tag_hook=_reject_tag,
            semantic_decoders=_REJECT_SEMANTIC,
            max_depth=MAX_CBOR_DEPTH,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            str_errors="strict",
        )
        item = decoder.decode()
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        # cbor2's messages may quote the data (e.g. a duplicate key): keep them short.
        raise MalformedEnvelope(f"{what} is not valid CBOR: {_excerpt(str(exc), 100)}") from exc
    if fp.tell() != len(data):
        _malformed(f"{what} has {len(data) - fp.tell()} trailing bytes")
    if isinstance(item, cbor2.CBORSimpleValue) or item is cbor2.undefined:
        _malformed(f"{what} is a CBOR simple value")
    return item


class _NotDeterministic(Exception):
    pass


def _fits(fmt: str, value: float) -> bool:
    # True when ``value`` survives a round trip through the narrower IEEE 754 format ``fmt``,
    # bit for bit (so -0.0 fits, and NaN never does: its canonical form is f9 7e00).
    try:
        narrow = struct.unpack(fmt, struct.pack(fmt, value))[0]
    except (OverflowError, struct.error):
        return False
    return struct.pack(">d", narrow) == struct.pack(">d", value) and not math.isnan(value)


def _deterministic_item(data: bytes, pos: int) -> int:
    """Check the CBOR item at ``pos`` against RFC 8949 section 4.2.1; return where it ends.

    Precondition: ``data`` was decoded by :func:`_cbor_decode` (well-formed, definite lengths,
    depth <= :data:`MAX_CBOR_DEPTH`, so the recursion is shallow). Raises ``_NotDeterministic``.
    """
    initial = data[pos]
    major, info = initial >> 5, initial & 0x1F
    pos += 1
    if major == 7:
        # Simple values and floats (section 3.3). Section 4.2.1 asks for the preferred
        # serialization: a float in the shortest of half, single, double that keeps its value.
        if info < 24:
            return pos
        if info == 24:
            return pos + 1
        if info == 25:
            return pos + 2
        if info == 26:
            if _fits(">e", struct.unpack_from(">f", data, pos)[0]):
                raise _NotDeterministic("a single-precision float that fits in half precision")
            return pos + 4
        if info == 27:
            if _fits(">f", struct.unpack_from(">d", data, pos)[0]):
                raise _NotDeterministic("a double-precision float that fits in single precision")
            return pos + 8
        raise _NotDeterministic("an indefinite-length item or a reserved simple value")
    if info < 24:
        argument = info
    elif info < 28:
        size = 1 << (info - 24)
        argument = int.from_bytes(data[pos : pos + size], "big")
        pos += size
        # Section 4.2.1: the argument in the shortest form (0..23 in the initial byte).
        if argument < (24 if size == 1 else 1 << (4 * size)):
            raise _NotDeterministic(f"a {size}-byte argument {argument} (not the shortest head)")
    else:
        raise _NotDeterministic("an indefinite-length item")
    if major in (2, 3):
        return pos + argument
    if major == 4:
        for _ in range(argument):
            pos = _deterministic_item(data, pos)
        return pos
    if major == 5:
        # Keys sorted by the bytewise lexicographic order of their deterministic encodings.
        previous = b""
        for i in range(argument):
            start = pos
            pos = _deterministic_item(data, pos)
            key = data[start:pos]
            if i and key <= previous:
                raise _NotDeterministic("map keys not in bytewise order of their encodings")
            previous = key
            pos = _deterministic_item(data, pos)
        return pos
    if major == 6:
        return _deterministic_item(data, pos)
    return pos  # major 0 and 1: the argument is the value


def _check_deterministic(data: bytes, what: str) -> None:
    """Raise ``NonCanonicalEnvelope`` unless ``data`` (strictly decoded already) is in RFC 8949
    section 4.2.1 core deterministic encoding."""
    try:
        _deterministic_item(data, 0)
    except _NotDeterministic as exc:
        _non_canonical(f"{what} is not deterministically encoded CBOR: {exc}")


def _check_low_s(alg: str, signature: bytes) -> None:
    # An ECDSA signature (r, s) has a twin (r, n - s) that verifies too; only s <= n/2 counts.
    if alg == "ES256" and int.from_bytes(signature[32:], "big") > P256_ORDER // 2:
        _non_canonical("ES256 signature is not low-S (s > n/2); the signer must use n - s")


def _sig_structure(protected: bytes, payload: bytes) -> bytes:
    # RFC 9052 section 4.4: Sig_structure = ["Signature1", body_protected, external_aad,
    # payload], external_aad empty. The protected header goes in exactly as received.
    return cbor2.dumps(["Signature1", protected, b"", payload], canonical=True)


def _parse_cose(raw: bytes) -> Envelope:
    # RFC 9052 section 4.2: COSE_Sign1 = [protected: bstr, unprotected: map, payload: bstr / nil,
    # signature: bstr], optionally wrapped in tag 18, which is the only tag allowed anywhere.
    body = raw[1:] if raw[0] == _COSE_SIGN1_TAG else raw
    message = _cbor_decode(body, "COSE_Sign1 message")
    if not isinstance(message, list) or len(message) != 4:
        _malformed("COSE_Sign1 must be an array of 4 items")
    protected_bytes, unprotected, payload_bytes, signature = message
    if not isinstance(protected_bytes, bytes):
        _malformed("COSE protected header must be a byte string")
    if not isinstance(unprotected, dict):
        _malformed("COSE unprotected header must be a map")
    if payload_bytes is None:
        _malformed("detached COSE payloads are not supported")
    if not isinstance(payload_bytes, bytes):
        _malformed("COSE payload must be a byte string")
    if not isinstance(signature, bytes):
        _malformed("COSE signature must be a byte string")

    # An empty bstr stands for an empty map (section 3), which lacks alg: malformed below.
    protected = _cbor_decode(protected_bytes, "COSE protected header") if protected_bytes else {}
    if not isinstance(protected, dict):
        _malformed("COSE protected header must be a map")
    for bucket in (protected, unprotected):
        for label in bucket:
            if not isinstance(label, int | str) or isinstance(label, bool):
                _malformed(f"COSE header label {_excerpt(label)} is not an int or text")
    # Section 3: a label must not appear in both buckets.
    both = set(protected) & set(unprotected)
    if both:
        _malformed(f"COSE header labels {_excerpt(sorted(map(str, both)))} are in both buckets")
    # alg and kid are signed only in the protected bucket; an unsigned one could be swapped.
    for label, name in ((_H_ALG, "alg"), (_H_KID, "kid"), (_H_CRIT, "crit")):
        if label in unprotected:
            _malformed(f"COSE {name} must be in the protected header")
    if _H_CRIT in protected:
        # Section 3.1: crit is a non-empty array of labels the recipient must understand.
        crit = protected[_H_CRIT]
        if not isinstance(crit, list) or not crit:
            _malformed("COSE crit must be a non-empty array")
        # Type first: 1.0 == 1 in Python, and a list is unhashable.
        unknown = [c for c in crit if type(c) is not int or c not in _COSE_UNDERSTOOD]
        if unknown:
            raise UnsupportedHeader(f"COSE critical header {_excerpt(unknown[0])} not supported")
    if _H_ALG not in protected:
        _malformed("COSE protected header lacks alg")
    alg_id = protected[_H_ALG]
    # type() and not isinstance(): -7.0 == -7 and True == 1 must not pass for an algorithm.
    if type(alg_id) is not int or alg_id not in COSE_ALG_NAMES:
        raise AlgorithmNotAllowed(
            f"COSE alg {_excerpt(alg_id)} is not one of {sorted(COSE_ALG_NAMES)}"
        )
    kid = protected.get(_H_KID)
    if not isinstance(kid, bytes) or len(kid) != _KID_SIZE:
        _malformed("COSE protected header needs kid, a 32-byte thumbprint")
    if len(signature) != SIGNATURE_SIZE:
        _malformed(f"signature must be {SIGNATURE_SIZE} bytes, got {len(signature)}")

    reading = Reading.from_payload(_cbor_decode(payload_bytes, "COSE payload"), FORMAT_COSE)

    # The canonical form, last (module docstring), in this order (verify.js follows it).
    if raw[0] != _COSE_SIGN1_TAG:
        _non_canonical("COSE_Sign1 must carry tag 18")
    if unprotected:
        # Nothing in it is signed: anyone could add labels and make a new envelope.
        _non_canonical("COSE unprotected header must be an empty map")
    for data, what in ((body, "COSE_Sign1 message"), (protected_bytes, "COSE protected header"),
                       (payload_bytes, "COSE payload")):  # fmt: skip
        _check_deterministic(data, what)
    alg = COSE_ALG_NAMES[alg_id]
    _check_low_s(alg, signature)
    return Envelope(
        format=FORMAT_COSE,
        alg=alg,
        kid=kid,
        reading=reading,
        raw=raw,
        signed_bytes=_sig_structure(protected_bytes, payload_bytes),
        signature=signature,
    )


# --------------------------------------------------------------------------------------------
# JWS compact serialization (RFC 7515 sections 3.1, 5.2, 7.1)
# --------------------------------------------------------------------------------------------


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


def _parse_jws(raw: bytes) -> Envelope:
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
