"""The bare baseline of `make bench-lifecycle`: a lifecycle's shape without its work.

Its own small module so the workflow sandbox imports it as cheaply as the lifecycle's modules.
"""

import time
from datetime import timedelta

from pydantic import BaseModel
from temporalio import activity, workflow


class BareStep(BaseModel):
    run_id: str
    step: int


class BareShape(BaseModel):
    run_id: str
    activities: int
    children: int = 0
    child_activities: int = 0
    # Of the same shape as the lifecycle's: as many local activities as it runs.
    local_activities: int = 0
    child_local_activities: int = 0


@activity.defn(name="bench_bare_step")
async def bare_step(step: BareStep) -> BareStep:
    return step


async def _local_steps(shape: BareShape, count: int) -> int:
    for i in range(count):
        await workflow.execute_local_activity(
            bare_step,
            BareStep(run_id=shape.run_id, step=-1 - i),
            start_to_close_timeout=timedelta(seconds=30),
        )
    return count


@workflow.defn(name="BenchBareChildWorkflow")
class BareChildWorkflow:
    @workflow.run
    async def run(self, shape: BareShape) -> int:
        done = await _local_steps(shape, shape.local_activities)
        for i in range(shape.activities):
            await workflow.execute_activity(
                bare_step,
                BareStep(run_id=shape.run_id, step=i),
                start_to_close_timeout=timedelta(seconds=30),
            )
        return done + shape.activities


@workflow.defn(name="BenchBareWorkflow")
class BareWorkflow:
    """A lifecycle's shape without its work: sequential no-op activities and children."""

    @workflow.run
    async def run(self, shape: BareShape) -> int:
        done = await _local_steps(shape, shape.local_activities)
        for i in range(shape.activities):
            await workflow.execute_activity(
                bare_step,
                BareStep(run_id=shape.run_id, step=i),
                start_to_close_timeout=timedelta(seconds=30),
            )
            done += 1
        for c in range(shape.children):
            done += await workflow.execute_child_workflow(
                BareChildWorkflow.run,
                BareShape(
                    run_id=shape.run_id,
                    activities=shape.child_activities,
                    local_activities=shape.child_local_activities,
                ),
                id=f"{workflow.info().workflow_id}-child-{c}",
            )
        return done


@activity.defn(name="bench_bare_clock")
async def bare_clock(step: BareStep) -> float:
    return time.time()


@workflow.defn(name="BenchBareStagingWorkflow")
class BareStagingWorkflow:
    """A staging deployment's start without its work: one local activity reads the clock,
    where the real one marks its row in progress (the row's started_at)."""

    @workflow.run
    async def run(self, run_id: str) -> float:
        return await workflow.execute_local_activity(
            bare_clock,
            BareStep(run_id=run_id, step=0),
            start_to_close_timeout=timedelta(seconds=30),
        )


@workflow.defn(name="BenchBareParkedWorkflow")
class BareParkedWorkflow:
    """The approval baselines: a workflow parked until an update approves it, whose handler
    does nothing but say so; then, as a lifecycle does, one activity (the change applied) and
    a child (staging), whose start time it returns. What Temporal and the SDK cost here."""

    def __init__(self) -> None:
        self._approved = False

    @workflow.run
    async def run(self, run_id: str) -> float:
        await workflow.wait_condition(lambda: self._approved)
        await workflow.execute_activity(
            bare_step, BareStep(run_id=run_id, step=0), start_to_close_timeout=timedelta(seconds=30)
        )
        return await workflow.execute_child_workflow(
            BareStagingWorkflow.run, run_id, id=f"{workflow.info().workflow_id}-staging"
        )

    @workflow.update
    async def approve(self, approver: str) -> bool:
        self._approved = True
        return True
