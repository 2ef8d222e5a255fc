"""Receipt verification: every check a city app or auditor runs, without trusting the operator.

CONSENSUS-CRITICAL: this is what "valid" means for a ``cityanchor/receipt/v2`` document.
Pure (no I/O). On-chain checks are supplied by the caller as an :data:`AnchorChecker`, so the
offline verifier and the network one share every other step.

The checks, in order (DESIGN.md "Receipt"):

1. ``envelope``   the envelope parses (bounded) and names the receipt's device_id, seq, format;
2. ``signature``  the envelope's signature verifies with a device key the verifier trusts;
3. ``leaf_hash``  ``H(0x00 || envelope)`` equals ``leaf_hash``;
4. ``batch_path`` ``leaf_hash`` is leaf ``batch.index`` of the ``batch.size``-leaf ``batch.root``;
5. ``log_path``   ``H(0x00 || uint64_be(batch.size) || batch.root)`` is leaf ``log.index`` of
   the ``log.size``-leaf log with ``log.root`` (the size is in the leaf because step 4 alone
   does not bind it: leaf 0 of 8 has the same audit path as leaf 0 of 7);
6. ``checkpoint`` the signed note names exactly ``log.size`` and ``log.root``;
7. ``checkpoint_signature`` the note is signed by the operator key the verifier trusts;
8. ``witnesses``  at least ``witness_quorum`` distinct witnesses the verifier trusts cosigned
   the note (C2SP tlog-cosignature v1 lines appended to it); a line of a trusted witness that
   does not verify fails the check (``witness_cosignature_invalid``), too few valid ones fail it
   with ``witness_quorum_not_met``; lines of unknown keys are ignored;
9. ``anchors``    each anchor holds ``log.root`` on chain (needs a chain endpoint).

A check the verifier cannot run (no device key, no log key, no witness key, no chain endpoint,
or, for a reading erased by the operator, no envelope: checks 1-3 then skip and ``leaf_hash``
itself is what the batch path proves) is ``skip``, never ``pass``; a receipt is valid when no check
failed, and *fully* verified when none was skipped either (``witnesses`` excepted, see
:attr:`ReceiptReport.fully_verified`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from anchor import merkle
from anchor.checkpoint import NoteVerifier, open_checkpoint, parse_checkpoint_unverified
from anchor.cosignature import Cosignature, CosignerVerifier, verified_cosignatures
from anchor.envelope import Envelope, parse_envelope, verify_envelope
from anchor.errors import AnchorError, Reason, UsageError
from anchor.keys import PublicKey
from anchor.receipt import Receipt

__all__ = [
    "CHECK_NAMES",
    "AnchorChecker",
    "Check",
    "ReceiptReport",
    "check_witnesses",
    "verify_receipt",
]

CHECK_NAMES = (
    "envelope",
    "signature",
    "leaf_hash",
    "batch_path",
    "log_path",
    "checkpoint",
    "checkpoint_signature",
    "witnesses",
    "anchors",
)

Status = Literal["pass", "fail", "skip"]


@dataclass(frozen=True, slots=True)
class Check:
    """The outcome of one named check; ``reason`` is the AnchorError code when it failed."""

    name: str
    status: Status
    detail: str
    reason: Reason | None = None

    def to_dict(self) -> dict[str, str | None]:
        return {
            "name": self.name,
            "status": self.status,
            "reason": self.reason,
            "detail": self.detail,
        }


AnchorChecker = Callable[[Receipt], Sequence[Check]]
"""Checks a receipt's anchors on chain; returns ``anchors`` checks (one per anchor)."""


@dataclass(frozen=True, slots=True)
class ReceiptReport:
    """All checks of one receipt."""

    device_id: str
    seq: int
    checks: tuple[Check, ...]

    @property
    def valid(self) -> bool:
        """No check failed (skipped checks allowed)."""
        return all(c.status != "fail" for c in self.checks)

    @property
    def fully_verified(self) -> bool:
        """Every check ran and passed; ``witnesses`` may be skipped.

        The ``witnesses`` check skips only when the verifier trusts no witness key: witnessing
        is a policy a verifier opts into (``--witness-key``), and a verifier without one has
        no policy to fall short of, so receipts verified as before issue 13 stay fully
        verified. With witness keys given it passes or fails like every other check.
        """
        return all(
            c.status == "pass" or (c.name == "witnesses" and c.status == "skip")
            for c in self.checks
        )

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status == "fail")

    def to_dict(self) -> dict[str, object]:
        return {
            "device_id": self.device_id,
            "seq": self.seq,
            "valid": self.valid,
            "fully_verified": self.fully_verified,
            "checks": [c.to_dict() for c in self.checks],
        }


