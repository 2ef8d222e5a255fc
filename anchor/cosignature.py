"""C2SP tlog-cosignature v1 (Ed25519): witness keys, cosigning a checkpoint, checking cosignatures.

CONSENSUS-CRITICAL. A witness's cosignature is what lets a city app believe that the checkpoint
in its receipt is the one everybody else was shown; a verifier that reads these bytes
differently from the witness that wrote them accepts a split view or refuses honest receipts.

Specification: c2sp.org/tlog-cosignature (https://github.com/C2SP/C2SP/blob/main/
tlog-cosignature.md), the Ed25519 type:

* a cosignature is a signed-note signature line ``"\u2014 " name " " base64(key ID || ts || sig)``
  where ``ts`` is a big-endian uint64 POSIX timestamp (seconds, non-zero, below 2**63) and
  ``sig`` the 64-byte Ed25519 signature;
* the key ID is ``SHA-256(name || 0x0A || 0x04 || public key)[:4]`` (0x04 where a note key has
  0x01, so a cosignature can never be mistaken for a log signature, nor the other way round);
* the signed message is ``"cosignature/v1\\n" "time " decimal(ts) "\\n"`` followed by the whole
  note text of the checkpoint (with its final newline, without any signature line);
* the verifier key is a signed-note vkey of type 0x04: ``name+hex(key ID)+base64(0x04 || key)``.
  Our signer key string is the same with ``PRIVATE+KEY+`` in front and the seed in place of the
  public key, as Go's ``note`` signer keys are (transparency-dev/formats reads a 0x01 skey and
  signs cosignatures with it; ours says 0x04 so a witness key can never sign a checkpoint).

The spec also defines an ML-DSA-44 type and says new deployments SHOULD use it; the design fixes
Ed25519 (the ``cryptography`` release we depend on has no ML-DSA), so only 0x04 is implemented
and lines of other types are ignored like any line from an unknown key.

Errors: :class:`~anchor.errors.CheckpointError` with ``witness_cosignature_invalid`` (a line
from a trusted witness that does not verify, or carries a zero or out-of-range timestamp) or
``checkpoint_malformed``; key strings raise :class:`~anchor.errors.KeyMaterialError`.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from anchor.checkpoint import (
    _SIG_PREFIX,
    _SKEY_PREFIX,
    MAX_SIGNATURES,
    NoteSignature,
    _b64decode_canonical,
    _check_key_fields,
    _check_name_and_key,
    _check_text,
    _key_id,
    _name_problem,
    _public_key_of_seed,
    _split_key,
    parse_note_unverified,
)
from anchor.errors import CheckpointError, KeyMaterialError, Reason

__all__ = [
    "ALG_COSIGNATURE_V1",
    "MAX_TIMESTAMP",
    "Cosignature",
    "CosignerSigner",
    "CosignerVerifier",
    "add_cosignatures",
    "cosignature_message",
    "generate_cosigner_key",
    "verified_cosignatures",
]

ALG_COSIGNATURE_V1 = 0x04
"""Key ID algorithm byte of Ed25519 cosignature/v1 keys (tlog-cosignature, "Format")."""

MAX_TIMESTAMP = (1 << 63) - 1
"""tlog-cosignature: the timestamp MUST NOT exceed 2**63 - 1."""

_HEADER = "cosignature/v1\n"
_KEY_ID_SIZE = 4
_TIMESTAMP_SIZE = 8
_SIGNATURE_SIZE = 64


def cosignature_message(text: str, timestamp: int) -> bytes:
    """The bytes a witness signs: header line, time line, then the checkpoint's note text."""
    _check_timestamp(timestamp)
    if not isinstance(text, str) or not text.endswith("\n"):
        raise CheckpointError(
            "note text must be a string ending with a newline", reason=Reason.CHECKPOINT_MALFORMED
        )
    return f"{_HEADER}time {timestamp}\n".encode("ascii") + _check_text(text, "note text")


def _check_timestamp(timestamp: int) -> None:
    if (
        not isinstance(timestamp, int)
        or isinstance(timestamp, bool)
        or not 0 < timestamp <= MAX_TIMESTAMP
    ):
        raise CheckpointError(
            f"cosignature timestamp must be an integer in [1, 2**63), got {timestamp!r}",
            reason=Reason.WITNESS_COSIGNATURE_INVALID,
        )


