"""The explorer's witnesses check (verify.js, run by Node's WebCrypto) agrees with anchor/verify.py
on cosigned checkpoints: quorums met and missed, duplicate and unknown witnesses, tampered lines."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from anchor.checkpoint import Checkpoint, generate_note_key, sign_checkpoint
from anchor.cosignature import CosignerVerifier, add_cosignatures, generate_cosigner_key
from anchor.verify import check_witnesses

ROOT = Path(__file__).resolve().parents[2]
W = [generate_cosigner_key(f"w{i}.witness.example") for i in range(3)]
OPERATOR = generate_note_key("js.cityanchor.example/log")


def _tamper(note: str) -> str:
    head, _, last = note.rstrip("\n").rpartition("\n")
    name, _, b64 = last.rpartition(" ")
    raw = bytearray(base64.b64decode(b64))
    raw[-1] ^= 1
    return f"{head}\n{name} {base64.b64encode(bytes(raw)).decode()}\n"


def _cases() -> list[dict[str, object]]:
    note = sign_checkpoint(Checkpoint("js.cityanchor.example/log", 7, bytes(range(32))), OPERATOR)
    text = note.split("\n\n", 1)[0] + "\n"
    two = add_cosignatures(
        note, [W[0].cosign(text, 1_764_000_000), W[1].cosign(text, 1_764_000_005)]
    )
    again = add_cosignatures(two, [W[0].cosign(text, 1_764_000_100)])
    keys = [w.verifier.vkey() for w in W]
    return [
        {"note": two, "vkeys": keys[:2], "quorum": 2},
        {"note": two, "vkeys": keys[:2], "quorum": 3},
        {"note": two, "vkeys": keys, "quorum": 3},
        {"note": two, "vkeys": [keys[2]], "quorum": 1},
        {"note": again, "vkeys": [keys[0], keys[2]], "quorum": 2},
        {"note": again, "vkeys": [keys[0]], "quorum": 1},
        {"note": _tamper(two), "vkeys": keys[:2], "quorum": 1},
        {"note": _tamper(two), "vkeys": keys[:1], "quorum": 1},
        {"note": note, "vkeys": keys[:1], "quorum": 1},
        {"note": two, "vkeys": [], "quorum": 1},
    ]


def test_verify_js_witnesses_check_agrees_with_python(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH")
    cases = _cases()
    path = tmp_path / "cases.json"
    path.write_text(json.dumps(cases))
    result = subprocess.run(
        [
            node,
            "--disable-warning=MODULE_TYPELESS_PACKAGE_JSON",
            str(ROOT / "tests" / "browser" / "witness-check.mjs"),
            str(path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    js = json.loads(result.stdout.strip().splitlines()[-1])
    py = []
    for case in cases:
        keys = [CosignerVerifier.from_vkey(k) for k in case["vkeys"]]  # type: ignore[attr-defined]
        check, _ = check_witnesses(case["note"], keys, case["quorum"])  # type: ignore[arg-type]
        py.append({"status": check.status, "reason": check.reason, "detail": check.detail})
    assert [(c["status"], c["reason"]) for c in js] == [(c["status"], c["reason"]) for c in py]
    assert [c["status"] for c in py] == [
        "pass", "fail", "fail", "fail", "fail", "pass", "fail", "pass", "fail", "skip",
    ]  # fmt: skip
    # Both name the cosigners the same way (name+keyid at UTC time).
    assert js[0]["detail"] == py[0]["detail"]
