"""Witnessing in the anchoring process: which checkpoints to have cosigned, and when.

Runs only in the anchoring job's leader (the PostgreSQL advisory lock makes it a singleton), so
one process talks to the witnesses and each witness sees one client whose ``old`` sizes follow
each other.

* Mode ``seal`` (default): a background task polls the newest checkpoint every ``poll_s`` (one
  indexed ``SELECT``) and asks each witness to cosign it when it changed, so even ``sealed``
  receipts soon carry cosignatures.
* Mode ``anchor``: only the checkpoint about to be anchored is sent (one request per witness per
  anchoring period, whatever the seal rate).
* In both modes :meth:`CosigningJob.checkpoint_to_anchor` asks every witness for the newest
  checkpoint before the anchoring job sends a transaction. With ``anchor_quorum`` it returns
  the newest checkpoint that ``quorum`` distinct configured witnesses cosigned (possibly older
  than the newest) or None: the anchoring job then waits, ``witness_quorum_not_met`` is logged
  and recorded for ``/metrics``. Without it the newest checkpoint is anchored whatever the
  witnesses answered: a witness that is down never stops anchoring.

A witness that did not answer (``witness_unavailable``) is skipped until its back-off (1 s
doubling to 30 s, jittered by half so that witnesses failing together drift apart) has passed.
Requests to one witness are serialised (a lock per witness), so the background task and the
anchoring step never race each other into a 409.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence

from anchor.backoff import Backoff
from anchor.cosigning.client import CosignResult, Witness, WitnessClient
from anchor.errors import AnchorError, Reason, UsageError
from anchor.store import CheckpointRecord, Store

__all__ = ["WITNESS_MODES", "CosigningJob"]

WITNESS_MODES = ("seal", "anchor")

log = logging.getLogger("anchor.cosigning")


class CosigningJob:
    """See the module docstring."""

    def __init__(
        self,
        *,
        store: Store,
        client: WitnessClient,
        witnesses: Sequence[Witness],
        mode: str = "seal",
        quorum: int = 1,
        anchor_quorum: bool = False,
        poll_s: float = 1.0,
    ) -> None:
        if mode not in WITNESS_MODES:
            raise UsageError(f"witness mode must be one of {', '.join(WITNESS_MODES)}")
        if not witnesses:
            raise UsageError("witnessing needs at least one witness")
        if not 1 <= quorum <= len(witnesses):
            raise UsageError(f"witness quorum must be within 1..{len(witnesses)}, got {quorum}")
        keys = [w.key for w in witnesses]
        if len(set(keys)) != len(keys):
            raise UsageError("each witness key may be configured once")
        self.store = store
        self.client = client
        self.witnesses = list(witnesses)
        self.mode = mode
        self.quorum = quorum
        self.anchor_quorum = anchor_quorum
        self.poll_s = poll_s
        self._locks = {w.key: asyncio.Lock() for w in witnesses}
        self._backoff = {w.key: Backoff(initial_s=1.0, cap_s=30.0, jitter=0.5) for w in witnesses}
        self._next_try: dict[str, float] = dict.fromkeys(keys, 0.0)
        # The size each witness last cosigned in this process (saves the database a question).
        self._done: dict[str, int] = dict.fromkeys(keys, 0)
        # Whether anchoring waits for the quorum; None: not written by this process yet.
        self._waiting: bool | None = None

    async def cosign(self, checkpoint: CheckpointRecord) -> list[CosignResult]:
        """Ask every witness that is not backing off to cosign ``checkpoint``, concurrently."""
        now = time.monotonic()
        due = [
            w
            for w in self.witnesses
            if now >= self._next_try[w.key] and self._done[w.key] < checkpoint.log_size
        ]
        return list(await asyncio.gather(*(self._one(w, checkpoint) for w in due)))

    async def _one(self, witness: Witness, checkpoint: CheckpointRecord) -> CosignResult:
        async with self._locks[witness.key]:
            result = await self.client.cosign(witness, checkpoint.log_size, checkpoint.note)
        if result.outcome in ("cosigned", "up_to_date", "behind"):
            self._backoff[witness.key].reset()
            self._next_try[witness.key] = 0.0
            if result.outcome != "behind":
                self._done[witness.key] = checkpoint.log_size
        else:
            # Refusals and alarms back off as well: asking again at once would not change the
            # witness's mind, and the log line is already written.
            self._next_try[witness.key] = time.monotonic() + self._backoff[witness.key].next_delay()
        return result

    async def checkpoint_to_anchor(self, newest: CheckpointRecord) -> CheckpointRecord | None:
        """Ask the witnesses for ``newest``; the checkpoint the anchoring job may anchor.

        Without ``anchor_quorum``: ``newest``. With it: the newest checkpoint that ``quorum``
        distinct configured witnesses cosigned, or None (wait; ``witness_quorum_not_met``).
        Never raises for a witness's failure.
        """
        try:
            await self.cosign(newest)
        except AnchorError as exc:  # the database; the anchoring step reports its own failure
            log.warning("asking the witnesses failed (%s)", exc)
        if not self.anchor_quorum:
            return newest
        chosen = await self.store.newest_witnessed_checkpoint(
            [w.key for w in self.witnesses], self.quorum
        )
        if chosen is None:
            self._waiting = True
            await self.store.set_quorum_status(waiting=True, log_size=newest.log_size)
            log.warning(
                json.dumps(
                    {
                        "event": "witness_quorum",
                        "reason": Reason.WITNESS_QUORUM_NOT_MET,
                        "log_size": newest.log_size,
                        "quorum": self.quorum,
                        "detail": "no checkpoint has the quorum of cosignatures: not anchoring",
                    }
                )
            )
            return None
        if self._waiting is not False or chosen.log_size != newest.log_size:
            # The quorum is met again (or for the first time since this process started: the
            # stored status may be a previous leader's), or only for an older checkpoint.
            behind = chosen.log_size != newest.log_size
            await self.store.set_quorum_status(waiting=behind, log_size=newest.log_size)
            if behind:
                log.warning(
                    json.dumps(
                        {
                            "event": "witness_quorum",
                            "reason": Reason.WITNESS_QUORUM_NOT_MET,
                            "log_size": newest.log_size,
                            "quorum": self.quorum,
                            "detail": f"anchoring size {chosen.log_size}, the newest with the "
                            "quorum of cosignatures",
                        }
                    )
                )
            self._waiting = behind
        return chosen

    async def anchorable(self, newest: CheckpointRecord) -> CheckpointRecord | None:
        """What :meth:`checkpoint_to_anchor` would return, from what is stored (no request)."""
        if not self.anchor_quorum:
            return newest
        return await self.store.newest_witnessed_checkpoint(
            [w.key for w in self.witnesses], self.quorum
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Mode ``seal``: follow the newest checkpoint until ``stop`` (or cancellation)."""
        while not stop.is_set():
            try:
                newest = await self.store.latest_checkpoint_record()
                if newest is not None:
                    await self.cosign(newest)
            except AnchorError as exc:
                log.warning("witnessing paused: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll_s)
