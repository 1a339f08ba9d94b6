"""GitHub's webhooks reaching the webhooks process (POST /webhooks/github/<connector id>) from
the GitHub stand-in's sender: a bad signature is 401 and changes nothing; deliveries reordered
and duplicated are recorded and handed to the request's workflow once each, as the
`github_event` signal; deliveries that concern no request are answered and go no further."""

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import uvicorn
from pydantic import SecretStr
from sqlmodel import select
from temporalio import workflow
from temporalio.client import Client
from temporalio.worker import Worker

from activities.credentials import KeyRing
from activities.github_webhooks import GitHubDelivery, event_of
from models.commerce import WebhookDelivery
from models.db import SessionFactory
from scripts.github_stand_in import CheckScript
from tests.github_support import GitHubWorld, connect_github
from tests.workers import test_settings
from workers.registry import Dependencies
from workers.webhooks import github_webhooks, shopify_webhooks, webhook_app
from workflows.contracts.github import (
    GITHUB_EVENT_SIGNAL,
    GitHubEvent,
    PullRequestPlan,
    request_branch,
)
from workflows.contracts.ids import prompt_request_workflow_id

pytestmark = pytest.mark.asyncio(loop_scope="session")


@workflow.defn(name="TestWaitsForGitHubWorkflow", sandboxed=False)
class WaitsForGitHub:
    """Stands where a request's lifecycle waits on verification: collects `github_event`."""

    def __init__(self) -> None:
        self.events: list[GitHubEvent] = []
        self.finish = False

    @workflow.signal(name=GITHUB_EVENT_SIGNAL)
    def github_event(self, event: GitHubEvent) -> None:
        self.events.append(event)

    @workflow.signal
    def done(self) -> None:
        self.finish = True

    @workflow.query
    def seen(self) -> list[GitHubEvent]:
        return self.events

    @workflow.run
    async def run(self) -> int:
        await workflow.wait_condition(lambda: self.finish, timeout=timedelta(minutes=5))
        return len(self.events)


KEYS = f"k1:{KeyRing.new_key()}"


@contextlib.asynccontextmanager
async def webhooks_process(
    client: Client, sessions: SessionFactory, workspace: Path
) -> AsyncIterator[str]:
    """The webhooks app (as `changeflow-webhooks` builds it) on a port of its own; its URL."""
    settings = test_settings(
        task_queue="unused", deploy_task_queue="unused-deploy", workspace_dir=workspace
    ).model_copy(update={"credential_keys": SecretStr(KEYS), "credential_key_id": "k1"})
    deps = Dependencies(settings=settings, sessions=sessions, client=client)
    app = webhook_app(
        shopify_webhooks(deps),
        max_body_bytes=settings.webhooks_max_body_bytes,
        github=github_webhooks(deps),
    )
    # Listening before uvicorn starts: a delivery sent meanwhile waits in the backlog.
    listening = socket.create_server(("127.0.0.1", 0))
    port = listening.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off"))
    serving = asyncio.create_task(server.serve(sockets=[listening]))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await serving


async def recorded(sessions: SessionFactory, connector_id: uuid.UUID) -> list[str]:
    async with sessions() as session:
        rows = await session.exec(
            select(WebhookDelivery.webhook_id).where(WebhookDelivery.connector_id == connector_id)
        )
        return sorted(rows.all())


async def idle(world: GitHubWorld) -> None:
    await asyncio.to_thread(world.hub.webhooks.wait_idle)


async def test_deliveries_reordered_and_duplicated_reach_the_request_once_each(
    client: Client,
    sessions: SessionFactory,
    github_world: GitHubWorld,
    task_queue: str,
    tmp_path: Path,
) -> None:
    world = github_world
    connected = await connect_github(sessions, world, keys=KeyRing.parse(KEYS, "k1"))
    request_id = uuid.uuid4()
    world.hub.state.add_check_script(world.repository, CheckScript("build", outcome="success"))
    async with (
        webhooks_process(client, sessions, tmp_path) as base,
        Worker(client, task_queue=task_queue, workflows=[WaitsForGitHub]),
    ):
        handle = await client.start_workflow(
            WaitsForGitHub.run, id=prompt_request_workflow_id(request_id), task_queue=task_queue
        )
        world.hub.webhooks.hold()
        world.hub.webhooks.deliver_to(f"{base}/webhooks/github/{connected.connector.id}")
        sha = world.push_branch(request_branch(request_id), {"index.html": "<h1>Sale</h1>\n"})
        target = world.target()
        async with target.repository:
            await target.open_pull_request(PullRequestPlan(request_id=request_id, title="Sale"))
            await target.start_deployment(
                "staging", sha, log_url="https://changeflow.example/log", request_id=request_id
            )
        world.hub.webhooks.release(order="reversed", duplicate=True)
        await idle(world)
        seen = await handle.query(WaitsForGitHub.seen)
        await handle.signal(WaitsForGitHub.done)
        await handle.result()

    sent = world.hub.webhooks.sent
    answers = world.hub.webhooks.answers
    assert len(answers) == 2 * len(sent) and all(a.status == 200 for a in answers)
    handled = {"pull_request", "check_run", "check_suite", "status", "deployment_status"}
    about_request = [d for d in sent if d.event in handled and d.event != "status"]
    ids = [e.delivery_id for e in seen]
    assert len(ids) == len(set(ids))  # each delivery handed on once
    assert set(ids) == {d.id for d in about_request}
    assert {e.event.value for e in seen} >= {"pull_request", "check_run", "deployment_status"}
    assert all(e.request_id == request_id for e in seen)
    assert {e.sha for e in seen if e.event.value == "check_run"} == {sha}
    # Every handled delivery is recorded once, the duplicates answered "duplicate".
    assert await recorded(sessions, connected.connector.id) == sorted(
        d.id for d in sent if d.event in handled
    )


