"""One monitor round: fetch, open, compare, record (the rules are :mod:`anchor.log_view`'s).

A round (c2sp.org/tlog-witness and RFC 9162 section 8.1.2 describe the same duties):

1. the latest checkpoint, opened with the log key; its witness cosignatures counted;
2. compared with the view: same size other root is evidence at once; a larger or smaller one
   needs a consistency proof from the API, checked here; a proof that fails (or that the API
   cannot give) makes the monitor fetch the log's note of the size it verified, since a second
   operator-signed root for that size is self-contained evidence;
3. on each chain, the registry's ``Anchored`` events since the last block read, page by page;
   those sent by the operator's accounts must name the root of the signed checkpoint of their
   size, which is then compared with the view as in 2 (anyone can call ``anchor()``);
4. a random sample of receipts, verified with the log key, their checkpoints compared as in 2.

The first evidence ends the round; it is kept in the state, so a restart reports it again.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from anchor.checkpoint import NoteVerifier
from anchor.cosignature import CosignerVerifier, verified_cosignatures
from anchor.errors import AnchorError
from anchor.log_view import (
    AnchoredEvent,
    Evidence,
    EvidenceKind,
    ProofNeeded,
    SignedHead,
    check_anchor,
    compare,
    rollback,
    same_size,
    settle,
)
from anchor.monitor.api_client import ApiClient, MonitorError
from anchor.monitor.output import MonitorMetrics, post_webhook, write_evidence
from anchor.monitor.state import MonitorState
from anchor.receipt import loads_receipt
from anchor.verify import verify_receipt

__all__ = ["Monitor", "MonitorConfig", "RoundResult"]

log = logging.getLogger("anchor.monitor")


@dataclass(frozen=True, slots=True, kw_only=True)
class MonitorConfig:
    """What to follow and what to trust (keyword-only)."""

    api_url: str
    log_key: NoteVerifier
    state_path: Path
    rpc_urls: tuple[str, ...] = ()
    contract: str | None = None
    submitters: tuple[str, ...] = ()
    witnesses: tuple[CosignerVerifier, ...] = ()
    witness_quorum: int = 0
    sample: int = 2
    sample_devices: tuple[str, ...] = ()
    webhook: str | None = None
    block_page: int = 2000
    from_block: int = 0
    confirmations: int = 1
    timeout_s: float = 10.0


@dataclass
class RoundResult:
    """The status of one round (``to_dict`` is the ``--json`` line) and its evidence, if any."""

    status: dict[str, Any] = field(default_factory=dict)
    evidence: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.evidence is None


class _Found(Exception):
    """Raised inside a round to stop it at the first evidence."""

    def __init__(self, evidence: Evidence) -> None:
        super().__init__(evidence.detail)
        self.evidence = evidence


class Monitor:
    """Follows one log; :meth:`run_round` once per period. Not thread-safe."""

    def __init__(
        self,
        config: MonitorConfig,
        *,
        metrics: MonitorMetrics | None = None,
        api: ApiClient | None = None,
        chain_factory: Callable[[str], Any] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.api = api or ApiClient(config.api_url, timeout_s=config.timeout_s)
        self.state = MonitorState.load(config.state_path, config.log_key)
        self._rng = rng or random.SystemRandom()
        self._chain_factory = chain_factory
        self._chains: list[Any] | None = None

    # ------------------------------------------------------------------------- the round
    def run_round(self) -> RoundResult:
        """Run one round; raises ``MonitorError`` when the API or a chain cannot be read."""
        if self.state.alarm is not None:
            return RoundResult({"ok": False, "alarm": "standing"}, self.state.alarm)
        status: dict[str, Any] = {"time": _now(), "ok": True}
        try:
            self._round(status)
        except _Found as found:
            document = self._alarm(found.evidence)
            status.update(ok=False, alarm=str(found.evidence.kind))
            self._count("alarm")
            return RoundResult(status, document)
        except MonitorError:
            self._count("error")
            self.state.save(self.config.state_path)  # keep what this round did verify
            raise
        self.state.rounds += 1
        self.state.save(self.config.state_path)
        self._count("ok")
        head = self.state.view.head
        status["round"] = self.state.rounds
        if head is not None:
            status.update(size=head.size, root=head.root.hex())
        return RoundResult(status)

    def _round(self, status: dict[str, Any]) -> None:
        note = self.api.latest_checkpoint()
        if note is None:
            head = self.state.view.head
            if head is not None:
                # An unsigned 404 proves nothing against the operator, but it is never normal.
                raise MonitorError(
                    f"the API says the log is empty after serving a signed size {head.size}"
                )
            status["log"] = "empty"
        else:
            latest = self._open(note, "the latest checkpoint")
            self._witnesses(note, status)
            self._observe(latest, latest=True)
        self._anchors(status)
        self._receipts(status)

    def _open(self, note: str, what: str) -> SignedHead:
        try:
            return SignedHead.open(note, self.config.log_key)
        except AnchorError as exc:
            # Not signed by the operator: no evidence against the operator (anyone can send
            # garbage between us and the API), but nothing to believe either.
            raise MonitorError(f"{what} does not verify with the log key: {exc}") from exc

    def _observe(self, cp: SignedHead, *, latest: bool = False) -> None:
        """Compare ``cp`` with the view (raising ``_Found`` with evidence) and record it."""
        view = self.state.view
        verdict = compare(view, cp)
        if isinstance(verdict, Evidence):
            raise _Found(verdict)
        if isinstance(verdict, ProofNeeded) and latest and cp.size < verdict.new.size:
            self._rolled_back(verdict, cp)
        if isinstance(verdict, ProofNeeded):
            try:
                proof = self.api.consistency(verdict.old.size, verdict.new.size)
            except MonitorError:
                self._same_size_check(verdict, cp)
                raise
            evidence = settle(verdict, proof)
            if evidence is not None:
                self._same_size_check(verdict, cp)
                raise _Found(evidence)
        self.state.view = view.record(cp)
        if latest and self.metrics is not None and self.state.view.head is not None:
            self.metrics.size.set(self.state.view.head.size)

    def _rolled_back(self, need: ProofNeeded, cp: SignedHead) -> None:
        """The latest checkpoint is below the view's head: always evidence. With the proof
        from it to the head when the log still gives one (a failing one makes it a fork)."""
        try:
            proof = self.api.consistency(need.old.size, need.new.size)
        except MonitorError as exc:
            log.warning("no consistency proof for the rolled-back checkpoint: %s", exc)
            proof = []
        else:
            evidence = settle(need, proof)
            if evidence is not None:
                raise _Found(evidence)
        self._same_size_check(need, cp)
        evidence = rollback(self.state.view, cp, proof)
        assert evidence is not None
        raise _Found(evidence)

    def _same_size_check(self, need: ProofNeeded, cp: SignedHead) -> None:
        """After a failed or missing proof: the log's note of the size we had verified, if it
        has another root, is the stronger evidence (two operator-signed roots for one size)."""
        known = need.old if need.new is cp else need.new
        fetched_note = self.api.checkpoint_at(known.size)
        if fetched_note is None:
            return
        try:
            fetched = SignedHead.open(fetched_note, self.config.log_key)
        except AnchorError:
            return
        evidence = same_size(known, fetched)
        if evidence is not None:
            raise _Found(evidence)

    def _witnesses(self, note: str, status: dict[str, Any]) -> None:
        if not self.config.witnesses:
            return
        quorum = self.config.witness_quorum
        report: dict[str, Any] = {"quorum": quorum}
        try:
            found = verified_cosignatures(note, self.config.witnesses)
            report["cosigned_by"] = sorted(c.witness.name for c in found)
        except AnchorError as exc:
            found = ()
            report["invalid"] = f"[{exc.reason}] {exc.detail}"
            log.warning("latest checkpoint carries a bad witness cosignature: %s", exc)
            if self.metrics is not None:
                self.metrics.witness_bad.inc()
        missing = len(found) < quorum
        report["quorum_missing"] = missing
        if missing:
            log.warning(
                "latest checkpoint has %d of %d witness cosignatures required", len(found), quorum
            )
        if self.metrics is not None:
            self.metrics.quorum_missing.set(1 if missing else 0)
        status["witnesses"] = report

    # ------------------------------------------------------------------------- anchors
    def _chain_list(self) -> list[Any]:
        if self._chains is None:
            factory = self._chain_factory
            if factory is None:
                # web3 costs a second to import: only when a chain is followed.
                from anchor.monitor.chain import ChainFollower  # noqa: PLC0415

                timeout = self.config.timeout_s

                def factory(url: str) -> Any:
                    return ChainFollower(url, timeout_s=timeout)

            self._chains = [factory(url) for url in self.config.rpc_urls]
        return self._chains

    def _anchors(self, status: dict[str, Any]) -> None:
        chains = self._chain_list()
        if not chains:
            return
        by_id = {chain.chain_id(): chain for chain in chains}
        if not (self.config.contract and self.config.submitters):
            self._learn_from_api(by_id)
        report: dict[str, Any] = {}
        for chain_id, chain in by_id.items():
            contract = self.config.contract or self.state.contracts.get(str(chain_id))
            if self.config.submitters:
                submitters = {s.lower() for s in self.config.submitters}
            else:
                submitters = set(self.state.submitters)
            if contract is None or not submitters:
                # Do not advance: the events stay unread until we know whose they are.
                report[str(chain_id)] = {"skipped": "no contract or operator account known yet"}
                continue
            key = f"{chain_id}:{contract.lower()}"
            report[str(chain_id)] = self._follow(chain, contract, submitters, key)
        status["anchors"] = report

    def _learn_from_api(self, by_id: dict[int, Any]) -> None:
        """The registry and the operator's accounts, from the anchors the API lists: each
        listed transaction's sender (asked of the chain, not the API). Resumes from the last
        log size read; a transaction our node does not know yet is asked again next round."""
        for item in self.api.anchors(self.state.anchors_since):
            chain = by_id.get(item.get("chain_id"))  # type: ignore[arg-type]
            tx, contract = item.get("tx_hash"), item.get("contract")
            if chain is not None and isinstance(tx, str) and isinstance(contract, str):
                self.state.contracts.setdefault(str(chain.chain_id()), contract)
                sender = chain.tx_sender(tx)
                if sender is None:
                    return
                self.state.submitters.add(sender.lower())
            size = item.get("log_size")
            if isinstance(size, int) and size > 0:
                # Exclusive cursor; the last size is read again (other backends' anchors of it).
                self.state.anchors_since = max(self.state.anchors_since, size - 1)

    def _follow(self, chain: Any, contract: str, submitters: set[str], key: str) -> dict[str, Any]:
        start = self.state.next_block.get(key, self.config.from_block)
        last = chain.latest_block() - max(0, self.config.confirmations - 1)
        checked = ignored = 0
        while start <= last:
            end = min(last, start + self.config.block_page - 1)
            for event in chain.anchored_events(contract, start, end):
                if event.submitter.lower() not in submitters:
                    ignored += 1  # anyone may call anchor(); only the operator's count
                    continue
                self._check_anchor(event)
                checked += 1
            start = end + 1
            self.state.next_block[key] = start
        if self.metrics is not None and checked:
            self.metrics.anchors.inc(checked)
        return {"next_block": start, "checked": checked, "ignored": ignored}

    def _check_anchor(self, event: AnchoredEvent) -> None:
        note = self.api.checkpoint_at(event.tree_size) if event.tree_size > 0 else None
        signed = None
        if note is not None:
            try:
                signed = SignedHead.open(note, self.config.log_key)
            except AnchorError:
                signed = None
        evidence = check_anchor(event, signed)
        if evidence is not None:
            raise _Found(evidence)
        assert signed is not None
        try:
            self._observe(signed)
        except _Found as found:  # the anchored checkpoint contradicts the view: say which tx
            raise _Found(replace(found.evidence, anchor=event)) from None

    # ------------------------------------------------------------------------- receipts
    def _receipts(self, status: dict[str, Any]) -> None:
        devices = self.config.sample_devices
        if not devices or self.config.sample <= 0:
            return
        checked = missing = 0
        for _ in range(self.config.sample):
            device = self._rng.choice(devices)
            top = self.state.receipt_seq.get(device, 0)
            # Mostly below the highest seq found so far, sometimes just above it, to grow.
            seq = self._rng.randint(1, top) if top and self._rng.random() < 0.7 else top + 1
            raw = self.api.receipt(device, seq)
            if raw is None:
                missing += 1
                continue
            self.state.receipt_seq[device] = max(top, seq)
            try:
                receipt = loads_receipt(raw)
            except AnchorError as exc:
                raise _Found(self._receipt_evidence(device, seq, raw, [exc.detail])) from None
            report = verify_receipt(receipt, log_verifiers=[self.config.log_key])
            if not report.valid:
                failed = [f"{c.name} [{c.reason}] {c.detail}" for c in report.failures]
                raise _Found(self._receipt_evidence(device, seq, raw, failed))
            checked += 1
            if receipt.status != "erased":
                self._observe(SignedHead.open(receipt.checkpoint, self.config.log_key))
        if self.metrics is not None and checked:
            self.metrics.receipts.inc(checked)
        status["receipts"] = {"checked": checked, "not_found": missing}

    @staticmethod
    def _receipt_evidence(device: str, seq: int, raw: bytes, failed: Sequence[str]) -> Evidence:
        try:
            document: Any = json.loads(raw)
        except ValueError:
            document = raw.decode("utf-8", "replace")
        return Evidence(
            EvidenceKind.RECEIPT_INVALID,
            f"the receipt of {device} seq {seq} fails: " + "; ".join(failed),
            receipt={"device_id": device, "seq": seq, "failed": list(failed), "document": document},
        )

    # ------------------------------------------------------------------------- alarms
    def _alarm(self, evidence: Evidence) -> dict[str, Any]:
        document, path = write_evidence(
            evidence, state_path=self.config.state_path, log_vkey=self.config.log_key.vkey()
        )
        self.state.alarm = document
        self.state.save(self.config.state_path)
        log.error("%s: %s (evidence in %s)", evidence.kind, evidence.detail, path)
        if self.metrics is not None:
            self.metrics.alarms.labels(kind=str(evidence.kind)).inc()
        return document

    def notify(self, document: dict[str, Any]) -> bool:
        """POST ``document`` to the ``webhook`` (if any), after the caller has printed it and
        :meth:`run_round` has written it to disk: a slow receiver never delays detection."""
        return post_webhook(self.config.webhook, document) if self.config.webhook else False

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.rounds.labels(outcome=outcome).inc()
            if outcome != "error":
                self.metrics.last_check.set_to_current_time()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
