"""AnchorRegistry on a real anvil: append-only anchors, custom errors, the optional allow-list.

The contract is driven with plain web3 here (anvil's dev accounts are unlocked, so anvil signs),
independently of the EVM backend, so these tests pin the contract's own behaviour.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from eth_abi import decode
from web3 import HTTPProvider, Web3
from web3.contract import Contract
from web3.exceptions import ContractCustomError

from anchor.contracts import load_artifact
from anchor.local import AnvilNode
from integration.chain_fixtures import AnvilFactory

ARTIFACT = load_artifact()
ZERO = bytes(32)


def _selector(signature: str) -> str:
    return "0x" + Web3.keccak(text=signature).hex()[:8]


def _custom_error(exc: ContractCustomError) -> tuple[str, tuple[Any, ...]]:
    """(error name, decoded arguments) of a revert with one of the registry's custom errors."""
    data = str(exc.data)
    errors = {
        _selector("AlreadyAnchored(bytes32,uint256)"): ("AlreadyAnchored", ["bytes32", "uint256"]),
        _selector("NotSubmitter(address)"): ("NotSubmitter", ["address"]),
        _selector("ZeroRoot()"): ("ZeroRoot", []),
        _selector("ZeroTreeSize()"): ("ZeroTreeSize", []),
        _selector("InvalidSubmitter(address)"): ("InvalidSubmitter", ["address"]),
    }
    name, types = errors[data[:10]]
    return name, tuple(decode(types, bytes.fromhex(data[10:])))


@pytest.fixture(scope="module")
def w3(anvil: AnvilNode) -> Iterator[Web3]:
    yield Web3(HTTPProvider(anvil.rpc_url, exception_retry_configuration=None))


def _deploy(w3: Web3, submitters: list[str] | None = None, sender: int = 0) -> Contract:
    factory = w3.eth.contract(abi=ARTIFACT["abi"], bytecode=ARTIFACT["bytecode"])
    tx_hash = factory.constructor(submitters or []).transact({"from": w3.eth.accounts[sender]})
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=10)
    assert receipt["status"] == 1
    return w3.eth.contract(address=receipt["contractAddress"], abi=ARTIFACT["abi"])


@pytest.fixture(scope="module")
def registry(w3: Web3) -> Contract:
    return _deploy(w3)


def _anchor(registry: Contract, root: bytes, size: int, sender: str) -> Any:
    # An explicit gas limit skips web3's estimate, so a reverting call is mined (status 0)
    # instead of being refused before sending.
    tx_hash = registry.functions.anchor(root, size).transact({"from": sender, "gas": 200_000})
    return registry.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=10)


def test_anchor_records_block_number_and_emits_event(w3: Web3, registry: Contract) -> None:
    root = os.urandom(32)
    sender = w3.eth.accounts[1]
    assert registry.functions.anchoredAt(root).call() == 0

    receipt = _anchor(registry, root, 42, sender)

    assert receipt["status"] == 1
    assert registry.functions.anchoredAt(root).call() == receipt["blockNumber"]
    (event,) = registry.events.Anchored().process_receipt(receipt)
    assert event["args"]["root"] == root
    assert event["args"]["treeSize"] == 42
    assert event["args"]["submitter"] == sender
    assert event["address"] == registry.address
    # root and submitter are indexed: a verifier can filter logs by root.
    (log,) = receipt["logs"]
    assert log["topics"][1] == root
    assert log["topics"][0] == Web3.keccak(text="Anchored(bytes32,uint64,address)")


def test_anchoring_a_root_again_reverts_and_keeps_the_first_block(
    w3: Web3, registry: Contract
) -> None:
    root = os.urandom(32)
    first = _anchor(registry, root, 7, w3.eth.accounts[1])

    # Same root, other size, other sender: still refused, and the record is unchanged.
    with pytest.raises(ContractCustomError) as exc:
        registry.functions.anchor(root, 8).call({"from": w3.eth.accounts[2]})
    assert _custom_error(exc.value) == ("AlreadyAnchored", (root, first["blockNumber"]))
    second = _anchor(registry, root, 8, w3.eth.accounts[2])
    assert second["status"] == 0
    assert registry.events.Anchored().process_receipt(second) == ()
    assert registry.functions.anchoredAt(root).call() == first["blockNumber"]


