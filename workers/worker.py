"""The worker process: connect with the settings, register everything the registry has, serve
both task queues until told to stop, then stop gracefully.

On SIGTERM/SIGINT the workers stop polling, in-flight activities get
CHANGEFLOW_GRACEFUL_SHUTDOWN_SECONDS to finish, and whatever is still running after that is
cancelled and handed back to Temporal, which retries it on another worker.
"""

import asyncio
import contextlib
import signal
from collections.abc import Sequence
from datetime import timedelta
from typing import ClassVar

import structlog
from sqlalchemy.exc import SQLAlchemyError
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import PollerBehaviorAutoscaling, Worker, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions
from temporalio.workflow import _Definition

from client.connection import connect, runtime_for
from infra.codec import payload_key_ring
from infra.settings import ConfigurationError, Settings
from infra.tracing import flush_traces
from models.db import create_engine, session_factory
from workers import registry
from workers.devstack import EmbeddedStack, embedded_stack, until_reachable
from workers.interceptors import worker_interceptors
from workers.metrics import ProductMetricsInterceptor, sample_until_stopped
from workers.outages import database_probe, temporal_probe, watch_outages
from workers.registry import Dependencies
from workers.schedules import (
    ensure_plan_grant_schedule,
    ensure_sweep_schedule,
    reconcile_commerce_schedules,
)
from workers.versioning import deployment_config
from workflows.contracts.ids import LEDGER_SWEEP_SCHEDULE_ID, PLAN_GRANT_SCHEDULE_ID

log = structlog.get_logger(__name__)

# What the workflow sandbox takes from the host (besides the standard library and Temporal)
# instead of importing again for each workflow run: the modules workflows import that are
# deterministic, have no side effect at import that a run could observe, and hold no state a
# run changes (contracts and rules are pydantic models, functions and constants; models and
# activities are only named by workflows, never run in them). The workflow modules themselves
# are imported afresh for each run, so that their globals and imports stay sandboxed.
SANDBOX_PASSTHROUGH = (
    "activities",
    "models",
    "workflows.contracts",
    "workflows.lifecycle_patches",
    "workflows.lifecycle_rules",
)
SANDBOX_RESTRICTIONS = SandboxRestrictions.default.with_passthrough_modules(*SANDBOX_PASSTHROUGH)


class _SandboxedRunner(SandboxedWorkflowRunner):
    """The sandbox, checking each workflow class once per process. A Worker checks every class
    it registers by running it in a fresh sandbox; the check is the same each time (the same
    class, the same restrictions), and a process that makes many Workers (the tests make two a
    test) would otherwise spend most of each Worker's start-up on it."""

    _checked: ClassVar[set[type]] = set()

    def prepare_workflow(self, defn: _Definition) -> None:
        if defn.cls not in self._checked:
            super().prepare_workflow(defn)
            self._checked.add(defn.cls)


def workflow_runner() -> WorkflowRunner:
    """How every Worker of the project runs workflows: here and in tests/workers.py."""
    return _SandboxedRunner(restrictions=SANDBOX_RESTRICTIONS)


def build_workers(client: Client, deps: Dependencies) -> list[Worker]:
    """One Worker per task queue this process serves (CHANGEFLOW_SERVE_LIFECYCLE/_DEPLOY)."""
    settings = deps.settings
    common = {
        # Pollers follow the backlog (the server tells when tasks wait): a burst of approvals
        # or a long deployment queue is not held back by a fixed handful of polls.
        "workflow_task_poller_behavior": PollerBehaviorAutoscaling(),
        "activity_task_poller_behavior": PollerBehaviorAutoscaling(),
        "max_concurrent_activities": settings.max_concurrent_activities,
        "graceful_shutdown_timeout": timedelta(seconds=settings.graceful_shutdown_seconds),
        # Tracing comes with the client (client/connection.py); a worker uses its interceptors too.
        "interceptors": [*worker_interceptors(), ProductMetricsInterceptor()],
        # Both queues belong to the one Worker Deployment version this process runs.
        "deployment_config": deployment_config(settings),
        "workflow_runner": workflow_runner(),
    }
    workers: list[Worker] = []
    # One queue for everything (a small fleet): one Worker must register all activities, or
    # two Workers polling the same queue would each fail the other's activities.
    single_queue = settings.task_queue == settings.deploy_task_queue
    if settings.serve_lifecycle:
        activities = registry.lifecycle_activities(deps)
        if single_queue:
            activities += registry.deploy_activities(deps)
        workers.append(
            Worker(
                client,
                task_queue=settings.task_queue,
                workflows=(
                    registry.versioned_workflows()
                    if settings.worker_versioning
                    else registry.workflows()
                ),
                activities=activities,
                max_concurrent_workflow_tasks=settings.max_concurrent_workflow_tasks,
                max_cached_workflows=settings.max_cached_workflows,
                sticky_queue_schedule_to_start_timeout=timedelta(
                    seconds=settings.sticky_timeout_seconds
                ),
                **common,  # type: ignore[arg-type]
            )
        )
    if settings.serve_deploy and not (single_queue and settings.serve_lifecycle):
        workers.append(
            Worker(
                client,
                task_queue=settings.deploy_task_queue,
                activities=registry.deploy_activities(deps),
                **common,  # type: ignore[arg-type]
            )
        )
    return workers


