"""Chain back-ends from settings: the anchoring job's back-end, ``chain deploy``, and the on-chain
step of ``cityanchor verify --rpc`` (used by the job, the API and the CLI alike).

web3 is imported inside the functions that need it, on purpose: it costs about a second to import
and most processes that import this module (the API, ``cityanchor verify`` without ``--rpc``)
never touch a chain.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from anchor.contracts import load_artifact
from anchor.errors import Reason, UsageError
from anchor.host.config import ChainSettings
from anchor.host.files import KEY_FILE_LIMIT, read_user_file
from anchor.receipt import Receipt
from anchor.verify import AnchorChecker, Check

if TYPE_CHECKING:  # the type only: web3 is imported when a backend is built
    from anchor.anchoring.chains.evm import EvmBackend

__all__ = ["build_backend", "chain_signer_key", "deploy", "rpc_anchor_checker"]


def chain_signer_key(chain: ChainSettings, env: Mapping[str, str] | None = None) -> str:
    """The chain account's private key, from ``key_file`` or the variable ``key_env``."""
    env = os.environ if env is None else env
    if chain.key_file:
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


def build_backend(chain: ChainSettings, *, with_key: bool = True) -> EvmBackend:
    """An :class:`~anchor.anchoring.chains.evm.EvmBackend` for ``chain`` (web3 only here)."""
    # web3 (through chains.evm) is imported only here: see the module docstring.
    from anchor.anchoring.chains.evm import EvmBackend, EvmConfig  # noqa: PLC0415

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


def deploy(chain: ChainSettings, *, submitters: Sequence[str] = ()) -> str:
    """Deploy an AnchorRegistry with ``chain``'s account; return its address."""
    # web3 (through chains.evm) is imported only here: see the module docstring.
    from anchor.anchoring.chains.evm import EvmConfig, deploy_registry  # noqa: PLC0415

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
    # web3 is imported only here: see the module docstring.
    from web3 import Web3  # noqa: PLC0415
    from web3.exceptions import Web3Exception  # noqa: PLC0415

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
