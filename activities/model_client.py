"""One streamed chat-completions call to an OpenAI-compatible endpoint, through the `openai`
SDK's async client with its own retries off: Temporal retries the activity, so a call is
repeated only by a new attempt, which first looks at what was recorded (activities.model_calls).

A failure comes out typed: `ModelRefused` (a ChangeEngineError of an ErrorType, not retried) for
401/403, 404 and 400, and a retryable ApplicationError for 429, 5xx, timeouts and connection
failures, which honours the server's Retry-After. A stream that ends before the server reported
usage is a `StreamBroken`: the caller charges it by its cap.
"""

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import openai
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.change_engine import ChangeEngineError
from workers.settings import Settings
from workflows.contracts.errors import ErrorType

# Retryable failures: not ErrorType members, since every member is non-retryable.
MODEL_UNAVAILABLE = "ModelUnavailable"
MODEL_STREAM_BROKEN = "ModelStreamBroken"
HEARTBEAT_EVERY_S = 1.0
_CONTEXT_WORDS = ("context_length", "context length", "maximum context", "too many tokens")

# The SDK logs request bodies (prompts, repository content) at DEBUG: never ours to log.
for _name in ("openai", "httpx", "httpx2", "httpcore", "httpcore2"):
    logging.getLogger(_name).setLevel(logging.WARNING)


class ModelRefused(ChangeEngineError):
    """The endpoint refused the call in a way retrying cannot mend; `kind` says how."""

    def __init__(self, kind: ErrorType, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class StreamBroken(Exception):
    """The stream ended before the server reported the call's usage."""


@dataclass(frozen=True)
class ModelAnswer:
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int


class ModelClient:
    def __init__(self, settings: Settings) -> None:
        key = settings.model_api_key
        self.model = settings.model_name
        self._client = openai.AsyncOpenAI(
            base_url=settings.model_base_url,
            # The SDK refuses to start without a key; a local server may need none.
            api_key=key.get_secret_value() if key is not None else "unset",
            max_retries=0,
            timeout=settings.model_timeout_seconds,
        )

    async def complete(self, messages: list[dict[str, str]], *, max_tokens: int) -> ModelAnswer:
        try:
            stream = await self._client.chat.completions.create(  # type: ignore[call-overload]
                model=self.model,
                messages=messages,
                max_tokens=max_tokens,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        except openai.APIStatusError as exc:
            raise _status_failure(exc) from None
        except (openai.APITimeoutError, openai.APIConnectionError) as exc:
            raise _unavailable(
                f"the model endpoint did not answer ({type(exc).__name__})"
            ) from None
        parts: list[str] = []
        finish_reason: str | None = None
        usage: Any = None
        beat = time.monotonic()
        try:
            async for chunk in stream:
                if chunk.choices:
                    choice = chunk.choices[0]
                    if choice.delta and choice.delta.content:
                        parts.append(choice.delta.content)
                    finish_reason = choice.finish_reason or finish_reason
                if chunk.usage is not None:
                    usage = chunk.usage
                if activity.in_activity() and time.monotonic() - beat >= HEARTBEAT_EVERY_S:
                    activity.heartbeat(f"{len(parts)} chunks received")
                    beat = time.monotonic()
        except Exception as exc:  # a transport error of the SDK's HTTP stack mid-stream
            raise StreamBroken(f"the stream broke ({type(exc).__name__})") from None
        if usage is None:
            raise StreamBroken("the stream ended without reporting usage")
        return ModelAnswer(
            text="".join(parts),
            finish_reason=finish_reason,
            prompt_tokens=int(usage.prompt_tokens or 0),
            completion_tokens=int(usage.completion_tokens or 0),
        )

    async def close(self) -> None:
        await self._client.close()


def _status_failure(exc: openai.APIStatusError) -> Exception:
    status = exc.status_code
    detail = _detail(exc)
    if status in (401, 403):
        return ModelRefused(
            ErrorType.MODEL_AUTH_FAILED,
            f"the model endpoint refused the API key (HTTP {status}: {detail}); set "
            "CHANGEFLOW_MODEL_API_KEY to a key that may use the model",
        )
    if status == 404:
        return ModelRefused(
            ErrorType.MODEL_NOT_FOUND,
            f"the model endpoint has no model or route for this call (HTTP 404: {detail}); "
            "check CHANGEFLOW_MODEL_NAME and CHANGEFLOW_MODEL_BASE_URL (it ends in /v1)",
        )
    if status == 400 and any(word in detail.lower() for word in _CONTEXT_WORDS):
        return ModelRefused(
            ErrorType.MODEL_CONTEXT_EXCEEDED,
            f"the request is longer than the model's context ({detail}); lower "
            "CHANGEFLOW_MODEL_CONTEXT_BYTES or use a model with a longer context",
        )
    if status == 429 or status >= 500:
        return _unavailable(f"the model endpoint is unavailable (HTTP {status}: {detail})", exc)
    return ModelRefused(
        ErrorType.MODEL_REQUEST_REFUSED,
        f"the model endpoint refused the call (HTTP {status}: {detail})",
    )


def _unavailable(message: str, exc: openai.APIStatusError | None = None) -> ApplicationError:
    delay = _retry_after(exc.response.headers.get("retry-after")) if exc is not None else None
    return ApplicationError(f"{message}; retried", type=MODEL_UNAVAILABLE, next_retry_delay=delay)


def _retry_after(value: str | None) -> timedelta | None:
    """Retry-After as seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    try:
        return timedelta(seconds=max(0.0, float(value)))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when - datetime.now(UTC), timedelta(0))


def _detail(exc: openai.APIStatusError) -> str:
    """The error body's message (a server's words, never the request's)."""
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:300]
    return exc.message[:300]
