"""The fleet simulator: fleet shape, exact fault accounting, and a real run through Mosquitto.

A subscriber plays a minimal ingestor (size, parse, topic, registry, signature, seq) over
everything the broker delivered, and its verdicts must equal the simulator's report exactly.
"""

from __future__ import annotations

import collections
import json
import os
import stat
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

import anchor.envelope
from anchor.envelope import (
    FORMAT_COSE,
    FORMAT_JWS,
    MAX_ENVELOPE_BYTES,
    MalformedEnvelope,
    NonCanonicalEnvelope,
    Reading,
    parse_envelope,
    sign_reading,
    verify_envelope,
)
from anchor.errors import AnchorError, UsageError
from anchor.keys import PrivateKey, PublicKey
from anchor.local import MosquittoServer
from anchor.merkle import leaf_hash
from devices.publisher import parse_mqtt_url
from devices.readings import FIVEG_KINDS, IOT_KINDS
from devices.simulator import (
    FAULTS,
    SimulationConfig,
    SimulationError,
    _flip_signature,
    _sign_unbounded,
    fleet_registration,
    main,
    make_fleet,
    parse_duration,
    parse_faults,
    parse_rate,
    run_simulation,
)


class Collector:
    """Subscribes to ``city/#`` (QoS 1) and keeps (topic, payload) in arrival order."""

    def __init__(self, url: str, client_id: str) -> None:
        target = parse_mqtt_url(url)
        self.messages: list[tuple[str, bytes]] = []
        self.cond = threading.Condition()
        self.ready = threading.Event()
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
        )
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe("city/#", qos=1)
        c.on_subscribe = lambda cl, u, mid, rcs, p: self.ready.set()
        c.on_message = self._on_message
        c.connect(target.host, target.port)
        c.loop_start()
        self.client = c
        assert self.ready.wait(10)

    def _on_message(self, c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self.cond.notify_all()

    def wait_for_count(self, n: int, timeout: float = 15) -> list[tuple[str, bytes]]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.messages) >= n, timeout)
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ---------------------------------------------------------------------------- parsing helpers
def test_parse_rate_duration_faults() -> None:
    assert parse_rate("5000/s") == 5000
    assert parse_rate("5k/s") == 5000
    assert parse_rate("300/min") == 5
    assert parse_rate("42") == 42
    assert parse_duration("60s") == 60
    assert parse_duration("2m") == 120
    assert parse_duration("1m30s") == 90
    assert parse_duration("500ms") == 0.5
    assert parse_duration("7") == 7
    assert parse_faults("bad_signature=0.01, replayed_seq=2%") == {
        "bad_signature": 0.01,
        "replayed_seq": 0.02,
    }
    for bad_rate in ("fast", "0/s", "5000/fortnight"):
        with pytest.raises(UsageError):
            parse_rate(bad_rate)
    for bad_duration in ("", "1 minute", "s"):
        with pytest.raises(UsageError):
            parse_duration(bad_duration)
    for bad_faults in ("nope=0.1", "bad_signature", "bad_signature=lots"):
        with pytest.raises(UsageError):
            parse_faults(bad_faults)


def test_config_is_validated() -> None:
    for kwargs in (
        {"faults": {"bad_signature": 0.5, "malformed": 0.5}},
        {"faults": {"gremlins": 0.1}},
        {"districts": ("a/b",)},
        {"rate": 0},
        {"qos": 0},
        {"mqtt_url": "http://x"},
    ):
        with pytest.raises(AnchorError) as exc:
            SimulationConfig(**kwargs)
        assert exc.value.reason == "usage"


# ---------------------------------------------------------------------------------- the fleet
def test_fleet_shape_and_registration() -> None:
    fleet = make_fleet(
        40, seed=7, districts=("nanshan", "futian"), fiveg_share=0.2, p256_share=0.25,
        jws_share=0.5,
    )  # fmt: skip
    ids = [d.device_id for d in fleet]
    assert len(set(ids)) == 40
    assert ids[0] == "aq-nanshan-00000" and ids[1] == "noise-futian-00001"
    kinds = collections.Counter(d.kind for d in fleet)
    assert kinds[FIVEG_KINDS[0]] == 8
    assert sorted(kinds) == sorted((*IOT_KINDS, *FIVEG_KINDS))
    assert max(kinds[k] for k in IOT_KINDS) - min(kinds[k] for k in IOT_KINDS) <= 1
    fiveg = [d.device_id for d in fleet if d.kind in FIVEG_KINDS]
    assert all(i.startswith(("gnb-", "ue-")) for i in fiveg) and fiveg[0].startswith("gnb-")
    assert sum(d.key_type == "P-256" for d in fleet) == 10
    assert sum(d.format == FORMAT_JWS for d in fleet) == 20
    assert collections.Counter(d.district for d in fleet) == {"nanshan": 20, "futian": 20}
    # Same seed, same fleet layout (keys are fresh).
    again = make_fleet(
        40, seed=7, districts=("nanshan", "futian"), fiveg_share=0.2, p256_share=0.25,
        jws_share=0.5,
    )  # fmt: skip
    assert [(d.device_id, d.key_type, d.format) for d in again] == [
        (d.device_id, d.key_type, d.format) for d in fleet
    ]

    reg = json.loads(json.dumps(fleet_registration(fleet)))
    assert [set(r) for r in reg] == [{"device_id", "public_key_jwk", "district", "kind"}] * 40
    for r, d in zip(reg, fleet, strict=True):
        assert r["device_id"] == d.device_id and r["kind"] == d.kind
        assert PublicKey.from_jwk(r["public_key_jwk"]).kid == d.key.public_key.kid
        assert "d" not in r["public_key_jwk"]


