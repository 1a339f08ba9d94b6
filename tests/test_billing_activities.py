"""The ledger activities on a real Temporal server: keys derived from the workflow id and
step, refusals as typed non-retryable errors, the expired-hold sweep and its schedule."""

import contextlib
import uuid
from datetime import timedelta

from pydantic import BaseModel
from temporalio import workflow
from temporalio.client import Client
from temporalio.common import RetryPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.service import RPCError
from temporalio.worker import Worker

from activities.billing import BillingActivities
from activities.ledger import Ledger
from infra.settings import Settings
from models import PlanTier
from models.db import SessionFactory
from tests.factories import make_funded_account, make_tenant
from workers import registry
from workers.schedules import ensure_sweep_schedule
from workflows.billing import LedgerSweepWorkflow
from workflows.contracts.billing import (
    ChargeTokens,
    EntryView,
    HoldView,
    ReleaseHold,
    ReserveTokens,
    SettleHold,
    SettlementView,
    SweepExpiredHolds,
)
from workflows.contracts.ids import LEDGER_SWEEP_SCHEDULE_ID


class Scenario(BaseModel):
    tenant_id: uuid.UUID
    reserve: int
    settle: int
    charge: int
    overspend: int


class Refusal(BaseModel):
    type: str | None
    non_retryable: bool
    retry_state: str | None


class ScenarioResult(BaseModel):
    holds: list[HoldView]
    settlements: list[SettlementView]
    charges: list[EntryView]
    overspend: Refusal
    release_after_settle: Refusal


def refusal(err: ActivityError) -> Refusal:
    cause = err.cause
    assert isinstance(cause, ApplicationError)
    return Refusal(
        type=cause.type,
        non_retryable=cause.non_retryable,
        retry_state=err.retry_state.name if err.retry_state else None,
    )


TIMEOUT = timedelta(seconds=30)
RETRY = RetryPolicy(maximum_attempts=5, initial_interval=timedelta(milliseconds=50))


@workflow.defn(sandboxed=False)
class BillingScenarioWorkflow:
    """Every step twice, as a retry or a replay would run it."""

    @workflow.run
    async def run(self, plan: Scenario) -> ScenarioResult:
        holds = [
            await workflow.execute_activity_method(
                BillingActivities.reserve_tokens,
                ReserveTokens(tenant_id=plan.tenant_id, amount=plan.reserve, step="plan"),
                start_to_close_timeout=TIMEOUT,
                retry_policy=RETRY,
            )
            for _ in range(2)
        ]
        settlements = [
            await workflow.execute_activity_method(
                BillingActivities.settle_hold,
                SettleHold(hold_id=holds[0].hold_id, amount=plan.settle, step="settle"),
                start_to_close_timeout=TIMEOUT,
                retry_policy=RETRY,
            )
            for _ in range(2)
        ]
        charges = [
            await workflow.execute_activity_method(
                BillingActivities.charge_tokens,
                ChargeTokens(tenant_id=plan.tenant_id, amount=plan.charge, step="extra"),
                start_to_close_timeout=TIMEOUT,
                retry_policy=RETRY,
            )
            for _ in range(2)
        ]
        try:
            await workflow.execute_activity_method(
                BillingActivities.charge_tokens,
                ChargeTokens(tenant_id=plan.tenant_id, amount=plan.overspend, step="overspend"),
                start_to_close_timeout=TIMEOUT,
                retry_policy=RETRY,
            )
            raise AssertionError("overspend was accepted")
        except ActivityError as err:
            overspend = refusal(err)
        try:
            await workflow.execute_activity_method(
                BillingActivities.release_hold,
                ReleaseHold(hold_id=holds[0].hold_id, step="release"),
                start_to_close_timeout=TIMEOUT,
                retry_policy=RETRY,
            )
            raise AssertionError("release after settle was accepted")
        except ActivityError as err:
            release_after_settle = refusal(err)
        return ScenarioResult(
            holds=holds,
            settlements=settlements,
            charges=charges,
            overspend=overspend,
            release_after_settle=release_after_settle,
        )


def billing_worker(client: Client, sessions: SessionFactory, task_queue: str) -> Worker:
    activities = BillingActivities(Ledger(sessions))
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[BillingScenarioWorkflow, LedgerSweepWorkflow],
        activities=[
            activities.reserve_tokens,
            activities.settle_hold,
            activities.release_hold,
            activities.charge_tokens,
            activities.sweep_expired_holds,
        ],
    )


