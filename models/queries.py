"""What the operator's command reads, one statement each: a row by the reference a person
types (an id, or a slug or email), and the lists (`changeflow ... list`, `tokens history`), a
tenant's rows only, oldest first where a list is whole, newest first where --limit cuts it."""

import uuid
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.sql.expression import Select, SelectOfScalar

from models.billing import TokenTransaction
from models.commerce import ModuleExecution
from models.lifecycle import Deployment, PromptRequest, PromptStatus
from models.projects import Project
from models.tenancy import Tenant, User


def _uuid(reference: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(reference)
    except ValueError:
        return None


def tenant(reference: str) -> SelectOfScalar[Tenant]:
    """By id or slug."""
    by_id = _uuid(reference)
    return select(Tenant).where(Tenant.id == by_id if by_id else Tenant.slug == reference)


def user(tenant_id: uuid.UUID, reference: str) -> SelectOfScalar[User]:
    """By id or email, in any case."""
    by_id = _uuid(reference)
    clause = User.id == by_id if by_id else sa.func.lower(User.email) == reference.lower()
    return select(User).where(User.tenant_id == tenant_id).where(clause)


def project(tenant_id: uuid.UUID, reference: str) -> SelectOfScalar[Project]:
    """By id or slug."""
    by_id = _uuid(reference)
    clause = Project.id == by_id if by_id else Project.slug == reference
    return select(Project).where(Project.tenant_id == tenant_id).where(clause)


def tenants() -> SelectOfScalar[Tenant]:
    return select(Tenant).order_by(col(Tenant.created_at))


def users(tenant_id: uuid.UUID) -> SelectOfScalar[User]:
    return select(User).where(User.tenant_id == tenant_id).order_by(col(User.created_at))


def projects(tenant_id: uuid.UUID) -> SelectOfScalar[Project]:
    return select(Project).where(Project.tenant_id == tenant_id).order_by(col(Project.created_at))


def newest_requests(
    tenant_id: uuid.UUID, *, status: PromptStatus | None = None, limit: int
) -> SelectOfScalar[PromptRequest]:
    statement = select(PromptRequest).where(PromptRequest.tenant_id == tenant_id)
    if status is not None:
        statement = statement.where(PromptRequest.status == status)
    return statement.order_by(col(PromptRequest.created_at).desc()).limit(limit)


def newest_deployments(
    tenant_id: uuid.UUID, *, project_id: uuid.UUID | None = None, limit: int
) -> SelectOfScalar[Deployment]:
    """Rollbacks included: a rollback is a deployment of its own."""
    statement = select(Deployment).where(Deployment.tenant_id == tenant_id)
    if project_id is not None:
        statement = statement.where(Deployment.project_id == project_id)
    return statement.order_by(col(Deployment.queued_at).desc()).limit(limit)


def release_facts(project_id: uuid.UUID) -> Select[tuple[Any, ...]]:
    """What the release retention rule reads of each of a project's deployments, in the order of
    models.release_retention.ReleaseFacts' fields."""
    return select(  # type: ignore[call-overload,no-any-return]
        Deployment.id,
        Deployment.environment,
        Deployment.status,
        Deployment.commit_sha,
        Deployment.previous_commit_sha,
        Deployment.verified_at,
        Deployment.finished_at,
    ).where(Deployment.project_id == project_id)


def newest_entries(account_id: uuid.UUID, *, limit: int) -> SelectOfScalar[TokenTransaction]:
    """A token account's ledger, newest entry first (by its sequence, which never repeats)."""
    return (
        select(TokenTransaction)
        .where(TokenTransaction.account_id == account_id)
        .order_by(col(TokenTransaction.sequence).desc())
        .limit(limit)
    )


def latest_execution(workflow_id: str) -> SelectOfScalar[ModuleExecution]:
    """The newest run recorded for a workflow id (a failed import may run again under it)."""
    return (
        select(ModuleExecution)
        .where(ModuleExecution.workflow_id == workflow_id)
        .order_by(col(ModuleExecution.created_at).desc())
    )
