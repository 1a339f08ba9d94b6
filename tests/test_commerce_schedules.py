"""Schedules of the commerce modules: a sync Schedule exists exactly while its connector is
active and its runs never start a second sync of one connector; a tenant's daily report
Schedule reports yesterday in the shop's time zone. Syncs can also be started by hand."""

import asyncio
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar
from zoneinfo import ZoneInfo

import pytest
from temporalio.client import Client, ScheduleOverlapPolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.notifications import TenantWebhooks, new_signing_secret
from models.commerce import ModuleExecution, ModuleExecutionStatus, ModuleKind
from models.db import SessionFactory
from models.projects import ConnectorKind, ConnectorStatus
from scripts.shopify_stand_in import ShopifyStandIn
from tests.commerce_support import (
    commerce_settings,
    connect_shop,
    executions_of,
    orders_of,
)
from tests.webhook_receiver import webhook_receiver
from tests.workers import running_workers
from workers.registry import Dependencies
from workers.schedules import apply_connector_schedule, reconcile_commerce_schedules
from workers.worker import reconcile_schedules_once
from workflows.commerce import OrderSyncTriggerWorkflow, OrderSyncWorkflow
from workflows.contracts.commerce import OrderSyncInput, StartOrderSync
from workflows.contracts.ids import (
    order_sync_schedule_id,
    order_sync_workflow_id,
    report_schedule_id,
)

pytestmark = [
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.shop_seed(orders=15, customers=3),
]

T = TypeVar("T")


async def until(check: Callable[[], Awaitable[T]], within_s: float = 60.0) -> T:
    """The first truthy answer of `check`, polled (the rows are written by workflows)."""
    async with asyncio.timeout(within_s):
        while not (found := await check()):  # noqa: ASYNC110
            await asyncio.sleep(0.2)
    return found


async def test_a_connector_schedule_follows_its_state_and_its_runs_sync(
    client: Client, sessions: SessionFactory, task_queue: str, tmp_path: Path, shop: ShopifyStandIn
) -> None:
    settings = commerce_settings(task_queue, tmp_path)
    connected = await connect_shop(sessions, settings, client, shop)
    schedule = client.get_schedule_handle(order_sync_schedule_id(connected.connector.id))
    try:
        async with running_workers(client, sessions, settings):
            done = await reconcile_commerce_schedules(client, sessions, task_queue)
            assert done["created"] >= 1
            described = await schedule.describe()
            assert described.schedule.policy.overlap is ScheduleOverlapPolicy.SKIP
            interval = described.schedule.spec.intervals[0].every
            assert interval == timedelta(seconds=connected.connector.sync_interval_seconds)

            await schedule.trigger()

            async def synced() -> bool:
                runs = await executions_of(sessions, connected.tenant.id)
                return any(r.status is ModuleExecutionStatus.SUCCEEDED for r in runs)

            await until(synced)
            assert len(await orders_of(sessions, connected.tenant.id)) == 15

        disabled = await connected.service.disable(connected.connector.id)
        assert await apply_connector_schedule(client, disabled, task_queue) == "deleted"
        with pytest.raises(RPCError):
            await schedule.describe()
    finally:
        await client.get_schedule_handle(report_schedule_id(connected.tenant.id)).delete()


