"""Broker security: device logins, client-id bindings and per-device topic rights.

Mosquitto 2.0's ``acl_file`` cannot refuse a SUBSCRIBE: it grants every filter (``#``,
``$SYS/#``, the ingestors' ``$share/cityanchor/...``) and only filters what is delivered, so a
device that joined the ingestors' shared subscription took its share of every reading and the
broker dropped it. We therefore run Mosquitto's **dynamic-security plugin** (shipped with
Mosquitto 2.0), whose configuration we generate from the registry (:func:`dynsec_config`):

* default deny for publish and subscribe (``defaultACLAccess``); a SUBSCRIBE nobody is granted
  gets SUBACK reason 0x87 (not authorized);
* each device: login = client id = its device id (the plugin refuses a CONNECT whose client id
  differs, so no device can take over, or kick, another client's session, the ingestors'
  ``cityanchor-{name}-{i}`` included: those names are reserved, see :mod:`anchor.device_id`),
  and one role allowing exactly two things: publishing to ``city/{its district}/{its id}/readings``
  and subscribing to ``city/{its district}/{its id}/ack`` (the service's acknowledgements,
  :mod:`anchor.device_ack`; literal, so no wildcard reaches another device's). Every other
  subscription is refused;
* the ingestors' login (``cityanchor-ingest``): subscribing to ``city/#`` and
  ``$share/+/city/#``, and publishing to ``city/+/+/ack``; nothing else;
* the admin login (``cityanchor-admin``, used by the API and ``cityanchor up``): the plugin's
  control topic only.

Passwords: only Mosquitto ``$7$`` hashes (PBKDF2-SHA512, 12-byte salt) are stored, in the
registry and in the plugin's file (the same fields: salt, hash, iterations). A new device's
password exists in clear once: the API hands it to the broker over the control topic
(:class:`BrokerAdmin`) and returns it in the registration answer, so the login is accepted by the
time the answer arrives (DESIGN.md "Interfaces"). Revocation deletes the login, which also
disconnects the device.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import os
import secrets
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from anchor.broker.client import create_client, parse_mqtt_url
from anchor.errors import AnchorError, Reason
from anchor.password_hashes import mosquitto_password_hash
from anchor.store import Store

__all__ = [
    "ADMIN_USER",
    "INGEST_USER",
    "BrokerAdmin",
    "BrokerError",
    "DeviceLogin",
    "broker_logins",
    "device_ack_topic",
    "device_role",
    "device_topic",
    "dynsec_config",
    "issue_device_login",
]

log = logging.getLogger("anchor.broker.logins")

INGEST_USER = "cityanchor-ingest"
ADMIN_USER = "cityanchor-admin"
CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = CONTROL_TOPIC + "/response"
_INGEST_ROLE = "cityanchor-ingest"
_ADMIN_ROLE = "cityanchor-admin"
_SALT_BYTES = 12  # Mosquitto's SALT_LEN: the plugin skips a client whose salt is not 12 bytes
_HASH_BYTES = 64  # PBKDF2-SHA512


class BrokerError(AnchorError):
    """The broker's control topic failed: ``broker_unavailable`` (cannot connect, no answer in
    time) or ``broker_refused`` (the plugin answered with an error)."""

    reason = Reason.BROKER_UNAVAILABLE


@dataclass(frozen=True, slots=True)
class DeviceLogin:
    """A device's broker login as the registry keeps it: never the password, only its hash."""

    device_id: str
    district: str
    password_hash: str  # Mosquitto "$7$iterations$salt$hash"


def device_topic(district: str, device_id: str) -> str:
    """The one topic a device may publish to."""
    return f"city/{district}/{device_id}/readings"


def device_ack_topic(district: str, device_id: str) -> str:
    """The one topic a device may subscribe to: the service's acknowledgements."""
    return f"city/{district}/{device_id}/ack"


def device_role(device_id: str) -> str:
    return f"device/{device_id}"


