"""A service in any language can drive a lifecycle with the `temporal` CLI alone: the commands
documented in workflows/schemas/README.md, run for real."""

import asyncio
import base64
import json
import os
import sys
import uuid
from pathlib import Path

import pytest
from sqlmodel import func, select
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from client.lifecycle import LifecycleClient
from infra.codec import ENCRYPTED_ENCODING
from infra.settings import DecisionTokenMode
from models import PromptStatus
from models.billing import TokenHold, TokenLedgerRequest, TokenTransaction
from models.db import SessionFactory
from models.lifecycle import Approval, ChangeJob, Deployment, DeploymentPlan, PromptRequest
from scripts.sample_repo import SAFE_PROMPT
from tests.lifecycle_support import (
    human_policy,
    make_shop,
    plan_awaiting_approval,
    settlements,
    submit,
)
from tests.temporal_cli import CodecEndpoint, temporal, temporal_outcome
from tests.workers import running_workers, test_settings
from workflows.contracts.errors import ErrorType
from workflows.contracts.ids import prompt_request_workflow_id

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_start_approve_and_read_status_with_the_temporal_cli(
    client: Client,
    codec_endpoint: CodecEndpoint,
    temporal_env: WorkflowEnvironment,
    sessions: SessionFactory,
    task_queue: str,
    tmp_path: Path,
) -> None:
    shop = await make_shop(sessions, tmp_path, policy=human_policy())
    address = client.service_client.config.target_host
    request_id = uuid.uuid4()
    workflow_id = prompt_request_workflow_id(request_id)
    start_input = {
        "prompt_request_id": str(request_id),
        "tenant_id": str(shop.tenant.id),
        "project_id": str(shop.project.id),
        "requested_by": str(shop.requester.id),
        "prompt": SAFE_PROMPT,
        "deploy_task_queue": f"{task_queue}-deploy",
    }
    async with running_workers(
        client, sessions, task_queue=task_queue, deploy_task_queue=f"{task_queue}-deploy"
    ):
        await temporal(
            address,
            "workflow",
            "start",
            "--type",
            "PromptRequestWorkflow",
            "--task-queue",
            task_queue,
            "--workflow-id",
            workflow_id,
            "--input",
            json.dumps(start_input),
            "--search-attribute",
            f'TenantId="{shop.tenant.id}"',
            "--static-summary",
            "Set the theme to dark",
        )
        async with asyncio.timeout(60):
            while True:
                query = json.loads(
                    await temporal(
                        address,
                        "workflow",
                        "query",
                        "--workflow-id",
                        workflow_id,
                        "--name",
                        "status",
                        codec=codec_endpoint,
                    )
                )
                status = query["queryResult"][0]
                if status["status"] == PromptStatus.AWAITING_APPROVAL.value:
                    break
                await asyncio.sleep(0.2)
        for admin in shop.admins:
            await temporal(
                address,
                "workflow",
                "update",
                "execute",
                "--workflow-id",
                workflow_id,
                "--name",
                "approve",
                "--input",
                json.dumps(
                    {"user_id": str(admin.id), "content_hash": status["plan"]["content_hash"]}
                ),
                codec=codec_endpoint,  # encrypts the decision; the start above went plaintext
            )
        result = json.loads(
            await temporal(
                address, "workflow", "result", "--workflow-id", workflow_id, codec=codec_endpoint
            )
        )
        # Without the codec server the CLI reads what Temporal holds: ciphertext.
        sealed = await temporal(address, "workflow", "result", "--workflow-id", workflow_id)

    assert result["status"] == "COMPLETED"
    assert SAFE_PROMPT not in sealed and "theme" not in sealed
    assert ENCRYPTED_ENCODING_BASE64 in sealed
    assert result["result"]["status"] == PromptStatus.COMPLETED.value
    assert len(await settlements(sessions, shop)) == 1


