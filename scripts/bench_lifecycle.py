"""`make bench-lifecycle`: what the lifecycle's durable bookkeeping costs beyond Temporal itself.

On the embedded stack (or the configured servers), in one run on the same servers. The
lifecycle's worker is `python -m workers`, a process of its own configured like an operator's
(environment variables); the two baselines are served by another (scripts/bench_worker.py) with
the same concurrency limits, so the benchmark's client shares an interpreter with neither.
1. one warm-up lifecycle, whose histories give the shape of a lifecycle: activities of the
   prompt workflow, its child deployment workflows and their activities;
2. N auto-approved lifecycles at once, each on its own project (deployments of one project
   queue behind each other by design; separate projects measure throughput, not that queue);
3. N auto-approved lifecycles at once whose changes the model engine makes, against the local
   stand-in of an OpenAI-compatible server (scripts/model_stand_in.py: scripted answers given at
   once, real protocol; not a model), on projects of their own: what the engine itself costs
   (context, streaming, its exactly-once call record, real usage charged) beside the rule engine;
4. N bare workflows of the same shape (the same number of activities, as many child workflows
   with as many activities each) whose activities do nothing: no database, no git, no checks;
5. N minimal lifecycles at once (scripts/bench_minimal.py): the fixed lifecycle a team would
   hand-write without our bookkeeping, 4 no-op activities and 2 children of 2 each;
6. M human-approved lifecycles at once, timing approval (the update sent) to the staging
   deployment's start (its started_at in PostgreSQL);
7. parked: P human-approved lifecycles over K projects submitted until each waits for approval,
   reading the worker process's resident memory (VmRSS) before, once they are parked, and after
   they have all ended;
8. queued drain: D of the parked ones approved all at once (the rest rejected), within a time
   allowed: approve round trips, lifecycles completed per second from the first approval to the
   last completion, and what the queue cost in histories (WorkflowTaskCompleted over the
   prompt requests, their deployments, and every run of a deployment lane if lanes exist) and
   in limit refusals (the dev server's log, failed approvals, activities retried after one).

The last line printed is one JSON object:
- n, human_runs, activities_per_lifecycle (the prompt workflow's plus its children's);
- lifecycle_throughput_per_s, bare_throughput_per_s, lifecycle_vs_bare_ratio;
- minimal_throughput_per_s, minimal_activities_per_lifecycle, lifecycle_vs_minimal_ratio;
- model_throughput_per_s, model_calls_per_lifecycle, model_tokens_charged_per_lifecycle,
  model_vs_rule_ratio (the model engine's lifecycles per second over the rule engine's);
- approval_to_staging_start_p50_s / _p95_s;
- parked, parked_projects, park_s, rss_before_mb, parked_worker_rss_mb, parked_worker_kb_each,
  rss_after_close_mb (memory not given back shows as rss_after_close_mb above rss_before_mb);
- drain, drain_completed, drain_not_completed (by status), drain_timed_out, drain_s,
  queued_drain_per_s, approve_p50_s / _p95_s, drain_approval_to_completion_p50_s,
  workflow_tasks_per_lifecycle (over the drained lifecycles, lanes included; a timed-out
  drain's unfinished ones count with the tasks they had, and are then terminated),
  workflow_tasks_per_completed_lifecycle (a completed one's own workflows, lanes apart),
  lane_workflow_tasks, drain_workflows, drain_lane_runs, workflow_task_timeouts,
  activity_retries;
- server_limit_errors = server_log_limit_errors (refusals the dev server logged; null when its
  log is not ours) + approve_limit_refusals + activity_limit_retries (seen by the client);
- remote_n, local_path_throughput_per_s, remote_throughput_per_s, remote_vs_local_ratio (a
  git remote over smart HTTP on this machine against local paths, scripts/bench_remote.py),
  big_repo_plan_warm_s, sample_repo_plan_warm_s, big_repo_plan_extra_s (planning 50 MB in
  20,000 files with a warm mirror), big_repo_packed_mb, big_repo_mirror_made_s;
- database, temporal_persistence, dev_server_persistence (SQLite file or in-memory).
Options (or environment variables): --n N (BENCH_N, 20), --human M (BENCH_HUMAN, 10),
--parked P (BENCH_PARKED, 500), --drain D (BENCH_DRAIN, 500, at most P), --projects K
(BENCH_PROJECTS, 10), --drain-timeout S (BENCH_DRAIN_TIMEOUT, 540); --quick for a tiny run.
"""

