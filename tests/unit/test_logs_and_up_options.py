"""Issue 14 items 1, 3, 9 and 11 without services: JSON-line logs and their rotation, ``up``'s
flags checked before anything starts (nothing created), the settings file named by
CITYANCHOR_CONFIG."""

from __future__ import annotations

import json
import logging
import os
import pwd
import re
import subprocess
import sys
from pathlib import Path

import pytest

from anchor.cli.commands import main
from anchor.cli.up_options import UpOptions
from anchor.errors import UsageError
from anchor.host.config import load_settings
from anchor.host.logs import JsonLineFormatter, rotate_copytruncate

REPO = Path(__file__).resolve().parents[2]
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.makeLogRecord(
        {"name": "anchor.ingest", "levelname": "INFO", "levelno": 20, "msg": msg, "args": args}
    )
    record.__dict__.update(extra)
    return record


def test_json_lines_carry_time_level_logger_message_and_fields() -> None:
    settings = {"database_url": "postgresql://cityanchor:s3cretPw@127.0.0.1:5/ca", "batch": 7}
    line = JsonLineFormatter().format(_record("api starting: %s", json.dumps(settings)))
    doc = json.loads(line)
    assert RFC3339_UTC.match(doc["time"]), doc["time"]
    assert (doc["level"], doc["logger"], doc["message"]) == (
        "INFO",
        "anchor.ingest",
        "api starting",
    )
    assert doc["fields"]["batch"] == 7
    assert doc["fields"]["database_url"] == "postgresql://cityanchor:***@127.0.0.1:5/ca"
    assert "s3cretPw" not in line
    extra = json.loads(
        JsonLineFormatter().format(_record("sealed %d", 3, batch_id=42, mqtt_password="pw1"))
    )
    assert extra["message"] == "sealed 3"
    assert extra["fields"] == {"batch_id": 42, "mqtt_password": "***"}
    try:
        raise ValueError('token="ca_1_abcdefghijklmnop"')
    except ValueError:
        import sys as _sys

        rec = _record("failed")
        rec.exc_info = _sys.exc_info()
    failed = json.loads(JsonLineFormatter().format(rec))
    assert "ValueError" in failed["exc"] and "abcdefghijklmnop" not in failed["exc"]


def test_log_format_json_and_log_file_rotate(tmp_path: Path) -> None:
    """The flags every command takes: a real process writes JSON lines to a rotated file."""
    log_file = tmp_path / "svc.log"
    code = (
        "import logging, sys\n"
        "from anchor.cli.commands import main\n"
        "from anchor.cli import commands\n"
        "rc = main(sys.argv[1:])\n"
        "for i in range(60): logging.getLogger('anchor.x').warning('line %d %s', i, 'x' * 40)\n"
        "sys.exit(rc)\n"
    )
    subprocess.run(
        [sys.executable, "-c", code, "--log-format", "json", "--log-file", str(log_file),
         "--log-max-bytes", "1000", "--log-backups", "2", "config", "show"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True,
        capture_output=True, timeout=120,
    )  # fmt: skip
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["svc.log", "svc.log.1", "svc.log.2"]
    for path in tmp_path.iterdir():
        assert path.stat().st_size <= 1000
        for line in path.read_text().splitlines():
            assert json.loads(line)["logger"] == "anchor.x"


def test_rotate_copytruncate_keeps_the_writer_appending(tmp_path: Path) -> None:
    path = tmp_path / "api.log"
    with path.open("ab") as writer:  # how up's children hold their log
        writer.write(b"a" * 100)
        writer.flush()
        assert not rotate_copytruncate(path, max_bytes=100, backups=2)
        writer.write(b"b")
        writer.flush()
        assert rotate_copytruncate(path, max_bytes=100, backups=2)
        writer.write(b"after\n")
        writer.flush()
    assert path.read_bytes() == b"after\n"  # appended at the new end, no hole
    assert (tmp_path / "api.log.1").read_bytes() == b"a" * 100 + b"b"
    path.write_bytes(b"c" * 200)
    assert rotate_copytruncate(path, max_bytes=100, backups=2)
    assert (tmp_path / "api.log.2").read_bytes().endswith(b"b")
    assert (tmp_path / "api.log.1").read_bytes() == b"c" * 200


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--http-port", "99999"], "not in 1..65535"),
        (["--mqtt-port", "0"], "not in 1..65535"),
        (["--chain-port", "x"], "not a port number"),
        (["--anchor-period", "0s"], "duration must be positive"),
        (["--anchor-period", "soon"], "not a duration"),
        (["--rpc", "http://127.0.0.1:8545"], "go together"),
        (["--rpc", "ftp://h", "--chain-id", "5", "--chain-key-file", "/nope"], "http(s)://"),
        (["--rpc", "http://h:1", "--chain-id", "5", "--chain-key-file", "/nope"], "not a readable"),
        (["--workers", "0"], "--workers must be at least 1"),
        (["--mqtt-port", "4000", "--http-port", "4000"], "must differ"),
        (["--operator-token-file", "/no/such/dir/t"], "no directory"),
        (["--log-max-bytes", "0"], "--log-max-bytes"),
    ],
)
def test_up_checks_every_flag_before_creating_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    """Before the fix --http-port 99999 started every server and failed 60 s later."""
    data_dir = tmp_path / "d"
    try:
        code = main(["up", "--data-dir", str(data_dir), *flags])
    except SystemExit as exc:  # argparse's own checks (type=port_number)
        code = int(str(exc.code))
    assert code == 2
    assert message in capsys.readouterr().err
    assert not data_dir.exists()


def test_up_options_refuse_a_bad_port_built_in_code() -> None:
    with pytest.raises(UsageError, match="not a port"):
        UpOptions(data_dir=Path("d"), http_port=99999)


@pytest.mark.skipif(os.geteuid() != 0, reason="the servers drop to their users only as root")
def test_up_refuses_a_data_dir_its_servers_cannot_reach(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no postgres system user")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    data_dir = locked / "x" / "d"
    assert main(["up", "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err
    assert "cannot enter" in err and "chmod o+x" in err
    assert not (locked / "x").exists()  # nothing left behind


def test_cityanchor_config_names_the_settings_file(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('database_url = "postgresql://u@db.example:5432/x"\nbatch_size = 9\n')
    env = {"CITYANCHOR_CONFIG": str(config), "CITYANCHOR_BATCH_SIZE": "11"}
    settings = load_settings(env=env)
    assert settings.database_url == "postgresql://u@db.example:5432/x"
    assert settings.batch_size == 11  # variables still override the file
    other = tmp_path / "other.toml"
    other.write_text("batch_size = 3\n")
    assert load_settings(toml_path=other, env={"CITYANCHOR_CONFIG": str(config)}).batch_size == 3
    assert load_settings(env={"CITYANCHOR_CONFIG": ""}).batch_size == 1000
