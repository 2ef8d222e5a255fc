"""Issue 10 item 5, live: re-spelt envelopes of genuine readings are refused everywhere.

Against the real services (private Mosquitto and PostgreSQL, the real ``cityanchor ingest``
process; and the real API of ``api_world`` for ``POST /v1/verify``). The attack that worked
before: a third party takes device M's signed seq 1 off the wire, re-wraps it as
``[p, {99: "attacker text"}, payload, sig]`` (the unprotected header is not signed) and
publishes it on M's topic before the genuine one. The variant was sealed and anchored; M's own
seq 1 was then quarantined ``seq_conflict`` and its seq 2 ``prev_mismatch``. Now the variant is
quarantined ``non_canonical`` and M's readings are sealed.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import cbor2
import pytest

from anchor import merkle
from anchor.cli import main as cli_main
from anchor.envelope import FORMAT_COSE, FORMAT_JWS, NonCanonicalEnvelope, parse_envelope
from anchor.keys import P256_ORDER, PrivateKey, b64url_encode
from anchor.local import MosquittoServer, PostgresServer
from anchor.store import Store
from anchor.verify import verify_receipt
from devices.signer import DeviceSigner
from integration.api_fixtures import ApiWorld
from integration.stored import STORED_SQL
from integration.test_api_public import post_verify, receipt_json
from integration.test_ingest import (
    Env,
    Ingestors,
    Publisher,
    _env,
    _wait_counts,
    _with_store,
)


@pytest.fixture
def env(postgres: PostgresServer, mosquitto: MosquittoServer, tmp_path: Path) -> Env:
    return _env(postgres, mosquitto, tmp_path)


@pytest.fixture
def ingestors() -> Iterator[Ingestors]:
    ing = Ingestors()
    yield ing
    ing.stop_all()


# -- what a third party can do with a genuine envelope and no key -----------------------------


def _cose_parts(raw: bytes) -> list[Any]:
    item = cbor2.loads(raw)
    assert isinstance(item, cbor2.CBORTag) and item.tag == 18
    return list(item.value)


def with_unprotected(raw: bytes, unprotected: dict[Any, Any]) -> bytes:
    p, _, payload, sig = _cose_parts(raw)
    return bytes(cbor2.dumps(cbor2.CBORTag(18, [p, unprotected, payload, sig])))


def untagged(raw: bytes) -> bytes:
    assert raw[:2] == b"\xd2\x84"
    return raw[1:]


def array_98_04(raw: bytes) -> bytes:
    assert raw[:2] == b"\xd2\x84"
    return b"\xd2\x98\x04" + raw[2:]


def protected_5a(raw: bytes) -> bytes:
    # The protected bstr's length as a 4-byte argument (5a <len32>) instead of 58 <len8>.
    assert raw[2] == 0x58
    return raw[:2] + b"\x5a" + raw[3].to_bytes(4, "big") + raw[4:]


def high_s(raw: bytes) -> bytes:
    env = parse_envelope(raw)
    sig = env.signature
    twin = sig[:32] + (P256_ORDER - int.from_bytes(sig[32:], "big")).to_bytes(32, "big")
    if env.format == FORMAT_COSE:
        return raw[:-64] + twin
    return raw.rsplit(b".", 1)[0] + b"." + b64url_encode(twin).encode()


def padded_signature(raw: bytes) -> bytes:
    return raw + b"=="  # 64 bytes are 86 base64url characters: two '=' pad it


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _quarantine(dsn: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch("SELECT device_id, seq, reason, raw FROM quarantine"))
    finally:
        await conn.close()


async def _stored(dsn: str, device_id: str) -> dict[int, bytes]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(STORED_SQL + "WHERE d.device_id = $1 ORDER BY s.seq", device_id)
        return {r["seq"]: bytes(r["envelope"]) for r in rows}
    finally:
        await conn.close()


def _register(env: Env, signers: list[DeviceSigner]) -> None:
    async def register(store: Store) -> None:
        for s in signers:
            await store.register_device(
                s.device_id, s.key.public_key, district=env.district, kind="iot.noise"
            )

    _run(_with_store(env.dsn, register))


def _topic(env: Env, signer: DeviceSigner) -> str:
    return f"city/{env.district}/{signer.device_id}/readings"


def _assert_receipts_verify(env: Env, signer: DeviceSigner, seqs: list[int]) -> None:
    async def check(store: Store) -> None:
        for seq in seqs:
            receipt = await store.receipt(signer.device_id, seq)
            report = verify_receipt(
                receipt, device_keys=[signer.key.public_key], log_verifiers=[env.operator.verifier]
            )
            not_passed = [c.name for c in report.checks if c.status != "pass"]
            assert not_passed == ["witnesses", "anchors"], report  # no witness key; sealed

    _run(_with_store(env.dsn, check))


# -- live --------------------------------------------------------------------------------------


def test_attacker_variant_published_first_is_quarantined_and_the_device_is_sealed(
    env: Env, ingestors: Ingestors
) -> None:
    m = DeviceSigner(f"{env.district}-m", PrivateKey.generate("Ed25519"), format=FORMAT_COSE)
    _register(env, [m])
    ingestors.start(env)
    genuine = [m.sign("iot.noise", {"laeq_db": 41.5 + n}) for n in range(2)]
    variant = with_unprotected(genuine[0], {99: "attacker text"})
    # The variant is a real one: the same signed parts, so the signature still verifies ...
    p, unprotected, payload, sig = _cose_parts(variant)
    assert [p, payload, sig] == [_cose_parts(genuine[0])[i] for i in (0, 2, 3)]
    assert unprotected == {99: "attacker text"}
    m.key.public_key.verify(sig, parse_envelope(genuine[0]).signed_bytes)
    with pytest.raises(NonCanonicalEnvelope):  # ... and only the canonical-form rule refuses it
        parse_envelope(variant)

    pub = Publisher(env.mqtt_url, f"attacker-{env.group}")
    try:
        pub.publish(_topic(env, m), variant)  # before the genuine seq 1, in order (same client)
        pub.flush()
        for raw in genuine:
            pub.publish(_topic(env, m), raw)
        pub.flush()
    finally:
        pub.close()

    counts = _wait_counts(env, 2, 1)
    assert counts["readings"] == 2 and counts["quarantine"] == 1, counts
    assert counts.get("quarantine.non_canonical") == 1, counts
    assert "quarantine.seq_conflict" not in counts and "quarantine.prev_mismatch" not in counts
    (row,) = _run(_quarantine(env.dsn))
    assert (row["device_id"], row["reason"], bytes(row["raw"])) == (
        m.device_id,
        "non_canonical",
        variant,
    )
    assert _run(_stored(env.dsn, m.device_id)) == {1: genuine[0], 2: genuine[1]}
    _assert_receipts_verify(env, m, [1, 2])


VariantMaker = Callable[[bytes], bytes]
COSE_VARIANTS: list[tuple[str, VariantMaker]] = [
    ("unprotected {99: attacker text}", lambda r: with_unprotected(r, {99: "attacker text"})),
    ("unprotected 16 KiB label", lambda r: with_unprotected(r, {"x": "y" * (16_000 - len(r))})),
    ("tag 18 removed", untagged),
    ("array head 98 04", array_98_04),
    ("protected head 5a <len32>", protected_5a),
]


def test_every_variant_class_is_quarantined_non_canonical_live(
    env: Env, ingestors: Ingestors
) -> None:
    devices = [
        DeviceSigner(f"{env.district}-ed-cose", PrivateKey.generate("Ed25519"), format=FORMAT_COSE),
        DeviceSigner(f"{env.district}-ec-cose", PrivateKey.generate("P-256"), format=FORMAT_COSE),
        DeviceSigner(f"{env.district}-ec-jws", PrivateKey.generate("P-256"), format=FORMAT_JWS),
        DeviceSigner(f"{env.district}-ed-jws", PrivateKey.generate("Ed25519"), format=FORMAT_JWS),
    ]
    _register(env, devices)
    ingestors.start(env)
    genuine = {d.device_id: [d.sign("iot.noise", {"n": n}) for n in range(3)] for d in devices}
    variants: list[tuple[DeviceSigner, str, bytes]] = []
    for d in devices:
        first = genuine[d.device_id][0]
        makers: list[tuple[str, VariantMaker]] = []
        if d.format == FORMAT_COSE:
            makers += COSE_VARIANTS
        else:
            makers.append(("signature padded", padded_signature))
        if d.key.key_type == "P-256":
            makers.append(("ES256 (r, n - s)", high_s))
        for name, make in makers:
            raw = make(first)
            assert raw != first and len(raw) <= 16 * 1024, name
            variants.append((d, name, raw))

    pub = Publisher(env.mqtt_url, f"attacker-{env.group}")
    try:
        for d, _, raw in variants:  # every variant before any genuine reading
            pub.publish(_topic(env, d), raw)
        pub.flush()
        for d in devices:
            for raw in genuine[d.device_id]:
                pub.publish(_topic(env, d), raw)
        pub.flush()
    finally:
        pub.close()

    counts = _wait_counts(env, 3 * len(devices), len(variants))
    assert counts["readings"] == 3 * len(devices), counts
    assert counts["quarantine"] == counts["quarantine.non_canonical"] == len(variants), counts
    assert len(variants) == 5 + 6 + 2 + 1  # Ed25519 COSE, P-256 COSE, P-256 JWS, Ed25519 JWS
    rows = _run(_quarantine(env.dsn))
    assert sorted(bytes(r["raw"]) for r in rows) == sorted(raw for _, _, raw in variants)
    for d in devices:
        assert _run(_stored(env.dsn, d.device_id)) == dict(enumerate(genuine[d.device_id], 1))
        _assert_receipts_verify(env, d, [1, 2, 3])


# -- verifiers: POST /v1/verify and `cityanchor verify` ---------------------------------------


def _variant_receipt(doc: dict[str, Any]) -> dict[str, Any]:
    """The receipt as it would read had the variant been sealed in the genuine one's place."""
    raw = base64.urlsafe_b64decode(doc["reading"]["envelope"] + "==")
    if doc["reading"]["format"] == FORMAT_COSE:
        variant = with_unprotected(raw, {99: "attacker text"})
    else:
        variant = padded_signature(raw)
    out = copy.deepcopy(doc)
    out["reading"]["envelope"] = base64.urlsafe_b64encode(variant).rstrip(b"=").decode()
    out["leaf_hash"] = merkle.leaf_hash(variant).hex()
    return out


