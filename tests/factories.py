"""Rows for tests, created through the real models. Keyword-only, each returns the row."""

import uuid

from models import PlanTier, Project, Tenant, User, UserRole
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
