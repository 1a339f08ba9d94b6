"""The GitHub stand-in as a running server: one Starlette app on uvicorn, in a thread of the
test process, serving REST, git over smart HTTP and a small web page per pull request, all on
one port, the way github.com serves its API, its git and its pages on one host."""

import asyncio
import contextlib
import html
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from scripts.github_stand_in.events import EventPayloads
from scripts.github_stand_in.git_http import GitSmartHttp
from scripts.github_stand_in.records import App, Installation, Repository, StandInClock
from scripts.github_stand_in.rest import Call, RestApi
from scripts.github_stand_in.shapes import Shapes
from scripts.github_stand_in.state import GitHubState
from scripts.github_stand_in.webhooks import WebhookSender

PULL_PAGE = "/{owner}/{repo}/pull/{number}"
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


class GitHubStandIn:
    """A local GitHub with real state. `url` is both the API base URL and the web/git host:
    clone `{url}/{owner}/{repo}.git`, call `{url}/repos/...`."""

    def __init__(self, root: Path, *, webhook_url: str | None = None) -> None:
        self.root = root
        self.clock = StandInClock()
        self.state = GitHubState(root / "repositories", self.clock)
        self.state.root.mkdir(parents=True, exist_ok=True)
        self._socket = socket.socket()
        # Answers go out at once (no Nagle wait for the client's delayed ACK: 40 ms a request).
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port = int(self._socket.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.shapes = Shapes(self.state, self.url)
        self.rest = RestApi(self.state, self.shapes)
        self.git = GitSmartHttp(self.state)
        self.payloads = EventPayloads(self.state, self.shapes)
        self.webhooks = WebhookSender(secret="", url=webhook_url)
        self.state.on_event = self._event
        self.requests: list[tuple[str, str, int]] = []  # method, path, status: what clients did
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # -- seeding --------------------------------------------------------------------------

    def create_app(self, slug: str = "changeflow", owner: str = "acme") -> App:
        app = self.state.create_app(slug=slug, owner=owner)
        # The App's webhook is the one the sender signs for.
        self.webhooks.secret = app.webhook_secret
        return app

    def install(self, app: App, account: str, repositories: list[str]) -> Installation:
        return self.state.install(app, account, repositories)

    def create_repository(self, owner: str, name: str, **options: Any) -> Repository:
        return self.state.create_repository(owner, name, **options)

    def clone_url(self, repository: Repository, token: str | None = None) -> str:
        credentials = f"x-access-token:{token}@" if token else ""
        return f"http://{credentials}127.0.0.1:{self.port}/{repository.full_name}.git"

    def pull_url(self, repository: Repository, number: int) -> str:
        return f"{self.url}/{repository.full_name}/pull/{number}"

    # -- serving --------------------------------------------------------------------------

    def _event(self, event: str, full_name: str, raw: dict[str, Any]) -> None:
        self.webhooks.enqueue(event, self.payloads.build(event, full_name, raw))

    async def _handle(self, request: Request) -> Response:
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        path = request.url.path
        git = await run_in_threadpool(
            self.git.serve, request.method, path, request.url.query, headers, body
        )
        if git is not None:
            self.requests.append((request.method, path, git.status))
            return Response(git.body, status_code=git.status, headers=dict(git.headers))
        call = Call(request.method, path, {}, dict(request.query_params), headers, body)
        answer = await run_in_threadpool(self.rest.serve, call)
        if answer is None:
            page = await run_in_threadpool(self._page, path)
            if page is not None:
                return page
            answer_status, content = (
                404,
                {
                    "message": "Not Found",
                    "documentation_url": "https://docs.github.com/rest",
                    "status": "404",
                },
            )
            self.requests.append((request.method, path, answer_status))
            return JSONResponse(content, status_code=answer_status)
        self.requests.append((request.method, path, answer.status))
        if answer.body is None:
            return Response(status_code=answer.status, headers=answer.headers)
        return JSONResponse(answer.body, status_code=answer.status, headers=answer.headers)

    def _page(self, path: str) -> Response | None:
        """A pull request's page, so a printed html_url leads somewhere readable."""
        parts = path.strip("/").split("/")
        if len(parts) != 4 or parts[2] != "pull" or not parts[3].isdigit():
            return None
        pull = self.state.pulls.get((f"{parts[0]}/{parts[1]}", int(parts[3])))
        if pull is None:
            return None
        state = "merged" if pull.merged else pull.state
        return HTMLResponse(
            f"<h1>{html.escape(pull.title)} #{pull.number}</h1>"
            f"<p>GitHub stand-in (tests only) &middot; {state} &middot; "
            f"{html.escape(pull.head_ref)} into {html.escape(pull.base_ref)}</p>"
            f"<pre>{html.escape(pull.body or '')}</pre>"
        )

    async def _settle_forever(self) -> None:
        # Scripted checks end on the stand-in's clock even when nobody asks.
        while True:
            await run_in_threadpool(self.state.settle)
            await asyncio.sleep(0.05)

    def start(self) -> "GitHubStandIn":
        app = Starlette(routes=[Route("/{path:path}", self._handle, methods=METHODS)])
        config = uvicorn.Config(app, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)

        def run() -> None:
            async def main() -> None:
                assert self._server is not None
                settler = asyncio.create_task(self._settle_forever())
                try:
                    await self._server.serve(sockets=[self._socket])
                finally:
                    settler.cancel()

            asyncio.run(main())

        self._thread = threading.Thread(target=run, name="github-stand-in", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the GitHub stand-in did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.webhooks.stop()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._socket.close()


@contextlib.contextmanager
def github_stand_in(root: Path | None = None, **options: Any) -> Iterator[GitHubStandIn]:
    """A running stand-in for the block; its repositories live under `root` (a temp folder)."""
    with contextlib.ExitStack() as stack:
        if root is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="github-stand-in-")))
        stand_in = GitHubStandIn(root, **options).start()
        try:
            yield stand_in
        finally:
            stand_in.stop()
