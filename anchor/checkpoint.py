"""C2SP signed notes with Ed25519 keys, and the tlog-checkpoint notes that carry batch-log heads.

CONSENSUS-CRITICAL. Every receipt carries a checkpoint signed here, and every verifier (ours and
anyone else's C2SP-compatible tooling, such as Go's ``golang.org/x/mod/sumdb/note``) must read the
same bytes the same way. A change to how notes are split, how key IDs are computed or how a
checkpoint body is laid out breaks every receipt already issued.

Specifications:

* c2sp.org/signed-note (https://github.com/C2SP/C2SP/blob/main/signed-note.md): a note is a
  text ending in a newline, a blank line, then one or more lines
  ``"\u2014 " name " " base64(key ID || signature) "\\n"``. The key ID of an Ed25519 key is
  ``SHA-256(name || 0x0A || 0x01 || public key)[:4]``; a verifier key ("vkey") is
  ``name+hex(key ID)+base64(0x01 || public key)``, a signer key ("skey") the same with
  ``PRIVATE+KEY+`` in front and the 32-byte seed in place of the public key.
* c2sp.org/tlog-checkpoint (https://github.com/C2SP/C2SP/blob/main/tlog-checkpoint.md): the note
  text is the origin line, the tree size in canonical decimal, the standard-base64 root hash, and
  optional non-empty extension lines.

Only signature type 0x01 (Ed25519, RFC 8032) is implemented: signed-note says implementations
SHOULD support only the types their design needs. Signatures of other types, or from keys the
caller did not name, are ignored, as the spec requires, so witnesses may cosign our checkpoints.

Parsing is strict where the specs leave room, because a checkpoint is compared byte for byte
across implementations: base64 must be canonical (padding present, no stray bits), the size has no
sign or leading zero, the root is exactly 32 bytes, and notes are capped at
:data:`MAX_NOTE_SIZE` bytes and :data:`MAX_SIGNATURES` signature lines (the spec asks for at
least 16; Go's implementation allows 100).

Errors are :class:`~anchor.errors.CheckpointError` with one of these ``reason`` codes:

``checkpoint_malformed``
    The note or the checkpoint body breaks the format: not UTF-8, control characters, no blank
    line before the signatures, a bad signature line, non-canonical base64, bad size or root,
    too large, too many signatures or extension lines.
``checkpoint_signature_invalid``
    A signature line names a key the caller trusts (same name and key ID) and does not verify.
    One bad signature from a trusted key rejects the whole note (signed-note: clients SHOULD).
``checkpoint_unknown_key``
    No signature line comes from any trusted key, so nothing vouches for the text.
``checkpoint_origin_mismatch``
    :func:`open_checkpoint` was asked for a specific origin and the checkpoint names another.

Key strings that cannot be parsed raise :class:`~anchor.errors.KeyMaterialError`: reason
``key_invalid`` (malformed, wrong length, key ID that does not match the key, conflicting
verifiers) or ``key_unsupported`` (a signature type other than Ed25519).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from anchor.errors import CheckpointError, KeyMaterialError, Reason

__all__ = [
    "ALG_ED25519",
    "MAX_EXTENSION_LINES",
    "MAX_NOTE_SIZE",
    "MAX_SIGNATURES",
    "MAX_TREE_SIZE",
    "Checkpoint",
    "CheckpointError",
    "NoteSignature",
    "NoteSigner",
    "NoteVerifier",
    "SignedNote",
    "generate_note_key",
    "open_checkpoint",
    "open_note",
    "parse_checkpoint_unverified",
    "parse_note_unverified",
    "sign_checkpoint",
    "sign_note",
]

ALG_ED25519 = 0x01
"""Signature type byte of Ed25519 note keys (signed-note, "Signature types")."""

MAX_NOTE_SIZE = 1 << 20
"""Largest signed note accepted, in UTF-8 bytes (signed-note: verifiers SHOULD bound the size)."""

MAX_SIGNATURES = 100
"""Most signature lines accepted in one note (signed-note: MUST accept at least 16)."""

MAX_EXTENSION_LINES = 64
"""Most checkpoint extension lines accepted; we write none (tlog-checkpoint: NOT RECOMMENDED)."""

MAX_TREE_SIZE = (1 << 64) - 1
"""Tree sizes are uint64 in every tlog implementation and in the AnchorRegistry contract."""

ROOT_SIZE = 32
_ALG_NAMES = {0x01: "Ed25519 note signature", 0x04: "Ed25519 tlog-cosignature v1"}
_KEY_ID_SIZE = 4
_ED25519_KEY_SIZE = 32
_ED25519_SIG_SIZE = 64
_SIG_PREFIX = "\u2014 "  # em dash, space
_SKEY_PREFIX = "PRIVATE+KEY+"
_CANONICAL_SIZE = re.compile(r"0|[1-9][0-9]*")
# Everything below U+0020 except the newline (signed-note, "Format").
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")


def _malformed(detail: str) -> CheckpointError:
    return CheckpointError(detail, reason=Reason.CHECKPOINT_MALFORMED)


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode_canonical(text: str) -> bytes | None:
    """Decode RFC 4648 section 4 base64, or return None unless ``text`` is its canonical form.

    Canonical means padded and free of stray low bits, so that each byte string has exactly one
    spelling and a checkpoint or key compares equal as text whenever it does as bytes.
    """
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        return None
    return data if _b64encode(data) == text else None


def _name_problem(name: object) -> str | None:
    # signed-note: "Key names MUST be non-empty and MUST NOT contain any Unicode spaces or plus".
    # Control characters can never appear in a valid note, so a name holding one is refused too.
    if not isinstance(name, str) or not name:
        return "key name must be a non-empty string"
    if "+" in name:
        return f"key name {name!r} contains '+'"
    if any(ch.isspace() for ch in name) or _CONTROL.search(name):
        return f"key name {name!r} contains white space or a control character"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return f"key name {name!r} is not valid UTF-8"
    return None


def _key_id(name: str, public_key: bytes, alg: int = ALG_ED25519) -> bytes:
    # signed-note, "Ed25519 signatures": SHA-256(name || 0x0A || alg || public key)[:4], with
    # alg 0x01 for note signatures and 0x04 for tlog-cosignature v1 (anchor.cosignature).
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([alg]) + public_key).digest()[
        :_KEY_ID_SIZE
    ]


def _check_name_and_key(name: str, public_key: bytes) -> None:
    problem = _name_problem(name)
    if problem:
        raise KeyMaterialError(problem)
    if not isinstance(public_key, bytes) or len(public_key) != _ED25519_KEY_SIZE:
        raise KeyMaterialError(f"Ed25519 public key must be {_ED25519_KEY_SIZE} bytes")


def _check_key_fields(
    name: str, key_hash: bytes, public_key: bytes, alg: int = ALG_ED25519, role: str = ""
) -> None:
    """The checks every Ed25519 note key makes when built: name rules, key size, and that
    ``key_hash`` is the key ID of ``public_key`` for signature type ``alg``."""
    _check_name_and_key(name, public_key)
    if not isinstance(key_hash, bytes) or len(key_hash) != _KEY_ID_SIZE:
        raise KeyMaterialError(f"key ID must be {_KEY_ID_SIZE} bytes")
    expected = _key_id(name, public_key, alg)
    if key_hash != expected:
        raise KeyMaterialError(
            f"key ID mismatch for {role}{name!r}: key says {key_hash.hex()}, "
            f"computed {expected.hex()}"
        )


def _public_key_of_seed(seed: bytes) -> bytes:
    """The raw Ed25519 public key of a 32-byte seed (RFC 8032 private key)."""
    if not isinstance(seed, bytes) or len(seed) != _ED25519_KEY_SIZE:
        raise KeyMaterialError(f"Ed25519 seed must be {_ED25519_KEY_SIZE} bytes")
    return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()


def _split_key(encoded: str, what: str, alg: int = ALG_ED25519) -> tuple[str, bytes, bytes]:
    """Split ``name+hexid+base64(alg || material)`` into name, key ID and key material.

    The base64 part may itself contain '+', hence at most two splits.
    """
    parts = encoded.split("+", 2)
    if len(parts) != 3:
        raise KeyMaterialError(f"{what} must look like name+keyid+base64key")
    name, hex_id, b64 = parts
    problem = _name_problem(name)
    if problem:
        raise KeyMaterialError(f"{what}: {problem}")
    if re.fullmatch(r"[0-9a-f]{8}", hex_id) is None:
        raise KeyMaterialError(f"{what}: key ID must be 8 lowercase hex digits")
    raw = _b64decode_canonical(b64)
    if not raw:
        raise KeyMaterialError(f"{what}: key is not canonical standard base64")
    if raw[0] != alg:
        raise KeyMaterialError(
            f"{what}: signature type 0x{raw[0]:02x} is not supported here (expected "
            f"0x{alg:02x}, {_ALG_NAMES.get(alg, 'unknown')})",
            reason=Reason.KEY_UNSUPPORTED,
        )
    if len(raw) != 1 + _ED25519_KEY_SIZE:
        raise KeyMaterialError(f"{what}: Ed25519 key must be {_ED25519_KEY_SIZE} bytes")
    return name, bytes.fromhex(hex_id), raw[1:]


@dataclass(frozen=True, slots=True)
class NoteVerifier:
    """A trusted Ed25519 note key: its name, 4-byte key ID and 32-byte public key.

    Construction checks the name rules and that ``key_hash`` is the key ID of ``public_key``;
    raises ``KeyMaterialError`` otherwise.
    """

    name: str
    key_hash: bytes
    public_key: bytes

    def __post_init__(self) -> None:
        _check_key_fields(self.name, self.key_hash, self.public_key)

    @classmethod
    def from_public_key(cls, name: str, public_key: bytes) -> NoteVerifier:
        """The verifier for a raw 32-byte Ed25519 public key under ``name``."""
        _check_name_and_key(name, public_key)
        return cls(name, _key_id(name, public_key), public_key)

    @classmethod
    def from_vkey(cls, vkey: str) -> NoteVerifier:
        """Parse ``name+hex(key ID)+base64(0x01 || public key)`` (signed-note, "Verifier keys")."""
        if not isinstance(vkey, str):
            raise KeyMaterialError("verifier key must be a string")
        name, key_hash, public_key = _split_key(vkey, "verifier key")
        return cls(name, key_hash, public_key)

    def vkey(self) -> str:
        """The verifier key string, which :meth:`from_vkey` reads back unchanged."""
        encoded = _b64encode(bytes([ALG_ED25519]) + self.public_key)
        return f"{self.name}+{self.key_hash.hex()}+{encoded}"

    def verify(self, message: bytes, signature: bytes) -> None:
        """Check an Ed25519 signature (without the key ID prefix) over ``message``.

        Returns None; raises ``CheckpointError`` (``checkpoint_signature_invalid``).
        """
        if len(signature) != _ED25519_SIG_SIZE:
            raise CheckpointError(
                f"signature by {self.name}+{self.key_hash.hex()} is {len(signature)} bytes, "
                f"an Ed25519 signature is {_ED25519_SIG_SIZE}",
                reason=Reason.CHECKPOINT_SIGNATURE_INVALID,
            )
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except InvalidSignature as exc:
            raise CheckpointError(
                f"signature by {self.name}+{self.key_hash.hex()} does not verify",
                reason=Reason.CHECKPOINT_SIGNATURE_INVALID,
            ) from exc


@dataclass(frozen=True, slots=True)
class NoteSigner:
    """An Ed25519 note signing key. The seed never appears in ``repr`` and is not compared.

    Construction checks that ``key_hash`` and ``public_key`` belong to ``seed``; raises
    ``KeyMaterialError`` otherwise. Prefer :meth:`from_skey` or :func:`generate_note_key`.
    """

    name: str
    key_hash: bytes
    public_key: bytes
    seed: bytes = field(repr=False, compare=False)
    _private: Ed25519PrivateKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if _public_key_of_seed(self.seed) != self.public_key:
            raise KeyMaterialError(f"public key of {self.name!r} does not belong to its seed")
        _check_key_fields(self.name, self.key_hash, self.public_key)
        object.__setattr__(self, "_private", Ed25519PrivateKey.from_private_bytes(self.seed))

    @classmethod
    def from_seed(cls, name: str, seed: bytes) -> NoteSigner:
        """The signer for a raw 32-byte Ed25519 seed (RFC 8032 private key) under ``name``."""
        public_key = _public_key_of_seed(seed)
        verifier = NoteVerifier.from_public_key(name, public_key)
        return cls(name, verifier.key_hash, public_key, seed)

    @classmethod
    def from_skey(cls, skey: str) -> NoteSigner:
        """Parse ``PRIVATE+KEY+name+hex(key ID)+base64(0x01 || seed)``, as Go's ``NewSigner``.

        The key ID is that of the public key, so it is checked after deriving the public key.
        """
        if not isinstance(skey, str) or not skey.startswith(_SKEY_PREFIX):
            raise KeyMaterialError("signer key must start with 'PRIVATE+KEY+'")
        name, key_hash, seed = _split_key(skey[len(_SKEY_PREFIX) :], "signer key")
        return cls(name, key_hash, _public_key_of_seed(seed), seed)

    def skey(self) -> str:
        """The secret signer key string, which :meth:`from_skey` reads back. Keep it secret."""
        encoded = _b64encode(bytes([ALG_ED25519]) + self.seed)
        return f"{_SKEY_PREFIX}{self.name}+{self.key_hash.hex()}+{encoded}"

    @property
    def verifier(self) -> NoteVerifier:
        """The public half, to hand to whoever verifies this signer's notes."""
        return NoteVerifier(self.name, self.key_hash, self.public_key)

    def sign(self, message: bytes) -> bytes:
        """The raw 64-byte Ed25519 signature of ``message`` (deterministic, RFC 8032)."""
        return self._private.sign(message)


