"""Nothing a person types reaches Temporal in plain text: a lifecycle taken through every
decision with distinctive words, a tenant's webhook and a Shopify connector with distinctive
secrets, then the raw history bytes of every workflow (read without the codec) and the Temporal
server's own database file are searched for each."""

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.client import Client

from activities.notifications import TenantWebhooks
from client.lifecycle import LifecycleClient
from infra.settings import Settings
from models import PromptRequest, PromptStatus
from models.db import SessionFactory
from scripts.shopify_stand_in import ShopifyStandIn
from tests.commerce_support import (
    commerce_settings,
    connect_shop,
    connector_service,
    sync,
)
from tests.conftest import DATA_CONVERTER
from tests.lifecycle_support import human_policy, make_shop, plan_awaiting_approval, submit
from tests.process_support import free_port
from tests.webhook_receiver import webhook_receiver
from tests.workers import running_workers
from workers.devstack import register_search_attributes, start_temporal, stop_process

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture
async def own_server(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """A dev server of this test's own that keeps its state in a SQLite file (the session's
    server runs in memory): its address and the folder of its database file."""
    data_dir = tmp_path / "temporal"
    settings = Settings(
        data_dir=data_dir,
        dev_temporal_port=free_port(),
        dev_ui_port=free_port(),
        codec_server_port=free_port(),
    )
    process, address = start_temporal(settings)
    assert process is not None, "a free port cannot have a server already"
    try:
        yield address, data_dir
    finally:
        stop_process(process)


async def test_nothing_a_person_types_is_in_plain_text_in_temporal(
    own_server: tuple[str, Path],
    sessions: SessionFactory,
    task_queue: str,
    tmp_path: Path,
) -> None:
    address, data_dir = own_server
    client = await Client.connect(address, data_converter=DATA_CONVERTER)
    await register_search_attributes(client, "default")
    mark = secrets.token_hex(5)
    typed = {
        "prompt": f"set store_name to Prompted{mark}",
        "revised prompt": f"set store_name to Revised{mark}",
        "approval comment": f"fine by me {mark}comment",
        "rejection reason": f"not this one {mark}rejection",
        "cancel reason": f"changed my mind {mark}cancel",
        "connector secret": f"shpat_{mark}{secrets.token_hex(10)}",
        "webhook secret": f"whsec_{mark}{secrets.token_hex(10)}",
    }
    settings = commerce_settings(task_queue, tmp_path)
    shop = await make_shop(sessions, tmp_path, policy=human_policy())
    first, second = shop.admins
    lifecycle = LifecycleClient(
        client, task_queue=settings.task_queue, deploy_task_queue=settings.deploy_task_queue
    )
    stand_in = ShopifyStandIn(token=typed["connector secret"])
    stand_in.start()
    try:
        async with (
            webhook_receiver(typed["webhook secret"]) as receiver,
            running_workers(client, sessions, settings),
        ):
            await TenantWebhooks(sessions, connector_service(settings, sessions, client)).set(
                shop.tenant.id, url=receiver.url, secret=typed["webhook secret"]
            )
            connected = await connect_shop(
                sessions, settings, client, stand_in, token=typed["connector secret"]
            )
            await sync(client, connected.connector.id, settings.task_queue)

            # Approved, revised, approved again by both: it ships.
            shipped = await submit(lifecycle, shop, typed["prompt"])
            _, plan = await plan_awaiting_approval(lifecycle, shipped)
            await lifecycle.approve(
                shipped,
                user_id=first.id,
                content_hash=plan.content_hash,
                comment=typed["approval comment"],
            )
            await lifecycle.revise(shipped, user_id=second.id, prompt=typed["revised prompt"])
            _, revised = await plan_awaiting_approval(lifecycle, shipped)
            assert revised.revision == 2
            for admin in (first, second):
                await lifecycle.approve(
                    shipped,
                    user_id=admin.id,
                    content_hash=revised.content_hash,
                    comment=typed["approval comment"],
                )
            # Rejected.
            rejected = await submit(lifecycle, shop, typed["prompt"])
            _, plan = await plan_awaiting_approval(lifecycle, rejected)
            await lifecycle.reject(
                rejected,
                user_id=first.id,
                content_hash=plan.content_hash,
                reason=typed["rejection reason"],
            )
            # Cancelled.
            cancelled = await submit(lifecycle, shop, typed["prompt"])
            await plan_awaiting_approval(lifecycle, cancelled)
            await lifecycle.cancel(cancelled, user_id=first.id, reason=typed["cancel reason"])
            outcomes = [
                (await lifecycle.wait_for_outcome(r)).status for r in (shipped, rejected, cancelled)
            ]
            await receiver.wait_for("request.ended")

        raw = Client(client.service_client, namespace=client.namespace)  # no codec
        histories = [
            b"".join(
                event.SerializeToString()
                for event in (await raw.get_workflow_handle(run.id).fetch_history()).events
            )
            async for run in raw.list_workflows()
        ]
    finally:
        stand_in.stop()

    assert outcomes == [PromptStatus.COMPLETED, PromptStatus.REJECTED, PromptStatus.CANCELLED]
    async with sessions() as session:
        row = await session.get(PromptRequest, cancelled)
    # The cancel reason reached the request (through the encrypted update payload)...
    assert row is not None and typed["cancel reason"] in (row.status_reason or "")
    assert len(histories) >= 10  # lifecycles, deployments, notifications, the sync
    # ...and neither it nor anything else typed is in any history's raw bytes.
    in_histories = {
        name: any(text.encode() in history for history in histories) for name, text in typed.items()
    }
    assert in_histories == dict.fromkeys(typed, False)

    stored = b"".join(path.read_bytes() for path in data_dir.glob("temporal.db*"))
    assert len(stored) > 100_000
    in_database = {name: text.encode() in stored for name, text in typed.items()}
    assert in_database == dict.fromkeys(typed, False)
    # The mark itself (in every text above) is nowhere either: not even a fragment leaked.
    assert mark.encode() not in stored
    assert not any(mark.encode() in history for history in histories)
