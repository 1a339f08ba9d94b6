"""Bench of the Shopify order sync: N orders (BENCH_ORDERS, default 20,000) from the local
Shopify stand-in into PostgreSQL through the real OrderSyncWorkflow (GraphQL pages over HTTP,
windows, checkpoints, idempotent upserts), and in the same run a baseline of the same order rows
upserted by raw asyncpg (`INSERT ... ON CONFLICT DO UPDATE`, executemany, no HTTP, no Temporal).

The settings are a user's defaults: a first sync reads the orders by one Bulk Operation, later
ones page in windows bounded by volume. The stand-in's bucket is unlimited for that comparison:
the figure is this pipeline's cost, not Shopify's rate limit. Then a first sync of
BENCH_BULK_ORDERS (100,000; 0 skips it) from a stand-in on the standard plan's bucket (2,000
points restoring 100 a second), timed. The last line is one JSON object: `orders`, orders/s of
both, `sync_vs_raw_ratio`, `bulk_first_sync_orders`, `bulk_first_sync_s`.
Tunable: BENCH_ORDERS, BENCH_BULK_ORDERS, BENCH_WINDOW_DAYS (default 0: no time bound).
"""

import asyncio
import json
import multiprocessing
import os
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from pydantic import SecretStr

from activities.commerce_sync import customer_row, order_row
from activities.connectors import ConnectorService
from activities.credentials import KeyRing
from client.connection import connect
from infra.entry_points import run_entry_point
from infra.settings import Settings
from models.db import asyncpg_dsn, create_engine, session_factory
from models.projects import ConnectorKind
from models.tenancy import Tenant
from scripts.shopify_stand_in import LeakyBucket, ShopifyStandIn
from workers.devstack import embedded_stack
from workers.registry import Dependencies, credential_store
from workers.worker import build_workers, run_until_stopped
from workflows.commerce import OrderSyncWorkflow
from workflows.contracts.commerce import OrderSyncInput
from workflows.contracts.ids import order_sync_workflow_id

ORDERS = int(os.environ.get("BENCH_ORDERS", "20000"))
# A first sync by Bulk Operation of this many orders on the standard plan's bucket (0: none).
BULK_ORDERS = int(os.environ.get("BENCH_BULK_ORDERS", "100000"))
WINDOW_DAYS = float(os.environ.get("BENCH_WINDOW_DAYS", "0"))
TOKEN = "shpat_bench_token"
ORDER_COLUMNS = (
    "id", "tenant_id", "connector_id", "customer_id", "source", "external_id", "name", "channel",
    "status", "subtotal_cents", "discount_cents", "refunded_cents", "total_cents", "net_cents",
    "currency", "presentment_currency", "presentment_total_cents", "test", "refunds",
    "line_items", "placed_at", "cancelled_at", "source_updated_at",
)  # fmt: skip
JSON_COLUMNS = ("line_items", "refunds")
RAW_UPSERT = f"""
INSERT INTO orders ({", ".join(ORDER_COLUMNS)}, created_at, updated_at)
VALUES ({", ".join(f"${i + 1}" for i in range(len(ORDER_COLUMNS)))}, now(), now())
ON CONFLICT (tenant_id, source, external_id) DO UPDATE SET
  {", ".join(f"{c} = excluded.{c}" for c in ORDER_COLUMNS[2:] if c != "external_id")},
  updated_at = now()
WHERE orders.source_updated_at IS NULL OR orders.source_updated_at < excluded.source_updated_at
"""


def say(text: str) -> None:
    print(text, flush=True)


