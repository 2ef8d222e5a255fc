"""One reason-code table: ``anchor.errors.Reason``, ``docs/reason-codes.md`` and the code agree.

* The doc lists exactly the codes of the table (both directions).
* No module under ``anchor/`` or ``devices/`` writes a reason as a bare string literal where a
  ``Reason`` member exists: an AST scan of ``reason=`` keywords, class-level ``reason = ...``,
  comparisons with ``.reason``, the positional reason of the helpers that take one, and
  constants named ``*REASONS*``. A new loose string fails here, not in production.
* The explorer's in-browser verifier (JavaScript, which cannot import the table) only reports
  codes of the table.
* Metric labels and quarantine rows only take table values.
"""

from __future__ import annotations

import ast
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from anchor.api.metrics import _vanished_by_reason
from anchor.errors import ALIASES, AnchorError, Reason
from anchor.sealing import Rejection

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reason-codes.md"
CODES = {r.value for r in Reason}

# Helpers whose positional arguments include a reason code (name -> argument index).
_POSITIONAL_REASON = {"_reject": 1, "problem": 1, "Check": 3, "_fail": 2, "status_for": 0}

# Not reason codes though named so: the token-failure kinds (missing, invalid, revoked,
# forbidden) of the auth-failure counter, a vocabulary of its own (TokenError.failure).
_NOT_REASONS = {"AUTH_FAILURE_REASONS"}

# Signals of the browser verifier that never reach a report: they turn a check into "skip"
# (this browser's WebCrypto lacks an algorithm, or there is no WebCrypto at all).
_JS_INTERNAL = {"no_webcrypto", "unsupported_alg"}


def _doc_codes() -> set[str]:
    """Every code in the first column of a table whose first header is ``reason``."""
    codes: set[str] = set()
    in_table = False
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            in_table = False
            continue
        first = line.split("|")[1].strip()
        if first == "reason":
            in_table = True
            continue
        if in_table and not set(first) <= {"-", ":"}:
            codes.update(re.findall(r"`([a-z0-9_]+)`", first))
    return codes


def test_the_doc_lists_every_code_of_the_table() -> None:
    missing = CODES - _doc_codes()
    assert not missing, f"codes of anchor.errors.Reason missing from {DOC.name}: {missing}"


def test_the_doc_lists_nothing_but_codes_of_the_table() -> None:
    extra = _doc_codes() - CODES
    assert not extra, f"codes in {DOC.name} that anchor.errors.Reason lacks: {extra}"


def test_every_member_is_its_own_wire_string_with_a_meaning() -> None:
    for r in Reason:
        assert re.fullmatch(r"[a-z0-9_]{1,64}", r.value), r
        assert r.name == r.value.upper(), r
        assert r == r.value and str(r) == r.value and f"{r}" == r.value
        assert r.where and r.meaning, f"{r.value}: where it applies and a meaning, please"
        assert len(r.meaning) <= 120, f"{r.value}: one line"


def test_aliases_name_table_codes_and_are_documented_as_aliases() -> None:
    text = DOC.read_text(encoding="utf-8")
    for alias, canonical in ALIASES.items():
        assert alias in Reason and canonical in Reason and alias is not canonical
        assert canonical not in ALIASES, "an alias points at a canonical code"
        rows = [line for line in text.splitlines() if line.startswith(f"| `{alias}` |")]
        assert rows and all(f"alias of `{canonical}`" in row for row in rows), alias


def test_an_error_carries_its_member() -> None:
    exc = AnchorError("x", reason=Reason.TOO_LARGE)
    assert exc.reason is Reason.TOO_LARGE and str(exc) == "[too_large] x"


# -------------------------------------------------------------------------- no loose strings


