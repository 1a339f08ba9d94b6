"""Temporal Schedules the platform relies on; the worker and the dev stack make sure they
exist at start-up."""

from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleCalendarSpec,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleRange,
    ScheduleSpec,
)

from workflows.billing import LedgerSweepWorkflow, PlanGrantWorkflow
from workflows.contracts.billing import GrantPlanTokens, SweepExpiredHolds
from workflows.contracts.ids import (
    LEDGER_SWEEP_SCHEDULE_ID,
    PLAN_GRANT_SCHEDULE_ID,
    scheduled_run_workflow_id,
)

LEDGER_SWEEP_INTERVAL = timedelta(minutes=1)
# A scheduler or fleet down over a month's start still grants that month when it is back.
PLAN_GRANT_CATCHUP = timedelta(days=62)


async def ensure_sweep_schedule(
    client: Client, task_queue: str, *, interval: timedelta = LEDGER_SWEEP_INTERVAL
) -> bool:
    """Create the expired-hold sweep schedule unless it exists; True if it was created."""
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(
            LedgerSweepWorkflow.run,
            SweepExpiredHolds(),
            id=scheduled_run_workflow_id(LEDGER_SWEEP_SCHEDULE_ID),
            task_queue=task_queue,
            execution_timeout=timedelta(minutes=10),
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=interval)]),
        # One sweep at a time; a slow sweep is not stacked behind by the next.
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )
    try:
        await client.create_schedule(LEDGER_SWEEP_SCHEDULE_ID, schedule)
    except ScheduleAlreadyRunningError:
        return False
    return True


async def ensure_plan_grant_schedule(client: Client, task_queue: str) -> bool:
    """Create the monthly plan-tier grant schedule unless it exists; True if it was created.

    It runs at 00:05 UTC on the first of every month and once at creation (so a new
    installation grants the current month). Missed runs are caught up, each once and in
    order (BUFFER_ALL), each granting the month it was due in; a grant is idempotent per
    account and month.
    """
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(
            PlanGrantWorkflow.run,
            GrantPlanTokens(),
            id=scheduled_run_workflow_id(PLAN_GRANT_SCHEDULE_ID),
            task_queue=task_queue,
            execution_timeout=timedelta(hours=1),
        ),
        spec=ScheduleSpec(
            calendars=[
                ScheduleCalendarSpec(
                    day_of_month=[ScheduleRange(1)],
                    hour=[ScheduleRange(0)],
                    minute=[ScheduleRange(5)],
                    comment="plan-tier grants, first of the month (UTC)",
                )
            ]
        ),
        policy=SchedulePolicy(
            overlap=ScheduleOverlapPolicy.BUFFER_ALL, catchup_window=PLAN_GRANT_CATCHUP
        ),
    )
    try:
        await client.create_schedule(PLAN_GRANT_SCHEDULE_ID, schedule, trigger_immediately=True)
    except ScheduleAlreadyRunningError:
        return False
    return True
