"""The commerce workflows' recorded histories replay against the current code, and a sync
long enough to continue as new keeps one ModuleExecution and loses nothing on the way.
Re-record deliberately with CHANGEFLOW_RECORD_HISTORIES=1."""

import json
import os
import uuid
from datetime import date
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowHistory
from temporalio.worker import Replayer

from models.commerce import ModuleExecutionStatus
from models.db import SessionFactory
from scripts.shopify_stand_in import ShopifyStandIn
from tests.commerce_support import (
    TOKEN,
    commerce_settings,
    connect_shop,
    executions_of,
    orders_of,
    sync,
)
from tests.conftest import DATA_CONVERTER
from tests.workers import running_workers
from workflows.commerce import OrderSyncTriggerWorkflow, OrderSyncWorkflow, ReportWorkflow
from workflows.contracts.commerce import ReportInput, StartOrderSync
from workflows.contracts.ids import order_sync_workflow_id, report_workflow_id

pytestmark = [
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.shop_seed(orders=90, customers=9),
]

HISTORIES = Path(__file__).parent / "histories"
WORKFLOW_TYPES = ("OrderSyncWorkflow", "OrderSyncTriggerWorkflow", "ReportWorkflow")


async def test_commerce_histories_replay_and_a_long_sync_continues_as_new(
    client: Client, sessions: SessionFactory, task_queue: str, tmp_path: Path, shop: ShopifyStandIn
) -> None:
    # Hourly windows: the 90 orders (37 minutes apart) span some 56 windows.
    settings = commerce_settings(task_queue, tmp_path, sync_window_hours=1.0)
    connected = await connect_shop(sessions, settings, client, shop)
    broken = await connect_shop(sessions, settings, client, shop)
    fresh: dict[str, tuple[str, str | None]] = {}
    async with running_workers(client, sessions, settings):
        # 7 windows per run: the sync continues as new several times.
        result = await sync(client, connected.connector.id, task_queue, windows_per_run=7)
        sync_id = order_sync_workflow_id(connected.connector.id)
        runs = [run async for run in client.list_workflows(f"WorkflowId = '{sync_id}'")]
        first_run = await client.get_workflow_handle(
            sync_id, run_id=runs[-1].run_id
        ).fetch_history()
        fresh["OrderSyncWorkflow-continued-as-new"] = (sync_id, runs[-1].run_id)
        fresh["OrderSyncWorkflow-last-run"] = (sync_id, None)

        shop.tokens = {"shpat_revoked"}
        with pytest.raises(WorkflowFailureError):
            await sync(client, broken.connector.id, task_queue)
        fresh["OrderSyncWorkflow-invalid-credentials"] = (
            order_sync_workflow_id(broken.connector.id),
            None,
        )
        shop.tokens = {TOKEN}

        trigger_id = f"trigger-{uuid.uuid4()}"
        await client.execute_workflow(
            OrderSyncTriggerWorkflow.run,
            StartOrderSync(connector_id=connected.connector.id),
            id=trigger_id,
            task_queue=task_queue,
        )
        await client.get_workflow_handle(sync_id).result()
        fresh["OrderSyncTriggerWorkflow-started"] = (trigger_id, None)

        day = date.today()
        report_id = report_workflow_id(connected.tenant.id, day, day)
        await client.execute_workflow(
            ReportWorkflow.run,
            ReportInput(tenant_id=connected.tenant.id, first_day=day, last_day=day),
            id=report_id,
            task_queue=task_queue,
        )
        fresh["ReportWorkflow-one-day"] = (report_id, None)

    assert len(runs) >= 8
    assert any(
        e.event_type is EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
        for e in first_run.events
    )
    assert result.status is ModuleExecutionStatus.SUCCEEDED
    assert set(await orders_of(sessions, connected.tenant.id)) == set(shop.orders)
    # One record for the sync across its runs, one for the triggered sync after it.
    continued, triggered = [
        e for e in await executions_of(sessions, connected.tenant.id) if e.connector_id
    ]
    assert continued.status is triggered.status is ModuleExecutionStatus.SUCCEEDED
    assert (continued.inserted, triggered.inserted) == (90 + 9, 0)

    histories = {
        name: await client.get_workflow_handle(wid, run_id=rid).fetch_history()
        for name, (wid, rid) in fresh.items()
    }
    if os.environ.get("CHANGEFLOW_RECORD_HISTORIES"):
        HISTORIES.mkdir(exist_ok=True)
        for name, history in histories.items():
            recording = {"workflow_id": history.workflow_id, "history": history.to_json_dict()}
            (HISTORIES / f"{name}.json").write_text(json.dumps(recording))
    recorded = sorted(path for kind in WORKFLOW_TYPES for path in HISTORIES.glob(f"{kind}-*.json"))
    assert {path.name.split("-")[0] for path in recorded} == set(WORKFLOW_TYPES)
    replayer = Replayer(
        workflows=[OrderSyncWorkflow, OrderSyncTriggerWorkflow, ReportWorkflow],
        data_converter=DATA_CONVERTER,
    )
    for history in histories.values():
        await replayer.replay_workflow(history)
    for path in recorded:
        recording = json.loads(path.read_text())
        await replayer.replay_workflow(
            WorkflowHistory.from_json(recording["workflow_id"], recording["history"])
        )
