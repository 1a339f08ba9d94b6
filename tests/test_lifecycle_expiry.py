"""A plan nobody decides on expires at the end of the tenant's approval window (time-skipping
server: the hour passes at once)."""

import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import select
from temporalio.api.enums.v1 import EventType
from temporalio.testing import WorkflowEnvironment

from client.lifecycle import LifecycleClient
from models import DeploymentPlan, PlanApprovalStatus, PromptStatus
from models.billing import HoldStatus
from models.db import SessionFactory
from scripts.sample_repo import SAFE_PROMPT
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
from workflows.contracts.ids import prompt_request_workflow_id

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_an_undecided_plan_expires_and_releases_its_hold(
    time_skipping_env: WorkflowEnvironment, sessions: SessionFactory, tmp_path: Path
) -> None:
    shop = await make_shop(sessions, tmp_path, policy=human_policy(plan_ttl_seconds=3600))
    client = time_skipping_env.client
    # The time-skipping server starts without our custom search attributes.
    queue = f"expiry-{uuid.uuid4()}"
    lifecycle = LifecycleClient(client, task_queue=queue, deploy_task_queue=f"{queue}-deploy")
    async with running_workers(
        client, sessions, task_queue=queue, deploy_task_queue=f"{queue}-deploy"
    ):
        request_id = await submit(lifecycle, shop, SAFE_PROMPT)
        waiting, waiting_plan = await plan_awaiting_approval(lifecycle, request_id)
        assert waiting.holds[0].status == "active"
        await time_skipping_env.sleep(timedelta(hours=1, seconds=1))
        result = await lifecycle.wait_for_outcome(request_id)
        after = await lifecycle.status(request_id)
        history = await client.get_workflow_handle(
            prompt_request_workflow_id(request_id)
        ).fetch_history()

    assert result.status is PromptStatus.EXPIRED
    assert "3600 seconds" in result.reason
    # The status query says what the row says, and the plan expired not a moment early.
    assert after.status is PromptStatus.EXPIRED
    assert after.plan is not None and after.plan.approval_status is PlanApprovalStatus.EXPIRED
    fired = [e for e in history.events if e.event_type == EventType.EVENT_TYPE_TIMER_FIRED]
    assert waiting_plan.expires_at is not None and len(fired) == 1
    expires_at = waiting_plan.expires_at
    assert fired[0].event_time.ToDatetime(tzinfo=expires_at.tzinfo) >= expires_at
    row = await request_row(sessions, request_id)
    assert row is not None and row.status is PromptStatus.EXPIRED
    async with sessions() as session:
        plan = (
            await session.exec(
                select(DeploymentPlan).where(DeploymentPlan.prompt_request_id == request_id)
            )
        ).one()
    assert plan.approval_status is PlanApprovalStatus.EXPIRED
    assert [h.status for h in await holds(sessions, shop)] == [HoldStatus.RELEASED]
    assert await settlements(sessions, shop) == []
    assert await balance(sessions, shop.account) == FUNDS
