"""Delivery activities of the prompt lifecycle: persist and validate the request, plan it through
the change engine, open and record approvals, apply the change, move the request's status.

The workflow decides every status; each activity persists the status it is given, refused by
models.transitions when the move is not allowed, in the same call as the work it goes with, so
the workflow needs one round trip per step. All are safe to retry: rows are found by natural
keys (request id, plan revision, approver) before anything is written again. The short,
database-only ones (open_approval, record_decision, set_request_status) run as local
activities of the workflow's worker.
"""

import hashlib
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import NoReturn

from sqlalchemy.dialects.postgresql import insert
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.change_engine import (
    AppliedChange,
    ChangeAlreadyPresent,
    ChangeEngine,
    ChangeEngineError,
    ChangeProposal,
    ChangeRequestInvalid,
    ChangeStep,
    NothingToChange,
    RebaseConflict,
    RepositoryError,
)
from activities.diffs import parse_unified_diff, same_changed_lines
from activities.git_store import delete_branch, first_parents_since, in_repository
from activities.heartbeats import heartbeating
from activities.jobs import finish_job, start_job
from activities.model_client import ModelRefused
from activities.remote_repository import Repositories, default_repositories
from activities.risk import assess_change, changes_to_verification
from models import (
    Approval,
    ApprovalPolicy,
    ChangeEngineKind,
    ChangeJobKind,
    ChangeJobStatus,
    Connector,
    ConnectorKind,
    ConnectorStatus,
    Deployment,
    DeploymentEnvironment,
    DeploymentPlan,
    DeploymentStatus,
    PlanApprovalStatus,
    Project,
    PromptRequest,
    PromptStatus,
    RiskLevel,
    Tenant,
    User,
    UserRole,
    ensure_transition,
    is_terminal,
)
from models.base import utcnow
from models.db import SessionFactory
from workflows.contracts.errors import ErrorType, refused, refused_quoting
from workflows.contracts.github import DefaultHead
from workflows.contracts.ids import apply_job_key, plan_job_key
from workflows.contracts.lifecycle import (
    REPLANNED_ON_NEW_BASE,
    AppliedChangeView,
    ApplyChange,
    ApprovalPolicyView,
    CloseRequestBranch,
    OpenApproval,
    PlannedRevision,
    PlanRequest,
    PlanSummary,
    RecordDecision,
    SetRequestStatus,
)

_OPEN_PLAN_STATES = (
    PlanApprovalStatus.PENDING,
    PlanApprovalStatus.APPROVED,
    PlanApprovalStatus.AUTO_APPROVED,
)


HEARTBEAT_EVERY_S = 5.0


def request_branch(request_id: uuid.UUID) -> str:
    """The branch a request's change is committed on until it ends."""
    return f"changeflow/{request_id}"


def content_hash(*, prompt_request_id: uuid.UUID, revision: int, diff: str, tokens: int) -> str:
    """What an approver approves: this revision's diff at this price."""
    digest = hashlib.sha256()
    for part in (str(prompt_request_id), str(revision), diff, str(tokens)):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def policy_view(policy: ApprovalPolicy | None, *, notifies: bool = False) -> ApprovalPolicyView:
    policy = policy or ApprovalPolicy(tenant_id=uuid.UUID(int=0))  # the defaults
    return ApprovalPolicyView(
        reminder_before_seconds=policy.reminder_before_seconds,
        notifies=notifies,
        approver_roles=list(policy.approver_roles),
        approvals_required=dict(policy.approvals_required),
        auto_approve_max_risk=policy.auto_approve_max_risk,
        plan_ttl_seconds=policy.plan_ttl_seconds,
        overspend_tolerance_pct=policy.overspend_tolerance_pct,
    )


