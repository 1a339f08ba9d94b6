"""structlog, configured once by entry points. Stdlib and temporalio loggers flow through it.

Context (tenant, workflow, activity) is bound with structlog.contextvars, never formatted into
messages. Secrets are masked at the very end of the chain, after exceptions are rendered, so
neither an event field nor a traceback can leak them.
"""

import logging
import re
import sys
import time
from collections.abc import Callable, MutableMapping
from typing import Any, TextIO

import structlog
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from infra.settings import LogFormat, LogLevel, Settings

_SECRET_KEYS = re.compile(
    r"(password|passwd|secret|api_key|apikey|authorization|credential|token_value)", re.I
)
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)([^@\s]+)(@)")
MASK = "***"

# Values configured as secrets (DB password, Temporal API key): masked wherever they appear.
_known_secrets: set[str] = set()


def _mask(text: str) -> str:
    text = _URL_PASSWORD.sub(rf"\1{MASK}\3", text)
    for secret in _known_secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact_secrets(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Mask secret-named fields, passwords inside URLs and every known secret value."""
    for key, value in list(event_dict.items()):
        if _SECRET_KEYS.search(key) and value is not None:
            event_dict[key] = MASK
        elif isinstance(value, str):
            event_dict[key] = _mask(value)
        elif value is not None and not isinstance(value, int | float | bool):
            # Objects (settings, exceptions, URLs) are rendered by repr/str later: mask that.
            rendered = str(value)
            masked = _mask(rendered)
            if masked != rendered:
                event_dict[key] = masked
    return event_dict


def remember_secrets(settings: Settings) -> None:
    """Register the configured secret values so the log chain masks them anywhere."""
    for key in (settings.temporal_api_key, settings.model_api_key, settings.codec_server_token):
        if key is not None:
            _known_secrets.add(key.get_secret_value())
    if settings.database_url is not None:
        try:
            password = make_url(settings.database_url.get_secret_value()).password
        except ArgumentError:
            password = None
        if password:
            _known_secrets.add(str(password))
    _known_secrets.discard("")


def _drop_call_retries(record: logging.LogRecord) -> bool:
    return not record.name.endswith("temporalio_client::retry")


# Core's warning for each workflow task held open past 5 s (sdk-core's managed_run.rs). While the
# database is away every local activity waits, so every running workflow would log it, one line
# each, on top of the outage's own line; the workflow-task latency metric keeps every occurrence.
SLOW_WORKFLOW_TASK = "[TMPRL1104]"


class SlowTaskWarnings(logging.Filter):
    """At most one slow-workflow-task warning per `every_s`; it counts the ones held back."""

    def __init__(self, every_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.every_s = every_s
        self.clock = clock
        self.last_passed: float | None = None
        self.held_back = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if SLOW_WORKFLOW_TASK not in record.getMessage():
            return True
        now = self.clock()
        if self.last_passed is not None and now - self.last_passed < self.every_s:
            self.held_back += 1
            return False
        if self.held_back:
            record.msg = f"{record.getMessage()} ({self.held_back} more held back since the last)"
            record.args = ()
        self.last_passed, self.held_back = now, 0
        return True


def configure_logging(settings: Settings, *, stream: TextIO | None = None) -> None:
    """JSON off a terminal, console on one (or as CHANGEFLOW_LOG_FORMAT says)."""
    stream = stream or sys.stderr
    remember_secrets(settings)
    on_terminal = hasattr(stream, "isatty") and stream.isatty()
    use_json = settings.log_format == LogFormat.JSON or (
        settings.log_format == LogFormat.AUTO and not on_terminal
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=on_terminal)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: a reconfiguration (tests, a script after settings load) takes effect.
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redact_secrets,
                renderer,
            ],
        )
    )
    # Library warnings (py.warnings) become log lines too, instead of raw stderr text.
    logging.captureWarnings(True)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.value)
    # temporalio's workflow/activity loggers already attach their context as a structured
    # extra (temporal_workflow / temporal_activity); don't also format it into the message. A
    # process that runs workflows or activities has loaded them (with temporalio.worker) before
    # it configures logging; one that runs none (a `changeflow tenant` command) never loads them.
    workflow, activity = (
        sys.modules.get("temporalio.workflow"),
        sys.modules.get("temporalio.activity"),
    )
    if workflow is not None:
        workflow.logger.workflow_info_on_message = False
    if activity is not None:
        activity.logger.activity_info_on_message = False
    # Core's note on each retried call to an unreachable server would flood an outage's log;
    # the outage itself is logged once (workers/outages.py).
    core = logging.getLogger("temporalio.core")
    if _drop_call_retries not in core.filters:
        core.addFilter(_drop_call_retries)
    if not any(isinstance(f, SlowTaskWarnings) for f in core.filters):
        core.addFilter(SlowTaskWarnings())
    # Chatty libraries stay at WARNING unless we are debugging.
    debugging = settings.log_level == LogLevel.DEBUG
    for name in ("sqlalchemy.engine", "alembic", "asyncio", "pgserver"):
        logging.getLogger(name).setLevel(logging.DEBUG if debugging else logging.WARNING)
