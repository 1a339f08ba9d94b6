"""Big shops and busy days: a day with more updated orders than one window call reads is read
in parts, each committed with the shop's page cursor, so a failure resumes inside the window
instead of from its start; `changeflow connector sync` has no time limit, and a sync ended by
a termination is closed with what it committed and named as such."""

import asyncio
import math
import threading
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from models.commerce import ModuleExecutionStatus, SyncCheckpoint
from models.db import SessionFactory
from scripts.shopify_stand_in import ShopifyStandIn
from tests.cli_support import changeflow, ok
from tests.commerce_support import (
    TOKEN,
    commerce_settings,
    connect_shop,
    customers_of,
    executions_of,
    orders_of,
    sync,
)
from tests.workers import running_workers
from workflows.contracts.ids import order_sync_workflow_id

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_busy_day_is_read_in_parts_and_a_failure_resumes_inside_the_window(
    client: Client, sessions: SessionFactory, task_queue: str, tmp_path: Path, shop: ShopifyStandIn
) -> None:
    # A sale: 300 orders in a few seconds, one 24-hour window; a window call reads 50 at most.
    for _ in range(300):
        shop.add_order()
    await shop.settle()
    settings = commerce_settings(task_queue, tmp_path, sync_window_records=50)
    connected = await connect_shop(sessions, settings, client, shop)
    pages = {"orders": 0}
    parts: list[Any] = []

    def fail_once(stream: str, variables: dict[str, Any]) -> None:
        if stream != "orders":
            return
        pages["orders"] += 1
        if pages["orders"] == 12:  # the shop drops the connection once, mid-window
            raise ConnectionResetError("the shop dropped the connection")

    shop.before_page = fail_once
    async with running_workers(client, sessions, settings):
        result = await sync(client, connected.connector.id, task_queue)
        async with sessions() as session:
            parts.append(await session.get(SyncCheckpoint, (connected.connector.id, "orders")))

    orders = await orders_of(sessions, connected.tenant.id)
    assert set(orders) == set(shop.orders) and len(orders) == 300
    assert result.counts["orders"].inserted == 300  # type: ignore[index]
    # Parts of at most 60 (pages of 15): at least five windows for the one day.
    assert result.windows >= 1 + math.ceil(300 / 60)
    # (Pages of 15; the look-ahead over the empty days before the sale asks for 1.)
    order_queries = [q for q in shop.queries if q["stream"] == "orders" and q["first"] == 15]
    # The retry asked for the page after the last committed part, not for the day again: at
    # most the failed part's four pages are read twice (the whole day would be 20).
    afters = [q.get("after") for q in order_queries if q.get("after")]
    assert len(afters) - len(set(afters)) <= 4
    assert len(afters) <= 19 + 4
    assert parts[0].page_after is None and parts[0].window_start is None, "the window is done"


async def test_connector_sync_has_no_time_limit_and_names_a_termination(
    client: Client,
    sessions: SessionFactory,
    env: dict[str, str],
    task_queue: str,
    tmp_path: Path,
    shop: ShopifyStandIn,
) -> None:
    shop.seed(orders=90, customers=5)
    settings = commerce_settings(task_queue, tmp_path, sync_window_records=30)
    keys = settings.credential_keys
    assert keys is not None
    env["CHANGEFLOW_CREDENTIAL_KEYS"] = keys.get_secret_value()
    slug = (await ok(env, "tenant", "create", "Corner Shop", "--json")).json["slug"]
    connector_id = (
        await ok({**env, "SHOPIFY_ACCESS_TOKEN": TOKEN}, "connector", "create", "-t", slug,
                 "--shop-url", shop.url, "--json")
    ).json["id"]  # fmt: skip
    held = threading.Event()
    release = threading.Event()
    pages = {"orders": 0}

    def hold(stream: str, variables: dict[str, Any]) -> None:
        if stream == "orders":
            pages["orders"] += 1
            if pages["orders"] == 5:  # some parts committed, the sync still reading
                held.set()
                release.wait(60)

    shop.before_page = hold
    workflow_id = order_sync_workflow_id(uuid.UUID(connector_id))
    async with running_workers(client, sessions, settings):
        command = asyncio.create_task(changeflow(env, "connector", "sync", connector_id))
        assert await asyncio.to_thread(held.wait, 120)
        handle = client.get_workflow_handle(workflow_id)
        described = await handle.describe()
        assert not described.raw_description.execution_config.workflow_execution_timeout.seconds
        await handle.terminate(reason="operator stopped it")
        release.set()
        ended = await command

    assert ended.code == 3, ended.out + ended.err
    assert "the sync was terminated: operator stopped it" in ended.out
    [execution] = await executions_of(sessions, uuid.UUID((await ok(
        env, "connector", "show", connector_id, "--json")).json["tenant_id"]))  # fmt: skip
    assert execution.status is ModuleExecutionStatus.FAILED
    assert execution.error == "the sync was terminated: operator stopped it"
    stored = await orders_of(sessions, execution.tenant_id)
    # What its committed windows stored, counted: the 5 customers and the orders so far.
    assert 0 < len(stored) < 90 and execution.inserted == len(stored) + 5
    assert execution.finished_at is not None and "orders" in execution.cursor_after


