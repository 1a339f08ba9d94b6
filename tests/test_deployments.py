"""Deployments against a real git repository, the Temporal dev server and PostgreSQL: automatic
rollback of a failed verification, operator rollbacks, the per-environment lane, cancellation."""

import asyncio
import contextlib
import itertools
import json
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlmodel import col, select
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle, WorkflowHistory
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.worker import Replayer, Worker

from activities.git_change_engine import GitChangeEngine
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
    Tenant,
)
from models.db import SessionFactory
from scripts.sample_repo import (
    FAILS_IN_PRODUCTION_PROMPT,
    SAMPLE_CHECK_COMMAND,
    create_sample_repo,
)
from tests.conftest import DATA_CONVERTER
from tests.factories import make_project, make_tenant
from tests.workers import running_workers
from workflows.contracts.deployment import (
    DeploymentInput,
    DeploymentProgress,
    DeploymentResult,
    DeploymentState,
    RollbackRequest,
)
from workflows.contracts.ids import deployment_workflow_id, rollback_workflow_id
from workflows.contracts.search_attributes import ENVIRONMENT, PROJECT_ID, TENANT_ID
from workflows.deployment import DeploymentWorkflow, RollbackWorkflow

STAGING = DeploymentEnvironment.STAGING
PRODUCTION = DeploymentEnvironment.PRODUCTION

# The project's check: unhealthy configs fail, `debug` fails only in production, and a `gate`
# file makes the check wait until the test opens it (a deployment that is mid-verification).
CHECK_PY = """\
import json, os, pathlib, sys, time
config = json.loads(pathlib.Path("health.json").read_text())
environment = os.environ.get("CHANGEFLOW_ENVIRONMENT", "")
gate = config.get("gate")
deadline = time.monotonic() + 60
while gate and not pathlib.Path(gate).exists() and time.monotonic() < deadline:
    time.sleep(0.05)
problems = []
if not config.get("healthy", True):
    problems.append("service unhealthy")
if environment == "production" and config.get("debug"):
    problems.append("debug must be off in production")
print(f"{environment}: {problems or 'healthy'}")
sys.exit(1 if problems else 0)
"""


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def commit(repo: Path, message: str, **health: object) -> str:
    (repo / "health.json").write_text(json.dumps(health))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def live_commit(repo: Path, environment: DeploymentEnvironment) -> str:
    return git(repo, "rev-parse", f"env/{environment.value}")


def linked_file_exists(url: str) -> bool:
    return Path(url.removeprefix("file://")).is_file()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "storefront"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.email", "tests@example.com")
    git(path, "config", "user.name", "Tests")
    (path / "check.py").write_text(CHECK_PY)
    commit(path, "initial storefront", healthy=True)
    # Releases are made on a work branch: main is the project's default branch, which only a
    # verified production release advances (and production refuses a commit main is ahead of).
    git(path, "checkout", "-q", "-b", "work")
    return path


