"""Private PostgreSQL and Mosquitto servers for tests, the demo and single-host runs.

Each server lives in a directory the caller gives, listens only on ``127.0.0.1`` at a port the
caller names or a free one (a restart reuses the previous port while it is still free, so clients
holding the old URL or DSN reconnect), and is stopped by :meth:`stop`, by leaving its ``with``
block or, as a last resort, at interpreter exit. Services that merely happen to run on the
machine (a system PostgreSQL on 5432, a Mosquitto on 1883) are never used: a test that passes
against them proves nothing about a fresh host.

Running as root: ``initdb`` and ``postgres`` refuse to run as root, so they run as the
``postgres`` user through ``runuser`` on a directory chowned to it; Mosquitto drops privileges to
the ``mosquitto`` user by itself, so its directory and files are chowned to that user (it re-reads
config, password and ACL files on SIGHUP, after the drop). Every ancestor of the directory must be
traversable by that user: ``tempfile.mkdtemp()`` and pytest's ``tmp_path`` are not (0700 root), so
callers running as root should create a directory and chmod it 0711 or wider.

Failures raise :class:`ServiceError` with a stable ``reason``: ``binary_missing``,
``port_in_use``, ``permission_denied``, ``user_missing``, ``config_invalid``, ``start_failed``,
``stop_failed``, ``sql_failed`` (:meth:`PostgresServer.psql`), ``already_running``
(:meth:`PostgresServer.start` on a data dir whose postmaster another process runs), ``usage``.

Example::

    with PostgresServer(Path("/srv/ca/pg")) as pg, MosquittoServer(Path("/srv/ca/mqtt")) as mq:
        print(pg.dsn, mq.url)
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import hashlib
import hmac
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from anchor.errors import AnchorError, Reason
from anchor.lifetime import preexec_die_with_parent, processes_with_arg, stop_pids

__all__ = [
    "LOOPBACK",
    "LocalServer",
    "MosquittoServer",
    "PostgresServer",
    "ServiceError",
    "find_dynsec_plugin",
    "find_mosquitto",
    "find_pg_bindir",
    "free_port",
    "mosquitto_password_hash",
    "scram_sha256_verifier",
]

LOOPBACK = "127.0.0.1"

_PG_PACKAGE = "postgresql"
_MOSQUITTO_PACKAGE = "mosquitto"
_PG_USER = "postgres"
_MOSQUITTO_USER = "mosquitto"
# sun_path is 108 bytes on Linux; PostgreSQL appends "/.s.PGSQL.NNNNN" (15 bytes) and a NUL.
_MAX_SOCKET_DIR = 107 - 16
_IDENT = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_MQTT_USER = re.compile(r"[^:\s]{1,256}")
_LOG_TAIL_LINES = 30
# Tries with a fresh free port when the one we picked was taken in the meantime (a race between
# free_port() closing its socket and the server binding it); a port the caller named is never
# swapped for another.
_PORT_RETRIES = 3


class ServiceError(AnchorError):
    """A private PostgreSQL or Mosquitto could not be found, configured, started or stopped."""

    reason = Reason.START_FAILED


# ---------------------------------------------------------------------------------------------
# Helpers shared by both servers


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (the OS picked it).

    Another process may take it before the caller binds it; the servers here retry with a new
    port when that happens and the caller did not name the port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def _check_port_free(port: int) -> None:
    if not 0 < port < 65536:
        raise ServiceError(f"port {port} is out of range", reason=Reason.CONFIG_INVALID)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR as the servers set it: a port left in TIME_WAIT counts as free, a port
        # with a listener (on 127.0.0.1 or on 0.0.0.0) does not.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
        except OSError as exc:
            raise ServiceError(
                f"port {port} on {LOOPBACK} is already in use ({exc.strerror})",
                reason=Reason.PORT_IN_USE,
            ) from exc


def _pick_port(requested: int | None, previous: int | None, attempt: int) -> int:
    """The caller's port; else, on the first try, the port of the previous run if still free
    (clients holding the old URL or DSN reconnect after a restart); else a fresh free port."""
    if requested is not None:
        return requested
    if previous is not None and attempt == 0:
        try:
            _check_port_free(previous)
        except ServiceError:
            pass
        else:
            return previous
    return free_port()


def _is_root() -> bool:
    return os.geteuid() == 0


def _user(name: str, package: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise ServiceError(
            f"running as root needs the system user {name!r}, which does not exist; "
            f"it is created by the Debian package {package!r}",
            reason=Reason.USER_MISSING,
        ) from None


def _check_traversable(path: Path, user: pwd.struct_passwd) -> None:
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


def _chown_tree(path: Path, user: pwd.struct_passwd) -> None:
    os.chown(path, user.pw_uid, user.pw_gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), user.pw_uid, user.pw_gid, follow_symlinks=False)


def _log_tail(*paths: Path) -> str:
    parts = []
    for path in paths:
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        if lines:
            parts.append(f"--- last lines of {path} ---\n" + "\n".join(lines[-_LOG_TAIL_LINES:]))
    return "\n".join(parts) if parts else "(no log output)"


def _clean_env() -> dict[str, str]:
    # PG* variables of the caller (PGHOST, PGDATABASE, PGOPTIONS, ...) would redirect or alter
    # our client calls; LC_ALL=C keeps server messages in English so "Address already in use"
    # can be recognised in the log.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


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


class LocalServer:
    """What every private server (PostgreSQL, Mosquitto, anvil) shares: a directory, a loopback
    port chosen at start, context-manager use, and a place in the at-exit registry.

    Subclasses set ``base_dir``, ``_requested_port`` and ``_port``, and implement ``start``,
    ``stop`` and ``running``; ``_NOUN`` names them in errors.
    """

    _NOUN = "server"
    base_dir: Path
    _requested_port: int | None
    _port: int | None

    def start(self) -> Self:
        raise NotImplementedError

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

    def _pick_port(self, attempt: int) -> int:
        return _pick_port(self._requested_port, self._port, attempt)


_REGISTRY = _Registry()


# ---------------------------------------------------------------------------------------------
# PostgreSQL


def _pg_version_key(bindir: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/15/bin -> (15,); "9.6" -> (9, 6): numeric, so 10 sorts after 9.6.
    return tuple(int(p) for p in re.findall(r"\d+", bindir.parent.name)) or (0,)


def find_pg_bindir(env: Mapping[str, str] | None = None) -> Path:
    """Return the directory holding ``initdb``, ``pg_ctl``, ``postgres`` and ``psql``.

    ``CITYANCHOR_PG_BINDIR`` in ``env`` (default: ``os.environ``) wins; otherwise the newest
    ``/usr/lib/postgresql/*/bin`` that contains ``initdb``.

    Raises:
        ServiceError: ``binary_missing``, naming the Debian package to install.
    """
    env = os.environ if env is None else env
    override = env.get("CITYANCHOR_PG_BINDIR")
    if override:
        bindir = Path(override)
        if not (bindir / "initdb").is_file():
            raise ServiceError(
                f"CITYANCHOR_PG_BINDIR={override} has no initdb", reason=Reason.BINARY_MISSING
            )
        return bindir
    candidates = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb") if p.is_file()]
    if not candidates:
        raise ServiceError(
            "PostgreSQL server binaries not found (no /usr/lib/postgresql/*/bin/initdb); install "
            f"them with `apt-get install -y {_PG_PACKAGE}` (or run scripts/ensure-system-deps.sh), "
            "or set CITYANCHOR_PG_BINDIR",
            reason=Reason.BINARY_MISSING,
        )
    return max(candidates, key=_pg_version_key)


