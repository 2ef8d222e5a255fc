#!/usr/bin/env python3
"""The restore drill: prove that a backup of the cityanchor database restores and checks out.

    scripts/restore-drill.py DUMP [--source-dsn DSN] [--sample N] [--keep DIR] [-- AUDIT ARGS]

1. ``pg_restore --list DUMP``: the file is a readable custom-format dump (scripts/pg-backup.sh).
2. A fresh private PostgreSQL (anchor.local.PostgresServer: a temporary directory, 127.0.0.1,
   a free port, password auth) is started, and the dump is restored into its ``cityanchor``
   database as the service role (no superuser: ``--no-owner --no-acl``), in one transaction,
   stopping at the first error.
3. ``cityanchor audit --database-url RESTORED AUDIT ARGS`` recomputes every leaf hash, batch
   root, log root and (with ``--log-key``) checkpoint signature of the restored copy, and (unless
   ``--no-chain``) checks its anchors on the configured chains. Anything after ``--`` goes to it.
4. With ``--source-dsn``: the receipts of up to ``--sample`` readings (spread over every batch)
   are built from the restored copy and from the source database and compared byte for byte.
   A receipt that differs only because the source has moved on since the dump (it ends on a
   newer checkpoint or carries a newer anchor) is counted as "advanced", not as a failure.

Exit code 0 when every step passed; 1 when one failed (the first failure is printed); 2 on a
usage error. The private PostgreSQL is stopped and its directory removed at the end, unless
``--keep DIR`` names a directory to keep its files in. Runs on a host with the PostgreSQL server
binaries (``scripts/ensure-system-deps.sh``) and cityanchor installed; docs/operator-guide.md,
"Backup and restore", gives the Docker variant.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from anchor.local import PostgresServer
from anchor.receipt import Receipt, dumps_receipt
from anchor.store import Store


@dataclass
class Comparison:
    """Receipts compared between the restored copy and the source."""

    identical: int = 0
    advanced: int = 0
    different: list[str] = field(default_factory=list)


def _sample(rows: list[tuple[str, int, int]], limit: int) -> list[tuple[str, int]]:
    """Up to ``limit`` (device_id, seq), the first reading of every batch first, so each batch
    is represented before any batch gets a second one."""
    by_batch: dict[int, list[tuple[str, int]]] = {}
    for device_id, seq, batch_id in rows:
        by_batch.setdefault(batch_id, []).append((device_id, seq))
    picked: list[tuple[str, int]] = []
    depth = 0
    while len(picked) < limit and any(depth < len(v) for v in by_batch.values()):
        for batch_id in sorted(by_batch):
            if depth < len(by_batch[batch_id]) and len(picked) < limit:
                picked.append(by_batch[batch_id][depth])
        depth += 1
    return picked


def _advanced(restored: Receipt, source: Receipt) -> bool:
    """The source's receipt is the restored one's, only later: a newer checkpoint or anchors."""
    if (restored.device_id, restored.seq, restored.envelope, restored.leaf_hash) != (
        source.device_id,
        source.seq,
        source.envelope,
        source.leaf_hash,
    ) or restored.batch != source.batch:
        return False
    return source.log.size > restored.log.size or len(source.anchors) > len(restored.anchors)


async def compare_receipts(restored_dsn: str, source_dsn: str, *, sample: int) -> Comparison:
    restored = await Store.connect(restored_dsn, max_size=1)
    source = await Store.connect(source_dsn, max_size=1)
    out = Comparison()
    try:
        conn = await asyncpg.connect(restored_dsn)
        try:
            rows = await conn.fetch(
                "SELECT d.device_id, s.seq, s.batch_id FROM reading_seqs s "
                "JOIN devices d ON d.num = s.device_num ORDER BY s.batch_id, s.batch_index"
            )
        finally:
            await conn.close()
        for device_id, seq in _sample([(r[0], r[1], r[2]) for r in rows], sample):
            a = await restored.receipt(device_id, seq)
            b = await source.receipt(device_id, seq)
            if dumps_receipt(a) == dumps_receipt(b):
                out.identical += 1
            elif _advanced(a, b):
                out.advanced += 1
            else:
                out.different.append(f"{device_id} seq {seq}")
    finally:
        await restored.close()
        await source.close()
    return out


def _cityanchor() -> list[str]:
    """The ``cityanchor`` command of this interpreter's installation."""
    entry = Path(sys.executable).parent / "cityanchor"
    return [str(entry)] if entry.is_file() else [sys.executable, "-m", "anchor.cli.commands"]


