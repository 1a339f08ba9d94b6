"""Around every activity: bind log context, so each line an activity (or the libraries it calls)
logs says which workflow, activity, attempt and tenant it belongs to, without the activity
formatting any of that into its messages; and bound the failure it hands to Temporal."""

import errno
from typing import Any

import asyncpg
import sqlalchemy.exc
import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory, FailureError
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

from workflows.contracts.failures import (
    FAILURE_CAUSES_KEPT,
    FAILURE_LINES_KEPT,
    FAILURE_PART_CHARS,
    MAX_FAILURE_MESSAGE_CHARS,
)

log = structlog.get_logger(__name__)


def tenant_of(args: Any) -> str | None:
    """The tenant id carried by an activity's input, when its payload names one."""
    for arg in args:
        tenant_id = (
            arg.get("tenant_id") if isinstance(arg, dict) else getattr(arg, "tenant_id", None)
        )
        if tenant_id is not None:
            return str(tenant_id)
    return None


class _BindActivityContext(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        context: dict[str, Any] = {
            "workflow_id": info.workflow_id,
            "workflow_type": info.workflow_type,
            "activity": info.activity_type,
            "attempt": info.attempt,
        }
        if (tenant_id := tenant_of(input.args)) is not None:
            context["tenant_id"] = tenant_id
        # Each activity runs in its own task (own context copy); the reset on exit keeps the
        # worker's own lines free of a finished activity's context.
        with structlog.contextvars.bound_contextvars(**context):
            return await self.next.execute_activity(input)


class LogContextInterceptor(Interceptor):
    """Worker interceptor: structlog contextvars bound around each activity execution."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _BindActivityContext(next)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _first_lines(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return _cut(" ".join(lines[:FAILURE_LINES_KEPT]), FAILURE_PART_CHARS)


def _underlying(exc: BaseException) -> BaseException | None:
    if exc.__cause__ is not None:
        return exc.__cause__
    return None if exc.__suppress_context__ else exc.__context__


def short_failure_message(exc: BaseException, message: str | None = None) -> str:
    """The error's first lines, then its causes' ("caused by Type: first lines"), bounded."""
    parts = [_cut(message, FAILURE_PART_CHARS) if message is not None else _first_lines(exc)]
    cause = _underlying(exc)
    for _ in range(FAILURE_CAUSES_KEPT):
        if cause is None:
            break
        text = _first_lines(cause)
        if text not in parts[-1]:  # wrappers often repeat their cause's text
            parts.append(
                f"caused by {type(cause).__name__}: {text}" if text else type(cause).__name__
            )
        cause = _underlying(cause)
    return _cut("; ".join(p for p in parts if p) or type(exc).__name__, MAX_FAILURE_MESSAGE_CHARS)


# A server that is down or going down, as the database drivers say it.
_UNREACHABLE = (
    ConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, cannot connect now
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    sqlalchemy.exc.InterfaceError,
)


def server_unreachable(exc: BaseException) -> bool:
    """The error (or one of its causes) says a server is down: a connection refused or cut, or
    a socket that is not there (an OSError without a file name: no file operation failed)."""
    seen: BaseException | None = exc
    for _ in range(FAILURE_CAUSES_KEPT + 2):
        if seen is None:
            return False
        if isinstance(seen, _UNREACHABLE) or (
            isinstance(seen, OSError)
            and seen.errno in (errno.ENOENT, errno.ECONNREFUSED)
            and seen.filename is None
        ):
            return True
        seen = _underlying(seen)
    return False


def bounded_failure(exc: Exception) -> Exception:
    """What Temporal gets for an activity's exception: typed errors keep their type and retry
    rule with a bounded message; any other error becomes a retryable ApplicationError named
    after its class (so retry policies' non-retryable types still match). Neither carries the
    traceback or the cause chain, only their short messages."""
    if isinstance(exc, ApplicationError):
        message = short_failure_message(exc, exc.message)
        if message == exc.message and _underlying(exc) is None:
            return exc
        return ApplicationError(
            message,
            *exc.details,
            type=exc.type,
            non_retryable=exc.non_retryable,
            next_retry_delay=exc.next_retry_delay,
            category=exc.category,
        )
    if isinstance(exc, FailureError):
        return exc  # Temporal's own (cancellation, timeouts): the SDK relies on their kind
    # An outage fails every attempt until the server is back: benign (the SDK logs it at
    # debug), since workers/outages.py logs the outage itself once.
    category = (
        ApplicationErrorCategory.BENIGN
        if server_unreachable(exc)
        else ApplicationErrorCategory.UNSPECIFIED
    )
    return ApplicationError(short_failure_message(exc), type=type(exc).__name__, category=category)


class _BoundFailures(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        try:
            return await self.next.execute_activity(input)
        except Exception as exc:
            bounded = bounded_failure(exc)
            if bounded is exc:
                raise
            # The whole story stays here; the history gets the short one.
            benign = (
                isinstance(bounded, ApplicationError)
                and bounded.category is ApplicationErrorCategory.BENIGN
            )
            (log.debug if benign else log.warning)(
                "activity failed", error_type=type(exc).__name__, exc_info=exc
            )
            raise bounded from None


class BoundedFailureInterceptor(Interceptor):
    """Worker interceptor: an activity's failure reaches Temporal short and readable."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _BoundFailures(next)


def worker_interceptors() -> list[Interceptor]:
    """Every worker's interceptors; the log context is bound outermost, so the failure line
    logged inside it carries the activity's context."""
    return [LogContextInterceptor(), BoundedFailureInterceptor()]
