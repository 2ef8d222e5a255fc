"""`cityanchor sign`'s seq/prev state is the device's, not its key's (issue 14 item 7).

Before, the state file was named after the key path (`KEY.DEVICE.state.json`): after a key
rotation the device restarted at seq 1, which the ingestor refuses as a replay. Now it is
`DEVICE.state.json` in the key's directory, and an old key-path file is moved there.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from anchor.cli.commands import main as cli_main
from anchor.envelope import parse_envelope
from anchor.merkle import leaf_hash
from devices.signer import DeviceState, DeviceStateError, adopt_legacy_state, load_state, save_state

DEVICE = "aq-0001"


def _argv(keys: Path, out: Path) -> list[str]:
    key = str(keys / f"{DEVICE}.key.pem")
    return ["sign", "--key", key, "--device-id", DEVICE, "--kind", "iot.air_quality",
            "--values", '{"pm2_5": 12.5}', "--out", str(out)]  # fmt: skip


def _sign(keys: Path, out: Path) -> tuple[int, bytes]:
    """Sign one reading as README shows it; returns its seq and prev."""
    assert cli_main(_argv(keys, out)) == 0
    reading = parse_envelope(out.read_bytes()).reading
    return reading.seq, reading.prev


def test_readme_sign_example_names_what_keygen_writes(tmp_path: Path) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    line = next(x for x in readme.splitlines() if x.startswith("cityanchor sign --key"))
    key_path = line.split("--key ", 1)[1].split()[0]
    keys = tmp_path / "keys"
    assert cli_main(["keygen", "--device-id", DEVICE, "--out", str(keys)]) == 0
    assert (tmp_path / key_path).is_file(), f"README signs with {key_path}; keygen wrote " + str(
        sorted(p.name for p in keys.iterdir())
    )


def test_a_rotated_key_continues_the_seq(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert cli_main(["keygen", "--device-id", DEVICE, "--out", str(keys)]) == 0
    assert _sign(keys, tmp_path / "r1.cbor")[0] == 1
    assert _sign(keys, tmp_path / "r2.cbor")[0] == 2
    assert (keys / f"{DEVICE}.state.json").is_file()

    # Rotation: the old key goes aside (keygen never overwrites one), a new one takes its place.
    (tmp_path / "old").mkdir()
    for f in keys.glob(f"{DEVICE}.*.pem"):
        f.rename(tmp_path / "old" / f.name)
    (keys / f"{DEVICE}.jwk").unlink(missing_ok=True)
    assert cli_main(["keygen", "--device-id", DEVICE, "--out", str(keys)]) == 0
    seq, prev = _sign(keys, tmp_path / "r3.cbor")
    assert seq == 3  # not 1: the ingestor would refuse seq 1 again as a replay
    assert prev == leaf_hash((tmp_path / "r2.cbor").read_bytes())


def test_a_key_path_state_file_is_moved_to_the_device_name(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert cli_main(["keygen", "--device-id", DEVICE, "--out", str(keys)]) == 0
    legacy = Path(f"{keys / f'{DEVICE}.key.pem'}.{DEVICE}.state.json")
    save_state(legacy, DeviceState(DEVICE, seq=41, prev=bytes(range(32))))
    seq, prev = _sign(keys, tmp_path / "r.cbor")
    assert (seq, prev) == (42, bytes(range(32)))
    assert not legacy.exists()
    state = load_state(keys / f"{DEVICE}.state.json")
    assert state is not None and state.seq == 42


def test_two_disagreeing_state_files_are_refused(tmp_path: Path) -> None:
    key = tmp_path / f"{DEVICE}.key.pem"
    save_state(Path(f"{key}.{DEVICE}.state.json"), DeviceState(DEVICE, seq=3, prev=bytes(32 * [1])))
    save_state(tmp_path / f"{DEVICE}.state.json", DeviceState(DEVICE, seq=7, prev=bytes(32 * [2])))
    with pytest.raises(DeviceStateError) as exc:
        adopt_legacy_state(key, DEVICE)
    assert exc.value.reason == "state_conflict"
    # Agreeing copies: the old name simply goes.
    shutil.copy(tmp_path / f"{DEVICE}.state.json", Path(f"{key}.{DEVICE}.state.json"))
    assert adopt_legacy_state(key, DEVICE) == tmp_path / f"{DEVICE}.state.json"
    assert not Path(f"{key}.{DEVICE}.state.json").exists()


def test_the_cli_reports_a_state_conflict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys"
    assert cli_main(["keygen", "--device-id", DEVICE, "--out", str(keys)]) == 0
    key = keys / f"{DEVICE}.key.pem"
    save_state(Path(f"{key}.{DEVICE}.state.json"), DeviceState(DEVICE, seq=3, prev=bytes(32 * [1])))
    save_state(keys / f"{DEVICE}.state.json", DeviceState(DEVICE, seq=7, prev=bytes(32 * [2])))
    assert cli_main(_argv(keys, tmp_path / "r.cbor")) == 1
    assert "[state_conflict] two state files" in capsys.readouterr().err
    assert json.loads((keys / f"{DEVICE}.state.json").read_text())["seq"] == 7  # untouched
