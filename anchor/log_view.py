"""A monitor's verified view of one log, and the pure rules that compare it with what comes next.

CONSENSUS-CRITICAL for monitors: a rule here that lets an inconsistent checkpoint pass hides a
split view, and one that flags an honest log raises a false alarm that a regulator may act on.

The view (:class:`LogView`) holds the largest checkpoint the monitor has verified and, for fork
evidence, every operator-signed note it has checked, one per size. Everything in it was opened
with the operator's key and proved consistent with everything else in it: a checkpoint joins only
after :func:`compare` and :func:`settle` said so. The rules, for a newly opened checkpoint
``cp`` (c2sp.org/tlog-checkpoint; RFC 9162 section 2.1.4 for consistency):

1. a note of the same size was seen with another root: two operator-signed checkpoints that
   cannot both be true; evidence ``log_fork`` at once, no proof needed;
2. the same size and root were seen: nothing to do;
3. otherwise a consistency proof between ``cp`` and the view's head is needed
   (:class:`ProofNeeded`, head to ``cp`` when ``cp`` is larger, ``cp`` to head when smaller),
   and :func:`settle` checks it: a proof that fails is evidence ``log_fork`` (the two notes and
   the proof, which ``cityanchor verify-consistency`` re-checks without the monitor). The head is
   consistent with every earlier member, so one proof against it covers them all.

A log whose *latest* checkpoint is smaller than one it already showed has rolled back
(:func:`rollback`, evidence ``log_rollback``) even when the two are consistent: somebody was
shown the larger head. An ``Anchored`` event of the operator's account must name the root of the
operator's signed checkpoint of that size (:func:`check_anchor`, evidence
``anchor_inconsistent``). Evidence documents (:meth:`Evidence.to_dict`) hold the notes in full,
hex roots and proofs, the transactions, and the command that checks them.

Pure: no I/O, no clock, no randomness; the monitor wing (:mod:`anchor.monitor`) fetches and
stores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from anchor.checkpoint import NoteVerifier, open_checkpoint
from anchor.errors import AnchorError, ProofError, Reason
from anchor.merkle import verify_consistency

__all__ = [
    "MAX_SEEN",
    "STATE_FORMAT",
    "AnchoredEvent",
    "Evidence",
    "EvidenceKind",
    "LogView",
    "MonitorStateError",
    "ProofNeeded",
    "SignedHead",
    "check_anchor",
    "compare",
    "rollback",
    "same_size",
    "settle",
]

STATE_FORMAT = "cityanchor/monitor-view/v1"
"""The ``format`` member of a serialised view; any other value is refused."""

MAX_SEEN = 10_000
"""Most signed notes a view keeps (about 2 MB of text); the smallest sizes go first, never the
head. A forgotten size only means a later conflict there needs a proof instead of a note."""


class MonitorStateError(AnchorError):
    """A serialised view is unreadable, of another format, or holds a note that does not verify
    with the log key (``monitor_state_invalid``). Never silently reset: the view is what lets the
    monitor notice a fork that happened while it was stopped."""

    reason = Reason.MONITOR_STATE_INVALID


class EvidenceKind(StrEnum):
    """What an :class:`Evidence` shows; each is also a code of :class:`~anchor.errors.Reason`."""

    LOG_FORK = "log_fork"
    LOG_ROLLBACK = "log_rollback"
    ANCHOR_INCONSISTENT = "anchor_inconsistent"
    RECEIPT_INVALID = "receipt_invalid"


@dataclass(frozen=True, slots=True)
class SignedHead:
    """A checkpoint opened with the operator's key: its ``size``, 32-byte ``root`` and the whole
    signed ``note`` (kept verbatim so that evidence carries the operator's own signature)."""

    size: int
    root: bytes
    note: str

    @classmethod
    def open(cls, note: str, verifier: NoteVerifier, *, origin: str | None = None) -> SignedHead:
        """Verify ``note`` with ``verifier`` (and ``origin`` when given) and keep it.

        Raises ``CheckpointError`` as :func:`~anchor.checkpoint.open_checkpoint` does.
        """
        cp = open_checkpoint(note, verifier, origin=origin)
        return cls(cp.size, cp.root, note)

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "root": self.root.hex(), "note": self.note}


@dataclass(frozen=True, slots=True)
class AnchoredEvent:
    """One ``Anchored(bytes32 indexed root, uint64 treeSize, address indexed submitter)`` log."""

    chain_id: int
    contract: str
    tx_hash: str
    block_number: int
    log_index: int
    root: bytes
    tree_size: int
    submitter: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "contract": self.contract,
            "tx_hash": self.tx_hash,
            "block_number": self.block_number,
            "log_index": self.log_index,
            "root": self.root.hex(),
            "tree_size": self.tree_size,
            "submitter": self.submitter,
        }