def _pg_tool(server: PostgresServer, name: str) -> str:
    tool = server.bindir / name
    return str(tool) if tool.is_file() else (shutil.which(name) or name)


def _restore(server: PostgresServer, dump: Path) -> None:
    # The service role's password travels in the environment, never on the command line.
    env = {**os.environ, "PGPASSWORD": server.password_path.read_text().strip()}
    cmd = [
        _pg_tool(server, "pg_restore"),
        "--no-owner",
        "--no-acl",
        "--exit-on-error",
        "--single-transaction",
        "--host=127.0.0.1",
        f"--port={server.port}",
        f"--username={server.role}",
        f"--dbname={server.database}",
        str(dump),
    ]
    subprocess.run(cmd, env=env, check=True, timeout=3600)


def run(args: argparse.Namespace) -> int:
    dump = Path(args.dump)
    listed = subprocess.run(
        [shutil.which("pg_restore") or "pg_restore", "--list", str(dump)],
        capture_output=True,
        text=True,
        check=False,
    )
    if listed.returncode != 0:
        print(f"drill: FAIL {dump} is not a readable dump: {listed.stderr.strip()}")
        return 1
    print(f"drill: 1/4 {dump} reads back ({len(listed.stdout.splitlines())} catalogue lines)")
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="cityanchor-drill-"))
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o711)  # the postgres user (when we are root) must traverse it
    server = PostgresServer(base / "postgres")
    try:
        server.start()
        try:
            _restore(server, dump)
        except subprocess.CalledProcessError as exc:
            print(f"drill: FAIL pg_restore exited {exc.returncode}")
            return 1
        print(f"drill: 2/4 restored into a fresh PostgreSQL on 127.0.0.1:{server.port}")
        audit = subprocess.run(
            [*_cityanchor(), "audit", "--database-url", server.dsn, *args.audit_args],
            text=True,
            capture_output=True,
            check=False,
        )
        sys.stdout.write(audit.stdout)
        if audit.returncode != 0:
            sys.stdout.write(audit.stderr)
            print(f"drill: FAIL cityanchor audit exited {audit.returncode} on the restored copy")
            return 1
        print("drill: 3/4 cityanchor audit passes on the restored copy")
        if args.source_dsn:
            result = asyncio.run(compare_receipts(server.dsn, args.source_dsn, sample=args.sample))
            if result.different:
                shown = ", ".join(result.different[:5])
                print(f"drill: FAIL {len(result.different)} receipt(s) differ: {shown}")
                return 1
            print(
                f"drill: 4/4 receipts: {result.identical} identical, {result.advanced} newer on "
                "the source (sealed or anchored since the dump)"
            )
        else:
            print("drill: 4/4 skipped (no --source-dsn: receipts not compared)")
        print("drill: OK")
        return 0
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    audit_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, audit_args = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(
        prog="restore-drill.py",
        description="Restore a pg_dump of cityanchor into a fresh private PostgreSQL and check it.",
        epilog="Arguments after -- go to `cityanchor audit` (e.g. -- --log-key operator.vkey).",
    )
    parser.add_argument("dump", help="a custom-format dump (scripts/pg-backup.sh)")
    parser.add_argument(
        "--source-dsn", help="the database the dump came from: compare receipts with it"
    )
    parser.add_argument(
        "--sample", type=int, default=200, help="receipts to compare (default: %(default)s)"
    )
    parser.add_argument(
        "--keep", metavar="DIR", help="put the private PostgreSQL in DIR and keep its files"
    )
    args = parser.parse_args(argv)
    args.audit_args = audit_args
    if args.sample < 1:
        parser.error("--sample must be at least 1")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
