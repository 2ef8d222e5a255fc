"""The public endpoints against a real API process serving data of the real ingestor and job."""

from __future__ import annotations

import base64
import copy
import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from anchor import merkle
from anchor.anchoring.backend import rpc_anchor_checker
from anchor.api.app import route_tables
from anchor.checkpoint import open_checkpoint
from anchor.cli.commands import main
from anchor.completeness import CompletenessError, verify_completeness
from anchor.receipt import receipt_from_dict
from anchor.verify import verify_receipt
from integration.api_fixtures import ORIGIN, ApiWorld

PROBLEM = "application/problem+json"


def call(
    world: ApiWorld,
    path: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, Message[str, str], bytes]:
    req = urllib.request.Request(
        world.url(path), data=body, method=method, headers=dict(headers or {})
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def get_json(world: ApiWorld, path: str, **kw: Any) -> tuple[int, Message[str, str], Any]:
    status, headers, body = call(world, path, **kw)
    return status, headers, json.loads(body) if body else None


def post_verify(world: ApiWorld, doc: Any) -> tuple[int, Any]:
    status, _, body = get_json(
        world,
        "/v1/verify",
        method="POST",
        body=json.dumps(doc).encode(),
        headers={"Content-Type": "application/json"},
    )
    return status, body


def assert_problem(world: ApiWorld, path: str, status: int, reason: str, **kw: Any) -> None:
    got, headers, body = get_json(world, path, **kw)
    assert (got, body["reason"]) == (status, reason), body
    assert headers["Content-Type"].startswith(PROBLEM)
    assert body["status"] == status and body["type"].endswith(reason) and body["detail"]


def receipt_json(world: ApiWorld, device_id: str, seq: int) -> dict[str, Any]:
    status, _, body = get_json(world, f"/v1/receipts/{device_id}/{seq}")
    assert status == 200, body
    return dict(body)


def checks(result: Mapping[str, Any]) -> dict[str, tuple[str, str | None]]:
    # The anchors check may appear once per anchor; the worst status wins.
    out: dict[str, tuple[str, str | None]] = {}
    for c in result["checks"]:
        if out.get(c["name"], ("pass",))[0] != "fail":
            out[c["name"]] = (c["status"], c["reason"])
    return out


# ------------------------------------------------------------------------------------ receipts


def test_anchored_receipt_is_cacheable_and_verifies_offline(api_world: ApiWorld) -> None:
    device_id, seq = api_world.anchored[len(api_world.anchored) // 2]
    status, headers, raw = call(api_world, f"/v1/receipts/{device_id}/{seq}")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    # Cacheable, but briefly and revalidated: erasure (privacy law) can still change its
    # envelope, and a reorg its anchor (issue 11 item 4).
    assert headers["Cache-Control"] == "public, max-age=60, must-revalidate"
    etag = headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"')
    doc = json.loads(raw)
    assert doc["status"] == "anchored" and doc["anchors"]
    assert doc["anchors"][0]["chain_id"] == api_world.chain_id
    assert doc["anchors"][0]["contract"].lower() == api_world.contract.lower()
    receipt = receipt_from_dict(doc)
    report = verify_receipt(
        receipt,
        device_keys=[api_world.signers[device_id].key.public_key],
        log_verifiers=[api_world.operator.verifier],
        anchor_checker=rpc_anchor_checker([api_world.rpc_url]),
    )
    assert report.fully_verified, report.to_dict()
    # Conditional requests: the same ETag (weak or in a list) gives 304 without a body.
    for match in (etag, f'"nope", W/{etag}', "*"):
        status, headers, raw = call(
            api_world, f"/v1/receipts/{device_id}/{seq}", headers={"If-None-Match": match}
        )
        assert (status, raw, headers["ETag"]) == (304, b"", etag)
    status, _, _ = call(
        api_world, f"/v1/receipts/{device_id}/{seq}", headers={"If-None-Match": '"other"'}
    )
    assert status == 200


def test_sealed_receipt_is_short_lived_and_verifies_offline(api_world: ApiWorld) -> None:
    device_id, seq = api_world.sealed_only[-1]
    status, headers, raw = call(api_world, f"/v1/receipts/{device_id}/{seq}")
    assert status == 200 and headers["Cache-Control"] == "public, max-age=5"
    doc = json.loads(raw)
    assert doc["status"] == "sealed" and doc["anchors"] == []
    report = verify_receipt(
        receipt_from_dict(doc),
        device_keys=[api_world.signers[device_id].key.public_key],
        log_verifiers=[api_world.operator.verifier],
    )
    assert report.valid and not report.fully_verified  # the anchors check is skipped
    # ... and witnesses (no witness key given; that skip alone keeps it fully verified).
    assert [c.name for c in report.checks if c.status != "pass"] == ["witnesses", "anchors"]


def test_receipt_errors_are_problem_documents(api_world: ApiWorld) -> None:
    device_id, _ = api_world.anchored[0]
    assert_problem(api_world, f"/v1/receipts/{device_id}/999999", 404, "not_found")
    assert_problem(api_world, "/v1/receipts/no-such-device/1", 404, "not_found")
    assert_problem(api_world, "/v1/receipts/bad%20id/1", 400, "device_id_invalid")
    assert_problem(api_world, f"/v1/receipts/{'x' * 65}/1", 400, "device_id_invalid")
    for seq in ("abc", "0", "-1", "%2B5", "1.5", "99999999999999999999"):
        assert_problem(api_world, f"/v1/receipts/{device_id}/{seq}", 400, "invalid_parameter")
    assert_problem(
        api_world, f"/v1/receipts/{device_id}/1", 405, "method_not_allowed", method="DELETE"
    )


# -------------------------------------------------------------------------------------- verify


def test_verify_endpoint_passes_a_good_receipt(api_world: ApiWorld) -> None:
    device_id, seq = api_world.anchored[3]
    doc = receipt_json(api_world, device_id, seq)
    status, result = post_verify(api_world, {"receipt": doc})
    assert status == 200, result
    assert result["valid"] and result["fully_verified"], result
    assert result["device_key_source"] == "registry"
    assert set(checks(result)) == {
        "envelope",
        "signature",
        "leaf_hash",
        "batch_path",
        "log_path",
        "checkpoint",
        "checkpoint_signature",
        "witnesses",
        "anchors",
    }
    # This API configures no witness: the check is skipped and nobody is named.
    assert checks(result)["witnesses"][0] == "skip"
    assert (result["witness_quorum"], result["cosigners"]) == (0, [])
    # With the device key in the request; and with another device's key, which must fail.
    jwk = api_world.signers[device_id].key.public_key.to_jwk()
    status, result = post_verify(api_world, {"receipt": doc, "device_key": jwk})
    assert status == 200 and result["fully_verified"] and result["device_key_source"] == "request"
    other = next(s for d, s in api_world.signers.items() if d != device_id)
    status, result = post_verify(
        api_world, {"receipt": doc, "device_key": other.key.public_key.to_jwk()}
    )
    assert not result["valid"] and checks(result)["signature"] == ("fail", "unknown_kid")
    # A sealed receipt is valid, not fully verified: nothing is anchored yet.
    sealed = receipt_json(api_world, *api_world.sealed_only[0])
    status, result = post_verify(api_world, {"receipt": sealed})
    assert result["valid"] and not result["fully_verified"]
    assert checks(result)["anchors"][0] == "skip"


def test_verify_endpoint_names_the_failing_check(api_world: ApiWorld) -> None:
    device_id, seq = api_world.anchored[5]
    doc = receipt_json(api_world, device_id, seq)
    # Flip one byte of the envelope.
    raw = bytearray(base64.urlsafe_b64decode(doc["reading"]["envelope"] + "=="))
    raw[len(raw) // 2] ^= 0x01
    tampered = copy.deepcopy(doc)
    tampered["reading"]["envelope"] = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    status, result = post_verify(api_world, {"receipt": tampered})
    assert status == 200 and not result["valid"]
    got = checks(result)
    assert got["leaf_hash"] == ("fail", "leaf_mismatch")
    assert got["batch_path"][0] == "fail"
    assert got["envelope"][0] == "fail" or got["signature"][0] == "fail"
    # Change the log root.
    tampered = copy.deepcopy(doc)
    tampered["log"]["root"] = "00" * 32
    status, result = post_verify(api_world, {"receipt": tampered})
    got = checks(result)
    assert not result["valid"]
    assert got["log_path"] == ("fail", "root_mismatch")
    assert got["checkpoint"] == ("fail", "checkpoint_mismatch")
    assert got["anchors"] == ("fail", "anchor_missing")
    assert got["signature"] == ("pass", None) and got["checkpoint_signature"] == ("pass", None)
    # A receipt of a device the registry does not know.
    tampered = copy.deepcopy(doc)
    tampered["reading"]["device_id"] = "ghost-device"
    status, result = post_verify(api_world, {"receipt": tampered})
    assert checks(result)["signature"] == ("fail", "unknown_device")


def test_verify_endpoint_input_errors(api_world: ApiWorld) -> None:
    def post(body: bytes) -> tuple[int, Any]:
        status, headers, doc = get_json(
            api_world,
            "/v1/verify",
            method="POST",
            body=body,
            headers={"Content-Type": "application/json"},
        )
        if status >= 400:
            assert headers["Content-Type"].startswith(PROBLEM)
        return status, doc

    malformed = (
        b"{not json",
        b"[1, 2]",
        b'{"receipt": 5}',
        b"{}",
        b'{"receipt": {}, "receipt": {}}',
        b"\xff\xfe",
        b"[" * 1000 + b"]" * 1000,
        b'{"receipt": NaN}',
    )
    for body in malformed:
        status, doc = post(body)
        assert (status, doc["reason"]) == (400, "body_malformed"), (body[:20], doc)
    status, doc = post(b'{"receipt": {"version": "cityanchor/receipt/v2"}}')
    assert status == 200 and not doc["valid"]
    assert doc["checks"] == [
        {
            "name": "receipt",
            "status": "fail",
            "reason": "receipt_malformed",
            "detail": "reading: missing",
        }
    ]
    # A v1 receipt (retired: its log leaf did not bind batch.size) is refused, saying so.
    status, doc = post(b'{"receipt": {"version": "cityanchor/receipt/v1"}}')
    assert status == 200 and not doc["valid"]
    [check] = doc["checks"]
    assert (check["name"], check["status"], check["reason"]) == (
        "receipt",
        "fail",
        "receipt_version_retired",
    )
    assert check["detail"].startswith("version: cityanchor/receipt/v1 receipts are refused")
    good = receipt_json(api_world, *api_world.anchored[0])
    status, doc = post(json.dumps({"receipt": good, "device_key": {"kty": "RSA"}}).encode())
    assert (status, doc["reason"]) == (400, "key_invalid")
    status, doc = post(b'{"receipt": {}, "pad": "' + b"x" * (1 << 20) + b'"}')
    assert (status, doc["reason"]) == (413, "too_large")


# -------------------------------------------------------------------------------- completeness


def test_completeness_proof_verifies_and_detects_removal(
    api_world: ApiWorld, tmp_path: Path
) -> None:
    device_id = sorted(api_world.signers)[2]
    signer = api_world.signers[device_id]
    total = signer.seq  # every seq 1..total was published and stored
    status, headers, proof = get_json(
        api_world, f"/v1/devices/{device_id}/completeness?from_seq=1&to_seq={total + 50}"
    )
    assert status == 200, proof
    assert headers["Cache-Control"] == "public, max-age=5"
    assert (proof["from_seq"], proof["to_seq"], proof["latest_seq"]) == (1, total, total)
    assert [r["seq"] for r in proof["readings"]] == list(range(1, total + 1))
    assert proof["gaps"] == [] and proof["status"] == "sealed"  # the newest batches are not
    report = verify_completeness(
        proof, device_key=signer.key.public_key, log_verifiers=[api_world.operator.verifier]
    )
    assert (report.readings, report.gaps, report.log_size) == (total, (), proof["log"]["size"])
    assert report.signatures_checked and report.checkpoint_signed

    # The anchored part alone ends on an anchored checkpoint.
    status, _, early = get_json(api_world, f"/v1/devices/{device_id}/completeness?to_seq=10")
    assert early["status"] == "anchored" and early["anchors"] and len(early["readings"]) == 10
    verify_completeness(early, log_verifiers=[api_world.operator.verifier])

    # One reading removed from the middle without admitting a gap: caught.
    cut = copy.deepcopy(proof)
    del cut["readings"][total // 2]
    with pytest.raises(CompletenessError) as exc:
        verify_completeness(cut)
    assert exc.value.reason == "gap_mismatch"
    # Admitting it makes it a reported gap, never a hidden one.
    missing = total // 2 + 1
    cut["gaps"] = [{"from": missing, "to": missing}]
    used = {r["batch_id"] for r in cut["readings"]}
    cut["batches"] = [b for b in cut["batches"] if b["id"] in used]
    assert verify_completeness(cut).gaps == ((missing, missing),)
    # Reordered readings: caught.
    swapped = copy.deepcopy(proof)
    swapped["readings"][3], swapped["readings"][4] = swapped["readings"][4], swapped["readings"][3]
    with pytest.raises(CompletenessError) as exc:
        verify_completeness(swapped)
    assert exc.value.reason == "seq_order"

    # A range starting past the device's readings is empty, and the CLI agrees offline.
    status, _, empty = get_json(
        api_world, f"/v1/devices/{device_id}/completeness?from_seq={total + 1}"
    )
    assert (empty["to_seq"], empty["readings"], empty["gaps"]) == (total, [], [])
    (tmp_path / "proof.json").write_text(json.dumps(proof))
    (tmp_path / "cut.json").write_text(json.dumps(cut | {"gaps": []}))
    (tmp_path / "op.vkey").write_text(api_world.operator.verifier.vkey())
    (tmp_path / "dev.jwk").write_text(json.dumps(signer.key.public_key.to_jwk()))
    keys = ["--log-key", str(tmp_path / "op.vkey"), "--device-key", str(tmp_path / "dev.jwk")]
    assert main(["verify-completeness", str(tmp_path / "proof.json"), *keys]) == 0
    assert main(["verify-completeness", str(tmp_path / "cut.json"), *keys]) == 1


def test_completeness_errors(api_world: ApiWorld) -> None:
    device_id = sorted(api_world.signers)[0]
    base = f"/v1/devices/{device_id}/completeness"
    assert_problem(api_world, f"{base}?from_seq=1&to_seq=1001", 400, "range_too_large")
    assert_problem(api_world, f"{base}?from_seq=5&to_seq=4", 400, "invalid_parameter")
    assert_problem(api_world, f"{base}?from_seq=0", 400, "invalid_parameter")
    assert_problem(api_world, f"{base}?to_seq=x", 400, "invalid_parameter")
    assert_problem(api_world, "/v1/devices/nobody/completeness", 404, "not_found")
    assert_problem(api_world, "/v1/devices/b%40d/completeness", 400, "device_id_invalid")
    status, _, proof = get_json(api_world, f"{base}?from_seq=1&to_seq=1000")
    assert status == 200 and proof["to_seq"] == proof["latest_seq"]


# ------------------------------------------------------------------------ batches, log, anchors


def test_batch(api_world: ApiWorld) -> None:
    doc = receipt_json(api_world, *api_world.anchored[7])
    # A v2 receipt has no batch id: it names its batch by log.index, which log.path proves.
    assert "id" not in doc["batch"]
    status, headers, batch = get_json(api_world, f"/v1/log/batches/{doc['log']['index']}")
    assert status == 200 and headers["Cache-Control"].endswith("immutable")
    batch_id = batch["id"]
    assert (batch["size"], batch["root"]) == (doc["batch"]["size"], doc["batch"]["root"])
    assert get_json(api_world, f"/v1/batches/{batch_id}")[2] == batch
    assert batch["log_index"] == doc["log"]["index"]
    leaves = [bytes.fromhex(h) for h in batch["leaf_hashes"]]
    assert len(leaves) == batch["size"] and leaves[doc["batch"]["index"]].hex() == doc["leaf_hash"]
    assert merkle.root(leaves).hex() == batch["root"]
    assert batch["sealed_at"].endswith("Z")
    assert_problem(api_world, "/v1/batches/987654321", 404, "not_found")
    assert_problem(api_world, "/v1/batches/x1", 400, "invalid_parameter")
    assert_problem(api_world, "/v1/log/batches/987654321", 404, "not_found")
    assert_problem(api_world, "/v1/log/batches/-1", 400, "invalid_parameter")


def test_checkpoint_and_consistency(api_world: ApiWorld) -> None:
    verifier = api_world.operator.verifier
    status, headers, raw = call(api_world, "/v1/log/checkpoint")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert headers["Cache-Control"] == "no-cache"
    latest = open_checkpoint(raw.decode(), verifier, origin=ORIGIN)
    # JSON by query or by Accept; an explicit size gives that checkpoint (cached for a minute:
    # witness cosignatures may still be appended to it).
    _, _, by_query = get_json(api_world, "/v1/log/checkpoint?format=json")
    _, headers, by_accept = get_json(
        api_world, "/v1/log/checkpoint", headers={"Accept": "text/plain;q=0.5, application/json"}
    )
    assert headers["Content-Type"].startswith("application/json")
    assert by_query == by_accept
    assert (by_query["size"], by_query["root"], by_query["origin"]) == (
        latest.size,
        latest.root.hex(),
        ORIGIN,
    )
    assert by_query["note"] == raw.decode() and by_query["anchors"] == []

    anchored = receipt_json(api_world, *api_world.anchored[0])
    old_size = anchored["log"]["size"]
    status, headers, old_note = call(api_world, f"/v1/log/checkpoint?size={old_size}")
    assert old_note.decode() == anchored["checkpoint"]
    assert headers["Cache-Control"] == "public, max-age=60, must-revalidate"
    old = open_checkpoint(old_note.decode(), verifier)
    _, _, old_json = get_json(api_world, f"/v1/log/checkpoint?size={old_size}&format=json")
    assert [a["log_size"] for a in old_json["anchors"]] == [old_size]
    assert old_size < latest.size

    status, _, cons = get_json(api_world, f"/v1/log/consistency?old={old_size}&new={latest.size}")
    assert status == 200, cons
    assert (cons["old_root"], cons["new_root"]) == (old.root.hex(), latest.root.hex())
    merkle.verify_consistency(
        old_size, latest.size, [bytes.fromhex(h) for h in cons["proof"]], old.root, latest.root
    )
    _, _, default_new = get_json(api_world, f"/v1/log/consistency?old={old_size}")
    assert default_new == cons
    assert_problem(
        api_world, f"/v1/log/consistency?old={latest.size}&new=1", 400, "invalid_parameter"
    )
    assert_problem(api_world, "/v1/log/consistency", 400, "invalid_parameter")
    assert_problem(api_world, f"/v1/log/consistency?old=1&new={latest.size + 5}", 404, "not_found")
    assert_problem(api_world, f"/v1/log/checkpoint?size={latest.size + 5}", 404, "not_found")
    assert_problem(api_world, "/v1/log/checkpoint?format=xml", 400, "invalid_parameter")


def test_anchors_pagination(api_world: ApiWorld) -> None:
    status, _, page = get_json(api_world, "/v1/anchors")
    assert status == 200 and page["anchors"] and page["next_since"] is None
    first = page["anchors"][0]
    anchored = receipt_json(api_world, *api_world.anchored[0])
    assert first["log_size"] == anchored["log"]["size"]
    assert first["root"] == anchored["log"]["root"]
    assert first["tx_hash"] == anchored["anchors"][0]["tx_hash"]
    assert first["block_time"] == anchored["anchors"][0]["block_time"]
    sizes = sorted({a["log_size"] for a in page["anchors"]})
    # Walk the pages one anchored size at a time with the cursor.
    seen: list[int] = []
    since: int | None = 0
    while since is not None:
        _, _, p = get_json(api_world, f"/v1/anchors?since={since}&limit=1")
        seen += sorted({a["log_size"] for a in p["anchors"]})
        since = p["next_since"]
    assert seen == sizes
    _, _, after = get_json(api_world, f"/v1/anchors?since={sizes[-1]}")
    assert after == {"anchors": [], "next_since": None}
    for bad in ("limit=0", "limit=1001", "since=-1", "since=x"):
        assert_problem(api_world, f"/v1/anchors?{bad}", 400, "invalid_parameter")


def test_operator_key(api_world: ApiWorld) -> None:
    status, _, key = get_json(api_world, "/v1/operator-key")
    assert status == 200
    assert key["vkey"] == api_world.operator.verifier.vkey()
    assert key["origin"] == ORIGIN and key["vkeys"] == [key["vkey"]]


# --------------------------------------------------------------------------------- openapi, docs


def test_openapi_and_docs_describe_every_route(api_world: ApiWorld) -> None:
    status, _, doc = get_json(api_world, "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.1")
    # Every route is described: the app's own and those of every route group (the tables
    # anchor.api.app.create_app registers), and every described route is served.
    app = web.Application()
    for table in route_tables():
        table.add_to(app)
    routes = {
        (r.method.lower(), r.resource.canonical)
        for r in app.router.routes()
        if r.method not in ("HEAD", "OPTIONS") and r.resource is not None
    }
    documented = {(m, p) for p, item in doc["paths"].items() for m in item}
    assert routes == documented, sorted(routes ^ documented)
    status, headers, page = call(api_world, "/docs")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    text = page.decode()
    for path in doc["paths"]:
        assert path in text
    assert "<script" not in text and "http://" not in text.replace("http://www.w3.org", "")
