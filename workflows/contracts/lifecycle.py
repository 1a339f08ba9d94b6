"""Payloads of the prompt lifecycle: PromptRequestWorkflow's input, result, updates and status
query, and the lifecycle activities behind it.

Public contract (workflow id ``ids.prompt_request_workflow_id``, type
``PromptRequestWorkflow``): start with ``PromptRequestInput``; updates ``approve``
(``ApproveRequest``), ``reject`` (``RejectRequest``) and ``revise`` (``ReviseRequest``) each answer
a ``PromptRequestStatus``; query ``status`` answers a ``PromptRequestStatus``; the result is a
``PromptRequestResult``. Cancel with Temporal's cancel (the typed client first has the
``authorize_cancel`` update, ``CancelRequest``, verify its signed token). Decisions carry
a signed token (workflows.contracts.decisions). Refusals and failures carry an
``ApplicationError`` whose ``type`` is an ``ErrorType`` value (workflows.contracts.errors).
"""

import uuid
from datetime import datetime

from pydantic import BaseModel, Field

from models.billing import HoldStatus
from models.lifecycle import (
    ApprovalDecision,
    DeploymentEnvironment,
    DeploymentStatus,
    PlanApprovalStatus,
    PromptStatus,
    RiskLevel,
)
from workflows.contracts.deployment import DEFAULT_DEPLOY_TASK_QUEUE
from workflows.contracts.errors import ErrorType, refused
from workflows.contracts.submitted import PublicInput

WORKFLOW_TYPE = "PromptRequestWorkflow"
MAX_PROMPT_CHARS = 4000
MAX_REASON_CHARS = 2000
# How often production may refuse a change because its default branch moved by commits that no
# changeflow release made (pushes from outside) before the request gives up. Moves by other
# requests shipping never count: a busy project re-stages the change on top until it ships.
MAX_REBASE_ROUNDS = 3
# The reason a re-planned request waits for approval again (and its notification says).
REPLANNED_ON_NEW_BASE = "re-planned on the new base"


def check_prompt(prompt: str) -> None:
    """Refuse a prompt the change engine cannot be asked about: the one prompt rule, applied by
    the typed client before it starts anything and by the workflow (its start, the revise
    validator) before any activity carries the prompt."""
    if not prompt.strip():
        raise refused(ErrorType.EMPTY_PROMPT, "the prompt is empty")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise refused(
            ErrorType.PROMPT_TOO_LONG,
            f"the prompt has {len(prompt)} characters; at most {MAX_PROMPT_CHARS} are allowed",
        )


def check_reason(reason: str) -> None:
    """A rejection says why: a blank reason is refused (its length is the model's rule)."""
    if not reason.strip():
        raise refused(ErrorType.EMPTY_REASON, "a rejection needs a reason")


# --- The workflow's public payloads. ---


class PromptRequestInput(PublicInput):
    """Start of a PromptRequestWorkflow. Validation happens in the workflow, so a bad request
    ends with a typed error instead of a payload the worker cannot decode."""

    prompt_request_id: uuid.UUID
    tenant_id: uuid.UUID
    project_id: uuid.UUID
    requested_by: uuid.UUID
    prompt: str
    deploy_task_queue: str = DEFAULT_DEPLOY_TASK_QUEUE


class ApproveRequest(PublicInput):
    user_id: uuid.UUID
    # The plan's content hash as the approver saw it; a different one is refused as stale.
    content_hash: str
    comment: str = ""
    # A signed decision token (workflows.contracts.decisions) naming this user as `sub`;
    # required unless the workers run with CHANGEFLOW_DECISION_TOKENS=off. Single use.
    token: str | None = None


class RejectRequest(PublicInput):
    user_id: uuid.UUID
    content_hash: str
    # Checked by the validator (check_reason), so that a blank one is a typed refusal like an
    # empty prompt, not a payload that does not decode.
    reason: str = Field(
        default="",
        max_length=MAX_REASON_CHARS,
        description="Required: a missing, empty or blank reason is refused as EmptyReason.",
    )
    # A signed decision token (workflows.contracts.decisions) naming this user as `sub`;
    # required unless the workers run with CHANGEFLOW_DECISION_TOKENS=off. Single use.
    token: str | None = None


