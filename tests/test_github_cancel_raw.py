"""A plain Temporal cancel (`temporal workflow cancel`, no `authorize_cancel` first) that reaches a
GitHub project's request, or its production deployment, once production asked to merge the
pull request: it comes too late and is not obeyed. The request ends as its release did
(completed, or rolled back with main reverted), its reason saying so; GitHub's `main` always
holds the tree production runs. Real workers, Temporal and PostgreSQL; the GitHub stand-in holds
changeflow's merge call while the cancel is sent with the `temporal` CLI."""

import asyncio
import uuid

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.worker import Replayer

from models import DeploymentEnvironment, DeploymentStatus, PromptStatus
from scripts.github_stand_in.records import CheckScript
from tests.conftest import DATA_CONVERTER
from tests.github_support import OUTCOME_WITHIN_S, GitHubShop
from tests.temporal_cli import temporal
from tests.test_github_lifecycle import ENVIRONMENTS, smoke_on_main
from workers.registry import workflows
from workflows.contracts.ids import deployment_workflow_id, prompt_request_workflow_id
from workflows.contracts.lifecycle import PromptRequestResult

pytestmark = pytest.mark.asyncio(loop_scope="session")

CANCEL_REQUESTED = EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED
TASK_COMPLETED = EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
TOO_LATE = "asked to merge pull request #1: too late, not obeyed"


async def cancel_heard(client: Client, workflow_id: str) -> None:
    """Until the workflow acted on Temporal's cancel: a workflow task completed after it."""
    handle = client.get_workflow_handle(workflow_id)
    async with asyncio.timeout(60):
        while True:
            kinds = [event.event_type for event in (await handle.fetch_history()).events]
            if (
                CANCEL_REQUESTED in kinds
                and TASK_COMPLETED in kinds[kinds.index(CANCEL_REQUESTED) :]
            ):
                return
            await asyncio.sleep(0.2)


async def cancelled_while_merging(
    hub: GitHubShop, target: str
) -> tuple[PromptRequestResult, uuid.UUID]:
    """Submit a change; once GitHub holds production's merge call, cancel `target` (the request,
    or production's deployment) with the `temporal` CLI as the README's recipe does, minus
    `authorize_cancel`; let GitHub merge once the cancel was heard. The request's outcome and
    production's deployment id."""
    client = hub.client
    gate = hub.state.merge_gate
    gate.armed = True
    address = client.service_client.config.target_host
    try:
        async with hub.running():
            request_id = await hub.submit("set theme to dark")
            assert await asyncio.to_thread(gate.reached.wait, OUTCOME_WITHIN_S)
            production = next(
                d.deployment_id
                for d in (await hub.lifecycle.status(request_id)).deployments
                if d.environment is DeploymentEnvironment.PRODUCTION
            )
            workflow_id = (
                prompt_request_workflow_id(request_id)
                if target == "request"
                else deployment_workflow_id(production)
            )
            await temporal(address, "workflow", "cancel", "--workflow-id", workflow_id)
            await cancel_heard(client, workflow_id)
            gate.opened.set()
            result = await hub.outcome(request_id)
            cancelled = client.get_workflow_handle(workflow_id)
            described = await cancelled.describe()
            history = await cancelled.fetch_history()
    finally:
        gate.opened.set()
    # The cancelled workflow ended as it would have: completed, not cancelled; and its run, the
    # cancel it did not obey included, replays with the current code.
    assert described.status is WorkflowExecutionStatus.COMPLETED
    await Replayer(workflows=workflows(), data_converter=DATA_CONVERTER).replay_workflow(history)
    return result, production


@pytest.mark.parametrize("target", ["request", "deployment"])
async def test_a_raw_cancel_while_production_merges_is_not_obeyed_and_the_change_ships(
    hub: GitHubShop, target: str
) -> None:
    hub.green_ci()

    result, production = await cancelled_while_merging(hub, target)

    # Completed, saying the cancel came too late; production's release stands.
    assert result.status is PromptStatus.COMPLETED, result.reason
    assert TOO_LATE in result.reason, result.reason
    assert str(production) in result.reason
    [live] = [d for d in result.deployments if d.deployment_id == production]
    assert live.status is DeploymentStatus.SUCCEEDED
    # main holds the merge, and production runs the same tree.
    [pull] = hub.pulls()
    assert (pull.state, pull.merged, pull.merged_by) == ("closed", True, "changeflow[bot]")
    assert hub.head("main") == pull.merge_commit_sha
    assert hub.config("main")["theme"] == "dark"
    assert hub.tree("main") == hub.tree("env/production")
    assert hub.branches() == ENVIRONMENTS