@dataclass
class Stage:
    """A tenant's project with one approved plan, and Workers running every deployment part."""

    client: Client
    sessions: SessionFactory
    task_queue: str
    deploy_task_queue: str
    tenant: Tenant
    project: Project
    plan: DeploymentPlan
    repo: Path

    def deployment(
        self, commit_sha: str, environment: DeploymentEnvironment = STAGING, **fields: object
    ) -> DeploymentInput:
        return DeploymentInput(
            deployment_id=uuid.uuid4(),
            tenant_id=self.tenant.id,
            project_id=self.project.id,
            plan_id=self.plan.id,
            prompt_request_id=self.plan.prompt_request_id,
            environment=environment,
            commit_sha=commit_sha,
            deploy_task_queue=self.deploy_task_queue,
            **fields,  # type: ignore[arg-type]
        )

    async def start(
        self, deployment: DeploymentInput
    ) -> WorkflowHandle[DeploymentWorkflow, DeploymentResult]:
        return await self.client.start_workflow(
            DeploymentWorkflow.run,
            deployment,
            id=deployment_workflow_id(deployment.deployment_id),
            task_queue=self.task_queue,
        )

    async def deploy(
        self, commit_sha: str, environment: DeploymentEnvironment = STAGING
    ) -> DeploymentResult:
        return await (await self.start(self.deployment(commit_sha, environment))).result()

    async def roll_back(
        self, target: uuid.UUID, *, tenant_id: uuid.UUID | None = None
    ) -> DeploymentResult:
        deployment_id = uuid.uuid4()
        return await self.client.execute_workflow(
            RollbackWorkflow.run,
            RollbackRequest(
                tenant_id=tenant_id or self.tenant.id,
                target_deployment_id=target,
                reason="operator request",
                deploy_task_queue=self.deploy_task_queue,
            ),
            id=rollback_workflow_id(deployment_id),
            task_queue=self.task_queue,
        )

    async def row(self, deployment_id: uuid.UUID) -> Deployment:
        async with self.sessions() as session:
            row = await session.get(Deployment, deployment_id)
            assert row is not None
            return row

    async def jobs(self, deployment_id: uuid.UUID) -> list[tuple[ChangeJobKind, ChangeJobStatus]]:
        async with self.sessions() as session:
            rows = await session.exec(
                select(ChangeJob)
                .where(ChangeJob.deployment_id == deployment_id)
                .order_by(col(ChangeJob.created_at))
            )
            return [(job.kind, job.status) for job in rows.all()]

    async def deployments(self) -> list[Deployment]:
        async with self.sessions() as session:
            rows = await session.exec(select(Deployment).order_by(col(Deployment.queued_at)))
            return list(rows.all())


async def make_plan(
    sessions: SessionFactory, *, tenant: Tenant, project: Project
) -> DeploymentPlan:
    async with sessions() as session:
        request = PromptRequest(tenant_id=tenant.id, project_id=project.id, prompt="set theme")
        session.add(request)
        await session.flush()
        plan = DeploymentPlan(tenant_id=tenant.id, prompt_request_id=request.id, diff="")
        session.add(plan)
        await session.commit()
        return plan


@contextlib.asynccontextmanager
async def staged(
    client: Client, sessions: SessionFactory, task_queue: str, repo: Path, check_command: str
) -> AsyncIterator[Stage]:
    tenant = await make_tenant(sessions)
    project = await make_project(
        sessions, tenant=tenant, repo_url=str(repo), check_command=check_command
    )
    plan = await make_plan(sessions, tenant=tenant, project=project)
    deploy_task_queue = f"{task_queue}-deploy"
    async with running_workers(
        client, sessions, task_queue=task_queue, deploy_task_queue=deploy_task_queue
    ):
        yield Stage(client, sessions, task_queue, deploy_task_queue, tenant, project, plan, repo)


@pytest_asyncio.fixture
async def stage(
    client: Client, sessions: SessionFactory, task_queue: str, repo: Path
) -> AsyncIterator[Stage]:
    async with staged(client, sessions, task_queue, repo, SAMPLE_CHECK_COMMAND) as stage:
        yield stage


async def eventually(check: Callable[[], Awaitable[bool]], within_s: float = 20.0) -> None:
    """Poll a workflow's query until it holds (the server pushes no event to wait on)."""
    async with asyncio.timeout(within_s):
        while not await check():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def state_of(handle: WorkflowHandle[DeploymentWorkflow, DeploymentResult]) -> DeploymentState:
    return await handle.query(DeploymentWorkflow.status)


# --- automatic rollback ---