async def bench(settings: Settings) -> int:
    if settings.credential_keys is None:
        # A throwaway key ring: the bench's connector lives only in its own tenant.
        settings = settings.model_copy(
            update={"credential_keys": SecretStr(f"bench:{KeyRing.new_key()}")}
        )
    spacing_days = ORDERS * 37 / 60 / 24
    # The settings a user gets (windows bounded by volume), unless BENCH_WINDOW_DAYS asks
    # for time-bounded windows.
    update: dict[str, Any] = {"log_level": "WARNING"}
    if WINDOW_DAYS:
        update["sync_window_hours"] = WINDOW_DAYS * 24
    if spacing_days + 30 > settings.sync_initial_days:
        update["sync_initial_days"] = int(spacing_days) + 30
    settings = settings.model_copy(update=update)
    # The same shop twice, deterministically: served from its own process (as Shopify is, so
    # the worker does not share its interpreter with the server), and here for the baseline.
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=spacing_days + 1)
    shop = seeded_shop(start)
    ready = multiprocessing.get_context("spawn").Queue()
    server = multiprocessing.get_context("spawn").Process(
        target=serve_shop, args=(start, ready), daemon=True
    )
    server.start()
    shop_url = ready.get(timeout=300)
    async with embedded_stack(settings) as stack:
        settings = stack.settings
        client = await connect(settings)
        engine = create_engine(stack.database_url, pool_size=settings.db_pool_size)
        sessions = session_factory(engine)
        deps = Dependencies(settings=settings, sessions=sessions, client=client)
        stop = asyncio.Event()
        serving = asyncio.create_task(run_until_stopped(build_workers(client, deps), stop))
        try:
            figures = await measure(settings, deps, shop, shop_url, stack.database_url)
            if BULK_ORDERS:
                figures.update(await measure_bulk(settings, deps, start))
        finally:
            stop.set()
            await serving
            await engine.dispose()
            server.terminate()
    print(json.dumps(figures), flush=True)
    return 0


