"""Small file helpers for key material and outputs: atomic writes, private files at mode 0600."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["write_private_file", "write_public_file"]


def _atomic_write(path: Path, data: bytes, mode: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary file gets its final mode before any byte is written, so a secret is never
    # readable by others, not even for an instant; rename makes the write all-or-nothing.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_private_file(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, readable by the owner only (0600)."""
    return _atomic_write(path, data, 0o600)


def write_public_file(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, world-readable (0644)."""
    return _atomic_write(path, data, 0o644)
