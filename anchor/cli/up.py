"""``cityanchor up``: the whole service on one machine, on embedded defaults.

Starts and supervises, in one command: a private PostgreSQL (initdb on first run), a private
Mosquitto, a local EVM chain (anvil, its state kept in the data dir) with the AnchorRegistry
deployed, the ingestor(s), the anchoring loop and the API. Everything lives in ``--data-dir``, so
stopping and starting again keeps readings, keys, the log and the chain state. When every part is
ready it writes ``DATA_DIR/up.json`` (DESIGN.md "Interfaces") and removes it on shutdown.
Ctrl-C / SIGTERM stops the children first (each drains: nothing acknowledged is lost), then the
servers; when the database or the broker is dead there is nothing to drain into, and the
children get 3 s instead of 20 s.

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
``up``
on the data dir stops whatever is still running there before it starts anything: PostgreSQL by
its ``postmaster.pid``, Mosquitto and anvil by the data-dir paths on their command lines, the
``cityanchor`` children by ``DATA_DIR/run/*.pid``. It then reuses the ports recorded in
``ports.json`` (PostgreSQL, MQTT, chain and HTTP), waiting up to 10 s for one to be released
before it gives up on it, so devices, clients and the chain state keep their addresses, and
only one chain node ever runs on ``chain/state.json``.

**Devices are admitted only once an ingestor is subscribed** (issue 11). Mosquitto 2.0.11 does
not restore a ``$share`` subscription from its persistence database, even after a clean stop
(tested: ``tests/integration/test_up_recovery.py``), and a reading published while no
ingestor is subscribed gets PUBACK 0x10 "no matching subscribers" (a success code: the device
deletes it) and is dropped. So every broker start (``up``'s own, a supervised restart after a
crash, a restart to reload logins) writes the device logins *disabled* into the
dynamic-security configuration; devices are refused (CONNACK 0x87) and keep their readings;
as soon as the ingestor's log shows its subscription on the new broker, ``up`` enables them
(``enableClient`` over ``$CONTROL``).

**The broker saves its database once a second** (``autosave_interval 1``, issue 11), whatever
its backlog: a crash loses at most the last second or two of what it PUBACKed and had not yet
delivered to an ingestor (devices on the SDK resend those until the service's acknowledgement),
and replays at most that much already sealed. Saving on every change (``autosave_on_changes``,
the default before) rewrites the whole database for every reading queued, which costs in
proportion to the backlog exactly when the ingestors are behind: measured in
``bench/broker_persistence.py``, and :func:`broker_settings` for the rest.

PostgreSQL asks every client for a password (see :class:`anchor.local.PostgresServer`); the
services connect as its non-superuser role ``cityanchor``, whose password is in
``DATA_DIR/postgres/service.password`` and, inside the DSN, in ``DATA_DIR/config.toml`` (both
0600). A data dir from a version that used ``trust`` authentication is upgraded on start.
Nothing ``up`` prints, logs or writes to ``up.json`` carries a password (anchor.host.redact).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import secrets
import signal
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from anchor.broker.logins import (
    ADMIN_USER,
    INGEST_USER,
    BrokerAdmin,
    BrokerError,
    DeviceLogin,
    dynsec_config,
)
from anchor.checkpoint import NoteSigner, generate_note_key
from anchor.errors import AnchorError, Reason, UsageError
from anchor.host.config import ChainSettings, Settings, settings_to_toml
from anchor.host.files import write_private_file, write_public_file
from anchor.host.lifetime import RestartBackoff, pid_alive, processes_with_arg, stop_pids
from anchor.host.redact import redact_text, redact_url
from anchor.host.supervisor import ChildProcess
from anchor.local import (
    AnvilNode,
    MosquittoServer,
    PostgresServer,
    free_port,
    port_free,
    start_on_stable_port,
)
from anchor.password_hashes import mosquitto_password_hash

__all__ = ["BrokerSettings", "UpOptions", "broker_settings", "run_up"]

log = logging.getLogger("anchor.cli.up")

LOCAL_CHAIN_ID = 31337
ORIGIN = "local.cityanchor.example/log"


@dataclass(frozen=True, slots=True)
class UpOptions:
    data_dir: Path
    mqtt_port: int | None = None
    http_port: int | None = None
    chain_port: int | None = None
    rpc_url: str | None = None  # an external chain instead of the local anvil
    chain_id: int | None = None
    chain_key_file: str | None = None
    anchor_period_s: float = 60.0
    operator_token_file: Path | None = None
    workers: int = 1
    anchor_recheck_s: float = 30.0  # re-check of recent anchors against the chain (reorgs)
    # Mosquitto saves its database every this many seconds (see broker_settings) ...
    broker_autosave_interval_s: int = 1
    # ... or, when set, after this many changes instead (each queued message is one): an opt-in
    # whose every save rewrites the whole backlog (docs/operator-guide.md).
    broker_autosave_changes: int | None = None
    # Messages Mosquitto queues for the ingestors' session; beyond it it DROPS what it PUBACKed.
    broker_max_queued_messages: int = 1_000_000

    def __post_init__(self) -> None:
        if self.broker_autosave_interval_s < 1:
            raise UsageError("--broker-autosave-interval must be at least 1 second")
        if self.broker_autosave_changes is not None and self.broker_autosave_changes < 1:
            raise UsageError("--broker-autosave-changes must be at least 1")
        if self.broker_max_queued_messages < 1:
            raise UsageError("--broker-max-queued must be at least 1")


class BrokerSettings(TypedDict):
    """Keyword arguments of :class:`anchor.local.MosquittoServer` that ``up`` chooses."""

    autosave_interval: int
    autosave_changes: int | None
    max_queued_messages: int
    session_expiry_cap_h: int


def broker_settings(opts: UpOptions) -> BrokerSettings:
    """The persistence and queue settings of ``up``'s broker (tests take them from here).

    * Persistence: a periodic save every ``broker_autosave_interval_s`` seconds (default 1), a
      bounded cost: at most one rewrite of the database a second however long the ingestors'
      backlog. ``broker_autosave_changes`` N switches to a save after every N changes; every
      queued message is a change, and each save rewrites the whole database, so with a backlog
      of B messages the broker spends O(B) per N readings received: with N = 1 it took 28
      readings/s with 11,000 queued (bench/broker_persistence.py), the spiral of issue 11.
    * ``max_queued_messages``: Mosquitto drops QoS 1 messages it has already PUBACKed once a
      session's queue is full, so the bound is set for long outages (1,000,000, ~0.63 KB of
      broker memory each for 300-byte readings: the bound trades memory for readings kept).
    * ``session_expiry_cap_h`` = the ingestors' own session expiry (24 h); devices hold no
      subscriptions.
    """
    return BrokerSettings(
        autosave_interval=opts.broker_autosave_interval_s,
        autosave_changes=opts.broker_autosave_changes,
        max_queued_messages=opts.broker_max_queued_messages,
        session_expiry_cap_h=24,
    )


EXIT_ALREADY_RUNNING = 2
_STOP_GRACE_S = 20.0  # for the children to drain, when there is something to drain into
_STOP_GRACE_DEAD_S = 3.0


def _say(text: str) -> None:
    print(f"cityanchor up: {text}", flush=True)


class _AlreadyRunning(Exception):
    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


def _lock_data_dir(d: Path) -> int:
    """Take the data dir's lock for the life of this process; return its descriptor.

    ``flock`` rather than a pid file: the kernel drops it when the process ends, even on
    SIGKILL, so a stale file never blocks a restart. O_CLOEXEC (and Popen's close_fds) keep it
    out of the children: a lock inherited by a surviving server would outlive ``up``.
    Raises _AlreadyRunning with the holder's pid as written in the file.
    """
    fd = os.open(d / "up.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise _AlreadyRunning(holder) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class _SupervisedServer:
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
            _say(f"{self.name} died; restarting in {delay:.1f}s")
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
            _say(f"{self.name} restarted (pid {self.server.pid})")


class _Supervised:
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
            _say(f"{self.name} exited ({proc.returncode}); restarting, see {self.log_path}")
            self.restart_at = now + delay
        elif now >= self.restart_at:
            self.restart_at = 0.0
            self.start()

    def stop(self) -> None:
        self.child.stop()


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


async def _device_logins(dsn: str) -> list[DeviceLogin]:
    from anchor.broker.logins import broker_logins
    from anchor.store import Store

    store = await Store.connect(dsn, max_size=1)
    try:
        return await broker_logins(store)
    finally:
        await store.close()


def _service_dynsec(
    devices: list[DeviceLogin], ingest_password: str, admin_password: str
) -> dict[str, Any]:
    """The broker's logins for its next start: the devices' disabled (see :class:`_DeviceGate`)."""
    config = dynsec_config(
        devices,
        ingest_hash=mosquitto_password_hash(ingest_password),
        admin_hash=mosquitto_password_hash(admin_password),
    )
    services = (INGEST_USER, ADMIN_USER)
    config["clients"] = [
        c if c["username"] in services else {**c, "disabled": True} for c in config["clients"]
    ]
    return config


_SUBSCRIBED = (
    b"subscription active"  # what the ingestor logs on its SUBACK (anchor.ingest.ingestor)
)


class _DeviceGate:
    """Keeps devices out of a freshly started broker until an ingestor has subscribed.

    Mosquitto 2.0.11 forgets ``$share`` subscriptions on every restart (it does not restore
    them from its persistence database), and a QoS 1 reading that no subscription matches is
    PUBACKed with 0x10, a success code, and dropped: the reading is lost though the device was
    told it was delivered. Every broker start therefore gets the device logins disabled
    (:func:`_service_dynsec`): a device is refused (CONNACK "not authorized") and keeps its
    readings, retrying. ``close()`` is called before each start; ``poll()`` enables the devices
    once the ingestor's log shows a subscription made after that start.
    """

    def __init__(self, admin: BrokerAdmin, ingest_log: Path) -> None:
        self.admin = admin
        self.ingest_log = ingest_log
        self.devices: list[str] = []
        self.offset: int | None = None  # ingest log size at the broker's start; None: open
        self.closed_at = 0.0

    @property
    def is_open(self) -> bool:
        return self.offset is None

    def close(self, devices: list[str]) -> None:
        self.devices = sorted(devices)
        self.offset = self.ingest_log.stat().st_size if self.ingest_log.exists() else 0
        self.closed_at = time.monotonic()

    def poll(self) -> bool:
        """Open the gate if an ingestor has subscribed since the broker started; True if open."""
        if self.offset is None:
            return True
        try:
            with self.ingest_log.open("rb") as f:
                f.seek(self.offset)
                subscribed = _SUBSCRIBED in f.read()
        except OSError:
            return False
        if not subscribed:
            return False
        if self.devices:
            try:
                answers = self.admin.run(
                    [{"command": "enableClient", "username": d} for d in self.devices]
                )
            except BrokerError as exc:
                log.warning("cannot admit the devices yet (will retry): %s", exc)
                return False
            failed = [a for a in answers if a.get("error")]
            if failed:  # e.g. a device revoked meanwhile: its login is gone, nothing to admit
                log.warning("enableClient failed for %d devices: %s", len(failed), failed[0])
        log.info(
            "an ingestor is subscribed: %d devices admitted to the broker %.1fs after its start",
            len(self.devices),
            time.monotonic() - self.closed_at,
        )
        self.offset = None
        return True


class _BrokerLogins:
    """Keeps the broker's logins in step with the registry.

    The API creates a device's login in the running broker itself (and deletes a revoked
    one), so this is the backstop: every two seconds it deletes the logins of devices no longer
    active, and when the broker lacks a login the registry has (the API could not reach it) it
    restarts the broker from the registry. It also keeps the configuration a broker (re)start
    uses current.
    """

    def __init__(
        self,
        mq: MosquittoServer,
        dsn: str,
        ingest_password: str,
        admin_password: str,
        gate: _DeviceGate,
    ) -> None:
        self.mq, self.dsn, self.gate = mq, dsn, gate
        self.passwords = (ingest_password, admin_password)
        self.admin = BrokerAdmin(mq.url, ADMIN_USER, admin_password)
        # What the running broker holds; it was started with the service logins only.
        self.current: dict[str, DeviceLogin] | None = None
        self.next_check = 0.0

    def before_restart(self) -> None:
        """Before the supervisor starts a dead broker again: close the gate to the devices."""
        self.gate.close(list(self.current or {}))

    def refresh(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self.next_check:
            return
        self.next_check = now + 2.0
        try:
            logins = asyncio.run(_device_logins(self.dsn))
        except AnchorError as exc:
            log.warning("cannot read broker logins from the registry: %s", redact_text(str(exc)))
            return
        desired = {login.device_id: login for login in logins}
        if desired == self.current:
            return
        self.mq.set_dynsec(_service_dynsec(logins, *self.passwords))
        restart = self.current is None and bool(desired)
        if self.current is not None:
            try:
                for gone in sorted(set(self.current) - set(desired)):
                    self.admin.remove_device(gone)
                new = [d for d in desired if self.current.get(d) != desired[d]]
                missing = self.admin.missing(new)
            except BrokerError as exc:
                log.warning("cannot update the broker's logins (will retry): %s", exc)
                return
            if missing:
                log.warning(
                    "the broker lacks the logins of %d devices (e.g. %s): restarting it",
                    len(missing),
                    missing[0],
                )
                restart = True
        if restart:
            # Persistent sessions and queued messages survive (persistence on, clean stop); the
            # ingestors' shared subscription does not: the devices wait at the gate.
            self.mq.stop()
            self.gate.close(list(desired))
            self.mq.start()
        self.current = desired
        log.info("broker logins in step with the registry: %d devices", len(desired))


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


_PORT_WAIT_S = 10.0  # how long a remembered port may take to be released (a server exiting)


def _port_moved(remembered: int) -> None:
    _say(f"port {remembered} is taken by another program: using a new one")


def _http_port(requested: int | None, remembered: int | None) -> int:
    """The API's port: as requested, else last time's (waiting for it a moment), else free."""
    if requested:
        return requested
    if remembered:
        deadline = time.monotonic() + _PORT_WAIT_S
        while not port_free(remembered):
            if time.monotonic() > deadline:
                _say(f"HTTP port {remembered} is taken by another program: using a new one")
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
            _say(f"stopped {pid_file.stem} pid {pid}, left running by an earlier up")
        pid_file.unlink(missing_ok=True)


def _stop_stale_servers(d: Path) -> None:
    """We hold the data dir's lock, so any server still running on it belongs to an ``up`` that
    died without stopping it (SIGKILL): stop them all (SIGTERM first, so the broker saves its
    queue and the chain its state) before starting ours. Never two chains on one state file."""
    _stop_stale_children(d)
    for name, stale in (
        ("Mosquitto", MosquittoServer(d / "mosquitto").stop_stale()),
        ("the chain (anvil)", AnvilNode(d / "chain").stop_stale()),
    ):
        for pid in stale:
            _say(f"stopped {name} pid {pid}, left running by an earlier up")
    pg = PostgresServer(d / "postgres").stop_stale()
    if pg is not None:
        _say(f"stopped PostgreSQL pid {pg}, left running by an earlier up")


@contextlib.contextmanager
def _services(opts: UpOptions) -> Iterator[dict[str, Any]]:
    d = opts.data_dir
    ports_file = d / "ports.json"
    ports: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError):
        ports = {k: int(v) for k, v in json.loads(ports_file.read_text()).items()}
    started: list[Any] = []
    _stop_stale_servers(d)
    try:
        pg = start_on_stable_port(
            lambda port: PostgresServer(d / "postgres", port=port),
            None,
            ports.get("postgres"),
            wait_s=_PORT_WAIT_S,
            on_new_port=_port_moved,
        )
        started.append(pg)
        # Logins required from the start: the ingestors' account now, the devices' as soon as
        # the registry is readable (see _BrokerLogins).
        ingest_password = _secret(d / "keys" / "mqtt-ingest.password")
        admin_password = _secret(d / "keys" / "mqtt-admin.password")
        mq = start_on_stable_port(
            lambda port: MosquittoServer(
                d / "mosquitto",
                port=port,
                dynsec=_service_dynsec([], ingest_password, admin_password),
                die_with_parent=True,
                **broker_settings(opts),
            ),
            opts.mqtt_port,
            ports.get("mqtt"),
            wait_s=_PORT_WAIT_S,
            on_new_port=_port_moved,
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
                wait_s=_PORT_WAIT_S,
                on_new_port=_port_moved,
            )
            started.append(chain)
            ports["chain"] = chain.port
        ports["http"] = _http_port(opts.http_port, ports.get("http"))
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
        settings = ChainSettings(
            name="local", rpc_url=chain.rpc_url, chain_id=LOCAL_CHAIN_ID, key_file=str(key_file)
        )
    else:
        if opts.chain_id is None or not opts.chain_key_file:
            raise UsageError("--rpc-url needs --chain-id and --chain-key-file")
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
            _say(f"no contract at {contract} on this chain any more: deploying a new one")
            contract = ""
    if not contract:
        contract = deploy(dataclasses.replace(settings, key_file=str(deployer)))
        _say(f"AnchorRegistry deployed at {contract}")
    return dataclasses.replace(settings, contract=contract)


def run_up(opts: UpOptions) -> int:
    """Run everything until SIGINT/SIGTERM; returns an exit code."""
    d = opts.data_dir.absolute()
    d.mkdir(parents=True, exist_ok=True)
    try:
        lock_fd = _lock_data_dir(d)
    except _AlreadyRunning as exc:
        # Before anything else: a second `up` must not touch the first one's servers or files.
        print(
            f"cityanchor up: already running, pid {exc.holder} (data dir {d}, lock "
            f"{d / 'up.lock'}); stop it first, or use another --data-dir",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_ALREADY_RUNNING
    try:
        return _run_locked(opts, d)
    finally:
        os.close(lock_fd)


def _run_locked(opts: UpOptions, d: Path) -> int:
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
    children: list[_Supervised] = []
    with _services(dataclasses.replace(opts, data_dir=d)) as svc:
        pg, mq, chain = svc["pg"], svc["mq"], svc["chain"]
        _say(f"PostgreSQL {redact_url(pg.dsn)}")
        _say(f"Mosquitto  {mq.url}")
        operator = _operator_key(d / "keys")
        asyncio.run(_prepare_database(pg.dsn))
        config_path = d / "config.toml"
        chain_settings = _chain_settings(opts, chain, d / "keys", config_path)
        _say(
            f"chain      {redact_url(chain_settings.rpc_url)} (chain id {chain_settings.chain_id})"
        )
        http_port = svc["http_port"]
        ingest_password = _secret(d / "keys" / "mqtt-ingest.password")
        admin_password = _secret(d / "keys" / "mqtt-admin.password")
        ingest_log = d / "logs" / "ingest.log"
        gate = _DeviceGate(BrokerAdmin(mq.url, ADMIN_USER, admin_password), ingest_log)
        gate.close([])  # the broker started with the service logins only
        logins = _BrokerLogins(mq, pg.dsn, ingest_password, admin_password, gate)
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
        )
        # It holds the ingestors' broker password: owner-only, like the keys.
        write_private_file(config_path, settings_to_toml(settings).encode())
        token_file = opts.operator_token_file or d / "keys" / "operator.token"
        asyncio.run(_operator_token(pg.dsn, token_file))
        env = {k: v for k, v in os.environ.items() if not k.startswith("CITYANCHOR_")}
        flags = ["--config", str(config_path)]
        logs, run = d / "logs", d / "run"
        run.mkdir(exist_ok=True)
        children = [
            _Supervised(
                "ingest", ["ingest", *flags, "--workers", str(opts.workers)], env, logs, run
            ),
            _Supervised(
                "anchor",
                ["anchor", "loop", *flags, "--period", f"{opts.anchor_period_s}s"],
                env,
                logs,
                run,
            ),
            _Supervised("api", ["api", *flags, "--port", str(http_port)], env, logs, run),
        ]
        try:
            size_before = ingest_log.stat().st_size if ingest_log.exists() else 0
            for child in children:
                child.start()
            _wait_for(
                lambda: ingest_log.read_bytes()[size_before:].count(_SUBSCRIBED) >= opts.workers,
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
            }
            write_public_file(up_json, (json.dumps(doc, indent=2) + "\n").encode())
            _say(f"ready: {up_json}")
            _say(f"API {http}   explorer {http}/explorer   MQTT {mq.url}")
            servers = [
                _SupervisedServer("PostgreSQL", pg),
                _SupervisedServer("Mosquitto", mq, before_start=logins.before_restart),
            ]
            if chain is not None:
                servers.append(_SupervisedServer("chain", chain))
            while not stop:
                time.sleep(0.2)
                # Servers first: a child that died with its server restarts against a live one.
                for server in servers:
                    server.check()
                logins.refresh()
                gate.poll()
                for child in children:
                    child.check()
        except _StopRequested as exc:
            _say(f"stop requested while waiting for {exc}")
        finally:
            up_json.unlink(missing_ok=True)
            # With the database or the broker dead the ingestor cannot drain (it could neither
            # seal nor acknowledge): what it holds is unacknowledged and will be redelivered,
            # so waiting for it only delays the stop (33 s, seen in issue 11).
            drainable = pg.running and mq.running
            grace = _STOP_GRACE_S if drainable else _STOP_GRACE_DEAD_S
            _say(
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
    _say("stopped")
    return 0
