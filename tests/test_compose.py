"""docker-compose.yml, checked without Docker (CI runs `docker compose config` as well where
Docker Compose exists: `make check-compose`): the services, their images, health checks and
start-up order, every changeflow process configured only by environment variables that
Settings reads and starting with them, its volumes and secrets declared, the alert rules routed
to a receiver, and no secret in the file: the env file ops/new-env.sh makes provides them."""

import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.codec import payload_key_ring
from infra.keyring import KeyRing
from infra.settings import Settings, env_name, load_settings
from workers.codec_server import check_codec_server_settings
from workflows.contracts.search_attributes import ALL as SEARCH_ATTRIBUTES

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
# Compose's ${NAME:-default} and ${NAME:?error} interpolation, as `docker compose` resolves it
# with the .env the README makes (ops/new-env.sh) and nothing else.
_VARIABLE = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")
NEW_ENV = subprocess.run(
    ["sh", str(ROOT / "ops" / "new-env.sh")], capture_output=True, text=True, check=True
).stdout
REQUIRED = dict(line.split("=", 1) for line in NEW_ENV.splitlines() if line.strip())
# The changeflow processes: the image built from this repository, and what each must be given.
CHANGEFLOW_SERVICES = ("worker", "webhooks", "cli", "codec-server", "migrate")


def _resolve(match: re.Match[str]) -> str:
    name, kind, rest = match.groups()
    if name in REQUIRED:
        return REQUIRED[name]
    assert kind == "-", f"${{{name}}} has no default and ops/new-env.sh does not make it"
    return rest


def interpolated(value: object) -> str:
    return _VARIABLE.sub(_resolve, str(value))


def environment(service: str) -> dict[str, str]:
    env = SERVICES[service].get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: interpolated(value) for key, value in env.items()}


def image(service: str) -> str:
    return interpolated(SERVICES[service]["image"])


def script(service: str) -> str:
    command = SERVICES[service].get("command", "")
    return "\n".join(command) if isinstance(command, list) else str(command)


def test_the_stack_runs_the_whole_product():
    assert set(SERVICES) >= {
        "postgresql",
        "temporal-schema",
        "temporal",
        "temporal-setup",
        "temporal-ui",
        "migrate",
        "worker",
        "webhooks",
        "codec-server",
        "cli",
        "prometheus",
        "alertmanager",
        "grafana",
    }
    assert image("postgresql").startswith("postgres:16")
    assert image("temporal").startswith("temporalio/server:")
    assert image("temporal-schema").startswith("temporalio/admin-tools:")
    assert image("temporal-setup").startswith("temporalio/admin-tools:")
    assert image("temporal-ui").startswith("temporalio/ui:")
    assert image("alertmanager").startswith("prom/alertmanager:")


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_service_has_a_pinned_image_or_is_built_from_this_repository(service):
    if "build" in SERVICES[service]:
        assert SERVICES[service]["build"] == "."
        assert image(service) == "changeflow-worker:latest"  # the one image, built here
    else:
        # Pinned versions: an upgrade is a deliberate change, not whatever `latest` is today.
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", image(service)), image(service)
        assert not image(service).endswith(":latest")


def test_the_changeflow_processes_are_built_from_this_repository():
    assert {s for s in SERVICES if "build" in SERVICES[s]} == set(CHANGEFLOW_SERVICES)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["changeflow-worker"]' in dockerfile
    assert "STOPSIGNAL SIGTERM" in dockerfile
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["changeflow-worker"] == "workers.__main__:main"
    assert "entrypoint" not in SERVICES["worker"]
    assert SERVICES["migrate"]["entrypoint"] == ["python", "-m", "workers.migrate"]
    for service, entry_point in [
        ("webhooks", "changeflow-webhooks"),
        ("codec-server", "changeflow-codec-server"),
        ("cli", "changeflow"),
    ]:
        assert SERVICES[service]["entrypoint"] == [entry_point]
        assert entry_point in scripts
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", ".changeflow", ".env", "secrets"} <= set(ignored)


