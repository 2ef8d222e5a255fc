"""Plausible measurement values for every reading kind the fleet simulator publishes.

Nothing here is consensus-critical: these are the ``values`` maps a simulated device signs, so a
change only changes what future simulated readings contain. They must still look like a real
city's data, because benchmarks, demos and the ingestor's validation run on them:

* every value is bounded by what the instrument can physically report (an RSRP outside
  -140..-44 dBm cannot be reported by a 3GPP UE; a PM2.5 analyser saturates at 1000 µg/m³);
* values follow the time of day (rush-hour traffic, afternoon ozone, night-time quiet) and are
  correlated the way real ones are (NO2 and noise follow traffic; ozone is titrated by NO2;
  throughput and latency follow SINR and cell load);
* every map is flat text -> int/float/str/bool, floats are rounded to the instrument's
  resolution and are never NaN or infinite, so the map encodes identically in CBOR and JSON.

Each device gets a stable profile (background pollution, road size, gauge datum, slice, ...)
derived from a SHA-256 of its id, never from Python's salted ``hash()``, so the same device looks
the same in every run; the per-reading noise comes from the caller's seeded ``random.Random``.

Example::

    rng = random.Random(7)
    values = generate_values("5g.cell_kpi", rng, ts_ms=1_700_000_000_000, device_id="gnb-0042")
    # {'source': 'ue', 'cell_id': 'bba0d4001', 'slice': '2-000001', 'rsrp_dbm': -99, ...}
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = [
    "FIVEG_KINDS",
    "IOT_KINDS",
    "KINDS",
    "ReadingGenerator",
    "Value",
    "generate_values",
]

Value = int | float | str | bool
"""One measurement value: the types a reading's ``values`` map may hold (DESIGN, wire format)."""

IOT_KINDS: tuple[str, ...] = (
    "iot.air_quality",
    "iot.noise",
    "iot.traffic_count",
    "iot.water_level",
    "iot.energy_meter",
    "iot.parking",
)
FIVEG_KINDS: tuple[str, ...] = ("5g.cell_kpi",)
KINDS: tuple[str, ...] = IOT_KINDS + FIVEG_KINDS

_MS_PER_HOUR = 3_600_000
_MS_PER_DAY = 24 * _MS_PER_HOUR
# Counters accumulate from this instant (2020-01-01T00:00:00Z) minus a per-device offset, so a
# meter's reading stays in the range real meters show instead of growing since 1970.
_COUNTER_EPOCH_MS = 1_577_836_800_000


# --------------------------------------------------------------------------------------------
# Helpers


def _clamp(x: float, lo: float, hi: float) -> float:
    # A NaN would survive min/max; every input here is finite, but the guarantee is cheap.
    if math.isnan(x):
        return lo
    return min(hi, max(lo, x))


def _round(x: float, lo: float, hi: float, digits: int) -> float:
    return round(_clamp(x, lo, hi), digits)


def _round_step(x: float, lo: float, hi: float, step: float) -> float:
    # 3GPP reports RSRQ and SINR in 0.5 dB steps (TS 38.133 section 10.1); mimic the quantisation.
    return _clamp(round(_clamp(x, lo, hi) / step) * step, lo, hi)


def _bump(hour: float, centre: float, width: float) -> float:
    """A Gaussian bump on the 24-hour circle: 1 at ``centre``, ~0 a few ``width`` away."""
    d = (hour - centre + 12.0) % 24.0 - 12.0
    return math.exp(-0.5 * (d / width) ** 2)


@dataclass(frozen=True, slots=True)
class _Clock:
    hour: float  # local hour of day, [0, 24)
    weekend: bool
    day: int  # days since the Unix epoch (local)


def _clock(ts_ms: int, utc_offset_min: int) -> _Clock:
    local_ms = ts_ms + utc_offset_min * 60_000
    day = local_ms // _MS_PER_DAY
    hour = (local_ms % _MS_PER_DAY) / _MS_PER_HOUR
    # 1970-01-01 was a Thursday: (day + 3) % 7 numbers Monday as 0.
    return _Clock(hour=hour, weekend=(day + 3) % 7 >= 5, day=day)


