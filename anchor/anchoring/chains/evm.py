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
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, NoReturn, cast
from urllib.parse import urlsplit

# py_ecc, which eth_account imports, raises the interpreter's recursion limit to 100 000 at
# import time. With that limit a deeply nested JSON document (a hostile receipt) overflows the C
# stack inside json.loads and kills the process instead of raising RecursionError; so the limit
# is put back right after the imports below (nothing we call from web3 needs deep recursion).
_RECURSION_LIMIT = sys.getrecursionlimit()

from eth_account import Account  # noqa: E402
from eth_account.signers.local import LocalAccount  # noqa: E402
from web3 import HTTPProvider, Web3  # noqa: E402
from web3.exceptions import (  # noqa: E402
    BlockNotFound,
    ContractCustomError,
    ContractLogicError,
    ContractPanicError,
    TimeExhausted,
    TransactionNotFound,
    Web3Exception,
    Web3RPCError,
)
from web3.middleware import ExtraDataToPOAMiddleware  # noqa: E402
from web3.types import TxParams, TxReceipt  # noqa: E402

from anchor.anchoring.chains.base import AnchorConfirmation, AnchorTx, ChainError, TxStatus  # noqa: E402
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

FeeMode = Literal["eip1559", "legacy", "zero"]
_FEE_MODES = ("eip1559", "legacy", "zero")
DEFAULT_GAS_LIMIT = 100_000
_MAX_UINT64 = 2**64 - 1
# A replacement must outbid the transaction it replaces; geth's default price bump is 10 %.
_BUMP_NUMERATOR, _BUMP_DENOMINATOR = 9, 8  # +12.5 %

_ANCHORED_TOPIC = "0x" + Web3.keccak(text="Anchored(bytes32,uint64,address)").hex()
_ERRORS = {
    "0x" + Web3.keccak(text=sig).hex()[:8]: (name, reason)
    for sig, name, reason in (
        ("AlreadyAnchored(bytes32,uint256)", "AlreadyAnchored", Reason.ALREADY_ANCHORED),
        ("NotSubmitter(address)", "NotSubmitter", Reason.TX_REJECTED),
        ("ZeroRoot()", "ZeroRoot", Reason.TX_REJECTED),
        ("ZeroTreeSize()", "ZeroTreeSize", Reason.TX_REJECTED),
    )
}
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
_UNAVAILABLE_TEXT = ("timeout", "timed out", "rate limit", "too many requests", "unavailable")


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class EvmConfig:
    """One EVM backend's settings (keyword-only). ``signer_key`` is never logged or shown.

    Args:
        name: unique backend name, e.g. ``"bsn-evm"``; recorded with each anchor.
        rpc_url: HTTP(S) JSON-RPC endpoint.
        chain_id: the chain id the endpoint must report (EIP-155).
        contract: the AnchorRegistry address ("" before ``cityanchor chain deploy``).
        signer_key: hex secp256k1 private key of the sending account, as read by the caller
            from a file or an environment variable; "" for a read-only backend.
        confirmations: blocks (including the anchoring one) before an anchor counts; 1 for
            anvil and instant-finality chains, 12+ on public chains.
        fee_mode: ``"eip1559"``, ``"legacy"`` or ``"zero"`` (see the module docstring).
        gas_limit: fixed gas limit per anchor; None estimates and adds ``gas_margin``.
        priority_fee_per_gas: fixed EIP-1559 tip in wei; None asks the node.
        max_priority_fee_per_gas / max_fee_per_gas: EIP-1559 caps in wei (None: no cap).
        gas_price / max_gas_price: legacy fixed price and cap in wei (None: node's / no cap).
        rpc_timeout: seconds per JSON-RPC request.
        receipt_timeout: seconds :func:`deploy_registry` waits for its receipt.
    """

    name: str
    rpc_url: str
    chain_id: int
    contract: str = ""
    signer_key: str = ""
    confirmations: int = 1
    fee_mode: FeeMode = "eip1559"
    gas_limit: int | None = DEFAULT_GAS_LIMIT
    gas_margin: float = 1.25
    priority_fee_per_gas: int | None = None
    max_priority_fee_per_gas: int | None = None
    max_fee_per_gas: int | None = None
    gas_price: int | None = None
    max_gas_price: int | None = None
    rpc_timeout: float = 10.0
    receipt_timeout: float = 120.0

    def __post_init__(self) -> None:
        # Messages never include signer_key: they end up in logs and terminals.
        if not self.name:
            raise UsageError("EVM backend needs a name")
        if urlsplit(self.rpc_url).scheme not in ("http", "https"):
            raise UsageError(f"{self.name}: rpc_url must be http:// or https://")
        if not 0 < self.chain_id < 2**63:
            raise UsageError(f"{self.name}: chain_id {self.chain_id} is out of range")
        if self.contract and not Web3.is_address(self.contract):
            raise UsageError(f"{self.name}: contract {self.contract!r} is not an address")
        if self.signer_key:
            key = self.signer_key.removeprefix("0x")
            if len(key) != 64 or any(c not in "0123456789abcdefABCDEF" for c in key):
                raise UsageError(f"{self.name}: signer key is not 32 bytes of hex")
        if self.confirmations < 1:
            raise UsageError(f"{self.name}: confirmations must be at least 1")
        if self.fee_mode not in _FEE_MODES:
            raise UsageError(f"{self.name}: fee_mode must be one of {', '.join(_FEE_MODES)}")
        if self.gas_limit is not None and not 21_000 <= self.gas_limit <= 30_000_000:
            raise UsageError(f"{self.name}: gas_limit {self.gas_limit} is out of range")
        if self.gas_margin < 1:
            raise UsageError(f"{self.name}: gas_margin must be >= 1")
        for fee in ("priority_fee_per_gas", "max_priority_fee_per_gas", "max_fee_per_gas",
                    "gas_price", "max_gas_price"):  # fmt: skip
            value = getattr(self, fee)
            if value is not None and value < 0:
                raise UsageError(f"{self.name}: {fee} must not be negative")
        if self.rpc_timeout <= 0 or self.receipt_timeout <= 0:
            raise UsageError(f"{self.name}: timeouts must be positive")

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={getattr(self, name)!r}"
            for name in self.__dataclass_fields__
            if name != "signer_key"
        )
        key = "'<redacted>'" if self.signer_key else "''"
        return f"EvmConfig({shown}, signer_key={key})"

    __str__ = __repr__


