"""One chat-completions call to an OpenAI-compatible endpoint, through the `openai` SDK's async
client with its own retries off: Temporal retries the activity, so a call is repeated only by a
new attempt, which first looks at what was recorded (activities.model_calls).

The call is not streamed: every server reports `usage` in a complete (non-streamed) answer,
while streamed usage depends on the server (llama-cpp-python's server ignores
`stream_options.include_usage`), and the engine uses an answer only once it is complete anyway.
The activity heartbeats while it waits (activities.lifecycle's heartbeating).

A failure comes out typed: `ModelRefused` (a ChangeEngineError of an ErrorType, not retried) for
401/403, 404, a context too long (in the wordings of OpenAI, vLLM, llama.cpp, llama-cpp-python
and Ollama) and other 400s; a retryable ApplicationError of type MODEL_UNAVAILABLE for 429, 5xx,
timeouts and refused connections, which honours the server's Retry-After. A connection that
breaks after the question was sent is a `StreamBroken`: the server may have read it.

`count_tokens` asks the server's tokenizer endpoint, where it has one, how many tokens the
messages make: vLLM's `POST /tokenize` (with the chat template), llama.cpp's `POST /tokenize`
and llama-cpp-python's `POST /extras/tokenize/count`; None where none answers.
"""

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import httpx
import openai
from temporalio.exceptions import ApplicationError

from activities.change_engine import ChangeEngineError
from infra.settings import Settings
from workflows.contracts.errors import MODEL_UNAVAILABLE, ErrorType

# Retryable: not an ErrorType member, since every member is non-retryable.
MODEL_STREAM_BROKEN = "ModelStreamBroken"
# What servers say when the question does not fit the model's context (lower case). Sources:
# OpenAI and vLLM ("This model's maximum context length is N tokens. However, you requested...",
# vllm/entrypoints/openai/serving_engine.py; "The decoder prompt (length N) is longer than the
# maximum model length of M.", vllm/v1/engine/processor.py); llama.cpp's server ("request (N
# tokens) exceeds the available context size (M tokens), try increasing it", type
# exceed_context_size_error, tools/server/server.cpp); llama-cpp-python (OpenAI's wording, code
# context_length_exceeded, llama_cpp/server/errors.py); Ollama ("the input length exceeds the
# context length", llm/server.go). Kept with their sources in scripts/model_stand_in.py.
_CONTEXT_WORDS = (
    "context_length",
    "context length",
    "maximum context",
    "exceeds the available context size",
    "exceed_context_size",
    "maximum model length",
    "too many tokens",
)
# A server's own words in a reason, at most this long (cut at a sentence or a word).
DETAIL_CHARS = 240
TOKENIZE_TIMEOUT_S = 5.0

# The SDK logs request bodies (prompts, repository content) at DEBUG: never ours to log.
for _name in ("openai", "httpx", "httpx2", "httpcore", "httpcore2"):
    logging.getLogger(_name).setLevel(logging.WARNING)


