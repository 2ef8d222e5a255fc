"""Receipt v2 against the real services (issue 10, item 6): the ``batch.size`` 8 -> 7 attack.

Seen: a genuine receipt with ``batch.size`` 8 -> 7 and ``batch.id`` 999999 verified as VALID
everywhere. Here the genuine receipt comes from ``api_world``: a batch of exactly 8 readings
sealed by the store's seal transaction into a real PostgreSQL, anchored by the real job on
anvil, served by a real API process. Its size is lowered to 7 at an index where RFC 9162 alone
still accepts the batch path (checked with the reference code), and the receipt must now fail,
naming ``log_path``, in ``cityanchor verify`` (exit 1) and ``POST /v1/verify``; the explorer's
side is in test_explorer_browser.py. A v1 receipt is refused everywhere with
``receipt_version_retired``.
"""

from __future__ import annotations

import asyncio
import copy
import json
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import reference_merkle as ref  # tests/ is not a package

from anchor.cli.commands import main
from anchor.store import Store
from integration.api_fixtures import ApiWorld

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "docs" / "receipt-v2.schema.json").read_text()
)
VALIDATOR = jsonschema.Draft202012Validator(
    SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
)


def _get(world: ApiWorld, path: str) -> Any:
    status, body = world.get_json(path)
    assert status == 200, (path, body)
    return body


