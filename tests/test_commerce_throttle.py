"""A rate-limited shop: the client waits as Shopify's cost extensions say, never calls while
the bucket cannot cover the query, and survives forced throttling (200 + THROTTLED, 429 +
Retry-After) without the sync failing or writing anything twice."""

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from temporalio.client import Client

from activities.shopify import SHOPIFY_API_VERSION, Bucket, ShopifyClient, ShopifyUnavailable
from models.commerce import ModuleExecutionStatus, SyncStream
from models.db import SessionFactory
from scripts.shopify_stand_in import LeakyBucket, ShopifyStandIn
from tests.commerce_support import TOKEN, commerce_settings, connect_shop, orders_of, sync
from tests.workers import running_workers

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_small_bucket_is_waited_for_and_never_overdrawn(
    client: Client, sessions: SessionFactory, task_queue: str, tmp_path: Path, shop: ShopifyStandIn
) -> None:
    # Every orders page asks 842 points of a 1000-point bucket restored at 400 a second.
    shop.bucket = LeakyBucket(maximum=1000, restore_rate=400, available=1000)
    shop.seed(orders=200, customers=10)
    settings = commerce_settings(task_queue, tmp_path, sync_window_hours=24 * 30)
    connected = await connect_shop(sessions, settings, client, shop)
    async with running_workers(client, sessions, settings):
        result = await sync(client, connected.connector.id, task_queue)

    assert result.status is ModuleExecutionStatus.SUCCEEDED
    assert len(await orders_of(sessions, connected.tenant.id)) == 200
    assert shop.uncovered_calls == 0
    assert shop.throttled == 0


async def test_forced_throttling_both_ways_is_waited_out_not_failed(
    client: Client, sessions: SessionFactory, task_queue: str, tmp_path: Path, shop: ShopifyStandIn
) -> None:
    shop.seed(orders=50, customers=5)
    settings = commerce_settings(task_queue, tmp_path, sync_window_hours=24 * 30)
    connected = await connect_shop(sessions, settings, client, shop)
    shop.retry_after_seconds = 1.0
    pages = 0

    def throttle_midway(stream: str, variables: dict[str, object]) -> None:
        nonlocal pages
        pages += 1
        if pages == 2:
            shop.throttle_mode, shop.throttle_next = "429", 2
        if pages == 3:
            shop.throttle_mode, shop.throttle_next = "graphql", 3

    # Pages: customers, orders 1 (then two 429s), orders 2 (then three THROTTLED), orders 3.
    shop.before_page = throttle_midway
    async with running_workers(client, sessions, settings):
        result = await sync(client, connected.connector.id, task_queue)

    assert result.status is ModuleExecutionStatus.SUCCEEDED
    assert shop.throttled == 5
    assert result.counts[SyncStream.ORDERS].inserted == 50
    assert len(await orders_of(sessions, connected.tenant.id)) == 50


async def test_the_client_waits_what_the_throttle_status_says(shop: ShopifyStandIn) -> None:
    """(requested - available) / restoreRate, computed before the call, on a fake clock."""
    shop.seed(orders=30, customers=2)
    slept: list[float] = []
    now = [0.0]
    shop.bucket = LeakyBucket(maximum=1000, restore_rate=50, available=1000, clock=lambda: now[0])

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds
        await asyncio.sleep(0)

    async with httpx.AsyncClient() as http:
        shopify = ShopifyClient(
            http,
            shop_url=shop.url,
            access_token=TOKEN,
            api_version=SHOPIFY_API_VERSION,
            bucket=Bucket(),
            sleep=sleep,
            clock=lambda: now[0],
        )
        end = datetime.now(UTC) + timedelta(seconds=1)
        async for _ in shopify.pages("orders", end - timedelta(days=400), end):
            pass
    # Page 1 leaves 1000 - 452 = 548 points (its actual cost: 15 orders of 2 line items,
    # 2 + 15 x (20 + 2 + 2 x 4)); page 2 asks 932 (2 + 15 x 62, room for 10 line items each):
    # (932 - 548) / 50 = 7.68 s on the fake clock.
    assert sum(slept) == pytest.approx((932 - 548) / 50, abs=0.01)
    assert shop.uncovered_calls == 0


async def test_a_throttle_that_never_ends_is_a_retryable_failure(shop: ShopifyStandIn) -> None:
    shop.throttle_mode, shop.throttle_next = "429", 10**6
    shop.retry_after_seconds = 400

    async def sleep(seconds: float) -> None:
        await asyncio.sleep(0)

    async with httpx.AsyncClient() as http:
        shopify = ShopifyClient(
            http,
            shop_url=shop.url,
            access_token=TOKEN,
            api_version=SHOPIFY_API_VERSION,
            sleep=sleep,
        )
        with pytest.raises(ShopifyUnavailable, match="stayed throttled"):
            await shopify.shop()
