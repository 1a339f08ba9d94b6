"""What a lifecycle shows (update answers, the status query, current details, results) is the
state it reached, never the one it left."""

import asyncio
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client

from client.lifecycle import LifecycleClient, LifecycleRefused
from models import DeploymentStatus, PlanApprovalStatus, PromptStatus
from models.db import SessionFactory
from scripts.sample_repo import SAFE_PROMPT
from tests.lifecycle_support import human_policy, make_shop, plan_awaiting_approval, submit
from tests.workers import running_workers
from workflows.contracts.errors import ErrorType
from workflows.contracts.ids import prompt_request_workflow_id

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def current_details(client: Client, request_id: uuid.UUID) -> str:
    """What the Web UI shows as the workflow's current details."""
    metadata = await client.get_workflow_handle(prompt_request_workflow_id(request_id)).query(
        "__temporal_workflow_metadata"
    )
    return str(metadata.current_details)


async def test_approvals_show_progress_and_the_deciding_one_answers_approved(
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
        _, plan = await plan_awaiting_approval(lifecycle, request_id)
        assert "0 of 2 approvals" in await current_details(client, request_id)

        first = await lifecycle.approve(
            request_id, user_id=shop.admins[0].id, content_hash=plan.content_hash
        )
        assert first.status is PromptStatus.AWAITING_APPROVAL
        assert "1 of 2 approvals" in first.step
        assert "1 of 2 approvals" in await current_details(client, request_id)

        deciding = await lifecycle.approve(
            request_id, user_id=shop.admins[1].id, content_hash=plan.content_hash
        )
        assert deciding.status is PromptStatus.APPROVED
        assert deciding.plan is not None
        assert deciding.plan.approval_status is PlanApprovalStatus.APPROVED
        result = await lifecycle.wait_for_outcome(request_id)

    assert result.status is PromptStatus.COMPLETED, result.reason
    assert [(d.environment.value, d.status, d.detail) for d in result.deployments] == [
        ("staging", DeploymentStatus.SUCCEEDED, "verified"),
        ("production", DeploymentStatus.SUCCEEDED, "verified"),
    ]


async def test_a_racing_approval_is_told_the_plan_was_already_decided(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    shop = await make_shop(sessions, tmp_path, policy=human_policy(approvals_required={"low": 1}))
    async with running_workers(
        client, sessions, task_queue=task_queue, deploy_task_queue=deploy_queue
    ):
        request_id = await submit(lifecycle, shop, SAFE_PROMPT)
        _, plan = await plan_awaiting_approval(lifecycle, request_id)
        outcomes = await asyncio.gather(
            *(
                lifecycle.approve(request_id, user_id=admin.id, content_hash=plan.content_hash)
                for admin in shop.admins
            ),
            return_exceptions=True,
        )
        result = await lifecycle.wait_for_outcome(request_id)

    refusals = [o for o in outcomes if isinstance(o, BaseException)]
    answers = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(answers) == 1 and answers[0].status is PromptStatus.APPROVED
    assert len(refusals) == 1 and isinstance(refusals[0], LifecycleRefused), refusals
    assert refusals[0].error_type == ErrorType.NOT_AWAITING_APPROVAL
    # The refusal says what happened: never "awaiting_approval, not awaiting approval".
    message = str(refusals[0])
    assert "awaiting_approval, not" not in message
    assert "decision" in message or "approved" in message, message
    assert result.status is PromptStatus.COMPLETED, result.reason
