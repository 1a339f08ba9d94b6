"""`make bench-lifecycle`: what the lifecycle's durable bookkeeping costs beyond Temporal itself.

On the embedded stack (or the configured servers), in one run on the same servers:
1. one warm-up lifecycle, whose histories give the shape of a lifecycle: activities of the
   prompt workflow, its child deployment workflows and their activities;
2. N auto-approved lifecycles at once, each on its own project (deployments of one project
   queue behind each other by design; separate projects measure throughput, not that queue);
3. N bare workflows of the same shape (the same number of activities, as many child workflows
   with as many activities each) whose activities do nothing: no database, no git, no checks;
4. M human-approved lifecycles at once, timing approval (the update sent) to the staging
   deployment's start (its started_at in PostgreSQL).

The last line printed is one JSON object: both throughputs, lifecycle_vs_bare_ratio, and the
approval-to-staging-start latency p50/p95. Options: --n N (default 20), --human M (default 10),
or BENCH_N / BENCH_HUMAN. The dev server persists to SQLite (one connection); the JSON says so.
"""

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlmodel import col, select
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.worker import Worker

from models import Deployment, DeploymentEnvironment, Project, PromptStatus
from models.db import SessionFactory, create_engine, session_factory
from scripts.bench_bare import BareChildWorkflow, BareShape, BareWorkflow, bare_step
from scripts.demo import DemoShop, seed_shop
from scripts.sample_repo import SAFE_PROMPT, SAMPLE_CHECK_COMMAND, create_sample_repo
from workers.cli import run_entry_point
from workers.client import connect
from workers.devstack import embedded_stack
from workers.lifecycle_client import LifecycleClient
from workers.registry import Dependencies
from workers.settings import Settings
from workers.worker import build_workers, run_until_stopped
from workflows.contracts.ids import prompt_request_workflow_id
from workflows.contracts.lifecycle import PromptRequestResult

RUN_TIMEOUT_S = 600


# --- measuring --------------------------------------------------------------------------------


@dataclass
class Shape:
    activities: int
    children: int
    child_activities: int

    @property
    def total_activities(self) -> int:
        return self.activities + self.children * self.child_activities


async def lifecycle_shape(client: Client, workflow_id: str) -> Shape:
    """Activities of the workflow, and its children with their (average) activities."""

    async def count(wid: str) -> tuple[int, list[str]]:
        history = await client.get_workflow_handle(wid).fetch_history()
        activities, children = 0, []
        for event in history.events:
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                activities += 1
            elif event.event_type == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
                children.append(
                    event.start_child_workflow_execution_initiated_event_attributes.workflow_id
                )
        return activities, children

    activities, children = await count(workflow_id)
    child_counts = [(await count(c))[0] for c in children]
    per_child = round(statistics.mean(child_counts)) if child_counts else 0
    return Shape(activities, len(children), per_child)


@dataclass
class ActivityTimes:
    count: int = 0
    queued_s: float = 0.0  # scheduled -> started: waiting for a worker slot
    running_s: float = 0.0  # started -> closed: the activity's own work


async def activity_breakdown(client: Client, workflow_ids: list[str]) -> dict[str, ActivityTimes]:
    """Per activity type: how often it ran and where its time went, over these workflows and
    their children."""
    times: dict[str, ActivityTimes] = {}
    closed = {
        EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: "activity_task_completed_event_attributes",
        EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED: "activity_task_failed_event_attributes",
    }
    pending = list(workflow_ids)
    while pending:
        history = await client.get_workflow_handle(pending.pop()).fetch_history()
        scheduled: dict[int, tuple[str, float]] = {}
        started: dict[int, float] = {}
        for event in history.events:
            at = event.event_time.ToDatetime().timestamp()
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                name = event.activity_task_scheduled_event_attributes.activity_type.name
                scheduled[event.event_id] = (name, at)
            elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                started[event.activity_task_started_event_attributes.scheduled_event_id] = at
            elif event.event_type in closed:
                attrs = getattr(event, closed[event.event_type])
                name, scheduled_at = scheduled[attrs.scheduled_event_id]
                started_at = started.get(attrs.scheduled_event_id, scheduled_at)
                entry = times.setdefault(name, ActivityTimes())
                entry.count += 1
                entry.queued_s += started_at - scheduled_at
                entry.running_s += at - started_at
            elif event.event_type == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
                pending.append(
                    event.start_child_workflow_execution_initiated_event_attributes.workflow_id
                )
    return times