@dataclass(frozen=True, slots=True)
class CosignerVerifier:
    """A witness's public key (cosignature/v1, Ed25519): name, 4-byte key ID, 32-byte key."""

    name: str
    key_hash: bytes
    public_key: bytes

    def __post_init__(self) -> None:
        _check_key_fields(
            self.name, self.key_hash, self.public_key, ALG_COSIGNATURE_V1, role="witness "
        )

    @classmethod
    def from_public_key(cls, name: str, public_key: bytes) -> CosignerVerifier:
        _check_name_and_key(name, public_key)
        return cls(name, _key_id(name, public_key, ALG_COSIGNATURE_V1), public_key)

    @classmethod
    def from_vkey(cls, vkey: str) -> CosignerVerifier:
        """Parse ``name+hex(key ID)+base64(0x04 || public key)``."""
        if not isinstance(vkey, str):
            raise KeyMaterialError("witness verifier key must be a string")
        name, key_hash, public_key = _split_key(
            vkey.strip(), "witness verifier key", ALG_COSIGNATURE_V1
        )
        return cls(name, key_hash, public_key)

    def vkey(self) -> str:
        encoded = base64.b64encode(bytes([ALG_COSIGNATURE_V1]) + self.public_key).decode("ascii")
        return f"{self.name}+{self.key_hash.hex()}+{encoded}"

    @property
    def key_label(self) -> str:
        """``name+hexid``: how reports and logs name this witness."""
        return f"{self.name}+{self.key_hash.hex()}"

    def verify(self, text: str, timestamp: int, signature: bytes) -> None:
        """Check one cosignature over note ``text``; raises ``CheckpointError``."""
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(
                signature, cosignature_message(text, timestamp)
            )
        except InvalidSignature as exc:
            raise CheckpointError(
                f"cosignature by witness {self.key_label} does not verify",
                reason=Reason.WITNESS_COSIGNATURE_INVALID,
            ) from exc


@dataclass(frozen=True, slots=True)
class CosignerSigner:
    """A witness's signing key. The seed never appears in ``repr`` and is not compared."""

    name: str
    key_hash: bytes
    public_key: bytes
    seed: bytes = field(repr=False, compare=False)
    _private: Ed25519PrivateKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if _public_key_of_seed(self.seed) != self.public_key:
            raise KeyMaterialError(f"public key of {self.name!r} does not belong to its seed")
        CosignerVerifier(self.name, self.key_hash, self.public_key)
        object.__setattr__(self, "_private", Ed25519PrivateKey.from_private_bytes(self.seed))

    @classmethod
    def from_seed(cls, name: str, seed: bytes) -> CosignerSigner:
        public_key = _public_key_of_seed(seed)
        verifier = CosignerVerifier.from_public_key(name, public_key)
        return cls(name, verifier.key_hash, public_key, seed)

    @classmethod
    def from_skey(cls, skey: str) -> CosignerSigner:
        """Parse ``PRIVATE+KEY+name+hex(key ID)+base64(0x04 || seed)``."""
        if not isinstance(skey, str) or not skey.strip().startswith(_SKEY_PREFIX):
            raise KeyMaterialError("witness signer key must start with 'PRIVATE+KEY+'")
        name, key_hash, seed = _split_key(
            skey.strip()[len(_SKEY_PREFIX) :], "witness signer key", ALG_COSIGNATURE_V1
        )
        return cls(name, key_hash, _public_key_of_seed(seed), seed)

    def skey(self) -> str:
        encoded = base64.b64encode(bytes([ALG_COSIGNATURE_V1]) + self.seed).decode("ascii")
        return f"{_SKEY_PREFIX}{self.name}+{self.key_hash.hex()}+{encoded}"

    @property
    def verifier(self) -> CosignerVerifier:
        return CosignerVerifier(self.name, self.key_hash, self.public_key)

    def cosign(self, text: str, timestamp: int) -> str:
        """The cosignature line (with its newline) over note ``text`` at ``timestamp``."""
        signature = self._private.sign(cosignature_message(text, timestamp))
        payload = self.key_hash + timestamp.to_bytes(_TIMESTAMP_SIZE, "big") + signature
        return f"{_SIG_PREFIX}{self.name} {base64.b64encode(payload).decode('ascii')}\n"


def generate_cosigner_key(name: str) -> CosignerSigner:
    """A fresh random witness key named ``name``; raises ``KeyMaterialError`` on a bad name."""
    problem = _name_problem(name)
    if problem:
        raise KeyMaterialError(problem)
    return CosignerSigner.from_seed(name, Ed25519PrivateKey.generate().private_bytes_raw())