def _hash_fields(hashed: str) -> dict[str, Any]:
    """``$7$ITER$SALT$HASH`` -> the plugin's ``salt``, ``password`` and ``iterations``."""
    parts = hashed.split("$")
    if len(parts) != 5 or parts[:2] != ["", "7"] or not parts[2].isdecimal():
        raise BrokerError("not a Mosquitto $7$ password hash", reason=Reason.CONFIG_INVALID)
    salt, key = base64.b64decode(parts[3]), base64.b64decode(parts[4])
    if len(salt) != _SALT_BYTES or len(key) != _HASH_BYTES or int(parts[2]) < 1:
        raise BrokerError(
            "a $7$ hash with a wrong salt or key length", reason=Reason.CONFIG_INVALID
        )
    return {"salt": parts[3], "password": parts[4], "iterations": int(parts[2])}


def _publishable(district: str, device_id: str) -> bool:
    # A topic level with a wildcard, a separator or NUL would widen (or break) the literal ACL:
    # such a device gets no publish right at all (the ingestor could not accept its topic anyway).
    return all(text and not any(c in text for c in "+#/\x00") for text in (district, device_id))


def _device_role(login: DeviceLogin) -> dict[str, Any]:
    acls = []
    if _publishable(login.district, login.device_id):
        acls.append(
            {
                "acltype": "publishClientSend",
                "topic": device_topic(login.district, login.device_id),
                "priority": 0,
                "allow": True,
            }
        )
        # The service's acknowledgements for this device (anchor.device_ack); a literal
        # filter, so no wildcard subscription reaches another device's.
        acls.append(
            {
                "acltype": "subscribeLiteral",
                "topic": device_ack_topic(login.district, login.device_id),
                "priority": 0,
                "allow": True,
            }
        )
    return {"rolename": device_role(login.device_id), "acls": acls}


def dynsec_config(
    devices: Iterable[DeviceLogin], *, ingest_hash: str, admin_hash: str
) -> dict[str, Any]:
    """The dynamic-security plugin's configuration for these logins (pure).

    Service logins are not bound to a client id (N ingestor workers share one login, each with
    its own id); devices are, to their device id.
    """
    devices = sorted(devices, key=lambda d: d.device_id)
    roles: list[dict[str, Any]] = [
        {
            "rolename": _INGEST_ROLE,
            "acls": [
                *(
                    {"acltype": "subscribePattern", "topic": t, "priority": 0, "allow": True}
                    for t in ("city/#", "$share/+/city/#")
                ),
                # The device acknowledgements (anchor.device_ack), to any device.
                {
                    "acltype": "publishClientSend",
                    "topic": "city/+/+/ack",
                    "priority": 0,
                    "allow": True,
                },
            ],
        },
        {
            "rolename": _ADMIN_ROLE,
            "acls": [
                {"acltype": "publishClientSend", "topic": CONTROL_TOPIC, "allow": True},
                {"acltype": "subscribeLiteral", "topic": RESPONSE_TOPIC, "allow": True},
                # Needed explicitly: the plugin never lets a $CONTROL topic through by default.
                {"acltype": "publishClientReceive", "topic": RESPONSE_TOPIC, "allow": True},
            ],
        },
    ]
    clients: list[dict[str, Any]] = [
        {
            "username": INGEST_USER,
            **_hash_fields(ingest_hash),
            "roles": [{"rolename": _INGEST_ROLE}],
        },
        {"username": ADMIN_USER, **_hash_fields(admin_hash), "roles": [{"rolename": _ADMIN_ROLE}]},
    ]
    for d in devices:
        roles.append(_device_role(d))
        clients.append(
            {
                "username": d.device_id,
                "clientid": d.device_id,
                **_hash_fields(d.password_hash),
                "roles": [{"rolename": device_role(d.device_id)}],
            }
        )
    return {
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": True,
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": clients,
        "groups": [],
        "roles": roles,
    }


