"""Temporal Schedules the platform relies on; the worker and the dev stack make sure they
exist at start-up."""

import uuid
from datetime import timedelta

from sqlmodel import select
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
    ScheduleUpdate,
)
from temporalio.service import RPCError, RPCStatusCode

from models.db import SessionFactory
from models.projects import Connector, ConnectorKind, ConnectorStatus
from workflows.billing import LedgerSweepWorkflow, PlanGrantWorkflow
from workflows.commerce import OrderSyncTriggerWorkflow, ReportWorkflow
from workflows.contracts.billing import GrantPlanTokens, SweepExpiredHolds
from workflows.contracts.commerce import ReportInput, StartOrderSync
from workflows.contracts.ids import (
    LEDGER_SWEEP_SCHEDULE_ID,
    PLAN_GRANT_SCHEDULE_ID,
    order_sync_schedule_id,
    report_schedule_id,
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


# --- the commerce modules: a sync Schedule per active connector, a daily report per tenant
# Each report Schedule runs at this local hour in the shop's time zone, for the day before.
REPORT_HOUR = 1


async def apply_connector_schedule(client: Client, connector: Connector, task_queue: str) -> str:
    """Make the connector's sync Schedule match its state: present (at its interval) while
    it is active and of a kind that syncs, absent otherwise (a webhook connector's Schedule
    made by an earlier version is deleted). Returns what was done: created, updated, deleted,
    none."""
    schedule_id = order_sync_schedule_id(connector.id)
    handle = client.get_schedule_handle(schedule_id)
    if connector.status is not ConnectorStatus.ACTIVE or not connector.kind.syncs_orders:
        try:
            await handle.delete()
        except RPCError as err:
            if err.status is RPCStatusCode.NOT_FOUND:
                return "none"
            raise
        return "deleted"
    interval = timedelta(seconds=connector.sync_interval_seconds)
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(
            OrderSyncTriggerWorkflow.run,
            StartOrderSync(connector_id=connector.id),
            id=scheduled_run_workflow_id(schedule_id),
            task_queue=task_queue,
            execution_timeout=timedelta(minutes=5),
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=interval)]),
        # A trigger still running is not stacked behind; the trigger itself never starts a
        # second sync of the connector (one workflow id per connector).
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )
    try:
        await client.create_schedule(schedule_id, schedule)
    except ScheduleAlreadyRunningError:
        await handle.update(lambda _: ScheduleUpdate(schedule=schedule))
        return "updated"
    return "created"


async def ensure_report_schedule(
    client: Client, tenant_id: uuid.UUID, task_queue: str, *, timezone: str = "UTC"
) -> bool:
    """The tenant's daily report of yesterday, at REPORT_HOUR in the shop's time zone; True
    if it was created."""
    schedule_id = report_schedule_id(tenant_id)
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(
            ReportWorkflow.run,
            ReportInput(tenant_id=tenant_id, timezone=timezone),
            id=scheduled_run_workflow_id(schedule_id),
            task_queue=task_queue,
            execution_timeout=timedelta(minutes=30),
        ),
        spec=ScheduleSpec(
            calendars=[
                ScheduleCalendarSpec(
                    hour=[ScheduleRange(REPORT_HOUR)], comment="daily report of yesterday"
                )
            ],
            time_zone_name=timezone,
        ),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )
    try:
        await client.create_schedule(schedule_id, schedule)
    except ScheduleAlreadyRunningError:
        return False
    return True


async def reconcile_commerce_schedules(
    client: Client, sessions: SessionFactory, task_queue: str
) -> dict[str, int]:
    """Every connector's sync Schedule matched to its state, and a report Schedule for each
    tenant with an active Shopify connector (in that shop's time zone)."""
    async with sessions() as session:
        connectors = (await session.exec(select(Connector))).all()
    done: dict[str, int] = {}
    report_zones: dict[uuid.UUID, str] = {}
    for connector in connectors:
        outcome = await apply_connector_schedule(client, connector, task_queue)
        done[outcome] = done.get(outcome, 0) + 1
        if connector.status is ConnectorStatus.ACTIVE and connector.kind is ConnectorKind.SHOPIFY:
            report_zones.setdefault(
                connector.tenant_id, str(connector.config.get("timezone") or "UTC")
            )
    for tenant_id, zone in report_zones.items():
        if await ensure_report_schedule(client, tenant_id, task_queue, timezone=zone):
            done["reports_created"] = done.get("reports_created", 0) + 1
    return done
