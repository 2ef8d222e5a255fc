"""Benchmark: a real ``cityanchor witness serve`` cosigning a growing log, against its pure rules.

    python bench/witness.py [--quick] [--repeat K]

* ``served_section``: N sequential ``POST /add-checkpoint`` requests (each the next checkpoint
  of a growing log, with its RFC 9162 consistency proof from the previous size) to a real
  ``cityanchor witness serve`` subprocess on a loopback port, over one keep-alive connection
  (http.client, as a log would). Each request is checked, committed to SQLite (synchronous=FULL,
  one fsync per request) and only then cosigned. Figures: requests/s, p50 and p99 latency.
* Baseline (same run): the pure part of the same N requests in this process, no HTTP, no
  SQLite: parse the body, ``decide_add_checkpoint`` (log signature, consistency proof) and the
  Ed25519 cosignature. ``ratio`` = served rate / pure rate, i.e. what HTTP plus the durable
  state costs.

A log asks each witness once per seal (or per anchoring period), so a witness serving a few
hundred requests a second follows hundreds of busy logs.
"""

from __future__ import annotations

import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import BenchConfig, Figures, run_sections

from anchor import merkle
from anchor.checkpoint import (
    Checkpoint,
    NoteVerifier,
    generate_note_key,
    sign_checkpoint,
)
from anchor.cosignature import generate_cosigner_key
from anchor.local import free_port
from anchor.witness_protocol import (
    Accepted,
    WitnessedCheckpoint,
    decide_add_checkpoint,
    format_add_checkpoint,
    parse_add_checkpoint,
)

ORIGIN = "bench.cityanchor.example/log"
REQUESTS = {True: 300, False: 3000}


def _requests(n: int) -> tuple[list[bytes], str, NoteVerifier]:
    """Bodies for checkpoints 1..n of one log, each from the previous size, and the log key."""
    signer = generate_note_key(ORIGIN)
    leaves = [merkle.leaf_hash(os.urandom(40)) for _ in range(n)]
    bodies = []
    for size in range(1, n + 1):
        note = sign_checkpoint(Checkpoint(ORIGIN, size, merkle.root(leaves[:size])), signer)
        proof = merkle.consistency_proof(leaves[:size], size - 1) if size > 1 else []
        bodies.append(format_add_checkpoint(size - 1, proof, note))
    return bodies, signer.verifier.vkey(), signer.verifier


def served_section(cfg: BenchConfig) -> Figures:
    n = REQUESTS[cfg.quick]
    bodies, vkey, verifier = _requests(n)
    witness = generate_cosigner_key("bench.witness.example/w1")

    # Baseline: the pure rules and the signature, in process.
    def pure() -> None:
        state: dict[str, WitnessedCheckpoint] = {}
        for body in bodies:
            verdict = decide_add_checkpoint(
                parse_add_checkpoint(body), {ORIGIN: [verifier]}, state.get
            )
            if not isinstance(verdict, Accepted):
                raise RuntimeError(f"the pure rules refused a request: {verdict}")
            witness.cosign(verdict.note_text, 1_700_000_000)
            cp = verdict.checkpoint
            state[ORIGIN] = WitnessedCheckpoint(ORIGIN, cp.size, cp.root, "")

    started = time.perf_counter()
    pure()
    pure_s = time.perf_counter() - started

    with tempfile.TemporaryDirectory(prefix="bench-witness-") as tmp:
        d = Path(tmp)
        (d / "w.skey").write_text(witness.skey() + "\n")
        (d / "log.vkey").write_text(vkey + "\n")
        port = free_port()
        argv = [
            sys.executable, "-m", "anchor", "witness", "serve", "--key", str(d / "w.skey"),
            "--log-key", str(d / "log.vkey"), "--state", str(d / "state.db"),
            "--listen", f"127.0.0.1:{port}",
        ]  # fmt: skip
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().decode()
            if not line.startswith("listening on"):
                raise RuntimeError(f"witness did not start: {line!r}")
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            latencies = []
            started = time.perf_counter()
            for body in bodies:
                t0 = time.perf_counter()
                conn.request("POST", "/add-checkpoint", body=body)
                response = conn.getresponse()
                answer = response.read()
                latencies.append(time.perf_counter() - t0)
                if response.status != 200:
                    raise RuntimeError(f"witness answered {response.status}: {answer!r}")
            served_s = time.perf_counter() - started
            conn.close()
        finally:
            proc.terminate()
            proc.wait(15)

    latencies.sort()
    served_rate = n / served_s
    pure_rate = n / pure_s
    return {
        "requests": n,
        "per_s": round(served_rate, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": round(latencies[int(0.99 * (n - 1))] * 1000, 3),
        "baseline": "pure rules + cosignature in process (no HTTP, no SQLite)",
        "baseline_per_s": round(pure_rate, 1),
        "ratio": round(served_rate / pure_rate, 3),
    }


def main(argv: list[str] | None = None) -> int:
    run_sections("witness", [served_section], argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
