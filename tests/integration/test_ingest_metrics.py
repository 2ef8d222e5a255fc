"""`cityanchor ingest --metrics-listen`: the real ingestor process serves its counters.

Real Mosquitto, real PostgreSQL, the real `cityanchor ingest` subprocess (test_ingest.py's
harness): readings and faults published, then the scrape agrees with what the database stored.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import anchor
from anchor.local import MosquittoServer, PostgresServer, free_port
from integration.test_ingest import (
    Env,
    Ingestors,
    Publisher,
    _env,
    _fleet,
    _sign,
    _wait_counts,
    _wait_for,
)

Samples = dict[str, list[tuple[dict[str, str], float]]]


@pytest.fixture
def env(postgres: PostgresServer, mosquitto: MosquittoServer, tmp_path: Path) -> Env:
    return _env(postgres, mosquitto, tmp_path)


@pytest.fixture
def ingestors() -> Iterator[Ingestors]:
    ing = Ingestors()
    yield ing
    ing.stop_all()


def _scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_ingestor_serves_its_counters(env: Env, ingestors: Ingestors) -> None:
    fleet = _fleet(env, 3)
    port = free_port()
    proc = ingestors.start(env, "--metrics-listen", f"127.0.0.1:{port}")
    pub = Publisher(env.mqtt_url, f"pub-{env.group}")
    try:
        for n in range(30):
            pub.publish(fleet.topic(env, n % 3), _sign(fleet, n % 3, n))
        pub.publish(fleet.topic(env, 0), b"\x00garbage")
        pub.publish(f"city/{env.district}/{env.district}-stranger/readings", b"\x00x")
        pub.flush()
    finally:
        pub.close()
    counts = _wait_counts(env, 30, 2)
    quarantine = {k.split(".", 1)[1]: v for k, v in counts.items() if k.startswith("quarantine.")}

    last: Samples = {}

    def caught_up() -> bool:
        nonlocal last
        last = _scrape(port)
        return sum(v for _, v in last["cityanchor_ingest_quarantined_total"]) >= 2

    _wait_for(caught_up, 30, "the seal to be counted")  # counted just after its commit
    s = last
    readings = {lab["outcome"]: v for lab, v in s["cityanchor_ingest_readings_total"]}
    assert readings["accepted"] == counts["readings"] == 30
    quarantined = {lab["reason"]: v for lab, v in s["cityanchor_ingest_quarantined_total"]}
    assert quarantined == {reason: float(n) for reason, n in quarantine.items()}
    assert s["cityanchor_ingest_received_total"] == [({}, 32.0)]
    (sealed,) = s["cityanchor_ingest_batches_sealed_total"]
    assert 1 <= sealed[1] == counts["batches"]
    (seals,) = s["cityanchor_ingest_seal_latency_seconds_count"]
    assert seals[1] >= sealed[1]
    assert s["cityanchor_ingest_mqtt_connected"] == [({}, 1.0)]
    assert s["cityanchor_build_info"] == [({"version": anchor.__version__}, 1.0)]
    assert "process_resident_memory_bytes" in s
    # The compose healthcheck of the ingest services reads that gauge (docker/health.py).
    assert _health("ingest", str(port)) == (0, "healthy")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    code, said = _health("ingest", str(port))
    assert code == 1 and said.startswith(f"unhealthy: metrics endpoint on port {port}")


def _health(*args: str) -> tuple[int, str]:
    health = Path(__file__).resolve().parents[2] / "docker" / "health.py"
    result = subprocess.run(
        [sys.executable, str(health), *args], capture_output=True, text=True, check=False
    )
    return result.returncode, result.stdout.strip()
