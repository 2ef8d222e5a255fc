"""The device SDK: key files on disk, simulated readings, and the signer's per-device chain.

The signer tests import :mod:`devices.signer` (and through it :mod:`anchor.envelope`) inside a
fixture, so that a missing or broken envelope module fails those tests by name while the key
and reading tests still run.
"""

from __future__ import annotations

import errno
import json
import math
import os
import random
import stat
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anchor.errors import AnchorError, KeyMaterialError
from anchor.keys import PrivateKey
from anchor.merkle import leaf_hash
from devices import keystore
from devices.keystore import (
    device_key_files,
    generate_device_key,
    load_private_key,
    load_public_jwk,
    load_public_pem,
)
from devices.readings import FIVEG_KINDS, IOT_KINDS, KINDS, ReadingGenerator, generate_values

KEY_TYPES = ("Ed25519", "P-256")
T0 = 1_764_000_000_000  # 2025-11-24T16:00:00Z, a Monday afternoon
HOUR = 3_600_000
DAY = 24 * HOUR

posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ------------------------------------------------------------------------------ keystore


@posix_only
@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_generated_key_files_have_safe_modes_and_round_trip(tmp_path: Path, key_type: str) -> None:
    # A permissive umask must not leak into the private file's mode.
    old_umask = os.umask(0o000)
    try:
        files = generate_device_key(tmp_path / "keys", "aq-0001", key_type=key_type)
    finally:
        os.umask(old_umask)

    assert files.private_pem == tmp_path / "keys" / "aq-0001.key.pem"
    assert files.public_jwk == tmp_path / "keys" / "aq-0001.jwk"
    assert files.public_pem == tmp_path / "keys" / "aq-0001.pub.pem"
    assert files.key_type == key_type
    assert _mode(files.private_pem) == 0o600
    assert _mode(files.public_jwk) == 0o644
    assert _mode(tmp_path / "keys") == 0o700
    # No temporary files are left behind.
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == [
        "aq-0001.jwk",
        "aq-0001.key.pem",
        "aq-0001.pub.pem",
    ]

    key = load_private_key(files.private_pem)
    assert key.key_type == key_type
    assert files.private_pem.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    public = load_public_jwk(files.public_jwk)
    assert public == key.public_key == load_public_pem(files.public_pem)
    assert files.kid == public.kid and len(files.kid) == 32
    jwk = json.loads(files.public_jwk.read_text())
    assert "d" not in jwk
    assert jwk["kty"] == ("OKP" if key_type == "Ed25519" else "EC")
    # The loaded key signs what the published key verifies.
    public.verify(key.sign(b"reading"), b"reading")


def test_default_key_type_is_ed25519(tmp_path: Path) -> None:
    files = generate_device_key(tmp_path, "dev-1")
    assert files.key_type == "Ed25519"
    assert load_private_key(files.private_pem).key_type == "Ed25519"


@posix_only
@pytest.mark.parametrize("mode", [0o640, 0o644, 0o604, 0o660, 0o666, 0o610])
def test_loose_private_key_is_refused(tmp_path: Path, mode: int) -> None:
    files = generate_device_key(tmp_path, "dev-1")
    files.private_pem.chmod(mode)
    with pytest.raises(KeyMaterialError) as exc:
        load_private_key(files.private_pem)
    assert exc.value.reason == "key_file_permissions"
    assert f"{mode:04o}" in str(exc.value)
    files.private_pem.chmod(0o600)
    assert load_private_key(files.private_pem).key_type == "Ed25519"


@posix_only
def test_stricter_private_key_mode_is_accepted(tmp_path: Path) -> None:
    files = generate_device_key(tmp_path, "dev-1")
    files.private_pem.chmod(0o400)
    assert load_private_key(files.private_pem).key_type == "Ed25519"


@posix_only
def test_loose_key_is_refused_through_a_symlink(tmp_path: Path) -> None:
    files = generate_device_key(tmp_path, "dev-1")
    files.private_pem.chmod(0o644)
    link = tmp_path / "current.pem"
    link.symlink_to(files.private_pem)
    with pytest.raises(KeyMaterialError) as exc:
        load_private_key(link)
    assert exc.value.reason == "key_file_permissions"


