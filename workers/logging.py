"""structlog, configured once by entry points. Stdlib and temporalio loggers flow through it."""

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from workers.settings import LogFormat, Settings

_SECRET_KEYS = re.compile(r"(password|passwd|secret|api_key|apikey|authorization|credential)", re.I)
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)([^@\s]+)(@)")


def redact_secrets(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Mask secret-named fields and passwords inside URLs, whatever the caller passed."""
    for key, value in list(event_dict.items()):
        if _SECRET_KEYS.search(key) and value is not None:
            event_dict[key] = "***"
        elif isinstance(value, str) and "://" in value:
            event_dict[key] = _URL_PASSWORD.sub(r"\1***\3", value)
    return event_dict


def configure_logging(settings: Settings, *, stream: Any = None) -> None:
    stream = stream or sys.stderr
    use_json = settings.log_format == LogFormat.JSON or (
        settings.log_format == LogFormat.AUTO and not stream.isatty()
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.value)
    # Chatty libraries stay at WARNING unless we are debugging.
    for name in ("sqlalchemy.engine", "alembic", "asyncio", "pgserver"):
        logging.getLogger(name).setLevel(
            logging.DEBUG if settings.log_level == "DEBUG" else logging.WARNING
        )
