"""A device's key pair on disk: generate it, write it safely, load it back.

Layout in a key directory, for a device ``D``::

    D.key.pem   private key, PKCS#8 PEM, mode 0600 -- never leaves the device
    D.jwk       public key as a JWK (RFC 7517 / RFC 8037), what the registry is given
    D.pub.pem   public key as SubjectPublicKeyInfo PEM, for tools that want PEM

The private file is written so that no other user can ever read it, not even for an instant,
and so that a crash never leaves a half-written key behind: the bytes go to a temporary file
created with mode 0600 (``mkstemp`` opens it ``O_CREAT | O_EXCL``), are fsynced, and the file
is then hard-linked to its final name. A link, unlike a rename, fails when the name exists, so
generating a key never silently replaces a device's identity.

Loading refuses a private key file that group or others may read (reason
``key_file_permissions``), as OpenSSH does: a key that was exposed must be treated as leaked.

Ed25519 is the default. P-256 is for devices whose secure element (an ATECC608, a SIM/eSIM
applet) only does ECDSA P-256; such devices keep the key inside the element, and this module is
then only used by simulators and tests.

Example::

    files = generate_device_key(Path("keys"), "aq-nanshan-0001")
    key = load_private_key(files.private_pem)
    public = load_public_jwk(files.public_jwk)
"""

from __future__ import annotations

import errno
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from anchor.device_id import DEVICE_ID_PATTERN, DEVICE_ID_RE
from anchor.errors import AnchorError, KeyMaterialError, Reason
from anchor.host.files import open_regular_nonblocking, write_private_file, write_public_file
from anchor.keys import KEY_TYPES, PrivateKey, PublicKey

__all__ = [
    "KEY_TYPES",
    "MAX_KEY_FILE_SIZE",
    "DeviceKeyFiles",
    "KeyMaterialError",
    "device_key_files",
    "generate_device_key",
    "load_private_key",
    "load_public_jwk",
    "load_public_pem",
]

MAX_KEY_FILE_SIZE = 64 * 1024
"""Any key file larger than this is refused unread: real ones are well under 1 KiB."""

# DESIGN wire format: the registry id. It is also what keeps a device id from naming a path
# outside the key directory ('/' and NUL are not in the set).
_DEVICE_ID = DEVICE_ID_RE  # the one rule: anchor.device_id
# Filesystems that cannot hard-link (some FUSE, SMB and FAT mounts) answer with one of these.
_NO_LINK_ERRNOS = frozenset(
    {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV}
)


@dataclass(frozen=True, slots=True)
class DeviceKeyFiles:
    """Where one device's key files live, and the key's identity."""

    device_id: str
    private_pem: Path
    public_jwk: Path
    public_pem: Path
    key_type: str = ""
    kid: bytes = b""
    """RFC 7638 SHA-256 thumbprint of the public key (32 bytes); empty if not yet known."""


def _check_device_id(device_id: str) -> None:
    if not isinstance(device_id, str) or not _DEVICE_ID.fullmatch(device_id):
        raise KeyMaterialError(
            f"device id {device_id!r} is not {DEVICE_ID_PATTERN}", reason=Reason.DEVICE_ID_INVALID
        )


def device_key_files(directory: Path | str, device_id: str) -> DeviceKeyFiles:
    """The paths of ``device_id``'s key files in ``directory`` (nothing is read or created).

    Raises ``KeyMaterialError`` (``device_id_invalid``) for an id outside the registry's syntax.
    """
    _check_device_id(device_id)
    d = Path(directory)
    return DeviceKeyFiles(
        device_id=device_id,
        private_pem=d / f"{device_id}.key.pem",
        public_jwk=d / f"{device_id}.jwk",
        public_pem=d / f"{device_id}.pub.pem",
    )


