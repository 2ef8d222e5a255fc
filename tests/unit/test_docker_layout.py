"""The deployment layout in docker/ agrees with the code it deploys.

No Docker engine is needed: compose.yaml, prometheus.yml and the Grafana dashboard are parsed
here and checked against anchor.host.config (the CITYANCHOR_* variables), anchor.cli.commands (the
service
commands) and anchor.api.metrics (the metric names). ``docker compose config`` also runs when the
compose plugin is installed.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from anchor.api import metrics
from anchor.cli.commands import _build_parser
from anchor.cosignature import generate_cosigner_key
from anchor.host.config import ENV_PREFIX, ChainSettings, Settings, _chain_var, load_settings
from anchor.store import SQL_DIR, Store, WitnessFigures
from anchor.store import operator as operator_store

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
SECRETS = DOCKER / "secrets"

# `${NAME}`, `${NAME:-default}`, `${NAME-default}`, `${NAME:?message}`; `$$` is a literal `$`.
_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _interpolate(value: str) -> str:
    """A compose value as compose resolves it with no variables set: defaults, else empty."""

    def one(m: re.Match[str]) -> str:
        return m.group(3) if m.group(2) in (":-", "-") else ""

    return _INTERPOLATION.sub(one, value).replace("$$", "$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = _load_yaml(COMPOSE)
    assert isinstance(doc, dict)
    return doc


def _services(compose: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    services = compose["services"]
    assert isinstance(services, dict)
    return services


def _cityanchor_services(compose: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Services running the cityanchor image (built from docker/Dockerfile)."""
    for name, svc in _services(compose).items():
        build = svc.get("build")
        if isinstance(build, dict) and build.get("dockerfile") == "docker/Dockerfile":
            yield name, svc