def seeded_shop(start: datetime, orders: int = 0, standard_plan: bool = False) -> ShopifyStandIn:
    shop = ShopifyStandIn(token=TOKEN)
    if not standard_plan:
        shop.bucket = LeakyBucket(maximum=1e12, restore_rate=1e12, available=1e12)
    orders = orders or ORDERS
    shop.seed(orders=orders, customers=max(20, orders // 10), start=start)
    return shop


def serve_shop(start: datetime, ready: Any, orders: int = 0, standard_plan: bool = False) -> None:
    shop = seeded_shop(start, orders, standard_plan)
    ready.put(shop.start())
    threading.Event().wait()


async def measure_bulk(settings: Settings, deps: Dependencies, start: datetime) -> dict[str, Any]:
    """A first sync of BULK_ORDERS orders from a shop on the standard plan's bucket (2,000
    points, 100 a second): customers by pages under the limit, orders by one Bulk Operation."""
    ready = multiprocessing.get_context("spawn").Queue()
    # The seed's orders are 37 minutes apart, ending an hour ago.
    spacing_start = datetime.now(UTC).replace(microsecond=0) - timedelta(
        minutes=BULK_ORDERS * 37 + 60
    )
    server = multiprocessing.get_context("spawn").Process(
        target=serve_shop, args=(spacing_start, ready, BULK_ORDERS, True), daemon=True
    )
    server.start()
    try:
        shop_url = ready.get(timeout=900)
        store, connections = credential_store(deps)
        service = ConnectorService(deps.sessions, store, connections)
        tenant = await new_tenant(deps, "Bench Bulk")
        connector = await service.create(
            tenant_id=tenant.id,
            kind=ConnectorKind.SHOPIFY,
            config={"shop_url": shop_url},
            credentials={"access_token": TOKEN},
        )
        connector = await service.test(connector.id)
        say(f"stand-in on the standard plan's bucket: {BULK_ORDERS} orders")
        started = time.perf_counter()
        result = await deps.client.execute_workflow(
            OrderSyncWorkflow.run,
            OrderSyncInput(connector_id=connector.id),
            id=order_sync_workflow_id(connector.id),
            task_queue=settings.task_queue,
        )
        bulk_s = time.perf_counter() - started
    finally:
        server.terminate()
    inserted = result.counts["orders"].inserted  # type: ignore[index]
    if inserted != BULK_ORDERS:
        raise RuntimeError(f"the bulk sync inserted {inserted} orders, not {BULK_ORDERS}")
    say(f"bulk first sync: {BULK_ORDERS} orders in {bulk_s:.1f}s")
    return {"bulk_first_sync_orders": BULK_ORDERS, "bulk_first_sync_s": round(bulk_s, 1)}


async def new_tenant(deps: Dependencies, name: str) -> Tenant:
    tenant = Tenant(name=name, slug=f"bench-{uuid.uuid4().hex[:8]}")
    async with deps.sessions() as session:
        session.add(tenant)
        await session.commit()
    return tenant


async def measure(
    settings: Settings,
    deps: Dependencies,
    shop: ShopifyStandIn,
    shop_url: str,
    database_url: str,
) -> dict[str, Any]:
    store, connections = credential_store(deps)
    service = ConnectorService(deps.sessions, store, connections)
    synced = await new_tenant(deps, "Bench Sync")
    connector = await service.create(
        tenant_id=synced.id,
        kind=ConnectorKind.SHOPIFY,
        config={"shop_url": shop_url},
        credentials={"access_token": TOKEN},
    )
    connector = await service.test(connector.id)
    say(f"local Shopify stand-in (not Shopify) at {shop_url}: {ORDERS} orders, unlimited bucket")

    started = time.perf_counter()
    result = await deps.client.execute_workflow(
        OrderSyncWorkflow.run,
        OrderSyncInput(connector_id=connector.id),
        id=order_sync_workflow_id(connector.id),
        task_queue=settings.task_queue,
        execution_timeout=timedelta(hours=1),
    )
    sync_s = time.perf_counter() - started
    inserted = result.counts["orders"].inserted  # type: ignore[index]
    if inserted != ORDERS:
        raise RuntimeError(f"the sync inserted {inserted} orders, not {ORDERS}")
    say(f"sync: {ORDERS} orders in {sync_s:.2f}s over {result.windows} windows")

    # The same rows, mapped before the clock starts, upserted by raw asyncpg.
    raw_tenant = await new_tenant(deps, "Bench Raw")
    nodes = [order.node(10) for order in shop.orders.values()]
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        customers = {}
        for node in nodes:
            if node["customer"]:
                row = customer_row(raw_tenant.id, node["customer"])
                customers[row["external_id"]] = row
        await connection.executemany(
            "INSERT INTO customers (id, tenant_id, source, external_id, email, name, phone, "
            "source_updated_at, created_at, updated_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now(), now())",
            [tuple(r.values()) for r in customers.values()],
        )
        # The customers exist, as they do after the sync's customers stream.
        ids = {r["external_id"]: r["id"] for r in customers.values()}
        rows = [
            tuple(json.dumps(row[c]) if c in JSON_COLUMNS else row[c] for c in ORDER_COLUMNS)
            for row in (order_row(raw_tenant.id, connector.id, n, ids) for n in nodes)
        ]
        started = time.perf_counter()
        async with connection.transaction():
            await connection.executemany(RAW_UPSERT, rows)
        raw_s = time.perf_counter() - started
    finally:
        await connection.close()
    say(f"raw asyncpg upserts: {ORDERS} orders in {raw_s:.2f}s")
    sync_rate, raw_rate = ORDERS / sync_s, ORDERS / raw_s
    return {
        "orders": ORDERS,
        "sync_orders_per_s": round(sync_rate, 1),
        "raw_upsert_orders_per_s": round(raw_rate, 1),
        "sync_vs_raw_ratio": round(sync_rate / raw_rate, 3),
        "windows": result.windows,
        "database": "pgserver (embedded)"
        if settings.embedded_database
        else "configured PostgreSQL",
    }


def main() -> None:
    os.environ.setdefault("CHANGEFLOW_LOG_LEVEL", "WARNING")
    run_entry_point(bench, prog="bench-sync")


if __name__ == "__main__":
    main()
