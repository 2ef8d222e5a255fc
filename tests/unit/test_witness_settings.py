"""Witness settings (issue 13): [[witnesses]] in the config file, the quorum rules, and the usage
errors of `cityanchor up --witness URL=VKEY_FILE` (exit 2 before anything starts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from anchor.cli.commands import main as cli_main
from anchor.cli.up_options import UpOptions
from anchor.cosignature import generate_cosigner_key
from anchor.errors import UsageError
from anchor.host.config import Settings, WitnessSettings, load_settings, settings_to_toml

W1, W2 = (generate_cosigner_key(f"w{i}.witness.example") for i in (1, 2))


def test_witnesses_round_trip_through_the_config_file(tmp_path: Path) -> None:
    settings = Settings(
        witnesses=(
            WitnessSettings("https://w1.example", W1.verifier.vkey()),
            WitnessSettings("http://127.0.0.1:7380/", W2.verifier.vkey()),
        ),
        witness_quorum=2,
        witness_anchor_quorum=1,
        witness_mode="anchor",
    )
    path = tmp_path / "c.toml"
    path.write_text(settings_to_toml(settings))
    assert load_settings(toml_path=path, env={}) == settings
    assert settings.witnesses[0].verifier == W1.verifier


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[witnesses]]\nurl = "ftp://w"\nvkey = "{v1}"\n', "http:// or https://"),
        ('[[witnesses]]\nurl = "http://w?x=1"\nvkey = "{v1}"\n', "no query"),
        ('[[witnesses]]\nurl = "http://w"\nvkey = "nope"\n', "bad witness key"),
        ('[[witnesses]]\nurl = "http://w"\nvkey = "{v1}"\nname = "x"\n', "unknown witness"),
        ('witness_quorum = 2\n[[witnesses]]\nurl = "http://w"\nvkey = "{v1}"\n', "never be met"),
        ("witness_anchor_quorum = 1\n", "needs at least one witness"),
        ('witness_mode = "always"\n', "witness_mode"),
        ("witness_quorum = 0\n", "at least 1"),
        (
            '[[witnesses]]\nurl = "http://a"\nvkey = "{v1}"\n'
            '[[witnesses]]\nurl = "http://b"\nvkey = "{v1}"\n',
            "once",
        ),
    ],
)
def test_bad_witness_settings_are_usage_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text.replace("{v1}", W1.verifier.vkey()))
    with pytest.raises(UsageError, match=message):
        load_settings(toml_path=path, env={})


def test_up_options_check_the_quorum(tmp_path: Path) -> None:
    one = (("http://w1", W1.verifier.vkey()),)
    with pytest.raises(UsageError, match="never be met"):
        UpOptions(tmp_path, witnesses=one, witness_quorum=2)
    with pytest.raises(UsageError, match="needs at least one"):
        UpOptions(tmp_path, witness_anchor_quorum=True)
    assert UpOptions(tmp_path, witnesses=one).witness_quorum == 1  # the default


def test_up_refuses_bad_witness_flags_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vkey = tmp_path / "w1.vkey"
    vkey.write_text(W1.verifier.vkey() + "\n")
    operator_like = tmp_path / "op.vkey"
    operator_like.write_text("op.example+12345678+AQ" + "A" * 42 + "\n")
    data_dir = tmp_path / "d"
    for flag, message in (
        (f"http://127.0.0.1:7380={tmp_path / 'missing.vkey'}", "cannot read"),
        (f"ftp://w={vkey}", "http:// or https://"),
        (str(vkey), "URL=VKEY_FILE"),
        (f"http://w={operator_like}", "witness key"),
    ):
        code = cli_main(["up", "--data-dir", str(data_dir), "--witness", flag])
        assert code == 2, flag
        assert message in capsys.readouterr().err, flag
    code = cli_main(
        [
            "up",
            "--data-dir",
            str(data_dir),
            "--witness",
            f"http://w={vkey}",
            "--witness-quorum",
            "2",
        ]
    )
    assert code == 2 and "never be met" in capsys.readouterr().err
    assert not data_dir.exists()  # refused before anything was started or written
