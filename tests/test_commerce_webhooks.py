"""Shopify webhooks as a shop sends them: the local Shopify changes an order and posts the
signed topic to the endpoint, which answers at once and hands the event to the connector's
sync; the rows then show what the shop holds. Redeliveries start nothing, bad signatures are
refused and change nothing, out-of-order deliveries end in the shop's state, app/uninstalled
disables the connector, and the signing secret appears in no log and no history."""

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import pytest_asyncio
from sqlmodel import func, select
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from activities.connectors import ConnectorService
from activities.shopify_webhooks import (
    Outcome,
    ShopifyDelivery,
    ShopifyWebhooks,
    shopify_signature,
)
from infra.settings import Settings
from models.commerce import ModuleExecutionStatus, OrderStatus, WebhookDelivery
from models.db import SessionFactory
from models.projects import Connector, ConnectorStatus
from scripts.shopify_stand_in import (
    SentWebhook,
    ShopifyStandIn,
    WebhookSender,
    customer_payload,
    order_payload,
    refund_payload,
    shop_payload,
)
from tests.commerce_support import (
    TOKEN,
    ConnectedShop,
    cents,
    commerce_settings,
    connect_shop,
    connector_row,
    executions_of,
    orders_of,
    sync,
)
from tests.conftest import DATA_CONVERTER
from tests.process_support import ROOT, clean_environment, free_port
from tests.temporal_cli import CodecEndpoint, temporal
from tests.workers import running_workers
from workers.registry import Dependencies, credential_store
from workers.schedules import apply_connector_schedule
from workers.webhooks import shopify_webhooks, webhook_app
from workflows.commerce import OrderSyncWorkflow
from workflows.contracts.commerce import BulkOperationFinished, OrderSyncInput, SyncRequested
from workflows.contracts.ids import order_sync_schedule_id, order_sync_workflow_id

pytestmark = [
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.shop_seed(orders=12, customers=4),
]

WEBHOOK_SECRET = "whsec_5f2b9c0e7d41a8b3c6e9f0a1b2c3d4e5"
ENDPOINT = "http://webhooks.test"
T = TypeVar("T")


@pytest.fixture
def settings(task_queue: str, tmp_path: Path) -> Settings:
    return commerce_settings(task_queue, tmp_path)


@pytest_asyncio.fixture
async def connected(
    sessions: SessionFactory, settings: Settings, client: Client, shop: ShopifyStandIn
) -> ConnectedShop:
    return await connect_shop(
        sessions,
        settings,
        client,
        shop,
        credentials={"access_token": TOKEN, "webhook_secret": WEBHOOK_SECRET},
    )


@pytest.fixture
def sender(client: Client, sessions: SessionFactory, settings: Settings) -> WebhookSender:
    """Shopify's side, posting to the endpoint app in-process."""
    app = webhook_app(
        shopify_webhooks(Dependencies(settings=settings, sessions=sessions, client=client)),
        max_body_bytes=settings.webhooks_max_body_bytes,
    )
    return WebhookSender(WEBHOOK_SECRET, transport=httpx.ASGITransport(app=app))


def url_of(connector_id: uuid.UUID | str, base: str = ENDPOINT) -> str:
    return f"{base}/webhooks/shopify/{connector_id}"


async def until(check: Callable[[], Awaitable[T]], within_s: float = 60.0) -> T:
    async with asyncio.timeout(within_s):
        while not (found := await check()):  # noqa: ASYNC110
            await asyncio.sleep(0.2)
    return found


async def sync_runs(client: Client, connector_id: uuid.UUID) -> list[WorkflowExecutionStatus]:
    """Every run of the connector's sync workflow (continued-as-new runs included)."""
    query = f'WorkflowId = "{order_sync_workflow_id(connector_id)}"'
    return [w.status async for w in client.list_workflows(query) if w.status is not None]


async def sync_finished(client: Client, connector_id: uuid.UUID) -> None:
    """Wait for the connector's sync to end, following its continue-as-new runs."""
    await client.get_workflow_handle(order_sync_workflow_id(connector_id)).result()


async def deliveries(sessions: SessionFactory, connector_id: uuid.UUID) -> int:
    async with sessions() as session:
        count = await session.exec(
            select(func.count()).where(WebhookDelivery.connector_id == connector_id)
        )
        return int(count.one())


