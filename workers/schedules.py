"""Temporal Schedules the platform relies on; the worker and the dev stack make sure they
exist at start-up."""

from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
)

from workflows.billing import LedgerSweepWorkflow
from workflows.contracts.billing import SweepExpiredHolds

LEDGER_SWEEP_SCHEDULE_ID = "changeflow-ledger-sweep"
LEDGER_SWEEP_INTERVAL = timedelta(minutes=1)


async def ensure_sweep_schedule(
    client: Client, task_queue: str, *, interval: timedelta = LEDGER_SWEEP_INTERVAL
) -> bool:
    """Create the expired-hold sweep schedule unless it exists; True if it was created."""
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(
            LedgerSweepWorkflow.run,
            SweepExpiredHolds(),
            id=f"{LEDGER_SWEEP_SCHEDULE_ID}-run",
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
