"""Model-based test: random sequences of ledger operations, with reused keys, retries and
expiries, run against the real ledger and a small pure-Python model of its rules; both must
give the same results, balances and holds at every step, and the ledger must reconcile."""

import asyncio
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from activities.ledger import (
    EntryNotRefundable,
    HoldNotActive,
    IdempotencyConflict,
    InsufficientTokens,
    InvalidAmount,
    Ledger,
    LedgerError,
)
from activities.reconciliation import reconcile
from models.db import create_engine, session_factory
from tests.factories import make_tenant
from workflows.contracts.billing import EntryView, HoldView, SettlementView

KEYS = st.sampled_from([f"key-{i}" for i in range(6)])
AMOUNTS = st.integers(min_value=1, max_value=400)


@dataclass
class ModelHold:
    hold_id: uuid.UUID
    amount: int
    expires_at: datetime
    status: str = "active"
    released_after_expiry: bool = False


@dataclass
class Model:
    """The ledger's rules for one account, in plain Python."""

    floor: int
    balance: int = 0
    holds: list[ModelHold] = field(default_factory=list)
    debits: list[EntryView] = field(default_factory=list)
    refunded: set[uuid.UUID] = field(default_factory=set)
    # key -> (fingerprint, the answer or the error type)
    requests: dict[str, tuple[tuple[Any, ...], Any]] = field(default_factory=dict)

    def held(self, *, live_at: datetime | None = None) -> int:
        return sum(
            h.amount
            for h in self.holds
            if h.status == "active" and (live_at is None or h.expires_at > live_at)
        )

    def expire(self, now: datetime) -> int:
        expired = [h for h in self.holds if h.status == "active" and h.expires_at <= now]
        for hold in expired:
            hold.status = "expired"
        return len(expired)

    def prior(self, key: str, fingerprint: tuple[Any, ...]) -> tuple[bool, Any]:
        """(True, answer) when the key was used; answer is an error type to raise or a
        result to return."""
        if key not in self.requests:
            return False, None
        recorded, answer = self.requests[key]
        if recorded != fingerprint:
            return True, IdempotencyConflict
        return True, answer


