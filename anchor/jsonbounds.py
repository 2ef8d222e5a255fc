"""Bounding JSON nesting before ``json.loads`` sees it. Pure; used by the envelope and receipt
parsers.

``json.loads`` recurses once per nesting level. Normally that ends in ``RecursionError``, but a
process that imported web3 runs with a recursion limit of 100 000 (``py_ecc`` raises it), and
there deeply nested input overflows the C stack and kills the process. So nesting is counted
first, with a regular expression that skips strings, and refused above the caller's bound.
"""

from __future__ import annotations

import re

__all__ = ["nesting_depth"]

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
