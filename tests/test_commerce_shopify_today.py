"""Commerce against Shopify as it is documented for 2026-10 (scripts/shopify_facts.md), run as a
merchant runs it: a supported API version asked for and a shop that serves another reported,
protected customer data withheld without failing the sync, line items past the first page,
money in the shop's currency with the order's own beside it, webhook subscriptions made by
`connector test`, a connector whose syncs fail saying why, and the privacy and deletion
webhooks removing what they name and recording that they did."""

import uuid
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from temporalio.client import Client

from activities.shopify import SHOPIFY_API_VERSION
from infra.settings import Settings
from models.commerce import ModuleExecutionStatus, ModuleKind
from models.db import SessionFactory
from scripts.shopify_stand_in import (
    SHOP_CURRENCY,
    SUPPORTED_VERSIONS,
    ShopifyStandIn,
    WebhookSender,
    customers_redact_payload,
    data_request_payload,
    order_delete_payload,
    shop_redact_payload,
)
from tests.cli_support import changeflow, ok
from tests.commerce_support import (
    TOKEN,
    cents,
    commerce_settings,
    connect_shop,
    connector_row,
    customers_of,
    executions_of,
    orders_of,
    sync,
)
from tests.workers import running_workers
from workers.registry import Dependencies
from workers.webhooks import shopify_webhooks, webhook_app

pytestmark = [
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.shop_seed(orders=30, customers=6),
]

PUBLIC_URL = "https://hooks.example.com"
WEBHOOK_SECRET = "whsec_0f1e2d3c4b5a69788796a5b4c3d2e1f0"


async def test_the_default_api_version_is_one_shopify_supports_in_december_2026() -> None:
    assert SHOPIFY_API_VERSION in SUPPORTED_VERSIONS
    assert Settings().shopify_api_version == SHOPIFY_API_VERSION


async def test_an_old_version_and_withheld_customer_data_are_reported_and_the_sync_completes(
    client: Client,
    sessions: SessionFactory,
    env: dict[str, str],
    task_queue: str,
    tmp_path: Path,
    shop: ShopifyStandIn,
) -> None:
    # The shop's app lacks protected customer data access (level 2): names, emails and phones
    # come back null with ACCESS_DENIED errors. The connector asks for an unsupported version.
    shop.protected_access = "level1"
    big = shop.add_order(
        currency="EUR", items=[(f"Sticker {i}", 1, Decimal("2.50")) for i in range(15)]
    )
    await shop.settle()
    settings = commerce_settings(task_queue, tmp_path, shopify_api_version="2025-07")
    keys = settings.credential_keys
    assert keys is not None
    env.update(
        CHANGEFLOW_CREDENTIAL_KEYS=keys.get_secret_value(),
        CHANGEFLOW_SHOPIFY_API_VERSION="2025-07",
        CHANGEFLOW_WEBHOOKS_PUBLIC_URL=PUBLIC_URL,
    )
    slug = (await ok(env, "tenant", "create", "Corner Shop", "--json")).json["slug"]
    created = (
        await ok({**env, "SHOPIFY_ACCESS_TOKEN": TOKEN}, "connector", "create", "-t", slug,
                 "--shop-url", shop.url, "--json")
    ).json  # fmt: skip
    connector_id = created["id"]
    endpoint = f"{PUBLIC_URL}/webhooks/shopify/{connector_id}"
    expected = {
        topic: endpoint
        for topic in (
            "ORDERS_CREATE",
            "ORDERS_UPDATED",
            "ORDERS_DELETE",
            "CUSTOMERS_UPDATE",
            "REFUNDS_CREATE",
            "APP_UNINSTALLED",
            "BULK_OPERATIONS_FINISH",
        )
    }
    assert created["webhook_subscriptions"] == expected
    assert shop.webhook_subscriptions == expected
    # Tested again: the subscriptions are checked, none is made twice.
    tested = await ok(env, "connector", "test", connector_id, "--json")
    assert tested.json["webhook_subscriptions"] == expected

    mismatches_before = REGISTRY.get_sample_value(
        "changeflow_shopify_api_version_mismatch_total", {"asked": "2025-07", "served": "2026-01"}
    )
    async with running_workers(client, sessions, settings):
        synced = (await ok(env, "connector", "sync", connector_id, "--json")).json
    assert synced["status"] == "succeeded"
    shown = await ok(env, "connector", "show", connector_id, "--json")
    human = await ok(env, "connector", "show", connector_id)

    # Every order stored, its customer linked without the withheld fields.
    tenant_id = uuid.UUID(shown.json["tenant_id"])
    orders = await orders_of(sessions, tenant_id)
    assert set(orders) == set(shop.orders)
    customers = await customers_of(sessions, tenant_id)
    assert customers and all(c.email is None and c.name == "" for c in customers.values())
    assert len(orders[big.id].line_items) == 15, "line items past the first page are read"
    assert orders[big.id].currency == SHOP_CURRENCY
    assert orders[big.id].total_cents == cents(big.shop(big.total), SHOP_CURRENCY)
    assert orders[big.id].presentment_currency == "EUR"
    assert orders[big.id].presentment_total_cents == cents(big.total, "EUR")
    assert shop.deprecated_uses == 0, "Customer.email and .phone are not asked for"

    last = shown.json["last_sync"]
    assert last["status"] == "succeeded"
    assert last["api_version"] == {"asked": "2025-07", "served": "2026-01"}
    assert {
        "customers.nodes.defaultEmailAddress",
        "orders.nodes.customer.firstName",
        "orders.nodes.customer.defaultEmailAddress",
    } <= set(last["withheld"])
    assert "Shopify served API version 2026-01, not 2025-07" in human.out
    assert "withheld by the shop" in human.out and "defaultEmailAddress" in human.out
    mismatches = REGISTRY.get_sample_value(
        "changeflow_shopify_api_version_mismatch_total", {"asked": "2025-07", "served": "2026-01"}
    )
    assert (mismatches or 0) > (mismatches_before or 0)