def _loose(node: ast.AST | None) -> list[str]:
    """Code-valued string literals in ``node`` (itself, or the items of a tuple/list/set)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in CODES:
        return [node.value]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [v for item in node.elts for v in _loose(item)]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args:
        return _loose(node.args[0]) if node.func.id in ("frozenset", "set", "tuple") else []
    return []


def _is_reason(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "reason") or (
        isinstance(node, ast.Name) and node.id == "reason"
    )


def _findings(tree: ast.AST) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            out += [
                (node.lineno, v)
                for k in node.keywords
                if k.arg == "reason"
                for v in _loose(k.value)
            ]
            name = (
                node.func.attr
                if isinstance(node.func, ast.Attribute)
                else getattr(node.func, "id", "")
            )
            index = _POSITIONAL_REASON.get(name)
            if index is not None:
                args = node.args[index : index + 1] if name != "_reject" else node.args[:2]
                out += [(node.lineno, v) for arg in args for v in _loose(arg)]
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                named = isinstance(t, ast.Name) and "REASON" in t.id.upper()
                if _is_reason(t) or (named and t.id not in _NOT_REASONS):
                    out += [(node.lineno, v) for v in _loose(node.value)]
        elif isinstance(node, ast.Dict):  # {"reason": "..."}, e.g. a JSON example
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "reason":
                    out += [(node.lineno, v) for v in _loose(value)]
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_is_reason(s) for s in sides):
                out += [(node.lineno, v) for s in sides for v in _loose(s)]
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            # A default ``reason: str = "receipt_malformed"`` is a loose string too.
            args = node.args
            pairs = zip(reversed(args.args), reversed(args.defaults), strict=False)
            kw = zip(args.kwonlyargs, args.kw_defaults, strict=True)
            for arg, default in (*pairs, *kw):
                if arg.arg == "reason":
                    out += [(node.lineno, v) for v in _loose(default)]
    return out


def _modules() -> list[Path]:
    return sorted(
        p
        for package in ("anchor", "devices")
        for p in (ROOT / package).rglob("*.py")
        if p != ROOT / "anchor" / "errors.py"
    )


def test_no_module_writes_a_reason_as_a_bare_string() -> None:
    loose = [
        f"{path.relative_to(ROOT)}:{line}: {value!r} -> Reason.{value.upper()}"
        for path in _modules()
        for line, value in _findings(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert not loose, "use anchor.errors.Reason members:\n" + "\n".join(loose)


@pytest.mark.parametrize(
    "source",
    [
        'raise AnchorError("x", reason="usage")',
        'class E(AnchorError):\n    reason = "usage"',
        'return self._reject(item, "oversized", "big")',
        'problem(413, "too_large", "big")',
        'Check("envelope", "fail", "x", "receipt_mismatch")',
        'if exc.reason == "not_found": pass',
        'if exc.reason in ("db_busy", "db_unavailable"): pass',
        'FINAL_REASONS = frozenset({"malformed"})',
        'def _fail(path, message, reason="receipt_malformed"): pass',
        'example = {"name": "leaf_hash", "reason": "leaf_mismatch"}',
    ],
)
def test_the_scan_catches_loose_strings(source: str) -> None:
    assert _findings(ast.parse(source)), source


def test_the_scan_leaves_other_strings_alone() -> None:
    source = 'status = "erased"\nCheck("receipt", "fail", "x", Reason.USAGE)\nlog("oversized")'
    assert not _findings(ast.parse(source))


def test_the_browser_verifier_reports_table_codes_only() -> None:
    js = (ROOT / "anchor" / "api" / "explorer" / "static" / "verify.js").read_text(encoding="utf-8")
    thrown = set(re.findall(r'new VerifyError\("([a-z0-9_]+)"', js))
    checked = set(re.findall(r'check\([^;]*?, "([a-z0-9_]+)"\)', js, re.S))
    returned = set(re.findall(r'return \["fail", [^;]*?, "([a-z0-9_]+)"\]', js, re.S))
    assert thrown and checked and returned
    assert not (thrown - _JS_INTERNAL) - CODES
    assert not checked - CODES
    assert not returned - CODES


# -------------------------------------------------------------------------- table values only


def test_a_rejection_holds_a_table_code() -> None:
    now = datetime.now(UTC)
    r = Rejection(now, "t", "malformed", "x", b"")  # type: ignore[arg-type]  # a stored string
    assert r.reason is Reason.MALFORMED
    with pytest.raises(ValueError):
        Rejection(now, "t", "no_such_code", "x", b"")  # type: ignore[arg-type]


def test_metric_labels_take_table_values_only() -> None:
    assert Reason.label("bad_signature") is Reason.BAD_SIGNATURE
    assert Reason.label('x"} 1\nevil') is Reason.ERROR
    vanished = {("evm", "anchor_vanished"): 2, ("evm", "typo"): 1, ("other", "anchor_vanished"): 5}
    assert _vanished_by_reason(vanished, "evm") == [
        (Reason.ANCHOR_VANISHED, 2),
        (Reason.ERROR, 1),
    ]
    assert _vanished_by_reason({}, "evm") == [(Reason.ANCHOR_VANISHED, 0)]
