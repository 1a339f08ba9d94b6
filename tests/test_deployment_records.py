"""Deployment records stay true when a worker stops mid-step: the retried attempt reopens and
counts on its job, and whether a deployment ever succeeded is its own history, not a job row.
The release activities write facts; a deployment's status is only what mark_deployment is told
(the workflow's decision), here told as DeploymentWorkflow would tell it."""

import asyncio
import dataclasses
import uuid
from pathlib import Path

import pytest
from sqlmodel import col, delete, select
from temporalio.activity import ActivityCancellationDetails
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.deploy_target import GitDeployTarget, VerificationResult
from activities.deployments import DeploymentActivities
from activities.releases import ReleaseActivities
from activities.rollbacks import RollbackActivities
from models import (
    ChangeJob,
    ChangeJobKind,
    ChangeJobStatus,
    Deployment,
    DeploymentEnvironment,
    DeploymentPlan,
    DeploymentStatus,
    Project,
    PromptRequest,
)
from models.db import SessionFactory
from tests.factories import make_project, make_tenant
from tests.lifecycle_support import git, make_shop
from workflows.contracts.deployment import (
    PlanRollback,
    RecordDeployment,
    ReleaseStep,
    TransitionDeployment,
)
from workflows.contracts.errors import ErrorType


class HeldCheck:
    """A deploy target whose check passes, held open while `open` is clear (a long check)."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.open.set()
        self.reached = asyncio.Event()

    async def verify(self, **_: object) -> VerificationResult:
        self.reached.set()
        await self.open.wait()
        return VerificationResult(ok=True, output="ok", log_path="/tmp/check.log", duration_s=0.1)


def attempt(n: int) -> ActivityEnvironment:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=n, workflow_id=f"deploy-{n}-{uuid.uuid4()}")
    return env


def same_workflow(env: ActivityEnvironment, n: int) -> ActivityEnvironment:
    retry = ActivityEnvironment()
    retry.info = dataclasses.replace(env.info, attempt=n)
    return retry


class Rows:
    def __init__(self, sessions: SessionFactory, releases: ReleaseActivities) -> None:
        self.sessions = sessions
        self.releases = releases
        self.deployments = DeploymentActivities(sessions)
        self.rollbacks = RollbackActivities(sessions)

    async def plan(self, project: Project | None = None) -> DeploymentPlan:
        """A plan of `project` (by default, one of a new tenant with no repository)."""
        if project is None:
            tenant = await make_tenant(self.sessions)
            project = await make_project(
                self.sessions, tenant=tenant, repo_url="/nonexistent/repo", check_command="true"
            )
        async with self.sessions() as session:
            request = PromptRequest(tenant_id=project.tenant_id, project_id=project.id, prompt="p")
            session.add(request)
            await session.flush()
            plan = DeploymentPlan(tenant_id=project.tenant_id, prompt_request_id=request.id)
            session.add(plan)
            await session.commit()
        self.project_id = project.id
        return plan

    async def released(
        self, plan: DeploymentPlan, commit_sha: str, rollback_of: uuid.UUID | None = None
    ) -> ReleaseStep:
        """A deployment released and waiting for its verification."""
        deployment_id = uuid.uuid4()
        await ActivityEnvironment().run(
            self.deployments.record_deployment,
            RecordDeployment(
                deployment_id=deployment_id,
                tenant_id=plan.tenant_id,
                project_id=self.project_id,
                plan_id=plan.id,
                # Staging: production would also move the (absent) repository's default branch.
                environment=DeploymentEnvironment.STAGING,
                commit_sha=commit_sha,
                rollback_of=rollback_of,
                workflow_id="deploy",
            ),
        )
        await ActivityEnvironment().run(
            self.deployments.mark_deployment,
            TransitionDeployment(deployment_id=deployment_id, status=DeploymentStatus.IN_PROGRESS),
        )
        return ReleaseStep(
            deployment_id=deployment_id,
            tenant_id=plan.tenant_id,
            project_id=self.project_id,
            plan_id=plan.id,
            environment=DeploymentEnvironment.STAGING,
            commit_sha=commit_sha,
            step="verify",
        )

    async def mark(
        self,
        step: ReleaseStep,
        status: DeploymentStatus,
        rolls_back: uuid.UUID | None = None,
    ) -> None:
        await ActivityEnvironment().run(
            self.deployments.mark_deployment,
            TransitionDeployment(
                deployment_id=step.deployment_id, status=status, rolls_back=rolls_back
            ),
        )

    async def verified(self, step: ReleaseStep, rolls_back: uuid.UUID | None = None) -> None:
        """Checked and recorded, then SUCCEEDED as the workflow decides of a passing check."""
        await self.mark(step, DeploymentStatus.VERIFYING)
        outcome = await attempt(1).run(self.releases.verify_deployment, step)
        assert outcome.ok
        await self.mark(step, DeploymentStatus.SUCCEEDED, rolls_back)

    async def validation_job(self, deployment_id: uuid.UUID) -> ChangeJob:
        async with self.sessions() as session:
            return (
                await session.exec(
                    select(ChangeJob).where(
                        ChangeJob.deployment_id == deployment_id,
                        ChangeJob.kind == ChangeJobKind.VALIDATION,
                    )
                )
            ).one()

    async def deployment(self, deployment_id: uuid.UUID) -> Deployment:
        async with self.sessions() as session:
            row = await session.get(Deployment, deployment_id)
            assert row is not None
            return row


@pytest.fixture
def check() -> HeldCheck:
    return HeldCheck()


@pytest.fixture
def rows(sessions: SessionFactory, check: HeldCheck) -> Rows:
    releases = ReleaseActivities(sessions=sessions, target=check)  # type: ignore[arg-type]
    return Rows(sessions, releases)


async def cancel_mid_check(
    rows: Rows, check: HeldCheck, step: ReleaseStep, *, worker_shutdown: bool
) -> ActivityEnvironment:
    """Attempt 1 of the check is cancelled while the check runs: by its worker shutting down
    past the grace period, or by the workflow asking."""
    first = attempt(1)
    check.open.clear()
    running = asyncio.ensure_future(first.run(rows.releases.verify_deployment, step))
    await asyncio.wait_for(check.reached.wait(), 10)
    if worker_shutdown:
        first.worker_shutdown()
        first.cancel(ActivityCancellationDetails(worker_shutdown=True))
    else:
        first.cancel(ActivityCancellationDetails(cancel_requested=True))
    with pytest.raises(asyncio.CancelledError):
        await running
    check.open.set()
    return first


async def test_a_check_handed_back_by_a_stopping_worker_is_counted_and_recorded_by_its_retry(
    rows: Rows, check: HeldCheck
) -> None:
    step = await rows.released(await rows.plan(), "a1")
    first = await cancel_mid_check(rows, check, step, worker_shutdown=True)

    # The stopping worker's cancellation is not the workflow's: the job stays open for the retry.
    job = await rows.validation_job(step.deployment_id)
    assert (job.status, job.attempts) == (ChangeJobStatus.RUNNING, 1)

    outcome = await same_workflow(first, 2).run(rows.releases.verify_deployment, step)

    assert outcome.ok
    job = await rows.validation_job(step.deployment_id)
    assert (job.status, job.attempts, job.error) == (ChangeJobStatus.SUCCEEDED, 2, None)
    # The verdict is reported and its facts written; what it means is the workflow's to say.
    row = await rows.deployment(step.deployment_id)
    assert (row.status, row.verification_output) == (DeploymentStatus.IN_PROGRESS, "ok")


async def test_a_retry_reopens_the_job_an_earlier_attempt_left_cancelled(
    rows: Rows, check: HeldCheck
) -> None:
    step = await rows.released(await rows.plan(), "a1")
    # Cancelled as the workflow asking cancels it (and as a stopping worker's did before): the
    # job ends cancelled with one attempt.
    first = await cancel_mid_check(rows, check, step, worker_shutdown=False)
    job = await rows.validation_job(step.deployment_id)
    assert (job.status, job.attempts) == (ChangeJobStatus.CANCELLED, 1)

    await same_workflow(first, 2).run(rows.releases.verify_deployment, step)

    job = await rows.validation_job(step.deployment_id)
    assert (job.status, job.attempts, job.error) == (ChangeJobStatus.SUCCEEDED, 2, None)
    assert job.finished_at is not None


async def test_rolling_back_to_a_deployment_trusts_its_own_verification_not_its_job_rows(
    rows: Rows, sessions: SessionFactory
) -> None:
    plan = await rows.plan()
    earlier = await rows.released(plan, "a1")
    await rows.verified(earlier)
    # A later rollback undoes it; then its job rows are gone (or say anything at all).
    undo = await rows.released(plan, "c0", rollback_of=earlier.deployment_id)
    await rows.verified(undo, rolls_back=earlier.deployment_id)
    undone = await rows.deployment(earlier.deployment_id)
    assert undone.status is DeploymentStatus.ROLLED_BACK
    assert undone.verified_at is not None
    async with sessions() as session:
        await session.exec(  # type: ignore[call-overload]
            delete(ChangeJob).where(col(ChangeJob.deployment_id) == earlier.deployment_id)
        )
        await session.commit()

    rollback = await ActivityEnvironment().run(
        rows.rollbacks.plan_rollback,
        PlanRollback(tenant_id=plan.tenant_id, target_deployment_id=earlier.deployment_id),
    )

    assert (rollback.commit_sha, rollback.live_deployment_id) == ("a1", undo.deployment_id)


async def test_a_deployment_that_never_verified_is_no_rollback_target(rows: Rows) -> None:
    plan = await rows.plan()
    live = await rows.released(plan, "b2")
    await rows.verified(live)
    never = await rows.released(plan, "a1")
    await ActivityEnvironment().run(
        rows.deployments.mark_deployment,
        TransitionDeployment(deployment_id=never.deployment_id, status=DeploymentStatus.FAILED),
    )

    with pytest.raises(ApplicationError) as refused:
        await ActivityEnvironment().run(
            rows.rollbacks.plan_rollback,
            PlanRollback(tenant_id=plan.tenant_id, target_deployment_id=never.deployment_id),
        )

    assert refused.value.type == ErrorType.ROLLBACK_TARGET_NEVER_SUCCEEDED
    assert (await rows.deployment(never.deployment_id)).verified_at is None


async def test_attempts_that_never_reached_the_database_are_counted_on_the_job(
    rows: Rows,
) -> None:
    step = await rows.released(await rows.plan(), "a1")
    # Attempts 1 and 2 failed before writing anything (the database was down).
    await attempt(3).run(rows.releases.run_check, step)

    job = await rows.validation_job(step.deployment_id)
    assert job.attempts == 3


async def test_a_status_move_the_transitions_forbid_is_refused_and_changes_nothing(
    rows: Rows,
) -> None:
    plan = await rows.plan()
    live = await rows.released(plan, "b2")
    await rows.verified(live)
    before = await rows.deployment(live.deployment_id)

    with pytest.raises(ApplicationError) as refused:
        await rows.mark(live, DeploymentStatus.VERIFYING)

    assert refused.value.type == ErrorType.ILLEGAL_TRANSITION and refused.value.non_retryable
    assert "'succeeded' to 'verifying'" in str(refused.value)
    after = await rows.deployment(live.deployment_id)
    assert (after.status, after.updated_at) == (DeploymentStatus.SUCCEEDED, before.updated_at)
    # Told twice (a retried write), the move is made once.
    await rows.mark(live, DeploymentStatus.SUCCEEDED)
    assert (await rows.deployment(live.deployment_id)).updated_at == before.updated_at


async def test_a_rollback_leaves_a_deployment_whose_run_has_not_ended_as_it_is(rows: Rows) -> None:
    plan = await rows.plan()
    running = await rows.released(plan, "a1")
    undo = await rows.released(plan, "c0", rollback_of=running.deployment_id)

    await rows.verified(undo, rolls_back=running.deployment_id)

    assert (await rows.deployment(undo.deployment_id)).status is DeploymentStatus.SUCCEEDED
    assert (await rows.deployment(running.deployment_id)).status is DeploymentStatus.IN_PROGRESS


async def test_a_first_release_retried_on_another_host_is_still_withdrawn_when_cancelled(
    sessions: SessionFactory, tmp_path: Path
) -> None:
    """A first release whose attempt moved the branch but whose answer was lost (Temporal away)
    is retried on a worker with a disk of its own, which holds no release record of it: it
    finds its own commit released. The deployment must still know the environment ran nothing
    before, so a cancel withdraws the branch rather than "restoring" the change (a remote chaos
    run found env/staging left at a cancelled request's commit)."""
    shop = await make_shop(sessions, tmp_path)
    repo = shop.project.repo_url
    change = git(repo, "commit-tree", "main^{tree}", "-p", "main", "-m", "a change")
    rows = Rows(sessions, ReleaseActivities(sessions=sessions, target=GitDeployTarget(tmp_path)))
    # Recorded and in progress, not released yet: its release is the step under test.
    step = (await rows.released(await rows.plan(shop.project), change)).model_copy(
        update={"step": "release"}
    )

    def host(name: str) -> ReleaseActivities:
        return ReleaseActivities(sessions=sessions, target=GitDeployTarget(tmp_path / name))

    once = attempt(1)
    first = await once.run(host("host-a").release_deployment, step)
    retried = await same_workflow(once, 2).run(host("host-b").release_deployment, step)

    assert git(repo, "rev-parse", "env/staging") == change
    assert first.previous_commit_sha is None
    assert retried.previous_commit_sha is None
    async with sessions() as session:
        row = await session.get(Deployment, step.deployment_id)
        assert row is not None and row.previous_commit_sha is None

    await same_workflow(once, 1).run(host("host-b").compensate_deployment, step)
    assert git(repo, "branch", "--list", "env/staging") == ""
