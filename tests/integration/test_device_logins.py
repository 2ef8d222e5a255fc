"""Issue 14, the device and operator commands, against `cityanchor up` (real PostgreSQL,
Mosquitto with its dynamic-security plugin, ingestors and API):

* item 5: `cityanchor device register` gives what `POST /v1/devices` gives, the broker login
  included, and the login works; `device revoke` deletes it from the broker as the API does;
* item 6: a new device's login is accepted the moment the answer (or the CLI) returns, every
  time; and `up`'s backstop no longer restarts the broker (disconnecting every device) for a
  login that is in the registry and on its way to the broker;
* item 9: `device ...` and `token ...` read `--config` (under `up` the database URL lives only
  in `DATA_DIR/config.toml`);
* item 14: `GET /v1/quarantine`, `cityanchor quarantine list`, and the receipt 404 that says
  "quarantined: <reason>" to an operator token only;
* item 15: `device list` and `token list` print a header row and page.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from anchor.api import tokens
from anchor.broker.logins import ADMIN_USER, BrokerAdmin, issue_device_login
from anchor.cli.commands import main as cli_main
from anchor.cli.up_broker import BrokerLogins, DeviceGate, service_dynsec
from anchor.keys import PrivateKey
from anchor.local import MosquittoServer, PostgresServer, free_port
from anchor.password_hashes import mosquitto_password_hash
from anchor.store import Store
from devices.signer import DeviceSigner
from integration.up_process import http_json, running_up

DISTRICT = "harbour"
_ids = iter(range(1, 100_000))


@dataclass
class Up:
    mqtt: str
    http: str
    token: str
    config: Path
    data_dir: Path


@pytest.fixture(scope="module")
def up(services_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    data_dir = Path(tempfile.mkdtemp(prefix="upd-", dir=services_dir))
    with running_up(data_dir, tmp_path_factory.mktemp("up") / "up.log") as doc:
        yield Up(
            mqtt=doc["mqtt"],
            http=doc["http"],
            token=Path(doc["token_file"]).read_text().strip(),
            config=data_dir / "config.toml",
            data_dir=data_dir,
        )


@pytest.fixture(autouse=True)
def _no_env_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # The commands must find everything in --config, as an operator's shell under `up` would.
    for name in list(os.environ):
        if name.startswith("CITYANCHOR_"):
            monkeypatch.delenv(name)


def _register(up: Up, signer: DeviceSigner) -> dict[str, Any]:
    status, answer = http_json(
        "POST",
        up.http + "/v1/devices",
        {
            "device_id": signer.device_id,
            "public_key_jwk": signer.key.public_key.to_jwk(),
            "district": DISTRICT,
            "kind": "iot.noise",
        },
        up.token,
    )
    assert status == 201, answer
    return answer


def _connack(url: str, username: str, password: str) -> int:
    """One connection attempt, no retry: the CONNACK reason code (0 accepted)."""
    host, port = url.removeprefix("mqtt://").rsplit(":", 1)
    answered = threading.Event()
    codes: list[int] = []
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=username, protocol=MQTTProtocolVersion.MQTTv5
    )
    client.username_pw_set(username, password)

    def on_connect(c: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        codes.append(rc.value)
        answered.set()

    client.on_connect = on_connect
    client.connect(host, int(port))
    client.loop_start()
    try:
        assert answered.wait(30), "no CONNACK"
    finally:
        client.disconnect()
        client.loop_stop()
    return codes[0]


def _publish(url: str, login: dict[str, Any], topic: str, payload: bytes) -> int:
    """Publish one QoS 1 message on the device's login; the PUBACK reason code."""
    host, port = url.removeprefix("mqtt://").rsplit(":", 1)
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=login["mqtt_username"],
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    client.username_pw_set(login["mqtt_username"], login["mqtt_password"])
    acked = threading.Event()
    codes: list[int] = []

    def on_publish(c: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        codes.append(rc.value)
        acked.set()

    client.on_publish = on_publish
    client.connect(host, int(port))
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1)
        assert acked.wait(30), "no PUBACK"
    finally:
        client.disconnect()
        client.loop_stop()
    return codes[0]