import argparse
import asyncio
import dataclasses
import functools
import json
import math
import os
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlmodel import col, func, select
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.service import RPCError

from client.connection import connect
from client.lifecycle import LifecycleClient
from infra.decision_signer import development_signer
from infra.entry_points import run_entry_point
from infra.settings import Settings
from models import (
    ChangeEngineKind,
    Deployment,
    DeploymentEnvironment,
    ModelCall,
    Project,
    PromptRequest,
    PromptStatus,
)
from models.db import SessionFactory, create_engine, session_factory
from scripts.bench_bare import BareParkedWorkflow, BareShape, BareWorkflow
from scripts.bench_drain import (
    APPROVE_RETRY_DELAY_S,
    SUBMIT_CONCURRENCY,
    bounded,
    drain,
    end_what_still_runs,
    log_offset,
    park,
    phase_histories,
    plan_hashes,
    reject_all,
    server_log_limit_errors,
)
from scripts.bench_minimal import MINIMAL_ACTIVITIES, MinimalLifecycleWorkflow
from scripts.bench_processes import WorkerProcess, watch, worker_env
from scripts.bench_remote import measure_remote
from scripts.demo import MODEL_PROMPT, DemoShop, model_stand_in, seed_shop, stand_in_model_settings
from scripts.sample_repo import SAFE_PROMPT, SAMPLE_CHECK_COMMAND, create_sample_repo
from workers.devstack import EmbeddedStack, embedded_stack
from workflows.contracts.ids import prompt_request_workflow_id
from workflows.contracts.lifecycle import PromptRequestResult

# Everything but the drain, which has a time of its own (--drain-timeout).
RUN_TIMEOUT_S = 900
# The marker the SDK records for a local activity's result.
LOCAL_ACTIVITY_MARKER = "core_local_activity"
PARK_TIMEOUT_S = 120  # plus a second per parked lifecycle
RSS_SETTLE_S = 3.0
# The parked tenant's holds: hundreds of lifecycles waiting at once, each holding its estimate.
PARKED_FUNDS = 1_000_000_000
MODEL_ANSWERS = 1_000_000  # the same answer to every model-engine lifecycle of the run


# --- measuring --------------------------------------------------------------------------------


@dataclass
class Shape:
    """Activities (task-queue and local) of a prompt workflow and of its average child."""

    activities: int
    children: int
    child_activities: int
    local_activities: int = 0
    child_local_activities: int = 0

    @property
    def total_activities(self) -> int:
        return self.total_local_activities + self.activities + self.children * self.child_activities

    @property
    def total_local_activities(self) -> int:
        return self.local_activities + self.children * self.child_local_activities


async def lifecycle_shape(client: Client, workflow_id: str) -> Shape:
    """Activities of the workflow, and its children with their (average) activities."""

    async def count(wid: str) -> tuple[tuple[int, int], list[str]]:
        history = await client.get_workflow_handle(wid).fetch_history()
        activities, local, children = 0, 0, []
        for event in history.events:
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                activities += 1
            elif (
                event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
                and event.marker_recorded_event_attributes.marker_name == LOCAL_ACTIVITY_MARKER
            ):
                local += 1
            elif event.event_type == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
                children.append(
                    event.start_child_workflow_execution_initiated_event_attributes.workflow_id
                )
        return (activities, local), children

    (activities, local), children = await count(workflow_id)
    child_counts = [(await count(c))[0] for c in children]
    per_child = round(statistics.mean(a for a, _ in child_counts)) if child_counts else 0
    local_per_child = round(statistics.mean(n for _, n in child_counts)) if child_counts else 0
    return Shape(activities, len(children), per_child, local, local_per_child)


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


async def add_projects(
    sessions: SessionFactory,
    shop: DemoShop,
    repo_dir: Path,
    n: int,
    change_engine: ChangeEngineKind | None = None,
) -> list:
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
                change_engine=change_engine,
            )
        )
    async with sessions() as session:
        session.add_all(projects)
        await session.commit()
    return projects


