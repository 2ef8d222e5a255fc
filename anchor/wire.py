"""Strict JSON at every edge: the one loader, and the typed field readers of our documents. Pure.

One loader, :func:`strict_loads`, for everything that parses JSON from outside: JWS headers and
payloads, receipts, completeness proofs, HTTP bodies, CLI files, device import files. It takes
RFC 8259 JSON only: no duplicate object keys (two parsers could each pick a different copy), no
``NaN``/``Infinity``, and nesting bounded by the caller *before* ``json.loads`` recurses.
Each caller keeps its own depth bound and its own error type and reason code.

Why the depth is counted first: ``json.loads`` recurses once per nesting level. Normally that
ends in ``RecursionError``, but a process that imported web3 runs with a recursion limit of
100 000 (``py_ecc`` raises it), and there deeply nested input overflows the C stack and kills
the process. So nesting is counted with a regular expression that skips strings, and refused
above the caller's bound.

:class:`FieldReader` reads the typed fields of a parsed document (objects, members, unsigned
integers, strings, 32-byte hex hashes, hash paths, bounded arrays, canonical base64url) with one
set of messages, ``"{json path}: {what is wrong}"``, raising the document's own error class.
Receipts (:mod:`anchor.receipt`) and completeness proofs (:mod:`anchor.completeness`) both use
it, so their messages cannot drift apart again.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any, NoReturn

from anchor.errors import AnchorError, Reason
from anchor.keys import b64url_encode
from anchor.merkle import MAX_PROOF_LENGTH

__all__ = [
    "HASH_SIZE",
    "MAX_PROOF_LENGTH",
    "MAX_UINT64",
    "FieldReader",
    "JsonRejected",
    "b64url_encode",
    "nesting_depth",
    "strict_decoder",
    "strict_loads",
    "type_name",
]

MAX_UINT64 = (1 << 64) - 1
HASH_SIZE = 32

_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*+"?|[\[\]{}]', re.DOTALL)
_HEX64 = re.compile(r"[0-9a-f]{64}")
_B64URL = re.compile(r"[A-Za-z0-9_-]+")


# --------------------------------------------------------------------------------------------
# The loader


def nesting_depth(data: bytes, limit: int) -> int:
    """The deepest bracket nesting in ``data`` outside JSON strings, counted up to ``limit + 1``
    (it stops there: the caller only needs to know the bound was passed).

    One token is a JSON string literal (escapes included; an unterminated one runs to the end)
    or a bracket. The possessive ``*+`` never backtracks, so scanning is linear.
    """
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


def strict_decoder() -> json.JSONDecoder:
    """A decoder with the same refusals as :func:`strict_loads` (duplicate keys, NaN), for a
    caller that walks a document itself with ``raw_decode``; it must bound nesting first and
    handle :class:`JsonRejected` as well as ``json.JSONDecodeError``."""
    return json.JSONDecoder(
        object_pairs_hook=_pairs_without_duplicates, parse_constant=_no_constants
    )


_STRICT = strict_decoder()


def strict_loads(text: str | bytes, *, max_depth: int) -> Any:
    """RFC 8259 JSON only: nesting at most ``max_depth`` (counted before ``json.loads``
    recurses), no duplicate object keys, no ``NaN``/``Infinity``; ``bytes`` must be UTF-8
    (never guessed as UTF-16/32). Raises :class:`JsonRejected`.
    """
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    # Every opening bracket, in a string or not, counts towards this sum, so it bounds the
    # depth from above: only a document with more brackets than the bound needs the scan.
    if (data.count(b"[") + data.count(b"{") > max_depth
            and nesting_depth(data, max_depth) > max_depth):  # fmt: skip
        raise JsonRejected(f"JSON nests deeper than {max_depth}")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonRejected(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        if text.startswith("\ufeff"):
            # What json.loads does before decoding (its message), which _STRICT.decode skips.
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        # One decoder for every call: json.loads would build a new one each time.
        return _STRICT.decode(text)
    except JsonRejected:
        raise
    except json.JSONDecodeError as exc:
        raise JsonRejected(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise JsonRejected("JSON nests too deeply") from None
    except ValueError as exc:
        # e.g. an integer literal longer than Python's int/str conversion limit.
        raise JsonRejected(f"not acceptable JSON: {exc}") from None


# --------------------------------------------------------------------------------------------
# Field readers


def type_name(value: object) -> str:
    """The JSON name of a parsed value's type, for messages."""
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        type(None): "null",
        list: "array",
        dict: "object",
    }.get(type(value), type(value).__name__)


