"""Tenants, their people, approval policy and projects: the operator's writes, through the models.

Each helper takes keyword-only arguments, returns the row, and refuses bad input with
`Refused` (a member of workflows.contracts.errors.ErrorType and a message). A reference to a
tenant is its id or slug; to a user, its id or email; to a project, its id or slug.
"""

import re

from pydantic import BaseModel, Field, ValidationError, field_validator
from sqlalchemy.exc import IntegrityError
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from cli.common import Refused
from models import ApprovalPolicy, PlanTier, Project, RiskLevel, Tenant, User, UserRole, queries
from workflows.contracts.errors import ErrorType

# Roles a tenant's people may hold; founder and system belong to the platform.
CLIENT_ROLES = (UserRole.CLIENT_ADMIN, UserRole.CLIENT_OPERATOR, UserRole.CLIENT_VIEWER)
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,99}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def slugify(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:100]


def _check_slug(slug: str) -> str:
    if not _SLUG.fullmatch(slug):
        raise Refused(
            ErrorType.INVALID_REQUEST,
            f"slug {slug!r} must be lower-case letters, digits and dashes (at most 100)",
        )
    return slug


# --- tenants ------------------------------------------------------------------------------


async def find_tenant(session: AsyncSession, reference: str) -> Tenant:
    tenant = (await session.exec(queries.tenant(reference))).one_or_none()
    if tenant is None:
        raise Refused(ErrorType.UNKNOWN_TENANT, f"no tenant {reference!r} (id or slug)")
    return tenant


async def create_tenant(
    *, session: AsyncSession, name: str, slug: str | None = None, plan_tier: PlanTier
) -> Tenant:
    """A tenant with the default approval policy (edit it with `policy set`)."""
    if not name.strip():
        raise Refused(ErrorType.INVALID_REQUEST, "a tenant needs a name")
    tenant = Tenant(name=name.strip(), slug=_check_slug(slug or slugify(name)), plan_tier=plan_tier)
    taken = f"a tenant with slug {tenant.slug!r} exists"  # a rollback expires the row
    session.add(tenant)
    try:
        await session.flush()
    except IntegrityError:
        await session.rollback()
        raise Refused(ErrorType.SLUG_TAKEN, taken) from None
    session.add(ApprovalPolicy(tenant_id=tenant.id))
    await session.commit()
    return tenant


async def list_tenants(*, session: AsyncSession) -> list[Tenant]:
    return list((await session.exec(queries.tenants())).all())


# --- users --------------------------------------------------------------------------------


def _client_role(role: str) -> UserRole:
    try:
        parsed = UserRole(role)
    except ValueError:
        parsed = None
    if parsed not in CLIENT_ROLES:
        raise Refused(
            ErrorType.INVALID_REQUEST,
            f"role {role!r} is not one of {', '.join(r.value for r in CLIENT_ROLES)}",
        )
    assert parsed is not None
    return parsed


async def find_user(session: AsyncSession, tenant: Tenant, reference: str) -> User:
    user = (await session.exec(queries.user(tenant.id, reference))).one_or_none()
    if user is None:
        raise Refused(
            ErrorType.UNKNOWN_USER, f"tenant {tenant.slug} has no user {reference!r} (id or email)"
        )
    return user


async def add_user(
    *, session: AsyncSession, tenant: Tenant, email: str, display_name: str = "", role: str
) -> User:
    if not _EMAIL.fullmatch(email):
        raise Refused(ErrorType.INVALID_REQUEST, f"{email!r} is not an email address")
    user = User(
        tenant_id=tenant.id,
        email=email.lower(),
        display_name=display_name or email.split("@")[0],
        role=_client_role(role),
    )
    taken = f"tenant {tenant.slug} already has a user {user.email!r}"
    session.add(user)
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise Refused(ErrorType.EMAIL_TAKEN, taken) from None
    return user


async def list_users(*, session: AsyncSession, tenant: Tenant) -> list[User]:
    return list((await session.exec(queries.users(tenant.id))).all())


async def set_role(*, session: AsyncSession, tenant: Tenant, reference: str, role: str) -> User:
    user = await find_user(session, tenant, reference)
    user.role = _client_role(role)
    session.add(user)
    await session.commit()
    return user


# --- approval policy ----------------------------------------------------------------------


