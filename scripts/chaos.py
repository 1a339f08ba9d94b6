"""`make chaos`: lifecycles under faults, then an audit of what they left behind.

On the embedded stack, in a data folder and on ports of its own (not `make dev`'s), three
worker processes (`python -m workers`, scripts/bench_processes.py) serve N lifecycles of a few
tenants and projects at once, mixed: auto-approved, approved by a person, failing production's
check and rolled back, cancelled (at a random moment, or while staging or production verifies),
rejected. Meanwhile, every few seconds one of the workers is SIGKILLed and started again, the
Temporal dev server is restarted once (its SQLite state file kept) and PostgreSQL twice (fast
shutdown of pgserver's server, then a start on the same folder): once briefly, once for 40 s
while checks run (the projects of tenant 1 and of the verify-time cancels have slow checks).
The first worker is never killed: it is the witness that a worker rides out both outages
without dying, flooding its log or needing a restart. This process's own client calls retry
through the outages.

Every choice (which lifecycle is which kind, on which tenant and project, when a cancel comes,
which worker dies when, when each server restarts) comes from random.Random(seed): a seed
replays the same run, up to the machine's timing.

When every lifecycle has ended, the audit (scripts/chaos_audit.py) checks the outcomes against
the database, the ledger and the repositories. Violations are printed one a line; the last line
is one JSON object (lifecycles, kills, restarts, violations, seconds, seed, and a few more
figures); the exit code is 1 when there is any violation (a run past its deadline is one).

With --remote, every project's repository is a git remote served over smart HTTP by git's own
`git http-backend` in this process (scripts/git_http_server.py), and each worker is a host of
its own: its own repository cache (bare mirrors) and workspace, nothing shared on disk. The
audit then reads each remote's refs (a `git clone --mirror` of it), not a worker's copy.

Options (or environment variables): --lifecycles N (CHAOS_LIFECYCLES, 60), --seed S
(CHAOS_SEED, 1), --deadline S (CHAOS_DEADLINE_S, 840), --kills K (CHAOS_KILLS: at most K kills,
default unbounded), --kill-every S (CHAOS_KILL_EVERY_S, 4), --no-restarts, --remote
(CHAOS_REMOTE=1). The data folder is
CHANGEFLOW_DATA_DIR when set (else .changeflow/chaos, emptied first), the dev server's ports
CHANGEFLOW_DEV_TEMPORAL_PORT / CHANGEFLOW_DEV_UI_PORT when set (else free ones).
"""

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlmodel import col, select
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import (
    Client,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from client.connection import connect
from client.lifecycle import LifecycleClient, LifecycleRefused
from infra.decision_signer import development_signer
from infra.entry_points import run_entry_point
from infra.settings import Settings, env_name
from models import DeploymentStatus, Project, PromptStatus
from models.db import SessionFactory, create_engine, session_factory
from models.transitions import is_terminal
from scripts.bench_lifecycle import add_projects
from scripts.bench_processes import WorkerProcess, worker_env
from scripts.bench_remote import publish
from scripts.chaos_audit import Expected, audit
from scripts.demo import DemoShop, seed_shop
from scripts.git_http_server import GitHttpServer, git_http_server
from scripts.ports import free_port
from scripts.sample_repo import FAILS_IN_PRODUCTION_PROMPT, SAMPLE_CHECK_COMMAND
from workers.devstack import EmbeddedStack, embedded_stack
from workflows.contracts.errors import ErrorType
from workflows.contracts.ids import prompt_request_workflow_id
from workflows.contracts.lifecycle import PromptRequestResult, PromptRequestStatus
from workflows.contracts.search_attributes import PROMPT_STATUS

DEFAULT_LIFECYCLES = 60
DEFAULT_SEED = 1
DEFAULT_DEADLINE_S = 840.0  # under the 15 minutes the run is allowed, audit included
DEFAULT_KILL_EVERY_S = 4.0
WORKERS = 3
FUNDS = 1_000_000_000  # no lifecycle of the run is refused for want of tokens
TEMPORAL_DOWN_S = 3.0
POSTGRES_DOWN_S = 5.0
# A managed database's failover: releases and checks in flight must ride it out.
POSTGRES_FAILOVER_S = 40.0
# Outages come while lifecycles are in flight: seconds after the first submission.
TEMPORAL_RESTART_WINDOW = (3.0, 8.0)
POSTGRES_RESTART_WINDOW = (10.0, 18.0)
POSTGRES_FAILOVER_WINDOW = (30.0, 40.0)
# Checks that take this long (on top of the sample check), so outages and cancels find them.
SLOW_CHECK_S = 3
SLOW_TENANT = 1
# How long one client call may wait (a query no worker answers, a server that is down).
CALL_TIMEOUT_S = 15.0
POLL_S = 0.5
# A killed worker's workflows move to another worker after this long (the default is 30 s).
STICKY_TIMEOUT_S = 5.0
# Lines a witness worker may log for one outage before it counts as a flood.
OUTAGE_LOG_LINES_ALLOWED = 20
OUTAGE_LOG_SETTLE_S = 5.0

# cancel_staging / cancel_production: cancelled once the status shows that environment verifying.
KINDS = ("auto", "human", "rollback", "cancel", "reject", "cancel_staging", "cancel_production")
KIND_WEIGHTS = (30, 25, 15, 15, 15, 8, 8)
VERIFY_CANCELS = {"cancel_staging": "staging", "cancel_production": "production"}
# The two kinds of change a shared project takes, on config.json lines far enough apart that
# two lifecycles of one project at once rebase onto each other without a conflict.
CHAINS = ("store_name", "free_shipping_threshold")
PROJECTS_PER_TENANT = 2

T = TypeVar("T")


@dataclass(frozen=True)
class Options:
    lifecycles: int = DEFAULT_LIFECYCLES
    seed: int = DEFAULT_SEED
    deadline_s: float = DEFAULT_DEADLINE_S
    kills: int | None = None
    kill_every_s: float = DEFAULT_KILL_EVERY_S
    restarts: bool = True
    remote: bool = False  # projects on smart HTTP remotes, workers on hosts of their own


def parse_options(argv: list[str], env: dict[str, str]) -> Options:
    """An option given wins, then its environment variable, then the default."""
    parser = argparse.ArgumentParser(prog="chaos", description="lifecycles under faults")
    parser.add_argument("--lifecycles", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--deadline", type=float, dest="deadline_s")
    parser.add_argument("--kills", type=int)
    parser.add_argument("--kill-every", type=float, dest="kill_every_s")
    parser.add_argument("--no-restarts", action="store_true")
    parser.add_argument("--remote", action="store_true")
    args = parser.parse_args(argv)
    variables = {
        "lifecycles": ("CHAOS_LIFECYCLES", int),
        "seed": ("CHAOS_SEED", int),
        "deadline_s": ("CHAOS_DEADLINE_S", float),
        "kills": ("CHAOS_KILLS", int),
        "kill_every_s": ("CHAOS_KILL_EVERY_S", float),
    }
    chosen: dict[str, object] = {}
    for name, (variable, kind) in variables.items():
        value = getattr(args, name)
        if value is None and env.get(variable):
            try:
                value = kind(env[variable])
            except ValueError:
                raise SystemExit(f"{variable} must be a number, not {env[variable]!r}") from None
        if value is not None:
            chosen[name] = value
    remote = args.remote or env.get("CHAOS_REMOTE", "") not in ("", "0")
    options = Options(restarts=not args.no_restarts, remote=remote, **chosen)  # type: ignore[arg-type]
    if options.lifecycles < 1:
        raise SystemExit("--lifecycles must be at least 1")
    if options.deadline_s <= 0 or options.kill_every_s <= 0:
        raise SystemExit("--deadline and --kill-every must be positive")
    if options.kills is not None and options.kills < 0:
        raise SystemExit("--kills cannot be negative")
    return options


# --- the plan of the run: every random choice, made up front ------------------------------


@dataclass(frozen=True)
class Planned:
    """One lifecycle of the run, as the seed chose it."""

    index: int
    kind: str
    tenant: int  # index into the run's shops: auto-approving ones first, then human ones
    project: int | None  # index into the tenant's shared projects; None: a project of its own
    chain: str | None
    cancel_after_s: float = 0.0  # an auto-approved cancel: seconds after submission

    @property
    def human(self) -> bool:
        return self.kind in ("human", "reject") or (self.kind == "cancel" and self.tenant >= 2)

    def prompt(self) -> str:
        if self.kind == "rollback":
            return FAILS_IN_PRODUCTION_PROMPT
        if self.chain == "store_name":
            return f"set store_name to Chaos Shop {self.index}"
        return f"set free_shipping_threshold to {100 + self.index}"


@dataclass(frozen=True)
class Fault:
    at_s: float  # after the first submission
    what: str  # "kill", "temporal", "postgres" or "failover" (PostgreSQL down for 40 s)
    worker: int | None = None


def plan_run(options: Options) -> tuple[list[Planned], list[Fault]]:
    rng = random.Random(options.seed)
    # Every kind at least once when there is room, then as the weights say; shuffled.
    kinds = list(KINDS[: options.lifecycles])
    kinds += rng.choices(KINDS, KIND_WEIGHTS, k=options.lifecycles - len(kinds))
    rng.shuffle(kinds)
    planned = []
    for index, kind in enumerate(kinds):
        # Tenants 0-1 approve automatically, 2-3 need a person.
        if kind in ("human", "reject"):
            tenant = rng.choice((2, 3))
        elif kind in ("auto", "rollback", *VERIFY_CANCELS):
            tenant = rng.choice((0, 1))
        else:
            tenant = rng.choice((0, 1, 2, 3))
        # A failing change stays on its project's default branch: it gets a project alone; so
        # does a verify-time cancel (its project's check is slow).
        alone = kind == "rollback" or kind in VERIFY_CANCELS
        project = None if alone else rng.randrange(PROJECTS_PER_TENANT)
        chain = None if alone else rng.choice(CHAINS)
        cancel_after = round(rng.uniform(0.5, 8.0), 2) if kind == "cancel" else 0.0
        planned.append(Planned(index, kind, tenant, project, chain, cancel_after))
    faults = []
    if options.restarts:
        faults.append(Fault(round(rng.uniform(*TEMPORAL_RESTART_WINDOW), 2), "temporal"))
        faults.append(Fault(round(rng.uniform(*POSTGRES_RESTART_WINDOW), 2), "postgres"))
        faults.append(Fault(round(rng.uniform(*POSTGRES_FAILOVER_WINDOW), 2), "failover"))
    at = 0.0
    kills = options.kills if options.kills is not None else int(options.deadline_s)
    for _ in range(kills):
        at += round(rng.uniform(0.5, 1.5) * options.kill_every_s, 2)
        # Worker 0 is the witness: never killed.
        faults.append(Fault(at, "kill", rng.randrange(1, WORKERS)))
    faults.sort(key=lambda f: f.at_s)
    return planned, faults


# --- outages the driver rides out ---------------------------------------------------------


class Deadline(Exception):
    """The run's time is up."""


@dataclass
class Clock:
    deadline: float  # time.monotonic()

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise Deadline()


async def retrying(clock: Clock, call: Callable[[], Awaitable[T]]) -> T:
    """`call` until it answers: a server that is down, restarting or without a worker to ask
    is waited out (until the run's deadline). Refusals are answers, not outages."""
    delay = POLL_S
    while True:
        clock.check()
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                return await call()
        except (
            RPCError,
            TimeoutError,
            OSError,
            RuntimeError,
            WorkflowQueryFailedError,
            WorkflowUpdateRPCTimeoutOrCancelledError,
        ):
            # RuntimeError: the SDK's "query failed" and connection errors; the rest of what
            # the SDK raises for an unreachable server or a query nobody answered.
            await asyncio.sleep(delay)
            delay = min(delay * 2, 3.0)


# --- driving one lifecycle ----------------------------------------------------------------


@dataclass
class Driven:
    planned: Planned
    request_id: uuid.UUID
    tenant_id: uuid.UUID
    project_id: uuid.UUID
    result: PromptRequestResult | None = None
    decided: list[str] = field(default_factory=list)  # what the driver did: approve, reject...


async def server_status(client: Client, request_id: uuid.UUID) -> PromptStatus | None:
    """The PromptStatus search attribute: the server answers it without a worker."""
    description = await client.get_workflow_handle(
        prompt_request_workflow_id(request_id)
    ).describe()
    value = description.typed_search_attributes.get(PROMPT_STATUS)
    return PromptStatus(value) if value else None


async def drive(
    clock: Clock, client: Client, lifecycle: LifecycleClient, shop: DemoShop, run: Driven
) -> None:
    planned = run.planned

    async def submit() -> None:
        try:
            await lifecycle.submit(
                tenant_id=run.tenant_id,
                project_id=run.project_id,
                user_id=shop.requester.id,
                prompt=planned.prompt(),
                prompt_request_id=run.request_id,
            )
        except WorkflowAlreadyStartedError:
            pass  # an earlier attempt got through before the outage cut its answer

    await retrying(clock, submit)
    submitted = time.monotonic()
    approved: set[str] = set()
    if planned.kind in VERIFY_CANCELS:
        await cancel_while_verifying(clock, lifecycle, shop, run, VERIFY_CANCELS[planned.kind])
        run.result = await retrying(clock, lambda: lifecycle.wait_for_outcome(run.request_id))
        return
    while True:
        status = await retrying(clock, lambda: server_status(client, run.request_id))
        if status is not None and is_terminal(status):
            break
        if planned.kind == "cancel" and (
            status is PromptStatus.AWAITING_APPROVAL
            or time.monotonic() - submitted >= planned.cancel_after_s
        ):
            await send_cancel(clock, lifecycle, shop, run)
            break
        if status is PromptStatus.AWAITING_APPROVAL:
            detail = await retrying(clock, lambda: lifecycle.status(run.request_id))
            plan = detail.plan
            if detail.status is PromptStatus.AWAITING_APPROVAL and plan is not None:
                if plan.content_hash not in approved:
                    approved.add(plan.content_hash)
                    await decide(clock, lifecycle, shop, run, detail)
        await asyncio.sleep(POLL_S)
    run.result = await retrying(clock, lambda: lifecycle.wait_for_outcome(run.request_id))


async def send_cancel(
    clock: Clock, lifecycle: LifecycleClient, shop: DemoShop, run: Driven
) -> None:
    """Cancel; a refusal (too late: production verified it, or it ended) is an answer."""

    async def send() -> None:
        try:
            await lifecycle.cancel(run.request_id, reason="chaos", user_id=shop.requester.id)
            run.decided.append("cancel")
        except LifecycleRefused as refusal:
            if refusal.error_type not in (ErrorType.CANCEL_TOO_LATE, ErrorType.REQUEST_CLOSED):
                raise
            run.decided.append(f"cancel refused: {refusal.error_type}")

    await retrying(clock, send)


async def cancel_while_verifying(
    clock: Clock, lifecycle: LifecycleClient, shop: DemoShop, run: Driven, environment: str
) -> None:
    """Cancel once the status query shows a deployment of `environment` verifying (or when
    the request ended without one: nothing to cancel then)."""
    while True:
        detail = await retrying(clock, lambda: lifecycle.status(run.request_id))
        if is_terminal(detail.status):
            return
        if any(
            d.environment.value == environment and d.status is DeploymentStatus.VERIFYING
            for d in detail.deployments
        ):
            await send_cancel(clock, lifecycle, shop, run)
            return
        await asyncio.sleep(POLL_S / 5)


async def decide(
    clock: Clock,
    lifecycle: LifecycleClient,
    shop: DemoShop,
    run: Driven,
    detail: PromptRequestStatus,
) -> None:
    """Approve the plan (a rebased plan of an auto-approved tenant needs a person too), or
    reject it. A decision that arrives after the request moved on is refused: that is fine."""
    assert detail.plan is not None
    content_hash = detail.plan.content_hash
    reject = run.planned.kind == "reject"

    async def send() -> None:
        try:
            if reject:
                await lifecycle.reject(
                    run.request_id,
                    user_id=shop.approver.id,
                    content_hash=content_hash,
                    reason="chaos says no",
                )
            else:
                await lifecycle.approve(
                    run.request_id, user_id=shop.approver.id, content_hash=content_hash
                )
        except LifecycleRefused as refusal:
            # A retried decision the first attempt already recorded, or a request that ended.
            if refusal.error_type not in (
                ErrorType.REQUEST_CLOSED,
                ErrorType.NOT_AWAITING_APPROVAL,
                ErrorType.ALREADY_APPROVED,
                ErrorType.STALE_PLAN_HASH,
            ):
                raise
        except WorkflowUpdateFailedError:
            pass  # the update was cut by a restart; the next poll sees where it stands

    await retrying(clock, send)
    run.decided.append("reject" if reject else "approve")


def chains(runs: list[Driven]) -> list[list[Driven]]:
    """The lifecycles that run one after another: those editing one line of one project (two
    at once would conflict, a FAILED end that is no fault's doing). Each chain of a project
    edits a line of its own, so a project still has two lifecycles at once, whose deployments
    queue in its lanes and rebase onto each other."""
    grouped: dict[object, list[Driven]] = {}
    for run in runs:
        p = run.planned
        key = (p.tenant, p.project, p.chain) if p.project is not None else run.request_id
        grouped.setdefault(key, []).append(run)
    return list(grouped.values())


async def drive_chain(
    clock: Clock,
    client: Client,
    lifecycle: LifecycleClient,
    shops: list[tuple[DemoShop, list[Any]]],
    chain: list[Driven],
) -> None:
    for run in chain:
        await drive(clock, client, lifecycle, shops[run.planned.tenant][0], run)


# --- the faults ---------------------------------------------------------------------------


@dataclass
class Workers:
    env: dict[str, str]
    folder: Path
    processes: list[WorkerProcess] = field(default_factory=list)
    started: int = 0
    # Each worker a host of its own: its own repository cache and workspace (a restarted worker
    # is the same host again).
    hosts: bool = False

    def host(self, index: int) -> Path:
        return self.folder / f"host-{index}"

    def workspaces(self, shared: Path) -> list[Path]:
        if not self.hosts:
            return [shared]
        return [self.host(index) / "workspace" for index in range(WORKERS)]

    def start(self, index: int) -> WorkerProcess:
        self.started += 1
        env = self.env
        if self.hosts:
            env = env | {
                env_name("repository_cache_dir"): str(self.host(index) / "repositories"),
                env_name("workspace_dir"): str(self.host(index) / "workspace"),
            }
        process = WorkerProcess(
            f"worker-{index}", ["-m", "workers"], env, self.folder / f"worker-{index}.log"
        )
        if index < len(self.processes):
            self.processes[index] = process
        else:
            self.processes.append(process)
        return process

    def exited(self) -> list[str]:
        return [
            f"worker_exited: {p.name} (pid {p.pid}) exited with {p.process.returncode}"
            for p in self.processes
            if p.process.poll() is not None
        ]


@dataclass
class Figures:
    kills: int = 0
    restarts: int = 0
    outage_log_lines: list[int] = field(default_factory=list)


async def polling(client: Client, task_queue: str, pids: list[int]) -> bool:
    """Whether a worker process of each pid polls the queue (its identity is pid@host)."""
    answer = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
    )
    seen = {poller.identity.split("@", 1)[0] for poller in answer.pollers}
    return all(str(pid) in seen for pid in pids)


async def until_polling(clock: Clock, client: Client, task_queue: str, pids: list[int]) -> None:
    """Wait until these worker processes serve: started, imported, connected."""
    while True:
        if await retrying(clock, lambda: polling(client, task_queue, pids)):
            return
        await asyncio.sleep(POLL_S)


def log_lines(path: Path) -> int:
    try:
        with path.open("rb") as log:
            return sum(1 for _ in log)
    except OSError:
        return 0


async def inflict(
    faults: list[Fault],
    stack: EmbeddedStack,
    workers: Workers,
    figures: Figures,
    started: float,
    clock: Clock,
    client: Client,
) -> None:
    """The faults at their times, one after another: no kill while a server is down (a fresh
    worker cannot start without its servers; the witness shows that running ones ride it out)."""
    witness_log = workers.processes[0].log
    for fault in faults:
        await asyncio.sleep(max(0.0, started + fault.at_s - time.monotonic()))
        if fault.what == "kill":
            assert fault.worker is not None
            victim = workers.processes[fault.worker]
            victim.process.send_signal(signal.SIGKILL)
            await asyncio.to_thread(victim.process.wait)
            revived = workers.start(fault.worker)
            figures.kills += 1
            say(f"[{time.monotonic() - started:6.1f}s] SIGKILL {victim.name} (pid {victim.pid})")
            # Serving again before the next fault: a fault at a process still starting up
            # would test the start, not the ride through an outage.
            await until_polling(clock, client, stack.settings.task_queue, [revived.pid])
            continue
        before = log_lines(witness_log)
        say(f"[{time.monotonic() - started:6.1f}s] restarting {fault.what}")
        if fault.what == "temporal":
            await stack.restart_temporal(TEMPORAL_DOWN_S)
        elif fault.what == "failover":
            await stack.restart_postgres(POSTGRES_FAILOVER_S)
        else:
            await stack.restart_postgres(POSTGRES_DOWN_S)
        figures.restarts += 1
        await asyncio.sleep(OUTAGE_LOG_SETTLE_S)
        figures.outage_log_lines.append(log_lines(witness_log) - before)
        say(f"[{time.monotonic() - started:6.1f}s] {fault.what} is back")


# --- the run ------------------------------------------------------------------------------


def chaos_settings(settings: Settings, env: dict[str, str]) -> Settings:
    """Its own servers (it restarts them), data folder and ports, unless the environment names
    a data folder or ports."""
    update: dict[str, object] = {"database_url": None, "temporal_address": None}
    if env_name("data_dir") not in env:
        data_dir = Path(".changeflow") / "chaos"
        shutil.rmtree(data_dir, ignore_errors=True)  # each run from nothing: its own folder
        update["data_dir"] = data_dir
    if env_name("dev_temporal_port") not in env:
        update["dev_temporal_port"] = free_port()
    if env_name("dev_ui_port") not in env:
        update["dev_ui_port"] = free_port()
    if env_name("codec_server_port") not in env:
        update["codec_server_port"] = free_port()
    return settings.model_copy(update=update)


async def make_shops(sessions: SessionFactory, repos: Path) -> list[tuple[DemoShop, list]]:
    """Two auto-approving tenants and two whose plans a person approves, each with its shared
    projects."""
    shops = []
    for index in range(4):
        shop = await seed_shop(
            sessions,
            repos,
            name=f"Chaos {index}",
            human_approval=index >= 2,
            funds=FUNDS,
        )
        extra = await add_projects(sessions, shop, repos, PROJECTS_PER_TENANT - 1)
        shops.append((shop, [shop.project, *extra]))
    return shops


async def chaos(settings: Settings) -> int:
    options = parse_options(sys.argv[1:], dict(os.environ))
    planned, faults = plan_run(options)
    settings = chaos_settings(settings, dict(os.environ))
    began = time.monotonic()
    clock = Clock(began + options.deadline_s)
    figures = Figures()
    violations: list[str] = []
    async with embedded_stack(settings) as stack:
        settings = stack.settings
        client = await connect(settings)
        engine = create_engine(stack.database_url, pool_size=5)
        sessions = session_factory(engine)
        folder = settings.data_dir.resolve() / "run"
        remotes = contextlib.ExitStack()
        if options.remote:
            server = remotes.enter_context(git_http_server(folder / "remotes"))
        shops = await make_shops(sessions, folder / "repos")
        await slow_checks(sessions, shops[SLOW_TENANT][1])
        runs = []
        for p in planned:
            shop, projects = shops[p.tenant]
            if p.project is None:
                (project,) = await add_projects(sessions, shop, folder / "repos", 1)
                if p.kind in VERIFY_CANCELS:
                    await slow_checks(sessions, [project])
            else:
                project = projects[p.project]
            runs.append(Driven(p, uuid.uuid4(), shop.tenant.id, project.id))
        if options.remote:
            await serve_remotely(sessions, [shop.tenant.id for shop, _ in shops], server)
        env = worker_env(settings)
        env[env_name("graceful_shutdown_seconds")] = "2"
        env[env_name("sticky_timeout_seconds")] = str(STICKY_TIMEOUT_S)
        # A restarted worker may start while a server is down: it waits instead of exiting
        # (with no supervisor here to start it again).
        env[env_name("startup_wait_seconds")] = "120"
        workers = Workers(env, folder, hosts=options.remote)
        try:
            for index in range(WORKERS):
                workers.start(index)
            witness = workers.processes[0]
            await until_polling(
                clock, client, settings.task_queue, [p.pid for p in workers.processes]
            )
            lifecycle = LifecycleClient(
                client,
                task_queue=settings.task_queue,
                deploy_task_queue=settings.deploy_task_queue,
                # Decisions are signed by the development signer its workers trust.
                signer=development_signer(settings),
            )
            mix = ", ".join(f"{k} {count(runs, k)}" for k in KINDS)
            say(
                f"chaos: {len(runs)} lifecycles ({mix}), {WORKERS} workers, seed {options.seed}"
                f", data {settings.data_dir}"
            )
            started = time.monotonic()
            inflicting = (stack, workers, figures, started, clock, client)
            driving = asyncio.gather(
                *(drive_chain(clock, client, lifecycle, shops, chain) for chain in chains(runs))
            )
            # Kills and restarts each on their own clock: a worker restarted by a kill may start
            # while a server is down (it waits for it, CHANGEFLOW_STARTUP_WAIT_SECONDS).
            killing = asyncio.create_task(
                inflict([f for f in faults if f.what == "kill"], *inflicting)
            )
            restarting = asyncio.create_task(
                inflict([f for f in faults if f.what != "kill"], *inflicting)
            )
            try:
                await driving
            except Deadline:
                violations.append(
                    f"timeout: {sum(r.result is None for r in runs)} lifecycles had not ended "
                    f"after {options.deadline_s:.0f} s"
                )
                driving.cancel()
            finally:
                killing.cancel()
            # Both restarts happen in every run, even one whose lifecycles all ended first.
            for task in (killing, restarting):
                try:
                    async with asyncio.timeout(max(1.0, clock.deadline - time.monotonic())):
                        await task
                except asyncio.CancelledError:
                    pass
                except Exception as exc:
                    restarting.cancel()
                    violations.append(f"fault: {type(exc).__name__}: {exc}")
            say(f"[{time.monotonic() - started:6.1f}s] every lifecycle ended; auditing")
            violations += workers.exited()
            if workers.processes[0] is not witness or witness.process.poll() is not None:
                violations.append(f"witness: worker-0 (pid {witness.pid}) did not survive the run")
            for lines in figures.outage_log_lines:
                if lines > OUTAGE_LOG_LINES_ALLOWED:
                    violations.append(f"log_flood: the witness logged {lines} lines in one outage")
            if not any(v.startswith("timeout") for v in violations):
                violations += await retrying(
                    clock,
                    lambda: audit(
                        sessions,
                        [
                            Expected(r.request_id, r.planned.kind, r.result, r.tenant_id)
                            for r in runs
                            if r.result is not None
                        ],
                        workspaces=workers.workspaces(settings.resolved_workspace_dir),
                    ),
                )
        finally:
            # Stopped whatever happened: no worker outlives the run.
            await asyncio.gather(*(asyncio.to_thread(p.stop) for p in workers.processes))
            remotes.close()
        await engine.dispose()
    for violation in violations:
        print(f"VIOLATION {violation}", flush=True)
    outcomes: dict[str, int] = {}
    for r in runs:
        key = f"{r.planned.kind}:{r.result.status.value if r.result else 'unfinished'}"
        outcomes[key] = outcomes.get(key, 0) + 1
    summary = {
        "lifecycles": len(runs),
        "kills": figures.kills,
        "restarts": figures.restarts,
        "violations": len(violations),
        "seconds": round(time.monotonic() - began, 1),
        "seed": options.seed,
        "remote": options.remote,
        "worker_starts": workers.started,
        "witness_log_lines_per_outage": figures.outage_log_lines,
        "outcomes": dict(sorted(outcomes.items())),
    }
    print(json.dumps(summary), flush=True)
    return 1 if violations else 0


async def serve_remotely(
    sessions: SessionFactory, tenants: list[uuid.UUID], server: GitHttpServer
) -> None:
    """Every project of the run's tenants moves to a remote of `server`: its repository pushed
    there, its repo_url the remote's smart HTTP URL (the local copy is no longer used)."""
    async with sessions() as session:
        query = select(Project).where(col(Project.tenant_id).in_(tenants))
        for project in (await session.exec(query)).all():
            source = Path(project.repo_url)
            project.repo_url = await asyncio.to_thread(publish, server, source, project.slug)
            session.add(project)
        await session.commit()


async def slow_checks(sessions: SessionFactory, projects: list[Any]) -> None:
    """These projects' checks sleep first: long enough to be cancelled or cut off mid-check."""
    async with sessions() as session:
        for project in projects:
            row = await session.get(Project, project.id)
            assert row is not None
            row.check_command = f"sleep {SLOW_CHECK_S}; {SAMPLE_CHECK_COMMAND}"
        await session.commit()


def count(runs: list[Driven], kind: str) -> int:
    return sum(r.planned.kind == kind for r in runs)


def say(text: str) -> None:
    print(text, flush=True)


def main() -> None:
    # This process's client retries through the outages on purpose: the SDK's warnings about
    # each retried call would bury the run's own lines (the workers log at WARNING).
    os.environ.setdefault("CHANGEFLOW_LOG_LEVEL", "ERROR")
    run_entry_point(chaos, prog="chaos")


if __name__ == "__main__":
    main()