class ReviseRequest(PublicInput):
    """An amended prompt: the request is planned again and earlier approvals are void."""

    user_id: uuid.UUID
    prompt: str
    # A signed decision token (workflows.contracts.decisions) naming this user as `sub`;
    # required unless the workers run with CHANGEFLOW_DECISION_TOKENS=off. Single use.
    token: str | None = None


class CancelRequest(PublicInput):
    """The `authorize_cancel` update: a signed cancel decision, verified and recorded by the
    workflow before the typed client sends Temporal's cancel. The reason rides here (an
    encrypted payload), never as the reason of Temporal's cancel, which the server keeps in
    plain text."""

    # None only with tokens off (an operator's cancel naming nobody).
    user_id: uuid.UUID | None = None
    token: str | None = None
    # Why, as the person gave it: the request's reason once the cancel is done.
    reason: str = Field(default="", max_length=MAX_REASON_CHARS)


class PlanSummary(BaseModel):
    plan_id: uuid.UUID
    revision: int
    diff_summary: str
    files_changed: list[str]
    risk_level: RiskLevel
    risk_reasons: list[str]
    token_estimate: int
    content_hash: str
    approval_status: PlanApprovalStatus
    approvals_required: int
    expires_at: datetime | None = None
    # What the change touches of its own verification ("check.py (run by the check command)",
    # one per file; activities.risk): such a plan is never approved by the system.
    changes_verification: list[str] = Field(default_factory=list)


class ApprovalRecord(BaseModel):
    user_id: uuid.UUID
    decision: ApprovalDecision
    content_hash: str
    at: datetime
    reason: str = ""


class DeploymentSummary(BaseModel):
    deployment_id: uuid.UUID
    environment: DeploymentEnvironment
    status: DeploymentStatus
    # 0 = deploying now; n = n deployments of this project and environment ahead of it.
    queue_position: int | None = None
    detail: str = ""
    rollback_deployment_id: uuid.UUID | None = None
    rollback_status: DeploymentStatus | None = None
    log_url: str | None = None


class HoldState(BaseModel):
    hold_id: uuid.UUID
    amount: int
    status: HoldStatus
    settled: int = 0


class PromptRequestStatus(BaseModel):
    """Answer of the `status` query and of every update."""

    prompt_request_id: uuid.UUID
    tenant_id: uuid.UUID
    project_id: uuid.UUID
    requested_by: uuid.UUID
    status: PromptStatus
    reason: str = ""
    step: str = ""
    plan: PlanSummary | None = None
    approvals: list[ApprovalRecord] = Field(default_factory=list)
    deployments: list[DeploymentSummary] = Field(default_factory=list)
    holds: list[HoldState] = Field(default_factory=list)
    token_estimate: int = 0
    tokens_used: int = 0
    tokens_settled: int = 0
    commit_sha: str | None = None


class PromptRequestResult(BaseModel):
    prompt_request_id: uuid.UUID
    status: PromptStatus
    reason: str = ""
    plan_id: uuid.UUID | None = None
    content_hash: str | None = None
    risk_level: RiskLevel | None = None
    commit_sha: str | None = None
    tokens_used: int = 0
    tokens_settled: int = 0
    deployments: list[DeploymentSummary] = Field(default_factory=list)


# --- Delivery activities (internal to the lifecycle). ---


class ApprovalPolicyView(BaseModel):
    approver_roles: list[str]
    approvals_required: dict[str, int]
    auto_approve_max_risk: RiskLevel | None
    plan_ttl_seconds: int
    overspend_tolerance_pct: int
    reminder_before_seconds: int | None = None
    # The tenant has a notification webhook: the lifecycle tells it what waits for approval.
    # Known with the policy, so a tenant without one costs the lifecycle no extra step.
    notifies: bool = False

    def required_for(self, risk: RiskLevel) -> int:
        return max(1, self.approvals_required.get(risk.value, 1))

    def auto_approves(self, risk: RiskLevel, *, changes_verification: bool = False) -> bool:
        """Whether the system approves a plan of this risk by itself. Never one that changes
        what verifies it, whatever the ceiling: its own check could pass anything, so a person
        must look (GitHub's coding agent waits for a person before workflow changes run)."""
        if changes_verification:
            return False
        limit = self.auto_approve_max_risk
        return limit is not None and risk.rank <= limit.rank