async def submit_and_wait(
    lifecycle: LifecycleClient, shop: DemoShop, project_id: uuid.UUID, prompt: str = SAFE_PROMPT
) -> PromptRequestResult:
    request_id = await lifecycle.submit(
        tenant_id=shop.tenant.id,
        project_id=project_id,
        user_id=shop.requester.id,
        prompt=prompt,
    )
    return await lifecycle.wait_for_outcome(request_id)


async def completed_at_once(
    lifecycle: LifecycleClient, shop: DemoShop, projects: list[Project], prompt: str
) -> tuple[list[PromptRequestResult], float]:
    """One lifecycle per project, all at once; their results and the seconds they took.
    Raises unless every one completed."""
    started = time.monotonic()
    results = await asyncio.gather(
        *(submit_and_wait(lifecycle, shop, p.id, prompt) for p in projects)
    )
    seconds = time.monotonic() - started
    failed = [r for r in results if r.status is not PromptStatus.COMPLETED]
    if failed:
        raise RuntimeError(f"{len(failed)} lifecycles did not complete: {failed[0].reason}")
    return results, seconds


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
        request_id,
        user_id=shop.approver.id,
        content_hash=status.plan.content_hash,
        tenant_id=shop.tenant.id,
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


# What a run measures (--phases): the throughput baselines (1-5, the model engine's needing the
# rule engine's), the human-approved runs (6), parked and the queued drain (7-8), projects on a
# git remote against local paths (scripts/bench_remote.py).
PHASES = ("throughput", "model", "human", "drain", "remote")


@dataclass(frozen=True)
class Sizes:
    n: int
    human: int
    parked: int
    drain: int
    projects: int
    drain_timeout: float
    phases: tuple[str, ...] = PHASES
    # The big repository the remote phase plans on (2,500 bytes a file).
    big_repo_files: int = 20_000


DEFAULT_SIZES = Sizes(n=20, human=10, parked=500, drain=500, projects=10, drain_timeout=540)
QUICK_SIZES = Sizes(
    n=3, human=2, parked=4, drain=3, projects=2, drain_timeout=240, big_repo_files=500
)
ENVIRONMENT = {
    "n": "BENCH_N",
    "human": "BENCH_HUMAN",
    "parked": "BENCH_PARKED",
    "drain": "BENCH_DRAIN",
    "projects": "BENCH_PROJECTS",
    "drain_timeout": "BENCH_DRAIN_TIMEOUT",
}


def parse_sizes(argv: list[str]) -> Sizes:
    """An option given wins, then its environment variable, then --quick's or the default."""
    parser = argparse.ArgumentParser(prog="bench-lifecycle")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a test's run)")
    parser.add_argument(
        "--phases",
        default=os.environ.get("BENCH_PHASES") or ",".join(PHASES),
        help=f"comma-separated, of {', '.join(PHASES)} (BENCH_PHASES; default all)",
    )
    kinds: dict[str, type[int] | type[float]] = {name: int for name in ENVIRONMENT}
    kinds["drain_timeout"] = float
    for name, kind in kinds.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind)
    args = parser.parse_args(argv)
    chosen: dict[str, Any] = {}
    for name, variable in ENVIRONMENT.items():
        value = getattr(args, name)
        if value is None and os.environ.get(variable):
            try:
                value = kinds[name](os.environ[variable])
            except ValueError:
                raise SystemExit(
                    f"{variable} must be a number, not {os.environ[variable]!r}"
                ) from None
        if value is not None:
            chosen[name] = value
    phases = tuple(p.strip() for p in args.phases.split(",") if p.strip())
    if not phases or set(phases) - set(PHASES):
        raise SystemExit(f"--phases takes a comma-separated choice of {', '.join(PHASES)}")
    if "model" in phases and "throughput" not in phases:
        raise SystemExit("--phases model is compared with throughput: give both")
    chosen["phases"] = phases
    sizes = dataclasses.replace(QUICK_SIZES if args.quick else DEFAULT_SIZES, **chosen)
    if min(sizes.n, sizes.human, sizes.parked, sizes.drain, sizes.projects) < 1:
        raise SystemExit("--n, --human, --parked, --drain and --projects must be at least 1")
    if sizes.drain > sizes.parked:
        raise SystemExit("--drain approves parked lifecycles: it cannot exceed --parked")
    if sizes.drain_timeout <= 0:
        raise SystemExit("--drain-timeout must be positive")
    return sizes


