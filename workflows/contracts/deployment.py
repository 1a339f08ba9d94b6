"""Payloads of the deployment workflows (DeploymentWorkflow, RollbackWorkflow) and of the
lane and release activities behind them."""

import uuid
from datetime import timedelta

from pydantic import BaseModel, Field
from temporalio.common import RetryPolicy

from models.lifecycle import ChangeJobKind, DeploymentEnvironment, DeploymentStatus
from workflows.contracts.submitted import PublicInput

DEFAULT_DEPLOY_TASK_QUEUE = "changeflow-deploy"

# How long a release step rides out its infrastructure (PostgreSQL, the repository's disk)
# failing before the deployment gives up: longer than a managed database's failover (20-60 s,
# minutes at worst). Only the check's verdict fails a release; an outage only delays it.
OUTAGE_BUDGET = timedelta(minutes=10)
_OUTAGE_BACKOFF_CAP = timedelta(seconds=15)


def retry_through_outages(non_retryable_error_types: list[str]) -> RetryPolicy:
    """Retries from 1 s, doubling up to 15 s apart, until OUTAGE_BUDGET of waiting has passed."""
    cap = _OUTAGE_BACKOFF_CAP.total_seconds()
    ramp = [1.0, 2.0, 4.0, 8.0]  # the doubling before the cap
    flat = max(0.0, OUTAGE_BUDGET.total_seconds() - sum(ramp))
    return RetryPolicy(
        initial_interval=timedelta(seconds=1),
        maximum_interval=_OUTAGE_BACKOFF_CAP,
        maximum_attempts=1 + len(ramp) + int(-(-flat // cap)),
        non_retryable_error_types=non_retryable_error_types,
    )


class GitHubRelease(BaseModel):
    """What a deployment of a GitHub project needs of it: its connector (credentials stay
    with the activities) and the request's pull request."""

    connector_id: uuid.UUID
    # The request's pull request, which production merges (None: a rollback, whose revert is
    # a pull request of its own).
    pull_number: int | None = None
    # Production asks its parent request before it asks GitHub to merge (MERGE_ASKED_SIGNAL)
    # and merges only on its go (MERGE_GO_SIGNAL): a cancel authorized before that is obeyed
    # (nothing merges), one after it is refused (CancelTooLate). False in runs from before.
    asks_before_merging: bool = False


# Production's deployment of a GitHub request is about to ask GitHub to merge (payload
# MergeAsked, to the parent request); the parent's answer (payload MergeAsked, to the
# deployment) when no cancel was authorized before it.
MERGE_ASKED_SIGNAL = "merge_asked"
MERGE_GO_SIGNAL = "merge_go"


class MergeAsked(BaseModel):
    deployment_id: uuid.UUID
    pull_number: int

    def outlived_cancel(self) -> str:
        """What a request or its production deployment says of a Temporal cancel that came once
        this merge went ahead: not obeyed, since GitHub's default branch may hold the change."""
        return (
            f"a cancel came after production deployment {self.deployment_id} asked to merge pull "
            f"request #{self.pull_number}: too late, not obeyed"
        )


class DeploymentInput(BaseModel):
    """Start of a DeploymentWorkflow; its workflow id is ids.deployment_workflow_id."""

    deployment_id: uuid.UUID
    tenant_id: uuid.UUID
    project_id: uuid.UUID
    plan_id: uuid.UUID
    prompt_request_id: uuid.UUID | None = None
    environment: DeploymentEnvironment
    commit_sha: str = Field(min_length=4, max_length=64)
    # Set on a rollback deployment: the deployment it undoes.
    rollback_of: uuid.UUID | None = None
    # Receives `deployment_progress` signals (DeploymentProgress) while this deployment runs.
    parent_workflow_id: str | None = None
    auto_rollback: bool = True
    # Set on the deployment that undoes a cancelled request's release: the commit it undoes.
    # When the environment no longer runs that commit (another release came since), nothing
    # is restored and the undo ends CANCELLED.
    undoes_commit_sha: str | None = None
    deploy_task_queue: str = DEFAULT_DEPLOY_TASK_QUEUE
    # A waiter looks at its place after this many seconds times its position (the turn itself
    # comes by signal); the look also skips a holder that was terminated and never left.
    lane_check_s: float = Field(default=60.0, gt=0)
    # A GitHub project's release (workflows/deployment.py): verified by the tenant's checks on
    # GitHub, as a GitHub Deployment; production merges the pull request first.
    github: GitHubRelease | None = None


class DeploymentProgress(BaseModel):
    deployment_id: uuid.UUID
    environment: DeploymentEnvironment
    status: DeploymentStatus
    # 0 = holds the lane; n = n deployments ahead of this one. None once out of the lane.
    queue_position: int | None = None
    detail: str = ""


class DeploymentResult(BaseModel):
    deployment_id: uuid.UUID
    environment: DeploymentEnvironment
    # How the deployment's run ended (SUCCEEDED, FAILED or CANCELLED).
    status: DeploymentStatus
    # Its status when the workflow ended, as the workflow decided and wrote it: `status`, or
    # ROLLED_BACK once its automatic rollback was verified (None from earlier runs).
    status_now: DeploymentStatus | None = None
    commit_sha: str
    verified: bool
    verification_output: str = ""
    rollback_deployment_id: uuid.UUID | None = None
    rollback_status: DeploymentStatus | None = None
    log_url: str | None = None
    diff_url: str | None = None
    # Refused before release (BASE_MOVED): nothing was released, the change must be rebased.
    base_moved: bool = False
    # What the environment ran before this release (None: nothing released, or not known).
    previous_commit_sha: str | None = None
    # A GitHub project's release: what its checks said (names and links of those that did not
    # pass), and why GitHub did not merge its pull request (production only).
    checks: str | None = None
    not_merged: str | None = None
    # A Temporal cancel that came once production's merge went ahead, which the deployment did
    # not obey (MergeAsked.outlived_cancel): it ended as its release did.
    cancel_refused: str | None = None


class DeploymentState(BaseModel):
    """Answer of the `status` query of DeploymentWorkflow and RollbackWorkflow."""

    deployment_id: uuid.UUID | None
    environment: DeploymentEnvironment | None
    status: DeploymentStatus
    step: str
    commit_sha: str | None = None
    # 0 = holds the lane; n = n deployments ahead; None = not in the lane (yet or any more).
    queue_position: int | None = None
    rollback_of: uuid.UUID | None = None
    rollback_deployment_id: uuid.UUID | None = None
    rollback_status: DeploymentStatus | None = None


class RollbackRequest(PublicInput):
    """An operator's request to restore the release of an earlier SUCCEEDED deployment."""

    tenant_id: uuid.UUID
    target_deployment_id: uuid.UUID
    requested_by: uuid.UUID | None = None
    reason: str = ""
    # A signed decision token (action rollback, request = target_deployment_id) naming
    # requested_by; required unless the workers run with CHANGEFLOW_DECISION_TOKENS=off.
    token: str | None = None
    # The new rollback deployment's id; the workflow id is ids.rollback_workflow_id.
    # Left unset, the workflow derives one deterministically.
    deployment_id: uuid.UUID | None = None
    deploy_task_queue: str = DEFAULT_DEPLOY_TASK_QUEUE


# --- The lane (activities/lane.py): one deployment at a time per project and environment. ---


class LaneTurn(BaseModel):
    """A deployment's position in its lane: 0 = its turn, n = n deployments ahead, None = not
    in the lane. The `lane_turn` signal always says 0."""

    queue_position: int | None


class LanePlace(BaseModel):
    """A deployment workflow's place in the lane of its project and environment: what it leaves,
    and what a waiter looks up (skipping a holder that no longer runs)."""

    project_id: uuid.UUID
    environment: DeploymentEnvironment
    workflow_id: str


# --- Release activities. ---


class RecordDeployment(BaseModel):
    """Create the Deployment row (QUEUED) once; a retry finds the row it made."""

    deployment_id: uuid.UUID
    tenant_id: uuid.UUID
    project_id: uuid.UUID
    plan_id: uuid.UUID
    environment: DeploymentEnvironment
    commit_sha: str
    rollback_of: uuid.UUID | None = None
    workflow_id: str
    # Take a place in the lane in the same transaction (not for a rollback inside a turn).
    enter_lane: bool = False


class DeploymentView(BaseModel):
    deployment_id: uuid.UUID
    tenant_id: uuid.UUID
    project_id: uuid.UUID | None
    plan_id: uuid.UUID
    environment: DeploymentEnvironment
    status: DeploymentStatus
    commit_sha: str | None
    previous_commit_sha: str | None = None
    rollback_of: uuid.UUID | None = None
    log_url: str | None = None
    diff_url: str | None = None
    verification_output: str | None = None
    # Set when the row was recorded with enter_lane: its place in the lane (0 = its turn).
    queue_position: int | None = None


class TransitionDeployment(BaseModel):
    """A status the deployment workflow decided, to persist (mark_deployment)."""

    deployment_id: uuid.UUID
    status: DeploymentStatus
    detail: str | None = None
    # With SUCCEEDED of a rollback: the deployment whose release it replaced, ROLLED_BACK in
    # the same transaction.
    rolls_back: uuid.UUID | None = None


class FindLastGoodRelease(BaseModel):
    project_id: uuid.UUID
    environment: DeploymentEnvironment
    # Excluded from the search: the deployment being undone.
    exclude_deployment_id: uuid.UUID | None = None


class LastGoodRelease(BaseModel):
    commit_sha: str
    # The SUCCEEDED deployment whose release it is; None for a repository fallback.
    deployment_id: uuid.UUID | None
    source: str


class PlanRollback(BaseModel):
    """Resolve an operator's rollback: the target's release and what is live now."""

    tenant_id: uuid.UUID
    target_deployment_id: uuid.UUID


class RollbackPlan(BaseModel):
    tenant_id: uuid.UUID
    project_id: uuid.UUID
    plan_id: uuid.UUID
    prompt_request_id: uuid.UUID | None
    environment: DeploymentEnvironment
    commit_sha: str
    # The deployment live in that environment now, which the rollback undoes.
    live_deployment_id: uuid.UUID
    # The project's `github` connector: the default branch is reverted by a pull request.
    github_connector_id: uuid.UUID | None = None


class ReleaseStep(BaseModel):
    """Release, verify or roll back one deployment's commit through the deploy target."""

    deployment_id: uuid.UUID
    tenant_id: uuid.UUID
    project_id: uuid.UUID
    plan_id: uuid.UUID | None = None
    prompt_request_id: uuid.UUID | None = None
    environment: DeploymentEnvironment
    commit_sha: str
    job_kind: ChangeJobKind = ChangeJobKind.DEPLOY
    # Distinguishes repeated steps of one workflow (e.g. the compensation of a release).
    step: str = Field(default="release", min_length=1, max_length=100)
    # An undo of a cancelled request's release: restore only while the environment still runs
    # this commit (DeploymentInput.undoes_commit_sha).
    undoes_commit_sha: str | None = None


class ReleaseOutcome(BaseModel):
    commit_sha: str
    previous_commit_sha: str | None
    log_url: str
    diff_url: str | None = None


class VerificationOutcome(BaseModel):
    ok: bool
    output: str
    log_url: str
    duration_s: float


class RecordVerdict(BaseModel):
    """Persist a check's verdict (run_check returned it): its output, its job's outcome, and
    after a passing production check the default branch (the status the verdict means is the
    workflow's to decide). Retried through outages; the check is never run again for it."""

    step: ReleaseStep
    verdict: VerificationOutcome