# ---------------------------------------------------------------------------------------------
# Error translation at the edge


def _bump(value: int) -> int:
    """``value`` + 12.5 % rounded up, and at least ``value + 1`` (a zero fee still moves)."""
    return max(value + 1, math.ceil(value * _BUMP_NUMERATOR / _BUMP_DENOMINATOR))


def _revert_data(exc: ContractLogicError) -> str:
    data = exc.data
    if isinstance(data, dict):  # some clients wrap it: {"data": "0x..."}
        data = data.get("data", "")
    return data if isinstance(data, str) else ""


def _revert_error(exc: ContractLogicError, what: str) -> ChainError:
    data = _revert_data(exc)
    known = _ERRORS.get(data[:10].lower())
    if known is not None:
        name, reason = known
        return ChainError(f"{what} reverted with {name} ({data})", reason=reason)
    return ChainError(f"{what} reverted: {exc.message or data or exc}", reason=Reason.TX_REVERTED)


def _http_status(exc: OSError) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """Turn web3 / requests / socket failures inside the block into :class:`ChainError`."""
    try:
        yield
    except ChainError:
        raise
    except (ContractCustomError, ContractPanicError, ContractLogicError) as exc:
        raise _revert_error(exc, what) from exc
    except Web3RPCError as exc:
        text = str(exc.message).lower()
        unavailable = any(t in text for t in _UNAVAILABLE_TEXT)
        reason = Reason.CHAIN_UNAVAILABLE if unavailable else Reason.CHAIN_ERROR
        raise ChainError(f"{what}: the node answered {exc.message}", reason=reason) from exc
    except TimeExhausted as exc:
        raise ChainError(f"{what}: {exc}", reason=Reason.CHAIN_UNAVAILABLE) from exc
    except OSError as exc:
        # requests' ConnectionError, Timeout and HTTPError are OSErrors; a 4xx other than 429
        # (bad API key, wrong path) will not heal by retrying.
        status = _http_status(exc)
        if status is not None and 400 <= status < 500 and status != 429:
            raise ChainError(f"{what}: HTTP {status} from the RPC endpoint") from exc
        raise ChainError(
            f"{what}: RPC endpoint unreachable ({exc})", reason=Reason.CHAIN_UNAVAILABLE
        ) from exc
    except (Web3Exception, ValueError, KeyError, TypeError) as exc:
        # Malformed answers (BadResponseFormat, missing fields) from a misbehaving endpoint.
        raise ChainError(f"{what}: unexpected answer from the node ({exc})") from exc


