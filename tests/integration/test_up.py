"""`cityanchor up`: everything on one machine, through its stable interfaces (DESIGN.md):
up.json, POST /v1/devices with the operator token, MQTT, GET /v1/receipts, verify --rpc; then a
clean stop, and a restart on the same data dir that resumes with every reading and anchor.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from anchor.cli.commands import main as cli_main
from anchor.keys import PrivateKey
from devices.signer import DeviceSigner
from integration.up_process import http_json


def _start(data_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYANCHOR_")}
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "anchor",
                "up",
                "--data-dir",
                str(data_dir),
                "--anchor-period",
                "1s",
            ],
            env=env,
            stdout=out,
            stderr=out,
        )


def _wait_up(proc: subprocess.Popen[bytes], data_dir: Path, log: Path) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while not (data_dir / "up.json").exists():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    doc: dict[str, Any] = json.loads((data_dir / "up.json").read_text())
    return doc


def _stop(proc: subprocess.Popen[bytes], data_dir: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(90) == 0
    assert not (data_dir / "up.json").exists()


def _request(method: str, url: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    return http_json(method, url, body, token, timeout=10)


def _client(url: str, username: str, password: str) -> mqtt.Client:
    u = urlsplit(url)
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=username,  # a device login is bound to its client id, its device id
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    client.username_pw_set(username, password)
    client.connect(u.hostname or "127.0.0.1", u.port or 1883)
    client.loop_start()
    return client


def _publish(
    url: str,
    signer: DeviceSigner,
    n: int,
    login: dict[str, str],
    topic_device: str | None = None,
) -> tuple[list[int], list[int]]:
    """Publish n readings; returns their seqs and the PUBACK reason codes."""
    client = _client(url, login["mqtt_username"], login["mqtt_password"])
    codes: list[int] = []
    client.on_publish = lambda c, u, mid, rc, props: codes.append(rc.value)
    seqs = []
    try:
        deadline = time.monotonic() + 10
        while not client.is_connected():
            assert time.monotonic() < deadline, "device login refused"
            time.sleep(0.05)
        for i in range(n):
            raw = signer.sign("iot.water_level", {"level_m": 1.0 + i / 100})
            topic = f"city/harbour/{topic_device or signer.device_id}/readings"
            client.publish(topic, raw, qos=1).wait_for_publish(10)
            seqs.append(signer.seq)
        deadline = time.monotonic() + 10
        while len(codes) < n and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        client.disconnect()
        client.loop_stop()
    return seqs, codes


def _connect_code(url: str, username: str, password: str) -> int:
    u = urlsplit(url)
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=username,
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    client.username_pw_set(username, password)
    codes: list[int] = []
    client.on_connect = lambda c, ud, flags, rc, props: codes.append(rc.value)
    client.connect(u.hostname or "127.0.0.1", u.port or 1883)
    deadline = time.monotonic() + 5
    while not codes and time.monotonic() < deadline:
        client.loop(0.1)
    client.disconnect()
    return codes[0] if codes else -1


def _wait_anchored(http: str, device_id: str, seq: int) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        status, doc = _request("GET", f"{http}/v1/receipts/{device_id}/{seq}")
        if status == 200 and doc["status"] == "anchored":
            return dict(doc)
        assert time.monotonic() < deadline, (status, doc)
        time.sleep(0.3)


def _port_closed(url: str) -> bool:
    u = urlsplit(url)
    with socket.socket() as s:
        return s.connect_ex((u.hostname or "127.0.0.1", u.port or 0)) != 0


def test_up_runs_everything_and_resumes_on_the_same_data_dir(
    tmp_path: Path, services_dir: Path
) -> None:
    # Short (unix socket paths are limited) and reachable by the servers' own users.
    data_dir = Path(tempfile.mkdtemp(prefix="up-", dir=services_dir))
    log = tmp_path / "up.log"
    signer = DeviceSigner("wl-harbour-0001", PrivateKey.generate())
    jwk_file = tmp_path / "device.jwk"
    jwk_file.write_text(json.dumps(signer.key.public_key.to_jwk()))
    vkey_file = tmp_path / "operator.vkey"

    proc = _start(data_dir, log)
    try:
        up = _wait_up(proc, data_dir, log)
        assert set(up) >= {
            "mqtt",
            "http",
            "rpc",
            "chain_id",
            "contract",
            "operator_vkey",
            "token_file",
        }
        token = Path(up["token_file"]).read_text().strip()
        status, device = _request(
            "POST",
            up["http"] + "/v1/devices",
            {
                "device_id": signer.device_id,
                "public_key_jwk": signer.key.public_key.to_jwk(),
                "district": "harbour",
                "kind": "iot.water_level",
            },
            token,
        )
        assert status == 201, device
        assert device["kid"] == signer.key.public_key.kid.hex()
        # The broker requires logins: the registration answer carries this device's, once.
        login = {k: device[k] for k in ("mqtt_username", "mqtt_password")}
        assert login["mqtt_username"] == signer.device_id
        # Accepted by the broker as soon as the answer arrived (DESIGN.md "Interfaces").
        assert _connect_code(up["mqtt"], signer.device_id, "wrong password") != 0
        seqs, codes = _publish(up["mqtt"], signer, 10, login)
        assert codes == [0] * 10

        # A second device may not publish under the first one's topic (per-device ACL).
        intruder = DeviceSigner("wl-harbour-0002", PrivateKey.generate())
        status, other = _request(
            "POST",
            up["http"] + "/v1/devices",
            {
                "device_id": intruder.device_id,
                "public_key_jwk": intruder.key.public_key.to_jwk(),
                "district": "harbour",
                "kind": "iot.water_level",
            },
            token,
        )
        assert status == 201, other
        intruder_login = {k: other[k] for k in ("mqtt_username", "mqtt_password")}
        _, denied = _publish(up["mqtt"], intruder, 1, intruder_login, topic_device=signer.device_id)
        assert denied == [0x87]  # not authorized: the broker refused it, nothing to ingest
        receipt = _wait_anchored(up["http"], signer.device_id, seqs[-1])
        assert receipt["anchors"][0]["chain_id"] == up["chain_id"]
        # The private dev chain is loopback and keyless: the explorer may check anchors with it.
        _, explorer = _request("GET", up["http"] + "/explorer/config.json")
        assert [c["rpc_url"] for c in explorer["chains"]] == [up["rpc"]]
        (tmp_path / "r1.json").write_text(json.dumps(receipt))
        vkey_file.write_text(up["operator_vkey"] + "\n")
        assert (
            cli_main(
                [
                    "verify",
                    str(tmp_path / "r1.json"),
                    "--device-key",
                    str(jwk_file),
                    "--log-key",
                    str(vkey_file),
                    "--rpc",
                    up["rpc"],
                    "-q",
                ]
            )
            == 0
        )
        _stop(proc, data_dir)
        assert all(_port_closed(up[k]) for k in ("mqtt", "http", "rpc"))

        # Restart on the same data dir: same broker and chain addresses, every reading kept,
        # the chain state (and so the anchors) kept, and new readings continue the chain.
        proc = _start(data_dir, log)
        again = _wait_up(proc, data_dir, log)
        assert (again["mqtt"], again["rpc"], again["contract"]) == (
            up["mqtt"],
            up["rpc"],
            up["contract"],
        )
        status, old = _request("GET", f"{again['http']}/v1/receipts/{signer.device_id}/{seqs[0]}")
        assert status == 200 and old["status"] == "anchored"
        more, _ = _publish(again["mqtt"], signer, 5, login)
        latest = _wait_anchored(again["http"], signer.device_id, more[-1])
        (tmp_path / "r2.json").write_text(json.dumps(latest))
        (tmp_path / "r0.json").write_text(json.dumps(old))
        assert (
            cli_main(
                [
                    "verify",
                    str(tmp_path / "r0.json"),
                    str(tmp_path / "r2.json"),
                    "--device-key",
                    str(jwk_file),
                    "--log-key",
                    str(vkey_file),
                    "--rpc",
                    again["rpc"],
                    "-q",
                ]
            )
            == 0
        )
        # A simulated fleet registered through the API, each device on its own broker login.
        sim = subprocess.run(
            [sys.executable, "-m", "anchor", "simulate", "--mqtt", again["mqtt"], "--devices", "6",
             "--rate", "60/s", "--duration", "2s", "--district", "harbour", "--no-progress",
             "--register-via", again["http"], "--token-file", again["token_file"]],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert sim.returncode == 0, sim.stdout + sim.stderr
        summary = json.loads(sim.stdout.strip().splitlines()[-1])
        assert summary["acked"] == summary["sent"] > 0
        status, devices = _request("GET", again["http"] + "/v1/devices?district=harbour")
        simulated = [
            d["device_id"]
            for d in devices["devices"]
            if d["device_id"].startswith(
                ("aq-", "noise-", "traffic-", "water-", "meter-", "parking-", "gnb-", "ue-")
            )
        ]
        assert len(simulated) == 6, devices
        deadline = time.monotonic() + 30
        while _request("GET", f"{again['http']}/v1/receipts/{simulated[0]}/1")[0] != 200:
            assert time.monotonic() < deadline, "simulated readings were not ingested"
            time.sleep(0.3)
        _stop(proc, data_dir)
    finally:
        # On a failed assertion: stop `up` the way an operator would (SIGTERM), so that it stops
        # the servers and children it started; SIGKILL would orphan them.
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
