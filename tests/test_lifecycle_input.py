"""What a lifecycle does with input it must refuse: a blank rejection reason, a prompt over the
limit, a payload that does not fit its model. Each is refused typed, at once, writing nothing,
and a refused request's status (query and `PromptStatus` search attribute) ends `failed`."""

import uuid
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from client.lifecycle import LifecycleClient, LifecycleRefused
from models import PromptStatus
from models.db import SessionFactory
from models.lifecycle import DeploymentStatus
from scripts.sample_repo import SAFE_PROMPT
from tests.lifecycle_support import (
    Shop,
    human_policy,
    make_shop,
    plan_awaiting_approval,
    request_row,
    submit,
)
from tests.test_lifecycle_cli import rows_written
from tests.workers import running_workers
from workflows.contracts.deployment import DeploymentState
from workflows.contracts.errors import ErrorType
from workflows.contracts.ids import prompt_request_workflow_id
from workflows.contracts.lifecycle import (
    MAX_PROMPT_CHARS,
    MAX_REASON_CHARS,
    PromptRequestInput,
    PromptRequestResult,
    PromptRequestStatus,
)
from workflows.contracts.search_attributes import PROMPT_STATUS

pytestmark = pytest.mark.asyncio(loop_scope="session")

ONE_MEGABYTE_PROMPT = "set theme to dark\n" * (1_000_000 // 18)


async def test_a_blank_or_missing_rejection_reason_is_a_typed_refusal(
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
        decider = {"user_id": shop.admins[0].id, "content_hash": plan.content_hash}
        # The typed client refuses as the workflow would: never a raw ValidationError.
        by_client = {}
        for reason in ("   ", "", "x" * (MAX_REASON_CHARS + 1)):
            with pytest.raises(LifecycleRefused) as refused:
                await lifecycle.reject(request_id, reason=reason, **decider)
            by_client[reason[:3]] = refused.value.error_type
        # And the workflow's validator refuses what another client sends.
        handle = client.get_workflow_handle(prompt_request_workflow_id(request_id))
        by_workflow = []
        for payload in (
            {**decider, "reason": " \n\t"},
            {**decider, "reason": ""},
            {"user_id": str(shop.admins[0].id), "content_hash": plan.content_hash},
        ):
            with pytest.raises(WorkflowUpdateFailedError) as failed:
                await handle.execute_update("reject", payload, result_type=PromptRequestStatus)
            assert isinstance(failed.value.cause, ApplicationError)
            assert failed.value.cause.non_retryable
            by_workflow.append(failed.value.cause.type)
        status = await lifecycle.status(request_id)

    assert by_client == {
        "   ": ErrorType.EMPTY_REASON,
        "": ErrorType.EMPTY_REASON,
        "xxx": ErrorType.INVALID_REQUEST,
    }
    assert by_workflow == [ErrorType.EMPTY_REASON] * 3
    assert status.status is PromptStatus.AWAITING_APPROVAL
    assert status.approvals == []
    row = await request_row(sessions, request_id)
    assert row is not None and row.status is PromptStatus.AWAITING_APPROVAL


async def start_directly(
    client: Client, task_queue: str, shop: Shop, prompt: str
) -> WorkflowHandle[object, PromptRequestResult]:
    """Start a lifecycle as another service might, without the typed client's own checks."""
    request_id = uuid.uuid4()
    return await client.start_workflow(
        "PromptRequestWorkflow",
        PromptRequestInput(
            prompt_request_id=request_id,
            tenant_id=shop.tenant.id,
            project_id=shop.project.id,
            requested_by=shop.requester.id,
            prompt=prompt,
        ),
        id=prompt_request_workflow_id(request_id),
        task_queue=task_queue,
        result_type=PromptRequestResult,
        search_attributes=TypedSearchAttributes(
            [SearchAttributePair(PROMPT_STATUS, PromptStatus.RECEIVED.value)]
        ),
    )


async def activities_scheduled(handle: WorkflowHandle[object, PromptRequestResult]) -> int:
    history = await handle.fetch_history()
    return sum(
        event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED for event in history.events
    )


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        (ONE_MEGABYTE_PROMPT, ErrorType.PROMPT_TOO_LONG),
        (" \n ", ErrorType.EMPTY_PROMPT),
    ],
)
async def test_a_prompt_over_the_limits_is_refused_before_any_activity_carries_it(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
    prompt: str,
    expected: ErrorType,
) -> None:
    assert len(ONE_MEGABYTE_PROMPT) > MAX_PROMPT_CHARS
    shop = await make_shop(sessions, tmp_path)
    funded = await rows_written(sessions)
    # The typed client refuses it before starting anything.
    request_id = uuid.uuid4()
    with pytest.raises(LifecycleRefused) as refused_by_client:
        await lifecycle.submit(
            tenant_id=shop.tenant.id,
            project_id=shop.project.id,
            user_id=shop.requester.id,
            prompt=prompt,
            prompt_request_id=request_id,
        )
    with pytest.raises(RPCError) as never_started:
        await client.get_workflow_handle(prompt_request_workflow_id(request_id)).describe()
    async with running_workers(
        client, sessions, task_queue=task_queue, deploy_task_queue=deploy_queue
    ):
        handle = await start_directly(client, task_queue, shop, prompt)
        with pytest.raises(WorkflowFailureError) as failed:
            await handle.result()
        status = await handle.query("status", result_type=PromptRequestStatus)
    described = await handle.describe()

    assert refused_by_client.value.error_type == expected
    assert never_started.value.status is RPCStatusCode.NOT_FOUND
    assert isinstance(failed.value.cause, ApplicationError)
    assert failed.value.cause.type == expected and failed.value.cause.non_retryable
    assert await activities_scheduled(handle) == 0
    assert status.status is PromptStatus.FAILED
    assert described.typed_search_attributes.get(PROMPT_STATUS) == PromptStatus.FAILED.value
    assert await rows_written(sessions) == funded


