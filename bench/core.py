"""Core benchmark: the pure, CPU-bound parts of cityanchor, each against a baseline.

    python bench/core.py [--quick] [--repeat K]

Prints a table, then (last line) one JSON object: ``{"bench": "core", ...}``.

Sections (each a function ``BenchConfig -> dict`` in :data:`SECTIONS`, merged in order):

* ``merkle_section``: RFC 9162 root of N leaf hashes (quick 200k, full 1M) against raw
  ``hashlib.sha256(..).digest()`` over N - 1 65-byte inputs, the same hashing work the tree
  does (one ``0x01 || left || right`` per interior node) with none of its bookkeeping.
  ``tree_ratio = baseline_time / tree_time`` (1.0 = no overhead; we aim for >= 0.5). Also all
  N inclusion proofs at once, and ``verify_inclusion`` calls per second.

Adding a section (envelope verification -> ``verify_ratio``, receipts, ...): write
``def envelope_section(cfg: BenchConfig) -> dict[str, Any]`` measuring both the thing and its
baseline in the same run, return figures with unique names (including the ratio), and append
it to :data:`SECTIONS`. Use ``cfg.quick`` to pick sizes and ``best_of(fn, cfg.repeat)``.
"""

from __future__ import annotations

import hashlib
import itertools
import sys
from typing import Any

from _common import BenchConfig, Section, best_of, run_sections

from anchor import merkle

MERKLE_LEAVES = {True: 200_000, False: 1_000_000}
VERIFY_CALLS = {True: 20_000, False: 100_000}


def _leaf_hashes(n: int) -> list[bytes]:
    # Distinct, realistic leaf hashes; how they are made is not timed.
    return [merkle.leaf_hash(i.to_bytes(8, "big")) for i in range(n)]


def _raw_sha256_loop(count: int) -> None:
    # The baseline: only the hashing a tree of count + 1 leaves must do, 65 bytes per node.
    data = b"\x01" + bytes(range(64))
    sha256 = hashlib.sha256
    for d in itertools.repeat(data, count):
        sha256(d).digest()


def merkle_section(cfg: BenchConfig) -> dict[str, Any]:
    n = MERKLE_LEAVES[cfg.quick]
    leaves = _leaf_hashes(n)

    tree_s = best_of(lambda: merkle.root(leaves), cfg.repeat)
    baseline_s = best_of(lambda: _raw_sha256_loop(n - 1), cfg.repeat)

    proofs_s = best_of(lambda: merkle.inclusion_proofs(leaves), cfg.repeat)

    r = merkle.root(leaves)
    calls = VERIFY_CALLS[cfg.quick]
    step = max(1, n // calls)
    sample = [(i, leaves[i], merkle.inclusion_proof(leaves, i)) for i in range(0, n, step)][:calls]
    verify = merkle.verify_inclusion

    def verify_all() -> None:
        for i, leaf, proof in sample:
            verify(leaf, i, n, proof, r)

    verify_s = best_of(verify_all, cfg.repeat)

    return {
        "merkle_leaves": n,
        "tree_s": tree_s,
        "tree_per_s": n / tree_s,
        "baseline_hash_s": baseline_s,
        "baseline_hash_per_s": (n - 1) / baseline_s,
        "tree_ratio": baseline_s / tree_s,
        "proofs_all_s": proofs_s,
        "proofs_per_s": n / proofs_s,
        "verify_inclusion_calls": len(sample),
        "verify_inclusion_per_s": len(sample) / verify_s,
    }


# The lead's envelope section (figures verify_per_s, verify_baseline_per_s, verify_ratio) and
# receipt section go here, after merkle_section.
SECTIONS: list[Section] = [merkle_section]


def main(argv: list[str] | None = None) -> int:
    run_sections("core", SECTIONS, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