def _write_jwk(tmp_path: Path, key: PrivateKey, name: str) -> Path:
    path = tmp_path / f"{name}.jwk"
    path.write_text(json.dumps(key.public_key.to_jwk()))
    return path


# ------------------------------------------------------------------------------ items 5, 6


def test_api_login_is_accepted_the_moment_the_answer_arrives(up: Up) -> None:
    # Many times: a login refused for a moment after the 201 would show up here.
    for _ in range(25):
        signer = DeviceSigner(f"fresh-{next(_ids):05d}", PrivateKey.generate())
        answer = _register(up, signer)
        assert answer["mqtt_login_active"] is True
        code = _connack(up.mqtt, answer["mqtt_username"], answer["mqtt_password"])
        assert code == 0, f"{signer.device_id}: CONNACK {code:#x} right after the 201"


def test_cli_register_gives_the_api_answer_and_a_working_login(
    up: Up, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = ["--config", str(up.config)]
    api_answer = _register(up, DeviceSigner(f"api-{next(_ids):05d}", PrivateKey.generate()))
    for _ in range(10):
        key = PrivateKey.generate()
        device_id = f"cli-{next(_ids):05d}"
        jwk = _write_jwk(tmp_path, key, device_id)
        args = ["device", "register", device_id, "--jwk", str(jwk), "--district", DISTRICT]
        assert cli_main([*args, "--kind", "iot.noise", *cfg, "--json"]) == 0
        answer = json.loads(capsys.readouterr().out)
        assert set(answer) == set(api_answer)  # the same shape as POST /v1/devices
        assert answer["mqtt_username"] == device_id and answer["mqtt_login_active"] is True
        assert answer["kid"] == key.public_key.kid.hex()
        assert _connack(up.mqtt, device_id, answer["mqtt_password"]) == 0

        # The login publishes a reading the ingestor takes (PUBACK 0: a subscriber matched).
        raw = DeviceSigner(device_id, key).sign("iot.noise", {"db": 41.5})
        topic = f"city/{DISTRICT}/{device_id}/readings"
        assert _publish(up.mqtt, answer, topic, raw) == 0

    # The text output prints the login once, with the broker's confirmation.
    key = PrivateKey.generate()
    device_id = f"cli-{next(_ids):05d}"
    jwk = _write_jwk(tmp_path, key, device_id)
    assert cli_main(["device", "register", device_id, "--jwk", str(jwk),
                     "--district", DISTRICT, *cfg]) == 0  # fmt: skip
    out = capsys.readouterr().out
    login_line = next(line for line in out.splitlines() if "mqtt login:" in line)
    password = login_line.split(" / ", 1)[1].strip()
    assert "accepted by the broker now" in out
    assert _connack(up.mqtt, device_id, password) == 0

    # `device revoke` deletes the login from the broker at once, as the API's revoke does.
    assert cli_main(["device", "revoke", device_id, "--reason", "stolen", *cfg]) == 0
    capsys.readouterr()
    assert _connack(up.mqtt, device_id, password) != 0


def test_cli_import_issues_every_device_its_login(
    up: Up, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = [f"imp-{next(_ids):05d}" for _ in range(3)]
    doc = [
        {"device_id": d, "public_key_jwk": PrivateKey.generate().public_key.to_jwk(),
         "district": DISTRICT, "kind": "iot.noise"}
        for d in ids
    ]  # fmt: skip
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps(doc))
    assert cli_main(["device", "import", str(path), "--config", str(up.config), "--json"]) == 0
    answers = json.loads(capsys.readouterr().out)
    assert [a["device_id"] for a in answers] == ids
    for a in answers:
        assert a["mqtt_login_active"] is True
        assert _connack(up.mqtt, a["mqtt_username"], a["mqtt_password"]) == 0


def test_up_backstop_does_not_restart_the_broker_for_a_login_on_its_way(
    postgres: PostgresServer, services_dir: Path, tmp_path: Path
) -> None:
    """The API writes a login into the registry, then has the broker create it. `up`'s
    backstop used to read the registry in between, find the broker lacking the login and
    restart the broker: every device was disconnected and kept out by the gate until the
    ingestors subscribed again, the new one included (1.5-2.5 s)."""
    dsn = postgres.create_database("i14_backstop")
    ingest_pw, admin_pw = "ingest-pw-i14", "admin-pw-i14"
    mq = MosquittoServer(
        Path(tempfile.mkdtemp(prefix="mqb-", dir=services_dir)),
        dynsec=service_dynsec([], ingest_pw, admin_pw),
    ).start()
    try:
        admin = BrokerAdmin(mq.url, ADMIN_USER, admin_pw)
        gate = DeviceGate(admin, tmp_path / "ingest.log")
        logins = BrokerLogins(mq, dsn, ingest_pw, admin_pw, gate)

        async def registry_only(device_id: str | None, password: str = "") -> None:
            store = await Store.connect(dsn, max_size=1)
            try:
                await store.migrate()
                if device_id is None:
                    return
                key = PrivateKey.generate().public_key
                await store.register_device(device_id, key, district=DISTRICT, kind="k")
                await store.set_device_login(device_id, mosquitto_password_hash(password))
            finally:
                await store.close()

        asyncio.run(registry_only(None))  # the schema, no device yet
        logins.refresh(force=True)  # the registry is empty: nothing to do
        assert logins.current == {}
        pid = mq.pid
        # Mid-registration: in the registry, not yet in the broker.
        asyncio.run(registry_only("midway-1", "pw-midway-1"))
        logins.refresh(force=True)
        assert mq.pid == pid, "the broker was restarted for a login on its way"
        # The API's createClient arrives: the login works, and nothing was restarted.
        admin.add_device("midway-1", DISTRICT, "pw-midway-1")
        logins.refresh(force=True)
        assert mq.pid == pid
        assert _connack(mq.url, "midway-1", "pw-midway-1") == 0

        # A login the broker still lacks at the next look is lost (the API could not reach
        # the broker): then, and only then, the broker is restarted from the registry.
        asyncio.run(registry_only("lost-1", "pw-lost-1"))
        logins.refresh(force=True)
        assert mq.pid == pid
        logins.refresh(force=True)
        assert mq.pid != pid
        assert "lost-1" in (logins.current or {})
    finally:
        mq.stop()


def test_a_login_waits_for_a_broker_that_is_back_within_the_timeout(
    postgres: PostgresServer, services_dir: Path
) -> None:
    """The answer is not sent before the broker confirmed the login: a broker that cannot be
    reached at first is tried again (up to the admin timeout) and the answer then says
    `mqtt_login_active: true`, and the login works at once."""
    dsn = postgres.create_database("i14_retry")
    mq = MosquittoServer(
        Path(tempfile.mkdtemp(prefix="mqr-", dir=services_dir)),
        port=free_port(),
        dynsec=service_dynsec([], "ingest-pw-r", "admin-pw-r"),
    ).start()
    mq.stop()  # down when the registration arrives
    admin = BrokerAdmin(mq.url, ADMIN_USER, "admin-pw-r", timeout=60)
    result: list[dict[str, Any]] = []

    async def register() -> None:
        store = await Store.connect(dsn, max_size=1)
        try:
            await store.migrate()
            key = PrivateKey.generate().public_key
            await store.register_device("retry-1", key, district=DISTRICT, kind="k")
            result.append(
                await issue_device_login(store, "retry-1", district=DISTRICT, admin=admin)
            )
        finally:
            await store.close()

    worker = threading.Thread(target=lambda: asyncio.run(register()))
    worker.start()
    try:
        time.sleep(1.0)  # let it find the broker down at least once
        mq.start()
        worker.join(90)
        assert not worker.is_alive()
        (answer,) = result
        assert answer["mqtt_login_active"] is True
        assert _connack(mq.url, "retry-1", answer["mqtt_password"]) == 0
    finally:
        worker.join(90)
        mq.stop()


# ------------------------------------------------------------------------------ items 9, 15


def test_list_commands_read_the_config_print_a_header_and_page(
    up: Up, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = ["--config", str(up.config)]
    for _ in range(3):
        _register(up, DeviceSigner(f"list-{next(_ids):05d}", PrivateKey.generate()))
    assert cli_main(["device", "list", "--limit", "2", *cfg]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("\t") == ["DEVICE_ID", "STATUS", "DISTRICT", "KIND", "KID", "KEYS"]
    assert len(lines) == 4 and lines[3].startswith("# more: --after ")
    cursor = lines[3].rsplit(" ", 1)[1]
    assert cursor == lines[2].split("\t")[0]
    assert cli_main(["device", "list", "--limit", "2", "--after", cursor, *cfg]) == 0
    nxt = capsys.readouterr().out.splitlines()
    assert nxt[0].startswith("DEVICE_ID") and nxt[1].split("\t")[0] > cursor

    async def more_tokens() -> None:
        store = await Store.connect(_dsn(up), max_size=1)
        try:
            for i in range(3):
                await tokens.create_token(store, name=f"list-{i}", scopes=["metrics:read"])
        finally:
            await store.close()

    asyncio.run(more_tokens())
    assert cli_main(["token", "list", "--limit", "2", *cfg]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("\t") == ["ID", "NAME", "SCOPES", "STATE", "LAST_USED"]
    assert len(lines) == 4 and lines[3] == f"# more: --after {lines[2].split(chr(9))[0]}"
    assert cli_main(["token", "list", "--after", lines[3].rsplit(" ", 1)[1], *cfg, "--json"]) == 0
    rest = json.loads(capsys.readouterr().out)
    assert rest and all(t["id"] > int(lines[2].split("\t")[0]) for t in rest)


def _dsn(up: Up) -> str:
    from anchor.host.config import load_settings

    return load_settings(toml_path=up.config, env={}).database_url


# ---------------------------------------------------------------------------------- item 14


def test_quarantine_is_listed_and_explained_to_operators_only(
    up: Up, capsys: pytest.CaptureFixture[str]
) -> None:
    device = DeviceSigner(f"quar-{next(_ids):05d}", PrivateKey.generate())
    login = _register(up, device)
    # Signed with a key the registry does not have for it: quarantined as unknown_kid.
    impostor = DeviceSigner(device.device_id, PrivateKey.generate())
    raw = impostor.sign("iot.noise", {"db": 99.0})
    topic = f"city/{DISTRICT}/{device.device_id}/readings"
    assert _publish(up.mqtt, login, topic, raw) == 0

    path = f"/v1/quarantine?device_id={device.device_id}"
    deadline = time.monotonic() + 60
    while True:
        status, page = http_json("GET", up.http + path, token=up.token)
        assert status == 200, page
        if page["rows"]:
            break
        assert time.monotonic() < deadline, "the reading was never quarantined"
        time.sleep(0.2)
    (row,) = page["rows"]
    assert (row["device_id"], row["seq"], row["reason"]) == (device.device_id, 1, "unknown_kid")
    assert page["next"] is None and "raw" not in row
    status, page = http_json("GET", up.http + path + "&reason=bad_signature", token=up.token)
    assert (status, page["rows"]) == (200, [])
    status, problem = http_json("GET", up.http + path)  # no token
    assert (status, problem["reason"]) == (401, "unauthorized")

    # The CLI: the same rows, by device and reason, with a header.
    cfg = ["--config", str(up.config)]
    assert cli_main(["quarantine", "list", "--device", device.device_id, *cfg]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("\t")[:5] == ["ID", "RECEIVED_AT", "DEVICE_ID", "SEQ", "REASON"]
    assert [line.split("\t")[2:5] for line in lines[1:]] == [[device.device_id, "1", "unknown_kid"]]
    args = ["quarantine", "list", "--device", device.device_id, "--reason", "unknown_kid"]
    assert cli_main([*args, *cfg, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"][0]["id"] == row["id"]

    # The receipt: a bare 404 for the public, "quarantined: <reason>" for an operator.
    receipt = f"{up.http}/v1/receipts/{device.device_id}/1"
    status, public = http_json("GET", receipt)
    assert status == 404 and "quarantined" not in public["detail"]
    status, bad_token = http_json("GET", receipt, token="ca_1_not-a-real-token")
    assert status == 404 and "quarantined" not in bad_token["detail"]
    status, operator = http_json("GET", receipt, token=up.token)
    assert (status, operator["reason"]) == (404, "not_found")
    assert "quarantined: unknown_kid" in operator["detail"]
