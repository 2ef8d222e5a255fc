"""Helpers for benches that run the whole system: ``cityanchor up`` in its own process group on
a temporary data dir, its processes found through ``/proc``, devices registered through
``POST /v1/devices`` with their own MQTT logins, and a load generator (plain paho or the
project's SDK publisher). Used by ``bench/faults.py`` and ``bench/soak.py``.

Everything stops by itself: every wait has a timeout, and :meth:`Up.cleanup` kills ``up``'s
process group and then every process that still refers to the data dir (the servers run in
sessions of their own and would survive a group kill as orphans).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anchor.broker.client import create_client, parse_mqtt_url
from anchor.keys import PrivateKey
from devices.signer import DeviceSigner

DISTRICT = "faults"
KIND = "iot.air_quality"


# ------------------------------------------------------------------------------------ /proc


def proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, cmdline with spaces) of every live, non-zombie process."""
    table: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            continue
        table[int(entry.name)] = (int(fields[1]), cmd.strip())
    return table


# Top-level flags of `cityanchor` that take a value (they may come before the subcommand).
_VALUED_FLAGS = ("--log-format", "--log-file", "--log-max-bytes", "--log-backups")


def subcommand_of(cmdline: str) -> str | None:
    """The subcommand of a ``python -m anchor [global flags] SUBCOMMAND ...`` command line."""
    words = cmdline.split()
    try:
        at = next(i for i in range(len(words) - 1) if words[i : i + 2] == ["-m", "anchor"])
    except StopIteration:
        return None
    rest = iter(words[at + 2 :])
    for word in rest:
        if word in _VALUED_FLAGS:
            next(rest, None)
        elif not word.startswith("-"):
            return word
    return None


