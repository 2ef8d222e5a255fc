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

Layout: this module is the entry point (:func:`parse_envelope`, :func:`verify_envelope`,
:func:`sign_reading`) and re-exports the public names of its siblings, so callers import from
here. :mod:`anchor.envelope_model` holds the limits, the allow-list, the errors,
:class:`Reading` and :class:`Envelope`; :mod:`anchor.envelope_cose` and
:mod:`anchor.envelope_jws` hold the two codecs. None of them imports this module.

Speed without a second rulebook: each codec first tries ``_parse_canonical``, which recognises
the one layout a device's signer produces (outer structure and protected header compared byte
by byte, the payload checked in full) and returns None for anything else; everything it does not
accept, every rejection included, goes to the codec's ``_parse_general``, the rules above in
their order. tests/unit/test_envelope_fastpath.py holds the result against the parser from
before the shortcuts (tests/envelope_oracle): same acceptance, fields, reason and message.

Pure: bytes in, bytes out, no I/O, no logging. Every failure is an
:class:`~anchor.errors.EnvelopeError` with a stable ``reason`` (see ``docs/reason-codes.md``);
messages quote device-supplied text only as a short ``repr()`` excerpt.
"""

from __future__ import annotations

from anchor.envelope_cose import _CBOR_ARRAY_4, _COSE_SIGN1_TAG, parse_cose, sign_cose
from anchor.envelope_jws import parse_jws, sign_jws
from anchor.envelope_model import (
    ALG_KEY_TYPES,
    ALLOWED_ALGS,
    COSE_ALG_IDS,
    COSE_ALG_NAMES,
    FORMAT_COSE,
    FORMAT_JWS,
    FORMATS,
    MAX_CBOR_DEPTH,
    MAX_JSON_DEPTH,
    AlgorithmKeyMismatch,
    AlgorithmNotAllowed,
    Envelope,
    MalformedEnvelope,
    NonCanonicalEnvelope,
    OversizedEnvelope,
    Reading,
    UnknownKid,
    UnsupportedHeader,
    _check_format,
    _excerpt,
    _malformed,
)
from anchor.errors import EnvelopeError
from anchor.keys import ED25519, BadSignature, PrivateKey, PublicKey, b64url_encode

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
        return parse_cose(raw)
    return parse_jws(raw)


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
            # Hex, as everywhere a person reads a kid; base64url beside it, as headers carry it.
            f"envelope kid {envelope.kid.hex()} (base64url {b64url_encode(envelope.kid)}) is "
            f"not the key's kid {expected.hex()}"
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
    raw = sign_cose(reading, key, alg) if format == FORMAT_COSE else sign_jws(reading, key, alg)
    # Never hand out an envelope that a receiver would refuse (too large, too deep, ...).
    parse_envelope(raw)
    return raw
