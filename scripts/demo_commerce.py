"""`make demo`'s commerce part: the demo tenant connects its shop, its orders and customers
arrive, the shop changes and an incremental sync brings only the change, and a report is
computed from the rows.

The shop is a LOCAL STAND-IN of Shopify's Admin GraphQL API (scripts/shopify_stand_in.py: real
protocol, throttling and cursors; scripted data, not a shop). Everything else is the product:
the connector service, the encrypted credential store, OrderSyncWorkflow and ReportWorkflow on
the demo's worker, the rows in PostgreSQL.
"""

import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from sqlmodel import func, select
from temporalio.client import Client

from activities.connectors import ConnectorService
from activities.credentials import KeyRing
from activities.reports import daily_revenue_csv
from activities.shopify import format_money
from infra.settings import Settings
from models.commerce import Customer, ModuleExecution, Order
from models.db import SessionFactory
from models.projects import Connector, ConnectorKind, ConnectorStatus
from scripts.shopify_stand_in import ShopifyStandIn
from workers.registry import Dependencies, credential_store
from workers.schedules import apply_connector_schedule
from workflows.commerce import OrderSyncWorkflow, ReportWorkflow
from workflows.contracts.commerce import (
    OrderSyncInput,
    OrderSyncResult,
    ReportInput,
    ReportResult,
    SyncStream,
    total,
)
from workflows.contracts.ids import order_sync_workflow_id, report_workflow_id

SHOP_TOKEN = "shpat_local_stand_in_token"
SEEDED_ORDERS = 40
SEEDED_CUSTOMERS = 12
RUN_TIMEOUT = timedelta(minutes=3)


def demo_credential_keys(settings: Settings) -> dict[str, Any]:
    """Settings with a credential key ring. Without CHANGEFLOW_CREDENTIAL_KEYS the demo keeps
    its own ring in the data folder (created once, readable by its owner only), so what it
    stored still decrypts on the next run."""
    if settings.credential_keys is not None:
        return {}
    path = demo_key_file(settings)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(f"demo:{KeyRing.new_key()}\n")
    return {"credential_keys": SecretStr(path.read_text().strip())}


def demo_key_file(settings: Settings) -> Path:
    return settings.data_dir.resolve() / "demo" / "credential-keys"


@dataclass
class CommerceOutcome:
    first: OrderSyncResult
    second: OrderSyncResult
    report: ReportResult
    orders: int
    customers: int

    @property
    def ok(self) -> bool:
        # The change is exactly one new order and two changed ones; the rest is unchanged.
        change = self.second.counts.get(SyncStream.ORDERS)
        return (
            self.first.status.value == "succeeded"
            and self.second.status.value == "succeeded"
            and change is not None
            and (change.inserted, change.updated) == (1, 2)
            and self.orders == SEEDED_ORDERS + 1
            and bool(self.report.report.daily)
        )


async def run_commerce(
    settings: Settings, client: Client, sessions: SessionFactory, tenant_id: uuid.UUID
) -> CommerceOutcome:
    shop = ShopifyStandIn(token=SHOP_TOKEN, seed=secrets.randbelow(1000))
    shop.start()
    try:
        return await _connect_sync_report(settings, client, sessions, tenant_id, shop)
    finally:
        shop.stop()


