"""The one device-id rule (anchor.device_id) and the broker configuration built on it."""

from __future__ import annotations

import pytest

from anchor.broker.logins import ADMIN_USER, INGEST_USER, DeviceLogin, dynsec_config
from anchor.device_id import (
    DeviceIdError,
    check_device_id,
    check_new_device_id,
    is_device_id,
    reserved_reason,
)
from anchor.password_hashes import mosquitto_password_hash

RESERVED = [".", "..", "-", "--help", "-x", "cityanchor", "cityanchor-ingest",
            "cityanchor-ingest-0", "cityanchor-admin", "CITYANCHOR.x",
            "cityanchor_sim"]  # fmt: skip
ALLOWED = ["aq-nanshan-0001", "a", "...", ".hidden", "x.", "cityanchorage", "my-cityanchor-1",
           "A" * 64, "0", "_", "ingest"]  # fmt: skip


@pytest.mark.parametrize("device_id", RESERVED)
def test_reserved_ids_are_well_formed_but_refused_for_registration(device_id: str) -> None:
    assert check_device_id(device_id) == device_id  # still parseable wherever ids appear
    assert reserved_reason(device_id) is not None
    with pytest.raises(DeviceIdError) as exc:
        check_new_device_id(device_id)
    assert exc.value.reason == "device_id_reserved"


@pytest.mark.parametrize("device_id", ALLOWED)
def test_ordinary_ids_may_be_registered(device_id: str) -> None:
    assert check_new_device_id(device_id) == device_id


@pytest.mark.parametrize("value", ["", "a" * 65, "a/b", "a+b", "#", "é", "a b", None, 7, b"x"])
def test_malformed_ids_are_invalid_not_reserved(value: object) -> None:
    assert not is_device_id(value)
    for check in (check_device_id, check_new_device_id):
        with pytest.raises(DeviceIdError) as exc:
            check(value)
        assert exc.value.reason == "device_id_invalid"


def test_dynsec_config_denies_by_default_and_binds_each_device_to_its_id_and_topic() -> None:
    login = DeviceLogin("aq-1", "nanshan", mosquitto_password_hash("pw"))
    odd = DeviceLogin("aq-2", "north/+", mosquitto_password_hash("pw"))
    cfg = dynsec_config(
        [odd, login],
        ingest_hash=mosquitto_password_hash("i"),
        admin_hash=mosquitto_password_hash("a"),
    )
    access = cfg["defaultACLAccess"]
    assert access["subscribe"] is False and access["publishClientSend"] is False
    clients = {c["username"]: c for c in cfg["clients"]}
    assert set(clients) == {INGEST_USER, ADMIN_USER, "aq-1", "aq-2"}
    assert clients["aq-1"]["clientid"] == "aq-1"
    assert "clientid" not in clients[INGEST_USER]  # N workers share the login, one id each
    assert len(clients["aq-1"]["password"]) == 88 and clients["aq-1"]["iterations"] >= 1
    roles = {r["rolename"]: r["acls"] for r in cfg["roles"]}
    assert roles["device/aq-1"] == [
        {"acltype": "publishClientSend", "topic": "city/nanshan/aq-1/readings", "priority": 0,
         "allow": True},
        {"acltype": "subscribeLiteral", "topic": "city/nanshan/aq-1/ack", "priority": 0,
         "allow": True},
    ]  # fmt: skip
    # A district that would widen a literal topic into a wildcard gets no right at all.
    assert roles["device/aq-2"] == []
    # Devices subscribe to nothing but their own ack topic (issue 11), literally.
    device_acls = [a for name, acls in roles.items() if name.startswith("device/") for a in acls]
    assert all(
        a["acltype"] == "publishClientSend"
        or (a["acltype"] == "subscribeLiteral" and a["topic"].endswith("/ack"))
        for a in device_acls
    )
    # The ingestors may publish the acknowledgements, to ack topics only.
    ingest_pub = [a["topic"] for a in roles["cityanchor-ingest"] if a["acltype"].startswith("pub")]
    assert ingest_pub == ["city/+/+/ack"]
