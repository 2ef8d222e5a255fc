"""Signature checks of the ingestor, run in the verify processes of its pool."""

from __future__ import annotations

import functools
from collections.abc import Sequence

from anchor.errors import AnchorError, Reason
from anchor.keys import PublicKey

__all__ = ["verify_chunk"]


@functools.lru_cache(maxsize=4096)
def _key(key_type: str, raw: bytes) -> PublicKey:
    return PublicKey(key_type, raw)


def verify_chunk(items: Sequence[tuple[bytes, bytes, str, bytes]]) -> list[Reason | None]:
    """Worker-process side: verify (signed_bytes, signature, key_type, key_raw) tuples.

    Returns, per item, None when the signature is valid or the reason code why not.
    """
    out: list[Reason | None] = []
    for signed, signature, key_type, key_raw in items:
        try:
            _key(key_type, key_raw).verify(signature, signed)
            out.append(None)
        except AnchorError as exc:
            out.append(exc.reason)
    return out
