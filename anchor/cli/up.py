"""``cityanchor up``: the whole service on one machine, on embedded defaults.

Starts and supervises, in one command: a private PostgreSQL (initdb on first run), a private
Mosquitto, a local EVM chain (anvil, its state kept in the data dir) with the AnchorRegistry
deployed, the ingestor(s), the anchoring loop and the API. Everything lives in ``--data-dir``, so
stopping and starting again keeps readings, keys, the log and the chain state. When every part is
ready it writes ``DATA_DIR/up.json`` (DESIGN.md "Interfaces") and removes it on shutdown.
Ctrl-C / SIGTERM stops the children first (each drains: nothing acknowledged is lost), then the
servers; when the database or the broker is dead there is nothing to drain into, and the
children get 3 s instead of 20 s.

Where the parts live: the options in :mod:`anchor.cli.up_options`; the broker's settings and its
device gate (devices are admitted only once an ingestor is subscribed; the broker saves its
database once a second) in :mod:`anchor.cli.up_broker`; one ``up`` per data dir, stopping what
a killed ``up`` left running, remembered ports and restarts with back-off in
:mod:`anchor.cli.up_recovery`.

PostgreSQL asks every client for a password (see :class:`anchor.local.PostgresServer`); the
services connect as its non-superuser role ``cityanchor``, whose password is in
``DATA_DIR/postgres/service.password`` and, inside the DSN, in ``DATA_DIR/config.toml`` (both
0600). A data dir from a version that used ``trust`` authentication is upgraded on start.
Nothing ``up`` prints, logs or writes to ``up.json`` carries a password (anchor.host.redact).

``up`` is the single-machine, evaluation mode: every server listens on 127.0.0.1 only, without
TLS (docker/ deploys a fleet). Its flags are checked before anything starts
(:class:`~anchor.cli.up_options.UpOptions`); a data dir this run created is removed again when
the start fails. The children log JSON lines (``--log-format json``) to ``DATA_DIR/logs``,
rotated by :func:`anchor.host.logs.rotate_copytruncate`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import pwd
import secrets
import shutil
import signal
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from anchor.broker.logins import ADMIN_USER, INGEST_USER, BrokerAdmin
from anchor.checkpoint import NoteSigner, generate_note_key
from anchor.cli.up_broker import (
    SUBSCRIBED,
    BrokerLogins,
    BrokerSettings,
    DeviceGate,
    broker_settings,
    service_dynsec,
)
from anchor.cli.up_options import UpOptions
from anchor.cli.up_recovery import (
    PORT_WAIT_S,
    AlreadyRunning,
    SupervisedCommand,
    SupervisedServer,
    choose_http_port,
    lock_data_dir,
    port_moved,
    say,
    stop_stale_servers,
)
from anchor.errors import AnchorError, Reason, UsageError
from anchor.host.config import ChainSettings, Settings, WitnessSettings, settings_to_toml
from anchor.host.files import write_private_file, write_public_file
from anchor.host.logs import rotate_copytruncate
from anchor.host.redact import redact_url
from anchor.local import AnvilNode, MosquittoServer, PostgresServer, start_on_stable_port

__all__ = ["BrokerSettings", "UpOptions", "broker_settings", "run_up"]

LOCAL_CHAIN_ID = 31337
ORIGIN = "local.cityanchor.example/log"

EXIT_ALREADY_RUNNING = 2
_STOP_GRACE_S = 20.0  # for the children to drain, when there is something to drain into
_STOP_GRACE_DEAD_S = 3.0
_ROTATE_EVERY_S = 5.0  # how often the services' log sizes are looked at


def _rotate_logs(logs: Path, opts: UpOptions) -> None:
    for path in sorted(logs.glob("*.log")):
        with contextlib.suppress(OSError):
            rotate_copytruncate(path, max_bytes=opts.log_max_bytes, backups=opts.log_backups)


class _StopRequested(Exception):
    """SIGTERM/SIGINT while starting: stop now rather than wait for readiness first."""


def _wait_for(predicate: Any, timeout: float, what: str, abort: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if abort is not None and abort():
            raise _StopRequested(what)
        if time.monotonic() > deadline:
            raise AnchorError(
                f"{what} did not become ready in {timeout:.0f}s", reason=Reason.START_FAILED
            )
        time.sleep(0.1)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _secret(path: Path) -> str:
    """A random secret kept in ``path`` (0600), created on first use."""
    if not path.exists():
        write_private_file(path, (secrets.token_urlsafe(24) + "\n").encode())
    return path.read_text().strip()


def _operator_key(keys: Path) -> NoteSigner:
    skey = keys / "operator.skey"
    if skey.exists():
        return NoteSigner.from_skey(skey.read_text().strip())
    signer = generate_note_key(ORIGIN)
    write_private_file(skey, (signer.skey() + "\n").encode())
    write_public_file(keys / "operator.vkey", (signer.verifier.vkey() + "\n").encode())
    return signer


async def _prepare_database(dsn: str) -> None:
    from anchor.store import Store

    store = await Store.connect(dsn)
    try:
        await store.migrate()
        await store.ensure_partitions()
    finally:
        await store.close()


async def _operator_token(dsn: str, path: Path) -> None:
    """An all-scopes API token for the operator, created once and kept in ``path`` (0600)."""
    if path.exists():
        return
    from anchor.api.tokens import SCOPES, create_token
    from anchor.store import Store

    store = await Store.connect(dsn)
    try:
        new = await create_token(store, name="up-operator", scopes=list(SCOPES))
    finally:
        await store.close()
    write_private_file(path, (new.token + "\n").encode())


@contextlib.contextmanager
def _services(opts: UpOptions) -> Iterator[dict[str, Any]]:
    d = opts.data_dir
    ports_file = d / "ports.json"
    ports: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError):
        ports = {k: int(v) for k, v in json.loads(ports_file.read_text()).items()}
    started: list[Any] = []
    stop_stale_servers(d)
    if opts.http_port:
        # A requested API port another program holds is refused before any server starts.
        choose_http_port(opts.http_port, None)
    try:
        pg = start_on_stable_port(
            lambda port: PostgresServer(d / "postgres", port=port),
            None,
            ports.get("postgres"),
            wait_s=PORT_WAIT_S,
            on_new_port=port_moved,
        )
        started.append(pg)
        # Logins required from the start: the ingestors' account now, the devices' as soon as
        # the registry is readable (see BrokerLogins).
        ingest_password = _secret(d / "keys" / "mqtt-ingest.password")
        admin_password = _secret(d / "keys" / "mqtt-admin.password")
        mq = start_on_stable_port(
            lambda port: MosquittoServer(
                d / "mosquitto",
                port=port,
                dynsec=service_dynsec([], ingest_password, admin_password),
                die_with_parent=True,
                **broker_settings(opts),
            ),
            opts.mqtt_port,
            ports.get("mqtt"),
            wait_s=PORT_WAIT_S,
            on_new_port=port_moved,
        )
        started.append(mq)
        ports.update(postgres=pg.port, mqtt=mq.port)
        chain: AnvilNode | None = None
        if opts.rpc_url is None:
            chain = start_on_stable_port(
                lambda port: AnvilNode(
                    d / "chain",
                    port=port,
                    chain_id=LOCAL_CHAIN_ID,
                    state_path=d / "chain" / "state.json",
                    state_interval=5,
                    die_with_parent=True,
                ),
                opts.chain_port,
                ports.get("chain"),
                wait_s=PORT_WAIT_S,
                on_new_port=port_moved,
            )
            started.append(chain)
            ports["chain"] = chain.port
        ports["http"] = choose_http_port(opts.http_port, ports.get("http"))
        ports_file.write_text(json.dumps(ports) + "\n")
        yield {"pg": pg, "mq": mq, "chain": chain, "http_port": ports["http"]}
    finally:
        for server in reversed(started):
            with contextlib.suppress(Exception):
                server.stop()


def _chain_settings(
    opts: UpOptions, chain: AnvilNode | None, keys: Path, config_path: Path
) -> ChainSettings:
    from anchor.anchoring.backend import deploy
    from anchor.anchoring.chains.evm import EvmBackend, EvmConfig

    previous: ChainSettings | None = None
    if config_path.exists():
        from anchor.host.config import load_settings

        old = load_settings(toml_path=config_path, env={})
        previous = old.chains[0] if old.chains else None
    if chain is not None:
        key_file = keys / "chain.key"
        if not key_file.exists():
            write_private_file(key_file, chain.accounts[1].private_key.encode())
        deployer = keys / "deployer.key"
        if not deployer.exists():
            write_private_file(deployer, chain.accounts[0].private_key.encode())
        # The private chain's URL is loopback and holds no key: the explorer may publish it.
        settings = ChainSettings(
            name="local",
            rpc_url=chain.rpc_url,
            public_rpc_url=chain.rpc_url,
            chain_id=LOCAL_CHAIN_ID,
            key_file=str(key_file),
        )
    else:
        if opts.chain_id is None or not opts.chain_key_file:  # checked by UpOptions too
            raise UsageError("--rpc needs --chain-id and --chain-key-file")
        settings = ChainSettings(
            name="external",
            rpc_url=opts.rpc_url or "",
            chain_id=opts.chain_id,
            key_file=opts.chain_key_file,
        )
        deployer = Path(opts.chain_key_file)
    contract = previous.contract if previous and previous.chain_id == settings.chain_id else ""
    if contract:
        # The chain state may be gone (a fresh external chain, a deleted state file): check.
        backend = EvmBackend(
            EvmConfig(
                name=settings.name,
                rpc_url=settings.rpc_url,
                chain_id=settings.chain_id,
                contract=contract,
            )
        )
        if not backend.w3.eth.get_code(backend.w3.to_checksum_address(contract)):
            say(f"no contract at {contract} on this chain any more: deploying a new one")
            contract = ""
    if not contract:
        contract = deploy(dataclasses.replace(settings, key_file=str(deployer)))
        say(f"AnchorRegistry deployed at {contract}")
    return dataclasses.replace(settings, contract=contract)


def _check_reachable(d: Path) -> None:
    """Run as root, the servers drop to their system users, who must be able to enter every
    directory above the data dir: refuse a data dir under /root (0700) now, before anything is
    created, rather than after PostgreSQL's initdb has failed half-way (issue 14)."""
    from anchor.local.base import check_traversable, is_root

    if not is_root():
        return
    existing = d
    while not existing.exists():
        existing = existing.parent
    for name in ("postgres", "mosquitto"):
        try:
            user = pwd.getpwnam(name)
        except KeyError:
            continue  # the server itself says which package creates it
        try:
            # The data dir itself is made 0711 by up; what matters is everything above it.
            check_traversable(d if existing == d else existing / "_", user)
        except AnchorError as exc:
            raise UsageError(f"--data-dir {d}: {exc.detail}") from None


