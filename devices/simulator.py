"""A fleet simulator: many IoT and 5G devices publishing signed readings, with chosen faults.

``cityanchor simulate --devices 500 --rate 5000/s --duration 60s --district nanshan`` builds a
fleet (:func:`make_fleet`), and :func:`run_simulation` publishes its readings over MQTT v5 at
QoS 1 at the target rate, tracking every PUBACK, then returns an exact
:class:`SimulationReport` that an ingest test can compare with the store and the quarantine.

Connections. A real device has its own MQTT connection and its own :class:`~devices.publisher.
Publisher` with an on-disk outbox; a simulated fleet of 500 shares a few paho clients
(``SimulationConfig.connections``, default 4) and keeps everything in memory, because 500 TCP
connections and 500 fsyncing outboxes would measure the simulator, not the ingestor. Each
device is pinned to one connection, so its messages reach the broker in the order it sent them
(MQTT keeps order per connection and topic).

With per-device broker logins (``SimulationConfig.logins``, ``--register-via``) every device
is a real device: its own :class:`~devices.publisher.Publisher` and on-disk
:class:`~devices.publisher.Outbox` (under ``outbox_dir``, else a temporary directory), so a
message counts as ``acked`` only when the service's acknowledgement (issue 11) settled it --
durable, or refused for good -- never on a PUBACK, which 0x10 "No matching subscribers" makes
meaningless. A message the broker refuses for good (0x87) is ``failed``.

Faults (``SimulationConfig.faults``: reason -> proportion of all messages sent). The names are
the quarantine reason codes the ingestor is expected to record:

* ``bad_signature``  the device's next reading with one signature byte flipped;
* ``oversized``      the device's next reading with a large extra ``padding`` value: a valid
  signed envelope, but larger than :data:`~anchor.envelope.MAX_ENVELOPE_BYTES` (16 KiB);
* ``malformed``      random bytes (starting with 0xff, so neither COSE nor JWS);
* ``non_canonical``  the device's next reading, validly signed, re-spelt as a third party can
  without the key: COSE with ``{99: "relay"}`` in its unsigned unprotected header, JWS with its
  signature padded ``==`` (the wire format accepts only the canonical spelling);
* ``topic_mismatch`` the device's next reading, validly signed, published under another
  device's topic;
* ``unknown_device`` a valid reading of a device that is not in the fleet (``ghost-...``, never
  in :func:`fleet_registration`);
* ``replayed_seq``   an envelope already acknowledged by the broker, re-sent byte for byte on
  the same topic and connection;
* ``seq_conflict``   a seq that an acknowledged envelope already used, re-signed by its device
  (same ``prev``) with different values (and ``ts`` one ms later).

Exact accounting. The faults never touch a fleet device's real chain: the first five sign with
a throw-away copy of the device's state, ``seq_conflict`` re-signs an old seq, ``replayed_seq``
signs nothing, and ``unknown_device`` uses the ghost's own chain. So the readings that must be
stored are exactly the good ones (sent unmodified, for the first time), each device's good
seqs are 1, 2, 3, ... without gaps, and ``expected_good + sum(by_fault) == sent``. A fault that
needs an acknowledged envelope (``replayed_seq``, ``seq_conflict``) waits until one exists.
Proportions are applied with integer accumulators, not dice: after ``n`` messages a fault of
proportion ``p`` was injected ``floor(n * p)`` times, or one fewer while it waits for a slot.

Example::

    fleet = make_fleet(20, seed=1, districts=("nanshan",))
    register(fleet_registration(fleet))   # the ingest side's business
    report = run_simulation(SimulationConfig(mqtt_url=url, rate=400, duration_s=2,
                                             faults={"bad_signature": 0.02}), fleet)
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import os
import random
import re
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TextIO

import cbor2
import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from anchor.broker.client import create_client, parse_mqtt_url
from anchor.envelope import (
    COSE_ALG_IDS,
    FORMAT_COSE,
    FORMAT_JWS,
    MAX_ENVELOPE_BYTES,
    Reading,
    parse_envelope,
)
from anchor.errors import AnchorError, Reason, UsageError
from anchor.host.files import KEY_FILE_LIMIT, read_user_file, write_public_file
from anchor.keys import ED25519, P256, PrivateKey, b64url_encode
from devices.keystore import device_key_files, generate_device_key, load_private_key
from devices.publisher import (
    Outbox,
    Publisher,
    Settled,
    reading_topic,
)
from devices.readings import FIVEG_KINDS, IOT_KINDS, ReadingGenerator
from devices.signer import DeviceSigner, DeviceState, load_state, save_state

__all__ = [
    "FAULTS",
    "InjectedFault",
    "SimDevice",
    "SimulationConfig",
    "SimulationError",
    "SimulationReport",
    "add_simulate_command",
    "cmd_simulate",
    "fleet_registration",
    "main",
    "make_fleet",
    "parse_duration",
    "parse_faults",
    "parse_rate",
    "run_simulation",
    "save_fleet_state",
]

FAULTS: tuple[str, ...] = (
    "bad_signature",
    "replayed_seq",
    "unknown_device",
    "oversized",
    "malformed",
    "seq_conflict",
    "topic_mismatch",
    "non_canonical",
)
"""Injectable faults; each name is the quarantine reason the ingestor should record."""

_NEEDS_HISTORY = frozenset({"replayed_seq", "seq_conflict"})
_MAX_FAULT_SHARE = 0.9
_DISTRICT = re.compile(r"[A-Za-z0-9._-]{1,40}")
_IOT_PREFIX: Mapping[str, str] = {
    "iot.air_quality": "aq",
    "iot.noise": "noise",
    "iot.traffic_count": "traffic",
    "iot.water_level": "water",
    "iot.energy_meter": "meter",
    "iot.parking": "parking",
}
_GHOSTS = 4
_HISTORY = 4096
_UNIT = 1_000_000  # proportions are applied in millionths, exactly
_SUCCESS_LIMIT = 0x80
_PROGRESS_EVERY_S = 0.5


class SimulationError(AnchorError):
    """The simulation could not run: ``usage`` (bad configuration), ``connect_failed``."""

    reason = Reason.SIMULATION_FAILED


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# ---------------------------------------------------------------------------------------------
# Configuration and report


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    """What to simulate. ``rate`` is readings per second for the whole fleet (faults
    included); ``faults`` maps names of :data:`FAULTS` to proportions of all messages (their
    sum at most 0.9). ``fiveg_share``, ``p256_share`` and ``jws_share`` shape the fleet that
    :func:`make_fleet` builds from this config. ``connections`` paho
    clients share the fleet, each with at most ``max_inflight`` unacknowledged publishes (also
    capped by the broker's Receive Maximum). ``drain_timeout_s`` bounds the wait for the last
    PUBACKs and ``connect_timeout_s`` the wait for the first connection. Only QoS 1 is
    supported: the ingest contract is at-least-once.
    Raises ``SimulationError`` (``usage``).
    """

    mqtt_url: str = "mqtt://127.0.0.1:1883"
    devices: int = 100
    rate: float = 1000.0
    duration_s: float = 10.0
    districts: tuple[str, ...] = ("downtown",)
    fiveg_share: float = 0.1
    p256_share: float = 0.2
    jws_share: float = 0.3
    faults: Mapping[str, float] = field(default_factory=dict)
    seed: int = 0
    username: str | None = None
    password: str | None = None
    qos: int = 1
    connections: int = 4
    # {device_id: password}: the broker requires per-device logins (and per-device topic ACLs),
    # so every device gets its own connection instead of sharing ``connections``.
    logins: Mapping[str, str] = field(default_factory=dict)
    max_inflight: int = 1000
    drain_timeout_s: float = 30.0
    connect_timeout_s: float = 10.0
    # With logins: where each device's outbox lives (kept between runs), else a temporary dir.
    outbox_dir: Path | None = None
    # With logins: the device SDK's wait for the service's acknowledgement before a resend.
    ack_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        def bad(detail: str) -> SimulationError:
            return SimulationError(detail, reason=Reason.USAGE)

        if self.devices < 1:
            raise bad("devices must be at least 1")
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise bad("rate must be a positive number of readings per second")
        if not (self.duration_s >= 0 and math.isfinite(self.duration_s)):
            raise bad("duration must be >= 0 seconds")
        object.__setattr__(self, "districts", tuple(self.districts))
        if not self.districts:
            raise bad("at least one district is needed")
        for d in self.districts:
            if not _DISTRICT.fullmatch(d):
                raise bad(f"district {d!r} is not [A-Za-z0-9._-]{{1,40}}")
        for name in ("fiveg_share", "p256_share", "jws_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise bad(f"{name} must be within [0, 1], got {value}")
        faults = dict(self.faults)
        for reason, share in faults.items():
            if reason not in FAULTS:
                raise bad(f"unknown fault {reason!r}; known: {', '.join(FAULTS)}")
            if not (0.0 <= share <= 1.0):
                raise bad(f"fault {reason} proportion must be within [0, 1], got {share}")
        if sum(faults.values()) > _MAX_FAULT_SHARE:
            raise bad(f"fault proportions add up to more than {_MAX_FAULT_SHARE}")
        object.__setattr__(self, "faults", MappingProxyType(faults))
        if self.qos != 1:
            raise bad("only QoS 1 is supported")
        if self.connections < 1 or self.max_inflight < 1:
            raise bad("connections and max_inflight must be at least 1")
        if self.drain_timeout_s < 0:
            raise bad("drain timeout must be >= 0")
        parse_mqtt_url(self.mqtt_url)


@dataclass(frozen=True, slots=True)
class InjectedFault:
    """One fault message: its reason, the topic it went to, and the (device_id, seq) of the
    envelope it carries (``None`` for ``malformed``, which carries no envelope)."""

    reason: str
    topic: str
    device_id: str | None
    seq: int | None


@dataclass(frozen=True, slots=True)
class SimulationReport:
    """What a run sent and what the store should end up with.

    * ``sent`` messages published; ``acked`` PUBACKs with a success code; ``failed`` PUBACKs
      with an error code (counted by code in ``puback_errors``); ``unacked`` still without a
      PUBACK when the drain timed out. ``sent == acked + failed + unacked``.
    * ``by_kind``: messages sent, by the reading kind of the device they came from.
    * ``by_fault``: messages sent per fault (every configured fault listed, zero included);
      ``faults``: each of them, in send order.
    * ``expected``: (device_id, seq) of every good reading the broker acknowledged, in ack
      order; ``expected_good`` is its length. With no failures,
      ``expected_good + sum(by_fault.values()) == sent``.
    * ``elapsed_s``: the sending phase; ``drain_s``: the wait for the last PUBACKs;
      ``rate``: ``sent / elapsed_s``.
    """

    sent: int
    acked: int
    failed: int
    unacked: int
    by_kind: Mapping[str, int]
    by_fault: Mapping[str, int]
    expected_good: int
    expected: tuple[tuple[str, int], ...]
    faults: tuple[InjectedFault, ...]
    puback_errors: Mapping[int, int]
    elapsed_s: float
    drain_s: float
    rate: float
    target_rate: float
    connections: int

    def summary(self) -> dict[str, Any]:
        """The report as JSON-ready data, without the per-message lists."""
        return {
            "sent": self.sent,
            "acked": self.acked,
            "failed": self.failed,
            "unacked": self.unacked,
            "expected_good": self.expected_good,
            "by_kind": dict(self.by_kind),
            "by_fault": dict(self.by_fault),
            "puback_errors": {f"0x{k:02x}": v for k, v in self.puback_errors.items()},
            "elapsed_s": round(self.elapsed_s, 3),
            "drain_s": round(self.drain_s, 3),
            "rate": round(self.rate, 1),
            "target_rate": self.target_rate,
            "connections": self.connections,
        }

    def to_json(self) -> dict[str, Any]:
        """:meth:`summary` plus ``expected`` and ``faults``."""
        out = self.summary()
        out["expected"] = [[d, s] for d, s in self.expected]
        out["faults"] = [
            {"reason": f.reason, "topic": f.topic, "device_id": f.device_id, "seq": f.seq}
            for f in self.faults
        ]
        return out


# ---------------------------------------------------------------------------------------------
# Fleet


@dataclass(frozen=True, slots=True, eq=False)
class SimDevice:
    """One simulated device: identity, key and an in-memory :class:`DeviceSigner`.

    ``state_path`` is set for fleets made with a ``key_dir``: :func:`save_fleet_state` (called
    at the end of :func:`run_simulation`) writes the chain state there, so that the next run
    continues at the next seq instead of re-signing old ones.
    """

    device_id: str
    kind: str
    district: str
    key: PrivateKey
    signer: DeviceSigner
    state_path: Path | None = None

    @property
    def topic(self) -> str:
        return reading_topic(self.district, self.device_id)

    @property
    def key_type(self) -> str:
        return self.key.key_type

    @property
    def format(self) -> str:
        return self.signer.format


def _spread(i: int, n: int, k: int) -> bool:
    """Whether item ``i`` of ``n`` is one of ``k`` chosen evenly spaced items."""
    return (i + 1) * k // n > i * k // n


def make_fleet(
    n: int,
    *,
    seed: int,
    key_dir: Path | str | None = None,
    districts: Sequence[str] = ("downtown",),
    fiveg_share: float = 0.1,
    p256_share: float = 0.2,
    jws_share: float = 0.3,
) -> list[SimDevice]:
    """Build ``n`` devices, deterministic in everything but fresh key material.

    Device ``i`` lives in ``districts[i % len(districts)]``. ``round(n * fiveg_share)`` of them,
    evenly spaced, are 5G equipment (``5g.cell_kpi``; ids alternate ``gnb-{district}-{i:05d}``
    and ``ue-...``); the rest cycle through :data:`~devices.readings.IOT_KINDS` (``aq-``,
    ``noise-``, ``traffic-``, ``water-``, ``meter-``, ``parking-``). ``round(n * p256_share)``
    devices, chosen by ``seed``, have P-256 keys (the rest Ed25519) and ``round(n * jws_share)``
    sign JWS (the rest COSE_Sign1).

    Without ``key_dir`` keys are generated in memory and die with the process. With it, each
    device's key is loaded from ``key_dir`` if present (its type then wins over the mix) or
    generated there (:func:`~devices.keystore.generate_device_key`), and its chain state is
    resumed from ``key_dir/{device_id}.state.json``: run the same command twice and the
    second run continues each device's seq. Raises ``SimulationError`` (``usage``) and the
    keystore's ``KeyMaterialError`` / the signer's ``DeviceStateError``.
    """
    if n < 1:
        raise SimulationError("a fleet needs at least one device", reason=Reason.USAGE)
    districts = tuple(districts)
    if not districts or not all(_DISTRICT.fullmatch(d) for d in districts):
        raise SimulationError(
            f"districts must be non-empty [A-Za-z0-9._-]{{1,40}} names, got {districts!r}",
            reason=Reason.USAGE,
        )
    rng = random.Random(f"cityanchor-fleet:{seed}")
    p256 = set(rng.sample(range(n), round(n * p256_share)))
    jws = set(rng.sample(range(n), round(n * jws_share)))
    n5g = round(n * fiveg_share)
    directory = Path(key_dir) if key_dir is not None else None
    fleet: list[SimDevice] = []
    iot = fiveg = 0
    for i in range(n):
        district = districts[i % len(districts)]
        if _spread(i, n, n5g):
            kind = FIVEG_KINDS[0]
            prefix = ("gnb", "ue")[fiveg % 2]
            fiveg += 1
        else:
            kind = IOT_KINDS[iot % len(IOT_KINDS)]
            prefix = _IOT_PREFIX[kind]
            iot += 1
        device_id = f"{prefix}-{district}-{i:05d}"
        key_type = P256 if i in p256 else ED25519
        fmt = FORMAT_JWS if i in jws else FORMAT_COSE
        state: DeviceState | None = None
        state_path: Path | None = None
        if directory is None:
            key = PrivateKey.generate(key_type)
        else:
            files = device_key_files(directory, device_id)
            if not files.private_pem.exists():
                generate_device_key(directory, device_id, key_type)
            key = load_private_key(files.private_pem)
            state_path = directory / f"{device_id}.state.json"
            state = load_state(state_path)
        # In memory even with a key_dir: a persistent signer fsyncs per reading, which would
        # cap the simulator at the disk's fsync rate. The state is saved after the run.
        signer = DeviceSigner(device_id, key, format=fmt, state=state)
        fleet.append(SimDevice(device_id, kind, district, key, signer, state_path))
    return fleet


def fleet_registration(fleet: Sequence[SimDevice]) -> list[dict[str, Any]]:
    """The fleet in the registry's JSON import shape:
    ``[{"device_id", "public_key_jwk", "district", "kind"}, ...]``."""
    return [
        {
            "device_id": d.device_id,
            "public_key_jwk": d.key.public_key.to_jwk(),
            "district": d.district,
            "kind": d.kind,
        }
        for d in fleet
    ]


def save_fleet_state(fleet: Sequence[SimDevice]) -> None:
    """Write the chain state of every device that has a ``state_path`` (atomic, fsynced)."""
    for d in fleet:
        if d.state_path is not None:
            save_state(d.state_path, d.signer.state)


# ---------------------------------------------------------------------------------------------
# Envelope surgery for faults


def _flip_signature(envelope: bytes) -> bytes:
    """The same envelope with one byte of its signature flipped (still well-formed)."""
    parsed = parse_envelope(envelope)
    sig = bytearray(parsed.signature)
    sig[len(sig) // 3] ^= 0x01
    if parsed.format == FORMAT_COSE:
        # The signature is the last element of the COSE_Sign1 array: the envelope's tail.
        assert envelope.endswith(parsed.signature)
        return envelope[: -len(sig)] + bytes(sig)
    head, body, _ = envelope.split(b".")
    return head + b"." + body + b"." + b64url_encode(bytes(sig)).encode("ascii")


def _respell(envelope: bytes) -> bytes:
    """The same signed reading in a non-canonical spelling, made without the key (a relay
    adding an unprotected COSE header, or a lenient base64url encoder padding a JWS)."""
    if parse_envelope(envelope).format == FORMAT_COSE:
        protected, _, payload, signature = cbor2.loads(envelope).value
        return bytes(cbor2.dumps(cbor2.CBORTag(18, [protected, {99: "relay"}, payload, signature])))
    return envelope + b"=="  # a 64-byte signature is 86 characters: two '=' pad it


def _json_bytes(obj: Mapping[str, Any]) -> bytes:
    text = json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode("utf-8")


def _sign_unbounded(reading: Reading, key: PrivateKey, fmt: str) -> bytes:
    """:func:`anchor.envelope.sign_reading` without its final size check, for ``oversized``.

    The encoding mirrors ``sign_reading`` (a test checks they agree byte for byte on a normal
    reading): COSE_Sign1 with tag 18, protected ``{1: alg, 4: kid}``, canonical CBOR payload,
    Sig_structure of RFC 9052 section 4.4; or JWS compact with sorted compact JSON.
    """
    alg = "Ed25519" if key.key_type == ED25519 else "ES256"
    kid = key.public_key.kid
    if fmt == FORMAT_COSE:
        protected = cbor2.dumps({1: COSE_ALG_IDS[alg], 4: kid}, canonical=True)
        payload = cbor2.dumps(reading.to_payload(FORMAT_COSE), canonical=True)
        to_sign = cbor2.dumps(["Signature1", protected, b"", payload], canonical=True)
        signature = key.sign(bytes(to_sign))
        return bytes(
            cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, signature]), canonical=True)
        )
    header = _json_bytes({"alg": alg, "kid": b64url_encode(kid)})
    body = _json_bytes(reading.to_payload(FORMAT_JWS))
    signing_input = f"{b64url_encode(header)}.{b64url_encode(body)}".encode("ascii")
    return signing_input + b"." + b64url_encode(key.sign(signing_input)).encode("ascii")


# ---------------------------------------------------------------------------------------------
# The run


@dataclass(frozen=True, slots=True)
class _Hist:
    """An acknowledged good envelope, kept for ``replayed_seq`` and ``seq_conflict``."""

    device: SimDevice
    conn: int
    seq: int
    prev: bytes
    ts: int
    kind: str
    envelope: bytes


@dataclass(frozen=True, slots=True)
class _Msg:
    good: _Hist | None  # set for a good reading


class _Conn:
    def __init__(self, index: int, client: mqtt.Client | None, window: int) -> None:
        self.index = index
        self.client = client
        # With per-device logins: the device SDK instead of a bare client.
        self.publisher: Publisher | None = None
        self.outbox: Outbox | None = None
        self.by_leaf: dict[bytes, _Msg] = {}  # messages waiting for the service's answer
        self.window = window
        self.pending: dict[int, _Msg] = {}
        self.early: dict[int, int] = {}  # PUBACKs that beat the publish() call's return
        self.outstanding = 0
        self.ready = threading.Event()
        self.refused: str | None = None


class _Schedule:
    """Integer accumulators: after n ticks, fault r has come due floor(n * p_r) times."""

    def __init__(self, faults: Mapping[str, float]) -> None:
        self.rates = {r: round(p * _UNIT) for r, p in faults.items() if p > 0}
        self.acc = dict.fromkeys(self.rates, 0)

    def tick(self) -> list[str]:
        for r, step in self.rates.items():
            self.acc[r] += step
        due = [r for r, a in self.acc.items() if a >= _UNIT]
        # The most overdue first; FAULTS order breaks ties, so runs are reproducible.
        due.sort(key=lambda r: (-self.acc[r], FAULTS.index(r)))
        return due

    def take(self, reason: str) -> None:
        self.acc[reason] -= _UNIT


class _Run:
    def __init__(
        self, config: SimulationConfig, fleet: Sequence[SimDevice], stream: TextIO | None
    ) -> None:
        self.config = config
        self.fleet = list(fleet)
        self.stream = stream
        self.rng = random.Random(f"cityanchor-sim:{config.seed}")
        self.values = ReadingGenerator(random.Random(f"cityanchor-values:{config.seed}"))
        self.schedule = _Schedule(config.faults)
        self.cond = threading.Condition()
        self.history: collections.deque[_Hist] = collections.deque(maxlen=_HISTORY)
        # Counters; the network threads update the ack side under cond.
        self.sent = self.acked = self.failed = 0
        self.by_kind: collections.Counter[str] = collections.Counter()
        self.by_fault: collections.Counter[str] = collections.Counter(
            dict.fromkeys(config.faults, 0)
        )
        self.puback_errors: collections.Counter[int] = collections.Counter()
        self.expected: list[tuple[str, int]] = []
        self.faults: list[InjectedFault] = []
        self.started = 0.0
        self.deadline = 0.0
        if config.logins:
            missing = [d.device_id for d in self.fleet if d.device_id not in config.logins]
            if missing:
                raise SimulationError(
                    f"no broker login for {len(missing)} devices (e.g. {missing[0]})",
                    reason=Reason.USAGE,
                )
        n_conn = len(self.fleet) if config.logins else min(config.connections, len(self.fleet))
        self.conn_of = {d.device_id: i % n_conn for i, d in enumerate(self.fleet)}
        district = config.districts[0]
        self.ghosts: list[SimDevice] = []
        for i in range(_GHOSTS):
            ghost_id = f"ghost-{district}-{i:05d}"
            key = PrivateKey.generate(ED25519)
            kind = IOT_KINDS[i % len(IOT_KINDS)]
            self.ghosts.append(
                SimDevice(ghost_id, kind, district, key, DeviceSigner(ghost_id, key))
            )
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if config.logins:
            if config.outbox_dir is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="cityanchor-sim-")
                self.outbox_dir = Path(self._tmp.name)
            else:
                self.outbox_dir = config.outbox_dir
            self.conns = [self._device_conn(i) for i in range(n_conn)]
        else:
            self.conns = [self._client(i) for i in range(n_conn)]

    # -- connections ------------------------------------------------------------------------

    def _device_conn(self, index: int) -> _Conn:
        """A real device: the SDK's Publisher and on-disk Outbox on the device's own login."""
        dev = self.fleet[index]
        self.outbox_dir.mkdir(parents=True, exist_ok=True)
        conn = _Conn(index, None, self.config.max_inflight)
        conn.outbox = Outbox(self.outbox_dir / f"{dev.device_id}.outbox.sqlite")

        def on_settled(settled: Settled) -> None:
            with self.cond:
                msg = conn.by_leaf.pop(settled.leaf_hash, None)
                if msg is not None:  # puback_code: 0 from the service, 0x87... from the broker
                    self._resolve(conn, msg, settled.puback_code, durable=settled.durable)

        conn.publisher = Publisher(
            conn.outbox,
            client_id=dev.device_id,
            mqtt_url=self.config.mqtt_url,
            username=dev.device_id,
            password=self.config.logins[dev.device_id],
            max_inflight=min(self.config.max_inflight, 100),
            reconnect_max_s=5,
            ack_timeout_s=self.config.ack_timeout_s,
            on_settled=on_settled,
        )
        return conn

    def _client(self, index: int) -> _Conn:
        target = parse_mqtt_url(self.config.mqtt_url)
        # A device login is bound to its client id, which is its device id.
        client_id = (
            self.fleet[index].device_id
            if self.config.logins
            else f"cityanchor-sim-{os.getpid()}-{self.config.seed}-{index}"
        )
        user = self.config.username or target.username
        password = self.config.password or target.password
        if self.config.logins:
            user = self.fleet[index].device_id
            password = self.config.logins[user]
        client = create_client(
            target,
            client_id=client_id,
            username=user or None,
            password=password if user else None,
            clean_start=True,
            reconnect_max_s=5,
            max_inflight=self.config.max_inflight,
        )
        conn = _Conn(index, client, self.config.max_inflight)

        def on_connect(
            c: mqtt.Client,
            userdata: Any,
            flags: mqtt.ConnectFlags,
            rc: ReasonCode,
            props: Properties | None,
        ) -> None:
            if rc.is_failure:
                conn.refused = str(rc)
            elif props is not None and hasattr(props, "ReceiveMaximum"):
                with self.cond:
                    conn.window = max(1, min(conn.window, int(props.ReceiveMaximum)))
            conn.ready.set()

        def on_publish(
            c: mqtt.Client, userdata: Any, mid: int, rc: ReasonCode, props: Properties
        ) -> None:
            with self.cond:
                msg = conn.pending.pop(mid, None)
                if msg is None:
                    conn.early[mid] = int(rc.value)
                else:
                    self._resolve(conn, msg, int(rc.value))

        client.on_connect = on_connect
        client.on_publish = on_publish
        return conn

    def _resolve(self, conn: _Conn, msg: _Msg, code: int, *, durable: bool = True) -> None:
        # Under self.cond. ``durable`` False: the service refused it for good (a fault).
        conn.outstanding -= 1
        if code < _SUCCESS_LIMIT:
            self.acked += 1
            if msg.good is not None and durable:
                self.history.append(msg.good)
                self.expected.append((msg.good.device.device_id, msg.good.seq))
        else:
            self.failed += 1
            self.puback_errors[code] += 1
        self.cond.notify_all()

    def _publish(self, conn: _Conn, topic: str, payload: bytes, msg: _Msg) -> None:
        if conn.publisher is not None:
            assert conn.outbox is not None
            leaf = conn.outbox.hasher.hash_leaf(payload)
            with self.cond:  # registered first: the answer may come before put() returns
                conn.by_leaf[leaf] = msg
                conn.outstanding += 1
                self.sent += 1
            conn.publisher.put(topic, payload)
            return
        assert conn.client is not None
        info = conn.client.publish(topic, payload, qos=1)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:  # pragma: no cover - queue is unbounded
            raise SimulationError("paho refused to queue a message", reason=Reason.PUBLISH_FAILED)
        with self.cond:
            conn.outstanding += 1
            self.sent += 1
            code = conn.early.pop(info.mid, None)
            if code is None:
                conn.pending[info.mid] = msg
            else:
                self._resolve(conn, msg, code)

    def _wait_room(self, conn: _Conn) -> bool:
        with self.cond:
            while conn.outstanding >= conn.window:
                if time.monotonic() >= self.deadline:
                    return False
                self.cond.wait(0.05)
        return True

    # -- messages ---------------------------------------------------------------------------

    def _throwaway(self, dev: SimDevice) -> DeviceSigner:
        # A copy of the device's chain: signing with it does not move the real one.
        return DeviceSigner(dev.device_id, dev.key, format=dev.format, state=dev.signer.state)

    def _sign_next(self, dev: SimDevice, ts: int) -> bytes:
        return self._throwaway(dev).sign(dev.kind, self._gen(dev, ts), ts)

    def _gen(self, dev: SimDevice, ts: int) -> dict[str, int | float | str | bool]:
        return self.values.values(dev.kind, dev.device_id, ts)

    def _one(self, dev: SimDevice, slot: int) -> bool:
        """Send one message for ``dev``'s turn; False when the deadline passed while waiting."""
        fault: str | None = None
        past: _Hist | None = None
        for reason in self.schedule.tick():
            if reason in _NEEDS_HISTORY:
                with self.cond:
                    if not self.history:
                        continue
                    past = self.history[self.rng.randrange(len(self.history))]
            fault = reason
            break
        conn = self.conns[past.conn if past is not None else self.conn_of[dev.device_id]]
        if fault == "unknown_device":
            ghost = self.ghosts[slot % len(self.ghosts)]
            conn = self.conns[slot % len(self.conns)]
        if not self._wait_room(conn):
            return False
        ts = _now_ms()
        topic, kind = dev.topic, dev.kind
        seq: int | None = dev.signer.seq + 1
        fault_device: str | None = dev.device_id
        if fault is None:
            prev = dev.signer.prev
            envelope = dev.signer.sign(dev.kind, self._gen(dev, ts), ts)
            good = _Hist(dev, conn.index, dev.signer.seq, prev, ts, dev.kind, envelope)
            self.by_kind[kind] += 1
            self._publish(conn, topic, envelope, _Msg(good))
            return True
        if fault == "bad_signature":
            envelope = _flip_signature(self._sign_next(dev, ts))
        elif fault == "oversized":
            state = dev.signer.state
            reading = Reading(
                device_id=dev.device_id,
                seq=state.seq + 1,
                ts=ts,
                kind=dev.kind,
                values=self._gen(dev, ts),
                prev=state.prev,
                extra={"padding": "x" * (MAX_ENVELOPE_BYTES + 1024)},
            )
            envelope = _sign_unbounded(reading, dev.key, dev.format)
        elif fault == "non_canonical":
            envelope = _respell(self._sign_next(dev, ts))
        elif fault == "malformed":
            envelope = b"\xff" + self.rng.randbytes(self.rng.randint(15, 255))
            seq = fault_device = None
        elif fault == "topic_mismatch":
            envelope = self._sign_next(dev, ts)
            others = [d for d in self.fleet if d.device_id != dev.device_id]
            other = others[slot % len(others)] if others else self.ghosts[0]
            topic = other.topic
        elif fault == "unknown_device":
            envelope = ghost.signer.sign(ghost.kind, self._gen(ghost, ts), ts)
            topic, kind, seq, fault_device = (
                ghost.topic,
                ghost.kind,
                ghost.signer.seq,
                ghost.device_id,
            )
        else:
            assert past is not None
            owner = past.device
            topic, kind, seq, fault_device = owner.topic, past.kind, past.seq, owner.device_id
            if fault == "replayed_seq":
                envelope = past.envelope
            else:  # seq_conflict: the same seq and prev, other values, validly signed
                signer = DeviceSigner(
                    owner.device_id,
                    owner.key,
                    format=owner.format,
                    state=DeviceState(owner.device_id, past.seq - 1, past.prev),
                )
                envelope = signer.sign(past.kind, self._gen(owner, past.ts + 1), past.ts + 1)
        self.schedule.take(fault)
        self.by_kind[kind] += 1
        self.by_fault[fault] += 1
        self.faults.append(InjectedFault(fault, topic, fault_device, seq))
        self._publish(conn, topic, envelope, _Msg(None))
        return True

    # -- main loop --------------------------------------------------------------------------

    def run(self, progress: bool) -> SimulationReport:
        config = self.config
        for conn in self.conns:
            if conn.publisher is not None:
                conn.publisher.start()
            else:
                assert conn.client is not None
                conn.client.loop_start()
        try:
            self._wait_connected()
            reporter = _Progress(self, progress)
            reporter.start()
            try:
                elapsed = self._produce()
                drain_start = time.monotonic()
                self._drain()
                drain = time.monotonic() - drain_start
            finally:
                reporter.stop()
        finally:
            for conn in self.conns:
                if conn.publisher is not None:
                    assert conn.outbox is not None
                    conn.publisher.close()
                    conn.outbox.close()
                else:
                    assert conn.client is not None
                    conn.client.disconnect()
                    conn.client.loop_stop()
            if self._tmp is not None:
                self._tmp.cleanup()
            # Even after an interruption: a seq that was sent must never be signed again.
            save_fleet_state(self.fleet)
        with self.cond:
            unacked = sum(c.outstanding for c in self.conns)
            return SimulationReport(
                sent=self.sent,
                acked=self.acked,
                failed=self.failed,
                unacked=unacked,
                by_kind=MappingProxyType(dict(self.by_kind)),
                by_fault=MappingProxyType(dict(self.by_fault)),
                expected_good=len(self.expected),
                expected=tuple(self.expected),
                faults=tuple(self.faults),
                puback_errors=MappingProxyType(dict(self.puback_errors)),
                elapsed_s=elapsed,
                drain_s=drain,
                rate=self.sent / elapsed if elapsed > 0 else 0.0,
                target_rate=config.rate,
                connections=len(self.conns),
            )

    def _wait_connected(self) -> None:
        limit = self.config.connect_timeout_s
        deadline = time.monotonic() + limit
        for conn in self.conns:
            if conn.publisher is not None:
                while not conn.publisher.connected and time.monotonic() < deadline:
                    time.sleep(0.02)
                if conn.publisher.connected:
                    continue
                raise SimulationError(
                    f"no MQTT connection to {self.config.mqtt_url} for "
                    f"{self.fleet[conn.index].device_id} within {limit} s",
                    reason=Reason.CONNECT_FAILED,
                )
            if not conn.ready.wait(max(0.0, deadline - time.monotonic())):
                raise SimulationError(
                    f"no MQTT connection to {self.config.mqtt_url} within {limit} s",
                    reason=Reason.CONNECT_FAILED,
                )
            if conn.refused is not None:
                raise SimulationError(
                    f"the broker at {self.config.mqtt_url} refused the connection: {conn.refused}",
                    reason=Reason.CONNECT_FAILED,
                )

    def _produce(self) -> float:
        rate = self.config.rate
        # Token bucket: at most 20 ms worth of readings in a burst, so a stall is not made up
        # for by a flood.
        burst = max(1.0, rate * 0.02)
        order = list(range(len(self.fleet)))
        self.rng.shuffle(order)
        self.started = last = time.monotonic()
        self.deadline = self.started + self.config.duration_s
        tokens = 1.0
        slot = 0
        while True:
            now = time.monotonic()
            if now >= self.deadline:
                break
            tokens = min(burst, tokens + (now - last) * rate)
            last = now
            if tokens < 1.0:
                time.sleep(min((1.0 - tokens) / rate, self.deadline - now))
                continue
            tokens -= 1.0
            dev = self.fleet[order[slot % len(order)]]
            if not self._one(dev, slot):
                break
            slot += 1
        return time.monotonic() - self.started

    def _drain(self) -> None:
        deadline = time.monotonic() + self.config.drain_timeout_s
        with self.cond:
            while any(c.outstanding for c in self.conns):
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self.cond.wait(min(left, 0.1))


class _Progress:
    """``\\r``-updated status line on stderr every 0.5 s: sent, acked, rate, eta."""

    def __init__(self, run: _Run, enabled: bool) -> None:
        self.run = run
        self.enabled = enabled
        self.stream = run.stream if run.stream is not None else sys.stderr
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="simulate-progress", daemon=True)

    def start(self) -> None:
        if self.enabled:
            self._thread.start()

    def stop(self) -> None:
        if self.enabled:
            self._stop.set()
            self._thread.join()
            self._print()
            self.stream.write("\n")
            self.stream.flush()

    def _loop(self) -> None:
        while not self._stop.wait(_PROGRESS_EVERY_S):
            self._print()

    def _print(self) -> None:
        r = self.run
        with r.cond:
            sent, acked = r.sent, r.acked
        now = time.monotonic()
        elapsed = max(now - r.started, 1e-9)
        eta = max(0.0, r.deadline - now)
        self.stream.write(
            f"\rsimulate: sent {sent}  acked {acked}  {sent / elapsed:,.0f}/s "
            f"(target {r.config.rate:,.0f}/s)  eta {eta:.0f}s   "
        )
        self.stream.flush()