def check_serves_something(settings: Settings) -> None:
    if not (settings.serve_lifecycle or settings.serve_deploy):
        raise ConfigurationError(
            "CHANGEFLOW_SERVE_LIFECYCLE and CHANGEFLOW_SERVE_DEPLOY are both false: "
            "this worker would serve nothing"
        )


async def run_until_stopped(workers: Sequence[Worker], stop: asyncio.Event) -> None:
    """Run the workers until `stop` is set (or one fails), then shut all down gracefully."""
    running = [asyncio.create_task(w.run(), name=f"worker:{w.task_queue}") for w in workers]
    stopping = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*running, stopping], return_when=asyncio.FIRST_COMPLETED)
    if stopping in done:
        log.info("worker_stopping", task_queues=[w.task_queue for w in workers])
    else:
        stopping.cancel()
    await asyncio.gather(*(w.shutdown() for w in workers))
    results = await asyncio.gather(*running, return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        raise failures[0]
    log.info("worker_stopped")


async def check_namespace(client: Client, namespace: str) -> None:
    """A missing namespace is a configuration mistake, not a worker crash."""
    try:
        await client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace=namespace)
        )
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise ConfigurationError(
                f"TEMPORAL_NAMESPACE {namespace!r} does not exist on the Temporal server"
            ) from None
        raise


async def reconcile_schedules_once(client: Client, deps: Dependencies, task_queue: str) -> None:
    """Connectors changed while no worker ran still get (or lose) their sync Schedules. Best
    effort: a database or Temporal cut off mid-way (a restart as this process starts) is logged
    and the worker serves anyway; the next start, and every connector operation, apply them."""
    try:
        reconciled = await reconcile_commerce_schedules(client, deps.sessions, task_queue)
    except (SQLAlchemyError, OSError, RPCError) as err:
        log.warning("commerce_schedules_not_reconciled", error=type(err).__name__)
        return
    if reconciled:
        log.info("commerce_schedules_reconciled", **reconciled)


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Resolve the stack (configured, or embedded), then serve until `stop` is set.

    A configured database is only checked, never migrated: production runs `make migrate`
    (the compose file's migrate job); the embedded one is migrated on start.
    """
    check_serves_something(settings)
    payload_key_ring(settings)  # a production configuration without keys stops here, not later
    async with embedded_stack(settings, migrate=settings.embedded_database) as stack:
        await serve_stack(stack, stop)


async def serve_stack(stack: EmbeddedStack, stop: asyncio.Event) -> None:
    """Serve every task queue against a resolved stack until `stop` is set."""
    settings = stack.settings
    check_serves_something(settings)
    client = await until_reachable(
        "temporal", lambda: connect(settings), settings.startup_wait_seconds
    )
    await check_namespace(client, settings.temporal_namespace)
    if settings.serve_lifecycle:
        if await ensure_sweep_schedule(client, settings.task_queue):
            log.info("schedule_created", schedule_id=LEDGER_SWEEP_SCHEDULE_ID)
        if await ensure_plan_grant_schedule(client, settings.task_queue):
            log.info("schedule_created", schedule_id=PLAN_GRANT_SCHEDULE_ID)
    engine = create_engine(stack.database_url, pool_size=settings.db_pool_size)
    try:
        deps = Dependencies(settings=settings, sessions=session_factory(engine), client=client)
        if settings.serve_lifecycle:
            await reconcile_schedules_once(client, deps, settings.task_queue)
        workers = build_workers(client, deps)
        log.info(
            "worker_started",
            temporal_address=stack.temporal_address,
            namespace=settings.temporal_namespace,
            task_queues=[w.task_queue for w in workers],
            embedded=stack.started,
        )
        sampling = None
        if settings.metrics_port and settings.serve_lifecycle:
            meter = runtime_for(settings).metric_meter
            sampling = asyncio.create_task(sample_until_stopped(deps.sessions, meter, stop))
        # The workers ride out a server's outage by themselves; this says so once per outage.
        watching = asyncio.create_task(
            watch_outages(
                {"postgresql": database_probe(engine), "temporal": temporal_probe(client)}, stop
            )
        )
        try:
            await run_until_stopped(workers, stop)
        finally:
            stop.set()
            await watching
        if sampling is not None:
            await sampling
    finally:
        flush_traces()
        await engine.dispose()


def stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):  # platforms without signal handlers
            loop.add_signal_handler(sig, stop.set)


async def main(settings: Settings) -> int:
    stop = asyncio.Event()
    stop_on_signals(stop)
    await serve(settings, stop)
    return 0
