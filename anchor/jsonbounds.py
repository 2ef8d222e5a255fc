"""Bounding JSON nesting before ``json.loads`` sees it, and the strict loader of the receipt and
completeness parsers. Pure.

``json.loads`` recurses once per nesting level. Normally that ends in ``RecursionError``, but a
process that imported web3 runs with a recursion limit of 100 000 (``py_ecc`` raises it), and
there deeply nested input overflows the C stack and kills the process. So nesting is counted
first, with a regular expression that skips strings, and refused above the caller's bound.
"""

from __future__ import annotations

import json
import re
from typing import Any, NoReturn

__all__ = ["JsonRejected", "nesting_depth", "strict_loads"]

_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*+"?|[\[\]{}]', re.DOTALL)


def nesting_depth(data: bytes, limit: int) -> int:
    """The deepest bracket nesting in ``data`` outside JSON strings, counted up to ``limit + 1``
    (it stops there: the caller only needs to know the bound was passed)."""
    depth = deepest = 0
    for match in _TOKEN.finditer(data):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    break
        elif token in (b"]", b"}"):
            depth -= 1
    return deepest


class JsonRejected(ValueError):
    """``strict_loads`` refused the text; the message says why (callers add their own code)."""


def _pairs_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            # Two parsers could each pick a different copy; refuse rather than choose.
            raise JsonRejected(f"duplicate key {key[:64]!r}")
        out[key] = value
    return out


def _no_constants(name: str) -> NoReturn:
    raise JsonRejected(f"{name} is not JSON (RFC 8259 has no NaN or infinities)")


def strict_loads(text: str, *, max_depth: int) -> Any:
    """RFC 8259 JSON only: nesting at most ``max_depth`` (counted before ``json.loads``
    recurses), no duplicate object keys, no ``NaN``/``Infinity``. Raises :class:`JsonRejected`.
    """
    if nesting_depth(text.encode("utf-8", "surrogatepass"), max_depth) > max_depth:
        raise JsonRejected(f"JSON nests deeper than {max_depth}")
    try:
        return json.loads(
            text, object_pairs_hook=_pairs_without_duplicates, parse_constant=_no_constants
        )
    except JsonRejected:
        raise
    except json.JSONDecodeError as exc:
        raise JsonRejected(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise JsonRejected("JSON nests too deeply") from None
    except ValueError as exc:
        # e.g. an integer literal longer than Python's int/str conversion limit.
        raise JsonRejected(f"not acceptable JSON: {exc}") from None
