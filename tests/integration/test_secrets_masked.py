"""Issue 10 item 9, end to end: the ingestor's start-up log line, against the real services,
names where it connects but not with which password (the DSN now carries the service role's
password, item 3; the broker URL may carry a login)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from anchor.checkpoint import generate_note_key
from anchor.local import MosquittoServer, PostgresServer
from anchor.store import Store


def test_ingestor_start_up_line_masks_the_dsn_and_broker_passwords(
    postgres: PostgresServer, mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    dsn = postgres.create_database("t_masked_startup")

    async def migrate() -> None:
        store = await Store.connect(dsn)
        try:
            await store.migrate()
        finally:
            await store.close()

    asyncio.run(migrate())
    password = postgres.password_path.read_text().strip()
    assert password in dsn
    skey = tmp_path / "operator.skey"
    skey.write_text(generate_note_key("masked.example/log").skey() + "\n")
    mqtt_url = f"mqtt://dev:MqttSecretPw@127.0.0.1:{mosquitto.port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYANCHOR_")}
    env.update(CITYANCHOR_MQTT_PASSWORD="IngestSecretPw", CITYANCHOR_MQTT_TOPIC="masked/+")
    log = tmp_path / "ingest.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "anchor", "-v", "ingest", "--database-url", dsn,
             "--mqtt", mqtt_url, "--operator-key", str(skey), "--verify-processes", "1"],
            env=env, stdout=out, stderr=out,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while b"subscription active" not in log.read_bytes():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        postgres.drop_database("t_masked_startup")
    text = log.read_text()
    start = next(line for line in text.splitlines() if "starting:" in line)
    assert f"postgresql://cityanchor:***@127.0.0.1:{postgres.port}/t_masked_startup" in start
    assert f"mqtt://dev:***@127.0.0.1:{mosquitto.port}" in start
    for secret in (password, "MqttSecretPw", "IngestSecretPw"):
        assert secret not in text