async def test_activities_derive_keys_from_the_workflow_and_refuse_with_typed_errors(
    client: Client, sessions: SessionFactory, task_queue: str
) -> None:
    tenant = await make_tenant(sessions)
    account = await make_funded_account(sessions, tenant=tenant, balance=10_000)
    ledger = Ledger(sessions)
    plan = Scenario(tenant_id=tenant.id, reserve=4_000, settle=3_000, charge=500, overspend=50_000)
    workflow_id = f"billing-scenario-{uuid.uuid4()}"

    async with billing_worker(client, sessions, task_queue):
        result = await client.execute_workflow(
            BillingScenarioWorkflow.run, plan, id=workflow_id, task_queue=task_queue
        )
        # A second run under the same workflow id lands on the same keys: nothing moves.
        again = await client.execute_workflow(
            BillingScenarioWorkflow.run,
            plan,
            id=workflow_id,
            task_queue=task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        )

    assert result.holds[0] == result.holds[1] == again.holds[0]
    assert result.settlements[0] == result.settlements[1] == again.settlements[0]
    assert (result.settlements[0].settled, result.settlements[0].released) == (3_000, 1_000)
    assert result.charges[0] == result.charges[1] == again.charges[0]
    assert result.overspend == Refusal(
        type="InsufficientTokens", non_retryable=True, retry_state="NON_RETRYABLE_FAILURE"
    )
    assert result.release_after_settle.type == "HoldNotActive"
    assert result.release_after_settle.non_retryable
    state = await ledger.balance(account.id)
    assert (state.balance, state.held) == (10_000 - 3_000 - 500, 0)
    settle_entry = await ledger.refund(
        result.settlements[0].transaction_id,  # type: ignore[arg-type]
        key="refund-check",
    )
    assert settle_entry.amount == 3_000


async def test_a_tenant_without_an_account_for_its_tier_gets_account_not_found(
    client: Client, sessions: SessionFactory, task_queue: str
) -> None:
    tenant = await make_tenant(sessions, plan_tier=PlanTier.SCALE)
    await Ledger(sessions).open_account(tenant.id, plan_tier=PlanTier.FREE)  # another tier

    async with billing_worker(client, sessions, task_queue):
        handle = await client.start_workflow(
            BillingScenarioWorkflow.run,
            Scenario(tenant_id=tenant.id, reserve=1, settle=1, charge=1, overspend=1),
            id=f"billing-scenario-{uuid.uuid4()}",
            task_queue=task_queue,
        )
        try:
            await handle.result()
            raise AssertionError("the workflow should have failed")
        except Exception as exc:  # WorkflowFailureError -> ActivityError -> ApplicationError
            cause = exc.__cause__
            assert isinstance(cause, ActivityError)
            assert isinstance(cause.cause, ApplicationError)
            assert cause.cause.type == "AccountNotFound"
            assert cause.cause.non_retryable


async def test_the_sweep_workflow_releases_expired_holds(
    client: Client, sessions: SessionFactory, task_queue: str
) -> None:
    account = await make_funded_account(sessions, tenant=await make_tenant(sessions), balance=500)
    ledger = Ledger(sessions)
    hold = await ledger.reserve(account.id, 400, key="short", ttl=timedelta(milliseconds=1))

    async with billing_worker(client, sessions, task_queue):
        result = await client.execute_workflow(
            LedgerSweepWorkflow.run,
            SweepExpiredHolds(),
            id=f"ledger-sweep-{uuid.uuid4()}",
            task_queue=task_queue,
        )

    assert result.expired >= 1
    assert (await ledger.hold(hold.hold_id)).status == "expired"
    assert (await ledger.balance(account.id)).available == 500


async def test_the_sweep_schedule_is_created_once(client: Client, task_queue: str) -> None:
    handle = client.get_schedule_handle(LEDGER_SWEEP_SCHEDULE_ID)
    # A worker another test started on this session's server may have made it already.
    with contextlib.suppress(RPCError):
        await handle.delete()
    try:
        assert await ensure_sweep_schedule(client, task_queue) is True
        assert await ensure_sweep_schedule(client, task_queue) is False
        description = await handle.describe()
        action = description.schedule.action
        assert action.workflow == "LedgerSweepWorkflow"  # type: ignore[attr-defined]
        assert action.task_queue == task_queue  # type: ignore[attr-defined]
        assert description.schedule.spec.intervals[0].every == timedelta(minutes=1)
    finally:
        await handle.delete()


def test_the_registry_serves_the_billing_activities_and_the_sweep(
    client: Client, sessions: SessionFactory
) -> None:
    deps = registry.Dependencies(settings=Settings(), sessions=sessions, client=client)
    assert LedgerSweepWorkflow in registry.workflows()
    names = {getattr(fn, "__name__", "") for fn in registry.lifecycle_activities(deps)}
    assert {
        "reserve_tokens",
        "settle_hold",
        "release_hold",
        "charge_tokens",
        "sweep_expired_holds",
    } <= names
