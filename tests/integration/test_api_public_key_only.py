"""The API needs only the operator's PUBLIC key (issue 14 item 20): docker/compose.yaml mounts
operator.vkey into the api service, never the signing key. A real `cityanchor api` process
given the vkey file serves it as the operator key."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from anchor.checkpoint import generate_note_key
from anchor.host.files import load_operator_verifier
from anchor.local import PostgresServer, free_port
from anchor.store import Store


def _get(url: str) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            loaded: dict[str, object] = json.load(resp)
            return loaded
    except (urllib.error.URLError, OSError):
        return None


def test_api_runs_with_the_operator_vkey_only(postgres: PostgresServer, tmp_path: Path) -> None:
    dsn = postgres.create_database(f"vkeyonly_{os.getpid()}_{datetime.now(UTC):%H%M%S%f}")

    async def migrate() -> None:
        store = await Store.connect(dsn, max_size=1)
        try:
            await store.migrate()
        finally:
            await store.close()

    asyncio.run(migrate())
    operator = generate_note_key("vkey-only.cityanchor.example/log")
    vkey = tmp_path / "operator.vkey"
    vkey.write_text(operator.verifier.vkey() + "\n")
    skey = tmp_path / "operator.skey"
    skey.write_text(operator.skey() + "\n")
    # Both files give the same verifier; the vkey is all the API is given.
    assert load_operator_verifier(str(vkey)) == load_operator_verifier(str(skey))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYANCHOR_")}
    env.update(CITYANCHOR_DATABASE_URL=dsn, CITYANCHOR_OPERATOR_KEY_FILE=str(vkey))
    log = (tmp_path / "api.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "anchor", "api", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 60
        while _get(f"http://127.0.0.1:{port}/healthz") is None:
            assert proc.poll() is None, (tmp_path / "api.log").read_text()
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.2)
        served = _get(f"http://127.0.0.1:{port}/v1/operator-key")
        assert served is not None and served["vkey"] == operator.verifier.vkey()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    assert "no operator key" not in (tmp_path / "api.log").read_text()
