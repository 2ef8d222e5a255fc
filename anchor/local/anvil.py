"""A private local EVM chain (Foundry's ``anvil``) for tests, the demo and single-host runs.

The binary comes from the pinned npm package ``@foundry-rs/anvil`` that ``make install`` puts in
the project's ``node_modules`` (its per-platform part ``@foundry-rs/anvil-linux-amd64`` ships
``bin/anvil``); ``CITYANCHOR_ANVIL`` names another binary. Like the servers of
:mod:`anchor.local`, a node lives in a directory the caller gives, listens only on
``127.0.0.1`` at a port the caller names or a free one, and is stopped by :meth:`AnvilNode.stop`,
by leaving its ``with`` block or, as a last resort, at interpreter exit. A node that merely
happens to run on 8545 is never used.

Mining: by default every transaction is mined at once in its own block (automine);
``block_time`` mines on an interval instead. :meth:`AnvilNode.set_automine`,
:meth:`AnvilNode.mine` and :meth:`AnvilNode.drop_transaction` let tests hold transactions in
the mempool, mine on demand and lose transactions; :meth:`AnvilNode.snapshot` and
:meth:`AnvilNode.revert` roll the chain back (a reorg as seen by a client).

Persistence: with ``state_path`` the chain is loaded from that file at start (if it exists) and
dumped to it when the node stops cleanly (SIGTERM), so ``cityanchor up --data-dir`` keeps the
deployed contract and every anchor across restarts. A crash (SIGKILL) loses what happened since
the last dump; ``state_interval`` dumps periodically as well.

Failures raise :class:`anchor.local.ServiceError` with a stable ``reason``:
``binary_missing``, ``port_in_use``, ``config_invalid``, ``start_failed``, ``stop_failed``,
``rpc_failed`` (a helper's JSON-RPC call failed), ``usage``.

Example::

    with AnvilNode(Path("/srv/ca/chain"), chain_id=1337) as node:
        print(node.rpc_url, node.accounts[0].address)
        node.set_automine(False)
        ...
        node.mine(3)
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_utils.address import to_checksum_address

from anchor.errors import Reason
from anchor.local.base import LOOPBACK, ServiceError, SpawnedServer

__all__ = [
    "DEV_MNEMONIC",
    "AnvilNode",
    "DevAccount",
    "find_anvil",
]

#: The mnemonic anvil (and hardhat, ganache) derive their well-known dev accounts from. These
#: keys are public: never use them on a chain where anything has value.
DEV_MNEMONIC = "test test test test test test test test test test test junk"

_NPM_SCOPE = "@foundry-rs"
_RPC_TIMEOUT = 5.0
# npm package suffix per (sys.platform, machine), as the @foundry-rs/anvil installer maps them.
_PLATFORMS = {
    ("linux", "x86_64"): "linux-amd64",
    ("linux", "amd64"): "linux-amd64",
    ("linux", "aarch64"): "linux-arm64",
    ("linux", "arm64"): "linux-arm64",
    ("darwin", "x86_64"): "darwin-amd64",
    ("darwin", "arm64"): "darwin-arm64",
}


def _npm_roots() -> list[Path]:
    # The checkout this module lives in (editable installs, tests, the demo), then the current
    # directory (a wheel install run from a checkout).
    here = Path(__file__).resolve().parents[2]
    roots = [here, Path.cwd()]
    return list(dict.fromkeys(r / "node_modules" for r in roots))


def find_anvil(env: Mapping[str, str] | None = None) -> Path:
    """Return the ``anvil`` binary (``CITYANCHOR_ANVIL`` in ``env`` wins).

    Otherwise ``node_modules/@foundry-rs/anvil-<platform>/bin/anvil`` of the project checkout
    (installed by ``make install``, i.e. ``npm ci``), or ``node_modules/@foundry-rs/anvil/anvil``
    (the package's postinstall fallback).

    Raises:
        ServiceError: ``binary_missing``, saying how to install it.
    """
    env = os.environ if env is None else env
    override = env.get("CITYANCHOR_ANVIL")
    if override:
        if not Path(override).is_file():
            raise ServiceError(
                f"CITYANCHOR_ANVIL={override} does not exist", reason=Reason.BINARY_MISSING
            )
        return Path(override)
    suffix = _PLATFORMS.get((sys.platform, platform.machine().lower()))
    if suffix is None:
        raise ServiceError(
            f"no anvil npm package for {sys.platform}/{platform.machine()}; "
            "install Foundry's anvil yourself and set CITYANCHOR_ANVIL",
            reason=Reason.BINARY_MISSING,
        )
    tried = []
    for node_modules in _npm_roots():
        # The per-platform optional dependency; else where the package's postinstall script
        # puts the binary it downloads when npm skipped optional dependencies.
        for candidate in (
            node_modules / _NPM_SCOPE / f"anvil-{suffix}" / "bin" / "anvil",
            node_modules / _NPM_SCOPE / "anvil" / "anvil",
        ):
            tried.append(str(candidate))
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
    raise ServiceError(
        "the anvil binary of the npm package @foundry-rs/anvil is not installed (looked at "
        + ", ".join(tried)
        + "); run `make install` (or `npm ci` in the project root), or set CITYANCHOR_ANVIL",
        reason=Reason.BINARY_MISSING,
    )


@dataclass(frozen=True, slots=True)
class DevAccount:
    """One of anvil's pre-funded dev accounts; the key is public knowledge (see DEV_MNEMONIC)."""

    address: str
    private_key: str = field(repr=False)


class AnvilNode(SpawnedServer):
    """A private anvil node in ``base_dir``, JSON-RPC over HTTP on 127.0.0.1 only.

    :meth:`start` waits until its JSON-RPC answers ``eth_chainId`` with our chain id
    (``start_failed`` when another chain id answers); :meth:`kill` stops it like a crash.

    Files: ``base_dir/anvil.log`` (anvil's output, appended), ``base_dir/anvil-config.json``
    (written by anvil at every start: accounts, keys, fees), and ``state_path`` if given.

    ``base_fee`` and ``gas_price`` set anvil's initial base fee and legacy gas price in wei
    (``base_fee=0, gas_price=0`` makes a zero-gas chain, like permissioned networks);
    ``hardfork`` pins the EVM rules (default: anvil's latest).
    """

    _NOUN = "node"
    _PROGRAM = "anvil"

    def __init__(
        self,
        base_dir: Path,
        *,
        port: int | None = None,
        chain_id: int = 31337,
        block_time: float | None = None,
        state_path: Path | None = None,
        state_interval: float | None = None,
        base_fee: int | None = None,
        gas_price: int | None = None,
        hardfork: str | None = None,
        accounts: int = 10,
        die_with_parent: bool = False,
        binary: Path | None = None,
        start_timeout: float = 20.0,
    ) -> None:
        if not 0 < chain_id < 2**63:
            raise ServiceError(f"chain id {chain_id} is out of range", reason=Reason.CONFIG_INVALID)
        if block_time is not None and block_time <= 0:
            raise ServiceError("block_time must be positive or None", reason=Reason.CONFIG_INVALID)
        if state_interval is not None and state_path is None:
            raise ServiceError("state_interval needs state_path", reason=Reason.CONFIG_INVALID)
        if not 1 <= accounts <= 1000:
            raise ServiceError(f"accounts={accounts} is out of range", reason=Reason.CONFIG_INVALID)
        self.base_dir = Path(base_dir).absolute()
        self.log_path = self.base_dir / "anvil.log"
        self.config_path = self.base_dir / "anvil-config.json"
        self.state_path = Path(state_path).absolute() if state_path is not None else None
        self.state_interval = state_interval
        self.block_time = block_time
        self.base_fee = base_fee
        self.gas_price = gas_price
        self.hardfork = hardfork
        self.start_timeout = start_timeout
        # SIGTERM (state dumped) when the thread that started it dies: see anchor.host.lifetime.
        self.die_with_parent = die_with_parent
        self._chain_id = chain_id
        self._n_accounts = accounts
        self._requested_port = port
        self._port: int | None = port
        self._binary = binary
        self._exe = binary or Path("anvil")  # resolved at each start
        self._proc: subprocess.Popen[bytes] | None = None
        self._output_path = self.log_path
        self._accounts: tuple[DevAccount, ...] = ()
        self._rpc_id = 0

    # -- public properties ----------------------------------------------------------------

    @property
    def rpc_url(self) -> str:
        """``http://127.0.0.1:PORT`` (JSON-RPC over HTTP)."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def chain_id(self) -> int:
        return self._chain_id

    @property
    def accounts(self) -> tuple[DevAccount, ...]:
        """The pre-funded dev accounts (address, private key), as anvil reported them."""
        if not self._accounts:
            raise ServiceError("accounts are known once the node has started", reason=Reason.USAGE)
        return self._accounts

    # -- lifecycle (start, stop, kill, stop_stale: see SpawnedServer) ----------------------

    def _prepare(self) -> None:
        self._exe = self._binary or find_anvil()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if self.state_path is not None:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)

    def _before_spawn(self) -> None:
        self.config_path.unlink(missing_ok=True)

    def _ready(self) -> bool:
        answered = self._answers()
        if answered is None:
            return False
        if answered != self._chain_id:
            raise ServiceError(
                f"the node on {self.rpc_url} answers chain id {answered}, not {self._chain_id}",
                reason=Reason.START_FAILED,
            )
        self._accounts = self._read_accounts()
        return True

    def _not_ready_text(self) -> str:
        return f"answer JSON-RPC on {self.rpc_url}"

    def _stale_marker(self) -> Path:
        # Two nodes on one state file would fork the chain. Its --config-out path is only used
        # by this base_dir.
        return self.config_path

    def _repr_extra(self) -> str:
        return f", chain_id={self._chain_id}"

    # -- JSON-RPC helpers -----------------------------------------------------------------

    def rpc(self, method: str, params: Sequence[Any] = (), *, timeout: float = _RPC_TIMEOUT) -> Any:
        """Call ``method`` on the node; return the JSON-RPC ``result``.

        Raises:
            ServiceError: ``rpc_failed`` (connection failure or a JSON-RPC error object).
        """
        self._rpc_id += 1
        body = json.dumps(
            {"jsonrpc": "2.0", "id": self._rpc_id, "method": method, "params": list(params)}
        ).encode()
        request = urllib.request.Request(
            self.rpc_url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                answer = json.loads(response.read())
        except (OSError, ValueError) as exc:  # URLError, timeouts and bad JSON
            raise ServiceError(
                f"{method} on {self.rpc_url} failed: {exc}", reason=Reason.RPC_FAILED
            ) from exc
        if "error" in answer:
            raise ServiceError(f"{method} failed: {answer['error']}", reason=Reason.RPC_FAILED)
        return answer.get("result")

    def block_number(self) -> int:
        return int(self.rpc("eth_blockNumber"), 16)

    def mine(self, n: int = 1) -> None:
        """Mine ``n`` blocks now (with whatever the mempool holds), automine or not."""
        if n < 1:
            raise ServiceError(f"cannot mine {n} blocks", reason=Reason.USAGE)
        self.rpc("anvil_mine", [hex(n)])

    def set_automine(self, enabled: bool) -> None:
        """Automine on: each transaction gets its own block at once. Off: they wait in the
        mempool until :meth:`mine` (or ``block_time``)."""
        self.rpc("evm_setAutomine", [enabled])

    def drop_transaction(self, tx_hash: str) -> None:
        """Remove a pending transaction from the mempool, as a congested node might."""
        self.rpc("anvil_dropTransaction", [tx_hash])

    def snapshot(self) -> str:
        """Snapshot the chain; :meth:`revert` to it later discards every block since."""
        snapshot_id: str = self.rpc("evm_snapshot")
        return snapshot_id

    def revert(self, snapshot_id: str) -> None:
        """Roll back to ``snapshot_id`` (consumed: snapshot again to revert twice).

        Raises:
            ServiceError: ``rpc_failed`` when the snapshot id is unknown.
        """
        if self.rpc("evm_revert", [snapshot_id]) is not True:
            raise ServiceError(
                f"no snapshot {snapshot_id!r} to revert to", reason=Reason.RPC_FAILED
            )

    # -- internals ------------------------------------------------------------------------

    def _command(self) -> list[str]:
        cmd = [
            str(self._exe),
            "--host",
            LOOPBACK,
            "--port",
            str(self.port),
            "--chain-id",
            str(self._chain_id),
            "--accounts",
            str(self._n_accounts),
            "--mnemonic",
            DEV_MNEMONIC,
            "--config-out",
            str(self.config_path),
            "--color",
            "never",
        ]
        if self.block_time is not None:
            cmd += ["--block-time", f"{self.block_time:g}"]
        if self.state_path is not None:
            cmd += ["--state", str(self.state_path)]
        if self.state_interval is not None:
            cmd += ["--state-interval", str(max(1, round(self.state_interval)))]
        if self.base_fee is not None:
            cmd += ["--base-fee", str(self.base_fee)]
        if self.gas_price is not None:
            cmd += ["--gas-price", str(self.gas_price)]
        if self.base_fee == 0 or self.gas_price == 0:
            # Otherwise anvil rejects a zero tip / zero gas price below its minimum.
            cmd.append("--disable-min-priority-fee")
        if self.hardfork is not None:
            cmd += ["--hardfork", self.hardfork]
        return cmd

    def _answers(self) -> int | None:
        try:
            return int(self.rpc("eth_chainId", timeout=1.0), 16)
        except ServiceError:
            return None

    def _read_accounts(self) -> tuple[DevAccount, ...]:
        # anvil writes --config-out before it serves RPC, so it exists once eth_chainId answers.
        try:
            config = json.loads(self.config_path.read_text(encoding="utf-8"))
            pairs = zip(config["available_accounts"], config["private_keys"], strict=True)
            return tuple(
                DevAccount(address=to_checksum_address(a), private_key=k) for a, k in pairs
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ServiceError(
                f"cannot read the dev accounts from {self.config_path}: {exc}",
                reason=Reason.START_FAILED,
            ) from exc
