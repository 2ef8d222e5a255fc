"""Small file helpers for key material, inputs and outputs: bounded reads of the files a user
names, atomic and durable writes (:func:`write_file_atomic`, the one implementation in the
tree), private files at mode 0600."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

from anchor.checkpoint import NoteSigner, NoteVerifier
from anchor.errors import UsageError

__all__ = [
    "KEY_FILE_LIMIT",
    "load_operator_signer",
    "load_operator_verifier",
    "open_regular_nonblocking",
    "read_user_file",
    "write_file_atomic",
    "write_private_file",
    "write_public_file",
]

KEY_FILE_LIMIT = 64 * 1024
"""Cap for small files: keys, tokens, passwords, vkeys."""

_READ_CHUNK = 1 << 16
# Filesystems that cannot hard-link (some FUSE, SMB and FAT mounts) answer with one of these.
_NO_LINK_ERRNOS = frozenset(
    {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV}
)
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular_nonblocking(path: str | os.PathLike[str]) -> tuple[int, os.stat_result]:
    """Open ``path`` for reading if it is a regular file; return (descriptor, its fstat).

    Raises ``OSError`` as ``os.open`` does, and ``ValueError`` naming
    what the path is when it is not a regular file (a FIFO, a device, a directory, a socket).
    ``O_NONBLOCK`` makes opening a FIFO with no writer return at once instead of waiting
    forever, and the verdict comes from ``fstat`` of the opened descriptor, so a name swapped
    between a check and the open cannot slip a FIFO or ``/dev/zero`` past it. A ``stat`` first
    spares opening device nodes at all (opening some has side effects) in the common case.
    """
    # Follows symlinks, like open(): a link to a regular file (a Kubernetes secret) is fine.
    before = os.stat(path)
    if not stat.S_ISREG(before.st_mode):
        raise ValueError(_kind(before.st_mode))
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(_kind(st.st_mode))
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_user_file(path: str | os.PathLike[str], *, what: str, limit: int) -> bytes:
    """The bytes of a file a user named (a receipt, a key, a proof, a token...), at most
    ``limit`` of them; raises ``UsageError`` (exit status 2 in the CLI) when it cannot be read,
    is not a regular file or is larger than ``limit``.

    Never reads more than ``limit + 1`` bytes, whatever the file claims or becomes (``/proc``
    files report size 0; a file may grow while read), and never blocks on a FIFO.
    """
    name = os.fspath(path)
    try:
        fd, st = open_regular_nonblocking(path)
    except ValueError as exc:
        raise UsageError(f"cannot read {what} {name}: it is {exc}, not a regular file") from None
    except OSError as exc:
        raise UsageError(f"cannot read {what} {name}: {exc.strerror or exc}") from exc
    too_large = f"{what} {name} is larger than {limit} bytes"
    try:
        if st.st_size > limit:
            raise UsageError(too_large)
        chunks: list[bytes] = []
        got = 0
        while got <= limit:
            chunk = os.read(fd, min(_READ_CHUNK, limit + 1 - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    except OSError as exc:
        raise UsageError(f"cannot read {what} {name}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    if got > limit:
        raise UsageError(too_large)
    return b"".join(chunks)


def _fsync_directory(directory: Path) -> None:
    # Makes the new directory entry itself durable; without it a power cut can lose the name
    # even though the file's bytes were fsynced. Not every platform can open a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _create_exclusively(path: Path, data: bytes, mode: int) -> None:
    # No hard links on this filesystem: create the final name O_EXCL instead. Still never
    # readable by others and never clobbering, only not crash-atomic.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_file_atomic(
    path: str | os.PathLike[str],
    data: bytes,
    *,
    mode: int = 0o600,
    replace: bool = True,
    owner: tuple[int, int] | None = None,
) -> Path:
    """Write ``data`` to ``path`` all or nothing, durably, with ``mode`` from the first byte.

    The bytes go to a temporary file beside ``path`` (created ``O_EXCL``, given ``mode``, and
    ``owner`` as (uid, gid) when set, before anything is written), which is fsynced and then
    renamed over ``path``; the directory is fsynced too, so after a return a crash or power cut
    leaves the whole new file, and before it the whole old one (or none), never a mix. Missing
    parent directories are created.

    With ``replace=False`` an existing ``path`` is left alone and ``FileExistsError`` raised
    (a hard link, unlike a rename, fails when the name exists: no check-then-write race); on
    filesystems without hard links the file is created ``O_EXCL`` instead. Raises ``OSError``
    as the filesystem does; no temporary file is left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        if owner is not None:
            os.fchown(fd, *owner)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise
            except OSError as exc:
                if exc.errno not in _NO_LINK_ERRNOS:
                    raise
                _create_exclusively(path, data, mode)
            os.unlink(tmp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


def write_private_file(path: Path, data: bytes, *, replace: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`write_file_atomic`), readable by the owner
    only (0600).

    With ``replace=False`` an existing ``path`` is left alone and ``FileExistsError`` raised.
    """
    return write_file_atomic(path, data, mode=0o600, replace=replace)


def write_public_file(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`write_file_atomic`), world-readable
    (0644)."""
    return write_file_atomic(path, data, mode=0o644)


def load_operator_signer(path: str) -> NoteSigner:
    """Read the operator's checkpoint signing key (a C2SP note skey file)."""
    if not Path(path).exists():
        raise UsageError(
            f"cannot read the operator key {path}: no such file "
            "(create one with `cityanchor keygen --operator`)"
        )
    raw = read_user_file(path, what="the operator key", limit=KEY_FILE_LIMIT)
    return NoteSigner.from_skey(raw.decode("utf-8", "replace").strip())


def load_operator_verifier(path: str) -> NoteVerifier:
    """The operator's checkpoint verifier key from ``path``: a note vkey file (the public half,
    all that a process which only checks checkpoints, like the API, should be given), or
    the skey file itself, whose verifier is derived."""
    if not Path(path).exists():
        raise UsageError(
            f"cannot read the operator key {path}: no such file "
            "(create one with `cityanchor keygen --operator`)"
        )
    text = read_user_file(path, what="the operator key", limit=KEY_FILE_LIMIT)
    key = text.decode("utf-8", "replace").strip()
    if key.startswith("PRIVATE+KEY+"):
        return NoteSigner.from_skey(key).verifier
    return NoteVerifier.from_vkey(key)
