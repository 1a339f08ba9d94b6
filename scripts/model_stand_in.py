"""A local stand-in for an OpenAI-compatible model endpoint, speaking the real protocol.

`POST /v1/chat/completions` (streaming SSE with a usage chunk when asked and `[DONE]`, or one
JSON reply with `usage`), `finish_reason` `length` when max_tokens cuts an answer, `GET
/v1/models`, error bodies with their status (and `Retry-After`), and connections broken mid-way.
Answers are scripted: the first unused `Reply` whose `when` occurs in the last message, so a test
knows what the model says to what. It is not a model: it never reads code.

`StandIn.server` makes it behave like one of the servers the README names, as far as the engine
can tell them apart (facts from each project's source, the files named in SERVERS):
- whether a stream honours `stream_options.include_usage` (llama-cpp-python 0.3.x ignores it:
  its streams end with finish_reason and [DONE] and no usage chunk, llama_cpp/llama.py
  _create_completion; its non-streamed answers carry usage);
- the tokenizer endpoint it has, if any;
- the status and body of its context-length error, word for word.

It counts and keeps every request it was sent, so tests can tell how often the model was asked.
"""

import json
import math
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

NO_EDIT = "I cannot make that change."


@dataclass(frozen=True)
class Server:
    streamed_usage: bool  # honours stream_options.include_usage
    tokenizer: str | None  # the route of its tokenizer endpoint
    context_status: int
    context_error: dict[str, Any]  # the body of its context-length error
    source: str


