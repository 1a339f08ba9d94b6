"""What a tenant sees after real sequences of syncs against a local Shopify: the first sync,
a sync after the shop changed, a sync with nothing new, and a record the shop's index
returned late at a window boundary."""

import asyncio
import threading
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowFailureError

from models.commerce import ModuleExecutionStatus, ModuleKind, OrderStatus, SyncStream
from models.db import SessionFactory
from scripts.shopify_stand_in import SHOP_CURRENCY, ShopifyStandIn
from tests.commerce_support import (
    cents,
    commerce_settings,
    connect_shop,
    customers_of,
    executions_of,
    orders_of,
    sync,
)
from tests.workers import running_workers
from workflows.commerce import OrderSyncWorkflow
from workflows.contracts.commerce import OrderSyncInput
from workflows.contracts.ids import order_sync_workflow_id

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_first_sync_brings_every_order_and_customer_once_with_its_amounts(
    client: Client, sessions: SessionFactory, task_queue: str, tmp_path: Path, shop: ShopifyStandIn
) -> None:
    shop.seed(orders=60, customers=12)
    settings = commerce_settings(task_queue, tmp_path)
    connected = await connect_shop(sessions, settings, client, shop)
    async with running_workers(client, sessions, settings):
        result = await sync(client, connected.connector.id, task_queue)

    orders = await orders_of(sessions, connected.tenant.id)
    assert set(orders) == set(shop.orders)
    for external_id, source in shop.orders.items():
        row = orders[external_id]
        # In the shop's currency (shopMoney), the order's own beside it (presentmentMoney).
        assert row.currency == SHOP_CURRENCY
        assert row.total_cents == cents(source.shop(source.total), SHOP_CURRENCY)
        assert row.refunded_cents == cents(source.shop_refunded, SHOP_CURRENCY)
        assert row.net_cents == row.total_cents - row.refunded_cents
        assert row.discount_cents == cents(source.shop(source.discount), SHOP_CURRENCY)
        assert row.presentment_currency == source.currency
        assert row.presentment_total_cents == cents(source.total, source.currency)
        assert row.test is source.test and row.channel == source.channel
        assert row.placed_at == source.created_at
        assert len(row.line_items) == len(source.line_items)
        if source.cancelled_at:
            assert row.status is OrderStatus.CANCELLED and row.cancelled_at is not None
        if source.customer:
            assert row.customer_id is not None
        else:
            assert row.customer_id is None
    customers = await customers_of(sessions, connected.tenant.id)
    assert set(customers) == set(shop.customers)
    assert any(c.email is None for c in customers.values()), "customers without email are kept"

    assert result.status is ModuleExecutionStatus.SUCCEEDED
    assert result.counts[SyncStream.ORDERS].inserted == 60
    assert result.counts[SyncStream.CUSTOMERS].inserted == 12
    [execution] = await executions_of(sessions, connected.tenant.id)
    assert execution.module is ModuleKind.ORDER_SYNC
    assert execution.status is ModuleExecutionStatus.SUCCEEDED
    assert execution.inserted == 72 and execution.updated == 0
    assert execution.cursor_before == {}
    assert set(execution.cursor_after) == {"orders", "customers"}
    assert execution.started_at and execution.finished_at
    assert execution.meta["streams"]["orders"]["inserted"] == 60


async def test_a_sync_after_the_shop_changed_updates_rows_and_adds_new_ones_without_duplicates(
    client: Client, sessions: SessionFactory, task_queue: str, tmp_path: Path, shop: ShopifyStandIn
) -> None:
    shop.seed(orders=40, customers=8)
    settings = commerce_settings(task_queue, tmp_path)
    connected = await connect_shop(sessions, settings, client, shop)
    async with running_workers(client, sessions, settings):
        await sync(client, connected.connector.id, task_queue)
        before = await orders_of(sessions, connected.tenant.id)

        ids = [
            o
            for o in shop.orders
            if not shop.orders[o].cancelled_at and not shop.orders[o].refunded
        ]
        refunded, cancelled, edited = ids[0], ids[1], ids[2]
        shop.refund(refunded, Decimal("7.50"))
        shop.cancel(cancelled)
        shop.edit(edited, fulfilled=True, channel="pos")
        added = [
            shop.add_order(customer=shop.add_customer(email="new@example.com")) for _ in range(3)
        ]
        await shop.settle()

        result = await sync(client, connected.connector.id, task_queue)

    after = await orders_of(sessions, connected.tenant.id)
    assert len(after) == 43
    assert {o.id for o in added} <= set(after)
    # The same rows, updated in place.
    assert all(after[k].id == before[k].id for k in before)
    assert after[refunded].refunded_cents == 750
    assert after[refunded].net_cents == after[refunded].total_cents - 750
    assert after[cancelled].status is OrderStatus.CANCELLED
    assert after[cancelled].net_cents == 0
    # The source is the truth, even for a state never seen in between (paid -> fulfilled).
    assert after[edited].status is OrderStatus.FULFILLED and after[edited].channel == "pos"
    orders = result.counts[SyncStream.ORDERS]
    assert (orders.inserted, orders.updated) == (3, 3)
    assert result.counts[SyncStream.CUSTOMERS].inserted == 3

    executions = await executions_of(sessions, connected.tenant.id)
    assert [e.status for e in executions] == [ModuleExecutionStatus.SUCCEEDED] * 2
    assert executions[1].cursor_before == executions[0].cursor_after