class LedgerMachine(RuleBasedStateMachine):
    loop: asyncio.AbstractEventLoop
    ledger: Ledger
    sessions: Any
    clock: list[datetime]

    def __init__(self) -> None:
        super().__init__()
        self.floor = 0
        tenant = self.run(make_tenant(self.sessions, name="Model Shop"))
        self.account_id = self.run(self.ledger.open_account(tenant.id)).id
        self.model = Model(floor=self.floor)
        self.run(self.ledger.top_up(self.account_id, 600, key="opening-balance"))
        self.model.balance = 600
        self.last: tuple[str, dict[str, Any]] | None = None

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run_until_complete(coroutine)

    @property
    def now(self) -> datetime:
        return self.clock[0]

    def outcome(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        try:
            return self.run(coroutine)
        except LedgerError as exc:
            return type(exc)

    # -- operations: each runs the ledger and the model and compares --

    def do(self, name: str, **args: Any) -> None:
        self.last = (name, args)
        getattr(self, f"_{name}")(**args)

    def _top_up(self, amount: int, key: str) -> None:
        got = self.outcome(self.ledger.top_up(self.account_id, amount, key=key))
        m = self.model
        used, answer = m.prior(key, ("top_up", amount, None))
        if used:
            assert got == answer
            return
        assert isinstance(got, EntryView), got
        m.balance += amount
        assert got.balance_after == m.balance and got.direction == "credit"
        m.requests[key] = (("top_up", amount, None), got)

    def _debit_or_hold(self, op: str, amount: int, key: str, ttl: timedelta) -> None:
        """Charge and reserve share the rule: spend from what is available, retrying once
        after releasing expired holds; a refusal is recorded under the key."""
        if op == "charge":
            got = self.outcome(self.ledger.charge(self.account_id, amount, key=key))
        else:
            got = self.outcome(self.ledger.reserve(self.account_id, amount, key=key, ttl=ttl))
        m = self.model
        used, answer = m.prior(key, (op, amount, None))
        if used:
            assert got == answer
            return
        fits = m.balance - m.held() - amount >= m.floor
        if not fits and m.expire(self.now):
            fits = m.balance - m.held() - amount >= m.floor
        if not fits:
            assert got is InsufficientTokens
            m.requests[key] = ((op, amount, None), InsufficientTokens)
            return
        if op == "charge":
            assert isinstance(got, EntryView), got
            m.balance -= amount
            assert got.balance_after == m.balance and got.kind == "charge"
            m.debits.append(got)
        else:
            assert isinstance(got, HoldView), got
            assert got.expires_at == self.now + ttl and got.status == "active"
            m.holds.append(ModelHold(got.hold_id, amount, got.expires_at))
        m.requests[key] = ((op, amount, None), got)

    def _charge(self, amount: int, key: str) -> None:
        self._debit_or_hold("charge", amount, key, timedelta(0))

    def _reserve(self, amount: int, key: str, ttl: timedelta) -> None:
        self._debit_or_hold("reserve", amount, key, ttl)

    def _settle(self, index: int, amount: int, key: str) -> None:
        m = self.model
        hold = m.holds[index % len(m.holds)]
        got = self.outcome(self.ledger.settle(hold.hold_id, amount, key=key))
        used, answer = m.prior(key, ("settle", amount, hold.hold_id))
        if used:
            assert got == answer
            return
        error: type[LedgerError] | None = None
        if hold.status != "active":
            error = HoldNotActive
        elif hold.expires_at <= self.now:
            m.expire(self.now)
            error = HoldNotActive
        elif amount > hold.amount:
            error = InvalidAmount
        if error is not None:
            assert got is error
            m.requests[key] = (("settle", amount, hold.hold_id), error)
            return
        assert isinstance(got, SettlementView), got
        hold.status = "settled"
        m.balance -= amount
        assert (got.settled, got.released) == (amount, hold.amount - amount)
        assert got.balance_after == m.balance
        if amount:
            assert got.transaction_id is not None
            m.debits.append(
                EntryView(
                    transaction_id=got.transaction_id,
                    account_id=self.account_id,
                    kind="settlement",
                    direction="debit",
                    amount=amount,
                    balance_after=m.balance,
                )
            )
        m.requests[key] = (("settle", amount, hold.hold_id), got)

    def _release(self, index: int, key: str) -> None:
        m = self.model
        hold = m.holds[index % len(m.holds)]
        got = self.outcome(self.ledger.release(hold.hold_id, key=key))
        used, answer = m.prior(key, ("release", None, hold.hold_id))
        if used:
            if isinstance(answer, type):
                assert got is answer
            else:
                assert isinstance(got, HoldView) and got.status == hold.status
            return
        if hold.status == "active":
            hold.status = "released"
        elif hold.status != "expired" or hold.released_after_expiry:
            assert got is HoldNotActive
            m.requests[key] = (("release", None, hold.hold_id), HoldNotActive)
            return
        assert isinstance(got, HoldView), got
        assert (got.status, got.amount) == (hold.status, hold.amount)
        hold.released_after_expiry = hold.status == "expired"
        m.requests[key] = (("release", None, hold.hold_id), got)

    def _refund(self, index: int, key: str) -> None:
        m = self.model
        original = m.debits[index % len(m.debits)]
        got = self.outcome(self.ledger.refund(original.transaction_id, key=key))
        fingerprint = ("refund", original.amount, original.transaction_id)
        used, answer = m.prior(key, fingerprint)
        if used:
            assert got == answer
            return
        if original.transaction_id in m.refunded:
            assert got is EntryNotRefundable
            m.requests[key] = (fingerprint, EntryNotRefundable)
            return
        assert isinstance(got, EntryView), got
        m.balance += original.amount
        m.refunded.add(original.transaction_id)
        assert got.balance_after == m.balance and got.kind == "refund"
        m.requests[key] = (fingerprint, got)

    # -- rules --

    @rule(amount=AMOUNTS, key=KEYS)
    def top_up(self, amount: int, key: str) -> None:
        self.do("top_up", amount=amount, key=key)

    @rule(amount=AMOUNTS, key=KEYS)
    def charge(self, amount: int, key: str) -> None:
        self.do("charge", amount=amount, key=key)

    @rule(amount=AMOUNTS, key=KEYS, minutes=st.integers(min_value=1, max_value=30))
    def reserve(self, amount: int, key: str, minutes: int) -> None:
        self.do("reserve", amount=amount, key=key, ttl=timedelta(minutes=minutes))

    @precondition(lambda self: self.model.holds)
    @rule(index=st.integers(min_value=0), amount=st.integers(0, 450), key=KEYS)
    def settle(self, index: int, amount: int, key: str) -> None:
        self.do("settle", index=index, amount=amount, key=key)

    @precondition(lambda self: self.model.holds)
    @rule(index=st.integers(min_value=0), key=KEYS)
    def release(self, index: int, key: str) -> None:
        self.do("release", index=index, key=key)

    @precondition(lambda self: self.model.debits)
    @rule(index=st.integers(min_value=0), key=KEYS)
    def refund(self, index: int, key: str) -> None:
        self.do("refund", index=index, key=key)

    @precondition(lambda self: self.last is not None)
    @rule()
    def retry_last_request(self) -> None:
        """A worker retrying what it sent (same key, same request)."""
        assert self.last is not None
        name, args = self.last
        self.do(name, **args)

    @rule(minutes=st.integers(min_value=5, max_value=40))
    def time_passes(self, minutes: int) -> None:
        self.clock[0] += timedelta(minutes=minutes)

    @rule()
    def sweep(self) -> None:
        swept = self.run(self.ledger.expire_holds())
        # Other examples' accounts may have stale holds too; ours must all be among them.
        assert swept >= self.model.expire(self.now)

    @invariant()
    def balances_agree(self) -> None:
        state = self.run(self.ledger.balance(self.account_id))
        held = self.model.held(live_at=self.now)
        assert (state.balance, state.held, state.available) == (
            self.model.balance,
            held,
            self.model.balance - held,
        )
        assert state.available >= self.floor

    @invariant()
    def holds_agree(self) -> None:
        for hold in self.model.holds:
            stored = self.run(self.ledger.hold(hold.hold_id))
            assert (stored.status, stored.amount, stored.expires_at) == (
                hold.status,
                hold.amount,
                hold.expires_at,
            )

    def teardown(self) -> None:
        self.run(self.ledger.expire_holds())
        self.model.expire(self.now)
        reports = self.run(reconcile(self.sessions, now=self.now))
        ours = [r for r in reports if r.account_id == self.account_id]
        assert len(ours) == 1 and ours[0].drift == [], ours


@pytest.fixture
def model_machine(database_url: str) -> Iterator[type[LedgerMachine]]:
    """The machine on a loop of its own: hypothesis drives it synchronously."""
    loop = asyncio.new_event_loop()
    engine = create_engine(database_url, pool_size=2)
    sessions = session_factory(engine)
    clock = [datetime(2026, 11, 1, tzinfo=UTC)]

    class Machine(LedgerMachine):
        pass

    Machine.loop = loop
    Machine.sessions = sessions
    Machine.clock = clock
    Machine.ledger = Ledger(sessions, clock=lambda: clock[0])
    try:
        yield Machine
    finally:
        loop.run_until_complete(Machine.ledger.close())
        loop.run_until_complete(engine.dispose())
        loop.close()


def test_the_ledger_behaves_like_its_model(model_machine: type[LedgerMachine]) -> None:
    run_state_machine_as_test(
        model_machine,
        settings=settings(
            max_examples=40,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
