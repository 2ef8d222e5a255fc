"""`make demo` in small: the live demo starts its own services, runs, checks itself, cleans up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anchor.cli import main
from anchor.cli.demo_live import LiveDemoConfig, run_live_demo
from anchor.cosignature import CosignerVerifier, verified_cosignatures


def test_live_demo_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo-output"
    code = run_live_demo(
        out,
        LiveDemoConfig(devices=24, rate=300, duration_s=3, seed=7, anchor_period_s=1),
        cli_main=main,
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    report = json.loads((out / "report.json").read_text())
    assert report["ok"] and report["stored"] == report["expected_good"] > 0
    assert report["quarantined"] == {k: v for k, v in report["injected_faults"].items() if v}
    receipts = list((out / "receipts").glob("*.json"))
    assert receipts and len(receipts) == report["receipts_written"]
    ids = {json.loads(p.read_text())["reading"]["device_id"] for p in receipts}
    assert ids <= {p.stem for p in (out / "devices").glob("*.jwk")}
    assert (out / "operator.vkey").is_file()
    assert "tampered copy" in printed and "exit 1" in printed
    assert report["anchors"], "the demo anchors on its private chain"
    assert "/explorer?device_id=" in report["explorer_url"] and "proof explorer" in printed
    doc = json.loads(receipts[0].read_text())
    assert doc["status"] == "anchored" and doc["anchors"][0]["chain_id"] == 31337
    # The demo's witness cosigned every receipt's checkpoint, and its key is left for verifiers.
    assert report["receipts_cosigned"] == report["receipts_written"]
    witness_vkey = (out / "witness.vkey").read_text().strip()
    assert verified_cosignatures(doc["checkpoint"], [CosignerVerifier.from_vkey(witness_vkey)])