def dev_server_persistence(settings: Settings, stack: EmbeddedStack) -> str:
    """What start_temporal gave the dev server: its SQLite file (--db-filename)."""
    if not settings.embedded_temporal:
        return "configured Temporal server (its persistence is not known here)"
    if "temporal" in stack.started:
        return f"SQLite file {settings.data_dir.resolve() / 'temporal.db'}"
    return "an already running dev server (persistence unknown)"


async def bench(settings: Settings) -> int:
    sizes = parse_sizes(sys.argv[1:])
    embedded_database, embedded_temporal = settings.embedded_database, settings.embedded_temporal
    server_log = settings.data_dir.resolve() / "temporal.log" if embedded_temporal else None
    # Started before the worker, whose settings point its model engine here.
    stand_in = model_stand_in(answers=MODEL_ANSWERS)
    async with embedded_stack(settings) as stack:
        if "temporal" not in stack.started:
            server_log = None  # another process's server: its log is not this run's
        persistence = dev_server_persistence(settings, stack)
        settings = stack.settings.model_copy(update=stand_in_model_settings(stand_in))
        client = await connect(settings)
        engine = create_engine(stack.database_url, pool_size=settings.db_pool_size)
        sessions = session_factory(engine)
        run_id = uuid.uuid4().hex[:8]
        bench_dir = settings.data_dir.resolve() / "bench" / run_id
        queues = BaselineQueues(
            bare=f"{settings.task_queue}-bench-bare", minimal=f"{settings.task_queue}-bench-minimal"
        )
        env = worker_env(settings)
        lifecycle_worker = WorkerProcess(
            "lifecycle", ["-m", "workers"], env, bench_dir / "lifecycle-worker.log"
        )
        baseline_worker = WorkerProcess(
            "baseline",
            [
                "-m",
                "scripts.bench_worker",
                "--bare-queue",
                queues.bare,
                "--minimal-queue",
                queues.minimal,
            ],
            env,
            bench_dir / "baseline-worker.log",
        )
        run = Run(settings, client, sessions, bench_dir, queues, sizes, lifecycle_worker)
        measuring = asyncio.create_task(measure(run, server_log))
        watching = asyncio.create_task(watch([lifecycle_worker, baseline_worker]))
        try:
            async with asyncio.timeout(RUN_TIMEOUT_S + sizes.drain_timeout):
                done, _ = await asyncio.wait(
                    [measuring, watching], return_when=asyncio.FIRST_COMPLETED
                )
            if watching in done:
                watching.result()  # raises: a worker process exited
            figures = measuring.result()
        finally:
            for task in (measuring, watching):
                task.cancel()
            await asyncio.gather(
                asyncio.to_thread(lifecycle_worker.stop), asyncio.to_thread(baseline_worker.stop)
            )
            await engine.dispose()
            stand_in.stop()
    figures["database"] = "pgserver (embedded)" if embedded_database else "configured PostgreSQL"
    figures["temporal_persistence"] = (
        "dev server, SQLite file" if embedded_temporal else "configured Temporal server"
    )
    figures["dev_server_persistence"] = persistence
    print(json.dumps(figures), flush=True)
    return 0


def say(text: str) -> None:
    print(text, flush=True)


@dataclass
class BaselineQueues:
    bare: str
    minimal: str


@dataclass
class Run:
    settings: Settings
    client: Client
    sessions: SessionFactory
    bench_dir: Path
    queues: BaselineQueues
    sizes: Sizes
    lifecycle_worker: WorkerProcess

    @property
    def lifecycle(self) -> LifecycleClient:
        return LifecycleClient(
            self.client,
            task_queue=self.settings.task_queue,
            deploy_task_queue=self.settings.deploy_task_queue,
            signer=development_signer(self.settings),
        )


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else 0.0