async def test_a_notification_webhook_gets_no_sync_schedule_and_stays_active(
    client: Client, sessions: SessionFactory, task_queue: str, tmp_path: Path, shop: ShopifyStandIn
) -> None:
    settings = commerce_settings(task_queue, tmp_path)
    connected = await connect_shop(sessions, settings, client, shop)
    webhooks = TenantWebhooks(sessions, connected.service)
    secret = new_signing_secret()
    async with webhook_receiver(secret) as receiver:
        await webhooks.set(connected.tenant.id, url=receiver.url, secret=secret)
        webhook = await webhooks.test(connected.tenant.id)
    assert webhook.status is ConnectorStatus.ACTIVE
    # What a worker of an earlier version made for it: a sync Schedule, as for a shop.
    webhook_schedule = client.get_schedule_handle(order_sync_schedule_id(webhook.id))
    as_a_shop = webhook.model_copy(update={"kind": ConnectorKind.SHOPIFY})
    assert await apply_connector_schedule(client, as_a_shop, task_queue) == "created"
    shop_schedule = client.get_schedule_handle(order_sync_schedule_id(connected.connector.id))
    try:
        # A worker starts: every connector's Schedule is matched to it.
        deps = Dependencies(settings=settings, sessions=sessions, client=client)
        await reconcile_schedules_once(client, deps, task_queue)

        assert (await shop_schedule.describe()).id == shop_schedule.id
        with pytest.raises(RPCError) as gone:
            await webhook_schedule.describe()
        assert gone.value.status is RPCStatusCode.NOT_FOUND
        # And none comes back while the webhook is in use.
        assert await apply_connector_schedule(client, webhook, task_queue) == "none"
        assert (await webhooks.find(connected.tenant.id)).status is ConnectorStatus.ACTIVE
    finally:
        await shop_schedule.delete()
        await client.get_schedule_handle(report_schedule_id(connected.tenant.id)).delete()


async def test_a_trigger_while_a_sync_runs_starts_no_second_one(
    client: Client, sessions: SessionFactory, task_queue: str, tmp_path: Path, shop: ShopifyStandIn
) -> None:
    settings = commerce_settings(task_queue, tmp_path)
    connected = await connect_shop(sessions, settings, client, shop)
    release = threading.Event()
    shop.before_page = lambda stream, variables: release.wait(30)
    async with running_workers(client, sessions, settings):
        running = await client.start_workflow(
            OrderSyncWorkflow.run,
            OrderSyncInput(connector_id=connected.connector.id),
            id=order_sync_workflow_id(connected.connector.id),
            task_queue=task_queue,
        )
        triggered = await client.execute_workflow(
            OrderSyncTriggerWorkflow.run,
            StartOrderSync(connector_id=connected.connector.id),
            id=f"trigger-{connected.connector.id}",
            task_queue=task_queue,
        )
        # By hand, too: the one workflow id refuses a second start.
        with pytest.raises(WorkflowAlreadyStartedError):
            await client.start_workflow(
                OrderSyncWorkflow.run,
                OrderSyncInput(connector_id=connected.connector.id),
                id=order_sync_workflow_id(connected.connector.id),
                task_queue=task_queue,
            )
        release.set()
        await running.result()
    assert triggered.started is False
    assert len(await executions_of(sessions, connected.tenant.id)) == 1


async def test_the_daily_report_schedule_reports_yesterday_in_the_shops_zone(
    client: Client, sessions: SessionFactory, task_queue: str, tmp_path: Path, shop: ShopifyStandIn
) -> None:
    settings = commerce_settings(task_queue, tmp_path)
    connected = await connect_shop(sessions, settings, client, shop)
    report_schedule = client.get_schedule_handle(report_schedule_id(connected.tenant.id))
    try:
        async with running_workers(client, sessions, settings):
            await reconcile_commerce_schedules(client, sessions, task_queue)
            described = await report_schedule.describe()
            assert described.schedule.spec.time_zone_name == "America/New_York"
            await report_schedule.trigger()

            async def reported() -> list[ModuleExecution]:
                return [
                    r
                    for r in await executions_of(sessions, connected.tenant.id)
                    if r.module is ModuleKind.REPORT and r.status is ModuleExecutionStatus.SUCCEEDED
                ]

            [run] = await until(reported)
    finally:
        await report_schedule.delete()
        await client.get_schedule_handle(order_sync_schedule_id(connected.connector.id)).delete()
    yesterday = (
        datetime.now(UTC).astimezone(ZoneInfo("America/New_York")) - timedelta(days=1)
    ).date()
    assert (
        run.meta["report"]["first_day"] == run.meta["report"]["last_day"] == yesterday.isoformat()
    )
    assert run.meta["report"]["timezone"] == "America/New_York"
