"""The EVM settings and the JSON-RPC client shared by the backend and deployment (web3.py).

:class:`EvmConfig` holds one backend's settings. :class:`EvmClient` is a web3 connection bound to
one config: the chain-identity check, the pending nonce, gas (a dry run or an estimate), the fee
fields per ``fee_mode`` (including the 12.5 % outbid of a replacement) and local signing, plus
the receipt and block look-ups. :func:`translated` turns web3, requests and socket failures into
:class:`~anchor.anchoring.chains.base.ChainError` at this edge. The rules these serve are in
:mod:`anchor.anchoring.chains.evm` (the backend, which re-exports :class:`EvmConfig`);
:mod:`anchor.anchoring.chains.evm_deploy` deploys the registry with the same client.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, cast
from urllib.parse import urlsplit

# py_ecc, which eth_account imports, raises the interpreter's recursion limit to 100 000 at
# import time. With that limit a deeply nested JSON document (a hostile receipt) overflows the C
# stack inside json.loads and kills the process instead of raising RecursionError; so the limit
# is put back right after the imports below (nothing we call from web3 needs deep recursion).
# Every module of this package that imports web3 or eth_account does the same.
_RECURSION_LIMIT = sys.getrecursionlimit()

from eth_account import Account  # noqa: E402
from eth_account.signers.local import LocalAccount  # noqa: E402
from web3 import HTTPProvider, Web3  # noqa: E402
from web3.exceptions import (  # noqa: E402
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

from anchor.anchoring.chains.base import ChainError  # noqa: E402
from anchor.errors import Reason, UsageError  # noqa: E402

sys.setrecursionlimit(_RECURSION_LIMIT)

__all__ = [
    "DEFAULT_GAS_LIMIT",
    "UNAVAILABLE_TEXT",
    "EvmClient",
    "EvmConfig",
    "FeeMode",
    "translated",
]

FeeMode = Literal["eip1559", "legacy", "zero"]
_FEE_MODES = ("eip1559", "legacy", "zero")
DEFAULT_GAS_LIMIT = 100_000
# A replacement must outbid the transaction it replaces; geth's default price bump is 10 %.
_BUMP_NUMERATOR, _BUMP_DENOMINATOR = 9, 8  # +12.5 %

_ERRORS = {
    "0x" + Web3.keccak(text=sig).hex()[:8]: (name, reason)
    for sig, name, reason in (
        ("AlreadyAnchored(bytes32,uint256)", "AlreadyAnchored", Reason.ALREADY_ANCHORED),
        ("NotSubmitter(address)", "NotSubmitter", Reason.TX_REJECTED),
        ("ZeroRoot()", "ZeroRoot", Reason.TX_REJECTED),
        ("ZeroTreeSize()", "ZeroTreeSize", Reason.TX_REJECTED),
    )
}
UNAVAILABLE_TEXT = ("timeout", "timed out", "rate limit", "too many requests", "unavailable")
"""Node error texts that mean "busy, try again": ``chain_unavailable``, retryable."""


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
        fee_mode: ``"eip1559"``, ``"legacy"`` or ``"zero"`` (the ``evm`` module docstring).
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
def translated(what: str) -> Iterator[None]:
    """Turn web3 / requests / socket failures inside the block into :class:`ChainError`."""
    try:
        yield
    except ChainError:
        raise
    except (ContractCustomError, ContractPanicError, ContractLogicError) as exc:
        raise _revert_error(exc, what) from exc
    except Web3RPCError as exc:
        text = str(exc.message).lower()
        unavailable = any(t in text for t in UNAVAILABLE_TEXT)
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


# ---------------------------------------------------------------------------------------------
# The shared RPC client (backend and deploy_registry)


class EvmClient:
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
        with translated("eth_chainId"):
            actual = self.w3.eth.chain_id
        if actual != self.config.chain_id:
            raise ChainError(
                f"{self.config.name}: {self.config.rpc_url} serves chain id {actual}, "
                f"configured {self.config.chain_id}",
                reason=Reason.CHAIN_MISMATCH,
            )
        self._chain_checked = True

    def pending_nonce(self) -> int:
        with translated("eth_getTransactionCount"):
            return int(self.w3.eth.get_transaction_count(self.signer.address, "pending"))

    def gas_for(self, call: TxParams) -> int:
        """The fixed gas limit after a dry run (eth_call), or an estimate plus the margin."""
        if self.config.gas_limit is None:
            with translated("eth_estimateGas"):
                estimate = int(self.w3.eth.estimate_gas(call))
            return math.ceil(estimate * self.config.gas_margin)
        with translated("eth_call"):
            self.w3.eth.call(call)
        return self.config.gas_limit

    def fee_fields(self, old: Mapping[str, int] | None) -> dict[str, int]:
        """Fee fields for a new transaction, outbidding ``old`` when it is a replacement."""
        cfg = self.config
        if cfg.fee_mode == "zero":
            return {"gasPrice": 0}
        if cfg.fee_mode == "legacy":
            with translated("eth_gasPrice"):
                price = cfg.gas_price if cfg.gas_price is not None else int(self.w3.eth.gas_price)
            if cfg.max_gas_price is not None:
                price = min(price, cfg.max_gas_price)
            if old is not None:
                price = max(price, _bump(old.get("gasPrice", 0)))
                self._check_cap("gasPrice", price, cfg.max_gas_price)
            return {"gasPrice": price}
        with translated("eth_getBlockByNumber"):
            block = self.w3.eth.get_block("latest")
        base = block.get("baseFeePerGas")
        if base is None:
            raise ChainError(
                f"{cfg.name}: the chain has no EIP-1559 base fee; use fee_mode legacy or zero"
            )
        if cfg.priority_fee_per_gas is not None:
            tip = cfg.priority_fee_per_gas
        else:
            with translated("eth_maxPriorityFeePerGas"):
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
        with translated("eth_getTransactionReceipt"):
            try:
                return self.w3.eth.get_transaction_receipt(cast(Any, tx_hash))
            except TransactionNotFound:
                return None

    def block_time(self, number: int, expected_hash: bytes | None = None) -> datetime | None:
        """The block's timestamp, or None when the block at ``number`` is not (any more) the
        one with ``expected_hash`` (a reorg between two calls)."""
        with translated("eth_getBlockByNumber"):
            block = self.w3.eth.get_block(number)
        if expected_hash is not None and bytes(block["hash"]) != bytes(expected_hash):
            return None
        return datetime.fromtimestamp(int(block["timestamp"]), tz=UTC)

    def latest_block(self) -> int:
        with translated("eth_blockNumber"):
            return int(self.w3.eth.block_number)