def test_existing_key_is_never_overwritten(tmp_path: Path) -> None:
    first = generate_device_key(tmp_path, "dev-1")
    before = first.private_pem.read_bytes()
    with pytest.raises(KeyMaterialError) as exc:
        generate_device_key(tmp_path, "dev-1", key_type="P-256")
    assert exc.value.reason == "key_file_exists"
    assert first.private_pem.read_bytes() == before
    assert load_public_jwk(first.public_jwk) == load_private_key(first.private_pem).public_key
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@posix_only
def test_filesystem_without_hard_links_still_gets_a_0600_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_link(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    files = generate_device_key(tmp_path, "dev-1")
    assert _mode(files.private_pem) == 0o600
    assert load_private_key(files.private_pem).public_key == load_public_jwk(files.public_jwk)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(KeyMaterialError) as exc:
        generate_device_key(tmp_path, "dev-1")
    assert exc.value.reason == "key_file_exists"


def test_write_failure_leaves_no_key_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "link", full_disk)
    with pytest.raises(KeyMaterialError) as exc:
        generate_device_key(tmp_path, "dev-1")
    assert exc.value.reason == "key_file_unwritable"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("device_id", ["", "../escape", "a/b", "x" * 65, "dev 1", "dév"])
def test_bad_device_id_is_refused_before_touching_disk(tmp_path: Path, device_id: str) -> None:
    with pytest.raises(KeyMaterialError) as exc:
        generate_device_key(tmp_path / "k", device_id)
    assert exc.value.reason == "device_id_invalid"
    assert not (tmp_path / "k").exists()


def test_unknown_key_type_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyMaterialError) as exc:
        generate_device_key(tmp_path, "dev-1", key_type="RSA")
    assert exc.value.reason == "key_type_unsupported"
    assert list(tmp_path.iterdir()) == []


def test_device_key_files_names_paths_only(tmp_path: Path) -> None:
    files = device_key_files(tmp_path, "gnb-7")
    assert files.public_jwk.name == "gnb-7.jwk"  # the DESIGN's `{device_id}.jwk`
    assert not files.private_pem.exists()


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(KeyMaterialError) as exc:
        load_private_key(tmp_path / "nope.pem")
    assert exc.value.reason == "key_file_unreadable"
    with pytest.raises(KeyMaterialError) as exc:
        load_public_jwk(tmp_path / "nope.jwk")
    assert exc.value.reason == "key_file_unreadable"


@pytest.mark.parametrize(
    ("content", "private"),
    [
        (b"not a pem", True),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", True),
        (b"not json", False),
        (b"[1, 2]", False),
        (b'{"kty": "RSA", "n": "AQAB", "e": "AQAB"}', False),
    ],
)
def test_garbage_key_files_are_key_invalid(tmp_path: Path, content: bytes, private: bool) -> None:
    path = tmp_path / "k"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KeyMaterialError) as exc:
        (load_private_key if private else load_public_jwk)(path)
    assert exc.value.reason == "key_invalid"


def test_public_jwk_holding_the_secret_is_refused(tmp_path: Path) -> None:
    key = PrivateKey.generate()
    path = tmp_path / "leak.jwk"
    path.write_text(json.dumps(key.to_jwk()))
    with pytest.raises(KeyMaterialError) as exc:
        load_public_jwk(path)
    assert exc.value.reason == "key_invalid"


def test_oversized_key_file_is_refused_unparsed(tmp_path: Path) -> None:
    path = tmp_path / "big.pem"
    path.write_bytes(b"A" * (keystore.MAX_KEY_FILE_SIZE + 1))
    path.chmod(0o600)
    with pytest.raises(KeyMaterialError) as exc:
        load_private_key(path)
    assert exc.value.reason == "key_invalid"


# ------------------------------------------------------------------------------ readings