def _check_root(root: bytes) -> None:
    if not isinstance(root, bytes) or len(root) != 32:
        raise UsageError("a root is exactly 32 bytes")


# ---------------------------------------------------------------------------------------------
# The shared RPC client (backend and deploy_registry)


class _Client:
    """A web3 connection bound to one config: chain check, fees, signing."""

    def __init__(self, config: EvmConfig, w3: Web3 | None = None) -> None:
        self.config = config
        if w3 is None:
            provider = HTTPProvider(
                config.rpc_url,
                request_kwargs={"timeout": config.rpc_timeout},
                # The job retries with its own back-off; web3's silent retries would only
                # stretch each failure.
                exception_retry_configuration=None,
            )
            w3 = Web3(provider)
            # PoA / QBFT chains (BSN permissioned networks, Besu, Quorum) put more than 32 bytes
            # in extraData, which web3 rejects without this; harmless on other chains.
            w3.middleware_onion.inject(ExtraDataToPOAMiddleware, layer=0)
        self.w3 = w3
        self.account: LocalAccount | None = (
            Account.from_key(config.signer_key) if config.signer_key else None
        )
        self._chain_checked = False

    @property
    def signer(self) -> LocalAccount:
        if self.account is None:
            raise UsageError(f"{self.config.name}: no signer key configured (read-only backend)")
        return self.account

    def check_chain(self, *, fresh: bool = False) -> None:
        if self._chain_checked and not fresh:
            return
        with _translated("eth_chainId"):
            actual = self.w3.eth.chain_id
        if actual != self.config.chain_id:
            raise ChainError(
                f"{self.config.name}: {self.config.rpc_url} serves chain id {actual}, "
                f"configured {self.config.chain_id}",
                reason=Reason.CHAIN_MISMATCH,
            )
        self._chain_checked = True

    def pending_nonce(self) -> int:
        with _translated("eth_getTransactionCount"):
            return int(self.w3.eth.get_transaction_count(self.signer.address, "pending"))

    def gas_for(self, call: TxParams) -> int:
        """The fixed gas limit after a dry run (eth_call), or an estimate plus the margin."""
        if self.config.gas_limit is None:
            with _translated("eth_estimateGas"):
                estimate = int(self.w3.eth.estimate_gas(call))
            return math.ceil(estimate * self.config.gas_margin)
        with _translated("eth_call"):
            self.w3.eth.call(call)
        return self.config.gas_limit

    def fee_fields(self, old: Mapping[str, int] | None) -> dict[str, int]:
        """Fee fields for a new transaction, outbidding ``old`` when it is a replacement."""
        cfg = self.config
        if cfg.fee_mode == "zero":
            return {"gasPrice": 0}
        if cfg.fee_mode == "legacy":
            with _translated("eth_gasPrice"):
                price = cfg.gas_price if cfg.gas_price is not None else int(self.w3.eth.gas_price)
            if cfg.max_gas_price is not None:
                price = min(price, cfg.max_gas_price)
            if old is not None:
                price = max(price, _bump(old.get("gasPrice", 0)))
                self._check_cap("gasPrice", price, cfg.max_gas_price)
            return {"gasPrice": price}
        with _translated("eth_getBlockByNumber"):
            block = self.w3.eth.get_block("latest")
        base = block.get("baseFeePerGas")
        if base is None:
            raise ChainError(
                f"{cfg.name}: the chain has no EIP-1559 base fee; use fee_mode legacy or zero"
            )
        if cfg.priority_fee_per_gas is not None:
            tip = cfg.priority_fee_per_gas
        else:
            with _translated("eth_maxPriorityFeePerGas"):
                tip = int(self.w3.eth.max_priority_fee)
        if cfg.max_priority_fee_per_gas is not None:
            tip = min(tip, cfg.max_priority_fee_per_gas)
        max_fee = 2 * int(base) + tip
        if cfg.max_fee_per_gas is not None:
            max_fee = min(max_fee, cfg.max_fee_per_gas)
            tip = min(tip, max_fee)
        if old is not None:
            tip = max(tip, _bump(old.get("maxPriorityFeePerGas", 0)))
            max_fee = max(max_fee, _bump(old.get("maxFeePerGas", 0)), tip)
            self._check_cap("maxPriorityFeePerGas", tip, cfg.max_priority_fee_per_gas)
            self._check_cap("maxFeePerGas", max_fee, cfg.max_fee_per_gas)
        return {"maxFeePerGas": max_fee, "maxPriorityFeePerGas": tip}

    def _check_cap(self, field: str, value: int, cap: int | None) -> None:
        if cap is not None and value > cap:
            raise ChainError(
                f"{self.config.name}: a replacement needs {field} {value} wei, above the "
                f"configured cap {cap}; raise the cap or wait for the original",
                reason=Reason.TX_REJECTED,
            )

    def sign(self, params: dict[str, Any]) -> tuple[bytes, str]:
        tx = dict(params, chainId=self.config.chain_id, value=0)
        if "maxFeePerGas" in tx:
            tx["type"] = 2
        signed = self.signer.sign_transaction(tx)
        return bytes(signed.raw_transaction), "0x" + bytes(signed.hash).hex()

    def receipt(self, tx_hash: str) -> TxReceipt | None:
        with _translated("eth_getTransactionReceipt"):
            try:
                return self.w3.eth.get_transaction_receipt(cast(Any, tx_hash))
            except TransactionNotFound:
                return None

    def block_time(self, number: int, expected_hash: bytes | None = None) -> datetime | None:
        """The block's timestamp, or None when the block at ``number`` is not (any more) the
        one with ``expected_hash`` (a reorg between two calls)."""
        with _translated("eth_getBlockByNumber"):
            block = self.w3.eth.get_block(number)
        if expected_hash is not None and bytes(block["hash"]) != bytes(expected_hash):
            return None
        return datetime.fromtimestamp(int(block["timestamp"]), tz=UTC)

    def latest_block(self) -> int:
        with _translated("eth_blockNumber"):
            return int(self.w3.eth.block_number)


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
        self._client = _Client(config, w3)
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
        with _translated("eth_getCode"):
            code = self._client.w3.eth.get_code(self._address)
        if not code:
            raise ChainError(
                f"{self.name}: no contract at {self._address} on chain {self.chain_id}; "
                "deploy one with `cityanchor chain deploy`"
            )

    def anchored_at(self, root: bytes) -> int:
        _check_root(root)
        self._client.check_chain()
        with _translated("anchoredAt"):
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
            with _translated("eth_sendRawTransaction"):
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
        with _translated("eth_getTransactionByHash"):
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
        with _translated("eth_getLogs"):
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
        with _translated("eth_getBlockByNumber"):
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
        if any(marker in text for marker in _UNAVAILABLE_TEXT):
            raise ChainError(
                f"{self.name}: node busy ({exc.message})", reason=Reason.CHAIN_UNAVAILABLE
            ) from exc
        raise ChainError(
            f"{self.name}: the node rejected tx {tx.tx_hash}: {exc.message}",
            reason=Reason.TX_REJECTED,
        ) from exc


# ---------------------------------------------------------------------------------------------
# Deployment


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
    client = _Client(config, w3)
    signer = client.signer
    client.check_chain(fresh=True)
    artifact = load_artifact()
    factory = client.w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    data = factory.constructor(
        [Web3.to_checksum_address(a) for a in submitters]
    ).data_in_transaction
    with _translated("eth_estimateGas"):
        estimate = int(client.w3.eth.estimate_gas({"from": signer.address, "data": data}))
    params: dict[str, Any] = {
        "nonce": client.pending_nonce(),
        "data": data,
        "gas": math.ceil(estimate * max(config.gas_margin, 1.2)),
        **client.fee_fields(None),
    }
    raw, tx_hash = client.sign(params)
    with _translated("eth_sendRawTransaction"):
        try:
            client.w3.eth.send_raw_transaction(raw)
        except Web3RPCError as exc:
            _raise_rejected(config.name, tx_hash, exc)
    with _translated("eth_getTransactionReceipt"):
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
