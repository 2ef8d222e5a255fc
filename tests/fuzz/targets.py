"""Fuzz targets: a mutated valid input must never verify, and only documented errors are raised.

Each target takes a seed input from :mod:`fuzz.corpus`, mutates it (byte-level, or aware of the
structure: CBOR heads and headers, base64url segments, JSON fields) and runs the project's own
parser and verifier on the result. It fails when

- anything but an :class:`~anchor.errors.AnchorError` escapes (a crash),
- an ``AnchorError`` (or a failed receipt check) carries a reason code that
  ``docs/reason-codes.md`` does not list,
- a byte string other than the seed verifies as an envelope (malleability), or a receipt,
  completeness proof or checkpoint whose *verified claims* differ from the seed's verifies
  (forgery). Fields a format does not sign (e.g. a receipt's ``anchors`` without a chain
  endpoint, unknown extra fields, JSON layout) may change: they are not claims the offline
  verifier vouches for,
- one case takes more than the caller's ``case_limit_s`` of CPU time (hostile input must be
  cheap).

Hypothesis drives the mutations (``st.data()``), so a failure shrinks to a small mutation and
prints the bytes that triggered it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anchor.checkpoint import open_checkpoint
from anchor.completeness import CompletenessProof, loads_completeness, verify_completeness
from anchor.envelope import parse_envelope, verify_envelope
from anchor.errors import AnchorError
from anchor.receipt import Receipt, loads_receipt
from anchor.verify import verify_receipt
from fuzz.corpus import corpus

REASON_CODES_MD = Path(__file__).resolve().parents[2] / "docs" / "reason-codes.md"

P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


@cache
def documented_reasons() -> frozenset[str]:
    """Every code in the first column of a table in docs/reason-codes.md."""
    codes: set[str] = set()
    for line in REASON_CODES_MD.read_text(encoding="utf-8").splitlines():
        if line.startswith("| `"):
            first = line.split("|")[1]
            codes.update(re.findall(r"`([a-z0-9_]+)`", first))
    return frozenset(codes)


class FuzzFailure(AssertionError):
    """A property of the fuzz contract did not hold."""


def _check_reason(reason: str | None, where: str) -> None:
    if reason not in documented_reasons():
        raise FuzzFailure(f"{where}: reason {reason!r} is not in docs/reason-codes.md")


@dataclass
class Stats:
    """Counts per target, for ``make fuzz``'s report."""

    cases: int = 0
    rejected: int = 0
    accepted_same: int = 0
    slowest_s: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)

    def rejection(self, reason: str) -> None:
        self.rejected += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1


# ---------------------------------------------------------------------------------------------
# Mutations
# ---------------------------------------------------------------------------------------------


def mutate_bytes(data: st.DataObject, seed: bytes, others: tuple[bytes, ...]) -> bytes:
    """1-4 byte-level edits: bit flips, byte sets, inserts, deletes, duplication, truncation,
    and splices from another seed of the same kind."""
    out = bytearray(seed)
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        op = data.draw(
            st.sampled_from(["flip", "set", "insert", "delete", "dup", "truncate", "splice"]),
            label="op",
        )
        n = len(out)
        pos = data.draw(st.integers(0, max(n - 1, 0)), label="pos")
        if op == "flip" and n:
            out[pos] ^= 1 << data.draw(st.integers(0, 7), label="bit")
        elif op == "set" and n:
            out[pos] = data.draw(
                st.sampled_from(
                    [
                        0x00,
                        0x01,
                        0x7F,
                        0x80,
                        0xFF,
                        0x18,
                        0x19,
                        0x1A,
                        0x1B,
                        0x1F,
                        0x40,
                        0x5F,
                        0x60,
                        0x7F,
                        0x9F,
                        0xA0,
                        0xBF,
                        0xC0,
                        0xD2,
                        0xF4,
                        0xF5,
                        0xF6,
                        0xF7,
                        0xFB,
                        0x22,
                        0x2E,
                        0x3D,
                        0x5C,
                        0x7B,
                        0x7D,
                    ]
                )
                | st.integers(0, 255),
                label="byte",
            )
        elif op == "insert":
            out[pos:pos] = data.draw(st.binary(min_size=1, max_size=8), label="inserted")
        elif op == "delete" and n:
            del out[pos : pos + data.draw(st.integers(1, 8), label="len")]
        elif op == "dup" and n:
            chunk = out[pos : pos + data.draw(st.integers(1, 32), label="len")]
            at = data.draw(st.integers(0, n), label="at")
            out[at:at] = chunk
        elif op == "truncate":
            del out[pos:]
        elif op == "splice" and others:
            other = data.draw(st.sampled_from(others), label="other")
            start = data.draw(st.integers(0, max(len(other) - 1, 0)), label="from")
            chunk = other[start : start + data.draw(st.integers(1, 64), label="len")]
            out[pos : pos + len(chunk)] = chunk
    return bytes(out)