class PolicyChange(BaseModel):
    """The fields `policy set` may change; unset ones keep their value."""

    approver_roles: list[str] | None = None
    approvals_required: dict[str, int] | None = None
    auto_approve_max_risk: RiskLevel | None = None
    never_auto_approve: bool = False
    plan_ttl_seconds: int | None = Field(default=None, ge=60)
    overspend_tolerance_pct: int | None = Field(default=None, ge=0, le=1000)
    reminder_before_seconds: int | None = Field(default=None, ge=60)
    no_reminder: bool = False

    @field_validator("approver_roles")
    @classmethod
    def _roles(cls, roles: list[str] | None) -> list[str] | None:
        if roles is not None:
            if not roles:
                raise ValueError("at least one approver role is needed")
            roles = [_client_role(role).value for role in roles]
        return roles

    @field_validator("approvals_required")
    @classmethod
    def _approvals(cls, required: dict[str, int] | None) -> dict[str, int] | None:
        if required is not None:
            for risk, count in required.items():
                RiskLevel(risk)
                if count < 1:
                    raise ValueError(f"{risk} needs at least 1 approval, not {count}")
        return required


async def policy_of(session: AsyncSession, tenant: Tenant) -> ApprovalPolicy:
    """The tenant's policy; a tenant created without one gets the defaults stored."""
    statement = select(ApprovalPolicy).where(ApprovalPolicy.tenant_id == tenant.id)
    policy = (await session.exec(statement)).one_or_none()
    if policy is None:
        policy = ApprovalPolicy(tenant_id=tenant.id)
        session.add(policy)
        await session.commit()
    return policy


async def set_policy(
    *, session: AsyncSession, tenant: Tenant, change: dict[str, object]
) -> ApprovalPolicy:
    try:
        parsed = PolicyChange.model_validate(change)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'policy'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise Refused(ErrorType.INVALID_POLICY, problems) from None
    except Refused as exc:
        raise Refused(ErrorType.INVALID_POLICY, exc.message) from None
    policy = await policy_of(session, tenant)
    if parsed.approver_roles is not None:
        policy.approver_roles = parsed.approver_roles
    if parsed.approvals_required is not None:
        policy.approvals_required = {**policy.approvals_required, **parsed.approvals_required}
    if parsed.never_auto_approve:
        policy.auto_approve_max_risk = None
    elif parsed.auto_approve_max_risk is not None:
        policy.auto_approve_max_risk = parsed.auto_approve_max_risk
    if parsed.plan_ttl_seconds is not None:
        policy.plan_ttl_seconds = parsed.plan_ttl_seconds
    if parsed.overspend_tolerance_pct is not None:
        policy.overspend_tolerance_pct = parsed.overspend_tolerance_pct
    if parsed.no_reminder:
        policy.reminder_before_seconds = None
    elif parsed.reminder_before_seconds is not None:
        policy.reminder_before_seconds = parsed.reminder_before_seconds
    session.add(policy)
    await session.commit()
    return policy


# --- projects -----------------------------------------------------------------------------


async def find_project(session: AsyncSession, tenant: Tenant, reference: str) -> Project:
    project = (await session.exec(queries.project(tenant.id, reference))).one_or_none()
    if project is None:
        raise Refused(
            ErrorType.UNKNOWN_PROJECT, f"tenant {tenant.slug} has no project {reference!r}"
        )
    return project


async def create_project(
    *,
    session: AsyncSession,
    tenant: Tenant,
    name: str,
    repo_url: str,
    slug: str | None = None,
    default_branch: str = "main",
    check_command: str = "",
) -> Project:
    if not name.strip() or not repo_url.strip():
        raise Refused(ErrorType.INVALID_REQUEST, "a project needs a name and a repository")
    project = Project(
        tenant_id=tenant.id,
        name=name.strip(),
        slug=_check_slug(slug or slugify(name)),
        repo_url=repo_url.strip(),
        default_branch=default_branch,
        check_command=check_command,
    )
    taken = f"tenant {tenant.slug} already has a project {project.slug!r}"
    session.add(project)
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise Refused(ErrorType.SLUG_TAKEN, taken) from None
    return project


async def list_projects(*, session: AsyncSession, tenant: Tenant) -> list[Project]:
    return list((await session.exec(queries.projects(tenant.id))).all())
