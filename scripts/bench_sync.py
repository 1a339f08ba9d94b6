"""Bench of the Shopify order sync: N orders (BENCH_ORDERS, default 20,000) from the local
Shopify stand-in into PostgreSQL through the real OrderSyncWorkflow (a Bulk Operation per stream
over HTTP, batches committed with checkpoints, idempotent upserts), and in the same run a
baseline doing the same work straight (raw_sync): the same stand-in's Bulk Operations, the same
JSONL read and parsed, the same rows (the product's row functions), COPY and one upsert per
table in one transaction; no Temporal, no batches, no checkpoints. Both include the stand-in
building its result files (the outside world's time; the baseline's share is printed as
raw_wait_s), so the ratio is what the pipeline costs over the least that does the same job.

The settings are a user's defaults: a first sync reads each stream by one Bulk Operation, later
ones page in windows bounded by volume. The stand-in's bucket is unlimited for that comparison:
the figure is this pipeline's cost, not Shopify's rate limit. Then a first sync of
BENCH_BULK_ORDERS (100,000; 0 skips it) from a stand-in on the standard plan's bucket (2,000
points restoring 100 a second), timed. The last line is one JSON object: what is `compared`,
the seconds and orders/s of both, the baseline's phases, `sync_vs_raw_ratio`,
`sync_vs_upserts_only_ratio` (the sync against the baseline's upserts alone, as earlier runs
compared it), `bulk_first_sync_orders`, `bulk_first_sync_s`.
The sync and the baseline run BENCH_ROUNDS times (3) alternately; the figures are medians and
`rounds` lists each round's seconds (sync, baseline).
Tunable: BENCH_ORDERS, BENCH_BULK_ORDERS, BENCH_ROUNDS, BENCH_WINDOW_DAYS (default 0: no time
bound).
"""

import asyncio
import json
import multiprocessing
import os
import statistics
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
from pydantic import SecretStr

from activities.commerce_sync import customer_row, order_row
from activities.connectors import ConnectorService
from activities.credentials import KeyRing
from activities.shopify import BULK_RUN_QUERY, CURRENT_BULK_QUERY, bulk_query
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
# Rounds of the sync and the baseline, alternated; the figures are their medians.
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
TOKEN = "shpat_bench_token"
ORDER_COLUMNS = (
    "id", "tenant_id", "connector_id", "customer_id", "source", "external_id", "name", "channel",
    "status", "subtotal_cents", "discount_cents", "refunded_cents", "total_cents", "net_cents",
    "currency", "presentment_currency", "presentment_total_cents", "test", "refunds",
    "line_items", "placed_at", "cancelled_at", "source_updated_at",
)  # fmt: skip
CUSTOMER_COLUMNS = (
    "id", "tenant_id", "source", "external_id", "email", "name", "phone", "source_updated_at",
)  # fmt: skip
JSON_COLUMNS = ("line_items", "refunds")


def copied_upsert(table: str, columns: tuple[str, ...]) -> str:
    """The rows COPYed into the temporary table raw_<table> upserted into <table> (a stored
    row replaced only by a strictly newer one, as the sync does)."""
    names = ", ".join(columns)
    replaced = [c for c in columns if c not in ("id", "tenant_id", "source", "external_id")]
    return f"""
INSERT INTO {table} ({names}, created_at, updated_at)
SELECT {names}, now(), now() FROM raw_{table}
ON CONFLICT (tenant_id, source, external_id) DO UPDATE SET
  {", ".join(f"{c} = excluded.{c}" for c in replaced)}, updated_at = now()
WHERE {table}.source_updated_at IS NULL OR {table}.source_updated_at < excluded.source_updated_at
"""


COMPARED = (
    "the sync (OrderSyncWorkflow with a user's defaults: a Bulk Operation per stream, batches "
    "with checkpoints) against the same work done straight (raw_sync: the same stand-in's Bulk "
    "Operations, polled every 50 ms, read whole, mapped by the same row functions, COPY into "
    "temporary tables and one INSERT ... ON CONFLICT per table, in one transaction); both "
    "include the stand-in building its JSONL files"
)


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
    # The shop, served from its own process (as Shopify is, so the worker does not share its
    # interpreter with the server).
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=spacing_days + 1)
    database = "pgserver (embedded)" if settings.embedded_database else "configured PostgreSQL"
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
            figures = await measure(settings, deps, shop_url, stack.database_url)
            figures["database"] = database
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
    points, 100 a second): customers and orders by one Bulk Operation each."""
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
    shop_url: str,
    database_url: str,
) -> dict[str, Any]:
    """ROUNDS rounds of a first sync and the baseline, one after the other (on a shared
    machine the load changes within seconds); medians of each."""
    say(f"local Shopify stand-in (not Shopify) at {shop_url}: {ORDERS} orders, unlimited bucket")
    syncs: list[float] = []
    raws: list[dict[str, float]] = []
    windows = 0
    for number in range(1, ROUNDS + 1):
        sync_s, windows, connector_id = await first_sync(settings, deps, shop_url)
        syncs.append(sync_s)
        say(f"round {number}: sync of {ORDERS} orders in {sync_s:.2f}s over {windows} windows")
        # The baseline: the same work done straight, from the same stand-in, another tenant.
        raw_tenant = await new_tenant(deps, "Bench Raw")
        raw = await raw_sync(
            shop_url, settings.shopify_api_version, database_url, raw_tenant.id, connector_id
        )
        raws.append(raw)
        say(
            f"round {number}: raw {ORDERS} orders in {raw['raw_s']:.2f}s (waiting for the "
            f"stand-in's files {raw['raw_wait_s']:.2f}s, download and parse "
            f"{raw['raw_read_s']:.2f}s, map {raw['raw_map_s']:.2f}s, upserts "
            f"{raw['raw_upsert_s']:.2f}s)"
        )
    sync_s = statistics.median(syncs)
    raw = {name: statistics.median(r[name] for r in raws) for name in raws[0]}
    sync_rate, raw_rate = ORDERS / sync_s, ORDERS / raw["raw_s"]
    return {
        "orders": ORDERS,
        "compared": COMPARED,
        "rounds": [[round(s, 2), round(r["raw_s"], 2)] for s, r in zip(syncs, raws, strict=True)],
        "sync_s": round(sync_s, 2),
        "sync_orders_per_s": round(sync_rate, 1),
        **{name: round(value, 2) for name, value in raw.items()},
        "raw_orders_per_s": round(raw_rate, 1),
        "sync_vs_raw_ratio": round(sync_rate / raw_rate, 3),
        # The figure earlier runs printed: the sync against the upserts alone (rows mapped
        # before the clock, no HTTP, no JSON, no stand-in).
        "sync_vs_upserts_only_ratio": round(raw["raw_upsert_s"] / sync_s, 3),
        "windows": windows,
    }


async def first_sync(
    settings: Settings, deps: Dependencies, shop_url: str
) -> tuple[float, int, uuid.UUID]:
    """A new tenant's connector to the shop, and its first sync: seconds, windows, connector."""
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
    return sync_s, result.windows, connector.id