class PostgresServer(LocalServer):
    """A private PostgreSQL cluster in ``base_dir``, reachable only on 127.0.0.1.

    Layout: ``base_dir/data`` (the cluster, created by initdb on the first start only, so a
    persistent ``base_dir`` keeps its data), ``base_dir/run`` (the unix socket, never
    /var/run/postgresql), ``base_dir/postgres.log`` and two generated passwords, each 0600:
    ``base_dir/superuser.password`` (role ``postgres``, used only by :meth:`psql` and
    :attr:`superuser_dsn` for administration) and ``base_dir/service.password`` (``role``).

    Authentication is ``scram-sha-256`` for every connection, TCP and unix socket alike; there
    is no ``trust`` line: any local OS user can reach 127.0.0.1, so a password is what keeps
    them out. The service connects as ``role`` (default ``cityanchor``): a login without
    SUPERUSER, CREATEDB, CREATEROLE or REPLICATION that owns ``database`` and its ``public``
    schema, so it can run the migrations but not ``COPY ... TO PROGRAM`` or read other
    databases' files. :attr:`dsn` carries that role and its password.

    A cluster initialised by an older version with ``trust`` authentication is upgraded at
    :meth:`start`: the superuser gets a password (set in single-user mode, so no password-less
    window is ever open), ``pg_hba.conf`` is rewritten and the database with everything in its
    ``public`` schema is handed to ``role``.

    ``fsync`` stays on by default because the store's durability is the point of this project;
    ``fsync=False`` exists for throwaway benchmark clusters only (a crash can corrupt them).
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        port: int | None = None,
        database: str = "cityanchor",
        role: str = "cityanchor",
        fsync: bool = True,
        bindir: Path | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        if not _IDENT.fullmatch(database):
            raise ServiceError(
                f"database name {database!r} is not a plain identifier",
                reason=Reason.CONFIG_INVALID,
            )
        if not _IDENT.fullmatch(role) or role == _PG_USER or role.startswith("pg_"):
            raise ServiceError(
                f"service role {role!r} is not a plain identifier other than {_PG_USER!r}",
                reason=Reason.CONFIG_INVALID,
            )
        self.base_dir = Path(base_dir).absolute()
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "run"
        self.log_path = self.base_dir / "postgres.log"
        self.superuser_password_path = self.base_dir / "superuser.password"
        self.password_path = self.base_dir / "service.password"
        self.database = database
        self.role = role
        self.fsync = fsync
        self.start_timeout = start_timeout
        self._requested_port = port
        self._port: int | None = port
        self._bindir = bindir
        self._running = False
        #: True when the last start() ran initdb (a new cluster), False when it reused one.
        self.created = False

    # -- public properties ----------------------------------------------------------------

    @property
    def bindir(self) -> Path:
        if self._bindir is None:
            self._bindir = find_pg_bindir()
        return self._bindir

    @property
    def dsn(self) -> str:
        """``postgresql://cityanchor:PASSWORD@127.0.0.1:PORT/cityanchor``: the service role
        (not a superuser) with its password (libpq and asyncpg accept it)."""
        return self.dsn_for(self.database)

    def dsn_for(self, database: str) -> str:
        """The service role's DSN for another database on this server (see
        :meth:`create_database`)."""
        # token_urlsafe passwords need no percent-encoding in the userinfo.
        password = _read_secret(self.password_path)
        return f"postgresql://{self.role}:{password}@{LOOPBACK}:{self.port}/{database}"

    @property
    def superuser_dsn(self) -> str:
        """The superuser's DSN: administration and tests only, never the service."""
        password = _read_secret(self.superuser_password_path)
        return f"postgresql://{_PG_USER}:{password}@{LOOPBACK}:{self.port}/{self.database}"

    @property
    def running(self) -> bool:
        """Started by us and the postmaster still alive (False after it crashed or was killed:
        :meth:`start` then starts it again)."""
        if not self._running:
            return False
        pid = self.pid
        return pid is not None and _pid_alive(pid)

    @property
    def pid(self) -> int | None:
        """The postmaster's pid from ``postmaster.pid``, or None when there is no such file."""
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first)
        except (OSError, ValueError):
            return None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Self:
        """Create the cluster if needed, start it, wait until it answers, create the database.

        Raises:
            ServiceError: ``port_in_use`` (the named port is taken), ``binary_missing``,
                ``permission_denied``, ``user_missing`` or ``start_failed`` (with the log tail).
        """
        if self.running:
            return self
        # Not running, though maybe started before: the postmaster died (crash, kill -9).
        self._running = False
        other = self.pid
        if other is not None and _pid_alive(other):
            # Someone else's server on this data dir: refuse before changing any file of it
            # (port, pg_hba.conf) and never stop it (an earlier version's failed start sent such
            # a server an immediate shutdown).
            raise ServiceError(
                f"PostgreSQL (pid {other}) is already running on {self.data_dir}, started by "
                "another process; nothing was changed",
                reason=Reason.ALREADY_RUNNING,
            )
        if self._requested_port is not None:
            _check_port_free(self._requested_port)
        bindir = self.bindir
        if len(str(self.socket_dir)) > _MAX_SOCKET_DIR:
            raise ServiceError(
                f"{self.socket_dir} is too long for a unix socket path; use a shorter base_dir",
                reason=Reason.CONFIG_INVALID,
            )
        self._prepare_dirs()
        if not (self.data_dir / "PG_VERSION").is_file():
            self._initdb(bindir)
            self.created = True
        else:
            self.created = False
            if self._needs_auth_upgrade():
                self._upgrade_auth(bindir)
            # Edits are overwritten: no start ever runs with a pg_hba.conf other than ours.
            self._write_owned(self.data_dir / "pg_hba.conf", _HBA)
        self._ensure_secret(self.password_path)

        for attempt in range(_PORT_RETRIES):
            port = self._pick_port(attempt)
            self._port = port
            self._write_settings(port)
            error = self._pg_ctl_start(bindir)
            if error is None:
                break
            retry = error.reason == Reason.PORT_IN_USE and self._requested_port is None
            if retry and attempt + 1 < _PORT_RETRIES:
                continue
            raise error
        self._running = True
        _REGISTRY.add(self)
        try:
            self._wait_ready(bindir)
            self._ensure_role()
            self.create_database(self.database)
        except BaseException:
            self.stop(mode="immediate")
            raise
        return self

    def stop(self, *, mode: Literal["smart", "fast", "immediate"] = "fast") -> None:
        """Stop the server (``pg_ctl stop -m fast`` by default) and wait until it is gone.

        ``mode="immediate"`` skips the shutdown checkpoint, like a crash: the next start replays
        the WAL. Idempotent.

        Raises:
            ServiceError: ``stop_failed`` when the postmaster is still alive afterwards.
        """
        if not self._running:
            return
        pid = self.pid
        result = self._pg_ctl_stop(mode, timeout=60)
        if result.returncode != 0 and mode != "immediate":
            # A fast shutdown that hangs (a stuck client) must not leave a server behind.
            result = self._pg_ctl_stop("immediate", timeout=30)
        if pid is not None and _pid_alive(pid, wait=10.0):
            raise ServiceError(
                f"PostgreSQL (pid {pid}) did not stop: {result.stdout}{result.stderr}\n"
                + _log_tail(self.log_path),
                reason=Reason.STOP_FAILED,
            )
        self._running = False
        _REGISTRY.discard(self)

    def stop_stale(self) -> int | None:
        """Stop (fast) a postmaster left running on this data dir by an owner that is gone, e.g.
        a ``cityanchor up`` killed with SIGKILL; return its pid, or None when there was none.

        Only for a caller that knows the owner is gone (``up`` holds the data dir's lock).
        """
        other = self.pid
        if self._running or other is None or not _pid_alive(other):
            return None
        result = self._pg_ctl_stop("fast", timeout=60)
        if _pid_alive(other, wait=10.0):
            raise ServiceError(
                f"the stale PostgreSQL (pid {other}) on {self.data_dir} did not stop: "
                f"{result.stdout}{result.stderr}",
                reason=Reason.STOP_FAILED,
            )
        return other

    def psql(self, sql: str, *, database: str | None = None) -> str:
        """Run ``sql`` with ``psql`` from the same bindir; return its unaligned, tuples-only output.

        Raises:
            ServiceError: ``sql_failed`` with psql's error message.
        """
        psql = str(self.bindir / "psql")
        target = self._target(database or self.database)
        # The SQL goes in on stdin, not as -c: a command line is visible to every local user.
        cmd = [psql, "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", *target, "-f", "-"]
        result = subprocess.run(
            cmd,
            input=sql,
            capture_output=True,
            text=True,
            env=self._superuser_env(),
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise ServiceError(f"psql failed: {result.stderr.strip()}", reason=Reason.SQL_FAILED)
        return result.stdout.strip()

    def create_database(self, name: str) -> str:
        """Create database ``name`` owned by the service role (or hand an existing one to it,
        with everything in its ``public`` schema); return the service role's DSN for it."""
        if not _IDENT.fullmatch(name):
            raise ServiceError(
                f"database name {name!r} is not a plain identifier", reason=Reason.CONFIG_INVALID
            )
        # Identifiers validated above, so interpolation is safe.
        exists = self.psql(
            f"SELECT 1 FROM pg_database WHERE datname = '{name}'", database="postgres"
        )
        if exists != "1":
            self.psql(f'CREATE DATABASE "{name}" OWNER "{self.role}"', database="postgres")
        else:
            self.psql(f'ALTER DATABASE "{name}" OWNER TO "{self.role}"', database="postgres")
        self.psql(_hand_over_sql(self.role), database=name)
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` (disconnecting its clients); a no-op when it does not exist."""
        if not _IDENT.fullmatch(name):
            raise ServiceError(
                f"database name {name!r} is not a plain identifier", reason=Reason.CONFIG_INVALID
            )
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', database="postgres")

    # -- internals ------------------------------------------------------------------------

    def _target(self, database: str) -> list[str]:
        # Always TCP on loopback with explicit user and database: never a default socket or a
        # PG* variable of the caller's environment.
        return [
            f"--host={LOOPBACK}",
            f"--port={self.port}",
            f"--username={_PG_USER}",
            f"--dbname={database}",
        ]

    def _superuser_env(self) -> dict[str, str]:
        # PGPASSWORD, not a command-line flag: /proc/PID/environ is readable by its owner only.
        env = _clean_env()
        env["PGPASSWORD"] = _read_secret(self.superuser_password_path)
        return env

    def _owner(self) -> pwd.struct_passwd | None:
        return _user(_PG_USER, _PG_PACKAGE) if _is_root() else None

    def _ensure_secret(self, path: Path) -> str:
        """A random password kept in ``path`` (0600, owned by the server's user), created once."""
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
        os.chmod(path, 0o600)
        owner = self._owner()
        if owner is not None:
            # initdb --pwfile reads it as the server's user.
            os.chown(path, owner.pw_uid, owner.pw_gid)
        return _read_secret(path)

    def _ensure_role(self) -> None:
        """Create or refresh the service role: login, no privileges beyond its own objects, the
        password from ``password_path`` (sent as a SCRAM verifier: the server never sees it)."""
        verifier = scram_sha256_verifier(_read_secret(self.password_path))
        role = self.role  # validated in __init__
        self.psql(
            "DO $$ BEGIN\n"
            f"  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN\n"
            f'    CREATE ROLE "{role}";\n'
            "  END IF;\n"
            "END $$;\n"
            f'ALTER ROLE "{role}" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION '
            f"NOBYPASSRLS NOINHERIT PASSWORD '{verifier}';\n",
            database="postgres",
        )

    def _needs_auth_upgrade(self) -> bool:
        """True for a cluster from an older version (``trust`` in pg_hba.conf) or one whose
        superuser password file is gone."""
        if not self.superuser_password_path.exists():
            return True
        try:
            hba = (self.data_dir / "pg_hba.conf").read_text(encoding="utf-8")
        except OSError:
            return True
        return any("trust" in line.split("#", 1)[0].split() for line in hba.splitlines())

    def _upgrade_auth(self, bindir: Path) -> None:
        """Give the superuser a (new) password and switch pg_hba.conf to scram-sha-256.

        Done in single-user mode, with the postmaster down: no connection is possible while
        it runs, so there is never a moment in which a password-less login works.
        """
        if self.pid is not None and _pid_alive(self.pid):
            raise ServiceError(
                f"PostgreSQL (pid {self.pid}) is already running on {self.data_dir}; stop it "
                "(or the cityanchor process that started it) first",
                reason=Reason.START_FAILED,
            )
        self.superuser_password_path.unlink(missing_ok=True)
        verifier = scram_sha256_verifier(self._ensure_secret(self.superuser_password_path))
        result = self._run_as_owner(
            [str(bindir / "postgres"), "--single", "-D", str(self.data_dir), "postgres"],
            stdin=f"ALTER ROLE {_PG_USER} WITH PASSWORD '{verifier}';\n",
        )
        output = result.stdout + result.stderr
        if result.returncode != 0 or "ERROR:" in output or "FATAL:" in output:
            raise ServiceError(
                f"could not set the superuser password of the cluster in {self.data_dir} "
                f"(single-user mode):\n{output.strip()}",
                reason=Reason.START_FAILED,
            )
        self._write_owned(self.data_dir / "pg_hba.conf", _HBA)

    def _run_as_owner(
        self, cmd: list[str], *, timeout: float = 120.0, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        if _is_root():
            runuser = shutil.which("runuser") or "/usr/sbin/runuser"
            cmd = [runuser, "-u", _PG_USER, "--", *cmd]
        # cwd inside our own directory: initdb and pg_ctl fail when they cannot stat the
        # current directory, which as the postgres user they often cannot (e.g. /root).
        return subprocess.run(
            cmd,
            input=stdin,
            stdin=subprocess.DEVNULL if stdin is None else None,
            capture_output=True,
            text=True,
            env=_clean_env(),
            cwd=self.base_dir,
            timeout=timeout,
            check=False,
        )

    def _prepare_dirs(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        owner = self._owner()
        if owner is not None:
            _check_traversable(self.base_dir, owner)
            os.chown(self.base_dir, owner.pw_uid, owner.pw_gid)
            os.chown(self.socket_dir, owner.pw_uid, owner.pw_gid)
            if self.log_path.exists():
                os.chown(self.log_path, owner.pw_uid, owner.pw_gid)
        os.chmod(self.base_dir, 0o700)

    def _initdb(self, bindir: Path) -> None:
        initdb = str(bindir / "initdb")
        self.superuser_password_path.unlink(missing_ok=True)
        self._ensure_secret(self.superuser_password_path)
        cmd = [
            initdb,
            "-D",
            str(self.data_dir),
            "-U",
            _PG_USER,
            "--auth=scram-sha-256",
            f"--pwfile={self.superuser_password_path}",
            "-E",
            "UTF8",
        ]
        # C collation: byte order, identical on every host, and no dependency on system locales.
        cmd.append("--no-locale")
        if not self.fsync:
            cmd.append("--no-sync")
        result = self._run_as_owner(cmd)
        if result.returncode != 0:
            raise ServiceError(
                f"initdb failed in {self.data_dir}:\n{result.stdout}{result.stderr}",
                reason=Reason.START_FAILED,
            )
        self._write_owned(self.data_dir / "pg_hba.conf", _HBA)
        with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as f:
            # Settings that change per start (port) live in an included file we rewrite.
            f.write("\ninclude_if_exists = 'cityanchor.conf'\n")

    def _write_owned(self, path: Path, text: str) -> None:
        path.write_text(text, encoding="utf-8")
        os.chmod(path, 0o600)
        owner = self._owner()
        if owner is not None:
            os.chown(path, owner.pw_uid, owner.pw_gid)

    def _write_settings(self, port: int) -> None:
        conf = (
            "# Generated by anchor.services at every start; edits are overwritten.\n"
            f"listen_addresses = '{LOOPBACK}'\n"
            f"port = {port}\n"
            f"unix_socket_directories = '{self.socket_dir}'\n"
            "unix_socket_permissions = 0700\n"
            f"fsync = {'on' if self.fsync else 'off'}\n"
            f"synchronous_commit = {'on' if self.fsync else 'off'}\n"
            "full_page_writes = on\n"
            "max_connections = 200\n"
            "password_encryption = 'scram-sha-256'\n"
        )
        self._write_owned(self.data_dir / "cityanchor.conf", conf)

    def _pg_ctl_stop(self, mode: str, *, timeout: int) -> subprocess.CompletedProcess[str]:
        pg_ctl = str(self.bindir / "pg_ctl")
        cmd = [pg_ctl, "stop", "-D", str(self.data_dir), "-m", mode, "-w", "-t", str(timeout)]
        return self._run_as_owner(cmd, timeout=timeout + 30)

    def _pg_ctl_start(self, bindir: Path) -> ServiceError | None:
        result = self._run_as_owner(
            [
                str(bindir / "pg_ctl"),
                "start",
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_path),
                "-w",
                "-t",
                str(int(self.start_timeout)),
            ],
            timeout=self.start_timeout + 30,
        )
        if result.returncode == 0:
            return None
        # pg_ctl gives up after its timeout but the postmaster may still come up later: stop it
        # so a failed start never leaves a server behind (a no-op when none is running).
        self._pg_ctl_stop("immediate", timeout=30)
        tail = _log_tail(self.log_path)
        in_use = "Address already in use" in tail
        reason = Reason.PORT_IN_USE if in_use else Reason.START_FAILED
        return ServiceError(
            f"PostgreSQL did not start on {LOOPBACK}:{self._port} "
            f"(pg_ctl: {result.stdout.strip()} {result.stderr.strip()})\n{tail}",
            reason=reason,
        )

    def _wait_ready(self, bindir: Path) -> None:
        # pg_ctl -w already waited for the postmaster; this also proves TCP on loopback answers.
        deadline = time.monotonic() + self.start_timeout
        cmd = [str(bindir / "pg_isready"), "-q", *self._target("postgres"), "--timeout=2"]
        while True:
            result = subprocess.run(cmd, env=_clean_env(), check=False, capture_output=True)
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"PostgreSQL on {LOOPBACK}:{self.port} did not become ready\n"
                    + _log_tail(self.log_path),
                    reason=Reason.START_FAILED,
                )
            time.sleep(0.1)


# Only loopback TCP and our own unix socket, both with a password: no trust line, no
# replication lines, no ::1, no LAN. Any local OS user can reach 127.0.0.1.
_HBA = (
    "# Generated by anchor.services: a private server, loopback and local socket only,\n"
    "# password (scram-sha-256) for everyone. Edits are overwritten at start.\n"
    "local all all scram-sha-256\n"
    f"host all all {LOOPBACK}/32 scram-sha-256\n"
)


def _read_secret(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ServiceError(
            f"cannot read the password file {path}: {exc.strerror}; start the server once to "
            "create it",
            reason=Reason.USAGE,
        ) from exc


def scram_sha256_verifier(
    password: str, *, salt: bytes | None = None, iterations: int = 4096
) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802/7677).

    ``ALTER ROLE ... PASSWORD 'SCRAM-SHA-256$...'`` stores it as given, so the clear password
    never reaches the server (nor its log, should the statement be logged).
    """
    salt = secrets.token_bytes(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    b64 = base64.b64encode
    return (
        f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}"
        f"${b64(stored_key).decode()}:{b64(server_key).decode()}"
    )


def _hand_over_sql(role: str) -> str:
    """SQL (run in a database as superuser) giving ``role`` the public schema and every object
    in it that another role owns: what a cluster from the trust-auth era needs, a no-op after.

    Sequences owned by a column (bigserial) follow their table and are skipped.
    """
    return f"""
ALTER SCHEMA public OWNER TO "{role}";
DO $$
DECLARE r record;
BEGIN
  FOR r IN
    SELECT c.oid::regclass AS obj, c.relkind FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
      AND c.relowner <> '"{role}"'::regrole
      AND NOT (c.relkind = 'S' AND EXISTS (
        SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
        AND d.objid = c.oid AND d.deptype IN ('a', 'i')))
  LOOP
    EXECUTE format('ALTER %s %s OWNER TO "{role}"',
      CASE r.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
        WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END,
      r.obj);
  END LOOP;
  FOR r IN
    SELECT p.oid::regprocedure AS obj, p.prokind FROM pg_proc p
    JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname = 'public' AND p.proowner <> '"{role}"'::regrole
  LOOP
    EXECUTE format('ALTER %s %s OWNER TO "{role}"',
      CASE r.prokind WHEN 'p' THEN 'PROCEDURE' WHEN 'a' THEN 'AGGREGATE' ELSE 'FUNCTION' END,
      r.obj);
  END LOOP;
  FOR r IN
    SELECT t.oid::regtype AS obj, t.typtype FROM pg_type t
    JOIN pg_namespace n ON n.oid = t.typnamespace
    WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd', 'r', 'm')
      AND t.typowner <> '"{role}"'::regrole
  LOOP
    EXECUTE format('ALTER %s %s OWNER TO "{role}"',
      CASE r.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END, r.obj);
  END LOOP;
END $$;
"""


def _pid_alive(pid: int, *, wait: float = 0.0) -> bool:
    """True while ``pid`` exists (and is not a zombie), polling up to ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            alive = state != "Z"
        except (OSError, IndexError):
            alive = False
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# Mosquitto


def find_mosquitto(env: Mapping[str, str] | None = None) -> Path:
    """Return the ``mosquitto`` broker binary (``CITYANCHOR_MOSQUITTO`` in ``env`` wins).

    /usr/sbin is searched even when it is not on PATH (it is not for most non-root users).

    Raises:
        ServiceError: ``binary_missing``, naming the Debian package to install.
    """
    env = os.environ if env is None else env
    override = env.get("CITYANCHOR_MOSQUITTO")
    if override:
        if not Path(override).is_file():
            raise ServiceError(
                f"CITYANCHOR_MOSQUITTO={override} does not exist", reason=Reason.BINARY_MISSING
            )
        return Path(override)
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise ServiceError(
            f"the mosquitto broker is not installed; install it with `apt-get install -y "
            f"{_MOSQUITTO_PACKAGE}` (or run scripts/ensure-system-deps.sh), "
            "or set CITYANCHOR_MOSQUITTO",
            reason=Reason.BINARY_MISSING,
        )
    return Path(found)


