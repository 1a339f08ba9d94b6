"""Plan-tier grants arrive by themselves: a Temporal Schedule runs PlanGrantWorkflow, which
grants every account its tier's tokens once per month, catching up a missed month once."""

import asyncio
import uuid
from datetime import timedelta

import pytest
from sqlmodel import select
from temporalio.client import Client, ScheduleOverlapPolicy, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from activities.billing import BillingActivities
from activities.ledger import Ledger, current_period
from models import PlanTier, TokenTransaction, TokenTransactionKind
from models.billing import TIER_ALLOWANCES
from models.db import SessionFactory
from tests.factories import make_funded_account, make_tenant
from workers.schedules import ensure_plan_grant_schedule
from workflows.billing import PlanGrantWorkflow
from workflows.contracts.billing import GrantPlanTokens, GrantResult
from workflows.contracts.ids import PLAN_GRANT_SCHEDULE_ID

pytestmark = pytest.mark.asyncio(loop_scope="session")


def grant_worker(client: Client, sessions: SessionFactory, task_queue: str) -> Worker:
    billing = BillingActivities(Ledger(sessions))
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[PlanGrantWorkflow],
        activities=[billing.grant_plan_tokens],
    )


async def grants(sessions: SessionFactory) -> list[tuple[uuid.UUID, str, int]]:
    async with sessions() as session:
        rows = await session.exec(
            select(TokenTransaction).where(TokenTransaction.kind == TokenTransactionKind.GRANT)
        )
        return sorted((r.account_id, r.description, r.amount) for r in rows.all())


async def run_grants(
    client: Client, task_queue: str, request: GrantPlanTokens | None = None
) -> GrantResult:
    return await client.execute_workflow(
        PlanGrantWorkflow.run,
        request,
        id=f"plan-grants-{uuid.uuid4()}",
        task_queue=task_queue,
    )


async def test_every_account_gets_its_tier_grant_once_per_month_and_a_missed_month_once(
    client: Client, sessions: SessionFactory, task_queue: str
) -> None:
    starter = await make_funded_account(
        sessions, tenant=await make_tenant(sessions, plan_tier=PlanTier.STARTER), balance=0
    )
    growth = await make_funded_account(
        sessions, tenant=await make_tenant(sessions, plan_tier=PlanTier.GROWTH), balance=0
    )
    # The growth tenant's account from the tier it left gets no grant any more.
    left_tier = await Ledger(sessions).open_account(growth.tenant_id, plan_tier=PlanTier.STARTER)
    this_month = current_period()
    allowance = {
        starter.id: TIER_ALLOWANCES[PlanTier.STARTER].grant_per_period,
        growth.id: TIER_ALLOWANCES[PlanTier.GROWTH].grant_per_period,
    }
    async with grant_worker(client, sessions, task_queue):
        first = await run_grants(client, task_queue)
        again = await asyncio.gather(*(run_grants(client, task_queue) for _ in range(3)))
        # A month the schedule missed (the fleet was down over its first day), caught up twice.
        missed = [await run_grants(client, task_queue, GrantPlanTokens(period="2026-01"))]
        missed.append(await run_grants(client, task_queue, GrantPlanTokens(period="2026-01")))

    assert first.period == this_month and first.accounts == 2
    assert {r.period for r in again} == {this_month}
    assert {r.period for r in missed} == {"2026-01"}
    assert await grants(sessions) == sorted(
        (account_id, f"plan grant for {period}", amount)
        for account_id, amount in allowance.items()
        for period in (this_month, "2026-01")
    )
    ledger = Ledger(sessions)
    for account_id, amount in allowance.items():
        assert (await ledger.balance(account_id)).balance == 2 * amount
    assert (await ledger.balance(left_tier.id)).balance == 0


@pytest.mark.parametrize("period", ["2026-13", "2026-12-01", "12-2026"])
async def test_a_malformed_period_fails_the_run_typed_and_grants_nothing(
    client: Client, sessions: SessionFactory, task_queue: str, period: str
) -> None:
    await make_funded_account(sessions, tenant=await make_tenant(sessions), balance=0)
    async with grant_worker(client, sessions, task_queue):
        with pytest.raises(WorkflowFailureError) as failed:
            await run_grants(client, task_queue, GrantPlanTokens(period=period))

    cause = failed.value.cause.cause
    assert isinstance(cause, ApplicationError) and cause.type == "InvalidPeriod"
    assert cause.non_retryable
    assert await grants(sessions) == []


async def test_the_grant_schedule_is_monthly_catches_up_and_grants_the_current_month_at_once(
    namespace_client: Client, sessions: SessionFactory, task_queue: str
) -> None:
    # A namespace of its own: worker processes of other tests create the same schedule.
    client = namespace_client
    account = await make_funded_account(
        sessions, tenant=await make_tenant(sessions, plan_tier=PlanTier.STARTER), balance=0
    )
    handle = client.get_schedule_handle(PLAN_GRANT_SCHEDULE_ID)
    try:
        async with grant_worker(client, sessions, task_queue):
            assert await ensure_plan_grant_schedule(client, task_queue) is True
            assert await ensure_plan_grant_schedule(client, task_queue) is False
            async with asyncio.timeout(30):
                while True:
                    if await grants(sessions):
                        break
                    await asyncio.sleep(0.2)
        description = await handle.describe()
    finally:
        await handle.delete()

    allowance = TIER_ALLOWANCES[PlanTier.STARTER].grant_per_period
    assert await grants(sessions) == [(account.id, f"plan grant for {current_period()}", allowance)]
    schedule = description.schedule
    assert schedule.action.workflow == "PlanGrantWorkflow"  # type: ignore[attr-defined]
    calendar = schedule.spec.calendars[0]
    assert [(r.start, r.end) for r in calendar.day_of_month] == [(1, 1)]
    assert schedule.policy.overlap is ScheduleOverlapPolicy.BUFFER_ALL
    assert schedule.policy.catchup_window >= timedelta(days=31)
