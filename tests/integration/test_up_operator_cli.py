"""Issue 14, against a real ``cityanchor up``: the operator's first hour.

- ``up.json`` names the config file, and ``CITYANCHOR_CONFIG=that file`` gives any command the
  same settings (item 9);
- ``anchor run`` while ``up``'s anchoring job leads answers at once, as ``POST /v1/anchors/run``
  answers 409, and ``-v`` shows what it did (item 10; before: a silent 90 s wait);
- the services' logs are JSON lines with time, level, logger, message and fields, rotated by
  size, with no password in any of them (item 11);
- a start that fails removes the data dir it created (item 1).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from anchor.local import free_port

REPO = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYANCHOR_")}
    return {**env, "PYTHONPATH": str(REPO), **extra}


def _cityanchor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "anchor", *args],
        capture_output=True,
        text=True,
        env=env or _env(),
        cwd=REPO,
        timeout=120,
        check=False,
    )


def _post(url: str, token: str) -> tuple[int, Any]:
    req = urllib.request.Request(
        url, data=b"", method="POST", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_up_config_file_anchor_conflict_and_json_logs(tmp_path: Path, services_dir: Path) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="up-", dir=services_dir))
    log = tmp_path / "up.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "anchor", "up", "--data-dir", str(data_dir),
             "--anchor-period", "1s", "--log-max-bytes", "1500", "--log-backups", "2"],
            env=_env(), stdout=out, stderr=out, cwd=REPO,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (data_dir / "up.json").exists():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        up = json.loads((data_dir / "up.json").read_text())

        # Item 9: up.json names the settings file; CITYANCHOR_CONFIG points a command at it.
        assert up["config"] == str(data_dir / "config.toml")
        shown = _cityanchor("config", "show", env=_env(CITYANCHOR_CONFIG=up["config"]))
        assert shown.returncode == 0, shown.stderr
        settings = json.loads(shown.stdout)
        pg_port = json.loads((data_dir / "ports.json").read_text())["postgres"]
        assert f"@127.0.0.1:{pg_port}/" in settings["database_url"]
        assert settings["mqtt_url"] == up["mqtt"]

        # Item 10: the HTTP answer first (it is what the CLI must match), once the job leads.
        token = Path(up["token_file"]).read_text().strip()
        deadline = time.monotonic() + 60
        while (answer := _post(up["http"] + "/v1/anchors/run", token))[0] != 409:
            assert time.monotonic() < deadline, answer
            time.sleep(0.5)
        cli = _cityanchor("-v", "anchor", "run", "--config", up["config"])
        assert cli.returncode == 1, cli.stdout + cli.stderr
        assert f"cityanchor: error: [conflict] {answer[1]['detail']}" in cli.stderr
        assert "anchor run: taking the anchoring lock" in cli.stderr  # -v: what it did
        assert cli.stdout == ""

        # Item 11: JSON lines, rotated (the start-up lines alone pass 1500 bytes).
        logs = data_dir / "logs"
        deadline = time.monotonic() + 60
        while not (logs / "api.log.1").exists():
            assert time.monotonic() < deadline, sorted(p.name for p in logs.iterdir())
            time.sleep(0.5)
        secrets = [
            (data_dir / "postgres" / "service.password").read_text().strip(),
            (data_dir / "keys" / "mqtt-ingest.password").read_text().strip(),
            (data_dir / "keys" / "mqtt-admin.password").read_text().strip(),
            token,
        ]
        seen: set[str] = set()
        for path in sorted(logs.glob("*.log*")):
            text = path.read_text()
            for secret in secrets:
                assert secret not in text, path
            for line in text.splitlines():
                if not line.strip():
                    continue
                doc = json.loads(line)  # every line of every service is one JSON object
                assert {"time", "level", "logger", "message"} <= set(doc), line
                assert doc["time"].endswith("Z")
                seen.add(doc["message"])
        assert "api starting" in seen  # "api starting: {settings}" -> message + fields
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_a_failed_start_removes_the_data_dir_it_created(tmp_path: Path, services_dir: Path) -> None:
    """The servers start, then the external chain cannot be reached: nothing is left behind."""
    parent = Path(tempfile.mkdtemp(prefix="fail-", dir=services_dir))
    os.chmod(parent, 0o711)
    data_dir = parent / "d"
    key = tmp_path / "chain.key"
    key.write_text("0x" + "11" * 32 + "\n")
    rpc = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    up = _cityanchor(
        "up", "--data-dir", str(data_dir), "--rpc", rpc, "--chain-id", "5",
        "--chain-key-file", str(key),
    )  # fmt: skip
    assert up.returncode != 0, up.stdout
    assert "removing" in up.stdout, up.stdout + up.stderr
    assert not data_dir.exists()
    # An existing data dir is never removed, whatever happens.
    data_dir.mkdir()
    (data_dir / "mine.txt").write_text("keep")
    again = _cityanchor(
        "up", "--data-dir", str(data_dir), "--rpc", rpc, "--chain-id", "5",
        "--chain-key-file", str(key),
    )  # fmt: skip
    assert again.returncode != 0
    assert (data_dir / "mine.txt").read_text() == "keep"


def test_a_requested_http_port_in_use_is_refused_before_anything_starts(
    services_dir: Path,
) -> None:
    """Before: the API was started on the taken port and retried until "API did not become
    ready" a minute later, with the cause only in logs/api.log."""
    parent = Path(tempfile.mkdtemp(prefix="busy-", dir=services_dir))
    os.chmod(parent, 0o711)
    data_dir = parent / "d"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        up = _cityanchor("up", "--data-dir", str(data_dir), "--http-port", str(port))
    assert up.returncode == 2, up.stdout + up.stderr
    assert f"cityanchor: error: --http-port {port} is in use by another program" in up.stderr
    assert "PostgreSQL" not in up.stdout  # no server was started
    assert not data_dir.exists()
