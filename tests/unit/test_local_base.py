"""The one lifecycle of anchor.local's private servers, with stand-in servers (no PostgreSQL,
Mosquitto or anvil needed): port choice and retry, spawn and wait-ready, stop, stale servers."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from anchor.local.base import (
    LOOPBACK,
    PORT_RETRIES,
    LocalServer,
    ServiceError,
    SpawnedServer,
    free_port,
    port_free,
    start_on_stable_port,
)


class _Fake(LocalServer):
    """Launches nothing; ``fail`` says how many launches report ``reason``."""

    def __init__(self, port: int | None = None, *, fail: int = 0, reason: str = "port_in_use"):
        self.base_dir = Path("/nonexistent")
        self._requested_port = port
        self._port = port
        self.fail = fail
        self.reason = reason
        self.tried: list[int] = []
        self.is_running = False

    def _launch(self) -> ServiceError | None:
        self.tried.append(self.port)
        if len(self.tried) <= self.fail:
            return ServiceError(f"launch {len(self.tried)} failed", reason=self.reason)
        self.is_running = True
        return None

    def stop(self) -> None:
        self.is_running = False

    @property
    def running(self) -> bool:
        return self.is_running


def test_a_lost_port_race_is_retried_on_fresh_ports() -> None:
    server = _Fake(fail=PORT_RETRIES - 1).start()
    assert server.running and len(server.tried) == PORT_RETRIES
    assert server.port == server.tried[-1]
    with pytest.raises(ServiceError) as exc:
        _Fake(fail=PORT_RETRIES).start()
    assert exc.value.reason == "port_in_use"


def test_a_named_port_is_never_swapped_and_other_failures_are_not_retried() -> None:
    port = free_port()
    named = _Fake(port, fail=1)
    with pytest.raises(ServiceError) as exc:
        named.start()
    assert exc.value.reason == "port_in_use" and named.tried == [port]
    broken = _Fake(fail=1, reason="start_failed")
    with pytest.raises(ServiceError) as exc:
        broken.start()
    assert exc.value.reason == "start_failed" and len(broken.tried) == 1


def test_a_taken_named_port_is_refused_before_launch() -> None:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        s.listen()
        server = _Fake(s.getsockname()[1])
        with pytest.raises(ServiceError) as exc:
            server.start()
    assert exc.value.reason == "port_in_use" and server.tried == []
    with pytest.raises(ServiceError) as exc:
        _Fake(70000).start()
    assert exc.value.reason == "config_invalid"


def test_a_restart_keeps_the_previous_port_while_it_is_free() -> None:
    server = _Fake().start()
    first = server.port
    server.stop()
    server.start()
    assert server.port == first
    server.stop()
    with socket.socket() as s:
        s.bind((LOOPBACK, first))
        s.listen()
        assert not port_free(first)
        server.start()
    assert server.port != first


def test_start_on_stable_port_waits_for_the_remembered_port_then_moves() -> None:
    remembered = free_port()
    moved: list[int] = []
    made: list[int | None] = []

    def make(port: int | None) -> _Fake:
        made.append(port)
        return _Fake(port, fail=1 if port == remembered else 0)

    server = start_on_stable_port(make, None, remembered, wait_s=0.0, on_new_port=moved.append)
    assert server.running and moved == [remembered] and made == [remembered, None]
    kept = start_on_stable_port(_Fake, None, remembered)
    assert kept.port == remembered
    asked = start_on_stable_port(_Fake, 1234, remembered)
    assert asked.port == 1234


# A stand-in child server: Python's HTTP server, or a program that dies at once.
class _Child(SpawnedServer):
    _PROGRAM = "stand-in"

    def __init__(self, base_dir: Path, argv: list[str], *, timeout: float = 20.0) -> None:
        self.base_dir = base_dir
        self.argv = argv
        self._requested_port = None
        self._port = None
        self._proc = None
        self._output_path = base_dir / "out.log"
        self.start_timeout = timeout
        self.die_with_parent = False

    def _command(self) -> list[str]:
        return [a.replace("{port}", str(self.port)) for a in self.argv]

    def _ready(self) -> bool:
        return not port_free(self.port)

    def _stale_marker(self) -> Path:
        return self.base_dir / "marker"


def _http(base: Path) -> _Child:
    marker = str(base / "marker")
    code = "import http.server, sys; http.server.test(port=int(sys.argv[1]), bind='127.0.0.1')"
    return _Child(base, [sys.executable, "-c", code, "{port}", marker])


def test_spawned_server_starts_stops_and_is_found_stale(tmp_path: Path) -> None:
    with _http(tmp_path) as server:
        assert server.running and server.pid is not None
        assert not port_free(server.port)
        # Another object on the same base_dir sees the running one as stale (its own pid aside).
        assert server.stop_stale(grace_s=5) == []
        other = _http(tmp_path)
        assert other.stop_stale(grace_s=5) == [server.pid]
        assert not server.running
    assert not server.running and server.pid is None
    server.stop()  # idempotent


def test_spawned_server_that_dies_reports_its_log(tmp_path: Path) -> None:
    code = "import sys; print('bind: Address already in use'); sys.exit(3)"
    server = _Child(tmp_path, [sys.executable, "-c", code])
    with pytest.raises(ServiceError) as exc:
        server.start()
    assert exc.value.reason == "port_in_use"  # after PORT_RETRIES fresh ports
    assert "stand-in exited with status 3" in str(exc.value)
    assert str(tmp_path / "out.log") in str(exc.value)
    slow = _Child(tmp_path, [sys.executable, "-c", "import time; time.sleep(60)"], timeout=0.3)
    with pytest.raises(ServiceError) as exc:
        slow.start()
    assert exc.value.reason == "start_failed" and "did not accept connections" in str(exc.value)
    assert not slow.running
