"""What a lifecycle costs in round trips (the steps of an auto-approved request, counted in its
history), and the one writer of a request's status: the workflow decides, an activity persists
what it is given."""

import collections
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from activities.git_change_engine import GitChangeEngine
from activities.lifecycle import LifecycleActivities
from client.lifecycle import LifecycleClient
from models import IllegalTransition, PromptRequest, PromptStatus
from models.db import SessionFactory
from scripts.sample_repo import SAFE_PROMPT
from tests.factories import make_project, make_tenant, make_user
from tests.lifecycle_support import make_shop, submit
from tests.workers import running_workers
from workflows.contracts.ids import prompt_request_workflow_id
from workflows.contracts.lifecycle import SetRequestStatus

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def steps_of(client: Client, workflow_id: str) -> collections.Counter[str]:
    """What the workflow's history holds: activity tasks by type, local activities, and the
    workflow tasks it took."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    steps: collections.Counter[str] = collections.Counter()
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            steps[event.activity_task_scheduled_event_attributes.activity_type.name] += 1
        elif event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
            if event.marker_recorded_event_attributes.marker_name == "core_local_activity":
                steps["local activities"] += 1
        elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
            steps["workflow tasks"] += 1
    return steps


async def test_an_auto_approved_lifecycle_queues_only_the_engine_work(
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
    assert result.status is PromptStatus.COMPLETED, result.reason

    steps = await steps_of(client, prompt_request_workflow_id(request_id))
    workflow_tasks = steps.pop("workflow tasks")
    # Planning and applying go through the task queue; loading the decision keys (so the
    # validators judge tokens), the hold, the approval, the two status writes and the settlement
    # are local activities, each status written with its step.
    assert steps == {"plan_request": 1, "apply_change": 1, "local activities": 6}
    # 15 to 16 when every step was an activity task (plus the children's progress signals).
    assert workflow_tasks <= 12


async def test_a_status_activity_persists_the_status_it_is_given_and_refuses_an_illegal_one(
    sessions: SessionFactory,
) -> None:
    tenant = await make_tenant(sessions)
    project = await make_project(sessions, tenant=tenant)
    user = await make_user(sessions, tenant=tenant)
    request = PromptRequest(
        tenant_id=tenant.id,
        project_id=project.id,
        user_id=user.id,
        prompt="set the theme to dark",
        status=PromptStatus.PLANNING,
    )
    async with sessions() as session:
        session.add(request)
        await session.commit()
    lifecycle = LifecycleActivities(sessions, GitChangeEngine())

    with pytest.raises(IllegalTransition):
        await ActivityEnvironment().run(
            lifecycle.set_request_status,
            SetRequestStatus(prompt_request_id=request.id, status=PromptStatus.COMPLETED),
        )
    await ActivityEnvironment().run(
        lifecycle.set_request_status,
        SetRequestStatus(
            prompt_request_id=request.id, status=PromptStatus.FAILED, reason="the engine is down"
        ),
    )
    async with sessions() as session:
        row = await session.get(PromptRequest, request.id)
    assert row is not None
    assert (row.status, row.status_reason) == (PromptStatus.FAILED, "the engine is down")
