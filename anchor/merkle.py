"""RFC 9162 (Certificate Transparency v2) Merkle trees: roots, proofs and their verification.

CONSENSUS-CRITICAL. Every receipt ever issued commits to hashes computed here. A change to how a
leaf or node is hashed, or to the tree's shape, invalidates all of them. Change nothing here
without a new hash-scheme name.

The rules (RFC 9162 section 2.1.1):

* ``leaf_hash(d)      = H(0x00 || d)``
* ``node_hash(l, r)   = H(0x01 || l || r)``
* the root of ``n > 1`` leaves splits them at ``k``, the largest power of two smaller than ``n``:
  ``MTH(D[n]) = H(0x01 || MTH(D[0:k]) || MTH(D[k:n]))``; ``MTH([]) = H(b"")``.

cityanchor's batch log is such a tree whose leaf data is ``uint64_be(batch size) || batch root``
(:func:`log_leaf_data`, DESIGN.md "Batch log"; receipts ``cityanchor/receipt/v2``).

Building (``root``, ``inclusion_proof``, ``consistency_proof``) is kept apart from checking
(``verify_*``): a verifier recomputes a root from the proof and compares, and states what it
expected and what it computed when they differ. The hash function sits behind :class:`Hasher`
so that SM3 (GB/T 32905) trees use the same code as SHA-256 ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives import hashes

from anchor.errors import ProofError, Reason

__all__ = [
    "HASHERS",
    "LOG_LEAF_DATA_SIZE",
    "SHA256",
    "SM3",
    "Hasher",
    "NodeId",
    "ProofError",
    "Rfc9162Hasher",
    "compact_append",
    "compact_append_nodes",
    "compact_root",
    "consistency_nodes",
    "consistency_proof",
    "get_hasher",
    "inclusion_nodes",
    "inclusion_proof",
    "inclusion_proofs",
    "leaf_hash",
    "log_leaf_data",
    "log_leaf_hash",
    "node_hash",
    "path_from_levels",
    "range_nodes",
    "root",
    "root_from_consistency_proof",
    "root_from_inclusion_proof",
    "tree_levels",
    "verify_consistency",
    "verify_inclusion",
]

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
# A proof longer than this cannot belong to a tree of fewer than 2**64 leaves.
MAX_PROOF_LENGTH = 64


class Hasher(Protocol):
    """What a tree needs from its hash function (after transparency-dev's LogHasher)."""

    @property
    def name(self) -> str: ...

    @property
    def digest_size(self) -> int: ...

    def empty_root(self) -> bytes: ...

    def hash_leaf(self, data: bytes) -> bytes: ...

    def hash_children(self, left: bytes, right: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Rfc9162Hasher:
    """RFC 9162 domain-separated hashing over any 32-byte hash function."""

    name: str
    digest: Callable[[bytes], bytes]
    digest_size: int = 32

    def empty_root(self) -> bytes:
        return self.digest(b"")

    def hash_leaf(self, data: bytes) -> bytes:
        return self.digest(LEAF_PREFIX + data)

    def hash_children(self, left: bytes, right: bytes) -> bytes:
        return self.digest(NODE_PREFIX + left + right)


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _sm3(data: bytes) -> bytes:
    # cryptography's OpenSSL build always carries SM3; hashlib's depends on the system OpenSSL.
    h = hashes.Hash(hashes.SM3())
    h.update(data)
    return h.finalize()


SHA256 = Rfc9162Hasher("rfc9162-sha256", _sha256)
"""The default scheme: RFC 9162 with SHA-256."""

SM3 = Rfc9162Hasher("rfc9162-sm3", _sm3)
"""RFC 9162 tree shape and prefixes with SM3 (GB/T 32905), for national-crypto deployments."""

HASHERS: dict[str, Hasher] = {SHA256.name: SHA256, SM3.name: SM3}


def get_hasher(name: str) -> Hasher:
    """Return the hash scheme called ``name``; raises ``ProofError`` (``unknown_hash_scheme``)."""
    try:
        return HASHERS[name]
    except KeyError:
        raise ProofError(
            f"unknown hash scheme {name!r}; known: {', '.join(sorted(HASHERS))}",
            reason=Reason.UNKNOWN_HASH_SCHEME,
        ) from None


def leaf_hash(data: bytes, *, hasher: Hasher = SHA256) -> bytes:
    """``H(0x00 || data)``: the hash of one leaf (RFC 9162 section 2.1.1)."""
    return hasher.hash_leaf(data)


LOG_LEAF_DATA_SIZE = 40
"""Bytes of one batch-log leaf's data: ``uint64_be(batch size) || batch root``."""
MAX_BATCH_SIZE = (1 << 64) - 1


def log_leaf_data(batch_size: int, batch_root: bytes) -> bytes:
    """The batch log's leaf data for one batch: ``uint64_be(batch_size) || batch_root``.

    CONSENSUS-CRITICAL (DESIGN.md "Batch log", receipt v2): the one place that encodes a log
    leaf; sealing, the store, receipts, verification, completeness proofs and the audit all call
    it. The size is inside the leaf because an RFC 9162 inclusion proof does not bind the tree
    size for every index (leaf 0 of 8 has the same audit path as leaf 0 of 7): with the size in
    the log leaf, ``log.path`` commits to ``batch.size`` too.

    Requires ``1 <= batch_size < 2**64`` (an int, not a bool) and a 32-byte root; raises
    ``ProofError`` (``proof_malformed``) otherwise.
    """
    if (
        not isinstance(batch_size, int)
        or isinstance(batch_size, bool)
        or not 1 <= batch_size <= MAX_BATCH_SIZE
    ):
        raise ProofError(f"batch size {batch_size!r} is not an integer in [1, 2**64-1]")
    if not isinstance(batch_root, bytes | bytearray) or len(batch_root) != 32:
        raise ProofError("batch root must be 32 bytes")
    return batch_size.to_bytes(8, "big") + bytes(batch_root)


def log_leaf_hash(batch_size: int, batch_root: bytes, *, hasher: Hasher = SHA256) -> bytes:
    """``H(0x00 || uint64_be(batch_size) || batch_root)``: the batch log's leaf hash for one
    batch (see :func:`log_leaf_data`); raises ``ProofError``."""
    return hasher.hash_leaf(log_leaf_data(batch_size, batch_root))


def node_hash(left: bytes, right: bytes, *, hasher: Hasher = SHA256) -> bytes:
    """``H(0x01 || left || right)``: the hash of an interior node."""
    return hasher.hash_children(left, right)


def _next_level(level: Sequence[bytes], hasher: Hasher) -> list[bytes]:
    # Pairing neighbours and carrying an odd last node up unhashed yields exactly RFC 9162's
    # "split at the largest power of two" shape, in one linear pass.
    hash_children = hasher.hash_children
    paired = [hash_children(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
    if len(level) % 2:
        paired.append(level[-1])
    return paired


def _levels(leaf_hashes: Sequence[bytes], hasher: Hasher) -> list[Sequence[bytes]]:
    levels: list[Sequence[bytes]] = [leaf_hashes]
    while len(levels[-1]) > 1:
        levels.append(_next_level(levels[-1], hasher))
    return levels


def root(leaf_hashes: Sequence[bytes], *, hasher: Hasher = SHA256) -> bytes:
    """The Merkle Tree Hash of the given leaf hashes; ``root([]) == H(b"")``. Linear time."""
    if not leaf_hashes:
        return hasher.empty_root()
    level: Sequence[bytes] = leaf_hashes
    while len(level) > 1:
        level = _next_level(level, hasher)
    return level[0]


def _path_from_levels(levels: Sequence[Sequence[bytes]], index: int) -> list[bytes]:
    path = []
    for level in levels[:-1]:
        sibling = index ^ 1
        # No sibling means this node is carried up unhashed: no proof element at this level.
        if sibling < len(level):
            path.append(level[sibling])
        index >>= 1
    return path


def inclusion_proof(
    leaf_hashes: Sequence[bytes], index: int, *, hasher: Hasher = SHA256
) -> list[bytes]:
    """The RFC 9162 audit path for the leaf at ``index`` (section 2.1.3.1), bottom-up.

    Raises ``ProofError`` when ``index`` is not in ``[0, len(leaf_hashes))``.
    """
    if not 0 <= index < len(leaf_hashes):
        raise ProofError(f"index {index} is outside a tree of size {len(leaf_hashes)}")
    return _path_from_levels(_levels(leaf_hashes, hasher), index)


def tree_levels(leaf_hashes: Sequence[bytes], *, hasher: Hasher = SHA256) -> list[Sequence[bytes]]:
    """Every level of the tree, leaves first, root last (a one-element level); build once, then
    read the root and any number of audit paths with :func:`path_from_levels`."""
    if not leaf_hashes:
        return [[hasher.empty_root()]]
    return _levels(leaf_hashes, hasher)


def path_from_levels(levels: Sequence[Sequence[bytes]], index: int) -> list[bytes]:
    """The audit path of leaf ``index`` from :func:`tree_levels` (as ``inclusion_proof``)."""
    if not 0 <= index < len(levels[0]):
        raise ProofError(f"index {index} is outside a tree of size {len(levels[0])}")
    return _path_from_levels(levels, index)


def inclusion_proofs(leaf_hashes: Sequence[bytes], *, hasher: Hasher = SHA256) -> list[list[bytes]]:
    """Audit paths for all leaves: O(n log n), where n ``inclusion_proof`` calls are O(n^2)."""
    levels = _levels(leaf_hashes, hasher)
    return [_path_from_levels(levels, i) for i in range(len(leaf_hashes))]


def compact_append(
    frontier: Sequence[bytes], size: int, leaf: bytes, *, hasher: Hasher = SHA256
) -> list[bytes]:
    """Append one leaf hash to a compact range of a ``size``-leaf tree; return the new range.

    A compact range (the "frontier") holds the roots of the perfect subtrees that make up the
    tree, largest first, one per set bit of ``size``. It lets a log of any length grow and
    report its root in O(log n) hashes, so sealing never rereads old leaves.
    """
    if len(frontier) != size.bit_count():
        raise ProofError(
            f"a compact range of size {size} has {size.bit_count()} hashes, not {len(frontier)}"
        )
    nodes = list(frontier)
    node = leaf
    # Each trailing 1 bit of size is a perfect subtree the new leaf completes and merges with.
    while size & 1:
        node = hasher.hash_children(nodes.pop(), node)
        size >>= 1
    nodes.append(node)
    return nodes


def compact_root(frontier: Sequence[bytes], *, hasher: Hasher = SHA256) -> bytes:
    """The Merkle Tree Hash of the tree whose compact range is ``frontier``."""
    if not frontier:
        return hasher.empty_root()
    node = frontier[-1]
    for left in reversed(frontier[:-1]):
        node = hasher.hash_children(left, node)
    return node


# --------------------------------------------------------------------------------------------
# Node arithmetic: proofs named as stored subtrees, for a store that keeps a log's interior nodes
# and serves proofs in O(log n) lookups instead of rereading every leaf.

NodeId = tuple[int, int]
"""``(level, idx)``: the perfect subtree over leaves ``[idx << level, (idx + 1) << level)``."""


def compact_append_nodes(
    frontier: Sequence[bytes], size: int, leaf: bytes, *, hasher: Hasher = SHA256
) -> tuple[list[bytes], list[tuple[int, int, bytes]]]:
    """Append ``leaf`` (a leaf hash) at index ``size``; return the new compact range and every
    perfect subtree the append completes, as ``(level, idx, hash)``, the leaf first.

    The final frontier is :func:`compact_append`'s; the nodes are the same merges spelt out.
    """
    new_frontier = compact_append(frontier, size, leaf, hasher=hasher)
    nodes = [(0, size, leaf)]
    node, level, rest = leaf, 0, list(frontier)
    while (size >> level) & 1:
        node = hasher.hash_children(rest.pop(), node)
        level += 1
        nodes.append((level, size >> level, node))
    if node != new_frontier[-1]:  # pragma: no cover - two spellings of one algorithm
        raise ProofError("compact_append_nodes disagrees with compact_append")
    return new_frontier, nodes


def range_nodes(lo: int, hi: int) -> list[NodeId]:
    """Leaves ``[lo, hi)`` as aligned perfect subtrees, largest (leftmost) first.

    This is the RFC 9162 shape of any subtree of a tree: each starts at a multiple of a power
    of two at least as large as itself. Its root is :func:`compact_root` of their hashes.
    """
    nodes = []
    while lo < hi:
        level = (hi - lo).bit_length() - 1
        while lo % (1 << level):
            level -= 1
        nodes.append((level, lo >> level))
        lo += 1 << level
    return nodes


def inclusion_nodes(index: int, size: int) -> list[list[NodeId]]:
    """The inclusion proof of leaf ``index`` in a ``size``-leaf tree (RFC 9162 section 2.1.3.1),
    bottom-up, each element given as the perfect subtrees whose :func:`compact_root` it is.

    Requires ``0 <= index < size`` (``ProofError`` otherwise).
    """
    if not 0 <= index < size:
        raise ProofError(f"index {index} is outside a tree of size {size}")
    path: list[list[NodeId]] = []
    lo, n, m = 0, size, index
    while n > 1:
        k = _largest_power_of_two_below(n)
        if m < k:
            path.append(range_nodes(lo + k, lo + n))
            n = k
        else:
            path.append(range_nodes(lo, lo + k))
            lo, n, m = lo + k, n - k, m - k
    path.reverse()
    return path


def consistency_nodes(old_size: int, new_size: int) -> list[list[NodeId]]:
    """The RFC 9162 section 2.1.4.1 consistency proof from ``old_size`` to ``new_size``, each
    element given as perfect subtrees (see :func:`inclusion_nodes`).

    Requires ``0 <= old_size <= new_size`` (``ProofError`` otherwise).
    """
    if not 0 <= old_size <= new_size:
        raise ProofError(f"old size {old_size} is outside [0, {new_size}]")
    if old_size in (0, new_size):
        return []

    def sub(m: int, lo: int, n: int, complete: bool) -> list[list[NodeId]]:
        if m == n:
            return [] if complete else [range_nodes(lo, lo + n)]
        k = _largest_power_of_two_below(n)
        if m <= k:
            return [*sub(m, lo, k, complete), range_nodes(lo + k, lo + n)]
        return [*sub(m - k, lo + k, n - k, False), range_nodes(lo, lo + k)]

    return sub(old_size, 0, new_size, True)


def _largest_power_of_two_below(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


def _subproof(
    old_size: int, leaves: Sequence[bytes], complete: bool, hasher: Hasher
) -> list[bytes]:
    # RFC 9162 section 2.1.4.1, SUBPROOF(m, D[n], b).
    n = len(leaves)
    if old_size == n:
        return [] if complete else [root(leaves, hasher=hasher)]
    k = _largest_power_of_two_below(n)
    if old_size <= k:
        return [*_subproof(old_size, leaves[:k], complete, hasher), root(leaves[k:], hasher=hasher)]
    return [*_subproof(old_size - k, leaves[k:], False, hasher), root(leaves[:k], hasher=hasher)]


def consistency_proof(
    leaf_hashes: Sequence[bytes], old_size: int, *, hasher: Hasher = SHA256
) -> list[bytes]:
    """The RFC 9162 consistency proof from the tree's first ``old_size`` leaves to all of them.

    The proof is empty when ``old_size`` is 0 or equals the size. Raises ``ProofError`` when
    ``old_size`` is negative or larger than the tree.
    """
    new_size = len(leaf_hashes)
    if not 0 <= old_size <= new_size:
        raise ProofError(f"old size {old_size} is outside [0, {new_size}]")
    if old_size in (0, new_size):
        return []
    return _subproof(old_size, leaf_hashes, True, hasher)


def _check_hash(value: bytes, what: str, hasher: Hasher) -> None:
    if not isinstance(value, bytes | bytearray) or len(value) != hasher.digest_size:
        size = len(value) if isinstance(value, bytes | bytearray) else type(value).__name__
        raise ProofError(f"{what} must be {hasher.digest_size} bytes, got {size}")


def _check_proof(proof: Sequence[bytes], hasher: Hasher) -> None:
    if len(proof) > MAX_PROOF_LENGTH:
        raise ProofError(f"proof has {len(proof)} hashes, more than any tree needs")
    for i, p in enumerate(proof):
        _check_hash(p, f"proof[{i}]", hasher)


def _mismatch(what: str, expected: bytes, calculated: bytes) -> ProofError:
    return ProofError(
        f"{what} mismatch: expected {expected.hex()}, calculated {calculated.hex()}",
        reason=Reason.ROOT_MISMATCH,
    )


def root_from_inclusion_proof(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], *, hasher: Hasher = SHA256
) -> bytes:
    """The root that ``proof`` leads to from ``leaf`` at ``index`` (RFC 9162 section 2.1.3.2).

    Requires ``0 <= index < size``, 32-byte hashes and a proof of exactly the right length;
    raises ``ProofError`` otherwise.
    """
    if not 0 <= index < size:
        raise ProofError(f"index {index} is outside a tree of size {size}")
    _check_hash(leaf, "leaf hash", hasher)
    _check_proof(proof, hasher)
    # Steps 1-5 of RFC 9162 section 2.1.3.2, with fn/sn as the RFC names them.
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError(f"inclusion proof is too long ({len(proof)} hashes)")
        if fn & 1 or fn == sn:
            r = hasher.hash_children(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = hasher.hash_children(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"inclusion proof is too short ({len(proof)} hashes)")
    return r


def verify_inclusion(
    leaf_hash: bytes,
    index: int,
    size: int,
    proof: Sequence[bytes],
    root: bytes,
    *,
    hasher: Hasher = SHA256,
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the ``size``-leaf tree with ``root``.

    Returns None; raises ``ProofError`` (reason ``root_mismatch`` or ``proof_malformed``).
    """
    _check_hash(root, "root", hasher)
    calculated = root_from_inclusion_proof(leaf_hash, index, size, proof, hasher=hasher)
    if calculated != root:
        raise _mismatch("inclusion root", root, calculated)


def root_from_consistency_proof(
    old_size: int,
    new_size: int,
    proof: Sequence[bytes],
    old_root: bytes,
    *,
    hasher: Hasher = SHA256,
) -> bytes:
    """The new root that a consistency proof implies, after checking it reproduces ``old_root``.

    Requires ``0 < old_size < new_size``; raises ``ProofError`` on any malformed proof or when
    the proof does not lead back to ``old_root``.
    """
    if not 0 < old_size < new_size:
        raise ProofError(f"need 0 < old size < new size, got {old_size} and {new_size}")
    _check_hash(old_root, "old root", hasher)
    _check_proof(proof, hasher)
    if not proof:
        raise ProofError("empty consistency proof between different sizes")
    # RFC 9162 section 2.1.4.2, steps 1-7.
    nodes = list(proof)
    if old_size & (old_size - 1) == 0:
        # A power-of-two old tree is a complete subtree; its root is the implicit first node.
        nodes.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = nodes[0]
    for c in nodes[1:]:
        if sn == 0:
            raise ProofError(f"consistency proof is too long ({len(proof)} hashes)")
        if fn & 1 or fn == sn:
            fr = hasher.hash_children(c, fr)
            sr = hasher.hash_children(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = hasher.hash_children(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"consistency proof is too short ({len(proof)} hashes)")
    if fr != old_root:
        raise _mismatch("old root", old_root, fr)
    return sr


def verify_consistency(
    old_size: int,
    new_size: int,
    proof: Sequence[bytes],
    old_root: bytes,
    new_root: bytes,
    *,
    hasher: Hasher = SHA256,
) -> None:
    """Check that the ``old_size`` tree with ``old_root`` is a prefix of the ``new_size`` one.

    An empty old tree (whose root must be the empty root) is consistent with every tree, and
    only with an empty proof. Returns None; raises ``ProofError``.
    """
    if old_size < 0 or new_size < 0:
        raise ProofError(f"negative tree size ({old_size}, {new_size})")
    if old_size > new_size:
        raise ProofError(f"old size {old_size} is larger than new size {new_size}")
    _check_hash(old_root, "old root", hasher)
    _check_hash(new_root, "new root", hasher)
    if old_size == new_size:
        if proof:
            raise ProofError("consistency proof between equal sizes must be empty")
        if old_root != new_root:
            raise _mismatch("root", old_root, new_root)
        return
    if old_size == 0:
        if proof:
            raise ProofError("consistency proof from an empty tree must be empty")
        if old_root != hasher.empty_root():
            raise _mismatch("empty tree root", hasher.empty_root(), old_root)
        return
    calculated = root_from_consistency_proof(old_size, new_size, proof, old_root, hasher=hasher)
    if calculated != new_root:
        raise _mismatch("new root", new_root, calculated)