def _environment(svc: Mapping[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):  # ["NAME=value", ...]
        env = dict(item.split("=", 1) for item in env)
    return {str(k): _interpolate(str(v)) for k, v in env.items()}


def _known_variables() -> set[str]:
    settings = {ENV_PREFIX + f.name.upper() for f in fields(Settings) if f.name != "chains"}
    return settings | {_chain_var(f.name) for f in fields(ChainSettings)}


# ------------------------------------------------------------------------------------- compose


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI on this machine")
    version = subprocess.run(
        [docker, "compose", "version"], capture_output=True, text=True, timeout=60, check=False
    )
    if version.returncode != 0:
        reason = (version.stderr.strip().splitlines() or ["no output"])[0]
        pytest.skip(f"the docker compose plugin is not installed ({reason})")
    # Validate a copy with placeholder secrets: the real ones exist only on a deployment host,
    # and the test must not write into the checkout.
    copy = tmp_path / "docker"
    shutil.copytree(DOCKER, copy, ignore=shutil.ignore_patterns("secrets"))
    (copy / "secrets").mkdir()
    for name in _secret_files(_load_yaml(COMPOSE)):
        (copy / "secrets" / name).write_text("placeholder\n", encoding="utf-8")
    result = subprocess.run(
        [docker, "compose", "-f", str(copy / "compose.yaml"), "--profile", "demo", "config"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def _secret_files(compose: Mapping[str, Any]) -> set[str]:
    """Names of the files under docker/secrets/ that compose.yaml reads."""
    names = set()
    for secret in compose["secrets"].values():
        names.add(Path(secret["file"]).name)
    for svc in _services(compose).values():
        for entry in svc.get("env_file") or []:
            path = entry["path"] if isinstance(entry, dict) else entry
            names.add(Path(path).name)
    return names


def test_service_variables_are_settings_that_load_settings_accepts(
    compose: dict[str, Any],
) -> None:
    known = _known_variables()
    services = dict(_cityanchor_services(compose))
    assert services, "no service runs the cityanchor image"
    for name, svc in services.items():
        env = _environment(svc)
        unknown = sorted(set(env) - known)
        assert not unknown, f"{name}: variables anchor.host.config does not know: {unknown}"
        settings = load_settings(env=env)  # raises UsageError on a badly typed value
        if "CITYANCHOR_CHAIN_RPC_URL" in env:
            assert [c.rpc_url for c in settings.chains] == [env["CITYANCHOR_CHAIN_RPC_URL"]]


def test_secrets_are_files_under_the_ignored_secrets_directory(compose: dict[str, Any]) -> None:
    for name, secret in compose["secrets"].items():
        path = (DOCKER / secret["file"]).resolve()
        assert path.parent == SECRETS, f"secret {name} outside docker/secrets/: {path}"
    for name, svc in _cityanchor_services(compose):
        env_files = [e["path"] if isinstance(e, dict) else e for e in svc.get("env_file") or []]
        assert all((DOCKER / e).resolve().parent == SECRETS for e in env_files), name
        for value in _environment(svc).values():
            assert "password" not in value.lower(), f"{name}: a password inline in compose.yaml"
    ignore = (SECRETS / ".gitignore").read_text(encoding="utf-8").split()
    assert "*" in ignore and "!.gitignore" in ignore
    committed = subprocess.run(
        ["git", "ls-files", "docker/secrets"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if committed.returncode == 0:
        assert committed.stdout.split() in ([], ["docker/secrets/.gitignore"])


def test_service_commands_parse(compose: dict[str, Any]) -> None:
    parser = _build_parser()
    commands = {}
    for name, svc in _cityanchor_services(compose):
        command = svc.get("command")
        assert isinstance(command, list), f"{name}: give the command as a list"
        args = parser.parse_args([str(c) for c in command])  # exits 2 on an unknown command
        assert callable(args.func), name
        commands[name] = command
    expected = {
        ("db", "migrate"),
        ("ingest",),
        ("anchor", "loop"),
        ("api",),
        ("chain", "deploy"),
    }
    for words in expected:
        assert any(tuple(c[: len(words)]) == words for c in commands.values()), words


def test_two_ingestors_share_one_subscription(compose: dict[str, Any]) -> None:
    replicas = 0
    names = []
    for _, svc in _cityanchor_services(compose):
        if svc["command"][:1] != ["ingest"]:
            continue
        count = int(svc.get("deploy", {}).get("replicas", 1))
        replicas += count
        env = _environment(svc)
        settings = load_settings(env=env)
        assert settings.mqtt_topic.startswith("$share/"), settings.mqtt_topic
        # Each replica's client id is cityanchor-{ingestor_name}-0: one per service, or several
        # identical replicas whose ids would collide.
        assert count == 1, "replicas of one service would share one MQTT client id"
        names.append(settings.ingestor_name)
    assert replicas == 2
    assert len(set(names)) == len(names), names


def test_services_and_their_dependencies(compose: dict[str, Any]) -> None:
    services = _services(compose)
    for name in ("postgres", "mosquitto", "chain", "migrate", "anchor", "api"):
        assert name in services, name
    assert services["chain"]["profiles"] == ["demo"]
    assert "anvil" in services["chain"]["entrypoint"]
    assert services["postgres"]["healthcheck"]["test"]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name, svc in _cityanchor_services(compose):
        if name in ("migrate", "deploy"):
            continue
        cond = svc["depends_on"]["migrate"]["condition"]
        assert cond == "service_completed_successfully", name
    # The API only on the host's loopback: the world reaches it through the HTTPS proxy.
    assert services["api"]["ports"] == ["127.0.0.1:8080:8080"]
    assert "/healthz" in " ".join(services["api"]["healthcheck"]["test"])
    conf = services["mosquitto"]["volumes"]
    assert "./mosquitto/mosquitto.conf:/mosquitto/config/mosquitto.conf:ro" in conf


def test_mosquitto_keeps_up_with_the_ingestor() -> None:
    conf: dict[str, str] = {}
    for line in (DOCKER / "mosquitto" / "mosquitto.conf").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            conf.setdefault(key, value.strip())
    assert conf["persistence"] == "true"
    # Saved every second: a crash loses or replays at most a second or two (issue 11), and never
    # on every change, whose every save rewrites the whole backlog (issue 11).
    assert conf["autosave_interval"] == "1"
    assert conf.get("autosave_on_changes", "false") == "false"
    assert int(conf["max_inflight_messages"]) >= Settings().inflight_window
    assert int(conf["max_queued_messages"]) >= 100 * Settings().inflight_window
    assert conf["allow_anonymous"] == "false"


# ---------------------------------------------------------------------------------- Dockerfile


def _stages(text: str) -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined), split into stages."""
    joined = re.sub(r"\\\n", " ", text)
    lines = [ln.strip() for ln in joined.splitlines()]
    stages: list[list[str]] = []
    for line in lines:
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_dockerfile_is_multi_stage_slim_non_root_with_a_healthcheck() -> None:
    text = (DOCKER / "Dockerfile").read_text(encoding="utf-8")
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    stages = _stages(text)
    assert len(stages) >= 2
    runtime = stages[-1]
    users = [ln.split()[1] for ln in runtime if ln.upper().startswith("USER ")]
    assert users and users[-1] not in ("root", "0", "0:0")
    assert any(ln.upper().startswith("HEALTHCHECK ") and "/healthz" in ln for ln in runtime)
    assert [ln for ln in runtime if ln.upper().startswith("ENTRYPOINT")] == [
        'ENTRYPOINT ["cityanchor"]'
    ]
    final = " ".join(runtime)
    for tool in ("build-essential", "gcc", "nodejs", "npm", "solc"):
        assert tool not in final, f"{tool} in the runtime image"
    assert "--find-links /wheels" in final and "pip wheel" in " ".join(stages[0])


def test_image_gets_the_migrations_from_the_wheel() -> None:
    # In a checkout the store reads the top-level sql/; the image installs the wheel, which
    # carries them as anchor/store/migrations/ (tests/unit/test_store_migrations.py builds one).
    assert ROOT / "sql" == SQL_DIR
    stages = _stages((DOCKER / "Dockerfile").read_text(encoding="utf-8"))
    build, runtime = " ".join(stages[0]), " ".join(stages[-1])
    assert "COPY sql/ sql/" in build
    assert "COPY setup.py pyproject.toml README.md MANIFEST.in" in build
    assert build.index("COPY sql/ sql/") < build.index("pip wheel")
    assert "sql/" not in runtime  # no copy by hand into site-packages any more
    # The build fails unless the installed package finds its migrations.
    assert "from anchor.store import migration_files; migration_files()" in runtime
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text(encoding="utf-8").split()
    assert "!sql/" in ignore and "!anchor/" in ignore and "!MANIFEST.in" in ignore
    assert "**" in ignore


# ------------------------------------------------------------------------- Prometheus, Grafana


def test_prometheus_scrapes_the_api_with_the_metrics_token(compose: dict[str, Any]) -> None:
    doc = _load_yaml(DOCKER / "prometheus" / "prometheus.yml")
    jobs = [
        job
        for job in doc["scrape_configs"]
        if any("api:8080" in sc["targets"] for sc in job.get("static_configs", []))
    ]
    assert len(jobs) == 1
    job = jobs[0]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    auth = job["authorization"]
    assert auth.get("type", "Bearer") == "Bearer"
    prometheus = _services(compose)["prometheus"]
    assert "metrics_token" in prometheus["secrets"]
    assert auth["credentials_file"] == "/run/secrets/metrics_token"
    mounts = " ".join(prometheus["volumes"])
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml" in mounts


class _FakeStore:
    async def counts(self) -> dict[str, int]:
        return {"readings": 5, "batches": 2, "log_size": 2, "devices": 3, "quarantine.x": 1}

    async def vanished_anchor_counts(self) -> dict[tuple[str, str], int]:
        return {("evm", "anchor_vanished"): 1}

    async def witness_figures(self) -> tuple[list[WitnessFigures], tuple[bool, int]]:
        key = generate_cosigner_key("w1.example").verifier.vkey()
        return [WitnessFigures(key, "http://w1", 7, {"cosigned": 3})], (False, 0)


@pytest.fixture
def exposed_metrics(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Every series name ``GET /metrics`` renders: families, plus histogram suffixes."""
    now = datetime.now(UTC)

    async def seal_latencies(store: object, *, after_batch: int) -> tuple[list[float], int, int]:
        return [0.2, 0.4], 2, 0

    async def anchor_positions(
        store: object,
    ) -> tuple[tuple[int, datetime], dict[str, tuple[int, datetime]]]:
        return (2, now), {"evm": (1, now - timedelta(seconds=30))}

    # anchor.api.metrics calls them as operator_store attributes (``ops.seal_latencies``).
    monkeypatch.setattr(operator_store, "seal_latencies", seal_latencies)
    monkeypatch.setattr(operator_store, "anchor_positions", anchor_positions)
    state = metrics.MetricsState()
    state.observe_request("/metrics", 0.01, method="GET", status=200)
    families = asyncio.run(metrics.collect(cast(Store, _FakeStore()), state, backends=["evm"]))
    names = set()
    for line in metrics.render(families).splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names |= {name + s for s in ("_bucket", "_sum", "_count")}
    return names


def _panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows hold theirs


def test_dashboard_queries_name_exposed_metrics(all_exposed_metrics: set[str]) -> None:
    # What Prometheus scrapes: the API's metrics and the ingestors' (a monitor's too).
    exposed_metrics = all_exposed_metrics
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "cityanchor.json").read_text())
    used: set[str] = set()
    titles = []
    exprs: list[str] = []
    for panel in _panels(dashboard):
        if panel["type"] == "row":
            continue
        titles.append(panel["title"].lower())
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "prometheus"
            names = set(re.findall(r"\b(cityanchor_[A-Za-z0-9_:]+)", target["expr"]))
            assert names, f"{panel['title']}: {target['expr']} names no cityanchor metric"
            missing = names - exposed_metrics
            assert not missing, f"{panel['title']}: not exposed by cityanchor: {missing}"
            used |= names
            exprs.append(target["expr"])
    for needed in (
        "cityanchor_readings_stored_total",
        "cityanchor_readings_quarantined_total",
        "cityanchor_seal_latency_seconds_bucket",
        "cityanchor_anchor_lag_seconds",
        "cityanchor_api_request_duration_seconds_bucket",
    ):
        assert needed in used, needed
    for words in ("ingest rate", "quarantine", "seal latency", "anchor lag", "api latency"):
        assert any(words in t for t in titles), words
    # The request histogram's status and method labels (issue 14 item 21) are shown.
    assert any("by (status, method)" in e for e in exprs)
    assert "cityanchor_ingest_mqtt_connected" in used


def test_grafana_provisioning_points_at_the_dashboard_and_prometheus(
    compose: dict[str, Any],
) -> None:
    source = _load_yaml(DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yaml")
    (ds,) = source["datasources"]
    assert (ds["uid"], ds["type"], ds["url"]) == (
        "prometheus",
        "prometheus",
        "http://prometheus:9090",
    )
    provider = _load_yaml(DOCKER / "grafana" / "provisioning" / "dashboards" / "dashboards.yaml")
    path = provider["providers"][0]["options"]["path"]
    mounts = _services(compose)["grafana"]["volumes"]
    assert f"./grafana/dashboards:{path}:ro" in mounts
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in mounts


def test_compose_file_matches_the_compose_specification_schema() -> None:
    # The Compose Specification's own JSON Schema (vendored with its licence and commit):
    # an independent check that runs even without the docker compose plugin.
    import json

    import jsonschema

    schema_path = (
        Path(__file__).resolve().parents[1] / "vectors" / "compose-spec" / "compose-spec.json"
    )
    schema = json.loads(schema_path.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(_load_yaml(COMPOSE))]
    assert not errors, errors


# ------------------------------------------------------------------- issue 14 item 20: deployment


def test_every_long_running_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    services = _services(compose)
    one_shot = {name for name, svc in services.items() if svc.get("restart") == "no"}
    assert one_shot == {"broker-config", "migrate", "deploy"}
    for name, svc in services.items():
        if name in one_shot or name == "chain":  # anvil's image has no probe; demo only
            continue
        check = svc.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), name
    # ingest and anchor: docker/health.py, mounted read-only where the healthcheck runs it.
    for name in ("ingest-1", "ingest-2", "anchor"):
        test = services[name]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "/opt/cityanchor/health.py"], name
        assert "./health.py:/opt/cityanchor/health.py:ro" in services[name]["volumes"], name
    assert services["ingest-1"]["healthcheck"]["test"][3:] == ["ingest", "9464"]
    assert services["anchor"]["healthcheck"]["test"][3:] == ["anchor"]
    # The ingestors wait for a broker that answers, not merely a started container.
    assert services["ingest-1"]["depends_on"]["mosquitto"]["condition"] == "service_healthy"
    probe = " ".join(services["mosquitto"]["healthcheck"]["test"])
    assert "mosquitto_sub" in probe and "-eq 5" in probe and "$$SYS" in probe


def test_health_script_modes_match_the_compose_commands(compose: dict[str, Any]) -> None:
    # The port the ingest healthcheck asks is the one --metrics-listen opens.
    services = _services(compose)
    for name in ("ingest-1", "ingest-2"):
        command = services[name]["command"]
        listen = command[command.index("--metrics-listen") + 1]
        port = services[name]["healthcheck"]["test"][-1]
        assert listen == f"0.0.0.0:{port}", name
    source = (DOCKER / "health.py").read_text(encoding="utf-8")
    assert "from anchor.store.connection import ANCHOR_LOCK" in source


def test_api_gets_the_public_operator_key_only(compose: dict[str, Any]) -> None:
    services = _services(compose)
    api = services["api"]
    assert api["secrets"] == ["operator_vkey"]
    env = _environment(api)
    assert env["CITYANCHOR_OPERATOR_KEY_FILE"] == "/run/secrets/operator_vkey"
    assert compose["secrets"]["operator_vkey"]["file"] == "./secrets/operator.vkey"
    # Who holds the signing key: the ingestors, which seal and sign checkpoints; nobody else.
    holders = {name for name, svc in services.items() if "operator_skey" in svc.get("secrets", [])}
    assert holders == {"ingest-1", "ingest-2"}
    # Behind the proxy every request comes from one address: the proxy limits, not the API.
    assert load_settings(env=env).api_rate_per_s == 0
    nginx = (DOCKER / "proxy" / "nginx.conf").read_text(encoding="utf-8")
    assert "limit_req_zone $binary_remote_addr" in nginx and "limit_req_status 429;" in nginx


def _nginx_directives(path: Path) -> list[str]:
    lines = [ln.split("#", 1)[0].strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    return [ln for ln in lines if ln]


def test_tls_for_mqtt_and_https(compose: dict[str, Any]) -> None:
    services = _services(compose)
    assert compose["secrets"]["tls_cert"]["file"] == "./secrets/tls.crt"
    assert compose["secrets"]["tls_key"]["file"] == "./secrets/tls.key"
    # MQTT: 8883 published with TLS; plain 1883 on the host's loopback only.
    mosquitto = services["mosquitto"]
    assert mosquitto["ports"] == ["8883:8883", "127.0.0.1:1883:1883"]
    assert set(mosquitto["secrets"]) == {"tls_cert", "tls_key"}
    listeners: dict[str, dict[str, str]] = {}
    current = None
    for line in (DOCKER / "mosquitto" / "mosquitto.conf").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        if key == "listener":
            current = value.strip()
            listeners[current] = {}
        elif current is not None and key in ("protocol", "certfile", "keyfile", "tls_version"):
            listeners[current][key] = value.strip()
    assert listeners["8883"]["certfile"] == "/run/secrets/tls_cert"
    assert listeners["8883"]["keyfile"] == "/run/secrets/tls_key"
    assert "certfile" not in listeners["1883"]
    # HTTPS: the proxy on 443 with the same files, 80 only redirects (and its own probe).
    proxy = services["proxy"]
    assert set(proxy["ports"]) == {"443:443", "80:80"}
    assert "./proxy/nginx.conf:/etc/nginx/nginx.conf:ro" in proxy["volumes"]
    nginx = _nginx_directives(DOCKER / "proxy" / "nginx.conf")
    assert "listen 443 ssl;" in nginx
    assert "ssl_certificate /run/secrets/tls_cert;" in nginx
    assert "ssl_certificate_key /run/secrets/tls_key;" in nginx
    assert "server api:8080;" in nginx and "proxy_pass http://cityanchor_api;" in nginx
    assert "return 308 https://$host$request_uri;" in nginx


def _balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


def test_nginx_files_are_balanced() -> None:
    for path in (DOCKER / "proxy" / "nginx.conf", DOCKER / "emqx" / "lb.conf"):
        text = "\n".join(_nginx_directives(path))
        assert _balanced(text), path
        for line in _nginx_directives(path):
            assert line.endswith(("{", "}", ";")), f"{path.name}: {line!r}"


def test_device_logins_need_no_broker_restart(compose: dict[str, Any]) -> None:
    # Mosquitto's dynamic-security plugin: broker-config writes its file from the registry
    # before the broker starts; the API adds and deletes device logins over $CONTROL at run time.
    conf = (DOCKER / "mosquitto" / "mosquitto.conf").read_text(encoding="utf-8")
    assert "plugin /usr/lib/mosquitto_dynamic_security.so" in conf
    assert "plugin_opt_config_file /mosquitto/dynsec/dynamic-security.json" in conf
    assert "password_file" not in conf and "\nacl_file" not in conf
    services = _services(compose)
    assert services["broker-config"]["command"][:2] == ["broker", "dynsec-config"]
    env = _environment(services["api"])
    assert env["CITYANCHOR_MQTT_DEVICE_LOGINS"] == "1"
    assert load_settings(env=env).mqtt_device_logins


def test_backup_service_dumps_on_a_schedule_and_is_checked(compose: dict[str, Any]) -> None:
    backup = _services(compose)["backup"]
    assert backup["image"] == _services(compose)["postgres"]["image"]  # same pg_dump major
    entry = [_interpolate(str(x)) for x in backup["entrypoint"]]
    assert entry == ["sh", "/usr/local/bin/pg-backup.sh", "--every", "21600", "/backups"]
    assert "../scripts/pg-backup.sh:/usr/local/bin/pg-backup.sh:ro" in backup["volumes"]
    assert (DOCKER / "../scripts/pg-backup.sh").resolve().is_file()
    assert (
        _interpolate(backup["volumes"][1]) == "backups:/backups" and "backups" in compose["volumes"]
    )
    env = _environment(backup)
    assert env["PGPASSWORD_FILE"] == "/run/secrets/db_password" and "PGPASSWORD" not in env
    assert (env["PGHOST"], env["PGUSER"], env["PGDATABASE"]) == (
        "postgres",
        "cityanchor",
        "cityanchor",
    )
    assert backup["secrets"] == ["db_password"]
    check = [_interpolate(str(x)) for x in backup["healthcheck"]["test"]]
    assert check == ["CMD", "sh", "/usr/local/bin/pg-backup.sh", "--check", "43200", "/backups"]
    assert backup["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_emqx_profile_is_a_two_node_cluster_behind_a_balancer(compose: dict[str, Any]) -> None:
    services = _services(compose)
    emqx = {name: svc for name, svc in services.items() if "emqx" in svc.get("profiles", [])}
    assert set(emqx) == {"emqx1", "emqx2", "emqx-lb"}
    nodes = [emqx["emqx1"], emqx["emqx2"]]
    names = [_environment(n)["EMQX_NODE__NAME"] for n in nodes]
    assert len(set(names)) == 2
    for node in nodes:
        env = _environment(node)
        assert env["EMQX_CLUSTER__DISCOVERY_STRATEGY"] == "static"
        seeds = env["EMQX_CLUSTER__STATIC__SEEDS"].strip("[]").split(",")
        assert sorted(seeds) == sorted(names)
        host = env["EMQX_NODE__NAME"].split("@", 1)[1]
        assert node["hostname"] == host and node["networks"]["default"]["aliases"] == [host]
        assert "EMQX_NODE__COOKIE" not in env  # the cookie comes from secrets/emqx.env
        assert node["env_file"] == [{"path": "secrets/emqx.env", "required": False}]
        assert "./emqx/emqx.conf:/opt/emqx/etc/base.hocon:ro" in node["volumes"]
        assert "./emqx/cityanchor_acl.conf:/opt/emqx/etc/cityanchor_acl.conf:ro" in node["volumes"]
        assert env["EMQX_LISTENERS__SSL__DEFAULT__SSL_OPTIONS__CERTFILE"] == "/run/secrets/tls_cert"
        assert node["healthcheck"]["test"] == ["CMD", "/opt/emqx/bin/emqx", "ctl", "status"]
    # One dashboard, on the host's loopback (two would collide on the host port).
    assert emqx["emqx1"]["ports"] == ["127.0.0.1:18083:18083"] and emqx["emqx2"]["ports"] == []
    data = {v.split(":")[0] for n in nodes for v in n["volumes"] if v.endswith(":/opt/emqx/data")}
    assert len(data) == 2 and data <= set(compose["volumes"])
    lb = _nginx_directives(DOCKER / "emqx" / "lb.conf")
    for port in ("1883", "8883"):
        assert f"server emqx1:{port} max_fails=2 fail_timeout=10s;" in lb
        assert f"server emqx2:{port} max_fails=2 fail_timeout=10s;" in lb
    assert emqx["emqx-lb"]["depends_on"]["emqx1"]["condition"] == "service_healthy"
    # Nothing outside the profile depends on EMQX: without --profile emqx it does not exist.
    for name, svc in services.items():
        if name not in emqx:
            assert not set(svc.get("depends_on") or {}) & set(emqx), name
    # The services reach it by CITYANCHOR_MQTT_URL=mqtt://emqx-lb:1883, which the settings take.
    assert load_settings(env={"CITYANCHOR_MQTT_URL": "mqtt://emqx-lb:1883"}).mqtt_url


# ------------------------------------------------------------------------------ alert rules


@pytest.fixture
def all_exposed_metrics(exposed_metrics: set[str]) -> set[str]:
    """The API's series, the ingestors' (anchor.ingest.metrics) and a monitor's."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from anchor.ingest.ingestor import IngestStats
    from anchor.ingest.metrics import ingest_registry
    from anchor.monitor.output import MonitorMetrics

    names = set(exposed_metrics)
    monitor = MonitorMetrics()
    monitor.alarms.labels("log_fork")
    monitor.rounds.labels("ok")
    for registry in (ingest_registry(IngestStats(), lambda: True), monitor.registry):
        text = generate_latest(registry).decode()
        for family in text_string_to_metric_families(text):
            names |= {s.name for s in family.samples}
    return names


def _rules() -> list[dict[str, Any]]:
    doc = _load_yaml(DOCKER / "prometheus" / "rules" / "cityanchor.yml")
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_alert_rules_name_exposed_metrics(all_exposed_metrics: set[str]) -> None:
    rules = _rules()
    alerts = {r["alert"] for r in rules}
    assert len(alerts) == len(rules), "duplicate alert names"
    used: set[str] = set()
    for rule in rules:
        expr = rule["expr"]
        assert _balanced(expr.replace("(", "{").replace(")", "}")), rule["alert"]
        names = set(re.findall(r"\b(cityanchor_[A-Za-z0-9_:]+)", expr))
        missing = names - all_exposed_metrics
        assert not missing, f"{rule['alert']}: not exposed by cityanchor: {missing}"
        used |= names
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        for match in re.findall(r'up\{job="([^"]+)"\}', expr):
            assert match in _scrape_jobs(), f"{rule['alert']}: no scrape job {match}"
    # What issue 14 asked for: seal latency, anchoring stalled, quarantine spikes, the witness
    # quorum, monitor alarms.
    for needed in (
        "cityanchor_seal_latency_seconds_bucket",
        "cityanchor_anchor_lag_seconds",
        "cityanchor_readings_quarantined_total",
        "cityanchor_witness_quorum_waiting",
        "cityanchor_monitor_alarms_total",
        "cityanchor_ingest_mqtt_connected",
    ):
        assert needed in used, needed
    for name in (
        "CityanchorSealLatencyHigh",
        "CityanchorAnchoringStalled",
        "CityanchorQuarantineSpike",
        "CityanchorWitnessQuorumWaiting",
        "CityanchorMonitorAlarm",
    ):
        assert name in alerts, name


def _scrape_jobs() -> set[str]:
    doc = _load_yaml(DOCKER / "prometheus" / "prometheus.yml")
    return {job["job_name"] for job in doc["scrape_configs"]}


def test_prometheus_loads_the_rules_and_scrapes_the_ingestors(compose: dict[str, Any]) -> None:
    doc = _load_yaml(DOCKER / "prometheus" / "prometheus.yml")
    assert doc["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    mounts = _services(compose)["prometheus"]["volumes"]
    assert "./prometheus/rules:/etc/prometheus/rules:ro" in mounts
    (job,) = [j for j in doc["scrape_configs"] if j["job_name"] == "cityanchor-ingest"]
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    ingest = {n for n, s in _cityanchor_services(compose) if s["command"][:1] == ["ingest"]}
    assert targets == {f"{name}:9464" for name in ingest}