def generate_note_key(name: str) -> NoteSigner:
    """A fresh random Ed25519 note key named ``name``; raises ``KeyMaterialError`` on a bad name."""
    problem = _name_problem(name)
    if problem:
        raise KeyMaterialError(problem)
    return NoteSigner.from_seed(name, Ed25519PrivateKey.generate().private_bytes_raw())


@dataclass(frozen=True, slots=True)
class NoteSignature:
    """One signature line of a note: key name, 4-byte key ID and the signature after the ID."""

    name: str
    key_hash: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class SignedNote:
    """A note split into its text (with the final newline) and its signature lines, in order."""

    text: str
    signatures: tuple[NoteSignature, ...]


def _check_text(text: str, what: str) -> bytes:
    """Validate note text (signed-note, "Format") and return its UTF-8 bytes."""
    if len(text) > MAX_NOTE_SIZE:
        raise _malformed(f"{what} is larger than {MAX_NOTE_SIZE} bytes")
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        raise _malformed(f"{what} is not valid UTF-8") from None
    if len(raw) > MAX_NOTE_SIZE:
        raise _malformed(f"{what} is larger than {MAX_NOTE_SIZE} bytes")
    found = _CONTROL.search(text)
    if found:
        raise _malformed(
            f"{what} contains control character U+{ord(found.group()):04X} at offset "
            f"{found.start()}"
        )
    return raw


