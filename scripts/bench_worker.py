"""The baselines' worker of `make bench-lifecycle`: the bare and the minimal workflows, served
by a process of their own as the lifecycle is by `python -m workers`, with the same settings
(concurrency limits included), so neither side shares the benchmark client's interpreter.

    python -m scripts.bench_worker --bare-queue Q1 --minimal-queue Q2
"""

import argparse
import asyncio
import sys
from collections.abc import Callable
from typing import Any

from temporalio.worker import PollerBehaviorAutoscaling, Worker

from client.connection import connect
from infra.entry_points import run_entry_point
from infra.settings import Settings
from scripts.bench_bare import (
    BareChildWorkflow,
    BareParkedWorkflow,
    BareStagingWorkflow,
    BareWorkflow,
    bare_clock,
    bare_step,
)
from scripts.bench_minimal import (
    MINIMAL_ACTIVITY_FUNCTIONS,
    MinimalDeploymentWorkflow,
    MinimalLifecycleWorkflow,
)
from workers.worker import run_until_stopped, stop_on_signals


async def serve(settings: Settings) -> int:
    parser = argparse.ArgumentParser(prog="bench-worker")
    parser.add_argument("--bare-queue", required=True)
    parser.add_argument("--minimal-queue", required=True)
    args = parser.parse_args(sys.argv[1:])
    client = await connect(settings)

    def worker(
        task_queue: str, workflows: list[type], activities: list[Callable[..., Any]]
    ) -> Worker:
        return Worker(
            client,
            task_queue=task_queue,
            workflows=workflows,
            activities=activities,
            max_concurrent_activities=settings.max_concurrent_activities,
            max_concurrent_workflow_tasks=settings.max_concurrent_workflow_tasks,
            max_cached_workflows=settings.max_cached_workflows,
            workflow_task_poller_behavior=PollerBehaviorAutoscaling(),
            activity_task_poller_behavior=PollerBehaviorAutoscaling(),
        )

    workers = [
        worker(
            args.bare_queue,
            [BareWorkflow, BareChildWorkflow, BareParkedWorkflow, BareStagingWorkflow],
            [bare_step, bare_clock],
        ),
        worker(
            args.minimal_queue,
            [MinimalLifecycleWorkflow, MinimalDeploymentWorkflow],
            MINIMAL_ACTIVITY_FUNCTIONS,
        ),
    ]
    stop = asyncio.Event()
    stop_on_signals(stop)
    await run_until_stopped(workers, stop)
    return 0


def main() -> None:
    run_entry_point(serve, prog="bench-worker")


if __name__ == "__main__":
    main()
