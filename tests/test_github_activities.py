"""GitHub's steps as Temporal activities on a real worker, against the GitHub stand-in: a
secondary rate limit on pull-request creation is retried after GitHub's `retry-after` (no
failed workflow), a merge refused by branch protection reaches the workflow typed and final,
and no token or private key appears in the workflow's history."""

import uuid
from datetime import timedelta

import pytest
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError
from temporalio.worker import Worker

from activities.github_activities import GitHubActivities
from models.db import SessionFactory
from scripts.github_stand_in import Protection
from tests.github_support import GitHubWorld, connect_github
from workflows.contracts.errors import error_message, error_type
from workflows.contracts.github import (
    MergePullRequest,
    OpenPullRequest,
    PullRequestPlan,
    request_branch,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


@workflow.defn(name="TestGitHubStepsWorkflow", sandboxed=False)
class GitHubStepsWorkflow:
    """Opens the request's pull request, then (asked to) merges it: what the lifecycle does."""

    @workflow.run
    async def run(self, step: OpenPullRequest, merge: bool) -> str:
        options = {
            "start_to_close_timeout": timedelta(seconds=60),
            "retry_policy": RetryPolicy(initial_interval=timedelta(seconds=30), maximum_attempts=5),
        }
        pull = await workflow.execute_activity(  # type: ignore[call-overload]
            "github_open_pull_request", step, result_type=dict, **options
        )
        if not merge:
            return f"opened #{pull['number']}"
        try:
            await workflow.execute_activity(  # type: ignore[call-overload]
                "github_merge_pull_request",
                MergePullRequest(
                    connector_id=step.connector_id,
                    number=pull["number"],
                    head_sha=pull["head_sha"],
                ),
                **options,
            )
        except ActivityError as err:
            return f"{error_type(err)}: {error_message(err)}"
        return "merged"


async def run_steps(
    client: Client, sessions: SessionFactory, world: GitHubWorld, task_queue: str, *, merge: bool
) -> tuple[str, str, list[int]]:
    """The workflow's result, its history as JSON, and the open activity's attempts."""
    connected = await connect_github(sessions, world)
    request_id = uuid.uuid4()
    world.push_branch(request_branch(request_id), {"index.html": "<h1>Sale</h1>\n"})
    step = OpenPullRequest(
        connector_id=connected.connector.id,
        plan=PullRequestPlan(request_id=request_id, title="Sale banner", summary="A banner."),
    )
    activities = GitHubActivities(connected.service, connected.connections)
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[GitHubStepsWorkflow],
        activities=activities.activities(),
    ):
        handle = await client.start_workflow(
            GitHubStepsWorkflow.run,
            args=[step, merge],
            id=f"github-steps-{request_id}",
            task_queue=task_queue,
        )
        result = await handle.result()
        history = await handle.fetch_history()
    attempts = [
        e.activity_task_started_event_attributes.attempt
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]
    return result, history.to_json(), attempts


async def test_a_secondary_rate_limit_on_pull_request_creation_is_retried_after_its_wait(
    client: Client, sessions: SessionFactory, github_world: GitHubWorld, task_queue: str
) -> None:
    world = github_world
    # GitHub says retry after 1 s; the policy's own first interval is 30 s, so a retry that
    # came in time could only have followed GitHub's wait (next_retry_delay).
    world.hub.state.limits.arm_secondary_limit("POST", "/pulls", retry_after=1, status=403)
    result, history, attempts = await run_steps(client, sessions, world, task_queue, merge=False)
    assert result == "opened #1"
    assert attempts == [2]  # the started event records the attempt that completed
    posts = [
        status
        for method, path, status in world.hub.requests
        if method == "POST" and path.endswith("/pulls")
    ]
    assert posts == [403, 201]
    assert len(world.hub.state.pulls) == 1
    for token in world.hub.state.tokens:
        assert token not in history
    assert "PRIVATE KEY" not in history


async def test_branch_protection_refusing_the_merge_reaches_the_workflow_typed_and_final(
    client: Client, sessions: SessionFactory, github_world: GitHubWorld, task_queue: str
) -> None:
    world = github_world
    world.hub.state.protect(world.repository, "main", Protection(required_checks=["build"]))
    result, history, attempts = await run_steps(client, sessions, world, task_queue, merge=True)
    assert result.startswith("MergeRefused: GitHub refused to merge pull request #1")
    assert 'Required status check "build"' in result
    assert attempts == [1, 1]  # not retried: a person must act on GitHub
    for token in world.hub.state.tokens:
        assert token not in result and token not in history
