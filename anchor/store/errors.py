"""The store's errors and the one place asyncpg/socket failures become them.

Reasons are listed in :mod:`anchor.store`'s docstring. :func:`translate` is the edge: every
asyncpg or socket failure a store query meets goes through it (via the connection helper of
:class:`~anchor.store.connection.StoreBase`), so callers only ever see :class:`StoreError`.
"""

from __future__ import annotations

import asyncpg

from anchor.device_id import DeviceIdError, check_device_id, check_new_device_id
from anchor.errors import AnchorError, Reason

__all__ = ["RegistryError", "StoreError", "checked_device_id", "conflict", "not_found", "translate"]

_RETRYABLE_UNAVAILABLE = ("08", "53", "57", "58")  # connection, resources, shutdown, system I/O
_RETRYABLE_BUSY = ("40", "55")  # serialization/deadlock, lock not available


class StoreError(AnchorError):
    """A storage operation failed; ``reason`` says how (listed in :mod:`anchor.store`)."""

    reason = Reason.DB_ERROR

    @property
    def retryable(self) -> bool:
        """True when the same call may succeed later (the database was down or busy)."""
        return self.reason in (Reason.DB_UNAVAILABLE, Reason.DB_BUSY)


class RegistryError(AnchorError):
    """A reading cannot be checked with a registered key.

    Reasons: ``device_revoked`` (received at or after the revocation), ``unknown_kid`` (the
    device has no key with this kid), ``key_rotated`` (the kid is a rotated-out key of the
    device and the reading's ``ts`` is not before its ``valid_until``).
    """

    reason = Reason.UNKNOWN_KID


_CLIENT_DATA_ERRORS = (
    asyncpg.exceptions.ClientConfigurationError,
    asyncpg.exceptions._base.DataError,
)


def translate(exc: BaseException, what: str) -> StoreError | None:
    """The StoreError for an asyncpg/socket failure, or None for anything else (a bug)."""
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        message = f"{what}: {type(exc).__name__} ({state}): {exc}"
        if isinstance(exc, asyncpg.UniqueViolationError):
            return StoreError(message, reason=Reason.CONFLICT)
        if state[:2] in _RETRYABLE_UNAVAILABLE:
            return StoreError(message, reason=Reason.DB_UNAVAILABLE)
        if state[:2] in _RETRYABLE_BUSY:
            return StoreError(message, reason=Reason.DB_BUSY)
        return StoreError(message, reason=Reason.DB_ERROR)
    # Client-side refusals of a value or a setting: retrying the same call cannot help.
    if isinstance(exc, _CLIENT_DATA_ERRORS):
        return StoreError(f"{what}: {exc}", reason=Reason.DB_ERROR)
    if isinstance(exc, asyncpg.InterfaceError):
        # "connection is closed", "pool is closing", ...: the connection is gone.
        return StoreError(f"{what}: {exc}", reason=Reason.DB_UNAVAILABLE)
    if isinstance(exc, OSError | TimeoutError):
        return StoreError(f"{what}: database unreachable: {exc!r}", reason=Reason.DB_UNAVAILABLE)
    if isinstance(exc, asyncpg.InternalClientError):
        return StoreError(f"{what}: {exc}", reason=Reason.DB_ERROR)
    return None


def not_found(what: str) -> StoreError:
    return StoreError(what, reason=Reason.NOT_FOUND)


def conflict(what: str) -> StoreError:
    return StoreError(what, reason=Reason.CONFLICT)


def checked_device_id(device_id: object, *, new: bool = False) -> str:
    """The id, or ``StoreError`` ``device_id_invalid`` (or, with ``new``, for a registration,
    ``device_id_reserved``): the rule is :mod:`anchor.device_id`'s, in one place."""
    try:
        return check_new_device_id(device_id) if new else check_device_id(device_id)
    except DeviceIdError as exc:
        raise StoreError(exc.detail, reason=exc.reason) from None