def plan_summary(plan: DeploymentPlan, policy: ApprovalPolicyView) -> PlanSummary:
    return PlanSummary(
        plan_id=plan.id,
        revision=plan.revision,
        diff_summary=plan.diff_summary,
        files_changed=list(plan.files_changed),
        risk_level=plan.risk_level,
        risk_reasons=list(plan.risk_reasons),
        token_estimate=plan.token_estimate,
        content_hash=plan.content_hash,
        approval_status=plan.approval_status,
        approvals_required=policy.required_for(plan.risk_level),
        expires_at=plan.expires_at,
        changes_verification=changes_to_verification(plan.risk_reasons),
    )


async def _locked_request(session: AsyncSession, request_id: uuid.UUID) -> PromptRequest | None:
    return (
        await session.exec(
            select(PromptRequest).where(PromptRequest.id == request_id).with_for_update()
        )
    ).one_or_none()


async def _plan(session: AsyncSession, plan_id: uuid.UUID) -> DeploymentPlan:
    plan = (
        await session.exec(
            select(DeploymentPlan).where(DeploymentPlan.id == plan_id).with_for_update()
        )
    ).one_or_none()
    if plan is None:
        raise refused(ErrorType.PLAN_NOT_FOUND, f"plan {plan_id} does not exist")
    return plan


async def load_policy(session: AsyncSession, tenant_id: uuid.UUID) -> ApprovalPolicyView:
    policy = (
        await session.exec(select(ApprovalPolicy).where(ApprovalPolicy.tenant_id == tenant_id))
    ).one_or_none()
    webhook = (
        await session.exec(
            select(Connector.id).where(
                Connector.tenant_id == tenant_id,
                Connector.kind == ConnectorKind.WEBHOOK,
                Connector.status != ConnectorStatus.DISABLED,
            )
        )
    ).first()
    return policy_view(policy, notifies=webhook is not None)


async def github_connector_of(session: AsyncSession, project_id: uuid.UUID) -> uuid.UUID | None:
    """The project's `github` connector (the newest one not disabled): its requests become
    pull requests, verified by the tenant's checks (workflows/lifecycle.py)."""
    return (
        await session.exec(
            select(Connector.id)
            .where(
                Connector.project_id == project_id,
                Connector.kind == ConnectorKind.GITHUB,
                Connector.status != ConnectorStatus.DISABLED,
            )
            .order_by(col(Connector.created_at).desc())
        )
    ).first()


def _move(request: PromptRequest, status: PromptStatus, reason: str | None = None) -> None:
    ensure_transition(request.status, status)
    if request.status is not status:
        request.status = status
        request.status_reason = reason or None
        request.updated_at = utcnow()


def _move_plan(plan: DeploymentPlan, status: PlanApprovalStatus) -> None:
    ensure_transition(plan.approval_status, status)
    if plan.approval_status is not status:
        plan.approval_status = status
        plan.decided_at = utcnow()
        plan.updated_at = plan.decided_at


def _new_plan(
    of: PlanRequest | DeploymentPlan,
    revision: int,
    proposal: ChangeProposal,
    policy: ApprovalPolicyView,
) -> DeploymentPlan:
    """A plan revision of the request `of` names (its tenant, request and prompt)."""
    return DeploymentPlan(
        tenant_id=of.tenant_id,
        prompt_request_id=of.prompt_request_id,
        revision=revision,
        prompt=of.prompt,
        base_commit=proposal.base_commit,
        files_changed=list(proposal.files_changed),
        diff=proposal.diff,
        diff_summary=proposal.diff_summary,
        risk_level=proposal.risk_level,
        risk_reasons=list(proposal.risk_reasons),
        token_estimate=proposal.token_estimate,
        content_hash=content_hash(
            prompt_request_id=of.prompt_request_id,
            revision=revision,
            diff=proposal.diff,
            tokens=proposal.token_estimate,
        ),
        expires_at=utcnow() + timedelta(seconds=policy.plan_ttl_seconds),
    )