# Where Debian/Ubuntu (libmosquitto, multiarch), the eclipse-mosquitto image and source builds
# put the dynamic-security plugin.
_DYNSEC_PLUGIN_PATHS = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
)


def find_dynsec_plugin(env: Mapping[str, str] | None = None) -> Path:
    """Return Mosquitto's dynamic-security plugin (``CITYANCHOR_MOSQUITTO_DYNSEC`` wins).

    Raises:
        ServiceError: ``binary_missing``.
    """
    env = os.environ if env is None else env
    override = env.get("CITYANCHOR_MOSQUITTO_DYNSEC")
    candidates = (override,) if override else _DYNSEC_PLUGIN_PATHS
    for candidate in candidates:
        if Path(candidate).is_file():
            return Path(candidate)
    raise ServiceError(
        f"Mosquitto's dynamic-security plugin is not in {', '.join(candidates)}; it ships with "
        f"the {_MOSQUITTO_PACKAGE} package (2.0 or later), or set CITYANCHOR_MOSQUITTO_DYNSEC",
        reason=Reason.BINARY_MISSING,
    )


def _find_passwd_tool() -> Path | None:
    found = shutil.which("mosquitto_passwd")
    return Path(found) if found else None


def mosquitto_password_hash(
    password: str, *, salt: bytes | None = None, iterations: int = 101
) -> str:
    """Hash ``password`` as mosquitto_passwd does by default: ``$7$`` = PBKDF2-HMAC-SHA512.

    The format is ``$7$ITERATIONS$base64(salt)$base64(64-byte key)`` (mosquitto 2.0
    ``mosquitto_passwd``, 12-byte salt, 101 iterations). Used only when ``mosquitto_passwd`` is
    not installed.
    """
    salt = secrets.token_bytes(12) if salt is None else salt
    key = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"