async def measure(run: Run, server_log: Path | None) -> dict[str, object]:
    figures: dict[str, object] = {"phases": list(run.sizes.phases)}
    if "throughput" in run.sizes.phases:
        throughput = await measure_throughput(run)
        figures.update(throughput)
        rule_tps = throughput["lifecycle_throughput_per_s"]
        assert isinstance(rule_tps, float)
        if "model" in run.sizes.phases:
            figures.update(await measure_model_engine(run, rule_tps))
    if "human" in run.sizes.phases:
        figures.update(await measure_approval_latency(run))
    if "drain" in run.sizes.phases:
        figures.update(await measure_parked_and_drain(run, server_log))
    if "remote" in run.sizes.phases:
        figures.update(await measure_remote_projects(run))
    return figures


async def measure_remote_projects(run: Run) -> dict[str, object]:
    """Lifecycles on git remotes against local paths, and planning a big remote repository."""
    shop = await seed_shop(
        run.sessions, run.bench_dir, name="Bench Remote", human_approval=False, funds=PARKED_FUNDS
    )
    local = await add_projects(run.sessions, shop, run.bench_dir, run.sizes.n)

    async def completed(projects: list[Project], prompt: str) -> float:
        return (await completed_at_once(run.lifecycle, shop, projects, prompt))[1]

    return await measure_remote(
        run.sessions,
        shop.tenant.id,
        local,
        run.bench_dir / "remote",
        completed,
        say,
        big_files=run.sizes.big_repo_files,
    )


async def measure_throughput(run: Run) -> dict[str, object]:
    n, client, lifecycle, repo_dir = run.sizes.n, run.client, run.lifecycle, run.bench_dir
    auto = await seed_shop(run.sessions, repo_dir, name="Bench Auto", human_approval=False)
    auto_projects = await add_projects(run.sessions, auto, repo_dir, n)

    warm = await submit_and_wait(lifecycle, auto, auto.project.id)
    if warm.status is not PromptStatus.COMPLETED:
        raise RuntimeError(f"the warm-up lifecycle ended {warm.status}: {warm.reason}")
    shape = await lifecycle_shape(client, prompt_request_workflow_id(warm.prompt_request_id))
    say(
        f"a lifecycle: {shape.activities} activities and {shape.local_activities} local ones in "
        f"the prompt workflow, {shape.children} deployment children of ~{shape.child_activities}"
        f" and ~{shape.child_local_activities} local ({shape.total_activities} in all)"
    )

    results, lifecycle_s = await completed_at_once(lifecycle, auto, auto_projects, SAFE_PROMPT)
    lifecycle_tps = n / lifecycle_s
    say(f"{n} auto-approved lifecycles: {lifecycle_s:.2f}s, {lifecycle_tps:.2f}/s")
    breakdown = await activity_breakdown(
        client, [prompt_request_workflow_id(r.prompt_request_id) for r in results]
    )
    say("   activity                         runs/lifecycle  mean queued  mean running")
    for name, t in sorted(breakdown.items(), key=lambda item: -item[1].running_s):
        say(
            f"   {name:<32} {t.count / n:>14.1f} {t.queued_s / t.count:>11.3f}s"
            f" {t.running_s / t.count:>12.3f}s"
        )

    run_id = uuid.uuid4().hex[:8]
    bare_shape = BareShape(
        run_id=run_id,
        activities=shape.activities,
        children=shape.children,
        child_activities=shape.child_activities,
        local_activities=shape.local_activities,
        child_local_activities=shape.child_local_activities,
    )

    async def bare(i: int | str) -> None:
        await client.execute_workflow(
            BareWorkflow.run,
            bare_shape,
            id=f"bench-bare-{run_id}-{i}",
            task_queue=run.queues.bare,
        )

    async def minimal(i: int | str) -> None:
        await client.execute_workflow(
            MinimalLifecycleWorkflow.run,
            run_id,
            id=f"bench-minimal-{run_id}-{i}",
            task_queue=run.queues.minimal,
        )

    # Warm-ups: the baselines' worker has started and imported its workflows before timing.
    await asyncio.gather(bare("warm-up"), minimal("warm-up"))
    started = time.monotonic()
    await asyncio.gather(*(bare(i) for i in range(n)))
    bare_tps = n / (time.monotonic() - started)
    say(f"{n} bare workflows of the same shape: {bare_tps:.2f}/s")
    started = time.monotonic()
    await asyncio.gather(*(minimal(i) for i in range(n)))
    minimal_tps = n / (time.monotonic() - started)
    say(
        f"{n} minimal lifecycles ({MINIMAL_ACTIVITIES} activities, 2 children): {minimal_tps:.2f}/s"
    )
    return {
        "n": n,
        "activities_per_lifecycle": shape.total_activities,
        "local_activities_per_lifecycle": shape.total_local_activities,
        "lifecycle_throughput_per_s": round(lifecycle_tps, 3),
        "bare_throughput_per_s": round(bare_tps, 3),
        "lifecycle_vs_bare_ratio": ratio(lifecycle_tps, bare_tps),
        "minimal_activities_per_lifecycle": MINIMAL_ACTIVITIES,
        "minimal_throughput_per_s": round(minimal_tps, 3),
        "lifecycle_vs_minimal_ratio": ratio(lifecycle_tps, minimal_tps),
    }