# Physical bounds per kind, stated independently of the generator: what the instrument can
# report, not what the generator happens to aim for.
Bound = tuple[type, float, float] | type
BOUNDS: dict[str, dict[str, Bound]] = {
    "iot.air_quality": {
        "pm2_5": (float, 0.0, 1000.0),
        "pm10": (float, 0.0, 1000.0),
        "no2": (float, 0.0, 400.0),
        "o3": (float, 0.0, 400.0),
    },
    "iot.noise": {"laeq_db": (float, 20.0, 140.0)},
    "iot.traffic_count": {
        "interval_s": (int, 1, 3600),
        "vehicles": (int, 0, 5000),
        "bicycles": (int, 0, 5000),
        "pedestrians": (int, 0, 20000),
    },
    "iot.water_level": {"level_m": (float, 0.0, 15.0), "flow_m3_s": (float, 0.0, 20000.0)},
    "iot.energy_meter": {"kwh": (float, 0.0, 1e9), "kw": (float, 0.0, 1000.0)},
    "iot.parking": {"bay_id": str, "occupied": bool},
    "5g.cell_kpi": {
        "source": str,
        "cell_id": str,
        "slice": str,
        "rsrp_dbm": (int, -140, -44),  # TS 38.133 reporting range
        "rsrq_db": (float, -19.5, -3.0),
        "sinr_db": (float, -23.0, 40.0),
        "dl_mbps": (float, 0.0, 5000.0),
        "ul_mbps": (float, 0.0, 2000.0),
        "latency_ms": (float, 0.1, 1000.0),
    },
}


def test_kind_lists() -> None:
    assert set(BOUNDS) == set(KINDS)
    assert KINDS == IOT_KINDS + FIVEG_KINDS
    assert all(k.startswith("iot.") for k in IOT_KINDS)
    assert FIVEG_KINDS == ("5g.cell_kpi",)


def _check_bounds(kind: str, values: dict[str, Any]) -> None:
    assert set(values) == set(BOUNDS[kind]), (kind, values)
    for name, bound in BOUNDS[kind].items():
        v = values[name]
        if isinstance(bound, type):
            assert type(v) is bound, (kind, name, v)
            continue
        typ, lo, hi = bound
        assert type(v) is typ, (kind, name, v)  # exact: a bool is not an int here
        assert isinstance(v, int | float) and math.isfinite(v), (kind, name, v)
        assert lo <= v <= hi, (kind, name, v)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_stays_within_physical_bounds(kind: str) -> None:
    for seed in range(40):
        rng = random.Random(seed)
        device_id = f"dev-{seed % 7}"
        for step in range(0, 7 * DAY, 97 * 60_000):  # a week, off the hour grid
            _check_bounds(kind, generate_values(kind, rng, ts_ms=T0 + step, device_id=device_id))


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    seed=st.integers(0, 2**64),
    device_id=st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True),
    ts_ms=st.integers(0, 4_102_444_800_000),  # 1970 .. 2100
    utc_offset_min=st.integers(-12 * 60, 14 * 60),
)
def test_bounds_hold_for_any_device_time_and_seed(
    kind: str, seed: int, device_id: str, ts_ms: int, utc_offset_min: int
) -> None:
    values = generate_values(
        kind, random.Random(seed), ts_ms=ts_ms, device_id=device_id, utc_offset_min=utc_offset_min
    )
    _check_bounds(kind, values)


def test_values_are_flat_and_json_round_trip() -> None:
    rng = random.Random(3)
    for kind in KINDS:
        values = generate_values(kind, rng, ts_ms=T0, device_id="d")
        assert json.loads(json.dumps(values, allow_nan=False)) == values


def test_floats_are_rounded() -> None:
    rng = random.Random(5)
    for kind in KINDS:
        for i in range(50):
            for v in generate_values(kind, rng, ts_ms=T0 + i * HOUR, device_id="d").values():
                if isinstance(v, float):
                    assert round(v, 3) == v


def test_same_seed_same_values() -> None:
    a, b = ReadingGenerator(42), ReadingGenerator(42)
    for i, kind in enumerate(KINDS * 10):
        assert a.values(kind, "dev", T0 + i * 1000) == b.values(kind, "dev", T0 + i * 1000)
    c, d = ReadingGenerator(1), ReadingGenerator(2)
    assert any(
        c.values("5g.cell_kpi", "d", T0) != d.values("5g.cell_kpi", "d", T0) for _ in range(5)
    )