async def decision_token(data_dir: Path, *args: str) -> str:
    """A token from the development signer's CLI, as the schemas README shows."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "scripts.decision_signer",
        "issue",
        *args,
        env={**os.environ, "CHANGEFLOW_DATA_DIR": str(data_dir)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return out.decode().strip()


async def test_signed_approvals_with_the_temporal_cli(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    tmp_path: Path,
    codec_endpoint: CodecEndpoint,
) -> None:
    """The README's recipe with tokens required: a token from the development signer's CLI
    approves once; no token, or the same token again, is a typed refusal."""
    shop = await make_shop(sessions, tmp_path, policy=human_policy())
    address = client.service_client.config.target_host
    settings = test_settings(
        task_queue=task_queue,
        deploy_task_queue=f"{task_queue}-deploy",
        workspace_dir=tmp_path / "workspace",
    ).model_copy(update={"decision_tokens": DecisionTokenMode.REQUIRED, "data_dir": tmp_path})
    typed = LifecycleClient(client, task_queue=task_queue, deploy_task_queue=f"{task_queue}-deploy")
    async with running_workers(client, sessions, settings):
        request_id = await submit(typed, shop, SAFE_PROMPT)
        _, plan = await plan_awaiting_approval(typed, request_id)
        workflow_id = prompt_request_workflow_id(request_id)

        async def approve(admin_id: uuid.UUID, token: str | None) -> tuple[int, str, str]:
            payload = {"user_id": str(admin_id), "content_hash": plan.content_hash}
            if token is not None:
                payload["token"] = token
            return await temporal_outcome(
                address,
                "workflow",
                "update",
                "execute",
                "--workflow-id",
                workflow_id,
                "--name",
                "approve",
                "--input",
                json.dumps(payload),
                codec=codec_endpoint,  # the update's answer is encrypted
            )

        first, second = shop.admins
        tokens = [
            await decision_token(
                tmp_path,
                "--user",
                str(admin.id),
                "--tenant",
                str(shop.tenant.id),
                "--request",
                str(request_id),
                "--action",
                "approve",
                "--plan-hash",
                plan.content_hash,
            )
            for admin in shop.admins
        ]
        unsigned = await approve(first.id, None)
        assert unsigned[0] != 0 and ErrorType.TOKEN_REQUIRED in unsigned[1] + unsigned[2]
        assert (await approve(first.id, tokens[0]))[0] == 0
        # A token names its user: the second admin cannot decide with the first one's.
        replayed = await approve(second.id, tokens[0])
        assert replayed[0] != 0 and ErrorType.WRONG_USER in replayed[1] + replayed[2]
        assert (await approve(second.id, tokens[1]))[0] == 0
        result = await typed.wait_for_outcome(request_id)

    assert result.status is PromptStatus.COMPLETED, result.reason
    async with sessions() as session:
        approvals = (await session.exec(select(Approval))).all()
    assert {a.user_id for a in approvals} == {first.id, second.id}


async def rows_written(sessions: SessionFactory) -> dict[str, int]:
    """How many rows each table a lifecycle or a deployment writes holds, where not none."""
    counts: dict[str, int] = {}
    async with sessions() as session:
        for model in (
            PromptRequest,
            DeploymentPlan,
            Approval,
            Deployment,
            ChangeJob,
            TokenHold,
            TokenTransaction,
            TokenLedgerRequest,
        ):
            rows = await session.exec(select(func.count()).select_from(model))
            if count := rows.one():
                counts[model.__name__] = count
    return counts


# How the CLI's JSON shows the metadata of an encrypted payload (bytes are base64).
ENCRYPTED_ENCODING_BASE64 = base64.b64encode(ENCRYPTED_ENCODING).decode()
SOME_UUID = "0b4f6c1e-2f8e-4a59-9d33-5d0f1f3f2a10"
START = {
    "prompt_request_id": SOME_UUID,
    "tenant_id": SOME_UUID,
    "project_id": SOME_UUID,
    "requested_by": SOME_UUID,
    "prompt": "set theme to dark",
}
DEPLOYMENT = {
    "deployment_id": SOME_UUID,
    "tenant_id": SOME_UUID,
    "project_id": SOME_UUID,
    "plan_id": SOME_UUID,
    "environment": "staging",
    "commit_sha": "0123456789abcdef",
}


@pytest.mark.parametrize(
    ("workflow_type", "start_input", "field"),
    [
        ("PromptRequestWorkflow", {**START, "tenant_id": "not-a-uuid"}, "tenant_id"),
        ("PromptRequestWorkflow", {k: v for k, v in START.items() if k != "prompt"}, "prompt"),
        ("PromptRequestWorkflow", {**START, "prompt": 123}, "prompt"),
        ("PromptRequestWorkflow", "set theme to dark", "(input)"),
        ("DeploymentWorkflow", {**DEPLOYMENT, "environment": "moon"}, "environment"),
        (
            "RollbackWorkflow",
            {"tenant_id": SOME_UUID, "target_deployment_id": 7},
            "target_deployment_id",
        ),
        ("LedgerSweepWorkflow", {"batch_size": 0}, "batch_size"),
    ],
)
async def test_a_malformed_start_input_ends_the_workflow_at_once_as_invalid_request(
    client: Client,
    codec_endpoint: CodecEndpoint,
    temporal_env: WorkflowEnvironment,
    sessions: SessionFactory,
    task_queue: str,
    workflow_type: str,
    start_input: object,
    field: str,
) -> None:
    address = client.service_client.config.target_host
    workflow_id = f"malformed-{uuid.uuid4()}"
    async with running_workers(
        client, sessions, task_queue=task_queue, deploy_task_queue=f"{task_queue}-deploy"
    ):
        await temporal(
            address,
            "workflow",
            "start",
            "--type",
            workflow_type,
            "--task-queue",
            task_queue,
            "--workflow-id",
            workflow_id,
            "--input",
            json.dumps(start_input),
        )
        # Bounded only so that a regression (a workflow task failing in a loop) fails the test
        # instead of hanging it.
        async with asyncio.timeout(30):
            returncode, out, err = await temporal_outcome(
                address, "workflow", "result", "--workflow-id", workflow_id, codec=codec_endpoint
            )
    assert returncode != 0, err
    result = json.loads(out)
    assert result["status"] == "FAILED"
    failure = result["closeEvent"]["workflowExecutionFailedEventAttributes"]["failure"]
    assert failure["applicationFailureInfo"]["type"] == ErrorType.INVALID_REQUEST
    assert failure["applicationFailureInfo"]["nonRetryable"] is True
    # A typed refusal's message stays readable; its stack trace is in the encoded attributes,
    # which the codec server decoded.
    assert f"{field}: " in failure["message"]
    assert failure["encodedAttributes"]["message"] == failure["message"]
    assert "stack_trace" in failure["encodedAttributes"]
    [problems] = failure["applicationFailureInfo"]["details"]
    assert field in {problem["field"] for problem in problems}
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    events = {event.event_type for event in history.events}
    assert EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED not in events
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED not in events
    assert await rows_written(sessions) == {}


async def test_a_malformed_blank_or_late_decision_by_cli_is_refused_and_writes_nothing(
    client: Client,
    codec_endpoint: CodecEndpoint,
    temporal_env: WorkflowEnvironment,
    sessions: SessionFactory,
    task_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    shop = await make_shop(sessions, tmp_path, policy=human_policy())
    address = client.service_client.config.target_host
    async with running_workers(
        client, sessions, task_queue=task_queue, deploy_task_queue=f"{task_queue}-deploy"
    ):
        request_id = await submit(lifecycle, shop, SAFE_PROMPT)
        _, plan = await plan_awaiting_approval(lifecycle, request_id)
        workflow_id = prompt_request_workflow_id(request_id)
        admin = str(shop.admins[0].id)
        refusals = {}
        for name, payload in (
            ("approve", {"user_id": "not-a-uuid", "content_hash": plan.content_hash}),
            ("approve", {"user_id": admin}),
            ("reject", {"user_id": admin, "content_hash": plan.content_hash, "reason": "  "}),
            ("reject", {"user_id": admin, "content_hash": plan.content_hash}),
        ):
            returncode, _, err = await temporal_outcome(
                address,
                "workflow",
                "update",
                "execute",
                "--workflow-id",
                workflow_id,
                "--name",
                name,
                "--input",
                json.dumps(payload),
                codec=codec_endpoint,
            )
            assert returncode != 0
            refusals[name, tuple(payload)] = err
        status = await lifecycle.status(request_id)
        async with sessions() as session:
            decisions = await session.exec(select(func.count()).select_from(Approval))
            decisions_recorded = decisions.one()
        # A decision after the end is answered by the server, untyped (see the README).
        await temporal(address, "workflow", "cancel", "--workflow-id", workflow_id)
        await temporal_outcome(address, "workflow", "result", "--workflow-id", workflow_id)
        returncode, _, late = await temporal_outcome(
            address,
            "workflow",
            "update",
            "execute",
            "--workflow-id",
            workflow_id,
            "--name",
            "approve",
            "--input",
            json.dumps({"user_id": admin, "content_hash": plan.content_hash}),
        )

    assert "InvalidRequest" in refusals["approve", ("user_id", "content_hash")]
    assert "user_id" in refusals["approve", ("user_id", "content_hash")]
    assert "content_hash" in refusals["approve", ("user_id",)]
    assert "EmptyReason" in refusals["reject", ("user_id", "content_hash", "reason")]
    assert "EmptyReason" in refusals["reject", ("user_id", "content_hash")]
    assert all("retryable: true" not in err.lower() for err in refusals.values())
    assert status.status is PromptStatus.AWAITING_APPROVAL and status.approvals == []
    assert decisions_recorded == 0
    assert returncode != 0
    assert "workflow execution already completed" in late
