"""The token ledger against the real PostgreSQL: idempotency, holds, refunds, grants, alerts,
the floor under concurrency."""

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY
from pydantic import BaseModel, ValidationError
from sqlalchemy import func, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from structlog.testing import capture_logs

from activities.ledger import (
    AccountNotFound,
    EntryNotRefundable,
    HoldNotActive,
    IdempotencyConflict,
    InsufficientTokens,
    InvalidAmount,
    InvalidPeriod,
    Ledger,
)
from activities.reconciliation import reconcile
from models import PlanTier, TokenAccount, TokenTransaction
from models.billing import (
    TIER_ALLOWANCES,
    AlertStatus,
    HoldStatus,
    TokenAlert,
    TokenHold,
    TokenLedgerRequest,
)
from models.db import SessionFactory
from tests.factories import make_funded_account, make_tenant
from workflows.contracts.billing import ChargeTokens, ReserveTokens, SettleHold

HOUR = timedelta(hours=1)


class Clock:
    """A settable clock, so expiry is tested without sleeping."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


async def funded(
    sessions: SessionFactory, balance: int, *, plan_tier: PlanTier = PlanTier.GROWTH
) -> TokenAccount:
    return await make_funded_account(
        sessions, tenant=await make_tenant(sessions, plan_tier=plan_tier), balance=balance
    )


async def counts(sessions: SessionFactory, account_id: uuid.UUID) -> dict[str, int]:
    async with sessions() as session:
        result = {}
        for name, table in (
            ("entries", TokenTransaction),
            ("holds", TokenHold),
            ("requests", TokenLedgerRequest),
        ):
            result[name] = (
                await session.exec(
                    select(func.count()).select_from(table).where(table.account_id == account_id)  # type: ignore[attr-defined]
                )
            ).one()
        return result


async def assert_reconciles(sessions: SessionFactory) -> None:
    drift = [r.drift for r in await reconcile(sessions) if r.drift]
    assert drift == []


# --- idempotency ---------------------------------------------------------------------------


async def test_replaying_a_charge_returns_the_stored_result_and_moves_the_balance_once(
    sessions: SessionFactory,
) -> None:
    account = await funded(sessions, 1_000)
    ledger = Ledger(sessions)

    first = await ledger.charge(account.id, 300, key="wf-1:plan")
    before = await counts(sessions, account.id)
    again = await ledger.charge(account.id, 300, key="wf-1:plan")

    assert again == first
    assert first.balance_after == 700
    assert (await ledger.balance(account.id)).balance == 700
    assert await counts(sessions, account.id) == before


async def test_every_operation_replays_its_first_answer(sessions: SessionFactory) -> None:
    account = await funded(sessions, 10_000)
    ledger = Ledger(sessions)

    top_up = await ledger.top_up(account.id, 500, key="top-up-1")
    hold = await ledger.reserve(account.id, 2_000, key="reserve-1", ttl=HOUR)
    settlement = await ledger.settle(hold.hold_id, 1_500, key="settle-1")
    other = await ledger.reserve(account.id, 100, key="reserve-2", ttl=HOUR)
    released = await ledger.release(other.hold_id, key="release-1")
    charge = await ledger.charge(account.id, 250, key="charge-1")
    refund = await ledger.refund(charge.transaction_id, key="refund-1")
    adjustment = await ledger.adjust(account.id, -50, key="adjust-1")
    grant = await ledger.grant(account.id, period="2026-11")
    state = await ledger.balance(account.id)
    rows = await counts(sessions, account.id)

    assert await ledger.top_up(account.id, 500, key="top-up-1") == top_up
    assert await ledger.reserve(account.id, 2_000, key="reserve-1", ttl=HOUR) == hold
    assert await ledger.settle(hold.hold_id, 1_500, key="settle-1") == settlement
    assert await ledger.release(other.hold_id, key="release-1") == released
    assert await ledger.charge(account.id, 250, key="charge-1") == charge
    assert await ledger.refund(charge.transaction_id, key="refund-1") == refund
    assert await ledger.adjust(account.id, -50, key="adjust-1") == adjustment
    assert await ledger.grant(account.id, period="2026-11") == grant

    assert await ledger.balance(account.id) == state
    assert await counts(sessions, account.id) == rows
    assert settlement.settled == 1_500 and settlement.released == 500
    await assert_reconciles(sessions)


@pytest.mark.parametrize(
    "misuse",
    ["other_amount", "other_kind", "reserve_instead", "settle_other_hold"],
)
async def test_a_key_reused_for_a_different_request_is_refused_without_a_write(
    sessions: SessionFactory, misuse: str
) -> None:
    account = await funded(sessions, 10_000)
    ledger = Ledger(sessions)
    first_hold = await ledger.reserve(account.id, 1_000, key="hold-a", ttl=HOUR)
    second_hold = await ledger.reserve(account.id, 1_000, key="hold-b", ttl=HOUR)
    await ledger.charge(account.id, 100, key="step")
    await ledger.settle(first_hold.hold_id, 400, key="settle")
    state, rows = await ledger.balance(account.id), await counts(sessions, account.id)

    with pytest.raises(IdempotencyConflict):
        match misuse:
            case "other_amount":
                await ledger.charge(account.id, 101, key="step")
            case "other_kind":
                await ledger.top_up(account.id, 100, key="step")
            case "reserve_instead":
                await ledger.reserve(account.id, 100, key="step", ttl=HOUR)
            case "settle_other_hold":
                await ledger.settle(second_hold.hold_id, 400, key="settle")

    assert await ledger.balance(account.id) == state
    assert await counts(sessions, account.id) == rows


async def test_a_refused_charge_keeps_failing_with_its_key_even_after_a_top_up(
    sessions: SessionFactory,
) -> None:
    account = await funded(sessions, 100)
    ledger = Ledger(sessions)

    with pytest.raises(InsufficientTokens):
        await ledger.charge(account.id, 500, key="wf-2:apply")
    await ledger.top_up(account.id, 1_000, key="top-up")

    with pytest.raises(InsufficientTokens, match="recorded under key"):
        await ledger.charge(account.id, 500, key="wf-2:apply")
    with pytest.raises(InsufficientTokens):
        await ledger.reserve(account.id, 5_000, key="wf-2:reserve", ttl=HOUR)
    await ledger.top_up(account.id, 10_000, key="top-up-2")
    with pytest.raises(InsufficientTokens):
        await ledger.reserve(account.id, 5_000, key="wf-2:reserve", ttl=HOUR)

    # A new attempt needs a new key.
    entry = await ledger.charge(account.id, 500, key="wf-2:apply-retry")
    assert entry.balance_after == 100 + 1_000 + 10_000 - 500
    await assert_reconciles(sessions)


async def test_bad_input_is_refused_with_a_typed_error_and_writes_nothing(
    sessions: SessionFactory,
) -> None:
    account = await funded(sessions, 1_000)
    ledger = Ledger(sessions)
    rows = await counts(sessions, account.id)

    for call in (
        ledger.charge(account.id, 0, key="k"),
        ledger.charge(account.id, -5, key="k"),
        ledger.top_up(account.id, 10, key=""),
        ledger.top_up(account.id, 10, key=" padded "),
        ledger.top_up(account.id, 10, key="x" * 301),
        ledger.reserve(account.id, 10, key="k", ttl=timedelta(0)),
        ledger.adjust(account.id, 0, key="k"),
    ):
        with pytest.raises(InvalidAmount):
            await call
    with pytest.raises(AccountNotFound):
        await ledger.charge(uuid.uuid4(), 10, key="k")
    with pytest.raises(AccountNotFound):
        await ledger.account_for_tenant(uuid.uuid4())
    with pytest.raises(HoldNotActive):
        await ledger.settle(uuid.uuid4(), 10, key="k")
    assert await counts(sessions, account.id) == rows


# --- concurrency ---------------------------------------------------------------------------


async def test_workers_racing_with_one_key_write_one_row_and_the_losers_get_its_result(
    sessions: SessionFactory,
) -> None:
    account = await funded(sessions, 10_000)
    ledger = Ledger(sessions)

    results = await asyncio.gather(
        *(ledger.charge(account.id, 700, key="wf-3:apply") for _ in range(8))
    )

    assert len({r.transaction_id for r in results}) == 1
    assert (await ledger.balance(account.id)).balance == 9_300
    assert (await counts(sessions, account.id))["entries"] == 2  # funding + one charge
    holds = await asyncio.gather(
        *(ledger.reserve(account.id, 300, key="wf-3:reserve", ttl=HOUR) for _ in range(8))
    )
    assert len({h.hold_id for h in holds}) == 1
    assert (await ledger.balance(account.id)).available == 9_000
    await assert_reconciles(sessions)


async def test_concurrent_reservations_never_take_more_than_the_balance(
    sessions: SessionFactory,
) -> None:
    account = await funded(sessions, 5_000)
    ledger = Ledger(sessions)
    amounts = [300 + 97 * i for i in range(30)]

    refused: list[int] = []

    async def reserve(i: int, amount: int) -> int:
        try:
            await ledger.reserve(account.id, amount, key=f"r-{i}", ttl=HOUR)
        except InsufficientTokens:
            refused.append(amount)
            return 0
        return amount

    accepted = sum(await asyncio.gather(*(reserve(i, a) for i, a in enumerate(amounts))))

    state = await ledger.balance(account.id)
    assert accepted <= 5_000
    assert state.held == accepted
    assert state.available == 5_000 - accepted >= 0
    # Availability only shrinks, so nothing was refused that would still fit now.
    assert state.available < min(refused)
    await assert_reconciles(sessions)


async def test_concurrent_reservations_on_a_brand_new_account_respect_its_floor(
    sessions: SessionFactory,
) -> None:
    tenant = await make_tenant(sessions)
    ledger = Ledger(sessions)
    # Opening races too: one account comes out of it.
    opened = await asyncio.gather(*(ledger.open_account(tenant.id, floor=-2_000) for _ in range(5)))
    assert len({a.id for a in opened}) == 1
    account = opened[0]

    async def spend(i: int) -> int:
        try:
            if i % 2:
                await ledger.reserve(account.id, 300, key=f"r-{i}", ttl=HOUR)
            else:
                await ledger.charge(account.id, 300, key=f"c-{i}")
        except InsufficientTokens:
            return 0
        return 300

    accepted = sum(await asyncio.gather(*(spend(i) for i in range(20))))

    state = await ledger.balance(account.id)
    assert accepted == 1_800  # six of 300 fit above a floor of -2000
    assert state.balance - state.held == -1_800 >= state.floor
    await assert_reconciles(sessions)


async def test_concurrent_double_refund_of_one_entry_succeeds_exactly_once(
    sessions: SessionFactory,
) -> None:
    account = await funded(sessions, 1_000)
    ledger = Ledger(sessions)
    charge = await ledger.charge(account.id, 400, key="charge")

    async def refund(i: int) -> bool:
        try:
            await ledger.refund(charge.transaction_id, key=f"refund-{i}")
        except EntryNotRefundable:
            return False
        return True

    outcomes = await asyncio.gather(*(refund(i) for i in range(6)))

    assert outcomes.count(True) == 1
    assert (await ledger.balance(account.id)).balance == 1_000
    async with sessions() as session:
        refunds = (
            await session.exec(
                select(TokenTransaction).where(
                    TokenTransaction.reverses_id == charge.transaction_id
                )
            )
        ).all()
    assert len(refunds) == 1
    await assert_reconciles(sessions)


async def test_only_debits_are_refunded(sessions: SessionFactory) -> None:
    account = await funded(sessions, 1_000)
    ledger = Ledger(sessions)
    top_up = await ledger.top_up(account.id, 50, key="top-up")
    with pytest.raises(EntryNotRefundable):
        await ledger.refund(top_up.transaction_id, key="refund")
    with pytest.raises(EntryNotRefundable):
        await ledger.refund(uuid.uuid4(), key="refund")


# --- holds ---------------------------------------------------------------------------------


async def test_a_partial_settle_posts_the_amount_and_releases_the_rest(
    sessions: SessionFactory,
) -> None:
    account = await funded(sessions, 10_000)
    ledger = Ledger(sessions)
    hold = await ledger.reserve(account.id, 4_000, key="reserve", ttl=HOUR)
    assert (await ledger.balance(account.id)).available == 6_000

    settlement = await ledger.settle(hold.hold_id, 2_500, key="settle")

    assert (settlement.settled, settlement.released) == (2_500, 1_500)
    assert settlement.balance_after == 7_500
    state = await ledger.balance(account.id)
    assert (state.balance, state.held, state.available) == (7_500, 0, 7_500)
    assert (await ledger.hold(hold.hold_id)).status == HoldStatus.SETTLED
    await assert_reconciles(sessions)


async def test_settling_nothing_releases_the_whole_hold_without_an_entry(
    sessions: SessionFactory,
) -> None:
    account = await funded(sessions, 1_000)
    ledger = Ledger(sessions)
    hold = await ledger.reserve(account.id, 600, key="reserve", ttl=HOUR)
    settlement = await ledger.settle(hold.hold_id, 0, key="settle")
    assert settlement.transaction_id is None and settlement.released == 600
    assert (await ledger.balance(account.id)).available == 1_000
    await assert_reconciles(sessions)


async def test_second_settle_and_release_after_settle_are_refused(
    sessions: SessionFactory,
) -> None:
    account = await funded(sessions, 10_000)
    ledger = Ledger(sessions)
    hold = await ledger.reserve(account.id, 1_000, key="reserve", ttl=HOUR)
    await ledger.settle(hold.hold_id, 800, key="settle")
    state = await ledger.balance(account.id)

    with pytest.raises(HoldNotActive):
        await ledger.settle(hold.hold_id, 800, key="settle-again")
    with pytest.raises(HoldNotActive):
        await ledger.release(hold.hold_id, key="release")
    with pytest.raises(InvalidAmount):
        other = await ledger.reserve(account.id, 100, key="reserve-2", ttl=HOUR)
        await ledger.settle(other.hold_id, 101, key="settle-too-much")
    with pytest.raises(HoldNotActive):
        released = await ledger.release(other.hold_id, key="release-2")
        assert released.status == HoldStatus.RELEASED
        await ledger.settle(other.hold_id, 50, key="settle-after-release")

    assert (await ledger.balance(account.id)).balance == state.balance
    await assert_reconciles(sessions)


async def test_concurrent_settle_and_release_of_one_hold_resolve_it_once(
    sessions: SessionFactory,
) -> None:
    account = await funded(sessions, 10_000)
    ledger = Ledger(sessions)
    hold = await ledger.reserve(account.id, 1_000, key="reserve", ttl=HOUR)

    results = await asyncio.gather(
        *(ledger.settle(hold.hold_id, 900, key=f"settle-{i}") for i in range(4)),
        *(ledger.release(hold.hold_id, key=f"release-{i}") for i in range(4)),
        return_exceptions=True,
    )

    assert sum(not isinstance(r, Exception) for r in results) == 1
    assert all(isinstance(r, HoldNotActive) for r in results if isinstance(r, Exception))
    state = await ledger.balance(account.id)
    assert state.held == 0 and state.balance in (9_100, 10_000)
    await assert_reconciles(sessions)


async def test_expiry_restores_availability_and_refuses_a_late_settle(
    sessions: SessionFactory,
) -> None:
    clock = Clock()
    account = await funded(sessions, 1_000)
    ledger = Ledger(sessions, clock=clock)
    hold = await ledger.reserve(account.id, 800, key="reserve", ttl=timedelta(minutes=30))
    with pytest.raises(InsufficientTokens):
        await ledger.charge(account.id, 500, key="too-early")

    clock.advance(timedelta(minutes=31))

    assert (await ledger.balance(account.id)).available == 1_000
    with pytest.raises(HoldNotActive, match="expired"):
        await ledger.settle(hold.hold_id, 800, key="settle-late")
    assert (await ledger.hold(hold.hold_id)).status == HoldStatus.EXPIRED
    # Releasing an expired hold (a workflow's compensation) is harmless and succeeds.
    assert (await ledger.release(hold.hold_id, key="release")).status == HoldStatus.EXPIRED
    assert (await ledger.release(hold.hold_id, key="release")).status == HoldStatus.EXPIRED
    with pytest.raises(HoldNotActive, match="released already"):
        await ledger.release(hold.hold_id, key="release-again")
    assert (await ledger.charge(account.id, 900, key="charge")).balance_after == 100
    await assert_reconciles(sessions)


async def test_an_expired_hold_stops_blocking_a_charge_before_the_sweep_runs(
    sessions: SessionFactory,
) -> None:
    clock = Clock()
    account = await funded(sessions, 1_000)
    ledger = Ledger(sessions, clock=clock)
    await ledger.reserve(account.id, 900, key="reserve", ttl=timedelta(minutes=5))
    clock.advance(timedelta(minutes=6))
    assert (await ledger.charge(account.id, 1_000, key="charge")).balance_after == 0
    await assert_reconciles(sessions)


async def test_the_sweep_releases_every_expired_hold(sessions: SessionFactory) -> None:
    clock = Clock()
    ledger = Ledger(sessions, clock=clock)
    accounts = [await funded(sessions, 1_000) for _ in range(3)]
    for account in accounts:
        await ledger.reserve(account.id, 100, key="short", ttl=timedelta(minutes=1))
        await ledger.reserve(account.id, 200, key="long", ttl=timedelta(days=1))

    clock.advance(timedelta(minutes=2))
    stale = await reconcile(sessions, now=clock())
    assert all(any("hold_expiry" in d for d in r.drift) for r in stale)

    assert await ledger.expire_holds(batch_size=2) == 3
    assert await ledger.expire_holds() == 0
    for account in accounts:
        assert (await ledger.balance(account.id)).held == 200
    assert all(r.clean for r in await reconcile(sessions, now=clock()))


# --- grants --------------------------------------------------------------------------------


async def test_a_tier_grants_its_allowance_once_per_period(sessions: SessionFactory) -> None:
    account = await funded(sessions, 0, plan_tier=PlanTier.STARTER)
    ledger = Ledger(sessions)
    allowance = TIER_ALLOWANCES[PlanTier.STARTER].grant_per_period

    november = await asyncio.gather(*(ledger.grant(account.id, period="2026-11") for _ in range(4)))
    december = await ledger.grant(account.id, period="2026-12")

    assert len({g.transaction_id for g in november}) == 1
    assert november[0].amount == allowance and november[0].kind == "grant"
    assert december.balance_after == 2 * allowance
    assert (await ledger.balance(account.id)).balance == 2 * allowance


async def test_a_malformed_grant_period_is_refused_not_granted_again(
    sessions: SessionFactory,
) -> None:
    account = await funded(sessions, 0, plan_tier=PlanTier.STARTER)
    ledger = Ledger(sessions)
    await ledger.grant(account.id, period="2026-12")
    rows = await counts(sessions, account.id)

    for period in ("2026-13", "2026-00", "2026-12-01", "2026-1", "", " 2026-12", "December"):
        with pytest.raises(InvalidPeriod):
            await ledger.grant(account.id, period=period)

    assert await counts(sessions, account.id) == rows
    allowance = TIER_ALLOWANCES[PlanTier.STARTER].grant_per_period
    assert (await ledger.balance(account.id)).balance == allowance


async def test_a_bool_or_a_fraction_is_never_an_amount(sessions: SessionFactory) -> None:
    account = await funded(sessions, 1_000)
    ledger = Ledger(sessions)
    hold = await ledger.reserve(account.id, 10, key="hold", ttl=timedelta(hours=1))
    rows = await counts(sessions, account.id)

    for not_an_amount in (True, False, 5.0, "5"):
        for call in (
            ledger.charge(account.id, not_an_amount, key="k"),  # type: ignore[arg-type]
            ledger.top_up(account.id, not_an_amount, key="k"),  # type: ignore[arg-type]
            ledger.reserve(account.id, not_an_amount, key="k", ttl=timedelta(hours=1)),  # type: ignore[arg-type]
            ledger.settle(hold.hold_id, not_an_amount, key="k"),  # type: ignore[arg-type]
            ledger.adjust(account.id, not_an_amount, key="k"),  # type: ignore[arg-type]
            ledger.grant(account.id, period="2026-12", amount=not_an_amount),  # type: ignore[arg-type]
        ):
            with pytest.raises(InvalidAmount):
                await call
        with pytest.raises(InvalidAmount):
            await ledger.open_account(uuid.uuid4(), floor=not_an_amount)  # type: ignore[arg-type]

    assert await counts(sessions, account.id) == rows


@pytest.mark.parametrize("model", [ReserveTokens, ChargeTokens, SettleHold])
@pytest.mark.parametrize("not_an_amount", [True, 5.0, "5"])
def test_ledger_payloads_refuse_a_bool_or_a_fraction_as_an_amount(
    model: type[BaseModel], not_an_amount: object
) -> None:
    fields = {"tenant_id": uuid.uuid4(), "hold_id": uuid.uuid4(), "step": "s"}
    assert model.model_validate({**fields, "amount": 5}).amount == 5  # type: ignore[attr-defined]
    with pytest.raises(ValidationError):
        model.model_validate({**fields, "amount": not_an_amount})
    with pytest.raises(ValidationError):
        model.model_validate_json(json.dumps({**fields, "amount": not_an_amount}, default=str))


async def test_adjustments_credit_and_debit_within_the_floor(sessions: SessionFactory) -> None:
    account = await funded(sessions, 100)
    ledger = Ledger(sessions)
    assert (await ledger.adjust(account.id, 50, key="credit")).balance_after == 150
    assert (await ledger.adjust(account.id, -150, key="debit")).balance_after == 0
    with pytest.raises(InsufficientTokens):
        await ledger.adjust(account.id, -1, key="below-floor")
    await assert_reconciles(sessions)


async def test_the_database_refuses_a_balance_below_the_floor_whatever_the_code_does(
    sessions: SessionFactory,
) -> None:
    account = await funded(sessions, 100)
    async with sessions() as session:
        conn = await session.connection()
        with pytest.raises(IntegrityError, match="floor"):
            await conn.execute(
                text("UPDATE token_accounts SET balance = -1 WHERE id = :id"), {"id": account.id}
            )


# --- alerts --------------------------------------------------------------------------------


def alerts_raised(threshold: int) -> float:
    value = REGISTRY.get_sample_value(
        "changeflow_token_low_balance_alerts_total",
        {"plan_tier": "free", "threshold": str(threshold)},
    )
    return value or 0.0


async def open_and_resolved(sessions: SessionFactory, account_id: uuid.UUID) -> list[tuple]:
    async with sessions() as session:
        rows = (
            await session.exec(
                select(TokenAlert)
                .where(TokenAlert.account_id == account_id)
                .order_by(col(TokenAlert.created_at), col(TokenAlert.threshold).desc())
            )
        ).all()
    return [(a.threshold, a.status) for a in rows]


async def test_a_downward_crossing_raises_one_alert_and_recovery_resolves_it(
    sessions: SessionFactory,
) -> None:
    high, low = TIER_ALLOWANCES[PlanTier.FREE].low_balance_thresholds
    account = await funded(sessions, high + 1_000, plan_tier=PlanTier.FREE)
    ledger = Ledger(sessions)
    metric_before = alerts_raised(high)

    with capture_logs() as logs:
        await ledger.charge(account.id, 1_500, key="cross-high")  # crosses `high`
    await ledger.charge(account.id, 100, key="still-below")  # no new crossing
    hold = await ledger.reserve(account.id, 200, key="hold", ttl=HOUR)
    await ledger.settle(hold.hold_id, 200, key="settle")  # still below: nothing new

    assert await open_and_resolved(sessions, account.id) == [(high, AlertStatus.OPEN)]
    assert [e["event"] for e in logs] == ["token_balance_low"]
    assert logs[0]["threshold"] == high and logs[0]["tenant_id"] == str(account.tenant_id)
    assert alerts_raised(high) == metric_before + 1

    # One charge across both thresholds raises both, each once.
    balance = (await ledger.balance(account.id)).balance
    await ledger.charge(account.id, balance - low + 1, key="cross-low")
    assert sorted(await open_and_resolved(sessions, account.id)) == [
        (low, AlertStatus.OPEN),
        (high, AlertStatus.OPEN),
    ]

    # Recovery above `low` only resolves that one; above `high` resolves the other.
    await ledger.top_up(account.id, low, key="recover-low")
    await ledger.top_up(account.id, high, key="recover-high")
    assert sorted(await open_and_resolved(sessions, account.id)) == [
        (low, AlertStatus.RESOLVED),
        (high, AlertStatus.RESOLVED),
    ]

    # A new downward crossing is a new alert.
    balance = (await ledger.balance(account.id)).balance
    await ledger.charge(account.id, balance - high + 1, key="cross-again")
    alerts = await open_and_resolved(sessions, account.id)
    assert alerts.count((high, AlertStatus.OPEN)) == 1 and len(alerts) == 3
    # What a service reads.
    open_now = await ledger.alerts(account.id, open_only=True)
    assert [(a.threshold, a.status, a.balance_at_alert) for a in open_now] == [
        (high, "open", high - 1)
    ]
    assert len(await ledger.alerts(account.id)) == 3


async def test_racing_charges_across_a_threshold_raise_exactly_one_alert(
    sessions: SessionFactory,
) -> None:
    high, _ = TIER_ALLOWANCES[PlanTier.FREE].low_balance_thresholds
    account = await funded(sessions, high + 500, plan_tier=PlanTier.FREE)
    ledger = Ledger(sessions)
    await asyncio.gather(*(ledger.charge(account.id, 100, key=f"c-{i}") for i in range(10)))
    assert await open_and_resolved(sessions, account.id) == [(high, AlertStatus.OPEN)]