async def raw_sync(
    shop_url: str,
    api_version: str,
    database_url: str,
    tenant_id: uuid.UUID,
    connector_id: uuid.UUID,
) -> dict[str, float]:
    """The sync's work with nothing around it: one Bulk Operation per stream on the same
    stand-in (customers, then orders: it runs one at a time), polled every 50 ms, each result
    read whole and parsed, mapped by the product's own row functions (the same rows), COPYed
    into temporary tables and upserted by one INSERT ... ON CONFLICT per table, in one
    transaction. No Temporal, no batches, no checkpoints, no
    counts. Seconds in all and by phase."""
    phases = {"raw_wait_s": 0.0, "raw_read_s": 0.0, "raw_map_s": 0.0, "raw_upsert_s": 0.0}
    url = f"{shop_url}/admin/api/{api_version}/graphql.json"
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    started = time.perf_counter()
    try:
        async with httpx.AsyncClient(
            headers={"X-Shopify-Access-Token": TOKEN}, timeout=300
        ) as http:

            async def graphql(document: str, variables: dict[str, Any]) -> dict[str, Any]:
                answer = await http.post(url, json={"query": document, "variables": variables})
                answer.raise_for_status()
                return dict(answer.json()["data"])

            async def records(stream: str) -> list[dict[str, Any]]:
                """The stream's records by one Bulk Operation, each order with its items."""
                clock = time.perf_counter()
                until = datetime.now(UTC) + timedelta(days=1)
                run = await graphql(
                    BULK_RUN_QUERY,
                    {"query": bulk_query(stream, until - timedelta(days=36500), until)},
                )
                operation = run["bulkOperationRunQuery"]["bulkOperation"]["id"]
                while True:
                    current = (await graphql(CURRENT_BULK_QUERY, {}))["currentBulkOperation"]
                    if current["id"] == operation and current["status"] == "COMPLETED":
                        break
                    await asyncio.sleep(0.05)
                phases["raw_wait_s"] += time.perf_counter() - clock
                clock = time.perf_counter()
                body = (await http.get(current["url"])).content
                found: list[dict[str, Any]] = []
                for line in body.splitlines():
                    record = json.loads(line)
                    if "__parentId" in record:
                        found[-1]["lineItems"]["nodes"].append(record)
                    else:
                        if stream == "orders":
                            record["lineItems"] = {"nodes": []}
                        found.append(record)
                phases["raw_read_s"] += time.perf_counter() - clock
                return found

            customer_nodes = await records("customers")
            order_nodes = await records("orders")
        clock = time.perf_counter()
        customers = [customer_row(tenant_id, node) for node in customer_nodes]
        ids = {row["external_id"]: row["id"] for row in customers}
        orders = [
            tuple(json.dumps(row[c]) if c in JSON_COLUMNS else row[c] for c in ORDER_COLUMNS)
            for row in (order_row(tenant_id, connector_id, node, ids) for node in order_nodes)
        ]
        phases["raw_map_s"] += time.perf_counter() - clock
        clock = time.perf_counter()
        async with connection.transaction():
            for table, columns, rows in (
                ("customers", CUSTOMER_COLUMNS, [tuple(r.values()) for r in customers]),
                ("orders", ORDER_COLUMNS, orders),
            ):
                await connection.execute(
                    f"CREATE TEMPORARY TABLE raw_{table} ON COMMIT DROP AS "
                    f"SELECT {', '.join(columns)} FROM {table} WITH NO DATA"
                )
                await connection.copy_records_to_table(
                    f"raw_{table}", records=rows, columns=columns
                )
                await connection.execute(copied_upsert(table, columns))
        phases["raw_upsert_s"] += time.perf_counter() - clock
    finally:
        await connection.close()
    if len(orders) != ORDERS:
        raise RuntimeError(f"the raw baseline read {len(orders)} orders, not {ORDERS}")
    return {"raw_s": time.perf_counter() - started, **phases}


def main() -> None:
    os.environ.setdefault("CHANGEFLOW_LOG_LEVEL", "WARNING")
    run_entry_point(bench, prog="bench-sync")


if __name__ == "__main__":
    main()
