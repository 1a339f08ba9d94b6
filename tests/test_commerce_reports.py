"""Reports computed by ReportWorkflow from the synced rows match figures computed here,
independently, from the shop's own data; another tenant's rows never count."""

from collections import defaultdict
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from temporalio.client import Client, WorkflowFailureError

from activities.reports import daily_revenue_csv
from models.commerce import ModuleExecutionStatus, ModuleKind
from models.db import SessionFactory
from scripts.shopify_stand_in import SHOP_CURRENCY, ShopifyStandIn, ShopOrder
from tests.commerce_support import (
    TOKEN,
    cents,
    commerce_settings,
    connect_shop,
    executions_of,
    on_plus_plan,
    sync,
)
from tests.factories import make_tenant
from tests.workers import running_workers
from workflows.commerce import ReportWorkflow
from workflows.contracts.commerce import ReportInput, ReportResult
from workflows.contracts.errors import ErrorType, error_type
from workflows.contracts.ids import report_workflow_id

pytestmark = pytest.mark.asyncio(loop_scope="session")

SHOP_ZONE = ZoneInfo("America/New_York")  # what the stand-in says of itself


@pytest.fixture
def shops() -> Iterator[tuple[ShopifyStandIn, ShopifyStandIn]]:
    mine = on_plus_plan(ShopifyStandIn(token=TOKEN, seed=3))
    theirs = on_plus_plan(ShopifyStandIn(token=TOKEN, seed=4))
    mine.start()
    theirs.start()
    yield mine, theirs
    mine.stop()
    theirs.stop()


def local_day(order: ShopOrder) -> date:
    return order.created_at.astimezone(SHOP_ZONE).date()


async def report(client: Client, task_queue: str, request: ReportInput) -> ReportResult:
    assert request.first_day and request.last_day
    return await client.execute_workflow(
        ReportWorkflow.run,
        request,
        id=report_workflow_id(request.tenant_id, request.first_day, request.last_day),
        task_queue=task_queue,
    )


