"""A worker process SIGKILLed in the middle of a sync: a fresh process resumes from the last
committed window, and the tenant ends with every order once, none lost, none duplicated."""

import asyncio
import re
import signal
import threading
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from models.commerce import ModuleExecutionStatus, SyncStream
from models.db import SessionFactory
from scripts.shopify_stand_in import ShopifyStandIn
from tests.commerce_support import (
    commerce_settings,
    connect_shop,
    executions_of,
    key_spec,
    orders_of,
    sync,
)
from tests.process_support import WorkerProcess, worker_environment

pytestmark = pytest.mark.asyncio(loop_scope="session")

OVERLAP_SECONDS = 300


async def test_a_sync_survives_its_worker_being_killed_and_resumes_from_the_checkpoint(
    client: Client,
    temporal_env: WorkflowEnvironment,
    sessions: SessionFactory,
    database_url: str,
    task_queue: str,
    tmp_path: Path,
    shop: ShopifyStandIn,
) -> None:
    shop.seed(orders=400, customers=30)  # about ten days of orders, in daily windows
    keys = key_spec("k1")
    settings = commerce_settings(task_queue, tmp_path, credential_keys=keys)
    connected = await connect_shop(sessions, settings, client, shop)
    env = worker_environment(
        database_url=database_url,
        client=temporal_env.client,
        task_queue=task_queue,
        state_dir=tmp_path,
        CHANGEFLOW_CREDENTIAL_KEYS=keys,
        CHANGEFLOW_SYNC_WINDOW_HOURS="24",
        CHANGEFLOW_SYNC_OVERLAP_SECONDS=str(OVERLAP_SECONDS),
        CHANGEFLOW_SYNC_INITIAL_DAYS="30",
        # Pages, killed midway (a first sync by Bulk Operation: tests/test_commerce_big_shops.py).
        CHANGEFLOW_SYNC_BULK_FIRST_SYNC="false",
    )
    first = WorkerProcess(env, tmp_path / "worker-1.log")
    second = WorkerProcess(env, tmp_path / "worker-2.log")
    killed_at_query = -1
    killed = threading.Event()
    # Kill on the first orders window that starts after the 200th order: half are stored.
    midway = sorted(o.updated_at for o in shop.orders.values())[200]

    def kill_midway(stream: str, variables: dict[str, str]) -> None:
        nonlocal killed_at_query
        if stream == "orders" and _start(variables["query"]) > midway and killed_at_query < 0:
            killed_at_query = len(shop.queries)
            assert first.process is not None
            first.process.send_signal(signal.SIGKILL)
            killed.set()

    shop.before_page = kill_midway
    first.start()
    try:
        running = asyncio.create_task(sync(client, connected.connector.id, task_queue))
        assert await asyncio.to_thread(killed.wait, 120), "the sync never reached midway"
        first.process.wait(timeout=10)  # type: ignore[union-attr]
        async with sessions() as session:
            connection = await session.connection()
            checkpoint = (
                await connection.execute(
                    text(
                        "SELECT cursor FROM sync_checkpoints "
                        "WHERE connector_id = :c AND stream = 'orders'"
                    ),
                    {"c": connected.connector.id},
                )
            ).scalar_one()
            stored_at_kill = len(await orders_of(sessions, connected.tenant.id))
        second.start()
        async with asyncio.timeout(180):
            result = await running
    finally:
        first.stop()
        second.stop()

    assert 150 < stored_at_kill < 400, "the kill came in the middle of the sync"
    assert result.status is ModuleExecutionStatus.SUCCEEDED
    orders = await orders_of(sessions, connected.tenant.id)
    assert set(orders) == set(shop.orders)  # nothing lost
    async with sessions() as session:
        connection = await session.connection()
        rows = (
            await connection.execute(
                text(
                    "SELECT count(*), count(DISTINCT external_id) FROM orders WHERE tenant_id = :t"
                ),
                {"t": connected.tenant.id},
            )
        ).one()
    assert tuple(rows) == (400, 400)  # nothing duplicated
    # The new worker read on from the last committed window, not from the start.
    after_kill = [q for q in shop.queries[killed_at_query:] if q["stream"] == "orders"]
    starts = [_start(q["query"]) for q in after_kill]
    assert min(starts) >= checkpoint - timedelta(seconds=OVERLAP_SECONDS)
    [execution] = await executions_of(sessions, connected.tenant.id)
    assert execution.status is ModuleExecutionStatus.SUCCEEDED
    assert result.counts[SyncStream.ORDERS].inserted <= 400


def _start(query: str) -> datetime:
    found = re.search(r"updated_at:>='([^']+)'", query)
    assert found, query
    return datetime.fromisoformat(found.group(1).replace("Z", "+00:00"))