async def no_sync_of(client: Client, connector_id: uuid.UUID) -> bool:
    try:
        await client.get_workflow_handle(order_sync_workflow_id(connector_id)).describe()
    except RPCError as err:
        return err.status is RPCStatusCode.NOT_FOUND
    return False


async def test_an_order_cancelled_in_the_shop_reaches_its_row_through_orders_updated(
    client: Client,
    sessions: SessionFactory,
    settings: Settings,
    shop: ShopifyStandIn,
    connected: ConnectedShop,
    sender: WebhookSender,
) -> None:
    connector_id = connected.connector.id
    async with running_workers(client, sessions, settings):
        await sync(client, connector_id, settings.task_queue)
        order = next(o for o in shop.orders.values() if o.cancelled_at is None)
        assert (await orders_of(sessions, connected.tenant.id))[order.id].status is not (
            OrderStatus.CANCELLED
        )
        shop.cancel(order.id)

        started = time.monotonic()
        answer = await sender.send(url_of(connector_id), "orders/updated", order_payload(order))
        answered_in = time.monotonic() - started
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"outcome": "sync_requested"}
        assert answered_in < 2.0, f"answered in {answered_in:.2f}s; Shopify waits 5 s"
        await sync_finished(client, connector_id)

    row = (await orders_of(sessions, connected.tenant.id))[order.id]
    assert row.status is OrderStatus.CANCELLED and row.cancelled_at is not None
    assert row.refunded_cents == cents(order.total, order.currency)
    runs = await executions_of(sessions, connected.tenant.id)
    assert [r.status for r in runs] == [ModuleExecutionStatus.SUCCEEDED] * 2
    assert runs[1].updated >= 1
    assert await deliveries(sessions, connector_id) == 1


async def test_a_redelivered_webhook_is_answered_200_and_starts_nothing(
    client: Client,
    sessions: SessionFactory,
    settings: Settings,
    shop: ShopifyStandIn,
    connected: ConnectedShop,
    sender: WebhookSender,
) -> None:
    connector_id = connected.connector.id
    customer = next(iter(shop.customers.values()))
    async with running_workers(client, sessions, settings):
        first = await sender.send(
            url_of(connector_id), "customers/update", customer_payload(customer)
        )
        assert first.json() == {"outcome": "sync_requested"}
        await sync_finished(client, connector_id)

        again = await sender.redeliver(sender.sent[0])
        assert again.status_code == 200 and again.json() == {"outcome": "duplicate"}
        # Duplicates arriving together: one of them counts at most, and it was counted.
        answers = await asyncio.gather(*(sender.redeliver(sender.sent[0]) for _ in range(5)))
        assert {a.json()["outcome"] for a in answers} == {"duplicate"}

    assert len(await executions_of(sessions, connected.tenant.id)) == 1
    assert await until(lambda: sync_runs(client, connector_id)) == [
        WorkflowExecutionStatus.COMPLETED
    ]
    assert await deliveries(sessions, connector_id) == 1


async def test_a_burst_of_deliveries_during_a_sync_makes_one_follow_up_sync_not_one_each(
    client: Client,
    sessions: SessionFactory,
    settings: Settings,
    shop: ShopifyStandIn,
    connected: ConnectedShop,
    sender: WebhookSender,
) -> None:
    connector_id = connected.connector.id
    orders = [o for o in shop.orders.values() if o.refunded == 0 and o.cancelled_at is None]
    reading = asyncio.Event()
    release = asyncio.Event()
    loop = asyncio.get_running_loop()
    held = False

    def hold_first_page(stream: str, variables: dict[str, object]) -> None:
        # The first sync's first page waits (in the stand-in's thread) until the burst is in.
        nonlocal held
        if held:
            return
        held = True
        loop.call_soon_threadsafe(reading.set)
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(timeout=60)

    shop.before_page = hold_first_page
    async with running_workers(client, sessions, settings):
        first = await sender.send(url_of(connector_id), "orders/create", order_payload(orders[0]))
        assert first.json() == {"outcome": "sync_requested"}
        await asyncio.wait_for(reading.wait(), 60)
        for order in orders[1:9]:
            shop.edit(order.id, fulfilled=True)
            answer = await sender.send(url_of(connector_id), "orders/updated", order_payload(order))
            assert answer.json() == {"outcome": "sync_requested"}
        release.set()
        await sync_finished(client, connector_id)

    runs = await executions_of(sessions, connected.tenant.id)
    assert [r.status for r in runs] == [ModuleExecutionStatus.SUCCEEDED] * 2, "one follow-up"
    assert runs[1].fetched >= 8  # the follow-up read the orders the burst announced
    rows = await orders_of(sessions, connected.tenant.id)
    assert all(rows[o.id].status is OrderStatus.FULFILLED for o in orders[1:9])
    statuses = await until(
        lambda: _when(sync_runs(client, connector_id), lambda found: len(found) == 2)
    )
    assert sorted(statuses) == sorted(
        [WorkflowExecutionStatus.COMPLETED, WorkflowExecutionStatus.CONTINUED_AS_NEW]
    )
    assert await deliveries(sessions, connector_id) == 9
    # Both runs, the signals and the continue-as-new, replay against the current code.
    query = f'WorkflowId = "{order_sync_workflow_id(connector_id)}"'
    replayed = await Replayer(
        workflows=[OrderSyncWorkflow], data_converter=DATA_CONVERTER
    ).replay_workflows(client.list_workflows(query).map_histories())
    assert replayed.replay_failures == {}


