"""The monitor's view of one chain: ``eth_chainId``, ``eth_blockNumber``, the senders of the
operator's anchoring transactions and the AnchorRegistry's ``Anchored`` events (``eth_getLogs``
over block ranges), decoded into :class:`~anchor.log_view.AnchoredEvent`. web3 and JSON-RPC
failures become :class:`~anchor.monitor.api_client.MonitorError` here."""

from __future__ import annotations

import sys
from typing import Any

from anchor.log_view import AnchoredEvent
from anchor.monitor.api_client import MonitorError

# py_ecc (under web3) raises the recursion limit at import; put it back (see
# anchor.anchoring.chains.evm_client for why).
_RECURSION_LIMIT = sys.getrecursionlimit()
from web3 import HTTPProvider, Web3  # noqa: E402
from web3.exceptions import Web3Exception  # noqa: E402

sys.setrecursionlimit(_RECURSION_LIMIT)

__all__ = ["ANCHORED_TOPIC", "ChainFollower"]

ANCHORED_TOPIC = "0x" + Web3.keccak(text="Anchored(bytes32,uint64,address)").hex()
"""topic0 of ``Anchored(bytes32 indexed root, uint64 treeSize, address indexed submitter)``."""


def _hex(value: Any) -> str:
    raw = value if isinstance(value, bytes | bytearray) else bytes.fromhex(str(value)[2:])
    return "0x" + bytes(raw).hex()


def _decode(chain_id: int, entry: Any) -> AnchoredEvent | None:
    topics = [bytes(t) for t in entry["topics"]]
    if len(topics) != 3 or "0x" + topics[0].hex() != ANCHORED_TOPIC:
        return None
    data = bytes(entry["data"])
    if len(data) != 32 or int.from_bytes(data[:24], "big") != 0:
        return None  # not what the registry emits: treeSize is a uint64
    return AnchoredEvent(
        chain_id=chain_id,
        contract=Web3.to_checksum_address(entry["address"]),
        tx_hash=_hex(entry["transactionHash"]),
        block_number=int(entry["blockNumber"]),
        log_index=int(entry["logIndex"]),
        root=topics[1],
        tree_size=int.from_bytes(data, "big"),
        submitter=Web3.to_checksum_address(topics[2][12:]),
    )


class ChainFollower:
    """One JSON-RPC endpoint. Every call raises ``MonitorError`` when the node fails."""

    def __init__(self, rpc_url: str, *, timeout_s: float = 10.0) -> None:
        self.rpc_url = rpc_url
        self._w3 = Web3(HTTPProvider(rpc_url, request_kwargs={"timeout": timeout_s}))
        self._chain_id: int | None = None

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except (OSError, ValueError, KeyError, TypeError, Web3Exception) as exc:
            raise MonitorError(f"{what} on {self.rpc_url}: {exc}") from exc

    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = int(self._call("eth_chainId", lambda: self._w3.eth.chain_id))
        return self._chain_id

    def latest_block(self) -> int:
        return int(self._call("eth_blockNumber", lambda: self._w3.eth.block_number))

    def tx_sender(self, tx_hash: str) -> str | None:
        """The ``from`` of a transaction, or None when this node does not know it."""

        def get() -> str | None:
            try:
                tx = self._w3.eth.get_transaction(tx_hash)  # type: ignore[arg-type]
            except Web3Exception as exc:
                if "not found" in str(exc).lower():
                    return None
                raise
            return Web3.to_checksum_address(tx["from"])

        result: str | None = self._call("eth_getTransactionByHash", get)
        return result

    def anchored_events(self, contract: str, from_block: int, to_block: int) -> list[AnchoredEvent]:
        """Every ``Anchored`` event of ``contract`` in blocks [from_block, to_block], in order."""
        address = Web3.to_checksum_address(contract)
        logs = self._call(
            "eth_getLogs",
            lambda: self._w3.eth.get_logs(
                {
                    "address": address,
                    "fromBlock": from_block,
                    "toBlock": to_block,
                    "topics": [ANCHORED_TOPIC],
                }
            ),
        )
        chain_id = self.chain_id()
        events = []
        for entry in logs:
            if entry.get("removed"):
                continue
            event = self._call("decoding an Anchored log", _decode, chain_id, entry)
            if event is not None:
                events.append(event)
        events.sort(key=lambda e: (e.block_number, e.log_index))
        return events
