"""The data model in PostgreSQL: every entity has its table, the constraints that protect data
hold, and delete rules do what the model says."""

import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import delete, func, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel, select

from models import (
    ENTITIES,
    Connector,
    ConnectorKind,
    Customer,
    Deployment,
    DeploymentEnvironment,
    DeploymentPlan,
    DeploymentStatus,
    Order,
    OrderSource,
    PlanTier,
    Project,
    PromptRequest,
    Tenant,
    TokenAccount,
    TokenDirection,
    TokenTransaction,
    TokenTransactionKind,
    User,
)
from models.db import SessionFactory
from tests.factories import make_project, make_tenant, make_user


async def add(sessions: SessionFactory, *rows: SQLModel) -> None:
    async with sessions() as session:
        session.add_all(rows)
        await session.commit()


async def count(sessions: SessionFactory, model: type[SQLModel], **where: object) -> int:
    statement = select(func.count()).select_from(model)
    for column, value in where.items():
        statement = statement.where(getattr(model, column) == value)
    async with sessions() as session:
        return (await session.exec(statement)).one()


async def delete_row(sessions: SessionFactory, model: type[SQLModel], row_id: uuid.UUID) -> None:
    # A SQL DELETE, so the database's ondelete rules act, not the ORM's cascades.
    async with sessions() as session:
        await session.exec(delete(model).where(model.id == row_id))  # type: ignore[attr-defined]
        await session.commit()


def account_for(tenant: Tenant) -> TokenAccount:
    return TokenAccount(tenant_id=tenant.id, plan_tier=tenant.plan_tier)


def entry(account: TokenAccount, key: str, amount: int = 100) -> TokenTransaction:
    return TokenTransaction(
        account_id=account.id,
        tenant_id=account.tenant_id,
        direction=TokenDirection.CREDIT,
        kind=TokenTransactionKind.TOP_UP,
        amount=amount,
        balance_after=amount,
        idempotency_key=key,
    )


async def make_plan(sessions: SessionFactory, tenant: Tenant, project: Project) -> DeploymentPlan:
    request = PromptRequest(tenant_id=tenant.id, project_id=project.id, prompt="Add a banner")
    plan = DeploymentPlan(tenant_id=tenant.id, prompt_request_id=request.id, token_estimate=50)
    await add(sessions, request)
    await add(sessions, plan)
    return plan


async def test_every_entity_has_its_table(sessions):
    async with sessions() as session:
        listed = await session.connection()
        tables = set(
            (
                await listed.execute(
                    text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                )
            ).scalars()
        )
    entity_tables = {entity.__tablename__ for entity in ENTITIES}  # type: ignore[attr-defined]
    assert len(entity_tables) == 13
    assert entity_tables <= tables


async def test_an_idempotency_key_is_unique_per_token_account(sessions):
    tenant = await make_tenant(sessions, plan_tier=PlanTier.GROWTH)
    other = await make_tenant(sessions, name="Other Shop")
    account, other_account = account_for(tenant), account_for(other)
    await add(sessions, account, other_account)
    await add(sessions, entry(account, "prompt-request-1:reserve"))

    # The same key on another account is a different request.
    await add(sessions, entry(other_account, "prompt-request-1:reserve"))
    with pytest.raises(IntegrityError, match="uq_token_transactions_account_key"):
        await add(sessions, entry(account, "prompt-request-1:reserve", amount=999))

    assert await count(sessions, TokenTransaction, account_id=account.id) == 1


async def test_an_order_is_unique_per_tenant_source_and_external_id(sessions):
    tenant = await make_tenant(sessions)
    other = await make_tenant(sessions, name="Other Shop")

    def order(owner: Tenant, source: OrderSource) -> Order:
        return Order(tenant_id=owner.id, source=source, external_id="#1001", total_cents=2500)

    await add(sessions, order(tenant, OrderSource.SHOPIFY))
    await add(sessions, order(tenant, OrderSource.POS), order(other, OrderSource.SHOPIFY))
    with pytest.raises(IntegrityError, match="uq_orders_tenant_source_external"):
        await add(sessions, order(tenant, OrderSource.SHOPIFY))


async def test_a_customer_is_unique_per_tenant_source_and_external_id(sessions):
    tenant = await make_tenant(sessions)
    other = await make_tenant(sessions, name="Other Shop")
    await add(sessions, Customer(tenant_id=tenant.id, external_id="c1", email="ana@example.com"))
    await add(sessions, Customer(tenant_id=other.id, external_id="c1", email="ana@example.com"))
    # A customer may have no email, and two of one tenant may share one.
    await add(sessions, Customer(tenant_id=tenant.id, external_id="c2"))
    await add(sessions, Customer(tenant_id=tenant.id, external_id="c3", email="ana@example.com"))
    with pytest.raises(IntegrityError, match="uq_customers_tenant_source_external"):
        await add(sessions, Customer(tenant_id=tenant.id, external_id="c1"))