def test_temporal_schema_is_set_up_by_admin_tools_before_the_server_starts():
    setup = script("temporal-schema")
    for database in ("temporal", "temporal_visibility"):
        assert f"--db {database} setup-schema" in setup
        assert f"--db {database} update-schema" in setup
    env = environment("temporal-schema")
    assert env["SQL_PLUGIN"] == environment("temporal")["DB"] == "postgres12"
    assert env["SQL_HOST"] == environment("temporal")["POSTGRES_SEEDS"] == "postgresql"


def test_every_custom_search_attribute_is_created_as_a_keyword():
    setup = script("temporal-setup")
    assert "temporal operator search-attribute create" in setup
    assert "--type Keyword" in setup
    listed = re.search(r"for name in ([\w ]+); do", setup)
    assert listed is not None
    assert set(listed.group(1).split()) == {key.name for key in SEARCH_ATTRIBUTES}
    assert "temporal operator namespace create" in setup


LONG_RUNNING = [name for name, service in SERVICES.items() if service.get("restart") != "no"]


@pytest.mark.parametrize("service", LONG_RUNNING)
def test_long_running_services_have_health_checks(service):
    check = SERVICES[service]["healthcheck"]
    assert check["test"][0] in {"CMD", "CMD-SHELL"}
    assert check["retries"] >= 3
    assert SERVICES[service]["restart"] == "unless-stopped"


def test_the_one_off_services_are_jobs_or_the_cli_profile():
    one_off = {name for name, service in SERVICES.items() if service.get("restart") == "no"}
    assert one_off == {"temporal-schema", "temporal-setup", "migrate", "cli"}
    # `docker compose up` leaves the command out; `docker compose run --rm cli ...` runs it.
    assert SERVICES["cli"]["profiles"] == ["cli"]


def test_postgres_is_healthy_only_once_it_accepts_connections():
    assert "pg_isready" in " ".join(SERVICES["postgresql"]["healthcheck"]["test"])


def test_every_dependency_waits_for_health_or_completion_never_just_for_start():
    for name, service in SERVICES.items():
        for dependency, rule in service.get("depends_on", {}).items():
            condition = rule["condition"]
            assert condition in {"service_healthy", "service_completed_successfully"}, name
            if condition == "service_healthy":
                assert "healthcheck" in SERVICES[dependency], f"{name} waits on {dependency}"
            else:
                assert SERVICES[dependency]["restart"] == "no", f"{dependency} is a job"


def test_start_up_order():
    def waits_for(service: str) -> dict[str, str]:
        return {dep: rule["condition"] for dep, rule in SERVICES[service]["depends_on"].items()}

    assert waits_for("temporal-schema") == {"postgresql": "service_healthy"}
    assert waits_for("temporal") == {"temporal-schema": "service_completed_successfully"}
    assert waits_for("temporal-setup") == {"temporal": "service_healthy"}
    assert waits_for("migrate") == {"postgresql": "service_healthy"}
    for service in ("worker", "webhooks", "cli"):
        assert waits_for(service) == {
            "migrate": "service_completed_successfully",
            "temporal-setup": "service_completed_successfully",
            "temporal": "service_healthy",
        }
    assert waits_for("prometheus") == {"alertmanager": "service_healthy"}
    assert waits_for("grafana") == {"prometheus": "service_healthy"}