@pytest.mark.parametrize("environment", [STAGING, PRODUCTION])
async def test_failed_verification_restores_the_last_good_release_as_a_verified_rollback(
    stage: Stage, environment: DeploymentEnvironment
) -> None:
    good = commit(stage.repo, "good release", healthy=True)
    # Unhealthy everywhere for staging; for production, a change staging accepts.
    bad = (
        commit(stage.repo, "broken release", healthy=False)
        if environment is STAGING
        else commit(stage.repo, "debug left on", healthy=True, debug=True)
    )
    first = await stage.deploy(good, environment)
    assert first.status is DeploymentStatus.SUCCEEDED and first.verified
    if environment is PRODUCTION:
        assert (await stage.deploy(bad, STAGING)).status is DeploymentStatus.SUCCEEDED

    failed = await stage.deploy(bad, environment)

    assert failed.status is DeploymentStatus.FAILED and not failed.verified
    expected = "service unhealthy" if environment is STAGING else "debug must be off"
    assert expected in failed.verification_output
    assert failed.rollback_status is DeploymentStatus.SUCCEEDED
    assert failed.rollback_deployment_id is not None
    assert live_commit(stage.repo, environment) == good
    failed_row = await stage.row(failed.deployment_id)
    rollback_row = await stage.row(failed.rollback_deployment_id)
    assert failed_row.status is DeploymentStatus.ROLLED_BACK
    assert failed_row.previous_commit_sha == good
    assert failed_row.diff_url and failed_row.diff_url.startswith("file://")
    assert failed_row.log_url and linked_file_exists(failed_row.log_url)
    assert rollback_row.rollback_of_id == failed.deployment_id
    assert rollback_row.commit_sha == good
    assert rollback_row.status is DeploymentStatus.SUCCEEDED
    assert rollback_row.environment is environment
    assert await stage.jobs(failed.deployment_id) == [
        (ChangeJobKind.DEPLOY, ChangeJobStatus.SUCCEEDED),
        (ChangeJobKind.VALIDATION, ChangeJobStatus.FAILED),
    ]
    assert await stage.jobs(rollback_row.id) == [
        (ChangeJobKind.ROLLBACK, ChangeJobStatus.SUCCEEDED),
        (ChangeJobKind.VALIDATION, ChangeJobStatus.SUCCEEDED),
    ]
    described = await stage.client.get_workflow_handle(
        deployment_workflow_id(failed.deployment_id)
    ).describe()
    attributes = described.typed_search_attributes
    assert attributes.get(ENVIRONMENT) == environment.value
    assert attributes.get(TENANT_ID) == str(stage.tenant.id)
    assert attributes.get(PROJECT_ID) == str(stage.project.id)


async def test_a_storefront_change_that_fails_only_in_production_is_rolled_back_there(
    client: Client, sessions: SessionFactory, task_queue: str, tmp_path: Path
) -> None:
    shop = create_sample_repo(tmp_path / "corner-shop")
    base = git(shop, "rev-parse", "main")
    engine = GitChangeEngine()
    proposal = await engine.plan(repo=shop, base_branch="main", prompt=FAILS_IN_PRODUCTION_PROMPT)
    change = await engine.apply(
        repo=shop, proposal=proposal, prompt=FAILS_IN_PRODUCTION_PROMPT, branch="change/debug"
    )
    async with staged(client, sessions, task_queue, shop, SAMPLE_CHECK_COMMAND) as stage:
        assert (await stage.deploy(base, PRODUCTION)).status is DeploymentStatus.SUCCEEDED

        staging = await stage.deploy(change.commit_sha, STAGING)
        production = await stage.deploy(change.commit_sha, PRODUCTION)

    assert staging.status is DeploymentStatus.SUCCEEDED
    assert production.status is DeploymentStatus.FAILED
    assert production.rollback_status is DeploymentStatus.SUCCEEDED
    assert live_commit(shop, STAGING) == change.commit_sha
    assert live_commit(shop, PRODUCTION) == base