def test_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown reading kind"):
        generate_values("iot.teleport", random.Random(), ts_ms=T0)


def _mean(kind: str, name: str, hour: int, *, n: int = 300, day: int = 0) -> float:
    rng = random.Random(hour * 1000 + day)
    ts = T0 - 16 * HOUR + day * DAY + hour * HOUR  # T0 - 16 h is Monday 00:00 UTC
    total = 0.0
    for i in range(n):
        v = generate_values(kind, rng, ts_ms=ts, device_id=f"site-{i % 25}")[name]
        total += float(v)
    return total / n


def test_traffic_has_rush_hour_peaks() -> None:
    night, morning, evening = (_mean("iot.traffic_count", "vehicles", h) for h in (3, 8, 17))
    assert morning > 4 * night
    assert evening > 4 * night
    # The weekend has no morning rush.
    assert _mean("iot.traffic_count", "vehicles", 8, day=5) < 0.5 * morning


def test_air_quality_follows_traffic_and_sunlight() -> None:
    assert _mean("iot.air_quality", "no2", 8) > 1.5 * _mean("iot.air_quality", "no2", 3)
    assert _mean("iot.air_quality", "o3", 15) > 1.5 * _mean("iot.air_quality", "o3", 3)
    rng = random.Random(9)
    for i in range(500):
        v = generate_values("iot.air_quality", rng, ts_ms=T0 + i * 600_000, device_id="aq")
        assert float(v["pm10"]) >= float(v["pm2_5"])


def test_noise_is_louder_by_day() -> None:
    assert _mean("iot.noise", "laeq_db", 8) > _mean("iot.noise", "laeq_db", 3) + 5


def _pearson(xs: list[float], ys: list[float]) -> float:
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    cov = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    vx = sum((x - mx) ** 2 for x in xs)
    vy = sum((y - my) ** 2 for y in ys)
    return cov / math.sqrt(vx * vy)


def test_cell_kpis_are_correlated() -> None:
    rng = random.Random(11)
    samples = [
        generate_values("5g.cell_kpi", rng, ts_ms=T0 + i * 60_000, device_id=f"ue-{i % 200}")
        for i in range(2000)
    ]
    ue = [s for s in samples if s["source"] == "ue"]
    assert len(ue) > 200
    sinr = [float(s["sinr_db"]) for s in ue]
    assert _pearson(sinr, [float(s["dl_mbps"]) for s in ue]) > 0.6
    assert _pearson(sinr, [float(s["ul_mbps"]) for s in ue]) > 0.5
    assert _pearson(sinr, [float(s["rsrp_dbm"]) for s in ue]) > 0.6
    assert _pearson(sinr, [float(s["latency_ms"]) for s in ue]) < -0.2
    for s in samples:
        cell_id = str(s["cell_id"])
        assert len(cell_id) == 9 and int(cell_id, 16) < 2**36  # a 36-bit NCI
        sst, sd = str(s["slice"]).split("-")
        assert sst in {"1", "2", "3"} and len(sd) == 6 and int(sd, 16) >= 0
        assert s["source"] in {"gnb", "ue"}


def test_energy_meter_is_monotonic() -> None:
    rng = random.Random(2)
    for device in ("meter-1", "meter-2", "meter-3"):
        last = -1.0
        for step in range(0, 3 * DAY, 7 * 60_000):
            kwh = generate_values("iot.energy_meter", rng, ts_ms=T0 + step, device_id=device)["kwh"]
            assert isinstance(kwh, float) and kwh >= last
            last = kwh
        assert last > 0


def test_device_profile_is_stable() -> None:
    bays = {
        generate_values("iot.parking", random.Random(s), ts_ms=T0 + s * HOUR, device_id="bay-9")[
            "bay_id"
        ]
        for s in range(20)
    }
    assert len(bays) == 1


# ------------------------------------------------------------------------------ signer


@pytest.fixture
def signer_mod() -> ModuleType:
    # Imported here so a missing anchor.envelope fails exactly these tests, by name.
    from devices import signer

    return signer


@pytest.fixture
def envelope_mod() -> ModuleType:
    from anchor import envelope

    return envelope


