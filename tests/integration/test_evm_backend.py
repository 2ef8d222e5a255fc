"""The EVM backend against real anvil nodes: prepare/broadcast/confirm, failures, fee modes.

Also the anvil launcher itself (anchor.local.anvil): accounts, persistence, no leftovers.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from web3 import HTTPProvider, Web3

from anchor.anchoring.chains.base import AnchorTx, ChainBackend, ChainError
from anchor.anchoring.chains.evm import EvmBackend, EvmConfig, deploy_registry
from anchor.errors import UsageError
from anchor.local import DEV_MNEMONIC, AnvilNode, ServiceError, find_anvil
from integration.chain_fixtures import AnvilFactory

Account.enable_unaudited_hdwallet_features()


def _config(node: AnvilNode, contract: str = "", account: int = 0, **overrides: Any) -> EvmConfig:
    settings: dict[str, Any] = {
        "name": f"anvil-{node.chain_id}",
        "rpc_url": node.rpc_url,
        "chain_id": node.chain_id,
        "contract": contract,
        "signer_key": node.accounts[account].private_key,
    }
    settings.update(overrides)
    return EvmConfig(**settings)


def _deploy(node: AnvilNode, account: int = 0, **overrides: Any) -> str:
    return deploy_registry(_config(node, account=account, **overrides))


def _w3(node: AnvilNode) -> Web3:
    return Web3(HTTPProvider(node.rpc_url, exception_retry_configuration=None))


def _root() -> bytes:
    return os.urandom(32)


def _send(backend: EvmBackend, tx: AnchorTx, timeout: float = 5.0) -> None:
    """Broadcast on an automining node and wait until mined: anvil answers
    eth_sendRawTransaction before its automine block exists."""
    backend.broadcast(tx)
    deadline = time.monotonic() + timeout
    while (status := backend.status(tx)) == "pending":
        assert time.monotonic() < deadline, f"{tx.tx_hash} not mined within {timeout} s"
        time.sleep(0.01)
    assert status == "mined", status


# ---------------------------------------------------------------------------------------------
# The happy path


def test_prepare_broadcast_confirm_with_two_confirmations(anvil_factory: AnvilFactory) -> None:
    node = anvil_factory()
    backend = EvmBackend(_config(node, _deploy(node), confirmations=2))
    assert isinstance(backend, ChainBackend)
    backend.ping()
    root = _root()
    assert backend.anchored_at(root) == 0

    tx = backend.prepare(root, 17)
    # Nothing was sent: the caller persists tx first.
    assert backend.status(tx) == "dropped"
    assert backend.anchored_at(root) == 0
    assert (tx.backend, tx.chain_id, tx.contract, tx.root, tx.tree_size) == (
        backend.name, node.chain_id, backend.contract, root, 17
    )  # fmt: skip
    assert tx.tx_hash == "0x" + Web3.keccak(tx.raw_tx).hex()
    assert AnchorTx.from_json(tx.to_json()) == tx

    _send(backend, tx)  # automine
    assert backend.status(tx) == "mined"
    mined_in = backend.anchored_at(root)
    assert mined_in > 0
    assert backend.confirmation(tx) is None  # 1 of 2 confirmations

    node.mine(1)
    conf = backend.confirmation(tx)
    assert conf is not None
    block = _w3(node).eth.get_block(mined_in)
    assert (conf.chain_id, conf.contract, conf.tx_hash) == (
        node.chain_id,
        backend.contract,
        tx.tx_hash,
    )
    assert conf.block_number == mined_in
    assert conf.confirmations == 2
    assert conf.block_time == datetime.fromtimestamp(block["timestamp"], tz=UTC)
    assert conf.block_time.tzinfo is UTC
    # The block hash, so that a later re-check can tell a reorganised block (issue 11 item 4).
    assert conf.block_hash == bytes(block["hash"]) == backend.block_hash(mined_in)
    assert backend.latest_block() == mined_in + 1
    assert backend.block_hash(mined_in + 1000) is None  # beyond the head: no such block

    # The event carries root, size and our account.
    receipt = _w3(node).eth.get_transaction_receipt(tx.tx_hash)
    event = backend.w3.eth.contract(address=backend.contract, abi=backend._registry.abi)
    (log,) = event.events.Anchored().process_receipt(receipt)
    assert log["args"]["treeSize"] == 17
    assert log["args"]["submitter"] == backend.sender


def test_find_anchor_without_the_tx_hash(anvil: AnvilNode, anchor_registry: str) -> None:
    backend = EvmBackend(_config(anvil, anchor_registry, account=1, confirmations=3))
    root = _root()
    assert backend.find_anchor(root) is None
    tx = backend.prepare(root, 5)
    _send(backend, tx)
    # Anchored but not yet confirmed: find_anchor says None, anchored_at tells them apart.
    assert backend.find_anchor(root) is None
    assert backend.anchored_at(root) > 0
    anvil.mine(2)

    # A fresh backend (a restarted job that lost the hash) finds the same anchor.
    recovered = EvmBackend(_config(anvil, anchor_registry, account=1, confirmations=3))
    found = recovered.find_anchor(root)
    assert found is not None
    assert found == backend.confirmation(tx)
    assert found.tx_hash == tx.tx_hash


def test_prepare_refuses_an_anchored_root(anvil: AnvilNode, anchor_registry: str) -> None:
    backend = EvmBackend(_config(anvil, anchor_registry, account=2))
    root = _root()
    _send(backend, backend.prepare(root, 1))
    with pytest.raises(ChainError) as exc:
        backend.prepare(root, 2)
    assert exc.value.reason == "already_anchored"
    assert exc.value.retryable is False
    for bad_root, size in ((bytes(32), 1), (_root(), 0), (_root(), 2**64), (b"short", 1)):
        with pytest.raises(UsageError):
            backend.prepare(bad_root, size)


def test_racing_transactions_for_one_root_anchor_once(anvil_factory: AnvilFactory) -> None:
    # Two signed transactions for the same root (e.g. a job that lost track of the first) both
    # pass the dry run while neither is mined; the contract lets only the first through.
    node = anvil_factory()
    backend = EvmBackend(_config(node, _deploy(node)))
    node.set_automine(False)
    root = _root()
    first, second = backend.prepare(root, 3), backend.prepare(root, 3)
    assert second.nonce == first.nonce + 1
    backend.broadcast(first)
    backend.broadcast(second)
    node.mine(1)
    assert backend.status(first) == "mined"
    assert backend.status(second) == "failed"
    assert backend.confirmation(first) is not None
    with pytest.raises(ChainError) as exc:
        backend.confirmation(second)
    assert exc.value.reason == "already_anchored"


def test_allow_list_refuses_other_signers(anvil: AnvilNode) -> None:
    allowed = anvil.accounts[3].address
    address = deploy_registry(_config(anvil, account=3), [allowed])
    stranger = EvmBackend(_config(anvil, address, account=4))
    with pytest.raises(ChainError) as exc:
        stranger.prepare(_root(), 1)
    assert exc.value.reason == "tx_rejected"
    assert "NotSubmitter" in str(exc.value)
    submitter = EvmBackend(_config(anvil, address, account=3))
    tx = submitter.prepare(_root(), 1)
    _send(submitter, tx)
    assert submitter.status(tx) == "mined"


# ---------------------------------------------------------------------------------------------
# Failures


def test_chain_id_mismatch(anvil: AnvilNode, anchor_registry: str) -> None:
    backend = EvmBackend(_config(anvil, anchor_registry, chain_id=1))
    for call in (
        backend.ping,
        lambda: backend.prepare(_root(), 1),
        lambda: backend.anchored_at(_root()),
    ):
        with pytest.raises(ChainError) as exc:
            call()
        assert exc.value.reason == "chain_mismatch"
        assert exc.value.retryable is False
    with pytest.raises(ChainError) as exc:
        deploy_registry(_config(anvil, chain_id=5))
    assert exc.value.reason == "chain_mismatch"


def test_no_contract_at_address(anvil: AnvilNode) -> None:
    backend = EvmBackend(_config(anvil, "0x" + "12" * 20))
    with pytest.raises(ChainError) as exc:
        backend.ping()
    assert exc.value.reason == "chain_error"


def test_rpc_down_is_retryable_and_state_survives_a_restart(
    anvil_factory: AnvilFactory,
    tmp_path: Path,
) -> None:
    state = tmp_path / "chain-state.json"
    node = anvil_factory(chain_id=4242, state_path=state)
    address = _deploy(node)
    backend = EvmBackend(_config(node, address))
    root = _root()
    tx = backend.prepare(root, 9)
    _send(backend, tx)
    anchored_in = backend.anchored_at(root)
    pending = backend.prepare(_root(), 10)

    node.stop()  # dumps the chain to state_path
    assert state.is_file()
    for call in (
        lambda: backend.anchored_at(root),
        lambda: backend.broadcast(pending),
        lambda: backend.status(tx),
        lambda: backend.confirmation(tx),
        lambda: backend.prepare(_root(), 11),
        backend.ping,
        backend.next_nonce,
    ):
        with pytest.raises(ChainError) as exc:
            call()
        assert exc.value.reason == "chain_unavailable"
        assert exc.value.retryable is True
        assert exc.value.__cause__ is not None

    node.start()  # same port while free, state loaded: the backend simply carries on
    assert backend.anchored_at(root) == anchored_in
    _send(backend, pending)
    assert backend.status(pending) == "mined"


def test_dropped_transaction_is_replaced_with_the_same_nonce(anvil_factory: AnvilFactory) -> None:
    node = anvil_factory()
    backend = EvmBackend(_config(node, _deploy(node)))
    node.set_automine(False)
    root = _root()
    tx = backend.prepare(root, 4)
    backend.broadcast(tx)
    assert backend.status(tx) == "pending"

    node.drop_transaction(tx.tx_hash)
    assert backend.status(tx) == "dropped"
    assert backend.confirmation(tx) is None

    replacement = backend.prepare(root, 4, replaces=tx)
    assert replacement.nonce == tx.nonce
    assert replacement.tx_hash != tx.tx_hash
    for field in ("maxFeePerGas", "maxPriorityFeePerGas"):
        assert replacement.fee_fields[field] * 8 >= tx.fee_fields[field] * 9  # >= +12.5 %
    backend.broadcast(replacement)
    node.mine(1)
    assert backend.status(replacement) == "mined"
    assert backend.status(tx) == "dropped"
    assert backend.confirmation(replacement) is not None
    # The local nonce counter did not move for the replacement.
    assert backend.prepare(_root(), 5).nonce == tx.nonce + 1


def test_replacement_outbids_a_transaction_still_pending(anvil_factory: AnvilFactory) -> None:
    # A stuck (underpriced) transaction is replaced while the node still holds it: the node
    # accepts the replacement only because it outbids the original on every fee field.
    node = anvil_factory()
    backend = EvmBackend(_config(node, _deploy(node)))
    node.set_automine(False)
    root = _root()
    stuck = backend.prepare(root, 6)
    backend.broadcast(stuck)
    replacement = backend.prepare(root, 6, replaces=stuck)
    backend.broadcast(replacement)
    node.mine(1)
    assert backend.status(replacement) == "mined"
    assert backend.status(stuck) == "dropped"
    # Broadcasting the superseded transaction now fails loudly: its nonce went to another tx.
    with pytest.raises(ChainError) as exc:
        backend.broadcast(stuck)
    assert exc.value.reason == "tx_rejected"


def test_replacement_respects_the_fee_cap(anvil_factory: AnvilFactory) -> None:
    node = anvil_factory()
    address = _deploy(node)
    probe = EvmBackend(_config(node, address)).prepare(_root(), 1)
    cap = probe.fee_fields["maxFeePerGas"]
    backend = EvmBackend(_config(node, address, max_fee_per_gas=cap))
    tx = backend.prepare(_root(), 1)
    assert tx.fee_fields["maxFeePerGas"] <= cap
    with pytest.raises(ChainError) as exc:
        backend.prepare(tx.root, 1, replaces=tx)
    assert exc.value.reason == "tx_rejected"


def test_broadcast_is_idempotent(anvil_factory: AnvilFactory) -> None:
    node = anvil_factory()
    backend = EvmBackend(_config(node, _deploy(node)))
    node.set_automine(False)
    tx = backend.prepare(_root(), 8)
    backend.broadcast(tx)
    backend.broadcast(tx)  # "already known"
    node.mine(1)
    backend.broadcast(tx)  # "nonce too low", but mined by this very tx
    assert backend.status(tx) == "mined"
    blocks = [
        _w3(node).eth.get_block(n, full_transactions=True) for n in range(node.block_number() + 1)
    ]
    assert sum(t["hash"].hex() == tx.tx_hash[2:] for b in blocks for t in b["transactions"]) == 1


def test_nonce_resync_after_a_lost_transaction(anvil_factory: AnvilFactory) -> None:
    node = anvil_factory()
    backend = EvmBackend(_config(node, _deploy(node)))
    node.set_automine(False)
    lost = backend.prepare(_root(), 1)
    backend.broadcast(lost)
    node.drop_transaction(lost.tx_hash)
    gap = backend.prepare(_root(), 2)
    assert gap.nonce == lost.nonce + 1  # the local counter does not know about the drop
    assert backend.next_nonce() == lost.nonce  # the chain does; continue from there
    assert backend.prepare(_root(), 3).nonce == lost.nonce


# ---------------------------------------------------------------------------------------------
# Fee modes and gas


@pytest.mark.parametrize("fee_mode", ["eip1559", "legacy", "zero"])
def test_fee_modes(anvil_factory: AnvilFactory, fee_mode: str) -> None:
    zero = fee_mode == "zero"
    node = anvil_factory(**({"base_fee": 0, "gas_price": 0} if zero else {}))
    overrides: dict[str, Any] = {"fee_mode": fee_mode}
    if zero:
        # A fresh key holding no coin at all can deploy and anchor on a zero-gas chain.
        key = "0x" + os.urandom(32).hex()
        overrides["signer_key"] = key
    config = _config(node, **overrides)
    backend = EvmBackend(replace(config, contract=deploy_registry(config)))
    w3 = _w3(node)
    balance = w3.eth.get_balance(backend.sender)

    tx = backend.prepare(_root(), 12)
    if zero:
        # Nothing to outbid: a replacement of the same anchor is the same signed bytes
        # (deterministic signatures), so re-broadcasting it is all a replacement can do.
        assert backend.prepare(tx.root, 12, replaces=tx).raw_tx == tx.raw_tx
    _send(backend, tx)
    assert backend.status(tx) == "mined"
    sent = w3.eth.get_transaction(tx.tx_hash)
    receipt = w3.eth.get_transaction_receipt(tx.tx_hash)
    if fee_mode == "eip1559":
        assert sent["type"] == 2
        assert set(tx.fee_fields) == {"gas", "maxFeePerGas", "maxPriorityFeePerGas"}
    else:
        assert sent["type"] == 0
        assert set(tx.fee_fields) == {"gas", "gasPrice"}
    if zero:
        assert balance == 0
        assert sent["gasPrice"] == 0 and receipt["effectiveGasPrice"] == 0
        assert w3.eth.get_balance(backend.sender) == 0
    else:
        cost = receipt["gasUsed"] * receipt["effectiveGasPrice"]
        assert cost > 0 and w3.eth.get_balance(backend.sender) == balance - cost


def _calldata_gas(data: bytes) -> int:
    # EIP-2028: 4 gas per zero byte and 16 per non-zero byte of calldata.
    return sum(16 if b else 4 for b in data)


def test_gas_per_anchor_is_constant(anvil: AnvilNode, anchor_registry: str, capsys: Any) -> None:
    backend = EvmBackend(_config(anvil, anchor_registry, account=6))
    w3 = _w3(anvil)
    roots = [_root() for _ in range(4)] + [b"\x01" + bytes(31), b"\xff" * 32]
    sizes = [1, 1_000, 10**6, 2**40, 2**64 - 1, 7]
    used, execution = [], set()
    for root, size in zip(roots, sizes, strict=True):
        tx = backend.prepare(root, size)
        _send(backend, tx)
        receipt = w3.eth.get_transaction_receipt(tx.tx_hash)
        data = bytes(w3.eth.get_transaction(tx.tx_hash)["input"])
        used.append(receipt["gasUsed"])
        # What varies is only the calldata price of the root's and size's zero bytes (at most
        # 12 gas a byte); the execution (storage, event) costs exactly the same every time.
        execution.add(receipt["gasUsed"] - 21_000 - _calldata_gas(data))
        assert receipt["gasUsed"] < backend.config.gas_limit  # type: ignore[operator]
    assert len(execution) == 1
    assert max(used) - min(used) <= 12 * 64
    with capsys.disabled():
        print(f"\n[gas] anchor(): {sorted(set(used))} gas used, execution {execution.pop()}")


# ---------------------------------------------------------------------------------------------
# Two chains, config hygiene


def test_two_anvil_chains_at_once(anvil_factory: AnvilFactory) -> None:
    nodes = [anvil_factory(chain_id=cid) for cid in (7001, 7002)]
    backends = [EvmBackend(_config(n, _deploy(n))) for n in nodes]
    root = _root()
    confirmations = []
    for backend in backends:
        tx = backend.prepare(root, 2)
        _send(backend, tx)
        confirmations.append(backend.confirmation(tx))
    assert [c.chain_id for c in confirmations if c] == [7001, 7002]
    # A backend configured for one chain refuses the other's endpoint.
    crossed = EvmBackend(replace(backends[0].config, rpc_url=nodes[1].rpc_url))
    with pytest.raises(ChainError) as exc:
        crossed.ping()
    assert exc.value.reason == "chain_mismatch"
    with pytest.raises(UsageError):  # a tx of one backend is never handed to the other
        backends[1].broadcast(backends[0].prepare(_root(), 1))


def test_config_never_shows_the_key(anvil: AnvilNode) -> None:
    key = anvil.accounts[0].private_key
    config = _config(anvil, "0x" + "12" * 20)
    assert key[2:] not in repr(config) and key[2:] not in str(config)
    assert "<redacted>" in repr(config)
    assert key[2:] not in repr(EvmBackend(config))
    with pytest.raises(UsageError) as exc:
        EvmConfig(name="x", rpc_url=anvil.rpc_url, chain_id=1, signer_key=key[:-2] + "zz")
    assert key[2:-2] not in str(exc.value)
    with pytest.raises(UsageError):
        EvmConfig(name="x", rpc_url="ws://127.0.0.1:1", chain_id=1)
    with pytest.raises(UsageError):
        EvmConfig(name="x", rpc_url=anvil.rpc_url, chain_id=1, fee_mode="cheap")  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        EvmBackend(EvmConfig(name="x", rpc_url=anvil.rpc_url, chain_id=1))  # no contract


# ---------------------------------------------------------------------------------------------
# The launcher


def test_anvil_node_accounts_and_helpers(anvil_factory: AnvilFactory) -> None:
    node = anvil_factory(chain_id=555)
    assert node.rpc_url.startswith("http://127.0.0.1:")
    assert len(node.accounts) == 10
    for index in (0, 9):  # the keys anvil reports are those of the well-known mnemonic
        derived = Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")
        assert node.accounts[index].address == derived.address
        assert node.accounts[index].private_key == "0x" + derived.key.hex()
    assert node.accounts[0].private_key not in repr(node.accounts[0])
    start = node.block_number()
    node.mine(3)
    snap = node.snapshot()
    node.mine(2)
    assert node.block_number() == start + 5
    node.revert(snap)
    assert node.block_number() == start + 3
    with pytest.raises(ServiceError) as exc:
        node.revert("0x99")
    assert exc.value.reason == "rpc_failed"


def test_anvil_node_named_port_in_use_and_stop(anvil_factory: AnvilFactory, tmp_path: Path) -> None:
    first = anvil_factory()
    with pytest.raises(ServiceError) as exc:
        AnvilNode(tmp_path / "second", port=first.port).start()
    assert exc.value.reason == "port_in_use"
    pid = first.pid
    first.stop()
    first.stop()  # idempotent
    assert pid is not None and not Path(f"/proc/{pid}").exists()


def test_find_anvil(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert find_anvil({}).is_file()
    with pytest.raises(ServiceError) as exc:
        find_anvil({"CITYANCHOR_ANVIL": str(tmp_path / "nope")})
    assert exc.value.reason == "binary_missing"
    monkeypatch.setattr("anchor.local.anvil._npm_roots", lambda: [tmp_path])
    with pytest.raises(ServiceError) as exc:
        find_anvil({})
    assert exc.value.reason == "binary_missing"
    assert "make install" in str(exc.value)


def test_reorg_unconfirms_and_the_same_bytes_anchor_again(anvil_factory: AnvilFactory) -> None:
    # evm_revert stands in for a reorg that drops the anchoring block: the confirmation goes
    # away, the chain forgets the root, and re-broadcasting the persisted bytes restores it.
    node = anvil_factory()
    backend = EvmBackend(_config(node, _deploy(node)))
    before = node.snapshot()
    root = _root()
    tx = backend.prepare(root, 21)
    _send(backend, tx)
    assert backend.confirmation(tx) is not None
    assert backend.find_anchor(root) is not None

    node.revert(before)
    assert backend.status(tx) in ("dropped", "pending")
    assert backend.confirmation(tx) is None
    assert backend.anchored_at(root) == 0
    assert backend.find_anchor(root) is None

    _send(backend, tx)
    conf = backend.confirmation(tx)
    assert conf is not None and conf.tx_hash == tx.tx_hash
