"""Device and operator keys: Ed25519 and P-256, as JWKs, PEM and raw signatures.

CONSENSUS-CRITICAL. A device's ``kid`` is the RFC 7638 SHA-256 thumbprint computed here, and
every envelope names its signer by that value; signatures are checked here. Changing how a
thumbprint is computed, or which signature encodings verify, changes which receipts verify.

* Public keys travel as JWKs (RFC 7517): ``{"kty": "OKP", "crv": "Ed25519", "x": ..}``
  (RFC 8037 section 2) or ``{"kty": "EC", "crv": "P-256", "x": .., "y": ..}`` (RFC 7518
  section 6.2.1). Parsing is strict: exact members types, unpadded canonical base64url, exact
  lengths, points on the curve. A *public* JWK that carries the private ``d`` is refused, so a
  secret pasted into a registry by mistake is rejected instead of being stored and published.
* ``kid`` is the 32 raw bytes of the RFC 7638 thumbprint: required members only, in
  lexicographic order, no whitespace, SHA-256.
* Signatures are raw: 64 bytes for Ed25519 (RFC 8032), and for ES256 the 64-byte ``r || s``
  of RFC 7518 section 3.4 / RFC 9053 section 2.1, never DER. ES256 signatures made here are
  low-S (``s <= n/2``, :data:`P256_ORDER` ``n``): ``(r, n - s)`` verifies as well, and the
  envelope wire format accepts only the low one, so that nobody but the signer can produce a
  second accepted spelling of a signed reading (DESIGN.md "Envelope wire format").

Pure: bytes in, bytes out, no I/O, no logging. Every failure is a
:class:`~anchor.errors.KeyMaterialError` (``key_invalid``) or :class:`BadSignature`
(``bad_signature``); errors from ``cryptography`` are translated here, at the edge.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from anchor.errors import EnvelopeError, KeyMaterialError, Reason

__all__ = [
    "ED25519",
    "KEY_TYPES",
    "P256",
    "P256_ORDER",
    "SIGNATURE_SIZE",
    "BadSignature",
    "KeyMaterialError",
    "PrivateKey",
    "PublicKey",
    "b64url_decode",
    "b64url_encode",
    "jwk_thumbprint",
]

ED25519 = "Ed25519"
P256 = "P-256"
KEY_TYPES = (ED25519, P256)
"""The key types a device or operator may hold."""

SIGNATURE_SIZE = 64
"""Both Ed25519 and ES256 (``r || s``) signatures are exactly 64 bytes."""

P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
"""``n``, the order of the P-256 base point (SEC 2 section 2.4.2; FIPS 186-5 D.1.2.3)."""

# Coordinate / scalar size of both curves, in bytes.
_FIELD_SIZE = 32
# SEC1 uncompressed point: 0x04 || X || Y.
_UNCOMPRESSED_TAG = b"\x04"
_P256_POINT_SIZE = 1 + 2 * _FIELD_SIZE

# RFC 7638 section 3.2: the members that go into a thumbprint, per key type. RSA appears only
# so the RFC's own section 3.1 example can be checked; RSA keys are not accepted anywhere else.
_THUMBPRINT_MEMBERS: dict[str, tuple[str, ...]] = {
    "OKP": ("crv", "kty", "x"),
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
}

_B64URL_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


class BadSignature(EnvelopeError):
    """A signature does not verify under the key it claims (reason ``bad_signature``).

    Defined here rather than in :mod:`anchor.envelope` so that this module never imports the
    envelope code; :mod:`anchor.envelope` re-exports it.
    """

    reason = Reason.BAD_SIGNATURE


def b64url_encode(data: bytes) -> str:
    """Unpadded base64url (RFC 7515 section 2 / Appendix C)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str | bytes) -> bytes:
    """Strict unpadded base64url: raises ``ValueError`` on padding, any character outside the
    base64url alphabet, an impossible length, or non-zero unused trailing bits.

    The last rule makes the encoding canonical: without it ``"QQ"`` and ``"QR"`` would both
    decode to ``b"A"``, and one signed value would have several accepted spellings.
    """
    raw = text.encode("ascii") if isinstance(text, str) else bytes(text)
    if not _B64URL_ALPHABET.issuperset(raw):
        raise ValueError("not unpadded base64url (character outside the alphabet)")
    if len(raw) % 4 == 1:
        raise ValueError("not base64url (impossible length)")
    try:
        data = base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - excluded by the checks above
        raise ValueError("not base64url") from exc
    if b64url_encode(data).encode("ascii") != raw:
        raise ValueError("not canonical base64url (non-zero trailing bits)")
    return data