class FieldReader:
    """Typed readers of one kind of document; every failure raises
    ``error(f"{path}: {message}", reason=...)``, by default with ``error.reason``.

    ``path`` is the JSON path of the value being read (``batch.path[3]``), ``""`` at the top.
    """

    def __init__(self, error: type[AnchorError]) -> None:
        self.error = error

    def fail(self, path: str, message: str, reason: Reason | None = None) -> NoReturn:
        raise self.error(f"{path}: {message}", reason=reason or self.error.reason)

    def obj(self, value: object, path: str) -> Mapping[str, Any]:
        """``value`` if it is a JSON object."""
        if not isinstance(value, Mapping):
            self.fail(path or "$", f"expected an object, got {type_name(value)}")
        return value

    def member(self, obj: Mapping[str, Any], key: str, path: str) -> Any:
        """``obj[key]`` of the object at ``path``; ``"{path}.{key}: missing"`` if absent."""
        try:
            return obj[key]
        except KeyError:
            self.fail(f"{path}.{key}" if path else key, "missing")

    def get(self, obj: object, key: str, path: str) -> Any:
        """:meth:`member` of ``obj``, which must be an object."""
        return self.member(self.obj(obj, path), key, path)

    def uint(self, value: object, path: str, low: int = 0, high: int = MAX_UINT64) -> int:
        """An integer in ``[low, high]`` (default: a uint64); JSON ``true`` is not 1."""
        # bool is an int subclass in Python, and JSON true must not pass for 1.
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(path, f"expected an integer, got {type_name(value)}")
        if not low <= value <= high:
            bound = "2**64-1" if high == MAX_UINT64 else str(high)
            self.fail(path, f"{value} is outside [{low}, {bound}]")
        return value

    def text(self, value: object, path: str) -> str:
        """A string that is valid Unicode (no lone surrogate, so it encodes as UTF-8)."""
        if not isinstance(value, str):
            self.fail(path, f"expected a string, got {type_name(value)}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            self.fail(path, "contains a lone surrogate (not UTF-8)")
        return value

    def array(self, value: object, path: str, limit: int, noun: str = "items") -> list[Any]:
        """A JSON array of at most ``limit`` elements (``noun`` names them in the message)."""
        if not isinstance(value, list):
            self.fail(path, f"expected an array, got {type_name(value)}")
        if len(value) > limit:
            self.fail(path, f"{len(value)} {noun}, more than {limit}")
        return value

    def hex32(self, value: object, path: str) -> bytes:
        """A 32-byte hash spelt as 64 lowercase hex digits."""
        if not isinstance(value, str) or _HEX64.fullmatch(value) is None:
            self.fail(path, "not 64 lowercase hex chars")
        return bytes.fromhex(value)

    def hex_path(self, value: object, path: str) -> tuple[bytes, ...]:
        """An audit path: an array of at most :data:`MAX_PROOF_LENGTH` :meth:`hex32` hashes."""
        if not isinstance(value, list):
            self.fail(path, f"expected an array, got {type_name(value)}")
        if len(value) > MAX_PROOF_LENGTH:
            self.fail(path, f"{len(value)} hashes, more than any tree of 2**64 leaves needs")
        return tuple(self.hex32(h, f"{path}[{i}]") for i, h in enumerate(value))

    def b64url(self, value: object, path: str) -> bytes:
        """Bytes in RFC 4648 section 5 base64url without padding (RFC 7515 section 2), and only
        its canonical spelling: one string per byte string, so documents compare as text."""
        if not isinstance(value, str) or _B64URL.fullmatch(value) is None:
            self.fail(path, "not base64url without padding (alphabet A-Z a-z 0-9 - _)")
        if len(value) % 4 == 1:
            self.fail(path, "base64url length is impossible")
        try:
            data = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        except (binascii.Error, ValueError):
            self.fail(path, "not base64url without padding")
        if b64url_encode(data) != value:
            self.fail(path, "base64url has non-zero trailing bits (not canonical)")
        return data
