"""Issue 10 item 9: one masking function (anchor.host.redact) for everything printed or logged."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys

import pytest

from anchor.host.config import ChainSettings, Settings
from anchor.host.redact import MASK, RedactingFormatter, redact_text, redact_url


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("mqtt://dev:MqttSecretPw@10.0.0.5:1883", "mqtt://dev:***@10.0.0.5:1883"),
        (
            "postgresql://cityanchor:Pg5ecret@127.0.0.1:5432/cityanchor",
            "postgresql://cityanchor:***@127.0.0.1:5432/cityanchor",
        ),
        (
            "postgresql://u:p%40ss@db:5432/ca?sslmode=verify-full&password=Qq1",
            "postgresql://u:***@db:5432/ca?sslmode=verify-full&password=***",
        ),
        ("https://user:RpcPass@rpc.example/v1", "https://user:***@rpc.example/v1"),
        ("https://rpc.example/?apikey=K3y&chain=1", "https://rpc.example/?apikey=***&chain=1"),
        (
            "https://rpc.example/x?access_token=T0k&x=1",
            "https://rpc.example/x?access_token=***&x=1",
        ),
        (
            "https://mainnet.infura.io/v3/9aa3d95b3bc440fa88ea12eaa4456161",
            "https://mainnet.infura.io/v3/***",
        ),
        ("https://0123456789abcdef0123456789abcdef@rpc.example/", "https://***@rpc.example/"),
        # A password with an unencoded slash (a URL parser would misread it) is still hidden.
        ("mqtt://dev:ab/cd@broker:1883", "mqtt://dev:***@broker:1883"),
        # Nothing secret: unchanged, byte for byte.
        ("mqtt://127.0.0.1:1883", "mqtt://127.0.0.1:1883"),
        ("postgresql://cityanchor@127.0.0.1:5432/ca", "postgresql://cityanchor@127.0.0.1:5432/ca"),
        ("http://127.0.0.1:8545", "http://127.0.0.1:8545"),
        ("not a url", "not a url"),
    ],
)
def test_redact_url(url: str, masked: str) -> None:
    assert redact_url(url) == masked
    assert redact_text(f"connect to {url} failed") == f"connect to {masked} failed"
    assert redact_url(masked) == masked  # idempotent


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("host=db user=ca password=hunter2 dbname=ca", "hunter2"),
        ("Authorization: Bearer ca_17_c2VjcmV0c2VjcmV0c2VjcmV0", "c2VjcmV0c2VjcmV0c2VjcmV0"),
        ("token ca_3_AbCdEfGhIjKlMnOp-_x was revoked", "AbCdEfGhIjKlMnOp-_x"),
        ('{"mqtt_password": "pw-in-json"}', "pw-in-json"),
        ("api_key=abc123", "abc123"),
        (
            "HTTPSConnectionPool(host='rpc.example', port=443): Max retries exceeded with url: "
            "/v3/9aa3d95b3bc440fa88ea12eaa4456161 (Caused by NewConnectionError)",
            "9aa3d95b3bc440fa88ea12eaa4456161",
        ),
    ],
)
def test_redact_text_hides_keys_and_tokens(text: str, secret: str) -> None:
    out = redact_text(text)
    assert secret not in out and MASK in out


def test_settings_masked_covers_every_url_and_secret() -> None:
    settings = Settings(
        database_url="postgresql://cityanchor:DbPw123@db:5432/ca",
        mqtt_url="mqtt://dev:MqttSecretPw@broker:1883",
        mqtt_password="IngestPw",
        chains=(ChainSettings(name="c", rpc_url="https://u:RpcPw@rpc.example/?apikey=ApiK3y"),),
    )
    text = json.dumps(settings.masked())
    for secret in ("DbPw123", "MqttSecretPw", "IngestPw", "RpcPw", "ApiK3y"):
        assert secret not in text
    masked = settings.masked()
    assert masked["database_url"] == "postgresql://cityanchor:***@db:5432/ca"
    assert masked["mqtt_url"] == "mqtt://dev:***@broker:1883"
    assert masked["mqtt_password"] == MASK
    assert masked["chains"][0]["rpc_url"] == "https://u:***@rpc.example/?apikey=***"
    assert masked["batch_size"] == settings.batch_size  # non-strings untouched


def test_log_formatter_masks_messages_arguments_and_tracebacks() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter("%(message)s"))
    logger = logging.getLogger("test_redact")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.error("connecting to %s", "mqtt://dev:MqttSecretPw@broker:1883")
        try:
            raise ConnectionError("postgresql://ca:DbPw123@db/ca refused")
        except ConnectionError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert "MqttSecretPw" not in out and "DbPw123" not in out
    assert "mqtt://dev:***@broker:1883" in out and "postgresql://ca:***@db/ca refused" in out


def _cityanchor(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "anchor", *args],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


def test_config_show_end_to_end_prints_no_secret(tmp_path: object) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYANCHOR_")}
    env.update(
        CITYANCHOR_MQTT_URL="mqtt://dev:MqttSecretPw@broker.example:1883",
        CITYANCHOR_DATABASE_URL="postgresql://cityanchor:DbPw123@db.example:5432/ca",
        CITYANCHOR_MQTT_PASSWORD="IngestPw",
        CITYANCHOR_CHAIN_RPC_URL="https://rpc.example/v3/9aa3d95b3bc440fa88ea12eaa4456161",
    )
    result = _cityanchor("config", "show", env=env)
    assert result.returncode == 0, result.stderr
    for secret in ("MqttSecretPw", "DbPw123", "IngestPw", "9aa3d95b3bc440fa88ea12eaa4456161"):
        assert secret not in result.stdout
    shown = json.loads(result.stdout)
    assert shown["mqtt_url"] == "mqtt://dev:***@broker.example:1883"
    assert shown["database_url"] == "postgresql://cityanchor:***@db.example:5432/ca"
    # A failure to connect (nothing listens on port 9) names no password either.
    failed = _cityanchor(
        "-v", "db", "migrate", "--database-url", "postgresql://ca:DbPw123@127.0.0.1:9/ca",
        env=env,
    )  # fmt: skip
    assert failed.returncode == 1 and "db_unavailable" in failed.stderr
    assert "DbPw123" not in failed.stdout + failed.stderr
