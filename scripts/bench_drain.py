"""The parked and queued-drain phases of `make bench-lifecycle`.

Many human-approved lifecycles over a few projects park at approval (what a parked lifecycle
costs the worker's memory), then are approved all at once: their deployments queue behind each
other per project and environment, which is what the queue costs (approve round trips, workflow
tasks, the server's per-workflow limits). Only public entry points: the typed client, Temporal's
listing and histories, and the database rows.
"""

import asyncio
import functools
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from sqlmodel import col, select
from temporalio.api.enums.v1 import EventType
from temporalio.api.failure.v1 import Failure
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from client.lifecycle import LifecycleClient, LifecycleRefused
from models import DeploymentPlan, PromptStatus
from models.db import SessionFactory
from scripts.demo import DemoShop
from scripts.sample_repo import SAFE_PROMPT
from workflows.contracts.errors import ErrorType
from workflows.contracts.ids import prompt_request_workflow_id
from workflows.contracts.lifecycle import WORKFLOW_TYPE
from workflows.contracts.search_attributes import PROMPT_STATUS, TENANT_ID

# The lane was a workflow before it moved to PostgreSQL: counted when a server still runs one.
LANE_WORKFLOW_TYPE = "DeploymentLaneWorkflow"
# What the server says when a per-workflow or per-namespace limit refuses a request.
LIMIT_REFUSAL = re.compile(r"resource.?exhausted|limit", re.IGNORECASE)
GENERIC_REFUSAL_LINE = 'error="Update-with-Start could not be executed."'
SUBMIT_CONCURRENCY = 50
HISTORY_CONCURRENCY = 16
APPROVE_RETRY_DELAY_S = 1.0

T = TypeVar("T")


