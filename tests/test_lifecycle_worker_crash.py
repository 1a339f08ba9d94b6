"""A worker process killed with SIGKILL in the middle of a lifecycle: a fresh process picks the
lifecycle up and it completes, charging the tenant exactly once."""

import asyncio
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client

from client.lifecycle import LifecycleClient
from models import PromptStatus, TokenTransactionKind
from models.db import SessionFactory
from scripts.sample_repo import SAFE_PROMPT
from tests.lifecycle_support import (
    FUNDS,
    balance,
    entries,
    holds,
    human_policy,
    make_shop,
    plan_awaiting_approval,
    settlements,
    submit,
)
from tests.process_support import WorkerProcess
from workflows.contracts.ids import prompt_request_workflow_id
from workflows.contracts.search_attributes import PROMPT_STATUS

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_lifecycle_survives_its_worker_being_killed_and_settles_once(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    worker_env: dict[str, str],
    tmp_path: Path,
) -> None:
    shop = await make_shop(sessions, tmp_path, policy=human_policy())
    lifecycle = LifecycleClient(
        client, task_queue=task_queue, deploy_task_queue=f"{task_queue}-deploy"
    )
    first = WorkerProcess(worker_env, tmp_path / "worker-1.log")
    second = WorkerProcess(worker_env, tmp_path / "worker-2.log")
    first.start()
    try:
        request_id = await submit(lifecycle, shop, SAFE_PROMPT)
        _, plan = await plan_awaiting_approval(lifecycle, request_id, within=120)
        for admin in shop.admins:
            await lifecycle.approve(request_id, user_id=admin.id, content_hash=plan.content_hash)
        # The approval set applying and deploying in motion: kill the worker in the middle.
        await asyncio.sleep(0.3)
        first.kill()
        mid_flight = await lifecycle_status_without_worker(client, request_id)

        second.start()
        # Steps the dead worker held are retried after their heartbeat or start-to-close
        # timeouts (30 s at most on the lifecycle's path).
        try:
            async with asyncio.timeout(180):
                result = await lifecycle.wait_for_outcome(request_id)
        except TimeoutError:
            pytest.fail(
                f"the lifecycle did not complete:\n{await pending_work(client, task_queue)}"
            )
    finally:
        first.stop()
        second.stop()

    assert mid_flight is not PromptStatus.COMPLETED
    assert result.status is PromptStatus.COMPLETED, result.reason
    assert len(await settlements(sessions, shop)) == 1
    assert len(await holds(sessions, shop)) == 1
    # The worker's start may have created the plan-grant schedule, which grants this month.
    granted = sum(
        e.amount
        for e in await entries(sessions, shop.account)
        if e.kind is TokenTransactionKind.GRANT
    )
    assert await balance(sessions, shop.account) == FUNDS + granted - result.tokens_used


async def lifecycle_status_without_worker(client: Client, request_id: uuid.UUID) -> PromptStatus:
    """Where the lifecycle stood when its worker died, read from the PromptStatus search
    attribute (no worker is needed to answer it)."""
    description = await client.get_workflow_handle(
        prompt_request_workflow_id(request_id)
    ).describe()
    status = description.typed_search_attributes.get(PROMPT_STATUS)
    assert status is not None
    return PromptStatus(status)


async def pending_work(client: Client, task_queue: str) -> str:
    """What each workflow of the test still waits for, to explain a stuck lifecycle."""
    lines = []
    async for execution in client.list_workflows(f"TaskQueue = '{task_queue}'"):
        description = await client.get_workflow_handle(
            execution.id, run_id=execution.run_id
        ).describe()
        raw = description.raw_description
        activities = [
            f"{a.activity_type.name} attempt {a.attempt} state {a.state} {a.last_failure.message}"
            for a in raw.pending_activities
        ]
        lines.append(f"{execution.id} {description.status}: {activities}")
    return "\n".join(lines)