@pytest.fixture(params=[(k, f) for k in KEY_TYPES for f in ("cose-sign1", "jws")], ids="-".join)
def key_and_format(request: pytest.FixtureRequest) -> tuple[PrivateKey, str]:
    key_type, fmt = request.param
    return PrivateKey.generate(key_type), fmt


def _values(i: int) -> dict[str, int | float | str | bool]:
    return generate_values("5g.cell_kpi", random.Random(i), ts_ms=T0 + i, device_id="gnb-1")


def test_chain_links_every_envelope_to_its_predecessor(
    signer_mod: ModuleType, envelope_mod: ModuleType, key_and_format: tuple[PrivateKey, str]
) -> None:
    key, fmt = key_and_format
    signer = signer_mod.DeviceSigner("gnb-1", key, format=fmt)
    assert signer.seq == 0 and signer.prev == bytes(32)
    envelopes = [signer.sign("5g.cell_kpi", _values(i), ts_ms=T0 + i) for i in range(12)]
    assert signer.seq == 12 and signer.prev == leaf_hash(envelopes[-1])

    expected_prev = bytes(32)
    for i, raw in enumerate(envelopes):
        env = envelope_mod.verify_envelope(raw, key.public_key)
        assert env.format == fmt
        assert env.kid == key.public_key.kid
        assert env.raw == raw
        r = env.reading
        assert (r.device_id, r.seq, r.ts, r.kind) == ("gnb-1", i + 1, T0 + i, "5g.cell_kpi")
        assert dict(r.values) == _values(i)
        assert r.prev == expected_prev
        expected_prev = leaf_hash(raw)


def test_default_algorithms(
    signer_mod: ModuleType, envelope_mod: ModuleType, key_and_format: tuple[PrivateKey, str]
) -> None:
    key, fmt = key_and_format
    raw = signer_mod.DeviceSigner("d", key, format=fmt).sign("iot.noise", {"laeq_db": 50.0})
    env = envelope_mod.parse_envelope(raw)
    # DESIGN: devices should send the fully-specified Ed25519 (-19 / "Ed25519"), or ES256.
    assert env.alg == ("Ed25519" if key.key_type == "Ed25519" else "ES256")


def test_envelope_fails_under_another_key(signer_mod: ModuleType, envelope_mod: ModuleType) -> None:
    key = PrivateKey.generate()
    raw = signer_mod.DeviceSigner("d", key).sign("iot.noise", {"laeq_db": 50.0})
    with pytest.raises(AnchorError):
        envelope_mod.verify_envelope(raw, PrivateKey.generate().public_key)


def test_sign_uses_the_clock_when_no_timestamp(
    signer_mod: ModuleType, envelope_mod: ModuleType
) -> None:
    key = PrivateKey.generate()
    signer = signer_mod.DeviceSigner("d", key, clock=lambda: 1_700_000_000_123)
    env = envelope_mod.parse_envelope(signer.sign("iot.parking", {"occupied": True}))
    assert env.reading.ts == 1_700_000_000_123


def test_extra_keys_are_signed(signer_mod: ModuleType, envelope_mod: ModuleType) -> None:
    key = PrivateKey.generate()
    raw = signer_mod.DeviceSigner("d", key).sign(
        "iot.noise", {"laeq_db": 50.0}, extra={"fw": "1.2"}
    )
    assert dict(envelope_mod.verify_envelope(raw, key.public_key).reading.extra) == {"fw": "1.2"}


