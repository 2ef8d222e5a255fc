"""The fault campaign of issue 11 in its quick mode (``bench/faults.py --quick``), as part of
``make test``: ``cityanchor up`` under load from devices on the project's SDK publisher, each
fault once (kill -9 of the ingestor, PostgreSQL, Mosquitto, the anchoring job with a transaction
in flight, the whole ``up`` group; a graceful restart of ``up``; the chain stopped; a reorg).

Two tests share one run (about 2-4 minutes on 2 cores):

* the harness measured every fault honestly, and no delivered reading was stored twice or with
  other bytes than the device published (this holds today);
* nothing the device was told is delivered is lost, and every receipt verifies, on chain
  included (it failed on the main before the issue 11 fixes: the restart of ``up`` and the kill -9
  of its group lost readings the broker PUBACKed, 0x10 "no matching subscribers", an orphan broker).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
FAULTS = (
    "none",
    "kill9-ingest",
    "kill9-postgres",
    "kill9-mosquitto",
    "kill9-anchor-inflight",
    "sigstop-chain",
    "reorg",
    "restart-up",
    "kill9-up-group",
)


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("faults") / "result.json"
    log = out.with_suffix(".log")
    # PYTHONPATH: this checkout's code, in the bench and in every process `up` starts.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("wb") as f:
        proc = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "faults.py"), "--quick", "--device", "sdk",
             "--json-out", str(out)],
            cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=900, check=False,
        )  # fmt: skip
    text = log.read_text(errors="replace")
    assert proc.returncode == 0, text[-5000:]
    result: dict[str, Any] = json.loads(out.read_text())
    # The bench's contract: its last line is the same JSON object.
    assert json.loads(text.strip().splitlines()[-1]) == result
    return result


def _rows(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["fault"]: r for r in result["rows"]}


def test_quick_campaign_measures_every_fault(campaign: dict[str, Any]) -> None:
    rows = _rows(campaign)
    assert list(rows) == list(FAULTS)
    assert campaign["device"] == "sdk"
    for fault, row in rows.items():
        # Load ran through every fault and the devices saw deliveries in every row.
        assert row["published"] > 0 and row["acked"] > 0, (fault, row)
        # Receipts were fetched and verified in every row (a sample at least).
        assert row["receipts_checked"] > 0, (fault, row)
        # Each fault was really injected (the harness found its process, its transaction).
        assert not any("not found" in n or "no anchoring transaction" in n for n in row["notes"]), (
            fault,
            row["notes"],
        )
    # The steady-state row is the yardstick: sealed within seconds, nothing lost.
    assert rows["none"]["lost"] == 0
    assert rows["none"]["first_seal_s"] is not None and rows["none"]["first_seal_s"] < 10
    assert rows["none"]["verified"] == rows["none"]["receipts_checked"]
    # What already holds on main (the issue saw it too): no reading stored twice, none altered.
    for fault, row in rows.items():
        assert row["duplicated"] == 0, (fault, row)
        assert row["corrupted"] == 0, (fault, row)


def test_quick_campaign_loses_nothing_acknowledged(campaign: dict[str, Any]) -> None:
    # THE TARGET OF ISSUE 11: 0 lost, 0 duplicated, 0 corrupted, every checked receipt verified
    # (on chain included) in every row, and still verifying at the end of the campaign.
    bad = {
        fault: {k: row[k] for k in ("lost", "duplicated", "corrupted", "verify_failed", "notes")}
        for fault, row in _rows(campaign).items()
        if row["lost"] or row["duplicated"] or row["corrupted"] or row["verify_failed"]
        or row["verified"] < row["receipts_checked"]
        or row["valid_at_end"].split("/")[0] != row["valid_at_end"].split("/")[1]
    }  # fmt: skip
    assert not bad, json.dumps(bad, indent=1)