async def bounded(limit: int, jobs: list[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run the jobs with at most `limit` at a time; results in order."""
    gate = asyncio.Semaphore(limit)

    async def run(job: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await job()

    return await asyncio.gather(*(run(job) for job in jobs))


# --- parking ----------------------------------------------------------------------------------


async def park(
    client: Client,
    lifecycle: LifecycleClient,
    shop: DemoShop,
    project_ids: list[uuid.UUID],
    count: int,
    *,
    timeout_s: float,
) -> list[uuid.UUID]:
    """Submit `count` lifecycles round-robin over the projects; return once every one waits
    for approval (its PromptStatus search attribute, upserted by the workflow itself)."""

    async def submit(i: int) -> uuid.UUID:
        return await lifecycle.submit(
            tenant_id=shop.tenant.id,
            project_id=project_ids[i % len(project_ids)],
            user_id=shop.requester.id,
            prompt=SAFE_PROMPT,
        )

    request_ids = await bounded(
        SUBMIT_CONCURRENCY, [functools.partial(submit, i) for i in range(count)]
    )
    of_shop = f"WorkflowType = '{WORKFLOW_TYPE}' AND {TENANT_ID.name} = '{shop.tenant.id}'"
    deadline = time.monotonic() + timeout_s
    while True:
        parked = await client.count_workflows(
            f"{of_shop} AND {PROMPT_STATUS.name} = '{PromptStatus.AWAITING_APPROVAL.value}'"
        )
        if parked.count >= count:
            return request_ids
        ended = await client.count_workflows(f"{of_shop} AND ExecutionStatus != 'Running'")
        if ended.count:
            raise RuntimeError(f"{ended.count} lifecycles to park ended instead of parking")
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {parked.count} of {count} parked within {timeout_s:.0f}s")
        await asyncio.sleep(1)


async def plan_hashes(
    sessions: SessionFactory, request_ids: list[uuid.UUID]
) -> dict[uuid.UUID, str]:
    """The content hash each parked request's plan is approved by (from its plan row)."""
    async with sessions() as session:
        plans = (
            await session.exec(
                select(DeploymentPlan).where(col(DeploymentPlan.prompt_request_id).in_(request_ids))
            )
        ).all()
    latest: dict[uuid.UUID, DeploymentPlan] = {}
    for plan in plans:
        seen = latest.get(plan.prompt_request_id)
        if seen is None or plan.revision > seen.revision:
            latest[plan.prompt_request_id] = plan
    missing = [r for r in request_ids if r not in latest]
    if missing:
        raise RuntimeError(f"{len(missing)} parked requests have no plan row")
    return {request_id: plan.content_hash for request_id, plan in latest.items()}


# --- draining ---------------------------------------------------------------------------------


def is_limit_refusal(err: BaseException) -> bool:
    if isinstance(err, RPCError) and err.status is RPCStatusCode.RESOURCE_EXHAUSTED:
        return True
    cause: BaseException | None = err
    while cause is not None:
        if LIMIT_REFUSAL.search(str(cause)):
            return True
        cause = cause.__cause__
    return False


@dataclass
class Drain:
    approved: int = 0
    approve_s: list[float] = field(default_factory=list)
    approval_to_completion_s: list[float] = field(default_factory=list)
    first_approval: float | None = None
    last_completion: float | None = None
    completed_ids: list[uuid.UUID] = field(default_factory=list)
    not_completed: dict[str, int] = field(default_factory=dict)  # ended otherwise, by status
    approve_limit_refusals: int = 0
    approve_other_errors: int = 0
    timed_out: bool = False
    elapsed_s: float = 0.0

    @property
    def completed(self) -> int:
        return len(self.completed_ids)

    @property
    def per_s(self) -> float:
        """Lifecycles completed per second, from the first approval to the last completion (to
        the end of the time allowed when that ran out first)."""
        if self.first_approval is None or self.last_completion is None:
            return 0.0
        if self.timed_out:
            return self.completed / self.elapsed_s
        return self.completed / max(self.last_completion - self.first_approval, 1e-9)


async def drain(
    lifecycle: LifecycleClient,
    shop: DemoShop,
    hashes: dict[uuid.UUID, str],
    *,
    timeout_s: float,
) -> Drain:
    """Approve every parked request at once (each update timed, retried until it is taken),
    then wait for every outcome, within timeout_s."""
    figures = Drain()
    started = time.monotonic()

    async def approve_and_wait(request_id: uuid.UUID, content_hash: str) -> None:
        sent = time.monotonic()
        if figures.first_approval is None:
            figures.first_approval = sent
        while True:
            try:
                await lifecycle.approve(
                    request_id,
                    user_id=shop.approver.id,
                    content_hash=content_hash,
                    # The approver's service knows its tenant: no status query to sign.
                    tenant_id=shop.tenant.id,
                )
                break
            except LifecycleRefused as err:
                # A retried approval whose first attempt was taken after all.
                if err.error_type not in (
                    ErrorType.NOT_AWAITING_APPROVAL,
                    ErrorType.ALREADY_APPROVED,
                ):
                    raise
                break
            except Exception as err:
                if is_limit_refusal(err):
                    figures.approve_limit_refusals += 1
                else:
                    figures.approve_other_errors += 1
                await asyncio.sleep(APPROVE_RETRY_DELAY_S)
        approved = time.monotonic()
        figures.approved += 1
        figures.approve_s.append(approved - sent)
        result = await lifecycle.wait_for_outcome(request_id)
        done = time.monotonic()
        if result.status is PromptStatus.COMPLETED:
            figures.completed_ids.append(request_id)
            figures.approval_to_completion_s.append(done - sent)
            figures.last_completion = done
        else:
            figures.not_completed[result.status.value] = (
                figures.not_completed.get(result.status.value, 0) + 1
            )

    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.gather(*(approve_and_wait(r, h) for r, h in hashes.items()))
    except TimeoutError:
        figures.timed_out = True
    figures.elapsed_s = time.monotonic() - (figures.first_approval or started)
    return figures


async def reject_all(
    lifecycle: LifecycleClient, shop: DemoShop, hashes: dict[uuid.UUID, str]
) -> None:
    async def reject(request_id: uuid.UUID, content_hash: str) -> None:
        await lifecycle.reject(
            request_id,
            user_id=shop.approver.id,
            content_hash=content_hash,
            reason="bench",
            tenant_id=shop.tenant.id,
        )
        await lifecycle.wait_for_outcome(request_id)

    await bounded(SUBMIT_CONCURRENCY, [functools.partial(reject, r, h) for r, h in hashes.items()])


async def end_what_still_runs(client: Client, workflow_ids: list[str]) -> int:
    """Terminate the phase's workflows a timed-out drain left running; how many there were."""

    async def end(workflow_id: str) -> int:
        handle = client.get_workflow_handle(workflow_id)
        if (await handle.describe()).status is not WorkflowExecutionStatus.RUNNING:
            return 0
        try:
            await handle.terminate(reason="bench-lifecycle: the drain ran out of time")
        except RPCError as err:
            if err.status is not RPCStatusCode.NOT_FOUND:
                raise
        return 1

    ended = await bounded(HISTORY_CONCURRENCY, [functools.partial(end, w) for w in workflow_ids])
    return sum(ended)


# --- what the phase cost ----------------------------------------------------------------------


@dataclass
class PhaseHistories:
    workflows: int = 0
    lane_runs: int = 0
    workflow_tasks: int = 0
    workflow_task_timeouts: int = 0
    activity_retries: int = 0
    activity_limit_retries: int = 0  # retried after a failure naming a server limit
    lane_workflow_tasks: int = 0
    # Each prompt request's own workflows (itself and its children), lanes apart.
    tasks_by_request: dict[uuid.UUID, int] = field(default_factory=dict)
    deployment_ids: list[str] = field(default_factory=list)
    lane_ids: list[str] = field(default_factory=list)


def failure_mentions_limit(failure: Failure) -> bool:
    current: Failure | None = failure
    while current is not None and current.ByteSize():
        if LIMIT_REFUSAL.search(current.message) or LIMIT_REFUSAL.search(
            current.application_failure_info.type
        ):
            return True
        current = current.cause if current.HasField("cause") else None
    return False


async def count_history(
    client: Client, totals: PhaseHistories, workflow_id: str, run_id: str | None = None
) -> tuple[int, list[str]]:
    """Add one workflow run's history to the totals; returns its workflow tasks and the
    children it started."""
    history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
    tasks, children = 0, []
    totals.workflows += 1
    for event in history.events:
        kind = event.event_type
        if kind == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            tasks += 1
        elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT:
            totals.workflow_task_timeouts += 1
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            attrs = event.activity_task_started_event_attributes
            if attrs.attempt > 1:
                totals.activity_retries += attrs.attempt - 1
                if attrs.HasField("last_failure") and failure_mentions_limit(attrs.last_failure):
                    totals.activity_limit_retries += 1
        elif kind == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED:
            # Started ones only: a parent ended by the drain's timeout may have initiated one
            # that never ran.
            started = event.child_workflow_execution_started_event_attributes
            children.append(started.workflow_execution.workflow_id)
    totals.workflow_tasks += tasks
    return tasks, children


async def count_lifecycle(client: Client, totals: PhaseHistories, request_id: uuid.UUID) -> None:
    """A prompt request's workflow and its descendants (deployments, and theirs)."""
    pending, tasks = [prompt_request_workflow_id(request_id)], 0
    while pending:
        workflow_tasks, children = await count_history(client, totals, pending.pop())
        tasks += workflow_tasks
        pending.extend(children)
        totals.deployment_ids.extend(children)
    totals.tasks_by_request[request_id] = tasks


async def phase_histories(
    client: Client, request_ids: list[uuid.UUID], since: datetime
) -> PhaseHistories:
    """Every workflow of the phase: the prompt requests, their children (deployments, and
    theirs), and every run of a deployment lane started since `since`, if lanes exist."""
    totals = PhaseHistories()
    await bounded(
        HISTORY_CONCURRENCY,
        [functools.partial(count_lifecycle, client, totals, r) for r in request_ids],
    )
    window = since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    lanes = [
        (lane.id, lane.run_id)
        async for lane in client.list_workflows(
            f"WorkflowType = '{LANE_WORKFLOW_TYPE}' AND StartTime >= '{window}'"
        )
    ]
    totals.lane_runs = len(lanes)
    totals.lane_ids = sorted({workflow_id for workflow_id, _ in lanes})
    lane_tasks = await bounded(
        HISTORY_CONCURRENCY,
        [functools.partial(count_history, client, totals, w, r) for w, r in lanes],
    )
    totals.lane_workflow_tasks = sum(tasks for tasks, _ in lane_tasks)
    return totals


def log_offset(log: Path | None) -> int:
    try:
        return log.stat().st_size if log else 0
    except FileNotFoundError:
        return 0


def server_log_limit_errors(log: Path | None, offset: int) -> int | None:
    """Limit refusals the dev server logged since `offset` (None when the server's log is not
    ours to read: a configured or an already running server). A refused update-with-start is
    logged twice, its cause and then a generic line; the generic one is not counted again."""
    if log is None or not log.exists():
        return None
    with log.open("rb") as handle:
        handle.seek(offset)
        text = handle.read().decode(errors="replace")
    return sum(
        1
        for line in text.splitlines()
        if LIMIT_REFUSAL.search(line) and GENERIC_REFUSAL_LINE not in line
    )