def _head(major: int, value: int, width: int | None) -> bytes:
    """A CBOR head with ``value`` in the given argument width (None: the shortest, RFC 8949)."""
    if width is None:
        width = 0 if value < 24 else 1 if value < 256 else 2 if value < 65536 else 4
    if width == 0:
        return bytes([major << 5 | value])
    info = {1: 24, 2: 25, 4: 26, 8: 27}[width]
    return bytes([major << 5 | info]) + value.to_bytes(width, "big")


def _fits(value: int, width: int | None) -> bool:
    return width is None or (width == 0 and value < 24) or value < 1 << (8 * width)


def mutate_cose(data: st.DataObject, seed: bytes) -> bytes:
    """Re-encode a COSE_Sign1 in one of the ways a third party could without the key: without
    or with another tag, with an unprotected header, with non-minimal or indefinite heads, with
    ES256's other signature ``(r, n - s)``."""
    decoded = cbor2.loads(seed)
    protected, _unprotected, payload, signature = (
        decoded.value if isinstance(decoded, cbor2.CBORTag) else decoded
    )
    widths = st.sampled_from([None, None, 0, 1, 2, 4, 8])
    kind = data.draw(
        st.sampled_from(["untagged", "tags", "unprotected", "heads", "indefinite", "high_s"]),
        label="variant",
    )
    unprotected = b"\xa0"
    tag = _head(6, 18, None)
    items_widths = [None] * 5
    indefinite = False
    if kind == "untagged":
        tag = b""
    elif kind == "tags":
        tag = data.draw(
            st.sampled_from(
                [
                    _head(6, 18, 1),
                    _head(6, 18, 2),
                    _head(6, 18, None) * 2,
                    _head(6, 55799, None) + _head(6, 18, None),
                    _head(6, 17, None),
                    _head(6, 98, None),
                ]
            ),
            label="tag",
        )
    elif kind == "unprotected":
        label = data.draw(st.integers(-65536, 65536) | st.text(max_size=8), label="label")
        value = data.draw(
            st.text(max_size=40) | st.binary(max_size=40) | st.integers() | st.booleans(),
            label="value",
        )
        unprotected = cbor2.dumps({label: value})
    elif kind == "heads":
        items_widths = [data.draw(widths, label=f"width{i}") for i in range(5)]
    elif kind == "indefinite":
        indefinite = True
    elif kind == "high_s":
        if len(signature) != 64:
            return seed
        r, s = signature[:32], int.from_bytes(signature[32:], "big")
        signature = r + ((P256_N - s) % P256_N).to_bytes(32, "big")

    def bstr(value: bytes, width: int | None) -> bytes:
        if not _fits(len(value), width):
            width = None
        return _head(2, len(value), width) + value

    array_width = items_widths[0] if _fits(4, items_widths[0]) else None
    if indefinite:
        body = b"\x9f" + bstr(protected, None) + unprotected + bstr(payload, None)
        body += b"\x5f" + bstr(signature[:10], None) + bstr(signature[10:], None) + b"\xff\xff"
    else:
        body = _head(4, 4, array_width)
        body += bstr(protected, items_widths[1]) + unprotected
        body += bstr(payload, items_widths[2]) + bstr(signature, items_widths[3])
    return tag + body


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def mutate_jws(data: st.DataObject, seed: bytes) -> bytes:
    """Re-spell a JWS without the key: padding, non-zero trailing bits, another alphabet,
    whitespace, ES256's ``(r, n - s)``."""
    parts = seed.decode("ascii").split(".")
    i = data.draw(st.integers(0, 2), label="segment")
    kind = data.draw(
        st.sampled_from(["pad", "trailing_bits", "alphabet", "space", "high_s"]), label="variant"
    )
    seg = parts[i]
    if kind == "pad":
        seg += data.draw(st.sampled_from(["=", "==", "==="]), label="pad")
    elif kind == "trailing_bits" and seg:
        # A last character that differs only in bits the decoder drops (when len % 4 is 2 or 3).
        spare = {2: 4, 3: 2}.get(len(seg) % 4, 0)
        if spare:
            value = _B64.index(seg[-1])
            bits = data.draw(st.integers(1, (1 << spare) - 1), label="bits")
            seg = seg[:-1] + _B64[(value & ~((1 << spare) - 1)) | bits]
    elif kind == "alphabet":
        seg = seg.replace("-", "+").replace("_", "/")
        if seg == parts[i] and seg:
            seg = seg[:-1] + data.draw(st.sampled_from(["+", "/", "!", "\u00e9"]), label="char")
    elif kind == "space":
        at = data.draw(st.integers(0, len(seg)), label="at")
        ws = data.draw(st.sampled_from([" ", "\n", "\t", "\r\n"]), label="ws")
        seg = seg[:at] + ws + seg[at:]
    elif kind == "high_s" and i == 2:
        import base64

        raw = base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4))
        if len(raw) == 64:
            s = int.from_bytes(raw[32:], "big")
            raw = raw[:32] + ((P256_N - s) % P256_N).to_bytes(32, "big")
            seg = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    parts[i] = seg
    return ".".join(parts).encode("utf-8", "surrogatepass")