def test_verify_endpoint_and_cli_refuse_a_variant_receipt(
    api_world: ApiWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seen = set()
    for device_id, seq in api_world.anchored:
        doc = receipt_json(api_world, device_id, seq)
        fmt = doc["reading"]["format"]
        if fmt in seen:
            continue
        seen.add(fmt)
        status, genuine = post_verify(api_world, {"receipt": doc})
        assert status == 200 and genuine["fully_verified"], genuine
        variant = _variant_receipt(doc)
        status, result = post_verify(api_world, {"receipt": variant})
        assert status == 200 and not result["valid"], result
        checks = {c["name"]: (c["status"], c["reason"]) for c in result["checks"]}
        assert checks["envelope"] == ("fail", "non_canonical"), checks
        assert checks["signature"][0] == "skip", checks  # no signature check on such bytes
        assert checks["leaf_hash"] == ("pass", None)  # the receipt names the variant's leaf

        # The offline verifier, with the device's key: the same verdict, exit status 1.
        path = tmp_path / f"variant-{fmt}.json"
        path.write_text(json.dumps(variant))
        jwk = tmp_path / f"{device_id}.jwk"
        jwk.write_text(json.dumps(api_world.signers[device_id].key.public_key.to_jwk()))
        capsys.readouterr()
        code = cli_main(["verify", str(path), "--device-key", str(jwk), "--json"])
        out = json.loads(capsys.readouterr().out)
        assert code == 1
        by_name = {c["name"]: c for c in out[0]["checks"]}
        assert by_name["envelope"]["status"] == "fail"
        assert by_name["envelope"]["reason"] == "non_canonical"
    assert seen == {FORMAT_COSE, FORMAT_JWS}
