"""Rows for tests, created through the real models. Keyword-only, each returns the row."""

import uuid

from activities.ledger import Ledger
from models import PlanTier, Project, Tenant, TokenAccount, User, UserRole
from models.db import SessionFactory


async def make_tenant(
    sessions: SessionFactory, *, name: str = "Acme Shop", plan_tier: PlanTier = PlanTier.GROWTH
) -> Tenant:
    tenant = Tenant(
        name=name,
        slug=f"{name.lower().replace(' ', '-')}-{uuid.uuid4().hex[:6]}",
        plan_tier=plan_tier,
    )
    async with sessions() as session:
        session.add(tenant)
        await session.commit()
    return tenant


async def make_user(
    sessions: SessionFactory,
    *,
    tenant: Tenant,
    role: UserRole = UserRole.CLIENT_ADMIN,
    email: str | None = None,
) -> User:
    user = User(
        tenant_id=tenant.id,
        email=email or f"{uuid.uuid4().hex[:8]}@example.com",
        role=role,
        display_name="Test User",
    )
    async with sessions() as session:
        session.add(user)
        await session.commit()
    return user


async def make_project(
    sessions: SessionFactory,
    *,
    tenant: Tenant,
    repo_url: str = "",
    check_command: str = "",
    name: str = "Storefront",
) -> Project:
    project = Project(
        tenant_id=tenant.id,
        name=name,
        slug=f"storefront-{uuid.uuid4().hex[:6]}",
        repo_url=repo_url,
        check_command=check_command,
    )
    async with sessions() as session:
        session.add(project)
        await session.commit()
    return project


async def make_funded_account(
    sessions: SessionFactory, *, tenant: Tenant, balance: int
) -> TokenAccount:
    """The tenant's token account for its tier, topped up through the Ledger (so the
    entries reconcile); opening is idempotent, so calling it twice tops up twice."""
    ledger = Ledger(sessions)
    account = await ledger.open_account(tenant.id)
    if balance > 0:
        await ledger.top_up(account.id, balance, key=f"test-funding:{uuid.uuid4()}")
    async with sessions() as session:
        funded = await session.get(TokenAccount, account.id)
        assert funded is not None
        return funded
