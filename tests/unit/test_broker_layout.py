"""The documented deployment (docker/) has the broker protections `cityanchor up` has (issue 10
items 1, 2): dynamic security rather than an acl_file, logins from the registry, and the API
holding the admin login that creates device logins at registration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def _conf() -> dict[str, str]:
    conf: dict[str, str] = {}
    for line in (DOCKER / "mosquitto" / "mosquitto.conf").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            conf.setdefault(key, value.strip())
    return conf


def test_mosquitto_uses_dynamic_security_not_an_acl_file() -> None:
    conf = _conf()
    # acl_file cannot refuse a SUBSCRIBE in Mosquitto 2.0; password_file has no client-id binding.
    assert "acl_file" not in conf and "password_file" not in conf
    assert conf["plugin"].endswith("mosquitto_dynamic_security.so")
    assert conf["plugin_opt_config_file"] == "/mosquitto/dynsec/dynamic-security.json"
    assert conf["allow_anonymous"] == "false"
    assert conf["persistent_client_expiration"] == "1d"


def test_compose_seeds_the_broker_from_the_registry_and_gives_the_api_the_admin_login() -> None:
    compose: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    seed = services["broker-config"]
    assert seed["command"][:2] == ["broker", "dynsec-config"]
    assert "mosquitto-dynsec:/mosquitto/dynsec" in seed["volumes"]
    assert "mosquitto-dynsec:/mosquitto/dynsec" in services["mosquitto"]["volumes"]
    assert services["mosquitto"]["depends_on"]["broker-config"]["condition"] == (
        "service_completed_successfully"
    )
    api = services["api"]
    assert "secrets/broker-admin.env" in api["env_file"]
    assert api["environment"]["CITYANCHOR_MQTT_DEVICE_LOGINS"] == "1"
    assert api["environment"]["CITYANCHOR_MQTT_ADMIN_USERNAME"] == "cityanchor-admin"
    # Only the api and the seeding job hold the admin password.
    holders = {
        n for n, s in services.items() if "secrets/broker-admin.env" in s.get("env_file", [])
    }
    assert holders == {"api", "broker-config"}
    assert services["ingest-1"]["environment"]["CITYANCHOR_MQTT_USERNAME"] == "cityanchor-ingest"
