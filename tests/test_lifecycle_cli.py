"""A service in any language can drive a lifecycle with the `temporal` CLI alone: the commands
documented in workflows/schemas/README.md, run for real."""

import asyncio
import json
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from models import PromptStatus
from models.db import SessionFactory
from scripts.sample_repo import SAFE_PROMPT
from tests.lifecycle_support import human_policy, make_shop, settlements
from tests.workers import running_workers
from workers.devstack import binary

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def temporal(address: str, *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        binary("temporal"),
        *args,
        "--address",
        address,
        "--output",
        "json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return out.decode()


async def test_start_approve_and_read_status_with_the_temporal_cli(
    client: Client,
    temporal_env: WorkflowEnvironment,
    sessions: SessionFactory,
    task_queue: str,
    tmp_path: Path,
) -> None:
    shop = await make_shop(sessions, tmp_path, policy=human_policy())
    address = client.service_client.config.target_host
    request_id = uuid.uuid4()
    workflow_id = f"prompt-request-{request_id}"
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
            )
        result = json.loads(
            await temporal(address, "workflow", "result", "--workflow-id", workflow_id)
        )

    assert result["status"] == "COMPLETED"
    assert result["result"]["status"] == PromptStatus.COMPLETED.value
    assert len(await settlements(sessions, shop)) == 1