SERVERS: dict[str, Server] = {
    "openai": Server(
        True,
        None,
        400,
        {
            "error": {
                "message": "This model's maximum context length is 8192 tokens. However, your "
                "messages resulted in 9000 tokens. Please reduce the length of the messages.",
                "type": "invalid_request_error",
                "param": "messages",
                "code": "context_length_exceeded",
            }
        },
        "OpenAI API reference (error codes); openai-python's tests",
    ),
    "vllm": Server(
        True,
        "/tokenize",  # {"model", "messages"} -> {"count", "max_model_len", "tokens"}
        400,
        {
            "object": "error",
            "message": "This model's maximum context length is 2048 tokens. However, you "
            "requested 3072 tokens (2048 in the messages, 1024 in the completion). Please "
            "reduce the length of the messages or completion.",
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        },
        "vllm/entrypoints/openai/serving_engine.py (_validate_input), protocol.py ErrorResponse",
    ),
    "llama.cpp": Server(
        True,
        "/tokenize",  # {"content"} -> {"tokens"}
        400,
        {
            "error": {
                "code": 400,
                "message": "request (4476 tokens) exceeds the available context size "
                "(4096 tokens), try increasing it",
                "type": "exceed_context_size_error",
                "n_prompt_tokens": 4476,
                "n_ctx": 4096,
            }
        },
        "llama.cpp tools/server/server.cpp and utils.hpp (format_error_response)",
    ),
    "llama-cpp-python": Server(
        False,
        "/extras/tokenize/count",  # {"model", "input"} -> {"count"}
        400,
        {
            "error": {
                "message": "This model's maximum context length is 2048 tokens. However, you "
                "requested 3072 tokens (2048 in the messages, 1024 in the completion). Please "
                "reduce the length of the messages or completion.",
                "type": "invalid_request_error",
                "param": "messages",
                "code": "context_length_exceeded",
            }
        },
        "llama-cpp-python 0.3.36 llama_cpp/server/errors.py, llama_cpp/server/app.py",
    ),
    "ollama": Server(
        True,
        None,
        400,
        {
            "error": {
                "message": "the input length exceeds the context length",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        },
        "ollama llm/server.go; openai/openai.go (NewError) wraps it",
    ),
}


def tokens_of(text: str) -> int:
    """The stand-in's tokenizer: four characters a token, like pricing's rough rule."""
    return math.ceil(len(text) / 4)


@dataclass
class Reply:
    answer: str = ""
    when: str = ""  # a substring of the last message; empty matches anything
    times: int = 1  # how many requests this reply answers
    status: int = 200  # an error status answers with an error body instead
    error_message: str = ""
    retry_after: str | None = None
    break_after_chunks: int | None = None  # drop the connection after this many chunks
    context_exceeded: bool = False  # answer with the server's context-length error
    # Reported usage instead of the stand-in's own count (a server that counts differently).
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    delay_s: float = 0.0


@dataclass
class StandIn:
    api_key: str | None = None
    model: str = "stand-in-model"
    server: str = "openai"  # one of SERVERS
    script: list[Reply] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def calls(self) -> int:
        return len(self.requests)

    @property
    def kind(self) -> Server:
        return SERVERS[self.server]

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        """What it reports as prompt_tokens, and its templated /tokenize count (vLLM)."""
        return sum(4 + tokens_of(m["content"]) for m in messages)

    def choose(self, body: dict[str, Any]) -> Reply:
        last = body["messages"][-1]["content"] if body.get("messages") else ""
        with self._lock:
            self.requests.append(body)
            for reply in self.script:
                if reply.times > 0 and reply.when in last:
                    reply.times -= 1
                    return reply
        return Reply(answer=NO_EDIT)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests read their own logs

    def do_GET(self) -> None:
        if self.path.rstrip("/") != "/v1/models":
            return self._error(404, "no such route", "not_found")
        if not self._authorised():
            return
        model = self.server.stand_in.model
        self._json(200, {"object": "list", "data": [{"id": model, "object": "model"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        stand_in = self.server.stand_in
        if stand_in.kind.tokenizer and self.path == stand_in.kind.tokenizer:
            return self._tokenize(body)
        if self.path.rstrip("/") != "/v1/chat/completions":
            return self._error(404, "no such route", "not_found")
        if not self._authorised():
            return
        if body.get("model") != stand_in.model:
            return self._error(404, f"The model {body.get('model')!r} does not exist", "model")
        reply = stand_in.choose(body)
        time.sleep(reply.delay_s)
        if reply.context_exceeded:
            return self._json(stand_in.kind.context_status, stand_in.kind.context_error)
        if reply.status != 200:
            return self._error(reply.status, reply.error_message, "scripted", reply.retry_after)
        max_tokens = int(body.get("max_tokens") or 1_000_000)
        answer, finish = reply.answer, "stop"
        if tokens_of(answer) > max_tokens:
            answer, finish = answer[: max_tokens * 4], "length"
        prompt_tokens = reply.prompt_tokens
        if prompt_tokens is None:
            prompt_tokens = stand_in.prompt_tokens(body["messages"])
        completion = reply.completion_tokens
        if completion is None:
            completion = tokens_of(answer)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
        }
        if body.get("stream"):
            asked = bool((body.get("stream_options") or {}).get("include_usage"))
            include_usage = asked and stand_in.kind.streamed_usage
            self._stream(answer, finish, usage if include_usage else None, reply)
        else:
            message = {"role": "assistant", "content": answer}
            whole = _completion(message, finish, usage, stand_in.model)
            if reply.break_after_chunks is not None:
                return self._broken_json(whole)
            self._json(200, whole)

    def _tokenize(self, body: dict[str, Any]) -> None:
        stand_in = self.server.stand_in
        if stand_in.kind.tokenizer == "/extras/tokenize/count":
            return self._json(200, {"count": tokens_of(body["input"])})
        if stand_in.server == "vllm":
            count = stand_in.prompt_tokens(body["messages"])
            return self._json(200, {"count": count, "max_model_len": 8192, "tokens": []})
        # llama.cpp: the content's tokens
        self._json(200, {"tokens": list(range(tokens_of(body.get("content", ""))))})

    def _broken_json(self, body: dict[str, Any]) -> None:
        """Headers and half the body, then the connection drops: a broken answer."""
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True

    def _authorised(self) -> bool:
        key = self.server.stand_in.api_key
        if key is not None and self.headers.get("Authorization") != f"Bearer {key}":
            self._error(401, "Incorrect API key provided", "invalid_api_key")
            return False
        return True

    def _stream(self, answer: str, finish: str, usage: dict[str, int] | None, reply: Reply) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        model = self.server.stand_in.model
        pieces = [answer[i : i + 16] for i in range(0, len(answer), 16)] or [""]
        events = [_chunk({"role": "assistant", "content": ""}, None, model)]
        events += [_chunk({"content": piece}, None, model) for piece in pieces]
        events.append(_chunk({}, finish, model))
        if usage is not None:
            events.append({**_chunk({}, None, model), "choices": [], "usage": usage})
        for number, event in enumerate(events):
            if reply.break_after_chunks is not None and number >= reply.break_after_chunks:
                # Half a chunk, then the connection drops: a transport error for the client.
                self.wfile.write(b'40\r\ndata: {"id"')
                self.wfile.flush()
                self.close_connection = True
                return
            self._send_chunk(f"data: {json.dumps(event)}\n\n".encode())
        self._send_chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")

    def _send_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _error(self, status: int, message: str, code: str, retry_after: str | None = None) -> None:
        body = {"error": {"message": message, "type": "invalid_request_error", "code": code}}
        self._json(status, body, {"Retry-After": retry_after} if retry_after else {})

    def _json(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def _chunk(delta: dict[str, Any], finish: str | None, model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-stand-in",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _completion(
    message: dict[str, str], finish: str, usage: dict[str, int], model: str
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-stand-in",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": usage,
    }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    stand_in: StandIn


class RunningStandIn:
    """The stand-in served on 127.0.0.1 in a background thread until stop()."""

    def __init__(self, stand_in: StandIn, port: int = 0) -> None:
        self.stand_in = stand_in
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.stand_in = stand_in
        self._thread = threading.Thread(
            # shutdown() waits for the serving loop's next look (every 0.5 s by default).
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
        )
        self._thread.start()

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def edit_block(path: str, search: str, replace: str) -> str:
    """An answer with one SEARCH/REPLACE block (activities.edit_format)."""
    return f"{path}\n<<<<<<< SEARCH\n{search}=======\n{replace}>>>>>>> REPLACE\n"