async def test_a_commit_the_target_cannot_release_fails_and_leaves_the_last_good_release(
    stage: Stage,
) -> None:
    good = commit(stage.repo, "good", healthy=True)
    await stage.deploy(good)

    failed = await stage.deploy("0" * 40)

    assert failed.status is DeploymentStatus.FAILED
    assert "release failed" in failed.verification_output
    assert failed.rollback_status is DeploymentStatus.SUCCEEDED
    assert live_commit(stage.repo, STAGING) == good
    assert await stage.jobs(failed.deployment_id) == [
        (ChangeJobKind.DEPLOY, ChangeJobStatus.FAILED)
    ]


async def test_first_deployment_that_fails_restores_the_default_branch(stage: Stage) -> None:
    main_head = git(stage.repo, "rev-parse", "main")
    git(stage.repo, "checkout", "-q", "-b", "change/broken")
    bad = commit(stage.repo, "broken release", healthy=False)

    failed = await stage.deploy(bad)

    assert failed.status is DeploymentStatus.FAILED
    assert failed.rollback_status is DeploymentStatus.SUCCEEDED
    assert live_commit(stage.repo, STAGING) == main_head


async def test_a_deployment_of_an_unknown_plan_or_foreign_project_is_refused_and_writes_nothing(
    stage: Stage,
) -> None:
    good = commit(stage.repo, "good", healthy=True)
    stranger = await make_tenant(stage.sessions, name="Other Shop")
    refusals = []
    for deployment in [
        stage.deployment(good).model_copy(update={"plan_id": uuid.uuid4()}),
        stage.deployment(good).model_copy(update={"tenant_id": stranger.id}),
    ]:
        with pytest.raises(WorkflowFailureError) as refused:
            await (await stage.start(deployment)).result()
        cause = refused.value.cause
        assert isinstance(cause, ApplicationError) and cause.non_retryable
        refusals.append(cause.type)

    assert refusals == ["PlanNotFound", "ProjectNotFound"]
    assert await stage.deployments() == []


# --- operator rollbacks ---


async def test_operator_rolls_back_to_an_earlier_release_and_then_undoes_that_rollback(
    stage: Stage,
) -> None:
    v1 = commit(stage.repo, "v1", healthy=True)
    v2 = commit(stage.repo, "v2", healthy=True)
    first = await stage.deploy(v1)
    second = await stage.deploy(v2)
    assert live_commit(stage.repo, STAGING) == v2

    restore = await stage.roll_back(first.deployment_id)

    assert restore.status is DeploymentStatus.SUCCEEDED and restore.verified
    assert restore.commit_sha == v1
    assert live_commit(stage.repo, STAGING) == v1
    restore_row = await stage.row(restore.deployment_id)
    assert restore_row.rollback_of_id == second.deployment_id
    assert (await stage.row(second.deployment_id)).status is DeploymentStatus.ROLLED_BACK
    assert await stage.jobs(restore.deployment_id) == [
        (ChangeJobKind.ROLLBACK, ChangeJobStatus.SUCCEEDED),
        (ChangeJobKind.VALIDATION, ChangeJobStatus.SUCCEEDED),
    ]

    # Rolling back the rollback: v2 was verified once, so it can be restored.
    undo = await stage.roll_back(second.deployment_id)

    assert undo.status is DeploymentStatus.SUCCEEDED
    assert live_commit(stage.repo, STAGING) == v2
    assert (await stage.row(undo.deployment_id)).rollback_of_id == restore.deployment_id
    assert (await stage.row(restore.deployment_id)).status is DeploymentStatus.ROLLED_BACK

    # A rollback deployment is itself a release one can return to.
    again = await stage.roll_back(restore.deployment_id)
    assert again.status is DeploymentStatus.SUCCEEDED
    assert live_commit(stage.repo, STAGING) == v1
    assert (await stage.row(again.deployment_id)).rollback_of_id == undo.deployment_id