def run_simulation(
    config: SimulationConfig,
    fleet: Sequence[SimDevice],
    *,
    progress: bool = True,
    stream: TextIO | None = None,
) -> SimulationReport:
    """Publish ``fleet``'s readings as ``config`` says, then wait for the PUBACKs.

    Runs ``config.duration_s`` seconds at up to ``config.rate`` messages per second (slower if
    the broker's window fills: the report's ``rate`` says what was achieved), waits up to
    ``config.drain_timeout_s`` for outstanding PUBACKs, disconnects, saves the devices' chain
    states (:func:`save_fleet_state`) and returns the report. With ``progress`` a status line
    goes to ``stream`` (default stderr). Raises ``SimulationError`` (``connect_failed``,
    ``usage``).
    """
    if not fleet:
        raise SimulationError("the fleet is empty", reason=Reason.USAGE)
    return _Run(config, fleet, stream).run(progress)


# ---------------------------------------------------------------------------------------------
# Command line


_RATE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kK]?)\s*(?:/\s*(s|sec|m|min|h))?\s*")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)?")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate(text: str) -> float:
    """``"5000/s"``, ``"5k/s"``, ``"300/min"``, ``"100"`` -> readings per second."""
    m = _RATE.fullmatch(text)
    if m is None or float(m.group(1)) <= 0:
        raise UsageError(f"rate {text!r} is not like 5000/s, 5k/s or 300/min")
    value = float(m.group(1)) * (1000 if m.group(2) else 1)
    per = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}[m.group(3) or "s"]
    return value / per


