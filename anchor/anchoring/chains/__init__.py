"""Chain backends: where the anchoring job puts batch-log roots.

:mod:`anchor.anchoring.chains.base` defines the :class:`ChainBackend` protocol and its data types
(no
third-party imports); :mod:`anchor.anchoring.chains.evm` implements it for EVM chains over JSON-RPC
with
web3.py and is imported explicitly, so code that only needs the types does not load web3.

Example::

    from anchor.anchoring.chains import ChainError
    from anchor.anchoring.chains.evm import EvmBackend, EvmConfig

    backend = EvmBackend(EvmConfig(name="local", rpc_url=url, chain_id=31337,
                                   contract=address, signer_key=key))
    tx = backend.prepare(root, size)   # persist tx.to_json() first,
    backend.broadcast(tx)              # then send
"""

from __future__ import annotations

from anchor.anchoring.chains.base import (
    CHAIN_ERROR_REASONS,
    AnchorConfirmation,
    AnchorTx,
    ChainBackend,
    ChainError,
    TxStatus,
)

__all__ = [
    "CHAIN_ERROR_REASONS",
    "AnchorConfirmation",
    "AnchorTx",
    "ChainBackend",
    "ChainError",
    "TxStatus",
]
