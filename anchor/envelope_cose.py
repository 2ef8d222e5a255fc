"""COSE_Sign1 envelopes (RFC 9052 sections 3, 4.2, 4.4): strict parsing and signing.

CONSENSUS-CRITICAL (see :mod:`anchor.envelope`, which dispatches here and whose module docstring
states the parse order and the canonical form). Parsing decodes with a strict, bounded CBOR
decoder (no tags but the leading 18, definite lengths, no duplicate keys, depth at most
:data:`~anchor.envelope_model.MAX_CBOR_DEPTH`, no trailing bytes) and checks RFC 8949 section
4.2.1 deterministic encoding last. The bytes are never re-encoded: the ``Sig_structure`` is built
from the received protected-header and payload byte strings.

Pure: bytes in, bytes out, no I/O, no logging.
"""

from __future__ import annotations

import io
import math
import struct
from typing import Any, NoReturn

import cbor2

from anchor.envelope_model import (
    _KID_SIZE,
    COSE_ALG_IDS,
    COSE_ALG_NAMES,
    FORMAT_COSE,
    MAX_CBOR_DEPTH,
    AlgorithmNotAllowed,
    Envelope,
    MalformedEnvelope,
    Reading,
    UnsupportedHeader,
    _check_low_s,
    _excerpt,
    _malformed,
    _non_canonical,
)
from anchor.errors import EnvelopeError
from anchor.keys import SIGNATURE_SIZE, PrivateKey

__all__ = ["parse_cose", "sign_cose"]

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


def _float_end(data: bytes, pos: int, info: int) -> int:
    # Major type 7 after its initial byte (section 3.3): simple values and floats. Section
    # 4.2.1 asks for the preferred serialization: a float in the shortest of half, single,
    # double that keeps its value.
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


# Initial bytes of the items that are complete in one byte and always shortest: integers
# 0..23 and -1..-24 (majors 0, 1), and simple values 0..23 (false, true, null, ...).
_ONE_BYTE_ITEM = tuple((b < 0x38 and (b & 0x1F) < 24) or 0xE0 <= b < 0xF8 for b in range(256))
# Byte and text strings shorter than 24 bytes (majors 2, 3 with the length in the initial byte).
_SHORT_STRING = tuple(0x40 <= b < 0x58 or 0x60 <= b < 0x78 for b in range(256))


def _deterministic_item(data: bytes, pos: int) -> int:
    """Check the CBOR item at ``pos`` against RFC 8949 section 4.2.1; return where it ends.

    Precondition: ``data`` was decoded by :func:`_cbor_decode` (well-formed, definite lengths,
    depth <= :data:`MAX_CBOR_DEPTH`, so the recursion is shallow). Raises ``_NotDeterministic``.
    The elements of arrays and maps that are a one-byte item, a short string or a half float
    (nearly all of a reading) are stepped over inline, without a call: the same rules, fewer
    Python frames (tests/unit/test_envelope_fastpath.py checks it against the plain walk).
    """
    initial = data[pos]
    major, info = initial >> 5, initial & 0x1F
    pos += 1
    if major == 7:
        return _float_end(data, pos, info)
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
    if major < 2:
        return pos  # the argument is the value
    if major < 4:
        return pos + argument
    if major == 6:
        return _deterministic_item(data, pos)
    one_byte, short_string = _ONE_BYTE_ITEM, _SHORT_STRING
    if major == 4:
        for _ in range(argument):
            b = data[pos]
            if one_byte[b]:
                pos += 1
            elif short_string[b]:
                pos += 1 + (b & 0x1F)
            elif b == 0xF9:
                pos += 3
            else:
                pos = _deterministic_item(data, pos)
        return pos
    # Major 5: keys sorted by the bytewise lexicographic order of their deterministic encodings.
    previous = b""
    for i in range(argument):
        start = pos
        b = data[pos]
        if short_string[b]:
            pos += 1 + (b & 0x1F)
        elif one_byte[b]:
            pos += 1
        else:
            pos = _deterministic_item(data, pos)
        key = data[start:pos]
        if i and key <= previous:
            raise _NotDeterministic("map keys not in bytewise order of their encodings")
        previous = key
        b = data[pos]
        if one_byte[b]:
            pos += 1
        elif short_string[b]:
            pos += 1 + (b & 0x1F)
        elif b == 0xF9:
            pos += 3
        else:
            pos = _deterministic_item(data, pos)
    return pos


def _check_deterministic(data: bytes, what: str) -> None:
    """Raise ``NonCanonicalEnvelope`` unless ``data`` (strictly decoded already) is in RFC 8949
    section 4.2.1 core deterministic encoding."""
    try:
        _deterministic_item(data, 0)
    except _NotDeterministic as exc:
        _non_canonical(f"{what} is not deterministically encoded CBOR: {exc}")


def _sig_structure(protected: bytes, payload: bytes) -> bytes:
    # RFC 9052 section 4.4: Sig_structure = ["Signature1", body_protected, external_aad,
    # payload], external_aad empty. The protected header goes in exactly as received.
    return cbor2.dumps(["Signature1", protected, b"", payload], canonical=True)


