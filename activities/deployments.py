"""Deployment rows: recording a deployment (and its place in the lane), persisting the statuses
the deployment workflow decides (mark_deployment, their one writer), and the row helpers the
release and rollback activities share.

Every activity is idempotent: a retry finds the row its first attempt made.
"""

import uuid
from collections.abc import Callable
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import lane
from activities.jobs import finish_job
from models import (
    ChangeJob,
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
from workflows.contracts.deployment import DeploymentView, RecordDeployment, TransitionDeployment
from workflows.contracts.errors import ErrorType, refused

MAX_OUTPUT_CHARS = 20_000
# The statuses a deployment's own run ends in (ROLLED_BACK comes later, from another one).
ENDS_A_RUN = frozenset(
    {DeploymentStatus.SUCCEEDED, DeploymentStatus.FAILED, DeploymentStatus.CANCELLED}
)


def view(row: Deployment, queue_position: int | None = None) -> DeploymentView:
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
        queue_position=queue_position,
    )


def not_found(what: str, kind: ErrorType = ErrorType.DEPLOYMENT_NOT_FOUND) -> ApplicationError:
    return refused(kind, what)


def transition(row: Deployment, status: DeploymentStatus) -> bool:
    """Move the row to `status` (allowed moves only); False when it is there already (a retry)."""
    if row.status is status:
        return False
    try:
        ensure_transition(row.status, status)
    except IllegalTransition as exc:
        raise refused(ErrorType.ILLEGAL_TRANSITION, str(exc)) from None
    now = utcnow()
    row.status = status
    row.updated_at = now
    if status is DeploymentStatus.IN_PROGRESS:
        row.started_at = row.started_at or now
    if status in ENDS_A_RUN:
        row.finished_at = now
    if status is DeploymentStatus.SUCCEEDED:
        row.verified_at = now
    return True


async def locked(session: AsyncSession, deployment_id: uuid.UUID) -> Deployment:
    row = (
        await session.exec(
            select(Deployment).where(Deployment.id == deployment_id).with_for_update()
        )
    ).one_or_none()
    if row is None:
        raise not_found(f"no deployment {deployment_id}")
    return row


async def project_of(session: AsyncSession, row: Deployment) -> Project:
    """The project whose repository the deployment releases from."""
    project = await session.get(Project, row.project_id) if row.project_id else None
    if project is None or not project.repo_url:
        raise not_found(
            f"deployment {row.id} has no project repository to release from",
            ErrorType.PROJECT_NOT_FOUND,
        )
    return project


async def live(
    session: AsyncSession, project_id: uuid.UUID, environment: DeploymentEnvironment
) -> Deployment | None:
    """The deployment whose release the environment runs now (the last that succeeded)."""
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


async def close_open_jobs(
    session: AsyncSession, deployment_id: uuid.UUID, status: ChangeJobStatus, error: str | None
) -> None:
    open_jobs = await session.exec(
        select(ChangeJob.job_key).where(
            ChangeJob.deployment_id == deployment_id,
            col(ChangeJob.status).in_([ChangeJobStatus.QUEUED, ChangeJobStatus.RUNNING]),
        )
    )
    for job_key in open_jobs.all():
        await finish_job(session, job_key=job_key, status=status, error=error)


class DeploymentActivities:
    """Short database work of the deployment workflows (lifecycle queue, local activities)."""

    def __init__(self, sessions: SessionFactory) -> None:
        self._sessions = sessions

    def activities(self) -> list[Callable[..., Any]]:
        return [self.record_deployment, self.mark_deployment]

    @activity.defn(name="record_deployment")
    async def record_deployment(self, request: RecordDeployment) -> DeploymentView:
        """Create the Deployment row (QUEUED) and, when asked, its place at the end of the lane,
        in one transaction."""
        async with self._sessions() as session:
            row = await session.get(Deployment, request.deployment_id)
            if row is None:
                project = await session.get(Project, request.project_id)
                if project is None or project.tenant_id != request.tenant_id:
                    raise not_found(
                        f"no project {request.project_id} for tenant {request.tenant_id}",
                        ErrorType.PROJECT_NOT_FOUND,
                    )
                plan = await session.get(DeploymentPlan, request.plan_id)
                if plan is None or plan.tenant_id != request.tenant_id:
                    raise not_found(
                        f"no plan {request.plan_id} for tenant {request.tenant_id}",
                        ErrorType.PLAN_NOT_FOUND,
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
                await session.flush()
            position = None
            if request.enter_lane:
                position = await lane.enter(
                    session,
                    project_id=request.project_id,
                    environment=request.environment,
                    workflow_id=request.workflow_id,
                    deployment_id=request.deployment_id,
                )
            await session.commit()
            return view(row, position)

    @activity.defn(name="mark_deployment")
    async def mark_deployment(self, request: TransitionDeployment) -> DeploymentView:
        """Persist a status the deployment workflow decided, the one writer of a deployment's
        status: only moves models/transitions.py allows (a retry finds it done). A failed or
        cancelled deployment's unfinished jobs end the same way; a verified rollback's
        success makes the deployment it replaced ROLLED_BACK in the same transaction."""
        async with self._sessions() as session:
            row = await locked(session, request.deployment_id)
            if transition(row, request.status):
                if request.detail:
                    row.verification_output = request.detail[:MAX_OUTPUT_CHARS]
                job_status = (
                    ChangeJobStatus.CANCELLED
                    if request.status is DeploymentStatus.CANCELLED
                    else ChangeJobStatus.FAILED
                )
                if request.status in (DeploymentStatus.CANCELLED, DeploymentStatus.FAILED):
                    await close_open_jobs(session, row.id, job_status, request.detail)
            if request.rolls_back is not None and request.status is DeploymentStatus.SUCCEEDED:
                await _roll_back(session, request.rolls_back)
            await session.commit()
            return view(row)


async def _roll_back(session: AsyncSession, deployment_id: uuid.UUID) -> None:
    """The deployment a verified rollback replaced becomes ROLLED_BACK; one whose run has not
    ended (the lane runs one at a time, so none should) is left to end as its workflow says."""
    undone = await locked(session, deployment_id)
    try:
        ensure_transition(undone.status, DeploymentStatus.ROLLED_BACK)
    except IllegalTransition:
        activity.logger.warning(
            "deployment %s is %s: not marked rolled back", undone.id, undone.status.value
        )
        return
    transition(undone, DeploymentStatus.ROLLED_BACK)
