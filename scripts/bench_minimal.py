"""The minimal baseline of `make bench-lifecycle`: the lifecycle a team would hand-write on
Temporal without our bookkeeping, fixed whatever shape our own lifecycle has.

A parent of 4 no-op activities (reserve, plan, apply, settle) around 2 child deployments
(staging, then production) of 2 no-op activities each (release, verify): 8 activities, 2
children, no approval wait. Its own small module so the workflow sandbox imports it cheaply.
"""

from datetime import timedelta

from pydantic import BaseModel
from temporalio import activity, workflow

MINIMAL_ACTIVITIES = 4 + 2 * 2
STEP_TIMEOUT = timedelta(seconds=30)


class MinimalStep(BaseModel):
    run_id: str
    step: str


@activity.defn(name="bench_minimal_reserve_tokens")
async def reserve_tokens(step: MinimalStep) -> MinimalStep:
    return step


@activity.defn(name="bench_minimal_plan_change")
async def plan_change(step: MinimalStep) -> MinimalStep:
    return step


@activity.defn(name="bench_minimal_apply_change")
async def apply_change(step: MinimalStep) -> MinimalStep:
    return step


@activity.defn(name="bench_minimal_settle_tokens")
async def settle_tokens(step: MinimalStep) -> MinimalStep:
    return step


@activity.defn(name="bench_minimal_release")
async def release(step: MinimalStep) -> MinimalStep:
    return step


@activity.defn(name="bench_minimal_verify")
async def verify(step: MinimalStep) -> MinimalStep:
    return step


MINIMAL_ACTIVITY_FUNCTIONS = [
    reserve_tokens,
    plan_change,
    apply_change,
    settle_tokens,
    release,
    verify,
]


@workflow.defn(name="BenchMinimalDeploymentWorkflow")
class MinimalDeploymentWorkflow:
    @workflow.run
    async def run(self, step: MinimalStep) -> int:
        for activity_fn in (release, verify):
            await workflow.execute_activity(activity_fn, step, start_to_close_timeout=STEP_TIMEOUT)
        return 2


@workflow.defn(name="BenchMinimalLifecycleWorkflow")
class MinimalLifecycleWorkflow:
    """Reserve, plan, apply; deploy to staging then production as children; settle."""

    @workflow.run
    async def run(self, run_id: str) -> int:
        done = 0
        for activity_fn in (reserve_tokens, plan_change, apply_change):
            await workflow.execute_activity(
                activity_fn,
                MinimalStep(run_id=run_id, step=activity_fn.__name__),
                start_to_close_timeout=STEP_TIMEOUT,
            )
            done += 1
        for environment in ("staging", "production"):
            done += await workflow.execute_child_workflow(
                MinimalDeploymentWorkflow.run,
                MinimalStep(run_id=run_id, step=environment),
                id=f"{workflow.info().workflow_id}-{environment}",
            )
        await workflow.execute_activity(
            settle_tokens,
            MinimalStep(run_id=run_id, step="settle"),
            start_to_close_timeout=STEP_TIMEOUT,
        )
        return done + 1