async def measure_model_engine(run: Run, rule_tps: float) -> dict[str, object]:
    """N auto-approved lifecycles at once through the model engine, one project each."""
    n, lifecycle, repo_dir = run.sizes.n, run.lifecycle, run.bench_dir
    shop = await seed_shop(
        run.sessions, repo_dir, name="Bench Model", human_approval=False, funds=PARKED_FUNDS
    )
    projects = await add_projects(
        run.sessions, shop, repo_dir, n + 1, change_engine=ChangeEngineKind.MODEL
    )
    warm = await submit_and_wait(lifecycle, shop, projects[0].id, MODEL_PROMPT)
    if warm.status is not PromptStatus.COMPLETED:
        raise RuntimeError(
            f"the model engine's warm-up lifecycle ended {warm.status}: {warm.reason}"
        )
    results, model_s = await completed_at_once(lifecycle, shop, projects[1:], MODEL_PROMPT)
    ids = [r.prompt_request_id for r in results]
    async with run.sessions() as session:
        calls = (
            await session.exec(
                select(func.count()).where(col(ModelCall.prompt_request_id).in_(ids))
            )
        ).one()
        # SUM over an integer column comes back as a Decimal (or None for no rows).
        charged = int(
            (
                await session.exec(
                    select(func.sum(col(PromptRequest.tokens_used))).where(
                        col(PromptRequest.id).in_(ids)
                    )
                )
            ).one()
            or 0
        )
    model_tps = n / model_s
    say(
        f"{n} auto-approved lifecycles by the model engine (local stand-in server, instant "
        f"answers): {model_s:.2f}s, {model_tps:.2f}/s, {calls / n:.1f} model calls and "
        f"{charged / n:.0f} tokens charged each"
    )
    return {
        "model_throughput_per_s": round(model_tps, 3),
        "model_calls_per_lifecycle": round(calls / n, 2),
        "model_tokens_charged_per_lifecycle": round(charged / n, 1),
        "model_vs_rule_ratio": ratio(model_tps, rule_tps),
    }


async def measure_approval_latency(run: Run) -> dict[str, object]:
    human = await seed_shop(run.sessions, run.bench_dir, name="Bench Human", human_approval=True)
    projects = await add_projects(run.sessions, human, run.bench_dir, run.sizes.human)
    latencies = await asyncio.gather(
        *(human_run(run.lifecycle, run.sessions, human, p.id) for p in projects)
    )
    p50, p95 = statistics.median(latencies), percentile(latencies, 95)
    bare = await bare_approval_to_staging(run, run.sizes.human)
    bare_p50 = statistics.median(bare)
    say(
        f"{run.sizes.human} human-approved: approval to staging start p50 {p50:.3f}s, "
        f"p95 {p95:.3f}s; bare workflows (baseline) p50 {bare_p50:.3f}s"
    )
    return {
        "human_runs": run.sizes.human,
        "approval_to_staging_start_p50_s": round(p50, 3),
        "approval_to_staging_start_p95_s": round(p95, 3),
        "bare_approval_to_staging_start_p50_s": round(bare_p50, 3),
        "approval_to_staging_vs_bare_p50_ratio": ratio(p50, bare_p50),
    }


