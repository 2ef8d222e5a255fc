"""Process plumbing for anchoring: backends from settings, ``anchor run|loop``, ``chain deploy``,
and the on-chain step of ``cityanchor verify --rpc``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from anchor.anchoring.job import AnchorJob, StepResult
from anchor.errors import Reason, UsageError
from anchor.host.config import ChainSettings, Settings
from anchor.receipt import Receipt
from anchor.verify import AnchorChecker, Check

__all__ = [
    "build_backend",
    "chain_signer_key",
    "deploy",
    "rpc_anchor_checker",
    "run_anchor_loop",
    "run_anchor_once",
]

log = logging.getLogger("anchor.anchoring.job")


def chain_signer_key(chain: ChainSettings, env: Mapping[str, str] | None = None) -> str:
    """The chain account's private key, from ``key_file`` or the variable ``key_env``."""
    env = os.environ if env is None else env
    if chain.key_file:
        from anchor.host.files import KEY_FILE_LIMIT, read_user_file

        raw = read_user_file(
            chain.key_file, what=f"chain {chain.name}: key file", limit=KEY_FILE_LIMIT
        )
        return raw.decode("utf-8", "replace").strip()
    if chain.key_env:
        value = env.get(chain.key_env, "").strip()
        if not value:
            raise UsageError(f"chain {chain.name}: variable {chain.key_env} is empty or unset")
        return value
    raise UsageError(f"chain {chain.name}: no signing key (set key_file or key_env)")


def build_backend(chain: ChainSettings, *, with_key: bool = True) -> Any:
    """An :class:`~anchor.anchoring.chains.evm.EvmBackend` for ``chain`` (web3 only here)."""
    from anchor.anchoring.chains.evm import EvmBackend, EvmConfig

    return EvmBackend(
        EvmConfig(
            name=chain.name,
            rpc_url=chain.rpc_url,
            chain_id=chain.chain_id,
            contract=chain.contract,
            signer_key=chain_signer_key(chain) if with_key else "",
            confirmations=chain.confirmations,
            fee_mode=chain.fee_mode,  # type: ignore[arg-type]
            gas_limit=chain.gas_limit,
            rpc_timeout=float(chain.rpc_timeout_s),
        )
    )


def _backends(settings: Settings) -> list[Any]:
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


async def _with_job(settings: Settings, fn: Any) -> Any:
    from anchor.store import Store

    backends = _backends(settings)
    store = await Store.connect(settings.database_url, max_size=3)
    try:
        return await fn(
            AnchorJob(
                store=store,
                backends=backends,
                reorg_window_blocks=settings.anchor_reorg_window_blocks,
                recheck_interval_s=settings.anchor_recheck_ms / 1000,
            )
        )
    finally:
        await store.close()


def run_anchor_once(settings: Settings, *, timeout_s: float = 120.0) -> int:
    """``cityanchor anchor run``: anchor the newest checkpoint on every backend and wait for it."""

    async def body(job: AnchorJob) -> list[StepResult]:
        async with job.store.leadership():
            return await job.run_once(timeout_s=timeout_s)

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


def deploy(chain: ChainSettings, *, submitters: Sequence[str] = ()) -> str:
    """Deploy an AnchorRegistry with ``chain``'s account; return its address."""
    from anchor.anchoring.chains.evm import EvmConfig, deploy_registry

    config = EvmConfig(
        name=chain.name,
        rpc_url=chain.rpc_url,
        chain_id=chain.chain_id,
        signer_key=chain_signer_key(chain),
        fee_mode=chain.fee_mode,  # type: ignore[arg-type]
        rpc_timeout=float(chain.rpc_timeout_s),
    )
    return deploy_registry(config, submitters)


def _rfc3339(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rpc_anchor_checker(rpc_urls: Sequence[str], *, timeout_s: float = 10.0) -> AnchorChecker:
    """The ``anchors`` check against the given JSON-RPC endpoints (any node of the chain).

    For each anchor of a receipt whose chain one of the endpoints serves: ``anchoredAt(log.root)``
    on the receipt's contract must equal the anchor's block number, and that block's timestamp
    the anchor's ``block_time``. Anchors on chains no endpoint serves are skipped; if none of a
    receipt's anchors could be checked the check fails (``chain_mismatch``).
    """
    from web3 import Web3
    from web3.exceptions import Web3Exception

    from anchor.contracts import load_artifact

    abi = load_artifact()["abi"]
    clients: list[tuple[str, Any]] = [
        (url, Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": timeout_s})))
        for url in rpc_urls
    ]
    chain_ids: dict[str, int | Exception] = {}

    def chain_id(url: str, w3: Any) -> int | Exception:
        if url not in chain_ids:
            try:
                chain_ids[url] = int(w3.eth.chain_id)
            except (OSError, ValueError, Web3Exception) as exc:
                chain_ids[url] = exc
        return chain_ids[url]

    def check(receipt: Receipt) -> list[Check]:
        checks: list[Check] = []
        for a in receipt.anchors:
            where = f"chain {a.chain_id} contract {a.contract}"
            match = [(u, w) for u, w in clients if chain_id(u, w) == a.chain_id]
            if not match:
                seen = ", ".join(f"{u} -> {chain_id(u, w)}" for u, w in clients)
                checks.append(Check("anchors", "skip", f"{where}: no --rpc serves it ({seen})"))
                continue
            url, w3 = match[0]
            try:
                registry = w3.eth.contract(address=Web3.to_checksum_address(a.contract), abi=abi)
                at = int(registry.functions.anchoredAt(receipt.log.root).call())
                if at == 0:
                    checks.append(
                        Check(
                            "anchors",
                            "fail",
                            f"{where}: log root not anchored",
                            Reason.ANCHOR_MISSING,
                        )
                    )
                    continue
                if at != a.block_number:
                    checks.append(
                        Check(
                            "anchors",
                            "fail",
                            f"{where}: anchored at block {at}, receipt says {a.block_number}",
                            Reason.ANCHOR_BLOCK_MISMATCH,
                        )
                    )
                    continue
                block_time = _rfc3339(int(w3.eth.get_block(at)["timestamp"]))
                if block_time != a.block_time:
                    checks.append(
                        Check(
                            "anchors",
                            "fail",
                            f"{where}: block {at} is from "
                            f"{block_time}, receipt says {a.block_time}",
                            Reason.ANCHOR_TIME_MISMATCH,
                        )
                    )
                    continue
            except (OSError, ValueError, Web3Exception) as exc:
                checks.append(
                    Check(
                        "anchors", "fail", f"{where}: {url}: {exc}"[:300], Reason.CHAIN_UNAVAILABLE
                    )
                )
                continue
            checks.append(
                Check("anchors", "pass", f"{where}: anchored in block {at} at {block_time}")
            )
        if checks and all(c.status == "skip" for c in checks):
            checks.append(
                Check(
                    "anchors",
                    "fail",
                    "no anchor of this receipt is on a chain served by --rpc",
                    Reason.CHAIN_MISMATCH,
                )
            )
        return checks

    return check