async def test_rollback_to_a_release_that_never_succeeded_or_of_another_tenant_is_refused(
    stage: Stage,
) -> None:
    good = commit(stage.repo, "good", healthy=True)
    bad = commit(stage.repo, "bad", healthy=False)
    await stage.deploy(good)
    failed = await stage.deploy(bad)
    stranger = await make_tenant(stage.sessions, name="Other Shop")
    before = len(await stage.deployments())

    refusals = {}
    for target, tenant_id in [
        (failed.deployment_id, stage.tenant.id),
        (failed.rollback_deployment_id, stranger.id),
        (uuid.uuid4(), stage.tenant.id),
    ]:
        assert target is not None
        with pytest.raises(WorkflowFailureError) as refused:
            await stage.roll_back(target, tenant_id=tenant_id)
        cause = refused.value.cause
        assert isinstance(cause, ApplicationError) and cause.non_retryable
        refusals[target] = cause.type

    assert list(refusals.values()) == [
        "RollbackTargetNeverSucceeded",
        "DeploymentNotFound",
        "DeploymentNotFound",
    ]
    assert len(await stage.deployments()) == before
    assert live_commit(stage.repo, STAGING) == good


# --- the lane: one deployment per project and environment, in arrival order ---


@workflow.defn(sandboxed=False)
class ProgressProbe:
    """Stands in for a parent workflow: collects `deployment_progress` signals."""

    def __init__(self) -> None:
        self.progress: list[DeploymentProgress] = []
        self.done = False

    @workflow.signal(name="deployment_progress")
    def deployment_progress(self, progress: DeploymentProgress) -> None:
        self.progress.append(progress)

    @workflow.signal
    def finish(self) -> None:
        self.done = True

    @workflow.query
    def received(self) -> list[DeploymentProgress]:
        return self.progress

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: self.done)


async def test_three_concurrent_deployments_of_one_environment_run_one_at_a_time_in_order(
    stage: Stage, tmp_path: Path
) -> None:
    gate = tmp_path / "gate-open"
    commits = [commit(stage.repo, f"v{n}", healthy=True, gate=str(gate)) for n in (1, 2, 3)]
    probe_queue = f"{stage.task_queue}-probe"
    async with Worker(stage.client, task_queue=probe_queue, workflows=[ProgressProbe]):
        probe = await stage.client.start_workflow(
            ProgressProbe.run, id=f"probe-{uuid.uuid4()}", task_queue=probe_queue
        )
        handles = []
        for position, sha in enumerate(commits):
            handle = await stage.start(stage.deployment(sha, parent_workflow_id=probe.id))
            handles.append(handle)

            async def in_place(h=handle, p=position) -> bool:
                return (await state_of(h)).queue_position == p

            await eventually(in_place)

        # The first holds the lane (its check waits on the gate); the others wait their turn.
        async def first_verifying() -> bool:
            return (await state_of(handles[0])).status is DeploymentStatus.VERIFYING

        await eventually(first_verifying)
        assert [(await state_of(h)).status for h in handles[1:]] == [DeploymentStatus.QUEUED] * 2

        gate.touch()
        results = [await h.result() for h in handles]

        received = await probe.query(ProgressProbe.received)
        await probe.signal(ProgressProbe.finish)

    assert [r.status for r in results] == [DeploymentStatus.SUCCEEDED] * 3
    rows = [await stage.row(r.deployment_id) for r in results]
    for earlier, later in itertools.pairwise(rows):
        assert earlier.finished_at and later.started_at
        assert earlier.finished_at <= later.started_at
    assert live_commit(stage.repo, STAGING) == commits[2]
    # The last one told its parent its place once (2 ahead); the queue sent it nothing but its
    # turn, so no report of a place came between.
    third = [p.queue_position for p in received if p.deployment_id == results[2].deployment_id]
    assert [p for p in third if p] == [2]
    assert [p.status for p in received if p.deployment_id == results[2].deployment_id][-1] is (
        DeploymentStatus.SUCCEEDED
    )
    # O(1) messages per deployment: the first was told nothing, each later one only its turn.
    turns = [await lane_turns(h) for h in handles]
    assert turns == [0, 1, 1]


