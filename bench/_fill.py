"""Filling a store with signed readings through the real seal path, shared by ``bench/api.py``
and ``bench/scale.py``.

A fill is a :class:`FillPlan`: ``devices`` devices, each signing ``per_device`` readings
(seq 1..n, ``prev``-chained, as :class:`devices.signer.DeviceSigner` chains them), sealed with
:meth:`anchor.store.Store.seal` in batches of ``batch`` readings. A batch is one *unit*: the next
``batch // group`` seqs of ``group`` devices, interleaved round-robin (as an ingestor sees a
fleet). Units are sealed slot by slot (slot ``t`` holds seqs ``t*k+1 .. t*k+k`` of every
group), so with a ``span`` the stored readings run forward in time, as they would on a live
store: ``received_at`` of unit ``(t, g)`` is spread evenly over the span and each reading's
``ts`` precedes it by one second per later reading of its device in the batch. Without a span
``received_at`` is the seal time and ``ts`` = ``TS0_MS + 1000 * seq``.

Signing runs in a process pool (one process per core), a few units ahead of the seal, so memory
stays bounded whatever the size; a unit needs the last ``prev`` of its devices, known once the
group's previous unit came back, which is ``groups`` units earlier, so the window ahead must not
exceed the number of groups.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sys
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from anchor.checkpoint import NoteSigner
from anchor.envelope import parse_envelope
from anchor.keys import PrivateKey
from anchor.store import DeviceSpec, Store

TS0_MS = 1_760_000_000_000
ZERO_PREV = bytes(32)


@dataclass(frozen=True, slots=True)
class FillDevice:
    """One device of a fill: what a worker process needs to sign for it."""

    device_id: str
    pem: bytes
    kind: str = "iot.noise"
    district: str = "bench"
    format: str = "cose-sign1"

    def spec(self) -> DeviceSpec:
        return DeviceSpec(
            self.device_id,
            PrivateKey.from_pem(self.pem).public_key,
            district=self.district,
            kind=self.kind,
        )


@dataclass(frozen=True, slots=True)
class FillPlan:
    """Which readings a fill writes, and when they are stamped (pure: no I/O)."""

    devices: int
    per_device: int
    batch: int = 1000
    group: int = 10
    span: tuple[datetime, datetime] | None = None
    values: str = "counter"  # "counter": api.py's noise map; "simulated": devices.readings

    def __post_init__(self) -> None:
        if self.batch % self.group or self.devices % self.group:
            raise ValueError("batch and devices must be multiples of group")
        if self.per_device % self.per_unit:
            raise ValueError(f"per_device must be a multiple of {self.per_unit}")

    @property
    def per_unit(self) -> int:
        """Seqs of each device in one unit (batch)."""
        return self.batch // self.group

    @property
    def groups(self) -> int:
        return self.devices // self.group

    @property
    def slots(self) -> int:
        return self.per_device // self.per_unit

    @property
    def units(self) -> int:
        return self.slots * self.groups

    @property
    def readings(self) -> int:
        return self.devices * self.per_device

    def unit(self, u: int) -> tuple[int, int]:
        """Unit number ``u`` (seal order) as (slot, group)."""
        return divmod(u, self.groups)

    def received_at(self, slot: int, group: int) -> datetime | None:
        """When unit (slot, group) is received; None: at seal time (no span)."""
        if self.span is None:
            return None
        lo, hi = self.span
        # Unit u of U ends at lo + (u + 1) / U of the span: the last one at hi, all increasing.
        u = slot * self.groups + group
        return lo + (hi - lo) * (u + 1) / self.units

    def ts_ms(self, slot: int, group: int) -> list[int]:
        """Each device's ``ts`` for its k-th reading of unit (slot, group), k = 0..per_unit-1."""
        at = self.received_at(slot, group)
        if at is None:
            first = slot * self.per_unit + 1
            return [TS0_MS + 1000 * (first + k) for k in range(self.per_unit)]
        end_ms = int(at.timestamp() * 1000)
        return [end_ms - 1000 * (self.per_unit - k) for k in range(self.per_unit)]

    def first_seq_from(self, cut: datetime) -> list[int]:
        """Per group, the lowest seq received at or after ``cut`` (``per_device + 1`` if none):
        the readings left once everything received before ``cut`` is archived."""
        out = []
        for g in range(self.groups):
            lo, hi = 0, self.slots  # first slot whose unit (slot, g) is received >= cut
            while lo < hi:
                mid = (lo + hi) // 2
                at = self.received_at(mid, g)
                if at is not None and at < cut:
                    lo = mid + 1
                else:
                    hi = mid
            out.append(lo * self.per_unit + 1)
        return out