async def test_a_first_sync_reads_customers_and_orders_by_bulk_operations(
    client: Client, sessions: SessionFactory, task_queue: str, tmp_path: Path, shop: ShopifyStandIn
) -> None:
    shop.seed(orders=200, customers=10)
    big = shop.add_order(items=[(f"Pin {i}", 1, Decimal("1.50")) for i in range(14)])
    await shop.settle()
    # The defaults a user gets: a first sync by Bulk Operation, batches of 50 here.
    settings = commerce_settings(
        task_queue, tmp_path, sync_bulk_first_sync=True, sync_window_records=50
    )
    connected = await connect_shop(sessions, settings, client, shop)
    async with running_workers(client, sessions, settings):
        first = await sync(client, connected.connector.id, task_queue)
        pages_after_first = [q for q in shop.queries if q["stream"] in ("orders", "customers")]
        shop.refund(big.id, Decimal("1.50"))
        await shop.settle()
        second = await sync(client, connected.connector.id, task_queue)

    # One Bulk Operation per stream, one after the other (one bulk query at a time).
    assert shop.bulk_streams == ["customers", "orders"]
    assert pages_after_first == [], "no page was read: the bulk results were"
    customers = await customers_of(sessions, connected.tenant.id)
    assert set(customers) == set(shop.customers)
    assert first.counts["customers"].inserted == 10  # type: ignore[index]
    orders = await orders_of(sessions, connected.tenant.id)
    assert set(orders) == set(shop.orders)
    assert len(orders[big.id].line_items) == 14
    assert all(len(orders[o.id].line_items) == len(o.line_items) for o in shop.orders.values())
    assert first.counts["orders"].inserted == 201  # type: ignore[index]
    # Incremental syncs page from the checkpoint the bulk read left.
    assert second.counts["orders"].updated == 1  # type: ignore[index]
    assert shop.bulk_operations == 2
    async with sessions() as session:
        checkpoint = await session.get(SyncCheckpoint, (connected.connector.id, "orders"))
    assert checkpoint is not None and checkpoint.page_after is None