def _json_paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            paths.extend(_json_paths(v, (*prefix, k)))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            paths.extend(_json_paths(v, (*prefix, i)))
    return paths


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        doc = doc[p]
    return doc


def _mutate_value(data: st.DataObject, value: Any) -> Any:
    other = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats()
        | st.text(max_size=20)
        | (st.lists(st.integers(), max_size=2))
    )
    if isinstance(value, bool):
        return data.draw(st.just(not value) | other, label="new")
    if isinstance(value, int):
        return data.draw(
            st.sampled_from([value + 1, value - 1, value * 2, 0, -1, 2**63, 2**64, value + 2**64])
            | st.just(float(value))
            | st.just(str(value))
            | other,
            label="new",
        )
    if isinstance(value, str):
        if value and re.fullmatch(r"[0-9a-f]+", value):
            pos = data.draw(st.integers(0, len(value) - 1), label="hexpos")
            digit = data.draw(st.sampled_from("0123456789abcdefABCDEF"), label="digit")
            return data.draw(
                st.just(value[:pos] + digit + value[pos + 1 :])
                | st.just(value.upper())
                | st.just(value[:-2])
                | st.just(value + "00"),
                label="new",
            )
        pos = data.draw(st.integers(0, len(value)), label="pos")
        insert = data.draw(st.text(min_size=1, max_size=4), label="ins")
        return data.draw(
            st.just(value[:pos] + insert + value[pos:]) | st.just(value[:pos]) | other,
            label="new",
        )
    if isinstance(value, list):
        ops = [st.just([*value, *value[-1:]])] if value else [st.just([0])]
        if value:
            ops += [st.just(value[1:]), st.just(value[:-1]), st.just(value[::-1])]
        return data.draw(st.one_of(*ops) | other, label="new")
    if isinstance(value, dict):
        keys = list(value)
        if keys and data.draw(st.booleans(), label="drop"):
            dropped = data.draw(st.sampled_from(keys), label="key")
            return {k: v for k, v in value.items() if k != dropped}
        return {**value, data.draw(st.text(max_size=10), label="newkey"): data.draw(other)}
    return data.draw(other, label="new")