async def _when(
    found: Awaitable[list[WorkflowExecutionStatus]],
    check: Callable[[list[WorkflowExecutionStatus]], bool],
) -> list[WorkflowExecutionStatus] | None:
    value = await found
    return value if check(value) else None


async def test_a_badly_signed_or_unsigned_delivery_gets_401_and_changes_nothing(
    client: Client,
    sessions: SessionFactory,
    settings: Settings,
    shop: ShopifyStandIn,
    connected: ConnectedShop,
    sender: WebhookSender,
) -> None:
    connector_id = connected.connector.id
    order = next(iter(shop.orders.values()))
    url = url_of(connector_id)
    forged = await sender.send(url, "orders/updated", order_payload(order), signed_with="guess")
    unsigned = await sender.send(url, "orders/updated", order_payload(order), signature="")
    garbage = await sender.send(url, "app/uninstalled", shop_payload(), signature="bm90IGl0")
    assert [a.status_code for a in (forged, unsigned, garbage)] == [401, 401, 401]
    assert WEBHOOK_SECRET not in forged.text

    assert await no_sync_of(client, connector_id)
    assert await deliveries(sessions, connector_id) == 0
    assert await orders_of(sessions, connected.tenant.id) == {}
    assert (await connector_row(sessions, connector_id)).status is ConnectorStatus.ACTIVE

    # The body is what is signed: a body changed on the way fails with the original's signature.
    good = sender.sent[0]
    tampered = SentWebhook(
        good.url,
        good.topic,
        str(uuid.uuid4()),
        good.body.replace(b"#", b"%"),
        {
            **good.headers,
            "X-Shopify-Webhook-Id": "tampered",
            "X-Shopify-Hmac-Sha256": sender.sign(good.body),
        },
    )
    assert (await sender.redeliver(tampered)).status_code == 401


async def test_an_unknown_connector_gets_404_whatever_it_is(
    client: Client, sessions: SessionFactory, connected: ConnectedShop, sender: WebhookSender
) -> None:
    payload = shop_payload()
    for connector_id in (uuid.uuid4(), "not-a-connector"):
        answer = await sender.send(url_of(connector_id), "orders/create", payload)
        assert answer.status_code == 404
        assert answer.json() == {"error": "no such webhook endpoint"}
    assert await deliveries(sessions, connected.connector.id) == 0


async def test_an_unknown_topic_is_acknowledged_and_ignored(
    client: Client, sessions: SessionFactory, connected: ConnectedShop, sender: WebhookSender
) -> None:
    answer = await sender.send(url_of(connected.connector.id), "products/update", {"id": 1})
    assert answer.status_code == 200 and answer.json() == {"outcome": "ignored_topic"}
    assert await no_sync_of(client, connected.connector.id)
    assert await deliveries(sessions, connected.connector.id) == 0


