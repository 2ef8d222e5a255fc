"""``anchor.wire.strict_loads`` as of commit 77305c6 (see the package docstring); the helpers
it calls are unchanged and imported."""

from __future__ import annotations

import json
from typing import Any

from anchor.wire import JsonRejected, _no_constants, _pairs_without_duplicates, nesting_depth

__all__ = ["JsonRejected", "strict_loads"]


def strict_loads(text: str | bytes, *, max_depth: int) -> Any:
    """RFC 8259 JSON only: nesting at most ``max_depth`` (counted before ``json.loads``
    recurses), no duplicate object keys, no ``NaN``/``Infinity``; ``bytes`` must be UTF-8
    (never guessed as UTF-16/32). Raises :class:`JsonRejected`.
    """
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    if nesting_depth(data, max_depth) > max_depth:
        raise JsonRejected(f"JSON nests deeper than {max_depth}")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonRejected(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
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