@pytest.mark.parametrize("target", ["request", "deployment"])
async def test_a_raw_cancel_while_production_merges_a_change_its_checks_fail_ends_rolled_back(
    hub: GitHubShop, target: str
) -> None:
    hub.state.add_check_script(hub.repository, CheckScript("build", outcome="success"))
    before = hub.tree("main")

    # Production's checks (of the merge commit on main) fail; staging's pass, and so do those
    # of the revert's merge commit, which verify the rollback.
    async with smoke_on_main(hub, "failure", "success"):
        result, production = await cancelled_while_merging(hub, target)

    # Rolled back, as without the cancel, and saying the cancel came too late.
    assert result.status is PromptStatus.ROLLED_BACK, result.reason
    assert result.reason.startswith("production verification failed"), result.reason
    assert TOO_LATE in result.reason, result.reason
    [released] = [d for d in result.deployments if d.deployment_id == production]
    assert released.status is DeploymentStatus.ROLLED_BACK
    # The merge was reverted on main by a pull request of its own: main holds production's tree,
    # which is the tree from before the request.
    pulls = hub.pulls()
    assert [(p.number, p.merged) for p in pulls] == [(1, True), (2, True)]
    assert hub.head("main") == pulls[1].merge_commit_sha
    assert hub.tree("main") == hub.tree("env/production") == before
    assert hub.config("main")["theme"] != "dark"
    assert hub.branches() == ENVIRONMENTS


async def test_a_github_deployment_status_links_its_deployment_workflow_in_the_web_ui(
    hub: GitHubShop,
) -> None:
    hub.green_ci()
    async with hub.running():
        result = await hub.ship("set theme to dark")
    assert result.status is PromptStatus.COMPLETED, result.reason

    # Each status's log is a page a person on GitHub can open: the deployment workflow's page
    # in the Web UI, never the worker's release log (file://).
    deployments = sorted(hub.state.deployments.values(), key=lambda d: d.id)
    assert [d.environment for d in deployments] == ["staging", "production"]
    for deployment in deployments:
        ours = uuid.UUID(deployment.payload["changeflow_deployment_id"])
        page = hub.settings.workflow_url(deployment_workflow_id(ours))
        assert page.startswith(("http://", "https://")), page
        assert [s.log_url for s in deployment.statuses] == [page, page], deployment.statuses
    assert {d.deployment_id for d in result.deployments} == {
        uuid.UUID(d.payload["changeflow_deployment_id"]) for d in deployments
    }


async def test_a_raw_cancel_before_production_asks_to_merge_is_obeyed_and_nothing_merges(
    hub: GitHubShop,
) -> None:
    hub.green_ci()
    state = hub.state
    # GitHub holds production's release (the push of env/production): the ask comes after.
    state.push_gate_ref, state.push_gate.armed = "refs/heads/env/production", True
    before = hub.head("main")
    address = hub.client.service_client.config.target_host
    try:
        async with hub.running():
            request_id = await hub.submit("set theme to dark")
            assert await asyncio.to_thread(state.push_gate.reached.wait, OUTCOME_WITHIN_S)
            workflow_id = prompt_request_workflow_id(request_id)
            await temporal(address, "workflow", "cancel", "--workflow-id", workflow_id)
            await cancel_heard(hub.client, workflow_id)
            state.push_gate.opened.set()
            result = await hub.outcome(request_id)
    finally:
        state.push_gate.opened.set()

    # In time: obeyed. Nothing merged, both environments restored, the pull request closed.
    assert result.status is PromptStatus.CANCELLED, result.reason
    assert "too late" not in result.reason
    assert hub.head("main") == before
    [pull] = hub.pulls()
    assert (pull.state, pull.merged) == ("closed", False)
    assert [b for b in hub.branches() if hub.config(b)["theme"] == "dark"] == []
    assert not [r for r in hub.stand_in.requests if r[1].endswith("/merge")]
