"""The `cityanchor` command and the offline demo, through the stable interfaces of DESIGN.md."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from anchor.cli.commands import main

ROOT = Path(__file__).resolve().parents[2]
CITYANCHOR = str(Path(sys.executable).parent / "cityanchor")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    assert (
        main(["demo", "--offline", "--out", str(out), "--readings", "90", "--batch-size", "16"])
        == 0
    )
    return out


def _b64url(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def test_demo_leaves_the_documented_layout(demo: Path) -> None:
    receipts = sorted((demo / "receipts").glob("*.json"))
    assert len(receipts) == 90
    device_ids = {json.loads(p.read_text())["reading"]["device_id"] for p in receipts}
    assert {p.stem for p in (demo / "devices").glob("*.jwk")} == device_ids
    from anchor.checkpoint import NoteVerifier

    vkey = NoteVerifier.from_vkey((demo / "operator.vkey").read_text().strip())
    assert vkey.name == "demo.cityanchor.example/log"
    skey = demo / "operator.skey"
    assert stat.S_IMODE(skey.stat().st_mode) == 0o600


def test_demo_receipts_match_schema_and_independent_hashing(demo: Path) -> None:
    schema = json.loads((ROOT / "docs" / "receipt-v2.schema.json").read_text())
    for path in sorted((demo / "receipts").glob("*.json")):
        doc = json.loads(path.read_text())
        jsonschema.validate(doc, schema)
        # Recompute with hashlib only, straight from the DESIGN.md rules.
        envelope = _b64url(doc["reading"]["envelope"])
        assert hashlib.sha256(b"\x00" + envelope).hexdigest() == doc["leaf_hash"]
        node, index, size = (
            bytes.fromhex(doc["leaf_hash"]),
            doc["batch"]["index"],
            doc["batch"]["size"],
        )
        fn, sn = index, size - 1
        for sibling_hex in doc["batch"]["path"]:
            sibling = bytes.fromhex(sibling_hex)
            if fn % 2 == 1 or fn == sn:
                node = hashlib.sha256(b"\x01" + sibling + node).digest()
                while fn % 2 == 0 and fn != 0:
                    fn, sn = fn // 2, sn // 2
            else:
                node = hashlib.sha256(b"\x01" + node + sibling).digest()
            fn, sn = fn // 2, sn // 2
        assert sn == 0 and node.hex() == doc["batch"]["root"]


def test_verify_cli_exit_codes(demo: Path) -> None:
    receipts = sorted(str(p) for p in (demo / "receipts").glob("*.json"))
    keys = sorted(str(p) for p in (demo / "devices").glob("*.jwk"))
    vkey = str(demo / "operator.vkey")
    # A quoted glob, expanded by cityanchor; the key flags may come before the receipts.
    ok = subprocess.run(
        [
            CITYANCHOR,
            "verify",
            "--device-key",
            str(demo / "devices" / "*.jwk"),
            "--log-key",
            vkey,
            *receipts[:5],
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "5 of 5 receipts valid" in ok.stdout
    assert ok.stdout.count("PASS signature") == 5

    tampered = sorted(str(p) for p in (demo / "tampered").glob("*.json"))
    assert len(tampered) == 1
    bad = subprocess.run(
        [
            CITYANCHOR,
            "verify",
            receipts[0],
            *tampered,
            *(a for k in keys for a in ("--device-key", k)),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 1
    results = json.loads(bad.stdout)
    assert [r["valid"] for r in results] == [True, False]
    failed = {c["name"]: c["reason"] for c in results[1]["checks"] if c["status"] == "fail"}
    assert failed["signature"] == "bad_signature"
    assert failed["leaf_hash"] == "leaf_mismatch"

    usage = subprocess.run([CITYANCHOR, "verify"], capture_output=True, text=True, check=False)
    assert usage.returncode == 2
    missing = subprocess.run(
        [CITYANCHOR, "verify", str(demo / "nope.json")], capture_output=True, text=True, check=False
    )
    assert missing.returncode == 2 and "cannot read receipt" in missing.stderr
    key_first = subprocess.run(
        [CITYANCHOR, "verify", receipts[0], "--device-key", receipts[1]],
        capture_output=True,
        text=True,
        check=False,
    )
    assert key_first.returncode == 2 and "is a receipt, not a key" in key_first.stderr
    # An unquoted glob after a key flag (the shell expands it): every key file is a key, by its
    # content, wherever it landed, so `verify R --device-key devices/*.jwk` works as it always did.
    unquoted = subprocess.run(
        [CITYANCHOR, "verify", receipts[0], "--device-key", *keys, "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert unquoted.returncode == 0, (unquoted.stdout, unquoted.stderr)
    report = json.loads(unquoted.stdout)
    assert [r["file"] for r in report] == [receipts[0]]
    assert {c["name"]: c["status"] for c in report[0]["checks"]}["signature"] == "pass"


def test_verify_help_names_the_stable_flags() -> None:
    out = subprocess.run(
        [CITYANCHOR, "verify", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in ("--device-key", "--log-key", "--rpc", "--json"):
        assert flag in out


def test_keygen_sign_verify_envelope_round_trip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from anchor.envelope import parse_envelope, verify_envelope
    from anchor.keys import PublicKey

    assert (
        main(["keygen", "--device-id", "wm-0001", "--type", "P-256", "--out", str(tmp_path)]) == 0
    )
    pems = [p for p in tmp_path.iterdir() if p.suffix == ".pem" and "pub" not in p.name]
    assert pems and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in pems)
    jwk = json.loads((tmp_path / "wm-0001.jwk").read_text())
    state = tmp_path / "state.json"
    for n in (1, 2):
        out = tmp_path / f"r{n}.cbor"
        assert (
            main(
                [
                    "sign",
                    "--key",
                    str(pems[0]),
                    "--device-id",
                    "wm-0001",
                    "--kind",
                    "iot.water_level",
                    "--values",
                    '{"level_m": 1.25}',
                    "--state",
                    str(state),
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        env = verify_envelope(parse_envelope(out.read_bytes()), PublicKey.from_jwk(jwk))
        assert env.reading.seq == n
    assert (
        main(
            [
                "sign",
                "--key",
                str(pems[0]),
                "--device-id",
                "wm-0001",
                "--kind",
                "k",
                "--values",
                "[1]",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert main(["keygen", "--operator", "--name", "city.example/log", "--out", str(tmp_path)]) == 0
    assert stat.S_IMODE((tmp_path / "operator.skey").stat().st_mode) == 0o600
    assert (tmp_path / "operator.vkey").read_text().startswith("city.example/log+")
    capsys.readouterr()


def test_chainpoint_export_validates_with_merkletools(demo: Path, tmp_path: Path) -> None:
    import merkletools

    batches = sorted(str(p) for p in (demo / "batches").glob("*.json"))
    assert main(["export", "--chainpoint", *batches, "--out", str(tmp_path)]) == 0
    mt = merkletools.MerkleTools()
    total = 0
    for f in tmp_path.glob("*.chainpoint.json"):
        for doc in json.loads(f.read_text()):
            assert mt.validate_proof(doc["proof"], doc["targetHash"], doc["merkleRoot"])
            total += 1
    assert total == 90


def test_demo_is_rerunnable_in_place(demo: Path) -> None:
    # `make demo` twice in a row must not fail or mix old and new receipts.
    before = os.listdir(demo / "receipts")
    assert (
        main(["demo", "--offline", "--out", str(demo), "--readings", "90", "--batch-size", "16"])
        == 0
    )
    assert sorted(os.listdir(demo / "receipts")) == sorted(before)


def test_keygen_operator_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 10 item 13: a second `keygen --operator` silently replaced the signing key."""
    args = ["keygen", "--operator", "--name", "city.example/log", "--out", str(tmp_path)]
    assert main(args) == 0
    skey, vkey = (
        (tmp_path / "operator.skey").read_bytes(),
        (tmp_path / "operator.vkey").read_bytes(),
    )
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err
    # Nothing of the first key was touched.
    assert (tmp_path / "operator.skey").read_bytes() == skey
    assert (tmp_path / "operator.vkey").read_bytes() == vkey
    assert sorted(p.name for p in tmp_path.iterdir()) == ["operator.skey", "operator.vkey"]
    # --force replaces it deliberately (still 0600).
    assert main([*args, "--force"]) == 0
    assert (tmp_path / "operator.skey").read_bytes() != skey
    assert (tmp_path / "operator.vkey").read_bytes() != vkey
    assert stat.S_IMODE((tmp_path / "operator.skey").stat().st_mode) == 0o600
    capsys.readouterr()
