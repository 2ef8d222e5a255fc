"""Healthchecks of the compose services that serve no HTTP API (docker/compose.yaml mounts this
file into the cityanchor containers at /opt/cityanchor/health.py).

    python /opt/cityanchor/health.py ingest PORT   # the ingestor's --metrics-listen port
    python /opt/cityanchor/health.py anchor        # CITYANCHOR_DATABASE_URL, CITYANCHOR_CHAIN_*

``ingest``: the process answers on its metrics port and is connected to the broker
(``cityanchor_ingest_mqtt_connected 1``).

``anchor``: the database answers, an anchoring job holds the leadership lock (one replica
leads, the others wait on the lock: every replica is healthy while SOME replica leads, and all
turn unhealthy when none does), and the chain's JSON-RPC endpoint (CITYANCHOR_CHAIN_RPC_URL,
when set) answers ``eth_chainId`` with CITYANCHOR_CHAIN_ID. A stalled anchoring with a live
leader is not this check's business: the alert ``CityanchorAnchoringStalled`` is
(docker/prometheus/rules/cityanchor.yml).

Exit 0 healthy, 1 unhealthy (one line on stdout says why; ``docker inspect`` shows it).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import urllib.request

TIMEOUT_S = 4.0


def check_ingest(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT_S) as r:
            text = r.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"metrics endpoint on port {port}: {exc}"
    for line in text.splitlines():
        if line.startswith("cityanchor_ingest_mqtt_connected "):
            return None if float(line.split()[1]) == 1 else "not connected to the broker"
    return "no cityanchor_ingest_mqtt_connected on the metrics endpoint"


async def _leader(dsn: str) -> str | None:
    # Here, not at the top: the ingest check, run every few seconds, needs neither.
    import asyncpg  # noqa: PLC0415

    from anchor.store.connection import ANCHOR_LOCK  # noqa: PLC0415

    try:
        conn = await asyncpg.connect(dsn, timeout=TIMEOUT_S)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"database: {type(exc).__name__}"  # never the DSN: it carries the password
    try:
        # pg_advisory_lock(bigint): classid is the high half, objid the low half, objsubid 1.
        held = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 1",
            ANCHOR_LOCK >> 32,
            ANCHOR_LOCK & 0xFFFF_FFFF,
            timeout=TIMEOUT_S,
        )
    finally:
        await conn.close()
    return None if held else "no anchoring job holds the leadership lock"


def _chain(rpc_url: str, chain_id: str | None) -> str | None:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []})
    request = urllib.request.Request(
        rpc_url, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as r:
            answer = json.loads(r.read())
        got = int(answer["result"], 16)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"chain JSON-RPC: {type(exc).__name__}"  # never the URL: it may carry a key
    if chain_id and got != int(chain_id):
        return f"chain JSON-RPC answers chain id {got}, configured {chain_id}"
    return None


def check_anchor(env: dict[str, str]) -> str | None:
    dsn = env.get("CITYANCHOR_DATABASE_URL")
    if not dsn:
        return "CITYANCHOR_DATABASE_URL is not set"
    problem = asyncio.run(_leader(dsn))
    if problem is None and env.get("CITYANCHOR_CHAIN_RPC_URL"):
        problem = _chain(env["CITYANCHOR_CHAIN_RPC_URL"], env.get("CITYANCHOR_CHAIN_ID"))
    return problem


def main(argv: list[str]) -> int:
    if argv[:1] == ["ingest"] and len(argv) == 2 and argv[1].isdigit():
        problem = check_ingest(int(argv[1]))
    elif argv == ["anchor"]:
        problem = check_anchor(dict(os.environ))
    else:
        print("usage: health.py ingest PORT | health.py anchor")
        return 2
    print(f"unhealthy: {problem}" if problem else "healthy")
    return 1 if problem else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
