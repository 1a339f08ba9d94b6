"""`make demo`'s commerce part as a newcomer sees it: a shop connected, synced, changed and
synced again, a report; and nothing of the demo keeps syncing a stand-in that is gone."""

import asyncio
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.service import RPCError

from models.db import SessionFactory
from models.projects import ConnectorStatus
from scripts.demo_commerce import SEEDED_ORDERS, demo_credential_keys, demo_key_file, run_commerce
from tests.commerce_support import commerce_settings, connector_row, orders_of
from tests.factories import make_tenant
from tests.workers import running_workers
from workflows.contracts.commerce import SyncStream
from workflows.contracts.ids import order_sync_schedule_id


@pytest.mark.asyncio(loop_scope="session")
async def test_the_demo_connects_syncs_the_change_and_reports_then_disables_its_connector(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = commerce_settings(task_queue, tmp_path, data_dir=tmp_path)
    tenant = await make_tenant(sessions, name="Demo commerce")
    async with running_workers(client, sessions, settings):
        outcome = await run_commerce(settings, client, sessions, tenant.id)
    out = capsys.readouterr().out

    assert outcome.ok
    assert outcome.first.counts[SyncStream.ORDERS].inserted == SEEDED_ORDERS
    changed = outcome.second.counts[SyncStream.ORDERS]
    assert (changed.fetched, changed.inserted, changed.updated) == (3, 1, 2)
    assert len(await orders_of(sessions, tenant.id)) == SEEDED_ORDERS + 1
    assert "LOCAL STAND-IN of Shopify" in out
    assert "incremental sync, orders: 3 fetched, 1 inserted, 2 updated" in out
    [csv_line] = [line for line in out.splitlines() if "daily revenue as CSV" in line]
    csv_text = await asyncio.to_thread(Path(csv_line.split(": ", 1)[1]).read_text)
    assert csv_text.startswith("day,currency,orders,gross,discounts,refunds,net")
    # The stand-in is gone: its connector is disabled and has no Schedule.
    [connector_id] = {row.connector_id for row in (await orders_of(sessions, tenant.id)).values()}
    assert connector_id is not None
    assert (await connector_row(sessions, connector_id)).status is ConnectorStatus.DISABLED
    with pytest.raises(RPCError):
        await client.get_schedule_handle(order_sync_schedule_id(connector_id)).describe()


def test_without_configured_keys_the_demo_keeps_one_key_ring_in_its_data_folder(
    tmp_path: Path,
) -> None:
    settings = commerce_settings("q", tmp_path, data_dir=tmp_path).model_copy(
        update={"credential_keys": None}
    )
    first = demo_credential_keys(settings)["credential_keys"].get_secret_value()
    again = demo_credential_keys(settings)["credential_keys"].get_secret_value()
    assert first == again and first.startswith("demo:")
    assert demo_key_file(settings).stat().st_mode & 0o077 == 0
    configured = commerce_settings("q", tmp_path, data_dir=tmp_path)
    assert demo_credential_keys(configured) == {}