# The one spelling a device's signer produces (sign_cose), byte by byte up to the payload:
# tag 18, an array of 4, the protected header as a 38-byte bstr holding the map {1: alg, 4: kid}
# (keys in order, alg a one-byte negative integer, kid a 32-byte bstr), and the empty map.
_CANONICAL_ALG_BYTES = {0x20 + (-1 - alg_id): name for alg_id, name in COSE_ALG_NAMES.items()}
_PROTECTED_PREFIX = bytes([0xA2, _H_ALG])  # map of 2, label 1, then the alg byte
_KID_HEAD = bytes([_H_KID, 0x58, _KID_SIZE])  # label 4, bstr of 32
_SIGNATURE_HEAD = bytes([0x58, SIGNATURE_SIZE])
_SIG_STRUCTURE_HEAD = cbor2.dumps("Signature1")  # after the array head 0x84
_EMPTY_BSTR = b"\x40"


def _parse_canonical(raw: bytes) -> Envelope | None:
    """The envelope of ``raw`` if it is laid out exactly as the signer lays it out, else None.

    Consensus-critical shortcut, never a second set of rules: what it accepts,
    :func:`_parse_general` accepts with the same result (tests/unit/test_envelope_fastpath.py
    checks this on random and mutated envelopes), and everything else, every rejection
    included, goes to :func:`_parse_general`, so reasons and messages come from one place.
    The outer message and the protected header are checked byte by byte against the single
    spelling the wire format allows for them, which is every structural, header and
    deterministic-form rule of theirs at once; the payload gets the same strict decode,
    Reading checks, deterministic-form walk and low-S check as in the general parse.
    """
    # 0: tag 18, 1: array of 4, 2-3: bstr of 38, 4-41: {1: alg, 4: kid}, 42: {}, 43: payload.
    if len(raw) < 112 or raw[0:4] != b"\xd2\x84\x58\x26" or raw[42] != 0xA0:
        return None
    alg = _CANONICAL_ALG_BYTES.get(raw[6])
    if alg is None or raw[4:6] != _PROTECTED_PREFIX or raw[7:10] != _KID_HEAD:
        return None
    # The payload bstr head, in its shortest form (section 4.2.1); an envelope is at most 16 KiB.
    head = raw[43]
    if 0x40 <= head < 0x58:
        start, size = 44, head - 0x40
    elif head == 0x58 and raw[44] >= 24:
        start, size = 45, raw[44]
    elif head == 0x59 and raw[44] != 0:
        start, size = 46, int.from_bytes(raw[44:46], "big")
    else:
        return None
    end = start + size
    if len(raw) != end + 2 + SIGNATURE_SIZE or raw[end : end + 2] != _SIGNATURE_HEAD:
        return None
    payload_bytes = raw[start:end]
    signature = raw[end + 2 :]
    try:
        reading = Reading.from_payload(_cbor_decode(payload_bytes, "COSE payload"), FORMAT_COSE)
        _check_deterministic(payload_bytes, "COSE payload")
        _check_low_s(alg, signature)
    except EnvelopeError:
        return None  # _parse_general says why, in its own order
    return Envelope(
        format=FORMAT_COSE,
        alg=alg,
        kid=raw[10:42],
        reading=reading,
        raw=raw,
        # RFC 9052 section 4.4, as _sig_structure builds it: the received protected-header
        # and payload byte strings, heads included (both in their shortest form, checked above).
        signed_bytes=b"".join((b"\x84", _SIG_STRUCTURE_HEAD, raw[2:42], _EMPTY_BSTR, raw[43:end])),
        signature=signature,
    )


def parse_cose(raw: bytes) -> Envelope:
    """Parse a COSE_Sign1 envelope (size already bounded by the caller); raises the parse errors
    of :func:`anchor.envelope.parse_envelope`.

    An envelope spelt exactly as devices spell it takes a shortcut (:func:`_parse_canonical`)
    with the same result; every other input, and every rejection, is :func:`_parse_general`'s.
    """
    envelope = _parse_canonical(raw)
    return envelope if envelope is not None else _parse_general(raw)


def _parse_general(raw: bytes) -> Envelope:
    """Parse any COSE_Sign1 envelope under every rule, in the documented order."""
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


def sign_cose(reading: Reading, key: PrivateKey, alg: str) -> bytes:
    """The COSE_Sign1 envelope of ``reading`` signed by ``key`` with the allow-listed ``alg``
    (which the caller has matched to the key type): tag 18, an empty unprotected header and
    deterministic CBOR (cbor2 ``canonical`` sorts map keys length first, which is the bytewise
    order for the text keys a reading has and for ``{1, 4}``)."""
    protected = cbor2.dumps({_H_ALG: COSE_ALG_IDS[alg], _H_KID: key.public_key.kid}, canonical=True)
    payload = cbor2.dumps(reading.to_payload(FORMAT_COSE), canonical=True)
    signature = key.sign(_sig_structure(protected, payload))
    return cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, signature]), canonical=True)