async def test_a_later_window_of_more_records_than_the_threshold_is_read_by_a_bulk_operation(
    client: Client, sessions: SessionFactory, task_queue: str, tmp_path: Path, shop: ShopifyStandIn
) -> None:
    shop.seed(orders=20, customers=5)
    await shop.settle()
    # Pages for the first sync; a later window of more than 40 changes goes by bulk.
    # (No overlap: the quiet window holds only the quiet spell's changes.)
    settings = commerce_settings(
        task_queue,
        tmp_path,
        sync_bulk_window_records=40,
        sync_window_records=25,
        sync_overlap_seconds=0,
    )
    connected = await connect_shop(sessions, settings, client, shop)
    async with running_workers(client, sessions, settings):
        await sync(client, connected.connector.id, task_queue)
        assert shop.bulk_operations == 0
        # A sale: 60 new orders with a 14-item one among them, then a quiet spell of 3 edits.
        for _ in range(59):
            shop.add_order()
        big = shop.add_order(items=[(f"Pin {i}", 1, Decimal("1.50")) for i in range(14)])
        await shop.settle()
        pages_before = len(order_pages(shop))
        busy = await sync(client, connected.connector.id, task_queue)
        pages_busy = len(order_pages(shop)) - pages_before
        for order in list(shop.orders.values())[:3]:
            shop.refund(order.id, Decimal("1.00"))
        await shop.settle()
        quiet = await sync(client, connected.connector.id, task_queue)

    assert shop.bulk_streams == ["orders"], "the sale by bulk, the quiet spell by pages"
    # The busy window read its first page, saw more, counted them, and went by bulk.
    assert pages_busy == 1
    orders = await orders_of(sessions, connected.tenant.id)
    assert set(orders) == set(shop.orders) and len(orders) == 80
    assert len(orders[big.id].line_items) == 14
    assert busy.counts["orders"].inserted == 60  # type: ignore[index]
    assert quiet.counts["orders"].updated == 3  # type: ignore[index]
    async with sessions() as session:
        checkpoint = await session.get(SyncCheckpoint, (connected.connector.id, "orders"))
    assert checkpoint is not None and checkpoint.page_after is None


async def test_a_bulk_result_cut_off_mid_download_resumes_after_the_committed_batches(
    client: Client, sessions: SessionFactory, task_queue: str, tmp_path: Path, shop: ShopifyStandIn
) -> None:
    shop.seed(orders=200, customers=8)
    await shop.settle()
    # The orders' JSONL stops a little past its middle, once: batches of 50 were committed.
    shop.bulk_download_cut["orders"] = 0.6
    settings = commerce_settings(
        task_queue, tmp_path, sync_bulk_first_sync=True, sync_window_records=50
    )
    connected = await connect_shop(sessions, settings, client, shop)
    async with running_workers(client, sessions, settings):
        result = await sync(client, connected.connector.id, task_queue)

    assert shop.bulk_download_cut == {}, "the download was cut once"
    # The retry read the same operation's result again (no new operation) and stored the rest.
    assert shop.bulk_streams == ["customers", "orders"]
    orders = await orders_of(sessions, connected.tenant.id)
    assert set(orders) == set(shop.orders) and len(orders) == 200
    # Every order counted once: the batches committed before the cut too.
    assert result.counts["orders"].inserted == 200  # type: ignore[index]
    assert result.counts["orders"].fetched == 200  # type: ignore[index]
    [execution] = await executions_of(sessions, connected.tenant.id)
    assert execution.inserted == 200 + 8 and execution.fetched == 200 + 8


def order_pages(shop: ShopifyStandIn) -> list[dict[str, Any]]:
    """The pages of orders the shop answered (15 a page; look-aheads ask for 1)."""
    return [q for q in shop.queries if q["stream"] == "orders" and q["first"] == 15]


async def test_a_bulk_operation_that_fails_is_run_again_and_the_sync_completes(
    client: Client, sessions: SessionFactory, task_queue: str, tmp_path: Path, shop: ShopifyStandIn
) -> None:
    shop.seed(orders=30, customers=6)
    await shop.settle()
    shop.bulk_fail_next = "INTERNAL_SERVER_ERROR"  # the first operation (customers) fails
    settings = commerce_settings(task_queue, tmp_path, sync_bulk_first_sync=True)
    connected = await connect_shop(sessions, settings, client, shop)
    async with running_workers(client, sessions, settings):
        result = await sync(client, connected.connector.id, task_queue)

    assert shop.bulk_streams == ["customers", "customers", "orders"]
    assert set(await customers_of(sessions, connected.tenant.id)) == set(shop.customers)
    assert set(await orders_of(sessions, connected.tenant.id)) == set(shop.orders)
    assert result.counts["orders"].inserted == 30  # type: ignore[index]
