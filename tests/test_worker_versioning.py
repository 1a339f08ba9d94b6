"""Upgrading workers under Worker Versioning: every workflow type chose how its runs cross a
rollout, and a change request waiting for approval across a rollout finishes on the new
version, while one that was already deploying keeps its version."""

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import RoutingConfigUpdateState
from temporalio.api.workflowservice.v1 import (
    DescribeWorkerDeploymentRequest,
    SetWorkerDeploymentCurrentVersionRequest,
)
from temporalio.client import Client
from temporalio.common import VersioningBehavior
from temporalio.service import RPCError
from temporalio.workflow import _Definition

from client.lifecycle import LifecycleClient
from infra.settings import Settings
from models import PromptStatus
from models.db import SessionFactory
from scripts.sample_repo import SAFE_PROMPT
from tests.lifecycle_support import human_policy, make_shop, plan_awaiting_approval, submit
from tests.workers import test_settings
from workers.registry import Dependencies, versioned_workflows, workflows
from workers.versioning import default_build_id, deployment_config
from workers.worker import build_workers, run_until_stopped
from workflows.contracts.ids import prompt_request_workflow_id

LONG_WAITING = {"PromptRequestWorkflow"}


def test_every_workflow_type_chose_its_versioning_behaviour() -> None:
    behaviours = {
        (d := _Definition.must_from_class(cls)).name: d.versioning_behavior
        for cls in versioned_workflows()
    }
    assert set(behaviours) == {_Definition.must_from_class(c).name for c in workflows()}
    # Runs that wait for people span deploys; the rest finish on the version they began on.
    for name, behaviour in behaviours.items():
        expected = (
            VersioningBehavior.AUTO_UPGRADE if name in LONG_WAITING else VersioningBehavior.PINNED
        )
        assert behaviour is expected, name
    # An unversioned worker registers the plain classes: the server refuses a behaviour there.
    assert all(
        _Definition.must_from_class(cls).versioning_behavior is VersioningBehavior.UNSPECIFIED
        for cls in workflows()
    )


def test_versioning_is_off_by_default_and_names_the_build_when_on() -> None:
    assert deployment_config(Settings()) is None
    config = deployment_config(Settings(worker_versioning=True, worker_deployment_name="shop"))
    assert config is not None and config.use_worker_versioning
    assert config.version.deployment_name == "shop"
    assert config.version.build_id == default_build_id()
    assert default_build_id().startswith("0.1.0")
    pinned = deployment_config(Settings(worker_versioning=True, worker_build_id="2026.12.1"))
    assert pinned is not None and pinned.version.build_id == "2026.12.1"


@contextlib.asynccontextmanager
async def fleet(
    client: Client, sessions: SessionFactory, settings: Settings
) -> AsyncIterator[None]:
    """The worker process's own Workers (build_workers), running until the block ends."""
    stop = asyncio.Event()
    deps = Dependencies(settings=settings, sessions=sessions, client=client)
    serving = asyncio.create_task(run_until_stopped(build_workers(client, deps), stop))
    try:
        yield
    finally:
        stop.set()
        await serving


async def make_current(client: Client, deployment: str, build_id: str) -> None:
    """`temporal worker deployment set-current-version`, once the version's pollers arrived,
    then until the task queues route to it (the server propagates the change)."""
    async with asyncio.timeout(60):
        while True:
            try:
                await client.workflow_service.set_worker_deployment_current_version(
                    SetWorkerDeploymentCurrentVersionRequest(
                        namespace=client.namespace, deployment_name=deployment, build_id=build_id
                    )
                )
                break
            except RPCError:
                await asyncio.sleep(0.5)
        while True:
            described = await client.workflow_service.describe_worker_deployment(
                DescribeWorkerDeploymentRequest(
                    namespace=client.namespace, deployment_name=deployment
                )
            )
            state = described.worker_deployment_info.routing_config_update_state
            if state == RoutingConfigUpdateState.ROUTING_CONFIG_UPDATE_STATE_COMPLETED:
                return
            await asyncio.sleep(0.2)


async def build_ids_of(client: Client, workflow_id: str) -> list[str]:
    """The build id of each completed workflow task, in order."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    return [
        e.workflow_task_completed_event_attributes.deployment_version.build_id
        for e in history.events
        if e.HasField("workflow_task_completed_event_attributes")
    ]


@pytest.mark.asyncio(loop_scope="session")
async def test_a_request_waiting_for_approval_crosses_a_rollout_to_the_new_version(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    deployment = f"changeflow-{uuid.uuid4().hex[:8]}"

    def version(build_id: str) -> Settings:
        base = test_settings(
            task_queue=task_queue, deploy_task_queue=deploy_queue, workspace_dir=tmp_path
        )
        return base.model_copy(
            update={
                "worker_versioning": True,
                "worker_deployment_name": deployment,
                "worker_build_id": build_id,
            }
        )

    shop = await make_shop(
        sessions,
        tmp_path,
        policy=human_policy(approvals_required={"low": 1, "medium": 1, "high": 1, "critical": 1}),
    )
    async with fleet(client, sessions, version("v1")):
        await make_current(client, deployment, "v1")
        request_id = await submit(lifecycle, shop, SAFE_PROMPT)
        _, plan = await plan_awaiting_approval(lifecycle, request_id)
        # The rollout: v2 starts beside v1 and becomes current; v1 keeps running (draining).
        async with fleet(client, sessions, version("v2")):
            await make_current(client, deployment, "v2")
            await lifecycle.approve(
                request_id, user_id=shop.admins[0].id, content_hash=plan.content_hash
            )
            result = await lifecycle.wait_for_outcome(request_id)

    assert result.status is PromptStatus.COMPLETED
    builds = await build_ids_of(client, prompt_request_workflow_id(request_id))
    # Planned on v1, finished on v2 (auto-upgrade at its first task after the switch).
    assert builds[0] == "v1" and builds[-1] == "v2"
    assert builds == sorted(builds), builds
    # Its deployments started after the switch: pinned to v2 for their whole run.
    for deployment_run in result.deployments:
        child = await build_ids_of(client, f"deployment-{deployment_run.deployment_id}")
        assert set(child) == {"v2"}, child