def mutate_json(data: st.DataObject, seed: bytes) -> bytes:
    """1-3 edits of JSON values (numbers, hex digits, strings, lists, objects)."""
    doc = json.loads(seed)
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        path = data.draw(st.sampled_from(_json_paths(doc)), label="path")
        if not path:
            doc = _mutate_value(data, doc)
            continue
        parent = _get(doc, path[:-1])
        parent[path[-1]] = _mutate_value(data, parent[path[-1]])
    return json.dumps(doc).encode("utf-8")


# ---------------------------------------------------------------------------------------------
# Checks: what "verifies" means per input kind, and the claims a verified input vouches for
# ---------------------------------------------------------------------------------------------

Outcome = str  # "rejected:<reason>" or "accepted"


def check_envelope(candidate: bytes, seed: bytes) -> Outcome:
    c = corpus()
    try:
        envelope = parse_envelope(candidate)
    except AnchorError as exc:
        _check_reason(exc.reason, "parse_envelope")
        return f"rejected:{exc.reason}"
    verified = False
    last = "unknown_kid"
    for key in c.public_keys:
        try:
            verify_envelope(envelope, key)
        except AnchorError as exc:
            _check_reason(exc.reason, "verify_envelope")
            last = exc.reason
        else:
            verified = True
    if not verified:
        return f"rejected:{last}"
    if candidate != seed:
        raise FuzzFailure(
            f"malleable: {len(candidate)} bytes that are not the signed envelope verify\n"
            f"seed:    {seed.hex()}\nvariant: {candidate.hex()}"
        )
    return "accepted"


def _receipt_claims(r: Receipt) -> tuple[Any, ...]:
    c = corpus()
    checkpoint = open_checkpoint(r.checkpoint, c.log_verifier)
    batch = tuple(getattr(r.batch, name) for name in r.batch.__slots__)  # type: ignore[attr-defined]
    log = (r.log.index, r.log.size, r.log.root, r.log.path)
    return (
        r.device_id,
        r.seq,
        r.format,
        r.envelope,
        r.leaf_hash,
        batch,
        log,
        checkpoint.body(),
        r.extra.get("hash_scheme"),
    )


def check_receipt(candidate: bytes, seed: bytes) -> Outcome:
    c = corpus()
    try:
        receipt = loads_receipt(candidate)
    except AnchorError as exc:
        _check_reason(exc.reason, "loads_receipt")
        return f"rejected:{exc.reason}"
    report = verify_receipt(receipt, device_keys=c.public_keys, log_verifiers=[c.log_verifier])
    for check in report.failures:
        _check_reason(check.reason, f"verify_receipt check {check.name}")
    if not report.valid:
        return f"rejected:{report.failures[0].reason}"
    original = loads_receipt(seed)
    if _receipt_claims(receipt) != _receipt_claims(original):
        raise FuzzFailure(
            "forged receipt verifies: its claims differ from the genuine receipt's\n"
            f"variant: {candidate.decode('utf-8', 'replace')}"
        )
    return "accepted"


def _completeness_claims(p: CompletenessProof) -> Any:
    c = corpus()
    checkpoint = open_checkpoint(p.checkpoint, c.log_verifier)
    # The order of the batches list carries no claim (they are looked up by id).
    batches = sorted(p.batches, key=lambda b: b.id)
    return (
        repr(p.readings),
        repr(batches),
        p.device_id,
        p.from_seq,
        p.to_seq,
        p.gaps,
        p.log_size,
        p.log_root,
        checkpoint.body(),
    )