def _replanned_view(plan: DeploymentPlan, policy: ApprovalPolicyView) -> AppliedChangeView:
    """A revision planned again after a conflict, as apply_change answers it (not applied)."""
    reason = next(
        (r for r in plan.risk_reasons if r.startswith(REPLANNED_ON_NEW_BASE)),
        REPLANNED_ON_NEW_BASE,
    )
    return AppliedChangeView(
        commit_sha="",
        tokens_used=0,
        repriced_plan=plan_summary(plan, policy),
        reapproval_reason=reason,
        replanned=True,
    )


def _replan_failed(conflict: RebaseConflict, exc: ChangeEngineError) -> ChangeEngineError:
    """The engine's error of a re-plan, saying what it was planned again for."""
    message = f"{conflict}; planning it again on the new base failed: {exc}"
    if isinstance(exc, ModelRefused):
        return ModelRefused(exc.kind, message)
    return type(exc)(message)


async def store_decision(session: AsyncSession, req: RecordDecision) -> None:
    """One person's approval or rejection in `session` (not committed); the deciding one also
    settles the plan and moves the request. A replayed decision inserts nothing."""
    request = await _locked_request(session, req.prompt_request_id)
    plan = await _plan(session, req.plan_id)
    # A Core upsert on the session's connection: a replayed decision inserts nothing.
    connection = await session.connection()
    await connection.execute(
        insert(Approval)
        .values(
            id=uuid.uuid4(),
            tenant_id=plan.tenant_id,
            plan_id=plan.id,
            user_id=req.user_id,
            decision=req.decision,
            content_hash=req.content_hash,
            reason=req.reason or None,
            created_at=utcnow(),
        )
        .on_conflict_do_nothing(constraint="uq_approvals_plan_user")
    )
    if request is not None and not is_terminal(request.status):
        if req.plan_status is not None:
            _move_plan(plan, req.plan_status)
        if req.status is not None:
            _move(request, req.status, req.status_reason)


