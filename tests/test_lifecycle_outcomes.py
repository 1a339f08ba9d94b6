"""How a lifecycle ends when it does not simply succeed: refused requests, too few tokens,
overspending, failed verifications and cancellation at each stage."""

import asyncio
import uuid
from pathlib import Path

import pytest
from sqlmodel import select
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from activities.billing import BillingActivities
from activities.change_engine import AppliedChange, ChangeProposal, ChangeStep
from activities.deploy_target import GitDeployTarget, VerificationResult
from activities.git_change_engine import GitChangeEngine
from activities.ledger import Ledger
from activities.lifecycle import LifecycleActivities
from activities.releases import ReleaseActivities
from client.lifecycle import LifecycleClient, LifecycleRefused
from models import (
    Deployment,
    DeploymentEnvironment,
    DeploymentPlan,
    DeploymentStatus,
    PlanApprovalStatus,
    PromptRequest,
    PromptStatus,
)
from models.billing import HoldStatus
from models.db import SessionFactory
from scripts.sample_repo import (
    FAILS_IN_PRODUCTION_PROMPT,
    FAILS_IN_STAGING_PROMPT,
    OVERSPEND_PROMPT,
    SAFE_PROMPT,
)
from tests.lifecycle_support import (
    FUNDS,
    Shop,
    balance,
    holds,
    human_policy,
    make_shop,
    plan_awaiting_approval,
    request_row,
    settlements,
    submit,
    wait_for_status,
)
from tests.workers import running_workers
from workflows.contracts.billing import HoldView, ReserveTokens
from workflows.contracts.errors import ErrorType

pytestmark = pytest.mark.asyncio(loop_scope="session")


