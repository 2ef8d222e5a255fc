"""The consensus-critical core does no I/O: every module at the top of ``anchor/`` is pure.

The rule is the layout's (README "What is here", DESIGN.md "Layout"): a module placed directly in
``anchor/`` must import no network, database, chain, process or logging library and nothing from
a wing subpackage (store/, ingest/, anchoring/, api/, cli/, local/, host/, broker/). The list is
read from the tree, so a new top-level module is checked without anyone remembering to add it.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ANCHOR = Path(__file__).resolve().parents[2] / "anchor"
# `python -m anchor` is the command's entry point, not part of the core.
NOT_CORE = {"__main__"}
CORE = sorted(
    f"anchor.{p.stem}" if p.stem != "__init__" else "anchor"
    for p in ANCHOR.glob("*.py")
    if p.stem not in NOT_CORE
)
WINGS = sorted(p.name for p in ANCHOR.iterdir() if p.is_dir() and (p / "__init__.py").exists())
# Data-only packages (no code that does I/O at import): the contract artifact loader reads a file
# shipped in the wheel when asked, and the explorer holds static files.
DATA_PACKAGES = {"contracts", "schemas", "explorer"}
FORBIDDEN = (
    "paho",
    "asyncpg",
    "aiohttp",
    "web3",
    "socket",
    "urllib.request",
    "http.client",
    "logging",
    "subprocess",
    "sqlite3",
    "prometheus_client",
)


def test_the_core_list_is_read_from_the_tree() -> None:
    assert {"anchor.merkle", "anchor.envelope", "anchor.receipt", "anchor.admission"} <= set(CORE)
    assert {"store", "ingest", "anchoring", "api", "cli", "local", "host", "broker"} <= set(WINGS)


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
    wings = sorted(
        m
        for m in loaded
        for w in set(WINGS) - DATA_PACKAGES
        if m == f"anchor.{w}" or m.startswith(f"anchor.{w}.")
    )
    assert not wings, f"core modules pulled in wing modules: {wings}"


def test_no_core_module_imports_a_wing_even_inside_a_function() -> None:
    # The run-time check above misses imports inside functions; read every import statement.
    offenders = []
    io_wings = set(WINGS) - DATA_PACKAGES
    for name in CORE:
        path = ANCHOR / ("__init__.py" if name == "anchor" else f"{name.split('.', 1)[1]}.py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                top = t.split(".")
                in_wing = top[0] == "anchor" and len(top) > 1 and top[1] in io_wings
                if top[0] in FORBIDDEN or t in FORBIDDEN or in_wing:
                    offenders.append(f"{path.name}:{node.lineno}: {t}")
    assert not offenders, offenders
