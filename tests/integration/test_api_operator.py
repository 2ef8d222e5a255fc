"""Operator endpoints against the running API of ``api_world``: tokens, devices, erasure,
audit log, metrics, anchoring; and the ``cityanchor token`` CLI.

``api_world`` is shared by the whole session: these tests register only devices with ids of
their own, and erase exactly one reading (the last ``sealed_only`` reading of ERASED_DEVICE).
The successful ``POST /v1/anchors/run`` runs against an in-process API on a database of its
own, so that it never anchors api_world's "sealed" readings.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from unit.test_metrics import parse_exposition

from anchor.api import tokens
from anchor.cli.commands import main as cli_main
from anchor.keys import PrivateKey, b64url_encode
from anchor.local import AnvilNode, PostgresServer, free_port
from anchor.store import Store
from anchor.store import operator as operator_store
from anchor.verify import verify_receipt
from integration.api_fixtures import ApiWorld
from integration.stored import STORED_SQL

T = TypeVar("T")
ERASED_DEVICE = "api-dev-06"
RUN = uuid.uuid4().hex[:8]  # unique ids for this session's devices and tokens


def on_db(dsn: str, work: Callable[[Store], Awaitable[T]]) -> T:
    async def main() -> T:
        store = await Store.connect(dsn)
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(main())


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


def call(
    world: ApiWorld,
    method: str,
    path: str,
    *,
    token: str | None = None,
    body: Any = None,
    raw: bytes | None = None,
) -> Answer:
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data is not None else {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(world.url(path), data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, hdrs, payload = resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        status, hdrs, payload = exc.code, dict(exc.headers), exc.read()
    ctype = hdrs.get("Content-Type", "")
    parsed: Any = json.loads(payload) if "json" in ctype else payload.decode()
    return Answer(status, hdrs, parsed)


@dataclass
class Tokens:
    writer: str
    eraser: str
    metrics: str
    auditor: str
    runner: str
    revoked: str


@pytest.fixture(scope="module")
def tok(api_world: ApiWorld) -> Tokens:
    async def work(store: Store) -> Tokens:
        async def new(name: str, *scopes: str) -> str:
            return (await tokens.create_token(store, name=f"{name}-{RUN}", scopes=scopes)).token

        revoked = await tokens.create_token(store, name=f"gone-{RUN}", scopes=["devices:write"])
        await tokens.revoke_token(store, revoked.record.id)
        return Tokens(
            writer=await new("writer", "devices:write"),
            eraser=await new("eraser", "readings:erase"),
            metrics=await new("metrics", "metrics:read"),
            auditor=await new("auditor", "audit:read"),
            runner=await new("runner", "anchors:run"),
            revoked=revoked.token,
        )

    return on_db(api_world.dsn, work)


def audit_for(world: ApiWorld, auditor: str, target: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    after = 0
    while True:
        a = call(world, "GET", f"/v1/audit?after={after}&limit=1000", token=auditor)
        assert a.status == 200, a.body
        found.extend(e for e in a.body["entries"] if e["target"] == target)
        if a.body["next"] is None:
            return found
        after = a.body["next"]


def device_body(device_id: str, key: PrivateKey | None = None) -> dict[str, Any]:
    key = key or PrivateKey.generate()
    return {
        "device_id": device_id,
        "public_key_jwk": key.public_key.to_jwk(),
        "district": f"optest-{RUN}",
        "kind": "iot.noise",
    }


# --- tokens ------------------------------------------------------------------------------------


def test_missing_garbage_wrong_and_revoked_tokens_are_401(api_world: ApiWorld, tok: Tokens) -> None:
    device_id = f"op-auth-{RUN}"
    token_id, _ = tokens.parse_token(tok.writer) or (0, b"")
    wrong_secret = tokens.format_token(token_id, bytes(32))
    for token in (None, "garbage", "ca_1_short", wrong_secret, tok.revoked):
        a = call(api_world, "POST", "/v1/devices", token=token, body=device_body(device_id))
        assert a.status == 401, (token, a.body)
        assert a.body["reason"] == "unauthorized"
        assert a.headers["Content-Type"].startswith("application/problem+json")
        assert a.headers["WWW-Authenticate"].startswith("Bearer ")
    revoked = call(api_world, "POST", "/v1/devices", token=tok.revoked, body=device_body("x"))
    assert "revoked" in revoked.body["detail"]
    # Nothing was registered, and every attempt is in the audit log.
    assert call(api_world, "GET", f"/v1/devices/{device_id}").status == 404
    entries = audit_for(api_world, tok.auditor, f"device:{device_id}")
    assert [e["outcome"] for e in entries] == ["unauthorized"] * 5
    assert {e["actor"] for e in entries} == {"anonymous"}
    assert all(e["action"] == "device.register" and e["status"] == 401 for e in entries)


def test_wrong_scope_is_403_and_audited(api_world: ApiWorld, tok: Tokens) -> None:
    device_id = f"op-scope-{RUN}"
    a = call(api_world, "POST", "/v1/devices", token=tok.metrics, body=device_body(device_id))
    assert a.status == 403 and a.body["reason"] == "forbidden"
    assert 'scope="devices:write"' in a.headers["WWW-Authenticate"]
    for method, path, token in (
        ("DELETE", f"/v1/readings/{ERASED_DEVICE}/1?legal_reason=x", tok.writer),
        ("POST", "/v1/anchors/run", tok.metrics),
        ("GET", "/metrics", tok.auditor),
        ("GET", "/v1/audit", tok.metrics),
    ):
        b = call(api_world, method, path, token=token)
        assert (b.status, b.body["reason"]) == (403, "forbidden"), (method, path)
    (entry,) = audit_for(api_world, tok.auditor, f"device:{device_id}")
    assert entry["outcome"] == "forbidden" and entry["status"] == 403
    assert entry["actor"] == f"metrics-{RUN}" and entry["token_id"] is not None
    erase_refusals = audit_for(api_world, tok.auditor, f"reading:{ERASED_DEVICE}/1")
    assert [e["outcome"] for e in erase_refusals] == ["forbidden"]


# --- devices -----------------------------------------------------------------------------------


def test_register_device_exactly_as_design_says(api_world: ApiWorld, tok: Tokens) -> None:
    device_id = f"op-reg-{RUN}"
    key = PrivateKey.generate("P-256")
    a = call(api_world, "POST", "/v1/devices", token=tok.writer, body=device_body(device_id, key))
    assert a.status == 201, a.body
    assert a.headers["Location"] == f"/v1/devices/{device_id}"
    d = a.body
    assert d["device_id"] == device_id and d["status"] == "active"
    assert d["district"] == f"optest-{RUN}" and d["kind"] == "iot.noise"
    assert d["kid"] == key.public_key.kid.hex() and len(bytes.fromhex(d["kid"])) == 32
    assert d["kid_b64url"] == b64url_encode(key.public_key.kid)
    assert d["public_key_jwk"] == key.public_key.to_jwk()
    assert "mqtt_username" not in d and "mqtt_password" not in d  # no broker auth yet
    # Public reads: the device and its key, no token needed.
    g = call(api_world, "GET", f"/v1/devices/{device_id}")
    assert g.status == 200 and g.body == d
    # Duplicates: the same id, or the same key under another id.
    dup = call(api_world, "POST", "/v1/devices", token=tok.writer, body=device_body(device_id))
    assert (dup.status, dup.body["reason"]) == (409, "conflict")
    same_key = device_body(f"op-reg2-{RUN}", key)
    dup2 = call(api_world, "POST", "/v1/devices", token=tok.writer, body=same_key)
    assert (dup2.status, dup2.body["reason"]) == (409, "conflict")
    entries = audit_for(api_world, tok.auditor, f"device:{device_id}")
    assert [(e["outcome"], e["status"]) for e in entries] == [("ok", 201), ("conflict", 409)]
    assert entries[0]["actor"] == f"writer-{RUN}"
    assert entries[0]["detail"]["kid"] == key.public_key.kid.hex()
    assert entries[0]["detail"]["kid_b64url"] == b64url_encode(key.public_key.kid)  # item 13


@pytest.mark.parametrize(
    ("name", "mutate", "reason"),
    [
        ("bad jwk", lambda b: b["public_key_jwk"].update(x="AAAA"), "key_invalid"),
        ("jwk kty", lambda b: b["public_key_jwk"].update(kty="RSA"), "key_invalid"),
        ("private jwk", lambda b: b["public_key_jwk"].update(d="AAAA"), "key_invalid"),
        ("jwk not object", lambda b: b.update(public_key_jwk="nope"), "key_invalid"),
        ("device id", lambda b: b.update(device_id="bad id!"), "device_id_invalid"),
        ("extra field", lambda b: b.update(mqtt_password="x"), "body_malformed"),
        ("missing field", lambda b: b.pop("kind"), "body_malformed"),
        ("district type", lambda b: b.update(district=7), "body_malformed"),
    ],
)
def test_register_refuses_bad_bodies(
    api_world: ApiWorld,
    tok: Tokens,
    name: str,
    mutate: Callable[[dict[str, Any]], Any],
    reason: str,
) -> None:
    device_id = f"op-bad-{RUN}-{name.replace(' ', '-')}"
    body = device_body(device_id)
    mutate(body)
    a = call(api_world, "POST", "/v1/devices", token=tok.writer, body=body)
    assert (a.status, a.body["reason"]) == (400, reason), a.body
    if reason == "key_invalid":
        (entry,) = audit_for(api_world, tok.auditor, f"device:{device_id}")
        assert (entry["outcome"], entry["status"]) == ("key_invalid", 400)


def test_register_refuses_non_json(api_world: ApiWorld, tok: Tokens) -> None:
    for raw in (b"{not json", b"[1, 2]", b"", b'{"kind": "a", "kind": "b"}', b"\xff{}"):
        a = call(api_world, "POST", "/v1/devices", token=tok.writer, raw=raw)
        assert (a.status, a.body["reason"]) == (400, "body_malformed"), raw


def test_rotate_revoke_and_list(api_world: ApiWorld, tok: Tokens) -> None:
    district = f"optest-list-{RUN}"
    ids = [f"op-list-{RUN}-{i}" for i in range(3)]
    for device_id in ids:
        body = {**device_body(device_id), "district": district}
        assert call(api_world, "POST", "/v1/devices", token=tok.writer, body=body).status == 201
    new_key = PrivateKey.generate()
    r = call(
        api_world,
        "POST",
        f"/v1/devices/{ids[0]}/rotate",
        token=tok.writer,
        body={"public_key_jwk": new_key.public_key.to_jwk()},
    )
    assert r.status == 200 and r.body["kid"] == new_key.public_key.kid.hex()
    assert [k["current"] for k in r.body["keys"]] == [False, True]
    v = call(
        api_world, "POST", f"/v1/devices/{ids[1]}/revoke", token=tok.writer, body={"reason": "lost"}
    )
    assert v.status == 200 and v.body["status"] == "revoked" and v.body["revoke_reason"] == "lost"
    again = call(api_world, "POST", f"/v1/devices/{ids[1]}/revoke", token=tok.writer)
    assert (again.status, again.body["reason"]) == (409, "conflict")
    missing = call(api_world, "POST", f"/v1/devices/op-none-{RUN}/revoke", token=tok.writer)
    assert (missing.status, missing.body["reason"]) == (404, "not_found")
    # Public list with a cursor.
    page1 = call(api_world, "GET", f"/v1/devices?district={district}&limit=2")
    assert page1.status == 200
    assert [d["device_id"] for d in page1.body["devices"]] == ids[:2]
    assert page1.body["next"] == ids[1]
    page2 = call(api_world, "GET", f"/v1/devices?district={district}&limit=2&after={ids[1]}")
    assert [d["device_id"] for d in page2.body["devices"]] == ids[2:]
    assert page2.body["next"] is None
    revoked = call(api_world, "GET", f"/v1/devices?district={district}&status=revoked")
    assert [d["device_id"] for d in revoked.body["devices"]] == [ids[1]]
    for query in ("limit=0", "limit=x", "status=gone"):
        bad = call(api_world, "GET", f"/v1/devices?{query}")
        assert (bad.status, bad.body["reason"]) == (400, "invalid_parameter"), query
    actions = [e["action"] for e in audit_for(api_world, tok.auditor, f"device:{ids[1]}")]
    assert actions == ["device.register", "device.revoke", "device.revoke"]


# --- erasure -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def erased(api_world: ApiWorld, tok: Tokens) -> Iterator[tuple[str, int, dict[str, Any]]]:
    seq = max(s for d, s in api_world.sealed_only if d == ERASED_DEVICE)
    path = f"/v1/readings/{ERASED_DEVICE}/{seq}"
    assert call(api_world, "DELETE", path, token=tok.eraser).status == 400  # no legal_reason
    a = call(
        api_world, "DELETE", path, token=tok.eraser, body={"legal_reason": f"GDPR art. 17 {RUN}"}
    )
    assert a.status == 200, a.body
    yield ERASED_DEVICE, seq, a.body


def test_erasure_answer_and_idempotence(
    api_world: ApiWorld, tok: Tokens, erased: tuple[str, int, dict[str, Any]]
) -> None:
    device_id, seq, first = erased
    assert first["status"] == "erased" and first["erased_now"] is True
    stone = first["tombstone"]
    assert stone["device_id"] == device_id and stone["seq"] == seq
    assert stone["actor"] == f"eraser-{RUN}" and stone["legal_reason"] == f"GDPR art. 17 {RUN}"
    # One shape (issue 14 item 13): the receipt's erasure fields, named and timed the same;
    # `actor` stays, as the alias it was first published as.
    assert stone["erased_by"] == stone["actor"]
    status, receipt = api_world.get_json(f"/v1/receipts/{device_id}/{seq}")
    assert status == 200 and receipt["status"] == "erased"
    assert receipt["erasure"] == {k: stone[k] for k in ("erased_at", "erased_by", "legal_reason")}
    again = call(
        api_world,
        "DELETE",
        f"/v1/readings/{device_id}/{seq}?legal_reason=another",
        token=tok.eraser,
    )
    assert again.status == 200
    assert again.body["erased_now"] is False and again.body["tombstone"] == stone
    unknown = call(
        api_world, "DELETE", f"/v1/readings/{device_id}/999999?legal_reason=x", token=tok.eraser
    )
    assert (unknown.status, unknown.body["reason"]) == (404, "not_found")
    outcomes = [
        (e["outcome"], e["status"])
        for e in audit_for(api_world, tok.auditor, f"reading:{device_id}/{seq}")
    ]
    assert outcomes == [("invalid_parameter", 400), ("ok", 200), ("ok", 200)]


def test_erased_receipt_and_every_other_receipt_of_its_batch_verify(
    api_world: ApiWorld, erased: tuple[str, int, dict[str, Any]]
) -> None:
    device_id, seq, answer = erased

    async def work(store: Store) -> Any:
        receipt = await store.receipt(device_id, seq)
        batch_id = (await store.batch_record_at(receipt.log.index)).id
        batch = await store.receipts_for_batch(batch_id)
        async with store.connection("test") as conn:
            row = await conn.fetchrow(
                STORED_SQL + "WHERE d.device_id = $1 AND s.seq = $2", device_id, seq
            )
        return receipt, batch, row, await operator_store.tombstone(store, device_id, seq)

    receipt, batch, row, stone = on_db(api_world.dsn, work)
    # The bytes are gone (zeros in the batch's packed row, same length); the leaf hash stays.
    envelope = bytes(row["envelope"])
    assert envelope and envelope == bytes(len(envelope))
    assert bytes(row["leaf_hash"]) == receipt.leaf_hash
    assert stone is not None and stone.leaf_hash == receipt.leaf_hash
    assert answer["tombstone"]["leaf_hash"] == receipt.leaf_hash.hex()
    assert receipt.status == "erased" and receipt.envelope == b""
    assert receipt.extra["erasure"]["legal_reason"] == f"GDPR art. 17 {RUN}"
    assert receipt.extra["erasure"]["erased_by"] == f"eraser-{RUN}"
    keys = [s.key.public_key for s in api_world.signers.values()]
    verifiers = [api_world.operator.verifier]
    report = verify_receipt(receipt, device_keys=keys, log_verifiers=verifiers)
    checks = {c.name: c.status for c in report.checks}
    assert report.valid, report.to_dict()
    assert checks["envelope"] == checks["signature"] == checks["leaf_hash"] == "skip"
    assert checks["batch_path"] == checks["log_path"] == checks["checkpoint_signature"] == "pass"
    if importlib.util.find_spec("anchor.api.public") is not None:
        # The public receipt endpoint serves the erased receipt as it is (not a 410).
        served = call(api_world, "GET", f"/v1/receipts/{device_id}/{seq}")
        assert served.status == 200, served.body
        assert served.body["status"] == "erased" and served.body["reading"]["envelope"] == ""
        assert served.body["erasure"] == receipt.extra["erasure"]
    others = [r for r in batch if (r.device_id, r.seq) != (device_id, seq)]
    assert len(others) == len(batch) - 1 >= 1
    for r in others:
        assert r.status in ("sealed", "anchored")
        key = api_world.signers[r.device_id].key.public_key
        rep = verify_receipt(r, device_keys=[key], log_verifiers=verifiers)
        skipped = ("anchors", "witnesses")  # maybe not anchored yet; no witness key
        assert rep.valid and all(c.status == "pass" for c in rep.checks if c.name not in skipped)


# --- audit and metrics -------------------------------------------------------------------------


def test_audit_log_pages_with_a_cursor(api_world: ApiWorld, tok: Tokens) -> None:
    first = call(api_world, "GET", "/v1/audit?limit=2", token=tok.auditor)
    assert first.status == 200 and len(first.body["entries"]) == 2
    ids = [e["id"] for e in first.body["entries"]]
    assert ids == sorted(ids) and first.body["next"] == ids[-1]
    second = call(api_world, "GET", f"/v1/audit?after={ids[-1]}&limit=2", token=tok.auditor)
    assert all(e["id"] > ids[-1] for e in second.body["entries"])
    entry = first.body["entries"][0]
    assert set(entry) == {
        "id", "at", "actor", "token_id", "action", "target", "outcome", "status", "detail",
        "remote_addr",
    }  # fmt: skip
    assert call(api_world, "GET", "/v1/audit").status == 401


def test_metrics_parse_and_hold_the_ingest_counters(api_world: ApiWorld, tok: Tokens) -> None:
    call(api_world, "POST", "/v1/devices", body={})  # one more auth failure ("missing")
    assert call(api_world, "GET", "/metrics").status == 401
    a = call(api_world, "GET", "/metrics", token=tok.metrics)
    assert a.status == 200
    assert a.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    fams = parse_exposition(a.body)
    counts = on_db(api_world.dsn, lambda s: s.counts())  # read after the scrape: never less

    def value(family: str, suffix: str = "", **labels: str) -> float:
        return next(v for n, lab, v in fams[family][1] if n == family + suffix and lab == labels)

    assert fams["cityanchor_readings_stored_total"][0] == "counter"
    assert 280 <= value("cityanchor_readings_stored_total") <= counts["readings"]
    assert 1 <= value("cityanchor_batches_sealed_total") <= counts["batches"]
    quarantined = {
        lab["reason"]: v for _, lab, v in fams["cityanchor_readings_quarantined_total"][1]
    }
    for reason, n in quarantined.items():
        assert n <= counts[f"quarantine.{reason}"]
    seal_count = value("cityanchor_seal_latency_seconds", "_count")
    assert seal_count == value("cityanchor_batches_sealed_total")
    assert value("cityanchor_seal_latency_seconds", "_bucket", le="+Inf") == seal_count
    assert value("cityanchor_anchor_lag_seconds", backend="local") >= 0
    assert value("cityanchor_anchored_log_size", backend="local") >= 1
    assert (
        value("cityanchor_anchors_vanished_total", backend="local", reason="anchor_vanished") == 0
    )
    routes = {lab["route"] for _, lab, _ in fams["cityanchor_api_request_duration_seconds"][1]}
    assert "/v1/devices" in routes and "/healthz" in routes
    # Method and status too (issue 14 item 21): the refused calls above, as the client saw them.
    api = fams["cityanchor_api_request_duration_seconds"][1]
    series = {(lab["route"], lab["method"], lab["status"]) for _, lab, _ in api}
    assert {("/metrics", "GET", "401"), ("/v1/devices", "POST", "401")} <= series, series
    assert ("/healthz", "GET", "200") in series
    assert value("cityanchor_api_auth_failures_total", reason="missing") >= 1
    # Scraping again never lowers a counter (the seal histogram is extended, not rebuilt).
    again = parse_exposition(call(api_world, "GET", "/metrics", token=tok.metrics).body)
    (again_count,) = [
        v
        for n, _, v in again["cityanchor_seal_latency_seconds"][1]
        if n == "cityanchor_seal_latency_seconds_count"
    ]
    assert again_count >= seal_count


def test_anchor_run_needs_its_scope(api_world: ApiWorld, tok: Tokens) -> None:
    a = call(api_world, "POST", "/v1/anchors/run")
    assert (a.status, a.body["reason"]) == (401, "unauthorized")
    b = call(api_world, "POST", "/v1/anchors/run", token=tok.eraser)
    assert (b.status, b.body["reason"]) == (403, "forbidden")
    outcomes = [
        e["outcome"]
        for e in audit_for(api_world, tok.auditor, "")
        if e["action"] == "anchors.run" and e["token_id"] in (None, _id(tok.eraser))
    ]
    assert "unauthorized" in outcomes and "forbidden" in outcomes


def _id(token: str) -> int:
    parsed = tokens.parse_token(token)
    assert parsed is not None
    return parsed[0]


def test_anchor_run_steps_the_job(
    postgres: PostgresServer, anvil: AnvilNode, anchor_registry: str, tmp_path: Path
) -> None:
    # A database and API of its own: anchoring api_world would change its "sealed" receipts.
    from aiohttp import ClientSession, web

    from anchor.api.app import ApiContext, create_app
    from anchor.host.config import ChainSettings, Settings

    name = f"oprun_{uuid.uuid4().hex[:12]}"
    dsn = postgres.create_database(name)
    key_file = tmp_path / "chain.key"
    key_file.write_text(anvil.accounts[4].private_key)
    chain = ChainSettings(
        name="local",
        rpc_url=anvil.rpc_url,
        chain_id=anvil.chain_id,
        contract=anchor_registry,
        key_file=str(key_file),
    )

    async def main() -> list[tuple[int, Any]]:
        store = await Store.connect(dsn, max_size=4)
        await store.migrate()
        runner_token = (await tokens.create_token(store, name="run", scopes=["anchors:run"])).token
        out: list[tuple[int, Any]] = []
        for settings in (Settings(database_url=dsn, chains=(chain,)), Settings(database_url=dsn)):
            app = create_app(ApiContext(store=store, settings=settings))
            runner = web.AppRunner(app)
            await runner.setup()
            port = free_port()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            url = f"http://127.0.0.1:{port}/v1/anchors/run"
            headers = {"Authorization": f"Bearer {runner_token}"}
            try:
                async with ClientSession() as http:
                    async with http.post(url, headers=headers) as resp:
                        out.append((resp.status, await resp.json(content_type=None)))
                    if settings.chains:
                        # While the anchoring job holds its lock, a step is refused.
                        async with store.leadership(), http.post(url, headers=headers) as resp:
                            out.append((resp.status, await resp.json(content_type=None)))
            finally:
                await runner.cleanup()
        entries = await operator_store.list_audit(store)
        out.append((0, [(e.action, e.outcome) for e in entries]))
        await store.close()
        return out

    try:
        (ok, busy, unconfigured, (_, audit)) = asyncio.run(main())
    finally:
        postgres.drop_database(name)
    assert ok[0] == 202, ok
    assert ok[1]["results"] == [
        {
            "backend": "local",
            "outcome": "empty_log",
            "log_size": None,
            "tx_hash": None,
            "detail": "",
        }
    ]
    assert busy[0] == 409 and busy[1]["reason"] == "conflict"
    assert unconfigured[0] == 503 and unconfigured[1]["reason"] == "anchoring_unconfigured"
    assert audit == [
        ("anchors.run", "ok"),
        ("anchors.run", "conflict"),
        ("anchors.run", "anchoring_unconfigured"),
    ]


# --- the token CLI -----------------------------------------------------------------------------


def test_token_cli_create_list_revoke(
    api_world: ApiWorld, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    dsn = ["--database-url", api_world.dsn]
    out_file = tmp_path / "token"
    name = f"cli-{RUN}"
    assert (
        cli_main(["token", "create", "--name", name, "--scope", "metrics:read", "--out",
                  str(out_file), "--json", *dsn])
        == 0
    )  # fmt: skip
    created = json.loads(capsys.readouterr().out)
    token = created["token"]
    assert tokens.parse_token(token) is not None and created["scopes"] == ["metrics:read"]
    assert out_file.read_text().strip() == token and out_file.stat().st_mode & 0o777 == 0o600
    assert call(api_world, "GET", "/metrics", token=token).status == 200

    assert cli_main(["token", "list", "--json", *dsn]) == 0
    listed = json.loads(capsys.readouterr().out)
    mine = [t for t in listed if t["name"] == name]
    assert len(mine) == 1 and mine[0]["revoked_at"] is None
    assert mine[0]["last_used_at"] is not None
    assert "token" not in mine[0] and "token_hash" not in mine[0]
    assert token.split("_", 2)[2] not in json.dumps(listed)  # the secret may hold "_"

    assert cli_main(["token", "revoke", str(created["id"]), *dsn]) == 0
    assert "revoked" in capsys.readouterr().out
    gone = call(api_world, "GET", "/metrics", token=token)
    assert (gone.status, gone.body["reason"]) == (401, "unauthorized")
    assert cli_main(["token", "revoke", str(created["id"]), *dsn]) == 1  # already revoked
    assert "conflict" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["token", "create", "--name", name, "--scope", "root", *dsn])
    capsys.readouterr()

    async def cli_audit(store: Store) -> list[tuple[str, str]]:
        found, after = [], 0
        while entries := await operator_store.list_audit(store, after=after, limit=1000):
            found += [(e.action, e.actor) for e in entries if e.target == f"token:{created['id']}"]
            after = entries[-1].id
        return found

    audit = on_db(api_world.dsn, cli_audit)
    assert [a for a, _ in audit] == ["token.create", "token.revoke"]
    assert all(actor.startswith("cli") for _, actor in audit)


# --- the public device reads against /openapi.json -----------------------------------------------


@pytest.mark.parametrize("mode", ["positive", "negative"])
@pytest.mark.parametrize("path", ["/v1/devices", "/v1/devices/{device_id}"])
def test_public_device_reads_match_the_openapi_document(
    api_world: ApiWorld, path: str, mode: str
) -> None:
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(api_world.url("/openapi.json"))
    operation = schema[path]["GET"]
    generation = GenerationMode.POSITIVE if mode == "positive" else GenerationMode.NEGATIVE

    @given(case=operation.as_strategy(generation_mode=generation))
    @settings(
        max_examples=25,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=api_world.base_url, timeout=30)

    run()
