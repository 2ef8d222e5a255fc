"""The consensus-critical core does no I/O: it must not import network, database or chain code."""

from __future__ import annotations

import json
import subprocess
import sys

CORE = [
    "anchor.admission",
    "anchor.completeness",
    "anchor.jsonbounds",
    "anchor.wire",
    "anchor.merkle",
    "anchor.envelope",
    "anchor.keys",
    "anchor.receipt",
    "anchor.checkpoint",
    "anchor.verify",
    "anchor.sealing",
    "anchor.chainpoint",
    "anchor.device_id",
]
FORBIDDEN = (
    "paho",
    "asyncpg",
    "aiohttp",
    "web3",
    "socket",
    "urllib.request",
    "http.client",
    "logging",
)


def test_core_imports_no_io_library() -> None:
    # A fresh interpreter, so modules imported by other tests do not hide an import.
    code = (
        "import sys, json\n"
        f"for m in {CORE!r}: __import__(m)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout)
    bad = sorted(m for m in loaded for f in FORBIDDEN if m == f or m.startswith(f + "."))
    assert not bad, f"core modules pulled in I/O modules: {bad}"
