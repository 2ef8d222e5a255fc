"""The private PostgreSQL and Mosquitto of anchor.local, exercised as the ingestor uses them."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import queue
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from anchor.local import MosquittoServer, PostgresServer, ServiceError, find_pg_bindir
from anchor.local import mosquitto as local_mosquitto
from anchor.password_hashes import mosquitto_password_hash

TIMEOUT = 10.0


# ---------------------------------------------------------------------------------------------
# Helpers


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _children() -> set[int]:
    kids: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        try:
            kids.update(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return kids


def _non_loopback_addresses() -> list[str]:
    """IPv4 addresses of this host other than 127/8 (none on a host without a network)."""
    found: set[str] = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        # A UDP "connect" sends nothing; it only makes the kernel choose a source address.
        try:
            s.connect(("192.0.2.1", 9))
            found.add(s.getsockname()[0])
        except OSError:
            pass
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            found.add(str(info[4][0]))
    except OSError:
        pass
    return sorted(a for a in found if not a.startswith("127.") and a != "0.0.0.0")


def _assert_not_reachable(address: str, port: int) -> None:
    with pytest.raises(OSError):
        socket.create_connection((address, port), timeout=2).close()


class MqttClient:
    """A paho MQTT v5 client on its own network thread, with results handed over in queues."""

    def __init__(
        self,
        broker: MosquittoServer,
        client_id: str | None = None,
        *,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.broker = broker
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"t-{uuid.uuid4().hex[:12]}",
            protocol=mqtt.MQTTv5,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.connacks: queue.Queue[tuple[ReasonCode, bool]] = queue.Queue()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.subacks: queue.Queue[list[ReasonCode]] = queue.Queue()
        self.pubacks: dict[int, ReasonCode] = {}
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish

    def _on_connect(self, c: Any, u: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        if rc.is_failure:
            # Stops paho's loop instead of letting it retry the refused login after a back-off.
            self.client.disconnect()
        self.connacks.put((rc, bool(flags.session_present)))

    def _on_message(self, c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        self.messages.put(msg)

    def _on_subscribe(self, c: Any, u: Any, mid: int, rcs: list[ReasonCode], props: Any) -> None:
        self.subacks.put(rcs)

    def _on_publish(self, c: Any, u: Any, mid: int, rc: ReasonCode, props: Any) -> None:
        self.pubacks[mid] = rc

    def connect(
        self, *, clean_start: bool = True, session_expiry: int | None = None
    ) -> tuple[ReasonCode, bool]:
        """Connect and return (CONNACK reason code, session present)."""
        props = None
        if session_expiry is not None:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = session_expiry
        self.client.connect(
            self.broker.host,
            self.broker.port,
            keepalive=30,
            clean_start=clean_start,
            properties=props,
        )
        self.client.loop_start()
        rc, present = self.connacks.get(timeout=TIMEOUT)
        if rc.is_failure:
            self.client.loop_stop()
        return rc, present

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)
        rcs = self.subacks.get(timeout=TIMEOUT)
        assert not rcs[0].is_failure, rcs

    def publish(self, topic: str, payload: bytes) -> ReasonCode:
        """Publish at QoS 1, wait for the PUBACK and return its reason code."""
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=TIMEOUT)
        return self.pubacks[info.mid]

    def next_message(self) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=TIMEOUT)

    def close(self) -> None:
        if self.client.is_connected():
            self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def clients() -> Iterator[list[MqttClient]]:
    """Collects the test's clients and closes them however the test ends."""
    made: list[MqttClient] = []
    yield made
    for c in made:
        c.close()


@contextlib.contextmanager
def _closing(made: list[MqttClient]) -> Iterator[None]:
    """Close the clients before their broker stops: a client that loses its broker sleeps in
    paho's reconnect back-off, and closing it afterwards waits that sleep out."""
    try:
        yield
    finally:
        for c in made:
            c.close()


def _client(made: list[MqttClient], broker: MosquittoServer, *args: Any, **kw: Any) -> MqttClient:
    c = MqttClient(broker, *args, **kw)
    made.append(c)
    return c


def _occupied_port() -> tuple[socket.socket, int]:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s, s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# PostgreSQL


def test_postgres_answers_with_psql_and_asyncpg(postgres: PostgresServer, pg_dsn: str) -> None:
    password = postgres.password_path.read_text().strip()
    assert pg_dsn == f"postgresql://cityanchor:{password}@127.0.0.1:{postgres.port}/cityanchor"
    assert postgres.psql("SELECT current_database()") == "cityanchor"
    assert postgres.psql("SHOW fsync") == "on"
    assert postgres.psql("SHOW unix_socket_directories") == str(postgres.socket_dir)

    async def query() -> tuple[str, str]:
        conn = await asyncpg.connect(pg_dsn)
        try:
            row = await conn.fetchrow("SELECT current_user, version()")
            assert row is not None
            return row[0], row[1]
        finally:
            await conn.close()

    user, version = asyncio.run(query())
    assert user == "cityanchor"  # the service role, not the superuser
    assert version.startswith("PostgreSQL")


