"""docker/health.py, the compose healthcheck of the anchor service, against real servers.

Healthy only while some anchoring job holds the leadership lock in the real PostgreSQL and the
real (anvil) chain answers with the configured chain id.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from anchor.local import AnvilNode, PostgresServer
from anchor.store import Store

HEALTH = Path(__file__).resolve().parents[2] / "docker" / "health.py"


def _health(env: dict[str, str], *args: str) -> tuple[int, str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("CITYANCHOR_")}
    full.update(env)
    result = subprocess.run(
        [sys.executable, str(HEALTH), *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.returncode, result.stdout.strip()


@pytest.fixture
def dsn(postgres: PostgresServer) -> str:
    return postgres.create_database(f"health_{os.getpid()}_{datetime.now(UTC):%H%M%S%f}")


@pytest.fixture
def leader(dsn: str) -> Iterator[None]:
    """An anchoring job's leadership (Store.leadership), held in a thread of its own."""
    held, release = threading.Event(), threading.Event()

    async def hold() -> None:
        store = await Store.connect(dsn, max_size=1)
        try:
            async with store.leadership():
                held.set()
                await asyncio.get_running_loop().run_in_executor(None, release.wait)
        finally:
            await store.close()

    thread = threading.Thread(target=lambda: asyncio.run(hold()))
    thread.start()
    assert held.wait(30)
    yield
    release.set()
    thread.join(30)


def test_anchor_is_unhealthy_without_a_leader_and_healthy_with_one(
    dsn: str, anvil: AnvilNode, request: pytest.FixtureRequest
) -> None:
    env = {
        "CITYANCHOR_DATABASE_URL": dsn,
        "CITYANCHOR_CHAIN_RPC_URL": anvil.rpc_url,
        "CITYANCHOR_CHAIN_ID": str(anvil.chain_id),
    }
    assert _health(env, "anchor") == (1, "unhealthy: no anchoring job holds the leadership lock")
    request.getfixturevalue("leader")
    assert _health(env, "anchor") == (0, "healthy")
    wrong = {**env, "CITYANCHOR_CHAIN_ID": str(anvil.chain_id + 1)}
    code, said = _health(wrong, "anchor")
    assert code == 1 and said.startswith(
        f"unhealthy: chain JSON-RPC answers chain id {anvil.chain_id}"
    )


def test_anchor_says_why_without_revealing_the_dsn(dsn: str) -> None:
    dead = dsn.rsplit("@", 1)[0] + "@127.0.0.1:1/cityanchor"
    code, said = _health({"CITYANCHOR_DATABASE_URL": dead}, "anchor")
    assert code == 1 and said.startswith("unhealthy: database: ")
    password = dsn.split("@", maxsplit=1)[0].rsplit(":", maxsplit=1)[-1]
    assert password not in said
    assert _health({}, "anchor") == (1, "unhealthy: CITYANCHOR_DATABASE_URL is not set")
    assert _health({}, "nonsense")[0] == 2