def _add_device_commands(device_id: str, district: str, password: str) -> list[dict[str, Any]]:
    role = _device_role(DeviceLogin(device_id, district, ""))
    return [
        {"command": "createRole", **role},
        {
            "command": "createClient",
            "username": device_id,
            "password": password,
            "clientid": device_id,
            "roles": [{"rolename": role["rolename"]}],
        },
    ]


def _remove_device_commands(device_id: str) -> list[dict[str, Any]]:
    # deleteClient also disconnects every connection on this login.
    return [
        {"command": "deleteClient", "username": device_id},
        {"command": "deleteRole", "rolename": device_role(device_id)},
    ]


_NOT_FOUND = ("not found",)  # what the plugin says when deleting a client or role it lacks


class BrokerAdmin:
    """Sends dynamic-security commands over MQTT and waits for the plugin's answers.

    One short connection per call (registrations are rare); thread-safe. Commands carry a
    ``correlationData`` so answers to other admins on the same response topic are ignored.
    """

    _ids = itertools.count()

    def __init__(self, mqtt_url: str, username: str, password: str, *, timeout: float = 10.0):
        try:
            self.target = parse_mqtt_url(mqtt_url)
        except AnchorError as exc:
            raise BrokerError(
                f"unsupported MQTT URL for the broker admin: {exc.detail}", reason=Reason.USAGE
            ) from exc
        self.host = self.target.host
        self.tls = self.target.tls
        self.port = self.target.port
        self.username = username or self.target.username or ""
        self.password = password
        self.timeout = timeout

    def run(self, commands: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Run ``commands`` in order; returns one answer per command (``error`` when it failed).

        Raises ``BrokerError`` (``broker_unavailable``) when the broker cannot be reached or
        does not answer within ``timeout``.
        """
        tag = f"{os.getpid()}-{next(self._ids)}-{secrets.token_hex(4)}"
        tagged = [{**c, "correlationData": f"{tag}-{i}"} for i, c in enumerate(commands)]
        answers: dict[int, dict[str, Any]] = {}
        subscribed, done = threading.Event(), threading.Event()
        failure: list[str] = []
        # The network thread connects (connect() before loop_start() leaks paho's socket pair,
        # one per call in a long-running API process).
        client = create_client(
            self.target,
            client_id=f"{ADMIN_USER}-{tag}",
            username=self.username,
            password=self.password,
        )

        def on_connect(c: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
            if rc.is_failure:
                failure.append(f"the broker refused the admin login: {rc}")
                subscribed.set()
                done.set()
            else:
                c.subscribe(RESPONSE_TOPIC, qos=1)

        def on_subscribe(c: Any, userdata: Any, mid: int, rcs: Any, props: Any) -> None:
            if any(rc.is_failure for rc in rcs):
                failure.append(f"the broker refused the admin's subscription: {rcs}")
                done.set()
            subscribed.set()

        def on_message(c: Any, userdata: Any, msg: Any) -> None:
            try:
                doc = json.loads(msg.payload)
            except ValueError:
                return
            for answer in doc.get("responses", []):
                corr = str(answer.get("correlationData", ""))
                if corr.startswith(tag + "-"):
                    answers[int(corr.rsplit("-", 1)[1])] = answer
            if len(answers) == len(tagged):
                done.set()

        def on_connect_fail(c: Any, userdata: Any) -> None:
            failure.append(f"cannot reach the broker at {self.host}:{self.port}")
            subscribed.set()
            done.set()

        client.on_connect = on_connect
        client.on_connect_fail = on_connect_fail
        client.on_subscribe = on_subscribe
        client.on_message = on_message
        client.loop_start()
        try:
            if subscribed.wait(self.timeout) and not failure:
                client.publish(CONTROL_TOPIC, json.dumps({"commands": tagged}), qos=1)
                done.wait(self.timeout)
        finally:
            client.disconnect()
            client.loop_stop()
        if failure or len(answers) != len(tagged):
            raise BrokerError(
                failure[0] if failure else f"no answer from the broker in {self.timeout:.0f} s",
                reason=Reason.BROKER_UNAVAILABLE,
            )
        return [answers[i] for i in range(len(tagged))]

    def _check(self, answers: Sequence[dict[str, Any]], *, tolerate: int = 0) -> None:
        # The first ``tolerate`` commands may fail with "not found" (idempotent removal).
        for i, answer in enumerate(answers):
            error = answer.get("error")
            if error is None or (i < tolerate and any(w in error.lower() for w in _NOT_FOUND)):
                continue
            raise BrokerError(
                f"the broker refused {answer.get('command')}: {error}", reason=Reason.BROKER_REFUSED
            )

    def add_device(self, device_id: str, district: str, password: str) -> None:
        """Create (or replace) the device's login; accepted by the broker when this returns."""
        remove = _remove_device_commands(device_id)
        answers = self.run([*remove, *_add_device_commands(device_id, district, password)])
        self._check(answers, tolerate=len(remove))

    def remove_device(self, device_id: str) -> None:
        """Delete the device's login and role (disconnecting it); no error if it has none."""
        remove = _remove_device_commands(device_id)
        self._check(self.run(remove), tolerate=len(remove))

    def missing(self, usernames: Iterable[str]) -> list[str]:
        """Which of ``usernames`` the broker has no login for."""
        names = list(usernames)
        if not names:
            return []
        answers = self.run([{"command": "getClient", "username": n} for n in names])
        return [n for n, a in zip(names, answers, strict=True) if a.get("error")]


async def issue_device_login(
    store: Store, device_id: str, *, district: str, admin: BrokerAdmin | None = None
) -> dict[str, Any]:
    """Issue (or reissue) the device's broker password; returns it, the only time it exists.

    The registry keeps only its hash. With ``admin`` the login is also created in the running
    broker, and this returns only once the dynamic-security plugin has confirmed it (its
    answer to ``createClient`` comes after the login is in force): ``mqtt_login_active`` is
    then true. A broker that cannot be reached is tried again until ``admin.timeout`` has
    passed; if it still fails (``BrokerError``) the error is logged, the login is kept in the
    registry (``cityanchor up`` restarts its broker from the registry within seconds) and
    ``mqtt_login_active`` is false. Without ``admin`` it is false too: the broker learns the
    login from the registry (a generated file, a reload) on its own.
    """
    password = secrets.token_urlsafe(24)
    hashed = mosquitto_password_hash(password)
    await store.set_device_login(device_id, hashed)
    active = False
    if admin is not None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + admin.timeout
        delay, retry = 0.1, False
        while True:
            try:
                if retry and not await asyncio.to_thread(admin.missing, [device_id]):
                    # A restarted broker loaded it from the registry meanwhile, maybe disabled
                    # until an ingestor subscribes (anchor.cli.up_broker.DeviceGate): replacing
                    # it would let the device in before that. It works once the gate opens.
                    break
                await asyncio.to_thread(admin.add_device, device_id, district, password)
                active = True
                break
            except BrokerError as exc:
                retry = True
                # Refused (the plugin answered with an error) is final; unreachable may pass.
                if exc.reason != Reason.BROKER_UNAVAILABLE or loop.time() + delay > deadline:
                    log.error("broker login of %s not created in the broker: %s", device_id, exc)
                    break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
    return {"mqtt_username": device_id, "mqtt_password": password, "mqtt_login_active": active}


async def revoke_device_login(admin: BrokerAdmin, device_id: str) -> None:
    """Delete a revoked device's broker login now (``cityanchor up`` also does, within seconds)."""
    try:
        await asyncio.to_thread(admin.remove_device, device_id)
    except BrokerError as exc:
        log.error("broker login of revoked device %s not deleted: %s", device_id, exc)


async def broker_logins(store: Store) -> list[DeviceLogin]:
    """Every active (not revoked) device with a broker login, with its district."""
    return [DeviceLogin(*row) for row in await store.device_logins()]


# ------------------------------------------------------------------------------------------ CLI
