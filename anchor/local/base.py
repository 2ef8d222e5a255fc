"""One lifecycle for every private server (PostgreSQL, Mosquitto, anvil).

:class:`LocalServer` holds what they share: a directory, a loopback port (the caller's, else
the previous run's while it is still free, else a free one, with a retry on a fresh port when
another process took it between the choice and the bind), the start template
(:meth:`LocalServer.start`), context-manager use and a place in the at-exit registry.
:class:`SpawnedServer` adds what the servers that run as our own child process (Mosquitto,
anvil) share: spawn, wait until ready with a timeout and an error quoting the log, stop with
SIGTERM then SIGKILL, and :meth:`SpawnedServer.stop_stale` for one left behind by an owner that
was killed with SIGKILL. :func:`start_on_stable_port` is how ``cityanchor up`` keeps its
servers' ports across restarts (a kill -9 included).

Failures raise :class:`ServiceError` with a stable ``reason`` (see :mod:`anchor.local`).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

from anchor.errors import AnchorError, Reason
from anchor.host.lifetime import pid_alive, preexec_die_with_parent, processes_with_arg, stop_pids

__all__ = [
    "LOOPBACK",
    "PORT_RETRIES",
    "REGISTRY",
    "LocalServer",
    "ServiceError",
    "SpawnedServer",
    "check_port_free",
    "check_traversable",
    "chown_tree",
    "clean_env",
    "free_port",
    "is_root",
    "log_tail",
    "pid_alive_within",
    "port_free",
    "start_on_stable_port",
    "system_user",
]

LOOPBACK = "127.0.0.1"

_LOG_TAIL_LINES = 30
#: Tries with a fresh free port when the one we picked was taken in the meantime (a race between
#: free_port() closing its socket and the server binding it); a port the caller named is never
#: swapped for another.
PORT_RETRIES = 3


class ServiceError(AnchorError):
    """A private PostgreSQL, Mosquitto or anvil could not be found, configured, started or
    stopped."""

    reason = Reason.START_FAILED


# ---------------------------------------------------------------------------------------------
# Ports


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (the OS picked it).

    Another process may take it before the caller binds it; the servers here retry with a new
    port when that happens and the caller did not name the port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def _bind_error(port: int) -> OSError | None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR as the servers (and aiohttp) set it: a port left in TIME_WAIT counts as
        # free, a port with a listener (on 127.0.0.1 or on 0.0.0.0) does not.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
        except OSError as exc:
            return exc
    return None


def port_free(port: int) -> bool:
    """True when a server could bind ``port`` on 127.0.0.1 now."""
    return _bind_error(port) is None


def check_port_free(port: int) -> None:
    """Raise unless ``port`` is in range and free on 127.0.0.1.

    Raises:
        ServiceError: ``config_invalid`` (out of range) or ``port_in_use``.
    """
    if not 0 < port < 65536:
        raise ServiceError(f"port {port} is out of range", reason=Reason.CONFIG_INVALID)
    exc = _bind_error(port)
    if exc is not None:
        raise ServiceError(
            f"port {port} on {LOOPBACK} is already in use ({exc.strerror})",
            reason=Reason.PORT_IN_USE,
        ) from exc


def _pick_port(requested: int | None, previous: int | None, attempt: int) -> int:
    """The caller's port; else, on the first try, the port of the previous run if still free
    (clients holding the old URL or DSN reconnect after a restart); else a fresh free port."""
    if requested is not None:
        return requested
    if previous is not None and attempt == 0 and 0 < previous < 65536 and port_free(previous):
        return previous
    return free_port()


# ---------------------------------------------------------------------------------------------
# Users, files, environment, processes


def is_root() -> bool:
    return os.geteuid() == 0


def system_user(name: str, package: str) -> pwd.struct_passwd:
    """The system user a server runs as when we are root.

    Raises:
        ServiceError: ``user_missing``, naming the Debian package that creates it.
    """
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise ServiceError(
            f"running as root needs the system user {name!r}, which does not exist; "
            f"it is created by the Debian package {package!r}",
            reason=Reason.USER_MISSING,
        ) from None


def check_traversable(path: Path, user: pwd.struct_passwd) -> None:
    """Raise unless ``user`` may enter every ancestor of ``path`` (so a server can reach it)."""
    groups = {user.pw_gid, *os.getgrouplist(user.pw_name, user.pw_gid)}
    for parent in reversed(path.resolve().parents):
        st = parent.stat()
        if st.st_uid == user.pw_uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid in groups:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            raise ServiceError(
                f"user {user.pw_name!r} cannot enter {parent} (mode {stat.filemode(st.st_mode)}); "
                f"put the server directory {path} under a directory it can traverse "
                f"(e.g. chmod o+x {parent})",
                reason=Reason.PERMISSION_DENIED,
            )


def chown_tree(path: Path, user: pwd.struct_passwd) -> None:
    os.chown(path, user.pw_uid, user.pw_gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), user.pw_uid, user.pw_gid, follow_symlinks=False)


def log_tail(*paths: Path) -> str:
    """The last lines of each log, each headed by its path (the start errors quote them)."""
    parts = []
    for path in paths:
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        if lines:
            parts.append(f"--- last lines of {path} ---\n" + "\n".join(lines[-_LOG_TAIL_LINES:]))
    return "\n".join(parts) if parts else "(no log output)"


def clean_env() -> dict[str, str]:
    """The environment for server and client programs we run."""
    # PG* variables of the caller (PGHOST, PGDATABASE, PGOPTIONS, ...) would redirect or alter
    # our client calls; LC_ALL=C keeps server messages in English so "Address already in use"
    # can be recognised in the log.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def pid_alive_within(pid: int, wait: float = 0.0) -> bool:
    """True while ``pid`` exists (and is not a zombie), polling up to ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        alive = pid_alive(pid)
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def _in_use(log: str) -> bool:
    low = log.lower()
    return "address already in use" in low or "address in use" in low


