"""The EVM backend: anchors roots in an AnchorRegistry contract over JSON-RPC (web3.py).

It covers any EVM chain reachable over HTTP JSON-RPC: BSN's international EVM networks, the
EVM-compatible permissioned chains on BSN in China (often zero-gas), Ethereum and its L2s, and
the private anvil chain of tests and the demo (:mod:`anchor.local.anvil`).

What it owns, so the job's crash-safety rules hold (see :mod:`anchor.anchoring.chains.base`):

- **Signing** is local (eth-account); the RPC never sees the key. :meth:`EvmBackend.prepare`
  returns the signed bytes and hash without sending them.
- **Nonces**: read once from the chain (pending nonce of our account), then counted locally,
  so several anchors can be in flight; ``prepare(..., replaces=old)`` reuses ``old.nonce``.
- **Fees** per ``fee_mode``: ``"eip1559"`` (type-2: ``maxFeePerGas = 2 * baseFee + tip``,
  capped by ``max_fee_per_gas``), ``"legacy"`` (``gasPrice`` from the node or fixed, capped by
  ``max_gas_price``; for chains without EIP-1559) and ``"zero"`` (legacy with ``gasPrice`` 0,
  for permissioned networks that charge no gas, such as BSN's EVM-compatible chains). A
  replacement outbids the old transaction by at least 12.5 % on every fee field (geth and most
  clients demand 10 %), or pays the current fee if that is higher; in ``"zero"`` mode there is
  nothing to outbid, so a replacement of the same root is byte-identical to the original
  (deterministic RFC 6979 signatures) and is simply re-broadcast.
- **Chain identity**: the endpoint's ``eth_chainId`` must equal ``chain_id`` (else
  ``chain_mismatch``), so a mis-pointed RPC URL never receives a signed transaction, and
  EIP-155 signatures bind each transaction to that chain anyway.
- **Dry run**: before signing, ``prepare`` simulates ``anchor(root, size)`` with ``eth_call``
  (or ``eth_estimateGas``) from our account; the contract's custom errors become reasons
  (``AlreadyAnchored`` -> ``already_anchored``, ``NotSubmitter`` -> ``tx_rejected``).

Confirmations: 1 is fine for anvil and for BFT permissioned chains with instant finality
(QBFT/IBFT, as on BSN's permissioned networks); use 12 or more on public proof-of-stake chains
(Ethereum finalizes after ~64 blocks; 12 makes a reorg of the anchor very unlikely) and follow
the L2's guidance there.

Gas: the anchor is constant work (one fresh storage slot, one event) whatever the number of
readings behind the root: 46 224 gas on anvil for a typical root (24 496 of execution, the rest
the 21 000 base and the calldata, where each zero byte of root or size is 12 gas cheaper) and
48 406 with an allow-list. The fixed ``gas_limit`` default of 100 000 covers it with a wide
margin; on chains whose gas units include an L1 data charge (Arbitrum), set ``gas_limit=None``
to estimate instead.

Third-party failures are translated at this edge into :class:`ChainError` (``raise ... from
exc``): connection errors and timeouts (requests' exceptions are ``OSError``) become the
retryable ``chain_unavailable``; node error objects become ``tx_rejected``, ``chain_error``.

Layout: this module is the backend and re-exports the package's public names.
:mod:`anchor.anchoring.chains.evm_client` holds :class:`EvmConfig`, the JSON-RPC client (chain
check, nonces, gas, fees, signing, receipts) and the error translation;
:mod:`anchor.anchoring.chains.evm_deploy` holds :func:`deploy_registry`.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, cast

# web3 raises the recursion limit on import: see anchor.anchoring.chains.evm_client.
_RECURSION_LIMIT = sys.getrecursionlimit()

from web3 import Web3  # noqa: E402
from web3.exceptions import BlockNotFound, TransactionNotFound, Web3RPCError  # noqa: E402
from web3.types import TxParams  # noqa: E402

from anchor.anchoring.chains.base import AnchorConfirmation, AnchorTx, ChainError, TxStatus  # noqa: E402
from anchor.anchoring.chains.evm_client import (  # noqa: E402
    DEFAULT_GAS_LIMIT,
    UNAVAILABLE_TEXT,
    EvmClient,
    EvmConfig,
    FeeMode,
    translated,
)
from anchor.anchoring.chains.evm_deploy import deploy_registry  # noqa: E402
from anchor.contracts import load_artifact  # noqa: E402
from anchor.errors import Reason, UsageError  # noqa: E402

sys.setrecursionlimit(_RECURSION_LIMIT)

__all__ = [
    "DEFAULT_GAS_LIMIT",
    "EvmBackend",
    "EvmConfig",
    "FeeMode",
    "deploy_registry",
]

log = logging.getLogger(__name__)

_MAX_UINT64 = 2**64 - 1
_ANCHORED_TOPIC = "0x" + Web3.keccak(text="Anchored(bytes32,uint64,address)").hex()
# Node error texts (geth, erigon, besu, nethermind, anvil) that mean "I already have these
# bytes": broadcasting them again changed nothing, which is what an idempotent send wants.
_ALREADY_KNOWN = (
    "already known",
    "already imported",
    "known transaction",
    "alreadyknown",
    "already in the pool",
    "already exists",
)
_NONCE_USED = ("nonce too low", "nonce has already been used", "oldnonce", "nonce is too low")


def _check_root(root: bytes) -> None:
    if not isinstance(root, bytes) or len(root) != 32:
        raise UsageError("a root is exactly 32 bytes")


# ---------------------------------------------------------------------------------------------
# The backend


class EvmBackend:
    """:class:`anchor.anchoring.chains.base.ChainBackend` for an AnchorRegistry on an EVM chain.

    Thread-safe for the job's use (one worker thread at a time, or several sharing the nonce
    counter under a lock). ``w3`` injects a ready Web3 instance (tests); normally it is built
    from the config.
    """

    def __init__(self, config: EvmConfig, *, w3: Web3 | None = None) -> None:
        if not config.contract:
            raise UsageError(
                f"{config.name}: no contract address configured; deploy one with "
                "`cityanchor chain deploy`"
            )
        self.config = config
        self._client = EvmClient(config, w3)
        self._address = Web3.to_checksum_address(config.contract)
        self._registry = self._client.w3.eth.contract(
            address=self._address, abi=load_artifact()["abi"]
        )
        self._lock = threading.Lock()
        self._nonce: int | None = None

    # -- identity -------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def chain_id(self) -> int:
        return self.config.chain_id

    @property
    def contract(self) -> str:
        """The registry's EIP-55 checksummed address."""
        return self._address

    @property
    def sender(self) -> str:
        """Our account's address (derived from the signer key)."""
        return str(self._client.signer.address)

    @property
    def w3(self) -> Web3:
        return self._client.w3

    def __repr__(self) -> str:
        return f"EvmBackend(name={self.name!r}, chain_id={self.chain_id}, contract={self.contract})"

    # -- ChainBackend ---------------------------------------------------------------------

    def ping(self) -> None:
        """Raises ``chain_unavailable``, ``chain_mismatch``, or ``chain_error`` when no contract
        code is deployed at the address."""
        self._client.check_chain(fresh=True)
        with translated("eth_getCode"):
            code = self._client.w3.eth.get_code(self._address)
        if not code:
            raise ChainError(
                f"{self.name}: no contract at {self._address} on chain {self.chain_id}; "
                "deploy one with `cityanchor chain deploy`"
            )

    def anchored_at(self, root: bytes) -> int:
        _check_root(root)
        self._client.check_chain()
        with translated("anchoredAt"):
            return int(self._registry.functions.anchoredAt(root).call())

    def prepare(
        self,
        root: bytes,
        tree_size: int,
        *,
        nonce: int | None = None,
        replaces: AnchorTx | None = None,
    ) -> AnchorTx:
        """Build and sign ``anchor(root, tree_size)``; nothing is sent.

        The nonce is ``replaces.nonce`` for a replacement, else ``nonce``, else the next one of
        our local counter (initialised from the chain's pending nonce).

        Raises:
            UsageError: root not 32 bytes or zero, tree size outside 1..2**64-1, no signer key,
                ``replaces`` from another backend, or both ``nonce`` and ``replaces``.
            ChainError: ``already_anchored``, ``tx_rejected`` (not on the allow-list, fee caps
                too low for a replacement), ``tx_reverted``, ``chain_mismatch``,
                ``chain_unavailable``.
        """
        _check_root(root)
        if root == bytes(32):
            raise UsageError("the zero root cannot be anchored")
        if not 0 < tree_size <= _MAX_UINT64:
            raise UsageError(f"tree size {tree_size} is outside 1..2**64-1")
        if replaces is not None:
            if nonce is not None:
                raise UsageError("give nonce or replaces, not both")
            self._check_own(replaces)
        signer = self._client.signer
        self._client.check_chain()
        data = self._registry.encode_abi("anchor", args=[root, tree_size])
        call: TxParams = {"from": signer.address, "to": self._address, "data": data}
        gas = self._client.gas_for(call)
        fees = self._client.fee_fields(replaces.fee_fields if replaces is not None else None)
        with self._lock:
            if replaces is not None:
                use_nonce = replaces.nonce
            elif nonce is not None:
                use_nonce = nonce
            else:
                if self._nonce is None:
                    self._nonce = self._client.pending_nonce()
                use_nonce = self._nonce
            raw, tx_hash = self._client.sign(
                {"nonce": use_nonce, "to": self._address, "data": data, "gas": gas, **fees}
            )
            # Only a slot we actually used moves the counter; a forced nonce past it moves it
            # too, so the next automatic nonce never collides with it.
            if replaces is None:
                self._nonce = max(self._nonce or 0, use_nonce + 1)
        log.info(
            "%s: prepared anchor of %s (size %d) nonce %d tx %s",
            self.name, root.hex(), tree_size, use_nonce, tx_hash,
        )  # fmt: skip
        return AnchorTx(
            backend=self.name,
            chain_id=self.chain_id,
            contract=self._address,
            root=root,
            tree_size=tree_size,
            tx_hash=tx_hash,
            raw_tx=raw,
            nonce=use_nonce,
            fee_fields={"gas": gas, **fees},
        )

    def broadcast(self, tx: AnchorTx) -> None:
        """Send ``tx.raw_tx``. Already-known bytes and an already-mined ``tx`` count as sent.

        Raises:
            ChainError: ``tx_rejected`` (underpriced replacement, nonce used by *another*
                transaction, no funds), ``chain_unavailable``, ``chain_mismatch``.
        """
        self._check_own(tx)
        self._client.check_chain()
        try:
            with translated("eth_sendRawTransaction"):
                try:
                    sent = self._client.w3.eth.send_raw_transaction(tx.raw_tx)
                except Web3RPCError as exc:
                    self._on_send_error(tx, exc)
                    return
        except ChainError as err:
            log.warning("%s: broadcast of %s failed: %s", self.name, tx.tx_hash, err)
            raise
        if "0x" + bytes(sent).hex() != tx.tx_hash.lower():
            raise ChainError(
                f"{self.name}: node returned hash 0x{bytes(sent).hex()} for {tx.tx_hash}"
            )
        log.info("%s: broadcast tx %s (nonce %d)", self.name, tx.tx_hash, tx.nonce)

    def status(self, tx: AnchorTx) -> TxStatus:
        """``mined`` / ``failed`` once a receipt exists; ``pending`` while the node knows the
        transaction; ``dropped`` otherwise (evicted, lost by a restarted node, or its nonce was
        used by another transaction). A dropped transaction may be broadcast again (same
        bytes) or replaced with ``prepare(..., replaces=tx)``."""
        self._check_own(tx)
        self._client.check_chain()
        receipt = self._client.receipt(tx.tx_hash)
        if receipt is not None:
            return "mined" if receipt["status"] == 1 else "failed"
        with translated("eth_getTransactionByHash"):
            try:
                self._client.w3.eth.get_transaction(cast(Any, tx.tx_hash))
            except TransactionNotFound:
                return "dropped"
        return "pending"

    def confirmation(self, tx: AnchorTx) -> AnchorConfirmation | None:
        """The confirmation once ``tx`` is mined with ``config.confirmations``, else None.

        Raises:
            ChainError: ``already_anchored`` when ``tx`` reverted because the root was anchored
                by another transaction (use :meth:`find_anchor`), ``tx_reverted`` otherwise.
        """
        self._check_own(tx)
        self._client.check_chain()
        receipt = self._client.receipt(tx.tx_hash)
        if receipt is None:
            return None
        if receipt["status"] != 1:
            if self.anchored_at(tx.root):
                raise ChainError(
                    f"{self.name}: tx {tx.tx_hash} reverted: root {tx.root.hex()} was already "
                    "anchored by another transaction",
                    reason=Reason.ALREADY_ANCHORED,
                )
            raise ChainError(f"{self.name}: tx {tx.tx_hash} reverted", reason=Reason.TX_REVERTED)
        number = int(receipt["blockNumber"])
        return self._confirmed(tx.tx_hash, number, bytes(receipt["blockHash"]))

    def next_nonce(self) -> int:
        """Re-read the chain's pending nonce for our account and continue counting from it."""
        self._client.check_chain()
        pending = self._client.pending_nonce()
        with self._lock:
            self._nonce = pending
        return pending

    def find_anchor(self, root: bytes) -> AnchorConfirmation | None:
        """Find the anchor of ``root`` from the chain alone: ``anchoredAt`` names the block,
        the ``Anchored`` event in that one block names the transaction (a one-block log query
        works on every provider, unlike a scan from genesis)."""
        number = self.anchored_at(root)
        if number == 0:
            return None
        with translated("eth_getLogs"):
            logs = self._client.w3.eth.get_logs(
                {
                    "address": self._address,
                    "fromBlock": number,
                    "toBlock": number,
                    "topics": [_ANCHORED_TOPIC, "0x" + root.hex()],
                }
            )
        if not logs:
            # The state says anchored but the block has no event: the node is behind or
            # reorganising between our two calls; ask again later.
            return None
        entry = logs[0]
        tx_hash = "0x" + bytes(entry["transactionHash"]).hex()
        return self._confirmed(tx_hash, number, bytes(entry["blockHash"]))

    def latest_block(self) -> int:
        self._client.check_chain()
        return self._client.latest_block()

    def block_hash(self, number: int) -> bytes | None:
        """The canonical block ``number``'s hash; None beyond the head (a rewound chain)."""
        self._client.check_chain()
        with translated("eth_getBlockByNumber"):
            try:
                block = self._client.w3.eth.get_block(number)
            except BlockNotFound:
                return None
        return bytes(block["hash"])

    # -- helpers --------------------------------------------------------------------------

    def _confirmed(self, tx_hash: str, number: int, block_hash: bytes) -> AnchorConfirmation | None:
        confirmations = self._client.latest_block() - number + 1
        if confirmations < self.config.confirmations:
            return None
        block_time = self._client.block_time(number, block_hash)
        if block_time is None:
            return None  # reorganised under us
        return AnchorConfirmation(
            chain_id=self.chain_id,
            contract=self._address,
            tx_hash=tx_hash,
            block_number=number,
            block_time=block_time,
            confirmations=confirmations,
            block_hash=block_hash,
        )

    def _check_own(self, tx: AnchorTx) -> None:
        if (tx.chain_id, tx.contract.lower()) != (self.chain_id, self._address.lower()):
            raise UsageError(
                f"{self.name}: transaction {tx.tx_hash} is for chain {tx.chain_id} contract "
                f"{tx.contract}, not this backend's"
            )

    def _on_send_error(self, tx: AnchorTx, exc: Web3RPCError) -> None:
        text = str(exc.message).lower()
        if any(marker in text for marker in _ALREADY_KNOWN):
            log.info("%s: tx %s already known to the node", self.name, tx.tx_hash)
            return
        if any(marker in text for marker in _NONCE_USED):
            # Our nonce is spent: fine if by this very transaction (mined earlier, e.g. before a
            # crash), a conflict if by another one.
            if self._client.receipt(tx.tx_hash) is not None:
                log.info("%s: tx %s already mined", self.name, tx.tx_hash)
                return
            raise ChainError(
                f"{self.name}: nonce {tx.nonce} of tx {tx.tx_hash} was used by another "
                f"transaction ({exc.message})",
                reason=Reason.TX_REJECTED,
            ) from exc
        if any(marker in text for marker in UNAVAILABLE_TEXT):
            raise ChainError(
                f"{self.name}: node busy ({exc.message})", reason=Reason.CHAIN_UNAVAILABLE
            ) from exc
        raise ChainError(
            f"{self.name}: the node rejected tx {tx.tx_hash}: {exc.message}",
            reason=Reason.TX_REJECTED,
        ) from exc