def _fail(name: str, exc: AnchorError) -> Check:
    return Check(name, "fail", exc.detail, exc.reason)


def _hasher_of(receipt: Receipt) -> merkle.Hasher:
    scheme = receipt.extra.get("hash_scheme", merkle.SHA256.name)
    return merkle.get_hasher(str(scheme))


def _check_envelope(receipt: Receipt) -> tuple[Check, Envelope | None]:
    try:
        envelope = parse_envelope(receipt.envelope)
    except AnchorError as exc:
        return _fail("envelope", exc), None
    r = envelope.reading
    mismatches = [
        f"{field}: receipt says {claimed!r}, envelope says {actual!r}"
        for field, claimed, actual in (
            ("device_id", receipt.device_id, r.device_id),
            ("seq", receipt.seq, r.seq),
            ("format", receipt.format, envelope.format),
        )
        if claimed != actual
    ]
    if mismatches:
        return Check("envelope", "fail", "; ".join(mismatches), Reason.RECEIPT_MISMATCH), envelope
    return Check("envelope", "pass", f"{envelope.format} {envelope.alg}, kind {r.kind}"), envelope


def _check_signature(envelope: Envelope | None, device_keys: Mapping[bytes, PublicKey]) -> Check:
    if envelope is None:
        return Check("signature", "skip", "envelope did not parse")
    if not device_keys:
        return Check("signature", "skip", "no device key given (--device-key)")
    key = device_keys.get(envelope.kid)
    if key is None:
        return Check(
            "signature",
            "fail",
            f"no trusted device key has kid {envelope.kid.hex()}",
            Reason.UNKNOWN_KID,
        )
    try:
        verify_envelope(envelope, key)
    except AnchorError as exc:
        return _fail("signature", exc)
    return Check("signature", "pass", f"{envelope.alg} signature by kid {envelope.kid.hex()[:16]}…")


def _erased(receipt: Receipt) -> str | None:
    """The skip detail for an erased reading's receipt (no envelope), else None."""
    if receipt.status != "erased" or receipt.envelope:
        return None
    erasure = receipt.extra.get("erasure")
    info = ""
    if isinstance(erasure, Mapping):
        info = ", ".join(
            f"{k} {str(erasure[k])[:200]}"
            for k in ("erased_at", "erased_by", "legal_reason")
            if k in erasure
        )
    return f"erased by the operator (tombstone{': ' + info if info else ''})"


def _check_proofs(receipt: Receipt, hasher: merkle.Hasher) -> list[Check]:
    checks = []
    erased = _erased(receipt)
    computed_leaf = merkle.leaf_hash(receipt.envelope, hasher=hasher)
    if erased is not None:
        # No envelope to hash: the receipt's leaf_hash is what the batch path proves.
        computed_leaf = receipt.leaf_hash
        checks.append(Check("leaf_hash", "skip", erased))
    elif computed_leaf == receipt.leaf_hash:
        checks.append(Check("leaf_hash", "pass", computed_leaf.hex()))
    else:
        checks.append(
            Check(
                "leaf_hash",
                "fail",
                f"expected {receipt.leaf_hash.hex()}, calculated {computed_leaf.hex()}",
                Reason.LEAF_MISMATCH,
            )
        )
    b = receipt.batch
    try:
        merkle.verify_inclusion(computed_leaf, b.index, b.size, b.path, b.root, hasher=hasher)
        detail = f"leaf {b.index} of {b.size} in batch root {b.root.hex()[:16]}…"
        checks.append(Check("batch_path", "pass", detail))
    except AnchorError as exc:
        checks.append(_fail("batch_path", exc))
    lg = receipt.log
    try:
        log_leaf = merkle.log_leaf_hash(b.size, b.root, hasher=hasher)
        merkle.verify_inclusion(log_leaf, lg.index, lg.size, lg.path, lg.root, hasher=hasher)
        checks.append(
            Check(
                "log_path",
                "pass",
                f"batch (size {b.size}) at {lg.index} of {lg.size} in the log",
            )
        )
    except AnchorError as exc:
        checks.append(_fail("log_path", exc))
    return checks


