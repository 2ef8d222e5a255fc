"""A slow, obvious RFC 9162 Merkle tree, straight from the text of section 2.1. Tests only.

This exists to cross-check ``anchor.merkle`` (after transparency-dev's
``testonly/reference_test.go``), so it shares nothing with it: no imports from ``anchor``, its
own prefixes, and recursion over lists of *leaf inputs* exactly as the RFC writes it, with no
caching and no level arrays. It is quadratic or worse; keep the trees small.

Definitions (RFC 9162 section 2.1.1, ``D[n]`` a list of ``n`` inputs, ``k`` the largest power
of two smaller than ``n``):

* ``MTH({}) = HASH()``
* ``MTH({d(0)}) = HASH(0x00 || d(0))``
* ``MTH(D[n]) = HASH(0x01 || MTH(D[0:k]) || MTH(D[k:n]))``

``PATH`` is section 2.1.3.1, ``PROOF``/``SUBPROOF`` section 2.1.4.1. ``root_from_path`` walks
``PATH``'s recursion backwards (the root a claimed audit path leads to), and ``log_leaf_input``
is cityanchor's batch-log leaf data (DESIGN.md "Batch log"), written from the text of the design
with ``struct``, not taken from ``anchor.merkle``.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Sequence

Digest = Callable[[bytes], bytes]


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _k(n: int) -> int:
    """The largest power of two smaller than ``n`` (``n > 1``)."""
    assert n > 1
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def leaf(d: bytes, h: Digest = sha256) -> bytes:
    return h(b"\x00" + d)


def mth(inputs: Sequence[bytes], h: Digest = sha256) -> bytes:
    """MTH(D[n]) over the leaf *inputs* (not their hashes)."""
    n = len(inputs)
    if n == 0:
        return h(b"")
    if n == 1:
        return leaf(inputs[0], h)
    k = _k(n)
    return h(b"\x01" + mth(inputs[:k], h) + mth(inputs[k:], h))


def path(m: int, inputs: Sequence[bytes], h: Digest = sha256) -> list[bytes]:
    """PATH(m, D[n]): the audit path of leaf ``m``, ordered from the leaf up."""
    n = len(inputs)
    assert 0 <= m < n
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return [*path(m, inputs[:k], h), mth(inputs[k:], h)]
    return [*path(m - k, inputs[k:], h), mth(inputs[:k], h)]


def proof(m: int, inputs: Sequence[bytes], h: Digest = sha256) -> list[bytes]:
    """PROOF(m, D[n]) = SUBPROOF(m, D[n], true), for ``0 < m <= n``."""
    assert 0 < m <= len(inputs)
    return subproof(m, inputs, True, h)


def subproof(m: int, inputs: Sequence[bytes], b: bool, h: Digest = sha256) -> list[bytes]:
    n = len(inputs)
    if m == n:
        # "If m = n, SUBPROOF(m, D[m], true) = {}; SUBPROOF(m, D[m], false) = {MTH(D[m])}"
        return [] if b else [mth(inputs, h)]
    k = _k(n)
    if m <= k:
        # "the right subtree entries D[k:n] only exist in the current tree": prove the left
        # subtree consistent, then add a commitment to D[k:n].
        return [*subproof(m, inputs[:k], b, h), mth(inputs[k:], h)]
    # "the left subtree entries D[0:k] are identical in both trees": prove the right subtree
    # consistent, then add a commitment to D[0:k].
    return [*subproof(m - k, inputs[k:], False, h), mth(inputs[:k], h)]


def root_from_path(
    m: int, n: int, leaf_hash: bytes, audit_path: Sequence[bytes], h: Digest = sha256
) -> bytes | None:
    """The root that ``audit_path`` (bottom-up, as ``path`` returns it) leads to from the leaf
    hash at ``m`` in a tree of ``n`` leaves, or None when ``m`` is not below ``n`` or the path
    has the wrong length for that shape. Mirrors ``path``: the last element is the sibling
    subtree at the top split."""
    if not 0 <= m < n:
        return None
    if n == 1:
        return leaf_hash if not audit_path else None
    if not audit_path:
        return None
    k = _k(n)
    *below, top = audit_path
    if m < k:
        left = root_from_path(m, k, leaf_hash, below, h)
        return None if left is None else h(b"\x01" + left + top)
    right = root_from_path(m - k, n - k, leaf_hash, below, h)
    return None if right is None else h(b"\x01" + top + right)


def log_leaf_input(batch_size: int, batch_root: bytes) -> bytes:
    """cityanchor's batch-log leaf data (receipt v2): the batch size as an unsigned 64-bit
    big-endian integer, then the 32-byte batch root. Its leaf hash is ``leaf(...)`` of it."""
    assert len(batch_root) == 32
    return struct.pack(">Q", batch_size) + batch_root
