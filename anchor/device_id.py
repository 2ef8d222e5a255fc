"""The device-id rule, in one place (consensus-critical: envelopes, receipts and topics use it).

A device id is ``[A-Za-z0-9._-]{1,64}`` (DESIGN.md "Envelope wire format"). Every parser of an
envelope, a receipt, a topic or an API path uses :data:`DEVICE_ID_RE` / :func:`is_device_id`,
so the rule cannot drift between places. Changing it can invalidate receipts already issued.

*Registering* a new id is stricter (:func:`check_new_device_id`): some well-formed ids are
reserved, because they would mean something else where device ids end up:

* ``.`` and ``..``: path components (``devices/{id}.jwk`` files, ``/v1/devices/{id}`` URLs);
* any id starting with ``-``: read as an option (or as stdin, ``-``) by command-line tools;
* ``cityanchor`` and any id starting with ``cityanchor-``, ``cityanchor.`` or ``cityanchor_``
  (case-insensitive): the service's own broker logins and MQTT client ids (the ingestors'
  ``cityanchor-ingest`` login and ``cityanchor-{name}-{i}`` client ids, the
  ``cityanchor-admin`` login). A device's broker login and client id are its device id, so a
  device registered under such a name could log in as, or take over, an ingestor.

Pure: no I/O.
"""

from __future__ import annotations

import re

from anchor.errors import AnchorError, Reason

__all__ = [
    "DEVICE_ID_PATTERN",
    "DEVICE_ID_RE",
    "DeviceIdError",
    "check_device_id",
    "check_new_device_id",
    "is_device_id",
    "reserved_reason",
]

DEVICE_ID_PATTERN = "[A-Za-z0-9._-]{1,64}"
DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)

# The service's own namespace on the broker (logins, client ids); see the module docstring.
SERVICE_PREFIX = "cityanchor"
_SERVICE_NAME = re.compile(r"cityanchor(?:[-._].*)?", re.IGNORECASE | re.DOTALL)


class DeviceIdError(AnchorError):
    """A device id is malformed (``device_id_invalid``) or reserved (``device_id_reserved``)."""

    reason = Reason.DEVICE_ID_INVALID


def is_device_id(value: object) -> bool:
    """True when ``value`` is a string matching ``[A-Za-z0-9._-]{1,64}``."""
    return isinstance(value, str) and DEVICE_ID_RE.fullmatch(value) is not None


def check_device_id(value: object) -> str:
    """``value`` if it is a well-formed device id; else ``DeviceIdError`` (device_id_invalid)."""
    if not is_device_id(value):
        raise DeviceIdError(
            f"device id {ascii(value)[:80]} does not match {DEVICE_ID_PATTERN}",
            reason=Reason.DEVICE_ID_INVALID,
        )
    assert isinstance(value, str)
    return value


def reserved_reason(device_id: str) -> str | None:
    """Why a well-formed ``device_id`` may not be registered, or None when it may."""
    if device_id in (".", ".."):
        return "it is a path component"
    if device_id.startswith("-"):
        return "it would be read as a command-line option"
    if _SERVICE_NAME.fullmatch(device_id):
        return "names starting with 'cityanchor' are the service's own broker logins"
    return None


def check_new_device_id(value: object) -> str:
    """``value`` if it may be registered as a new device id.

    Raises ``DeviceIdError``: ``device_id_invalid`` (not ``[A-Za-z0-9._-]{1,64}``) or
    ``device_id_reserved`` (well-formed but reserved, see the module docstring).
    """
    device_id = check_device_id(value)
    why = reserved_reason(device_id)
    if why is not None:
        raise DeviceIdError(
            f"device id {device_id!r} is reserved: {why}", reason=Reason.DEVICE_ID_RESERVED
        )
    return device_id