def settings_of(service: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    """The service's Settings as its process loads them from the compose environment alone."""
    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    known = {env_name(field) for field in Settings.model_fields}
    for name in known:
        monkeypatch.delenv(name, raising=False)
    env = environment(service)
    assert set(env) <= known, set(env) - known
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings()


def secret_path(service: str, secret: str) -> str:
    assert secret in SERVICES[service].get("secrets", []), f"{service} lacks secret {secret}"
    return f"/run/secrets/{secret}"


def test_the_worker_is_configured_only_by_variables_that_settings_reads():
    worker = SERVICES["worker"]
    assert "command" not in worker and "env_file" not in worker
    env = environment("worker")
    assert {"DATABASE_URL", "TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE"} <= set(env)


@pytest.mark.parametrize("service", ["worker", "webhooks", "cli"])
def test_every_changeflow_process_gets_all_it_needs_to_start_in_production(
    service, monkeypatch, tmp_path
):
    settings = settings_of(service, monkeypatch, tmp_path)

    assert settings.production
    assert settings.database_url is not None
    database_url = settings.database_url.get_secret_value()
    postgres = environment("postgresql")
    assert database_url == (
        f"postgresql://{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}"
        f"@postgresql:5432/{postgres['POSTGRES_DB']}"
    )
    assert database_url == environment("migrate")["DATABASE_URL"]
    assert settings.temporal_address == "temporal:7233"
    assert settings.temporal_namespace == "default"
    assert settings.log_format == "json"
    # The payload ring (refused in production without it) and the credential ring (connectors
    # and notification webhooks store their secrets under it) are the env file's.
    assert payload_key_ring(settings).current == REQUIRED["CHANGEFLOW_PAYLOAD_KEYS"].split(":")[0]
    assert settings.credential_keys is not None
    ring = KeyRing.parse(settings.credential_keys.get_secret_value(), settings.credential_key_id)
    assert ring.current == REQUIRED["CHANGEFLOW_CREDENTIAL_KEYS"].split(":")[0]
    # Decisions are verified against the identity service's keys, never the development
    # signer's file (which does not exist in the container).
    assert not settings.uses_dev_decision_signer
    assert settings.resolved_decision_jwks == secret_path(service, "decision-jwks")
    assert settings.decision_issuer == REQUIRED["CHANGEFLOW_DECISION_ISSUER"]
    # Checkouts and the projects' repositories outlive the container.
    mounts = {v.split(":")[1]: v.split(":")[0] for v in SERVICES[service].get("volumes", [])}
    if service != "webhooks":
        assert mounts[str(settings.resolved_workspace_dir)] == "workspaces"
        assert mounts["/var/lib/changeflow/repositories"] == "repositories"


def test_the_worker_environment_serves_metrics_where_prometheus_and_the_health_check_look(
    monkeypatch, tmp_path
):
    settings = settings_of("worker", monkeypatch, tmp_path)
    assert settings.metrics_port is not None
    assert str(settings.metrics_port) in SERVICES["worker"]["expose"]
    assert str(settings.metrics_port) in " ".join(SERVICES["worker"]["healthcheck"]["test"])
    assert scrape_ports()["worker"] == settings.metrics_port


def test_the_webhooks_process_listens_publicly_and_has_metrics_of_its_own(monkeypatch, tmp_path):
    worker = settings_of("worker", monkeypatch, tmp_path)
    settings = settings_of("webhooks", monkeypatch, tmp_path)
    assert settings.webhooks_host == "0.0.0.0"
    assert SERVICES["webhooks"]["ports"] == [f"{settings.webhooks_port}:{settings.webhooks_port}"]
    check = " ".join(SERVICES["webhooks"]["healthcheck"]["test"])
    assert f"127.0.0.1:{settings.webhooks_port}/healthz" in check
    assert settings.webhooks_metrics_port not in (None, worker.metrics_port)
    assert str(settings.webhooks_metrics_port) in SERVICES["webhooks"]["expose"]
    assert scrape_ports()["webhooks"] == settings.webhooks_metrics_port


def scrape_ports() -> dict[str, int]:
    """Compose service -> the port Prometheus scrapes on each of its replicas."""
    config = yaml.safe_load((ROOT / "ops/prometheus/prometheus.yml").read_text())
    return {
        name: sd["port"]
        for job in config["scrape_configs"]
        for sd in job.get("dns_sd_configs", [])
        for name in sd["names"]
    }


def test_every_volume_is_declared_or_a_file_of_this_repository():
    declared = set(COMPOSE["volumes"])
    used = set()
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in declared, f"{name} mounts undeclared volume {source}"
                used.add(source)
    assert used == declared


def test_every_secret_is_a_declared_file_that_is_never_committed_or_built_in():
    declared = COMPOSE["secrets"]
    used = {secret for service in SERVICES.values() for secret in service.get("secrets", [])}
    assert used == set(declared)
    ignored = (ROOT / ".gitignore").read_text().split()
    for secret in declared.values():
        assert secret["file"].startswith("./secrets/")
    assert "secrets/" in ignored and ".env" in ignored


def test_every_variable_without_a_default_is_made_by_the_env_file():
    text = (ROOT / "docker-compose.yml").read_text()
    required = {m.group(1) for m in _VARIABLE.finditer(text) if m.group(2) == "?"}
    assert required == set(REQUIRED)
    for name, value in REQUIRED.items():
        assert value not in text, f"{name}'s value is in the file"


def test_every_alert_is_routed_to_a_receiver():
    prometheus = yaml.safe_load((ROOT / "ops/prometheus/prometheus.yml").read_text())
    [target] = prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host == "alertmanager" and f"{port}:{port}" in SERVICES[host]["ports"]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in SERVICES[host]["volumes"]}
    config_file = SERVICES[host]["command"][0].split("=", 1)[1]
    config = yaml.safe_load((ROOT / mounted[config_file]).read_text())
    receivers = {receiver["name"]: receiver for receiver in config["receivers"]}
    routes = config["route"].get("routes", [])
    assert config["route"]["receiver"] in receivers
    assert all(route["receiver"] in receivers for route in routes)
    rules = yaml.safe_load((ROOT / "ops/prometheus/alerts.yml").read_text())
    severities = {
        rule["labels"]["severity"] for group in rules["groups"] for rule in group["rules"]
    }
    routed = {m.split("=")[1].strip('"') for r in routes for m in r.get("matchers", [])}
    assert severities <= routed
    for receiver in receivers.values():
        for webhook in receiver.get("webhook_configs", []):
            # The receiver's URL is a secret: read from its file, never written here.
            assert "url" not in webhook
            assert webhook["url_file"] == secret_path(host, "alert-webhook-url")