async def test_deleting_a_tenant_takes_its_users_and_projects_with_it(sessions):
    tenant = await make_tenant(sessions)
    await make_user(sessions, tenant=tenant)
    await make_project(sessions, tenant=tenant)
    bystander = await make_tenant(sessions, name="Bystander")
    await make_project(sessions, tenant=bystander)

    await delete_row(sessions, Tenant, tenant.id)

    assert await count(sessions, User, tenant_id=tenant.id) == 0
    assert await count(sessions, Project, tenant_id=tenant.id) == 0
    assert await count(sessions, Project, tenant_id=bystander.id) == 1


async def test_a_tenant_with_a_token_ledger_cannot_be_deleted(sessions):
    tenant = await make_tenant(sessions)
    await make_user(sessions, tenant=tenant)
    account = account_for(tenant)
    await add(sessions, account)
    await add(sessions, entry(account, "grant-2026-11"))

    with pytest.raises(IntegrityError, match="token_accounts"):
        await delete_row(sessions, Tenant, tenant.id)

    # Refused as a whole: nothing went with the attempt.
    assert await count(sessions, Tenant, id=tenant.id) == 1
    assert await count(sessions, User, tenant_id=tenant.id) == 1


async def test_a_connector_outlives_its_project_as_a_tenant_wide_connector(sessions):
    tenant = await make_tenant(sessions)
    project = await make_project(sessions, tenant=tenant)
    connector = Connector(tenant_id=tenant.id, project_id=project.id, kind=ConnectorKind.SHOPIFY)
    await add(sessions, connector)

    await delete_row(sessions, Project, project.id)

    async with sessions() as session:
        kept = await session.get(Connector, connector.id)
    assert kept is not None and kept.project_id is None


async def test_an_order_outlives_the_erased_customer(sessions):
    tenant = await make_tenant(sessions)
    customer = Customer(tenant_id=tenant.id, external_id="c1", email="bo@example.com")
    order = Order(
        tenant_id=tenant.id, customer_id=customer.id, source=OrderSource.MANUAL, external_id="7"
    )
    await add(sessions, customer)
    await add(sessions, order)

    await delete_row(sessions, Customer, customer.id)

    async with sessions() as session:
        kept = await session.get(Order, order.id)
    assert kept is not None and kept.customer_id is None


async def test_a_rollback_deployment_points_at_the_deployment_it_undoes(sessions):
    tenant = await make_tenant(sessions)
    project = await make_project(sessions, tenant=tenant)
    plan = await make_plan(sessions, tenant, project)

    def deployment(**fields: Any) -> Deployment:
        return Deployment(
            tenant_id=tenant.id,
            project_id=project.id,
            plan_id=plan.id,
            environment=DeploymentEnvironment.PRODUCTION,
            **fields,
        )

    failed = deployment(status=DeploymentStatus.FAILED, commit_sha="b" * 40)
    await add(sessions, failed)
    rollback = deployment(
        status=DeploymentStatus.SUCCEEDED, commit_sha="a" * 40, rollback_of_id=failed.id
    )
    await add(sessions, rollback)

    async with sessions() as session:
        loaded = await session.get(Deployment, rollback.id)
        assert loaded is not None
        undone = await session.run_sync(lambda _: loaded.rollback_of)
    assert undone is not None and undone.id == failed.id
    assert undone.commit_sha == "b" * 40

    # History holds: the undone deployment cannot vanish from under its rollback.
    with pytest.raises(IntegrityError, match="rollback_of"):
        await delete_row(sessions, Deployment, failed.id)
    with pytest.raises(IntegrityError):
        await add(sessions, deployment(rollback_of_id=uuid.uuid4()))


async def test_timestamps_are_timezone_aware_and_set_by_default(sessions):
    tenant = await make_tenant(sessions)
    async with sessions() as session:
        # Read back from PostgreSQL, not the instance we built.
        session.expunge_all()
        stored = (await session.exec(select(Tenant).where(Tenant.id == tenant.id))).one()
        now = (await session.exec(select(func.now()))).one()
    assert stored.created_at.tzinfo is not None
    assert stored.updated_at.tzinfo is not None
    assert abs(stored.created_at - now) < timedelta(minutes=1)


async def test_ids_are_uuids_generated_by_the_model(sessions):
    tenant = await make_tenant(sessions)
    other = await make_tenant(sessions, name="Other")
    assert isinstance(tenant.id, uuid.UUID)
    assert tenant.id != other.id
