"""The one exception tree of cityanchor.

Every failure the service can report is an :class:`AnchorError` with a stable ``reason`` code.
The same code appears in the quarantine table, the logs, the metrics and HTTP problem details,
so callers branch on ``exc.reason``, never on the message text (which may change).
"""

from __future__ import annotations

__all__ = [
    "AnchorError",
    "CheckpointError",
    "EnvelopeError",
    "KeyMaterialError",
    "ProofError",
    "ReceiptError",
    "UsageError",
]


class AnchorError(Exception):
    """Root of every cityanchor error; ``reason`` is a stable machine-readable code."""

    reason: str = "error"

    def __init__(self, detail: str, *, reason: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if reason is not None:
            self.reason = reason

    def __str__(self) -> str:
        return f"[{self.reason}] {self.detail}"


class ProofError(AnchorError):
    """A Merkle inclusion or consistency proof is malformed or does not match the root.

    Reasons: ``proof_malformed`` (bad sizes, lengths, index out of range) and
    ``root_mismatch`` (well-formed proof that leads to another root).
    """

    reason = "proof_malformed"


class EnvelopeError(AnchorError):
    """A signed device envelope was rejected; see ``docs/reason-codes.md`` for every reason."""

    reason = "malformed"


class KeyMaterialError(AnchorError):
    """A public or private key (JWK, PEM, note key) is malformed or of an unsupported type."""

    reason = "key_invalid"


class CheckpointError(AnchorError):
    """A C2SP signed checkpoint note is malformed or its signature does not verify."""

    reason = "checkpoint_invalid"


class ReceiptError(AnchorError):
    """A receipt document does not follow ``cityanchor/receipt/v2``."""

    reason = "receipt_malformed"


class UsageError(AnchorError):
    """The caller asked for something impossible (bad flag, missing file)."""

    reason = "usage"
