"""Core benchmark: the pure, CPU-bound parts of cityanchor, each against a baseline.

    python bench/core.py [--quick] [--repeat K]

Prints a table, then (last line) one JSON object: ``{"bench": "core", ...}``.

Sections (each a function ``BenchConfig -> dict`` in :data:`SECTIONS`, merged in order):

* ``merkle_section``: RFC 9162 root of N leaf hashes (quick 200k, full 1M) against raw
  ``hashlib.sha256(..).digest()`` over N - 1 65-byte inputs, the same hashing work the tree
  does (one ``0x01 || left || right`` per interior node) with none of its bookkeeping.
  ``tree_ratio = baseline_time / tree_time`` (1.0 = no overhead; we aim for >= 0.5). Also all
  N inclusion proofs at once, and ``verify_inclusion`` calls per second.
* ``envelope_section``: parse + verify of N signed envelopes (quick 2k, full 10k) against raw
  ``cryptography`` verification of the same signatures with keys and messages ready
  (``verify_ratio``), and verify-only of parsed envelopes (``verify_only_ratio``). The three are
  timed in CPU time of this process and in turns (``best_of_interleaved``), so that other work
  on a shared machine does not land on one side of a ratio only.

Adding a section (envelope verification -> ``verify_ratio``, receipts, ...): write
``def envelope_section(cfg: BenchConfig) -> dict[str, Any]`` measuring both the thing and its
baseline in the same run, return figures with unique names (including the ratio), and append
it to :data:`SECTIONS`. Use ``cfg.quick`` to pick sizes and ``best_of(fn, cfg.repeat)``.
"""

from __future__ import annotations

import hashlib
import itertools
import sys
import time
from typing import Any

from _common import BenchConfig, Section, best_of, best_of_interleaved, run_sections

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
    # inclusion_proof builds the whole tree per call; take the sample from one batch build.
    proofs = merkle.inclusion_proofs(leaves)
    sample = [(i, leaves[i], proofs[i]) for i in range(0, n, step)][:calls]
    del proofs
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
ENVELOPES = {True: 2_000, False: 10_000}


def _signed_envelopes(n: int) -> tuple[list[bytes], list[Any]]:
    """n envelopes (half COSE Ed25519, a quarter COSE ES256, a quarter JWS Ed25519) and keys."""
    from anchor.envelope import FORMAT_COSE, FORMAT_JWS, Reading, sign_reading
    from anchor.keys import PrivateKey

    keys = [PrivateKey.generate("Ed25519"), PrivateKey.generate("P-256")]
    out = []
    for i in range(n):
        key = keys[1] if i % 4 == 1 else keys[0]
        fmt = FORMAT_JWS if i % 4 == 3 else FORMAT_COSE
        reading = Reading(
            "aq-bench-0001",
            i + 1,
            1_764_000_000_000 + i,
            "iot.air_quality",
            {"pm2_5": 12.5, "pm10": 20.25, "no2": 31.0, "o3": 44.5},
            bytes(32) if i == 0 else hashlib.sha256(bytes([i % 256])).digest(),
        )
        out.append(sign_reading(reading, key, format=fmt))
    return out, keys


def envelope_section(cfg: BenchConfig) -> dict[str, Any]:
    """Envelope parse + verify vs raw ``cryptography`` verify of the same signatures."""
    from anchor.envelope import parse_envelope, verify_envelope

    raws, keys = _signed_envelopes(ENVELOPES[cfg.quick])
    by_kid = {k.public_key.kid: k.public_key for k in keys}
    parsed = [parse_envelope(r) for r in raws]
    # The baseline gets everything pre-parsed and the library key objects ready-made: only the
    # signature arithmetic that any verifier must do.
    crypto_keys = {kid: pk._key for kid, pk in by_kid.items()}
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, utils

    baseline_jobs = []
    for e in parsed:
        ck = crypto_keys[e.kid]
        if isinstance(ck, ec.EllipticCurvePublicKey):
            der = utils.encode_dss_signature(
                int.from_bytes(e.signature[:32], "big"), int.from_bytes(e.signature[32:], "big")
            )
            baseline_jobs.append((ck, der, e.signed_bytes, True))
        else:
            baseline_jobs.append((ck, e.signature, e.signed_bytes, False))

    def baseline() -> None:
        sig_alg = ec.ECDSA(hashes.SHA256())
        for ck, sig, msg, is_ec in baseline_jobs:
            if is_ec:
                ck.verify(sig, msg, sig_alg)
            else:
                ck.verify(sig, msg)

    def ours() -> None:
        for raw in raws:
            e = parse_envelope(raw)
            verify_envelope(e, by_kid[e.kid])

    def ours_verify_only() -> None:
        for e in parsed:
            verify_envelope(e, by_kid[e.kid])

    n = len(raws)
    # CPU time of this process, taken in turn: all three are single-threaded and CPU-bound, and
    # on a shared machine wall-clock time would also count the time other work held the core.
    base_s, ours_s, verify_only_s = best_of_interleaved(
        [baseline, ours, ours_verify_only], cfg.repeat, clock=time.process_time
    )
    return {
        "envelopes": n,
        "envelope_parse_verify_per_s": n / ours_s,
        "envelope_verify_only_per_s": n / verify_only_s,
        "baseline_crypto_verify_per_s": n / base_s,
        "verify_ratio": base_s / ours_s,
        "verify_only_ratio": base_s / verify_only_s,
    }


def receipt_section(cfg: BenchConfig) -> dict[str, Any]:
    """Full offline receipt verification (JSON parse, signature, both paths, checkpoint)."""
    from anchor.checkpoint import generate_note_key
    from anchor.envelope import parse_envelope
    from anchor.receipt import dumps_receipt, loads_receipt
    from anchor.sealing import BatchLog, seal_batch
    from anchor.verify import verify_receipt

    raws, keys = _signed_envelopes(1000 if cfg.quick else 4000)
    operator = generate_note_key("bench.cityanchor.example/log")
    log = BatchLog(
        "bench.cityanchor.example/log",
        [(1 + i % 50, merkle.leaf_hash(i.to_bytes(4, "big"))) for i in range(999)],
    )
    batch = seal_batch(1, [parse_envelope(r) for r in raws])
    index = log.append(batch.size, batch.root)
    texts = [
        dumps_receipt(r) for r in log.receipts(batch, index, log.checkpoint(operator), log.size)
    ]
    pubs = [k.public_key for k in keys]

    def verify_all() -> None:
        for t in texts:
            report = verify_receipt(
                loads_receipt(t), device_keys=pubs, log_verifiers=[operator.verifier]
            )
            if not report.valid:
                raise AssertionError(report)

    s = best_of(verify_all, cfg.repeat)
    return {"receipts": len(texts), "receipt_verify_per_s": len(texts) / s}


SECTIONS: list[Section] = [merkle_section, envelope_section, receipt_section]


def main(argv: list[str] | None = None) -> int:
    run_sections("core", SECTIONS, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