def month_start(at: datetime, months: int = 0) -> datetime:
    """The first instant (UTC) of the month ``months`` after (negative: before) ``at``'s."""
    at = at.astimezone(UTC)
    index = at.year * 12 + (at.month - 1) + months
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def months_between(lo: datetime, hi: datetime) -> list[str]:
    """``YYYY-MM`` of every month that [lo, hi] touches, oldest first."""
    out = []
    at = month_start(lo)
    while at <= hi:
        out.append(f"{at.year:04d}-{at.month:02d}")
        at = month_start(at, 1)
    return out


# ------------------------------------------------------------------------------- workers


class _SigningKey:
    """What the envelope encoders use of a :class:`PrivateKey` (``public_key.kid``, ``sign``),
    with the key ID computed once: it is a SHA-256 over the JWK, a fifth of a signature's cost
    when recomputed for every reading."""

    __slots__ = ("key_type", "public_key", "sign")

    def __init__(self, key: PrivateKey) -> None:
        from types import SimpleNamespace

        self.key_type = key.key_type
        self.public_key = SimpleNamespace(kid=key.public_key.kid)
        self.sign = key.sign


_KEYS: dict[str, _SigningKey] = {}


def sign_unit(
    devices: Sequence[FillDevice],
    first_seq: int,
    prevs: Sequence[bytes],
    ts_ms: Sequence[int],
    values: str,
) -> tuple[list[bytes], list[bytes]]:
    """Worker process: the envelopes of one unit, round-robin over ``devices`` (seq
    ``first_seq + k`` at ``ts_ms[k]``), and each device's last leaf hash (its next ``prev``).

    The envelopes are byte for byte what :class:`devices.signer.DeviceSigner` signs (the same
    encoders, :func:`anchor.envelope_cose.sign_cose` / :func:`anchor.envelope_jws.sign_jws`),
    without the signer's parse of its own output: the seal parses every envelope anyway, and
    that parse was a third of the signing cost.
    """
    import random

    from anchor.envelope import FORMAT_COSE, Reading
    from anchor.envelope_cose import sign_cose
    from anchor.envelope_jws import sign_jws
    from anchor.keys import ED25519
    from anchor.merkle import leaf_hash
    from devices.readings import generate_values

    keys = []
    for d in devices:
        key = _KEYS.get(d.device_id)
        if key is None:
            key = _KEYS[d.device_id] = _SigningKey(PrivateKey.from_pem(d.pem))
        keys.append(key)
    chain = list(prevs)
    rng = random.Random(first_seq)
    out = []
    for k, ts in enumerate(ts_ms):
        n = first_seq + k
        for i, (d, key) in enumerate(zip(devices, keys, strict=True)):
            if values == "counter":
                vals: dict[str, Any] = {"laeq_db": 40.0 + n % 50, "n": n}
            else:
                vals = generate_values(d.kind, rng, ts_ms=ts, device_id=d.device_id)
            reading = Reading(
                device_id=d.device_id, seq=n, ts=ts, kind=d.kind, values=vals, prev=chain[i]
            )
            alg = "Ed25519" if key.key_type == ED25519 else "ES256"
            encode = sign_cose if d.format == FORMAT_COSE else sign_jws
            raw = encode(reading, key, alg)  # type: ignore[arg-type]
            chain[i] = leaf_hash(raw)
            out.append(raw)
    return out, chain


# ---------------------------------------------------------------------------------- fill


@dataclass(frozen=True, slots=True)
class FillResult:
    readings: int
    batches: int
    envelope_bytes: int
    seconds: float

    @property
    def per_s(self) -> float:
        return self.readings / self.seconds if self.seconds else 0.0


def topic_of(device: FillDevice) -> str:
    return f"city/{device.district}/{device.device_id}/readings"