async def test_out_of_order_deliveries_end_in_the_shops_state(
    client: Client,
    sessions: SessionFactory,
    settings: Settings,
    shop: ShopifyStandIn,
    connected: ConnectedShop,
    sender: WebhookSender,
) -> None:
    connector_id = connected.connector.id
    async with running_workers(client, sessions, settings):
        await sync(client, connector_id, settings.task_queue)
        created = shop.add_order(items=[("Lamp", 1, Decimal("40.00"))])
        as_created = order_payload(created)
        shop.refund(created.id, Decimal("15.00"))
        refunded = order_payload(created)
        refund = refund_payload(created, Decimal("15.00"))
        # Shopify does not promise order: the update and the refund come before the create.
        url = url_of(connector_id)
        for topic, payload in (
            ("orders/updated", refunded),
            ("refunds/create", refund),
            ("orders/create", as_created),
        ):
            answer = await sender.send(url, topic, payload)
            assert answer.status_code == 200, answer.text
        await sync_finished(client, connector_id)

    row = (await orders_of(sessions, connected.tenant.id))[created.id]
    assert row.refunded_cents == cents("15.00") and row.total_cents == cents(created.total)
    assert row.net_cents == cents(created.total) - cents("15.00")
    assert len(await orders_of(sessions, connected.tenant.id)) == len(shop.orders)
    assert await deliveries(sessions, connector_id) == 3


async def test_app_uninstalled_disables_the_connector_and_removes_its_schedule(
    client: Client,
    sessions: SessionFactory,
    settings: Settings,
    shop: ShopifyStandIn,
    connected: ConnectedShop,
    sender: WebhookSender,
) -> None:
    connector_id = connected.connector.id
    schedule = client.get_schedule_handle(order_sync_schedule_id(connector_id))
    assert await apply_connector_schedule(client, connected.connector, settings.task_queue) == (
        "created"
    )
    url = url_of(connector_id)
    answer = await sender.send(url, "app/uninstalled", shop_payload())
    assert answer.status_code == 200 and answer.json() == {"outcome": "connector_disabled"}

    assert (await connector_row(sessions, connector_id)).status is ConnectorStatus.DISABLED
    with pytest.raises(RPCError) as gone:
        await schedule.describe()
    assert gone.value.status is RPCStatusCode.NOT_FOUND
    again = await sender.redeliver(sender.sent[0])
    assert again.json() == {"outcome": "duplicate"}
    # A disabled connector's order webhooks start no sync.
    later = await sender.send(
        url, "orders/updated", order_payload(next(iter(shop.orders.values())))
    )
    assert later.json() == {"outcome": "ignored_disabled_connector"}
    assert await no_sync_of(client, connector_id)


async def test_an_app_with_client_credentials_signs_with_its_client_secret(
    client: Client,
    sessions: SessionFactory,
    settings: Settings,
    shop: ShopifyStandIn,
) -> None:
    shop.apps["app-client-id"] = "shpss_app_client_secret_0123456789"
    connected = await connect_shop(
        sessions,
        settings,
        client,
        shop,
        credentials={"client_id": "app-client-id", "client_secret": shop.apps["app-client-id"]},
    )
    app = webhook_app(
        shopify_webhooks(Dependencies(settings=settings, sessions=sessions, client=client)),
        max_body_bytes=settings.webhooks_max_body_bytes,
    )
    transport = httpx.ASGITransport(app=app)
    url = url_of(connected.connector.id)
    right = WebhookSender(shop.apps["app-client-id"], transport=transport)
    wrong = WebhookSender(WEBHOOK_SECRET, transport=transport)
    assert (await wrong.send(url, "app/uninstalled", shop_payload())).status_code == 401
    assert (await right.send(url, "app/uninstalled", shop_payload())).status_code == 200
    assert (await connector_row(sessions, connected.connector.id)).status is (
        ConnectorStatus.DISABLED
    )