def test_zero_root_and_zero_size_revert(w3: Web3, registry: Contract) -> None:
    sender = {"from": w3.eth.accounts[1]}
    with pytest.raises(ContractCustomError) as exc:
        registry.functions.anchor(ZERO, 1).call(sender)
    assert _custom_error(exc.value)[0] == "ZeroRoot"
    with pytest.raises(ContractCustomError) as exc:
        registry.functions.anchor(os.urandom(32), 0).call(sender)
    assert _custom_error(exc.value)[0] == "ZeroTreeSize"
    assert _anchor(registry, ZERO, 1, w3.eth.accounts[1])["status"] == 0
    assert registry.functions.anchoredAt(ZERO).call() == 0


def test_open_registry_lets_anyone_anchor(w3: Web3, registry: Contract) -> None:
    assert registry.functions.submittersRestricted().call() is False
    stranger = w3.eth.accounts[9]
    assert registry.functions.isSubmitter(stranger).call() is True
    assert _anchor(registry, os.urandom(32), 1, stranger)["status"] == 1


def test_allow_list_is_enforced(w3: Web3) -> None:
    allowed, other = w3.eth.accounts[3], w3.eth.accounts[4]
    registry = _deploy(w3, [allowed], sender=5)

    assert registry.functions.submittersRestricted().call() is True
    assert registry.functions.isSubmitter(allowed).call() is True
    assert registry.functions.isSubmitter(other).call() is False
    # Not even the deployer may anchor: the list is all there is, and there is no owner.
    assert registry.functions.isSubmitter(w3.eth.accounts[5]).call() is False

    root = os.urandom(32)
    with pytest.raises(ContractCustomError) as exc:
        registry.functions.anchor(root, 1).call({"from": other})
    assert _custom_error(exc.value) == ("NotSubmitter", (other.lower(),))
    assert _anchor(registry, root, 1, other)["status"] == 0
    assert registry.functions.anchoredAt(root).call() == 0

    receipt = _anchor(registry, root, 1, allowed)
    assert receipt["status"] == 1
    assert registry.functions.anchoredAt(root).call() == receipt["blockNumber"]


def test_constructor_rejects_the_zero_address(w3: Web3) -> None:
    factory = w3.eth.contract(abi=ARTIFACT["abi"], bytecode=ARTIFACT["bytecode"])
    zero = "0x" + "00" * 20
    with pytest.raises(ContractCustomError) as exc:
        factory.constructor([zero]).estimate_gas({"from": w3.eth.accounts[0]})
    assert _custom_error(exc.value)[0] == "InvalidSubmitter"


def test_nothing_can_change_an_anchored_root(w3: Web3, registry: Contract) -> None:
    # The ABI's only state-changing entry point is anchor(), which refuses a known root (above);
    # no fallback or receive function, so no other call reaches the contract's storage.
    mutating = {
        entry["name"]
        for entry in ARTIFACT["abi"]
        if entry["type"] == "function" and entry["stateMutability"] not in ("view", "pure")
    }
    assert mutating == {"anchor"}
    kinds = {entry["type"] for entry in ARTIFACT["abi"]}
    assert kinds == {"constructor", "function", "event", "error"}
    functions = sorted(e["name"] for e in ARTIFACT["abi"] if e["type"] == "function")
    assert functions == ["anchor", "anchoredAt", "isSubmitter", "submittersRestricted"]

    # Calls to unknown selectors and plain value transfers revert.
    sender = w3.eth.accounts[1]
    for tx in (
        {"from": sender, "to": registry.address, "data": "0xdeadbeef", "gas": 100_000},
        {"from": sender, "to": registry.address, "value": 1, "gas": 100_000},
    ):
        receipt = w3.eth.wait_for_transaction_receipt(w3.eth.send_transaction(tx), timeout=10)
        assert receipt["status"] == 0


def test_registries_on_two_chains_are_independent(anvil_factory: AnvilFactory) -> None:
    # The same root anchors separately on each chain (dual anchoring).
    root = os.urandom(32)
    blocks = []
    for chain_id in (1001, 1002):
        node = anvil_factory(chain_id=chain_id)
        w3 = Web3(HTTPProvider(node.rpc_url, exception_retry_configuration=None))
        assert w3.eth.chain_id == chain_id
        registry = _deploy(w3)
        node.mine(chain_id - 1000)  # different heights on the two chains
        receipt = _anchor(registry, root, 3, w3.eth.accounts[1])
        assert receipt["status"] == 1
        blocks.append(registry.functions.anchoredAt(root).call())
    assert blocks[0] != blocks[1]
