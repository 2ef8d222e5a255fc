"""Fixtures for tests that need real services: a private PostgreSQL and a private Mosquitto.

Both are started by the project itself, in a temporary directory, on free loopback ports, once
per session, and stopped at the end; the PostgreSQL on 5432 or the Mosquitto on 1883 that may
run on the machine are never used. Every test under this folder is marked ``integration``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from anchor.local import MosquittoServer, PostgresServer

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees the whole session's items, not only ours: mark by path.
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def services_dir() -> Iterator[Path]:
    """A private directory for every server of the session, removed afterwards.

    Not pytest's ``tmp_path``: its ancestors are 0700 root, which the ``postgres`` and
    ``mosquitto`` users (the servers drop to them when we run as root) cannot traverse.
    """
    base = Path(tempfile.mkdtemp(prefix="cityanchor-it-"))
    os.chmod(base, 0o711)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def service_dir(services_dir: Path, request: pytest.FixtureRequest) -> Path:
    """A fresh directory for servers a single test starts itself."""
    path = Path(tempfile.mkdtemp(prefix=f"{request.node.name[:40]}-", dir=services_dir))
    os.chmod(path, 0o711)
    return path


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (read from /proc, Linux only)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _assert_gone(pid: int | None, what: str) -> None:
    assert pid is None or wait_gone(pid), f"{what} (pid {pid}) is still running"


@pytest.fixture(scope="session")
def postgres(services_dir: Path) -> Iterator[PostgresServer]:
    """The session's PostgreSQL; database ``cityanchor`` owned by the service role
    ``cityanchor`` (not a superuser), password auth only (scram-sha-256) on 127.0.0.1.

    ``postgres.dsn`` / ``pg_dsn`` carry that role and its password; ``postgres.create_database``
    gives a test a fresh database owned by it; ``postgres.psql`` runs SQL as the superuser."""
    server = PostgresServer(services_dir / "postgres").start()
    pid = server.pid
    try:
        yield server
    finally:
        server.stop()
        _assert_gone(pid, "PostgreSQL")


@pytest.fixture(scope="session")
def pg_dsn(postgres: PostgresServer) -> str:
    return postgres.dsn


@pytest.fixture
def db_dsn(postgres: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the session's PostgreSQL for one test, dropped after it."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    yield postgres.create_database(name)
    postgres.drop_database(name)


@pytest.fixture(scope="session")
def mosquitto(services_dir: Path) -> Iterator[MosquittoServer]:
    """The session's Mosquitto, anonymous access, persistence on."""
    server = MosquittoServer(services_dir / "mosquitto", allow_anonymous=True).start()
    pid = server.pid
    try:
        yield server
    finally:
        server.stop()
        _assert_gone(pid, "Mosquitto")


# The chain fixtures (private anvil nodes) live in their own module; importing them here makes
# them available to every integration test.
from integration.api_fixtures import api_world  # noqa: E402, F401
from integration.chain_fixtures import anchor_registry, anvil, anvil_factory  # noqa: E402, F401