class PlanRequest(BaseModel):
    prompt_request_id: uuid.UUID
    tenant_id: uuid.UUID
    project_id: uuid.UUID
    requested_by: uuid.UUID
    prompt: str
    revision: int = Field(default=1, ge=1)
    # The status the request is in while it is planned (the workflow decides it).
    status: PromptStatus = PromptStatus.PLANNING


class PlannedRevision(BaseModel):
    """A new plan revision, plus the policy and roster the approval validators need."""

    plan: PlanSummary
    policy: ApprovalPolicyView
    # user id -> role value, for every user of the tenant.
    roster: dict[uuid.UUID, str]
    # False when the request was closed (e.g. cancelled) while the engine planned.
    open: bool = True
    # The project's `github` connector (Connector.project_id): its changes are pull requests,
    # its checks verify them. None: a plain git project.
    github_connector_id: uuid.UUID | None = None


class OpenApproval(BaseModel):
    prompt_request_id: uuid.UUID
    plan_id: uuid.UUID
    hold_id: uuid.UUID | None
    auto_approved: bool
    # The request's status from now on (approved by policy, or awaiting people) and why.
    status: PromptStatus
    reason: str = ""


class RecordDecision(BaseModel):
    prompt_request_id: uuid.UUID
    plan_id: uuid.UUID
    user_id: uuid.UUID
    decision: ApprovalDecision
    content_hash: str
    reason: str = ""
    # Set when this decision settles the plan (enough approvals, or a rejection): the statuses
    # the plan and the request move to.
    plan_status: PlanApprovalStatus | None = None
    status: PromptStatus | None = None
    status_reason: str = ""


class ApplyChange(BaseModel):
    prompt_request_id: uuid.UUID
    plan_id: uuid.UUID
    # What was approved across holds; more than tolerance above it needs a fresh approval.
    approved_tokens: int
    overspend_tolerance_pct: int
    plan_ttl_seconds: int
    # 1 for the first apply; later rounds rebase onto a default branch that moved meanwhile.
    round: int = 1
    # The request's status while the change is applied and deployed to staging.
    status: PromptStatus = PromptStatus.DEPLOYING_STAGING
    # A conflict with the default branch's head plans the request again on that head (a new
    # revision awaiting approval) instead of failing it.
    replan_on_conflict: bool = False
    # The head the previous round applied onto: the answer says whether the branch moved since
    # by commits no production release made.
    previous_base: str | None = None


class AppliedChangeView(BaseModel):
    commit_sha: str
    tokens_used: int
    # Set when the work overspent, or its rebase changed other lines than approved: a new plan
    # revision (priced at tokens_used, of the diff committed), awaiting approval.
    repriced_plan: PlanSummary | None = None
    reapproval_reason: str = ""
    # The change conflicted with the head and was planned again there: repriced_plan is that
    # revision, with no commit yet (commit_sha is empty); it is applied once approved.
    replanned: bool = False
    # The commit the change was applied onto, and whether the default branch reached it from
    # previous_base by a commit no production release made (a push from outside).
    base_commit: str = ""
    moved_outside: bool = False


class CloseRequestBranch(BaseModel):
    """The request ended: its branch `changeflow/<request id>` is deleted."""

    prompt_request_id: uuid.UUID
    project_id: uuid.UUID


class SetRequestStatus(BaseModel):
    prompt_request_id: uuid.UUID
    status: PromptStatus
    reason: str = ""
    plan_id: uuid.UUID | None = None
    # The current plan's approval status moves with it (expired, cancelled...).
    plan_status: PlanApprovalStatus | None = None
    tokens_used: int | None = None
