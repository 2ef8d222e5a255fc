"""Chainpoint v2 export of a batch: a compatibility view, so that Chainpoint tooling can check it.

Pure: bytes and dicts in, JSON-ready dicts out; no I/O.

Why a second tree
-----------------
A Chainpoint v2 proof (``"@context": "https://w3id.org/chainpoint/v2"``, ``"type":
"ChainpointSHA256v2"``) is a list of steps ``{"left": hex}`` / ``{"right": hex}``, and every
step hashes ``SHA-256(left || right)`` (see ``validate_proof`` in the reference Python tool,
``merkletools``). There is no step that adds a byte, so a v2 proof cannot express the ``0x01``
prefix that RFC 9162 puts in front of every interior node. No v2 proof leads to a cityanchor
batch root.

So the export builds a second tree over the *same leaves* with the *same shape*: its leaves
are the batch's RFC 9162 leaf hashes (``SHA-256(0x00 || envelope)``, used as Chainpoint
``targetHash`` values unchanged), neighbours are paired and an odd last node is carried up
unhashed (which is both merkletools' rule and RFC 9162's "split at the largest power of two"
shape), but interior nodes are plain ``SHA-256(left || right)``.

**The Chainpoint ``merkleRoot`` is NOT the anchored root.** Receipts and the chain commit to
the RFC 9162 batch root (through the batch log, whose root is what the AnchorRegistry stores);
nothing on chain commits to ``merkleRoot``. It is recomputed from the batch on demand and
proves only that ``targetHash`` is among these leaves. What ties the document to the anchored
data is the namespaced ``"cityanchor"`` extension: the batch id and size, the leaf index, the
RFC 9162 batch root and the leaf's RFC 9162 inclusion path, which anyone can check with
``anchor.merkle.verify_inclusion`` and then follow with the receipt's ``log`` path and anchor.
The log leaf is ``H(0x00 || uint64_be(batch size) || batch root)`` (receipt v2), so that log
path binds the batch size; ``batch_id`` is the operator's label for the batch, bound by
nothing (a v2 receipt names its batch by ``log.index`` instead).

Consequences a reader of these documents must know:

* Chainpoint ``anchors`` entries claim that ``merkleRoot`` itself was written to that source.
  For cityanchor that is never literally true (the transaction carries the log root), so a
  Chainpoint tool that opens the transaction and looks for ``merkleRoot`` will not find it.
  The ``anchors`` given to :func:`chainpoint_proofs` are copied verbatim; choose them knowing
  this, or leave them empty and point to the receipt instead.
* The plain-SHA-256 tree has no domain separation and does not bind the tree size, so on its
  own it is weaker than the RFC 9162 path; anything that matters should check the extension.
* Only SHA-256 batches (``rfc9162-sha256``) can be exported: Chainpoint v2 has no SM3 type.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from anchor import merkle
from anchor.errors import ProofError, Reason, UsageError

__all__ = [
    "CHAINPOINT_CONTEXT",
    "CHAINPOINT_TYPE",
    "EXTENSION_KEY",
    "chainpoint_proofs",
    "chainpoint_tree_root",
]

CHAINPOINT_CONTEXT = "https://w3id.org/chainpoint/v2"
CHAINPOINT_TYPE = "ChainpointSHA256v2"
EXTENSION_KEY = "cityanchor"
"""Key of the namespaced extension object in each exported document."""

_HASH_SCHEME = merkle.SHA256.name
_HASH_SIZE = 32


def _check_leaves(leaf_hashes: Sequence[bytes]) -> None:
    if not leaf_hashes:
        raise ProofError("a Chainpoint tree needs at least one leaf")
    for i, h in enumerate(leaf_hashes):
        if not isinstance(h, bytes) or len(h) != _HASH_SIZE:
            raise ProofError(f"leaf_hashes[{i}] is not a {_HASH_SIZE}-byte hash")


def _chainpoint_levels(leaf_hashes: Sequence[bytes]) -> list[Sequence[bytes]]:
    # Level 0 is the leaves; each next level pairs neighbours with plain SHA-256(left || right)
    # and carries an odd last node up unchanged, exactly as merkletools' make_tree does.
    levels: list[Sequence[bytes]] = [leaf_hashes]
    while len(levels[-1]) > 1:
        level = levels[-1]
        up = [hashlib.sha256(level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            up.append(level[-1])
        levels.append(up)
    return levels


def chainpoint_tree_root(leaf_hashes: Sequence[bytes]) -> bytes:
    """The Chainpoint (plain SHA-256) root over ``leaf_hashes``; NOT the RFC 9162 root.

    Raises ``ProofError`` (``proof_malformed``) for an empty list or a hash that is not 32 bytes.
    """
    _check_leaves(leaf_hashes)
    return _chainpoint_levels(leaf_hashes)[-1][0]


def _check_anchors(anchors: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, a in enumerate(anchors):
        if not isinstance(a.get("type"), str) or not isinstance(a.get("sourceId"), str):
            raise UsageError(f"anchors[{i}] needs string 'type' and 'sourceId' (Chainpoint v2)")
        out.append(dict(a))
    return out


def chainpoint_proofs(
    leaf_hashes: Sequence[bytes],
    *,
    batch_id: int,
    rfc9162_root: bytes,
    anchors: Sequence[Mapping[str, Any]] = (),
) -> list[dict[str, Any]]:
    """One Chainpoint v2 proof document per leaf of a sealed SHA-256 batch, in leaf order.

    ``leaf_hashes`` are the batch's RFC 9162 leaf hashes in batch order and ``rfc9162_root``
    the batch root the receipts commit to; it is recomputed here and must match, so a document
    can never name a root its leaves do not have. ``anchors`` (``{"type", "sourceId", ...}``)
    are copied into every document; see the module docstring for what they do and do not mean.

    Raises ``ProofError``: ``proof_malformed`` for an empty batch or a hash that is not 32
    bytes, ``root_mismatch`` when ``rfc9162_root`` is not the root of ``leaf_hashes``.
    Raises ``UsageError`` for an anchor without string ``type`` and ``sourceId``.
    """
    _check_leaves(leaf_hashes)
    if not isinstance(rfc9162_root, bytes) or len(rfc9162_root) != _HASH_SIZE:
        raise ProofError(f"rfc9162_root is not a {_HASH_SIZE}-byte hash")
    if isinstance(batch_id, bool) or not isinstance(batch_id, int) or batch_id < 0:
        raise UsageError(f"batch_id must be a non-negative integer, got {batch_id!r}")
    calculated = merkle.root(leaf_hashes)
    if calculated != rfc9162_root:
        raise ProofError(
            f"rfc9162_root mismatch: expected {rfc9162_root.hex()}, calculated {calculated.hex()}",
            reason=Reason.ROOT_MISMATCH,
        )
    anchor_list = _check_anchors(anchors)

    levels = _chainpoint_levels(leaf_hashes)
    hex_levels = [[h.hex() for h in level] for level in levels]
    merkle_root = hex_levels[-1][0]
    rfc_paths = merkle.inclusion_proofs(leaf_hashes)
    size = len(leaf_hashes)

    docs = []
    for index in range(size):
        steps = []
        i = index
        for level in hex_levels[:-1]:
            sibling = i ^ 1
            # No sibling: this node is carried up unhashed, and the proof has no step here.
            if sibling < len(level):
                steps.append({"left" if i & 1 else "right": level[sibling]})
            i >>= 1
        docs.append(
            {
                "@context": CHAINPOINT_CONTEXT,
                "type": CHAINPOINT_TYPE,
                "targetHash": hex_levels[0][index],
                "merkleRoot": merkle_root,
                "proof": steps,
                "anchors": [dict(a) for a in anchor_list],
                EXTENSION_KEY: {
                    "hash_scheme": _HASH_SCHEME,
                    "batch_id": batch_id,
                    "batch_size": size,
                    "leaf_index": index,
                    "rfc9162_root": rfc9162_root.hex(),
                    "rfc9162_path": [p.hex() for p in rfc_paths[index]],
                    "merkle_root_is_anchored": False,
                },
            }
        )
    return docs
