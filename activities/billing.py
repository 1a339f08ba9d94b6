"""Ledger activities for workflows: derive the idempotency key, call the Ledger, turn its
refusals into typed non-retryable errors. Nothing else happens here."""

from collections.abc import Awaitable
from datetime import timedelta
from typing import TypeVar

from temporalio import activity

from activities.ledger import Ledger, LedgerError
from workflows.contracts.billing import (
    ChargeTokens,
    EntryView,
    GrantPlanTokens,
    GrantResult,
    HoldView,
    ReleaseForgottenHolds,
    ReleaseHold,
    ReserveTokens,
    SettleHold,
    SettlementView,
    SweepExpiredHolds,
    SweepResult,
)
from workflows.contracts.errors import refused

T = TypeVar("T")


def idempotency_key(step: str) -> str:
    """Retries, replays and worker restarts of one workflow step land on one key."""
    return f"{activity.info().workflow_id}:{step}"


async def _refusals_are_final(operation: Awaitable[T]) -> T:
    try:
        return await operation
    except LedgerError as exc:
        raise refused(exc.error_type, str(exc)) from exc


class BillingActivities:
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    @activity.defn
    async def reserve_tokens(self, request: ReserveTokens) -> HoldView:
        async def reserve() -> HoldView:
            account = await self._ledger.account_for_tenant(request.tenant_id)
            return await self._ledger.reserve(
                account.id,
                request.amount,
                key=idempotency_key(request.step),
                ttl=timedelta(seconds=request.ttl_seconds),
                description=request.description,
            )

        return await _refusals_are_final(reserve())

    @activity.defn
    async def settle_hold(self, request: SettleHold) -> SettlementView:
        return await _refusals_are_final(
            self._ledger.settle(
                request.hold_id,
                request.amount,
                key=idempotency_key(request.step),
                description=request.description,
            )
        )

    @activity.defn
    async def release_forgotten_holds(self, request: ReleaseForgottenHolds) -> list[HoldView]:
        """Release this workflow's active holds other than `known`: a reservation whose answer
        was lost (its worker or the database went away after the commit) left one that the
        workflow never learnt of. Each release is keyed by its hold, so a retry releases once."""
        workflow_id = activity.info().workflow_id
        holds = await self._ledger.active_holds_by_key(request.tenant_id, f"{workflow_id}:")
        released = []
        for hold in holds:
            if hold.hold_id in request.known:
                continue
            released.append(
                await _refusals_are_final(
                    self._ledger.release(
                        hold.hold_id, key=idempotency_key(f"release-forgotten:{hold.hold_id}")
                    )
                )
            )
        return released

    @activity.defn
    async def release_hold(self, request: ReleaseHold) -> HoldView:
        return await _refusals_are_final(
            self._ledger.release(request.hold_id, key=idempotency_key(request.step))
        )

    @activity.defn
    async def charge_tokens(self, request: ChargeTokens) -> EntryView:
        async def charge() -> EntryView:
            account = await self._ledger.account_for_tenant(request.tenant_id)
            return await self._ledger.charge(
                account.id,
                request.amount,
                key=idempotency_key(request.step),
                description=request.description,
            )

        return await _refusals_are_final(charge())

    @activity.defn
    async def grant_plan_tokens(self, request: GrantPlanTokens) -> GrantResult:
        """Idempotent per account and period: a retried or repeated run grants nothing more."""
        assert request.period is not None, "the workflow names the period"
        accounts = await _refusals_are_final(self._ledger.grant_all(period=request.period))
        return GrantResult(period=request.period, accounts=accounts)

    @activity.defn
    async def sweep_expired_holds(self, request: SweepExpiredHolds) -> SweepResult:
        expired = await self._ledger.expire_holds(batch_size=request.batch_size)
        return SweepResult(expired=expired)