async def lane_turns(handle: WorkflowHandle[DeploymentWorkflow, DeploymentResult]) -> int:
    history = await handle.fetch_history()
    return sum(
        1
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
        and event.workflow_execution_signaled_event_attributes.signal_name == "lane_turn"
    )


async def test_a_deployment_that_stopped_running_while_queued_is_skipped_not_waited_for(
    stage: Stage, tmp_path: Path
) -> None:
    gate = tmp_path / "gate-open"
    v1, v2, v3 = (commit(stage.repo, f"v{n}", healthy=True, gate=str(gate)) for n in (1, 2, 3))
    handles = []
    for position, sha in enumerate((v1, v2, v3)):
        handle = await stage.start(stage.deployment(sha))
        handles.append(handle)

        async def in_place(h=handle, p=position) -> bool:
            return (await state_of(h)).queue_position == p

        await eventually(in_place)

    # Terminated (no compensation, no goodbye to the lane) while second in line.
    await handles[1].terminate("operator killed it")
    gate.touch()

    assert (await handles[0].result()).status is DeploymentStatus.SUCCEEDED
    assert (await handles[2].result()).status is DeploymentStatus.SUCCEEDED
    assert live_commit(stage.repo, STAGING) == v3


async def test_a_holder_terminated_mid_release_is_found_by_the_next_waiters_look(
    stage: Stage, tmp_path: Path
) -> None:
    gate = tmp_path / "never-opens"
    stuck = commit(stage.repo, "stuck", healthy=True, gate=str(gate))
    after = commit(stage.repo, "after", healthy=True)
    holder = await stage.start(stage.deployment(stuck))

    async def verifying() -> bool:
        return (await state_of(holder)).status is DeploymentStatus.VERIFYING

    await eventually(verifying)
    waiter = await stage.start(stage.deployment(after, lane_check_s=0.5))

    async def second_in_line() -> bool:
        return (await state_of(waiter)).queue_position == 1

    await eventually(second_in_line)
    # Terminated: no compensation and no leaving; only the waiter's look at the lane finds it.
    await holder.terminate("operator killed it")

    assert (await waiter.result()).status is DeploymentStatus.SUCCEEDED
    assert live_commit(stage.repo, STAGING) == after


# --- cancellation ---


async def test_cancelling_mid_deploy_restores_the_previous_release_and_frees_the_lane(
    stage: Stage, tmp_path: Path
) -> None:
    v1 = commit(stage.repo, "v1", healthy=True)
    stuck = commit(stage.repo, "v2 waits forever", healthy=True, gate=str(tmp_path / "never"))
    v3 = commit(stage.repo, "v3", healthy=True)
    await stage.deploy(v1)

    mid_deploy = await stage.start(stage.deployment(stuck))

    async def verifying() -> bool:
        return (await state_of(mid_deploy)).status is DeploymentStatus.VERIFYING

    async def queued_behind() -> bool:
        return (await state_of(waiting)).queue_position == 1

    await eventually(verifying)
    waiting = await stage.start(stage.deployment(v3))
    await eventually(queued_behind)
    assert live_commit(stage.repo, STAGING) == stuck

    # Cancelled while waiting: it leaves the queue without touching the environment.
    await waiting.cancel()
    with pytest.raises(WorkflowFailureError) as cancelled_waiting:
        await waiting.result()
    assert isinstance(cancelled_waiting.value.cause, CancelledError)
    waiting_id = (await state_of(waiting)).deployment_id
    assert waiting_id is not None
    assert (await stage.row(waiting_id)).status is DeploymentStatus.CANCELLED
    assert await stage.jobs(waiting_id) == []

    # Cancelled mid-verification: the half-done release is undone.
    await mid_deploy.cancel()
    with pytest.raises(WorkflowFailureError) as cancelled:
        await mid_deploy.result()
    assert isinstance(cancelled.value.cause, CancelledError)
    mid_id = (await state_of(mid_deploy)).deployment_id
    assert mid_id is not None
    row = await stage.row(mid_id)
    assert row.status is DeploymentStatus.ROLLED_BACK
    assert live_commit(stage.repo, STAGING) == v1
    assert await stage.jobs(mid_id) == [
        (ChangeJobKind.DEPLOY, ChangeJobStatus.SUCCEEDED),
        (ChangeJobKind.VALIDATION, ChangeJobStatus.CANCELLED),
        (ChangeJobKind.ROLLBACK, ChangeJobStatus.SUCCEEDED),
    ]

    # The lane passed on: the next deployment runs.
    after = await stage.deploy(v3)
    assert after.status is DeploymentStatus.SUCCEEDED
    assert live_commit(stage.repo, STAGING) == v3