def _check_checkpoint(receipt: Receipt, log_verifiers: Sequence[NoteVerifier]) -> list[Check]:
    try:
        checkpoint = parse_checkpoint_unverified(receipt.checkpoint)
    except AnchorError as exc:
        return [_fail("checkpoint", exc), Check("checkpoint_signature", "skip", "unparseable")]
    lg = receipt.log
    if (checkpoint.size, checkpoint.root) != (lg.size, lg.root):
        structural = Check(
            "checkpoint",
            "fail",
            f"checkpoint names size {checkpoint.size} root {checkpoint.root.hex()}, "
            f"receipt's log has size {lg.size} root {lg.root.hex()}",
            Reason.CHECKPOINT_MISMATCH,
        )
    else:
        structural = Check("checkpoint", "pass", f"{checkpoint.origin!r} at size {checkpoint.size}")
    if not log_verifiers:
        return [structural, Check("checkpoint_signature", "skip", "no log key given (--log-key)")]
    errors: list[AnchorError] = []
    for verifier in log_verifiers:
        try:
            open_checkpoint(receipt.checkpoint, verifier)
        except AnchorError as exc:
            errors.append(exc)
            continue
        return [structural, Check("checkpoint_signature", "pass", f"signed by {verifier.name}")]
    return [structural, _fail("checkpoint_signature", errors[-1])]


def _cosigner(c: Cosignature) -> str:
    when = datetime.fromtimestamp(c.timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{c.witness.key_label} at {when}"


def check_witnesses(
    note: str, witnesses: Sequence[CosignerVerifier], quorum: int
) -> tuple[Check, tuple[Cosignature, ...]]:
    """The ``witnesses`` check of a checkpoint ``note`` and the valid cosignatures it found.

    ``quorum`` distinct trusted witnesses (distinct name and key ID) must have cosigned it.
    Without ``witnesses`` the check is ``skip``, never ``pass``. Raises ``UsageError`` for a
    quorum below 1.
    """
    if quorum < 1:
        raise UsageError(f"the witness quorum must be at least 1, got {quorum}")
    if not witnesses:
        return Check("witnesses", "skip", "no witness key given (--witness-key)"), ()
    try:
        found = verified_cosignatures(note, witnesses)
    except AnchorError as exc:
        return _fail("witnesses", exc), ()
    names = ", ".join(_cosigner(c) for c in found) or "none"
    distinct = len({c.witness.key_label for c in found})
    if distinct < quorum:
        return (
            Check(
                "witnesses",
                "fail",
                f"{distinct} of the {len({w.key_label for w in witnesses})} trusted witnesses "
                f"cosigned, the quorum is "
                f"{quorum}; cosigned by: {names}",
                Reason.WITNESS_QUORUM_NOT_MET,
            ),
            found,
        )
    return (
        Check("witnesses", "pass", f"{distinct} of {quorum} needed, cosigned by: {names}"),
        found,
    )


def verify_receipt(
    receipt: Receipt,
    *,
    device_keys: Sequence[PublicKey] = (),
    log_verifiers: Sequence[NoteVerifier] = (),
    anchor_checker: AnchorChecker | None = None,
    witness_verifiers: Sequence[CosignerVerifier] = (),
    witness_quorum: int = 1,
) -> ReceiptReport:
    """Run every check on ``receipt`` and report each one; never raises for a bad receipt.

    ``device_keys``, ``log_verifiers`` and ``witness_verifiers`` are the keys the caller
    trusts; signature checks without them are skipped. ``witness_quorum`` distinct trusted
    witnesses must have cosigned the checkpoint (raises ``UsageError`` below 1).
    ``anchor_checker`` looks the anchors up on chain.
    """
    checks: list[Check] = []
    try:
        hasher = _hasher_of(receipt)
    except AnchorError as exc:
        return ReceiptReport(receipt.device_id, receipt.seq, (_fail("envelope", exc),))
    erased = _erased(receipt)
    if erased is not None:
        checks.append(Check("envelope", "skip", erased))
        checks.append(Check("signature", "skip", erased))
    else:
        envelope_check, envelope = _check_envelope(receipt)
        checks.append(envelope_check)
        checks.append(_check_signature(envelope, {k.kid: k for k in device_keys}))
    checks.extend(_check_proofs(receipt, hasher))
    checks.extend(_check_checkpoint(receipt, log_verifiers))
    checks.append(check_witnesses(receipt.checkpoint, witness_verifiers, witness_quorum)[0])
    if not receipt.anchors:
        checks.append(Check("anchors", "skip", f"status {receipt.status}: not anchored yet"))
    elif anchor_checker is None:
        checks.append(
            Check(
                "anchors",
                "skip",
                f"{len(receipt.anchors)} anchor(s) not checked: no chain endpoint",
            )
        )
    else:
        checks.extend(anchor_checker(receipt))
    return ReceiptReport(receipt.device_id, receipt.seq, tuple(checks))
