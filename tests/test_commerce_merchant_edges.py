"""Smaller things a merchant hits: an order file with a made-up currency, amounts with more
decimals than the currency has, a discount larger than the order, a value split by an unquoted
comma; and a long sync's window count across its continue-as-new runs."""

from pathlib import Path

import pytest
from temporalio.client import Client

from models.commerce import ModuleExecutionStatus
from models.db import SessionFactory
from scripts.shopify_stand_in import ShopifyStandIn
from tests.commerce_support import commerce_settings, connect_shop, orders_of, sync
from tests.factories import make_tenant
from tests.test_commerce_import import import_file
from tests.workers import running_workers
from workflows.commerce import OrderSyncWorkflow
from workflows.contracts.ids import order_sync_workflow_id

pytestmark = [
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.shop_seed(orders=60, customers=4),
]

HEADER = "external_id,placed_at,currency,total,discount,customer_name\n"


async def test_an_order_file_refuses_what_is_not_money_and_keeps_the_rest(
    client: Client, sessions: SessionFactory, task_queue: str, tmp_path: Path
) -> None:
    me = await make_tenant(sessions, name="Corner Shop")
    content = HEADER + (
        "A-1,2026-11-02T10:00:00Z,USD,21.50,,Ann\n"
        "A-2,2026-11-02T10:00:00Z,XYZ,10.00,,Ann\n"  # no such currency
        "A-3,2026-11-02T10:00:00Z,BHD,10.125,,Ann\n"  # dinars have three decimals
        "A-4,2026-11-02T10:00:00Z,USD,10.125,,Ann\n"  # dollars have two
        "A-5,2026-11-02T10:00:00Z,JPY,1500.5,,Ann\n"  # yen have none
        "A-6,2026-11-02T10:00:00Z,USD,20.00,30.00,Ann\n"  # a discount beyond the order
        "A-7,2026-11-02T10:00:00Z,USD,20.00,5.00,Lima, Ana\n"  # an unquoted comma
        'A-8,2026-11-02T10:00:00Z,USD,20.00,5.00,"Lima, Ana"\n'
    )
    settings = commerce_settings(task_queue, tmp_path)
    async with running_workers(client, sessions, settings):
        result = await import_file(client, sessions, task_queue, me.id, content)

    assert result.status is ModuleExecutionStatus.SUCCEEDED
    assert {(e.row, e.field) for e in result.row_errors} == {
        (3, "currency"),
        (5, "total"),
        (6, "total"),
        (7, "discount"),
        (8, ""),
    }
    messages = {e.row: e.message for e in result.row_errors}
    assert "'XYZ' is not an ISO 4217 currency code" in messages[3]
    assert "more than 2 decimals for USD" in messages[5]
    assert "more than 0 decimals for JPY" in messages[6]
    assert "more than the order's total" in messages[7]
    assert "more cell(s) than the header" in messages[8]
    stored = await orders_of(sessions, me.id)
    assert set(stored) == {"pos/A-1", "pos/A-3", "pos/A-8"}
    assert stored["pos/A-3"].total_cents == 10125  # fils: 1/1000 dinar
    assert {o.currency for o in stored.values()} == {"USD", "BHD"}


async def test_a_long_syncs_window_count_covers_all_its_runs(
    client: Client, sessions: SessionFactory, task_queue: str, tmp_path: Path, shop: ShopifyStandIn
) -> None:
    settings = commerce_settings(task_queue, tmp_path, sync_window_hours=1.0)
    connected = await connect_shop(sessions, settings, client, shop)
    async with running_workers(client, sessions, settings):
        result = await sync(client, connected.connector.id, task_queue, windows_per_run=5)
        # The sync's progress query (on its latest run) counts its earlier runs' windows too.
        sync_id = order_sync_workflow_id(connected.connector.id)
        progress = await client.get_workflow_handle(sync_id).query(OrderSyncWorkflow.progress)
    runs = [run async for run in client.list_workflows(f"WorkflowId = '{sync_id}'")]
    assert len(runs) >= 4, "the sync continued as new"
    windows = 0
    for run in runs:
        history = await client.get_workflow_handle(sync_id, run_id=run.run_id).fetch_history()
        windows += sum(
            1
            for event in history.events
            if event.activity_task_scheduled_event_attributes.activity_type.name == "sync_window"
        )
    assert result.windows == windows
    assert progress["windows"] == windows
    assert len(await orders_of(sessions, connected.tenant.id)) == 60
