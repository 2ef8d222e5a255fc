"""C2SP tlog-witness ``add-checkpoint``: the request and response formats and the witness's rules.

Pure (bytes in, decisions out), so the same rules run in ``cityanchor witness serve``, in the
monitor acting as a witness, and in unit tests against published vectors; the I/O wings only
persist state atomically and speak HTTP.

Specification: c2sp.org/tlog-witness (https://github.com/C2SP/C2SP/blob/main/tlog-witness.md):

* request body: ``old <size>\\n``, zero to 63 lines of base64 consistency-proof hashes, an empty
  line, then the signed checkpoint note;
* 404 unknown origin; 403 no signature from a trusted log key, or a trusted key's signature
  that fails; 400 old size above the checkpoint size (or a body that breaks the format);
  409 old size other than the size of the latest cosigned checkpoint, body ``<size>\\n``,
  ``Content-Type: text/x.tlog.size``; 422 a size-0 checkpoint whose root is not SHA-256(""),
  a non-empty proof with old size 0, a proof that does not verify, or the same size with
  another root; 200 with the cosignature line(s).

The order of the checks is the spec's: authenticate the checkpoint first (404/403), then 400,
then 409, then 422, so a caller who is not the log learns nothing about the witness's state.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from anchor import merkle
from anchor.checkpoint import (
    Checkpoint,
    NoteVerifier,
    open_note,
    parse_checkpoint_unverified,
    parse_note_unverified,
)
from anchor.errors import AnchorError, CheckpointError, KeyMaterialError, ProofError, Reason

__all__ = [
    "ADD_CHECKPOINT_PATH",
    "MAX_PROOF_LINES",
    "MAX_REQUEST_BYTES",
    "SIZE_CONTENT_TYPE",
    "Accepted",
    "AddCheckpointRequest",
    "Refused",
    "WitnessRequestError",
    "WitnessedCheckpoint",
    "decide_add_checkpoint",
    "format_add_checkpoint",
    "format_size_body",
    "origin_hash",
    "parse_add_checkpoint",
    "parse_cosignature_response",
    "parse_size_body",
]

ADD_CHECKPOINT_PATH = "/add-checkpoint"
SIZE_CONTENT_TYPE = "text/x.tlog.size"
MAX_PROOF_LINES = 63
MAX_REQUEST_BYTES = 1 << 20
"""A witness reads at most this much of a request (a checkpoint note is capped the same)."""

_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_EMPTY_ROOT = hashlib.sha256(b"").digest()
_HASH_SIZE = 32


class WitnessRequestError(AnchorError):
    """An ``add-checkpoint`` request or answer that breaks the tlog-witness format."""

    reason = Reason.WITNESS_REQUEST_MALFORMED


def _decimal(text: str, what: str) -> int:
    if _DECIMAL.fullmatch(text) is None or int(text) >= 1 << 64:
        raise WitnessRequestError(f"{what} {text[:40]!r} is not a canonical decimal uint64")
    return int(text)


@dataclass(frozen=True, slots=True)
class AddCheckpointRequest:
    """``old`` size, the consistency proof from it, and the signed checkpoint note."""

    old_size: int
    proof: tuple[bytes, ...]
    note: str


def format_add_checkpoint(old_size: int, proof: Sequence[bytes], note: str) -> bytes:
    """The request body a log sends to a witness."""
    if len(proof) > MAX_PROOF_LINES:
        raise WitnessRequestError(f"a proof of {len(proof)} hashes is over {MAX_PROOF_LINES}")
    lines = [f"old {old_size}"] + [base64.b64encode(h).decode("ascii") for h in proof]
    return ("".join(line + "\n" for line in lines) + "\n" + note).encode("utf-8")


def parse_add_checkpoint(body: bytes) -> AddCheckpointRequest:
    """Parse a request body; raises ``WitnessRequestError`` (HTTP 400) on any format error."""
    if len(body) > MAX_REQUEST_BYTES:
        raise WitnessRequestError(f"request body is over {MAX_REQUEST_BYTES} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise WitnessRequestError("request body is not UTF-8") from None
    head, sep, note = text.partition("\n\n")
    if not sep:
        raise WitnessRequestError("request has no empty line before the checkpoint")
    lines = head.split("\n")
    first = lines[0]
    if not first.startswith("old "):
        raise WitnessRequestError("request does not start with an 'old <size>' line")
    old_size = _decimal(first[4:], "old size")
    hashes = lines[1:]
    if len(hashes) > MAX_PROOF_LINES:
        raise WitnessRequestError(f"more than {MAX_PROOF_LINES} consistency proof lines")
    proof = []
    for number, line in enumerate(hashes, 1):
        try:
            raw = base64.b64decode(line.encode("ascii"), validate=True)
        except (UnicodeEncodeError, ValueError):
            raise WitnessRequestError(f"proof line {number} is not base64") from None
        if len(raw) != _HASH_SIZE or base64.b64encode(raw).decode("ascii") != line:
            raise WitnessRequestError(f"proof line {number} is not a canonical base64 hash")
        proof.append(raw)
    return AddCheckpointRequest(old_size, tuple(proof), note)


def format_size_body(size: int) -> bytes:
    return f"{size}\n".encode("ascii")


def parse_size_body(body: bytes) -> int:
    """The witness's size from a 409 answer; raises ``WitnessRequestError``."""
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise WitnessRequestError("409 body is not ASCII") from None
    if not text.endswith("\n"):
        raise WitnessRequestError("409 body does not end with a newline")
    return _decimal(text[:-1], "witness size")