def _post_verify(world: ApiWorld, doc: Any) -> dict[str, Any]:
    req = urllib.request.Request(
        world.url("/v1/verify"),
        data=json.dumps({"receipt": doc}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200
        result: dict[str, Any] = json.loads(resp.read())
    return result


def _statuses(result: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    out: dict[str, tuple[str, str | None]] = {}
    for c in result["checks"]:
        if out.get(c["name"], ("pass",))[0] != "fail":
            out[c["name"]] = (c["status"], c["reason"])
    return out


@pytest.fixture(scope="module")
def genuine(api_world: ApiWorld) -> dict[str, Any]:
    """The anchored receipt of leaf 0 of the batch of 8."""
    device_id, seq = api_world.eight[0]
    doc: dict[str, Any] = _get(api_world, f"/v1/receipts/{device_id}/{seq}")
    assert doc["version"] == "cityanchor/receipt/v2" and "id" not in doc["batch"]
    assert (doc["batch"]["size"], doc["batch"]["index"], doc["status"]) == (8, 0, "anchored")
    VALIDATOR.validate(doc)
    return doc


def test_served_receipts_are_v2_and_match_the_v2_schema(api_world: ApiWorld) -> None:
    for device_id, seq in [*api_world.eight, *api_world.anchored[::40], *api_world.sealed_only]:
        doc = _get(api_world, f"/v1/receipts/{device_id}/{seq}")
        VALIDATOR.validate(doc)
        assert doc["version"] == "cityanchor/receipt/v2" and "id" not in doc["batch"]
    # The attack's documents are what the schema refuses too: v1, and a batch.id.
    assert not VALIDATOR.is_valid(_as_v1(doc))
    assert not VALIDATOR.is_valid({**doc, "batch": {**doc["batch"], "id": 999999}})


def _lowered(doc: dict[str, Any]) -> dict[str, Any]:
    tampered = copy.deepcopy(doc)
    tampered["batch"]["size"] = 7
    return tampered


def _as_v1(doc: dict[str, Any]) -> dict[str, Any]:
    v1 = copy.deepcopy(doc)
    v1["version"] = "cityanchor/receipt/v1"
    v1["batch"] = {"id": 999999, **v1["batch"]}
    return v1


def test_the_real_log_is_built_from_v2_leaves(api_world: ApiWorld, genuine: dict[str, Any]) -> None:
    # The independent oracle: the reference Merkle code over (size, root) of every stored batch,
    # with the leaf spelt out from DESIGN.md, gives the anchored log root of the receipt.
    async def entries() -> list[tuple[int, bytes]]:
        store = await Store.connect(api_world.dsn)
        try:
            return await store.log_entries(genuine["log"]["size"])
        finally:
            await store.close()

    got = asyncio.run(entries())
    assert len(got) == genuine["log"]["size"]
    inputs = [ref.log_leaf_input(n, root) for n, root in got]
    assert ref.mth(inputs).hex() == genuine["log"]["root"]
    log_index = genuine["log"]["index"]
    assert got[log_index] == (8, bytes.fromhex(genuine["batch"]["root"]))
    assert [h.hex() for h in ref.path(log_index, inputs)] == genuine["log"]["path"]
    # The receipt names its batch by log index; the API serves the batch under it.
    batch = _get(api_world, f"/v1/log/batches/{log_index}")
    assert (batch["size"], batch["root"]) == (8, genuine["batch"]["root"])


def test_lowered_batch_size_fails_log_path_in_the_api(
    api_world: ApiWorld, genuine: dict[str, Any]
) -> None:
    ok = _post_verify(api_world, genuine)
    assert ok["valid"] and ok["fully_verified"], ok
    tampered = _lowered(genuine)
    # RFC 9162 alone accepts the lowered size for this index: the batch path still leads to
    # the batch root in a tree of 7 (reference code, not anchor.merkle).
    leaf = bytes.fromhex(genuine["leaf_hash"])
    path = [bytes.fromhex(h) for h in genuine["batch"]["path"]]
    assert ref.root_from_path(0, 7, leaf, path) == bytes.fromhex(genuine["batch"]["root"])
    result = _post_verify(api_world, tampered)
    assert not result["valid"]
    got = _statuses(result)
    assert got["batch_path"] == ("pass", None)
    assert got["log_path"] == ("fail", "root_mismatch")
    assert {name for name, (status, _) in got.items() if status == "fail"} == {"log_path"}
    # The rest of the v1 attack: a batch.id, any batch.id, is refused by v2.
    with_id = copy.deepcopy(genuine)
    with_id["batch"]["id"] = 999999
    result = _post_verify(api_world, with_id)
    assert not result["valid"]
    assert [(c["name"], c["reason"]) for c in result["checks"]] == [
        ("receipt", "receipt_malformed")
    ]
    assert result["checks"][0]["detail"].startswith("batch.id:")


def test_v1_receipt_is_refused_by_the_api(api_world: ApiWorld, genuine: dict[str, Any]) -> None:
    result = _post_verify(api_world, _as_v1(genuine))
    assert not result["valid"]
    [check] = result["checks"]
    assert (check["name"], check["status"], check["reason"]) == (
        "receipt",
        "fail",
        "receipt_version_retired",
    )
    assert "cityanchor/receipt/v1 receipts are refused" in check["detail"]
    assert "batch.size" in check["detail"]


def test_cli_exits_1_naming_log_path(
    api_world: ApiWorld,
    genuine: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    device_id = genuine["reading"]["device_id"]
    (tmp_path / "genuine.json").write_text(json.dumps(genuine))
    (tmp_path / "tampered.json").write_text(json.dumps(_lowered(genuine)))
    (tmp_path / "v1.json").write_text(json.dumps(_as_v1(genuine)))
    jwk = api_world.signers[device_id].key.public_key.to_jwk()
    (tmp_path / "dev.jwk").write_text(json.dumps(jwk))
    (tmp_path / "op.vkey").write_text(api_world.operator.verifier.vkey())
    flags = [
        "--device-key", str(tmp_path / "dev.jwk"),
        "--log-key", str(tmp_path / "op.vkey"),
        "--rpc", api_world.rpc_url,
    ]  # fmt: skip
    assert main(["verify", str(tmp_path / "genuine.json"), *flags]) == 0
    capsys.readouterr()
    assert main(["verify", str(tmp_path / "tampered.json"), *flags]) == 1
    out = capsys.readouterr().out
    failing = [line for line in out.splitlines() if line.strip().startswith("FAIL")]
    assert len(failing) == 1 and failing[0].split()[1] == "log_path", out
    assert "[root_mismatch]" in failing[0]
    assert "PASS batch_path" in out and "PASS anchors" in out
    assert main(["verify", str(tmp_path / "v1.json"), *flags]) == 1
    out = capsys.readouterr().out
    assert "FAIL receipt" in out and "[receipt_version_retired]" in out
    assert "cityanchor/receipt/v1 receipts are refused" in out
