"""ChangeJob bookkeeping shared by the lifecycle and release activities.

A job's key is derived from the workflow id and the step, so the attempt that retries an
activity finds and updates its own row instead of adding another.
"""

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy.dialects.postgresql import insert
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity

from models import ChangeJob, ChangeJobKind, ChangeJobStatus, ensure_transition
from models.base import utcnow

# An earlier attempt may have ended the job (a check handed back by a worker that stopped,
# a retryable failure); the retry's own outcome is the one the record must show.
_REOPENED_BY_A_RETRY = (ChangeJobStatus.CANCELLED, ChangeJobStatus.FAILED)


def _is_retry() -> bool:
    return activity.in_activity() and activity.info().attempt > 1


def _attempt() -> int:
    return activity.info().attempt if activity.in_activity() else 0


def cancelled_by_workflow() -> bool:
    """Whether the running activity's cancellation is the workflow's decision, as opposed to
    its worker shutting down or the server timing the attempt out (a retry follows those, so
    the job stays open for it)."""
    if activity.is_worker_shutdown():
        return False
    details = activity.cancellation_details()
    return details is None or (details.cancel_requested and not details.worker_shutdown)


async def start_job(
    session: AsyncSession,
    *,
    job_key: str,
    tenant_id: uuid.UUID,
    kind: ChangeJobKind,
    project_id: uuid.UUID | None = None,
    prompt_request_id: uuid.UUID | None = None,
    plan_id: uuid.UUID | None = None,
    deployment_id: uuid.UUID | None = None,
    details: dict[str, Any] | None = None,
) -> ChangeJob:
    """Mark the job RUNNING and count one more attempt; creates the row on the first attempt.
    A retried activity attempt reopens the job an earlier attempt ended cancelled or failed."""
    now = utcnow()
    # Core statement on the session's connection: upserts are not ORM queries.
    connection = await session.connection()
    await connection.execute(
        insert(ChangeJob)
        .values(
            id=uuid.uuid4(),
            job_key=job_key,
            tenant_id=tenant_id,
            kind=kind,
            project_id=project_id,
            prompt_request_id=prompt_request_id,
            plan_id=plan_id,
            deployment_id=deployment_id,
            status=ChangeJobStatus.QUEUED,
            attempts=0,
            details=details or {},
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=[ChangeJob.job_key])
    )
    job = (
        await session.exec(select(ChangeJob).where(ChangeJob.job_key == job_key).with_for_update())
    ).one()
    reopen = job.status in _REOPENED_BY_A_RETRY and _is_retry()
    if job.status in (ChangeJobStatus.QUEUED, ChangeJobStatus.RUNNING) or reopen:
        ensure_transition(job.status, ChangeJobStatus.RUNNING)
        job.status = ChangeJobStatus.RUNNING
        # Attempts that never reached the database (it was down) count too.
        job.attempts = max(job.attempts + 1, _attempt())
        job.started_at = job.started_at or now
        job.updated_at = now
        if reopen:
            job.error = None
            job.finished_at = None
    return job


async def finish_job(
    session: AsyncSession,
    *,
    job_key: str,
    status: ChangeJobStatus,
    error: str | None = None,
    details: dict[str, Any] | None = None,
    finished_at: datetime | None = None,
) -> ChangeJob | None:
    """Record the outcome once; a finished job keeps its first outcome."""
    job = (
        await session.exec(
            select(ChangeJob).where(col(ChangeJob.job_key) == job_key).with_for_update()
        )
    ).one_or_none()
    if job is None or job.status not in (ChangeJobStatus.QUEUED, ChangeJobStatus.RUNNING):
        return job
    ensure_transition(job.status, status)
    job.status = status
    job.error = error
    if details:
        job.details = {**job.details, **details}
    job.finished_at = finished_at or utcnow()
    job.updated_at = job.finished_at
    return job
