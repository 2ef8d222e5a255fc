"""Unit tests for anchor.host.config: defaults < TOML file < environment < flags, and bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from anchor.errors import UsageError
from anchor.host.config import (
    CONFIG_FILE_LIMIT,
    ENV_PREFIX,
    ChainSettings,
    Settings,
    load_settings,
    settings_to_toml,
)
from anchor.host.redact import MASK


def write(tmp_path: Path, text: str, name: str = "c.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_with_an_empty_environment() -> None:
    assert load_settings(env={}) == Settings()
    assert Settings().chains == ()
    assert Settings().clock_skew_past_ms == 7 * 24 * 3_600_000


def test_nothing_is_read_from_the_process_environment_when_env_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV_PREFIX + "BATCH_SIZE", "7")
    assert load_settings(env={}).batch_size == 1000
    assert load_settings().batch_size == 7  # env=None means os.environ


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    path = write(tmp_path, 'batch_size = 10\nbatch_age_ms = 20\nlog_origin = "file"\n')
    env = {"CITYANCHOR_BATCH_AGE_MS": "30", "CITYANCHOR_LOG_ORIGIN": "env"}
    s = load_settings(toml_path=path, env=env, overrides={"log_origin": "flag", "batch_size": None})
    assert (s.batch_size, s.batch_age_ms, s.log_origin) == (10, 30, "flag")


def test_environment_integers_are_parsed() -> None:
    s = load_settings(env={"CITYANCHOR_INFLIGHT_WINDOW": "12", "OTHER": "x"})
    assert s.inflight_window == 12


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"CITYANCHOR_BATCH_SIZE": "ten"}, "CITYANCHOR_BATCH_SIZE: batch_size must be an integer"),
        ({"CITYANCHOR_BATCH_SIZE": ""}, "must be an integer"),
    ],
)
def test_bad_environment_values_name_their_variable(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(UsageError) as exc:
        load_settings(env=env)
    assert fragment in exc.value.detail
    assert exc.value.reason == "usage"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("batch_size = true\n", "batch_size must be an integer, got True"),
        ('batch_size = "x"\n', "batch_size must be an integer"),
        ("log_origin = 3\n", "log_origin must be a string, got 3"),
        ("no_such_setting = 1\n", "unknown setting 'no_such_setting'"),
        ("batch_size = \n", "is not valid TOML"),
        ('chains = "x"\n', "chains must be [[chains]] tables"),
        ('[[chains]]\nname = "a"\nbogus = 1\n', "unknown chain setting 'bogus'"),
        ('[[chains]]\nname = "a"\n[[chains]]\nname = "a"\n', "chain names must be unique"),
        ('[[chains]]\nfee_mode = "free"\n', "fee_mode must be one of"),
        ("[[chains]]\nconfirmations = 0\n", "confirmations must be at least 1"),
    ],
)
def test_bad_files_are_usage_errors(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(UsageError) as exc:
        load_settings(toml_path=write(tmp_path, text), env={})
    assert fragment in exc.value.detail


def test_file_that_is_not_utf8_or_too_large_or_missing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"log_origin = '\xff'\n")
    with pytest.raises(UsageError, match="not UTF-8"):
        load_settings(toml_path=bad, env={})
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (CONFIG_FILE_LIMIT + 1))
    with pytest.raises(UsageError, match="larger than"):
        load_settings(toml_path=big, env={})
    with pytest.raises(UsageError, match="cannot read config"):
        load_settings(toml_path=tmp_path / "missing.toml", env={})


def test_unknown_flag_is_refused() -> None:
    with pytest.raises(UsageError, match="unknown setting 'nope'"):
        load_settings(env={}, overrides={"nope": 1})
    with pytest.raises(UsageError, match="--batch-size: batch_size must be an integer"):
        load_settings(env={}, overrides={"batch_size": "x"})


def test_chain_from_file_and_environment(tmp_path: Path) -> None:
    path = write(tmp_path, '[[chains]]\nname = "main"\nchain_id = 5\nconfirmations = 3\n')
    s = load_settings(toml_path=path, env={"CITYANCHOR_CHAIN_ID": "7"})
    assert s.chains == (ChainSettings(name="main", chain_id=7, confirmations=3),)
    # Variables alone define one backend named "evm".
    s = load_settings(env={"CITYANCHOR_CHAIN_RPC_URL": "http://node:8545"})
    assert s.chains == (ChainSettings(rpc_url="http://node:8545"),)
    # A name the file does not have adds a backend.
    s = load_settings(toml_path=path, env={"CITYANCHOR_CHAIN_NAME": "other"})
    assert [c.name for c in s.chains] == ["main", "other"]
    with pytest.raises(UsageError, match="must be an integer"):
        load_settings(env={"CITYANCHOR_CHAIN_ID": "x"})


def test_toml_round_trip(tmp_path: Path) -> None:
    s = Settings(
        log_origin='odd "origin" \\ é',
        batch_size=3,
        chains=(ChainSettings(name="a", contract="0x" + "ab" * 20), ChainSettings(name="b")),
    )
    path = write(tmp_path, settings_to_toml(s))
    assert load_settings(toml_path=path, env={}) == s


def test_masked_hides_secrets() -> None:
    s = Settings(
        mqtt_password="hunter2",
        mqtt_admin_password="root",
        database_url="postgresql://u:pw@db/x",
    )
    shown = s.masked()
    assert shown["mqtt_password"] == MASK and shown["mqtt_admin_password"] == MASK
    assert "pw" not in shown["database_url"]
    assert shown["mqtt_username"] == ""