@dataclass(frozen=True, slots=True)
class ProofNeeded:
    """A consistency proof from ``old`` (the smaller) to ``new`` is needed before ``new`` (or,
    for a smaller checkpoint, ``old``) can be believed."""

    old: SignedHead
    new: SignedHead


@dataclass(frozen=True, slots=True)
class Evidence:
    """Self-contained proof that the log is inconsistent, or that one of its products fails.

    ``old`` and ``new`` are two operator-signed checkpoints (``old.size <= new.size``) that
    cannot both be true given ``proof`` (empty for two of one size); for ``anchor_inconsistent``
    ``anchor`` is the event and ``old`` the signed checkpoint of its size it contradicts (None
    when the log has none); for ``receipt_invalid`` ``receipt`` holds the document and the
    failed checks.
    """

    kind: EvidenceKind
    detail: str
    old: SignedHead | None = None
    new: SignedHead | None = None
    proof: tuple[bytes, ...] = ()
    anchor: AnchoredEvent | None = None
    receipt: Mapping[str, Any] | None = field(default=None, compare=False)

    def how_to_check(self, files: Mapping[str, str] | None = None) -> str:
        """The command(s) a third party runs to confirm this evidence without the monitor.

        ``files`` names where the monitor wrote ``old`` and ``new`` notes, ``proof`` and
        ``log_key``; without it the command uses placeholder names.
        """
        f = {
            "old": "old.note",
            "new": "new.note",
            "proof": "proof.json",
            "log_key": "log.vkey",
            "receipt": "receipt.json",
        }
        f.update(files or {})
        verify = (
            f"cityanchor verify-consistency {f['old']} {f['new']} --log-key {f['log_key']} "
            f"--proof {f['proof']}"
        )
        if self.kind is EvidenceKind.LOG_FORK:
            return (
                f"{verify}  # exits 1: both notes verify with the operator's key, and "
                f"the {self.new.size if self.new else '?'}-size one does not extend the other"
            )
        if self.kind is EvidenceKind.LOG_ROLLBACK:
            served = (
                f"both notes verify with the operator's key; the log served the size-"
                f"{self.old.size if self.old else '?'} one as its latest after the size-"
                f"{self.new.size if self.new else '?'} one"
            )
            if not self.proof:
                return f"{served} (the log gave no consistency proof between them)"
            return f"{verify}  # {served}; exit 0 says they are at least consistent"
        if self.kind is EvidenceKind.ANCHOR_INCONSISTENT and self.anchor is not None:
            a = self.anchor
            return (
                f"eth_getTransactionReceipt {a.tx_hash} on chain {a.chain_id}: the Anchored log "
                f"(index {a.log_index}, block {a.block_number}) of contract {a.contract} names "
                f"root {a.root.hex()} at size {a.tree_size} from {a.submitter}; "
                + (
                    f"the operator-signed checkpoint of that size ({f['old']}, check it with "
                    f"the log key {f['log_key']}) has root {self.old.root.hex()}"
                    if self.old is not None
                    else "the log has no signed checkpoint of that size"
                )
            )
        return (
            f"cityanchor verify {f['receipt']} --log-key {f['log_key']}  # exits 1, naming the "
            "failed checks (device signatures are skipped without --device-key)"
        )

    def to_dict(self, *, files: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The JSON evidence document (hex roots and proof, notes in full)."""
        doc: dict[str, Any] = {"kind": str(self.kind), "detail": self.detail}
        for name in ("old", "new"):
            head: SignedHead | None = getattr(self, name)
            if head is not None:
                doc[name] = head.to_dict()
        if self.old is not None and self.new is not None:
            doc["proof"] = [h.hex() for h in self.proof]
        if self.anchor is not None:
            doc["anchor"] = self.anchor.to_dict()
        if self.receipt is not None:
            doc["receipt"] = dict(self.receipt)
        if files:
            doc["files"] = dict(files)
        doc["how_to_check"] = self.how_to_check(files)
        return doc


@dataclass(frozen=True, slots=True)
class LogView:
    """What a monitor believes about one log: ``seen`` signed checkpoints by size (every one
    opened with the log key and consistent with all the others), the largest being the head."""

    seen: Mapping[int, SignedHead] = field(default_factory=dict)

    @property
    def head(self) -> SignedHead | None:
        return self.seen[max(self.seen)] if self.seen else None

    def at(self, size: int) -> SignedHead | None:
        return self.seen.get(size)

    def record(self, head: SignedHead) -> LogView:
        """The view with ``head`` added. Precondition: :func:`compare` (and :func:`settle`, when
        it asked for a proof) found ``head`` consistent with this view."""
        seen = dict(self.seen)
        seen[head.size] = head
        if len(seen) > MAX_SEEN:
            top = max(seen)
            for size in sorted(seen)[: len(seen) - MAX_SEEN]:
                if size != top:
                    del seen[size]
        return replace(self, seen=dict(sorted(seen.items())))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "seen": [{"size": h.size, "note": h.note} for h in self.seen.values()],
        }

    @classmethod
    def from_dict(cls, doc: object, verifier: NoteVerifier) -> LogView:
        """Read a view written by :meth:`to_dict`, re-opening every note with ``verifier`` (a
        state file is not trusted more than the log). Raises ``MonitorStateError``."""
        if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
            got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
            raise MonitorStateError(f"view format is {got!r}, expected {STATE_FORMAT!r}")
        items = doc.get("seen")
        if not isinstance(items, list):
            raise MonitorStateError("view has no list of seen checkpoints")
        seen: dict[int, SignedHead] = {}
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("note"), str):
                raise MonitorStateError(f"seen checkpoint {i} has no note")
            try:
                head = SignedHead.open(item["note"], verifier)
            except AnchorError as exc:
                raise MonitorStateError(
                    f"seen checkpoint {i} does not verify with the log key: {exc.detail}"
                ) from exc
            if item.get("size") != head.size or head.size in seen:
                raise MonitorStateError(f"seen checkpoint {i}: size {item.get('size')!r} is wrong")
            seen[head.size] = head
        return cls(dict(sorted(seen.items())))


def compare(view: LogView, cp: SignedHead) -> Evidence | ProofNeeded | None:
    """Rules 1-3 of the module docstring: evidence, a proof to fetch, or None (already known,
    or the view is empty and ``cp`` starts it: trust on first use, as every witness does)."""
    known = view.at(cp.size)
    if known is not None:
        if known.root == cp.root:
            return None
        return Evidence(
            EvidenceKind.LOG_FORK,
            f"two operator-signed checkpoints of size {cp.size} with different roots "
            f"({known.root.hex()} and {cp.root.hex()})",
            old=known,
            new=cp,
        )
    head = view.head
    if head is None:
        return None
    return ProofNeeded(head, cp) if cp.size > head.size else ProofNeeded(cp, head)


def settle(need: ProofNeeded, proof: Sequence[bytes]) -> Evidence | None:
    """Rule 3: None when ``proof`` shows ``need.old`` is a prefix of ``need.new``, else
    ``log_fork`` evidence carrying both signed notes and the proof that failed."""
    try:
        verify_consistency(need.old.size, need.new.size, list(proof), need.old.root, need.new.root)
    except ProofError as exc:
        return Evidence(
            EvidenceKind.LOG_FORK,
            f"the operator-signed checkpoint of size {need.new.size} does not extend the one of "
            f"size {need.old.size}: [{exc.reason}] {exc.detail}",
            old=need.old,
            new=need.new,
            proof=tuple(proof),
        )
    return None


def same_size(known: SignedHead, fetched: SignedHead) -> Evidence | None:
    """``log_fork`` evidence when the log now signs another root for a size already seen."""
    verdict = compare(LogView({known.size: known}), fetched) if known.size == fetched.size else None
    return verdict if isinstance(verdict, Evidence) else None


def rollback(view: LogView, latest: SignedHead, proof: Sequence[bytes]) -> Evidence | None:
    """``log_rollback`` evidence when the log's *latest* checkpoint is smaller than the view's
    head; ``proof`` (latest to head) is included so the evidence says whether it is also a fork."""
    head = view.head
    if head is None or latest.size >= head.size:
        return None
    return Evidence(
        EvidenceKind.LOG_ROLLBACK,
        f"the log's latest checkpoint has size {latest.size}, below the size {head.size} it "
        "signed and served before",
        old=latest,
        new=head,
        proof=tuple(proof),
    )


def check_anchor(event: AnchoredEvent, signed: SignedHead | None) -> Evidence | None:
    """An operator-submitted anchor must name the root of the operator's signed checkpoint of
    its size: None when it does, ``anchor_inconsistent`` evidence when ``signed`` (the log's note
    of ``event.tree_size``, None if it has none) has another root or is missing."""
    if signed is not None and signed.size == event.tree_size and signed.root == event.root:
        return None
    if signed is None:
        detail = (
            f"the operator anchored root {event.root.hex()} at size {event.tree_size} "
            f"(tx {event.tx_hash}), and the log has no signed checkpoint of that size"
        )
    else:
        detail = (
            f"the operator anchored root {event.root.hex()} at size {event.tree_size} "
            f"(tx {event.tx_hash}), but its signed checkpoint of size {signed.size} has root "
            f"{signed.root.hex()}"
        )
    return Evidence(EvidenceKind.ANCHOR_INCONSISTENT, detail, old=signed, anchor=event)