@pytest.mark.parametrize("fmt", ["cose-sign1", "jws"])
def test_state_survives_a_restart(
    signer_mod: ModuleType, envelope_mod: ModuleType, tmp_path: Path, fmt: str
) -> None:
    key = PrivateKey.generate("P-256")
    state_path = tmp_path / "state" / "gnb-1.json"
    first = signer_mod.DeviceSigner.open("gnb-1", key, state_path=state_path, format=fmt)
    envelopes = [first.sign("5g.cell_kpi", _values(i), ts_ms=T0 + i) for i in range(5)]

    doc = json.loads(state_path.read_text())
    assert doc == {"device_id": "gnb-1", "seq": 5, "prev": leaf_hash(envelopes[-1]).hex()}
    assert not [p for p in state_path.parent.iterdir() if p.name.endswith(".tmp")]

    del first  # the "restart": nothing survives but the file
    second = signer_mod.DeviceSigner.open("gnb-1", key, state_path=state_path, format=fmt)
    assert second.seq == 5
    raw = second.sign("5g.cell_kpi", _values(5), ts_ms=T0 + 5)
    r = envelope_mod.verify_envelope(raw, key.public_key).reading
    assert r.seq == 6
    assert r.prev == leaf_hash(envelopes[-1])
    assert json.loads(state_path.read_text())["seq"] == 6


