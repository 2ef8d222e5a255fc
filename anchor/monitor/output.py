"""Where the monitor's findings go: evidence files beside the state file, the webhook, and the
Prometheus metrics."""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from anchor.host.files import write_file_atomic
from anchor.log_view import Evidence

__all__ = ["MonitorMetrics", "post_webhook", "write_evidence"]

log = logging.getLogger("anchor.monitor")


def write_evidence(
    evidence: Evidence, *, state_path: Path, log_vkey: str, now: datetime | None = None
) -> tuple[dict[str, Any], Path]:
    """Write ``evidence-<time>.json`` beside the state file, and beside it a directory of the
    same name holding the notes, the proof, the log key (and the receipt) as plain files, so
    the ``how_to_check`` command runs on them as printed. Returns the document and its path."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S.%fZ")
    base = state_path.parent / f"evidence-{stamp}"
    files: dict[str, str] = {"log_key": str(base / "log.vkey")}
    write_file_atomic(base / "log.vkey", (log_vkey + "\n").encode(), mode=0o644)
    if evidence.old is not None:
        files["old"] = str(base / "old.note")
        write_file_atomic(files["old"], evidence.old.note.encode(), mode=0o644)
    if evidence.new is not None:
        files["new"] = str(base / "new.note")
        write_file_atomic(files["new"], evidence.new.note.encode(), mode=0o644)
    if evidence.old is not None and evidence.new is not None:
        files["proof"] = str(base / "proof.json")
        proof = json.dumps([h.hex() for h in evidence.proof]) + "\n"
        write_file_atomic(files["proof"], proof.encode(), mode=0o644)
    if evidence.receipt is not None and "document" in evidence.receipt:
        files["receipt"] = str(base / "receipt.json")
        doc = json.dumps(evidence.receipt["document"], indent=1) + "\n"
        write_file_atomic(files["receipt"], doc.encode(), mode=0o644)
    document = evidence.to_dict(files=files)
    document["log_key"] = log_vkey
    document["seen_at"] = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    path = Path(str(base) + ".json")
    write_file_atomic(path, (json.dumps(document, indent=1) + "\n").encode(), mode=0o644)
    document["file"] = str(path)
    return document, path


def post_webhook(
    url: str, document: dict[str, Any], *, attempts: int = 3, timeout_s: float = 5.0
) -> bool:
    """POST ``document`` as JSON to ``url``; a few tries with a short pause. Never raises:
    the evidence is already on disk and on stdout, the webhook is a courtesy."""
    body = json.dumps(document).encode("utf-8")
    for attempt in range(1, attempts + 1):
        request = urllib.request.Request(
            url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as resp:
                if 200 <= resp.status < 300:
                    return True
                log.warning("webhook answered HTTP %s (attempt %d)", resp.status, attempt)
        except (OSError, ValueError) as exc:
            log.warning("webhook POST failed (attempt %d/%d): %s", attempt, attempts, exc)
        if attempt < attempts:
            time.sleep(min(2.0, 0.5 * attempt))
    return False


class MonitorMetrics:
    """The monitor's Prometheus metrics on a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.size = Gauge(
            "cityanchor_monitor_log_size",
            "Largest log size the monitor has verified.",
            registry=self.registry,
        )
        self.last_check = Gauge(
            "cityanchor_monitor_last_check_timestamp_seconds",
            "Unix time of the last completed round.",
            registry=self.registry,
        )
        self.rounds = Counter(
            "cityanchor_monitor_rounds",
            "Rounds run, by outcome (ok, alarm, error).",
            ["outcome"],
            registry=self.registry,
        )
        self.alarms = Counter(
            "cityanchor_monitor_alarms",
            "Inconsistencies found, by evidence kind.",
            ["kind"],
            registry=self.registry,
        )
        self.quorum_missing = Gauge(
            "cityanchor_monitor_witness_quorum_missing",
            "1 when the latest checkpoint lacks the witness quorum, else 0.",
            registry=self.registry,
        )
        self.witness_bad = Counter(
            "cityanchor_monitor_witness_cosignature_invalid",
            "Checkpoints carrying a bad cosignature from a trusted witness.",
            registry=self.registry,
        )
        self.anchors = Counter(
            "cityanchor_monitor_anchors_checked",
            "Operator Anchored events checked against the signed checkpoints.",
            registry=self.registry,
        )
        self.receipts = Counter(
            "cityanchor_monitor_receipts_checked",
            "Sampled receipts verified.",
            registry=self.registry,
        )

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)
