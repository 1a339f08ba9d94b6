"""Recorded histories of every workflow type replay against the current code, so a change that
makes a workflow nondeterministic fails here instead of breaking running lifecycles.

The histories in tests/histories/ come from real runs on the dev server. Regenerate them after
an intended, versioned change of workflow code:

    CHANGEFLOW_RECORD_HISTORIES=1 pytest tests/test_replay.py
"""

import json
import os
import uuid
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio import workflow
from temporalio.client import Client, WorkflowHistory
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner
from temporalio.workflow import NondeterminismError

from activities.notifications import TenantWebhooks, new_signing_secret
from client.lifecycle import LifecycleClient
from models.db import SessionFactory
from scripts.sample_repo import FAILS_IN_PRODUCTION_PROMPT, SAFE_PROMPT
from tests.commerce_support import commerce_settings, connector_service
from tests.conftest import DATA_CONVERTER
from tests.lifecycle_support import human_policy, make_shop, submit, wait_for_status
from tests.webhook_receiver import webhook_receiver
from tests.workers import running_workers
from workers.registry import workflows
from workflows.contracts.billing import GrantPlanTokens, SweepExpiredHolds
from workflows.contracts.ids import (
    deployment_workflow_id,
    prompt_request_workflow_id,
    rollback_workflow_id,
)
from workflows.contracts.lifecycle import PromptRequestInput, PromptRequestResult
from workflows.contracts.submitted import Submitted
from workflows.lifecycle import PromptRequestWorkflow

pytestmark = pytest.mark.asyncio(loop_scope="session")

HISTORIES = Path(__file__).parent / "histories"
RECORD = os.environ.get("CHANGEFLOW_RECORD_HISTORIES") == "1"
_recorded_in_this_session: list[bool] = []


async def record_histories(client: Client, sessions: SessionFactory, tmp_path: Path) -> None:
    """Run each kind of lifecycle for real and save one history per workflow type and story."""
    queue = f"record-{uuid.uuid4()}"
    lifecycle = LifecycleClient(client, task_queue=queue, deploy_task_queue=f"{queue}-deploy")
    reviewed = await make_shop(sessions, tmp_path, policy=human_policy(), name="Reviewed Shop")
    automatic = await make_shop(sessions, tmp_path, name="Automatic Shop")
    # Told by its webhook, reminded 2 s into a 6 s approval window, then told it expired.
    notified = await make_shop(
        sessions,
        tmp_path,
        policy=human_policy(plan_ttl_seconds=6, reminder_before_seconds=4),
        name="Notified Shop",
    )
    settings = commerce_settings(queue, tmp_path / "workspace")
    secret = new_signing_secret()
    stories: dict[str, str] = {}
    async with (
        webhook_receiver(secret) as receiver,
        running_workers(client, sessions, settings, deploy_task_queue=f"{queue}-deploy"),
    ):
        webhooks = TenantWebhooks(sessions, connector_service(settings, sessions, client))
        await webhooks.set(notified.tenant.id, url=receiver.url, secret=secret)
        request_id = await submit(lifecycle, notified, SAFE_PROMPT)
        expired = await lifecycle.wait_for_outcome(request_id)
        assert expired.status.value == "expired", expired.reason
        await receiver.wait_for("request.ended")
        assert [r.event_type for r in receiver.delivered] == [
            "approval.requested",
            "approval.reminder",
            "request.ended",
        ]
        stories[prompt_request_workflow_id(request_id)] = "PromptRequestWorkflow-notified-expired"
        stories[receiver.delivered[0].event_id] = "TenantNotificationWorkflow-delivered"

        # Two people approve, after a revision voided the first approval.
        request_id = await submit(lifecycle, reviewed, SAFE_PROMPT)
        status = await wait_for_status(
            lifecycle, request_id, lambda s: s.status.value == "awaiting_approval"
        )
        assert status.plan is not None
        admin, other = reviewed.admins
        await lifecycle.approve(request_id, user_id=admin.id, content_hash=status.plan.content_hash)
        status = await lifecycle.revise(
            request_id, user_id=reviewed.requester.id, prompt="set store_name to Reviewed"
        )
        assert status.plan is not None
        for approver in (admin, other):
            await lifecycle.approve(
                request_id, user_id=approver.id, content_hash=status.plan.content_hash
            )
        approved = await lifecycle.wait_for_outcome(request_id)
        assert approved.status.value == "completed", approved.reason
        stories[prompt_request_workflow_id(request_id)] = (
            "PromptRequestWorkflow-approved-after-revision"
        )
        _name_deployments(stories, approved, "approved")

        # Production verification fails and is rolled back automatically.
        request_id = await submit(lifecycle, automatic, FAILS_IN_PRODUCTION_PROMPT)
        rolled_back = await lifecycle.wait_for_outcome(request_id)
        assert rolled_back.status.value == "rolled_back", rolled_back.reason
        stories[prompt_request_workflow_id(request_id)] = "PromptRequestWorkflow-rolled-back"
        _name_deployments(stories, rolled_back, "auto-rollback")

        # Cancelled while awaiting approval.
        request_id = await submit(lifecycle, reviewed, SAFE_PROMPT)
        await wait_for_status(
            lifecycle, request_id, lambda s: s.status.value == "awaiting_approval"
        )
        await lifecycle.cancel(request_id)
        cancelled = await lifecycle.wait_for_outcome(request_id)
        assert cancelled.status.value == "cancelled"
        stories[prompt_request_workflow_id(request_id)] = "PromptRequestWorkflow-cancelled"

        # Rejected by an approver, with a reason.
        request_id = await submit(lifecycle, reviewed, SAFE_PROMPT)
        status = await wait_for_status(
            lifecycle, request_id, lambda s: s.status.value == "awaiting_approval"
        )
        assert status.plan is not None
        await lifecycle.reject(
            request_id,
            user_id=admin.id,
            content_hash=status.plan.content_hash,
            reason="recorded for replay",
        )
        rejected = await lifecycle.wait_for_outcome(request_id)
        assert rejected.status.value == "rejected"
        stories[prompt_request_workflow_id(request_id)] = "PromptRequestWorkflow-rejected"

        # A later change reaches production; then an operator restores the first release.
        request_id = await submit(lifecycle, reviewed, SAFE_PROMPT)
        status = await wait_for_status(
            lifecycle, request_id, lambda s: s.status.value == "awaiting_approval"
        )
        assert status.plan is not None
        for approver in (admin, other):
            await lifecycle.approve(
                request_id, user_id=approver.id, content_hash=status.plan.content_hash
            )
        later = await lifecycle.wait_for_outcome(request_id)
        assert later.status.value == "completed", later.reason
        production = next(d for d in approved.deployments if d.environment.value == "production")
        rollback_id = await lifecycle.roll_back(
            tenant_id=reviewed.tenant.id,
            target_deployment_id=production.deployment_id,
            requested_by=admin.id,
            reason="recorded for replay",
        )
        await lifecycle.rollback_result(rollback_id)
        stories[rollback_workflow_id(rollback_id)] = "RollbackWorkflow-lifecycle-client"

        sweep = await client.start_workflow(
            "LedgerSweepWorkflow",
            SweepExpiredHolds(),
            id=f"ledger-sweep-{uuid.uuid4()}",
            task_queue=queue,
        )
        await sweep.result()
        stories[sweep.id] = "LedgerSweepWorkflow-sweep"

        grants = await client.start_workflow(
            "PlanGrantWorkflow",
            GrantPlanTokens(),
            id=f"plan-grants-{uuid.uuid4()}",
            task_queue=queue,
        )
        await grants.result()
        stories[grants.id] = "PlanGrantWorkflow-grants"

        # Same recording format as tests/test_deployments.py, which records its own stories.
        HISTORIES.mkdir(exist_ok=True)
        for workflow_id, story in stories.items():
            history = await client.get_workflow_handle(workflow_id).fetch_history()
            recording = {"workflow_id": workflow_id, "history": history.to_json_dict()}
            (HISTORIES / f"{story}.json").write_text(json.dumps(recording))