class MosquittoServer(LocalServer):
    """A private Mosquitto (MQTT v5, 3.1.1) broker in ``base_dir``, listening on 127.0.0.1 only.

    Persistence is on, in ``base_dir/persistence/``, so QoS 1 messages queued for persistent
    sessions survive a clean broker restart (Mosquitto writes its database at shutdown and every
    ``autosave_interval`` seconds; a *crash* loses what arrived since the last save). With
    ``autosave_changes`` N it saves instead after every N changes (messages stored or delivered,
    subscriptions): N=1 is what a crash needs, for about 4x the broker's CPU (measured in
    docs/operator-guide.md). Mosquitto 2.0.11 never restores a ``$share`` subscription from
    its database, even after a clean stop: see ``anchor.up`` for how devices are kept out until
    an ingestor has subscribed again.

    ``die_with_parent`` (Linux): the broker gets SIGTERM when the thread that started it dies,
    so a supervisor killed with SIGKILL leaves no broker behind (it saves its database on the
    way out). :meth:`stop_stale` stops a broker left on this ``base_dir`` by an owner that died.

    ``max_queued_messages`` is generous because Mosquitto *drops* QoS 1 messages for a client
    whose queue is full; ``max_inflight_messages`` must be at least the ingestor's batch size,
    since the ingestor acknowledges only after its batch is committed.

    With ``users`` (``{username: password}``) and ``acl`` (Mosquitto ACL file text) the broker
    requires logins; ``allow_anonymous`` defaults to True only when no users are given. An ACL
    file cannot refuse a SUBSCRIBE in Mosquitto 2.0 (it grants every filter and only filters
    delivery), so where clients are untrusted use ``dynsec`` instead: the dynamic-security
    plugin's configuration (JSON, see :func:`anchor.broker_auth.dynsec_config`), written to
    ``base_dir/dynsec.json`` at every start; then logins, roles and client-id bindings come from
    it alone and change at run time through its ``$CONTROL`` topic (the plugin rewrites the
    file; a SIGHUP does not reload it).

    ``session_expiry_cap_h`` bounds every session's expiry interval, whatever the client asks
    (``persistent_client_expiration``; Mosquitto 2.0 applies it to MQTT v5 sessions too).
    """

    _NOUN = "broker"

    def __init__(
        self,
        base_dir: Path,
        *,
        port: int | None = None,
        allow_anonymous: bool | None = None,
        users: Mapping[str, str] | None = None,
        acl: str | None = None,
        dynsec: Mapping[str, Any] | None = None,
        session_expiry_cap_h: int = 14 * 24,
        max_inflight_messages: int = 10_000,
        max_queued_messages: int = 100_000,
        autosave_interval: int = 60,
        autosave_changes: int | None = None,
        die_with_parent: bool = False,
        binary: Path | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        self.base_dir = Path(base_dir).absolute()
        self.conf_path = self.base_dir / "mosquitto.conf"
        self.password_path = self.base_dir / "passwords"
        self.acl_path = self.base_dir / "acl"
        self.dynsec_path = self.base_dir / "dynsec.json"
        self.persistence_dir = self.base_dir / "persistence"
        self.log_path = self.base_dir / "mosquitto.log"
        self.stderr_path = self.base_dir / "mosquitto.stderr"
        if dynsec is not None and (users is not None or acl is not None):
            raise ServiceError(
                "dynsec replaces users and acl: give one or the other", reason=Reason.USAGE
            )
        no_logins = users is None and dynsec is None
        self.allow_anonymous = no_logins if allow_anonymous is None else allow_anonymous
        self._dynsec = dict(dynsec) if dynsec is not None else None
        if session_expiry_cap_h < 1:
            raise ServiceError("session_expiry_cap_h must be at least 1", reason=Reason.USAGE)
        self.session_expiry_cap_h = session_expiry_cap_h
        self.max_inflight_messages = max_inflight_messages
        self.max_queued_messages = max_queued_messages
        self.autosave_interval = autosave_interval
        if autosave_changes is not None and autosave_changes < 1:
            raise ServiceError("autosave_changes must be at least 1", reason=Reason.USAGE)
        self.autosave_changes = autosave_changes
        self.die_with_parent = die_with_parent
        self.start_timeout = start_timeout
        self._users = dict(users) if users is not None else None
        self._hashed = False
        self._acl = acl
        self._validate_users(self._users)
        self._requested_port = port
        self._port: int | None = port
        self._binary = binary
        self._proc: subprocess.Popen[bytes] | None = None

    # -- public properties ----------------------------------------------------------------

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:PORT``."""
        return f"mqtt://{LOOPBACK}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Self:
        """Write the configuration, start ``mosquitto -c`` and wait until the port accepts.

        Raises:
            ServiceError: ``port_in_use``, ``binary_missing``, ``permission_denied``,
                ``user_missing``, ``config_invalid`` or ``start_failed`` (with the log tail).
        """
        if self.running:
            return self
        if self._requested_port is not None:
            _check_port_free(self._requested_port)
        binary = self._binary or find_mosquitto()
        self._prepare_dirs()
        for attempt in range(_PORT_RETRIES):
            port = self._pick_port(attempt)
            self._port = port
            self._write_files()
            error = self._spawn(binary)
            if error is None:
                return self
            retry = error.reason == Reason.PORT_IN_USE and self._requested_port is None
            if retry and attempt + 1 < _PORT_RETRIES:
                continue
            raise error
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, *, timeout: float = 10.0) -> None:
        """SIGTERM (Mosquitto saves its persistence database), wait, SIGKILL if it hangs."""
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
        self._proc = None
        _REGISTRY.discard(self)

    def stop_stale(self, *, grace_s: float = 10.0) -> list[int]:
        """Stop (SIGTERM: it saves its database; SIGKILL after ``grace_s``) every broker running
        on this ``base_dir``'s configuration that this object did not start, e.g. one left by a
        ``cityanchor up`` killed with SIGKILL. Returns their pids. Only for a caller that knows
        the owner is gone (``up`` holds the data dir's lock)."""
        own = self.pid if self.running else None
        pids = [p for p in processes_with_arg(str(self.conf_path)) if p != own]
        return stop_pids(pids, grace_s=grace_s)

    def reload(self) -> None:
        """SIGHUP: Mosquitto re-reads its configuration, password and ACL files."""
        if self._proc is None or self._proc.poll() is not None:
            raise ServiceError("the broker is not running", reason=Reason.USAGE)
        self._proc.send_signal(signal.SIGHUP)

    def set_auth(
        self,
        users: Mapping[str, str],
        acl: str | None = None,
        *,
        allow_anonymous: bool | None = None,
    ) -> None:
        """Replace the logins and ACL and, when the broker runs, reload them (SIGHUP).

        The reload is asynchronous: the broker applies it within moments, not before return.
        ``allow_anonymous`` None keeps the current setting.
        """
        new_users = dict(users)
        self._validate_users(new_users)
        self._users = new_users
        self._hashed = False
        self._acl = acl
        if allow_anonymous is not None:
            self.allow_anonymous = allow_anonymous
        if self._port is not None:
            self._write_files()
        if self.running:
            self.reload()

    def set_hashed_auth(self, hashed_users: Mapping[str, str], acl: str | None = None) -> None:
        """Like :meth:`set_auth`, with ``{username: "$7$..." hash}`` as stored in a registry, so
        plaintext passwords never have to exist on this side."""
        for name, hashed in hashed_users.items():
            self._validate_users({name: hashed})
            if not hashed.startswith("$7$"):
                raise ServiceError(
                    f"{name!r}: not a $7$ password hash", reason=Reason.CONFIG_INVALID
                )
        self._users = dict(hashed_users)
        self._hashed = True
        self._acl = acl
        self.allow_anonymous = False
        if self._port is not None:
            self._write_files()
        if self.running:
            self.reload()

    def set_dynsec(self, config: Mapping[str, Any]) -> None:
        """Replace the dynamic-security configuration used from the broker's next start.

        A running broker is not changed (the plugin owns its file while it runs and ignores
        SIGHUP): change it through ``$CONTROL/dynamic-security/v1``
        (:class:`anchor.broker_auth.BrokerAdmin`), or restart it.
        """
        if self._dynsec is None:
            raise ServiceError("this broker was not started with dynsec", reason=Reason.USAGE)
        self._dynsec = dict(config)

    # -- internals ------------------------------------------------------------------------

    @staticmethod
    def _validate_users(users: Mapping[str, str] | None) -> None:
        for name, password in (users or {}).items():
            if not _MQTT_USER.fullmatch(name):
                raise ServiceError(
                    f"MQTT username {name!r} is empty or has ':' or whitespace",
                    reason=Reason.CONFIG_INVALID,
                )
            if "\n" in password or "\r" in password or not password:
                raise ServiceError(
                    f"password of {name!r} is empty or has a line break",
                    reason=Reason.CONFIG_INVALID,
                )

    def _owner(self) -> pwd.struct_passwd | None:
        return _user(_MOSQUITTO_USER, _MOSQUITTO_PACKAGE) if _is_root() else None

    def _prepare_dirs(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.persistence_dir.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.base_dir, 0o700)
        owner = self._owner()
        if owner is not None:
            _check_traversable(self.base_dir, owner)

    def _config_text(self) -> str:
        lines = [
            "# Generated by anchor.services at every start; edits are overwritten.",
            "per_listener_settings false",
            f"listener {self.port} {LOOPBACK}",
            "protocol mqtt",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            "persistence true",
            # The trailing slash matters: Mosquitto concatenates location and file name.
            f"persistence_location {self.persistence_dir}/",
            "persistence_file mosquitto.db",
            *(
                [f"autosave_interval {self.autosave_interval}"]
                if self.autosave_changes is None
                else ["autosave_on_changes true", f"autosave_interval {self.autosave_changes}"]
            ),
            # An upper bound on every session's expiry, MQTT v5 clients' requests included
            # (Mosquitto 2.0 keeps the smaller of the two).
            f"persistent_client_expiration {self.session_expiry_cap_h}h",
            f"max_inflight_messages {self.max_inflight_messages}",
            f"max_queued_messages {self.max_queued_messages}",
            "max_queued_bytes 0",
            "queue_qos0_messages false",
            "set_tcp_nodelay true",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        if _is_root():
            lines.append(f"user {_MOSQUITTO_USER}")
        if self._dynsec is not None:
            lines.append(f"plugin {find_dynsec_plugin()}")
            lines.append(f"plugin_opt_config_file {self.dynsec_path}")
        if self._users is not None:
            lines.append(f"password_file {self.password_path}")
        if self._acl is not None:
            lines.append(f"acl_file {self.acl_path}")
        return "\n".join(lines) + "\n"

    def _write_files(self) -> None:
        owner = self._owner()
        self._write(self.conf_path, self._config_text(), owner)
        if self._dynsec is not None and not self.running:
            # Only before a start: while it runs, the plugin owns (and rewrites) this file.
            self._write(self.dynsec_path, json.dumps(self._dynsec, indent=1) + "\n", owner)
        if self._users is not None and self._hashed:
            text = "".join(f"{u}:{h}\n" for u, h in self._users.items())
            self._write(self.password_path, text, owner)
        elif self._users is not None:
            self._write_passwords(self._users, owner)
        if self._acl is not None:
            self._write(
                self.acl_path, self._acl if self._acl.endswith("\n") else self._acl + "\n", owner
            )
        if owner is not None:
            # The broker writes its log and persistence database after dropping to this user.
            _chown_tree(self.base_dir, owner)

    @staticmethod
    def _write(path: Path, text: str, owner: pwd.struct_passwd | None) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        if owner is not None:
            os.chown(tmp, owner.pw_uid, owner.pw_gid)
        # Atomic replace: a SIGHUP arriving mid-write never sees half a password or ACL file.
        os.replace(tmp, path)

    def _write_passwords(self, users: Mapping[str, str], owner: pwd.struct_passwd | None) -> None:
        tool = _find_passwd_tool()
        tmp = self.password_path.with_name(".passwords.tmp")
        if tool is None:
            text = "".join(f"{u}:{mosquitto_password_hash(p)}\n" for u, p in users.items())
            self._write(self.password_path, text, owner)
            return
        # Plain text hashed in place by `mosquitto_passwd -U`: the passwords never appear on a
        # command line (visible to every local user in ps) and the file is 0600 throughout.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(f"{u}:{p}\n" for u, p in users.items()))
        result = subprocess.run(
            [str(tool), "-U", str(tmp)], capture_output=True, text=True, timeout=60, check=False
        )
        if result.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise ServiceError(
                f"mosquitto_passwd -U failed: {result.stdout}{result.stderr}",
                reason=Reason.CONFIG_INVALID,
            )
        os.chmod(tmp, 0o600)
        if owner is not None:
            os.chown(tmp, owner.pw_uid, owner.pw_gid)
        os.replace(tmp, self.password_path)

    def _spawn(self, binary: Path) -> ServiceError | None:
        with self.stderr_path.open("ab") as err:
            # A new session: Ctrl-C in the caller's terminal must not kill the broker before
            # stop() can shut it down in order (and save its persistence database).
            proc = subprocess.Popen(
                [str(binary), "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                cwd=self.base_dir,
                start_new_session=True,
                # Only a pre-resolved prctl() call: no lock, import or allocation to deadlock on.
                preexec_fn=preexec_die_with_parent() if self.die_with_parent else None,  # noqa: PLW1509
            )
        self._proc = proc
        _REGISTRY.add(self)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if proc.poll() is not None:
                self._proc = None
                _REGISTRY.discard(self)
                tail = _log_tail(self.stderr_path, self.log_path)
                in_use = "Address already in use" in tail
                reason = Reason.PORT_IN_USE if in_use else Reason.START_FAILED
                return ServiceError(
                    f"mosquitto exited with status {proc.returncode} while starting on "
                    f"{LOOPBACK}:{self.port}\n{tail}",
                    reason=reason,
                )
            if _accepts(LOOPBACK, self.port):
                return None
            if time.monotonic() > deadline:
                self.stop()
                return ServiceError(
                    f"mosquitto did not accept connections on {LOOPBACK}:{self.port} within "
                    f"{self.start_timeout} s\n" + _log_tail(self.stderr_path, self.log_path),
                    reason=Reason.START_FAILED,
                )
            time.sleep(0.02)


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
