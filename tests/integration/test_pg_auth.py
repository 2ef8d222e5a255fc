"""Issue 10 item 3: the private PostgreSQL trusts nobody.

The attack: as OS user ``nobody``, ``psql -h 127.0.0.1 -U postgres`` got a superuser session
(``trust`` in pg_hba.conf), inserted an operator token and ran ``COPY ... TO PROGRAM``. Now every
connection needs a password (scram-sha-256), the passwords live in 0600 files, and the service
connects as a role that is no superuser. These tests run the attack against the real server.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import stat
import subprocess
from pathlib import Path

import asyncpg
import pytest

from anchor.local import PostgresServer
from anchor.store import Store

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as user nobody")


def _as_nobody(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}  # no PG* variable, no password
    return subprocess.run(
        [runuser, "-u", "nobody", "--", *cmd],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=60,
        check=False,
    )


def nobody_connects(
    server: PostgresServer, host: str, user: str
) -> subprocess.CompletedProcess[str]:
    """``psql`` as OS user nobody: no password prompt (-w), a query an attacker would run."""
    psql = str(server.bindir / "psql")
    return _as_nobody(
        [psql, "-X", "-w", f"--host={host}", f"--port={server.port}", f"--username={user}",
         "--dbname=cityanchor", "-c", "INSERT INTO pg_temp.x SELECT 1"]
    )  # fmt: skip


def _hba_methods(server: PostgresServer) -> set[str]:
    lines = (server.data_dir / "pg_hba.conf").read_text().splitlines()
    return {ln.split()[-1] for ln in lines if ln.strip() and not ln.lstrip().startswith("#")}


def assert_locked_down(server: PostgresServer) -> None:
    """What must hold for any PostgresServer (fixtures, demo, up): nobody gets in, the secrets are
    private, the only method is scram-sha-256."""
    assert _hba_methods(server) == {"scram-sha-256"}
    for user in ("postgres", "cityanchor"):
        tcp = nobody_connects(server, "127.0.0.1", user)
        assert tcp.returncode != 0, tcp.stdout
        # The server asked for a password: the refusal is authentication, not a network error.
        assert "no password supplied" in tcp.stderr, tcp.stderr
        sock = nobody_connects(server, str(server.socket_dir), user)
        assert sock.returncode != 0, sock.stdout
        assert "Permission denied" in sock.stderr or "password" in sock.stderr, sock.stderr
    owner = pwd.getpwnam("postgres").pw_uid
    for path in (server.superuser_password_path, server.password_path):
        st = path.stat()
        assert stat.S_IMODE(st.st_mode) == 0o600, path
        assert st.st_uid == owner, path
        assert _as_nobody(["cat", str(path)]).returncode != 0


def test_nobody_cannot_connect_over_tcp_or_the_socket(postgres: PostgresServer) -> None:
    assert_locked_down(postgres)
    # ...while the service, with its password, does connect (so the refusals above are real).
    assert postgres.psql("SELECT 1") == "1"

    async def whoami() -> str:
        conn = await asyncpg.connect(postgres.dsn)
        try:
            return str(await conn.fetchval("SELECT current_user"))
        finally:
            await conn.close()

    assert asyncio.run(whoami()) == "cityanchor"


def test_a_wrong_password_is_refused(postgres: PostgresServer) -> None:
    async def attempt() -> None:
        conn = await asyncpg.connect(
            f"postgresql://postgres:guess@127.0.0.1:{postgres.port}/cityanchor"
        )
        await conn.close()

    with pytest.raises(asyncpg.InvalidPasswordError):
        asyncio.run(attempt())


def test_the_service_role_is_no_superuser_and_cannot_run_programs(postgres: PostgresServer) -> None:
    dsn = postgres.create_database("t_service_role")
    try:

        async def probe() -> dict[str, object]:
            conn = await asyncpg.connect(dsn)
            out: dict[str, object] = {}
            try:
                row = await conn.fetchrow(
                    "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls "
                    "FROM pg_roles WHERE rolname = current_user"
                )
                assert row is not None
                out["attributes"] = tuple(row)
                # It owns its schema: the migrations run as this role.
                await conn.execute("CREATE TABLE mine (x int)")
                for name, sql in {
                    "copy_to_program": "COPY (SELECT 1) TO PROGRAM 'true'",
                    "read_server_file": "SELECT pg_read_file('/etc/passwd')",
                    "create_role": "CREATE ROLE evil SUPERUSER",
                    "alter_self": "ALTER ROLE CURRENT_USER SUPERUSER",
                }.items():
                    try:
                        await conn.execute(sql)
                        out[name] = "ran"
                    except asyncpg.InsufficientPrivilegeError:
                        out[name] = "refused"
            finally:
                await conn.close()
            return out

        out = asyncio.run(probe())
        assert out.pop("attributes") == (False, False, False, False, False)
        assert out == dict.fromkeys(out, "refused") and len(out) == 4, out
    finally:
        postgres.drop_database("t_service_role")


def test_a_trust_era_cluster_is_upgraded_at_start(service_dir: Path) -> None:
    """A data dir initialised by the previous version (trust, no passwords, everything owned by
    the superuser) is locked down at the next start, and the service keeps its data."""
    server = PostgresServer(service_dir / "pg", fsync=False).start()
    try:
        # Recreate the old layout: a table owned by the superuser, no service role.
        server.psql("ALTER SCHEMA public OWNER TO pg_database_owner")
        server.psql("CREATE TABLE legacy (id int PRIMARY KEY); INSERT INTO legacy VALUES (7)")
        server.psql('ALTER DATABASE cityanchor OWNER TO postgres; DROP ROLE "cityanchor"',
                    database="postgres")  # fmt: skip
    finally:
        server.stop()
    (server.data_dir / "pg_hba.conf").write_text(
        "local all all trust\nhost all all 127.0.0.1/32 trust\n"
    )
    server.superuser_password_path.unlink()
    server.password_path.unlink()

    upgraded = PostgresServer(service_dir / "pg", fsync=False).start()
    try:
        assert not upgraded.created
        assert "trust" not in (upgraded.data_dir / "pg_hba.conf").read_text()
        assert_locked_down(upgraded)

        async def use() -> tuple[int, str]:
            conn = await asyncpg.connect(upgraded.dsn)
            try:
                await conn.execute("INSERT INTO legacy VALUES (8)")  # it owns the old table now
                owner = await conn.fetchval(
                    "SELECT tableowner FROM pg_tables WHERE tablename = 'legacy'"
                )
                total = await conn.fetchval("SELECT sum(id) FROM legacy")
            finally:
                await conn.close()
            store = await Store.connect(upgraded.dsn)
            try:
                await store.migrate()  # the whole schema, as the service role
            finally:
                await store.close()
            return int(total), str(owner)

        assert asyncio.run(use()) == (15, "cityanchor")
    finally:
        upgraded.stop()
