"""Deploying an AnchorRegistry contract to an EVM chain (``cityanchor chain deploy``).

Uses the backend's :class:`~anchor.anchoring.chains.evm_client.EvmClient` (chain check, fees,
local signing, error translation); :mod:`anchor.anchoring.chains.evm` re-exports
:func:`deploy_registry`.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Sequence
from typing import Any, NoReturn, cast

# web3 raises the recursion limit on import: see anchor.anchoring.chains.evm_client.
_RECURSION_LIMIT = sys.getrecursionlimit()

from web3 import Web3  # noqa: E402
from web3.exceptions import Web3RPCError  # noqa: E402

from anchor.anchoring.chains.base import ChainError  # noqa: E402
from anchor.anchoring.chains.evm_client import EvmClient, EvmConfig, translated  # noqa: E402
from anchor.contracts import load_artifact  # noqa: E402
from anchor.errors import Reason, UsageError  # noqa: E402

sys.setrecursionlimit(_RECURSION_LIMIT)

__all__ = ["deploy_registry"]

# The backend's logger: deployment messages keep the name they had before the split.
log = logging.getLogger("anchor.anchoring.chains.evm")


def deploy_registry(
    config: EvmConfig, submitters: Sequence[str] = (), *, w3: Web3 | None = None
) -> str:
    """Deploy a new AnchorRegistry with the config's signer; return its checksummed address.

    ``submitters`` is the allow-list fixed forever (empty: anyone may anchor; to restrict the
    registry to the job's account, pass that account's address). ``config.contract`` is
    ignored. Waits up to ``config.receipt_timeout`` for the receipt (not for confirmations).

    Raises:
        UsageError: no signer key, or a submitter that is not an address.
        ChainError: ``chain_mismatch``, ``chain_unavailable`` (including a receipt timeout),
            ``tx_rejected``, ``tx_reverted``.
    """
    for account in submitters:
        if not Web3.is_address(account):
            raise UsageError(f"submitter {account!r} is not an address")
    client = EvmClient(config, w3)
    signer = client.signer
    client.check_chain(fresh=True)
    artifact = load_artifact()
    factory = client.w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    data = factory.constructor(
        [Web3.to_checksum_address(a) for a in submitters]
    ).data_in_transaction
    with translated("eth_estimateGas"):
        estimate = int(client.w3.eth.estimate_gas({"from": signer.address, "data": data}))
    params: dict[str, Any] = {
        "nonce": client.pending_nonce(),
        "data": data,
        "gas": math.ceil(estimate * max(config.gas_margin, 1.2)),
        **client.fee_fields(None),
    }
    raw, tx_hash = client.sign(params)
    with translated("eth_sendRawTransaction"):
        try:
            client.w3.eth.send_raw_transaction(raw)
        except Web3RPCError as exc:
            _raise_rejected(config.name, tx_hash, exc)
    with translated("eth_getTransactionReceipt"):
        receipt = client.w3.eth.wait_for_transaction_receipt(
            cast(Any, tx_hash), timeout=config.receipt_timeout, poll_latency=0.1
        )
    if receipt["status"] != 1 or not receipt.get("contractAddress"):
        raise ChainError(
            f"{config.name}: deployment tx {tx_hash} reverted", reason=Reason.TX_REVERTED
        )
    address = Web3.to_checksum_address(str(receipt["contractAddress"]))
    log.info("%s: deployed AnchorRegistry at %s (tx %s)", config.name, address, tx_hash)
    return address


def _raise_rejected(name: str, tx_hash: str, exc: Web3RPCError) -> NoReturn:
    raise ChainError(
        f"{name}: the node rejected tx {tx_hash}: {exc.message}", reason=Reason.TX_REJECTED
    ) from exc
