"""The ``ChainBackend`` interface: what the anchoring job needs from a chain, and nothing more.

The job anchors one batch-log root per period on each configured backend. Every backend kind
(an EVM JSON-RPC chain in :mod:`anchor.anchoring.chains.evm`; others later) implements the same
small,
synchronous protocol; the async job calls it from a worker thread (``asyncio.to_thread``), so
methods may block on the network but must be safe to call from one thread at a time per backend.

The protocol is shaped by the job's crash-safety rule: **persist, then broadcast**.

1. ``prepare(root, tree_size)`` builds *and signs* the transaction without sending it, and
   returns an :class:`AnchorTx` holding the exact raw bytes and their hash. The job stores that
   in PostgreSQL and commits.
2. ``broadcast(tx)`` sends the stored bytes. It is idempotent: sending bytes the network already
   has, or that are already mined, succeeds quietly. After a crash the job simply broadcasts the
   stored transaction again; it never builds a second one for the same slot.
3. ``status(tx)`` says ``"pending"``, ``"mined"`` (included, success), ``"failed"`` (included,
   reverted) or ``"dropped"`` (the network no longer knows it and it was not mined, or its slot
   was taken by another transaction). A dropped transaction is broadcast again, or replaced by
   ``prepare(..., replaces=old)``, which reuses the slot (on EVM: the nonce) with a higher fee.
4. ``confirmation(tx)`` returns an :class:`AnchorConfirmation` once the transaction has the
   configured number of confirmations, ``None`` before. A reorg can move a transaction back to
   pending or dropped; the job keeps polling until it is confirmed.
5. ``anchored_at(root)`` and ``find_anchor(root)`` ask the chain itself, for the recovery path
   where the transaction hash was lost: before sending anything again the job checks whether the
   root is already anchored. The contract is append-only, so a root is never anchored twice even
   if the job gets this wrong: the second transaction reverts with ``already_anchored``.
6. ``latest_block()`` and ``block_hash(number)`` let the job re-check anchors it recorded
   (:func:`check_recorded_anchor`): a confirmed anchor can still vanish in a reorg deeper than
   the confirmations, or when a node is restarted from an older state; the job then marks it
   ``anchor_vanished`` and anchors again (see :mod:`anchor.anchoring.job`).

Errors are :class:`ChainError` with a stable ``reason``; ``retryable`` tells the job whether to
back off and retry (``chain_unavailable``) or to stop and report.

Adding another chain kind. A Hyperledger Fabric gateway backend would map onto the protocol as
follows (sketch, not implemented): the chaincode offers ``Anchor(root, treeSize)`` (fails if the
key exists) and ``AnchoredAt(root)``; ``chain_id`` is a stable integer configured for the
channel; ``contract`` is ``"<channel>/<chaincode>"``. ``prepare`` asks the gateway to *endorse*
the proposal (``Gateway.Endorse``) and signs the resulting transaction envelope with the
client's identity: ``raw_tx`` is the serialized signed envelope, ``tx_hash`` its transaction id,
``nonce`` unused (0) because Fabric orders by the orderer, and ``fee_fields`` empty.
``broadcast`` is ``Gateway.Submit`` (re-submitting a known transaction id is rejected as a
duplicate, which counts as success); ``status`` maps the commit status (``VALID`` -> mined,
``MVCC_READ_CONFLICT`` and other invalid codes -> failed, unknown id -> pending or dropped);
``confirmation`` is immediate after commit (Fabric has final blocks, so ``confirmations`` is 1)
with the block number and the block's timestamp; ``find_anchor`` evaluates ``AnchoredAt`` and
reads that block's transaction. ``replaces`` re-endorses the same proposal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

from anchor.errors import AnchorError, Reason

__all__ = [
    "CHAIN_ERROR_REASONS",
    "AnchorConfirmation",
    "AnchorTx",
    "ChainBackend",
    "ChainError",
    "TxStatus",
    "check_recorded_anchor",
]

TxStatus = Literal["pending", "mined", "dropped", "failed"]

#: Every ``ChainError.reason``; only ``chain_unavailable`` is retryable by default.
CHAIN_ERROR_REASONS = (
    Reason.CHAIN_UNAVAILABLE,
    Reason.CHAIN_MISMATCH,
    Reason.TX_REJECTED,
    Reason.TX_REVERTED,
    Reason.ALREADY_ANCHORED,
    Reason.ANCHOR_VANISHED,
    Reason.CHAIN_ERROR,
)


class ChainError(AnchorError):
    """A chain backend failed. ``reason`` is one of :data:`CHAIN_ERROR_REASONS`:

    - ``chain_unavailable``: the RPC endpoint refused, timed out or answered garbage (retryable).
    - ``chain_mismatch``: the endpoint serves another chain id than configured.
    - ``tx_rejected``: the node refused the transaction (underpriced, nonce taken, no funds, not
      on the contract's allow-list, ...).
    - ``tx_reverted``: the transaction was mined but reverted, or a call reverted.
    - ``already_anchored``: the root is already anchored on this contract.
    - ``anchor_vanished``: an anchor recorded as confirmed is not on the chain as recorded any
      more (``anchoredAt(root)`` is 0 or names another block, or the recorded block is no longer
      canonical): a reorg, or a node restarted from an older state.
    - ``chain_error``: anything else (no contract at the address, unexpected answer).
    """

    reason = Reason.CHAIN_ERROR

    def __init__(
        self, detail: str, *, reason: Reason | None = None, retryable: bool | None = None
    ) -> None:
        super().__init__(detail, reason=reason)
        self.retryable = self.reason == Reason.CHAIN_UNAVAILABLE if retryable is None else retryable


@dataclass(frozen=True, slots=True)
class AnchorTx:
    """A signed, not necessarily sent, anchoring transaction: persist it before broadcasting.

    ``raw_tx`` are the exact signed bytes; ``tx_hash`` is their 0x-hex hash (the id the chain
    will know the transaction by). ``nonce`` is the account's transaction slot; ``fee_fields``
    the fee parameters it was signed with (e.g. ``maxFeePerGas``, ``maxPriorityFeePerGas`` or
    ``gasPrice``, and ``gas``), which a replacement must outbid.
    """

    backend: str
    chain_id: int
    contract: str
    root: bytes
    tree_size: int
    tx_hash: str
    raw_tx: bytes = field(repr=False)
    nonce: int
    fee_fields: Mapping[str, int]

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (bytes as 0x-hex), e.g. for a jsonb column; see :meth:`from_json`."""
        return {
            "backend": self.backend,
            "chain_id": self.chain_id,
            "contract": self.contract,
            "root": "0x" + self.root.hex(),
            "tree_size": self.tree_size,
            "tx_hash": self.tx_hash,
            "raw_tx": "0x" + self.raw_tx.hex(),
            "nonce": self.nonce,
            "fee_fields": dict(self.fee_fields),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AnchorTx:
        """Inverse of :meth:`to_json`.

        Raises:
            ChainError: ``chain_error`` when a field is missing or malformed.
        """
        try:
            return cls(
                backend=str(data["backend"]),
                chain_id=int(data["chain_id"]),
                contract=str(data["contract"]),
                root=bytes.fromhex(str(data["root"]).removeprefix("0x")),
                tree_size=int(data["tree_size"]),
                tx_hash=str(data["tx_hash"]),
                raw_tx=bytes.fromhex(str(data["raw_tx"]).removeprefix("0x")),
                nonce=int(data["nonce"]),
                fee_fields={str(k): int(v) for k, v in dict(data["fee_fields"]).items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ChainError(f"stored anchor transaction is malformed: {exc}") from exc


@dataclass(frozen=True, slots=True)
class AnchorConfirmation:
    """Where and when a root was anchored, once it has ``confirmations`` >= the configured N.

    ``block_time`` is the block's timestamp (UTC, timezone-aware): the receipt's "existed no
    later than" time. ``confirmations`` counts the anchoring block itself (1 = just mined).
    ``block_hash`` (32 bytes, when the backend knows it) identifies the block beyond its
    number, so a later re-check can tell that a reorg replaced it.
    """

    chain_id: int
    contract: str
    tx_hash: str
    block_number: int
    block_time: datetime
    confirmations: int
    block_hash: bytes | None = None


@runtime_checkable
class ChainBackend(Protocol):
    """What the anchoring job needs from one chain (see the module docstring for the flow).

    All methods may raise :class:`ChainError`; ``chain_unavailable`` ones are retryable.
    """

    @property
    def name(self) -> str:
        """The backend's configured name (unique per deployment, e.g. ``"bsn-evm"``)."""
        ...

    @property
    def chain_id(self) -> int:
        """The configured chain id; the backend refuses an endpoint that reports another."""
        ...

    @property
    def contract(self) -> str:
        """The registry's address or id on the chain, as it appears in receipts."""
        ...

    def ping(self) -> None:
        """Check the endpoint answers, serves ``chain_id`` and has the contract; or raise."""
        ...

    def anchored_at(self, root: bytes) -> int:
        """The block number that anchored ``root`` (32 bytes), 0 if it never was."""
        ...

    def prepare(
        self,
        root: bytes,
        tree_size: int,
        *,
        nonce: int | None = None,
        replaces: AnchorTx | None = None,
    ) -> AnchorTx:
        """Build and sign the anchoring transaction; send nothing.

        ``nonce`` forces a slot; ``replaces`` reuses the slot of an earlier transaction with a
        higher fee. Raises ``already_anchored`` when the root is already on chain and
        ``tx_rejected`` / ``tx_reverted`` when a dry run shows the transaction would fail.
        """
        ...

    def broadcast(self, tx: AnchorTx) -> None:
        """Send ``tx.raw_tx``; idempotent (already known or already mined counts as sent)."""
        ...

    def status(self, tx: AnchorTx) -> TxStatus:
        """``pending``, ``mined``, ``failed`` (mined but reverted) or ``dropped``."""
        ...

    def confirmation(self, tx: AnchorTx) -> AnchorConfirmation | None:
        """The confirmation once ``tx`` has the configured confirmations, else None.

        Raises ``tx_reverted`` (or ``already_anchored`` when it reverted because another
        transaction anchored the root first) for a mined transaction that failed.
        """
        ...

    def next_nonce(self) -> int:
        """The chain's pending nonce for our account; the backend continues from it."""
        ...

    def find_anchor(self, root: bytes) -> AnchorConfirmation | None:
        """The confirmed anchor of ``root`` found on chain without a tx hash, else None.

        None also while the anchor has fewer than the configured confirmations; use
        :meth:`anchored_at` to tell "not anchored" from "anchored, not yet confirmed".
        """
        ...

    def latest_block(self) -> int:
        """The number of the chain's newest block."""
        ...

    def block_hash(self, number: int) -> bytes | None:
        """The hash of the canonical block ``number``, None when the chain has no such block."""
        ...


def check_recorded_anchor(
    backend: ChainBackend, *, root: bytes, block_number: int, block_hash: bytes | None
) -> ChainError | None:
    """Is the anchor recorded at ``block_number`` (block ``block_hash``) still on the chain?

    None when it is; else a :class:`ChainError` with reason ``anchor_vanished`` whose detail
    says what the chain answered. Three ways to vanish: ``anchoredAt(root)`` is 0 (the
    transaction is gone: a reorg, a node restarted from an older state), it names another block
    (the transaction was mined again elsewhere after a reorg), or the block at that height is
    not the recorded one any more (re-mined at the same height: its time may differ, and the
    receipt's ``block_time`` with it). ``block_hash`` None (anchors recorded before block hashes
    were) skips the last test. Blocking; other :class:`ChainError` (``chain_unavailable``)
    propagate: an unanswered question is never taken for a vanished anchor.
    """
    at = backend.anchored_at(root)
    if at == 0:
        return ChainError(
            f"anchoredAt({root.hex()}) is 0 on chain {backend.chain_id} (recorded in block "
            f"{block_number}; the chain's head is block {backend.latest_block()})",
            reason=Reason.ANCHOR_VANISHED,
        )
    if at != block_number:
        return ChainError(
            f"root {root.hex()} is anchored in block {at} on chain {backend.chain_id}, "
            f"recorded in block {block_number}",
            reason=Reason.ANCHOR_VANISHED,
        )
    if block_hash is not None:
        canonical = backend.block_hash(block_number)
        if canonical != block_hash:
            now = "missing" if canonical is None else "0x" + canonical.hex()
            return ChainError(
                f"block {block_number} on chain {backend.chain_id} is {now}, recorded "
                f"0x{block_hash.hex()}: the block was reorganised",
                reason=Reason.ANCHOR_VANISHED,
            )
    return None
