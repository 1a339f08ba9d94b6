"""Deployment bookkeeping and releases: Deployment rows, their ChangeJobs, the deployment lane,
and release / verify / roll back through a DeployTarget.

Every activity is idempotent: a retry finds the rows and the release its first attempt made.
"""

import asyncio
import contextlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity
from temporalio.client import Client, WithStartWorkflowOperation
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError

from activities.change_engine import RepositoryError
from activities.deploy_target import DeployTarget, DeployTargetError
from activities.git_store import fast_forward, is_ancestor, resolve_commit, restore_tree
from activities.heartbeats import heartbeating
from activities.jobs import cancelled_by_workflow, finish_job, start_job
from models import (
    ChangeJob,
    ChangeJobKind,
    ChangeJobStatus,
    Deployment,
    DeploymentEnvironment,
    DeploymentPlan,
    DeploymentStatus,
    IllegalTransition,
    Project,
    ensure_transition,
)
from models.base import utcnow
from models.db import SessionFactory
from workflows import search_attributes as sa
from workflows.contracts.deployment import (
    BASE_MOVED,
    DeploymentView,
    EnterLane,
    FindLastGoodRelease,
    LaneInput,
    LaneRelease,
    LaneRequest,
    LaneTurn,
    LastGoodRelease,
    LeaveLane,
    PlanRollback,
    RecordDeployment,
    ReleaseOutcome,
    ReleaseStep,
    RollbackPlan,
    TransitionDeployment,
    VerificationOutcome,
    lane_workflow_id,
)

# Error types (ApplicationError.type), all non-retryable.
DEPLOYMENT_NOT_FOUND = "DeploymentNotFound"
PROJECT_NOT_FOUND = "ProjectNotFound"
PLAN_NOT_FOUND = "PlanNotFound"
ROLLBACK_TARGET_NEVER_SUCCEEDED = "RollbackTargetNeverSucceeded"
ROLLBACK_TARGET_IS_LIVE = "RollbackTargetIsLive"
NO_RELEASE_TO_RESTORE = "NoReleaseToRestore"
NON_RETRYABLE_ERRORS = [
    "IllegalTransition",
    # The deploy target's errors (activities.deploy_target), by class name.
    "DeployTargetError",
    "UnknownCommit",
    "InvalidEnvironment",
    "ReleaseConflict",
    DEPLOYMENT_NOT_FOUND,
    PROJECT_NOT_FOUND,
    PLAN_NOT_FOUND,
    ROLLBACK_TARGET_NEVER_SUCCEEDED,
    ROLLBACK_TARGET_IS_LIVE,
    NO_RELEASE_TO_RESTORE,
    BASE_MOVED,
]

LANE_WORKFLOW = "DeploymentLaneWorkflow"
HEARTBEAT_EVERY_S = 2.0
MAX_OUTPUT_CHARS = 20_000


def _view(row: Deployment) -> DeploymentView:
    return DeploymentView(
        deployment_id=row.id,
        tenant_id=row.tenant_id,
        project_id=row.project_id,
        plan_id=row.plan_id,
        environment=row.environment,
        status=row.status,
        commit_sha=row.commit_sha,
        previous_commit_sha=row.previous_commit_sha,
        rollback_of=row.rollback_of_id,
        log_url=row.log_url,
        diff_url=row.diff_url,
        verification_output=row.verification_output,
    )


def _not_found(what: str, kind: str = DEPLOYMENT_NOT_FOUND) -> ApplicationError:
    return ApplicationError(what, type=kind, non_retryable=True)


