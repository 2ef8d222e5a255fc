"""The anchoring job: one transaction per backend per period, whatever the volume.

Each period, for every configured backend independently (one being down never holds back the
others), the job takes the newest signed checkpoint of the batch log and makes sure that it ends
up anchored exactly once:

1. if the backend already has a confirmed anchor at that log size or later: nothing to do;
2. if a transaction of ours is open (prepared or sent), settle it first: broadcast it again when
   it was prepared but maybe never sent, record it once it has its confirmations, replace it
   with a higher fee when the network dropped it, recover the anchor from the chain when it
   reverted because the root was anchored meanwhile;
3. otherwise ask the chain whether the root is anchored already (the crash-recovery path: a
   transaction mined after our records were lost); if so, record that anchor;
4. otherwise prepare and sign a new transaction, **persist it (commit) before broadcasting**,
   then broadcast it.

Confirmed is not final. A reorg deeper than the confirmations, or a chain node restarted from an
older state, can remove an anchor the job recorded. So, when the job starts (the first step of
each backend) and then every ``recheck_interval_s``, it re-checks that backend's anchors of the
last ``reorg_window_blocks`` blocks, and always its newest one, against the chain
(:func:`anchor.anchoring.chains.base.check_recorded_anchor`: ``anchoredAt(root)`` still names the
recorded
block, and that block is still the recorded one). One that is not is **moved** to
``vanished_anchors`` with reason ``anchor_vanished`` (logged, counted in
``cityanchor_anchors_vanished_total``), so receipts and ``GET /v1/anchors`` stop citing it at once
(receipts fall back to another anchored checkpoint, or say ``"sealed"``); then:

- if the root is on chain elsewhere (the same transaction mined again in another block) and
  confirmed, that anchor is recorded instead, without a new transaction;
- otherwise the backend may send a new transaction at once, without waiting for the next
  period: the newest checkpoint, which is the vanished one when nothing was sealed since, and
  otherwise contains it (the log only grows), so one transaction covers every reading again.

The account's nonce is re-read from the chain, whose pending nonce went back with the reorg.
Backends are independent: with dual anchoring only the chain that lost the anchor re-anchors. An
unanswered question (``chain_unavailable``, a stopped node) is never taken for a vanished
anchor: the re-check is retried after the usual back-off.

Only one job runs at a time across replicas: :meth:`AnchorJob.loop` holds a PostgreSQL advisory
lock (``Store.leadership``); a second instance waits on it and takes over when the first dies.
Chain calls are synchronous (web3) and run in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from anchor.anchoring.chains.base import ChainBackend, ChainError, check_recorded_anchor
from anchor.backoff import Backoff
from anchor.cosigning.job import CosigningJob
from anchor.errors import AnchorError, Reason, UsageError
from anchor.store import CheckpointRecord, Store, StoredAnchor

__all__ = [
    "DEFAULT_RECHECK_INTERVAL_S",
    "DEFAULT_REORG_WINDOW_BLOCKS",
    "AnchorJob",
    "StepResult",
]

#: Blocks back from the head in which recorded anchors are re-checked. Ethereum finalises after
#: two epochs (64 blocks); twice that leaves a margin. Instant-finality chains (QBFT on BSN) do
#: not reorganise, but a node restored from an old backup forgets blocks all the same.
DEFAULT_REORG_WINDOW_BLOCKS = 128
#: Seconds between two re-checks of a backend's recent anchors.
DEFAULT_RECHECK_INTERVAL_S = 30.0

log = logging.getLogger("anchor.anchoring.job")


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one step did for one backend: ``outcome`` is a short stable word."""

    backend: str
    # up_to_date, empty_log, scheduled, sent, pending, confirmed, recovered, replaced, error,
    # waiting (the witness quorum holds anchoring back)
    outcome: str
    log_size: int | None = None
    tx_hash: str | None = None
    detail: str = ""
    # Log sizes of this backend's anchors that this step found gone from the chain and marked.
    vanished: tuple[int, ...] = ()

    @property
    def settled(self) -> bool:
        return self.outcome in ("up_to_date", "empty_log", "confirmed", "recovered")


