"""Registering a device, with its broker login: the one code path behind ``POST /v1/devices``
and ``cityanchor device register`` (issue 14 item 5), so both give the same answer.

With ``mqtt_device_logins`` on, the answer carries ``mqtt_username`` and ``mqtt_password`` and
``mqtt_login_active``: true when the broker confirmed the login before the answer (the
dynamic-security plugin answers a ``createClient`` only once the login is in force, so the
device can connect the moment it has the answer; DESIGN.md "Interfaces"); false when no admin
login is configured (a broker fed from a file: the login works once the broker reloads) or the
broker could not be reached (``cityanchor up`` restarts its broker from the registry within
seconds; elsewhere, re-register or restart the broker).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from anchor.broker.logins import ADMIN_USER, BrokerAdmin, issue_device_login
from anchor.store.device_json import device_json

if TYPE_CHECKING:
    from anchor.host.config import Settings
    from anchor.keys import PublicKey
    from anchor.store import DeviceRecord, DeviceSpec, Store

__all__ = ["broker_admin", "register_device", "register_devices"]


def broker_admin(settings: Settings) -> BrokerAdmin | None:
    """The broker's dynamic-security admin of ``settings``, or None when none is configured."""
    if not settings.mqtt_device_logins or not settings.mqtt_admin_password:
        return None
    return BrokerAdmin(
        settings.mqtt_url, settings.mqtt_admin_username or ADMIN_USER, settings.mqtt_admin_password
    )


async def register_device(
    store: Store,
    settings: Settings,
    device_id: str,
    key: PublicKey,
    *,
    district: str,
    kind: str,
) -> tuple[DeviceRecord, dict[str, Any]]:
    """Register a device and, when the broker requires logins, issue its login.

    Returns the record and the answer: :func:`anchor.store.device_json.device_json` plus, with
    logins on, ``mqtt_username``, ``mqtt_password`` (the only time it exists in clear) and
    ``mqtt_login_active``. Raises ``StoreError`` as :meth:`Store.register_device` does.
    """
    record = await store.register_device(device_id, key, district=district, kind=kind)
    answer = device_json(record)
    if settings.mqtt_device_logins:
        answer.update(
            await issue_device_login(
                store, device_id, district=district, admin=broker_admin(settings)
            )
        )
    return record, answer


async def register_devices(
    store: Store, settings: Settings, specs: Sequence[DeviceSpec]
) -> list[tuple[DeviceRecord, dict[str, Any]]]:
    """Register many devices in one transaction (all or none, as
    :meth:`Store.register_devices`), then issue each one's login as :func:`register_device`
    does; the answers are in the order of ``specs``."""
    records = await store.register_devices(specs)
    admin = broker_admin(settings)
    out = []
    for record in records:
        answer = device_json(record)
        if settings.mqtt_device_logins:
            answer.update(
                await issue_device_login(
                    store, record.device_id, district=record.district, admin=admin
                )
            )
        out.append((record, answer))
    return out