def jwk_thumbprint(jwk: Mapping[str, Any]) -> bytes:
    """The RFC 7638 SHA-256 thumbprint of ``jwk``, as 32 raw bytes.

    Section 3.2: only the required members of the key type, in lexicographic order, as compact
    JSON with no whitespace; section 3.3: member values are used as the strings they are.
    Supports ``OKP`` and ``EC`` (and ``RSA``, for the RFC's example). Raises
    ``KeyMaterialError`` on an unknown ``kty`` or a missing or non-string member.
    """
    kty = jwk.get("kty")
    if not isinstance(kty, str) or kty not in _THUMBPRINT_MEMBERS:
        raise KeyMaterialError(f"JWK kty {_excerpt(kty)} is not one of OKP, EC, RSA")
    members = {}
    for name in _THUMBPRINT_MEMBERS[kty]:
        value = jwk.get(name)
        if not isinstance(value, str):
            raise KeyMaterialError(f"JWK member {name!r} is missing or not a string")
        members[name] = value
    # sort_keys gives the lexicographic order of section 3.3 (the names are all ASCII).
    text = json.dumps(members, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).digest()


def _excerpt(value: object, limit: int = 32) -> str:
    # Key material is untrusted input: never echo more than a short, escaped excerpt of it.
    # ascii() is repr() with every non-ASCII character escaped too (no bidi or homoglyph tricks).
    text = ascii(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _member(jwk: Mapping[str, Any], name: str, size: int) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str):
        raise KeyMaterialError(f"JWK member {name!r} is missing or not a string")
    try:
        data = b64url_decode(value)
    except ValueError as exc:
        raise KeyMaterialError(f"JWK member {name!r}: {exc}") from exc
    if len(data) != size:
        raise KeyMaterialError(f"JWK member {name!r} must be {size} bytes, got {len(data)}")
    return data


def _jwk_type(jwk: Mapping[str, Any]) -> str:
    if not isinstance(jwk, Mapping):
        raise KeyMaterialError(f"a JWK must be a JSON object, got {type(jwk).__name__}")
    kty, crv = jwk.get("kty"), jwk.get("crv")
    if kty == "OKP" and crv == "Ed25519":
        return ED25519
    if kty == "EC" and crv == "P-256":
        return P256
    raise KeyMaterialError(
        f"unsupported JWK kty/crv {_excerpt(kty)}/{_excerpt(crv)}; expected OKP/Ed25519 or EC/P-256"
    )


def _check_key_type(key_type: object) -> None:
    if key_type not in KEY_TYPES:
        raise KeyMaterialError(f"key type {_excerpt(key_type)} is not one of {KEY_TYPES}")


_PublicObject = Ed25519PublicKey | ec.EllipticCurvePublicKey
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())  # immutable; built once, not per signature
_PrivateObject = Ed25519PrivateKey | ec.EllipticCurvePrivateKey


def _load_public(key_type: str, raw: bytes) -> _PublicObject:
    try:
        if key_type == ED25519:
            if len(raw) != _FIELD_SIZE:
                raise KeyMaterialError(f"an Ed25519 public key is 32 bytes, got {len(raw)}")
            return Ed25519PublicKey.from_public_bytes(raw)
        # Only the uncompressed form is a valid ``raw``: one spelling per key keeps ``==`` and
        # the stored registry column meaningful.
        if len(raw) != _P256_POINT_SIZE or raw[:1] != _UNCOMPRESSED_TAG:
            raise KeyMaterialError("a P-256 public key is a 65-byte uncompressed SEC1 point")
        # from_encoded_point rejects points that are not on the curve.
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    except ValueError as exc:
        raise KeyMaterialError(f"invalid {key_type} public key: {exc}") from exc