def test_the_readme_makes_the_env_file_and_says_what_production_must_add():
    readme = (ROOT / "README.md").read_text()
    compose = readme[readme.index("### Docker Compose") :]
    assert "sh ops/new-env.sh > .env" in compose
    assert "GRAFANA_ADMIN_PASSWORD" in compose
    assert "secrets/decision-jwks.json" in compose and "secrets/alert-webhook-url" in compose
    assert "docker compose run --rm cli" in compose
    for must in ("TLS", "Web UI", "Grafana", "Backups"):
        assert must in compose, must


def test_no_default_password_ships():
    assert "${POSTGRES_PASSWORD:?" in (ROOT / "docker-compose.yml").read_text()
    assert "POSTGRES_PASSWORD:-" not in (ROOT / "docker-compose.yml").read_text()


def test_docker_waits_longer_than_the_graceful_shutdown_before_killing_the_worker():
    settings_grace = float(environment("worker")["CHANGEFLOW_GRACEFUL_SHUTDOWN_SECONDS"])
    stop_grace = SERVICES["worker"]["stop_grace_period"]
    assert stop_grace.endswith("s")
    assert float(stop_grace[:-1]) > settings_grace


def test_the_worker_scales_out_without_host_port_clashes():
    assert "ports" not in SERVICES["worker"]
    assert "container_name" not in SERVICES["worker"]


def test_the_codec_server_runs_as_production_with_the_workers_payload_keys(monkeypatch, tmp_path):
    settings = settings_of("codec-server", monkeypatch, tmp_path)
    check_codec_server_settings(settings)  # a token is set

    assert settings.production
    assert payload_key_ring(settings).current == REQUIRED["CHANGEFLOW_PAYLOAD_KEYS"].split(":")[0]
    assert (
        environment("codec-server")["CHANGEFLOW_PAYLOAD_KEYS"]
        == (environment("worker")["CHANGEFLOW_PAYLOAD_KEYS"])
    )


def test_the_web_ui_decodes_through_the_codec_server_it_is_allowed_to_call():
    codec = environment("codec-server")
    endpoint = environment("temporal-ui")["TEMPORAL_CODEC_ENDPOINT"]
    assert endpoint.endswith(f":{codec['CHANGEFLOW_CODEC_SERVER_PORT']}")
    assert f"{codec['CHANGEFLOW_CODEC_SERVER_PORT']}:" in SERVICES["codec-server"]["ports"][0]
    assert environment("temporal-ui")["TEMPORAL_CORS_ORIGINS"] in codec[
        "CHANGEFLOW_CODEC_CORS_ORIGINS"
    ].split(",")
