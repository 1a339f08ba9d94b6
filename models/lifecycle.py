"""The change lifecycle: prompt requests, plans, approvals, deployments and units of work."""

import enum
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any, Optional

import sqlalchemy as sa
from sqlmodel import Field, Relationship, SQLModel

from models.base import (
    created_at_field,
    enum_field,
    fk_field,
    id_field,
    json_field,
    timestamp_field,
    tokens_field,
    updated_at_field,
)

if TYPE_CHECKING:
    from models.projects import Project


class PromptStatus(enum.StrEnum):
    RECEIVED = "received"
    PLANNING = "planning"
    AWAITING_APPROVAL = "awaiting_approval"
    APPROVED = "approved"
    DEPLOYING_STAGING = "deploying_staging"
    DEPLOYING_PRODUCTION = "deploying_production"
    COMPLETED = "completed"
    REJECTED = "rejected"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


class RiskLevel(enum.StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return list(RiskLevel).index(self)


class PlanApprovalStatus(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    AUTO_APPROVED = "auto_approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
    SUPERSEDED = "superseded"
    CANCELLED = "cancelled"


class ApprovalDecision(enum.StrEnum):
    APPROVE = "approve"
    REJECT = "reject"


class DeploymentEnvironment(enum.StrEnum):
    STAGING = "staging"
    PRODUCTION = "production"


class DeploymentStatus(enum.StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    VERIFYING = "verifying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    CANCELLED = "cancelled"


class ChangeJobKind(enum.StrEnum):
    AI_CHANGE = "ai_change"
    VALIDATION = "validation"
    DEPLOY = "deploy"
    ROLLBACK = "rollback"


class ChangeJobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ApprovalPolicy(SQLModel, table=True):
    """How a tenant approves plans. One row per tenant; absent means the defaults below."""

    __tablename__ = "approval_policies"

    id: uuid.UUID = id_field()
    tenant_id: uuid.UUID = Field(foreign_key="tenants.id", ondelete="CASCADE", unique=True)
    # Role values (models.tenancy.UserRole) whose holders may approve.
    approver_roles: list[str] = json_field(lambda: ["client_admin"])
    # Risk level value -> approvals needed, e.g. {"low": 1, "medium": 1, "high": 2, "critical": 2}.
    approvals_required: dict[str, int] = json_field(
        lambda: {"low": 1, "medium": 1, "high": 2, "critical": 2}
    )
    # Plans at or below this risk are approved by the system; None means never.
    auto_approve_max_risk: RiskLevel | None = enum_field(RiskLevel, RiskLevel.LOW, nullable=True)
    plan_ttl_seconds: int = Field(default=7 * 24 * 3600)
    # Percent above the estimate that the work may use before it needs a fresh approval.
    overspend_tolerance_pct: int = Field(default=20)
    # A tenant with a notification webhook is reminded of a waiting plan this long before it
    # expires; None sends no reminder.
    reminder_before_seconds: int | None = Field(default=None)
    created_at: datetime = created_at_field()
    updated_at: datetime = updated_at_field()


class PromptRequest(SQLModel, table=True):
    __tablename__ = "prompt_requests"

    id: uuid.UUID = id_field()
    tenant_id: uuid.UUID = fk_field("tenants.id", ondelete="CASCADE")
    # History stays when a project or its author is removed.
    project_id: uuid.UUID | None = fk_field("projects.id", ondelete="SET NULL", nullable=True)
    user_id: uuid.UUID | None = fk_field("users.id", ondelete="SET NULL", nullable=True)
    prompt: str = Field(sa_type=sa.Text)  # type: ignore[call-overload]
    status: PromptStatus = enum_field(PromptStatus, PromptStatus.RECEIVED, index=True)
    status_reason: str | None = Field(default=None)
    workflow_id: str | None = Field(default=None, max_length=300)
    tokens_used: int = tokens_field()
    created_at: datetime = created_at_field()
    updated_at: datetime = updated_at_field()

    project: Optional["Project"] = Relationship(back_populates="prompt_requests")
    plans: list["DeploymentPlan"] = Relationship(
        back_populates="prompt_request", passive_deletes="all"
    )
    change_jobs: list["ChangeJob"] = Relationship(
        back_populates="prompt_request", passive_deletes="all"
    )


class DeploymentPlan(SQLModel, table=True):
    __tablename__ = "deployment_plans"
    __table_args__ = (
        sa.UniqueConstraint(
            "prompt_request_id", "revision", name="uq_deployment_plans_request_revision"
        ),
    )

    id: uuid.UUID = id_field()
    tenant_id: uuid.UUID = fk_field("tenants.id", ondelete="CASCADE")
    prompt_request_id: uuid.UUID = fk_field("prompt_requests.id", ondelete="CASCADE")
    revision: int = Field(default=1)
    # The prompt this revision was planned from (a revision amends the request's prompt).
    prompt: str = Field(default="", sa_type=sa.Text)  # type: ignore[call-overload]
    # The commit the diff applies to, and the files it touches: what applying needs again.
    base_commit: str | None = Field(default=None, max_length=64)
    files_changed: list[str] = json_field(list)
    diff: str = Field(default="", sa_type=sa.Text)  # type: ignore[call-overload]
    diff_summary: str = Field(default="", sa_type=sa.Text)  # type: ignore[call-overload]
    risk_level: RiskLevel = enum_field(RiskLevel, RiskLevel.LOW)
    risk_reasons: list[str] = json_field(list)
    token_estimate: int = tokens_field()
    # sha256 of what is approved: diff and estimate. Approvals must name it.
    content_hash: str = Field(default="", max_length=64)
    approval_status: PlanApprovalStatus = enum_field(PlanApprovalStatus, PlanApprovalStatus.PENDING)
    # The commit the change engine produced, ready to be released.
    commit_sha: str | None = Field(default=None, max_length=64)
    hold_id: uuid.UUID | None = Field(default=None)
    expires_at: datetime | None = timestamp_field()
    decided_at: datetime | None = timestamp_field()
    created_at: datetime = created_at_field()
    updated_at: datetime = updated_at_field()

    prompt_request: PromptRequest = Relationship(back_populates="plans")
    deployments: list["Deployment"] = Relationship(back_populates="plan", passive_deletes="all")


class Approval(SQLModel, table=True):
    """One person's decision on one plan revision."""

    __tablename__ = "approvals"
    __table_args__ = (sa.UniqueConstraint("plan_id", "user_id", name="uq_approvals_plan_user"),)

    id: uuid.UUID = id_field()
    tenant_id: uuid.UUID = fk_field("tenants.id", ondelete="CASCADE")
    plan_id: uuid.UUID = fk_field("deployment_plans.id", ondelete="CASCADE")
    user_id: uuid.UUID = fk_field("users.id", ondelete="CASCADE")
    decision: ApprovalDecision = enum_field(ApprovalDecision)
    content_hash: str = Field(max_length=64)
    reason: str | None = Field(default=None)
    created_at: datetime = created_at_field()


class UsedDecisionToken(SQLModel, table=True):
    """A decision token's id once it counted (activities/decisions.py): a token works once.
    The unique jti is the rule; used_by tells a retry of the same use from a reuse."""

    __tablename__ = "used_decision_tokens"

    jti: str = Field(primary_key=True, max_length=200)
    tenant_id: uuid.UUID = fk_field("tenants.id", ondelete="CASCADE")
    user_id: uuid.UUID = fk_field("users.id", ondelete="CASCADE")
    action: str = Field(max_length=20)
    # The prompt request (or, for a rollback, the target deployment) the token was for.
    request: uuid.UUID
    # Workflow id and update id of the use.
    used_by: str = Field(max_length=400)
    expires_at: datetime = timestamp_field(nullable=False)
    created_at: datetime = created_at_field()


class Deployment(SQLModel, table=True):
    __tablename__ = "deployments"

    id: uuid.UUID = id_field()
    tenant_id: uuid.UUID = fk_field("tenants.id", ondelete="CASCADE")
    project_id: uuid.UUID | None = fk_field("projects.id", ondelete="SET NULL", nullable=True)
    # A plan with deployments is history: it cannot be deleted underneath them.
    plan_id: uuid.UUID = fk_field("deployment_plans.id", ondelete="RESTRICT")
    environment: DeploymentEnvironment = enum_field(DeploymentEnvironment, index=True)
    status: DeploymentStatus = enum_field(DeploymentStatus, DeploymentStatus.QUEUED, index=True)
    # Set on a rollback: the deployment it undoes. The restored release is commit_sha.
    rollback_of_id: uuid.UUID | None = fk_field(
        "deployments.id", ondelete="RESTRICT", nullable=True
    )
    commit_sha: str | None = Field(default=None, max_length=64)
    previous_commit_sha: str | None = Field(default=None, max_length=64)
    workflow_id: str | None = Field(default=None, max_length=300)
    diff_url: str | None = Field(default=None, max_length=1000)
    log_url: str | None = Field(default=None, max_length=1000)
    verification_output: str | None = Field(default=None, sa_type=sa.Text)  # type: ignore[call-overload]
    # The check's verdict as soon as the check ended ({"commit_sha", "ok", "output", "log_url",
    # "duration_s"}), before any worker reports it: a retried check on any host returns it
    # instead of running the check again (a worker's own disk is no place for it).
    check_verdict: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON)  # type: ignore[call-overload]
    queued_at: datetime = created_at_field()
    started_at: datetime | None = timestamp_field()
    finished_at: datetime | None = timestamp_field()
    # When verification passed (SUCCEEDED); kept when a later rollback undoes the release, so
    # "did this deployment ever succeed" is the deployment's own history.
    verified_at: datetime | None = timestamp_field()
    updated_at: datetime = updated_at_field()

    plan: DeploymentPlan = Relationship(back_populates="deployments")
    rollback_of: Optional["Deployment"] = Relationship(
        sa_relationship_kwargs={"remote_side": "Deployment.id"}
    )


class DeploymentLaneEntry(SQLModel, table=True):
    """A deployment workflow's place in the lane of its project and environment.

    Deployments of one lane run one at a time in arrival order: the holder is the entry with
    the lowest `seq` that has not left. Entries are numbered under a per-lane advisory lock
    (activities/lane.py), so arrival order is commit order. Rows stay after leaving, as the
    lane's history.
    """

    __tablename__ = "deployment_lane_entries"
    __table_args__ = (
        sa.UniqueConstraint("project_id", "environment", "seq", name="uq_lane_entries_seq"),
        sa.Index(
            "ix_lane_entries_waiting",
            "project_id",
            "environment",
            "seq",
            postgresql_where=sa.text("left_at IS NULL"),
        ),
    )

    id: uuid.UUID = id_field()
    project_id: uuid.UUID = fk_field("projects.id", ondelete="CASCADE", index=False)
    environment: DeploymentEnvironment = enum_field(DeploymentEnvironment)
    seq: int = Field(sa_type=sa.BigInteger, nullable=False)  # type: ignore[call-overload]
    # One place per deployment workflow: its automatic rollback runs inside the same turn.
    workflow_id: str = Field(max_length=300, unique=True)
    deployment_id: uuid.UUID = fk_field("deployments.id", ondelete="CASCADE", index=False)
    entered_at: datetime = created_at_field()
    left_at: datetime | None = timestamp_field()


class ChangeJob(SQLModel, table=True):
    """One unit of work (AI change, validation, deploy, rollback) with its attempts and timings."""

    __tablename__ = "change_jobs"

    id: uuid.UUID = id_field()
    # Derived from the workflow id and step, so a retried activity finds its own row.
    job_key: str = Field(max_length=300, unique=True)
    tenant_id: uuid.UUID = fk_field("tenants.id", ondelete="CASCADE")
    project_id: uuid.UUID | None = fk_field("projects.id", ondelete="SET NULL", nullable=True)
    prompt_request_id: uuid.UUID | None = fk_field(
        "prompt_requests.id", ondelete="SET NULL", nullable=True
    )
    plan_id: uuid.UUID | None = fk_field("deployment_plans.id", ondelete="SET NULL", nullable=True)
    deployment_id: uuid.UUID | None = fk_field("deployments.id", ondelete="SET NULL", nullable=True)
    kind: ChangeJobKind = enum_field(ChangeJobKind)
    status: ChangeJobStatus = enum_field(ChangeJobStatus, ChangeJobStatus.QUEUED, index=True)
    attempts: int = Field(default=0)
    error: str | None = Field(default=None)
    details: dict[str, Any] = json_field()
    started_at: datetime | None = timestamp_field()
    finished_at: datetime | None = timestamp_field()
    created_at: datetime = created_at_field()
    updated_at: datetime = updated_at_field()

    prompt_request: PromptRequest | None = Relationship(back_populates="change_jobs")