async def test_a_bad_signature_is_refused_and_changes_nothing(
    client: Client,
    sessions: SessionFactory,
    github_world: GitHubWorld,
    task_queue: str,
    tmp_path: Path,
) -> None:
    world = github_world
    connected = await connect_github(sessions, world, keys=KeyRing.parse(KEYS, "k1"))
    request_id = uuid.uuid4()
    payload = {
        "action": "completed",
        "check_run": {
            "name": "build",
            "head_sha": "a" * 40,
            "status": "completed",
            "conclusion": "success",
            "check_suite": {"head_branch": request_branch(request_id)},
        },
    }
    async with (
        webhooks_process(client, sessions, tmp_path) as base,
        Worker(client, task_queue=task_queue, workflows=[WaitsForGitHub]),
    ):
        handle = await client.start_workflow(
            WaitsForGitHub.run, id=prompt_request_workflow_id(request_id), task_queue=task_queue
        )
        world.hub.webhooks.deliver_to(f"{base}/webhooks/github/{connected.connector.id}")
        forged = world.hub.webhooks.send_forged("check_run", payload)
        await idle(world)
        seen = await handle.query(WaitsForGitHub.seen)
        await handle.signal(WaitsForGitHub.done)
        await handle.result()
    [answer] = [a for a in world.hub.webhooks.answers if a.delivery is forged]
    assert answer.status == 401
    assert seen == []
    assert await recorded(sessions, connected.connector.id) == []


def delivery(event: str) -> GitHubDelivery:
    return GitHubDelivery(connector_id="", event=event, delivery_id="d-1", signature="", body=b"")


async def test_each_event_names_its_request_and_what_happened() -> None:
    connector, request = uuid.uuid4(), uuid.uuid4()
    branch = request_branch(request)
    status = event_of(
        connector,
        delivery("status"),
        {
            "sha": "a" * 40,
            "context": "lint",
            "state": "failure",
            "branches": [{"name": "main"}, {"name": branch}],
        },
    )
    assert (status.request_id, status.name, status.state) == (request, "lint", "failure")
    closed = event_of(
        connector,
        delivery("pull_request"),
        {
            "action": "closed",
            "sender": {"login": "octocat"},
            "pull_request": {
                "number": 7,
                "state": "closed",
                "merged": False,
                "head": {"ref": branch, "sha": "b" * 40},
            },
        },
    )
    assert (closed.request_id, closed.pull_number, closed.merged, closed.actor) == (
        request, 7, False, "octocat",
    )  # fmt: skip
    deployed = event_of(
        connector,
        delivery("deployment_status"),
        {
            "deployment_status": {"state": "success"},
            "deployment": {
                "sha": "c" * 40,
                "environment": "staging",
                "payload": {"changeflow_request_id": str(request)},
            },
        },
    )
    assert (deployed.request_id, deployed.name, deployed.state) == (request, "staging", "success")
    elsewhere = event_of(
        connector,
        delivery("check_run"),
        {"check_run": {"name": "ci", "status": "queued", "check_suite": {"head_branch": "main"}}},
    )
    assert elsewhere.request_id is None and elsewhere.state == "queued"
    # A deleted branch names its request; a tag of the same name names none.
    deleted = event_of(
        connector,
        delivery("delete"),
        {"ref": branch, "ref_type": "branch", "sender": {"login": "octocat"}},
    )
    assert (deleted.request_id, deleted.actor) == (request, "octocat")
    tag = event_of(connector, delivery("delete"), {"ref": branch, "ref_type": "tag"})
    assert tag.request_id is None
