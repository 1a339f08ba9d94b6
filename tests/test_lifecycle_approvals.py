"""Approval rules of the lifecycle: who may decide, on which plan, and what a decision does."""

import uuid
from pathlib import Path

import pytest
from sqlmodel import select
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from client.lifecycle import LifecycleClient, LifecycleRefused
from models import Approval, DeploymentPlan, PlanApprovalStatus, PromptStatus, UserRole
from models.billing import HoldStatus
from models.db import SessionFactory
from scripts.sample_repo import HIGH_RISK_PROMPT, SAFE_PROMPT
from tests.factories import make_user
from tests.lifecycle_support import (
    FUNDS,
    balance,
    holds,
    human_policy,
    make_shop,
    plan_awaiting_approval,
    request_row,
    settlements,
    submit,
)
from tests.workers import running_workers
from workflows.contracts.errors import ErrorType
from workflows.contracts.ids import prompt_request_workflow_id

pytestmark = pytest.mark.asyncio(loop_scope="session")

UPDATE_EVENTS = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_REJECTED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ADMITTED,
}


async def history_events(client: Client, request_id: uuid.UUID) -> list[EventType.ValueType]:
    history = await client.get_workflow_handle(
        prompt_request_workflow_id(request_id)
    ).fetch_history()
    return [event.event_type for event in history.events]


async def test_refused_decisions_leave_no_trace_in_history(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    shop = await make_shop(sessions, tmp_path, policy=human_policy())
    other_shop = await make_shop(sessions, tmp_path, name="Other Shop")
    operator = await make_user(sessions, tenant=shop.tenant, role=UserRole.CLIENT_OPERATOR)
    async with running_workers(
        client, sessions, task_queue=task_queue, deploy_task_queue=deploy_queue
    ):
        request_id = await submit(lifecycle, shop, SAFE_PROMPT)
        _, plan = await plan_awaiting_approval(lifecycle, request_id)
        current = plan.content_hash
        events_before = await history_events(client, request_id)

        refusals = {
            ErrorType.SELF_APPROVAL: (shop.requester.id, current),
            ErrorType.USER_OF_ANOTHER_TENANT: (other_shop.admins[0].id, current),
            ErrorType.ROLE_MAY_NOT_APPROVE: (operator.id, current),
            ErrorType.STALE_PLAN_HASH: (shop.admins[0].id, "0" * 64),
        }
        for expected, (user_id, content_hash) in refusals.items():
            with pytest.raises(LifecycleRefused) as refused:
                await lifecycle.approve(request_id, user_id=user_id, content_hash=content_hash)
            assert refused.value.error_type == expected
        with pytest.raises(LifecycleRefused) as refused:
            await lifecycle.reject(
                request_id, user_id=shop.viewer.id, content_hash=current, reason="no"
            )
        assert refused.value.error_type == ErrorType.ROLE_MAY_NOT_APPROVE

        events_after = await history_events(client, request_id)
        assert events_after == events_before
        assert not UPDATE_EVENTS & set(events_after)
        unchanged = await lifecycle.status(request_id)
        assert unchanged.status is PromptStatus.AWAITING_APPROVAL and unchanged.approvals == []
        await lifecycle.cancel(request_id)
        await lifecycle.wait_for_outcome(request_id)

    async with sessions() as session:
        assert (await session.exec(select(Approval))).all() == []


async def test_rejection_carries_its_reason_and_releases_the_hold(
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
        _, plan = await plan_awaiting_approval(lifecycle, request_id)
        content_hash = plan.content_hash
        await lifecycle.approve(request_id, user_id=shop.admins[0].id, content_hash=content_hash)
        await lifecycle.reject(
            request_id,
            user_id=shop.admins[1].id,
            content_hash=content_hash,
            reason="a migration before the sale is too risky",
        )
        result = await lifecycle.wait_for_outcome(request_id)
        # A decision arriving after the end is refused, and changes nothing.
        with pytest.raises(LifecycleRefused) as late:
            await lifecycle.approve(
                request_id, user_id=shop.admins[1].id, content_hash=content_hash
            )
        assert late.value.error_type == ErrorType.REQUEST_CLOSED

    assert result.status is PromptStatus.REJECTED
    assert result.reason == "a migration before the sale is too risky"
    row = await request_row(sessions, request_id)
    assert row is not None and row.status is PromptStatus.REJECTED
    assert row.status_reason == "a migration before the sale is too risky"
    assert [h.status for h in await holds(sessions, shop)] == [HoldStatus.RELEASED]
    assert await balance(sessions, shop.account) == FUNDS
    assert await settlements(sessions, shop) == []


async def test_late_approval_after_the_plan_was_approved_is_harmless(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    shop = await make_shop(sessions, tmp_path, policy=human_policy())
    third = await make_user(sessions, tenant=shop.tenant, role=UserRole.CLIENT_ADMIN)
    async with running_workers(
        client, sessions, task_queue=task_queue, deploy_task_queue=deploy_queue
    ):
        request_id = await submit(lifecycle, shop, SAFE_PROMPT)
        _, plan = await plan_awaiting_approval(lifecycle, request_id)
        content_hash = plan.content_hash
        for admin in shop.admins:
            await lifecycle.approve(request_id, user_id=admin.id, content_hash=content_hash)
        with pytest.raises(LifecycleRefused):
            await lifecycle.approve(request_id, user_id=third.id, content_hash=content_hash)
        result = await lifecycle.wait_for_outcome(request_id)

    assert result.status is PromptStatus.COMPLETED, result.reason
    async with sessions() as session:
        approvals = (await session.exec(select(Approval))).all()
    assert {a.user_id for a in approvals} == {a.id for a in shop.admins}
    assert len(await settlements(sessions, shop)) == 1


async def test_revising_the_prompt_replans_voids_approvals_and_swaps_the_hold(
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
        _, first_plan = await plan_awaiting_approval(lifecycle, request_id)
        await lifecycle.approve(
            request_id, user_id=shop.admins[0].id, content_hash=first_plan.content_hash
        )
        revised = await lifecycle.revise(
            request_id, user_id=shop.requester.id, prompt="set store_name to Corner Shop Deluxe"
        )
        assert revised.plan is not None and revised.plan.revision == 2
        assert revised.plan.content_hash != first_plan.content_hash
        assert revised.approvals == []
        assert [h.status for h in revised.holds] == ["released", "active"]
        # An approval of the first revision is now stale.
        with pytest.raises(LifecycleRefused) as stale:
            await lifecycle.approve(
                request_id, user_id=shop.admins[1].id, content_hash=first_plan.content_hash
            )
        assert stale.value.error_type == ErrorType.STALE_PLAN_HASH
        for admin in shop.admins:
            await lifecycle.approve(
                request_id, user_id=admin.id, content_hash=revised.plan.content_hash
            )
        result = await lifecycle.wait_for_outcome(request_id)

    assert result.status is PromptStatus.COMPLETED, result.reason
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
    assert [h.status for h in await holds(sessions, shop)].count(HoldStatus.RELEASED) == 1
    assert len(await settlements(sessions, shop)) == 1