def test_key_dir_fleet_keeps_keys_and_chains(tmp_path: Path) -> None:
    fleet = make_fleet(3, seed=1, key_dir=tmp_path)
    for d in fleet:
        d.signer.sign(d.kind, {"x": 1}, 1)
        d.signer.sign(d.kind, {"x": 2}, 2)
    assert stat.S_IMODE(os.stat(tmp_path / f"{fleet[0].device_id}.key.pem").st_mode) == 0o600
    from devices.simulator import save_fleet_state

    save_fleet_state(fleet)
    again = make_fleet(3, seed=1, key_dir=tmp_path)
    assert [d.key.public_key for d in again] == [d.key.public_key for d in fleet]
    assert [d.signer.state for d in again] == [d.signer.state for d in fleet]
    assert all(d.signer.seq == 2 for d in again)


# ------------------------------------------------------------------------- fault envelopes
@pytest.mark.parametrize("key_type", ["Ed25519", "P-256"])
@pytest.mark.parametrize("fmt", [FORMAT_COSE, FORMAT_JWS])
def test_fault_envelope_surgery(key_type: str, fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    key = PrivateKey.generate(key_type)
    reading = Reading("aq-x-00001", 3, 1_700_000_000_000, "iot.noise", {"db": 41.5}, bytes(32))
    good = sign_reading(reading, key, format=fmt)
    if key_type == "Ed25519":  # deterministic signatures: the mirror must match byte for byte
        assert _sign_unbounded(reading, key, fmt) == good
    else:
        verify_envelope(_sign_unbounded(reading, key, fmt), key.public_key)

    flipped = _flip_signature(good)
    assert len(flipped) == len(good) and flipped != good
    with pytest.raises(AnchorError) as exc:
        verify_envelope(flipped, key.public_key)
    assert exc.value.reason == "bad_signature"

    big = Reading(
        "aq-x-00001", 3, 1, "iot.noise", {"db": 1.0}, bytes(32),
        extra={"padding": "x" * (MAX_ENVELOPE_BYTES + 1024)},
    )  # fmt: skip
    oversized = _sign_unbounded(big, key, fmt)
    assert len(oversized) > MAX_ENVELOPE_BYTES
    with pytest.raises(AnchorError) as exc:
        parse_envelope(oversized)
    assert exc.value.reason == "oversized"
    # Validly signed all the same: only the size is wrong.
    monkeypatch.setattr(anchor.envelope, "MAX_ENVELOPE_BYTES", 1 << 20)
    assert verify_envelope(oversized, key.public_key).reading.extra["padding"].startswith("x")


# --------------------------------------------------------------------------------- real runs
FAULT_SHARE = 0.02


def _judge(
    messages: list[tuple[str, bytes]], keys: dict[str, PublicKey]
) -> tuple[collections.Counter[str], list[tuple[str, int]]]:
    """A minimal ingestor: the quarantine reason of each message, and the stored readings."""
    verdicts: collections.Counter[str] = collections.Counter()
    stored: dict[tuple[str, int], bytes] = {}
    order: list[tuple[str, int]] = []
    for topic, payload in messages:
        topic_device = topic.split("/")[2]
        if len(payload) > MAX_ENVELOPE_BYTES:
            verdicts["oversized"] += 1
            continue
        try:
            env = parse_envelope(payload)
        except (MalformedEnvelope, NonCanonicalEnvelope) as exc:
            verdicts[exc.reason] += 1
            continue
        r = env.reading
        if r.device_id != topic_device:
            verdicts["topic_mismatch"] += 1
            continue
        key = keys.get(r.device_id)
        if key is None:
            verdicts["unknown_device"] += 1
            continue
        try:
            verify_envelope(env, key)
        except AnchorError as exc:
            verdicts[exc.reason] += 1
            continue
        slot = (r.device_id, r.seq)
        if slot in stored:
            verdicts["replayed_seq" if stored[slot] == payload else "seq_conflict"] += 1
            continue
        # The chain of good readings has no gaps and every prev links up.
        expected_prev = bytes(32) if r.seq == 1 else leaf_hash(stored[(r.device_id, r.seq - 1)])
        assert r.prev == expected_prev
        stored[slot] = payload
        order.append(slot)
    return verdicts, order


def test_short_run_with_every_fault(mosquitto: MosquittoServer) -> None:
    fleet = make_fleet(20, seed=11, districts=("nanshan", "futian"), p256_share=0.2, jws_share=0.5)
    config = SimulationConfig(
        mqtt_url=mosquitto.url,
        devices=20,
        rate=400,
        duration_s=2.0,
        districts=("nanshan", "futian"),
        faults=dict.fromkeys(FAULTS, FAULT_SHARE),
        seed=11,
        connections=3,
    )
    collector = Collector(mosquitto.url, "test-sim-collector")
    try:
        report = run_simulation(config, fleet, progress=False)
        messages = collector.wait_for_count(report.sent)
    finally:
        collector.close()

    # The report adds up.
    assert 600 <= report.sent <= 820, report.summary()
    assert report.sent == report.acked and report.failed == report.unacked == 0
    assert report.expected_good + sum(report.by_fault.values()) == report.sent
    assert report.expected_good == len(report.expected) == len(set(report.expected))
    assert sum(report.by_kind.values()) == report.sent
    assert len(report.faults) == sum(report.by_fault.values())
    for reason in FAULTS:
        assert abs(report.by_fault[reason] - report.sent * FAULT_SHARE) <= 2, report.by_fault
        listed = sum(f.reason == reason for f in report.faults)
        assert listed == report.by_fault[reason]
    assert report.connections == 3 and report.rate > 250

    # Exactly what was sent was delivered, topic by topic.
    assert len(messages) == report.sent
    per_topic = collections.Counter(t for t, _ in messages)
    topic_of = {d.device_id: d.topic for d in fleet}
    wanted = collections.Counter(topic_of[d] for d, _ in report.expected)
    wanted.update(f.topic for f in report.faults)
    assert per_topic == wanted

    # A minimal ingestor over the delivered messages agrees with the report, exactly.
    verdicts, stored = _judge(messages, {d.device_id: d.key.public_key for d in fleet})
    assert verdicts == collections.Counter(report.by_fault)
    assert sorted(stored) == sorted(report.expected)
    # Faults left every device's chain untouched: its good seqs are exactly 1..signer.seq.
    per_device = collections.Counter(d for d, _ in report.expected)
    assert all(per_device[d.device_id] == d.signer.seq for d in fleet)

    # Each fault has its intended property.
    replays = [f for f in report.faults if f.reason == "replayed_seq"]
    by_payload = collections.Counter(p for _, p in messages)
    assert sum(n - 1 for n in by_payload.values()) == len(replays)  # replays are byte-identical
    big = [p for _, p in messages if len(p) > MAX_ENVELOPE_BYTES]
    assert len(big) == report.by_fault["oversized"]
    ghosts = {f.device_id for f in report.faults if f.reason == "unknown_device"}
    assert ghosts and not ghosts & set(topic_of)


def test_cli_run_twice_continues_each_chain(
    mosquitto: MosquittoServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys, fleet_file = tmp_path / "keys", tmp_path / "fleet.json"
    argv = [
        "--mqtt", mosquitto.url, "--devices", "5", "--rate", "200/s", "--duration", "600ms",
        "--district", "nanshan", "--seed", "3", "--key-dir", str(keys),
        "--faults", "malformed=0.1,bad_signature=0.1",
    ]  # fmt: skip
    assert main([*argv, "--fleet-file", str(fleet_file), "--fleet-only"]) == 0
    registration = json.loads(fleet_file.read_text())
    assert len(registration) == 5

    assert main([*argv, "--report-json", str(tmp_path / "r1.json")]) == 0
    out, err = capsys.readouterr()
    assert "\rsimulate: sent" in err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["sent"] == summary["acked"] > 0

    assert main([*argv, "--no-progress", "--report-json", str(tmp_path / "r2.json")]) == 0
    assert "simulate: sent" not in capsys.readouterr().err
    first = json.loads((tmp_path / "r1.json").read_text())
    second = json.loads((tmp_path / "r2.json").read_text())
    last_seq: dict[str, int] = {}
    for device_id, seq in first["expected"]:
        last_seq[device_id] = max(seq, last_seq.get(device_id, 0))
    # The second run resumed every chain where the first left it (keys and states on disk).
    for device_id, seq in second["expected"]:
        assert seq > last_seq.get(device_id, 0)
    assert {r["device_id"] for r in registration} >= {d for d, _ in second["expected"]}
    assert second["by_fault"]["malformed"] >= 1


def test_unreachable_broker_is_connect_failed() -> None:
    from anchor.local import free_port

    fleet = make_fleet(2, seed=0)
    config = SimulationConfig(
        mqtt_url=f"mqtt://127.0.0.1:{free_port()}", duration_s=0.1, connect_timeout_s=0.5
    )
    with pytest.raises(SimulationError) as exc:
        # paho retries in the background; the simulator gives up after its connect timeout.
        run_simulation(config, fleet, progress=False)
    assert exc.value.reason == "connect_failed"