class LifecycleActivities:
    def __init__(
        self,
        sessions: SessionFactory,
        engine: ChangeEngine,
        *,
        engines: dict[ChangeEngineKind, ChangeEngine] | None = None,
        repositories: Repositories | None = None,
        github_head: Callable[[uuid.UUID], Awaitable[DefaultHead]] | None = None,
    ) -> None:
        """`engine` serves projects that choose none; `engines` the projects that do
        (Project.change_engine); `github_head` asks GitHub for a `github` connector's default
        branch and head (GitHubActivities.head_of)."""
        self._sessions = sessions
        self._engine = engine
        self._engines = engines or {}
        self._repositories = repositories or default_repositories(sessions)
        self._github_head = github_head

    async def _planning_repository(self, project: Project, github: uuid.UUID | None) -> Path:
        """The repository to plan in, fetched. A GitHub project plans from the default branch's
        head as GitHub has it: its default branch must be the project's, and the mirror holds
        that head (fetched again when it does not)."""
        repo = await self._repositories.local(project)
        if github is None or self._github_head is None:
            return repo
        try:
            head = await self._github_head(github)
        except ApplicationError as exc:
            if not exc.non_retryable:
                raise  # a rate limit or an outage: Temporal asks again after GitHub's wait
            raise RepositoryError(
                f"GitHub did not say where its default branch is: {exc}"
            ) from None
        if head.branch != project.default_branch:
            raise RepositoryError(
                f"the repository's default branch on GitHub is {head.branch!r}, the project's "
                f"is {project.default_branch!r}: set the project's to GitHub's"
            )
        return await self._repositories.holding(project, head.sha)

    def _engine_of(self, project: Project) -> ChangeEngine:
        if project.change_engine is None:
            return self._engine
        engine = self._engines.get(project.change_engine)
        if engine is None:
            raise refused(
                ErrorType.REPOSITORY_ERROR,
                f"this worker has no {project.change_engine.value} change engine",
            )
        return engine

    async def _validated(
        self, session: AsyncSession, req: PlanRequest
    ) -> tuple[Project, PromptRequest | None]:
        """The project, after refusing an unknown tenant, project or user (the prompt was
        checked by the workflow)."""
        if await session.get(Tenant, req.tenant_id) is None:
            raise refused(ErrorType.UNKNOWN_TENANT, f"tenant {req.tenant_id} does not exist")
        project = await session.get(Project, req.project_id)
        if project is None or project.tenant_id != req.tenant_id:
            raise refused(
                ErrorType.UNKNOWN_PROJECT,
                f"project {req.project_id} does not exist in tenant {req.tenant_id}",
            )
        user = await session.get(User, req.requested_by)
        if user is None:
            raise refused(ErrorType.UNKNOWN_USER, f"user {req.requested_by} does not exist")
        if user.tenant_id != req.tenant_id:
            raise refused(
                ErrorType.USER_OF_ANOTHER_TENANT,
                f"user {req.requested_by} belongs to another tenant",
            )
        return project, await _locked_request(session, req.prompt_request_id)

    async def _engine_failed(self, job_key: str, exc: ChangeEngineError) -> NoReturn:
        # A change the branch already holds is no failure of the job: nothing was left to do.
        present = isinstance(exc, ChangeAlreadyPresent)
        async with self._sessions() as session:
            await finish_job(
                session,
                job_key=job_key,
                status=ChangeJobStatus.SUCCEEDED if present else ChangeJobStatus.FAILED,
                error=None if present else str(exc),
                details={"no_change": str(exc)} if present else None,
            )
            await session.commit()
        if present:
            kind = ErrorType.CHANGE_ALREADY_PRESENT
        elif isinstance(exc, ModelRefused):
            kind = exc.kind
        elif isinstance(exc, ChangeRequestInvalid):
            kind = ErrorType.CHANGE_REQUEST_INVALID
        elif isinstance(exc, RebaseConflict):
            kind = ErrorType.REBASE_CONFLICT
        else:
            kind = ErrorType.REPOSITORY_ERROR
        if exc.public is not None:
            raise refused_quoting(kind, exc.public, str(exc)) from exc
        raise refused(kind, str(exc)) from exc

    @activity.defn
    async def plan_request(self, req: PlanRequest) -> PlannedRevision:
        """Persist the request (PLANNING), plan it with the change engine, store the plan.

        Also loads the tenant's approval policy and roster: the approval validators need them
        and cannot do I/O themselves.
        """
        workflow_id = activity.info().workflow_id
        job_key = plan_job_key(workflow_id, req.revision)
        async with self._sessions() as session:
            project, request = await self._validated(session, req)
            if request is None:
                request = PromptRequest(
                    id=req.prompt_request_id,
                    tenant_id=req.tenant_id,
                    project_id=req.project_id,
                    user_id=req.requested_by,
                    prompt=req.prompt,
                    workflow_id=workflow_id,
                )
                session.add(request)
            if is_terminal(request.status):
                # Closed (cancelled) before planning began: nothing more to do.
                return await self._closed(session, req)
            _move(request, req.status)
            request.prompt = req.prompt
            for old in await self._open_plans(session, req.prompt_request_id):
                if old.revision < req.revision:
                    _move_plan(old, PlanApprovalStatus.SUPERSEDED)
            await session.flush()
            await start_job(
                session,
                job_key=job_key,
                tenant_id=req.tenant_id,
                kind=ChangeJobKind.AI_CHANGE,
                project_id=req.project_id,
                prompt_request_id=req.prompt_request_id,
                details={"step": "plan", "revision": req.revision},
            )
            await session.commit()

        try:
            async with self._sessions() as session:
                github = await github_connector_of(session, project.id)
            proposal = await heartbeating(
                self._engine_of(project).plan(
                    repo=await self._planning_repository(project, github),
                    base_branch=project.default_branch,
                    prompt=req.prompt,
                    step=ChangeStep(req.tenant_id, req.prompt_request_id, req.revision),
                    check_command=project.check_command,
                ),
                every_s=HEARTBEAT_EVERY_S,
            )
        except ChangeEngineError as exc:
            await self._engine_failed(job_key, exc)

        async with self._sessions() as session:
            request = await _locked_request(session, req.prompt_request_id)
            policy = await load_policy(session, req.tenant_id)
            plan = (
                await session.exec(
                    select(DeploymentPlan).where(
                        DeploymentPlan.prompt_request_id == req.prompt_request_id,
                        DeploymentPlan.revision == req.revision,
                    )
                )
            ).one_or_none()
            if plan is None:
                if request is None or request.status is not req.status:
                    # Cancelled while the engine worked: store no plan.
                    await finish_job(session, job_key=job_key, status=ChangeJobStatus.CANCELLED)
                    return await self._closed(session, req)
                plan = _new_plan(req, req.revision, proposal, policy)
                session.add(plan)
                await session.flush()
            await finish_job(
                session,
                job_key=job_key,
                status=ChangeJobStatus.SUCCEEDED,
                details={"plan_id": str(plan.id), "risk_level": plan.risk_level.value},
            )
            roster = await self._roster(session, req.tenant_id)
            await session.commit()
        return PlannedRevision(
            plan=plan_summary(plan, policy),
            policy=policy,
            roster=roster,
            github_connector_id=github,
        )

    async def _closed(self, session: AsyncSession, req: PlanRequest) -> PlannedRevision:
        await session.commit()
        policy = await load_policy(session, req.tenant_id)
        placeholder = PlanSummary(
            plan_id=uuid.UUID(int=0),
            revision=req.revision,
            diff_summary="",
            files_changed=[],
            risk_level=RiskLevel.LOW,
            risk_reasons=[],
            token_estimate=0,
            content_hash="",
            approval_status=PlanApprovalStatus.CANCELLED,
            approvals_required=0,
        )
        return PlannedRevision(plan=placeholder, policy=policy, roster={}, open=False)

    async def _open_plans(
        self, session: AsyncSession, request_id: uuid.UUID
    ) -> list[DeploymentPlan]:
        return list(
            (
                await session.exec(
                    select(DeploymentPlan)
                    .where(
                        DeploymentPlan.prompt_request_id == request_id,
                        col(DeploymentPlan.approval_status).in_(_OPEN_PLAN_STATES),
                    )
                    .with_for_update()
                )
            ).all()
        )

    async def _roster(self, session: AsyncSession, tenant_id: uuid.UUID) -> dict[uuid.UUID, str]:
        users = await session.exec(select(User.id, User.role).where(User.tenant_id == tenant_id))
        return {user_id: UserRole(role).value for user_id, role in users.all()}

    @activity.defn
    async def open_approval(self, req: OpenApproval) -> None:
        """Attach the hold to the plan; approve it by policy or wait for people."""
        async with self._sessions() as session:
            request = await _locked_request(session, req.prompt_request_id)
            plan = await _plan(session, req.plan_id)
            if request is None or is_terminal(request.status):
                return
            plan.hold_id = req.hold_id or plan.hold_id
            if req.auto_approved:
                _move_plan(plan, PlanApprovalStatus.AUTO_APPROVED)
            _move(request, req.status, req.reason)
            await session.commit()

    @activity.defn
    async def record_decision(self, req: RecordDecision) -> None:
        """Store one person's approval or rejection; the deciding one also settles the plan.
        (Runs from before the decision step: a decision now records with its verification,
        activities/decisions.py.)"""
        async with self._sessions() as session:
            await store_decision(session, req)
            await session.commit()

    @activity.defn
    async def apply_change(self, req: ApplyChange) -> AppliedChangeView:
        """Move the request to the status it is given, then have the change engine commit the
        approved plan on the default branch's head, rebased when that branch moved past the
        plan's base.

        When the work used more tokens than approved beyond the tolerance, or the rebased diff
        changes other lines than the approved one, a new plan revision is stored and returned
        with the reason: the workflow has it approved before anything ships.
        """
        workflow_id = activity.info().workflow_id
        job_key = apply_job_key(workflow_id, req.plan_id, req.round)
        async with self._sessions() as session:
            request = await _locked_request(session, req.prompt_request_id)
            plan = await _plan(session, req.plan_id)
            if request is None or request.project_id is None:
                raise refused(ErrorType.REQUEST_CLOSED, "the request has no project")
            project = await session.get(Project, request.project_id)
            if project is None:
                raise refused(ErrorType.UNKNOWN_PROJECT, "the project was removed")
            if req.replan_on_conflict and plan.approval_status is PlanApprovalStatus.SUPERSEDED:
                # An earlier attempt planned the request again: that revision is the answer,
                # whatever the default branch holds now.
                replanned = await self._revision(session, request.id, plan.revision + 1)
                if replanned is not None and replanned.commit_sha is None:
                    return _replanned_view(replanned, await load_policy(session, plan.tenant_id))
            _move(request, req.status)
            await start_job(
                session,
                job_key=job_key,
                tenant_id=plan.tenant_id,
                kind=ChangeJobKind.AI_CHANGE,
                project_id=project.id,
                prompt_request_id=request.id,
                plan_id=plan.id,
                details={"step": "apply"},
            )
            await session.commit()
        proposal = ChangeProposal(
            diff=plan.diff,
            diff_summary=plan.diff_summary,
            files_changed=list(plan.files_changed),
            risk_level=plan.risk_level,
            risk_reasons=list(plan.risk_reasons),
            token_estimate=plan.token_estimate,
            base_commit=plan.base_commit or "",
            commit_sha=plan.commit_sha,
        )
        try:
            repo = await self._repositories.local(project)
            applied = await heartbeating(
                self._engine_of(project).apply(
                    repo=repo,
                    proposal=proposal,
                    prompt=plan.prompt,
                    branch=request_branch(request.id),
                    onto=project.default_branch,
                    step=ChangeStep(plan.tenant_id, request.id, plan.revision),
                ),
                every_s=HEARTBEAT_EVERY_S,
            )
        except RebaseConflict as conflict:
            if not req.replan_on_conflict:
                await self._engine_failed(job_key, conflict)
            return await self._replan(job_key, project, plan, conflict, req)
        except ChangeEngineError as exc:
            await self._engine_failed(job_key, exc)
        moved_outside = await self._moved_outside(
            project, repo, req.previous_base, applied.base_commit
        )

        limit = req.approved_tokens * (100 + req.overspend_tolerance_pct) // 100
        async with self._sessions() as session:
            request = await _locked_request(session, req.prompt_request_id)
            plan = await _plan(session, req.plan_id)
            assert request is not None
            request.tokens_used = applied.tokens_used
            plan.commit_sha = applied.commit_sha
            await finish_job(
                session,
                job_key=job_key,
                status=ChangeJobStatus.SUCCEEDED,
                details={"commit_sha": applied.commit_sha, "tokens_used": applied.tokens_used},
            )
            reasons = []
            if req.round == 1 and applied.tokens_used > limit:
                reasons.append(
                    f"the work used {applied.tokens_used} tokens; {req.approved_tokens} were "
                    "approved"
                )
            if applied.diff and not same_changed_lines(plan.diff, applied.diff):
                reasons.append(
                    f"rebased onto {project.default_branch} at {applied.base_commit[:12]}, the "
                    "diff changes other lines than the approved one"
                )
            repriced = None
            if reasons:
                repriced = await self._revise(
                    session, request, plan, applied, reasons, req, project, repo
                )
            await session.commit()
        return AppliedChangeView(
            commit_sha=applied.commit_sha,
            tokens_used=applied.tokens_used,
            repriced_plan=repriced,
            reapproval_reason="; ".join(reasons),
            base_commit=applied.base_commit,
            moved_outside=moved_outside,
        )

    async def _moved_outside(
        self, project: Project, repo: Path, previous_base: str | None, base: str
    ) -> bool:
        """Whether the default branch went from `previous_base` to `base` by a commit that no
        production release of the project made (a push from outside changeflow, an operator
        rollback's revert commit): moves by other requests shipping are the lane's progress."""
        if previous_base is None or not base or base == previous_base:
            return False
        commits = await first_parents_since(repo, previous_base, base)
        if commits is None:
            return True
        async with self._sessions() as session:
            released = set(
                (
                    await session.exec(
                        select(Deployment.commit_sha).where(
                            Deployment.project_id == project.id,
                            Deployment.environment == DeploymentEnvironment.PRODUCTION,
                            col(Deployment.status).in_(
                                (DeploymentStatus.SUCCEEDED, DeploymentStatus.ROLLED_BACK)
                            ),
                            col(Deployment.commit_sha).in_(commits),
                        )
                    )
                ).all()
            )
        return any(commit not in released for commit in commits)

    async def _replan(
        self,
        apply_key: str,
        project: Project,
        approved: DeploymentPlan,
        conflict: RebaseConflict,
        req: ApplyChange,
    ) -> AppliedChangeView:
        """The approved change conflicts with the default branch's head: the change engine plans
        the request again on that head, as a new revision awaiting approval (a model engine's
        new calls are estimated like any plan's). Only a re-plan that fails fails the request."""
        workflow_id = activity.info().workflow_id
        revision = approved.revision + 1
        reason = f"{REPLANNED_ON_NEW_BASE}: {conflict}"
        plan_key = plan_job_key(workflow_id, revision)
        async with self._sessions() as session:
            await finish_job(
                session, job_key=apply_key, status=ChangeJobStatus.FAILED, error=str(conflict)
            )
            replanned = await self._revision(session, approved.prompt_request_id, revision)
            if replanned is None:
                await start_job(
                    session,
                    job_key=plan_key,
                    tenant_id=approved.tenant_id,
                    kind=ChangeJobKind.AI_CHANGE,
                    project_id=project.id,
                    prompt_request_id=approved.prompt_request_id,
                    details={"step": "re-plan", "revision": revision},
                )
            await session.commit()
        if replanned is None:
            try:
                proposal = await heartbeating(
                    self._engine_of(project).plan(
                        # Fetched by the apply that found the conflict.
                        repo=await self._repositories.local(project, fetch=False),
                        base_branch=project.default_branch,
                        prompt=approved.prompt,
                        step=ChangeStep(approved.tenant_id, approved.prompt_request_id, revision),
                        check_command=project.check_command,
                    ),
                    every_s=HEARTBEAT_EVERY_S,
                )
            except NothingToChange as exc:
                # Planned again on the new head, the prompt changes nothing: what it asks for
                # is there already (shipped by another request, or pushed).
                await self._engine_failed(
                    plan_key,
                    ChangeAlreadyPresent(
                        f"{project.default_branch} already holds this change: planned again on "
                        f"its new head after a conflict ({conflict}), {exc}"
                    ),
                )
            except ChangeEngineError as exc:
                await self._engine_failed(plan_key, _replan_failed(conflict, exc))
        async with self._sessions() as session:
            request = await _locked_request(session, approved.prompt_request_id)
            plan = await _plan(session, approved.id)
            policy = await load_policy(session, plan.tenant_id)
            if request is None or is_terminal(request.status):
                # Cancelled while the engine worked: store no plan.
                await finish_job(session, job_key=plan_key, status=ChangeJobStatus.CANCELLED)
                await session.commit()
                raise refused(ErrorType.REQUEST_CLOSED, "the request was closed while re-planned")
            replanned = await self._revision(session, request.id, revision)
            if replanned is None:
                replanned = _new_plan(plan, revision, proposal, policy)
                replanned.risk_reasons = [*replanned.risk_reasons, reason]
                _move_plan(plan, PlanApprovalStatus.SUPERSEDED)
                session.add(replanned)
                await session.flush()
                await finish_job(
                    session,
                    job_key=plan_key,
                    status=ChangeJobStatus.SUCCEEDED,
                    details={"plan_id": str(replanned.id), "replanned_after": str(conflict)},
                )
            await session.commit()
        return _replanned_view(replanned, policy)

    async def _revision(
        self, session: AsyncSession, request_id: uuid.UUID, revision: int
    ) -> DeploymentPlan | None:
        return (
            await session.exec(
                select(DeploymentPlan).where(
                    DeploymentPlan.prompt_request_id == request_id,
                    DeploymentPlan.revision == revision,
                )
            )
        ).one_or_none()

    async def _revise(
        self,
        session: AsyncSession,
        request: PromptRequest,
        plan: DeploymentPlan,
        applied: AppliedChange,
        reasons: list[str],
        req: ApplyChange,
        project: Project,
        repo: Path,
    ) -> PlanSummary:
        """A new revision of the change as committed (its diff, its base, its price), awaiting
        approval; the approved revision is superseded."""
        policy = await load_policy(session, plan.tenant_id)
        revision = plan.revision + 1
        revised = (
            await session.exec(
                select(DeploymentPlan).where(
                    DeploymentPlan.prompt_request_id == request.id,
                    DeploymentPlan.revision == revision,
                )
            )
        ).one_or_none()
        if revised is None:
            diff = applied.diff or plan.diff
            tokens = max(plan.token_estimate, applied.tokens_used)
            if diff == plan.diff:
                risk_level, risk_reasons = plan.risk_level, list(plan.risk_reasons)
                files, summary = list(plan.files_changed), plan.diff_summary
            else:
                rate = partial(
                    assess_change,
                    diff=diff,
                    base=applied.base_commit,
                    changed=applied.commit_sha,
                    check_command=project.check_command,
                )
                risk_level, risk_reasons = await in_repository(repo, rate)
                files = [f.path for f in parse_unified_diff(diff)]
                summary = f"{plan.diff_summary}\nRebased onto {applied.base_commit[:12]}."
            _move_plan(plan, PlanApprovalStatus.SUPERSEDED)
            revised = DeploymentPlan(
                tenant_id=plan.tenant_id,
                prompt_request_id=plan.prompt_request_id,
                revision=revision,
                prompt=plan.prompt,
                base_commit=applied.base_commit or plan.base_commit,
                files_changed=files,
                diff=diff,
                diff_summary=summary,
                risk_level=risk_level,
                risk_reasons=[*risk_reasons, *reasons],
                token_estimate=tokens,
                content_hash=content_hash(
                    prompt_request_id=plan.prompt_request_id,
                    revision=revision,
                    diff=diff,
                    tokens=tokens,
                ),
                commit_sha=applied.commit_sha,
                expires_at=utcnow() + timedelta(seconds=req.plan_ttl_seconds),
            )
            session.add(revised)
            await session.flush()
        return plan_summary(revised, policy)

    @activity.defn
    async def close_request_branch(self, req: CloseRequestBranch) -> bool:
        """Delete the ended request's branch `changeflow/<id>` (on the remote too): what shipped
        is on the default branch and the environment branches. True when there was one."""
        async with self._sessions() as session:
            project = await session.get(Project, req.project_id)
        if project is None:
            return False
        try:
            repo = await self._repositories.local(project)
            return await delete_branch(repo, request_branch(req.prompt_request_id))
        except ChangeEngineError as exc:  # a leftover branch is no reason to fail the end
            activity.logger.warning("the request's branch stays: %s", exc)
            return False

    @activity.defn
    async def set_request_status(self, req: SetRequestStatus) -> None:
        """Move the request (and its open plans) to a new status, once."""
        async with self._sessions() as session:
            request = await _locked_request(session, req.prompt_request_id)
            if request is None:
                return  # never persisted (refused or cancelled before planning)
            if request.status is req.status:
                return
            _move(request, req.status, req.reason)
            if req.tokens_used is not None:
                request.tokens_used = req.tokens_used
            if req.plan_status is not None:
                for plan in await self._open_plans(session, request.id):
                    if req.plan_id is None or plan.id == req.plan_id:
                        _move_plan(plan, req.plan_status)
            await session.commit()