def parse_note_unverified(note: str | bytes) -> SignedNote:
    """Split a signed note into text and signature lines, checking syntax but no signature.

    For display and diagnostics only: signed-note says the text MUST be ignored until a trusted
    signature has been verified, which is what :func:`open_note` does. Raises ``CheckpointError``
    (``checkpoint_malformed``).
    """
    if isinstance(note, bytes | bytearray):
        if len(note) > MAX_NOTE_SIZE:
            raise _malformed(f"note is larger than {MAX_NOTE_SIZE} bytes")
        try:
            note = bytes(note).decode("utf-8")
        except UnicodeDecodeError:
            raise _malformed("note is not valid UTF-8") from None
    if not isinstance(note, str):
        raise _malformed(f"note must be text, not {type(note).__name__}")
    _check_text(note, "note")

    # "the text is separated from the signatures by the last empty line in the note".
    split = note.rfind("\n\n")
    if split < 0:
        raise _malformed("note has no blank line before its signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block:
        raise _malformed("note has no signature lines")
    if not block.endswith("\n"):
        raise _malformed("note does not end with a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise _malformed(f"note has {len(lines)} signatures, more than {MAX_SIGNATURES}")

    signatures = []
    for number, line in enumerate(lines, 1):
        if not line.startswith(_SIG_PREFIX):
            raise _malformed(f"signature line {number} does not start with an em dash and space")
        name, space, b64 = line[len(_SIG_PREFIX) :].partition(" ")
        problem = _name_problem(name)
        if problem or not space:
            raise _malformed(f"signature line {number}: {problem or 'no signature after name'}")
        raw = _b64decode_canonical(b64)
        # Four bytes of key ID plus at least one byte of signature, as Go's note.Open requires.
        if raw is None or len(raw) <= _KEY_ID_SIZE:
            raise _malformed(f"signature line {number}: signature is not canonical base64")
        signatures.append(NoteSignature(name, raw[:_KEY_ID_SIZE], raw[_KEY_ID_SIZE:]))
    return SignedNote(text, tuple(signatures))


def _index_verifiers(
    verifiers: Sequence[NoteVerifier],
) -> dict[tuple[str, bytes], NoteVerifier]:
    known: dict[tuple[str, bytes], NoteVerifier] = {}
    for v in verifiers:
        if not isinstance(v, NoteVerifier):
            raise KeyMaterialError(f"expected NoteVerifier, got {type(v).__name__}")
        other = known.setdefault((v.name, v.key_hash), v)
        if other.public_key != v.public_key:
            # Only a deliberate key-ID collision gets here; refuse to guess which key is meant.
            raise KeyMaterialError(f"two verifier keys share name and key ID {v.vkey()}")
    return known


def open_note(note: str | bytes, verifiers: Sequence[NoteVerifier]) -> str:
    """Verify a signed note against trusted keys and return its text (with the final newline).

    Following signed-note, "Signatures": a line whose (name, key ID) matches no trusted key is
    ignored, even if it shares one of the two with a trusted key; every line that matches a
    trusted key must verify; at least one must. Raises ``CheckpointError`` with reason
    ``checkpoint_malformed``, ``checkpoint_signature_invalid`` or ``checkpoint_unknown_key``.
    """
    known = _index_verifiers(verifiers)
    parsed = parse_note_unverified(note)
    message = parsed.text.encode("utf-8")
    verified = 0
    for sig in parsed.signatures:
        verifier = known.get((sig.name, sig.key_hash))
        if verifier is None:
            continue
        # Unlike Go, which skips repeated lines from one key, every trusted line is checked:
        # a note carrying a bad signature from our own key is suspect however many good ones.
        verifier.verify(message, sig.signature)
        verified += 1
    if not verified:
        trusted = ", ".join(f"{n}+{h.hex()}" for n, h in known) or "none"
        present = ", ".join(f"{s.name}+{s.key_hash.hex()}" for s in parsed.signatures)
        raise CheckpointError(
            f"no signature from a trusted key (trusted: {trusted}; present: {present})",
            reason=Reason.CHECKPOINT_UNKNOWN_KEY,
        )
    return parsed.text


def sign_note(text: str, signer: NoteSigner) -> str:
    """Sign ``text`` and return the note: text, blank line, one signature line.

    ``text`` must end with a newline and hold no control character other than newlines;
    raises ``CheckpointError`` (``checkpoint_malformed``) otherwise.
    """
    if not isinstance(text, str) or not text.endswith("\n"):
        raise _malformed("note text must be a string ending with a newline")
    message = _check_text(text, "note text")
    key_id_and_sig = signer.key_hash + signer.sign(message)
    note = f"{text}\n{_SIG_PREFIX}{signer.name} {_b64encode(key_id_and_sig)}\n"
    if len(note.encode("utf-8")) > MAX_NOTE_SIZE:
        raise _malformed(f"signed note would be larger than {MAX_NOTE_SIZE} bytes")
    return note


def _line_problem(line: object) -> str | None:
    if not isinstance(line, str) or not line:
        return "must be a non-empty string"
    if "\n" in line or _CONTROL.search(line):
        return "must not contain a newline or control character"
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    return None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A tlog-checkpoint: the log's ``origin``, its ``size`` and its 32-byte RFC 9162 ``root``.

    ``extensions`` are the optional extension lines, kept verbatim and in order. Construction
    validates every field and raises ``CheckpointError`` (``checkpoint_malformed``).
    """

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problem = _line_problem(self.origin)
        if problem:
            raise _malformed(f"checkpoint origin {problem}")
        if (
            not isinstance(self.size, int)
            or isinstance(self.size, bool)
            or not 0 <= self.size <= MAX_TREE_SIZE
        ):
            raise _malformed(f"checkpoint size must be an integer in [0, 2**64), got {self.size!r}")
        if not isinstance(self.root, bytes) or len(self.root) != ROOT_SIZE:
            raise _malformed(f"checkpoint root must be {ROOT_SIZE} bytes")
        extensions: object = self.extensions  # callers may pass a list; typed as a tuple
        if isinstance(extensions, str) or not isinstance(extensions, Sequence):
            raise _malformed("checkpoint extensions must be a sequence of lines")
        object.__setattr__(self, "extensions", tuple(extensions))
        if len(self.extensions) > MAX_EXTENSION_LINES:
            raise _malformed(f"more than {MAX_EXTENSION_LINES} checkpoint extension lines")
        for i, line in enumerate(self.extensions):
            problem = _line_problem(line)
            if problem:
                raise _malformed(f"checkpoint extension line {i} {problem}")

    def body(self) -> bytes:
        """The note text: ``origin\\n<size>\\n<base64 root>\\n`` then each extension line."""
        lines = [self.origin, str(self.size), _b64encode(self.root), *self.extensions]
        return "".join(line + "\n" for line in lines).encode("utf-8")


def _parse_checkpoint_text(text: str) -> Checkpoint:
    # tlog-checkpoint, "Note text", items 1-4.
    if not text.endswith("\n"):
        raise _malformed("checkpoint text does not end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise _malformed(f"checkpoint has {len(lines)} lines, needs origin, size and root")
    if len(lines) > 3 + MAX_EXTENSION_LINES:
        raise _malformed(f"more than {MAX_EXTENSION_LINES} checkpoint extension lines")
    origin, size_text, root_text, *extensions = lines
    if not origin:
        raise _malformed("checkpoint origin line is empty")
    # (2): ASCII decimal, no sign, no leading zero (int() would accept "+1", "01", " 1", "1_0").
    if _CANONICAL_SIZE.fullmatch(size_text) is None:
        raise _malformed(f"checkpoint size {size_text!r} is not a canonical decimal")
    size = int(size_text)
    if size > MAX_TREE_SIZE:
        raise _malformed(f"checkpoint size {size_text} does not fit in 64 bits")
    # (3): standard base64 of the root; our trees are SHA-256 ones.
    root = _b64decode_canonical(root_text)
    if root is None:
        raise _malformed(f"checkpoint root {root_text!r} is not canonical standard base64")
    if len(root) != ROOT_SIZE:
        raise _malformed(f"checkpoint root is {len(root)} bytes, expected {ROOT_SIZE}")
    # (4): extension lines, if any, MUST be non-empty.
    for i, line in enumerate(extensions):
        if not line:
            raise _malformed(f"checkpoint extension line {i} is empty")
    return Checkpoint(origin, size, root, tuple(extensions))


def sign_checkpoint(checkpoint: Checkpoint, signer: NoteSigner) -> str:
    """Sign ``checkpoint`` as a C2SP signed note.

    tlog-checkpoint says the key name SHOULD match the origin; that is the caller's choice.
    """
    return sign_note(checkpoint.body().decode("utf-8"), signer)


def open_checkpoint(
    note: str | bytes, verifier: NoteVerifier, *, origin: str | None = None
) -> Checkpoint:
    """Verify ``note`` with ``verifier`` and only then parse it as a checkpoint.

    With ``origin`` given, the checkpoint must name exactly that origin (reason
    ``checkpoint_origin_mismatch``). Signatures from other keys (witness cosignatures, rotated
    keys) are ignored. Raises ``CheckpointError``.
    """
    text = open_note(note, [verifier])
    checkpoint = _parse_checkpoint_text(text)
    if origin is not None and checkpoint.origin != origin:
        raise CheckpointError(
            f"checkpoint origin mismatch: expected {origin!r}, got {checkpoint.origin!r}",
            reason=Reason.CHECKPOINT_ORIGIN_MISMATCH,
        )
    return checkpoint


def parse_checkpoint_unverified(note: str | bytes) -> Checkpoint:
    """Parse a signed checkpoint note without checking any signature, for display only.

    The note and the body are parsed exactly as strictly as :func:`open_checkpoint` does, so a
    note that fails here can never verify. Raises ``CheckpointError`` (``checkpoint_malformed``).
    """
    return _parse_checkpoint_text(parse_note_unverified(note).text)
