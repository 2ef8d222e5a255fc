"""The committed AnchorRegistry artifact is exactly what the pinned compiler makes of the source.

The service deploys and calls the contract from ``anchor/contracts/AnchorRegistry.json`` without
a compiler, so a stale or hand-edited artifact would silently deploy other code than the source
everyone reviews. The fresh compile needs node and the npm ``solc`` that ``make install``
installs (``npm ci``); without them that one test is skipped, the others need nothing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from anchor.contracts import load_artifact

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = ROOT / "anchor" / "contracts"
SOURCE = CONTRACTS / "AnchorRegistry.sol"
ARTIFACT = CONTRACTS / "AnchorRegistry.json"
SCRIPT = ROOT / "scripts" / "compile-contract.js"

# Opcodes that would give someone a way around append-only storage, or that chains before
# Shanghai do not know (PUSH0) and before Cancun (MCOPY, TLOAD, TSTORE).
SELFDESTRUCT, DELEGATECALL, CALLCODE, CALL, CREATE, CREATE2 = 0xFF, 0xF4, 0xF2, 0xF1, 0xF0, 0xF5
PUSH0, MCOPY, TLOAD, TSTORE = 0x5F, 0x5E, 0x5C, 0x5D


def _opcodes(code: bytes) -> list[int]:
    """The opcodes of runtime ``code``, PUSH data skipped, the trailing CBOR metadata cut off."""
    meta_len = int.from_bytes(code[-2:], "big")
    code = code[: -(meta_len + 2)]
    ops, i = [], 0
    while i < len(code):
        op = code[i]
        ops.append(op)
        i += 1 + (op - 0x5F if 0x60 <= op <= 0x7F else 0)
    return ops


def test_artifact_loads_and_matches_its_source() -> None:
    artifact = load_artifact()
    assert artifact["contractName"] == "AnchorRegistry"
    assert artifact["source_sha256"] == hashlib.sha256(SOURCE.read_bytes()).hexdigest(), (
        "AnchorRegistry.sol changed since the artifact was built: run "
        "`node scripts/compile-contract.js` (make contract) and commit both files"
    )
    assert "do not edit" in artifact["_generated"]
    assert artifact["compiler"]["version"].startswith("0.8.28+commit.")
    assert artifact["compiler"]["settings"] == {
        "optimizer": {"enabled": True, "runs": 200},
        "evmVersion": "paris",
        "metadata": {"bytecodeHash": "none"},
    }
    assert artifact["bytecode"].startswith("0x") and len(artifact["bytecode"]) > 100
    assert artifact["deployedBytecode"].startswith("0x")
    # load_artifact() hands out a fresh copy each time.
    artifact["abi"].clear()
    assert load_artifact()["abi"]


def test_runtime_code_is_paris_and_cannot_escape_append_only() -> None:
    code = bytes.fromhex(load_artifact()["deployedBytecode"][2:])
    ops = set(_opcodes(code))
    assert not ops & {PUSH0, MCOPY, TLOAD, TSTORE}, "compiled for a fork later than paris"
    assert not ops & {SELFDESTRUCT, DELEGATECALL, CALLCODE, CALL, CREATE, CREATE2}


def test_abi_is_the_designed_interface() -> None:
    abi = load_artifact()["abi"]
    by_name = {entry.get("name", entry["type"]): entry for entry in abi}
    anchor = by_name["anchor"]
    assert [(i["name"], i["type"]) for i in anchor["inputs"]] == [
        ("root", "bytes32"),
        ("treeSize", "uint64"),
    ]
    assert anchor["outputs"] == [] and anchor["stateMutability"] == "nonpayable"
    anchored_at = by_name["anchoredAt"]
    assert [i["type"] for i in anchored_at["inputs"]] == ["bytes32"]
    assert [o["type"] for o in anchored_at["outputs"]] == ["uint256"]
    assert anchored_at["stateMutability"] == "view"
    event = by_name["Anchored"]
    assert [(i["name"], i["type"], i["indexed"]) for i in event["inputs"]] == [
        ("root", "bytes32", True),
        ("treeSize", "uint64", False),
        ("submitter", "address", True),
    ]
    errors = {e["name"]: [i["type"] for i in e["inputs"]] for e in abi if e["type"] == "error"}
    assert errors["AlreadyAnchored"] == ["bytes32", "uint256"]
    assert errors["NotSubmitter"] == ["address"]


def test_committed_artifact_equals_a_fresh_compile(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed; `make install` needs Node.js 18+ for solc and anvil")
    if not (ROOT / "node_modules" / "solc" / "package.json").is_file():
        pytest.skip("node_modules/solc is missing; run `make install` (npm ci) to compile")
    out = tmp_path / "AnchorRegistry.json"
    result = subprocess.run(
        [node, str(SCRIPT), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    fresh, committed = out.read_bytes(), ARTIFACT.read_bytes()
    if fresh != committed:
        a, b = json.loads(fresh), json.loads(committed)
        changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        pytest.fail(
            f"AnchorRegistry.json differs from a fresh compile in {changed}; run "
            "`node scripts/compile-contract.js` (make contract) and commit the result"
        )
