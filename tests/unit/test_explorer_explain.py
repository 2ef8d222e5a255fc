"""The explorer's words (anchor/api/explorer/static/explain.js, run by Node): a plain-language
line for every check and status, with no check name or reason code in it (issue 14 item 18);
and a verdict that says "Fully verified" only when every key and endpoint a passing check relied
on was given or explicitly accepted by the user, and says whose keys were used otherwise; a
failed check marks the reading's values untrusted (item 16)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from anchor.checkpoint import Checkpoint, generate_note_key, sign_checkpoint
from anchor.errors import Reason
from anchor.receipt import AnchorRecord, BatchProof, LogProof, Receipt, receipt_to_dict
from anchor.verify import CHECK_NAMES

ROOT = Path(__file__).resolve().parents[2]
OPERATOR = generate_note_key("explain.cityanchor.example/log")


def _h(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def _receipt() -> dict[str, Any]:
    note = sign_checkpoint(Checkpoint("explain.cityanchor.example/log", 9, _h("log")), OPERATOR)
    r = Receipt(
        device_id="aq-0042",
        seq=17,
        format="cose-sign1",
        envelope=b"\xd2\x84C\xa1\x01'\xa0X\x10not really cbor\xff",
        leaf_hash=_h("leaf"),
        batch=BatchProof(size=5, index=4, root=_h("batch"), path=(_h("b0"),)),
        log=LogProof(index=42, size=43, root=_h("log"), path=(_h("l0"),)),
        checkpoint=note,
        anchors=(
            AnchorRecord(
                chain_id=31337,
                contract="0x5FbDB2315678afecb367f032d93F642f64180aa3",
                tx_hash="0x" + _h("tx").hex(),
                block_number=1234,
                block_time="2026-11-25T15:00:00Z",
            ),
        ),
        status="anchored",
    )
    return receipt_to_dict(dataclasses.replace(r))


def _checks(**statuses: str) -> list[dict[str, Any]]:
    return [
        {"name": n, "status": statuses.get(n, "pass"), "detail": "d", "reason": None}
        for n in CHECK_NAMES
    ]


SERVER = {
    "device": {"from": "server", "label": "this server's device registry"},
    "operator": {"from": "server", "label": "this server's configuration"},
    "witnesses": {"from": "none", "label": "this server configures no witness"},
    "rpc": {"from": "server", "label": "this server's published endpoint http://x"},
}
OWN = {
    "device": {"from": "user", "label": "the key you gave"},
    "operator": {"from": "user", "label": "the key you gave"},
    "witnesses": {"from": "none", "label": ""},
    "rpc": {"from": "user", "label": "https://my-node.example"},
}
VERDICTS = [
    # 0: every check passed with the server's keys: not "Fully verified", and says so.
    {"checks": _checks(witnesses="skip"), "sources": SERVER, "accepted": False},
    # 1: the same, the server's keys accepted by the user.
    {"checks": _checks(witnesses="skip"), "sources": SERVER, "accepted": True},
    # 2: the user's own keys and endpoint.
    {"checks": _checks(witnesses="skip"), "sources": OWN, "accepted": False},
    # 3: own keys but the server's endpoint for the anchors check.
    {
        "checks": _checks(witnesses="skip"),
        "sources": {**OWN, "rpc": SERVER["rpc"]},
        "accepted": False,
    },
    # 4: a failed signature (a tampered value): not valid, values untrusted.
    {"checks": _checks(signature="fail", leaf_hash="fail"), "sources": OWN, "accepted": False},
    # 5: anchors skipped (no endpoint), server keys.
    {
        "checks": _checks(witnesses="skip", anchors="skip"),
        "sources": {**SERVER, "rpc": {"from": "none", "label": "this server publishes none"}},
        "accepted": False,
    },
]


def _run(tmp_path: Path) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH")
    path = tmp_path / "cases.json"
    path.write_text(json.dumps({"receipt": _receipt(), "verdicts": VERDICTS}))
    result = subprocess.run(
        [
            node,
            "--disable-warning=MODULE_TYPELESS_PACKAGE_JSON",
            str(ROOT / "tests" / "browser" / "explain-check.mjs"),
            str(path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def test_every_check_has_a_plain_line_per_status(tmp_path: Path) -> None:
    plain = _run(tmp_path)["plain"]
    # The cosigners stay named in the plain line (from the check's detail).
    assert plain.pop("witnesses_named").startswith(
        "Independent witnesses (w0.example, w1.example) confirmed they saw this same log"
    )
    assert set(plain) == set(CHECK_NAMES)
    # No code word (leaf_hash, bad_signature, ...; plain words such as "signature" are fine).
    codes = [c for c in [*CHECK_NAMES, *(r.value for r in Reason)] if "_" in c]
    jargon = re.compile(r"\b(" + "|".join(codes) + r")\b|Merkle|\bkid\b|JWK|COSE|JWS|hash")
    for name, lines in plain.items():
        assert set(lines) == {"pass", "fail", "skip"}, name
        for status, line in lines.items():
            assert line and line.endswith("."), (name, status, line)
            assert jargon.search(line) is None, (name, status, line)
        assert len(set(lines.values())) == 3, (name, lines)  # each status its own words
    # The receipt's own numbers, in words (issue 14 item 18's examples).
    assert plain["signature"]["pass"] == (
        "The device's signature matches: device aq-0042 signed exactly these values."
    )
    assert plain["batch_path"]["pass"] == "This reading is in batch 42 (reading 5 of 5)."
    assert plain["checkpoint_signature"]["pass"].startswith(
        "Batch 42 is in the log the city signed (signed by explain.cityanchor.example/log)"
    )
    assert plain["anchors"]["pass"].startswith(
        "The log was written to the blockchain (chain 31337) at block 1234 on "
        "25 Nov 2026, 15:00:00 UTC"
    )


def test_the_verdict_says_whose_keys_were_used(tmp_path: Path) -> None:
    out = _run(tmp_path)
    server, accepted, own, own_but_rpc, failed, skipped = out["verdicts"]

    assert server["state"] == "server" and not server["untrusted"]
    assert not server["text"].startswith("Fully verified")
    assert "device key, operator key, chain endpoint of this server" in server["text"]
    assert [t["from"] for t in out["trust"][0]] == ["server", "server", "none", "server"]
    assert "not independent" in out["trust"][0][0]["text"]

    assert accepted["state"] == "pass" and accepted["text"].startswith("Fully verified")
    assert "you supplied or accepted" in accepted["text"]
    assert "accepted by you" in out["trust"][1][0]["text"]

    assert own["state"] == "pass" and own["text"].startswith("Fully verified")
    assert out["trust"][2][3]["text"] == "Chain endpoint: yours (https://my-node.example)."

    assert own_but_rpc["state"] == "server"
    assert "chain endpoint of this server" in own_but_rpc["text"]
    assert "device key" not in own_but_rpc["text"]

    assert failed["state"] == "fail" and failed["untrusted"]
    assert failed["text"] == (
        "Not valid: signature, leaf_hash failed. Do not trust the reading's values."
    )

    assert skipped["state"] == "skip" and not skipped["untrusted"]
    assert skipped["text"].startswith("Valid, not fully verified: anchors skipped.")
    assert "came from this server" in skipped["text"]
