"""The anchoring job as a process: ``cityanchor anchor run`` and ``anchor loop`` (back-ends from
settings are :mod:`anchor.anchoring.backend`'s)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import aiohttp

from anchor import __version__
from anchor.anchoring.backend import build_backend
from anchor.anchoring.job import AnchorJob, StepResult
from anchor.cosigning.client import Witness, WitnessClient, aiohttp_post
from anchor.cosigning.job import CosigningJob
from anchor.errors import Reason, UsageError
from anchor.host.config import Settings
from anchor.store import Store, StoreError
from anchor.store.operator import anchor_lock_nowait

if TYPE_CHECKING:
    from anchor.anchoring.chains.evm import EvmBackend

__all__ = ["run_anchor_loop", "run_anchor_once"]

log = logging.getLogger("anchor.anchoring.job")


def _backends(settings: Settings) -> list[EvmBackend]:
    if not settings.chains:
        raise UsageError(
            "no chain configured: add a [[chains]] table to the config, or set "
            "CITYANCHOR_CHAIN_RPC_URL, CITYANCHOR_CHAIN_ID, CITYANCHOR_CHAIN_CONTRACT and "
            "CITYANCHOR_CHAIN_KEY_FILE"
        )
    missing = [c.name for c in settings.chains if not c.contract]
    if missing:
        raise UsageError(
            f"chain(s) {', '.join(missing)} have no contract: run `cityanchor chain deploy`"
        )
    return [build_backend(c) for c in settings.chains]


def _print_results(results: Sequence[StepResult]) -> None:
    for r in results:
        print(
            json.dumps(
                {
                    "backend": r.backend,
                    "outcome": r.outcome,
                    "log_size": r.log_size,
                    "tx_hash": r.tx_hash,
                    "detail": r.detail,
                    "vanished": list(r.vanished),  # log sizes marked anchor_vanished
                }
            )
        )


def _cosigning(settings: Settings, store: Store, session: Any) -> CosigningJob | None:
    """The witnessing of ``settings.witnesses`` (None without witnesses)."""
    if not settings.witnesses:
        return None
    post = aiohttp_post(session, timeout_s=settings.witness_timeout_ms / 1000)
    return CosigningJob(
        store=store,
        client=WitnessClient(store=store, post=post),
        witnesses=[Witness(w.url, w.verifier) for w in settings.witnesses],
        mode=settings.witness_mode,
        quorum=settings.witness_quorum,
        anchor_quorum=bool(settings.witness_anchor_quorum),
        poll_s=settings.witness_poll_ms / 1000,
    )


async def _with_job(settings: Settings, fn: Any) -> Any:
    backends = _backends(settings)
    store = await Store.connect(settings.database_url, max_size=3)
    # One session for every witness request: keep-alive connections, a few per witness.
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit_per_host=2, keepalive_timeout=30),
        headers={"User-Agent": f"cityanchor/{__version__}"},
    )
    try:
        return await fn(
            AnchorJob(
                store=store,
                backends=backends,
                reorg_window_blocks=settings.anchor_reorg_window_blocks,
                recheck_interval_s=settings.anchor_recheck_ms / 1000,
                cosigning=_cosigning(settings, store, session),
            )
        )
    finally:
        await session.close()
        await store.close()


ANCHOR_RUNNING = (
    "the anchoring job is running (it holds the anchoring lock); it will anchor the newest "
    "checkpoint itself"
)
"""What ``anchor run`` and ``POST /v1/operator/anchor`` (409) say while a leader anchors."""


def run_anchor_once(settings: Settings, *, timeout_s: float = 120.0) -> int:
    """``cityanchor anchor run``: anchor the newest checkpoint on every backend and wait for it.

    Raises StoreError ``conflict`` at once, as the HTTP equivalent answers 409, when another
    process (``anchor loop``, e.g. under ``up``) holds the anchoring lock: waiting for a leader
    that never lets go looked like a hang (issue 14).
    """

    async def body(job: AnchorJob) -> list[StepResult]:
        log.info("anchor run: taking the anchoring lock")
        async with anchor_lock_nowait(job.store) as held:
            if not held:
                raise StoreError(ANCHOR_RUNNING, reason=Reason.CONFLICT)
            log.info(
                "anchor run: anchoring the newest checkpoint on %s (waiting up to %.0fs)",
                ", ".join(b.name for b in job.backends),
                timeout_s,
            )
            return await job.run_once(timeout_s=timeout_s)

    log.info("anchor run: connecting to %s", settings.database_url)  # masked by the formatter
    results: list[StepResult] = asyncio.run(_with_job(settings, body))
    _print_results(results)
    return 0 if all(r.outcome in ("up_to_date", "empty_log", "scheduled") for r in results) else 1


def run_anchor_loop(settings: Settings, *, period_s: float) -> int:
    """``cityanchor anchor loop``: the long-running job (one leader across replicas)."""
    log.info("anchoring job starting: %s", json.dumps(settings.masked()))

    async def body(job: AnchorJob) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await job.loop(period_s=period_s, stop=stop)

    asyncio.run(_with_job(settings, body))
    return 0
