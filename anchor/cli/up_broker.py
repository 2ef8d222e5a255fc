"""``up``'s broker: its persistence and queue settings, and the gate that keeps devices out of
a freshly started broker until an ingestor has subscribed.

**Devices are admitted only once an ingestor is subscribed** (issue 11). Mosquitto 2.0.11 does
not restore a ``$share`` subscription from its persistence database, even after a clean stop
(tested: ``tests/integration/test_up_recovery.py``), and a reading published while no
ingestor is subscribed gets PUBACK 0x10 "no matching subscribers" (a success code: the device
deletes it) and is dropped. So every broker start (``up``'s own, a supervised restart after a
crash, a restart to reload logins) writes the device logins *disabled* into the
dynamic-security configuration; devices are refused (CONNACK 0x87) and keep their readings;
as soon as the ingestor's log shows its subscription on the new broker, ``up`` enables them
(``enableClient`` over ``$CONTROL``).

**The broker saves its database once a second** (``autosave_interval 1``, issue 11), whatever
its backlog: a crash loses at most the last second or two of what it PUBACKed and had not yet
delivered to an ingestor (devices on the SDK resend those until the service's acknowledgement),
and replays at most that much already sealed. Saving on every change (``autosave_on_changes``,
the default before) rewrites the whole database for every reading queued, which costs in
proportion to the backlog exactly when the ingestors are behind: measured in
``bench/broker_persistence.py``, and :func:`broker_settings` for the rest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from anchor.broker.logins import (
    ADMIN_USER,
    INGEST_USER,
    BrokerAdmin,
    BrokerError,
    DeviceLogin,
    dynsec_config,
)
from anchor.cli.up_options import UpOptions
from anchor.errors import AnchorError
from anchor.host.redact import redact_text
from anchor.password_hashes import mosquitto_password_hash

if TYPE_CHECKING:
    from anchor.local import MosquittoServer

__all__ = [
    "SUBSCRIBED",
    "BrokerLogins",
    "BrokerSettings",
    "DeviceGate",
    "broker_settings",
    "service_dynsec",
]

log = logging.getLogger("anchor.cli.up")


class BrokerSettings(TypedDict):
    """Keyword arguments of :class:`anchor.local.MosquittoServer` that ``up`` chooses."""

    autosave_interval: int
    autosave_changes: int | None
    max_queued_messages: int
    session_expiry_cap_h: int


def broker_settings(opts: UpOptions) -> BrokerSettings:
    """The persistence and queue settings of ``up``'s broker (tests take them from here).

    * Persistence: a periodic save every ``broker_autosave_interval_s`` seconds (default 1), a
      bounded cost: at most one rewrite of the database a second however long the ingestors'
      backlog. ``broker_autosave_changes`` N switches to a save after every N changes; every
      queued message is a change, and each save rewrites the whole database, so with a backlog
      of B messages the broker spends O(B) per N readings received: with N = 1 it took 28
      readings/s with 11,000 queued (bench/broker_persistence.py), the spiral of issue 11.
    * ``max_queued_messages``: Mosquitto drops QoS 1 messages it has already PUBACKed once a
      session's queue is full, so the bound is set for long outages (1,000,000, ~0.63 KB of
      broker memory each for 300-byte readings: the bound trades memory for readings kept).
    * ``session_expiry_cap_h`` = the ingestors' own session expiry (24 h); devices hold no
      subscriptions.
    """
    return BrokerSettings(
        autosave_interval=opts.broker_autosave_interval_s,
        autosave_changes=opts.broker_autosave_changes,
        max_queued_messages=opts.broker_max_queued_messages,
        session_expiry_cap_h=24,
    )


async def _device_logins(dsn: str) -> list[DeviceLogin]:
    from anchor.broker.logins import broker_logins
    from anchor.store import Store

    store = await Store.connect(dsn, max_size=1)
    try:
        return await broker_logins(store)
    finally:
        await store.close()


def service_dynsec(
    devices: list[DeviceLogin], ingest_password: str, admin_password: str
) -> dict[str, Any]:
    """The broker's logins for its next start: the devices' disabled (see :class:`DeviceGate`)."""
    config = dynsec_config(
        devices,
        ingest_hash=mosquitto_password_hash(ingest_password),
        admin_hash=mosquitto_password_hash(admin_password),
    )
    services = (INGEST_USER, ADMIN_USER)
    config["clients"] = [
        c if c["username"] in services else {**c, "disabled": True} for c in config["clients"]
    ]
    return config


SUBSCRIBED = b"subscription active"  # what the ingestor logs on its SUBACK (anchor.ingest.ingestor)


class DeviceGate:
    """Keeps devices out of a freshly started broker until an ingestor has subscribed.

    Mosquitto 2.0.11 forgets ``$share`` subscriptions on every restart (it does not restore
    them from its persistence database), and a QoS 1 reading that no subscription matches is
    PUBACKed with 0x10, a success code, and dropped: the reading is lost though the device was
    told it was delivered. Every broker start therefore gets the device logins disabled
    (:func:`service_dynsec`): a device is refused (CONNACK "not authorized") and keeps its
    readings, retrying. ``close()`` is called before each start; ``poll()`` enables the devices
    once the ingestor's log shows a subscription made after that start.
    """

    def __init__(self, admin: BrokerAdmin, ingest_log: Path) -> None:
        self.admin = admin
        self.ingest_log = ingest_log
        self.devices: list[str] = []
        self.offset: int | None = None  # ingest log size at the broker's start; None: open
        self.closed_at = 0.0

    @property
    def is_open(self) -> bool:
        return self.offset is None

    def close(self, devices: list[str]) -> None:
        self.devices = sorted(devices)
        self.offset = self.ingest_log.stat().st_size if self.ingest_log.exists() else 0
        self.closed_at = time.monotonic()

    def poll(self) -> bool:
        """Open the gate if an ingestor has subscribed since the broker started; True if open."""
        if self.offset is None:
            return True
        try:
            with self.ingest_log.open("rb") as f:
                if f.seek(0, 2) < self.offset:
                    self.offset = 0  # the log was rotated (truncated) since the broker's start
                f.seek(self.offset)
                subscribed = SUBSCRIBED in f.read()
        except OSError:
            return False
        if not subscribed:
            return False
        if self.devices:
            try:
                answers = self.admin.run(
                    [{"command": "enableClient", "username": d} for d in self.devices]
                )
            except BrokerError as exc:
                log.warning("cannot admit the devices yet (will retry): %s", exc)
                return False
            failed = [a for a in answers if a.get("error")]
            if failed:  # e.g. a device revoked meanwhile: its login is gone, nothing to admit
                log.warning("enableClient failed for %d devices: %s", len(failed), failed[0])
        log.info(
            "an ingestor is subscribed: %d devices admitted to the broker %.1fs after its start",
            len(self.devices),
            time.monotonic() - self.closed_at,
        )
        self.offset = None
        return True


class BrokerLogins:
    """Keeps the broker's logins in step with the registry.

    The API creates a device's login in the running broker itself (and deletes a revoked
    one), so this is the backstop: every two seconds it deletes the logins of devices no longer
    active, and when the broker lacks a login the registry has (the API could not reach it) it
    restarts the broker from the registry. It also keeps the configuration a broker (re)start
    uses current.
    """

    def __init__(
        self,
        mq: MosquittoServer,
        dsn: str,
        ingest_password: str,
        admin_password: str,
        gate: DeviceGate,
    ) -> None:
        self.mq, self.dsn, self.gate = mq, dsn, gate
        self.passwords = (ingest_password, admin_password)
        self.admin = BrokerAdmin(mq.url, ADMIN_USER, admin_password)
        # What the running broker holds; it was started with the service logins only.
        self.current: dict[str, DeviceLogin] | None = None
        # Logins the registry has and the broker lacked at the last check (see refresh).
        self.pending: set[str] = set()
        self.next_check = 0.0

    def before_restart(self) -> None:
        """Before the supervisor starts a dead broker again: close the gate to the devices."""
        self.gate.close(list(self.current or {}))

    def refresh(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self.next_check:
            return
        self.next_check = now + 2.0
        try:
            logins = asyncio.run(_device_logins(self.dsn))
        except AnchorError as exc:
            log.warning("cannot read broker logins from the registry: %s", redact_text(str(exc)))
            return
        desired = {login.device_id: login for login in logins}
        if desired == self.current:
            return
        self.mq.set_dynsec(service_dynsec(logins, *self.passwords))
        restart = self.current is None and bool(desired)
        if self.current is not None:
            try:
                for gone in sorted(set(self.current) - set(desired)):
                    self.admin.remove_device(gone)
                new = [d for d in desired if self.current.get(d) != desired[d]]
                missing = self.admin.missing(new)
            except BrokerError as exc:
                log.warning("cannot update the broker's logins (will retry): %s", exc)
                return
            # The API (and `device register`) writes a login into the registry and then has the
            # broker create it: a login seen here between the two is not lost, it is on its way.
            # Restarting the broker for it disconnected every device, and the gate kept them out
            # until the ingestors subscribed again (1.5-2.5 s, issue 14 item 6). So a login is
            # counted missing only when the broker still lacks it at the next check.
            lost = [d for d in missing if d in self.pending]
            self.pending = set(missing) - set(lost)
            if lost:
                log.warning(
                    "the broker lacks the logins of %d devices (e.g. %s): restarting it",
                    len(lost),
                    lost[0],
                )
                restart = True
            desired_seen = {d: login for d, login in desired.items() if d not in self.pending}
        else:
            desired_seen = desired
        if restart:
            # Persistent sessions and queued messages survive (persistence on, clean stop); the
            # ingestors' shared subscription does not: the devices wait at the gate.
            self.mq.stop()
            self.gate.close(list(desired))
            self.mq.start()
            self.pending = set()
            desired_seen = desired
        self.current = desired_seen  # a pending login is looked at again at the next check
        log.info("broker logins in step with the registry: %d devices", len(desired_seen))