def _spawn_webhooks(env: dict[str, str], log: Path) -> "subprocess.Popen[bytes]":
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "changeflow-webhooks")],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest_asyncio.fixture
async def webhooks_process(
    database_url: str, temporal_env: WorkflowEnvironment, settings: Settings, tmp_path: Path
) -> AsyncIterator[tuple[str, Path]]:
    """`changeflow-webhooks` as an operator runs it, configured by environment variables."""
    port = free_port()
    assert settings.credential_keys is not None
    env = clean_environment(
        DATABASE_URL=database_url,
        TEMPORAL_ADDRESS=temporal_env.client.service_client.config.target_host,
        CHANGEFLOW_TASK_QUEUE=settings.task_queue,
        CHANGEFLOW_CREDENTIAL_KEYS=settings.credential_keys.get_secret_value(),
        CHANGEFLOW_WEBHOOKS_PORT=str(port),
        CHANGEFLOW_LOG_FORMAT="json",
        CHANGEFLOW_LOG_LEVEL="DEBUG",
        CHANGEFLOW_DATA_DIR=str(tmp_path / "data"),
    )
    log = tmp_path / "webhooks.log"
    process = _spawn_webhooks(env, log)
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as http:

            async def healthy() -> bool:
                assert process.poll() is None, log.read_text()
                try:
                    return (await http.get(f"{base}/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await until(healthy, within_s=60)
        yield base, log
    finally:
        process.terminate()
        process.wait(timeout=20)
    assert process.returncode == 0, log.read_text()


async def test_the_webhooks_process_syncs_on_a_delivery_and_never_shows_the_secret(
    client: Client,
    sessions: SessionFactory,
    settings: Settings,
    shop: ShopifyStandIn,
    connected: ConnectedShop,
    webhooks_process: tuple[str, Path],
) -> None:
    base, log = webhooks_process
    connector_id = connected.connector.id
    sender = WebhookSender(WEBHOOK_SECRET)
    order = next(o for o in shop.orders.values() if o.refunded == 0)
    async with running_workers(client, sessions, settings):
        shop.refund(order.id, Decimal("3.00"))
        forged = await sender.send(
            url_of(connector_id, base), "orders/updated", {}, signed_with="x"
        )
        assert forged.status_code == 401
        started = time.monotonic()
        answer = await sender.send(
            url_of(connector_id, base), "orders/updated", order_payload(order)
        )
        answered_in = time.monotonic() - started
        assert answer.status_code == 200 and answer.json() == {"outcome": "sync_requested"}
        assert answered_in < 2.0, f"answered in {answered_in:.2f}s; Shopify waits 5 s"
        await sync_finished(client, connector_id)
        history = await client.get_workflow_handle(
            order_sync_workflow_id(connector_id)
        ).fetch_history()

    assert (await orders_of(sessions, connected.tenant.id))[order.id].refunded_cents == cents(
        order.refunded, order.currency
    )
    text = log.read_text()
    assert "webhook_received" in text and "webhook_refused" in text
    events = json.dumps(history.to_json_dict())
    assert "request_sync" in events
    for secret in (WEBHOOK_SECRET, TOKEN):
        assert secret not in text
        assert secret not in events


@pytest.mark.system
async def test_the_webhooks_process_refuses_to_start_without_a_key_ring() -> None:
    env = clean_environment(
        DATABASE_URL="postgresql://nobody@127.0.0.1:1/none", TEMPORAL_ADDRESS="x:1"
    )
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "changeflow-webhooks"),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2
    assert "CHANGEFLOW_CREDENTIAL_KEYS is not set" in stderr.decode()


async def test_a_delivery_temporal_did_not_take_is_not_recorded_so_shopifys_retry_is_accepted(
    client: Client,
    sessions: SessionFactory,
    settings: Settings,
    shop: ShopifyStandIn,
    connected: ConnectedShop,
) -> None:
    deps = Dependencies(settings=settings, sessions=sessions, client=client)
    store, connections = credential_store(deps)
    handed_off: list[SyncRequested] = []

    async def temporal_down(connector_id: uuid.UUID, request: SyncRequested) -> None:
        raise RPCError("connection refused", RPCStatusCode.UNAVAILABLE, b"")

    async def temporal_up(connector_id: uuid.UUID, request: SyncRequested) -> None:
        handed_off.append(request)

    async def schedule_untouched(connector: Connector) -> None:
        raise AssertionError("no schedule change expected")

    async def no_bulk(connector_id: uuid.UUID, finished: BulkOperationFinished) -> None:
        raise AssertionError("no bulk operation expected")

    def intake(
        request_sync: Callable[[uuid.UUID, SyncRequested], Awaitable[None]],
    ) -> ShopifyWebhooks:
        return ShopifyWebhooks(
            sessions,
            store,
            ConnectorService(sessions, store, connections),
            request_sync=request_sync,
            connector_disabled=schedule_untouched,
            bulk_finished=no_bulk,
        )

    body = json.dumps(order_payload(next(iter(shop.orders.values())))).encode()
    delivery = ShopifyDelivery(
        connector_id=str(connected.connector.id),
        topic="orders/updated",
        webhook_id="delivery-1",
        signature=shopify_signature(WEBHOOK_SECRET, body),
        shop_domain="stand-in.myshopify.com",
        body=body,
    )
    with pytest.raises(RPCError):
        await intake(temporal_down).receive(delivery)
    assert await deliveries(sessions, connected.connector.id) == 0

    assert await intake(temporal_up).receive(delivery) is Outcome.SYNC_REQUESTED
    assert await intake(temporal_up).receive(delivery) is Outcome.DUPLICATE
    assert handed_off == [SyncRequested(topic="orders/updated", webhook_id="delivery-1")]
    assert await deliveries(sessions, connected.connector.id) == 1


async def test_a_sync_is_requested_with_the_temporal_cli_as_the_schemas_readme_shows(
    client: Client,
    sessions: SessionFactory,
    settings: Settings,
    shop: ShopifyStandIn,
    connected: ConnectedShop,
    codec_endpoint: CodecEndpoint,
) -> None:
    address = client.service_client.config.target_host
    connector_id = str(connected.connector.id)
    workflow_id = order_sync_workflow_id(connected.connector.id)
    async with running_workers(client, sessions, settings):
        await temporal(
            address,
            "workflow",
            "signal-with-start",
            "--type",
            "OrderSyncWorkflow",
            "--task-queue",
            settings.task_queue,
            "--workflow-id",
            workflow_id,
            "--input",
            json.dumps({"connector_id": connector_id, "requested": True}),
            "--signal-name",
            "request_sync",
            "--signal-input",
            json.dumps({"topic": "orders/updated"}),
        )
        result = json.loads(
            await temporal(
                address, "workflow", "result", "--workflow-id", workflow_id, codec=codec_endpoint
            )
        )
    assert result["result"]["status"] == "succeeded"
    assert set(await orders_of(sessions, connected.tenant.id)) == set(shop.orders)
    assert len(await executions_of(sessions, connected.tenant.id)) == 1


async def test_bulk_operations_finish_wakes_the_sync_waiting_for_that_operation(
    client: Client,
    sessions: SessionFactory,
    settings: Settings,
    shop: ShopifyStandIn,
    connected: ConnectedShop,
    sender: WebhookSender,
) -> None:
    # A first sync by Bulk Operations that Shopify finishes only when it says so, polled once
    # in the activity and rechecked after an hour: only the webhook can wake it.
    shop.bulk_running_polls = 10**9
    bulk = settings.model_copy(
        update={
            "sync_bulk_first_sync": True,
            "sync_bulk_wait_seconds": 0.0,
            "sync_bulk_poll_seconds": 3600.0,
            "sync_bulk_recheck_seconds": 3600.0,
        }
    )
    connector_id = connected.connector.id
    answers = []
    async with running_workers(client, sessions, bulk):
        handle = await client.start_workflow(
            OrderSyncWorkflow.run,
            OrderSyncInput(connector_id=connector_id),
            id=order_sync_workflow_id(connector_id),
            task_queue=bulk.task_queue,
        )
        for waits, stream in enumerate(("customers", "orders"), start=1):
            # The sync waits (a timer of an hour) for its stream's Bulk Operation.
            await until(lambda w=waits: timers_started(handle, w))  # type: ignore[misc]
            assert shop.bulk_streams[-1] == stream and shop.bulk_running()
            payload = await shop.finish_bulk()
            answers.append(
                await sender.send(url_of(connector_id), "bulk_operations/finish", payload)
            )
        result = await asyncio.wait_for(handle.result(), 120)
        again = await sender.redeliver(sender.sent[-1])

    assert [a.json() for a in answers] == [{"outcome": "bulk_operation_finished"}] * 2
    assert again.json() == {"outcome": "duplicate"}
    assert shop.bulk_operations == 2
    assert set(await orders_of(sessions, connected.tenant.id)) == set(shop.orders)
    assert result.counts["orders"].inserted == 12  # type: ignore[index]
    signals = [
        e.workflow_execution_signaled_event_attributes.signal_name
        for e in (await handle.fetch_history()).events
        if e.HasField("workflow_execution_signaled_event_attributes")
    ]
    assert signals == ["bulk_operation_finished"] * 2


async def test_a_bulk_operations_finish_without_its_operation_gets_400_and_changes_nothing(
    client: Client, sessions: SessionFactory, connected: ConnectedShop, sender: WebhookSender
) -> None:
    for body in ({"status": "completed"}, {"admin_graphql_api_id": "gid://shopify/Order/1"}):
        answer = await sender.send(url_of(connected.connector.id), "bulk_operations/finish", body)
        assert answer.status_code == 400
    assert await deliveries(sessions, connected.connector.id) == 0
    assert await no_sync_of(client, connected.connector.id)


async def timers_started(handle: WorkflowHandle[Any, Any], at_least: int) -> bool:
    history = await handle.fetch_history()
    started = sum(1 for e in history.events if e.HasField("timer_started_event_attributes"))
    return started >= at_least