# --- one writer of a deployment's status ---


async def decided(handle: WorkflowHandle[Any, DeploymentResult]) -> dict[uuid.UUID, str]:
    """What a deployment workflow says it decided of its deployment and of its rollback."""
    state = await handle.query("status", result_type=DeploymentState)
    assert state.deployment_id is not None
    said = {state.deployment_id: state.status.value}
    if state.rollback_deployment_id is not None:
        assert state.rollback_status is not None
        said[state.rollback_deployment_id] = state.rollback_status.value
    return said


async def test_every_deployment_row_says_what_its_workflow_decided(
    stage: Stage, tmp_path: Path
) -> None:
    good = commit(stage.repo, "good", healthy=True)
    bad = commit(stage.repo, "bad", healthy=False)
    stuck = commit(stage.repo, "waits", healthy=True, gate=str(tmp_path / "never"))

    async def told_and_written(handle: WorkflowHandle[Any, DeploymentResult]) -> dict:
        said = await decided(handle)
        assert {i: (await stage.row(i)).status.value for i in said} == said
        return said

    succeeded = await stage.start(stage.deployment(good))
    await succeeded.result()
    assert list((await told_and_written(succeeded)).values()) == ["succeeded"]
    second = await stage.deploy(commit(stage.repo, "good again", healthy=True))

    failed = await stage.start(stage.deployment(bad))
    result = await failed.result()
    # The run failed (its result says so); the rollback it made replaced its release.
    assert (result.status, result.rollback_status) == (
        DeploymentStatus.FAILED,
        DeploymentStatus.SUCCEEDED,
    )
    assert list((await told_and_written(failed)).values()) == ["rolled_back", "succeeded"]

    cancelled = await stage.start(stage.deployment(stuck))

    async def verifying() -> bool:
        return (await state_of(cancelled)).status is DeploymentStatus.VERIFYING

    await eventually(verifying)
    assert list((await told_and_written(cancelled)).values()) == ["verifying"]
    await cancelled.cancel()
    with pytest.raises(WorkflowFailureError):
        await cancelled.result()
    assert list((await told_and_written(cancelled)).values()) == ["rolled_back"]

    # An operator restores the first release: the live one (the automatic rollback) is undone.
    first_id = (await state_of(succeeded)).deployment_id
    assert first_id is not None and result.rollback_deployment_id is not None
    restore = await stage.roll_back(first_id)
    operator = stage.client.get_workflow_handle(
        deployment_workflow_id(restore.deployment_id), result_type=DeploymentResult
    )
    assert list((await told_and_written(operator)).values()) == ["succeeded"]
    assert live_commit(stage.repo, STAGING) == good
    rows = {d.id: d.status.value for d in await stage.deployments()}
    assert rows == {
        first_id: "succeeded",
        second.deployment_id: "succeeded",
        result.deployment_id: "rolled_back",
        result.rollback_deployment_id: "rolled_back",
        **await decided(cancelled),
        restore.deployment_id: "succeeded",
    }


# --- determinism ---

HISTORIES = Path(__file__).parent / "histories"
WORKFLOW_TYPES = ("DeploymentWorkflow", "RollbackWorkflow")


