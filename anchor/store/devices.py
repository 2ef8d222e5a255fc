"""The device registry: register, rotate, revoke, read, and the ingestor's key snapshot; and
the devices' broker logins (``sql/004_mqtt_logins.sql``).

"Key validity" and "Which clock decides" in :mod:`anchor.store` say what rotation and
revocation stamp and why the device row is locked ``FOR UPDATE`` first.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from anchor.errors import Reason
from anchor.keys import PublicKey
from anchor.sealing import MAX_STORED_INT
from anchor.store.archives import PACKED_IF_STORED, archived_batch
from anchor.store.connection import MAX_LIST, StoreBase, clean_text
from anchor.store.errors import StoreError, checked_device_id, conflict, not_found
from anchor.store.packed import LEAF_SQL, SEQS
from anchor.store.records import (
    DeviceKeyRecord,
    DeviceRecord,
    DeviceSpec,
    device_record,
    key_record,
)

__all__ = ["DevicesMixin", "fetch_devices"]

_DEVICE_COLUMNS = "device_id, district, kind, status, registered_at, revoked_at, revoke_reason"
_KEY_COLUMNS = "device_id, kid, key_type, public_key, valid_from, valid_until"
_INSERT_KEY = (
    "INSERT INTO device_keys (device_id, kid, key_type, public_key, public_jwk, valid_from) "
    "VALUES ($1, $2, $3, $4, $5::jsonb, coalesce($6::timestamptz, now()))"
)


def _key_row(
    device_id: str, key: PublicKey, valid_from: datetime | None = None
) -> tuple[str, bytes, str, bytes, str, datetime | None]:
    return device_id, key.kid, key.key_type, key.raw, json.dumps(key.to_jwk()), valid_from


async def _lock_active_device(conn: Any, device_id: str, if_revoked: str) -> datetime:
    """Lock the device's row for this transaction; ``not_found`` / ``conflict`` (revoked).

    Returns ``clock_timestamp()`` read once the lock is held: the time a revocation or
    rotation takes effect. Not ``now()``, the transaction's start: a seal holding the row
    ``FOR SHARE`` may commit readings received after that start while we wait for the lock.
    """
    row = await conn.fetchrow(
        "SELECT status FROM devices WHERE device_id = $1 FOR UPDATE", device_id
    )
    if row is None:
        raise not_found(f"device {device_id} is not registered")
    if row["status"] == "revoked":
        raise conflict(if_revoked)
    stamp: datetime = await conn.fetchval("SELECT clock_timestamp()")
    return stamp


async def fetch_devices(conn: Any, clause: str, *args: Any) -> list[DeviceRecord]:
    """The devices ``SELECT ... FROM devices {clause}`` finds, each with all its keys, by id."""
    rows = await conn.fetch(f"SELECT {_DEVICE_COLUMNS} FROM devices {clause}", *args)
    if not rows:
        return []
    ids = [r["device_id"] for r in rows]
    keys: dict[str, list[DeviceKeyRecord]] = {i: [] for i in ids}
    for k in await conn.fetch(
        f"SELECT {_KEY_COLUMNS} FROM device_keys WHERE device_id = ANY($1::text[]) "
        "ORDER BY device_id, valid_from, valid_until NULLS LAST, kid",
        ids,
    ):
        keys[k["device_id"]].append(key_record(k))
    records = [device_record(r, keys[r["device_id"]]) for r in rows]
    return sorted(records, key=lambda d: d.device_id)


class DevicesMixin(StoreBase):
    """The registry's methods of :class:`anchor.store.Store`."""

    async def register_device(
        self, device_id: str, key: PublicKey, *, district: str, kind: str
    ) -> DeviceRecord:
        """Register a new device with its first key. Raises ``StoreError``: ``conflict`` (the
        device exists, or the key is another device's), ``device_id_invalid``."""
        (record,) = await self.register_devices([DeviceSpec(device_id, key, district, kind)])
        return record

    async def register_devices(self, specs: Sequence[DeviceSpec]) -> list[DeviceRecord]:
        """Register many devices in one transaction: all of them or, on any problem, none.

        Raises ``StoreError`` (``conflict`` or ``device_id_invalid``) whose detail lists every
        problem found, one per line, prefixed by the spec's line number when it has one.
        """
        problems: list[str] = []
        id_reasons: set[Reason] = set()
        invalid = 0
        seen_ids: dict[str, DeviceSpec] = {}
        seen_kids: dict[bytes, DeviceSpec] = {}
        for spec in specs:
            try:
                checked_device_id(spec.device_id, new=True)
            except StoreError as exc:
                problems.append(spec.where() + exc.detail)
                id_reasons.add(exc.reason)
                invalid += 1
                continue
            if spec.device_id in seen_ids:
                problems.append(f"{spec.where()}device {spec.device_id} appears twice")
            if spec.key.kid in seen_kids:
                problems.append(
                    f"{spec.where()}device {spec.device_id} has the same key as "
                    f"{seen_kids[spec.key.kid].device_id}"
                )
            seen_ids[spec.device_id] = spec
            seen_kids.setdefault(spec.key.kid, spec)
        if problems:
            # Only id problems: their code (device_id_reserved only if every one is reserved).
            reason = (
                (id_reasons.pop() if len(id_reasons) == 1 else Reason.DEVICE_ID_INVALID)
                if invalid == len(problems)
                else Reason.CONFLICT
            )
            raise StoreError("\n".join(problems), reason=reason)
        if not specs:
            return []
        async with self._connection("register") as conn, conn.transaction():
            ids = [s.device_id for s in specs]
            kids = [s.key.kid for s in specs]
            for row in await conn.fetch(
                "SELECT device_id FROM devices WHERE device_id = ANY($1::text[])", ids
            ):
                spec = seen_ids[row["device_id"]]
                problems.append(f"{spec.where()}device {spec.device_id} is already registered")
            for row in await conn.fetch(
                "SELECT device_id, kid FROM device_keys WHERE kid = ANY($1::bytea[])", kids
            ):
                spec = seen_kids[bytes(row["kid"])]
                problems.append(
                    f"{spec.where()}the key of {spec.device_id} is already registered to "
                    f"device {row['device_id']}"
                )
            if problems:
                raise conflict("\n".join(problems))
            await conn.executemany(
                "INSERT INTO devices (device_id, district, kind) VALUES ($1, $2, $3)",
                [(s.device_id, s.district, s.kind) for s in specs],
            )
            await conn.executemany(
                _INSERT_KEY,
                [_key_row(s.device_id, s.key) for s in specs],
            )
            return await fetch_devices(conn, "WHERE device_id = ANY($1::text[])", ids)

    async def rotate_device_key(self, device_id: str, key: PublicKey) -> DeviceRecord:
        """Close the device's current key and make ``key`` current, both at the instant the
        device row is locked (see "Which clock decides" in :mod:`anchor.store`).

        Raises ``StoreError``: ``not_found``, ``conflict`` (the device is revoked, or the key
        is already registered, to this device or another).
        """
        checked_device_id(device_id)
        async with self._connection("rotate") as conn, conn.transaction():
            stamp = await _lock_active_device(
                conn, device_id, f"device {device_id} is revoked; its keys cannot be rotated"
            )
            owner = await conn.fetchval("SELECT device_id FROM device_keys WHERE kid = $1", key.kid)
            if owner is not None:
                which = "this device" if owner == device_id else f"device {owner}"
                raise conflict(f"the new key is already registered to {which}")
            await conn.execute(
                "UPDATE device_keys SET valid_until = $2 "
                "WHERE device_id = $1 AND valid_until IS NULL",
                device_id,
                stamp,
            )
            # The new key starts where the old one ends: one instant, read under the lock.
            await conn.execute(_INSERT_KEY, *_key_row(device_id, key, stamp))
            (record,) = await fetch_devices(conn, "WHERE device_id = $1", device_id)
            return record

    async def revoke_device(self, device_id: str, *, reason: str = "") -> DeviceRecord:
        """Revoke the device now: its readings received from now on are refused, also those
        already in an ingestor's batch (the seal re-checks them under the device row lock).

        Raises ``StoreError``: ``not_found``, ``conflict`` (already revoked).
        """
        checked_device_id(device_id)
        async with self._connection("revoke") as conn, conn.transaction():
            stamp = await _lock_active_device(
                conn, device_id, f"device {device_id} is already revoked"
            )
            await conn.execute(
                "UPDATE devices SET status = 'revoked', revoked_at = $3, revoke_reason = $2 "
                "WHERE device_id = $1",
                device_id,
                clean_text(reason, 1024),
                stamp,
            )
            (record,) = await fetch_devices(conn, "WHERE device_id = $1", device_id)
            return record

    async def get_device(self, device_id: str) -> DeviceRecord:
        """The device and all its keys; raises ``StoreError`` (``not_found``)."""
        checked_device_id(device_id)
        async with self._connection("get_device") as conn:
            found = await fetch_devices(conn, "WHERE device_id = $1", device_id)
        if not found:
            raise not_found(f"device {device_id} is not registered")
        return found[0]

    async def reading_received_at(
        self, device_id: str, seq: int, leaf_hash: bytes
    ) -> datetime | None:
        """When the stored reading (device_id, seq) with this leaf hash was received, or None
        when no such reading is stored (the time the key-validity rule is judged at)."""
        checked_device_id(device_id)
        if not 1 <= seq <= MAX_STORED_INT:
            return None
        async with self._connection("reading_received_at") as conn:
            row = await conn.fetchrow(
                f"SELECT s.received_at, s.batch_id, s.batch_index, {LEAF_SQL} AS leaf_hash "
                f"FROM {SEQS} {PACKED_IF_STORED} WHERE d.device_id = $1 AND s.seq = $2",
                device_id,
                seq,
            )
            if row is None:
                return None
            leaf = row["leaf_hash"]
            if leaf is None:
                # An archived month (anchor.store.archives): the leaf is in its file, read when
                # this process has the archive directory; without it the time is not known.
                try:
                    line = await archived_batch(self.archive_reader, conn, row["batch_id"])
                except StoreError:
                    return None
                i = row["batch_index"]
                leaf = None if line is None else line.leaves[32 * i : 32 * i + 32]
        when: datetime | None = row["received_at"] if leaf == leaf_hash else None
        return when

    async def list_devices(
        self,
        *,
        district: str | None = None,
        status: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[DeviceRecord]:
        """Devices ordered by id, after the cursor ``after`` (the last id of the previous page),
        at most ``limit`` (capped at 1000), optionally of one district and/or status."""
        where: list[str] = []
        args: list[Any] = []
        for column, value in (("district", district), ("status", status)):
            if value is not None:
                args.append(value)
                where.append(f"{column} = ${len(args)}")
        if after is not None:
            args.append(after)
            where.append(f"device_id > ${len(args)}")
        args.append(max(1, min(limit, MAX_LIST)))
        clause = ("WHERE " + " AND ".join(where) if where else "") + (
            f" ORDER BY device_id LIMIT ${len(args)}"
        )
        async with self._connection("list_devices") as conn:
            return await fetch_devices(conn, clause, *args)

    async def device_keys_snapshot(self) -> dict[str, DeviceRecord]:
        """Every device with all its keys, by id: the ingestor's registry cache."""
        async with self._connection("device_keys_snapshot") as conn:
            records = await fetch_devices(conn, "")
        return {r.device_id: r for r in records}

    # ------------------------------------------------------------------------ broker logins

    async def set_device_login(self, device_id: str, password_hash: str) -> None:
        """Store (or replace) the device's broker login, as its password hash only."""
        async with self._connection("issue_device_login") as conn:
            await conn.execute(
                "INSERT INTO device_mqtt_logins (device_id, password_hash) VALUES ($1, $2) "
                "ON CONFLICT (device_id) DO UPDATE SET password_hash = $2, issued_at = now()",
                device_id,
                password_hash,
            )

    async def device_logins(self) -> list[tuple[str, str, str]]:
        """``(device_id, district, password_hash)`` of every active (not revoked) device with a
        broker login, by device id."""
        async with self._connection("broker_logins") as conn:
            rows = await conn.fetch(
                "SELECT l.device_id, d.district, l.password_hash FROM device_mqtt_logins l "
                "JOIN devices d USING (device_id) WHERE d.status = 'active' ORDER BY l.device_id"
            )
        return [(r["device_id"], r["district"], r["password_hash"]) for r in rows]