def test_state_is_saved_before_the_envelope_is_returned(
    signer_mod: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_path = tmp_path / "s.json"
    signer = signer_mod.DeviceSigner.open("d", PrivateKey.generate(), state_path=state_path)
    saved: list[int] = []
    real_save = signer_mod.save_state

    def spy(path: Path, state: Any) -> None:
        real_save(path, state)
        saved.append(state.seq)

    monkeypatch.setattr(signer_mod, "save_state", spy)
    for i in range(3):
        signer.sign("iot.noise", {"laeq_db": 50.0})
        assert saved == list(range(1, i + 2))  # already on disk when sign() returned


def test_failed_save_burns_the_seq_and_returns_nothing(
    signer_mod: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_path = tmp_path / "s.json"
    signer = signer_mod.DeviceSigner.open("d", PrivateKey.generate(), state_path=state_path)
    signer.sign("iot.noise", {"laeq_db": 50.0})

    def broken(path: Path, state: Any) -> None:
        raise signer_mod.DeviceStateError("disk full", reason="state_unwritable")

    monkeypatch.setattr(signer_mod, "save_state", broken)
    with pytest.raises(signer_mod.DeviceStateError) as exc:
        signer.sign("iot.noise", {"laeq_db": 51.0})
    assert exc.value.reason == "state_unwritable"
    monkeypatch.undo()
    # Seq 2 may have reached the disk before the failure: it is never handed out again.
    signer.sign("iot.noise", {"laeq_db": 52.0})
    assert signer.seq == 3
    assert json.loads(state_path.read_text())["seq"] == 3


def test_rejected_reading_does_not_advance_the_chain(signer_mod: ModuleType) -> None:
    signer = signer_mod.DeviceSigner("d", PrivateKey.generate())
    signer.sign("iot.noise", {"laeq_db": 50.0})
    before = signer.state
    with pytest.raises(AnchorError):
        signer.sign("iot.noise", {"laeq_db": float("nan")})
    assert signer.state == before


def test_state_file_of_another_device_is_refused(signer_mod: ModuleType, tmp_path: Path) -> None:
    state_path = tmp_path / "s.json"
    key = PrivateKey.generate()
    signer_mod.DeviceSigner.open("dev-a", key, state_path=state_path).sign("iot.noise", {"x": 1})
    with pytest.raises(signer_mod.DeviceStateError) as exc:
        signer_mod.DeviceSigner.open("dev-b", key, state_path=state_path)
    assert exc.value.reason == "state_device_mismatch"


@pytest.mark.parametrize(
    "content",
    [
        "",
        "{",
        "[]",
        '{"device_id": "d", "seq": 1}',
        '{"device_id": "d", "seq": -1, "prev": "' + "00" * 32 + '"}',
        '{"device_id": "d", "seq": true, "prev": "' + "11" * 32 + '"}',
        '{"device_id": "d", "seq": 1.5, "prev": "' + "11" * 32 + '"}',
        '{"device_id": "d", "seq": 3, "prev": "' + "AB" * 32 + '"}',
        '{"device_id": "d", "seq": 3, "prev": "' + "ab" * 31 + '"}',
        '{"device_id": "d", "seq": 0, "prev": "' + "ab" * 32 + '"}',
        '{"device_id": "../d", "seq": 3, "prev": "' + "ab" * 32 + '"}',
    ],
)
def test_damaged_state_is_refused_not_reset(
    signer_mod: ModuleType, tmp_path: Path, content: str
) -> None:
    # Restarting at seq 1 after damage would sign a seq twice; refusing is the only safe answer.
    state_path = tmp_path / "s.json"
    state_path.write_text(content)
    with pytest.raises(signer_mod.DeviceStateError) as exc:
        signer_mod.DeviceSigner.open("d", PrivateKey.generate(), state_path=state_path)
    assert exc.value.reason in {"state_invalid", "device_id_invalid"}


def test_constructor_with_a_state_path_resumes_too(
    signer_mod: ModuleType, envelope_mod: ModuleType, tmp_path: Path
) -> None:
    key = PrivateKey.generate()
    state_path = tmp_path / "s.json"
    first = signer_mod.DeviceSigner("d", key, state_path=state_path)
    last = [first.sign("iot.noise", {"laeq_db": 50.0}) for _ in range(3)][-1]
    second = signer_mod.DeviceSigner("d", key, state_path=state_path)
    r = envelope_mod.parse_envelope(second.sign("iot.noise", {"laeq_db": 50.0})).reading
    assert (r.seq, r.prev) == (4, leaf_hash(last))
    # An explicit state that contradicts the file could rewind the chain: refused.
    stale = signer_mod.DeviceState("d", seq=1, prev=b"\x01" * 32)
    with pytest.raises(signer_mod.DeviceStateError) as exc:
        signer_mod.DeviceSigner("d", key, state=stale, state_path=state_path)
    assert exc.value.reason == "state_conflict"


def test_in_memory_signer_writes_nothing(
    signer_mod: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    signer = signer_mod.DeviceSigner("sim-1", PrivateKey.generate())
    for _ in range(3):
        signer.sign("iot.noise", {"laeq_db": 50.0})
    assert signer.state_path is None
    assert list(tmp_path.iterdir()) == []


def test_signer_resumes_from_an_explicit_state(
    signer_mod: ModuleType, envelope_mod: ModuleType
) -> None:
    key = PrivateKey.generate()
    state = signer_mod.DeviceState("d", seq=41, prev=b"\x07" * 32)
    raw = signer_mod.DeviceSigner("d", key, state=state).sign("iot.noise", {"laeq_db": 50.0})
    r = envelope_mod.verify_envelope(raw, key.public_key).reading
    assert (r.seq, r.prev) == (42, b"\x07" * 32)
    with pytest.raises(signer_mod.DeviceStateError) as exc:
        signer_mod.DeviceSigner("other", key, state=state)
    assert exc.value.reason == "state_device_mismatch"


def test_unknown_format_is_refused(signer_mod: ModuleType) -> None:
    with pytest.raises(signer_mod.DeviceStateError) as exc:
        signer_mod.DeviceSigner("d", PrivateKey.generate(), format="xml-dsig")
    assert exc.value.reason == "format_invalid"


def test_threads_never_share_a_seq(signer_mod: ModuleType, envelope_mod: ModuleType) -> None:
    key = PrivateKey.generate()
    signer = signer_mod.DeviceSigner("d", key)
    out: list[bytes] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(25):
            raw = signer.sign("iot.noise", {"laeq_db": 50.0})
            with lock:
                out.append(raw)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    by_seq = {envelope_mod.parse_envelope(raw).reading.seq: raw for raw in out}
    assert sorted(by_seq) == list(range(1, 101))
    for seq in range(2, 101):
        assert envelope_mod.parse_envelope(by_seq[seq]).reading.prev == leaf_hash(by_seq[seq - 1])


def test_keystore_key_signs_through_the_signer(
    signer_mod: ModuleType, envelope_mod: ModuleType, tmp_path: Path
) -> None:
    # The path a real device takes: key file -> signer -> envelope -> registry's public JWK.
    files = generate_device_key(tmp_path, "gnb-42", key_type="P-256")
    signer = signer_mod.DeviceSigner.open(
        "gnb-42", load_private_key(files.private_pem), state_path=tmp_path / "gnb-42.state.json"
    )
    raw = signer.sign("5g.cell_kpi", _values(0))
    env = envelope_mod.verify_envelope(raw, load_public_jwk(files.public_jwk))
    assert env.kid == files.kid
