"""An operator's rollback with the `temporal` CLI alone: the RollbackWorkflow recipe of
workflows/schemas/README.md, run for real, and its typed refusals."""

import json
import uuid
from pathlib import Path

import pytest
from sqlmodel import select
from temporalio.client import Client

from client.lifecycle import LifecycleClient
from models import Deployment, DeploymentEnvironment, DeploymentStatus, PromptStatus
from models.db import SessionFactory
from scripts.sample_repo import SAFE_PROMPT
from tests.lifecycle_support import make_shop, submit
from tests.temporal_cli import CodecEndpoint, temporal_outcome
from tests.workers import running_workers
from workflows.contracts.ids import rollback_workflow_id

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def start_rollback(
    address: str,
    task_queue: str,
    tenant_id: uuid.UUID,
    target: uuid.UUID,
    codec: CodecEndpoint,
    requested_by: uuid.UUID | None = None,
) -> tuple[str, int, str]:
    """The README's recipe: start RollbackWorkflow, then wait for its result, both through the
    codec server."""
    deployment_id = uuid.uuid4()
    workflow_id = rollback_workflow_id(deployment_id)
    code, _, err = await temporal_outcome(
        address,
        "workflow",
        "start",
        "--type",
        "RollbackWorkflow",
        "--task-queue",
        task_queue,
        "--workflow-id",
        workflow_id,
        "--input",
        json.dumps(
            {
                "tenant_id": str(tenant_id),
                "target_deployment_id": str(target),
                "reason": "checkout broke after the theme change",
                "deploy_task_queue": f"{task_queue}-deploy",
                "requested_by": str(requested_by) if requested_by else None,
            }
        ),
        codec=codec,
    )
    assert code == 0, err
    code, out, err = await temporal_outcome(
        address, "workflow", "result", "--workflow-id", workflow_id, codec=codec
    )
    return workflow_id, code, out + err


def _failure(out: str) -> str:
    """The failure's type and message as `temporal workflow result` prints them (the lines
    naming the run differ from one run to the next)."""
    return "\n".join(
        line for line in out.splitlines() if "DeploymentNotFound" in line or "no deployment" in line
    )


async def production_deployments(sessions: SessionFactory) -> list[Deployment]:
    async with sessions() as session:
        rows = await session.exec(
            select(Deployment)
            .where(Deployment.environment == DeploymentEnvironment.PRODUCTION)
            .order_by(Deployment.queued_at)  # type: ignore[arg-type]
        )
        return list(rows.all())


async def test_an_operator_rolls_production_back_with_the_temporal_outcome(
    client: Client,
    codec_endpoint: CodecEndpoint,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    shop = await make_shop(sessions, tmp_path)
    address = client.service_client.config.target_host
    async with running_workers(
        client, sessions, task_queue=task_queue, deploy_task_queue=deploy_queue
    ):
        for prompt in (SAFE_PROMPT, "set store_name to Corner Shop Deluxe"):
            request_id = await submit(lifecycle, shop, prompt)
            outcome = await lifecycle.wait_for_outcome(request_id)
            assert outcome.status is PromptStatus.COMPLETED, outcome.reason
        first, second = await production_deployments(sessions)

        # Back to the first release: a new, verified deployment that undoes the second.
        workflow_id, code, out = await start_rollback(
            address, task_queue, shop.tenant.id, first.id, codec_endpoint
        )
        assert code == 0, out
        result = json.loads(out)
        assert result["status"] == "COMPLETED"
        assert result["result"]["status"] == DeploymentStatus.SUCCEEDED.value
        assert result["result"]["commit_sha"] == first.commit_sha
        assert workflow_id == rollback_workflow_id(result["result"]["deployment_id"])

        # The first release is live again: rolling back to it is refused, typed.
        _, code, out = await start_rollback(
            address, task_queue, shop.tenant.id, first.id, codec_endpoint
        )
        assert code != 0 and "RollbackTargetIsLive" in out, out
        # A deployment that does not exist, or belongs to another tenant.
        _, code, out = await start_rollback(
            address, task_queue, shop.tenant.id, uuid.uuid4(), codec_endpoint
        )
        assert code != 0 and "DeploymentNotFound" in out, out
        _, code, out = await start_rollback(
            address, task_queue, uuid.uuid4(), second.id, codec_endpoint
        )
        assert code != 0 and "DeploymentNotFound" in out, out
        # Someone of another tenant who names this tenant is checked first: this tenant's live
        # deployment and one that does not exist get the same answer, which names neither.
        rival = await make_shop(sessions, tmp_path, name="Rival Shop")
        answers = []
        for target in (first.id, uuid.uuid4()):
            _, code, out = await start_rollback(
                address,
                task_queue,
                shop.tenant.id,
                target,
                codec_endpoint,
                requested_by=rival.admins[0].id,
            )
            assert code != 0, out
            answers.append(
                out.replace(str(target), "<target>").replace(str(shop.tenant.id), "<tenant>")
            )
        assert "DeploymentNotFound" in answers[0] and "RollbackTargetIsLive" not in answers[0]
        assert first.commit_sha is not None and first.commit_sha not in answers[0]
        assert _failure(answers[0]) == _failure(answers[1])

    rows = {row.id: row for row in await production_deployments(sessions)}
    assert rows[second.id].status is DeploymentStatus.ROLLED_BACK
    restoring = [row for row in rows.values() if row.rollback_of_id == second.id]
    assert len(restoring) == 1 and restoring[0].status is DeploymentStatus.SUCCEEDED
    assert len(rows) == 3  # the refused rollbacks recorded nothing
