"""docker-compose.yml, checked without Docker: the services, their images, health checks and
start-up order, and a worker configured only by environment variables that Settings reads."""

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from workers.codec import payload_key_ring
from workers.codec_server import check_codec_server_settings
from workers.keyring import KeyRing
from workers.settings import Settings, env_name, load_settings
from workflows.contracts.search_attributes import ALL as SEARCH_ATTRIBUTES

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
# Compose's ${NAME:-default} and ${NAME:?error} interpolation, as `docker compose` resolves it
# with only the required variables set.
_VARIABLE = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")
REQUIRED = {
    "POSTGRES_PASSWORD": "pg-s3cret-pass",
    "CHANGEFLOW_PAYLOAD_KEYS": f"compose-1:{KeyRing.new_key()}",
    "CHANGEFLOW_CODEC_SERVER_TOKEN": "codec-s3cret-token",
}


def _resolve(match: re.Match[str]) -> str:
    name, kind, rest = match.groups()
    if name in REQUIRED:
        return REQUIRED[name]
    assert kind == "-", f"${{{name}}} has no default and is not documented as required"
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


def test_the_stack_has_postgres_temporal_its_setup_jobs_the_ui_and_the_worker():
    assert set(SERVICES) >= {
        "postgresql",
        "temporal-schema",
        "temporal",
        "temporal-setup",
        "temporal-ui",
        "migrate",
        "worker",
    }
    assert image("postgresql").startswith("postgres:16")
    assert image("temporal").startswith("temporalio/server:")
    assert image("temporal-schema").startswith("temporalio/admin-tools:")
    assert image("temporal-setup").startswith("temporalio/admin-tools:")
    assert image("temporal-ui").startswith("temporalio/ui:")
    # Pinned versions: an upgrade is a deliberate change, not whatever `latest` is today.
    assert not any(image(s).endswith(":latest") for s in SERVICES if "build" not in SERVICES[s])


def test_the_worker_and_the_migration_job_are_built_from_this_repository():
    for service in ("worker", "migrate"):
        assert SERVICES[service]["build"] == "."
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["changeflow-worker"]' in dockerfile
    assert "STOPSIGNAL SIGTERM" in dockerfile
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["changeflow-worker"] == "workers.__main__:main"
    assert SERVICES["migrate"]["entrypoint"] == ["python", "-m", "scripts.migrate"]
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", ".changeflow", ".env"} <= set(ignored)


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


@pytest.mark.parametrize(
    "service", ["postgresql", "temporal", "temporal-ui", "worker", "codec-server"]
)
def test_long_running_services_have_health_checks(service):
    check = SERVICES[service]["healthcheck"]
    assert check["test"][0] in {"CMD", "CMD-SHELL"}
    assert check["retries"] >= 3
    assert SERVICES[service]["restart"] == "unless-stopped"


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
    assert waits_for("worker") == {
        "migrate": "service_completed_successfully",
        "temporal-setup": "service_completed_successfully",
        "temporal": "service_healthy",
    }


def test_the_worker_is_configured_only_by_variables_that_settings_reads():
    worker = SERVICES["worker"]
    assert "command" not in worker and "env_file" not in worker
    known = {env_name(field) for field in Settings.model_fields}
    env = environment("worker")
    assert set(env) <= known, set(env) - known
    assert {"DATABASE_URL", "TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE"} <= set(env)


def test_the_worker_environment_loads_into_settings_pointing_at_the_compose_services(
    monkeypatch, tmp_path
):
    monkeypatch.chdir(tmp_path)
    for name, value in environment("worker").items():
        monkeypatch.setenv(name, value)

    settings = load_settings()

    assert settings.database_url is not None
    database_url = settings.database_url.get_secret_value()
    postgres = environment("postgresql")
    assert database_url == (
        f"postgresql://{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}"
        f"@postgresql:5432/{postgres['POSTGRES_DB']}"
    )
    assert database_url == environment("migrate")["DATABASE_URL"]
    assert settings.temporal_address == "temporal:7233"
    assert settings.metrics_port is not None
    assert str(settings.metrics_port) in SERVICES["worker"]["expose"]
    assert str(settings.metrics_port) in " ".join(SERVICES["worker"]["healthcheck"]["test"])
    assert settings.log_format == "json"


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


@pytest.mark.parametrize("service", ["worker", "codec-server"])
def test_the_worker_and_the_codec_server_run_as_production_with_the_same_payload_keys(
    service, monkeypatch, tmp_path
):
    monkeypatch.chdir(tmp_path)
    env = environment(service)
    known = {env_name(field) for field in Settings.model_fields}
    assert set(env) <= known, set(env) - known
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    settings = load_settings()
    if service == "codec-server":
        check_codec_server_settings(settings)  # a token is set

    assert settings.production
    assert payload_key_ring(settings).current == "compose-1"


def test_the_web_ui_decodes_through_the_codec_server_it_is_allowed_to_call():
    codec = environment("codec-server")
    endpoint = environment("temporal-ui")["TEMPORAL_CODEC_ENDPOINT"]
    assert endpoint.endswith(f":{codec['CHANGEFLOW_CODEC_SERVER_PORT']}")
    assert f"{codec['CHANGEFLOW_CODEC_SERVER_PORT']}:" in SERVICES["codec-server"]["ports"][0]
    assert environment("temporal-ui")["TEMPORAL_CORS_ORIGINS"] in codec[
        "CHANGEFLOW_CODEC_CORS_ORIGINS"
    ].split(",")