class _Registry:
    """Servers still running, stopped at interpreter exit so no process outlives the caller."""

    def __init__(self) -> None:
        self._live: dict[int, LocalServer] = {}
        atexit.register(self.stop_all)

    def add(self, server: LocalServer) -> None:
        self._live[id(server)] = server

    def discard(self, server: LocalServer) -> None:
        self._live.pop(id(server), None)

    def stop_all(self) -> None:
        for server in list(self._live.values()):
            with contextlib.suppress(Exception):
                server.stop()


REGISTRY = _Registry()


# ---------------------------------------------------------------------------------------------
# The lifecycle


class LocalServer:
    """What every private server shares: a directory, a loopback port chosen at start, the start
    template, context-manager use, and a place in the at-exit registry.

    Subclasses set ``base_dir``, ``_requested_port`` and ``_port`` and implement ``_launch``
    (start on ``self.port``; return the error, with reason ``port_in_use`` when another process
    has the port, rather than raise it, so :meth:`start` can retry), ``stop`` and ``running``;
    ``_check_startable``, ``_prepare`` and ``_started`` are optional hooks. ``_NOUN`` names the
    server in errors.
    """

    _NOUN = "server"
    base_dir: Path
    _requested_port: int | None
    _port: int | None

    def start(self) -> Self:
        """Start the server unless it runs: on the caller's port, else the previous run's while
        it is free, else a free one (up to :data:`PORT_RETRIES` tries when another process takes
        the port first; never another port than the caller named).

        Raises:
            ServiceError: ``port_in_use`` (the named port is taken), ``binary_missing``,
                ``permission_denied``, ``user_missing``, ``config_invalid`` or
                ``start_failed`` (with the log tail); see the subclass for more.
        """
        if self.running:
            return self
        self._check_startable()
        if self._requested_port is not None:
            check_port_free(self._requested_port)
        self._prepare()
        for attempt in range(PORT_RETRIES):
            self._port = _pick_port(self._requested_port, self._port, attempt)
            error = self._launch()
            if error is None:
                break
            retry = error.reason == Reason.PORT_IN_USE and self._requested_port is None
            if not retry or attempt + 1 >= PORT_RETRIES:
                raise error
        self._started()
        return self

    def _check_startable(self) -> None:
        """Before anything is checked or changed: refuse a start that must not happen."""

    def _prepare(self) -> None:
        """Once per start, before the first port is tried: binaries, directories, files."""

    def _launch(self) -> ServiceError | None:
        raise NotImplementedError

    def _started(self) -> None:
        """After a successful launch: work that needs the running server."""

    def stop(self) -> None:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        raise NotImplementedError

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def port(self) -> int:
        if self._port is None:
            raise ServiceError(
                f"the {self._NOUN} has no port until it is started", reason=Reason.USAGE
            )
        return self._port

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _repr_extra(self) -> str:
        return ""

    def __repr__(self) -> str:
        state = f"port={self._port}" if self.running else "stopped"
        return f"{type(self).__name__}({str(self.base_dir)!r}{self._repr_extra()}, {state})"