def check_completeness(candidate: bytes, seed: bytes) -> Outcome:
    c = corpus()
    try:
        proof = loads_completeness(candidate)
        verify_completeness(proof, device_key=c.public_keys, log_verifiers=[c.log_verifier])
    except AnchorError as exc:
        _check_reason(exc.reason, "verify_completeness")
        return f"rejected:{exc.reason}"
    if _completeness_claims(proof) != _completeness_claims(loads_completeness(seed)):
        raise FuzzFailure(
            f"forged completeness proof verifies\nvariant: {candidate.decode('utf-8', 'replace')}"
        )
    return "accepted"


def check_checkpoint(candidate: bytes, seed: bytes) -> Outcome:
    c = corpus()
    try:
        checkpoint = open_checkpoint(candidate, c.log_verifier, origin=c.operator.name)
    except AnchorError as exc:
        _check_reason(exc.reason, "open_checkpoint")
        return f"rejected:{exc.reason}"
    original = open_checkpoint(seed, c.log_verifier)
    if checkpoint != original:
        raise FuzzFailure(f"forged checkpoint verifies: {candidate!r}")
    return "accepted"


# ---------------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    seeds: Callable[[], tuple[bytes, ...]]
    mutate: Callable[[st.DataObject, bytes, tuple[bytes, ...]], bytes]
    check: Callable[[bytes, bytes], Outcome]


def _enc(items: tuple[str, ...]) -> tuple[bytes, ...]:
    return tuple(s.encode("utf-8") for s in items)


TARGETS: tuple[Target, ...] = (
    Target("cose_bytes", lambda: corpus().cose, mutate_bytes, check_envelope),
    Target(
        "cose_structure", lambda: corpus().cose, lambda d, s, _o: mutate_cose(d, s), check_envelope
    ),
    Target("jws_bytes", lambda: corpus().jws, mutate_bytes, check_envelope),
    Target("jws_segments", lambda: corpus().jws, lambda d, s, _o: mutate_jws(d, s), check_envelope),
    Target("receipt_bytes", lambda: _enc(corpus().receipts), mutate_bytes, check_receipt),
    Target(
        "receipt_fields",
        lambda: _enc(corpus().receipts),
        lambda d, s, _o: mutate_json(d, s),
        check_receipt,
    ),
    Target(
        "completeness_bytes", lambda: _enc(corpus().completeness), mutate_bytes, check_completeness
    ),
    Target(
        "completeness_fields",
        lambda: _enc(corpus().completeness),
        lambda d, s, _o: mutate_json(d, s),
        check_completeness,
    ),
    Target("checkpoint_note", lambda: _enc(corpus().checkpoints), mutate_bytes, check_checkpoint),
)


def run_target(
    target: Target,
    *,
    examples: int,
    derandomize: bool,
    case_limit_s: float,
    stats: Stats | None = None,
) -> Stats:
    """Run ``examples`` hypothesis cases of ``target``; raise on the first failing case."""
    stats = stats or Stats()
    seeds = target.seeds()
    for seed in seeds:  # every seed itself verifies, or the target proves nothing
        outcome = target.check(seed, seed)
        if outcome != "accepted":
            raise FuzzFailure(f"{target.name}: a seed input does not verify ({outcome})")

    @settings(
        max_examples=examples,
        derandomize=derandomize,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @given(st.data())
    def case(data: st.DataObject) -> None:
        seed = data.draw(st.sampled_from(seeds), label="seed")
        candidate = target.mutate(data, seed, seeds)
        # CPU time of this process: what a hostile input costs us, whatever else the machine runs
        # (wall-clock time on a shared 2-core box measured the neighbours, not the parser).
        start = time.process_time()
        outcome = target.check(candidate, seed)
        took = time.process_time() - start
        stats.cases += 1
        stats.slowest_s = max(stats.slowest_s, took)
        if outcome == "accepted":
            stats.accepted_same += 1
        else:
            stats.rejection(outcome.removeprefix("rejected:"))
        if took > case_limit_s:
            raise FuzzFailure(
                f"{target.name}: one case took {took:.2f} s of CPU (> {case_limit_s} s)"
            )

    case()
    return stats
