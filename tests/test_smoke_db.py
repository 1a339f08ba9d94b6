from sqlmodel import select

from models import Tenant
from tests.factories import make_project, make_tenant


async def test_a_tenant_and_its_project_round_trip_through_postgres(sessions):
    tenant = await make_tenant(sessions)
    project = await make_project(sessions, tenant=tenant)
    async with sessions() as session:
        stored = (await session.exec(select(Tenant).where(Tenant.id == tenant.id))).one()
    assert stored.slug == tenant.slug
    assert stored.created_at.tzinfo is not None
    assert project.tenant_id == tenant.id