@dataclass(frozen=True, slots=True)
class Cosignature:
    """A verified cosignature: which witness, and the time it vouched for the checkpoint."""

    witness: CosignerVerifier
    timestamp: int

    def to_dict(self) -> dict[str, object]:
        return {
            "witness": self.witness.name,
            "key_id": self.witness.key_hash.hex(),
            "timestamp": self.timestamp,
        }


def _split_cosignature(sig: NoteSignature, label: str) -> tuple[int, bytes]:
    if len(sig.signature) != _TIMESTAMP_SIZE + _SIGNATURE_SIZE:
        raise CheckpointError(
            f"cosignature by witness {label} is {_KEY_ID_SIZE + len(sig.signature)} bytes, a "
            f"cosignature/v1 line holds {_KEY_ID_SIZE + _TIMESTAMP_SIZE + _SIGNATURE_SIZE}",
            reason=Reason.WITNESS_COSIGNATURE_INVALID,
        )
    timestamp = int.from_bytes(sig.signature[:_TIMESTAMP_SIZE], "big")
    _check_timestamp(timestamp)
    return timestamp, sig.signature[_TIMESTAMP_SIZE:]


def verified_cosignatures(
    note: str | bytes, witnesses: Sequence[CosignerVerifier]
) -> tuple[Cosignature, ...]:
    """The cosignatures on ``note`` by the trusted ``witnesses``, each verified, one per witness.

    Lines that match no trusted (name, key ID) are ignored (tlog-witness: the client MUST
    ignore cosignatures from unknown keys); a line that matches one and does not verify raises
    ``CheckpointError`` (``witness_cosignature_invalid``): a trusted key's bad signature makes
    the note suspect, as signed-note says for note signatures. The note's own text is *not*
    authenticated here; the caller opens it with the log key first. Order: as in the note.
    """
    known: dict[tuple[str, bytes], CosignerVerifier] = {}
    for w in witnesses:
        if not isinstance(w, CosignerVerifier):
            raise KeyMaterialError(f"expected CosignerVerifier, got {type(w).__name__}")
        other = known.setdefault((w.name, w.key_hash), w)
        if other.public_key != w.public_key:
            raise KeyMaterialError(f"two witness keys share name and key ID {w.vkey()}")
    parsed = parse_note_unverified(note)
    found: dict[tuple[str, bytes], Cosignature] = {}
    for sig in parsed.signatures:
        witness = known.get((sig.name, sig.key_hash))
        if witness is None:
            continue
        timestamp, signature = _split_cosignature(sig, witness.key_label)
        witness.verify(parsed.text, timestamp, signature)
        current = found.get((sig.name, sig.key_hash))
        if current is None or timestamp > current.timestamp:
            found[(sig.name, sig.key_hash)] = Cosignature(witness, timestamp)
    return tuple(found.values())


def add_cosignatures(note: str, lines: Iterable[str]) -> str:
    """``note`` with the signature ``lines`` appended, each once, in order, keeping the note valid.

    Lines already present (byte for byte) are not repeated. Every line must be a well-formed
    signature line; raises ``CheckpointError`` (``checkpoint_malformed``) otherwise, or when the
    result would exceed the note limits. Signatures are not verified here.
    """
    parsed = parse_note_unverified(note)
    present = set(note[len(parsed.text) + 1 :].splitlines(keepends=True))
    extra: list[str] = []
    for given in lines:
        line = given if given.endswith("\n") else given + "\n"
        if line in present:
            continue
        probe = parse_note_unverified(parsed.text + "\n" + line)
        if len(probe.signatures) != 1:
            raise CheckpointError(
                "a cosignature must be exactly one signature line",
                reason=Reason.CHECKPOINT_MALFORMED,
            )
        if _b64decode_canonical(line.rstrip("\n").rpartition(" ")[2]) is None:
            raise CheckpointError(
                "cosignature is not canonical base64", reason=Reason.CHECKPOINT_MALFORMED
            )
        present.add(line)
        extra.append(line)
    if len(parsed.signatures) + len(extra) > MAX_SIGNATURES:
        raise CheckpointError(
            f"note would carry more than {MAX_SIGNATURES} signatures",
            reason=Reason.CHECKPOINT_MALFORMED,
        )
    result = note + "".join(extra)
    parse_note_unverified(result)
    return result