async def test_a_sync_with_nothing_new_changes_nothing_and_re_reads_only_the_overlap(
    client: Client, sessions: SessionFactory, task_queue: str, tmp_path: Path, shop: ShopifyStandIn
) -> None:
    shop.seed(orders=30, customers=5)
    settings = commerce_settings(task_queue, tmp_path)
    connected = await connect_shop(sessions, settings, client, shop)
    async with running_workers(client, sessions, settings):
        await sync(client, connected.connector.id, task_queue)
        recent = shop.add_order()
        await shop.settle()
        await sync(client, connected.connector.id, task_queue)
        # Started in a later second than the last one ended, the sync has a window to read.
        await asyncio.sleep(1.0)
        again = await sync(client, connected.connector.id, task_queue)

    orders = again.counts[SyncStream.ORDERS]
    assert (orders.inserted, orders.updated) == (0, 0)
    # The order updated within the overlap is read again and counted as unchanged, once.
    assert orders.fetched == orders.unchanged == 1
    assert len(await orders_of(sessions, connected.tenant.id)) == 31
    assert recent.id in await orders_of(sessions, connected.tenant.id)


async def test_an_order_the_shop_indexed_late_at_the_boundary_is_not_missed(
    client: Client, sessions: SessionFactory, task_queue: str, tmp_path: Path, shop: ShopifyStandIn
) -> None:
    shop.seed(orders=10, customers=3)
    settings = commerce_settings(task_queue, tmp_path)
    connected = await connect_shop(sessions, settings, client, shop)
    late = shop.add_order()
    shop.unindexed.add(late.id)
    await shop.settle()
    async with running_workers(client, sessions, settings):
        await sync(client, connected.connector.id, task_queue)
        assert late.id not in await orders_of(sessions, connected.tenant.id)
        shop.unindexed.clear()
        # A sync reads up to the whole second it began in: one begun in that same second
        # reads nothing yet (the first sync is that quick). The next second's does.
        await asyncio.sleep(1.1)
        result = await sync(client, connected.connector.id, task_queue)

    assert late.id in await orders_of(sessions, connected.tenant.id)
    assert result.counts[SyncStream.ORDERS].inserted == 1


async def test_a_cancelled_sync_is_recorded_cancelled_and_keeps_its_committed_windows(
    client: Client, sessions: SessionFactory, task_queue: str, tmp_path: Path, shop: ShopifyStandIn
) -> None:
    shop.seed(orders=20, customers=4)
    settings = commerce_settings(task_queue, tmp_path)
    connected = await connect_shop(sessions, settings, client, shop)
    reached_orders = threading.Event()
    release = threading.Event()

    def hold_orders(stream: str, variables: dict[str, str]) -> None:
        if stream == "orders":
            reached_orders.set()
            release.wait(30)

    shop.before_page = hold_orders
    async with running_workers(client, sessions, settings):
        handle = await client.start_workflow(
            OrderSyncWorkflow.run,
            OrderSyncInput(connector_id=connected.connector.id),
            id=order_sync_workflow_id(connected.connector.id),
            task_queue=task_queue,
        )
        assert await asyncio.to_thread(reached_orders.wait, 60)
        await handle.cancel()
        release.set()
        with pytest.raises(WorkflowFailureError):
            await handle.result()

    [execution] = await executions_of(sessions, connected.tenant.id)
    assert execution.status is ModuleExecutionStatus.CANCELLED
    # The customers stream committed before the cancellation stays.
    assert len(await customers_of(sessions, connected.tenant.id)) == 4
    assert execution.cursor_after.get("customers")


async def test_a_first_sync_of_a_shop_with_years_of_quiet_steps_over_them(
    client: Client, sessions: SessionFactory, task_queue: str, tmp_path: Path, shop: ShopifyStandIn
) -> None:
    """Ten years of daily windows would be 3,650 calls per stream; a sync reads only where
    the shop has updates: one order six years ago, one last year, one today."""
    now = shop.tick()
    for days_ago in (6 * 365, 400, 0):
        order = shop.add_order()
        order.created_at = order.updated_at = now - timedelta(days=days_ago)
    await shop.settle()
    settings = commerce_settings(task_queue, tmp_path, sync_initial_days=3650)
    connected = await connect_shop(sessions, settings, client, shop)
    calls_before = shop.calls
    async with running_workers(client, sessions, settings):
        result = await sync(client, connected.connector.id, task_queue)
        assert set(await orders_of(sessions, connected.tenant.id)) == set(shop.orders)
        # The shop changes; the next sync reads from its checkpoint, not from ten years ago.
        changed = shop.refund(next(iter(shop.orders)), Decimal("1.00"))
        await shop.settle()
        again = await sync(client, connected.connector.id, task_queue)

    assert result.counts[SyncStream.ORDERS].inserted == 3
    # Per stream: a window and a look-ahead per quiet stretch, a window per order's day.
    assert result.windows <= 10 and shop.calls - calls_before < 40
    assert again.counts[SyncStream.ORDERS].updated == 1
    rows = await orders_of(sessions, connected.tenant.id)
    assert rows[changed.id].refunded_cents == cents(changed.refunded, changed.currency)
