"""A running cityanchor for API tests: data produced by the real ingestor, anchored by the real
job on the session's anvil, served by a real ``cityanchor api`` process.

``api_world`` (session): first one batch of exactly 8 readings (seq 1 of each device) is sealed
through the store's own seal transaction, the one the ingestor uses, so that tests have a
genuine batch of a known size (issue 10 item 6: the ``batch.size`` 8 -> 7 attack); then 8
devices (Ed25519 and P-256, COSE and JWS) publish 240 readings over MQTT; the ingestor seals
them; the anchoring job anchors the log; 40 more readings are sealed after that (so both
"anchored" and "sealed" receipts exist); then the API serves it all.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from anchor.anchoring.chains.evm import EvmBackend, EvmConfig
from anchor.anchoring.job import AnchorJob
from anchor.checkpoint import NoteSigner, generate_note_key
from anchor.envelope import parse_envelope
from anchor.keys import PrivateKey
from anchor.local import AnvilNode, MosquittoServer, PostgresServer, free_port
from anchor.sealing import Candidate
from anchor.store import DeviceSpec, Store
from devices.signer import DeviceSigner

__all__ = ["ApiWorld", "api_world"]

ORIGIN = "api-it.cityanchor.example/log"
DISTRICT = "apitest"


@dataclass
class ApiWorld:
    """Everything a test needs to talk to, and check, the running API."""

    base_url: str
    dsn: str
    operator: NoteSigner
    signers: dict[str, DeviceSigner]
    rpc_url: str
    chain_id: int
    contract: str
    workdir: Path
    env: dict[str, str] = field(repr=False, default_factory=dict)
    anchored: list[tuple[str, int]] = field(default_factory=list)  # (device_id, seq)
    sealed_only: list[tuple[str, int]] = field(default_factory=list)
    # The batch of exactly 8 (anchored), in batch order: eight[i] is leaf i.
    eight: list[tuple[str, int]] = field(default_factory=list)

    def url(self, path: str) -> str:
        return self.base_url + path

    def get_json(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(self.url(path), timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")


def _publish_all(url: str, messages: list[tuple[str, bytes]]) -> None:
    host, port = url.removeprefix("mqtt://").split(":")
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"api-fixture-{os.getpid()}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    client.connect(host, int(port))
    client.loop_start()
    try:
        infos = [client.publish(t, p, qos=1) for t, p in messages]
        for info in infos:
            info.wait_for_publish(30)
    finally:
        client.disconnect()
        client.loop_stop()


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


async def _stored(dsn: str) -> int:
    store = await Store.connect(dsn)
    try:
        return (await store.counts()).get("readings", 0)
    finally:
        await store.close()


def _start(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "anchor", "-v", *argv], env=env, stdout=log, stderr=log
        )


@pytest.fixture(scope="session")
def api_world(
    postgres: PostgresServer,
    mosquitto: MosquittoServer,
    anvil: AnvilNode,
    anchor_registry: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ApiWorld]:
    workdir = tmp_path_factory.mktemp("api-world")
    name = f"api_{os.getpid()}"
    dsn = postgres.create_database(name)
    operator = generate_note_key(ORIGIN)
    (workdir / "operator.skey").write_text(operator.skey() + "\n")
    (workdir / "chain.key").write_text(anvil.accounts[2].private_key)
    signers = {}
    for i in range(8):
        key = PrivateKey.generate("P-256" if i % 4 == 1 else "Ed25519")
        s = DeviceSigner(f"api-dev-{i:02d}", key, format="jws" if i % 2 else "cose-sign1")
        signers[s.device_id] = s

    eight: list[tuple[str, int]] = []

    async def setup() -> None:
        store = await Store.connect(dsn)
        try:
            await store.migrate()
            await store.register_devices(
                [
                    DeviceSpec(d, s.key.public_key, district=DISTRICT, kind="iot.noise")
                    for d, s in signers.items()
                ]
            )
            candidates = []
            for d, s in signers.items():
                raw = s.sign("iot.noise", {"laeq_db": 50.0, "eight": 1})
                topic = f"city/{DISTRICT}/{d}/readings"
                candidates.append(Candidate(parse_envelope(raw), datetime.now(UTC), topic))
                eight.append((d, s.seq))
            result = await store.seal(
                candidates, [], signer=operator, origin=ORIGIN, ingestor="api-fixture"
            )
            assert (result.accepted, result.size) == (8, 8), result
        finally:
            await store.close()

    asyncio.run(setup())
    env = dict(
        os.environ,
        CITYANCHOR_DATABASE_URL=dsn,
        CITYANCHOR_MQTT_URL=mosquitto.url,
        CITYANCHOR_MQTT_TOPIC=f"$share/api{os.getpid()}/city/{DISTRICT}/+/readings",
        CITYANCHOR_OPERATOR_KEY_FILE=str(workdir / "operator.skey"),
        CITYANCHOR_LOG_ORIGIN=ORIGIN,
        CITYANCHOR_BATCH_SIZE="50",
        CITYANCHOR_BATCH_AGE_MS="300",
        CITYANCHOR_INGESTOR_NAME=f"api{os.getpid()}",
        CITYANCHOR_CHAIN_NAME="local",
        CITYANCHOR_CHAIN_RPC_URL=anvil.rpc_url,
        # What /explorer/config.json gives browsers (never the private rpc_url): the same node.
        CITYANCHOR_CHAIN_PUBLIC_RPC_URL=anvil.rpc_url,
        CITYANCHOR_CHAIN_ID=str(anvil.chain_id),
        CITYANCHOR_CHAIN_CONTRACT=anchor_registry,
        CITYANCHOR_CHAIN_KEY_FILE=str(workdir / "chain.key"),
        # Every test of the session talks to this server from one address: the per-client rate
        # limit (tested on its own in tests/unit/test_api_rate_limit.py) must not throttle them.
        CITYANCHOR_API_RATE_PER_S="0",
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ingest_log = workdir / "ingest.log"
        procs.append(_start(["ingest"], env, ingest_log))
        _wait(lambda: b"subscription active" in ingest_log.read_bytes(), 30, "the ingestor")
        world = ApiWorld(
            "", dsn, operator, signers, anvil.rpc_url, anvil.chain_id, anchor_registry, workdir, env
        )
        world.eight = eight
        ids = list(signers)

        def burst(n: int, into: list[tuple[str, int]]) -> None:
            messages = []
            for k in range(n):
                s = signers[ids[k % len(ids)]]
                raw = s.sign("iot.noise", {"laeq_db": 40.0 + k % 40, "k": k})
                messages.append((f"city/{DISTRICT}/{s.device_id}/readings", raw))
                into.append((s.device_id, s.seq))
            _publish_all(mosquitto.url, messages)

        burst(240, world.anchored)
        _wait(lambda: asyncio.run(_stored(dsn)) >= 248, 60, "248 stored readings")

        async def anchor_once() -> None:
            store = await Store.connect(dsn)
            try:
                backend = EvmBackend(
                    EvmConfig(
                        name="local",
                        rpc_url=anvil.rpc_url,
                        chain_id=anvil.chain_id,
                        contract=anchor_registry,
                        signer_key=anvil.accounts[2].private_key,
                    )
                )
                await AnchorJob(store=store, backends=[backend]).run_once(timeout_s=60, poll_s=0.1)
            finally:
                await store.close()

        asyncio.run(anchor_once())
        burst(40, world.sealed_only)
        _wait(lambda: asyncio.run(_stored(dsn)) >= 288, 60, "288 stored readings")
        port = free_port()
        api_log = workdir / "api.log"
        procs.append(_start(["api", "--port", str(port)], env, api_log))
        world.base_url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                with urllib.request.urlopen(world.url("/healthz"), timeout=2) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        _wait(up, 30, "the API")
        yield world
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
