"""A plain git remote over smart HTTP on this machine, for `make bench-lifecycle`: git's own
`git http-backend` run as a CGI program (real clones, fetches and pushes) for every bare
repository under one folder, served by uvicorn in a thread. Not a product part: what the
benchmark measures changeflow against, as a hosted git server would be."""

import asyncio
import contextlib
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

GIT_HTTP_BACKEND = shutil.which("git-http-backend") or "/usr/lib/git-core/git-http-backend"


def _cgi(root: Path, request: Request, body: bytes) -> Response:
    environment = {
        "GIT_PROJECT_ROOT": str(root),
        "GIT_HTTP_EXPORT_ALL": "1",
        "PATH_INFO": request.url.path,
        "REQUEST_METHOD": request.method,
        "QUERY_STRING": request.url.query,
        "CONTENT_TYPE": request.headers.get("content-type", ""),
        "CONTENT_LENGTH": str(len(body)),
        "REMOTE_USER": "changeflow",  # receive-pack refuses anonymous pushes
        "REMOTE_ADDR": "127.0.0.1",
        "GIT_HTTP_MAX_REQUEST_BUFFER": "1000M",
        "PATH": "/usr/bin:/bin",
    }
    if "content-encoding" in request.headers:
        environment["HTTP_CONTENT_ENCODING"] = request.headers["content-encoding"]
    if "git-protocol" in request.headers:
        environment["GIT_PROTOCOL"] = request.headers["git-protocol"]
    done = subprocess.run([GIT_HTTP_BACKEND], input=body, env=environment, capture_output=True)
    head, found, content = done.stdout.partition(b"\r\n\r\n")
    if not found:
        head, _, content = done.stdout.partition(b"\n\n")
    status, headers = 200, {}
    for line in head.decode("latin-1").splitlines():
        name, _, value = line.partition(":")
        if name.lower() == "status":
            status = int(value.strip().split(" ", 1)[0])
        elif name:
            headers[name.strip()] = value.strip()
    return Response(content, status_code=status, headers=headers)


class GitHttpServer:
    """`url_of(name)` serves `<root>/<name>.git` (made with `create`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._socket = socket.socket()
        # Answers go out at once (no Nagle wait for the client's delayed ACK).
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port = int(self._socket.getsockname()[1])

        async def serve(request: Request) -> Response:
            body = await request.body()
            return await run_in_threadpool(_cgi, self.root, request, body)

        app = Starlette(routes=[Route("/{path:path}", serve, methods=["GET", "POST"])])
        config = uvicorn.Config(app, log_level="warning", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._server.serve(sockets=[self._socket])), daemon=True
        )

    def create(self, name: str) -> Path:
        """An empty bare repository that takes pushes over HTTP."""
        path = self.root / f"{name}.git"
        subprocess.run(["git", "init", "--quiet", "--bare", "-b", "main", str(path)], check=True)
        subprocess.run(["git", "-C", str(path), "config", "http.receivepack", "true"], check=True)
        return path

    def url_of(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}.git"

    def start(self) -> "GitHttpServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


@contextlib.contextmanager
def git_http_server(root: Path) -> Iterator[GitHttpServer]:
    server = GitHttpServer(root).start()
    try:
        yield server
    finally:
        server.stop()