async def test_a_report_matches_the_shops_figures_and_ignores_another_tenant(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    tmp_path: Path,
    shops: tuple[ShopifyStandIn, ShopifyStandIn],
) -> None:
    mine, theirs = shops
    mine.seed(orders=150, customers=15)
    theirs.seed(orders=80, customers=6)
    settings = commerce_settings(task_queue, tmp_path)
    me = await connect_shop(sessions, settings, client, mine)
    other = await connect_shop(
        sessions, settings, client, theirs, tenant=await make_tenant(sessions, name="Other")
    )
    days = sorted({local_day(o) for o in mine.orders.values()})
    first_day, last_day = days[1], days[-2]
    async with running_workers(client, sessions, settings):
        await sync(client, me.connector.id, task_queue)
        await sync(client, other.connector.id, task_queue)
        result = await report(
            client,
            task_queue,
            ReportInput(tenant_id=me.tenant.id, first_day=first_day, last_day=last_day),
        )
    got = result.report
    assert got.timezone == "America/New_York"

    # Shopify's definitions: amounts in the shop's currency, test orders are not sales, and a
    # refund counts on the day it was made, whatever day its order was placed.
    assert any(o.test for o in mine.orders.values()), "the seed has test orders"
    assert any(
        local_day(o) != at.astimezone(SHOP_ZONE).date()
        for o in mine.orders.values()
        for at, _ in o.refunds
    ), "the seed has refunds made on a later day"
    sales = [o for o in mine.orders.values() if not o.cancelled_at and not o.test]
    in_period = [o for o in sales if first_day <= local_day(o) <= last_day]
    usd = SHOP_CURRENCY
    daily: dict[tuple[date, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for o in in_period:
        row = daily[(local_day(o), usd)]
        total = cents(o.shop(o.total), usd)
        for i, value in enumerate((1, total, cents(o.shop(o.discount), usd), 0, total)):
            row[i] += value
    for o in sales:
        for at, amount in o.refunds:
            if first_day <= (day := at.astimezone(SHOP_ZONE).date()) <= last_day:
                refund = cents(o.shop(amount), usd)
                daily[(day, usd)][3] += refund
                daily[(day, usd)][4] -= refund
    assert {
        (d.day, d.currency): [
            d.orders,
            d.gross_cents,
            d.discount_cents,
            d.refunded_cents,
            d.net_cents,
        ]
        for d in got.daily
    } == dict(daily)

    def net(o: ShopOrder) -> int:
        return cents(o.shop(o.total), usd) - cents(o.shop_refunded, usd)

    channels: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for o in in_period:
        channels[(o.channel, usd)][0] += 1
        channels[(o.channel, usd)][1] += net(o)
    assert {(c.channel, c.currency): [c.orders, c.net_cents] for c in got.by_channel} == dict(
        channels
    )

    first_order: dict[str, str] = {}
    for o in sorted(sales, key=lambda o: (o.created_at, o.id)):
        if o.customer:
            first_order.setdefault(o.customer.id, o.id)
    averages: dict[str, dict[str, list[int]]] = defaultdict(lambda: {"new": [], "returning": []})
    for o in in_period:
        new = o.customer is None or first_order[o.customer.id] == o.id
        averages[usd]["new" if new else "returning"].append(cents(o.shop(o.total), usd))

    def mean(values: list[int]) -> int:
        return round(sum(values) / len(values)) if values else 0

    assert {
        a.currency: (
            a.new_customer_orders,
            a.new_customer_aov_cents,
            a.returning_customer_orders,
            a.returning_customer_aov_cents,
        )
        for a in got.average_order_value
    } == {
        currency: (len(v["new"]), mean(v["new"]), len(v["returning"]), mean(v["returning"]))
        for currency, v in averages.items()
    }

    spend: dict[tuple[str, str], int] = defaultdict(int)
    for o in in_period:
        if o.customer:
            spend[(o.customer.id, usd)] += net(o)
    assert [t.net_cents for t in got.top_customers] == sorted(spend.values(), reverse=True)[:10]

    buyers = {o.customer.id for o in in_period if o.customer}

    def orders_up_to_the_end(customer_id: str) -> int:
        return sum(
            1
            for o in sales
            if o.customer and o.customer.id == customer_id and local_day(o) <= last_day
        )

    repeaters = {c for c in buyers if orders_up_to_the_end(c) >= 2}
    assert got.customers == len(buyers)
    assert got.repeat_purchase_rate == pytest.approx(len(repeaters) / len(buyers))

    # Stored with its module run; the CSV carries the same figures.
    reports = [
        e for e in await executions_of(sessions, me.tenant.id) if e.module is ModuleKind.REPORT
    ]
    assert [e.status for e in reports] == [ModuleExecutionStatus.SUCCEEDED]
    assert reports[0].meta["report"]["daily"] == [d.model_dump(mode="json") for d in got.daily]
    lines = daily_revenue_csv(got).strip().splitlines()
    assert lines[0] == "day,currency,orders,gross,discounts,refunds,net"
    assert len(lines) == len(got.daily) + 1
    assert not [
        e for e in await executions_of(sessions, other.tenant.id) if e.module is ModuleKind.REPORT
    ]


async def test_a_report_of_a_backward_period_or_unknown_zone_is_refused(
    client: Client, sessions: SessionFactory, task_queue: str, tmp_path: Path
) -> None:
    tenant = await make_tenant(sessions)
    settings = commerce_settings(task_queue, tmp_path)
    async with running_workers(client, sessions, settings):
        for request in (
            ReportInput(tenant_id=tenant.id, first_day=date(2026, 3, 2), last_day=date(2026, 3, 1)),
            ReportInput(
                tenant_id=tenant.id,
                first_day=date(2026, 3, 1),
                last_day=date(2026, 3, 2),
                timezone="Mars/Olympus_Mons",
            ),
        ):
            with pytest.raises(WorkflowFailureError) as failure:
                await report(client, task_queue, request)
            assert error_type(failure.value) == ErrorType.INVALID_REPORT_PERIOD
    statuses = [e.status for e in await executions_of(sessions, tenant.id)]
    assert statuses == [ModuleExecutionStatus.FAILED] * 2