def recorded_history(path: Path) -> WorkflowHistory:
    recording = json.loads(path.read_text())
    return WorkflowHistory.from_json(recording["workflow_id"], recording["history"])


async def test_recorded_deployment_histories_replay_with_the_current_code(stage: Stage) -> None:
    """Histories recorded with earlier code (tests/histories) and fresh ones must replay: a
    nondeterministic change to the deployment workflows fails here. Re-record deliberately
    with CHANGEFLOW_RECORD_HISTORIES=1."""
    good = commit(stage.repo, "good", healthy=True)
    bad = commit(stage.repo, "bad", healthy=False)
    first = await stage.deploy(good)
    failed = await stage.deploy(bad)
    second = await stage.deploy(commit(stage.repo, "good again", healthy=True))
    rollback_id = uuid.uuid4()
    await stage.client.execute_workflow(
        RollbackWorkflow.run,
        RollbackRequest(
            tenant_id=stage.tenant.id,
            target_deployment_id=first.deployment_id,
            deploy_task_queue=stage.deploy_task_queue,
        ),
        id=rollback_workflow_id(rollback_id),
        task_queue=stage.task_queue,
    )
    fresh = {
        "DeploymentWorkflow-succeeded": deployment_workflow_id(second.deployment_id),
        "DeploymentWorkflow-auto-rollback": deployment_workflow_id(failed.deployment_id),
        "RollbackWorkflow-operator": rollback_workflow_id(rollback_id),
    }
    histories = {
        name: await stage.client.get_workflow_handle(workflow_id).fetch_history()
        for name, workflow_id in fresh.items()
    }
    if os.environ.get("CHANGEFLOW_RECORD_HISTORIES"):
        HISTORIES.mkdir(exist_ok=True)
        for name, history in histories.items():
            recording = {"workflow_id": history.workflow_id, "history": history.to_json_dict()}
            (HISTORIES / f"{name}.json").write_text(json.dumps(recording))
    recorded = sorted(path for kind in WORKFLOW_TYPES for path in HISTORIES.glob(f"{kind}-*.json"))
    assert {path.name.split("-")[0] for path in recorded} == set(WORKFLOW_TYPES)

    replayer = Replayer(
        workflows=[DeploymentWorkflow, RollbackWorkflow],
        data_converter=DATA_CONVERTER,
    )
    for history in [
        *histories.values(),
        *(recorded_history(path) for path in recorded),
    ]:
        await replayer.replay_workflow(history)


# --- the default branch follows production ---


async def test_production_refuses_a_commit_the_default_branch_moved_past_and_releases_nothing(
    stage: Stage,
) -> None:
    good = commit(stage.repo, "good", healthy=True)
    assert (await stage.deploy(good, PRODUCTION)).status is DeploymentStatus.SUCCEEDED
    assert git(stage.repo, "rev-parse", "main") == good  # verified production advanced main
    stale = commit(stage.repo, "made on good", healthy=True)
    # Meanwhile main moved to a sibling of the stale commit (another change shipped).
    sibling = git(stage.repo, "commit-tree", f"{good}^{{tree}}", "-p", good, "-m", "other")
    git(stage.repo, "update-ref", "refs/heads/main", sibling)

    refused = await stage.deploy(stale, PRODUCTION)

    assert refused.status is DeploymentStatus.FAILED and refused.base_moved
    assert "main moved" in refused.verification_output
    assert refused.rollback_deployment_id is None  # nothing released, nothing to roll back
    assert live_commit(stage.repo, PRODUCTION) == good
    assert git(stage.repo, "rev-parse", "main") == sibling
    assert await stage.jobs(refused.deployment_id) == [
        (ChangeJobKind.DEPLOY, ChangeJobStatus.FAILED)
    ]
    # Staging is not guarded: its lane is not the one that advances main.
    assert (await stage.deploy(stale, STAGING)).status is DeploymentStatus.SUCCEEDED
