"""How ``up`` recovers: from an ``up`` killed before it could clean up, and from whatever dies
while it runs.

One ``up`` per data dir: it holds an exclusive lock on ``DATA_DIR/up.lock`` (``flock``, released
by the kernel when the process ends, however it ends) for its whole life; a second ``up`` on the
same dir prints ``already running, pid N`` and exits 2 without touching anything. While it runs,
``up`` restarts with back-off whatever dies: the ingestor, the anchoring job, the API, and the
servers themselves (PostgreSQL, Mosquitto, the local chain). The back-off doubles from 1 s (0.5 s
for a server) to 30 s and starts over once the process has run for a healthy minute
(:class:`anchor.host.lifetime.RestartBackoff`).

No process outlives ``up`` (issue 11): its children, their verify-pool workers, Mosquitto and
anvil get SIGTERM from the kernel when ``up`` dies, even by SIGKILL (``PR_SET_PDEATHSIG``, see
:mod:`anchor.host.lifetime`); PostgreSQL (a grandchild, through ``pg_ctl``) cannot, so the next
``up`` on the data dir stops whatever is still running there before it starts anything:
PostgreSQL by its ``postmaster.pid``, Mosquitto and anvil by the data-dir paths on their
command lines, the ``cityanchor`` children by ``DATA_DIR/run/*.pid``. It then reuses the ports
recorded in ``ports.json`` (PostgreSQL, MQTT, chain and HTTP), waiting up to 10 s for one to be
released before it gives up on it, so devices, clients and the chain state keep their addresses,
and only one chain node ever runs on ``chain/state.json``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path
from typing import Any

from anchor.errors import AnchorError, UsageError
from anchor.host.lifetime import RestartBackoff, pid_alive, processes_with_arg, stop_pids
from anchor.host.supervisor import ChildProcess
from anchor.local import AnvilNode, MosquittoServer, PostgresServer, free_port, port_free

__all__ = [
    "PORT_WAIT_S",
    "AlreadyRunning",
    "SupervisedCommand",
    "SupervisedServer",
    "choose_http_port",
    "lock_data_dir",
    "port_moved",
    "say",
    "stop_stale_servers",
]

log = logging.getLogger("anchor.cli.up")


def say(text: str) -> None:
    """A line on ``up``'s console (its own progress, not a log record)."""
    print(f"cityanchor up: {text}", flush=True)


