"""A service in any language can run a connector's sync and a tenant's report with the
`temporal` CLI alone: the commands documented in workflows/schemas/README.md, run for real."""

import json
from pathlib import Path

import pytest
from temporalio.client import Client

from models.db import SessionFactory
from scripts.shopify_stand_in import ShopifyStandIn
from tests.commerce_support import commerce_settings, connect_shop, orders_of
from tests.temporal_cli import CodecEndpoint, temporal, temporal_outcome
from tests.workers import running_workers
from workflows.contracts.ids import order_sync_workflow_id, report_workflow_id

pytestmark = [
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.shop_seed(orders=25, customers=5),
]


async def test_sync_and_report_with_the_temporal_cli(
    client: Client,
    codec_endpoint: CodecEndpoint,
    sessions: SessionFactory,
    task_queue: str,
    tmp_path: Path,
    shop: ShopifyStandIn,
) -> None:
    settings = commerce_settings(task_queue, tmp_path)
    connected = await connect_shop(sessions, settings, client, shop)
    address = client.service_client.config.target_host
    connector_id = str(connected.connector.id)
    workflow_id = order_sync_workflow_id(connected.connector.id)
    async with running_workers(client, sessions, settings):
        await temporal(
            address,
            "workflow",
            "start",
            "--type",
            "OrderSyncWorkflow",
            "--task-queue",
            task_queue,
            "--workflow-id",
            workflow_id,
            "--input",
            json.dumps({"connector_id": connector_id}),
            codec=codec_endpoint,
        )
        result = json.loads(
            await temporal(
                address, "workflow", "result", "--workflow-id", workflow_id, codec=codec_endpoint
            )
        )
        listed = json.loads(
            await temporal(address, "workflow", "list", "--query", f"ConnectorId='{connector_id}'")
        )
        first = min(o.created_at for o in shop.orders.values()).date()
        day = first.isoformat()
        report_id = report_workflow_id(connected.tenant.id, first, first)
        report = json.loads(
            await temporal(
                address,
                "workflow",
                "execute",
                "--type",
                "ReportWorkflow",
                "--task-queue",
                task_queue,
                "--workflow-id",
                report_id,
                "--input",
                json.dumps(
                    {"tenant_id": str(connected.tenant.id), "first_day": day, "last_day": day}
                ),
                codec=codec_endpoint,
            )
        )
        code, out, err = await temporal_outcome(
            address,
            "workflow",
            "execute",
            "--type",
            "ReportWorkflow",
            "--task-queue",
            task_queue,
            "--workflow-id",
            f"{report_id}-backward",
            "--input",
            json.dumps(
                {"tenant_id": str(connected.tenant.id), "first_day": day, "last_day": "2000-01-01"}
            ),
            codec=codec_endpoint,
        )

    assert result["result"]["counts"]["orders"]["inserted"] == 25
    assert result["result"]["status"] == "succeeded"
    assert len(await orders_of(sessions, connected.tenant.id)) == 25
    assert [w["execution"]["workflowId"] for w in listed] == [workflow_id]
    assert report["result"]["report"]["first_day"] == day
    assert report["result"]["report"]["timezone"] == "America/New_York"
    assert code != 0 and "InvalidReportPeriod" in out + err