def megabytes(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


async def settled_rss(worker: WorkerProcess) -> float | None:
    """The worker's resident memory after a moment without new work."""
    await asyncio.sleep(RSS_SETTLE_S)
    return worker.rss_mb()


async def measure_parked_and_drain(run: Run, server_log: Path | None) -> dict[str, object]:
    sizes, client, lifecycle = run.sizes, run.client, run.lifecycle
    shop = await seed_shop(
        run.sessions, run.bench_dir, name="Bench Parked", human_approval=True, funds=PARKED_FUNDS
    )
    extra = await add_projects(run.sessions, shop, run.bench_dir, sizes.projects - 1)
    project_ids = [shop.project.id, *(p.id for p in extra)]

    rss_before = await settled_rss(run.lifecycle_worker)
    log_start = log_offset(server_log)
    phase_start = datetime.now(UTC)
    started = time.monotonic()
    request_ids = await park(
        client,
        lifecycle,
        shop,
        project_ids,
        sizes.parked,
        timeout_s=PARK_TIMEOUT_S + sizes.parked,
    )
    park_s = time.monotonic() - started
    rss_parked = await settled_rss(run.lifecycle_worker)
    each_kb = (
        (rss_parked - rss_before) * 1024 / sizes.parked
        if rss_parked is not None and rss_before is not None
        else None
    )
    say(
        f"{sizes.parked} parked over {sizes.projects} projects in {park_s:.1f}s: worker "
        f"{megabytes(rss_before)} -> {megabytes(rss_parked)} MB"
    )

    bare = await bare_approve_burst(run, sizes.drain)
    say(
        f"{sizes.drain} bare workflows approved at once (baseline): approve p50 "
        f"{bare['bare_approve_p50_s']}s, p95 {bare['bare_approve_p95_s']}s"
    )
    hashes = await plan_hashes(run.sessions, request_ids)
    drained = request_ids[: sizes.drain]
    await reject_all(lifecycle, shop, {r: hashes[r] for r in request_ids[sizes.drain :]})
    figures = await drain(
        lifecycle, shop, {r: hashes[r] for r in drained}, timeout_s=sizes.drain_timeout
    )
    say(
        f"{sizes.drain} approved at once: {figures.completed} completed in "
        f"{figures.elapsed_s:.1f}s ({figures.per_s:.2f}/s)"
        + (" (ran out of time)" if figures.timed_out else "")
    )
    terminated = 0
    if figures.timed_out:
        terminated = await end_what_still_runs(
            client, [prompt_request_workflow_id(r) for r in drained]
        )
    histories = await phase_histories(client, drained, phase_start)
    if figures.timed_out:
        await end_what_still_runs(client, histories.deployment_ids + histories.lane_ids)
    rss_after = await settled_rss(run.lifecycle_worker)
    log_errors = server_log_limit_errors(server_log, log_start)
    limit_errors = (
        (log_errors or 0) + figures.approve_limit_refusals + histories.activity_limit_retries
    )
    say(
        f"   {histories.workflow_tasks / sizes.drain:.1f} workflow tasks per lifecycle over "
        f"{histories.workflows} workflows ({histories.lane_runs} lane runs); "
        f"{limit_errors} limit refusals; worker after close {megabytes(rss_after)} MB"
    )
    approve_p50 = statistics.median(figures.approve_s) if figures.approve_s else None
    return {
        **bare,
        "approve_vs_bare_p50_ratio": ratio(approve_p50, bare["bare_approve_p50_s"])
        if approve_p50
        else None,
        "parked": sizes.parked,
        "parked_projects": sizes.projects,
        "park_s": round(park_s, 1),
        "rss_before_mb": megabytes(rss_before),
        "parked_worker_rss_mb": megabytes(rss_parked),
        "parked_worker_kb_each": None if each_kb is None else round(each_kb, 1),
        "rss_after_close_mb": megabytes(rss_after),
        "drain": sizes.drain,
        "drain_completed": figures.completed,
        "drain_not_completed": figures.not_completed,
        "drain_timed_out": figures.timed_out,
        "drain_terminated": terminated,
        "drain_s": round(figures.elapsed_s, 1),
        "queued_drain_per_s": round(figures.per_s, 3),
        "approve_p50_s": round(statistics.median(figures.approve_s), 3)
        if figures.approve_s
        else None,
        "approve_p95_s": round(percentile(figures.approve_s, 95), 3) if figures.approve_s else None,
        "drain_approval_to_completion_p50_s": round(
            statistics.median(figures.approval_to_completion_s), 1
        )
        if figures.approval_to_completion_s
        else None,
        "workflow_tasks_per_lifecycle": round(histories.workflow_tasks / sizes.drain, 1),
        "workflow_tasks_per_completed_lifecycle": round(
            statistics.mean(histories.tasks_by_request[r] for r in figures.completed_ids), 1
        )
        if figures.completed_ids
        else None,
        "lane_workflow_tasks": histories.lane_workflow_tasks,
        "drain_workflows": histories.workflows,
        "drain_lane_runs": histories.lane_runs,
        "workflow_task_timeouts": histories.workflow_task_timeouts,
        "activity_retries": histories.activity_retries,
        "server_log_limit_errors": log_errors,
        "approve_limit_refusals": figures.approve_limit_refusals,
        "approve_other_errors": figures.approve_other_errors,
        "activity_limit_retries": histories.activity_limit_retries,
        "server_limit_errors": limit_errors,
    }


async def parked_on_update(handle: Any) -> bool:
    """Its first workflow task completed (started, scheduled, started, completed: 4 events)."""
    description = await handle.describe()
    return description.raw_description.workflow_execution_info.history_length >= 4


async def park_bare(run: Run, count: int) -> list[Any]:
    """`count` bare workflows started on the baselines' worker, each parked on its update."""
    client = run.client
    ids = [f"bench-bare-parked-{uuid.uuid4().hex[:12]}" for _ in range(count)]
    handles = await bounded(
        SUBMIT_CONCURRENCY,
        [
            functools.partial(
                client.start_workflow,
                BareParkedWorkflow.run,
                i,
                id=i,
                task_queue=run.queues.bare,
            )
            for i in ids
        ],
    )
    for handle in handles:
        while True:
            if await parked_on_update(handle):
                break
            await asyncio.sleep(0.05)
    return handles


async def approve_bare(handle: Any) -> float:
    """Send the update (retried as the drain's approvals are); the wall clock when sent."""
    sent = time.time()
    while True:
        try:
            # One update id per workflow: a retried update is the same update.
            await handle.execute_update(BareParkedWorkflow.approve, "bench", id="approve")
            return sent
        except (RPCError, WorkflowUpdateRPCTimeoutOrCancelledError):
            # The server gave up waiting for the worker, as it may for the drain's approvals.
            await asyncio.sleep(APPROVE_RETRY_DELAY_S)


async def bare_approve_burst(run: Run, count: int) -> dict[str, float]:
    """The approve burst's floor on this machine: `count` bare workflows parked on an update
    whose handler does nothing, served by the baselines' worker with the lifecycle worker's
    limits, all approved at once as the drain approves its lifecycles."""
    handles = await park_bare(run, count)

    async def round_trip(handle: Any) -> float:
        sent = await approve_bare(handle)
        return time.time() - sent

    seconds = await asyncio.gather(*(round_trip(h) for h in handles))
    await asyncio.gather(*(h.result() for h in handles))
    return {
        "bare_approve_p50_s": round(statistics.median(seconds), 3),
        "bare_approve_p95_s": round(percentile(seconds, 95), 3),
    }


async def bare_approval_to_staging(run: Run, count: int) -> list[float]:
    """The floor of approval to staging start: approved bare workflows run one activity, then
    a child whose first local activity reads the clock."""
    handles = await park_bare(run, count)

    async def latency(handle: Any) -> float:
        sent = await approve_bare(handle)
        started: float = await handle.result()
        return started - sent

    return list(await asyncio.gather(*(latency(h) for h in handles)))


def main() -> None:
    os.environ.setdefault("CHANGEFLOW_LOG_LEVEL", "WARNING")
    # pgserver asks platformdirs for a runtime folder; its fallback is fine and not news.
    run_entry_point(bench, prog="bench-lifecycle")


if __name__ == "__main__":
    main()