async def add_projects(sessions: SessionFactory, shop: DemoShop, repo_dir: Path, n: int) -> list:
    """n more projects of the shop, each on its own sample repository."""
    projects = []
    for _ in range(n):
        suffix = uuid.uuid4().hex[:8]
        repo = await asyncio.to_thread(create_sample_repo, repo_dir / f"storefront-{suffix}")
        projects.append(
            Project(
                tenant_id=shop.tenant.id,
                name=f"Storefront {suffix}",
                slug=f"storefront-{suffix}",
                repo_url=str(repo),
                check_command=SAMPLE_CHECK_COMMAND,
            )
        )
    async with sessions() as session:
        session.add_all(projects)
        await session.commit()
    return projects


async def submit_and_wait(
    lifecycle: LifecycleClient, shop: DemoShop, project_id: uuid.UUID
) -> PromptRequestResult:
    request_id = await lifecycle.submit(
        tenant_id=shop.tenant.id,
        project_id=project_id,
        user_id=shop.requester.id,
        prompt=SAFE_PROMPT,
    )
    return await lifecycle.wait_for_outcome(request_id)


async def human_run(
    lifecycle: LifecycleClient, sessions: SessionFactory, shop: DemoShop, project_id: uuid.UUID
) -> float:
    """Seconds from sending the approval to the staging deployment's start."""
    request_id = await lifecycle.submit(
        tenant_id=shop.tenant.id,
        project_id=project_id,
        user_id=shop.requester.id,
        prompt=SAFE_PROMPT,
    )
    while True:
        try:
            status = await lifecycle.status(request_id)
        except Exception:  # not started yet
            status = None
        if status and status.status is PromptStatus.AWAITING_APPROVAL and status.plan:
            break
        if status and status.status not in (PromptStatus.RECEIVED, PromptStatus.PLANNING):
            raise RuntimeError(f"{request_id} did not wait for approval: {status.status}")
        # Queries are answered by the worker: polling harder would slow what is measured.
        await asyncio.sleep(0.2)
    approved_at = time.time()
    await lifecycle.approve(
        request_id, user_id=shop.approver.id, content_hash=status.plan.content_hash
    )
    result = await lifecycle.wait_for_outcome(request_id)
    if result.status is not PromptStatus.COMPLETED:
        raise RuntimeError(f"{request_id} ended {result.status}: {result.reason}")
    async with sessions() as session:
        staging = (
            await session.exec(
                select(Deployment).where(
                    Deployment.plan_id == result.plan_id,
                    Deployment.environment == DeploymentEnvironment.STAGING,
                    col(Deployment.rollback_of_id).is_(None),
                )
            )
        ).one()
    assert staging.started_at is not None
    return staging.started_at.timestamp() - approved_at


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile: the smallest value at or above pct percent of them."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


async def bench(settings: Settings) -> int:
    parser = argparse.ArgumentParser(prog="bench-lifecycle")
    parser.add_argument("--n", type=int, default=int(os.environ.get("BENCH_N", "20")))
    parser.add_argument("--human", type=int, default=int(os.environ.get("BENCH_HUMAN", "10")))
    args = parser.parse_args(sys.argv[1:])
    if args.n < 1 or args.human < 1:
        raise SystemExit("--n and --human must be at least 1")
    embedded_database, embedded_temporal = settings.embedded_database, settings.embedded_temporal
    cache_bytecode(settings.data_dir.resolve() / "pycache")
    async with embedded_stack(settings) as stack:
        settings = stack.settings
        client = await connect(settings)
        engine = create_engine(stack.database_url, pool_size=settings.db_pool_size)
        sessions = session_factory(engine)
        repo_dir = settings.data_dir.resolve() / "bench" / uuid.uuid4().hex[:8]
        stop = asyncio.Event()
        deps = Dependencies(settings=settings, sessions=sessions, client=client)
        bare_queue = f"{settings.task_queue}-bench-bare"
        workers = [
            *build_workers(client, deps),
            Worker(
                client,
                task_queue=bare_queue,
                workflows=[BareWorkflow, BareChildWorkflow],
                activities=[bare_step],
                max_concurrent_activities=settings.max_concurrent_activities,
                max_concurrent_workflow_tasks=settings.max_concurrent_workflow_tasks,
            ),
        ]
        serving = asyncio.create_task(run_until_stopped(workers, stop))
        try:
            async with asyncio.timeout(RUN_TIMEOUT_S):
                figures = await measure(settings, client, sessions, repo_dir, bare_queue, args)
        finally:
            stop.set()
            await serving
            await engine.dispose()
    figures["database"] = "pgserver (embedded)" if embedded_database else "configured PostgreSQL"
    figures["temporal_persistence"] = (
        "dev server, SQLite file" if embedded_temporal else "configured Temporal server"
    )
    print(json.dumps(figures), flush=True)
    return 0


