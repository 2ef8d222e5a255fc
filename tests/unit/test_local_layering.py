"""Production code does not import the private test servers of ``anchor.local``.

``anchor.local`` starts PostgreSQL, Mosquitto and anvil for tests, the demo and ``cityanchor
up``; the ingestor, the API, the anchoring job and the store must run without it (and never
start a server of their own). Every import is scanned, function-level ones and ``__import__`` /
``importlib.import_module`` calls with a literal name included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ANCHOR = Path(__file__).resolve().parents[2] / "anchor"
LOCAL = "anchor.local"
# The modules that may start private servers: `up`, the demo, and the package itself (plus,
# after the move into subpackages, the same modules under anchor.cli.commands).
ALLOWED = (
    "anchor.local",
    "anchor.cli.up",
    "anchor.cli.up_broker",  # up's broker (a MosquittoServer it reconciles)
    "anchor.cli.up_recovery",  # up's stale servers and ports
    "anchor.cli.demo_live",
    "anchor.cli.commands.up",
    "anchor.cli.commands.demo",
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ANCHOR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _imported(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every module name ``tree`` imports (``from a import b`` yields ``a`` and ``a.b``)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor_parts = module.split(".")
                keep = len(anchor_parts) - node.level + (1 if is_package else 0)
                base = ".".join([*anchor_parts[:keep], *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            arg = node.args[0]
            if name in ("__import__", "import_module") and isinstance(arg, ast.Constant):
                found.add(str(arg.value))
    return found


def _production_modules() -> list[tuple[str, Path]]:
    modules = [(_module_name(p), p) for p in sorted(ANCHOR.rglob("*.py"))]
    return [(m, p) for m, p in modules if not any(_within(m, a) for a in ALLOWED)]


def test_the_scan_sees_the_modules_that_must_stay_clean() -> None:
    names = {m for m, _ in _production_modules()}
    # The brief's list: the ingestor, the API, the anchoring job and the store (flat today,
    # subpackages later; either way at least one of each must be scanned).
    for wing in (
        "anchor.ingest.ingestor",
        "anchor.api.app",
        "anchor.anchoring.job",
        "anchor.store",
    ):
        assert any(n.startswith(wing) for n in names), wing
    assert "anchor.broker.logins" in names


_PRODUCTION = _production_modules()


@pytest.mark.parametrize(("module", "path"), _PRODUCTION, ids=[m for m, _ in _PRODUCTION])
def test_production_module_does_not_import_anchor_local(module: str, path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    imported = _imported(tree, module, is_package=path.name == "__init__.py")
    bad = sorted(n for n in imported if _within(n, LOCAL))
    assert not bad, f"{module} imports {bad}: only up, the demo and tests may use anchor.local"


def test_the_scan_catches_function_level_and_dynamic_imports() -> None:
    code = (
        "def f():\n"
        "    from anchor.local.mosquitto import MosquittoServer\n"
        "    import anchor.local.base\n"
        "    __import__('anchor.local.anvil')\n"
        "    importlib.import_module('anchor.local')\n"
        "from anchor import local\n"
        "from .local import postgres\n"
    )
    found = _imported(ast.parse(code), "anchor.x", is_package=False)
    assert {
        "anchor.local.mosquitto",
        "anchor.local.base",
        "anchor.local.anvil",
        "anchor.local",
        "anchor.local.postgres",
    } <= found
