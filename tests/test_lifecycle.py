"""The prompt lifecycle end to end on real servers: plan, price, approve, deploy, settle."""

from pathlib import Path

import pytest
from sqlmodel import select
from temporalio.client import Client

from activities.deploy_target import GitDeployTarget
from client.lifecycle import LifecycleClient, LifecycleRefused
from models import (
    Approval,
    ChangeJob,
    ChangeJobKind,
    ChangeJobStatus,
    Deployment,
    DeploymentEnvironment,
    DeploymentPlan,
    DeploymentStatus,
    PlanApprovalStatus,
    PromptStatus,
)
from models.billing import HoldStatus
from models.db import SessionFactory
from scripts.sample_repo import HIGH_RISK_PROMPT, SAFE_PROMPT
from tests.lifecycle_support import (
    FUNDS,
    balance,
    holds,
    make_shop,
    plan_awaiting_approval,
    request_row,
    settlements,
    submit,
)
from tests.workers import running_workers
from workflows.contracts.errors import ErrorType

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_low_risk_request_is_approved_by_policy_and_reaches_production(
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
        request_id = await submit(lifecycle, shop, SAFE_PROMPT)
        result = await lifecycle.wait_for_outcome(request_id)
        status = await lifecycle.status(request_id)

    assert result.status is PromptStatus.COMPLETED, result.reason
    assert result.tokens_used > 0
    assert result.tokens_settled == result.tokens_used
    assert [d.status for d in result.deployments] == [DeploymentStatus.SUCCEEDED] * 2
    assert await balance(sessions, shop.account) == FUNDS - result.tokens_used
    assert len(await settlements(sessions, shop)) == 1
    assert [h.status for h in await holds(sessions, shop)] == [HoldStatus.SETTLED]

    row = await request_row(sessions, request_id)
    assert row is not None and row.status is PromptStatus.COMPLETED
    assert row.tokens_used == result.tokens_used
    async with sessions() as session:
        plan = (
            await session.exec(
                select(DeploymentPlan).where(DeploymentPlan.prompt_request_id == request_id)
            )
        ).one()
        assert plan.approval_status is PlanApprovalStatus.AUTO_APPROVED
        assert plan.commit_sha == result.commit_sha and plan.content_hash == result.content_hash
        deployments = (
            await session.exec(select(Deployment).where(Deployment.plan_id == plan.id))
        ).all()
        assert {d.status for d in deployments} == {DeploymentStatus.SUCCEEDED}
        jobs = (
            await session.exec(select(ChangeJob).where(ChangeJob.prompt_request_id == request_id))
        ).all()
        ai_jobs = [j for j in jobs if j.kind is ChangeJobKind.AI_CHANGE]
        assert len(ai_jobs) == 2  # plan and apply
        assert all(j.status is ChangeJobStatus.SUCCEEDED and j.attempts == 1 for j in ai_jobs)

    assert status.status is PromptStatus.COMPLETED
    assert (
        status.plan is not None and status.plan.approval_status is PlanApprovalStatus.AUTO_APPROVED
    )


async def test_high_risk_request_waits_for_two_distinct_approvers(
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
        request_id = await submit(lifecycle, shop, HIGH_RISK_PROMPT)
        status, plan = await plan_awaiting_approval(lifecycle, request_id)
        assert plan.approvals_required == 2
        assert [h.status for h in status.holds] == ["active"]
        content_hash = plan.content_hash

        first, second = shop.admins
        after_one = await lifecycle.approve(request_id, user_id=first.id, content_hash=content_hash)
        assert after_one.status is PromptStatus.AWAITING_APPROVAL
        # The same person approving again is told so, and it changes nothing: one approval.
        with pytest.raises(LifecycleRefused) as again:
            await lifecycle.approve(request_id, user_id=first.id, content_hash=content_hash)
        assert again.value.error_type == ErrorType.ALREADY_APPROVED
        assert len((await lifecycle.status(request_id)).approvals) == 1
        await lifecycle.approve(request_id, user_id=second.id, content_hash=content_hash)
        result = await lifecycle.wait_for_outcome(request_id)

    assert result.status is PromptStatus.COMPLETED, result.reason
    async with sessions() as session:
        approvals = (await session.exec(select(Approval))).all()
    assert {a.user_id for a in approvals} == {first.id, second.id}
    assert {a.content_hash for a in approvals} == {content_hash}
    assert len(await settlements(sessions, shop)) == 1


async def test_an_operator_rolls_production_back_to_an_earlier_lifecycle_through_the_client(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    shop = await make_shop(sessions, tmp_path)
    target = GitDeployTarget(tmp_path / "workspace")
    repo = Path(shop.project.repo_url)
    async with running_workers(
        client, sessions, task_queue=task_queue, deploy_task_queue=deploy_queue
    ):
        first = await lifecycle.wait_for_outcome(await submit(lifecycle, shop, SAFE_PROMPT))
        second = await lifecycle.wait_for_outcome(
            await submit(lifecycle, shop, "set store_name to Corner Shop Two")
        )
        assert await target.current_release(repo=repo, environment="production") == (
            second.commit_sha
        )
        [first_production] = [
            d for d in first.deployments if d.environment is DeploymentEnvironment.PRODUCTION
        ]
        rollback_id = await lifecycle.roll_back(
            tenant_id=shop.tenant.id,
            target_deployment_id=first_production.deployment_id,
            requested_by=shop.admins[0].id,
            reason="the new name confuses customers",
        )
        rollback = await lifecycle.rollback_result(rollback_id)

    assert rollback.deployment_id == rollback_id
    assert rollback.status is DeploymentStatus.SUCCEEDED
    assert rollback.commit_sha == first.commit_sha
    assert await target.current_release(repo=repo, environment="production") == first.commit_sha