class ModelRefused(ChangeEngineError):
    """The endpoint refused the call in a way retrying cannot mend; `kind` says how."""

    def __init__(self, kind: ErrorType, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class StreamBroken(Exception):
    """The connection broke after the question was sent, before the answer arrived."""


@dataclass(frozen=True)
class ModelAnswer:
    text: str
    finish_reason: str | None
    # None when the server reported no usage (the engine then charges the call's cap).
    prompt_tokens: int | None
    completion_tokens: int | None


class ModelClient:
    def __init__(self, settings: Settings) -> None:
        key = settings.model_api_key
        self.model = settings.model_name
        self._give_up_after_s = settings.model_unavailable_seconds
        self._root = settings.model_base_url.rstrip("/").removesuffix("/v1")
        self._headers = {"Authorization": f"Bearer {key.get_secret_value()}"} if key else {}
        self._client = openai.AsyncOpenAI(
            base_url=settings.model_base_url,
            # The SDK refuses to start without a key; a local server may need none.
            api_key=key.get_secret_value() if key is not None else "unset",
            max_retries=0,
            timeout=settings.model_timeout_seconds,
        )
        # Which tokenizer endpoint answered ("" once none did): asked once per client.
        self._tokenizer: str | None = None

    async def complete(self, messages: list[dict[str, str]], *, max_tokens: int) -> ModelAnswer:
        try:
            reply = await self._client.chat.completions.create(
                model=self.model,
                messages=messages,  # type: ignore[arg-type]
                max_tokens=max_tokens,
                temperature=0,
            )
        except openai.APIStatusError as exc:
            raise _status_failure(exc, self._give_up_after_s) from None
        except openai.APITimeoutError:
            raise _unavailable(
                "the model endpoint did not answer in time", self._give_up_after_s
            ) from None
        except openai.APIConnectionError as exc:
            # The SDK's HTTP stack (httpx or its fork httpx2): matched by the error's name.
            if type(exc.__cause__).__name__ == "ConnectError":
                raise _unavailable(
                    "the model endpoint does not answer (nothing listens at "
                    "CHANGEFLOW_MODEL_BASE_URL)",
                    self._give_up_after_s,
                ) from None
            raise StreamBroken(f"the connection broke ({type(exc.__cause__).__name__})") from None
        if not reply.choices:
            raise StreamBroken("the answer held no choice")
        choice = reply.choices[0]
        usage = reply.usage
        return ModelAnswer(
            text=choice.message.content or "",
            finish_reason=choice.finish_reason,
            prompt_tokens=usage.prompt_tokens if usage is not None else None,
            completion_tokens=usage.completion_tokens if usage is not None else None,
        )

    async def count_tokens(self, messages: list[dict[str, str]]) -> tuple[int, bool] | None:
        """(tokens, templated) from the server's tokenizer: templated when the count includes
        the chat template (vLLM), else the sum over the messages' contents. None without one."""
        if self._tokenizer == "":
            return None
        async with httpx.AsyncClient(timeout=TOKENIZE_TIMEOUT_S, headers=self._headers) as http:
            for kind in [self._tokenizer] if self._tokenizer else list(_TOKENIZERS):
                try:
                    counted = await _TOKENIZERS[kind](http, self._root, self.model, messages)
                except httpx.TransportError:
                    return None  # the server is not there (yet): ask again next time
                except (httpx.HTTPError, ValueError, KeyError, TypeError):
                    counted = None
                if counted is not None:
                    self._tokenizer = kind
                    return counted, kind == "vllm"
        if self._tokenizer is None:
            self._tokenizer = ""  # it answered, without a tokenizer endpoint we know
        return None

    async def close(self) -> None:
        await self._client.close()


async def _vllm_count(
    http: httpx.AsyncClient, root: str, model: str, messages: list[dict[str, str]]
) -> int | None:
    body = {"model": model, "messages": messages, "add_generation_prompt": True}
    answer = await http.post(f"{root}/tokenize", json=body)
    return int(answer.json()["count"]) if answer.status_code == 200 else None


async def _llama_cpp_count(
    http: httpx.AsyncClient, root: str, model: str, messages: list[dict[str, str]]
) -> int | None:
    total = 0
    for message in messages:
        answer = await http.post(f"{root}/tokenize", json={"content": message["content"]})
        if answer.status_code != 200:
            return None
        tokens = answer.json()["tokens"]
        if not isinstance(tokens, list) or (message["content"] and not tokens):
            return None
        total += len(tokens)
    return total


async def _llama_cpp_python_count(
    http: httpx.AsyncClient, root: str, model: str, messages: list[dict[str, str]]
) -> int | None:
    total = 0
    for message in messages:
        body = {"model": model, "input": message["content"]}
        answer = await http.post(f"{root}/extras/tokenize/count", json=body)
        if answer.status_code != 200:
            return None
        total += int(answer.json()["count"])
    return total


_TOKENIZERS = {
    "vllm": _vllm_count,
    "llama.cpp": _llama_cpp_count,
    "llama-cpp-python": _llama_cpp_python_count,
}


def _status_failure(exc: openai.APIStatusError, give_up_after_s: float) -> Exception:
    status = exc.status_code
    detail = _detail(exc)
    if status in (401, 403):
        return ModelRefused(
            ErrorType.MODEL_AUTH_FAILED,
            f"the model endpoint refused the API key (HTTP {status}); set "
            "CHANGEFLOW_MODEL_API_KEY to a key that may use the model",
        )
    if status == 404:
        return ModelRefused(
            ErrorType.MODEL_NOT_FOUND,
            f"the model endpoint has no model or route for this call (HTTP 404: {detail}); "
            "check CHANGEFLOW_MODEL_NAME and CHANGEFLOW_MODEL_BASE_URL (it ends in /v1)",
        )
    if status in (400, 413, 422, 500) and is_context_exceeded(exc):
        return ModelRefused(
            ErrorType.MODEL_CONTEXT_EXCEEDED,
            f"the request is longer than the model's context ({detail}); lower "
            "CHANGEFLOW_MODEL_CONTEXT_BYTES or use a model with a longer context",
        )
    if status == 429 or status >= 500:
        return _unavailable(
            f"the model endpoint is unavailable (HTTP {status}: {detail})", give_up_after_s, exc
        )
    return ModelRefused(
        ErrorType.MODEL_REQUEST_REFUSED,
        f"the model endpoint refused the call (HTTP {status}: {detail})",
    )


def is_context_exceeded(exc: openai.APIStatusError) -> bool:
    """Whether the error body says the question does not fit the context, in any wording."""
    said = f"{exc.body} {exc.message}".lower()
    return any(words in said for words in _CONTEXT_WORDS)


def _unavailable(
    message: str, give_up_after_s: float, exc: openai.APIStatusError | None = None
) -> ApplicationError:
    delay = _retry_after(exc.response.headers.get("retry-after")) if exc is not None else None
    return ApplicationError(
        message, give_up_after_s, type=MODEL_UNAVAILABLE, next_retry_delay=delay
    )


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
    """The error body's message (a server's words, never the request's), briefly."""
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return brief(str(inner["message"]))
        if isinstance(inner, str):
            return brief(inner)
    return brief(exc.message)


def brief(text: str, limit: int = DETAIL_CHARS) -> str:
    """`text` on one line, cut at its last sentence (else word) within `limit`, never mid-word."""
    words = " ".join(text.split())
    if len(words) <= limit:
        return words
    cut = words[:limit]
    end = max(cut.rfind(". "), cut.rfind("; "))
    return cut[: end + 1] if end > limit // 2 else cut[: cut.rfind(" ")] + " …"
