"""Private PostgreSQL, Mosquitto and anvil servers for tests, the demo and ``cityanchor up``.

Each server lives in a directory the caller gives, listens only on ``127.0.0.1`` at a port the
caller names or a free one (a restart reuses the previous port while it is still free, so clients
holding the old URL or DSN reconnect), and is stopped by ``stop()``, by leaving its ``with``
block or, as a last resort, at interpreter exit. Services that merely happen to run on the
machine (a system PostgreSQL on 5432, a Mosquitto on 1883, a node on 8545) are never used: a
test that passes against them proves nothing about a fresh host. They share one lifecycle
(:mod:`anchor.local.base`); :mod:`~anchor.local.postgres`, :mod:`~anchor.local.mosquitto` and
:mod:`~anchor.local.anvil` add what is particular to each.

Production code (the ingestor, the API, the anchoring job, the store) never imports this
package: only ``cityanchor up``, the demo, the benchmarks and the tests do
(``tests/unit/test_local_layering.py`` checks it).

Running as root: ``initdb`` and ``postgres`` refuse to run as root, so they run as the
``postgres`` user through ``runuser`` on a directory chowned to it; Mosquitto drops privileges to
the ``mosquitto`` user by itself, so its directory and files are chowned to that user. Every
ancestor of the directory must be traversable by that user: ``tempfile.mkdtemp()`` and pytest's
``tmp_path`` are not (0700 root), so callers running as root should create a directory and chmod
it 0711 or wider.

Failures raise :class:`ServiceError` with a stable ``reason``: ``binary_missing``,
``port_in_use``, ``permission_denied``, ``user_missing``, ``config_invalid``, ``start_failed``,
``stop_failed``, ``sql_failed`` (:meth:`PostgresServer.psql`), ``already_running``
(:meth:`PostgresServer.start` on a data dir whose postmaster another process runs),
``rpc_failed`` (an :class:`AnvilNode` JSON-RPC helper), ``usage``.

Example::

    with PostgresServer(Path("/srv/ca/pg")) as pg, MosquittoServer(Path("/srv/ca/mqtt")) as mq:
        print(pg.dsn, mq.url)
"""

from __future__ import annotations

from anchor.local.anvil import DEV_MNEMONIC, AnvilNode, DevAccount, find_anvil
from anchor.local.base import (
    LOOPBACK,
    LocalServer,
    ServiceError,
    SpawnedServer,
    free_port,
    port_free,
    start_on_stable_port,
)
from anchor.local.mosquitto import MosquittoServer, find_dynsec_plugin, find_mosquitto
from anchor.local.postgres import PostgresServer, find_pg_bindir

__all__ = [
    "DEV_MNEMONIC",
    "LOOPBACK",
    "AnvilNode",
    "DevAccount",
    "LocalServer",
    "MosquittoServer",
    "PostgresServer",
    "ServiceError",
    "SpawnedServer",
    "find_anvil",
    "find_dynsec_plugin",
    "find_mosquitto",
    "find_pg_bindir",
    "free_port",
    "port_free",
    "start_on_stable_port",
]