def _fmt_s(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


async def fill(
    store: Store,
    plan: FillPlan,
    devices: Sequence[FillDevice],
    operator: NoteSigner,
    *,
    origin: str,
    ingestor: str,
    cores: int,
    progress_s: float = 0.0,
    label: str = "fill",
) -> FillResult:
    """Register ``devices`` (``plan.devices`` of them) and seal every unit of ``plan``.

    With ``progress_s`` > 0 a line goes to stderr every ``progress_s`` seconds: readings stored,
    readings per second (signing included) and the time left at that rate.
    """
    from anchor.sealing import Candidate

    assert len(devices) == plan.devices
    await store.register_devices([d.spec() for d in devices])
    prevs = [ZERO_PREV] * plan.devices
    topics = [topic_of(d) for d in devices]
    window = max(1, min(plan.groups, 3 * cores))
    ctx = multiprocessing.get_context("spawn")
    stored = envelope_bytes = 0
    started = last_report = time.perf_counter()

    def submit(pool: ProcessPoolExecutor, u: int) -> Future[tuple[list[bytes], list[bytes]]]:
        slot, g = plan.unit(u)
        members = devices[g * plan.group : (g + 1) * plan.group]
        return pool.submit(
            sign_unit,
            members,
            slot * plan.per_unit + 1,
            prevs[g * plan.group : (g + 1) * plan.group],
            plan.ts_ms(slot, g),
            plan.values,
        )

    with ProcessPoolExecutor(cores, mp_context=ctx) as pool:
        # Unit u + window needs the prevs unit u + window - groups left: consumed already.
        pending: deque[Future[tuple[list[bytes], list[bytes]]]] = deque(
            submit(pool, u) for u in range(min(window, plan.units))
        )
        for u in range(plan.units):
            envelopes, last = await asyncio.wrap_future(pending.popleft())
            slot, g = plan.unit(u)
            prevs[g * plan.group : (g + 1) * plan.group] = last
            if u + window < plan.units:
                pending.append(submit(pool, u + window))
            at = plan.received_at(slot, g) or datetime.now(UTC)
            # Round-robin: envelope i is of the group's device i % group.
            base = g * plan.group
            candidates = [
                Candidate(parse_envelope(raw), at, topics[base + i % plan.group])
                for i, raw in enumerate(envelopes)
            ]
            result = await store.seal(
                candidates, [], signer=operator, origin=origin, ingestor=ingestor
            )
            if result.accepted != len(candidates):
                raise RuntimeError(
                    f"seal accepted {result.accepted} of {len(candidates)}: {result.quarantined}"
                )
            stored += result.accepted
            envelope_bytes += sum(len(raw) for raw in envelopes)
            now = time.perf_counter()
            if progress_s and (now - last_report >= progress_s or u + 1 == plan.units):
                last_report = now
                rate = stored / (now - started)
                left = (plan.readings - stored) / rate if rate else 0.0
                print(
                    f"  {label}: {stored:,}/{plan.readings:,} readings "
                    f"({100 * stored / plan.readings:.1f}%), {rate:,.0f}/s, "
                    f"ETA {_fmt_s(left)}",
                    file=sys.stderr,
                    flush=True,
                )
    return FillResult(stored, plan.units, envelope_bytes, time.perf_counter() - started)


def make_devices(n: int, *, simulated: bool = False) -> list[FillDevice]:
    """``n`` devices: ``bench-NNNN`` Ed25519 COSE noise sensors (api.py's), or with ``simulated``
    the simulator's fleet mix (devices.simulator.make_fleet: kinds, ids, 20% P-256 keys, 30%
    JWS signers)."""
    if simulated:
        from devices.simulator import make_fleet

        return [
            FillDevice(d.device_id, d.key.to_pem(), d.kind, d.district, d.signer.format)
            for d in make_fleet(n, seed=16)
        ]
    return [FillDevice(f"bench-{i:04d}", PrivateKey.generate().to_pem()) for i in range(n)]


def spread_over_months(months: int, now: datetime | None = None) -> tuple[datetime, datetime]:
    """A span from the start of the month ``months - 1`` before ``now``'s to ``now``: readings
    in ``months`` monthly partitions, the current one included."""
    now = now or datetime.now(UTC)
    return month_start(now, -(months - 1)), now - timedelta(seconds=1)
