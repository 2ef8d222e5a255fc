"""anchor.broker.client: one broker URL parser and the one paho client factory (no broker needed:
the factory only configures a client and records where it connects)."""

from __future__ import annotations

import ssl
from typing import Any

import pytest

from anchor.broker.client import MqttTarget, create_client, parse_mqtt_url
from anchor.errors import AnchorError


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://127.0.0.1:1884", MqttTarget("127.0.0.1", 1884)),
        ("mqtt://broker", MqttTarget("broker", 1883)),
        ("mqtt://broker/", MqttTarget("broker", 1883)),
        ("MQTT://broker", MqttTarget("broker", 1883)),
        ("tcp://broker", MqttTarget("broker", 1883)),
        ("mqtts://broker", MqttTarget("broker", 8883, tls=True)),
        ("ssl://broker:9000", MqttTarget("broker", 9000, tls=True)),
        ("mqtt://[::1]:1885", MqttTarget("::1", 1885)),
        ("mqtt://u%40x:p%3A@h:1", MqttTarget("h", 1, False, "u@x", "p:")),
        ("mqtts://user@h", MqttTarget("h", 8883, True, "user", None)),
        ("mqtt://user:@h", MqttTarget("h", 1883, False, "user", None)),
    ],
)
def test_parse_accepts(url: str, expected: MqttTarget) -> None:
    assert parse_mqtt_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "",
        "broker:1883",
        "http://broker",
        "ws://broker:9001",
        "mqtt://",
        "mqtt://:1883",
        "mqtt://h:99999",
        "mqtt://h:port",
        "mqtt://h/city/#",
        "mqtt://h?x=1",
        "mqtt://h#frag",
    ],
)
def test_parse_refuses_with_usage_reason(url: str) -> None:
    with pytest.raises(AnchorError) as exc:
        parse_mqtt_url(url)
    assert exc.value.reason == "usage"
    assert "mqtt://host" in exc.value.detail


def test_target_text_never_shows_the_password() -> None:
    t = parse_mqtt_url("mqtts://dev:s3cret@broker.example")
    assert str(t) == "mqtts://broker.example:8883"
    assert "s3cret" not in str(t)


def _field(client: Any, name: str) -> Any:
    return getattr(client, name)


def test_factory_plain_client_with_session_options() -> None:
    c = create_client(
        parse_mqtt_url("mqtt://u:pw@127.0.0.1:1999"),
        client_id="cityanchor-test-0",
        clean_start=False,
        session_expiry_s=3600,
        receive_maximum=64,
        keepalive_s=15,
        reconnect_min_s=2,
        reconnect_max_s=9,
        manual_ack=True,
        max_inflight=7,
    )
    assert (_field(c, "_host"), _field(c, "_port")) == ("127.0.0.1", 1999)
    assert _field(c, "_keepalive") == 15
    assert _field(c, "_clean_start") is False
    props = _field(c, "_connect_properties")
    assert props.SessionExpiryInterval == 3600
    assert props.ReceiveMaximum == 64
    assert (_field(c, "_username"), _field(c, "_password")) == (b"u", b"pw")
    assert _field(c, "_ssl_context") is None
    assert (_field(c, "_reconnect_min_delay"), _field(c, "_reconnect_max_delay")) == (2, 9)
    assert _field(c, "_manual_ack") is True
    assert _field(c, "_max_inflight_messages") == 7
    assert _field(c, "_client_id") == b"cityanchor-test-0"


def test_factory_explicit_login_wins_over_the_urls() -> None:
    target = parse_mqtt_url("mqtt://url-user:url-pw@h")
    c = create_client(target, client_id="x", username="given", password=None)
    assert (_field(c, "_username"), _field(c, "_password")) == (b"given", None)
    anonymous = create_client(parse_mqtt_url("mqtt://h"), client_id="y")
    assert _field(anonymous, "_username") is None


def test_factory_tls_for_mqtts(tmp_path: Any) -> None:
    c = create_client(parse_mqtt_url("mqtts://broker.example"), client_id="x")
    ctx = _field(c, "_ssl_context")
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    own = ssl.create_default_context()
    c2 = create_client(parse_mqtt_url("mqtts://b"), client_id="x", tls_context=own)
    assert _field(c2, "_ssl_context") is own
    missing = tmp_path / "no-such-ca.pem"
    with pytest.raises(OSError):
        create_client(parse_mqtt_url("mqtts://b"), client_id="x", ca_file=str(missing))


def test_factory_refuses_bad_reconnect_delays() -> None:
    with pytest.raises(AnchorError) as exc:
        create_client(
            parse_mqtt_url("mqtt://h"), client_id="x", reconnect_min_s=10, reconnect_max_s=1
        )
    assert exc.value.reason == "usage"