def _raw_public(obj: _PublicObject) -> tuple[str, bytes]:
    if isinstance(obj, Ed25519PublicKey):
        return ED25519, obj.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if isinstance(obj, ec.EllipticCurvePublicKey) and isinstance(obj.curve, ec.SECP256R1):
        return P256, obj.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    raise KeyMaterialError(f"unsupported key {type(obj).__name__}; expected Ed25519 or P-256")


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A verifying key: ``key_type`` is ``"Ed25519"`` or ``"P-256"``.

    ``raw`` is the 32-byte Ed25519 key (RFC 8032 section 5.1.5) or the 65-byte uncompressed
    SEC1 point of a P-256 key. The constructor validates both; raises ``KeyMaterialError``.
    """

    key_type: str
    raw: bytes
    _key: _PublicObject = field(init=False, repr=False, compare=False, hash=False)
    _kid: bytes = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        _check_key_type(self.key_type)
        if not isinstance(self.raw, bytes):
            raise KeyMaterialError(f"raw key must be bytes, got {type(self.raw).__name__}")
        object.__setattr__(self, "_key", _load_public(self.key_type, self.raw))
        # Once, not per envelope: verify_envelope compares it with every envelope's kid.
        object.__setattr__(self, "_kid", jwk_thumbprint(self.to_jwk()))

    @property
    def kid(self) -> bytes:
        """32 raw bytes: the RFC 7638 SHA-256 thumbprint of :meth:`to_jwk`."""
        return self._kid

    def to_jwk(self) -> dict[str, str]:
        """The public JWK (RFC 8037 section 2 / RFC 7518 section 6.2.1), required members only."""
        if self.key_type == ED25519:
            return {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(self.raw)}
        x, y = self.raw[1 : 1 + _FIELD_SIZE], self.raw[1 + _FIELD_SIZE :]
        return {"kty": "EC", "crv": "P-256", "x": b64url_encode(x), "y": b64url_encode(y)}

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any]) -> PublicKey:
        """Parse a public JWK strictly; members such as ``kid``, ``alg`` or ``use`` are ignored.

        Raises ``KeyMaterialError`` on any other kty/crv, a malformed member, a point off the
        curve, or a JWK holding the private member ``d``.
        """
        key_type = _jwk_type(jwk)
        if "d" in jwk:
            raise KeyMaterialError(
                "this JWK holds a private key (member 'd'); publish only the public JWK"
            )
        x = _member(jwk, "x", _FIELD_SIZE)
        if key_type == ED25519:
            return cls(ED25519, x)
        return cls(P256, _UNCOMPRESSED_TAG + x + _member(jwk, "y", _FIELD_SIZE))

    @classmethod
    def from_pem(cls, pem: bytes) -> PublicKey:
        """Load a PEM SubjectPublicKeyInfo (RFC 5280 / RFC 8410); raises ``KeyMaterialError``."""
        try:
            obj = serialization.load_pem_public_key(pem)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise KeyMaterialError(f"not a PEM public key: {exc}") from exc
        if not isinstance(obj, Ed25519PublicKey | ec.EllipticCurvePublicKey):
            raise KeyMaterialError(f"unsupported key {type(obj).__name__}")
        return cls(*_raw_public(obj))

    def to_pem(self) -> bytes:
        """PEM SubjectPublicKeyInfo."""
        return self._key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def verify(self, signature: bytes, message: bytes) -> None:
        """Check a raw signature over ``message``: Ed25519 (RFC 8032) or ES256 ``r || s``.

        Returns None; raises :class:`BadSignature` when the signature is not exactly 64 bytes
        or does not verify.
        """
        if not isinstance(signature, bytes) or len(signature) != SIGNATURE_SIZE:
            size = len(signature) if isinstance(signature, bytes) else type(signature).__name__
            raise BadSignature(f"{self.key_type} signature must be 64 bytes, got {size}")
        try:
            # key_type, not isinstance(): _key was loaded for key_type (__post_init__), and an
            # isinstance() against cryptography's abstract classes costs about as much as the
            # rest of this method around the signature check.
            if self.key_type == ED25519:
                cast(Ed25519PublicKey, self._key).verify(signature, message)
            else:
                # RFC 7518 section 3.4: r and s as 32-byte big-endian integers, concatenated.
                r = int.from_bytes(signature[:_FIELD_SIZE], "big")
                s = int.from_bytes(signature[_FIELD_SIZE:], "big")
                der = encode_dss_signature(r, s)
                cast(ec.EllipticCurvePublicKey, self._key).verify(der, message, _ECDSA_SHA256)
        except InvalidSignature as exc:
            raise BadSignature(f"{self.key_type} signature does not verify") from exc


@dataclass(frozen=True, slots=True, eq=False)
class PrivateKey:
    """A signing key. Build it with :meth:`generate`, :meth:`from_pem` or :meth:`from_jwk`.

    The secret never appears in ``repr``; equality compares secrets in constant time.
    """

    key_type: str
    _key: _PrivateObject = field(repr=False)

    def __post_init__(self) -> None:
        _check_key_type(self.key_type)
        ok = (self.key_type == ED25519 and isinstance(self._key, Ed25519PrivateKey)) or (
            self.key_type == P256
            and isinstance(self._key, ec.EllipticCurvePrivateKey)
            and isinstance(self._key.curve, ec.SECP256R1)
        )
        if not ok:
            raise KeyMaterialError(f"key object does not hold a {self.key_type} private key")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PrivateKey):
            return NotImplemented
        return self.key_type == other.key_type and hmac.compare_digest(
            self._secret(), other._secret()
        )

    def __hash__(self) -> int:
        return hash((self.key_type, self.public_key.raw))

    @classmethod
    def generate(cls, key_type: str = ED25519) -> PrivateKey:
        """A fresh random key of ``key_type``; raises ``KeyMaterialError`` on an unknown type."""
        _check_key_type(key_type)
        if key_type == ED25519:
            return cls(ED25519, Ed25519PrivateKey.generate())
        return cls(P256, ec.generate_private_key(ec.SECP256R1()))

    @property
    def public_key(self) -> PublicKey:
        """The matching :class:`PublicKey`."""
        return PublicKey(*_raw_public(self._key.public_key()))

    def sign(self, message: bytes) -> bytes:
        """A raw 64-byte signature: Ed25519, or ES256 as ``r || s`` (RFC 7518 section 3.4)
        with ``s`` normalised to the low half (``s <= n/2``)."""
        if isinstance(self._key, Ed25519PrivateKey):
            return self._key.sign(message)
        der = self._key.sign(message, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        # (r, s) and (r, n - s) both verify; the wire format accepts only the low one.
        # Ed25519 needs no such step: RFC 8032 section 5.1.7 already requires S < L.
        if s > P256_ORDER // 2:
            s = P256_ORDER - s
        return r.to_bytes(_FIELD_SIZE, "big") + s.to_bytes(_FIELD_SIZE, "big")

    def to_pem(self) -> bytes:
        """Unencrypted PKCS#8 PEM. Whoever holds these bytes can sign as this key."""
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @classmethod
    def from_pem(cls, pem: bytes) -> PrivateKey:
        """Load an unencrypted PEM private key (PKCS#8, or SEC1 for P-256).

        Raises ``KeyMaterialError`` on anything else, an encrypted key included.
        """
        try:
            obj = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            # TypeError is how cryptography reports an encrypted key given no password.
            raise KeyMaterialError(f"not an unencrypted PEM private key: {exc}") from exc
        if isinstance(obj, Ed25519PrivateKey):
            return cls(ED25519, obj)
        if isinstance(obj, ec.EllipticCurvePrivateKey) and isinstance(obj.curve, ec.SECP256R1):
            return cls(P256, obj)
        raise KeyMaterialError(f"unsupported private key {type(obj).__name__}")

    def to_jwk(self) -> dict[str, str]:
        """The private JWK: the public members plus ``d`` (RFC 8037 section 2 / RFC 7518 6.2.2)."""
        return {**self.public_key.to_jwk(), "d": b64url_encode(self._secret())}

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any]) -> PrivateKey:
        """Parse a private JWK strictly; its public members must match ``d``.

        Raises ``KeyMaterialError`` when ``d`` is missing or malformed, or when ``x``/``y``
        belong to another key (a JWK whose halves disagree would sign under one kid and be
        registered under another).
        """
        key_type = _jwk_type(jwk)
        d = _member(jwk, "d", _FIELD_SIZE)
        try:
            if key_type == ED25519:
                key = cls(ED25519, Ed25519PrivateKey.from_private_bytes(d))
            else:
                scalar = int.from_bytes(d, "big")
                key = cls(P256, ec.derive_private_key(scalar, ec.SECP256R1()))
        except ValueError as exc:
            raise KeyMaterialError(f"invalid {key_type} private scalar: {exc}") from exc
        public = {k: v for k, v in jwk.items() if k != "d"}
        if PublicKey.from_jwk(public) != key.public_key:
            raise KeyMaterialError("JWK public members do not match its private member 'd'")
        return key

    def _secret(self) -> bytes:
        if isinstance(self._key, Ed25519PrivateKey):
            return self._key.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
        return self._key.private_numbers().private_value.to_bytes(_FIELD_SIZE, "big")