def parse_cosignature_response(body: bytes) -> tuple[str, ...]:
    """The signature lines of a 200 answer (each with its newline); raises on any other line."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise WitnessRequestError("cosignature answer is not UTF-8") from None
    if not text or not text.endswith("\n"):
        raise WitnessRequestError("cosignature answer is empty or lacks its final newline")
    lines = tuple(line + "\n" for line in text[:-1].split("\n"))
    for line in lines:
        try:
            parse_note_unverified("x\n\n" + line)
        except CheckpointError as exc:
            raise WitnessRequestError(f"cosignature answer has a bad line: {exc.detail}") from None
    return lines


def origin_hash(origin: str) -> str:
    """Lowercase hex SHA-256 of the origin: the path segment of the monitoring endpoint."""
    return hashlib.sha256(origin.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class WitnessedCheckpoint:
    """What a witness keeps per log: the latest checkpoint it cosigned, as signed by the log."""

    origin: str
    size: int
    root: bytes
    note: str


@dataclass(frozen=True, slots=True)
class Accepted:
    """Cosign ``checkpoint`` and store it as the log's new state (atomically with the check)."""

    checkpoint: Checkpoint
    note_text: str
    status: Literal[200] = 200


@dataclass(frozen=True, slots=True)
class Refused:
    """Answer ``status`` with ``detail``; ``size`` is the witness's size for a 409."""

    status: int
    reason: Reason
    detail: str
    size: int | None = None
    checkpoint: Checkpoint | None = None

    @property
    def evidence(self) -> bool:
        """A validly signed checkpoint the witness cannot cosign: may prove misbehaviour."""
        return self.status == 422 and self.checkpoint is not None


def decide_add_checkpoint(
    request: AddCheckpointRequest,
    log_keys: Mapping[str, Sequence[NoteVerifier]],
    state: Callable[[str], WitnessedCheckpoint | None],
) -> Accepted | Refused:
    """Apply tlog-witness's checks, in its order, to one request.

    ``log_keys`` maps each known origin to the log keys trusted for it; ``state`` maps an origin
    to the latest checkpoint cosigned for it (or None). Never raises for bad input: every
    problem is a ``Refused`` with the spec's status code.
    """
    try:
        unverified = parse_checkpoint_unverified(request.note)
    except CheckpointError as exc:
        return Refused(400, Reason.WITNESS_REQUEST_MALFORMED, f"not a checkpoint: {exc.detail}")
    keys = log_keys.get(unverified.origin)
    if not keys:
        return Refused(404, Reason.WITNESS_UNKNOWN_LOG, f"unknown log {unverified.origin!r}")
    # All the origin's keys at once: every line from any of them must verify (one trusted key's
    # bad signature is a 403 even when another's is good), and at least one must be present.
    try:
        open_note(request.note, keys)
    except (CheckpointError, KeyMaterialError) as exc:
        return Refused(403, Reason.WITNESS_LOG_SIGNATURE_INVALID, exc.detail)
    checkpoint = unverified
    if request.old_size > checkpoint.size:
        return Refused(
            400,
            Reason.WITNESS_REQUEST_MALFORMED,
            f"old size {request.old_size} is above the checkpoint size {checkpoint.size}",
        )
    latest = state(checkpoint.origin)
    current = latest.size if latest is not None else 0
    if request.old_size != current:
        return Refused(
            409,
            Reason.WITNESS_SIZE_CONFLICT,
            f"old size {request.old_size} is not the witnessed size {current}",
            size=current,
        )
    if checkpoint.size == 0 and checkpoint.root != _EMPTY_ROOT:
        return Refused(
            422,
            Reason.WITNESS_INCONSISTENT,
            "a checkpoint of size 0 must have the empty tree's root",
            checkpoint=checkpoint,
        )
    if latest is None or request.old_size == 0:
        if request.proof:
            return Refused(
                422,
                Reason.WITNESS_INCONSISTENT,
                "old size 0 takes an empty consistency proof",
                checkpoint=checkpoint,
            )
    elif latest.size == checkpoint.size:
        if latest.root != checkpoint.root:
            return Refused(
                422,
                Reason.WITNESS_INCONSISTENT,
                f"size {checkpoint.size} was cosigned with another root: the log forked",
                checkpoint=checkpoint,
            )
        if request.proof:
            return Refused(
                422,
                Reason.WITNESS_INCONSISTENT,
                "equal sizes take an empty consistency proof",
                checkpoint=checkpoint,
            )
    else:
        try:
            merkle.verify_consistency(
                latest.size, checkpoint.size, list(request.proof), latest.root, checkpoint.root
            )
        except ProofError as exc:
            return Refused(
                422,
                Reason.WITNESS_INCONSISTENT,
                f"consistency proof {latest.size} -> {checkpoint.size} fails: {exc.detail}",
                checkpoint=checkpoint,
            )
    text = parse_note_unverified(request.note).text
    return Accepted(checkpoint, text)