def descendants(root: int, table: dict[int, tuple[int, str]] | None = None) -> list[int]:
    table = table if table is not None else proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kb(pid: int) -> int:
    """Proportional set size: shared pages (PostgreSQL's shared buffers, libraries) divided
    among the processes that map them, so that a sum over processes counts them once."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_gib = int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem_gib:.0f} GiB, Linux {os.uname().release}, "
        f"Python {sys.version.split()[0]}"
    )


# ------------------------------------------------------------------------------------ up


def http_json(
    method: str, url: str, body: Any = None, token: str | None = None, timeout: float = 10
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw or b"null")
        except ValueError:
            return exc.code, raw.decode("utf-8", "replace")
    except (OSError, ValueError) as exc:
        return 0, str(exc)


def rpc(url: str, method: str, params: list[Any] | None = None, timeout: float = 10) -> Any:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}
    status, doc = http_json("POST", url, body, timeout=timeout)
    if status != 200 or not isinstance(doc, dict) or "error" in doc:
        raise RuntimeError(f"{method}: {status} {doc}")
    return doc.get("result")


class Up:
    """``cityanchor up --data-dir D --anchor-period P`` in its own process group."""

    def __init__(self, data_dir: Path, *, anchor_period: str = "5s", log_name: str = "up.log"):
        self.data_dir = data_dir
        self.anchor_period = anchor_period
        self.log_path = data_dir.parent / log_name
        self.proc: subprocess.Popen[bytes] | None = None
        self.doc: dict[str, Any] = {}
        self.starts = 0

    @classmethod
    def fresh(cls, prefix: str, **kw: Any) -> Up:
        # Short (unix socket paths are limited) and reachable by the servers' own users.
        base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        os.chmod(base, 0o711)
        data = base / "d"
        data.mkdir()
        os.chmod(data, 0o711)
        return cls(data, **kw)

    def start(self, timeout: float = 120) -> dict[str, Any]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CITYANCHOR_")}
        started = time.time()
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "anchor", "up", "--data-dir", str(self.data_dir),
                 "--anchor-period", self.anchor_period],
                env=env, stdout=out, stderr=out, start_new_session=True,
            )  # fmt: skip
        self.starts += 1
        up_json = self.data_dir / "up.json"
        deadline = time.monotonic() + timeout
        while True:
            # A stale up.json (left by a SIGKILLed up) is older than this start.
            with contextlib.suppress(OSError, ValueError):
                if up_json.stat().st_mtime >= started - 1:
                    self.doc = json.loads(up_json.read_text())
                    return self.doc
            if self.proc.poll() is not None:
                raise RuntimeError(f"up exited {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"up not ready in {timeout:.0f}s: {self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, n: int = 3000) -> str:
        """The last ``n`` characters of up's log, from a line start (a cut line misleads)."""
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace")
            tail = text[-n:]
            if len(text) > n and "\n" in tail:
                tail = tail.split("\n", 1)[1]
            return tail
        return ""

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def stop(self, timeout: float = 90) -> float:
        """SIGTERM and wait; returns the seconds it took (SIGKILL of the group after timeout)."""
        t0 = time.monotonic()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill_group()
        return time.monotonic() - t0

    def kill_group(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)

    def child(self, subcommand: str) -> int | None:
        """The pid of up's ``cityanchor SUBCOMMAND`` child (ingest, anchor, api)."""
        if self.pid is None:
            return None
        table = proc_table()
        for pid in descendants(self.pid, table):
            if table[pid][0] == self.pid and subcommand_of(table[pid][1]) == subcommand:
                return pid
        return None

    def postmaster(self) -> int | None:
        try:
            pid = int((self.data_dir / "postgres/data/postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if pid in proc_table() else None

    def server_pid(self, what: str) -> int | None:
        """mosquitto or anvil started for this data dir, found by its command line."""
        needle = {
            "mosquitto": str(self.data_dir / "mosquitto" / "mosquitto.conf"),
            "anvil": str(self.data_dir / "chain" / "state.json"),
        }[what]
        for pid, (_, cmd) in proc_table().items():
            if needle in cmd.split():
                return pid
        return None

    def processes(self) -> dict[int, str]:
        """Every process of this system: up, its descendants, and the servers (own sessions)."""
        table = proc_table()
        pids: dict[int, str] = {}
        roots = [
            p
            for p in (
                self.pid,
                self.postmaster(),
                self.server_pid("mosquitto"),
                self.server_pid("anvil"),
            )
            if p
        ]
        for root in roots:
            for pid in [root, *descendants(root, table)]:
                if pid in table:
                    pids[pid] = table[pid][1]
        return pids

    def leftovers(self) -> list[int]:
        """Processes that refer to the data dir by command line or working directory."""
        out = []
        needle = str(self.data_dir)
        for pid, (_, cmd) in proc_table().items():
            if pid == os.getpid():
                continue
            cwd = ""
            with contextlib.suppress(OSError):
                cwd = os.readlink(f"/proc/{pid}/cwd")
            if needle in cmd or cwd.startswith(needle):
                out.append(pid)
        return out

    def cleanup(self, *, remove: bool = True) -> list[int]:
        """Stop everything for good: SIGTERM up (bounded), SIGKILL its group, then SIGKILL every
        process still referring to the data dir. Returns the pids killed in that last step."""
        if self.pid is not None:
            self.stop(timeout=30)
        self.kill_group()
        killed = []
        for _ in range(3):
            left = self.leftovers()
            if not left:
                break
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.5)
        if remove:
            shutil.rmtree(self.data_dir.parent, ignore_errors=True)
        return sorted(set(killed))

    # -- service access ------------------------------------------------------------------

    @property
    def dsn(self) -> str:
        cfg = tomllib.loads((self.data_dir / "config.toml").read_text())
        dsn = cfg.get("database_url") or cfg.get("database", {}).get("url")
        if not dsn:
            raise RuntimeError("no database_url in config.toml")
        return str(dsn)

    @property
    def token(self) -> str:
        return Path(self.doc["token_file"]).read_text().strip()


class Db:
    """Short queries against up's PostgreSQL (a new connection each time: PostgreSQL may be
    killed under us; a failed query returns None)."""

    def __init__(self, dsn_source: Callable[[], str]) -> None:
        self.dsn_source = dsn_source

    def fetch(self, sql: str, *args: Any, timeout: float = 20) -> list[Any] | None:
        import asyncpg

        async def go() -> list[Any]:
            con = await asyncpg.connect(self.dsn_source(), timeout=5)
            try:
                return list(await con.fetch(sql, *args, timeout=timeout))
            finally:
                await con.close()

        try:
            return asyncio.run(go())
        except Exception:
            return None


# ------------------------------------------------------------------------------------ load


@dataclass(slots=True)
class Rec:
    """One reading as the device saw it."""

    device_id: str
    seq: int
    envelope: bytes
    signed_at: float  # time.time()
    row: str
    code: int | None = None  # PUBACK reason code (paho mode)
    acked: bool = False  # the device let go of it (PUBACK, or the SDK deleted it)
    outbox_id: int = 0


@dataclass(slots=True)
class Device:
    device_id: str
    signer: DeviceSigner
    username: str
    password: str
    jwk: dict[str, Any]


def register_devices(up: Up, n: int, prefix: str = "flt") -> list[Device]:
    devices = []
    for i in range(n):
        signer = DeviceSigner(f"{prefix}-{i:04d}", PrivateKey.generate())
        jwk = signer.key.public_key.to_jwk()
        status, doc = http_json(
            "POST",
            up.doc["http"] + "/v1/devices",
            {"device_id": signer.device_id, "public_key_jwk": jwk, "district": DISTRICT,
             "kind": KIND},
            up.token,
        )  # fmt: skip
        if status != 201:
            raise RuntimeError(f"registering {signer.device_id}: {status} {doc}")
        devices.append(Device(signer.device_id, signer, doc["mqtt_username"],
                              doc["mqtt_password"], jwk))  # fmt: skip
    return devices


def sdk_features() -> dict[str, Any]:
    """What the project's SDK publisher offers, checked at run time: whether it implements the
    end-to-end acknowledgement of issue 11 (acks on ``city/{district}/{device_id}/ack``) and
    which keyword arguments switch it on. Works before and after that protocol lands."""
    import devices.publisher as pub

    src = inspect.getsource(pub)
    params = inspect.signature(pub.Publisher.__init__).parameters
    kwargs: dict[str, Any] = {}
    for name in ("district",):
        if name in params:
            kwargs[name] = DISTRICT
    for name in ("end_to_end_ack", "e2e_ack", "ack", "ack_mode", "wait_for_ack", "await_ack",
                 "require_ack", "use_ack"):  # fmt: skip
        if name in params:
            default = params[name].default
            kwargs[name] = True if isinstance(default, bool) or default is None else default
    ack = "/ack" in src or hasattr(pub, "ack_topic") or any("ack" in k for k in kwargs)
    return {"ack_protocol": bool(ack), "kwargs": kwargs}


class Fleet:
    """Devices publishing signed readings at QoS 1 at a steady total rate, from threads of this
    process, on loopback only.

    ``mode="paho"``: a plain paho v5 client per device (client id = device id, persistent
    session, auto-reconnect; paho keeps unacknowledged messages and resends them); a reading
    counts as acknowledged once PUBACKed with a success code (< 0x80, 0x10 included).
    ``mode="sdk"``: the project's :class:`devices.publisher.Publisher` with an on-disk
    :class:`~devices.publisher.Outbox` per device; a reading counts as acknowledged once the
    SDK deleted it from its outbox (after a PUBACK today; after the end-to-end ack once that
    protocol exists).
    """

    def __init__(self, mqtt_url: str, devices: list[Device], *, mode: str, rate: float,
                 workdir: Path, sdk_kwargs: dict[str, Any] | None = None,
                 record: bool = True) -> None:  # fmt: skip
        if mode not in ("paho", "sdk"):
            raise ValueError(mode)
        self.url = mqtt_url
        self.devices = devices
        self.mode = mode
        self.rate = rate
        self.workdir = workdir
        self.sdk_kwargs = dict(sdk_kwargs or {})
        # record=False (the soak): counters only, no per-reading memory in this process.
        self.record = record
        self.published = 0
        self.row = "warmup"
        self.recs: dict[tuple[str, int], Rec] = {}
        self.codes: dict[str, Counter[int]] = {}
        self.errors: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._clients: list[Any] = []
        self._outboxes: list[Any] = []
        self._mid: list[dict[int, tuple[str, int]]] = []
        self._early: list[dict[int, int]] = []

    # -- set-up ----------------------------------------------------------------------------

    def connect(self) -> None:
        target = parse_mqtt_url(self.url)
        for i, dev in enumerate(self.devices):
            if self.mode == "paho":
                self._mid.append({})
                self._early.append({})
                # A plain paho v5 client (the factory only configures it): persistent session.
                c = create_client(target, client_id=dev.device_id, username=dev.username,
                                  password=dev.password, keepalive_s=60, clean_start=False,
                                  session_expiry_s=3600, reconnect_max_s=5,
                                  max_inflight=100)  # fmt: skip
                c.on_publish = self._paho_puback(i)
                c.loop_start()
                self._clients.append(c)
            else:
                from devices.publisher import Outbox, Publisher

                box = Outbox(self.workdir / f"{dev.device_id}.outbox")
                p = Publisher(box, client_id=dev.device_id, mqtt_url=self.url,
                              username=dev.username, password=dev.password,
                              reconnect_max_s=5, **self.sdk_kwargs)  # fmt: skip
                self._hook_sdk_puback(p)
                p.start()
                self._outboxes.append(box)
                self._clients.append(p)

    def _paho_puback(self, i: int) -> Callable[..., None]:
        def on_publish(client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
            code = int(rc.value)
            with self._lock:
                if not self.record:
                    self.codes.setdefault(self.row, Counter())[code] += 1
                    return
                key = self._mid[i].pop(mid, None)
                if key is None:
                    self._early[i][mid] = code
                    return
                self._settle_paho(key, code)

        return on_publish

    def _settle_paho(self, key: tuple[str, int], code: int) -> None:
        rec = self.recs[key]
        rec.code = code
        rec.acked = code < 0x80
        self.codes.setdefault(rec.row, Counter())[code] += 1

    def _hook_sdk_puback(self, p: Any) -> None:
        """Count the PUBACK reason codes the SDK receives (per row), then hand them on."""
        client = getattr(p, "_client", None)
        original = getattr(client, "on_publish", None)
        if client is None or original is None:
            return

        def on_publish(*args: Any) -> None:
            with contextlib.suppress(Exception):
                code = int(args[3].value)
                with self._lock:
                    self.codes.setdefault(self.row, Counter())[code] += 1
            original(*args)

        client.on_publish = on_publish

    # -- the load --------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fleet", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # Publish whatever is due every few milliseconds: steady at any rate, no burst after a
        # stall (a device that fell more than 2 s behind drops the backlog of the schedule).
        n = 0
        t0 = time.monotonic()
        while not self._stop.is_set():
            due = int((time.monotonic() - t0) * self.rate)
            if due - n > 2 * self.rate:
                n = due
            while n < due and not self._stop.is_set():
                i = n % len(self.devices)
                try:
                    self._publish_one(i)
                except Exception as exc:  # a full outbox, a closed client: count, keep going
                    self.errors[type(exc).__name__ + ":" + str(getattr(exc, "reason", ""))] += 1
                n += 1
            time.sleep(0.005)

    def _publish_one(self, i: int) -> None:
        dev = self.devices[i]
        values = {"pm2_5": round(5 + (dev.signer.seq % 100) / 10, 1)}
        now = time.time()
        self.published += 1
        if self.mode == "paho":
            raw = dev.signer.sign(KIND, values)
            if not self.record:
                self._clients[i].publish(f"city/{DISTRICT}/{dev.device_id}/readings", raw, qos=1)
                return
            key = (dev.device_id, dev.signer.seq)
            with self._lock:
                self.recs[key] = Rec(dev.device_id, key[1], raw, now, self.row)
            info = self._clients[i].publish(f"city/{DISTRICT}/{dev.device_id}/readings",
                                            raw, qos=1)  # fmt: skip
            with self._lock:
                code = self._early[i].pop(info.mid, None)
                if code is None:
                    self._mid[i][info.mid] = key
                else:
                    self._settle_paho(key, code)
        else:
            q = self._clients[i].publish_reading(dev.signer, DISTRICT, KIND, values)
            if not self.record:
                return
            with self._lock:
                self.recs[(dev.device_id, q.seq)] = Rec(
                    dev.device_id, q.seq, bytes(q.envelope), now, self.row, outbox_id=q.outbox_id
                )

    def stop_load(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def drain(self, timeout: float) -> None:
        """Give the devices up to ``timeout`` s to get everything acknowledged."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.unacked() > 0:
            time.sleep(0.5)

    def refresh_acks(self) -> None:
        """SDK mode: a reading is acknowledged once its row left the outbox (not rejected)."""
        if self.mode != "sdk":
            return
        held: dict[str, set[int]] = {}
        for dev, box in zip(self.devices, self._outboxes, strict=True):
            with contextlib.suppress(Exception):
                ids = {e.id for e in box.pending(10**7)}
                ids |= {e.id for e in box.rejected(10**7)}
                held[dev.device_id] = ids
        with self._lock:
            for rec in self.recs.values():
                if rec.device_id in held:
                    rec.acked = rec.outbox_id not in held[rec.device_id]

    def unacked(self) -> int:
        if self.mode == "sdk":
            return sum(box.count() for box in self._outboxes)
        with self._lock:
            return sum(1 for r in self.recs.values() if not r.acked)

    def close(self) -> None:
        self.stop_load()
        for c in self._clients:
            with contextlib.suppress(Exception):
                if self.mode == "paho":
                    c.disconnect()
                    c.loop_stop()
                else:
                    c.close(timeout=5)
        self.refresh_acks()
        for box in self._outboxes:
            with contextlib.suppress(Exception):
                box.close()


@dataclass(slots=True)
class Sample:
    t: float
    values: dict[str, Any] = field(default_factory=dict)
