"""The one JSON shape of a device record, shared by the HTTP API (``GET/POST /v1/devices``)
and the CLI (``cityanchor device list/show/register/... --json``).

``device_id``, ``district``, ``kind``, ``status``, ``registered_at``, ``revoked_at``,
``revoke_reason`` (times as ISO 8601), ``kid`` (lowercase hex of the 32-byte RFC 7638
thumbprint of the current key; hex everywhere a person or a script reads a kid), ``kid_b64url``
(the same bytes as envelope headers carry them), ``public_key_jwk`` (the current key) and
``keys`` (the whole key history, each with ``kid``, ``kid_b64url``, ``key_type``,
``public_key_jwk``, ``valid_from``, ``valid_until``, ``current``). A revoked device with no
current key has ``kid``, ``kid_b64url`` and ``public_key_jwk`` null.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from anchor.keys import b64url_encode
from anchor.store import DeviceRecord

__all__ = ["device_json"]


def _when(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def device_json(record: DeviceRecord) -> dict[str, Any]:
    """The device record as JSON (see the module docstring)."""
    current = record.current_key
    return {
        "device_id": record.device_id,
        "district": record.district,
        "kind": record.kind,
        "status": record.status,
        "registered_at": _when(record.registered_at),
        "revoked_at": _when(record.revoked_at),
        "revoke_reason": record.revoke_reason,
        "kid": current.kid.hex() if current else None,
        "kid_b64url": b64url_encode(current.kid) if current else None,
        "public_key_jwk": current.public_key.to_jwk() if current else None,
        "keys": [
            {
                "kid": k.kid.hex(),
                "kid_b64url": b64url_encode(k.kid),
                "key_type": k.public_key.key_type,
                "public_key_jwk": k.public_key.to_jwk(),
                "valid_from": _when(k.valid_from),
                "valid_until": _when(k.valid_until),
                "current": k.current,
            }
            for k in record.keys
        ],
    }