def test_postgres_listens_on_loopback_only(postgres: PostgresServer) -> None:
    assert postgres.psql("SHOW listen_addresses") == "127.0.0.1"
    for address in _non_loopback_addresses():
        _assert_not_reachable(address, postgres.port)


def test_postgres_row_survives_crash_and_restart(service_dir: Path) -> None:
    server = PostgresServer(service_dir / "pg")
    with server:
        first_start_created = server.created
        assert first_start_created

        async def write() -> None:
            conn = await asyncpg.connect(server.dsn)
            try:
                await conn.execute("CREATE TABLE t (id int PRIMARY KEY, body bytea NOT NULL)")
                await conn.execute("INSERT INTO t VALUES (1, $1)", b"\x00reading")
            finally:
                await conn.close()

        asyncio.run(write())
        # Immediate mode is a crash as far as the data files go: no shutdown checkpoint, so
        # the row comes back only through the fsynced WAL.
        pid, port = server.pid, server.port
        server.stop(mode="immediate")
        assert pid is not None and not _pid_alive(pid)

    with server:
        assert not server.created, "initdb must run only on the first start"
        assert server.port == port, "a restart keeps the port while it is free"

        async def read() -> bytes:
            conn = await asyncpg.connect(server.dsn)
            try:
                value: bytes = await conn.fetchval("SELECT body FROM t WHERE id = 1")
                return value
            finally:
                await conn.close()

        assert asyncio.run(read()) == b"\x00reading"


def test_postgres_taken_port_is_port_in_use(postgres: PostgresServer, service_dir: Path) -> None:
    sock, port = _occupied_port()
    with sock:
        with pytest.raises(ServiceError) as exc:
            PostgresServer(service_dir / "a", port=port).start()
        assert exc.value.reason == "port_in_use"
    with pytest.raises(ServiceError) as exc:
        PostgresServer(service_dir / "b", port=postgres.port).start()
    assert exc.value.reason == "port_in_use"
    # Refused before initdb: no half-made cluster is left behind.
    assert not (service_dir / "b" / "data").exists()


def test_find_pg_bindir_override_and_missing(tmp_path: Path) -> None:
    real = find_pg_bindir()
    assert (real / "initdb").is_file() and (real / "pg_ctl").is_file()
    assert find_pg_bindir({"CITYANCHOR_PG_BINDIR": str(real)}) == real
    with pytest.raises(ServiceError) as exc:
        find_pg_bindir({"CITYANCHOR_PG_BINDIR": str(tmp_path)})
    assert exc.value.reason == "binary_missing"


# ---------------------------------------------------------------------------------------------
# Mosquitto


def test_mqtt_v5_qos1_publish_reaches_subscriber(
    mosquitto: MosquittoServer, clients: list[MqttClient]
) -> None:
    assert mosquitto.url == f"mqtt://127.0.0.1:{mosquitto.port}"
    sub = _client(clients, mosquitto)
    pub = _client(clients, mosquitto)
    assert not sub.connect()[0].is_failure
    sub.subscribe("city/+/aq-1/readings")
    assert not pub.connect()[0].is_failure
    assert not pub.publish("city/nanshan/aq-1/readings", b"\xd2signed").is_failure
    msg = sub.next_message()
    assert (msg.topic, msg.payload, msg.qos) == ("city/nanshan/aq-1/readings", b"\xd2signed", 1)


def test_mosquitto_listens_on_loopback_only(mosquitto: MosquittoServer) -> None:
    conf = mosquitto.conf_path.read_text()
    assert f"listener {mosquitto.port} 127.0.0.1\n" in conf
    for address in _non_loopback_addresses():
        _assert_not_reachable(address, mosquitto.port)


ACL = """\
user dev1
topic write city/+/dev1/readings

user ingestor
topic read city/#
"""


def test_mosquitto_password_and_acl(service_dir: Path, clients: list[MqttClient]) -> None:
    users = {"dev1": "dev1-secret", "ingestor": "ingestor-secret"}
    broker = MosquittoServer(service_dir / "mq", users=users, acl=ACL)
    with broker, _closing(clients):
        assert "allow_anonymous false" in broker.conf_path.read_text()
        assert "dev1-secret" not in broker.password_path.read_text()

        rc, _ = _client(clients, broker, username="dev1", password="wrong").connect()
        # Mosquitto 2.0 answers 0x87 "Not authorized"; 0x86 would be as good.
        assert rc.value in (0x86, 0x87)
        rc, _ = _client(clients, broker).connect()
        assert rc.is_failure, "anonymous login must be refused"

        ingestor = _client(clients, broker, username="ingestor", password="ingestor-secret")
        assert not ingestor.connect()[0].is_failure
        ingestor.subscribe("city/#")
        dev1 = _client(clients, broker, username="dev1", password="dev1-secret")
        assert not dev1.connect()[0].is_failure

        # The forbidden publish goes first: had it been delivered, it would arrive first too
        # (one publisher, one subscriber, QoS 1: in order).
        assert dev1.publish("city/x/dev2/readings", b"spoofed").value == 0x87
        assert not dev1.publish("city/x/dev1/readings", b"genuine").is_failure
        msg = ingestor.next_message()
        assert (msg.topic, msg.payload) == ("city/x/dev1/readings", b"genuine")
        assert ingestor.messages.empty()