class Gate:
    """Holds a step until the test opens it; tells the test when the step is reached."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.opened = asyncio.Event()

    async def pass_through(self) -> None:
        self.reached.set()
        await self.opened.wait()


class GatedEngine(GitChangeEngine):
    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    async def plan(
        self,
        *,
        repo: Path,
        base_branch: str,
        prompt: str,
        step: ChangeStep | None = None,
        check_command: str = "",
    ) -> ChangeProposal:
        await self.gate.pass_through()
        return await super().plan(
            repo=repo,
            base_branch=base_branch,
            prompt=prompt,
            step=step,
            check_command=check_command,
        )

    async def apply(
        self,
        *,
        repo: Path,
        proposal: ChangeProposal,
        prompt: str,
        branch: str,
        onto: str | None = None,
        step: ChangeStep | None = None,
    ) -> AppliedChange:
        return await super().apply(
            repo=repo, proposal=proposal, prompt=prompt, branch=branch, onto=onto, step=step
        )


class GatedTarget(GitDeployTarget):
    def __init__(self, workspace_dir: Path, gate: Gate) -> None:
        super().__init__(workspace_dir)
        self.gate = gate

    async def verify(self, **kwargs: object) -> VerificationResult:  # type: ignore[override]
        await self.gate.pass_through()
        return await super().verify(**kwargs)  # type: ignore[arg-type]


async def request_rows(sessions: SessionFactory, shop: Shop) -> list[PromptRequest]:
    async with sessions() as session:
        rows = await session.exec(
            select(PromptRequest).where(PromptRequest.tenant_id == shop.tenant.id)
        )
        return list(rows.all())


@pytest.mark.parametrize(
    ("who", "expected"),
    [
        ("unknown tenant", ErrorType.UNKNOWN_TENANT),
        ("project of another tenant", ErrorType.UNKNOWN_PROJECT),
        ("user of another tenant", ErrorType.USER_OF_ANOTHER_TENANT),
    ],
)
async def test_a_request_that_names_the_wrong_tenant_project_or_user_is_refused(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
    who: str,
    expected: ErrorType,
) -> None:
    shop = await make_shop(sessions, tmp_path)
    other = await make_shop(sessions, tmp_path, name="Other Shop")
    tenant_id, project_id, user_id = shop.tenant.id, shop.project.id, shop.requester.id
    if who == "unknown tenant":
        tenant_id = uuid.uuid4()
    elif who == "project of another tenant":
        project_id = other.project.id
    else:
        user_id = other.requester.id
    async with running_workers(
        client, sessions, task_queue=task_queue, deploy_task_queue=deploy_queue
    ):
        request_id = await lifecycle.submit(
            tenant_id=tenant_id, project_id=project_id, user_id=user_id, prompt=SAFE_PROMPT
        )
        with pytest.raises(LifecycleRefused) as refused:
            await lifecycle.wait_for_outcome(request_id)
    assert refused.value.error_type == expected
    assert await request_row(sessions, request_id) is None
    assert await holds(sessions, shop) == []


async def test_an_empty_or_oversized_prompt_is_refused_before_anything_starts(
    client: Client, sessions: SessionFactory, lifecycle: LifecycleClient, tmp_path: Path
) -> None:
    shop = await make_shop(sessions, tmp_path)
    with pytest.raises(LifecycleRefused) as empty:
        await submit(lifecycle, shop, "   ")
    assert empty.value.error_type == ErrorType.EMPTY_PROMPT
    with pytest.raises(LifecycleRefused) as too_long:
        await submit(lifecycle, shop, "set theme to dark " * 500)
    assert too_long.value.error_type == ErrorType.PROMPT_TOO_LONG


async def test_insufficient_tokens_end_the_request_with_the_reason_and_no_charge(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    shop = await make_shop(sessions, tmp_path, balance=10)
    async with running_workers(
        client, sessions, task_queue=task_queue, deploy_task_queue=deploy_queue
    ):
        request_id = await submit(lifecycle, shop, SAFE_PROMPT)
        result = await lifecycle.wait_for_outcome(request_id)

    assert result.status is PromptStatus.FAILED
    assert "insufficient tokens" in result.reason.lower()
    row = await request_row(sessions, request_id)
    assert row is not None and row.status is PromptStatus.FAILED
    assert row.status_reason and "insufficient tokens" in row.status_reason.lower()
    assert await holds(sessions, shop) == []
    assert await settlements(sessions, shop) == []
    assert await balance(sessions, shop.account) == 10


async def test_overspending_the_estimate_pauses_for_approval_of_the_new_amount(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    shop = await make_shop(sessions, tmp_path)
    async with running_workers(
        client, sessions, task_queue=task_queue, deploy_task_queue=deploy_queue
    ):
        request_id = await submit(lifecycle, shop, OVERSPEND_PROMPT)
        paused = await wait_for_status(
            lifecycle,
            request_id,
            lambda s: s.status is PromptStatus.AWAITING_APPROVAL and len(s.holds) == 2,
        )
        assert paused.plan is not None and paused.plan.revision == 2
        first_estimate = paused.holds[0].amount
        assert paused.tokens_used > first_estimate * 1.2
        assert paused.plan.token_estimate == paused.tokens_used
        assert [h.amount for h in paused.holds] == [
            first_estimate,
            paused.tokens_used - first_estimate,
        ]
        assert paused.deployments == []  # nothing deployed while the amount is unapproved
        await lifecycle.approve(
            request_id, user_id=shop.admins[0].id, content_hash=paused.plan.content_hash
        )
        result = await lifecycle.wait_for_outcome(request_id)

    assert result.status is PromptStatus.COMPLETED, result.reason
    assert result.tokens_settled == result.tokens_used == paused.tokens_used
    assert await balance(sessions, shop.account) == FUNDS - result.tokens_used
    assert sum(e.amount for e in await settlements(sessions, shop)) == result.tokens_used
    assert {h.status for h in await holds(sessions, shop)} == {HoldStatus.SETTLED}
    async with sessions() as session:
        plans = (
            await session.exec(
                select(DeploymentPlan)
                .where(DeploymentPlan.prompt_request_id == request_id)
                .order_by(DeploymentPlan.revision)  # type: ignore[arg-type]
            )
        ).all()
    assert [p.approval_status for p in plans] == [
        PlanApprovalStatus.SUPERSEDED,
        PlanApprovalStatus.APPROVED,
    ]
    assert plans[0].content_hash != plans[1].content_hash


@pytest.mark.parametrize(
    ("prompt", "failing", "succeeded"),
    [
        (FAILS_IN_STAGING_PROMPT, DeploymentEnvironment.STAGING, []),
        (
            FAILS_IN_PRODUCTION_PROMPT,
            DeploymentEnvironment.PRODUCTION,
            [DeploymentEnvironment.STAGING],
        ),
    ],
)
async def test_a_failed_verification_rolls_back_and_still_settles_the_work(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
    prompt: str,
    failing: DeploymentEnvironment,
    succeeded: list[DeploymentEnvironment],
) -> None:
    shop = await make_shop(sessions, tmp_path)
    async with running_workers(
        client, sessions, task_queue=task_queue, deploy_task_queue=deploy_queue
    ):
        request_id = await submit(lifecycle, shop, prompt)
        result = await lifecycle.wait_for_outcome(request_id)

    assert result.status is PromptStatus.ROLLED_BACK, result.reason
    assert f"{failing.value} verification failed" in result.reason
    assert result.tokens_settled == result.tokens_used > 0
    assert len(await settlements(sessions, shop)) == 1
    async with sessions() as session:
        rows = (
            await session.exec(select(Deployment).where(Deployment.tenant_id == shop.tenant.id))
        ).all()
    # The rollback deployment of the failing environment is itself verified.
    assert sorted(d.environment for d in rows if d.status is DeploymentStatus.SUCCEEDED) == sorted(
        [*succeeded, failing]
    )
    failed = [d for d in rows if d.rollback_of_id is None and d.environment is failing]
    assert [d.status for d in failed] in ([DeploymentStatus.FAILED], [DeploymentStatus.ROLLED_BACK])
    rollbacks = [d for d in rows if d.rollback_of_id is not None]
    assert [r.rollback_of_id for r in rollbacks] == [failed[0].id]


async def test_cancelling_during_planning_persists_cancelled_and_holds_nothing(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    shop = await make_shop(sessions, tmp_path)
    gate = Gate()
    gated = LifecycleActivities(sessions, GatedEngine(gate))
    async with running_workers(
        client,
        sessions,
        task_queue=task_queue,
        deploy_task_queue=deploy_queue,
        replace=[gated.plan_request],
    ):
        request_id = await submit(lifecycle, shop, SAFE_PROMPT)
        await asyncio.wait_for(gate.reached.wait(), 30)
        await lifecycle.cancel(request_id, reason="changed my mind")
        gate.opened.set()
        result = await lifecycle.wait_for_outcome(request_id)

    assert result.status is PromptStatus.CANCELLED
    row = await request_row(sessions, request_id)
    assert row is not None and row.status is PromptStatus.CANCELLED
    async with sessions() as session:
        plans = (
            await session.exec(
                select(DeploymentPlan).where(DeploymentPlan.prompt_request_id == request_id)
            )
        ).all()
    # The plan the engine finished after the cancellation is stored, but cancelled with it.
    assert [p.approval_status for p in plans] == [PlanApprovalStatus.CANCELLED]
    assert await holds(sessions, shop) == []
    assert await balance(sessions, shop.account) == FUNDS


async def test_cancelling_while_awaiting_approval_releases_the_hold(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    shop = await make_shop(sessions, tmp_path, policy=human_policy())
    async with running_workers(
        client, sessions, task_queue=task_queue, deploy_task_queue=deploy_queue
    ):
        request_id = await submit(lifecycle, shop, SAFE_PROMPT)
        await plan_awaiting_approval(lifecycle, request_id)
        await lifecycle.cancel(request_id)
        result = await lifecycle.wait_for_outcome(request_id)

    assert result.status is PromptStatus.CANCELLED
    row = await request_row(sessions, request_id)
    assert row is not None and row.status is PromptStatus.CANCELLED
    assert [h.status for h in await holds(sessions, shop)] == [HoldStatus.RELEASED]
    assert await settlements(sessions, shop) == []
    assert await balance(sessions, shop.account) == FUNDS
    async with sessions() as session:
        plan = (
            await session.exec(
                select(DeploymentPlan).where(DeploymentPlan.prompt_request_id == request_id)
            )
        ).one()
    assert plan.approval_status is PlanApprovalStatus.CANCELLED


async def test_cancelling_mid_deploy_rolls_back_the_half_done_release(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    shop = await make_shop(sessions, tmp_path)
    gate = Gate()
    target = GatedTarget(tmp_path / "workspace", gate)
    releases = ReleaseActivities(sessions=sessions, target=target)
    async with running_workers(
        client,
        sessions,
        task_queue=task_queue,
        deploy_task_queue=deploy_queue,
        replace=[releases.run_check],
    ):
        request_id = await submit(lifecycle, shop, SAFE_PROMPT)
        await asyncio.wait_for(gate.reached.wait(), 60)
        status = await lifecycle.status(request_id)
        assert status.status is PromptStatus.DEPLOYING_STAGING
        await lifecycle.cancel(request_id)
        # The gate stays shut: the verification ends only by the cancellation reaching it.
        result = await lifecycle.wait_for_outcome(request_id)

    assert result.status is PromptStatus.CANCELLED
    row = await request_row(sessions, request_id)
    assert row is not None and row.status is PromptStatus.CANCELLED
    async with sessions() as session:
        rows = (
            await session.exec(select(Deployment).where(Deployment.tenant_id == shop.tenant.id))
        ).all()
    staging = [d for d in rows if d.rollback_of_id is None]
    assert [d.environment for d in staging] == [DeploymentEnvironment.STAGING]
    assert staging[0].status is not DeploymentStatus.SUCCEEDED
    # The release was undone: staging no longer runs the cancelled change.
    live = await target.current_release(repo=Path(shop.project.repo_url), environment="staging")
    # It was staging's first release: as if it never ran, staging has no branch again.
    assert live is None
    # The change was applied before the cancel: its work is charged once, the rest released.
    assert result.tokens_used > 0
    assert len(await settlements(sessions, shop)) == 1
    assert await balance(sessions, shop.account) == FUNDS - result.tokens_used


async def test_a_waiting_deployment_reports_its_queue_position_in_the_status(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    shop = await make_shop(sessions, tmp_path)
    gate = Gate()
    target = GatedTarget(tmp_path / "workspace", gate)
    releases = ReleaseActivities(sessions=sessions, target=target)
    async with running_workers(
        client,
        sessions,
        task_queue=task_queue,
        deploy_task_queue=deploy_queue,
        replace=[releases.run_check],
    ):
        first = await submit(lifecycle, shop, SAFE_PROMPT)
        await asyncio.wait_for(gate.reached.wait(), 60)  # the first holds the staging lane
        second = await submit(lifecycle, shop, "set store_name to Corner Shop Two")
        waiting = await wait_for_status(
            lifecycle,
            second,
            lambda s: any(d.queue_position == 1 for d in s.deployments),
        )
        holding = await lifecycle.status(first)
        gate.opened.set()
        results = [await lifecycle.wait_for_outcome(r) for r in (first, second)]

    [queued] = waiting.deployments
    assert queued.environment is DeploymentEnvironment.STAGING
    assert queued.status is DeploymentStatus.QUEUED
    assert "ahead" in waiting.step
    assert [d.queue_position for d in holding.deployments] == [0]
    assert [r.status for r in results] == [PromptStatus.COMPLETED] * 2


class ReserveThenLoseTheAnswer(BillingActivities):
    """The first reservation commits its hold, then its step fails as if the answer was lost
    (the worker or the database went away after the commit); later calls are the real one."""

    def __init__(self, ledger: Ledger, reached: asyncio.Event, go_on: asyncio.Event) -> None:
        super().__init__(ledger)
        self.reached, self.go_on, self.calls = reached, go_on, 0

    @activity.defn(name="reserve_tokens")
    async def reserve_tokens(self, request: ReserveTokens) -> HoldView:
        self.calls += 1
        hold = await super().reserve_tokens(request)
        if self.calls == 1:
            self.reached.set()
            await self.go_on.wait()
            raise ApplicationError("connection lost after commit", non_retryable=True)
        return hold


async def test_a_request_cancelled_while_its_hold_is_reserved_leaves_no_hold_active(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    shop = await make_shop(sessions, tmp_path, policy=human_policy())
    reached, go_on = asyncio.Event(), asyncio.Event()
    billing = ReserveThenLoseTheAnswer(Ledger(sessions), reached, go_on)
    async with running_workers(
        client,
        sessions,
        task_queue=task_queue,
        deploy_task_queue=deploy_queue,
        replace=[billing.reserve_tokens],
    ):
        request_id = await submit(lifecycle, shop, SAFE_PROMPT)
        await asyncio.wait_for(reached.wait(), 60)
        await lifecycle.cancel(request_id, reason="changed my mind")
        go_on.set()
        result = await lifecycle.wait_for_outcome(request_id)

    assert result.status is PromptStatus.CANCELLED
    # The hold whose answer was lost: found by the workflow's keys, and released (a replay
    # may ask the ledger again under the same key: still the one hold).
    assert billing.calls >= 1
    [hold] = await holds(sessions, shop)
    assert hold.status is HoldStatus.RELEASED
    assert await balance(sessions, shop.account) == FUNDS