def _profile_rng(device_id: str, kind: str, salt: str = "") -> random.Random:
    """A generator seeded only by the device (and kind): the device's fixed character."""
    digest = hashlib.sha256(f"{kind}\x00{device_id}\x00{salt}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _traffic_intensity(c: _Clock) -> float:
    """Relative road traffic, ~0.1 at night, ~1 at the weekday rush hours."""
    if c.weekend:
        return 0.12 + 0.55 * _bump(c.hour, 13.5, 3.5)
    return (
        0.08
        + 0.92 * _bump(c.hour, 8.0, 1.1)
        + 0.85 * _bump(c.hour, 17.5, 1.4)
        + 0.45 * _bump(c.hour, 12.5, 3.0)
    )


def _poisson(rng: random.Random, mean: float) -> int:
    """A Poisson count: exact (Knuth) for small means, normal approximation above."""
    if mean <= 0:
        return 0
    if mean < 30:
        limit, k, p = math.exp(-mean), 0, 1.0
        while True:
            p *= rng.random()
            if p <= limit:
                return k
            k += 1
    return max(0, round(rng.gauss(mean, math.sqrt(mean))))


# --------------------------------------------------------------------------------------------
# IoT kinds


def _air_quality(rng: random.Random, device_id: str, c: _Clock) -> dict[str, Value]:
    p = _profile_rng(device_id, "iot.air_quality")
    background = p.uniform(4.0, 22.0)  # urban PM2.5 background, µg/m³
    roadside = p.uniform(0.3, 1.6)  # how much this site sees of traffic emissions
    coarse = p.uniform(1.3, 2.2)  # PM10 / PM2.5: dust and brake wear
    traffic = _traffic_intensity(c)
    # Night-time inversions trap particles; mid-day mixing dilutes them.
    inversion = 1.0 + 0.35 * _bump(c.hour, 5.0, 2.5) - 0.2 * _bump(c.hour, 14.0, 2.5)
    pm2_5 = (background + 18.0 * roadside * traffic) * inversion * rng.lognormvariate(0.0, 0.18)
    pm10 = pm2_5 * coarse * rng.lognormvariate(0.0, 0.08)
    no2 = (12.0 + 55.0 * roadside * traffic) * inversion * rng.lognormvariate(0.0, 0.15)
    # Ozone forms in afternoon sunlight and is titrated by fresh NO from traffic.
    sun = _bump(c.hour, 15.0, 2.8)
    o3 = (25.0 + 85.0 * sun) * math.exp(-no2 / 150.0) * rng.lognormvariate(0.0, 0.12)
    pm2_5 = _round(pm2_5, 0.0, 1000.0, 1)
    return {
        "pm2_5": pm2_5,
        # A PM10 sample contains the PM2.5 one, so never report less.
        "pm10": _round(max(pm10, pm2_5), pm2_5, 1000.0, 1),
        "no2": _round(no2, 0.0, 400.0, 1),
        "o3": _round(o3, 0.0, 400.0, 1),
    }


def _noise(rng: random.Random, device_id: str, c: _Clock) -> dict[str, Value]:
    p = _profile_rng(device_id, "iot.noise")
    quiet = p.uniform(36.0, 48.0)  # the site at 4 a.m.
    road = p.uniform(12.0, 30.0)  # how loud the road makes it at peak
    traffic = _traffic_intensity(c)
    # Sound levels add as energy: 10·log10 grows slowly with traffic volume.
    laeq = quiet + road * math.log10(1.0 + 9.0 * _clamp(traffic, 0.0, 1.2)) + rng.gauss(0.0, 1.5)
    # An occasional siren or horn dominates the interval.
    if rng.random() < 0.02:
        laeq += rng.uniform(5.0, 20.0)
    return {"laeq_db": _round(laeq, 25.0, 130.0, 1)}


_TRAFFIC_INTERVAL_S = 300


def _traffic_count(rng: random.Random, device_id: str, c: _Clock) -> dict[str, Value]:
    p = _profile_rng(device_id, "iot.traffic_count")
    road = p.uniform(80.0, 450.0)  # vehicles per 5 min at peak: side street to arterial
    cycle = p.uniform(0.05, 0.35)  # bicycles per vehicle
    walk = p.uniform(0.2, 2.5)  # pedestrians per vehicle
    traffic = _traffic_intensity(c)
    # Pedestrians peak at lunch and in the evening more than in the morning rush.
    foot = traffic * (0.7 + 0.6 * _bump(c.hour, 12.5, 2.0) + 0.4 * _bump(c.hour, 19.0, 2.0))
    # Cyclists stay home at night more than drivers do.
    bikes = traffic * (0.3 + 0.7 * _bump(c.hour, 13.0, 5.0))
    return {
        "interval_s": _TRAFFIC_INTERVAL_S,
        "vehicles": _poisson(rng, road * traffic),
        "bicycles": _poisson(rng, road * cycle * bikes),
        "pedestrians": _poisson(rng, road * walk * foot),
    }


def _water_level(rng: random.Random, device_id: str, c: _Clock) -> dict[str, Value]:
    p = _profile_rng(device_id, "iot.water_level")
    mean_level = p.uniform(0.6, 3.0)  # metres above the gauge datum
    datum = p.uniform(0.1, 0.5)  # stage of zero flow (rating-curve offset)
    width = p.uniform(5.0, 60.0)  # river width drives the rating coefficient
    # Rain comes in events lasting a day: decide them from (device, day), not from the caller's
    # RNG, so readings taken the same day agree on whether the river is in spate.
    day_rng = _profile_rng(device_id, "iot.water_level", f"day{c.day}")
    rain = day_rng.random()
    spate = 0.0 if rain < 0.8 else (rain - 0.8) / 0.2 * day_rng.uniform(0.3, 2.5)
    # The flood crest arrives some hours into the day and recedes.
    crest = spate * _bump(c.hour, day_rng.uniform(6.0, 20.0), 5.0)
    level = mean_level * (1.0 + 0.03 * math.sin(2 * math.pi * c.day / 365.0)) + crest
    level += rng.gauss(0.0, 0.005)  # ripple and sensor noise, ~5 mm
    level = _round(level, 0.0, 15.0, 3)
    # Manning-style rating curve Q = a·(h - h0)^1.6; no flow below the datum.
    flow = 0.9 * width * max(0.0, level - datum) ** 1.6
    return {"level_m": level, "flow_m3_s": _round(flow, 0.0, 20_000.0, 2)}


def _energy_profile(device_id: str) -> tuple[float, float, float, float]:
    p = _profile_rng(device_id, "iot.energy_meter")
    base_kw = p.uniform(0.3, 40.0)  # a flat to a small office building
    swing = p.uniform(0.2, 0.7)  # daytime peak relative to base; < 1 keeps power positive
    phase = p.uniform(12.0, 16.0)  # hour of peak demand
    installed_h = p.uniform(0.0, 2.0 * 8766.0)  # installed up to two years before the epoch
    return base_kw, swing, phase, installed_h


def _energy_kwh(ts_ms: int, utc_offset_min: int, device_id: str) -> float:
    # Cumulative energy is the closed-form integral of the mean power curve
    # P(t) = base·(1 + swing·cos(2π(h - phase)/24)), so the meter is monotonic in time with no
    # state to carry between readings: a later ts always yields at least as many kWh.
    base_kw, swing, phase, installed_h = _energy_profile(device_id)
    hours = (ts_ms + utc_offset_min * 60_000 - _COUNTER_EPOCH_MS) / _MS_PER_HOUR + installed_h
    if hours <= 0:
        return 0.0
    w = 2 * math.pi / 24.0

    def integral(h: float) -> float:
        return base_kw * (h + swing / w * math.sin(w * (h - phase)))

    return integral(hours) - integral(0.0)


def _energy_meter(
    rng: random.Random, device_id: str, c: _Clock, ts_ms: int, utc_offset_min: int
) -> dict[str, Value]:
    base_kw, swing, phase, _ = _energy_profile(device_id)
    mean_kw = base_kw * (1.0 + swing * math.cos(2 * math.pi * (c.hour - phase) / 24.0))
    kw = mean_kw * rng.lognormvariate(0.0, 0.1)
    # kWh is floored to the register's 0.01 resolution, never rounded up, to keep it monotonic.
    kwh = math.floor(_energy_kwh(ts_ms, utc_offset_min, device_id) * 100.0) / 100.0
    return {"kwh": kwh, "kw": _round(kw, 0.0, 1000.0, 3)}


def _parking(rng: random.Random, device_id: str, c: _Clock) -> dict[str, Value]:
    p = _profile_rng(device_id, "iot.parking")
    zone = p.choice("ABCDEFGH")
    bay = p.randrange(1, 400)
    demand = p.uniform(0.5, 0.95)  # busy shopping street vs quiet residential
    # Occupancy: high during business hours, and residential bays fill again overnight.
    busy = 0.15 + demand * (
        0.8 * _bump(c.hour, 11.0, 2.5)
        + 0.75 * _bump(c.hour, 16.0, 2.5)
        + 0.4 * _bump(c.hour, 1.0, 4.0)
    )
    return {"bay_id": f"{zone}-{bay:03d}", "occupied": rng.random() < _clamp(busy, 0.02, 0.98)}


# --------------------------------------------------------------------------------------------
# 5G kinds

# Slice/service type (3GPP TS 23.501 section 5.15.2.2): 1 eMBB, 2 URLLC, 3 MIoT.
_SLICES: tuple[tuple[int, str], ...] = ((1, "000001"), (1, "000002"), (2, "000001"), (3, "000001"))


def _cell_kpi(rng: random.Random, device_id: str, c: _Clock) -> dict[str, Value]:
    p = _profile_rng(device_id, "5g.cell_kpi")
    source = p.choice(("gnb", "ue"))
    # NR Cell Identity (TS 38.300 section 8.2): 36 bits, here a 24-bit gNB ID and a 12-bit cell.
    nci = (p.getrandbits(24) << 12) | p.randrange(0, 3)
    sst, sd = p.choice(_SLICES)
    bandwidth_mhz = p.choice((40.0, 60.0, 100.0))  # an n78 TDD carrier
    coverage = p.uniform(0.0, 1.0)  # 0 = next to the mast, 1 = cell edge / indoors
    # Load follows the city's day; an eMBB cell is busiest in the evening.
    load = _clamp(
        0.1 + 0.55 * _bump(c.hour, 20.5, 2.5) + 0.35 * _traffic_intensity(c) + rng.gauss(0, 0.05),
        0.02,
        0.98,
    )
    # A UE moves; a gNB reports the average of its UEs' reports, which moves less.
    spread = 8.0 if source == "ue" else 2.5
    rsrp = -72.0 - 45.0 * coverage + rng.gauss(0.0, spread)
    rsrp = _clamp(rsrp, -140.0, -44.0)
    # Interference from neighbours grows with their load; noise floor limits the cell edge.
    sinr = (rsrp + 118.0) * 0.55 - 9.0 * load + rng.gauss(0.0, 2.0)
    sinr = _round_step(sinr, -23.0, 40.0, 0.5)
    sinr_lin = 10.0 ** (sinr / 10.0)
    # RSRQ = N·RSRP/RSSI: about -3 dB in an empty cell, about -10.8 dB when every RE carries
    # data, and worse again when interference+noise is comparable to the signal.
    rsrq = -3.0 - 7.8 * load - 10.0 * math.log10(1.0 + 1.0 / sinr_lin) + rng.gauss(0.0, 0.3)
    rsrq = _round_step(rsrq, -19.5, -3.0, 0.5)
    # Throughput from spectral efficiency (Shannon with an implementation gap, capped at
    # 256-QAM's 7.4 b/s/Hz), MIMO layers when SINR allows, the TDD DL/UL split (~74/23 %)
    # and the share of the cell this UE gets (a gNB reports the whole cell's traffic).
    se = min(7.4, 0.75 * math.log2(1.0 + sinr_lin))
    layers = 4 if sinr >= 20 else 2 if sinr >= 8 else 1
    share = (1.0 - 0.85 * load) if source == "ue" else load
    dl = bandwidth_mhz * se * layers * 0.74 * share
    # The UE's 23 dBm cap leaves the uplink ~10 dB worse than the downlink.
    ul_lin = 10.0 ** ((sinr - 10.0) / 10.0)
    ul = bandwidth_mhz * min(5.5, 0.75 * math.log2(1.0 + ul_lin)) * min(layers, 2) * 0.23 * share
    # Air-interface plus core latency: URLLC slices use mini-slots; HARQ retransmissions add
    # more as SINR drops, and queueing as the cell fills.
    base_latency = 2.0 if sst == 2 else 9.0
    retx = 8.0 / (1.0 + math.exp((sinr - 0.0) / 3.0))
    latency = base_latency + retx + 12.0 * load**3 + rng.expovariate(1.0 / (0.4 + 2.0 * load))
    return {
        "source": source,
        "cell_id": f"{nci:09x}",
        "slice": f"{sst}-{sd}",
        "rsrp_dbm": round(rsrp),
        "rsrq_db": rsrq,
        "sinr_db": sinr,
        "dl_mbps": _round(dl, 0.0, 5000.0, 2),
        "ul_mbps": _round(ul, 0.0, 2000.0, 2),
        "latency_ms": _round(latency, 0.5, 1000.0, 1),
    }


_Simple = Callable[[random.Random, str, _Clock], dict[str, Value]]
_SIMPLE: Mapping[str, _Simple] = {
    "iot.air_quality": _air_quality,
    "iot.noise": _noise,
    "iot.traffic_count": _traffic_count,
    "iot.water_level": _water_level,
    "iot.parking": _parking,
    "5g.cell_kpi": _cell_kpi,
}


def generate_values(
    kind: str,
    rng: random.Random,
    *,
    ts_ms: int,
    device_id: str = "",
    utc_offset_min: int = 0,
) -> dict[str, Value]:
    """One plausible ``values`` map for a ``kind`` reading by ``device_id`` at ``ts_ms``.

    ``ts_ms`` is milliseconds since the Unix epoch and ``utc_offset_min`` shifts it to the
    city's local time, which drives the daily patterns. ``device_id`` picks the device's fixed
    profile (site, road, slice, ...); the empty default is one generic device. The result depends
    only on the arguments and the state of ``rng``, which it advances. Raises ``ValueError`` for
    a kind not in :data:`KINDS`.
    """
    clock = _clock(ts_ms, utc_offset_min)
    if kind == "iot.energy_meter":
        return _energy_meter(rng, device_id, clock, ts_ms, utc_offset_min)
    try:
        make = _SIMPLE[kind]
    except KeyError:
        raise ValueError(f"unknown reading kind {kind!r}; known: {', '.join(KINDS)}") from None
    return make(rng, device_id, clock)


class ReadingGenerator:
    """A seeded source of values for a fleet: ``ReadingGenerator(seed).values(kind, id, ts)``.

    Two generators built with the same seed produce the same sequence of maps for the same
    calls, which makes simulator runs and benchmarks reproducible.
    """

    __slots__ = ("_rng", "utc_offset_min")

    def __init__(self, seed: int | random.Random = 0, *, utc_offset_min: int = 0) -> None:
        self._rng = seed if isinstance(seed, random.Random) else random.Random(seed)
        self.utc_offset_min = utc_offset_min

    def values(self, kind: str, device_id: str, ts_ms: int) -> dict[str, Value]:
        """See :func:`generate_values`."""
        return generate_values(
            kind, self._rng, ts_ms=ts_ms, device_id=device_id, utc_offset_min=self.utc_offset_min
        )
