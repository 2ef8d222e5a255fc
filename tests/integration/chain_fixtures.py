"""Fixtures for tests that need a real EVM chain: private anvil nodes on free loopback ports.

``conftest.py`` imports them (``from integration.chain_fixtures import anvil, anvil_factory,
anchor_registry``) next to the PostgreSQL and Mosquitto fixtures. The anvil binary comes from the
project's pinned npm package (``make install`` runs ``npm ci``); a node that happens to run on
8545 is never used.

- ``anvil`` (session): one automining node, chain id 31337. Tests that switch automine off or
  drop transactions should start their own node with ``anvil_factory`` instead, so they never
  leave the shared node in an odd state.
- ``anvil_factory`` (function): ``anvil_factory(chain_id=..., **AnvilNode kwargs)`` starts extra
  nodes (each in its own directory); all are stopped after the test, and the test fails if a
  process is left behind.
- ``anchor_registry`` (session): an AnchorRegistry deployed on ``anvil`` by dev account 0, open
  to any submitter; its address.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Imported here, early (conftest imports this module before any test module), because importing
# web3 / eth_account raises the recursion limit (py_ecc) and anchor.anchoring.chains.evm puts it
# back; a
# test module importing web3 first would leave it at 100 000 and a unit test feeding deeply
# nested JSON to json.loads would crash the whole session.
from anchor.anchoring.chains.evm import EvmConfig, deploy_registry
from anchor.local import AnvilNode

__all__ = ["AnvilFactory", "anchor_registry", "anvil", "anvil_factory", "assert_stopped"]

AnvilFactory = Callable[..., AnvilNode]


def assert_stopped(node: AnvilNode, pid: int | None, timeout: float = 5.0) -> None:
    """Fail unless the process ``pid`` of ``node`` is gone (not even a zombie)."""
    if pid is None:
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return
        if state == "Z":
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{node!r} left its process {pid} running")
        time.sleep(0.05)


def _node_dir(parent: Path, prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(path, 0o711)
    return path


@pytest.fixture(scope="session")
def anvil(services_dir: Path) -> Iterator[AnvilNode]:
    """The session's anvil: chain id 31337, automine, the 10 well-known dev accounts."""
    node = AnvilNode(_node_dir(services_dir, "anvil-")).start()
    pid = node.pid
    try:
        yield node
    finally:
        node.stop()
        assert_stopped(node, pid)


@pytest.fixture
def anvil_factory(services_dir: Path, request: pytest.FixtureRequest) -> Iterator[AnvilFactory]:
    """Start extra anvil nodes for one test: ``anvil_factory(chain_id=1337, block_time=None,
    base_fee=..., gas_price=..., state_path=...)``; every node is stopped afterwards."""
    started: list[tuple[AnvilNode, int | None]] = []

    def start(chain_id: int = 31337, **kwargs: Any) -> AnvilNode:
        base = _node_dir(services_dir, f"{request.node.name[:40]}-anvil{len(started)}-")
        node = AnvilNode(base, chain_id=chain_id, **kwargs)
        node.start()
        started.append((node, node.pid))
        return node

    try:
        yield start
    finally:
        # A test may have restarted a node: its current pid matters as much as the first one.
        pids = started + [(node, node.pid) for node, _ in started]
        for node, _ in started:
            node.stop()
        for node, pid in pids:
            assert_stopped(node, pid)


@pytest.fixture(scope="session")
def anchor_registry(anvil: AnvilNode) -> str:
    """Address of an AnchorRegistry (no allow-list) deployed on ``anvil`` by dev account 0."""
    config = EvmConfig(
        name="deployer",
        rpc_url=anvil.rpc_url,
        chain_id=anvil.chain_id,
        signer_key=anvil.accounts[0].private_key,
    )
    return deploy_registry(config)
