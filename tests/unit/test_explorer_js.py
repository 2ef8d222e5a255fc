"""The proof explorer's in-browser verifier (anchor/explorer/static/verify.js), run by Node's
WebCrypto against the project's vectors: RFC 9162 inclusion proofs, the envelope vectors
(valid ones parse, hash and verify; each invalid one fails with the core's reason code) and the
batch-log leaf known answers of receipt v2."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_verify_js_agrees_with_the_vectors() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH")
    result = subprocess.run(
        [
            node,
            "--disable-warning=MODULE_TYPELESS_PACKAGE_JSON",
            str(ROOT / "tests" / "browser" / "verify-vectors.mjs"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    assert lines, result.stderr
    out = json.loads(lines[-1])
    assert out["mismatches"] == [], out["mismatches"]
    assert result.returncode == 0, result.stderr
    assert out["counts"]["inclusion"] >= 90 and out["counts"]["invalid_envelopes"] >= 100
    assert out["counts"]["log_leaves"] == 9  # tests/vectors/log-leaf/known.json (receipt v2)