def run_up(opts: UpOptions) -> int:
    """Run everything until SIGINT/SIGTERM; returns an exit code.

    A data dir this call created is removed again if ``up`` fails before it was ever ready
    (a refused start leaves nothing behind); one that existed is never removed.
    """
    d = opts.data_dir.absolute()
    _check_reachable(d)
    created = not d.exists()
    d.mkdir(parents=True, exist_ok=True)
    try:
        lock_fd = lock_data_dir(d)
    except AlreadyRunning as exc:
        # Before anything else: a second `up` must not touch the first one's servers or files.
        print(
            f"cityanchor up: already running, pid {exc.holder} (data dir {d}, lock "
            f"{d / 'up.lock'}); stop it first, or use another --data-dir",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_ALREADY_RUNNING
    ready: list[bool] = []
    try:
        return _run_locked(opts, d, ready)
    except BaseException:
        if created and not ready:
            say(f"start failed: removing {d}, which this up created")
            shutil.rmtree(d, ignore_errors=True)
        raise
    finally:
        os.close(lock_fd)


def _run_locked(opts: UpOptions, d: Path, ready: list[bool]) -> int:
    # The servers drop to their own users (postgres, mosquitto): they must reach their folders.
    os.chmod(d, 0o711)
    for sub in ("keys", "logs"):
        (d / sub).mkdir(exist_ok=True)
    os.chmod(d / "keys", 0o700)
    up_json = d / "up.json"
    up_json.unlink(missing_ok=True)
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    children: list[SupervisedCommand] = []
    with _services(dataclasses.replace(opts, data_dir=d)) as svc:
        pg, mq, chain = svc["pg"], svc["mq"], svc["chain"]
        say(f"PostgreSQL {redact_url(pg.dsn)}")
        say(f"Mosquitto  {mq.url}")
        operator = _operator_key(d / "keys")
        asyncio.run(_prepare_database(pg.dsn))
        config_path = d / "config.toml"
        chain_settings = _chain_settings(opts, chain, d / "keys", config_path)
        say(f"chain      {redact_url(chain_settings.rpc_url)} (chain id {chain_settings.chain_id})")
        http_port = svc["http_port"]
        ingest_password = _secret(d / "keys" / "mqtt-ingest.password")
        admin_password = _secret(d / "keys" / "mqtt-admin.password")
        ingest_log = d / "logs" / "ingest.log"
        gate = DeviceGate(BrokerAdmin(mq.url, ADMIN_USER, admin_password), ingest_log)
        gate.close([])  # the broker started with the service logins only
        logins = BrokerLogins(mq, pg.dsn, ingest_password, admin_password, gate)
        logins.refresh(force=True)
        settings = Settings(
            database_url=pg.dsn,
            mqtt_url=mq.url,
            mqtt_username=INGEST_USER,
            mqtt_password=ingest_password,
            mqtt_device_logins=1,
            mqtt_admin_username=ADMIN_USER,
            mqtt_admin_password=admin_password,
            operator_key_file=str(d / "keys" / "operator.skey"),
            log_origin=operator.name,
            anchor_period_s=max(1, round(opts.anchor_period_s)),
            anchor_recheck_ms=max(1, round(opts.anchor_recheck_s * 1000)),
            chains=(chain_settings,),
            witnesses=tuple(WitnessSettings(url, vkey) for url, vkey in opts.witnesses),
            witness_quorum=opts.witness_quorum,
            witness_anchor_quorum=int(opts.witness_anchor_quorum),
            witness_mode=opts.witness_mode,
        )
        # It holds the ingestors' broker password: owner-only, like the keys.
        write_private_file(config_path, settings_to_toml(settings).encode())
        token_file = opts.operator_token_file or d / "keys" / "operator.token"
        asyncio.run(_operator_token(pg.dsn, token_file))
        env = {k: v for k, v in os.environ.items() if not k.startswith("CITYANCHOR_")}
        flags = ["--config", str(config_path)]
        # JSON lines in DATA_DIR/logs/NAME.log (anchor.host.logs), rotated by _rotate_logs.
        json_logs = ["--log-format", "json"]
        logs, run = d / "logs", d / "run"
        run.mkdir(exist_ok=True)
        children = [
            SupervisedCommand(
                "ingest",
                [*json_logs, "ingest", *flags, "--workers", str(opts.workers)],
                env,
                logs,
                run,
            ),
            SupervisedCommand(
                "anchor",
                [*json_logs, "anchor", "loop", *flags, "--period", f"{opts.anchor_period_s}s"],
                env,
                logs,
                run,
            ),
            SupervisedCommand(
                "api", [*json_logs, "api", *flags, "--port", str(http_port)], env, logs, run
            ),
        ]
        try:
            size_before = ingest_log.stat().st_size if ingest_log.exists() else 0
            for child in children:
                child.start()
            _wait_for(
                lambda: ingest_log.read_bytes()[size_before:].count(SUBSCRIBED) >= opts.workers,
                60,
                "the ingestor",
                lambda: stop,
            )
            _wait_for(gate.poll, 60, "the broker's device gate", lambda: stop)
            http = f"http://127.0.0.1:{http_port}"
            _wait_for(lambda: _http_ok(http + "/healthz"), 60, "the API", lambda: stop)
            doc = {
                "mqtt": mq.url,
                "http": http,
                # An external RPC URL may carry an API key: up.json is world-readable.
                "rpc": redact_url(chain_settings.rpc_url),
                "chain_id": chain_settings.chain_id,
                "contract": chain_settings.contract,
                "operator_vkey": operator.verifier.vkey(),
                "token_file": str(token_file),
                # Added for issue 13: the witnesses asked for cosignatures (empty: none).
                "witnesses": [{"url": redact_url(u), "vkey": k} for u, k in opts.witnesses],
                "witness_quorum": opts.witness_quorum,
                # Added for issue 14: the settings file every command can be pointed at
                # (--config FILE, or CITYANCHOR_CONFIG=FILE); it is 0600 (it holds passwords).
                "config": str(config_path),
            }
            write_public_file(up_json, (json.dumps(doc, indent=2) + "\n").encode())
            ready.append(True)
            say(f"ready: {up_json}")
            say(f"API {http}   explorer {http}/explorer   MQTT {mq.url}")
            say(
                "single-machine mode: every port listens on 127.0.0.1 only, without TLS; "
                "for a fleet see docker/README.md"
            )
            servers = [
                SupervisedServer("PostgreSQL", pg),
                SupervisedServer("Mosquitto", mq, before_start=logins.before_restart),
            ]
            if chain is not None:
                servers.append(SupervisedServer("chain", chain))
            next_rotation = 0.0
            while not stop:
                time.sleep(0.2)
                if time.monotonic() >= next_rotation and gate.is_open:
                    # Not while the gate waits for the ingestor's subscription in its log.
                    next_rotation = time.monotonic() + _ROTATE_EVERY_S
                    _rotate_logs(logs, opts)
                # Servers first: a child that died with its server restarts against a live one.
                for server in servers:
                    server.check()
                logins.refresh()
                gate.poll()
                for child in children:
                    child.check()
        except _StopRequested as exc:
            say(f"stop requested while waiting for {exc}")
        finally:
            up_json.unlink(missing_ok=True)
            # With the database or the broker dead the ingestor cannot drain (it could neither
            # seal nor acknowledge): what it holds is unacknowledged and will be redelivered,
            # so waiting for it only delays the stop (33 s, seen in issue 11).
            drainable = pg.running and mq.running
            grace = _STOP_GRACE_S if drainable else _STOP_GRACE_DEAD_S
            say(
                "stopping (the ingestor drains first: nothing acknowledged is lost)"
                if drainable
                else "stopping (database or broker down: nothing to drain into)"
            )
            for child in children:  # all at once, then wait for all
                child.child.terminate()
            deadline = time.monotonic() + grace
            for child in children:
                child.child.wait_or_kill(deadline)
                child.pid_path.unlink(missing_ok=True)
    say("stopped")
    return 0