def generate_device_key(
    directory: Path | str, device_id: str, key_type: str = "Ed25519"
) -> DeviceKeyFiles:
    """Generate a key pair for ``device_id`` and write its three files into ``directory``.

    ``directory`` is created (mode 0700) if missing. ``key_type`` is ``"Ed25519"`` or
    ``"P-256"``. Raises ``KeyMaterialError`` with reason ``key_file_exists`` when the device
    already has a private key there (a device's identity is never overwritten; delete the
    file deliberately to rotate), ``device_id_invalid``, ``key_type_unsupported``, or
    ``key_file_unwritable`` when the filesystem refuses.
    """
    if key_type not in KEY_TYPES:
        raise KeyMaterialError(
            f"key type {key_type!r} is not one of {', '.join(KEY_TYPES)}",
            reason=Reason.KEY_TYPE_UNSUPPORTED,
        )
    files = device_key_files(directory, device_id)
    key = PrivateKey.generate(key_type)
    public = key.public_key
    jwk_text = json.dumps(public.to_jwk(), sort_keys=True, indent=2) + "\n"
    try:
        files.private_pem.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # The private key goes first: if it cannot be created, no public file claims a key
        # that does not exist.
        write_private_file(files.private_pem, key.to_pem(), replace=False)
        write_public_file(files.public_jwk, jwk_text.encode())
        write_public_file(files.public_pem, public.to_pem())
    except FileExistsError:
        raise KeyMaterialError(
            f"{files.private_pem} already exists; refusing to replace a device's key",
            reason=Reason.KEY_FILE_EXISTS,
        ) from None
    except OSError as exc:
        raise KeyMaterialError(
            f"cannot write key files in {files.private_pem.parent}: {exc.strerror or exc}",
            reason=Reason.KEY_FILE_UNWRITABLE,
        ) from exc
    return DeviceKeyFiles(
        device_id=files.device_id,
        private_pem=files.private_pem,
        public_jwk=files.public_jwk,
        public_pem=files.public_pem,
        key_type=key_type,
        kid=public.kid,
    )


def _read_key_file(path: Path, *, private: bool) -> bytes:
    try:
        # Only a regular file is opened for good, without blocking on a FIFO; the verdict is
        # fstat's on the open descriptor: the very file we read, even through a symlink (as
        # Kubernetes secret volumes use) and even if the name is swapped meanwhile.
        fd, st = open_regular_nonblocking(path)
    except ValueError as exc:
        raise KeyMaterialError(
            f"cannot read key file {path}: it is {exc}, not a regular file",
            reason=Reason.KEY_FILE_UNREADABLE,
        ) from None
    except OSError as exc:
        raise KeyMaterialError(
            f"cannot open key file {path}: {exc.strerror or exc}", reason=Reason.KEY_FILE_UNREADABLE
        ) from exc
    with os.fdopen(fd, "rb") as f:
        if private and os.name == "posix" and st.st_mode & 0o077:
            raise KeyMaterialError(
                f"private key {path} has mode {stat.S_IMODE(st.st_mode):04o}: group or others "
                f"can access it, so it must be considered leaked; if it was not, "
                f"run 'chmod 600 {path}'",
                reason=Reason.KEY_FILE_PERMISSIONS,
            )
        data = b"" if st.st_size > MAX_KEY_FILE_SIZE else f.read(MAX_KEY_FILE_SIZE + 1)
    if st.st_size > MAX_KEY_FILE_SIZE or len(data) > MAX_KEY_FILE_SIZE:
        raise KeyMaterialError(
            f"{path} is larger than {MAX_KEY_FILE_SIZE} bytes; not a key file",
            reason=Reason.KEY_INVALID,
        )
    return data


def load_private_key(path: Path | str) -> PrivateKey:
    """Load a device's PKCS#8 PEM private key, refusing one that others can read.

    Raises ``KeyMaterialError``: ``key_file_permissions`` (the file's mode grants group or
    others any access), ``key_file_unreadable`` (missing, not a regular file) or
    ``key_invalid`` (not a PEM private key of a supported type).
    """
    p = Path(path)
    data = _read_key_file(p, private=True)
    try:
        return PrivateKey.from_pem(data)
    except AnchorError:
        raise
    except (ValueError, TypeError) as exc:
        raise KeyMaterialError(f"{p} is not a supported private key: {exc}") from exc


def load_public_jwk(path: Path | str) -> PublicKey:
    """Load a device's public key from a JWK file (``{device_id}.jwk``).

    Raises ``KeyMaterialError``: ``key_file_unreadable`` or ``key_invalid`` (not a JSON object,
    or not an Ed25519 / P-256 public JWK).
    """
    p = Path(path)
    data = _read_key_file(p, private=False)
    try:
        jwk = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KeyMaterialError(f"{p} is not JSON: {exc}") from exc
    if not isinstance(jwk, dict):
        raise KeyMaterialError(f"{p} holds a JSON {type(jwk).__name__}, not a JWK object")
    try:
        return PublicKey.from_jwk(jwk)
    except AnchorError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise KeyMaterialError(f"{p} is not a supported public JWK: {exc}") from exc


def load_public_pem(path: Path | str) -> PublicKey:
    """Load a device's public key from a SubjectPublicKeyInfo PEM file.

    Raises ``KeyMaterialError`` (``key_file_unreadable`` or ``key_invalid``).
    """
    p = Path(path)
    data = _read_key_file(p, private=False)
    try:
        return PublicKey.from_pem(data)
    except AnchorError:
        raise
    except (ValueError, TypeError) as exc:
        raise KeyMaterialError(f"{p} is not a supported public key: {exc}") from exc
