"""Helpers of the commerce scenario tests: a tenant connected to a local Shopify stand-in,
syncs started the way an operator starts them, and what the tenant's rows say afterwards."""

import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlmodel import select
from temporalio.client import Client

from activities.connectors import ConnectorService
from activities.credentials import KeyRing
from infra.settings import Settings
from models.commerce import Customer, ModuleExecution, Order
from models.db import SessionFactory
from models.projects import Connector, ConnectorKind
from models.tenancy import Tenant
from scripts.shopify_stand_in import LeakyBucket, ShopifyStandIn
from tests.factories import make_tenant
from tests.workers import test_settings
from workers.registry import Dependencies, credential_store
from workflows.commerce import OrderSyncWorkflow
from workflows.contracts.commerce import OrderSyncInput, OrderSyncResult
from workflows.contracts.ids import order_sync_workflow_id

TOKEN = "shpat_0123456789abcdef0123456789abcdef"


def on_plus_plan(shop: ShopifyStandIn) -> ShopifyStandIn:
    """The shop's GraphQL rate limit as on Shopify Plus: 1,000 points restored a second (ten
    times the standard plan's), a bucket twenty times that. The scenarios are about what a sync
    reads and writes, not about waiting out the standard plan's 4 s a page; the rate limit has
    tests of its own (tests/test_commerce_throttle.py) with buckets of their own."""
    shop.bucket = LeakyBucket(maximum=20_000.0, restore_rate=1_000.0, available=20_000.0)
    return shop


def key_spec(*key_ids: str) -> str:
    return ",".join(f"{kid}:{KeyRing.new_key()}" for kid in key_ids)


def commerce_settings(task_queue: str, tmp_path: Path, **overrides: Any) -> Settings:
    base = test_settings(
        task_queue=task_queue, deploy_task_queue=f"{task_queue}-deploy", workspace_dir=tmp_path
    )
    values: dict[str, Any] = {
        "credential_keys": key_spec("k1"),
        "sync_window_hours": 24.0,
        "sync_overlap_seconds": 300.0,
        "sync_initial_days": 30,
        # The scenarios read pages (a first sync by Bulk Operation has tests of its own).
        "sync_bulk_first_sync": False,
        "sync_bulk_poll_seconds": 0.2,
    }
    values.update(overrides)
    return base.model_copy(update=values | {"credential_keys": _secret(values["credential_keys"])})


def _secret(value: Any) -> Any:
    from pydantic import SecretStr

    return value if isinstance(value, SecretStr) else SecretStr(value)


def connector_service(
    settings: Settings, sessions: SessionFactory, client: Client
) -> ConnectorService:
    deps = Dependencies(settings=settings, sessions=sessions, client=client)
    store, connections = credential_store(deps)
    return ConnectorService(sessions, store, connections)


@dataclass
class ConnectedShop:
    tenant: Tenant
    connector: Connector
    service: ConnectorService
    stand_in: ShopifyStandIn


async def connect_shop(
    sessions: SessionFactory,
    settings: Settings,
    client: Client,
    stand_in: ShopifyStandIn,
    *,
    token: str = TOKEN,
    credentials: dict[str, str] | None = None,
    tenant: Tenant | None = None,
) -> ConnectedShop:
    """A tenant whose Shopify connector was created and tested, as an operator does it."""
    tenant = tenant or await make_tenant(sessions, name=f"Shop {uuid.uuid4().hex[:4]}")
    service = connector_service(settings, sessions, client)
    created = await service.create(
        tenant_id=tenant.id,
        kind=ConnectorKind.SHOPIFY,
        name="Main shop",
        config={"shop_url": stand_in.url},
        credentials=credentials or {"access_token": token},
    )
    tested = await service.test(created.id)
    return ConnectedShop(tenant=tenant, connector=tested, service=service, stand_in=stand_in)


async def sync(
    client: Client, connector_id: uuid.UUID, task_queue: str, **options: Any
) -> OrderSyncResult:
    return await client.execute_workflow(
        OrderSyncWorkflow.run,
        OrderSyncInput(connector_id=connector_id, **options),
        id=order_sync_workflow_id(connector_id),
        task_queue=task_queue,
        execution_timeout=timedelta(minutes=5),
    )


async def orders_of(sessions: SessionFactory, tenant_id: uuid.UUID) -> dict[str, Order]:
    async with sessions() as session:
        rows = (await session.exec(select(Order).where(Order.tenant_id == tenant_id))).all()
    return {row.external_id: row for row in rows}


async def customers_of(sessions: SessionFactory, tenant_id: uuid.UUID) -> dict[str, Customer]:
    async with sessions() as session:
        rows = (await session.exec(select(Customer).where(Customer.tenant_id == tenant_id))).all()
    return {row.external_id: row for row in rows}


async def executions_of(sessions: SessionFactory, tenant_id: uuid.UUID) -> list[ModuleExecution]:
    async with sessions() as session:
        rows = (
            await session.exec(
                select(ModuleExecution)
                .where(ModuleExecution.tenant_id == tenant_id)
                .order_by(ModuleExecution.created_at)  # type: ignore[arg-type]
            )
        ).all()
    return list(rows)


async def connector_row(sessions: SessionFactory, connector_id: uuid.UUID) -> Connector:
    async with sessions() as session:
        row = await session.get(Connector, connector_id)
    assert row is not None
    return row


def cents(amount: Any, currency: str = "USD") -> int:
    from activities.shopify import minor_units

    return minor_units(str(amount), currency)
