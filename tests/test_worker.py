"""The worker entry point as an SRE runs it: a process configured by environment variables
that serves both task queues and stops gracefully on SIGTERM without losing in-flight work.

The process gets a namespace of its own on the session's dev server, so what it sets up at
start (the ledger sweep schedule) cannot disturb other tests.
"""

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType, PendingActivityState, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import (
    DescribeTaskQueueRequest,
)
from temporalio.client import Client

from infra.keyring import KeyRing
from infra.settings import Settings
from models import DeploymentEnvironment, DeploymentPlan, DeploymentStatus, PromptRequest
from models.db import SessionFactory
from scripts.sample_repo import SAMPLE_CHECK_COMMAND, create_sample_repo
from tests.factories import make_project, make_tenant
from tests.process_support import ROOT, WorkerProcess, worker_environment
from tests.workers import running_workers
from workers.registry import Dependencies
from workers.worker import build_workers, reconcile_schedules_once, run_until_stopped
from workflows.contracts.deployment import DeploymentInput
from workflows.contracts.ids import deployment_workflow_id
from workflows.deployment import DeploymentWorkflow

# Long enough to send SIGTERM while it runs, short enough for a test.
SLOW_CHECK_SECONDS = 4


@pytest.fixture
def start_worker(
    namespace_client: Client, database_url: str, tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(**extra_env: str) -> WorkerProcess:
        env = worker_environment(
            database_url=database_url,
            client=namespace_client,
            task_queue=f"lifecycle-{uuid.uuid4()}",
            deploy_task_queue=f"deploy-{uuid.uuid4()}",
            state_dir=tmp_path,
            CHANGEFLOW_GRACEFUL_SHUTDOWN_SECONDS="30",
            **extra_env,
        )
        worker = WorkerProcess(env, tmp_path / f"worker-{len(started) + 1}.log").start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.running():
            worker.kill()


async def pollers(client: Client, task_queue: str, kind: TaskQueueType.ValueType) -> int:
    response = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=task_queue),
            task_queue_type=kind,
        )
    )
    return len(response.pollers)


async def wait_for(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + 60
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.25)


async def serving(client: Client, worker: WorkerProcess) -> bool:
    assert worker.process.poll() is None, "\n".join(worker.lines)
    return (
        await pollers(client, worker.task_queue, TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW) > 0
        and await pollers(client, worker.task_queue, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY) > 0
        and await pollers(client, worker.deploy_task_queue, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY)
        > 0
    )


async def test_the_worker_polls_both_task_queues_and_exits_0_promptly_on_sigterm(
    namespace_client, start_worker
):
    worker = start_worker()

    await wait_for(lambda: serving(namespace_client, worker), "pollers on both task queues")

    began = time.monotonic()
    assert await asyncio.to_thread(worker.terminate_and_wait, 30) == 0, "\n".join(worker.lines)
    assert time.monotonic() - began < 10
    events = worker.events()
    assert events.index("worker_started") < events.index("worker_stopping")
    assert events[-1] == "worker_stopped"
    assert not any("Traceback" in line for line in worker.lines)


async def test_a_dedicated_deploy_worker_serves_only_the_deploy_queue(
    namespace_client, start_worker
):
    worker = start_worker(CHANGEFLOW_SERVE_LIFECYCLE="false")

    async def deploy_polled() -> bool:
        assert worker.process.poll() is None, "\n".join(worker.lines)
        return (
            await pollers(
                namespace_client, worker.deploy_task_queue, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY
            )
            > 0
        )

    await wait_for(deploy_polled, "pollers on the deploy queue")

    for kind in (TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY):
        assert await pollers(namespace_client, worker.task_queue, kind) == 0
    assert await asyncio.to_thread(worker.terminate_and_wait, 30) == 0