def parse_duration(text: str) -> float:
    """``"60s"``, ``"2m"``, ``"1m30s"``, ``"500ms"``, ``"1h"``, ``"45"`` -> seconds."""
    t = text.strip()
    parts = _DURATION_PART.findall(t)
    if not t or "".join(n + u for n, u in parts) != t:
        raise UsageError(f"duration {text!r} is not like 60s, 2m, 1m30s or 500ms")
    return sum(float(n) * _UNIT_S[u or "s"] for n, u in parts)


def parse_faults(text: str) -> dict[str, float]:
    """``"bad_signature=0.01,replayed_seq=1%"`` -> ``{"bad_signature": 0.01, ...}``."""
    out: dict[str, float] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or name not in FAULTS:
            raise UsageError(
                f"fault {item!r} is not NAME=PROPORTION with NAME one of {', '.join(FAULTS)}"
            )
        try:
            share = float(value[:-1]) / 100 if value.endswith("%") else float(value)
        except ValueError:
            raise UsageError(f"fault {name}: {value!r} is not a proportion") from None
        out[name] = share
    return out


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mqtt",
        default="mqtt://127.0.0.1:1883",
        metavar="URL",
        help="broker URL (mqtt://host:port, mqtts://...)",
    )
    p.add_argument("--devices", type=int, default=100, metavar="N")
    p.add_argument("--rate", default="1000/s", help="readings per second, whole fleet (5000/s)")
    p.add_argument("--duration", default="10s", help="how long to publish (60s, 2m)")
    p.add_argument(
        "--district",
        action="append",
        default=None,
        metavar="D",
        help="district of the fleet (repeatable; devices are spread over them)",
    )
    p.add_argument(
        "--faults",
        default="",
        metavar="SPEC",
        help=f"NAME=PROPORTION,... with NAME in {', '.join(FAULTS)}",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fiveg-share", type=float, default=0.1, help="share of 5G devices")
    p.add_argument("--p256-share", type=float, default=0.2, help="share of P-256 keys")
    p.add_argument("--jws-share", type=float, default=0.3, help="share of JWS signers")
    p.add_argument(
        "--connections", type=int, default=4, help="MQTT connections shared by the fleet"
    )
    p.add_argument(
        "--key-dir",
        type=Path,
        default=None,
        help="keep the fleet's keys and chain states here (reused by later runs)",
    )
    p.add_argument(
        "--fleet-file",
        type=Path,
        default=None,
        help="write the registry import JSON of the fleet here",
    )
    p.add_argument(
        "--fleet-only",
        action="store_true",
        help="only create the fleet (and --fleet-file), publish nothing",
    )
    p.add_argument("--username", default=None, help="MQTT username")
    p.add_argument(
        "--password-file",
        type=Path,
        default=None,
        help="file holding the MQTT password (kept off the command line)",
    )
    p.add_argument(
        "--register-via",
        metavar="HTTP_URL",
        default=None,
        help="register the fleet with POST /v1/devices on this API first (needs --token-file); "
        "the answers' broker logins are then used, one connection per device (a broker with "
        "per-device ACLs refuses unknown_device and topic_mismatch faults itself: PUBACK 0x87)",
    )
    p.add_argument("--token-file", type=Path, default=None, help="API token (devices:write)")
    p.add_argument(
        "--drain-timeout",
        default="30s",
        help="wait this long for the last PUBACKs (with --register-via: acknowledgements)",
    )
    p.add_argument(
        "--outbox-dir",
        type=Path,
        default=None,
        help="with --register-via: keep each device's on-disk outbox here (default: a "
        "temporary directory); unacknowledged readings are resent by the next run",
    )
    p.add_argument(
        "--report-json",
        type=Path,
        default=None,
        help="write the full report (expected readings, every fault) here",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress line on stderr")


def add_simulate_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``simulate`` on an argparse sub-parsers object; its handler, set as
    ``func``, is :func:`cmd_simulate` (returns the exit code, raises ``AnchorError``)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "simulate",
        help="publish a simulated fleet's signed readings (with optional faults)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    _add_arguments(p)
    p.set_defaults(func=cmd_simulate)
    return p


def _write_json(path: Path, data: object) -> None:
    try:
        write_public_file(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _register_via_api(
    base_url: str, token_file: Path | None, fleet: Sequence[SimDevice]
) -> dict[str, str]:
    """Register every device with ``POST /v1/devices``; return the broker logins answered."""
    if token_file is None:
        raise UsageError("--register-via needs --token-file (a devices:write token)")
    raw = read_user_file(token_file, what="token file", limit=KEY_FILE_LIMIT)
    token = raw.decode("utf-8", "replace").strip()
    logins: dict[str, str] = {}
    for body in fleet_registration(fleet):
        request = urllib.request.Request(
            base_url.rstrip("/") + "/v1/devices",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                answer = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise SimulationError(
                f"registering {body['device_id']}: HTTP {exc.code} {exc.read()[:300]!r}",
                reason=Reason.REGISTER_FAILED,
            ) from exc
        except OSError as exc:
            raise SimulationError(
                f"cannot reach {base_url}: {exc}", reason=Reason.REGISTER_FAILED
            ) from exc
        if "mqtt_password" in answer:
            logins[answer["mqtt_username"]] = answer["mqtt_password"]
    return logins


def _wait_for_logins(mqtt_url: str, logins: Mapping[str, str], timeout_s: float = 20.0) -> None:
    """Wait until the broker accepts the newest login (``cityanchor up``'s broker has it when
    the registration answers; a broker synchronised from the registry later may lag)."""
    target = parse_mqtt_url(mqtt_url)
    user, password = list(logins.items())[-1]
    deadline = time.monotonic() + timeout_s
    while True:
        codes: list[int] = []
        client = create_client(
            target,
            client_id=user,  # a device login is bound to its device id as client id
            username=user,
            password=password,
            keepalive_s=10,
        )
        client.on_connect = lambda c, u, f, rc, p, codes=codes: codes.append(int(rc.value))
        try:
            client.reconnect()  # connects now, with what create_client recorded
            until = time.monotonic() + 3
            while not codes and time.monotonic() < until:
                client.loop(0.1)
        except OSError:
            pass
        finally:
            client.disconnect()
            sock = client.socket()
            if sock is not None:  # a refused login leaves paho's socket open
                sock.close()
        if codes and codes[0] == 0:
            return
        if time.monotonic() > deadline:
            raise SimulationError(
                f"the broker did not accept the new device logins within {timeout_s:.0f} s",
                reason=Reason.CONNECT_FAILED,
            )
        time.sleep(0.5)


def cmd_simulate(args: argparse.Namespace) -> int:
    """Run ``simulate`` from parsed arguments; prints the report summary as one JSON line."""
    password: str | None = None
    if args.password_file is not None:
        raw = read_user_file(args.password_file, what="password file", limit=KEY_FILE_LIMIT)
        password = raw.decode("utf-8", "replace").strip()
    try:
        config = SimulationConfig(
            mqtt_url=args.mqtt,
            devices=args.devices,
            rate=parse_rate(args.rate),
            duration_s=parse_duration(args.duration),
            districts=tuple(args.district or ("downtown",)),
            fiveg_share=args.fiveg_share,
            p256_share=args.p256_share,
            jws_share=args.jws_share,
            faults=parse_faults(args.faults),
            seed=args.seed,
            username=args.username,
            password=password,
            connections=args.connections,
            drain_timeout_s=parse_duration(args.drain_timeout),
            outbox_dir=args.outbox_dir,
        )
    except AnchorError as exc:
        if exc.reason == Reason.USAGE:
            raise UsageError(exc.detail) from exc
        raise
    if args.fleet_only and args.fleet_file is None:
        raise UsageError("--fleet-only needs --fleet-file")
    fleet = make_fleet(
        config.devices,
        seed=config.seed,
        key_dir=args.key_dir,
        districts=config.districts,
        fiveg_share=config.fiveg_share,
        p256_share=config.p256_share,
        jws_share=config.jws_share,
    )
    if args.fleet_file is not None:
        _write_json(args.fleet_file, fleet_registration(fleet))
    if args.register_via:
        logins = _register_via_api(args.register_via, args.token_file, fleet)
        if logins:
            _wait_for_logins(config.mqtt_url, logins)
            config = dataclasses.replace(config, logins=logins)
    if args.fleet_only:
        print(json.dumps({"devices": len(fleet), "fleet_file": str(args.fleet_file)}))
        return 0
    report = run_simulation(config, fleet, progress=not args.no_progress)
    if args.report_json is not None:
        _write_json(args.report_json, report.to_json())
    print(json.dumps(report.summary(), sort_keys=True))
    return 0 if report.failed == 0 and report.unacked == 0 else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m devices.simulator [simulate flags]``: exit 0 when every message was
    acknowledged, 1 otherwise or on an error, 2 on a usage error."""
    parser = argparse.ArgumentParser(prog="cityanchor simulate")
    _add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return cmd_simulate(args)
    except UsageError as exc:
        print(f"cityanchor simulate: error: {exc.detail}", file=sys.stderr)
        return 2
    except AnchorError as exc:
        print(f"cityanchor simulate: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