class AnchorJob:
    """Anchors the newest checkpoint on every backend; see the module docstring."""

    def __init__(
        self,
        *,
        store: Store,
        backends: Sequence[ChainBackend],
        reorg_window_blocks: int = DEFAULT_REORG_WINDOW_BLOCKS,
        recheck_interval_s: float = DEFAULT_RECHECK_INTERVAL_S,
        cosigning: CosigningJob | None = None,
    ) -> None:
        names = [b.name for b in backends]
        if len(set(names)) != len(names):
            raise AnchorError(f"backend names must be unique, got {names}", reason=Reason.USAGE)
        if reorg_window_blocks < 1:
            raise UsageError("the reorg window must be at least 1 block")
        if recheck_interval_s <= 0:
            raise UsageError("the anchor re-check interval must be positive")
        self.store = store
        self.backends = list(backends)
        self.reorg_window_blocks = reorg_window_blocks
        self.recheck_interval_s = recheck_interval_s
        #: Witnessing (issue 13): asked before a new transaction; may hold anchoring back.
        self.cosigning = cosigning
        # Set for one step when the witness quorum holds anchoring back (the result's detail).
        self._witness_wait = ""
        # A failing backend waits 2, 4, ... 60 s (jittered by up to half, so two backends that
        # failed together drift apart) before its next try; the others carry on.
        self._backoff = {n: Backoff(initial_s=2.0, cap_s=60.0, jitter=0.5) for n in names}
        self._next_try: dict[str, float] = dict.fromkeys(names, 0.0)
        # 0: every backend re-checks its recent anchors in its first step (after a restart).
        self._next_check: dict[str, float] = dict.fromkeys(names, 0.0)
        # Backends that lost an anchor: they send a new transaction without waiting for the
        # period (receipts say "sealed" until it is confirmed).
        self._reanchor: set[str] = set()
        #: Anchors this job marked vanished, per backend (the database has the durable count).
        self.vanished_total: dict[str, int] = dict.fromkeys(names, 0)

    # ------------------------------------------------------------------------------ one step
    async def step(self, *, allow_new: bool | Collection[str] = True) -> list[StepResult]:
        """One pass over every backend (concurrently); never raises for a backend's failure.

        Open transactions are always followed up; a new one is sent only when ``allow_new``
        (the loop allows it once per period, so a busy log still costs one tx per period).
        """
        checkpoint = await self.store.latest_checkpoint_record()
        now = time.monotonic()
        due = [b for b in self.backends if now >= self._next_try[b.name]]
        allowed = {b.name for b in due} if allow_new is True else set(allow_new or ())
        self._witness_wait = ""
        sending = any(b.name in allowed or b.name in self._reanchor for b in due)
        if self.cosigning is not None and checkpoint is not None:
            # The witnesses see the checkpoint before the chain does; with the quorum option
            # the newest checkpoint they cosigned is anchored instead, or none (wait).
            newest = checkpoint.log_size
            if sending:
                checkpoint = await self.cosigning.checkpoint_to_anchor(checkpoint)
            else:  # only settling: what may be anchored, without asking the witnesses again
                checkpoint = await self.cosigning.anchorable(checkpoint)
            if checkpoint is None:
                self._witness_wait = (
                    f"[{Reason.WITNESS_QUORUM_NOT_MET}] no checkpoint up to size {newest} has "
                    f"{self.cosigning.quorum} witness cosignature(s)"
                )
        results = await asyncio.gather(
            *(self._guarded(b, checkpoint, b.name in allowed) for b in due)
        )
        return list(results)

    async def _guarded(
        self, backend: ChainBackend, checkpoint: CheckpointRecord | None, allow_new: bool
    ) -> StepResult:
        try:
            result = await self._step(backend, checkpoint, allow_new)
        except AnchorError as exc:
            # Back off this backend only; the others carry on.
            delay = self._backoff[backend.name].next_delay()
            self._next_try[backend.name] = time.monotonic() + delay
            retryable = getattr(exc, "retryable", False)
            log.log(
                logging.WARNING if retryable else logging.ERROR,
                "anchoring on %s failed (%s); next try in %.0fs",
                backend.name,
                exc,
                delay,
            )
            return StepResult(backend.name, "error", detail=f"[{exc.reason}] {exc.detail}")
        self._backoff[backend.name].reset()
        self._next_try[backend.name] = 0.0
        if result.outcome not in ("up_to_date", "empty_log", "pending"):
            log.info(
                json.dumps(
                    {
                        "event": "anchor",
                        "backend": result.backend,
                        "outcome": result.outcome,
                        "log_size": result.log_size,
                        "tx_hash": result.tx_hash,
                        "detail": result.detail,
                    }
                )
            )
        return result

    async def _step(
        self, backend: ChainBackend, checkpoint: CheckpointRecord | None, allow_new: bool
    ) -> StepResult:
        name = backend.name
        vanished: tuple[int, ...] = ()
        if time.monotonic() >= self._next_check[name]:
            vanished = await self._recheck(backend)
        result = await self._advance(backend, checkpoint, allow_new or name in self._reanchor)
        if result.outcome in ("sent", "recovered", "up_to_date", "confirmed"):
            self._reanchor.discard(name)
        return dataclasses.replace(result, vanished=vanished) if vanished else result

    async def _advance(
        self, backend: ChainBackend, checkpoint: CheckpointRecord | None, allow_new: bool
    ) -> StepResult:
        name = backend.name
        open_tx = await self.store.open_anchor_tx(name)
        if open_tx is not None:
            return await self._settle(
                backend, open_tx.id, open_tx.log_size, open_tx.state, open_tx.tx
            )
        if checkpoint is None:
            if self._witness_wait:
                return StepResult(name, "waiting", detail=self._witness_wait)
            return StepResult(name, "empty_log")
        last = await self.store.last_anchor(name)
        if last is not None and last.log_size >= checkpoint.log_size:
            return StepResult(name, "up_to_date", last.log_size, last.tx_hash)
        if not allow_new:
            return StepResult(name, "scheduled", checkpoint.log_size, detail="next period")
        # Recovery path: anchored on chain but not in our records (a crash lost them).
        if await asyncio.to_thread(backend.anchored_at, checkpoint.root):
            found = await asyncio.to_thread(backend.find_anchor, checkpoint.root)
            if found is None:
                return StepResult(
                    name,
                    "pending",
                    checkpoint.log_size,
                    detail="anchored on chain, waiting for confirmations",
                )
            await self.store.record_anchor(name, checkpoint.log_size, checkpoint.root, found)
            return StepResult(name, "recovered", checkpoint.log_size, found.tx_hash)
        # Nothing of ours is open, so the chain's pending nonce is the slot to use. Re-read it
        # rather than trust the local counter: a reorg (even one this job did not see, e.g.
        # marked by `cityanchor audit --mark-vanished`) may have taken our last slots back, and
        # a transaction above a gap would wait in the mempool forever.
        await asyncio.to_thread(backend.next_nonce)
        tx = await asyncio.to_thread(backend.prepare, checkpoint.root, checkpoint.log_size)
        tx_id = await self.store.save_anchor_tx(tx, checkpoint.log_size)  # durable first
        await asyncio.to_thread(backend.broadcast, tx)
        await self.store.set_anchor_tx_state(tx_id, "sent")
        return StepResult(name, "sent", checkpoint.log_size, tx.tx_hash)

    async def _settle(
        self, backend: ChainBackend, tx_id: int, log_size: int, state: str, tx: Any
    ) -> StepResult:
        name = backend.name
        if state == "prepared":
            # Persisted, but the broadcast may never have happened: sending again is idempotent.
            await asyncio.to_thread(backend.broadcast, tx)
            await self.store.set_anchor_tx_state(tx_id, "sent")
        confirmation = await asyncio.to_thread(backend.confirmation, tx)
        if confirmation is not None:
            await self.store.record_anchor(name, log_size, tx.root, confirmation, tx_id=tx_id)
            return StepResult(
                name, "confirmed", log_size, tx.tx_hash, f"block {confirmation.block_number}"
            )
        status = await asyncio.to_thread(backend.status, tx)
        if status in ("pending", "mined"):
            return StepResult(name, "pending", log_size, tx.tx_hash, status)
        # dropped or failed: maybe the root got anchored anyway (by a replacement, or by this
        # same transaction before a reorg); the contract never anchors a root twice.
        if await asyncio.to_thread(backend.anchored_at, tx.root):
            found = await asyncio.to_thread(backend.find_anchor, tx.root)
            if found is None:
                return StepResult(name, "pending", log_size, tx.tx_hash, "awaiting confirmations")
            await self.store.record_anchor(name, log_size, tx.root, found, tx_id=tx_id)
            return StepResult(name, "recovered", log_size, found.tx_hash)
        if status == "failed":
            await self.store.set_anchor_tx_state(tx_id, "failed", "reverted on chain")
            raise ChainError(f"anchor transaction {tx.tx_hash} reverted", reason=Reason.TX_REVERTED)
        pending = await asyncio.to_thread(backend.next_nonce)
        if tx.nonce > pending:
            # The slots below ours are empty again (a reorg took our earlier transactions with
            # it): this slot can never be mined, so take the chain's next one instead.
            replacement = await asyncio.to_thread(
                lambda: backend.prepare(tx.root, tx.tree_size, nonce=pending)
            )
        else:
            replacement = await asyncio.to_thread(
                lambda: backend.prepare(tx.root, tx.tree_size, replaces=tx)
            )
        new_id = await self.store.save_anchor_tx(replacement, log_size, replaces=tx_id)
        await asyncio.to_thread(backend.broadcast, replacement)
        await self.store.set_anchor_tx_state(new_id, "sent")
        return StepResult(
            name, "replaced", log_size, replacement.tx_hash, f"{tx.tx_hash} was dropped"
        )

    # ------------------------------------------------------------------------------ re-check
    async def _recheck(self, backend: ChainBackend) -> tuple[int, ...]:
        """Re-check ``backend``'s recent anchors; mark the vanished ones; return their sizes.

        Raises ChainError (``chain_unavailable`` ...) when the chain does not answer: the caller
        backs off and the re-check stays due, nothing is marked on a guess.
        """
        name = backend.name
        head = await asyncio.to_thread(backend.latest_block)
        recorded = await self.store.anchors_to_recheck(
            name, min_block=head - self.reorg_window_blocks + 1
        )
        gone: list[StoredAnchor] = []
        for anchor in recorded:
            problem = await asyncio.to_thread(
                functools.partial(
                    check_recorded_anchor,
                    backend,
                    root=anchor.root,
                    block_number=anchor.block_number,
                    block_hash=anchor.block_hash,
                )
            )
            if problem is None:
                continue
            if not await self.store.mark_anchor_vanished(
                anchor, reason=problem.reason, detail=problem.detail
            ):
                continue
            gone.append(anchor)
            self.vanished_total[name] += 1
            log.warning(
                json.dumps(
                    {
                        "event": "anchor_vanished",
                        "reason": problem.reason,
                        "backend": name,
                        "log_size": anchor.log_size,
                        "tx_hash": anchor.tx_hash,
                        "block_number": anchor.block_number,
                        "detail": problem.detail,
                    }
                )
            )
        if gone:
            # The chain forgot our transactions: its pending nonce went back, count from it.
            await asyncio.to_thread(backend.next_nonce)
            for anchor in gone:
                # Mined again in another block (the transaction came back from the mempool)?
                # Then that is the anchor, and no new transaction is needed.
                found = await asyncio.to_thread(backend.find_anchor, anchor.root)
                if found is not None:
                    await self.store.record_anchor(name, anchor.log_size, anchor.root, found)
                    log.info(
                        json.dumps(
                            {
                                "event": "anchor",
                                "backend": name,
                                "outcome": "recovered",
                                "log_size": anchor.log_size,
                                "tx_hash": found.tx_hash,
                                "detail": f"found again in block {found.block_number}",
                            }
                        )
                    )
            self._reanchor.add(name)
        self._next_check[name] = time.monotonic() + self.recheck_interval_s
        return tuple(a.log_size for a in gone)

    def next_recheck_in(self) -> float:
        """Seconds until some backend's re-check is due (0: now)."""
        now = time.monotonic()
        # A backend backing off re-checks when its back-off ends, not before.
        due = (max(t, self._next_try[n]) for n, t in self._next_check.items())
        return max(0.0, min((t - now for t in due), default=0.0))

    # ------------------------------------------------------------------------------ drivers
    async def run_once(self, *, timeout_s: float = 120.0, poll_s: float = 0.5) -> list[StepResult]:
        """Step until every backend's newest anchor is settled, or ``timeout_s`` passes.

        Returns the last result of each backend (``cityanchor anchor run``), with every log
        size any of its steps found vanished in ``vanished``.
        """
        deadline = time.monotonic() + timeout_s
        last: dict[str, StepResult] = {}
        vanished: dict[str, tuple[int, ...]] = {b.name: () for b in self.backends}
        # One new transaction per backend at most: the checkpoint that is newest now.
        may_send = {b.name for b in self.backends}

        def results() -> list[StepResult]:
            return [
                dataclasses.replace(
                    last.get(b.name, StepResult(b.name, "error", detail="not tried")),
                    vanished=vanished[b.name],
                )
                for b in self.backends
            ]

        while True:
            for r in await self.step(allow_new=may_send):
                last[r.backend] = r
                vanished[r.backend] += r.vanished
                if r.outcome in ("sent", "recovered", "up_to_date", "empty_log"):
                    may_send.discard(r.backend)
            if len(last) == len(self.backends) and all(
                r.outcome in ("up_to_date", "empty_log", "scheduled") and r.backend not in may_send
                for r in last.values()
            ):
                return results()
            if last and all(r.outcome == "waiting" for r in last.values()):
                return results()  # the witness quorum is not met: nothing to wait for here
            if time.monotonic() > deadline:
                return results()
            await asyncio.sleep(poll_s)

    async def loop(self, *, period_s: float, stop: asyncio.Event, poll_s: float = 1.0) -> None:
        """Run as the one active job until ``stop`` is set (``cityanchor anchor loop``).

        Waits for leadership first; between periods it polls open transactions every
        ``poll_s`` so confirmations are recorded promptly.
        """
        while not stop.is_set():
            try:
                async with self.store.leadership() as conn:
                    log.info("anchoring job is the leader; period %.0fs", period_s)
                    await self._lead(conn, period_s=period_s, stop=stop, poll_s=poll_s)
            except AnchorError as exc:
                log.warning("anchoring job lost the database (%s); retrying", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 2.0)
            except OSError as exc:  # the leadership connection broke
                log.warning("anchoring job lost its leadership connection (%s); retrying", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 2.0)

    async def _lead(
        self, conn: Any, *, period_s: float, stop: asyncio.Event, poll_s: float
    ) -> None:
        follower = None
        if self.cosigning is not None and self.cosigning.mode == "seal":
            # Only the leader talks to the witnesses: one client, so their `old` sizes follow.
            follower = asyncio.create_task(self.cosigning.run(stop))
        try:
            await self._lead_steps(conn, period_s=period_s, stop=stop, poll_s=poll_s)
        finally:
            if follower is not None:
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follower

    async def _lead_steps(
        self, conn: Any, *, period_s: float, stop: asyncio.Event, poll_s: float
    ) -> None:
        next_period = 0.0
        while not stop.is_set():
            await conn.fetchval("SELECT 1")  # still holding the lock? (raises if not)
            now = time.monotonic()
            allow_new = now >= next_period
            results = await self.step(allow_new=allow_new)
            if allow_new:
                next_period = now + period_s
            busy = any(r.outcome in ("sent", "pending", "replaced", "error") for r in results)
            wait = poll_s if busy else max(0.0, next_period - time.monotonic())
            # Wake for the next re-check even when the period is long.
            wait = min(wait, self.next_recheck_in())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(wait, 0.05))