def test_mosquitto_set_auth_reloads_logins(service_dir: Path, clients: list[MqttClient]) -> None:
    broker = MosquittoServer(service_dir / "mq", users={"dev1": "one"}, acl=ACL)
    with broker, _closing(clients):
        pid = broker.pid
        broker.set_auth({"dev1": "one", "dev2": "two"}, ACL + "\nuser dev2\ntopic write x\n")
        deadline = time.monotonic() + TIMEOUT
        while True:
            rc, _ = _client(clients, broker, username="dev2", password="two").connect()
            if not rc.is_failure:
                break
            assert time.monotonic() < deadline, "SIGHUP did not reload the password file"
            time.sleep(0.1)
        assert broker.pid == pid, "a reload must not restart the broker"


def test_builtin_password_hash_matches_mosquitto(
    service_dir: Path, clients: list[MqttClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Known answer taken from `mosquitto_passwd -U` (mosquitto 2.0.11) for dev1:s3cret.
    line = (
        "$7$101$gyqWESINpXHiUvDr$FYCtXmXTjNqDTGzt3CQCMiiLOxek82lqa4UYw4sUyDc+swH0NvYGsPXySXzTUuIIq"
        "HiR7843lYJmSct1Wb/2NA=="
    )
    salt = base64.b64decode(line.split("$")[3])
    assert mosquitto_password_hash("s3cret", salt=salt) == line

    # And the broker accepts a file written without mosquitto_passwd.
    monkeypatch.setattr(local_mosquitto, "_find_passwd_tool", lambda: None)
    broker = MosquittoServer(service_dir / "mq", users={"dev1": "s3cret"})
    with broker, _closing(clients):
        assert broker.password_path.read_text().startswith("dev1:$7$101$")
        assert (
            not _client(clients, broker, username="dev1", password="s3cret").connect()[0].is_failure
        )
        assert _client(clients, broker, username="dev1", password="nope").connect()[0].is_failure


def test_persistent_session_survives_offline_time_and_broker_restart(
    service_dir: Path, clients: list[MqttClient]
) -> None:
    broker = MosquittoServer(service_dir / "mq")
    with broker, _closing(clients):
        sub = _client(clients, broker, "ingestor-1")
        sub.connect(clean_start=False, session_expiry=3600)
        sub.subscribe("city/#")
        sub.close()

        pub = _client(clients, broker)
        pub.connect()
        assert not pub.publish("city/a/dev1/readings", b"while-offline").is_failure

        sub = _client(clients, broker, "ingestor-1")
        rc, present = sub.connect(clean_start=False, session_expiry=3600)
        assert not rc.is_failure and present
        assert sub.next_message().payload == b"while-offline"
        sub.close()

        assert not pub.publish("city/a/dev1/readings", b"across-restart").is_failure
        pub.close()
    # Stopped with SIGTERM: Mosquitto writes its persistence database; same dir, same port.
    assert (broker.persistence_dir / "mosquitto.db").is_file()
    port = broker.port
    with broker, _closing(clients):
        assert broker.port == port, "a restart keeps the port while it is free"
        sub = _client(clients, broker, "ingestor-1")
        rc, present = sub.connect(clean_start=False, session_expiry=3600)
        assert not rc.is_failure and present
        msg = sub.next_message()
        assert (msg.payload, msg.qos) == (b"across-restart", 1)


def test_mosquitto_taken_port_is_port_in_use(mosquitto: MosquittoServer, service_dir: Path) -> None:
    sock, port = _occupied_port()
    with sock, pytest.raises(ServiceError) as exc:
        MosquittoServer(service_dir / "a", port=port).start()
    assert exc.value.reason == "port_in_use"
    with pytest.raises(ServiceError) as exc:
        MosquittoServer(service_dir / "b", port=mosquitto.port).start()
    assert exc.value.reason == "port_in_use"


# ---------------------------------------------------------------------------------------------
# Nothing left behind


def test_stop_leaves_no_process(service_dir: Path) -> None:
    pg = PostgresServer(service_dir / "pg", fsync=False).start()
    mq = MosquittoServer(service_dir / "mq").start()
    pids = [pg.pid, mq.pid]
    assert all(p is not None and _pid_alive(p) for p in pids)
    assert mq.pid in _children()
    pg.stop()
    mq.stop()
    for pid in pids:
        assert pid is not None
        deadline = time.monotonic() + 5
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _pid_alive(pid)
        assert pid not in _children()
    assert not pg.running and not mq.running
    pg.stop()  # idempotent
    mq.stop()