async def _connect_sync_report(
    settings: Settings,
    client: Client,
    sessions: SessionFactory,
    tenant_id: uuid.UUID,
    shop: ShopifyStandIn,
) -> CommerceOutcome:
    shop.seed(orders=SEEDED_ORDERS, customers=SEEDED_CUSTOMERS)
    store, connections = credential_store(
        Dependencies(settings=settings, sessions=sessions, client=client)
    )
    service = ConnectorService(sessions, store, connections)
    print(
        f"4) the shop's orders and customers\n"
        f"   shop {shop.url}: a LOCAL STAND-IN of Shopify's Admin GraphQL API with "
        f"{SEEDED_ORDERS} scripted orders, not a shop",
        flush=True,
    )
    connector = await service.create(
        tenant_id=tenant_id,
        kind=ConnectorKind.SHOPIFY,
        name="Corner Shop on Shopify",
        config={"shop_url": shop.url},
        credentials={"access_token": SHOP_TOKEN},
    )
    connector = await service.test(connector.id)
    print(
        f"   connector {connector.id}: {connector.status.value} "
        f"(credentials tested against the shop, stored AES-GCM encrypted)"
    )

    first = await _sync(settings, client, connector.id)
    _say_counts("first sync", first)

    # The shop changes: a new order, a partial refund, a cancellation.
    orders = sorted(shop.orders)
    returning = next(o.customer for o in shop.orders.values() if o.customer is not None)
    new = shop.add_order(customer=returning, channel="pos")
    shop.refund(orders[3], Decimal("10.00"))
    shop.cancel(orders[7])
    await shop.settle()
    print(f"   the shop changed: new order {new.name}, a refund, a cancellation")
    second = await _sync(settings, client, connector.id)
    _say_counts("incremental sync", second)

    today = datetime.now(UTC).date()
    first_day = today - timedelta(days=2)
    report_input = ReportInput(tenant_id=tenant_id, first_day=first_day, last_day=today)
    report_id = report_workflow_id(tenant_id, first_day, today)
    report: ReportResult = await client.execute_workflow(
        ReportWorkflow.run,
        report_input,
        id=report_id,
        task_queue=settings.task_queue,
        execution_timeout=RUN_TIMEOUT,
    )
    _say_report(report)
    csv_path = settings.data_dir.resolve() / "demo" / f"daily-revenue-{tenant_id}.csv"
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    csv_path.write_text(daily_revenue_csv(report.report))
    print(f"   daily revenue as CSV: {csv_path}")

    async with sessions() as session:
        order_count = (
            await session.exec(select(func.count()).where(Order.tenant_id == tenant_id))
        ).one()
        customer_count = (
            await session.exec(select(func.count()).where(Customer.tenant_id == tenant_id))
        ).one()
        runs = (
            await session.exec(select(func.count()).where(ModuleExecution.tenant_id == tenant_id))
        ).one()
    print(
        f"   in PostgreSQL: {order_count} orders, {customer_count} customers, "
        f"{runs} module runs recorded"
    )
    print(f"   Web UI: {settings.workflow_url(order_sync_workflow_id(connector.id))}")
    print(f"           {settings.workflow_url(report_id)}\n", flush=True)
    # The stand-in goes away with the demo: the connector is disabled, so no Schedule (here
    # or in a later `make dev`) syncs a shop that is not there.
    await service.disable(connector.id)
    await _drop_schedule(client, sessions, connector.id, settings.task_queue)
    return CommerceOutcome(first, second, report, order_count, customer_count)


async def _sync(settings: Settings, client: Client, connector_id: uuid.UUID) -> OrderSyncResult:
    return await client.execute_workflow(
        OrderSyncWorkflow.run,
        OrderSyncInput(connector_id=connector_id),
        id=order_sync_workflow_id(connector_id),
        task_queue=settings.task_queue,
        execution_timeout=RUN_TIMEOUT,
    )


async def _drop_schedule(
    client: Client, sessions: SessionFactory, connector_id: uuid.UUID, task_queue: str
) -> None:
    async with sessions() as session:
        connector = await session.get(Connector, connector_id)
    assert connector is not None and connector.status is ConnectorStatus.DISABLED
    await apply_connector_schedule(client, connector, task_queue)


def _say_counts(title: str, result: OrderSyncResult) -> None:
    for stream, c in sorted(result.counts.items()):
        print(
            f"   {title}, {stream.value}: {c.fetched} fetched, {c.inserted} inserted, "
            f"{c.updated} updated, {c.unchanged} unchanged"
        )
    whole = total(result.counts)
    print(f"   {title}: {result.status.value} in {result.windows} windows, {whole.fetched} read")


def _say_report(result: ReportResult) -> None:
    report = result.report
    print(f"   report {report.first_day} .. {report.last_day} ({report.timezone}):")
    for d in report.daily:
        print(
            f"     {d.day}: {d.orders} orders, gross {format_money(d.gross_cents, d.currency)}, "
            f"refunds {format_money(d.refunded_cents, d.currency)}, "
            f"net {format_money(d.net_cents, d.currency)}"
        )
    channels = ", ".join(
        f"{c.channel} {format_money(c.net_cents, c.currency)}" for c in report.by_channel
    )
    print(f"     by channel: {channels}")
    if report.top_customers:
        best = report.top_customers[0]
        print(
            f"     top customer: {best.name or best.email or best.customer_id}, "
            f"{best.orders} orders, {format_money(best.net_cents, best.currency)}"
        )
    print(
        f"     repeat-purchase rate {report.repeat_purchase_rate:.0%} "
        f"of {report.customers} customers"
    )
