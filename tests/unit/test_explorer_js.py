"""The proof explorer's in-browser verifier (anchor/api/explorer/static/verify.js), run by Node's
WebCrypto against the project's vectors: RFC 9162 inclusion proofs, the envelope vectors
(valid ones parse, hash and verify; each invalid one fails with the core's reason code) and the
batch-log leaf known answers of receipt v2."""

from __future__ import annotations

import collections
import json
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import cbor2
import pytest

from anchor.envelope import (
    FORMAT_COSE,
    FORMAT_JWS,
    EnvelopeError,
    Reading,
    parse_envelope,
    sign_reading,
)
from anchor.keys import P256_ORDER, PrivateKey, b64url_encode

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"Ed25519": PrivateKey.generate("Ed25519"), "P-256": PrivateKey.generate("P-256")}


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


# -- differential: verify.js and anchor/envelope.py on generated variants ---------------------


def _heads(data: bytes, pos: int = 0) -> tuple[list[tuple[int, int, int, int]], int]:
    """Every CBOR head in the item at ``pos`` (byte strings' contents not entered): a list of
    (offset, major, argument, head length), and where the item ends. Definite lengths only."""
    out: list[tuple[int, int, int, int]] = []
    initial = data[pos]
    major, info = initial >> 5, initial & 31
    size = 0 if info < 24 else 1 << (info - 24)
    arg = info if info < 24 else int.from_bytes(data[pos + 1 : pos + 1 + size], "big")
    out.append((pos, major, arg, 1 + size))
    end = pos + 1 + size
    if major == 7:  # a float's bytes are its "argument"
        return out, end
    if major in (2, 3):
        return out, end + arg
    if major in (4, 5):
        for _ in range(arg * (2 if major == 5 else 1)):
            inner, end = _heads(data, end)
            out += inner
    elif major == 6:
        inner, end = _heads(data, end)
        out += inner
    return out, end


def _respell(data: bytes, rng: random.Random) -> bytes:
    """``data`` with one randomly chosen head (not a float or simple value) spelt longer."""
    heads = [h for h in _heads(data)[0] if h[1] != 7 and h[3] < 9]
    offset, major, arg, length = rng.choice(heads)
    sizes = [s for s in (1, 2, 4, 8) if 1 + s > length and arg < 1 << (8 * s)]
    size = rng.choice(sizes)
    info = 24 + (1, 2, 4, 8).index(size)
    head = bytes([major << 5 | info]) + arg.to_bytes(size, "big")
    return data[:offset] + head + data[offset + length :]


def _cose(protected: bytes, unprotected: Any, payload: bytes, sig: bytes) -> bytes:
    return bytes(cbor2.dumps(cbor2.CBORTag(18, [protected, unprotected, payload, sig])))


def _variants(rng: random.Random) -> list[bytes]:
    reading = Reading(
        device_id=f"dev-{rng.randrange(1000)}",
        seq=rng.randrange(1, 2**40),
        ts=rng.randrange(2**45),
        kind="iot.air_quality",
        values={"pm25": rng.choice([12.5, 0.1, 65504.0, -0.0, 1.1]), "n": rng.randrange(-300, 300)},
        prev=bytes(rng.randrange(256) for _ in range(32)),
        extra={"cell": {"sst": 1, "sd": "0a"}, "tags": ["x", 2.5]},
    )
    key = KEYS[rng.choice(["Ed25519", "P-256"])]
    out = []
    raw = sign_reading(reading, key, format=FORMAT_COSE)
    protected, _, payload, sig = cbor2.loads(raw).value
    out.append(raw)
    out.append(raw[1:])  # untagged
    out.append(_respell(raw, rng))  # the outer structure
    out.append(_cose(_respell(protected, rng), {}, payload, sig))
    out.append(_cose(protected, {}, _respell(payload, rng), sig))
    out.append(_cose(protected, {rng.choice([99, "x", -5]): "y" * rng.randrange(40)}, payload, sig))
    # cbor2 without canonical=True: insertion order (reversed here) and doubles for floats.
    loose = dict(reversed(list(cbor2.loads(payload).items())))
    out.append(_cose(protected, {}, bytes(cbor2.dumps(loose)), sig))
    twin = sig[:32] + (P256_ORDER - int.from_bytes(sig[32:], "big")).to_bytes(32, "big")
    out.append(_cose(protected, {}, payload, twin))  # high-S when ES256; bad_signature later if not
    flipped = bytearray(raw)
    flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
    out.append(bytes(flipped))

    jws = sign_reading(reading, key, format=FORMAT_JWS)
    parts = jws.split(b".")
    out.append(jws)
    i = rng.randrange(3)
    padded = parts.copy()
    padded[i] += b"=" * (-len(padded[i]) % 4)
    out.append(b".".join(padded))
    bits = parts.copy()
    if len(bits[i]) % 4:
        alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        bits[i] = bits[i][:-1] + bytes([alphabet[alphabet.index(bits[i][-1]) | 1]])
    out.append(b".".join(bits))
    out.append(parts[0] + b"." + parts[1] + b"." + b64url_encode(twin).encode())
    return out


def test_verify_js_and_the_core_classify_variants_alike(tmp_path: Path) -> None:
    # Two independent parsers, one rule: for 1,300 generated envelopes (genuine ones and their
    # re-spellings: heads, key order, floats, tags, unprotected labels, high-S, base64url
    # padding and trailing bits, bit flips) both give the same verdict, "ok" or the reason.
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH")
    rng = random.Random(20261203)
    envelopes = [v for _ in range(100) for v in _variants(rng)]
    ours = []
    for raw in envelopes:
        try:
            parse_envelope(raw)
            ours.append("ok")
        except EnvelopeError as exc:
            ours.append(exc.reason)
    path = tmp_path / "envelopes.json"
    path.write_text(json.dumps([raw.hex() for raw in envelopes]))
    result = subprocess.run(
        [node, "--disable-warning=MODULE_TYPELESS_PACKAGE_JSON",
         str(ROOT / "tests" / "browser" / "classify-envelopes.mjs"), str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    theirs = json.loads(result.stdout)
    differ = [(raw.hex()[:80], a, b) for raw, a, b in zip(envelopes, ours, theirs, strict=True)
              if a != b]  # fmt: skip
    assert differ == [], differ[:10]
    counts = collections.Counter(ours)
    # Both sides of the rule are exercised: many accepted, many non_canonical.
    assert counts["ok"] >= 200 and counts["non_canonical"] >= 600, counts