def _name_deployments(stories: dict[str, str], result: PromptRequestResult, story: str) -> None:
    for deployment in result.deployments:
        if deployment.environment.value == "production":
            stories[deployment_workflow_id(deployment.deployment_id)] = (
                f"DeploymentWorkflow-lifecycle-{story}"
            )
            return


@pytest_asyncio.fixture
async def recorded(client: Client, sessions: SessionFactory, tmp_path: Path) -> list[Path]:
    if RECORD and not _recorded_in_this_session:
        await record_histories(client, sessions, tmp_path)
        _recorded_in_this_session.append(True)
    return sorted(HISTORIES.glob("*.json"))


def _history(path: Path) -> WorkflowHistory:
    recording = json.loads(path.read_text())
    return WorkflowHistory.from_json(recording["workflow_id"], recording["history"])


def _replayer(workflow_classes: list[type]) -> Replayer:
    return Replayer(workflows=workflow_classes, data_converter=DATA_CONVERTER)


async def test_every_workflow_type_has_a_recorded_history(recorded: list[Path]) -> None:
    recorded_types = {path.stem.split("-")[0] for path in recorded}
    registered = {workflow._Definition.must_from_class(cls).name for cls in workflows()}
    assert recorded_types == registered


async def test_recorded_histories_replay_without_nondeterminism(recorded: list[Path]) -> None:
    assert recorded, "no histories in tests/histories; record them (see the module docstring)"
    for path in recorded:
        # raise_on_failure: any nondeterminism error or workflow task failure fails the test.
        await _replayer(workflows()).replay_workflow(_history(path))


@workflow.defn(name="PromptRequestWorkflow")
class PromptRequestWorkflowWithAPause(PromptRequestWorkflow):
    """A careless edit: a pause before reserving the hold adds a timer the history lacks."""

    @workflow.run
    async def run(self, submitted: Submitted[PromptRequestInput] = None) -> PromptRequestResult:
        return await super().run(submitted)

    async def _hold_estimate(self) -> None:
        await workflow.sleep(1)
        await super()._hold_estimate()


async def test_a_nondeterministic_change_of_the_lifecycle_fails_the_replay(
    recorded: list[Path],
) -> None:
    lifecycle_history = next(p for p in recorded if p.stem.startswith("PromptRequestWorkflow"))
    others = [cls for cls in workflows() if cls is not PromptRequestWorkflow]
    # Unsandboxed: the sandbox would re-import this test module, which is not workflow code.
    replayer = Replayer(
        workflows=[*others, PromptRequestWorkflowWithAPause],
        data_converter=DATA_CONVERTER,
        workflow_runner=UnsandboxedWorkflowRunner(),
    )
    with pytest.raises(NondeterminismError):
        await replayer.replay_workflow(_history(lifecycle_history))


async def test_histories_are_valid_json() -> None:
    for path in HISTORIES.glob("*.json"):
        assert json.loads(path.read_text())["history"]["events"]