class AlreadyRunning(Exception):
    """Another ``up`` holds the data dir's lock; ``holder`` is its pid as it wrote it."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


def lock_data_dir(d: Path) -> int:
    """Take the data dir's lock for the life of this process; return its descriptor.

    ``flock`` rather than a pid file: the kernel drops it when the process ends, even on
    SIGKILL, so a stale file never blocks a restart. O_CLOEXEC (and Popen's close_fds) keep it
    out of the children: a lock inherited by a surviving server would outlive ``up``.
    Raises AlreadyRunning with the holder's pid as written in the file.
    """
    fd = os.open(d / "up.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise AlreadyRunning(holder) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class SupervisedServer:
    """A private server (PostgreSQL, Mosquitto, anvil) started again, with back-off, when it
    dies (a crash, the OOM killer, kill -9). Clients reconnect to the same port: each server
    reuses its previous port while it is free. ``before_start`` runs before every restart (the
    broker's device gate closes there)."""

    def __init__(self, name: str, server: Any, before_start: Any = None) -> None:
        self.name = name
        self.server = server
        self.before_start = before_start
        self.backoff = RestartBackoff(initial_s=0.5)
        self.backoff.started(time.monotonic())
        self.restart_at = 0.0

    def check(self) -> None:
        if self.server.running:
            return
        now = time.monotonic()
        if self.restart_at == 0.0:
            delay = self.backoff.failed(now)
            log.error("%s died; restarting in %.1fs", self.name, delay)
            say(f"{self.name} died; restarting in {delay:.1f}s")
            self.restart_at = now + delay
        elif now >= self.restart_at:
            self.restart_at = 0.0
            try:
                if self.before_start is not None:
                    self.before_start()
                self.server.start()
            except AnchorError as exc:
                # E.g. PostgreSQL's old backends still hold its shared memory for a moment.
                log.error("restarting %s failed: %s", self.name, exc)
                return
            self.backoff.started(time.monotonic())
            log.info("%s restarted (pid %s)", self.name, self.server.pid)
            say(f"{self.name} restarted (pid {self.server.pid})")


class SupervisedCommand:
    """A ``cityanchor`` subcommand that is restarted with back-off whenever it dies."""

    def __init__(
        self, name: str, args: list[str], env: dict[str, str], log_dir: Path, run_dir: Path
    ) -> None:
        self.name = name
        self.child = ChildProcess(args, env, log_dir / f"{name}.log")
        self.log_path = self.child.log_path
        self.pid_path = run_dir / f"{name}.pid"
        self.backoff = RestartBackoff(initial_s=1.0)
        self.restart_at = 0.0

    def start(self) -> None:
        self.child.start()
        self.backoff.started(time.monotonic())
        # For the next `up`, should this one be killed with SIGKILL (see _stop_stale_children).
        self.pid_path.write_text(f"{self.child.pid}\n")

    def check(self) -> None:
        proc = self.child.proc
        if proc is None or proc.poll() is None:
            return
        now = time.monotonic()
        if self.restart_at == 0.0:
            delay = self.backoff.failed(now)
            log.error(
                "%s exited with %s; restarting in %.1fs (log: %s)",
                self.name,
                proc.returncode,
                delay,
                self.log_path,
            )
            say(f"{self.name} exited ({proc.returncode}); restarting, see {self.log_path}")
            self.restart_at = now + delay
        elif now >= self.restart_at:
            self.restart_at = 0.0
            self.start()

    def stop(self) -> None:
        self.child.stop()


PORT_WAIT_S = 10.0  # how long a remembered port may take to be released (a server exiting)


def port_moved(remembered: int) -> None:
    say(f"port {remembered} is taken by another program: using a new one")


def choose_http_port(requested: int | None, remembered: int | None) -> int:
    """The API's port: as requested, else last time's (waiting for it a moment), else free.

    A requested port that stays taken (by another program: ours were stopped before) is a
    UsageError now, before the API is started on it and retried for a minute (issue 14).
    """
    if requested:
        deadline = time.monotonic() + PORT_WAIT_S
        while not port_free(requested):
            if time.monotonic() > deadline:
                raise UsageError(f"--http-port {requested} is in use by another program")
            time.sleep(0.5)
        return requested
    if remembered:
        deadline = time.monotonic() + PORT_WAIT_S
        while not port_free(remembered):
            if time.monotonic() > deadline:
                say(f"HTTP port {remembered} is taken by another program: using a new one")
                return free_port()
            time.sleep(0.5)
        return remembered
    return free_port()


def _stop_stale_children(d: Path) -> None:
    """Stop the ``cityanchor`` children an ``up`` killed with SIGKILL may have left (each
    normally dies with it, see anchor.host.lifetime): by their pid files, and only a process whose
    command line still names this data dir's config file (a pid can be reused)."""
    run = d / "run"
    config = str(d / "config.toml")
    for pid_file in sorted(run.glob("*.pid")) if run.exists() else []:
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pid = 0
        if pid and pid_alive(pid) and pid in processes_with_arg(config):
            stop_pids([pid], grace_s=10)
            say(f"stopped {pid_file.stem} pid {pid}, left running by an earlier up")
        pid_file.unlink(missing_ok=True)


def stop_stale_servers(d: Path) -> None:
    """We hold the data dir's lock, so any server still running on it belongs to an ``up`` that
    died without stopping it (SIGKILL): stop them all (SIGTERM first, so the broker saves its
    queue and the chain its state) before starting ours. Never two chains on one state file."""
    _stop_stale_children(d)
    for name, stale in (
        ("Mosquitto", MosquittoServer(d / "mosquitto").stop_stale()),
        ("the chain (anvil)", AnvilNode(d / "chain").stop_stale()),
    ):
        for pid in stale:
            say(f"stopped {name} pid {pid}, left running by an earlier up")
    pg = PostgresServer(d / "postgres").stop_stale()
    if pg is not None:
        say(f"stopped PostgreSQL pid {pg}, left running by an earlier up")
