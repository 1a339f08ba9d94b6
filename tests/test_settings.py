"""Settings come from the environment names Temporal's tools and our own prefix use; bad
configuration stops start-up with one clear line and exit code 2."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from client.connection import tls_config
from infra.settings import ConfigurationError, LogFormat, LogLevel, load_settings
from tests.process_support import clean_environment as shell_environment

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No stray variables or .env file of the machine leak into what a test asserts."""
    for name in list(os.environ):
        if name.startswith(("CHANGEFLOW_", "TEMPORAL_")) or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_connection_settings_come_from_the_names_temporal_and_postgres_tools_use(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:pw@db.internal:5432/changeflow")
    monkeypatch.setenv("TEMPORAL_ADDRESS", "temporal.internal:7233")
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "shops")
    monkeypatch.setenv("TEMPORAL_API_KEY", "key-123")

    settings = load_settings()

    assert settings.database_url is not None
    assert settings.database_url.get_secret_value().endswith("@db.internal:5432/changeflow")
    assert settings.temporal_address == "temporal.internal:7233"
    assert settings.temporal_namespace == "shops"
    assert settings.temporal_api_key is not None
    assert settings.temporal_api_key.get_secret_value() == "key-123"
    assert not settings.embedded_database and not settings.embedded_temporal
    # An API key means Temporal Cloud, which is always TLS.
    assert tls_config(settings) is True


def test_everything_else_lives_under_the_changeflow_prefix(monkeypatch):
    monkeypatch.setenv("CHANGEFLOW_TASK_QUEUE", "lifecycle-eu")
    monkeypatch.setenv("CHANGEFLOW_DEPLOY_TASK_QUEUE", "deploy-eu")
    monkeypatch.setenv("CHANGEFLOW_LOG_LEVEL", "debug")
    monkeypatch.setenv("CHANGEFLOW_LOG_FORMAT", "json")
    monkeypatch.setenv("CHANGEFLOW_METRICS_PORT", "9464")
    monkeypatch.setenv("CHANGEFLOW_MAX_CONCURRENT_ACTIVITIES", "7")
    monkeypatch.setenv("CHANGEFLOW_GRACEFUL_SHUTDOWN_SECONDS", "12.5")

    settings = load_settings()

    assert (settings.task_queue, settings.deploy_task_queue) == ("lifecycle-eu", "deploy-eu")
    assert settings.log_level is LogLevel.DEBUG
    assert settings.log_format is LogFormat.JSON
    assert settings.metrics_port == 9464
    assert settings.max_concurrent_activities == 7
    assert settings.graceful_shutdown_seconds == 12.5


def test_nothing_configured_means_the_embedded_stack():
    settings = load_settings()
    assert settings.embedded_database and settings.embedded_temporal
    assert settings.data_dir == Path(".changeflow")


def test_a_dotenv_file_is_read(tmp_path):
    (tmp_path / ".env").write_text("CHANGEFLOW_TASK_QUEUE=from-dotenv\n")
    assert load_settings().task_queue == "from-dotenv"


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("not a url", "DATABASE_URL is not a URL"),
        ("mysql://app:pw@db/changeflow", "DATABASE_URL must be a postgresql:// URL, not mysql://"),
        ("postgresql://app:pw@db:5432", "DATABASE_URL names no database"),
    ],
)
def test_a_malformed_database_url_is_a_configuration_error(monkeypatch, url, complaint):
    monkeypatch.setenv("DATABASE_URL", url)
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    assert complaint in str(raised.value)
    # The URL may carry a password: it is never echoed back.
    assert "pw" not in str(raised.value)


def test_an_unknown_log_level_names_the_variable_and_the_allowed_values(monkeypatch):
    monkeypatch.setenv("CHANGEFLOW_LOG_LEVEL", "loud")
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    message = str(raised.value)
    assert "CHANGEFLOW_LOG_LEVEL='LOUD'" in message
    assert "'DEBUG', 'INFO', 'WARNING', 'ERROR' or 'CRITICAL'" in message


def test_every_problem_is_reported_at_once(monkeypatch):
    monkeypatch.setenv("CHANGEFLOW_METRICS_PORT", "70000")
    monkeypatch.setenv("CHANGEFLOW_LOG_FORMAT", "xml")
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    assert "CHANGEFLOW_METRICS_PORT" in str(raised.value)
    assert "CHANGEFLOW_LOG_FORMAT='xml'" in str(raised.value)


def test_an_unreadable_tls_certificate_is_a_configuration_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TEMPORAL_TLS_CLIENT_CERT_PATH", str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigurationError, match="cannot read a Temporal TLS file"):
        tls_config(load_settings())


def run_worker_entry_point(env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "workers"],
        env=shell_environment(**env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        ({"CHANGEFLOW_LOG_LEVEL": "loud"}, "CHANGEFLOW_LOG_LEVEL='LOUD'"),
        ({"DATABASE_URL": "postgresql://app:s3cret@db"}, "DATABASE_URL names no database"),
        (
            # Nothing listens on port 1: the database is unreachable.
            {
                "DATABASE_URL": "postgresql://app:s3cret@127.0.0.1:1/changeflow",
                "TEMPORAL_ADDRESS": "127.0.0.1:1",
            },
            "cannot reach PostgreSQL at 127.0.0.1:1/changeflow",
        ),
        (
            {"CHANGEFLOW_SERVE_LIFECYCLE": "false", "CHANGEFLOW_SERVE_DEPLOY": "false"},
            "this worker would serve nothing",
        ),
    ],
    ids=["unknown-log-level", "malformed-url", "unreachable-database", "serves-nothing"],
)
def test_the_worker_stops_on_bad_configuration_with_one_line_and_exit_code_2(env, complaint):
    result = run_worker_entry_point(env)

    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("changeflow-worker: ")
    assert complaint in lines[0]
    assert "Traceback" not in result.stderr
    assert "s3cret" not in result.stderr + result.stdout


@pytest.mark.system
def test_the_worker_stops_with_one_line_when_temporal_is_unreachable(database_url):
    result = run_worker_entry_point(
        {"DATABASE_URL": database_url, "TEMPORAL_ADDRESS": "127.0.0.1:1"}
    )

    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("changeflow-worker: cannot reach Temporal at 127.0.0.1:1")


def test_tls_files_named_by_temporal_variables_are_read_for_the_connection(monkeypatch, tmp_path):
    for name, content in [("client.pem", b"CERT"), ("client.key", b"KEY"), ("ca.pem", b"CA")]:
        (tmp_path / name).write_bytes(content)
    monkeypatch.setenv("TEMPORAL_TLS_CLIENT_CERT_PATH", str(tmp_path / "client.pem"))
    monkeypatch.setenv("TEMPORAL_TLS_CLIENT_KEY_PATH", str(tmp_path / "client.key"))
    monkeypatch.setenv("TEMPORAL_TLS_SERVER_CA_CERT_PATH", str(tmp_path / "ca.pem"))
    monkeypatch.setenv("TEMPORAL_TLS_SERVER_NAME", "temporal.internal")

    tls = tls_config(load_settings())

    assert not isinstance(tls, bool)
    assert (tls.client_cert, tls.client_private_key, tls.server_root_ca_cert) == (
        b"CERT",
        b"KEY",
        b"CA",
    )
    assert tls.domain == "temporal.internal"


def test_plain_connections_unless_tls_is_asked_for(monkeypatch):
    assert tls_config(load_settings()) is False
    monkeypatch.setenv("TEMPORAL_TLS", "true")
    assert tls_config(load_settings()) is True