async def test_a_request_refused_at_submission_ends_with_a_terminal_status(
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
        request_id = await lifecycle.submit(
            tenant_id=uuid.uuid4(),
            project_id=shop.project.id,
            user_id=shop.requester.id,
            prompt=SAFE_PROMPT,
        )
        with pytest.raises(LifecycleRefused) as refused:
            await lifecycle.wait_for_outcome(request_id)
        status = await lifecycle.status(request_id)
    handle = client.get_workflow_handle(prompt_request_workflow_id(request_id))
    described = await handle.describe()
    listed = [
        execution.id
        async for execution in client.list_workflows(
            f"WorkflowId = '{handle.id}' AND PromptStatus = 'failed'"
        )
    ]

    assert refused.value.error_type == ErrorType.UNKNOWN_TENANT
    assert status.status is PromptStatus.FAILED
    assert status.reason == refused.value.message
    assert described.typed_search_attributes.get(PROMPT_STATUS) == PromptStatus.FAILED.value
    assert listed == [handle.id]
    assert await request_row(sessions, request_id) is None


async def test_the_status_of_a_workflow_whose_input_never_decoded_names_the_refusal(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
) -> None:
    async with running_workers(
        client, sessions, task_queue=task_queue, deploy_task_queue=deploy_queue
    ):
        lifecycle = await client.start_workflow(
            "PromptRequestWorkflow",
            {"prompt": "set theme to dark"},
            id=f"malformed-{uuid.uuid4()}",
            task_queue=task_queue,
        )
        deployment = await client.start_workflow(
            "DeploymentWorkflow",
            {"deployment_id": "7"},
            id=f"malformed-{uuid.uuid4()}",
            task_queue=task_queue,
        )
        for handle in (lifecycle, deployment):
            with pytest.raises(WorkflowFailureError):
                await handle.result()
        with pytest.raises(WorkflowQueryFailedError) as no_request:
            await lifecycle.query("status", result_type=PromptRequestStatus)
        deployment_state = await deployment.query("status", result_type=DeploymentState)

    # A query failure carries only the message: the refusal's, naming the missing fields.
    assert str(no_request.value).startswith("invalid PromptRequestInput: prompt_request_id: ")
    assert "tenant_id" in str(no_request.value)
    assert deployment_state.status is DeploymentStatus.FAILED
    assert "deployment_id" in deployment_state.step
