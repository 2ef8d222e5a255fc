"""A private PostgreSQL cluster for tests, the demo and ``cityanchor up``.

The cluster lives in a directory the caller gives and listens only on ``127.0.0.1`` (see
:mod:`anchor.local` for the rules all private servers share). ``initdb`` and ``postgres`` refuse
to run as root, so as root they run as the ``postgres`` user through ``runuser`` on a directory
chowned to it.

Failures raise :class:`anchor.local.ServiceError`; besides the shared reasons,
``sql_failed`` (:meth:`PostgresServer.psql`) and ``already_running``
(:meth:`PostgresServer.start` on a data dir whose postmaster another process runs).
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, Self

from anchor.errors import Reason
from anchor.host.lifetime import pid_alive
from anchor.local.base import (
    LOOPBACK,
    REGISTRY,
    LocalServer,
    ServiceError,
    check_traversable,
    clean_env,
    is_root,
    log_tail,
    pid_alive_within,
    system_user,
)
from anchor.local.pg_auth import HBA, hand_over_sql, read_secret
from anchor.password_hashes import scram_sha256_verifier

__all__ = ["PostgresServer", "find_pg_bindir"]

_PG_PACKAGE = "postgresql"
_PG_USER = "postgres"
# sun_path is 108 bytes on Linux; PostgreSQL appends "/.s.PGSQL.NNNNN" (15 bytes) and a NUL.
_MAX_SOCKET_DIR = 107 - 16
_IDENT = re.compile(r"[a-z_][a-z0-9_]{0,62}")


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
        password = read_secret(self.password_path)
        return f"postgresql://{self.role}:{password}@{LOOPBACK}:{self.port}/{database}"

    @property
    def superuser_dsn(self) -> str:
        """The superuser's DSN: administration and tests only, never the service."""
        password = read_secret(self.superuser_password_path)
        return f"postgresql://{_PG_USER}:{password}@{LOOPBACK}:{self.port}/{self.database}"

    @property
    def running(self) -> bool:
        """Started by us and the postmaster still alive (False after it crashed or was killed:
        :meth:`start` then starts it again)."""
        if not self._running:
            return False
        pid = self.pid
        return pid is not None and pid_alive(pid)

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
            ServiceError: ``already_running`` (another process's postmaster runs on this data
                dir; nothing is changed), ``port_in_use`` (the named port is taken),
                ``binary_missing``, ``permission_denied``, ``user_missing`` or
                ``start_failed`` (with the log tail).
        """
        return super().start()

    def _check_startable(self) -> None:
        # Not running, though maybe started before: the postmaster died (crash, kill -9).
        self._running = False
        other = self.pid
        if other is not None and pid_alive(other):
            # Someone else's server on this data dir: refuse before changing any file of it
            # (port, pg_hba.conf) and never stop it (an earlier version's failed start sent such
            # a server an immediate shutdown).
            raise ServiceError(
                f"PostgreSQL (pid {other}) is already running on {self.data_dir}, started by "
                "another process; nothing was changed",
                reason=Reason.ALREADY_RUNNING,
            )

    def _prepare(self) -> None:
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
            self._write_owned(self.data_dir / "pg_hba.conf", HBA)
        self._ensure_secret(self.password_path)

    def _launch(self) -> ServiceError | None:
        self._write_settings(self.port)
        return self._pg_ctl_start(self.bindir)

    def _started(self) -> None:
        self._running = True
        REGISTRY.add(self)
        try:
            self._wait_ready(self.bindir)
            self._ensure_role()
            self.create_database(self.database)
        except BaseException:
            self.stop(mode="immediate")
            raise

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
        if pid is not None and pid_alive_within(pid, wait=10.0):
            raise ServiceError(
                f"PostgreSQL (pid {pid}) did not stop: {result.stdout}{result.stderr}\n"
                + log_tail(self.log_path),
                reason=Reason.STOP_FAILED,
            )
        self._running = False
        REGISTRY.discard(self)

    def stop_stale(self) -> int | None:
        """Stop (fast) a postmaster left running on this data dir by an owner that is gone, e.g.
        a ``cityanchor up`` killed with SIGKILL; return its pid, or None when there was none.

        Only for a caller that knows the owner is gone (``up`` holds the data dir's lock).
        """
        other = self.pid
        if self._running or other is None or not pid_alive(other):
            return None
        result = self._pg_ctl_stop("fast", timeout=60)
        if pid_alive_within(other, wait=10.0):
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
        self.psql(hand_over_sql(self.role), database=name)
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
        env = clean_env()
        env["PGPASSWORD"] = read_secret(self.superuser_password_path)
        return env

    def _owner(self) -> pwd.struct_passwd | None:
        return system_user(_PG_USER, _PG_PACKAGE) if is_root() else None

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
        return read_secret(path)

    def _ensure_role(self) -> None:
        """Create or refresh the service role: login, no privileges beyond its own objects, the
        password from ``password_path`` (sent as a SCRAM verifier: the server never sees it)."""
        verifier = scram_sha256_verifier(read_secret(self.password_path))
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
        if self.pid is not None and pid_alive(self.pid):
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
        self._write_owned(self.data_dir / "pg_hba.conf", HBA)

    def _run_as_owner(
        self, cmd: list[str], *, timeout: float = 120.0, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        if is_root():
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
            env=clean_env(),
            cwd=self.base_dir,
            timeout=timeout,
            check=False,
        )

    def _prepare_dirs(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        owner = self._owner()
        if owner is not None:
            check_traversable(self.base_dir, owner)
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
        self._write_owned(self.data_dir / "pg_hba.conf", HBA)
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
            "# Generated by anchor.local.postgres at every start; edits are overwritten.\n"
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
        tail = log_tail(self.log_path)
        reason = Reason.PORT_IN_USE if "Address already in use" in tail else Reason.START_FAILED
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
            result = subprocess.run(cmd, env=clean_env(), check=False, capture_output=True)
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"PostgreSQL on {LOOPBACK}:{self.port} did not become ready\n"
                    + log_tail(self.log_path),
                    reason=Reason.START_FAILED,
                )
            time.sleep(0.1)