async def test_a_connector_whose_syncs_fail_shows_why(
    client: Client,
    sessions: SessionFactory,
    env: dict[str, str],
    task_queue: str,
    tmp_path: Path,
    shop: ShopifyStandIn,
) -> None:
    settings = commerce_settings(task_queue, tmp_path)
    keys = settings.credential_keys
    assert keys is not None
    env["CHANGEFLOW_CREDENTIAL_KEYS"] = keys.get_secret_value()
    slug = (await ok(env, "tenant", "create", "Corner Shop", "--json")).json["slug"]
    connector_id = (
        await ok({**env, "SHOPIFY_ACCESS_TOKEN": TOKEN}, "connector", "create", "-t", slug,
                 "--shop-url", shop.url, "--json")
    ).json["id"]  # fmt: skip
    shop.max_query_cost = 100  # every page of customers is refused by the shop
    async with running_workers(client, sessions, settings):
        failed = await changeflow(env, "connector", "sync", connector_id)
    assert failed.code != 0 and "exceeds the single query max cost" in failed.err
    shown = (await ok(env, "connector", "show", connector_id, "--json")).json
    assert shown["status"] == "active"
    assert shown["last_error"].startswith("sync failed: ")
    assert "exceeds the single query max cost" in shown["last_error"]
    assert shown["last_sync"]["status"] == "failed"
    [listed] = (await ok(env, "connector", "list", "-t", slug, "--json")).json
    assert listed["last_error"] == shown["last_error"]

    shop.max_query_cost = 1000
    async with running_workers(client, sessions, settings):
        await ok(env, "connector", "sync", connector_id)
    assert (await ok(env, "connector", "show", connector_id, "--json")).json["last_error"] is None


async def test_privacy_and_deletion_webhooks_remove_what_they_name_and_say_so(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    tmp_path: Path,
    shop: ShopifyStandIn,
) -> None:
    settings = commerce_settings(task_queue, tmp_path)
    connected = await connect_shop(
        sessions,
        settings,
        client,
        shop,
        credentials={"access_token": TOKEN, "webhook_secret": WEBHOOK_SECRET},
    )
    async with running_workers(client, sessions, settings):
        await sync(client, connected.connector.id, task_queue)
    app = webhook_app(
        shopify_webhooks(Dependencies(settings=settings, sessions=sessions, client=client)),
        max_body_bytes=settings.webhooks_max_body_bytes,
    )
    sender = WebhookSender(WEBHOOK_SECRET, transport=httpx.ASGITransport(app=app))
    url = f"http://webhooks.test/webhooks/shopify/{connected.connector.id}"
    tenant = connected.tenant.id

    person = next(c for c in shop.customers.values() if c.email)
    theirs = [o for o in shop.orders.values() if o.customer is person]
    assert theirs
    asked = await sender.send(url, "customers/data_request", data_request_payload(person, theirs))
    assert asked.status_code == 200 and asked.json()["outcome"] == "data_request_recorded"

    redacted = await sender.send(url, "customers/redact", customers_redact_payload(person, theirs))
    assert redacted.json()["outcome"] == "customer_redacted"
    again = await sender.redeliver(sender.sent[-1])
    assert again.json()["outcome"] == "duplicate"
    customers = await customers_of(sessions, tenant)
    assert person.id not in customers
    assert all(person.email not in (c.email or "") for c in customers.values())
    orders = await orders_of(sessions, tenant)
    assert all(orders[o.id].customer_id is None for o in theirs), "sales stay, unlinked"

    gone = next(o for o in shop.orders.values() if o not in theirs)
    deleted = await sender.send(url, "orders/delete", order_delete_payload(gone))
    assert deleted.json()["outcome"] == "order_deleted"
    assert gone.id not in await orders_of(sessions, tenant)

    records = [e for e in await executions_of(sessions, tenant) if e.module is ModuleKind.PRIVACY]
    assert all(e.status is ModuleExecutionStatus.SUCCEEDED for e in records)
    by_topic = {e.meta["topic"]: e.meta for e in records}
    assert by_topic["customers/data_request"]["customer"] == person.id
    assert by_topic["customers/data_request"]["customer_fields_held"] == ["email", "name"]
    assert sorted(by_topic["customers/data_request"]["orders_held"]) == sorted(o.id for o in theirs)
    assert by_topic["customers/redact"]["customers_removed"] == 1
    assert by_topic["orders/delete"] == {**by_topic["orders/delete"], "orders_removed": 1}
    assert all(person.email not in str(e.meta) for e in records), "no personal data recorded"

    # shop/redact (48 hours after uninstalling): nothing of the shop is left.
    await connected.service.disable(connected.connector.id)
    erased = await sender.send(url, "shop/redact", shop_redact_payload())
    assert erased.json()["outcome"] == "shop_redacted"
    assert await orders_of(sessions, tenant) == {}
    assert await customers_of(sessions, tenant) == {}
    assert (await connector_row(sessions, connected.connector.id)).status.value == "disabled"
