"""Who a decision names and who is who in a status: a tenant's people by id or email, for the
request and deployment commands."""

import uuid

from cli import tenancy
from cli.stack import Stack


async def user_id(stack: Stack, tenant_id: uuid.UUID, reference: str) -> uuid.UUID:
    async with (await stack.sessions())() as session:
        found = await tenancy.find_tenant(session, str(tenant_id))
        return (await tenancy.find_user(session, found, reference)).id


async def emails(stack: Stack, tenant_id: uuid.UUID) -> dict[uuid.UUID, str]:
    """User id -> email, for the approvals a status shows."""
    async with (await stack.sessions())() as session:
        found = await tenancy.find_tenant(session, str(tenant_id))
        return {u.id: u.email for u in await tenancy.list_users(session=session, tenant=found)}