async def slow_deployment(
    sessions: SessionFactory, workspace: Path, deploy_task_queue: str
) -> DeploymentInput:
    """A staging deployment of the sample shop whose verification takes a few seconds."""
    repo = await asyncio.to_thread(create_sample_repo, workspace / "shop")
    git = await asyncio.create_subprocess_exec(
        "git", "rev-parse", "HEAD", cwd=repo, stdout=asyncio.subprocess.PIPE
    )
    head = (await git.communicate())[0].decode().strip()
    tenant = await make_tenant(sessions)
    project = await make_project(
        sessions,
        tenant=tenant,
        repo_url=str(repo),
        check_command=f"sleep {SLOW_CHECK_SECONDS} && {SAMPLE_CHECK_COMMAND}",
    )
    request = PromptRequest(tenant_id=tenant.id, project_id=project.id, prompt="Nothing")
    plan = DeploymentPlan(tenant_id=tenant.id, prompt_request_id=request.id, commit_sha=head)
    async with sessions() as session:
        session.add(request)
        await session.flush()
        session.add(plan)
        await session.commit()
    return DeploymentInput(
        deployment_id=uuid.uuid4(),
        tenant_id=tenant.id,
        project_id=project.id,
        plan_id=plan.id,
        environment=DeploymentEnvironment.STAGING,
        commit_sha=head,
        deploy_task_queue=deploy_task_queue,
    )


async def activity_running(client: Client, workflow_id: str, activity_type: str) -> bool:
    described = await client.get_workflow_handle(workflow_id).describe()
    return any(
        pending.activity_type.name == activity_type
        and pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
        for pending in described.raw_description.pending_activities
    )


async def test_sigterm_lets_an_in_flight_activity_finish_instead_of_losing_it(
    namespace_client, start_worker, sessions, tmp_path
):
    worker = start_worker()
    deployment = await slow_deployment(sessions, tmp_path, worker.deploy_task_queue)
    workflow_id = deployment_workflow_id(deployment.deployment_id)
    await wait_for(lambda: serving(namespace_client, worker), "pollers on both task queues")
    handle = await namespace_client.start_workflow(
        DeploymentWorkflow.run, deployment, id=workflow_id, task_queue=worker.task_queue
    )
    await wait_for(
        lambda: activity_running(namespace_client, workflow_id, "run_check"),
        "verification to be running",
    )

    assert await asyncio.to_thread(worker.terminate_and_wait, 60) == 0, "\n".join(worker.lines)

    # The verification finished on its first attempt during the graceful shutdown...
    history = await handle.fetch_history()
    verify_scheduled = {
        event.event_id
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and event.activity_task_scheduled_event_attributes.activity_type.name == "run_check"
    }
    completed = [
        event
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
        and event.activity_task_completed_event_attributes.scheduled_event_id in verify_scheduled
    ]
    assert len(completed) == 1
    started = next(
        event
        for event in history.events
        if event.event_id == completed[0].activity_task_completed_event_attributes.started_event_id
    )
    assert started.activity_task_started_event_attributes.attempt == 1

    # ...and the deployment carries on to success with the next worker.
    async with running_workers(
        namespace_client,
        sessions,
        task_queue=worker.task_queue,
        deploy_task_queue=worker.deploy_task_queue,
    ):
        result = await handle.result()
    assert result.status == DeploymentStatus.SUCCEEDED
    assert result.verified


async def test_one_queue_for_everything_serves_workflows_and_deploy_activities_together(
    client, sessions, task_queue, tmp_path
):
    """A small fleet may set the deploy queue to the lifecycle queue: one Worker then serves
    both sets of activities, instead of two Workers failing each other's activity tasks."""
    settings = Settings(
        task_queue=task_queue, deploy_task_queue=task_queue, workspace_dir=tmp_path / "ws"
    )
    deps = Dependencies(settings=settings, sessions=sessions, client=client)
    workers = build_workers(client, deps)
    assert [w.task_queue for w in workers] == [task_queue]

    deployment = await slow_deployment(sessions, tmp_path, task_queue)
    stop = asyncio.Event()
    serving_task = asyncio.create_task(run_until_stopped(workers, stop))
    try:
        result = await client.execute_workflow(
            DeploymentWorkflow.run,
            deployment,
            id=deployment_workflow_id(deployment.deployment_id),
            task_queue=task_queue,
        )
    finally:
        stop.set()
        await serving_task
    assert result.status == DeploymentStatus.SUCCEEDED
    assert result.verified