def _transition(row: Deployment, status: DeploymentStatus) -> bool:
    """Move the row to `status` (allowed moves only); False when it is there already (a retry)."""
    if row.status is status:
        return False
    try:
        ensure_transition(row.status, status)
    except IllegalTransition as exc:
        raise ApplicationError(str(exc), type="IllegalTransition", non_retryable=True) from None
    now = utcnow()
    row.status = status
    row.updated_at = now
    if status is DeploymentStatus.IN_PROGRESS:
        row.started_at = row.started_at or now
    if status in (DeploymentStatus.SUCCEEDED, DeploymentStatus.FAILED, DeploymentStatus.CANCELLED):
        row.finished_at = now
    if status is DeploymentStatus.SUCCEEDED:
        row.verified_at = now
    return True


def _job_key(step: ReleaseStep, suffix: str) -> str:
    return f"{activity.info().workflow_id}:{step.step}:{suffix}:{step.deployment_id}"


async def _default_branch_head(project: Project) -> str | None:
    if not project.repo_url:
        return None
    with contextlib.suppress(RepositoryError, OSError):
        return await resolve_commit(Path(project.repo_url), project.default_branch)
    return None


def _file_url(path: str) -> str:
    return Path(os.path.abspath(path)).as_uri()


class ReleaseActivities:
    def __init__(
        self,
        *,
        sessions: SessionFactory,
        target: DeployTarget,
        client: Client,
    ) -> None:
        self._sessions = sessions
        self._target = target
        self._client = client

    def lifecycle_activities(self) -> list[Callable[..., Any]]:
        """Bookkeeping and the lane, for the lifecycle task queue."""
        return [
            self.record_deployment,
            self.mark_deployment,
            self.enter_deployment_lane,
            self.leave_deployment_lane,
            self.plan_rollback,
        ]

    def deploy_activities(self) -> list[Callable[..., Any]]:
        """Work on the project's repository, for the deploy task queue."""
        return [
            self.find_last_good_release,
            self.release_deployment,
            self.verify_deployment,
            self.compensate_deployment,
        ]

    # --- Deployment rows (lifecycle queue) ---

    @activity.defn(name="record_deployment")
    async def record_deployment(self, request: RecordDeployment) -> DeploymentView:
        async with self._sessions() as session:
            row = await session.get(Deployment, request.deployment_id)
            if row is None:
                project = await session.get(Project, request.project_id)
                if project is None or project.tenant_id != request.tenant_id:
                    raise _not_found(
                        f"no project {request.project_id} for tenant {request.tenant_id}",
                        PROJECT_NOT_FOUND,
                    )
                plan = await session.get(DeploymentPlan, request.plan_id)
                if plan is None or plan.tenant_id != request.tenant_id:
                    raise _not_found(
                        f"no plan {request.plan_id} for tenant {request.tenant_id}",
                        PLAN_NOT_FOUND,
                    )
                row = Deployment(
                    id=request.deployment_id,
                    tenant_id=request.tenant_id,
                    project_id=request.project_id,
                    plan_id=request.plan_id,
                    environment=request.environment,
                    status=DeploymentStatus.QUEUED,
                    rollback_of_id=request.rollback_of,
                    commit_sha=request.commit_sha,
                    workflow_id=request.workflow_id,
                )
                session.add(row)
                await session.commit()
            return _view(row)

    @activity.defn(name="mark_deployment")
    async def mark_deployment(self, request: TransitionDeployment) -> DeploymentView:
        """Record a status the workflow decided (e.g. CANCELLED while queued, FAILED release);
        its unfinished jobs end with the same outcome."""
        async with self._sessions() as session:
            row = await self._locked(session, request.deployment_id)
            if _transition(row, request.status):
                if request.detail:
                    row.verification_output = request.detail[:MAX_OUTPUT_CHARS]
                job_status = (
                    ChangeJobStatus.CANCELLED
                    if request.status is DeploymentStatus.CANCELLED
                    else ChangeJobStatus.FAILED
                )
                if request.status in (DeploymentStatus.CANCELLED, DeploymentStatus.FAILED):
                    await self._close_open_jobs(session, row.id, job_status, request.detail)
            await session.commit()
            return _view(row)

    # --- The lane (lifecycle queue): sent with start, so the lane exists when it is needed ---

    @activity.defn(name="enter_deployment_lane")
    async def enter_deployment_lane(self, request: EnterLane) -> LaneTurn | None:
        """Queue up in the lane (starting it if need be) and return the position the lane
        gave: 0 is the turn, so an uncontended deployment waits for no signal. (None only in
        histories of the signal-only version.)"""
        lane: WithStartWorkflowOperation[Any, Any] = WithStartWorkflowOperation(
            LANE_WORKFLOW,
            LaneInput(project_id=request.project_id, environment=request.environment),
            id=lane_workflow_id(request.project_id, request.environment),
            task_queue=request.lane_task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            search_attributes=_lane_attributes(request.project_id, request.environment),
            static_summary=_lane_summary(request.project_id, request.environment),
        )
        # The update waits for the lane's answer: heartbeating while it is outstanding.
        turn: LaneTurn = await heartbeating(
            self._client.execute_update_with_start_workflow(
                "enter",
                LaneRequest(
                    deployment_workflow_id=request.deployment_workflow_id,
                    deployment_id=request.deployment_id,
                ),
                start_workflow_operation=lane,
                result_type=LaneTurn,
            ),
            every_s=HEARTBEAT_EVERY_S,
        )
        return turn

    @activity.defn(name="leave_deployment_lane")
    async def leave_deployment_lane(self, request: LeaveLane) -> None:
        await self._signal_lane(
            request.project_id,
            request.environment,
            request.lane_task_queue,
            "release",
            LaneRelease(deployment_workflow_id=request.deployment_workflow_id),
        )

    async def _signal_lane(
        self,
        project_id: uuid.UUID,
        environment: DeploymentEnvironment,
        task_queue: str,
        signal: str,
        payload: LaneRequest | LaneRelease,
    ) -> None:
        await self._client.start_workflow(
            LANE_WORKFLOW,
            LaneInput(project_id=project_id, environment=environment),
            id=lane_workflow_id(project_id, environment),
            task_queue=task_queue,
            start_signal=signal,
            start_signal_args=[payload],
            search_attributes=_lane_attributes(project_id, environment),
            static_summary=_lane_summary(project_id, environment),
        )

    # --- Operator rollback (lifecycle queue) ---

    @activity.defn(name="plan_rollback")
    async def plan_rollback(self, request: PlanRollback) -> RollbackPlan:
        """Check an operator's rollback target and find what is live; writes nothing."""
        async with self._sessions() as session:
            target = await session.get(Deployment, request.target_deployment_id)
            if target is None or target.tenant_id != request.tenant_id:
                raise _not_found(
                    f"no deployment {request.target_deployment_id} for tenant {request.tenant_id}"
                )
            if target.project_id is None or target.commit_sha is None:
                raise _not_found(f"deployment {target.id} has no project or commit any more")
            if target.verified_at is None:
                raise ApplicationError(
                    f"deployment {target.id} never succeeded (status {target.status.value}); "
                    "only a verified release can be restored",
                    type=ROLLBACK_TARGET_NEVER_SUCCEEDED,
                    non_retryable=True,
                )
            live = await self._live(session, target.project_id, target.environment)
            if live is None:
                raise ApplicationError(
                    f"nothing is live in {target.environment.value} to roll back",
                    type=NO_RELEASE_TO_RESTORE,
                    non_retryable=True,
                )
            if live.commit_sha == target.commit_sha:
                raise ApplicationError(
                    f"the release of deployment {target.id} ({target.commit_sha}) is already "
                    f"live in {target.environment.value} (deployment {live.id})",
                    type=ROLLBACK_TARGET_IS_LIVE,
                    non_retryable=True,
                )
            plan = await session.get(DeploymentPlan, target.plan_id)
            return RollbackPlan(
                tenant_id=target.tenant_id,
                project_id=target.project_id,
                plan_id=target.plan_id,
                prompt_request_id=plan.prompt_request_id if plan else None,
                environment=target.environment,
                commit_sha=target.commit_sha,
                live_deployment_id=live.id,
            )

    # --- Releases (deploy queue) ---

    @activity.defn(name="find_last_good_release")
    async def find_last_good_release(self, request: FindLastGoodRelease) -> LastGoodRelease:
        """The release to restore: the last SUCCEEDED deployment of the project and environment;
        before any, what the environment branch held, else the project's default branch."""
        async with self._sessions() as session:
            query = (
                select(Deployment)
                .where(
                    Deployment.project_id == request.project_id,
                    Deployment.environment == request.environment,
                    Deployment.status == DeploymentStatus.SUCCEEDED,
                    col(Deployment.commit_sha).is_not(None),
                )
                .order_by(col(Deployment.finished_at).desc())
                .limit(1)
            )
            if request.exclude_deployment_id:
                query = query.where(Deployment.id != request.exclude_deployment_id)
            good = (await session.exec(query)).first()
            if good is not None and good.commit_sha:
                return LastGoodRelease(
                    commit_sha=good.commit_sha, deployment_id=good.id, source="last succeeded"
                )
            if request.exclude_deployment_id:
                failed = await session.get(Deployment, request.exclude_deployment_id)
                if failed is not None and failed.previous_commit_sha:
                    return LastGoodRelease(
                        commit_sha=failed.previous_commit_sha,
                        deployment_id=None,
                        source="environment branch before the failed release",
                    )
            project = await session.get(Project, request.project_id)
        if project is not None:
            head = await _default_branch_head(project)
            if head:
                return LastGoodRelease(
                    commit_sha=head,
                    deployment_id=None,
                    source=f"default branch {project.default_branch}",
                )
        raise ApplicationError(
            f"no earlier release of project {request.project_id} in "
            f"{request.environment.value} to restore",
            type=NO_RELEASE_TO_RESTORE,
            non_retryable=True,
        )

    @activity.defn(name="release_deployment")
    async def release_deployment(self, step: ReleaseStep) -> ReleaseOutcome:
        """IN_PROGRESS, then put the commit on the environment branch (a ROLLBACK job when the
        deployment restores an earlier release)."""
        async with self._sessions() as session:
            row = await self._locked(session, step.deployment_id)
            repo = await self._repo(session, row)
        # Recorded before releasing, so compensation knows what to restore even if this
        # attempt dies half-way and a retry finds its own commit already released.
        current = await self._target.current_release(repo=repo, environment=row.environment.value)
        job_key = _job_key(step, step.job_kind.value)
        async with self._sessions() as session:
            row = await self._locked(session, step.deployment_id)
            if row.status is DeploymentStatus.QUEUED:
                _transition(row, DeploymentStatus.IN_PROGRESS)
            if row.previous_commit_sha is None and current != step.commit_sha:
                row.previous_commit_sha = current
            await start_job(
                session,
                job_key=job_key,
                tenant_id=row.tenant_id,
                kind=step.job_kind,
                project_id=row.project_id,
                prompt_request_id=step.prompt_request_id,
                plan_id=row.plan_id,
                deployment_id=row.id,
                details={"commit_sha": step.commit_sha, "environment": row.environment.value},
            )
            await session.commit()
            previous = row.previous_commit_sha
            project = await session.get(Project, row.project_id)
        if row.environment is DeploymentEnvironment.PRODUCTION and step.job_kind is not (
            ChangeJobKind.ROLLBACK
        ):
            await self._refuse_moved_base(repo, project, step, job_key)
        try:
            if step.job_kind is ChangeJobKind.ROLLBACK:
                result = await heartbeating(
                    self._target.rollback(
                        repo=repo,
                        environment=row.environment.value,
                        to_commit_sha=step.commit_sha,
                        deployment_id=row.id,
                    ),
                    every_s=HEARTBEAT_EVERY_S,
                )
            else:
                result = await heartbeating(
                    self._target.release(
                        repo=repo,
                        environment=row.environment.value,
                        commit_sha=step.commit_sha,
                        deployment_id=row.id,
                    ),
                    every_s=HEARTBEAT_EVERY_S,
                )
        except DeployTargetError as exc:
            await self._fail_job(job_key, exc)
            raise _target_error(exc) from None
        log_url = _file_url(result.log_path)
        async with self._sessions() as session:
            row = await self._locked(session, step.deployment_id)
            row.previous_commit_sha = row.previous_commit_sha or result.previous_commit_sha
            previous = row.previous_commit_sha
            row.log_url = log_url
            if result.diff_path:
                row.diff_url = _file_url(result.diff_path)
            row.updated_at = utcnow()
            await finish_job(
                session,
                job_key=job_key,
                status=ChangeJobStatus.SUCCEEDED,
                details={"previous_commit_sha": previous, "log_path": result.log_path},
            )
            await session.commit()
        return ReleaseOutcome(
            commit_sha=result.commit_sha,
            previous_commit_sha=previous,
            log_url=log_url,
            diff_url=row.diff_url,
        )

    @activity.defn(name="verify_deployment")
    async def verify_deployment(self, step: ReleaseStep) -> VerificationOutcome:
        """VERIFYING, run the project's check command against the release, then SUCCEEDED (and
        the deployment a rollback undid becomes ROLLED_BACK) or FAILED."""
        job_key = _job_key(step, "validation")
        async with self._sessions() as session:
            row = await self._locked(session, step.deployment_id)
            repo = await self._repo(session, row)
            project = await session.get(Project, row.project_id)
            check_command = project.check_command if project else ""
            if row.status is DeploymentStatus.IN_PROGRESS:
                _transition(row, DeploymentStatus.VERIFYING)
            await start_job(
                session,
                job_key=job_key,
                tenant_id=row.tenant_id,
                kind=ChangeJobKind.VALIDATION,
                project_id=row.project_id,
                prompt_request_id=step.prompt_request_id,
                plan_id=row.plan_id,
                deployment_id=row.id,
                details={"check_command": check_command, "commit_sha": step.commit_sha},
            )
            await session.commit()
        try:
            if check_command.strip():
                result = await heartbeating(
                    self._target.verify(
                        repo=repo,
                        environment=row.environment.value,
                        commit_sha=step.commit_sha,
                        check_command=check_command,
                        deployment_id=row.id,
                    ),
                    every_s=HEARTBEAT_EVERY_S,
                )
                ok, output, duration = result.ok, result.output, result.duration_s
                log_url: str | None = _file_url(result.log_path)
            else:
                ok, output, duration, log_url = True, "no check command configured", 0.0, None
        except asyncio.CancelledError:
            if cancelled_by_workflow():
                async with self._sessions() as session:
                    await finish_job(
                        session,
                        job_key=job_key,
                        status=ChangeJobStatus.CANCELLED,
                        error="cancelled",
                    )
                    await session.commit()
            raise
        except DeployTargetError as exc:
            await self._fail_job(job_key, exc)
            raise _target_error(exc) from None
        async with self._sessions() as session:
            row = await self._locked(session, step.deployment_id)
            row.verification_output = output[-MAX_OUTPUT_CHARS:]
            row.log_url = log_url or row.log_url
            if row.status is DeploymentStatus.VERIFYING:
                _transition(row, DeploymentStatus.SUCCEEDED if ok else DeploymentStatus.FAILED)
                if ok and row.rollback_of_id is not None:
                    undone = await self._locked(session, row.rollback_of_id)
                    if undone.status in (
                        DeploymentStatus.SUCCEEDED,
                        DeploymentStatus.FAILED,
                        DeploymentStatus.CANCELLED,
                    ):
                        _transition(undone, DeploymentStatus.ROLLED_BACK)
            await finish_job(
                session,
                job_key=job_key,
                status=ChangeJobStatus.SUCCEEDED if ok else ChangeJobStatus.FAILED,
                error=None if ok else output[-2000:],
                details={"duration_s": duration, "ok": ok},
            )
            await session.commit()
        if ok and row.environment is DeploymentEnvironment.PRODUCTION and project is not None:
            # Still in the lane: the next production deployment sees the default branch moved.
            await self._ship_to_default_branch(repo, project, row, step)
        return VerificationOutcome(
            ok=ok, output=output[-MAX_OUTPUT_CHARS:], log_url=log_url or "", duration_s=duration
        )

    @activity.defn(name="compensate_deployment")
    async def compensate_deployment(self, step: ReleaseStep) -> DeploymentView:
        """Undo a cancelled deployment: CANCELLED, and when something was released, restore
        what the environment ran before (ROLLBACK job), then ROLLED_BACK."""
        async with self._sessions() as session:
            row = await self._locked(session, step.deployment_id)
            if row.status in (DeploymentStatus.SUCCEEDED, DeploymentStatus.ROLLED_BACK):
                return _view(row)  # finished before the cancellation, or already undone
            released = row.status is not DeploymentStatus.QUEUED or row.started_at is not None
            if row.status in (
                DeploymentStatus.QUEUED,
                DeploymentStatus.IN_PROGRESS,
                DeploymentStatus.VERIFYING,
            ):
                _transition(row, DeploymentStatus.CANCELLED)
            await self._close_open_jobs(session, row.id, ChangeJobStatus.CANCELLED, "cancelled")
            await session.commit()
            if not released:
                return _view(row)
            repo = await self._repo(session, row)
            restore = row.previous_commit_sha
        if restore is None:
            assert row.project_id is not None
            restore = (
                await self.find_last_good_release(
                    FindLastGoodRelease(
                        project_id=row.project_id,
                        environment=row.environment,
                        exclude_deployment_id=row.id,
                    )
                )
            ).commit_sha
        job_key = _job_key(step, "compensation")
        async with self._sessions() as session:
            await start_job(
                session,
                job_key=job_key,
                tenant_id=row.tenant_id,
                kind=ChangeJobKind.ROLLBACK,
                project_id=row.project_id,
                prompt_request_id=step.prompt_request_id,
                plan_id=row.plan_id,
                deployment_id=row.id,
                details={"restore_commit_sha": restore, "reason": "cancelled mid-deploy"},
            )
            await session.commit()
        try:
            result = await self._target.rollback(
                repo=repo,
                environment=row.environment.value,
                to_commit_sha=restore,
                # The target keys releases by deployment; the undo is a release of its own.
                deployment_id=uuid.uuid5(row.id, "compensation"),
            )
        except DeployTargetError as exc:
            await self._fail_job(job_key, exc)
            raise _target_error(exc) from None
        async with self._sessions() as session:
            row = await self._locked(session, step.deployment_id)
            _transition(row, DeploymentStatus.ROLLED_BACK)
            row.log_url = _file_url(result.log_path)
            await finish_job(session, job_key=job_key, status=ChangeJobStatus.SUCCEEDED)
            await session.commit()
            return _view(row)

    # --- the default branch follows production ---

    async def _refuse_moved_base(
        self, repo: Path, project: Project | None, step: ReleaseStep, job_key: str
    ) -> None:
        """A change must hold everything shipped before it: refuse, before releasing anything,
        a commit that does not descend from the default branch (it moved since the commit)."""
        if project is None:
            return
        head = await resolve_commit(repo, f"refs/heads/{project.default_branch}")
        if head is None or await is_ancestor(repo, head, step.commit_sha):
            return
        message = (
            f"{project.default_branch} moved to {head[:12]} since {step.commit_sha[:12]} was "
            "committed; the change must be rebased onto it before it ships"
        )
        await self._fail_job(job_key, RuntimeError(message))
        raise ApplicationError(message, type=BASE_MOVED, non_retryable=True)

    async def _ship_to_default_branch(
        self, repo: Path, project: Project, row: Deployment, step: ReleaseStep
    ) -> None:
        """After production verified: the default branch holds what production runs. A change
        fast-forwards it; a rollback adds a revert commit of the restored tree (nothing when
        the branch holds that tree already, as after an automatic rollback)."""
        branch = project.default_branch
        if step.job_kind is ChangeJobKind.ROLLBACK:
            message = (
                f"Revert {branch} to {step.commit_sha[:12]}, restored in production\n\n"
                f"Production was rolled back by deployment {row.id}"
                + (f" (undoing deployment {row.rollback_of_id})" if row.rollback_of_id else "")
                + f"; {branch} now holds the tree production runs.\n"
            )
            await restore_tree(repo, branch, step.commit_sha, message)
        elif not await fast_forward(repo, branch, step.commit_sha):
            # Only a push from outside the lane gets here (releases refuse a moved base).
            activity.logger.warning(
                "%s moved past %s while it was verified; left as it is",
                branch,
                step.commit_sha[:12],
            )

    # --- helpers ---

    async def _locked(self, session: AsyncSession, deployment_id: uuid.UUID) -> Deployment:
        row = (
            await session.exec(
                select(Deployment).where(Deployment.id == deployment_id).with_for_update()
            )
        ).one_or_none()
        if row is None:
            raise _not_found(f"no deployment {deployment_id}")
        return row

    async def _repo(self, session: AsyncSession, row: Deployment) -> Path:
        project = await session.get(Project, row.project_id) if row.project_id else None
        if project is None or not project.repo_url:
            raise _not_found(
                f"deployment {row.id} has no project repository to release from",
                PROJECT_NOT_FOUND,
            )
        return Path(project.repo_url)

    async def _live(
        self, session: AsyncSession, project_id: uuid.UUID, environment: DeploymentEnvironment
    ) -> Deployment | None:
        return (
            await session.exec(
                select(Deployment)
                .where(
                    Deployment.project_id == project_id,
                    Deployment.environment == environment,
                    Deployment.status == DeploymentStatus.SUCCEEDED,
                )
                .order_by(col(Deployment.finished_at).desc())
                .limit(1)
            )
        ).first()

    async def _close_open_jobs(
        self,
        session: AsyncSession,
        deployment_id: uuid.UUID,
        status: ChangeJobStatus,
        error: str | None,
    ) -> None:
        open_jobs = await session.exec(
            select(ChangeJob.job_key).where(
                ChangeJob.deployment_id == deployment_id,
                col(ChangeJob.status).in_([ChangeJobStatus.QUEUED, ChangeJobStatus.RUNNING]),
            )
        )
        for job_key in open_jobs.all():
            await finish_job(session, job_key=job_key, status=status, error=error)

    async def _fail_job(self, job_key: str, exc: Exception) -> None:
        async with self._sessions() as session:
            await finish_job(
                session, job_key=job_key, status=ChangeJobStatus.FAILED, error=str(exc)
            )
            await session.commit()


def _lane_attributes(
    project_id: uuid.UUID, environment: DeploymentEnvironment
) -> TypedSearchAttributes:
    """The lane's search attributes, set at start so the lane need not upsert them."""
    return TypedSearchAttributes(
        [
            SearchAttributePair(sa.PROJECT_ID, str(project_id)),
            SearchAttributePair(sa.ENVIRONMENT, environment.value),
        ]
    )


def _lane_summary(project_id: uuid.UUID, environment: DeploymentEnvironment) -> str:
    return f"Deployment lane of project {project_id} ({environment.value})"


def _target_error(exc: DeployTargetError) -> ApplicationError:
    """The target's errors do not get better by retrying."""
    return ApplicationError(str(exc), type=type(exc).__name__, non_retryable=True)