def cache_bytecode(folder: Path) -> None:
    """Workflow sandboxes import the workflow modules afresh for every workflow run. Under
    PYTHONDONTWRITEBYTECODE each of those imports compiles the source again, which a deployed
    worker with compiled bytecode never does; both the lifecycle and the bare workflows get the
    cache, kept under the data folder rather than in the source tree."""
    sys.pycache_prefix = str(folder)
    sys.dont_write_bytecode = False


def say(text: str) -> None:
    print(text, flush=True)


async def measure(
    settings: Settings,
    client: Client,
    sessions: SessionFactory,
    repo_dir: Path,
    bare_queue: str,
    args: argparse.Namespace,
) -> dict[str, object]:
    lifecycle = LifecycleClient(
        client, task_queue=settings.task_queue, deploy_task_queue=settings.deploy_task_queue
    )
    auto = await seed_shop(sessions, repo_dir, name="Bench Auto", human_approval=False)
    human = await seed_shop(sessions, repo_dir, name="Bench Human", human_approval=True)
    auto_projects = await add_projects(sessions, auto, repo_dir, args.n)
    human_projects = await add_projects(sessions, human, repo_dir, args.human)

    warm = await submit_and_wait(lifecycle, auto, auto.project.id)
    if warm.status is not PromptStatus.COMPLETED:
        raise RuntimeError(f"the warm-up lifecycle ended {warm.status}: {warm.reason}")
    shape = await lifecycle_shape(client, prompt_request_workflow_id(warm.prompt_request_id))
    say(
        f"a lifecycle: {shape.activities} activities in the prompt workflow, {shape.children} "
        f"deployment children of ~{shape.child_activities} activities "
        f"({shape.total_activities} in all)"
    )

    started = time.monotonic()
    results = await asyncio.gather(*(submit_and_wait(lifecycle, auto, p.id) for p in auto_projects))
    lifecycle_s = time.monotonic() - started
    failed = [r for r in results if r.status is not PromptStatus.COMPLETED]
    if failed:
        raise RuntimeError(f"{len(failed)} lifecycles did not complete: {failed[0].reason}")
    lifecycle_tps = args.n / lifecycle_s
    say(f"{args.n} auto-approved lifecycles: {lifecycle_s:.2f}s, {lifecycle_tps:.2f}/s")
    breakdown = await activity_breakdown(
        client, [prompt_request_workflow_id(r.prompt_request_id) for r in results]
    )
    say("   activity                         runs/lifecycle  mean queued  mean running")
    for name, t in sorted(breakdown.items(), key=lambda item: -item[1].running_s):
        say(
            f"   {name:<32} {t.count / args.n:>14.1f} {t.queued_s / t.count:>11.3f}s"
            f" {t.running_s / t.count:>12.3f}s"
        )

    run_id = uuid.uuid4().hex[:8]
    bare_shape = BareShape(
        run_id=run_id,
        activities=shape.activities,
        children=shape.children,
        child_activities=shape.child_activities,
    )
    started = time.monotonic()
    await asyncio.gather(
        *(
            client.execute_workflow(
                BareWorkflow.run,
                bare_shape,
                id=f"bench-bare-{run_id}-{i}",
                task_queue=bare_queue,
            )
            for i in range(args.n)
        )
    )
    bare_s = time.monotonic() - started
    bare_tps = args.n / bare_s
    say(f"{args.n} bare workflows of the same shape: {bare_s:.2f}s, {bare_tps:.2f}/s")

    latencies = await asyncio.gather(
        *(human_run(lifecycle, sessions, human, p.id) for p in human_projects)
    )
    p50, p95 = statistics.median(latencies), percentile(latencies, 95)
    say(f"{args.human} human-approved: approval to staging start p50 {p50:.3f}s, p95 {p95:.3f}s")
    return {
        "n": args.n,
        "human_runs": args.human,
        "activities_per_lifecycle": shape.total_activities,
        "lifecycle_throughput_per_s": round(lifecycle_tps, 3),
        "bare_throughput_per_s": round(bare_tps, 3),
        "lifecycle_vs_bare_ratio": round(lifecycle_tps / bare_tps, 3),
        "approval_to_staging_start_p50_s": round(p50, 3),
        "approval_to_staging_start_p95_s": round(p95, 3),
    }


def main() -> None:
    os.environ.setdefault("CHANGEFLOW_LOG_LEVEL", "WARNING")
    # pgserver asks platformdirs for a runtime folder; its fallback is fine and not news.
    run_entry_point(bench, prog="bench-lifecycle")


if __name__ == "__main__":
    main()
