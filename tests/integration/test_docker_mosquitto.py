"""docker/mosquitto/mosquitto.conf and compose's mosquitto healthcheck, run by a real Mosquitto.

The compose file is checked structurally elsewhere (tests/unit/test_docker_layout.py; no Docker
engine here). This runs the broker of this machine on the very configuration file the image
mounts, only its paths and ports moved into a private directory: TLS on the 8883 listener with
a certificate like secrets/tls.crt, the dynamic-security plugin with the file broker-config
writes, anonymous clients refused, and the healthcheck command of compose.yaml healthy while
the broker runs and unhealthy once it is gone.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from anchor.broker.logins import ADMIN_USER, INGEST_USER, BrokerAdmin, dynsec_config
from anchor.local import free_port
from anchor.local.base import chown_tree, is_root, system_user
from anchor.local.mosquitto import find_dynsec_plugin, find_mosquitto
from anchor.password_hashes import mosquitto_password_hash

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """secrets/tls.crt and tls.key as docker/README.md has them made: PEM, for 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mqtt.city.example")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    crt, pem = directory / "tls.crt", directory / "tls.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return crt, pem


class Broker:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.plain, self.tls = free_port(), free_port()
        self.password = "ingest-" + os.urandom(8).hex()
        self.admin_password = "admin-" + os.urandom(8).hex()
        self.cert, key = _self_signed(base)
        text = (DOCKER / "mosquitto" / "mosquitto.conf").read_text(encoding="utf-8")
        # Only paths and ports move; every setting stays as the image has it.
        for old, new in (
            ("listener 1883", f"listener {self.plain} 127.0.0.1"),
            ("listener 8883", f"listener {self.tls} 127.0.0.1"),
            ("/run/secrets/tls_cert", str(self.cert)),
            ("/run/secrets/tls_key", str(key)),
            ("/mosquitto/data/", f"{base}/data/"),
            ("/mosquitto/dynsec/dynamic-security.json", f"{base}/dynsec.json"),
            ("/usr/lib/mosquitto_dynamic_security.so", str(find_dynsec_plugin())),
        ):
            assert old in text, old
            text = text.replace(old, new)
        (base / "mosquitto.conf").write_text(text)
        (base / "data").mkdir()
        config = dynsec_config(
            [],
            ingest_hash=mosquitto_password_hash(self.password),
            admin_hash=mosquitto_password_hash(self.admin_password),
        )
        (base / "dynsec.json").write_text(json.dumps(config))
        if is_root():  # mosquitto drops to its own user and then writes data/ and dynsec.json
            chown_tree(base, system_user("mosquitto", "mosquitto"))
        self.log = (base / "mosquitto.out").open("wb")
        self.proc = subprocess.Popen(
            [str(find_mosquitto()), "-c", str(base / "mosquitto.conf")],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 15
        while not self._listening(self.tls):
            assert self.proc.poll() is None, (base / "mosquitto.out").read_text()
            assert time.monotonic() < deadline, "mosquitto did not listen"
            time.sleep(0.1)

    @staticmethod
    def _listening(port: int) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)
        self.log.close()


@pytest.fixture
def broker(service_dir: Path) -> Iterator[Broker]:
    b = Broker(service_dir)
    yield b
    b.stop()


def _connect_tls(
    broker: Broker, username: str | None, password: str | None, client_id: str = "tls-check"
) -> int:
    """The CONNACK reason code value of a TLS connection to the 8883 listener."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
    )
    context = ssl.create_default_context(cafile=str(broker.cert))  # verifies name and chain
    client.tls_set_context(context)
    if username is not None:
        client.username_pw_set(username, password)
    result: list[int] = []
    client.on_connect = lambda c, u, f, rc, p: result.append(rc.value)
    client.connect("127.0.0.1", broker.tls)
    deadline = time.monotonic() + 10
    while not result and time.monotonic() < deadline:
        client.loop(timeout=0.2)
    client.disconnect()
    assert result, "no CONNACK over TLS"
    return result[0]


def _healthcheck(port: int) -> int:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text(encoding="utf-8"))
    kind, command = compose["services"]["mosquitto"]["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    command = command.replace("$$", "$").replace("-p 1883", f"-p {port}")
    return subprocess.run(["sh", "-c", command], timeout=30, check=False).returncode


def test_compose_mosquitto_conf_serves_tls_and_logins_and_its_healthcheck_works(
    broker: Broker,
) -> None:
    assert _connect_tls(broker, INGEST_USER, broker.password) == 0  # Success
    assert _connect_tls(broker, INGEST_USER, "wrong") == 135  # Not authorized
    assert _connect_tls(broker, None, None) == 135  # no anonymous clients
    # A plain client on the TLS port gets no MQTT answer at all.
    with pytest.raises((OSError, ConnectionError)):
        plain = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="plain")
        plain.connect("127.0.0.1", broker.tls)
        for _ in range(20):
            if plain.loop(timeout=0.1) != mqtt.MQTT_ERR_SUCCESS:
                raise ConnectionError("closed")
    assert _healthcheck(broker.plain) == 0
    broker.stop()
    assert _healthcheck(broker.plain) != 0


def test_a_device_login_added_at_run_time_works_at_once_without_a_restart(
    broker: Broker,
) -> None:
    # What the api service does on POST /v1/devices (CITYANCHOR_MQTT_DEVICE_LOGINS=1) against
    # this broker configuration: the login over $CONTROL, no file edited, no restart.
    pid = broker.proc.pid
    admin = BrokerAdmin(f"mqtt://127.0.0.1:{broker.plain}", ADMIN_USER, broker.admin_password)
    device, password = "d7-dev-001", "device-" + os.urandom(8).hex()
    assert _connect_tls(broker, device, password, client_id=device) == 135
    admin.add_device(device, "d7", password)
    assert _connect_tls(broker, device, password, client_id=device) == 0
    # Client id bound to the login: the same credentials under another id are refused.
    assert _connect_tls(broker, device, password, client_id="someone-else") == 135
    admin.remove_device(device)
    assert _connect_tls(broker, device, password, client_id=device) == 135
    assert broker.proc.pid == pid and broker.proc.poll() is None
