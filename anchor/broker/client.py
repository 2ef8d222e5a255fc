"""MQTT client plumbing shared by every paho user: one URL parser, one client factory.

I/O wing (imports paho): the ingestor (:mod:`anchor.ingest.ingestor`), the broker's control-topic
admin
(:mod:`anchor.broker.logins`), the API's broker readiness check and the device SDK
(:mod:`devices.publisher`, :mod:`devices.simulator`) all connect through here, so TLS, logins,
MQTT v5 session options and reconnect delays are set up one way.

* :func:`parse_mqtt_url` turns ``mqtt://[user[:password]@]host[:port]`` (port 1883) or
  ``mqtts://...`` (port 8883, TLS) into a :class:`MqttTarget`; ``tcp://`` and ``ssl://`` are
  accepted as paho's aliases of the two. Anything else raises ``UsageError`` (``usage``).
* :func:`create_client` returns a configured paho v2 client speaking MQTT v5 with the
  connection parameters recorded (:func:`connect_async`: no I/O yet). The caller sets its
  callbacks and then calls ``loop_start()`` (the network thread connects and reconnects), or
  ``reconnect()`` to connect synchronously.

Example::

    target = parse_mqtt_url("mqtts://broker.example:8883")
    client = create_client(target, client_id="cityanchor-ingest-0", clean_start=False,
                           session_expiry_s=86_400, manual_ack=True)
    client.on_message = on_message
    client.loop_start()
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from anchor.errors import UsageError

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_TLS_PORT",
    "MqttTarget",
    "connect_async",
    "create_client",
    "parse_mqtt_url",
]

DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883

_PLAIN_SCHEMES = frozenset({"mqtt", "tcp"})
_TLS_SCHEMES = frozenset({"mqtts", "ssl"})


@dataclass(frozen=True, slots=True)
class MqttTarget:
    """Where a client connects: from ``mqtt://[user[:pass]@]host[:port]`` or ``mqtts://``."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None

    def __str__(self) -> str:
        # Never the password: this is what logs and error messages show.
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_mqtt_url(url: str) -> MqttTarget:
    """Parse a broker URL.

    ``mqtt://`` (or ``tcp://``) defaults to port 1883; ``mqtts://`` (or ``ssl://``) to 8883
    and means TLS with certificate and host name checks. A user name and password in the URL
    are percent-decoded. Raises ``UsageError`` (reason ``usage``) for any other scheme, a
    missing host, a port outside 0..65535, or a path, query or fragment (MQTT has none).
    """
    expected = "expected mqtt://host[:port] or mqtts://host[:port]"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"invalid MQTT URL {url!r}: {exc}; {expected}") from exc
    scheme = parts.scheme.lower()
    if scheme not in _PLAIN_SCHEMES | _TLS_SCHEMES or not parts.hostname:
        raise UsageError(f"unsupported MQTT URL {url!r}; {expected}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise UsageError(f"MQTT URL {url!r} has a path, query or fragment; {expected}")
    tls = scheme in _TLS_SCHEMES
    return MqttTarget(
        host=parts.hostname,
        port=port or (DEFAULT_TLS_PORT if tls else DEFAULT_PORT),
        tls=tls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def connect_async(
    client: mqtt.Client,
    target: MqttTarget,
    *,
    keepalive_s: int = 30,
    clean_start: bool = True,
    session_expiry_s: int | None = None,
    receive_maximum: int | None = None,
) -> None:
    """Record where and how ``client`` connects (paho's ``connect_async``: no I/O happens
    here); ``loop_start()`` then connects in the background, ``reconnect()`` in the caller.

    ``clean_start=False`` with ``session_expiry_s`` resumes an MQTT v5 persistent session;
    ``receive_maximum`` caps the QoS 1 messages the broker sends before we acknowledge.
    Raises ``UsageError`` when paho refuses a parameter.
    """
    props: Properties | None = None
    if session_expiry_s is not None or receive_maximum is not None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if session_expiry_s is not None:
            props.SessionExpiryInterval = session_expiry_s
        if receive_maximum is not None:
            props.ReceiveMaximum = receive_maximum
    try:
        client.connect_async(
            target.host,
            target.port,
            keepalive=keepalive_s,
            clean_start=clean_start,
            properties=props,
        )
    except ValueError as exc:
        raise UsageError(f"cannot connect to {target}: {exc}") from exc


def create_client(
    target: MqttTarget,
    *,
    client_id: str,
    username: str | None = None,
    password: str | None = None,
    keepalive_s: int = 30,
    clean_start: bool = True,
    session_expiry_s: int | None = None,
    receive_maximum: int | None = None,
    reconnect_min_s: int = 1,
    reconnect_max_s: int = 30,
    manual_ack: bool = False,
    max_inflight: int | None = None,
    tls_context: ssl.SSLContext | None = None,
    ca_file: str | None = None,
) -> mqtt.Client:
    """A paho client (callback API v2, MQTT v5) configured for ``target``, connection
    parameters recorded by :func:`connect_async`; callbacks are the caller's.

    Login: ``username``/``password`` when ``username`` is given, else the URL's own (none
    when the URL has none). TLS when ``target.tls``: ``tls_context``, or the system's CA store
    (or ``ca_file`` only) with host name checks. paho reconnects by itself, doubling its delay
    from ``reconnect_min_s`` to ``reconnect_max_s``. ``manual_ack`` leaves the PUBACK of a
    received QoS 1 message to the caller (``client.ack``), sent once it is durable.
    ``max_inflight`` caps our unacknowledged QoS 1 publishes (paho's own queue is left
    unbounded: callers keep their window below it). Raises ``UsageError`` for unordered
    reconnect delays or a parameter paho refuses, ``OSError`` when ``ca_file`` is unreadable.
    """
    if not 0 < reconnect_min_s <= reconnect_max_s:
        raise UsageError(
            f"reconnect delays must be positive and ordered, got {reconnect_min_s}"
            f"..{reconnect_max_s} s"
        )
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5,
        manual_ack=manual_ack,
    )
    user, secret = (
        (username, password) if username is not None else (target.username, target.password)
    )
    if user is not None:
        client.username_pw_set(user, secret)
    if target.tls:
        client.tls_set_context(tls_context or ssl.create_default_context(cafile=ca_file))
    if max_inflight is not None:
        client.max_inflight_messages_set(max_inflight)
        client.max_queued_messages_set(0)  # 0: no cap
    client.reconnect_delay_set(min_delay=reconnect_min_s, max_delay=reconnect_max_s)
    connect_async(
        client,
        target,
        keepalive_s=keepalive_s,
        clean_start=clean_start,
        session_expiry_s=session_expiry_s,
        receive_maximum=receive_maximum,
    )
    return client
