"""``make fuzz``: run every fuzz target for many cases and print the count per target.

Usage: ``python tests/fuzz/run.py [--cases N] [--target NAME]... [--seed-random]``.
``--cases`` is the total over all targets (default 100,000, split evenly; a target that
exhausts its search space early leaves its share to the targets after it). Exits 1 on the first
failing case (hypothesis prints the shrunk input), 0 otherwise; the last line is one JSON
object with the counts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from fuzz.targets import TARGETS, Stats, run_target

CASE_LIMIT_S = 1.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=100_000, help="total cases (all targets)")
    parser.add_argument("--target", action="append", help="only these targets (repeatable)")
    parser.add_argument(
        "--seed-random", action="store_true", help="random mutations (default: derandomized)"
    )
    args = parser.parse_args(argv)
    targets = [t for t in TARGETS if not args.target or t.name in args.target]
    if not targets:
        parser.error(f"no such target; known: {', '.join(t.name for t in TARGETS)}")
    summary: dict[str, object] = {}
    total = 0
    failed = False
    for done, target in enumerate(targets):
        # A target whose search space is small (jws_segments) ends early: the later targets
        # take over its share, so the run makes --cases in all.
        per_target = max(1, (args.cases - total) // (len(targets) - done))
        stats = Stats()
        start = time.perf_counter()
        try:
            run_target(
                target,
                examples=per_target,
                derandomize=not args.seed_random,
                case_limit_s=CASE_LIMIT_S,
                stats=stats,
            )
            status = "ok"
        except Exception as exc:  # FuzzFailure, or hypothesis' Flaky* groups around one
            status = f"FAIL: {type(exc).__name__}: {exc}"
            failed = True
        took = time.perf_counter() - start
        total += stats.cases
        top = sorted(stats.reasons.items(), key=lambda kv: -kv[1])[:6]
        print(
            f"{target.name:22s} {stats.cases:7d} cases  {took:6.1f} s  "
            f"slowest {stats.slowest_s * 1000:6.1f} ms  accepted-unchanged "
            f"{stats.accepted_same:5d}  {status}\n{'':22s} top reasons: "
            + ", ".join(f"{r} {n}" for r, n in top),
            flush=True,
        )
        summary[target.name] = {
            "cases": stats.cases,
            "slowest_ms": round(stats.slowest_s * 1000, 2),
            "reasons": stats.reasons,
            "ok": status == "ok",
        }
    print(json.dumps({"fuzz": "all", "cases": total, "targets": summary}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