class SpawnedServer(LocalServer):
    """A server that runs as our child process (Mosquitto, anvil; PostgreSQL is detached by
    ``pg_ctl`` and has its own lifecycle).

    Subclasses implement ``_command`` (argv), ``_ready`` (True once it serves; may raise
    :class:`ServiceError` for a server that answers wrongly) and ``_stale_marker`` (a path in
    its argv that only this ``base_dir`` uses), and set ``_PROGRAM``, ``_output_path`` (its
    stdout and stderr), ``start_timeout`` and ``die_with_parent``. ``_before_spawn`` runs
    before each spawn (configuration files, for instance).
    """

    _PROGRAM = "server"
    _POLL_S = 0.05
    _output_path: Path
    start_timeout: float
    die_with_parent: bool
    _proc: subprocess.Popen[bytes] | None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def _stale_marker(self) -> Path:
        raise NotImplementedError

    def _before_spawn(self) -> None:
        pass

    def _log_paths(self) -> tuple[Path, ...]:
        """The files quoted in a start error (default: the output file)."""
        return (self._output_path,)

    def _not_ready_text(self) -> str:
        return f"accept connections on {LOOPBACK}:{self.port}"

    def _launch(self) -> ServiceError | None:
        self._before_spawn()
        with self._output_path.open("ab") as out:
            # A new session: Ctrl-C in the caller's terminal must not kill the server before
            # stop() can shut it down in order (saving its database or state).
            proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                cwd=self.base_dir,
                start_new_session=True,
                # Only a pre-resolved prctl() call: no lock, import or allocation to deadlock on.
                preexec_fn=preexec_die_with_parent() if self.die_with_parent else None,  # noqa: PLW1509
            )
        self._proc = proc
        REGISTRY.add(self)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if proc.poll() is not None:
                self._proc = None
                REGISTRY.discard(self)
                tail = log_tail(*self._log_paths())
                return ServiceError(
                    f"{self._PROGRAM} exited with status {proc.returncode} while starting on "
                    f"{LOOPBACK}:{self.port}\n{tail}",
                    reason=Reason.PORT_IN_USE if _in_use(tail) else Reason.START_FAILED,
                )
            try:
                ready = self._ready()
            except ServiceError:
                self.stop()
                raise
            if ready:
                return None
            if time.monotonic() > deadline:
                self.stop()
                return ServiceError(
                    f"{self._PROGRAM} did not {self._not_ready_text()} within "
                    f"{self.start_timeout} s\n" + log_tail(*self._log_paths()),
                    reason=Reason.START_FAILED,
                )
            time.sleep(self._POLL_S)

    def stop(self, *, timeout: float = 10.0) -> None:
        """SIGTERM (Mosquitto saves its persistence database, anvil dumps its state), wait,
        SIGKILL if it hangs. Idempotent.

        Raises:
            ServiceError: ``stop_failed`` when the process is still alive afterwards.
        """
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if pid_alive(proc.pid):
            raise ServiceError(
                f"{self._PROGRAM} (pid {proc.pid}) did not stop", reason=Reason.STOP_FAILED
            )
        self._proc = None
        REGISTRY.discard(self)

    def kill(self) -> None:
        """SIGKILL, like a crash: nothing saved. For tests of a server that disappears."""
        proc = self._proc
        if proc is None:
            return
        proc.kill()
        proc.wait(timeout=10)
        self._proc = None
        REGISTRY.discard(self)

    def stop_stale(self, *, grace_s: float = 10.0) -> list[int]:
        """Stop (SIGTERM, so it saves what it keeps; SIGKILL after ``grace_s``) every process of
        this ``base_dir``'s server that this object did not start, e.g. one left by a
        ``cityanchor up`` killed with SIGKILL. Recognised by a path in its argv that only this
        ``base_dir`` uses. Returns their pids. Only for a caller that knows the owner is gone
        (``up`` holds the data dir's lock)."""
        own = self.pid if self.running else None
        pids = [p for p in processes_with_arg(str(self._stale_marker())) if p != own]
        return stop_pids(pids, grace_s=grace_s)


_S = TypeVar("_S", bound=LocalServer)


def start_on_stable_port(
    make: Callable[[int | None], _S],
    requested: int | None,
    remembered: int | None,
    *,
    wait_s: float = 10.0,
    on_new_port: Callable[[int], None] | None = None,
) -> _S:
    """Start ``make(port)`` on the requested port, else on the port it had last time (so
    clients' addresses survive a restart, kill -9 included: waiting up to ``wait_s`` for a
    server of ours that is still exiting), else on a free one (``make(None)``).

    ``on_new_port(remembered)`` is called when the remembered port stays taken.

    Raises:
        ServiceError: as :meth:`LocalServer.start`; ``port_in_use`` only for a requested port.
    """
    if requested is not None:
        return make(requested).start()
    if remembered is not None:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return make(remembered).start()
            except AnchorError as exc:
                if exc.reason != Reason.PORT_IN_USE:
                    raise
            if time.monotonic() > deadline:
                if on_new_port is not None:
                    on_new_port(remembered)
                break
            time.sleep(0.5)
    return make(None).start()