async def test_a_database_cut_off_during_the_start_up_reconciliation_does_not_stop_the_worker(
    client: Client,
) -> None:
    """Seen in `make chaos`: a worker restarted while PostgreSQL restarted exited with the
    connection closed mid-query. The Schedules are housekeeping: the worker serves anyway."""

    def sessions() -> Any:
        raise OSError("connection was closed in the middle of operation")

    deps = Dependencies(settings=Settings(), sessions=sessions, client=client)  # type: ignore[arg-type]
    await reconcile_schedules_once(client, deps, "changeflow-lifecycle")


def consecutive_free_ports(count: int) -> int:
    """The first of `count` consecutive ports nothing listens on."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("0.0.0.0", 0))
            first = int(probe.getsockname()[1])
        if first + count > 65535:
            continue
        try:
            with contextlib.ExitStack() as held:
                for port in range(first, first + count):
                    sock = held.enter_context(socket.socket())
                    sock.bind(("0.0.0.0", port))
            return first
        except OSError:
            continue
    raise AssertionError("no consecutive free ports")


def start_process(command: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return bool(response.status == 200)
    except OSError:
        return False


async def test_the_webhooks_process_and_two_workers_start_on_one_host_with_one_environment(
    namespace_client: Client, database_url: str, tmp_path: Path
) -> None:
    """The README's one environment for every process of a host: each worker serves metrics
    on the next free port of the span, the webhooks process on its own port."""
    metrics = consecutive_free_ports(2)
    webhooks_port, webhooks_metrics = consecutive_free_ports(1), consecutive_free_ports(1)
    env = worker_environment(
        database_url=database_url,
        client=namespace_client,
        task_queue=f"lifecycle-{uuid.uuid4()}",
        deploy_task_queue=f"deploy-{uuid.uuid4()}",
        state_dir=tmp_path,
        CHANGEFLOW_CREDENTIAL_KEYS=f"k1:{KeyRing.new_key()}",
        CHANGEFLOW_METRICS_PORT=str(metrics),
        CHANGEFLOW_METRICS_PORT_SPAN="2",
        CHANGEFLOW_WEBHOOKS_PORT=str(webhooks_port),
        CHANGEFLOW_WEBHOOKS_METRICS_PORT=str(webhooks_metrics),
    )
    commands = {
        "worker 1": [sys.executable, "-m", "workers"],
        "worker 2": [sys.executable, "-m", "workers"],
        "webhooks": [sys.executable, "-m", "workers.webhooks"],
    }
    processes: dict[str, subprocess.Popen[str]] = {}
    try:
        for name, command in commands.items():
            processes[name] = start_process(command, env)
            if name == "worker 1":  # the first takes the span's first port
                await wait_for(
                    lambda: asyncio.to_thread(answers, f"http://127.0.0.1:{metrics}/metrics"),
                    "the first worker's metrics",
                )
        urls = [
            f"http://127.0.0.1:{metrics}/metrics",
            f"http://127.0.0.1:{metrics + 1}/metrics",
            f"http://127.0.0.1:{webhooks_port}/healthz",
            f"http://127.0.0.1:{webhooks_metrics}/metrics",
        ]

        async def all_up() -> bool:
            for name, process in processes.items():
                if process.poll() is not None:
                    assert process.stderr is not None
                    raise AssertionError(
                        f"{name} exited {process.returncode}: {process.stderr.read()}"
                    )
            return all([await asyncio.to_thread(answers, url) for url in urls])

        await wait_for(all_up, "two workers and the webhooks process")
    finally:
        for process in processes.values():
            process.send_signal(signal.SIGTERM)
        codes = {name: process.wait(60) for name, process in processes.items()}
    assert codes == {name: 0 for name in commands}
