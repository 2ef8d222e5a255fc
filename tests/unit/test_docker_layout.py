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
        if name != "api":
            assert svc["healthcheck"] == {"disable": True}, name
    assert "8080:8080" in services["api"]["ports"]
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


def test_dashboard_queries_name_exposed_metrics(exposed_metrics: set[str]) -> None:
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "cityanchor.json").read_text())
    used: set[str] = set()
    titles = []
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
            assert not missing, f"{panel['title']}: not exposed by anchor.api.metrics: {missing}"
            used |= names
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
