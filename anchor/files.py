"""Small file helpers for key material and outputs: atomic writes, private files at mode 0600."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["write_private_file", "write_public_file"]


def _atomic_write(path: Path, data: bytes, mode: int, *, replace: bool = True) -> Path:
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
        if replace:
            os.replace(tmp, path)
        else:
            # A link, unlike a rename, fails when the name exists (FileExistsError): no
            # check-then-write race can replace a file someone created meanwhile.
            os.link(tmp, path)
            os.unlink(tmp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_private_file(path: Path, data: bytes, *, replace: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically, readable by the owner only (0600).

    With ``replace=False`` an existing ``path`` is left alone and ``FileExistsError`` raised.
    """
    return _atomic_write(path, data, 0o600, replace=replace)


def write_public_file(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, world-readable (0644)."""
    return _atomic_write(path, data, 0o644)
